/* test_conv2d.c - channels-last conv2d forward/backward against PyTorch float64 golden data,
 * a float64 naive reference at a multi-strip size, and float64 finite differences. */
#include "ops/cpu/conv2d.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { const char *name; int N, H, W, Cin, Cout, k, stride, pt, pl, pb, pr; } conv_case;

/* must match tests/gen/gen_conv2d.py */
static const conv_case CASES[] = {
    {"k3s1p1", 2, 7, 9, 5, 6, 3, 1, 1, 1, 1, 1},
    {"k3s1p1_sd", 1, 8, 8, 20, 24, 3, 1, 1, 1, 1, 1},
    {"k1s1p0", 2, 5, 6, 7, 9, 1, 1, 0, 0, 0, 0},
    {"k3s2p1", 1, 9, 8, 6, 5, 3, 2, 1, 1, 1, 1},
    {"k3s2p1_even", 2, 8, 8, 16, 17, 3, 2, 1, 1, 1, 1},
    {"k3s2_vae", 2, 8, 7, 4, 6, 3, 2, 0, 0, 1, 1},
    {"k1s2p0", 1, 7, 7, 3, 5, 1, 2, 0, 0, 0, 0},
    {"k3s1p0", 1, 6, 5, 17, 33, 3, 1, 0, 0, 0, 0},
    {"k3s1p1_c40", 1, 10, 11, 32, 40, 3, 1, 1, 1, 1, 1},
};

static dl_conv2d_shape shape_of(const conv_case *c)
{
    dl_conv2d_shape s = {c->N, c->H, c->W, c->Cin, c->Cout, c->k, c->stride, c->pt, c->pl, c->pb, c->pr};
    return s;
}

Test(conv2d, golden)
{
    dl_st_file f;
    tu_golden_open(&f, "conv2d");
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const conv_case *cc = &CASES[i];
        dl_conv2d_shape s = shape_of(cc);
        const int Ho = dl_conv2d_out_h(&s), Wo = dl_conv2d_out_w(&s);
        int64_t sx[4] = {s.N, s.H, s.W, s.Cin}, sw[4] = {s.Cout, s.k, s.k, s.Cin};
        int64_t sy[4] = {s.N, Ho, Wo, s.Cout}, sb[1] = {s.Cout};
        const size_t nx = (size_t)s.N * s.H * s.W * s.Cin, nw = (size_t)s.Cout * s.k * s.k * s.Cin;
        const size_t ny = (size_t)s.N * Ho * Wo * s.Cout;
        char key[96], label[96];
#define G(t, ...) (snprintf(key, sizeof key, "%s.%s", cc->name, t), tu_golden_f32_shape(&f, key, __VA_ARGS__))
        float *x = G("x", 4, sx), *w = G("w", 4, sw), *b = G("b", 1, sb), *dy = G("dy", 4, sy);
        float *y_ref = G("y", 4, sy), *dx_ref = G("dx", 4, sx), *dw_ref = G("dw", 4, sw), *db_ref = G("db", 1, sb);
#undef G
        float *y = tu_alloc_nan(ny), *dx = tu_alloc_nan(nx), *dw = tu_alloc_nan(nw), *db = tu_alloc_nan((size_t)s.Cout);
        dl_cpu_conv2d_forward(tu_ctx(), &s, x, w, b, y);
        dl_cpu_conv2d_backward(tu_ctx(), &s, x, w, dy, dx, dw, db);
#define CHECK(got, ref, n, what) \
    (snprintf(label, sizeof label, "conv2d %s %s", cc->name, what), tu_expect_close(got, ref, n, 1e-5, label))
        CHECK(y, y_ref, ny, "y");
        CHECK(dx, dx_ref, nx, "dx");
        CHECK(dw, dw_ref, nw, "dw");
        CHECK(db, db_ref, (size_t)s.Cout, "db");
        /* each gradient alone (NULL skips), single-threaded */
        float *dx2 = tu_alloc_nan(nx), *dw2 = tu_alloc_nan(nw);
        dl_cpu_conv2d_backward(NULL, &s, x, w, dy, dx2, NULL, NULL);
        dl_cpu_conv2d_backward(NULL, &s, x, w, dy, NULL, dw2, NULL);
        CHECK(dx2, dx_ref, nx, "dx alone");
        CHECK(dw2, dw_ref, nw, "dw alone");
#undef CHECK
        free(dx2); free(dw2);
        free(x); free(w); free(b); free(dy); free(y_ref); free(dx_ref); free(dw_ref); free(db_ref);
        free(y); free(dx); free(dw); free(db);
    }
    dl_st_close(&f);
}

/* ---- float64 naive reference ---- */
static void ref_forward(const dl_conv2d_shape *s, const double *x, const double *w, const double *b, double *y)
{
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    for (int n = 0; n < s->N; n++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++)
                for (int co = 0; co < s->Cout; co++) {
                    double acc = b ? b[co] : 0.0;
                    for (int kh = 0; kh < s->k; kh++)
                        for (int kw = 0; kw < s->k; kw++) {
                            int ih = oh * s->stride - s->pad_top + kh, iw = ow * s->stride - s->pad_left + kw;
                            if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                            const double *xp = x + (((size_t)n * s->H + ih) * s->W + iw) * s->Cin;
                            const double *wp = w + (((size_t)co * s->k + kh) * s->k + kw) * s->Cin;
                            for (int ci = 0; ci < s->Cin; ci++) acc += xp[ci] * wp[ci];
                        }
                    y[(((size_t)n * Ho + oh) * Wo + ow) * s->Cout + co] = acc;
                }
}

/* dx and dw of sum(g .* conv(x, w)) by direct accumulation */
static void ref_backward(const dl_conv2d_shape *s, const double *x, const double *w, const double *g,
                         double *dx, double *dw)
{
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    const size_t nx = (size_t)s->N * s->H * s->W * s->Cin, nw = (size_t)s->Cout * s->k * s->k * s->Cin;
    for (size_t i = 0; i < nx; i++) dx[i] = 0;
    for (size_t i = 0; i < nw; i++) dw[i] = 0;
    for (int n = 0; n < s->N; n++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++)
                for (int co = 0; co < s->Cout; co++) {
                    double gv = g[(((size_t)n * Ho + oh) * Wo + ow) * s->Cout + co];
                    for (int kh = 0; kh < s->k; kh++)
                        for (int kw = 0; kw < s->k; kw++) {
                            int ih = oh * s->stride - s->pad_top + kh, iw = ow * s->stride - s->pad_left + kw;
                            if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                            size_t xo = (((size_t)n * s->H + ih) * s->W + iw) * s->Cin;
                            size_t wo = (((size_t)co * s->k + kh) * s->k + kw) * s->Cin;
                            for (int ci = 0; ci < s->Cin; ci++) {
                                dx[xo + ci] += gv * w[wo + ci];
                                dw[wo + ci] += gv * x[xo + ci];
                            }
                        }
                }
}

static double *to_d(const float *f, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}

/* Many row strips and column panels, K over one block, both strides: against the naive loops. */
Test(conv2d, naive_reference_multistrip)
{
    const dl_conv2d_shape shapes[] = {
        dl_conv2d_shape_make(1, 16, 15, 24, 40, 3, 1, 1),
        dl_conv2d_shape_make(2, 13, 16, 24, 33, 3, 2, 1),
        {1, 12, 11, 19, 36, 3, 2, 0, 0, 1, 1},
        {2, 9, 12, 21, 35, 3, 2, 1, 0, 2, 1},   /* every side padded differently */
        {1, 10, 9, 30, 20, 3, 1, 2, 0, 0, 1},
        dl_conv2d_shape_make(1, 4, 5, 64, 96, 3, 1, 1),  /* few pixels: the transposed GEMM */
        dl_conv2d_shape_make(2, 4, 4, 40, 70, 3, 2, 1),
    };
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const dl_conv2d_shape *s = &shapes[t];
        const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
        const size_t nx = (size_t)s->N * s->H * s->W * s->Cin, nw = (size_t)s->Cout * s->k * s->k * s->Cin;
        const size_t ny = (size_t)s->N * Ho * Wo * s->Cout;
        float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc((size_t)s->Cout * 4), *g = malloc(ny * 4);
        tu_fill_uniform(x, nx, 21 + t, -1.f, 1.f);
        tu_fill_uniform(w, nw, 22 + t, -0.2f, 0.2f);
        tu_fill_uniform(b, (size_t)s->Cout, 23 + t, -1.f, 1.f);
        tu_fill_uniform(g, ny, 24 + t, -1.f, 1.f);
        double *xd = to_d(x, nx), *wd = to_d(w, nw), *bd = to_d(b, (size_t)s->Cout), *gd = to_d(g, ny);
        double *yr = malloc(ny * 8), *dxr = malloc(nx * 8), *dwr = malloc(nw * 8);
        ref_forward(s, xd, wd, bd, yr);
        ref_backward(s, xd, wd, gd, dxr, dwr);
        float *y = tu_alloc_nan(ny), *dx = tu_alloc_nan(nx), *dw = tu_alloc_nan(nw);
        dl_cpu_conv2d_forward(tu_ctx(), s, x, w, b, y);
        dl_cpu_conv2d_backward(tu_ctx(), s, x, w, g, dx, dw, NULL);
        char label[96];
        snprintf(label, sizeof label, "conv2d naive #%zu y", t);
        tu_expect_close_d(y, yr, ny, 1e-5, label);
        snprintf(label, sizeof label, "conv2d naive #%zu dx", t);
        tu_expect_close_d(dx, dxr, nx, 1e-5, label);
        snprintf(label, sizeof label, "conv2d naive #%zu dw", t);
        tu_expect_close_d(dw, dwr, nw, 1e-5, label);
        free(x); free(w); free(b); free(g); free(xd); free(wd); free(bd); free(gd);
        free(yr); free(dxr); free(dwr); free(y); free(dx); free(dw);
    }
}

/* ---- finite differences in float64 of loss = sum(g .* conv(x, w, b)), params [x | w | b] ---- */
typedef struct { const dl_conv2d_shape *s; const double *g; double *y; } fd_ctx;

static double loss_fn(void *user, const double *p)
{
    const fd_ctx *c = user;
    const dl_conv2d_shape *s = c->s;
    const size_t nx = (size_t)s->N * s->H * s->W * s->Cin, nw = (size_t)s->Cout * s->k * s->k * s->Cin;
    ref_forward(s, p, p + nx, p + nx + nw, c->y);
    const size_t ny = (size_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s) * s->Cout;
    double L = 0;
    for (size_t i = 0; i < ny; i++) L += c->g[i] * c->y[i];
    return L;
}

Test(conv2d, finite_differences)
{
    const dl_conv2d_shape shapes[] = {
        dl_conv2d_shape_make(2, 4, 5, 2, 3, 3, 1, 1),
        {1, 5, 4, 3, 2, 3, 2, 0, 0, 1, 1}, /* VAE-style asymmetric pad, stride 2 */
        dl_conv2d_shape_make(1, 5, 5, 3, 2, 1, 2, 0),
        {1, 5, 6, 2, 3, 3, 2, 1, 0, 0, 2},
    };
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const dl_conv2d_shape *s = &shapes[t];
        const size_t nx = (size_t)s->N * s->H * s->W * s->Cin, nw = (size_t)s->Cout * s->k * s->k * s->Cin;
        const size_t ny = (size_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s) * s->Cout;
        const size_t np = nx + nw + (size_t)s->Cout;
        float *pf = malloc(np * 4), *gf = malloc(ny * 4);
        tu_fill_uniform(pf, np, 31 + t, -1.f, 1.f);
        tu_fill_uniform(gf, ny, 32 + t, -1.f, 1.f);
        double *p = to_d(pf, np), *g = to_d(gf, ny), *fd = malloc(np * 8), *yb = malloc(ny * 8);
        fd_ctx c = {s, g, yb};
        tu_fd_grad(loss_fn, &c, p, np, 1e-3, fd);
        float *dx = tu_alloc_nan(nx), *dw = tu_alloc_nan(nw), *db = tu_alloc_nan((size_t)s->Cout);
        dl_cpu_conv2d_backward(tu_ctx(), s, pf, pf + nx, gf, dx, dw, db);
        char label[96];
        /* the loss is linear in each parameter: central differences are exact up to rounding */
        snprintf(label, sizeof label, "conv2d fd #%zu dx", t);
        tu_expect_close_d(dx, fd, nx, 1e-5, label);
        snprintf(label, sizeof label, "conv2d fd #%zu dw", t);
        tu_expect_close_d(dw, fd + nx, nw, 1e-5, label);
        snprintf(label, sizeof label, "conv2d fd #%zu db", t);
        tu_expect_close_d(db, fd + nx + nw, (size_t)s->Cout, 1e-5, label);
        free(pf); free(gf); free(p); free(g); free(fd); free(yb); free(dx); free(dw); free(db);
    }
}
