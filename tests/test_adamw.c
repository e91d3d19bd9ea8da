/* test_adamw.c - AdamW steps against torch.optim.AdamW run in float64 (tests/gen/gen_adamw.py). */
#include "ops/cpu/adamw.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define STEPS 6

Test(adamw, golden_torch)
{
    /* the generator's hyperparameters as Python floats (the golden copy is fp32; checked below) */
    static const struct { const char *name; dl_adamw_hparams hp; } cases[] = {
        {"default", {1e-3, 0.9, 0.999, 1e-8, 1e-2}},
        {"custom", {5e-2, 0.8, 0.95, 1e-6, 0.1}},
        {"no_decay", {1e-4, 0.9, 0.99, 1e-8, 0.0}}};
    dl_st_file f;
    tu_golden_open(&f, "adamw");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128], label[160];
        int64_t n, nh;
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *p = tu_golden_f32(&f, G("p0"), &n);
        int64_t sg[2] = {STEPS, n};
        float *grads = tu_golden_f32_shape(&f, G("grads"), 2, sg);
        float *hpv = tu_golden_f32(&f, G("hparams"), &nh);
        float *p1ref = tu_golden_f32_shape(&f, G("p_step1"), 1, &n);
        float *pref = tu_golden_f32_shape(&f, G("p"), 1, &n);
        float *mref = tu_golden_f32_shape(&f, G("m"), 1, &n);
        float *vref = tu_golden_f32_shape(&f, G("v"), 1, &n);
#undef G
        cr_assert_eq(nh, 5);
        const dl_adamw_hparams hp = cases[c].hp;
        const double hcheck[5] = {hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay};
        for (int k = 0; k < 5; k++)
            cr_assert(hpv[k] == (float)hcheck[k], "%s: hyperparameter %d is %g in the golden file, %g here",
                      cases[c].name, k, hpv[k], hcheck[k]);
        float *p0 = malloc((size_t)n * sizeof *p0), *m = calloc((size_t)n, sizeof *m), *v = calloc((size_t)n, sizeof *v);
        for (int64_t i = 0; i < n; i++) p0[i] = p[i];
        for (int s = 1; s <= STEPS; s++) {
            dl_cpu_adamw_step(tu_ctx(), n, &hp, s, p, grads + (s - 1) * n, m, v);
            if (s == 1) {
                snprintf(label, sizeof label, "%s p after step 1", cases[c].name);
                tu_expect_close(p, p1ref, (size_t)n, 1e-6, label);
            }
        }
        /* p itself: only fp32 rounding of p per step (~6e-8 relative each) */
        snprintf(label, sizeof label, "%s p after %d steps", cases[c].name, STEPS);
        tu_expect_close(p, pref, (size_t)n, 1e-6, label);
        snprintf(label, sizeof label, "%s m", cases[c].name);
        tu_expect_close(m, mref, (size_t)n, 1e-5, label);
        snprintf(label, sizeof label, "%s v", cases[c].name);
        tu_expect_close(v, vref, (size_t)n, 1e-5, label);
        /* the update itself (p - p0), so a wrong small term cannot hide behind |p|; the bound is
         * the fp32 rounding of p (~6 steps x 6e-8) against an update of ~lr per step. */
        double *dref = malloc((size_t)n * sizeof *dref);
        float *dgot = malloc((size_t)n * sizeof *dgot);
        for (int64_t i = 0; i < n; i++) dref[i] = (double)pref[i] - p0[i], dgot[i] = p[i] - p0[i];
        snprintf(label, sizeof label, "%s update p - p0", cases[c].name);
        tu_expect_close_d(dgot, dref, (size_t)n, 1e-3, label);
        free(p), free(grads), free(hpv), free(p1ref), free(pref), free(mref), free(vref), free(p0), free(m), free(v);
        free(dref), free(dgot);
    }
    dl_st_close(&f);
}

Test(adamw, sumsq)
{
    /* 300 blocks of 4096: crosses a 256-block pass; threads and no threads bit-identical */
    const int64_t n = 300 * 4096 - 3;
    float *x = malloc((size_t)n * sizeof *x);
    tu_fill_uniform(x, (size_t)n, 17, -1, 1);
    double ref = 0;
    for (int64_t i = 0; i < n; i++) ref += (double)x[i] * x[i];
    dl_ctx one = {NULL};
    double a = dl_cpu_sumsq(tu_ctx(), n, x), b = dl_cpu_sumsq(&one, n, x);
    cr_expect(a == b, "sumsq %.17g with threads, %.17g without", a, b);
    cr_expect(fabs(a - ref) <= 1e-12 * ref, "sumsq %.17g, float64 loop %.17g", a, ref);
    cr_expect(dl_cpu_sumsq(tu_ctx(), 0, x) == 0.0, "empty sum");
    x[12345] = NAN;
    cr_expect(isnan(dl_cpu_sumsq(tu_ctx(), n, x)), "NaN propagates (so a NaN gradient is seen)");
    free(x);
}
