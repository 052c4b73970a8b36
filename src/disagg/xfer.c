/* xfer.c - the KV transfer thread: connections, rooms, backends, timeouts.
 *
 * One thread runs a poll() loop over the prefill's listeners, every
 * connection, and an eventfd that other threads ring after queueing a
 * command (engine hooks, HTTP registrations). All room and connection state
 * below is owned by that thread; only the command queue, stats and the
 * timing map are shared (under mu).
 *
 * Rooms, prefill side (P):
 *
 *   xfer_prefill_add / ROOM_DEST (either order)
 *        |
 *   Bootstrapping --both present, n_prompt agrees: engine_export_ready--> WaitingForInput
 *        |                                                                    |
 *        | bootstrap timeout: engine_fail                    kv_export(pages) |
 *        v                                                                    v
 *      Failed <---- decode gone / ROOM_FAIL / bad dest ---------------- Transferring
 *                                                                             |
 *                                                   kv_export(last): AUX sent v
 *                                                                          Success
 *
 * Rooms, decode side (D):
 *
 *   xfer_decode_add -> Bootstrapping (connect + handshake; engine reserves pages)
 *     --kv_import + connection ready: ROOM_DEST--> WaitingForInput
 *     --first KV bytes--> Transferring --AUX with every page in: engine_import_done--> Success
 *   any state --prefill gone, ROOM_FAIL, timeout, bad frame--> Failed: engine_import_fail
 *   Bootstrapping --request ended before kv_import (aborted while queued for
 *     pages: kv_import with no pages, or xfer_forget): C_FORGET, room dropped
 *   client abort (kv_import_cancel): tcp -> Failed at once (this thread is the
 *     only writer of the pages); shm -> Cancelling until ROOM_FAIL_ACK (or the
 *     prefill process is gone), because the prefill writes into our pool.
 *
 * Who frees what: P's exported pages carry one engine reference each, given
 * back (engine_release_pages) when their bytes are on the socket (tcp) or in
 * D's pool (shm), or when the room or connection fails. D's pages belong to
 * D's engine; this file only decides when they are safe to free.
 *
 * Receiving KV over tcp: after a KV_DATA header and its 8-byte range, each
 * page_bytes segment is read with recv() straight into its destination in
 * the pool; nothing is staged. A frame for an unknown or failed room is read
 * into a scratch buffer and dropped.
 *
 * Cluster secret: with cfg.secret every connection (tcp bootstrap, shm
 * unix) starts in CS_AUTH: both sides send AUTH_CHALLENGE at once, answer
 * the other's with AUTH_RESPONSE, and only when both checks passed does the
 * decode send HELLO (auth.h, docs/PROTOCOL.md 2.1). In CS_AUTH nothing else
 * is accepted (frames of at most 1 KiB); a failure refuses the peer: the
 * prefill logs its address and answers REJECT, the decode fails the
 * connection's rooms with "disaggregation secret rejected by HOST:PORT".
 *
 * ucx: each connection has UCX objects of its own - the decode a worker
 * whose address it sends in UCX_INFO, the prefill an endpoint on a worker of
 * its own (ucx.h) - and conn_kill closes them. Where UCX has only network
 * transports (ucx_fences), nothing of that prefill's reaches our pool after
 * that, so its rooms' pages are freed at once instead of quarantined.
 *
 * Left out: TLS, more than one data connection per peer pair.
 */
#include "disagg/xfer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "disagg/auth.h"
#include "disagg/kvwire.h"
#include "disagg/ucx.h"
#include "engine/kvcache.h"
#include "model/gguf.h"

#define TAG "xfer"
#define MAX_SMALL_FRAME 65536   /* every frame but KV_DATA and ROOM_DEST */
#define MAX_ROOM_PAGES (1 << 20)
#define TIMINGS_MAX 4096

/* ---------------------------------------------------------------- types */

typedef enum { C_EXPORT, C_IMPORT, C_CANCEL, C_PADD, C_DADD, C_FORGET } cmd_kind;

typedef struct cmd {
	struct cmd *next;
	cmd_kind kind;
	uint64_t rid, room;
	int n_prompt;
	char host[64];
	int port;
	engine_kv_export ex; /* C_EXPORT; ex.pages is the copy below */
	int32_t *pages;
	int n_pages;
} cmd;

typedef struct outmsg {
	struct outmsg *next;
	uint8_t hdr[KVW_HDR];
	uint8_t *payload; /* owned */
	size_t plen;
	struct iovec *segs; /* page segments in the pool (KV_DATA); owned array */
	int n_segs;
	int32_t *rel_pages; /* engine references to give back once sent; owned */
	int n_rel;
	size_t total, sent;
	int pass_fd; /* sent with SCM_RIGHTS along with the first byte, or -1 */
} outmsg;

/* CS_AUTH only with a secret: between connect/accept and HELLO (auth.h) */
typedef enum { CS_CONNECTING, CS_AUTH, CS_HELLO, CS_ATTACH, CS_READY, CS_CLOSING, CS_DEAD } cstate;

typedef struct room room;

typedef struct conn {
	int fd;
	bool is_unix, outgoing;
	cstate st;
	char key[96];  /* decode side: "host:port" of the prefill's bootstrap service */
	char peer[96]; /* for messages */
	double last_rx, last_ping, t_open;
	outmsg *out_head, *out_tail;
	/* rx */
	uint8_t hbuf[KVW_HDR];
	size_t hgot;
	bool have_hdr;
	kvw_hdr h;
	uint8_t *pay;
	size_t pay_cap, pay_got;
	/* KV_DATA streaming */
	uint8_t rbuf[8];
	size_t rgot;
	bool kv_active;
	room *kv_room;
	uint32_t kv_first, kv_n;
	uint64_t kv_seg, kv_nseg, kv_left; /* segments done / total; bytes of frame left */
	size_t kv_off;
	int rx_fd; /* fd received with SCM_RIGHTS */
	/* prefill side, shm: the decode's pool mapped here */
	uint8_t *map;
	size_t map_bytes;
	kvw_shm_attach att;
	/* decode side, shm/ucx: who writes into our pool */
	pid_t peer_pid;
	/* prefill side, ucx: the endpoint into the decode's pool */
	ucx_peer *up;
	/* decode side, ucx: this prefill's own worker (closed with the
	   connection, which cuts the prefill off from our pool: ucx_fences) */
	ucx_worker *uw;
	bool peer_closed; /* EOF or reset from the peer: it has stopped (or died) */
	/* cluster secret (CS_AUTH): our challenge, and how far the exchange is */
	uint8_t nonce[AUTH_NONCE];
	bool auth_answered; /* we sent our MAC of the peer's nonce */
	bool auth_verified; /* the peer's MAC of our nonce was right */
} conn;

typedef enum { RS_BOOT, RS_WAITING, RS_TRANSFER, RS_SUCCESS, RS_FAILED, RS_CANCELLING } rstate;

static const char *rstate_name(rstate s)
{
	static const char *n[] = { "Bootstrapping", "WaitingForInput", "Transferring", "Success", "Failed", "Cancelling" };
	return n[s];
}

struct room {
	uint64_t room, rid;
	bool has_rid;
	rstate st;
	conn *c;
	double deadline, t_add, t_dest, t_first;
	uint64_t bytes;
	/* prefill */
	bool have_http, have_dest;
	int n_prompt_http;
	uint32_t n_prompt_dest;
	int32_t *dest;
	uint32_t n_dest;
	/* decode */
	char key[96];
	char host[64];
	int port;
	int n_prompt;
	int32_t *pages;
	int n_pages, need, n_got;
	uint8_t *got;
	bool dest_sent;
	double t_reserved;
	pid_t quarantine_pid; /* shm: wait for this process to be gone before freeing */
	double t_fence_ask;   /* quarantined: when we last asked that process again */
	bool pages_kept;      /* quarantined: the request has its answer; the page references are ours */
};

typedef struct {
	uint64_t rid;
	xfer_timing t;
} timing_entry;

#define FAILED_MAX 256 /* recent room failures, by rid */
typedef struct {
	uint64_t rid, room;
	bool has_rid;
	char why[ENGINE_MSG_LEN];
} failed_entry;

struct xfer {
	xfer_config cfg;
	engine *eng;
	const kvcache *kc;
	kvw_layout layout;
	uint64_t host_id;
	size_t page_bytes, layer_bytes;
	int n_layer;
	ucx *ux;           /* ucx backend */
	ucx_mem *pool_mem; /* ucx: our KV pool (decode: allocated, prefill: registered) */
	int ucx_inflight;  /* ucx batches awaiting their flush */
	int listen_fd, unix_fd, port;
	char unix_path[KVW_MAX_PATH];
	int wake_fd;
	pthread_t th;
	bool started;
	pthread_mutex_t mu;
	/* shared under mu */
	bool stop;
	cmd *cmd_head, *cmd_tail;
	xfer_stats stats;
	timing_entry *timings;
	int n_timings;
	/* thread only */
	conn **conns;
	int n_conns, cap_conns;
	room **rooms;
	int n_rooms, cap_rooms;
	failed_entry failed[FAILED_MAX]; /* ring: why a room failed, for a kv_import that comes later */
	int failed_next;
	uint8_t *scratch; /* page_bytes: where dropped KV bytes go */
	int32_t *dest_buf;  /* MAX_ROOM_PAGES for decoding ROOM_DEST */
	double last_tick;
};

/* ---------------------------------------------------------------- helpers */

static double env_or(const char *name, double dflt)
{
	const char *v = getenv(name);
	char *end;
	if (!v || !*v)
		return dflt;
	double d = strtod(v, &end);
	return (*end || !(d > 0)) ? dflt : d;
}

const char *xfer_backend_name(xfer_backend b)
{
	return b == XFER_TCP ? "tcp" : b == XFER_SHM ? "shm" : b == XFER_FAKE ? "fake" : b == XFER_UCX ? "ucx" : "?";
}

static uint32_t wire_backend(xfer_backend b)
{
	return b == XFER_SHM ? KVW_BACKEND_SHM : b == XFER_UCX ? KVW_BACKEND_UCX : KVW_BACKEND_TCP;
}

static const char *wire_name(uint32_t b)
{
	return b == KVW_BACKEND_SHM ? "shm" : b == KVW_BACKEND_UCX ? "ucx" : "tcp";
}

/* The prefill writes into the decode's memory itself (shm, ucx): freeing a
   room's pages needs its word (or its death). */
static bool one_sided(const xfer *x)
{
	return x->cfg.backend == XFER_SHM || x->cfg.backend == XFER_UCX;
}

int xfer_backend_parse(const char *name, xfer_backend *out, char err[ERR_LEN])
{
	if (!strcmp(name, "tcp"))
		*out = XFER_TCP;
	else if (!strcmp(name, "shm"))
		*out = XFER_SHM;
	else if (!strcmp(name, "fake"))
		*out = XFER_FAKE;
	else if (!strcmp(name, "mooncake") || !strcmp(name, "nixl") || !strcmp(name, "ucx")) {
		if (!ucx_available())
			return err_set(err, ERR_UNSUPPORTED,
				       "--disaggregation-transfer-backend %s: this build has no UCX (install libucx-dev and "
				       "rebuild); available: tcp, shm, fake",
				       name);
		if (strcmp(name, "ucx"))
			LOGI(TAG, "--disaggregation-transfer-backend %s: served by the UCX backend (RDMA where present)", name);
		*out = XFER_UCX;
	}
	else
		return err_set(err, ERR_INVAL, "--disaggregation-transfer-backend %s: unknown (tcp, shm, ucx, fake)", name);
	return 0;
}

/* Who "the same host" is for the same-host paths (shm, and trusting the
   prefill's pid with ucx): the kernel's boot id and our PID namespace. Two
   containers on one kernel with their own PID namespaces see different pids
   for one process (and SO_PEERCRED gives 0 across them), so a pid from the
   other side would name the wrong process, or none: such peers count as
   different hosts (shm is refused, ucx gets the cross-host rules). */
static uint64_t read_host_id(void)
{
	char buf[128] = { 0 }, ns[64] = { 0 };
	FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = '\0';
		fclose(f);
	}
	ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
	ns[n > 0 ? n : 0] = '\0';
	uint64_t h = 1469598103934665603ull;
	for (char *p = buf; *p && *p != '\n'; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	for (char *p = ns; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	return h;
}

static void set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void wake(xfer *x)
{
	uint64_t one = 1;
	ssize_t r = write(x->wake_fd, &one, sizeof(one));
	(void)r;
}

static void stats_add(xfer *x, int ok, int failed, uint64_t bytes, double tsec)
{
	pthread_mutex_lock(&x->mu);
	x->stats.rooms_ok += ok;
	x->stats.rooms_failed += failed;
	x->stats.bytes += (int64_t)bytes;
	x->stats.transfer_s += tsec;
	pthread_mutex_unlock(&x->mu);
}

/* ---------------------------------------------------------------- rooms */

static room *room_by_id(xfer *x, uint64_t id)
{
	for (int i = 0; i < x->n_rooms; i++)
		if (x->rooms[i]->room == id)
			return x->rooms[i];
	return NULL;
}

static room *room_by_rid(xfer *x, uint64_t rid)
{
	for (int i = 0; i < x->n_rooms; i++)
		if (x->rooms[i]->has_rid && x->rooms[i]->rid == rid)
			return x->rooms[i];
	return NULL;
}

static room *room_new(xfer *x, uint64_t id)
{
	if (x->n_rooms == x->cap_rooms) {
		int nc = x->cap_rooms ? x->cap_rooms * 2 : 64;
		room **nr = alloc_resize_array(x->rooms, (size_t)nc, sizeof(room *));
		if (!nr)
			return NULL;
		x->rooms = nr;
		x->cap_rooms = nc;
	}
	room *r = alloc_zeroed(1, sizeof(*r));
	if (!r)
		return NULL;
	r->room = id;
	r->t_add = clock_now_s();
	x->rooms[x->n_rooms++] = r;
	return r;
}

static void room_free(xfer *x, room *r)
{
	for (int i = 0; i < x->n_rooms; i++)
		if (x->rooms[i] == r) {
			x->rooms[i] = x->rooms[--x->n_rooms];
			break;
		}
	for (int i = 0; i < x->n_conns; i++)
		if (x->conns[i]->kv_room == r)
			x->conns[i]->kv_room = NULL; /* its in-flight KV bytes are dropped */
	alloc_free(r->dest);
	alloc_free(r->pages);
	alloc_free(r->got);
	alloc_free(r);
}

static void record_timing(xfer *x, const room *r, const kvw_aux *aux)
{
	pthread_mutex_lock(&x->mu);
	if (!x->timings)
		x->timings = alloc_array(TIMINGS_MAX, sizeof(timing_entry));
	if (x->timings) {
		if (x->n_timings == TIMINGS_MAX) {
			memmove(x->timings, x->timings + 1, sizeof(timing_entry) * (TIMINGS_MAX - 1));
			x->n_timings--;
		}
		timing_entry *t = &x->timings[x->n_timings++];
		t->rid = r->rid;
		t->t.prefill_queue_s = aux->queue_s;
		t->t.prefill_compute_s = aux->compute_s;
		t->t.transfer_s = clock_now_s() - r->t_dest;
		t->t.admission_wait_s = r->t_reserved > 0 ? r->t_reserved - r->t_add : 0;
		t->t.bytes = r->bytes;
	}
	pthread_mutex_unlock(&x->mu);
}

/* ---------------------------------------------------------------- output */

static void out_free(xfer *x, outmsg *m, bool give_back)
{
	if (m->n_rel && give_back && x->eng)
		engine_release_pages(x->eng, m->rel_pages, m->n_rel);
	alloc_free(m->payload);
	alloc_free(m->segs);
	alloc_free(m->rel_pages);
	alloc_free(m);
}

static void out_push(conn *c, outmsg *m)
{
	m->next = NULL;
	if (c->out_tail)
		c->out_tail->next = m;
	else
		c->out_head = m;
	c->out_tail = m;
}

/* Queue a frame with a small payload (copied). */
static int send_frame(conn *c, uint16_t type, uint64_t room_id, const void *payload, size_t len, int pass_fd)
{
	if (c->st == CS_DEAD)
		return ERR_IO;
	outmsg *m = alloc_zeroed(1, sizeof(*m));
	if (!m)
		return ERR_NOMEM;
	if (len) {
		m->payload = alloc_bytes(len);
		if (!m->payload) {
			alloc_free(m);
			return ERR_NOMEM;
		}
		memcpy(m->payload, payload, len);
	}
	kvw_hdr_encode(m->hdr, type, room_id, len);
	m->plen = len;
	m->total = KVW_HDR + len;
	m->pass_fd = pass_fd;
	out_push(c, m);
	return 0;
}

static int send_text(conn *c, uint16_t type, uint64_t room_id, const char *text)
{
	return send_frame(c, type, room_id, text, strlen(text), -1);
}

/* Write as much of the queue as the socket takes. <0 on a dead socket. */
static int flush_out(xfer *x, conn *c)
{
	while (c->out_head) {
		outmsg *m = c->out_head;
		struct iovec iov[64];
		int n = 0;
		size_t skip = m->sent;
		/* header, payload, then segments, skipping what was sent */
#define ADD(base, len)                                                          \
	do {                                                                    \
		size_t l_ = (len);                                              \
		if (skip >= l_) {                                               \
			skip -= l_;                                             \
		} else if (n < 64) {                                            \
			iov[n].iov_base = (uint8_t *)(base) + skip;             \
			iov[n].iov_len = l_ - skip;                             \
			n++;                                                    \
			skip = 0;                                               \
		}                                                               \
	} while (0)
		ADD(m->hdr, KVW_HDR);
		if (m->plen)
			ADD(m->payload, m->plen);
		for (int i = 0; i < m->n_segs && n < 64; i++)
			ADD(m->segs[i].iov_base, m->segs[i].iov_len);
#undef ADD
		struct msghdr mh;
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov;
		mh.msg_iovlen = (size_t)n;
		char cbuf[CMSG_SPACE(sizeof(int))];
		if (m->pass_fd >= 0 && m->sent == 0) {
			memset(cbuf, 0, sizeof(cbuf));
			mh.msg_control = cbuf;
			mh.msg_controllen = sizeof(cbuf);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &m->pass_fd, sizeof(int));
		}
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return 0;
			return ERR_IO;
		}
		m->sent += (size_t)w;
		if (m->sent < m->total)
			return 0;
		c->out_head = m->next;
		if (!c->out_head)
			c->out_tail = NULL;
		out_free(x, m, true);
	}
	return 0;
}

/* ---------------------------------------------------------------- connections */

static conn *conn_new(xfer *x, int fd, bool is_unix, bool outgoing, const char *peer)
{
	if (x->n_conns == x->cap_conns) {
		int nc = x->cap_conns ? x->cap_conns * 2 : 16;
		conn **ncs = alloc_resize_array(x->conns, (size_t)nc, sizeof(conn *));
		if (!ncs)
			return NULL;
		x->conns = ncs;
		x->cap_conns = nc;
	}
	conn *c = alloc_zeroed(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = fd;
	c->is_unix = is_unix;
	c->outgoing = outgoing;
	c->rx_fd = -1;
	c->st = CS_HELLO;
	c->last_rx = c->last_ping = c->t_open = clock_now_s();
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	x->conns[x->n_conns++] = c;
	pthread_mutex_lock(&x->mu);
	x->stats.connections = x->n_conns;
	pthread_mutex_unlock(&x->mu);
	return c;
}

static void fail_room(xfer *x, room *r, const char *why);
static void release_quarantined(xfer *x, room *r, const char *why);

/* Close c: fail or quarantine its rooms, give back exported pages. */
static void conn_kill(xfer *x, conn *c, const char *why)
{
	if (c->st == CS_DEAD)
		return;
	if (c->st == CS_AUTH && x->cfg.role == XFER_PREFILL)
		LOGW(TAG, "refused decode %s: disaggregation secret: no answer to the challenge (%s)", c->peer, why);
	else
		LOGW(TAG, "connection %s closed: %s", c->peer, why);
	c->st = CS_DEAD;
	if (c->up) {
		/* the decode must see this connection end no later than UCX's
		   (see the end of the thread's loop) */
		shutdown(c->fd, SHUT_RDWR);
		ucx_peer_close(c->up); /* pending flushes complete (with errors) in here */
		c->up = NULL;
	}
	/* with network transports only, nothing of this prefill's reaches our
	   pool once its worker is gone: its rooms' pages are free at once */
	bool fenced = c->uw && ucx_fences(x->ux);
	ucx_worker_close(c->uw);
	c->uw = NULL;
	for (int i = x->n_rooms - 1; i >= 0; i--) {
		room *r = x->rooms[i];
		if (r->c != c)
			continue;
		char msg[ENGINE_MSG_LEN];
		snprintf(msg, sizeof(msg), "%s %s: %s", x->cfg.role == XFER_DECODE ? "prefill" : "decode", c->peer, why);
		/* The peer closing the connection means it writes no more (a prefill
		   stops writing for a connection before closing it, and a dead one
		   cannot); when we give up on a silent peer it may still be writing. */
		if (x->cfg.role == XFER_DECODE && one_sided(x) && !fenced && !c->peer_closed && r->dest_sent &&
		    c->peer_pid > 0 &&
		    !(kill(c->peer_pid, 0) < 0 && errno == ESRCH)) {
			/* the prefill process may still write into these pages: hold them */
			r->c = NULL;
			r->quarantine_pid = c->peer_pid;
			r->st = RS_CANCELLING;
			LOGW(TAG, "room %llu: holding its pages until prefill pid %d is gone", (unsigned long long)r->room,
			     (int)c->peer_pid);
			/* the client gets its error now; only the pages wait (a stopped
			   prefill may stay alive for ever) */
			if (r->has_rid && r->pages && x->eng && !r->pages_kept) {
				engine_import_fail_keep(x->eng, r->rid, msg);
				r->pages_kept = true;
				stats_add(x, 0, 1, 0, 0);
			}
			continue;
		}
		fail_room(x, r, msg);
	}
	while (c->out_head) {
		outmsg *m = c->out_head;
		c->out_head = m->next;
		out_free(x, m, true);
	}
	c->out_tail = NULL;
}

static void conn_free(xfer *x, conn *c)
{
	for (int i = 0; i < x->n_conns; i++)
		if (x->conns[i] == c) {
			x->conns[i] = x->conns[--x->n_conns];
			break;
		}
	if (c->fd >= 0)
		close(c->fd);
	if (c->rx_fd >= 0)
		close(c->rx_fd);
	if (c->map)
		munmap(c->map, c->map_bytes);
	if (c->up)
		ucx_peer_close(c->up);
	ucx_worker_close(c->uw);
	alloc_free(c->pay);
	alloc_free(c);
	pthread_mutex_lock(&x->mu);
	x->stats.connections = x->n_conns;
	pthread_mutex_unlock(&x->mu);
}

/* ---------------------------------------------------------------- room outcomes */

/* Why room_id failed recently, or NULL. */
static const char *tomb_find(const xfer *x, uint64_t room_id)
{
	for (int i = 0; i < FAILED_MAX; i++)
		if (x->failed[i].why[0] && x->failed[i].room == room_id)
			return x->failed[i].why;
	return NULL;
}

/* The room failed: tell the engine and the peer, forget it. */
static void fail_room(xfer *x, room *r, const char *why)
{
	LOGW(TAG, "room %llu (%s) failed: %s", (unsigned long long)r->room, rstate_name(r->st), why);
	{
		failed_entry *f = &x->failed[x->failed_next++ % FAILED_MAX];
		f->rid = r->rid;
		f->has_rid = r->has_rid;
		f->room = r->room;
		snprintf(f->why, sizeof(f->why), "%s", why);
	}
	if (x->cfg.role == XFER_PREFILL) {
		if (r->has_rid && r->have_http && x->eng)
			engine_fail(x->eng, r->rid, why);
		if (r->c && r->c->st != CS_DEAD && r->have_dest)
			send_text(r->c, KVW_ROOM_FAIL, r->room, why);
	} else {
		if (r->pages_kept && x->eng) /* answered already; the references are ours */
			engine_release_pages(x->eng, r->pages, r->n_pages);
		else if (r->has_rid && x->eng) {
			if (r->pages)
				engine_import_fail(x->eng, r->rid, why);
			else
				engine_fail(x->eng, r->rid, why); /* still queued for pages */
		}
		if (r->c && r->c->st != CS_DEAD && r->dest_sent)
			send_text(r->c, KVW_ROOM_FAIL, r->room, why);
	}
	stats_add(x, 0, 1, 0, 0);
	room_free(x, r);
}

/* ---------------------------------------------------------------- cluster secret */

static bool have_secret(const xfer *x)
{
	return x->cfg.secret && *x->cfg.secret;
}

static const char *role_name(xfer_role r)
{
	return r == XFER_PREFILL ? "prefill" : "decode";
}

/* With a secret, every connection opens with both sides' challenges; HELLO
   (decode) and its processing (prefill) wait until each side has answered the
   other's nonce and checked the answer to its own. */
static void auth_start(xfer *x, conn *c)
{
	c->st = CS_AUTH;
	c->t_open = clock_now_s();
	if (auth_nonce(c->nonce) < 0) {
		conn_kill(x, c, "no randomness for the disaggregation secret's nonce");
		return;
	}
	send_frame(c, KVW_AUTH_CHALLENGE, 0, c->nonce, AUTH_NONCE, -1);
}

static void send_hello(xfer *x, conn *c);

/* The secret handshake failed on c: the prefill logs the peer, answers REJECT
   and closes; the decode fails the connection's rooms with the reason. */
static void auth_fail(xfer *x, conn *c, const char *fault)
{
	if (x->cfg.role == XFER_PREFILL) {
		LOGW(TAG, "refused decode %s: disaggregation secret: %s", c->peer, fault);
		send_text(c, KVW_REJECT, 0, fault);
		c->st = CS_CLOSING;
		return;
	}
	char why[ERR_LEN + 160];
	snprintf(why, sizeof(why), "disaggregation secret rejected by %s: %.200s", c->peer, fault);
	conn_kill(x, c, why);
}

/* AUTH_CHALLENGE / AUTH_RESPONSE, and any frame while in CS_AUTH. */
static void on_auth(xfer *x, conn *c, const kvw_hdr *h, const uint8_t *p, size_t len)
{
	bool prefill = x->cfg.role == XFER_PREFILL;
	const char *secret = x->cfg.secret;
	uint8_t mac[AUTH_MAC];
	char txt[256];
	const char *fault = NULL;
	if (h->type == KVW_REJECT && !prefill) {
		snprintf(txt, sizeof(txt), "%.*s", (int)(len > 200 ? 200 : len), (const char *)p);
		fault = txt;
	} else if (!have_secret(x)) {
		fault = prefill ? "the decode has a secret; this prefill has none"
				: "it requires one; this decode has none";
	} else if (c->st != CS_AUTH) {
		fault = "secret handshake frame after the handshake";
	} else if (h->type == KVW_AUTH_CHALLENGE) {
		if (len != AUTH_NONCE || c->auth_answered)
			fault = "malformed or repeated challenge";
		else if (auth_mac(secret, strlen(secret), p, role_name(x->cfg.role), mac) < 0)
			fault = "cannot compute the HMAC";
		else {
			send_frame(c, KVW_AUTH_RESPONSE, 0, mac, AUTH_MAC, -1);
			c->auth_answered = true;
		}
	} else if (h->type == KVW_AUTH_RESPONSE) {
		if (len != AUTH_MAC || c->auth_verified ||
		    auth_mac(secret, strlen(secret), c->nonce, role_name(prefill ? XFER_DECODE : XFER_PREFILL), mac) < 0 ||
		    !auth_equal(p, mac))
			fault = "wrong answer to the challenge (another secret?)";
		else
			c->auth_verified = true;
	} else {
		fault = prefill ? "no answer to the challenge (no secret?)"
				: "frame before the secret handshake";
	}
	if (fault) {
		auth_fail(x, c, fault);
		return;
	}
	if (c->auth_answered && c->auth_verified) {
		LOGD(TAG, "%s: disaggregation secret verified both ways", c->peer);
		c->st = CS_HELLO;
		c->t_open = clock_now_s();
		if (!prefill)
			send_hello(x, c);
	}
}

/* ---------------------------------------------------------------- decode side */

static void send_dest(xfer *x, room *r)
{
	size_t len = kvw_room_dest_size((uint32_t)r->n_pages);
	uint8_t *p = alloc_bytes(len);
	if (!p) {
		fail_room(x, r, "out of memory");
		return;
	}
	kvw_room_dest_encode(p, (uint32_t)r->n_prompt, r->pages, (uint32_t)r->n_pages);
	int rc = send_frame(r->c, KVW_ROOM_DEST, r->room, p, len, -1);
	alloc_free(p);
	if (rc < 0) {
		fail_room(x, r, "cannot queue ROOM_DEST");
		return;
	}
	LOGD(TAG, "room %llu: ROOM_DEST (%d pages) to %s", (unsigned long long)r->room, r->n_pages, r->c->peer);
	r->dest_sent = true;
	r->st = RS_WAITING;
	r->t_dest = clock_now_s();
	r->deadline = r->t_dest + x->cfg.waiting_timeout;
}

static void conn_ready(xfer *x, conn *c)
{
	c->st = CS_READY;
	for (int i = x->n_rooms - 1; i >= 0; i--) {
		room *r = x->rooms[i];
		if (r->c == c && r->pages && !r->dest_sent)
			send_dest(x, r);
	}
}

static void send_hello(xfer *x, conn *c)
{
	kvw_hello h;
	memset(&h, 0, sizeof(h));
	h.proto = KVW_VERSION;
	h.backend = wire_backend(x->cfg.backend);
	h.layout = x->layout;
	uint8_t buf[64];
	size_t n = kvw_hello_encode(buf, &h, 0);
	send_frame(c, KVW_HELLO, 0, buf, n, -1);
	if (x->cfg.backend == XFER_UCX) {
		kvw_ucx_info u;
		memset(&u, 0, sizeof(u));
		const void *blob;
		size_t len;
		u.base = (uint64_t)(uintptr_t)kvcache_base(x->kc);
		u.geo = (kvw_shm_attach){ .pool_bytes = kvcache_bytes(x->kc), .layer_bytes = x->layer_bytes,
					  .page_bytes = x->page_bytes, .n_pages = (uint32_t)kvcache_n_pages(x->kc) };
		char err[ERR_LEN];
		if (!c->uw && !(c->uw = ucx_worker_open(x->ux, err))) {
			conn_kill(x, c, err);
			return;
		}
		ucx_worker_blob(c->uw, &blob, &len);
		u.addr = blob;
		u.addr_len = (uint32_t)len;
		ucx_rkey(x->ux, x->pool_mem, &blob, &len);
		u.rkey = blob;
		u.rkey_len = (uint32_t)len;
		size_t total = kvw_ucx_info_size(&u);
		uint8_t *p = alloc_bytes(total);
		if (!p) {
			conn_kill(x, c, "out of memory");
			return;
		}
		kvw_ucx_info_encode(p, &u);
		send_frame(c, KVW_UCX_INFO, 0, p, total, -1);
		alloc_free(p);
	}
	if (c->is_unix) {
		kvw_shm_attach a = { .pool_bytes = kvcache_bytes(x->kc), .layer_bytes = x->layer_bytes,
				     .page_bytes = x->page_bytes, .n_pages = (uint32_t)kvcache_n_pages(x->kc) };
		uint8_t ab[28];
		kvw_shm_attach_encode(ab, &a);
		send_frame(c, KVW_SHM_ATTACH, 0, ab, sizeof(ab), kvcache_shm_fd(x->kc));
	}
}

/* Resolve and connect (non-blocking) to a prefill's bootstrap service. */
static conn *connect_tcp(xfer *x, const char *host, int port)
{
	char portstr[16];
	snprintf(portstr, sizeof(portstr), "%d", port);
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
	if (getaddrinfo(host, portstr, &hints, &ai) != 0 || !ai)
		return NULL;
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		freeaddrinfo(ai);
		return NULL;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	if (rc < 0 && errno != EINPROGRESS) {
		close(fd);
		return NULL;
	}
	char peer[96];
	snprintf(peer, sizeof(peer), "%s:%d", host, port);
	conn *c = conn_new(x, fd, false, true, peer);
	if (!c) {
		close(fd);
		return NULL;
	}
	snprintf(c->key, sizeof(c->key), "%s:%d", host, port);
	c->st = CS_CONNECTING;
	return c;
}

static conn *conn_for_key(xfer *x, const char *key)
{
	for (int i = 0; i < x->n_conns; i++) {
		conn *c = x->conns[i];
		if (c->outgoing && c->st != CS_DEAD && c->st != CS_CLOSING && !strcmp(c->key, key))
			return c;
	}
	return NULL;
}

static void on_hello_ok(xfer *x, conn *c, const uint8_t *p, size_t len)
{
	char err[ERR_LEN];
	kvw_hello h;
	if (kvw_hello_decode(p, len, 1, &h, err) < 0) {
		conn_kill(x, c, err);
		return;
	}
	char why[ERR_LEN + 64];
	if (kvw_layout_diff(&h.layout, &x->layout, err) < 0) {
		snprintf(why, sizeof(why), "KV layout mismatch: %s", err);
		conn_kill(x, c, why);
		return;
	}
	uint32_t want = wire_backend(x->cfg.backend);
	if (h.backend != want) {
		snprintf(why, sizeof(why), "transfer backend: prefill %s, decode %s", wire_name(h.backend),
			 xfer_backend_name(x->cfg.backend));
		conn_kill(x, c, why);
		return;
	}
	if (want == KVW_BACKEND_UCX && h.host_id == x->host_id)
		c->peer_pid = (pid_t)h.pid; /* same host: we can tell when the writer is gone */
	if (want != KVW_BACKEND_SHM || c->is_unix) {
		conn_ready(x, c);
		return;
	}
	/* shm: same host, then move to the prefill's unix socket and pass our pool */
	if (h.host_id != x->host_id || !h.shm_path[0]) {
		conn_kill(x, c, "the shm backend needs prefill and decode on one host and in one PID namespace "
				  "(boot ids or PID namespaces differ; containers: pid: host); use tcp");
		return;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", h.shm_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		snprintf(why, sizeof(why), "shm socket %s: %s", h.shm_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		conn_kill(x, c, why);
		return;
	}
	set_nonblock(fd);
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	pid_t pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 ? cred.pid : 0;
	conn *u = conn_new(x, fd, true, true, c->peer);
	if (!u) {
		close(fd);
		conn_kill(x, c, "out of memory");
		return;
	}
	snprintf(u->key, sizeof(u->key), "%s", c->key);
	u->peer_pid = pid;
	u->st = CS_HELLO;
	if (have_secret(x))
		auth_start(x, u);
	else
		send_hello(x, u);
	for (int i = 0; i < x->n_rooms; i++)
		if (x->rooms[i]->c == c)
			x->rooms[i]->c = u;
	c->st = CS_CLOSING; /* the bootstrap connection has done its job */
}

static void on_aux(xfer *x, conn *c, uint64_t room_id, const uint8_t *p, size_t len)
{
	char err[ERR_LEN];
	kvw_aux a;
	room *r = room_by_id(x, room_id);
	if (!r || r->c != c) {
		LOGW(TAG, "AUX for unknown room %llu from %s (dropped)", (unsigned long long)room_id, c->peer);
		return;
	}
	if (r->st == RS_CANCELLING) {
		engine_import_fail(x->eng, r->rid, "aborted");
		room_free(x, r);
		return;
	}
	if (kvw_aux_decode(p, len, &a, err) < 0) {
		fail_room(x, r, err);
		return;
	}
	if (r->n_got < r->need || (int)a.n_prompt != r->n_prompt) {
		snprintf(err, sizeof(err), "AUX before every page arrived (%d of %d) or prompt %u != %d", r->n_got,
			 r->need, a.n_prompt, r->n_prompt);
		fail_room(x, r, err);
		return;
	}
	engine_import_result res;
	memset(&res, 0, sizeof(res));
	res.token = (int32_t)a.first_token;
	res.logprob = a.logprob;
	res.cached_tokens = (int)a.cached_tokens;
	res.n_top = (int)a.n_top;
	memcpy(res.top, a.top, sizeof(sampler_logprob) * a.n_top);
	record_timing(x, r, &a);
	stats_add(x, 1, 0, r->bytes, clock_now_s() - r->t_dest);
	if (engine_import_done(x->eng, r->rid, &res) < 0)
		LOGW(TAG, "room %llu: request %llu finished before its KV arrived", (unsigned long long)r->room,
		     (unsigned long long)r->rid);
	r->st = RS_SUCCESS;
	room_free(x, r);
}

/* Pages [first, first+n) of r are in: count them. */
static int mark_pages(room *r, uint32_t first, uint32_t n, char *err)
{
	if ((uint64_t)first + n > (uint64_t)r->n_pages)
		return err_set(err, ERR_PROTO, "pages %u..%u outside the room's %d", first, first + n, r->n_pages);
	for (uint32_t i = first; i < first + n; i++)
		if (!r->got[i]) {
			r->got[i] = 1;
			r->n_got++;
		}
	return 0;
}

/* ---------------------------------------------------------------- prefill side */

static void try_start(xfer *x, room *r)
{
	if (!r->have_http || !r->have_dest)
		return;
	int ps = (int)x->layout.page_size;
	uint32_t need = (uint32_t)((r->n_prompt_http + ps - 1) / ps);
	if ((int)r->n_prompt_dest != r->n_prompt_http || r->n_dest < need) {
		char why[160];
		snprintf(why, sizeof(why), "prompt mismatch: prefill has %d tokens, decode %u (with %u pages)",
			 r->n_prompt_http, r->n_prompt_dest, r->n_dest);
		fail_room(x, r, why);
		return;
	}
	for (uint32_t i = 0; i < r->n_dest; i++)
		if (r->dest[i] < 0 || (r->c->map && (uint32_t)r->dest[i] >= r->c->att.n_pages)) {
			fail_room(x, r, "ROOM_DEST names a page outside the decode's pool");
			return;
		}
	r->st = RS_WAITING;
	r->t_dest = clock_now_s();
	LOGD(TAG, "room %llu: destination known, prefill of rid %llu may start", (unsigned long long)r->room,
	     (unsigned long long)r->rid);
	engine_export_ready(x->eng, r->rid);
}

static void on_room_dest(xfer *x, conn *c, uint64_t room_id, const uint8_t *p, size_t len)
{
	char err[ERR_LEN];
	uint32_t n_prompt, n;
	if (kvw_room_dest_decode(p, len, &n_prompt, x->dest_buf, MAX_ROOM_PAGES, &n, err) < 0) {
		room *r = room_by_id(x, room_id);
		if (r)
			fail_room(x, r, err);
		else
			send_text(c, KVW_ROOM_FAIL, room_id, err);
		return;
	}
	room *r = room_by_id(x, room_id);
	if (r && r->have_dest) {
		fail_room(x, r, "ROOM_DEST twice for one room");
		return;
	}
	const char *why = r ? NULL : tomb_find(x, room_id);
	if (why) {
		/* its prefill request already ended: tell the decode now, not after a timeout */
		send_text(c, KVW_ROOM_FAIL, room_id, why);
		return;
	}
	if (!r) {
		r = room_new(x, room_id);
		if (!r) {
			send_text(c, KVW_ROOM_FAIL, room_id, "prefill out of memory");
			return;
		}
		r->deadline = clock_now_s() + x->cfg.bootstrap_timeout;
	}
	r->dest = alloc_array(n ? n : 1, sizeof(int32_t));
	if (!r->dest) {
		fail_room(x, r, "prefill out of memory");
		return;
	}
	memcpy(r->dest, x->dest_buf, sizeof(int32_t) * n);
	r->n_dest = n;
	r->n_prompt_dest = n_prompt;
	r->have_dest = true;
	r->c = c;
	try_start(x, r);
}

static void on_hello(xfer *x, conn *c, const uint8_t *p, size_t len)
{
	char err[ERR_LEN], why[ERR_LEN + 64];
	kvw_hello h;
	if (kvw_hello_decode(p, len, 0, &h, err) < 0) {
		conn_kill(x, c, err);
		return;
	}
	uint32_t mine = wire_backend(x->cfg.backend);
	why[0] = '\0';
	if (kvw_layout_diff(&x->layout, &h.layout, err) < 0)
		snprintf(why, sizeof(why), "KV layout mismatch: %s", err);
	else if (h.backend != mine)
		snprintf(why, sizeof(why), "transfer backend: prefill %s, decode %s", xfer_backend_name(x->cfg.backend),
			 wire_name(h.backend));
	if (why[0]) {
		LOGW(TAG, "refusing decode %s: %s", c->peer, why);
		send_text(c, KVW_REJECT, 0, why);
		c->st = CS_CLOSING;
		return;
	}
	if (c->is_unix || mine == KVW_BACKEND_UCX) {
		c->st = CS_ATTACH; /* HELLO_OK once its pool is mapped (shm) or reachable (ucx) */
		return;
	}
	kvw_hello ok;
	memset(&ok, 0, sizeof(ok));
	ok.proto = KVW_VERSION;
	ok.backend = mine;
	ok.layout = x->layout;
	ok.host_id = x->host_id;
	ok.pid = (uint32_t)getpid();
	snprintf(ok.shm_path, sizeof(ok.shm_path), "%s", x->unix_path);
	uint8_t buf[256];
	size_t n = kvw_hello_encode(buf, &ok, 1);
	send_frame(c, KVW_HELLO_OK, 0, buf, n, -1);
	c->st = CS_READY;
}

static void on_shm_attach(xfer *x, conn *c, const uint8_t *p, size_t len)
{
	char err[ERR_LEN];
	kvw_shm_attach a;
	if (c->st != CS_ATTACH || kvw_shm_attach_decode(p, len, &a, err) < 0) {
		conn_kill(x, c, c->st != CS_ATTACH ? "SHM_ATTACH out of order" : err);
		return;
	}
	struct stat st;
	if (c->rx_fd < 0 || fstat(c->rx_fd, &st) < 0 || (uint64_t)st.st_size < a.pool_bytes ||
	    a.page_bytes != x->page_bytes || a.pool_bytes != a.layer_bytes * 2 * (uint64_t)x->n_layer) {
		conn_kill(x, c, "SHM_ATTACH: no fd, or the pool does not match our layout");
		return;
	}
	void *m = mmap(NULL, a.pool_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, c->rx_fd, 0);
	close(c->rx_fd);
	c->rx_fd = -1;
	if (m == MAP_FAILED) {
		conn_kill(x, c, "cannot map the decode's KV pool");
		return;
	}
	c->map = m;
	c->map_bytes = a.pool_bytes;
	c->att = a;
	kvw_hello ok;
	memset(&ok, 0, sizeof(ok));
	ok.proto = KVW_VERSION;
	ok.backend = KVW_BACKEND_SHM;
	ok.layout = x->layout;
	ok.host_id = x->host_id;
	ok.pid = (uint32_t)getpid();
	uint8_t buf[256];
	size_t n = kvw_hello_encode(buf, &ok, 1);
	send_frame(c, KVW_HELLO_OK, 0, buf, n, -1);
	c->st = CS_READY;
	LOGI(TAG, "decode %s attached its KV pool (%.1f MiB) over shm", c->peer, (double)a.pool_bytes / 1048576.0);
}

static void on_ucx_info(xfer *x, conn *c, const uint8_t *p, size_t len)
{
	char err[ERR_LEN];
	kvw_ucx_info u;
	if (c->st != CS_ATTACH || x->cfg.backend != XFER_UCX || kvw_ucx_info_decode(p, len, &u, err) < 0) {
		conn_kill(x, c, c->st != CS_ATTACH || x->cfg.backend != XFER_UCX ? "UCX_INFO out of order" : err);
		return;
	}
	if (u.geo.page_bytes != x->page_bytes || u.geo.pool_bytes != u.geo.layer_bytes * 2 * (uint64_t)x->n_layer) {
		conn_kill(x, c, "UCX_INFO: the decode's pool does not match our layout");
		return;
	}
	c->up = ucx_connect(x->ux, u.addr, u.addr_len, u.rkey, u.rkey_len, u.base, u.geo.pool_bytes, err);
	if (!c->up) {
		conn_kill(x, c, err);
		return;
	}
	c->att = u.geo;
	kvw_hello ok;
	memset(&ok, 0, sizeof(ok));
	ok.proto = KVW_VERSION;
	ok.backend = KVW_BACKEND_UCX;
	ok.layout = x->layout;
	ok.host_id = x->host_id;
	ok.pid = (uint32_t)getpid();
	uint8_t buf[256];
	size_t n = kvw_hello_encode(buf, &ok, 1);
	send_frame(c, KVW_HELLO_OK, 0, buf, n, -1);
	c->st = CS_READY;
	LOGI(TAG, "decode %s: UCX endpoint to its KV pool (%.1f MiB)", c->peer, (double)u.geo.pool_bytes / 1048576.0);
}

/* A UCX batch in flight: what to do once its puts have landed. */
typedef struct {
	xfer *x;
	conn *c;
	uint64_t room;
	uint32_t first, n;
	int32_t *pages; /* engine references to give back */
	int n_pages;
	bool has_aux;
	kvw_aux aux;
	bool ack_only;  /* a ROOM_FAIL_ACK waiting for earlier puts */
} ucx_batch;

static void ucx_batch_done(void *arg, int status)
{
	ucx_batch *b = arg;
	xfer *x = b->x;
	x->ucx_inflight--;
	if (b->n_pages)
		engine_release_pages(x->eng, b->pages, b->n_pages);
	if (b->c->st != CS_DEAD) {
		if (b->ack_only) {
			send_frame(b->c, KVW_ROOM_FAIL_ACK, b->room, NULL, 0, -1);
		} else if (status < 0) {
			room *r = room_by_id(x, b->room);
			if (r)
				fail_room(x, r, "UCX put failed");
			else
				send_text(b->c, KVW_ROOM_FAIL, b->room, "UCX put failed");
		} else {
			uint8_t rg[8];
			kvw_range_encode(rg, b->first, b->n);
			if (b->n)
				send_frame(b->c, KVW_KV_WRITTEN, b->room, rg, 8, -1);
			if (b->has_aux) {
				uint8_t buf[48 + 8 * SAMPLER_MAX_TOP_LOGPROBS];
				size_t n = kvw_aux_encode(buf, &b->aux);
				send_frame(b->c, KVW_AUX, b->room, buf, n, -1);
			}
		}
	}
	alloc_free(b->pages);
	alloc_free(b);
}

/* Put pages[i] -> dest[first+i] for every layer, K and V, merging runs of
   consecutive pages on both sides into one put per segment. */
static int ucx_put_pages(xfer *x, conn *c, const room *r, uint32_t first, const int32_t *pages, int n)
{
	const uint8_t *base = kvcache_base(x->kc);
	int per_page = 2 * x->n_layer;
	for (int i = 0; i < n;) {
		int run = 1;
		while (i + run < n && pages[i + run] == pages[i] + run && r->dest[first + i + run] == r->dest[first + i] + run)
			run++;
		for (int s = 0; s < per_page; s++) {
			const uint8_t *src = base + (size_t)s * x->layer_bytes + (size_t)pages[i] * x->page_bytes;
			uint64_t off = (uint64_t)s * c->att.layer_bytes + (uint64_t)r->dest[first + i] * x->page_bytes;
			int rc = ucx_put(c->up, src, x->pool_mem, off, (size_t)run * x->page_bytes);
			if (rc < 0)
				return rc;
		}
		i += run;
	}
	return 0;
}

/* An export batch from the engine (prefill side). */
static void do_export(xfer *x, cmd *cm)
{
	engine_kv_export *ex = &cm->ex;
	room *r = room_by_rid(x, ex->rid);
	bool ok = r && r->have_dest && r->c && r->c->st == CS_READY && r->st != RS_FAILED;
	LOGD(TAG, "export rid %llu: pages %d+%d last %d failed %d -> room %p ok %d", (unsigned long long)ex->rid,
	     ex->first, cm->n_pages, ex->last, ex->failed, (void *)r, ok);
	if (ex->failed) {
		if (r) {
			r->have_http = false; /* the engine already ended the request */
			fail_room(x, r, "the prefill request ended before its KV was complete");
		}
		return;
	}
	if (!ok) {
		if (cm->n_pages)
			engine_release_pages(x->eng, cm->pages, cm->n_pages);
		return;
	}
	conn *c = r->c;
	if ((uint64_t)ex->first + (uint64_t)cm->n_pages > r->n_dest) {
		engine_release_pages(x->eng, cm->pages, cm->n_pages);
		fail_room(x, r, "prefill exported more pages than the decode reserved");
		return;
	}
	if (r->st == RS_WAITING)
		r->st = RS_TRANSFER;
	size_t seg_bytes = x->page_bytes;
	int per_page = 2 * x->n_layer;
	if (x->cfg.backend == XFER_UCX) {
		uint64_t bytes = (uint64_t)cm->n_pages * (uint64_t)per_page * seg_bytes;
		ucx_batch *b = alloc_zeroed(1, sizeof(*b));
		if (!b || (cm->n_pages && ucx_put_pages(x, c, r, (uint32_t)ex->first, cm->pages, cm->n_pages) < 0)) {
			alloc_free(b);
			engine_release_pages(x->eng, cm->pages, cm->n_pages);
			fail_room(x, r, !b ? "prefill out of memory" : "UCX put failed");
			return;
		}
		r->bytes += bytes;
		b->x = x;
		b->c = c;
		b->room = r->room;
		b->first = (uint32_t)ex->first;
		b->n = (uint32_t)cm->n_pages;
		b->pages = cm->pages; /* given back once the puts landed */
		b->n_pages = cm->n_pages;
		cm->pages = NULL;
		cm->n_pages = 0;
		if (ex->last) {
			b->has_aux = true;
			b->aux.first_token = (uint32_t)ex->first_token;
			b->aux.logprob = ex->logprob;
			b->aux.cached_tokens = (uint32_t)ex->cached_tokens;
			b->aux.n_prompt = (uint32_t)ex->n_prompt;
			b->aux.queue_s = ex->queue_s;
			b->aux.compute_s = ex->compute_s;
			b->aux.bytes = r->bytes;
			b->aux.n_top = (uint32_t)ex->n_top;
			memcpy(b->aux.top, ex->top, sizeof(sampler_logprob) * (size_t)ex->n_top);
			stats_add(x, 1, 0, r->bytes, clock_now_s() - r->t_dest);
			r->st = RS_SUCCESS;
			room_free(x, r);
		}
		x->ucx_inflight++;
		if (ucx_flush(c->up, ucx_batch_done, b) < 0)
			ucx_batch_done(b, ERR_NOMEM);
		return;
	}
	if (cm->n_pages > 0) {
		uint64_t bytes = (uint64_t)cm->n_pages * (uint64_t)per_page * seg_bytes;
		if (x->cfg.backend == XFER_SHM) {
			const uint8_t *base = kvcache_base(x->kc);
			for (int i = 0; i < cm->n_pages; i++) {
				int32_t dp = r->dest[ex->first + i], sp = cm->pages[i];
				for (int s = 0; s < per_page; s++)
					memcpy(c->map + (size_t)s * c->att.layer_bytes + (size_t)dp * seg_bytes,
					       base + (size_t)s * x->layer_bytes + (size_t)sp * seg_bytes, seg_bytes);
			}
			engine_release_pages(x->eng, cm->pages, cm->n_pages);
			uint8_t rg[8];
			kvw_range_encode(rg, (uint32_t)ex->first, (uint32_t)cm->n_pages);
			send_frame(c, KVW_KV_WRITTEN, r->room, rg, 8, -1);
		} else {
			outmsg *m = alloc_zeroed(1, sizeof(*m));
			size_t nseg = (size_t)cm->n_pages * (size_t)per_page;
			if (m)
				m->segs = alloc_array(nseg, sizeof(struct iovec));
			if (m)
				m->payload = alloc_bytes(8);
			if (!m || !m->segs || !m->payload) {
				if (m)
					out_free(x, m, false);
				engine_release_pages(x->eng, cm->pages, cm->n_pages);
				fail_room(x, r, "prefill out of memory");
				return;
			}
			const uint8_t *base = kvcache_base(x->kc);
			for (int i = 0; i < cm->n_pages; i++)
				for (int s = 0; s < per_page; s++) {
					struct iovec *v = &m->segs[(size_t)i * per_page + s];
					v->iov_base = (void *)(base + (size_t)s * x->layer_bytes + (size_t)cm->pages[i] * seg_bytes);
					v->iov_len = seg_bytes;
				}
			m->n_segs = (int)nseg;
			kvw_range_encode(m->payload, (uint32_t)ex->first, (uint32_t)cm->n_pages);
			m->plen = 8;
			kvw_hdr_encode(m->hdr, KVW_KV_DATA, r->room, 8 + bytes);
			m->total = KVW_HDR + 8 + bytes;
			m->rel_pages = cm->pages; /* given back once on the wire */
			m->n_rel = cm->n_pages;
			m->pass_fd = -1;
			cm->pages = NULL;
			cm->n_pages = 0;
			out_push(c, m);
		}
		r->bytes += bytes;
	}
	if (ex->last) {
		kvw_aux a;
		memset(&a, 0, sizeof(a));
		a.first_token = (uint32_t)ex->first_token;
		a.logprob = ex->logprob;
		a.cached_tokens = (uint32_t)ex->cached_tokens;
		a.n_prompt = (uint32_t)ex->n_prompt;
		a.queue_s = ex->queue_s;
		a.compute_s = ex->compute_s;
		a.bytes = r->bytes;
		a.n_top = (uint32_t)ex->n_top;
		memcpy(a.top, ex->top, sizeof(sampler_logprob) * (size_t)ex->n_top);
		uint8_t buf[48 + 8 * SAMPLER_MAX_TOP_LOGPROBS];
		size_t n = kvw_aux_encode(buf, &a);
		send_frame(c, KVW_AUX, r->room, buf, n, -1);
		stats_add(x, 1, 0, r->bytes, clock_now_s() - r->t_dest);
		r->st = RS_SUCCESS;
		room_free(x, r);
	}
}

/* ---------------------------------------------------------------- frames in */

static void on_frame(xfer *x, conn *c, const kvw_hdr *h, const uint8_t *p, size_t len)
{
	char err[ERR_LEN];
	bool prefill = x->cfg.role == XFER_PREFILL;
	if (c->st == CS_CLOSING)
		return; /* refused (its REJECT is queued) or handed over: what the peer sent after is moot */
	if (c->st == CS_AUTH || h->type == KVW_AUTH_CHALLENGE || h->type == KVW_AUTH_RESPONSE) {
		on_auth(x, c, h, p, len);
		return;
	}
	if (!prefill && (c->st == CS_HELLO || c->st == CS_CONNECTING) && h->type != KVW_HELLO_OK &&
	    h->type != KVW_REJECT) {
		conn_kill(x, c, "frame before the handshake");
		return;
	}
	if (prefill && c->st == CS_HELLO && h->type != KVW_HELLO) {
		conn_kill(x, c, "frame before HELLO");
		return;
	}
	switch (h->type) {
	case KVW_HELLO:
		if (!prefill || c->st != CS_HELLO)
			goto unexpected;
		on_hello(x, c, p, len);
		return;
	case KVW_SHM_ATTACH:
		if (!prefill)
			goto unexpected;
		on_shm_attach(x, c, p, len);
		return;
	case KVW_UCX_INFO:
		if (!prefill)
			goto unexpected;
		on_ucx_info(x, c, p, len);
		return;
	case KVW_HELLO_OK:
		if (prefill || c->st != CS_HELLO)
			goto unexpected;
		on_hello_ok(x, c, p, len);
		return;
	case KVW_REJECT: {
		char why[600];
		snprintf(why, sizeof(why), "prefill refused: %.*s", (int)(len > 500 ? 500 : len), (const char *)p);
		conn_kill(x, c, why);
		return;
	}
	case KVW_ROOM_DEST:
		if (!prefill || c->st != CS_READY)
			goto unexpected;
		on_room_dest(x, c, h->room, p, len);
		return;
	case KVW_KV_WRITTEN: {
		room *r = room_by_id(x, h->room);
		uint32_t first, n;
		if (prefill)
			goto unexpected;
		if (!r || r->c != c)
			return; /* a room we gave up on */
		if (kvw_range_decode(p, len, &first, &n, err) < 0 || len != 8 || mark_pages(r, first, n, err) < 0) {
			fail_room(x, r, err);
			return;
		}
		if (r->st == RS_WAITING) {
			r->st = RS_TRANSFER;
			r->t_first = clock_now_s();
		}
		r->bytes += (uint64_t)n * 2 * (uint64_t)x->n_layer * x->page_bytes;
		return;
	}
	case KVW_AUX:
		if (prefill)
			goto unexpected;
		on_aux(x, c, h->room, p, len);
		return;
	case KVW_ROOM_FAIL: {
		room *r = room_by_id(x, h->room);
		char why[600];
		snprintf(why, sizeof(why), "%s %s failed the room: %.*s", prefill ? "decode" : "prefill", c->peer,
			 (int)(len > 400 ? 400 : len), (const char *)p);
		if (prefill) {
			if (r && r->c != c)
				return; /* a held room asked about on a new connection while
					   the old one still writes it: no ACK yet (asked again) */
			if (r) {
				r->have_dest = false; /* no ROOM_FAIL back */
				fail_room(x, r, why);
			}
			if (c->up) {
				/* puts already issued may still land: ACK once they have */
				ucx_batch *b = alloc_zeroed(1, sizeof(*b));
				if (b) {
					b->x = x;
					b->c = c;
					b->room = h->room;
					b->ack_only = true;
					x->ucx_inflight++;
					if (ucx_flush(c->up, ucx_batch_done, b) < 0)
						ucx_batch_done(b, 0);
				}
			} else {
				send_frame(c, KVW_ROOM_FAIL_ACK, h->room, NULL, 0, -1);
			}
		} else if (r && r->c == c) {
			if (r->st == RS_CANCELLING) {
				engine_import_fail(x->eng, r->rid, "aborted");
				room_free(x, r);
			} else {
				r->dest_sent = false; /* no ROOM_FAIL back */
				fail_room(x, r, why);
			}
		}
		return;
	}
	case KVW_ROOM_FAIL_ACK: {
		room *r = room_by_id(x, h->room);
		if (prefill)
			goto unexpected;
		if (r && r->c == c && r->st == RS_CANCELLING) {
			engine_import_fail(x->eng, r->rid, "aborted");
			room_free(x, r);
		} else if (r && !r->c && r->quarantine_pid && r->quarantine_pid == c->peer_pid && !strcmp(r->key, c->key)) {
			LOGI(TAG, "room %llu: prefill pid %d confirms it writes no more, its %d pages freed",
			     (unsigned long long)r->room, (int)r->quarantine_pid, r->n_pages);
			release_quarantined(x, r, "the prefill stopped writing");
		}
		return;
	}
	case KVW_PING:
		if (!prefill)
			goto unexpected;
		send_frame(c, KVW_PONG, 0, NULL, 0, -1);
		return;
	case KVW_PONG:
		if (prefill)
			goto unexpected;
		return;
	default:
		break;
	}
unexpected:
	snprintf(err, sizeof(err), "unexpected %s frame", kvw_type_name(h->type));
	conn_kill(x, c, err);
}

/* KV_DATA range prefix read: pick the destination or drop the frame. */
static void kv_begin(xfer *x, conn *c)
{
	char err[ERR_LEN];
	uint32_t first, n;
	c->kv_room = NULL;
	c->kv_seg = c->kv_nseg = 0;
	c->kv_off = 0;
	uint64_t per_page = 2 * (uint64_t)x->n_layer * x->page_bytes;
	room *r = room_by_id(x, c->h.room);
	int rc = kvw_range_decode(c->rbuf, 8, &first, &n, err);
	if (rc == 0 && (uint64_t)n * per_page != c->kv_left)
		rc = err_set(err, ERR_PROTO, "KV_DATA: %u pages but %llu bytes", n, (unsigned long long)c->kv_left);
	if (!r || r->c != c || (r->st != RS_WAITING && r->st != RS_TRANSFER)) {
		if (r && r->c == c && r->st != RS_CANCELLING)
			fail_room(x, r, "KV_DATA for a room that is not waiting for it");
		return; /* drop */
	}
	if (rc == 0 && (uint64_t)first + n > (uint64_t)r->n_pages)
		rc = err_set(err, ERR_PROTO, "KV_DATA: pages %u..%u outside the room's %d", first, first + n, r->n_pages);
	if (rc < 0) {
		fail_room(x, r, err);
		return;
	}
	if (r->st == RS_WAITING) {
		r->st = RS_TRANSFER;
		r->t_first = clock_now_s();
	}
	c->kv_room = r;
	c->kv_first = first;
	c->kv_n = n;
	c->kv_nseg = (uint64_t)n * 2 * (uint64_t)x->n_layer;
}

/* Where the next KV bytes go: the pool, or the scratch buffer. */
static uint8_t *kv_target(xfer *x, conn *c, size_t *room_left)
{
	if (!c->kv_room) {
		*room_left = x->page_bytes;
		return x->scratch;
	}
	uint64_t per_page = 2 * (uint64_t)x->n_layer;
	uint64_t pi = c->kv_seg / per_page, s = c->kv_seg % per_page;
	int32_t page = c->kv_room->pages[c->kv_first + pi];
	*room_left = x->page_bytes - c->kv_off;
	return (uint8_t *)kvcache_base(x->kc) + s * x->layer_bytes + (size_t)page * x->page_bytes + c->kv_off;
}

static ssize_t conn_read(conn *c, void *buf, size_t n)
{
	if (!c->is_unix)
		return recv(c->fd, buf, n, 0);
	struct iovec iov = { buf, n };
	char cbuf[CMSG_SPACE(sizeof(int) * 4)];
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t r = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); r >= 0 && cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int nfd = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			int fds[4];
			memcpy(fds, CMSG_DATA(cm), sizeof(int) * (size_t)(nfd > 4 ? 4 : nfd));
			for (int i = 0; i < nfd && i < 4; i++) {
				if (c->rx_fd < 0)
					c->rx_fd = fds[i];
				else
					close(fds[i]);
			}
		}
	return r;
}

/* Read what is there; dispatch whole frames. */
static void conn_rx(xfer *x, conn *c)
{
	char err[ERR_LEN];
	size_t budget = 64u << 20; /* fairness between connections */
	while (c->st != CS_DEAD && budget > 0) {
		ssize_t r;
		if (!c->have_hdr) {
			r = conn_read(c, c->hbuf + c->hgot, KVW_HDR - c->hgot);
			if (r > 0) {
				c->hgot += (size_t)r;
				if (c->hgot < KVW_HDR)
					continue;
				c->hgot = 0;
				if (kvw_hdr_decode(c->hbuf, &c->h, err) < 0) {
					conn_kill(x, c, err);
					return;
				}
				c->have_hdr = true;
				LOGD(TAG, "%s: %s frame, room %llu, %llu bytes", c->peer, kvw_type_name(c->h.type),
				     (unsigned long long)c->h.room, (unsigned long long)c->h.len);
				c->pay_got = 0;
				c->rgot = 0;
				c->kv_active = false;
				size_t limit = c->h.type == KVW_KV_DATA ? KVW_MAX_LEN
					       : c->h.type == KVW_ROOM_DEST ? kvw_room_dest_size(MAX_ROOM_PAGES)
									   : MAX_SMALL_FRAME;
				if (c->st == CS_AUTH && (c->h.type == KVW_KV_DATA || c->h.len > 1024)) {
					snprintf(err, sizeof(err), "%s frame of %llu bytes before the secret handshake",
						 kvw_type_name(c->h.type), (unsigned long long)c->h.len);
					if (x->cfg.role == XFER_PREFILL)
						LOGW(TAG, "refused decode %s: disaggregation secret: %s", c->peer, err);
					conn_kill(x, c, err);
					return;
				}
				if (c->h.len > limit) {
					snprintf(err, sizeof(err), "%s frame of %llu bytes (limit %zu)",
						 kvw_type_name(c->h.type), (unsigned long long)c->h.len, limit);
					conn_kill(x, c, err);
					return;
				}
				if (c->h.type == KVW_KV_DATA && (x->cfg.role != XFER_DECODE || c->h.len < 8)) {
					conn_kill(x, c, "unexpected KV_DATA frame");
					return;
				}
				if (c->h.type != KVW_KV_DATA && c->h.len > c->pay_cap) {
					uint8_t *np = alloc_resize(c->pay, c->h.len);
					if (!np) {
						conn_kill(x, c, "out of memory");
						return;
					}
					c->pay = np;
					c->pay_cap = c->h.len;
				}
			}
		} else if (c->h.type == KVW_KV_DATA) {
			if (c->rgot < 8) {
				r = conn_read(c, c->rbuf + c->rgot, 8 - c->rgot);
				if (r > 0) {
					c->rgot += (size_t)r;
					if (c->rgot == 8) {
						c->kv_left = c->h.len - 8;
						kv_begin(x, c);
						if (c->st == CS_DEAD)
							return;
					}
				}
			} else {
				size_t room_left;
				uint8_t *dst = kv_target(x, c, &room_left);
				size_t want = room_left < c->kv_left ? room_left : (size_t)c->kv_left;
				r = want ? conn_read(c, dst, want) : 0;
				if (r > 0) {
					c->kv_left -= (uint64_t)r;
					budget -= (size_t)r < budget ? (size_t)r : budget;
					if (c->kv_room) {
						c->kv_off += (size_t)r;
						c->kv_room->bytes += (uint64_t)r;
						if (c->kv_off == x->page_bytes) {
							c->kv_off = 0;
							c->kv_seg++;
						}
					}
				}
			}
			if (c->rgot == 8 && c->kv_left == 0) {
				if (c->kv_room && mark_pages(c->kv_room, c->kv_first, c->kv_n, err) < 0)
					fail_room(x, c->kv_room, err);
				c->kv_room = NULL;
				c->have_hdr = false;
				continue;
			}
		} else {
			if (c->pay_got < c->h.len) {
				r = conn_read(c, c->pay + c->pay_got, c->h.len - c->pay_got);
				if (r > 0)
					c->pay_got += (size_t)r;
			} else {
				r = 1;
			}
			if (c->pay_got == c->h.len) {
				c->have_hdr = false;
				c->last_rx = clock_now_s();
				kvw_hdr h = c->h;
				on_frame(x, c, &h, c->pay, h.len);
				continue;
			}
		}
		if (r == 0) {
			c->peer_closed = true;
			conn_kill(x, c, "peer closed the connection");
			return;
		}
		if (r < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR)
				continue;
			/* a reset is the peer closing too (with our bytes unread) */
			c->peer_closed = errno == ECONNRESET;
			conn_kill(x, c, strerror(errno));
			return;
		}
		c->last_rx = clock_now_s();
	}
}

/* ---------------------------------------------------------------- commands */

static void do_cmd(xfer *x, cmd *cm)
{
	char msg[200];
	switch (cm->kind) {
	case C_EXPORT:
		do_export(x, cm);
		break;
	case C_PADD: {
		room *r = room_by_id(x, cm->room);
		if (r && r->have_http) {
			engine_fail(x->eng, cm->rid, "bootstrap_room is already in use on this prefill");
			break;
		}
		const char *why = r ? NULL : tomb_find(x, cm->room);
		if (why) {
			/* the decode has already given this room up */
			engine_fail(x->eng, cm->rid, why);
			break;
		}
		if (!r && !(r = room_new(x, cm->room))) {
			engine_fail(x->eng, cm->rid, "prefill out of memory");
			break;
		}
		r->rid = cm->rid;
		r->has_rid = true;
		r->have_http = true;
		r->n_prompt_http = cm->n_prompt;
		if (!r->have_dest)
			r->deadline = clock_now_s() + x->cfg.bootstrap_timeout;
		try_start(x, r);
		break;
	}
	case C_DADD: {
		room *r = room_new(x, cm->room);
		if (!r) {
			engine_fail(x->eng, cm->rid, "decode out of memory");
			break;
		}
		r->rid = cm->rid;
		r->has_rid = true;
		r->n_prompt = cm->n_prompt;
		r->port = cm->port;
		snprintf(r->host, sizeof(r->host), "%s", cm->host);
		snprintf(r->key, sizeof(r->key), "%s:%d", cm->host, cm->port);
		r->deadline = clock_now_s() + x->cfg.bootstrap_timeout;
		if (x->cfg.backend == XFER_FAKE)
			break;
		conn *c = conn_for_key(x, r->key);
		if (!c)
			c = connect_tcp(x, cm->host, cm->port);
		if (!c) {
			snprintf(msg, sizeof(msg), "cannot connect to prefill bootstrap %s", r->key);
			fail_room(x, r, msg);
			break;
		}
		r->c = c;
		break;
	}
	case C_IMPORT: {
		room *r = room_by_rid(x, cm->rid);
		if (!r) {
			/* the room failed before the engine reserved its pages: give them back */
			const char *why = "transfer room is gone";
			for (int i = 0; i < FAILED_MAX; i++)
				if (x->failed[i].why[0] && x->failed[i].has_rid && x->failed[i].rid == cm->rid)
					why = x->failed[i].why;
			engine_import_fail(x->eng, cm->rid, why);
			break;
		}
		r->pages = cm->pages;
		r->n_pages = cm->n_pages;
		cm->pages = NULL;
		r->t_reserved = clock_now_s();
		int ps = (int)x->layout.page_size;
		r->need = (r->n_prompt + ps - 1) / ps;
		r->got = alloc_zeroed((size_t)r->n_pages, 1);
		if (!r->got || r->need > r->n_pages) {
			fail_room(x, r, !r->got ? "out of memory" : "reserved fewer pages than the prompt needs");
			break;
		}
		if (x->cfg.backend == XFER_FAKE) {
			/* decode-only benchmarking: KV left as is, first token arbitrary */
			engine_import_result res = { .token = 0 };
			engine_import_done(x->eng, r->rid, &res);
			stats_add(x, 1, 0, 0, 0);
			room_free(x, r);
			break;
		}
		if (r->c && r->c->st == CS_READY)
			send_dest(x, r);
		break;
	}
	case C_CANCEL: {
		room *r = room_by_rid(x, cm->rid);
		if (!r) {
			engine_import_fail(x->eng, cm->rid, "aborted");
			break;
		}
		if (!r->dest_sent || !r->c || r->c->st == CS_DEAD) {
			if (r->quarantine_pid)
				break; /* freed when the writer is gone */
			engine_import_fail(x->eng, r->rid, "aborted");
			room_free(x, r);
			break;
		}
		send_text(r->c, KVW_ROOM_FAIL, r->room, "aborted by the client");
		if (one_sided(x)) {
			r->st = RS_CANCELLING; /* the prefill writes into our pool: wait for its ACK */
			r->deadline = clock_now_s() + x->cfg.heartbeat_interval * x->cfg.heartbeat_max_failure;
		} else {
			engine_import_fail(x->eng, r->rid, "aborted");
			room_free(x, r);
		}
		break;
	}
	case C_FORGET: {
		/* the engine refused the request, or it ended (aborted) before it had
		   pages: no ROOM_DEST went out, so the prefill never writes this room */
		room *r = room_by_rid(x, cm->rid);
		if (r) {
			LOGI(TAG, "room %llu (%s): request %llu ended before it had KV pages; room dropped",
			     (unsigned long long)r->room, rstate_name(r->st), (unsigned long long)r->rid);
			room_free(x, r);
		}
		break;
	}
	}
}

/* ---------------------------------------------------------------- timers */

/* A quarantined room (conn_kill) may be freed: nothing writes it any more. */
static void release_quarantined(xfer *x, room *r, const char *why)
{
	r->quarantine_pid = 0;
	if (r->pages_kept) { /* answered already: give the pages back */
		engine_release_pages(x->eng, r->pages, r->n_pages);
		room_free(x, r);
	} else {
		fail_room(x, r, why);
	}
}

static void tick(xfer *x)
{
	double now = clock_now_s();
	double hb = x->cfg.heartbeat_interval, dead_after = hb * x->cfg.heartbeat_max_failure;
	char msg[200];
	for (int i = 0; i < x->n_conns; i++) {
		conn *c = x->conns[i];
		if (c->st == CS_DEAD || c->st == CS_CLOSING)
			continue;
		if (c->st == CS_CONNECTING || c->st == CS_AUTH || c->st == CS_HELLO || c->st == CS_ATTACH) {
			if (now - c->t_open > x->cfg.bootstrap_timeout)
				conn_kill(x, c, "handshake timed out");
			continue;
		}
		if (c->outgoing && now - c->last_ping >= hb) {
			send_frame(c, KVW_PING, 0, NULL, 0, -1);
			c->last_ping = now;
		}
		if (now - c->last_rx > dead_after) {
			snprintf(msg, sizeof(msg), "no heartbeat for %.1f s", now - c->last_rx);
			conn_kill(x, c, msg);
		}
	}
	for (int i = x->n_rooms - 1; i >= 0; i--) {
		room *r = x->rooms[i];
		if (r->quarantine_pid) {
			if (kill(r->quarantine_pid, 0) < 0 && errno == ESRCH) {
				LOGI(TAG, "room %llu: prefill pid gone, its %d pages freed", (unsigned long long)r->room,
				     r->n_pages);
				release_quarantined(x, r, "prefill died during the transfer");
			} else if (now - r->t_fence_ask >= hb) {
				/* the same prefill process back on a new connection: it
				   ACKs a ROOM_FAIL once nothing of its writes that room */
				for (int k = 0; k < x->n_conns; k++) {
					conn *c = x->conns[k];
					if (c->st == CS_READY && c->peer_pid == r->quarantine_pid && !strcmp(c->key, r->key)) {
						send_text(c, KVW_ROOM_FAIL, r->room, "held since its connection was lost");
						r->t_fence_ask = now;
						break;
					}
				}
			}
			continue;
		}
		if (now <= r->deadline)
			continue;
		if (x->cfg.role == XFER_PREFILL) {
			if (r->have_http && !r->have_dest) {
				snprintf(msg, sizeof(msg), "bootstrap timeout: no decode claimed room %llu within %.0f s",
					 (unsigned long long)r->room, x->cfg.bootstrap_timeout);
				fail_room(x, r, msg);
			} else if (!r->have_http) {
				snprintf(msg, sizeof(msg), "bootstrap timeout: room %llu never reached this prefill over HTTP",
					 (unsigned long long)r->room);
				fail_room(x, r, msg);
			}
		} else if (r->st == RS_CANCELLING) {
			if (r->c && r->c->st != CS_DEAD)
				conn_kill(x, r->c, "no ROOM_FAIL_ACK");
			else if (!r->quarantine_pid)
				fail_room(x, r, "aborted");
		} else if (r->st == RS_BOOT) {
			if (!r->pages)
				snprintf(msg, sizeof(msg), "bootstrap timeout: no KV room on this decode within %.0f s",
					 x->cfg.bootstrap_timeout);
			else
				snprintf(msg, sizeof(msg), "bootstrap timeout: could not reach prefill %s within %.0f s",
					 r->key, x->cfg.bootstrap_timeout);
			fail_room(x, r, msg);
		} else {
			snprintf(msg, sizeof(msg), "waiting timeout: KV from prefill %s did not arrive within %.0f s", r->key,
				 x->cfg.waiting_timeout);
			if (one_sided(x) && r->c && r->c->st != CS_DEAD) {
				send_text(r->c, KVW_ROOM_FAIL, r->room, msg);
				r->st = RS_CANCELLING;
				r->deadline = now + dead_after;
			} else {
				fail_room(x, r, msg);
			}
		}
	}
	pthread_mutex_lock(&x->mu);
	x->stats.rooms_live = x->n_rooms;
	pthread_mutex_unlock(&x->mu);
}

/* ---------------------------------------------------------------- loop */

static void accept_all(xfer *x, int lfd, bool is_unix)
{
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		char peer[96] = "unix";
		if (!is_unix) {
			char host[64] = "?";
			int port = 0;
			if (ss.ss_family == AF_INET) {
				struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
				inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
				port = ntohs(sin->sin_port);
			} else if (ss.ss_family == AF_INET6) {
				struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
				inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
				port = ntohs(s6->sin6_port);
			}
			snprintf(peer, sizeof(peer), "%s:%d", host, port);
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		conn *c = conn_new(x, fd, is_unix, false, peer);
		if (!c)
			close(fd);
		else if (have_secret(x))
			auth_start(x, c);
	}
}

static void drain_cmds(xfer *x)
{
	uint64_t v;
	ssize_t r = read(x->wake_fd, &v, sizeof(v));
	(void)r;
	pthread_mutex_lock(&x->mu);
	cmd *list = x->cmd_head;
	x->cmd_head = x->cmd_tail = NULL;
	pthread_mutex_unlock(&x->mu);
	while (list) {
		cmd *cm = list;
		list = cm->next;
		do_cmd(x, cm);
		alloc_free(cm->pages);
		alloc_free(cm);
	}
}

static void *thread_main(void *arg)
{
	xfer *x = arg;
	struct pollfd *pfd = NULL;
	int cap = 0;
	for (;;) {
		pthread_mutex_lock(&x->mu);
		bool stop = x->stop;
		pthread_mutex_unlock(&x->mu);
		if (stop)
			break;
		int need = 3 + 2 * x->n_conns;
		if (need > cap) {
			struct pollfd *np = alloc_resize_array(pfd, (size_t)need * 2, sizeof(struct pollfd));
			if (np) {
				pfd = np;
				cap = need * 2;
			}
		}
		int n = 0;
		pfd[n++] = (struct pollfd){ .fd = x->wake_fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = x->listen_fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = x->unix_fd, .events = POLLIN };
		int base = n;
		for (int i = 0; i < x->n_conns && n < cap; i++) {
			conn *c = x->conns[i];
			short ev = POLLIN;
			if (c->out_head || c->st == CS_CONNECTING)
				ev |= POLLOUT;
			pfd[n++] = (struct pollfd){ .fd = c->fd, .events = ev };
		}
		int n_conn_fds = n - base;
		for (int i = 0; i < x->n_conns && n < cap; i++) {
			conn *c = x->conns[i];
			if (c->uw || c->up)
				pfd[n++] = (struct pollfd){ .fd = c->uw ? ucx_worker_fd(c->uw) : ucx_peer_fd(c->up),
							    .events = POLLIN };
		}
		int rc = poll(pfd, (nfds_t)n, x->ucx_inflight ? 1 : 100);
		if (rc < 0 && errno != EINTR)
			break;
		if (pfd[0].revents)
			drain_cmds(x);
		if (pfd[1].revents && x->listen_fd >= 0)
			accept_all(x, x->listen_fd, false);
		if (pfd[2].revents && x->unix_fd >= 0)
			accept_all(x, x->unix_fd, true);
		int n_polled = n_conn_fds;
		for (int i = 0; i < n_polled && i < x->n_conns; i++) {
			conn *c = x->conns[i];
			short re = pfd[base + i].revents;
			if (c->fd != pfd[base + i].fd || !re)
				continue;
			if (c->st == CS_CONNECTING && (re & (POLLOUT | POLLERR | POLLHUP))) {
				int so = 0;
				socklen_t sl = sizeof(so);
				getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &so, &sl);
				if (so) {
					char m[160];
					snprintf(m, sizeof(m), "cannot connect: %s", strerror(so));
					conn_kill(x, c, m);
					continue;
				}
				c->st = CS_HELLO;
				c->last_rx = clock_now_s();
				if (have_secret(x))
					auth_start(x, c);
				else
					send_hello(x, c);
			}
			if (re & (POLLIN | POLLHUP | POLLERR))
				conn_rx(x, c);
			if (c->st != CS_DEAD && c->out_head && flush_out(x, c) < 0)
				conn_kill(x, c, "write failed");
		}
		/* a CLOSING connection goes once its last frame (e.g. REJECT) is out */
		for (int i = x->n_conns - 1; i >= 0; i--) {
			conn *c = x->conns[i];
			if (c->st == CS_CLOSING && !c->out_head) {
				bool used = false;
				for (int k = 0; k < x->n_rooms; k++)
					used |= x->rooms[k]->c == c;
				if (!used)
					c->st = CS_DEAD;
			}
			if (c->st == CS_DEAD)
				conn_free(x, c);
		}
		double now = clock_now_s();
		if (now - x->last_tick >= 0.1) {
			x->last_tick = now;
			tick(x);
		}
		/* UCX last: a connection found closed or silent above has had its
		   worker closed before UCX reads anything more through it (a decode
		   resumed after SIGSTOP holds the prefill's close and its unread
		   puts at once; UCX 1.13 aborts on an emulated put whose answer
		   goes to a broken endpoint). Flush callbacks may kill
		   connections, never free them. */
		if (x->ux) {
			for (int i = 0; i < x->n_conns; i++) {
				conn *c = x->conns[i];
				if (c->uw)
					ucx_worker_progress(c->uw);
				if (c->up)
					ucx_peer_progress(c->up);
			}
		}
	}
	alloc_free(pfd);
	return NULL;
}

/* ---------------------------------------------------------------- API */

static int listen_tcp(const char *host, int port, int *actual, char *err)
{
	char portstr[16];
	snprintf(portstr, sizeof(portstr), "%d", port);
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	if (getaddrinfo(host, portstr, &hints, &ai) != 0)
		return err_set(err, ERR_INVAL, "bootstrap host %s: cannot resolve", host);
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
		int e = errno;
		freeaddrinfo(ai);
		if (fd >= 0)
			close(fd);
		return err_set(err, ERR_IO, "bootstrap port %s:%d: %s", host, port, strerror(e));
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*actual = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						 : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

xfer *xfer_create(const xfer_config *cfg, char err[ERR_LEN])
{
	xfer *x = alloc_zeroed(1, sizeof(*x));
	if (!x) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	x->cfg = *cfg;
	if (!x->cfg.host)
		x->cfg.host = "127.0.0.1";
	if (x->cfg.bootstrap_timeout <= 0)
		x->cfg.bootstrap_timeout = env_or("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", 300);
	if (x->cfg.waiting_timeout <= 0)
		x->cfg.waiting_timeout = env_or("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", 300);
	if (x->cfg.heartbeat_interval <= 0)
		x->cfg.heartbeat_interval = env_or("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", 5);
	if (x->cfg.heartbeat_max_failure <= 0)
		x->cfg.heartbeat_max_failure = (int)env_or("SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE", 2);
	x->listen_fd = x->unix_fd = x->wake_fd = -1;
	pthread_mutex_init(&x->mu, NULL);
	x->host_id = read_host_id();
	x->dest_buf = alloc_array(MAX_ROOM_PAGES, sizeof(int32_t));
	x->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (!x->dest_buf || x->wake_fd < 0) {
		err_set(err, ERR_NOMEM, "out of memory");
		goto fail;
	}
	if (cfg->backend == XFER_UCX) {
		x->ux = ucx_create(cfg->ib_devices, err);
		if (!x->ux)
			goto fail;
		LOGI(TAG, "%s", ucx_describe(x->ux));
	}
	if (cfg->role == XFER_PREFILL) {
		int fd = listen_tcp(x->cfg.host, cfg->bootstrap_port, &x->port, err);
		if (fd < 0)
			goto fail;
		x->listen_fd = fd;
		if (cfg->backend == XFER_SHM) {
			snprintf(x->unix_path, sizeof(x->unix_path), "/tmp/pdserve-kv-%d-%d.sock", (int)getpid(), x->port);
			unlink(x->unix_path);
			int ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
			struct sockaddr_un sa = { .sun_family = AF_UNIX };
			snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", x->unix_path);
			if (ufd < 0 || bind(ufd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ufd, 64) < 0) {
				err_set(err, ERR_IO, "shm socket %s: %s", x->unix_path, strerror(errno));
				if (ufd >= 0)
					close(ufd);
				x->unix_path[0] = '\0';
				goto fail;
			}
			x->unix_fd = ufd;
		}
	}
	return x;
fail:
	xfer_destroy(x);
	return NULL;
}

void xfer_attach(xfer *x, engine *e)
{
	const llama_hparams *hp = engine_hparams(e);
	x->eng = e;
	x->kc = engine_kvcache(e);
	x->n_layer = kvcache_n_layer(x->kc);
	x->page_bytes = kvcache_page_bytes(x->kc);
	x->layer_bytes = kvcache_layer_bytes(x->kc);
	x->layout.fingerprint = gguf_fingerprint(llama_model_gguf(engine_model(e)));
	x->layout.n_layer = (uint32_t)hp->n_layer;
	x->layout.n_kv_heads = (uint32_t)hp->n_head_kv;
	x->layout.head_dim = (uint32_t)hp->head_dim;
	x->layout.page_size = (uint32_t)kvcache_page_size(x->kc);
	x->layout.dtype = (uint32_t)kvcache_view(x->kc)->dtype;
	if (x->ux && x->cfg.role == XFER_PREFILL) {
		char err[ERR_LEN];
		if (ucx_register(x->ux, kvcache_base(x->kc), kvcache_bytes(x->kc), &x->pool_mem, err) < 0)
			LOGW(TAG, "UCX cannot register the KV pool (%s); puts go through bounce buffers", err);
	}
	x->scratch = alloc_bytes(x->page_bytes);
	if (!x->scratch)
		CHECK(!"out of memory for the transfer scratch page");
	if (pthread_create(&x->th, NULL, thread_main, x) == 0)
		x->started = true;
	else
		CHECK(!"cannot start the transfer thread");
	if (x->cfg.role == XFER_PREFILL)
		LOGI(TAG, "bootstrap service on %s:%d, backend %s%s%s", x->cfg.host, x->port,
		     xfer_backend_name(x->cfg.backend), x->unix_path[0] ? ", shm socket " : "", x->unix_path);
	else
		LOGI(TAG, "decode transfer backend %s (bootstrap timeout %.0f s, waiting %.0f s, heartbeat %.1f s x %d)",
		     xfer_backend_name(x->cfg.backend), x->cfg.bootstrap_timeout, x->cfg.waiting_timeout,
		     x->cfg.heartbeat_interval, x->cfg.heartbeat_max_failure);
}

void xfer_stop(xfer *x)
{
	if (!x || !x->started)
		return;
	pthread_mutex_lock(&x->mu);
	x->stop = true;
	pthread_mutex_unlock(&x->mu);
	wake(x);
	pthread_join(x->th, NULL);
	x->started = false;
}

void xfer_destroy(xfer *x)
{
	if (!x)
		return;
	xfer_stop(x);
	while (x->n_conns) {
		conn *c = x->conns[0];
		while (c->out_head) {
			outmsg *m = c->out_head;
			c->out_head = m->next;
			out_free(x, m, false);
		}
		conn_free(x, c);
	}
	while (x->n_rooms)
		room_free(x, x->rooms[0]);
	for (cmd *cm = x->cmd_head, *nx; cm; cm = nx) {
		nx = cm->next;
		alloc_free(cm->pages);
		alloc_free(cm);
	}
	if (x->pool_mem && x->cfg.role == XFER_PREFILL)
		ucx_mem_release(x->ux, x->pool_mem);
	ucx_destroy(x->ux);
	if (x->listen_fd >= 0)
		close(x->listen_fd);
	if (x->unix_fd >= 0)
		close(x->unix_fd);
	if (x->unix_path[0])
		unlink(x->unix_path);
	if (x->wake_fd >= 0)
		close(x->wake_fd);
	alloc_free(x->conns);
	alloc_free(x->rooms);
	alloc_free(x->scratch);
	alloc_free(x->dest_buf);
	alloc_free(x->timings);
	pthread_mutex_destroy(&x->mu);
	alloc_free(x);
}

int xfer_bootstrap_port(const xfer *x)
{
	return x->port;
}

void *xfer_kv_alloc(void *arg, size_t bytes)
{
	xfer *x = arg;
	char err[ERR_LEN];
	if (!x->ux)
		return NULL;
	void *p = ucx_alloc(x->ux, bytes, &x->pool_mem, err);
	if (!p)
		LOGE(TAG, "%s", err);
	return p;
}

void xfer_kv_release(void *arg, void *p, size_t bytes)
{
	xfer *x = arg;
	(void)p;
	(void)bytes;
	ucx_mem_release(x->ux, x->pool_mem);
	x->pool_mem = NULL;
}

const char *xfer_describe(const xfer *x)
{
	return x->ux ? ucx_describe(x->ux) : xfer_backend_name(x->cfg.backend);
}

static int queue_cmd(xfer *x, cmd *cm)
{
	pthread_mutex_lock(&x->mu);
	cm->next = NULL;
	if (x->cmd_tail)
		x->cmd_tail->next = cm;
	else
		x->cmd_head = cm;
	x->cmd_tail = cm;
	pthread_mutex_unlock(&x->mu);
	wake(x);
	return 0;
}

void xfer_on_export(void *arg, const engine_kv_export *ex)
{
	xfer *x = arg;
	cmd *cm = alloc_zeroed(1, sizeof(*cm));
	int32_t *pages = ex->n ? alloc_array((size_t)ex->n, sizeof(int32_t)) : NULL;
	if (!cm || (ex->n && !pages)) {
		/* cannot queue: give the references back and let the room time out */
		LOGE(TAG, "out of memory queueing an export of rid %llu", (unsigned long long)ex->rid);
		engine_release_pages(x->eng, ex->pages, ex->n);
		alloc_free(cm);
		alloc_free(pages);
		return;
	}
	cm->kind = C_EXPORT;
	cm->rid = ex->rid;
	cm->ex = *ex;
	cm->ex.pages = NULL;
	if (ex->n)
		memcpy(pages, ex->pages, sizeof(int32_t) * (size_t)ex->n);
	cm->pages = pages;
	cm->n_pages = ex->n;
	queue_cmd(x, cm);
}

void xfer_on_import(void *arg, uint64_t rid, void *user, const int32_t *pages, int n_pages)
{
	xfer *x = arg;
	if (!n_pages) {
		/* the request ended before the engine reserved its pages: drop its room */
		cmd *cm = alloc_zeroed(1, sizeof(*cm));
		if (!cm) {
			LOGE(TAG, "out of memory dropping the room of rid %llu (it goes at its bootstrap timeout)",
			     (unsigned long long)rid);
			return;
		}
		cm->kind = C_FORGET;
		cm->rid = rid;
		queue_cmd(x, cm);
		return;
	}
	cmd *cm = alloc_zeroed(1, sizeof(*cm));
	int32_t *p = alloc_array((size_t)n_pages, sizeof(int32_t));
	if (!cm || !p) {
		alloc_free(cm);
		alloc_free(p);
		engine_import_fail(x->eng, rid, "decode out of memory");
		return;
	}
	cm->kind = C_IMPORT;
	cm->rid = rid;
	memcpy(p, pages, sizeof(int32_t) * (size_t)n_pages);
	cm->pages = p;
	cm->n_pages = n_pages;
	queue_cmd(x, cm);
}

void xfer_on_import_cancel(void *arg, uint64_t rid, void *user)
{
	xfer *x = arg;
	cmd *cm = alloc_zeroed(1, sizeof(*cm));
	if (!cm) {
		engine_import_fail(x->eng, rid, "aborted");
		return;
	}
	cm->kind = C_CANCEL;
	cm->rid = rid;
	queue_cmd(x, cm);
}

int xfer_prefill_add(xfer *x, uint64_t room_id, uint64_t rid, int n_prompt, char err[ERR_LEN])
{
	cmd *cm = alloc_zeroed(1, sizeof(*cm));
	if (!cm)
		return err_set(err, ERR_NOMEM, "out of memory");
	cm->kind = C_PADD;
	cm->room = room_id;
	cm->rid = rid;
	cm->n_prompt = n_prompt;
	return queue_cmd(x, cm);
}

int xfer_decode_add(xfer *x, uint64_t room_id, uint64_t rid, const char *host, int port, int n_prompt,
		    char err[ERR_LEN])
{
	if (x->cfg.backend != XFER_FAKE && (!host || !*host || strlen(host) >= 64 || port < 1 || port > 65535))
		return err_set(err, ERR_INVAL, "bootstrap_host/bootstrap_port: '%s':%d is not a valid address",
			       host ? host : "", port);
	cmd *cm = alloc_zeroed(1, sizeof(*cm));
	if (!cm)
		return err_set(err, ERR_NOMEM, "out of memory");
	cm->kind = C_DADD;
	cm->room = room_id;
	cm->rid = rid;
	cm->n_prompt = n_prompt;
	snprintf(cm->host, sizeof(cm->host), "%s", host ? host : "");
	cm->port = port;
	return queue_cmd(x, cm);
}

void xfer_forget(xfer *x, uint64_t rid)
{
	cmd *cm = alloc_zeroed(1, sizeof(*cm));
	if (!cm)
		return;
	cm->kind = C_FORGET;
	cm->rid = rid;
	queue_cmd(x, cm);
}

void xfer_get_stats(xfer *x, xfer_stats *out)
{
	pthread_mutex_lock(&x->mu);
	*out = x->stats;
	pthread_mutex_unlock(&x->mu);
}

int xfer_take_timing(xfer *x, uint64_t rid, xfer_timing *out)
{
	int rc = ERR_NOTFOUND;
	pthread_mutex_lock(&x->mu);
	for (int i = x->n_timings - 1; i >= 0; i--)
		if (x->timings[i].rid == rid) {
			*out = x->timings[i].t;
			x->timings[i] = x->timings[--x->n_timings];
			rc = 0;
			break;
		}
	pthread_mutex_unlock(&x->mu);
	return rc;
}
