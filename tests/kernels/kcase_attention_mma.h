/* kcase_attention_mma.h - a case of the tensor-core attention forward (bf16; by default
 * dl_cuda_attention_forward_mma) or backward (dl_cuda_attention_backward_mma, atomic or
 * deterministic dQ) against dl_cpu_attention_forward/backward on random inputs: Q, K, V and O
 * (dO, dQ, dK, dV alike) strided (ld = H·d + pad, a different pad per tensor, so ld > H·d and, with an odd pad, rows that
 * are not 16-byte aligned), the pad columns of the inputs NaN, every output poisoned with NaN
 * before the run and guarded after; o's pad columns must come back untouched. Header-only, C++. */
#ifndef DANLU_TESTS_KCASE_ATTENTION_MMA_H
#define DANLU_TESTS_KCASE_ATTENTION_MMA_H

#include "kcase.h"
#include "ops/cpu/attention.h"

typedef struct kc_attention_mma_case {
    int N, H, Tq, Tk, d;
    int pad;         // ldq = H·d + pad, ldk = H·d + 2·pad, ldv = H·d + 3·pad, ldo = H·d + pad
    float scale_mul; // scale = scale_mul / sqrt(d) (0 means 1)
    uint64_t seed;
} kc_attention_mma_case;

/* The launcher under test (the signature of dl_cuda_attention_forward_mma). */
typedef int (*kc_attention_fwd_fn)(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                   const void *q, int64_t ldq, const void *k, int64_t ldk,
                                   const void *v, int64_t ldv, void *o, int64_t ldo, float *lse,
                                   cudaStream_t stream);

/* Uploads x [N·T, H·d] (fp32) as bf16 rows of ld elements, the pad columns NaN (0xFFFF), into a
 * poisoned, guarded device buffer. */
static inline void *kc_upload_strided_bf16(const float *x, size_t rows, int64_t cols, int64_t ld)
{
    const size_t n = rows * (size_t)ld;
    uint16_t *h = (uint16_t *)malloc(n * 2 + 2);
    for (size_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++)
            h[r * ld + c] = c < cols ? dl_f32_to_bf16(x[r * cols + c]) : (uint16_t)0xFFFFu;
    void *d = kc_dalloc(n * 2);
    if (d) cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

/* Compares the head columns of a strided bf16 device buffer with ref [rows, cols]; reports the
 * relative L2 error, then "<label> pad" (inf if a pad column changed) and the guard. */
static inline void kc_compare_strided_bf16(kc_env *e, const char *label, const void *d,
                                           const float *ref, size_t rows, int64_t cols,
                                           int64_t ld)
{
    const size_t n = rows * (size_t)ld;
    uint16_t *h = (uint16_t *)malloc(n * 2 + 2);
    float *got = kc_host(rows * (size_t)cols);
    cudaMemcpy(h, d, n * 2, cudaMemcpyDeviceToHost);
    int pad_ok = 1;
    for (size_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++) {
            if (c < cols) got[r * cols + c] = dl_bf16_to_f32(h[r * ld + c]);
            else if (h[r * ld + c] != 0xFFFFu) pad_ok = 0;
        }
    kc_note(e, label, kc_rel_l2(got, ref, rows * (size_t)cols), kc_tol(DL_BF16));
    char buf[160];
    snprintf(buf, sizeof buf, "%s pad", label);
    kc_note(e, buf, pad_ok ? 0.0 : INFINITY, 0.0);
    kc_check_guard(e, label, d, n * 2);
    free(h);
    free(got);
}

/* Runs one forward case through fwd (NULL: dl_cuda_attention_forward_mma); every check goes
 * through e. */
static inline void kc_run_attention_mma(kc_env *e, const kc_attention_mma_case *c,
                                        kc_attention_fwd_fn fwd)
{
    const int N = c->N, H = c->H, Tq = c->Tq, Tk = c->Tk, d = c->d;
    const int64_t hd = (int64_t)H * d;
    const int64_t ldq = hd + c->pad, ldk = hd + 2 * c->pad, ldv = hd + 3 * c->pad, ldo = hd + c->pad;
    const size_t nq = (size_t)N * Tq * hd, nk = (size_t)N * Tk * hd, nl = (size_t)N * H * Tq;
    const float mul = c->scale_mul != 0.0f ? c->scale_mul : 1.0f;
    dl_attention_shape s = {N, Tq, Tk, H, d, mul / sqrtf((float)d), 0};
    if (!fwd) fwd = dl_cuda_attention_forward_mma;

    float *q = kc_host(nq), *k = kc_host(nk), *v = kc_host(nk);
    kc_fill(q, nq, c->seed, -1.5f, 1.5f);
    kc_fill(k, nk, c->seed + 1, -1.5f, 1.5f);
    kc_fill(v, nk, c->seed + 2, -1.0f, 1.0f);
    kc_quantize(q, nq, DL_BF16);
    kc_quantize(k, nk, DL_BF16);
    kc_quantize(v, nk, DL_BF16);
    float *o_ref = kc_host(nq), *lse_ref = kc_host(nl);
    dl_cpu_attention_forward(e->cpu, s, q, k, v, o_ref, lse_ref);

    void *d_q = kc_upload_strided_bf16(q, (size_t)N * Tq, hd, ldq);
    void *d_k = kc_upload_strided_bf16(k, (size_t)N * Tk, hd, ldk);
    void *d_v = kc_upload_strided_bf16(v, (size_t)N * Tk, hd, ldv);
    void *d_o = kc_dalloc((size_t)N * Tq * ldo * 2);
    float *d_lse = (float *)kc_dalloc(nl * 4);

    int rc = fwd(DL_BF16, N, H, Tq, Tk, d, s.scale, d_q, ldq, d_k, ldk, d_v, ldv, d_o, ldo, d_lse,
                 e->stream);
    kc_check_launch(e, "attention mma forward", rc);
    kc_compare_strided_bf16(e, "attention mma o", d_o, o_ref, (size_t)N * Tq, hd, ldo);
    // lse from exact bf16 products and fp32 sums: ~1e-7 under the emulator, ex2.approx on a GPU
    kc_compare(e, "attention mma lse", d_lse, lse_ref, nl, DL_F32, 1e-5);

    void *bufs[] = {d_q, d_k, d_v, d_o, d_lse};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    float *hb[] = {q, k, v, o_ref, lse_ref};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
}

/* Runs one backward case (o and lse from the CPU forward, o rounded to bf16); deterministic != 0
 * runs it twice and demands the same bits of dq, dk, dv. */
static inline void kc_run_attention_mma_backward(kc_env *e, const kc_attention_mma_case *c,
                                                 int deterministic)
{
    const int N = c->N, H = c->H, Tq = c->Tq, Tk = c->Tk, d = c->d;
    const int64_t hd = (int64_t)H * d;
    const int64_t ldq = hd + c->pad, ldk = hd + 2 * c->pad, ldv = hd + 3 * c->pad, ldo = hd + c->pad;
    const size_t nq = (size_t)N * Tq * hd, nk = (size_t)N * Tk * hd, nl = (size_t)N * H * Tq;
    const float mul = c->scale_mul != 0.0f ? c->scale_mul : 1.0f;
    dl_attention_shape s = {N, Tq, Tk, H, d, mul / sqrtf((float)d), 0};

    float *q = kc_host(nq), *k = kc_host(nk), *v = kc_host(nk), *dout = kc_host(nq);
    kc_fill(q, nq, c->seed, -1.5f, 1.5f);
    kc_fill(k, nk, c->seed + 1, -1.5f, 1.5f);
    kc_fill(v, nk, c->seed + 2, -1.0f, 1.0f);
    kc_fill(dout, nq, c->seed + 3, -1.0f, 1.0f);
    kc_quantize(q, nq, DL_BF16);
    kc_quantize(k, nk, DL_BF16);
    kc_quantize(v, nk, DL_BF16);
    kc_quantize(dout, nq, DL_BF16);
    float *o = kc_host(nq), *lse = kc_host(nl);
    float *dq_ref = kc_host(nq), *dk_ref = kc_host(nk), *dv_ref = kc_host(nk);
    dl_cpu_attention_forward(e->cpu, s, q, k, v, o, lse);
    kc_quantize(o, nq, DL_BF16); // what a bf16 forward hands over
    dl_cpu_attention_backward(e->cpu, s, q, k, v, o, lse, dout, dq_ref, dk_ref, dv_ref);

    void *d_q = kc_upload_strided_bf16(q, (size_t)N * Tq, hd, ldq);
    void *d_k = kc_upload_strided_bf16(k, (size_t)N * Tk, hd, ldk);
    void *d_v = kc_upload_strided_bf16(v, (size_t)N * Tk, hd, ldv);
    void *d_o = kc_upload_strided_bf16(o, (size_t)N * Tq, hd, ldo);
    void *d_do = kc_upload_strided_bf16(dout, (size_t)N * Tq, hd, ldo);
    float *d_lse = (float *)kc_upload(lse, nl, DL_F32);
    float *d_delta = (float *)kc_dalloc(nl * 4);
    const size_t wsb = dl_cuda_attention_backward_mma_workspace_size(N, H, Tq, Tk, d);
    void *d_ws = kc_dalloc(wsb);
    void *g[2][3] = {{NULL, NULL, NULL}, {NULL, NULL, NULL}}; // dq, dk, dv per run
    const size_t gbytes[3] = {(size_t)N * Tq * ldq * 2, (size_t)N * Tk * ldk * 2, (size_t)N * Tk * ldv * 2};

    for (int run = 0; run < (deterministic ? 2 : 1); run++) {
        for (int i = 0; i < 3; i++) g[run][i] = kc_dalloc(gbytes[i]);
        int rc = dl_cuda_attention_backward_mma(DL_BF16, N, H, Tq, Tk, d, s.scale, d_q, ldq, d_k, ldk, d_v,
                                                ldv, d_o, d_do, ldo, d_lse, d_delta, g[run][0], g[run][1],
                                                g[run][2], deterministic, d_ws, e->stream);
        kc_check_launch(e, deterministic ? "attention mma backward (deterministic)" : "attention mma backward",
                        rc);
    }
    kc_compare_strided_bf16(e, "attention mma dq", g[0][0], dq_ref, (size_t)N * Tq, hd, ldq);
    kc_compare_strided_bf16(e, "attention mma dk", g[0][1], dk_ref, (size_t)N * Tk, hd, ldk);
    kc_compare_strided_bf16(e, "attention mma dv", g[0][2], dv_ref, (size_t)N * Tk, hd, ldv);
    kc_check_guard(e, "attention mma delta", d_delta, nl * 4);
    kc_check_guard(e, "attention mma workspace", d_ws, wsb);
    if (deterministic) { // the same bits twice
        int same = 1;
        for (int i = 0; i < 3; i++) {
            unsigned char *a = (unsigned char *)malloc(gbytes[i]), *b = (unsigned char *)malloc(gbytes[i]);
            cudaMemcpy(a, g[0][i], gbytes[i], cudaMemcpyDeviceToHost);
            cudaMemcpy(b, g[1][i], gbytes[i], cudaMemcpyDeviceToHost);
            same &= memcmp(a, b, gbytes[i]) == 0;
            free(a);
            free(b);
        }
        kc_note(e, "attention mma backward deterministic", same ? 0.0 : INFINITY, 0.0);
    }

    for (int run = 0; run < 2; run++)
        for (int i = 0; i < 3; i++)
            if (g[run][i]) cudaFree(g[run][i]);
    void *bufs[] = {d_q, d_k, d_v, d_o, d_do, d_lse, d_delta, d_ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    float *hb[] = {q, k, v, dout, o, lse, dq_ref, dk_ref, dv_ref};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
}

#endif
