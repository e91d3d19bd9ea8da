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
