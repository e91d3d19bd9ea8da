/* layernorm.h - layer normalisation over the last dimension (CPU reference, fp32), forward
 * and backward. */
#ifndef DANLU_CPU_LAYERNORM_H
#define DANLU_CPU_LAYERNORM_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y = (x - mean) * rstd * gamma + beta per row of x [M, C]; rstd = 1/sqrt(var + eps) with the
 * biased variance (as torch.nn.LayerNorm). gamma, beta [C] (NULL: 1 and 0). Saves mean, rstd
 * [M] for the backward (either may be NULL when not needed). y may alias x. */
void dl_cpu_layernorm_forward(const dl_ctx *ctx, int64_t M, int64_t C, float eps,
                              const float *x, const float *gamma, const float *beta,
                              float *y, float *mean, float *rstd);

/* Gradients of the forward above from x, gamma (NULL: 1), the saved mean/rstd [M] and dy
 * [M, C]: dx [M, C], dgamma [C], dbeta [C], each overwritten; a NULL output is skipped. */
void dl_cpu_layernorm_backward(const dl_ctx *ctx, int64_t M, int64_t C, const float *x,
                               const float *gamma, const float *mean, const float *rstd,
                               const float *dy, float *dx, float *dgamma, float *dbeta);

#ifdef __cplusplus
}
#endif
#endif
