/* engine.c - continuous batching over a paged KV cache with a prefix cache.
 *
 * Threads. Callers (the HTTP loop) touch only the shared part under `mu`:
 * the inbox of new requests, the abort list, the live-rid set, the outbox of
 * events, the stats snapshot and the flush flag. Everything else (the
 * waiting queue, the running set, pages, the prefix cache, samplers) belongs
 * to the scheduler thread, which runs step() in a loop and sleeps on `cv`
 * when it has nothing to do.
 *
 * A request's life (scheduler thread; each arrow names the function):
 *
 *   engine_submit --> INBOX --drain_inbox--> WAITING --admit--> RUNNING --finish--> (gone)
 *                                             ^   |               |  ^
 *                                             |   +--finish(ABORT/ERROR)
 *                                             +------retract------+  |
 *                                                                    |
 *                           RUNNING: prefill (pending > 1 tokens) ---+--> decode (pending == 1)
 *
 * A request holds tokens[0..n_tokens): the prompt, then every sampled token.
 * KV exists for positions [0, n_done). "Pending" = n_tokens - n_done tokens
 * still to feed: the prompt (minus the cached prefix) while prefilling, then
 * exactly one (the last sampled token) while decoding. Pages: a WAITING
 * request holds none; a RUNNING one holds pages[0..n_pages) covering at
 * least [0, n_done) (shared prefix pages included, one reference each).
 * retract() releases them all and puts the request back at the head of the
 * queue with n_done = 0; it resumes by recomputing (or re-matching) its
 * whole token list, sampler state intact, so its output is unchanged. A
 * decode-role (IMPORT) request is retracted only once running, after its
 * transfer, and resumes as a local request (no second transfer).
 *
 * One step: every decode request (one token each), then prefill chunks
 * (requests already prefilling first, then newly admitted ones, in policy
 * order) up to chunked_prefill_size tokens; one llama_forward for all of it;
 * sample for every request whose pending tokens were all fed. Because the
 * forward is batch-invariant, what a request produces does not depend on
 * what else runs.
 *
 * Memory pressure: pages come from the free list, then from evicting the
 * prefix cache's LRU leaves; a decode that still finds no page retracts the
 * most recently admitted other request (SGLang's policy is similar); when
 * there is none but pages are reserved for KV still in flight (decode role),
 * it waits for those transfers instead of failing. Admission
 * requires pages for the whole remaining prompt plus one page of decode room
 * per running request. A request that cannot fit even alone finishes with
 * an error instead of waiting forever.
 *
 * Every request gets exactly one final event (finish != NONE). The live-rid
 * set holds a rid from submit until that event is queued.
 */
#include "engine/engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/threadpool.h"
#include "engine/kvcache.h"
#include "engine/radix.h"
#include "kernels/kernels.h"

typedef struct req {
	uint64_t rid;
	void *user;
	int32_t *tokens;
	int n_tokens, cap_tokens;
	int n_prompt;
	int n_done;
	int n_cached;         /* prompt tokens served from the cache at first admission */
	int32_t *pages;
	int n_pages, cap_pages;
	sampler_params sp;    /* arrays below are owned copies */
	sampler_bias *bias;
	int32_t *eog;         /* model EOG + stop ids: banned until min_tokens */
	sampler *smp;         /* created at first admission */
	int max_new, n_gen;
	bool ignore_eos;
	int32_t *stop_ids;
	int n_stop;
	bool admitted_once;
	bool prompt_inserted; /* prompt pages given to the prefix cache */
	int64_t admit_seq;
	struct req *next;     /* inbox / waiting queue link */
	engine_pd pd;
	int reserve;          /* IMPORT: decode tokens reserved with the prompt */
	int n_exported;       /* EXPORT: pages handed to kv_export so far */
	bool abort_requested; /* IMPORT: aborted while importing; waiting for import_fail/done */
	bool export_closed;   /* EXPORT: the last (or failed) export was handed out */
	bool dest_ready;      /* EXPORT: may be scheduled (its destination is known) */
	double t_submit, t_sched;
} req;

/* A command for the scheduler from another thread (disaggregation). */
typedef enum { CMD_IMPORT_DONE, CMD_IMPORT_FAIL, CMD_IMPORT_FAIL_KEEP, CMD_EXPORT_READY, CMD_FAIL } cmd_kind;

typedef struct {
	uint64_t rid;
	cmd_kind kind;
	engine_import_result res;
	char message[ENGINE_MSG_LEN];
} import_cmd;

struct engine {
	engine_config cfg;
	llama_model *m;
	tokenizer *tok;
	threadpool *tp;
	llama_ctx *lc;
	kvcache *kc;
	radix *rc;
	int n_ctx;
	int max_batch;
	int n_vocab;
	int64_t max_total_tokens;
	int test_step_delay_ms;  /* PDSERVE_TEST_STEP_DELAY_MS: test hook, see engine_create */

	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;       /* scheduler: work arrived */
	pthread_cond_t flush_cv; /* flush_cache waiters */
	/* ---- shared, under mu ---- */
	bool stop;
	req *inbox_head, *inbox_tail;
	int n_inbox;
	uint64_t *aborts;
	int n_aborts, cap_aborts;
	uint64_t *live;          /* open-addressing set of live rids (0 = empty, rid+1 stored) */
	size_t live_cap, n_live;
	engine_event *outbox;    /* ring */
	size_t out_head, out_n, out_cap;
	engine_stats stats;
	int flush_pending;
	uint64_t flush_gen;
	import_cmd *cmds;
	int n_cmds, cap_cmds;
	int32_t *to_release;     /* pages whose export references came back */
	int n_release, cap_release;
	/* ---- scheduler thread only ---- */
	req *wait_head, *wait_tail;
	int n_waiting;
	req **running;
	int n_running;
	req **importing;         /* IMPORT requests holding pages, waiting for their KV */
	int n_importing;
	int64_t admit_counter;
	int64_t steps, retractions, prompt_tok, gen_tok, cached_tok;
	int64_t finished[ENGINE_FINISH_ERROR + 1];
	bool notify_pending;
	/* batch buffers, sized at create */
	int32_t *b_tok, *b_pos, *b_seq, *b_npages;
	uint8_t *b_want;
	const int32_t **b_pages;
	req **b_req;             /* [max_running] requests in this step */
	int *b_take;
	float *logits;           /* [max_running][n_vocab] */
	int32_t *match_buf;      /* [max pages per request] */
};

engine_config engine_config_default(void)
{
	engine_config c = {
		.n_threads = 0,
		.kv_dtype = QTYPE_F16,
		.page_size = 16,
		.mem_fraction_static = 0.5,
		.max_running = 64,
		.chunked_prefill_size = 512,
		.max_prefill_tokens = 16384,
		.max_queued = 1024,
		.policy = ENGINE_POLICY_FCFS,
	};
	return c;
}

/* ---------------------------------------------------------------- live set */

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

/* Under mu. 0 on success, 1 if present, -1 on no memory. */
static int live_add(engine *e, uint64_t rid)
{
	if ((e->n_live + 1) * 2 > e->live_cap) {
		size_t nc = e->live_cap ? e->live_cap * 2 : 64;
		uint64_t *nt = alloc_zeroed(nc, sizeof(uint64_t));
		if (!nt)
			return -1;
		for (size_t i = 0; i < e->live_cap; i++)
			if (e->live[i]) {
				size_t j = mix(e->live[i]) & (nc - 1);
				while (nt[j])
					j = (j + 1) & (nc - 1);
				nt[j] = e->live[i];
			}
		alloc_free(e->live);
		e->live = nt;
		e->live_cap = nc;
	}
	uint64_t key = rid + 1;
	size_t j = mix(key) & (e->live_cap - 1);
	while (e->live[j]) {
		if (e->live[j] == key)
			return 1;
		j = (j + 1) & (e->live_cap - 1);
	}
	e->live[j] = key;
	e->n_live++;
	return 0;
}

static bool live_has(const engine *e, uint64_t rid)
{
	if (!e->live_cap)
		return false;
	uint64_t key = rid + 1;
	size_t j = mix(key) & (e->live_cap - 1);
	while (e->live[j]) {
		if (e->live[j] == key)
			return true;
		j = (j + 1) & (e->live_cap - 1);
	}
	return false;
}

/* Under mu. Backward-shift deletion keeps probe chains intact. */
static void live_del(engine *e, uint64_t rid)
{
	uint64_t key = rid + 1;
	size_t mask = e->live_cap - 1, j = mix(key) & mask;
	while (e->live[j] && e->live[j] != key)
		j = (j + 1) & mask;
	if (!e->live[j])
		return;
	e->live[j] = 0;
	e->n_live--;
	for (size_t k = (j + 1) & mask; e->live[k]; k = (k + 1) & mask) {
		size_t home = mix(e->live[k]) & mask;
		/* move k into the hole j if its home is not in (j, k] cyclically */
		if ((k > j && (home <= j || home > k)) || (k < j && home <= j && home > k)) {
			e->live[j] = e->live[k];
			e->live[k] = 0;
			j = k;
		}
	}
}

/* ---------------------------------------------------------------- requests */

static void req_free(req *r)
{
	if (!r)
		return;
	sampler_destroy(r->smp);
	alloc_free(r->tokens);
	alloc_free(r->pages);
	alloc_free(r->bias);
	alloc_free(r->eog);
	alloc_free(r->stop_ids);
	alloc_free(r);
}

/* Queue an event (scheduler thread). Final events also drop the rid. */
static void emit(engine *e, const engine_event *ev)
{
	pthread_mutex_lock(&e->mu);
	if (e->out_n == e->out_cap) {
		size_t nc = e->out_cap ? e->out_cap * 2 : 256;
		engine_event *no = alloc_array(nc, sizeof(engine_event));
		if (!no) {
			/* cannot grow: drop a streaming event rather than a final one */
			pthread_mutex_unlock(&e->mu);
			if (ev->finish == ENGINE_FINISH_NONE) {
				LOGE("engine", "out of memory queueing an event for rid %llu", (unsigned long long)ev->rid);
				return;
			}
			CHECK(!"out of memory queueing a final event");
		}
		for (size_t i = 0; i < e->out_n; i++)
			no[i] = e->outbox[(e->out_head + i) % e->out_cap];
		alloc_free(e->outbox);
		e->outbox = no;
		e->out_head = 0;
		e->out_cap = nc;
	}
	e->outbox[(e->out_head + e->out_n) % e->out_cap] = *ev;
	e->out_n++;
	if (ev->finish != ENGINE_FINISH_NONE)
		live_del(e, ev->rid);
	pthread_mutex_unlock(&e->mu);
	e->notify_pending = true;
}

static void event_for(const req *r, engine_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->rid = r->rid;
	ev->user = r->user;
	ev->token = -1;
	ev->prompt_tokens = r->n_prompt;
	ev->cached_tokens = r->n_cached;
	ev->completion_tokens = r->n_gen;
}

/* Give the request's computed full pages to the prefix cache. */
static void cache_pages(engine *e, req *r)
{
	if (e->cfg.disable_radix_cache)
		return;
	int full = r->n_done / e->cfg.page_size;
	if (full > r->n_pages)
		full = r->n_pages;
	radix_insert(e->rc, r->tokens, full, r->pages);
}

static void release_pages(engine *e, req *r)
{
	kvcache_release(e->kc, r->pages, r->n_pages);
	r->n_pages = 0;
}

static void remove_running(engine *e, req *r)
{
	for (int i = 0; i < e->n_running; i++)
		if (e->running[i] == r) {
			memmove(&e->running[i], &e->running[i + 1], sizeof(req *) * (size_t)(e->n_running - i - 1));
			e->n_running--;
			return;
		}
}

/* Hand r's newly computed pages to the disaggregation layer. Pages that are
   complete go out as soon as their chunk is done; the last call also sends
   the partial last page and the first token. */
static void do_export(engine *e, req *r, bool last, const sampler_out *so)
{
	if (!e->cfg.kv_export || r->export_closed)
		return;
	int ps = e->cfg.page_size;
	int upto = last ? (r->n_done + ps - 1) / ps : r->n_done / ps;
	if (upto > r->n_pages)
		upto = r->n_pages;
	engine_kv_export x;
	memset(&x, 0, sizeof(x));
	x.rid = r->rid;
	x.user = r->user;
	x.first = r->n_exported;
	x.n = upto - r->n_exported;
	if (x.n < 0)
		x.n = 0;
	x.pages = r->pages + x.first;
	x.n_prompt = r->n_prompt;
	x.kv_tokens = last ? r->n_done : upto * ps;
	x.last = last;
	x.cached_tokens = r->n_cached;
	if (last && so) {
		x.first_token = so->id;
		x.logprob = so->logprob;
		x.n_top = so->n_top;
		memcpy(x.top, so->top, sizeof(sampler_logprob) * (size_t)so->n_top);
		x.queue_s = r->t_sched - r->t_submit;
		x.compute_s = clock_now_s() - r->t_sched;
	}
	if (x.n == 0 && !last)
		return;
	for (int i = 0; i < x.n; i++)
		kvcache_ref(e->kc, x.pages[i]);
	e->cfg.kv_export(e->cfg.pd_arg, &x);
	r->n_exported = upto;
	r->export_closed = last;
}

/* Final event for r (already out of every list), then free it. */
static void finish(engine *e, req *r, engine_finish why, int32_t token, const sampler_out *so,
		   const char *message)
{
	if (r->pd == ENGINE_PD_EXPORT && !r->export_closed && e->cfg.kv_export) {
		/* ended before its KV was complete: tell the transfer to give up */
		engine_kv_export x;
		memset(&x, 0, sizeof(x));
		x.rid = r->rid;
		x.user = r->user;
		x.last = x.failed = true;
		r->export_closed = true;
		e->cfg.kv_export(e->cfg.pd_arg, &x);
	}
	if (r->pd == ENGINE_PD_IMPORT && !r->admitted_once && e->cfg.kv_import) {
		/* ended while waiting for pages (an abort, a refusal): kv_import never
		   ran, so without this the transfer layer would keep its room (and
		   its connection) until the bootstrap timeout */
		e->cfg.kv_import(e->cfg.pd_arg, r->rid, r->user, NULL, 0);
	}
	engine_event ev;
	event_for(r, &ev);
	ev.finish = why;
	ev.token = token;
	if (so && token >= 0) {
		ev.logprob = so->logprob;
		ev.n_top = so->n_top;
		memcpy(ev.top, so->top, sizeof(sampler_logprob) * (size_t)so->n_top);
	}
	if (message)
		snprintf(ev.message, sizeof(ev.message), "%s", message);
	if (r->n_pages) {
		if (why != ENGINE_FINISH_ERROR)
			cache_pages(e, r);
		release_pages(e, r);
	}
	e->finished[why]++;
	emit(e, &ev);
	req_free(r);
}

/* ---------------------------------------------------------------- pages */

static int ensure_cap(void **p, int *cap, int need, size_t elem)
{
	if (need <= *cap)
		return 0;
	int nc = *cap ? *cap : 8;
	while (nc < need)
		nc *= 2;
	void *np = alloc_resize_array(*p, (size_t)nc, elem);
	if (!np)
		return ERR_NOMEM;
	*p = np;
	*cap = nc;
	return 0;
}

/* Pages from the free list, evicting the prefix cache if needed. */
static int take_pages(engine *e, int n, int32_t *out)
{
	if (n <= 0)
		return 0;
	int short_by = n - kvcache_n_free(e->kc);
	if (short_by > 0)
		radix_evict(e->rc, short_by);
	return kvcache_alloc(e->kc, n, out);
}

/* Make r's pages cover positions [0, upto). 0, ERR_FULL or ERR_NOMEM. */
static int grow_pages(engine *e, req *r, int upto)
{
	int need = (upto + e->cfg.page_size - 1) / e->cfg.page_size;
	if (need <= r->n_pages)
		return 0;
	if (ensure_cap((void **)&r->pages, &r->cap_pages, need, sizeof(int32_t)) < 0)
		return ERR_NOMEM;
	int rc = take_pages(e, need - r->n_pages, r->pages + r->n_pages);
	if (rc == 0)
		r->n_pages = need;
	return rc;
}

/* Back to the head of the queue, pages released. */
static void retract(engine *e, req *r)
{
	remove_running(e, r);
	if (r->n_pages) {
		cache_pages(e, r); /* what it computed stays reusable */
		release_pages(e, r);
	}
	r->n_done = 0;
	/* a decode-role request whose KV came from a prefill server: that KV is
	   gone (or in the prefix cache), and no transfer will bring it again, so
	   it resumes like a local request, recomputing what the cache lacks */
	if (r->pd == ENGINE_PD_IMPORT)
		r->pd = ENGINE_PD_NONE;
	r->next = e->wait_head;
	e->wait_head = r;
	if (!e->wait_tail)
		e->wait_tail = r;
	e->n_waiting++;
	e->retractions++;
	LOGI("engine", "retracted rid %llu (%d tokens) under KV pressure", (unsigned long long)r->rid,
	     r->n_tokens);
}

/* The most recently admitted running request other than keep, or NULL. */
static req *newest_running(engine *e, const req *keep)
{
	req *best = NULL;
	for (int i = 0; i < e->n_running; i++) {
		req *r = e->running[i];
		if (r != keep && (!best || r->admit_seq > best->admit_seq))
			best = r;
	}
	return best;
}

/* ---------------------------------------------------------------- scheduling */

static void unlink_waiting(engine *e, req *r, req *prev);

static void remove_importing(engine *e, req *r)
{
	for (int i = 0; i < e->n_importing; i++)
		if (e->importing[i] == r) {
			e->importing[i] = e->importing[--e->n_importing];
			return;
		}
}

static engine_finish check_stop(engine *e, const req *r, int32_t tok);

/* export_ready / fail: find rid wherever it is. */
static void apply_other(engine *e, const import_cmd *c)
{
	req *prev = NULL;
	for (req *r = e->wait_head; r; prev = r, r = r->next)
		if (r->rid == c->rid) {
			if (c->kind == CMD_EXPORT_READY) {
				r->dest_ready = true;
			} else {
				unlink_waiting(e, r, prev);
				finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, c->message);
			}
			return;
		}
	if (c->kind != CMD_FAIL)
		return;
	for (int i = 0; i < e->n_importing; i++)
		if (e->importing[i]->rid == c->rid) {
			/* only called before any transfer was set up for it */
			req *r = e->importing[i];
			remove_importing(e, r);
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, c->message);
			return;
		}
	for (int i = 0; i < e->n_running; i++)
		if (e->running[i]->rid == c->rid) {
			req *r = e->running[i];
			remove_running(e, r);
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, c->message);
			return;
		}
}

/* import_done / import_fail from the disaggregation layer. */
static void apply_import(engine *e, const import_cmd *c)
{
	if (c->kind == CMD_EXPORT_READY || c->kind == CMD_FAIL) {
		apply_other(e, c);
		return;
	}
	req *r = NULL;
	for (int i = 0; i < e->n_importing; i++)
		if (e->importing[i]->rid == c->rid)
			r = e->importing[i];
	if (!r)
		return; /* finished meanwhile (e.g. aborted without a cancel hook) */
	remove_importing(e, r);
	if (c->kind == CMD_IMPORT_FAIL_KEEP)
		r->n_pages = 0; /* the page references are the transfer layer's now */
	if (c->kind == CMD_IMPORT_FAIL || c->kind == CMD_IMPORT_FAIL_KEEP || r->abort_requested) {
		bool ab = r->abort_requested;
		finish(e, r, ab ? ENGINE_FINISH_ABORT : ENGINE_FINISH_ERROR, -1, NULL, ab ? "aborted" : c->message);
		return;
	}
	if (c->res.token < 0 || c->res.token >= e->n_vocab ||
	    ensure_cap((void **)&r->tokens, &r->cap_tokens, r->n_tokens + 1, sizeof(int32_t)) < 0) {
		finish(e, r, ENGINE_FINISH_ERROR, -1, NULL,
		       c->res.token < 0 || c->res.token >= e->n_vocab ? "the prefill sent a token outside the vocabulary"
								       : "out of memory");
		return;
	}
	r->n_done = r->n_prompt; /* the transfer filled positions [0, n_prompt) */
	r->n_cached = c->res.cached_tokens;
	r->tokens[r->n_tokens++] = c->res.token;
	r->n_gen = 1;
	e->gen_tok++;
	sampler_accept(r->smp, c->res.token);
	sampler_out so;
	memset(&so, 0, sizeof(so));
	so.id = c->res.token;
	so.logprob = c->res.logprob;
	so.n_top = c->res.n_top;
	memcpy(so.top, c->res.top, sizeof(sampler_logprob) * (size_t)c->res.n_top);
	engine_finish why = check_stop(e, r, c->res.token);
	if (why != ENGINE_FINISH_NONE) {
		finish(e, r, why, c->res.token, &so, NULL);
		return;
	}
	r->admit_seq = ++e->admit_counter;
	e->running[e->n_running++] = r;
	engine_event ev;
	event_for(r, &ev);
	ev.token = so.id;
	ev.logprob = so.logprob;
	ev.n_top = so.n_top;
	memcpy(ev.top, so.top, sizeof(sampler_logprob) * (size_t)so.n_top);
	emit(e, &ev);
}

/* Reserve pages for an IMPORT request: 1 admitted (or finished), 0 not now. */
static int admit_import(engine *e, req *r, req *prev)
{
	if (e->n_running + e->n_importing >= e->cfg.max_running)
		return 0;
	int tokens = r->n_prompt + (r->reserve < r->max_new ? r->reserve : r->max_new);
	if (tokens <= r->n_prompt)
		tokens = r->n_prompt + 1;
	int need = (tokens + e->cfg.page_size - 1) / e->cfg.page_size;
	if (need + 1 > kvcache_n_pages(e->kc)) {
		unlink_waiting(e, r, prev);
		finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, "request does not fit in the KV cache");
		return 1;
	}
	if (need > kvcache_n_free(e->kc) + radix_evictable(e->rc))
		return 0; /* back-pressure: the prefill waits until we have room */
	char err[ERR_LEN];
	if (!r->smp) {
		r->smp = sampler_create(&r->sp, e->n_vocab, err);
		if (!r->smp || sampler_accept_prompt(r->smp, r->tokens, r->n_prompt) < 0) {
			unlink_waiting(e, r, prev);
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, err);
			return 1;
		}
	}
	if (ensure_cap((void **)&r->pages, &r->cap_pages, need, sizeof(int32_t)) < 0 ||
	    take_pages(e, need, r->pages) < 0)
		return 0;
	unlink_waiting(e, r, prev);
	r->n_pages = need;
	r->admitted_once = true;
	r->t_sched = clock_now_s();
	e->importing[e->n_importing++] = r;
	e->cfg.kv_import(e->cfg.pd_arg, r->rid, r->user, r->pages, r->n_pages);
	return 1;
}

/* Under mu: take the inbox (requests in submission order). */
static req *take_inbox(engine *e)
{
	req *in = e->inbox_head;
	e->inbox_head = e->inbox_tail = NULL;
	e->n_inbox = 0;
	return in;
}

static void append_waiting(engine *e, req *in)
{
	while (in) {
		req *r = in;
		in = in->next;
		r->next = NULL;
		if (e->wait_tail)
			e->wait_tail->next = r;
		else
			e->wait_head = r;
		e->wait_tail = r;
		e->n_waiting++;
	}
}

static void drain_inbox(engine *e)
{
	uint64_t aborts[64];
	int n_ab = 0;
	/* pages whose export references came back, and disaggregation commands,
	   taken with the inbox under one lock: a command (or an abort, below)
	   always finds a request submitted before it. Taking them under two
	   locks lost an export_ready that came between, and its request waited
	   for ever. */
	pthread_mutex_lock(&e->mu);
	req *in = take_inbox(e);
	int32_t *rel = e->to_release;
	int n_rel = e->n_release;
	e->to_release = NULL;
	e->n_release = e->cap_release = 0;
	import_cmd *cmds = e->cmds;
	int n_cmds = e->n_cmds;
	e->cmds = NULL;
	e->n_cmds = e->cap_cmds = 0;
	pthread_mutex_unlock(&e->mu);
	append_waiting(e, in);
	if (n_rel)
		kvcache_release(e->kc, rel, n_rel);
	alloc_free(rel);
	for (int i = 0; i < n_cmds; i++)
		apply_import(e, &cmds[i]);
	alloc_free(cmds);

	/* aborts, in batches of 64 so the lock is never held while finishing */
	for (;;) {
		pthread_mutex_lock(&e->mu);
		n_ab = e->n_aborts < 64 ? e->n_aborts : 64;
		for (int i = 0; i < n_ab; i++)
			aborts[i] = e->aborts[e->n_aborts - n_ab + i];
		e->n_aborts -= n_ab;
		in = n_ab ? take_inbox(e) : NULL;
		pthread_mutex_unlock(&e->mu);
		if (!n_ab)
			break;
		append_waiting(e, in);
		for (int a = 0; a < n_ab; a++) {
			uint64_t rid = aborts[a];
			req **pp = &e->wait_head, *prev = NULL;
			bool done = false;
			while (*pp) {
				req *r = *pp;
				if (r->rid == rid) {
					*pp = r->next;
					if (e->wait_tail == r)
						e->wait_tail = prev;
					e->n_waiting--;
					finish(e, r, ENGINE_FINISH_ABORT, -1, NULL, "aborted");
					done = true;
					break;
				}
				prev = r;
				pp = &r->next;
			}
			for (int i = 0; !done && i < e->n_running; i++)
				if (e->running[i]->rid == rid) {
					req *r = e->running[i];
					remove_running(e, r);
					finish(e, r, ENGINE_FINISH_ABORT, -1, NULL, "aborted");
					done = true;
					break;
				}
			for (int i = 0; !done && i < e->n_importing; i++)
				if (e->importing[i]->rid == rid) {
					req *r = e->importing[i];
					if (r->abort_requested)
						break;
					r->abort_requested = true;
					if (e->cfg.kv_import_cancel) {
						e->cfg.kv_import_cancel(e->cfg.pd_arg, r->rid, r->user);
					} else {
						remove_importing(e, r);
						finish(e, r, ENGINE_FINISH_ABORT, -1, NULL, "aborted");
					}
					break;
				}
		}
	}
}

/* Pages a waiting request needs beyond its cached prefix. */
static int pages_needed(engine *e, req *r, int cached_pages)
{
	int total = (r->n_tokens + e->cfg.page_size - 1) / e->cfg.page_size;
	return total - cached_pages;
}

static int max_match_pages(engine *e, const req *r)
{
	/* leave at least one token to compute (its logits sample the next token) */
	return (r->n_tokens - 1) / e->cfg.page_size;
}

/* Pick the next waiting request: head (fcfs) or longest cached prefix (lpm). */
static req *pick_waiting(engine *e, req **prev_out)
{
	if (e->cfg.policy == ENGINE_POLICY_FCFS || e->cfg.disable_radix_cache) {
		req *prev = NULL;
		for (req *r = e->wait_head; r; prev = r, r = r->next)
			if (r->dest_ready) {
				*prev_out = prev;
				return r;
			}
		*prev_out = NULL;
		return NULL;
	}
	req *best = NULL, *best_prev = NULL, *prev = NULL;
	int best_len = -1;
	int scanned = 0;
	for (req *r = e->wait_head; r && scanned < 128; prev = r, r = r->next, scanned++) {
		if (!r->dest_ready)
			continue;
		int len = radix_match_len(e->rc, r->tokens, r->n_tokens, max_match_pages(e, r));
		if (len > best_len) {
			best = r;
			best_prev = prev;
			best_len = len;
		}
	}
	*prev_out = best_prev;
	return best;
}

static void unlink_waiting(engine *e, req *r, req *prev)
{
	if (prev)
		prev->next = r->next;
	else
		e->wait_head = r->next;
	if (e->wait_tail == r)
		e->wait_tail = prev;
	r->next = NULL;
	e->n_waiting--;
}

/* Try to move one waiting request into the running set. 1 admitted, 0 not now. */
static int admit_one(engine *e)
{
	req *prev, *r = pick_waiting(e, &prev);
	if (!r)
		return 0;
	if (r->pd == ENGINE_PD_IMPORT)
		return admit_import(e, r, prev);
	if (e->n_running + e->n_importing >= e->cfg.max_running)
		return 0;
	int total_pages = (r->n_tokens + e->cfg.page_size - 1) / e->cfg.page_size;
	if (total_pages + 1 > kvcache_n_pages(e->kc)) {
		unlink_waiting(e, r, prev);
		finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, "request does not fit in the KV cache");
		return 1;
	}
	int cached = e->cfg.disable_radix_cache ? 0 : radix_match_len(e->rc, r->tokens, r->n_tokens, max_match_pages(e, r));
	int need = pages_needed(e, r, cached) + e->n_running; /* one page of decode room per running request */
	int avail = kvcache_n_free(e->kc) + radix_evictable(e->rc);
	if (need > avail && e->n_running > 0)
		return 0;
	if (!r->smp) {
		char err[ERR_LEN];
		r->smp = sampler_create(&r->sp, e->n_vocab, err);
		if (!r->smp || sampler_accept_prompt(r->smp, r->tokens, r->n_prompt) < 0) {
			unlink_waiting(e, r, prev);
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, err);
			return 1;
		}
	}
	unlink_waiting(e, r, prev);
	if (ensure_cap((void **)&r->pages, &r->cap_pages, total_pages, sizeof(int32_t)) < 0) {
		finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, "out of memory");
		return 1;
	}
	int got = cached ? radix_match(e->rc, r->tokens, r->n_tokens, cached, r->pages) : 0;
	r->n_pages = got;
	r->n_done = got * e->cfg.page_size;
	if (!r->admitted_once) {
		r->n_cached = r->n_done < r->n_prompt ? r->n_done : r->n_prompt;
		e->cached_tok += r->n_cached;
		r->admitted_once = true;
	}
	if (r->t_sched == 0)
		r->t_sched = clock_now_s();
	r->admit_seq = ++e->admit_counter;
	e->running[e->n_running++] = r;
	return 1;
}

/* Plan this step: fill b_req/b_take. Returns the number of requests. */
static int plan_step(engine *e)
{
	int n = 0;
	/* decodes first: every request with exactly one pending token */
	for (int i = 0; i < e->n_running; i++) {
		req *r = e->running[i];
		if (r->n_tokens - r->n_done != 1)
			continue;
		int rc;
		while ((rc = grow_pages(e, r, r->n_done + 1)) == ERR_FULL) {
			req *victim = newest_running(e, r);
			if (!victim)
				break;
			/* the victim may already be planned: drop it from the plan */
			for (int k = 0; k < n; k++)
				if (e->b_req[k] == victim) {
					memmove(&e->b_req[k], &e->b_req[k + 1], sizeof(req *) * (size_t)(n - k - 1));
					memmove(&e->b_take[k], &e->b_take[k + 1], sizeof(int) * (size_t)(n - k - 1));
					n--;
					break;
				}
			int vi = -1;
			for (int k = 0; k < e->n_running; k++)
				if (e->running[k] == victim)
					vi = k;
			retract(e, victim);
			if (vi >= 0 && vi < i)
				i--; /* running[] shifted under us */
		}
		/* no page and nobody to retract, but pages are reserved for KV in
		   flight (decode role): they come back, or their requests start
		   running and can be retracted; this request sits the step out */
		if (rc == ERR_FULL && e->n_importing > 0)
			continue;
		if (rc < 0) {
			remove_running(e, r);
			i--;
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL,
			       rc == ERR_NOMEM ? "out of memory" : "KV cache exhausted");
			continue;
		}
		e->b_req[n] = r;
		e->b_take[n++] = 1;
	}
	/* prefill: requests already prefilling, then new admissions */
	int budget = e->cfg.chunked_prefill_size;
	int limit = e->cfg.max_prefill_tokens;
	for (int i = 0; i < e->n_running && budget > 0; i++) {
		req *r = e->running[i];
		int pending = r->n_tokens - r->n_done;
		if (pending <= 1)
			continue;
		bool planned = false;
		for (int k = 0; k < n; k++)
			planned |= e->b_req[k] == r;
		if (planned)
			continue;
		int take = pending < budget ? pending : budget;
		if (take > limit)
			take = limit;
		if (grow_pages(e, r, r->n_done + take) < 0) {
			/* take what the pages it has cover */
			take = r->n_pages * e->cfg.page_size - r->n_done;
			if (take <= 0)
				continue;
		}
		e->b_req[n] = r;
		e->b_take[n++] = take;
		budget -= take;
		limit -= take;
	}
	while (budget > 0 && limit > 0 && e->wait_head && n < e->cfg.max_running) {
		int before = e->n_running;
		if (!admit_one(e))
			break;
		if (e->n_running == before)
			continue; /* it finished with an error instead */
		req *r = e->running[e->n_running - 1];
		int pending = r->n_tokens - r->n_done;
		int take = pending < budget ? pending : budget;
		if (take > limit)
			take = limit;
		if (grow_pages(e, r, r->n_done + take) < 0) {
			take = r->n_pages * e->cfg.page_size - r->n_done;
			if (take <= 0)
				continue;
		}
		e->b_req[n] = r;
		e->b_take[n++] = take;
		budget -= take;
		limit -= take;
	}
	return n;
}

/* After r's token was appended: should it stop? */
static engine_finish check_stop(engine *e, const req *r, int32_t tok)
{
	if (!r->ignore_eos && tokenizer_is_eog(e->tok, tok))
		return ENGINE_FINISH_STOP;
	for (int i = 0; i < r->n_stop; i++)
		if (r->stop_ids[i] == tok)
			return ENGINE_FINISH_STOP;
	if (r->n_gen >= r->max_new || r->n_tokens >= e->n_ctx)
		return ENGINE_FINISH_LENGTH;
	return ENGINE_FINISH_NONE;
}

static void run_step(engine *e, int n)
{
	int T = 0;
	for (int k = 0; k < n; k++) {
		req *r = e->b_req[k];
		for (int j = 0; j < e->b_take[k]; j++, T++) {
			int p = r->n_done + j;
			e->b_tok[T] = r->tokens[p];
			e->b_pos[T] = p;
			e->b_seq[T] = k;
			e->b_want[T] = p == r->n_tokens - 1;
		}
		e->b_pages[k] = r->pages;
		e->b_npages[k] = r->n_pages;
	}
	llama_batch b = { .n_tokens = T, .token = e->b_tok, .pos = e->b_pos, .seq = e->b_seq,
			  .want_logits = e->b_want, .pages = e->b_pages, .n_pages = e->b_npages, .n_seqs = n };
	char err[ERR_LEN];
	int rc = 0;
	if (e->cfg.skip_compute) /* benchmarks: at most one logits row per request */
		memset(e->logits, 0, (size_t)n * (size_t)e->n_vocab * sizeof(float));
	else
		rc = llama_forward(e->lc, kvcache_view(e->kc), &b, e->logits, err);
	e->steps++;
	if (rc < 0) {
		/* our own plan broke the forward's contract: fail these requests, keep serving */
		LOGE("engine", "forward failed: %s", err);
		for (int k = 0; k < n; k++) {
			remove_running(e, e->b_req[k]);
			finish(e, e->b_req[k], ENGINE_FINISH_ERROR, -1, NULL, err);
		}
		return;
	}
	int row = 0;
	for (int k = 0; k < n; k++) {
		req *r = e->b_req[k];
		int prompt_part = r->n_prompt - r->n_done; /* positions < n_prompt count as prompt */
		if (prompt_part > 0)
			e->prompt_tok += prompt_part < e->b_take[k] ? prompt_part : e->b_take[k];
		r->n_done += e->b_take[k];
		if (r->n_done < r->n_tokens) {
			if (r->pd == ENGINE_PD_EXPORT)
				do_export(e, r, false, NULL); /* this chunk's whole pages leave now */
			continue; /* more prompt to come */
		}
		const float *lg = e->logits + (size_t)row++ * e->n_vocab;
		if (!r->prompt_inserted && r->n_done >= r->n_prompt) {
			cache_pages(e, r); /* let concurrent requests share the prompt now */
			r->prompt_inserted = true;
		}
		if (r->max_new == 0) { /* prefill only */
			remove_running(e, r);
			finish(e, r, ENGINE_FINISH_LENGTH, -1, NULL, NULL);
			continue;
		}
		sampler_out so;
		if (sampler_sample(r->smp, lg, &so) < 0) {
			remove_running(e, r);
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, "sampling failed: no finite logits");
			continue;
		}
		sampler_accept(r->smp, so.id);
		if (ensure_cap((void **)&r->tokens, &r->cap_tokens, r->n_tokens + 1, sizeof(int32_t)) < 0) {
			remove_running(e, r);
			finish(e, r, ENGINE_FINISH_ERROR, -1, NULL, "out of memory");
			continue;
		}
		r->tokens[r->n_tokens++] = so.id;
		r->n_gen++;
		e->gen_tok++;
		engine_finish why = check_stop(e, r, so.id);
		if (r->pd == ENGINE_PD_EXPORT) {
			do_export(e, r, true, &so); /* last pages + the first token */
			if (why == ENGINE_FINISH_NONE)
				why = ENGINE_FINISH_LENGTH; /* a prefill's answer is one token */
		}
		if (why != ENGINE_FINISH_NONE) {
			remove_running(e, r);
			finish(e, r, why, so.id, &so, NULL);
			continue;
		}
		engine_event ev;
		event_for(r, &ev);
		ev.token = so.id;
		ev.logprob = so.logprob;
		ev.n_top = so.n_top;
		memcpy(ev.top, so.top, sizeof(sampler_logprob) * (size_t)so.n_top);
		emit(e, &ev);
	}
}

static void publish_stats(engine *e)
{
	engine_stats s;
	memset(&s, 0, sizeof(s));
	s.running = e->n_running;
	s.waiting = e->n_waiting;
	s.importing = e->n_importing;
	s.pages_total = kvcache_n_pages(e->kc);
	s.pages_free = kvcache_n_free(e->kc);
	s.pages_cached = radix_n_pages(e->rc);
	s.page_size = e->cfg.page_size;
	s.max_total_tokens = e->max_total_tokens;
	s.kv_bytes = kvcache_bytes(e->kc);
	s.prompt_tokens = e->prompt_tok;
	s.generation_tokens = e->gen_tok;
	s.cached_tokens = e->cached_tok;
	s.steps = e->steps;
	s.retractions = e->retractions;
	memcpy(s.requests_finished, e->finished, sizeof(s.requests_finished));
	pthread_mutex_lock(&e->mu);
	e->stats = s;
	pthread_mutex_unlock(&e->mu);
}

static void notify(engine *e)
{
	if (e->notify_pending && e->cfg.notify)
		e->cfg.notify(e->cfg.notify_arg);
	e->notify_pending = false;
}

static void *scheduler_main(void *arg)
{
	engine *e = arg;
	for (;;) {
		pthread_mutex_lock(&e->mu);
		while (!e->stop && !e->inbox_head && !e->n_aborts && !e->flush_pending && !e->n_cmds &&
		       !e->n_release && e->n_running == 0 && e->n_waiting == 0)
			pthread_cond_wait(&e->cv, &e->mu);
		bool stop = e->stop;
		int flush = e->flush_pending;
		pthread_mutex_unlock(&e->mu);
		if (stop)
			break;
		drain_inbox(e);
		if (flush) {
			radix_clear(e->rc);
			publish_stats(e);
			pthread_mutex_lock(&e->mu);
			e->flush_pending = 0;
			e->flush_gen++;
			pthread_cond_broadcast(&e->flush_cv);
			pthread_mutex_unlock(&e->mu);
		}
		int n = plan_step(e);
		bool wait_import = false;
		if (n == 0 && e->n_running > 0) {
			/* nobody could progress (prefills starved of pages): make room */
			req *victim = newest_running(e, NULL);
			if (e->n_running > 1) {
				retract(e, victim);
			} else if (e->n_importing > 0) {
				wait_import = true; /* pages of transfers in flight: wait for their news */
			} else {
				remove_running(e, victim);
				finish(e, victim, ENGINE_FINISH_ERROR, -1, NULL, "KV cache exhausted");
			}
			if (!wait_import)
				n = plan_step(e);
		}
		if (n > 0)
			run_step(e, n);
		publish_stats(e);
		notify(e);
		if (n > 0 && e->test_step_delay_ms > 0) {
			/* test hook: a slow step, after its events and exports are out */
			struct timespec ts = { e->test_step_delay_ms / 1000, (long)(e->test_step_delay_ms % 1000) * 1000000L };
			nanosleep(&ts, NULL);
		}
		if (n == 0 && ((e->n_waiting > 0 && e->n_running == 0) || wait_import)) {
			/* a waiting head that cannot be admitted with nothing running is
			   finished by admit_one; reaching here means we must wait for input
			   (or for an import's completion or failure, a command) */
			pthread_mutex_lock(&e->mu);
			if (!e->inbox_head && !e->n_aborts && !e->flush_pending && !e->stop && !e->n_cmds &&
			    !e->n_release)
				pthread_cond_wait(&e->cv, &e->mu);
			pthread_mutex_unlock(&e->mu);
		}
	}
	return NULL;
}

/* ---------------------------------------------------------------- create */

/* MemAvailable from /proc/meminfo in bytes; 0 if unknown. */
static uint64_t mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	uint64_t kb = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %lu kB", (unsigned long *)&kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

engine *engine_create(const engine_config *cfg_in, char err[ERR_LEN])
{
	engine_config cfg = *cfg_in;
	if (!cfg.model_path) {
		err_set(err, ERR_INVAL, "engine: no model path");
		return NULL;
	}
	if (cfg.page_size < 1 || cfg.page_size > 1024 || cfg.max_running < 1 || cfg.chunked_prefill_size < 1 ||
	    cfg.max_prefill_tokens < 1 || cfg.max_queued < 1) {
		err_set(err, ERR_INVAL, "engine: page size, max running, chunk and queue sizes must be positive");
		return NULL;
	}
	engine *e = alloc_zeroed(1, sizeof(*e));
	if (!e) {
		err_set(err, ERR_NOMEM, "out of memory creating the engine");
		return NULL;
	}
	e->cfg = cfg;
	/* Test-only hook (tests/faults/): sleep this long after every forward
	   step, so that a prefill pauses between the chunks it exports and a
	   fault can be injected mid-transfer. Never set in production. */
	const char *delay = getenv("PDSERVE_TEST_STEP_DELAY_MS");
	if (delay && *delay) {
		long ms = strtol(delay, NULL, 10);
		e->test_step_delay_ms = ms > 0 && ms <= 60000 ? (int)ms : 0;
		if (e->test_step_delay_ms)
			LOGW("engine", "PDSERVE_TEST_STEP_DELAY_MS=%d: every step sleeps (test hook)", e->test_step_delay_ms);
	}
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->cv, NULL);
	pthread_cond_init(&e->flush_cv, NULL);
	kern_init();
	if (!(e->m = llama_model_load(cfg.model_path, err)))
		goto fail;
	const llama_hparams *hp = llama_model_hparams(e->m);
	if (!(e->tok = tokenizer_create(llama_model_gguf(e->m), err)))
		goto fail;
	e->n_vocab = hp->n_vocab;
	e->n_ctx = cfg.context_length > 0 ? cfg.context_length : hp->n_ctx_train;

	/* KV pool: max_total_tokens, else mem_fraction_static of what is left after the weights */
	size_t per_token = 2 * (size_t)hp->n_layer * llama_kv_page_bytes(hp, cfg.kv_dtype, 1);
	if (!per_token) {
		err_set(err, ERR_INVAL, "unsupported kv cache dtype %s", qtype_name(cfg.kv_dtype));
		goto fail;
	}
	int64_t tokens = cfg.max_total_tokens;
	if (tokens <= 0) {
		double frac = cfg.mem_fraction_static > 0 ? cfg.mem_fraction_static : 0.5;
		uint64_t avail = mem_available(), weights = llama_model_weight_bytes(e->m);
		double budget = avail > weights ? frac * (double)(avail - weights) : 0;
		tokens = (int64_t)(budget / (double)per_token);
		int64_t useful = (int64_t)cfg.max_running * e->n_ctx;
		if (tokens > useful)
			tokens = useful;
		if (tokens < e->n_ctx) {
			err_set(err, ERR_FULL,
				"KV cache: %.0f MiB (mem_fraction_static %.2f of %.0f MiB left after %.0f MiB of weights) "
				"holds %lld tokens, fewer than the context length %d; lower --context-length or raise "
				"--mem-fraction-static / --max-total-tokens",
				budget / 1048576.0, frac, (double)(avail > weights ? avail - weights : 0) / 1048576.0,
				(double)weights / 1048576.0, (long long)tokens, e->n_ctx);
			goto fail;
		}
	}
	e->max_total_tokens = tokens;
	kvcache_config kcfg = { .dtype = cfg.kv_dtype, .page_size = cfg.page_size,
				.n_pages = (int)((tokens + cfg.page_size - 1) / cfg.page_size),
				.shared = cfg.kv_shared,
				.alloc = cfg.kv_alloc,
				.release = cfg.kv_release,
				.alloc_arg = cfg.pd_arg };
	if (!(e->kc = kvcache_create(hp, &kcfg, err)))
		goto fail;
	if (!(e->rc = radix_create(e->kc, err)))
		goto fail;
	if (!(e->tp = threadpool_create(cfg.n_threads > 0 ? cfg.n_threads : threadpool_ncpu(), err)))
		goto fail;
	e->max_batch = cfg.max_running + cfg.chunked_prefill_size;
	llama_ctx_config lcfg = { .max_tokens = e->max_batch, .n_ctx = e->n_ctx, .tp = e->tp };
	if (!(e->lc = llama_ctx_create(e->m, &lcfg, err)))
		goto fail;
	size_t B = (size_t)e->max_batch, R = (size_t)cfg.max_running;
	e->b_tok = alloc_array(B, sizeof(int32_t));
	e->b_pos = alloc_array(B, sizeof(int32_t));
	e->b_seq = alloc_array(B, sizeof(int32_t));
	e->b_want = alloc_array(B, 1);
	e->b_npages = alloc_array(R, sizeof(int32_t));
	e->b_pages = alloc_array(R, sizeof(int32_t *));
	e->b_req = alloc_array(R, sizeof(req *));
	e->b_take = alloc_array(R, sizeof(int));
	e->running = alloc_array(R, sizeof(req *));
	e->importing = alloc_array(R, sizeof(req *));
	e->logits = alloc_array(R * (size_t)e->n_vocab, sizeof(float));
	if (!e->b_tok || !e->b_pos || !e->b_seq || !e->b_want || !e->b_npages || !e->b_pages || !e->b_req ||
	    !e->b_take || !e->running || !e->importing || !e->logits) {
		err_set(err, ERR_NOMEM, "out of memory for the engine's batch buffers");
		goto fail;
	}
	publish_stats(e);
	if (pthread_create(&e->thread, NULL, scheduler_main, e) != 0) {
		err_set(err, ERR_NOMEM, "cannot start the scheduler thread");
		goto fail;
	}
	e->thread_started = true;
	LOGI("engine", "%s: %s, ctx %d, KV pool %lld tokens (%d pages of %d, %s, %.1f MiB), %d threads",
	     cfg.model_path, hp->arch_name, e->n_ctx, (long long)tokens, kcfg.n_pages, cfg.page_size,
	     qtype_name(cfg.kv_dtype), (double)kvcache_bytes(e->kc) / 1048576.0, threadpool_size(e->tp));
	return e;
fail:
	engine_destroy(e);
	return NULL;
}

void engine_destroy(engine *e)
{
	if (!e)
		return;
	if (e->thread_started) {
		pthread_mutex_lock(&e->mu);
		e->stop = true;
		pthread_cond_broadcast(&e->cv);
		pthread_cond_broadcast(&e->flush_cv);
		pthread_mutex_unlock(&e->mu);
		pthread_join(e->thread, NULL);
	}
	/* free every request still around (no events: the consumer is going away) */
	for (req *r = e->inbox_head, *nx; r; r = nx) {
		nx = r->next;
		req_free(r);
	}
	for (req *r = e->wait_head, *nx; r; r = nx) {
		nx = r->next;
		req_free(r);
	}
	for (int i = 0; i < e->n_running; i++) {
		if (e->kc)
			kvcache_release(e->kc, e->running[i]->pages, e->running[i]->n_pages);
		req_free(e->running[i]);
	}
	for (int i = 0; i < e->n_importing; i++) {
		if (e->kc)
			kvcache_release(e->kc, e->importing[i]->pages, e->importing[i]->n_pages);
		req_free(e->importing[i]);
	}
	radix_destroy(e->rc);
	kvcache_destroy(e->kc);
	llama_ctx_destroy(e->lc);
	threadpool_destroy(e->tp);
	tokenizer_destroy(e->tok);
	llama_model_destroy(e->m);
	alloc_free(e->b_tok);
	alloc_free(e->b_pos);
	alloc_free(e->b_seq);
	alloc_free(e->b_want);
	alloc_free(e->b_npages);
	alloc_free(e->b_pages);
	alloc_free(e->b_req);
	alloc_free(e->b_take);
	alloc_free(e->running);
	alloc_free(e->importing);
	alloc_free(e->cmds);
	alloc_free(e->to_release);
	alloc_free(e->logits);
	alloc_free(e->aborts);
	alloc_free(e->live);
	alloc_free(e->outbox);
	pthread_cond_destroy(&e->flush_cv);
	pthread_cond_destroy(&e->cv);
	pthread_mutex_destroy(&e->mu);
	alloc_free(e);
}

const tokenizer *engine_tokenizer(const engine *e) { return e->tok; }
const llama_hparams *engine_hparams(const engine *e) { return llama_model_hparams(e->m); }
const llama_model *engine_model(const engine *e) { return e->m; }
int engine_context_length(const engine *e) { return e->n_ctx; }

/* ---------------------------------------------------------------- API */

int engine_submit(engine *e, const engine_request *in, char err[ERR_LEN])
{
	if (in->n_prompt < 1)
		return err_set(err, ERR_INVAL, "the prompt is empty");
	if (in->max_new_tokens < 0)
		return err_set(err, ERR_INVAL, "max_new_tokens: %d is negative", in->max_new_tokens);
	if ((int64_t)in->n_prompt + in->max_new_tokens > e->n_ctx)
		return err_set(err, ERR_INVAL,
			       "this model's maximum context length is %d tokens, but %d prompt tokens + %d "
			       "max_tokens were requested",
			       e->n_ctx, in->n_prompt, in->max_new_tokens);
	int pages_needed = (in->n_prompt + 1 + e->cfg.page_size - 1) / e->cfg.page_size;
	if (pages_needed + 1 > kvcache_n_pages(e->kc))
		return err_set(err, ERR_INVAL,
			       "the prompt needs %d KV pages but the pool has %d (raise --max-total-tokens or "
			       "--mem-fraction-static)",
			       pages_needed, kvcache_n_pages(e->kc));
	for (int i = 0; i < in->n_prompt; i++)
		if (in->prompt[i] < 0 || in->prompt[i] >= e->n_vocab)
			return err_set(err, ERR_INVAL, "prompt token %d: id %d is outside the vocabulary (0..%d)", i,
				       in->prompt[i], e->n_vocab - 1);
	for (int i = 0; i < in->n_stop_ids; i++)
		if (in->stop_ids[i] < 0 || in->stop_ids[i] >= e->n_vocab)
			return err_set(err, ERR_INVAL, "stop_token_ids: id %d is outside the vocabulary", in->stop_ids[i]);
	int rc = sampler_params_validate(&in->sampling, e->n_vocab, err);
	if (rc < 0)
		return rc;
	if ((in->pd == ENGINE_PD_EXPORT && !e->cfg.kv_export) || (in->pd == ENGINE_PD_IMPORT && !e->cfg.kv_import))
		return err_set(err, ERR_INVAL, "this engine does not run disaggregated requests");
	if (in->pd == ENGINE_PD_IMPORT && in->max_new_tokens < 1)
		return err_set(err, ERR_INVAL, "a decode request needs max_new_tokens >= 1");

	req *r = alloc_zeroed(1, sizeof(*r));
	if (!r)
		return err_set(err, ERR_NOMEM, "out of memory");
	r->rid = in->rid;
	r->user = in->user;
	r->n_prompt = r->n_tokens = in->n_prompt;
	r->max_new = in->max_new_tokens;
	r->ignore_eos = in->ignore_eos;
	r->sp = in->sampling;
	r->pd = in->pd;
	r->dest_ready = in->pd != ENGINE_PD_EXPORT;
	r->reserve = in->reserve_tokens > 0 ? in->reserve_tokens : 0;
	r->t_submit = clock_now_s();
	r->cap_tokens = in->n_prompt + (in->max_new_tokens < 64 ? in->max_new_tokens : 64) + 1;
	r->tokens = alloc_array((size_t)r->cap_tokens, sizeof(int32_t));
	if (!r->tokens)
		goto nomem;
	memcpy(r->tokens, in->prompt, sizeof(int32_t) * (size_t)in->n_prompt);
	if (in->sampling.n_logit_bias > 0) {
		r->bias = alloc_array((size_t)in->sampling.n_logit_bias, sizeof(sampler_bias));
		if (!r->bias)
			goto nomem;
		memcpy(r->bias, in->sampling.logit_bias, sizeof(sampler_bias) * (size_t)in->sampling.n_logit_bias);
	}
	r->sp.logit_bias = r->bias;
	if (in->n_stop_ids > 0) {
		r->stop_ids = alloc_array((size_t)in->n_stop_ids, sizeof(int32_t));
		if (!r->stop_ids)
			goto nomem;
		memcpy(r->stop_ids, in->stop_ids, sizeof(int32_t) * (size_t)in->n_stop_ids);
		r->n_stop = in->n_stop_ids;
	}
	/* ids the min_tokens ban applies to: model EOG (unless ignored) + stop ids */
	size_t n_eog = 0;
	const int32_t *eog = tokenizer_eog_ids(e->tok, &n_eog);
	if (in->ignore_eos)
		n_eog = 0;
	r->eog = alloc_array(n_eog + (size_t)r->n_stop + 1, sizeof(int32_t));
	if (!r->eog)
		goto nomem;
	if (n_eog)
		memcpy(r->eog, eog, sizeof(int32_t) * n_eog);
	if (r->n_stop)
		memcpy(r->eog + n_eog, r->stop_ids, sizeof(int32_t) * (size_t)r->n_stop);
	r->sp.eog_ids = r->eog;
	r->sp.n_eog_ids = (int32_t)(n_eog + (size_t)r->n_stop);

	pthread_mutex_lock(&e->mu);
	if (e->n_inbox + e->stats.waiting >= e->cfg.max_queued) {
		pthread_mutex_unlock(&e->mu);
		req_free(r);
		return err_set(err, ERR_FULL, "the server is overloaded: %d requests are waiting (max %d)",
			       e->n_inbox + e->stats.waiting, e->cfg.max_queued);
	}
	int dup = live_add(e, r->rid);
	if (dup != 0) {
		pthread_mutex_unlock(&e->mu);
		req_free(r);
		return dup > 0 ? err_set(err, ERR_INVAL, "request id %llu is already in use", (unsigned long long)in->rid)
			       : err_set(err, ERR_NOMEM, "out of memory");
	}
	if (e->inbox_tail)
		e->inbox_tail->next = r;
	else
		e->inbox_head = r;
	e->inbox_tail = r;
	e->n_inbox++;
	pthread_cond_signal(&e->cv);
	pthread_mutex_unlock(&e->mu);
	return 0;
nomem:
	req_free(r);
	return err_set(err, ERR_NOMEM, "out of memory");
}

void engine_abort(engine *e, uint64_t rid)
{
	pthread_mutex_lock(&e->mu);
	if (live_has(e, rid)) {
		if (e->n_aborts == e->cap_aborts) {
			int nc = e->cap_aborts ? e->cap_aborts * 2 : 16;
			uint64_t *na = alloc_resize_array(e->aborts, (size_t)nc, sizeof(uint64_t));
			if (na) {
				e->aborts = na;
				e->cap_aborts = nc;
			}
		}
		if (e->n_aborts < e->cap_aborts)
			e->aborts[e->n_aborts++] = rid;
		else
			LOGE("engine", "out of memory queueing the abort of rid %llu", (unsigned long long)rid);
		pthread_cond_signal(&e->cv);
	}
	pthread_mutex_unlock(&e->mu);
}

int engine_poll(engine *e, engine_event *out, int max)
{
	int n = 0;
	pthread_mutex_lock(&e->mu);
	while (n < max && e->out_n) {
		out[n++] = e->outbox[e->out_head];
		e->out_head = (e->out_head + 1) % e->out_cap;
		e->out_n--;
	}
	pthread_mutex_unlock(&e->mu);
	return n;
}

void engine_get_stats(engine *e, engine_stats *out)
{
	pthread_mutex_lock(&e->mu);
	*out = e->stats;
	out->waiting += e->n_inbox;
	pthread_mutex_unlock(&e->mu);
}

const struct kvcache *engine_kvcache(const engine *e)
{
	return e->kc;
}

void engine_release_pages(engine *e, const int32_t *pages, int n)
{
	if (n <= 0)
		return;
	pthread_mutex_lock(&e->mu);
	if (ensure_cap((void **)&e->to_release, &e->cap_release, e->n_release + n, sizeof(int32_t)) == 0) {
		memcpy(e->to_release + e->n_release, pages, sizeof(int32_t) * (size_t)n);
		e->n_release += n;
		pthread_cond_signal(&e->cv);
	} else {
		LOGE("engine", "out of memory returning %d pages; they stay allocated", n);
	}
	pthread_mutex_unlock(&e->mu);
}

static int push_cmd(engine *e, const import_cmd *c)
{
	pthread_mutex_lock(&e->mu);
	int rc = ensure_cap((void **)&e->cmds, &e->cap_cmds, e->n_cmds + 1, sizeof(import_cmd));
	if (rc == 0) {
		e->cmds[e->n_cmds++] = *c;
		pthread_cond_signal(&e->cv);
	}
	pthread_mutex_unlock(&e->mu);
	return rc;
}

int engine_import_done(engine *e, uint64_t rid, const engine_import_result *res)
{
	import_cmd c;
	memset(&c, 0, sizeof(c));
	c.rid = rid;
	c.kind = CMD_IMPORT_DONE;
	c.res = *res;
	if (c.res.n_top > SAMPLER_MAX_TOP_LOGPROBS)
		c.res.n_top = SAMPLER_MAX_TOP_LOGPROBS;
	if (c.res.n_top < 0)
		c.res.n_top = 0;
	pthread_mutex_lock(&e->mu);
	bool live = live_has(e, rid);
	pthread_mutex_unlock(&e->mu);
	if (!live)
		return ERR_NOTFOUND;
	return push_cmd(e, &c);
}

static void import_fail(engine *e, uint64_t rid, const char *message, cmd_kind kind)
{
	import_cmd c;
	memset(&c, 0, sizeof(c));
	c.rid = rid;
	c.kind = kind;
	snprintf(c.message, sizeof(c.message), "%s", message ? message : "KV transfer failed");
	if (push_cmd(e, &c) < 0)
		LOGE("engine", "out of memory failing rid %llu", (unsigned long long)rid);
}

void engine_import_fail(engine *e, uint64_t rid, const char *message)
{
	import_fail(e, rid, message, CMD_IMPORT_FAIL);
}

void engine_import_fail_keep(engine *e, uint64_t rid, const char *message)
{
	import_fail(e, rid, message, CMD_IMPORT_FAIL_KEEP);
}

void engine_export_ready(engine *e, uint64_t rid)
{
	import_cmd c;
	memset(&c, 0, sizeof(c));
	c.rid = rid;
	c.kind = CMD_EXPORT_READY;
	if (push_cmd(e, &c) < 0)
		LOGE("engine", "out of memory starting rid %llu", (unsigned long long)rid);
}

void engine_fail(engine *e, uint64_t rid, const char *message)
{
	import_cmd c;
	memset(&c, 0, sizeof(c));
	c.rid = rid;
	c.kind = CMD_FAIL;
	snprintf(c.message, sizeof(c.message), "%s", message ? message : "failed");
	if (push_cmd(e, &c) < 0)
		LOGE("engine", "out of memory failing rid %llu", (unsigned long long)rid);
}

void engine_flush_cache(engine *e)
{
	pthread_mutex_lock(&e->mu);
	uint64_t gen = e->flush_gen;
	e->flush_pending = 1;
	pthread_cond_signal(&e->cv);
	while (e->flush_gen == gen && !e->stop)
		pthread_cond_wait(&e->flush_cv, &e->mu);
	pthread_mutex_unlock(&e->mu);
}
