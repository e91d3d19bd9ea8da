/* vae.c - AutoencoderKL: the encoder's and the decoder's node lists built from the config, the
 * loader and the weight listing that walk them, the mid-block attention block (forward and
 * backward), one node's forward and backward, and encode / decode on the graph walkers. */
#include "model/vae.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f

/* ================================================================ the description */

static int add(dl_graph *g, dl_node_kind kind, const char *name, int x, int level, int cin, int cout, void *block)
{
    int i = dl_graph_add(g, kind, name, x, level, cin, cout);
    g->node[i].block = block;
    return i;
}

/* mid_block.resnets.0 -> (attentions.0) -> resnets.1 on C channels at level lvl. */
static int add_mid(dl_vae *m, dl_graph *g, dl_vae_coder *c, const char *side, int cur, int lvl, int C)
{
    char p[64];
    snprintf(p, sizeof p, "%s.mid_block.resnets.0.", side);
    cur = add(g, DL_NODE_RESNET, p, cur, lvl, C, C, &c->mid_res0);
    if (m->cfg.mid_attention) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0.", side);
        cur = add(g, DL_NODE_ATTENTION, p, cur, lvl, C, C, &c->mid_attn);
    }
    snprintf(p, sizeof p, "%s.mid_block.resnets.1.", side);
    return add(g, DL_NODE_RESNET, p, cur, lvl, C, C, &c->mid_res1);
}

static void build_graphs(dl_vae *m)
{
    const dl_vae_config *c = &m->cfg;
    const int n = c->n_blocks, L = c->latent_channels, *C = c->block_out_channels;
    char p[64];
    dl_graph *g = &m->enc_graph;
    dl_vae_coder *e = &m->enc;
    g->n = 0;
    int lvl = 0, ch = C[0];
    int cur = add(g, DL_NODE_CONV_IN, "encoder.", DL_NODE_INPUT, 0, c->in_channels, ch, &e->conv_in);
    for (int i = 0; i < n; i++) {
        dl_vae_block *b = &e->blocks[i];
        for (int j = 0; j < c->layers_per_block; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d.", i, j);
            cur = add(g, DL_NODE_RESNET, p, cur, lvl, j ? C[i] : ch, C[i], &b->res[j]);
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0.", i);
            cur = add(g, DL_NODE_DOWNSAMPLE, p, cur, lvl++, C[i], C[i], &b->sample);
        }
        ch = C[i];
    }
    cur = add_mid(m, g, e, "encoder", cur, lvl, ch);
    cur = add(g, DL_NODE_OUT, "encoder.", cur, lvl, ch, 2 * L, e);
    if (c->use_quant_conv) add(g, DL_NODE_LINEAR, "quant_conv", cur, lvl, 2 * L, 2 * L, &m->quant_conv);

    g = &m->dec_graph;
    dl_vae_coder *d = &m->dec;
    g->n = 0;
    cur = DL_NODE_INPUT, lvl = 0, ch = C[n - 1];
    if (c->use_post_quant_conv) cur = add(g, DL_NODE_LINEAR, "post_quant_conv", cur, 0, L, L, &m->post_quant_conv);
    cur = add(g, DL_NODE_CONV_IN, "decoder.", cur, 0, L, ch, &d->conv_in);
    cur = add_mid(m, g, d, "decoder", cur, 0, ch);
    for (int i = 0; i < n; i++) {
        dl_vae_block *b = &d->blocks[i];
        const int co = C[n - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d.", i, j);
            cur = add(g, DL_NODE_RESNET, p, cur, lvl, j ? co : ch, co, &b->res[j]);
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.", i);
            cur = add(g, DL_NODE_UPSAMPLE, p, cur, lvl--, co, co, &b->sample);
        }
        ch = co;
    }
    add(g, DL_NODE_OUT, "decoder.", cur, lvl, ch, c->out_channels, d);
}

/* ================================================================ loading */

static int load_node(dl_vae *m, dl_netload *nl, dl_node *nd)
{
    const int G = m->cfg.norm_num_groups;
    switch (nd->kind) {
    case DL_NODE_CONV_IN: return dl_nl_conv(nl, nd->block, nd->name, "conv_in", nd->cin, nd->cout, 3, 1, 1);
    case DL_NODE_RESNET: return dl_resnet_load(nd->block, nl, nd->name, nd->cin, nd->cout, 0, G, VAE_EPS);
    case DL_NODE_DOWNSAMPLE: {
        dl_conv *cv = nd->block;
        DL_TRY(dl_nl_conv(nl, cv, nd->name, "conv", nd->cin, nd->cout, 3, 2, 0));
        cv->pad_bottom = cv->pad_right = 1; /* diffusers pads (0, 1, 0, 1) before a k3 s2 conv */
        return DL_OK;
    }
    case DL_NODE_UPSAMPLE: return dl_nl_conv(nl, nd->block, nd->name, "conv", nd->cin, nd->cout, 3, 1, 1);
    case DL_NODE_ATTENTION: {
        dl_vae_attn *a = nd->block;
        DL_TRY(dl_nl_norm(nl, &a->norm, nd->name, "group_norm", nd->cin, G, VAE_EPS));
        DL_TRY(dl_nl_linear(nl, &a->q, nd->name, "to_q", nd->cin, nd->cin, 1));
        DL_TRY(dl_nl_linear(nl, &a->k, nd->name, "to_k", nd->cin, nd->cin, 1));
        DL_TRY(dl_nl_linear(nl, &a->v, nd->name, "to_v", nd->cin, nd->cin, 1));
        return dl_nl_linear(nl, &a->out, nd->name, "to_out.0", nd->cin, nd->cin, 1);
    }
    case DL_NODE_OUT: {
        dl_vae_coder *c = nd->block;
        DL_TRY(dl_nl_norm(nl, &c->norm_out, nd->name, "conv_norm_out", nd->cin, G, VAE_EPS));
        return dl_nl_conv(nl, &c->conv_out, nd->name, "conv_out", nd->cin, nd->cout, 3, 1, 1);
    }
    case DL_NODE_LINEAR: return dl_nl_proj(nl, nd->block, "", nd->name, nd->cin, 1);
    default: return dl_error_set("VAE node %s: unexpected kind %d", nd->name, (int)nd->kind);
    }
}

static int load_all(dl_vae *m, dl_netload *nl, const char *label)
{
    DL_TRY(dl_vae_config_validate(&m->cfg, label));
    if (m->cfg.layers_per_block > DL_UNET_MAX_LAYERS)
        return dl_error_set("%s: VAE layers_per_block %d is not supported (at most %d)", label,
                            m->cfg.layers_per_block, DL_UNET_MAX_LAYERS);
    build_graphs(m);
    dl_graph *gs[2] = {&m->enc_graph, &m->dec_graph};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < gs[k]->n; i++) {
            dl_node *nd = &gs[k]->node[i];
            nd->w_off = nl->ld.arena->used;
            DL_TRY(load_node(m, nl, nd));
            nd->w_bytes = nl->ld.arena->used - nd->w_off;
        }
    return DL_OK;
}

int dl_vae_weights_bytes(dl_checkpoint *ck, size_t *bytes)
{
    dl_arena a;
    dl_arena_init_measure(&a, "VAE weights (measuring)");
    dl_vae *m = malloc(sizeof *m);
    if (!m) return dl_error_set("out of memory measuring the VAE");
    int rc = dl_vae_load(m, ck, &a);
    if (rc == DL_OK) dl_vae_free(m);
    free(m);
    *bytes = a.used;
    return rc;
}

int dl_vae_load(dl_vae *m, dl_checkpoint *ck, dl_arena *weights)
{
    return dl_vae_load_trainable(m, ck, weights, NULL);
}

int dl_vae_load_trainable(dl_vae *m, dl_checkpoint *ck, dl_arena *weights, const dl_trainable *tr)
{
    memset(m, 0, sizeof *m);
    m->cfg = ck->cfg.vae;
    dl_netload nl = {{.ck = ck, .part = DL_PART_VAE, .arena = weights, .grads = tr ? tr->grads : NULL,
                      .placed = tr ? tr->placed : NULL, .placed_user = tr ? tr->user : NULL},
                     &m->names, m, NULL};
    if (load_all(m, &nl, ck->path) == DL_OK) return DL_OK;
    dl_vae_free(m);
    return DL_ERR;
}

/* A VAE of cfg whose layers know their shapes and hold no weights (placeholders): what the
 * listing and the scratch measurement walk. NULL (message) on error. */
static dl_vae *shapes_only(const dl_vae_config *cfg, dl_weight_fn fn, void *user)
{
    dl_vae *m = calloc(1, sizeof *m);
    if (!m) {
        dl_error_set("out of memory describing the VAE");
        return NULL;
    }
    m->cfg = *cfg;
    dl_arena a;
    dl_arena_init_measure(&a, "VAE weights (listing)");
    dl_netload nl = {{.part = DL_PART_VAE, .arena = &a, .list = fn, .list_user = user}, &m->names, m, NULL};
    if (load_all(m, &nl, "VAE config") != DL_OK) {
        dl_vae_free(m);
        free(m);
        return NULL;
    }
    return m;
}

int dl_vae_list_weights(const dl_vae_config *cfg, dl_weight_fn fn, void *user)
{
    dl_vae *m = shapes_only(cfg, fn, user);
    if (!m) return DL_ERR;
    dl_vae_free(m);
    free(m);
    return DL_OK;
}

void dl_vae_free(dl_vae *m) { dl_names_free(&m->names); }

/* ================================================================ mid-block attention */

typedef struct attn_saved {
    float *mean, *rstd;   /* [N, G] */
    float *h;             /* [M, C] GroupNorm(x): q/k/v input */
    float *q, *k, *v, *o; /* [M, C] */
    float *lse;           /* [N, 1, S] */
} attn_saved;

static size_t attn_layout(const dl_vae_attn *a, int N, int S, uintptr_t base, attn_saved *sv)
{
    const int64_t M = (int64_t)N * S, C = a->norm.C;
    dl_slab s = {base, 0};
    sv->mean = dl_slab_take(&s, (int64_t)N * a->norm.G), sv->rstd = dl_slab_take(&s, (int64_t)N * a->norm.G);
    float **mc[5] = {&sv->h, &sv->q, &sv->k, &sv->v, &sv->o};
    for (int i = 0; i < 5; i++) *mc[i] = dl_slab_take(&s, M * C);
    sv->lse = dl_slab_take(&s, M);
    return s.off;
}

static dl_attention_shape attn_shape(int N, int S, int C)
{
    return (dl_attention_shape){.N = N, .Tq = S, .Tk = S, .H = 1, .d = C, .scale = 1.0f / sqrtf((float)C), .causal = 0};
}

/* y [N, S, C] = x + out(attention(q, k, v of GroupNorm(x))), one head of width C. */
static float *attn_forward(const dl_ctx *ctx, const dl_vae_attn *a, int N, int S, const float *x, float *y,
                           dl_arena *save, dl_arena *scratch)
{
    const int64_t M = (int64_t)N * S;
    const int C = a->norm.C;
    attn_saved sv;
    float *base = dl_alloc_f32(save, (int64_t)(attn_layout(a, N, S, 0, &sv) / sizeof(float)));
    attn_layout(a, N, S, (uintptr_t)base, &sv);
    dl_groupnorm_shape g = {.N = N, .HW = S, .C = C, .G = a->norm.G, .eps = a->norm.eps, .silu = 0};
    dl_be(ctx)->groupnorm_forward(ctx, g, x, a->norm.gamma, a->norm.beta, sv.h, sv.mean, sv.rstd); // [N, S, C]
    dl_linear_fwd(ctx, &a->q, M, sv.h, sv.q, scratch);                               // [N, S, C]
    dl_linear_fwd(ctx, &a->k, M, sv.h, sv.k, scratch);                               // [N, S, C]
    dl_linear_fwd(ctx, &a->v, M, sv.h, sv.v, scratch);                               // [N, S, C]
    dl_be(ctx)->attention_forward(ctx, attn_shape(N, S, C), sv.q, sv.k, sv.v, sv.o, sv.lse); // [N, S, C]
    dl_linear_fwd(ctx, &a->out, M, sv.o, y, scratch);                                // [N, S, C]
    dl_be(ctx)->add_forward(ctx, M * C, x, y, y);                                    // residual
    return base;
}

static void attn_backward(const dl_ctx *ctx, const dl_vae_attn *a, int N, int S, const float *x, const float *saved,
                          const float *dy, float *dx, dl_arena *scratch)
{
    const int64_t M = (int64_t)N * S;
    const int C = a->norm.C;
    attn_saved sv;
    attn_layout(a, N, S, (uintptr_t)saved, &sv);
    size_t mark = dl_arena_mark(scratch);
    float *d_o = dl_alloc_f32(scratch, M * C), *dq = dl_alloc_f32(scratch, M * C);  // [N, S, C]
    float *dk = dl_alloc_f32(scratch, M * C), *dv = dl_alloc_f32(scratch, M * C);   // [N, S, C]
    const int below = dx || dl_norm_trains(&a->norm);                               // d h matters
    float *dh = below ? dl_alloc_f32(scratch, M * C) : NULL, *t = below ? dl_alloc_f32(scratch, M * C) : NULL;
    dl_linear_bwd(ctx, &a->out, M, sv.o, dy, d_o, scratch);                          // d o
    dl_be(ctx)->attention_backward(ctx, attn_shape(N, S, C), sv.q, sv.k, sv.v, sv.o, sv.lse, d_o, dq, dk, dv);
    dl_linear_bwd(ctx, &a->q, M, sv.h, dq, dh, scratch);                             // d h
    dl_linear_bwd(ctx, &a->k, M, sv.h, dk, t, scratch);
    if (below) dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, dh);
    dl_linear_bwd(ctx, &a->v, M, sv.h, dv, t, scratch);
    if (below) {
        dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, dh);
        dl_groupnorm_bwd(ctx, &a->norm, N, S, x, sv.mean, sv.rstd, dh, dx, 0, scratch); // d x (norm path), dgamma
        if (dx) dl_be(ctx)->axpy(ctx, M * C, 1.0f, dy, dx);                          // + the residual
    }
    dl_arena_release(scratch, mark);
}

/* ================================================================ one node */

static int node_trains(const void *self, const dl_node *nd)
{
    (void)self;
    switch (nd->kind) {
    case DL_NODE_CONV_IN:
    case DL_NODE_DOWNSAMPLE:
    case DL_NODE_UPSAMPLE: return dl_conv_trains(nd->block);
    case DL_NODE_RESNET: return dl_resnet_trains(nd->block);
    case DL_NODE_ATTENTION: {
        const dl_vae_attn *a = nd->block;
        return dl_linear_trains(&a->q) || dl_linear_trains(&a->k) || dl_linear_trains(&a->v) ||
               dl_linear_trains(&a->out) || dl_norm_trains(&a->norm);
    }
    case DL_NODE_OUT: {
        const dl_vae_coder *c = nd->block;
        return dl_conv_trains(&c->conv_out) || dl_norm_trains(&c->norm_out);
    }
    case DL_NODE_LINEAR: return dl_linear_trains(nd->block);
    default: return 0;
    }
}

static float *node_forward(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in,
                           const float *x, const float *skip, float *y, dl_arena *save, dl_arena *scratch)
{
    (void)self, (void)skip;
    const int N = in->N, h = dl_level_size(in->H, nd->level), w = dl_level_size(in->W, nd->level);
    switch (nd->kind) {
    case DL_NODE_CONV_IN:
    case DL_NODE_DOWNSAMPLE: dl_conv_fwd(ctx, nd->block, N, h, w, x, y, NULL, NULL, scratch); return NULL;
    case DL_NODE_RESNET: return dl_resnet_forward(ctx, nd->block, N, h, w, x, NULL, 0, NULL, y, save, scratch);
    case DL_NODE_UPSAMPLE: return dl_upsample_forward(ctx, nd->block, N, h, w, x, y, save, scratch);
    case DL_NODE_ATTENTION: return attn_forward(ctx, nd->block, N, h * w, x, y, save, scratch);
    case DL_NODE_OUT: {
        const dl_vae_coder *c = nd->block;
        return dl_head_forward(ctx, &c->norm_out, &c->conv_out, N, h, w, x, y, save, scratch);
    }
    case DL_NODE_LINEAR: dl_linear_fwd(ctx, nd->block, (int64_t)N * h * w, x, y, scratch); return NULL;
    default: DL_ASSERTF(0, "VAE node kind %d", (int)nd->kind); return NULL;
    }
}

static void node_backward(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in,
                          const float *x, const float *saved, const float *dy, float *dx, float *dctx,
                          float *dside, dl_arena *scratch)
{
    (void)self, (void)dctx, (void)dside;
    const int N = in->N, h = dl_level_size(in->H, nd->level), w = dl_level_size(in->W, nd->level);
    switch (nd->kind) {
    case DL_NODE_CONV_IN:
    case DL_NODE_DOWNSAMPLE: dl_conv_bwd(ctx, nd->block, N, h, w, x, dy, dx, scratch); return;
    case DL_NODE_RESNET: dl_resnet_backward(ctx, nd->block, N, h, w, x, 0, NULL, saved, dy, dx, NULL, scratch); return;
    case DL_NODE_UPSAMPLE: dl_upsample_backward(ctx, nd->block, N, h, w, saved, dy, dx, scratch); return;
    case DL_NODE_ATTENTION: attn_backward(ctx, nd->block, N, h * w, x, saved, dy, dx, scratch); return;
    case DL_NODE_OUT: {
        const dl_vae_coder *c = nd->block;
        dl_head_backward(ctx, &c->norm_out, &c->conv_out, N, h, w, x, saved, dy, dx, scratch);
        return;
    }
    case DL_NODE_LINEAR: dl_linear_bwd(ctx, nd->block, (int64_t)N * h * w, x, dy, dx, scratch); return;
    default: DL_ASSERTF(0, "VAE node kind %d", (int)nd->kind);
    }
}

dl_net dl_vae_encoder_net(const dl_vae *m)
{
    return (dl_net){m, &m->enc_graph, node_forward, node_backward, node_trains, 0};
}

dl_net dl_vae_decoder_net(const dl_vae *m)
{
    return (dl_net){m, &m->dec_graph, node_forward, node_backward, node_trains, 0};
}

/* ================================================================ encode, decode */

void dl_vae_encode(const dl_ctx *ctx, const dl_vae *m, int N, int H, int W, const float *img, float *mean,
                   float *logvar, dl_arena *scratch)
{
    const dl_vae_config *c = &m->cfg;
    const int f = 1 << (c->n_blocks - 1), L = c->latent_channels;
    DL_ASSERTF(H % f == 0 && W % f == 0, "image %dx%d is not a multiple of %d", H, W, f);
    const int64_t M = (int64_t)N * (H / f) * (W / f);
    size_t mark = dl_arena_mark(scratch);
    float *moments = dl_alloc_f32(scratch, M * 2 * L);                               // [N, h, w, 2L]
    const dl_net net = dl_vae_encoder_net(m);
    const dl_pass_in in = {.N = N, .H = H, .W = W, .x = img};
    dl_graph_infer(ctx, &net, &in, moments, scratch);
    /* the moments come back to the host (mean and logvar are host arrays) */
    const float *host = moments;
    float *staged = NULL;
    if (dl_be(ctx)->device_memory && !dl_ctx_measuring(ctx)) {
        staged = malloc((size_t)(M * 2 * L) * sizeof(float));
        DL_ASSERTF(staged, "out of memory for the VAE's moments (%lld values)", (long long)(M * 2 * L));
        if (dl_be_download(ctx, staged, moments, (size_t)(M * 2 * L) * sizeof(float)) != DL_OK)
            for (int64_t i = 0; i < M * 2 * L; i++) staged[i] = NAN; /* the error surfaces at the caller's sync */
        host = staged;
    }
    for (int64_t i = 0; i < M && !dl_ctx_measuring(ctx); i++) {
        const float *mo = host + i * 2 * L;
        for (int l = 0; l < L; l++) {
            if (mean) mean[i * L + l] = mo[l];
            if (logvar) logvar[i * L + l] = fminf(fmaxf(mo[L + l], -30.0f), 20.0f);
        }
    }
    free(staged);
    dl_arena_release(scratch, mark);
}

void dl_vae_sample(int64_t n, const float *mean, const float *logvar, const float *noise, float *latent)
{
    for (int64_t i = 0; i < n; i++) latent[i] = mean[i] + expf(0.5f * logvar[i]) * noise[i];
}

void dl_vae_decode(const dl_ctx *ctx, const dl_vae *m, int N, int h, int w, const float *z, float *img,
                   dl_arena *scratch)
{
    const dl_net net = dl_vae_decoder_net(m);
    const dl_pass_in in = {.N = N, .H = h, .W = w, .x = z};
    dl_graph_infer(ctx, &net, &in, img, scratch);
}

size_t dl_vae_scratch_bytes(const dl_vae_config *cfg, int N, int H, int W)
{
    static _Alignas(64) const float stand_in[16]; /* the pointers of a measuring run (never read) */
    float *io = (float *)stand_in;
    dl_vae *m = shapes_only(cfg, NULL, NULL);
    DL_ASSERTF(m, "%s", dl_error_msg());
    const int f = 1 << (cfg->n_blocks - 1);
    dl_arena a;
    dl_arena_init_measure(&a, "VAE scratch (measuring)");
    if (H % f == 0 && W % f == 0) dl_vae_encode(dl_measure_ctx(), m, N, H, W, io, io, io, &a);
    size_t enc = a.peak;
    dl_arena_init_measure(&a, "VAE scratch (measuring)");
    dl_vae_decode(dl_measure_ctx(), m, N, H / f, W / f, io, io, &a);
    dl_vae_free(m);
    free(m);
    return enc > a.peak ? enc : a.peak;
}
