/* ops.c - reference element-wise ops and attention: rmsnorm, swiglu, softmax, rope, attn.
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
 *  - rope: (a, b) -> (a cs - b sn, a sn + b cs), each product rounded, no
 *    fused multiply-add (ggml's rope_yarn with ext_factor 0).
 *  - attn: ggml's non-flash attention for one (token, head): the query
 *    rounded to the kv type (ggml converts it for the f16 K matmul), scores
 *    = f32 dot in index order, times scale; max; expf(s - max) summed in
 *    double (ggml_vec_soft_max accumulates in ggml_float); weights
 *    p / sum rounded to the kv type (the kq -> f16 conversion before the V
 *    matmul); out = sum of p v in f32, in position order.
 *
 * Left out: masks, ALiBi and temperature for softmax (attention code applies
 * them before calling), other activations.
 */
#include <math.h>
#include <string.h>

#include "base/half.h"
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

static void rope(float *x, int n_heads, int head_dim, int n_rot, int neox, const float *cs, const float *sn)
{
	const int half = n_rot / 2;
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * head_dim;
		for (int i = 0; i < half; i++) {
			int a = neox ? i : 2 * i;
			int b = neox ? i + half : 2 * i + 1;
			float x0 = v[a], x1 = v[b];
			v[a] = x0 * cs[i] - x1 * sn[i];
			v[b] = x0 * sn[i] + x1 * cs[i];
		}
	}
}

/* ---- attention ------------------------------------------------------------ */

static size_t kv_elem_size(int dtype)
{
	return dtype == QTYPE_F32 ? 4 : 2;
}

static float kv_load(int dtype, const void *row, int i)
{
	if (dtype == QTYPE_F32) {
		float f;
		memcpy(&f, (const char *)row + 4 * (size_t)i, 4);
		return f;
	}
	uint16_t h;
	memcpy(&h, (const char *)row + 2 * (size_t)i, 2);
	return dtype == QTYPE_F16 ? half_f16_to_f32(h) : half_bf16_to_f32(h);
}

/* Value rounded through the kv dtype (how ggml feeds f32 operands to an f16/bf16 matmul). */
static float round_to(int dtype, float x)
{
	if (dtype == QTYPE_F16)
		return half_f16_to_f32(half_f32_to_f16(x));
	if (dtype == QTYPE_BF16)
		return half_bf16_to_f32(half_f32_to_bf16(x));
	return x;
}

/* Row of kv head g at position p of the sequence with page table pages. */
static const char *kv_row(const kern_attn *a, const void *base, const int32_t *pages, int p, int g)
{
	size_t kvd = (size_t)a->n_head_kv * a->head_dim, es = kv_elem_size(a->kv_dtype);
	size_t slot = (size_t)pages[p / a->page_size] * a->page_size + (size_t)(p % a->page_size);
	return (const char *)base + (slot * kvd + (size_t)g * a->head_dim) * es;
}

/* work: [head_dim] rounded query, then [pos + 1] scores. */
static void attn_token(const kern_attn *a, int t, int h0, int h1, float *work)
{
	const int hd = a->head_dim, group = a->n_head / a->n_head_kv;
	const size_t qd = (size_t)a->n_head * hd;
	const int32_t *pages = a->pages[a->seq[t]];
	const int n = a->pos[t] + 1;
	float *qc = work, *sc = work + hd;
	for (int h = h0; h < h1; h++) {
		const int g = h / group;
		const float *q = a->q + (size_t)t * qd + (size_t)h * hd;
		for (int d = 0; d < hd; d++)
			qc[d] = round_to(a->kv_dtype, q[d]);
		float mx = -INFINITY;
		for (int p = 0; p < n; p++) {
			const char *krow = kv_row(a, a->k, pages, p, g);
			float s = 0;
			for (int d = 0; d < hd; d++)
				s += qc[d] * kv_load(a->kv_dtype, krow, d);
			sc[p] = s * a->scale;
			mx = sc[p] > mx ? sc[p] : mx;
		}
		double sum = 0;
		for (int p = 0; p < n; p++) {
			sc[p] = expf(sc[p] - mx);
			sum += sc[p];
		}
		const float inv = (float)(1.0 / sum);
		float *out = a->out + (size_t)t * qd + (size_t)h * hd;
		for (int d = 0; d < hd; d++)
			out[d] = 0;
		for (int p = 0; p < n; p++) {
			const float w = round_to(a->kv_dtype, sc[p] * inv);
			const char *vrow = kv_row(a, a->v, pages, p, g);
			for (int d = 0; d < hd; d++)
				out[d] += w * kv_load(a->kv_dtype, vrow, d);
		}
	}
}

static void attn(const kern_attn *a, int t0, int t1, int h0, int h1, float *work)
{
	for (int t = t0; t < t1; t++)
		attn_token(a, t, h0, h1, work);
}

void kern_ref_fill_ops(kern_table *t)
{
	t->rmsnorm = rmsnorm;
	t->swiglu = swiglu;
	t->softmax = softmax;
	t->rope = rope;
	t->attn = attn;
}
