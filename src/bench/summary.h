/* summary.h - bench_serving's metrics from per-request results, the summary
 * table and the JSON line.
 *
 * Definitions (SGLang's python/sglang/bench_serving.py, calculate_metrics;
 * goodput as vLLM's benchmark_serving defines it):
 *   - a request counts when it succeeded; failed ones (HTTP errors, broken
 *     streams, timeouts) are counted apart and enter no mean;
 *   - TTFT: send -> first chunk carrying text; E2E latency: send -> last
 *     chunk; ITL: the gaps between text chunks (the sglang backend spreads a
 *     chunk carrying k new tokens over k equal gaps);
 *   - TPOT = (E2E - TTFT) / (output tokens - 1), for requests with more
 *     than one output token;
 *   - mean, median, std (population), percentiles by linear interpolation
 *     (numpy's default); an empty list gives 0 everywhere;
 *   - throughputs divide by the benchmark duration (first send -> last
 *     completion); concurrency = sum of E2E latencies / duration;
 *   - goodput: requests meeting every given SLO (TTFT <= slo_ttft, TPOT <=
 *     slo_tpot, E2E <= slo_e2e; TPOT counts as 0 for one-token outputs)
 *     per second; attainment = good requests / all requests (failed ones
 *     included);
 *   - peak output throughput and peak concurrent requests over 1 s buckets
 *     since the first send (SGLang's max_output_tokens_per_s,
 *     max_concurrent_requests).
 * Input and output token totals are the server's counts (usage /
 * meta_info) when it sends them; see serving.h.
 */
#ifndef PDSERVE_BENCH_SUMMARY_H
#define PDSERVE_BENCH_SUMMARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"

/* One request's result. Times in seconds. */
typedef struct {
	bool success;
	bool timeout;        /* failed by the client's timeout */
	double start_s;      /* send time since the benchmark started */
	double ttft_s;       /* 0 when no text chunk came */
	double latency_s;    /* send -> last chunk */
	const double *itl;   /* [n_itl] borrowed */
	size_t n_itl;
	int prompt_len;
	int output_len;
	const char *error;   /* borrowed; "" when none */
} summary_req;

typedef struct {
	double mean, median, std, p90, p95, p99, min, max;
	size_t n;
} summary_dist;

typedef struct {
	double ttft_ms, tpot_ms, e2e_ms; /* <= 0: not given */
} summary_slo;

typedef struct {
	size_t total, completed, failed, timeouts;
	int64_t total_input, total_output;
	double duration_s;
	double request_throughput, input_throughput, output_throughput, total_throughput;
	double concurrency;
	summary_dist ttft, tpot, itl, e2e; /* seconds */
	bool has_slo;
	size_t good;
	double request_goodput;  /* good / duration */
	double slo_attainment;   /* good / total */
	double max_output_tokens_per_s;
	int max_concurrent_requests;
} summary;

/* Percentile p in [0, 100] of sorted v[0..n), numpy's linear rule:
   rank p/100*(n-1), interpolated. 0 for n == 0. */
double summary_percentile(const double *sorted, size_t n, double p);

/* Sorts v in place and fills d. */
void summary_dist_of(double *v, size_t n, summary_dist *d);

/* TPOT of one request: (latency - ttft) / (output_len - 1); < 0 when
   output_len <= 1 (no TPOT). */
double summary_tpot(const summary_req *r);

/* Whether r meets every given SLO. */
bool summary_good(const summary_req *r, const summary_slo *slo);

/* Fill s from r[0..n). slo may be NULL. 0 or ERR_NOMEM. */
int summary_compute(const summary_req *r, size_t n, double duration_s, const summary_slo *slo, summary *s);

typedef struct {
	const char *backend;
	double request_rate;  /* inf allowed */
	int max_concurrency;  /* 0: not set */
	const summary_slo *slo;
} summary_header;

/* The table in bench_serving's layout (plus failed requests and goodput
   when SLOs are given). */
void summary_print(FILE *f, const summary *s, const summary_header *h);

/* Error messages with counts, most common first, at most `top` lines. */
void summary_print_errors(FILE *f, const summary_req *r, size_t n, size_t top);

#endif
