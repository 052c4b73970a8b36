/* metrics.c - counters, histograms and the Prometheus text format.
 *
 * Design. Fixed arrays, no registry: the metric set is small and known, so
 * each one is a field and metrics_render() prints them in a fixed order.
 * Histogram buckets are SGLang's defaults (metrics/collector.py) so that
 * quantiles computed from either server are comparable. HTTP requests are
 * counted per (route, status) in a table of route x [100, 600).
 *
 * Format (text exposition 0.0.4): "# HELP", "# TYPE", then one sample per
 * line, label values escaped (\\, \", \n). Cumulative bucket counts, a
 * +Inf bucket equal to _count, and _sum.
 *
 * Left out: per-request labels beyond model_name (unbounded cardinality),
 * SGLang's speculative-decoding, grammar, LoRA and disaggregation metrics
 * (nothing here produces them yet).
 */
#include "server/metrics.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

static const double TTFT_BUCKETS[] = { 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400 };
static const double E2E_BUCKETS[] = { 0.1, 0.2, 0.4, 0.6, 0.8, 1,   2,   4,   6,    8,    10,
				      20,  40,  60,  80,  100, 200, 400, 600, 1200, 1800, 2400 };
static const double ITL_BUCKETS[] = { 0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025,
				      0.030, 0.035, 0.040, 0.060, 0.080, 0.100, 0.200, 0.400,
				      0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000 };

#define MAX_BUCKETS 24

typedef struct {
	const double *le;
	int n;
	int64_t count[MAX_BUCKETS]; /* per bucket, not cumulative */
	int64_t total;
	double sum;
} histogram;

static const char *const ROUTES[] = {
	"/v1/completions", "/v1/chat/completions", "/generate", "/v1/models", "/health",
	"/health_generate", "/get_model_info", "/get_server_info", "/flush_cache", "/tokenize",
	"/detokenize", "/apply-template", "/abort_request", "/metrics", "other",
};
#define N_ROUTES ((int)(sizeof(ROUTES) / sizeof(ROUTES[0])))

/* limits a request can exceed (openai_error.limit); each always rendered */
static const char *const REJECT_REASONS[] = {
	"body_size", "header_size", "prompt_tokens", "max_tokens", "n", "stop", "queue_full",
	"read_limit",     /* cut off by libevent while read: a body over twice the limit */
	"malformed_http", /* refused by libevent: bad HTTP, or headers over twice the limit */
	"other",
};
#define N_REJECT ((int)(sizeof(REJECT_REASONS) / sizeof(REJECT_REASONS[0])))

struct metrics {
	char *label; /* model_name="..." (escaped) */
	int64_t prompt_tokens, generation_tokens, cached_tokens;
	int64_t requests, aborted;
	histogram ttft, itl, tpot, e2e;
	int64_t http[N_ROUTES][500]; /* [route][status - 100] */
	int64_t rejected[N_REJECT];
};

static void hist_init(histogram *h, const double *le, int n)
{
	h->le = le;
	h->n = n;
}

static void hist_observe(histogram *h, double v)
{
	int i = 0;
	while (i < h->n && v > h->le[i])
		i++;
	if (i < h->n)
		h->count[i]++;
	h->total++;
	h->sum += v;
}

metrics *metrics_create(const char *model_name)
{
	metrics *m = alloc_zeroed(1, sizeof(*m));
	if (!m)
		return NULL;
	const char *s = model_name ? model_name : "";
	size_t n = strlen(s);
	if (!(m->label = alloc_bytes(2 * n + 16))) {
		alloc_free(m);
		return NULL;
	}
	char *o = m->label + sprintf(m->label, "model_name=\"");
	for (; *s; s++) {
		if (*s == '\\' || *s == '"') {
			*o++ = '\\';
			*o++ = *s;
		} else if (*s == '\n') {
			*o++ = '\\';
			*o++ = 'n';
		} else {
			*o++ = *s;
		}
	}
	strcpy(o, "\"");
	hist_init(&m->ttft, TTFT_BUCKETS, (int)(sizeof(TTFT_BUCKETS) / sizeof(double)));
	hist_init(&m->e2e, E2E_BUCKETS, (int)(sizeof(E2E_BUCKETS) / sizeof(double)));
	hist_init(&m->itl, ITL_BUCKETS, (int)(sizeof(ITL_BUCKETS) / sizeof(double)));
	hist_init(&m->tpot, ITL_BUCKETS, (int)(sizeof(ITL_BUCKETS) / sizeof(double)));
	return m;
}

void metrics_destroy(metrics *m)
{
	if (!m)
		return;
	alloc_free(m->label);
	alloc_free(m);
}

void metrics_http(metrics *m, const char *route, int status)
{
	int r = N_ROUTES - 1;
	for (int i = 0; route && i < N_ROUTES - 1; i++)
		if (!strcmp(route, ROUTES[i]))
			r = i;
	if (status >= 100 && status < 600)
		m->http[r][status - 100]++;
}

void metrics_rejected(metrics *m, const char *reason)
{
	int k = N_REJECT - 1;
	for (int i = 0; reason && i < N_REJECT - 1; i++)
		if (!strcmp(reason, REJECT_REASONS[i]))
			k = i;
	m->rejected[k]++;
}

void metrics_ttft(metrics *m, double s)
{
	hist_observe(&m->ttft, s);
}

void metrics_itl(metrics *m, double s)
{
	hist_observe(&m->itl, s);
}

void metrics_request_done(metrics *m, const metrics_request *r)
{
	m->prompt_tokens += r->prompt_tokens;
	m->generation_tokens += r->completion_tokens;
	m->cached_tokens += r->cached_tokens;
	m->requests++;
	if (r->finish == ENGINE_FINISH_ABORT)
		m->aborted++;
	hist_observe(&m->e2e, r->e2e_s);
	if (r->tpot_s >= 0)
		hist_observe(&m->tpot, r->tpot_s);
}

/* ---------------------------------------------------------------- rendering */

typedef struct {
	char *p;
	size_t len, cap;
	int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
	if (b->oom)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap * 2 : 8192;
		while (cap < b->len + (size_t)n + 1)
			cap *= 2;
		char *g = alloc_resize(b->p, cap);
		if (!g) {
			b->oom = 1;
			return;
		}
		b->p = g;
		b->cap = cap;
	}
}

static void head(sbuf *b, const char *name, const char *type, const char *help)
{
	put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void scalar(sbuf *b, const metrics *m, const char *name, const char *type, const char *help, double v)
{
	head(b, name, type, help);
	put(b, "%s{%s} %.17g\n", name, m->label, v);
}

static void hist(sbuf *b, const metrics *m, const char *name, const char *help, const histogram *h)
{
	head(b, name, "histogram", help);
	int64_t cum = 0;
	for (int i = 0; i < h->n; i++) {
		cum += h->count[i];
		put(b, "%s_bucket{%s,le=\"%g\"} %lld\n", name, m->label, h->le[i], (long long)cum);
	}
	put(b, "%s_bucket{%s,le=\"+Inf\"} %lld\n", name, m->label, (long long)h->total);
	put(b, "%s_sum{%s} %.17g\n", name, m->label, h->sum);
	put(b, "%s_count{%s} %lld\n", name, m->label, (long long)h->total);
}

int metrics_render(const metrics *m, const engine_stats *st, char **out, size_t *len)
{
	sbuf b = { 0 };
	scalar(&b, m, "sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
	       (double)m->prompt_tokens);
	scalar(&b, m, "sglang:generation_tokens_total", "counter", "Number of generation tokens processed.",
	       (double)m->generation_tokens);
	scalar(&b, m, "sglang:cached_tokens_total", "counter", "Number of cached prompt tokens.",
	       (double)m->cached_tokens);
	scalar(&b, m, "sglang:num_requests_total", "counter", "Number of requests processed.", (double)m->requests);
	scalar(&b, m, "sglang:num_aborted_requests_total", "counter", "Number of requests aborted.",
	       (double)m->aborted);
	hist(&b, m, "sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", &m->ttft);
	hist(&b, m, "sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", &m->itl);
	hist(&b, m, "sglang:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
	     &m->tpot);
	hist(&b, m, "sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
	     &m->e2e);

	if (st) {
		int held = st->pages_total - st->pages_free - st->pages_cached;
		scalar(&b, m, "sglang:num_running_reqs", "gauge", "The number of running requests.", st->running);
		scalar(&b, m, "sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.",
		       st->waiting);
		scalar(&b, m, "sglang:num_used_tokens", "gauge", "The number of used tokens.",
		       (double)held * st->page_size);
		scalar(&b, m, "sglang:token_usage", "gauge", "The token usage.",
		       st->pages_total > 0 ? (double)held / st->pages_total : 0);
		scalar(&b, m, "sglang:max_total_num_tokens", "gauge",
		       "Maximum total number of tokens in the KV cache pool.", (double)st->max_total_tokens);
		scalar(&b, m, "sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.",
		       st->prompt_tokens > 0 ? (double)st->cached_tokens / st->prompt_tokens : 0);
		scalar(&b, m, "pdserve:kv_pages_total", "gauge", "KV pages in the pool.", st->pages_total);
		scalar(&b, m, "pdserve:kv_pages_free", "gauge", "KV pages free.", st->pages_free);
		scalar(&b, m, "pdserve:kv_pages_cached", "gauge", "KV pages held only by the prefix cache (evictable).",
		       st->pages_cached);
		scalar(&b, m, "pdserve:kv_pages_used", "gauge", "KV pages held by running requests.", held);
		scalar(&b, m, "pdserve:kv_page_size_tokens", "gauge", "Tokens per KV page.", st->page_size);
		scalar(&b, m, "pdserve:kv_cache_bytes", "gauge", "Bytes of the KV pool.", (double)st->kv_bytes);
		scalar(&b, m, "pdserve:engine_steps_total", "counter", "Scheduler steps run.", (double)st->steps);
		scalar(&b, m, "pdserve:retractions_total", "counter", "Requests retracted under memory pressure.",
		       (double)st->retractions);
		scalar(&b, m, "pdserve:prefix_cache_hit_tokens_total", "counter",
		       "Prompt tokens served from the prefix cache (engine count).", (double)st->cached_tokens);
		head(&b, "pdserve:requests_finished_total", "counter", "Engine requests finished, by reason.");
		static const char *const reason[] = { "none", "stop", "length", "abort", "error" };
		for (int i = ENGINE_FINISH_STOP; i <= ENGINE_FINISH_ERROR; i++)
			put(&b, "pdserve:requests_finished_total{%s,reason=\"%s\"} %lld\n", m->label, reason[i],
			    (long long)st->requests_finished[i]);
	}
	head(&b, "pdserve:http_requests_total", "counter", "HTTP requests answered, by route and status.");
	for (int r = 0; r < N_ROUTES; r++)
		for (int s = 0; s < 500; s++)
			if (m->http[r][s])
				put(&b, "pdserve:http_requests_total{%s,route=\"%s\",code=\"%d\"} %lld\n", m->label, ROUTES[r],
				    s + 100, (long long)m->http[r][s]);
	head(&b, "pdserve:requests_rejected_total", "counter",
	     "Requests refused for exceeding a configured limit, by limit.");
	for (int k = 0; k < N_REJECT; k++)
		put(&b, "pdserve:requests_rejected_total{%s,reason=\"%s\"} %lld\n", m->label, REJECT_REASONS[k],
		    (long long)m->rejected[k]);
	if (b.oom || !b.p) {
		alloc_free(b.p);
		*out = NULL;
		*len = 0;
		return ERR_NOMEM;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}
