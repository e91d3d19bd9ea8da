/* bench_common.h - what every benchmark program needs: a monotonic clock, a median helper,
 * seeded torch-compatible random inputs and the process's peak RSS. Header only (each
 * bench/bench_*.c is its own program). */
#ifndef DANLU_BENCH_COMMON_H
#define DANLU_BENCH_COMMON_H

#include "core/rng.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* qsort comparator for doubles (ascending). */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* n floats of torch.randn from torch.manual_seed(seed) (malloc'd; NULL when out of memory). */
static inline float *bench_randn(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    if (!x) return NULL;
    dl_torch_rng g;
    dl_torch_rng_seed(&g, seed);
    dl_torch_randn(&g, x, n);
    return x;
}

/* Peak resident set size of this process so far, GiB. */
static inline double bench_peak_rss_gib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1048576.0;
}

#endif
