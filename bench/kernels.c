/* bench/kernels.c - times each kernel implementation the CPU supports against ref.
 *
 *   make BUILD=b bench-kernels            build b/bench/kernels and run the default set
 *   b/bench/kernels [--threads T] [--reps R] [--quick] [--best] [--filter SUBSTR] [--impl NAME]
 *   (--best reports the fastest repetition instead of the median: for A/B
 *   tuning on a machine shared with other work)
 *
 * Cases (each timed for ref and every SIMD implementation; the median of R
 * repetitions, after one warm-up):
 *   matmul TYPE n_in x n_out, n_tok tokens: the 110M model's shapes and a
 *     64 MiB Q8_0 matrix (bigger than the caches: decode is a stream from
 *     memory); reported as GB/s of weights and GOP/s (2 n_in n_out n_tok).
 *   quantize Q8_0 / Q8_K activations, rmsnorm, swiglu, softmax, rope:
 *     elements per second (single thread).
 *   attention: one decode token over a 512-position f16 context, a
 *     128-token prefill chunk, 12 heads of 64, and one decode step of 16
 *     sequences at position 127 over 12 layers' pools (75 MiB, beyond the
 *     caches, as batched decode reads them; the time is per layer).
 * Output: one line per case and implementation, with the speedup over ref.
 * Numbers are wall clock on a quiet machine; compare runs made back to back.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/threadpool.h"
#include "kernels/kernels.h"

static const char *impl_names[] = { "ref", "avx2", "avx512" };

static int reps = 5, quick, best;
static const char *filter, *only_impl;
static threadpool *tp;

static uint64_t rs = 88172645463325252ull;
static float frand(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return (float)((double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}


typedef void (*case_fn)(const kern_table *t, void *arg);

/* The k-th implementation's table, or NULL if absent or not selected. */
static const kern_table *impl_at(size_t k)
{
	if (only_impl && strcmp(only_impl, impl_names[k]))
		return NULL;
	return kern_impl(impl_names[k]);
}

/* Median seconds of one call of fn over reps (after one warm-up). */
static double timeit(case_fn fn, const kern_table *t, void *arg, int n_reps)
{
	double s[64];
	if (n_reps > 64)
		n_reps = 64;
	fn(t, arg);
	for (int r = 0; r < n_reps; r++) {
		int64_t t0 = clock_now_ns();
		fn(t, arg);
		s[r] = (double)(clock_now_ns() - t0) * 1e-9;
	}
	qsort(s, (size_t)n_reps, sizeof(double), cmpd);
	return best ? s[0] : s[n_reps / 2];
}

/* ---- matmul ---------------------------------------------------------------- */

typedef struct {
	kern_weight w;
	float *x, *y;
	int64_t n_tok;
	void *scratch;
} mm_arg;

static void mm_fn(const kern_table *t, void *p)
{
	mm_arg *a = p;
	kern_matmul_t(t, tp, &a->w, a->x, a->n_tok, a->y, a->scratch);
}

static void bench_matmul(int type, int64_t n_in, int64_t n_out, int64_t n_tok, const char *what)
{
	char name[128];
	snprintf(name, sizeof(name), "matmul %-5s %5ldx%-6ld tok %-4ld %s", qtype_name(type), (long)n_in, (long)n_out,
		 (long)n_tok, what);
	if (filter && !strstr(name, filter))
		return;
	size_t rsz = qtype_row_size(type, n_in), wbytes = rsz * (size_t)n_out;
	uint8_t *wd = alloc_aligned(64, wbytes);
	/* huge pages where the OS allows, as the model loader gives weights */
	madvise((void *)((uintptr_t)wd & ~(uintptr_t)4095), wbytes, MADV_HUGEPAGE);
	float *row = malloc(sizeof(float) * (size_t)n_in);
	const kern_table *ref = kern_ref();
	const qtype_info *qi = qtype_get(type);
	for (int64_t o = 0; o < n_out; o++) {
		for (int64_t i = 0; i < n_in; i++)
			row[i] = frand();
		if (ref->from_float[type]) {
			ref->from_float[type](row, wd + (size_t)o * rsz, n_in);
		} else { /* random bytes with small f16 scales */
			for (size_t k = 0; k < rsz; k++)
				wd[(size_t)o * rsz + k] = (uint8_t)(rs >> 24), frand();
			for (int64_t b = 0; b < n_in / qi->blck; b++) {
				uint8_t *blk = wd + (size_t)o * rsz + (size_t)b * qi->type_size;
				uint16_t h = 0x1400; /* ~0.001 */
				if (type == QTYPE_Q6_K)
					memcpy(blk + 208, &h, 2);
				else
					memcpy(blk, &h, 2);
				if (type == QTYPE_Q4_K || type == QTYPE_Q5_K || type == QTYPE_Q4_1 || type == QTYPE_Q5_1)
					memcpy(blk + 2, &h, 2);
			}
		}
	}
	free(row);
	mm_arg a = { { type, n_in, n_out, wd }, NULL, NULL, n_tok, NULL };
	a.x = alloc_aligned(64, sizeof(float) * (size_t)(n_in * n_tok));
	a.y = alloc_aligned(64, sizeof(float) * (size_t)(n_out * n_tok));
	for (int64_t i = 0; i < n_in * n_tok; i++)
		a.x[i] = frand();
	double ref_s = 0;
	for (size_t k = 0; k < sizeof(impl_names) / sizeof(impl_names[0]); k++) {
		const kern_table *t = impl_at(k);
		if (!t)
			continue;
		if (k == 0 && (quick || n_tok * n_in * n_out > (int64_t)4e9 || wbytes > (32u << 20)))
			continue; /* the reference is too slow for big products */
		size_t sb = kern_matmul_scratch_t(t, &a.w, n_tok);
		a.scratch = alloc_aligned(64, sb ? sb : 64);
		double s = timeit(mm_fn, t, &a, k == 0 ? 1 : reps);
		alloc_free(a.scratch);
		if (k == 0)
			ref_s = s;
		printf("%-58s %-7s %9.3f ms %8.2f GB/s %8.1f GOP/s", name, t->name, s * 1e3, (double)wbytes / s * 1e-9,
		       2.0 * (double)n_in * (double)n_out * (double)n_tok / s * 1e-9);
		if (ref_s > 0 && k > 0)
			printf("  x%.1f vs ref", ref_s / s);
		printf("\n");
		fflush(stdout);
	}
	alloc_free(wd);
	alloc_free(a.x);
	alloc_free(a.y);
}

/* ---- memory read ceiling ----------------------------------------------------- */

typedef struct {
	const uint64_t *p;
	size_t n;
	uint64_t sink[64];
} rd_arg;

static void rd_part(void *p, int ith, int nth)
{
	rd_arg *a = p;
	size_t w0 = a->n * (size_t)ith / (size_t)nth, w1 = a->n * (size_t)(ith + 1) / (size_t)nth;
	uint64_t s[8] = { 0 };
	for (size_t i = w0; i + 8 <= w1; i += 8)
		for (int k = 0; k < 8; k++)
			s[k] += a->p[i + k];
	a->sink[ith % 64] = s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
}

static void rd_fn(const kern_table *t, void *p)
{
	(void)t;
	threadpool_run(tp, rd_part, p);
}

static void bench_read(void)
{
	if (filter && !strstr("memread 256MiB", filter))
		return;
	rd_arg a = { alloc_aligned(64, (size_t)256 << 20), ((size_t)256 << 20) / 8, { 0 } };
	memset((void *)a.p, 1, (size_t)256 << 20);
	double s = timeit(rd_fn, NULL, &a, reps);
	printf("%-58s %-7s %9.3f ms %8.2f GB/s\n", "memread 256MiB (the ceiling for decode)", "-", s * 1e3,
	       (double)((size_t)256 << 20) / s * 1e-9);
	alloc_free((void *)a.p);
}

/* ---- element-wise ops ---------------------------------------------------------- */

typedef struct {
	float *x, *w, *o;
	void *q;
	int64_t n;
	int op;
} op_arg;

enum { OP_Q8_0, OP_Q8_K, OP_RMS, OP_SWIGLU, OP_SOFTMAX, OP_ROPE };
static const char *op_names[] = { "quantize Q8_0", "quantize Q8_K", "rmsnorm", "swiglu", "softmax", "rope 64/64" };

static void op_fn(const kern_table *t, void *p)
{
	op_arg *a = p;
	switch (a->op) {
	case OP_Q8_0: t->from_float[QTYPE_Q8_0](a->x, a->q, a->n); break;
	case OP_Q8_K: t->from_float[QTYPE_Q8_K](a->x, a->q, a->n); break;
	case OP_RMS: t->rmsnorm(a->o, a->x, a->w, a->n, 1e-5f); break;
	case OP_SWIGLU: t->swiglu(a->o, a->x, a->n); break;
	case OP_SOFTMAX: t->softmax(a->o, a->n); break;
	case OP_ROPE: t->rope(a->o, (int)(a->n / 64), 64, 64, 0, a->w, a->x); break;
	}
}

static void bench_ops(void)
{
	const int64_t n = 1 << 16;
	op_arg a = { alloc_aligned(64, 4 * n), alloc_aligned(64, 4 * n), alloc_aligned(64, 4 * n),
		     alloc_aligned(64, 2 * n), n, 0 };
	for (int64_t i = 0; i < n; i++) {
		a.x[i] = frand();
		a.w[i] = frand();
		a.o[i] = frand();
	}
	for (int op = 0; op < (int)(sizeof(op_names) / sizeof(op_names[0])); op++) {
		if (filter && !strstr(op_names[op], filter))
			continue;
		double ref_s = 0;
		for (size_t k = 0; k < sizeof(impl_names) / sizeof(impl_names[0]); k++) {
			const kern_table *t = impl_at(k);
			if (!t)
				continue;
			a.op = op;
			double s = timeit(op_fn, t, &a, reps);
			if (k == 0)
				ref_s = s;
			printf("%-58s %-7s %9.3f ms %8.1f Melem/s", op_names[op], t->name, s * 1e3, (double)n / s * 1e-6);
			if (k > 0)
				printf("  x%.1f vs ref", ref_s / s);
			printf("\n");
		}
	}
	alloc_free(a.x);
	alloc_free(a.w);
	alloc_free(a.o);
	alloc_free(a.q);
}

/* ---- attention ------------------------------------------------------------------- */

#define ATT_MAX_LAYERS 12

typedef struct {
	kern_attn a[ATT_MAX_LAYERS];
	int n_layers;
	float *work;
	size_t wf;
} at_arg;

static void at_fn(const kern_table *t, void *p)
{
	at_arg *a = p;
	for (int l = 0; l < a->n_layers; l++)
		kern_attention_t(t, tp, &a->a[l], a->work, a->wf);
}

/* n_seq sequences of n_tok tokens each, the last at position ctx - 1, over
   n_layers separate K/V pools (a call per layer: 12 layers of 16 sequences
   at ctx 128 are 75 MiB, beyond the caches, as in batched decode). The
   time is per layer. */
static void bench_attn(int n_seq, int n_tok, int ctx, int n_layers, const char *what)
{
	char name[128];
	snprintf(name, sizeof(name), "attention 12x64 f16 %s", what);
	if (filter && !strstr(name, filter))
		return;
	const int H = 12, hd = 64, ps = 16, npages = (ctx + ps - 1) / ps, nt = n_seq * n_tok;
	size_t kvn = (size_t)n_seq * npages * ps * H * hd;
	uint16_t *k[ATT_MAX_LAYERS], *v[ATT_MAX_LAYERS];
	float *tmp = malloc(4 * kvn);
	for (size_t i = 0; i < kvn; i++)
		tmp[i] = frand();
	for (int l = 0; l < n_layers; l++) {
		k[l] = alloc_aligned(64, 2 * kvn);
		v[l] = alloc_aligned(64, 2 * kvn);
		kern_ref()->from_float[QTYPE_F16](tmp, k[l], (int64_t)kvn);
		kern_ref()->from_float[QTYPE_F16](tmp, v[l], (int64_t)kvn);
	}
	free(tmp);
	int32_t *pages = malloc(sizeof(int32_t) * (size_t)(n_seq * npages)), *pos = malloc(4 * (size_t)nt),
		*seq = malloc(4 * (size_t)nt);
	const int32_t **pt = malloc(sizeof(*pt) * (size_t)n_seq);
	for (int i = 0; i < n_seq * npages; i++)
		pages[i] = i;
	for (int s = 0; s < n_seq; s++) {
		pt[s] = pages + (size_t)s * npages;
		for (int t = 0; t < n_tok; t++) {
			pos[s * n_tok + t] = ctx - n_tok + t;
			seq[s * n_tok + t] = s;
		}
	}
	at_arg a;
	float *q = alloc_aligned(64, sizeof(float) * (size_t)(nt * H * hd));
	float *out = alloc_aligned(64, sizeof(float) * (size_t)(nt * H * hd));
	for (int i = 0; i < nt * H * hd; i++)
		q[i] = frand();
	a.n_layers = n_layers;
	for (int l = 0; l < n_layers; l++)
		a.a[l] = (kern_attn){ .n_tokens = nt, .n_head = H, .n_head_kv = H, .head_dim = hd,
				      .kv_dtype = QTYPE_F16, .page_size = ps, .scale = 0.125f, .k = k[l], .v = v[l],
				      .pos = pos, .seq = seq, .pages = pt, .q = q, .out = out };
	a.wf = kern_attn_work_floats(H, H, hd, ctx);
	a.work = alloc_aligned(64, sizeof(float) * a.wf * (size_t)threadpool_size(tp));
	double ref_s = 0;
	for (size_t i = 0; i < sizeof(impl_names) / sizeof(impl_names[0]); i++) {
		const kern_table *t = impl_at(i);
		if (!t)
			continue;
		double s = timeit(at_fn, t, &a, reps) / n_layers;
		if (i == 0)
			ref_s = s;
		printf("%-58s %-7s %9.3f ms", name, t->name, s * 1e3);
		if (i > 0)
			printf("  x%.1f vs ref", ref_s / s);
		printf("\n");
	}
	for (int l = 0; l < n_layers; l++) {
		alloc_free(k[l]);
		alloc_free(v[l]);
	}
	alloc_free(q);
	alloc_free(out);
	alloc_free(a.work);
	free(pages);
	free(pt);
	free(pos);
	free(seq);
}

int main(int argc, char **argv)
{
	int threads = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else if (!strcmp(argv[i], "--best"))
			best = 1;
		else if (!strcmp(argv[i], "--impl") && i + 1 < argc)
			only_impl = argv[++i];
		else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
			filter = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--threads T] [--reps R] [--quick] [--best] [--filter SUBSTR] [--impl NAME]\n", argv[0]);
			return 2;
		}
	}
	if (reps < 1)
		reps = 1;
	char err[ERR_LEN];
	kern_init();
	tp = threadpool_create(threads > 0 ? threads : threadpool_ncpu(), err);
	if (!tp) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	printf("# %d threads, median of %d; GB/s = weight bytes / time\n", threadpool_size(tp), reps);
	static const int types[] = { QTYPE_Q8_0, QTYPE_Q4_0, QTYPE_Q4_K, QTYPE_Q6_K, QTYPE_Q5_K, QTYPE_Q4_1, QTYPE_Q5_0,
				     QTYPE_F16, QTYPE_BF16, QTYPE_F32 };
	bench_read();
	/* decode: one token through a matrix bigger than the caches */
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		bench_matmul(types[i], 4096, (int64_t)(256.0 * 1048576 / qtype_row_size(types[i], 4096)), 1, "256MiB");
	/* batched decode: 16 tokens through a matrix bigger than the caches */
	for (size_t i = 0; i < 4; i++)
		bench_matmul(types[i], 768, (int64_t)(256.0 * 1048576 / qtype_row_size(types[i], 768)), 16, "256MiB");
	/* decode from L2 (256 rows of 4096): the GEMV's own speed, memory aside */
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		bench_matmul(types[i], 4096, 256, 1, "in L2");
	/* the same with the 110M model's row length (768) */
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		bench_matmul(types[i], 768, (int64_t)(256.0 * 1048576 / qtype_row_size(types[i], 768)), 1, "256MiB");
	/* the 110M model's ffn_up (768 -> 2048) and ffn_down at decode, batched decode, prefill */
	static const int64_t toks[] = { 1, 4, 16, 64, 512 };
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		for (size_t k = 0; k < sizeof(toks) / sizeof(toks[0]); k++) {
			if (quick && toks[k] != 1 && toks[k] != 512)
				continue;
			bench_matmul(types[i], 768, 2048, toks[k], "110M ffn_up");
		}
	bench_ops();
	bench_attn(1, 1, 512, 1, "decode ctx 512");
	bench_attn(1, 128, 512, 1, "prefill 128 of 512");
	bench_attn(16, 1, 128, quick ? 1 : ATT_MAX_LAYERS, "decode 16 seqs ctx 128, 12 pools");
	threadpool_destroy(tp);
	return 0;
}
