/* upstream.c - HTTP/1.1 client for the router: response parser, connections
 * on bufferevents, keep-alive pools (contract in upstream.h).
 *
 * Why our own client rather than evhttp's: the router must see body bytes
 * the moment they are read (evhttp's chunked callback does that too), but
 * also close a connection from inside any callback, tell "refused" from
 * "closed before answering" from "broken mid-response" (retry decisions
 * depend on it), and keep connections warm per worker. Owning the ~500
 * lines makes those rules explicit.
 *
 * Objects and ownership:
 *   upstream_pool  refcounted: one reference for the owner (dropped by
 *                  upstream_pool_release), one per open connection, one per
 *                  live upstream. Freed at zero.
 *   upconn         a socket (bufferevent); either busy (c->u set) or idle
 *                  (on the pool's list). Closing it frees it.
 *   upstream       one exchange. Freed after its terminal callback, or by
 *                  upstream_cancel.
 *
 * Re-entrancy: every entry from libevent (conn_read, conn_event, on_defer)
 * raises u->in_cb while user callbacks run. upstream_cancel() inside one only
 * sets u->cancelled; the entry point then closes the connection and frees u
 * on its way out. So no libevent buffer is freed under a loop reading it.
 *
 * Connection life:
 *
 *   upstream_start: idle one from the pool (reused) or a new one
 *        |                        (connect_hostname; write timeout = connect timeout)
 *        v
 *   CONNECTING --BEV_EVENT_CONNECTED--> BUSY --response DONE, keep-alive--> IDLE
 *        |                               |   \--DONE without keep-alive---> closed
 *        +--error: ERR_CONNECT           +--EOF/error: NO_RESPONSE/BROKEN--> closed
 *                                        +--cancel-------------------------> closed
 *   IDLE --peer data or EOF--> closed;  IDLE --upstream_start--> BUSY (reused)
 *
 * Left out: request pipelining, TLS, proxies, HTTP/2, response bodies over
 * the 64-bit range.
 */
#include "router/upstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "base/alloc.h"
#include "base/log.h"

const char *upstream_err_name(upstream_err e)
{
	switch (e) {
	case UPSTREAM_ERR_CONNECT: return "connect";
	case UPSTREAM_ERR_NO_RESPONSE: return "no_response";
	case UPSTREAM_ERR_BROKEN: return "broken";
	case UPSTREAM_ERR_PROTO: return "protocol";
	case UPSTREAM_ERR_NOMEM: return "nomem";
	}
	return "?";
}

/* ---------------------------------------------------------------- parser */

void upstream_parser_init(upstream_parser *p)
{
	memset(p, 0, sizeof(*p));
	p->state = UPSTREAM_P_HEAD;
}

void upstream_parser_fini(upstream_parser *p)
{
	alloc_free(p->head);
	p->head = NULL;
	p->head_len = p->head_cap = 0;
}

/* case-insensitive "name:" at the start of a header line; the value after */
static const char *header_value(const char *line, const char *name)
{
	size_t n = strlen(name);
	if (strncasecmp(line, name, n) || line[n] != ':')
		return NULL;
	line += n + 1;
	while (*line == ' ' || *line == '\t')
		line++;
	return line;
}

static bool has_token(const char *v, const char *tok)
{
	size_t n = strlen(tok);
	for (const char *p = v; *p;) {
		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (!strncasecmp(p, tok, n) && (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t' || p[n] == ';'))
			return true;
		while (*p && *p != ',')
			p++;
	}
	return false;
}

/* The header block is complete in p->head (NUL-terminated, CRLFs replaced
   as we go). Sets status, framing and keep-alive; the next state. */
static int parse_head(upstream_parser *p, char err[ERR_LEN])
{
	char *s = p->head, *save = NULL;
	char *line = strtok_r(s, "\r\n", &save);
	int minor;
	int status;
	char c1;
	int got = line ? sscanf(line, "HTTP/1.%d %3d%c", &minor, &status, &c1) : 0;
	if (got < 2 || (got == 3 && c1 != ' ') || status < 100 || status > 599)
		return err_set(err, ERR_PROTO, "bad status line '%.80s'", line ? line : "");
	bool chunked = false, have_len = false, close = false, keep = false;
	uint64_t clen = 0;
	p->content_type[0] = '\0';
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		const char *v;
		if ((v = header_value(line, "Content-Length"))) {
			char *end;
			errno = 0;
			unsigned long long x = strtoull(v, &end, 10);
			while (*end == ' ' || *end == '\t')
				end++;
			if (errno || end == v || *end || *v == '-')
				return err_set(err, ERR_PROTO, "bad Content-Length '%.40s'", v);
			clen = x;
			have_len = true;
		} else if ((v = header_value(line, "Transfer-Encoding"))) {
			if (has_token(v, "chunked"))
				chunked = true;
		} else if ((v = header_value(line, "Connection"))) {
			close |= has_token(v, "close");
			keep |= has_token(v, "keep-alive");
		} else if ((v = header_value(line, "Content-Type"))) {
			snprintf(p->content_type, sizeof(p->content_type), "%s", v);
		}
	}
	p->status = status;
	p->keep_alive = minor >= 1 ? !close : keep;
	if (status < 200)
		return 0; /* interim (100 Continue): another head follows */
	if (p->head_request || status == 204 || status == 304)
		p->state = UPSTREAM_P_DONE;
	else if (chunked)
		p->state = UPSTREAM_P_CHUNK_SIZE;
	else if (have_len) {
		p->left = clen;
		p->state = clen ? UPSTREAM_P_BODY_LEN : UPSTREAM_P_DONE;
	} else {
		p->state = UPSTREAM_P_BODY_EOF;
		p->keep_alive = false;
	}
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* chunk-size line complete (p->line holds its hex digits) */
static int chunk_size_done(upstream_parser *p, char err[ERR_LEN])
{
	if (!p->line_len)
		return err_set(err, ERR_PROTO, "empty chunk size");
	uint64_t v = 0;
	for (size_t i = 0; i < p->line_len; i++)
		v = v * 16 + (uint64_t)hexval(p->line[i]);
	p->line_len = 0;
	if (v == 0) {
		p->state = UPSTREAM_P_TRAILER;
		p->trailer_blank = true;
	} else {
		p->left = v;
		p->state = UPSTREAM_P_CHUNK_DATA;
	}
	return 0;
}

long upstream_parse(upstream_parser *p, const char *data, size_t len, const upstream_sink *sink, void *arg,
		    char err[ERR_LEN])
{
	size_t i = 0;
	while (i < len && p->state != UPSTREAM_P_DONE) {
		switch (p->state) {
		case UPSTREAM_P_HEAD: {
			size_t old = p->head_len, take = len - i;
			if (take > UPSTREAM_MAX_HEAD - old)
				take = UPSTREAM_MAX_HEAD - old;
			if (old + take + 1 > p->head_cap) {
				size_t cap = p->head_cap ? p->head_cap : 1024;
				while (cap < old + take + 1)
					cap *= 2;
				char *g = alloc_resize(p->head, cap);
				if (!g)
					return ERR_NOMEM;
				p->head = g;
				p->head_cap = cap;
			}
			memcpy(p->head + old, data + i, take);
			size_t total = old + take, end = 0;
			/* the block ends at the first empty line (CRLF CRLF, or a bare LF LF);
			   only a terminator ending in the new bytes can be new */
			for (size_t k = old; k < total && !end; k++)
				if (p->head[k] == '\n' && ((k >= 1 && p->head[k - 1] == '\n') ||
							   (k >= 3 && !memcmp(p->head + k - 3, "\r\n\r\n", 4))))
					end = k + 1;
			if (!end) {
				p->head_len = total;
				i += take;
				if (total >= UPSTREAM_MAX_HEAD)
					return err_set(err, ERR_PROTO, "response header block over %d bytes", UPSTREAM_MAX_HEAD);
				break;
			}
			i += end - old;
			p->head[end] = '\0';
			p->head_len = 0;
			int rc = parse_head(p, err);
			if (rc)
				return rc;
			if (p->status < 200)
				break; /* interim response; keep reading heads */
			if (sink && sink->head && !sink->head(arg, p->status, p->content_type))
				return (long)i;
			break;
		}
		case UPSTREAM_P_BODY_LEN:
		case UPSTREAM_P_BODY_EOF:
		case UPSTREAM_P_CHUNK_DATA: {
			size_t n = len - i;
			if (p->state != UPSTREAM_P_BODY_EOF && n > p->left)
				n = (size_t)p->left;
			if (p->state != UPSTREAM_P_BODY_EOF) {
				p->left -= n;
				if (!p->left)
					p->state = p->state == UPSTREAM_P_BODY_LEN ? UPSTREAM_P_DONE : UPSTREAM_P_CHUNK_CR;
			}
			const char *at = data + i;
			i += n;
			if (sink && sink->body && !sink->body(arg, at, n))
				return (long)i;
			break;
		}
		case UPSTREAM_P_CHUNK_SIZE: {
			char c = data[i++];
			if (hexval(c) >= 0) {
				if (p->line_len >= 15)
					return err_set(err, ERR_PROTO, "chunk size too large");
				p->line[p->line_len++] = c;
			} else if (c == '\n') {
				int rc = chunk_size_done(p, err);
				if (rc)
					return rc;
			} else if (c == ';' || c == ' ' || c == '\t') {
				p->state = UPSTREAM_P_CHUNK_EXT;
			} else if (c != '\r') {
				return err_set(err, ERR_PROTO, "bad chunk size byte 0x%02x", (unsigned char)c);
			}
			break;
		}
		case UPSTREAM_P_CHUNK_EXT: {
			char c = data[i++];
			if (c == '\n') {
				int rc = chunk_size_done(p, err);
				if (rc)
					return rc;
			}
			break;
		}
		case UPSTREAM_P_CHUNK_CR: {
			char c = data[i++];
			if (c == '\n')
				p->state = UPSTREAM_P_CHUNK_SIZE;
			else if (c == '\r')
				p->state = UPSTREAM_P_CHUNK_LF;
			else
				return err_set(err, ERR_PROTO, "chunk not followed by CRLF");
			break;
		}
		case UPSTREAM_P_CHUNK_LF: {
			if (data[i++] != '\n')
				return err_set(err, ERR_PROTO, "chunk not followed by CRLF");
			p->state = UPSTREAM_P_CHUNK_SIZE;
			break;
		}
		case UPSTREAM_P_TRAILER: {
			char c = data[i++];
			if (c == '\n') {
				if (p->trailer_blank)
					p->state = UPSTREAM_P_DONE;
				p->trailer_blank = true;
			} else if (c != '\r') {
				p->trailer_blank = false;
			}
			break;
		}
		}
	}
	return (long)i;
}

int upstream_parse_eof(upstream_parser *p, char err[ERR_LEN])
{
	if (p->state == UPSTREAM_P_BODY_EOF || p->state == UPSTREAM_P_DONE) {
		p->state = UPSTREAM_P_DONE;
		return 0;
	}
	return err_set(err, ERR_PROTO, "%s", p->state == UPSTREAM_P_HEAD ? "closed before the response headers ended" :
					       "closed mid-body");
}

/* ---------------------------------------------------------------- connections */

typedef struct upconn upconn;

struct upstream_pool {
	struct event_base *base;
	struct evdns_base *dns;
	char host[256];
	int port;
	int max_idle;
	struct timeval connect_tv;
	int refs;
	bool released;
	upconn *idle; /* doubly linked */
	int n_idle, n_open;
};

struct upconn {
	upstream_pool *pool;
	struct bufferevent *bev;
	upconn *prev, *next; /* idle list */
	upstream *u;         /* busy: the exchange; NULL when idle */
	bool connected;
};

struct upstream {
	upstream_pool *pool;
	upconn *c;
	upstream_cbs cbs;
	void *arg;
	upstream_parser ps;
	struct evbuffer *req; /* the request bytes, for one resend on a stale reused connection */
	struct event *defer;  /* reports a failure that happened inside upstream_start */
	upstream_err defer_kind;
	char defer_msg[160];
	int in_cb;
	bool reused, resent, got_bytes, cancelled, finished, paused;
};

static void pool_unref(upstream_pool *p)
{
	if (--p->refs == 0)
		alloc_free(p);
}

static void idle_unlink(upconn *c)
{
	upstream_pool *p = c->pool;
	if (c->prev)
		c->prev->next = c->next;
	else if (p->idle == c)
		p->idle = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	p->n_idle--;
}

static void conn_destroy(upconn *c)
{
	upstream_pool *p = c->pool;
	bufferevent_free(c->bev); /* safe inside its own callbacks: libevent defers the free */
	p->n_open--;
	alloc_free(c);
	pool_unref(p);
}

static void idle_close(upconn *c)
{
	idle_unlink(c);
	conn_destroy(c);
}

static void conn_read(struct bufferevent *bev, void *arg);
static void conn_event(struct bufferevent *bev, short what, void *arg);

static void idle_read(struct bufferevent *bev, void *arg)
{
	idle_close(arg); /* an idle connection has nothing to say: drop it */
}

static void idle_event(struct bufferevent *bev, short what, void *arg)
{
	idle_close(arg);
}

static upconn *conn_new(upstream_pool *p)
{
	upconn *c = alloc_zeroed(1, sizeof(*c));
	if (!c)
		return NULL;
	c->pool = p;
	if (!(c->bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE))) {
		alloc_free(c);
		return NULL;
	}
	p->refs++;
	p->n_open++;
	bufferevent_setcb(c->bev, conn_read, NULL, conn_event, c);
	bufferevent_set_timeouts(c->bev, NULL, &p->connect_tv);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	return c;
}

static int conn_connect(upconn *c)
{
	upstream_pool *p = c->pool;
	return bufferevent_socket_connect_hostname(c->bev, p->dns, AF_UNSPEC, p->host, p->port);
}

static void up_free(upstream *u)
{
	upstream_parser_fini(&u->ps);
	if (u->req)
		evbuffer_free(u->req);
	if (u->defer)
		event_free(u->defer);
	upstream_pool *p = u->pool;
	alloc_free(u);
	pool_unref(p);
}

/* Detach and dispose of u's connection: back to the pool when reusable. */
static void conn_detach(upstream *u, bool reusable)
{
	upconn *c = u->c;
	if (!c)
		return;
	u->c = NULL;
	c->u = NULL;
	upstream_pool *p = c->pool;
	if (reusable && !p->released && p->n_idle < p->max_idle &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
		bufferevent_setcb(c->bev, idle_read, NULL, idle_event, c);
		bufferevent_enable(c->bev, EV_READ);
		c->next = p->idle;
		if (p->idle)
			p->idle->prev = c;
		p->idle = c;
		p->n_idle++;
		return;
	}
	conn_destroy(c);
}

/* Terminal: error. Called from an entry point with in_cb raised. */
static void up_fail(upstream *u, upstream_err kind, const char *msg)
{
	if (u->finished)
		return;
	u->finished = true;
	conn_detach(u, false);
	if (!u->cancelled && u->cbs.on_error)
		u->cbs.on_error(u->arg, kind, msg);
}

/* Terminal: the response is complete. */
static void up_done(upstream *u)
{
	if (u->finished)
		return;
	u->finished = true;
	conn_detach(u, u->ps.keep_alive);
	if (!u->cancelled && u->cbs.on_done)
		u->cbs.on_done(u->arg);
}

/* Leaving an entry point: free what is finished or cancelled. */
static void up_leave(upstream *u)
{
	if (--u->in_cb > 0)
		return;
	if (u->cancelled && !u->finished) {
		u->finished = true;
		conn_detach(u, false);
	}
	if (u->finished)
		up_free(u);
}

static bool sink_head(void *arg, int status, const char *ctype)
{
	upstream *u = arg;
	if (!u->cancelled && u->cbs.on_head)
		u->cbs.on_head(u->arg, status, ctype);
	return !u->cancelled;
}

static bool sink_body(void *arg, const char *data, size_t len)
{
	upstream *u = arg;
	if (!u->cancelled && len && u->cbs.on_body)
		u->cbs.on_body(u->arg, data, len);
	return !u->cancelled;
}

static const upstream_sink SINK = { sink_head, sink_body };

static void conn_read(struct bufferevent *bev, void *arg)
{
	upconn *c = arg;
	upstream *u = c->u;
	struct evbuffer *in = bufferevent_get_input(bev);
	/* ACK at once. A worker that writes a stream's head and then its first
	   event as two small writes with Nagle on (evhttp does not set
	   TCP_NODELAY) holds the event until the head is ACKed; on a kept-alive
	   connection past TCP's initial quick-ACK phase our delayed ACK would
	   cost it 40 ms of TTFT. The kernel clears the flag as it goes: set it
	   on every read. */
	int one = 1;
	setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	u->in_cb++;
	u->got_bytes = true;
	char err[ERR_LEN];
	while (!u->cancelled && !u->finished && !u->paused && evbuffer_get_length(in) > 0 &&
	       u->ps.state != UPSTREAM_P_DONE) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		long n = upstream_parse(&u->ps, v.iov_base, v.iov_len, &SINK, u, err);
		if (n < 0) {
			up_fail(u, n == ERR_NOMEM ? UPSTREAM_ERR_NOMEM : UPSTREAM_ERR_PROTO, err);
			break;
		}
		evbuffer_drain(in, (size_t)n);
		if ((size_t)n < v.iov_len && u->ps.state != UPSTREAM_P_DONE)
			break; /* the sink stopped: cancelled */
	}
	if (!u->cancelled && !u->finished && u->ps.state == UPSTREAM_P_DONE)
		up_done(u);
	up_leave(u);
}

static void resend(upstream *u)
{
	/* the peer closed an idle connection just as we reused it: one more try */
	conn_detach(u, false);
	upconn *c = conn_new(u->pool);
	if (!c) {
		up_fail(u, UPSTREAM_ERR_NOMEM, "out of memory");
		return;
	}
	c->u = u;
	u->c = c;
	u->reused = false;
	u->resent = true;
	evbuffer_add_buffer_reference(bufferevent_get_output(c->bev), u->req);
	if (conn_connect(c) < 0)
		up_fail(u, UPSTREAM_ERR_CONNECT, "cannot start connecting");
}

static void conn_event(struct bufferevent *bev, short what, void *arg)
{
	upconn *c = arg;
	upstream *u = c->u;
	if (what & BEV_EVENT_CONNECTED) {
		c->connected = true;
		evutil_socket_t fd = bufferevent_getfd(bev);
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* requests go out whole */
		setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
		bufferevent_set_timeouts(bev, NULL, NULL);
		return;
	}
	int e = EVUTIL_SOCKET_ERROR();
	u->in_cb++;
	char msg[ERR_LEN + 64];
	if (!c->connected) {
		int dns = bufferevent_socket_get_dns_error(bev);
		if (what & BEV_EVENT_TIMEOUT)
			snprintf(msg, sizeof(msg), "connect timed out after %.1f s",
				 (double)c->pool->connect_tv.tv_sec + (double)c->pool->connect_tv.tv_usec * 1e-6);
		else if (dns)
			snprintf(msg, sizeof(msg), "cannot resolve %.100s: %s", c->pool->host, evutil_gai_strerror(dns));
		else
			snprintf(msg, sizeof(msg), "%s", e ? evutil_socket_error_to_string(e) : "connection failed");
		up_fail(u, UPSTREAM_ERR_CONNECT, msg);
	} else if ((what & BEV_EVENT_EOF) && u->ps.state == UPSTREAM_P_BODY_EOF) {
		upstream_parse_eof(&u->ps, msg);
		up_done(u);
	} else if (!u->got_bytes && u->reused && !u->resent) {
		resend(u);
	} else if (!u->got_bytes) {
		up_fail(u, UPSTREAM_ERR_NO_RESPONSE,
			(what & BEV_EVENT_EOF) || !e ? "closed the connection before answering" :
						       evutil_socket_error_to_string(e));
	} else {
		snprintf(msg, sizeof(msg), "%s mid-response",
			 (what & BEV_EVENT_EOF) || !e ? "closed the connection" : evutil_socket_error_to_string(e));
		up_fail(u, UPSTREAM_ERR_BROKEN, msg);
	}
	up_leave(u);
}

static void on_defer(evutil_socket_t fd, short what, void *arg)
{
	upstream *u = arg;
	u->in_cb++;
	up_fail(u, u->defer_kind, u->defer_msg);
	up_leave(u);
}

/* ---------------------------------------------------------------- API */

upstream_pool *upstream_pool_create(struct event_base *base, struct evdns_base *dns, const char *host, int port,
				    int max_idle, double connect_timeout_s)
{
	upstream_pool *p = alloc_zeroed(1, sizeof(*p));
	if (!p)
		return NULL;
	p->base = base;
	p->dns = dns;
	snprintf(p->host, sizeof(p->host), "%s", host);
	p->port = port;
	p->max_idle = max_idle;
	if (connect_timeout_s <= 0)
		connect_timeout_s = 5;
	p->connect_tv.tv_sec = (time_t)connect_timeout_s;
	p->connect_tv.tv_usec = (suseconds_t)((connect_timeout_s - (double)p->connect_tv.tv_sec) * 1e6);
	p->refs = 1;
	return p;
}

void upstream_pool_release(upstream_pool *p)
{
	if (!p)
		return;
	p->released = true;
	while (p->idle)
		idle_close(p->idle);
	pool_unref(p);
}

int upstream_pool_open(const upstream_pool *p)
{
	return p->n_open;
}

upstream *upstream_start(upstream_pool *p, const char *method, const char *path, const char *extra_headers,
			 const char *body, size_t len, const upstream_cbs *cbs, void *arg)
{
	upstream *u = alloc_zeroed(1, sizeof(*u));
	if (!u)
		return NULL;
	u->pool = p;
	p->refs++;
	u->cbs = *cbs;
	u->arg = arg;
	upstream_parser_init(&u->ps);
	u->ps.head_request = !strcmp(method, "HEAD");
	if (!(u->req = evbuffer_new()))
		goto fail;
	bool v6 = strchr(p->host, ':') != NULL;
	int rc = evbuffer_add_printf(u->req, v6 ? "%s %s HTTP/1.1\r\nHost: [%s]:%d\r\n" : "%s %s HTTP/1.1\r\nHost: %s:%d\r\n",
				     method, path, p->host, p->port);
	if (rc >= 0 && (len || !strcmp(method, "POST") || !strcmp(method, "PUT")))
		rc = evbuffer_add_printf(u->req, "Content-Type: application/json\r\nContent-Length: %zu\r\n", len);
	if (rc >= 0 && extra_headers)
		rc = evbuffer_add(u->req, extra_headers, strlen(extra_headers));
	if (rc >= 0)
		rc = evbuffer_add(u->req, "\r\n", 2);
	if (rc >= 0 && len)
		rc = evbuffer_add(u->req, body, len);
	if (rc < 0)
		goto fail;
	upconn *c = p->idle;
	if (c) {
		idle_unlink(c);
		bufferevent_setcb(c->bev, conn_read, NULL, conn_event, c);
		u->reused = true;
	} else if (!(c = conn_new(p))) {
		goto fail;
	}
	c->u = u;
	u->c = c;
	/* a reference: the bytes stay in u->req for a resend */
	if (evbuffer_add_buffer_reference(bufferevent_get_output(c->bev), u->req) < 0) {
		conn_detach(u, false);
		goto fail;
	}
	if (!u->reused && conn_connect(c) < 0) {
		/* report through the loop, never from inside upstream_start */
		conn_detach(u, false);
		u->defer_kind = UPSTREAM_ERR_CONNECT;
		snprintf(u->defer_msg, sizeof(u->defer_msg), "cannot connect to %.100s:%d", p->host, p->port);
		if (!(u->defer = event_new(p->base, -1, 0, on_defer, u)))
			goto fail;
		event_active(u->defer, EV_TIMEOUT, 0);
	}
	return u;
fail:
	conn_detach(u, false);
	up_free(u);
	return NULL;
}

void upstream_cancel(upstream *u)
{
	if (!u || u->cancelled)
		return;
	u->cancelled = true;
	if (u->in_cb > 0)
		return; /* the entry point running now frees it on its way out */
	if (!u->finished) {
		u->finished = true;
		conn_detach(u, false);
	}
	up_free(u);
}

void upstream_pause(upstream *u, bool paused)
{
	u->paused = paused;
	if (!u->c)
		return;
	if (paused) {
		bufferevent_disable(u->c->bev, EV_READ);
	} else {
		bufferevent_enable(u->c->bev, EV_READ);
		/* bytes already buffered would wait for new ones: read them now */
		if (evbuffer_get_length(bufferevent_get_input(u->c->bev)))
			bufferevent_trigger(u->c->bev, EV_READ, BEV_OPT_DEFER_CALLBACKS);
	}
}
