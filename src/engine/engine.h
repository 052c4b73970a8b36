/* engine.h - the serving engine: requests in, tokens out, continuous batching.
 *
 * One engine per model. It owns the model, tokenizer, KV pool, prefix cache,
 * thread pool and one scheduler thread that runs the step loop: each step
 * batches every running decode (one token each) with a chunk of prefill,
 * runs one forward pass, samples, and publishes events. New requests join at
 * the next step.
 *
 * Threads: engine_submit, engine_abort, engine_poll, engine_stats and
 * engine_flush_cache may be called from any thread (typically the HTTP event
 * loop). Results travel through an outbox: the engine appends events and
 * calls cfg.notify(cfg.notify_arg) (from the scheduler thread; it must only
 * wake the consumer, e.g. event_active()), and the consumer drains them with
 * engine_poll(). Every submitted request gets exactly one event with
 * finish != ENGINE_FINISH_NONE, after which its rid is never mentioned again.
 *
 * Ownership: engine_submit copies everything it needs from the request
 * (prompt ids, logit bias, stop ids); the caller's buffers may be freed on
 * return.
 */
#ifndef PDSERVE_ENGINE_ENGINE_H
#define PDSERVE_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/sampler.h"
#include "model/llama.h"
#include "model/tokenizer.h"

/* Error messages carried with events (longer ones are cut): room for a
   peer address and a handshake refusal that names both sides' values. */
#define ENGINE_MSG_LEN 256

typedef enum { ENGINE_POLICY_FCFS, ENGINE_POLICY_LPM } engine_policy;

/* Role of a request in prefill/decode disaggregation (src/disagg/). */
typedef enum {
	ENGINE_PD_NONE = 0, /* ordinary request */
	ENGINE_PD_EXPORT,   /* prefill role: KV pages go to cfg.kv_export as they are computed */
	ENGINE_PD_IMPORT,   /* decode role: pages reserved, KV written by a transfer, then decoded */
} engine_pd;

typedef struct {
	uint64_t rid;
	void *user;
	const int32_t *pages; /* [n]: the request's pages first..first+n-1, valid during the call;
	                         each carries one reference for the consumer, who gives it back
	                         with engine_release_pages() once the data has left */
	int first, n;
	int n_prompt;
	int kv_tokens;        /* K/V valid for positions [0, kv_tokens) once these pages are sent */
	bool last;            /* the prompt is complete; first_token below is set */
	bool failed;          /* the request ended before its prompt was complete: no pages, give up */
	int32_t first_token;  /* sampled on the prefill with the request's sampling params */
	float logprob;
	int n_top;
	sampler_logprob top[SAMPLER_MAX_TOP_LOGPROBS];
	int cached_tokens;
	double queue_s, compute_s; /* submit -> first scheduled, first scheduled -> last chunk */
} engine_kv_export;

typedef struct {
	const char *model_path;
	int n_threads;            /* 0 = all cores */
	int kv_dtype;             /* QTYPE_F16 (default), QTYPE_BF16, QTYPE_F32 */
	int page_size;            /* tokens per KV page (default 16) */
	int context_length;       /* 0 = the model's */
	int64_t max_total_tokens; /* KV pool size in tokens; 0 = from mem_fraction_static */
	double mem_fraction_static; /* fraction of (MemAvailable - weights) for the KV pool; 0 = 0.5 */
	int max_running;          /* concurrent running requests (default 64) */
	int chunked_prefill_size; /* prefill tokens per step (default 512) */
	int max_prefill_tokens;   /* bound on one step's prefill tokens (default 16384) */
	int max_queued;           /* waiting requests before submit says ERR_FULL (default 1024) */
	engine_policy policy;
	bool disable_radix_cache;
	void (*notify)(void *arg); /* "events are waiting"; called from the scheduler thread */
	void *notify_arg;
	/* Disaggregation hooks, called on the scheduler thread (must not block). */
	void (*kv_export)(void *arg, const engine_kv_export *x);
	/* IMPORT request admitted: its pages are reserved (valid during the call).
	   Also called once with pages NULL and n_pages 0 when an IMPORT request
	   ends before it was ever admitted (aborted, failed or refused while it
	   waited for pages): nothing was reserved and nothing is owed back; the
	   transfer layer forgets its room. */
	void (*kv_import)(void *arg, uint64_t rid, void *user, const int32_t *pages, int n_pages);
	/* IMPORT request aborted while its KV is in flight: stop writing into its
	   pages, then call engine_import_fail() (the pages stay reserved till then). */
	void (*kv_import_cancel)(void *arg, uint64_t rid, void *user);
	void *pd_arg;
	bool kv_shared;           /* memfd-backed KV pool (shm transfer backend) */
	void *(*kv_alloc)(void *arg, size_t bytes);          /* KV pool memory from the transfer layer */
	void (*kv_release)(void *arg, void *p, size_t bytes); /* (UCX); NULL = the pool mmaps its own */
	bool skip_compute;        /* benchmarks only (pdserve bench transfer): no forward pass; KV pages
	                             are left as they are, logits are zeros (greedy picks token 0) */
} engine_config;

/* Defaults for every field (model_path NULL). */
engine_config engine_config_default(void);

typedef struct engine engine;

/* Load the model, size and allocate the KV pool, start the scheduler
   thread. NULL on failure with one sentence in err. */
engine *engine_create(const engine_config *cfg, char err[ERR_LEN]);
/* Stop the scheduler, fail every live request (no events are delivered
   after this), free everything. NULL is fine. */
void engine_destroy(engine *e);

const tokenizer *engine_tokenizer(const engine *e);
const llama_hparams *engine_hparams(const engine *e);
const llama_model *engine_model(const engine *e);
int engine_context_length(const engine *e);

typedef enum {
	ENGINE_FINISH_NONE = 0,
	ENGINE_FINISH_STOP,   /* an end-of-generation or stop token */
	ENGINE_FINISH_LENGTH, /* max_new_tokens or the context length */
	ENGINE_FINISH_ABORT,  /* engine_abort */
	ENGINE_FINISH_ERROR,  /* the engine could not serve it (message in the event) */
} engine_finish;

typedef struct {
	uint64_t rid;             /* caller's id, unique among live requests */
	const int32_t *prompt;    /* [n_prompt] token ids, copied */
	int n_prompt;
	sampler_params sampling;  /* validated by engine_submit; arrays copied */
	int max_new_tokens;       /* >= 0 (0: prefill only, then finish LENGTH) */
	bool ignore_eos;          /* do not stop at the model's EOG tokens */
	const int32_t *stop_ids;  /* [n_stop_ids] extra ids that stop (OpenAI stop_token_ids) */
	int n_stop_ids;
	void *user;               /* returned in every event */
	engine_pd pd;
	int reserve_tokens;       /* IMPORT: decode room reserved with the prompt's pages */
} engine_request;

/* Queue a request. 0; ERR_INVAL with a sentence (bad sampling field, token
   id out of range, prompt empty, prompt + max_new_tokens > context length,
   a prompt the whole KV pool cannot hold, rid already live); ERR_FULL when
   the waiting queue is at max_queued. */
int engine_submit(engine *e, const engine_request *r, char err[ERR_LEN]);

/* Abort a live request: its pages are freed at the next step and it gets
   its final event with ENGINE_FINISH_ABORT (unless it finished first).
   Unknown rids are ignored. */
void engine_abort(engine *e, uint64_t rid);

typedef struct {
	uint64_t rid;
	void *user;
	int32_t token;            /* -1 when the event carries no token (abort, error) */
	float logprob;            /* when the request asked for logprobs */
	int n_top;
	sampler_logprob top[SAMPLER_MAX_TOP_LOGPROBS];
	engine_finish finish;     /* NONE while streaming; set on the last event */
	int prompt_tokens;
	int cached_tokens;        /* prompt tokens served from the prefix cache */
	int completion_tokens;    /* tokens generated so far, this one included */
	char message[ENGINE_MSG_LEN]; /* ENGINE_FINISH_ERROR: what went wrong */
} engine_event;

/* Move up to max queued events into out (in order per request). Returns
   how many. Non-blocking. */
int engine_poll(engine *e, engine_event *out, int max);

typedef struct {
	int running, waiting;
	int importing;            /* decode role: pages reserved, KV in flight */
	int pages_total, pages_free, pages_cached; /* cached: held only by the prefix cache */
	int page_size;
	int64_t max_total_tokens;
	size_t kv_bytes;
	int64_t prompt_tokens, generation_tokens, cached_tokens; /* totals since start */
	int64_t steps;
	int64_t retractions;
	int64_t requests_finished[ENGINE_FINISH_ERROR + 1];
} engine_stats;

/* A snapshot published by the scheduler after each step. It can run ahead
   of the events still waiting in the outbox (running may read 0 before the
   last final event has been polled). */
void engine_get_stats(engine *e, engine_stats *out);

/* ---- disaggregation (thread-safe; applied at the scheduler's next step) ---- */

/* EXPORT requests wait in the queue until their destination is known (the
   decode has reserved pages): then the transfer layer calls this. */
void engine_export_ready(engine *e, uint64_t rid);
/* Finish a live request with ENGINE_FINISH_ERROR and message (a peer died,
   a timeout): its pages are freed (IMPORT requests: use engine_import_fail). */
void engine_fail(engine *e, uint64_t rid, const char *message);

/* Give back references handed out by kv_export. */
void engine_release_pages(engine *e, const int32_t *pages, int n);

typedef struct {
	int32_t token;            /* the first generated token, sampled by the prefill */
	float logprob;
	int n_top;
	sampler_logprob top[SAMPLER_MAX_TOP_LOGPROBS];
	int cached_tokens;        /* prompt tokens the prefill served from its cache */
} engine_import_result;

/* The KV of IMPORT request rid is in its pages: commit the first token and
   decode on. 0, or ERR_NOTFOUND when rid is not an importing request. */
int engine_import_done(engine *e, uint64_t rid, const engine_import_result *res);
/* The transfer of rid failed (or was cancelled) and nothing writes into its
   pages any more: finish it (ERROR with message, or ABORT if it was aborted)
   and free the pages. */
void engine_import_fail(engine *e, uint64_t rid, const char *message);
/* The same for a transfer whose writer may still write into the pages (a
   silent prefill): the request finishes now, but its pages stay reserved;
   their references (one per page of the list kv_import handed out) become
   the caller's, to give back with engine_release_pages() once nothing
   writes into them any more. */
void engine_import_fail_keep(engine *e, uint64_t rid, const char *message);

/* The pool (layout for transfers; the accessors that read its geometry and
   kvcache_view are safe from any thread). */
const struct kvcache *engine_kvcache(const engine *e);

/* Empty the prefix cache (pages held by running requests stay theirs).
   Returns after the scheduler has done it. */
void engine_flush_cache(engine *e);

#endif
