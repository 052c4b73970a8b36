/* metrics.h - Prometheus text exposition for GET /metrics.
 *
 * Names: SGLang's own (`sglang:prompt_tokens_total`, `sglang:num_running_reqs`,
 * `sglang:time_to_first_token_seconds`, ...) wherever SGLang has the metric,
 * so the dashboards, alerts and benchmark scripts written against an SGLang
 * server read a pdserve server unchanged; `pdserve:` only for what SGLang
 * does not export (KV pages, HTTP requests by status, finishes by reason).
 * Every series carries the label model_name="<served model name>", as
 * SGLang's do. The full list is in docs/API.md.
 *
 * Counters and histograms are fed by the HTTP layer as requests progress;
 * gauges are read from engine_stats at scrape time.
 *
 * Threads: one thread (the HTTP event loop) updates and renders; nothing
 * here locks.
 */
#ifndef PDSERVE_SERVER_METRICS_H
#define PDSERVE_SERVER_METRICS_H

#include <stddef.h>

#include "base/err.h"
#include "engine/engine.h"

typedef struct metrics metrics;

/* model_name is copied. NULL on out of memory. */
metrics *metrics_create(const char *model_name);
void metrics_destroy(metrics *m); /* NULL is fine */

/* One HTTP request answered: route is one of a fixed set of paths (others
   count as "other"), status the HTTP status. */
void metrics_http(metrics *m, const char *route, int status);

/* One request refused for exceeding a configured limit: reason is an
   openai_error.limit ("body_size", "header_size", "prompt_tokens",
   "max_tokens", "n", "stop", "queue_full"); others count as "other". */
void metrics_rejected(metrics *m, const char *reason);

/* Time to first token, one inter-token gap, of one engine request. */
void metrics_ttft(metrics *m, double seconds);
void metrics_itl(metrics *m, double seconds);

typedef struct {
	int prompt_tokens;
	int completion_tokens;
	int cached_tokens;
	double e2e_s;       /* submit -> final event */
	double tpot_s;      /* (e2e - ttft) / (completion_tokens - 1); < 0: none */
	int finish;         /* engine_finish */
} metrics_request;

/* One engine request finished (every choice of a response counts). */
void metrics_request_done(metrics *m, const metrics_request *r);

/* The whole exposition, owned by the caller (alloc_free). st may be NULL
   (no engine: gauges are left out). 0 or ERR_NOMEM. */
int metrics_render(const metrics *m, const engine_stats *st, char **out, size_t *len);

#endif
