/* unet_train.c - the UNet training forward on a tape of blocks and its backward (LoRA gradients,
 * optional d(context)), with per-block gradient checkpointing and exact memory sizing. */
#include "train/unet_train.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ memory
 * Every buffer comes from a `mem`: an arena plus byte accounting. With a == NULL it only counts
 * (the sizing functions run the same code as the real pass, with no compute), so the sizes are
 * those of the code, not of a separate formula. While measuring, take() hands out distinct
 * non-NULL placeholder addresses that are never dereferenced (every compute is under RUN), so
 * the "is this gradient wanted" (pointer != NULL) decisions are the same as in the real pass. */

typedef struct mem {
    dl_arena *a;  /* NULL: measuring */
    size_t used, peak;
    _Alignas(64) unsigned char dummy[256]; /* struct stand-in while measuring */
} mem;

typedef struct mmark {
    size_t arena, used;
} mmark;

#define RUN(m) if ((m)->a)

static size_t al(int64_t n) { return ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63; }

static void mem_init(mem *m, dl_arena *a)
{
    m->a = a;
    m->used = m->peak = 0;
}

static void bump(mem *m, size_t b)
{
    m->used += b;
    if (m->used > m->peak) m->peak = m->used;
}

/* n floats (a placeholder address while measuring). */
static float *take(mem *m, int64_t n)
{
    bump(m, al(n));
    return m->a ? dl_alloc_f32(m->a, n) : (float *)(uintptr_t)m->used;
}

/* A struct of `bytes` (the dummy while measuring). */
static void *take_struct(mem *m, size_t bytes)
{
    DL_ASSERT(bytes <= sizeof m->dummy);
    size_t need = (bytes + 63) & ~(size_t)63;
    bump(m, need);
    if (!m->a) return m->dummy;
    void *p = dl_arena_alloc(m->a, bytes);
    DL_ASSERTF(p, "%s", dl_error_msg());
    return p;
}

/* A callee that takes `bytes` from the arena and gives them back before returning. */
static void transient(mem *m, size_t bytes)
{
    if (m->used + bytes > m->peak) m->peak = m->used + bytes;
}

static mmark mem_mark(const mem *m) { return (mmark){m->a ? dl_arena_mark(m->a) : 0, m->used}; }

static void mem_release(mem *m, mmark k)
{
    if (m->a) dl_arena_release(m->a, k.arena);
    m->used = k.used;
}

/* ---- module calls, accounted (s: the scratch they take their temporaries from) */

static void lin_fwd(const dl_ctx *ctx, mem *s, const dl_linear *m, int64_t M, const float *x, float *y)
{
    if (m->lora && !m->lora->merged) transient(s, al(M * m->lora->r));
    RUN(s) dl_linear_fwd(ctx, m, M, x, y, s->a);
}

static void lin_bwd(const dl_ctx *ctx, mem *s, const dl_linear *m, int64_t M, const float *x, const float *dy,
                    float *dx)
{
    if (!dx && !m->lora) return;
    transient(s, dl_linear_bwd_scratch_bytes(m, M));
    RUN(s) dl_linear_bwd(ctx, m, M, x, dy, dx, s->a);
}

static void conv_fwd(const dl_ctx *ctx, mem *s, const dl_conv *m, int N, int H, int W, const float *x, float *y)
{
    if (m->lora && !m->lora->merged) {
        dl_conv2d_shape sh = dl_conv2d_shape_make(N, H, W, m->cin, m->cout, m->k, m->stride, 0);
        sh.pad_top = m->pad_top, sh.pad_left = m->pad_left, sh.pad_bottom = m->pad_bottom, sh.pad_right = m->pad_right;
        transient(s, al((int64_t)N * dl_conv2d_out_h(&sh) * dl_conv2d_out_w(&sh) * m->lora->r));
    }
    RUN(s) dl_conv_fwd(ctx, m, N, H, W, x, y, NULL, NULL, s->a);
}

static void conv_bwd(const dl_ctx *ctx, mem *s, const dl_conv *m, int N, int H, int W, const float *x,
                     const float *dy, float *dx)
{
    if (!dx && !m->lora) return;
    transient(s, dl_conv_bwd_scratch_bytes(m, N, H, W));
    RUN(s) dl_conv_bwd(ctx, m, N, H, W, x, dy, dx, s->a);
}

/* dst = src (threaded: a scale by exactly 1). */
static void copy_f32(const dl_ctx *ctx, mem *s, int64_t n, const float *src, float *dst)
{
    RUN(s) dl_be(ctx)->scale_forward(ctx, n, 1.0f, src, dst);
}

/* ================================================================ blocks
 * Each block has fwd (compute y, save what its backward needs into `save`, temporaries from s,
 * which the caller releases) and bwd (dx overwritten, NULL: not wanted; temporaries released). */

/* ---------------------------------------------------------------- resnet */

typedef struct resnet_saved {
    float *cat;          /* [P, cin] concat(x, skip) (up path), else NULL */
    float *mean1, *rstd1;/* [N, G] */
    float *a1;           /* [P, cin] SiLU(GN1(x)), kept only when conv1 has a LoRA */
    float *y1;           /* [P, cout] conv1(a1) + time_emb_proj(temb_act) (norm2's input) */
    float *mean2, *rstd2;/* [N, G] */
    float *a2;           /* [P, cout] SiLU(GN2(y1)), kept only when conv2 has a LoRA */
} resnet_saved;

static resnet_saved *resnet_fwd(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x,
                                const float *skip, int cskip, const float *temb_act, float *y, mem *save, mem *s)
{
    const int64_t HW = (int64_t)H * W, P = N * HW;
    const int cin = r->cin, cout = r->cout, G1 = r->norm1.G, G2 = r->norm2.G;
    resnet_saved *sv = take_struct(save, sizeof *sv);
    const float *xin = x;
    sv->cat = NULL;
    if (cskip) {
        sv->cat = take(save, P * cin);                                               // [N, H, W, cin]
        RUN(save) dl_be(ctx)->concat_channels_forward(ctx, P, cin - cskip, cskip, x, skip, sv->cat);
        xin = sv->cat;
    }
    sv->mean1 = take(save, (int64_t)N * G1), sv->rstd1 = take(save, (int64_t)N * G1);
    sv->a1 = take(r->conv1.lora ? save : s, P * cin);                                // [N, H, W, cin]
    sv->y1 = take(save, P * cout);                                                   // [N, H, W, cout]
    sv->mean2 = take(save, (int64_t)N * G2), sv->rstd2 = take(save, (int64_t)N * G2);
    sv->a2 = take(r->conv2.lora ? save : s, P * cout);                               // [N, H, W, cout]
    float *tp = take(s, (int64_t)N * cout);                                          // [N, cout]
    dl_groupnorm_shape g1 = {.N = N, .HW = (int)HW, .C = cin, .G = G1, .eps = r->norm1.eps, .silu = 1};
    dl_groupnorm_shape g2 = {.N = N, .HW = (int)HW, .C = cout, .G = G2, .eps = r->norm2.eps, .silu = 1};
    RUN(s) dl_be(ctx)->groupnorm_forward(ctx, g1, xin, r->norm1.gamma, r->norm1.beta, sv->a1, sv->mean1, sv->rstd1);
    conv_fwd(ctx, s, &r->conv1, N, H, W, sv->a1, sv->y1);                            // y1 [N, H, W, cout]
    lin_fwd(ctx, s, &r->time_emb_proj, N, temb_act, tp);                             // tp [N, cout]
    RUN(s) dl_be(ctx)->add_bcast_forward(ctx, N, HW, cout, 1, sv->y1, tp, sv->y1);   // y1 += tp
    RUN(s) dl_be(ctx)->groupnorm_forward(ctx, g2, sv->y1, r->norm2.gamma, r->norm2.beta, sv->a2, sv->mean2, sv->rstd2);
    conv_fwd(ctx, s, &r->conv2, N, H, W, sv->a2, y);                                 // y [N, H, W, cout]
    if (r->has_shortcut) {
        float *sc = take(s, P * cout);                                               // [N, H, W, cout]
        conv_fwd(ctx, s, &r->conv_shortcut, N, H, W, xin, sc);
        RUN(s) dl_be(ctx)->add_forward(ctx, P * cout, sc, y, y);                     // y += shortcut(x)
    } else {
        RUN(s) dl_be(ctx)->add_forward(ctx, P * cout, xin, y, y);                    // y += x
    }
    if (!r->conv1.lora) sv->a1 = NULL;
    if (!r->conv2.lora) sv->a2 = NULL;
    return sv;
}

/* dx [P, cin] (of the concatenated input on the up path) from dy [P, cout]. */
static void resnet_bwd(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x,
                       const float *temb_act, const resnet_saved *sv, const float *dy, float *dx, mem *s)
{
    const int64_t HW = (int64_t)H * W, P = N * HW;
    const int cin = r->cin, cout = r->cout, mx = cin > cout ? cin : cout;
    const float *xin = sv->cat ? sv->cat : x;
    mmark k = mem_mark(s);
    float *t1 = take(s, P * cout);                                                   // [N, H, W, cout]
    float *t2 = take(s, P * mx);                                                     // [N, H, W, max]
    float *t3 = take(s, P * cin);                                                    // [N, H, W, cin]
    if (dx) { /* the residual branch */
        if (r->has_shortcut) conv_bwd(ctx, s, &r->conv_shortcut, N, H, W, xin, dy, dx);
        else copy_f32(ctx, s, P * cout, dy, dx);
    } else if (r->has_shortcut) {
        conv_bwd(ctx, s, &r->conv_shortcut, N, H, W, xin, dy, NULL);                 // its LoRA only
    }
    conv_bwd(ctx, s, &r->conv2, N, H, W, sv->a2, dy, t1);                            // t1 = d a2
    RUN(s) dl_groupnorm_bwd(ctx, &r->norm2, N, HW, sv->y1, sv->mean2, sv->rstd2, t1, t2, 1); // t2 = d y1
    if (r->time_emb_proj.lora) { /* not a default target, but supported */
        float *dtp = take(s, (int64_t)N * cout);                                     // [N, cout]
        RUN(s) dl_be(ctx)->add_bcast_backward(ctx, N, HW, cout, 1, t2, NULL, dtp);
        lin_bwd(ctx, s, &r->time_emb_proj, N, temb_act, dtp, NULL);
    }
    conv_bwd(ctx, s, &r->conv1, N, H, W, sv->a1, t2, dx ? t3 : NULL);               // t3 = d a1
    if (dx) {
        RUN(s) dl_groupnorm_bwd(ctx, &r->norm1, N, HW, xin, sv->mean1, sv->rstd1, t3, t2, 1); // t2 = d x
        RUN(s) dl_be(ctx)->axpy(ctx, P * cin, 1.0f, t2, dx);
    }
    mem_release(s, k);
}

/* ---------------------------------------------------------------- attention */

typedef struct attn_saved {
    float *q, *o;       /* [N, Tq, C] */
    float *k, *v;       /* [N, Tk, C] */
    float *lse;         /* [N, heads, Tq] */
} attn_saved;

static dl_attention_shape attn_shape(const dl_unet_attn *at, int N, int Tq, int Tk)
{
    return (dl_attention_shape){.N = N, .Tq = Tq, .Tk = Tk, .H = at->heads, .d = at->dim_head,
                                .scale = (float)(1.0 / sqrt((double)at->dim_head)), .causal = 0};
}

/* out [N, Tq, C] = to_out(attention(to_q(xq), to_k(xkv), to_v(xkv))) as unet.c's attn_fwd. */
static void attn_fwd(const dl_ctx *ctx, const dl_unet_attn *at, int N, int Tq, const float *xq, int Tk,
                     const float *xkv, float *out, attn_saved *sv, mem *save, mem *s)
{
    const int C = at->to_q.out;
    const int64_t Mq = (int64_t)N * Tq, Mk = (int64_t)N * Tk;
    sv->q = take(save, Mq * C), sv->o = take(save, Mq * C);                          // [N, Tq, C]
    sv->k = take(save, Mk * C), sv->v = take(save, Mk * C);                          // [N, Tk, C]
    sv->lse = take(save, (int64_t)N * at->heads * Tq);                               // [N, heads, Tq]
    lin_fwd(ctx, s, &at->to_q, Mq, xq, sv->q);
    lin_fwd(ctx, s, &at->to_k, Mk, xkv, sv->k);
    lin_fwd(ctx, s, &at->to_v, Mk, xkv, sv->v);
    RUN(s) dl_be(ctx)->attention_forward(ctx, attn_shape(at, N, Tq, Tk), sv->q, sv->k, sv->v, sv->o, sv->lse);
    lin_fwd(ctx, s, &at->to_out, Mq, sv->o, out);                                    // out [N, Tq, C]
}

/* From dout [N, Tq, C]: dxq [N, Tq, C] overwritten (the whole gradient of xq when self: xkv is
 * xq); dxkv [N, Tk, Dkv] overwritten when not self and not NULL. */
static void attn_bwd(const dl_ctx *ctx, const dl_unet_attn *at, int N, int Tq, const float *xq, int Tk,
                     const float *xkv, const attn_saved *sv, const float *dout, float *dxq, float *dxkv, int self,
                     mem *s)
{
    const int C = at->to_q.out, Dkv = at->to_k.in;
    const int64_t Mq = (int64_t)N * Tq, Mk = (int64_t)N * Tk;
    mmark k = mem_mark(s);
    float *dout_o = take(s, Mq * C);                                                 // [N, Tq, C]
    float *dq = take(s, Mq * C);                                                     // [N, Tq, C]
    float *dk = take(s, Mk * C), *dv = take(s, Mk * C);                              // [N, Tk, C]
    lin_bwd(ctx, s, &at->to_out, Mq, sv->o, dout, dout_o);
    RUN(s) dl_be(ctx)->attention_backward(ctx, attn_shape(at, N, Tq, Tk), sv->q, sv->k, sv->v, sv->o, sv->lse, dout_o,
                                          dq, dk, dv);
    lin_bwd(ctx, s, &at->to_q, Mq, xq, dq, dxq);
    if (self) {
        float *t = take(s, Mq * C);                                                  // [N, Tq, C]
        lin_bwd(ctx, s, &at->to_k, Mk, xkv, dk, dxq ? t : NULL);
        if (dxq) RUN(s) dl_be(ctx)->axpy(ctx, Mq * C, 1.0f, t, dxq);
        lin_bwd(ctx, s, &at->to_v, Mk, xkv, dv, dxq ? t : NULL);
        if (dxq) RUN(s) dl_be(ctx)->axpy(ctx, Mq * C, 1.0f, t, dxq);
    } else {
        float *t = dxkv ? take(s, Mk * Dkv) : NULL;                                  // [N, Tk, Dkv]
        lin_bwd(ctx, s, &at->to_k, Mk, xkv, dk, dxkv);
        lin_bwd(ctx, s, &at->to_v, Mk, xkv, dv, t);
        if (dxkv) RUN(s) dl_be(ctx)->axpy(ctx, Mk * Dkv, 1.0f, t, dxkv);
    }
    mem_release(s, k);
}

/* ---------------------------------------------------------------- transformer block */

/* The normed streams LN_i(h_i) and the GEGLU output are not kept: the backward recomputes them
 * (cheap, and bit-identical) only where a LoRA needs them as its input. */
typedef struct tblock_saved {
    float *h0, *h1, *h2;                        /* [M, C] inputs of norm1, norm2, norm3 */
    float *mean1, *rstd1, *mean2, *rstd2, *mean3, *rstd3; /* [M] */
    attn_saved a1, a2;
    float *g;                                   /* [M, 8C] ff.net.0.proj output (value | gate) */
} tblock_saved;

static void ln_fwd(const dl_ctx *ctx, mem *s, const dl_norm *m, int64_t M, const float *x, float *y, float *mean,
                   float *rstd)
{
    RUN(s) dl_be(ctx)->layernorm_forward(ctx, M, m->C, m->eps, x, m->gamma, m->beta, y, mean, rstd);
}

/* h [N, S, C] in place, as dl_unet_tblock_fwd. */
static void tblock_fwd(const dl_ctx *ctx, const dl_unet_tblock *b, int N, int S, int C, float *h,
                       const float *context, int T, tblock_saved *sv, mem *save, mem *s)
{
    const int64_t M = (int64_t)N * S;
    float *a = take(s, M * C);                                                       // [N, S, C]
    float *n = take(s, M * C);                                                       // [N, S, C]
    float *f = take(s, M * 4 * C);                                                   // [N, S, 4C]
    float **hs[3] = {&sv->h0, &sv->h1, &sv->h2};
    float **mu[3] = {&sv->mean1, &sv->mean2, &sv->mean3}, **rs[3] = {&sv->rstd1, &sv->rstd2, &sv->rstd3};
    for (int i = 0; i < 3; i++) *hs[i] = take(save, M * C), *mu[i] = take(save, M), *rs[i] = take(save, M);
    sv->g = take(save, M * 8 * C);                                                   // [N, S, 8C]
    copy_f32(ctx, s, M * C, h, sv->h0);
    ln_fwd(ctx, s, &b->norm1, M, h, n, sv->mean1, sv->rstd1);                        // n = LN1(h)
    attn_fwd(ctx, &b->attn1, N, S, n, S, n, a, &sv->a1, save, s);                    // a self
    RUN(s) dl_be(ctx)->add_forward(ctx, M * C, h, a, h);
    copy_f32(ctx, s, M * C, h, sv->h1);
    ln_fwd(ctx, s, &b->norm2, M, h, n, sv->mean2, sv->rstd2);                        // n = LN2(h)
    attn_fwd(ctx, &b->attn2, N, S, n, T, context, a, &sv->a2, save, s);              // a cross
    RUN(s) dl_be(ctx)->add_forward(ctx, M * C, h, a, h);
    copy_f32(ctx, s, M * C, h, sv->h2);
    ln_fwd(ctx, s, &b->norm3, M, h, n, sv->mean3, sv->rstd3);                        // n = LN3(h)
    lin_fwd(ctx, s, &b->ff_proj, M, n, sv->g);                                       // g [N, S, 8C]
    RUN(s) dl_be(ctx)->geglu_forward(ctx, M, 4 * C, sv->g, f);                       // f [N, S, 4C]
    lin_fwd(ctx, s, &b->ff_out, M, f, a);                                            // a [N, S, C]
    RUN(s) dl_be(ctx)->add_forward(ctx, M * C, h, a, h);
}

/* LN(h) [M, C] recomputed into n when need (a LoRA reads it), else NULL. */
static float *ln_again(const dl_ctx *ctx, mem *s, const dl_norm *m, int64_t M, const float *h, float *n, int need)
{
    if (!need) return NULL;
    ln_fwd(ctx, s, m, M, h, n, NULL, NULL);
    return n;
}

/* dh [N, S, C] in place: d(output) in, d(input) out. dctx [N, T, Dc] accumulated when not NULL. */
static void tblock_bwd(const dl_ctx *ctx, const dl_unet_tblock *b, int N, int S, int C, const float *context,
                       int T, const tblock_saved *sv, float *dh, float *dctx, mem *s)
{
    const int64_t M = (int64_t)N * S, Mk = (int64_t)N * T;
    mmark k = mem_mark(s);
    float *dn = take(s, M * C), *dt = take(s, M * C);                                // [N, S, C]
    float *nb = take(s, M * C);                                                      // [N, S, C] LN_i(h_i)
    const dl_unet_attn *a1 = &b->attn1;
    {   /* feed-forward */
        mmark kf = mem_mark(s);
        float *df = take(s, M * 4 * C);                                              // [N, S, 4C]
        float *dg = take(s, M * 8 * C);                                              // [N, S, 8C]
        float *f = NULL;
        if (b->ff_out.lora) {
            f = take(s, M * 4 * C);                                                  // [N, S, 4C] again
            RUN(s) dl_be(ctx)->geglu_forward(ctx, M, 4 * C, sv->g, f);
        }
        lin_bwd(ctx, s, &b->ff_out, M, f, dh, df);
        RUN(s) dl_be(ctx)->geglu_backward(ctx, M, 4 * C, sv->g, df, dg);
        lin_bwd(ctx, s, &b->ff_proj, M, ln_again(ctx, s, &b->norm3, M, sv->h2, nb, b->ff_proj.lora != NULL), dg,
                dn);
        mem_release(s, kf);
    }
    RUN(s) dl_layernorm_bwd(ctx, &b->norm3, M, sv->h2, sv->mean3, sv->rstd3, dn, dt);
    RUN(s) dl_be(ctx)->axpy(ctx, M * C, 1.0f, dt, dh);
    {   /* cross-attention */
        mmark kc = mem_mark(s);
        float *dkv = dctx ? take(s, Mk * b->attn2.to_k.in) : NULL;                   // [N, T, Dc]
        const float *n2 = ln_again(ctx, s, &b->norm2, M, sv->h1, nb, b->attn2.to_q.lora != NULL);
        attn_bwd(ctx, &b->attn2, N, S, n2, T, context, &sv->a2, dh, dn, dkv, 0, s);
        if (dctx) RUN(s) dl_be(ctx)->axpy(ctx, Mk * b->attn2.to_k.in, 1.0f, dkv, dctx);
        mem_release(s, kc);
    }
    RUN(s) dl_layernorm_bwd(ctx, &b->norm2, M, sv->h1, sv->mean2, sv->rstd2, dn, dt);
    RUN(s) dl_be(ctx)->axpy(ctx, M * C, 1.0f, dt, dh);
    const float *n1 = ln_again(ctx, s, &b->norm1, M, sv->h0, nb, a1->to_q.lora || a1->to_k.lora || a1->to_v.lora);
    attn_bwd(ctx, a1, N, S, n1, S, n1, &sv->a1, dh, dn, NULL, 1, s);                 // self
    RUN(s) dl_layernorm_bwd(ctx, &b->norm1, M, sv->h0, sv->mean1, sv->rstd1, dn, dt);
    RUN(s) dl_be(ctx)->axpy(ctx, M * C, 1.0f, dt, dh);
    mem_release(s, k);
}

/* ---------------------------------------------------------------- transformer */

typedef struct transformer_saved {
    float *mean, *rstd;   /* [N, G] */
    float *a;             /* [M, C] GroupNorm(x) (proj_in's input) */
    float *hs;            /* [M, C] the token stream after the blocks (proj_out's input) */
    tblock_saved *blocks; /* [n_blocks] */
} transformer_saved;

static transformer_saved *transformer_fwd(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W,
                                          const float *x, const float *context, int T, float *y, mem *save, mem *s)
{
    const int C = tr->C, S = H * W, G = tr->norm.G;
    const int64_t M = (int64_t)N * S;
    transformer_saved *sv = take_struct(save, sizeof *sv);
    sv->mean = take(save, (int64_t)N * G), sv->rstd = take(save, (int64_t)N * G);
    sv->a = take(save, M * C);                                                       // [N, S, C]
    sv->hs = take(save, M * C);                                                      // [N, S, C]
    /* the per-block records: an array in `save` (a local stand-in while measuring) */
    size_t bb = (size_t)tr->n_blocks * sizeof(tblock_saved);
    bump(save, (bb + 63) & ~(size_t)63);
    tblock_saved stand_in;
    sv->blocks = NULL;
    if (save->a) {
        sv->blocks = dl_arena_alloc(save->a, bb);
        DL_ASSERTF(sv->blocks, "%s", dl_error_msg());
    }
    dl_groupnorm_shape g = {.N = N, .HW = S, .C = C, .G = G, .eps = tr->norm.eps, .silu = 0};
    RUN(s) dl_be(ctx)->groupnorm_forward(ctx, g, x, tr->norm.gamma, tr->norm.beta, sv->a, sv->mean, sv->rstd);
    lin_fwd(ctx, s, &tr->proj_in, M, sv->a, sv->hs);                                 // hs [N, S, C]
    for (int i = 0; i < tr->n_blocks; i++)
        tblock_fwd(ctx, &tr->blocks[i], N, S, C, sv->hs, context, T, save->a ? &sv->blocks[i] : &stand_in, save, s);
    lin_fwd(ctx, s, &tr->proj_out, M, sv->hs, y);                                    // y [N, S, C]
    RUN(s) dl_be(ctx)->add_forward(ctx, M * C, y, x, y);                             // y += x
    return sv;
}

static void transformer_bwd(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W, const float *x,
                            const float *context, int T, const transformer_saved *sv, const float *dy, float *dx,
                            float *dctx, mem *s)
{
    const int C = tr->C, S = H * W;
    const int64_t M = (int64_t)N * S;
    mmark k = mem_mark(s);
    float *dh = take(s, M * C), *da = take(s, M * C);                                // [N, S, C]
    tblock_saved stand_in;
    memset(&stand_in, 0, sizeof stand_in);
    lin_bwd(ctx, s, &tr->proj_out, M, sv->hs, dy, dh);                               // dh = d hs
    for (int i = tr->n_blocks - 1; i >= 0; i--)
        tblock_bwd(ctx, &tr->blocks[i], N, S, C, context, T, s->a ? &sv->blocks[i] : &stand_in, dh, dctx, s);
    lin_bwd(ctx, s, &tr->proj_in, M, sv->a, dh, dx ? da : NULL);                     // da = d a
    if (dx) {
        RUN(s) dl_groupnorm_bwd(ctx, &tr->norm, N, S, x, sv->mean, sv->rstd, da, dh, 0); // dh = d x (norm path)
        RUN(s) dl_be(ctx)->add_forward(ctx, M * C, dh, dy, dx);                      // + the residual
    }
    mem_release(s, k);
}

/* ---------------------------------------------------------------- samplers, conv_in, output head */

typedef struct upsample_saved {
    float *up; /* [N, 2H, 2W, C] the upsampled input (conv's input), kept only with a LoRA */
} upsample_saved;

static upsample_saved *upsample_fwd(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x,
                                    float *y, mem *save, mem *s)
{
    const int C = conv->cin;
    upsample_saved *sv = take_struct(save, sizeof *sv);
    sv->up = take(conv->lora ? save : s, (int64_t)N * 4 * H * W * C);               // [N, 2H, 2W, C]
    RUN(s) dl_be(ctx)->upsample_nearest2x_forward(ctx, N, H, W, C, x, sv->up);
    conv_fwd(ctx, s, conv, N, 2 * H, 2 * W, sv->up, y);                              // y [N, 2H, 2W, C]
    if (!conv->lora) sv->up = NULL;
    return sv;
}

static void upsample_bwd(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const upsample_saved *sv,
                         const float *dy, float *dx, mem *s)
{
    const int C = conv->cin;
    mmark k = mem_mark(s);
    float *dup = dx ? take(s, (int64_t)N * 4 * H * W * C) : NULL;                    // [N, 2H, 2W, C]
    conv_bwd(ctx, s, conv, N, 2 * H, 2 * W, sv->up, dy, dup);
    if (dx) RUN(s) dl_be(ctx)->upsample_nearest2x_backward(ctx, N, H, W, C, dup, dx);
    mem_release(s, k);
}

typedef struct out_saved {
    float *mean, *rstd; /* [N, G] */
    float *a;           /* [N, H, W, C0] SiLU(GN(x)), kept only when conv_out has a LoRA */
} out_saved;

static out_saved *out_fwd(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, float *y,
                          mem *save, mem *s)
{
    const dl_norm *nm = &u->conv_norm_out;
    const int64_t P = (int64_t)N * H * W;
    out_saved *sv = take_struct(save, sizeof *sv);
    sv->mean = take(save, (int64_t)N * nm->G), sv->rstd = take(save, (int64_t)N * nm->G);
    sv->a = take(u->conv_out.lora ? save : s, P * nm->C);                            // [N, H, W, C0]
    dl_groupnorm_shape g = {.N = N, .HW = H * W, .C = nm->C, .G = nm->G, .eps = nm->eps, .silu = 1};
    RUN(s) dl_be(ctx)->groupnorm_forward(ctx, g, x, nm->gamma, nm->beta, sv->a, sv->mean, sv->rstd);
    conv_fwd(ctx, s, &u->conv_out, N, H, W, sv->a, y);                               // y [N, H, W, out_ch]
    if (!u->conv_out.lora) sv->a = NULL;
    return sv;
}

static void out_bwd(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const out_saved *sv,
                    const float *dy, float *dx, mem *s)
{
    const dl_norm *nm = &u->conv_norm_out;
    mmark k = mem_mark(s);
    float *da = dx ? take(s, (int64_t)N * H * W * nm->C) : NULL;                     // [N, H, W, C0]
    conv_bwd(ctx, s, &u->conv_out, N, H, W, sv->a, dy, da);
    if (dx) RUN(s) dl_groupnorm_bwd(ctx, nm, N, (int64_t)H * W, x, sv->mean, sv->rstd, da, dx, 1);
    mem_release(s, k);
}

/* ================================================================ the tape */

static int lin_has_lora(const dl_linear *l) { return l->lora != NULL; }

static int attn_has_lora(const dl_unet_attn *a)
{
    return lin_has_lora(&a->to_q) || lin_has_lora(&a->to_k) || lin_has_lora(&a->to_v) || lin_has_lora(&a->to_out);
}

static int op_has_lora(const dl_tape_op *op)
{
    switch (op->kind) {
    case DL_TAPE_CONV_IN: return ((const dl_unet *)op->block)->conv_in.lora != NULL;
    case DL_TAPE_OUT: return ((const dl_unet *)op->block)->conv_out.lora != NULL;
    case DL_TAPE_DOWNSAMPLE:
    case DL_TAPE_UPSAMPLE: return ((const dl_conv *)op->block)->lora != NULL;
    case DL_TAPE_RESNET: {
        const dl_unet_resnet *r = op->block;
        return r->conv1.lora || r->conv2.lora || (r->has_shortcut && r->conv_shortcut.lora) ||
               r->time_emb_proj.lora;
    }
    case DL_TAPE_TRANSFORMER: {
        const dl_unet_transformer *tr = op->block;
        if (lin_has_lora(&tr->proj_in) || lin_has_lora(&tr->proj_out)) return 1;
        for (int i = 0; i < tr->n_blocks; i++) {
            const dl_unet_tblock *b = &tr->blocks[i];
            if (attn_has_lora(&b->attn1) || attn_has_lora(&b->attn2) || lin_has_lora(&b->ff_proj) ||
                lin_has_lora(&b->ff_out))
                return 1;
        }
        return 0;
    }
    }
    return 0;
}

static int add_op(dl_unet_tape *tp, dl_tape_kind kind, const void *block, int h, int w, int cin, int cout, int x_op)
{
    DL_ASSERT(tp->n_ops < DL_UNET_TAPE_MAX_OPS);
    dl_tape_op *op = &tp->ops[tp->n_ops];
    memset(op, 0, sizeof *op);
    op->kind = kind, op->block = block, op->h = h, op->w = w, op->cin = cin, op->cout = cout;
    op->x_op = x_op, op->skip_op = -1;
    int ho = h, wo = w;
    if (kind == DL_TAPE_DOWNSAMPLE) ho /= 2, wo /= 2;
    if (kind == DL_TAPE_UPSAMPLE) ho *= 2, wo *= 2;
    op->y_numel = (int64_t)tp->N * ho * wo * cout;
    op->needs_bwd = op_has_lora(op);
    return tp->n_ops++;
}

#define MAX_SKIPS (1 + DL_MAX_BLOCKS * (DL_UNET_MAX_LAYERS + 1))

/* The block sequence of dl_unet_forward (buffers are set by the forward). */
static void tape_plan(dl_unet_tape *tp, const dl_unet *u, int N, int H, int W, int T, int checkpoint)
{
    const dl_unet_config *c = &u->cfg;
    const int n = c->n_blocks, L = c->layers_per_block;
    const int *C = c->block_out_channels;
    DL_ASSERT(N > 0 && T > 0 && n >= 1);
    DL_ASSERTF(H % (1 << (n - 1)) == 0 && W % (1 << (n - 1)) == 0,
               "latent %dx%d is not divisible by 2^%d (the UNet's downsampling)", H, W, n - 1);
    memset(tp, 0, sizeof *tp);
    tp->u = u, tp->N = N, tp->H = H, tp->W = W, tp->T = T, tp->checkpoint = checkpoint;
    int skip[MAX_SKIPS], ns = 0;
    int h = H, w = W;
    int cur = add_op(tp, DL_TAPE_CONV_IN, u, h, w, c->in_channels, C[0], -1);
    skip[ns++] = cur;
    for (int i = 0; i < n; i++) {
        const dl_unet_down *d = &u->down[i];
        for (int j = 0; j < L; j++) {
            const dl_unet_resnet *r = &d->resnets[j];
            cur = add_op(tp, DL_TAPE_RESNET, r, h, w, r->cin, r->cout, cur);
            if (d->has_attn) cur = add_op(tp, DL_TAPE_TRANSFORMER, &d->attentions[j], h, w, d->cout, d->cout, cur);
            skip[ns++] = cur;
        }
        if (d->has_down) {
            cur = add_op(tp, DL_TAPE_DOWNSAMPLE, &d->downsample, h, w, d->cout, d->cout, cur);
            h /= 2, w /= 2;
            skip[ns++] = cur;
        }
    }
    const int cm = C[n - 1];
    cur = add_op(tp, DL_TAPE_RESNET, &u->mid_res0, h, w, cm, cm, cur);
    cur = add_op(tp, DL_TAPE_TRANSFORMER, &u->mid_attn, h, w, cm, cm, cur);
    cur = add_op(tp, DL_TAPE_RESNET, &u->mid_res1, h, w, cm, cm, cur);
    int cc = cm;
    for (int i = 0; i < n; i++) {
        const dl_unet_up *up = &u->up[i];
        for (int j = 0; j <= L; j++) {
            const dl_unet_resnet *r = &up->resnets[j];
            DL_ASSERT(ns > 0);
            const int sk = skip[--ns];
            const int cs = tp->ops[sk].cout;
            DL_ASSERT(cc + cs == r->cin);
            cur = add_op(tp, DL_TAPE_RESNET, r, h, w, r->cin, r->cout, cur);
            tp->ops[cur].skip_op = sk, tp->ops[cur].cskip = cs;
            tp->ops[sk].is_skip = 1;
            cc = r->cout;
            if (up->has_attn) cur = add_op(tp, DL_TAPE_TRANSFORMER, &up->attentions[j], h, w, cc, cc, cur);
        }
        if (up->has_up) {
            cur = add_op(tp, DL_TAPE_UPSAMPLE, &up->upsample, h, w, up->cout, up->cout, cur);
            h *= 2, w *= 2;
        }
    }
    DL_ASSERT(ns == 0 && h == H && w == W && cc == C[0]);
    add_op(tp, DL_TAPE_OUT, u, h, w, C[0], c->out_channels, cur);
}

/* Run op's forward into y (op->y, or a scratch copy when recomputing), saving into save;
 * returns the saved record (NULL for blocks whose backward needs only their input). */
static void *op_fwd(const dl_ctx *ctx, const dl_unet_tape *tp, const dl_tape_op *op, float *y, mem *save, mem *s)
{
    const int N = tp->N, h = op->h, w = op->w;
    switch (op->kind) {
    case DL_TAPE_CONV_IN:
        conv_fwd(ctx, s, &tp->u->conv_in, N, h, w, op->x, y);
        return NULL;
    case DL_TAPE_RESNET:
        return resnet_fwd(ctx, op->block, N, h, w, op->x, op->skip, op->cskip, tp->temb_act, y, save, s);
    case DL_TAPE_TRANSFORMER:
        return transformer_fwd(ctx, op->block, N, h, w, op->x, tp->context, tp->T, y, save, s);
    case DL_TAPE_DOWNSAMPLE:
        conv_fwd(ctx, s, op->block, N, h, w, op->x, y);
        return NULL;
    case DL_TAPE_UPSAMPLE: return upsample_fwd(ctx, op->block, N, h, w, op->x, y, save, s);
    case DL_TAPE_OUT: return out_fwd(ctx, op->block, N, h, w, op->x, y, save, s);
    }
    return NULL;
}

/* Run op's backward: dx (of its whole input, the concatenation on the up path) overwritten. */
static void op_bwd(const dl_ctx *ctx, const dl_unet_tape *tp, const dl_tape_op *op, const void *sv, const float *dy,
                   float *dx, float *dctx, mem *s)
{
    const int N = tp->N, h = op->h, w = op->w;
    switch (op->kind) {
    case DL_TAPE_CONV_IN: conv_bwd(ctx, s, &tp->u->conv_in, N, h, w, op->x, dy, dx); return;
    case DL_TAPE_RESNET: resnet_bwd(ctx, op->block, N, h, w, op->x, tp->temb_act, sv, dy, dx, s); return;
    case DL_TAPE_TRANSFORMER:
        transformer_bwd(ctx, op->block, N, h, w, op->x, tp->context, tp->T, sv, dy, dx, dctx, s);
        return;
    case DL_TAPE_DOWNSAMPLE: conv_bwd(ctx, s, op->block, N, h, w, op->x, dy, dx); return;
    case DL_TAPE_UPSAMPLE: upsample_bwd(ctx, op->block, N, h, w, sv, dy, dx, s); return;
    case DL_TAPE_OUT: out_bwd(ctx, op->block, N, h, w, op->x, sv, dy, dx, s); return;
    }
}

/* ================================================================ forward and backward */

static void train_forward(const dl_ctx *ctx, const dl_unet *u, dl_unet_tape *tp, int N, int H, int W, const float *x,
                          const float *t, const float *context, int T, float *out, int checkpoint, mem *act, mem *s)
{
    tape_plan(tp, u, N, H, W, T, checkpoint);
    tp->x = x, tp->context = context;
    const int Td = u->cfg.time_embed_dim, C0 = u->cfg.block_out_channels[0];
    tp->temb_act = take(act, (int64_t)N * Td);                                       // [N, Td]
    {
        mmark k = mem_mark(s);
        float *temb = take(s, (int64_t)N * Td);                                      // [N, Td]
        /* dl_unet_time_embed_fwd: sinusoid [N, C0] + hidden [N, Td] (+ their LoRA temporaries) */
        size_t te = al((int64_t)N * C0) + al((int64_t)N * Td);
        if (u->time_linear_1.lora) te += al((int64_t)N * u->time_linear_1.lora->r);
        if (u->time_linear_2.lora) te += al((int64_t)N * u->time_linear_2.lora->r);
        transient(s, te);
        RUN(s) dl_unet_time_embed_fwd(ctx, u, N, t, temb, s->a);
        RUN(s) dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, temb, tp->temb_act);
        mem_release(s, k);
    }
    for (int i = 0; i < tp->n_ops; i++) {
        dl_tape_op *op = &tp->ops[i];
        op->x = op->x_op < 0 ? x : tp->ops[op->x_op].y;
        op->skip = op->skip_op < 0 ? NULL : tp->ops[op->skip_op].y;
        op->y = op->kind == DL_TAPE_OUT ? out : take(act, op->y_numel);
        mmark k = mem_mark(s);
        op->recompute = checkpoint != 0;
        void *sv = op_fwd(ctx, tp, op, op->y, op->recompute ? s : act, s);
        op->saved = op->recompute || !act->a ? NULL : sv;
        mem_release(s, k);
    }
}

static int64_t op_in_numel(const dl_unet_tape *tp, const dl_tape_op *op)
{
    return (int64_t)tp->N * op->h * op->w * op->cin;
}

static void backward(const dl_ctx *ctx, const dl_unet_tape *tp, const float *dout, float *dcontext, mem *s)
{
    const int want_dctx = dcontext != NULL;
    const int64_t nctx = (int64_t)tp->N * tp->T * tp->u->cfg.cross_attention_dim;
    /* the first op whose backward matters; ops before it are not back-propagated */
    int first = tp->n_ops;
    for (int i = 0; i < tp->n_ops; i++)
        if (tp->ops[i].needs_bwd || (want_dctx && tp->ops[i].kind == DL_TAPE_TRANSFORMER)) {
            first = i;
            break;
        }
    if (want_dctx) RUN(s) memset(dcontext, 0, (size_t)nctx * sizeof(float));
    mmark k0 = mem_mark(s);
    /* gradients of the skip outputs (accumulated from both consumers), and two chain buffers */
    float *dskip[DL_UNET_TAPE_MAX_OPS] = {0};
    int64_t chain = 0;
    for (int i = first; i < tp->n_ops; i++) {
        const dl_tape_op *op = &tp->ops[i];
        if (op->is_skip) {
            dskip[i] = take(s, op->y_numel);
            RUN(s) memset(dskip[i], 0, (size_t)op->y_numel * sizeof(float));
        }
        const int64_t ni = op_in_numel(tp, op);
        if (ni > chain) chain = ni;
    }
    float *pp[2] = {take(s, chain), take(s, chain)};
    static const _Alignas(64) unsigned char zero_stand_in[256];
    const float *dy = dout;
    for (int i = tp->n_ops - 1; i >= first; i--) {
        const dl_tape_op *op = &tp->ops[i];
        DL_ASSERT(op->x_op == i - 1); /* a chain: dx of op i is the gradient of op i-1's output */
        if (op->is_skip) { /* the chain consumer's gradient (in dy) joins the up path's */
            RUN(s) dl_be(ctx)->axpy(ctx, op->y_numel, 1.0f, dy, dskip[i]);
            dy = dskip[i];
        }
        float *dx = i == first ? NULL : (dy == pp[0] ? pp[1] : pp[0]);
        mmark k = mem_mark(s);
        const void *sv = op->saved;
        if (op->recompute) { /* recompute the block's internals (its output into scratch) */
            float *y = take(s, op->y_numel);
            sv = op_fwd(ctx, tp, op, y, s, s);
        }
        if (!s->a && !op->recompute) sv = zero_stand_in; /* measuring: records are not kept */
        op_bwd(ctx, tp, op, sv, dy, dx, dcontext, s);
        mem_release(s, k);
        if (op->cskip && dx) { /* split d concat(x, skip): the skip's part joins its gradient */
            const int64_t P = (int64_t)tp->N * op->h * op->w;
            const int c1 = op->cin - op->cskip;
            mmark ks = mem_mark(s);
            float *dsk = take(s, P * op->cskip);                                     // [P, cskip]
            float *dxa = dx == pp[0] ? pp[1] : pp[0];                                // [P, c1]
            RUN(s) dl_be(ctx)->concat_channels_backward(ctx, P, c1, op->cskip, dx, dxa, dsk);
            if (dskip[op->skip_op]) RUN(s) dl_be(ctx)->axpy(ctx, P * op->cskip, 1.0f, dsk, dskip[op->skip_op]);
            mem_release(s, ks);
            dx = dxa;
        }
        dy = dx;
    }
    mem_release(s, k0);
}

/* ================================================================ public */

void dl_unet_train_forward(const dl_ctx *ctx, const dl_unet *u, dl_unet_tape *tape, int N, int H, int W,
                           const float *x, const float *t, const float *context, int T, float *out,
                           int checkpoint, dl_arena *act, dl_arena *scratch)
{
    DL_ASSERT(ctx && u && tape && x && t && context && out && act && scratch);
    mem ma, ms;
    mem_init(&ma, act);
    mem_init(&ms, scratch);
    train_forward(ctx, u, tape, N, H, W, x, t, context, T, out, checkpoint, &ma, &ms);
}

void dl_unet_backward(const dl_ctx *ctx, const dl_unet_tape *tape, const float *dout, float *dcontext,
                      dl_arena *scratch)
{
    DL_ASSERT(ctx && tape && tape->u && dout && scratch);
    mem ms;
    mem_init(&ms, scratch);
    backward(ctx, tape, dout, dcontext, &ms);
}

size_t dl_unet_train_act_bytes(const dl_unet *u, int N, int H, int W, int T, int checkpoint)
{
    dl_unet_tape *tp = malloc(sizeof *tp); /* sizing runs once, before the steady state */
    DL_ASSERTF(tp, "out of memory sizing the UNet training pass");
    mem ma, ms;
    mem_init(&ma, NULL);
    mem_init(&ms, NULL);
    train_forward(NULL, u, tp, N, H, W, NULL, NULL, NULL, T, NULL, checkpoint, &ma, &ms);
    free(tp);
    return ma.peak;
}

size_t dl_unet_train_scratch_bytes(const dl_unet *u, int N, int H, int W, int T, int checkpoint,
                                   int want_dcontext)
{
    dl_unet_tape *tp = malloc(sizeof *tp);
    DL_ASSERTF(tp, "out of memory sizing the UNet training pass");
    mem ma, ms, mb;
    mem_init(&ma, NULL);
    mem_init(&ms, NULL);
    mem_init(&mb, NULL);
    train_forward(NULL, u, tp, N, H, W, NULL, NULL, NULL, T, NULL, checkpoint, &ma, &ms);
    float dummy = 0.0f;
    backward(NULL, tp, NULL, want_dcontext ? &dummy : NULL, &mb);
    free(tp);
    return ms.peak > mb.peak ? ms.peak : mb.peak;
}
