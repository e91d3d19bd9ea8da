/* activation.c - pointwise activations and GEGLU, forward and backward (CPU reference). */
/* No FP-exception traps are assumed in this file, so GCC if-converts the clamps in dl_expf and
 * vectorises every loop here (with GCC's default -ftrapping-math it vectorises none; clang
 * assumes this by default). It changes no result. Must precede the includes so the inlined
 * helpers get it too. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "activation.h"

#include "core/error.h"
#include "simd.h"
#include "softmax.h" /* dl_expf */


#define ACT_GRAIN 16384

#define SQRT1_2 0.70710678118654752440f    /* 1/sqrt(2) */
#define INV_SQRT_2PI 0.39894228040143267794f /* 1/sqrt(2 pi) */
#define SQRT_2_PI 0.79788456080286535588f    /* sqrt(2/pi) */
#define GELU_TANH_C 0.044715f
#define QUICK_GELU_C 1.702f

const char *dl_act_name(dl_act act)
{
    switch (act) {
    case DL_ACT_GELU: return "gelu";
    case DL_ACT_GELU_TANH: return "gelu_tanh";
    case DL_ACT_QUICK_GELU: return "quick_gelu";
    case DL_ACT_SILU: return "silu";
    default: return "?";
    }
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + dl_expf(-x)); }

/* 1 + tanh(u) = 2e / (e + 1) and 1 - tanh(u) = 2 / (e + 1) with e = exp(2u), through the
 * branch-free exp: no cancellation in either tail, no overflow (e * q stays <= 2). */
static inline void tanh_pm(float u, float *one_plus, float *one_minus)
{
    float e = dl_expf(2.0f * u), q = 2.0f / (e + 1.0f);
    *one_plus = e * q;
    *one_minus = q;
}

/* Phi(x) = 0.5 erfc(-x / sqrt 2), the normal CDF, without libm so loops vectorise: erfc(|z|)
 * = t exp(-z^2 + P(t)), t = 1 / (1 + |z|/2), with the Chebyshev-fitted P of Numerical Recipes'
 * erfcc (relative error < 1.2e-7 for every z); erfc(-|z|) = 2 - erfc(|z|). Relative accuracy
 * holds in the far negative tail too, where 1 + erf(z) cancels. */
static inline float normal_cdf(float x)
{
    float z = x * SQRT1_2, az = z < 0 ? -z : z;
    float t = 1.0f / (1.0f + 0.5f * az);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float ec = t * dl_expf(p - az * az); /* erfc(|z|) */
    return z < 0 ? 0.5f * ec : 1.0f - 0.5f * ec;
}

static inline float gelu_erf(float x) { return x * normal_cdf(x); }

static inline float gelu_erf_grad(float x)
{
    return normal_cdf(x) + x * INV_SQRT_2PI * dl_expf(-0.5f * x * x);
}

typedef struct {
    dl_act act;
    int64_t D; /* GEGLU only */
    const float *x, *dy;
    float *y;
} act_job;

DL_SIMD_RANGE(act_fwd_range, arg, i0, i1, tid)
{
    const act_job *j = arg;
    const float *x = j->x;
    float *y = j->y;
    switch (j->act) {
    case DL_ACT_GELU:
        for (int64_t i = i0; i < i1; i++) y[i] = gelu_erf(x[i]);
        break;
    case DL_ACT_GELU_TANH:
        for (int64_t i = i0; i < i1; i++) {
            float v = x[i], tp, tm;
            tanh_pm(SQRT_2_PI * (v + GELU_TANH_C * v * v * v), &tp, &tm);
            y[i] = 0.5f * v * tp;
        }
        break;
    case DL_ACT_QUICK_GELU:
        for (int64_t i = i0; i < i1; i++) y[i] = x[i] * sigmoidf(QUICK_GELU_C * x[i]);
        break;
    case DL_ACT_SILU:
        for (int64_t i = i0; i < i1; i++) y[i] = x[i] * sigmoidf(x[i]);
        break;
    default: break;
    }
}

DL_SIMD_RANGE(act_bwd_range, arg, i0, i1, tid)
{
    const act_job *j = arg;
    const float *x = j->x, *dy = j->dy;
    float *dx = j->y;
    switch (j->act) {
    case DL_ACT_GELU:
        for (int64_t i = i0; i < i1; i++) dx[i] = dy[i] * gelu_erf_grad(x[i]);
        break;
    case DL_ACT_GELU_TANH:
        for (int64_t i = i0; i < i1; i++) {
            float v = x[i], v2 = v * v;
            float tp, tm; /* 1 + tanh, 1 - tanh */
            tanh_pm(SQRT_2_PI * (v + GELU_TANH_C * v2 * v), &tp, &tm);
            float du = SQRT_2_PI * (1.0f + 3.0f * GELU_TANH_C * v2);
            dx[i] = dy[i] * (0.5f * tp + 0.5f * v * (tp * tm) * du);
        }
        break;
    case DL_ACT_QUICK_GELU:
        for (int64_t i = i0; i < i1; i++) {
            float s = sigmoidf(QUICK_GELU_C * x[i]);
            dx[i] = dy[i] * (s + QUICK_GELU_C * x[i] * s * (1.0f - s));
        }
        break;
    case DL_ACT_SILU:
        for (int64_t i = i0; i < i1; i++) {
            float s = sigmoidf(x[i]);
            dx[i] = dy[i] * (s * (1.0f + x[i] * (1.0f - s)));
        }
        break;
    default: break;
    }
}

void dl_cpu_act_forward(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, float *y)
{
    DL_ASSERT(act >= 0 && act < DL_ACT_COUNT);
    DL_ASSERT(n >= 0 && (n == 0 || (x && y)));
    act_job j = {act, 0, x, NULL, y};
    dl_parallel_for(ctx ? ctx->pool : NULL, n, ACT_GRAIN, DL_SIMD_PICK(act_fwd_range), &j);
}

void dl_cpu_act_backward(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, const float *dy,
                         float *dx)
{
    DL_ASSERT(act >= 0 && act < DL_ACT_COUNT);
    DL_ASSERT(n >= 0 && (n == 0 || (x && dy && dx)));
    DL_ASSERT(n == 0 || dx != x);
    act_job j = {act, 0, x, dy, dx};
    dl_parallel_for(ctx ? ctx->pool : NULL, n, ACT_GRAIN, DL_SIMD_PICK(act_bwd_range), &j);
}

DL_SIMD_RANGE(geglu_fwd_rows, arg, m0, m1, tid)
{
    const act_job *j = arg;
    const int64_t D = j->D;
    for (int64_t m = m0; m < m1; m++) {
        const float *h = j->x + m * 2 * D; // [D] hidden
        const float *g = h + D;            // [D] gate
        float *y = j->y + m * D;           // [D]
        for (int64_t d = 0; d < D; d++) y[d] = h[d] * gelu_erf(g[d]);
    }
}

DL_SIMD_RANGE(geglu_bwd_rows, arg, m0, m1, tid)
{
    const act_job *j = arg;
    const int64_t D = j->D;
    for (int64_t m = m0; m < m1; m++) {
        const float *h = j->x + m * 2 * D; // [D] hidden
        const float *g = h + D;            // [D] gate
        const float *dy = j->dy + m * D;   // [D]
        float *dh = j->y + m * 2 * D;      // [D]
        float *dg = dh + D;                // [D]
        for (int64_t d = 0; d < D; d++) {
            dh[d] = dy[d] * gelu_erf(g[d]);
            dg[d] = dy[d] * h[d] * gelu_erf_grad(g[d]);
        }
    }
}

void dl_cpu_geglu_forward(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, float *y)
{
    DL_ASSERT(M >= 0 && D > 0 && x && y);
    DL_ASSERT(y + M * D <= x || x + M * 2 * D <= y); /* no aliasing */
    act_job j = {DL_ACT_GELU, D, x, NULL, y};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, (ACT_GRAIN + D - 1) / D, DL_SIMD_PICK(geglu_fwd_rows), &j);
}

void dl_cpu_geglu_backward(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, const float *dy,
                           float *dx)
{
    DL_ASSERT(M >= 0 && D > 0 && x && dy && dx);
    DL_ASSERT(dx != x && dx != dy);
    act_job j = {DL_ACT_GELU, D, x, dy, dx};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, (ACT_GRAIN + D - 1) / D, DL_SIMD_PICK(geglu_bwd_rows), &j);
}
