/* workload.h - what `pdserve bench serving` sends, and when.
 *
 * A workload is a list of requests (prompt text, optionally its token ids,
 * the prompt's token count and the output length to ask for) plus their
 * arrival times. Three datasets, as SGLang's bench_serving defines them:
 *
 *   random      prompt lengths uniform in [max(floor(L*r), 1), L], output
 *               lengths uniform in [max(floor(O*r), 1), O] (SGLang allows an
 *               output of 0 tokens; we ask for at least 1). Prompts are real
 *               token sequences of the target's tokenizer whose text
 *               re-tokenizes to exactly the drawn length (see
 *               workload_exact_texts); their source is random ordinary
 *               vocabulary tokens, or ShareGPT prompts repeated/truncated
 *               when a dataset path is given (SGLang's source).
 *   sharegpt    the first two turns of each conversation with >= 2 turns,
 *               shuffled; prompt = turn 1, output length = turn 2's token
 *               count (or a fixed --sharegpt-output-len); pairs with fewer
 *               than 2 prompt or output tokens, or longer than the context
 *               length when given, are skipped.
 *   generated-shared-prefix   G groups x P questions: each prompt is the
 *               group's system prompt, "\n\n", and its own question (both
 *               exact-length random texts), shuffled.
 *
 * Arrivals: request 0 at t = 0, then exponential gaps of mean 1/rate (a
 * Poisson process); rate = inf sends everything at t = 0.
 *
 * Tokenizers: a workload_tokenizer is either a local GGUF's (model/tokenizer)
 * or the server's /tokenize and /detokenize, batched (one HTTP call per
 * round for all prompts). Encoding parses special-token text like the
 * server does; decoding skips control tokens like the server's
 * skip_special_tokens.
 *
 * Randomness comes from one seeded workload_rng (xoshiro256**), so a seed
 * reproduces the workload byte for byte with the same tokenizer. It cannot
 * reproduce numpy's streams, so SGLang and pdserve draw different lengths
 * from the same seed; the distributions are the same.
 *
 * Left out: SGLang's mmmu/image/mooncake/burstgpt datasets, chat templates
 * applied client-side (--apply-chat-template: the chat backend lets the
 * server apply its own), multi-turn conversations.
 */
#ifndef PDSERVE_BENCH_WORKLOAD_H
#define PDSERVE_BENCH_WORKLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* ---------------------------------------------------------------- random */

typedef struct {
	uint64_t s[4];
} workload_rng;

void workload_rng_seed(workload_rng *r, uint64_t seed);
uint64_t workload_rng_next(workload_rng *r);
double workload_rng_uniform(workload_rng *r);                 /* [0, 1) */
int64_t workload_rng_int(workload_rng *r, int64_t lo, int64_t hi); /* [lo, hi], lo <= hi */
double workload_rng_exp(workload_rng *r, double rate);        /* mean 1/rate, rate > 0 */
void workload_rng_shuffle(workload_rng *r, void *base, size_t n, size_t size);

/* Arrival offsets in seconds: t[0] = 0, t[i] = t[i-1] + exp(rate); rate
   inf (or <= 0) gives all zeros. */
void workload_arrivals(workload_rng *r, double rate, size_t n, double *t);

/* SGLang's length draw: uniform integer in [max(floor(len*ratio), 1), len].
   len >= 1, ratio in [0, 1]. */
int workload_draw_len(workload_rng *r, int len, double ratio);

/* ---------------------------------------------------------------- tokenizer */

typedef struct workload_tokenizer workload_tokenizer;

/* The tokenizer of a GGUF file (vocabulary-only files work). NULL with err. */
workload_tokenizer *workload_tokenizer_open_gguf(const char *path, char err[ERR_LEN]);
/* The server at base_url ("http://host:port"): /tokenize, /detokenize,
   /get_model_info (vocab_size). api_key may be NULL. NULL with err. */
workload_tokenizer *workload_tokenizer_open_remote(const char *base_url, const char *api_key, char err[ERR_LEN]);
void workload_tokenizer_close(workload_tokenizer *t); /* NULL is fine */

int32_t workload_tokenizer_n_vocab(const workload_tokenizer *t);

/* Token counts of texts[0..n) (add_special: BOS as the vocabulary asks).
   ids may be NULL (counts only); else ids[i] is a new array owned by the
   caller (alloc_free). 0 or an error with err; on error nothing is owned. */
int workload_encode(workload_tokenizer *t, const char *const *texts, size_t n, bool add_special, int32_t **ids,
		    int *counts, char err[ERR_LEN]);
/* Texts of id lists ids[i][0..lens[i]); texts[i] new, NUL-terminated, owned
   by the caller (alloc_free). Control tokens are skipped. 0 or an error. */
int workload_decode(workload_tokenizer *t, int32_t *const *ids, const int *lens, size_t n, char **texts,
		    char err[ERR_LEN]);

/* Make texts that tokenize (without special tokens) to exactly want[i]
   tokens: start from ids[i] (want[i] of them, taken over: freed or kept),
   then decode, re-encode, cut or pad with random ordinary tokens, and
   repeat until the count is exact or `rounds` rounds have passed. texts[i]
   (owned by the caller) and got[i], the final token count (== want[i]
   unless it did not settle; out_ids[i], when out_ids is not NULL, the final
   ids, owned by the caller). Returns the number of prompts that did not
   settle (>= 0), or an error with err. */
int workload_exact_texts(workload_tokenizer *t, workload_rng *r, int32_t **ids, const int *want, size_t n,
			 int rounds, char **texts, int *got, int32_t **out_ids, char err[ERR_LEN]);

/* ---------------------------------------------------------------- datasets */

typedef struct {
	char *prompt;     /* owned: text sent (NUL-terminated) */
	int32_t *ids;     /* owned: its token ids without special tokens, or NULL */
	int n_ids;
	int prompt_len;   /* tokens the server will count for the text (special tokens included) */
	int output_len;   /* max tokens to ask for */
} workload_req;

typedef enum {
	WORKLOAD_RANDOM = 1,
	WORKLOAD_SHAREGPT = 2,
	WORKLOAD_SHARED_PREFIX = 3,
} workload_kind;

typedef struct {
	workload_kind kind;
	const char *dataset_path;  /* ShareGPT JSON; random: optional source text */
	int num_prompts;
	int random_input_len, random_output_len;
	double random_range_ratio;
	int sharegpt_output_len;   /* 0: from the dataset */
	int sharegpt_context_len;  /* 0: no limit */
	const char *prompt_suffix; /* sharegpt: appended to every prompt; NULL = none */
	int gsp_num_groups, gsp_prompts_per_group, gsp_system_prompt_len, gsp_question_len, gsp_output_len;
	uint64_t seed;
} workload_config;

typedef struct {
	workload_req *req; /* [n], owned */
	size_t n;
	int unsettled;     /* random prompts whose exact length did not settle */
} workload;

/* Build the requests (arrivals are separate: workload_arrivals). Progress
   notes go to the log. 0 or an error with err; on error w is empty. */
int workload_build(const workload_config *cfg, workload_tokenizer *t, workload *w, char err[ERR_LEN]);
void workload_free(workload *w); /* frees the requests; w may be zeroed or built */

/* ShareGPT JSON [{conversations|conversation: [{from, value}, ...]}, ...]:
   (prompt, completion) pairs of the first two turns, in file order.
   *prompts / *completions are new arrays of new strings (workload_free_strs).
   0 or an error with err (naming the file and what is wrong). */
int workload_load_sharegpt(const char *path, char ***prompts, char ***completions, size_t *n, char err[ERR_LEN]);
void workload_free_strs(char **s, size_t n);

#endif
