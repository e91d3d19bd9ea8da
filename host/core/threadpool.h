/* threadpool.h - the CPU thread pool every CPU op runs on.
 *
 * One pool per dl_ctx (no global pool). dl_parallel_for splits [0, n) into contiguous
 * chunks, one per thread, and runs them on the workers and the calling thread; it returns
 * when all chunks are done. A parallel_for issued from inside a worker runs serially on that
 * worker, so ops may call each other freely. */
#ifndef DANLU_THREADPOOL_H
#define DANLU_THREADPOOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_pool dl_pool;

/* fn(arg, begin, end, tid): process items [begin, end); tid is in [0, nthreads). */
typedef void (*dl_range_fn)(void *arg, int64_t begin, int64_t end, int tid);

/* Create a pool of nthreads threads in all (the caller counts as one). nthreads <= 0 means
 * DANLU_THREADS from the environment, else every online core. Returns NULL on failure. */
dl_pool *dl_pool_create(int nthreads);
void dl_pool_destroy(dl_pool *pool);
int dl_pool_nthreads(const dl_pool *pool);

/* Run fn over [0, n) in at most nthreads contiguous chunks of at least `grain` items. */
void dl_parallel_for(dl_pool *pool, int64_t n, int64_t grain, dl_range_fn fn, void *arg);

/* Threads from the DANLU_THREADS environment variable, else the number of online cores. */
int dl_default_threads(void);

#ifdef __cplusplus
}
#endif
#endif
