/* elementwise.h - add, scale, axpy, broadcast add of per-channel / per-sample vectors, and
 * channel concat/split of channels-last tensors (CPU reference, fp32), forward and backward. */
#ifndef DANLU_CPU_ELEMENTWISE_H
#define DANLU_CPU_ELEMENTWISE_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[i] = a[i] + b[i] for i in [0, n); y may alias a or b. The backward of add is the identity
 * (da = db = dy): callers pass dy on, or accumulate it with dl_cpu_axpy. */
void dl_cpu_add_forward(const dl_ctx *ctx, int64_t n, const float *a, const float *b, float *y);

/* y[i] = alpha * x[i]; y may alias x. Its backward is the same call: dx = alpha * dy. */
void dl_cpu_scale_forward(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y);

/* y[i] += alpha * x[i] (gradient accumulation, residual branches); x must not alias y. */
void dl_cpu_axpy(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y);

/* Broadcast add over a channels-last tensor x [N, HW, C]:
 *   per_sample == 0: y[n, p, c] = x[n, p, c] + v[c]      (v [C], e.g. a bias)
 *   per_sample != 0: y[n, p, c] = x[n, p, c] + v[n, c]   (v [N, C], e.g. the time embedding
 *                                                          injected into a resnet)
 * y [N, HW, C] may alias x. */
void dl_cpu_add_bcast_forward(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                              const float *x, const float *v, float *y);

/* Gradient of the broadcast add from dy [N, HW, C]: dx = dy (copied; skipped when dx is NULL
 * or dx == dy), dv = sum of dy over the broadcast axes: [C] (sum over n, p) when per_sample is
 * 0, [N, C] (sum over p) otherwise. dv overwritten; NULL skips it. Sums are deterministic
 * (independent of the thread count). */
void dl_cpu_add_bcast_backward(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                               const float *dy, float *dx, float *dv);

/* Channel concat of two channels-last tensors with M = N*H*W rows:
 * a [M, C1] and b [M, C2] -> y [M, C1 + C2] (a first, as torch.cat([a, b], dim=1) in NCHW).
 * y must not alias a or b. */
void dl_cpu_concat_channels_forward(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                    const float *a, const float *b, float *y);

/* Its backward, a split: dy [M, C1 + C2] -> da [M, C1], db [M, C2]; each overwritten, NULL
 * skips it. */
void dl_cpu_concat_channels_backward(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                     const float *dy, float *da, float *db);

#ifdef __cplusplus
}
#endif
#endif
