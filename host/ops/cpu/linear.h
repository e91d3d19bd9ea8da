/* linear.h - fully connected layer y = x · w^T + b on the CPU, forward and backward. */
#ifndef DANLU_CPU_LINEAR_H
#define DANLU_CPU_LINEAR_H

#include "core/ctx.h"
#include "core/dtype.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[M,out] = x[M,in] · w[out,in]^T + b[out] (b may be NULL). y is overwritten and must not
 * alias x or w. */
void dl_cpu_linear_forward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                           const float *x, const float *w, const float *b, float *y);

/* Gradients of linear_forward given dy[M,out]: dx[M,in] = dy · w, dw[out,in] = dy^T · x,
 * db[out] = sum over rows of dy. Each output is overwritten; a NULL output is skipped. */
void dl_cpu_linear_backward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                            const float *x, const float *w, const float *dy,
                            float *dx, float *dw, float *db);

/* The same with w of type wdt (DL_F32, DL_F16, DL_BF16: frozen weights kept in the
 * checkpoint's type, converted exactly as the GEMM packs them). dw needs wdt == DL_F32. */
void dl_cpu_linear_forward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                             const float *x, const void *w, dl_dtype wdt, const float *b, float *y);
void dl_cpu_linear_backward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out,
                              const float *x, const void *w, dl_dtype wdt, const float *dy,
                              float *dx, float *dw, float *db);

/* y[M, C] += b[C] on every row. */
void dl_cpu_bias_add(const dl_ctx *ctx, int64_t M, int64_t C, float *y, const float *b);

/* db[C] = sum over the M rows of dy[M, C] (shared by linear and conv2d backward). */
void dl_cpu_bias_grad(const dl_ctx *ctx, int64_t M, int64_t C, const float *dy, float *db);

#ifdef __cplusplus
}
#endif
#endif
