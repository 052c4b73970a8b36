/* sampler.c - per-request token sampling: penalties, truncation, a seeded draw.
 *
 * Order of operations in sampler_sample(), on a private copy z of the logits:
 *
 *   1. z = logits, with NaN -> -inf and +inf -> FLT_MAX (see "Non-finite").
 *   2. repetition_penalty, for ids in the repetition window:
 *        z > 0 ? z / r : z * r                    (llama.cpp, HF)
 *   3. frequency/presence, for ids generated so far (count c > 0):
 *        z -= frequency_penalty * c + presence_penalty   (OpenAI)
 *   4. logit_bias: z[id] += bias.
 *   5. min_tokens: z[eog] = -inf while n_generated < min_tokens.
 *   6. temperature == 0: return argmax z (lowest id on ties). Done.
 *   7. p = softmax(z / temperature).
 *   8. top_k: keep the k most likely (ties: lower id first).
 *   9. top_p: renormalize over the top-k set; keep the shortest prefix, most
 *      likely first, whose mass reaches top_p.
 *  10. min_p: drop tokens with p < min_p * p_max.
 *  11. One uniform draw from our own stream picks a token by cumulative mass.
 *
 * This is SGLang's order (also vLLM's and HF's): temperature before
 * truncation, penalties and bias before temperature. llama.cpp's default chain
 * differs in two ways: it adds logit_bias before the penalties, and it runs
 * top_k/top_p/min_p before temperature, so at temperature != 1 its top_p and
 * min_p keep different sets than ours. SGLang applies top_k and top_p jointly
 * to the full distribution (its cumsum is not renormalized after top_k); we
 * renormalize after top_k like vLLM, HF and llama.cpp. None of this touches
 * greedy: the argmax survives every truncation, so temperature 0 is exactly
 * argmax of the penalized logits, and without penalties/bias/ban exactly
 * argmax of the raw logits (llama.cpp goldens).
 *
 * Which tokens each penalty counts:
 *   repetition_penalty  the last penalty_last_n accepted tokens, prompt
 *                       included (llama.cpp's repeat_last_n: its server feeds
 *                       the prompt to the sampler; HF penalizes input_ids,
 *                       i.e. prompt + output). -1 = every accepted token,
 *                       0 = off. SGLang today counts generated tokens only.
 *   frequency/presence  every generated token, no window, prompt excluded
 *                       (OpenAI, SGLang, vLLM). llama.cpp instead counts them
 *                       in the same last-n window as repetition, prompt
 *                       included; penalty_last_n does not affect them here.
 *
 * Logprobs are log-softmax of the logits as passed in, before steps 2-10:
 * the model's own distribution, independent of the request's knobs. That is
 * vLLM's default ("raw_logprobs"). SGLang reports log-softmax after its
 * penalties and bias, and by default after temperature too (before
 * temperature with SGLANG_RETURN_ORIGINAL_LOGPROB=1); neither renormalizes
 * after truncation.
 *
 * Non-finite logits. NaN is treated as -inf: never sampled, logprob -inf.
 * +inf becomes FLT_MAX, so tokens at +inf share all the mass (greedy: the
 * lowest such id). The same rule is applied again to the entries that steps
 * 2-5 touched. When every token ends at -inf (all-NaN logits, or everything
 * banned), sampler_sample fails with ERR_INVAL rather than invent a token.
 *
 * Speed (n_vocab 152k). Nothing is fully sorted and nothing is allocated.
 * Steps 1-6 are one copy-and-argmax pass plus O(distinct penalized ids):
 * penalties, bias and the ban touch only their own ids, and the argmax is
 * fixed up from those (rescanned only when the old argmax went down).
 * Then, by case:
 *   top_k <= 1024   one scan with a k-entry heap (a compare per token)
 *   top_k > 1024    quickselect over the finite tokens
 *                   then, over the k candidates: exp, min_p as a partition,
 *                   and top_p ordering only as far as its walk gets (below)
 *   top_k off       one expf pass over the vocab (the unavoidable cost);
 *                   without top_p the draw walks the weights in id order;
 *                   with top_p the same pass fills a histogram of the
 *                   weights in quarter-octave buckets (read off the float's
 *                   bits), the bucket where the mass reaches top_p is the
 *                   only one whose tokens need ordering, and those are
 *                   ordered by growing quickselect chunks (64, 256, ...)
 *                   only as far as the walk gets.
 * A near-uniform distribution with top_p < 1 (temperature 1000, say) puts
 * the whole vocab in one bucket and degrades to O(n log n): about 18 ms per
 * sample on a 2-vCPU EPYC VM where ordinary settings take under 1 ms and
 * greedy 0.1 ms.
 * Every selection uses one strict total order (z descending, then id
 * ascending), so the result, and with it the drawn token, does not depend on
 * which algorithm or pivot got there.
 *
 * RNG: xoshiro256** (Blackman & Vigna), state seeded from the 64-bit seed by
 * splitmix64. One draw per non-greedy sample (even when one candidate is
 * left), 53 bits -> a double in [0, 1). Unseeded samplers take their seed
 * from a process-wide splitmix64 counter started from getrandom() (clock and
 * pid as a fallback), advanced atomically.
 *
 * Penalty bookkeeping (only allocated when a penalty is on):
 *   win[id]   occurrences of id in the repetition window
 *   gen[id]   occurrences of id among generated tokens
 *   seen[]    the distinct ids with win[id] > 0 || gen[id] > 0, so steps 2-3
 *             cost O(distinct ids), not O(n_vocab); pos[id] is the index of
 *             id in seen[] or -1
 *   ring[]    the window's tokens, oldest at ring_head, when 0 < last_n
 * Invariants (sampler_check): pos/seen are inverse; sum(win) == ring_len
 * (or every accepted token when last_n == -1); sum(gen) == n_generated.
 *
 * Memory per sampler: 16 bytes per vocab entry of scratch (z, e, candidate
 * list), plus up to 16 more when penalties are on; 2.4-4.9 MB at 152k. The
 * scratch is only live inside sampler_sample, so a per-worker scratch could
 * replace it if many concurrent requests make that matter.
 *
 * States (the sampler has no modes; this is the life of its counters):
 *
 *   sampler_create --> EMPTY --sampler_accept_prompt--> PROMPTED
 *        PROMPTED/EMPTY --sampler_accept--> GENERATING (n_generated += 1)
 *        GENERATING --sampler_accept--> GENERATING; EOG ban lifts once
 *                                        n_generated >= min_tokens
 *   sampler_sample reads the state in any of them and changes only the RNG.
 *
 * Left out on purpose: DRY, XTC, typical_p, mirostat, top_n_sigma, grammar or
 * vocab masks, n > 1 / best_of, batched sampling across requests, logprobs of
 * caller-chosen ids, and logprobs after processing.
 */
#include "engine/sampler.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"

typedef struct {
	float z;    /* processed logit (steps 1-5) */
	int32_t id;
} cand;

struct sampler {
	sampler_params p;    /* logit_bias/eog_ids point at the copies below */
	int n_vocab;
	uint64_t seed;
	uint64_t rng[4];     /* xoshiro256** state, never all zero */
	int64_t n_generated;

	sampler_bias *bias;  /* [p.n_logit_bias] */
	int32_t *eog;        /* [p.n_eog_ids] */

	int32_t *win;        /* [n_vocab] or NULL: repetition off */
	int32_t *gen;        /* [n_vocab] or NULL: frequency and presence off */
	int32_t *pos;        /* [n_vocab], with win or gen */
	int32_t *seen;       /* [n_vocab], with win or gen */
	int n_seen;
	int32_t *ring;       /* [ring_cap] when 0 < penalty_last_n */
	int ring_cap, ring_len, ring_head;
	int64_t n_win_all;   /* tokens in the window when penalty_last_n == -1 */

	/* Scratch for one sample, [n_vocab] each. */
	float *z;            /* processed logits, by id */
	float *e;            /* exp((z - zmax) / temperature), by id; only the
	                        entries of the tokens the draw looked at */
	cand *c;             /* candidate lists */
};

/* ---- random numbers ---------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
	uint64_t r = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

static double rng_uniform(sampler *s) /* [0, 1) */
{
	return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

static _Atomic uint64_t g_seed_src;
static pthread_once_t g_seed_once = PTHREAD_ONCE_INIT;

static void seed_src_init(void)
{
	uint64_t x = 0;
	if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x)
		x = (uint64_t)clock_now_ns() ^ ((uint64_t)getpid() << 32);
	atomic_store(&g_seed_src, x);
}

static uint64_t seed_fresh(void)
{
	pthread_once(&g_seed_once, seed_src_init);
	uint64_t x = atomic_fetch_add(&g_seed_src, 0x9E3779B97F4A7C15ull);
	return splitmix64(&x);
}

/* ---- parameters -------------------------------------------------------- */

sampler_params sampler_params_default(void)
{
	return (sampler_params){
		.temperature = 1.0f,
		.top_k = -1,
		.top_p = 1.0f,
		.min_p = 0.0f,
		.repetition_penalty = 1.0f,
		.penalty_last_n = 64,
	};
}

int sampler_params_validate(const sampler_params *p, int n_vocab, char err[ERR_LEN])
{
	if (n_vocab < 1)
		return err_set(err, ERR_INVAL, "sampler: n_vocab %d must be positive", n_vocab);
	if (!isfinite(p->temperature) || p->temperature < 0)
		return err_set(err, ERR_INVAL, "temperature: %g must be finite and >= 0",
			       (double)p->temperature);
	if (p->top_k < -1)
		return err_set(err, ERR_INVAL, "top_k: %d must be -1 or 0 (off) or >= 1",
			       (int)p->top_k);
	if (!(p->top_p > 0 && p->top_p <= 1))
		return err_set(err, ERR_INVAL, "top_p: %g is outside (0, 1]", (double)p->top_p);
	if (!(p->min_p >= 0 && p->min_p <= 1))
		return err_set(err, ERR_INVAL, "min_p: %g is outside [0, 1]", (double)p->min_p);
	if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0))
		return err_set(err, ERR_INVAL, "repetition_penalty: %g must be finite and > 0",
			       (double)p->repetition_penalty);
	if (p->penalty_last_n < -1 || p->penalty_last_n > SAMPLER_MAX_LAST_N)
		return err_set(err, ERR_INVAL, "penalty_last_n: %d is outside [-1, %d]",
			       (int)p->penalty_last_n, SAMPLER_MAX_LAST_N);
	if (!(p->frequency_penalty >= -2 && p->frequency_penalty <= 2))
		return err_set(err, ERR_INVAL, "frequency_penalty: %g is outside [-2, 2]",
			       (double)p->frequency_penalty);
	if (!(p->presence_penalty >= -2 && p->presence_penalty <= 2))
		return err_set(err, ERR_INVAL, "presence_penalty: %g is outside [-2, 2]",
			       (double)p->presence_penalty);
	if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
		return err_set(err, ERR_INVAL, "logit_bias: bad count %d", (int)p->n_logit_bias);
	for (int i = 0; i < p->n_logit_bias; i++) {
		const sampler_bias *b = &p->logit_bias[i];
		if (b->id < 0 || b->id >= n_vocab)
			return err_set(err, ERR_INVAL,
				       "logit_bias: token id %d is outside [0, %d)",
				       (int)b->id, n_vocab);
		if (isnan(b->bias))
			return err_set(err, ERR_INVAL, "logit_bias: bias of token %d is NaN",
				       (int)b->id);
	}
	if (p->n_eog_ids < 0 || (p->n_eog_ids > 0 && !p->eog_ids))
		return err_set(err, ERR_INVAL, "eog_ids: bad count %d", (int)p->n_eog_ids);
	for (int i = 0; i < p->n_eog_ids; i++)
		if (p->eog_ids[i] < 0 || p->eog_ids[i] >= n_vocab)
			return err_set(err, ERR_INVAL,
				       "eog_ids: token id %d is outside [0, %d)",
				       (int)p->eog_ids[i], n_vocab);
	if (p->min_tokens < 0)
		return err_set(err, ERR_INVAL, "min_tokens: %d must be >= 0", (int)p->min_tokens);
	if (p->top_logprobs < 0 || p->top_logprobs > SAMPLER_MAX_TOP_LOGPROBS)
		return err_set(err, ERR_INVAL, "top_logprobs: %d is outside [0, %d]",
			       (int)p->top_logprobs, SAMPLER_MAX_TOP_LOGPROBS);
	return 0;
}

/* ---- create / destroy -------------------------------------------------- */

static bool rep_on(const sampler_params *p)
{
	return p->repetition_penalty != 1.0f && p->penalty_last_n != 0;
}

static bool gen_on(const sampler_params *p)
{
	return p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
}

sampler *sampler_create(const sampler_params *p, int n_vocab, char err[ERR_LEN])
{
	if (sampler_params_validate(p, n_vocab, err) < 0)
		return NULL;

	size_t nv = (size_t)n_vocab;
	sampler *s = alloc_zeroed(1, sizeof *s);
	if (!s)
		goto nomem;
	s->p = *p;
	s->n_vocab = n_vocab;
	s->p.logit_bias = NULL;
	s->p.eog_ids = NULL;

	if (p->n_logit_bias > 0) {
		s->bias = alloc_array((size_t)p->n_logit_bias, sizeof *s->bias);
		if (!s->bias)
			goto nomem;
		memcpy(s->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *s->bias);
		s->p.logit_bias = s->bias;
	}
	if (p->n_eog_ids > 0) {
		s->eog = alloc_array((size_t)p->n_eog_ids, sizeof *s->eog);
		if (!s->eog)
			goto nomem;
		memcpy(s->eog, p->eog_ids, (size_t)p->n_eog_ids * sizeof *s->eog);
		s->p.eog_ids = s->eog;
	}

	if (rep_on(p)) {
		s->win = alloc_zeroed(nv, sizeof *s->win);
		if (!s->win)
			goto nomem;
		if (p->penalty_last_n > 0) {
			s->ring_cap = p->penalty_last_n;
			s->ring = alloc_array((size_t)s->ring_cap, sizeof *s->ring);
			if (!s->ring)
				goto nomem;
		}
	}
	if (gen_on(p)) {
		s->gen = alloc_zeroed(nv, sizeof *s->gen);
		if (!s->gen)
			goto nomem;
	}
	if (s->win || s->gen) {
		s->pos = alloc_array(nv, sizeof *s->pos);
		s->seen = alloc_array(nv, sizeof *s->seen);
		if (!s->pos || !s->seen)
			goto nomem;
		memset(s->pos, 0xff, nv * sizeof *s->pos); /* all -1 */
	}
	s->z = alloc_array(nv, sizeof *s->z);
	s->e = alloc_array(nv, sizeof *s->e);
	s->c = alloc_array(nv, sizeof *s->c);
	if (!s->z || !s->e || !s->c)
		goto nomem;

	s->seed = p->has_seed ? p->seed : seed_fresh();
	uint64_t x = s->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&x); /* splitmix64 never yields four zeros */
	return s;

nomem:
	sampler_destroy(s);
	err_set(err, ERR_NOMEM, "sampler: out of memory for n_vocab %d", n_vocab);
	return NULL;
}

void sampler_destroy(sampler *s)
{
	if (!s)
		return;
	alloc_free(s->c);
	alloc_free(s->e);
	alloc_free(s->z);
	alloc_free(s->seen);
	alloc_free(s->pos);
	alloc_free(s->gen);
	alloc_free(s->ring);
	alloc_free(s->win);
	alloc_free(s->eog);
	alloc_free(s->bias);
	alloc_free(s);
}

/* ---- penalty bookkeeping ----------------------------------------------- */

static bool tracked(const sampler *s, int32_t id)
{
	return (s->win && s->win[id] > 0) || (s->gen && s->gen[id] > 0);
}

/* Call after raising a count of id from zero. */
static void seen_add(sampler *s, int32_t id)
{
	if (s->pos[id] >= 0)
		return;
	s->pos[id] = s->n_seen;
	s->seen[s->n_seen++] = id;
}

/* Call after lowering a count of id. */
static void seen_drop_if_gone(sampler *s, int32_t id)
{
	if (tracked(s, id))
		return;
	int i = s->pos[id];
	int32_t last = s->seen[--s->n_seen];
	s->seen[i] = last;
	s->pos[last] = i;
	s->pos[id] = -1;
}

static void window_push(sampler *s, int32_t id)
{
	if (!s->win)
		return;
	if (s->ring_cap == 0) { /* penalty_last_n == -1: nothing leaves */
		s->win[id]++;
		s->n_win_all++;
		seen_add(s, id);
		return;
	}
	if (s->ring_len == s->ring_cap) {
		int32_t old = s->ring[s->ring_head];
		s->ring[s->ring_head] = id;
		s->ring_head = (s->ring_head + 1) % s->ring_cap;
		s->win[old]--;
		seen_drop_if_gone(s, old);
	} else {
		s->ring[(s->ring_head + s->ring_len) % s->ring_cap] = id;
		s->ring_len++;
	}
	s->win[id]++;
	seen_add(s, id);
}

int sampler_accept_prompt(sampler *s, const int32_t *ids, int n)
{
	if (n < 0 || (n > 0 && !ids))
		return ERR_INVAL;
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= s->n_vocab)
			return ERR_INVAL;
	if (!s->win)
		return 0;
	/* Only the last ring_cap tokens can stay in the window. */
	int from = s->ring_cap > 0 && n > s->ring_cap ? n - s->ring_cap : 0;
	for (int i = from; i < n; i++)
		window_push(s, ids[i]);
	return 0;
}

int sampler_accept(sampler *s, int32_t id)
{
	if (id < 0 || id >= s->n_vocab)
		return ERR_INVAL;
	window_push(s, id);
	if (s->gen) {
		s->gen[id]++;
		seen_add(s, id);
	}
	s->n_generated++;
	return 0;
}

int64_t sampler_n_generated(const sampler *s)
{
	return s->n_generated;
}

uint64_t sampler_seed(const sampler *s)
{
	return s->seed;
}

int sampler_check(const sampler *s)
{
	const char *why = NULL;
	if (!s->win && !s->gen) {
		if (s->n_seen != 0)
			why = "seen list without penalties";
		goto out;
	}
	int n_tracked = 0;
	int64_t sum_win = 0, sum_gen = 0;
	for (int id = 0; id < s->n_vocab; id++) {
		if ((s->win && s->win[id] < 0) || (s->gen && s->gen[id] < 0)) {
			why = "negative count";
			goto out;
		}
		sum_win += s->win ? s->win[id] : 0;
		sum_gen += s->gen ? s->gen[id] : 0;
		if (tracked(s, id)) {
			n_tracked++;
			if (s->pos[id] < 0 || s->pos[id] >= s->n_seen || s->seen[s->pos[id]] != id) {
				why = "tracked id missing from seen list";
				goto out;
			}
		} else if (s->pos[id] != -1) {
			why = "untracked id in seen list";
			goto out;
		}
	}
	if (n_tracked != s->n_seen)
		why = "seen list length";
	else if (s->win && sum_win != (s->ring_cap ? s->ring_len : s->n_win_all))
		why = "window counts do not add up to the window length";
	else if (s->gen && sum_gen != s->n_generated)
		why = "generated counts do not add up to n_generated";
	else if (s->ring_len < 0 || s->ring_len > s->ring_cap ||
		 (s->ring_cap && (s->ring_head < 0 || s->ring_head >= s->ring_cap)))
		why = "ring indices";
	for (int i = 0; !why && i < s->ring_len; i++)
		if (s->win[s->ring[(s->ring_head + i) % s->ring_cap]] <= 0)
			why = "ring token with zero window count";
out:
	if (why) {
		LOGE("sampler", "check failed: %s", why);
		return ERR_INVAL;
	}
	return 0;
}

/* ---- candidate selection ----------------------------------------------- */

/* NaN -> -inf, +inf -> FLT_MAX; see "Non-finite" at the top. */
static inline float sanitize(float v)
{
	if (!(v <= FLT_MAX)) /* NaN or +inf */
		return v == INFINITY ? FLT_MAX : -INFINITY;
	return v;
}

/* The one order every selection uses: higher z first, then lower id. Strict
   and total (ids are unique, z is never NaN), so results do not depend on
   how a selection gets there. */
static inline bool before(const cand *a, const cand *b)
{
	return a->z > b->z || (a->z == b->z && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
	const cand *a = pa, *b = pb;
	return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static inline void cswap(cand *a, cand *b)
{
	cand t = *a;
	*a = *b;
	*b = t;
}

static void insertion_sort(cand *a, int n)
{
	for (int i = 1; i < n; i++) {
		cand x = a[i];
		int j = i;
		for (; j > 0 && before(&x, &a[j - 1]); j--)
			a[j] = a[j - 1];
		a[j] = x;
	}
}

static void sort_cands(cand *a, int n)
{
	if (n <= 16)
		insertion_sort(a, n);
	else
		qsort(a, (size_t)n, sizeof *a, cand_cmp);
}

/* Reorder a[0..n) so that a[0..k) are the k first in `before` order, in no
   particular order among themselves. Quickselect with median-of-3, falling
   back to sorting what is left if partitioning keeps going badly: worst case
   O(n log n). */
static void select_first(cand *a, int n, int k)
{
	if (k <= 0 || k >= n)
		return;
	int lo = 0, hi = n;
	int budget = 2 * (32 - __builtin_clz((unsigned)n));
	while (hi - lo > 16) {
		if (budget-- == 0) {
			qsort(a + lo, (size_t)(hi - lo), sizeof *a, cand_cmp);
			return;
		}
		int mid = lo + (hi - lo) / 2;
		if (before(&a[mid], &a[lo]))
			cswap(&a[mid], &a[lo]);
		if (before(&a[hi - 1], &a[lo]))
			cswap(&a[hi - 1], &a[lo]);
		if (before(&a[hi - 1], &a[mid]))
			cswap(&a[hi - 1], &a[mid]);
		cswap(&a[mid], &a[hi - 1]); /* the median of three is the pivot */
		cand pv = a[hi - 1];
		/* Lomuto without a data-dependent branch: always swap, advance on
		   the comparison (random comparisons would mispredict half the
		   time). The swap moves whole 8-byte candidates: copied field by
		   field, the next iteration's 8-byte load of a[st] could not be
		   forwarded from two 4-byte stores and would stall. */
		_Static_assert(sizeof(cand) == sizeof(uint64_t), "cand moves as one word");
		int st = lo;
		for (int i = lo; i < hi - 1; i++) {
			int lt = (a[i].z > pv.z) | ((a[i].z == pv.z) & (a[i].id < pv.id));
			uint64_t x, y;
			memcpy(&x, &a[i], sizeof x);
			memcpy(&y, &a[st], sizeof y);
			memcpy(&a[i], &y, sizeof y);
			memcpy(&a[st], &x, sizeof x);
			st += lt;
		}
		cswap(&a[st], &a[hi - 1]);
		if (st == k || st == k - 1)
			return;
		if (st > k)
			hi = st;
		else
			lo = st + 1;
	}
	insertion_sort(a + lo, hi - lo);
}

/* Heap whose root is the candidate that comes last in `before` order. */
static void heap_down(cand *h, int n, int i)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, w = i;
		if (l < n && before(&h[w], &h[l]))
			w = l;
		if (r < n && before(&h[w], &h[r]))
			w = r;
		if (w == i)
			return;
		cswap(&h[i], &h[w]);
		i = w;
	}
}

/* The first k tokens of v[0..n) in `before` order into out[0..k) (sorted
   if asked, else in heap order);
   returns how many (fewer than k when fewer are eligible). v is read through
   sanitize(); with skip_neg_inf, tokens at -inf are not eligible. One pass
   that mostly costs a compare per token: the scan goes up in id, so a token
   no larger than the heap's worst can never enter. */
static int top_scan(const float *v, int n, int k, bool skip_neg_inf, bool sorted,
		    cand *out)
{
	int m = 0, i = 0;
	for (; i < n && m < k; i++) {
		float x = sanitize(v[i]);
		if (skip_neg_inf && x == -INFINITY)
			continue;
		out[m++] = (cand){ x, i };
	}
	for (int j = m / 2 - 1; j >= 0; j--)
		heap_down(out, m, j);
	float worst = m ? out[0].z : 0;
	for (; i < n; i++) {
		float x = sanitize(v[i]);
		if (x <= worst)
			continue;
		out[0] = (cand){ x, i };
		heap_down(out, m, 0);
		worst = out[0].z;
	}
	if (sorted)
		sort_cands(out, m);
	return m;
}

/* ---- sampling ---------------------------------------------------------- */

/* top_k up to this uses top_scan, larger a quickselect. A heap replaces its
   root about k ln(n/k) times, at log k mispredicted steps each; quickselect
   costs a few branch-free passes over the vocab whatever k is. Measured at
   n_vocab 152k (best of 40, 2-vCPU EPYC VM): k = 256: heap 0.21 ms,
   quickselect 0.26 ms; 1024: 0.49 / 0.72 ms; 4096: 1.46 / 0.73 ms. */
#define HEAP_MAX 1024
#define N_BUCKET 256   /* top_p histogram: quarter-octave buckets, 64 octaves */

/* b, or id if id is a better argmax (larger, or equal with a lower id);
   b < 0 means none yet. Tokens at -inf never qualify. */
static inline int better(const float *z, int id, int b)
{
	if (z[id] == -INFINITY)
		return b;
	if (b < 0 || z[id] > z[b] || (z[id] == z[b] && id < b))
		return id;
	return b;
}

/* Steps 1-5 of the top comment into s->z, and the first argmax of the
   result; -1 when every token is at -inf. */
static int prepare(sampler *s, const float *logits)
{
	float *z = s->z;
	int n = s->n_vocab;
	float bv = -INFINITY;
	int b = -1;
	for (int i = 0; i < n; i++) {
		float v = sanitize(logits[i]);
		z[i] = v;
		if (v > bv) {
			bv = v;
			b = i;
		}
	}

	const sampler_params *p = &s->p;
	bool ban = s->n_generated < p->min_tokens && p->n_eog_ids > 0;
	if (s->n_seen == 0 && p->n_logit_bias == 0 && !ban)
		return b;

	for (int i = 0; i < s->n_seen; i++) {
		int32_t id = s->seen[i];
		float v = z[id];
		if (s->win && s->win[id] > 0)
			v = v > 0 ? v / p->repetition_penalty : v * p->repetition_penalty;
		if (s->gen && s->gen[id] > 0)
			v -= p->frequency_penalty * (float)s->gen[id] + p->presence_penalty;
		z[id] = sanitize(v);
	}
	for (int i = 0; i < p->n_logit_bias; i++) {
		int32_t id = s->bias[i].id;
		z[id] = sanitize(z[id] + s->bias[i].bias);
	}
	if (ban)
		for (int i = 0; i < p->n_eog_ids; i++)
			z[s->eog[i]] = -INFINITY;

	/* Only patched tokens changed. If the old argmax went down, rescan;
	   otherwise a patched token can only take over. */
	if (b >= 0 && z[b] < bv) {
		b = sampler_argmax(z, n);
		return z[b] > -INFINITY ? b : -1;
	}
	for (int i = 0; i < s->n_seen; i++)
		b = better(z, s->seen[i], b);
	for (int i = 0; i < p->n_logit_bias; i++)
		b = better(z, s->bias[i].id, b);
	return b;
}

/* Pick by cumulative mass among c[0..n) (weights e[id]) with one draw. */
static int32_t pick_cands(sampler *s, const cand *c, int n)
{
	const float *e = s->e;
	double mass = 0;
	for (int i = 0; i < n; i++)
		mass += e[c[i].id];
	double u = rng_uniform(s) * mass, cum = 0;
	int last = 0;
	for (int i = 0; i < n; i++) {
		float w = e[c[i].id];
		if (w <= 0)
			continue;
		cum += w;
		last = i;
		if (cum > u)
			return c[i].id;
	}
	return c[last].id; /* rounding left u at the very top */
}

/* c[0..m) are candidates with weights e[id], and cum0 the mass of the tokens
   known to come before all of them. Reorders c so that its first r entries
   are its first r in `before` order, sorted, for the shortest r with
   cum0 + their mass >= target, and returns r (m if never reached). Sorts
   only what the walk reaches: chunks of 64, 256, 1024, ... */
static int nucleus_prefix(cand *c, int m, const float *e, double cum0, double target)
{
	double cum = cum0;
	int lo = 0, chunk = 64;
	while (lo < m) {
		int hi = m - lo > chunk ? lo + chunk : m;
		select_first(c + lo, m - lo, hi - lo);
		sort_cands(c + lo, hi - lo);
		for (int i = lo; i < hi; i++) {
			cum += e[c[i].id];
			if (cum >= target)
				return i + 1;
		}
		lo = hi;
		if (chunk < (1 << 26))
			chunk *= 4;
	}
	return m;
}

/* Steps 7-11 when top_k is on: c[0..k) are the top-k tokens, in any order. */
static int32_t draw_top_k(sampler *s, int k, float zmax)
{
	const sampler_params *p = &s->p;
	cand *c = s->c;
	float *e = s->e;
	double total = 0;
	for (int i = 0; i < k; i++)
		total += e[c[i].id] = expf((c[i].z - zmax) / p->temperature);
	/* min_p and top_p both keep a prefix of the sorted order, so the
	   shorter one wins: drop what min_p drops (relative to p_max, whose
	   weight is exactly 1), then walk top_p over the rest. Only top_p
	   needs any order, and only as far as it walks. */
	int m = k;
	if (p->min_p > 0) {
		m = 0;
		for (int i = 0; i < k; i++)
			if (e[c[i].id] >= p->min_p)
				cswap(&c[i], &c[m++]);
	}
	if (p->top_p < 1)
		m = nucleus_prefix(c, m, e, 0, (double)p->top_p * total);
	return pick_cands(s, c, m);
}

/* The top_p histogram buckets weights w = p / p_max in (0, 1] by the bits of
   the float: for positive floats the bit pattern grows with the value, and
   the exponent plus two mantissa bits make buckets a quarter octave wide.
   Bucket 0 holds w = 1 and (2^-1/4, 1); the last one everything below
   2^-(N_BUCKET-1)/4. Branch-free, because this runs on every token. */
static inline uint32_t float_bits(float w)
{
	uint32_t u;
	memcpy(&u, &w, sizeof u);
	return u;
}

static inline int bucket_of(float w)
{
	uint32_t d = (float_bits(1.0f) - float_bits(w)) >> 21;
	return d < N_BUCKET - 1 ? (int)d : N_BUCKET - 1;
}

/* 2^(-b/4) for 0 <= b < N_BUCKET: the float whose bits are 1.0f's minus b
   quarter octaves; bucket_of(w) < b exactly when w > bucket_cut(b). */
static inline float bucket_cut(int b)
{
	uint32_t u = float_bits(1.0f) - ((uint32_t)b << 21);
	float w;
	memcpy(&w, &u, sizeof w);
	return w;
}

/* Steps 7-11 with top_k off: no candidate list unless top_p needs one. */
static int32_t draw_all(sampler *s, float zmax)
{
	const sampler_params *p = &s->p;
	const float *z = s->z;
	float *e = s->e;
	int n = s->n_vocab;
	float t = p->temperature, min_p = p->min_p;
	bool nucleus = p->top_p < 1;
	double total = 0, kept = 0;
	double bmass[2][N_BUCKET]; /* two copies break the add-store-load chain */

	if (!nucleus) {
		for (int i = 0; i < n; i++) {
			float w = z[i] == -INFINITY ? 0.0f : expf((z[i] - zmax) / t);
			e[i] = w;
			kept += w >= min_p ? w : 0;
		}
		/* Draw straight from e[], in id order. */
		double u = rng_uniform(s) * kept, cum = 0;
		int last = -1;
		for (int i = 0; i < n; i++) {
			if (e[i] <= 0 || e[i] < min_p)
				continue;
			cum += e[i];
			last = i;
			if (cum > u)
				return i;
		}
		return last; /* the argmax has w = 1 >= min_p, so last >= 0 */
	}

	memset(bmass, 0, sizeof bmass);
	for (int i = 0; i < n; i++) {
		float w = z[i] == -INFINITY ? 0.0f : expf((z[i] - zmax) / t);
		e[i] = w;
		total += w;
		bmass[i & 1][bucket_of(w)] += w;
	}

	/* The bucket where the cumulative mass reaches the target holds the
	   nucleus boundary. Every token in an earlier bucket is in the nucleus
	   whatever the order inside; only the boundary bucket's tokens need
	   ordering, and only as far as the walk goes. Tokens under min_p are
	   left out everywhere: min_p keeps a prefix of the same order, so the
	   shorter of the two prefixes wins either way. */
	double target = (double)p->top_p * total, before_b = 0;
	int bstar = N_BUCKET - 1;
	for (int b = 0; b < N_BUCKET; b++) {
		double mb = bmass[0][b] + bmass[1][b];
		if (before_b + mb >= target) {
			bstar = b;
			break;
		}
		before_b += mb;
	}
	/* bucket_of(w) <  bstar  <=>  w > cut(bstar)
	   bucket_of(w) <= bstar  <=>  w > cut(bstar + 1), cut(b) = 2^(-b/4) */
	float cut_in = bucket_cut(bstar);
	float cut_edge = bstar == N_BUCKET - 1 ? -1.0f : bucket_cut(bstar + 1);
	float floor_w = min_p > 0 ? min_p : 0;
	cand *c = s->c;
	int m_in = 0, m_edge = 0;
	for (int i = 0; i < n; i++) {
		float w = e[i];
		if (w <= cut_edge || w < floor_w || z[i] == -INFINITY)
			continue;
		if (w > cut_in)
			c[m_in++] = (cand){ z[i], i };
		else
			c[n - 1 - m_edge++] = (cand){ z[i], i };
	}
	cand *edge = c + n - m_edge;
	int r = nucleus_prefix(edge, m_edge, e, before_b, target);
	memmove(c + m_in, edge, (size_t)r * sizeof *c);
	return pick_cands(s, c, m_in + r);
}

static void fill_logprobs(sampler *s, const float *logits, sampler_out *out)
{
	int n = s->n_vocab;
	float lmax = -INFINITY;
	for (int i = 0; i < n; i++) {
		float v = sanitize(logits[i]);
		if (v > lmax)
			lmax = v;
	}
	double sum = 0;
	if (lmax > -INFINITY)
		for (int i = 0; i < n; i++)
			sum += expf(sanitize(logits[i]) - lmax);
	/* log-softmax(v) = v - lse. With every logit -inf or NaN the draw has
	   already failed; lse = +inf just keeps this NaN-free. */
	double lse = lmax > -INFINITY ? (double)lmax + log(sum) : INFINITY;

	out->logprob = (float)((double)sanitize(logits[out->id]) - lse);
	if (s->p.top_logprobs == 0)
		return;
	/* The draw is done: the candidate scratch is free. */
	int k = top_scan(logits, n, s->p.top_logprobs, false, true, s->c);
	for (int i = 0; i < k; i++) {
		out->top[i].id = s->c[i].id;
		out->top[i].logprob = (float)((double)s->c[i].z - lse);
	}
	out->n_top = k;
}

int sampler_sample(sampler *s, const float *logits, sampler_out *out)
{
	out->id = -1;
	out->logprob = 0;
	out->n_top = 0;

	int b = prepare(s, logits);
	if (b < 0)
		return ERR_INVAL;
	const sampler_params *p = &s->p;
	float zmax = s->z[b];
	int n = s->n_vocab;

	if (p->temperature == 0) {
		out->id = b;
	} else if (p->top_k > 0 && p->top_k <= HEAP_MAX && p->top_k < n) {
		int k = top_scan(s->z, n, p->top_k, true, false, s->c);
		out->id = draw_top_k(s, k, zmax);
	} else if (p->top_k > 0 && p->top_k < n) {
		int m = 0;
		for (int i = 0; i < n; i++)
			if (s->z[i] > -INFINITY)
				s->c[m++] = (cand){ s->z[i], i };
		int k = p->top_k < m ? p->top_k : m;
		select_first(s->c, m, k);
		out->id = draw_top_k(s, k, zmax);
	} else {
		out->id = draw_all(s, zmax);
	}

	if (p->logprobs || p->top_logprobs > 0)
		fill_logprobs(s, logits, out);
	return 0;
}

int32_t sampler_argmax(const float *logits, int n)
{
	int32_t best = -1;
	float bv = 0;
	for (int i = 0; i < n; i++) {
		float v = logits[i];
		if (isnan(v))
			continue;
		if (best < 0 || v > bv) {
			best = i;
			bv = v;
		}
	}
	return best;
}
