/* matmul.c - y = x W^T over the thread pool, in ggml's numerics.
 *
 * A matmul (or several sharing one input: Q, K and V; gate and up) is one
 * threadpool_run with two phases and a barrier between them:
 *
 *   1. convert: the n_tok f32 activation rows become the weight type's
 *      vec_dot_type (Q8_0, Q8_1, Q8_K, f16, bf16) in scratch, each thread a
 *      share. F32 weights need no conversion and read x in place.
 *   2. rows: the output rows of all the weights, cut into tiles of
 *      KERN_MM_TILE rows and laid end to end, are handed out in chunks of
 *      contiguous tiles (about 8 per thread) from an atomic counter, so a
 *      thread slowed for a while takes fewer; a thread computes every
 *      y[t][o] of the rows it takes.
 *
 * Two ways to do both phases, picked per weight type from the table:
 *
 *   - generic (the reference, and any type an ISA file leaves alone):
 *     from_float into rows of standard blocks; then one vec_dot per output
 *     element (a weight row stays in cache across the tokens).
 *   - tiled (t->mm_rows[type] set): the ISA file's own activation layout
 *     (t->mm_act_bytes / mm_act_convert of the vec_dot_type) and its own
 *     kernel over tiles of rows x tokens. Its contract (kernels.h) is that
 *     every y[t][o] equals the table's vec_dot bit for bit.
 *
 * Either way each y element depends only on W[o] and x[t], so y is
 * bit-identical for any thread count, any n_tok and any position of a token
 * in the batch (batch invariance), and for any grouping of weights into one
 * call.
 *
 * The barrier is a counter in the job, spun on (pause, then sched_yield every
 * 256 rounds so a thread waiting for a descheduled one gives way): one run
 * per matmul instead of two halves the wake-ups, which dominate small
 * matmuls in decode.
 *
 * Scratch layout (generic): converted row t starts at t * stride, where
 * stride is the row's byte size rounded up to 64. The tiled layouts are the
 * ISA file's.
 *
 * Preconditions (CHECKed, they are our bugs, not input errors): the weight
 * type is supported, n_in is a multiple of both block sizes (the loader
 * validates shapes), scratch is given unless the weights are F32, weights
 * of one call share n_in and vec_dot_type.
 */
#include <sched.h>
#include <stdatomic.h>

#include "base/err.h"
#include "kernels/kernels_int.h"

static size_t act_stride(int vec_dot_type, int64_t n_in)
{
	size_t bytes = qtype_row_size(vec_dot_type, n_in);
	return (bytes + 63) & ~(size_t)63;
}

static int tiled(const kern_table *t, int type)
{
	int vt = qtype_get(type)->vec_dot_type;
	return t->mm_rows[type] && (vt == QTYPE_F32 || (t->mm_act_convert[vt] && t->mm_act_bytes[vt]));
}

size_t kern_matmul_scratch_t(const kern_table *t, const kern_weight *w, int64_t n_tok)
{
	const qtype_info *qi = qtype_get(w->type);
	CHECK(qi && qi->supported);
	int vt = qi->vec_dot_type;
	if (vt == QTYPE_F32)
		return 0;
	size_t generic = (size_t)n_tok * act_stride(vt, w->n_in);
	if (tiled(t, w->type)) {
		size_t tl = t->mm_act_bytes[vt](w->n_in, n_tok);
		return tl > generic ? tl : generic;
	}
	return generic;
}

size_t kern_matmul_scratch(const kern_weight *w, int64_t n_tok)
{
	kern_init();
	return kern_matmul_scratch_t(&kern, w, n_tok);
}

typedef struct {
	const kern_table *t;
	int n_w;
	const kern_weight *const *w;
	float *const *y;       /* [n_w] -> [n_tok][n_out of that weight] */
	const float *x;        /* [n_tok][n_in] */
	int64_t n_tok, n_in, n_tiles;
	int vt, use_tiled;

	const uint8_t *act;    /* converted rows, or x itself for F32 weights */
	uint8_t *scratch;
	size_t act_stride;     /* generic layout */
	int act_blck;
	size_t act_blck_size;

	atomic_int bar_count, bar_gen;
	atomic_llong next_tile; /* the first tile no thread has taken yet */
} matmul_job;

static void barrier(matmul_job *j, int nth)
{
	if (nth == 1)
		return;
	int g = atomic_load_explicit(&j->bar_gen, memory_order_acquire);
	if (atomic_fetch_add_explicit(&j->bar_count, 1, memory_order_acq_rel) == nth - 1) {
		atomic_store_explicit(&j->bar_count, 0, memory_order_relaxed);
		atomic_store_explicit(&j->bar_gen, g + 1, memory_order_release);
		return;
	}
	for (int i = 0; atomic_load_explicit(&j->bar_gen, memory_order_acquire) == g; i++) {
		if ((i & 255) == 255)
			sched_yield();
#if defined(__x86_64__) || defined(__i386__)
		else
			__builtin_ia32_pause();
#endif
	}
}

static void convert_generic(const matmul_job *j, int ith, int nth)
{
	kern_from_float_fn ff = j->t->from_float[j->vt];
	int64_t per_row = j->n_in / j->act_blck;
	int64_t u, u_end;
	kern_split(j->n_tok * per_row, ith, nth, &u, &u_end);
	while (u < u_end) {
		int64_t t = u / per_row, b = u % per_row;
		int64_t nb = per_row - b; /* blocks left in this row */
		if (nb > u_end - u)
			nb = u_end - u;
		ff(j->x + t * j->n_in + b * j->act_blck,
		   j->scratch + (size_t)t * j->act_stride + (size_t)b * j->act_blck_size, nb * j->act_blck);
		u += nb;
	}
}

/* Rows [o0, o1) of weight w by vec_dot. */
static void rows_generic(const matmul_job *j, const kern_weight *w, float *y, int64_t o0, int64_t o1)
{
	kern_vec_dot_fn vd = j->t->vec_dot[w->type];
	size_t rs = qtype_row_size(w->type, w->n_in);
	for (int64_t o = o0; o < o1; o++) {
		const uint8_t *wrow = (const uint8_t *)w->data + (size_t)o * rs;
		for (int64_t t = 0; t < j->n_tok; t++)
			y[t * w->n_out + o] = vd(w->n_in, wrow, j->act + (size_t)t * j->act_stride);
	}
}

static void mm_part(void *p, int ith, int nth)
{
	matmul_job *j = p;
	if (j->vt != QTYPE_F32) {
		if (j->use_tiled)
			j->t->mm_act_convert[j->vt](j->x, j->n_in, j->n_tok, j->scratch, ith, nth);
		else
			convert_generic(j, ith, nth);
		barrier(j, nth);
	}
	/* Tiles are handed out in chunks from a shared counter, not split in
	   equal halves: on a VM, or wherever a core is slowed for a while (by
	   another process, an interrupt, its share of memory bandwidth), the
	   faster thread takes more and none waits for a straggler at the end.
	   A tile's arithmetic does not depend on which thread computes it. */
	const int64_t chunk = nth == 1 ? j->n_tiles : (j->n_tiles + 8 * nth - 1) / (8 * nth);
	for (;;) {
		int64_t tile = atomic_fetch_add_explicit(&j->next_tile, chunk, memory_order_relaxed);
		if (tile >= j->n_tiles)
			break;
		int64_t tile_end = tile + chunk < j->n_tiles ? tile + chunk : j->n_tiles;
		for (int i = 0; i < j->n_w && tile < tile_end; i++) {
			const kern_weight *w = j->w[i];
			int64_t nt = (w->n_out + KERN_MM_TILE - 1) / KERN_MM_TILE;
			if (tile < nt) {
				int64_t e = tile_end < nt ? tile_end : nt;
				if (j->use_tiled)
					j->t->mm_rows[w->type](w, j->act, j->n_tok, j->y[i], tile, e);
				else
					rows_generic(j, w, j->y[i], tile * KERN_MM_TILE,
						     e * KERN_MM_TILE < w->n_out ? e * KERN_MM_TILE : w->n_out);
				tile = e;
			}
			tile -= nt;
			tile_end -= nt;
		}
	}
}

void kern_matmul_n_t(const kern_table *t, threadpool *tp, int n_w, const kern_weight *const *w, const float *x,
		     int64_t n_tok, float *const *y, void *scratch)
{
	CHECK(n_w >= 1);
	const qtype_info *qi = qtype_get(w[0]->type);
	CHECK(qi && qi->supported && t->vec_dot[w[0]->type]);
	int vt = qi->vec_dot_type;
	const qtype_info *vi = qtype_get(vt);
	int64_t n_in = w[0]->n_in, n_tiles = 0;
	int use_tiled = tiled(t, w[0]->type);
	for (int i = 0; i < n_w; i++) {
		const qtype_info *q = qtype_get(w[i]->type);
		CHECK(q && q->supported && t->vec_dot[w[i]->type] && q->vec_dot_type == vt && w[i]->n_in == n_in);
		CHECK(n_in > 0 && n_in % q->blck == 0 && n_in % vi->blck == 0);
		if (tiled(t, w[i]->type) != use_tiled) { /* mixed paths: one call each */
			for (int k = 0; k < n_w; k++)
				kern_matmul_n_t(t, tp, 1, &w[k], x, n_tok, &y[k], scratch);
			return;
		}
		n_tiles += (w[i]->n_out + KERN_MM_TILE - 1) / KERN_MM_TILE;
	}
	if (n_tok <= 0 || n_tiles == 0)
		return;
	matmul_job j = {
		.t = t, .n_w = n_w, .w = w, .y = y, .x = x, .n_tok = n_tok, .n_in = n_in, .n_tiles = n_tiles,
		.vt = vt, .use_tiled = use_tiled, .scratch = scratch, .act_blck = vi->blck,
		.act_blck_size = (size_t)vi->type_size,
	};
	atomic_init(&j.bar_count, 0);
	atomic_init(&j.bar_gen, 0);
	atomic_init(&j.next_tile, 0);
	if (vt == QTYPE_F32) {
		j.act = (const uint8_t *)x;
		j.act_stride = (size_t)n_in * sizeof(float);
	} else {
		CHECK(scratch);
		j.act = scratch;
		j.act_stride = act_stride(vt, n_in);
		CHECK(use_tiled || t->from_float[vt]);
	}
	if (tp)
		threadpool_run(tp, mm_part, &j);
	else
		mm_part(&j, 0, 1);
}

void kern_matmul_t(const kern_table *t, threadpool *tp, const kern_weight *w, const float *x, int64_t n_tok,
		   float *y, void *scratch)
{
	kern_matmul_n_t(t, tp, 1, &w, x, n_tok, &y, scratch);
}

void kern_matmul(threadpool *tp, const kern_weight *w, const float *x, int64_t n_tok, float *y, void *scratch)
{
	kern_init();
	kern_matmul_n_t(&kern, tp, 1, &w, x, n_tok, &y, scratch);
}

void kern_matmul_n(threadpool *tp, int n_w, const kern_weight *const *w, const float *x, int64_t n_tok,
		   float *const *y, void *scratch)
{
	kern_init();
	kern_matmul_n_t(&kern, tp, n_w, w, x, n_tok, y, scratch);
}

void kern_get_row(const kern_weight *w, int64_t row, float *out)
{
	kern_init();
	CHECK(row >= 0 && row < w->n_out && kern.to_float[w->type]);
	size_t rs = qtype_row_size(w->type, w->n_in);
	kern.to_float[w->type]((const uint8_t *)w->data + (size_t)row * rs, out, w->n_in);
}
