/* groupnorm.c - group norm (+ fused SiLU) on channels-last [N, HW, C], forward and backward
 * (CPU reference).
 *
 * Channels-last puts each group's C/G channels side by side in every row of C, so a group's
 * values are strided over memory. Both directions therefore work in two streaming passes over
 * row blocks of every sample, with per-channel work vectorised along C:
 *   pass 1: per (sample, block of rows) per-channel partial sums in double -> [N, nblk, 2, C];
 *           reduced per (sample, group) serially (tiny);
 *   pass 2: per (sample, block of rows) the elementwise output with per-channel coefficients
 *           (backward with SiLU: from the dz that pass 1 left in dx).
 * Blocks have a fixed number of rows, so results do not depend on the thread count. */
#include "groupnorm.h"

#include "core/error.h"
#include "simd.h"
#include "softmax.h" /* dl_expf */

#include <math.h>
#include <stdlib.h>
#include <string.h>


#define GN_ROWS_PER_BLOCK 128

typedef struct {
    dl_groupnorm_shape s;
    int64_t nblk;                 /* row blocks per sample */
    const float *x, *dy, *gamma, *beta;
    const float *ca, *cb;         // [N, C] per-channel scale and shift: z = x * ca + cb
    const float *cm, *cr;         // [N, C] per-channel mean and rstd (backward)
    const float *k1, *k2;         // [N, C] backward: dx = dz * ca - k1 - (x - mean) * k2
    float *y, *dx;
    float *dz;                    // [N, HW, C] backward with SiLU: dz kept by pass 1 (in dx), or NULL
    double *part;                 // [N, nblk, 2, C]
} gn_job;

static inline float gn_sigmoid(float z) { return 1.0f / (1.0f + dl_expf(-z)); }

/* Forward pass 1: per-channel sum and sum of squares of one row block. */
DL_SIMD_RANGE(gn_fwd_stats, arg, i0, i1, tid)
{
    const gn_job *j = arg;
    const int64_t C = j->s.C, HW = j->s.HW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t n = i / j->nblk, b = i % j->nblk;
        double *ps = j->part + i * 2 * C, *pq = ps + C; // [C], [C]
        memset(ps, 0, 2 * (size_t)C * sizeof *ps);
        int64_t r1 = (b + 1) * GN_ROWS_PER_BLOCK < HW ? (b + 1) * GN_ROWS_PER_BLOCK : HW;
        for (int64_t r = b * GN_ROWS_PER_BLOCK; r < r1; r++) {
            const float *x = j->x + (n * HW + r) * C; // [C]
            for (int64_t c = 0; c < C; c++) {
                double v = x[c];
                ps[c] += v;
                pq[c] += v * v;
            }
        }
    }
}

/* Forward pass 2: y = [silu](x * ca + cb). */
DL_SIMD_RANGE(gn_fwd_apply, arg, i0, i1, tid)
{
    const gn_job *j = arg;
    const int64_t C = j->s.C, HW = j->s.HW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t n = i / j->nblk, b = i % j->nblk;
        const float *ca = j->ca + n * C, *cb = j->cb + n * C; // [C]
        int64_t r1 = (b + 1) * GN_ROWS_PER_BLOCK < HW ? (b + 1) * GN_ROWS_PER_BLOCK : HW;
        for (int64_t r = b * GN_ROWS_PER_BLOCK; r < r1; r++) {
            const float *x = j->x + (n * HW + r) * C; // [C]
            float *y = j->y + (n * HW + r) * C;       // [C]
            if (j->s.silu)
                for (int64_t c = 0; c < C; c++) {
                    float z = x[c] * ca[c] + cb[c];
                    y[c] = z * gn_sigmoid(z);
                }
            else
                for (int64_t c = 0; c < C; c++) y[c] = x[c] * ca[c] + cb[c];
        }
    }
}

static int64_t gn_blocks(int HW) { return ((int64_t)HW + GN_ROWS_PER_BLOCK - 1) / GN_ROWS_PER_BLOCK; }

static void gn_check(dl_groupnorm_shape s)
{
    DL_ASSERTF(s.N >= 0 && s.HW >= 1 && s.C >= 1 && s.G >= 1 && s.C % s.G == 0,
               "groupnorm: bad shape N=%d HW=%d C=%d G=%d", s.N, s.HW, s.C, s.G);
    DL_ASSERT(s.eps >= 0.0f);
}

void dl_cpu_groupnorm_forward(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                              const float *gamma, const float *beta, float *y,
                              float *mean, float *rstd)
{
    gn_check(s);
    DL_ASSERT(x && y);
    if (s.N == 0) return;
    const int64_t N = s.N, C = s.C, G = s.G, Cg = C / G, nblk = gn_blocks(s.HW);
    double *part = dl_ws_shared(ctx, DL_WS_GN_PART, (size_t)(N * nblk) * 2 * (size_t)C * sizeof *part); // [N, nblk, 2, C]
    float *coef = dl_ws_shared(ctx, DL_WS_GN_COEF, 2 * (size_t)(N * C) * sizeof *coef); // ca, cb
    gn_job j = {.s = s, .nblk = nblk, .x = x, .gamma = gamma, .beta = beta, .y = y,
                .part = part, .ca = coef, .cb = coef + N * C};
    dl_pool *pool = ctx ? ctx->pool : NULL;
    dl_parallel_for(pool, N * nblk, 1, DL_SIMD_PICK(gn_fwd_stats), &j);

    const double cnt = (double)s.HW * (double)Cg;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            double sx = 0, sq = 0;
            for (int64_t b = 0; b < nblk; b++) {
                const double *ps = part + (n * nblk + b) * 2 * C, *pq = ps + C;
                for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) { sx += ps[c]; sq += pq[c]; }
            }
            double mu = sx / cnt, var = sq / cnt - mu * mu;
            if (var < 0) var = 0;
            double rs = 1.0 / sqrt(var + (double)s.eps);
            if (mean) mean[n * G + g] = (float)mu;
            if (rstd) rstd[n * G + g] = (float)rs;
            for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
                double a = rs * (gamma ? gamma[c] : 1.0f);
                coef[n * C + c] = (float)a;
                coef[N * C + n * C + c] = (float)((beta ? beta[c] : 0.0f) - mu * a);
            }
        }
    dl_parallel_for(pool, N * nblk, 1, DL_SIMD_PICK(gn_fwd_apply), &j);
    dl_ws_release(ctx, part);
    dl_ws_release(ctx, coef);
}

/* Backward pass 1: per-channel partial sums of dz and dz * xhat over one row block, where
 * dz = dy (or dy * silu'(z) with z recomputed) and xhat = (x - mean) * rstd. */
DL_SIMD_RANGE(gn_bwd_stats, arg, i0, i1, tid)
{
    const gn_job *j = arg;
    const int64_t C = j->s.C, HW = j->s.HW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t n = i / j->nblk, b = i % j->nblk;
        const float *cm = j->cm + n * C, *cr = j->cr + n * C; // [C]
        const float *ca = j->ca + n * C, *cb = j->cb + n * C; // [C]
        double *p1 = j->part + i * 2 * C, *p2 = p1 + C;      // [C], [C]
        memset(p1, 0, 2 * (size_t)C * sizeof *p1);
        int64_t r1 = (b + 1) * GN_ROWS_PER_BLOCK < HW ? (b + 1) * GN_ROWS_PER_BLOCK : HW;
        for (int64_t r = b * GN_ROWS_PER_BLOCK; r < r1; r++) {
            const float *x = j->x + (n * HW + r) * C, *dy = j->dy + (n * HW + r) * C; // [C]
            float *dzo = j->dz ? j->dz + (n * HW + r) * C : NULL;                      // [C]
            if (j->s.silu && dzo) /* dy and dzo may be the same buffer: element c is read first */
                for (int64_t c = 0; c < C; c++) {
                    float z = x[c] * ca[c] + cb[c];
                    float sg = gn_sigmoid(z);
                    float dz = dy[c] * (sg * (1.0f + z * (1.0f - sg)));
                    dzo[c] = dz;
                    p1[c] += (double)dz;
                    p2[c] += (double)(dz * ((x[c] - cm[c]) * cr[c]));
                }
            else if (j->s.silu)
                for (int64_t c = 0; c < C; c++) {
                    float z = x[c] * ca[c] + cb[c];
                    float sg = gn_sigmoid(z);
                    float dz = dy[c] * (sg * (1.0f + z * (1.0f - sg)));
                    p1[c] += (double)dz;
                    p2[c] += (double)(dz * ((x[c] - cm[c]) * cr[c]));
                }
            else
                for (int64_t c = 0; c < C; c++) {
                    p1[c] += (double)dy[c];
                    p2[c] += (double)(dy[c] * ((x[c] - cm[c]) * cr[c]));
                }
        }
    }
}

/* Backward pass 2: dx = rstd * (dz * gamma - k1 - xhat * k2) = dz * ca - k1' - (x - mean) * k2'
 * with k1' = rstd * k1 and k2' = rstd^2 * k2 precomputed per channel. */
DL_SIMD_RANGE(gn_bwd_dx, arg, i0, i1, tid)
{
    const gn_job *j = arg;
    const int64_t C = j->s.C, HW = j->s.HW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t n = i / j->nblk, b = i % j->nblk;
        const float *cm = j->cm + n * C;                      // [C]
        const float *ca = j->ca + n * C, *cb = j->cb + n * C; // [C]
        const float *k1 = j->k1 + n * C, *k2 = j->k2 + n * C; // [C]
        int64_t r1 = (b + 1) * GN_ROWS_PER_BLOCK < HW ? (b + 1) * GN_ROWS_PER_BLOCK : HW;
        for (int64_t r = b * GN_ROWS_PER_BLOCK; r < r1; r++) {
            const float *x = j->x + (n * HW + r) * C, *dy = j->dy + (n * HW + r) * C; // [C]
            float *dx = j->dx + (n * HW + r) * C;                                     // [C]
            if (j->s.silu && j->dz) /* dx holds dz from pass 1 */
                for (int64_t c = 0; c < C; c++) dx[c] = dx[c] * ca[c] - k1[c] - (x[c] - cm[c]) * k2[c];
            else if (j->s.silu) /* dx overlaps x: dz recomputed */
                for (int64_t c = 0; c < C; c++) {
                    float z = x[c] * ca[c] + cb[c];
                    float sg = gn_sigmoid(z);
                    float dz = dy[c] * (sg * (1.0f + z * (1.0f - sg)));
                    dx[c] = dz * ca[c] - k1[c] - (x[c] - cm[c]) * k2[c];
                }
            else
                for (int64_t c = 0; c < C; c++) dx[c] = dy[c] * ca[c] - k1[c] - (x[c] - cm[c]) * k2[c];
        }
    }
}

void dl_cpu_groupnorm_backward(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                               const float *gamma, const float *beta, const float *mean,
                               const float *rstd, const float *dy, float *dx,
                               float *dgamma, float *dbeta)
{
    gn_check(s);
    DL_ASSERT(x && mean && rstd && dy);
    const int64_t N = s.N, C = s.C, G = s.G, Cg = C / G, nblk = gn_blocks(s.HW);
    if (N == 0) {
        for (int64_t c = 0; c < C; c++) {
            if (dgamma) dgamma[c] = 0;
            if (dbeta) dbeta[c] = 0;
        }
        return;
    }
    double *part = dl_ws_shared(ctx, DL_WS_GN_PART, (size_t)(N * nblk) * 2 * (size_t)C * sizeof *part); // [N, nblk, 2, C]
    float *coef = dl_ws_shared(ctx, DL_WS_GN_COEF, 6 * (size_t)(N * C) * sizeof *coef); // ca, cb, cm, cr, k1, k2
    float *ca = coef, *cb = coef + N * C, *cm = coef + 2 * N * C, *cr = coef + 3 * N * C;
    float *k1 = coef + 4 * N * C, *k2 = coef + 5 * N * C;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            float mu = mean[n * G + c / Cg], rs = rstd[n * G + c / Cg];
            float a = rs * (gamma ? gamma[c] : 1.0f);
            cm[n * C + c] = mu;
            cr[n * C + c] = rs;
            ca[n * C + c] = a;
            cb[n * C + c] = (beta ? beta[c] : 0.0f) - mu * a;
        }
    gn_job j = {.s = s, .nblk = nblk, .x = x, .dy = dy, .gamma = gamma, .beta = beta,
                .ca = ca, .cb = cb, .cm = cm, .cr = cr, .k1 = k1, .k2 = k2, .dx = dx,
                .part = part};
    /* With SiLU, pass 1 keeps dz in dx (unless dx overlaps x) so that pass 2 does not evaluate
     * the sigmoid again: same traffic (pass 2 reads dx instead of dy), same bits. */
    const int64_t nel = N * (int64_t)s.HW * C;
    if (s.silu && dx && (dx + nel <= x || x + nel <= dx)) j.dz = dx;
    dl_pool *pool = ctx ? ctx->pool : NULL;
    dl_parallel_for(pool, N * nblk, 1, DL_SIMD_PICK(gn_bwd_stats), &j);

    /* per-channel totals per sample, reused in place in the first block's slot */
    for (int64_t n = 0; n < N; n++) {
        double *t1 = part + n * nblk * 2 * C, *t2 = t1 + C; // [C], [C]
        for (int64_t b = 1; b < nblk; b++) {
            const double *p1 = part + (n * nblk + b) * 2 * C, *p2 = p1 + C;
            for (int64_t c = 0; c < C; c++) { t1[c] += p1[c]; t2[c] += p2[c]; }
        }
    }
    if (dgamma || dbeta)
        for (int64_t c = 0; c < C; c++) {
            double sg = 0, sb = 0;
            for (int64_t n = 0; n < N; n++) {
                sb += part[n * nblk * 2 * C + c];
                sg += part[n * nblk * 2 * C + C + c];
            }
            if (dgamma) dgamma[c] = (float)sg;
            if (dbeta) dbeta[c] = (float)sb;
        }
    if (dx) {
        const double cnt = (double)s.HW * (double)Cg;
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < G; g++) {
                const double *t1 = part + n * nblk * 2 * C, *t2 = t1 + C;
                double m1 = 0, m2 = 0; /* means of dxhat and dxhat * xhat over the group */
                for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
                    double gc = gamma ? gamma[c] : 1.0;
                    m1 += gc * t1[c];
                    m2 += gc * t2[c];
                }
                const double rs = rstd[n * G + g];
                for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
                    k1[n * C + c] = (float)(rs * m1 / cnt);
                    k2[n * C + c] = (float)(rs * rs * m2 / cnt);
                }
            }
        dl_parallel_for(pool, N * nblk, 1, DL_SIMD_PICK(gn_bwd_dx), &j);
    }
    dl_ws_release(ctx, part);
    dl_ws_release(ctx, coef);
}
