/* kcase_lora.h - LoRA kernel case: forward, backward (overwrite and accumulate), merge and
 * unmerge of dl_cuda_lora_* against a reference composed of the CPU GEMM (dl_sgemm):
 * y = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ, dx = dy·W + s·(dy·B)·A, dA = s·(dy·B)ᵀ·x, dB = s·dyᵀ·(x·Aᵀ).
 * Header-only, C++. */
#ifndef DANLU_TESTS_KCASE_LORA_H
#define DANLU_TESTS_KCASE_LORA_H

#include "kcase.h"
#include "ops/cpu/gemm.h"

typedef struct kc_lora_case {
    int M, in, out, rank;
    float s;
    int bias;      // 1: with a bias
    int conv;      // 1: through the 1x1-conv launchers with M = N·H·W, N = 1, W = 1
    dl_dtype dt;
    uint64_t seed;
} kc_lora_case;

static inline void kc_run_lora(kc_env *e, const kc_lora_case *c)
{
    const int64_t M = c->M;
    const int in = c->in, out = c->out, r = c->rank;
    const float s = c->s;
    const dl_dtype dt = c->dt;
    const double tol = kc_tol(dt);
    const size_t nx = (size_t)M * in, ny = (size_t)M * out, nw = (size_t)out * in;
    const size_t na = (size_t)r * in, nb = (size_t)out * r, nu = (size_t)M * r;

    float *x = kc_host(nx), *W = kc_host(nw), *bias = kc_host(out), *A = kc_host(na);
    float *B = kc_host(nb), *dy = kc_host(ny), *pre = kc_host(na + nb);
    kc_fill(x, nx, c->seed, -1.0f, 1.0f);
    kc_fill(W, nw, c->seed + 1, -0.5f, 0.5f);
    kc_fill(bias, out, c->seed + 2, -0.5f, 0.5f);
    kc_fill(A, na, c->seed + 3, -0.5f, 0.5f);
    kc_fill(B, nb, c->seed + 4, -0.5f, 0.5f); // non-zero B: the up path is exercised
    kc_fill(dy, ny, c->seed + 5, -1.0f, 1.0f);
    kc_fill(pre, na + nb, c->seed + 6, -1.0f, 1.0f);
    kc_quantize(x, nx, dt);
    kc_quantize(W, nw, dt);
    kc_quantize(bias, out, dt);
    kc_quantize(dy, ny, dt);

    // reference
    const dl_ctx *cpu = e->cpu;
    float *u = kc_host(nu), *v = kc_host(nu), *y_ref = kc_host(ny), *dx_ref = kc_host(nx);
    float *dA_ref = kc_host(na), *dB_ref = kc_host(nb), *Wm_ref = kc_host(nw);
    dl_sgemm(cpu, 0, 1, M, r, in, 1.0f, x, in, A, in, 0.0f, u, r);
    dl_sgemm(cpu, 0, 1, M, out, in, 1.0f, x, in, W, in, 0.0f, y_ref, out);
    dl_sgemm(cpu, 0, 1, M, out, r, s, u, r, B, r, 1.0f, y_ref, out);
    if (c->bias)
        for (int64_t m = 0; m < M; m++)
            for (int o = 0; o < out; o++) y_ref[m * out + o] += bias[o];
    dl_sgemm(cpu, 0, 0, M, r, out, 1.0f, dy, out, B, r, 0.0f, v, r);
    dl_sgemm(cpu, 1, 0, out, r, M, s, dy, out, u, r, 0.0f, dB_ref, r);
    dl_sgemm(cpu, 1, 0, r, in, M, s, v, r, x, in, 0.0f, dA_ref, in);
    dl_sgemm(cpu, 0, 0, M, in, out, 1.0f, dy, out, W, in, 0.0f, dx_ref, in);
    dl_sgemm(cpu, 0, 0, M, in, r, s, v, r, A, in, 1.0f, dx_ref, in);
    memcpy(Wm_ref, W, nw * sizeof(float));
    dl_sgemm(cpu, 0, 0, out, in, r, s, B, r, A, in, 1.0f, Wm_ref, in);
    kc_quantize(Wm_ref, nw, dt); // the merged weight is stored in dt

    const size_t es = dl_dtype_size(dt);
    void *d_x = kc_upload(x, nx, dt), *d_W = kc_upload(W, nw, dt), *d_dy = kc_upload(dy, ny, dt);
    void *d_bias = c->bias ? kc_upload(bias, out, dt) : NULL;
    float *d_A = (float *)kc_upload(A, na, DL_F32), *d_B = (float *)kc_upload(B, nb, DL_F32);
    const size_t wsb = dl_cuda_lora_workspace_size(M, in, out, r);
    float *d_u = (float *)kc_dalloc(nu * 4), *d_ws = (float *)kc_dalloc(wsb);
    float *d_dA = (float *)kc_dalloc(na * 4), *d_dB = (float *)kc_dalloc(nb * 4);
    void *d_y = kc_dalloc(ny * es), *d_dx = kc_dalloc(nx * es);

    int rc = c->conv ? dl_cuda_lora_conv1x1_forward(dt, e->blas, 1, c->M, 1, in, out, r, s, d_x, d_W,
                                                    d_bias, d_A, d_B, d_u, d_y, e->stream)
                     : dl_cuda_lora_forward(dt, e->blas, M, in, out, r, s, d_x, d_W, d_bias, d_A,
                                            d_B, d_u, d_y, e->stream);
    kc_check_launch(e, "lora forward", rc);
    kc_compare(e, "lora y", d_y, y_ref, ny, dt, tol);
    kc_compare(e, "lora u", d_u, u, nu, DL_F32, tol);

    rc = c->conv ? dl_cuda_lora_conv1x1_backward(dt, e->blas, 1, c->M, 1, in, out, r, s, d_x, d_W,
                                                 d_A, d_B, d_dy, d_dx, d_dA, d_dB, 0, d_ws,
                                                 e->stream)
                 : dl_cuda_lora_backward(dt, e->blas, M, in, out, r, s, d_x, d_W, d_A, d_B, d_dy,
                                         d_dx, d_dA, d_dB, 0, d_ws, e->stream);
    kc_check_launch(e, "lora backward", rc);
    kc_compare(e, "lora dx", d_dx, dx_ref, nx, dt, tol);
    kc_compare(e, "lora dA", d_dA, dA_ref, na, DL_F32, tol);
    kc_compare(e, "lora dB", d_dB, dB_ref, nb, DL_F32, tol);
    kc_check_guard(e, "lora ws", d_ws, wsb);

    // accumulate: dA, dB start from `pre` and receive pre + gradient; dx skipped (NULL)
    cudaMemcpy(d_dA, pre, na * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_dB, pre + na, nb * 4, cudaMemcpyHostToDevice);
    for (size_t i = 0; i < na; i++) dA_ref[i] += pre[i];
    for (size_t i = 0; i < nb; i++) dB_ref[i] += pre[na + i];
    rc = dl_cuda_lora_backward(dt, e->blas, M, in, out, r, s, d_x, d_W, d_A, d_B, d_dy, NULL, d_dA,
                               d_dB, 1, d_ws, e->stream);
    kc_check_launch(e, "lora backward accumulate", rc);
    kc_compare(e, "lora dA accumulated", d_dA, dA_ref, na, DL_F32, tol);
    kc_compare(e, "lora dB accumulated", d_dB, dB_ref, nb, DL_F32, tol);

    // merge then unmerge in place
    rc = dl_cuda_lora_merge(dt, out, in, r, s, d_W, d_A, d_B, e->stream);
    kc_check_launch(e, "lora merge", rc);
    kc_compare(e, "lora merged W", d_W, Wm_ref, nw, dt, tol);
    rc = dl_cuda_lora_unmerge(dt, out, in, r, s, d_W, d_A, d_B, e->stream);
    kc_check_launch(e, "lora unmerge", rc);
    kc_compare(e, "lora unmerged W", d_W, W, nw, dt, tol);

    void *bufs[] = {d_x, d_W, d_dy, d_bias, d_A, d_B, d_u, d_ws, d_dA, d_dB, d_y, d_dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) cudaFree(bufs[i]);
    float *hb[] = {x, W, bias, A, B, dy, pre, u, v, y_ref, dx_ref, dA_ref, dB_ref, Wm_ref};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
}

#endif
