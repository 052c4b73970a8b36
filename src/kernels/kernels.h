/* kernels.h - numeric kernels behind a dispatch table.
 *
 * Every op has a scalar reference in kernels/ref/ (plain loops: the spec) and
 * may have faster versions per ISA in kernels/x86/ (one ISA per file, built
 * with that file's flags). kern_init() fills the table `kern` once from the
 * CPU's features; KERNELS=ref in the environment forces the reference.
 * Callers always go through `kern.<op>`.
 *
 * Weight x activation products follow ggml's numerics so that logits agree
 * with llama.cpp: before a matmul the f32 activations are converted to the
 * weight type's vec_dot_type (qtypes.h): Q8_0 blocks for Q4_0/Q5_0/Q8_0,
 * Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, f16 for F16, bf16 for BF16,
 * unchanged for F32. vec_dot then multiplies one weight row by one converted
 * activation row. Each output element is one vec_dot over the full row in a
 * fixed order, so results do not depend on thread count or on which other
 * rows share the batch (batch invariance).
 *
 * Kernels never allocate. Pointers may be unaligned unless stated.
 */
#ifndef PDSERVE_KERNELS_KERNELS_H
#define PDSERVE_KERNELS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "base/threadpool.h"
#include "kernels/qtypes.h"

/* Convert n elements (n a multiple of the type's block) to f32. */
typedef void (*kern_to_float_fn)(const void *src, float *dst, int64_t n);
/* Convert n f32 to the type (quantize). Defined for the activation types
   F32, F16, BF16, Q8_0, Q8_1, Q8_K, and for Q4_0, Q8_0 as weight types (model synth). */
typedef void (*kern_from_float_fn)(const float *src, void *dst, int64_t n);
/* Dot product of n elements: x is a row of the weight type, y a row of its
   vec_dot_type (qtype_get(type)->vec_dot_type). */
typedef float (*kern_vec_dot_fn)(int64_t n, const void *x, const void *y);

typedef struct {
	const char *name; /* "ref", "avx2", "avx512" */
	kern_to_float_fn to_float[QTYPE_COUNT];
	kern_from_float_fn from_float[QTYPE_COUNT];
	kern_vec_dot_fn vec_dot[QTYPE_COUNT]; /* indexed by weight type */

	/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x */
	void (*rmsnorm)(float *out, const float *x, const float *w, int64_t n, float eps);
	/* x[i] = silu(gate[i]) * x[i] (SwiGLU: x is up, gate is gate) */
	void (*swiglu)(float *x, const float *gate, int64_t n);
	/* x = softmax(x) in place over n (max-subtracted, f32 accumulate) */
	void (*softmax)(float *x, int64_t n);
} kern_table;

extern kern_table kern;

/* Fill `kern` (idempotent, thread-safe after first call returns). Honours
   KERNELS=ref|avx2|avx512 (a choice the CPU lacks falls back, with a log line). */
void kern_init(void);
/* The reference table (for tests comparing implementations). */
const kern_table *kern_ref(void);

/* ---- matmul: y[t][o] = sum_i W[o][i] * x[t][i] ------------------------- */

typedef struct {
	int type;          /* QTYPE_*; must be supported */
	int64_t n_in;      /* ne[0]: row length */
	int64_t n_out;     /* ne[1]: rows */
	const void *data;  /* n_out rows of qtype_row_size(type, n_in) bytes */
} kern_weight;

/* Bytes of scratch kern_matmul needs for n_tok activation rows of w. */
size_t kern_matmul_scratch(const kern_weight *w, int64_t n_tok);
/* x: [n_tok][n_in] f32, y: [n_tok][n_out] f32 (ld = n_out). scratch: at
   least kern_matmul_scratch() bytes, 64-byte aligned. Splits the work over
   tp's threads; tp may be NULL (single thread). */
void kern_matmul(threadpool *tp, const kern_weight *w, const float *x, int64_t n_tok, float *y,
		 void *scratch);

/* One row of a weight matrix as f32 (embedding lookup). */
void kern_get_row(const kern_weight *w, int64_t row, float *out);

#endif
