/* lora.c - LoRA forward, backward and merge for linear/1x1-conv layers and LoCon kxk convs
 * (CPU reference); the products run on dl_sgemm and the conv ops. */
#include "lora.h"

#include "conv2d.h"
#include "core/error.h"
#include "elementwise.h"
#include "gemm.h"

#include <string.h>

void dl_cpu_lora_linear_forward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                float s, const float *x, const float *W, const float *b,
                                const float *A, const float *B, float *h, float *y)
{
    dl_cpu_lora_linear_forward_t(ctx, M, in, out, r, s, x, W, DL_F32, b, A, B, h, y);
}

void dl_cpu_lora_linear_forward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                  float s, const float *x, const void *W, dl_dtype wdt, const float *b,
                                  const float *A, const float *B, float *h, float *y)
{
    DL_ASSERT(M >= 0 && in > 0 && out > 0 && r > 0);
    DL_ASSERT(x && W && A && B && h && y && y != x && h != x);
    if (M == 0) return;
    dl_sgemm(ctx, 0, 1, M, r, in, 1.0f, x, in, A, in, 0.0f, h, r);     // h = x A^T      [M, r]
    dl_sgemm_t(ctx, 0, 1, M, out, in, 1.0f, x, in, W, wdt, in, 0.0f, y, out); // y = x W^T [M, out]
    dl_sgemm(ctx, 0, 1, M, out, r, s, h, r, B, r, 1.0f, y, out);       // y += s h B^T   [M, out]
    if (b) dl_cpu_add_bcast_forward(ctx, 1, M, out, 0, y, b, y);       // y += b
}

void dl_cpu_lora_linear_backward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                 float s, const float *x, const float *W, const float *A,
                                 const float *B, const float *h, const float *dy, float *dh,
                                 float *dx, float *dA, float *dB)
{
    dl_cpu_lora_linear_backward_t(ctx, M, in, out, r, s, x, W, DL_F32, A, B, h, dy, dh, dx, dA, dB);
}

void dl_cpu_lora_linear_backward_t(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                   float s, const float *x, const void *W, dl_dtype wdt, const float *A,
                                   const float *B, const float *h, const float *dy, float *dh,
                                   float *dx, float *dA, float *dB)
{
    DL_ASSERT(M >= 0 && in > 0 && out > 0 && r > 0);
    DL_ASSERT(x && W && A && B && h && dy && dh);
    if (M == 0) { /* no rows: gradients of the parameters are zero */
        if (dA) memset(dA, 0, (size_t)(r * in) * sizeof *dA);
        if (dB) memset(dB, 0, (size_t)(out * r) * sizeof *dB);
        return;
    }
    dl_sgemm(ctx, 0, 0, M, r, out, s, dy, out, B, r, 0.0f, dh, r);            // dh = s dy B     [M, r]
    if (dB) dl_sgemm(ctx, 1, 0, out, r, M, s, dy, out, h, r, 0.0f, dB, r);    // dB = s dy^T h   [out, r]
    if (dA) dl_sgemm(ctx, 1, 0, r, in, M, 1.0f, dh, r, x, in, 0.0f, dA, in);  // dA = dh^T x     [r, in]
    if (dx) {
        dl_sgemm_t(ctx, 0, 0, M, in, out, 1.0f, dy, out, W, wdt, in, 0.0f, dx, in); // dx = dy W [M, in]
        dl_sgemm(ctx, 0, 0, M, in, r, 1.0f, dh, r, A, in, 1.0f, dx, in);     // dx += dh A
    }
}

/* The down conv: the base conv's geometry with r output channels. */
static dl_conv2d_shape down_shape(const dl_conv2d_shape *s, int64_t r)
{
    dl_conv2d_shape a = *s;
    a.Cout = (int)r;
    return a;
}

void dl_cpu_lora_conv_forward(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                              const float *x, const float *W, const float *b, const float *A,
                              const float *B, float *h, float *y)
{
    dl_cpu_lora_conv_forward_t(ctx, s, r, scale, x, W, DL_F32, b, A, B, h, y);
}

void dl_cpu_lora_conv_forward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                                const float *x, const void *W, dl_dtype wdt, const float *b, const float *A,
                                const float *B, float *h, float *y)
{
    DL_ASSERT(s && s->N >= 0 && s->Cin > 0 && s->Cout > 0 && s->k > 0 && r > 0 && r <= 1 << 20);
    DL_ASSERT(x && W && A && B && h && y && y != x && h != x && h != y);
    const int64_t M = (int64_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s), Cout = s->Cout;
    if (M == 0) return;
    const dl_conv2d_shape sa = down_shape(s, r);
    dl_cpu_conv2d_forward(ctx, &sa, x, A, NULL, h);                  // h = conv(x, A)     [N, Ho, Wo, r]
    dl_cpu_conv2d_forward_t(ctx, s, x, W, wdt, b, y);                // y = conv(x, W) + b [N, Ho, Wo, Cout]
    dl_sgemm(ctx, 0, 1, M, Cout, r, scale, h, r, B, r, 1.0f, y, Cout); // y += s h B^T
}

void dl_cpu_lora_conv_backward(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                               const float *x, const float *W, const float *A, const float *B,
                               const float *h, const float *dy, float *dh, float *dx_scratch,
                               float *dx, float *dA, float *dB)
{
    dl_cpu_lora_conv_backward_t(ctx, s, r, scale, x, W, DL_F32, A, B, h, dy, dh, dx_scratch, dx, dA, dB);
}

void dl_cpu_lora_conv_backward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                                 const float *x, const void *W, dl_dtype wdt, const float *A, const float *B,
                                 const float *h, const float *dy, float *dh, float *dx_scratch,
                                 float *dx, float *dA, float *dB)
{
    DL_ASSERT(s && s->N >= 0 && s->Cin > 0 && s->Cout > 0 && s->k > 0 && r > 0 && r <= 1 << 20);
    DL_ASSERT(x && W && A && B && h && dy && dh);
    DL_ASSERT(!dx || (dx_scratch && dx_scratch != dx));
    const int64_t M = (int64_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s), Cout = s->Cout;
    const int64_t kkc = (int64_t)s->k * s->k * s->Cin;
    if (M == 0) {
        if (dA) memset(dA, 0, (size_t)(r * kkc) * sizeof *dA);
        if (dB) memset(dB, 0, (size_t)(Cout * r) * sizeof *dB);
        if (dx) memset(dx, 0, (size_t)s->N * s->H * s->W * s->Cin * sizeof *dx);
        return;
    }
    const dl_conv2d_shape sa = down_shape(s, r);
    dl_sgemm(ctx, 0, 0, M, r, Cout, scale, dy, Cout, B, r, 0.0f, dh, r);         // dh = s dy B   [M, r]
    if (dB) dl_sgemm(ctx, 1, 0, Cout, r, M, scale, dy, Cout, h, r, 0.0f, dB, r); // dB = s dy^T h [Cout, r]
    if (dA || dx) dl_cpu_conv2d_backward(ctx, &sa, x, A, dh, dx ? dx_scratch : NULL, dA, NULL);
    if (dx) {
        dl_cpu_conv2d_backward_t(ctx, s, x, W, wdt, dy, dx, NULL, NULL); // base path [N, H, W, Cin]
        dl_cpu_axpy(ctx, (int64_t)s->N * s->H * s->W * s->Cin, 1.0f, dx_scratch, dx);
    }
}

void dl_cpu_lora_merge(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                       const float *A, const float *B, float *W)
{
    DL_ASSERT(out > 0 && K > 0 && r > 0 && A && B && W);
    dl_sgemm(ctx, 0, 0, out, K, r, s, B, r, A, K, 1.0f, W, K); // W += s B A   [out, K]
}

void dl_cpu_lora_unmerge(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                         const float *A, const float *B, float *W)
{
    dl_cpu_lora_merge(ctx, out, K, r, -s, A, B, W);
}
