/* conv_winograd.h - Winograd forward convolution on the CPU for 3x3 stride-1 kernels
 * (channels-last activations), used by dl_cpu_conv2d_forward where it pays.
 *
 * F(m x m, 3 x 3): each m x m output tile is A^T [ (G g G^T) .* (B^T d B) ] A over an
 * (m+2)^2 input patch d, so the per-tile channel contraction is (m+2)^2 independent GEMMs
 * (tiles x Cin times Cin x Cout) instead of 9 m^2 multiplications per (Cin, Cout) pair:
 * 2.25x fewer for m = 2, 4x fewer for m = 4. Weights are transformed once per call (converted
 * from f32, f16 or bf16 as they are read) into the workspace; the image is walked in items of
 * (a block of Cout, a block of tiles), each item on one thread with its transformed inputs and
 * products in that thread's workspace (L2-sized), so nothing image-sized is materialised and
 * the result does not depend on the thread count.
 *
 * Which: F(4x4) wherever its cost (fitted per tile and per call on bench_winograd, Zen 4) is
 * below F(2x2)'s, which is every VAE shape and the UNet's 64x64 and 32x32 levels; F(2x2) on
 * small images with many channels (the UNet's 16x16 level at 256x256), where F(4x4)'s
 * 36-element weight transform is not paid back by the few tiles; the direct convolution where
 * neither pays (the 1280-channel 8x8 and 4x4 levels: the weights outnumber the pixels).
 *
 * Rounding differs from the direct (implicit GEMM) convolution. Relative L2 error against a
 * float64 convolution (uniform inputs, bench_winograd and tests/test_conv_winograd.c): direct
 * ~2e-7; F(2x2) 1e-7..6e-7; F(4x4) 3e-7..4e-6, growing with Cin (512 channels: 3-4e-6).
 * Policy (dl_cpu_conv2d_use_winograd): ctx->conv_algo, or when that is DL_CONV_AUTO the
 * environment variable DANLU_CONV=direct|winograd, else the shape: 3x3, stride 1, pads 0 or 1,
 * Cin and Cout >= 32 and a modelled cost below 0.85x the direct one. The training walkers
 * (model/graph.c) run on a ctx copy set to direct: training forwards feed gradients checked
 * against PEFT and finite differences at tight bounds, so Winograd serves inference only
 * (sampling's UNet and VAE, VAE encoding, the trainer's sample images). Every golden test of
 * the VAE, UNet and sampler also passes with DANLU_CONV=winograd. */
#ifndef DANLU_CPU_CONV_WINOGRAD_H
#define DANLU_CPU_CONV_WINOGRAD_H

#include "conv2d.h"
#include "core/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when the shape can run as Winograd: k 3, stride 1, every pad 0 or 1. */
int dl_cpu_conv2d_winograd_ok(const dl_conv2d_shape *s);

/* The output tile size m (2 or 4) the shape runs with. */
int dl_cpu_conv2d_winograd_tile(const dl_conv2d_shape *s);

/* 1 when dl_cpu_conv2d_forward takes the Winograd path for s under ctx (the policy above). */
int dl_cpu_conv2d_use_winograd(const dl_ctx *ctx, const dl_conv2d_shape *s);

/* y = conv(x, w) + b as conv2d_forward (x [N, H, W, Cin], w [Cout, 3, 3, Cin] of dtype wdt:
 * DL_F32, DL_F16 or DL_BF16, b [Cout] f32 or NULL, y [N, Ho, Wo, Cout] overwritten), with the
 * tile size of dl_cpu_conv2d_winograd_tile. Aborts unless dl_cpu_conv2d_winograd_ok(s).
 * Scratch: workspace slot DL_WS_CONV_WINO (transformed weights) and the thread buffers. */
void dl_cpu_conv2d_winograd(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x, const void *w,
                            dl_dtype wdt, const float *b, float *y);

/* The same with the tile size m (2 or 4) given (tests and benchmarks). */
void dl_cpu_conv2d_winograd_m(const dl_ctx *ctx, const dl_conv2d_shape *s, int m, const float *x,
                              const void *w, dl_dtype wdt, const float *b, float *y);

#ifdef __cplusplus
}
#endif
#endif
