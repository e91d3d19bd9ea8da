/* test_loss.c - MSE loss (plain and per-sample weighted) against PyTorch float64 golden data
 * (tests/gen/gen_loss.py) and float64 finite differences. */
#include "ops/cpu/loss.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TOL
#define TOL 1e-5 /* fp32 vs float64 (override with -DTOL to see the errors reached) */
#endif

Test(loss, golden)
{
    static const struct { const char *name; int64_t N, D; int weighted; } cases[] = {
        {"plain_n1", 1, 256, 0}, {"weighted_n2", 2, 252, 1}, {"weighted_n3_big", 3, 5000, 1},
        {"plain_n2", 2, 60, 0}};
    dl_st_file f;
    tu_golden_open(&f, "loss");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128], label[128];
        int64_t N = cases[c].N, D = cases[c].D, sh[2] = {N, D}, one = 1;
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *pred = tu_golden_f32_shape(&f, G("pred"), 2, sh);
        float *target = tu_golden_f32_shape(&f, G("target"), 2, sh);
        float *w = cases[c].weighted ? tu_golden_f32_shape(&f, G("w"), 1, &N) : NULL;
        float *lref = tu_golden_f32_shape(&f, G("loss"), 1, &one);
        float *psref = tu_golden_f32_shape(&f, G("per_sample"), 1, &N);
        float *dpref = tu_golden_f32_shape(&f, G("dpred"), 2, sh);
        float *dtref = tu_golden_f32_shape(&f, G("dtarget"), 2, sh);
#undef G
        float *ps = tu_alloc_nan((size_t)N), *dp = tu_alloc_nan((size_t)(N * D)), *dt = tu_alloc_nan((size_t)(N * D));
        float L = (float)dl_cpu_mse_loss_forward(tu_ctx(), N, D, pred, target, w, ps);
        dl_cpu_mse_loss_backward(tu_ctx(), N, D, pred, target, w, 1.0f, dp, dt);
        snprintf(label, sizeof label, "%s loss", cases[c].name);
        tu_expect_close(&L, lref, 1, 1e-6, label); /* double accumulation: only the f32 rounding */
        snprintf(label, sizeof label, "%s per-sample", cases[c].name);
        tu_expect_close(ps, psref, (size_t)N, 1e-6, label);
        snprintf(label, sizeof label, "%s dpred", cases[c].name);
        tu_expect_close(dp, dpref, (size_t)(N * D), TOL, label);
        snprintf(label, sizeof label, "%s dtarget", cases[c].name);
        tu_expect_close(dt, dtref, (size_t)(N * D), TOL, label);
        /* upstream gradient scales the result; dpred may alias pred */
        dl_cpu_mse_loss_backward(tu_ctx(), N, D, pred, target, w, -0.5f, pred, NULL);
        for (int64_t i = 0; i < N * D; i++) dpref[i] *= -0.5f;
        snprintf(label, sizeof label, "%s dpred (dloss = -0.5, in place)", cases[c].name);
        tu_expect_close(pred, dpref, (size_t)(N * D), TOL, label);
        free(pred), free(target), free(w), free(lref), free(psref), free(dpref), free(dtref), free(ps), free(dp), free(dt);
    }
    dl_st_close(&f);
}

Test(loss, thread_independent)
{
    /* the loss is summed in fixed 4096-element blocks, 256 blocks per pass: 1 thread and the pool
     * give bit-identical results; 3 x 91 blocks cross a pass boundary and a sample boundary
     * inside a pass. Checked against a plain float64 loop too. */
    enum { N = 3, D = 90 * 4096 + 17 };
    float *p = malloc((size_t)N * D * sizeof *p), *t = malloc((size_t)N * D * sizeof *t);
    float w[N] = {0.5f, 2.0f, 1.25f}, ps[N];
    tu_fill_uniform(p, (size_t)N * D, 7, -1, 1);
    tu_fill_uniform(t, (size_t)N * D, 8, -1, 1);
    dl_ctx one = {NULL};
    double a = dl_cpu_mse_loss_forward(tu_ctx(), N, D, p, t, w, ps);
    double b = dl_cpu_mse_loss_forward(&one, N, D, p, t, w, NULL);
    cr_expect(a == b && isfinite(a), "loss %.17g with threads, %.17g without", a, b);
    double ref = 0;
    for (int n = 0; n < N; n++) {
        double s = 0;
        for (int64_t i = 0; i < D; i++) {
            double d = (double)p[(int64_t)n * D + i] - t[(int64_t)n * D + i];
            s += d * d;
        }
        cr_expect(fabs(ps[n] - s / D) <= 1e-6 * (s / D), "per-sample %d: %.9g vs %.9g", n, ps[n], s / D);
        ref += w[n] * s / D;
    }
    ref /= N;
    cr_expect(fabs(a - ref) <= 1e-12 * ref, "loss %.17g, float64 loop %.17g", a, ref);
    free(p), free(t);
}

typedef struct { int64_t N, D; const double *target, *w; } loss_user;

static double loss_ref(void *u, const double *pred)
{
    const loss_user *p = u;
    double L = 0;
    for (int64_t n = 0; n < p->N; n++) {
        double s = 0;
        for (int64_t i = 0; i < p->D; i++) {
            double d = pred[n * p->D + i] - p->target[n * p->D + i];
            s += d * d;
        }
        L += (p->w ? p->w[n] : 1.0) * s / (double)p->D;
    }
    return L / (double)p->N;
}

Test(loss, finite_differences)
{
    enum { N = 3, D = 7 };
    float pred[N * D], target[N * D], w[N] = {0.25f, 1.0f, 3.0f}, dp[N * D];
    double pd[N * D], td[N * D], wd[N], g[N * D];
    tu_fill_uniform(pred, N * D, 1, -2, 2);
    tu_fill_uniform(target, N * D, 2, -2, 2);
    for (int i = 0; i < N * D; i++) pd[i] = pred[i], td[i] = target[i];
    for (int i = 0; i < N; i++) wd[i] = w[i];
    for (int weighted = 0; weighted < 2; weighted++) {
        loss_user u = {N, D, td, weighted ? wd : NULL};
        tu_fd_grad(loss_ref, &u, pd, N * D, 1e-5, g);
        dl_cpu_mse_loss_backward(tu_ctx(), N, D, pred, target, weighted ? w : NULL, 1.0f, dp, NULL);
        tu_expect_close_d(dp, g, N * D, TOL, weighted ? "weighted dpred vs FD" : "dpred vs FD");
        double L = dl_cpu_mse_loss_forward(tu_ctx(), N, D, pred, target, weighted ? w : NULL, NULL);
        double Lref = loss_ref(&u, pd);
        cr_expect(fabs(L - Lref) <= 1e-12 * fabs(Lref), "loss %.17g, float64 reference %.17g", L, Lref);
    }
}
