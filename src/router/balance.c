/* balance.c - load-balancing policies, and the approximate prefix trees of
 * cache_aware (semantics in balance.h).
 *
 * cache_aware keeps one radix tree of request text per worker: what the
 * router has sent there recently, a guess at what that worker's prefix
 * cache holds (it never asks the worker). SGLang keeps one shared tree with
 * a tenant set per node; one tree per worker gives the same answers
 * (longest match per worker, tree size per worker) with simpler code, at
 * the cost of matching the text once per candidate - a few microseconds
 * for the handful of workers one router fronts.
 *
 * Tree: edges carry byte strings; children of a node differ in their first
 * byte; every node has a stamp from a logical clock, bumped along the path
 * on insert, so the least recently used leaves are evicted first. Sizes are
 * counted in UTF-8 characters (bytes that are not continuation bytes) as
 * SGLang counts chars; a split inside a multi-byte character keeps the sum
 * right because each character's lead byte lives in exactly one node.
 *
 * Invariant: tree->chars == the sum of node->chars over all nodes; the root
 * has an empty label; no other node does.
 *
 * Left out: SGLang's per-model trees (one model per router here) and its
 * background eviction thread (the router calls balance_evict on a timer in
 * its loop).
 */
#include "router/balance.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

typedef struct tnode tnode;
struct tnode {
	tnode *parent;
	tnode **kids;
	int n_kids, cap_kids;
	char *label; /* [len], not NUL-terminated; NULL for the root */
	size_t len;
	size_t chars;
	uint64_t stamp;
};

typedef struct {
	int id;
	tnode root;
	size_t chars;
	size_t n_nodes;
} tree;

struct balance {
	balance_config cfg;
	uint64_t rng;
	uint64_t rr;
	uint64_t clock;
	tree **trees;
	int n_trees, cap_trees;
};

int balance_policy_parse(const char *s)
{
	if (!s)
		return -1;
	if (!strcmp(s, "random"))
		return BALANCE_RANDOM;
	if (!strcmp(s, "round_robin"))
		return BALANCE_ROUND_ROBIN;
	if (!strcmp(s, "power_of_two"))
		return BALANCE_POWER_OF_TWO;
	if (!strcmp(s, "cache_aware"))
		return BALANCE_CACHE_AWARE;
	return -1;
}

const char *balance_policy_name(balance_policy p)
{
	switch (p) {
	case BALANCE_RANDOM: return "random";
	case BALANCE_ROUND_ROBIN: return "round_robin";
	case BALANCE_POWER_OF_TWO: return "power_of_two";
	case BALANCE_CACHE_AWARE: return "cache_aware";
	}
	return "?";
}

balance_config balance_config_default(balance_policy p)
{
	return (balance_config){ .policy = p,
				 .cache_threshold = 0.3,
				 .balance_abs_threshold = 64,
				 .balance_rel_threshold = 1.5,
				 .max_tree_size = (size_t)1 << 26 };
}

static uint64_t rng_next(balance *b)
{
	/* splitmix64: good enough for picking workers, and seedable for tests */
	uint64_t z = (b->rng += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static size_t utf8_chars(const char *s, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)s[i] & 0xC0) != 0x80;
	return c;
}

/* ---------------------------------------------------------------- trees */

static void node_free_kids(tnode *n)
{
	for (int i = 0; i < n->n_kids; i++) {
		node_free_kids(n->kids[i]);
		alloc_free(n->kids[i]->label);
		alloc_free(n->kids[i]);
	}
	alloc_free(n->kids);
	n->kids = NULL;
	n->n_kids = n->cap_kids = 0;
}

static void tree_free(tree *t)
{
	if (!t)
		return;
	node_free_kids(&t->root);
	alloc_free(t);
}

static tnode *kid_by_byte(const tnode *n, unsigned char c)
{
	for (int i = 0; i < n->n_kids; i++)
		if ((unsigned char)n->kids[i]->label[0] == c)
			return n->kids[i];
	return NULL;
}

static int kid_add(tnode *n, tnode *k)
{
	if (n->n_kids == n->cap_kids) {
		int cap = n->cap_kids ? 2 * n->cap_kids : 2;
		tnode **grown = alloc_resize_array(n->kids, (size_t)cap, sizeof(*grown));
		if (!grown)
			return ERR_NOMEM;
		n->kids = grown;
		n->cap_kids = cap;
	}
	n->kids[n->n_kids++] = k;
	k->parent = n;
	return 0;
}

static void kid_remove(tnode *n, tnode *k)
{
	for (int i = 0; i < n->n_kids; i++)
		if (n->kids[i] == k) {
			n->kids[i] = n->kids[--n->n_kids];
			return;
		}
}

/* Characters of text[0..len) matched by t, and the stamp of the deepest
   node reached. */
static size_t tree_match(const tree *t, const char *text, size_t len, uint64_t *stamp)
{
	const tnode *n = &t->root;
	size_t i = 0, chars = 0;
	*stamp = 0;
	while (i < len) {
		const tnode *k = kid_by_byte(n, (unsigned char)text[i]);
		if (!k)
			break;
		size_t j = 0;
		while (j < k->len && i + j < len && k->label[j] == text[i + j])
			j++;
		chars += utf8_chars(text + i, j);
		i += j;
		*stamp = k->stamp;
		if (j < k->len)
			break;
		n = k;
	}
	return chars;
}

static tnode *node_new(const char *label, size_t len, uint64_t stamp)
{
	tnode *k = alloc_zeroed(1, sizeof(*k));
	if (!k)
		return NULL;
	if (!(k->label = alloc_bytes(len))) {
		alloc_free(k);
		return NULL;
	}
	memcpy(k->label, label, len);
	k->len = len;
	k->chars = utf8_chars(label, len);
	k->stamp = stamp;
	return k;
}

/* Insert text; every node on its path gets the stamp. On ERR_NOMEM the
   tree is unchanged past the point reached (still consistent). */
static int tree_insert(tree *t, const char *text, size_t len, uint64_t stamp)
{
	tnode *n = &t->root;
	size_t i = 0;
	n->stamp = stamp;
	while (i < len) {
		tnode *k = kid_by_byte(n, (unsigned char)text[i]);
		if (!k) {
			tnode *leaf = node_new(text + i, len - i, stamp);
			if (!leaf)
				return ERR_NOMEM;
			if (kid_add(n, leaf) < 0) {
				alloc_free(leaf->label);
				alloc_free(leaf);
				return ERR_NOMEM;
			}
			t->chars += leaf->chars;
			t->n_nodes++;
			return 0;
		}
		size_t j = 0;
		while (j < k->len && i + j < len && k->label[j] == text[i + j])
			j++;
		if (j < k->len) {
			/* split k at j: n -> mid(label[0..j)) -> k(label[j..)) */
			tnode *mid = node_new(k->label, j, stamp);
			char *rest = mid ? alloc_bytes(k->len - j) : NULL;
			if (!mid || !rest) {
				if (mid) {
					alloc_free(mid->label);
					alloc_free(mid);
				}
				return ERR_NOMEM;
			}
			if (kid_add(mid, k) < 0) {
				alloc_free(rest);
				alloc_free(mid->label);
				alloc_free(mid);
				return ERR_NOMEM;
			}
			memcpy(rest, k->label + j, k->len - j);
			alloc_free(k->label);
			k->label = rest;
			k->len -= j;
			k->chars -= mid->chars;
			for (int q = 0; q < n->n_kids; q++)
				if (n->kids[q] == k)
					n->kids[q] = mid;
			mid->parent = n;
			t->n_nodes++;
			k = mid;
		}
		k->stamp = stamp;
		i += j;
		n = k;
	}
	return 0;
}

static tree *tree_get(balance *b, int id, bool create)
{
	for (int i = 0; i < b->n_trees; i++)
		if (b->trees[i]->id == id)
			return b->trees[i];
	if (!create)
		return NULL;
	if (b->n_trees == b->cap_trees) {
		int cap = b->cap_trees ? 2 * b->cap_trees : 4;
		tree **grown = alloc_resize_array(b->trees, (size_t)cap, sizeof(*grown));
		if (!grown)
			return NULL;
		b->trees = grown;
		b->cap_trees = cap;
	}
	tree *t = alloc_zeroed(1, sizeof(*t));
	if (!t)
		return NULL;
	t->id = id;
	b->trees[b->n_trees++] = t;
	return t;
}

static void collect_leaves(tnode *n, tnode **out, size_t *k)
{
	for (int i = 0; i < n->n_kids; i++) {
		tnode *c = n->kids[i];
		if (c->n_kids == 0)
			out[(*k)++] = c;
		else
			collect_leaves(c, out, k);
	}
}

static int by_stamp(const void *a, const void *b)
{
	uint64_t x = (*(tnode *const *)a)->stamp, y = (*(tnode *const *)b)->stamp;
	return x < y ? -1 : x > y;
}

static void tree_evict(tree *t, size_t max_chars)
{
	while (t->chars > max_chars && t->n_nodes > 0) {
		tnode **leaves = alloc_array(t->n_nodes, sizeof(*leaves));
		if (!leaves)
			return; /* try again at the next interval */
		size_t n = 0;
		collect_leaves(&t->root, leaves, &n);
		qsort(leaves, n, sizeof(*leaves), by_stamp);
		for (size_t i = 0; i < n && t->chars > max_chars; i++) {
			tnode *l = leaves[i];
			kid_remove(l->parent, l);
			t->chars -= l->chars;
			t->n_nodes--;
			alloc_free(l->kids);
			alloc_free(l->label);
			alloc_free(l);
		}
		alloc_free(leaves);
	}
}

/* ---------------------------------------------------------------- policies */

balance *balance_create(const balance_config *cfg, uint64_t seed)
{
	balance *b = alloc_zeroed(1, sizeof(*b));
	if (!b)
		return NULL;
	b->cfg = *cfg;
	b->rng = seed;
	return b;
}

void balance_destroy(balance *b)
{
	if (!b)
		return;
	for (int i = 0; i < b->n_trees; i++)
		tree_free(b->trees[i]);
	alloc_free(b->trees);
	alloc_free(b);
}

static int least_loaded(const balance_cand *c, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (c[i].load < c[best].load)
			best = i;
	return best;
}

static int pick_cache_aware(balance *b, const balance_cand *c, int n, const char *text, size_t len,
			    balance_why *why)
{
	int lo = c[0].load, hi = c[0].load;
	for (int i = 1; i < n; i++) {
		lo = c[i].load < lo ? c[i].load : lo;
		hi = c[i].load > hi ? c[i].load : hi;
	}
	if (hi - lo > b->cfg.balance_abs_threshold && (double)hi > (double)lo * b->cfg.balance_rel_threshold) {
		why->imbalanced = true;
		return least_loaded(c, n);
	}
	size_t text_chars = text ? utf8_chars(text, len) : 0;
	int best = -1;
	size_t best_chars = 0;
	uint64_t best_stamp = 0;
	for (int i = 0; i < n && text_chars; i++) {
		tree *t = tree_get(b, c[i].id, false);
		if (!t)
			continue;
		uint64_t stamp;
		size_t m = tree_match(t, text, len, &stamp);
		if (m > best_chars || (m == best_chars && m > 0 && stamp > best_stamp)) {
			best = i;
			best_chars = m;
			best_stamp = stamp;
		}
	}
	why->match_rate = text_chars ? (double)best_chars / (double)text_chars : 0;
	if (best >= 0 && why->match_rate > b->cfg.cache_threshold) {
		why->cache_hit = true;
		return best;
	}
	/* the most room: the smallest tree; ties to the lower load, then the first */
	int small = 0;
	size_t small_chars = balance_tree_chars(b, c[0].id);
	for (int i = 1; i < n; i++) {
		size_t ch = balance_tree_chars(b, c[i].id);
		if (ch < small_chars || (ch == small_chars && c[i].load < c[small].load)) {
			small = i;
			small_chars = ch;
		}
	}
	return small;
}

int balance_pick(balance *b, const balance_cand *cand, int n, const char *text, size_t len, int *out,
		 balance_why *why)
{
	balance_why dummy;
	if (!why)
		why = &dummy;
	memset(why, 0, sizeof(*why));
	*out = -1;
	if (n <= 0)
		return 0;
	int pick = 0;
	switch (b->cfg.policy) {
	case BALANCE_RANDOM:
		pick = (int)(rng_next(b) % (uint64_t)n);
		break;
	case BALANCE_ROUND_ROBIN:
		pick = (int)(b->rr++ % (uint64_t)n);
		break;
	case BALANCE_POWER_OF_TWO:
		if (n > 1) {
			int a = (int)(rng_next(b) % (uint64_t)n);
			int o = (int)(rng_next(b) % (uint64_t)(n - 1));
			o += o >= a;
			pick = cand[o].load < cand[a].load ? o : a;
		}
		break;
	case BALANCE_CACHE_AWARE:
		pick = pick_cache_aware(b, cand, n, text, len, why);
		break;
	}
	*out = pick;
	if (b->cfg.policy == BALANCE_CACHE_AWARE && text && len) {
		tree *t = tree_get(b, cand[pick].id, true);
		if (!t || tree_insert(t, text, len, ++b->clock) < 0)
			return ERR_NOMEM;
	}
	return 0;
}

void balance_forget(balance *b, int id)
{
	for (int i = 0; i < b->n_trees; i++)
		if (b->trees[i]->id == id) {
			tree_free(b->trees[i]);
			b->trees[i] = b->trees[--b->n_trees];
			return;
		}
}

void balance_evict(balance *b)
{
	for (int i = 0; i < b->n_trees; i++)
		tree_evict(b->trees[i], b->cfg.max_tree_size);
}

void balance_clear(balance *b)
{
	for (int i = 0; i < b->n_trees; i++)
		tree_free(b->trees[i]);
	b->n_trees = 0;
}

size_t balance_tree_chars(const balance *b, int id)
{
	for (int i = 0; i < b->n_trees; i++)
		if (b->trees[i]->id == id)
			return b->trees[i]->chars;
	return 0;
}

static int node_check(const tnode *n, size_t *chars, size_t *nodes, char err[ERR_LEN])
{
	for (int i = 0; i < n->n_kids; i++) {
		const tnode *k = n->kids[i];
		if (k->parent != n)
			return err_set(err, ERR_INVAL, "node %p: wrong parent", (const void *)k);
		if (!k->len || !k->label)
			return err_set(err, ERR_INVAL, "node %p: empty label", (const void *)k);
		if (k->chars != utf8_chars(k->label, k->len))
			return err_set(err, ERR_INVAL, "node %p: %zu chars recorded, %zu in the label", (const void *)k,
				       k->chars, utf8_chars(k->label, k->len));
		for (int j = 0; j < i; j++)
			if (n->kids[j]->label[0] == k->label[0])
				return err_set(err, ERR_INVAL, "two children start with byte %d", (unsigned char)k->label[0]);
		*chars += k->chars;
		(*nodes)++;
		int rc = node_check(k, chars, nodes, err);
		if (rc)
			return rc;
	}
	return 0;
}

int balance_check(const balance *b, char err[ERR_LEN])
{
	for (int i = 0; i < b->n_trees; i++) {
		const tree *t = b->trees[i];
		size_t chars = 0, nodes = 0;
		int rc = node_check(&t->root, &chars, &nodes, err);
		if (rc)
			return rc;
		if (chars != t->chars || nodes != t->n_nodes)
			return err_set(err, ERR_INVAL, "tree of worker %d: %zu chars / %zu nodes recorded, %zu / %zu found",
				       t->id, t->chars, t->n_nodes, chars, nodes);
	}
	return 0;
}
