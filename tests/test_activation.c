/* test_activation.c - GELU (erf/tanh), quick-GELU, SiLU and GEGLU against PyTorch float64
 * golden data (tests/gen/gen_activation.py) and float64 finite differences. */
#include "ops/cpu/activation.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TOL
#define TOL 1e-5 /* fp32 vs float64 (override with -DTOL to see the errors reached) */
#endif

static const char *const SHAPES[] = {"odd", "sd", "one"};

static void golden_act(dl_act act)
{
    dl_st_file f;
    tu_golden_open(&f, "activation");
    for (size_t s = 0; s < sizeof SHAPES / sizeof *SHAPES; s++) {
        char key[128], label[128];
        int64_t n;
#define G(t) (snprintf(key, sizeof key, "%s_%s.%s", dl_act_name(act), SHAPES[s], t), key)
        float *x = tu_golden_f32(&f, G("x"), &n);
        float *dy = tu_golden_f32(&f, G("dy"), NULL);
        float *yref = tu_golden_f32(&f, G("y"), NULL);
        float *dxref = tu_golden_f32(&f, G("dx"), NULL);
#undef G
        float *y = tu_alloc_nan((size_t)n), *dx = tu_alloc_nan((size_t)n);
        dl_cpu_act_forward(tu_ctx(), act, n, x, y);
        dl_cpu_act_backward(tu_ctx(), act, n, x, dy, dx);
        snprintf(label, sizeof label, "%s %s forward", dl_act_name(act), SHAPES[s]);
        tu_expect_close(y, yref, (size_t)n, TOL, label);
        snprintf(label, sizeof label, "%s %s backward", dl_act_name(act), SHAPES[s]);
        tu_expect_close(dx, dxref, (size_t)n, TOL, label);
        /* in place: y aliasing x */
        dl_cpu_act_forward(tu_ctx(), act, n, x, x);
        snprintf(label, sizeof label, "%s %s forward in place", dl_act_name(act), SHAPES[s]);
        tu_expect_close(x, yref, (size_t)n, TOL, label);
        free(x), free(dy), free(yref), free(dxref), free(y), free(dx);
    }
    dl_st_close(&f);
}

Test(activation, golden_gelu) { golden_act(DL_ACT_GELU); }
Test(activation, golden_gelu_tanh) { golden_act(DL_ACT_GELU_TANH); }
Test(activation, golden_quick_gelu) { golden_act(DL_ACT_QUICK_GELU); }
Test(activation, golden_silu) { golden_act(DL_ACT_SILU); }

Test(activation, golden_geglu)
{
    static const struct { const char *name; int64_t M, D; } cases[] = {
        {"geglu_odd", 154, 40}, {"geglu_tiny", 3, 13}, {"geglu_sd", 64, 160}};
    dl_st_file f;
    tu_golden_open(&f, "activation");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128];
        int64_t M = cases[c].M, D = cases[c].D, sx[2] = {M, 2 * D}, sy[2] = {M, D};
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *x = tu_golden_f32_shape(&f, G("x"), 2, sx);
        float *dy = tu_golden_f32_shape(&f, G("dy"), 2, sy);
        float *yref = tu_golden_f32_shape(&f, G("y"), 2, sy);
        float *dxref = tu_golden_f32_shape(&f, G("dx"), 2, sx);
#undef G
        float *y = tu_alloc_nan((size_t)(M * D)), *dx = tu_alloc_nan((size_t)(M * 2 * D));
        dl_cpu_geglu_forward(tu_ctx(), M, D, x, y);
        dl_cpu_geglu_backward(tu_ctx(), M, D, x, dy, dx);
        tu_expect_close(y, yref, (size_t)(M * D), TOL, cases[c].name);
        tu_expect_close(dx, dxref, (size_t)(M * 2 * D), TOL, cases[c].name);
        free(x), free(dy), free(yref), free(dxref), free(y), free(dx);
    }
    dl_st_close(&f);
}

/* ---- finite differences against float64 references ---- */

static double act_ref(dl_act act, double x)
{
    switch (act) {
    case DL_ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case DL_ACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case DL_ACT_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    case DL_ACT_SILU: return x / (1 + exp(-x));
    default: return NAN;
    }
}

typedef struct { dl_act act; int64_t n, D; const double *dy; } fd_user;

/* L(x) = sum_i dy_i act(x_i) */
static double act_loss(void *u, const double *x)
{
    const fd_user *p = u;
    double L = 0;
    for (int64_t i = 0; i < p->n; i++) L += p->dy[i] * act_ref(p->act, x[i]);
    return L;
}

/* L(x) = sum_{m,d} dy[m,d] hidden[m,d] gelu(gate[m,d]) */
static double geglu_loss(void *u, const double *x)
{
    const fd_user *p = u;
    double L = 0;
    int64_t M = p->n / (2 * p->D);
    for (int64_t m = 0; m < M; m++)
        for (int64_t d = 0; d < p->D; d++)
            L += p->dy[m * p->D + d] * x[m * 2 * p->D + d] * act_ref(DL_ACT_GELU, x[m * 2 * p->D + p->D + d]);
    return L;
}

Test(activation, finite_differences)
{
    enum { N = 23 };
    float x[N], dy[N], dx[N];
    double xd[N], dyd[N], g[N];
    for (int a = 0; a < DL_ACT_COUNT; a++) {
        tu_fill_uniform(x, N, 11 + a, -5.0f, 5.0f);
        tu_fill_uniform(dy, N, 31 + a, -1.0f, 1.0f);
        for (int i = 0; i < N; i++) xd[i] = x[i], dyd[i] = dy[i];
        fd_user u = {(dl_act)a, N, 0, dyd};
        tu_fd_grad(act_loss, &u, xd, N, 1e-5, g);
        dl_cpu_act_backward(tu_ctx(), (dl_act)a, N, x, dy, dx);
        char label[64];
        snprintf(label, sizeof label, "%s backward vs finite differences", dl_act_name((dl_act)a));
        tu_expect_close_d(dx, g, N, TOL, label);
    }
    /* GEGLU: M = 3, D = 5 */
    enum { M = 3, D = 5 };
    float gx[M * 2 * D], gdy[M * D], gdx[M * 2 * D];
    double gxd[M * 2 * D], gdyd[M * D], gg[M * 2 * D];
    tu_fill_uniform(gx, M * 2 * D, 5, -3.0f, 3.0f);
    tu_fill_uniform(gdy, M * D, 6, -1.0f, 1.0f);
    for (int i = 0; i < M * 2 * D; i++) gxd[i] = gx[i];
    for (int i = 0; i < M * D; i++) gdyd[i] = gdy[i];
    fd_user u = {DL_ACT_GELU, M * 2 * D, D, gdyd};
    tu_fd_grad(geglu_loss, &u, gxd, M * 2 * D, 1e-5, gg);
    dl_cpu_geglu_backward(tu_ctx(), M, D, gx, gdy, gdx);
    tu_expect_close_d(gdx, gg, M * 2 * D, TOL, "geglu backward vs finite differences");
}

/* ---- extreme inputs of the erf-based GELU (GELU and GEGLU share normal_cdf) ---- */

static double gelu_ref(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double gelu_grad_ref(double x)
{
    return 0.5 * erfc(-x / sqrt(2.0)) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}
/* |Phi(x)| + |x pdf(x)|: the size of the two terms of gelu'(x), which cancel near x = -0.75
 * (gelu's minimum); errors are relative to this, not to their sum. */
static double gelu_grad_scale(double x)
{
    return 0.5 * erfc(-x / sqrt(2.0)) + fabs(x) * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

/* Pointwise: |got - ref| <= rtol scale + atol, scale = |ref| when NULL. Elementwise (not L2)
 * so that the far negative tail, where y and y' are tiny, is held to a relative bound too. */
static void expect_pointwise(const float *got, const double *ref, const double *scale,
                             const float *x, int n, double rtol, double atol, const char *label)
{
    double worst = 0;
    int iw = -1;
    for (int i = 0; i < n; i++) {
        double sc = scale ? scale[i] : fabs(ref[i]);
        double e = fabs((double)got[i] - ref[i]) / (rtol * sc + atol);
        if (!(e <= worst)) worst = e, iw = i; /* NaN counts as worst */
    }
    cr_expect(worst <= 1.0, "%s: x = %.9g gives %.9g, reference %.9g (error %.3g of the bound)",
              label, iw >= 0 ? x[iw] : 0.0, iw >= 0 ? got[iw] : 0.0, iw >= 0 ? ref[iw] : 0.0, worst);
}

/* x on [-10, 10] in steps of 1/64 (1281 values: every vector lane and a scalar tail), then
 * +inf, -inf, NaN. Expected as PyTorch: gelu(+inf) = +inf; gelu(-inf) = NaN (-inf * 0);
 * NaN propagates; the derivative is NaN at +-inf and NaN. */
#define EXT_GRID 1281
#define EXT_N (EXT_GRID + 3)
/* float rounding of z = x / sqrt 2 moves exp(-z^2) by up to ~2 z^2 2^-24 relative (6.2e-6
 * reached at x = -9.86; elsewhere < 3e-7), so the bound is 1.5e-5 relative; the absolute floor
 * sits below FLT_MIN. */
#define EXT_RTOL 1.5e-5
#define EXT_ATOL 1e-38

static void ext_inputs(float *x)
{
    for (int i = 0; i < EXT_GRID; i++) x[i] = -10.0f + (float)i / 64.0f;
    x[EXT_GRID] = INFINITY;
    x[EXT_GRID + 1] = -INFINITY;
    x[EXT_GRID + 2] = NAN;
}

Test(activation, gelu_extreme_inputs)
{
    float x[EXT_N], dy[EXT_N], y[EXT_N], dx[EXT_N];
    double yr[EXT_GRID], dr[EXT_GRID], ds[EXT_GRID];
    ext_inputs(x);
    for (int i = 0; i < EXT_N; i++) dy[i] = 1.0f;
    dl_cpu_act_forward(tu_ctx(), DL_ACT_GELU, EXT_N, x, y);
    dl_cpu_act_backward(tu_ctx(), DL_ACT_GELU, EXT_N, x, dy, dx);
    for (int i = 0; i < EXT_GRID; i++)
        yr[i] = gelu_ref(x[i]), dr[i] = gelu_grad_ref(x[i]), ds[i] = gelu_grad_scale(x[i]);
    expect_pointwise(y, yr, NULL, x, EXT_GRID, EXT_RTOL, EXT_ATOL, "gelu forward on [-10, 10]");
    expect_pointwise(dx, dr, ds, x, EXT_GRID, EXT_RTOL, EXT_ATOL, "gelu backward on [-10, 10]");
    cr_expect(isinf(y[EXT_GRID]) && y[EXT_GRID] > 0, "gelu(+inf) = %g, expected +inf", y[EXT_GRID]);
    cr_expect(isnan(y[EXT_GRID + 1]), "gelu(-inf) = %g, expected NaN (as PyTorch)", y[EXT_GRID + 1]);
    cr_expect(isnan(y[EXT_GRID + 2]), "gelu(NaN) = %g, expected NaN", y[EXT_GRID + 2]);
    for (int i = EXT_GRID; i < EXT_N; i++)
        cr_expect(isnan(dx[i]), "gelu'(%g) = %g, expected NaN (as PyTorch)", x[i], dx[i]);
}

Test(activation, geglu_extreme_gates)
{
    /* M = 2 rows of D = EXT_N: gate = the extreme inputs, hidden uniform in [-2, 2]. */
    enum { M = 2, D = EXT_N };
    static float x[M * 2 * D], dy[M * D], y[M * D], dx[M * 2 * D];
    static double yr[M * D], dhr[M * D], dgr[M * D], dgs_scale[M * D];
    static float gate[M * D], ys[M * D], dhs[M * D], dgs[M * D];
    int ng = 0;
    tu_fill_uniform(dy, M * D, 71, -1.0f, 1.0f);
    for (int m = 0; m < M; m++) {
        tu_fill_uniform(x + m * 2 * D, D, 72 + m, -2.0f, 2.0f);
        ext_inputs(x + m * 2 * D + D);
    }
    dl_cpu_geglu_forward(tu_ctx(), M, D, x, y);
    dl_cpu_geglu_backward(tu_ctx(), M, D, x, dy, dx);
    for (int m = 0; m < M; m++)
        for (int d = 0; d < EXT_GRID; d++) {
            const float h = x[m * 2 * D + d], g = x[m * 2 * D + D + d], o = dy[m * D + d];
            gate[ng] = g;
            ys[ng] = y[m * D + d], dhs[ng] = dx[m * 2 * D + d], dgs[ng] = dx[m * 2 * D + D + d];
            yr[ng] = (double)h * gelu_ref(g);
            dhr[ng] = (double)o * gelu_ref(g);
            dgr[ng] = (double)o * h * gelu_grad_ref(g);
            dgs_scale[ng] = fabs((double)o * h) * gelu_grad_scale(g);
            ng++;
        }
    expect_pointwise(ys, yr, NULL, gate, ng, EXT_RTOL, EXT_ATOL, "geglu forward, gate on [-10, 10]");
    expect_pointwise(dhs, dhr, NULL, gate, ng, EXT_RTOL, EXT_ATOL, "geglu dhidden, gate on [-10, 10]");
    expect_pointwise(dgs, dgr, dgs_scale, gate, ng, EXT_RTOL, EXT_ATOL, "geglu dgate, gate on [-10, 10]");
    for (int m = 0; m < M; m++) {
        const float *yy = y + m * D, *dg = dx + m * 2 * D + D;
        const float h = x[m * 2 * D + EXT_GRID]; /* hidden beside the +inf gate, nonzero */
        cr_expect(isinf(yy[EXT_GRID]) && (yy[EXT_GRID] > 0) == (h > 0),
                  "geglu with gate +inf, hidden %g: %g, expected %s inf", h, yy[EXT_GRID], h > 0 ? "+" : "-");
        cr_expect(isnan(yy[EXT_GRID + 1]) && isnan(yy[EXT_GRID + 2]),
                  "geglu with gate -inf, NaN: %g, %g, expected NaN", yy[EXT_GRID + 1], yy[EXT_GRID + 2]);
        for (int d = EXT_GRID; d < EXT_N; d++)
            cr_expect(isnan(dg[d]), "geglu dgate with gate %g: %g, expected NaN", x[m * 2 * D + D + d], dg[d]);
    }
}
