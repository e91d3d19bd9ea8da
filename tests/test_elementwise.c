/* test_elementwise.c - add, scale, axpy, broadcast add and channel concat against PyTorch
 * float64 golden data (tests/gen/gen_elementwise.py) and float64 finite differences. */
#include "ops/cpu/elementwise.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TOL
#define TOL 1e-5 /* fp32 vs float64 (override with -DTOL to see the errors reached) */
#endif

Test(elementwise, add_scale_axpy)
{
    enum { N = 40001 }; /* several threads' chunks and an odd tail */
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *y = tu_alloc_nan(N);
    double *ref = malloc(N * sizeof *ref);
    tu_fill_uniform(a, N, 1, -2, 2);
    tu_fill_uniform(b, N, 2, -2, 2);
    dl_cpu_add_forward(tu_ctx(), N, a, b, y);
    for (int i = 0; i < N; i++) ref[i] = (double)a[i] + b[i];
    tu_expect_close_d(y, ref, N, TOL, "add");
    dl_cpu_scale_forward(tu_ctx(), N, -0.37f, a, y);
    for (int i = 0; i < N; i++) ref[i] = -0.37 * a[i];
    tu_expect_close_d(y, ref, N, TOL, "scale");
    dl_cpu_axpy(tu_ctx(), N, 2.5f, b, y);
    for (int i = 0; i < N; i++) ref[i] += 2.5 * b[i];
    tu_expect_close_d(y, ref, N, TOL, "axpy");
    dl_cpu_add_forward(tu_ctx(), N, a, b, a); /* in place */
    for (int i = 0; i < N; i++) ref[i] = (double)(a[i] - b[i]) + b[i];
    tu_expect_close_d(a, ref, N, 1e-6, "add in place");
    free(a), free(b), free(y), free(ref);
}

Test(elementwise, golden_add_bcast)
{
    static const struct { const char *name; int64_t N, HW, C; int per_sample; } cases[] = {
        {"bias_odd", 2, 35, 37, 0}, {"bias_sd", 1, 64, 320, 0}, {"temb_odd", 2, 35, 37, 1},
        {"temb_sd", 2, 16, 320, 1}, {"temb_n1", 1, 9, 70, 1}};
    dl_st_file f;
    tu_golden_open(&f, "elementwise");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128], label[128];
        int64_t N = cases[c].N, HW = cases[c].HW, C = cases[c].C, ps = cases[c].per_sample;
        int64_t sx[3] = {N, HW, C}, sv[2] = {N, C}, nv = ps ? N * C : C, n = N * HW * C;
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *x = tu_golden_f32_shape(&f, G("x"), 3, sx);
        float *v = ps ? tu_golden_f32_shape(&f, G("v"), 2, sv) : tu_golden_f32_shape(&f, G("v"), 1, &C);
        float *dy = tu_golden_f32_shape(&f, G("dy"), 3, sx);
        float *yref = tu_golden_f32(&f, G("y"), NULL);
        float *dxref = tu_golden_f32(&f, G("dx"), NULL);
        float *dvref = tu_golden_f32(&f, G("dv"), NULL);
#undef G
        float *y = tu_alloc_nan((size_t)n), *dx = tu_alloc_nan((size_t)n), *dv = tu_alloc_nan((size_t)nv);
        dl_cpu_add_bcast_forward(tu_ctx(), N, HW, C, (int)ps, x, v, y);
        dl_cpu_add_bcast_backward(tu_ctx(), N, HW, C, (int)ps, dy, dx, dv);
        snprintf(label, sizeof label, "%s y", cases[c].name);
        tu_expect_close(y, yref, (size_t)n, TOL, label);
        snprintf(label, sizeof label, "%s dx", cases[c].name);
        tu_expect_close(dx, dxref, (size_t)n, TOL, label);
        snprintf(label, sizeof label, "%s dv", cases[c].name);
        tu_expect_close(dv, dvref, (size_t)nv, TOL, label);
        dl_cpu_add_bcast_forward(tu_ctx(), N, HW, C, (int)ps, x, v, x); /* in place */
        snprintf(label, sizeof label, "%s y in place", cases[c].name);
        tu_expect_close(x, yref, (size_t)n, TOL, label);
        free(x), free(v), free(dy), free(yref), free(dxref), free(dvref), free(y), free(dx), free(dv);
    }
    dl_st_close(&f);
}

Test(elementwise, golden_concat)
{
    static const struct { const char *name; int64_t M, C1, C2; } cases[] = {
        {"cat_odd", 2 * 5 * 3, 7, 11}, {"cat_sd", 16, 320, 640}};
    dl_st_file f;
    tu_golden_open(&f, "elementwise");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128];
        int64_t M = cases[c].M, C1 = cases[c].C1, C2 = cases[c].C2, n = M * (C1 + C2), na, nb;
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *a = tu_golden_f32(&f, G("a"), &na);
        float *b = tu_golden_f32(&f, G("b"), &nb);
        float *dy = tu_golden_f32(&f, G("dy"), NULL);
        float *yref = tu_golden_f32(&f, G("y"), NULL);
        float *daref = tu_golden_f32(&f, G("da"), NULL);
        float *dbref = tu_golden_f32(&f, G("db"), NULL);
#undef G
        cr_assert_eq(na, M * C1);
        cr_assert_eq(nb, M * C2);
        float *y = tu_alloc_nan((size_t)n), *da = tu_alloc_nan((size_t)na), *db = tu_alloc_nan((size_t)nb);
        dl_cpu_concat_channels_forward(tu_ctx(), M, C1, C2, a, b, y);
        dl_cpu_concat_channels_backward(tu_ctx(), M, C1, C2, dy, da, db);
        tu_expect_close(y, yref, (size_t)n, 0, cases[c].name); /* copies: exact */
        tu_expect_close(da, daref, (size_t)na, 0, cases[c].name);
        tu_expect_close(db, dbref, (size_t)nb, 0, cases[c].name);
        float *db2 = tu_alloc_nan((size_t)nb);
        dl_cpu_concat_channels_backward(tu_ctx(), M, C1, C2, dy, NULL, db2); /* skip da */
        tu_expect_close(db2, dbref, (size_t)nb, 0, "split with da NULL");
        free(a), free(b), free(dy), free(yref), free(daref), free(dbref), free(y), free(da), free(db), free(db2);
    }
    dl_st_close(&f);
}

/* ---- finite differences: L = sum dy * (x + bcast(v)) in float64 ---- */

typedef struct { int64_t N, HW, C; int per_sample; const double *x, *dy; } bc_user;

static double bcast_loss_v(void *u, const double *v)
{
    const bc_user *p = u;
    double L = 0;
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t q = 0; q < p->HW; q++)
            for (int64_t c = 0; c < p->C; c++) {
                int64_t i = (n * p->HW + q) * p->C + c;
                L += p->dy[i] * (p->x[i] + v[p->per_sample ? n * p->C + c : c]);
            }
    return L;
}

Test(elementwise, finite_differences_bcast)
{
    enum { N = 2, HW = 3, C = 5, NX = N * HW * C };
    float x[NX], dy[NX], dv[N * C];
    double xd[NX], dyd[NX], v[N * C], g[N * C];
    tu_fill_uniform(x, NX, 3, -1, 1);
    tu_fill_uniform(dy, NX, 4, -1, 1);
    for (int i = 0; i < NX; i++) xd[i] = x[i], dyd[i] = dy[i];
    for (int ps = 0; ps < 2; ps++) {
        int nv = ps ? N * C : C;
        for (int i = 0; i < nv; i++) v[i] = 0.1 * i;
        bc_user u = {N, HW, C, ps, xd, dyd};
        tu_fd_grad(bcast_loss_v, &u, v, (size_t)nv, 1e-4, g);
        dl_cpu_add_bcast_backward(tu_ctx(), N, HW, C, ps, dy, NULL, dv);
        tu_expect_close_d(dv, g, (size_t)nv, TOL, ps ? "dv per-sample vs FD" : "dv per-channel vs FD");
    }
}

/* concat: L = sum dy * cat(a, b); gradient with respect to a and b by FD */
typedef struct { int64_t M, C1, C2; const double *dy; } cat_user;

static double cat_loss(void *u, const double *ab) /* ab = [a (M*C1), b (M*C2)] */
{
    const cat_user *p = u;
    double L = 0;
    const int64_t C = p->C1 + p->C2;
    for (int64_t m = 0; m < p->M; m++) {
        for (int64_t c = 0; c < p->C1; c++) L += p->dy[m * C + c] * ab[m * p->C1 + c];
        for (int64_t c = 0; c < p->C2; c++) L += p->dy[m * C + p->C1 + c] * ab[p->M * p->C1 + m * p->C2 + c];
    }
    return L;
}

Test(elementwise, finite_differences_concat)
{
    enum { M = 3, C1 = 2, C2 = 3, NY = M * (C1 + C2) };
    float dy[NY], dab[NY];
    double dyd[NY], ab[NY], g[NY];
    tu_fill_uniform(dy, NY, 9, -1, 1);
    for (int i = 0; i < NY; i++) dyd[i] = dy[i], ab[i] = 0.3 * i;
    cat_user u = {M, C1, C2, dyd};
    tu_fd_grad(cat_loss, &u, ab, NY, 1e-4, g);
    dl_cpu_concat_channels_backward(tu_ctx(), M, C1, C2, dy, dab, dab + M * C1);
    tu_expect_close_d(dab, g, NY, TOL, "concat backward vs FD");
}
