/* avx2.c - AVX2 + FMA + F16C kernels (placeholder while they are written). */
#include "kernels/kernels_int.h"

void kern_avx2_fill(kern_table *t)
{
	(void)t;
}
