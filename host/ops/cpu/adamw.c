/* adamw.c - AdamW optimizer step and squared gradient norm (CPU reference). */
#include "adamw.h"

#include "core/error.h"

#include <math.h>

typedef struct {
    float decay;     /* 1 - lr * weight_decay */
    float omb1;      /* 1 - beta1 */
    float b2, omb2;  /* beta2, 1 - beta2 */
    float step_size; /* lr / (1 - beta1^step) */
    float inv_bc2_sqrt; /* 1 / sqrt(1 - beta2^step) */
    float eps;
    float *p, *m, *v;
    const float *g;
} adamw_job;

static void adamw_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    const adamw_job *j = arg;
    float *p = j->p, *m = j->m, *v = j->v;
    const float *g = j->g;
    for (int64_t i = i0; i < i1; i++) {
        float gi = g[i];
        float mi = m[i] + j->omb1 * (gi - m[i]); /* torch: m.lerp_(g, 1 - beta1) */
        float vi = j->b2 * v[i] + j->omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * j->inv_bc2_sqrt + j->eps;
        p[i] = p[i] * j->decay - j->step_size * mi / denom;
    }
}

void dl_cpu_adamw_step(const dl_ctx *ctx, int64_t n, const dl_adamw_hparams *hp, int64_t step,
                       float *p, const float *g, float *m, float *v)
{
    DL_ASSERT(hp && step >= 1 && n >= 0);
    DL_ASSERT(n == 0 || (p && g && m && v));
    DL_ASSERT(hp->beta1 >= 0 && hp->beta1 < 1 && hp->beta2 >= 0 && hp->beta2 < 1 && hp->eps >= 0);
    double bc1 = 1.0 - pow(hp->beta1, (double)step);
    double bc2 = 1.0 - pow(hp->beta2, (double)step);
    adamw_job j = {
        .decay = (float)(1.0 - hp->lr * hp->weight_decay),
        .omb1 = (float)(1.0 - hp->beta1),
        .b2 = (float)hp->beta2, .omb2 = (float)(1.0 - hp->beta2),
        .step_size = (float)(hp->lr / bc1),
        .inv_bc2_sqrt = (float)(1.0 / sqrt(bc2)),
        .eps = (float)hp->eps, .p = p, .m = m, .v = v, .g = g,
    };
    dl_parallel_for(ctx ? ctx->pool : NULL, n, 16384, adamw_range, &j);
}

#define SUMSQ_BLK 4096  /* elements per partial sum: fixed, so results do not depend on threads */
#define SUMSQ_BATCH 256 /* partial sums per parallel pass (bounded stack buffer) */
#define SUMSQ_LANES 8

typedef struct {
    int64_t n, blk0;
    const float *x;
    double *part;
} sumsq_job;

static void sumsq_blocks(void *arg, int64_t b0, int64_t b1, int tid)
{
    const sumsq_job *j = arg;
    for (int64_t b = b0; b < b1; b++) {
        int64_t e0 = (j->blk0 + b) * SUMSQ_BLK, e1 = e0 + SUMSQ_BLK < j->n ? e0 + SUMSQ_BLK : j->n;
        double acc[SUMSQ_LANES] = {0};
        int64_t e = e0;
        for (; e + SUMSQ_LANES <= e1; e += SUMSQ_LANES)
            for (int l = 0; l < SUMSQ_LANES; l++) acc[l] += (double)j->x[e + l] * j->x[e + l];
        for (; e < e1; e++) acc[0] += (double)j->x[e] * j->x[e];
        double s = 0;
        for (int l = 0; l < SUMSQ_LANES; l++) s += acc[l];
        j->part[b] = s;
    }
}

double dl_cpu_sumsq(const dl_ctx *ctx, int64_t n, const float *x)
{
    DL_ASSERT(n >= 0 && (n == 0 || x));
    const int64_t nblk = (n + SUMSQ_BLK - 1) / SUMSQ_BLK;
    double part[SUMSQ_BATCH], total = 0;
    for (int64_t b0 = 0; b0 < nblk; b0 += SUMSQ_BATCH) {
        int64_t cnt = nblk - b0 < SUMSQ_BATCH ? nblk - b0 : SUMSQ_BATCH;
        sumsq_job j = {n, b0, x, part};
        dl_parallel_for(ctx ? ctx->pool : NULL, cnt, 1, sumsq_blocks, &j);
        for (int64_t k = 0; k < cnt; k++) total += part[k]; /* in order: deterministic */
    }
    return total;
}
