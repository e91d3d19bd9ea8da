/* loss.c - MSE loss with per-sample weights, forward and backward (CPU reference). */
#include "loss.h"

#include "core/error.h"

#define LOSS_BLK 4096   /* elements per partial sum: fixed, so results do not depend on threads */
#define LOSS_BATCH 256  /* partial sums computed per parallel pass (bounded stack buffer) */
#define LOSS_LANES 8

typedef struct {
    int64_t D, nblk, item0;
    const float *pred, *target, *weights;
    float scale; /* backward: 2 * dloss / (N D) */
    double *part;
    float *dpred, *dtarget;
} loss_job;

static void loss_fwd_items(void *arg, int64_t i0, int64_t i1, int tid)
{
    const loss_job *j = arg;
    for (int64_t it = i0; it < i1; it++) {
        int64_t g = j->item0 + it, n = g / j->nblk, b = g % j->nblk;
        int64_t e0 = b * LOSS_BLK, e1 = e0 + LOSS_BLK < j->D ? e0 + LOSS_BLK : j->D;
        const float *p = j->pred + n * j->D, *t = j->target + n * j->D;
        double acc[LOSS_LANES] = {0};
        int64_t e = e0;
        for (; e + LOSS_LANES <= e1; e += LOSS_LANES)
            for (int l = 0; l < LOSS_LANES; l++) {
                double d = (double)p[e + l] - (double)t[e + l];
                acc[l] += d * d;
            }
        for (; e < e1; e++) {
            double d = (double)p[e] - (double)t[e];
            acc[0] += d * d;
        }
        double s = 0;
        for (int l = 0; l < LOSS_LANES; l++) s += acc[l];
        j->part[it] = s;
    }
}

double dl_cpu_mse_loss_forward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                               const float *target, const float *weights, float *per_sample)
{
    DL_ASSERT(N > 0 && D > 0 && pred && target);
    const int64_t nblk = (D + LOSS_BLK - 1) / LOSS_BLK, items = N * nblk;
    double part[LOSS_BATCH];
    double total = 0, sample = 0;
    for (int64_t i0 = 0; i0 < items; i0 += LOSS_BATCH) {
        int64_t cnt = items - i0 < LOSS_BATCH ? items - i0 : LOSS_BATCH;
        loss_job j = {.D = D, .nblk = nblk, .item0 = i0, .pred = pred, .target = target, .part = part};
        dl_parallel_for(ctx ? ctx->pool : NULL, cnt, 1, loss_fwd_items, &j);
        for (int64_t k = 0; k < cnt; k++) { /* in order: deterministic */
            int64_t g = i0 + k, n = g / nblk;
            sample += part[k];
            if (g % nblk == nblk - 1) { /* sample n complete */
                double mean = sample / (double)D;
                if (per_sample) per_sample[n] = (float)mean;
                total += (weights ? (double)weights[n] : 1.0) * mean;
                sample = 0;
            }
        }
    }
    return total / (double)N;
}

static void loss_bwd_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    const loss_job *j = arg;
    for (int64_t i = i0; i < i1;) {
        int64_t n = i / j->D, end = (n + 1) * j->D < i1 ? (n + 1) * j->D : i1;
        float c = j->scale * (j->weights ? j->weights[n] : 1.0f);
        for (; i < end; i++) {
            float g = c * (j->pred[i] - j->target[i]);
            if (j->dtarget) j->dtarget[i] = -g;
            if (j->dpred) j->dpred[i] = g;
        }
    }
}

void dl_cpu_mse_loss_backward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                              const float *target, const float *weights, float dloss, float *dpred,
                              float *dtarget)
{
    DL_ASSERT(N > 0 && D > 0 && pred && target);
    DL_ASSERT(!dtarget || (dtarget != pred && dtarget != target));
    if (!dpred && !dtarget) return;
    loss_job j = {.D = D, .pred = pred, .target = target, .weights = weights,
                  .scale = (float)(2.0 * (double)dloss / ((double)N * (double)D)),
                  .dpred = dpred, .dtarget = dtarget};
    dl_parallel_for(ctx ? ctx->pool : NULL, N * D, 16384, loss_bwd_range, &j);
}
