/* openai.h - OpenAI / SGLang request bodies in, response bodies out (json-c).
 *
 * Three generation APIs share one request struct:
 *   OPENAI_API_COMPLETIONS  POST /v1/completions       (prompt, legacy logprobs, echo)
 *   OPENAI_API_CHAT         POST /v1/chat/completions  (messages -> chat template)
 *   OPENAI_API_GENERATE     POST /generate             (SGLang native: text | input_ids,
 *                                                       sampling_params, meta_info)
 *
 * Life of a request (http.c drives it; nothing here touches the network):
 *
 *   openai_parse(api, body)            JSON -> openai_request, type and range checks
 *   openai_prompt_ids(r, k, model)     prompt k -> token ids (chat: render, strip BOS text)
 *   openai_engine_request(r, ...)      ids + fields -> engine_request (lengths checked)
 *   openai_choice_event(c, ev)         per engine event: detokenize, stop strings
 *   openai_render_chunk / _response    SSE chunks, or the whole JSON body
 *
 * Errors are openai_error: an HTTP status and one sentence naming the
 * parameter, rendered as OpenAI's {"error":{"message","type","param","code"}}.
 *
 * Text out: each choice runs the tokenizer's streaming detokenizer with
 * TOKENIZER_DETOK_REPLACE (valid UTF-8 for JSON; a character split across
 * tokens is held until it completes) and holds back any tail that could be
 * the start of a stop string, so the streamed deltas concatenated equal the
 * non-streamed text byte for byte, and a stop string never reaches the
 * client. The token that ends generation (an EOG or stop_token_ids token) is
 * neither in the text nor in output_ids, but counts in completion_tokens, as
 * in SGLang.
 *
 * Ownership: an openai_request owns its parsed JSON (every borrowed string
 * below points into it) and the arrays it allocated; openai_request_fini
 * frees them. Strings returned by the render functions are owned by the
 * caller (alloc_free). Nothing here is thread-safe per object; separate
 * objects may be used from separate threads.
 */
#ifndef PDSERVE_SERVER_OPENAI_H
#define PDSERVE_SERVER_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

typedef enum {
	OPENAI_API_COMPLETIONS,
	OPENAI_API_CHAT,
	OPENAI_API_GENERATE,
} openai_api;

#define OPENAI_MAX_N 64          /* choices per prompt */
#define OPENAI_MAX_PROMPTS 64    /* prompts in one /v1/completions batch */
#define OPENAI_MAX_STOP 32       /* stop strings */
#define OPENAI_MAX_STOP_LEN 1024 /* bytes per stop string */
#define OPENAI_MAX_STOP_IDS 1024
#define OPENAI_MAX_BIAS 4096     /* logit_bias entries */

/* ---------------------------------------------------------------- errors */

typedef struct {
	int status;          /* HTTP status: 400, 401, 404, 405, 413, 500, 503 */
	const char *type;    /* static: "invalid_request_error", "authentication_error", ... */
	const char *code;    /* static or NULL (JSON null) */
	char param[64];      /* "" = JSON null */
	char message[ERR_LEN];
	const char *limit;   /* static or NULL: the configured limit the request exceeded, the reason
				label of pdserve:requests_rejected_total ("n", "stop", "prompt_tokens",
				"max_tokens", "queue_full", "body_size", "header_size") */
} openai_error;

/* Fill e (status, param may be NULL) and return ERR_INVAL. type follows the
   status: 400/413 invalid_request_error, 401 authentication_error, 404
   not_found_error, 405 method_not_allowed, 503 service_unavailable_error,
   else server_error. */
int openai_error_set(openai_error *e, int status, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* {"error":{...}} as a NUL-terminated string owned by the caller; NULL on
   out of memory. */
char *openai_error_json(const openai_error *e, size_t *len);

/* ---------------------------------------------------------------- requests */

typedef struct {
	const char *text;      /* borrowed from the JSON, or NULL when ids are given */
	size_t len;
	int32_t *ids;          /* owned, or NULL when text is given */
	int n_ids;
} openai_prompt;

typedef struct {
	openai_api api;
	void *root;                /* the parsed JSON (json_object *); owns the strings */
	const char *model;         /* "" when absent */
	const char *rid;           /* /generate "rid", else NULL */

	openai_prompt *prompts;    /* [n_prompts] completions / generate; owned */
	int n_prompts;
	chat_msg *messages;        /* [n_messages] chat; owned array, borrowed strings */
	int n_messages;
	char **msg_store;          /* [n_messages] joined content parts, owned, NULL when borrowed */
	bool add_generation_prompt;/* chat (default true) */
	bool disable_thinking;     /* chat_template_kwargs.enable_thinking == false */

	int n;                     /* choices per prompt, 1..OPENAI_MAX_N */
	bool stream;
	bool include_usage;        /* stream_options.include_usage */
	bool echo;                 /* completions */
	int max_tokens;            /* -1: the API's default */
	int min_tokens;
	bool ignore_eos;
	bool skip_special_tokens;  /* default true: control tokens render as "" */

	sampler_params sampling;   /* logit_bias points into bias (owned) */
	sampler_bias *bias;

	const char **stop;         /* [n_stop] borrowed strings, owned array */
	size_t *stop_len;
	int n_stop;
	int32_t *stop_ids;         /* [n_stop_ids] owned */
	int n_stop_ids;

	bool logprobs;             /* return per-token logprobs */
	int top_logprobs;          /* 0..SAMPLER_MAX_TOP_LOGPROBS */
	bool return_text_in_logprobs; /* /generate */

	/* PD disaggregation (added by the router; top-level fields on every API) */
	bool has_bootstrap;        /* bootstrap_room present */
	const char *bootstrap_host; /* borrowed; NULL when absent */
	int bootstrap_port;        /* 0 when absent */
	uint64_t bootstrap_room;   /* 0 .. 2^63-1 */
} openai_request;

/* Parse and check a request body (any bytes; len need not include a NUL).
   0, or ERR_INVAL with e filled (status 400: malformed JSON, a field of the
   wrong type or out of range, a missing prompt / messages; the sentence and
   e->param name the field). On error r needs no fini; on success call
   openai_request_fini. */
int openai_parse(openai_api api, const char *body, size_t len, openai_request *r, openai_error *e);
void openai_request_fini(openai_request *r); /* zeroed r is fine */

/* What prompt preparation needs to know about the model. Borrowed. */
typedef struct {
	const tokenizer *tok;
	int n_vocab;               /* the model's (>= the tokenizer's) */
	int context_length;
	chat_tmpl_family chat_family;
	/* configured limits; 0 = none beyond the context length and the hard caps */
	int max_prompt_tokens;     /* --max-prompt-tokens */
	int max_new_tokens;        /* --max-tokens-limit: largest max_tokens a request may ask for */
	int max_n;                 /* --max-n (at most OPENAI_MAX_N) */
	int max_stop;              /* --max-stop-strings (at most OPENAI_MAX_STOP) */
} openai_model;

/* Checks that need the model: sampling fields (sampler_params_validate),
   logit_bias and stop_token_ids against the vocabulary. 0 or ERR_INVAL with
   e (400, param named). */
int openai_check(const openai_request *r, const openai_model *m, openai_error *e);

/* Chat: render r->messages with the model's template (generation prompt as
   r asks). *prompt owned by the caller. 0, ERR_NOMEM, or ERR_INVAL with e
   (400: the template's own refusal). */
int openai_render_chat(const openai_request *r, const openai_model *m, char **prompt, size_t *len,
		       openai_error *e);

/* Token ids of prompt k (chat: the rendered conversation; k must be 0).
   Text is tokenized with add_special and parse_special (BOS as the vocab
   asks; special-token text becomes its id), like SGLang and llama.cpp's
   server; a chat prompt first loses a leading BOS text when the tokenizer
   adds BOS itself. *ids owned by the caller (alloc_free). 0, ERR_NOMEM, or
   ERR_INVAL with e (400: empty prompt, id outside the vocabulary). */
int openai_prompt_ids(const openai_request *r, int k, const openai_model *m, int32_t **ids, int *n,
		      openai_error *e);

/* max_new_tokens for a prompt of n_prompt tokens: the request's, or the
   API's default (completions 16, generate 128, chat the rest of the
   context; defaults are clipped to the context). ERR_INVAL with e (400,
   code context_length_exceeded) when n_prompt + max_tokens > context. */
int openai_max_new_tokens(const openai_request *r, const openai_model *m, int n_prompt, int *out,
			  openai_error *e);

/* Fill an engine request for choice `choice` (0..n-1) of a prompt: sampling
   (seed + choice when a seed was given, so that choices differ), stop ids,
   ignore_eos. Borrows ids and r's arrays (engine_submit copies them). rid
   and user are the caller's to set. */
void openai_engine_request(const openai_request *r, int choice, const int32_t *ids, int n_ids,
			   int max_new_tokens, engine_request *out);

/* ---------------------------------------------------------------- choices */

typedef enum {
	OPENAI_FINISH_NONE = 0,
	OPENAI_FINISH_STOP,
	OPENAI_FINISH_LENGTH,
	OPENAI_FINISH_ABORT,
	OPENAI_FINISH_ERROR,
} openai_finish;

typedef struct {
	int32_t id;
	float logprob;
	int n_top;
	sampler_logprob top[SAMPLER_MAX_TOP_LOGPROBS];
} openai_lp;

/* One choice's output as it accumulates. Private fields aside, the caller
   reads finish, the counts and the text. */
typedef struct {
	int index;               /* "index" in the response */
	int prompt_index;
	tokenizer_detok detok;
	char *piece;             /* [tokenizer_detok_cap] scratch, owned */

	char *text;              /* output so far (stop string cut off); owned */
	size_t len, cap;
	size_t safe;             /* bytes of text that can no longer change */
	size_t sent;             /* bytes of text already streamed */

	int32_t *ids;            /* generated ids kept (output_ids); owned */
	int n_ids, cap_ids;
	openai_lp *lps;          /* [n_lps] when logprobs; owned */
	int n_lps, cap_lps, lps_sent;

	char *echo;              /* completions echo: the prompt text; owned */
	size_t echo_len;
	bool role_sent;          /* chat stream: the role chunk went out */
	bool finish_sent;

	openai_finish finish;
	int matched_stop;        /* index into r->stop, or -1 */
	int32_t matched_id;      /* the stop token, or -1 */
	int prompt_tokens, cached_tokens, completion_tokens;
	char message[ENGINE_MSG_LEN]; /* FINISH_ERROR */
} openai_choice;

/* 0 or ERR_NOMEM. Call fini either way. */
int openai_choice_init(openai_choice *c, const tokenizer *tok, bool skip_special, int index, int prompt_index);
void openai_choice_fini(openai_choice *c);

/* completions echo: keep the prompt text (or the text of its ids). */
int openai_choice_set_echo(openai_choice *c, const tokenizer *tok, const openai_prompt *p);

/* Apply one engine event. Returns 1 when a stop string just completed
   (finish is now STOP: the caller aborts the engine request and ignores
   that request's later events except for bookkeeping), 0, or ERR_NOMEM.
   A final event sets finish (unless a stop string finished it first). */
int openai_choice_event(openai_choice *c, const openai_request *r, const tokenizer *tok,
			const engine_event *ev);

/* ---------------------------------------------------------------- responses */

/* Everything a rendered response names besides the choices. Borrowed. */
typedef struct {
	const openai_request *req;
	const tokenizer *tok;
	const char *id;          /* "cmpl-...", "chatcmpl-...", or the /generate rid */
	int64_t created;         /* unix seconds */
	const char *model;       /* served model name */
	/* PD timing (decode role): meta_info.pd on /generate, "pdserve" on OpenAI routes */
	bool has_pd;
	const char *pd_backend;
	double pd_prefill_queue_s, pd_prefill_compute_s, pd_transfer_s, pd_admission_wait_s;
	uint64_t pd_bytes;
} openai_resp;

/* The whole non-streamed body: completions / chat: OpenAI's object with
   usage; generate: {"text","output_ids","meta_info"} (a list of them when
   there are several choices). e2e_s goes to meta_info. NULL on no memory. */
char *openai_render_response(const openai_resp *rs, openai_choice *ch, int n, double e2e_s, size_t *len);

/* The next SSE event ("data: {...}\n\n") for choice c: text and logprobs
   that became final since the last call, the chat role on the first one,
   finish_reason once c->finish is set. NULL with *len = 0 when there is
   nothing to send. Marks what it rendered as sent. /generate chunks carry
   the cumulative text, as SGLang's do. */
char *openai_render_chunk(const openai_resp *rs, openai_choice *c, double e2e_s, size_t *len);

/* The usage chunk (choices []), for stream_options.include_usage. */
char *openai_render_usage_chunk(const openai_resp *rs, const openai_choice *ch, int n, size_t *len);

/* "data: {\"error\":...}\n\n" for an error in the middle of a stream. */
char *openai_render_error_chunk(const openai_error *e, size_t *len);

/* Wire name of a finish ("stop", "length", "abort", "error"); NULL for NONE. */
const char *openai_finish_name(openai_finish f);

/* Token text for logprobs and /tokenize displays: the piece with special
   rendering, invalid UTF-8 replaced by U+FFFD. Writes at most cap-1 bytes
   plus a NUL into out; returns the length. */
size_t openai_token_text(const tokenizer *tok, int32_t id, char *out, size_t cap);

/* Copy s[0..n) into out replacing each maximal invalid UTF-8 sequence with
   U+FFFD; out must hold 3*n bytes. Returns the bytes written. */
size_t openai_utf8_sanitize(const char *s, size_t n, char *out);

#endif
