/* groupnorm.h - group normalisation on channels-last activations with optional fused SiLU
 * (CPU reference, fp32), forward and backward. */
#ifndef DANLU_CPU_GROUPNORM_H
#define DANLU_CPU_GROUPNORM_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x is [N, HW, C] (channels-last [N, H, W, C] with HW = H*W); G groups of C/G contiguous
 * channels; silu != 0 fuses y = silu(groupnorm(x)). */
typedef struct dl_groupnorm_shape {
    int N, HW, C, G;
    float eps;
    int silu;
} dl_groupnorm_shape;

/* y = [silu](((x - mean[n,g]) * rstd[n,g]) * gamma[c] + beta[c]), statistics over the HW * C/G
 * values of each (sample, group), biased variance, rstd = 1/sqrt(var + eps) (torch GroupNorm).
 * x, y: [N, HW, C] (y may alias x); gamma, beta: [C] (NULL: 1 and 0); saves mean, rstd
 * [N, G] for the backward (NULL: not saved). Requires C % G == 0. Deterministic: the result
 * does not depend on the number of threads. */
void dl_cpu_groupnorm_forward(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                              const float *gamma, const float *beta, float *y,
                              float *mean, float *rstd);

/* Gradients of the forward above from x, gamma, beta (beta is needed only with silu, to
 * recompute the pre-activation), the saved mean, rstd [N, G] and dy [N, HW, C]:
 * dx [N, HW, C], dgamma [C], dbeta [C], each overwritten; a NULL output is skipped. dx may
 * alias dy or x. */
void dl_cpu_groupnorm_backward(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                               const float *gamma, const float *beta, const float *mean,
                               const float *rstd, const float *dy, float *dx,
                               float *dgamma, float *dbeta);

#ifdef __cplusplus
}
#endif
#endif
