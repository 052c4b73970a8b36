/* ucx.h - the one module that talks to UCX (RDMA-capable one-sided transfer).
 *
 * Used by xfer.c for the `ucx` backend (also selected by the names
 * `mooncake` and `nixl`). The decode side allocates its KV pool through
 * ucx_alloc (ucp_mem_map with allocation, so shared-memory transports are
 * truly one-sided); for each prefill connection it opens a worker
 * (ucx_worker_open) and publishes that worker's address, the pool's packed
 * rkey and base address; the prefill connects an endpoint (on a worker of
 * its own) to it, unpacks the rkey once, and ucx_put()s pages straight into
 * the decode's pool, then ucx_flush()es before telling the decode (over the
 * control connection) that the pages are there. Both sides close their
 * worker with the connection.
 *
 * Threads: one ucx per xfer thread; every call from that thread. Progress:
 * put every worker's fd (ucx_worker_fd, ucx_peer_fd) in the poll set and
 * progress each after every poll (that re-arms the fd).
 *
 * Built without UCX (no ucx.pc at build time) every constructor fails with
 * ERR_UNSUPPORTED and ucx_available() is false.
 */
#ifndef PDSERVE_DISAGG_UCX_H
#define PDSERVE_DISAGG_UCX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct ucx ucx;
typedef struct ucx_mem ucx_mem;
typedef struct ucx_peer ucx_peer;
typedef struct ucx_worker ucx_worker;

bool ucx_available(void);

/* Context + worker. ib_devices: NULL, or --disaggregation-ib-device's
   "mlx5_0[,mlx5_1]" (a device without a port gets ":1"); every named device
   must exist, else ERR_INVAL with the list of devices UCX sees. UCX_TLS and
   UCX_NET_DEVICES from the environment are honoured (the flag overrides
   UCX_NET_DEVICES). */
ucx *ucx_create(const char *ib_devices, char err[ERR_LEN]);
void ucx_destroy(ucx *u); /* NULL is fine */
/* One line for the start-up log: UCX version, UCX_TLS, devices, and the
   transports the worker uses. */
const char *ucx_describe(ucx *u);

/* A worker of its own for one peer (the decode opens one per prefill
   connection and publishes its address there). Closing it closes every
   connection UCX made for it, so a peer that is cut off, then heard from
   again, finds nothing to write through (and UCX 1.13 never answers its
   late emulated puts on an endpoint it found broken, which aborts the
   process). Progress it like the main worker. */
ucx_worker *ucx_worker_open(ucx *u, char err[ERR_LEN]);
void ucx_worker_close(ucx_worker *w); /* NULL is fine */
int ucx_worker_fd(ucx_worker *w);
void ucx_worker_progress(ucx_worker *w);
void ucx_worker_blob(ucx_worker *w, const void **blob, size_t *len);
/* True when every transport of the context is a network one (tcp, RDMA
   verbs): a peer writes into our memory only through connections of the
   worker it was given, so closing that worker fences it. False with any
   shared-memory transport (cma, posix, sysv, knem, xpmem): a process on
   this host may keep writing until it exits. */
bool ucx_fences(ucx *u);

/* Allocate (decode pool) or register (prefill pool, the put source) memory. */
void *ucx_alloc(ucx *u, size_t bytes, ucx_mem **out, char err[ERR_LEN]);
int ucx_register(ucx *u, void *addr, size_t bytes, ucx_mem **out, char err[ERR_LEN]);
void ucx_mem_release(ucx *u, ucx_mem *m); /* unmaps (and frees what ucx_alloc gave) */

/* Blobs for the handshake, owned by the ucx / mem (valid until destroy). */
int ucx_rkey(ucx *u, ucx_mem *m, const void **blob, size_t *len);

/* Prefill side: an endpoint to a decode's worker with its pool's rkey, on
   a worker of its own (put ucx_peer_fd in the poll set, ucx_peer_progress
   after each poll). NULL with err on failure. */
ucx_peer *ucx_connect(ucx *u, const void *addr, size_t addr_len, const void *rkey, size_t rkey_len,
		      uint64_t remote_base, uint64_t remote_bytes, char err[ERR_LEN]);
/* Fails what is pending (flush callbacks run with errors), then closes the
   endpoint's worker and so every connection UCX made for it. NULL is fine. */
void ucx_peer_close(ucx_peer *p);
int ucx_peer_fd(ucx_peer *p);
void ucx_peer_progress(ucx_peer *p);
/* True once the endpoint reported an error (peer gone). */
bool ucx_peer_failed(const ucx_peer *p);

/* Put len bytes from src (inside m) to remote_base + remote_off. Non-blocking:
   completion is only known through a later ucx_flush. 0, ERR_INVAL (range),
   ERR_IO (endpoint failed). */
int ucx_put(ucx_peer *p, const void *src, ucx_mem *m, uint64_t remote_off, size_t len);
/* Call done(arg, status) from ucx_progress (or at once) when every put
   issued on p before this call has landed (status 0) or failed (<0). */
int ucx_flush(ucx_peer *p, void (*done)(void *arg, int status), void *arg);

#endif
