/* clip.c - CLIP text encoder: the node list built from the config, the loader and the weight
 * listing that walk it, one node's forward and backward (the encoder layer's serves inference
 * and training), and the inference forward on the graph walkers. */
#include "model/clip.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ the description */

static void build_graph(dl_clip *m)
{
    const int C = m->cfg.hidden_size;
    char p[64];
    dl_graph *g = &m->graph;
    g->n = 0;
    int cur = dl_graph_add(g, DL_NODE_EMBED, "text_model.embeddings.", DL_NODE_NONE, 0, C, C);
    g->node[cur].block = m;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        snprintf(p, sizeof p, "text_model.encoder.layers.%d.", l);
        cur = dl_graph_add(g, DL_NODE_CLIP_LAYER, p, cur, 0, C, C);
        g->node[cur].block = &m->layers[l];
    }
    cur = dl_graph_add(g, DL_NODE_LAYERNORM, "text_model.final_layer_norm", cur, 0, C, C);
    g->node[cur].block = &m->final_ln;
    if (m->cfg.projection_dim > 0) {
        cur = dl_graph_add(g, DL_NODE_CLIP_PROJ, "text_projection", cur, 0, C, m->cfg.projection_dim);
        g->node[cur].block = &m->proj;
    }
}

/* The final layer norm's node (the last but the projection). */
static int final_ln_node(const dl_clip *m) { return m->cfg.num_layers + 1; }

/* ================================================================ loading */

/* The weights in the order transformers lists them (k, v, q, out_proj, layer_norm1, fc1, fc2,
 * layer_norm2 per layer): a listing (dl_model_weights) is the order LoRA targets are taken in. */
static int load_node(dl_clip *m, dl_netload *nl, dl_node *nd)
{
    const int C = m->cfg.hidden_size, I = m->cfg.intermediate_size;
    const float eps = m->cfg.layer_norm_eps;
    switch (nd->kind) {
    case DL_NODE_EMBED: {
        const int64_t ts[2] = {m->cfg.vocab_size, C}, ps[2] = {m->cfg.max_positions, C};
        if (!(m->tok_emb = dl_load_tensor(&nl->ld, "text_model.embeddings.token_embedding.weight", 2, ts)) ||
            !(m->pos_emb = dl_load_tensor(&nl->ld, "text_model.embeddings.position_embedding.weight", 2, ps)))
            return DL_ERR;
        m->d_tok_emb = dl_loader_grad(&nl->ld, m->tok_emb), m->d_pos_emb = dl_loader_grad(&nl->ld, m->pos_emb);
        return DL_OK;
    }
    case DL_NODE_CLIP_LAYER: {
        dl_clip_layer *y = nd->block;
        DL_TRY(dl_nl_linear(nl, &y->k, nd->name, "self_attn.k_proj", C, C, 1));
        DL_TRY(dl_nl_linear(nl, &y->v, nd->name, "self_attn.v_proj", C, C, 1));
        DL_TRY(dl_nl_linear(nl, &y->q, nd->name, "self_attn.q_proj", C, C, 1));
        DL_TRY(dl_nl_linear(nl, &y->o, nd->name, "self_attn.out_proj", C, C, 1));
        DL_TRY(dl_nl_norm(nl, &y->ln1, nd->name, "layer_norm1", C, 0, eps));
        DL_TRY(dl_nl_linear(nl, &y->fc1, nd->name, "mlp.fc1", C, I, 1));
        DL_TRY(dl_nl_linear(nl, &y->fc2, nd->name, "mlp.fc2", I, C, 1));
        return dl_nl_norm(nl, &y->ln2, nd->name, "layer_norm2", C, 0, eps);
    }
    case DL_NODE_LAYERNORM: return dl_nl_norm(nl, nd->block, "", nd->name, C, 0, eps);
    case DL_NODE_CLIP_PROJ: return dl_nl_linear(nl, nd->block, "", nd->name, C, m->cfg.projection_dim, 0);
    default: return dl_error_set("text encoder node %s: unexpected kind %d", nd->name, (int)nd->kind);
    }
}

static int load_all(dl_clip *m, dl_netload *nl)
{
    const int L = m->cfg.num_layers;
    if (L > DL_CLIP_MAX_LAYERS)
        return dl_error_set("text encoder with %d layers: at most %d are supported", L, DL_CLIP_MAX_LAYERS);
    if (!(m->layers = calloc((size_t)(L > 0 ? L : 1), sizeof *m->layers)))
        return dl_error_set("out of memory loading the text encoder");
    build_graph(m);
    for (int i = 0; i < m->graph.n; i++) {
        dl_node *nd = &m->graph.node[i];
        nd->w_off = nl->ld.arena->used;
        DL_TRY(load_node(m, nl, nd));
        nd->w_bytes = nl->ld.arena->used - nd->w_off;
    }
    return DL_OK;
}

int dl_clip_weights_bytes_as(dl_checkpoint *ck, dl_part part, size_t *bytes)
{
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder weights (measuring)");
    dl_clip m;
    if (dl_clip_load_as(&m, ck, part, &a) != DL_OK) return DL_ERR;
    dl_clip_free(&m);
    *bytes = a.used;
    return DL_OK;
}

int dl_clip_weights_bytes(dl_checkpoint *ck, size_t *bytes) { return dl_clip_weights_bytes_as(ck, DL_PART_TEXT, bytes); }

/* One text encoder (part) loaded; tr non-NULL: for full fine-tuning (gradients beside the weights). */
static int clip_load(dl_clip *m, dl_checkpoint *ck, dl_part part, dl_arena *weights, const dl_trainable *tr)
{
    memset(m, 0, sizeof *m);
    if (part != DL_PART_TEXT && part != DL_PART_TEXT2) return dl_error_set("dl_clip_load: bad part %d", (int)part);
    if (part == DL_PART_TEXT2 && ck->cfg.text2.num_layers < 1)
        return dl_error_set("%s: no second text encoder (text_encoder_2/, conditioner.embedders.1.model.*)", ck->path);
    m->cfg = part == DL_PART_TEXT2 ? ck->cfg.text2 : ck->cfg.text;
    m->part = part;
    dl_netload nl = {{.ck = ck, .part = part, .arena = weights, .grads = tr ? tr->grads : NULL,
                      .placed = tr ? tr->placed : NULL, .placed_user = tr ? tr->user : NULL},
                     &m->names, m, NULL};
    if (load_all(m, &nl) == DL_OK) return DL_OK;
    dl_clip_free(m);
    return DL_ERR;
}

int dl_clip_load_as(dl_clip *m, dl_checkpoint *ck, dl_part part, dl_arena *weights)
{
    return clip_load(m, ck, part, weights, NULL);
}
int dl_clip_load_trainable(dl_clip *m, dl_checkpoint *ck, dl_arena *weights, const dl_trainable *tr)
{
    return clip_load(m, ck, DL_PART_TEXT, weights, tr);
}
int dl_clip_load(dl_clip *m, dl_checkpoint *ck, dl_arena *weights) { return dl_clip_load_as(m, ck, DL_PART_TEXT, weights); }

int dl_clip_list_weights_as(const dl_clip_config *cfg, dl_part part, dl_weight_fn fn, void *user)
{
    dl_clip m;
    memset(&m, 0, sizeof m);
    m.cfg = *cfg;
    m.part = part;
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder weights (listing)");
    dl_netload nl = {{.part = part, .arena = &a, .list = fn, .list_user = user}, &m.names, &m, NULL};
    const int rc = load_all(&m, &nl);
    dl_clip_free(&m);
    return rc;
}

int dl_clip_list_weights(const dl_clip_config *cfg, dl_weight_fn fn, void *user)
{
    return dl_clip_list_weights_as(cfg, DL_PART_TEXT, fn, user);
}

void dl_clip_free(dl_clip *m)
{
    free(m->layers);
    dl_names_free(&m->names);
    m->layers = NULL;
    m->graph.n = 0;
}

dl_linear *dl_clip_find(const dl_clip *m, const char *name)
{
    for (int l = 0; m->layers && l < m->cfg.num_layers; l++) {
        dl_clip_layer *y = &m->layers[l];
        dl_linear *all[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
        for (int i = 0; i < 6; i++)
            if (all[i]->name && strcmp(all[i]->name, name) == 0) return all[i];
    }
    return NULL;
}

/* ================================================================ the encoder layer */

/* What the layer's backward reads besides its input x (M = N*T tokens). */
typedef struct layer_saved {
    float *mean1, *rstd1; /* [M]     ln1 statistics */
    float *h1;            /* [M, C]  ln1 output: q/k/v input */
    float *q, *k, *v;     /* [M, C]  [N, T, H*d] */
    float *a;             /* [M, C]  attention output: out_proj input */
    float *lse;           /* [N, H, T] attention row logsumexp */
    float *x_mid;         /* [M, C]  residual after attention (ln2 input) */
    float *mean2, *rstd2; /* [M]     ln2 statistics */
    float *h2;            /* [M, C]  ln2 output: fc1 input */
    float *f1;            /* [M, I]  fc1 output, pre-activation */
    float *f2;            /* [M, I]  activation output: fc2 input */
} layer_saved;

static size_t layer_layout(const dl_clip_config *c, int N, int T, uintptr_t base, layer_saved *v)
{
    const int64_t M = (int64_t)N * T, C = c->hidden_size, I = c->intermediate_size;
    dl_slab s = {base, 0};
    v->mean1 = dl_slab_take(&s, M), v->rstd1 = dl_slab_take(&s, M), v->h1 = dl_slab_take(&s, M * C);
    v->q = dl_slab_take(&s, M * C), v->k = dl_slab_take(&s, M * C), v->v = dl_slab_take(&s, M * C);
    v->a = dl_slab_take(&s, M * C), v->lse = dl_slab_take(&s, (int64_t)N * c->num_heads * T);
    v->x_mid = dl_slab_take(&s, M * C), v->mean2 = dl_slab_take(&s, M), v->rstd2 = dl_slab_take(&s, M);
    v->h2 = dl_slab_take(&s, M * C), v->f1 = dl_slab_take(&s, M * I), v->f2 = dl_slab_take(&s, M * I);
    return s.off;
}

static dl_attention_shape attn_shape(const dl_clip_config *c, int N, int T)
{
    const int d = c->hidden_size / c->num_heads;
    return (dl_attention_shape){.N = N, .Tq = T, .Tk = T, .H = c->num_heads, .d = d,
                                .scale = 1.0f / sqrtf((float)d), .causal = 1};
}

/* y [N, T, C] from x [N, T, C]; what the backward reads in one allocation from save. */
static float *layer_forward(const dl_ctx *ctx, const dl_clip_config *c, const dl_clip_layer *y, int N, int T,
                            const float *x, float *out, dl_arena *save, dl_arena *scratch)
{
    const int C = c->hidden_size, I = c->intermediate_size;
    const int64_t M = (int64_t)N * T;
    layer_saved v;
    float *base = dl_alloc_f32(save, (int64_t)(layer_layout(c, N, T, 0, &v) / sizeof(float)));
    layer_layout(c, N, T, (uintptr_t)base, &v);
    dl_be(ctx)->layernorm_forward(ctx, M, C, y->ln1.eps, x, y->ln1.gamma, y->ln1.beta, v.h1, v.mean1,
                                  v.rstd1);                                          // [M, C]
    dl_linear_fwd(ctx, &y->q, M, v.h1, v.q, scratch);                                // [M, C]
    dl_linear_fwd(ctx, &y->k, M, v.h1, v.k, scratch);                                // [M, C]
    dl_linear_fwd(ctx, &y->v, M, v.h1, v.v, scratch);                                // [M, C]
    dl_be(ctx)->attention_forward(ctx, attn_shape(c, N, T), v.q, v.k, v.v, v.a, v.lse); // [N, T, H*d], causal
    dl_linear_fwd(ctx, &y->o, M, v.a, v.x_mid, scratch);                             // [M, C] attn
    dl_be(ctx)->add_forward(ctx, M * C, x, v.x_mid, v.x_mid);                        // x_mid = x + attn
    dl_be(ctx)->layernorm_forward(ctx, M, C, y->ln2.eps, v.x_mid, y->ln2.gamma, y->ln2.beta, v.h2, v.mean2,
                                  v.rstd2);                                          // [M, C]
    dl_linear_fwd(ctx, &y->fc1, M, v.h2, v.f1, scratch);                             // [M, I]
    dl_be(ctx)->act_forward(ctx, c->act, M * I, v.f1, v.f2);                         // [M, I]
    dl_linear_fwd(ctx, &y->fc2, M, v.f2, out, scratch);                              // [M, C] mlp
    dl_be(ctx)->add_forward(ctx, M * C, v.x_mid, out, out);                          // y = x_mid + mlp
    return base;
}

/* a linear with gradients: a LoRA with dA / dB, or the layer itself (full fine-tuning) */
static int trainable(const dl_linear *lin) { return (lin->lora && (lin->lora->dA || lin->lora->dB)) || lin->dw; }

/* From dy = d y [N, T, C]: parameter gradients (LoRAs, or under full fine-tuning the layer's own
 * linears and layer norms) accumulated; dx = d x overwritten (NULL: not wanted; then only the
 * branches that reach a parameter with gradients run). */
static void layer_backward(const dl_ctx *ctx, const dl_clip_config *c, const dl_clip_layer *y, int N, int T,
                           const float *x, const float *saved, const float *dy, float *dx, dl_arena *scratch)
{
    const int C = c->hidden_size, I = c->intermediate_size;
    const int64_t M = (int64_t)N * T;
    layer_saved v;
    layer_layout(c, N, T, (uintptr_t)saved, &v);
    const int below = dx != NULL;
    const int dh1 = below || dl_norm_trains(&y->ln1);                  // d ln1(x) is needed
    const int qkv = dh1 || trainable(&y->q) || trainable(&y->k) || trainable(&y->v);
    const int attn = qkv || trainable(&y->o);                          // the attention branch matters
    const int dh2 = attn || dl_norm_trains(&y->ln2);                   // d ln2(x_mid) is needed
    const int fc1 = dh2 || trainable(&y->fc1);
    const size_t mark = dl_arena_mark(scratch);
    float *g = dl_alloc_f32(scratch, M * C);   // [M, C] gradient inside a sublayer
    float *t = dl_alloc_f32(scratch, M * C);   // [M, C] a term to accumulate
    float *df = dl_alloc_f32(scratch, M * I);  // [M, I]
    /* MLP branch: y = x_mid + fc2(act(fc1(ln2(x_mid)))) */
    dl_linear_bwd(ctx, &y->fc2, M, v.f2, dy, fc1 ? df : NULL, scratch);    // [M, I] d f2
    if (fc1) {
        dl_be(ctx)->act_backward(ctx, c->act, M * I, v.f1, df, df);         // [M, I] d f1
        dl_linear_bwd(ctx, &y->fc1, M, v.h2, df, dh2 ? g : NULL, scratch);  // [M, C] d h2
    }
    if (dh2 && !attn) dl_layernorm_bwd(ctx, &y->ln2, M, v.x_mid, v.mean2, v.rstd2, g, NULL, scratch); // its weights
    if (attn) { /* attention branch: x_mid = x + out_proj(attn(q, k, v of ln1(x))) */
        float *dm = dx ? dx : dl_alloc_f32(scratch, M * C);                 // [M, C] d x_mid
        float *dq = dl_alloc_f32(scratch, M * C), *dk = dl_alloc_f32(scratch, M * C);
        float *dv = dl_alloc_f32(scratch, M * C);                           // [N, T, H*d] each
        dl_layernorm_bwd(ctx, &y->ln2, M, v.x_mid, v.mean2, v.rstd2, g, t, scratch); // [M, C]
        dl_be(ctx)->add_forward(ctx, M * C, dy, t, dm);                     // d x_mid = dy + ln2's
        dl_linear_bwd(ctx, &y->o, M, v.a, dm, qkv ? g : NULL, scratch);     // [M, C] d a
        if (qkv) {
            dl_be(ctx)->attention_backward(ctx, attn_shape(c, N, T), v.q, v.k, v.v, v.a, v.lse, g, dq, dk, dv);
            dl_linear_bwd(ctx, &y->q, M, v.h1, dq, dh1 ? g : NULL, scratch);   // [M, C] d h1
            dl_linear_bwd(ctx, &y->k, M, v.h1, dk, dh1 ? t : NULL, scratch);
            if (dh1) dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, g);
            dl_linear_bwd(ctx, &y->v, M, v.h1, dv, dh1 ? t : NULL, scratch);
        }
        if (dh1) {
            dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, g);
            dl_layernorm_bwd(ctx, &y->ln1, M, x, v.mean1, v.rstd1, g, below ? t : NULL, scratch); // [M, C]
            if (below) dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, dx);          // d x = d x_mid + ln1's
        }
    }
    dl_arena_release(scratch, mark);
}

/* ================================================================ one node */

static int node_trains(const void *self, const dl_node *nd)
{
    const dl_clip *m = self;
    if (nd->kind == DL_NODE_EMBED) return m->d_tok_emb || m->d_pos_emb; /* full fine-tuning only */
    if (nd->kind == DL_NODE_LAYERNORM) return dl_norm_trains(nd->block);
    if (nd->kind != DL_NODE_CLIP_LAYER) return 0;
    const dl_clip_layer *y = nd->block;
    return trainable(&y->q) || trainable(&y->k) || trainable(&y->v) || trainable(&y->o) || trainable(&y->fc1) ||
           trainable(&y->fc2) || dl_norm_trains(&y->ln1) || dl_norm_trains(&y->ln2);
}

static float *node_forward(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in,
                           const float *x, const float *skip, float *y, dl_arena *save, dl_arena *scratch)
{
    (void)skip;
    const dl_clip *m = self;
    const int C = m->cfg.hidden_size;
    switch (nd->kind) {
    case DL_NODE_EMBED:
        dl_be(ctx)->embed_tokens(ctx, in->N, in->T, C, m->cfg.vocab_size, in->ids, m->tok_emb, m->pos_emb,
                                 y);                                                 // [N, T, C]
        return NULL;
    case DL_NODE_CLIP_LAYER: return layer_forward(ctx, &m->cfg, nd->block, in->N, in->T, x, y, save, scratch);
    case DL_NODE_LAYERNORM: { /* saves its statistics: mean [M] | rstd [M] */
        const dl_norm *n = nd->block;
        const int64_t M = (int64_t)in->N * in->T;
        float *st = dl_alloc_f32(save, 2 * M);
        dl_be(ctx)->layernorm_forward(ctx, M, C, n->eps, x, n->gamma, n->beta, y, st, st + M); // [N, T, C]
        return st;
    }
    default: DL_ASSERTF(0, "text encoder node kind %d", (int)nd->kind); return NULL;
    }
}

static void node_backward(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in,
                          const float *x, const float *saved, const float *dy, float *dx, float *dctx,
                          float *dside, dl_arena *scratch)
{
    (void)dctx, (void)dside;
    const dl_clip *m = self;
    const int64_t M = (int64_t)in->N * in->T;
    switch (nd->kind) {
    case DL_NODE_EMBED: /* the embeddings' gradients (full fine-tuning); nothing lies below */
        if (m->d_tok_emb || m->d_pos_emb)
            dl_be(ctx)->embed_tokens_backward(ctx, in->N, in->T, m->cfg.hidden_size, m->cfg.vocab_size, in->ids, dy,
                                              m->d_tok_emb, m->d_pos_emb);
        return;
    case DL_NODE_CLIP_LAYER:
        layer_backward(ctx, &m->cfg, nd->block, in->N, in->T, x, saved, dy, dx, scratch);
        return;
    case DL_NODE_LAYERNORM: dl_layernorm_bwd(ctx, nd->block, M, x, saved, saved + M, dy, dx, scratch); return; // [M, C]
    default: DL_ASSERTF(0, "text encoder node kind %d", (int)nd->kind);
    }
}

void dl_clip_pass(const dl_clip *m, int N, int T, const int32_t *ids, int layers, int final_ln, dl_graph *g,
                  dl_net *net, dl_pass_in *in)
{
    const dl_clip_config *c = &m->cfg;
    DL_ASSERTF(N >= 1 && T >= 1 && T <= c->max_positions, "N = %d, T = %d", N, T);
    DL_ASSERTF(layers >= 1 && layers <= c->num_layers, "layers = %d of %d", layers, c->num_layers);
    DL_ASSERTF(c->hidden_size % c->num_heads == 0, "hidden %d, heads %d", c->hidden_size, c->num_heads);
    g->n = layers + 1; /* the embeddings and the first `layers` layers */
    memcpy(g->node, m->graph.node, (size_t)g->n * sizeof *g->node);
    if (final_ln) { /* the final layer norm on the last layer run */
        g->node[g->n] = m->graph.node[final_ln_node(m)];
        g->node[g->n++].x = layers;
    }
    *net = (dl_net){m, g, node_forward, node_backward, node_trains, 0};
    *in = (dl_pass_in){.N = N, .H = T, .W = 1, .T = T, .ids = ids};
}

/* ================================================================ inference */

void dl_clip_forward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, int layers,
                     int final_ln, float *out, dl_arena *scratch)
{
    dl_graph g; /* the run's list (on the stack: only its nodes are copied, ~7 KB for SD 1.5) */
    dl_net net;
    dl_pass_in in;
    dl_clip_pass(m, N, T, ids, layers, final_ln, &g, &net, &in);
    dl_graph_infer(ctx, &net, &in, out, scratch);
}

size_t dl_clip_scratch_bytes(const dl_clip *m, int N, int T)
{
    static _Alignas(64) const float stand_in[16]; /* the pointers of a measuring run (never read) */
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder scratch (measuring)");
    dl_clip_forward(dl_measure_ctx(), m, N, T, (const int32_t *)stand_in, m->cfg.num_layers, 1, (float *)stand_in,
                    &a);
    if (m->cfg.projection_dim > 0) { /* dl_clip_pooled after it */
        int *pos = calloc((size_t)N, sizeof *pos);
        DL_ASSERTF(pos, "out of memory");
        dl_clip_pooled(dl_measure_ctx(), m, N, T, pos, stand_in, (float *)stand_in, &a);
        free(pos);
    }
    return a.peak;
}

/* ================================================================ the pooled projection */

void dl_clip_eos_positions(const dl_clip_config *c, int N, int T, const int32_t *ids, int *pos)
{
    for (int n = 0; n < N; n++) {
        const int32_t *r = ids + (size_t)n * T;
        int at = 0;
        if (c->eos_token_id == 2) {
            for (int t = 1; t < T; t++)
                if (r[t] > r[at]) at = t;
        } else {
            for (int t = 0; t < T; t++)
                if (r[t] == c->eos_token_id) { at = t; break; }
        }
        pos[n] = at;
    }
}

void dl_clip_pooled_backward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int *pos, const float *dout,
                             float *dhidden, dl_arena *scratch)
{
    const int C = m->cfg.hidden_size;
    DL_ASSERTF(m->cfg.projection_dim > 0 && m->proj.w, "text encoder without text_projection");
    const size_t mark = dl_arena_mark(scratch);
    float *drows = dl_alloc_f32(scratch, (int64_t)N * C);                           // [N, C]
    dl_linear_bwd(ctx, &m->proj, N, NULL, dout, drows, scratch);                    // frozen: dx only
    dl_be(ctx)->fill(ctx, dhidden, 0, sizeof(float) * (size_t)N * T * C);
    for (int n = 0; n < N; n++) {
        DL_ASSERTF(pos[n] >= 0 && pos[n] < T, "pooled position %d of %d", pos[n], T);
        dl_be(ctx)->copy(ctx, dhidden + ((size_t)n * T + (size_t)pos[n]) * C, drows + (size_t)n * C,
                         sizeof(float) * (size_t)C);
    }
    dl_arena_release(scratch, mark);
}

void dl_clip_pooled(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int *pos, const float *hidden,
                    float *out, dl_arena *scratch)
{
    const int C = m->cfg.hidden_size;
    DL_ASSERTF(m->cfg.projection_dim > 0 && m->proj.w, "text encoder without text_projection");
    const size_t mark = dl_arena_mark(scratch);
    float *rows = dl_alloc_f32(scratch, (int64_t)N * C); // [N, C] the pooled tokens
    for (int n = 0; n < N; n++) {
        DL_ASSERTF(pos[n] >= 0 && pos[n] < T, "pooled position %d of %d", pos[n], T);
        dl_be(ctx)->copy(ctx, rows + (size_t)n * C, hidden + ((size_t)n * T + (size_t)pos[n]) * C, sizeof(float) * (size_t)C);
    }
    dl_linear_fwd(ctx, &m->proj, N, rows, out, scratch); // [N, P]
    dl_arena_release(scratch, mark);
}
