/* kcase.h - harness shared by the kernel tests: device buffers poisoned with NaN and followed by
 * sentinel guard bytes, dtype-aware upload/download, relative-L2 checks reported through a
 * callback. The same code runs the emulated Criterion tests (tests/kernels/test_kernels_*.cpp)
 * and the real-GPU binary (tests/gpu/test_gpu_kernels.cpp); only the CUDA runtime underneath
 * differs. Header-only, C++. */
#ifndef DANLU_TESTS_KCASE_H
#define DANLU_TESTS_KCASE_H

#include "dl_kernels.h"
#include "core/ctx.h"
#include "core/dtype.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KC_GUARD 256            // sentinel bytes after every device buffer
#define KC_SENTINEL 0xA5
#define KC_TOL_F32 1e-5         // relative L2 vs the fp32 CPU reference
#define KC_TOL_BF16 1e-2        // bf16 storage, fp32 math

/* One check: label, relative L2 error (inf for NaN/inf or a failed launch/guard), tolerance. */
typedef void (*kc_report_fn)(void *user, const char *label, double err, double tol);

typedef struct kc_env {
    const dl_ctx *cpu;      // CPU reference threads
    cudaStream_t stream;    // the stream every launcher gets
    struct cublasContext *blas; // base GEMMs of LoRA on cuBLAS (real GPU); NULL: our kernel
    kc_report_fn report;
    void *user;
    int failures;           // checks over tolerance so far
    int checks;
} kc_env;

static inline void kc_note(kc_env *e, const char *label, double err, double tol)
{
    e->checks++;
    if (!(err <= tol)) e->failures++;
    if (e->report) e->report(e->user, label, err, tol);
}

static inline double kc_tol(dl_dtype dt) { return dt == DL_BF16 ? KC_TOL_BF16 : KC_TOL_F32; }

/* Deterministic uniform [lo, hi) (xorshift64*). */
static inline void kc_fill(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t r = s * 0x2545F4914F6CDD1Dull;
        x[i] = lo + (hi - lo) * (float)((r >> 40) * (1.0 / 16777216.0));
    }
}

/* Round x in place to what dtype dt can hold, so the CPU reference sees the stored values. */
static inline void kc_quantize(float *x, size_t n, dl_dtype dt)
{
    if (dt == DL_BF16)
        for (size_t i = 0; i < n; i++) x[i] = dl_bf16_to_f32(dl_f32_to_bf16(x[i]));
}

static inline float *kc_host(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

/* ||got - ref|| / max(||ref||, 1e-30) in double; inf if got holds NaN or inf. */
static inline double kc_rel_l2(const float *got, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / (den > 1e-60 ? sqrt(den) : 1e-30);
}

/* Device buffer of `bytes`, body poisoned with 0xFF bytes (NaN in fp32 and bf16), followed by
 * KC_GUARD sentinel bytes. NULL if allocation fails. */
static inline void *kc_dalloc(size_t bytes)
{
    void *d = NULL;
    if (bytes > ((size_t)1 << 40) || cudaMalloc(&d, bytes + KC_GUARD) != cudaSuccess) return NULL;
    cudaMemset(d, 0xFF, bytes);
    cudaMemset((char *)d + bytes, KC_SENTINEL, KC_GUARD);
    return d;
}

/* 1 if the guard after a buffer of `bytes` is intact. */
static inline int kc_guard_ok(const void *d, size_t bytes)
{
    unsigned char g[KC_GUARD];
    if (cudaMemcpy(g, (const char *)d + bytes, KC_GUARD, cudaMemcpyDeviceToHost) != cudaSuccess)
        return 0;
    for (int i = 0; i < KC_GUARD; i++)
        if (g[i] != KC_SENTINEL) return 0;
    return 1;
}

/* Reports "<label> guard": 0 when intact, inf when something wrote past the buffer. */
static inline void kc_check_guard(kc_env *e, const char *label, const void *d, size_t bytes)
{
    char buf[160];
    snprintf(buf, sizeof buf, "%s guard", label);
    kc_note(e, buf, kc_guard_ok(d, bytes) ? 0.0 : INFINITY, 0.0);
}

/* Allocates a poisoned, guarded device buffer of n elements of dt and uploads h (converted). */
static inline void *kc_upload(const float *h, size_t n, dl_dtype dt)
{
    size_t es = dl_dtype_size(dt);
    void *d = kc_dalloc(n * es);
    if (!d) return NULL;
    void *tmp = malloc(n * es + 1);
    dl_convert_from_f32(tmp, dt, h, n);
    cudaMemcpy(d, tmp, n * es, cudaMemcpyHostToDevice);
    free(tmp);
    return d;
}

/* Copies n elements of dt back into h as fp32. */
static inline void kc_download(float *h, const void *d, size_t n, dl_dtype dt)
{
    size_t es = dl_dtype_size(dt);
    void *tmp = malloc(n * es + 1);
    cudaMemcpy(tmp, d, n * es, cudaMemcpyDeviceToHost);
    dl_convert_to_f32(h, tmp, dt, n);
    free(tmp);
}

/* Downloads n elements of dt from d, compares with ref, checks the guard, reports both. */
static inline void kc_compare(kc_env *e, const char *label, const void *d, const float *ref,
                              size_t n, dl_dtype dt, double tol)
{
    float *h = kc_host(n);
    kc_download(h, d, n, dt);
    kc_note(e, label, kc_rel_l2(h, ref, n), tol);
    kc_check_guard(e, label, d, n * dl_dtype_size(dt));
    free(h);
}

/* Reports a launcher's return code and the stream's completion (0 = fine). */
static inline void kc_check_launch(kc_env *e, const char *label, int rc)
{
    int sync = (int)cudaStreamSynchronize(e->stream);
    char buf[160];
    snprintf(buf, sizeof buf, "%s launch (rc %d, sync %d)", label, rc, sync);
    kc_note(e, buf, rc == 0 && sync == 0 ? 0.0 : INFINITY, 0.0);
}

#endif
