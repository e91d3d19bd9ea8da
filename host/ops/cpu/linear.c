/* linear.c - fully connected layer on the CPU: GEMMs plus bias add and bias gradient. */
#include "linear.h"
#include "core/error.h"
#include "gemm.h"

#include <stdlib.h>
#include <string.h>

typedef struct { float *y; const float *b; int64_t out; } bias_job;

static void bias_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    (void)tid;
    const bias_job *j = arg;
    for (int64_t m = m0; m < m1; m++) {
        float *y = j->y + m * j->out;
        for (int64_t o = 0; o < j->out; o++) y[o] += j->b[o];
    }
}

void dl_cpu_linear_forward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                             const float *x, const void *w, dl_dtype wdt, const float *b, float *y)
{
    DL_ASSERT(M >= 0 && in > 0 && out > 0);
    DL_ASSERT(x && w && y);
    if (M == 0) return;
    // y[M, out] = x[M, in] · w[out, in]^T
    dl_sgemm_t(ctx, 0, 1, M, out, in, 1.f, x, in, w, wdt, in, 0.f, y, out);
    if (b) dl_cpu_bias_add(ctx, M, out, y, b);
}

void dl_cpu_linear_forward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                           const float *x, const float *w, const float *b, float *y)
{
    dl_cpu_linear_forward_t(ctx, M, in, out, x, w, DL_F32, b, y);
}

void dl_cpu_bias_add(const dl_ctx *ctx, int64_t M, int64_t C, float *y, const float *b)
{
    DL_ASSERT(M >= 0 && C > 0 && b && (M == 0 || y));
    bias_job j = {y, b, C};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, 64, bias_rows, &j);
}

typedef struct { const float *dy; int64_t M, C; float *part; int nt; } bgrad_job;

/* Thread t sums its rows into part[t*C .. t*C+C). */
static void bgrad_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    const bgrad_job *j = arg;
    float *acc = j->part + (int64_t)tid * j->C;
    memset(acc, 0, (size_t)j->C * sizeof(float));
    for (int64_t m = m0; m < m1; m++) {
        const float *d = j->dy + m * j->C;
        for (int64_t c = 0; c < j->C; c++) acc[c] += d[c];
    }
}

void dl_cpu_bias_grad(const dl_ctx *ctx, int64_t M, int64_t C, const float *dy, float *db)
{
    DL_ASSERT(M >= 0 && C > 0 && db && (M == 0 || dy));
    dl_pool *pool = ctx ? ctx->pool : NULL;
    int nt = dl_pool_nthreads(pool);
    /* fixed chunking (grain) so the summation order does not depend on timing */
    float *part = dl_ws_shared(ctx, DL_WS_BIAS_PART, (size_t)nt * (size_t)C * sizeof(float)); // [nt, C]
    memset(part, 0, (size_t)nt * (size_t)C * sizeof(float));
    bgrad_job j = {dy, M, C, part, nt};
    dl_parallel_for(pool, M, 256, bgrad_rows, &j);
    for (int64_t c = 0; c < C; c++) {
        float s = 0.f;
        for (int t = 0; t < nt; t++) s += part[(int64_t)t * C + c];
        db[c] = s;
    }
    dl_ws_release(ctx, part);
}

void dl_cpu_linear_backward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                            const float *x, const float *w, const float *dy,
                            float *dx, float *dw, float *db)
{
    dl_cpu_linear_backward_t(ctx, M, in, out, x, w, DL_F32, dy, dx, dw, db);
}

void dl_cpu_linear_backward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                              const float *x, const void *w, dl_dtype wdt, const float *dy,
                              float *dx, float *dw, float *db)
{
    DL_ASSERT(M >= 0 && in > 0 && out > 0);
    DL_ASSERT(dy || M == 0);
    // dx[M, in] = dy[M, out] · w[out, in]
    if (dx) {
        DL_ASSERT(w);
        dl_sgemm_t(ctx, 0, 0, M, in, out, 1.f, dy, out, w, wdt, in, 0.f, dx, in);
    }
    // dw[out, in] = dy[M, out]^T · x[M, in]
    if (dw) {
        DL_ASSERT(x);
        dl_sgemm(ctx, 1, 0, out, in, M, 1.f, dy, out, x, in, 0.f, dw, in);
    }
    // db[out] = sum_m dy[m, :]
    if (db) dl_cpu_bias_grad(ctx, M, out, dy, db);
}
