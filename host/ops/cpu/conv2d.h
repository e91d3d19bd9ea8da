/* conv2d.h - 2-D convolution on channels-last activations (CPU), forward and backward. */
#ifndef DANLU_CPU_CONV2D_H
#define DANLU_CPU_CONV2D_H

#include "core/ctx.h"
#include "core/dtype.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x [N, H, W, Cin], w [Cout, k, k, Cin], y [N, Ho, Wo, Cout]. Padding may be asymmetric
 * (the SD VAE encoder's downsample pads (left 0, right 1, top 0, bottom 1) then runs k3 s2 p0). */
typedef struct dl_conv2d_shape {
    int N, H, W, Cin, Cout;
    int k, stride;
    int pad_top, pad_left, pad_bottom, pad_right;
} dl_conv2d_shape;

/* A shape with the same padding on every side (PyTorch's Conv2d(padding=pad)). */
static inline dl_conv2d_shape dl_conv2d_shape_make(int N, int H, int W, int Cin, int Cout, int k,
                                                   int stride, int pad)
{
    dl_conv2d_shape s = {N, H, W, Cin, Cout, k, stride, pad, pad, pad, pad};
    return s;
}

/* Output height and width: (H + pad_top + pad_bottom - k) / stride + 1, and likewise. */
static inline int dl_conv2d_out_h(const dl_conv2d_shape *s)
{
    return (s->H + s->pad_top + s->pad_bottom - s->k) / s->stride + 1;
}
static inline int dl_conv2d_out_w(const dl_conv2d_shape *s)
{
    return (s->W + s->pad_left + s->pad_right - s->k) / s->stride + 1;
}

/* y = conv(x, w) + b (b [Cout] may be NULL); y is overwritten. Implicit GEMM: im2col rows are
 * packed on the fly into per-thread strips feeding the sgemm micro-kernel; 1x1 stride-1
 * unpadded convolutions are a plain GEMM. Aborts on an invalid shape (DL_ASSERT). */
void dl_cpu_conv2d_forward(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                           const float *w, const float *b, float *y);

/* Gradients of conv2d_forward given dy [N, Ho, Wo, Cout]: dx [N, H, W, Cin], dw [Cout, k, k, Cin],
 * db [Cout]; each overwritten, NULL skipped. dx is a gather-form transposed convolution split
 * by stride phase (no wasted multiplications at stride 2), reading the weights in place; dw is
 * col^T · dy (transposed into place) or, with few pixels, dy^T · col. Scratch comes from the
 * ctx workspace (slots DL_WS_CONV_DX, DL_WS_CONV_DW; the gemm it calls uses its own). */
void dl_cpu_conv2d_backward(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                            const float *w, const float *dy, float *dx, float *dw, float *db);

/* The same with w of type wdt (DL_F32, DL_F16, DL_BF16: frozen weights kept in the
 * checkpoint's type, each value converted exactly where it is read). dw is fp32. */
void dl_cpu_conv2d_forward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                             const void *w, dl_dtype wdt, const float *b, float *y);
void dl_cpu_conv2d_backward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                              const void *w, dl_dtype wdt, const float *dy, float *dx, float *dw, float *db);

#ifdef __cplusplus
}
#endif
#endif
