/* test_linear.c - linear forward/backward against PyTorch float64 golden data and float64
 * finite differences of a naive reference. */
#include "ops/cpu/linear.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { const char *name; int64_t M, in, out; int bias; } linear_case;

static const linear_case CASES[] = {
    {"tiny", 1, 7, 5, 1}, {"odd", 37, 45, 19, 1}, {"nobias", 64, 64, 96, 0}, {"sdlike", 130, 40, 70, 1},
};

Test(linear, golden)
{
    dl_st_file f;
    tu_golden_open(&f, "linear");
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
        const linear_case *lc = &CASES[c];
        char key[96], label[96];
#define G(t, ...) (snprintf(key, sizeof key, "%s.%s", lc->name, t), \
                   tu_golden_f32_shape(&f, key, __VA_ARGS__))
        int64_t sx[2] = {lc->M, lc->in}, sw[2] = {lc->out, lc->in}, sy[2] = {lc->M, lc->out}, sb[1] = {lc->out};
        float *x = G("x", 2, sx), *w = G("w", 2, sw), *dy = G("dy", 2, sy), *y_ref = G("y", 2, sy);
        float *dx_ref = G("dx", 2, sx), *dw_ref = G("dw", 2, sw), *db_ref = G("db", 1, sb);
        float *b = lc->bias ? G("b", 1, sb) : NULL;
#undef G
        float *y = tu_alloc_nan((size_t)(lc->M * lc->out));
        float *dx = tu_alloc_nan((size_t)(lc->M * lc->in));
        float *dw = tu_alloc_nan((size_t)(lc->out * lc->in));
        float *db = tu_alloc_nan((size_t)lc->out);
        dl_cpu_linear_forward(tu_ctx(), lc->M, lc->in, lc->out, x, w, b, y);
        dl_cpu_linear_backward(tu_ctx(), lc->M, lc->in, lc->out, x, w, dy, dx, dw, db);
        snprintf(label, sizeof label, "linear %s y", lc->name);
        tu_expect_close(y, y_ref, (size_t)(lc->M * lc->out), 1e-5, label);
        snprintf(label, sizeof label, "linear %s dx", lc->name);
        tu_expect_close(dx, dx_ref, (size_t)(lc->M * lc->in), 1e-5, label);
        snprintf(label, sizeof label, "linear %s dw", lc->name);
        tu_expect_close(dw, dw_ref, (size_t)(lc->out * lc->in), 1e-5, label);
        snprintf(label, sizeof label, "linear %s db", lc->name);
        tu_expect_close(db, db_ref, (size_t)lc->out, 1e-5, label);

        /* NULL gradients are skipped and leave the others intact */
        float *dw2 = tu_alloc_nan((size_t)(lc->out * lc->in));
        dl_cpu_linear_backward(tu_ctx(), lc->M, lc->in, lc->out, x, w, dy, NULL, dw2, NULL);
        snprintf(label, sizeof label, "linear %s dw alone", lc->name);
        tu_expect_close(dw2, dw_ref, (size_t)(lc->out * lc->in), 1e-5, label);
        free(dw2);
        free(x); free(w); free(dy); free(y_ref); free(dx_ref); free(dw_ref); free(db_ref); free(b);
        free(y); free(dx); free(dw); free(db);
    }
    dl_st_close(&f);
}

/* ---- float64 finite differences: loss = sum(g .* (x w^T + b)) over packed params [x | w | b] ---- */
typedef struct { int M, in, out; const double *g; } fd_ctx;

static double loss_fn(void *user, const double *p)
{
    const fd_ctx *c = user;
    const double *x = p, *w = p + c->M * c->in, *b = w + c->out * c->in;
    double L = 0;
    for (int m = 0; m < c->M; m++)
        for (int o = 0; o < c->out; o++) {
            double acc = b[o];
            for (int i = 0; i < c->in; i++) acc += x[m * c->in + i] * w[o * c->in + i];
            L += c->g[m * c->out + o] * acc;
        }
    return L;
}

Test(linear, finite_differences)
{
    const int M = 3, in = 5, out = 4;
    const int nx = M * in, nw = out * in, np = nx + nw + out;
    float pf[64], gf[16];
    double p[64], g[16], fd[64];
    tu_fill_uniform(pf, (size_t)np, 11, -1.f, 1.f);
    tu_fill_uniform(gf, (size_t)(M * out), 12, -1.f, 1.f);
    for (int i = 0; i < np; i++) p[i] = pf[i];
    for (int i = 0; i < M * out; i++) g[i] = gf[i];
    fd_ctx c = {M, in, out, g};
    tu_fd_grad(loss_fn, &c, p, (size_t)np, 1e-3, fd);
    float *y = tu_alloc_nan((size_t)(M * out));
    float dx[16], dw[32], db[8];
    dl_cpu_linear_forward(tu_ctx(), M, in, out, pf, pf + nx, pf + nx + nw, y);
    double yref[16];
    for (int m = 0; m < M; m++)
        for (int o = 0; o < out; o++) {
            double acc = p[nx + nw + o];
            for (int i = 0; i < in; i++) acc += p[m * in + i] * p[nx + o * in + i];
            yref[m * out + o] = acc;
        }
    tu_expect_close_d(y, yref, (size_t)(M * out), 1e-6, "linear fd forward");
    dl_cpu_linear_backward(tu_ctx(), M, in, out, pf, pf + nx, gf, dx, dw, db);
    /* the loss is linear in each parameter, so the central difference is exact up to rounding */
    tu_expect_close_d(dx, fd, (size_t)nx, 1e-5, "linear fd dx");
    tu_expect_close_d(dw, fd + nx, (size_t)nw, 1e-5, "linear fd dw");
    tu_expect_close_d(db, fd + nx + nw, (size_t)out, 1e-5, "linear fd db");
    free(y);
}
