/* test_backend_ops.c - the device layer (host/device/dl_dev.h) on every device present (the
 * emulated one always; the real GPU when there is one) against the CPU reference ops: GEMM in
 * cuBLASLt's terms (every transpose pair, ld > rows, beta 0 over NaN, beta != 0, strided batch,
 * bias+GELU epilogue), NHWC convolution forward / backward-data / backward-filter in cuDNN's
 * terms, attention (library SDPA and danlu's kernels) forward and backward, group-norm and LoRA
 * kernels launched on a stream. Outputs start NaN-poisoned. SD1.5 channel counts and head dims
 * at reduced spatial/token sizes (emulation is slow). DANLU_BACKEND_OPS_TIME=1 prints GFLOP/s.
 * The emulated device's traps (host dereference faults, unordered cross-stream access) are
 * provoked at the end. */
#include "backend/backend.h"
#include "device/dl_dev.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/groupnorm.h"
#include "ops/cpu/lora.h"
#include "core/error.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---- */
static void fill(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 77;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        x[i] = lo + (hi - lo) * (float)(((s * 0x2545F4914F6CDD1Dull) >> 40) * (1.0 / 16777216.0));
    }
}
static void quant(float *x, size_t n, dl_dtype t)
{
    for (size_t i = 0; i < n; i++)
        x[i] = t == DL_BF16 ? dl_bf16_to_f32(dl_f32_to_bf16(x[i])) : t == DL_F16 ? dl_f16_to_f32(dl_f32_to_f16(x[i])) : x[i];
}
static double rel_l2(const float *got, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / (den > 1e-60 ? sqrt(den) : 1e-30);
}
static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static int timing(void) { const char *e = getenv("DANLU_BACKEND_OPS_TIME"); return e && *e == '1'; }

typedef struct env { dl_dev *dev; dl_dev_stream *s; } env;

static env env_open(dl_dev_kind k)
{
    env e = {dl_dev_open(k), NULL};
    cr_assert(e.dev, "dl_dev_open: %s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_create(e.dev, &e.s, "main"), DL_DEV_SUCCESS);
    return e;
}
static void env_close(env *e)
{
    dl_dev_stream_destroy(e->dev, e->s);
    dl_dev_close(e->dev);
}
/* device copy of n floats stored as t; NaN-poisoned first when h is NULL */
static void *up(env *e, const float *h, size_t n, dl_dtype t)
{
    const size_t es = dl_dtype_size(t);
    void *d = NULL, *tmp = malloc(n * es + 1);
    cr_assert_eq(dl_dev_malloc(e->dev, &d, n * es + 1), DL_DEV_SUCCESS, "%s", dl_error_msg());
    if (h) dl_convert_from_f32(tmp, t, h, n);
    else memset(tmp, 0xff, n * es);
    cr_assert_eq(dl_dev_memcpy_h2d(e->dev, d, tmp, n * es, e->s), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_synchronize(e->dev, e->s), DL_DEV_SUCCESS);
    free(tmp);
    return d;
}
static float *down(env *e, const void *d, size_t n, dl_dtype t)
{
    const size_t es = dl_dtype_size(t);
    void *tmp = malloc(n * es + 1);
    float *h = malloc(n * sizeof(float) + 4);
    cr_assert_eq(dl_dev_memcpy_d2h(e->dev, tmp, d, n * es, e->s), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_synchronize(e->dev, e->s), DL_DEV_SUCCESS);
    dl_convert_to_f32(h, tmp, t, n);
    free(tmp);
    return h;
}
static void expect_close(env *e, const char *what, const void *d, const float *ref, size_t n, dl_dtype t, double tol)
{
    float *h = down(e, d, n, t);
    double err = rel_l2(h, ref, n);
    cr_expect(err <= tol, "%s on %s: relative L2 %.3g over %.3g", what, dl_dev_name(e->dev), err, tol);
    free(h);
}
static double tol_of(dl_dtype t) { return t == DL_F32 ? 1e-5 : 1e-2; }

/* every device present */
#define FOR_EACH_DEVICE(k) for (int k = DL_DEV_EMULATED; k <= DL_DEV_REAL; k++) if (dl_dev_available((dl_dev_kind)k))

/* ---- GEMM ---- */
typedef struct gemm_case { int ta, tb; int64_t m, n, k, pad; int batch; float alpha, beta; dl_dtype abt, ct; int epi; } gemm_case;

static void run_gemm(env *e, const gemm_case *c)
{
    const int64_t m = c->m, n = c->n, k = c->k, batch = c->batch;
    const int64_t ar = c->ta ? k : m, ac = c->ta ? m : k, br = c->tb ? n : k, bc = c->tb ? k : n;
    const int64_t lda = ar + c->pad, ldb = br + c->pad, ldc = m + c->pad;
    const int64_t sa = lda * ac + 5, sb = ldb * bc + 3, sc = ldc * n + 7;
    const size_t na = (size_t)(sa * batch), nb = (size_t)(sb * batch), nc = (size_t)(sc * batch);
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *ref = malloc(nc * 4), *bias = malloc(m * 4);
    fill(A, na, 1 + m, -1, 1); fill(B, nb, 2 + n, -1, 1); fill(C, nc, 3 + k, -1, 1); fill(bias, m, 4, -0.5f, 0.5f);
    quant(A, na, c->abt); quant(B, nb, c->abt); quant(C, nc, c->ct); quant(bias, m, c->ct);
    memcpy(ref, C, nc * 4);
    for (int64_t b = 0; b < batch; b++) {
        if (c->beta == 0.0f) for (int64_t j = 0; j < n; j++) for (int64_t i = 0; i < m; i++) ref[b * sc + j * ldc + i] = 0.0f;
        /* column-major C = op(A)·op(B) is row-major Cᵀ = op(B)ᵀ·op(A)ᵀ */
        dl_sgemm(tu_ctx(), c->tb, c->ta, n, m, k, c->alpha, B + b * sb, ldb, A + b * sa, lda, c->beta, ref + b * sc, ldc);
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < m; i++) {
                float *v = &ref[b * sc + j * ldc + i];
                if (c->epi & 1) *v += bias[i];
                if (c->epi & 2) *v = 0.5f * *v * (1.0f + tanhf(0.7978845608f * (*v + 0.044715f * *v * *v * *v)));
            }
    }
    if (c->beta == 0.0f) for (size_t i = 0; i < nc; i++) C[i] = NAN; /* beta 0 must not read C */
    void *dA = up(e, A, na, c->abt), *dB = up(e, B, nb, c->abt), *dC = up(e, C, nc, c->ct), *dbias = up(e, bias, m, c->ct);
    dl_dev_gemm_desc g = {c->ta ? DL_DEV_OP_T : DL_DEV_OP_N, c->tb ? DL_DEV_OP_T : DL_DEV_OP_N, m, n, k, c->abt, c->ct,
                          lda, ldb, ldc, (int)batch, sa, sb, sc, (dl_dev_epilogue)c->epi, c->epi & 1 ? dbias : NULL};
    double t0 = now_s();
    dl_dev_status st = dl_dev_gemm(e->dev, e->s, &g, c->alpha, dA, dB, c->beta, dC, NULL, 0);
    dl_dev_stream_synchronize(e->dev, e->s);
    double t1 = now_s();
    cr_assert_eq(st, DL_DEV_SUCCESS, "%s", dl_error_msg());
    if (timing()) cr_log_info("gemm %c%c m%lld n%lld k%lld b%lld on %s: %.3f GFLOP/s", c->ta ? 'T' : 'N', c->tb ? 'T' : 'N',
                              (long long)m, (long long)n, (long long)k, (long long)batch, dl_dev_name(e->dev),
                              2e-9 * m * n * k * batch / (t1 - t0));
    /* compare the m x n blocks only (the padding keeps C's values: checked too, via ref) */
    float *h = down(e, dC, nc, c->ct);
    for (size_t i = 0; i < nc; i++)
        if (c->beta == 0.0f && isnan(h[i]) && isnan(C[i])) h[i] = ref[i] = 0.0f; /* untouched padding */
    double err = rel_l2(h, ref, nc);
    cr_expect(err <= tol_of(c->ct) + (c->abt != DL_F32 ? 1e-2 : 0), "gemm %c%c m%lld n%lld k%lld batch %lld beta %g on %s: "
              "relative L2 %.3g", c->ta ? 'T' : 'N', c->tb ? 'T' : 'N', (long long)m, (long long)n, (long long)k,
              (long long)batch, c->beta, dl_dev_name(e->dev), err);
    free(h);
    dl_dev_free(e->dev, dA); dl_dev_free(e->dev, dB); dl_dev_free(e->dev, dC); dl_dev_free(e->dev, dbias);
    free(A); free(B); free(C); free(ref); free(bias);
}

Test(backend_ops, gemm_cublaslt_semantics)
{
    FOR_EACH_DEVICE(k) {
        env e = env_open((dl_dev_kind)k);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                gemm_case c0 = {ta, tb, 37, 29, 23, 3, 1, 1.0f, 0.0f, DL_F32, DL_F32, 0};  /* beta 0 over NaN, ld > rows */
                gemm_case c1 = {ta, tb, 17, 13, 41, 0, 3, 0.75f, 0.5f, DL_F32, DL_F32, 0}; /* beta != 0, strided batch */
                run_gemm(&e, &c0);
                run_gemm(&e, &c1);
            }
        gemm_case sd = {1, 0, 320, 64, 320, 0, 1, 1.0f, 0.0f, DL_BF16, DL_BF16, 3}; /* SD1.5 projection, bias+GELU */
        gemm_case f16 = {0, 1, 64, 80, 40, 1, 2, 1.0f, 1.0f, DL_F16, DL_F32, 1};
        run_gemm(&e, &sd);
        run_gemm(&e, &f16);
        /* cuBLAS's parameter rules */
        dl_dev_gemm_desc bad = {DL_DEV_OP_N, DL_DEV_OP_N, 8, 8, 8, DL_F32, DL_F32, 7, 8, 8, 1, 0, 0, 0, 0, NULL};
        cr_expect_eq(dl_dev_gemm(e.dev, e.s, &bad, 1, NULL, NULL, 0, NULL, NULL, 0), DL_DEV_ERR_BAD_PARAM);
        env_close(&e);
    }
}

/* ---- convolution ---- */
typedef struct conv_case { int N, H, W, Ci, Co, k, stride, pad; dl_dtype t; } conv_case;

static void run_conv(env *e, const conv_case *c)
{
    dl_conv2d_shape s = dl_conv2d_shape_make(c->N, c->H, c->W, c->Ci, c->Co, c->k, c->stride, c->pad);
    const int Ho = dl_conv2d_out_h(&s), Wo = dl_conv2d_out_w(&s);
    const size_t nx = (size_t)c->N * c->H * c->W * c->Ci, nw = (size_t)c->Co * c->k * c->k * c->Ci,
                 ny = (size_t)c->N * Ho * Wo * c->Co;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4), *y = malloc(ny * 4), *dx = malloc(nx * 4),
          *dw = malloc(nw * 4);
    fill(x, nx, 11, -1, 1); fill(w, nw, 12, -0.2f, 0.2f); fill(dy, ny, 13, -1, 1);
    quant(x, nx, c->t); quant(w, nw, c->t); quant(dy, ny, c->t);
    dl_cpu_conv2d_forward(tu_ctx(), &s, x, w, NULL, y);
    dl_cpu_conv2d_backward(tu_ctx(), &s, x, w, dy, dx, dw, NULL);
    dl_dev_tensor_desc xd = {c->t, c->N, c->Ci, c->H, c->W}, yd;
    dl_dev_filter_desc wd = {c->t, c->Co, c->Ci, c->k, c->k};
    dl_dev_conv_desc cd = {c->pad, c->pad, c->stride, c->stride, 1, 1};
    cr_assert_eq(dl_dev_conv_output_desc(&xd, &wd, &cd, &yd), DL_DEV_SUCCESS);
    cr_assert(yd.h == Ho && yd.w == Wo && yd.c == c->Co);
    void *d_x = up(e, x, nx, c->t), *d_w = up(e, w, nw, c->t), *d_dy = up(e, dy, ny, c->t);
    void *d_y = up(e, NULL, ny, c->t), *d_dx = up(e, NULL, nx, c->t), *d_dw = up(e, NULL, nw, c->t);
    const dl_dev_conv_dir dirs[3] = {DL_DEV_CONV_FWD, DL_DEV_CONV_BWD_DATA, DL_DEV_CONV_BWD_FILTER};
    for (int i = 0; i < 3; i++) {
        int algo = -1;
        size_t wsb = 0;
        void *ws = NULL;
        cr_assert_eq(dl_dev_conv_algo(e->dev, dirs[i], &xd, &wd, &cd, &yd, &algo, &wsb), DL_DEV_SUCCESS, "%s",
                     dl_error_msg());
        if (wsb) {
            cr_assert_eq(dl_dev_malloc(e->dev, &ws, wsb), DL_DEV_SUCCESS);
            /* cuDNN: too small a workspace is BAD_PARAM */
            if (dl_dev_kind_of(e->dev) == DL_DEV_EMULATED && i == 1)
                cr_expect_eq(dl_dev_conv_backward_data(e->dev, e->s, 1, &wd, d_w, &yd, d_dy, &cd, algo, ws, wsb - 4, 0,
                                                       &xd, d_dx), DL_DEV_ERR_BAD_PARAM);
        }
        double t0 = now_s();
        dl_dev_status st = i == 0   ? dl_dev_conv_forward(e->dev, e->s, 1, &xd, d_x, &wd, d_w, &cd, algo, ws, wsb, 0, &yd, d_y)
                           : i == 1 ? dl_dev_conv_backward_data(e->dev, e->s, 1, &wd, d_w, &yd, d_dy, &cd, algo, ws, wsb, 0, &xd, d_dx)
                                    : dl_dev_conv_backward_filter(e->dev, e->s, 1, &xd, d_x, &yd, d_dy, &cd, algo, ws, wsb, 0, &wd, d_dw);
        dl_dev_stream_synchronize(e->dev, e->s);
        if (timing()) cr_log_info("conv dir %d %dx%dx%d->%d k%d s%d on %s: %.3f GFLOP/s", i, c->H, c->W, c->Ci, c->Co, c->k,
                                  c->stride, dl_dev_name(e->dev), 2e-9 * ny * c->Ci * c->k * c->k / (now_s() - t0));
        cr_assert_eq(st, DL_DEV_SUCCESS, "conv dir %d: %s", i, dl_error_msg());
        dl_dev_free(e->dev, ws);
    }
    char what[96];
    snprintf(what, sizeof what, "conv %dx%dx%d->%d k%d s%d", c->H, c->W, c->Ci, c->Co, c->k, c->stride);
    expect_close(e, what, d_y, y, ny, c->t, tol_of(c->t));
    expect_close(e, what, d_dx, dx, nx, c->t, tol_of(c->t));
    expect_close(e, what, d_dw, dw, nw, c->t, tol_of(c->t));
    /* a wrong output descriptor is BAD_PARAM */
    dl_dev_tensor_desc yb = yd;
    yb.h += 1;
    cr_expect_eq(dl_dev_conv_forward(e->dev, e->s, 1, &xd, d_x, &wd, d_w, &cd, 0, NULL, 0, 0, &yb, d_y), DL_DEV_ERR_BAD_PARAM);
    void *bufs[] = {d_x, d_w, d_dy, d_y, d_dx, d_dw};
    for (int i = 0; i < 6; i++) dl_dev_free(e->dev, bufs[i]);
    free(x); free(w); free(dy); free(y); free(dx); free(dw);
}

Test(backend_ops, conv_cudnn_semantics)
{
    const conv_case cases[] = {
        {2, 9, 7, 5, 6, 3, 1, 1, DL_F32},     {1, 9, 8, 4, 3, 3, 2, 1, DL_F32},
        {1, 5, 6, 8, 7, 1, 1, 0, DL_F32},     {1, 8, 8, 320, 320, 3, 1, 1, DL_F32}, /* SD1.5 resnet conv */
        {1, 4, 4, 1280, 1280, 1, 1, 0, DL_F32}, {1, 6, 6, 16, 8, 3, 1, 1, DL_BF16},
    };
    FOR_EACH_DEVICE(k) {
        env e = env_open((dl_dev_kind)k);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_conv(&e, &cases[i]);
        env_close(&e);
    }
}

/* ---- attention ---- */
typedef struct attn_case { int N, H, Tq, Tk, d, extra_ld; dl_dtype t; } attn_case;

static void run_attn(env *e, const attn_case *c, int kernel)
{
    const int N = c->N, H = c->H, Tq = c->Tq, Tk = c->Tk, D = c->d, hd = H * D, ld = hd + c->extra_ld;
    const size_t nq = (size_t)N * Tq * hd, nk = (size_t)N * Tk * hd, nl = (size_t)N * H * Tq;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *dout = malloc(nq * 4), *o = malloc(nq * 4),
          *lse = malloc(nl * 4), *dq = malloc(nq * 4), *dk = malloc(nk * 4), *dv = malloc(nk * 4);
    fill(q, nq, 21, -1, 1); fill(k, nk, 22, -1, 1); fill(v, nk, 23, -1, 1); fill(dout, nq, 24, -1, 1);
    quant(q, nq, c->t); quant(k, nk, c->t); quant(v, nk, c->t); quant(dout, nq, c->t);
    dl_attention_shape s = {N, Tq, Tk, H, D, 1.0f / sqrtf((float)D), 0};
    dl_cpu_attention_forward(tu_ctx(), s, q, k, v, o, lse);
    dl_cpu_attention_backward(tu_ctx(), s, q, k, v, o, lse, dout, dq, dk, dv);
    /* device layout with leading dimension ld (a slice of a fused projection when ld > H·d) */
    float *pq = malloc((size_t)N * Tq * ld * 4), *pk = malloc((size_t)N * Tk * ld * 4), *pv = malloc((size_t)N * Tk * ld * 4);
    for (size_t r = 0; r < (size_t)N * Tq; r++) memcpy(pq + r * ld, q + r * hd, hd * 4);
    for (size_t r = 0; r < (size_t)N * Tk; r++) { memcpy(pk + r * ld, k + r * hd, hd * 4); memcpy(pv + r * ld, v + r * hd, hd * 4); }
    void *d_q = up(e, pq, (size_t)N * Tq * ld, c->t), *d_k = up(e, pk, (size_t)N * Tk * ld, c->t),
         *d_v = up(e, pv, (size_t)N * Tk * ld, c->t), *d_do = up(e, dout, nq, c->t), *d_o = up(e, NULL, nq, c->t);
    float *d_l = up(e, NULL, nl, DL_F32), *d_del = up(e, NULL, nl, DL_F32);
    void *d_dq = up(e, NULL, (size_t)N * Tq * ld, c->t), *d_dk = up(e, NULL, (size_t)N * Tk * ld, c->t),
         *d_dv = up(e, NULL, (size_t)N * Tk * ld, c->t);
    dl_dev_sdpa_desc a = {c->t, N, H, Tq, Tk, D, s.scale, ld, ld, ld, hd};
    double t0 = now_s();
    dl_dev_status st = kernel ? dl_dev_attention_forward(e->dev, e->s, &a, d_q, d_k, d_v, d_o, d_l)
                              : dl_dev_sdpa_forward(e->dev, e->s, &a, d_q, d_k, d_v, d_o, d_l);
    dl_dev_stream_synchronize(e->dev, e->s);
    if (timing()) cr_log_info("attention%s fwd %dx%d h%d d%d on %s: %.3f GFLOP/s", kernel ? " kernel" : "", Tq, Tk, H, D,
                              dl_dev_name(e->dev), 4e-9 * N * H * Tq * Tk * D / (now_s() - t0));
    cr_assert_eq(st, DL_DEV_SUCCESS, "%s", dl_error_msg());
    st = kernel ? dl_dev_attention_backward(e->dev, e->s, &a, d_q, d_k, d_v, d_o, d_do, d_l, d_del, d_dq, d_dk, d_dv)
                : dl_dev_sdpa_backward(e->dev, e->s, &a, d_q, d_k, d_v, d_o, d_do, d_l, d_del, d_dq, d_dk, d_dv);
    cr_assert_eq(st, DL_DEV_SUCCESS, "%s", dl_error_msg());
    char what[96];
    snprintf(what, sizeof what, "attention%s %dx%d h%d d%d ld%d %s", kernel ? " kernel" : "", Tq, Tk, H, D, ld,
             dl_dtype_name(c->t));
    const double tol = tol_of(c->t);
    expect_close(e, what, d_o, o, nq, c->t, tol);
    expect_close(e, what, d_l, lse, nl, DL_F32, c->t == DL_F32 ? 1e-5 : 1e-2);
    float *g[3] = {down(e, d_dq, (size_t)N * Tq * ld, c->t), down(e, d_dk, (size_t)N * Tk * ld, c->t),
                   down(e, d_dv, (size_t)N * Tk * ld, c->t)};
    const float *ref[3] = {dq, dk, dv};
    const int T[3] = {Tq, Tk, Tk};
    for (int i = 0; i < 3; i++) {
        float *packed = malloc((size_t)N * T[i] * hd * 4);
        for (size_t r = 0; r < (size_t)N * T[i]; r++) memcpy(packed + r * hd, g[i] + r * ld, hd * 4);
        double err = rel_l2(packed, ref[i], (size_t)N * T[i] * hd);
        cr_expect(err <= 2 * tol, "%s: gradient %d relative L2 %.3g", what, i, err);
        free(packed);
        free(g[i]);
    }
    void *bufs[] = {d_q, d_k, d_v, d_do, d_o, d_l, d_del, d_dq, d_dk, d_dv};
    for (int i = 0; i < 10; i++) dl_dev_free(e->dev, bufs[i]);
    free(q); free(k); free(v); free(dout); free(o); free(lse); free(dq); free(dk); free(dv); free(pq); free(pk); free(pv);
}

Test(backend_ops, attention_sdpa_and_kernels)
{
    const attn_case cases[] = {
        {1, 8, 64, 64, 40, 0, DL_F32},   /* SD1.5 level 1: 8 heads x 40 (reduced tokens) */
        {1, 8, 16, 77, 80, 640, DL_F32}, /* level 2 cross-attention to 77 text tokens, fused-qkv ld */
        {1, 8, 16, 16, 160, 0, DL_F32},  /* level 3: d 160 */
        {2, 2, 24, 40, 40, 0, DL_BF16},
    };
    FOR_EACH_DEVICE(k) {
        env e = env_open((dl_dev_kind)k);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            run_attn(&e, &cases[i], 0);
            run_attn(&e, &cases[i], 1);
        }
        env_close(&e);
    }
}

/* The sm_80+ dispatch: an emulated device that claims compute capability 8.6 (DANLU_EMU_SM) runs
 * bf16 attention at every head dim of the mma kernels through them (forward and backward: two
 * calls counted per case, results against the CPU op at bf16 tolerance); f32 stays on the
 * portable kernels there, and the default emulated device (7.5) runs bf16 on them too. */
static env env_open_sm(const char *sm)
{
    const char *old = getenv("DANLU_EMU_SM");
    char *keep = old ? strdup(old) : NULL;
    if (sm) setenv("DANLU_EMU_SM", sm, 1);
    else unsetenv("DANLU_EMU_SM");
    env e = env_open(DL_DEV_EMULATED);
    if (keep) setenv("DANLU_EMU_SM", keep, 1);
    else unsetenv("DANLU_EMU_SM");
    free(keep);
    return e;
}
Test(backend_ops, attention_mma_dispatch)
{
    const attn_case mma[] = {
        {1, 2, 40, 77, 40, 0, DL_BF16},   /* SD1.5 level 1 heads, cross-attention to 77 tokens */
        {1, 2, 33, 33, 64, 8, DL_BF16},   /* d 64, fused-projection ld */
        {2, 1, 20, 45, 80, 0, DL_BF16},   /* level 2 */
        {1, 1, 17, 24, 160, 0, DL_BF16},  /* level 3 (backward: two CTAs per key block) */
    };
    env e = env_open_sm("86");
    cr_expect_eq(dl_dev_sm(e.dev), 86);
    for (size_t i = 0; i < sizeof mma / sizeof mma[0]; i++) {
        const dl_dev_sdpa_desc a = {DL_BF16, 1, 1, 1, 1, mma[i].d, 1.0f, mma[i].d, mma[i].d, mma[i].d, mma[i].d};
        cr_expect(dl_dev_attention_uses_mma(e.dev, &a), "d %d", mma[i].d);
        const unsigned long long before = dl_dev_attention_mma_calls(e.dev);
        run_attn(&e, &mma[i], 1);
        cr_expect_eq(dl_dev_attention_mma_calls(e.dev) - before, 2ull, "d %d: the mma kernels ran", mma[i].d);
    }
    const attn_case f32 = {1, 2, 24, 30, 64, 0, DL_F32};
    unsigned long long before = dl_dev_attention_mma_calls(e.dev);
    run_attn(&e, &f32, 1);
    cr_expect_eq(dl_dev_attention_mma_calls(e.dev), before, "f32 runs the portable kernels");
    env_close(&e);

    e = env_open_sm(NULL);
    cr_expect_eq(dl_dev_sm(e.dev), 75);
    const dl_dev_sdpa_desc a = {DL_BF16, 1, 1, 1, 1, 64, 1.0f, 64, 64, 64, 64};
    cr_expect(!dl_dev_attention_uses_mma(e.dev, &a));
    before = dl_dev_attention_mma_calls(e.dev);
    run_attn(&e, &mma[1], 1);
    cr_expect_eq(dl_dev_attention_mma_calls(e.dev), before, "sm 7.5: the portable kernels");
    env_close(&e);
}

/* The CUDA backend (fp32 tensors) on a device of compute capability 8.0 takes the mma kernels for
 * d 40 / 64 / 80 / 160: q, k, v (and o, dout) rounded to bf16, outputs widened back. Against the fp32
 * CPU op the error is bf16's (inputs rounded: ~4e-3 relative), hence 2e-2; the mma call counter
 * proves which kernels ran. */
static void backend_attn_case(const dl_ctx *ctx, dl_attention_shape s)
{
    const dl_backend *be = &dl_backend_cuda;
    const size_t hd = (size_t)s.H * s.d, nq = (size_t)s.N * s.Tq * hd, nk = (size_t)s.N * s.Tk * hd,
                 nl = (size_t)s.N * s.H * s.Tq;
    const size_t n[10] = {nq, nk, nk, nq, nl, nq, nq, nk, nk, 0};
    float *h[9], *d[9], *got = malloc(nq * 4 > nk * 4 ? nq * 4 : nk * 4);
    for (int i = 0; i < 9; i++) {
        h[i] = malloc(n[i] * 4);
        fill(h[i], n[i], 300 + (uint64_t)i, -1, 1);
        d[i] = be->alloc(ctx, n[i] * 4);
        cr_assert(d[i]);
        be->upload(ctx, d[i], h[i], n[i] * 4); /* outputs uploaded as noise: overwritten */
    }
    /* 0 q, 1 k, 2 v, 3 dout, 4 lse, 5 o, 6 dq, 7 dk, 8 dv */
    dl_cpu_attention_forward(tu_ctx(), s, h[0], h[1], h[2], h[5], h[4]);
    dl_cpu_attention_backward(tu_ctx(), s, h[0], h[1], h[2], h[5], h[4], h[3], h[6], h[7], h[8]);
    const unsigned long long before = dl_dev_attention_mma_calls(NULL);
    be->attention_forward(ctx, s, d[0], d[1], d[2], d[5], d[4]);
    be->attention_backward(ctx, s, d[0], d[1], d[2], d[5], d[4], d[3], d[6], d[7], d[8]);
    cr_assert_eq(be->synchronize(ctx), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(dl_dev_attention_mma_calls(NULL) - before, 2ull, "d %d: forward and backward on the mma kernels", s.d);
    const char *names[9] = {"", "", "", "", "lse", "o", "dq", "dk", "dv"};
    for (int i = 4; i < 9; i++) {
        cr_assert_eq(be->download(ctx, got, d[i], n[i] * 4), DL_OK);
        const double err = rel_l2(got, h[i], n[i]);
        cr_expect(err <= 2e-2, "d %d %s: relative L2 %.3g (bf16 inputs)", s.d, names[i], err);
    }
    for (int i = 0; i < 9; i++) {
        be->free(ctx, d[i]);
        free(h[i]);
    }
    free(got);
}
Test(backend_ops, backend_attention_on_sm80_takes_mma)
{
    const char *keys[2] = {"DANLU_CUDA_DEVICE", "DANLU_EMU_SM"}, *vals[2] = {"emulated", "80"};
    char *saved[2];
    for (int i = 0; i < 2; i++) {
        const char *o = getenv(keys[i]);
        saved[i] = o ? strdup(o) : NULL;
        setenv(keys[i], vals[i], 1);
    }
    dl_ctx ctx;
    cr_assert_eq(dl_ctx_init_backend(&ctx, 2, &dl_backend_cuda), DL_OK, "%s", dl_error_msg());
    backend_attn_case(&ctx, (dl_attention_shape){1, 48, 48, 2, 40, 1.0f / sqrtf(40.0f), 0});
    backend_attn_case(&ctx, (dl_attention_shape){1, 20, 30, 2, 64, 1.0f / sqrtf(64.0f), 0});
    backend_attn_case(&ctx, (dl_attention_shape){2, 16, 77, 1, 80, 1.0f / sqrtf(80.0f), 0});
    backend_attn_case(&ctx, (dl_attention_shape){1, 12, 20, 1, 160, 1.0f / sqrtf(160.0f), 0});
    dl_ctx_free(&ctx);
    for (int i = 0; i < 2; i++) {
        if (saved[i]) setenv(keys[i], saved[i], 1);
        else unsetenv(keys[i]);
        free(saved[i]);
    }
}

/* Finite differences of L = Σ dout·o against the device's attention backward (emulated, f32). */
Test(backend_ops, attention_gradient_finite_differences)
{
    env e = env_open(DL_DEV_EMULATED);
    const int N = 1, H = 2, T = 6, D = 40, hd = H * D;
    const size_t n = (size_t)N * T * hd;
    float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *dout = malloc(n * 4);
    fill(q, n, 31, -1, 1); fill(k, n, 32, -1, 1); fill(v, n, 33, -1, 1); fill(dout, n, 34, -1, 1);
    dl_dev_sdpa_desc a = {DL_F32, N, H, T, T, D, 1.0f / sqrtf((float)D), hd, hd, hd, hd};
    void *d_q = up(&e, q, n, DL_F32), *d_k = up(&e, k, n, DL_F32), *d_v = up(&e, v, n, DL_F32), *d_do = up(&e, dout, n, DL_F32);
    void *d_o = up(&e, NULL, n, DL_F32), *d_l = up(&e, NULL, (size_t)N * H * T, DL_F32), *d_del = up(&e, NULL, (size_t)N * H * T, DL_F32);
    void *d_dq = up(&e, NULL, n, DL_F32);
    cr_assert_eq(dl_dev_sdpa_forward(e.dev, e.s, &a, d_q, d_k, d_v, d_o, d_l), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_sdpa_backward(e.dev, e.s, &a, d_q, d_k, d_v, d_o, d_do, d_l, d_del, d_dq, NULL, NULL), DL_DEV_SUCCESS);
    float *dq = down(&e, d_dq, n, DL_F32);
    const float h = 1e-2f;
    for (size_t idx = 3; idx < n; idx += 97) {
        double L[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            float save = q[idx];
            q[idx] = save + (sgn ? -h : h);
            dl_dev_memcpy_h2d(e.dev, d_q, q, n * 4, e.s);
            q[idx] = save;
            dl_dev_sdpa_forward(e.dev, e.s, &a, d_q, d_k, d_v, d_o, d_l);
            float *o = down(&e, d_o, n, DL_F32);
            L[sgn] = 0;
            for (size_t i = 0; i < n; i++) L[sgn] += (double)dout[i] * o[i];
            free(o);
        }
        const double fd = (L[0] - L[1]) / (2 * h);
        cr_expect(fabs(fd - dq[idx]) <= 2e-3 * (1 + fabs(fd)), "dq[%zu]: backward %g, finite difference %g", idx, dq[idx], fd);
    }
    free(dq); free(q); free(k); free(v); free(dout);
    env_close(&e);
}

/* ---- danlu's kernels on a stream through the device layer ---- */
Test(backend_ops, kernels_groupnorm_lora_on_stream)
{
    FOR_EACH_DEVICE(kd) {
        env e = env_open((dl_dev_kind)kd);
        /* group-norm, SD1.5's 320 channels in 32 groups, SiLU */
        const int N = 1, HW = 64, C = 320, G = 32;
        const size_t nx = (size_t)N * HW * C;
        float *x = malloc(nx * 4), *dy = malloc(nx * 4), *gm = malloc(C * 4), *bt = malloc(C * 4), *y = malloc(nx * 4),
              *mean = malloc(N * G * 4), *rstd = malloc(N * G * 4), *dx = malloc(nx * 4), *dg = malloc(C * 4), *db = malloc(C * 4);
        fill(x, nx, 41, -2, 2); fill(dy, nx, 42, -1, 1); fill(gm, C, 43, 0.5f, 1.5f); fill(bt, C, 44, -0.5f, 0.5f);
        dl_groupnorm_shape s = {N, HW, C, G, 1e-5f, 1};
        dl_cpu_groupnorm_forward(tu_ctx(), s, x, gm, bt, y, mean, rstd);
        dl_cpu_groupnorm_backward(tu_ctx(), s, x, gm, bt, mean, rstd, dy, dx, dg, db);
        void *d_x = up(&e, x, nx, DL_F32), *d_dy = up(&e, dy, nx, DL_F32), *d_g = up(&e, gm, C, DL_F32), *d_b = up(&e, bt, C, DL_F32);
        void *d_y = up(&e, NULL, nx, DL_F32), *d_m = up(&e, NULL, N * G, DL_F32), *d_r = up(&e, NULL, N * G, DL_F32);
        void *d_dx = up(&e, NULL, nx, DL_F32), *d_dg = up(&e, NULL, C, DL_F32), *d_db = up(&e, NULL, C, DL_F32), *d_ws = NULL;
        size_t wsb = dl_dev_groupnorm_workspace_size(N, HW, C, G);
        cr_assert_eq(dl_dev_malloc(e.dev, &d_ws, wsb ? wsb : 1), DL_DEV_SUCCESS);
        cr_assert_eq(dl_dev_groupnorm_forward(e.dev, e.s, DL_F32, N, HW, C, G, 1e-5f, 1, d_x, d_g, d_b, d_y, d_m, d_r, d_ws),
                     DL_DEV_SUCCESS, "%s", dl_error_msg());
        cr_assert_eq(dl_dev_groupnorm_backward(e.dev, e.s, DL_F32, N, HW, C, G, 1, d_x, d_g, d_b, d_m, d_r, d_dy, d_dx, d_dg,
                                               d_db, d_ws), DL_DEV_SUCCESS, "%s", dl_error_msg());
        expect_close(&e, "groupnorm y", d_y, y, nx, DL_F32, 1e-5);
        expect_close(&e, "groupnorm dx", d_dx, dx, nx, DL_F32, 1e-5);
        expect_close(&e, "groupnorm dgamma", d_dg, dg, C, DL_F32, 1e-5);
        /* LoRA linear, 320 -> 320, rank 8 */
        const int M = 48, in = 320, out = 320, r = 8;
        const float sc = 0.5f;
        float *lx = malloc((size_t)M * in * 4), *W = malloc((size_t)out * in * 4), *A = malloc(r * in * 4), *B = malloc(out * r * 4),
              *ly = malloc((size_t)M * out * 4), *hh = malloc(M * r * 4), *ldy = malloc((size_t)M * out * 4), *dh = malloc(M * r * 4),
              *ldx = malloc((size_t)M * in * 4), *dA = malloc(r * in * 4), *dB = malloc(out * r * 4);
        fill(lx, (size_t)M * in, 51, -1, 1); fill(W, (size_t)out * in, 52, -0.1f, 0.1f); fill(A, r * in, 53, -0.1f, 0.1f);
        fill(B, out * r, 54, -0.1f, 0.1f); fill(ldy, (size_t)M * out, 55, -1, 1);
        dl_cpu_lora_linear_forward(tu_ctx(), M, in, out, r, sc, lx, W, NULL, A, B, hh, ly);
        dl_cpu_lora_linear_backward(tu_ctx(), M, in, out, r, sc, lx, W, A, B, hh, ldy, dh, ldx, dA, dB);
        void *e_x = up(&e, lx, (size_t)M * in, DL_F32), *e_W = up(&e, W, (size_t)out * in, DL_F32), *e_A = up(&e, A, r * in, DL_F32),
             *e_B = up(&e, B, out * r, DL_F32), *e_dy = up(&e, ldy, (size_t)M * out, DL_F32), *e_u = up(&e, NULL, M * r, DL_F32),
             *e_y = up(&e, NULL, (size_t)M * out, DL_F32), *e_dx = up(&e, NULL, (size_t)M * in, DL_F32),
             *e_dA = up(&e, NULL, r * in, DL_F32), *e_dB = up(&e, NULL, out * r, DL_F32), *e_ws = NULL;
        cr_assert_eq(dl_dev_malloc(e.dev, &e_ws, dl_dev_lora_workspace_size(M, in, out, r)), DL_DEV_SUCCESS);
        cr_assert_eq(dl_dev_lora_forward(e.dev, e.s, DL_F32, M, in, out, r, sc, e_x, e_W, NULL, e_A, e_B, e_u, e_y),
                     DL_DEV_SUCCESS, "%s", dl_error_msg());
        cr_assert_eq(dl_dev_lora_backward(e.dev, e.s, DL_F32, M, in, out, r, sc, e_x, e_W, e_A, e_B, e_dy, e_dx, e_dA, e_dB, 0,
                                          e_ws), DL_DEV_SUCCESS, "%s", dl_error_msg());
        expect_close(&e, "lora y", e_y, ly, (size_t)M * out, DL_F32, 1e-5);
        expect_close(&e, "lora dx", e_dx, ldx, (size_t)M * in, DL_F32, 1e-5);
        expect_close(&e, "lora dA", e_dA, dA, r * in, DL_F32, 1e-5);
        expect_close(&e, "lora dB", e_dB, dB, out * r, DL_F32, 1e-5);
        env_close(&e); /* the device's memory goes with it */
        free(x); free(dy); free(gm); free(bt); free(y); free(mean); free(rstd); free(dx); free(dg); free(db);
        free(lx); free(W); free(A); free(B); free(ly); free(hh); free(ldy); free(dh); free(ldx); free(dA); free(dB);
    }
}

/* ---- the emulated device's traps ---- */

/* Runs fn(arg) in a child; returns its stderr (caller frees) and whether it ended abnormally. */
static char *in_child(void (*fn)(void *), void *arg, int *abnormal)
{
    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        fn(arg);
        _exit(0);
    }
    close(fd[1]);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while (len + 1 < cap && (r = read(fd[0], buf + len, cap - 1 - len)) > 0) len += (size_t)r;
    buf[len] = 0;
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    *abnormal = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
    return buf;
}

static void deref(void *p) { volatile float f = *(volatile float *)p; (void)f; }

Test(device_traps, host_dereference_of_device_pointer_faults)
{
    env e = env_open(DL_DEV_EMULATED);
    void *p = NULL;
    cr_assert_eq(dl_dev_malloc(e.dev, &p, 4096), DL_DEV_SUCCESS);
    int abnormal = 0;
    char *err = in_child(deref, (char *)p + 16, &abnormal);
    cr_expect(abnormal, "the child survived a host read of device memory");
    cr_expect(strstr(err, "host code dereferenced device pointer") && strstr(err, "allocation #1"), "stderr: %s", err);
    free(err);
    env_close(&e);
}

Test(device_traps, unordered_cross_stream_read_is_an_error)
{
    env e = env_open(DL_DEV_EMULATED);
    dl_dev_stream *prod, *cons;
    dl_dev_event *ev;
    cr_assert_eq(dl_dev_stream_create(e.dev, &prod, "producer"), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_stream_create(e.dev, &cons, "consumer"), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_event_create(e.dev, &ev), DL_DEV_SUCCESS);
    void *a = NULL, *b = NULL;
    float h[256];
    cr_assert_eq(dl_dev_malloc(e.dev, &a, sizeof h), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_malloc(e.dev, &b, sizeof h), DL_DEV_SUCCESS);
    /* written on the producer, read on the consumer with nothing between: an error */
    cr_assert_eq(dl_dev_memset(e.dev, a, 0, 512, prod), DL_DEV_SUCCESS);
    cr_expect_eq(dl_dev_memcpy_d2d(e.dev, b, a, sizeof h, cons), DL_DEV_ERR_UNORDERED);
    const char *m = dl_error_msg();
    cr_expect(strstr(m, "'producer'") && strstr(m, "'consumer'") && strstr(m, "allocation #1") &&
              strstr(m, "dl_dev_memset") && strstr(m, "dl_dev_memcpy_d2d"), "message: %s", m);
    /* a write of disjoint bytes of the same allocation is fine; an overlapping one is not */
    cr_expect_eq(dl_dev_memset(e.dev, (char *)a + 512, 1, 512, cons), DL_DEV_SUCCESS);
    cr_expect_eq(dl_dev_memset(e.dev, (char *)a + 256, 1, 512, cons), DL_DEV_ERR_UNORDERED);
    /* event recorded after the write and waited for: ordered */
    cr_assert_eq(dl_dev_event_record(e.dev, ev, prod), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_stream_wait_event(e.dev, cons, ev), DL_DEV_SUCCESS);
    cr_expect_eq(dl_dev_memcpy_d2d(e.dev, b, a, sizeof h, cons), DL_DEV_SUCCESS, "%s", dl_error_msg());
    /* a kernel on the producer reading what the consumer wrote, then host synchronisation */
    cr_expect_eq(dl_dev_memcpy_d2h(e.dev, h, b, sizeof h, prod), DL_DEV_ERR_UNORDERED);
    cr_assert_eq(dl_dev_stream_synchronize(e.dev, cons), DL_DEV_SUCCESS);
    cr_expect_eq(dl_dev_memcpy_d2h(e.dev, h, b, sizeof h, prod), DL_DEV_SUCCESS, "%s", dl_error_msg());
    /* out of bounds and foreign pointers */
    cr_expect_eq(dl_dev_memset(e.dev, a, 0, sizeof h + 1, prod), DL_DEV_ERR_BAD_POINTER);
    cr_expect_eq(dl_dev_memset(e.dev, h, 0, 4, prod), DL_DEV_ERR_BAD_POINTER);
    dl_dev_event_destroy(e.dev, ev);
    dl_dev_stream_destroy(e.dev, prod);
    dl_dev_stream_destroy(e.dev, cons);
    env_close(&e);
}
