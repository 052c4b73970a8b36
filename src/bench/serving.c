/* serving.c - the bench_serving client loop, response parsing and report.
 *
 * Design. One thread drives everything through one httpc (a curl multi
 * handle): requests are started when their arrival time has passed and a
 * concurrency slot is free, and httpc_poll sleeps until network activity or
 * the next arrival, at most 50 ms. Each request is a `slot` holding its
 * serving_resp; curl hands body bytes to serving_resp_data, which frames
 * SSE lines and timestamps each one when it is parsed, as bench_serving's
 * `async for chunk in response.content` does. The send time is taken when
 * the request is handed to curl, so connection setup counts in TTFT (as it
 * does for bench_serving, which opens a session per request).
 *
 * Per request (serving_resp):
 *
 *   init --data--> [stream: each "data: {...}" line -> first text chunk sets
 *                   TTFT, later ones append ITLs; usage/meta_info set the
 *                   counts] --done--> success | error (HTTP status, broken
 *                   stream, error chunk, timeout, connection) -> fini
 *
 * A request that failed keeps its error string; the summary counts it and
 * keeps it out of every mean.
 *
 * The run:
 *
 *   resolve model, tokenizer -> workload_build -> arrivals
 *     -> warmup (all at once, min(output, 32) tokens; one success needed)
 *     -> [flush_cache] -> 1 s pause -> drive() every request -> summary
 *     -> table, errors, JSON line, plots
 *
 * Left out: SGLang's profiler hooks (/start_profile), LoRA names,
 * multi-turn and image datasets, --pd-separated (a router in front hides PD
 * from the client; the flag is accepted and recorded).
 */
#include "bench/serving.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "bench/httpc.h"
#include "bench/plot.h"

int serving_api_of(const char *b)
{
	static const struct {
		const char *name;
		serving_api api;
	} T[] = {
		{ "sglang", SERVING_API_GENERATE },	       { "sglang-native", SERVING_API_GENERATE },
		{ "openai", SERVING_API_COMPLETIONS },     { "sglang-oai", SERVING_API_COMPLETIONS },
		{ "vllm", SERVING_API_COMPLETIONS },	       { "lmdeploy", SERVING_API_COMPLETIONS },
		{ "openai-chat", SERVING_API_CHAT },	       { "sglang-oai-chat", SERVING_API_CHAT },
		{ "vllm-chat", SERVING_API_CHAT },	       { "lmdeploy-chat", SERVING_API_CHAT },
	};
	for (size_t i = 0; b && i < sizeof(T) / sizeof(T[0]); i++)
		if (!strcmp(b, T[i].name))
			return (int)T[i].api;
	return -1;
}

/* ---------------------------------------------------------------- one response */

#define ERROR_BODY_MAX 65536

void serving_resp_init(serving_resp *r, serving_api api, bool stream)
{
	memset(r, 0, sizeof(*r));
	r->api = api;
	r->stream = stream;
	r->output_tokens = -1;
	r->prompt_tokens = -1;
}

void serving_resp_fini(serving_resp *r)
{
	alloc_free(r->itl);
	alloc_free(r->text);
	alloc_free(r->error);
	alloc_free(r->buf);
	memset(r, 0, sizeof(*r));
}

static void fail(serving_resp *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(serving_resp *r, const char *fmt, ...)
{
	if (r->error)
		return; /* the first cause wins */
	char m[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof(m), fmt, ap);
	va_end(ap);
	r->error = alloc_strdup(m);
	if (!r->error)
		r->oom = true;
}

static bool grow_to(char **p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return true;
	size_t c = *cap ? *cap : 256;
	while (c < need)
		c *= 2;
	char *q = alloc_resize(*p, c);
	if (!q)
		return false;
	*p = q;
	*cap = c;
	return true;
}

static void buf_add(serving_resp *r, const char *p, size_t n)
{
	if (!grow_to(&r->buf, &r->buf_cap, r->buf_len + n + 1)) {
		r->oom = true;
		return;
	}
	memcpy(r->buf + r->buf_len, p, n);
	r->buf_len += n;
	r->buf[r->buf_len] = '\0';
}

static void text_put(serving_resp *r, const char *s, size_t n, bool replace)
{
	size_t at = replace ? 0 : r->text_len;
	if (!grow_to(&r->text, &r->text_cap, at + n + 1)) {
		r->oom = true;
		return;
	}
	memcpy(r->text + at, s, n);
	r->text_len = at + n;
	r->text[r->text_len] = '\0';
}

static void itl_push(serving_resp *r, double v)
{
	if (r->n_itl == r->cap_itl) {
		size_t c = r->cap_itl ? 2 * r->cap_itl : 64;
		double *q = alloc_resize_array(r->itl, c, sizeof(double));
		if (!q) {
			r->oom = true;
			return;
		}
		r->itl = q;
		r->cap_itl = c;
	}
	r->itl[r->n_itl++] = v;
}

static json_object *get(json_object *o, const char *k)
{
	json_object *v = NULL;
	if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, k, &v))
		return NULL;
	return v;
}

static int get_int(json_object *o, const char *k, int dflt)
{
	json_object *v = get(o, k);
	if (!v || !json_object_is_type(v, json_type_int))
		return dflt;
	int64_t x = json_object_get_int64(v);
	return x < 0 || x > INT32_MAX ? dflt : (int)x;
}

static const char *get_str(json_object *o, const char *k, size_t *len)
{
	json_object *v = get(o, k);
	if (!v || !json_object_is_type(v, json_type_string)) {
		*len = 0;
		return NULL;
	}
	*len = (size_t)json_object_get_string_len(v);
	return json_object_get_string(v);
}

/* usage {prompt_tokens, completion_tokens} or meta_info {...}: same names */
static void take_counts(serving_resp *r, json_object *u)
{
	if (!u)
		return;
	r->output_tokens = get_int(u, "completion_tokens", r->output_tokens);
	r->prompt_tokens = get_int(u, "prompt_tokens", r->prompt_tokens);
}

static json_object *choice0(json_object *o)
{
	json_object *c = get(o, "choices");
	if (!c || !json_object_is_type(c, json_type_array) || json_object_array_length(c) == 0)
		return NULL;
	return json_object_array_get_idx(c, 0);
}

/* A text chunk arrived at t: TTFT for the first, `k` equal ITLs after. */
static void text_chunk(serving_resp *r, double t, int k)
{
	if (!r->got_first) {
		r->got_first = true;
		r->ttft_s = t;
	} else {
		double gap = (t - r->t_recent) / (double)k;
		for (int i = 0; i < k; i++)
			itl_push(r, gap);
	}
	r->t_recent = t;
}

static bool chunk_error(serving_resp *r, json_object *o)
{
	json_object *e = get(o, "error");
	if (!e || json_object_is_type(e, json_type_null))
		return false;
	size_t n;
	const char *m = get_str(e, "message", &n);
	if (!m && json_object_is_type(e, json_type_string))
		m = json_object_get_string(e);
	fail(r, "error in stream: %.300s", m ? m : json_object_to_json_string(e));
	return true;
}

static void on_chunk(serving_resp *r, double t, json_object *o)
{
	if (chunk_error(r, o))
		return;
	size_t n = 0;
	const char *s;
	switch (r->api) {
	case SERVING_API_GENERATE: {
		json_object *meta = get(o, "meta_info");
		take_counts(r, meta);
		s = get_str(o, "text", &n);
		if (!s || !n)
			return;
		int out = get_int(meta, "completion_tokens", r->last_len + 1);
		text_put(r, s, n, true); /* cumulative */
		if (r->got_first) {
			int k = out - r->last_len;
			if (k <= 0)
				return; /* bench_serving: no new token, no ITL, same "recent" */
			text_chunk(r, t, k);
		} else {
			text_chunk(r, t, 1);
		}
		r->last_len = out;
		return;
	}
	case SERVING_API_COMPLETIONS:
		take_counts(r, get(o, "usage"));
		s = get_str(choice0(o), "text", &n);
		break;
	case SERVING_API_CHAT:
		take_counts(r, get(o, "usage"));
		s = get_str(get(choice0(o), "delta"), "content", &n);
		break;
	default:
		return;
	}
	if (s && n) {
		text_chunk(r, t, 1);
		text_put(r, s, n, false);
	}
}

static void on_line(serving_resp *r, double t, char *p, size_t n)
{
	while (n && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	while (n && (*p == ' ' || *p == '\t')) {
		p++;
		n--;
	}
	if (!n || *p == ':') /* blank separator or SSE comment */
		return;
	if (n >= 5 && !memcmp(p, "data:", 5)) {
		p += 5;
		n -= 5;
		if (n && *p == ' ') {
			p++;
			n--;
		}
	}
	r->latency_s = t;
	if (n == 6 && !memcmp(p, "[DONE]", 6))
		return;
	json_tokener *tok = json_tokener_new();
	json_object *o = tok ? json_tokener_parse_ex(tok, p, (int)n) : NULL;
	if (tok && json_tokener_get_error(tok) != json_tokener_success) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	if (!o) {
		fail(r, "stream chunk is not JSON: %.120s", p);
		return;
	}
	on_chunk(r, t, o);
	json_object_put(o);
}

void serving_resp_data(serving_resp *r, double t, long status, const char *p, size_t n)
{
	r->status = status;
	if (status != 200) {
		if (r->buf_len < ERROR_BODY_MAX)
			buf_add(r, p, n < ERROR_BODY_MAX - r->buf_len ? n : ERROR_BODY_MAX - r->buf_len);
		return;
	}
	if (!r->stream) {
		buf_add(r, p, n);
		return;
	}
	while (n) {
		const char *nl = memchr(p, '\n', n);
		size_t k = nl ? (size_t)(nl - p) : n;
		buf_add(r, p, k);
		if (!nl)
			return;
		if (r->buf)
			on_line(r, t, r->buf, r->buf_len);
		r->buf_len = 0;
		p += k + 1;
		n -= k + 1;
	}
}

/* The message of an error body: {"error": {"message"}}, {"message"},
   {"detail"}, {"error": "..."}, else the body's start. */
static void http_error(serving_resp *r, long status)
{
	const char *body = r->buf ? r->buf : "";
	json_object *o = json_tokener_parse(body), *e;
	const char *m = NULL;
	size_t n;
	if (o) {
		if ((e = get(o, "error")) && json_object_is_type(e, json_type_object))
			m = get_str(e, "message", &n);
		else if (e && json_object_is_type(e, json_type_string))
			m = json_object_get_string(e);
		if (!m)
			m = get_str(o, "message", &n);
		if (!m)
			m = get_str(o, "detail", &n);
	}
	fail(r, "HTTP %ld: %.300s", status, m ? m : body);
	json_object_put(o);
}

static void whole_body(serving_resp *r, double t)
{
	json_object *o = r->buf ? json_tokener_parse(r->buf) : NULL;
	if (!o) {
		fail(r, "response is not JSON: %.120s", r->buf ? r->buf : "");
		return;
	}
	if (chunk_error(r, o)) {
		json_object_put(o);
		return;
	}
	size_t n = 0;
	const char *s = NULL;
	if (r->api == SERVING_API_GENERATE) {
		take_counts(r, get(o, "meta_info"));
		s = get_str(o, "text", &n);
	} else {
		take_counts(r, get(o, "usage"));
		json_object *c = choice0(o);
		s = r->api == SERVING_API_CHAT ? get_str(get(c, "message"), "content", &n) : get_str(c, "text", &n);
	}
	if (s)
		text_put(r, s, n, true);
	r->ttft_s = r->latency_s = t; /* non-streaming: TTFT is the whole latency */
	r->got_first = true;
	json_object_put(o);
}

void serving_resp_done(serving_resp *r, double t, int rc, long status, const char *msg, double timeout_s)
{
	if (rc == ERR_TIMEOUT) {
		r->timeout = true;
		fail(r, "timeout: no complete response within %g s", timeout_s);
	} else if (rc < 0) {
		fail(r, "connection: %s", msg && *msg ? msg : "failed");
	} else if (status != 200) {
		http_error(r, status);
	} else if (r->stream) {
		if (r->buf_len && r->buf) /* a last line without its newline */
			on_line(r, t, r->buf, r->buf_len);
		r->buf_len = 0;
	} else {
		whole_body(r, t);
	}
	if (r->oom)
		fail(r, "out of memory in the client");
	if (!r->text && !r->oom)
		text_put(r, "", 0, true);
	r->success = r->error == NULL;
}

/* ---------------------------------------------------------------- the run */

typedef struct run run;

typedef struct {
	run *R;
	const workload_req *q;
	int output_len;  /* asked for */
	double t_send;   /* clock seconds */
	double start_s;  /* since the phase started */
	bool started, done;
	serving_resp resp;
} slot;

struct run {
	const serving_config *cfg;
	char url[1024];
	char model[512];
	const char *api_key;
	json_object *extra;
	httpc *h;
	int inflight;
	size_t finished;
	bool warned_ids;
};

static char *body_for(run *R, const slot *s, size_t *len)
{
	const serving_config *c = R->cfg;
	const workload_req *q = s->q;
	bool ids = c->tokenize_prompt && q->ids && c->api != SERVING_API_CHAT;
	json_object *o = json_object_new_object(), *prompt;
	if (ids) {
		prompt = json_object_new_array_ext(q->n_ids);
		for (int i = 0; i < q->n_ids; i++)
			json_object_array_add(prompt, json_object_new_int(q->ids[i]));
	} else {
		prompt = json_object_new_string(q->prompt);
	}
	switch (c->api) {
	case SERVING_API_GENERATE: {
		json_object_object_add(o, ids ? "input_ids" : "text", prompt);
		json_object *sp = json_object_new_object();
		json_object_object_add(sp, "temperature", json_object_new_double(0.0));
		json_object_object_add(sp, "max_new_tokens", json_object_new_int(s->output_len));
		json_object_object_add(sp, "ignore_eos", json_object_new_boolean(c->ignore_eos));
		json_object_object_add(o, "sampling_params", sp);
		json_object_object_add(o, "stream", json_object_new_boolean(c->stream));
		json_object_object_add(o, "return_logprob", json_object_new_boolean(c->return_logprob));
		json_object_object_add(o, "logprob_start_len", json_object_new_int(-1));
		break;
	}
	case SERVING_API_COMPLETIONS:
		json_object_object_add(o, "model", json_object_new_string(R->model));
		json_object_object_add(o, "prompt", prompt);
		json_object_object_add(o, "temperature", json_object_new_double(0.0));
		json_object_object_add(o, "best_of", json_object_new_int(1));
		json_object_object_add(o, "max_tokens", json_object_new_int(s->output_len));
		json_object_object_add(o, "stream", json_object_new_boolean(c->stream));
		json_object_object_add(o, "ignore_eos", json_object_new_boolean(c->ignore_eos));
		break;
	case SERVING_API_CHAT: {
		json_object *msgs = json_object_new_array(), *m = json_object_new_object();
		json_object_object_add(m, "role", json_object_new_string("user"));
		json_object_object_add(m, "content", prompt);
		json_object_array_add(msgs, m);
		json_object_object_add(o, "model", json_object_new_string(R->model));
		json_object_object_add(o, "messages", msgs);
		json_object_object_add(o, "temperature", json_object_new_double(0.0));
		json_object_object_add(o, "max_tokens", json_object_new_int(s->output_len));
		json_object_object_add(o, "stream", json_object_new_boolean(c->stream));
		json_object_object_add(o, "ignore_eos", json_object_new_boolean(c->ignore_eos));
		break;
	}
	}
	if (c->stream && c->api != SERVING_API_GENERATE) {
		json_object *so = json_object_new_object();
		json_object_object_add(so, "include_usage", json_object_new_boolean(1));
		json_object_object_add(o, "stream_options", so);
	}
	if (R->extra) {
		json_object_object_foreach(R->extra, k, v) json_object_object_add(o, k, json_object_get(v));
	}
	size_t n = 0;
	const char *j = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	char *out = j ? alloc_strndup(j, n) : NULL;
	*len = out ? n : 0;
	json_object_put(o);
	return out;
}

static void on_data(void *user, long status, const char *p, size_t n)
{
	slot *s = user;
	serving_resp_data(&s->resp, clock_now_s() - s->t_send, status, p, n);
}

static void on_done(void *user, int rc, long status, const char *msg)
{
	slot *s = user;
	serving_resp_done(&s->resp, clock_now_s() - s->t_send, rc, status, msg, s->R->cfg->timeout_s);
	s->done = true;
	s->R->inflight--;
	s->R->finished++;
}

static const httpc_callbacks CALLBACKS = { on_data, on_done };

static void start(run *R, slot *s, double t0)
{
	char err[ERR_LEN] = "";
	size_t len = 0;
	s->started = true;
	serving_resp_init(&s->resp, R->cfg->api, R->cfg->stream);
	char *body = body_for(R, s, &len);
	s->t_send = clock_now_s();
	s->start_s = s->t_send - t0;
	if (!body) {
		fail(&s->resp, "out of memory building the request");
	} else if (httpc_start(R->h, R->url, body, len, R->api_key, R->cfg->timeout_s, &CALLBACKS, s, err) < 0) {
		fail(&s->resp, "cannot start the request: %s", err);
	} else {
		R->inflight++;
		alloc_free(body);
		return;
	}
	alloc_free(body);
	s->resp.success = false;
	s->done = true;
	R->finished++;
}

/* ---------------------------------------------------------------- progress */

typedef struct {
	bool on, tty;
	size_t total, shown;
	double t0, last_draw;
	int last_decile;
} progress;

static void fmt_hms(char *b, size_t n, double s)
{
	if (!isfinite(s) || s < 0)
		s = 0;
	long t = (long)(s + 0.5);
	if (t >= 3600)
		snprintf(b, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
	else
		snprintf(b, n, "%02ld:%02ld", t / 60, t % 60);
}

static void progress_draw(progress *p, size_t done, bool final)
{
	if (!p->on)
		return;
	double now = clock_now_s(), el = now - p->t0;
	if (!p->tty) {
		int dec = p->total ? (int)(done * 10 / p->total) : 10;
		if (dec > p->last_decile || (final && done != p->shown)) {
			fprintf(stderr, "bench: %zu/%zu requests done in %.1f s\n", done, p->total, el);
			p->last_decile = dec;
			p->shown = done;
		}
		return;
	}
	if (!final && done == p->shown && now - p->last_draw < 0.1)
		return;
	p->shown = done;
	p->last_draw = now;
	double frac = p->total ? (double)done / (double)p->total : 1;
	static const char *const part[] = { " ", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b", "\u258a", "\u2589" };
	char bar[256] = "";
	int width = 30, full = (int)(frac * width), k = 0;
	int eighth = (int)((frac * width - full) * 8);
	for (int i = 0; i < width; i++) {
		const char *c = i < full ? "\u2588" : i == full ? part[eighth] : " ";
		k += snprintf(bar + k, sizeof(bar) - (size_t)k, "%s", c);
	}
	double rate = el > 0 ? (double)done / el : 0;
	char a[32], b[32];
	fmt_hms(a, sizeof(a), el);
	fmt_hms(b, sizeof(b), rate > 0 ? (double)(p->total - done) / rate : 0);
	fprintf(stderr, "\r%3.0f%%|%s| %zu/%zu [%s<%s, %6.2fit/s]", frac * 100, bar, done, p->total, a, b, rate);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

/* Send slots[0..n) at t0 + arr[i] with at most maxc in flight; wait for all.
   Returns 0 or ERR_IO (the multi handle failed). */
static int drive(run *R, slot *slots, size_t n, const double *arr, int maxc, progress *pg, double *t0_out,
		 double *dur, char err[ERR_LEN])
{
	R->finished = 0;
	R->inflight = 0;
	double t0 = clock_now_s();
	*t0_out = t0;
	if (pg) {
		pg->t0 = t0;
		pg->total = n;
		progress_draw(pg, 0, false);
	}
	size_t arrived = 0, sent = 0;
	while (R->finished < n) {
		double now = clock_now_s() - t0;
		while (arrived < n && (!arr || arr[arrived] <= now))
			arrived++;
		while (sent < arrived && (maxc <= 0 || R->inflight < maxc))
			start(R, &slots[sent++], t0);
		if (R->finished >= n)
			break;
		int wait_ms = 50;
		if (arrived < n && arr) {
			double dt = arr[arrived] - (clock_now_s() - t0);
			wait_ms = dt <= 0 ? 0 : dt >= 0.05 ? 50 : (int)ceil(dt * 1000);
		}
		if (httpc_poll(R->h, wait_ms) < 0)
			return err_set(err, ERR_IO, "the HTTP client failed (curl multi)");
		if (pg)
			progress_draw(pg, R->finished, false);
	}
	*dur = clock_now_s() - t0;
	if (pg)
		progress_draw(pg, n, true);
	return 0;
}

/* ---------------------------------------------------------------- setup */

static json_object *fetch_json(run *R, const char *path, char err[ERR_LEN])
{
	char url[1100];
	snprintf(url, sizeof(url), "%s%s", R->cfg->base_url, path);
	long status = 0;
	char *resp = NULL;
	size_t len = 0;
	if (httpc_fetch("GET", url, NULL, 0, R->api_key, 30, &status, &resp, &len, err) < 0)
		return NULL;
	json_object *o = status == 200 ? json_tokener_parse(resp) : NULL;
	if (!o)
		err_set(err, ERR_PROTO, "GET %s: HTTP %ld: %.120s", url, status, resp);
	alloc_free(resp);
	return o;
}

static int resolve_model(run *R, char err[ERR_LEN])
{
	const serving_config *c = R->cfg;
	if (c->model && *c->model) {
		snprintf(R->model, sizeof(R->model), "%s", c->model);
		return 0;
	}
	char url[1100], *resp = NULL;
	snprintf(url, sizeof(url), "%s/v1/models", c->base_url);
	long status = 0;
	size_t len = 0;
	int rc = httpc_fetch("GET", url, NULL, 0, R->api_key, 30, &status, &resp, &len, err);
	if (rc < 0) { /* nothing answers there: no point going on */
		char why[ERR_LEN];
		snprintf(why, sizeof(why), "%s", err);
		return err_set(err, rc, "cannot reach the server: %s", why);
	}
	json_object *o = status == 200 ? json_tokener_parse(resp) : NULL, *d = get(o, "data");
	if (!o)
		snprintf(err, ERR_LEN, "HTTP %ld", status);
	alloc_free(resp);
	size_t n = 0;
	const char *id = d && json_object_is_type(d, json_type_array) && json_object_array_length(d) ?
				 get_str(json_object_array_get_idx(d, 0), "id", &n) :
				 NULL;
	if (id)
		snprintf(R->model, sizeof(R->model), "%s", id);
	json_object_put(o);
	if (!id && c->api != SERVING_API_GENERATE)
		return err_set(err, ERR_PROTO, "no model: %s/v1/models gave none (%s); pass --model",
			       c->base_url, err[0] ? err : "empty list");
	if (!id)
		snprintf(R->model, sizeof(R->model), "default");
	return 0;
}

static bool is_gguf_file(const char *p)
{
	size_t n = p ? strlen(p) : 0;
	return n > 5 && !strcmp(p + n - 5, ".gguf") && access(p, R_OK) == 0;
}

static workload_tokenizer *open_tokenizer(run *R, char err[ERR_LEN])
{
	const serving_config *c = R->cfg;
	const char *path = c->tokenizer && *c->tokenizer ? c->tokenizer : is_gguf_file(R->model) ? R->model : NULL;
	if (path) {
		printf("Tokenizer: %s\n", path);
		return workload_tokenizer_open_gguf(path, err);
	}
	printf("Tokenizer: the server's (%s/tokenize)\n", c->base_url);
	workload_tokenizer *t = workload_tokenizer_open_remote(c->base_url, R->api_key, err);
	if (!t) {
		char e2[ERR_LEN];
		snprintf(e2, sizeof(e2), "%s (pass --tokenizer MODEL.gguf to tokenize locally)", err);
		snprintf(err, ERR_LEN, "%s", e2);
	}
	return t;
}

static const char *api_path(serving_api a)
{
	return a == SERVING_API_GENERATE ? "/generate" : a == SERVING_API_COMPLETIONS ? "/v1/completions" :
											 "/v1/chat/completions";
}

/* ---------------------------------------------------------------- report */

static json_object *dbl(double v)
{
	return json_object_new_double(v);
}

static void add_dist(json_object *o, const char *name, const summary_dist *d, bool itl)
{
	char k[64];
	struct {
		const char *pre;
		double v;
	} f[] = { { "mean", d->mean }, { "median", d->median }, { "std", d->std }, { "p90", d->p90 },
		  { "p95", d->p95 },   { "p99", d->p99 },	{ "max", d->max } };
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		if (!itl && !strcmp(f[i].pre, "max"))
			continue;
		snprintf(k, sizeof(k), "%s_%s_ms", f[i].pre, name);
		json_object_object_add(o, k, dbl(f[i].v * 1e3));
	}
}

static int write_json(run *R, const summary *s, const summary_req *rq, const slot *slots, size_t n,
		      char err[ERR_LEN])
{
	const serving_config *c = R->cfg;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "tag", c->tag ? json_object_new_string(c->tag) : NULL);
	json_object_object_add(o, "backend", json_object_new_string(c->backend));
	json_object_object_add(o, "dataset_name", json_object_new_string(c->dataset_name));
	json_object_object_add(o, "request_rate", dbl(c->request_rate));
	json_object_object_add(o, "max_concurrency", c->max_concurrency > 0 ? json_object_new_int(c->max_concurrency) : NULL);
	json_object_object_add(o, "sharegpt_output_len",
			       c->data.sharegpt_output_len ? json_object_new_int(c->data.sharegpt_output_len) : NULL);
	json_object_object_add(o, "random_input_len", json_object_new_int(c->data.random_input_len));
	json_object_object_add(o, "random_output_len", json_object_new_int(c->data.random_output_len));
	json_object_object_add(o, "random_range_ratio", dbl(c->data.random_range_ratio));
	json_object_object_add(o, "num_prompts", json_object_new_int64((int64_t)n));
	json_object_object_add(o, "seed", json_object_new_int64((int64_t)c->data.seed));
	json_object_object_add(o, "model", json_object_new_string(R->model));
	char e[ERR_LEN];
	json_object_object_add(o, "server_info", fetch_json(R, "/get_server_info", e));
	json_object_object_add(o, "duration", dbl(s->duration_s));
	json_object_object_add(o, "completed", json_object_new_int64((int64_t)s->completed));
	json_object_object_add(o, "failed", json_object_new_int64((int64_t)s->failed));
	json_object_object_add(o, "timeouts", json_object_new_int64((int64_t)s->timeouts));
	json_object_object_add(o, "total_input_tokens", json_object_new_int64(s->total_input));
	json_object_object_add(o, "total_output_tokens", json_object_new_int64(s->total_output));
	json_object_object_add(o, "request_throughput", dbl(s->request_throughput));
	json_object_object_add(o, "input_throughput", dbl(s->input_throughput));
	json_object_object_add(o, "output_throughput", dbl(s->output_throughput));
	json_object_object_add(o, "total_throughput", dbl(s->total_throughput));
	add_dist(o, "e2e_latency", &s->e2e, false);
	add_dist(o, "ttft", &s->ttft, false);
	add_dist(o, "tpot", &s->tpot, false);
	add_dist(o, "itl", &s->itl, true);
	json_object_object_add(o, "concurrency", dbl(s->concurrency));
	json_object_object_add(o, "max_output_tokens_per_s", dbl(s->max_output_tokens_per_s));
	json_object_object_add(o, "max_concurrent_requests", json_object_new_int(s->max_concurrent_requests));
	json_object_object_add(o, "slo_ttft_ms", c->slo.ttft_ms > 0 ? dbl(c->slo.ttft_ms) : NULL);
	json_object_object_add(o, "slo_tpot_ms", c->slo.tpot_ms > 0 ? dbl(c->slo.tpot_ms) : NULL);
	json_object_object_add(o, "slo_e2e_ms", c->slo.e2e_ms > 0 ? dbl(c->slo.e2e_ms) : NULL);
	json_object_object_add(o, "good_requests", s->has_slo ? json_object_new_int64((int64_t)s->good) : NULL);
	json_object_object_add(o, "request_goodput", s->has_slo ? dbl(s->request_goodput) : NULL);
	json_object_object_add(o, "slo_attainment", s->has_slo ? dbl(s->slo_attainment) : NULL);
	/* per-request arrays, bench_serving's names (+ start_times, e2e_latencies) */
	json_object *in = json_object_new_array(), *out = json_object_new_array(), *tt = json_object_new_array();
	json_object *it = json_object_new_array(), *e2 = json_object_new_array(), *st = json_object_new_array();
	json_object *er = json_object_new_array(), *tx = c->output_details ? json_object_new_array() : NULL;
	for (size_t i = 0; i < n; i++) {
		json_object_array_add(in, json_object_new_int(rq[i].prompt_len));
		json_object_array_add(out, json_object_new_int(rq[i].success ? rq[i].output_len : 0));
		json_object_array_add(tt, dbl(rq[i].ttft_s));
		json_object *l = json_object_new_array_ext((int)rq[i].n_itl);
		for (size_t j = 0; j < rq[i].n_itl; j++)
			json_object_array_add(l, dbl(rq[i].itl[j]));
		json_object_array_add(it, l);
		json_object_array_add(e2, dbl(rq[i].success ? rq[i].latency_s : 0));
		json_object_array_add(st, dbl(rq[i].start_s));
		json_object_array_add(er, json_object_new_string(rq[i].error ? rq[i].error : ""));
		if (tx)
			json_object_array_add(tx, json_object_new_string(slots[i].resp.text ? slots[i].resp.text : ""));
	}
	json_object_object_add(o, "input_lens", in);
	json_object_object_add(o, "output_lens", out);
	json_object_object_add(o, "ttfts", tt);
	json_object_object_add(o, "itls", it);
	json_object_object_add(o, "e2e_latencies", e2);
	json_object_object_add(o, "start_times", st);
	if (tx)
		json_object_object_add(o, "generated_texts", tx);
	json_object_object_add(o, "errors", er);
	int rc = 0;
	FILE *f = fopen(c->output_file, "a");
	if (!f) {
		rc = err_set(err, ERR_IO, "%s: %s", c->output_file, strerror(errno));
	} else {
		fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
		if (ferror(f) | fclose(f))
			rc = err_set(err, ERR_IO, "%s: write failed", c->output_file);
	}
	json_object_put(o);
	return rc;
}

/* ---------------------------------------------------------------- serving_run */

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - floor(s)) * 1e9) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static int post_flush(run *R, char err[ERR_LEN])
{
	char url[1100], *resp = NULL;
	snprintf(url, sizeof(url), "%s/flush_cache", R->cfg->base_url);
	long status = 0;
	size_t len = 0;
	int rc = httpc_fetch("POST", url, "", 0, R->api_key, 60, &status, &resp, &len, err);
	alloc_free(resp);
	if (rc == 0 && status != 200)
		LOGW("bench", "POST %s: HTTP %ld (continuing)", url, status);
	return rc;
}

int serving_run(const serving_config *c, char err[ERR_LEN])
{
	run R = { .cfg = c };
	workload w = { 0 };
	workload_tokenizer *tok = NULL;
	slot *slots = NULL, *warm = NULL;
	double *arr = NULL;
	summary_req *rq = NULL;
	int rc = 0;
	size_t n = 0;

	R.api_key = c->api_key && *c->api_key ? c->api_key : getenv("OPENAI_API_KEY");
	snprintf(R.url, sizeof(R.url), "%s%s", c->base_url, api_path(c->api));
	if (c->extra_request_body && *c->extra_request_body) {
		R.extra = json_tokener_parse(c->extra_request_body);
		if (!R.extra || !json_object_is_type(R.extra, json_type_object)) {
			rc = err_set(err, ERR_INVAL, "--extra-request-body: not a JSON object");
			goto done;
		}
	}
	if ((rc = resolve_model(&R, err)) < 0)
		goto done;
	if (!(tok = open_tokenizer(&R, err))) {
		rc = ERR_INVAL;
		goto done;
	}
	if ((rc = workload_build(&c->data, tok, &w, err)) < 0)
		goto done;
	workload_tokenizer_close(tok);
	tok = NULL;
	n = w.n;
	if (n == 0) {
		rc = err_set(err, ERR_INVAL, "the dataset gave no requests");
		goto done;
	}
	if (w.unsettled)
		LOGW("bench", "%d random prompts did not settle on their exact token count; their real counts are used",
		     w.unsettled);
	int64_t tin = 0, tout = 0;
	for (size_t i = 0; i < n; i++) {
		tin += w.req[i].prompt_len;
		tout += w.req[i].output_len;
	}
	printf("#Input tokens: %lld\n#Output tokens: %lld\n", (long long)tin, (long long)tout);
	if (c->tokenize_prompt && (c->api == SERVING_API_CHAT || !w.req[0].ids))
		LOGW("bench", "--tokenize-prompt: %s; sending text",
		     c->api == SERVING_API_CHAT ? "the chat API takes text" : "this dataset has no token ids");

	/* arrivals from their own stream, so the request rate does not change the prompts */
	if (!(arr = alloc_array(n, sizeof(double))) || !(slots = alloc_zeroed(n, sizeof(slot))) ||
	    !(rq = alloc_zeroed(n, sizeof(summary_req)))) {
		rc = err_set(err, ERR_NOMEM, "out of memory for %zu requests", n);
		goto done;
	}
	workload_rng ar;
	workload_rng_seed(&ar, c->data.seed ^ 0xA5A5A5A5DEADBEEFull);
	workload_arrivals(&ar, c->request_rate, n, arr);
	if (!(R.h = httpc_create(err))) {
		rc = ERR_NOMEM;
		goto done;
	}

	double t0, dur;
	if (c->warmup_requests > 0) {
		size_t nw = (size_t)c->warmup_requests;
		printf("Starting warmup with %zu sequences...\n", nw);
		fflush(stdout);
		if (!(warm = alloc_zeroed(nw, sizeof(slot)))) {
			rc = err_set(err, ERR_NOMEM, "out of memory");
			goto done;
		}
		for (size_t i = 0; i < nw; i++) {
			warm[i].R = &R;
			warm[i].q = &w.req[0];
			warm[i].output_len = w.req[0].output_len < 32 ? w.req[0].output_len : 32;
		}
		if ((rc = drive(&R, warm, nw, NULL, 0, NULL, &t0, &dur, err)) < 0)
			goto done;
		size_t ok = 0;
		for (size_t i = 0; i < nw; i++)
			ok += warm[i].resp.success;
		if (!ok) {
			rc = err_set(err, ERR_PROTO, "warmup failed - check the benchmark arguments. Error: %s",
				     warm[0].resp.error ? warm[0].resp.error : "?");
			goto done;
		}
		printf("Warmup completed with %zu sequences. Starting main benchmark run...\n", nw);
		fflush(stdout);
	}
	if (c->flush_cache && (rc = post_flush(&R, err)) < 0)
		goto done;
	if (c->warmup_requests > 0 || c->flush_cache)
		sleep_s(1.0);

	for (size_t i = 0; i < n; i++) {
		slots[i].R = &R;
		slots[i].q = &w.req[i];
		slots[i].output_len = w.req[i].output_len;
	}
	progress pg = { .on = !c->disable_tqdm, .tty = isatty(2) != 0, .last_decile = 0 };
	if ((rc = drive(&R, slots, n, arr, c->max_concurrency, &pg, &t0, &dur, err)) < 0)
		goto done;

	bool sent_ids = c->tokenize_prompt && c->api != SERVING_API_CHAT;
	for (size_t i = 0; i < n; i++) {
		const serving_resp *p = &slots[i].resp;
		const workload_req *q = &w.req[i];
		rq[i] = (summary_req){
			.success = p->success,
			.timeout = p->timeout,
			.start_s = slots[i].start_s,
			.ttft_s = p->ttft_s,
			.latency_s = p->latency_s,
			.itl = p->itl,
			.n_itl = p->n_itl,
			.prompt_len = p->prompt_tokens >= 0 ? p->prompt_tokens : sent_ids && q->ids ? q->n_ids : q->prompt_len,
			.output_len = p->output_tokens >= 0 ? p->output_tokens : q->output_len,
			.error = p->error ? p->error : "",
		};
	}
	summary s;
	if ((rc = summary_compute(rq, n, dur, &c->slo, &s)) < 0) {
		err_set(err, rc, "out of memory computing the summary");
		goto done;
	}
	summary_header hd = { c->backend, c->request_rate, c->max_concurrency, &c->slo };
	summary_print(stdout, &s, &hd);
	summary_print_errors(stdout, rq, n, 10);
	fflush(stdout);
	if (c->output_file && (rc = write_json(&R, &s, rq, slots, n, err)) < 0)
		goto done;
	if (c->plot_dir) {
		char title[256];
		snprintf(title, sizeof(title), "%s %s, rate %g, %zu requests%s%s", c->backend, c->dataset_name,
			 c->request_rate, n, c->tag ? ", " : "", c->tag ? c->tag : "");
		if ((rc = plot_write(c->plot_dir, title, rq, n, dur, err)) < 0)
			goto done;
		if (rc == 0)
			printf("Plots: %s/{ttft_cdf,tpot_cdf,itl_time,throughput}.png\n", c->plot_dir);
		rc = 0;
	}
	if (s.completed == 0)
		rc = err_set(err, ERR_PROTO, "every request failed (first error: %s)", rq[0].error);
done:
	for (size_t i = 0; slots && i < n; i++)
		if (slots[i].started)
			serving_resp_fini(&slots[i].resp);
	for (size_t i = 0; warm && i < (size_t)c->warmup_requests; i++)
		if (warm[i].started)
			serving_resp_fini(&warm[i].resp);
	httpc_destroy(R.h);
	alloc_free(rq);
	alloc_free(warm);
	alloc_free(slots);
	alloc_free(arr);
	workload_free(&w);
	workload_tokenizer_close(tok);
	json_object_put(R.extra);
	return rc;
}
