/* test_groupnorm.c - CPU group norm (+ fused SiLU): PyTorch golden forward/backward and
 * float64 finite differences of the backward. */
#include "ops/cpu/groupnorm.h"
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

static void golden_case(const dl_st_file *f, const char *c)
{
    dl_groupnorm_shape s = {(int)tu_golden_int(f, key(c, "N")), (int)tu_golden_int(f, key(c, "HW")),
                            (int)tu_golden_int(f, key(c, "C")), (int)tu_golden_int(f, key(c, "G")),
                            0, (int)tu_golden_int(f, key(c, "silu"))};
    float *eps = tu_golden_f32(f, key(c, "eps"), NULL);
    s.eps = eps[0];
    const size_t nx = (size_t)s.N * s.HW * s.C, ns = (size_t)s.N * s.G;
    float *x = tu_golden_f32(f, key(c, "x"), NULL), *gamma = tu_golden_f32(f, key(c, "gamma"), NULL);
    float *beta = tu_golden_f32(f, key(c, "beta"), NULL), *dy = tu_golden_f32(f, key(c, "dy"), NULL);
    float *ry = tu_golden_f32(f, key(c, "y"), NULL), *rmean = tu_golden_f32(f, key(c, "mean"), NULL);
    float *rrstd = tu_golden_f32(f, key(c, "rstd"), NULL), *rdx = tu_golden_f32(f, key(c, "dx"), NULL);
    float *rdg = tu_golden_f32(f, key(c, "dgamma"), NULL), *rdb = tu_golden_f32(f, key(c, "dbeta"), NULL);
    float *y = tu_alloc_nan(nx), *mean = tu_alloc_nan(ns), *rstd = tu_alloc_nan(ns);
    float *dx = tu_alloc_nan(nx), *dg = tu_alloc_nan(s.C), *db = tu_alloc_nan(s.C);

    dl_cpu_groupnorm_forward(tu_ctx(), s, x, gamma, beta, y, mean, rstd);
    tu_expect_close(y, ry, nx, 1e-5, key(c, "y"));
    tu_expect_close(mean, rmean, ns, 1e-5, key(c, "mean"));
    tu_expect_close(rstd, rrstd, ns, 1e-5, key(c, "rstd"));
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, gamma, beta, mean, rstd, dy, dx, dg, db);
    tu_expect_close(dx, rdx, nx, 1e-5, key(c, "dx"));
    tu_expect_close(dg, rdg, s.C, 1e-5, key(c, "dgamma"));
    tu_expect_close(db, rdb, s.C, 1e-5, key(c, "dbeta"));

    /* NULL outputs are skipped and do not change the others */
    float *dx2 = tu_alloc_nan(nx);
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, gamma, beta, mean, rstd, dy, dx2, NULL, NULL);
    tu_expect_close(dx2, rdx, nx, 1e-5, key(c, "dx (dgamma, dbeta NULL)"));
    /* in place: y aliases x */
    float *xy = tu_golden_f32(f, key(c, "x"), NULL);
    dl_cpu_groupnorm_forward(tu_ctx(), s, xy, gamma, beta, xy, NULL, NULL);
    tu_expect_close(xy, ry, nx, 1e-5, key(c, "y in place"));
    /* in place: dx aliases dy (the SiLU path keeps dz in dx between its passes), then x (dz
     * cannot be kept there: the sigmoid is recomputed) */
    float *dxy = tu_golden_f32(f, key(c, "dy"), NULL), *dxx = tu_golden_f32(f, key(c, "x"), NULL);
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, gamma, beta, mean, rstd, dxy, dxy, NULL, NULL);
    tu_expect_close(dxy, rdx, nx, 1e-5, key(c, "dx aliasing dy"));
    dl_cpu_groupnorm_backward(tu_ctx(), s, dxx, gamma, beta, mean, rstd, dy, dxx, NULL, NULL);
    tu_expect_close(dxx, rdx, nx, 1e-5, key(c, "dx aliasing x"));
    free(dxy); free(dxx);

    free(eps); free(x); free(gamma); free(beta); free(dy); free(ry); free(rmean); free(rrstd);
    free(rdx); free(rdg); free(rdb); free(y); free(mean); free(rstd); free(dx); free(dg);
    free(db); free(dx2); free(xy);
}

Test(groupnorm, golden)
{
    dl_st_file f;
    tu_golden_open(&f, "groupnorm");
    const char *cases[] = {"c48g8", "c96g32_silu", "sd_silu", "multiblock", "g1"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) golden_case(&f, cases[i]);
    dl_st_close(&f);
}

/* ---- finite differences: L = sum(w * y) in float64 ---- */

typedef struct {
    dl_groupnorm_shape s;
    const float *w; // [N, HW, C]
} fd_user;

/* params = [x (N*HW*C), gamma (C), beta (C)] */
static double gn_loss(void *u, const double *p)
{
    const fd_user *fu = u;
    const dl_groupnorm_shape s = fu->s;
    const int Cg = s.C / s.G;
    const double *x = p, *gamma = p + (size_t)s.N * s.HW * s.C, *beta = gamma + s.C;
    double L = 0;
    for (int n = 0; n < s.N; n++)
        for (int g = 0; g < s.G; g++) {
            double m = 0, v = 0, cnt = (double)s.HW * Cg;
            for (int t = 0; t < s.HW; t++)
                for (int c = g * Cg; c < (g + 1) * Cg; c++) m += x[((size_t)n * s.HW + t) * s.C + c];
            m /= cnt;
            for (int t = 0; t < s.HW; t++)
                for (int c = g * Cg; c < (g + 1) * Cg; c++) {
                    double dd = x[((size_t)n * s.HW + t) * s.C + c] - m;
                    v += dd * dd;
                }
            double rs = 1.0 / sqrt(v / cnt + s.eps);
            for (int t = 0; t < s.HW; t++)
                for (int c = g * Cg; c < (g + 1) * Cg; c++) {
                    size_t i = ((size_t)n * s.HW + t) * s.C + c;
                    double z = (x[i] - m) * rs * gamma[c] + beta[c];
                    double y = s.silu ? z / (1.0 + exp(-z)) : z;
                    L += fu->w[i] * y;
                }
        }
    return L;
}

static void fd_case(dl_groupnorm_shape s, uint64_t seed)
{
    const size_t nx = (size_t)s.N * s.HW * s.C, np = nx + 2 * (size_t)s.C;
    float *x = malloc(nx * sizeof *x), *gamma = malloc(s.C * sizeof *gamma);
    float *beta = malloc(s.C * sizeof *beta), *w = malloc(nx * sizeof *w);
    tu_fill_uniform(x, nx, seed, -2.0f, 3.0f);
    tu_fill_uniform(gamma, s.C, seed + 1, 0.5f, 1.5f);
    tu_fill_uniform(beta, s.C, seed + 2, -0.5f, 0.5f);
    tu_fill_uniform(w, nx, seed + 3, -1.0f, 1.0f);
    float *y = tu_alloc_nan(nx), *mean = tu_alloc_nan(s.N * s.G), *rstd = tu_alloc_nan(s.N * s.G);
    float *got = tu_alloc_nan(np);
    dl_cpu_groupnorm_forward(tu_ctx(), s, x, gamma, beta, y, mean, rstd);
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, gamma, beta, mean, rstd, w, got, got + nx, got + nx + s.C);

    double *p = malloc(np * sizeof *p), *fd = malloc(np * sizeof *fd);
    for (size_t i = 0; i < nx; i++) p[i] = x[i];
    for (int c = 0; c < s.C; c++) { p[nx + c] = gamma[c]; p[nx + s.C + c] = beta[c]; }
    fd_user u = {s, w};
    tu_fd_grad(gn_loss, &u, p, np, 1e-5, fd);
    char label[96];
    snprintf(label, sizeof label, "groupnorm FD silu=%d seed=%llu dx", s.silu, (unsigned long long)seed);
    /* fp32 gradients vs float64 central differences (h = 1e-5, truncation ~1e-10) */
    tu_expect_close_d(got, fd, nx, 1e-5, label);
    tu_expect_close_d(got + nx, fd + nx, s.C, 1e-5, "groupnorm FD dgamma");
    tu_expect_close_d(got + nx + s.C, fd + nx + s.C, s.C, 1e-5, "groupnorm FD dbeta");
    free(x); free(gamma); free(beta); free(w); free(y); free(mean); free(rstd); free(got);
    free(p); free(fd);
}

Test(groupnorm, finite_differences)
{
    fd_case((dl_groupnorm_shape){2, 3, 6, 2, 1e-5f, 0}, 11);
    fd_case((dl_groupnorm_shape){2, 5, 6, 3, 1e-5f, 1}, 12);
    fd_case((dl_groupnorm_shape){1, 7, 4, 1, 1e-3f, 1}, 13);
}

/* Results must not depend on the number of threads (fixed reduction order). */
Test(groupnorm, thread_count_invariant)
{
    dl_groupnorm_shape s = {2, 300, 40, 8, 1e-5f, 1};
    const size_t nx = (size_t)s.N * s.HW * s.C;
    float *x = malloc(nx * sizeof *x), *g = malloc(s.C * sizeof *g), *b = malloc(s.C * sizeof *b);
    tu_fill_uniform(x, nx, 21, -1.0f, 2.0f);
    tu_fill_uniform(g, s.C, 22, 0.5f, 1.5f);
    tu_fill_uniform(b, s.C, 23, -0.5f, 0.5f);
    float *y1 = tu_alloc_nan(nx), *y2 = tu_alloc_nan(nx);
    float *m = tu_alloc_nan(s.N * s.G), *r = tu_alloc_nan(s.N * s.G);
    dl_cpu_groupnorm_forward(tu_ctx(), s, x, g, b, y1, m, r);
    dl_ctx one;
    cr_assert_eq(dl_ctx_init(&one, 1), 0);
    dl_cpu_groupnorm_forward(&one, s, x, g, b, y2, m, r);
    dl_ctx_free(&one);
    for (size_t i = 0; i < nx; i++) cr_assert_eq(y1[i], y2[i], "y[%zu] differs with 1 thread", i);
    free(x); free(g); free(b); free(y1); free(y2); free(m); free(r);
}

/* gamma = beta = NULL means gamma = 1, beta = 0, forward and backward. */
Test(groupnorm, null_affine)
{
    dl_groupnorm_shape s = {2, 9, 12, 4, 1e-5f, 1};
    const size_t nx = (size_t)s.N * s.HW * s.C;
    float *x = malloc(nx * 4), *dy = malloc(nx * 4), *one = malloc(s.C * 4), *zero = malloc(s.C * 4);
    tu_fill_uniform(x, nx, 71, -2.0f, 2.0f);
    tu_fill_uniform(dy, nx, 72, -1.0f, 1.0f);
    for (int c = 0; c < s.C; c++) { one[c] = 1.0f; zero[c] = 0.0f; }
    float *y1 = tu_alloc_nan(nx), *y2 = tu_alloc_nan(nx), *dx1 = tu_alloc_nan(nx), *dx2 = tu_alloc_nan(nx);
    float *m = tu_alloc_nan(s.N * s.G), *r = tu_alloc_nan(s.N * s.G);
    dl_cpu_groupnorm_forward(tu_ctx(), s, x, one, zero, y1, m, r);
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, one, zero, m, r, dy, dx1, NULL, NULL);
    dl_cpu_groupnorm_forward(tu_ctx(), s, x, NULL, NULL, y2, m, r);
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, NULL, NULL, m, r, dy, dx2, NULL, NULL);
    tu_expect_close(y2, y1, nx, 1e-7, "groupnorm y, NULL affine");
    tu_expect_close(dx2, dx1, nx, 1e-7, "groupnorm dx, NULL affine");
    free(x); free(dy); free(one); free(zero); free(y1); free(y2); free(dx1); free(dx2); free(m); free(r);
}
