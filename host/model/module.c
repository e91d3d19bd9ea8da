/* module.c - loading, CPU forward and backward of linear / conv / norm layers with optional LoRA. */
#include "model/module.h"
#include "backend/backend.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

float *dl_alloc_f32(dl_arena *a, int64_t n)
{
    float *p = dl_arena_alloc(a, (size_t)(n > 0 ? n : 1) * sizeof(float));
    DL_ASSERTF(p, "%s", dl_error_msg());
    return p;
}

/* The one place a loader puts a checkpoint tensor into the weights arena: numel values (a conv
 * weight reordered to [cout, k, k, cin], same count) of type dt, one 64-byte aligned allocation.
 * dt is fp32, or for a layer weight (wdt non-NULL) the stored fp16 / bf16 where the checkpoint
 * keeps that type (dl_ckpt_weight_dtype); *wdt is set to it. Such a weight in the file's own
 * order is not placed at all where the checkpoint allows (weights_in_place): the layer points
 * into the file's mapping, in the measuring pass too. Against a measuring arena the
 * tensor is only checked (present, right shape: the errors a real load gives) and counted, so
 * running a loader there measures the arena it needs. NULL on error. */
static void *place(const dl_loader *ld, const char *full, int ndim, const int64_t *shape, int conv, dl_dtype *wdt)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    const dl_dtype dt = wdt && ld->ck && !ld->grads ? dl_ckpt_weight_dtype(ld->ck, ld->part, full) : DL_F32;
    const size_t bytes = (size_t)n * dl_dtype_size(dt);
    if (wdt) *wdt = dt;
    if (dt != DL_F32 && (!conv || (shape[2] == 1 && shape[3] == 1))) { /* file order = ours: in place? */
        const void *at = dl_ckpt_weight_in_place(ld->ck, ld->part, full, ndim, shape, !dl_arena_measuring(ld->arena));
        if (at) return (void *)at; /* read-only: weights are never written (no merge into kept types) */
    }
    void *p = dl_arena_alloc(ld->arena, bytes);
    if (!p) return NULL;
    int rc;
    if (!ld->ck) return (ld->list ? ld->list(ld->list_user, ld->part, full, ndim, shape) : DL_OK) == DL_OK ? p : NULL;
    if (dl_arena_measuring(ld->arena)) return dl_ckpt_check(ld->ck, ld->part, full, ndim, shape) == DL_OK ? p : NULL;
    /* a device arena: converted in host memory, then uploaded (the host never touches p) */
    void *dst = dl_arena_on_device(ld->arena) ? malloc(bytes > 0 ? bytes : 1) : p;
    if (!dst) return dl_error_set("%s: out of host memory staging %lld values", full, (long long)n), NULL;
    if (ld->grads && ld->placed) ld->placed(ld->placed_user, full, ndim, shape, (size_t)((char *)p - ld->arena->base), conv);
    if (conv) rc = dl_ckpt_load_conv_as(ld->ck, ld->part, full, (int)shape[0], (int)shape[1], (int)shape[2],
                                        (int)shape[3], dst, dt);
    else rc = dl_ckpt_load_as(ld->ck, ld->part, full, ndim, shape, dst, dt);
    if (dst != p) {
        if (rc == DL_OK) rc = dl_be_upload(ld->arena->dev, p, dst, bytes);
        free(dst);
    }
    return rc == DL_OK ? p : NULL;
}

/* The gradient of the tensor placed at p (full fine-tuning: at the same offset in ld->grads),
 * or NULL (frozen weights, or a measuring / listing pass). */
static float *grad_of(const dl_loader *ld, const void *p)
{
    if (!ld->grads || !p || dl_arena_measuring(ld->arena)) return NULL;
    const char *c = p;
    DL_ASSERTF(c >= ld->arena->base && c < ld->arena->base + ld->arena->cap, "a trained weight outside its arena");
    return (float *)(ld->grads + (c - ld->arena->base));
}

float *dl_loader_grad(const dl_loader *ld, const void *p) { return grad_of(ld, p); }

float *dl_load_tensor(const dl_loader *ld, const char *name, int ndim, const int64_t *shape)
{
    return place(ld, name, ndim, shape, 0, NULL);
}

/* "<name>.<suffix>": fp32, or a layer weight in the type it is kept in (wdt non-NULL) */
static void *load_tensor(const dl_loader *ld, const char *name, const char *suffix, int ndim, const int64_t *shape,
                         dl_dtype *wdt)
{
    char full[512];
    snprintf(full, sizeof full, "%s.%s", name, suffix);
    return place(ld, full, ndim, shape, 0, wdt);
}

int dl_linear_load(dl_linear *m, const dl_loader *ld, const char *name, int in, int out, int bias)
{
    memset(m, 0, sizeof *m);
    m->name = name;
    m->in = in;
    m->out = out;
    int64_t ws[2] = {out, in}, bs[1] = {out};
    if (!(m->w = load_tensor(ld, name, "weight", 2, ws, &m->wdt))) return DL_ERR;
    if (bias && !(m->b = load_tensor(ld, name, "bias", 1, bs, NULL))) return DL_ERR;
    m->dw = grad_of(ld, m->w), m->db = grad_of(ld, m->b);
    return DL_OK;
}

int dl_linear_load_any(dl_linear *m, const dl_loader *ld, const char *name, int in, int out, int bias)
{
    char full[512];
    snprintf(full, sizeof full, "%s.weight", name);
    int nd = 0;
    int64_t shape[DL_MAX_DIMS];
    if (dl_ckpt_shape(ld->ck, ld->part, full, &nd, shape) == DL_OK && nd == 4)
        return dl_linear_load_1x1(m, ld, name, in, out, bias);
    return dl_linear_load(m, ld, name, in, out, bias);
}

int dl_linear_load_1x1(dl_linear *m, const dl_loader *ld, const char *name, int in, int out, int bias)
{
    memset(m, 0, sizeof *m);
    m->name = name;
    m->in = in;
    m->out = out;
    int64_t ws[4] = {out, in, 1, 1}, bs[1] = {out};
    if (!(m->w = load_tensor(ld, name, "weight", 4, ws, &m->wdt))) return DL_ERR;
    if (bias && !(m->b = load_tensor(ld, name, "bias", 1, bs, NULL))) return DL_ERR;
    m->dw = grad_of(ld, m->w), m->db = grad_of(ld, m->b);
    return DL_OK;
}

int dl_conv_load(dl_conv *m, const dl_loader *ld, const char *name, int cin, int cout, int k, int stride, int pad)
{
    memset(m, 0, sizeof *m);
    m->name = name;
    m->cin = cin;
    m->cout = cout;
    m->k = k;
    m->stride = stride;
    m->pad_top = m->pad_left = m->pad_bottom = m->pad_right = pad;
    char full[512];
    snprintf(full, sizeof full, "%s.weight", name);
    int64_t ws[4] = {cout, cin, k, k};
    if (!(m->w = place(ld, full, 4, ws, 1, &m->wdt))) return DL_ERR;
    int64_t bs[1] = {cout};
    if (!(m->b = load_tensor(ld, name, "bias", 1, bs, NULL))) return DL_ERR;
    m->dw = grad_of(ld, m->w), m->db = grad_of(ld, m->b);
    return DL_OK;
}

int dl_norm_load(dl_norm *m, const dl_loader *ld, const char *name, int C, int G, float eps)
{
    memset(m, 0, sizeof *m);
    m->name = name;
    m->C = C;
    m->G = G;
    m->eps = eps;
    int64_t s[1] = {C};
    if (!(m->gamma = load_tensor(ld, name, "weight", 1, s, NULL))) return DL_ERR;
    if (!(m->beta = load_tensor(ld, name, "bias", 1, s, NULL))) return DL_ERR;
    m->dgamma = grad_of(ld, m->gamma), m->dbeta = grad_of(ld, m->beta);
    return DL_OK;
}

void dl_linear_fwd(const dl_ctx *ctx, const dl_linear *m, int64_t M, const float *x, float *y, dl_arena *scratch)
{
    const dl_lora *l = m->lora;
    if (!l || l->merged) {
        dl_be(ctx)->linear_forward(ctx, M, m->in, m->out, x, m->w, m->wdt, m->b, y);
        return;
    }
    size_t mark = dl_arena_mark(scratch);
    float *h = dl_alloc_f32(scratch, M * l->r); // [M, r]
    dl_be(ctx)->lora_linear_forward(ctx, M, m->in, m->out, l->r, l->scale, x, m->w, m->wdt, m->b, l->A, l->B, h, y);
    dl_arena_release(scratch, mark);
}

static dl_conv2d_shape conv_shape(const dl_conv *m, int N, int H, int W)
{
    dl_conv2d_shape s = dl_conv2d_shape_make(N, H, W, m->cin, m->cout, m->k, m->stride, 0);
    s.pad_top = m->pad_top;
    s.pad_left = m->pad_left;
    s.pad_bottom = m->pad_bottom;
    s.pad_right = m->pad_right;
    return s;
}

void dl_conv_fwd(const dl_ctx *ctx, const dl_conv *m, int N, int H, int W, const float *x, float *y,
                 int *Ho, int *Wo, dl_arena *scratch)
{
    dl_conv2d_shape s = conv_shape(m, N, H, W);
    int ho = dl_conv2d_out_h(&s), wo = dl_conv2d_out_w(&s);
    if (Ho) *Ho = ho;
    if (Wo) *Wo = wo;
    const dl_lora *l = m->lora;
    if (!l || l->merged) {
        dl_be(ctx)->conv2d_forward(ctx, &s, x, m->w, m->wdt, m->b, y);
        return;
    }
    size_t mark = dl_arena_mark(scratch);
    float *h = dl_alloc_f32(scratch, (int64_t)N * ho * wo * l->r); // [N, Ho, Wo, r]
    dl_be(ctx)->lora_conv_forward(ctx, &s, l->r, l->scale, x, m->w, m->wdt, m->b, l->A, l->B, h, y);
    dl_arena_release(scratch, mark);
}

/* ================================================================ backward */

static int lora_active(const dl_lora *l)
{
    if (!l) return 0;
    DL_ASSERTF(!l->merged, "backward through a layer whose LoRA is merged into the base weight");
    return 1;
}

int dl_linear_trains(const dl_linear *m) { return m->lora != NULL || m->dw != NULL; }
int dl_conv_trains(const dl_conv *m) { return m->lora != NULL || m->dw != NULL; }
int dl_norm_trains(const dl_norm *m) { return m->dgamma != NULL || m->dbeta != NULL; }

/* The op's gradients of a trained weight and bias into scratch (the op overwrites its outputs),
 * then added into the layer's (so micro-batches accumulate). */
typedef struct wgrad {
    float *dw, *db;     /* scratch, or NULL */
    int64_t nw, nb;
} wgrad;

static wgrad wgrad_take(dl_arena *scratch, const float *dw, const float *db, int64_t nw, int64_t nb)
{
    wgrad g = {dw ? dl_alloc_f32(scratch, nw) : NULL, db ? dl_alloc_f32(scratch, nb) : NULL, nw, nb};
    return g;
}

static void wgrad_add(const dl_ctx *ctx, const wgrad *g, float *dw, float *db)
{
    if (g->dw) dl_be(ctx)->axpy(ctx, g->nw, 1.0f, g->dw, dw);
    if (g->db) dl_be(ctx)->axpy(ctx, g->nb, 1.0f, g->db, db);
}

void dl_linear_bwd(const dl_ctx *ctx, const dl_linear *m, int64_t M, const float *x, const float *dy, float *dx,
                   dl_arena *scratch)
{
    const dl_lora *l = m->lora;
    if (!lora_active(l)) {
        if (!m->dw) {
            if (dx) dl_be(ctx)->linear_backward(ctx, M, m->in, m->out, x, m->w, m->wdt, dy, dx, NULL, NULL);
            return;
        }
        DL_ASSERT(x && dy && m->wdt == DL_F32);
        size_t mark = dl_arena_mark(scratch);
        wgrad g = wgrad_take(scratch, m->dw, m->db, (int64_t)m->out * m->in, m->out); // [out, in], [out]
        dl_be(ctx)->linear_backward(ctx, M, m->in, m->out, x, m->w, m->wdt, dy, dx, g.dw, g.db);
        wgrad_add(ctx, &g, m->dw, m->db);
        dl_arena_release(scratch, mark);
        return;
    }
    DL_ASSERTF(!m->dw, "%s: a LoRA on a layer that trains itself", m->name);
    DL_ASSERT(x && dy);
    const int64_t r = l->r;
    size_t mark = dl_arena_mark(scratch);
    float *h = dl_alloc_f32(scratch, M * r);                                         // [M, r]
    float *dh = dl_alloc_f32(scratch, M * r);                                        // [M, r]
    float *dA = l->dA ? dl_alloc_f32(scratch, r * m->in) : NULL;                     // [r, in]
    float *dB = l->dB ? dl_alloc_f32(scratch, (int64_t)m->out * r) : NULL;           // [out, r]
    dl_be(ctx)->linear_forward(ctx, M, m->in, r, x, l->A, DL_F32, NULL, h);                  // h = x Aᵀ [M, r]
    dl_be(ctx)->lora_linear_backward(ctx, M, m->in, m->out, r, l->scale, x, m->w, m->wdt, l->A, l->B, h, dy, dh, dx, dA, dB);
    if (dA) dl_be(ctx)->axpy(ctx, r * m->in, 1.0f, dA, l->dA);                       // accumulate
    if (dB) dl_be(ctx)->axpy(ctx, (int64_t)m->out * r, 1.0f, dB, l->dB);
    dl_arena_release(scratch, mark);
}

void dl_conv_bwd(const dl_ctx *ctx, const dl_conv *m, int N, int H, int W, const float *x, const float *dy,
                 float *dx, dl_arena *scratch)
{
    dl_conv2d_shape s = conv_shape(m, N, H, W);
    const dl_lora *l = m->lora;
    if (!lora_active(l)) {
        if (!m->dw) {
            if (dx) dl_be(ctx)->conv2d_backward(ctx, &s, x, m->w, m->wdt, dy, dx, NULL, NULL);
            return;
        }
        DL_ASSERT(x && dy && m->wdt == DL_F32);
        size_t mark = dl_arena_mark(scratch);
        wgrad g = wgrad_take(scratch, m->dw, m->db, (int64_t)m->cout * m->k * m->k * m->cin, m->cout);
        dl_be(ctx)->conv2d_backward(ctx, &s, x, m->w, m->wdt, dy, dx, g.dw, g.db); // [cout, k, k, cin], [cout]
        wgrad_add(ctx, &g, m->dw, m->db);
        dl_arena_release(scratch, mark);
        return;
    }
    DL_ASSERTF(!m->dw, "%s: a LoRA on a layer that trains itself", m->name);
    DL_ASSERT(x && dy);
    const int64_t r = l->r, KK = (int64_t)m->k * m->k * m->cin;
    const int64_t P = (int64_t)N * dl_conv2d_out_h(&s) * dl_conv2d_out_w(&s);
    size_t mark = dl_arena_mark(scratch);
    float *h = dl_alloc_f32(scratch, P * r);                                         // [N, Ho, Wo, r]
    float *dh = dl_alloc_f32(scratch, P * r);                                        // [N, Ho, Wo, r]
    float *dxs = dx ? dl_alloc_f32(scratch, (int64_t)N * H * W * m->cin) : NULL;     // [N, H, W, cin]
    float *dA = l->dA ? dl_alloc_f32(scratch, r * KK) : NULL;                        // [r, k, k, cin]
    float *dB = l->dB ? dl_alloc_f32(scratch, (int64_t)m->cout * r) : NULL;          // [cout, r]
    dl_conv2d_shape sa = s;
    sa.Cout = (int)r;
    dl_be(ctx)->conv2d_forward(ctx, &sa, x, l->A, DL_F32, NULL, h);                          // h = conv(x, A)
    dl_be(ctx)->lora_conv_backward(ctx, &s, r, l->scale, x, m->w, m->wdt, l->A, l->B, h, dy, dh, dxs, dx, dA, dB);
    if (dA) dl_be(ctx)->axpy(ctx, r * KK, 1.0f, dA, l->dA);                          // accumulate
    if (dB) dl_be(ctx)->axpy(ctx, (int64_t)m->cout * r, 1.0f, dB, l->dB);
    dl_arena_release(scratch, mark);
}

void dl_groupnorm_bwd(const dl_ctx *ctx, const dl_norm *m, int N, int64_t HW, const float *x, const float *mean,
                      const float *rstd, const float *dy, float *dx, int silu, dl_arena *scratch)
{
    DL_ASSERT(m->G > 0);
    if (!dx && !dl_norm_trains(m)) return;
    dl_groupnorm_shape s = {.N = N, .HW = (int)HW, .C = m->C, .G = m->G, .eps = m->eps, .silu = silu};
    size_t mark = dl_arena_mark(scratch);
    wgrad g = wgrad_take(scratch, m->dgamma, m->dbeta, m->C, m->C);                   // [C], [C]
    dl_be(ctx)->groupnorm_backward(ctx, s, x, m->gamma, m->beta, mean, rstd, dy, dx, g.dw, g.db);
    wgrad_add(ctx, &g, m->dgamma, m->dbeta);
    dl_arena_release(scratch, mark);
}

void dl_layernorm_bwd(const dl_ctx *ctx, const dl_norm *m, int64_t M, const float *x, const float *mean,
                      const float *rstd, const float *dy, float *dx, dl_arena *scratch)
{
    if (!dx && !dl_norm_trains(m)) return;
    size_t mark = dl_arena_mark(scratch);
    wgrad g = wgrad_take(scratch, m->dgamma, m->dbeta, m->C, m->C);                   // [C], [C]
    dl_be(ctx)->layernorm_backward(ctx, M, m->C, x, m->gamma, mean, rstd, dy, dx, g.dw, g.db);
    wgrad_add(ctx, &g, m->dgamma, m->dbeta);
    dl_arena_release(scratch, mark);
}
