/* radix.h - prefix cache (RadixAttention) over token ids at page granularity.
 *
 * A tree whose edges are whole KV pages: a node stands for one page of
 * page_size tokens, following its parent's tokens; it records the page id
 * that holds their K/V. A request whose prompt starts with the tokens of a
 * path reuses those pages instead of computing them.
 *
 * Page references: the tree holds one kvcache reference on each page it
 * records. radix_match gives the caller one more reference per matched page
 * (released with kvcache_release like any other). A page is evictable when
 * its node is a leaf and the tree's is the only reference left; radix_evict
 * frees least-recently-used evictable leaves first.
 *
 * Not thread-safe: owned by the engine's scheduler thread.
 */
#ifndef PDSERVE_ENGINE_RADIX_H
#define PDSERVE_ENGINE_RADIX_H

#include <stdint.h>

#include "base/err.h"
#include "engine/kvcache.h"

typedef struct radix radix;

/* kc is borrowed and must outlive the tree. NULL on failure with err. */
radix *radix_create(kvcache *kc, char err[ERR_LEN]);
/* Drops the tree's references (pages free unless requests still hold them). */
void radix_destroy(radix *rc);

/* Longest cached prefix of tokens[0..n) in whole pages, at most max_pages.
   Writes the pages to out[] and takes one reference on each for the
   caller. Returns the number of pages matched (0..max_pages). */
int radix_match(radix *rc, const int32_t *tokens, int n, int max_pages, int32_t *out);
/* Like radix_match but only counts (no references, no LRU update). */
int radix_match_len(const radix *rc, const int32_t *tokens, int n, int max_pages);

/* Record that pages[0..n_pages) hold the K/V of tokens[0..n_pages*page_size).
   Pages already in the tree for the same tokens are kept (the caller's
   copies are left alone); new ones get a tree reference. Best effort: on
   allocation failure it stops early. Returns the number of pages added. */
int radix_insert(radix *rc, const int32_t *tokens, int n_pages, const int32_t *pages);

/* Free up to n pages by evicting least-recently-used evictable leaves.
   Returns how many pages were freed. */
int radix_evict(radix *rc, int n);
/* Pages radix_evict could free now (evictable leaves and the chains above
   them that only the tree holds). */
int radix_evictable(const radix *rc);
/* Pages the tree references. */
int radix_n_pages(const radix *rc);
/* Drop every node (flush_cache). */
void radix_clear(radix *rc);

/* Invariants: every node's page has refcount >= 1, child tokens differ,
   counts agree. 0 or ERR_INVAL with err. */
int radix_check(const radix *rc, char err[ERR_LEN]);

#endif
