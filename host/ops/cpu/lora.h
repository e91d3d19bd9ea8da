/* lora.h - LoRA adapters on frozen linear and conv layers (CPU reference, fp32): forward
 * y = W x + b + s B (A x), backward (dx, dA, dB; W and b are frozen) and in-place merge/unmerge
 * W +-= s B A. Linear and 1x1-conv LoRA share the linear entry points (a channels-last 1x1 conv
 * is a linear layer over the N*H*W pixel rows); kxk convs use LoCon (A a kxk conv Cin -> r with
 * the base conv's stride and padding, B a 1x1 conv r -> Cout). s = alpha / rank x multiplier. */
#ifndef DANLU_CPU_LORA_H
#define DANLU_CPU_LORA_H

#include "core/ctx.h"
#include "ops/cpu/conv2d.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Linear LoRA forward over M rows (tokens, or N*H*W pixels for a 1x1 conv):
 *   h = x A^T                    // [M, r]   saved for the backward (caller-owned)
 *   y = x W^T + b + s h B^T      // [M, out]
 * x [M, in], W [out, in] (a 1x1 conv weight [Cout, 1, 1, Cin] is the same memory),
 * b [out] or NULL, A [r, in], B [out, r]. y and h overwritten; neither may alias an input. */
void dl_cpu_lora_linear_forward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                float s, const float *x, const float *W, const float *b,
                                const float *A, const float *B, float *h, float *y);

/* Linear LoRA backward from dy [M, out], with x, W, A, B and the forward's h [M, r]:
 *   dh = s dy B            // [M, r]    into the caller's scratch dh (always computed)
 *   dB = s dy^T h          // [out, r]
 *   dA = dh^T x            // [r, in]
 *   dx = dy W + dh A       // [M, in]
 * dx, dA, dB overwritten (not accumulated); NULL skips one. No dW, db: the base is frozen. */
void dl_cpu_lora_linear_backward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                 float s, const float *x, const float *W, const float *A,
                                 const float *B, const float *h, const float *dy, float *dh,
                                 float *dx, float *dA, float *dB);

/* LoCon forward on a kxk conv with shape s (N, H, W, Cin, Cout, k, stride, padding of the
 * base conv; Ho, Wo = dl_conv2d_out_h/w(s)):
 *   h = conv(x, A)               // [N, Ho, Wo, r]  A [r, k, k, Cin], same stride and padding;
 *                                                   saved for the backward (caller-owned)
 *   y = conv(x, W) + b + s h B^T // [N, Ho, Wo, Cout]  W [Cout, k, k, Cin], b [Cout] or NULL,
 *                                                      B [Cout, r] (the 1x1 up conv)
 * x [N, H, W, Cin]. y and h overwritten; neither may alias an input. For k = 1, stride 1, no
 * padding, dl_cpu_lora_linear_forward with M = N*H*W is the same and cheaper. */
void dl_cpu_lora_conv_forward(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                              const float *x, const float *W, const float *b, const float *A,
                              const float *B, float *h, float *y);

/* LoCon backward from dy [N, Ho, Wo, Cout] with x, W, A, B and the forward's h:
 *   dh = s dy B                              // [N, Ho, Wo, r]  caller's scratch (always)
 *   dB = s dy^T h                            // [Cout, r]
 *   dA = conv weight-gradient of (x, dh)     // [r, k, k, Cin]
 *   dx = conv_transpose(dy, W) + conv_transpose(dh, A)   // [N, H, W, Cin]
 * dx, dA, dB overwritten; NULL skips one. dx_scratch [N, H, W, Cin] is needed only with dx. */
void dl_cpu_lora_conv_backward(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                               const float *x, const float *W, const float *A, const float *B,
                               const float *h, const float *dy, float *dh, float *dx_scratch,
                               float *dx, float *dA, float *dB);

/* The four above with the base weight W of type wdt (DL_F32, DL_F16, DL_BF16: frozen weights
 * kept in the checkpoint's type, converted exactly as they are read). */
void dl_cpu_lora_linear_forward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                  float s, const float *x, const void *W, dl_dtype wdt, const float *b,
                                  const float *A, const float *B, float *h, float *y);
void dl_cpu_lora_linear_backward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                   float s, const float *x, const void *W, dl_dtype wdt, const float *A,
                                   const float *B, const float *h, const float *dy, float *dh,
                                   float *dx, float *dA, float *dB);
void dl_cpu_lora_conv_forward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                                const float *x, const void *W, dl_dtype wdt, const float *b, const float *A,
                                const float *B, float *h, float *y);
void dl_cpu_lora_conv_backward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                                 const float *x, const void *W, dl_dtype wdt, const float *A, const float *B,
                                 const float *h, const float *dy, float *dh, float *dx_scratch,
                                 float *dx, float *dA, float *dB);

/* Merge into the base weight in place: W [out, K] += s * B [out, r] . A [r, K].
 * K = in for linear and 1x1 conv; K = k*k*Cin for a kxk LoCon (W [Cout, k, k, Cin] and
 * A [r, k, k, Cin] flattened): W[o, kh, kw, i] += s sum_r B[o, r] A[r, kh, kw, i]. */
void dl_cpu_lora_merge(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                       const float *A, const float *B, float *W);

/* Undo dl_cpu_lora_merge: W -= s * B . A (restores W up to fp32 rounding). */
void dl_cpu_lora_unmerge(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                         const float *A, const float *B, float *W);

#ifdef __cplusplus
}
#endif
#endif
