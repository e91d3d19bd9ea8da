/* conv_blocks.h - the small convolutional blocks of the UNet and the VAE, each with the one
 * forward/backward pair inference and training share:
 *   upsampler     y [N, 2H, 2W, C] = conv k3 p1 (nearest2x (x [N, H, W, C]))     (upsamplers.0)
 *   output head   y = conv(SiLU(GroupNorm(x)))                    (conv_norm_out + conv_out)
 * conv_in and the downsampler (k3 s2) are plain convs (module.h: dl_conv_fwd, dl_conv_bwd). */
#ifndef DANLU_MODEL_CONV_BLOCKS_H
#define DANLU_MODEL_CONV_BLOCKS_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/module.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The forwards return their saved allocation from `save` (what the backward reads);
 * temporaries from scratch, released. The backwards overwrite dx (NULL: not wanted) and
 * accumulate LoRA gradients. */
float *dl_upsample_forward(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x, float *y,
                           dl_arena *save, dl_arena *scratch);
void dl_upsample_backward(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *saved,
                          const float *dy, float *dx, dl_arena *scratch);

/* y [N, H, W, conv->cout] = conv(SiLU(GN(x [N, H, W, norm->C]))). */
float *dl_head_forward(const dl_ctx *ctx, const dl_norm *norm, const dl_conv *conv, int N, int H, int W,
                       const float *x, float *y, dl_arena *save, dl_arena *scratch);
void dl_head_backward(const dl_ctx *ctx, const dl_norm *norm, const dl_conv *conv, int N, int H, int W,
                      const float *x, const float *saved, const float *dy, float *dx, dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
