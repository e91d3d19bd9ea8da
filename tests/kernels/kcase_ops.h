/* kcase_ops.h - cases of the element-wise, normalisation, loss and optimiser kernels
 * (kernels/ops.cu) against the CPU ops they implement (host/ops/cpu/): activations and GEGLU,
 * add / scale / axpy, broadcast add, channel concat, upsampling, padding, timestep and token
 * embeddings, layer norm, softmax, MSE loss, AdamW and gradient clipping. Every output is
 * poisoned with NaN and followed by guard bytes; copies are compared bit for bit, arithmetic by
 * relative L2 (fp32 1e-6; bf16 storage 1e-2; fp32 results reduced from bf16 inputs 1e-6, the
 * CPU sees the same rounded inputs); reductions run twice and must give the same bits. `off`
 * shifts every buffer by one element off 16-byte alignment: the launchers then take their
 * one-element path instead of the 16-byte one. Header-only, C++. */
#ifndef DANLU_TESTS_KCASE_OPS_H
#define DANLU_TESTS_KCASE_OPS_H

#include "kcase.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/adamw.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/loss.h"
#include "ops/cpu/softmax.h"
#include "ops/cpu/upsample.h"

#define KC_OPS_TOL_F32 1e-6 // relative L2, fp32 storage (and fp32 results of any storage)

static inline double kc_ops_tol(dl_dtype dt) { return dt == DL_BF16 ? KC_TOL_BF16 : KC_OPS_TOL_F32; }
static inline const char *kc_dtn(dl_dtype dt) { return dt == DL_BF16 ? "bf16" : "f32"; }

/* A device buffer of n elements of dt, `off` elements past a 256-byte aligned allocation: body
 * NaN-poisoned (or h uploaded), KC_GUARD sentinel bytes right after the n elements. */
typedef struct kc_dbuf {
    void *base, *p;
    size_t n;
    dl_dtype dt;
} kc_dbuf;

static inline kc_dbuf kc_dbuf_new(const float *h, size_t n, dl_dtype dt, int off)
{
    const size_t es = dl_dtype_size(dt);
    kc_dbuf b = {kc_dalloc((n + off) * es), NULL, n, dt};
    if (!b.base) return b;
    b.p = (char *)b.base + (size_t)off * es;
    if (h && n) {
        void *tmp = malloc(n * es);
        dl_convert_from_f32(tmp, dt, h, n);
        cudaMemcpy(b.p, tmp, n * es, cudaMemcpyHostToDevice);
        free(tmp);
    }
    return b;
}
static inline void kc_dbuf_free(kc_dbuf *b) { cudaFree(b->base); }
#define KC_F(b) ((float *)(b).p)

/* Downloads b and compares it bit for bit with ref rounded to b's dtype (the result of a copy,
 * or of the same fp32 operations as the reference); reports the mismatches and the guard. */
static inline void kc_compare_exact(kc_env *e, const char *label, const kc_dbuf *b, const float *ref)
{
    float *h = kc_host(b->n), *q = kc_host(b->n);
    kc_download(h, b->p, b->n, b->dt);
    memcpy(q, ref, b->n * sizeof(float));
    kc_quantize(q, b->n, b->dt);
    size_t bad = 0;
    for (size_t i = 0; i < b->n; i++) bad += memcmp(&h[i], &q[i], sizeof(float)) != 0;
    char buf[224];
    snprintf(buf, sizeof buf, "%s (exact: %zu of %zu differ)", label, bad, b->n);
    kc_note(e, buf, bad ? INFINITY : 0.0, 0.0);
    kc_check_guard(e, label, b->p, b->n * dl_dtype_size(b->dt));
    free(h);
    free(q);
}
static inline void kc_compare_buf(kc_env *e, const char *label, const kc_dbuf *b, const float *ref, double tol)
{
    kc_compare(e, label, b->p, ref, b->n, b->dt, tol);
}
/* The two buffers hold the same bytes (a reduction run twice). */
static inline void kc_same_bits(kc_env *e, const char *label, const kc_dbuf *a, const kc_dbuf *b)
{
    const size_t bytes = a->n * dl_dtype_size(a->dt);
    unsigned char *x = (unsigned char *)malloc(bytes + 1), *y = (unsigned char *)malloc(bytes + 1);
    cudaMemcpy(x, a->p, bytes, cudaMemcpyDeviceToHost);
    cudaMemcpy(y, b->p, bytes, cudaMemcpyDeviceToHost);
    char buf[224];
    snprintf(buf, sizeof buf, "%s deterministic", label);
    kc_note(e, buf, memcmp(x, y, bytes) == 0 ? 0.0 : INFINITY, 0.0);
    free(x);
    free(y);
}
#define KC_LABEL(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)
/* "<pre> <what>": the case (`pre`, its op and shape) and the check, for the report */
typedef struct kc_lab { char s[120]; } kc_lab;
static inline kc_lab kc_l(const char *pre, const char *what)
{
    kc_lab r;
    snprintf(r.s, sizeof r.s, "%s: %s", pre, what);
    return r;
}
#define KC_L(what) kc_l(pre, what).s

/* ---- activations and GEGLU ---- */
typedef struct kc_act_case {
    int act;       // dl_act
    int64_t n;
    dl_dtype dt;
    uint64_t seed;
    int off;
    int inplace;   // forward y = x, backward dx = dy
} kc_act_case;

static inline void kc_run_act(kc_env *e, const kc_act_case *c)
{
    const size_t n = (size_t)c->n;
    const dl_dtype dt = c->dt;
    float *x = kc_host(n), *dy = kc_host(n), *y_ref = kc_host(n), *dx_ref = kc_host(n);
    kc_fill(x, n, c->seed, -6.0f, 6.0f); // both tails of every activation
    kc_fill(dy, n, c->seed + 1, -1.0f, 1.0f);
    kc_quantize(x, n, dt);
    kc_quantize(dy, n, dt);
    dl_cpu_act_forward(e->cpu, (dl_act)c->act, (int64_t)n, x, y_ref);
    dl_cpu_act_backward(e->cpu, (dl_act)c->act, (int64_t)n, x, dy, dx_ref);

    kc_dbuf dx_in = kc_dbuf_new(x, n, dt, c->off), ddy = kc_dbuf_new(dy, n, dt, c->off);
    kc_dbuf dy_out = kc_dbuf_new(NULL, n, dt, c->off), ddx = kc_dbuf_new(NULL, n, dt, c->off);
    char pre[80], l[120];
    KC_LABEL(pre, "%s n %lld %s%s%s", dl_act_name((dl_act)c->act), (long long)c->n, kc_dtn(dt), c->off ? " off" : "", c->inplace ? " in place" : "");
    // the backward first: the in-place forward overwrites x
    kc_dbuf *gx = c->inplace ? &ddy : &ddx;
    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_act_backward(dt, c->act, c->n, dx_in.p, ddy.p, gx->p, e->stream));
    kc_compare_buf(e, l, gx, dx_ref, kc_ops_tol(dt));
    kc_dbuf *y = c->inplace ? &dx_in : &dy_out;
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_act_forward(dt, c->act, c->n, dx_in.p, y->p, e->stream));
    kc_compare_buf(e, l, y, y_ref, kc_ops_tol(dt));

    kc_dbuf *bufs[] = {&dx_in, &ddy, &dy_out, &ddx};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    free(x), free(dy), free(y_ref), free(dx_ref);
}

typedef struct kc_geglu_case {
    int64_t M, D;
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_geglu_case;

static inline void kc_run_geglu(kc_env *e, const kc_geglu_case *c)
{
    const size_t nx = (size_t)(c->M * 2 * c->D), ny = (size_t)(c->M * c->D);
    const dl_dtype dt = c->dt;
    float *x = kc_host(nx), *dy = kc_host(ny), *y_ref = kc_host(ny), *dx_ref = kc_host(nx);
    kc_fill(x, nx, c->seed, -4.0f, 4.0f);
    kc_fill(dy, ny, c->seed + 1, -1.0f, 1.0f);
    kc_quantize(x, nx, dt);
    kc_quantize(dy, ny, dt);
    dl_cpu_geglu_forward(e->cpu, c->M, c->D, x, y_ref);
    dl_cpu_geglu_backward(e->cpu, c->M, c->D, x, dy, dx_ref);
    kc_dbuf dxin = kc_dbuf_new(x, nx, dt, c->off), ddy = kc_dbuf_new(dy, ny, dt, c->off);
    kc_dbuf y = kc_dbuf_new(NULL, ny, dt, c->off), dx = kc_dbuf_new(NULL, nx, dt, c->off);
    char pre[80], l[120];
    KC_LABEL(pre, "geglu %lldx%lld %s%s", (long long)c->M, (long long)c->D, kc_dtn(dt), c->off ? " off" : "");
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_geglu_forward(dt, c->M, c->D, dxin.p, y.p, e->stream));
    kc_compare_buf(e, l, &y, y_ref, kc_ops_tol(dt));
    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_geglu_backward(dt, c->M, c->D, dxin.p, ddy.p, dx.p, e->stream));
    kc_compare_buf(e, l, &dx, dx_ref, kc_ops_tol(dt));
    kc_dbuf *bufs[] = {&dxin, &ddy, &y, &dx};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    free(x), free(dy), free(y_ref), free(dx_ref);
}

/* ---- add, scale, axpy ---- */
typedef struct kc_ew_case {
    int64_t n;
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_ew_case;

static inline void kc_run_ew(kc_env *e, const kc_ew_case *c)
{
    const size_t n = (size_t)c->n;
    const dl_dtype dt = c->dt;
    const double tol = kc_ops_tol(dt);
    const float alpha = -1.75f, beta = 0.37f;
    float *a = kc_host(n), *b = kc_host(n), *ref = kc_host(n);
    kc_fill(a, n, c->seed, -2.0f, 2.0f);
    kc_fill(b, n, c->seed + 1, -2.0f, 2.0f);
    kc_quantize(a, n, dt);
    kc_quantize(b, n, dt);
    kc_dbuf da = kc_dbuf_new(a, n, dt, c->off), db = kc_dbuf_new(b, n, dt, c->off);
    kc_dbuf y = kc_dbuf_new(NULL, n, dt, c->off);
    char pre[80], l[120];
    KC_LABEL(pre, "n %lld %s%s", (long long)c->n, kc_dtn(dt), c->off ? " off" : "");

    dl_cpu_add_forward(e->cpu, c->n, a, b, ref);
    KC_LABEL(l, "%s: add", pre);
    kc_check_launch(e, l, dl_cuda_add(dt, c->n, da.p, db.p, y.p, e->stream));
    kc_compare_buf(e, l, &y, ref, tol);

    dl_cpu_scale_forward(e->cpu, c->n, alpha, a, ref);
    KC_LABEL(l, "%s: scale", pre);
    kc_check_launch(e, l, dl_cuda_scale(dt, c->n, alpha, da.p, y.p, e->stream));
    kc_compare_buf(e, l, &y, ref, tol);

    memcpy(ref, b, n * sizeof(float)); // y = b, then y += beta·a
    dl_cpu_axpy(e->cpu, c->n, beta, a, ref);
    KC_LABEL(l, "%s: axpy", pre);
    kc_check_launch(e, l, dl_cuda_axpy(dt, c->n, beta, da.p, db.p, e->stream));
    kc_compare_buf(e, l, &db, ref, tol);

    // in place: a = a + b (b now holds the axpy result, as the reference's ref)
    kc_quantize(ref, n, dt);
    dl_cpu_add_forward(e->cpu, c->n, a, ref, b);
    KC_LABEL(l, "%s: add in place", pre);
    kc_check_launch(e, l, dl_cuda_add(dt, c->n, da.p, db.p, da.p, e->stream));
    kc_compare_buf(e, l, &da, b, tol);

    kc_dbuf *bufs[] = {&da, &db, &y};
    for (kc_dbuf *bb : bufs) kc_dbuf_free(bb);
    free(a), free(b), free(ref);
}

/* ---- broadcast add ---- */
typedef struct kc_bcast_case {
    int64_t N, HW, C;
    int per_sample;
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_bcast_case;

static inline void kc_run_bcast(kc_env *e, const kc_bcast_case *c)
{
    const size_t nx = (size_t)(c->N * c->HW * c->C), nv = (size_t)((c->per_sample ? c->N : 1) * c->C);
    const dl_dtype dt = c->dt;
    float *x = kc_host(nx), *v = kc_host(nv), *y_ref = kc_host(nx), *dv_ref = kc_host(nv);
    kc_fill(x, nx, c->seed, -2.0f, 2.0f);
    kc_fill(v, nv, c->seed + 1, -1.0f, 1.0f);
    kc_quantize(x, nx, dt);
    dl_cpu_add_bcast_forward(e->cpu, c->N, c->HW, c->C, c->per_sample, x, v, y_ref);
    dl_cpu_add_bcast_backward(e->cpu, c->N, c->HW, c->C, c->per_sample, x, NULL, dv_ref); // dy = x
    kc_dbuf dx_ = kc_dbuf_new(x, nx, dt, c->off), dv_in = kc_dbuf_new(v, nv, DL_F32, c->off);
    kc_dbuf y = kc_dbuf_new(NULL, nx, dt, c->off), gx = kc_dbuf_new(NULL, nx, dt, c->off);
    kc_dbuf dv = kc_dbuf_new(NULL, nv, DL_F32, c->off), dv2 = kc_dbuf_new(NULL, nv, DL_F32, c->off);
    char pre[80], l[120];
    KC_LABEL(pre, "add_bcast %lldx%lldx%lld %s%s%s", (long long)c->N, (long long)c->HW, (long long)c->C, kc_dtn(dt), c->per_sample ? " per sample" : "", c->off ? " off" : "");
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_add_bcast_forward(dt, c->N, c->HW, c->C, c->per_sample, dx_.p, KC_F(dv_in), y.p,
                                                    e->stream));
    kc_compare_buf(e, l, &y, y_ref, kc_ops_tol(dt));
    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_add_bcast_backward(dt, c->N, c->HW, c->C, c->per_sample, dx_.p, gx.p, KC_F(dv),
                                                     e->stream));
    kc_compare_exact(e, KC_L("dx (copy of dy)"), &gx, x);
    kc_compare_buf(e, KC_L("dv"), &dv, dv_ref, KC_OPS_TOL_F32);
    kc_check_launch(e, l, dl_cuda_add_bcast_backward(dt, c->N, c->HW, c->C, c->per_sample, dx_.p, dx_.p, KC_F(dv2),
                                                     e->stream)); // dx == dy: no copy
    kc_same_bits(e, KC_L("dv"), &dv, &dv2);
    kc_compare_exact(e, KC_L("dy (dx == dy untouched)"), &dx_, x);
    kc_dbuf *bufs[] = {&dx_, &dv_in, &y, &gx, &dv, &dv2};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    free(x), free(v), free(y_ref), free(dv_ref);
}

/* ---- channel concat / split ---- */
typedef struct kc_concat_case {
    int64_t M, C1, C2;
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_concat_case;

static inline void kc_run_concat(kc_env *e, const kc_concat_case *c)
{
    const size_t na = (size_t)(c->M * c->C1), nb = (size_t)(c->M * c->C2), ny = na + nb;
    const dl_dtype dt = c->dt;
    float *a = kc_host(na), *b = kc_host(nb), *y_ref = kc_host(ny), *da_ref = kc_host(na), *db_ref = kc_host(nb);
    kc_fill(a, na, c->seed, -2.0f, 2.0f);
    kc_fill(b, nb, c->seed + 1, -2.0f, 2.0f);
    kc_quantize(a, na, dt);
    kc_quantize(b, nb, dt);
    dl_cpu_concat_channels_forward(e->cpu, c->M, c->C1, c->C2, a, b, y_ref);
    dl_cpu_concat_channels_backward(e->cpu, c->M, c->C1, c->C2, y_ref, da_ref, db_ref);
    kc_dbuf dA = kc_dbuf_new(a, na, dt, c->off), dB = kc_dbuf_new(b, nb, dt, c->off);
    kc_dbuf y = kc_dbuf_new(NULL, ny, dt, c->off), ga = kc_dbuf_new(NULL, na, dt, c->off);
    kc_dbuf gb = kc_dbuf_new(NULL, nb, dt, c->off), gb2 = kc_dbuf_new(NULL, nb, dt, c->off);
    char pre[80], l[120];
    KC_LABEL(pre, "concat %lldx(%lld+%lld) %s%s", (long long)c->M, (long long)c->C1, (long long)c->C2, kc_dtn(dt), c->off ? " off" : "");
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_concat_channels_forward(dt, c->M, c->C1, c->C2, dA.p, dB.p, y.p, e->stream));
    kc_compare_exact(e, l, &y, y_ref);
    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_concat_channels_backward(dt, c->M, c->C1, c->C2, y.p, ga.p, gb.p, e->stream));
    kc_compare_exact(e, KC_L("da"), &ga, da_ref);
    kc_compare_exact(e, KC_L("db"), &gb, db_ref);
    kc_check_launch(e, l, dl_cuda_concat_channels_backward(dt, c->M, c->C1, c->C2, y.p, NULL, gb2.p, e->stream));
    kc_compare_exact(e, KC_L("db (da NULL)"), &gb2, db_ref);
    kc_dbuf *bufs[] = {&dA, &dB, &y, &ga, &gb, &gb2};
    for (kc_dbuf *bb : bufs) kc_dbuf_free(bb);
    free(a), free(b), free(y_ref), free(da_ref), free(db_ref);
}

/* ---- nearest 2x upsampling, zero padding ---- */
typedef struct kc_spatial_case {
    int64_t N, H, W, C;
    int top, left, bottom, right;
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_spatial_case;

static inline void kc_run_spatial(kc_env *e, const kc_spatial_case *c)
{
    const int64_t N = c->N, H = c->H, W = c->W, C = c->C, Ho = H + c->top + c->bottom, Wo = W + c->left + c->right;
    const size_t nx = (size_t)(N * H * W * C), nu = 4 * nx, np = (size_t)(N * Ho * Wo * C);
    const dl_dtype dt = c->dt;
    float *x = kc_host(nx), *dy = kc_host(nu), *up = kc_host(nu), *dx_ref = kc_host(nx), *pad = kc_host(np);
    float *dp = kc_host(np), *crop = kc_host(nx);
    kc_fill(x, nx, c->seed, -2.0f, 2.0f);
    kc_fill(dy, nu, c->seed + 1, -1.0f, 1.0f);
    kc_fill(dp, np, c->seed + 2, -1.0f, 1.0f);
    kc_quantize(x, nx, dt);
    kc_quantize(dy, nu, dt);
    kc_quantize(dp, np, dt);
    dl_cpu_upsample_nearest2x_forward(e->cpu, N, H, W, C, x, up);
    dl_cpu_upsample_nearest2x_backward(e->cpu, N, H, W, C, dy, dx_ref);
    for (int64_t n = 0; n < N; n++) // the padding and its crop by hand (no CPU op: cuDNN pads)
        for (int64_t h = 0; h < Ho; h++)
            for (int64_t w = 0; w < Wo; w++)
                for (int64_t ch = 0; ch < C; ch++) {
                    const int64_t hi = h - c->top, wi = w - c->left;
                    const bool in = hi >= 0 && hi < H && wi >= 0 && wi < W;
                    const size_t o = (size_t)(((n * Ho + h) * Wo + w) * C + ch);
                    pad[o] = in ? x[((n * H + hi) * W + wi) * C + ch] : 0.0f;
                    if (in) crop[((n * H + hi) * W + wi) * C + ch] = dp[o];
                }
    kc_dbuf dxin = kc_dbuf_new(x, nx, dt, c->off), ddy = kc_dbuf_new(dy, nu, dt, c->off);
    kc_dbuf ddp = kc_dbuf_new(dp, np, dt, c->off), y = kc_dbuf_new(NULL, nu, dt, c->off);
    kc_dbuf dx = kc_dbuf_new(NULL, nx, dt, c->off), yp = kc_dbuf_new(NULL, np, dt, c->off);
    kc_dbuf dc = kc_dbuf_new(NULL, nx, dt, c->off);
    char pre[80], l[120];
    KC_LABEL(pre, "%lldx%lldx%lldx%lld pad %d,%d,%d,%d %s%s", (long long)N, (long long)H, (long long)W, (long long)C, c->top, c->left, c->bottom, c->right, kc_dtn(dt), c->off ? " off" : "");
    KC_LABEL(l, "%s: upsample forward", pre);
    kc_check_launch(e, l, dl_cuda_upsample_nearest2x_forward(dt, N, H, W, C, dxin.p, y.p, e->stream));
    kc_compare_exact(e, l, &y, up);
    KC_LABEL(l, "%s: upsample backward", pre);
    kc_check_launch(e, l, dl_cuda_upsample_nearest2x_backward(dt, N, H, W, C, ddy.p, dx.p, e->stream));
    kc_compare_exact(e, l, &dx, dx_ref); // the same four fp32 adds in the same order
    KC_LABEL(l, "%s: pad2d forward", pre);
    kc_check_launch(e, l, dl_cuda_pad2d_forward(dt, N, H, W, C, c->top, c->left, c->bottom, c->right, dxin.p, yp.p,
                                                e->stream));
    kc_compare_exact(e, l, &yp, pad);
    KC_LABEL(l, "%s: pad2d backward", pre);
    kc_check_launch(e, l, dl_cuda_pad2d_backward(dt, N, H, W, C, c->top, c->left, c->bottom, c->right, ddp.p, dc.p,
                                                 e->stream));
    kc_compare_exact(e, l, &dc, crop);
    kc_dbuf *bufs[] = {&dxin, &ddy, &ddp, &y, &dx, &yp, &dc};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    free(x), free(dy), free(up), free(dx_ref), free(pad), free(dp), free(crop);
}

/* ---- timestep and token embeddings ---- */
typedef struct kc_temb_case {
    int64_t N, dim;
    int flip;
    float shift, scale, max_period;
    dl_dtype dt;
} kc_temb_case;

static inline void kc_run_temb(kc_env *e, const kc_temb_case *c)
{
    const size_t no = (size_t)(c->N * c->dim);
    float *t = kc_host((size_t)c->N), *ref = kc_host(no);
    for (int64_t n = 0; n < c->N; n++) t[n] = n == 0 ? 0.0f : n == 1 ? 999.0f : (float)((n * 137) % 1000) + 0.25f * (float)(n % 4);
    dl_cpu_timestep_embedding(e->cpu, c->N, c->dim, t, c->flip, c->shift, c->scale, c->max_period, ref);
    kc_dbuf dt_ = kc_dbuf_new(t, (size_t)c->N, DL_F32, 0), out = kc_dbuf_new(NULL, no, c->dt, 0);
    char pre[80], l[120];
    KC_LABEL(pre, "timestep_embedding %lldx%lld %s", (long long)c->N, (long long)c->dim, kc_dtn(c->dt));
    KC_LABEL(l, "%s: out", pre);
    kc_check_launch(e, l, dl_cuda_timestep_embedding(c->dt, c->N, c->dim, KC_F(dt_), c->flip, c->shift, c->scale,
                                                     c->max_period, out.p, e->stream));
    kc_compare_buf(e, l, &out, ref, kc_ops_tol(c->dt));
    kc_dbuf_free(&dt_);
    kc_dbuf_free(&out);
    free(t), free(ref);
}

typedef struct kc_embed_case {
    int64_t N, T, C, V;
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_embed_case;

static inline void kc_run_embed(kc_env *e, const kc_embed_case *c)
{
    const int64_t rows = c->N * c->T, P = c->T + 3; // pos has more rows than T
    const size_t no = (size_t)(rows * c->C);
    float *tok = kc_host((size_t)(c->V * c->C)), *pos = kc_host((size_t)(P * c->C)), *ref = kc_host(no);
    int32_t *ids = (int32_t *)calloc((size_t)rows + 1, sizeof(int32_t));
    kc_fill(tok, (size_t)(c->V * c->C), c->seed, -1.0f, 1.0f);
    kc_fill(pos, (size_t)(P * c->C), c->seed + 1, -0.1f, 0.1f);
    for (int64_t r = 0; r < rows; r++) ids[r] = (int32_t)((r * 7919 + (int64_t)c->seed) % c->V);
    ids[rows - 1] = (int32_t)(c->V - 1);
    dl_cpu_embed_tokens(e->cpu, c->N, c->T, c->C, c->V, ids, tok, pos, ref);
    kc_dbuf dtok = kc_dbuf_new(tok, (size_t)(c->V * c->C), DL_F32, c->off);
    kc_dbuf dpos = kc_dbuf_new(pos, (size_t)(P * c->C), DL_F32, c->off), out = kc_dbuf_new(NULL, no, c->dt, c->off);
    int32_t *dids = (int32_t *)kc_dalloc((size_t)rows * 4);
    cudaMemcpy(dids, ids, (size_t)rows * 4, cudaMemcpyHostToDevice);
    char pre[80], l[120];
    KC_LABEL(pre, "embed_tokens %lldx%lldx%lld V %lld %s%s", (long long)c->N, (long long)c->T, (long long)c->C, (long long)c->V, kc_dtn(c->dt), c->off ? " off" : "");
    KC_LABEL(l, "%s: out", pre);
    kc_check_launch(e, l, dl_cuda_embed_tokens(c->dt, c->N, c->T, c->C, c->V, dids, KC_F(dtok), KC_F(dpos), out.p,
                                               e->stream));
    kc_compare_exact(e, l, &out, ref); // one fp32 add, as the CPU op
    // the real device clamps ids outside [0, V): -5 reads row 0, V + 7 row V - 1
    ids[0] = -5;
    ids[rows - 1] = (int32_t)(c->V + 7);
    cudaMemcpy(dids, ids, (size_t)rows * 4, cudaMemcpyHostToDevice);
    ids[0] = 0;
    ids[rows - 1] = (int32_t)(c->V - 1);
    dl_cpu_embed_tokens(e->cpu, c->N, c->T, c->C, c->V, ids, tok, pos, ref);
    KC_LABEL(l, "%s: out (ids clamped)", pre);
    kc_check_launch(e, l, dl_cuda_embed_tokens(c->dt, c->N, c->T, c->C, c->V, dids, KC_F(dtok), KC_F(dpos), out.p,
                                               e->stream));
    kc_compare_exact(e, l, &out, ref);
    cudaFree(dids);
    kc_dbuf_free(&dtok), kc_dbuf_free(&dpos), kc_dbuf_free(&out);
    free(tok), free(pos), free(ref), free(ids);
}

/* ---- layer norm ---- */
typedef struct kc_ln_case {
    int64_t M, C;
    int affine;   // 0: gamma, beta NULL
    int inplace;  // y = x, dx = dy
    dl_dtype dt;
    uint64_t seed;
    float offset; // added to x: rows with a large mean
} kc_ln_case;

static inline void kc_run_layernorm(kc_env *e, const kc_ln_case *c)
{
    const int64_t M = c->M, C = c->C;
    const size_t nx = (size_t)(M * C);
    const dl_dtype dt = c->dt;
    const double tol = kc_ops_tol(dt);
    const float eps = 1e-5f;
    float *x = kc_host(nx), *dy = kc_host(nx), *g = kc_host((size_t)C), *b = kc_host((size_t)C);
    float *y_ref = kc_host(nx), *mu_ref = kc_host((size_t)M), *rs_ref = kc_host((size_t)M), *dx_ref = kc_host(nx);
    float *dg_ref = kc_host((size_t)C), *db_ref = kc_host((size_t)C);
    kc_fill(x, nx, c->seed, -2.0f + c->offset, 2.0f + c->offset);
    kc_fill(dy, nx, c->seed + 1, -1.0f, 1.0f);
    kc_fill(g, (size_t)C, c->seed + 2, 0.5f, 1.5f);
    kc_fill(b, (size_t)C, c->seed + 3, -0.5f, 0.5f);
    kc_quantize(x, nx, dt);
    kc_quantize(dy, nx, dt);
    const float *G = c->affine ? g : NULL, *B = c->affine ? b : NULL;
    dl_cpu_layernorm_forward(e->cpu, M, C, eps, x, G, B, y_ref, mu_ref, rs_ref);
    dl_cpu_layernorm_backward(e->cpu, M, C, x, G, mu_ref, rs_ref, dy, dx_ref, dg_ref, db_ref);

    kc_dbuf dxin = kc_dbuf_new(x, nx, dt, 0), ddy = kc_dbuf_new(dy, nx, dt, 0);
    kc_dbuf dg_in = kc_dbuf_new(g, (size_t)C, DL_F32, 0), db_in = kc_dbuf_new(b, (size_t)C, DL_F32, 0);
    kc_dbuf y = kc_dbuf_new(NULL, nx, dt, 0), mu = kc_dbuf_new(NULL, (size_t)M, DL_F32, 0);
    kc_dbuf rs = kc_dbuf_new(NULL, (size_t)M, DL_F32, 0), dx = kc_dbuf_new(NULL, nx, dt, 0);
    kc_dbuf dg = kc_dbuf_new(NULL, (size_t)C, DL_F32, 0), db = kc_dbuf_new(NULL, (size_t)C, DL_F32, 0);
    kc_dbuf dg2 = kc_dbuf_new(NULL, (size_t)C, DL_F32, 0), db2 = kc_dbuf_new(NULL, (size_t)C, DL_F32, 0);
    const float *dG = c->affine ? KC_F(dg_in) : NULL, *dB = c->affine ? KC_F(db_in) : NULL;
    char pre[80], l[120];
    KC_LABEL(pre, "layernorm %lldx%lld %s%s%s", (long long)M, (long long)C, kc_dtn(dt), c->affine ? "" : " no affine", c->inplace ? " in place" : "");
    // the backward runs on the saved statistics of the reference (in place it would lose x)
    kc_dbuf smu = kc_dbuf_new(mu_ref, (size_t)M, DL_F32, 0), srs = kc_dbuf_new(rs_ref, (size_t)M, DL_F32, 0);
    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_layernorm_backward(dt, M, C, dxin.p, dG, KC_F(smu), KC_F(srs), ddy.p, KC_F(dx),
                                                     KC_F(dg), KC_F(db), e->stream));
    kc_check_launch(e, l, dl_cuda_layernorm_backward(dt, M, C, dxin.p, dG, KC_F(smu), KC_F(srs), ddy.p,
                                                     c->inplace ? ddy.p : NULL, KC_F(dg2), KC_F(db2), e->stream));
    kc_compare_buf(e, KC_L("dx"), &dx, dx_ref, tol);
    if (c->inplace) kc_compare_buf(e, KC_L("dx (in place over dy)"), &ddy, dx_ref, tol);
    kc_compare_buf(e, KC_L("dgamma"), &dg, dg_ref, KC_OPS_TOL_F32);
    kc_compare_buf(e, KC_L("dbeta"), &db, db_ref, KC_OPS_TOL_F32);
    kc_same_bits(e, KC_L("dgamma"), &dg, &dg2);
    kc_same_bits(e, KC_L("dbeta"), &db, &db2);

    kc_dbuf *yb = c->inplace ? &dxin : &y;
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_layernorm_forward(dt, M, C, eps, dxin.p, dG, dB, yb->p, KC_F(mu), KC_F(rs),
                                                    e->stream));
    kc_compare_buf(e, l, yb, y_ref, tol);
    kc_compare_buf(e, KC_L("mean"), &mu, mu_ref, KC_OPS_TOL_F32);
    kc_compare_buf(e, KC_L("rstd"), &rs, rs_ref, KC_OPS_TOL_F32);

    kc_dbuf *bufs[] = {&dxin, &ddy, &dg_in, &db_in, &y, &mu, &rs, &dx, &dg, &db, &dg2, &db2, &smu, &srs};
    for (kc_dbuf *bb : bufs) kc_dbuf_free(bb);
    float *hb[] = {x, dy, g, b, y_ref, mu_ref, rs_ref, dx_ref, dg_ref, db_ref};
    for (float *h : hb) free(h);
}

/* ---- softmax ---- */
typedef struct kc_softmax_case {
    int64_t rows, cols;
    float scale;
    int64_t causal_tq;
    int inplace; // y = x
    uint64_t seed;
} kc_softmax_case;

static inline void kc_run_softmax(kc_env *e, const kc_softmax_case *c)
{
    const int64_t R = c->rows, Cc = c->cols;
    const size_t n = (size_t)(R * Cc);
    float *x = kc_host(n), *z = kc_host(n), *y_ref = kc_host(n), *dp = kc_host(n), *dx_ref = kc_host(n);
    float *lse_ref = kc_host((size_t)R);
    kc_fill(x, n, c->seed, -4.0f, 4.0f);
    kc_fill(dp, n, c->seed + 1, -1.0f, 1.0f);
    for (int64_t r = 0; r < R; r++) { // the reference: scale, mask with -inf, the CPU softmax
        const int64_t nv = c->causal_tq > 0 ? r % c->causal_tq + 1 : Cc;
        double mx = -INFINITY, s = 0.0;
        for (int64_t j = 0; j < Cc; j++) {
            z[r * Cc + j] = j < nv ? c->scale * x[r * Cc + j] : -INFINITY;
            mx = z[r * Cc + j] > mx ? z[r * Cc + j] : mx;
        }
        for (int64_t j = 0; j < nv && j < Cc; j++) s += exp((double)z[r * Cc + j] - mx);
        lse_ref[r] = (float)(mx + log(s));
    }
    dl_cpu_softmax_forward(e->cpu, R, Cc, z, y_ref);
    dl_cpu_softmax_backward(e->cpu, R, Cc, y_ref, dp, dx_ref);
    kc_dbuf dxin = kc_dbuf_new(x, n, DL_F32, 0), y = kc_dbuf_new(NULL, n, DL_F32, 0);
    kc_dbuf lse = kc_dbuf_new(NULL, (size_t)R, DL_F32, 0), ddp = kc_dbuf_new(dp, n, DL_F32, 0);
    kc_dbuf *yb = c->inplace ? &dxin : &y;
    char pre[80], l[120];
    KC_LABEL(pre, "softmax %lldx%lld scale %g causal %lld%s", (long long)R, (long long)Cc, (double)c->scale, (long long)c->causal_tq, c->inplace ? " in place" : "");
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_softmax_forward(R, Cc, c->scale, c->causal_tq, KC_F(dxin), KC_F(*yb), KC_F(lse),
                                                  e->stream));
    kc_compare_buf(e, l, yb, y_ref, KC_OPS_TOL_F32);
    kc_compare_buf(e, KC_L("lse"), &lse, lse_ref, KC_OPS_TOL_F32);
    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_softmax_backward(R, Cc, KC_F(*yb), KC_F(ddp), e->stream));
    kc_compare_buf(e, l, &ddp, dx_ref, KC_OPS_TOL_F32);
    kc_dbuf *bufs[] = {&dxin, &y, &lse, &ddp};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    float *hb[] = {x, z, y_ref, dp, dx_ref, lse_ref};
    for (float *h : hb) free(h);
}

/* ---- MSE loss ---- */
typedef struct kc_mse_case {
    int64_t N, D;
    int weighted;   // per-sample weights (min-SNR)
    int inplace;    // dpred = pred
    dl_dtype dt;
    uint64_t seed;
    int off;
} kc_mse_case;

static inline void kc_run_mse(kc_env *e, const kc_mse_case *c)
{
    const int64_t N = c->N, D = c->D;
    const size_t n = (size_t)(N * D);
    const dl_dtype dt = c->dt;
    const float dloss = 0.75f;
    float *p = kc_host(n), *t = kc_host(n), *w = kc_host((size_t)N), *ps_ref = kc_host((size_t)N);
    float *dp_ref = kc_host(n), *dt_ref = kc_host(n);
    kc_fill(p, n, c->seed, -1.5f, 1.5f);
    kc_fill(t, n, c->seed + 1, -1.0f, 1.0f);
    kc_fill(w, (size_t)N, c->seed + 2, 0.1f, 2.0f);
    kc_quantize(p, n, dt);
    kc_quantize(t, n, dt);
    const float *W = c->weighted ? w : NULL;
    float loss_ref = (float)dl_cpu_mse_loss_forward(e->cpu, N, D, p, t, W, ps_ref);
    dl_cpu_mse_loss_backward(e->cpu, N, D, p, t, W, dloss, dp_ref, dt_ref);
    kc_dbuf dpred = kc_dbuf_new(p, n, dt, c->off), dtgt = kc_dbuf_new(t, n, dt, c->off);
    kc_dbuf dw = kc_dbuf_new(w, (size_t)N, DL_F32, c->off), ps = kc_dbuf_new(NULL, (size_t)N, DL_F32, c->off);
    kc_dbuf ps2 = kc_dbuf_new(NULL, (size_t)N, DL_F32, c->off), loss = kc_dbuf_new(NULL, 1, DL_F32, 0);
    kc_dbuf loss2 = kc_dbuf_new(NULL, 1, DL_F32, 0), gp = kc_dbuf_new(NULL, n, dt, c->off);
    kc_dbuf gt = kc_dbuf_new(NULL, n, dt, c->off);
    const float *dW = c->weighted ? KC_F(dw) : NULL;
    char pre[80], l[120];
    KC_LABEL(pre, "mse %lldx%lld %s%s%s%s", (long long)N, (long long)D, kc_dtn(dt), c->weighted ? " weighted" : "", c->inplace ? " in place" : "", c->off ? " off" : "");
    KC_LABEL(l, "%s: forward", pre);
    kc_check_launch(e, l, dl_cuda_mse_loss_forward(dt, N, D, dpred.p, dtgt.p, dW, KC_F(ps), KC_F(loss), e->stream));
    kc_compare_buf(e, KC_L("loss"), &loss, &loss_ref, KC_OPS_TOL_F32);
    kc_compare_buf(e, KC_L("per_sample"), &ps, ps_ref, KC_OPS_TOL_F32);
    kc_check_launch(e, l, dl_cuda_mse_loss_forward(dt, N, D, dpred.p, dtgt.p, dW, KC_F(ps2), KC_F(loss2), e->stream));
    kc_same_bits(e, KC_L("loss"), &loss, &loss2);
    kc_same_bits(e, KC_L("per_sample"), &ps, &ps2);
    kc_check_launch(e, l, dl_cuda_mse_loss_forward(dt, N, D, dpred.p, dtgt.p, dW, NULL, KC_F(loss2), e->stream));
    kc_same_bits(e, KC_L("loss (per_sample NULL)"), &loss, &loss2);

    KC_LABEL(l, "%s: backward", pre);
    kc_check_launch(e, l, dl_cuda_mse_loss_backward(dt, N, D, dpred.p, dtgt.p, dW, dloss, c->inplace ? dpred.p : gp.p,
                                                    gt.p, e->stream));
    kc_compare_buf(e, KC_L("dpred"), c->inplace ? &dpred : &gp, dp_ref, kc_ops_tol(dt));
    kc_compare_buf(e, KC_L("dtarget"), &gt, dt_ref, kc_ops_tol(dt));
    kc_dbuf *bufs[] = {&dpred, &dtgt, &dw, &ps, &ps2, &loss, &loss2, &gp, &gt};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    float *hb[] = {p, t, w, ps_ref, dp_ref, dt_ref};
    for (float *h : hb) free(h);
}

/* ---- AdamW, sum of squares, clipping ---- */
typedef struct kc_optim_case {
    int64_t n;
    uint64_t seed;
    int off;
} kc_optim_case;

static inline void kc_run_optim(kc_env *e, const kc_optim_case *c)
{
    const size_t n = (size_t)c->n;
    const dl_adamw_hparams hp = {1e-3, 0.9, 0.999, 1e-8, 1e-2};
    float *p = kc_host(n), *g = kc_host(n), *m = kc_host(n), *v = kc_host(n);
    kc_fill(p, n, c->seed, -1.0f, 1.0f);
    kc_fill(g, n, c->seed + 1, -0.05f, 0.05f);
    kc_dbuf dp = kc_dbuf_new(p, n, DL_F32, c->off), dg = kc_dbuf_new(g, n, DL_F32, c->off);
    kc_dbuf dm = kc_dbuf_new(m, n, DL_F32, c->off), dv = kc_dbuf_new(v, n, DL_F32, c->off); // zero moments
    char pre[80], l[120];
    KC_LABEL(pre, "n %lld%s", (long long)c->n, c->off ? " off" : "");
    for (int64_t step = 1; step <= 3; step++) {
        dl_cpu_adamw_step(e->cpu, c->n, &hp, step, p, g, m, v);
        KC_LABEL(l, "%s: adamw step %lld", pre, (long long)step);
        kc_check_launch(e, l, dl_cuda_adamw_step(c->n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step,
                                                 KC_F(dp), KC_F(dg), KC_F(dm), KC_F(dv), e->stream));
    }
    kc_compare_buf(e, KC_L("adamw p"), &dp, p, KC_OPS_TOL_F32);
    kc_compare_buf(e, KC_L("adamw m"), &dm, m, KC_OPS_TOL_F32);
    kc_compare_buf(e, KC_L("adamw v"), &dv, v, KC_OPS_TOL_F32);

    // clipping chain: sumsq -> clip_coef -> scale_by, as the trainer runs it
    const float ss_ref = (float)dl_cpu_sumsq(e->cpu, c->n, g);
    kc_dbuf ss = kc_dbuf_new(NULL, 1, DL_F32, 0), ss2 = kc_dbuf_new(NULL, 1, DL_F32, 0);
    kc_dbuf coef = kc_dbuf_new(NULL, 1, DL_F32, 0);
    kc_check_launch(e, KC_L("sumsq"), dl_cuda_sumsq(c->n, KC_F(dg), KC_F(ss), e->stream));
    kc_compare_buf(e, KC_L("sumsq"), &ss, &ss_ref, KC_OPS_TOL_F32);
    kc_check_launch(e, KC_L("sumsq"), dl_cuda_sumsq(c->n, KC_F(dg), KC_F(ss2), e->stream));
    kc_same_bits(e, KC_L("sumsq"), &ss, &ss2);
    float ss_dev = 0.0f;
    cudaMemcpy(&ss_dev, ss.p, 4, cudaMemcpyDeviceToHost);
    const float norms[2] = {0.5f * sqrtf(ss_ref), 2.0f * sqrtf(ss_ref) + 1.0f}; // clips, does not clip
    for (int k = 0; k < 2; k++) {
        const float cc = norms[k] / (sqrtf(ss_dev) + 1e-6f), coef_ref = cc < 1.0f ? cc : 1.0f;
        kc_check_launch(e, KC_L("clip_coef"), dl_cuda_clip_coef(KC_F(ss), norms[k], KC_F(coef), e->stream));
        KC_LABEL(l, "%s: clip_coef (%s)", pre, k ? "1" : "< 1");
        kc_compare_exact(e, l, &coef, &coef_ref);
        float *gs = kc_host(n);
        dl_cpu_scale_forward(e->cpu, c->n, coef_ref, g, gs);
        kc_dbuf x = kc_dbuf_new(g, n, DL_F32, c->off);
        kc_check_launch(e, KC_L("scale_by"), dl_cuda_scale_by(c->n, KC_F(coef), KC_F(x), e->stream));
        KC_LABEL(l, "%s: scale_by (coef %s)", pre, k ? "1" : "< 1");
        kc_compare_exact(e, l, &x, gs);
        kc_dbuf_free(&x);
        free(gs);
    }
    kc_dbuf *bufs[] = {&dp, &dg, &dm, &dv, &ss, &ss2, &coef};
    for (kc_dbuf *b : bufs) kc_dbuf_free(b);
    free(p), free(g), free(m), free(v);
}

#endif
