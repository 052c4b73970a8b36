/* workload_test.c - what the load generator sends: the seeded generator,
 * Poisson arrivals (mean and spread of the gaps), SGLang's length draws,
 * exact-length random prompts on SentencePiece and byte-level BPE
 * vocabularies (every prompt re-tokenizes to the drawn length), the
 * ShareGPT loader and filters, generated-shared-prefix groups, and
 * failed allocations. Vocabularies come from ../shared (skipped without it). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "bench/workload.h"
#include "testutil.h"

Test(workload, rng_is_seeded_and_repeatable)
{
	workload_rng a, b, c;
	workload_rng_seed(&a, 42);
	workload_rng_seed(&b, 42);
	workload_rng_seed(&c, 43);
	int same_c = 0;
	for (int i = 0; i < 1000; i++) {
		uint64_t x = workload_rng_next(&a), y = workload_rng_next(&b), z = workload_rng_next(&c);
		cr_assert_eq(x, y);
		same_c += x == z;
	}
	cr_assert_eq(same_c, 0);
}

Test(workload, rng_int_is_in_range_and_flat)
{
	workload_rng r;
	workload_rng_seed(&r, 1);
	int hist[7] = { 0 };
	const int n = 70000;
	for (int i = 0; i < n; i++) {
		int64_t v = workload_rng_int(&r, 3, 9);
		cr_assert(v >= 3 && v <= 9, "got %lld", (long long)v);
		hist[v - 3]++;
	}
	double chi = 0;
	for (int k = 0; k < 7; k++)
		chi += (hist[k] - n / 7.0) * (hist[k] - n / 7.0) / (n / 7.0);
	cr_assert_lt(chi, 22.5, "chi^2 %.1f over 6 dof (p = 0.001 at 22.5)", chi);
	for (int i = 0; i < 1000; i++) {
		double u = workload_rng_uniform(&r);
		cr_assert(u >= 0 && u < 1);
	}
	cr_assert_eq(workload_rng_int(&r, 5, 5), 5);
}

Test(workload, poisson_arrivals)
{
	workload_rng r;
	workload_rng_seed(&r, 7);
	const size_t n = 40000;
	const double rate = 8.0;
	double *t = malloc(n * sizeof(double));
	workload_arrivals(&r, rate, n, t);
	cr_assert_eq(t[0], 0, "the first request goes at once");
	double sum = 0, sum2 = 0;
	size_t within = 0; /* gaps shorter than the mean: 1 - 1/e of them */
	for (size_t i = 1; i < n; i++) {
		double g = t[i] - t[i - 1];
		cr_assert_geq(g, 0);
		sum += g;
		sum2 += g * g;
		within += g < 1 / rate;
	}
	double mean = sum / (double)(n - 1), var = sum2 / (double)(n - 1) - mean * mean;
	cr_assert(fabs(mean * rate - 1) < 0.02, "mean gap %.5f, want %.5f", mean, 1 / rate);
	cr_assert(fabs(sqrt(var) / mean - 1) < 0.03, "coefficient of variation %.3f, want 1 (exponential)",
		  sqrt(var) / mean);
	cr_assert(fabs((double)within / (double)(n - 1) - (1 - exp(-1))) < 0.01, "P(gap < mean) = %.4f",
		  (double)within / (double)(n - 1));
	/* counts per unit time are Poisson: variance == mean */
	int buckets = (int)t[n - 1], *cnt = calloc((size_t)buckets + 1, sizeof(int));
	for (size_t i = 0; i < n; i++)
		cnt[(int)t[i]]++;
	double cm = 0, cv = 0;
	for (int b = 0; b < buckets; b++)
		cm += cnt[b];
	cm /= buckets;
	for (int b = 0; b < buckets; b++)
		cv += (cnt[b] - cm) * (cnt[b] - cm);
	cv /= buckets;
	cr_assert(fabs(cv / cm - 1) < 0.1, "dispersion %.3f, want 1", cv / cm);
	free(cnt);

	workload_arrivals(&r, INFINITY, 10, t);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(t[i], 0, "rate inf sends everything at t = 0");
	free(t);
}

Test(workload, length_draws_follow_sglang)
{
	workload_rng r;
	workload_rng_seed(&r, 3);
	int lo = 1000, hi = 0;
	double sum = 0;
	for (int i = 0; i < 20000; i++) {
		int v = workload_draw_len(&r, 100, 0.5);
		lo = v < lo ? v : lo;
		hi = v > hi ? v : hi;
		sum += v;
	}
	cr_assert_eq(lo, 50, "[floor(L*r), L]");
	cr_assert_eq(hi, 100);
	cr_assert(fabs(sum / 20000 - 75) < 0.5, "mean %.2f", sum / 20000);
	for (int i = 0; i < 100; i++)
		cr_assert_eq(workload_draw_len(&r, 37, 1.0), 37, "ratio 1: exact");
	lo = 1000;
	for (int i = 0; i < 5000; i++) {
		int v = workload_draw_len(&r, 10, 0.0);
		cr_assert(v >= 1 && v <= 10);
		lo = v < lo ? v : lo;
	}
	cr_assert_eq(lo, 1, "ratio 0: from 1 (never 0 tokens)");
	cr_assert_eq(workload_draw_len(&r, 1, 0.3), 1);
}

static workload_tokenizer *open_vocab(const char *rel)
{
	const char *p = test_shared(rel);
	if (!p)
		return NULL;
	char err[ERR_LEN] = "";
	workload_tokenizer *t = workload_tokenizer_open_gguf(p, err);
	cr_assert_not_null(t, "%s: %s", rel, err);
	return t;
}

static void exact_random(const char *rel, int len, double ratio, int n)
{
	workload_tokenizer *t = open_vocab(rel);
	if (!t) {
		cr_skip_test("%s not in ../shared", rel);
		return;
	}
	workload_config c = { .kind = WORKLOAD_RANDOM, .num_prompts = n, .random_input_len = len,
			      .random_output_len = 64, .random_range_ratio = ratio, .seed = 5 };
	workload w;
	char err[ERR_LEN] = "";
	cr_assert_eq(workload_build(&c, t, &w, err), 0, "%s", err);
	cr_assert_eq(w.n, (size_t)n);
	cr_assert_eq(w.unsettled, 0, "%s: %d prompts did not settle", rel, w.unsettled);
	const char **texts = malloc((size_t)n * sizeof(char *));
	int *cnt = malloc((size_t)n * sizeof(int)), *cnt_sp = malloc((size_t)n * sizeof(int));
	for (int i = 0; i < n; i++)
		texts[i] = w.req[i].prompt;
	cr_assert_eq(workload_encode(t, texts, (size_t)n, false, NULL, cnt, err), 0, "%s", err);
	cr_assert_eq(workload_encode(t, texts, (size_t)n, true, NULL, cnt_sp, err), 0, "%s", err);
	int lo = floor(len * ratio) > 1 ? (int)floor(len * ratio) : 1;
	for (int i = 0; i < n; i++) {
		const workload_req *q = &w.req[i];
		cr_assert(q->n_ids >= lo && q->n_ids <= len, "%s: prompt %d has %d tokens", rel, i, q->n_ids);
		cr_assert_eq(cnt[i], q->n_ids, "%s: prompt %d re-tokenizes to %d tokens, drawn %d", rel, i, cnt[i],
			     q->n_ids);
		cr_assert_eq(cnt_sp[i], q->prompt_len, "%s: prompt_len %d counts what the server will (%d)", rel,
			     q->prompt_len, cnt_sp[i]);
		cr_assert(q->output_len >= (int)floor(64 * ratio) && q->output_len <= 64);
		/* ids are the text's tokens */
		int32_t *ids[1];
		int k[1];
		cr_assert_eq(workload_encode(t, &texts[i], 1, false, ids, k, err), 0);
		cr_assert_eq(memcmp(ids[0], q->ids, (size_t)k[0] * sizeof(int32_t)), 0, "%s: prompt %d ids", rel, i);
		alloc_free(ids[0]);
	}
	/* the same seed gives the same prompts */
	workload w2;
	cr_assert_eq(workload_build(&c, t, &w2, err), 0, "%s", err);
	for (int i = 0; i < n; i++)
		cr_assert_str_eq(w2.req[i].prompt, w.req[i].prompt);
	workload_free(&w2);
	free(cnt_sp);
	free(cnt);
	free(texts);
	workload_free(&w);
	workload_tokenizer_close(t);
}

Test(workload, random_exact_lengths_stories260k_spm)
{
	exact_random("models/stories260K.gguf", 200, 0.0, 40);
}

Test(workload, random_exact_lengths_llama_spm)
{
	exact_random("models/vocab/ggml-vocab-llama-spm.gguf", 300, 0.5, 30);
}

Test(workload, random_exact_lengths_llama3_bpe)
{
	exact_random("models/vocab/ggml-vocab-llama-bpe.gguf", 300, 0.5, 30);
}

Test(workload, random_exact_lengths_qwen2_bpe)
{
	exact_random("models/vocab/ggml-vocab-qwen2.gguf", 128, 1.0, 20);
}

static char *write_tmp(const char *content)
{
	char *path = strdup("/tmp/workload_test_XXXXXX");
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	close(fd);
	return path;
}

static const char SHAREGPT[] =
	"[{\"id\":\"a\",\"conversations\":[{\"from\":\"human\",\"value\":\"Once upon a time there was a little girl\"},"
	"{\"from\":\"gpt\",\"value\":\"She liked to play in the park with her dog every day.\"}]},"
	"{\"id\":\"b\",\"conversations\":[{\"from\":\"human\",\"value\":\"only one turn\"}]},"
	"{\"id\":\"c\",\"conversation\":[{\"from\":\"human\",\"value\":\"The cat sat on the mat and looked at the sun\"},"
	"{\"from\":\"gpt\",\"value\":\"It was warm.\"},{\"from\":\"human\",\"value\":\"third turn, ignored\"}]},"
	"{\"id\":\"d\",\"conversations\":[{\"from\":\"human\",\"value\":\"x\"},{\"from\":\"gpt\",\"value\":\"y\"}]},"
	"{\"id\":\"e\",\"conversations\":[{\"from\":\"human\",\"value\":3},{\"from\":\"gpt\",\"value\":\"bad\"}]},"
	"\"not an object\","
	"{\"id\":\"f\",\"conversations\":[{\"from\":\"human\",\"value\":\"A long long long long long long long long long "
	"long long long long long long long story about a boy\"},{\"from\":\"gpt\",\"value\":\"The boy ran home and "
	"ate some cake.\"}]}]";

Test(workload, sharegpt_loader)
{
	char *path = write_tmp(SHAREGPT), err[ERR_LEN] = "";
	char **p, **c;
	size_t n;
	cr_assert_eq(workload_load_sharegpt(path, &p, &c, &n, err), 0, "%s", err);
	cr_assert_eq(n, 4, "pairs: a, c (\"conversation\"), d, f; got %zu", n);
	cr_assert_str_eq(p[0], "Once upon a time there was a little girl");
	cr_assert_str_eq(c[1], "It was warm.");
	cr_assert_str_eq(p[2], "x");
	workload_free_strs(p, n);
	workload_free_strs(c, n);
	unlink(path);
	free(path);

	path = write_tmp("{\"not\": \"a list\"}");
	cr_assert_eq(workload_load_sharegpt(path, &p, &c, &n, err), ERR_FORMAT);
	cr_assert(strstr(err, "expected a JSON list"), "%s", err);
	unlink(path);
	free(path);
	path = write_tmp("[{");
	cr_assert_eq(workload_load_sharegpt(path, &p, &c, &n, err), ERR_FORMAT);
	cr_assert(strstr(err, path), "names the file: %s", err);
	unlink(path);
	free(path);
}

Test(workload, sharegpt_dataset_filters_and_counts)
{
	workload_tokenizer *t = open_vocab("models/stories260K.gguf");
	if (!t) {
		cr_skip_test("stories260K not in ../shared");
		return;
	}
	char *path = write_tmp(SHAREGPT), err[ERR_LEN] = "";
	workload_config c = { .kind = WORKLOAD_SHAREGPT, .dataset_path = path, .num_prompts = 10, .seed = 1 };
	workload w;
	cr_assert_eq(workload_build(&c, t, &w, err), 0, "%s", err);
	/* d ("x" -> "y") is too short: fewer than 2 output tokens */
	cr_assert_eq(w.n, 3, "got %zu", w.n);
	for (size_t i = 0; i < w.n; i++) {
		const char *txt[] = { w.req[i].prompt };
		int k;
		cr_assert_eq(workload_encode(t, txt, 1, true, NULL, &k, err), 0);
		cr_assert_eq(k, w.req[i].prompt_len);
		cr_assert_geq(w.req[i].output_len, 2);
		cr_assert_null(w.req[i].ids);
	}
	workload_free(&w);

	/* fixed output length, a context limit that drops the long story, a suffix */
	c.sharegpt_output_len = 16;
	c.sharegpt_context_len = 16 + 40; /* the two short prompts take 27 and 34 tokens, the story 76 */
	c.prompt_suffix = " Answer:";
	c.num_prompts = 2;
	cr_assert_eq(workload_build(&c, t, &w, err), 0, "%s", err);
	cr_assert_eq(w.n, 2);
	for (size_t i = 0; i < w.n; i++) {
		cr_assert_eq(w.req[i].output_len, 16);
		cr_assert_leq(w.req[i].prompt_len + 16, 56);
		size_t l = strlen(w.req[i].prompt);
		cr_assert(l > 18 && !strcmp(w.req[i].prompt + l - 18, " Answer:Assistant:"), "%s", w.req[i].prompt);
		cr_assert(!strstr(w.req[i].prompt, "long long"), "the long story is over the context length");
	}
	workload_free(&w);

	c.dataset_path = NULL;
	cr_assert_eq(workload_build(&c, t, &w, err), ERR_INVAL);
	cr_assert(strstr(err, "--dataset-path"), "%s", err);

	/* random prompts drawn from ShareGPT text */
	workload_config r = { .kind = WORKLOAD_RANDOM, .dataset_path = path, .num_prompts = 3,
			      .random_input_len = 50, .random_output_len = 8, .random_range_ratio = 1.0, .seed = 2 };
	cr_assert_eq(workload_build(&r, t, &w, err), 0, "%s", err);
	for (size_t i = 0; i < w.n; i++) {
		cr_assert_eq(w.req[i].n_ids, 50);
		/* made of ShareGPT text: its first word is one of the dataset's */
		char word[32] = "";
		sscanf(w.req[i].prompt, "%31s", word);
		cr_assert(word[0] && strstr(SHAREGPT, word), "made of ShareGPT text: %s", w.req[i].prompt);
	}
	workload_free(&w);
	unlink(path);
	free(path);
	workload_tokenizer_close(t);
}

Test(workload, generated_shared_prefix)
{
	workload_tokenizer *t = open_vocab("models/stories260K.gguf");
	if (!t) {
		cr_skip_test("stories260K not in ../shared");
		return;
	}
	workload_config c = { .kind = WORKLOAD_SHARED_PREFIX, .gsp_num_groups = 3, .gsp_prompts_per_group = 4,
			      .gsp_system_prompt_len = 60, .gsp_question_len = 10, .gsp_output_len = 7, .seed = 9 };
	workload w;
	char err[ERR_LEN] = "";
	cr_assert_eq(workload_build(&c, t, &w, err), 0, "%s", err);
	cr_assert_eq(w.n, 12);
	/* each prompt is SYS "\n\n" Q: 3 distinct prefixes, 4 prompts each */
	char *sys[3] = { 0 };
	int per[3] = { 0 };
	for (size_t i = 0; i < w.n; i++) {
		const char *p = w.req[i].prompt, *sep = strstr(p, "\n\n");
		cr_assert_not_null(sep, "%s", p);
		size_t k = (size_t)(sep - p);
		int g = 0;
		while (g < 3 && sys[g] && (strlen(sys[g]) != k || strncmp(sys[g], p, k)))
			g++;
		cr_assert_lt(g, 3, "more than 3 system prompts");
		if (!sys[g])
			sys[g] = strndup(p, k);
		per[g]++;
		cr_assert_eq(w.req[i].output_len, 7);
		const char *txt[] = { p };
		int n;
		cr_assert_eq(workload_encode(t, txt, 1, true, NULL, &n, err), 0);
		cr_assert_eq(n, w.req[i].prompt_len);
		cr_assert_geq(n, 60 + 10 - 2, "about 60 + 10 tokens (the join may merge a token or two)");
	}
	for (int g = 0; g < 3; g++) {
		cr_assert_eq(per[g], 4);
		const char *txt[] = { sys[g] };
		int n;
		cr_assert_eq(workload_encode(t, txt, 1, false, NULL, &n, err), 0);
		cr_assert_eq(n, 60, "system prompt %d has %d tokens", g, n);
		free(sys[g]);
	}
	workload_free(&w);
	workload_tokenizer_close(t);
}

Test(workload, bad_configs)
{
	workload_tokenizer *t = open_vocab("models/stories260K.gguf");
	if (!t) {
		cr_skip_test("stories260K not in ../shared");
		return;
	}
	workload w;
	char err[ERR_LEN] = "";
	workload_config c = { .kind = WORKLOAD_RANDOM, .num_prompts = 0, .random_input_len = 5, .random_output_len = 5 };
	cr_assert_eq(workload_build(&c, t, &w, err), ERR_INVAL);
	c = (workload_config){ .kind = WORKLOAD_SHARED_PREFIX };
	cr_assert_eq(workload_build(&c, t, &w, err), ERR_INVAL);
	c = (workload_config){ .kind = WORKLOAD_SHAREGPT, .num_prompts = 1, .dataset_path = "/nonexistent.json" };
	cr_assert_eq(workload_build(&c, t, &w, err), ERR_FORMAT);
	cr_assert(strstr(err, "/nonexistent.json"), "%s", err);
	workload_tokenizer_close(t);
	cr_assert_null(workload_tokenizer_open_gguf("/nonexistent.gguf", err));
}

Test(workload, failed_allocations)
{
	workload_tokenizer *t = open_vocab("models/stories260K.gguf");
	if (!t) {
		cr_skip_test("stories260K not in ../shared");
		return;
	}
	workload_config cfgs[] = {
		{ .kind = WORKLOAD_RANDOM, .num_prompts = 3, .random_input_len = 20, .random_output_len = 4, .seed = 1 },
		{ .kind = WORKLOAD_SHARED_PREFIX, .gsp_num_groups = 2, .gsp_prompts_per_group = 2,
		  .gsp_system_prompt_len = 10, .gsp_question_len = 3, .gsp_output_len = 2, .seed = 1 },
	};
	for (size_t k = 0; k < sizeof(cfgs) / sizeof(cfgs[0]); k++) {
		workload w;
		char err[ERR_LEN] = "";
		alloc_fail_after(-1);
		cr_assert_eq(workload_build(&cfgs[k], t, &w, err), 0, "%s", err);
		long count = alloc_fail_after(-1);
		workload_free(&w);
		cr_assert_geq(count, 5);
		for (long i = 0; i < count; i++) {
			alloc_fail_after(i);
			int rc = workload_build(&cfgs[k], t, &w, err);
			alloc_fail_after(-1);
			cr_assert_eq(rc, ERR_NOMEM, "config %zu: allocation %ld of %ld failing gave %d (%s)", k, i, count,
				     rc, err);
			cr_assert_null(w.req);
		}
	}
	workload_tokenizer_close(t);
}
