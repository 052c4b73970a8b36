/* xfer_test.c - the KV transfer layer between two engines in one process,
 * over real sockets on 127.0.0.1 (tcp) and a memfd + unix socket (shm):
 * PD output equals unified output; failures fail exactly their rooms and
 * give every page back; handshake mismatches are named.
 *
 * No Criterion .timeout here: with parallel workers it leaks its watchdog
 * bookkeeping (LeakSanitizer then fails make check); every wait below has
 * its own deadline instead (pump).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "disagg/auth.h"
#include "disagg/kvwire.h"
#include "disagg/xfer.h"
#include "engine/engine.h"
#include "kernels/qtypes.h"
#include "testutil.h"

#define MAXR 32
#define MAXT 256

typedef struct {
	int32_t toks[MAXT];
	int n;
	engine_finish finish;
	int done;
	char message[512];
} result;

typedef struct {
	engine *e;
	xfer *x;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int woken;
	result res[MAXR];
} node;

static void wake(void *arg)
{
	node *n = arg;
	pthread_mutex_lock(&n->mu);
	n->woken = 1;
	pthread_cond_signal(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

static const char *stories(void)
{
	const char *p = test_shared("models/stories260K.gguf");
	if (!p)
		cr_skip_test("../shared/models/stories260K.gguf not present");
	return p;
}

typedef struct {
	xfer_role role; /* or -1: unified */
	xfer_backend backend;
	int page_size;
	int kv_dtype;
	double hb;
	int bootstrap_port;
	const char *secret; /* --disaggregation-secret */
	int max_running;    /* 0: the engine's default */
	double timeout;     /* bootstrap and waiting timeouts; 0: 5 s */
} node_opts;

static void node_open(node *n, const char *model, const node_opts *o)
{
	char err[ERR_LEN];
	memset(n, 0, sizeof(*n));
	pthread_mutex_init(&n->mu, NULL);
	pthread_cond_init(&n->cv, NULL);
	engine_config c = engine_config_default();
	c.model_path = model;
	c.n_threads = 1;
	c.max_total_tokens = 4096;
	c.kv_dtype = o->kv_dtype ? o->kv_dtype : QTYPE_F32;
	c.page_size = o->page_size ? o->page_size : 16;
	c.chunked_prefill_size = 32;
	if (o->max_running)
		c.max_running = o->max_running;
	c.notify = wake;
	c.notify_arg = n;
	if ((int)o->role >= 0) {
		xfer_config xc = { .role = o->role, .backend = o->backend, .host = "127.0.0.1",
				   .bootstrap_port = o->bootstrap_port, .heartbeat_interval = o->hb ? o->hb : 0.2,
				   .heartbeat_max_failure = 2,
				   .bootstrap_timeout = o->timeout ? o->timeout : 5,
				   .waiting_timeout = o->timeout ? o->timeout : 5,
				   .secret = o->secret };
		n->x = xfer_create(&xc, err);
		cr_assert(n->x, "xfer_create: %s", err);
		c.pd_arg = n->x;
		c.kv_export = xfer_on_export;
		c.kv_import = xfer_on_import;
		c.kv_import_cancel = xfer_on_import_cancel;
		c.kv_shared = o->backend == XFER_SHM && o->role == XFER_DECODE;
		if (o->backend == XFER_UCX && o->role == XFER_DECODE) {
			c.kv_alloc = xfer_kv_alloc;
			c.kv_release = xfer_kv_release;
		}
	}
	n->e = engine_create(&c, err);
	cr_assert(n->e, "engine_create: %s", err);
	if (n->x)
		xfer_attach(n->x, n->e);
}

static void node_close(node *n)
{
	xfer_stop(n->x);
	engine_destroy(n->e);
	xfer_destroy(n->x);
}

static void pump(node *n, int want, double seconds)
{
	double deadline = (double)time(NULL) + seconds;
	int done = 0;
	for (int i = 0; i < MAXR; i++)
		done += n->res[i].done;
	while (done < want) {
		engine_event ev[32];
		int k = engine_poll(n->e, ev, 32);
		for (int i = 0; i < k; i++) {
			result *r = &n->res[ev[i].rid % MAXR];
			if (ev[i].token >= 0 && r->n < MAXT)
				r->toks[r->n++] = ev[i].token;
			if (ev[i].finish) {
				r->finish = ev[i].finish;
				snprintf(r->message, sizeof(r->message), "%s", ev[i].message);
				r->done = 1;
				done++;
			}
		}
		if (!k) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 20000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_mutex_lock(&n->mu);
			if (!n->woken)
				pthread_cond_timedwait(&n->cv, &n->mu, &ts);
			n->woken = 0;
			pthread_mutex_unlock(&n->mu);
		}
		cr_assert((double)time(NULL) < deadline, "timed out: %d of %d done", done, want);
	}
}

static engine_request req(uint64_t rid, const int32_t *p, int n, int max_new)
{
	engine_request r = { .rid = rid, .prompt = p, .n_prompt = n, .max_new_tokens = max_new };
	r.sampling = sampler_params_default();
	r.sampling.temperature = 0;
	return r;
}

static int make_prompt(int seed, int len, int32_t *out)
{
	out[0] = 1;
	uint32_t v = (uint32_t)seed * 2654435761u + 7u;
	for (int i = 1; i < len; i++) {
		v = v * 1103515245u + 12345u;
		out[i] = 259 + (int32_t)((v >> 8) % 250);
	}
	return len;
}

/* Submit room rid on decode (IMPORT) and prefill (EXPORT). */
static void pd_submit(node *p, node *d, uint64_t rid, uint64_t room, const int32_t *prompt, int n, int max_new)
{
	char err[ERR_LEN];
	engine_request rd = req(rid, prompt, n, max_new);
	rd.pd = ENGINE_PD_IMPORT;
	rd.reserve_tokens = 16;
	cr_assert_eq(xfer_decode_add(d->x, room, rid, "127.0.0.1", xfer_bootstrap_port(p->x), n, err), 0, "%s", err);
	cr_assert_eq(engine_submit(d->e, &rd, err), 0, "%s", err);
	engine_request rp = req(rid, prompt, n, 1);
	rp.pd = ENGINE_PD_EXPORT;
	/* prefill: submit first (it waits for its destination), then register */
	cr_assert_eq(engine_submit(p->e, &rp, err), 0, "%s", err);
	cr_assert_eq(xfer_prefill_add(p->x, room, rid, n, err), 0, "%s", err);
}

static void assert_pages_back(node *n)
{
	engine_stats s;
	for (int i = 0; i < 1000; i++) { /* 10 s: sanitizer runs on a loaded machine are slow */
		engine_get_stats(n->e, &s);
		if (s.running == 0 && s.waiting == 0 && s.importing == 0 && s.pages_free + s.pages_cached == s.pages_total)
			return;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert_fail("pages not back: free %d cached %d total %d, running %d waiting %d importing %d",
		       s.pages_free, s.pages_cached, s.pages_total, s.running, s.waiting, s.importing);
}

static void pd_equals_unified(xfer_backend backend)
{
	const char *model = stories();
	enum { N = 8, GEN = 24 };
	static int32_t prompts[N][160];
	int lens[N];
	for (int i = 0; i < N; i++)
		lens[i] = make_prompt(i, 3 + i * 19, prompts[i]);
	node u, p, d;
	node_opts ou = { .role = (xfer_role)-1 };
	node_open(&u, model, &ou);
	char err[ERR_LEN];
	for (int i = 0; i < N; i++) {
		engine_request r = req((uint64_t)i, prompts[i], lens[i], GEN);
		cr_assert_eq(engine_submit(u.e, &r, err), 0, "%s", err);
	}
	pump(&u, N, 60);

	node_opts op = { .role = XFER_PREFILL, .backend = backend }, od = { .role = XFER_DECODE, .backend = backend };
	node_open(&p, model, &op);
	node_open(&d, model, &od);
	for (int i = 0; i < N; i++)
		pd_submit(&p, &d, (uint64_t)i, 1000 + (uint64_t)i, prompts[i], lens[i], GEN);
	pump(&d, N, 60);
	pump(&p, N, 10);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(d.res[i].finish, u.res[i].finish, "rid %d: finish %d vs %d (%s)", i, d.res[i].finish,
			     u.res[i].finish, d.res[i].message);
		cr_assert_eq(d.res[i].n, u.res[i].n, "rid %d: %d tokens vs %d", i, d.res[i].n, u.res[i].n);
		for (int t = 0; t < u.res[i].n; t++)
			cr_assert_eq(d.res[i].toks[t], u.res[i].toks[t], "rid %d token %d", i, t);
		cr_expect_eq(p.res[i].n, 1);
	}
	xfer_stats xs;
	xfer_get_stats(d.x, &xs);
	cr_log_info("%s: %lld rooms ok, %lld bytes", xfer_backend_name(backend), (long long)xs.rooms_ok,
		    (long long)xs.bytes);
	cr_expect_eq(xs.rooms_ok, N);
	cr_expect_gt(xs.bytes, 0);
	xfer_timing t;
	cr_expect_eq(xfer_take_timing(d.x, 3, &t), 0);
	cr_expect_gt(t.bytes, 0);
	assert_pages_back(&p);
	assert_pages_back(&d);
	node_close(&d);
	node_close(&p);
	node_close(&u);
}

Test(xfer, tcp_pd_equals_unified) { pd_equals_unified(XFER_TCP); }
Test(xfer, shm_pd_equals_unified) { pd_equals_unified(XFER_SHM); }

static void ucx_variant(const char *tls)
{
	char err[ERR_LEN];
	xfer_backend b;
	if (xfer_backend_parse("ucx", &b, err) < 0)
		cr_skip_test("%s", err);
	if (tls)
		setenv("UCX_TLS", tls, 1);
	pd_equals_unified(XFER_UCX);
	unsetenv("UCX_TLS");
}

Test(xfer, ucx_pd_equals_unified) { ucx_variant(NULL); }
Test(xfer, ucx_tcp_pd_equals_unified) { ucx_variant("tcp"); }
Test(xfer, ucx_sm_pd_equals_unified) { ucx_variant("sm,self"); }

Test(xfer, ucx_ib_device_must_exist)
{
	char err[ERR_LEN];
	xfer_backend b;
	if (xfer_backend_parse("ucx", &b, err) < 0)
		cr_skip_test("%s", err);
	xfer_config xc = { .role = XFER_DECODE, .backend = XFER_UCX, .ib_devices = "mlx5_9" };
	xfer *x = xfer_create(&xc, err);
	cr_expect_null(x);
	cr_expect(strstr(err, "mlx5_9") && strstr(err, "tcp/lo"), "%s", err);
	xc.ib_devices = "lo";
	x = xfer_create(&xc, err);
	cr_expect(x, "lo should be accepted: %s", err);
	xfer_destroy(x);
	cr_expect_eq(xfer_backend_parse("mooncake", &b, err), 0);
	cr_expect_eq(b, XFER_UCX);
}

Test(xfer, handshake_mismatch_is_named)
{
	const char *model = stories();
	node p, d;
	node_opts op = { .role = XFER_PREFILL, .backend = XFER_TCP, .page_size = 16 };
	node_opts od = { .role = XFER_DECODE, .backend = XFER_TCP, .page_size = 32 };
	node_open(&p, model, &op);
	node_open(&d, model, &od);
	int32_t pr[20];
	make_prompt(1, 20, pr);
	pd_submit(&p, &d, 1, 77, pr, 20, 5);
	pump(&d, 1, 20);
	cr_expect_eq(d.res[1].finish, ENGINE_FINISH_ERROR);
	cr_expect(strstr(d.res[1].message, "page size: prefill 16, decode 32"), "%s", d.res[1].message);
	assert_pages_back(&d);
	node_close(&d);
	node_close(&p);

	/* dtype */
	op.page_size = od.page_size = 16;
	od.kv_dtype = QTYPE_F16;
	node_open(&p, model, &op);
	node_open(&d, model, &od);
	pd_submit(&p, &d, 2, 78, pr, 20, 5);
	pump(&d, 1, 20);
	cr_expect(strstr(d.res[2].message, "kv cache dtype"), "%s", d.res[2].message);
	node_close(&d);
	node_close(&p);

	/* another model */
	const char *other = test_shared("models/stories260K-q8_0.gguf");
	if (other) {
		od.kv_dtype = 0;
		node_open(&p, model, &op);
		node_open(&d, other, &od);
		pd_submit(&p, &d, 3, 79, pr, 20, 5);
		pump(&d, 1, 20);
		cr_expect(strstr(d.res[3].message, "model: prefill"), "%s", d.res[3].message);
		node_close(&d);
		node_close(&p);
	}
}

/* HMAC-SHA256(key, nonce || role), checked against Python's hmac module
   (hmac.new(b"Jefe", b"what do ya want for nothing?" + 4 * b"\0" + b"prefill",
   hashlib.sha256)); the role and the key both change the MAC. */
Test(auth, hmac_known_answer_and_roles)
{
	static const uint8_t want[AUTH_MAC] = { 0x58, 0xf1, 0xde, 0x8b, 0xb8, 0xa8, 0xf8, 0x20, 0x35, 0xd6, 0x4c,
						0x34, 0x8e, 0xcf, 0x22, 0x56, 0xf6, 0x37, 0xc0, 0x64, 0xa6, 0xc3,
						0x63, 0x87, 0xbf, 0x5d, 0x64, 0x24, 0xdc, 0x78, 0xb3, 0x76 };
	uint8_t nonce[AUTH_NONCE] = { 0 }, mac[AUTH_MAC], mac2[AUTH_MAC];
	memcpy(nonce, "what do ya want for nothing?", 28);
	cr_assert_eq(auth_mac("Jefe", 4, nonce, "prefill", mac), 0);
	cr_expect(!memcmp(mac, want, AUTH_MAC), "HMAC differs from the reference");
	cr_expect(auth_equal(mac, want));
	cr_assert_eq(auth_mac("Jefe", 4, nonce, "decode", mac2), 0);
	cr_expect(!auth_equal(mac, mac2), "the role is part of the MAC");
	cr_assert_eq(auth_mac("Jeff", 4, nonce, "prefill", mac2), 0);
	cr_expect(!auth_equal(mac, mac2), "the key is part of the MAC");
	uint8_t a[AUTH_NONCE], b[AUTH_NONCE];
	cr_assert_eq(auth_nonce(a), 0);
	cr_assert_eq(auth_nonce(b), 0);
	cr_expect(memcmp(a, b, AUTH_NONCE), "two nonces are equal");
}

/* Both sides share the secret: the handshake passes and PD output equals the
   unified output (pd_equals_unified with a secret). */
static void pd_secret_run_on(xfer_backend b, const char *ps, const char *ds, const char *want_msg, const char *want_msg2)
{
	const char *model = stories();
	node p, d;
	node_opts op = { .role = XFER_PREFILL, .backend = b, .secret = ps };
	node_opts od = { .role = XFER_DECODE, .backend = b, .secret = ds };
	node_open(&p, model, &op);
	node_open(&d, model, &od);
	int32_t pr[40];
	make_prompt(5, 40, pr);
	engine_stats s0;
	engine_get_stats(d.e, &s0);
	pd_submit(&p, &d, 1, 91, pr, 40, 8);
	pump(&d, 1, 20);
	if (!want_msg) {
		cr_expect_eq(d.res[1].finish, ENGINE_FINISH_LENGTH, "%s", d.res[1].message);
		cr_expect_eq(d.res[1].n, 8);
		pump(&p, 1, 10);
	} else {
		cr_expect_eq(d.res[1].finish, ENGINE_FINISH_ERROR);
		cr_expect(strstr(d.res[1].message, want_msg), "want '%s' in: %s", want_msg, d.res[1].message);
		cr_expect(strstr(d.res[1].message, want_msg2), "want '%s' in: %s", want_msg2, d.res[1].message);
		xfer_stats xs;
		xfer_get_stats(d.x, &xs);
		cr_expect_eq(xs.rooms_ok, 0);
	}
	assert_pages_back(&d);
	engine_stats s1;
	engine_get_stats(d.e, &s1);
	cr_expect_eq(s1.pages_free + s1.pages_cached, s0.pages_free + s0.pages_cached);
	node_close(&d);
	node_close(&p);
}

static void pd_secret_run(const char *ps, const char *ds, const char *want_msg, const char *want_msg2)
{
	pd_secret_run_on(XFER_TCP, ps, ds, want_msg, want_msg2);
}

/* shm: the unix-socket connection that passes the pool is authenticated too */
Test(xfer, secret_matching_shm) { pd_secret_run_on(XFER_SHM, "s3cret", "s3cret", NULL, NULL); }
Test(xfer, secret_mismatch_shm)
{
	pd_secret_run_on(XFER_SHM, "s3cret", "nope", "disaggregation secret rejected by 127.0.0.1:", "another secret?");
}
Test(xfer, secret_matching_ucx)
{
	char err[ERR_LEN];
	xfer_backend b;
	if (xfer_backend_parse("ucx", &b, err) < 0)
		cr_skip_test("%s", err);
	pd_secret_run_on(XFER_UCX, "s3cret", "s3cret", NULL, NULL);
}
Test(xfer, secret_matching_works) { pd_secret_run("s3cret", "s3cret", NULL, NULL); }
Test(xfer, secret_mismatch_refused)
{
	pd_secret_run("s3cret", "other", "disaggregation secret rejected by 127.0.0.1:", "another secret?");
}
Test(xfer, secret_missing_on_decode_refused)
{
	pd_secret_run("s3cret", NULL, "disaggregation secret rejected by 127.0.0.1:", "this decode has none");
}
Test(xfer, secret_missing_on_prefill_refused)
{
	pd_secret_run(NULL, "s3cret", "disaggregation secret rejected by 127.0.0.1:", "this prefill has none");
}

static int raw_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	struct timeval tv = { 5, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void read_frame(int fd, kvw_hdr *h, uint8_t *pay, size_t cap)
{
	uint8_t hb[KVW_HDR];
	char err[ERR_LEN];
	size_t got = 0;
	while (got < KVW_HDR) {
		ssize_t r = read(fd, hb + got, KVW_HDR - got);
		cr_assert(r > 0, "connection closed before a frame");
		got += (size_t)r;
	}
	cr_assert_eq(kvw_hdr_decode(hb, h, err), 0, "%s", err);
	cr_assert(h->len <= cap);
	for (got = 0; got < h->len;) {
		ssize_t r = read(fd, pay + got, h->len - got);
		cr_assert(r > 0);
		got += (size_t)r;
	}
}

static void write_frame(int fd, uint16_t type, const void *p, size_t len)
{
	uint8_t hb[KVW_HDR];
	kvw_hdr_encode(hb, type, 0, len);
	cr_assert_eq(write(fd, hb, KVW_HDR), KVW_HDR);
	if (len)
		cr_assert_eq(write(fd, p, len), (ssize_t)len);
}

/* A peer that skips the handshake, or answers with a wrong MAC, or replays
   the prefill's own answer, gets REJECT and a closed connection; the secret
   never appears on the wire. */
Test(xfer, secret_raw_peers_refused)
{
	const char *model = stories();
	node p;
	node_opts op = { .role = XFER_PREFILL, .backend = XFER_TCP, .secret = "topsecret" };
	node_open(&p, model, &op);
	int port = xfer_bootstrap_port(p.x);
	kvw_hdr h;
	uint8_t pay[4096], nonce[AUTH_NONCE], mac[AUTH_MAC];

	/* 1: HELLO straight away */
	int fd = raw_connect(port);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_assert_eq(h.type, KVW_AUTH_CHALLENGE);
	cr_assert_eq(h.len, AUTH_NONCE);
	cr_expect(!memmem(pay, h.len, "topsecret", 9));
	kvw_hello hello;
	memset(&hello, 0, sizeof(hello));
	hello.proto = KVW_VERSION;
	hello.backend = KVW_BACKEND_TCP;
	uint8_t hb[256];
	size_t n = kvw_hello_encode(hb, &hello, 0);
	write_frame(fd, KVW_HELLO, hb, n);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_expect_eq(h.type, KVW_REJECT);
	cr_expect(memmem(pay, h.len, "no answer to the challenge", 26), "%.*s", (int)h.len, (char *)pay);
	cr_expect_eq(read(fd, pay, 1), 0, "the prefill closes the connection");
	close(fd);

	/* 2: a MAC with the wrong secret */
	fd = raw_connect(port);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_assert_eq(h.type, KVW_AUTH_CHALLENGE);
	memcpy(nonce, pay, AUTH_NONCE);
	cr_assert_eq(auth_mac("guess", 5, nonce, "decode", mac), 0);
	write_frame(fd, KVW_AUTH_RESPONSE, mac, AUTH_MAC);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_expect_eq(h.type, KVW_REJECT);
	cr_expect(memmem(pay, h.len, "wrong answer", 12), "%.*s", (int)h.len, (char *)pay);
	close(fd);

	/* 3: reflection: send the prefill its own nonce as our challenge and replay
	   its answer as ours; the role in the MAC makes that wrong */
	fd = raw_connect(port);
	read_frame(fd, &h, pay, sizeof(pay));
	memcpy(nonce, pay, AUTH_NONCE);
	write_frame(fd, KVW_AUTH_CHALLENGE, nonce, AUTH_NONCE);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_assert_eq(h.type, KVW_AUTH_RESPONSE);
	write_frame(fd, KVW_AUTH_RESPONSE, pay, AUTH_MAC);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_expect_eq(h.type, KVW_REJECT);
	close(fd);

	/* 4: the right MAC is accepted: then HELLO is answered (by HELLO_OK or a
	   layout REJECT, either means the handshake passed) */
	fd = raw_connect(port);
	read_frame(fd, &h, pay, sizeof(pay));
	memcpy(nonce, pay, AUTH_NONCE);
	cr_assert_eq(auth_mac("topsecret", 9, nonce, "decode", mac), 0);
	write_frame(fd, KVW_AUTH_RESPONSE, mac, AUTH_MAC);
	uint8_t mine[AUTH_NONCE] = { 1, 2, 3 };
	write_frame(fd, KVW_AUTH_CHALLENGE, mine, AUTH_NONCE);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_assert_eq(h.type, KVW_AUTH_RESPONSE, "got %s: %.*s", kvw_type_name(h.type), (int)h.len, (char *)pay);
	cr_assert_eq(auth_mac("topsecret", 9, mine, "prefill", mac), 0);
	cr_expect(auth_equal(pay, mac), "the prefill proves the secret too");
	write_frame(fd, KVW_HELLO, hb, n);
	read_frame(fd, &h, pay, sizeof(pay));
	cr_expect_eq(h.type, KVW_REJECT);
	cr_expect(!memmem(pay, h.len, "secret", 6), "past the secret: %.*s", (int)h.len, (char *)pay);
	close(fd);
	node_close(&p);
}

static void prefill_gone(xfer_backend backend)
{
	const char *model = stories();
	node p, d;
	node_opts op = { .role = XFER_PREFILL, .backend = backend }, od = { .role = XFER_DECODE, .backend = backend };
	node_open(&d, model, &od);
	/* nothing listens: connect fails at once */
	char err[ERR_LEN];
	int32_t pr[40];
	make_prompt(3, 40, pr);
	engine_request rd = req(1, pr, 40, 5);
	rd.pd = ENGINE_PD_IMPORT;
	cr_assert_eq(xfer_decode_add(d.x, 5, 1, "127.0.0.1", 1, 40, err), 0, "%s", err);
	cr_assert_eq(engine_submit(d.e, &rd, err), 0, "%s", err);
	pump(&d, 1, 20);
	cr_expect_eq(d.res[1].finish, ENGINE_FINISH_ERROR);
	cr_expect(strstr(d.res[1].message, "127.0.0.1:1"), "%s", d.res[1].message);
	assert_pages_back(&d);

	/* a prefill that goes away after the decode connected: rooms fail, pages come back */
	node_open(&p, model, &op);
	int port = xfer_bootstrap_port(p.x);
	rd.rid = 2;
	cr_assert_eq(xfer_decode_add(d.x, 6, 2, "127.0.0.1", port, 40, err), 0, "%s", err);
	cr_assert_eq(engine_submit(d.e, &rd, err), 0, "%s", err);
	/* the prefill never gets the HTTP half of room 6, then dies */
	struct timespec ts = { 0, 300000000 };
	nanosleep(&ts, NULL);
	node_close(&p);
	pump(&d, 2, 20);
	cr_expect_eq(d.res[2].finish, ENGINE_FINISH_ERROR);
	cr_expect(strstr(d.res[2].message, "prefill"), "%s", d.res[2].message);
	assert_pages_back(&d);

	/* a new prefill on the same port: the decode works with it, no restart */
	op.bootstrap_port = port;
	node_open(&p, model, &op);
	pd_submit(&p, &d, 3, 7, pr, 40, 5);
	pump(&d, 3, 30);
	cr_expect_eq(d.res[3].finish, ENGINE_FINISH_LENGTH, "%s", d.res[3].message);
	cr_expect_eq(d.res[3].n, 5);
	assert_pages_back(&d);
	assert_pages_back(&p);
	node_close(&p);
	node_close(&d);
}

static void abort_both(xfer_backend backend)
{
	const char *model = stories();
	node p, d;
	node_opts op = { .role = XFER_PREFILL, .backend = backend }, od = { .role = XFER_DECODE, .backend = backend };
	node_open(&p, model, &op);
	node_open(&d, model, &od);
	char err[ERR_LEN];
	int32_t pr[60];
	make_prompt(4, 60, pr);
	/* decode-side abort while the prefill has not started (no HTTP half yet) */
	engine_request rd = req(1, pr, 60, 50);
	rd.pd = ENGINE_PD_IMPORT;
	cr_assert_eq(xfer_decode_add(d.x, 11, 1, "127.0.0.1", xfer_bootstrap_port(p.x), 60, err), 0, "%s", err);
	cr_assert_eq(engine_submit(d.e, &rd, err), 0, "%s", err);
	struct timespec ts = { 0, 200000000 };
	nanosleep(&ts, NULL);
	engine_abort(d.e, 1);
	pump(&d, 1, 20);
	cr_expect_eq(d.res[1].finish, ENGINE_FINISH_ABORT, "%s", d.res[1].message);
	/* wait until the prefill has heard of the cancellation (ROOM_FAIL); the
	   decode sends it once its connection is up, which under the sanitizers
	   on a loaded 2-core machine took more than 2.5 s */
	xfer_stats ps;
	for (int i = 0; i < 2000; i++) {
		xfer_get_stats(p.x, &ps);
		if (ps.rooms_failed >= 1)
			break;
		nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
	}
	cr_assert_geq(ps.rooms_failed, 1, "the prefill never heard of the cancelled room");
	/* the prefill now gets the HTTP half of that room: the decode has cancelled it */
	engine_request rp = req(1, pr, 60, 1);
	rp.pd = ENGINE_PD_EXPORT;
	cr_assert_eq(engine_submit(p.e, &rp, err), 0, "%s", err);
	cr_assert_eq(xfer_prefill_add(p.x, 11, 1, 60, err), 0, "%s", err);
	pump(&p, 1, 20);
	cr_expect_eq(p.res[1].finish, ENGINE_FINISH_ERROR, "prefill should fail a cancelled room (%d)", p.res[1].finish);
	assert_pages_back(&p);
	assert_pages_back(&d);

	/* prefill-side abort: the decode fails the room at once */
	pd_submit(&p, &d, 2, 12, pr, 60, 50);
	engine_abort(p.e, 2);
	pump(&p, 2, 20);
	pump(&d, 2, 20);
	if (p.res[2].finish == ENGINE_FINISH_ABORT) {
		cr_expect_eq(d.res[2].finish, ENGINE_FINISH_ERROR, "%s", d.res[2].message);
	} /* else the prefill finished before the abort landed: then the decode simply succeeds */
	assert_pages_back(&p);
	assert_pages_back(&d);
	node_close(&d);
	node_close(&p);
}

static int rooms_live(node *n)
{
	xfer_stats s;
	xfer_get_stats(n->x, &s);
	return s.rooms_live;
}

/* Wait (up to 10 s: sanitizer runs on a loaded machine are slow) until n has
   want rooms; returns how many it has. */
static int wait_rooms(node *n, int want)
{
	for (int i = 0; i < 1000 && rooms_live(n) != want; i++)
		nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	return rooms_live(n);
}

/* A decode request aborted while it still waits for pages (max_running 1,
   another request importing): its room goes with it, not at the bootstrap
   timeout (30 s here, as is the waiting timeout of the one importing). The router killed under load left such rooms behind
   for the whole timeout (tests/faults/router.sh: "rooms_live 1" with no
   pages used). */
static void abort_queued(xfer_backend backend)
{
	const char *model = stories();
	node p, d;
	node_opts op = { .role = XFER_PREFILL, .backend = backend, .timeout = 30 };
	node_opts od = { .role = XFER_DECODE, .backend = backend, .timeout = 30, .max_running = 1 };
	node_open(&p, model, &op);
	node_open(&d, model, &od);
	char err[ERR_LEN];
	int32_t pr[40];
	make_prompt(5, 40, pr);
	int port = xfer_bootstrap_port(p.x);
	/* rid 1 is admitted and waits for its KV (the prefill never gets its HTTP half) */
	engine_request rd = req(1, pr, 40, 5);
	rd.pd = ENGINE_PD_IMPORT;
	rd.reserve_tokens = 16;
	cr_assert_eq(xfer_decode_add(d.x, 21, 1, "127.0.0.1", port, 40, err), 0, "%s", err);
	cr_assert_eq(engine_submit(d.e, &rd, err), 0, "%s", err);
	/* rid 2 queues behind it for a running slot */
	rd.rid = 2;
	cr_assert_eq(xfer_decode_add(d.x, 22, 2, "127.0.0.1", port, 40, err), 0, "%s", err);
	cr_assert_eq(engine_submit(d.e, &rd, err), 0, "%s", err);
	engine_stats s;
	for (int i = 0; i < 1000; i++) {
		engine_get_stats(d.e, &s);
		if (s.importing == 1 && s.waiting == 1 && rooms_live(&d) == 2)
			break;
		nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	}
	cr_assert(s.importing == 1 && s.waiting == 1, "want one importing, one waiting: %d, %d", s.importing,
		  s.waiting);
	cr_assert_eq(rooms_live(&d), 2);

	engine_abort(d.e, 2);
	pump(&d, 1, 20);
	cr_expect_eq(d.res[2].finish, ENGINE_FINISH_ABORT, "%s", d.res[2].message);
	cr_assert_eq(wait_rooms(&d, 1), 1, "the aborted request's room outlived it");

	engine_abort(d.e, 1);
	pump(&d, 2, 20);
	cr_expect_eq(d.res[1].finish, ENGINE_FINISH_ABORT, "%s", d.res[1].message);
	cr_expect_eq(wait_rooms(&d, 0), 0);
	assert_pages_back(&d);
	assert_pages_back(&p);
	cr_expect_eq(wait_rooms(&p, 0), 0);
	node_close(&d);
	node_close(&p);
}

static bool have_ucx(void)
{
	char err[ERR_LEN];
	xfer_backend b;
	return xfer_backend_parse("ucx", &b, err) == 0;
}

Test(xfer, prefill_gone_fails_rooms_and_decode_recovers) { prefill_gone(XFER_TCP); }
Test(xfer, abort_both_directions) { abort_both(XFER_TCP); }
Test(xfer, abort_queued_drops_room) { abort_queued(XFER_TCP); }
Test(xfer, shm_prefill_gone) { prefill_gone(XFER_SHM); }
Test(xfer, shm_abort_both_directions) { abort_both(XFER_SHM); }
Test(xfer, ucx_prefill_gone)
{
	if (!have_ucx())
		cr_skip_test("no UCX in this build");
	prefill_gone(XFER_UCX);
}
Test(xfer, ucx_abort_both_directions)
{
	if (!have_ucx())
		cr_skip_test("no UCX in this build");
	abort_both(XFER_UCX);
}

Test(xfer, ucx_abort_queued_drops_room)
{
	if (!have_ucx())
		cr_skip_test("no UCX in this build");
	abort_queued(XFER_UCX);
}

Test(xfer, backend_names)
{
	char err[ERR_LEN];
	xfer_backend b;
	cr_expect_eq(xfer_backend_parse("tcp", &b, err), 0);
	cr_expect_eq(b, XFER_TCP);
	cr_expect_eq(xfer_backend_parse("carrier-pigeon", &b, err), ERR_INVAL);
	cr_expect(strstr(err, "tcp, shm, ucx, fake"), "%s", err);
}

/* ---- frames ---------------------------------------------------------------- */

Test(kvwire, roundtrip_and_rejects)
{
	char err[ERR_LEN];
	uint8_t h[KVW_HDR];
	kvw_hdr hd;
	kvw_hdr_encode(h, KVW_AUX, 123456789012345ull, 77);
	cr_assert_eq(kvw_hdr_decode(h, &hd, err), 0, "%s", err);
	cr_expect_eq(hd.type, KVW_AUX);
	cr_expect_eq(hd.room, 123456789012345ull);
	cr_expect_eq(hd.len, 77);
	h[0] ^= 1;
	cr_expect_eq(kvw_hdr_decode(h, &hd, err), ERR_PROTO);
	cr_expect(strstr(err, "magic"), "%s", err);
	kvw_hdr_encode(h, 99, 0, 0);
	cr_expect_eq(kvw_hdr_decode(h, &hd, err), ERR_PROTO);
	kvw_hdr_encode(h, KVW_KV_DATA, 0, (1ull << 30) + 1);
	cr_expect_eq(kvw_hdr_decode(h, &hd, err), ERR_PROTO);
	cr_expect(strstr(err, "limit"), "%s", err);

	int32_t pages[3] = { 5, 9, 2 }, back[3];
	uint8_t buf[64];
	size_t n = kvw_room_dest_encode(buf, 40, pages, 3);
	uint32_t np, npg;
	cr_assert_eq(kvw_room_dest_decode(buf, n, &np, back, 3, &npg, err), 0, "%s", err);
	cr_expect_eq(np, 40);
	cr_expect_eq(npg, 3);
	cr_expect_eq(back[1], 9);
	cr_expect_eq(kvw_room_dest_decode(buf, n - 1, &np, back, 3, &npg, err), ERR_PROTO);
	cr_expect_eq(kvw_room_dest_decode(buf, n, &np, back, 2, &npg, err), ERR_PROTO);

	kvw_aux a = { .first_token = 42, .logprob = -0.5f, .cached_tokens = 16, .n_prompt = 40, .n_top = 2 };
	a.top[0] = (sampler_logprob){ 42, -0.5f };
	a.top[1] = (sampler_logprob){ 7, -1.5f };
	uint8_t ab[256];
	n = kvw_aux_encode(ab, &a);
	kvw_aux b;
	cr_assert_eq(kvw_aux_decode(ab, n, &b, err), 0, "%s", err);
	cr_expect_eq(b.first_token, 42);
	cr_expect_eq(b.top[1].id, 7);
	cr_expect_eq(kvw_aux_decode(ab, n + 1, &b, err), ERR_PROTO);
	a.cached_tokens = 41;
	n = kvw_aux_encode(ab, &a);
	cr_expect_eq(kvw_aux_decode(ab, n, &b, err), ERR_PROTO, "cached > prompt accepted");

	kvw_layout l1 = { 1, 5, 4, 8, 16, 1 }, l2 = l1;
	cr_expect_eq(kvw_layout_diff(&l1, &l2, err), 0);
	l2.head_dim = 16;
	cr_expect_eq(kvw_layout_diff(&l1, &l2, err), ERR_PROTO);
	cr_expect(strstr(err, "head dim: prefill 8, decode 16"), "%s", err);

	/* random bytes never crash a decoder */
	srand(7);
	for (int it = 0; it < 20000; it++) {
		uint8_t rnd[300];
		size_t len = (size_t)(rand() % 300);
		for (size_t i = 0; i < len; i++)
			rnd[i] = (uint8_t)rand();
		kvw_hello hh;
		kvw_shm_attach sa;
		uint32_t f, k;
		int32_t pg[64];
		kvw_hello_decode(rnd, len, it & 1, &hh, err);
		kvw_shm_attach_decode(rnd, len, &sa, err);
		kvw_room_dest_decode(rnd, len, &np, pg, 64, &npg, err);
		kvw_range_decode(rnd, len, &f, &k, err);
		kvw_aux_decode(rnd, len, &b, err);
		if (len >= KVW_HDR)
			kvw_hdr_decode(rnd, &hd, err);
	}
}
