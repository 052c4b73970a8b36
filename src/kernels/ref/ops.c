/* ops.c - reference element-wise ops: rmsnorm, swiglu, softmax.
 *
 * These follow ggml's CPU ops in structure so that an engine built on them
 * lands within f32 rounding of llama.cpp:
 *  - rmsnorm: squares formed in f32 and summed in double in index order
 *    (ggml sums rms_norm in ggml_float = double), mean rounded to f32,
 *    scale = 1 / sqrtf(mean + eps), then out = (x * scale) * w (ggml applies
 *    the scale in rms_norm and the weight in a separate mul).
 *  - swiglu: silu(g) = g / (1 + expf(-g)), then * up. ggml's AVX path uses
 *    its own vectorised expf (ggml_v_expf), a few ulps from libm's.
 *  - softmax: subtract the max, expf, sum in f32 in index order (the kernels.h
 *    contract; ggml sums in double, a difference of an ulp or so), then
 *    multiply by 1/sum.
 *
 * Left out: masks, ALiBi and temperature for softmax (attention code applies
 * them before calling), other activations.
 */
#include <math.h>

#include "kernels/kernels_int.h"

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)(x[i] * x[i]);
	float mean = (float)(sum / (double)n);
	float scale = 1.0f / sqrtf(mean + eps);
	for (int64_t i = 0; i < n; i++)
		out[i] = (x[i] * scale) * w[i];
}

static void swiglu(float *x, const float *gate, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float g = gate[i];
		x[i] = g / (1.0f + expf(-g)) * x[i];
	}
}

static void softmax(float *x, int64_t n)
{
	float max = -INFINITY;
	for (int64_t i = 0; i < n; i++)
		max = fmaxf(max, x[i]);
	float sum = 0.0f;
	for (int64_t i = 0; i < n; i++) {
		x[i] = expf(x[i] - max);
		sum += x[i];
	}
	float inv = 1.0f / sum;
	for (int64_t i = 0; i < n; i++)
		x[i] *= inv;
}

void kern_ref_fill_ops(kern_table *t)
{
	t->rmsnorm = rmsnorm;
	t->swiglu = swiglu;
	t->softmax = softmax;
}
