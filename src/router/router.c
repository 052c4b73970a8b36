/* router.c - `pdserve router`: client-facing HTTP (evhttp), the PD request
 * pairing, streaming pass-through, retries, cancellation, health checks,
 * membership and metrics.
 *
 * Threads. One: the event loop. Client requests (evhttp callbacks), worker
 * responses (upstream.h callbacks), the health tick and signals all run on
 * it; router_stop() from another thread only activates an event.
 *
 * Connections. Clients: evhttp, keep-alive, TCP_NODELAY set on each
 * request's socket. Workers: one upstream_pool per worker keeps up to
 * max_idle_per_worker connections alive; each upstream exchange has its
 * own connection while it runs, so a request is cancelled by closing its
 * connections, which the workers read as "the client left" (they abort the
 * engine request and free its KV pages; a decode also fails the room
 * towards its prefill, and a prefill towards its decode).
 *
 * A generation request (`rreq`) in PD mode:
 *
 *   handle_gen: parse, strip client bootstrap_*        (400 on bad JSON)
 *        |
 *        v
 *   attempt_start: pick prefill P and decode D by their policies, draw a
 *        |         63-bit room, POST the same body + bootstrap fields to
 *        |         both at once (legs q->p and q->d)
 *        v
 *   waiting --- D's first body byte, 200 + SSE ---> STREAMING (committed)
 *      |  |                                          | D's bytes go to the
 *      |  |                                          | client as they come
 *      |  +-- D done, 200 (not SSE) --> reply D's body (committed)
 *      |                                             |
 *      +-- P or D fails (connect error, closed       +-- D done: end reply
 *          before answering, non-2xx) before commit: |   D breaks: SSE error
 *          cancel the other leg; retryable (connect, |   event + [DONE]
 *          no answer, 503) and retries left: after   v
 *          a backoff, attempt_start with a new room  FINISHED (client reply
 *          and a pair avoiding failed workers; else  complete; a prefill leg
 *          reply that failure (the worker's own      still draining is let
 *          status and body when it answered)         finish, then rq_free)
 *
 *   The client leaving (EV_CLOSED on its socket, or evhttp's close
 *   callback) at any point cancels both legs at once (client_gone).
 *   The prefill's body is never waited for (its HTTP answer comes after the
 *   KV transfer, which the decode's first token already implies); it is
 *   read only to keep the connection reusable, or kept when a non-streamed
 *   /generate asked for logprobs (to merge prompt logprobs).
 *   Regular mode is the same with the decode leg alone, to a regular worker.
 *
 * A request is freed (rq_free) when its client reply is done or the client
 * left, no leg is live and no timer is pending (rq_maybe_free).
 *
 * Workers (rworker) are refcounted: the registry holds one reference, each
 * live leg one, so DELETE /workers during a request is safe. Load = max(the
 * router's own in-flight count, the worker's running + waiting from its last
 * /get_server_info poll, polled when a load-aware policy or bootstrap-port
 * discovery needs it).
 *
 * Health tick (every 100 ms): a probe per worker at most; PENDING workers
 * probed after 100 ms, doubling per failure up to 3.2 s (they join fast,
 * and a dead URL is not hammered), others every health interval; a
 * probe that passes health_timeout_s fails. A request that cannot connect
 * to a worker schedules a probe of it right away. With
 * --disable-health-check workers are HEALTHY from the start and only their
 * /get_server_info is polled (role, load, bootstrap port).
 *
 * Admission (--max-concurrent-requests, --queue-size, --queue-timeout-secs,
 * --rate-limit-tokens-per-second): see the state machine above adm_admit.
 * Shutdown: a first SIGTERM/SIGINT with requests in flight closes the
 * listener and lets them finish for --shutdown-grace-period-secs (new
 * requests on open connections get 503); the last one ending, the grace
 * period, or a second signal ends the loop.
 *
 * Left out: TLS, the SGLang router's service discovery, DP-aware routing,
 * more than 64 workers of one kind per pick (the rest are not considered),
 * merging of OpenAI-format prompt logprobs (only /generate's
 * meta_info.input_token_logprobs is merged), and write back-pressure towards
 * slow clients (libevent's output buffer grows; the decode is not paused).
 */
#include "router/router.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "router/upstream.h"
#include "server/evinit.h"

#define ROUTER_VERSION "0.1.0"
#define TICK_MS 100
#define PENDING_PROBE_S 0.1
#define MAX_TRIED 32
#define MAX_BUFFERED_BODY ((size_t)256 << 20)
#define MAX_INFO_BODY ((size_t)1 << 20)

typedef struct router router;
typedef struct rworker rworker;
typedef struct rreq rreq;
typedef struct fan fan;

/* ---------------------------------------------------------------- metrics */

static const double TTFT_BUCKETS[] = { 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
				       0.5,   0.75,   1,     2.5,  5,    7.5,  10,   15,   20,   30 };
static const double E2E_BUCKETS[] = { 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600 };
#define N_TTFT (sizeof(TTFT_BUCKETS) / sizeof(TTFT_BUCKETS[0]))
#define N_E2E (sizeof(E2E_BUCKETS) / sizeof(E2E_BUCKETS[0]))

typedef struct {
	uint64_t count;
	double sum;
	uint64_t bucket[24]; /* cumulative at render time; stored per bucket */
} histo;

static void histo_add(histo *h, const double *bounds, size_t n, double v)
{
	h->count++;
	h->sum += v;
	for (size_t i = 0; i < n; i++)
		if (v <= bounds[i]) {
			h->bucket[i]++;
			return;
		}
}

typedef enum {
	R_CHAT, R_COMPLETIONS, R_GENERATE, R_MODELS, R_MODEL_INFO, R_HEALTH, R_HEALTH_GEN, R_SERVER_INFO, R_FLUSH,
	R_METRICS, R_WORKERS, R_OTHER, R_COUNT
} route_id;

static const char *ROUTE_NAMES[R_COUNT] = {
	"/v1/chat/completions", "/v1/completions", "/generate", "/v1/models", "/get_model_info", "/health",
	"/health_generate", "/get_server_info", "/flush_cache", "/metrics", "/workers", "other",
};

#define N_CODES 8
static const int CODES[N_CODES] = { 200, 400, 401, 404, 413, 499, 500, 0 /* other */ };

typedef struct {
	uint64_t requests[R_COUNT];
	uint64_t responses[R_COUNT][N_CODES + 3]; /* + 502, 503, 504 */
	uint64_t retries, client_gone, no_worker, upstream_errors, cache_hits, cache_misses, lb_events, timeouts;
	uint64_t rejected_body, rejected_header; /* over --max-payload-size / --max-header-size */
	uint64_t rejected_read;      /* a body over twice the limit: libevent's own 413 */
	uint64_t rejected_malformed; /* libevent's own 400: bad HTTP, headers over twice the limit */
	uint64_t rejected_queue_full, queue_timeouts, queued, rejected_draining;
	histo ttft, e2e;
} rmetrics;

/* ---------------------------------------------------------------- types */

struct rworker {
	router *r;
	int id;
	int refs;
	bool removed;
	worker_type type;
	worker_url url;
	int bootstrap_port;        /* a port, ROUTER_BOOTSTRAP_NONE, or _DISCOVER until learned */
	worker_state st;
	upstream_pool *pool;
	int in_flight;             /* legs live on it */
	int polled_load;           /* running + waiting at its last /get_server_info */
	bool misrole;              /* its /get_server_info names another role */
	bool role_checked;
	uint64_t processed, errors;
	char last_error[240];
	upstream *probe, *info;
	int probe_status, info_status;
	struct evbuffer *info_body;
	int64_t probe_t0, info_t0, next_probe;
};

typedef struct {
	rreq *q;
	rworker *w;
	upstream *u;               /* live exchange, or NULL */
	bool prefill;
	int status;                /* 0 until the head */
	char ctype[128];
	struct evbuffer *buf;      /* buffered body: errors, non-SSE answers, a prefill body to merge */
	bool done, ok;
	bool discard;              /* a 200 prefill body nobody needs */
} leg;

struct rreq {
	rreq *prev, *next;
	router *r;
	struct evhttp_request *req; /* the client; NULL once the reply is done or the client left */
	struct event *closed_ev;
	struct event *retry_ev, *deadline_ev;
	route_id route;
	bool stream;               /* the client asked for a stream */
	bool health;               /* internal /health_generate */
	bool merge_logprobs;       /* non-streamed /generate with return_logprob */
	char *base;                /* the body without bootstrap fields */
	size_t base_len;
	char *text;                /* prompt text for cache_aware (may be NULL) */
	size_t text_len;
	int attempt;
	int tried[MAX_TRIED], n_tried;
	leg p, d;                  /* PD: both; regular: d only */
	uint64_t room;
	char p_url[300], d_url[300]; /* this attempt's workers, for the X-Pdserve-* reply headers */
	bool committed;            /* bytes went to the client */
	bool waiting_merge;        /* the decode's body is in; waiting for the prefill's */
	struct evbuffer *sse_hold; /* an incomplete trailing SSE event */
	int64_t t_start;
	bool got_first;
	char auth[320];            /* Authorization header line for the workers, or "" */
	/* the last failure, replied when no retry is left */
	int fail_status;
	char fail_msg[400];
	struct evbuffer *fail_body;
	char fail_ctype[128];
	bool fail_overload;
	char id[24];
	/* admission (--max-concurrent-requests) */
	bool admitted;             /* holds a slot until rq_free */
	bool queued;               /* in the wait queue */
	rreq *wprev, *wnext;
	struct event *queue_ev;    /* --queue-timeout-secs */
};

typedef struct {
	fan *f;
	rworker *w;
	upstream *u;
	int status;
	struct evbuffer *body;
	char err[200];
	bool done;
} fan_item;

typedef enum { FAN_FLUSH, FAN_INFO, FAN_FORWARD } fan_kind;

struct fan {
	fan *prev, *next;
	router *r;
	struct evhttp_request *req;
	struct event *closed_ev, *timer;
	fan_kind kind;
	route_id route;
	const char *path;
	fan_item *items;
	int n, pending;
};

struct router {
	router_config cfg;
	char host[256];
	struct event_base *base;
	struct evdns_base *dns;
	struct evhttp *http, *prom;
	evinit_cutoff cutoff; /* libevent's own 413s, counted */
	struct evhttp_bound_socket *sock;
	struct event *tick_ev, *stop_ev, *sigint, *sigterm;
	struct evbuffer *scratch;
	rworker **workers;
	int n_workers, cap_workers, next_id;
	balance *bal_regular, *bal_prefill, *bal_decode;
	rreq *reqs;
	fan *fans;
	int n_reqs;
	uint64_t rng;
	uint64_t next_req_id;
	int port;
	int64_t started_ns, next_evict;
	char auth_line[320];       /* "Authorization: Bearer KEY\r\n" when --api-key, else "" */
	/* admission: slots in use, the FIFO of waiters, the rate bucket */
	int adm_inflight, n_waiting;
	rreq *wait_head, *wait_tail;
	double adm_tokens;
	int64_t adm_refill_ns;
	struct event *admit_ev;    /* admits waiters: activated when a slot frees, or a timer for a rate token */
	bool draining;             /* SIGTERM seen: listener closed, waiting for requests in flight */
	struct event *grace_ev;
	rmetrics m;
};

/* ---------------------------------------------------------------- small helpers */

/* s seconds (>= 0) as a timeval for evtimer_add. */
static struct timeval tv_of(double s)
{
	if (s < 0)
		s = 0;
	return (struct timeval){ .tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - floor(s)) * 1e6) };
}

static uint64_t rng_next(router *r)
{
	uint64_t z = (r->rng += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Payload Too Large";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Error";
	}
}

static void count_response(router *r, route_id route, int status)
{
	int k = N_CODES - 1;
	for (int i = 0; i < N_CODES - 1; i++)
		if (CODES[i] == status)
			k = i;
	if (status == 502)
		k = N_CODES;
	else if (status == 503)
		k = N_CODES + 1;
	else if (status == 504)
		k = N_CODES + 2;
	r->m.responses[route][k]++;
}

static const char *error_type(int status)
{
	if (status == 401)
		return "authentication_error";
	if (status == 503)
		return "service_unavailable_error";
	if (status == 404)
		return "not_found_error";
	if (status >= 500)
		return "server_error";
	return "invalid_request_error";
}

/* {"error": {"message", "type", "param": null, "code"}} as OpenAI sends */
static char *error_json(int status, const char *msg, size_t *len)
{
	json_object *o = json_object_new_object(), *e = json_object_new_object();
	json_object_object_add(e, "message", json_object_new_string(msg));
	json_object_object_add(e, "type", json_object_new_string(error_type(status)));
	json_object_object_add(e, "param", NULL);
	json_object_object_add(e, "code", json_object_new_int(status));
	json_object_object_add(o, "error", e);
	size_t n = 0;
	const char *t = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	char *out = t ? alloc_strndup(t, n) : NULL;
	*len = out ? n : 0;
	json_object_put(o);
	return out;
}

static void reply_raw(router *r, struct evhttp_request *req, route_id route, int status, const char *ctype,
		      const void *body, size_t len)
{
	if (ctype && *ctype)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	struct evbuffer *b = evbuffer_new();
	if (b && len)
		evbuffer_add(b, body, len);
	evhttp_send_reply(req, status, reason(status), b);
	if (b)
		evbuffer_free(b);
	count_response(r, route, status);
}

static void reply_error(router *r, struct evhttp_request *req, route_id route, int status, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void reply_error(router *r, struct evhttp_request *req, route_id route, int status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_msg(status >= 500 ? LOG_WARN : LOG_INFO, "router", "%s: %d %s", ROUTE_NAMES[route], status, msg);
	size_t len;
	char *body = error_json(status, msg, &len);
	if (status == 401)
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
	reply_raw(r, req, route, status, "application/json", body ? body : "", body ? len : 0);
	alloc_free(body);
}

static void reply_jobj(router *r, struct evhttp_request *req, route_id route, json_object *o)
{
	size_t n = 0;
	const char *t = o ? json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
							      &n) : NULL;
	if (t)
		reply_raw(r, req, route, 200, "application/json", t, n);
	else
		reply_error(r, req, route, 500, "out of memory");
	json_object_put(o);
}

static json_object *parse_object(const char *body, size_t len, char err[ERR_LEN])
{
	json_tokener *tk = json_tokener_new();
	if (!tk) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tk, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	json_object *o = len ? json_tokener_parse_ex(tk, body, (int)len) : NULL;
	enum json_tokener_error je = json_tokener_get_error(tk);
	size_t end = json_tokener_get_parse_end(tk);
	json_tokener_free(tk);
	bool trailing = false;
	for (size_t i = end; o && i < len; i++)
		trailing |= !strchr(" \t\r\n", body[i]);
	if (!o || je != json_tokener_success || trailing) {
		json_object_put(o);
		err_set(err, ERR_INVAL, "malformed JSON: %s",
			!len ? "the body is empty" : trailing ? "unexpected data after the object" :
			json_tokener_error_desc(je));
		return NULL;
	}
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		err_set(err, ERR_INVAL, "the body must be a JSON object");
		return NULL;
	}
	return o;
}

/* ---------------------------------------------------------------- body helpers (exported for tests) */

char *router_pd_body(const char *base, size_t base_len, const char *host, int port, uint64_t room, size_t *out_len)
{
	size_t a = 0, b = base_len;
	while (a < b && strchr(" \t\r\n", base[a]))
		a++;
	while (b > a && strchr(" \t\r\n", base[b - 1]))
		b--;
	if (b - a < 2 || base[a] != '{' || base[b - 1] != '}')
		return NULL;
	size_t k = a + 1;
	while (k < b - 1 && strchr(" \t\r\n", base[k]))
		k++;
	bool empty = k == b - 1;
	char head[384];
	char portbuf[16];
	if (port >= 0)
		snprintf(portbuf, sizeof(portbuf), "%d", port);
	else
		snprintf(portbuf, sizeof(portbuf), "null");
	int hn = snprintf(head, sizeof(head), "{\"bootstrap_host\":\"%s\",\"bootstrap_port\":%s,\"bootstrap_room\":%llu%s",
			  host, portbuf, (unsigned long long)room, empty ? "}" : ",");
	if (hn < 0 || (size_t)hn >= sizeof(head))
		return NULL;
	size_t rest = empty ? 0 : (b - 1) - (a + 1) + 1; /* from after '{' through the closing '}' */
	char *out = alloc_bytes((size_t)hn + rest + 1);
	if (!out)
		return NULL;
	memcpy(out, head, (size_t)hn);
	if (rest)
		memcpy(out + hn, base + a + 1, rest);
	out[hn + rest] = '\0';
	*out_len = (size_t)hn + rest;
	return out;
}

/* append s to a growing text buffer */
static int text_add(char **t, size_t *n, size_t *cap, const char *s, size_t len)
{
	if (*n + len + 1 > *cap) {
		size_t c = *cap ? *cap : 256;
		while (c < *n + len + 1)
			c *= 2;
		char *g = alloc_resize(*t, c);
		if (!g)
			return ERR_NOMEM;
		*t = g;
		*cap = c;
	}
	memcpy(*t + *n, s, len);
	*n += len;
	(*t)[*n] = '\0';
	return 0;
}

static int text_add_value(char **t, size_t *n, size_t *cap, json_object *v)
{
	if (!v)
		return 0;
	if (json_object_is_type(v, json_type_string))
		return text_add(t, n, cap, json_object_get_string(v), (size_t)json_object_get_string_len(v));
	if (json_object_is_type(v, json_type_array)) {
		size_t k = json_object_array_length(v);
		for (size_t i = 0; i < k; i++) {
			json_object *e = json_object_array_get_idx(v, i);
			if (json_object_is_type(e, json_type_int)) { /* token ids: as decimal text */
				char num[24];
				int m = snprintf(num, sizeof(num), "%lld ", (long long)json_object_get_int64(e));
				if (text_add(t, n, cap, num, (size_t)m) < 0)
					return ERR_NOMEM;
			} else if (json_object_is_type(e, json_type_object)) { /* content parts */
				json_object *tx;
				if (json_object_object_get_ex(e, "text", &tx) && text_add_value(t, n, cap, tx) < 0)
					return ERR_NOMEM;
			} else if (i == 0) { /* a batch: the first prompt */
				return text_add_value(t, n, cap, e);
			}
		}
	}
	return 0;
}

int router_parse_gen(const char *body, size_t len, bool want_text, char **base, size_t *base_len, char **text,
		     size_t *text_len, bool *stream, char err[ERR_LEN])
{
	*base = *text = NULL;
	*base_len = *text_len = 0;
	*stream = false;
	json_object *o = parse_object(body, len, err), *v;
	if (!o)
		return ERR_INVAL;
	if (json_object_object_get_ex(o, "stream", &v) && json_object_is_type(v, json_type_boolean))
		*stream = json_object_get_boolean(v);
	bool strip = false;
	static const char *const BOOT[] = { "bootstrap_host", "bootstrap_port", "bootstrap_room" };
	for (int i = 0; i < 3; i++)
		if (json_object_object_get_ex(o, BOOT[i], NULL)) {
			json_object_object_del(o, BOOT[i]);
			strip = true;
		}
	if (strip) {
		size_t n = 0;
		const char *t = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
								  &n);
		*base = t ? alloc_strndup(t, n) : NULL;
		*base_len = n;
	} else {
		*base = alloc_strndup(body, len); /* as sent: no re-serialization surprises */
		*base_len = len;
	}
	if (!*base)
		goto nomem;
	if (want_text) {
		size_t cap = 0;
		json_object *msgs;
		if (json_object_object_get_ex(o, "messages", &msgs) && json_object_is_type(msgs, json_type_array)) {
			size_t k = json_object_array_length(msgs);
			for (size_t i = 0; i < k; i++) {
				json_object *m = json_object_array_get_idx(msgs, i), *role = NULL, *content = NULL;
				if (!json_object_is_type(m, json_type_object))
					continue;
				json_object_object_get_ex(m, "role", &role);
				json_object_object_get_ex(m, "content", &content);
				if (text_add_value(text, text_len, &cap, role) < 0 || text_add(text, text_len, &cap, ": ", 2) < 0 ||
				    text_add_value(text, text_len, &cap, content) < 0 || text_add(text, text_len, &cap, "\n", 1) < 0)
					goto nomem;
			}
		} else {
			static const char *const KEYS[] = { "prompt", "text", "input_ids" };
			for (int i = 0; i < 3 && !*text_len; i++)
				if (json_object_object_get_ex(o, KEYS[i], &v) && text_add_value(text, text_len, &cap, v) < 0)
					goto nomem;
		}
	}
	json_object_put(o);
	return 0;
nomem:
	json_object_put(o);
	alloc_free(*base);
	alloc_free(*text);
	*base = *text = NULL;
	return err_set(err, ERR_NOMEM, "out of memory");
}

/* ---------------------------------------------------------------- workers */

static void worker_unref(rworker *w)
{
	if (--w->refs > 0)
		return;
	if (w->info_body)
		evbuffer_free(w->info_body);
	alloc_free(w);
}

static rworker *worker_find(router *r, const char *url)
{
	for (int i = 0; i < r->n_workers; i++)
		if (!strcmp(r->workers[i]->url.url, url))
			return r->workers[i];
	return NULL;
}

static bool worker_routable(rworker *w, int64_t now)
{
	if (w->removed || w->misrole)
		return false;
	if (w->type == WORKER_PREFILL && w->bootstrap_port == ROUTER_BOOTSTRAP_DISCOVER)
		return false;
	return worker_state_routable(&w->st, &w->r->cfg.wpolicy, now);
}

static int worker_load(const rworker *w)
{
	return w->in_flight > w->polled_load ? w->in_flight : w->polled_load;
}

static balance *balance_for(router *r, worker_type t)
{
	return t == WORKER_PREFILL ? r->bal_prefill : t == WORKER_DECODE ? r->bal_decode : r->bal_regular;
}

static bool needs_load(router *r, worker_type t)
{
	balance_policy p = t == WORKER_PREFILL ? r->cfg.prefill_policy.policy :
			   t == WORKER_DECODE ? r->cfg.decode_policy.policy : r->cfg.policy.policy;
	return p == BALANCE_POWER_OF_TWO || p == BALANCE_CACHE_AWARE;
}

/* The worker had a request-level outcome (circuit breaker). */
static void worker_outcome(rworker *w, bool ok, const char *msg)
{
	if (!ok) {
		w->errors++;
		if (msg)
			snprintf(w->last_error, sizeof(w->last_error), "%s", msg);
	}
	if (worker_state_request(&w->st, &w->r->cfg.wpolicy, ok, clock_now_ns()))
		log_msg(w->st.cb == WORKER_CB_OPEN ? LOG_WARN : LOG_INFO, "router", "%s worker %s: circuit breaker %s%s%s",
			worker_type_name(w->type), w->url.url, worker_cb_name(w->st.cb), msg ? ": " : "", msg ? msg : "");
}

int router_add_worker(router *r, worker_type type, const char *url, int bootstrap_port, char err[ERR_LEN])
{
	worker_url u;
	int rc = worker_url_parse(url, &u, err);
	if (rc)
		return rc;
	if (r->cfg.pd && type == WORKER_REGULAR)
		return err_set(err, ERR_INVAL, "%s: this router is in PD mode: workers are prefill or decode", u.url);
	if (!r->cfg.pd && type != WORKER_REGULAR)
		return err_set(err, ERR_INVAL, "%s: a %s worker needs a PD router (--pd-disaggregation)", u.url,
			       worker_type_name(type));
	if (worker_find(r, u.url))
		return err_set(err, ERR_INVAL, "%s is already registered", u.url);
	if (bootstrap_port < ROUTER_BOOTSTRAP_NONE || bootstrap_port > 65535)
		return err_set(err, ERR_INVAL, "%s: bad bootstrap port %d", u.url, bootstrap_port);
	if (r->n_workers == r->cap_workers) {
		int cap = r->cap_workers ? 2 * r->cap_workers : 8;
		rworker **g = alloc_resize_array(r->workers, (size_t)cap, sizeof(*g));
		if (!g)
			return err_set(err, ERR_NOMEM, "out of memory");
		r->workers = g;
		r->cap_workers = cap;
	}
	rworker *w = alloc_zeroed(1, sizeof(*w));
	if (!w)
		return err_set(err, ERR_NOMEM, "out of memory");
	w->r = r;
	w->id = ++r->next_id;
	w->refs = 1;
	w->type = type;
	w->url = u;
	w->bootstrap_port = type == WORKER_PREFILL ? bootstrap_port : ROUTER_BOOTSTRAP_NONE;
	worker_state_init(&w->st);
	if (r->cfg.health_check_disabled)
		w->st.health = WORKER_HEALTHY; /* taken on trust; the circuit breaker still applies */
	w->pool = upstream_pool_create(r->base, r->dns, u.host, u.port, r->cfg.max_idle_per_worker,
				       r->cfg.health_timeout_s);
	if (!w->pool) {
		alloc_free(w);
		return err_set(err, ERR_NOMEM, "out of memory");
	}
	w->next_probe = clock_now_ns();
	r->workers[r->n_workers++] = w;
	char bp[16];
	snprintf(bp, sizeof(bp), "%d", bootstrap_port);
	if (w->type == WORKER_PREFILL)
		LOGI("router", "prefill worker %s added (bootstrap port %s)", u.url,
		     bootstrap_port == ROUTER_BOOTSTRAP_NONE ? "none" :
		     bootstrap_port == ROUTER_BOOTSTRAP_DISCOVER ? "from /get_server_info" : bp);
	else
		LOGI("router", "%s worker %s added", worker_type_name(type), u.url);
	return 0;
}

static void worker_remove(router *r, rworker *w)
{
	for (int i = 0; i < r->n_workers; i++)
		if (r->workers[i] == w) {
			memmove(&r->workers[i], &r->workers[i + 1], (size_t)(r->n_workers - i - 1) * sizeof(*r->workers));
			r->n_workers--;
			break;
		}
	w->removed = true;
	upstream_cancel(w->probe);
	upstream_cancel(w->info);
	w->probe = w->info = NULL;
	balance_forget(balance_for(r, w->type), w->id);
	upstream_pool_release(w->pool); /* live legs keep it until they end */
	w->pool = NULL;
	LOGI("router", "%s worker %s removed", worker_type_name(w->type), w->url.url);
	worker_unref(w);
}

/* ---------------------------------------------------------------- health checks */

static void probe_result(rworker *w, bool ok, const char *msg)
{
	router *r = w->r;
	int64_t now = clock_now_ns();
	w->probe = NULL;
	if (!ok)
		snprintf(w->last_error, sizeof(w->last_error), "health check: %s", msg);
	worker_health before = w->st.health;
	bool changed = worker_state_probe(&w->st, &r->cfg.wpolicy, ok);
	/* a worker never seen alive: 0.1 s, doubling per failure up to 3.2 s */
	int shift = w->st.fail_streak < 5 ? w->st.fail_streak : 5;
	double iv = r->cfg.health_interval_s;
	if (w->st.health == WORKER_PENDING && PENDING_PROBE_S * (1 << shift) < iv)
		iv = PENDING_PROBE_S * (1 << shift);
	w->next_probe = now + (int64_t)(iv * 1e9);
	if (changed) {
		if (w->st.health == WORKER_HEALTHY)
			LOGI("router", "%s worker %s is healthy%s", worker_type_name(w->type), w->url.url,
			     before == WORKER_UNHEALTHY ? " again" : "");
		else
			LOGW("router", "%s worker %s is unhealthy: %s", worker_type_name(w->type), w->url.url, msg);
	}
}

static void probe_head(void *arg, int status, const char *ctype)
{
	((rworker *)arg)->probe_status = status;
}

static void probe_body(void *arg, const char *data, size_t len)
{
}

static void probe_done(void *arg)
{
	rworker *w = arg;
	char msg[64];
	snprintf(msg, sizeof(msg), "HTTP %d", w->probe_status);
	probe_result(w, w->probe_status >= 200 && w->probe_status < 300, msg);
}

static void probe_error(void *arg, upstream_err kind, const char *message)
{
	probe_result(arg, false, message);
}

static const upstream_cbs PROBE_CBS = { probe_head, probe_body, probe_done, probe_error };

static void info_head(void *arg, int status, const char *ctype)
{
	((rworker *)arg)->info_status = status;
}

static void info_body(void *arg, const char *data, size_t len)
{
	rworker *w = arg;
	if (evbuffer_get_length(w->info_body) + len <= MAX_INFO_BODY)
		evbuffer_add(w->info_body, data, len);
}

static void info_done(void *arg)
{
	rworker *w = arg;
	w->info = NULL;
	size_t len = evbuffer_get_length(w->info_body);
	const char *body = len ? (const char *)evbuffer_pullup(w->info_body, -1) : "";
	char err[ERR_LEN];
	json_object *o = w->info_status == 200 && body ? parse_object(body, len, err) : NULL, *v, *st;
	evbuffer_drain(w->info_body, len);
	if (!o)
		return;
	if (json_object_object_get_ex(o, "engine_stats", &st) && json_object_is_type(st, json_type_object)) {
		int load = 0;
		if (json_object_object_get_ex(st, "running", &v))
			load += json_object_get_int(v);
		if (json_object_object_get_ex(st, "waiting", &v))
			load += json_object_get_int(v);
		w->polled_load = load < 0 ? 0 : load;
	}
	const char *want = w->type == WORKER_PREFILL ? "prefill" : w->type == WORKER_DECODE ? "decode" : "null";
	if (json_object_object_get_ex(o, "disaggregation_mode", &v) && json_object_is_type(v, json_type_string)) {
		const char *mode = json_object_get_string(v);
		bool bad = strcmp(mode, want) != 0;
		if (bad && !w->misrole)
			LOGE("router", "%s was registered as a %s worker, but it runs with --disaggregation-mode %s: not "
				       "routing to it", w->url.url, worker_type_name(w->type), mode);
		if (bad)
			snprintf(w->last_error, sizeof(w->last_error), "registered as %s, but the server's "
				 "disaggregation_mode is %s", worker_type_name(w->type), mode);
		if (!bad && w->misrole)
			LOGI("router", "%s now runs as %s", w->url.url, mode);
		w->misrole = bad;
	}
	w->role_checked = true;
	if (w->type == WORKER_PREFILL && w->bootstrap_port == ROUTER_BOOTSTRAP_DISCOVER &&
	    json_object_object_get_ex(o, "disaggregation_bootstrap_port", &v) && json_object_is_type(v, json_type_int)) {
		int p = json_object_get_int(v);
		if (p >= 1 && p <= 65535) {
			w->bootstrap_port = p;
			LOGI("router", "prefill worker %s: bootstrap port %d (from /get_server_info)", w->url.url, p);
		}
	}
	json_object_put(o);
}

static void info_error(void *arg, upstream_err kind, const char *message)
{
	rworker *w = arg;
	w->info = NULL;
	evbuffer_drain(w->info_body, evbuffer_get_length(w->info_body));
}

static const upstream_cbs INFO_CBS = { info_head, info_body, info_done, info_error };

static void probe_start(router *r, rworker *w, int64_t now)
{
	const char *auth = r->auth_line;
	if (r->cfg.health_check_disabled) { /* --disable-health-check: only the /get_server_info polls */
		w->next_probe = now + (int64_t)(r->cfg.health_interval_s * 1e9);
	} else {
		w->probe_status = 0;
		w->probe_t0 = now;
		w->probe = upstream_start(w->pool, "GET", r->cfg.health_endpoint, auth, NULL, 0, &PROBE_CBS, w);
		if (!w->probe) {
			w->next_probe = now + (int64_t)(r->cfg.health_interval_s * 1e9);
			return;
		}
	}
	bool want_info = !w->role_checked || needs_load(r, w->type) ||
			 (w->type == WORKER_PREFILL && w->bootstrap_port == ROUTER_BOOTSTRAP_DISCOVER);
	if (want_info && !w->info) {
		if (!w->info_body && !(w->info_body = evbuffer_new()))
			return;
		w->info_status = 0;
		w->info_t0 = now;
		w->info = upstream_start(w->pool, "GET", "/get_server_info", auth, NULL, 0, &INFO_CBS, w);
	}
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	router *r = arg;
	int64_t now = clock_now_ns();
	int64_t timeout = (int64_t)(r->cfg.health_timeout_s * 1e9);
	for (int i = 0; i < r->n_workers; i++) {
		rworker *w = r->workers[i];
		if (w->probe && now - w->probe_t0 > timeout) {
			upstream_cancel(w->probe);
			char msg[80];
			snprintf(msg, sizeof(msg), "no answer in %.1f s", r->cfg.health_timeout_s);
			probe_result(w, false, msg);
		}
		if (w->info && now - w->info_t0 > timeout) {
			upstream_cancel(w->info);
			w->info = NULL;
			evbuffer_drain(w->info_body, evbuffer_get_length(w->info_body));
		}
		if (!w->probe && now >= w->next_probe)
			probe_start(r, w, now);
	}
	if (r->cfg.eviction_interval_s > 0 && now >= r->next_evict) {
		balance_evict(r->bal_regular);
		balance_evict(r->bal_prefill);
		balance_evict(r->bal_decode);
		r->next_evict = now + (int64_t)(r->cfg.eviction_interval_s * 1e9);
	}
}

/* ---------------------------------------------------------------- choosing workers */

static bool was_tried(const rreq *q, int id)
{
	for (int i = 0; i < q->n_tried; i++)
		if (q->tried[i] == id)
			return true;
	return false;
}

/* Pick a worker of type t for q. NULL with why filled when none can take it. */
static rworker *pick(router *r, rreq *q, worker_type t, char *why, size_t why_len)
{
	int64_t now = clock_now_ns();
	balance_cand cand[64];
	rworker *cw[64];
	int n = 0;
	for (int pass = 0; pass < 2 && n == 0; pass++) {
		/* pass 0: workers this request has not failed on; pass 1: any, but
		   only after an overload answer (503), where waiting helps */
		if (pass == 1 && !q->fail_overload)
			break;
		for (int i = 0; i < r->n_workers && n < 64; i++) {
			rworker *w = r->workers[i];
			if (w->type != t || !worker_routable(w, now) || (pass == 0 && was_tried(q, w->id)))
				continue;
			cand[n] = (balance_cand){ .id = w->id, .load = worker_load(w) };
			cw[n++] = w;
		}
	}
	if (n == 0) {
		int total = 0, k;
		size_t off = 0;
		k = snprintf(why, why_len, "no healthy %s worker available", worker_type_name(t));
		off = k > 0 ? (size_t)k : 0;
		for (int i = 0; i < r->n_workers && off < why_len; i++) {
			rworker *w = r->workers[i];
			if (w->type != t)
				continue;
			const char *state = was_tried(q, w->id) ? "failed for this request" :
					    w->misrole ? "wrong role" :
					    w->st.health != WORKER_HEALTHY ? worker_health_name(w->st.health) :
					    w->type == WORKER_PREFILL && w->bootstrap_port == ROUTER_BOOTSTRAP_DISCOVER ?
										  "bootstrap port unknown" :
										  "circuit breaker open";
			k = snprintf(why + off, why_len - off, "%s %s (%s%s%s)", total ? "," : ":", w->url.url, state,
				     w->last_error[0] ? ": " : "", w->last_error);
			off += k > 0 ? (size_t)k : 0;
			total++;
		}
		if (!total && off < why_len)
			snprintf(why + off, why_len - off, " (none registered)");
		return NULL;
	}
	int idx = 0;
	balance_why bw;
	balance_pick(balance_for(r, t), cand, n, q->text, q->text_len, &idx, &bw);
	if (bw.imbalanced)
		r->m.lb_events++;
	else if ((t == WORKER_PREFILL ? r->cfg.prefill_policy.policy :
		  t == WORKER_DECODE ? r->cfg.decode_policy.policy : r->cfg.policy.policy) == BALANCE_CACHE_AWARE) {
		if (bw.cache_hit)
			r->m.cache_hits++;
		else
			r->m.cache_misses++;
	}
	return cw[idx];
}

/* ---------------------------------------------------------------- client watching */

static void rq_gone(rreq *q, const char *why, bool detached);

static void on_rq_closed(evutil_socket_t fd, short what, void *arg)
{
	rq_gone(arg, "the client closed the connection", false);
}

static void on_rq_conn_close(struct evhttp_connection *con, void *arg)
{
	rreq *q = arg;
	if (q->req)
		rq_gone(q, "the client connection closed", evhttp_request_get_connection(q->req) == con);
}

static void watch_client(struct event_base *base, struct evhttp_request *req, struct event **closed_ev,
			 void (*conn_cb)(struct evhttp_connection *, void *), event_callback_fn fd_cb, void *arg)
{
	struct evhttp_connection *con = evhttp_request_get_connection(req);
	if (!con)
		return;
	evhttp_connection_set_closecb(con, conn_cb, arg);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(con);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd >= 0 && (event_base_get_features(base) & EV_FEATURE_EARLY_CLOSE)) {
		*closed_ev = event_new(base, fd, EV_CLOSED, fd_cb, arg);
		if (*closed_ev && event_add(*closed_ev, NULL) < 0) {
			event_free(*closed_ev);
			*closed_ev = NULL;
		}
	}
}

/* Before handing the reply back to libevent (which may close the fd). */
static void unwatch_client(struct evhttp_request *req, struct event **closed_ev)
{
	if (*closed_ev) {
		event_free(*closed_ev);
		*closed_ev = NULL;
	}
	struct evhttp_connection *con = req ? evhttp_request_get_connection(req) : NULL;
	if (con)
		evhttp_connection_set_closecb(con, NULL, NULL);
}

/* ---------------------------------------------------------------- generation requests */

static void attempt_start(rreq *q);

static void leg_reset(leg *l)
{
	if (l->buf)
		evbuffer_drain(l->buf, evbuffer_get_length(l->buf));
	l->w = NULL;
	l->u = NULL;
	l->status = 0;
	l->ctype[0] = '\0';
	l->done = l->ok = l->discard = false;
}

/* The leg's exchange ended (any way): the worker's count and reference. */
static void leg_end(leg *l)
{
	l->u = NULL;
	if (l->w) {
		l->w->in_flight--;
		worker_unref(l->w);
		l->w = NULL;
	}
}

static void leg_cancel(leg *l)
{
	if (l->u) {
		upstream_cancel(l->u);
		leg_end(l);
	}
}

static void wait_unlink(rreq *q);

static void rq_free(rreq *q)
{
	router *r = q->r;
	if (q->queued)
		wait_unlink(q);
	if (q->queue_ev)
		event_free(q->queue_ev);
	if (q->admitted) {
		r->adm_inflight--;
		if (r->wait_head)
			event_active(r->admit_ev, EV_READ, 0); /* not from here: see on_admit */
	}
	if (q->prev)
		q->prev->next = q->next;
	else if (r->reqs == q)
		r->reqs = q->next;
	if (q->next)
		q->next->prev = q->prev;
	r->n_reqs--;
	if (q->closed_ev)
		event_free(q->closed_ev);
	if (q->retry_ev)
		event_free(q->retry_ev);
	if (q->deadline_ev)
		event_free(q->deadline_ev);
	if (q->p.buf)
		evbuffer_free(q->p.buf);
	if (q->d.buf)
		evbuffer_free(q->d.buf);
	if (q->sse_hold)
		evbuffer_free(q->sse_hold);
	if (q->fail_body)
		evbuffer_free(q->fail_body);
	alloc_free(q->base);
	alloc_free(q->text);
	alloc_free(q);
	if (r->draining && !r->n_reqs) {
		LOGI("router", "no request in flight: shutting down");
		event_base_loopexit(r->base, NULL);
	}
}

static void rq_maybe_free(rreq *q)
{
	if (!q->req && !q->p.u && !q->d.u && !(q->retry_ev && event_pending(q->retry_ev, EV_TIMEOUT, NULL)))
		rq_free(q);
}

/* Take the client request back from q before replying. */
static struct evhttp_request *rq_take(rreq *q)
{
	struct evhttp_request *req = q->req;
	unwatch_client(req, &q->closed_ev);
	q->req = NULL;
	return req;
}

static void count_e2e(rreq *q)
{
	histo_add(&q->r->m.e2e, E2E_BUCKETS, N_E2E, (double)(clock_now_ns() - q->t_start) * 1e-9);
}

/* Which workers served this request: X-Pdserve-Prefill / X-Pdserve-Decode
   (PD) or X-Pdserve-Worker (regular). */
static void add_worker_headers(rreq *q, struct evhttp_request *req)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	if (q->p_url[0])
		evhttp_add_header(h, "X-Pdserve-Prefill", q->p_url);
	if (q->d_url[0])
		evhttp_add_header(h, q->r->cfg.pd ? "X-Pdserve-Decode" : "X-Pdserve-Worker", q->d_url);
}

/* Reply a complete (non-streamed) answer and finish the client side. */
static void rq_reply(rreq *q, int status, const char *ctype, const void *body, size_t len)
{
	router *r = q->r;
	if (!q->req)
		return;
	struct evhttp_request *req = rq_take(q);
	count_e2e(q);
	if (q->health) {
		if (status == 200) {
			reply_raw(r, req, q->route, 200, "text/plain", "", 0);
		} else {
			char msg[600];
			snprintf(msg, sizeof(msg), "health_generate failed: HTTP %d: %.*s", status,
				 (int)(len < 500 ? len : 500), (const char *)body);
			reply_error(r, req, q->route, 503, "%s", msg);
		}
		return;
	}
	q->committed = true;
	add_worker_headers(q, req);
	reply_raw(r, req, q->route, status, ctype, body, len);
}

static void rq_reply_error(rreq *q, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void rq_reply_error(rreq *q, int status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	LOGW("router", "%s %s: %d %s", ROUTE_NAMES[q->route], q->id, status, msg);
	size_t len;
	char *body = error_json(status, msg, &len);
	rq_reply(q, status, "application/json", body ? body : "", body ? len : 0);
	alloc_free(body);
}

/* Streamed reply, after the commit: an SSE error event, [DONE], the end. */
static void rq_stream_fail(rreq *q, int status, const char *msg)
{
	router *r = q->r;
	if (!q->req)
		return;
	LOGW("router", "%s %s: %s (mid-stream)", ROUTE_NAMES[q->route], q->id, msg);
	struct evhttp_request *req = rq_take(q);
	size_t len;
	char *body = error_json(status, msg, &len);
	/* a half-written event of the worker's is held back (rq_forward), never
	   sent: the client's stream is at an event boundary */
	if (body) {
		evbuffer_add_printf(r->scratch, "data: %s\n\n", body);
		alloc_free(body);
	}
	evbuffer_add(r->scratch, "data: [DONE]\n\n", 14);
	evhttp_send_reply_chunk(req, r->scratch);
	evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
	evhttp_send_reply_end(req);
	count_response(r, q->route, status);
	count_e2e(q);
}

/* The client left: cancel both legs at once. detached: libevent is freeing
   the connection with our request on it (and frees the request too). */
static void rq_gone(rreq *q, const char *why, bool detached)
{
	router *r = q->r;
	if (!q->req)
		return;
	LOGI("router", "%s %s: %s; cancelling %s", ROUTE_NAMES[q->route], q->id, why,
	     q->p.u && q->d.u ? "both upstream requests" : q->p.u || q->d.u ? "the upstream request" : "it");
	leg_cancel(&q->p);
	leg_cancel(&q->d);
	if (q->retry_ev)
		event_del(q->retry_ev);
	struct evhttp_request *req = rq_take(q);
	if (detached)
		; /* nothing to send, nobody to send it to */
	else if (q->committed)
		evhttp_send_reply_end(req); /* frees req when the connection is already gone */
	else
		evhttp_send_reply(req, 499, reason(499), NULL);
	r->m.client_gone++;
	count_response(r, q->route, 499);
	rq_maybe_free(q);
}

static void rq_commit_stream(rreq *q, const char *ctype)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(q->req);
	evhttp_add_header(h, "Content-Type", ctype && *ctype ? ctype : "text/event-stream");
	evhttp_add_header(h, "Cache-Control", "no-cache");
	add_worker_headers(q, q->req);
	evhttp_send_reply_start(q->req, 200, "OK");
	q->committed = true;
}

static void rq_forward(rreq *q, const char *data, size_t len)
{
	router *r = q->r;
	if (!q->got_first) {
		q->got_first = true;
		histo_add(&r->m.ttft, TTFT_BUCKETS, N_TTFT, (double)(clock_now_ns() - q->t_start) * 1e-9);
	}
	/* forward whole SSE events (up to the last blank line); keep a partial
	   tail (almost never: workers write one event per write) */
	struct evbuffer *hold = q->sse_hold;
	if (hold && evbuffer_get_length(hold)) {
		evbuffer_add(hold, data, len);
		struct evbuffer_ptr end = evbuffer_search(hold, "\n\n", 2, NULL), last = end;
		if (end.pos < 0)
			return;
		while (end.pos >= 0) {
			last = end;
			evbuffer_ptr_set(hold, &end, 1, EVBUFFER_PTR_ADD);
			end = evbuffer_search(hold, "\n\n", 2, &end);
		}
		evbuffer_remove_buffer(hold, r->scratch, (size_t)last.pos + 2);
	} else {
		size_t cut = len;
		while (cut >= 2 && !(data[cut - 1] == '\n' && data[cut - 2] == '\n'))
			cut--;
		if (cut < 2)
			cut = 0;
		if (cut < len) {
			if (!hold && !(hold = q->sse_hold = evbuffer_new())) {
				cut = len; /* no memory to hold: forward as is */
			} else {
				evbuffer_add(hold, data + cut, len - cut);
			}
		}
		if (!cut)
			return;
		evbuffer_add(r->scratch, data, cut);
	}
	evhttp_send_reply_chunk(q->req, r->scratch);
	evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
}

static void rq_stream_end(rreq *q)
{
	router *r = q->r;
	if (!q->req)
		return;
	if (q->sse_hold && evbuffer_get_length(q->sse_hold)) {
		evbuffer_add_buffer(r->scratch, q->sse_hold);
		evhttp_send_reply_chunk(q->req, r->scratch);
		evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
	}
	struct evhttp_request *req = rq_take(q);
	evhttp_send_reply_end(req);
	count_response(r, q->route, 200);
	count_e2e(q);
}

/* Reply the failure kept in q (the worker's own answer, or ours). */
static void rq_reply_failure(rreq *q)
{
	if (q->fail_body && evbuffer_get_length(q->fail_body)) {
		size_t len = evbuffer_get_length(q->fail_body);
		const char *b = (const char *)evbuffer_pullup(q->fail_body, -1);
		LOGW("router", "%s %s: %d %s", ROUTE_NAMES[q->route], q->id, q->fail_status, q->fail_msg);
		rq_reply(q, q->fail_status, q->fail_ctype, b, len);
	} else {
		rq_reply_error(q, q->fail_status, "%s", q->fail_msg);
	}
}

static double backoff_s(router *r, int attempt)
{
	double ms = r->cfg.retry_backoff_ms * pow(r->cfg.retry_backoff_multiplier, attempt > 0 ? attempt - 1 : 0);
	if (r->cfg.retry_max_backoff_ms > 0 && ms > r->cfg.retry_max_backoff_ms)
		ms = r->cfg.retry_max_backoff_ms;
	if (r->cfg.retry_jitter > 0) { /* spreads the retries of requests that failed together */
		double u = (double)(rng_next(r) >> 11) * 0x1p-53;
		ms *= 1 + r->cfg.retry_jitter * (2 * u - 1);
	}
	return ms * 1e-3;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	rreq *q = arg;
	if (!q->req) {
		rq_maybe_free(q);
		return;
	}
	attempt_start(q);
}

/* The attempt failed before anything reached the client. l: the failing
   leg (its worker is blamed), status/msg: what happened, body: the worker's
   answer when it gave one. answered: status is the worker's own (503/429:
   it is busy, and a retry may go back to it after the backoff); a worker
   that could not be reached is not tried again for this request. */
static void attempt_fail(rreq *q, leg *l, int status, const char *msg, struct evbuffer *body, bool retryable,
			 bool answered)
{
	router *r = q->r;
	rworker *w = l->w;
	char url[300];
	snprintf(url, sizeof(url), "%s", w ? w->url.url : "?");
	const char *kind = l->prefill ? "prefill" : r->cfg.pd ? "decode" : "worker";
	/* cancel the other half of this attempt: closing its connection makes
	   that worker abort the request and free its pages */
	leg *other = l == &q->p ? &q->d : &q->p;
	leg_cancel(other);
	if (w && q->n_tried < MAX_TRIED && !was_tried(q, w->id))
		q->tried[q->n_tried++] = w->id;
	q->fail_status = status;
	q->fail_overload = answered && (status == 503 || status == 429);
	snprintf(q->fail_msg, sizeof(q->fail_msg), "%s %s: %s", kind, url, msg);
	if (q->fail_body)
		evbuffer_drain(q->fail_body, evbuffer_get_length(q->fail_body));
	if (body && evbuffer_get_length(body)) {
		if (!q->fail_body)
			q->fail_body = evbuffer_new();
		if (q->fail_body)
			evbuffer_add_buffer(q->fail_body, body);
		snprintf(q->fail_ctype, sizeof(q->fail_ctype), "%s", l->ctype[0] ? l->ctype : "application/json");
	}
	leg_end(l);
	if (!q->req) {
		rq_maybe_free(q);
		return;
	}
	if (retryable && q->attempt <= r->cfg.max_retries) {
		r->m.retries++;
		double s = backoff_s(r, q->attempt);
		LOGI("router", "%s %s: attempt %d failed (%s); retrying in %.0f ms with another pair", ROUTE_NAMES[q->route],
		     q->id, q->attempt, q->fail_msg, s * 1e3);
		if (!q->retry_ev)
			q->retry_ev = evtimer_new(r->base, on_retry, q);
		struct timeval tv = tv_of(s);
		if (q->retry_ev && evtimer_add(q->retry_ev, &tv) == 0)
			return;
	}
	r->m.upstream_errors++;
	rq_reply_failure(q);
	rq_maybe_free(q);
}

/* Non-streamed: reply the decode's body, with the prefill's prompt logprobs
   merged into a /generate answer when asked and missing. */
static void rq_reply_decode(rreq *q)
{
	router *r = q->r;
	leg *d = &q->d;
	size_t len = evbuffer_get_length(d->buf);
	const char *body = len ? (const char *)evbuffer_pullup(d->buf, -1) : "";
	if (q->merge_logprobs && q->p.ok && q->p.buf && evbuffer_get_length(q->p.buf)) {
		char err[ERR_LEN];
		size_t plen = evbuffer_get_length(q->p.buf);
		json_object *dj = parse_object(body, len, err);
		json_object *pj = parse_object((const char *)evbuffer_pullup(q->p.buf, -1), plen, err);
		json_object *dm, *pm, *dl, *pl;
		if (dj && pj && json_object_object_get_ex(dj, "meta_info", &dm) &&
		    json_object_object_get_ex(pj, "meta_info", &pm) &&
		    json_object_object_get_ex(pm, "input_token_logprobs", &pl) && json_object_is_type(pl, json_type_array) &&
		    json_object_array_length(pl) > 0 &&
		    (!json_object_object_get_ex(dm, "input_token_logprobs", &dl) || !json_object_is_type(dl, json_type_array) ||
		     json_object_array_length(dl) == 0)) {
			json_object_object_add(dm, "input_token_logprobs", json_object_get(pl));
			size_t n = 0;
			const char *t = json_object_to_json_string_length(
				dj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
			if (t) {
				rq_reply(q, d->status, d->ctype, t, n);
				json_object_put(dj);
				json_object_put(pj);
				return;
			}
		}
		json_object_put(dj);
		json_object_put(pj);
	}
	(void)r;
	rq_reply(q, d->status, d->ctype, body, len);
}

static bool is_sse(const char *ctype)
{
	return !strncasecmp(ctype, "text/event-stream", 17);
}

/* ---- leg callbacks */

static void leg_head(void *arg, int status, const char *ctype)
{
	leg *l = arg;
	l->status = status;
	snprintf(l->ctype, sizeof(l->ctype), "%s", ctype);
	rreq *q = l->q;
	/* a 200 prefill body is needed only to merge prompt logprobs */
	l->discard = l->prefill && status == 200 && !q->merge_logprobs;
}

static void leg_body(void *arg, const char *data, size_t len)
{
	leg *l = arg;
	rreq *q = l->q;
	if (l->discard)
		return;
	if (!l->prefill && l->status == 200 && is_sse(l->ctype) && q->req && !q->health) {
		if (!q->committed)
			rq_commit_stream(q, l->ctype);
		rq_forward(q, data, len);
		return;
	}
	if (!l->buf && !(l->buf = evbuffer_new()))
		return;
	if (evbuffer_get_length(l->buf) + len > MAX_BUFFERED_BODY)
		return; /* a runaway answer: keep the head of it */
	evbuffer_add(l->buf, data, len);
}

static void leg_done(void *arg)
{
	leg *l = arg;
	rreq *q = l->q;
	rworker *w = l->w;
	l->u = NULL;
	l->done = true;
	l->ok = l->status >= 200 && l->status < 300;
	if (l->ok)
		w->processed++;
	char msg[64];
	snprintf(msg, sizeof(msg), "answered HTTP %d", l->status);
	worker_outcome(w, l->status < 500, l->status >= 500 ? msg : NULL);
	if (l->prefill) {
		if (!l->ok && q->req && !q->committed && !q->waiting_merge) {
			/* the prefill failed before the decode answered: its error is the answer */
			attempt_fail(q, l, l->status, msg, l->buf, l->status == 503 || l->status == 429, true);
			return;
		}
		if (!l->ok)
			LOGW("router", "%s %s: prefill %s answered %d after the decode had answered; the decode's answer stands",
			     ROUTE_NAMES[q->route], q->id, w->url.url, l->status);
		leg_end(l);
		if (q->waiting_merge && q->req) {
			q->waiting_merge = false;
			rq_reply_decode(q);
		}
		rq_maybe_free(q);
		return;
	}
	/* the decode (or the regular worker) */
	if (q->committed) {
		leg_end(l);
		rq_stream_end(q);
		rq_maybe_free(q);
		return;
	}
	if (!l->ok) {
		attempt_fail(q, l, l->status, msg, l->buf, l->status == 503 || l->status == 429, true);
		return;
	}
	leg_end(l);
	if (!q->req) {
		rq_maybe_free(q);
		return;
	}
	if (is_sse(l->ctype) && !q->health) { /* a stream with no body at all */
		rq_commit_stream(q, l->ctype);
		rq_stream_end(q);
	} else if (q->merge_logprobs && q->p.u) {
		q->waiting_merge = true; /* rq_reply_decode when the prefill's body is in */
	} else {
		rq_reply_decode(q);
	}
	rq_maybe_free(q);
}

static void leg_error(void *arg, upstream_err kind, const char *message)
{
	leg *l = arg;
	rreq *q = l->q;
	router *r = q->r;
	rworker *w = l->w;
	l->u = NULL;
	l->done = true;
	worker_outcome(w, false, message);
	if (kind == UPSTREAM_ERR_CONNECT && !w->probe)
		w->next_probe = clock_now_ns(); /* find out soon whether it is gone */
	bool retryable = kind == UPSTREAM_ERR_CONNECT || kind == UPSTREAM_ERR_NO_RESPONSE;
	const char *what = l->prefill ? "prefill" : r->cfg.pd ? "decode" : "worker";
	if (l->prefill && (q->committed || !q->req || q->waiting_merge)) {
		LOGW("router", "%s %s: prefill %s: %s (after the decode had answered)", ROUTE_NAMES[q->route], q->id,
		     w->url.url, message);
		leg_end(l);
		if (q->waiting_merge && q->req) {
			q->waiting_merge = false;
			rq_reply_decode(q);
		}
		rq_maybe_free(q);
		return;
	}
	if (!l->prefill && q->committed) {
		char msg[400];
		snprintf(msg, sizeof(msg), "%s %s: %s", what, w->url.url, message);
		leg_end(l);
		r->m.upstream_errors++;
		rq_stream_fail(q, 502, msg);
		rq_maybe_free(q);
		return;
	}
	attempt_fail(q, l, kind == UPSTREAM_ERR_CONNECT ? 503 : 502, message, NULL, retryable, false);
}

static const upstream_cbs LEG_CBS = { leg_head, leg_body, leg_done, leg_error };

static bool leg_start(rreq *q, leg *l, rworker *w, const char *path, const char *body, size_t len)
{
	leg_reset(l);
	l->q = q;
	l->w = w;
	w->refs++;
	w->in_flight++;
	l->u = upstream_start(w->pool, "POST", path, q->auth, body, len, &LEG_CBS, l);
	if (!l->u) {
		leg_end(l);
		return false;
	}
	return true;
}

static void attempt_start(rreq *q)
{
	router *r = q->r;
	q->attempt++;
	char why[1024];
	const char *path = ROUTE_NAMES[q->route];
	if (q->health)
		path = "/generate";
	rworker *pw = NULL, *dw;
	if (r->cfg.pd && !(pw = pick(r, q, WORKER_PREFILL, why, sizeof(why)))) {
		r->m.no_worker++;
		rq_reply_error(q, 503, "%s", why);
		rq_maybe_free(q);
		return;
	}
	if (!(dw = pick(r, q, r->cfg.pd ? WORKER_DECODE : WORKER_REGULAR, why, sizeof(why)))) {
		r->m.no_worker++;
		rq_reply_error(q, 503, "%s", why);
		rq_maybe_free(q);
		return;
	}
	snprintf(q->d_url, sizeof(q->d_url), "%s", dw->url.url);
	snprintf(q->p_url, sizeof(q->p_url), "%s", pw ? pw->url.url : "");
	if (!r->cfg.pd) {
		LOGD("router", "%s %s: attempt %d -> %s", path, q->id, q->attempt, dw->url.url);
		if (!leg_start(q, &q->d, dw, path, q->base, q->base_len)) {
			rq_reply_error(q, 500, "out of memory");
			rq_maybe_free(q);
		}
		return;
	}
	q->room = rng_next(r) >> 1; /* 63 bits: SGLang's range */
	size_t len;
	char *body = router_pd_body(q->base, q->base_len, pw->url.host, pw->bootstrap_port, q->room, &len);
	if (!body) {
		rq_reply_error(q, 400, "the body must be a JSON object");
		rq_maybe_free(q);
		return;
	}
	LOGD("router", "%s %s: attempt %d -> prefill %s, decode %s, room %llu", path, q->id, q->attempt, pw->url.url,
	     dw->url.url, (unsigned long long)q->room);
	/* both at once: the decode reserves pages and asks the prefill for KV
	   while the prefill computes */
	bool ok = leg_start(q, &q->d, dw, path, body, len) && leg_start(q, &q->p, pw, path, body, len);
	alloc_free(body);
	if (!ok) {
		leg_cancel(&q->d);
		leg_cancel(&q->p);
		rq_reply_error(q, 500, "out of memory");
		rq_maybe_free(q);
	}
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	rreq *q = arg;
	router *r = q->r;
	r->m.timeouts++;
	leg_cancel(&q->p);
	leg_cancel(&q->d);
	if (q->retry_ev)
		event_del(q->retry_ev);
	char msg[160];
	snprintf(msg, sizeof(msg), "request timed out after %.0f s (--request-timeout-secs)", r->cfg.request_timeout_s);
	if (q->req && q->committed)
		rq_stream_fail(q, 504, msg);
	else if (q->req)
		rq_reply_error(q, 504, "%s", msg);
	rq_maybe_free(q);
}

static rreq *rq_new(router *r, struct evhttp_request *req, route_id route)
{
	rreq *q = alloc_zeroed(1, sizeof(*q));
	if (!q)
		return NULL;
	q->r = r;
	q->req = req;
	q->route = route;
	q->t_start = clock_now_ns();
	q->p.q = q->d.q = q;
	q->p.prefill = true;
	snprintf(q->id, sizeof(q->id), "r%llu", (unsigned long long)++r->next_req_id);
	q->next = r->reqs;
	if (r->reqs)
		r->reqs->prev = q;
	r->reqs = q;
	r->n_reqs++;
	if (r->auth_line[0]) {
		snprintf(q->auth, sizeof(q->auth), "%s", r->auth_line);
	} else if (req) {
		const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
		if (a && strlen(a) < sizeof(q->auth) - 20 && !strpbrk(a, "\r\n"))
			snprintf(q->auth, sizeof(q->auth), "Authorization: %s\r\n", a);
	}
	if (r->cfg.request_timeout_s > 0 && (q->deadline_ev = evtimer_new(r->base, on_deadline, q))) {
		struct timeval tv = tv_of(r->cfg.request_timeout_s);
		evtimer_add(q->deadline_ev, &tv);
	}
	return q;
}

static bool wants_text(router *r)
{
	return r->cfg.pd ? (r->cfg.prefill_policy.policy == BALANCE_CACHE_AWARE ||
			    r->cfg.decode_policy.policy == BALANCE_CACHE_AWARE) :
			   r->cfg.policy.policy == BALANCE_CACHE_AWARE;
}

/* ---------------------------------------------------------------- admission */

/* Generation requests under --max-concurrent-requests (off when <= 0):
 *
 *   handle_gen --a slot free (and a rate token), nobody waiting--> ADMITTED --rq_free--> slot back
 *        |                                                            ^
 *        +-- queue not full --> WAITING (FIFO) --on_admit: a slot-----+   (attempt_start)
 *        |                         |  +-- queue_timeout_s --> 408
 *        |                         +-- client left / --request-timeout-secs --> unlinked, freed
 *        +-- queue full (or --queue-size 0) --> 429
 *
 * A slot is held for the request's whole life (a streamed reply to its
 * end; a prefill leg still draining). Waiters are admitted by on_admit, an
 * event activated when a slot frees, never from inside rq_free: a waiter
 * that fails at once in attempt_start frees its slot without re-entering
 * the queue walk. With --rate-limit-tokens-per-second R, an admission also
 * takes a token from a bucket of max_concurrent tokens refilled at R per
 * second, and on_admit runs as a timer when the next token is due. */

static bool adm_enabled(const router *r)
{
	return r->cfg.max_concurrent > 0;
}

/* Take a slot (and a rate token) if there is one. */
static bool adm_take(router *r)
{
	if (r->adm_inflight >= r->cfg.max_concurrent)
		return false;
	if (r->cfg.rate_limit_per_s > 0) {
		int64_t now = clock_now_ns();
		r->adm_tokens += (double)(now - r->adm_refill_ns) * 1e-9 * r->cfg.rate_limit_per_s;
		if (r->adm_tokens > r->cfg.max_concurrent)
			r->adm_tokens = r->cfg.max_concurrent;
		r->adm_refill_ns = now;
		if (r->adm_tokens < 1)
			return false;
		r->adm_tokens -= 1;
	}
	r->adm_inflight++;
	return true;
}

static void wait_unlink(rreq *q)
{
	router *r = q->r;
	if (q->wprev)
		q->wprev->wnext = q->wnext;
	else
		r->wait_head = q->wnext;
	if (q->wnext)
		q->wnext->wprev = q->wprev;
	else
		r->wait_tail = q->wprev;
	q->wprev = q->wnext = NULL;
	q->queued = false;
	r->n_waiting--;
	if (q->queue_ev)
		event_del(q->queue_ev);
}

static void on_admit(evutil_socket_t fd, short what, void *arg)
{
	router *r = arg;
	while (r->wait_head && adm_take(r)) {
		rreq *q = r->wait_head;
		wait_unlink(q);
		q->admitted = true;
		LOGD("router", "%s %s: admitted after %.3f s in the queue", ROUTE_NAMES[q->route], q->id,
		     (double)(clock_now_ns() - q->t_start) * 1e-9);
		attempt_start(q);
	}
	/* a free slot but no token yet: come back when one is due */
	if (r->wait_head && r->adm_inflight < r->cfg.max_concurrent && r->cfg.rate_limit_per_s > 0) {
		struct timeval tv = tv_of((1 - r->adm_tokens) / r->cfg.rate_limit_per_s);
		evtimer_add(r->admit_ev, &tv);
	}
}

static void on_queue_timeout(evutil_socket_t fd, short what, void *arg)
{
	rreq *q = arg;
	router *r = q->r;
	wait_unlink(q);
	r->m.queue_timeouts++;
	rq_reply_error(q, 408, "no free slot within %g s (--queue-timeout-secs): %d requests in flight "
		       "(--max-concurrent-requests %d)", r->cfg.queue_timeout_s, r->adm_inflight, r->cfg.max_concurrent);
	rq_maybe_free(q);
}

/* true: q may start now (it holds a slot, or there is no limit); false: q
   waits in the queue, or was answered (429, out of memory). */
static bool adm_admit(rreq *q)
{
	router *r = q->r;
	if (!adm_enabled(r))
		return true;
	if (!r->wait_head && adm_take(r)) {
		q->admitted = true;
		return true;
	}
	if (r->n_waiting >= r->cfg.queue_size) {
		r->m.rejected_queue_full++;
		rq_reply_error(q, 429, "too many requests: %d in flight (--max-concurrent-requests %d) and %d waiting "
			       "(--queue-size %d)", r->adm_inflight, r->cfg.max_concurrent, r->n_waiting, r->cfg.queue_size);
		rq_maybe_free(q);
		return false;
	}
	if (!q->queue_ev && !(q->queue_ev = evtimer_new(r->base, on_queue_timeout, q))) {
		rq_reply_error(q, 500, "out of memory");
		rq_maybe_free(q);
		return false;
	}
	q->wprev = r->wait_tail;
	if (r->wait_tail)
		r->wait_tail->wnext = q;
	else
		r->wait_head = q;
	r->wait_tail = q;
	q->queued = true;
	r->n_waiting++;
	r->m.queued++;
	struct timeval tv = tv_of(r->cfg.queue_timeout_s);
	evtimer_add(q->queue_ev, &tv);
	LOGD("router", "%s %s: waiting for a slot (%d in flight, %d waiting)", ROUTE_NAMES[q->route], q->id,
	     r->adm_inflight, r->n_waiting);
	/* a slot may be free while the rate bucket is empty: see that on_admit runs */
	if (r->adm_inflight < r->cfg.max_concurrent && !evtimer_pending(r->admit_ev, NULL))
		event_active(r->admit_ev, EV_READ, 0);
	return false;
}

static void handle_gen(router *r, struct evhttp_request *req, route_id route, const char *body, size_t len)
{
	if (r->draining) {
		reply_error(r, req, route, 503, "the router is shutting down (SIGTERM)");
		r->m.rejected_draining++;
		return;
	}
	rreq *q = rq_new(r, req, route);
	if (!q) {
		reply_error(r, req, route, 500, "out of memory");
		return;
	}
	char err[ERR_LEN];
	if (router_parse_gen(body, len, wants_text(r), &q->base, &q->base_len, &q->text, &q->text_len, &q->stream, err)) {
		rq_reply_error(q, 400, "%s", err);
		rq_maybe_free(q);
		return;
	}
	if (route == R_GENERATE && !q->stream) {
		json_object *o = parse_object(q->base, q->base_len, err), *v;
		q->merge_logprobs = o && r->cfg.pd && json_object_object_get_ex(o, "return_logprob", &v) &&
				    json_object_get_boolean(v);
		json_object_put(o);
	}
	watch_client(r->base, req, &q->closed_ev, on_rq_conn_close, on_rq_closed, q);
	if (adm_admit(q))
		attempt_start(q);
}

static void handle_health_generate(router *r, struct evhttp_request *req)
{
	static const char BODY[] = "{\"text\":\"Hello\",\"sampling_params\":{\"max_new_tokens\":1,\"temperature\":0}}";
	rreq *q = rq_new(r, req, R_HEALTH_GEN);
	if (!q || !(q->base = alloc_strdup(BODY))) {
		if (q) {
			q->req = NULL;
			rq_free(q);
		}
		reply_error(r, req, R_HEALTH_GEN, 500, "out of memory");
		return;
	}
	q->base_len = sizeof(BODY) - 1;
	q->health = true;
	watch_client(r->base, req, &q->closed_ev, on_rq_conn_close, on_rq_closed, q);
	attempt_start(q);
}

/* ---------------------------------------------------------------- fan-outs */

static void fan_finish(fan *f);

static void fan_free(fan *f)
{
	router *r = f->r;
	if (f->prev)
		f->prev->next = f->next;
	else if (r->fans == f)
		r->fans = f->next;
	if (f->next)
		f->next->prev = f->prev;
	if (f->closed_ev)
		event_free(f->closed_ev);
	if (f->timer)
		event_free(f->timer);
	for (int i = 0; i < f->n; i++) {
		if (f->items[i].body)
			evbuffer_free(f->items[i].body);
		if (f->items[i].w)
			worker_unref(f->items[i].w);
	}
	alloc_free(f->items);
	alloc_free(f);
}

static void fan_item_end(fan_item *it)
{
	it->u = NULL;
	it->done = true;
	fan *f = it->f;
	if (--f->pending == 0)
		fan_finish(f);
}

static void fan_head(void *arg, int status, const char *ctype)
{
	((fan_item *)arg)->status = status;
}

static void fan_body(void *arg, const char *data, size_t len)
{
	fan_item *it = arg;
	if (it->body && evbuffer_get_length(it->body) + len <= MAX_INFO_BODY * 8)
		evbuffer_add(it->body, data, len);
}

static void fan_done(void *arg)
{
	fan_item_end(arg);
}

static void fan_error(void *arg, upstream_err kind, const char *message)
{
	fan_item *it = arg;
	snprintf(it->err, sizeof(it->err), "%s", message);
	fan_item_end(it);
}

static const upstream_cbs FAN_CBS = { fan_head, fan_body, fan_done, fan_error };

static void on_fan_timeout(evutil_socket_t fd, short what, void *arg)
{
	fan *f = arg;
	for (int i = 0; i < f->n; i++)
		if (f->items[i].u) {
			upstream_cancel(f->items[i].u);
			snprintf(f->items[i].err, sizeof(f->items[i].err), "no answer in %.1f s", f->r->cfg.health_timeout_s);
			f->items[i].u = NULL;
			f->items[i].done = true;
			f->pending--;
		}
	fan_finish(f);
}

static void fan_gone(fan *f)
{
	if (!f->req)
		return;
	unwatch_client(f->req, &f->closed_ev);
	f->req = NULL; /* libevent frees it with the connection */
}

static void on_fan_closed(evutil_socket_t fd, short what, void *arg)
{
	fan *f = arg;
	/* a non-streamed reply is still owed: answering a closed connection is
	   harmless, so only stop watching */
	if (f->closed_ev) {
		event_free(f->closed_ev);
		f->closed_ev = NULL;
	}
}

static void on_fan_conn_close(struct evhttp_connection *con, void *arg)
{
	fan_gone(arg);
}

/* Start a fan-out of method path to the given workers; the reply is built
   by fan_finish per kind. */
static void fan_start(router *r, struct evhttp_request *req, route_id route, fan_kind kind, const char *method,
		      const char *path, rworker **ws, int n)
{
	fan *f = alloc_zeroed(1, sizeof(*f));
	if (!f || (n && !(f->items = alloc_zeroed((size_t)n, sizeof(*f->items))))) {
		alloc_free(f);
		reply_error(r, req, route, 500, "out of memory");
		return;
	}
	f->r = r;
	f->req = req;
	f->kind = kind;
	f->route = route;
	f->path = path;
	f->n = n;
	f->next = r->fans;
	if (r->fans)
		r->fans->prev = f;
	r->fans = f;
	f->pending = n + 1; /* +1 while starting, so fan_finish cannot run early */
	for (int i = 0; i < n; i++) {
		fan_item *it = &f->items[i];
		it->f = f;
		it->w = ws[i];
		ws[i]->refs++;
		it->body = evbuffer_new();
		it->u = upstream_start(ws[i]->pool, method, path, r->auth_line, NULL, 0, &FAN_CBS, it);
		if (!it->u) {
			snprintf(it->err, sizeof(it->err), "out of memory");
			it->done = true;
			f->pending--;
		}
	}
	watch_client(r->base, req, &f->closed_ev, on_fan_conn_close, on_fan_closed, f);
	struct timeval tv = tv_of(r->cfg.health_timeout_s > 0 ? r->cfg.health_timeout_s : 5);
	if ((f->timer = evtimer_new(r->base, on_fan_timeout, f)))
		evtimer_add(f->timer, &tv);
	if (--f->pending == 0)
		fan_finish(f);
}

static json_object *worker_json(router *r, rworker *w, int64_t now)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "url", json_object_new_string(w->url.url));
	json_object_object_add(o, "worker_type", json_object_new_string(worker_type_name(w->type)));
	if (w->type == WORKER_PREFILL)
		json_object_object_add(o, "bootstrap_port", w->bootstrap_port > 0 ? json_object_new_int(w->bootstrap_port) :
							     NULL);
	json_object_object_add(o, "health", json_object_new_string(worker_health_name(w->st.health)));
	json_object_object_add(o, "is_healthy", json_object_new_boolean(w->st.health == WORKER_HEALTHY));
	json_object_object_add(o, "circuit_breaker", json_object_new_string(worker_cb_name(w->st.cb)));
	json_object_object_add(o, "routable", json_object_new_boolean(worker_routable(w, now)));
	json_object_object_add(o, "load", json_object_new_int(worker_load(w)));
	json_object_object_add(o, "in_flight", json_object_new_int(w->in_flight));
	json_object_object_add(o, "engine_load", json_object_new_int(w->polled_load));
	json_object_object_add(o, "processed", json_object_new_int64((int64_t)w->processed));
	json_object_object_add(o, "errors", json_object_new_int64((int64_t)w->errors));
	json_object_object_add(o, "connections", json_object_new_int(w->pool ? upstream_pool_open(w->pool) : 0));
	json_object_object_add(o, "last_error", w->last_error[0] ? json_object_new_string(w->last_error) : NULL);
	return o;
}

static json_object *policy_json(const balance_config *c)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "policy", json_object_new_string(balance_policy_name(c->policy)));
	if (c->policy == BALANCE_CACHE_AWARE) {
		json_object_object_add(o, "cache_threshold", json_object_new_double(c->cache_threshold));
		json_object_object_add(o, "balance_abs_threshold", json_object_new_int(c->balance_abs_threshold));
		json_object_object_add(o, "balance_rel_threshold", json_object_new_double(c->balance_rel_threshold));
		json_object_object_add(o, "max_tree_size", json_object_new_int64((int64_t)c->max_tree_size));
	}
	return o;
}

static json_object *router_json(router *r)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_string(ROUTER_VERSION));
	json_object_object_add(o, "mode", json_object_new_string(r->cfg.pd ? "pd" : "regular"));
	json_object_object_add(o, "host", json_object_new_string(r->host));
	json_object_object_add(o, "port", json_object_new_int(r->port));
	if (r->cfg.pd) {
		json_object_object_add(o, "prefill_policy", policy_json(&r->cfg.prefill_policy));
		json_object_object_add(o, "decode_policy", policy_json(&r->cfg.decode_policy));
	} else {
		json_object_object_add(o, "policy", policy_json(&r->cfg.policy));
	}
	json_object_object_add(o, "health_check_interval_secs", json_object_new_double(r->cfg.health_interval_s));
	json_object_object_add(o, "health_check_timeout_secs", json_object_new_double(r->cfg.health_timeout_s));
	json_object_object_add(o, "health_failure_threshold", json_object_new_int(r->cfg.wpolicy.failure_threshold));
	json_object_object_add(o, "health_success_threshold", json_object_new_int(r->cfg.wpolicy.success_threshold));
	json_object_object_add(o, "max_retries", json_object_new_int(r->cfg.max_retries));
	json_object_object_add(o, "retry_backoff_ms", json_object_new_int(r->cfg.retry_backoff_ms));
	json_object_object_add(o, "circuit_breaker", json_object_new_boolean(!r->cfg.wpolicy.cb_disabled));
	json_object_object_add(o, "cb_failure_threshold", json_object_new_int(r->cfg.wpolicy.cb_failure_threshold));
	json_object_object_add(o, "cb_success_threshold", json_object_new_int(r->cfg.wpolicy.cb_success_threshold));
	json_object_object_add(o, "cb_timeout_duration_secs", json_object_new_double(r->cfg.wpolicy.cb_timeout_s));
	json_object_object_add(o, "request_timeout_secs", json_object_new_double(r->cfg.request_timeout_s));
	json_object_object_add(o, "max_payload_size", json_object_new_int64((int64_t)r->cfg.max_payload));
	json_object_object_add(o, "max_header_size", json_object_new_int64((int64_t)r->cfg.max_header_size));
	json_object_object_add(o, "api_key_set", json_object_new_boolean(r->cfg.api_key && *r->cfg.api_key));
	json_object_object_add(o, "worker_api_key_set",
			       json_object_new_boolean(r->cfg.worker_api_key && *r->cfg.worker_api_key));
	json_object_object_add(o, "requests_in_flight", json_object_new_int(r->n_reqs));
	json_object_object_add(o, "uptime_secs", json_object_new_double((double)(clock_now_ns() - r->started_ns) * 1e-9));
	return o;
}

static void fan_finish(fan *f)
{
	router *r = f->r;
	if (f->timer)
		event_del(f->timer);
	struct evhttp_request *req = f->req;
	if (req)
		unwatch_client(req, &f->closed_ev);
	f->req = NULL;
	if (!req) {
		fan_free(f);
		return;
	}
	if (f->kind == FAN_FORWARD) {
		fan_item *it = &f->items[0];
		if (it->status) {
			size_t len = evbuffer_get_length(it->body);
			reply_raw(r, req, f->route, it->status, "application/json", evbuffer_pullup(it->body, -1), len);
		} else {
			reply_error(r, req, f->route, 502, "%s %s: %s", worker_type_name(it->w->type), it->w->url.url,
				    it->err[0] ? it->err : "no answer");
		}
	} else if (f->kind == FAN_FLUSH) {
		char failed[1024];
		size_t off = 0;
		int bad = 0;
		failed[0] = '\0';
		for (int i = 0; i < f->n; i++) {
			fan_item *it = &f->items[i];
			if (it->status == 200)
				continue;
			int k = snprintf(failed + off, sizeof(failed) - off, "%s%s (%s)", bad ? ", " : "", it->w->url.url,
					 it->err[0] ? it->err : it->status ? reason(it->status) : "no answer");
			off += k > 0 && (size_t)k < sizeof(failed) - off ? (size_t)k : 0;
			bad++;
		}
		balance_clear(r->bal_regular);
		balance_clear(r->bal_prefill);
		balance_clear(r->bal_decode);
		if (bad)
			reply_error(r, req, f->route, 500, "flush_cache failed on %d of %d workers: %s", bad, f->n, failed);
		else {
			LOGI("router", "/flush_cache: %d workers flushed", f->n);
			reply_raw(r, req, f->route, 200, "text/plain", "Cache flushed.\n", 15);
		}
	} else {
		json_object *o = json_object_new_object();
		json_object *ws = json_object_new_array(), *pre = json_object_new_array(), *dec = json_object_new_array(),
			    *reg = json_object_new_array();
		int64_t now = clock_now_ns();
		for (int i = 0; i < f->n; i++) {
			fan_item *it = &f->items[i];
			json_object *wj = worker_json(r, it->w, now), *info = NULL;
			char err[ERR_LEN];
			size_t len = evbuffer_get_length(it->body);
			if (it->status == 200 && len)
				info = parse_object((const char *)evbuffer_pullup(it->body, -1), len, err);
			json_object_object_add(wj, "server_info", info ? json_object_get(info) : NULL);
			json_object_array_add(ws, wj);
			if (info)
				json_object_array_add(it->w->type == WORKER_PREFILL ? pre :
						      it->w->type == WORKER_DECODE ? dec : reg, info);
		}
		json_object_object_add(o, "router", router_json(r));
		json_object_object_add(o, "workers", ws);
		if (r->cfg.pd) {
			json_object_object_add(o, "prefill", pre);
			json_object_object_add(o, "decode", dec);
			json_object_put(reg);
		} else {
			json_object_object_add(o, "regular", reg);
			json_object_put(pre);
			json_object_put(dec);
		}
		reply_jobj(r, req, f->route, o);
	}
	fan_free(f);
}

/* Forward a GET to one routable worker (decode first in PD mode). */
static void handle_forward(router *r, struct evhttp_request *req, route_id route, const char *path)
{
	int64_t now = clock_now_ns();
	rworker *best = NULL;
	for (int i = 0; i < r->n_workers; i++) {
		rworker *w = r->workers[i];
		if (!worker_routable(w, now))
			continue;
		if (!best || (best->type == WORKER_PREFILL && w->type != WORKER_PREFILL))
			best = w;
	}
	if (!best) {
		reply_error(r, req, route, 503, "no healthy worker available to answer %s", path);
		return;
	}
	fan_start(r, req, route, FAN_FORWARD, "GET", path, &best, 1);
}

static void handle_fan_all(router *r, struct evhttp_request *req, route_id route, fan_kind kind, const char *method,
			   const char *path)
{
	rworker **ws = r->n_workers ? alloc_array((size_t)r->n_workers, sizeof(*ws)) : NULL;
	int n = 0;
	int64_t now = clock_now_ns();
	for (int i = 0; i < r->n_workers; i++)
		if (kind == FAN_INFO || worker_routable(r->workers[i], now))
			ws[n++] = r->workers[i];
	if (r->n_workers && !ws) {
		reply_error(r, req, route, 500, "out of memory");
		return;
	}
	fan_start(r, req, route, kind, method, path, ws, n);
	alloc_free(ws);
}

/* ---------------------------------------------------------------- admin routes */

/* Why the router cannot serve, or NULL when it can. */
static const char *not_ready(router *r, char *buf, size_t n)
{
	int64_t now = clock_now_ns();
	worker_type need[2] = { WORKER_PREFILL, WORKER_DECODE };
	int k = r->cfg.pd ? 2 : 1;
	if (!r->cfg.pd)
		need[0] = WORKER_REGULAR;
	for (int t = 0; t < k; t++) {
		bool any = false;
		for (int i = 0; i < r->n_workers && !any; i++)
			any = r->workers[i]->type == need[t] && worker_routable(r->workers[i], now);
		if (!any) {
			snprintf(buf, n, "no healthy %s worker", worker_type_name(need[t]));
			return buf;
		}
	}
	return NULL;
}

static void handle_workers(router *r, struct evhttp_request *req, enum evhttp_cmd_type m, const char *body, size_t len)
{
	char err[ERR_LEN];
	int64_t now = clock_now_ns();
	if (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD) {
		json_object *o = json_object_new_object(), *a = json_object_new_array();
		for (int i = 0; i < r->n_workers; i++)
			json_object_array_add(a, worker_json(r, r->workers[i], now));
		json_object_object_add(o, "workers", a);
		json_object_object_add(o, "total", json_object_new_int(r->n_workers));
		json_object_object_add(o, "mode", json_object_new_string(r->cfg.pd ? "pd" : "regular"));
		reply_jobj(r, req, R_WORKERS, o);
		return;
	}
	if (m == EVHTTP_REQ_DELETE) {
		const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
		struct evkeyvalq params = { 0 };
		const char *url = NULL;
		if (query && evhttp_parse_query_str(query, &params) == 0)
			url = evhttp_find_header(&params, "url");
		worker_url u;
		if (!url || worker_url_parse(url, &u, err)) {
			evhttp_clear_headers(&params);
			reply_error(r, req, R_WORKERS, 400, "%s", url ? err : "DELETE /workers?url=URL: url is required");
			return;
		}
		evhttp_clear_headers(&params);
		rworker *w = worker_find(r, u.url);
		if (!w) {
			reply_error(r, req, R_WORKERS, 404, "%s is not registered", u.url);
			return;
		}
		worker_remove(r, w);
		json_object *o = json_object_new_object();
		json_object_object_add(o, "status", json_object_new_string("removed"));
		json_object_object_add(o, "url", json_object_new_string(u.url));
		reply_jobj(r, req, R_WORKERS, o);
		return;
	}
	/* POST {"url", "worker_type", "bootstrap_port"} */
	json_object *o = parse_object(body, len, err), *v;
	if (!o) {
		reply_error(r, req, R_WORKERS, 400, "%s", err);
		return;
	}
	const char *url = json_object_object_get_ex(o, "url", &v) && json_object_is_type(v, json_type_string) ?
				  json_object_get_string(v) : NULL;
	int type = r->cfg.pd ? -1 : WORKER_REGULAR;
	if (json_object_object_get_ex(o, "worker_type", &v))
		type = json_object_is_type(v, json_type_string) ? worker_type_parse(json_object_get_string(v)) : -2;
	int bport = ROUTER_BOOTSTRAP_DISCOVER;
	bool bad_port = false;
	if (json_object_object_get_ex(o, "bootstrap_port", &v)) {
		if (!v)
			bport = ROUTER_BOOTSTRAP_NONE;
		else if (json_object_is_type(v, json_type_int) && json_object_get_int(v) >= 1 && json_object_get_int(v) <= 65535)
			bport = json_object_get_int(v);
		else
			bad_port = true;
	}
	int rc = ERR_INVAL;
	if (!url)
		err_set(err, ERR_INVAL, "url: required (a string, http://host:port)");
	else if (type < 0)
		err_set(err, ERR_INVAL, "worker_type: %s", type == -1 ? "required in PD mode (\"prefill\" or \"decode\")" :
				      "one of \"prefill\", \"decode\", \"regular\"");
	else if (bad_port)
		err_set(err, ERR_INVAL, "bootstrap_port: a port number 1..65535, or null for none");
	else
		rc = router_add_worker(r, (worker_type)type, url, bport, err);
	if (rc) {
		json_object_put(o);
		reply_error(r, req, R_WORKERS, strstr(err, "already registered") ? 409 : 400, "%s", err);
		return;
	}
	json_object *out = json_object_new_object();
	json_object_object_add(out, "status", json_object_new_string("added"));
	json_object_object_add(out, "worker", worker_json(r, r->workers[r->n_workers - 1], now));
	json_object_put(o);
	reply_jobj(r, req, R_WORKERS, out);
}

static void metric_line(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_histo(struct evbuffer *b, const char *name, const histo *h, const double *bounds, size_t n)
{
	uint64_t cum = 0;
	for (size_t i = 0; i < n; i++) {
		cum += h->bucket[i];
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
	}
	evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
			    (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}

static void handle_metrics(router *r, struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		reply_error(r, req, R_METRICS, 500, "out of memory");
		return;
	}
	r->m.requests[R_METRICS]++;
	count_response(r, R_METRICS, 200); /* counted first, so a scrape sees itself */
	metric_line(b, "sgl_router_requests_total", "counter", "Requests received, by route.");
	for (int i = 0; i < R_COUNT; i++)
		if (r->m.requests[i])
			evbuffer_add_printf(b, "sgl_router_requests_total{route=\"%s\"} %llu\n", ROUTE_NAMES[i],
					    (unsigned long long)r->m.requests[i]);
	metric_line(b, "pdserve:router_responses_total", "counter", "Responses sent, by route and status code.");
	for (int i = 0; i < R_COUNT; i++)
		for (int k = 0; k < N_CODES + 3; k++) {
			if (!r->m.responses[i][k])
				continue;
			int code = k < N_CODES - 1 ? CODES[k] : k == N_CODES ? 502 : k == N_CODES + 1 ? 503 :
				   k == N_CODES + 2 ? 504 : 0;
			char cs[16];
			snprintf(cs, sizeof(cs), code ? "%d" : "other", code);
			evbuffer_add_printf(b, "pdserve:router_responses_total{route=\"%s\",code=\"%s\"} %llu\n", ROUTE_NAMES[i],
					    cs, (unsigned long long)r->m.responses[i][k]);
		}
	metric_line(b, "sgl_router_retries_total", "counter", "Attempts made again with another worker pair.");
	evbuffer_add_printf(b, "sgl_router_retries_total %llu\n", (unsigned long long)r->m.retries);
	metric_line(b, "pdserve:router_upstream_errors_total", "counter", "Requests answered with a worker failure.");
	evbuffer_add_printf(b, "pdserve:router_upstream_errors_total %llu\n", (unsigned long long)r->m.upstream_errors);
	metric_line(b, "pdserve:router_no_worker_total", "counter", "Requests answered 503: no healthy worker of a kind.");
	evbuffer_add_printf(b, "pdserve:router_no_worker_total %llu\n", (unsigned long long)r->m.no_worker);
	metric_line(b, "pdserve:router_client_disconnects_total", "counter",
		    "Requests whose client left first (both upstream requests cancelled).");
	evbuffer_add_printf(b, "pdserve:router_client_disconnects_total %llu\n", (unsigned long long)r->m.client_gone);
	metric_line(b, "pdserve:router_requests_rejected_total", "counter",
		    "Requests refused for exceeding a configured limit, by limit.");
	const struct {
		const char *reason;
		uint64_t n;
	} REJ[] = {
		{ "body_size", r->m.rejected_body },       { "header_size", r->m.rejected_header },
		{ "read_limit", r->m.rejected_read },      { "malformed_http", r->m.rejected_malformed },
		{ "queue_full", r->m.rejected_queue_full }, { "queue_timeout", r->m.queue_timeouts },
		{ "shutting_down", r->m.rejected_draining },
	};
	for (size_t k = 0; k < sizeof(REJ) / sizeof(REJ[0]); k++)
		evbuffer_add_printf(b, "pdserve:router_requests_rejected_total{reason=\"%s\"} %llu\n", REJ[k].reason,
				    (unsigned long long)REJ[k].n);
	metric_line(b, "pdserve:router_admission_in_flight", "gauge",
		    "Generation requests holding a --max-concurrent-requests slot.");
	evbuffer_add_printf(b, "pdserve:router_admission_in_flight %d\n", r->adm_inflight);
	metric_line(b, "pdserve:router_admission_queue_depth", "gauge", "Generation requests waiting for a slot.");
	evbuffer_add_printf(b, "pdserve:router_admission_queue_depth %d\n", r->n_waiting);
	metric_line(b, "pdserve:router_admission_queued_total", "counter", "Generation requests that waited for a slot.");
	evbuffer_add_printf(b, "pdserve:router_admission_queued_total %llu\n", (unsigned long long)r->m.queued);
	metric_line(b, "pdserve:router_timeouts_total", "counter", "Requests past --request-timeout-secs.");
	evbuffer_add_printf(b, "pdserve:router_timeouts_total %llu\n", (unsigned long long)r->m.timeouts);
	metric_line(b, "sgl_router_cache_hits_total", "counter", "cache_aware picks above the cache threshold.");
	evbuffer_add_printf(b, "sgl_router_cache_hits_total %llu\n", (unsigned long long)r->m.cache_hits);
	metric_line(b, "sgl_router_cache_misses_total", "counter", "cache_aware picks at or below the cache threshold.");
	evbuffer_add_printf(b, "sgl_router_cache_misses_total %llu\n", (unsigned long long)r->m.cache_misses);
	metric_line(b, "sgl_router_load_balancing_events_total", "counter", "cache_aware picks by shortest queue (imbalance).");
	evbuffer_add_printf(b, "sgl_router_load_balancing_events_total %llu\n", (unsigned long long)r->m.lb_events);
	metric_line(b, "pdserve:router_requests_in_flight", "gauge", "Client requests being served.");
	evbuffer_add_printf(b, "pdserve:router_requests_in_flight %d\n", r->n_reqs);
	int64_t now = clock_now_ns();
	int healthy = 0;
	for (int i = 0; i < r->n_workers; i++)
		healthy += worker_routable(r->workers[i], now);
	metric_line(b, "sgl_router_active_workers", "gauge", "Workers taking requests.");
	evbuffer_add_printf(b, "sgl_router_active_workers %d\n", healthy);
	static const struct {
		const char *name, *type, *help;
		int what;
	} PW[] = {
		{ "sgl_router_worker_health", "gauge", "1 when the worker passes its health checks.", 0 },
		{ "sgl_router_worker_load", "gauge", "Requests in flight from this router to the worker.", 1 },
		{ "pdserve:router_worker_engine_load", "gauge", "Running + waiting requests the worker reported.", 2 },
		{ "sgl_router_processed_requests_total", "counter", "Requests the worker answered with 2xx.", 3 },
		{ "pdserve:router_worker_errors_total", "counter", "Failed requests to the worker.", 4 },
		{ "sgl_router_cb_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half open.", 5 },
	};
	for (size_t k = 0; k < sizeof(PW) / sizeof(PW[0]); k++) {
		metric_line(b, PW[k].name, PW[k].type, PW[k].help);
		for (int i = 0; i < r->n_workers; i++) {
			rworker *w = r->workers[i];
			long long v = PW[k].what == 0 ? w->st.health == WORKER_HEALTHY :
				      PW[k].what == 1 ? w->in_flight :
				      PW[k].what == 2 ? w->polled_load :
				      PW[k].what == 3 ? (long long)w->processed :
				      PW[k].what == 4 ? (long long)w->errors : (long long)w->st.cb;
			evbuffer_add_printf(b, "%s{worker=\"%s\",type=\"%s\"} %lld\n", PW[k].name, w->url.url,
					    worker_type_name(w->type), v);
		}
	}
	metric_line(b, "pdserve:router_time_to_first_token_seconds", "histogram",
		    "From the client's request to the first streamed byte sent back, as the router sees it.");
	render_histo(b, "pdserve:router_time_to_first_token_seconds", &r->m.ttft, TTFT_BUCKETS, N_TTFT);
	metric_line(b, "pdserve:router_e2e_request_latency_seconds", "histogram", "Generation requests, end to end.");
	render_histo(b, "pdserve:router_e2e_request_latency_seconds", &r->m.e2e, E2E_BUCKETS, N_E2E);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

/* ---------------------------------------------------------------- routing */

static const struct {
	const char *path;
	route_id id;
	int methods; /* 1 GET/HEAD, 2 POST, 4 DELETE */
	bool open;   /* no API key needed */
} ROUTES[] = {
	{ "/v1/chat/completions", R_CHAT, 2, false },
	{ "/v1/completions", R_COMPLETIONS, 2, false },
	{ "/generate", R_GENERATE, 2, false },
	{ "/v1/models", R_MODELS, 1, false },
	{ "/get_model_info", R_MODEL_INFO, 1, false },
	{ "/health", R_HEALTH, 1, true },
	{ "/health_generate", R_HEALTH_GEN, 1, true },
	{ "/get_server_info", R_SERVER_INFO, 1, false },
	{ "/flush_cache", R_FLUSH, 3, false },
	{ "/metrics", R_METRICS, 1, true },
	{ "/workers", R_WORKERS, 7, false },
};

static bool authorized(router *r, struct evhttp_request *req)
{
	const char *key = r->cfg.api_key;
	if (!key || !*key)
		return true;
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!h || strncasecmp(h, "Bearer ", 7))
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	size_t a = strlen(h), b = strlen(key);
	unsigned diff = a != b;
	for (size_t i = 0; i < a && i < b; i++)
		diff |= (unsigned)(h[i] ^ key[i]);
	return diff == 0;
}

/* 431 / 413 (JSON, counted) for a request over --max-header-size /
   --max-payload-size; libevent holds twice those and cuts off what is
   beyond (its own HTML 413 / 400). The connection closes after the answer. */
static bool refuse_size(router *r, struct evhttp_request *req, route_id id)
{
	const char *uri = evhttp_request_get_uri(req);
	size_t hdr = (uri ? strlen(uri) : 0) + 16;
	for (struct evkeyval *kv = evhttp_request_get_input_headers(req)->tqh_first; kv; kv = kv->next.tqe_next)
		hdr += strlen(kv->key) + strlen(kv->value) + 4;
	size_t len = evbuffer_get_length(evhttp_request_get_input_buffer(req));
	if (hdr <= r->cfg.max_header_size && len <= r->cfg.max_payload)
		return false;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
	if (hdr > r->cfg.max_header_size) {
		r->m.rejected_header++;
		reply_error(r, req, id, 431, "request headers of %zu bytes: more than --max-header-size %zu", hdr,
			    r->cfg.max_header_size);
	} else {
		r->m.rejected_body++;
		reply_error(r, req, id, 413, "request body of %zu bytes: more than --max-payload-size %zu", len,
			    r->cfg.max_payload);
	}
	return true;
}

/* libevent refused a request while reading it and answered itself */
static void on_cutoff(void *arg, int status)
{
	router *r = arg;
	if (status == 413) {
		r->m.rejected_read++;
		LOGW("router", "413: a request body over twice --max-payload-size %zu, cut off while read",
		     r->cfg.max_payload);
	} else {
		r->m.rejected_malformed++;
		LOGW("router", "400: malformed HTTP, or headers over twice --max-header-size %zu (refused by libevent)",
		     r->cfg.max_header_size);
	}
}

static void on_request(struct evhttp_request *req, void *arg)
{
	router *r = arg;
	struct evhttp_connection *con = evhttp_request_get_connection(req);
	struct bufferevent *bev = con ? evhttp_connection_get_bufferevent(con) : NULL;
	if (bev) { /* streamed chunks are small: no Nagle delay */
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!path || !*path)
		path = "/";
	int ri = -1;
	for (int i = 0; i < (int)(sizeof(ROUTES) / sizeof(ROUTES[0])); i++)
		if (!strcmp(path, ROUTES[i].path))
			ri = i;
	if (ri < 0) {
		r->m.requests[R_OTHER]++;
		reply_error(r, req, R_OTHER, 404, "no route %.100s", path);
		return;
	}
	route_id id = ROUTES[ri].id;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	int mask = m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD ? 1 : m == EVHTTP_REQ_POST ? 2 :
		   m == EVHTTP_REQ_DELETE ? 4 : 0;
	if (id == R_METRICS) {
		if (mask == 1)
			handle_metrics(r, req);
		else
			reply_error(r, req, id, 405, "%s: use GET", path);
		return;
	}
	r->m.requests[id]++;
	if (!(ROUTES[ri].methods & mask)) {
		const char *allow = ROUTES[ri].methods == 1 ? "GET, HEAD" : ROUTES[ri].methods == 2 ? "POST" :
				    ROUTES[ri].methods == 3 ? "GET, POST" : "GET, POST, DELETE";
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
		reply_error(r, req, id, 405, "%s: use %s", path, allow);
		return;
	}
	if (refuse_size(r, req, id))
		return;
	if (!ROUTES[ri].open && !authorized(r, req)) {
		reply_error(r, req, id, 401, "missing or wrong API key: send Authorization: Bearer <key>");
		return;
	}
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
	if (len && !body) {
		reply_error(r, req, id, 500, "out of memory reading the body");
		return;
	}
	char why[128];
	switch (id) {
	case R_CHAT:
	case R_COMPLETIONS:
	case R_GENERATE: handle_gen(r, req, id, body, len); break;
	case R_MODELS: handle_forward(r, req, id, "/v1/models"); break;
	case R_MODEL_INFO: handle_forward(r, req, id, "/get_model_info"); break;
	case R_HEALTH:
		if (not_ready(r, why, sizeof(why)))
			reply_error(r, req, id, 503, "%s", why);
		else
			reply_raw(r, req, id, 200, "text/plain", "", 0);
		break;
	case R_HEALTH_GEN: handle_health_generate(r, req); break;
	case R_SERVER_INFO: handle_fan_all(r, req, id, FAN_INFO, "GET", "/get_server_info"); break;
	case R_FLUSH: handle_fan_all(r, req, id, FAN_FLUSH, "POST", "/flush_cache"); break;
	case R_WORKERS: handle_workers(r, req, m, body, len); break;
	default: reply_error(r, req, id, 404, "no route %.100s", path); break;
	}
}

/* The Prometheus listener serves /metrics only. */
static void on_prom_request(struct evhttp_request *req, void *arg)
{
	router *r = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (path && !strcmp(path, "/metrics"))
		handle_metrics(r, req);
	else
		reply_error(r, req, R_OTHER, 404, "this port serves /metrics only");
}

/* ---------------------------------------------------------------- life cycle */

router_config router_config_default(void)
{
	return (router_config){
		.host = "127.0.0.1",
		.port = 30000,
		.policy = balance_config_default(BALANCE_CACHE_AWARE),
		.prefill_policy = balance_config_default(BALANCE_CACHE_AWARE),
		.decode_policy = balance_config_default(BALANCE_CACHE_AWARE),
		.health_interval_s = 60,
		.health_timeout_s = 5,
		.health_endpoint = "/health",
		.wpolicy = { .failure_threshold = 3,
			     .success_threshold = 2,
			     .cb_failure_threshold = 10,
			     .cb_success_threshold = 3,
			     .cb_timeout_s = 60,
			     .cb_window_s = 120 },
		.max_retries = 5,
		.retry_backoff_ms = 50,
		.retry_max_backoff_ms = 30000,
		.retry_backoff_multiplier = 1.5,
		.retry_jitter = 0.2,
		.max_concurrent = -1,
		.queue_size = 100,
		.queue_timeout_s = 60,
		.shutdown_grace_s = 180,
		.request_timeout_s = 1800,
		.max_payload = (size_t)512 << 20,
		.eviction_interval_s = 120,
		.max_idle_per_worker = 64,
	};
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
	router *r = arg;
	LOGW("router", "--shutdown-grace-period-secs %g passed: shutting down with %d requests in flight",
	     r->cfg.shutdown_grace_s, r->n_reqs);
	event_base_loopexit(r->base, NULL);
}

/* A first signal with requests in flight drains (see router_run); a second
   signal, router_stop, or a signal with nothing in flight ends the loop. */
static void on_stop(evutil_socket_t fd, short what, void *arg)
{
	router *r = arg;
	bool sig = what & EV_SIGNAL;
	if (sig && !r->draining && r->n_reqs > 0 && r->cfg.shutdown_grace_s > 0 &&
	    (r->grace_ev = evtimer_new(r->base, on_grace, r))) {
		r->draining = true;
		if (r->sock) {
			evhttp_del_accept_socket(r->http, r->sock); /* no new connections */
			r->sock = NULL;
		}
		struct timeval tv = tv_of(r->cfg.shutdown_grace_s);
		evtimer_add(r->grace_ev, &tv);
		LOGI("router", "signal %d: draining %d requests in flight for up to %g s (--shutdown-grace-period-secs; "
		     "a second signal stops at once)", (int)fd, r->n_reqs, r->cfg.shutdown_grace_s);
		return;
	}
	if (sig)
		LOGI("router", "signal %d: shutting down", (int)fd);
	event_base_loopexit(r->base, NULL);
}

static int bound_port(struct evhttp_bound_socket *s)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&ss, &sl) < 0)
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

router *router_create(const router_config *cfg, char err[ERR_LEN])
{
	if (evinit(err) < 0)
		return NULL;
	router *r = alloc_zeroed(1, sizeof(*r));
	if (!r) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	r->cfg = *cfg;
	snprintf(r->host, sizeof(r->host), "%s", cfg->host ? cfg->host : "127.0.0.1");
	r->cfg.host = r->host;
	if (!r->cfg.health_endpoint || !*r->cfg.health_endpoint)
		r->cfg.health_endpoint = "/health";
	if (r->cfg.health_timeout_s <= 0)
		r->cfg.health_timeout_s = 5;
	if (r->cfg.health_interval_s <= 0)
		r->cfg.health_interval_s = 60;
	if (!r->cfg.max_payload)
		r->cfg.max_payload = (size_t)512 << 20;
	if (!r->cfg.max_header_size)
		r->cfg.max_header_size = (size_t)64 << 10;
	if (r->cfg.max_idle_per_worker <= 0)
		r->cfg.max_idle_per_worker = 64;
	if (r->cfg.max_retries < 0)
		r->cfg.max_retries = 0;
	if (r->cfg.retry_backoff_multiplier <= 0)
		r->cfg.retry_backoff_multiplier = 1.5;
	if (r->cfg.queue_size < 0)
		r->cfg.queue_size = 0;
	r->adm_tokens = r->cfg.max_concurrent > 0 ? r->cfg.max_concurrent : 0;
	r->adm_refill_ns = clock_now_ns();
	for (int k = 0; k < 2; k++) {
		const char *key = k ? cfg->worker_api_key : cfg->api_key;
		if (key && *key && (strlen(key) > 256 || strpbrk(key, "\r\n"))) {
			err_set(err, ERR_INVAL, "%s: at most 256 characters, no line breaks",
				k ? "--worker-api-key" : "--api-key");
			goto fail;
		}
	}
	{
		/* workers get --worker-api-key, else the router's own --api-key */
		const char *wk = cfg->worker_api_key && *cfg->worker_api_key ? cfg->worker_api_key : cfg->api_key;
		if (wk && *wk)
			snprintf(r->auth_line, sizeof(r->auth_line), "Authorization: Bearer %s\r\n", wk);
	}
	r->rng = cfg->seed ? cfg->seed : (uint64_t)clock_now_ns() ^ ((uint64_t)getpid() << 32);
	r->started_ns = clock_now_ns();
	r->next_evict = r->started_ns + (int64_t)(r->cfg.eviction_interval_s * 1e9);
	if (!(r->base = event_base_new()) || !(r->http = evhttp_new(r->base)) || !(r->scratch = evbuffer_new()) ||
	    !(r->tick_ev = event_new(r->base, -1, EV_PERSIST, on_tick, r)) ||
	    !(r->stop_ev = event_new(r->base, -1, 0, on_stop, r)) ||
	    !(r->admit_ev = event_new(r->base, -1, 0, on_admit, r)) ||
	    !(r->bal_regular = balance_create(&r->cfg.policy, rng_next(r))) ||
	    !(r->bal_prefill = balance_create(&r->cfg.prefill_policy, rng_next(r))) ||
	    !(r->bal_decode = balance_create(&r->cfg.decode_policy, rng_next(r)))) {
		err_set(err, ERR_NOMEM, "out of memory setting up the router");
		goto fail;
	}
	/* name lookups for worker hosts without blocking the loop; /etc/hosts
	   and numeric addresses answer at once */
	r->dns = evdns_base_new(r->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (!r->dns && (r->dns = evdns_base_new(r->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE)))
		evdns_base_load_hosts(r->dns, NULL);
	/* twice the limits: refuse_size answers between one and two times */
	evhttp_set_max_body_size(r->http, (ev_ssize_t)(r->cfg.max_payload > SIZE_MAX / 4 ? r->cfg.max_payload
											 : 2 * r->cfg.max_payload));
	evhttp_set_max_headers_size(r->http, (ev_ssize_t)(2 * r->cfg.max_header_size));
	evhttp_set_allowed_methods(r->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
						    EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_flags(r->http, EVHTTP_SERVER_LINGERING_CLOSE);
	r->cutoff = (evinit_cutoff){ .fn = on_cutoff, .arg = r };
	evinit_watch_cutoffs(r->http, &r->cutoff);
	evhttp_set_gencb(r->http, on_request, r);
	if (!(r->sock = evhttp_bind_socket_with_handle(r->http, r->host, (ev_uint16_t)cfg->port))) {
		err_set(err, ERR_IO, "cannot listen on %s:%d (in use, or not an address of this host)", r->host, cfg->port);
		goto fail;
	}
	r->port = bound_port(r->sock);
	if (cfg->prometheus_port > 0) {
		const char *ph = cfg->prometheus_host && *cfg->prometheus_host ? cfg->prometheus_host : r->host;
		if (!(r->prom = evhttp_new(r->base))) {
			err_set(err, ERR_NOMEM, "out of memory setting up the router");
			goto fail;
		}
		evhttp_set_gencb(r->prom, on_prom_request, r);
		if (!evhttp_bind_socket_with_handle(r->prom, ph, (ev_uint16_t)cfg->prometheus_port)) {
			err_set(err, ERR_IO, "--prometheus-port: cannot listen on %s:%d", ph, cfg->prometheus_port);
			goto fail;
		}
	}
	struct timeval tick = { 0, TICK_MS * 1000 };
	event_add(r->tick_ev, &tick);
	return r;
fail:
	router_destroy(r);
	return NULL;
}

int router_port(const router *r)
{
	return r->port;
}

int router_run(router *r)
{
	signal(SIGPIPE, SIG_IGN);
	r->sigint = evsignal_new(r->base, SIGINT, on_stop, r);
	r->sigterm = evsignal_new(r->base, SIGTERM, on_stop, r);
	if (!r->sigint || !r->sigterm || evsignal_add(r->sigint, NULL) < 0 || evsignal_add(r->sigterm, NULL) < 0) {
		LOGE("router", "cannot install signal handlers");
		return ERR_IO;
	}
	on_tick(-1, 0, r); /* first probes now, not after a tick */
	LOGI("router", "routing on http://%s:%d (%s mode, %d workers)", r->host, r->port, r->cfg.pd ? "PD" : "regular",
	     r->n_workers);
	int rc = event_base_dispatch(r->base);
	event_free(r->sigint);
	event_free(r->sigterm);
	r->sigint = r->sigterm = NULL;
	return rc < 0 ? ERR_IO : 0;
}

void router_stop(router *r)
{
	event_active(r->stop_ev, EV_READ, 0);
}

void router_destroy(router *r)
{
	if (!r)
		return;
	while (r->reqs) {
		rreq *q = r->reqs;
		if (q->req)
			unwatch_client(q->req, &q->closed_ev);
		q->req = NULL; /* evhttp_free below frees it with its connection */
		leg_cancel(&q->p);
		leg_cancel(&q->d);
		rq_free(q);
	}
	while (r->fans) {
		fan *f = r->fans;
		if (f->req)
			unwatch_client(f->req, &f->closed_ev);
		f->req = NULL;
		for (int i = 0; i < f->n; i++)
			upstream_cancel(f->items[i].u);
		fan_free(f);
	}
	while (r->n_workers)
		worker_remove(r, r->workers[r->n_workers - 1]);
	alloc_free(r->workers);
	if (r->http)
		evhttp_free(r->http);
	if (r->prom)
		evhttp_free(r->prom);
	if (r->dns)
		evdns_base_free(r->dns, 0);
	if (r->tick_ev)
		event_free(r->tick_ev);
	if (r->stop_ev)
		event_free(r->stop_ev);
	if (r->admit_ev)
		event_free(r->admit_ev);
	if (r->grace_ev)
		event_free(r->grace_ev);
	if (r->scratch)
		evbuffer_free(r->scratch);
	balance_destroy(r->bal_regular);
	balance_destroy(r->bal_prefill);
	balance_destroy(r->bal_decode);
	if (r->base)
		event_base_free(r->base);
	alloc_free(r);
}
