/* matmul.c - y = x W^T over the thread pool, in ggml's numerics.
 *
 * A matmul is two parallel phases, each one threadpool_run:
 *
 *   1. convert: the n_tok f32 activation rows become rows of the weight
 *      type's vec_dot_type (Q8_0, Q8_1, Q8_K, f16, bf16) in scratch. F32
 *      weights need no conversion and read x in place (no scratch).
 *   2. dot: the n_out weight rows are split into contiguous ranges, one per
 *      thread, and every y[t][o] of a thread's rows is computed.
 *
 * Two ways to do both phases, picked per weight type from the table:
 *
 *   - generic (the reference, and any type an ISA file leaves alone):
 *     from_float into rows of standard blocks, the work split into ranges of
 *     blocks; then one vec_dot per output element (a weight row stays in
 *     cache across the tokens).
 *   - tiled (t->mm_rows[type] set): the ISA file's own activation layout
 *     (t->mm_act_bytes / mm_act_convert of the vec_dot_type) and its own
 *     kernel over tiles of rows x tokens. Its contract (kernels.h) is that
 *     every y[t][o] equals the table's vec_dot bit for bit.
 *
 * Either way each y element depends only on W[o] and x[t], so y is
 * bit-identical for any thread count, any n_tok and any position of a token
 * in the batch (batch invariance). Two runs instead of one run with a
 * barrier keep the thread pool minimal; the cost is one extra wake-up per
 * matmul (about a microsecond with spinning workers).
 *
 * Scratch layout (generic): converted row t starts at t * stride, where
 * stride is the row's byte size rounded up to 64, so every row is 64-byte
 * aligned for SIMD code that wants it. The tiled layouts are the ISA file's.
 *
 * Preconditions (CHECKed, they are our bugs, not input errors): the weight
 * type is supported, n_in is a multiple of both block sizes (the loader
 * validates shapes), scratch is given unless the weights are F32.
 */
#include "base/err.h"
#include "kernels/kernels_int.h"

static size_t act_stride(int vec_dot_type, int64_t n_in)
{
	size_t bytes = qtype_row_size(vec_dot_type, n_in);
	return (bytes + 63) & ~(size_t)63;
}

size_t kern_matmul_scratch_t(const kern_table *t, const kern_weight *w, int64_t n_tok)
{
	const qtype_info *qi = qtype_get(w->type);
	CHECK(qi && qi->supported);
	int vt = qi->vec_dot_type;
	if (vt == QTYPE_F32)
		return 0;
	size_t generic = (size_t)n_tok * act_stride(vt, w->n_in);
	if (t->mm_rows[w->type] && t->mm_act_bytes[vt]) {
		size_t tiled = t->mm_act_bytes[vt](w->n_in, n_tok);
		return tiled > generic ? tiled : generic;
	}
	return generic;
}

size_t kern_matmul_scratch(const kern_weight *w, int64_t n_tok)
{
	kern_init();
	return kern_matmul_scratch_t(&kern, w, n_tok);
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
	kern_mm_act_convert_fn mm_convert;
	kern_mm_rows_fn mm_rows;
} matmul_job;

static void convert_part(void *p, int ith, int nth)
{
	const matmul_job *j = p;
	int64_t per_row = j->w->n_in / j->act_blck;
	int64_t u, u_end;
	kern_split(j->n_tok * per_row, ith, nth, &u, &u_end);
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
	kern_split(w->n_out, ith, nth, &o, &o_end);
	for (; o < o_end; o++) {
		const uint8_t *wrow = (const uint8_t *)w->data + (size_t)o * j->w_row_size;
		for (int64_t t = 0; t < j->n_tok; t++)
			j->y[t * w->n_out + o] =
				j->vec_dot(w->n_in, wrow, j->act + (size_t)t * j->act_stride);
	}
}

static void mm_convert_part(void *p, int ith, int nth)
{
	const matmul_job *j = p;
	j->mm_convert(j->x, j->w->n_in, j->n_tok, j->scratch, ith, nth);
}

static void mm_rows_part(void *p, int ith, int nth)
{
	const matmul_job *j = p;
	j->mm_rows(j->w, j->act, j->n_tok, j->y, ith, nth);
}

static void run(threadpool *tp, threadpool_fn fn, void *arg)
{
	if (tp)
		threadpool_run(tp, fn, arg);
	else
		fn(arg, 0, 1);
}

void kern_matmul_t(const kern_table *t, threadpool *tp, const kern_weight *w, const float *x,
		   int64_t n_tok, float *y, void *scratch)
{
	const qtype_info *qi = qtype_get(w->type);
	CHECK(qi && qi->supported && t->vec_dot[w->type]);
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
		.from_float = t->from_float[vt],
		.vec_dot = t->vec_dot[w->type],
		.mm_convert = t->mm_act_convert[vt],
		.mm_rows = t->mm_rows[w->type],
	};
	if (j.mm_rows && (vt == QTYPE_F32 || j.mm_convert)) {
		if (vt == QTYPE_F32) {
			j.act = (const uint8_t *)x;
		} else {
			CHECK(scratch);
			j.act = scratch;
			run(tp, mm_convert_part, &j);
		}
		run(tp, mm_rows_part, &j);
		return;
	}
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

void kern_matmul(threadpool *tp, const kern_weight *w, const float *x, int64_t n_tok, float *y,
		 void *scratch)
{
	kern_init();
	kern_matmul_t(&kern, tp, w, x, n_tok, y, scratch);
}

void kern_get_row(const kern_weight *w, int64_t row, float *out)
{
	kern_init();
	CHECK(row >= 0 && row < w->n_out && kern.to_float[w->type]);
	size_t rs = qtype_row_size(w->type, w->n_in);
	kern.to_float[w->type]((const uint8_t *)w->data + (size_t)row * rs, out, w->n_in);
}
