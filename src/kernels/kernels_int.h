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
/* ref/ops.c: rmsnorm, swiglu, softmax. */
void kern_ref_fill_ops(kern_table *t);

#endif
