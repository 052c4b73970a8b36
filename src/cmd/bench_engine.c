/* bench_engine.c - `pdserve bench engine`: forward-pass throughput, llama-bench style.
 *
 *   pdserve bench engine --model-path M [-p 512] [-n 128] [-t T] [-r 3]
 *                        [--batches 1,4,16,64] [--kv-cache-dtype f16] [--json]
 *
 * What is timed (llama_forward directly, with a paged kvcache; no tokenizer,
 * no sampling, token ids drawn from a fixed seed):
 *   pp<P>   one sequence, P prompt tokens in forwards of --batch-size (512)
 *           tokens each, logits for the last token only: P / time.
 *   tg<N>   one sequence, N forwards of one token at positions 0..N-1, each
 *           with logits: N / time (llama-bench's tg also starts from an empty
 *           context).
 *   batched B sequences decoding together: N forwards of B tokens (one per
 *           sequence, positions 0..N-1), all with logits: B * N / time.
 *   read    the weights' read bandwidth: every thread of the pool reads its
 *           share of the mapped weight bytes (4 interleaved streams, prefetch),
 *           GB/s = bytes / time; tg's weight traffic (weight bytes x tg tok/s)
 *           is printed as a fraction of it (decode reads every weight once per
 *           token, so this is the roofline of single-stream decode).
 * Every number is the median of -r repetitions, after one untimed warm-up
 * of each test (first touch of the pages, caches).
 *
 * With --json the last line of stdout is one JSON object: model, threads,
 * kernels, weight_bytes, read_gb_s, pp_tok_s, tg_tok_s, tg_gb_s,
 * batched_tok_s {"1": .., "4": .., ...}.
 *
 * Flags and wiring only; exit 0 on success, 1 on a failure, 2 on usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/threadpool.h"
#include "cmd/cmd.h"
#include "cmd/common.h"
#include "engine/kvcache.h"
#include "kernels/kernels.h"
#include "model/llama.h"

#define MAX_BATCHES 8

typedef struct {
	const char *model;
	long pp, tg, threads, reps, chunk;
	int kv_dtype;
	int json;
	int n_batches;
	long batches[MAX_BATCHES];
} opts;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve bench engine [--model-path M] [-p 512] [-n 128] [-t T] [options]\n"
		"  --model-path, -m M      GGUF model (default as pdserve generate)\n"
		"  -p, --n-prompt P        prompt tokens for pp (default 512; 0 skips)\n"
		"  -n, --n-gen N           decode steps for tg and batched (default 128; 0 skips)\n"
		"  -t, --threads T         threads (default: all cores)\n"
		"  -r, --reps R            repetitions, the median is reported (default 3)\n"
		"  --batches LIST          concurrent sequences for batched decode (default 1,4,16,64; 0 skips)\n"
		"  --batch-size N          tokens per forward during pp (default 512)\n"
		"  --kv-cache-dtype D      f16 (default), bf16 or f32\n"
		"  --json                  last line: one JSON object with the results\n");
}

static int parse_batches(const char *s, opts *o)
{
	o->n_batches = 0;
	while (*s) {
		char *end;
		long v = strtol(s, &end, 10);
		if (end == s || v < 0 || v > 4096 || o->n_batches == MAX_BATCHES)
			return -1;
		if (v > 0)
			o->batches[o->n_batches++] = v;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			return -1;
	}
	return 0;
}

enum { OPT_BATCHES = 256, OPT_KV, OPT_JSON, OPT_CHUNK };

static int parse_args(int argc, char **argv, opts *o)
{
	static const struct option lo[] = {
		{ "model-path", required_argument, 0, 'm' }, { "model", required_argument, 0, 'm' },
		{ "n-prompt", required_argument, 0, 'p' },   { "n-gen", required_argument, 0, 'n' },
		{ "threads", required_argument, 0, 't' },    { "reps", required_argument, 0, 'r' },
		{ "batches", required_argument, 0, OPT_BATCHES },
		{ "kv-cache-dtype", required_argument, 0, OPT_KV },
		{ "batch-size", required_argument, 0, OPT_CHUNK },
		{ "json", no_argument, 0, OPT_JSON },        { "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:n:t:r:h", lo, NULL)) != -1) {
		const char *bad = NULL;
		switch (c) {
		case 'm': o->model = optarg; break;
		case 'p': if (cmd_parse_int(optarg, 0, 1 << 16, &o->pp)) bad = "-p"; break;
		case 'n': if (cmd_parse_int(optarg, 0, 1 << 16, &o->tg)) bad = "-n"; break;
		case 't': if (cmd_parse_int(optarg, 1, 1024, &o->threads)) bad = "--threads"; break;
		case 'r': if (cmd_parse_int(optarg, 1, 1000, &o->reps)) bad = "--reps"; break;
		case OPT_CHUNK: if (cmd_parse_int(optarg, 1, 1 << 16, &o->chunk)) bad = "--batch-size"; break;
		case OPT_BATCHES: if (parse_batches(optarg, o)) bad = "--batches"; break;
		case OPT_KV: if ((o->kv_dtype = cmd_kv_dtype(optarg)) < 0) bad = "--kv-cache-dtype"; break;
		case OPT_JSON: o->json = 1; break;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "pdserve bench engine: bad value for %s: '%s'\n", bad, optarg);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pdserve bench engine: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	return 0;
}

/* ---- read bandwidth of the weights ---------------------------------------- */

typedef struct {
	const uint8_t *lo;
	size_t n;
	uint64_t sink[64];
} read_job;

/* A thread's share is read as 4 interleaved streams with software prefetch
   1 KiB ahead: one plain sequential stream per core stalls on DRAM latency
   well below what the memory system delivers (the decode kernels read 8
   rows at a time, also with prefetch). */
typedef unsigned long long v2u64 __attribute__((vector_size(16)));

static void read_part(void *p, int ith, int nth)
{
	read_job *j = p;
	size_t lines = j->n / 64;
	size_t l0 = lines * (size_t)ith / (size_t)nth, l1 = lines * (size_t)(ith + 1) / (size_t)nth;
	size_t q = (l1 - l0) / 4;
	const uint8_t *s[4];
	for (int k = 0; k < 4; k++)
		s[k] = j->lo + (l0 + (size_t)k * q) * 64;
	v2u64 a = { 0, 0 }, b = { 0, 0 };
	for (size_t i = 0; i < q; i++) {
		for (int k = 0; k < 4; k++) {
			const v2u64 *v = (const v2u64 *)(const void *)(s[k] + i * 64);
			__builtin_prefetch(s[k] + i * 64 + 1024);
			a += v[0] ^ v[1];
			b += v[2] ^ v[3];
		}
	}
	v2u64 c = a ^ b;
	j->sink[ith % 64] = c[0] ^ c[1];
}

/* ---- the runs ------------------------------------------------------------- */

typedef struct {
	llama_ctx *lc;
	kvcache *kc;
	threadpool *tp;
	const llama_hparams *hp;
	int32_t *pages;       /* [max_seqs][pages_per_seq] */
	const int32_t **ptab; /* [max_seqs] */
	int32_t *npages;      /* [max_seqs] */
	int pages_per_seq;
	int32_t *tok, *pos, *seq;
	uint8_t *want;
	float *logits;
	uint64_t rng;
} bench;

static int32_t next_token(bench *b)
{
	b->rng = b->rng * 6364136223846793005ull + 1442695040888963407ull;
	return (int32_t)((b->rng >> 33) % (uint64_t)b->hp->n_vocab);
}

/* One forward of n tokens: sequence seq0 + i for i < n_seqs, positions. */
static int forward(bench *b, int n, int n_seqs, const int32_t *pos, int all_logits, char *err)
{
	for (int i = 0; i < n; i++) {
		b->tok[i] = next_token(b);
		b->want[i] = all_logits || i == n - 1;
	}
	llama_batch batch = { .n_tokens = n, .token = b->tok, .pos = pos, .seq = b->seq, .want_logits = b->want,
			      .pages = b->ptab, .n_pages = b->npages, .n_seqs = n_seqs };
	return llama_forward(b->lc, kvcache_view(b->kc), &batch, b->logits, err);
}

static int run_pp(bench *b, int p, int chunk, double *secs, char *err)
{
	int64_t t0 = clock_now_ns();
	for (int from = 0; from < p; from += chunk) {
		int n = p - from < chunk ? p - from : chunk;
		for (int i = 0; i < n; i++) {
			b->pos[i] = from + i;
			b->seq[i] = 0;
		}
		int rc = forward(b, n, 1, b->pos, 0, err);
		if (rc < 0)
			return rc;
	}
	*secs = (double)(clock_now_ns() - t0) * 1e-9;
	return 0;
}

/* n_steps forwards of n_seqs tokens each (one per sequence). */
static int run_decode(bench *b, int n_seqs, int n_steps, double *secs, char *err)
{
	int64_t t0 = clock_now_ns();
	for (int s = 0; s < n_steps; s++) {
		for (int i = 0; i < n_seqs; i++) {
			b->pos[i] = s;
			b->seq[i] = i;
		}
		int rc = forward(b, n_seqs, n_seqs, b->pos, 1, err);
		if (rc < 0)
			return rc;
	}
	*secs = (double)(clock_now_ns() - t0) * 1e-9;
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int cmd_bench_engine(int argc, char **argv)
{
	opts o = { .pp = 512, .tg = 128, .reps = 3, .chunk = 512, .kv_dtype = QTYPE_F16, .n_batches = 4,
		   .batches = { 1, 4, 16, 64 } };
	int rc = parse_args(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : rc;

	char err[ERR_LEN], path[4096];
	int status = 1;
	llama_model *m = NULL;
	bench b = { .rng = 0x853c49e6748fea9bull };
	double *samples = NULL;

	kern_init();
	if (cmd_model_path(o.model, path, sizeof(path), err) < 0)
		goto fail;
	if (!(m = llama_model_load(path, err)))
		goto fail;
	b.hp = llama_model_hparams(m);
	long max_seqs = 1;
	for (int i = 0; i < o.n_batches; i++)
		max_seqs = o.batches[i] > max_seqs ? o.batches[i] : max_seqs;
	long chunk = o.chunk < o.pp ? o.chunk : (o.pp ? o.pp : 1);
	long max_tokens = chunk > max_seqs ? chunk : max_seqs;
	long n_ctx = (o.pp > o.tg ? o.pp : o.tg) + 1;
	if (n_ctx > b.hp->n_ctx_train)
		LOGW("bench", "context %ld is beyond the model's training context %d (timing only)", n_ctx,
		     b.hp->n_ctx_train);
	if (!(b.tp = threadpool_create(o.threads ? (int)o.threads : threadpool_ncpu(), err)))
		goto fail;
	llama_ctx_config cc = { .max_tokens = (int)max_tokens, .n_ctx = (int)n_ctx, .tp = b.tp };
	if (!(b.lc = llama_ctx_create(m, &cc, err)))
		goto fail;
	b.pages_per_seq = (int)((n_ctx + 15) / 16);
	long seq_pages = (long)b.pages_per_seq * max_seqs;
	kvcache_config kcfg = { .dtype = o.kv_dtype, .page_size = 16, .n_pages = (int)seq_pages };
	if (!(b.kc = kvcache_create(b.hp, &kcfg, err)))
		goto fail;
	b.pages = alloc_array((size_t)seq_pages, sizeof(int32_t));
	b.ptab = alloc_array((size_t)max_seqs, sizeof(*b.ptab));
	b.npages = alloc_array((size_t)max_seqs, sizeof(int32_t));
	b.tok = alloc_array((size_t)max_tokens, sizeof(int32_t));
	b.pos = alloc_array((size_t)max_tokens, sizeof(int32_t));
	b.seq = alloc_array((size_t)max_tokens, sizeof(int32_t));
	b.want = alloc_array((size_t)max_tokens, 1);
	b.logits = alloc_array((size_t)max_tokens * (size_t)b.hp->n_vocab, sizeof(float));
	samples = alloc_array((size_t)o.reps, sizeof(double));
	if (!b.pages || !b.ptab || !b.npages || !b.tok || !b.pos || !b.seq || !b.want || !b.logits || !samples) {
		err_set(err, ERR_NOMEM, "out of memory");
		goto fail;
	}
	if (kvcache_alloc(b.kc, (int)seq_pages, b.pages) < 0) {
		err_set(err, ERR_NOMEM, "kv cache: cannot take %ld pages", seq_pages);
		goto fail;
	}
	for (long s = 0; s < max_seqs; s++) {
		b.ptab[s] = b.pages + s * b.pages_per_seq;
		b.npages[s] = b.pages_per_seq;
	}

	/* weights region and its read bandwidth */
	const gguf *g = llama_model_gguf(m);
	const uint8_t *lo = NULL, *hi = NULL;
	uint64_t n_params = 0;
	for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor *t = gguf_tensor_at(g, i);
		const uint8_t *p = t->data;
		if (!lo || p < lo)
			lo = p;
		if (!hi || p + t->nbytes > hi)
			hi = p + t->nbytes;
		uint64_t ne = 1;
		for (int d = 0; d < GGUF_MAX_DIMS; d++)
			ne *= (uint64_t)t->ne[d];
		n_params += ne;
	}
	size_t wbytes = llama_model_weight_bytes(m);
	read_job rj = { .lo = lo, .n = (size_t)(hi - lo) };
	double read_gbs = 0;
	threadpool_run(b.tp, read_part, &rj); /* warm-up: fault the pages in */
	for (long r = 0; r < o.reps; r++) {
		int64_t t0 = clock_now_ns();
		threadpool_run(b.tp, read_part, &rj);
		samples[r] = (double)rj.n / ((double)(clock_now_ns() - t0) * 1e-9) * 1e-9;
	}
	read_gbs = median(samples, (int)o.reps);

	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;
	int T = threadpool_size(b.tp);
	printf("| %-28s | %10s | %8s | %-12s | %7s | %-10s | %12s |\n", "model", "size", "params", "backend", "threads",
	       "test", "t/s");
	printf("|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------------", "------------:", "---------:",
	       "--------------", "--------:", "------------", "-------------:");
	char sz[32], pr[32], be[32];
	snprintf(sz, sizeof(sz), "%.2f MiB", (double)wbytes / 1048576.0);
	snprintf(pr, sizeof(pr), "%.2f M", (double)n_params * 1e-6);
	snprintf(be, sizeof(be), "CPU %s", kern.name);
#define ROW(test, val) printf("| %-28s | %10s | %8s | %-12s | %7d | %-10s | %12.2f |\n", name, sz, pr, be, T, test, val)

	double pp = 0, tg = 0, batched[MAX_BATCHES] = { 0 };
	char label[32];
	if (o.pp > 0) {
		double s;
		if (run_pp(&b, (int)o.pp, (int)chunk, &s, err) < 0)
			goto fail;
		for (long r = 0; r < o.reps; r++) {
			if (run_pp(&b, (int)o.pp, (int)chunk, &s, err) < 0)
				goto fail;
			samples[r] = (double)o.pp / s;
		}
		pp = median(samples, (int)o.reps);
		snprintf(label, sizeof(label), "pp%ld", o.pp);
		ROW(label, pp);
	}
	if (o.tg > 0) {
		double s;
		if (run_decode(&b, 1, (int)o.tg, &s, err) < 0)
			goto fail;
		for (long r = 0; r < o.reps; r++) {
			if (run_decode(&b, 1, (int)o.tg, &s, err) < 0)
				goto fail;
			samples[r] = (double)o.tg / s;
		}
		tg = median(samples, (int)o.reps);
		snprintf(label, sizeof(label), "tg%ld", o.tg);
		ROW(label, tg);
		for (int i = 0; i < o.n_batches; i++) {
			int B = (int)o.batches[i];
			if (run_decode(&b, B, (int)o.tg < 8 ? (int)o.tg : 8, &s, err) < 0)
				goto fail;
			for (long r = 0; r < o.reps; r++) {
				if (run_decode(&b, B, (int)o.tg, &s, err) < 0)
					goto fail;
				samples[r] = (double)B * (double)o.tg / s;
			}
			batched[i] = median(samples, (int)o.reps);
			snprintf(label, sizeof(label), "tg%ld x%d", o.tg, B);
			ROW(label, batched[i]);
		}
	}
#undef ROW
	double tg_gbs = tg * (double)wbytes * 1e-9;
	printf("\nweights %.1f MiB, read bandwidth %.2f GB/s (%d threads, median of %ld)", (double)wbytes / 1048576.0,
	       read_gbs, T, o.reps);
	if (tg > 0)
		printf("; tg reads %.2f GB/s = %.0f%% of it", tg_gbs, 100.0 * tg_gbs / read_gbs);
	printf("\n");
	for (int i = 0; i < o.n_batches && tg > 0; i++)
		printf("batched x%ld: %.2f tok/s = %.2fx single-stream\n", o.batches[i], batched[i], batched[i] / tg);
	if (o.json) {
		printf("{\"model\":\"%s\",\"threads\":%d,\"kernels\":\"%s\",\"weight_bytes\":%zu,\"read_gb_s\":%.3f,"
		       "\"pp\":%ld,\"tg\":%ld,\"pp_tok_s\":%.3f,\"tg_tok_s\":%.3f,\"tg_gb_s\":%.3f,\"batched_tok_s\":{",
		       name, T, kern.name, wbytes, read_gbs, o.pp, o.tg, pp, tg, tg_gbs);
		for (int i = 0; i < o.n_batches; i++)
			printf("%s\"%ld\":%.3f", i ? "," : "", o.batches[i], batched[i]);
		printf("}}\n");
	}
	status = 0;
	goto out;

fail:
	fprintf(stderr, "pdserve bench engine: %s\n", err);
out:
	alloc_free(samples);
	alloc_free(b.logits);
	alloc_free(b.want);
	alloc_free(b.seq);
	alloc_free(b.pos);
	alloc_free(b.tok);
	alloc_free(b.npages);
	alloc_free(b.ptab);
	alloc_free(b.pages);
	kvcache_destroy(b.kc);
	llama_ctx_destroy(b.lc);
	threadpool_destroy(b.tp);
	llama_model_destroy(m);
	return status;
}
