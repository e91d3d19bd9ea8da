/* bench_common.h - what every benchmark program needs: a monotonic clock, a median helper,
 * seeded torch-compatible random inputs, the process's peak RSS, and the backend side of the
 * end-to-end benchmarks (--backend: the op table, inputs uploaded to its memory, a count of the
 * backend memory handed out). Header only (each bench/bench_*.c is its own program). */
#ifndef DANLU_BENCH_COMMON_H
#define DANLU_BENCH_COMMON_H

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"

#include <stdint.h>
#include <stdio.h>
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

/* ---- the backend (--backend cpu|cuda) ---- */

/* The op table called name, or exit(1) with dl_backend_find's message (e.g. "cuda" in a build
 * without the CUDA backend). */
static inline const dl_backend *bench_backend(const char *prog, const char *name)
{
    const dl_backend *be = dl_backend_find(name);
    if (!be) {
        fprintf(stderr, "%s: %s\n", prog, dl_error_msg());
        exit(1);
    }
    return be;
}

/* bytes of backend memory (dl_be_alloc), added to *total; exit(1) with the backend's message
 * when there is none. */
static inline void *bench_be_alloc(const char *prog, const dl_ctx *ctx, size_t bytes, size_t *total)
{
    void *p = dl_be_alloc(ctx, bytes);
    if (!p) {
        fprintf(stderr, "%s: %s\n", prog, dl_error_msg());
        exit(1);
    }
    *total += bytes;
    return p;
}

/* n floats of bench_randn(seed) in backend memory (uploaded; the host copy is freed). */
static inline float *bench_be_randn(const char *prog, const dl_ctx *ctx, size_t n, uint64_t seed, size_t *total)
{
    float *h = bench_randn(n, seed), *d = bench_be_alloc(prog, ctx, n * sizeof *d, total);
    if (!h || dl_be_upload(ctx, d, h, n * sizeof *h) != DL_OK) {
        fprintf(stderr, "%s: uploading %zu inputs: %s\n", prog, n, h ? dl_error_msg() : "out of memory");
        exit(1);
    }
    free(h);
    return d;
}

/* dl_be_sync, or exit(1) with the backend's (sticky) error: a device step is timed complete. */
static inline void bench_be_sync(const char *prog, const dl_ctx *ctx)
{
    if (dl_be_sync(ctx) != DL_OK) {
        fprintf(stderr, "%s: %s\n", prog, dl_error_msg());
        exit(1);
    }
}

/* s as a JSON string (quotes, backslashes and control characters escaped). */
static inline void bench_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", (unsigned char)*s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

#endif
