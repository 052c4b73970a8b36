/* matmul.c - y = x W^T over the thread pool, in ggml's numerics.
 *
 * A matmul is two parallel phases, each one threadpool_run:
 *
 *   1. convert: the n_tok f32 activation rows become rows of the weight
 *      type's vec_dot_type (Q8_0, Q8_1, Q8_K, f16, bf16) in scratch. The
 *      work is the n_tok * (n_in / blck) blocks of the converted type, split
 *      into contiguous ranges, one per thread; every block is converted on
 *      its own, so how the blocks are split cannot change a bit. F32 weights
 *      need no conversion and read x in place (no scratch).
 *   2. dot: the n_out weight rows are split into contiguous ranges, one per
 *      thread; for each of its rows a thread computes y[t][o] for every
 *      token with one vec_dot over the full row (the weight row stays in
 *      cache across the tokens).
 *
 * Each y element is exactly one vec_dot(n_in, W[o], xq[t]) call and xq[t]
 * depends only on x[t], so y is bit-identical for any thread count, any
 * n_tok and any position of a token in the batch (batch invariance). Two runs
 * instead of one run with a barrier keep the thread pool minimal; the cost is
 * one extra wake-up per matmul.
 *
 * Scratch layout: converted row t starts at t * stride, where stride is the
 * row's byte size rounded up to 64, so every row is 64-byte aligned for SIMD
 * code that wants it.
 *
 * Preconditions (CHECKed, they are our bugs, not input errors): the weight
 * type is supported, n_in is a multiple of both block sizes (the loader
 * validates shapes), scratch is given unless the weights are F32.
 *
 * Left out: tiling over tokens and rows together (a SIMD concern).
 */
#include "base/err.h"
#include "kernels/kernels.h"

static size_t act_stride(int vec_dot_type, int64_t n_in)
{
	size_t bytes = qtype_row_size(vec_dot_type, n_in);
	return (bytes + 63) & ~(size_t)63;
}

size_t kern_matmul_scratch(const kern_weight *w, int64_t n_tok)
{
	const qtype_info *qi = qtype_get(w->type);
	CHECK(qi && qi->supported);
	if (qi->vec_dot_type == QTYPE_F32)
		return 0;
	return (size_t)n_tok * act_stride(qi->vec_dot_type, w->n_in);
}

typedef struct {
	const kern_weight *w;
	const float *x; /* [n_tok][n_in] */
	int64_t n_tok;
	float *y;       /* [n_tok][n_out] */

	const uint8_t *act; /* converted rows, or x itself for F32 weights */
	uint8_t *scratch;
	size_t act_stride;
	int act_blck;         /* elements per block of the vec_dot_type */
	size_t act_blck_size; /* bytes per block */
	size_t w_row_size;
	kern_from_float_fn from_float;
	kern_vec_dot_fn vec_dot;
} matmul_job;

/* [*lo, *hi) = share ith of nth of n items (contiguous, sizes differ by <= 1). */
static void split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi)
{
	*lo = n * ith / nth;
	*hi = n * (ith + 1) / nth;
}

static void convert_part(void *p, int ith, int nth)
{
	const matmul_job *j = p;
	int64_t per_row = j->w->n_in / j->act_blck;
	int64_t u, u_end;
	split(j->n_tok * per_row, ith, nth, &u, &u_end);
	while (u < u_end) {
		int64_t t = u / per_row, b = u % per_row;
		int64_t nb = per_row - b; /* blocks left in this row */
		if (nb > u_end - u)
			nb = u_end - u;
		j->from_float(j->x + t * j->w->n_in + b * j->act_blck,
			      j->scratch + (size_t)t * j->act_stride + (size_t)b * j->act_blck_size,
			      nb * j->act_blck);
		u += nb;
	}
}

static void dot_part(void *p, int ith, int nth)
{
	const matmul_job *j = p;
	const kern_weight *w = j->w;
	int64_t o, o_end;
	split(w->n_out, ith, nth, &o, &o_end);
	for (; o < o_end; o++) {
		const uint8_t *wrow = (const uint8_t *)w->data + (size_t)o * j->w_row_size;
		for (int64_t t = 0; t < j->n_tok; t++)
			j->y[t * w->n_out + o] =
				j->vec_dot(w->n_in, wrow, j->act + (size_t)t * j->act_stride);
	}
}

static void run(threadpool *tp, threadpool_fn fn, void *arg)
{
	if (tp)
		threadpool_run(tp, fn, arg);
	else
		fn(arg, 0, 1);
}

void kern_matmul(threadpool *tp, const kern_weight *w, const float *x, int64_t n_tok, float *y,
		 void *scratch)
{
	kern_init();
	const qtype_info *qi = qtype_get(w->type);
	CHECK(qi && qi->supported && kern.vec_dot[w->type]);
	if (n_tok <= 0 || w->n_out <= 0)
		return;
	int vt = qi->vec_dot_type;
	const qtype_info *vi = qtype_get(vt);
	CHECK(w->n_in > 0 && w->n_in % qi->blck == 0 && w->n_in % vi->blck == 0);

	matmul_job j = {
		.w = w,
		.x = x,
		.n_tok = n_tok,
		.y = y,
		.scratch = scratch,
		.act_blck = vi->blck,
		.act_blck_size = (size_t)vi->type_size,
		.w_row_size = qtype_row_size(w->type, w->n_in),
		.from_float = kern.from_float[vt],
		.vec_dot = kern.vec_dot[w->type],
	};
	if (vt == QTYPE_F32) {
		j.act = (const uint8_t *)x;
		j.act_stride = (size_t)w->n_in * sizeof(float);
	} else {
		CHECK(scratch && j.from_float);
		j.act = scratch;
		j.act_stride = act_stride(vt, w->n_in);
		run(tp, convert_part, &j);
	}
	run(tp, dot_part, &j);
}

void kern_get_row(const kern_weight *w, int64_t row, float *out)
{
	kern_init();
	CHECK(row >= 0 && row < w->n_out && kern.to_float[w->type]);
	size_t rs = qtype_row_size(w->type, w->n_in);
	kern.to_float[w->type]((const uint8_t *)w->data + (size_t)row * rs, out, w->n_in);
}
