/* http_test.c - server/http and server/metrics in-process: a real
 * http_server on 127.0.0.1 (ephemeral port) run in a thread, fed raw
 * HTTP/1.1 bytes over a socket, answers read back byte for byte.
 *
 * Without an engine: routing (404, 405 + Allow), auth (401), body limit
 * (413), broken request lines, /metrics text format, and that routes needing
 * the engine say 503. With an engine on stories260K (or the synthesized
 * model when ../shared is absent): streamed == non-streamed text, bad input
 * while a good request streams, queue overload -> 503, a client that hangs
 * up mid-stream frees its pages, /abort_request, /health_generate,
 * /tokenize, /detokenize, /apply-template.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "kernels/kernels.h"
#include "model/synth.h"
#include "server/http.h"
#include "server/metrics.h"
#include "testutil.h"

/* ---- a server in a thread ------------------------------------------------- */

typedef struct {
	http_server *s;
	engine *e;
	pthread_t th;
	int port;
	char model[256];
	bool synth;
} srv;

static void *run_thread(void *arg)
{
	http_server_run(arg);
	return NULL;
}

static void model_path(srv *x)
{
	const char *p = test_shared("models/stories260K.gguf");
	if (p) {
		snprintf(x->model, sizeof(x->model), "%s", p);
		return;
	}
	char err[ERR_LEN];
	snprintf(x->model, sizeof(x->model), "/tmp/pdserve-http-test-%d.gguf", (int)getpid());
	synth_config cfg;
	synth_preset("tiny", &cfg);
	cr_assert(synth_write(&cfg, x->model, err) == 0, "synth_write: %s", err);
	x->synth = true;
}

/* ec NULL: no engine. */
static void srv_start(srv *x, const http_config *cfg_in, engine_config *ec)
{
	char err[ERR_LEN];
	memset(x, 0, sizeof(*x));
	http_config cfg = *cfg_in;
	cfg.port = 0;
	if (!cfg.served_model_name)
		cfg.served_model_name = "test-model";
	x->s = http_server_create(&cfg, err);
	cr_assert(x->s, "http_server_create: %s", err);
	x->port = http_server_port(x->s);
	cr_assert(x->port > 0);
	if (ec) {
		kern_init();
		model_path(x);
		ec->model_path = x->model;
		ec->n_threads = 2;
		ec->notify = http_server_notify;
		ec->notify_arg = x->s;
		x->e = engine_create(ec, err);
		cr_assert(x->e, "engine_create: %s", err);
		http_server_attach(x->s, x->e);
	}
	cr_assert(pthread_create(&x->th, NULL, run_thread, x->s) == 0);
}

static void srv_stop(srv *x)
{
	http_server_stop(x->s);
	pthread_join(x->th, NULL);
	engine_destroy(x->e);
	http_server_destroy(x->s);
	if (x->synth)
		unlink(x->model);
}

/* ---- raw HTTP client ---------------------------------------------------------- */

static int dial(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert(fd >= 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect: %s", strerror(errno));
	struct timeval tv = { .tv_sec = 30 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k <= 0)
			return; /* the server may close early (413): the answer is still there */
		p += k;
		n -= (size_t)k;
	}
}

typedef struct {
	int status;
	char *raw;  /* whole response */
	char *body; /* de-chunked body, NUL-terminated */
	size_t len;
} resp;

static void resp_free(resp *r)
{
	free(r->raw);
	free(r->body);
}

static resp parse_resp(char *raw, size_t n)
{
	resp r = { .raw = raw };
	cr_assert(n > 12 && !strncmp(raw, "HTTP/1.", 7), "not an HTTP response: %.60s", raw);
	r.status = atoi(raw + 9);
	char *b = strstr(raw, "\r\n\r\n");
	cr_assert(b, "no header end");
	b += 4;
	size_t blen = n - (size_t)(b - raw);
	r.body = calloc(1, blen + 1);
	bool chunked = false;
	for (char *h = raw; h < b; h = strstr(h, "\r\n") + 2)
		if (!strncasecmp(h, "Transfer-Encoding: chunked", 26))
			chunked = true;
	if (!chunked) {
		memcpy(r.body, b, blen);
		r.len = blen;
		return r;
	}
	char *p = b, *end = raw + n;
	while (p < end) {
		size_t k = strtoul(p, NULL, 16);
		p = strstr(p, "\r\n");
		cr_assert(p, "bad chunk header");
		p += 2;
		if (k == 0)
			break;
		cr_assert(p + k <= end, "chunk past the end");
		memcpy(r.body + r.len, p, k);
		r.len += k;
		p += k + 2;
	}
	return r;
}

/* Read until the server closes. */
static resp read_resp(int fd)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap + 1);
	for (;;) {
		if (n == cap)
			buf = realloc(buf, (cap *= 2) + 1);
		ssize_t k = recv(fd, buf + n, cap - n, 0);
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	buf[n] = '\0';
	return parse_resp(buf, n);
}

static resp raw_req(int port, const char *bytes, size_t n)
{
	int fd = dial(port);
	send_all(fd, bytes, n);
	resp r = read_resp(fd);
	close(fd);
	return r;
}

static char *fmt_req(const char *method, const char *path, const char *body, const char *headers, size_t *n)
{
	size_t blen = body ? strlen(body) : 0;
	char *s = malloc(blen + 4096);
	int k = snprintf(s, 4096, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
			 method, path, headers ? headers : "", blen);
	memcpy(s + k, body ? body : "", blen);
	*n = (size_t)k + blen;
	return s;
}

static resp req(int port, const char *method, const char *path, const char *body, const char *headers)
{
	size_t n;
	char *s = fmt_req(method, path, body, headers, &n);
	resp r = raw_req(port, s, n);
	free(s);
	return r;
}

static json_object *jbody(const resp *r)
{
	json_object *o = json_tokener_parse(r->body);
	cr_assert(o, "body is not JSON: %s", r->body);
	return o;
}

static const char *jstr_at(json_object *o, const char *a, const char *b)
{
	json_object *v = NULL, *w = NULL;
	cr_assert(json_object_object_get_ex(o, a, &v) && v, "no %s", a);
	if (!b)
		return json_object_get_string(v);
	cr_assert(json_object_object_get_ex(v, b, &w) && w, "no %s.%s", a, b);
	return json_object_get_string(w);
}

static void want_error(const resp *r, int status, const char *type)
{
	cr_assert(r->status == status, "status %d want %d: %s", r->status, status, r->body);
	json_object *o = jbody(r);
	cr_assert(!strcmp(jstr_at(o, "error", "type"), type), "type %s", jstr_at(o, "error", "type"));
	cr_assert(strlen(jstr_at(o, "error", "message")) > 0);
	json_object_put(o);
}

/* ---- without an engine ------------------------------------------------------- */

Test(http, routing_auth_limits_without_engine)
{
	http_config cfg = { .api_key = "sekret", .max_body_size = 1024, .max_header_size = 1024 };
	srv x;
	srv_start(&x, &cfg, NULL);
	const char *auth = "Authorization: Bearer sekret\r\n";

	resp r = req(x.port, "GET", "/nope", NULL, auth);
	want_error(&r, 404, "not_found_error");
	resp_free(&r);

	r = req(x.port, "DELETE", "/v1/completions", NULL, auth);
	want_error(&r, 405, "method_not_allowed");
	cr_assert(strstr(r.raw, "Allow: POST"), "Allow header: %s", r.raw);
	resp_free(&r);
	r = req(x.port, "POST", "/v1/models", "{}", auth);
	cr_assert(r.status == 405 && strstr(r.raw, "Allow: GET"));
	resp_free(&r);

	r = req(x.port, "POST", "/v1/completions", "{\"prompt\":\"x\"}", NULL);
	want_error(&r, 401, "authentication_error");
	resp_free(&r);
	r = req(x.port, "POST", "/v1/completions", "{\"prompt\":\"x\"}", "Authorization: Bearer wrong\r\n");
	want_error(&r, 401, "authentication_error");
	resp_free(&r);
	r = req(x.port, "POST", "/v1/completions", "{\"prompt\":\"x\"}", "Authorization: Bearer sekretX\r\n");
	want_error(&r, 401, "authentication_error");
	resp_free(&r);
	r = req(x.port, "POST", "/v1/completions", "{\"prompt\":\"x\"}", auth);
	want_error(&r, 503, "service_unavailable_error"); /* past auth; no engine */
	resp_free(&r);
	r = req(x.port, "POST", "/tokenize", "{\"prompt\":\"x\"}", auth);
	want_error(&r, 503, "service_unavailable_error");
	resp_free(&r);

	/* up to twice the size limits: our JSON 413 / 431, counted by reason */
	char mid[1501];
	memset(mid, 'a', 1500);
	mid[1500] = '\0';
	r = req(x.port, "POST", "/v1/completions", mid, auth);
	want_error(&r, 413, "invalid_request_error");
	cr_expect(strstr(r.body, "--max-body-size 1024"), "%s", r.body);
	resp_free(&r);
	char hdr[1600];
	snprintf(hdr, sizeof(hdr), "%sX-Big: %.1400s\r\n", auth, mid);
	r = req(x.port, "GET", "/v1/models", NULL, hdr);
	want_error(&r, 431, "invalid_request_error");
	resp_free(&r);
	r = req(x.port, "GET", "/metrics", NULL, NULL);
	cr_assert(r.status == 200);
	cr_expect(strstr(r.body, "reason=\"body_size\"} 1\n"), "%s", r.body);
	cr_expect(strstr(r.body, "reason=\"header_size\"} 1\n"), "%s", r.body);
	cr_expect(strstr(r.body, "reason=\"n\"} 0\n"), "%s", r.body);
	resp_free(&r);

	/* over --max-body-size: refused, by the declared length or by the bytes */
	char *big = malloc(5001);
	memset(big, 'a', 5000);
	big[5000] = '\0';
	r = req(x.port, "POST", "/v1/completions", big, auth);
	cr_assert(r.status == 413, "status %d", r.status);
	resp_free(&r);
	const char *chunked = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
			      "Authorization: Bearer sekret\r\nTransfer-Encoding: chunked\r\n\r\n";
	size_t cl = strlen(chunked);
	char *raw = malloc(cl + 6000);
	memcpy(raw, chunked, cl);
	int k = sprintf(raw + cl, "1388\r\n");
	memcpy(raw + cl + k, big, 5000);
	memcpy(raw + cl + k + 5000, "\r\n0\r\n\r\n", 7);
	r = raw_req(x.port, raw, cl + (size_t)k + 5007);
	cr_assert(r.status == 413, "chunked body over the limit: %d", r.status);
	resp_free(&r);
	free(raw);
	free(big);

	/* a broken request line gets libevent's 400; the server goes on */
	r = raw_req(x.port, "BLAH\r\n\r\n", 8);
	cr_assert(r.status == 400, "status %d", r.status);
	resp_free(&r);

	r = req(x.port, "GET", "/v1/models", NULL, auth);
	cr_assert(r.status == 200);
	json_object *o = jbody(&r);
	cr_assert(strstr(r.body, "\"id\":\"test-model\"") && strstr(r.body, "\"object\":\"list\""), "%s", r.body);
	json_object_put(o);
	resp_free(&r);

	/* /metrics is open, and counted what happened */
	r = req(x.port, "GET", "/metrics", NULL, NULL);
	cr_assert(r.status == 200 && strstr(r.raw, "Content-Type: text/plain; version=0.0.4"));
	cr_assert(strstr(r.body, "# TYPE sglang:time_to_first_token_seconds histogram\n"));
	cr_assert(strstr(r.body, "sglang:num_requests_total{model_name=\"test-model\"} 0\n"), "%s", r.body);
	cr_assert(strstr(r.body, "pdserve:http_requests_total{model_name=\"test-model\",route=\"other\",code=\"404\"} 1\n"));
	cr_assert(strstr(r.body, "route=\"/v1/completions\",code=\"401\"} 3\n"), "%s", r.body);
	cr_assert(!strstr(r.body, "sglang:num_running_reqs"), "no engine, no gauges");
	resp_free(&r);
	srv_stop(&x);
}

Test(http, bind_errors_are_one_sentence)
{
	char err[ERR_LEN];
	http_config cfg = { .host = "256.1.1.1", .port = 0 };
	cr_assert(http_server_create(&cfg, err) == NULL);
	cr_assert(strstr(err, "256.1.1.1"), "%s", err);
}

Test(metrics, text_format)
{
	metrics *m = metrics_create("a\"b\\c");
	metrics_ttft(m, 0.15);
	metrics_ttft(m, 1000);
	metrics_itl(m, 0.001);
	metrics_request m1 = { .prompt_tokens = 10, .completion_tokens = 5, .cached_tokens = 4, .e2e_s = 0.3,
			       .tpot_s = 0.01, .finish = ENGINE_FINISH_ABORT };
	metrics_request_done(m, &m1);
	metrics_http(m, "/generate", 200);
	metrics_http(m, "/weird", 404);
	engine_stats st = { .running = 2, .waiting = 1, .pages_total = 100, .pages_free = 60, .pages_cached = 10,
			    .page_size = 16, .max_total_tokens = 1600, .prompt_tokens = 100, .cached_tokens = 25 };
	char *t;
	size_t len;
	cr_assert(metrics_render(m, &st, &t, &len) == 0 && len == strlen(t));
	const char *lbl = "model_name=\"a\\\"b\\\\c\"";
	char want[512];
	snprintf(want, sizeof(want), "sglang:time_to_first_token_seconds_bucket{%s,le=\"0.1\"} 0\n", lbl);
	cr_assert(strstr(t, want), "%s", t);
	snprintf(want, sizeof(want), "sglang:time_to_first_token_seconds_bucket{%s,le=\"0.2\"} 1\n", lbl);
	cr_assert(strstr(t, want), "cumulative buckets");
	snprintf(want, sizeof(want), "sglang:time_to_first_token_seconds_bucket{%s,le=\"400\"} 1\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "sglang:time_to_first_token_seconds_bucket{%s,le=\"+Inf\"} 2\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "sglang:time_to_first_token_seconds_count{%s} 2\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "sglang:prompt_tokens_total{%s} 10\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "sglang:num_aborted_requests_total{%s} 1\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "sglang:num_used_tokens{%s} 480\n", lbl);
	cr_assert(strstr(t, want), "(100 - 60 - 10) pages x 16");
	snprintf(want, sizeof(want), "sglang:token_usage{%s} 0.29999999999999999\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "sglang:cache_hit_rate{%s} 0.25\n", lbl);
	cr_assert(strstr(t, want));
	snprintf(want, sizeof(want), "pdserve:http_requests_total{%s,route=\"other\",code=\"404\"} 1\n", lbl);
	cr_assert(strstr(t, want));
	/* every sample line is NAME{labels} VALUE */
	for (char *line = t; *line; line = strchr(line, '\n') + 1) {
		if (*line == '#')
			continue;
		char *sp = strchr(line, ' '), *nl = strchr(line, '\n');
		cr_assert(sp && nl && sp < nl && sp[-1] == '}', "bad line: %.80s", line);
	}
	alloc_free(t);
	metrics_destroy(m);
}

/* ---- with an engine ------------------------------------------------------------ */

static engine_config small_engine(void)
{
	engine_config ec = engine_config_default();
	ec.max_total_tokens = 8192;
	return ec;
}

/* Concatenated "text" / delta content of an SSE body; checks [DONE] ends it. */
static void sse_text(const char *body, bool chat, char *out, size_t cap)
{
	out[0] = '\0';
	const char *p = body;
	const char *done = strstr(body, "data: [DONE]\n\n");
	cr_assert(done && done[14] == '\0', "stream must end with [DONE]: %s", body);
	while ((p = strstr(p, "data: {"))) {
		const char *nl = strstr(p, "\n\n");
		char *js = strndup(p + 6, (size_t)(nl - p - 6));
		json_object *o = json_tokener_parse(js), *ch, *c0, *t = NULL;
		cr_assert(o, "chunk is not JSON: %s", js);
		if (json_object_object_get_ex(o, "choices", &ch) && json_object_array_length(ch)) {
			c0 = json_object_array_get_idx(ch, 0);
			if (chat) {
				json_object *d;
				json_object_object_get_ex(c0, "delta", &d);
				json_object_object_get_ex(d, "content", &t);
			} else {
				json_object_object_get_ex(c0, "text", &t);
			}
			if (t)
				strncat(out, json_object_get_string(t), cap - strlen(out) - 1);
		}
		json_object_put(o);
		free(js);
		p = nl;
	}
}

Test(http, stream_equals_non_stream)
{
	http_config cfg = { 0 };
	engine_config ec = small_engine();
	srv x;
	srv_start(&x, &cfg, &ec);
	const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0}";
	resp a = req(x.port, "POST", "/v1/completions", body, NULL);
	cr_assert(a.status == 200, "%s", a.body);
	json_object *o = jbody(&a);
	json_object *c = json_object_array_get_idx(json_object_object_get(o, "choices"), 0);
	char want[4096];
	snprintf(want, sizeof(want), "%s", json_object_get_string(json_object_object_get(c, "text")));
	json_object_put(o);
	resp_free(&a);

	resp b = req(x.port, "POST", "/v1/completions",
		     "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,\"stream\":true,"
		     "\"stream_options\":{\"include_usage\":true}}", NULL);
	cr_assert(b.status == 200 && strstr(b.raw, "Content-Type: text/event-stream"), "%s", b.raw);
	char got[4096];
	sse_text(b.body, false, got, sizeof(got));
	cr_assert(!strcmp(got, want), "stream '%s' != '%s'", got, want);
	cr_assert(strstr(b.body, "\"choices\":[],\"usage\":{\"prompt_tokens\":"), "usage chunk: %s", b.body);
	resp_free(&b);

	resp h = req(x.port, "GET", "/health_generate", NULL, NULL);
	cr_assert(h.status == 200);
	resp_free(&h);
	h = req(x.port, "GET", "/health", NULL, NULL);
	cr_assert(h.status == 200);
	resp_free(&h);
	srv_stop(&x);
}

typedef struct {
	int port;
	const char *path, *body;
	resp r;
} bg_req;

static void *bg_run(void *arg)
{
	bg_req *b = arg;
	b->r = req(b->port, "POST", b->path, b->body, NULL);
	return NULL;
}

Test(http, bad_input_while_a_good_request_streams)
{
	http_config cfg = { .max_body_size = 4096 };
	engine_config ec = small_engine();
	srv x;
	srv_start(&x, &cfg, &ec);
	bg_req good = { .port = x.port, .path = "/v1/completions",
			.body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":200,\"ignore_eos\":true,"
				"\"temperature\":0,\"stream\":true}" };
	pthread_t th;
	pthread_create(&th, NULL, bg_run, &good);
	static const struct {
		const char *path, *body;
		int status;
	} bad[] = {
		{ "/v1/completions", "{\"prompt\":", 400 },
		{ "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":\"many\"}", 400 },
		{ "/v1/chat/completions", "{\"model\":\"m\"}", 400 },
		{ "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":100000}", 400 },
		{ "/v1/completions", "{\"prompt\":\"x\",\"n\":1000}", 400 },
		{ "/v1/completions", "{\"prompt\":[1,2,99999]}", 400 },
		{ "/generate", "{\"text\":\"x\",\"sampling_params\":{\"top_p\":7}}", 400 },
		{ "/tokenize", "[]", 400 },
		{ "/detokenize", "{\"tokens\":[-1]}", 400 },
		{ "/abort_request", "{}", 400 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		resp r = req(x.port, "POST", bad[i].path, bad[i].body, NULL);
		want_error(&r, bad[i].status, "invalid_request_error");
		resp_free(&r);
	}
	char big[5000];
	memset(big, ' ', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	resp r = req(x.port, "POST", "/v1/completions", big, NULL);
	cr_assert(r.status == 413);
	resp_free(&r);
	pthread_join(th, NULL);
	cr_assert(good.r.status == 200);
	char got[8192];
	sse_text(good.r.body, false, got, sizeof(got));
	cr_assert(strlen(got) > 100, "the good request completed: %s", got);
	cr_assert(strstr(good.r.body, "\"finish_reason\":\"length\""));
	resp_free(&good.r);
	srv_stop(&x);
}

Test(http, overload_is_503)
{
	http_config cfg = { 0 };
	engine_config ec = small_engine();
	ec.max_running = 1;
	ec.max_queued = 1;
	srv x;
	srv_start(&x, &cfg, &ec);
	resp r = req(x.port, "POST", "/v1/completions",
		     "{\"prompt\":\"Once upon a time\",\"n\":16,\"max_tokens\":100,\"ignore_eos\":true}", NULL);
	want_error(&r, 503, "service_unavailable_error");
	cr_assert(strstr(r.body, "overloaded"), "%s", r.body);
	resp_free(&r);
	/* the accepted siblings were aborted; once the engine has dropped them
	   the server serves again */
	time_t deadline = time(NULL) + 10;
	for (;;) {
		r = req(x.port, "POST", "/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":3}", NULL);
		int st = r.status;
		cr_assert(st == 200 || st == 503, "%s", r.body);
		resp_free(&r);
		if (st == 200)
			break;
		cr_assert(time(NULL) < deadline, "still overloaded");
		usleep(10000);
	}
	srv_stop(&x);
}

/* pages used by requests, from /get_server_info */
static int pages_used(int port, int *running)
{
	resp r = req(port, "GET", "/get_server_info", NULL, NULL);
	cr_assert(r.status == 200);
	json_object *o = jbody(&r), *st;
	cr_assert(json_object_object_get_ex(o, "engine_stats", &st));
	int used = json_object_get_int(json_object_object_get(st, "pages_used"));
	*running = json_object_get_int(json_object_object_get(st, "running"));
	json_object_put(o);
	resp_free(&r);
	return used;
}

Test(http, client_hangup_frees_pages)
{
	http_config cfg = { 0 };
	engine_config ec = small_engine();
	srv x;
	srv_start(&x, &cfg, &ec);
	for (int stream = 0; stream < 2; stream++) {
		size_t n;
		char *s = fmt_req("POST", "/v1/completions",
				  stream ? "{\"prompt\":\"Once upon a time\",\"max_tokens\":480,\"ignore_eos\":true,\"stream\":true}"
					 : "{\"prompt\":\"Once upon a time\",\"max_tokens\":480,\"ignore_eos\":true}",
				  NULL, &n);
		int fd = dial(x.port);
		send_all(fd, s, n);
		free(s);
		int running = 0;
		time_t deadline = time(NULL) + 10;
		if (stream) { /* wait for the first bytes */
			char buf[256];
			cr_assert(recv(fd, buf, sizeof(buf), 0) > 0);
		} else {
			while (pages_used(x.port, &running) == 0 || running == 0)
				cr_assert(time(NULL) < deadline, "request never started");
		}
		close(fd);
		while (pages_used(x.port, &running) != 0 || running != 0) {
			cr_assert(time(NULL) < deadline, "pages not freed after the client left (stream=%d)", stream);
			usleep(10000);
		}
	}
	/* the engine publishes its stats before the final events reach the loop */
	time_t deadline = time(NULL) + 10;
	for (;;) {
		resp r = req(x.port, "GET", "/metrics", NULL, NULL);
		bool done = strstr(r.body, "sglang:num_aborted_requests_total{model_name=\"test-model\"} 2\n");
		if (done)
			cr_assert(strstr(r.body, "route=\"/v1/completions\",code=\"499\"} 2\n"), "%s", r.body);
		resp_free(&r);
		if (done)
			break;
		cr_assert(time(NULL) < deadline, "aborts never counted");
		usleep(10000);
	}
	srv_stop(&x);
}

Test(http, abort_request_by_rid)
{
	http_config cfg = { 0 };
	engine_config ec = small_engine();
	srv x;
	srv_start(&x, &cfg, &ec);
	bg_req g = { .port = x.port, .path = "/generate",
		     .body = "{\"text\":\"Once\",\"rid\":\"job-7\",\"sampling_params\":{\"max_new_tokens\":480,"
			     "\"ignore_eos\":true}}" };
	pthread_t th;
	pthread_create(&th, NULL, bg_run, &g);
	time_t deadline = time(NULL) + 10;
	for (;;) {
		resp r = req(x.port, "POST", "/abort_request", "{\"rid\":\"job-7\"}", NULL);
		cr_assert(r.status == 200);
		bool hit = !strstr(r.body, "\"aborted\":0");
		resp_free(&r);
		if (hit)
			break;
		cr_assert(time(NULL) < deadline, "request never became live");
		usleep(1000);
	}
	pthread_join(th, NULL);
	cr_assert(g.r.status == 200, "%s", g.r.body);
	json_object *o = jbody(&g.r), *meta, *fr;
	json_object_object_get_ex(o, "meta_info", &meta);
	json_object_object_get_ex(meta, "finish_reason", &fr);
	cr_assert(!strcmp(json_object_get_string(json_object_object_get(fr, "type")), "abort"), "%s", g.r.body);
	cr_assert(!strcmp(json_object_get_string(json_object_object_get(meta, "id")), "job-7"));
	json_object_put(o);
	resp_free(&g.r);
	srv_stop(&x);
}

Test(http, tokenize_detokenize_template_info)
{
	http_config cfg = { .chat_family = CHAT_TMPL_CHATML };
	engine_config ec = small_engine();
	srv x;
	srv_start(&x, &cfg, &ec);
	resp r = req(x.port, "POST", "/tokenize", "{\"prompt\":\"Once upon a time\"}", NULL);
	cr_assert(r.status == 200, "%s", r.body);
	json_object *o = jbody(&r), *toks = json_object_object_get(o, "tokens");
	cr_assert(json_object_array_length(toks) > 1 && json_object_get_int(json_object_array_get_idx(toks, 0)) == 1);
	cr_assert(json_object_get_int(json_object_object_get(o, "count")) == (int)json_object_array_length(toks));
	cr_assert(json_object_get_int(json_object_object_get(o, "max_model_len")) > 0);
	char body[1024];
	snprintf(body, sizeof(body), "{\"tokens\":%s}", json_object_to_json_string(toks));
	json_object_put(o);
	resp_free(&r);
	r = req(x.port, "POST", "/detokenize", body, NULL);
	cr_assert(r.status == 200 && strstr(r.body, "\"text\":\"Once upon a time\""), "%s", r.body);
	resp_free(&r);
	r = req(x.port, "POST", "/apply-template", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", NULL);
	cr_assert(r.status == 200, "%s", r.body);
	o = jbody(&r);
	cr_assert(!strcmp(jstr_at(o, "prompt", NULL), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
	json_object_put(o);
	resp_free(&r);
	r = req(x.port, "GET", "/get_model_info", NULL, NULL);
	cr_assert(r.status == 200 && strstr(r.body, "\"is_generation\":true"), "%s", r.body);
	resp_free(&r);
	r = req(x.port, "POST", "/flush_cache", NULL, NULL);
	cr_assert(r.status == 200);
	resp_free(&r);
	srv_stop(&x);
}
