/* sampler.h - turns one row of logits into the next token of one request.
 *
 * One sampler per request. It holds the request's sampling parameters, its
 * penalty window (tokens seen so far), its generated-token count (for
 * min_tokens) and its own random stream. Parameters follow the OpenAI /
 * SGLang request fields; sampler.c's top comment gives the exact order of
 * operations and which tokens each penalty counts.
 *
 * Life of a request:
 *
 *   s = sampler_create(&p, n_vocab, err)
 *   sampler_accept_prompt(s, prompt, n_prompt)     feeds the repetition window
 *   loop:
 *     sampler_sample(s, logits, &out)              does not change the window
 *     sampler_accept(s, out.id)                    the token the request keeps
 *   sampler_destroy(s)
 *
 * sampler_sample() never records the token itself: the caller accepts the
 * token it keeps (so a caller that discards a sample, e.g. a rejected draft
 * token, leaves the state untouched).
 *
 * Determinism: with has_seed, the same params, the same accepted tokens and the
 * same logits rows give the same tokens on every machine (one uniform draw per
 * non-greedy sample; no threads, no SIMD dispatch in here). Without a seed the
 * stream is drawn from a process-wide source; sampler_seed() reports it so a
 * run can be replayed.
 *
 * Threads: a sampler is used by one thread at a time. Creating samplers
 * concurrently is fine.
 */
#ifndef PDSERVE_ENGINE_SAMPLER_H
#define PDSERVE_ENGINE_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"

#define SAMPLER_MAX_TOP_LOGPROBS 20    /* OpenAI's top_logprobs limit */
#define SAMPLER_MAX_LAST_N (1 << 20)   /* largest penalty_last_n window */

typedef struct sampler sampler;

typedef struct {
	int32_t id;
	float bias; /* added to the logit; -INFINITY bans the token; not NaN */
} sampler_bias;

/* Plain config, filled from a request. Range errors from
   sampler_params_validate() name the field as spelled here. */
typedef struct {
	float temperature;        /* >= 0, finite; 0 = greedy (argmax) */
	int32_t top_k;            /* 0 or -1 = off; else >= 1 */
	float top_p;              /* (0, 1]; 1 = off */
	float min_p;              /* [0, 1]; 0 = off */
	bool has_seed;            /* false: seed drawn from a process-wide source */
	uint64_t seed;

	float repetition_penalty; /* > 0, finite; 1 = off. Over the window below */
	int32_t penalty_last_n;   /* repetition window: last n accepted tokens
	                             (prompt + generated); -1 = all; 0 = off;
	                             at most SAMPLER_MAX_LAST_N */
	float frequency_penalty;  /* [-2, 2]; 0 = off. Over all generated tokens */
	float presence_penalty;   /* [-2, 2]; 0 = off. Over all generated tokens */

	const sampler_bias *logit_bias; /* [n_logit_bias], borrowed by create only;
	                                   entries for the same id add up */
	int32_t n_logit_bias;

	const int32_t *eog_ids;   /* [n_eog_ids], borrowed by create only: every id
	                             that ends generation (model EOG + request
	                             stop_token_ids); banned until min_tokens */
	int32_t n_eog_ids;
	int32_t min_tokens;       /* >= 0: eog_ids get logit -inf while fewer than
	                             this many tokens were sampler_accept()ed */

	bool logprobs;            /* fill sampler_out.logprob */
	int32_t top_logprobs;     /* [0, SAMPLER_MAX_TOP_LOGPROBS]; > 0 also fills
	                             sampler_out.top (and implies logprobs) */
} sampler_params;

/* temperature 1, top_k -1, top_p 1, min_p 0, no seed, repetition_penalty 1,
   penalty_last_n 64, frequency/presence 0, no bias, no EOG ids, min_tokens 0,
   no logprobs. */
sampler_params sampler_params_default(void);

/* Check every field against its range, ids against [0, n_vocab). Returns 0 or
   ERR_INVAL with one sentence naming the field ("top_p: 1.5 is outside
   (0, 1]"), for an HTTP 400. Allocates nothing. */
int sampler_params_validate(const sampler_params *p, int n_vocab, char err[ERR_LEN]);

typedef struct {
	int32_t id;
	float logprob;
} sampler_logprob;

typedef struct {
	int32_t id;       /* the sampled token; -1 when sampler_sample fails */
	/* Log-probabilities are log-softmax of the logits as passed in: before
	   penalties, logit_bias, the EOG ban, temperature and truncation (vLLM's
	   default "raw" logprobs; see sampler.c on how SGLang differs). NaN logits
	   count as -inf. May be -INFINITY, which JSON cannot carry: the
	   serializer decides how to print it. Zero / empty when not requested. */
	float logprob;    /* of id */
	int32_t n_top;    /* min(top_logprobs, n_vocab) */
	sampler_logprob top[SAMPLER_MAX_TOP_LOGPROBS]; /* by logprob desc, then id asc */
} sampler_out;

/* Validate p (as sampler_params_validate) and allocate every buffer the
   request will need, sized by n_vocab, so sample and accept never allocate.
   Copies logit_bias and eog_ids. NULL on failure with one sentence in err
   (a bad field, or out of memory). */
sampler *sampler_create(const sampler_params *p, int n_vocab, char err[ERR_LEN]);
void     sampler_destroy(sampler *s); /* NULL is fine */

/* Feed prompt tokens ids[0..n) into the repetition window (they count for
   repetition_penalty only, not for frequency/presence or min_tokens). Call
   before the first sample; calling again appends. Returns 0, or ERR_INVAL
   for n < 0 or any id outside [0, n_vocab), in which case nothing was
   recorded. */
int sampler_accept_prompt(sampler *s, const int32_t *ids, int n);

/* Record a generated token the request keeps: repetition window, frequency/
   presence counts, min_tokens count. Returns 0, or ERR_INVAL for an id
   outside [0, n_vocab) (nothing recorded). */
int sampler_accept(sampler *s, int32_t id);

/* Pick the next token from logits [n_vocab] (not modified, borrowed for the
   call) and fill *out (required). Allocation-free; a few linear passes over
   the vocab, sorting only the candidates top_p walks through (sampler.c,
   "Speed"). Returns 0, or ERR_INVAL
   when no token is left above -inf after NaNs, bans and biases (all-NaN
   logits, say); then out->id is -1. */
int sampler_sample(sampler *s, const float *logits, sampler_out *out);

/* Tokens sampler_accept()ed so far. */
int64_t sampler_n_generated(const sampler *s);

/* The seed the random stream started from (the request's, or the drawn one). */
uint64_t sampler_seed(const sampler *s);

/* Invariants of the penalty bookkeeping; 0, or ERR_INVAL after logging which
   one broke. O(n_vocab): for tests and debug builds. */
int sampler_check(const sampler *s);

/* Lowest index of the largest value in logits [n]; NaN never wins. -1 when
   n < 1 or every value is NaN. */
int32_t sampler_argmax(const float *logits, int n);

#endif
