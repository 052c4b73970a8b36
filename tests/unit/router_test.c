/* router_test.c - the router's HTTP response parser (fed bytes split
 * anywhere), its body helpers, and the router in-process against scripted
 * fake workers on loopback: the decode's stream reaches the client while the
 * prefill has not answered, a prefill error before the decode answered is
 * the client's answer (and the decode side is closed), a client leaving
 * closes both upstream connections, an unreachable prefill is retried on
 * another one with a new room, no healthy worker is a clear 503. */
#include <criterion/criterion.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "router/router.h"
#include "router/upstream.h"

/* ---------------------------------------------------------------- parser */

typedef struct {
	int status;
	char ctype[128];
	char body[8192];
	size_t len;
	int heads;
} sinkbuf;

static bool s_head(void *arg, int status, const char *ctype)
{
	sinkbuf *s = arg;
	s->status = status;
	snprintf(s->ctype, sizeof(s->ctype), "%s", ctype);
	s->heads++;
	return true;
}

static bool s_body(void *arg, const char *data, size_t len)
{
	sinkbuf *s = arg;
	cr_assert_leq(s->len + len, sizeof(s->body));
	memcpy(s->body + s->len, data, len);
	s->len += len;
	return true;
}

static const upstream_sink SINK = { s_head, s_body };

/* Feed msg in pieces of `step` bytes; returns the parser's final state. */
static int feed(const char *msg, size_t step, sinkbuf *s, upstream_parser *p, bool eof)
{
	char err[ERR_LEN];
	memset(s, 0, sizeof(*s));
	upstream_parser_init(p);
	size_t n = strlen(msg), i = 0;
	while (i < n && p->state != UPSTREAM_P_DONE) {
		size_t k = n - i < step ? n - i : step;
		long used = upstream_parse(p, msg + i, k, &SINK, s, err);
		if (used < 0) {
			upstream_parser_fini(p);
			return -1;
		}
		i += (size_t)used;
		if ((size_t)used < k)
			break;
	}
	if (eof && p->state != UPSTREAM_P_DONE && upstream_parse_eof(p, err) < 0) {
		upstream_parser_fini(p);
		return -2;
	}
	int st = p->state;
	upstream_parser_fini(p);
	return st;
}

Test(upstream_parser, framings_split_anywhere)
{
	static const struct {
		const char *msg;
		int status;
		const char *body;
		bool keep;
		bool eof;
	} cases[] = {
		{ "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}", 200, "{\"a\":1}",
		  true, false },
		{ "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
		  "6\r\ndata: \r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
		  200, "data: abc0123456789", true, false },
		{ "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
		  503, "no", false, false },
		{ "HTTP/1.0 200 OK\r\n\r\nuntil the end", 200, "until the end", false, true },
		{ "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 200, "", true, false },
		{ "HTTP/1.1 204 No Content\r\n\r\n", 204, "", true, false },
		{ "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", 200, "hi", true, false },
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
		for (size_t step = 1; step <= strlen(cases[c].msg); step++) {
			sinkbuf s;
			upstream_parser p;
			int st = feed(cases[c].msg, step, &s, &p, cases[c].eof);
			cr_assert_eq(st, UPSTREAM_P_DONE, "case %zu step %zu: state %d", c, step, st);
			cr_assert_eq(s.status, cases[c].status, "case %zu step %zu", c, step);
			cr_assert_eq(s.heads, 1);
			cr_assert_eq(s.len, strlen(cases[c].body), "case %zu step %zu: body %zu bytes", c, step, s.len);
			cr_assert(!memcmp(s.body, cases[c].body, s.len), "case %zu step %zu: '%.*s'", c, step, (int)s.len, s.body);
			cr_assert_eq(p.keep_alive, cases[c].keep, "case %zu", c);
		}
}

Test(upstream_parser, stops_at_the_end_of_a_response)
{
	const char *two = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n";
	upstream_parser p;
	sinkbuf s = { 0 };
	char err[ERR_LEN];
	upstream_parser_init(&p);
	long used = upstream_parse(&p, two, strlen(two), &SINK, &s, err);
	cr_expect_eq(used, (long)strlen("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"));
	cr_expect_eq(p.state, UPSTREAM_P_DONE);
	upstream_parser_fini(&p);
}

Test(upstream_parser, malformed)
{
	const char *bad[] = {
		"HTTX/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1234567890abcdef0\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sinkbuf s;
		upstream_parser p;
		cr_expect_eq(feed(bad[i], 1000, &s, &p, false), -1, "accepted case %zu", i);
	}
	/* truncated: EOF mid-body and mid-head */
	sinkbuf s;
	upstream_parser p;
	cr_expect_eq(feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1000, &s, &p, true), -2);
	cr_expect_eq(feed("HTTP/1.1 200 OK\r\nContent-Le", 1000, &s, &p, true), -2);
	/* a header block that never ends */
	char *huge = alloc_bytes(UPSTREAM_MAX_HEAD + 100);
	cr_assert(huge);
	memset(huge, 'a', UPSTREAM_MAX_HEAD + 99);
	memcpy(huge, "HTTP/1.1 200 OK\r\nX: ", 20);
	huge[UPSTREAM_MAX_HEAD + 99] = '\0';
	cr_expect_eq(feed(huge, 4096, &s, &p, false), -1);
	alloc_free(huge);
}

/* ---------------------------------------------------------------- body helpers */

Test(router_body, pd_body)
{
	size_t n;
	char *b = router_pd_body("{\"a\":1}", 7, "10.0.0.1", 8998, 123456789012345ull, &n);
	cr_assert(b);
	cr_expect_str_eq(b, "{\"bootstrap_host\":\"10.0.0.1\",\"bootstrap_port\":8998,\"bootstrap_room\":123456789012345,\"a\":1}");
	cr_expect_eq(n, strlen(b));
	alloc_free(b);
	b = router_pd_body("  { }\n", 6, "h", -1, 7, &n);
	cr_assert(b);
	cr_expect_str_eq(b, "{\"bootstrap_host\":\"h\",\"bootstrap_port\":null,\"bootstrap_room\":7}");
	alloc_free(b);
	cr_expect_null(router_pd_body("[1]", 3, "h", 1, 1, &n));
	cr_expect_null(router_pd_body("", 0, "h", 1, 1, &n));
	/* the result is valid JSON with an exact 63-bit room */
	b = router_pd_body("{\"x\": [1, {\"y\": \"}\"}]}", 22, "h", 1, (1ull << 63) - 1, &n);
	json_object *o = json_tokener_parse(b);
	cr_assert(o, "%s", b);
	json_object *v;
	cr_assert(json_object_object_get_ex(o, "bootstrap_room", &v));
	cr_expect_eq((uint64_t)json_object_get_int64(v), (1ull << 63) - 1);
	json_object_put(o);
	alloc_free(b);
}

Test(router_body, parse_gen)
{
	char err[ERR_LEN], *base, *text;
	size_t bl, tl;
	bool stream;
	const char *chat = "{\"messages\":[{\"role\":\"system\",\"content\":\"be kind\"},"
			   "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}],\"stream\":true}";
	cr_assert_eq(router_parse_gen(chat, strlen(chat), true, &base, &bl, &text, &tl, &stream, err), 0, "%s", err);
	cr_expect(stream);
	cr_expect_str_eq(base, chat, "no bootstrap fields: forwarded byte for byte");
	cr_expect_str_eq(text, "system: be kind\nuser: hi\n");
	alloc_free(base);
	alloc_free(text);
	const char *gen = "{\"text\":\"Once\",\"bootstrap_room\":5,\"bootstrap_host\":\"evil\",\"sampling_params\":{}}";
	cr_assert_eq(router_parse_gen(gen, strlen(gen), true, &base, &bl, &text, &tl, &stream, err), 0);
	cr_expect(!stream);
	cr_expect_null(strstr(base, "bootstrap"), "%s", base);
	cr_expect_str_eq(text, "Once");
	alloc_free(base);
	alloc_free(text);
	const char *ids = "{\"prompt\":[1,2,3]}";
	cr_assert_eq(router_parse_gen(ids, strlen(ids), true, &base, &bl, &text, &tl, &stream, err), 0);
	cr_expect_str_eq(text, "1 2 3 ");
	alloc_free(base);
	alloc_free(text);
	const char *batch = "{\"prompt\":[\"first\",\"second\"]}";
	cr_assert_eq(router_parse_gen(batch, strlen(batch), false, &base, &bl, &text, &tl, &stream, err), 0);
	cr_expect_null(text, "no text asked for");
	alloc_free(base);
	cr_assert_eq(router_parse_gen(batch, strlen(batch), true, &base, &bl, &text, &tl, &stream, err), 0);
	cr_expect_str_eq(text, "first");
	alloc_free(base);
	alloc_free(text);
	const char *bad[] = { "", "{", "[]", "{\"a\":1} x", "{\"a\":\"\xff\"}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(router_parse_gen(bad[i], strlen(bad[i]), true, &base, &bl, &text, &tl, &stream, err), ERR_INVAL,
			     "accepted case %zu", i);
		cr_expect_null(base);
	}
}

Test(router_body, failed_allocations)
{
	const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}],\"bootstrap_port\":1}";
	char err[ERR_LEN], *base, *text;
	size_t bl, tl;
	bool stream;
	alloc_fail_after(-1);
	alloc_fail_after(1000000);
	cr_assert_eq(router_parse_gen(chat, strlen(chat), true, &base, &bl, &text, &tl, &stream, err), 0);
	long n = 1000000 - alloc_fail_after(-1);
	alloc_free(base);
	alloc_free(text);
	(void)n;
	for (long k = 0; k < 8; k++) {
		alloc_fail_after(k);
		int rc = router_parse_gen(chat, strlen(chat), true, &base, &bl, &text, &tl, &stream, err);
		alloc_fail_after(-1);
		if (rc == 0) {
			alloc_free(base);
			alloc_free(text);
		} else {
			cr_expect_eq(rc, ERR_NOMEM, "allocation %ld: %d", k, rc);
			cr_expect_null(base);
		}
	}
	balance_config bc = balance_config_default(BALANCE_CACHE_AWARE);
	for (long k = 0; k < 6; k++) {
		balance *b = balance_create(&bc, 1);
		cr_assert(b);
		balance_cand c[2] = { { 1, 0 }, { 2, 0 } };
		int out;
		alloc_fail_after(k);
		balance_pick(b, c, 2, "abc", 3, &out, NULL);
		balance_pick(b, c, 2, "abd", 3, &out, NULL);
		alloc_fail_after(-1);
		cr_expect(out == 0 || out == 1);
		char e2[ERR_LEN];
		cr_expect_eq(balance_check(b, e2), 0, "allocation %ld: %s", k, e2);
		balance_destroy(b);
	}
}

/* ---------------------------------------------------------------- fake workers */

typedef enum {
	FK_OK,       /* prefill: answer at once */
	FK_SLOW,     /* prefill: answer after 600 ms (or when the peer leaves) */
	FK_FAIL,     /* prefill: 400 after 50 ms */
	FK_STREAM,   /* decode: stream 3 SSE events 20 ms apart, then [DONE] */
	FK_HANG,     /* decode: send the stream's head and one event, then wait for the peer to leave */
	FK_LATE,     /* decode: like FK_STREAM after 150 ms (a real decode waits for the KV) */
} fake_mode;

#define MAX_CONNS 64

typedef struct {
	int lfd, port;
	const char *role;
	fake_mode mode;
	atomic_bool stop;
	pthread_t accept_th;
	pthread_t conns[MAX_CONNS];
	atomic_int n_conns;
	atomic_int gen_requests;   /* generation requests seen */
	atomic_int gen_closed;     /* generation requests whose peer closed before we finished */
	atomic_llong answered_ns;  /* when a generation answer was sent (FK_SLOW) */
	pthread_mutex_t mu;
	char last_body[4096];
	uint64_t rooms[8];         /* bootstrap_room of each generation request */
} fake;

typedef struct {
	fake *f;
	int fd;
} conn_arg;

static void send_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
		if (k <= 0)
			return;
		s += k;
		n -= (size_t)k;
	}
}

static void send_str(int fd, const char *s)
{
	send_all(fd, s, strlen(s));
}

/* Wait up to ms for the peer to close; true when it did. */
static bool peer_closed_within(int fd, int ms)
{
	int64_t end = clock_now_ns() + (int64_t)ms * 1000000;
	while (clock_now_ns() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
		int left = (int)((end - clock_now_ns()) / 1000000);
		if (poll(&p, 1, left > 0 ? left : 1) > 0) {
			char c;
			if ((p.revents & (POLLRDHUP | POLLHUP | POLLERR)) || recv(fd, &c, 1, MSG_PEEK) <= 0)
				return true;
		}
	}
	return false;
}

/* Read one request; false at EOF. */
static bool read_request(int fd, char *method, char *path, char *body, size_t cap)
{
	char buf[16384];
	size_t n = 0;
	char *end = NULL;
	while (!end) {
		ssize_t k = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
		if (k <= 0)
			return false;
		n += (size_t)k;
		buf[n] = '\0';
		end = strstr(buf, "\r\n\r\n");
	}
	sscanf(buf, "%15s %255s", method, path);
	size_t head = (size_t)(end + 4 - buf), clen = 0;
	const char *cl = strcasestr(buf, "Content-Length:");
	if (cl && cl < end)
		clen = strtoul(cl + 15, NULL, 10);
	while (n < head + clen) {
		ssize_t k = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
		if (k <= 0)
			return false;
		n += (size_t)k;
	}
	size_t m = clen < cap - 1 ? clen : cap - 1;
	memcpy(body, buf + head, m);
	body[m] = '\0';
	return true;
}

static void *conn_main(void *p)
{
	conn_arg a = *(conn_arg *)p;
	free(p);
	fake *f = a.f;
	char method[16], path[256], body[4096];
	while (read_request(a.fd, method, path, body, sizeof(body))) {
		if (!strcmp(path, "/health")) {
			send_str(a.fd, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
			continue;
		}
		if (!strcmp(path, "/get_server_info")) {
			char js[256], resp[512];
			snprintf(js, sizeof(js),
				 "{\"disaggregation_mode\":\"%s\",\"disaggregation_bootstrap_port\":4242,"
				 "\"engine_stats\":{\"running\":0,\"waiting\":0}}", f->role);
			snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
				 strlen(js), js);
			send_str(a.fd, resp);
			continue;
		}
		if (atomic_load(&f->stop))
			break; /* a dead worker: close without answering */
		int k = atomic_fetch_add(&f->gen_requests, 1);
		pthread_mutex_lock(&f->mu);
		snprintf(f->last_body, sizeof(f->last_body), "%s", body);
		const char *room = strstr(body, "\"bootstrap_room\":");
		if (k < 8 && room)
			f->rooms[k] = strtoull(room + 17, NULL, 10);
		pthread_mutex_unlock(&f->mu);
		const char *ok_json = "{\"text\":\"x\",\"meta_info\":{}}";
		char resp[512];
		switch (f->mode) {
		case FK_OK:
		case FK_SLOW:
			if (f->mode == FK_SLOW && peer_closed_within(a.fd, 600)) {
				atomic_fetch_add(&f->gen_closed, 1);
				goto out;
			}
			snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
				 strlen(ok_json), ok_json);
			atomic_store(&f->answered_ns, clock_now_ns());
			send_str(a.fd, resp);
			break;
		case FK_FAIL: {
			usleep(50000);
			const char *e = "{\"error\":{\"message\":\"prefill says no\",\"code\":400}}";
			snprintf(resp, sizeof(resp), "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
				 strlen(e), e);
			send_str(a.fd, resp);
			break;
		}
		case FK_LATE:
			if (peer_closed_within(a.fd, 150)) {
				atomic_fetch_add(&f->gen_closed, 1);
				goto out;
			}
			/* fall through */
		case FK_STREAM:
		case FK_HANG: {
			send_str(a.fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
			for (int i = 0; i < (f->mode == FK_HANG ? 1 : 3); i++) {
				char ev[64], ch[96];
				int n = snprintf(ev, sizeof(ev), "data: {\"i\":%d}\n\n", i);
				snprintf(ch, sizeof(ch), "%x\r\n%s\r\n", n, ev);
				send_str(a.fd, ch);
				if (f->mode != FK_HANG && peer_closed_within(a.fd, 20)) {
					atomic_fetch_add(&f->gen_closed, 1);
					goto out;
				}
			}
			if (f->mode == FK_HANG) {
				if (peer_closed_within(a.fd, 5000))
					atomic_fetch_add(&f->gen_closed, 1);
				goto out;
			}
			const char *done = "data: [DONE]\n\n";
			snprintf(resp, sizeof(resp), "%zx\r\n%s\r\n0\r\n\r\n", strlen(done), done);
			send_str(a.fd, resp);
			break;
		}
		}
	}
out:
	close(a.fd);
	return NULL;
}

static void *accept_main(void *p)
{
	fake *f = p;
	while (!atomic_load(&f->stop)) {
		struct pollfd pf = { .fd = f->lfd, .events = POLLIN };
		if (poll(&pf, 1, 20) <= 0)
			continue;
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		int k = atomic_fetch_add(&f->n_conns, 1);
		conn_arg *a = malloc(sizeof(*a));
		a->f = f;
		a->fd = fd;
		if (k >= MAX_CONNS || pthread_create(&f->conns[k], NULL, conn_main, a)) {
			atomic_fetch_sub(&f->n_conns, 1);
			close(fd);
			free(a);
		}
	}
	return NULL;
}

static void fake_start(fake *f, const char *role, fake_mode mode)
{
	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->mu, NULL);
	f->role = role;
	f->mode = mode;
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(f->lfd, 64), 0);
	socklen_t sl = sizeof(sa);
	getsockname(f->lfd, (struct sockaddr *)&sa, &sl);
	f->port = ntohs(sa.sin_port);
	cr_assert_eq(pthread_create(&f->accept_th, NULL, accept_main, f), 0);
}

static void fake_stop(fake *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->accept_th, NULL);
	close(f->lfd);
	/* connection threads end when the router closes its side (router_destroy) */
	for (int i = 0; i < atomic_load(&f->n_conns); i++)
		pthread_join(f->conns[i], NULL);
	pthread_mutex_destroy(&f->mu);
}

/* ---------------------------------------------------------------- router in a thread */

typedef struct {
	router *r;
	pthread_t th;
	int port;
} rt;

static void *rt_main(void *p)
{
	router_run(((rt *)p)->r);
	return NULL;
}

static int http_get_status(int port, const char *path);

/* tweak: changes to the test configuration, or NULL */
static void rt_start_with(rt *t, fake **prefills, int np, fake **decodes, int nd, void (*tweak)(router_config *))
{
	log_set_level(LOG_ERROR);
	router_config c = router_config_default();
	c.port = 0;
	c.pd = true;
	c.prefill_policy = c.decode_policy = balance_config_default(BALANCE_ROUND_ROBIN);
	c.health_interval_s = 0.2;
	c.health_timeout_s = 1;
	c.retry_backoff_ms = 1;
	c.seed = 12345;
	if (tweak)
		tweak(&c);
	char err[ERR_LEN], url[64];
	t->r = router_create(&c, err);
	cr_assert(t->r, "%s", err);
	for (int i = 0; i < np; i++) {
		snprintf(url, sizeof(url), "http://127.0.0.1:%d", prefills[i]->port);
		cr_assert_eq(router_add_worker(t->r, WORKER_PREFILL, url, 4242, err), 0, "%s", err);
	}
	for (int i = 0; i < nd; i++) {
		snprintf(url, sizeof(url), "http://127.0.0.1:%d", decodes[i]->port);
		cr_assert_eq(router_add_worker(t->r, WORKER_DECODE, url, 0, err), 0, "%s", err);
	}
	t->port = router_port(t->r);
	cr_assert_eq(pthread_create(&t->th, NULL, rt_main, t), 0);
	for (int i = 0; i < 200 && np && nd && http_get_status(t->port, "/health") != 200; i++)
		usleep(10000);
	if (!np || !nd)
		usleep(300000); /* /health never passes: let the probes run */
}

static void rt_start(rt *t, fake **prefills, int np, fake **decodes, int nd)
{
	rt_start_with(t, prefills, np, decodes, nd, NULL);
}

static void rt_stop(rt *t)
{
	router_stop(t->r);
	pthread_join(t->th, NULL);
	router_destroy(t->r);
}

static int connect_to(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	struct timeval tv = { 5, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int http_get_status(int port, const char *path)
{
	int fd = connect_to(port);
	char req[256], buf[512];
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
	send_str(fd, req);
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	int st = 0;
	if (n > 12)
		sscanf(buf, "HTTP/1.1 %d", &st);
	return st;
}

static int post(int port, const char *path, const char *body)
{
	int fd = connect_to(port);
	char head[256];
	snprintf(head, sizeof(head), "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
		 path, strlen(body));
	send_str(fd, head);
	send_str(fd, body);
	return fd;
}

/* Read until `want` appears (or EOF/timeout) into buf; returns bytes. */
static size_t read_until(int fd, char *buf, size_t cap, const char *want)
{
	size_t n = 0;
	buf[0] = '\0';
	while (n < cap - 1 && !strstr(buf, want)) {
		ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);
		if (k <= 0)
			break;
		n += (size_t)k;
		buf[n] = '\0';
	}
	return n;
}

static const char *STREAM_BODY = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}";

Test(router_live, stream_does_not_wait_for_the_prefill, .timeout = 20)
{
	fake p, d;
	fake_start(&p, "prefill", FK_SLOW);
	fake_start(&d, "decode", FK_STREAM);
	fake *ps[] = { &p }, *ds[] = { &d };
	rt t;
	rt_start(&t, ps, 1, ds, 1);
	int64_t t0 = clock_now_ns();
	int fd = post(t.port, "/v1/chat/completions", STREAM_BODY);
	char buf[8192];
	read_until(fd, buf, sizeof(buf), "data: {\"i\":0}");
	int64_t first = clock_now_ns() - t0;
	cr_expect(strstr(buf, "data: {\"i\":0}"), "%s", buf);
	cr_expect_lt(first, 300 * 1000000LL, "first event after %.1f ms: waited for the prefill", first * 1e-6);
	cr_expect(strstr(buf, "X-Pdserve-Decode: http://127.0.0.1:"), "%s", buf);
	if (!strstr(buf, "data: [DONE]")) {
		size_t n = strlen(buf);
		read_until(fd, buf + n, sizeof(buf) - n, "data: [DONE]");
	}
	cr_expect(strstr(buf, "data: {\"i\":2}") && strstr(buf, "data: [DONE]"), "%s", buf);
	int64_t done = clock_now_ns();
	cr_expect_lt(done - t0, 500 * 1000000LL, "the stream ended only when the prefill answered");
	close(fd);
	/* both halves got the same body with the bootstrap fields */
	json_object *o = json_tokener_parse(p.last_body), *v;
	cr_assert(o, "%s", p.last_body);
	cr_expect(json_object_object_get_ex(o, "bootstrap_room", &v) && json_object_get_int64(v) >= 0);
	cr_expect(json_object_object_get_ex(o, "bootstrap_port", &v) && json_object_get_int(v) == 4242);
	cr_expect(json_object_object_get_ex(o, "bootstrap_host", &v) && !strcmp(json_object_get_string(v), "127.0.0.1"));
	json_object_put(o);
	cr_expect_str_eq(p.last_body, d.last_body);
	rt_stop(&t);
	fake_stop(&p);
	fake_stop(&d);
}

Test(router_live, prefill_error_before_the_decode_answered, .timeout = 20)
{
	fake p, d;
	fake_start(&p, "prefill", FK_FAIL);
	fake_start(&d, "decode", FK_SLOW); /* says nothing until it is closed (or 600 ms) */
	fake *ps[] = { &p }, *ds[] = { &d };
	rt t;
	rt_start(&t, ps, 1, ds, 1);
	int fd = post(t.port, "/v1/chat/completions", STREAM_BODY);
	char buf[8192];
	read_until(fd, buf, sizeof(buf), "}}");
	cr_expect(!strncmp(buf, "HTTP/1.1 400", 12), "%s", buf);
	cr_expect(strstr(buf, "prefill says no"), "%s", buf);
	close(fd);
	for (int i = 0; i < 100 && atomic_load(&d.gen_closed) == 0; i++)
		usleep(10000);
	cr_expect_eq(atomic_load(&d.gen_closed), 1, "the decode side was not closed");
	rt_stop(&t);
	fake_stop(&p);
	fake_stop(&d);
}

Test(router_live, client_leaving_closes_both_sides, .timeout = 20)
{
	fake p, d;
	fake_start(&p, "prefill", FK_SLOW);
	fake_start(&d, "decode", FK_HANG);
	fake *ps[] = { &p }, *ds[] = { &d };
	rt t;
	rt_start(&t, ps, 1, ds, 1);
	int fd = post(t.port, "/v1/chat/completions", STREAM_BODY);
	char buf[8192];
	read_until(fd, buf, sizeof(buf), "data: {\"i\":0}");
	cr_assert(strstr(buf, "data: {\"i\":0}"), "%s", buf);
	close(fd);
	for (int i = 0; i < 100 && (atomic_load(&d.gen_closed) == 0 || atomic_load(&p.gen_closed) == 0); i++)
		usleep(10000);
	cr_expect_eq(atomic_load(&d.gen_closed), 1, "decode not closed");
	cr_expect_eq(atomic_load(&p.gen_closed), 1, "prefill not closed");
	rt_stop(&t);
	fake_stop(&p);
	fake_stop(&d);
}

Test(router_live, unreachable_prefill_retried_with_a_new_room, .timeout = 20)
{
	fake p1, p2, d;
	fake_start(&p1, "prefill", FK_OK);
	fake_start(&p2, "prefill", FK_OK);
	fake_start(&d, "decode", FK_LATE);
	fake *ps[] = { &p1, &p2 }, *ds[] = { &d };
	rt t;
	rt_start(&t, ps, 2, ds, 1);
	/* p1 goes away after the router saw it healthy: its port refuses */
	atomic_store(&p1.stop, true);
	pthread_join(p1.accept_th, NULL);
	close(p1.lfd);
	int fd = post(t.port, "/v1/chat/completions", STREAM_BODY);
	char buf[8192];
	read_until(fd, buf, sizeof(buf), "data: [DONE]");
	close(fd);
	cr_expect(!strncmp(buf, "HTTP/1.1 200", 12), "%s", buf);
	char want[64];
	snprintf(want, sizeof(want), "X-Pdserve-Prefill: http://127.0.0.1:%d", p2.port);
	cr_expect(strstr(buf, want), "not retried on the other prefill: %s", buf);
	/* the prefill's half is not waited for: give it a moment to arrive */
	for (int i = 0; i < 100 && atomic_load(&p2.gen_requests) == 0; i++)
		usleep(10000);
	/* the decode half of the failed attempt may or may not have left before
	   it was cancelled; if it did, the retry used another room, and that
	   half was closed */
	int nd = atomic_load(&d.gen_requests);
	cr_expect(nd == 1 || nd == 2, "%d", nd);
	if (nd == 2) {
		cr_expect_neq(d.rooms[0], d.rooms[1], "a retry reused the room");
		cr_expect_eq(atomic_load(&d.gen_closed), 1);
	}
	cr_expect_eq(atomic_load(&p2.gen_requests), 1, "p2 got %d, p1 got %d", atomic_load(&p2.gen_requests), atomic_load(&p1.gen_requests));
	rt_stop(&t);
	for (int i = 0; i < atomic_load(&p1.n_conns); i++)
		pthread_join(p1.conns[i], NULL);
	pthread_mutex_destroy(&p1.mu);
	fake_stop(&p2);
	fake_stop(&d);
}

Test(router_live, no_healthy_decode_is_a_clear_503, .timeout = 20)
{
	fake p;
	fake_start(&p, "prefill", FK_OK);
	fake *ps[] = { &p };
	rt t;
	rt_start(&t, ps, 1, NULL, 0);
	int fd = post(t.port, "/v1/completions", "{\"prompt\":\"x\"}");
	char buf[4096];
	read_until(fd, buf, sizeof(buf), "}}");
	close(fd);
	cr_expect(!strncmp(buf, "HTTP/1.1 503", 12), "%s", buf);
	cr_expect(strstr(buf, "no healthy decode worker available (none registered)"), "%s", buf);
	cr_expect_eq(http_get_status(t.port, "/health"), 503);
	rt_stop(&t);
	fake_stop(&p);
}

/* ---------------------------------------------------------------- admission and shutdown */

static void one_slot_one_waiter(router_config *c)
{
	c->max_concurrent = 1;
	c->queue_size = 1;
	c->queue_timeout_s = 0.5;
}

static int status_of(const char *resp)
{
	int st = 0;
	sscanf(resp, "HTTP/1.1 %d", &st);
	return st;
}

Test(router_live, admission_queues_then_rejects, .timeout = 20)
{
	fake p, d;
	fake_start(&p, "prefill", FK_OK);
	fake_start(&d, "decode", FK_HANG); /* each stream holds its slot until its client leaves */
	fake *ps[] = { &p }, *ds[] = { &d };
	rt t;
	rt_start_with(&t, ps, 1, ds, 1, one_slot_one_waiter);
	char buf[8192];
	int c1 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	read_until(c1, buf, sizeof(buf), "data: {\"i\":0}");
	cr_assert(strstr(buf, "data: {\"i\":0}"), "the first request streams: %s", buf);
	/* the second waits for the slot, the third finds the queue full */
	int64_t t0 = clock_now_ns();
	int c2 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	usleep(100000);
	int c3 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	read_until(c3, buf, sizeof(buf), "}}");
	cr_expect_eq(status_of(buf), 429, "%s", buf);
	cr_expect(strstr(buf, "--max-concurrent-requests 1") && strstr(buf, "--queue-size 1"), "%s", buf);
	close(c3);
	read_until(c2, buf, sizeof(buf), "}}");
	int64_t waited = clock_now_ns() - t0;
	cr_expect_eq(status_of(buf), 408, "%s", buf);
	cr_expect(strstr(buf, "--queue-timeout-secs"), "%s", buf);
	cr_expect(waited > 450 * 1000000LL && waited < 3000 * 1000000LL, "408 after %.0f ms", waited * 1e-6);
	close(c2);
	cr_expect_eq(atomic_load(&d.gen_requests), 1, "only the admitted request reached the decode");
	/* the slot comes back when the stream's client leaves */
	close(c1);
	int c4 = -1;
	for (int i = 0; i < 50; i++) {
		c4 = post(t.port, "/v1/chat/completions", STREAM_BODY);
		read_until(c4, buf, sizeof(buf), "\r\n\r\n");
		if (status_of(buf) == 200)
			break;
		close(c4);
		c4 = -1;
		usleep(20000);
	}
	cr_assert(c4 >= 0, "no slot after the first client left: %s", buf);
	close(c4);
	rt_stop(&t);
	fake_stop(&p);
	fake_stop(&d);
}

static void one_slot_long_queue(router_config *c)
{
	c->max_concurrent = 1;
	c->queue_size = 4;
	c->queue_timeout_s = 10;
}

Test(router_live, a_waiting_request_starts_when_the_slot_frees, .timeout = 20)
{
	fake p, d;
	fake_start(&p, "prefill", FK_OK);
	fake_start(&d, "decode", FK_HANG);
	fake *ps[] = { &p }, *ds[] = { &d };
	rt t;
	rt_start_with(&t, ps, 1, ds, 1, one_slot_long_queue);
	char buf[8192];
	int c1 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	read_until(c1, buf, sizeof(buf), "data: {\"i\":0}");
	cr_assert(strstr(buf, "data: {\"i\":0}"), "%s", buf);
	int c2 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	int c3 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	usleep(200000);
	cr_expect_eq(atomic_load(&d.gen_requests), 1, "the waiters did not start");
	/* a waiter that leaves gives up its place; the other gets the slot */
	close(c2);
	usleep(100000);
	int64_t t0 = clock_now_ns();
	close(c1);
	read_until(c3, buf, sizeof(buf), "data: {\"i\":0}");
	cr_expect(strstr(buf, "data: {\"i\":0}"), "the waiter streams once the slot frees: %s", buf);
	cr_expect_lt(clock_now_ns() - t0, 2000 * 1000000LL);
	cr_expect_eq(atomic_load(&d.gen_requests), 2, "the waiter that left never started");
	close(c3);
	rt_stop(&t);
	fake_stop(&p);
	fake_stop(&d);
}

static void grace_5s(router_config *c)
{
	c->shutdown_grace_s = 5;
}

Test(router_live, sigterm_lets_streams_finish_then_exits, .timeout = 20)
{
	fake p, d;
	fake_start(&p, "prefill", FK_OK);
	fake_start(&d, "decode", FK_HANG);
	fake *ps[] = { &p }, *ds[] = { &d };
	rt t;
	rt_start_with(&t, ps, 1, ds, 1, grace_5s);
	char buf[8192];
	int c1 = post(t.port, "/v1/chat/completions", STREAM_BODY);
	read_until(c1, buf, sizeof(buf), "data: {\"i\":0}");
	cr_assert(strstr(buf, "data: {\"i\":0}"), "%s", buf);
	kill(getpid(), SIGTERM); /* the router's loop handles it (libevent signal event) */
	/* the listener closes; the stream stays */
	bool refused = false;
	for (int i = 0; i < 100 && !refused; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)t.port),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		refused = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno == ECONNREFUSED;
		close(fd);
		if (!refused)
			usleep(10000);
	}
	cr_expect(refused, "the router still accepts connections while draining");
	struct pollfd pf = { .fd = c1, .events = POLLIN | POLLRDHUP };
	cr_expect_eq(poll(&pf, 1, 300), 0, "the stream in flight was cut");
	/* its client leaving is the last request ending: the loop returns */
	int64_t t0 = clock_now_ns();
	close(c1);
	pthread_join(t.th, NULL);
	cr_expect_lt(clock_now_ns() - t0, 2000 * 1000000LL, "waited for the grace period with nothing in flight");
	router_destroy(t.r);
	fake_stop(&p);
	fake_stop(&d);
}
