/* upstream.h - the router's HTTP/1.1 client to its workers, on libevent
 * bufferevents: keep-alive connection pools, streamed responses, and
 * cancellation by closing the connection.
 *
 * One upstream is one request/response exchange on one connection. The
 * response arrives through callbacks, as soon as bytes are read:
 *
 *   on_head(status, content type)   once, after the header block
 *   on_body(bytes)                  zero or more times (chunked framing removed)
 *   on_done()                       the response is complete
 *   on_error(kind, message)         instead of on_done, at any point
 *
 * After on_done or on_error the upstream is gone: the caller drops its
 * pointer inside the callback and must not cancel it. upstream_cancel()
 * closes the connection (a worker reads that as "client left" and aborts
 * the request, freeing its KV pages) and no callback comes after it. A
 * callback may cancel its own upstream, and may start new ones.
 *
 * Callbacks never run inside upstream_start(): a connection that fails at
 * once reports through the event loop, like one that fails later.
 *
 * Pools: one per worker address. A response that ends cleanly with
 * keep-alive puts its connection back into the pool's idle list; the next
 * request takes it instead of connecting. An idle connection the peer
 * closes is dropped. A request whose reused connection turns out to be
 * closed before any response byte is sent again once on a new connection
 * (the peer closed an idle connection as we reused it); any other failure
 * goes to on_error.
 *
 * The response parser is exposed for the unit tests (fed bytes split
 * anywhere).
 */
#ifndef PDSERVE_ROUTER_UPSTREAM_H
#define PDSERVE_ROUTER_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

struct event_base;
struct evdns_base;

typedef enum {
	UPSTREAM_ERR_CONNECT,     /* no connection: refused, unreachable, name not found, connect timeout */
	UPSTREAM_ERR_NO_RESPONSE, /* connected and sent, then closed before the first response byte */
	UPSTREAM_ERR_BROKEN,      /* closed or reset in the middle of the response */
	UPSTREAM_ERR_PROTO,       /* the response is not HTTP/1.x we can read */
	UPSTREAM_ERR_NOMEM,
} upstream_err;

const char *upstream_err_name(upstream_err e);

typedef struct {
	void (*on_head)(void *arg, int status, const char *content_type);
	void (*on_body)(void *arg, const char *data, size_t len);
	void (*on_done)(void *arg);
	void (*on_error)(void *arg, upstream_err kind, const char *message);
} upstream_cbs;

/* ---------------------------------------------------------------- parser */

enum {
	UPSTREAM_P_HEAD, UPSTREAM_P_BODY_LEN, UPSTREAM_P_BODY_EOF, UPSTREAM_P_CHUNK_SIZE, UPSTREAM_P_CHUNK_EXT,
	UPSTREAM_P_CHUNK_DATA, UPSTREAM_P_CHUNK_CR, UPSTREAM_P_CHUNK_LF, UPSTREAM_P_TRAILER, UPSTREAM_P_DONE,
};

#define UPSTREAM_MAX_HEAD (64 << 10)

/* A response parser (plain struct: the caller owns it; init/fini). */
typedef struct {
	int state;
	int status;
	bool keep_alive;        /* valid after the head */
	bool head_request;      /* the request was HEAD: no body follows */
	char content_type[128];
	char *head;             /* header block so far [head_len], grown up to UPSTREAM_MAX_HEAD */
	size_t head_len, head_cap;
	uint64_t left;          /* BODY_LEN: bytes left; CHUNK_DATA: bytes left in the chunk */
	char line[40];          /* chunk-size or trailer line so far */
	size_t line_len;
	bool trailer_blank;     /* TRAILER: the current line is empty so far */
} upstream_parser;

void upstream_parser_init(upstream_parser *p);
void upstream_parser_fini(upstream_parser *p);

/* Parser sink: return false to stop parsing at once (the caller cancelled). */
typedef struct {
	bool (*head)(void *arg, int status, const char *content_type);
	bool (*body)(void *arg, const char *data, size_t len);
} upstream_sink;

/* Feed bytes. Returns how many were consumed: all of them, or fewer when
   the response ended (state DONE; the rest is the peer's) or the sink said
   stop. ERR_PROTO (err filled) on a malformed response, ERR_NOMEM. */
long upstream_parse(upstream_parser *p, const char *data, size_t len, const upstream_sink *sink, void *arg,
		    char err[ERR_LEN]);

/* The peer closed: 0 when that ends the response (a body delimited by the
   close), else ERR_PROTO with err ("closed mid-body"). */
int upstream_parse_eof(upstream_parser *p, char err[ERR_LEN]);

/* ---------------------------------------------------------------- pools and requests */

typedef struct upstream_pool upstream_pool;
typedef struct upstream upstream;

/* A pool for host:port. base and dns are borrowed and must outlive it.
   connect_timeout_s bounds connecting (and a name lookup). NULL when out of
   memory. */
upstream_pool *upstream_pool_create(struct event_base *base, struct evdns_base *dns, const char *host, int port,
				    int max_idle, double connect_timeout_s);

/* The owner lets go: idle connections close now; the pool itself is freed
   when its last live request ends. NULL is fine. */
void upstream_pool_release(upstream_pool *p);

/* Connections open now (idle + busy), for stats. */
int upstream_pool_open(const upstream_pool *p);

/* Send method path with headers (extra: more header lines, each ending in
   "\r\n"; may be NULL) and body[0..len) (copied). NULL when out of memory
   (nothing was sent, no callback will come). */
upstream *upstream_start(upstream_pool *p, const char *method, const char *path, const char *extra_headers,
			 const char *body, size_t len, const upstream_cbs *cbs, void *arg);

/* Close the connection and forget the request: no callback after this. */
void upstream_cancel(upstream *u);

/* Pause/resume reading the response (back-pressure). */
void upstream_pause(upstream *u, bool paused);

#endif
