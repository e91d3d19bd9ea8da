/* softmax.h - softmax over the last dimension (CPU reference, fp32), forward and backward;
 * also the branch-free exp the CPU norm/attention ops share. */
#ifndef DANLU_CPU_SOFTMAX_H
#define DANLU_CPU_SOFTMAX_H

#include "core/ctx.h"

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* exp(x) in fp32 without branches or libm calls, so loops calling it vectorise: Cody-Waite
 * reduction x = k ln2 + r, degree-7 Taylor polynomial for e^r, 2^k by exponent bits.
 * Relative error < 1e-7 on [-87.3, 88.3]; x < -87.3 (including -inf) gives 0, x > 88.3 gives
 * e^88.3. NaN in gives an unspecified value. The range tests compare the bit patterns as
 * integers: float compares may trap (-ftrapping-math), which stops GCC from if-converting
 * them, and with them the whole loop from vectorising. */
static inline float dl_expf(float x)
{
    uint32_t bx;
    memcpy(&bx, &x, sizeof bx);
    const uint32_t under = -(uint32_t)(bx > 0xC2AE999Au);                  /* x < -87.3f */
    const uint32_t over = -(uint32_t)((int32_t)bx > (int32_t)0x42B0999A);  /* x > 88.3f */
    const uint32_t bc = (bx & ~under & ~over) | (0xC2AE999Au & under) | (0x42B0999Au & over);
    float xc;
    memcpy(&xc, &bc, sizeof xc);
    float k = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f; /* round to nearest */
    float r = xc - k * 0.693145751953125f;
    r = r - k * 1.428606765330187045e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t two_k = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &two_k, sizeof scale);
    float e = p * scale;
    uint32_t be;
    memcpy(&be, &e, sizeof be);
    be &= ~under;
    memcpy(&e, &be, sizeof e);
    return e;
}

/* y[m, :] = softmax(x[m, :]) for rows m in [0, M), C columns; x, y: [M, C] contiguous (y may
 * alias x). -inf entries give 0; a row of all -inf gives NaN (as PyTorch). */
void dl_cpu_softmax_forward(const dl_ctx *ctx, int64_t M, int64_t C, const float *x, float *y);

/* dx = y * (dy - sum(y * dy)) per row, from the forward output y and the gradient dy, all
 * [M, C]; dx overwritten (may alias dy). */
void dl_cpu_softmax_backward(const dl_ctx *ctx, int64_t M, int64_t C, const float *y,
                             const float *dy, float *dx);

#ifdef __cplusplus
}
#endif
#endif
