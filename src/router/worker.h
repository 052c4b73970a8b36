/* worker.h - what the router knows about one worker: its URL, and the two
 * small state machines that decide whether requests may go to it (health
 * checks and the circuit breaker).
 *
 * Pure logic with the time passed in, so tests drive it without sockets.
 * The router (router.c) owns the storage (worker_state lives inside its
 * worker record) and feeds it probe results and request outcomes.
 *
 * Health (probes of the health endpoint, one at a time per worker):
 *
 *            1st success            failure_threshold failures in a row
 *   PENDING ------------> HEALTHY ------------------------------------> UNHEALTHY
 *   (failures: stay)         ^                                              |
 *                            +------- success_threshold successes in a row -+
 *   worker_state_probe() performs every transition. A worker never seen
 *   alive stays PENDING however often it fails (the router probes it often,
 *   so workers started after the router join within a probe or two).
 *   UNHEALTHY -> HEALTHY also closes the circuit breaker: the process
 *   answered its health checks again (typically: it was restarted).
 *
 * Circuit breaker (request outcomes: a connection failure or a 5xx counts as
 * a failure, anything the worker answered below 500 as a success):
 *
 *          cb_failure_threshold failures in a row       cb_timeout_s passed
 *          (none more than cb_window_s after the last)
 *   CLOSED ------------------------------------> OPEN -------------------> HALF_OPEN
 *     ^                                           ^                          |  |
 *     |                                           +------ any failure -------+  |
 *     +------------------ cb_success_threshold successes in a row -------------+
 *   worker_state_request() performs the failure/success transitions,
 *   worker_state_routable() the OPEN -> HALF_OPEN one (lazily, when asked).
 *
 * A worker takes requests when it is HEALTHY and its breaker is not OPEN.
 */
#ifndef PDSERVE_ROUTER_WORKER_H
#define PDSERVE_ROUTER_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum { WORKER_REGULAR, WORKER_PREFILL, WORKER_DECODE } worker_type;
typedef enum { WORKER_PENDING, WORKER_HEALTHY, WORKER_UNHEALTHY } worker_health;
typedef enum { WORKER_CB_CLOSED, WORKER_CB_OPEN, WORKER_CB_HALF_OPEN } worker_cb;

/* "regular" | "prefill" | "decode" and back; -1 when unknown. */
const char *worker_type_name(worker_type t);
int worker_type_parse(const char *s);
const char *worker_health_name(worker_health h);
const char *worker_cb_name(worker_cb c);

typedef struct {
	int failure_threshold;    /* probes failed in a row before HEALTHY -> UNHEALTHY (>= 1) */
	int success_threshold;    /* probes passed in a row before UNHEALTHY -> HEALTHY (>= 1) */
	bool cb_disabled;
	int cb_failure_threshold; /* request failures in a row that open the breaker (>= 1) */
	int cb_success_threshold; /* successes in HALF_OPEN that close it (>= 1) */
	double cb_timeout_s;      /* OPEN this long, then HALF_OPEN */
	double cb_window_s;       /* failures further apart than this are not "in a row" (0 = no window) */
} worker_policy;

typedef struct {
	worker_health health;
	int ok_streak, fail_streak;     /* probes */
	worker_cb cb;
	int cb_fail_streak, cb_ok_streak;
	int64_t cb_opened_ns, cb_last_fail_ns;
} worker_state;

void worker_state_init(worker_state *s);

/* One probe result. Returns true when the health state changed. */
bool worker_state_probe(worker_state *s, const worker_policy *p, bool ok);

/* One request outcome (ok: the worker answered, status < 500). Returns true
   when the breaker changed state. */
bool worker_state_request(worker_state *s, const worker_policy *p, bool ok, int64_t now_ns);

/* May requests go to this worker now? Moves OPEN -> HALF_OPEN once the
   timeout has passed. */
bool worker_state_routable(worker_state *s, const worker_policy *p, int64_t now_ns);

/* A worker address taken apart. URLs are untrusted (flags, POST /workers). */
typedef struct {
	char host[256];  /* without brackets for IPv6 */
	int port;        /* 80 when absent */
	char url[300];   /* normalized: "http://host:port" (IPv6 in brackets) */
} worker_url;

/* Parse "http://host[:port][/]" (or "host:port" without a scheme). Only
   http; no path beyond "/", no user info. 0, or ERR_INVAL with err. */
int worker_url_parse(const char *s, worker_url *out, char err[ERR_LEN]);

/* Split "URL@PORT" (a --prefill-hosts entry): *port = PORT and *url_len =
   the length of URL, or *port = 0 and *url_len = strlen(s) when there is no
   "@PORT" suffix. ERR_INVAL with err when PORT is not 1..65535. */
int worker_split_bootstrap(const char *s, size_t *url_len, int *port, char err[ERR_LEN]);

#endif
