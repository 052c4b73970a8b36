/* bench_transfer.c - `pdserve bench transfer`: KV transfer throughput and
 * per-request latency of each transfer backend through the real transfer
 * path (src/disagg/xfer.c), next to the machine's memcpy and TCP loopback
 * ceilings measured in the same run.
 *
 * The payload is the KV of one prompt (default 2048 tokens) of a model with
 * the 1.1B synthetic shape: 16 layers x 8 kv heads x 128 dims, f16 KV, i.e.
 * 2 x 16 x 1024 x 2 bytes = 64 KiB per token, 128 MiB per request. We
 * synthesize such a model (model/synth.h: F16, tiny FFN and vocabulary) into
 * a temporary directory; only its KV layout matters, because both engines
 * run with engine_config.skip_compute (no forward pass, pages left as they
 * are, first token 0): computing 2048 tokens of a 1.1B shape on our CPU
 * kernels would take far longer than moving them.
 *
 * For each backend we fork a prefill process and a decode process, each
 * with its own engine and xfer wired exactly as two `pdserve server`
 * processes wire them (minus HTTP). The prefill submits every EXPORT request
 * up front (each waits for its destination, as a request the router sent
 * would); the decode submits one IMPORT request at a time, like a router
 * sending one request after another, and measures
 *   latency:  xfer_decode_add -> the request's final event (what a client
 *             of the decode would see for a one-token answer), and
 *   transfer: ROOM_DEST sent -> AUX in, the transfer layer's own time
 *             (xfer_take_timing; what a response's meta_info.pd reports).
 * GB/s = payload bytes / transfer time (GB = 1e9 bytes). Every number is a
 * median over the measured requests; warm-up requests first pay for
 * connecting, the UCX endpoint and first-touch page faults of both pools.
 *
 * Ceilings, same run, medians of --reps: memcpy of one payload between two
 * pre-faulted buffers (one thread), and a plain TCP stream over 127.0.0.1
 * from a child process into a payload-sized buffer (1 MiB writes, default
 * socket options). Each is measured with two piece sizes, 1 MiB and one
 * page segment (glibc's memcpy switches to non-temporal stores for large
 * copies; loopback TCP may read faster in cache-sized pieces), and the
 * better one counts. A backend is compared with its own ceiling measured
 * right before and right after it (the better of the two), so that load
 * from other processes on a shared machine hits both sides of a ratio
 * alike and cannot flatter it. Targets (issue 6), as ratios: shm >= 80% of
 * memcpy, tcp >= 70% of the TCP stream, ucx over shared memory
 * (UCX_TLS=sm) >= 70% of memcpy, ucx over tcp (UCX_TLS=tcp) >= 50% of the
 * TCP stream. A missed target is printed as such; it does not change the
 * exit status (0 when every backend ran, 1 when one failed, 2 usage).
 *
 * Processes: the parent never starts a thread and never creates a UCX
 * context, so every child is forked from a clean process; UCX_TLS is set
 * in the parent just around the forks of a ucx variant (UCX reads it when
 * a child creates its context). Children die with the parent
 * (PR_SET_PDEATHSIG) and the parent kills them after --timeout.
 *
 * Left out: several requests in flight at once, overlap with compute
 * (skip_compute removes compute), HTTP and the router (`pdserve bench
 * serving` measures those), RDMA hardware (UCX picks it up where it exists).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "cmd/cmd.h"
#include "cmd/common.h"
#include "disagg/xfer.h"
#include "engine/engine.h"
#include "kernels/qtypes.h"
#include "model/llama.h"
#include "model/synth.h"

#define MAXREQ 256
#define ROOM0 0x5844000000ull /* room ids: any distinct 63-bit values */
#define STREAM_CHUNK (1u << 20)

enum { CEIL_MEMCPY, CEIL_TCP };

typedef struct {
	const char *name;     /* as in --backends */
	const char *label;    /* as in the table */
	xfer_backend backend;
	const char *ucx_tls;  /* UCX_TLS for both processes; NULL: the environment's */
	int ceiling;
	double target;        /* fraction of the ceiling; 0: none */
} variant;

static const variant variants[] = {
	{ "tcp", "tcp", XFER_TCP, NULL, CEIL_TCP, 0.70 },
	{ "shm", "shm", XFER_SHM, NULL, CEIL_MEMCPY, 0.80 },
	{ "ucx-sm", "ucx UCX_TLS=sm", XFER_UCX, "sm", CEIL_MEMCPY, 0.70 },
	{ "ucx-tcp", "ucx UCX_TLS=tcp", XFER_UCX, "tcp", CEIL_TCP, 0.50 },
	{ "ucx", "ucx (env UCX_TLS)", XFER_UCX, NULL, CEIL_MEMCPY, 0 },
};
#define N_VARIANTS (int)(sizeof(variants) / sizeof(variants[0]))

typedef struct {
	const char *model;    /* --model: use this GGUF's KV layout instead of synthesizing */
	const char *backends;
	long tokens, page, chunk, requests, warmup, reps;
	double timeout;       /* seconds per backend */
	bool verbose;
} bopts;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve bench transfer [options]\n"
		"  Moves the KV of one prompt between a prefill and a decode process through\n"
		"  each transfer backend (forward pass skipped) and prints GB/s and latency\n"
		"  next to memcpy and TCP loopback ceilings measured in the same run.\n"
		"  --backends LIST          of tcp,shm,ucx-sm,ucx-tcp,ucx (default tcp,shm,ucx-sm,ucx-tcp;\n"
		"                           ucx = UCX_TLS and UCX_* tuning from the environment, judged\n"
		"                           like ucx-sm / ucx-tcp when UCX_TLS is sm / tcp)\n"
		"  --tokens N               prompt tokens per request (default 2048)\n"
		"  --requests N             measured requests per backend (default 10)\n"
		"  --warmup N               requests before measuring (default 2)\n"
		"  --reps N                 ceiling measurements (default 7)\n"
		"  --page-size N            tokens per KV page (default 16)\n"
		"  --chunked-prefill-size N prefill chunk: pages leave after each (default 512)\n"
		"  --model PATH             use this GGUF's KV layout (default: a synthesized\n"
		"                           16 layers x 8 kv heads x 128 dims model, the 1.1B shape)\n"
		"  --timeout S              per backend (default 120)\n"
		"  --verbose                engine and transfer logs of the children\n");
}

/* ---------------------------------------------------------------- helpers */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median of v[0..n) (sorts v). */
static double median(double *v, int n)
{
	if (n <= 0)
		return 0;
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read exactly n bytes before the deadline (clock_now_s). 0, or -1 on EOF,
   error or timeout. */
static int read_all(int fd, void *p, size_t n, double deadline)
{
	char *c = p;
	while (n) {
		int ms = (int)((deadline - clock_now_s()) * 1000);
		if (ms <= 0)
			return -1;
		struct pollfd pf = { fd, POLLIN, 0 };
		int k = poll(&pf, 1, ms);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

static void make_prompt(int seed, int len, int n_vocab, int32_t *out)
{
	uint32_t v = (uint32_t)seed * 2654435761u + 7u;
	out[0] = 1;
	for (int i = 1; i < len; i++) {
		v = v * 1103515245u + 12345u;
		out[i] = 3 + (int32_t)((v >> 8) % (uint32_t)(n_vocab - 3));
	}
}

/* ---------------------------------------------------------------- ceilings */

/* memcpy of `bytes` between two pre-faulted buffers, `piece` bytes per
   call: median GB/s of reps. */
static double memcpy_gbps(size_t bytes, size_t piece, int reps)
{
	char *a = alloc_bytes(bytes), *b = alloc_bytes(bytes);
	double v[64], r = 0;
	if (a && b) {
		memset(a, 1, bytes);
		memset(b, 2, bytes);
		memcpy(b, a, bytes); /* warm */
		for (int i = 0; i < reps; i++) {
			double t0 = clock_now_s();
			for (size_t off = 0; off < bytes; off += piece)
				memcpy(b + off, a + off, bytes - off < piece ? bytes - off : piece);
			double t = clock_now_s() - t0;
			a[(size_t)i * 4096 % bytes] = (char)b[bytes - 1 - i]; /* keep the copies observable */
			v[i] = (double)bytes / t / 1e9;
		}
		r = median(v, reps);
	}
	alloc_free(a);
	alloc_free(b);
	return r;
}

/* A plain TCP stream over 127.0.0.1: a child writes `bytes` in 1 MiB writes
   after each 1-byte go, this process reads them into a payload-sized
   buffer, `piece` bytes per recv. Median GB/s of reps; 0 on failure (err
   says why). */
static double tcp_stream_gbps(size_t bytes, size_t piece, int reps, char err[ERR_LEN])
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	double v[64], res = 0;
	char *buf = NULL;
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), fd = -1;
	pid_t pid = -1;
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
		err_set(err, ERR_IO, "TCP stream: listen on 127.0.0.1: %s", strerror(errno));
		goto done;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		err_set(err, ERR_IO, "TCP stream: fork: %s", strerror(errno));
		goto done;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		char *src = malloc(STREAM_CHUNK), go;
		if (s < 0 || !src || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			_exit(1);
		setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		memset(src, 3, STREAM_CHUNK);
		for (int i = 0; i < reps + 1; i++) {
			if (read(s, &go, 1) != 1)
				_exit(1);
			for (size_t off = 0; off < bytes;) {
				size_t n = bytes - off < STREAM_CHUNK ? bytes - off : STREAM_CHUNK;
				if (write_all(s, src, n) < 0)
					_exit(1);
				off += n;
			}
		}
		_exit(0);
	}
	fd = accept(lfd, NULL, NULL);
	buf = alloc_bytes(bytes);
	if (fd < 0 || !buf) {
		err_set(err, ERR_IO, "TCP stream: accept: %s", fd < 0 ? strerror(errno) : "out of memory");
		goto done;
	}
	memset(buf, 0, bytes);
	for (int i = 0; i < reps + 1; i++) { /* the first one warms up */
		double t0 = clock_now_s();
		if (write_all(fd, "g", 1) < 0)
			break;
		size_t got = 0;
		while (got < bytes) {
			size_t n = bytes - got < piece ? bytes - got : piece;
			ssize_t r = recv(fd, buf + got, n, 0);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				break;
			got += (size_t)r;
		}
		if (got < bytes) {
			err_set(err, ERR_IO, "TCP stream: the sender stopped after %zu bytes", got);
			goto done;
		}
		if (i > 0)
			v[i - 1] = (double)bytes / (clock_now_s() - t0) / 1e9;
	}
	res = median(v, reps);
done:
	if (fd >= 0)
		close(fd);
	if (lfd >= 0)
		close(lfd);
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	alloc_free(buf);
	return res;
}

/* ---------------------------------------------------------------- one side */

typedef struct {
	engine *e;
	xfer *x;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool woken;
	engine_finish finish[MAXREQ];
	char message[128];    /* of the last request that did not finish LENGTH */
	int n_done;
} node;

static void node_wake(void *arg)
{
	node *n = arg;
	pthread_mutex_lock(&n->mu);
	n->woken = true;
	pthread_cond_signal(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

/* Engine + xfer of one side, wired as `pdserve server` wires them, with
   skip_compute and a pool for one request at a time. 0, or -1 with err
   (nothing left open). */
static int node_open(node *n, const bopts *o, const char *model, const variant *v, xfer_role role,
		     char err[ERR_LEN])
{
	memset(n, 0, sizeof(*n));
	pthread_mutex_init(&n->mu, NULL);
	pthread_cond_init(&n->cv, NULL);
	xfer_config xc = { .role = role, .backend = v->backend, .host = "127.0.0.1" };
	if (!(n->x = xfer_create(&xc, err)))
		goto fail;
	engine_config c = engine_config_default();
	c.model_path = model;
	c.n_threads = 1;
	c.kv_dtype = QTYPE_F16;
	c.page_size = (int)o->page;
	c.context_length = (int)(o->tokens + o->page);
	c.max_total_tokens = o->tokens + 4 * o->page; /* one request at a time; pages get reused */
	c.max_running = 4;
	c.chunked_prefill_size = (int)o->chunk;
	c.disable_radix_cache = true;
	c.skip_compute = true;
	c.notify = node_wake;
	c.notify_arg = n;
	c.kv_export = xfer_on_export;
	c.kv_import = xfer_on_import;
	c.kv_import_cancel = xfer_on_import_cancel;
	c.pd_arg = n->x;
	c.kv_shared = v->backend == XFER_SHM && role == XFER_DECODE;
	if (v->backend == XFER_UCX && role == XFER_DECODE) {
		c.kv_alloc = xfer_kv_alloc;
		c.kv_release = xfer_kv_release;
	}
	if (!(n->e = engine_create(&c, err)))
		goto fail;
	xfer_attach(n->x, n->e);
	return 0;
fail:
	xfer_destroy(n->x);
	return -1;
}

static void node_close(node *n)
{
	xfer_stop(n->x);
	engine_destroy(n->e);
	xfer_destroy(n->x);
}

/* Drain events until `want` requests are done or the deadline passes. */
static int node_pump(node *n, int want, double deadline)
{
	while (n->n_done < want) {
		engine_event ev[32];
		int k = engine_poll(n->e, ev, 32);
		for (int i = 0; i < k; i++) {
			if (!ev[i].finish || ev[i].rid >= MAXREQ)
				continue;
			n->finish[ev[i].rid] = ev[i].finish;
			if (ev[i].finish != ENGINE_FINISH_LENGTH)
				snprintf(n->message, sizeof(n->message), "%s", ev[i].message);
			n->n_done++;
		}
		if (k)
			continue;
		if (clock_now_s() > deadline)
			return ERR_TIMEOUT;
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
		n->woken = false;
		pthread_mutex_unlock(&n->mu);
	}
	return 0;
}

static engine_request request(uint64_t rid, const int32_t *prompt, int n, engine_pd pd)
{
	engine_request r = { .rid = rid, .prompt = prompt, .n_prompt = n, .max_new_tokens = 1, .pd = pd };
	r.sampling = sampler_params_default();
	r.sampling.temperature = 0;
	r.reserve_tokens = 1;
	return r;
}

typedef struct {
	int port;
	char err[ERR_LEN];
} prefill_hello;

/* The prefill process: every EXPORT request submitted up front, then serve
   until all are done and the parent closes ctl. Tells the parent its
   bootstrap port (or why not) on wfd. */
static int prefill_main(const bopts *o, const char *model, const variant *v, int wfd, int ctl)
{
	prefill_hello h = { 0 };
	node n;
	int total = (int)(o->warmup + o->requests), rc = 1;
	int32_t *prompt = alloc_array((size_t)o->tokens, sizeof(int32_t));
	if (!prompt || node_open(&n, o, model, v, XFER_PREFILL, h.err) < 0) {
		if (!prompt)
			snprintf(h.err, sizeof(h.err), "out of memory");
		write_all(wfd, &h, sizeof(h));
		return 1;
	}
	for (int i = 0; i < total; i++) {
		make_prompt(i, (int)o->tokens, engine_hparams(n.e)->n_vocab, prompt);
		engine_request r = request((uint64_t)i, prompt, (int)o->tokens, ENGINE_PD_EXPORT);
		if (engine_submit(n.e, &r, h.err) < 0 || xfer_prefill_add(n.x, ROOM0 + (uint64_t)i, (uint64_t)i,
									(int)o->tokens, h.err) < 0) {
			write_all(wfd, &h, sizeof(h));
			goto out;
		}
	}
	h.port = xfer_bootstrap_port(n.x);
	write_all(wfd, &h, sizeof(h));
	/* a request is done here when its last chunk is computed, before its
	   pages have left: serve until the parent says the decode is done */
	double deadline = clock_now_s() + o->timeout;
	rc = node_pump(&n, total, deadline) < 0;
	char c;
	read_all(ctl, &c, 1, deadline); /* EOF (or the deadline) ends the wait */
out:
	node_close(&n);
	alloc_free(prompt);
	return rc;
}

typedef struct {
	int n;                  /* measured requests */
	double lat[MAXREQ];     /* seconds, xfer_decode_add -> final event */
	double xfer_s[MAXREQ];  /* seconds, ROOM_DEST sent -> AUX in */
	uint64_t bytes;         /* per request */
	char desc[1024];        /* xfer_describe: the UCX transports in use */
	char err[ERR_LEN];
} decode_report;

/* The decode process: one IMPORT request at a time, timed. */
static int decode_main(const bopts *o, const char *model, const variant *v, int port, int wfd)
{
	decode_report *rep = alloc_zeroed(1, sizeof(*rep));
	int32_t *prompt = alloc_array((size_t)o->tokens, sizeof(int32_t));
	node n;
	bool opened = false;
	int total = (int)(o->warmup + o->requests);
	if (!rep || !prompt) {
		alloc_free(rep);
		alloc_free(prompt);
		return 1;
	}
	if (node_open(&n, o, model, v, XFER_DECODE, rep->err) < 0)
		goto out;
	opened = true;
	snprintf(rep->desc, sizeof(rep->desc), "%s", xfer_describe(n.x));
	for (int i = 0; i < total; i++) {
		make_prompt(i, (int)o->tokens, engine_hparams(n.e)->n_vocab, prompt);
		engine_request r = request((uint64_t)i, prompt, (int)o->tokens, ENGINE_PD_IMPORT);
		double t0 = clock_now_s();
		if (xfer_decode_add(n.x, ROOM0 + (uint64_t)i, (uint64_t)i, "127.0.0.1", port, (int)o->tokens,
				    rep->err) < 0)
			goto out;
		if (engine_submit(n.e, &r, rep->err) < 0) {
			xfer_forget(n.x, (uint64_t)i);
			goto out;
		}
		if (node_pump(&n, i + 1, t0 + o->timeout) < 0) {
			snprintf(rep->err, sizeof(rep->err), "request %d: no answer within %.0f s", i, o->timeout);
			goto out;
		}
		double t1 = clock_now_s();
		if (n.finish[i] != ENGINE_FINISH_LENGTH) {
			snprintf(rep->err, sizeof(rep->err), "request %d: %s", i, n.message);
			goto out;
		}
		xfer_timing t;
		if (xfer_take_timing(n.x, (uint64_t)i, &t) < 0) {
			snprintf(rep->err, sizeof(rep->err), "request %d: no transfer timing", i);
			goto out;
		}
		if (i >= o->warmup) {
			rep->lat[rep->n] = t1 - t0;
			rep->xfer_s[rep->n] = t.transfer_s;
			rep->n++;
		}
		rep->bytes = t.bytes;
	}
out:
	write_all(wfd, rep, sizeof(*rep));
	if (opened)
		node_close(&n);
	int rc = rep->err[0] != 0;
	alloc_free(rep);
	alloc_free(prompt);
	return rc;
}

/* ---------------------------------------------------------------- one backend */

typedef int (*child_fn)(const bopts *o, const char *model, const variant *v, int port, int wfd, int ctl);

/* Fork a child running fn. It reports on *rfd (child -> parent) and gets
   EOF on its ctl end when the parent closes *cfd. -1 on failure. */
static pid_t spawn(child_fn fn, const bopts *o, const char *model, const variant *v, int port, int *rfd, int *cfd)
{
	int up[2], down[2];
	if (pipe2(up, O_CLOEXEC) < 0)
		return -1;
	if (pipe2(down, O_CLOEXEC) < 0) {
		close(up[0]);
		close(up[1]);
		return -1;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(up[0]);
		close(down[1]);
		if (!o->verbose)
			log_set_level(LOG_WARN);
		_exit(fn(o, model, v, port, up[1], down[0]));
	}
	close(up[1]);
	close(down[0]);
	if (pid < 0) {
		close(up[0]);
		close(down[1]);
		return -1;
	}
	*rfd = up[0];
	*cfd = down[1];
	return pid;
}

static int prefill_body(const bopts *o, const char *model, const variant *v, int port, int wfd, int ctl)
{
	return prefill_main(o, model, v, wfd, ctl);
}

static int decode_body(const bopts *o, const char *model, const variant *v, int port, int wfd, int ctl)
{
	return decode_main(o, model, v, port, wfd);
}

static void reap(pid_t pid, double grace)
{
	if (pid <= 0)
		return;
	double end = clock_now_s() + grace;
	while (clock_now_s() < end) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* Run one variant: fill rep (rep->err set on failure). */
static void run_variant(const bopts *o, const char *model, const variant *v, decode_report *rep)
{
	memset(rep, 0, sizeof(*rep));
	char *saved = getenv("UCX_TLS") ? alloc_strdup(getenv("UCX_TLS")) : NULL;
	if (v->ucx_tls)
		setenv("UCX_TLS", v->ucx_tls, 1);
	int pfd = -1, pctl = -1, dfd = -1, dctl = -1;
	pid_t dpid = -1, ppid = spawn(prefill_body, o, model, v, 0, &pfd, &pctl);
	prefill_hello h;
	double deadline = clock_now_s() + o->timeout;
	if (ppid < 0) {
		snprintf(rep->err, sizeof(rep->err), "fork: %s", strerror(errno));
		goto out;
	}
	if (read_all(pfd, &h, sizeof(h), clock_now_s() + 60) < 0) {
		snprintf(rep->err, sizeof(rep->err), "the prefill process did not start");
		goto out;
	}
	if (h.err[0]) {
		snprintf(rep->err, sizeof(rep->err), "prefill: %.240s", h.err);
		goto out;
	}
	if ((dpid = spawn(decode_body, o, model, v, h.port, &dfd, &dctl)) < 0) {
		snprintf(rep->err, sizeof(rep->err), "fork: %s", strerror(errno));
		goto out;
	}
	if (read_all(dfd, rep, sizeof(*rep), deadline + 5) < 0) {
		memset(rep, 0, sizeof(*rep));
		snprintf(rep->err, sizeof(rep->err), "the decode process did not report within %.0f s", o->timeout);
	} else if (rep->err[0]) {
		char e[ERR_LEN];
		snprintf(e, sizeof(e), "%s", rep->err);
		snprintf(rep->err, sizeof(rep->err), "decode: %.240s", e);
	}
out:
	/* decode first (it closes its connections), then let the prefill go */
	if (dctl >= 0)
		close(dctl);
	reap(dpid, 10);
	if (pctl >= 0)
		close(pctl);
	reap(ppid, 10);
	if (pfd >= 0)
		close(pfd);
	if (dfd >= 0)
		close(dfd);
	if (v->ucx_tls) {
		if (saved)
			setenv("UCX_TLS", saved, 1);
		else
			unsetenv("UCX_TLS");
	}
	alloc_free(saved);
}

/* One ceiling (CEIL_MEMCPY or CEIL_TCP): the better median of two piece
   sizes, 1 MiB and seg. 0 when the TCP stream failed (err says why). */
static double measure_ceiling(int kind, size_t payload, size_t seg, int reps, char err[ERR_LEN])
{
	double big, small;
	if (kind == CEIL_MEMCPY) {
		big = memcpy_gbps(payload, STREAM_CHUNK, reps);
		small = memcpy_gbps(payload, seg, reps);
	} else {
		big = tcp_stream_gbps(payload, STREAM_CHUNK, reps, err);
		small = big > 0 ? tcp_stream_gbps(payload, seg, reps, err) : 0;
		if (small <= 0)
			return 0;
	}
	return big > small ? big : small;
}

/* ---------------------------------------------------------------- flags */

enum { O_BACKENDS = 256, O_TOKENS, O_REQUESTS, O_WARMUP, O_REPS, O_PAGE, O_CHUNK, O_MODEL, O_TIMEOUT, O_VERBOSE };

static int parse_args(int argc, char **argv, bopts *o)
{
	static const struct option opts[] = {
		{ "backends", required_argument, 0, O_BACKENDS },
		{ "tokens", required_argument, 0, O_TOKENS },
		{ "requests", required_argument, 0, O_REQUESTS },
		{ "warmup", required_argument, 0, O_WARMUP },
		{ "reps", required_argument, 0, O_REPS },
		{ "page-size", required_argument, 0, O_PAGE },
		{ "chunked-prefill-size", required_argument, 0, O_CHUNK },
		{ "model", required_argument, 0, O_MODEL },
		{ "model-path", required_argument, 0, O_MODEL },
		{ "timeout", required_argument, 0, O_TIMEOUT },
		{ "verbose", no_argument, 0, O_VERBOSE },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		const char *bad = NULL;
		switch (c) {
		case O_BACKENDS: o->backends = optarg; break;
		case O_TOKENS: if (cmd_parse_int(optarg, 1, 1 << 20, &o->tokens)) bad = "--tokens"; break;
		case O_REQUESTS: if (cmd_parse_int(optarg, 1, MAXREQ / 2, &o->requests)) bad = "--requests"; break;
		case O_WARMUP: if (cmd_parse_int(optarg, 0, MAXREQ / 2, &o->warmup)) bad = "--warmup"; break;
		case O_REPS: if (cmd_parse_int(optarg, 1, 64, &o->reps)) bad = "--reps"; break;
		case O_PAGE: if (cmd_parse_int(optarg, 1, 4096, &o->page)) bad = "--page-size"; break;
		case O_CHUNK: if (cmd_parse_int(optarg, 1, 1 << 24, &o->chunk)) bad = "--chunked-prefill-size"; break;
		case O_MODEL: o->model = optarg; break;
		case O_TIMEOUT: if (cmd_parse_float(optarg, 1, 3600, &o->timeout)) bad = "--timeout"; break;
		case O_VERBOSE: o->verbose = true; break;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "pdserve bench transfer: bad value for %s: '%s'\n", bad, optarg);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pdserve bench transfer: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	return 0;
}

/* --backends -> indexes into variants. */
static int pick_variants(const char *list, int *out, int *n_out)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", list);
	int n = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int k = -1;
		for (int i = 0; i < N_VARIANTS; i++)
			if (!strcmp(t, variants[i].name))
				k = i;
		if (k < 0 || n == N_VARIANTS) {
			fprintf(stderr, "pdserve bench transfer: unknown backend '%s' (tcp, shm, ucx-sm, ucx-tcp, ucx)\n",
				t);
			return -1;
		}
		out[n++] = k;
	}
	*n_out = n;
	return n ? 0 : -1;
}

/* ---------------------------------------------------------------- main */

int cmd_bench_transfer(int argc, char **argv)
{
	bopts o = { .backends = "tcp,shm,ucx-sm,ucx-tcp", .tokens = 2048, .page = 16, .chunk = 512,
		    .requests = 10, .warmup = 2, .reps = 7, .timeout = 120 };
	int rc = parse_args(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : rc;
	int pick[N_VARIANTS], n_pick;
	if (pick_variants(o.backends, pick, &n_pick) < 0)
		return 2;
	variant chosen[N_VARIANTS];
	for (int i = 0; i < n_pick; i++) {
		chosen[i] = variants[pick[i]];
		/* ucx with the environment's UCX_TLS: judged like the variant it matches */
		const char *tls = getenv("UCX_TLS");
		static char env_label[48];
		if (chosen[i].backend == XFER_UCX && !chosen[i].ucx_tls && tls) {
			snprintf(env_label, sizeof(env_label), "ucx $UCX_TLS=%.20s", tls);
			chosen[i].label = env_label;
			for (int k = 0; k < N_VARIANTS; k++)
				if (variants[k].ucx_tls && !strcmp(tls, variants[k].ucx_tls)) {
					chosen[i].ceiling = variants[k].ceiling;
					chosen[i].target = variants[k].target;
				}
		}
	}

	char err[ERR_LEN], dir[] = "/tmp/pdserve-bench-XXXXXX", path[128] = "";
	const char *model = o.model;
	if (!model) {
		synth_config sc = { .preset = "xfer-1.1b-shape", .seed = 1, .type = QTYPE_F16, .tied = true,
				    .n_vocab = 354, .n_ctx = (int)(o.tokens + o.page), .n_embd = 1024, .n_layer = 16,
				    .n_head = 8, .n_head_kv = 8, .n_ff = 64, .rope_base = 10000, .rms_eps = 1e-5f };
		if (!mkdtemp(dir)) {
			fprintf(stderr, "pdserve bench transfer: mkdtemp %s: %s\n", dir, strerror(errno));
			return 1;
		}
		snprintf(path, sizeof(path), "%s/model.gguf", dir);
		if (synth_write(&sc, path, err) < 0) {
			fprintf(stderr, "pdserve bench transfer: %s\n", err);
			rmdir(dir);
			return 1;
		}
		model = path;
	}
	/* the KV layout, from the model's hyperparameters (what the engines will use) */
	llama_model *lm = llama_model_load(model, err);
	if (!lm) {
		fprintf(stderr, "pdserve bench transfer: %s\n", err);
		rc = 1;
		goto cleanup;
	}
	const llama_hparams *hp = llama_model_hparams(lm);
	int n_layer = hp->n_layer;
	long n_pages = (o.tokens + o.page - 1) / o.page;
	size_t seg = llama_kv_page_bytes(hp, QTYPE_F16, (int)o.page); /* one page of one layer's K or V */
	size_t payload = (size_t)n_pages * 2 * (size_t)n_layer * seg;
	char shape[160];
	snprintf(shape, sizeof(shape), "%d layers x %d kv heads x %d dims x f16", n_layer, hp->n_head_kv,
		 hp->head_dim);
	llama_model_destroy(lm);

	printf("pdserve bench transfer: KV of a %ld-token prompt, %s = %.1f MiB per request\n"
	       "  (%ld pages of %ld tokens, chunked prefill %ld; forward pass skipped); %ld requests per backend\n"
	       "  after %ld warm-up, one at a time, prefill and decode in two processes on 127.0.0.1\n",
	       o.tokens, shape, (double)payload / 1048576.0, n_pages, o.page, o.chunk, o.requests, o.warmup);
	fflush(stdout);

	static const char *ceil_name[] = { "memcpy", "TCP stream" };
	decode_report *rep = alloc_zeroed((size_t)n_pick, sizeof(decode_report));
	double *ceil = alloc_zeroed((size_t)n_pick, sizeof(double));
	if (!rep || !ceil) {
		alloc_free(rep);
		alloc_free(ceil);
		rc = 1;
		goto cleanup;
	}
	for (int i = 0; i < n_pick; i++) {
		const variant *v = &chosen[i];
		fprintf(stderr, "bench transfer: %s ...\n", v->label);
		if (v->backend == XFER_UCX) {
			xfer_backend b;
			if (xfer_backend_parse("ucx", &b, err) < 0) {
				snprintf(rep[i].err, sizeof(rep[i].err), "%s", err);
				continue;
			}
		}
		double before = measure_ceiling(v->ceiling, payload, seg, (int)o.reps, err);
		run_variant(&o, model, v, &rep[i]);
		double after = measure_ceiling(v->ceiling, payload, seg, (int)o.reps, err);
		ceil[i] = before > after ? before : after;
		if (ceil[i] <= 0)
			fprintf(stderr, "pdserve bench transfer: %s\n", err);
	}

	printf("\n%-18s %7s %11s %15s   %-24s %-14s\n", "backend", "GB/s", "lat p50 ms", "transfer p50 ms",
	       "ceiling (adjacent)", "ratio / target");
	int failed = 0;
	for (int i = 0; i < n_pick; i++) {
		const variant *v = &chosen[i];
		decode_report *r = &rep[i];
		if (r->err[0] || r->n == 0) {
			printf("%-18s   failed: %s\n", v->label, r->err[0] ? r->err : "no measurements");
			failed++;
			continue;
		}
		double lat[MAXREQ], xs[MAXREQ];
		memcpy(lat, r->lat, sizeof(double) * (size_t)r->n);
		memcpy(xs, r->xfer_s, sizeof(double) * (size_t)r->n);
		double l50 = median(lat, r->n), x50 = median(xs, r->n);
		double gbps = (double)r->bytes / x50 / 1e9, c = ceil[i];
		double ratio = c > 0 ? gbps / c : 0;
		char cl[40], rt[64];
		snprintf(cl, sizeof(cl), "%s %.2f GB/s", ceil_name[v->ceiling], c);
		if (v->target > 0 && c > 0)
			snprintf(rt, sizeof(rt), "%3.0f%% / >= %.0f%% %s", ratio * 100, v->target * 100,
				 ratio >= v->target ? "met" : "MISSED");
		else
			snprintf(rt, sizeof(rt), "%3.0f%%", ratio * 100);
		printf("%-18s %7.2f %11.1f %15.1f   %-24s %s\n", v->label, gbps, l50 * 1e3, x50 * 1e3, cl, rt);
		if (r->bytes != payload)
			printf("%-18s   note: %llu bytes per request moved, %zu expected\n", "",
			       (unsigned long long)r->bytes, payload);
	}
	printf("\nGB = 1e9 bytes. GB/s = payload / transfer time (decode: ROOM_DEST sent -> AUX in), median of %ld\n"
	       "requests; lat = decode: request registered -> its final event (one-token answer), median. Ceiling:\n"
	       "measured just before and after that backend, the better of the two, each the better median (of %ld)\n"
	       "of 1 MiB and %zu KiB pieces (memcpy: pieces copied; TCP stream: 1 MiB writes, reads of that size).\n",
	       o.requests, o.reps, seg >> 10);
	for (int i = 0; i < n_pick; i++)
		if (chosen[i].backend == XFER_UCX && rep[i].desc[0])
			printf("%s: %s\n", chosen[i].label, rep[i].desc);
	alloc_free(rep);
	alloc_free(ceil);
	rc = failed ? 1 : 0;
cleanup:
	if (path[0]) {
		unlink(path);
		rmdir(dir);
	}
	return rc;
}
