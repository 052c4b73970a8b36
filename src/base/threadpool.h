/* threadpool.h - a fixed set of worker threads that run one parallel job at a time.
 *
 * threadpool_run(tp, fn, arg) calls fn(arg, ith, nth) once for every ith in
 * [0, nth) where nth = threadpool_size(tp), the calling thread taking ith 0,
 * and returns when all calls have returned. No allocation per run. Jobs are
 * not reentrant: one run at a time per pool (the engine's step loop owns it).
 * Workers spin briefly for the next job, then sleep on a condition variable.
 */
#ifndef PDSERVE_BASE_THREADPOOL_H
#define PDSERVE_BASE_THREADPOOL_H

#include "base/err.h"

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *arg, int ith, int nth);

/* n_threads >= 1 (1 = no workers, jobs run inline). NULL on failure, with err. */
threadpool *threadpool_create(int n_threads, char err[ERR_LEN]);
void threadpool_destroy(threadpool *tp); /* NULL is fine */
int threadpool_size(const threadpool *tp);
void threadpool_run(threadpool *tp, threadpool_fn fn, void *arg);

/* Number of online CPUs (>= 1). */
int threadpool_ncpu(void);

#endif
