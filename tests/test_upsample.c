/* test_upsample.c - nearest 2x upsampling against PyTorch golden data
 * (tests/gen/gen_upsample.py) and float64 finite differences. */
#include "ops/cpu/upsample.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TOL
#define TOL 1e-5 /* fp32 vs float64 (override with -DTOL to see the errors reached) */
#endif

Test(upsample, golden)
{
    static const struct { const char *name; int64_t N, H, W, C; } cases[] = {
        {"odd", 2, 5, 3, 7}, {"sd", 1, 4, 4, 320}, {"n1c1", 1, 1, 1, 1}};
    dl_st_file f;
    tu_golden_open(&f, "upsample");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128], label[128];
        int64_t N = cases[c].N, H = cases[c].H, W = cases[c].W, C = cases[c].C;
        int64_t sx[4] = {N, H, W, C}, sy[4] = {N, 2 * H, 2 * W, C};
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *x = tu_golden_f32_shape(&f, G("x"), 4, sx);
        float *yref = tu_golden_f32_shape(&f, G("y"), 4, sy);
        float *dy = tu_golden_f32_shape(&f, G("dy"), 4, sy);
        float *dxref = tu_golden_f32_shape(&f, G("dx"), 4, sx);
#undef G
        float *y = tu_alloc_nan((size_t)(4 * N * H * W * C)), *dx = tu_alloc_nan((size_t)(N * H * W * C));
        dl_cpu_upsample_nearest2x_forward(tu_ctx(), N, H, W, C, x, y);
        dl_cpu_upsample_nearest2x_backward(tu_ctx(), N, H, W, C, dy, dx);
        snprintf(label, sizeof label, "%s forward", cases[c].name);
        tu_expect_close(y, yref, (size_t)(4 * N * H * W * C), 0, label); /* copies: exact */
        snprintf(label, sizeof label, "%s backward", cases[c].name);
        tu_expect_close(dx, dxref, (size_t)(N * H * W * C), TOL, label);
        free(x), free(yref), free(dy), free(dxref), free(y), free(dx);
    }
    dl_st_close(&f);
}

typedef struct { int64_t N, H, W, C; const double *dy; } up_user;

/* L = sum dy[n, oh, ow, c] x[n, oh/2, ow/2, c], float64 */
static double up_loss(void *u, const double *x)
{
    const up_user *p = u;
    double L = 0;
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t oh = 0; oh < 2 * p->H; oh++)
            for (int64_t ow = 0; ow < 2 * p->W; ow++)
                for (int64_t c = 0; c < p->C; c++)
                    L += p->dy[((n * 2 * p->H + oh) * 2 * p->W + ow) * p->C + c] *
                         x[((n * p->H + oh / 2) * p->W + ow / 2) * p->C + c];
    return L;
}

Test(upsample, finite_differences)
{
    enum { N = 2, H = 3, W = 2, C = 3, NX = N * H * W * C };
    float dy[4 * NX], dx[NX];
    double dyd[4 * NX], x[NX], g[NX];
    tu_fill_uniform(dy, 4 * NX, 21, -1, 1);
    for (int i = 0; i < 4 * NX; i++) dyd[i] = dy[i];
    for (int i = 0; i < NX; i++) x[i] = 0.01 * i;
    up_user u = {N, H, W, C, dyd};
    tu_fd_grad(up_loss, &u, x, NX, 1e-4, g);
    dl_cpu_upsample_nearest2x_backward(tu_ctx(), N, H, W, C, dy, dx);
    tu_expect_close_d(dx, g, NX, TOL, "upsample backward vs FD");
}
