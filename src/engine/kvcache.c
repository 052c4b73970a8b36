/* kvcache.c - paged KV pool: per-layer K/V memory plus a refcounted page allocator.
 *
 * Page states:
 *
 *     FREE --kvcache_alloc--> HELD(1) --kvcache_ref--> HELD(n+1)
 *       ^                        |
 *       +---kvcache_release------+  (when the count reaches 0)
 *
 * The free list is a stack of page ids (free_stack[0..n_free)); refcount[p]
 * is 0 exactly when p is on the stack. Memory is one mmap'd region (K and V
 * of every layer, page-major inside each), so a page's rows for one layer
 * are contiguous and the whole pool can be registered or shared at once:
 * the shm transfer backend maps a memfd-backed pool into the prefill
 * process, RDMA registers it. The region comes from mmap, not alloc.h: it
 * is large, page-aligned and, when shared, must be a file mapping.
 *
 * Invariants: sum over pages of (refcount == 0) == n_free; each free page
 * appears once on the stack. kvcache_check() verifies both.
 */
#include "engine/kvcache.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/log.h"

#define CHECK_PAGE(kc, p) CHECK((p) >= 0 && (p) < (kc)->cfg.n_pages && (kc)->refcount[p] > 0)

struct kvcache {
	kvcache_config cfg;
	int n_layer;
	size_t page_bytes; /* one layer, K or V */
	size_t layer_bytes;
	llama_kv view;
	void *base;        /* the region, kvcache_bytes() long */
	int shm_fd;        /* memfd when shared, else -1 */
	void **k, **v;     /* [n_layer] pointers into base */
	int32_t *refcount; /* [n_pages] */
	int32_t *free_stack;
	int n_free;
};

/* The region: anonymous, or a memfd another process can map. */
static void *pool_map(size_t bytes, bool shared, int *fd, char *err)
{
	*fd = -1;
	void *p;
	if (shared) {
		*fd = memfd_create("pdserve-kv", MFD_CLOEXEC);
		if (*fd < 0 || ftruncate(*fd, (off_t)bytes) < 0) {
			err_set(err, ERR_IO, "kv cache: memfd of %zu bytes: %s", bytes, strerror(errno));
			if (*fd >= 0)
				close(*fd);
			*fd = -1;
			return NULL;
		}
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	} else {
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	}
	if (p == MAP_FAILED) {
		err_set(err, ERR_NOMEM, "kv cache: mmap of %zu bytes: %s", bytes, strerror(errno));
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		return NULL;
	}
	if (bytes >= (2u << 20))
		madvise(p, bytes, MADV_HUGEPAGE); /* advisory: fewer TLB misses when the OS allows */
	return p;
}

kvcache *kvcache_create(const llama_hparams *hp, const kvcache_config *cfg, char err[ERR_LEN])
{
	if (cfg->page_size < 1 || cfg->n_pages < 1) {
		err_set(err, ERR_INVAL, "kv cache: page size %d and page count %d must be >= 1", cfg->page_size,
			cfg->n_pages);
		return NULL;
	}
	size_t page_bytes = llama_kv_page_bytes(hp, cfg->dtype, cfg->page_size);
	if (!page_bytes) {
		err_set(err, ERR_INVAL, "kv cache: unsupported dtype %s (use f32, f16 or bf16)",
			qtype_name(cfg->dtype));
		return NULL;
	}
	size_t layer_bytes, total;
	if (alloc_mul_overflow(page_bytes, (size_t)cfg->n_pages, &layer_bytes) ||
	    alloc_mul_overflow(layer_bytes, 2 * (size_t)hp->n_layer, &total)) {
		err_set(err, ERR_INVAL, "kv cache: %d pages overflow", cfg->n_pages);
		return NULL;
	}
	kvcache *kc = alloc_zeroed(1, sizeof(*kc));
	if (!kc)
		goto nomem;
	kc->cfg = *cfg;
	kc->n_layer = hp->n_layer;
	kc->page_bytes = page_bytes;
	kc->layer_bytes = layer_bytes;
	kc->shm_fd = -1;
	kc->k = alloc_zeroed((size_t)hp->n_layer, sizeof(void *));
	kc->v = alloc_zeroed((size_t)hp->n_layer, sizeof(void *));
	kc->refcount = alloc_zeroed((size_t)cfg->n_pages, sizeof(int32_t));
	kc->free_stack = alloc_array((size_t)cfg->n_pages, sizeof(int32_t));
	if (!kc->k || !kc->v || !kc->refcount || !kc->free_stack)
		goto nomem;
	if (cfg->alloc) {
		kc->base = cfg->alloc(cfg->alloc_arg, total);
		if (!kc->base)
			err_set(err, ERR_NOMEM, "kv cache: the transfer layer could not allocate %zu bytes", total);
	} else {
		kc->base = pool_map(total, cfg->shared, &kc->shm_fd, err);
	}
	if (!kc->base) {
		kvcache_destroy(kc);
		return NULL;
	}
	for (int l = 0; l < hp->n_layer; l++) {
		kc->k[l] = (char *)kc->base + (size_t)(2 * l) * layer_bytes;
		kc->v[l] = (char *)kc->base + (size_t)(2 * l + 1) * layer_bytes;
	}
	/* stack top = page 0 so fresh pools hand out 0, 1, 2, ... */
	for (int i = 0; i < cfg->n_pages; i++)
		kc->free_stack[i] = cfg->n_pages - 1 - i;
	kc->n_free = cfg->n_pages;
	kc->view = (llama_kv){ .dtype = cfg->dtype, .page_size = cfg->page_size, .n_pages = cfg->n_pages,
			       .k = kc->k, .v = kc->v };
	return kc;
nomem:
	err_set(err, ERR_NOMEM, "kv cache: out of memory for %d pages of %zu bytes x %d layers x 2",
		cfg->n_pages, page_bytes, hp->n_layer);
	kvcache_destroy(kc);
	return NULL;
}

void kvcache_destroy(kvcache *kc)
{
	if (!kc)
		return;
	if (kc->base && kc->cfg.alloc)
		kc->cfg.release(kc->cfg.alloc_arg, kc->base, kvcache_bytes(kc));
	else if (kc->base)
		munmap(kc->base, kvcache_bytes(kc));
	if (kc->shm_fd >= 0)
		close(kc->shm_fd);
	alloc_free(kc->k);
	alloc_free(kc->v);
	alloc_free(kc->refcount);
	alloc_free(kc->free_stack);
	alloc_free(kc);
}

const llama_kv *kvcache_view(const kvcache *kc) { return &kc->view; }
int kvcache_n_free(const kvcache *kc) { return kc->n_free; }
int kvcache_n_pages(const kvcache *kc) { return kc->cfg.n_pages; }
int kvcache_page_size(const kvcache *kc) { return kc->cfg.page_size; }
int kvcache_refcount(const kvcache *kc, int32_t page) { return kc->refcount[page]; }

int kvcache_pages_for(const kvcache *kc, int n_tokens)
{
	return (n_tokens + kc->cfg.page_size - 1) / kc->cfg.page_size;
}

size_t kvcache_bytes(const kvcache *kc)
{
	return kc->layer_bytes * (size_t)kc->n_layer * 2;
}

void *kvcache_base(const kvcache *kc) { return kc->base; }
size_t kvcache_page_bytes(const kvcache *kc) { return kc->page_bytes; }
size_t kvcache_layer_bytes(const kvcache *kc) { return kc->layer_bytes; }
int kvcache_n_layer(const kvcache *kc) { return kc->n_layer; }
int kvcache_shm_fd(const kvcache *kc) { return kc->shm_fd; }

int kvcache_alloc(kvcache *kc, int n, int32_t *out)
{
	if (n < 0 || n > kc->n_free)
		return ERR_FULL;
	for (int i = 0; i < n; i++) {
		int32_t p = kc->free_stack[--kc->n_free];
		kc->refcount[p] = 1;
		out[i] = p;
	}
	return 0;
}

void kvcache_ref(kvcache *kc, int32_t page)
{
	CHECK_PAGE(kc, page);
	kc->refcount[page]++;
}

void kvcache_release(kvcache *kc, const int32_t *pages, int n)
{
	for (int i = 0; i < n; i++) {
		int32_t p = pages[i];
		CHECK_PAGE(kc, p);
		if (--kc->refcount[p] == 0)
			kc->free_stack[kc->n_free++] = p;
	}
}

int kvcache_check(const kvcache *kc, char err[ERR_LEN])
{
	int zero = 0;
	for (int p = 0; p < kc->cfg.n_pages; p++) {
		if (kc->refcount[p] < 0)
			return err_set(err, ERR_INVAL, "page %d: refcount %d", p, kc->refcount[p]);
		zero += kc->refcount[p] == 0;
	}
	if (zero != kc->n_free)
		return err_set(err, ERR_INVAL, "%d pages at refcount 0 but %d on the free list", zero, kc->n_free);
	for (int i = 0; i < kc->n_free; i++)
		if (kc->refcount[kc->free_stack[i]] != 0)
			return err_set(err, ERR_INVAL, "free list holds page %d with refcount %d", kc->free_stack[i],
				       kc->refcount[kc->free_stack[i]]);
	return 0;
}
