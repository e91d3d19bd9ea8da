/* kcase_groupnorm.h - group-norm kernel case: forward (y, mean, rstd) and backward (dx, dgamma,
 * dbeta), with and without SiLU, of dl_cuda_groupnorm_* against dl_cpu_groupnorm_*; the backward
 * runs twice and must give the same bits (no order-dependent reduction). misalign > 0 shifts x,
 * y, dy and dx by that many elements off 16-byte alignment (the kernels' scalar path).
 * Header-only, C++. */
#ifndef DANLU_TESTS_KCASE_GROUPNORM_H
#define DANLU_TESTS_KCASE_GROUPNORM_H

#include "kcase.h"
#include "ops/cpu/groupnorm.h"

typedef struct kc_groupnorm_case {
    int N, HW, C, G, silu;
    dl_dtype dt;
    uint64_t seed;
    float offset; // added to x: a non-zero mean exercises the shifted statistics
    int misalign; // elements by which the activations start past a 16-byte boundary
} kc_groupnorm_case;

/* 1 when the n floats at d (device) equal h (host) bit for bit. */
static inline int kc_same_bits(const void *d, const void *h, size_t bytes)
{
    void *t = malloc(bytes + 1);
    cudaMemcpy(t, d, bytes, cudaMemcpyDeviceToHost);
    const int same = memcmp(t, h, bytes) == 0;
    free(t);
    return same;
}

static inline void kc_run_groupnorm(kc_env *e, const kc_groupnorm_case *c)
{
    const int N = c->N, HW = c->HW, C = c->C, G = c->G;
    const dl_dtype dt = c->dt;
    const double tol = kc_tol(dt);
    const size_t nx = (size_t)N * HW * C, ns = (size_t)N * G;
    dl_groupnorm_shape s = {N, HW, C, G, 1e-5f, c->silu};

    float *x = kc_host(nx), *dy = kc_host(nx), *gamma = kc_host(C), *beta = kc_host(C);
    kc_fill(x, nx, c->seed, -2.0f + c->offset, 2.0f + c->offset);
    kc_fill(dy, nx, c->seed + 1, -1.0f, 1.0f);
    kc_fill(gamma, C, c->seed + 2, 0.5f, 1.5f);
    kc_fill(beta, C, c->seed + 3, -0.5f, 0.5f);
    kc_quantize(x, nx, dt);
    kc_quantize(dy, nx, dt);

    float *y_ref = kc_host(nx), *mean_ref = kc_host(ns), *rstd_ref = kc_host(ns);
    float *dx_ref = kc_host(nx), *dg_ref = kc_host(C), *db_ref = kc_host(C);
    dl_cpu_groupnorm_forward(e->cpu, s, x, gamma, beta, y_ref, mean_ref, rstd_ref);
    dl_cpu_groupnorm_backward(e->cpu, s, x, gamma, beta, mean_ref, rstd_ref, dy, dx_ref, dg_ref,
                              db_ref);

    const size_t es = dl_dtype_size(dt), mis = (size_t)c->misalign * es;
    const size_t wsb = dl_cuda_groupnorm_workspace_size(N, HW, C, G);
    // allocations of nx + misalign elements, used from element misalign on
    float *xm = kc_host(nx + c->misalign), *dym = kc_host(nx + c->misalign);
    memcpy(xm + c->misalign, x, nx * sizeof(float));
    memcpy(dym + c->misalign, dy, nx * sizeof(float));
    void *a_x = kc_upload(xm, nx + c->misalign, dt), *a_dy = kc_upload(dym, nx + c->misalign, dt);
    void *a_y = kc_dalloc(nx * es + mis), *a_dx = kc_dalloc(nx * es + mis);
    void *d_x = (char *)a_x + mis, *d_dy = (char *)a_dy + mis, *d_y = (char *)a_y + mis;
    void *d_dx = (char *)a_dx + mis;
    float *d_g = (float *)kc_upload(gamma, C, DL_F32), *d_b = (float *)kc_upload(beta, C, DL_F32);
    void *d_ws = kc_dalloc(wsb);
    float *d_mean = (float *)kc_dalloc(ns * 4), *d_rstd = (float *)kc_dalloc(ns * 4);
    float *d_dg = (float *)kc_dalloc((size_t)C * 4), *d_db = (float *)kc_dalloc((size_t)C * 4);

    int rc = dl_cuda_groupnorm_forward(dt, N, HW, C, G, s.eps, s.silu, d_x, d_g, d_b, d_y, d_mean,
                                       d_rstd, d_ws, e->stream);
    kc_check_launch(e, "groupnorm forward", rc);
    kc_compare(e, "groupnorm y", d_y, y_ref, nx, dt, tol);
    kc_compare(e, "groupnorm mean", d_mean, mean_ref, ns, DL_F32, tol);
    kc_compare(e, "groupnorm rstd", d_rstd, rstd_ref, ns, DL_F32, tol);

    rc = dl_cuda_groupnorm_backward(dt, N, HW, C, G, s.silu, d_x, d_g, d_b, d_mean, d_rstd, d_dy,
                                    d_dx, d_dg, d_db, d_ws, e->stream);
    kc_check_launch(e, "groupnorm backward", rc);
    kc_compare(e, "groupnorm dx", d_dx, dx_ref, nx, dt, tol);
    kc_compare(e, "groupnorm dgamma", d_dg, dg_ref, C, DL_F32, tol);
    kc_compare(e, "groupnorm dbeta", d_db, db_ref, C, DL_F32, tol);
    kc_check_guard(e, "groupnorm workspace", d_ws, wsb);

    // the same call again (workspace as the first run left it): the same bits
    float *dx1 = kc_host(nx), *dg1 = kc_host(C), *db1 = kc_host(C);
    cudaMemcpy(dx1, d_dx, nx * es, cudaMemcpyDeviceToHost);
    cudaMemcpy(dg1, d_dg, (size_t)C * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(db1, d_db, (size_t)C * 4, cudaMemcpyDeviceToHost);
    rc = dl_cuda_groupnorm_backward(dt, N, HW, C, G, s.silu, d_x, d_g, d_b, d_mean, d_rstd, d_dy,
                                    d_dx, d_dg, d_db, d_ws, e->stream);
    kc_check_launch(e, "groupnorm backward again", rc);
    const int same = kc_same_bits(d_dx, dx1, nx * es) && kc_same_bits(d_dg, dg1, (size_t)C * 4) &&
                     kc_same_bits(d_db, db1, (size_t)C * 4);
    kc_note(e, "groupnorm backward run twice: same bits", same ? 0.0 : INFINITY, 0.0);
    free(dx1);
    free(dg1);
    free(db1);
    free(xm);
    free(dym);

    void *bufs[] = {a_x, a_dy, d_g, d_b, a_y, a_dx, d_ws, d_mean, d_rstd, d_dg, d_db};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    float *hb[] = {x, dy, gamma, beta, y_ref, mean_ref, rstd_ref, dx_ref, dg_ref, db_ref};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
}

#endif
