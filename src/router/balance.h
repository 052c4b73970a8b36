/* balance.h - the router's load-balancing policies: which of the candidate
 * workers gets the next request.
 *
 *   random         uniform over the candidates
 *   round_robin    candidates in turn (a counter modulo their number, so with
 *                  a fixed set each gets exactly every n-th request)
 *   power_of_two   two distinct candidates drawn at random, the lower load wins
 *   cache_aware    SGLang's: an approximate prefix tree of request text per
 *                  worker; the worker whose tree shares the longest prefix
 *                  with the request gets it when the match covers more than
 *                  cache_threshold of the text, else the worker with the
 *                  smallest tree; but when loads are imbalanced, i.e.
 *                  (max - min) > balance_abs_threshold AND
 *                  max > balance_rel_threshold * min, the least loaded
 *                  worker (shortest queue). Either way the request's text is
 *                  inserted into the chosen worker's tree.
 *
 * The caller (router.c) passes the routable workers as candidates, each
 * with a stable id and its current load (in-flight requests); ids outlive
 * calls so trees can be kept per worker. Not thread-safe: one event loop
 * owns a balance.
 */
#ifndef PDSERVE_ROUTER_BALANCE_H
#define PDSERVE_ROUTER_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum { BALANCE_RANDOM, BALANCE_ROUND_ROBIN, BALANCE_POWER_OF_TWO, BALANCE_CACHE_AWARE } balance_policy;

/* "random" | "round_robin" | "power_of_two" | "cache_aware"; -1 if unknown. */
int balance_policy_parse(const char *s);
const char *balance_policy_name(balance_policy p);

typedef struct {
	balance_policy policy;
	double cache_threshold;       /* 0..1, SGLang default 0.3 */
	int balance_abs_threshold;    /* default 64 */
	double balance_rel_threshold; /* default 1.5 */
	size_t max_tree_size;         /* characters per worker tree before LRU eviction; default 1 << 26 */
} balance_config;

/* SGLang's defaults for the given policy. */
balance_config balance_config_default(balance_policy p);

typedef struct {
	int id;   /* the worker's stable id */
	int load; /* in-flight requests (>= 0) */
} balance_cand;

/* Why a pick was made (for metrics and logs). */
typedef struct {
	bool imbalanced;   /* cache_aware fell back to the shortest queue */
	bool cache_hit;    /* cache_aware: match rate above the threshold */
	double match_rate; /* cache_aware: best matched characters / text characters */
} balance_why;

typedef struct balance balance;

/* NULL when out of memory. seed makes random choices reproducible. */
balance *balance_create(const balance_config *cfg, uint64_t seed);
void balance_destroy(balance *b); /* NULL is fine */

/* Index into cand[0..n) of the chosen worker, or -1 when n == 0. text
   (borrowed, len bytes, UTF-8; may be NULL) is the request's prompt text;
   only cache_aware reads it. why may be NULL. ERR_NOMEM when cache_aware
   cannot grow a tree: the pick is still made (index returned via *out). */
int balance_pick(balance *b, const balance_cand *cand, int n, const char *text, size_t len, int *out,
		 balance_why *why);

/* A worker left: drop its tree. */
void balance_forget(balance *b, int id);

/* Trim every tree to max_tree_size characters, least recently used leaves
   first (the router calls this every eviction interval). */
void balance_evict(balance *b);

/* Empty every tree (after /flush_cache). */
void balance_clear(balance *b);

/* Characters held in worker id's tree (0 when it has none). */
size_t balance_tree_chars(const balance *b, int id);

/* Tree invariants (sizes add up, labels non-empty, children distinct by
   first byte, parents linked). 0 or ERR_INVAL with err. */
int balance_check(const balance *b, char err[ERR_LEN]);

#endif
