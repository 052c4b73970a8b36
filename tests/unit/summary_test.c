/* summary_test.c - bench_serving's metric definitions, pinned with numbers
 * worked out by hand (and checked against numpy: np.percentile's linear
 * rule, np.std with ddof=0): percentiles, TPOT excluding the first token and
 * one-token outputs, failed requests kept out of every mean, throughput and
 * concurrency over the duration, goodput and attainment under each SLO,
 * SGLang's 1 s peak buckets, the table layout, error grouping, and failed
 * allocations. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "bench/summary.h"

#define NEAR(got, want) cr_assert(fabs((got) - (want)) < 1e-9, "%s = %.12g, want %.12g", #got, (double)(got), (double)(want))

Test(summary, percentile_is_numpy_linear)
{
	double v[] = { 1, 2, 3, 4 };
	NEAR(summary_percentile(v, 4, 50), 2.5);
	NEAR(summary_percentile(v, 4, 90), 3.7);   /* rank 2.7 */
	NEAR(summary_percentile(v, 4, 99), 3.97);  /* rank 2.97 */
	NEAR(summary_percentile(v, 4, 0), 1);
	NEAR(summary_percentile(v, 4, 100), 4);
	double one[] = { 7 };
	NEAR(summary_percentile(one, 1, 99), 7);
	NEAR(summary_percentile(NULL, 0, 50), 0);
	/* 101 values 0..100: the p-th percentile is p */
	double h[101];
	for (int i = 0; i <= 100; i++)
		h[i] = i;
	for (int p = 0; p <= 100; p += 7)
		NEAR(summary_percentile(h, 101, p), p);
}

Test(summary, dist_sorts_and_uses_population_std)
{
	double v[] = { 4, 1, 3, 2 };
	summary_dist d;
	summary_dist_of(v, 4, &d);
	NEAR(v[0], 1);
	NEAR(v[3], 4);
	NEAR(d.mean, 2.5);
	NEAR(d.median, 2.5);
	NEAR(d.std, sqrt(1.25)); /* np.std: ddof 0 */
	NEAR(d.min, 1);
	NEAR(d.max, 4);
	NEAR(d.p99, 3.97);
	cr_assert_eq(d.n, 4);
	summary_dist_of(NULL, 0, &d);
	NEAR(d.mean, 0);
	NEAR(d.p99, 0);
	NEAR(d.max, 0);
}

Test(summary, tpot_excludes_the_first_token)
{
	summary_req r = { .success = true, .ttft_s = 0.1, .latency_s = 1.0, .output_len = 10 };
	NEAR(summary_tpot(&r), 0.1); /* (1.0 - 0.1) / 9 */
	r.output_len = 2;
	NEAR(summary_tpot(&r), 0.9);
	r.output_len = 1;
	cr_assert_lt(summary_tpot(&r), 0, "one output token has no TPOT");
	r.output_len = 0;
	cr_assert_lt(summary_tpot(&r), 0);
}

/* three requests: two good, one failed */
static double itl_a[] = { 0.1, 0.1, 0.2 }, itl_b[] = { 0.5 };
static summary_req three[] = {
	{ .success = true, .start_s = 0.0, .ttft_s = 0.2, .latency_s = 0.6, .itl = itl_a, .n_itl = 3,
	  .prompt_len = 10, .output_len = 5, .error = "" },
	{ .success = true, .start_s = 0.5, .ttft_s = 1.0, .latency_s = 1.5, .itl = itl_b, .n_itl = 1,
	  .prompt_len = 20, .output_len = 2, .error = "" },
	{ .success = false, .start_s = 0.7, .ttft_s = 9, .latency_s = 9, .prompt_len = 30, .output_len = 7,
	  .error = "HTTP 500: boom" },
};

Test(summary, compute_counts_only_successes)
{
	summary s;
	cr_assert_eq(summary_compute(three, 3, 2.0, NULL, &s), 0);
	cr_assert_eq(s.total, 3);
	cr_assert_eq(s.completed, 2);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.timeouts, 0);
	cr_assert_eq(s.total_input, 30, "failed requests' tokens do not count: %lld", (long long)s.total_input);
	cr_assert_eq(s.total_output, 7);
	NEAR(s.request_throughput, 1.0);
	NEAR(s.input_throughput, 15.0);
	NEAR(s.output_throughput, 3.5);
	NEAR(s.total_throughput, 18.5);
	NEAR(s.concurrency, (0.6 + 1.5) / 2.0);
	NEAR(s.ttft.mean, 0.6);
	NEAR(s.ttft.median, 0.6);
	NEAR(s.ttft.std, 0.4);
	NEAR(s.e2e.mean, 1.05);
	/* TPOT: (0.6-0.2)/4 = 0.1 and (1.5-1.0)/1 = 0.5 */
	cr_assert_eq(s.tpot.n, 2);
	NEAR(s.tpot.mean, 0.3);
	NEAR(s.tpot.p99, 0.1 + 0.4 * 0.99);
	/* ITL: every gap of every successful request */
	cr_assert_eq(s.itl.n, 4);
	NEAR(s.itl.mean, (0.1 + 0.1 + 0.2 + 0.5) / 4);
	NEAR(s.itl.max, 0.5);
	NEAR(s.itl.median, 0.15);
	cr_assert(!s.has_slo);
}

Test(summary, one_token_outputs_have_no_tpot)
{
	summary_req r[] = {
		{ .success = true, .ttft_s = 0.3, .latency_s = 0.3, .output_len = 1, .error = "" },
		{ .success = true, .ttft_s = 0.1, .latency_s = 0.5, .output_len = 5, .error = "" },
	};
	summary s;
	cr_assert_eq(summary_compute(r, 2, 1.0, NULL, &s), 0);
	cr_assert_eq(s.tpot.n, 1);
	NEAR(s.tpot.mean, 0.1);
	cr_assert_eq(s.ttft.n, 2);
}

Test(summary, goodput_needs_every_given_slo)
{
	summary s;
	/* request 0: ttft 200 ms, tpot 100 ms; request 1: ttft 1000 ms, tpot 500 ms */
	summary_slo ttft_only = { .ttft_ms = 500 };
	cr_assert_eq(summary_compute(three, 3, 2.0, &ttft_only, &s), 0);
	cr_assert(s.has_slo);
	cr_assert_eq(s.good, 1);
	NEAR(s.request_goodput, 0.5);
	NEAR(s.slo_attainment, 1.0 / 3.0); /* failed requests count against attainment */

	summary_slo tpot_only = { .tpot_ms = 600 };
	cr_assert_eq(summary_compute(three, 3, 2.0, &tpot_only, &s), 0);
	cr_assert_eq(s.good, 2);

	summary_slo both = { .ttft_ms = 2000, .tpot_ms = 100 };
	cr_assert_eq(summary_compute(three, 3, 2.0, &both, &s), 0);
	cr_assert_eq(s.good, 1, "tpot 500 ms misses 100 ms");

	summary_slo edge = { .ttft_ms = 200, .tpot_ms = 100, .e2e_ms = 600 };
	cr_assert_eq(summary_compute(three, 3, 2.0, &edge, &s), 0);
	cr_assert_eq(s.good, 1, "an SLO is met when equal");

	summary_slo e2e = { .e2e_ms = 599 };
	cr_assert_eq(summary_compute(three, 3, 2.0, &e2e, &s), 0);
	cr_assert_eq(s.good, 0);

	/* a one-token output has TPOT 0 for goodput */
	summary_req one = { .success = true, .ttft_s = 0.01, .latency_s = 0.01, .output_len = 1, .error = "" };
	summary_slo t = { .tpot_ms = 1 };
	cr_assert(summary_good(&one, &t));
	one.success = false;
	cr_assert(!summary_good(&one, &t));
}

Test(summary, peak_buckets_follow_sglang)
{
	/* tokens at 0.2, 0.3, 0.4, 0.6 (second 0), 2.0 (second 2... duration 2.5 -> 3 buckets) */
	double itl[] = { 0.1, 0.1, 0.2, 1.4 };
	summary_req r[] = {
		{ .success = true, .start_s = 0, .ttft_s = 0.2, .latency_s = 2.0, .itl = itl, .n_itl = 4, .output_len = 5, .error = "" },
		{ .success = true, .start_s = 0.1, .ttft_s = 0.1, .latency_s = 0.5, .output_len = 1, .error = "" },
	};
	summary s;
	cr_assert_eq(summary_compute(r, 2, 2.5, NULL, &s), 0);
	NEAR(s.max_output_tokens_per_s, 5); /* 4 + the other request's one token in second 0 */
	cr_assert_eq(s.max_concurrent_requests, 2);
}

Test(summary, timeouts_and_empty_runs)
{
	summary_req r[] = { { .success = false, .timeout = true, .error = "timeout" },
			    { .success = false, .error = "HTTP 503: full" } };
	summary s;
	cr_assert_eq(summary_compute(r, 2, 1.0, NULL, &s), 0);
	cr_assert_eq(s.completed, 0);
	cr_assert_eq(s.failed, 2);
	cr_assert_eq(s.timeouts, 1);
	NEAR(s.ttft.mean, 0);
	NEAR(s.e2e.p99, 0);
	cr_assert_eq(summary_compute(NULL, 0, 0, NULL, &s), 0);
	cr_assert_eq(s.total, 0);
}

static char *capture(void (*fn)(FILE *, const void *), const void *arg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	cr_assert_not_null(f);
	fn(f, arg);
	fclose(f);
	return buf;
}

static summary TABLE_S;
static summary_header TABLE_H;
static void print_table(FILE *f, const void *arg)
{
	(void)arg;
	summary_print(f, &TABLE_S, &TABLE_H);
}

Test(summary, table_in_bench_serving_layout)
{
	summary_slo slo = { .ttft_ms = 500 };
	cr_assert_eq(summary_compute(three, 3, 2.0, &slo, &TABLE_S), 0);
	TABLE_H = (summary_header){ "sglang", INFINITY, 0, &slo };
	char *t = capture(print_table, NULL);
	cr_assert(strstr(t, "\n============ Serving Benchmark Result ============\n"), "%s", t);
	cr_assert(strstr(t, "Backend:                                 sglang    \n"), "%s", t);
	cr_assert(strstr(t, "Traffic request rate:                    inf       \n"), "%s", t);
	cr_assert(strstr(t, "Max request concurrency:                 not set   \n"), "%s", t);
	cr_assert(strstr(t, "Successful requests:                     2         \n"), "%s", t);
	cr_assert(strstr(t, "Failed requests:                         1 (0 timed out)\n"), "%s", t);
	cr_assert(strstr(t, "Benchmark duration (s):                  2.00      \n"), "%s", t);
	cr_assert(strstr(t, "Request goodput (req/s):                 0.50      \n"), "%s", t);
	cr_assert(strstr(t, "----------------End-to-End Latency----------------\n"), "%s", t);
	cr_assert(strstr(t, "-----Time per Output Token (excl. 1st token)------\n"), "%s", t);
	cr_assert(strstr(t, "Mean TTFT (ms):                          600.00    \n"), "%s", t);
	cr_assert(strstr(t, "Mean TPOT (ms):                          300.00    \n"), "%s", t);
	cr_assert(strstr(t, "Max ITL (ms):                            500.00    \n"), "%s", t);
	cr_assert(strstr(t, "\n==================================================\n"), "%s", t);
	free(t);

	TABLE_H = (summary_header){ "openai-chat", 2.0, 8, NULL };
	cr_assert_eq(summary_compute(three, 3, 2.0, NULL, &TABLE_S), 0);
	t = capture(print_table, NULL);
	cr_assert(strstr(t, "Traffic request rate:                    2.0       \n"), "%s", t);
	cr_assert(strstr(t, "Max request concurrency:                 8         \n"), "%s", t);
	cr_assert(!strstr(t, "goodput"), "no SLO, no goodput row");
	free(t);
}

static void print_errs(FILE *f, const void *arg)
{
	(void)arg;
	summary_req r[] = { { .error = "b" }, { .error = "a" }, { .success = true, .error = "" }, { .error = "b" },
			    { .error = "" } };
	summary_print_errors(f, r, 5, 2);
}

Test(summary, errors_grouped_most_common_first)
{
	char *t = capture(print_errs, NULL);
	cr_assert_str_eq(t, "Errors:\n      2 x b\n      1 x (no message)\n  ... 1 more distinct errors\n");
	free(t);
}

Test(summary, failed_allocations)
{
	summary s;
	alloc_fail_after(-1);
	cr_assert_eq(summary_compute(three, 3, 2.0, NULL, &s), 0);
	long count = alloc_fail_after(-1);
	cr_assert_geq(count, 4);
	for (long i = 0; i < count; i++) {
		alloc_fail_after(i);
		int rc = summary_compute(three, 3, 2.0, NULL, &s);
		alloc_fail_after(-1);
		cr_assert_eq(rc, ERR_NOMEM, "allocation %ld of %ld failing gave %d", i, count, rc);
	}
}
