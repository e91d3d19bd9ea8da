/* unet.c - SD 1.x/2.x and SDXL UNet (diffusers UNet2DConditionModel): the node list built from
 * the config, the loader and the weight listing that walk it, one node's forward and backward
 * (the step every walker takes), and the inference forward. */
#include "model/unet.h"
#include "backend/backend.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ the description */

#define MAX_SKIPS (1 + DL_MAX_BLOCKS * (DL_UNET_MAX_LAYERS + 1))

static int add(dl_unet *u, dl_node_kind kind, const char *name, int x, int level, int cin, int cout, void *block)
{
    int i = dl_graph_add(&u->graph, kind, name, x, level, cin, cout);
    u->graph.node[i].block = block;
    return i;
}

static int add_transformer(dl_unet *u, const char *name, int x, int level, int C, int depth_of, void *block)
{
    int i = add(u, DL_NODE_TRANSFORMER, name, x, level, C, C, block);
    u->graph.node[i].heads = u->cfg.num_heads[depth_of];
    u->graph.node[i].layers = u->cfg.transformer_layers[depth_of];
    return i;
}

/* The node list of u->cfg, each node pointing at the struct its block loads into. */
static void build_graph(dl_unet *u)
{
    const dl_unet_config *c = &u->cfg;
    const int n = c->n_blocks, L = c->layers_per_block;
    const int *C = c->block_out_channels;
    char p[64];
    u->graph.n = 0;
    int skip[MAX_SKIPS], ns = 0, lvl = 0;
    int cur = add(u, DL_NODE_CONV_IN, "", DL_NODE_INPUT, 0, c->in_channels, C[0], &u->conv_in);
    skip[ns++] = cur;
    const int te = add(u, DL_NODE_TIME_EMBED, "time_embedding.", DL_NODE_NONE, 0, C[0], c->time_embed_dim, u);
    u->graph.node[te].side = 1;
    if (c->addition_embed == DL_ADD_TEXT_TIME) { /* reads the time embedding's output, replaces it */
        const int ae = add(u, DL_NODE_ADD_EMBED, "add_embedding.", DL_NODE_NONE, 0,
                           c->projection_class_embeddings_input_dim, c->time_embed_dim, u);
        u->graph.node[ae].side = 1;
    }
    for (int i = 0; i < n; i++) {
        dl_unet_down *d = &u->down[i];
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d.", i, j);
            cur = add(u, DL_NODE_RESNET, p, cur, lvl, j == 0 && i > 0 ? C[i - 1] : C[i], C[i], &d->resnets[j]);
            if (c->down_cross_attn[i]) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d.", i, j);
                cur = add_transformer(u, p, cur, lvl, C[i], i, &d->attentions[j]);
            }
            skip[ns++] = cur;
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.", i);
            cur = add(u, DL_NODE_DOWNSAMPLE, p, cur, lvl++, C[i], C[i], &d->downsample);
            skip[ns++] = cur;
        }
    }
    const int cm = C[n - 1];
    cur = add(u, DL_NODE_RESNET, "mid_block.resnets.0.", cur, lvl, cm, cm, &u->mid_res0);
    cur = add_transformer(u, "mid_block.attentions.0.", cur, lvl, cm, n - 1, &u->mid_attn);
    cur = add(u, DL_NODE_RESNET, "mid_block.resnets.1.", cur, lvl, cm, cm, &u->mid_res1);
    int cc = cm;
    for (int i = 0; i < n; i++) { /* up block i mirrors down block n-1-i */
        dl_unet_up *up = &u->up[i];
        const int mirror = n - 1 - i;
        for (int j = 0; j <= L; j++) { /* each resnet on concat(h, the last skip not yet taken) */
            const int sk = skip[--ns], cs = u->graph.node[sk].cout;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d.", i, j);
            cur = add(u, DL_NODE_RESNET, p, cur, lvl, cc + cs, C[mirror], &up->resnets[j]);
            u->graph.node[cur].skip = sk, u->graph.node[cur].cskip = cs;
            u->graph.node[sk].is_skip = 1;
            cc = C[mirror];
            if (c->up_cross_attn[i]) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d.", i, j);
                cur = add_transformer(u, p, cur, lvl, cc, mirror, &up->attentions[j]);
            }
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.", i);
            cur = add(u, DL_NODE_UPSAMPLE, p, cur, lvl--, cc, cc, &up->upsample);
        }
    }
    DL_ASSERT(ns == 0 && lvl == 0 && cc == C[0]);
    add(u, DL_NODE_OUT, "", cur, 0, C[0], c->out_channels, u);
}

/* ================================================================ loading */

static int reg(void *net, const char *name, dl_linear *l, dl_conv *c, int conv1x1)
{
    dl_unet *u = net;
    if (u->n_modules == u->cap_modules) {
        int cap = u->cap_modules ? 2 * u->cap_modules : 256;
        dl_unet_module *m = realloc(u->modules, (size_t)cap * sizeof *m);
        if (!m) return dl_error_set("out of memory loading the UNet");
        u->modules = m;
        u->cap_modules = cap;
    }
    u->modules[u->n_modules++] = (dl_unet_module){name, l ? DL_MODULE_LINEAR : DL_MODULE_CONV, l, c, conv1x1};
    return DL_OK;
}

/* The weights of one node under its prefix. */
static int load_node(dl_unet *u, dl_netload *nl, dl_node *nd)
{
    const dl_unet_config *c = &u->cfg;
    const int G = c->norm_num_groups;
    switch (nd->kind) {
    case DL_NODE_CONV_IN: return dl_nl_conv(nl, &u->conv_in, "", "conv_in", nd->cin, nd->cout, 3, 1, 1);
    case DL_NODE_TIME_EMBED:
        DL_TRY(dl_nl_linear(nl, &u->time_linear_1, nd->name, "linear_1", nd->cin, nd->cout, 1));
        return dl_nl_linear(nl, &u->time_linear_2, nd->name, "linear_2", nd->cout, nd->cout, 1);
    case DL_NODE_ADD_EMBED:
        DL_TRY(dl_nl_linear(nl, &u->add_linear_1, nd->name, "linear_1", nd->cin, nd->cout, 1));
        return dl_nl_linear(nl, &u->add_linear_2, nd->name, "linear_2", nd->cout, nd->cout, 1);
    case DL_NODE_RESNET:
        return dl_resnet_load(nd->block, nl, nd->name, nd->cin, nd->cout, c->time_embed_dim, G, c->norm_eps);
    case DL_NODE_TRANSFORMER:
        return dl_transformer_load(nd->block, nl, nd->name, nd->cout, nd->heads, nd->layers, c->cross_attention_dim,
                                   G, !c->use_linear_projection);
    case DL_NODE_DOWNSAMPLE: return dl_nl_conv(nl, nd->block, nd->name, "conv", nd->cin, nd->cout, 3, 2, 1);
    case DL_NODE_UPSAMPLE: return dl_nl_conv(nl, nd->block, nd->name, "conv", nd->cin, nd->cout, 3, 1, 1);
    case DL_NODE_OUT:
        DL_TRY(dl_nl_norm(nl, &u->conv_norm_out, "", "conv_norm_out", nd->cin, G, c->norm_eps));
        return dl_nl_conv(nl, &u->conv_out, "", "conv_out", nd->cin, nd->cout, 3, 1, 1);
    default: return dl_error_set("UNet node %s: unexpected kind %d", nd->name, (int)nd->kind);
    }
}

static int load_all(dl_unet *u, dl_netload *nl)
{
    build_graph(u);
    for (int i = 0; i < u->graph.n; i++) {
        dl_node *nd = &u->graph.node[i];
        nd->w_off = nl->ld.arena->used;
        DL_TRY(load_node(u, nl, nd));
        nd->w_bytes = nl->ld.arena->used - nd->w_off;
    }
    return DL_OK;
}

int dl_unet_weights_bytes(dl_checkpoint *ck, size_t *bytes)
{
    dl_arena a;
    dl_arena_init_measure(&a, "UNet weights (measuring)");
    dl_unet *u = malloc(sizeof *u);
    if (!u) return dl_error_set("out of memory measuring the UNet");
    int rc = dl_unet_load(u, ck, &a);
    if (rc == DL_OK) {
        dl_unet_free(u);
        *bytes = a.used;
    }
    free(u);
    return rc;
}

int dl_unet_load(dl_unet *u, dl_checkpoint *ck, dl_arena *weights)
{
    return dl_unet_load_trainable(u, ck, weights, NULL);
}

int dl_unet_load_trainable(dl_unet *u, dl_checkpoint *ck, dl_arena *weights, const dl_trainable *tr)
{
    memset(u, 0, sizeof *u);
    u->cfg = ck->cfg.unet;
    const dl_unet_config *c = &u->cfg;
    DL_TRY(dl_unet_config_validate(c, ck->path));
    if (c->layers_per_block > DL_UNET_MAX_LAYERS)
        return dl_error_set("%s: layers_per_block %d is not supported (at most %d)", ck->path, c->layers_per_block,
                            DL_UNET_MAX_LAYERS);
    if (c->time_embed_dim < 1 || c->freq_shift < 0 || c->freq_shift >= c->block_out_channels[0] / 2)
        return dl_error_set("%s: UNet time embedding (time_embed_dim %d, freq_shift %d) out of range", ck->path,
                            c->time_embed_dim, c->freq_shift);
    dl_netload nl = {{.ck = ck, .part = DL_PART_UNET, .arena = weights, .grads = tr ? tr->grads : NULL,
                      .placed = tr ? tr->placed : NULL, .placed_user = tr ? tr->user : NULL},
                     &u->names, u, reg};
    if (load_all(u, &nl) != DL_OK) {
        dl_error_prefix("%s: loading the UNet: ", ck->path);
        dl_unet_free(u);
        return DL_ERR;
    }
    return DL_OK;
}

int dl_unet_list_weights(const dl_unet_config *cfg, dl_weight_fn fn, void *user)
{
    if (cfg->layers_per_block > DL_UNET_MAX_LAYERS || cfg->n_blocks < 1 || cfg->n_blocks > DL_MAX_BLOCKS)
        return dl_error_set("UNet config (%d blocks, layers_per_block %d) not supported", cfg->n_blocks,
                            cfg->layers_per_block);
    dl_unet *u = calloc(1, sizeof *u);
    if (!u) return dl_error_set("out of memory listing the UNet's weights");
    u->cfg = *cfg;
    dl_arena a;
    dl_arena_init_measure(&a, "UNet weights (listing)");
    dl_netload nl = {{.part = DL_PART_UNET, .arena = &a, .list = fn, .list_user = user}, &u->names, u, reg};
    int rc = load_all(u, &nl);
    dl_unet_free(u);
    free(u);
    return rc;
}

void dl_unet_free(dl_unet *u)
{
    for (int i = 0; i < u->graph.n; i++)
        if (u->graph.node[i].kind == DL_NODE_TRANSFORMER) free(((dl_unet_transformer *)u->graph.node[i].block)->blocks);
    dl_names_free(&u->names);
    free(u->modules);
    memset(u, 0, sizeof *u);
}

const dl_unet_module *dl_unet_find(const dl_unet *u, const char *name)
{
    for (int i = 0; i < u->n_modules; i++)
        if (!strcmp(u->modules[i].name, name)) return &u->modules[i];
    return NULL;
}

const dl_unet_module *dl_unet_modules(const dl_unet *u, int *n)
{
    *n = u->n_modules;
    return u->modules;
}

/* ================================================================ one node */

/* The time embedding trains with its linears (full fine-tuning), and only without SDXL's added
 * embedding (which is frozen and lies between it and the resnets). */
static int time_embed_trains(const dl_unet *u)
{
    return u->cfg.addition_embed == DL_ADD_NONE &&
           (dl_linear_trains(&u->time_linear_1) || dl_linear_trains(&u->time_linear_2));
}

static int node_trains(const void *self, const dl_node *nd)
{
    const dl_unet *u = self;
    switch (nd->kind) {
    case DL_NODE_TIME_EMBED: return time_embed_trains(u);
    case DL_NODE_ADD_EMBED: return u->dtext_embeds != NULL; /* frozen, back-propagated into text_embeds */
    case DL_NODE_RESNET: return dl_resnet_trains(nd->block);
    case DL_NODE_TRANSFORMER: return dl_transformer_trains(nd->block);
    case DL_NODE_CONV_IN:
    case DL_NODE_DOWNSAMPLE:
    case DL_NODE_UPSAMPLE: return dl_conv_trains(nd->block);
    case DL_NODE_OUT: return dl_conv_trains(&u->conv_out) || dl_norm_trains(&u->conv_norm_out);
    default: return 0;
    }
}

/* What the time embedding's backward reads (saved only when it trains). */
typedef struct temb_saved {
    float *sinus;       /* [N, C0] the sinusoid (linear_1's input) */
    float *h;           /* [N, Td] linear_1's output (before its SiLU) */
    float *temb;        /* [N, Td] linear_2's output (before the final SiLU) */
} temb_saved;

static size_t temb_layout(const dl_unet *u, int N, uintptr_t base, temb_saved *sv)
{
    const int C0 = u->cfg.block_out_channels[0], Td = u->cfg.time_embed_dim;
    dl_slab s = {base, 0};
    sv->sinus = dl_slab_take(&s, (int64_t)N * C0);
    sv->h = dl_slab_take(&s, (int64_t)N * Td);
    sv->temb = dl_slab_take(&s, (int64_t)N * Td);
    return s.off;
}

/* temb_act [N, Td] = SiLU(linear_2(SiLU(linear_1(sinusoid(t [N]))))), the sinusoid as diffusers'
 * Timesteps(C0, flip_sin_to_cos, freq_shift); without the final SiLU when the added embedding
 * is still to be summed in (SDXL: add_embed_fwd applies it). When the embedding trains, its
 * backward's inputs are kept in one allocation from save (returned; else NULL). */
static float *time_embed_fwd(const dl_ctx *ctx, const dl_unet *u, int N, const float *t, float *temb_act,
                             dl_arena *save, dl_arena *scratch)
{
    const dl_unet_config *c = &u->cfg;
    const int C0 = c->block_out_channels[0], Td = c->time_embed_dim;
    temb_saved sv = {0};
    float *base = NULL;
    if (time_embed_trains(u)) {
        base = dl_alloc_f32(save, (int64_t)(temb_layout(u, N, 0, &sv) / sizeof(float)));
        temb_layout(u, N, (uintptr_t)base, &sv);
    }
    size_t mark = dl_arena_mark(scratch);
    float *temb = sv.temb ? sv.temb : dl_alloc_f32(scratch, (int64_t)N * Td);      // [N, Td]
    float *sinus = sv.sinus ? sv.sinus : dl_alloc_f32(scratch, (int64_t)N * C0);   // [N, C0]
    dl_be(ctx)->timestep_embedding(ctx, N, C0, t, c->flip_sin_to_cos, (float)c->freq_shift, 1.0f, 10000.0f,
                                   sinus);                                           // [N, C0]
    float *h = dl_alloc_f32(scratch, (int64_t)N * Td);                               // [N, Td]
    dl_linear_fwd(ctx, &u->time_linear_1, N, sinus, sv.h ? sv.h : h, scratch);       // [N, Td]
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, sv.h ? sv.h : h, h);  // [N, Td]
    if (c->addition_embed == DL_ADD_NONE) {
        dl_linear_fwd(ctx, &u->time_linear_2, N, h, temb, scratch);                  // temb [N, Td]
        dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, temb, temb_act);  // [N, Td]
    } else {
        dl_linear_fwd(ctx, &u->time_linear_2, N, h, temb_act, scratch);              // temb [N, Td]
    }
    dl_arena_release(scratch, mark);
    return base;
}

/* From dy = d temb_act [N, Td]: the time embedding's linears' gradients accumulated (nothing lies
 * below: the timesteps take no gradient). saved: time_embed_fwd's return. */
static void time_embed_bwd(const dl_ctx *ctx, const dl_unet *u, int N, const float *saved, const float *dy,
                           dl_arena *scratch)
{
    const int Td = u->cfg.time_embed_dim;
    const int64_t n = (int64_t)N * Td;
    temb_saved sv;
    temb_layout(u, N, (uintptr_t)saved, &sv);
    size_t mark = dl_arena_mark(scratch);
    float *dt = dl_alloc_f32(scratch, n), *a = dl_alloc_f32(scratch, n);             // [N, Td]
    float *da = dl_alloc_f32(scratch, n);                                            // [N, Td]
    dl_be(ctx)->act_backward(ctx, DL_ACT_SILU, n, sv.temb, dy, dt);                  // d temb
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, n, sv.h, a);                           // linear_2's input again
    dl_linear_bwd(ctx, &u->time_linear_2, N, a, dt, dl_linear_trains(&u->time_linear_1) ? da : NULL, scratch);
    if (dl_linear_trains(&u->time_linear_1)) {
        dl_be(ctx)->act_backward(ctx, DL_ACT_SILU, n, sv.h, da, dt);                 // d h
        dl_linear_bwd(ctx, &u->time_linear_1, N, sv.sinus, dt, NULL, scratch);
    }
    dl_arena_release(scratch, mark);
}

/* SDXL's text_time conditioning: y [N, Td] = SiLU(temb [N, Td] + add_embedding(concat(
 * text_embeds [N, Dt], sinusoid_A(time_ids [N, K]) [N, K*A]))), each time id's sinusoid as
 * diffusers' add_time_proj = Timesteps(A, flip_sin_to_cos, freq_shift); add_embedding is
 * linear_1 [Td, P] -> SiLU -> linear_2 [Td, Td], P = Dt + K*A. */
/* What the added embedding's backward reads (saved only when it is back-propagated). */
typedef struct add_saved {
    float *cat;         /* [N, P] linear_1's input */
    float *h;           /* [N, Td] linear_1's output (before its SiLU) */
    float *pre;         /* [N, Td] temb + linear_2's output (before the final SiLU) */
} add_saved;

static size_t add_layout(const dl_unet *u, int N, uintptr_t base, add_saved *sv)
{
    const int P = u->cfg.projection_class_embeddings_input_dim, Td = u->cfg.time_embed_dim;
    dl_slab s = {base, 0};
    sv->cat = dl_slab_take(&s, (int64_t)N * P);
    sv->h = dl_slab_take(&s, (int64_t)N * Td);
    sv->pre = dl_slab_take(&s, (int64_t)N * Td);
    return s.off;
}

static float *add_embed_fwd(const dl_ctx *ctx, const dl_unet *u, const dl_pass_in *in, const float *temb, float *y,
                            dl_arena *save, dl_arena *scratch)
{
    const dl_unet_config *c = &u->cfg;
    const int N = in->N, A = c->addition_time_embed_dim, K = c->addition_time_ids, Td = c->time_embed_dim;
    const int P = c->projection_class_embeddings_input_dim, Dt = dl_unet_text_embeds_dim(c);
    DL_ASSERTF(in->text_embeds && in->time_ids && temb,
               "an SDXL UNet (addition_embed_type text_time) needs text_embeds and time_ids");
    add_saved sv = {0};
    float *base = NULL;
    if (u->dtext_embeds && save) { /* back-propagated: keep the backward's inputs */
        base = dl_alloc_f32(save, (int64_t)(add_layout(u, N, 0, &sv) / sizeof(float)));
        add_layout(u, N, (uintptr_t)base, &sv);
    }
    size_t mark = dl_arena_mark(scratch);
    float *sinus = dl_alloc_f32(scratch, (int64_t)N * K * A);                        // [N*K, A] = [N, K*A]
    dl_be(ctx)->timestep_embedding(ctx, (int64_t)N * K, A, in->time_ids, c->flip_sin_to_cos, (float)c->freq_shift,
                                   1.0f, 10000.0f, sinus);                           // [N, K*A]
    float *cat = sv.cat ? sv.cat : dl_alloc_f32(scratch, (int64_t)N * P);            // [N, P]
    dl_be(ctx)->concat_channels_forward(ctx, N, Dt, (int64_t)K * A, in->text_embeds, sinus, cat);
    float *h = dl_alloc_f32(scratch, (int64_t)N * Td);                               // [N, Td]
    dl_linear_fwd(ctx, &u->add_linear_1, N, cat, sv.h ? sv.h : h, scratch);          // [N, Td]
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, sv.h ? sv.h : h, h);  // [N, Td]
    float *aug = sv.pre ? sv.pre : dl_alloc_f32(scratch, (int64_t)N * Td);           // [N, Td]
    dl_linear_fwd(ctx, &u->add_linear_2, N, h, aug, scratch);                        // aug [N, Td]
    dl_be(ctx)->add_forward(ctx, (int64_t)N * Td, temb, aug, aug);                   // temb + aug
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, aug, y);              // [N, Td]
    dl_arena_release(scratch, mark);
    return base;
}

/* From dy = d y [N, Td] (gathered from every resnet): d text_embeds [N, Dt] into u->dtext_embeds
 * (overwritten) through the final SiLU, linear_2, SiLU and linear_1 (all frozen); the time
 * embedding below is frozen and the time ids take no gradient. saved: add_embed_fwd's return. */
static void add_embed_bwd(const dl_ctx *ctx, const dl_unet *u, int N, const float *saved, const float *dy,
                          dl_arena *scratch)
{
    const dl_unet_config *c = &u->cfg;
    const int Td = c->time_embed_dim, P = c->projection_class_embeddings_input_dim, Dt = dl_unet_text_embeds_dim(c);
    const int64_t n = (int64_t)N * Td;
    add_saved sv;
    add_layout(u, N, (uintptr_t)saved, &sv);
    size_t mark = dl_arena_mark(scratch);
    float *dpre = dl_alloc_f32(scratch, n), *a = dl_alloc_f32(scratch, n), *da = dl_alloc_f32(scratch, n);
    float *dcat = dl_alloc_f32(scratch, (int64_t)N * P);                             // [N, P]
    dl_be(ctx)->act_backward(ctx, DL_ACT_SILU, n, sv.pre, dy, dpre);                 // d(temb + aug) = d aug
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, n, sv.h, a);                           // linear_2's input again
    dl_linear_bwd(ctx, &u->add_linear_2, N, a, dpre, da, scratch);                   // [N, Td]
    dl_be(ctx)->act_backward(ctx, DL_ACT_SILU, n, sv.h, da, dpre);                   // d h
    dl_linear_bwd(ctx, &u->add_linear_1, N, sv.cat, dpre, dcat, scratch);            // [N, P]
    dl_be(ctx)->concat_channels_backward(ctx, N, Dt, P - Dt, dcat, u->dtext_embeds, NULL);
    dl_arena_release(scratch, mark);
}

static float *node_forward(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in,
                           const float *x, const float *skip, float *y, dl_arena *save, dl_arena *scratch)
{
    const dl_unet *u = self;
    const int N = in->N, h = in->H >> nd->level, w = in->W >> nd->level, T = in->T;
    switch (nd->kind) {
    case DL_NODE_CONV_IN:
    case DL_NODE_DOWNSAMPLE: dl_conv_fwd(ctx, nd->block, N, h, w, x, y, NULL, NULL, scratch); return NULL;
    case DL_NODE_TIME_EMBED: return time_embed_fwd(ctx, u, N, in->t, y, save, scratch);
    case DL_NODE_ADD_EMBED: return add_embed_fwd(ctx, u, in, in->side, y, save, scratch);
    case DL_NODE_RESNET:
        return dl_resnet_forward(ctx, nd->block, N, h, w, x, skip, nd->cskip, in->side, y, save, scratch);
    case DL_NODE_TRANSFORMER:
        return dl_transformer_forward(ctx, nd->block, N, h, w, x, in->context, T, y, save, scratch);
    case DL_NODE_UPSAMPLE: return dl_upsample_forward(ctx, nd->block, N, h, w, x, y, save, scratch);
    case DL_NODE_OUT: return dl_head_forward(ctx, &u->conv_norm_out, &u->conv_out, N, h, w, x, y, save, scratch);
    default: DL_ASSERTF(0, "UNet node kind %d", (int)nd->kind); return NULL;
    }
}

static void node_backward(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in,
                          const float *x, const float *saved, const float *dy, float *dx, float *dctx,
                          float *dside, dl_arena *scratch)
{
    const dl_unet *u = self;
    const int N = in->N, h = in->H >> nd->level, w = in->W >> nd->level, T = in->T;
    switch (nd->kind) {
    case DL_NODE_CONV_IN:
    case DL_NODE_DOWNSAMPLE: dl_conv_bwd(ctx, nd->block, N, h, w, x, dy, dx, scratch); return;
    case DL_NODE_TIME_EMBED:
        DL_ASSERTF(time_embed_trains(u), "the time embedding is frozen here");
        time_embed_bwd(ctx, u, N, saved, dy, scratch);
        return;
    case DL_NODE_ADD_EMBED:
        DL_ASSERTF(u->dtext_embeds, "the added embedding is back-propagated only into text_embeds");
        add_embed_bwd(ctx, u, N, saved, dy, scratch);
        return;
    case DL_NODE_RESNET:
        dl_resnet_backward(ctx, nd->block, N, h, w, x, nd->cskip, in->side, saved, dy, dx, dside, scratch);
        return;
    case DL_NODE_TRANSFORMER:
        dl_transformer_backward(ctx, nd->block, N, h, w, x, in->context, T, saved, dy, dx, dctx, scratch);
        return;
    case DL_NODE_UPSAMPLE: dl_upsample_backward(ctx, nd->block, N, h, w, saved, dy, dx, scratch); return;
    case DL_NODE_OUT:
        dl_head_backward(ctx, &u->conv_norm_out, &u->conv_out, N, h, w, x, saved, dy, dx, scratch);
        return;
    default: DL_ASSERTF(0, "UNet node kind %d", (int)nd->kind);
    }
}

dl_net dl_unet_net(const dl_unet *u)
{
    return (dl_net){u, &u->graph, node_forward, node_backward, node_trains, u->cfg.cross_attention_dim};
}

/* ================================================================ inference */

dl_pass_in dl_unet_pass_in(const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                           const float *ctx_emb, int T, const dl_unet_added *add)
{
    const int n = u->cfg.n_blocks;
    DL_ASSERT(N > 0 && T > 0 && n >= 1);
    DL_ASSERTF(H % (1 << (n - 1)) == 0 && W % (1 << (n - 1)) == 0,
               "latent %dx%d is not divisible by 2^%d (the UNet's downsampling)", H, W, n - 1);
    const int xl = u->cfg.addition_embed != DL_ADD_NONE;
    return (dl_pass_in){.N = N, .H = H, .W = W, .x = x, .t = t, .context = ctx_emb, .T = T,
                        .text_embeds = xl && add ? add->text_embeds : NULL,
                        .time_ids = xl && add ? add->time_ids : NULL};
}

void dl_unet_forward_added(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                           const float *ctx_emb, int T, const dl_unet_added *add, float *out, dl_arena *scratch)
{
    const dl_net net = dl_unet_net(u);
    const dl_pass_in in = dl_unet_pass_in(u, N, H, W, x, t, ctx_emb, T, add);
    dl_graph_infer(ctx, &net, &in, out, scratch);
}

void dl_unet_forward(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                     const float *ctx_emb, int T, float *out, dl_arena *scratch)
{
    dl_unet_forward_added(ctx, u, N, H, W, x, t, ctx_emb, T, NULL, out, scratch);
}

size_t dl_unet_scratch_bytes(const dl_unet *u, int N, int H, int W, int T)
{
    static _Alignas(64) const float stand_in[16]; /* the pointers of a measuring run (never read) */
    const dl_unet_added add = {stand_in, stand_in};
    dl_arena a;
    dl_arena_init_measure(&a, "UNet scratch (measuring)");
    dl_unet_forward_added(dl_measure_ctx(), u, N, H, W, stand_in, stand_in, stand_in, T, &add, (float *)stand_in, &a);
    return a.peak;
}
