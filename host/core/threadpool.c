/* threadpool.c - a fork-join pool on pthreads: one job at a time, the caller participates.
 * Workers spin briefly on the job counter before sleeping on a condition variable, and the
 * caller spins briefly on the pending count before waiting, so back-to-back ops (a network's
 * layers) do not pay a futex wake-up each; the chunking, and so every result, is unchanged. */
#include "threadpool.h"
#include "error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

/* pause iterations before sleeping: ~50-100 us on current x86 */
#define DL_POOL_SPIN 2000

struct dl_pool {
    int nthreads;                 /* workers + the calling thread */
    pthread_t *threads;           /* [nthreads - 1] */
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    _Atomic uint64_t generation;  /* bumped for each job (under mu; read spinning without it) */
    atomic_int pending;           /* workers still running the current job */
    atomic_int quit;
    /* the current job */
    dl_range_fn fn;
    void *arg;
    int64_t n, chunk;
    int nchunks;
};

static _Thread_local int t_in_worker;

static void run_chunk(dl_pool *p, int c)
{
    int64_t b = (int64_t)c * p->chunk, e = b + p->chunk;
    if (e > p->n) e = p->n;
    if (b < e) p->fn(p->arg, b, e, c);
}

typedef struct { dl_pool *pool; int index; } worker_arg;

static void *worker_main(void *varg)
{
    worker_arg wa = *(worker_arg *)varg;
    free(varg);
    dl_pool *p = wa.pool;
    t_in_worker = 1;
    uint64_t seen = 0;
    for (;;) {
        for (int i = 0; i < DL_POOL_SPIN && atomic_load_explicit(&p->generation, memory_order_acquire) == seen &&
                        !atomic_load_explicit(&p->quit, memory_order_relaxed);
             i++)
            cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (p->quit) break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        int c = wa.index + 1; /* chunk 0 belongs to the caller */
        if (c < p->nchunks) run_chunk(p, c);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            /* the last one: wake a caller that went to sleep (under mu: no lost wake-up) */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int dl_default_threads(void)
{
    const char *env = getenv("DANLU_THREADS");
    if (env && *env) {
        int v = atoi(env);
        if (v > 0) return v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

dl_pool *dl_pool_create(int nthreads)
{
    if (nthreads <= 0) nthreads = dl_default_threads();
    if (nthreads > 256) nthreads = 256;
    dl_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nthreads = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    if (!p->threads) { free(p); return NULL; }
    for (int i = 0; i < nthreads - 1; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        DL_ASSERT(wa);
        wa->pool = p;
        wa->index = i;
        int rc = pthread_create(&p->threads[i], NULL, worker_main, wa);
        DL_ASSERTF(rc == 0, "pthread_create failed (%d)", rc);
    }
    return p;
}

void dl_pool_destroy(dl_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads - 1; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->threads);
    free(p);
}

int dl_pool_nthreads(const dl_pool *p) { return p ? p->nthreads : 1; }

void dl_parallel_for(dl_pool *p, int64_t n, int64_t grain, dl_range_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = p ? p->nthreads : 1;
    int64_t maxchunks = (n + grain - 1) / grain;
    if (maxchunks < nt) nt = (int)maxchunks;
    if (nt <= 1 || t_in_worker || !p) {
        fn(arg, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->chunk = (n + nt - 1) / nt;
    p->nchunks = nt;
    p->pending = p->nthreads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);

    t_in_worker = 1;
    run_chunk(p, 0);
    t_in_worker = 0;

    for (int i = 0; i < DL_POOL_SPIN && atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++) cpu_relax();
    if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        while (p->pending > 0) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
