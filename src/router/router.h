/* router.h - `pdserve router`: the HTTP front that clients talk to. It
 * pairs a prefill and a decode worker per request (PD mode) or picks one
 * worker (regular mode), forwards the request and streams the answer back.
 *
 * One event loop thread does everything (libevent): it accepts client
 * requests (evhttp), talks to workers through upstream.h, runs health
 * checks and cache eviction on timers. Nothing blocks the loop.
 *
 * Endpoints (docs/ROUTER.md has the details):
 *   POST /v1/chat/completions  /v1/completions  /generate   proxied
 *   GET  /v1/models  /get_model_info                         from one worker
 *   GET  /health  /health_generate  /get_server_info  /metrics
 *   POST /flush_cache                                        fan-out
 *   GET/POST/DELETE /workers                                 membership
 *
 * Typical wiring (src/cmd/router.c):
 *
 *   r = router_create(&cfg, err);                 binds the port(s)
 *   router_add_worker(r, WORKER_PREFILL, url, 8998, err);  ...
 *   router_run(r);                                until SIGINT/SIGTERM
 *   router_destroy(r);
 *
 * Ownership: config strings are borrowed and must outlive the router.
 */
#ifndef PDSERVE_ROUTER_ROUTER_H
#define PDSERVE_ROUTER_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "router/balance.h"
#include "router/worker.h"

/* bootstrap_port values for router_add_worker besides a port */
enum {
	ROUTER_BOOTSTRAP_NONE = -1,    /* the prefill takes no bootstrap port (sent as null) */
	ROUTER_BOOTSTRAP_DISCOVER = 0, /* ask the prefill's /get_server_info */
};

typedef struct {
	const char *host;             /* NULL = "127.0.0.1" */
	int port;                     /* 0 = ephemeral (router_port) */
	bool pd;                      /* PD mode (prefill + decode) or regular */
	balance_config policy;        /* regular mode */
	balance_config prefill_policy, decode_policy;
	double health_interval_s;     /* between probes of a worker (SGLang default 60) */
	double health_timeout_s;      /* a probe's deadline; also the connect timeout (default 5) */
	const char *health_endpoint;  /* NULL = "/health" */
	worker_policy wpolicy;        /* health thresholds and circuit breaker */
	int max_retries;              /* attempts after the first (default 5; 0 = none) */
	int retry_backoff_ms;         /* before attempt k: backoff * multiplier^(k-1), capped by retry_max_backoff_ms, */
	int retry_max_backoff_ms;     /* then times 1 + a uniform draw in [-jitter, jitter] */
	double retry_backoff_multiplier; /* default 1.5 */
	double retry_jitter;          /* default 0.2; 0 = exact backoffs */
	bool health_check_disabled;   /* workers take requests at once and are never probed */
	/* admission of generation requests (chat, completions, generate) */
	int max_concurrent;           /* in flight at once, reply streamed to the end; <= 0 = no limit (default) */
	int queue_size;               /* waiting for a slot beyond those (default 100); full: 429 */
	double queue_timeout_s;       /* longest wait for a slot (default 60); then 408 */
	double rate_limit_per_s;      /* admissions per second, in bursts of up to max_concurrent; 0 = none */
	double shutdown_grace_s;      /* SIGTERM: stop accepting, let requests in flight finish this long (default 180) */
	double request_timeout_s;     /* whole request (default 1800) */
	size_t max_payload;           /* request body bytes (default 512 MiB); larger: 413 */
	size_t max_header_size;       /* request line + headers (default 64 KiB); larger: 431 */
	const char *api_key;          /* NULL/"" = none; else clients need it, and workers get it */
	const char *worker_api_key;   /* NULL/"" = api_key; else what workers get (their --api-key) */
	double eviction_interval_s;   /* cache_aware tree trimming (default 120) */
	int prometheus_port;          /* 0 = none; /metrics is on the main port anyway */
	const char *prometheus_host;  /* NULL = host */
	int max_idle_per_worker;      /* kept-alive connections per worker (default 64) */
	uint64_t seed;                /* 0 = from the clock */
} router_config;

/* Defaults for everything (SGLang's router defaults where it has one). */
router_config router_config_default(void);

typedef struct router router;

/* Set up the loop and bind. NULL with one sentence in err. */
router *router_create(const router_config *cfg, char err[ERR_LEN]);

/* Register a worker (before or during router_run; POST /workers does the
   same). type must suit the mode: prefill/decode in PD mode, regular
   otherwise. bootstrap_port: a port, or ROUTER_BOOTSTRAP_*; ignored for
   decode and regular. The worker takes requests after its first passing
   health check. ERR_INVAL (bad URL, wrong type, already registered). */
int router_add_worker(router *r, worker_type type, const char *url, int bootstrap_port, char err[ERR_LEN]);

/* The bound port. */
int router_port(const router *r);

/* Serve until SIGINT/SIGTERM or router_stop. A first SIGTERM/SIGINT with
   requests in flight closes the listener and waits up to shutdown_grace_s
   for them (new requests on open connections get 503); a second one, or
   router_stop, ends at once. 0, or ERR_IO. */
int router_run(router *r);

/* Make router_run return. Any thread. */
void router_stop(router *r);

/* Close everything; in-flight requests are dropped. NULL is fine. */
void router_destroy(router *r);

/* ---------------------------------------------------------------- helpers (tested on their own) */

/* The body sent to both halves of a PD request: base (a JSON object's
   text, "{...}", without bootstrap fields) with bootstrap_host,
   bootstrap_port (a number, or null when port < 0) and bootstrap_room
   prepended. Owned by the caller (alloc_free); NULL when out of memory or
   base is not "{...}". */
char *router_pd_body(const char *base, size_t base_len, const char *host, int port, uint64_t room, size_t *out_len);

/* Parse a client's generation body. On success *base (owned, alloc_free)
   is the object re-serialized without any client bootstrap_* fields, and
   *text (owned, may be NULL) is the prompt text cache_aware matches on:
   chat - the messages' role and content strings joined; completions -
   prompt (a string, or the first of a list; token ids as decimal text);
   generate - text or input_ids. *stream says whether a stream was asked.
   ERR_INVAL with err (one sentence) on malformed JSON or a non-object. */
int router_parse_gen(const char *body, size_t len, bool want_text, char **base, size_t *base_len, char **text,
		     size_t *text_len, bool *stream, char err[ERR_LEN]);

#endif
