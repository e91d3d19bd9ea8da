/* graph.c - node lists, the measuring backend the size tables are computed with, slabs, and
 * the block loaders' name/registry helpers. */
#include "model/graph.h"
#include "backend/backend.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dl_graph_add(dl_graph *g, dl_node_kind kind, const char *name, int x, int level, int cin, int cout)
{
    DL_ASSERTF(g->n < DL_GRAPH_MAX_NODES, "more than %d nodes in a network", DL_GRAPH_MAX_NODES);
    dl_node *n = &g->node[g->n];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    snprintf(n->name, sizeof n->name, "%s", name);
    n->x = x, n->skip = DL_NODE_NONE, n->level = level, n->cin = cin, n->cout = cout;
    return g->n++;
}

/* Output level of a node (its input level, +1 after a downsample, -1 after an upsample). */
static int out_level(const dl_node *n)
{
    if (n->kind == DL_NODE_DOWNSAMPLE) return n->level + 1;
    if (n->kind == DL_NODE_UPSAMPLE) return n->level - 1;
    return n->level;
}

int dl_level_size(int H, int level) { return level >= 0 ? H >> level : H << -level; }

int64_t dl_node_numel(const dl_node *nd, int N, int H, int W)
{
    if (nd->side) return (int64_t)N * nd->cout;
    const int l = out_level(nd);
    return (int64_t)N * dl_level_size(H, l) * dl_level_size(W, l) * nd->cout;
}

/* p[0..n) = 0 in backend memory (nothing under the measuring backend). */
static void zero_f32(const dl_ctx *ctx, int64_t n, float *p)
{
    dl_be(ctx)->fill(ctx, p, 0, (size_t)n * sizeof(float));
}

/* ================================================================ the walkers */

void dl_graph_infer(const dl_ctx *ctx, const dl_net *net, const dl_pass_in *in0, float *out, dl_arena *scratch)
{
    const dl_graph *g = net->g;
    dl_pass_in in = *in0;
    const int N = in.N, H = in.H, W = in.W;
    size_t mark = dl_arena_mark(scratch);
    int64_t pp = 1;
    for (int i = 0; i + 1 < g->n; i++)
        if (!g->node[i].is_skip && !g->node[i].side && dl_node_numel(&g->node[i], N, H, W) > pp)
            pp = dl_node_numel(&g->node[i], N, H, W);
    float *A = dl_alloc_f32(scratch, pp), *B = dl_alloc_f32(scratch, pp);            // ping, pong
    float *y_of[DL_GRAPH_MAX_NODES];
    for (int i = 0; i < g->n; i++) {
        const dl_node *nd = &g->node[i];
        const float *x = nd->x == DL_NODE_INPUT ? in.x : nd->x >= 0 ? y_of[nd->x] : NULL;
        const float *sk = nd->skip >= 0 ? y_of[nd->skip] : NULL;
        float *y;
        if (i == g->n - 1) y = out;
        else if (nd->is_skip || nd->side) y = dl_alloc_f32(scratch, dl_node_numel(nd, N, H, W));
        else y = x == A ? B : A;
        size_t m = dl_arena_mark(scratch);
        net->forward(ctx, net->self, nd, &in, x, sk, y, scratch, scratch);
        dl_arena_release(scratch, m);
        if (nd->side) in.side = y;
        y_of[i] = y;
    }
    dl_arena_release(scratch, mark);
}

/* The training walkers run the direct convolution whatever ctx asks: their forwards (and the
 * recomputed ones of gradient checkpointing) feed gradients checked at tight bounds, and
 * Winograd's rounding serves inference only (ops/cpu/conv_winograd.h). */
static dl_ctx train_ctx(const dl_ctx *ctx)
{
    dl_ctx c = *ctx;
    c.conv_algo = DL_CONV_DIRECT;
    return c;
}

void dl_graph_train_forward(const dl_ctx *ctx0, const dl_net *net, dl_tape *tp, const dl_pass_in *in, float *out,
                            int checkpoint, dl_arena *act, dl_arena *scratch, dl_size_table *tab)
{
    const dl_ctx tctx = train_ctx(ctx0), *ctx = &tctx;
    const dl_graph *g = net->g;
    const int N = in->N, H = in->H, W = in->W;
    memset(tp, 0, sizeof *tp);
    tp->net = *net, tp->in = *in, tp->checkpoint = checkpoint;
    for (int i = 0; i < g->n; i++) {
        const dl_node *nd = &g->node[i];
        dl_tape_node *tn = &tp->node[i];
        tn->x = nd->x == DL_NODE_INPUT ? in->x : nd->x >= 0 ? tp->node[nd->x].y : NULL;
        tn->skip = nd->skip >= 0 ? tp->node[nd->skip].y : NULL;
        const size_t y_off = act->used;
        tn->y = i == g->n - 1 ? out : dl_alloc_f32(act, dl_node_numel(nd, N, H, W));
        const size_t s_off = act->used;
        tn->recompute = checkpoint != 0 && !nd->side;
        const size_t mark = dl_arena_mark(scratch);
        float *sv = net->forward(ctx, net->self, nd, &tp->in, tn->x, tn->skip, tn->y, tn->recompute ? scratch : act,
                                 scratch);
        dl_arena_release(scratch, mark);
        tn->saved = tn->recompute ? NULL : sv;
        if (nd->side) tp->in.side = tn->y;
        if (tab) {
            dl_size_row *r = &tab->row[i];
            r->y_off = y_off, r->y_bytes = s_off - y_off;
            r->saved_off = s_off, r->saved_bytes = act->used - s_off;
        }
    }
}

void dl_graph_backward(const dl_ctx *ctx0, const dl_tape *tp, const float *dout, float *dx_in, float *dctx,
                       dl_arena *scratch)
{
    const dl_ctx tctx = train_ctx(ctx0), *ctx = &tctx;
    const dl_net *net = &tp->net;
    const dl_graph *g = net->g;
    const int N = tp->in.N, H = tp->in.H, W = tp->in.W;
    /* the last side node (what the chain's nodes read as in->side): trained, its output's
     * gradient is gathered in dside and it is back-propagated after the chain */
    int side = -1;
    for (int i = 0; i < g->n; i++)
        if (g->node[i].side) side = i;
    const int side_trains = side >= 0 && net->trains(net->self, &g->node[side]);
    /* the first node whose backward matters; nodes before it are not back-propagated */
    int first = dx_in || side_trains ? 0 : g->n;
    for (int i = 0; i < first; i++) {
        const dl_node *nd = &g->node[i];
        if (!nd->side && (net->trains(net->self, nd) || (dctx && nd->kind == DL_NODE_TRANSFORMER))) first = i;
    }
    if (dctx) zero_f32(ctx, (int64_t)N * tp->in.T * net->context_dim, dctx);
    const size_t k0 = dl_arena_mark(scratch);
    float *dside = NULL;
    if (side_trains) {
        const int64_t e = dl_node_numel(&g->node[side], N, H, W);
        dside = dl_alloc_f32(scratch, e);                                            // [N, side's cout]
        zero_f32(ctx, e, dside);
    }
    /* gradients of the skip outputs (accumulated from both consumers), and two chain buffers */
    float *dskip[DL_GRAPH_MAX_NODES] = {0};
    int64_t chain = 0;
    for (int i = first; i < g->n; i++) {
        const dl_node *nd = &g->node[i];
        if (nd->side) continue;
        if (nd->is_skip) {
            const int64_t e = dl_node_numel(nd, N, H, W);
            dskip[i] = dl_alloc_f32(scratch, e);
            zero_f32(ctx, e, dskip[i]);
        }
        const int64_t in = (int64_t)N * dl_level_size(H, nd->level) * dl_level_size(W, nd->level) * nd->cin;
        if (in > chain) chain = in;
    }
    float *pp[2] = {dl_alloc_f32(scratch, chain), dl_alloc_f32(scratch, chain)};
    const float *dy = dout;
    /* the nodes form a chain through x (a side node is not on it) */
    for (int i = g->n - 1; i >= first; i = g->node[i].x) {
        const dl_node *nd = &g->node[i];
        const dl_tape_node *tn = &tp->node[i];
        const int64_t e = dl_node_numel(nd, N, H, W);
        if (nd->is_skip) { /* the chain consumer's gradient (in dy) joins the up path's */
            dl_be(ctx)->axpy(ctx, e, 1.0f, dy, dskip[i]);
            dy = dskip[i];
        }
        float *dx = nd->x == DL_NODE_INPUT ? dx_in : nd->x < first ? NULL : dy == pp[0] ? pp[1] : pp[0];
        const size_t k = dl_arena_mark(scratch);
        const float *sv = tn->saved;
        if (tn->recompute) { /* recompute the node's saved tensors (its output into scratch) */
            float *y = dl_alloc_f32(scratch, e);
            sv = net->forward(ctx, net->self, nd, &tp->in, tn->x, tn->skip, y, scratch, scratch);
        }
        net->backward(ctx, net->self, nd, &tp->in, tn->x, sv, dy, dx, dctx, dside, scratch);
        dl_arena_release(scratch, k);
        if (nd->cskip && dx) { /* split d concat(x, skip): the skip's part joins its gradient */
            const int64_t P = (int64_t)N * dl_level_size(H, nd->level) * dl_level_size(W, nd->level);
            const int c1 = nd->cin - nd->cskip;
            float *dsk = dl_alloc_f32(scratch, P * nd->cskip);                       // [P, cskip]
            float *dxa = dx == pp[0] ? pp[1] : pp[0];                                // [P, c1]
            dl_be(ctx)->concat_channels_backward(ctx, P, c1, nd->cskip, dx, dxa, dsk);
            if (dskip[nd->skip]) dl_be(ctx)->axpy(ctx, P * nd->cskip, 1.0f, dsk, dskip[nd->skip]);
            dl_arena_release(scratch, k);
            dx = dxa;
        }
        dy = dx;
    }
    if (side_trains) { /* side nodes are never recomputed: their saved tensors are on the tape */
        const dl_tape_node *tn = &tp->node[side];
        net->backward(ctx, net->self, &g->node[side], &tp->in, tn->x, tn->saved, dside, NULL, NULL, NULL, scratch);
    }
    dl_arena_release(scratch, k0);
}

void dl_graph_size_table(const dl_net *net, const dl_pass_in *in0, int checkpoint, int want_dx, int want_dctx,
                         dl_size_table *tab)
{
    static _Alignas(64) const float stand_in[16]; /* the pointers of a measuring run (never read) */
    float *io = (float *)stand_in;
    dl_pass_in in = *in0;
    in.x = in.t = in.context = in.text_embeds = in.time_ids = io;
    in.ids = (const int32_t *)stand_in;
    dl_tape *tp = malloc(sizeof *tp); /* sizing runs once, before the steady state */
    DL_ASSERTF(tp, "out of memory sizing a training pass");
    memset(tab, 0, sizeof *tab);
    tab->n = net->g->n;
    for (int i = 0; i < net->g->n; i++) tab->weights += net->g->node[i].w_bytes;
    dl_arena act, fs, bs, is;
    dl_arena_init_measure(&act, "activations (measuring)");
    dl_arena_init_measure(&fs, "scratch (measuring)");
    dl_arena_init_measure(&bs, "scratch (measuring)");
    dl_arena_init_measure(&is, "scratch (measuring)");
    dl_graph_train_forward(dl_measure_ctx(), net, tp, &in, io, checkpoint, &act, &fs, tab);
    dl_graph_backward(dl_measure_ctx(), tp, io, want_dx ? io : NULL, want_dctx ? io : NULL, &bs);
    dl_graph_infer(dl_measure_ctx(), net, &in, io, &is);
    tab->act = act.peak;
    tab->scratch_train = fs.peak > bs.peak ? fs.peak : bs.peak;
    tab->scratch_infer = is.peak;
    free(tp);
}

/* ================================================================ the measuring backend
 * Every entry does nothing: a walker run under it against measuring arenas allocates exactly
 * what it allocates for real and reads or writes no tensor. */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define X const dl_ctx *c
#define F const float *
#define I int64_t
static void m_linear_forward(X, I M, I i, I o, F x, const void *w, dl_dtype t, F b, float *y) {}
static void m_linear_backward(X, I M, I i, I o, F x, const void *w, dl_dtype t, F dy, float *dx, float *dw, float *db) {}
static void m_conv2d_forward(X, const dl_conv2d_shape *s, F x, const void *w, dl_dtype t, F b, float *y) {}
static void m_conv2d_backward(X, const dl_conv2d_shape *s, F x, const void *w, dl_dtype t, F dy, float *dx, float *dw,
                             float *db) {}
static void m_groupnorm_forward(X, dl_groupnorm_shape s, F x, F g, F b, float *y, float *mu, float *rs) {}
static void m_groupnorm_backward(X, dl_groupnorm_shape s, F x, F g, F b, F mu, F rs, F dy, float *dx, float *dg,
                                 float *db) {}
static void m_layernorm_forward(X, I M, I C, float eps, F x, F g, F b, float *y, float *mu, float *rs) {}
static void m_layernorm_backward(X, I M, I C, F x, F g, F mu, F rs, F dy, float *dx, float *dg, float *db) {}
static void m_attention_forward(X, dl_attention_shape s, F q, F k, F v, float *o, float *lse) {}
static void m_attention_backward(X, dl_attention_shape s, F q, F k, F v, F o, F lse, F dout, float *dq, float *dk,
                                 float *dv) {}
static void m_act_forward(X, dl_act a, I n, F x, float *y) {}
static void m_act_backward(X, dl_act a, I n, F x, F dy, float *dx) {}
static void m_geglu_forward(X, I M, I D, F x, float *y) {}
static void m_geglu_backward(X, I M, I D, F x, F dy, float *dx) {}
static void m_add_forward(X, I n, F a, F b, float *y) {}
static void m_scale_forward(X, I n, float al, F x, float *y) {}
static void m_axpy(X, I n, float al, F x, float *y) {}
static void m_add_bcast_forward(X, I N, I HW, I C, int ps, F x, F v, float *y) {}
static void m_add_bcast_backward(X, I N, I HW, I C, int ps, F dy, float *dx, float *dv) {}
static void m_concat_forward(X, I M, I C1, I C2, F a, F b, float *y) {}
static void m_concat_backward(X, I M, I C1, I C2, F dy, float *da, float *db) {}
static void m_up_forward(X, I N, I H, I W, I C, F x, float *y) {}
static void m_up_backward(X, I N, I H, I W, I C, F dy, float *dx) {}
static void m_timestep_embedding(X, I N, I dim, F t, int flip, float shift, float scale, float max_period,
                                 float *out) {}
static void m_mse_forward(X, I N, I D, F p, F t, F w, float *ps, float *loss) {}
static void m_mse_backward(X, I N, I D, F p, F t, F w, float dl, float *dp, float *dt) {}
static void m_adamw_step(X, I n, const dl_adamw_hparams *hp, I step, float *p, F g, float *m, float *v) {}
static void m_sumsq(X, I n, F x, float *out) {}
static void m_clip_coef(X, F sq, float mx, float *coef) {}
static void m_scale_by(X, I n, F coef, float *x) {}
static void m_embed_tokens(X, I N, I T, I C, I V, const int32_t *ids, F tok, F pos, float *out) {}
static void m_embed_tokens_backward(X, I N, I T, I C, I V, const int32_t *ids, F dout, float *dtok, float *dpos) {}
static void *m_alloc(X, size_t bytes) { return NULL; }
static void m_free(X, void *p) {}
static int m_copy(X, void *d, const void *s, size_t n) { return DL_OK; }
static int m_fill(X, void *d, int b, size_t n) { return DL_OK; }
static int m_sync(X) { return DL_OK; }
static void m_describe(X, char *buf, size_t cap) { snprintf(buf, cap, "measure"); }
static int m_mem_info(X, size_t *f, size_t *t) { *f = *t = 0; return DL_ERR; }
static void m_lora_linear_forward(X, I M, I i, I o, I r, float s, F x, const void *W, dl_dtype t, F b, F A, F B, float *h,
                                  float *y) {}
static void m_lora_linear_backward(X, I M, I i, I o, I r, float s, F x, const void *W, dl_dtype t, F A, F B, F h, F dy, float *dh,
                                   float *dx, float *dA, float *dB) {}
static void m_lora_conv_forward(X, const dl_conv2d_shape *sh, I r, float s, F x, const void *W, dl_dtype t, F b, F A, F B, float *h,
                                float *y) {}
static void m_lora_conv_backward(X, const dl_conv2d_shape *sh, I r, float s, F x, const void *W, dl_dtype t, F A, F B, F h, F dy, float *dh,
                                 float *dxs, float *dx, float *dA, float *dB) {}
static void m_lora_merge(X, I o, I K, I r, float s, F A, F B, float *W) {}
#undef X
#undef F
#undef I
#pragma GCC diagnostic pop

static const dl_backend measure_backend = {
    .name = "measure", .weight_dtypes = (1u << DL_F16) | (1u << DL_BF16), .alloc = m_alloc, .free = m_free, .upload = m_copy, .download = m_copy, .copy = m_copy,
    .fill = m_fill, .synchronize = m_sync, .describe = m_describe, .mem_info = m_mem_info, .embed_tokens = m_embed_tokens,
    .embed_tokens_backward = m_embed_tokens_backward,
    .clip_coef = m_clip_coef, .scale_by = m_scale_by, .linear_forward = m_linear_forward, .linear_backward = m_linear_backward,
    .conv2d_forward = m_conv2d_forward, .conv2d_backward = m_conv2d_backward,
    .groupnorm_forward = m_groupnorm_forward, .groupnorm_backward = m_groupnorm_backward,
    .layernorm_forward = m_layernorm_forward, .layernorm_backward = m_layernorm_backward,
    .attention_forward = m_attention_forward, .attention_backward = m_attention_backward,
    .act_forward = m_act_forward, .act_backward = m_act_backward, .geglu_forward = m_geglu_forward,
    .geglu_backward = m_geglu_backward, .add_forward = m_add_forward, .scale_forward = m_scale_forward,
    .axpy = m_axpy, .add_bcast_forward = m_add_bcast_forward, .add_bcast_backward = m_add_bcast_backward,
    .concat_channels_forward = m_concat_forward, .concat_channels_backward = m_concat_backward,
    .upsample_nearest2x_forward = m_up_forward, .upsample_nearest2x_backward = m_up_backward,
    .timestep_embedding = m_timestep_embedding, .mse_loss_forward = m_mse_forward,
    .mse_loss_backward = m_mse_backward, .adamw_step = m_adamw_step, .sumsq = m_sumsq,
    .lora_linear_forward = m_lora_linear_forward, .lora_linear_backward = m_lora_linear_backward,
    .lora_conv_forward = m_lora_conv_forward, .lora_conv_backward = m_lora_conv_backward, .lora_merge = m_lora_merge,
    .lora_unmerge = m_lora_merge,
};

static const dl_ctx measure_ctx = {NULL, NULL, &measure_backend, NULL, DL_CONV_AUTO, DL_F32};

const dl_ctx *dl_measure_ctx(void) { return &measure_ctx; }

int dl_ctx_measuring(const dl_ctx *ctx) { return ctx && ctx->be == &measure_backend; }

/* ================================================================ slabs */

size_t dl_f32_bytes(int64_t n) { return ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63; }

float *dl_slab_take(dl_slab *s, int64_t n)
{
    float *p = (float *)(s->base + s->off);
    s->off += dl_f32_bytes(n);
    return p;
}

/* ================================================================ block loaders */

enum { NAMES_PER_CHUNK = 256, NAME_LEN = 96 };

const char *dl_names_add(dl_names *p, const char *prefix, const char *suffix)
{
    if (p->n == p->n_chunks * NAMES_PER_CHUNK) {
        char **c = realloc(p->chunk, (size_t)(p->n_chunks + 1) * sizeof *c);
        if (c) p->chunk = c;
        if (!c || !(c[p->n_chunks] = malloc(NAMES_PER_CHUNK * NAME_LEN))) {
            dl_error_set("out of memory naming the layers");
            return NULL;
        }
        p->n_chunks++;
    }
    char *s = p->chunk[p->n / NAMES_PER_CHUNK] + (size_t)(p->n % NAMES_PER_CHUNK) * NAME_LEN;
    p->n++;
    if (snprintf(s, NAME_LEN, "%s%s", prefix, suffix) < NAME_LEN) return s;
    dl_error_set("layer name %s%s is too long", prefix, suffix);
    return NULL;
}

void dl_names_free(dl_names *p)
{
    for (int i = 0; i < p->n_chunks; i++) free(p->chunk[i]);
    free(p->chunk);
    memset(p, 0, sizeof *p);
}

static int reg(dl_netload *nl, const char *name, dl_linear *l, dl_conv *c, int conv1x1)
{
    return nl->reg ? nl->reg(nl->net, name, l, c, conv1x1) : DL_OK;
}

int dl_nl_linear(dl_netload *nl, dl_linear *m, const char *pre, const char *n, int in, int out, int bias)
{
    const char *name = dl_names_add(nl->names, pre, n);
    if (!name) return DL_ERR;
    DL_TRY(dl_linear_load(m, &nl->ld, name, in, out, bias));
    return reg(nl, name, m, NULL, 0);
}

int dl_nl_proj(dl_netload *nl, dl_linear *m, const char *pre, const char *n, int c, int conv1x1)
{
    const char *name = dl_names_add(nl->names, pre, n);
    if (!name) return DL_ERR;
    if (!nl->ld.ck) DL_TRY(conv1x1 ? dl_linear_load_1x1(m, &nl->ld, name, c, c, 1)
                                    : dl_linear_load(m, &nl->ld, name, c, c, 1));
    else DL_TRY(dl_linear_load_any(m, &nl->ld, name, c, c, 1));
    return reg(nl, name, m, NULL, conv1x1);
}

int dl_nl_conv(dl_netload *nl, dl_conv *m, const char *pre, const char *n, int cin, int cout, int k, int stride,
               int pad)
{
    const char *name = dl_names_add(nl->names, pre, n);
    if (!name) return DL_ERR;
    DL_TRY(dl_conv_load(m, &nl->ld, name, cin, cout, k, stride, pad));
    return reg(nl, name, NULL, m, 0);
}

int dl_nl_norm(dl_netload *nl, dl_norm *m, const char *pre, const char *n, int C, int G, float eps)
{
    const char *name = dl_names_add(nl->names, pre, n);
    if (!name) return DL_ERR;
    return dl_norm_load(m, &nl->ld, name, C, G, eps);
}
