/* upsample.h - nearest-neighbour 2x upsampling of channels-last images (CPU reference, fp32),
 * forward and backward. */
#ifndef DANLU_CPU_UPSAMPLE_H
#define DANLU_CPU_UPSAMPLE_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[n, oh, ow, c] = x[n, oh / 2, ow / 2, c] (F.interpolate(scale_factor=2, mode="nearest")):
 * x [N, H, W, C] -> y [N, 2H, 2W, C]. y must not alias x. */
void dl_cpu_upsample_nearest2x_forward(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                       int64_t C, const float *x, float *y);

/* dx [N, H, W, C] = sum of dy [N, 2H, 2W, C] over each 2x2 block it was copied to;
 * dx overwritten. */
void dl_cpu_upsample_nearest2x_backward(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                        int64_t C, const float *dy, float *dx);

#ifdef __cplusplus
}
#endif
#endif
