/* loss.h - mean-squared-error loss with optional per-sample weights (min-SNR weighting) (CPU
 * reference, fp32 in, double accumulation), forward and backward. */
#ifndef DANLU_CPU_LOSS_H
#define DANLU_CPU_LOSS_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* pred, target: [N, D] (D = elements per sample, e.g. H*W*C). Returns
 *   loss = (1/N) sum_n w[n] * (1/D) sum_i (pred[n,i] - target[n,i])^2
 * with w[n] = weights[n], or 1 when weights is NULL (then it is the plain mean over all
 * elements, F.mse_loss(reduction="mean")). per_sample [N], if not NULL, receives the unweighted
 * per-sample means (1/D) sum_i (pred - target)^2 (for logging). Deterministic: the sums do not
 * depend on the thread count. */
double dl_cpu_mse_loss_forward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                               const float *target, const float *weights, float *per_sample);

/* Gradient of the loss above times dloss (the upstream scalar gradient, 1 for the final loss):
 *   dpred[n,i] = dloss * w[n] * 2 (pred[n,i] - target[n,i]) / (N D),  dtarget = -dpred.
 * Each output overwritten; NULL skips it. dpred may alias pred. */
void dl_cpu_mse_loss_backward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                              const float *target, const float *weights, float dloss, float *dpred,
                              float *dtarget);

#ifdef __cplusplus
}
#endif
#endif
