/* test_layernorm.c - CPU layer norm: PyTorch golden forward/backward and float64 finite
 * differences of the backward. */
#include "ops/cpu/layernorm.h"
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
    const int64_t M = tu_golden_int(f, key(c, "M")), C = tu_golden_int(f, key(c, "C"));
    float *epsv = tu_golden_f32(f, key(c, "eps"), NULL);
    const size_t nx = (size_t)(M * C);
    float *x = tu_golden_f32(f, key(c, "x"), NULL), *gamma = tu_golden_f32(f, key(c, "gamma"), NULL);
    float *beta = tu_golden_f32(f, key(c, "beta"), NULL), *dy = tu_golden_f32(f, key(c, "dy"), NULL);
    float *ry = tu_golden_f32(f, key(c, "y"), NULL), *rmean = tu_golden_f32(f, key(c, "mean"), NULL);
    float *rrstd = tu_golden_f32(f, key(c, "rstd"), NULL), *rdx = tu_golden_f32(f, key(c, "dx"), NULL);
    float *rdg = tu_golden_f32(f, key(c, "dgamma"), NULL), *rdb = tu_golden_f32(f, key(c, "dbeta"), NULL);
    float *y = tu_alloc_nan(nx), *mean = tu_alloc_nan(M), *rstd = tu_alloc_nan(M);
    float *dx = tu_alloc_nan(nx), *dg = tu_alloc_nan(C), *db = tu_alloc_nan(C);

    dl_cpu_layernorm_forward(tu_ctx(), M, C, epsv[0], x, gamma, beta, y, mean, rstd);
    tu_expect_close(y, ry, nx, 1e-5, key(c, "y"));
    tu_expect_close(mean, rmean, M, 1e-5, key(c, "mean"));
    tu_expect_close(rstd, rrstd, M, 1e-5, key(c, "rstd"));
    dl_cpu_layernorm_backward(tu_ctx(), M, C, x, gamma, mean, rstd, dy, dx, dg, db);
    tu_expect_close(dx, rdx, nx, 1e-5, key(c, "dx"));
    tu_expect_close(dg, rdg, C, 1e-5, key(c, "dgamma"));
    tu_expect_close(db, rdb, C, 1e-5, key(c, "dbeta"));
    float *dx2 = tu_alloc_nan(nx);
    dl_cpu_layernorm_backward(tu_ctx(), M, C, x, gamma, mean, rstd, dy, dx2, NULL, NULL);
    tu_expect_close(dx2, rdx, nx, 1e-5, key(c, "dx (dgamma, dbeta NULL)"));

    free(epsv); free(x); free(gamma); free(beta); free(dy); free(ry); free(rmean); free(rrstd);
    free(rdx); free(rdg); free(rdb); free(y); free(mean); free(rstd); free(dx); free(dg);
    free(db); free(dx2);
}

Test(layernorm, golden)
{
    dl_st_file f;
    tu_golden_open(&f, "layernorm");
    const char *cases[] = {"m7c48", "m10c320", "m3c13", "m77c64"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) golden_case(&f, cases[i]);
    dl_st_close(&f);
}

typedef struct {
    int64_t M, C;
    float eps;
    const float *w; // [M, C]
} fd_user;

/* L = sum(w * layernorm(x)) in float64; params = [x (M*C), gamma (C), beta (C)] */
static double ln_loss(void *u, const double *p)
{
    const fd_user *fu = u;
    const double *x = p, *gamma = p + fu->M * fu->C, *beta = gamma + fu->C;
    double L = 0;
    for (int64_t m = 0; m < fu->M; m++) {
        const double *xr = x + m * fu->C;
        double mu = 0, v = 0;
        for (int64_t c = 0; c < fu->C; c++) mu += xr[c];
        mu /= fu->C;
        for (int64_t c = 0; c < fu->C; c++) v += (xr[c] - mu) * (xr[c] - mu);
        double rs = 1.0 / sqrt(v / fu->C + fu->eps);
        for (int64_t c = 0; c < fu->C; c++) L += fu->w[m * fu->C + c] * ((xr[c] - mu) * rs * gamma[c] + beta[c]);
    }
    return L;
}

Test(layernorm, finite_differences)
{
    const int64_t M = 5, C = 19;
    const size_t nx = M * C, np = nx + 2 * C;
    const uint64_t seed = 31;
    float *x = malloc(nx * 4), *g = malloc(C * 4), *b = malloc(C * 4), *w = malloc(nx * 4);
    tu_fill_uniform(x, nx, seed, -2.0f, 3.0f);
    tu_fill_uniform(g, C, seed + 1, 0.5f, 1.5f);
    tu_fill_uniform(b, C, seed + 2, -0.5f, 0.5f);
    tu_fill_uniform(w, nx, seed + 3, -1.0f, 1.0f);
    float *y = tu_alloc_nan(nx), *mean = tu_alloc_nan(M), *rstd = tu_alloc_nan(M), *got = tu_alloc_nan(np);
    dl_cpu_layernorm_forward(tu_ctx(), M, C, 1e-5f, x, g, b, y, mean, rstd);
    dl_cpu_layernorm_backward(tu_ctx(), M, C, x, g, mean, rstd, w, got, got + nx, got + nx + C);
    double *p = malloc(np * sizeof *p), *fd = malloc(np * sizeof *fd);
    for (size_t i = 0; i < nx; i++) p[i] = x[i];
    for (int64_t c = 0; c < C; c++) { p[nx + c] = g[c]; p[nx + C + c] = b[c]; }
    fd_user u = {M, C, 1e-5f, w};
    tu_fd_grad(ln_loss, &u, p, np, 1e-5, fd);
    /* fp32 gradients vs float64 central differences (h = 1e-5, truncation ~1e-10); seed 31 */
    tu_expect_close_d(got, fd, nx, 1e-5, "layernorm FD dx (seed 31)");
    tu_expect_close_d(got + nx, fd + nx, C, 1e-5, "layernorm FD dgamma (seed 31)");
    tu_expect_close_d(got + nx + C, fd + nx + C, C, 1e-5, "layernorm FD dbeta (seed 31)");
    free(x); free(g); free(b); free(w); free(y); free(mean); free(rstd); free(got); free(p); free(fd);
}

/* gamma = beta = NULL means gamma = 1, beta = 0, forward and backward. */
Test(layernorm, null_affine)
{
    const int64_t M = 70, C = 33;
    const size_t n = M * C;
    float *x = malloc(n * 4), *dy = malloc(n * 4), *one = malloc(C * 4), *zero = malloc(C * 4);
    tu_fill_uniform(x, n, 81, -2.0f, 2.0f);
    tu_fill_uniform(dy, n, 82, -1.0f, 1.0f);
    for (int64_t c = 0; c < C; c++) { one[c] = 1.0f; zero[c] = 0.0f; }
    float *y1 = tu_alloc_nan(n), *y2 = tu_alloc_nan(n), *dx1 = tu_alloc_nan(n), *dx2 = tu_alloc_nan(n);
    float *m = tu_alloc_nan(M), *r = tu_alloc_nan(M), *db = tu_alloc_nan(C);
    dl_cpu_layernorm_forward(tu_ctx(), M, C, 1e-5f, x, one, zero, y1, m, r);
    dl_cpu_layernorm_backward(tu_ctx(), M, C, x, one, m, r, dy, dx1, NULL, NULL);
    dl_cpu_layernorm_forward(tu_ctx(), M, C, 1e-5f, x, NULL, NULL, y2, m, r);
    dl_cpu_layernorm_backward(tu_ctx(), M, C, x, NULL, m, r, dy, dx2, NULL, db);
    tu_expect_close(y2, y1, n, 1e-7, "layernorm y, NULL affine");
    tu_expect_close(dx2, dx1, n, 1e-7, "layernorm dx, NULL affine");
    /* dbeta alone (dgamma NULL): column sums of dy */
    double *ref = calloc(C, sizeof *ref);
    for (size_t i = 0; i < n; i++) ref[i % C] += dy[i];
    tu_expect_close_d(db, ref, C, 1e-6, "layernorm dbeta alone");
    free(x); free(dy); free(one); free(zero); free(y1); free(y2); free(dx1); free(dx2); free(m);
    free(r); free(db); free(ref);
}
