/* kernels_int.h - shared inside kernels/ only: how implementations fill the table.
 *
 * Each implementation file exports one fill function that writes the entries
 * it provides into a kern_table and leaves the others alone. dispatch.c
 * builds the reference table from the ref/ fillers, then copies it and lets
 * each ISA file the CPU supports overwrite what it accelerates. An ISA file
 * calls kern_ref() for anything it hands back to the reference (remainders,
 * types it does not cover).
 */
#ifndef PDSERVE_KERNELS_KERNELS_INT_H
#define PDSERVE_KERNELS_KERNELS_INT_H

#include "kernels/kernels.h"

/* ref/quants.c: to_float, from_float and vec_dot for every type it knows. */
void kern_ref_fill_quants(kern_table *t);
/* ref/ops.c: rmsnorm, swiglu, softmax, rope, attn. */
void kern_ref_fill_ops(kern_table *t);

/* x86/avx2.c (built with -mavx2 -mfma -mf16c) and x86/avx512.c (AVX-512
   F/BW/VL/DQ/VNNI/BF16). Only called when the CPU has those features. */
void kern_avx2_fill(kern_table *t);
void kern_avx512_fill(kern_table *t);

/* [*lo, *hi) = share ith of nth of n items (contiguous, sizes differ by <= 1). */
static inline void kern_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi)
{
	*lo = n * ith / nth;
	*hi = n * (ith + 1) / nth;
}

/* Per-thread work of the attention ops (floats): the reference keeps every
   score of one head (max_pos) plus the rounded query; SIMD versions keep
   the queries and accumulators of a kv group plus one chunk of
   KERN_ATTN_CHUNK K and V rows in f32, for at most KERN_ATTN_MAX_ROWS
   (token, head) rows per call. */
#define KERN_ATTN_CHUNK 16

#endif
