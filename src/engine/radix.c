/* radix.c - page-granular prefix tree over token ids.
 *
 * Design: every edge is exactly one page of tokens, so a node is "page p
 * holds tokens T[k*ps .. (k+1)*ps) given the path above". Making edges whole
 * pages (rather than compressing arbitrary token runs as SGLang's radix tree
 * does) means a match never ends inside a page, so a request reusing a
 * prefix starts computing at a page boundary in a fresh page of its own and
 * never writes into a shared page. Children are a small array searched
 * linearly (by first token, then memcmp).
 *
 * Node life:
 *
 *   radix_insert --> IN TREE (tree ref on page) --radix_evict / radix_clear--> freed
 *                      |  ^
 *          radix_match |  | kvcache_release by the request
 *                      v  |
 *                 SHARED (refcount > 1: not evictable)
 *
 * Eviction picks leaves whose page refcount is 1 (only the tree holds it),
 * oldest last_use first; removing a leaf can make its parent a candidate,
 * so it repeats until enough pages are freed or nothing is left.
 *
 * Invariants: a node's page has refcount >= 1 and is referenced by the tree
 * exactly once; siblings have different token pages; n_nodes counts every
 * node but the root.
 */
#include "engine/radix.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

typedef struct node {
	struct node *parent;
	struct node **child;
	int n_child, cap_child;
	int32_t page;     /* -1 for the root */
	int32_t *tokens;  /* [page_size], owned; NULL for the root */
	uint64_t last_use;
} node;

struct radix {
	kvcache *kc;
	int ps;
	node root;
	int n_nodes;
	uint64_t tick;
};

radix *radix_create(kvcache *kc, char err[ERR_LEN])
{
	radix *rc = alloc_zeroed(1, sizeof(*rc));
	if (!rc) {
		err_set(err, ERR_NOMEM, "out of memory creating the prefix cache");
		return NULL;
	}
	rc->kc = kc;
	rc->ps = kvcache_page_size(kc);
	rc->root.page = -1;
	return rc;
}

static void free_subtree(radix *rc, node *n)
{
	for (int i = 0; i < n->n_child; i++) {
		node *c = n->child[i];
		free_subtree(rc, c);
		kvcache_release(rc->kc, &c->page, 1);
		alloc_free(c->tokens);
		alloc_free(c);
	}
	alloc_free(n->child);
	n->child = NULL;
	n->n_child = n->cap_child = 0;
}

void radix_clear(radix *rc)
{
	free_subtree(rc, &rc->root);
	rc->n_nodes = 0;
}

void radix_destroy(radix *rc)
{
	if (!rc)
		return;
	radix_clear(rc);
	alloc_free(rc);
}

static node *find_child(const radix *rc, const node *n, const int32_t *toks)
{
	for (int i = 0; i < n->n_child; i++) {
		node *c = n->child[i];
		if (c->tokens[0] == toks[0] && !memcmp(c->tokens, toks, sizeof(int32_t) * (size_t)rc->ps))
			return c;
	}
	return NULL;
}

int radix_match_len(const radix *rc, const int32_t *tokens, int n, int max_pages)
{
	const node *cur = &rc->root;
	int k = 0;
	while (k < max_pages && (k + 1) * rc->ps <= n) {
		const node *c = find_child(rc, cur, tokens + (size_t)k * rc->ps);
		if (!c)
			break;
		cur = c;
		k++;
	}
	return k;
}

int radix_match(radix *rc, const int32_t *tokens, int n, int max_pages, int32_t *out)
{
	node *cur = &rc->root;
	int k = 0;
	rc->tick++;
	while (k < max_pages && (k + 1) * rc->ps <= n) {
		node *c = find_child(rc, cur, tokens + (size_t)k * rc->ps);
		if (!c)
			break;
		c->last_use = rc->tick;
		kvcache_ref(rc->kc, c->page);
		out[k++] = c->page;
		cur = c;
	}
	return k;
}

static node *add_child(radix *rc, node *parent, const int32_t *toks, int32_t page)
{
	if (parent->n_child == parent->cap_child) {
		int cap = parent->cap_child ? parent->cap_child * 2 : 4;
		node **nc = alloc_resize_array(parent->child, (size_t)cap, sizeof(node *));
		if (!nc)
			return NULL;
		parent->child = nc;
		parent->cap_child = cap;
	}
	node *c = alloc_zeroed(1, sizeof(*c));
	int32_t *t = alloc_array((size_t)rc->ps, sizeof(int32_t));
	if (!c || !t) {
		alloc_free(c);
		alloc_free(t);
		return NULL;
	}
	memcpy(t, toks, sizeof(int32_t) * (size_t)rc->ps);
	c->tokens = t;
	c->page = page;
	c->parent = parent;
	c->last_use = rc->tick;
	kvcache_ref(rc->kc, page);
	parent->child[parent->n_child++] = c;
	rc->n_nodes++;
	return c;
}

int radix_insert(radix *rc, const int32_t *tokens, int n_pages, const int32_t *pages)
{
	node *cur = &rc->root;
	int added = 0;
	rc->tick++;
	for (int k = 0; k < n_pages; k++) {
		const int32_t *toks = tokens + (size_t)k * rc->ps;
		node *c = find_child(rc, cur, toks);
		if (!c) {
			c = add_child(rc, cur, toks, pages[k]);
			if (!c)
				break;
			added++;
		}
		c->last_use = rc->tick;
		cur = c;
	}
	return added;
}

/* Collect evictable leaves into out (grown as needed). */
static void collect_leaves(const radix *rc, node *n, node ***out, int *cnt, int *cap)
{
	for (int i = 0; i < n->n_child; i++) {
		node *c = n->child[i];
		if (c->n_child)
			collect_leaves(rc, c, out, cnt, cap);
		else if (kvcache_refcount(rc->kc, c->page) == 1) {
			if (*cnt == *cap) {
				int nc = *cap ? *cap * 2 : 64;
				node **grown = alloc_resize_array(*out, (size_t)nc, sizeof(node *));
				if (!grown)
					return;
				*out = grown;
				*cap = nc;
			}
			(*out)[(*cnt)++] = c;
		}
	}
}

/* Min-heap of candidate leaves by last_use. */
static void heap_push(node **h, int *n, node *x)
{
	int i = (*n)++;
	while (i > 0) {
		int p = (i - 1) / 2;
		if (h[p]->last_use <= x->last_use)
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = x;
}

static node *heap_pop(node **h, int *n)
{
	node *top = h[0], *x = h[--(*n)];
	int i = 0;
	for (;;) {
		int c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && h[c + 1]->last_use < h[c]->last_use)
			c++;
		if (x->last_use <= h[c]->last_use)
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = x;
	return top;
}

/* Unlink leaf c from its parent and free it; returns the parent. */
static node *remove_leaf(radix *rc, node *c)
{
	node *p = c->parent;
	for (int i = 0; i < p->n_child; i++)
		if (p->child[i] == c) {
			p->child[i] = p->child[--p->n_child];
			break;
		}
	kvcache_release(rc->kc, &c->page, 1);
	alloc_free(c->child); /* a leaf may keep the array of children it once had */
	alloc_free(c->tokens);
	alloc_free(c);
	rc->n_nodes--;
	return p;
}

/* Evict leaves one at a time, oldest first; a parent left childless and
   held only by the tree joins the candidates, so a cold chain goes before a
   warmer leaf elsewhere (true LRU over evictable nodes). */
int radix_evict(radix *rc, int n)
{
	int freed = 0, cnt = 0, cap = 0;
	node **heap = NULL;
	collect_leaves(rc, &rc->root, &heap, &cnt, &cap);
	/* heapify what collect_leaves gathered */
	node **arr = heap;
	int m = cnt;
	cnt = 0;
	for (int i = 0; i < m; i++)
		heap_push(arr, &cnt, arr[i]);
	while (freed < n && cnt > 0) {
		node *p = remove_leaf(rc, heap_pop(heap, &cnt));
		freed++;
		if (p != &rc->root && p->n_child == 0 && kvcache_refcount(rc->kc, p->page) == 1)
			heap_push(heap, &cnt, p); /* reuses the slot just popped */
	}
	alloc_free(heap);
	return freed;
}

/* Pages of subtree n that eviction could free: a node counts when its page
   is held only by the tree and its whole subtree is freeable too. Returns
   the count; *all_free tells the parent whether n itself can go. */
static int count_evictable(const radix *rc, const node *n, int *all_free)
{
	int total = 0, every = 1;
	for (int i = 0; i < n->n_child; i++) {
		int f;
		total += count_evictable(rc, n->child[i], &f);
		every &= f;
	}
	if (n->page >= 0 && every && kvcache_refcount(rc->kc, n->page) == 1) {
		*all_free = 1;
		return total + 1;
	}
	*all_free = 0;
	return total;
}

int radix_evictable(const radix *rc)
{
	int f;
	return count_evictable(rc, &rc->root, &f);
}

int radix_n_pages(const radix *rc)
{
	return rc->n_nodes;
}

static int check_node(const radix *rc, const node *n, int *count, char *err)
{
	for (int i = 0; i < n->n_child; i++) {
		const node *c = n->child[i];
		if (c->parent != n)
			return err_set(err, ERR_INVAL, "node with page %d: wrong parent", c->page);
		if (c->page < 0 || c->page >= kvcache_n_pages(rc->kc) || kvcache_refcount(rc->kc, c->page) < 1)
			return err_set(err, ERR_INVAL, "node page %d has no reference", c->page);
		for (int j = 0; j < i; j++)
			if (!memcmp(n->child[j]->tokens, c->tokens, sizeof(int32_t) * (size_t)rc->ps))
				return err_set(err, ERR_INVAL, "two children with the same tokens (pages %d, %d)",
					       n->child[j]->page, c->page);
		(*count)++;
		int rc2 = check_node(rc, c, count, err);
		if (rc2 < 0)
			return rc2;
	}
	return 0;
}

int radix_check(const radix *rc, char err[ERR_LEN])
{
	int count = 0;
	int r = check_node(rc, &rc->root, &count, err);
	if (r < 0)
		return r;
	if (count != rc->n_nodes)
		return err_set(err, ERR_INVAL, "%d nodes counted, %d recorded", count, rc->n_nodes);
	return 0;
}
