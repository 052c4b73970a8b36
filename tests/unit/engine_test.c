/* engine_test.c - the serving engine: continuous batching, prefix cache,
 * retraction, aborts, and that none of it changes what a request produces.
 *
 * Runs on stories260K (real weights; skipped without ../shared) and, where
 * only determinism matters, on the model `pdserve model synth` writes.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "engine/engine.h"
#include "engine/kvcache.h"
#include "kernels/qtypes.h"
#include "testutil.h"

/* ---- a tiny event collector ---------------------------------------------- */

#define MAXR 64
#define MAXT 512

typedef struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int woken;
} waker;

static void wake(void *arg)
{
	waker *w = arg;
	pthread_mutex_lock(&w->mu);
	w->woken = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

typedef struct {
	int32_t toks[MAXT];
	int n;
	engine_finish finish;
	int cached, prompt_tokens, completion_tokens;
	int done;
	char message[128];
} result;

typedef struct {
	engine *e;
	waker w;
	result res[MAXR];
} harness;

static void harness_open(harness *h, engine_config *cfg)
{
	char err[ERR_LEN];
	memset(h, 0, sizeof(*h));
	pthread_mutex_init(&h->w.mu, NULL);
	pthread_cond_init(&h->w.cv, NULL);
	cfg->notify = wake;
	cfg->notify_arg = &h->w;
	h->e = engine_create(cfg, err);
	cr_assert(h->e, "engine_create: %s", err);
}

static void harness_close(harness *h)
{
	engine_destroy(h->e);
	pthread_cond_destroy(&h->w.cv);
	pthread_mutex_destroy(&h->w.mu);
}

/* Drain events until `want` requests (rids 0..MAXR) are done, or 60 s. */
static void pump(harness *h, int want, void (*on_event)(harness *, const engine_event *))
{
	int done = 0;
	for (int r = 0; r < MAXR; r++)
		done += h->res[r].done;
	time_t deadline = time(NULL) + 60;
	while (done < want) {
		engine_event ev[32];
		int n = engine_poll(h->e, ev, 32);
		for (int i = 0; i < n; i++) {
			cr_assert_lt(ev[i].rid, MAXR);
			result *r = &h->res[ev[i].rid];
			cr_assert(!r->done, "event after the final one for rid %llu", (unsigned long long)ev[i].rid);
			if (ev[i].token >= 0 && r->n < MAXT)
				r->toks[r->n++] = ev[i].token;
			r->cached = ev[i].cached_tokens;
			r->prompt_tokens = ev[i].prompt_tokens;
			r->completion_tokens = ev[i].completion_tokens;
			if (ev[i].finish != ENGINE_FINISH_NONE) {
				r->finish = ev[i].finish;
				snprintf(r->message, sizeof(r->message), "%s", ev[i].message);
				r->done = 1;
				done++;
			}
			if (on_event)
				on_event(h, &ev[i]);
		}
		if (n == 0) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50 * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_mutex_lock(&h->w.mu);
			if (!h->w.woken)
				pthread_cond_timedwait(&h->w.cv, &h->w.mu, &ts);
			h->w.woken = 0;
			pthread_mutex_unlock(&h->w.mu);
		}
		cr_assert(time(NULL) < deadline, "timed out: %d of %d requests done", done, want);
	}
}

static void submit(harness *h, uint64_t rid, const int32_t *prompt, int n, int max_new)
{
	engine_request r = { .rid = rid, .prompt = prompt, .n_prompt = n, .max_new_tokens = max_new };
	r.sampling = sampler_params_default();
	r.sampling.temperature = 0;
	char err[ERR_LEN];
	cr_assert_eq(engine_submit(h->e, &r, err), 0, "submit %llu: %s", (unsigned long long)rid, err);
}

static const char *stories(void)
{
	const char *p = test_shared("models/stories260K.gguf");
	if (!p)
		cr_skip_test("../shared/models/stories260K.gguf not present");
	return p;
}

static engine_config base_config(const char *model)
{
	engine_config c = engine_config_default();
	c.model_path = model;
	c.n_threads = 2;
	c.max_total_tokens = 8192;
	c.kv_dtype = QTYPE_F32;
	return c;
}

/* Deterministic pseudo-prompts: BOS then ids from the story vocabulary. */
static int make_prompt(int seed, int len, int32_t *out)
{
	out[0] = 1;
	uint32_t x = (uint32_t)seed * 2654435761u + 12345u;
	for (int i = 1; i < len; i++) {
		x = x * 1103515245u + 12345u;
		out[i] = 259 + (int32_t)((x >> 8) % 250);
	}
	return len;
}

static void assert_stats_idle(engine *e)
{
	engine_stats s;
	/* export references come back asynchronously (engine_release_pages):
	   wait for the pages too, not only for the request counts */
	for (int i = 0; i < 300; i++) {
		engine_get_stats(e, &s);
		if (s.running == 0 && s.waiting == 0 && s.pages_free + s.pages_cached == s.pages_total)
			break;
		struct timespec ts = { 0, 10 * 1000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert_eq(s.running, 0);
	cr_assert_eq(s.waiting, 0);
	/* every page is free or held only by the prefix cache */
	cr_assert_eq(s.pages_free + s.pages_cached, s.pages_total, "free %d + cached %d != total %d",
		     s.pages_free, s.pages_cached, s.pages_total);
}

/* ---- tests ----------------------------------------------------------------- */

Test(engine, greedy_equals_golden)
{
	harness h;
	engine_config c = base_config(stories());
	harness_open(&h, &c);
	const int32_t prompt[] = { 1, 403, 407, 261, 378 };
	const int32_t want[] = { 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337 };
	submit(&h, 0, prompt, 5, 16);
	pump(&h, 1, NULL);
	cr_assert_eq(h.res[0].finish, ENGINE_FINISH_LENGTH, "finish %d: %s", h.res[0].finish, h.res[0].message);
	cr_assert_eq(h.res[0].n, 16);
	for (int i = 0; i < 16; i++)
		cr_expect_eq(h.res[0].toks[i], want[i], "step %d", i);
	cr_expect_eq(h.res[0].prompt_tokens, 5);
	cr_expect_eq(h.res[0].completion_tokens, 16);
	assert_stats_idle(h.e);
	harness_close(&h);
}

/* What each prompt produces alone, then all at once: identical. */
static void solo_vs_batched(engine_config *cfg_solo, engine_config *cfg_batch, int n_req, int max_new,
			    int *retractions)
{
	static int32_t prompts[MAXR][200];
	static int lens[MAXR];
	static result solo[MAXR];
	for (int i = 0; i < n_req; i++)
		lens[i] = make_prompt(i, 10 + (i * 13) % 90, prompts[i]);

	harness h;
	harness_open(&h, cfg_solo);
	for (int i = 0; i < n_req; i++) {
		submit(&h, (uint64_t)i, prompts[i], lens[i], max_new);
		pump(&h, i + 1, NULL);
	}
	memcpy(solo, h.res, sizeof(solo));
	harness_close(&h);

	harness_open(&h, cfg_batch);
	for (int i = 0; i < n_req; i++)
		submit(&h, (uint64_t)i, prompts[i], lens[i], max_new);
	pump(&h, n_req, NULL);
	for (int i = 0; i < n_req; i++) {
		cr_assert_eq(h.res[i].finish, solo[i].finish, "rid %d finish", i);
		cr_assert_eq(h.res[i].n, solo[i].n, "rid %d: %d tokens batched vs %d alone", i, h.res[i].n, solo[i].n);
		for (int t = 0; t < solo[i].n; t++)
			cr_assert_eq(h.res[i].toks[t], solo[i].toks[t], "rid %d token %d differs", i, t);
	}
	engine_stats s;
	engine_get_stats(h.e, &s);
	*retractions = (int)s.retractions;
	assert_stats_idle(h.e);
	harness_close(&h);
}

Test(engine, concurrent_requests_equal_solo)
{
	engine_config solo = base_config(stories()), batch = base_config(stories());
	solo.disable_radix_cache = true;
	batch.chunked_prefill_size = 64; /* several prefill chunks per prompt, mixed with decodes */
	int retr;
	solo_vs_batched(&solo, &batch, 16, 40, &retr);
}

Test(engine, retraction_under_kv_pressure_keeps_outputs)
{
	engine_config solo = base_config(stories()), batch = base_config(stories());
	solo.disable_radix_cache = true;
	batch.context_length = 256;
	batch.max_total_tokens = 400; /* 25 pages: 8 requests of ~60-200 tokens cannot all fit */
	batch.page_size = 16;
	int retr;
	solo_vs_batched(&solo, &batch, 8, 100, &retr);
	cr_log_info("retractions: %d", retr);
	cr_expect_gt(retr, 0, "the pool was meant to force retractions");
}

Test(engine, prefix_cache_hits_and_same_output)
{
	harness h;
	engine_config c = base_config(stories());
	harness_open(&h, &c);
	int32_t p[120];
	make_prompt(7, 120, p);
	submit(&h, 0, p, 120, 20);
	pump(&h, 1, NULL);
	cr_expect_eq(h.res[0].cached, 0);
	submit(&h, 1, p, 120, 20);
	pump(&h, 2, NULL);
	cr_expect_eq(h.res[1].cached, 112, "cached %d (want the 7 whole pages before the last token)", h.res[1].cached);
	cr_assert_eq(h.res[1].n, h.res[0].n);
	for (int t = 0; t < h.res[0].n; t++)
		cr_expect_eq(h.res[1].toks[t], h.res[0].toks[t], "token %d", t);
	engine_stats s;
	engine_get_stats(h.e, &s);
	cr_expect_gt(s.pages_cached, 0);
	engine_flush_cache(h.e);
	engine_get_stats(h.e, &s);
	cr_expect_eq(s.pages_cached, 0);
	cr_expect_eq(s.pages_free, s.pages_total);
	/* after the flush nothing is cached any more */
	submit(&h, 2, p, 120, 4);
	pump(&h, 3, NULL);
	cr_expect_eq(h.res[2].cached, 0);
	harness_close(&h);
}

static void abort_after_three(harness *h, const engine_event *ev)
{
	if (ev->rid == 0 && ev->completion_tokens == 3)
		engine_abort(h->e, 0);
}

Test(engine, abort_frees_pages)
{
	harness h;
	engine_config c = base_config(stories());
	c.disable_radix_cache = true;
	harness_open(&h, &c);
	int32_t p[50];
	make_prompt(3, 50, p);
	submit(&h, 0, p, 50, 400);
	submit(&h, 1, p, 50, 10);
	pump(&h, 2, abort_after_three);
	cr_expect_eq(h.res[0].finish, ENGINE_FINISH_ABORT);
	cr_expect_lt(h.res[0].n, 400);
	cr_expect_eq(h.res[1].finish, ENGINE_FINISH_LENGTH);
	cr_expect_eq(h.res[1].n, 10);
	assert_stats_idle(h.e);
	engine_stats s;
	engine_get_stats(h.e, &s);
	cr_expect_eq(s.pages_free, s.pages_total);
	/* aborting a finished or unknown rid is harmless */
	engine_abort(h.e, 0);
	engine_abort(h.e, 12345);
	harness_close(&h);
}

Test(engine, abort_while_waiting)
{
	harness h;
	engine_config c = base_config(stories());
	c.max_running = 1;
	harness_open(&h, &c);
	int32_t p[20];
	make_prompt(1, 20, p);
	submit(&h, 0, p, 20, 50);
	submit(&h, 1, p, 20, 50);
	engine_abort(h.e, 1); /* most likely still queued behind rid 0 */
	pump(&h, 2, NULL);
	cr_expect_eq(h.res[1].finish, ENGINE_FINISH_ABORT);
	cr_expect_eq(h.res[0].finish, ENGINE_FINISH_LENGTH);
	assert_stats_idle(h.e);
	harness_close(&h);
}

Test(engine, submit_rejects_bad_requests)
{
	harness h;
	engine_config c = base_config(stories());
	c.context_length = 64;
	c.max_queued = 2;
	c.max_running = 1;
	harness_open(&h, &c);
	char err[ERR_LEN];
	int32_t p[70];
	make_prompt(2, 70, p);
	engine_request r = { .rid = 0, .prompt = p, .n_prompt = 0, .max_new_tokens = 4 };
	r.sampling = sampler_params_default();
	cr_expect_eq(engine_submit(h.e, &r, err), ERR_INVAL);
	cr_expect(strstr(err, "empty"), "%s", err);
	r.n_prompt = 60;
	r.max_new_tokens = 10;
	cr_expect_eq(engine_submit(h.e, &r, err), ERR_INVAL);
	cr_expect(strstr(err, "maximum context length is 64"), "%s", err);
	r.n_prompt = 5;
	p[2] = 999;
	cr_expect_eq(engine_submit(h.e, &r, err), ERR_INVAL);
	cr_expect(strstr(err, "999"), "%s", err);
	p[2] = 300;
	r.sampling.top_p = 2;
	cr_expect_eq(engine_submit(h.e, &r, err), ERR_INVAL);
	cr_expect(strstr(err, "top_p"), "%s", err);
	r.sampling.top_p = 1;
	r.max_new_tokens = 40;
	cr_assert_eq(engine_submit(h.e, &r, err), 0, "%s", err);
	cr_expect_eq(engine_submit(h.e, &r, err), ERR_INVAL, "duplicate rid accepted");
	cr_expect(strstr(err, "already in use"), "%s", err);
	/* fill the queue: 2 waiting max */
	int full = 0;
	for (uint64_t rid = 1; rid < 10; rid++) {
		r.rid = rid;
		int rc = engine_submit(h.e, &r, err);
		if (rc == ERR_FULL) {
			full = 1;
			cr_expect(strstr(err, "overloaded"), "%s", err);
			for (uint64_t k = rid; k < 10; k++)
				h.res[k].done = 1; /* never submitted */
			break;
		}
		cr_assert_eq(rc, 0, "%s", err);
	}
	cr_expect(full, "queue never filled");
	pump(&h, 10, NULL);
	assert_stats_idle(h.e);
	harness_close(&h);
}

Test(engine, max_new_tokens_zero_and_stop_ids)
{
	harness h;
	engine_config c = base_config(stories());
	harness_open(&h, &c);
	const int32_t prompt[] = { 1, 403, 407, 261, 378 };
	submit(&h, 0, prompt, 5, 0);
	pump(&h, 1, NULL);
	cr_expect_eq(h.res[0].finish, ENGINE_FINISH_LENGTH);
	cr_expect_eq(h.res[0].n, 0);
	/* stop at the golden's 4th token (261) */
	engine_request r = { .rid = 1, .prompt = prompt, .n_prompt = 5, .max_new_tokens = 30 };
	r.sampling = sampler_params_default();
	r.sampling.temperature = 0;
	int32_t stop[] = { 261 };
	r.stop_ids = stop;
	r.n_stop_ids = 1;
	char err[ERR_LEN];
	cr_assert_eq(engine_submit(h.e, &r, err), 0, "%s", err);
	pump(&h, 2, NULL);
	cr_expect_eq(h.res[1].finish, ENGINE_FINISH_STOP);
	cr_expect_eq(h.res[1].n, 4);
	cr_expect_eq(h.res[1].toks[3], 261);
	harness_close(&h);
}

Test(engine, create_errors)
{
	char err[ERR_LEN];
	engine_config c = engine_config_default();
	c.model_path = "/nonexistent.gguf";
	cr_expect_null(engine_create(&c, err));
	cr_expect(strstr(err, "nonexistent"), "%s", err);
	c.model_path = stories();
	c.max_total_tokens = 0;
	c.mem_fraction_static = 1e-12;
	cr_expect_null(engine_create(&c, err));
	cr_expect(strstr(err, "context length"), "%s", err);
}

/* ---- disaggregation hooks: an in-process "transfer" between two engines --- */

typedef struct {
	engine *p, *d;
	pthread_mutex_t mu;
	int32_t d_pages[MAXR][256];
	int d_npages[MAXR];
	int imported[MAXR];
	int exports[MAXR];
	int64_t bytes;
	int cancelled[MAXR];
	int unadmitted[MAXR]; /* kv_import with no pages: ended before it was admitted */
} pd_link;

static pd_link link_;

static void on_import(void *arg, uint64_t rid, void *user, const int32_t *pages, int n)
{
	pd_link *l = arg;
	pthread_mutex_lock(&l->mu);
	if (!n) {
		cr_assert_null(pages);
		l->unadmitted[rid]++;
		pthread_mutex_unlock(&l->mu);
		return;
	}
	memcpy(l->d_pages[rid], pages, sizeof(int32_t) * (size_t)n);
	l->d_npages[rid] = n;
	l->imported[rid] = 1;
	pthread_mutex_unlock(&l->mu);
}

static void on_cancel(void *arg, uint64_t rid, void *user)
{
	pd_link *l = arg;
	l->cancelled[rid] = 1;
	engine_import_fail(l->d, rid, "cancelled");
}

/* Runs on the prefill's scheduler thread: copy each page, every layer, K and V. */
static void on_export(void *arg, const engine_kv_export *x)
{
	pd_link *l = arg;
	if (x->failed) {
		engine_import_fail(l->d, x->rid, "prefill failed");
		return;
	}
	const kvcache *src = engine_kvcache(l->p), *dst = engine_kvcache(l->d);
	size_t pb = kvcache_page_bytes(src), lb = kvcache_layer_bytes(src), dlb = kvcache_layer_bytes(dst);
	pthread_mutex_lock(&l->mu);
	for (int i = 0; i < x->n; i++) {
		int32_t sp = x->pages[i], dp = l->d_pages[x->rid][x->first + i];
		cr_assert_lt(x->first + i, l->d_npages[x->rid]);
		for (int ly = 0; ly < 2 * kvcache_n_layer(src); ly++) {
			memcpy((char *)kvcache_base(dst) + (size_t)ly * dlb + (size_t)dp * pb,
			       (char *)kvcache_base(src) + (size_t)ly * lb + (size_t)sp * pb, pb);
			l->bytes += (int64_t)pb;
		}
	}
	l->exports[x->rid]++;
	pthread_mutex_unlock(&l->mu);
	engine_release_pages(l->p, x->pages, x->n);
	if (x->last) {
		engine_import_result res = { .token = x->first_token, .logprob = x->logprob,
					     .cached_tokens = x->cached_tokens };
		cr_assert_eq(engine_import_done(l->d, x->rid, &res), 0);
	}
}

/* n requests through a prefill engine (cp: EXPORT) and a decode engine (cd:
   IMPORT) linked by link_, and the same prompts on a unified engine: the
   decode's output must equal the unified one token for token. hold_ms > 0:
   the prefill gets request 0 first and the others that much later, so
   request 0 decodes while the others' KV is still on its way. Returns the
   decode engine's stats at the end. */
static engine_stats pd_vs_unified(engine_config cp, engine_config cd, int n, const int32_t *const *prompts,
				  const int *lens, int gen, int hold_ms)
{
	harness u;
	engine_config cu = base_config(stories());
	harness_open(&u, &cu);
	for (int i = 0; i < n; i++)
		submit(&u, (uint64_t)i, prompts[i], lens[i], gen);
	pump(&u, n, NULL);

	memset(&link_, 0, sizeof(link_));
	pthread_mutex_init(&link_.mu, NULL);
	harness p, d;
	cp.kv_export = on_export;
	cp.pd_arg = &link_;
	cd.kv_import = on_import;
	cd.kv_import_cancel = on_cancel;
	cd.pd_arg = &link_;
	cd.kv_shared = true;
	harness_open(&p, &cp);
	harness_open(&d, &cd);
	link_.p = p.e;
	link_.d = d.e;
	char err[ERR_LEN];
	for (int i = 0; i < n; i++) {
		engine_request r = { .rid = (uint64_t)i, .prompt = prompts[i], .n_prompt = lens[i],
				     .max_new_tokens = gen, .pd = ENGINE_PD_IMPORT, .reserve_tokens = 8 };
		r.sampling = sampler_params_default();
		r.sampling.temperature = 0;
		cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	}
	/* the prefill starts a room only once the decode has reserved its pages */
	for (int waited = 0; waited < 500; waited++) {
		int all = 1;
		pthread_mutex_lock(&link_.mu);
		for (int i = 0; i < n; i++)
			all &= link_.imported[i];
		pthread_mutex_unlock(&link_.mu);
		if (all)
			break;
		struct timespec ts = { 0, 10 * 1000000 };
		nanosleep(&ts, NULL);
	}
	for (int i = 0; i < n; i++) {
		cr_assert(link_.imported[i], "decode never reserved pages for %d", i);
		engine_request r = { .rid = (uint64_t)i, .prompt = prompts[i], .n_prompt = lens[i],
				     .max_new_tokens = 1, .pd = ENGINE_PD_EXPORT };
		r.sampling = sampler_params_default();
		r.sampling.temperature = 0;
		cr_assert_eq(engine_submit(p.e, &r, err), 0, "%s", err);
		engine_export_ready(p.e, (uint64_t)i);
		if (i == 0 && hold_ms > 0)
			nanosleep(&(struct timespec){ hold_ms / 1000, (long)(hold_ms % 1000) * 1000000L }, NULL);
	}
	pump(&p, n, NULL);
	pump(&d, n, NULL);
	for (int i = 0; i < n; i++) {
		cr_expect_eq(p.res[i].n, 1, "prefill answers one token");
		cr_expect_eq(p.res[i].toks[0], u.res[i].toks[0]);
		cr_assert_eq(d.res[i].finish, u.res[i].finish, "rid %d: finish %d (%s) vs %d unified", i, d.res[i].finish,
			     d.res[i].message, u.res[i].finish);
		cr_assert_eq(d.res[i].n, u.res[i].n, "rid %d: %d tokens via PD, %d unified", i, d.res[i].n, u.res[i].n);
		for (int t = 0; t < u.res[i].n; t++)
			cr_assert_eq(d.res[i].toks[t], u.res[i].toks[t], "rid %d token %d", i, t);
	}
	engine_stats s;
	engine_get_stats(d.e, &s);
	assert_stats_idle(p.e);
	assert_stats_idle(d.e);
	harness_close(&p);
	harness_close(&d);
	harness_close(&u);
	return s;
}

Test(engine_pd, export_import_equals_unified)
{
	enum { N = 6, GEN = 30 };
	static int32_t prompts[N][200];
	const int32_t *pp[N];
	int lens[N];
	for (int i = 0; i < N; i++) {
		lens[i] = make_prompt(100 + i, 5 + i * 37, prompts[i]);
		pp[i] = prompts[i];
	}
	engine_config cp = base_config(stories()), cd = base_config(stories());
	cp.chunked_prefill_size = 48; /* several chunks: pages leave as chunks finish */
	pd_vs_unified(cp, cd, N, pp, lens, GEN, 0);
	for (int i = 0; i < N; i++)
		cr_expect_geq(link_.exports[i], lens[i] > 48 ? 2 : 1, "rid %d: %d exports", i, link_.exports[i]);
	cr_log_info("moved %lld KV bytes", (long long)link_.bytes);
}

Test(engine_pd, import_abort_waits_for_cancel)
{
	memset(&link_, 0, sizeof(link_));
	pthread_mutex_init(&link_.mu, NULL);
	harness d;
	engine_config cd = base_config(stories());
	cd.kv_import = on_import;
	cd.kv_import_cancel = on_cancel;
	cd.pd_arg = &link_;
	harness_open(&d, &cd);
	link_.d = d.e;
	int32_t p[40];
	make_prompt(9, 40, p);
	engine_request r = { .rid = 0, .prompt = p, .n_prompt = 40, .max_new_tokens = 10, .pd = ENGINE_PD_IMPORT };
	r.sampling = sampler_params_default();
	char err[ERR_LEN];
	cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	for (int i = 0; i < 500 && !link_.imported[0]; i++) {
		struct timespec ts = { 0, 5 * 1000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert(link_.imported[0]);
	engine_abort(d.e, 0);
	pump(&d, 1, NULL);
	cr_expect(link_.cancelled[0], "the transfer layer was not asked to cancel");
	cr_expect_eq(d.res[0].finish, ENGINE_FINISH_ABORT);
	assert_stats_idle(d.e);
	/* import failure: ERROR with the message */
	r.rid = 1;
	cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	for (int i = 0; i < 500 && !link_.imported[1]; i++) {
		struct timespec ts = { 0, 5 * 1000000 };
		nanosleep(&ts, NULL);
	}
	engine_import_fail(d.e, 1, "prefill 127.0.0.1:8998 disconnected");
	pump(&d, 2, NULL);
	cr_expect_eq(d.res[1].finish, ENGINE_FINISH_ERROR);
	cr_expect(strstr(d.res[1].message, "disconnected"), "%s", d.res[1].message);
	assert_stats_idle(d.e);
	harness_close(&d);
}

/* An IMPORT request aborted while it waits for pages (here for a running
   slot: max_running 1, another one importing) still tells the transfer
   layer, with a kv_import of no pages, so that its room goes at once. */
Test(engine_pd, import_aborted_while_queued_tells_the_transfer)
{
	memset(&link_, 0, sizeof(link_));
	pthread_mutex_init(&link_.mu, NULL);
	harness d;
	engine_config cd = base_config(stories());
	cd.kv_import = on_import;
	cd.kv_import_cancel = on_cancel;
	cd.pd_arg = &link_;
	cd.max_running = 1;
	harness_open(&d, &cd);
	link_.d = d.e;
	int32_t p[40];
	make_prompt(10, 40, p);
	engine_request r = { .rid = 4, .prompt = p, .n_prompt = 40, .max_new_tokens = 10, .pd = ENGINE_PD_IMPORT };
	r.sampling = sampler_params_default();
	char err[ERR_LEN];
	cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	r.rid = 5;
	cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	engine_stats s;
	for (int i = 0; i < 500; i++) {
		engine_get_stats(d.e, &s);
		if (link_.imported[4] && s.waiting == 1)
			break;
		nanosleep(&(struct timespec){ 0, 5 * 1000000 }, NULL);
	}
	cr_assert(link_.imported[4] && s.waiting == 1, "want rid 4 importing, rid 5 waiting (waiting %d)", s.waiting);
	engine_abort(d.e, 5);
	pump(&d, 1, NULL);
	cr_expect_eq(d.res[5].finish, ENGINE_FINISH_ABORT);
	cr_expect_eq(link_.unadmitted[5], 1, "the transfer layer was not told (its room would wait for its timeout)");
	cr_expect_eq(link_.imported[5], 0);
	cr_expect_eq(link_.unadmitted[4], 0);
	engine_import_fail(d.e, 4, "done with it");
	pump(&d, 2, NULL);
	cr_expect_eq(link_.unadmitted[4], 0, "an admitted request is not reported as unadmitted");
	assert_stats_idle(d.e);
	harness_close(&d);
}

/* A decode whose pool cannot hold every imported request to its end
   retracts some after their transfer; they resume by recomputing locally
   (no second transfer) and still produce exactly the unified output. */
Test(engine_pd, retracted_import_resumes_locally)
{
	enum { N = 6, GEN = 100 };
	static int32_t prompts[N][64];
	const int32_t *pp[N];
	int lens[N];
	for (int i = 0; i < N; i++) {
		lens[i] = make_prompt(200 + i, 30 + i * 5, prompts[i]);
		pp[i] = prompts[i];
	}
	engine_config cp = base_config(stories()), cd = base_config(stories());
	/* 25 pages of 16: every prompt + 8 tokens fits at once (4 pages each),
	   but not 6 requests of ~140 tokens (9 pages each) */
	cd.context_length = 256;
	cd.max_total_tokens = 400;
	cd.page_size = 16;
	cp.page_size = 16;
	engine_stats s = pd_vs_unified(cp, cd, N, pp, lens, GEN, 0);
	cr_log_info("decode retractions: %lld", (long long)s.retractions);
	cr_expect_gt(s.retractions, 0, "the decode pool was meant to force retractions");
	for (int i = 0; i < N; i++)
		cr_expect_eq(link_.imported[i], 1, "rid %d: imported again", i);
	/* request 0 alone decodes into the pages left over while the other five
	   hold theirs for KV not yet sent: it waits for them instead of failing
	   with "KV cache exhausted" (there is nobody it could retract) */
	pd_vs_unified(cp, cd, N, pp, lens, GEN, 400);
}

static void release_export(void *arg, const engine_kv_export *x)
{
	if (!x->failed)
		engine_release_pages(*(engine **)arg, x->pages, x->n);
}

/* engine_export_ready right after engine_submit, many times: the command
   must find its request even when the scheduler took the inbox just before
   the command came (it was dropped, and the request waited for ever). The
   window is a few instructions wide, so this stresses it rather than hits
   it every run (seen once as a 60 s hang of skip_compute_... under load). */
Test(engine_pd, export_ready_right_after_submit_is_never_lost)
{
	static engine *pe;
	harness p;
	engine_config cp = base_config(stories());
	cp.skip_compute = true;
	cp.kv_export = release_export;
	cp.pd_arg = &pe;
	harness_open(&p, &cp);
	pe = p.e;
	int32_t prompt[20];
	make_prompt(21, 20, prompt);
	char err[ERR_LEN];
	for (int it = 0; it < 3000; it++) {
		uint64_t rid = (uint64_t)(it % MAXR);
		memset(&p.res[rid], 0, sizeof(p.res[rid]));
		engine_request r = { .rid = rid, .prompt = prompt, .n_prompt = 20, .max_new_tokens = 1,
				     .pd = ENGINE_PD_EXPORT };
		r.sampling = sampler_params_default();
		cr_assert_eq(engine_submit(p.e, &r, err), 0, "%s", err);
		engine_export_ready(p.e, rid);
		double t0 = clock_now_s();
		while (!p.res[rid].done) {
			engine_event ev[8];
			int n = engine_poll(p.e, ev, 8);
			for (int i = 0; i < n; i++)
				if (ev[i].finish != ENGINE_FINISH_NONE)
					p.res[ev[i].rid].done = 1;
			cr_assert(clock_now_s() - t0 < 5, "iteration %d: the request never ran (export_ready lost)", it);
			if (!n)
				sched_yield();
		}
	}
	harness_close(&p);
}

/* A silent writer (engine_import_fail_keep): the request ends with its
   error at once, its pages stay reserved until the transfer layer gives
   them back with engine_release_pages. */
Test(engine_pd, import_fail_keep_holds_pages_until_released)
{
	memset(&link_, 0, sizeof(link_));
	pthread_mutex_init(&link_.mu, NULL);
	harness d;
	engine_config cd = base_config(stories());
	cd.kv_import = on_import;
	cd.kv_import_cancel = on_cancel;
	cd.pd_arg = &link_;
	harness_open(&d, &cd);
	link_.d = d.e;
	int32_t p[40];
	make_prompt(11, 40, p);
	engine_request r = { .rid = 3, .prompt = p, .n_prompt = 40, .max_new_tokens = 10, .pd = ENGINE_PD_IMPORT };
	r.sampling = sampler_params_default();
	char err[ERR_LEN];
	cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	for (int i = 0; i < 500 && !link_.imported[3]; i++) {
		struct timespec ts = { 0, 5 * 1000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert(link_.imported[3]);
	engine_import_fail_keep(d.e, 3, "prefill 127.0.0.1:8998: no heartbeat for 0.6 s");
	pump(&d, 1, NULL);
	cr_expect_eq(d.res[3].finish, ENGINE_FINISH_ERROR);
	cr_expect(strstr(d.res[3].message, "no heartbeat"), "%s", d.res[3].message);
	engine_stats s;
	for (int i = 0; i < 20; i++) { /* stats are published after the step */
		engine_get_stats(d.e, &s);
		if (s.running == 0 && s.waiting == 0)
			break;
		struct timespec ts = { 0, 10 * 1000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert_eq(s.running, 0);
	cr_assert_eq(s.pages_total - s.pages_free - s.pages_cached, link_.d_npages[3],
		     "the failed request's %d pages must stay held", link_.d_npages[3]);
	engine_release_pages(d.e, link_.d_pages[3], link_.d_npages[3]);
	assert_stats_idle(d.e);
	harness_close(&d);
}

/* skip_compute (pdserve bench transfer): no forward pass, so the prefill's
   pages leave exactly as they were, and the export/import path still runs:
   every page arrives, the first token is 0 (greedy over zero logits). */
Test(engine_pd, skip_compute_still_exports_and_imports_pages)
{
	const char *model = stories();
	enum { N = 3 };
	int32_t prompts[N][300];
	int lens[N];
	for (int i = 0; i < N; i++)
		lens[i] = make_prompt(200 + i, 100 + i * 90, prompts[i]);
	memset(&link_, 0, sizeof(link_));
	pthread_mutex_init(&link_.mu, NULL);
	harness p, d;
	engine_config cp = base_config(model), cd = base_config(model);
	cp.skip_compute = cd.skip_compute = true;
	cp.kv_export = on_export;
	cp.pd_arg = &link_;
	cp.chunked_prefill_size = 64;
	cd.kv_import = on_import;
	cd.kv_import_cancel = on_cancel;
	cd.pd_arg = &link_;
	harness_open(&p, &cp);
	harness_open(&d, &cd);
	link_.p = p.e;
	link_.d = d.e;
	/* both engines are idle: mark the prefill's whole pool, clear the decode's */
	memset(kvcache_base(engine_kvcache(p.e)), 0x5a, kvcache_bytes(engine_kvcache(p.e)));
	memset(kvcache_base(engine_kvcache(d.e)), 0, kvcache_bytes(engine_kvcache(d.e)));
	char err[ERR_LEN];
	for (int i = 0; i < N; i++) {
		engine_request r = { .rid = (uint64_t)i, .prompt = prompts[i], .n_prompt = lens[i],
				     .max_new_tokens = 3, .pd = ENGINE_PD_IMPORT, .reserve_tokens = 8 };
		r.sampling = sampler_params_default();
		r.sampling.temperature = 0;
		cr_assert_eq(engine_submit(d.e, &r, err), 0, "%s", err);
	}
	for (int i = 0; i < N; i++) {
		for (int w = 0; w < 500 && !link_.imported[i]; w++) {
			struct timespec ts = { 0, 10 * 1000000 };
			nanosleep(&ts, NULL);
		}
		cr_assert(link_.imported[i], "decode never reserved pages for %d", i);
		engine_request r = { .rid = (uint64_t)i, .prompt = prompts[i], .n_prompt = lens[i],
				     .max_new_tokens = 1, .pd = ENGINE_PD_EXPORT };
		r.sampling = sampler_params_default();
		r.sampling.temperature = 0;
		cr_assert_eq(engine_submit(p.e, &r, err), 0, "%s", err);
		engine_export_ready(p.e, (uint64_t)i);
	}
	pump(&p, N, NULL);
	pump(&d, N, NULL);
	const kvcache *dk = engine_kvcache(d.e);
	size_t pb = kvcache_page_bytes(dk), lb = kvcache_layer_bytes(dk);
	for (int i = 0; i < N; i++) {
		cr_expect_eq(p.res[i].n, 1);
		cr_expect_eq(p.res[i].toks[0], 0, "prefill's first token %d, want 0", p.res[i].toks[0]);
		cr_expect_eq(d.res[i].finish, ENGINE_FINISH_LENGTH, "%s", d.res[i].message);
		cr_expect_eq(d.res[i].n, 3);
		cr_expect_geq(link_.exports[i], 2, "rid %d: %d exports", i, link_.exports[i]);
		int need = (lens[i] + 15) / 16;
		/* every prompt page arrived untouched: K and V of every layer */
		for (int pg = 0; pg < need; pg++)
			for (int ly = 0; ly < 2 * kvcache_n_layer(dk); ly++) {
				const uint8_t *b = (const uint8_t *)kvcache_base(dk) + (size_t)ly * lb +
						   (size_t)link_.d_pages[i][pg] * pb;
				for (size_t k = 0; k < pb; k++)
					cr_assert_eq(b[k], 0x5a, "rid %d page %d layer/kv %d byte %zu: %#x", i, pg, ly, k,
						     b[k]);
			}
	}
	/* the last export's references come back one scheduler pass after the
	   request's final event (nothing computes here to hide that) */
	for (int w = 0; w < 200; w++) {
		engine_stats s;
		engine_get_stats(p.e, &s);
		if (s.pages_free + s.pages_cached == s.pages_total)
			break;
		struct timespec ts = { 0, 10 * 1000000 };
		nanosleep(&ts, NULL);
	}
	assert_stats_idle(p.e);
	assert_stats_idle(d.e);
	harness_close(&p);
	harness_close(&d);
}

Test(engine, prompt_larger_than_the_pool_is_refused_at_submit)
{
	harness h;
	engine_config c = base_config(stories());
	c.context_length = 64;
	c.max_total_tokens = 64;
	harness_open(&h, &c);
	int32_t p[60];
	make_prompt(2, 60, p);
	engine_request r = { .rid = 0, .prompt = p, .n_prompt = 60, .max_new_tokens = 2 };
	r.sampling = sampler_params_default();
	char err[ERR_LEN];
	cr_expect_eq(engine_submit(h.e, &r, err), ERR_INVAL);
	cr_expect(strstr(err, "KV pages"), "%s", err);
	r.n_prompt = 20;
	cr_expect_eq(engine_submit(h.e, &r, err), 0, "%s", err);
	pump(&h, 1, NULL);
	cr_expect_eq(h.res[0].finish, ENGINE_FINISH_LENGTH);
	harness_close(&h);
}
