/* sampler_test.c - engine/sampler: greedy, seeds, the distribution after
 * temperature/top_k/top_p/min_p (against a brute-force full-sort reference),
 * penalties, logit_bias, min_tokens, logprobs, parameter errors, non-finite
 * logits, a 152k vocabulary, and failed allocations.
 *
 * Distribution checks draw many samples with a fixed seed, so they are
 * deterministic; the tolerances (5 sigma, chi-square at p ~ 1e-5) would keep
 * them from being flaky even with other seeds.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "engine/sampler.h"

/* ---- helpers ----------------------------------------------------------- */

static sampler *mk(const sampler_params *p, int n_vocab)
{
	char err[ERR_LEN] = "";
	sampler *s = sampler_create(p, n_vocab, err);
	cr_assert(s != NULL, "sampler_create: %s", err);
	return s;
}

static sampler_params seeded(uint64_t seed)
{
	sampler_params p = sampler_params_default();
	p.has_seed = true;
	p.seed = seed;
	return p;
}

static int32_t one(sampler *s, const float *logits)
{
	sampler_out o;
	int rc = sampler_sample(s, logits, &o);
	cr_assert(eq(int, rc, 0));
	return o.id;
}

static void count_draws(sampler *s, const float *logits, int n_vocab, int n, long *counts)
{
	memset(counts, 0, (size_t)n_vocab * sizeof *counts);
	for (int i = 0; i < n; i++) {
		int32_t id = one(s, logits);
		cr_assert(id >= 0 && id < n_vocab, "id %d out of range", id);
		counts[id]++;
	}
}

/* Test-side random numbers, independent of the sampler's. */
static uint64_t trng_state = 12345;
static uint64_t trng(void)
{
	uint64_t z = (trng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static double trng_unit(void)
{
	return (double)(trng() >> 11) * 0x1.0p-53;
}

/* Roughly normal(0, sd): sum of four uniforms. */
static float trng_logit(float sd)
{
	double u = trng_unit() + trng_unit() + trng_unit() + trng_unit() - 2.0;
	return (float)(u * sd * 1.7320508);
}

/* The spec of steps 7-10 in sampler.c, written the slow obvious way: sort
   everything, then apply the rules in order. prob[id] gets the probability
   of drawing id. */
typedef struct {
	float z;
	int id;
} zid;

static int zid_cmp(const void *pa, const void *pb)
{
	const zid *a = pa, *b = pb;
	if (a->z != b->z)
		return a->z > b->z ? -1 : 1;
	return a->id - b->id;
}

static void ref_probs(const float *z, int n, float temp, int top_k, float top_p,
		      float min_p, double *prob)
{
	zid *o = malloc((size_t)n * sizeof *o);
	double *e = malloc((size_t)n * sizeof *e);
	int nv = 0;
	for (int i = 0; i < n; i++)
		if (z[i] > -INFINITY)
			o[nv++] = (zid){ z[i], i };
	qsort(o, (size_t)nv, sizeof *o, zid_cmp);
	int k = top_k > 0 && top_k < nv ? top_k : nv;
	double total = 0;
	for (int i = 0; i < k; i++)
		total += e[i] = exp(((double)o[i].z - o[0].z) / temp);
	int keep = k;
	if (top_p < 1) {
		double cum = 0;
		for (int i = 0; i < k; i++) {
			cum += e[i];
			if (cum >= top_p * total) {
				keep = i + 1;
				break;
			}
		}
	}
	for (int i = 0; i < keep; i++)
		if (e[i] < min_p) {
			keep = i;
			break;
		}
	double mass = 0;
	for (int i = 0; i < keep; i++)
		mass += e[i];
	memset(prob, 0, (size_t)n * sizeof *prob);
	for (int i = 0; i < keep; i++)
		prob[o[i].id] = e[i] / mass;
	free(e);
	free(o);
}

/* Every count within 5 sigma of n*prob, and tokens with prob 0 never drawn. */
static void assert_matches(const long *counts, const double *prob, int n_vocab, long n)
{
	for (int i = 0; i < n_vocab; i++) {
		double want = prob[i] * (double)n;
		if (prob[i] == 0) {
			cr_assert(eq(long, counts[i], 0), "token %d has probability 0", i);
			continue;
		}
		double tol = 5 * sqrt(want * (1 - prob[i])) + 3;
		cr_assert(fabs((double)counts[i] - want) <= tol,
			  "token %d: drawn %ld times, want %.1f +- %.1f", i, counts[i], want, tol);
	}
}

/* ---- argmax and greedy ------------------------------------------------- */

Test(sampler, argmax_basic_ties_and_nan)
{
	float a[] = { 1, 3, 2, 3, -1 };
	cr_assert(eq(i32, sampler_argmax(a, 5), 1)); /* tie: lowest id */
	float b[] = { NAN, -INFINITY, -5, NAN };
	cr_assert(eq(i32, sampler_argmax(b, 4), 2));
	float c[] = { NAN, NAN };
	cr_assert(eq(i32, sampler_argmax(c, 2), -1));
	float d[] = { -INFINITY, -INFINITY };
	cr_assert(eq(i32, sampler_argmax(d, 2), 0));
	cr_assert(eq(i32, sampler_argmax(a, 0), -1));
	float e[] = { 0, INFINITY, 7, INFINITY };
	cr_assert(eq(i32, sampler_argmax(e, 4), 1));
}

Test(sampler, greedy_is_argmax_of_raw_logits)
{
	enum { V = 1000 };
	sampler_params p = seeded(1);
	p.temperature = 0;
	p.penalty_last_n = 64; /* default window, penalty 1: tracking stays off */
	sampler *s = mk(&p, V);
	float l[V];
	for (int row = 0; row < 200; row++) {
		for (int i = 0; i < V; i++)
			l[i] = (float)(int)(trng_logit(3) * 2) / 2; /* coarse: many ties */
		int32_t got = one(s, l);
		cr_assert(eq(i32, got, sampler_argmax(l, V)));
		cr_assert(eq(int, sampler_accept(s, got), 0));
	}
	sampler_destroy(s);

	/* explicit tie at the top */
	s = mk(&p, 5);
	float t[] = { 0, 5, 1, 5, 5 };
	cr_assert(eq(i32, one(s, t), 1));
	sampler_destroy(s);
}

Test(sampler, top_k_1_equals_greedy)
{
	enum { V = 3000 };
	sampler_params g = seeded(7), k1 = seeded(8);
	g.temperature = 0;
	k1.temperature = 1.3f;
	k1.top_k = 1;
	k1.top_p = 0.9f; /* irrelevant once k = 1, but exercises the path */
	sampler *sg = mk(&g, V), *sk = mk(&k1, V);
	float l[V];
	for (int row = 0; row < 100; row++) {
		for (int i = 0; i < V; i++)
			l[i] = (float)(int)trng_logit(4); /* integers: ties */
		cr_assert(eq(i32, one(sk, l), one(sg, l)));
	}
	sampler_destroy(sg);
	sampler_destroy(sk);
}

/* ---- seeds ------------------------------------------------------------- */

static void run_sequence(const sampler_params *p, int n, int32_t *out)
{
	enum { V = 500 };
	uint64_t keep = trng_state;
	trng_state = 99; /* same logits rows for every call */
	sampler *s = mk(p, V);
	float l[V];
	for (int t = 0; t < n; t++) {
		for (int i = 0; i < V; i++)
			l[i] = trng_logit(2);
		out[t] = one(s, l);
		cr_assert(eq(int, sampler_accept(s, out[t]), 0));
	}
	sampler_destroy(s);
	trng_state = keep;
}

Test(sampler, same_seed_same_tokens_different_seed_different)
{
	enum { N = 300 };
	int32_t a[N], b[N], c[N];
	sampler_params p = seeded(42);
	p.top_p = 0.95f;
	p.top_k = 50;
	p.repetition_penalty = 1.1f;
	p.frequency_penalty = 0.2f;
	run_sequence(&p, N, a);
	run_sequence(&p, N, b);
	cr_assert(eq(int, memcmp(a, b, sizeof a), 0), "same seed gave different tokens");
	p.seed = 43;
	run_sequence(&p, N, c);
	int same = 0;
	for (int i = 0; i < N; i++)
		same += a[i] == c[i];
	cr_assert(same < N / 2, "seeds 42 and 43 agree on %d of %d tokens", same, N);
}

Test(sampler, unseeded_samplers_draw_distinct_seeds)
{
	sampler_params p = sampler_params_default();
	sampler *a = mk(&p, 10), *b = mk(&p, 10);
	cr_assert(sampler_seed(a) != sampler_seed(b));
	sampler_destroy(a);
	sampler_destroy(b);
	p = seeded(77);
	a = mk(&p, 10);
	cr_assert(eq(u64, sampler_seed(a), 77));
	sampler_destroy(a);
}

/* ---- the distribution -------------------------------------------------- */

Test(sampler, temperature_matches_softmax)
{
	enum { V = 5, N = 200000 };
	const float l[V] = { 0.5f, 1.0f, -0.3f, 2.0f, 1.2f };
	const float temps[] = { 0.5f, 1.0f, 2.0f };
	for (size_t t = 0; t < sizeof temps / sizeof *temps; t++) {
		sampler_params p = seeded(1000 + t);
		p.temperature = temps[t];
		sampler *s = mk(&p, V);
		long counts[V];
		double prob[V];
		count_draws(s, l, V, N, counts);
		ref_probs(l, V, temps[t], 0, 1, 0, prob);
		double chi2 = 0;
		for (int i = 0; i < V; i++) {
			double want = prob[i] * N;
			chi2 += (counts[i] - want) * (counts[i] - want) / want;
		}
		/* 4 degrees of freedom: P(chi2 > 28) ~ 1e-5 */
		cr_assert(chi2 < 28, "temperature %g: chi-square %.1f", (double)temps[t], chi2);
		sampler_destroy(s);
	}
}

Test(sampler, top_k_keeps_k_and_renormalizes)
{
	enum { V = 6, N = 100000 };
	const float l[V] = { 1, 3, 2, 3, 0, 2.5f };
	sampler_params p = seeded(5);
	p.top_k = 3; /* 1 and 3 tie at the top; then 5 */
	sampler *s = mk(&p, V);
	long counts[V];
	double prob[V];
	count_draws(s, l, V, N, counts);
	ref_probs(l, V, 1, 3, 1, 0, prob);
	cr_assert(prob[0] == 0 && prob[2] == 0 && prob[4] == 0 && prob[5] > 0);
	assert_matches(counts, prob, V, N);
	sampler_destroy(s);
}

Test(sampler, top_p_keeps_the_minimal_nucleus)
{
	enum { V = 4, N = 50000 };
	/* p = 0.5, 0.3, 0.15, 0.05 at ids 2, 0, 3, 1 */
	const float l[V] = { logf(0.3f), logf(0.05f), logf(0.5f), logf(0.15f) };
	struct {
		float top_p;
		int allowed[V];
	} cases[] = {
		{ 0.45f, { 0, 0, 1, 0 } },
		{ 0.75f, { 1, 0, 1, 0 } }, /* 0.5 < 0.75 <= 0.8 */
		{ 0.81f, { 1, 0, 1, 1 } },
		{ 0.96f, { 1, 1, 1, 1 } },
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		sampler_params p = seeded(c);
		p.top_p = cases[c].top_p;
		sampler *s = mk(&p, V);
		long counts[V];
		count_draws(s, l, V, N, counts);
		double mass = 0, prob[V];
		for (int i = 0; i < V; i++)
			mass += cases[c].allowed[i] ? expf(l[i]) : 0;
		for (int i = 0; i < V; i++)
			prob[i] = cases[c].allowed[i] ? expf(l[i]) / mass : 0;
		assert_matches(counts, prob, V, N);
		sampler_destroy(s);
	}
}

Test(sampler, top_p_nucleus_wider_than_one_chunk)
{
	/* 1000 equal tokens scattered in a 20000 vocab, the rest far below: the
	   nucleus of 0.5 is the 500 lowest ids among the 1000 (ties by id), so
	   selection has to grow past its first chunk of 64. */
	enum { V = 20000, HOT = 1000, N = 4000 };
	static float l[V];
	static int hot_rank[V];
	for (int i = 0; i < V; i++) {
		l[i] = -40;
		hot_rank[i] = -1;
	}
	int placed = 0;
	while (placed < HOT) {
		int id = (int)(trng() % V);
		if (l[id] == 0)
			continue;
		l[id] = 0;
		placed++;
	}
	for (int i = 0, r = 0; i < V; i++)
		if (l[i] == 0)
			hot_rank[i] = r++;
	sampler_params p = seeded(3);
	p.top_p = 0.5f;
	sampler *s = mk(&p, V);
	static long counts[V];
	count_draws(s, l, V, N, counts);
	int distinct = 0;
	for (int i = 0; i < V; i++) {
		if (!counts[i])
			continue;
		distinct++;
		cr_assert(hot_rank[i] >= 0 && hot_rank[i] < HOT / 2,
			  "token %d (rank %d) is outside the nucleus", i, hot_rank[i]);
	}
	cr_assert(distinct > 450, "only %d of 500 nucleus tokens drawn", distinct);
	sampler_destroy(s);
}

Test(sampler, min_p_drops_tokens_below_the_threshold)
{
	enum { V = 4, N = 50000 };
	const float l[V] = { logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f) };
	struct {
		float temp, min_p;
	} cases[] = {
		{ 1, 0.25f },  /* threshold 0.125: keeps 0, 1, 2 */
		{ 1, 0.61f },  /* 0.305: keeps 0 */
		{ 2, 0.5f },   /* relative sqrt(p): 1, .77, .55, .32: keeps 0, 1, 2 */
		{ 1, 1.0f },   /* only the max */
	};
	for (size_t c = 0; c < 2 * sizeof cases / sizeof *cases; c++) {
		size_t i = c / 2;
		sampler_params p = seeded(50 + c);
		p.temperature = cases[i].temp;
		p.min_p = cases[i].min_p;
		p.top_k = c % 2 ? 3 : 0; /* both code paths: sorted list and all-vocab */
		sampler *s = mk(&p, V);
		long counts[V];
		double prob[V];
		count_draws(s, l, V, N, counts);
		ref_probs(l, V, cases[i].temp, p.top_k, 1, cases[i].min_p, prob);
		assert_matches(counts, prob, V, N);
		sampler_destroy(s);
	}
}

Test(sampler, all_truncations_against_reference)
{
	/* Random logits and random knobs on a 60-token vocab, against the
	   full-sort reference. */
	enum { V = 60, N = 40000 };
	for (int c = 0; c < 12; c++) {
		float l[V];
		for (int i = 0; i < V; i++)
			l[i] = (float)(int)(trng_logit(2) * 4) / 4; /* some ties */
		l[c] = -INFINITY;
		sampler_params p = seeded(900 + c);
		p.temperature = 0.3f + 1.5f * (float)trng_unit();
		p.top_k = (c % 3 == 0) ? 0 : 1 + (int)(trng() % 30);
		p.top_p = (c % 4 == 1) ? 1.0f : 0.3f + 0.69f * (float)trng_unit();
		p.min_p = (c % 2) ? 0.0f : 0.1f * (float)trng_unit();
		sampler *s = mk(&p, V);
		long counts[V];
		double prob[V];
		count_draws(s, l, V, N, counts);
		ref_probs(l, V, p.temperature, p.top_k, p.top_p, p.min_p, prob);
		assert_matches(counts, prob, V, N);
		sampler_destroy(s);
	}
}

/* ---- penalties --------------------------------------------------------- */

/* Steps 1-5 of sampler.c, the slow obvious way, with the same float
   operations in the same order (so greedy results must match exactly). */
static void ref_process(const float *l, int V, const sampler_params *p, const int32_t *prompt,
			int np, const int32_t *gen, int ng, float *z)
{
	int *cnt = calloc((size_t)V, sizeof *cnt);
	char *in_win = calloc((size_t)V, 1);
	for (int i = 0; i < V; i++)
		z[i] = isnan(l[i]) ? -INFINITY : l[i] == INFINITY ? FLT_MAX : l[i];
	if (p->repetition_penalty != 1 && p->penalty_last_n != 0) {
		int total = np + ng;
		int start = p->penalty_last_n < 0 || total <= p->penalty_last_n
				    ? 0 : total - p->penalty_last_n;
		for (int j = start; j < total; j++)
			in_win[j < np ? prompt[j] : gen[j - np]] = 1;
	}
	for (int j = 0; j < ng; j++)
		cnt[gen[j]]++;
	bool gen_on = p->frequency_penalty != 0 || p->presence_penalty != 0;
	for (int i = 0; i < V; i++) {
		float v = z[i];
		if (in_win[i])
			v = v > 0 ? v / p->repetition_penalty : v * p->repetition_penalty;
		if (gen_on && cnt[i] > 0)
			v -= p->frequency_penalty * (float)cnt[i] + p->presence_penalty;
		z[i] = v;
	}
	for (int j = 0; j < p->n_logit_bias; j++)
		z[p->logit_bias[j].id] += p->logit_bias[j].bias;
	if (ng < p->min_tokens)
		for (int j = 0; j < p->n_eog_ids; j++)
			z[p->eog_ids[j]] = -INFINITY;
	free(in_win);
	free(cnt);
}

Test(sampler, greedy_with_everything_matches_reference)
{
	/* Random knobs, random rows, many steps: the sparse patching and the
	   argmax fix-up in sampler.c against processing every token. */
	enum { V = 300, NP = 40, NG = 150 };
	for (int c = 0; c < 8; c++) {
		int32_t prompt[NP], gen[NG], eog[3] = { 7, 8, 9 };
		sampler_bias bias[6];
		for (int i = 0; i < 6; i++)
			bias[i] = (sampler_bias){ (int32_t)(trng() % 20), trng_logit(2) };
		sampler_params p = seeded(c);
		p.temperature = 0;
		p.repetition_penalty = (c & 1) ? 1.5f : 0.7f; /* < 1 rewards repeats */
		p.penalty_last_n = c % 4 == 3 ? -1 : 5 + c * 4;
		p.frequency_penalty = (c & 2) ? 0.3f : -0.2f;
		p.presence_penalty = (c & 4) ? 0.5f : 0.0f;
		p.logit_bias = bias;
		p.n_logit_bias = 6;
		p.eog_ids = eog;
		p.n_eog_ids = 3;
		p.min_tokens = 20;
		sampler *s = mk(&p, V);
		for (int i = 0; i < NP; i++)
			prompt[i] = (int32_t)(trng() % 30); /* few distinct: collisions */
		cr_assert(eq(int, sampler_accept_prompt(s, prompt, NP), 0));
		float l[V], z[V];
		for (int t = 0; t < NG; t++) {
			for (int i = 0; i < V; i++)
				l[i] = (float)(int)(trng_logit(2) * 2) / 2;
			for (int i = 0; i < 30; i++)
				l[i] += 3; /* keep the penalized ids in contention */
			ref_process(l, V, &p, prompt, NP, gen, t, z);
			int32_t want = sampler_argmax(z, V), got = one(s, l);
			cr_assert(eq(i32, got, want), "case %d step %d", c, t);
			gen[t] = got;
			cr_assert(eq(int, sampler_accept(s, got), 0));
		}
		cr_assert(eq(int, sampler_check(s), 0));
		sampler_destroy(s);
	}
}

Test(sampler, penalties_then_truncation_against_reference)
{
	enum { V = 40, NP = 12, NG = 6, N = 40000 };
	for (int c = 0; c < 6; c++) {
		int32_t prompt[NP], gen[NG], eog[1] = { 3 };
		sampler_bias bias[2] = { { 5, 1.5f }, { 6, -2.0f } };
		sampler_params p = seeded(300 + c);
		p.temperature = 0.5f + (float)c * 0.3f;
		p.top_k = c % 3 == 0 ? 0 : 10 + c;
		p.top_p = c % 2 ? 0.8f : 1.0f;
		p.min_p = c == 4 ? 0.05f : 0;
		p.repetition_penalty = 1.3f;
		p.penalty_last_n = 8;
		p.frequency_penalty = 0.4f;
		p.presence_penalty = 0.3f;
		p.logit_bias = bias;
		p.n_logit_bias = 2;
		p.eog_ids = eog;
		p.n_eog_ids = 1;
		p.min_tokens = c < 3 ? 10 : 0;
		sampler *s = mk(&p, V);
		for (int i = 0; i < NP; i++)
			prompt[i] = (int32_t)(trng() % 12);
		for (int i = 0; i < NG; i++)
			gen[i] = (int32_t)(trng() % 12);
		cr_assert(eq(int, sampler_accept_prompt(s, prompt, NP), 0));
		for (int i = 0; i < NG; i++)
			cr_assert(eq(int, sampler_accept(s, gen[i]), 0));
		float l[V], z[V];
		for (int i = 0; i < V; i++)
			l[i] = trng_logit(1.5f) + (i < 12 ? 1.0f : 0.0f);
		ref_process(l, V, &p, prompt, NP, gen, NG, z);
		long counts[V];
		double prob[V];
		count_draws(s, l, V, N, counts);
		ref_probs(z, V, p.temperature, p.top_k, p.top_p, p.min_p, prob);
		assert_matches(counts, prob, V, N);
		sampler_destroy(s);
	}
}

Test(sampler, large_top_k_uses_quickselect_and_agrees)
{
	/* top_k above the heap's limit goes through compaction + quickselect;
	   both sides of the limit must keep exactly the reference set. */
	enum { V = 20000, N = 1000 };
	static float l[V];
	static double prob[V];
	static long counts[V];
	for (int i = 0; i < V; i++)
		l[i] = (float)(int)(trng_logit(2) * 8) / 8; /* heavy ties */
	const int ks[] = { 1023, 1024, 1025, 9000 }; /* sampler.c's HEAP_MAX is 1024 */
	for (size_t c = 0; c < sizeof ks / sizeof *ks; c++) {
		sampler_params p = seeded(70 + c);
		p.temperature = 5; /* flat enough that the whole top-k set is drawn from */
		p.top_k = ks[c];
		sampler *s = mk(&p, V);
		count_draws(s, l, V, N, counts);
		ref_probs(l, V, p.temperature, p.top_k, 1, 0, prob);
		int kept = 0;
		for (int i = 0; i < V; i++) {
			kept += prob[i] > 0;
			cr_assert(counts[i] == 0 || prob[i] > 0, "k %d: token %d outside top-k",
				  ks[c], i);
		}
		cr_assert(eq(int, kept, ks[c]));
		sampler_destroy(s);
	}
}


Test(sampler, repetition_penalty_divides_positive_multiplies_negative)
{
	sampler_params p = seeded(1);
	p.temperature = 0;
	p.repetition_penalty = 2;
	/* token 0 seen: 3.0 -> 1.5, so 1.49 loses and 1.51 wins */
	int32_t prompt[] = { 0 };
	float a[] = { 3.0f, 1.49f }, b[] = { 3.0f, 1.51f };
	sampler *s = mk(&p, 2);
	cr_assert(eq(int, sampler_accept_prompt(s, prompt, 1), 0));
	cr_assert(eq(i32, one(s, a), 0));
	cr_assert(eq(i32, one(s, b), 1));
	/* negative: -1 -> -2, so -1.5 now wins (dividing would give -0.5) */
	float c[] = { -1.0f, -1.5f };
	cr_assert(eq(i32, one(s, c), 1));
	cr_assert(eq(int, sampler_check(s), 0));
	sampler_destroy(s);
}

Test(sampler, repetition_window_is_last_n_prompt_and_output)
{
	sampler_params p = seeded(1);
	p.temperature = 0;
	p.repetition_penalty = 10;
	p.penalty_last_n = 2;
	sampler *s = mk(&p, 4);
	float l[] = { 1.0f, 0.9f, 0.5f, 0.0f };
	int32_t prompt[] = { 0, 3 };
	cr_assert(eq(int, sampler_accept_prompt(s, prompt, 2), 0));
	cr_assert(eq(i32, one(s, l), 1));          /* 0 penalized (0.1) */
	cr_assert(eq(int, sampler_accept(s, 1), 0)); /* window {3, 1}: 0 leaves */
	cr_assert(eq(i32, one(s, l), 0));
	cr_assert(eq(int, sampler_check(s), 0));
	cr_assert(eq(int, sampler_accept(s, 2), 0)); /* window {1, 2} */
	cr_assert(eq(i32, one(s, l), 0));
	cr_assert(eq(int, sampler_accept(s, 0), 0)); /* window {2, 0} */
	cr_assert(eq(i32, one(s, l), 1));
	cr_assert(eq(int, sampler_check(s), 0));
	sampler_destroy(s);

	/* -1: everything accepted stays; 0: off */
	p.penalty_last_n = -1;
	s = mk(&p, 4);
	int32_t long_prompt[100];
	long_prompt[0] = 0;
	for (int i = 1; i < 100; i++)
		long_prompt[i] = 3;
	cr_assert(eq(int, sampler_accept_prompt(s, long_prompt, 100), 0));
	cr_assert(eq(i32, one(s, l), 1));
	cr_assert(eq(int, sampler_check(s), 0));
	sampler_destroy(s);
	p.penalty_last_n = 0;
	s = mk(&p, 4);
	cr_assert(eq(int, sampler_accept_prompt(s, long_prompt, 100), 0));
	cr_assert(eq(i32, one(s, l), 0));
	sampler_destroy(s);
}

Test(sampler, frequency_and_presence_count_generated_tokens_only)
{
	struct {
		float freq, pres;
		int32_t want;
	} cases[] = {
		/* token 0 generated twice: 5 - 2 freq - pres vs 3.9 */
		{ 0.5f, 0, 0 },    /* 4.0 */
		{ 0.6f, 0, 1 },    /* 3.8 */
		{ 0, 1.0f, 0 },    /* 4.0 */
		{ 0, 1.2f, 1 },    /* 3.8 */
		{ 0.5f, 0.5f, 1 }, /* 3.5 */
		{ -1.0f, 0, 0 },   /* 7.0: negative values reward repeats */
	};
	float l[] = { 5.0f, 3.9f, 0.0f };
	int32_t prompt[] = { 0, 0, 0, 0, 0, 0 };
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		sampler_params p = seeded(1);
		p.temperature = 0;
		p.frequency_penalty = cases[c].freq;
		p.presence_penalty = cases[c].pres;
		p.penalty_last_n = 1; /* does not window these two */
		sampler *s = mk(&p, 3);
		cr_assert(eq(int, sampler_accept_prompt(s, prompt, 6), 0));
		cr_assert(eq(i32, one(s, l), 0), "prompt tokens must not count");
		cr_assert(eq(int, sampler_accept(s, 0), 0));
		cr_assert(eq(int, sampler_accept(s, 0), 0));
		cr_assert(eq(int, sampler_accept(s, 2), 0));
		cr_assert(eq(int, sampler_accept(s, 2), 0));
		cr_assert(eq(i32, one(s, l), cases[c].want), "case %zu", c);
		cr_assert(eq(i64, sampler_n_generated(s), 4));
		cr_assert(eq(int, sampler_check(s), 0));
		sampler_destroy(s);
	}
}

Test(sampler, penalty_bookkeeping_survives_a_long_run)
{
	enum { V = 50 };
	sampler_params p = seeded(11);
	p.repetition_penalty = 1.3f;
	p.penalty_last_n = 7;
	p.frequency_penalty = 0.1f;
	p.presence_penalty = 0.1f;
	sampler *s = mk(&p, V);
	int32_t prompt[20];
	for (int i = 0; i < 20; i++)
		prompt[i] = (int32_t)(trng() % V);
	cr_assert(eq(int, sampler_accept_prompt(s, prompt, 20), 0));
	float l[V];
	for (int t = 0; t < 2000; t++) {
		for (int i = 0; i < V; i++)
			l[i] = trng_logit(1);
		cr_assert(eq(int, sampler_accept(s, one(s, l)), 0));
		if (t % 97 == 0)
			cr_assert(eq(int, sampler_check(s), 0));
	}
	cr_assert(eq(int, sampler_check(s), 0));
	cr_assert(eq(int, sampler_accept(s, V), ERR_INVAL));
	cr_assert(eq(int, sampler_accept(s, -1), ERR_INVAL));
	int32_t bad[] = { 1, 2, V };
	cr_assert(eq(int, sampler_accept_prompt(s, bad, 3), ERR_INVAL));
	cr_assert(eq(int, sampler_accept_prompt(s, bad, -1), ERR_INVAL));
	cr_assert(eq(int, sampler_accept_prompt(s, NULL, 0), 0));
	cr_assert(eq(i64, sampler_n_generated(s), 2000));
	cr_assert(eq(int, sampler_check(s), 0));
	sampler_destroy(s);
}

/* ---- bias, min_tokens -------------------------------------------------- */

Test(sampler, logit_bias_adds_and_bans)
{
	float l[] = { 1.0f, 0.0f, 0.0f };
	sampler_bias b[] = { { 2, 0.6f }, { 2, 0.6f }, { 0, -INFINITY } };
	sampler_params p = seeded(1);
	p.temperature = 0;
	p.logit_bias = b;
	p.n_logit_bias = 1;
	sampler *s = mk(&p, 3);
	cr_assert(eq(i32, one(s, l), 0)); /* 0.6 < 1 */
	sampler_destroy(s);
	p.n_logit_bias = 2;             /* entries add: 1.2 > 1 */
	s = mk(&p, 3);
	b[0].bias = 99; /* create copied the list */
	cr_assert(eq(i32, one(s, l), 2));
	sampler_destroy(s);

	p.logit_bias = &b[2];
	p.n_logit_bias = 1;
	p.temperature = 1;
	s = mk(&p, 3);
	long counts[3];
	count_draws(s, l, 3, 5000, counts);
	cr_assert(eq(long, counts[0], 0));
	cr_assert(counts[1] > 2000 && counts[2] > 2000);
	sampler_destroy(s);
}

Test(sampler, min_tokens_bans_eog_until_reached)
{
	float l[] = { 5.0f, 0.0f, 4.0f, 1.0f };
	int32_t eog[] = { 0, 2 };
	sampler_params p = seeded(1);
	p.temperature = 0;
	p.eog_ids = eog;
	p.n_eog_ids = 2;
	p.min_tokens = 2;
	sampler *s = mk(&p, 4);
	cr_assert(eq(i32, one(s, l), 3));
	cr_assert(eq(int, sampler_accept(s, 3), 0));
	cr_assert(eq(i32, one(s, l), 3));
	cr_assert(eq(int, sampler_accept(s, 3), 0));
	cr_assert(eq(i32, one(s, l), 0)); /* two generated: ban lifted */
	sampler_destroy(s);

	/* sampling, not just greedy; prompt tokens do not count */
	p.temperature = 1.5f;
	p.min_tokens = 1;
	s = mk(&p, 4);
	int32_t prompt[] = { 1, 1, 1 };
	cr_assert(eq(int, sampler_accept_prompt(s, prompt, 3), 0));
	long counts[4];
	count_draws(s, l, 4, 5000, counts);
	cr_assert(counts[0] == 0 && counts[2] == 0);
	cr_assert(eq(int, sampler_accept(s, 1), 0));
	count_draws(s, l, 4, 5000, counts);
	cr_assert(counts[0] > 0 && counts[2] > 0);
	sampler_destroy(s);

	/* min_tokens with nothing but EOG ids left: a clean error */
	float only[] = { 1.0f, 2.0f };
	int32_t both[] = { 0, 1 };
	p = seeded(1);
	p.eog_ids = both;
	p.n_eog_ids = 2;
	p.min_tokens = 1;
	s = mk(&p, 2);
	sampler_out o;
	cr_assert(eq(int, sampler_sample(s, only, &o), ERR_INVAL));
	cr_assert(eq(i32, o.id, -1));
	sampler_destroy(s);
}

/* ---- logprobs ---------------------------------------------------------- */

Test(sampler, logprobs_are_log_softmax_of_raw_logits)
{
	enum { V = 5 };
	const float l[V] = { 1.0f, 2.0f, 3.0f, 0.5f, 2.0f };
	double lse = 0;
	for (int i = 0; i < V; i++)
		lse += exp((double)l[i]);
	lse = log(lse);

	sampler_params p = seeded(1);
	p.temperature = 0.7f;
	p.repetition_penalty = 1.8f; /* must not show in the logprobs */
	p.frequency_penalty = 1.0f;
	sampler_bias b = { 3, 2.0f };
	p.logit_bias = &b;
	p.n_logit_bias = 1;
	p.logprobs = true;
	p.top_logprobs = 4;
	sampler *s = mk(&p, V);
	cr_assert(eq(int, sampler_accept(s, 2), 0));
	for (int t = 0; t < 50; t++) {
		sampler_out o;
		cr_assert(eq(int, sampler_sample(s, l, &o), 0));
		cr_assert(fabs(o.logprob - ((double)l[o.id] - lse)) < 1e-6,
			  "id %d: logprob %.9f want %.9f", o.id, (double)o.logprob,
			  (double)l[o.id] - lse);
		cr_assert(eq(i32, o.n_top, 4));
		const int32_t want_ids[] = { 2, 1, 4, 0 }; /* 1 and 4 tie: lower id first */
		for (int i = 0; i < 4; i++) {
			cr_assert(eq(i32, o.top[i].id, want_ids[i]));
			cr_assert(fabs(o.top[i].logprob - ((double)l[want_ids[i]] - lse)) < 1e-6);
		}
	}
	sampler_destroy(s);

	/* top_logprobs larger than the vocab; logprobs off means zeros */
	p = seeded(2);
	p.top_logprobs = 20;
	s = mk(&p, 3);
	sampler_out o;
	cr_assert(eq(int, sampler_sample(s, l, &o), 0));
	cr_assert(eq(i32, o.n_top, 3));
	cr_assert(fabs(o.logprob) > 0); /* top_logprobs implies logprobs */
	sampler_destroy(s);
	p = seeded(2);
	s = mk(&p, 3);
	cr_assert(eq(int, sampler_sample(s, l, &o), 0));
	cr_assert(o.logprob == 0 && o.n_top == 0);
	sampler_destroy(s);
}

/* ---- parameter errors -------------------------------------------------- */

static void expect_bad(const sampler_params *p, int n_vocab, const char *field)
{
	char err[ERR_LEN] = "";
	cr_assert(eq(int, sampler_params_validate(p, n_vocab, err), ERR_INVAL), "field %s", field);
	cr_assert(strncmp(err, field, strlen(field)) == 0, "error \"%s\" should name %s", err, field);
	err[0] = '\0';
	cr_assert(sampler_create(p, n_vocab, err) == NULL);
	cr_assert(strncmp(err, field, strlen(field)) == 0, "error \"%s\" should name %s", err, field);
}

#define BAD(assign, field)                                   \
	do {                                                 \
		sampler_params bp = sampler_params_default(); \
		bp.assign;                                   \
		expect_bad(&bp, 100, field);                 \
	} while (0)

Test(sampler, invalid_params_name_the_field)
{
	BAD(temperature = -0.1f, "temperature");
	BAD(temperature = NAN, "temperature");
	BAD(temperature = INFINITY, "temperature");
	BAD(top_k = -2, "top_k");
	BAD(top_p = 0, "top_p");
	BAD(top_p = 1.01f, "top_p");
	BAD(top_p = NAN, "top_p");
	BAD(min_p = -0.01f, "min_p");
	BAD(min_p = 1.5f, "min_p");
	BAD(min_p = NAN, "min_p");
	BAD(repetition_penalty = 0, "repetition_penalty");
	BAD(repetition_penalty = -1, "repetition_penalty");
	BAD(repetition_penalty = NAN, "repetition_penalty");
	BAD(repetition_penalty = INFINITY, "repetition_penalty");
	BAD(penalty_last_n = -2, "penalty_last_n");
	BAD(penalty_last_n = SAMPLER_MAX_LAST_N + 1, "penalty_last_n");
	BAD(frequency_penalty = 2.5f, "frequency_penalty");
	BAD(frequency_penalty = -2.5f, "frequency_penalty");
	BAD(frequency_penalty = NAN, "frequency_penalty");
	BAD(presence_penalty = 3, "presence_penalty");
	BAD(presence_penalty = NAN, "presence_penalty");
	BAD(min_tokens = -1, "min_tokens");
	BAD(top_logprobs = -1, "top_logprobs");
	BAD(top_logprobs = SAMPLER_MAX_TOP_LOGPROBS + 1, "top_logprobs");
	BAD(n_logit_bias = -1, "logit_bias");
	BAD(n_logit_bias = 2, "logit_bias"); /* NULL list */
	BAD(n_eog_ids = 1, "eog_ids");

	sampler_bias hi = { 100, 1 }, neg = { -1, 1 }, nan_b = { 5, NAN };
	BAD(logit_bias = &hi; bp.n_logit_bias = 1, "logit_bias");
	BAD(logit_bias = &neg; bp.n_logit_bias = 1, "logit_bias");
	BAD(logit_bias = &nan_b; bp.n_logit_bias = 1, "logit_bias");
	int32_t eog_bad[] = { 3, 100 };
	BAD(eog_ids = eog_bad; bp.n_eog_ids = 2, "eog_ids");

	sampler_params p = sampler_params_default();
	expect_bad(&p, 0, "sampler: n_vocab");

	/* the edges that are allowed */
	sampler_params ok[] = { sampler_params_default(), sampler_params_default(),
				sampler_params_default(), sampler_params_default() };
	ok[0].temperature = 0;
	ok[0].top_k = 0;
	ok[0].min_p = 1;
	ok[0].penalty_last_n = -1;
	ok[1].top_k = 1000000;
	ok[1].top_p = 1e-9f;
	ok[1].frequency_penalty = -2;
	ok[1].presence_penalty = 2;
	ok[1].penalty_last_n = SAMPLER_MAX_LAST_N;
	ok[1].repetition_penalty = 1e-3f;
	ok[2].top_logprobs = SAMPLER_MAX_TOP_LOGPROBS;
	ok[2].min_tokens = 1 << 30;
	ok[3].penalty_last_n = 0;
	ok[3].repetition_penalty = 1.5f;
	for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
		char err[ERR_LEN] = "";
		cr_assert(eq(int, sampler_params_validate(&ok[i], 100, err), 0), "ok[%zu]: %s", i, err);
		sampler *s = mk(&ok[i], 100);
		sampler_destroy(s);
	}
}

/* ---- non-finite logits ------------------------------------------------- */

Test(sampler, nan_and_inf_logits)
{
	float l[] = { 1.0f, NAN, 2.0f, NAN, 0.5f };
	sampler_params g = seeded(1);
	g.temperature = 0;
	g.logprobs = true;
	sampler *s = mk(&g, 5);
	cr_assert(eq(i32, one(s, l), 2));
	sampler_destroy(s);

	sampler_params p = seeded(2);
	p.top_p = 0.99f;
	p.logprobs = true;
	p.top_logprobs = 5;
	s = mk(&p, 5);
	long counts[5];
	count_draws(s, l, 5, 5000, counts);
	cr_assert(counts[1] == 0 && counts[3] == 0 && counts[0] > 0 && counts[2] > 0);
	sampler_out o;
	cr_assert(eq(int, sampler_sample(s, l, &o), 0));
	cr_assert(isfinite(o.logprob));
	cr_assert(eq(i32, o.top[3].id, 1)); /* NaN ranks as -inf, by id */
	cr_assert(isinf(o.top[3].logprob) && o.top[3].logprob < 0);

	/* +inf takes all the mass, shared between the +inf tokens */
	float inf2[] = { 3.0f, INFINITY, 1e30f, INFINITY, NAN };
	count_draws(s, inf2, 5, 10000, counts);
	cr_assert(counts[0] == 0 && counts[2] == 0 && counts[4] == 0);
	cr_assert(counts[1] > 4500 && counts[3] > 4500, "%ld / %ld", counts[1], counts[3]);

	/* all NaN: a clean error, no token */
	float bad[] = { NAN, NAN, NAN, NAN, NAN };
	cr_assert(eq(int, sampler_sample(s, bad, &o), ERR_INVAL));
	cr_assert(eq(i32, o.id, -1));
	sampler_destroy(s);

	s = mk(&g, 5);
	cr_assert(eq(int, sampler_sample(s, bad, &o), ERR_INVAL));
	float neg[] = { -INFINITY, -INFINITY, -1e38f, -INFINITY, -INFINITY };
	cr_assert(eq(i32, one(s, neg), 2));
	sampler_destroy(s);

	/* extreme temperatures stay finite and pick sensibly */
	float e[] = { 1.0f, 1.0001f, -3.0f };
	p = seeded(3);
	p.temperature = 1e-30f;
	s = mk(&p, 3);
	for (int i = 0; i < 100; i++)
		cr_assert(eq(i32, one(s, e), 1));
	sampler_destroy(s);
	p.temperature = 1e30f;
	s = mk(&p, 3);
	count_draws(s, e, 3, 9000, counts);
	for (int i = 0; i < 3; i++)
		cr_assert(counts[i] > 2600, "temperature 1e30 should be uniform: %ld", counts[i]);
	sampler_destroy(s);
}

/* ---- a real vocabulary size -------------------------------------------- */

Test(sampler, large_vocab_works_and_matches_reference_sets, .timeout = 60)
{
	enum { V = 152064, T = 30 };
	float *l = malloc(V * sizeof *l);
	double *prob = malloc(V * sizeof *prob);
	for (int i = 0; i < V; i++)
		l[i] = trng_logit(3);
	l[777] = 25; /* a confident token, as real models have */
	l[1234] = 23;

	struct {
		const char *name;
		float temp, top_p, min_p;
		int top_k;
	} cases[] = {
		{ "greedy", 0, 1, 0, 0 },
		{ "temperature only", 1, 1, 0, 0 },
		{ "top_p 0.95", 0.8f, 0.95f, 0, 0 },
		{ "top_k 40", 0.8f, 1, 0, 40 },
		{ "top_k 40 + top_p 0.9", 1.0f, 0.9f, 0, 40 },
		{ "min_p 0.05", 1.0f, 1, 0.05f, 0 },
		{ "flat top_p 0.99", 30.0f, 0.99f, 0, 0 }, /* nucleus ~ whole vocab */
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		sampler_params p = seeded(c + 1);
		p.temperature = cases[c].temp;
		p.top_p = cases[c].top_p;
		p.min_p = cases[c].min_p;
		p.top_k = cases[c].top_k;
		sampler *s = mk(&p, V);
		if (cases[c].temp > 0)
			ref_probs(l, V, cases[c].temp, cases[c].top_k, cases[c].top_p,
				  cases[c].min_p, prob);
		int64_t t0 = clock_now_ns();
		for (int t = 0; t < T; t++) {
			int32_t id = one(s, l);
			if (cases[c].temp == 0)
				cr_assert(eq(i32, id, 777));
			else
				cr_assert(prob[id] > 0, "%s: drew %d outside the kept set",
					  cases[c].name, id);
		}
		double us = (double)(clock_now_ns() - t0) / T / 1e3;
		cr_log_info("sampler n_vocab %d, %s: %.0f us/sample", V, cases[c].name, us);
		sampler_destroy(s);
	}

	/* all penalties and logprobs on, window over a long prompt */
	sampler_params p = seeded(9);
	p.temperature = 0.7f;
	p.top_p = 0.9f;
	p.repetition_penalty = 1.1f;
	p.frequency_penalty = 0.5f;
	p.presence_penalty = 0.5f;
	p.penalty_last_n = -1;
	p.logprobs = true;
	p.top_logprobs = 5;
	sampler *s = mk(&p, V);
	int32_t *prompt = malloc(4096 * sizeof *prompt);
	for (int i = 0; i < 4096; i++)
		prompt[i] = (int32_t)(trng() % V);
	cr_assert(eq(int, sampler_accept_prompt(s, prompt, 4096), 0));
	int64_t t0 = clock_now_ns();
	for (int t = 0; t < T; t++) {
		sampler_out o;
		cr_assert(eq(int, sampler_sample(s, l, &o), 0));
		cr_assert(eq(i32, o.top[0].id, 777));
		cr_assert(eq(int, sampler_accept(s, o.id), 0));
	}
	cr_log_info("sampler n_vocab %d, penalties + logprobs: %.0f us/sample", V,
		    (double)(clock_now_ns() - t0) / T / 1e3);
	cr_assert(eq(int, sampler_check(s), 0));
	sampler_destroy(s);
	free(prompt);
	free(prob);
	free(l);
}

/* ---- failed allocations ------------------------------------------------ */

Test(sampler, create_cleans_up_after_each_failed_allocation)
{
	sampler_bias b = { 1, 1 };
	int32_t eog[] = { 2 };
	sampler_params p = seeded(1);
	p.repetition_penalty = 1.1f;
	p.frequency_penalty = 0.1f;
	p.logit_bias = &b;
	p.n_logit_bias = 1;
	p.eog_ids = eog;
	p.n_eog_ids = 1;
	alloc_fail_after(-1);
	sampler *s = mk(&p, 1000);
	sampler_destroy(s);
	long n = alloc_fail_after(-1);
	cr_assert(n >= 8, "expected every buffer to be allocated, saw %ld", n);
	for (long i = 0; i < n; i++) {
		char err[ERR_LEN] = "";
		alloc_fail_after(i);
		s = sampler_create(&p, 1000, err);
		alloc_fail_after(-1);
		cr_assert(s == NULL, "allocation %ld failed but create succeeded", i);
		cr_assert(strstr(err, "out of memory") != NULL, "err: %s", err);
	}
}
