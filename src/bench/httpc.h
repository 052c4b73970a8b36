/* httpc.h - the HTTP client of the benchmark tools: the one module that
 * includes libcurl.
 *
 * Two ways in:
 *   - httpc_fetch: one blocking request (setup calls: /v1/models,
 *     /tokenize, /flush_cache, /metrics);
 *   - an httpc (a curl multi handle) driving any number of POSTs at once on
 *     the caller's thread: httpc_start queues one, httpc_poll waits for
 *     network activity up to a timeout and runs the callbacks. Response
 *     bytes reach on_data as they arrive (curl's own pieces; the caller
 *     frames lines), then on_done fires exactly once per started request.
 *
 * Requests carry "Content-Type: application/json", no "Expect:
 * 100-continue" (it would stall large bodies on servers that do not answer
 * it), and "Authorization: Bearer KEY" when a key is given. Every request
 * opens its own connection (like bench_serving's session per request);
 * connection setup is part of the measured time.
 *
 * Threads: an httpc and its callbacks belong to one thread.
 */
#ifndef PDSERVE_BENCH_HTTPC_H
#define PDSERVE_BENCH_HTTPC_H

#include <stddef.h>

#include "base/err.h"

/* Once per process, before any other call (curl_global_init). 0 or ERR_IO. */
int httpc_global_init(void);
void httpc_global_fini(void);

/* method "GET" or "POST" (body may be NULL for GET). *resp is new (owned,
   alloc_free, NUL-terminated, *resp_len excludes the NUL) whatever the
   status; status is the HTTP status. timeout_s <= 0: none.
   0, ERR_TIMEOUT, ERR_IO (connection failed; err says why) or ERR_NOMEM. */
int httpc_fetch(const char *method, const char *url, const char *body, size_t body_len, const char *api_key,
		double timeout_s, long *status, char **resp, size_t *resp_len, char err[ERR_LEN]);

typedef struct httpc httpc;

typedef struct {
	/* Response body bytes as they arrive; status is the HTTP status of the
	   response (known before the first byte). */
	void (*on_data)(void *user, long status, const char *p, size_t n);
	/* Once per request: rc 0 (the response ended; status is its status),
	   ERR_TIMEOUT (timeout_s passed), or ERR_IO (connection failed or
	   broke; msg says how). msg is borrowed for the call. */
	void (*on_done)(void *user, int rc, long status, const char *msg);
} httpc_callbacks;

httpc *httpc_create(char err[ERR_LEN]);
void httpc_destroy(httpc *h); /* NULL is fine; in-flight requests end without callbacks */

/* POST body (copied) to url; connecting starts before this returns. cb is
   borrowed for the request's life. 0 or
   ERR_NOMEM / ERR_IO with err; on error no callback will fire. */
int httpc_start(httpc *h, const char *url, const char *body, size_t len, const char *api_key, double timeout_s,
		const httpc_callbacks *cb, void *user, char err[ERR_LEN]);

/* Wait up to timeout_ms for activity, then run callbacks. Returns the
   number of requests still running (>= 0) or ERR_IO. */
int httpc_poll(httpc *h, int timeout_ms);

#endif
