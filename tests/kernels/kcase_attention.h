/* kcase_attention.h - attention kernel case: forward (o, lse) and backward (dq, dk, dv) of
 * dl_cuda_attention_* against dl_cpu_attention_* on random inputs. Header-only, C++. */
#ifndef DANLU_TESTS_KCASE_ATTENTION_H
#define DANLU_TESTS_KCASE_ATTENTION_H

#include "kcase.h"
#include "ops/cpu/attention.h"

typedef struct kc_attention_case {
    int N, H, Tq, Tk, d;
    dl_dtype dt;
    uint64_t seed;
} kc_attention_case;

/* Runs one case; every check goes through e (failures counted in e->failures). */
static inline void kc_run_attention(kc_env *e, const kc_attention_case *c)
{
    const int N = c->N, H = c->H, Tq = c->Tq, Tk = c->Tk, d = c->d;
    const dl_dtype dt = c->dt;
    const double tol = kc_tol(dt);
    const size_t nq = (size_t)N * Tq * H * d, nk = (size_t)N * Tk * H * d;
    const size_t nl = (size_t)N * H * Tq;
    dl_attention_shape s = {N, Tq, Tk, H, d, 1.0f / sqrtf((float)d), 0};

    float *q = kc_host(nq), *k = kc_host(nk), *v = kc_host(nk), *dout = kc_host(nq);
    kc_fill(q, nq, c->seed, -1.5f, 1.5f);
    kc_fill(k, nk, c->seed + 1, -1.5f, 1.5f);
    kc_fill(v, nk, c->seed + 2, -1.0f, 1.0f);
    kc_fill(dout, nq, c->seed + 3, -1.0f, 1.0f);
    kc_quantize(q, nq, dt);
    kc_quantize(k, nk, dt);
    kc_quantize(v, nk, dt);
    kc_quantize(dout, nq, dt);

    float *o_ref = kc_host(nq), *lse_ref = kc_host(nl);
    float *dq_ref = kc_host(nq), *dk_ref = kc_host(nk), *dv_ref = kc_host(nk);
    dl_cpu_attention_forward(e->cpu, s, q, k, v, o_ref, lse_ref);
    dl_cpu_attention_backward(e->cpu, s, q, k, v, o_ref, lse_ref, dout, dq_ref, dk_ref, dv_ref);

    const size_t es = dl_dtype_size(dt);
    void *dq_ = kc_upload(q, nq, dt), *dk_ = kc_upload(k, nk, dt), *dv_ = kc_upload(v, nk, dt);
    void *ddo = kc_upload(dout, nq, dt);
    void *d_o = kc_dalloc(nq * es), *d_dq = kc_dalloc(nq * es);
    void *d_dk = kc_dalloc(nk * es), *d_dv = kc_dalloc(nk * es);
    float *d_lse = (float *)kc_dalloc(nl * 4), *d_delta = (float *)kc_dalloc(nl * 4);
    const int64_t ld = (int64_t)H * d;

    int rc = dl_cuda_attention_forward(dt, N, H, Tq, Tk, d, s.scale, dq_, ld, dk_, ld, dv_, ld, d_o,
                                       ld, d_lse, e->stream);
    kc_check_launch(e, "attention forward", rc);
    kc_compare(e, "attention o", d_o, o_ref, nq, dt, tol);
    kc_compare(e, "attention lse", d_lse, lse_ref, nl, DL_F32, tol);
#ifdef KC_HAVE_ATTENTION_TC
    // the tensor-core forward (real GPU builds): same outputs, bf16 only
    if (dt == DL_BF16) {
        void *d_otc = kc_dalloc(nq * es);
        float *d_lsetc = (float *)kc_dalloc(nl * 4);
        rc = dl_cuda_attention_forward_tc(dt, N, H, Tq, Tk, d, s.scale, dq_, ld, dk_, ld, dv_, ld,
                                          d_otc, ld, d_lsetc, e->stream);
        kc_check_launch(e, "attention forward tc", rc);
        kc_compare(e, "attention tc o", d_otc, o_ref, nq, dt, tol);
        kc_compare(e, "attention tc lse", d_lsetc, lse_ref, nl, DL_F32, tol);
        cudaFree(d_otc);
        cudaFree(d_lsetc);
    }
#endif

    rc = dl_cuda_attention_backward(dt, N, H, Tq, Tk, d, s.scale, dq_, ld, dk_, ld, dv_, ld, d_o,
                                    ddo, ld, d_lse, d_delta, d_dq, d_dk, d_dv, e->stream);
    kc_check_launch(e, "attention backward", rc);
    kc_compare(e, "attention dq", d_dq, dq_ref, nq, dt, tol);
    kc_compare(e, "attention dk", d_dk, dk_ref, nk, dt, tol);
    kc_compare(e, "attention dv", d_dv, dv_ref, nk, dt, tol);
    kc_check_guard(e, "attention delta", d_delta, nl * 4);
#ifdef KC_HAVE_ATTENTION_TC
    if (dt == DL_BF16) {
        void *t_dq = kc_dalloc(nq * es), *t_dk = kc_dalloc(nk * es), *t_dv = kc_dalloc(nk * es);
        rc = dl_cuda_attention_backward_tc(dt, N, H, Tq, Tk, d, s.scale, dq_, ld, dk_, ld, dv_, ld,
                                           d_o, ddo, ld, d_lse, d_delta, t_dq, t_dk, t_dv,
                                           e->stream);
        kc_check_launch(e, "attention backward tc", rc);
        kc_compare(e, "attention tc dq", t_dq, dq_ref, nq, dt, tol);
        kc_compare(e, "attention tc dk", t_dk, dk_ref, nk, dt, tol);
        kc_compare(e, "attention tc dv", t_dv, dv_ref, nk, dt, tol);
        cudaFree(t_dq);
        cudaFree(t_dk);
        cudaFree(t_dv);
    }
#endif

    void *bufs[] = {dq_, dk_, dv_, ddo, d_o, d_dq, d_dk, d_dv, d_lse, d_delta};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    float *hb[] = {q, k, v, dout, o_ref, lse_ref, dq_ref, dk_ref, dv_ref};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
}

#endif
