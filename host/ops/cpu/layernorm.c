/* layernorm.c - layer norm over the last dimension, forward and backward (CPU reference). */
#include "layernorm.h"

#include "core/error.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


/* Lane-wise partial sums (16 independent lanes) so GCC vectorises without -ffast-math. */
#define LN_LANES 16
/* Rows per partial-sum block of the dgamma/dbeta reduction: fixed, so results do not depend
 * on the number of threads. A block sums its rows in float (in row order), blocks are summed
 * in double. */
#define LN_ROWS_PER_BLOCK 64

typedef struct {
    int64_t C;
    float eps;
    const float *x, *gamma, *beta, *mean_in, *rstd_in, *dy;
    float *y, *mean, *rstd, *dx;
    float *part;   // [nblocks, 2, C] per-block partial dgamma, dbeta
    int64_t M;
} ln_job;

__attribute__((always_inline)) static inline double lane_sum(const float *v, int64_t n)
{
    float acc[LN_LANES] = {0};
    int64_t c = 0;
    for (; c + LN_LANES <= n; c += LN_LANES)
        for (int l = 0; l < LN_LANES; l++) acc[l] += v[c + l];
    double s = 0;
    for (int l = 0; l < LN_LANES; l++) s += acc[l];
    for (; c < n; c++) s += v[c];
    return s;
}

DL_SIMD_RANGE(ln_fwd_rows, arg, m0, m1, tid)
{
    const ln_job *j = arg;
    const int64_t C = j->C;
    for (int64_t m = m0; m < m1; m++) {
        const float *x = j->x + m * C; // [C]
        float *y = j->y + m * C;       // [C]
        float mu = (float)(lane_sum(x, C) / (double)C);
        /* second pass on the centred values (the row is in cache): no cancellation */
        float acc[LN_LANES] = {0};
        int64_t c = 0;
        for (; c + LN_LANES <= C; c += LN_LANES)
            for (int l = 0; l < LN_LANES; l++) {
                float d = x[c + l] - mu;
                acc[l] += d * d;
            }
        double ss = 0;
        for (int l = 0; l < LN_LANES; l++) ss += acc[l];
        for (; c < C; c++) ss += (double)(x[c] - mu) * (x[c] - mu);
        float rs = (float)(1.0 / sqrt(ss / (double)C + (double)j->eps));
        if (j->mean) j->mean[m] = mu;
        if (j->rstd) j->rstd[m] = rs;
        const float *g = j->gamma, *b = j->beta;
        if (g && b)
            for (c = 0; c < C; c++) y[c] = (x[c] - mu) * rs * g[c] + b[c];
        else
            for (c = 0; c < C; c++) y[c] = (x[c] - mu) * rs * (g ? g[c] : 1.0f) + (b ? b[c] : 0.0f);
    }
}

void dl_cpu_layernorm_forward(const dl_ctx *ctx, int64_t M, int64_t C, float eps,
                              const float *x, const float *gamma, const float *beta,
                              float *y, float *mean, float *rstd)
{
    DL_ASSERT(M >= 0 && C > 0 && eps >= 0.0f && x && y);
    ln_job j = {.C = C, .eps = eps, .x = x, .gamma = gamma, .beta = beta, .y = y,
                .mean = mean, .rstd = rstd, .M = M};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, (8192 + C - 1) / C, DL_SIMD_PICK(ln_fwd_rows), &j);
}

/* One block of rows: dx, and the block's partial dgamma/dbeta sums. */
DL_SIMD_RANGE(ln_bwd_blocks, arg, b0, b1, tid)
{
    const ln_job *j = arg;
    const int64_t C = j->C;
    const float *g = j->gamma;
    for (int64_t blk = b0; blk < b1; blk++) {
        float *pg = j->part ? j->part + blk * 2 * C : NULL; // [C] dgamma partial
        float *pb = pg ? pg + C : NULL;                     // [C] dbeta partial
        if (pg) memset(pg, 0, 2 * (size_t)C * sizeof *pg);
        int64_t r1 = (blk + 1) * LN_ROWS_PER_BLOCK;
        if (r1 > j->M) r1 = j->M;
        for (int64_t m = blk * LN_ROWS_PER_BLOCK; m < r1; m++) {
            const float *x = j->x + m * C, *dy = j->dy + m * C; // [C]
            const float mu = j->mean_in[m], rs = j->rstd_in[m];
            if (pg)
                for (int64_t c = 0; c < C; c++) {
                    pg[c] += dy[c] * ((x[c] - mu) * rs);
                    pb[c] += dy[c];
                }
            if (!j->dx) continue;
            /* dx = rstd * (dxh - mean(dxh) - xhat * mean(dxh * xhat)), dxh = dy * gamma */
            float a1[LN_LANES] = {0}, a2[LN_LANES] = {0};
            int64_t c = 0;
            for (; c + LN_LANES <= C; c += LN_LANES)
                for (int l = 0; l < LN_LANES; l++) {
                    float dxh = dy[c + l] * (g ? g[c + l] : 1.0f);
                    a1[l] += dxh;
                    a2[l] += dxh * ((x[c + l] - mu) * rs);
                }
            double s1 = 0, s2 = 0;
            for (int l = 0; l < LN_LANES; l++) { s1 += a1[l]; s2 += a2[l]; }
            for (; c < C; c++) {
                float dxh = dy[c] * (g ? g[c] : 1.0f);
                s1 += dxh;
                s2 += (double)dxh * ((x[c] - mu) * rs);
            }
            const float m1 = (float)(s1 / (double)C), m2 = (float)(s2 / (double)C);
            float *dx = j->dx + m * C; // [C]
            for (c = 0; c < C; c++) {
                float xh = (x[c] - mu) * rs;
                dx[c] = rs * (dy[c] * (g ? g[c] : 1.0f) - m1 - xh * m2);
            }
        }
    }
}

void dl_cpu_layernorm_backward(const dl_ctx *ctx, int64_t M, int64_t C, const float *x,
                               const float *gamma, const float *mean, const float *rstd,
                               const float *dy, float *dx, float *dgamma, float *dbeta)
{
    DL_ASSERT(M >= 0 && C > 0 && x && mean && rstd && dy);
    const int64_t nblk = (M + LN_ROWS_PER_BLOCK - 1) / LN_ROWS_PER_BLOCK;
    float *part = NULL;
    if ((dgamma || dbeta) && nblk > 0)
        part = dl_ws_shared(ctx, DL_WS_LN_PART, (size_t)nblk * 2 * (size_t)C * sizeof *part); // [nblk, 2, C]
    ln_job j = {.C = C, .x = x, .gamma = gamma, .mean_in = mean, .rstd_in = rstd, .dy = dy,
                .dx = dx, .part = part, .M = M};
    dl_parallel_for(ctx ? ctx->pool : NULL, nblk, 1, DL_SIMD_PICK(ln_bwd_blocks), &j);
    if (dgamma || dbeta) {
        for (int64_t c = 0; c < C; c++) {
            double sg = 0, sb = 0;
            for (int64_t b = 0; b < nblk; b++) {
                sg += part[b * 2 * C + c];
                sb += part[b * 2 * C + C + c];
            }
            if (dgamma) dgamma[c] = (float)sg;
            if (dbeta) dbeta[c] = (float)sb;
        }
    }
    if (part) dl_ws_release(ctx, part);
}
