/* xfer.h - KV transfer between a prefill and a decode server (docs/PROTOCOL.md).
 *
 * One xfer per server process in prefill or decode mode. It owns a thread
 * with a poll loop: the prefill's bootstrap listener (TCP, plus a unix
 * socket for shm), the decode's connections to prefills, every room's state
 * and timeouts, and heartbeats. It talks to the engine only through the
 * engine's thread-safe calls and its PD hooks:
 *
 *   engine_config.kv_export / kv_import / kv_import_cancel = xfer_on_export /
 *   xfer_on_import / xfer_on_import_cancel, pd_arg = the xfer.
 *
 * The HTTP layer registers each request's room before submitting it to the
 * engine (xfer_prefill_add / xfer_decode_add) and learns every outcome from
 * the engine's events: a transfer failure ends the request with
 * ENGINE_FINISH_ERROR and a message naming the peer.
 *
 * All functions are thread-safe unless said otherwise.
 */
#ifndef PDSERVE_DISAGG_XFER_H
#define PDSERVE_DISAGG_XFER_H

#include <stdint.h>

#include "base/err.h"
#include "engine/engine.h"

typedef enum { XFER_PREFILL, XFER_DECODE } xfer_role;
typedef enum { XFER_TCP = 1, XFER_SHM = 2, XFER_FAKE = 3, XFER_UCX = 4 } xfer_backend;

typedef struct {
	xfer_role role;
	xfer_backend backend;
	const char *host;          /* prefill: bootstrap listen address (default 127.0.0.1) */
	int bootstrap_port;        /* prefill: listen port; 0 = pick a free one */
	double bootstrap_timeout;  /* seconds; 0 = $SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT or 300 */
	double waiting_timeout;    /* 0 = $SGLANG_DISAGGREGATION_WAITING_TIMEOUT or 300 */
	double heartbeat_interval; /* 0 = $SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL or 5 */
	int heartbeat_max_failure; /* 0 = $SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE or 2 */
	const char *ib_devices;    /* ucx: --disaggregation-ib-device, or NULL */
	const char *secret;        /* cluster secret (borrowed), NULL/"" = none: peers must then prove
				      they know it before any other frame (auth.h, docs/SECURITY.md) */
} xfer_config;

typedef struct xfer xfer;

/* Listen (prefill) and start the thread. The engine is attached after it is
   created (it needs the xfer for its hooks). NULL on failure with err. */
xfer *xfer_create(const xfer_config *cfg, char err[ERR_LEN]);
/* Attach the engine (once, before any request). Reads the KV layout and
   the model fingerprint from it. */
void xfer_attach(xfer *x, engine *e);
/* Stop the thread: after this the xfer calls nothing in the engine (its
   hooks only queue). Shutdown order: xfer_stop, engine_destroy,
   xfer_destroy. Idempotent. */
void xfer_stop(xfer *x);
/* Stop (if needed), close every connection, free. NULL is fine. */
void xfer_destroy(xfer *x);

int xfer_bootstrap_port(const xfer *x);
const char *xfer_backend_name(xfer_backend b);
/* "tcp" | "shm" | "fake" | "ucx" -> backend; "mooncake" / "nixl" select ucx
   (logged); ucx names in a build without UCX -> ERR_UNSUPPORTED naming what
   exists; anything else ERR_INVAL. */
int xfer_backend_parse(const char *name, xfer_backend *out, char err[ERR_LEN]);

/* ucx, decode side: the KV pool comes from UCX (engine_config.kv_alloc /
   kv_release with pd_arg = the xfer). */
void *xfer_kv_alloc(void *arg, size_t bytes);
void xfer_kv_release(void *arg, void *p, size_t bytes);
/* One line describing the transport (UCX: version, TLS, devices). */
const char *xfer_describe(const xfer *x);

/* Engine hooks (run on the engine's scheduler thread; they only queue). */
void xfer_on_export(void *arg, const engine_kv_export *ex);
void xfer_on_import(void *arg, uint64_t rid, void *user, const int32_t *pages, int n_pages);
void xfer_on_import_cancel(void *arg, uint64_t rid, void *user);

/* Prefill: request rid (EXPORT, n_prompt tokens) belongs to room. Call
   after engine_submit (the request waits for engine_export_ready, which
   this layer calls once the decode has sent the room's destination). */
int xfer_prefill_add(xfer *x, uint64_t room, uint64_t rid, int n_prompt, char err[ERR_LEN]);
/* Decode: request rid (IMPORT) gets its KV from the prefill whose bootstrap
   service is host:port. Call before engine_submit (its kv_import hook may
   fire at once); on submit failure call xfer_forget. */
int xfer_decode_add(xfer *x, uint64_t room, uint64_t rid, const char *host, int port, int n_prompt,
		    char err[ERR_LEN]);
/* Drop the registration of a request the engine refused. */
void xfer_forget(xfer *x, uint64_t rid);

typedef struct {
	int64_t rooms_ok, rooms_failed;
	int64_t bytes;             /* KV bytes moved (sent on prefill, received on decode) */
	double transfer_s;         /* summed per-room transfer time */
	int connections;
	int rooms_live;
} xfer_stats;
void xfer_get_stats(xfer *x, xfer_stats *out);

/* Per-request transfer numbers for meta_info (decode side; the prefill's are
   carried in its AUX). 0, or ERR_NOTFOUND when rid is unknown or gone. */
typedef struct {
	double prefill_queue_s, prefill_compute_s, transfer_s, admission_wait_s;
	uint64_t bytes;
} xfer_timing;
int xfer_take_timing(xfer *x, uint64_t rid, xfer_timing *out);

#endif
