/* llama_test.c - the forward pass against llama.cpp's goldens.
 *
 * stories260K (real weights): logits of the F32 file within 1e-4 relative L2
 * of the float64 reference, and greedy ids equal to the golden for F32, Q8_0
 * and (first 20) Q4_0. synth/: every golden file, every prompt, within the
 * tolerances of ../shared/models/synth/README.md. Plus batch invariance:
 * a sequence's logits are bit-identical whether it runs alone, token by
 * token, or mixed with another sequence in one batch.
 */
#include <criterion/criterion.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "golden.h"
#include "kernels/kernels.h"
#include "model/llama.h"
#include "testutil.h"

typedef struct {
	llama_model *m;
	llama_ctx *c;
	threadpool *tp;
	llama_kv kv;
	void *kbuf[64], *vbuf[64];
	int n_vocab;
	int page_size;
} engine;

static void engine_open(engine *e, const char *path, int kv_dtype, int n_ctx, int max_tokens, int n_threads)
{
	char err[ERR_LEN];
	memset(e, 0, sizeof(*e));
	kern_init();
	e->m = llama_model_load(path, err);
	cr_assert(e->m, "load %s: %s", path, err);
	const llama_hparams *hp = llama_model_hparams(e->m);
	cr_assert(hp->n_layer <= 64);
	e->n_vocab = hp->n_vocab;
	e->tp = threadpool_create(n_threads, err);
	cr_assert(e->tp, "%s", err);
	llama_ctx_config cfg = { .max_tokens = max_tokens, .n_ctx = n_ctx, .tp = e->tp };
	e->c = llama_ctx_create(e->m, &cfg, err);
	cr_assert(e->c, "%s", err);
	e->page_size = 16;
	e->kv.dtype = kv_dtype;
	e->kv.page_size = e->page_size;
	e->kv.n_pages = 2 * ((n_ctx + 15) / 16); /* room for two sequences */
	e->kv.k = e->kbuf;
	e->kv.v = e->vbuf;
	size_t bytes = llama_kv_page_bytes(hp, kv_dtype, 16) * (size_t)e->kv.n_pages;
	for (int l = 0; l < hp->n_layer; l++) {
		e->kbuf[l] = calloc(1, bytes);
		e->vbuf[l] = calloc(1, bytes);
	}
}

static void engine_close(engine *e)
{
	const llama_hparams *hp = llama_model_hparams(e->m);
	for (int l = 0; l < hp->n_layer; l++) {
		free(e->kbuf[l]);
		free(e->vbuf[l]);
	}
	llama_ctx_destroy(e->c);
	threadpool_destroy(e->tp);
	llama_model_destroy(e->m);
}

/* Page table of sequence s: pages s*half .. */
static int32_t *seq_pages(engine *e, int s, int *n)
{
	int half = e->kv.n_pages / 2;
	int32_t *p = malloc(sizeof(int32_t) * (size_t)half);
	for (int i = 0; i < half; i++)
		p[i] = s * half + i;
	*n = half;
	return p;
}

/* Run ids[from..to) of sequence 0 as one batch; logits for every token. */
static void run_chunk(engine *e, const int32_t *ids, int from, int to, float *logits)
{
	int n = to - from, np;
	int32_t *pages = seq_pages(e, 0, &np);
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *seq = calloc((size_t)n, sizeof(int32_t));
	uint8_t *want = malloc((size_t)n);
	for (int i = 0; i < n; i++) {
		pos[i] = from + i;
		want[i] = 1;
	}
	const int32_t *pt[1] = { pages };
	llama_batch b = { .n_tokens = n, .token = ids + from, .pos = pos, .seq = seq, .want_logits = want,
			  .pages = pt, .n_pages = &np, .n_seqs = 1 };
	char err[ERR_LEN];
	int rc = llama_forward(e->c, &e->kv, &b, logits, err);
	cr_assert_eq(rc, 0, "forward: %s", err);
	free(pos);
	free(seq);
	free(want);
	free(pages);
}

static int argmax(const float *r, int n)
{
	int b = 0;
	for (int i = 1; i < n; i++)
		if (r[i] > r[b])
			b = i;
	return b;
}

/* Prompt in one batch, then n_gen greedy steps one token at a time. */
static void greedy(engine *e, const int32_t *prompt, int n_prompt, int n_gen, int32_t *out)
{
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n_prompt + n_gen));
	memcpy(ids, prompt, sizeof(int32_t) * (size_t)n_prompt);
	float *logits = malloc(sizeof(float) * (size_t)n_prompt * e->n_vocab);
	run_chunk(e, ids, 0, n_prompt, logits);
	int next = argmax(logits + (size_t)(n_prompt - 1) * e->n_vocab, e->n_vocab);
	for (int i = 0; i < n_gen; i++) {
		out[i] = next;
		ids[n_prompt + i] = next;
		if (i + 1 < n_gen) {
			run_chunk(e, ids, n_prompt + i, n_prompt + i + 1, logits);
			next = argmax(logits, e->n_vocab);
		}
	}
	free(logits);
	free(ids);
}

static const int32_t story_prompt[] = { 1, 403, 407, 261, 378 };

/* "ids" line of stories260K.golden.txt (prompt + 64 generated + 1 more). */
static int32_t *stories_golden_ids(const char *key, int *n)
{
	const char *gp = test_shared("models/stories260K.golden.txt");
	if (!gp)
		return NULL;
	char *txt = test_read_file(gp, NULL);
	char *line = NULL;
	if (!strcmp(key, "ids")) {
		line = strstr(txt, "\nids ");
		line = line ? line + 5 : NULL;
	} else {
		line = strstr(txt, key);
		line = line ? strstr(line, "ids: ") : NULL;
		line = line ? line + 5 : NULL;
	}
	cr_assert(line, "golden line %s", key);
	int32_t *ids = malloc(sizeof(int32_t) * 128);
	*n = 0;
	char *p = line;
	while (*p && *p != '\n' && *n < 128) {
		char *endp;
		long v = strtol(p, &endp, 10);
		if (endp == p)
			break;
		ids[(*n)++] = (int32_t)v;
		p = endp;
	}
	free(txt);
	return ids;
}

Test(llama, stories260k_f32_logits_and_greedy)
{
	const char *path = test_shared("models/stories260K.gguf");
	const char *lpath = test_shared("models/stories260K.golden-logits.f32");
	if (!path || !lpath)
		cr_skip_test("../shared/models/stories260K.gguf not present");
	int n;
	int32_t *ids = stories_golden_ids("ids", &n);
	cr_assert_eq(n, 69);
	engine e;
	engine_open(&e, path, QTYPE_F32, 512, 128, 2);
	cr_assert_eq(e.n_vocab, 512);

	/* teacher-forced: 68 positions in one batch */
	size_t gbytes;
	float *gold = (float *)test_read_file(lpath, &gbytes);
	cr_assert_eq(gbytes, 68 * 512 * sizeof(float));
	float *logits = malloc(sizeof(float) * 68 * 512);
	run_chunk(&e, ids, 0, 68, logits);
	double worst = 0;
	for (int p = 0; p < 68; p++) {
		double num = 0, den = 0;
		for (int j = 0; j < 512; j++) {
			double d = logits[p * 512 + j] - gold[p * 512 + j];
			num += d * d;
			den += (double)gold[p * 512 + j] * gold[p * 512 + j];
		}
		worst = fmax(worst, sqrt(num / den));
	}
	cr_log_info("stories260K f32: worst relative L2 %.3g", worst);
	cr_expect_lt(worst, 1e-4, "relative L2 %.3g", worst);

	int32_t out[64];
	greedy(&e, story_prompt, 5, 64, out);
	for (int i = 0; i < 64; i++)
		cr_expect_eq(out[i], ids[5 + i], "step %d: got %d want %d", i, out[i], ids[5 + i]);
	free(logits);
	free(gold);
	free(ids);
	engine_close(&e);
}

static void quant_greedy(const char *file, const char *key, int must_match)
{
	const char *path = test_shared(file);
	if (!path)
		cr_skip_test("%s not present", file);
	int n;
	int32_t *want = stories_golden_ids(key, &n);
	cr_assert_eq(n, 64);
	engine e;
	engine_open(&e, path, QTYPE_F16, 512, 64, 2); /* llama.cpp's default F16 KV, like the golden */
	int32_t out[64];
	greedy(&e, story_prompt, 5, 64, out);
	int match = 0;
	while (match < 64 && out[match] == want[match])
		match++;
	cr_log_info("%s: %d of 64 greedy ids equal llama.cpp's", file, match);
	cr_expect_geq(match, must_match, "%s: only %d leading ids match (need %d)", file, match, must_match);
	free(want);
	engine_close(&e);
}

Test(llama, stories260k_q8_0_greedy) { quant_greedy("models/stories260K-q8_0.gguf", "stories260K-q8_0.gguf", 64); }
Test(llama, stories260k_q4_0_greedy) { quant_greedy("models/stories260K-q4_0.gguf", "stories260K-q4_0.gguf", 20); }

/* ---- synth goldens ------------------------------------------------------- */

typedef struct {
	const char *file;   /* under models/synth/ */
	double max_abs;     /* 0 = not checked */
	double mean_rel;
	double max_logprob;
	double min_top1;
	double tie_eps;
	int greedy_exact;   /* all 32 greedy ids must equal */
} synth_case;

/* Tolerances from ../shared/models/synth/README.md ("Acceptance tolerances"). */
static const synth_case synth_cases[] = {
	{ "ktiny-f32", 1e-3, 0, 0, 1.0, 0, 1 },
	{ "ktiny-f16", 0, 5e-3, 0, 0.97, 0.05, 0 },
	{ "ktiny-bf16", 0, 5e-3, 0, 0.97, 0.05, 0 },
	{ "ktiny-q8_0", 0, 0.02, 2, 0.85, 0.05, 0 },
	{ "ktiny-q4_0", 0, 0.02, 2, 0.85, 0.05, 0 },
	{ "ktiny-q4_k_m", 0, 0.02, 2, 0.85, 0.05, 0 },
	{ "ktiny-q5_k_m", 0, 0.02, 2, 0.85, 0.05, 0 },
	{ "ktiny-q6_k", 0, 0.02, 2, 0.85, 0.05, 0 },
	{ "llama3tiny-q4_k_m", 0, 0.02, 2, 0.85, 0.05, 0 },
	{ "qwen2tiny-q8_0", 0, 0.02, 2, 0.85, 0.05, 0 },
};

static void run_synth(const synth_case *sc)
{
	char rel[256];
	snprintf(rel, sizeof(rel), "models/synth/%s.gguf", sc->file);
	const char *mpath = test_shared(rel);
	snprintf(rel, sizeof(rel), "models/synth/%s.golden.json", sc->file);
	const char *gpath = test_shared(rel);
	if (!mpath || !gpath)
		cr_skip_test("%s not present", sc->file);
	char gdir[4096];
	snprintf(gdir, sizeof(gdir), "%s", gpath);
	dirname(gdir);
	json_object *g = golden_load(gpath);
	cr_assert(g, "cannot parse %s", gpath);
	json_object *ps;
	json_object_object_get_ex(g, "prompts", &ps);
	engine e;
	engine_open(&e, mpath, QTYPE_F32, 1024, 512, 2);
	for (size_t pi = 0; pi < json_object_array_length(ps); pi++) {
		json_object *p = json_object_array_get_idx(ps, pi), *tf, *nm;
		json_object_object_get_ex(p, "name", &nm);
		json_object_object_get_ex(p, "teacher_forced", &tf);
		int n_ids, n_prompt, n_gen;
		int32_t *ids = golden_ids(tf, "ids", &n_ids);
		int32_t *prompt = golden_ids(p, "prompt_ids", &n_prompt);
		int32_t *gen = golden_ids(p, "gen_ids", &n_gen);
		cr_assert(ids && prompt && gen);
		float *logits = malloc(sizeof(float) * (size_t)n_ids * e.n_vocab);
		run_chunk(&e, ids, 0, n_ids, logits);
		golden_cmp r;
		cr_assert_eq(golden_compare(p, gdir, logits, n_ids, sc->tie_eps, &r), 0);
		double top1 = r.counted ? (double)r.agree / r.counted : 1.0;
		cr_log_info("%s/%s: max_abs %.3g (pos %d) mean rel L2 %.3g max logprob %.3g top1 %d/%d",
			    sc->file, json_object_get_string(nm), r.max_abs, r.worst_pos, r.mean_rel,
			    r.max_logprob, r.agree, r.counted);
		if (sc->max_abs > 0)
			cr_expect_leq(r.max_abs, sc->max_abs, "%s/%s max_abs %.3g", sc->file,
				      json_object_get_string(nm), r.max_abs);
		if (sc->mean_rel > 0)
			cr_expect_leq(r.mean_rel, sc->mean_rel, "%s/%s mean rel L2 %.3g", sc->file,
				      json_object_get_string(nm), r.mean_rel);
		if (sc->max_logprob > 0)
			cr_expect_leq(r.max_logprob, sc->max_logprob, "%s/%s logprob %.3g", sc->file,
				      json_object_get_string(nm), r.max_logprob);
		cr_expect_geq(top1, sc->min_top1, "%s/%s top1 %d/%d", sc->file, json_object_get_string(nm),
			      r.agree, r.counted);
		if (sc->greedy_exact) {
			int32_t *out = malloc(sizeof(int32_t) * (size_t)n_gen);
			greedy(&e, prompt, n_prompt, n_gen, out);
			for (int i = 0; i < n_gen; i++)
				cr_expect_eq(out[i], gen[i], "%s/%s greedy step %d: %d != %d", sc->file,
					     json_object_get_string(nm), i, out[i], gen[i]);
			free(out);
		}
		free(logits);
		free(ids);
		free(prompt);
		free(gen);
	}
	engine_close(&e);
	json_object_put(g);
}

Test(llama_synth, ktiny_f32) { run_synth(&synth_cases[0]); }
Test(llama_synth, ktiny_f16) { run_synth(&synth_cases[1]); }
Test(llama_synth, ktiny_bf16) { run_synth(&synth_cases[2]); }
Test(llama_synth, ktiny_q8_0) { run_synth(&synth_cases[3]); }
Test(llama_synth, ktiny_q4_0) { run_synth(&synth_cases[4]); }
Test(llama_synth, ktiny_q4_k_m) { run_synth(&synth_cases[5]); }
Test(llama_synth, ktiny_q5_k_m) { run_synth(&synth_cases[6]); }
Test(llama_synth, ktiny_q6_k) { run_synth(&synth_cases[7]); }
Test(llama_synth, llama3tiny_q4_k_m, .timeout = 600) { run_synth(&synth_cases[8]); }
Test(llama_synth, qwen2tiny_q8_0, .timeout = 600) { run_synth(&synth_cases[9]); }

/* ---- batch invariance ---------------------------------------------------- */

/* Sequence A's logits, computed (1) as one batch, (2) one token per forward,
   (3) interleaved with sequence B in mixed batches, are bit-identical. */
Test(llama, batch_invariance)
{
	const char *path = test_shared("models/synth/ktiny-q4_k_m.gguf");
	if (!path)
		cr_skip_test("ktiny-q4_k_m.gguf not present");
	engine e;
	engine_open(&e, path, QTYPE_F16, 256, 64, 2);
	enum { N = 20 };
	int32_t a[N], bseq[N];
	for (int i = 0; i < N; i++) {
		a[i] = (int32_t)((i * 37 + 11) % e.n_vocab);
		bseq[i] = (int32_t)((i * 53 + 7) % e.n_vocab);
	}
	size_t V = (size_t)e.n_vocab;
	float *one = malloc(sizeof(float) * N * V), *step = malloc(sizeof(float) * N * V);
	float *mixed = malloc(sizeof(float) * 2 * N * V);
	run_chunk(&e, a, 0, N, one);
	for (int i = 0; i < N; i++)
		run_chunk(&e, a, i, i + 1, step + (size_t)i * V);
	cr_expect_eq(memcmp(one, step, sizeof(float) * N * V), 0, "one batch vs token by token differ");

	/* mixed: B's prompt (8 tokens) and A's first token, then A's chunks and B's decode steps together */
	int np0, np1;
	int32_t *p0 = seq_pages(&e, 0, &np0), *p1 = seq_pages(&e, 1, &np1);
	const int32_t *pt[2] = { p0, p1 };
	int npages[2] = { np0, np1 };
	int a_done = 0, b_done = 0;
	float *out = malloc(sizeof(float) * 2 * N * V);
	char err[ERR_LEN];
	while (a_done < N) {
		int32_t tok[16], pos[16], seq[16];
		uint8_t want[16];
		int n = 0, a_rows[16], n_a = 0;
		int b_take = b_done == 0 ? 8 : (b_done < N ? 1 : 0);
		for (int i = 0; i < b_take; i++, n++) {
			tok[n] = bseq[b_done + i];
			pos[n] = b_done + i;
			seq[n] = 1;
			want[n] = 1;
		}
		b_done += b_take;
		int a_take = a_done < 4 ? 1 : 3;
		if (a_take > N - a_done)
			a_take = N - a_done;
		for (int i = 0; i < a_take; i++, n++) {
			tok[n] = a[a_done + i];
			pos[n] = a_done + i;
			seq[n] = 0;
			want[n] = 1;
			a_rows[n_a++] = n;
		}
		llama_batch b = { .n_tokens = n, .token = tok, .pos = pos, .seq = seq, .want_logits = want,
				  .pages = pt, .n_pages = npages, .n_seqs = 2 };
		cr_assert_eq(llama_forward(e.c, &e.kv, &b, out, err), 0, "%s", err);
		for (int i = 0; i < n_a; i++)
			memcpy(mixed + (size_t)(a_done + i) * V, out + (size_t)a_rows[i] * V, sizeof(float) * V);
		a_done += a_take;
	}
	cr_expect_eq(memcmp(one, mixed, sizeof(float) * N * V), 0, "mixed batches change sequence A's logits");
	free(out);
	free(p0);
	free(p1);
	free(one);
	free(step);
	free(mixed);
	engine_close(&e);
}

Test(llama, forward_rejects_bad_batch)
{
	const char *path = test_shared("models/stories260K.gguf");
	if (!path)
		cr_skip_test("stories260K.gguf not present");
	engine e;
	engine_open(&e, path, QTYPE_F32, 64, 8, 1);
	int np;
	int32_t *pages = seq_pages(&e, 0, &np);
	const int32_t *pt[1] = { pages };
	int32_t tok[1] = { 600 }, pos[1] = { 0 }, seq[1] = { 0 };
	uint8_t want[1] = { 1 };
	float logits[512];
	char err[ERR_LEN];
	llama_batch b = { 1, tok, pos, seq, want, pt, &np, 1 };
	cr_expect_eq(llama_forward(e.c, &e.kv, &b, logits, err), ERR_INVAL);
	cr_expect(strstr(err, "token id 600"), "%s", err);
	tok[0] = 1;
	pos[0] = 64;
	cr_expect_eq(llama_forward(e.c, &e.kv, &b, logits, err), ERR_INVAL);
	cr_expect(strstr(err, "position 64"), "%s", err);
	pos[0] = 0;
	seq[0] = 1;
	cr_expect_eq(llama_forward(e.c, &e.kv, &b, logits, err), ERR_INVAL);
	free(pages);
	engine_close(&e);
}

Test(llama, load_errors_name_the_problem)
{
	char err[ERR_LEN];
	llama_model *m = llama_model_load("/nonexistent/model.gguf", err);
	cr_expect_null(m);
	cr_expect(strstr(err, "/nonexistent/model.gguf"), "%s", err);
	const char *voc = test_shared("models/vocab/ggml-vocab-gpt-2.gguf");
	if (voc) {
		m = llama_model_load(voc, err);
		cr_expect_null(m);
		cr_expect(strstr(err, "gpt2"), "%s", err);
	}
	voc = test_shared("models/vocab/ggml-vocab-llama-spm.gguf");
	if (voc) {
		m = llama_model_load(voc, err);
		cr_expect_null(m);
		cr_expect(strstr(err, "token_embd.weight is missing"), "%s", err);
	}
}
