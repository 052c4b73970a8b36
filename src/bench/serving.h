/* serving.h - `pdserve bench serving`: SGLang's bench_serving in C.
 *
 * One run: resolve the model name (/v1/models) and a tokenizer (a local GGUF
 * or the server's /tokenize), build the workload (bench/workload.h), send
 * warmup requests, then send every request at its arrival time (Poisson at
 * --request-rate, at most --max-concurrency in flight; a request waiting
 * for a slot starts its clock when it is sent, as bench_serving's
 * semaphore does), stream the responses, and report (bench/summary.h):
 * the table on stdout, a JSON line appended to --output-file, plots
 * (bench/plot.h). A progress bar goes to stderr.
 *
 * Wire formats (the `api`, chosen by --backend):
 *   SERVING_API_GENERATE   POST /generate, SGLang native: {text | input_ids,
 *                          sampling_params {temperature 0, max_new_tokens,
 *                          ignore_eos}, stream}; chunks carry the cumulative
 *                          text and meta_info.completion_tokens.
 *   SERVING_API_COMPLETIONS  POST /v1/completions: {model, prompt,
 *                          temperature 0, best_of 1, max_tokens, stream,
 *                          ignore_eos, stream_options.include_usage}.
 *   SERVING_API_CHAT       POST /v1/chat/completions: {model, messages
 *                          [{role user, content}], temperature 0, max_tokens,
 *                          stream, ignore_eos, stream_options.include_usage}
 *                          (llama.cpp's llama-server, vLLM, SGLang, pdserve).
 *
 * Where we differ from bench_serving, on purpose:
 *   - token counts are the server's: output tokens from usage /
 *     meta_info.completion_tokens of any chunk, input tokens from
 *     usage.prompt_tokens / meta_info.prompt_tokens (so BOS and chat
 *     template tokens count as the server counts them); the dataset's
 *     counts are used only when the server sends none. We ask for usage in
 *     streams (stream_options.include_usage) so that it is there;
 *   - ignore_eos is sent to the chat endpoint too (unless
 *     --disable-ignore-eos), so chat runs generate the asked lengths;
 *   - no default output file (bench_serving invents a name in the current
 *     folder); no retokenized counts (the server's are exact);
 *   - failed requests and timeouts are printed in the table and the JSON.
 */
#ifndef PDSERVE_BENCH_SERVING_H
#define PDSERVE_BENCH_SERVING_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "bench/summary.h"
#include "bench/workload.h"

typedef enum {
	SERVING_API_GENERATE = 1,
	SERVING_API_COMPLETIONS = 2,
	SERVING_API_CHAT = 3,
} serving_api;

/* "sglang", "sglang-native" -> GENERATE; "openai", "sglang-oai", "vllm",
   "lmdeploy" -> COMPLETIONS; "openai-chat", "sglang-oai-chat",
   "vllm-chat", "lmdeploy-chat" -> CHAT; else -1. */
int serving_api_of(const char *backend);

typedef struct {
	const char *backend;        /* as given, printed and recorded */
	serving_api api;
	const char *base_url;       /* "http://host:port", no trailing slash */
	const char *model;          /* NULL: the first id of /v1/models */
	const char *tokenizer;      /* a GGUF path; NULL: model when it names a GGUF file, else the server */
	const char *api_key;        /* NULL: $OPENAI_API_KEY if set */
	const char *dataset_name;   /* as given, recorded */
	workload_config data;
	double request_rate;        /* requests/s; inf: all at once */
	int max_concurrency;        /* 0: unlimited */
	int warmup_requests;
	bool ignore_eos;
	bool stream;
	bool tokenize_prompt;       /* send token ids (generate, completions) */
	bool flush_cache;
	bool return_logprob;
	bool disable_tqdm;
	bool output_details;        /* generated texts in the JSON line */
	const char *extra_request_body; /* a JSON object merged into every payload, or NULL */
	double timeout_s;           /* per request; <= 0: none */
	summary_slo slo;
	const char *output_file;    /* NULL: none */
	const char *plot_dir;       /* NULL: none */
	const char *tag;            /* recorded as "tag" */
} serving_config;

/* Run the benchmark. 0 when it ran (even with failed requests, which the
   report counts), or an error with err: setup (server unreachable, no
   model, dataset, tokenizer), warmup where no request succeeded, no
   request succeeded at all, or the output file not writable. */
int serving_run(const serving_config *cfg, char err[ERR_LEN]);

/* ---------------------------------------------------------------- one response
 *
 * The per-request state machine, exposed for tests: feed response bytes
 * in any pieces, then the end. Times are seconds since the request was
 * sent.
 *
 *   serving_resp_init -> serving_resp_data* -> serving_resp_done -> read fields -> serving_resp_fini
 */
typedef struct {
	/* results */
	bool success, timeout;
	double ttft_s;        /* first chunk with text (non-stream: the whole response) */
	double latency_s;     /* last chunk (non-stream: the response) */
	double *itl;          /* [n_itl] owned */
	size_t n_itl, cap_itl;
	int output_tokens;    /* the server's count; -1 when it sent none */
	int prompt_tokens;    /* the server's count; -1 when it sent none */
	char *text;           /* generated text, owned, NUL-terminated */
	size_t text_len, text_cap;
	char *error;          /* owned; NULL on success */
	/* parser state */
	serving_api api;
	bool stream, got_first;
	double t_recent;
	int last_len;         /* generate: completion_tokens at the previous text chunk */
	long status;
	char *buf;            /* the current line (stream) or the whole body */
	size_t buf_len, buf_cap;
	bool oom;
} serving_resp;

void serving_resp_init(serving_resp *r, serving_api api, bool stream);
void serving_resp_fini(serving_resp *r);
/* status: the HTTP status. */
void serving_resp_data(serving_resp *r, double t, long status, const char *p, size_t n);
/* rc, status, msg as httpc's on_done; timeout_s names the limit in the message. */
void serving_resp_done(serving_resp *r, double t, int rc, long status, const char *msg, double timeout_s);

#endif
