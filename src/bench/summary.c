/* summary.c - metrics math and the bench_serving table.
 *
 * Everything here is a pure function of the per-request results, so the
 * unit tests pin the definitions (summary.h) with hand-computed numbers.
 * Sums run in double over at most a few million values; sorting is qsort.
 * The table prints "{:<40} {:<10}" rows and 50-wide rules like
 * bench_serving, so scripts that scrape its output read ours.
 */
#include "bench/summary.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

double summary_percentile(const double *v, size_t n, double p)
{
	if (n == 0)
		return 0;
	double rank = p / 100.0 * (double)(n - 1);
	size_t lo = (size_t)floor(rank);
	if (lo >= n - 1)
		return v[n - 1];
	double frac = rank - (double)lo;
	return v[lo] + (v[lo + 1] - v[lo]) * frac;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void summary_dist_of(double *v, size_t n, summary_dist *d)
{
	memset(d, 0, sizeof(*d));
	d->n = n;
	if (n == 0)
		return;
	qsort(v, n, sizeof(double), cmp_double);
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	d->mean = sum / (double)n;
	double ss = 0;
	for (size_t i = 0; i < n; i++)
		ss += (v[i] - d->mean) * (v[i] - d->mean);
	d->std = sqrt(ss / (double)n);
	d->median = summary_percentile(v, n, 50);
	d->p90 = summary_percentile(v, n, 90);
	d->p95 = summary_percentile(v, n, 95);
	d->p99 = summary_percentile(v, n, 99);
	d->min = v[0];
	d->max = v[n - 1];
}

double summary_tpot(const summary_req *r)
{
	if (r->output_len <= 1)
		return -1;
	return (r->latency_s - r->ttft_s) / (double)(r->output_len - 1);
}

bool summary_good(const summary_req *r, const summary_slo *slo)
{
	if (!r->success)
		return false;
	if (!slo)
		return true;
	double tpot = summary_tpot(r);
	if (tpot < 0)
		tpot = 0;
	if (slo->ttft_ms > 0 && r->ttft_s * 1000.0 > slo->ttft_ms)
		return false;
	if (slo->tpot_ms > 0 && tpot * 1000.0 > slo->tpot_ms)
		return false;
	if (slo->e2e_ms > 0 && r->latency_s * 1000.0 > slo->e2e_ms)
		return false;
	return true;
}

int summary_compute(const summary_req *r, size_t n, double dur, const summary_slo *slo, summary *s)
{
	memset(s, 0, sizeof(*s));
	s->total = n;
	s->duration_s = dur;
	s->has_slo = slo && (slo->ttft_ms > 0 || slo->tpot_ms > 0 || slo->e2e_ms > 0);
	size_t n_itl = 0;
	for (size_t i = 0; i < n; i++)
		if (r[i].success)
			n_itl += r[i].n_itl;
	double *ttft = alloc_array(n ? n : 1, sizeof(double)), *tpot = alloc_array(n ? n : 1, sizeof(double));
	double *e2e = alloc_array(n ? n : 1, sizeof(double)), *itl = alloc_array(n_itl ? n_itl : 1, sizeof(double));
	int nb = (int)ceil(dur > 0 ? dur : 0);
	if (nb < 0 || nb > 100000000)
		nb = 0;
	double *tok_per_s = alloc_zeroed((size_t)nb + 1, sizeof(double));
	int *conc = alloc_zeroed((size_t)nb + 1, sizeof(int));
	int rc = 0;
	if (!ttft || !tpot || !e2e || !itl || !tok_per_s || !conc) {
		rc = ERR_NOMEM;
		goto done;
	}
	size_t nt = 0, np = 0, ni = 0, ne = 0;
	double e2e_sum = 0;
	for (size_t i = 0; i < n; i++) {
		const summary_req *q = &r[i];
		if (!q->success) {
			s->failed++;
			s->timeouts += q->timeout;
			continue;
		}
		s->completed++;
		s->total_input += q->prompt_len;
		s->total_output += q->output_len;
		ttft[nt++] = q->ttft_s;
		e2e[ne++] = q->latency_s;
		e2e_sum += q->latency_s;
		double t = summary_tpot(q);
		if (t >= 0)
			tpot[np++] = t;
		if (q->n_itl)
			memcpy(itl + ni, q->itl, q->n_itl * sizeof(double));
		ni += q->n_itl;
		if (slo && summary_good(q, slo))
			s->good++;
		/* per-second buckets, as SGLang: the first token at start + ttft,
		   each later one after its ITL; a request is "running" in every
		   second from its start to its end */
		if (nb > 0) {
			double at = q->start_s + q->ttft_s;
			if (q->ttft_s > 0 && at >= 0 && (int)at < nb)
				tok_per_s[(int)at] += 1;
			for (size_t k = 0; k < q->n_itl; k++) {
				at += q->itl[k];
				if (at >= 0 && (int)at < nb)
					tok_per_s[(int)at] += 1;
			}
			int a = q->start_s < 0 ? 0 : (int)q->start_s, b = (int)(q->start_s + q->latency_s);
			for (int k = a; k <= b && k < nb; k++)
				conc[k]++;
		}
	}
	summary_dist_of(ttft, nt, &s->ttft);
	summary_dist_of(tpot, np, &s->tpot);
	summary_dist_of(itl, ni, &s->itl);
	summary_dist_of(e2e, ne, &s->e2e);
	if (dur > 0) {
		s->request_throughput = (double)s->completed / dur;
		s->input_throughput = (double)s->total_input / dur;
		s->output_throughput = (double)s->total_output / dur;
		s->total_throughput = (double)(s->total_input + s->total_output) / dur;
		s->concurrency = e2e_sum / dur;
		s->request_goodput = (double)s->good / dur;
	}
	s->slo_attainment = n ? (double)s->good / (double)n : 0;
	for (int k = 0; k < nb; k++) {
		if (tok_per_s[k] > s->max_output_tokens_per_s)
			s->max_output_tokens_per_s = tok_per_s[k];
		if (conc[k] > s->max_concurrent_requests)
			s->max_concurrent_requests = conc[k];
	}
done:
	alloc_free(conc);
	alloc_free(tok_per_s);
	alloc_free(itl);
	alloc_free(e2e);
	alloc_free(tpot);
	alloc_free(ttft);
	return rc;
}

/* ---------------------------------------------------------------- printing */

static void rule(FILE *f, const char *title, char c)
{
	/* Python's "{s:{c}^{n}}": centered in 50, extra fill on the right */
	int len = (int)strlen(title), pad = 50 - len;
	if (pad < 0)
		pad = 0;
	int left = pad / 2, right = pad - left;
	for (int i = 0; i < left; i++)
		fputc(c, f);
	fputs(title, f);
	for (int i = 0; i < right; i++)
		fputc(c, f);
	fputc('\n', f);
}

static void row_s(FILE *f, const char *k, const char *v)
{
	fprintf(f, "%-40s %-10s\n", k, v);
}

static void row_i(FILE *f, const char *k, long long v)
{
	char b[32];
	snprintf(b, sizeof(b), "%lld", v);
	row_s(f, k, b);
}

static void row_f(FILE *f, const char *k, double v)
{
	char b[64];
	snprintf(b, sizeof(b), "%.2f", v);
	row_s(f, k, b);
}

static void fmt_rate(char *b, size_t n, double rate)
{
	if (isinf(rate))
		snprintf(b, n, "inf");
	else
		snprintf(b, n, "%.17g", rate); /* Python prints 2.0 as "2.0" */
	if (!isinf(rate) && !strpbrk(b, ".e"))
		strncat(b, ".0", n - strlen(b) - 1);
}

void summary_print(FILE *f, const summary *s, const summary_header *h)
{
	char b[64];
	fputc('\n', f);
	rule(f, " Serving Benchmark Result ", '=');
	row_s(f, "Backend:", h->backend);
	fmt_rate(b, sizeof(b), h->request_rate);
	row_s(f, "Traffic request rate:", b);
	if (h->max_concurrency > 0)
		row_i(f, "Max request concurrency:", h->max_concurrency);
	else
		row_s(f, "Max request concurrency:", "not set");
	row_i(f, "Successful requests:", (long long)s->completed);
	if (s->failed) {
		snprintf(b, sizeof(b), "%zu (%zu timed out)", s->failed, s->timeouts);
		row_s(f, "Failed requests:", b);
	} else {
		row_i(f, "Failed requests:", 0);
	}
	row_f(f, "Benchmark duration (s):", s->duration_s);
	row_i(f, "Total input tokens:", (long long)s->total_input);
	row_i(f, "Total generated tokens:", (long long)s->total_output);
	row_f(f, "Request throughput (req/s):", s->request_throughput);
	if (s->has_slo)
		row_f(f, "Request goodput (req/s):", s->request_goodput);
	row_f(f, "Input token throughput (tok/s):", s->input_throughput);
	row_f(f, "Output token throughput (tok/s):", s->output_throughput);
	row_f(f, "Peak output token throughput (tok/s):", s->max_output_tokens_per_s);
	row_i(f, "Peak concurrent requests:", s->max_concurrent_requests);
	row_f(f, "Total token throughput (tok/s):", s->total_throughput);
	row_f(f, "Concurrency:", s->concurrency);
	if (s->has_slo) {
		const summary_slo *o = h->slo;
		int k = 0;
		k += snprintf(b + k, sizeof(b) - (size_t)k, "SLO");
		if (o && o->ttft_ms > 0)
			k += snprintf(b + k, sizeof(b) - (size_t)k, " ttft<=%g", o->ttft_ms);
		if (o && o->tpot_ms > 0)
			k += snprintf(b + k, sizeof(b) - (size_t)k, " tpot<=%g", o->tpot_ms);
		if (o && o->e2e_ms > 0)
			snprintf(b + k, sizeof(b) - (size_t)k, " e2e<=%g", o->e2e_ms);
		rule(f, b, '-');
		row_i(f, "Good requests:", (long long)s->good);
		row_f(f, "SLO attainment (%):", 100.0 * s->slo_attainment);
	}
	rule(f, "End-to-End Latency", '-');
	row_f(f, "Mean E2E Latency (ms):", s->e2e.mean * 1e3);
	row_f(f, "Median E2E Latency (ms):", s->e2e.median * 1e3);
	row_f(f, "P90 E2E Latency (ms):", s->e2e.p90 * 1e3);
	row_f(f, "P99 E2E Latency (ms):", s->e2e.p99 * 1e3);
	rule(f, "Time to First Token", '-');
	row_f(f, "Mean TTFT (ms):", s->ttft.mean * 1e3);
	row_f(f, "Median TTFT (ms):", s->ttft.median * 1e3);
	row_f(f, "P90 TTFT (ms):", s->ttft.p90 * 1e3);
	row_f(f, "P99 TTFT (ms):", s->ttft.p99 * 1e3);
	rule(f, "Time per Output Token (excl. 1st token)", '-');
	row_f(f, "Mean TPOT (ms):", s->tpot.mean * 1e3);
	row_f(f, "Median TPOT (ms):", s->tpot.median * 1e3);
	row_f(f, "P90 TPOT (ms):", s->tpot.p90 * 1e3);
	row_f(f, "P99 TPOT (ms):", s->tpot.p99 * 1e3);
	rule(f, "Inter-Token Latency", '-');
	row_f(f, "Mean ITL (ms):", s->itl.mean * 1e3);
	row_f(f, "Median ITL (ms):", s->itl.median * 1e3);
	row_f(f, "P90 ITL (ms):", s->itl.p90 * 1e3);
	row_f(f, "P95 ITL (ms):", s->itl.p95 * 1e3);
	row_f(f, "P99 ITL (ms):", s->itl.p99 * 1e3);
	row_f(f, "Max ITL (ms):", s->itl.max * 1e3);
	rule(f, "", '=');
}

typedef struct {
	const char *msg;
	size_t count;
} err_count;

static int cmp_err(const void *a, const void *b)
{
	const err_count *x = a, *y = b;
	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	return strcmp(x->msg, y->msg);
}

void summary_print_errors(FILE *f, const summary_req *r, size_t n, size_t top)
{
	err_count *e = alloc_zeroed(n ? n : 1, sizeof(err_count));
	if (!e)
		return;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (r[i].success)
			continue;
		const char *m = r[i].error && *r[i].error ? r[i].error : "(no message)";
		size_t j = 0;
		while (j < k && strcmp(e[j].msg, m))
			j++;
		if (j == k)
			e[k++].msg = m;
		e[j].count++;
	}
	qsort(e, k, sizeof(err_count), cmp_err);
	if (k)
		fprintf(f, "Errors:\n");
	for (size_t j = 0; j < k && j < top; j++)
		fprintf(f, "  %5zu x %.200s\n", e[j].count, e[j].msg);
	if (k > top)
		fprintf(f, "  ... %zu more distinct errors\n", k - top);
	alloc_free(e);
}
