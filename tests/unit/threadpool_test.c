/* threadpool_test.c - every ith runs exactly once per run, many runs in a row,
 * the size-1 pool runs inline, create/destroy cycles leak nothing (ASan in
 * `make check`), and a worker sleeping on its condition variable wakes up. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/threadpool.h"

#define MAX_THREADS 16

typedef struct {
	atomic_int calls[MAX_THREADS];
	atomic_int bad_nth;
	int want_nth;
	pthread_t caller;
	atomic_int ith0_on_caller;
} counts;

static void count_fn(void *arg, int ith, int nth)
{
	counts *c = arg;
	if (nth != c->want_nth || ith < 0 || ith >= nth)
		atomic_fetch_add(&c->bad_nth, 1);
	else
		atomic_fetch_add(&c->calls[ith], 1);
	if (ith == 0 && pthread_equal(pthread_self(), c->caller))
		atomic_fetch_add(&c->ith0_on_caller, 1);
}

static threadpool *make(int n)
{
	char err[ERR_LEN] = "";
	threadpool *tp = threadpool_create(n, err);
	cr_assert_not_null(tp, "threadpool_create(%d): %s", n, err);
	cr_assert_eq(threadpool_size(tp), n);
	return tp;
}

Test(threadpool, each_ith_once_per_run)
{
	for (int n = 1; n <= 8; n++) {
		threadpool *tp = make(n);
		counts c = { .want_nth = n, .caller = pthread_self() };
		const int runs = 200;
		for (int r = 0; r < runs; r++)
			threadpool_run(tp, count_fn, &c);
		cr_assert_eq(atomic_load(&c.bad_nth), 0, "n=%d: calls with a wrong ith/nth", n);
		for (int i = 0; i < n; i++)
			cr_assert_eq(atomic_load(&c.calls[i]), runs, "n=%d ith=%d: %d calls, want %d", n,
				     i, atomic_load(&c.calls[i]), runs);
		cr_assert_eq(atomic_load(&c.ith0_on_caller), runs, "ith 0 must run on the caller");
		threadpool_destroy(tp);
	}
}

/* Results written by workers are visible to the caller when run returns. */
typedef struct {
	int64_t *out;
	int64_t n;
	int64_t round;
} fill_job;

static void fill_fn(void *arg, int ith, int nth)
{
	fill_job *j = arg;
	for (int64_t i = j->n * ith / nth; i < j->n * (ith + 1) / nth; i++)
		j->out[i] = i * 7 + j->round;
}

Test(threadpool, many_runs_see_all_writes)
{
	threadpool *tp = make(4);
	enum { N = 1000 };
	int64_t out[N];
	fill_job j = { out, N, 0 };
	for (int r = 0; r < 20000; r++) {
		j.round = r;
		threadpool_run(tp, fill_fn, &j);
		/* check a few entries every round, all of them now and then */
		int64_t step = r % 1000 == 0 ? 1 : 97;
		for (int64_t i = 0; i < N; i += step)
			cr_assert_eq(out[i], i * 7 + r, "round %d: out[%ld] = %ld", r, (long)i,
				     (long)out[i]);
	}
	threadpool_destroy(tp);
}

Test(threadpool, size_one_runs_inline)
{
	threadpool *tp = make(1);
	counts c = { .want_nth = 1, .caller = pthread_self() };
	threadpool_run(tp, count_fn, &c);
	cr_assert_eq(atomic_load(&c.calls[0]), 1);
	cr_assert_eq(atomic_load(&c.ith0_on_caller), 1);
	threadpool_destroy(tp);
}

/* Workers that have gone to sleep (past the spin) still pick up the next run. */
Test(threadpool, wakes_sleeping_workers)
{
	threadpool *tp = make(3);
	counts c = { .want_nth = 3, .caller = pthread_self() };
	for (int r = 0; r < 3; r++) {
		usleep(50 * 1000);
		threadpool_run(tp, count_fn, &c);
	}
	for (int i = 0; i < 3; i++)
		cr_assert_eq(atomic_load(&c.calls[i]), 3);
	threadpool_destroy(tp);
}

Test(threadpool, create_destroy_cycles)
{
	for (int r = 0; r < 50; r++) {
		threadpool *tp = make(1 + r % 6);
		if (r % 2) {
			counts c = { .want_nth = 1 + r % 6, .caller = pthread_self() };
			threadpool_run(tp, count_fn, &c);
		}
		threadpool_destroy(tp);
	}
	threadpool_destroy(NULL);
}

Test(threadpool, bad_size_and_failed_alloc)
{
	char err[ERR_LEN] = "";
	cr_assert_null(threadpool_create(0, err));
	cr_assert(err[0], "an error message is expected");

	/* every allocation of a 4-thread pool fails in turn, cleanly */
	alloc_fail_after(-1);
	threadpool_destroy(make(4));
	long n_alloc = alloc_fail_after(-1); /* allocations one create makes */
	cr_assert_gt(n_alloc, 0);
	for (long k = 0; k < n_alloc; k++) {
		alloc_fail_after(k);
		err[0] = '\0';
		threadpool *tp = threadpool_create(4, err);
		alloc_fail_after(-1);
		cr_assert_null(tp, "allocation %ld failed but create succeeded", k);
		cr_assert(err[0], "allocation %ld: no error message", k);
	}
}

Test(threadpool, ncpu)
{
	int n = threadpool_ncpu();
	cr_assert_geq(n, 1);
	cr_assert_leq(n, 1 << 16);
}
