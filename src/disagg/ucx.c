/* ucx.c - UCX context, workers, memory, endpoints and puts for the ucx backend.
 *
 * Design: RMA only (UCP_FEATURE_RMA | WAKEUP). The control messages (which
 * pages, the first token, failures) stay on xfer's TCP connection; UCX only
 * moves KV bytes, one-sided, into the decode's pool. A put's completion is
 * known through ucp_ep_flush_nbx: xfer flushes after each exported batch and
 * only then tells the decode the pages are there. Workers are per
 * connection (see ucx.h): closing one takes every connection UCX made for
 * that peer along, which no endpoint close does reliably in UCX 1.13.
 *
 * Devices: --disaggregation-ib-device names RDMA devices ("mlx5_0" means
 * port 1, "mlx5_0:1"); we map it to UCX's NET_DEVICES. A probe context
 * without the restriction lists what UCX sees, so a wrong name fails at
 * start-up with that list instead of UCX silently using something else.
 *
 * Left out: active messages / tag matching (the control path is TCP),
 * registration caches, multi-rail tuning.
 */
#include "disagg/ucx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/log.h"

#ifdef PDSERVE_HAVE_UCX

#include <ucp/api/ucp.h>

struct ucx_worker {
	ucp_worker_h worker;
	int efd;
	ucp_address_t *addr;
	size_t addr_len;
};

struct ucx {
	ucp_context_h ctx; /* workers are per connection (ucx_worker_open, ucx_connect) */
	bool fences;       /* a worker's peers write only through it (ucx_fences) */
	char desc[2048];
};

struct ucx_mem {
	ucp_mem_h memh;
	void *addr;
	size_t bytes;
	void *rkey_buf;
	size_t rkey_len;
};

struct ucx_peer {
	ucx *u;
	ucx_worker w; /* its own: closed with it, taking UCX's connections along */
	ucp_ep_h ep;
	ucp_rkey_h rkey;
	uint64_t base, bytes;
	bool failed;
};

bool ucx_available(void)
{
	return true;
}

/* Transports through which a peer can only write into our memory by
   messages or RDMA over connections that belong to one of our workers
   (the "self" loopback never serves another process). Shared-memory ones
   (posix, sysv, cma, knem, xpmem) let the peer write on its own. */
static bool network_tl(const char *tl, size_t n)
{
	static const char *const net[] = { "tcp", "rc_verbs", "rc_mlx5", "dc_mlx5", "ud_verbs", "ud_mlx5", "self" };
	for (size_t i = 0; i < sizeof(net) / sizeof(net[0]); i++)
		if (strlen(net[i]) == n && !strncmp(tl, net[i], n))
			return true;
	return false;
}

/* "tl/dev" of every resource a context uses, comma separated; *fences:
   every one is a network transport (false when none could be read). */
static void resources(ucp_context_h ctx, char *out, size_t cap, bool *fences)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	out[0] = '\0';
	if (fences)
		*fences = false;
	if (!f)
		return;
	ucp_context_print_info(ctx, f);
	fclose(f);
	size_t o = 0;
	int seen = 0, net = 0;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		char *flags = strstr(line, "resource");
		char *dash = flags ? strstr(line, "-- ") : NULL;
		if (!dash)
			continue;
		const char *tl = dash + 3, *slash = strchr(tl, '/');
		seen++;
		net += slash && network_tl(tl, (size_t)(slash - tl));
		int n = snprintf(out + o, cap - o, "%s%s", o ? "," : "", tl);
		if (n < 0 || (size_t)n >= cap - o)
			continue; /* out is full; keep counting */
		o += (size_t)n;
	}
	if (fences)
		*fences = seen > 0 && net == seen;
	free(buf);
}

static ucs_status_t make_context(ucp_config_t *cfg, ucp_context_h *ctx)
{
	ucp_params_t p;
	memset(&p, 0, sizeof(p));
	p.field_mask = UCP_PARAM_FIELD_FEATURES;
	p.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
	return ucp_init(&p, cfg, ctx);
}

/* Check every device of list against what UCX sees; fill devs with the
   NET_DEVICES value ("mlx5_0:1,mlx5_1:1"). */
static int check_devices(const char *list, char *devs, size_t cap, char *err)
{
	ucp_config_t *cfg;
	ucp_context_h probe;
	char seen[2048];
	if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK)
		return err_set(err, ERR_IO, "UCX: cannot read its configuration");
	ucp_config_modify(cfg, "NET_DEVICES", "all");
	ucs_status_t st = make_context(cfg, &probe);
	ucp_config_release(cfg);
	if (st != UCS_OK)
		return err_set(err, ERR_IO, "UCX: %s", ucs_status_string(st));
	resources(probe, seen, sizeof(seen), NULL);
	ucp_cleanup(probe);
	char tmp[512];
	snprintf(tmp, sizeof(tmp), "%s", list);
	size_t o = 0;
	devs[0] = '\0';
	for (char *d = strtok(tmp, ","); d; d = strtok(NULL, ",")) {
		while (*d == ' ')
			d++;
		if (!*d)
			continue;
		char want[128];
		snprintf(want, sizeof(want), strchr(d, ':') ? "%s" : "%s:1", d);
		/* a device matches "tl/<dev>" in the resource list, with or without port */
		bool found = false;
		char pat1[160], pat2[160];
		snprintf(pat1, sizeof(pat1), "/%s,", want);
		snprintf(pat2, sizeof(pat2), "/%s,", d);
		char hay[2100];
		snprintf(hay, sizeof(hay), "%s,", seen);
		found = strstr(hay, pat1) || strstr(hay, pat2);
		if (!found)
			return err_set(err, ERR_INVAL,
				       "--disaggregation-ib-device %s: UCX sees no such device (transports/devices: %s)", d,
				       seen);
		int n = snprintf(devs + o, cap - o, "%s%s", o ? "," : "", strstr(hay, pat1) ? want : d);
		if (n > 0 && (size_t)n < cap - o)
			o += (size_t)n;
	}
	return 0;
}

static void worker_fini(ucx_worker *w)
{
	if (w->addr)
		ucp_worker_release_address(w->worker, w->addr);
	if (w->worker)
		ucp_worker_destroy(w->worker);
	memset(w, 0, sizeof(*w));
	w->efd = -1;
}

static int worker_init(ucp_context_h ctx, ucx_worker *w, char *err)
{
	memset(w, 0, sizeof(*w));
	w->efd = -1;
	ucp_worker_params_t wp;
	memset(&wp, 0, sizeof(wp));
	wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
	wp.thread_mode = UCS_THREAD_MODE_SINGLE;
	ucs_status_t st = ucp_worker_create(ctx, &wp, &w->worker);
	if (st != UCS_OK) {
		w->worker = NULL;
		return err_set(err, ERR_IO, "UCX worker: %s", ucs_status_string(st));
	}
	if ((st = ucp_worker_get_efd(w->worker, &w->efd)) != UCS_OK ||
	    (st = ucp_worker_get_address(w->worker, &w->addr, &w->addr_len)) != UCS_OK) {
		w->addr = NULL;
		worker_fini(w);
		return err_set(err, ERR_IO, "UCX worker: %s", ucs_status_string(st));
	}
	return 0;
}

ucx *ucx_create(const char *ib_devices, char err[ERR_LEN])
{
	char devs[512] = "";
	/* UCX's TCP transport emulates a put with 8 KiB messages by default,
	   which caps KV transfer near a fifth of a plain TCP stream; 1 MiB
	   segments measured 60-78% (bench transfer). The environment wins. */
	setenv("UCX_TCP_TX_SEG_SIZE", "1M", 0);
	setenv("UCX_TCP_RX_SEG_SIZE", "1M", 0);
	setenv("UCX_WARN_UNUSED_ENV_VARS", "n", 0); /* those two when UCX_TLS has no tcp */
	if (ib_devices && *ib_devices && check_devices(ib_devices, devs, sizeof(devs), err) < 0)
		return NULL;
	ucx *u = alloc_zeroed(1, sizeof(*u));
	if (!u) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	ucp_config_t *cfg;
	if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK) {
		err_set(err, ERR_IO, "UCX: cannot read its configuration");
		goto fail;
	}
	if (devs[0])
		ucp_config_modify(cfg, "NET_DEVICES", devs);
	ucs_status_t st = make_context(cfg, &u->ctx);
	ucp_config_release(cfg);
	if (st != UCS_OK) {
		u->ctx = NULL;
		err_set(err, ERR_IO, "UCX init: %s", ucs_status_string(st));
		goto fail;
	}
	ucx_worker probe; /* fail at start-up, not at the first connection */
	if (worker_init(u->ctx, &probe, err) < 0)
		goto fail;
	worker_fini(&probe);
	char res[700];
	resources(u->ctx, res, sizeof(res), &u->fences);
	const char *tls = getenv("UCX_TLS"), *nd = getenv("UCX_NET_DEVICES");
	snprintf(u->desc, sizeof(u->desc), "UCX %s, UCX_TLS=%s, NET_DEVICES=%s, resources: %s", ucp_get_version_string(),
		 tls ? tls : "(all)", devs[0] ? devs : nd ? nd : "(all)", res);
	return u;
fail:
	ucx_destroy(u);
	return NULL;
}

void ucx_destroy(ucx *u)
{
	if (!u)
		return;
	if (u->ctx)
		ucp_cleanup(u->ctx);
	alloc_free(u);
}

const char *ucx_describe(ucx *u) { return u->desc; }
bool ucx_fences(ucx *u) { return u->fences; }

void ucx_worker_progress(ucx_worker *w)
{
	for (int i = 0; i < 1000; i++) {
		while (ucp_worker_progress(w->worker))
			;
		if (ucp_worker_arm(w->worker) != UCS_ERR_BUSY)
			return;
	}
}

ucx_worker *ucx_worker_open(ucx *u, char err[ERR_LEN])
{
	ucx_worker *w = alloc_zeroed(1, sizeof(*w));
	if (!w) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	if (worker_init(u->ctx, w, err) < 0) {
		alloc_free(w);
		return NULL;
	}
	return w;
}

void ucx_worker_close(ucx_worker *w)
{
	if (!w)
		return;
	worker_fini(w);
	alloc_free(w);
}

int ucx_worker_fd(ucx_worker *w) { return w->efd; }

void ucx_worker_blob(ucx_worker *w, const void **blob, size_t *len)
{
	*blob = w->addr;
	*len = w->addr_len;
}

static ucx_mem *map(ucx *u, void *addr, size_t bytes, bool allocate, char *err)
{
	ucx_mem *m = alloc_zeroed(1, sizeof(*m));
	if (!m) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	ucp_mem_map_params_t mp;
	memset(&mp, 0, sizeof(mp));
	mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS |
			(allocate ? 0 : UCP_MEM_MAP_PARAM_FIELD_ADDRESS);
	mp.length = bytes;
	mp.flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0;
	mp.address = addr;
	ucs_status_t st = ucp_mem_map(u->ctx, &mp, &m->memh);
	if (st != UCS_OK) {
		alloc_free(m);
		err_set(err, ERR_NOMEM, "UCX mem_map of %zu bytes: %s", bytes, ucs_status_string(st));
		return NULL;
	}
	ucp_mem_attr_t attr;
	attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
	ucp_mem_query(m->memh, &attr);
	m->addr = attr.address;
	m->bytes = attr.length;
	if ((st = ucp_rkey_pack(u->ctx, m->memh, &m->rkey_buf, &m->rkey_len)) != UCS_OK) {
		ucp_mem_unmap(u->ctx, m->memh);
		alloc_free(m);
		err_set(err, ERR_IO, "UCX rkey_pack: %s", ucs_status_string(st));
		return NULL;
	}
	return m;
}

void *ucx_alloc(ucx *u, size_t bytes, ucx_mem **out, char err[ERR_LEN])
{
	*out = map(u, NULL, bytes, true, err);
	return *out ? (*out)->addr : NULL;
}

int ucx_register(ucx *u, void *addr, size_t bytes, ucx_mem **out, char err[ERR_LEN])
{
	*out = map(u, addr, bytes, false, err);
	return *out ? 0 : ERR_NOMEM;
}

void ucx_mem_release(ucx *u, ucx_mem *m)
{
	if (!m)
		return;
	ucp_rkey_buffer_release(m->rkey_buf);
	ucp_mem_unmap(u->ctx, m->memh);
	alloc_free(m);
}

int ucx_rkey(ucx *u, ucx_mem *m, const void **blob, size_t *len)
{
	(void)u;
	*blob = m->rkey_buf;
	*len = m->rkey_len;
	return 0;
}

static void ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
	ucx_peer *p = arg;
	(void)ep;
	p->failed = true;
	LOGW("ucx", "endpoint failed: %s", ucs_status_string(status));
}

ucx_peer *ucx_connect(ucx *u, const void *addr, size_t addr_len, const void *rkey, size_t rkey_len,
		      uint64_t remote_base, uint64_t remote_bytes, char err[ERR_LEN])
{
	(void)addr_len;
	(void)rkey_len;
	ucx_peer *p = alloc_zeroed(1, sizeof(*p));
	if (!p) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	p->u = u;
	p->base = remote_base;
	p->bytes = remote_bytes;
	if (worker_init(u->ctx, &p->w, err) < 0) {
		alloc_free(p);
		return NULL;
	}
	ucp_ep_params_t ep;
	memset(&ep, 0, sizeof(ep));
	ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
			UCP_EP_PARAM_FIELD_ERR_HANDLER;
	ep.address = addr;
	ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
	ep.err_handler.cb = ep_error;
	ep.err_handler.arg = p;
	ucs_status_t st = ucp_ep_create(p->w.worker, &ep, &p->ep);
	if (st != UCS_OK) {
		/* shared-memory transports cannot detect a dead peer; the control
		   connection's heartbeats do that job, so go without */
		ep.field_mask &= ~(uint64_t)(UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER);
		st = ucp_ep_create(p->w.worker, &ep, &p->ep);
		if (st == UCS_OK)
			LOGI("ucx", "endpoint without peer-failure handling (the transports cannot provide it)");
	}
	if (st != UCS_OK) {
		worker_fini(&p->w);
		alloc_free(p);
		err_set(err, ERR_IO, "UCX connect: %s", ucs_status_string(st));
		return NULL;
	}
	if ((st = ucp_ep_rkey_unpack(p->ep, rkey, &p->rkey)) != UCS_OK) {
		p->rkey = NULL;
		ucx_peer_close(p);
		err_set(err, ERR_PROTO, "UCX rkey_unpack: %s", ucs_status_string(st));
		return NULL;
	}
	return p;
}

void ucx_peer_close(ucx_peer *p)
{
	if (!p)
		return;
	if (p->rkey)
		ucp_rkey_destroy(p->rkey);
	if (p->ep) {
		ucp_request_param_t rp;
		memset(&rp, 0, sizeof(rp));
		rp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
		rp.flags = UCP_EP_CLOSE_FLAG_FORCE;
		ucs_status_ptr_t r = ucp_ep_close_nbx(p->ep, &rp);
		if (UCS_PTR_IS_PTR(r)) {
			for (int i = 0; i < 100000 && ucp_request_check_status(r) == UCS_INPROGRESS; i++)
				ucp_worker_progress(p->w.worker);
			ucp_request_free(r);
		}
	}
	worker_fini(&p->w);
	alloc_free(p);
}

int ucx_peer_fd(ucx_peer *p) { return p->w.efd; }
void ucx_peer_progress(ucx_peer *p) { ucx_worker_progress(&p->w); }

bool ucx_peer_failed(const ucx_peer *p)
{
	return p->failed;
}

int ucx_put(ucx_peer *p, const void *src, ucx_mem *m, uint64_t remote_off, size_t len)
{
	if (p->failed)
		return ERR_IO;
	if (remote_off > p->bytes || len > p->bytes - remote_off)
		return ERR_INVAL;
	ucp_request_param_t rp;
	memset(&rp, 0, sizeof(rp));
	if (m) {
		rp.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
		rp.memh = m->memh;
	}
	ucs_status_ptr_t r = ucp_put_nbx(p->ep, src, len, p->base + remote_off, p->rkey, &rp);
	if (UCS_PTR_IS_ERR(r))
		return ERR_IO;
	if (UCS_PTR_IS_PTR(r))
		ucp_request_free(r); /* completion is observed through the next flush */
	return 0;
}

typedef struct {
	void (*done)(void *arg, int status);
	void *arg;
} flush_ctx;

static void flush_cb(void *request, ucs_status_t status, void *user)
{
	flush_ctx *f = user;
	f->done(f->arg, status == UCS_OK ? 0 : ERR_IO);
	alloc_free(f);
	ucp_request_free(request);
}

int ucx_flush(ucx_peer *p, void (*done)(void *arg, int status), void *arg)
{
	flush_ctx *f = alloc_zeroed(1, sizeof(*f));
	if (!f)
		return ERR_NOMEM;
	f->done = done;
	f->arg = arg;
	ucp_request_param_t rp;
	memset(&rp, 0, sizeof(rp));
	rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
	rp.cb.send = flush_cb;
	rp.user_data = f;
	ucs_status_ptr_t r = ucp_ep_flush_nbx(p->ep, &rp);
	if (!UCS_PTR_IS_PTR(r)) {
		ucs_status_t st = UCS_PTR_STATUS(r);
		alloc_free(f);
		done(arg, st == UCS_OK ? 0 : ERR_IO);
	}
	return 0;
}

#else /* no UCX at build time */

struct ucx { int unused; };
struct ucx_worker { int unused; };

bool ucx_available(void) { return false; }

ucx *ucx_create(const char *ib_devices, char err[ERR_LEN])
{
	(void)ib_devices;
	err_set(err, ERR_UNSUPPORTED, "this pdserve was built without UCX (install libucx-dev and rebuild)");
	return NULL;
}

void ucx_destroy(ucx *u) { (void)u; }
const char *ucx_describe(ucx *u) { (void)u; return "UCX unavailable"; }
bool ucx_fences(ucx *u) { (void)u; return false; }
ucx_worker *ucx_worker_open(ucx *u, char err[ERR_LEN])
{
	(void)u;
	err_set(err, ERR_UNSUPPORTED, "built without UCX");
	return NULL;
}
void ucx_worker_close(ucx_worker *w) { (void)w; }
int ucx_worker_fd(ucx_worker *w) { (void)w; return -1; }
void ucx_worker_progress(ucx_worker *w) { (void)w; }
void ucx_worker_blob(ucx_worker *w, const void **blob, size_t *len) { (void)w; *blob = NULL; *len = 0; }
void *ucx_alloc(ucx *u, size_t bytes, ucx_mem **out, char err[ERR_LEN])
{
	(void)u; (void)bytes; *out = NULL;
	err_set(err, ERR_UNSUPPORTED, "built without UCX");
	return NULL;
}
int ucx_register(ucx *u, void *addr, size_t bytes, ucx_mem **out, char err[ERR_LEN])
{
	(void)u; (void)addr; (void)bytes; *out = NULL;
	return err_set(err, ERR_UNSUPPORTED, "built without UCX");
}
void ucx_mem_release(ucx *u, ucx_mem *m) { (void)u; (void)m; }
int ucx_rkey(ucx *u, ucx_mem *m, const void **blob, size_t *len) { (void)u; (void)m; *blob = NULL; *len = 0; return ERR_UNSUPPORTED; }
ucx_peer *ucx_connect(ucx *u, const void *addr, size_t addr_len, const void *rkey, size_t rkey_len,
		      uint64_t remote_base, uint64_t remote_bytes, char err[ERR_LEN])
{
	(void)u; (void)addr; (void)addr_len; (void)rkey; (void)rkey_len; (void)remote_base; (void)remote_bytes;
	err_set(err, ERR_UNSUPPORTED, "built without UCX");
	return NULL;
}
void ucx_peer_close(ucx_peer *p) { (void)p; }
int ucx_peer_fd(ucx_peer *p) { (void)p; return -1; }
void ucx_peer_progress(ucx_peer *p) { (void)p; }
bool ucx_peer_failed(const ucx_peer *p) { (void)p; return true; }
int ucx_put(ucx_peer *p, const void *src, ucx_mem *m, uint64_t off, size_t len)
{
	(void)p; (void)src; (void)m; (void)off; (void)len;
	return ERR_UNSUPPORTED;
}
int ucx_flush(ucx_peer *p, void (*done)(void *arg, int status), void *arg)
{
	(void)p; (void)done; (void)arg;
	return ERR_UNSUPPORTED;
}

#endif
