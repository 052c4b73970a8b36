/* threadpool.c - n-1 pthreads plus the caller, running one job at a time.
 *
 * Design. A run publishes (fn, arg), sets `pending` to the number of workers
 * and bumps the generation counter `gen`; each worker notices the new
 * generation, calls fn(arg, ith, nth) and decrements `pending`; the caller
 * runs ith 0 itself and then waits for `pending` to reach 0. Nothing is
 * allocated per run: the job lives in the pool struct.
 *
 * Waiting is hybrid on both sides. A worker that finished a job spins for a
 * while (SPIN_ROUNDS rounds of pause, yielding every 256th, about a
 * millisecond) watching `gen`, because in a decode step the next matmul
 * follows within microseconds; after that it sleeps on `work_cv`. The
 * caller likewise spins on `pending` before sleeping on `done_cv`. A waker
 * takes `mu` and signals only when someone announced that it sleeps
 * (`n_sleeping`, `caller_sleeping`), so a run with spinning workers costs
 * two atomic operations and a few cache-line transfers, not a mutex and a
 * broadcast. Lost wake-ups are impossible: a sleeper first announces itself
 * (seq_cst), then re-checks its condition under `mu`; a waker first changes
 * the condition (seq_cst), then reads the announcement. In the single total
 * order of those seq_cst operations either the sleeper's re-check sees the
 * new condition, or the waker sees the announcement and signals under `mu`
 * (the sleeper is then waiting, or has not re-checked yet):
 *
 *   caller (threadpool_run)                worker (worker_main)
 *   -----------------------                --------------------
 *   fn, arg, pending = nth-1               spin on gen, then under mu:
 *   gen++;                                   n_sleeping++
 *   if n_sleeping: lock; broadcast;          while gen == seen: wait work_cv
 *     unlock                                 n_sleeping--
 *   fn(arg, 0, nth)                        seen = gen; fn(arg, ith, nth)
 *   spin on pending, then under mu:        if --pending == 0 and caller_sleeping:
 *     caller_sleeping = 1;                   lock; signal done_cv; unlock
 *     while pending: wait done_cv
 *     caller_sleeping = 0
 *
 * Memory ordering: the bump of `gen` is a release (and happens under mu), so
 * a worker that sees the new generation also sees fn and arg; the decrement
 * of `pending` is acq_rel and the caller's read is an acquire, so everything
 * the workers wrote is visible to the caller once run returns. fn and arg are
 * rewritten only by the next run, after every worker has decremented
 * `pending` and so no longer reads them.
 *
 * Shutdown (threadpool_destroy) sets `stop` and bumps `gen` under mu; workers
 * exit instead of running a job. Left out: per-thread affinity, priorities,
 * nested or concurrent runs (the contract forbids them; a CHECK catches one).
 */
#include "base/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "base/alloc.h"

/* Pause instructions a waiter spins through before it sleeps. */
#define SPIN_ROUNDS (1 << 14)

typedef struct {
	threadpool *tp;
	int ith;
	pthread_t thread;
} worker;

struct threadpool {
	int n;           /* threads including the caller */
	int n_started;   /* workers actually created (n-1 after a successful create) */
	worker *workers; /* [n-1], owned */

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* workers sleep here for the next generation */
	pthread_cond_t done_cv; /* the caller sleeps here for pending == 0 */

	threadpool_fn fn; /* current job; written by the caller before the gen bump */
	void *arg;
	atomic_uint gen;    /* bumped once per run and once at shutdown */
	atomic_int pending; /* workers that have not finished the current job */
	atomic_int n_sleeping;       /* workers waiting (or about to) on work_cv */
	atomic_int caller_sleeping;  /* the caller waits (or is about to) on done_cv */
	atomic_bool stop;
	atomic_bool busy;   /* a run is in progress (catches nested runs) */
};

/* One round of a spin-wait. Every 256th round yields the CPU, so that with
   more threads than cores (tests, a busy machine) a spinner does not keep the
   thread it waits for off the CPU for a whole time slice. */
static inline void spin_pause(int round)
{
	if ((round & 255) == 255) {
		sched_yield();
		return;
	}
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

/* Wait until gen != seen; returns the new generation. */
static unsigned wait_for_work(threadpool *tp, unsigned seen)
{
	for (int i = 0; i < SPIN_ROUNDS; i++) {
		unsigned g = atomic_load_explicit(&tp->gen, memory_order_acquire);
		if (g != seen)
			return g;
		spin_pause(i);
	}
	pthread_mutex_lock(&tp->mu);
	atomic_fetch_add(&tp->n_sleeping, 1);
	unsigned g;
	while ((g = atomic_load(&tp->gen)) == seen)
		pthread_cond_wait(&tp->work_cv, &tp->mu);
	atomic_fetch_sub(&tp->n_sleeping, 1);
	pthread_mutex_unlock(&tp->mu);
	return g;
}

static void *worker_main(void *p)
{
	worker *w = p;
	threadpool *tp = w->tp;
	unsigned seen = 0; /* generations start at 0 and the first run makes it 1 */
	for (;;) {
		seen = wait_for_work(tp, seen);
		if (atomic_load_explicit(&tp->stop, memory_order_acquire))
			break;
		tp->fn(tp->arg, w->ith, tp->n);
		if (atomic_fetch_sub(&tp->pending, 1) == 1 && atomic_load(&tp->caller_sleeping)) {
			pthread_mutex_lock(&tp->mu);
			pthread_cond_signal(&tp->done_cv);
			pthread_mutex_unlock(&tp->mu);
		}
	}
	return NULL;
}

static void stop_workers(threadpool *tp)
{
	pthread_mutex_lock(&tp->mu);
	atomic_store_explicit(&tp->stop, 1, memory_order_release);
	atomic_fetch_add_explicit(&tp->gen, 1, memory_order_release);
	pthread_cond_broadcast(&tp->work_cv);
	pthread_mutex_unlock(&tp->mu);
	for (int i = 0; i < tp->n_started; i++)
		pthread_join(tp->workers[i].thread, NULL);
	tp->n_started = 0;
}

threadpool *threadpool_create(int n_threads, char err[ERR_LEN])
{
	if (n_threads < 1) {
		err_set(err, ERR_INVAL, "threadpool: %d threads requested, need at least 1", n_threads);
		return NULL;
	}
	threadpool *tp = alloc_zeroed(1, sizeof(*tp));
	if (!tp) {
		err_set(err, ERR_NOMEM, "threadpool: out of memory");
		return NULL;
	}
	tp->n = n_threads;
	atomic_init(&tp->gen, 0);
	atomic_init(&tp->pending, 0);
	atomic_init(&tp->stop, 0);
	atomic_init(&tp->busy, 0);
	atomic_init(&tp->n_sleeping, 0);
	atomic_init(&tp->caller_sleeping, 0);
	if (n_threads == 1)
		return tp;

	tp->workers = alloc_zeroed((size_t)n_threads - 1, sizeof(worker));
	if (!tp->workers) {
		err_set(err, ERR_NOMEM, "threadpool: out of memory for %d workers", n_threads - 1);
		goto fail_workers;
	}
	if (pthread_mutex_init(&tp->mu, NULL) != 0) {
		err_set(err, ERR_NOMEM, "threadpool: pthread_mutex_init failed");
		goto fail_mu;
	}
	if (pthread_cond_init(&tp->work_cv, NULL) != 0) {
		err_set(err, ERR_NOMEM, "threadpool: pthread_cond_init failed");
		goto fail_work_cv;
	}
	if (pthread_cond_init(&tp->done_cv, NULL) != 0) {
		err_set(err, ERR_NOMEM, "threadpool: pthread_cond_init failed");
		goto fail_done_cv;
	}
	for (int i = 0; i < n_threads - 1; i++) {
		worker *w = &tp->workers[i];
		w->tp = tp;
		w->ith = i + 1;
		int rc = pthread_create(&w->thread, NULL, worker_main, w);
		if (rc != 0) {
			err_set(err, ERR_NOMEM, "threadpool: pthread_create failed for worker %d of %d (error %d)",
				i + 1, n_threads - 1, rc);
			goto fail_threads;
		}
		tp->n_started++;
	}
	return tp;

fail_threads:
	stop_workers(tp);
	pthread_cond_destroy(&tp->done_cv);
fail_done_cv:
	pthread_cond_destroy(&tp->work_cv);
fail_work_cv:
	pthread_mutex_destroy(&tp->mu);
fail_mu:
	alloc_free(tp->workers);
fail_workers:
	alloc_free(tp);
	return NULL;
}

void threadpool_destroy(threadpool *tp)
{
	if (!tp)
		return;
	if (tp->n > 1) {
		stop_workers(tp);
		pthread_cond_destroy(&tp->done_cv);
		pthread_cond_destroy(&tp->work_cv);
		pthread_mutex_destroy(&tp->mu);
	}
	alloc_free(tp->workers);
	alloc_free(tp);
}

int threadpool_size(const threadpool *tp)
{
	return tp->n;
}

void threadpool_run(threadpool *tp, threadpool_fn fn, void *arg)
{
	if (tp->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	CHECK(!atomic_exchange_explicit(&tp->busy, 1, memory_order_relaxed)); /* not reentrant */

	tp->fn = fn;
	tp->arg = arg;
	atomic_store_explicit(&tp->pending, tp->n - 1, memory_order_relaxed);
	atomic_fetch_add(&tp->gen, 1); /* seq_cst: publishes fn, arg, pending */
	if (atomic_load(&tp->n_sleeping)) {
		pthread_mutex_lock(&tp->mu);
		pthread_cond_broadcast(&tp->work_cv);
		pthread_mutex_unlock(&tp->mu);
	}

	fn(arg, 0, tp->n);

	for (int i = 0; i < SPIN_ROUNDS; i++) {
		if (atomic_load_explicit(&tp->pending, memory_order_acquire) == 0)
			goto done;
		spin_pause(i);
	}
	pthread_mutex_lock(&tp->mu);
	atomic_store(&tp->caller_sleeping, 1);
	while (atomic_load(&tp->pending) != 0)
		pthread_cond_wait(&tp->done_cv, &tp->mu);
	atomic_store(&tp->caller_sleeping, 0);
	pthread_mutex_unlock(&tp->mu);
done:
	atomic_store_explicit(&tp->busy, 0, memory_order_relaxed);
}

int threadpool_ncpu(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0) {
		int n = CPU_COUNT(&set);
		if (n >= 1)
			return n;
	}
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n >= 1 ? (int)n : 1;
}
