/* test_softmax.c - CPU softmax: PyTorch golden forward/backward (with masked -inf logits),
 * float64 finite differences of the backward, and the accuracy of dl_expf. */
#include "ops/cpu/softmax.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *key(const char *c, const char *t)
{
    static char buf[4][128];
    static int slot;
    char *b = buf[slot++ & 3];
    snprintf(b, 128, "%s.%s", c, t);
    return b;
}

Test(softmax, golden)
{
    dl_st_file f;
    tu_golden_open(&f, "softmax");
    const char *cases[] = {"m5c77", "m3c1000", "m4c37_masked", "m2c1"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *c = cases[i];
        const int64_t M = tu_golden_int(&f, key(c, "M")), C = tu_golden_int(&f, key(c, "C"));
        const size_t n = (size_t)(M * C);
        float *x = tu_golden_f32(&f, key(c, "x"), NULL), *ry = tu_golden_f32(&f, key(c, "y"), NULL);
        float *dy = tu_golden_f32(&f, key(c, "dy"), NULL), *rdx = tu_golden_f32(&f, key(c, "dx"), NULL);
        float *y = tu_alloc_nan(n), *dx = tu_alloc_nan(n);
        dl_cpu_softmax_forward(tu_ctx(), M, C, x, y);
        tu_expect_close(y, ry, n, 1e-5, key(c, "y"));
        dl_cpu_softmax_backward(tu_ctx(), M, C, y, dy, dx);
        tu_expect_close(dx, rdx, n, 1e-5, key(c, "dx"));
        dl_cpu_softmax_forward(tu_ctx(), M, C, x, x); /* in place */
        tu_expect_close(x, ry, n, 1e-5, key(c, "y in place"));
        free(x); free(ry); free(dy); free(rdx); free(y); free(dx);
    }
    dl_st_close(&f);
}

typedef struct { int64_t M, C; const float *w; } fd_user;

static double sm_loss(void *u, const double *x)
{
    const fd_user *fu = u;
    double L = 0;
    for (int64_t m = 0; m < fu->M; m++) {
        const double *r = x + m * fu->C;
        double mx = -INFINITY, s = 0;
        for (int64_t c = 0; c < fu->C; c++) mx = r[c] > mx ? r[c] : mx;
        for (int64_t c = 0; c < fu->C; c++) s += exp(r[c] - mx);
        for (int64_t c = 0; c < fu->C; c++) L += fu->w[m * fu->C + c] * exp(r[c] - mx) / s;
    }
    return L;
}

Test(softmax, finite_differences)
{
    const int64_t M = 4, C = 23;
    const size_t n = M * C;
    float *x = malloc(n * 4), *w = malloc(n * 4), *y = tu_alloc_nan(n), *dx = tu_alloc_nan(n);
    tu_fill_uniform(x, n, 41, -4.0f, 4.0f);
    tu_fill_uniform(w, n, 42, -1.0f, 1.0f);
    dl_cpu_softmax_forward(tu_ctx(), M, C, x, y);
    dl_cpu_softmax_backward(tu_ctx(), M, C, y, w, dx);
    double *p = malloc(n * sizeof *p), *fd = malloc(n * sizeof *fd);
    for (size_t i = 0; i < n; i++) p[i] = x[i];
    fd_user u = {M, C, w};
    tu_fd_grad(sm_loss, &u, p, n, 1e-5, fd);
    /* fp32 gradient vs float64 central differences (h = 1e-5); seeds 41, 42 */
    tu_expect_close_d(dx, fd, n, 1e-5, "softmax FD dx (seeds 41, 42)");
    free(x); free(w); free(y); free(dx); free(p); free(fd);
}

Test(softmax, expf_accuracy)
{
    double worst = 0;
    float at = 0;
    for (float x = -87.0f; x < 88.3f; x += 0.00731f) {
        double ref = exp((double)x), e = fabs(((double)dl_expf(x) - ref) / ref);
        if (e > worst) { worst = e; at = x; }
    }
    cr_expect_lt(worst, 2e-7, "dl_expf relative error %g at x = %g", worst, at);
    cr_expect_eq(dl_expf(-INFINITY), 0.0f);
    cr_expect_eq(dl_expf(-100.0f), 0.0f);
    cr_expect_eq(dl_expf(0.0f), 1.0f);
    cr_expect(isfinite(dl_expf(1000.0f)));
}
