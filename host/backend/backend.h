/* backend.h - the op interface: one table of function pointers (forward and backward of every
 * op the networks, training and sampling use) that each backend implements once.
 *
 * Model code is written against this table only: it calls dl_be(ctx)->op(ctx, ...) and never a
 * backend's functions by name, so the backend that runs a network is chosen by the ctx it is
 * given (dl_ctx_init_backend). Every entry has exactly the signature, argument meaning, layout
 * and overwrite/alias rules of the CPU reference op of the same name (host/ops/cpu/<family>.h,
 * dl_cpu_<op>): those headers are the contract of each entry. A backend with device_memory set
 * takes and returns pointers to its own memory; the CPU backend uses host memory.
 *
 * The shape and parameter types (dl_act, dl_attention_shape, dl_conv2d_shape,
 * dl_groupnorm_shape, dl_adamw_hparams) are declared with the CPU reference ops, whose headers
 * are included below (backend_cpu.c fills the table from them). */
#ifndef DANLU_BACKEND_H
#define DANLU_BACKEND_H

#include "core/ctx.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/adamw.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/groupnorm.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/linear.h"
#include "ops/cpu/lora.h"
#include "ops/cpu/loss.h"
#include "ops/cpu/softmax.h"
#include "ops/cpu/upsample.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_backend {
    const char *name;  /* "cpu", "cuda" */
    int device_memory; /* nonzero: tensors live in the backend's own memory, not host memory */

    /* linear.h: y[M,out] = x[M,in] w^T + b; gradients dx, dw, db */
    void (*linear_forward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, const float *x,
                           const float *w, const float *b, float *y);
    void (*linear_backward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, const float *x,
                            const float *w, const float *dy, float *dx, float *dw, float *db);

    /* conv2d.h: channels-last convolution x [N,H,W,Cin] * w [Cout,k,k,Cin] -> y [N,Ho,Wo,Cout] */
    void (*conv2d_forward)(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                           const float *w, const float *b, float *y);
    void (*conv2d_backward)(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                            const float *w, const float *dy, float *dx, float *dw, float *db);

    /* groupnorm.h: x [N,HW,C], G groups, optional fused SiLU; saves mean, rstd [N,G] */
    void (*groupnorm_forward)(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                              const float *gamma, const float *beta, float *y, float *mean,
                              float *rstd);
    void (*groupnorm_backward)(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                               const float *gamma, const float *beta, const float *mean,
                               const float *rstd, const float *dy, float *dx, float *dgamma,
                               float *dbeta);

    /* layernorm.h: rows of x [M,C]; saves mean, rstd [M] */
    void (*layernorm_forward)(const dl_ctx *ctx, int64_t M, int64_t C, float eps, const float *x,
                              const float *gamma, const float *beta, float *y, float *mean,
                              float *rstd);
    void (*layernorm_backward)(const dl_ctx *ctx, int64_t M, int64_t C, const float *x,
                               const float *gamma, const float *mean, const float *rstd,
                               const float *dy, float *dx, float *dgamma, float *dbeta);

    /* attention.h: q [N,Tq,H*d], k, v [N,Tk,H*d] -> o [N,Tq,H*d], lse [N,H,Tq] */
    void (*attention_forward)(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                              const float *k, const float *v, float *o, float *lse);
    void (*attention_backward)(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                               const float *k, const float *v, const float *o, const float *lse,
                               const float *dout, float *dq, float *dk, float *dv);

    /* activation.h: pointwise activations over n values; GEGLU x [M,2D] -> y [M,D] */
    void (*act_forward)(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, float *y);
    void (*act_backward)(const dl_ctx *ctx, dl_act act, int64_t n, const float *x,
                         const float *dy, float *dx);
    void (*geglu_forward)(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, float *y);
    void (*geglu_backward)(const dl_ctx *ctx, int64_t M, int64_t D, const float *x,
                           const float *dy, float *dx);

    /* elementwise.h: add, scale, axpy, broadcast add, channel concat / split */
    void (*add_forward)(const dl_ctx *ctx, int64_t n, const float *a, const float *b, float *y);
    void (*scale_forward)(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y);
    void (*axpy)(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y);
    void (*add_bcast_forward)(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                              const float *x, const float *v, float *y);
    void (*add_bcast_backward)(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C,
                               int per_sample, const float *dy, float *dx, float *dv);
    void (*concat_channels_forward)(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                    const float *a, const float *b, float *y);
    void (*concat_channels_backward)(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                     const float *dy, float *da, float *db);

    /* upsample.h: nearest 2x, x [N,H,W,C] -> y [N,2H,2W,C] */
    void (*upsample_nearest2x_forward)(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                       int64_t C, const float *x, float *y);
    void (*upsample_nearest2x_backward)(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                        int64_t C, const float *dy, float *dx);

    /* embedding.h: sinusoidal timestep embedding t [N] -> out [N,dim] (no backward) */
    void (*timestep_embedding)(const dl_ctx *ctx, int64_t N, int64_t dim, const float *t,
                               int flip_sin_to_cos, float downscale_freq_shift, float scale,
                               float max_period, float *out);

    /* loss.h: (weighted) MSE over pred, target [N,D]; the loss is returned to the host */
    double (*mse_loss_forward)(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                               const float *target, const float *weights, float *per_sample);
    void (*mse_loss_backward)(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                              const float *target, const float *weights, float dloss,
                              float *dpred, float *dtarget);

    /* adamw.h: one AdamW step over n contiguous parameters; squared norm for clipping */
    void (*adamw_step)(const dl_ctx *ctx, int64_t n, const dl_adamw_hparams *hp, int64_t step,
                       float *p, const float *g, float *m, float *v);
    double (*sumsq)(const dl_ctx *ctx, int64_t n, const float *x);

    /* lora.h: LoRA on a frozen linear / kxk conv (LoCon), and merge / unmerge into W */
    void (*lora_linear_forward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                float s, const float *x, const float *W, const float *b,
                                const float *A, const float *B, float *h, float *y);
    void (*lora_linear_backward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                 float s, const float *x, const float *W, const float *A,
                                 const float *B, const float *h, const float *dy, float *dh,
                                 float *dx, float *dA, float *dB);
    void (*lora_conv_forward)(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                              const float *x, const float *W, const float *b, const float *A,
                              const float *B, float *h, float *y);
    void (*lora_conv_backward)(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                               const float *x, const float *W, const float *A, const float *B,
                               const float *h, const float *dy, float *dh, float *dx_scratch,
                               float *dx, float *dA, float *dB);
    void (*lora_merge)(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                       const float *A, const float *B, float *W);
    void (*lora_unmerge)(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                         const float *A, const float *B, float *W);
} dl_backend;

/* The CPU reference backend (backend_cpu.c): every entry is the dl_cpu_ op of the same name. */
extern const dl_backend dl_backend_cpu;

/* The backend named `name` ("cpu", "cuda"), or NULL with dl_error_set naming the backend and
 * why it cannot be used (unknown name, no CUDA in this build, or not yet wired). */
const dl_backend *dl_backend_find(const char *name);

/* dl_be(ctx), the table that runs ops on ctx (CPU when ctx or ctx->be is NULL), is declared
 * in core/ctx.h. */

#ifdef __cplusplus
}
#endif
#endif
