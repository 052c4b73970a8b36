/* http.c - evhttp server: routing, auth, replies, SSE, disconnects, and the
 * engine-event pump.
 *
 * Threads. Everything here runs on the event loop thread except
 * http_server_notify() and http_server_stop(), which only event_active() a
 * user event (libevent is made thread-aware by evinit()
 * before the base exists). The engine's scheduler thread calls notify after
 * appending events; the loop's on_wake() drains engine_poll() until empty.
 * A notify that lands while on_wake runs re-arms the event, so no event is
 * left behind.
 *
 * A generation request is a `call`: the parsed request, one openai_choice
 * and one engine request (a `sub`, with its own rid) per choice, and the
 * evhttp request while a reply is still owed. Each sub is the `user` of its
 * engine request, so events find their sub without a lookup.
 *
 *            handle_gen                 all choices finished
 *   (none) ------------> REPLYING ------------------------------> DRAINING --+
 *                         |  |  reply_done(): last chunk / body      |        |
 *                         |  +-- client gone: call_gone() ---------->+        |
 *                         |      aborts every live sub, ends reply   |        |
 *                         +-- all subs final and reply sent ---------+--------+--> call_free()
 *
 *   REPLYING  c->req != NULL: we owe the client bytes; streaming writes
 *             chunks as events arrive.
 *   DRAINING  c->req == NULL: the reply is done (or the client left) but the
 *             engine still owes final events for some subs (aborted ones,
 *             or siblings of a choice cut by a stop string).
 *   A call is freed only when c->req == NULL and no sub is live, i.e. after
 *   the engine's last event naming it: the engine promises exactly one
 *   final event per submitted request, so a call never outlives or
 *   predeceases its events.
 *
 * Who frees what: the call owns its openai_request, choices and subs; the
 * engine copied the prompt at submit, so prompt ids are freed right after.
 * The evhttp request belongs to libevent: evhttp_send_reply /
 * evhttp_send_reply_end hand it back (and free it when the connection is
 * already gone). We never free it ourselves.
 *
 * Disconnects. libevent reports a closed client through the connection's
 * close callback only once a streamed reply has started; a non-streamed
 * request waiting for its answer would not notice. So every call also
 * watches its socket with an EV_CLOSED event (epoll's EPOLLRDHUP), which
 * fires as soon as the peer closes. Both paths end in call_gone(): abort
 * every live sub (the engine frees its pages at its next step), end the
 * reply, and wait for the final events.
 *
 * Limits. Each refusal is an OpenAI error with a status (413 body, 431
 * headers, 400 prompt/max_tokens/n/stop, 503 + Retry-After queue full), one
 * log line and pdserve:requests_rejected_total{reason}. Body and header
 * sizes are checked here, on the whole request; libevent itself is given
 * twice those limits, so a request far beyond them is cut off while it is
 * read and memory stays bounded; libevent answers that one itself (an HTML
 * 413 for a body, 400 for headers, as for malformed HTTP), which we see on
 * its way out (evinit_watch_cutoffs), log and count as reason "read_limit"
 * / "malformed_http". A refused body's connection is closed after the answer.
 * --idle-timeout-secs is libevent's connection timeout: a kept-alive
 * connection with no request, or a client not reading its reply, is closed
 * after that long (a request waiting for the engine is not idle: libevent
 * does not read from it meanwhile).
 *
 * Left out: TLS, HTTP/2, write back-pressure for slow streaming clients
 * (chunks queue in libevent's output buffer; the engine never waits).
 */
#include "server/http.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "server/evinit.h"
#include "server/metrics.h"
#include "server/openai.h"

#define PDSERVE_VERSION "0.1.0"
#define POLL_BATCH 64

typedef struct call call;

typedef struct {
	call *c;
	int idx;
	uint64_t rid;
	bool live;           /* submitted, final event not yet seen */
	bool got_first;
	int64_t t_submit, t_first, t_last;
} sub;

struct call {
	call *prev, *next;   /* server's list of calls */
	http_server *srv;
	struct evhttp_request *req; /* NULL once the reply is done */
	struct event *closed_ev;
	const char *route;
	bool stream;
	bool gone;
	bool health;         /* internal /health_generate */
	openai_request r;
	openai_resp rs;
	char id[160];
	int n;               /* choices */
	openai_choice *ch;
	sub *subs;
	int n_live;
	int64_t t_start;
};

struct http_server {
	http_config cfg;
	struct event_base *base;
	struct evhttp *http;
	evinit_cutoff cutoff; /* libevent's own 413s, counted */
	struct evhttp_bound_socket *sock;
	struct event *wake, *stop_ev, *sigint, *sigterm;
	struct evbuffer *scratch;
	engine *eng;
	openai_model model;
	metrics *met;
	call *calls;
	uint64_t next_rid;
	uint64_t rng;
	engine_event *evbuf;
	int port;
	int64_t created;
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t rng_next(http_server *s)
{
	uint64_t x = s->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return s->rng = x;
}

static void new_id(http_server *s, const char *prefix, char *out, size_t n)
{
	snprintf(out, n, "%s%016llx%016llx", prefix, (unsigned long long)rng_next(s),
		 (unsigned long long)rng_next(s));
}

/* Status of a request the engine failed. In a PD role the engine fails a
   request only when the other half or the KV transfer did (engine_fail,
   engine_import_fail): 502, an upstream failure, so that clients and routers
   that retry gateway errors do; 500 otherwise. */
static int failure_status(const http_server *s)
{
	return s->cfg.xf ? 502 : 500;
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
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

static const char *method_name(enum evhttp_cmd_type m)
{
	switch (m) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "?";
}

static void reply(http_server *s, struct evhttp_request *req, const char *route, int status, const char *ctype,
		  const char *body, size_t len)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", ctype);
	struct evbuffer *b = evbuffer_new();
	if (b && len)
		evbuffer_add(b, body, len);
	evhttp_send_reply(req, status, reason(status), b);
	if (b)
		evbuffer_free(b);
	metrics_http(s->met, route, status);
}

static void reply_json(http_server *s, struct evhttp_request *req, const char *route, int status, const char *body,
		       size_t len)
{
	reply(s, req, route, status, "application/json", body, len);
}

/* Reply with an OpenAI error object; logged here unless the caller already
   did (every error is logged exactly once). */
static void reply_error_as(http_server *s, struct evhttp_request *req, const char *route, const openai_error *e,
			   bool log)
{
	size_t len = 0;
	char *body = openai_error_json(e, &len);
	if (log)
		log_msg(e->status >= 500 ? LOG_ERROR : LOG_WARN, "http", "%s %s: %d %s",
			method_name(evhttp_request_get_command(req)), route, e->status, e->message);
	if (e->status == 405)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
				  !strcmp(e->param, "GET") ? "GET, HEAD" : "POST");
	if (e->status == 401)
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
	if (e->status == 503)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
	if (e->limit)
		metrics_rejected(s->met, e->limit);
	if (body)
		reply_json(s, req, route, e->status, body, len);
	else
		reply(s, req, route, 500, "text/plain", "out of memory\n", 14);
	alloc_free(body);
}

static void reply_error(http_server *s, struct evhttp_request *req, const char *route, const openai_error *e)
{
	reply_error_as(s, req, route, e, true);
}

static void reply_jobj(http_server *s, struct evhttp_request *req, const char *route, json_object *o)
{
	size_t n = 0;
	const char *t = o ? json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
							      &n)
			  : NULL;
	if (t) {
		reply_json(s, req, route, 200, t, n);
	} else {
		openai_error e;
		openai_error_set(&e, 500, NULL, "out of memory");
		reply_error(s, req, route, &e);
	}
	json_object_put(o);
}

/* Send bytes on a streamed reply. */
static void stream_write(http_server *s, struct evhttp_request *req, const char *data, size_t len)
{
	if (!len)
		return;
	evbuffer_add(s->scratch, data, len);
	evhttp_send_reply_chunk(req, s->scratch);
	evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
}

/* Parse a small JSON body for the admin routes. NULL with e filled. */
static json_object *parse_body(const char *body, size_t len, openai_error *e)
{
	json_tokener *tk = json_tokener_new();
	if (!tk) {
		openai_error_set(e, 500, NULL, "out of memory");
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
		openai_error_set(e, 400, NULL, "malformed JSON: %s",
				 !len ? "the body is empty" : trailing ? "unexpected data after the object" :
				 json_tokener_error_desc(je));
		return NULL;
	}
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		openai_error_set(e, 400, NULL, "the body must be a JSON object");
		return NULL;
	}
	return o;
}

/* ---------------------------------------------------------------- calls */

static void call_free(call *c)
{
	http_server *s = c->srv;
	if (c->prev)
		c->prev->next = c->next;
	else if (s->calls == c)
		s->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->closed_ev)
		event_free(c->closed_ev);
	if (c->ch)
		for (int i = 0; i < c->n; i++)
			openai_choice_fini(&c->ch[i]);
	alloc_free(c->ch);
	alloc_free(c->subs);
	if (c->health) { /* built by hand, not by openai_parse */
		alloc_free(c->r.prompts ? c->r.prompts[0].ids : NULL);
		alloc_free(c->r.prompts);
	} else {
		openai_request_fini(&c->r);
	}
	alloc_free(c);
}

static void call_maybe_free(call *c)
{
	if (!c->req && c->n_live == 0)
		call_free(c);
}

/* Stop watching the client: before the reply is handed back to libevent,
   which may close (and the kernel reuse) the fd. */
static void call_unwatch(call *c)
{
	if (c->closed_ev) {
		event_free(c->closed_ev);
		c->closed_ev = NULL;
	}
	struct evhttp_connection *con = c->req ? evhttp_request_get_connection(c->req) : NULL;
	if (con)
		evhttp_connection_set_closecb(con, NULL, NULL);
}

static void abort_live(call *c)
{
	for (int i = 0; i < c->n; i++)
		if (c->subs && c->subs[i].live)
			engine_abort(c->srv->eng, c->subs[i].rid);
}

static bool all_finished(const call *c)
{
	for (int i = 0; i < c->n; i++)
		if (c->ch[i].finish == OPENAI_FINISH_NONE)
			return false;
	return true;
}

/* Every choice has finished: send what is owed and let go of the request. */
static void reply_done(call *c)
{
	http_server *s = c->srv;
	struct evhttp_request *req = c->req;
	double e2e = (double)(clock_now_ns() - c->t_start) * 1e-9;
	call_unwatch(c);
	c->req = NULL;
	if (c->health) {
		bool ok = c->ch[0].finish != OPENAI_FINISH_ERROR;
		if (!ok)
			LOGE("http", "/health_generate: %s", c->ch[0].message);
		reply(s, req, c->route, ok ? 200 : 503, "text/plain", "", 0);
		return;
	}
	if (c->stream) {
		for (int i = 0; i < c->n; i++) {
			size_t len;
			char *chunk = openai_render_chunk(&c->rs, &c->ch[i], e2e, &len);
			stream_write(s, req, chunk, len);
			alloc_free(chunk);
		}
		for (int i = 0; i < c->n; i++)
			if (c->ch[i].finish == OPENAI_FINISH_ERROR) {
				openai_error e; /* logged when its event came (on_event) */
				openai_error_set(&e, failure_status(s), NULL, "%s", c->ch[i].message);
				size_t len;
				char *chunk = openai_render_error_chunk(&e, &len);
				stream_write(s, req, chunk, len);
				alloc_free(chunk);
				break;
			}
		if (c->r.include_usage) {
			size_t len;
			char *chunk = openai_render_usage_chunk(&c->rs, c->ch, c->n, &len);
			stream_write(s, req, chunk, len);
			alloc_free(chunk);
		}
		stream_write(s, req, "data: [DONE]\n\n", 14);
		evhttp_send_reply_end(req);
		metrics_http(s->met, c->route, 200);
		return;
	}
	for (int i = 0; i < c->n; i++)
		if (c->ch[i].finish == OPENAI_FINISH_ERROR) {
			openai_error e; /* logged when its event came (on_event) */
			openai_error_set(&e, failure_status(s), NULL, "%s", c->ch[i].message);
			reply_error_as(s, req, c->route, &e, false);
			return;
		}
	size_t len;
	char *body = openai_render_response(&c->rs, c->ch, c->n, e2e, &len);
	if (body) {
		reply_json(s, req, c->route, 200, body, len);
	} else {
		openai_error e;
		openai_error_set(&e, 500, NULL, "out of memory rendering the response");
		reply_error(s, req, c->route, &e);
	}
	alloc_free(body);
}

/* The client left (or asked us to drop the request): abort the engine
   requests and end the reply. detached: libevent already let go of the
   connection (close callback). */
static void call_gone(call *c, const char *why)
{
	if (c->gone || !c->req)
		return;
	c->gone = true;
	http_server *s = c->srv;
	LOGI("http", "%s %s: %s; aborting %d engine request%s", c->route, c->id, why, c->n_live,
	     c->n_live == 1 ? "" : "s");
	abort_live(c);
	struct evhttp_request *req = c->req;
	call_unwatch(c);
	c->req = NULL;
	if (c->stream)
		evhttp_send_reply_end(req); /* frees req when the connection is already gone */
	else
		evhttp_send_reply(req, 499, reason(499), NULL);
	metrics_http(s->met, c->route, 499);
	call_maybe_free(c);
}

static void on_closed(evutil_socket_t fd, short what, void *arg)
{
	call_gone(arg, "client closed the connection");
}

static void on_conn_close(struct evhttp_connection *con, void *arg)
{
	call *c = arg;
	if (!c->req)
		return;
	if (evhttp_request_get_connection(c->req) == con) {
		/* libevent is freeing the connection with our request still queued
		   on it: it frees the request too, so only drop our pointer. */
		evhttp_connection_set_closecb(con, NULL, NULL);
		if (c->closed_ev) {
			event_free(c->closed_ev);
			c->closed_ev = NULL;
		}
		c->gone = true;
		abort_live(c);
		c->req = NULL;
		metrics_http(c->srv->met, c->route, 499);
		LOGI("http", "%s %s: connection closed; aborting %d engine requests", c->route, c->id, c->n_live);
		call_maybe_free(c);
		return;
	}
	call_gone(c, "client closed the connection");
}

/* One engine event. */
static void on_event(http_server *s, const engine_event *ev)
{
	sub *u = ev->user;
	call *c = u->c;
	openai_choice *ch = &c->ch[u->idx];
	int64_t now = clock_now_ns();
	bool final = ev->finish != ENGINE_FINISH_NONE;
	if (ev->token >= 0) {
		if (!u->got_first) {
			u->got_first = true;
			u->t_first = now;
			metrics_ttft(s->met, (double)(now - u->t_submit) * 1e-9);
		} else {
			metrics_itl(s->met, (double)(now - u->t_last) * 1e-9);
		}
		u->t_last = now;
	}
	if (final) {
		u->live = false;
		c->n_live--;
		metrics_request m = {
			.prompt_tokens = ev->prompt_tokens,
			.completion_tokens = ev->completion_tokens,
			.cached_tokens = ev->cached_tokens,
			.e2e_s = (double)(now - u->t_submit) * 1e-9,
			.tpot_s = u->got_first && ev->completion_tokens > 1 ?
					  (double)(now - u->t_first) * 1e-9 / (ev->completion_tokens - 1) : -1,
			.finish = ev->finish,
		};
		metrics_request_done(s->met, &m);
		if (ev->finish == ENGINE_FINISH_ERROR)
			LOGE("http", "%s %s: engine request %llu failed: %s", c->route, c->id, (unsigned long long)u->rid,
			     ev->message);
	}
	if (final && s->cfg.xf && s->cfg.pd_role == XFER_DECODE && ev->finish != ENGINE_FINISH_ERROR) {
		xfer_timing t;
		if (xfer_take_timing(s->cfg.xf, u->rid, &t) == 0) {
			c->rs.has_pd = true;
			c->rs.pd_backend = xfer_backend_name(s->cfg.pd_backend);
			c->rs.pd_prefill_queue_s = t.prefill_queue_s;
			c->rs.pd_prefill_compute_s = t.prefill_compute_s;
			c->rs.pd_transfer_s = t.transfer_s;
			c->rs.pd_admission_wait_s = t.admission_wait_s;
			c->rs.pd_bytes = t.bytes;
		}
	}
	if (c->req && !c->gone) {
		int rc = openai_choice_event(ch, &c->r, s->model.tok, ev);
		if (rc == 1 && u->live) {
			engine_abort(s->eng, u->rid); /* a stop string ended it; the rest is not wanted */
		} else if (rc < 0) {
			LOGE("http", "%s %s: out of memory assembling the output", c->route, c->id);
			snprintf(ch->message, sizeof(ch->message), "out of memory assembling the output");
			ch->finish = OPENAI_FINISH_ERROR;
			abort_live(c);
		}
		if (c->stream && !all_finished(c)) {
			size_t len;
			char *chunk = openai_render_chunk(&c->rs, ch, (double)(now - c->t_start) * 1e-9, &len);
			stream_write(s, c->req, chunk, len);
			alloc_free(chunk);
		}
		if (all_finished(c))
			reply_done(c);
	}
	call_maybe_free(c);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	http_server *s = arg;
	if (!s->eng)
		return;
	for (;;) {
		int n = engine_poll(s->eng, s->evbuf, POLL_BATCH);
		for (int i = 0; i < n; i++)
			on_event(s, &s->evbuf[i]);
		if (n < POLL_BATCH)
			break;
	}
}

void http_server_notify(void *arg)
{
	http_server *s = arg;
	event_active(s->wake, EV_READ, 0);
}

/* Start watching the client socket for a close. */
static void call_watch(call *c)
{
	struct evhttp_connection *con = evhttp_request_get_connection(c->req);
	if (!con)
		return;
	evhttp_connection_set_closecb(con, on_conn_close, c);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(con);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd >= 0 && (event_base_get_features(c->srv->base) & EV_FEATURE_EARLY_CLOSE)) {
		c->closed_ev = event_new(c->srv->base, fd, EV_CLOSED, on_closed, c);
		if (c->closed_ev && event_add(c->closed_ev, NULL) < 0) {
			event_free(c->closed_ev);
			c->closed_ev = NULL;
		}
	}
}

static call *call_new(http_server *s, struct evhttp_request *req, const char *route)
{
	call *c = alloc_zeroed(1, sizeof(*c));
	if (!c)
		return NULL;
	c->srv = s;
	c->req = req;
	c->route = route;
	c->t_start = clock_now_ns();
	c->next = s->calls;
	if (s->calls)
		s->calls->prev = c;
	s->calls = c;
	return c;
}

/* Tokenize, check and submit every choice of c (c->r parsed). On failure e
   is filled and submitted subs were aborted; the caller replies. */
static int call_submit(call *c, openai_error *e)
{
	http_server *s = c->srv;
	openai_request *r = &c->r;
	int n_prompts = r->api == OPENAI_API_CHAT ? 1 : r->n_prompts;
	int n = n_prompts * r->n;
	xfer *xf = s->cfg.xf;
	if (xf) {
		bool dec = s->cfg.pd_role == XFER_DECODE;
		if (!r->has_bootstrap || (dec && s->cfg.pd_backend != XFER_FAKE && (!r->bootstrap_host || !r->bootstrap_port)))
			return openai_error_set(e, 400, "bootstrap_room",
						"this is a %s server (PD disaggregation): requests need bootstrap_host, "
						"bootstrap_port and bootstrap_room (send them through pdserve router)",
						dec ? "decode" : "prefill");
		if (n != 1)
			return openai_error_set(e, 400, "n", "n: a disaggregated request has one prompt and one choice");
	}
	int32_t **ids = alloc_zeroed((size_t)n_prompts, sizeof(*ids));
	int *n_ids = alloc_zeroed((size_t)n_prompts, sizeof(int));
	int *max_new = alloc_zeroed((size_t)n_prompts, sizeof(int));
	c->ch = alloc_zeroed((size_t)n, sizeof(*c->ch));
	c->subs = alloc_zeroed((size_t)n, sizeof(*c->subs));
	int rc = ERR_INVAL;
	if (!ids || !n_ids || !max_new || !c->ch || !c->subs) {
		openai_error_set(e, 500, NULL, "out of memory");
		goto out;
	}
	c->n = n;
	for (int i = 0; i < n; i++)
		if (openai_choice_init(&c->ch[i], s->model.tok, r->skip_special_tokens, i, i / r->n) < 0) {
			openai_error_set(e, 500, NULL, "out of memory");
			goto out;
		}
	for (int k = 0; k < n_prompts; k++)
		if (openai_prompt_ids(r, k, &s->model, &ids[k], &n_ids[k], e) ||
		    openai_max_new_tokens(r, &s->model, n_ids[k], &max_new[k], e))
			goto out;
	if (r->echo)
		for (int i = 0; i < n; i++)
			if (openai_choice_set_echo(&c->ch[i], s->model.tok, &r->prompts[i / r->n]) < 0) {
				openai_error_set(e, 500, NULL, "out of memory");
				goto out;
			}
	for (int i = 0; i < n; i++) {
		int k = i / r->n;
		engine_request er;
		openai_engine_request(r, i % r->n, ids[k], n_ids[k], max_new[k], &er);
		sub *u = &c->subs[i];
		u->c = c;
		u->idx = i;
		u->rid = er.rid = ++s->next_rid;
		er.user = u;
		u->t_submit = clock_now_ns();
		char err[ERR_LEN];
		if (xf && s->cfg.pd_role == XFER_PREFILL) {
			er.pd = ENGINE_PD_EXPORT;
			er.max_new_tokens = 1; /* the first token; the decode makes the rest */
		} else if (xf) {
			er.pd = ENGINE_PD_IMPORT;
			er.reserve_tokens = s->cfg.num_reserved_decode_tokens;
			/* register first: the engine's kv_import hook may fire at once */
			if (xfer_decode_add(xf, r->bootstrap_room, er.rid, r->bootstrap_host, r->bootstrap_port, n_ids[k],
					    err) < 0) {
				openai_error_set(e, 400, "bootstrap_host", "%s", err);
				goto out;
			}
		}
		int src = engine_submit(s->eng, &er, err);
		if (src < 0 && xf && s->cfg.pd_role == XFER_DECODE)
			xfer_forget(xf, er.rid);
		if (src == 0 && xf && s->cfg.pd_role == XFER_PREFILL &&
		    xfer_prefill_add(xf, r->bootstrap_room, er.rid, n_ids[k], err) < 0) {
			engine_abort(s->eng, er.rid);
			u->live = true;
			c->n_live++;
			openai_error_set(e, 500, NULL, "%s", err);
			goto out;
		}
		if (src < 0) {
			abort_live(c);
			if (src == ERR_FULL) {
				openai_error_set(e, 503, NULL, "%s; retry later", err);
				e->limit = "queue_full";
			}
			else if (src == ERR_INVAL)
				openai_error_set(e, 400, NULL, "%s", err);
			else
				openai_error_set(e, 500, NULL, "%s", err);
			goto out;
		}
		u->live = true;
		c->n_live++;
	}
	rc = 0;
out:
	for (int k = 0; ids && k < n_prompts; k++)
		alloc_free(ids[k]);
	alloc_free(ids);
	alloc_free(n_ids);
	alloc_free(max_new);
	return rc;
}

static void handle_gen(http_server *s, struct evhttp_request *req, const char *route, openai_api api,
		       const char *body, size_t len)
{
	openai_error e;
	call *c = call_new(s, req, route);
	if (!c) {
		openai_error_set(&e, 500, NULL, "out of memory");
		reply_error(s, req, route, &e);
		return;
	}
	if (openai_parse(api, body, len, &c->r, &e) || openai_check(&c->r, &s->model, &e) || call_submit(c, &e)) {
		c->req = NULL;
		reply_error(s, req, route, &e);
		call_maybe_free(c);
		return;
	}
	c->stream = c->r.stream;
	if (api == OPENAI_API_GENERATE && c->r.rid)
		snprintf(c->id, sizeof(c->id), "%s", c->r.rid);
	else
		new_id(s, api == OPENAI_API_CHAT ? "chatcmpl-" : api == OPENAI_API_COMPLETIONS ? "cmpl-" : "", c->id,
		       sizeof(c->id));
	c->rs = (openai_resp){ .req = &c->r,
			       .tok = s->model.tok,
			       .id = c->id,
			       .created = (int64_t)time(NULL),
			       .model = c->r.model && *c->r.model ? c->r.model : s->cfg.served_model_name };
	LOGD("http", "%s %s: %d choice%s, rids %llu..%llu", route, c->id, c->n, c->n == 1 ? "" : "s",
	     (unsigned long long)c->subs[0].rid, (unsigned long long)c->subs[c->n - 1].rid);
	if (c->stream) {
		struct evkeyvalq *h = evhttp_request_get_output_headers(req);
		evhttp_add_header(h, "Content-Type", "text/event-stream");
		evhttp_add_header(h, "Cache-Control", "no-cache");
		evhttp_send_reply_start(req, 200, "OK");
	}
	call_watch(c);
}

/* ---------------------------------------------------------------- admin routes */

static void handle_health_generate(http_server *s, struct evhttp_request *req, const char *route)
{
	openai_error e;
	call *c = call_new(s, req, route);
	if (!c) {
		openai_error_set(&e, 500, NULL, "out of memory");
		reply_error(s, req, route, &e);
		return;
	}
	c->health = true;
	openai_request *r = &c->r;
	r->api = OPENAI_API_GENERATE;
	r->n = 1;
	r->max_tokens = 1;
	r->model = "";
	r->skip_special_tokens = true;
	r->sampling = sampler_params_default();
	r->sampling.temperature = 0;
	r->prompts = alloc_zeroed(1, sizeof(*r->prompts));
	int32_t bos = tokenizer_bos(s->model.tok);
	if (r->prompts && (r->prompts[0].ids = alloc_array(1, sizeof(int32_t)))) {
		r->prompts[0].ids[0] = bos >= 0 ? bos : 0;
		r->prompts[0].n_ids = 1;
		r->n_prompts = 1;
	}
	snprintf(c->id, sizeof(c->id), "health_generate");
	c->rs = (openai_resp){ .req = r, .tok = s->model.tok, .id = c->id, .model = s->cfg.served_model_name };
	if (!r->n_prompts) {
		openai_error_set(&e, 500, NULL, "out of memory");
	} else if (call_submit(c, &e) == 0) {
		call_watch(c);
		return;
	}
	c->req = NULL;
	reply_error(s, req, route, &e);
	call_maybe_free(c);
}

static json_object *stats_json(const engine_stats *st)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "running", json_object_new_int(st->running));
	json_object_object_add(o, "waiting", json_object_new_int(st->waiting));
	json_object_object_add(o, "pages_total", json_object_new_int(st->pages_total));
	json_object_object_add(o, "pages_free", json_object_new_int(st->pages_free));
	json_object_object_add(o, "pages_cached", json_object_new_int(st->pages_cached));
	json_object_object_add(o, "pages_used",
			       json_object_new_int(st->pages_total - st->pages_free - st->pages_cached));
	json_object_object_add(o, "page_size", json_object_new_int(st->page_size));
	json_object_object_add(o, "max_total_tokens", json_object_new_int64(st->max_total_tokens));
	json_object_object_add(o, "kv_bytes", json_object_new_int64((int64_t)st->kv_bytes));
	json_object_object_add(o, "prompt_tokens", json_object_new_int64(st->prompt_tokens));
	json_object_object_add(o, "generation_tokens", json_object_new_int64(st->generation_tokens));
	json_object_object_add(o, "cached_tokens", json_object_new_int64(st->cached_tokens));
	json_object_object_add(o, "steps", json_object_new_int64(st->steps));
	json_object_object_add(o, "retractions", json_object_new_int64(st->retractions));
	json_object *f = json_object_new_object();
	json_object_object_add(f, "stop", json_object_new_int64(st->requests_finished[ENGINE_FINISH_STOP]));
	json_object_object_add(f, "length", json_object_new_int64(st->requests_finished[ENGINE_FINISH_LENGTH]));
	json_object_object_add(f, "abort", json_object_new_int64(st->requests_finished[ENGINE_FINISH_ABORT]));
	json_object_object_add(f, "error", json_object_new_int64(st->requests_finished[ENGINE_FINISH_ERROR]));
	json_object_object_add(o, "requests_finished", f);
	return o;
}

static void handle_server_info(http_server *s, struct evhttp_request *req, const char *route)
{
	json_object *o = json_object_new_object();
	for (int i = 0; i < s->cfg.n_args; i++) {
		const http_arg *a = &s->cfg.args[i];
		json_object *v = NULL;
		if (a->literal && a->value)
			v = json_tokener_parse(a->value);
		else if (a->value)
			v = json_object_new_string(a->value);
		json_object_object_add(o, a->key, v);
	}
	json_object_object_add(o, "version", json_object_new_string(PDSERVE_VERSION));
	json_object_object_add(o, "served_model_name", json_object_new_string(s->cfg.served_model_name));
	json_object_object_add(o, "context_length", json_object_new_int(s->model.context_length));
	json_object_object_add(o, "chat_template", json_object_new_string(chat_template_name(s->cfg.chat_family)));
	if (s->eng) {
		engine_stats st;
		engine_get_stats(s->eng, &st);
		json_object_object_add(o, "max_total_num_tokens", json_object_new_int64(st.max_total_tokens));
		json_object_object_add(o, "engine_stats", stats_json(&st));
	}
	if (s->cfg.xf) {
		xfer_stats xs;
		xfer_get_stats(s->cfg.xf, &xs);
		json_object *k = json_object_new_object();
		json_object_object_add(k, "role", json_object_new_string(s->cfg.pd_role == XFER_PREFILL ? "prefill" : "decode"));
		json_object_object_add(k, "transfer_backend", json_object_new_string(xfer_backend_name(s->cfg.pd_backend)));
		if (s->cfg.pd_role == XFER_PREFILL)
			json_object_object_add(k, "bootstrap_port", json_object_new_int(xfer_bootstrap_port(s->cfg.xf)));
		json_object_object_add(k, "rooms_ok", json_object_new_int64(xs.rooms_ok));
		json_object_object_add(k, "rooms_failed", json_object_new_int64(xs.rooms_failed));
		json_object_object_add(k, "rooms_live", json_object_new_int(xs.rooms_live));
		json_object_object_add(k, "bytes", json_object_new_int64(xs.bytes));
		json_object_object_add(k, "transfer_seconds", json_object_new_double(xs.transfer_s));
		json_object_object_add(k, "connections", json_object_new_int(xs.connections));
		json_object_object_add(o, "disaggregation", k);
		if (s->cfg.pd_role == XFER_PREFILL)
			json_object_object_add(o, "disaggregation_bootstrap_port",
					       json_object_new_int(xfer_bootstrap_port(s->cfg.xf)));
	}
	reply_jobj(s, req, route, o);
}

static void handle_model_info(http_server *s, struct evhttp_request *req, const char *route)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "model_path", json_object_new_string(s->cfg.model_path ? s->cfg.model_path : ""));
	json_object_object_add(o, "tokenizer_path", json_object_new_string(s->cfg.model_path ? s->cfg.model_path : ""));
	json_object_object_add(o, "is_generation", json_object_new_boolean(1));
	json_object_object_add(o, "served_model_name", json_object_new_string(s->cfg.served_model_name));
	json_object_object_add(o, "context_length", json_object_new_int(s->model.context_length));
	json_object_object_add(o, "vocab_size", json_object_new_int(s->model.n_vocab));
	if (s->eng) {
		const llama_hparams *hp = engine_hparams(s->eng);
		json_object_object_add(o, "architecture", json_object_new_string(hp->arch_name));
		json_object_object_add(o, "n_layer", json_object_new_int(hp->n_layer));
		json_object_object_add(o, "n_embd", json_object_new_int(hp->n_embd));
	}
	json_object_object_add(o, "chat_template", json_object_new_string(chat_template_name(s->cfg.chat_family)));
	reply_jobj(s, req, route, o);
}

static void handle_models(http_server *s, struct evhttp_request *req, const char *route)
{
	json_object *o = json_object_new_object(), *data = json_object_new_array(), *m = json_object_new_object();
	json_object_object_add(o, "object", json_object_new_string("list"));
	json_object_object_add(m, "id", json_object_new_string(s->cfg.served_model_name));
	json_object_object_add(m, "object", json_object_new_string("model"));
	json_object_object_add(m, "created", json_object_new_int64(s->created));
	json_object_object_add(m, "owned_by", json_object_new_string("pdserve"));
	json_object_object_add(m, "root", json_object_new_string(s->cfg.served_model_name));
	json_object_object_add(m, "max_model_len", json_object_new_int(s->model.context_length));
	json_object_array_add(data, m);
	json_object_object_add(o, "data", data);
	reply_jobj(s, req, route, o);
}

static void handle_tokenize(http_server *s, struct evhttp_request *req, const char *route, const char *body,
			    size_t len)
{
	openai_error e;
	json_object *o = parse_body(body, len, &e), *p, *v;
	if (!o) {
		reply_error(s, req, route, &e);
		return;
	}
	bool add_special = true;
	if (json_object_object_get_ex(o, "add_special_tokens", &v) && v) {
		if (!json_object_is_type(v, json_type_boolean)) {
			openai_error_set(&e, 400, "add_special_tokens", "add_special_tokens: expected a boolean");
			goto fail;
		}
		add_special = json_object_get_boolean(v);
	}
	if (!json_object_object_get_ex(o, "prompt", &p) || !p) {
		openai_error_set(&e, 400, "prompt", "prompt: required");
		goto fail;
	}
	bool list = json_object_is_type(p, json_type_array);
	size_t n = list ? json_object_array_length(p) : 1;
	json_object *tokens = json_object_new_array(), *counts = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		json_object *t = list ? json_object_array_get_idx(p, i) : p;
		if (!json_object_is_type(t, json_type_string)) {
			json_object_put(tokens);
			json_object_put(counts);
			openai_error_set(&e, 400, "prompt", "prompt: expected a string or a list of strings");
			goto fail;
		}
		int32_t *ids = NULL;
		size_t k = 0;
		if (tokenizer_encode(s->model.tok, json_object_get_string(t), (size_t)json_object_get_string_len(t),
				     add_special, true, &ids, &k) < 0) {
			json_object_put(tokens);
			json_object_put(counts);
			openai_error_set(&e, 400, "prompt", "prompt: cannot be tokenized");
			goto fail;
		}
		json_object *a = json_object_new_array_ext((int)k);
		for (size_t j = 0; j < k; j++)
			json_object_array_add(a, json_object_new_int(ids[j]));
		alloc_free(ids);
		json_object_array_add(counts, json_object_new_int64((int64_t)k));
		json_object_array_add(tokens, a);
	}
	json_object *out = json_object_new_object();
	if (list) {
		json_object_object_add(out, "tokens", tokens);
		json_object_object_add(out, "count", counts);
	} else {
		json_object_object_add(out, "tokens", json_object_get(json_object_array_get_idx(tokens, 0)));
		json_object_object_add(out, "count", json_object_get(json_object_array_get_idx(counts, 0)));
		json_object_put(tokens);
		json_object_put(counts);
	}
	json_object_object_add(out, "max_model_len", json_object_new_int(s->model.context_length));
	json_object_put(o);
	reply_jobj(s, req, route, out);
	return;
fail:
	json_object_put(o);
	reply_error(s, req, route, &e);
}

/* tokens[0..n) of one list, into text; e on failure. */
static json_object *detok_one(http_server *s, json_object *list, bool skip_special, openai_error *e)
{
	size_t n = json_object_array_length(list);
	int32_t *ids = alloc_array(n ? n : 1, sizeof(int32_t));
	if (!ids) {
		openai_error_set(e, 500, NULL, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		json_object *t = json_object_array_get_idx(list, i);
		int64_t x = json_object_get_int64(t);
		if (!json_object_is_type(t, json_type_int) || x < 0 || x >= tokenizer_n_vocab(s->model.tok)) {
			alloc_free(ids);
			openai_error_set(e, 400, "tokens", "tokens[%zu]: not a token id of this vocabulary (0..%d)", i,
					 tokenizer_n_vocab(s->model.tok) - 1);
			return NULL;
		}
		ids[i] = (int32_t)x;
	}
	/* skip_special_tokens as Hugging Face means it: control tokens (BOS,
	   EOS, <|im_end|>, ...) leave the list before decoding, so SPM's first
	   piece loses its dummy-prefix space as in HF's decode */
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (!skip_special || !(tokenizer_token_attr(s->model.tok, ids[i]) & TOKENIZER_ATTR_CONTROL))
			ids[k++] = ids[i];
	n = k;
	char *text = NULL, err[ERR_LEN] = "";
	size_t len = 0;
	int rc = tokenizer_decode(s->model.tok, ids, n, skip_special ? 0 : TOKENIZER_DECODE_SPECIAL, &text, &len, err);
	alloc_free(ids);
	if (rc < 0) {
		openai_error_set(e, rc == ERR_NOMEM ? 500 : 400, "tokens", "tokens: %s", err[0] ? err : "cannot decode");
		return NULL;
	}
	char *clean = alloc_bytes(3 * len + 1);
	json_object *out = NULL;
	if (clean) {
		k = openai_utf8_sanitize(text, len, clean);
		out = json_object_new_string_len(clean, (int)k);
	} else {
		openai_error_set(e, 500, NULL, "out of memory");
	}
	alloc_free(clean);
	alloc_free(text);
	return out;
}

static void handle_detokenize(http_server *s, struct evhttp_request *req, const char *route, const char *body,
			      size_t len)
{
	openai_error e;
	json_object *o = parse_body(body, len, &e), *t, *v, *out = NULL;
	if (!o) {
		reply_error(s, req, route, &e);
		return;
	}
	bool skip = true;
	if (json_object_object_get_ex(o, "skip_special_tokens", &v) && v) {
		if (!json_object_is_type(v, json_type_boolean)) {
			openai_error_set(&e, 400, "skip_special_tokens", "skip_special_tokens: expected a boolean");
			goto fail;
		}
		skip = json_object_get_boolean(v);
	}
	if (!json_object_object_get_ex(o, "tokens", &t) || !t || !json_object_is_type(t, json_type_array)) {
		openai_error_set(&e, 400, "tokens", "tokens: required, a list of token ids (or of lists)");
		goto fail;
	}
	size_t n = json_object_array_length(t);
	json_object *text;
	if (n && json_object_is_type(json_object_array_get_idx(t, 0), json_type_array)) {
		text = json_object_new_array();
		for (size_t i = 0; i < n; i++) {
			json_object *l = json_object_array_get_idx(t, i), *one;
			if (!json_object_is_type(l, json_type_array)) {
				json_object_put(text);
				openai_error_set(&e, 400, "tokens", "tokens[%zu]: expected a list of token ids", i);
				goto fail;
			}
			if (!(one = detok_one(s, l, skip, &e))) {
				json_object_put(text);
				goto fail;
			}
			json_object_array_add(text, one);
		}
	} else if (!(text = detok_one(s, t, skip, &e))) {
		goto fail;
	}
	out = json_object_new_object();
	json_object_object_add(out, "text", text);
	json_object_put(o);
	reply_jobj(s, req, route, out);
	return;
fail:
	json_object_put(o);
	reply_error(s, req, route, &e);
}

static void handle_apply_template(http_server *s, struct evhttp_request *req, const char *route, const char *body,
				  size_t len)
{
	openai_error e;
	openai_request r;
	char *prompt = NULL;
	size_t plen = 0;
	if (openai_parse(OPENAI_API_CHAT, body, len, &r, &e)) {
		reply_error(s, req, route, &e);
		return;
	}
	if (openai_render_chat(&r, &s->model, &prompt, &plen, &e)) {
		openai_request_fini(&r);
		reply_error(s, req, route, &e);
		return;
	}
	openai_request_fini(&r);
	char *clean = alloc_bytes(3 * plen + 1);
	json_object *o = json_object_new_object();
	if (clean) {
		size_t k = openai_utf8_sanitize(prompt, plen, clean);
		json_object_object_add(o, "prompt", json_object_new_string_len(clean, (int)k));
	}
	alloc_free(clean);
	alloc_free(prompt);
	reply_jobj(s, req, route, clean ? o : (json_object_put(o), NULL));
}

static void handle_abort(http_server *s, struct evhttp_request *req, const char *route, const char *body, size_t len)
{
	openai_error e;
	json_object *o = parse_body(body, len, &e), *v;
	if (!o) {
		reply_error(s, req, route, &e);
		return;
	}
	const char *rid = NULL;
	bool all = false;
	if (json_object_object_get_ex(o, "rid", &v) && v) {
		if (!json_object_is_type(v, json_type_string)) {
			json_object_put(o);
			openai_error_set(&e, 400, "rid", "rid: expected a string");
			reply_error(s, req, route, &e);
			return;
		}
		rid = json_object_get_string(v);
	}
	if (json_object_object_get_ex(o, "abort_all", &v) && v)
		all = json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
	if (!rid && !all) {
		json_object_put(o);
		openai_error_set(&e, 400, "rid", "rid: required (or abort_all: true)");
		reply_error(s, req, route, &e);
		return;
	}
	int n = 0;
	for (call *c = s->calls; c; c = c->next) {
		if (c->health || (!all && strcmp(c->id, rid)))
			continue;
		for (int i = 0; i < c->n; i++)
			if (c->subs[i].live) {
				engine_abort(s->eng, c->subs[i].rid);
				n++;
			}
	}
	LOGI("http", "/abort_request %s: aborting %d engine requests", all ? "(all)" : rid, n);
	json_object_put(o);
	json_object *out = json_object_new_object();
	json_object_object_add(out, "aborted", json_object_new_int(n));
	reply_jobj(s, req, route, out);
}

static void handle_metrics(http_server *s, struct evhttp_request *req, const char *route)
{
	engine_stats st;
	if (s->eng)
		engine_get_stats(s->eng, &st);
	char *text = NULL;
	size_t len = 0;
	metrics_http(s->met, route, 200); /* counted before rendering, so a scrape sees itself */
	if (metrics_render(s->met, s->eng ? &st : NULL, &text, &len) < 0) {
		reply(s, req, route, 500, "text/plain", "out of memory\n", 14);
		return;
	}
	if (s->cfg.xf) {
		xfer_stats xs;
		xfer_get_stats(s->cfg.xf, &xs);
		char extra[1024];
		int n = snprintf(extra, sizeof(extra),
				 "# HELP pdserve:kv_transfer_bytes_total KV bytes moved between prefill and decode.\n"
				 "# TYPE pdserve:kv_transfer_bytes_total counter\n"
				 "pdserve:kv_transfer_bytes_total{model_name=\"%s\"} %lld\n"
				 "# HELP pdserve:kv_transfer_rooms_total KV transfer rooms by outcome.\n"
				 "# TYPE pdserve:kv_transfer_rooms_total counter\n"
				 "pdserve:kv_transfer_rooms_total{model_name=\"%s\",outcome=\"ok\"} %lld\n"
				 "pdserve:kv_transfer_rooms_total{model_name=\"%s\",outcome=\"failed\"} %lld\n"
				 "# HELP pdserve:kv_transfer_connections Open transfer connections.\n"
				 "# TYPE pdserve:kv_transfer_connections gauge\n"
				 "pdserve:kv_transfer_connections{model_name=\"%s\"} %d\n",
				 s->cfg.served_model_name, (long long)xs.bytes, s->cfg.served_model_name, (long long)xs.rooms_ok,
				 s->cfg.served_model_name, (long long)xs.rooms_failed, s->cfg.served_model_name, xs.connections);
		char *grown = alloc_resize(text, len + (size_t)n + 1);
		if (grown) {
			memcpy(grown + len, extra, (size_t)n + 1);
			text = grown;
			len += (size_t)n;
		}
	}
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	struct evbuffer *b = evbuffer_new();
	if (b)
		evbuffer_add(b, text, len);
	evhttp_send_reply(req, 200, "OK", b);
	if (b)
		evbuffer_free(b);
	alloc_free(text);
}

/* ---------------------------------------------------------------- routing */

typedef enum {
	R_COMPLETIONS, R_CHAT, R_GENERATE, R_MODELS, R_HEALTH, R_HEALTH_GEN, R_MODEL_INFO, R_SERVER_INFO,
	R_FLUSH, R_TOKENIZE, R_DETOKENIZE, R_TEMPLATE, R_ABORT, R_METRICS,
} route_id;

static const struct {
	const char *path;
	route_id id;
	bool post;       /* POST (else GET/HEAD) */
	bool engine;     /* needs the engine (or its tokenizer) */
	bool open;       /* no API key needed */
} ROUTES[] = {
	{ "/v1/completions", R_COMPLETIONS, true, true, false },
	{ "/v1/chat/completions", R_CHAT, true, true, false },
	{ "/generate", R_GENERATE, true, true, false },
	{ "/v1/models", R_MODELS, false, false, false },
	{ "/health", R_HEALTH, false, true, true },
	{ "/health_generate", R_HEALTH_GEN, false, true, true },
	{ "/get_model_info", R_MODEL_INFO, false, false, false },
	{ "/get_server_info", R_SERVER_INFO, false, false, false },
	{ "/flush_cache", R_FLUSH, true, true, false },
	{ "/tokenize", R_TOKENIZE, true, true, false },
	{ "/v1/tokenize", R_TOKENIZE, true, true, false },
	{ "/detokenize", R_DETOKENIZE, true, true, false },
	{ "/v1/detokenize", R_DETOKENIZE, true, true, false },
	{ "/apply-template", R_TEMPLATE, true, true, false },
	{ "/abort_request", R_ABORT, true, true, false },
	{ "/metrics", R_METRICS, false, false, true },
};

static bool authorized(http_server *s, struct evhttp_request *req)
{
	const char *key = s->cfg.api_key;
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
	for (size_t i = 0; i < a && i < b; i++) /* no early exit on the first mismatch */
		diff |= (unsigned)(h[i] ^ key[i]);
	return diff == 0;
}

/* Streams are many small writes (the SSE head, then an event per token):
   without TCP_NODELAY, Nagle holds each behind the peer's delayed ACK
   (~40 ms per event on a kept-alive connection). Cheap to repeat per request. */
static void set_nodelay(struct evhttp_request *req)
{
	struct evhttp_connection *con = evhttp_request_get_connection(req);
	struct bufferevent *bev = con ? evhttp_connection_get_bufferevent(con) : NULL;
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	int one = 1;
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* The request line and headers as they came, give or take separators. */
static size_t header_bytes(struct evhttp_request *req)
{
	const char *uri = evhttp_request_get_uri(req);
	size_t n = (uri ? strlen(uri) : 0) + 16;
	for (struct evkeyval *kv = evhttp_request_get_input_headers(req)->tqh_first; kv; kv = kv->next.tqe_next)
		n += strlen(kv->key) + strlen(kv->value) + 4;
	return n;
}

/* 431 / 413 when the request is over --max-header-size / --max-body-size;
   the connection closes after the answer. true when refused. */
static bool refuse_size(http_server *s, struct evhttp_request *req, const char *route)
{
	openai_error e;
	size_t hdr = header_bytes(req), len = evbuffer_get_length(evhttp_request_get_input_buffer(req));
	if (hdr > s->cfg.max_header_size) {
		openai_error_set(&e, 431, NULL, "request headers of %zu bytes: more than --max-header-size %zu", hdr,
				 s->cfg.max_header_size);
		e.limit = "header_size";
	} else if (len > s->cfg.max_body_size) {
		openai_error_set(&e, 413, NULL, "request body of %zu bytes: more than --max-body-size %zu", len,
				 s->cfg.max_body_size);
		e.limit = "body_size";
	} else {
		return false;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
	reply_error(s, req, route, &e);
	return true;
}

/* libevent refused a request while reading it and answered itself */
static void on_cutoff(void *arg, int status)
{
	http_server *s = arg;
	if (status == 413)
		LOGW("http", "413: a request body over twice --max-body-size %zu, cut off while read",
		     s->cfg.max_body_size);
	else
		LOGW("http", "400: malformed HTTP, or headers over twice --max-header-size %zu (refused by libevent)",
		     s->cfg.max_header_size);
	metrics_rejected(s->met, status == 413 ? "read_limit" : "malformed_http");
	metrics_http(s->met, "other", status);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	http_server *s = arg;
	openai_error e;
	set_nodelay(req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!path || !*path)
		path = "/";
	int r = -1;
	for (int i = 0; i < (int)(sizeof(ROUTES) / sizeof(ROUTES[0])); i++)
		if (!strcmp(path, ROUTES[i].path))
			r = i;
	if (refuse_size(s, req, r < 0 ? "other" : ROUTES[r].id == R_TOKENIZE ? "/tokenize" :
					       ROUTES[r].id == R_DETOKENIZE ? "/detokenize" : ROUTES[r].path))
		return;
	if (r < 0) {
		openai_error_set(&e, 404, NULL, "no route %.100s", path);
		reply_error(s, req, "other", &e);
		return;
	}
	/* metrics and logs name the canonical path */
	route_id id = ROUTES[r].id;
	const char *route = id == R_TOKENIZE ? "/tokenize" : id == R_DETOKENIZE ? "/detokenize" : ROUTES[r].path;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	bool ok = ROUTES[r].post ? m == EVHTTP_REQ_POST : (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD);
	if (id == R_FLUSH || id == R_GENERATE)
		ok |= m == EVHTTP_REQ_GET || m == EVHTTP_REQ_POST; /* SGLang accepts both */
	if (!ok) {
		openai_error_set(&e, 405, ROUTES[r].post ? "POST" : "GET", "%s %s: use %s", method_name(m), route,
				 ROUTES[r].post ? "POST" : "GET");
		e.param[0] = '\0';
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", ROUTES[r].post ? "POST" : "GET, HEAD");
		size_t len;
		char *body = openai_error_json(&e, &len);
		LOGW("http", "%s %s: 405 %s", method_name(m), route, e.message);
		reply_json(s, req, route, 405, body ? body : "", body ? len : 0);
		alloc_free(body);
		return;
	}
	if (!ROUTES[r].open && !authorized(s, req)) {
		openai_error_set(&e, 401, NULL, "missing or wrong API key: send Authorization: Bearer <key>");
		reply_error(s, req, route, &e);
		return;
	}
	if (ROUTES[r].engine && !s->eng) {
		openai_error_set(&e, 503, NULL, "the engine is not ready");
		reply_error(s, req, route, &e);
		return;
	}
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
	if (len && !body) {
		openai_error_set(&e, 500, NULL, "out of memory reading the body");
		reply_error(s, req, route, &e);
		return;
	}
	switch (id) {
	case R_COMPLETIONS: handle_gen(s, req, route, OPENAI_API_COMPLETIONS, body, len); break;
	case R_CHAT: handle_gen(s, req, route, OPENAI_API_CHAT, body, len); break;
	case R_GENERATE: handle_gen(s, req, route, OPENAI_API_GENERATE, body, len); break;
	case R_MODELS: handle_models(s, req, route); break;
	case R_HEALTH: reply(s, req, route, 200, "text/plain", "", 0); break;
	case R_HEALTH_GEN: handle_health_generate(s, req, route); break;
	case R_MODEL_INFO: handle_model_info(s, req, route); break;
	case R_SERVER_INFO: handle_server_info(s, req, route); break;
	case R_FLUSH:
		engine_flush_cache(s->eng);
		LOGI("http", "/flush_cache: prefix cache emptied");
		reply(s, req, route, 200, "text/plain", "Cache flushed.\n", 15);
		break;
	case R_TOKENIZE: handle_tokenize(s, req, route, body, len); break;
	case R_DETOKENIZE: handle_detokenize(s, req, route, body, len); break;
	case R_TEMPLATE: handle_apply_template(s, req, route, body, len); break;
	case R_ABORT: handle_abort(s, req, route, body, len); break;
	case R_METRICS: handle_metrics(s, req, route); break;
	}
}

/* ---------------------------------------------------------------- life cycle */

/* libevent's own warnings go through our log, one line each. */
static void on_stop(evutil_socket_t fd, short what, void *arg)
{
	http_server *s = arg;
	if (fd == SIGINT || fd == SIGTERM)
		LOGI("http", "signal %d: shutting down", (int)fd);
	event_base_loopexit(s->base, NULL);
}

http_server *http_server_create(const http_config *cfg, char err[ERR_LEN])
{
	if (evinit(err) < 0)
		return NULL;
	http_server *s = alloc_zeroed(1, sizeof(*s));
	if (!s) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	s->cfg = *cfg;
	if (!s->cfg.host)
		s->cfg.host = "127.0.0.1";
	if (!s->cfg.served_model_name)
		s->cfg.served_model_name = "default";
	if (!s->cfg.max_body_size)
		s->cfg.max_body_size = (size_t)32 << 20;
	if (!s->cfg.max_header_size)
		s->cfg.max_header_size = (size_t)64 << 10;
	if (!s->cfg.idle_timeout_s)
		s->cfg.idle_timeout_s = 60;
	s->model.max_prompt_tokens = cfg->max_prompt_tokens;
	s->model.max_new_tokens = cfg->max_new_tokens;
	s->model.max_n = cfg->max_n;
	s->model.max_stop = cfg->max_stop;
	s->created = (int64_t)time(NULL);
	s->rng = (uint64_t)clock_now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
	s->model.chat_family = cfg->chat_family;
	if (!(s->base = event_base_new()) || !(s->http = evhttp_new(s->base)) ||
	    !(s->wake = event_new(s->base, -1, 0, on_wake, s)) || !(s->stop_ev = event_new(s->base, -1, 0, on_stop, s)) ||
	    !(s->scratch = evbuffer_new()) || !(s->met = metrics_create(s->cfg.served_model_name)) ||
	    !(s->evbuf = alloc_array(POLL_BATCH, sizeof(engine_event)))) {
		err_set(err, ERR_NOMEM, "out of memory setting up the HTTP server");
		goto fail;
	}
	/* twice our limits: between one and two times we answer (JSON, counted),
	   beyond libevent cuts the request off while reading it */
	size_t hard_body = s->cfg.max_body_size > SIZE_MAX / 4 ? s->cfg.max_body_size : 2 * s->cfg.max_body_size;
	size_t hard_hdr = s->cfg.max_header_size > SIZE_MAX / 4 ? s->cfg.max_header_size : 2 * s->cfg.max_header_size;
	evhttp_set_max_body_size(s->http, (ev_ssize_t)(hard_body > (size_t)INT64_MAX ? (size_t)INT64_MAX : hard_body));
	evhttp_set_max_headers_size(s->http, (ev_ssize_t)(hard_hdr > (size_t)INT64_MAX ? (size_t)INT64_MAX : hard_hdr));
	if (s->cfg.idle_timeout_s > 0)
		evhttp_set_timeout(s->http, s->cfg.idle_timeout_s);
	evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
						    EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_flags(s->http, EVHTTP_SERVER_LINGERING_CLOSE);
	s->cutoff = (evinit_cutoff){ .fn = on_cutoff, .arg = s };
	evinit_watch_cutoffs(s->http, &s->cutoff);
	evhttp_set_gencb(s->http, on_request, s);
	if (!(s->sock = evhttp_bind_socket_with_handle(s->http, s->cfg.host, (ev_uint16_t)cfg->port))) {
		err_set(err, ERR_IO, "cannot listen on %s:%d (in use, or not an address of this host)", s->cfg.host,
			cfg->port);
		goto fail;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	evutil_socket_t fd = evhttp_bound_socket_get_fd(s->sock);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	return s;
fail:
	http_server_destroy(s);
	return NULL;
}

void http_server_attach(http_server *s, engine *e)
{
	s->eng = e;
	s->model.tok = engine_tokenizer(e);
	s->model.n_vocab = engine_hparams(e)->n_vocab;
	s->model.context_length = engine_context_length(e);
}

int http_server_port(const http_server *s)
{
	return s->port;
}

int http_server_run(http_server *s)
{
	signal(SIGPIPE, SIG_IGN);
	s->sigint = evsignal_new(s->base, SIGINT, on_stop, s);
	s->sigterm = evsignal_new(s->base, SIGTERM, on_stop, s);
	if (!s->sigint || !s->sigterm || evsignal_add(s->sigint, NULL) < 0 || evsignal_add(s->sigterm, NULL) < 0) {
		LOGE("http", "cannot install signal handlers");
		return ERR_IO;
	}
	LOGI("http", "serving %s on http://%s:%d", s->cfg.served_model_name, s->cfg.host, s->port);
	int rc = event_base_dispatch(s->base);
	event_free(s->sigint);
	event_free(s->sigterm);
	s->sigint = s->sigterm = NULL;
	return rc < 0 ? ERR_IO : 0;
}

void http_server_stop(http_server *s)
{
	event_active(s->stop_ev, EV_READ, 0);
}

void http_server_destroy(http_server *s)
{
	if (!s)
		return;
	while (s->calls) { /* the engine is gone: no events will come */
		call *c = s->calls;
		call_unwatch(c);
		c->req = NULL; /* evhttp_free below frees it with its connection */
		c->n_live = 0;
		call_free(c);
	}
	if (s->http)
		evhttp_free(s->http);
	if (s->wake)
		event_free(s->wake);
	if (s->stop_ev)
		event_free(s->stop_ev);
	if (s->scratch)
		evbuffer_free(s->scratch);
	if (s->base)
		event_base_free(s->base);
	metrics_destroy(s->met);
	alloc_free(s->evbuf);
	alloc_free(s);
}
