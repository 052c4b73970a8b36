/* kvcache.h - the paged KV pool of one model: memory and a page allocator.
 *
 * The pool holds n_pages pages per layer for K and for V; a page holds
 * page_size consecutive positions of one sequence (layout in model/llama.h,
 * llama_kv). Pages are refcounted so several sequences can share a prefix:
 * kvcache_alloc hands out pages with refcount 1, kvcache_ref adds a holder,
 * kvcache_release drops one and returns the page to the free list at 0.
 * Pages come back in LIFO order (recently freed memory is warm).
 *
 * Not thread-safe: the engine's scheduler thread owns it.
 */
#ifndef PDSERVE_ENGINE_KVCACHE_H
#define PDSERVE_ENGINE_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "model/llama.h"

typedef struct {
	int dtype;      /* QTYPE_F32 / QTYPE_F16 / QTYPE_BF16 */
	int page_size;  /* positions per page, >= 1 */
	int n_pages;    /* >= 1 */
	bool shared;    /* back the pool with a memfd another process can map (shm transfer) */
	/* Or take the region from a transfer library (UCX registers what it
	   allocates); NULL = mmap. release gets back what alloc returned. */
	void *(*alloc)(void *arg, size_t bytes);
	void (*release)(void *arg, void *p, size_t bytes);
	void *alloc_arg;
} kvcache_config;

typedef struct kvcache kvcache;

/* Allocate the pool for a model's shape. NULL on failure with err. */
kvcache *kvcache_create(const llama_hparams *hp, const kvcache_config *cfg, char err[ERR_LEN]);
void kvcache_destroy(kvcache *kc); /* NULL is fine */

/* View for llama_forward (valid until destroy). */
const llama_kv *kvcache_view(const kvcache *kc);

/* Take n free pages into out[0..n). 0, or ERR_FULL with nothing taken. */
int kvcache_alloc(kvcache *kc, int n, int32_t *out);
void kvcache_ref(kvcache *kc, int32_t page);
/* Drop one reference of each page; pages reaching 0 are free again. */
void kvcache_release(kvcache *kc, const int32_t *pages, int n);

int kvcache_n_free(const kvcache *kc);
int kvcache_n_pages(const kvcache *kc);
int kvcache_page_size(const kvcache *kc);
int kvcache_refcount(const kvcache *kc, int32_t page);
/* Pages needed for n_tokens positions. */
int kvcache_pages_for(const kvcache *kc, int n_tokens);
/* Total bytes of K and V memory. */
size_t kvcache_bytes(const kvcache *kc);

/* Memory layout: one region of kvcache_bytes() bytes; layer l's K starts at
   offset (2l) * layer_bytes and its V at (2l + 1) * layer_bytes, each
   [n_pages][page_bytes]. A page of one layer's K (or V) is page_bytes long. */
void *kvcache_base(const kvcache *kc);
size_t kvcache_page_bytes(const kvcache *kc);
size_t kvcache_layer_bytes(const kvcache *kc);
int kvcache_n_layer(const kvcache *kc);
/* The memfd of a shared pool (borrowed), or -1. */
int kvcache_shm_fd(const kvcache *kc);

/* Consistency check for tests and debug builds: free list and refcounts agree.
   0 or ERR_INVAL with a message. */
int kvcache_check(const kvcache *kc, char err[ERR_LEN]);

#endif
