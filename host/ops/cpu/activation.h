/* activation.h - pointwise activations (GELU erf/tanh, quick-GELU, SiLU) and GEGLU (CPU
 * reference, fp32), forward and backward. */
#ifndef DANLU_CPU_ACTIVATION_H
#define DANLU_CPU_ACTIVATION_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DL_ACT_GELU = 0,   /* x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))  (F.gelu, approximate="none") */
    DL_ACT_GELU_TANH,  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (approximate="tanh") */
    DL_ACT_QUICK_GELU, /* x * sigmoid(1.702 x)  (CLIP ViT-L/14 text encoder) */
    DL_ACT_SILU,       /* x * sigmoid(x)  (resnets, time embedding) */
    DL_ACT_COUNT
} dl_act;

/* The name ("gelu", "gelu_tanh", "quick_gelu", "silu"). */
const char *dl_act_name(dl_act act);

/* y[i] = act(x[i]) for i in [0, n); y may alias x. */
void dl_cpu_act_forward(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, float *y);

/* dx[i] = act'(x[i]) * dy[i] from the forward input x; dx overwritten (may alias dy, not x). */
void dl_cpu_act_backward(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, const float *dy,
                         float *dx);

/* GEGLU as diffusers' GEGLU after its projection: x [M, 2D] is split along the last dimension
 * into hidden = x[:, :D] (first half) and gate = x[:, D:] (second half);
 * y [M, D] = hidden * gelu(gate) with the exact (erf) GELU. y must not alias x. */
void dl_cpu_geglu_forward(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, float *y);

/* Gradient of GEGLU: dx [M, 2D] overwritten from x [M, 2D] and dy [M, D]:
 * dhidden = dy * gelu(gate), dgate = dy * hidden * gelu'(gate). dx must not alias x or dy. */
void dl_cpu_geglu_backward(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, const float *dy,
                           float *dx);

#ifdef __cplusplus
}
#endif
#endif
