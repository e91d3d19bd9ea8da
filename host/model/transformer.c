/* transformer.c - Transformer2DModel, BasicTransformerBlock and attention: loading, forward
 * (inference and training) and backward. */
#include "model/transformer.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define TRANSFORMER_GN_EPS 1e-6f /* Transformer2DModel's GroupNorm */
#define TBLOCK_LN_EPS 1e-5f      /* BasicTransformerBlock's LayerNorms */

/* ================================================================ loading */

static int load_attn(dl_netload *nl, dl_unet_attn *a, const char *pre, int C, int kv_dim, int heads)
{
    a->heads = heads;
    a->dim_head = C / heads;
    DL_TRY(dl_nl_linear(nl, &a->to_q, pre, "to_q", C, C, 0));
    DL_TRY(dl_nl_linear(nl, &a->to_k, pre, "to_k", kv_dim, C, 0));
    DL_TRY(dl_nl_linear(nl, &a->to_v, pre, "to_v", kv_dim, C, 0));
    return dl_nl_linear(nl, &a->to_out, pre, "to_out.0", C, C, 1);
}

int dl_transformer_load(dl_unet_transformer *tr, dl_netload *nl, const char *pre, int C, int heads, int layers,
                        int Dc, int G, int conv1x1)
{
    char p[256], q[300];
    tr->C = C;
    tr->n_blocks = layers;
    tr->blocks = calloc((size_t)layers, sizeof *tr->blocks);
    if (!tr->blocks) return dl_error_set("out of memory loading %s", pre);
    DL_TRY(dl_nl_norm(nl, &tr->norm, pre, "norm", C, G, TRANSFORMER_GN_EPS));
    DL_TRY(dl_nl_proj(nl, &tr->proj_in, pre, "proj_in", C, conv1x1));
    for (int i = 0; i < layers; i++) {
        dl_unet_tblock *b = &tr->blocks[i];
        snprintf(p, sizeof p, "%stransformer_blocks.%d.", pre, i);
        DL_TRY(dl_nl_norm(nl, &b->norm1, p, "norm1", C, 0, TBLOCK_LN_EPS));
        snprintf(q, sizeof q, "%sattn1.", p);
        DL_TRY(load_attn(nl, &b->attn1, q, C, C, heads));
        DL_TRY(dl_nl_norm(nl, &b->norm2, p, "norm2", C, 0, TBLOCK_LN_EPS));
        snprintf(q, sizeof q, "%sattn2.", p);
        DL_TRY(load_attn(nl, &b->attn2, q, C, Dc, heads));
        DL_TRY(dl_nl_norm(nl, &b->norm3, p, "norm3", C, 0, TBLOCK_LN_EPS));
        DL_TRY(dl_nl_linear(nl, &b->ff_proj, p, "ff.net.0.proj", C, 8 * C, 1));
        DL_TRY(dl_nl_linear(nl, &b->ff_out, p, "ff.net.2", 4 * C, C, 1));
    }
    return dl_nl_proj(nl, &tr->proj_out, pre, "proj_out", C, conv1x1);
}

static int attn_trains(const dl_unet_attn *a)
{
    return dl_linear_trains(&a->to_q) || dl_linear_trains(&a->to_k) || dl_linear_trains(&a->to_v) ||
           dl_linear_trains(&a->to_out);
}

int dl_transformer_trains(const dl_unet_transformer *tr)
{
    if (dl_linear_trains(&tr->proj_in) || dl_linear_trains(&tr->proj_out) || dl_norm_trains(&tr->norm)) return 1;
    for (int i = 0; i < tr->n_blocks; i++) {
        const dl_unet_tblock *b = &tr->blocks[i];
        if (attn_trains(&b->attn1) || attn_trains(&b->attn2) || dl_linear_trains(&b->ff_proj) ||
            dl_linear_trains(&b->ff_out) || dl_norm_trains(&b->norm1) || dl_norm_trains(&b->norm2) ||
            dl_norm_trains(&b->norm3))
            return 1;
    }
    return 0;
}

/* ================================================================ attention */

typedef struct attn_saved {
    float *q, *o;       /* [N, Tq, C] */
    float *k, *v;       /* [N, Tk, C] */
    float *lse;         /* [N, heads, Tq] */
} attn_saved;

static void attn_layout(const dl_unet_attn *at, int N, int Tq, int Tk, dl_slab *s, attn_saved *sv)
{
    const int C = at->to_q.out;
    const int64_t Mq = (int64_t)N * Tq, Mk = (int64_t)N * Tk;
    sv->q = dl_slab_take(s, Mq * C), sv->o = dl_slab_take(s, Mq * C);
    sv->k = dl_slab_take(s, Mk * C), sv->v = dl_slab_take(s, Mk * C);
    sv->lse = dl_slab_take(s, (int64_t)N * at->heads * Tq);
}

static dl_attention_shape attn_shape(const dl_unet_attn *at, int N, int Tq, int Tk)
{
    return (dl_attention_shape){.N = N, .Tq = Tq, .Tk = Tk, .H = at->heads, .d = at->dim_head,
                                .scale = (float)(1.0 / sqrt((double)at->dim_head)), .causal = 0};
}

/* out [N, Tq, C] = to_out(attention(to_q(xq [N, Tq, C]), to_k(xkv), to_v(xkv))), xkv [N, Tk, Dkv]. */
static void attn_fwd(const dl_ctx *ctx, const dl_unet_attn *at, int N, int Tq, const float *xq, int Tk,
                     const float *xkv, float *out, const attn_saved *sv, dl_arena *scratch)
{
    const int64_t Mq = (int64_t)N * Tq, Mk = (int64_t)N * Tk;
    dl_linear_fwd(ctx, &at->to_q, Mq, xq, sv->q, scratch);                           // q [N, Tq, heads*d]
    dl_linear_fwd(ctx, &at->to_k, Mk, xkv, sv->k, scratch);                          // k [N, Tk, heads*d]
    dl_linear_fwd(ctx, &at->to_v, Mk, xkv, sv->v, scratch);                          // v [N, Tk, heads*d]
    dl_be(ctx)->attention_forward(ctx, attn_shape(at, N, Tq, Tk), sv->q, sv->k, sv->v, sv->o, sv->lse);
    dl_linear_fwd(ctx, &at->to_out, Mq, sv->o, out, scratch);                        // out [N, Tq, C]
}

/* From dout [N, Tq, C]: dxq [N, Tq, C] overwritten (the whole gradient of xq when self: xkv is
 * xq); dxkv [N, Tk, Dkv] overwritten when not self and not NULL. */
static void attn_bwd(const dl_ctx *ctx, const dl_unet_attn *at, int N, int Tq, const float *xq, int Tk,
                     const float *xkv, const attn_saved *sv, const float *dout, float *dxq, float *dxkv, int self,
                     dl_arena *scratch)
{
    const int C = at->to_q.out, Dkv = at->to_k.in;
    const int64_t Mq = (int64_t)N * Tq, Mk = (int64_t)N * Tk;
    size_t mark = dl_arena_mark(scratch);
    float *dout_o = dl_alloc_f32(scratch, Mq * C);                                   // [N, Tq, C]
    float *dq = dl_alloc_f32(scratch, Mq * C);                                       // [N, Tq, C]
    float *dk = dl_alloc_f32(scratch, Mk * C), *dv = dl_alloc_f32(scratch, Mk * C);  // [N, Tk, C]
    dl_linear_bwd(ctx, &at->to_out, Mq, sv->o, dout, dout_o, scratch);
    dl_be(ctx)->attention_backward(ctx, attn_shape(at, N, Tq, Tk), sv->q, sv->k, sv->v, sv->o, sv->lse, dout_o, dq,
                                   dk, dv);
    dl_linear_bwd(ctx, &at->to_q, Mq, xq, dq, dxq, scratch);
    if (self) {
        float *t = dl_alloc_f32(scratch, Mq * C);                                    // [N, Tq, C]
        dl_linear_bwd(ctx, &at->to_k, Mk, xkv, dk, dxq ? t : NULL, scratch);
        if (dxq) dl_be(ctx)->axpy(ctx, Mq * C, 1.0f, t, dxq);
        dl_linear_bwd(ctx, &at->to_v, Mk, xkv, dv, dxq ? t : NULL, scratch);
        if (dxq) dl_be(ctx)->axpy(ctx, Mq * C, 1.0f, t, dxq);
    } else {
        float *t = dxkv ? dl_alloc_f32(scratch, Mk * Dkv) : NULL;                    // [N, Tk, Dkv]
        dl_linear_bwd(ctx, &at->to_k, Mk, xkv, dk, dxkv, scratch);
        dl_linear_bwd(ctx, &at->to_v, Mk, xkv, dv, t, scratch);
        if (dxkv) dl_be(ctx)->axpy(ctx, Mk * Dkv, 1.0f, t, dxkv);
    }
    dl_arena_release(scratch, mark);
}

/* ================================================================ transformer block */

/* The normed streams LN_i(h_i) and the GEGLU output are not kept: the backward recomputes them
 * (cheap, and bit-identical) only where a layer that trains needs them as its input. */
typedef struct tblock_saved {
    float *h[3];            /* [M, C] inputs of norm1, norm2, norm3 */
    float *mean[3], *rstd[3];/* [M] */
    float *g;               /* [M, 8C] ff.net.0.proj output (value | gate) */
    attn_saved a1, a2;
} tblock_saved;

static void tblock_layout(const dl_unet_tblock *b, int N, int S, int C, int T, dl_slab *s, tblock_saved *sv)
{
    const int64_t M = (int64_t)N * S;
    for (int i = 0; i < 3; i++)
        sv->h[i] = dl_slab_take(s, M * C), sv->mean[i] = dl_slab_take(s, M), sv->rstd[i] = dl_slab_take(s, M);
    sv->g = dl_slab_take(s, M * 8 * C);
    attn_layout(&b->attn1, N, S, S, s, &sv->a1);
    attn_layout(&b->attn2, N, S, T, s, &sv->a2);
}

static void ln_fwd(const dl_ctx *ctx, const dl_norm *m, int64_t M, const float *x, float *y, float *mean, float *rstd)
{
    dl_be(ctx)->layernorm_forward(ctx, M, m->C, m->eps, x, m->gamma, m->beta, y, mean, rstd);
}

/* h [N, S, C] in place; context [N, T, Dc]. */
static void tblock_fwd(const dl_ctx *ctx, const dl_unet_tblock *b, int N, int S, int C, float *h,
                       const float *context, int T, const tblock_saved *sv, dl_arena *scratch)
{
    const int64_t M = (int64_t)N * S;
    size_t mark = dl_arena_mark(scratch);
    float *a = dl_alloc_f32(scratch, M * C);                                         // [N, S, C]
    float *n = dl_alloc_f32(scratch, M * C);                                         // [N, S, C]
    float *f = dl_alloc_f32(scratch, M * 4 * C);                                     // [N, S, 4C]
    dl_be(ctx)->scale_forward(ctx, M * C, 1.0f, h, sv->h[0]);                         // h0 = h
    ln_fwd(ctx, &b->norm1, M, h, n, sv->mean[0], sv->rstd[0]);                       // n = LN1(h)
    attn_fwd(ctx, &b->attn1, N, S, n, S, n, a, &sv->a1, scratch);                    // a [N, S, C] self
    dl_be(ctx)->add_forward(ctx, M * C, h, a, h);                                    // h += a
    dl_be(ctx)->scale_forward(ctx, M * C, 1.0f, h, sv->h[1]);                         // h1 = h
    ln_fwd(ctx, &b->norm2, M, h, n, sv->mean[1], sv->rstd[1]);                       // n = LN2(h)
    attn_fwd(ctx, &b->attn2, N, S, n, T, context, a, &sv->a2, scratch);              // a [N, S, C] cross
    dl_be(ctx)->add_forward(ctx, M * C, h, a, h);                                    // h += a
    dl_be(ctx)->scale_forward(ctx, M * C, 1.0f, h, sv->h[2]);                         // h2 = h
    ln_fwd(ctx, &b->norm3, M, h, n, sv->mean[2], sv->rstd[2]);                       // n = LN3(h)
    dl_linear_fwd(ctx, &b->ff_proj, M, n, sv->g, scratch);                           // g [N, S, 4C | 4C]
    dl_be(ctx)->geglu_forward(ctx, M, 4 * C, sv->g, f);                              // f [N, S, 4C]
    dl_linear_fwd(ctx, &b->ff_out, M, f, a, scratch);                                // a [N, S, C]
    dl_be(ctx)->add_forward(ctx, M * C, h, a, h);                                    // h += a
    dl_arena_release(scratch, mark);
}

/* LN(h) [M, C] recomputed into n when need (a layer that trains reads it), else NULL. */
static float *ln_again(const dl_ctx *ctx, const dl_norm *m, int64_t M, const float *h, float *n, int need)
{
    if (!need) return NULL;
    ln_fwd(ctx, m, M, h, n, NULL, NULL);
    return n;
}

/* dh [N, S, C] in place: d(output) in, d(input) out. dctx [N, T, Dc] accumulated when not NULL. */
static void tblock_bwd(const dl_ctx *ctx, const dl_unet_tblock *b, int N, int S, int C, const float *context,
                       int T, const tblock_saved *sv, float *dh, float *dctx, dl_arena *scratch)
{
    const int64_t M = (int64_t)N * S, Mk = (int64_t)N * T;
    size_t mark = dl_arena_mark(scratch);
    float *dn = dl_alloc_f32(scratch, M * C), *dt = dl_alloc_f32(scratch, M * C);    // [N, S, C]
    float *nb = dl_alloc_f32(scratch, M * C);                                        // [N, S, C] LN_i(h_i)
    const dl_unet_attn *a1 = &b->attn1;
    {   /* feed-forward */
        size_t kf = dl_arena_mark(scratch);
        float *df = dl_alloc_f32(scratch, M * 4 * C);                                // [N, S, 4C]
        float *dg = dl_alloc_f32(scratch, M * 8 * C);                                // [N, S, 8C]
        float *f = NULL;
        if (dl_linear_trains(&b->ff_out)) {
            f = dl_alloc_f32(scratch, M * 4 * C);                                    // [N, S, 4C] again
            dl_be(ctx)->geglu_forward(ctx, M, 4 * C, sv->g, f);
        }
        dl_linear_bwd(ctx, &b->ff_out, M, f, dh, df, scratch);
        dl_be(ctx)->geglu_backward(ctx, M, 4 * C, sv->g, df, dg);
        const float *n3 = ln_again(ctx, &b->norm3, M, sv->h[2], nb, dl_linear_trains(&b->ff_proj));
        dl_linear_bwd(ctx, &b->ff_proj, M, n3, dg, dn, scratch);
        dl_arena_release(scratch, kf);
    }
    dl_layernorm_bwd(ctx, &b->norm3, M, sv->h[2], sv->mean[2], sv->rstd[2], dn, dt, scratch);
    dl_be(ctx)->axpy(ctx, M * C, 1.0f, dt, dh);
    {   /* cross-attention */
        size_t kc = dl_arena_mark(scratch);
        float *dkv = dctx ? dl_alloc_f32(scratch, Mk * b->attn2.to_k.in) : NULL;     // [N, T, Dc]
        const float *n2 = ln_again(ctx, &b->norm2, M, sv->h[1], nb, dl_linear_trains(&b->attn2.to_q));
        attn_bwd(ctx, &b->attn2, N, S, n2, T, context, &sv->a2, dh, dn, dkv, 0, scratch);
        if (dctx) dl_be(ctx)->axpy(ctx, Mk * b->attn2.to_k.in, 1.0f, dkv, dctx);
        dl_arena_release(scratch, kc);
    }
    dl_layernorm_bwd(ctx, &b->norm2, M, sv->h[1], sv->mean[1], sv->rstd[1], dn, dt, scratch);
    dl_be(ctx)->axpy(ctx, M * C, 1.0f, dt, dh);
    const float *n1 = ln_again(ctx, &b->norm1, M, sv->h[0], nb,
                               dl_linear_trains(&a1->to_q) || dl_linear_trains(&a1->to_k) || dl_linear_trains(&a1->to_v));
    attn_bwd(ctx, a1, N, S, n1, S, n1, &sv->a1, dh, dn, NULL, 1, scratch);           // self
    dl_layernorm_bwd(ctx, &b->norm1, M, sv->h[0], sv->mean[0], sv->rstd[0], dn, dt, scratch);
    dl_be(ctx)->axpy(ctx, M * C, 1.0f, dt, dh);
    dl_arena_release(scratch, mark);
}

/* ================================================================ Transformer2D */

typedef struct saved {
    float *mean, *rstd;   /* [N, G] */
    float *a;             /* [M, C] GroupNorm(x) (proj_in's input) */
    float *hs;            /* [M, C] the token stream after the blocks (proj_out's input) */
    dl_slab blocks;       /* where block 0's record starts; every block's has the same size */
    size_t block_bytes;
} saved;

static size_t layout(const dl_unet_transformer *tr, int N, int S, int T, uintptr_t base, saved *sv)
{
    const int64_t M = (int64_t)N * S;
    dl_slab s = {base, 0};
    sv->mean = dl_slab_take(&s, (int64_t)N * tr->norm.G), sv->rstd = dl_slab_take(&s, (int64_t)N * tr->norm.G);
    sv->a = dl_slab_take(&s, M * tr->C);
    sv->hs = dl_slab_take(&s, M * tr->C);
    sv->blocks = s;
    dl_slab probe = {0, 0};
    tblock_saved tmp;
    if (tr->n_blocks > 0) tblock_layout(&tr->blocks[0], N, S, tr->C, T, &probe, &tmp);
    sv->block_bytes = probe.off;
    return s.off + (size_t)tr->n_blocks * probe.off;
}

/* The record of block i. */
static void block_record(const dl_unet_transformer *tr, const saved *sv, int i, int N, int S, int T, tblock_saved *b)
{
    dl_slab s = {sv->blocks.base + sv->blocks.off + (size_t)i * sv->block_bytes, 0};
    tblock_layout(&tr->blocks[i], N, S, tr->C, T, &s, b);
}

float *dl_transformer_forward(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W, const float *x,
                              const float *context, int T, float *y, dl_arena *save, dl_arena *scratch)
{
    const int C = tr->C, S = H * W;
    const int64_t M = (int64_t)N * S;
    saved sv;
    float *base = dl_alloc_f32(save, (int64_t)(layout(tr, N, S, T, 0, &sv) / sizeof(float)));
    layout(tr, N, S, T, (uintptr_t)base, &sv);
    dl_groupnorm_shape g = {.N = N, .HW = S, .C = C, .G = tr->norm.G, .eps = tr->norm.eps, .silu = 0};
    dl_be(ctx)->groupnorm_forward(ctx, g, x, tr->norm.gamma, tr->norm.beta, sv.a, sv.mean, sv.rstd);
    dl_linear_fwd(ctx, &tr->proj_in, M, sv.a, sv.hs, scratch);                       // hs [N, S, C]
    for (int i = 0; i < tr->n_blocks; i++) {
        tblock_saved b;
        block_record(tr, &sv, i, N, S, T, &b);
        tblock_fwd(ctx, &tr->blocks[i], N, S, C, sv.hs, context, T, &b, scratch);    // hs [N, S, C]
    }
    dl_linear_fwd(ctx, &tr->proj_out, M, sv.hs, y, scratch);                         // y [N, S, C]
    dl_be(ctx)->add_forward(ctx, M * C, y, x, y);                                    // y += x
    return base;
}

void dl_transformer_backward(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W, const float *x,
                             const float *context, int T, const float *saved_base, const float *dy, float *dx,
                             float *dctx, dl_arena *scratch)
{
    const int C = tr->C, S = H * W;
    const int64_t M = (int64_t)N * S;
    saved sv;
    layout(tr, N, S, T, (uintptr_t)saved_base, &sv);
    size_t mark = dl_arena_mark(scratch);
    float *dh = dl_alloc_f32(scratch, M * C), *da = dl_alloc_f32(scratch, M * C);    // [N, S, C]
    dl_linear_bwd(ctx, &tr->proj_out, M, sv.hs, dy, dh, scratch);                    // dh = d hs
    for (int i = tr->n_blocks - 1; i >= 0; i--) {
        tblock_saved b;
        block_record(tr, &sv, i, N, S, T, &b);
        tblock_bwd(ctx, &tr->blocks[i], N, S, C, context, T, &b, dh, dctx, scratch);
    }
    const int below = dx || dl_norm_trains(&tr->norm);
    dl_linear_bwd(ctx, &tr->proj_in, M, sv.a, dh, below ? da : NULL, scratch);       // da = d a
    if (below) dl_groupnorm_bwd(ctx, &tr->norm, N, S, x, sv.mean, sv.rstd, da, dx ? dh : NULL, 0, scratch); // dh = d x (norm path)
    if (dx) dl_be(ctx)->add_forward(ctx, M * C, dh, dy, dx);                          // + the residual
    dl_arena_release(scratch, mark);
}
