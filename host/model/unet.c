/* unet.c - SD 1.x/2.x UNet (diffusers UNet2DConditionModel): loading by diffusers name and the
 * CPU forward, block by block on explicit channels-last buffers. */
#include "model/unet.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRANSFORMER_GN_EPS 1e-6f /* Transformer2DModel's GroupNorm */
#define TBLOCK_LN_EPS 1e-5f      /* BasicTransformerBlock's LayerNorms */

/* ================================================================ loading */

static int own_ptr(dl_unet *u, void *p)
{
    if (!p) return dl_error_set("out of memory loading the UNet");
    if (u->n_owned == u->cap_owned) {
        int cap = u->cap_owned ? 2 * u->cap_owned : 256;
        void **q = realloc(u->owned, (size_t)cap * sizeof *q);
        if (!q) {
            free(p);
            return dl_error_set("out of memory loading the UNet");
        }
        u->owned = q;
        u->cap_owned = cap;
    }
    u->owned[u->n_owned++] = p;
    return DL_OK;
}

/* A name owned by u: prefix + suffix ("down_blocks.0.resnets.0." + "conv1"). NULL on OOM. */
static const char *own_name(dl_unet *u, const char *prefix, const char *suffix)
{
    size_t a = strlen(prefix), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (own_ptr(u, s) != DL_OK) return NULL;
    memcpy(s, prefix, a);
    memcpy(s + a, suffix, b + 1);
    return s;
}

static int reg(dl_unet *u, const char *name, dl_module_kind kind, dl_linear *l, dl_conv *c, int conv1x1)
{
    if (u->n_modules == u->cap_modules) {
        int cap = u->cap_modules ? 2 * u->cap_modules : 256;
        dl_unet_module *m = realloc(u->modules, (size_t)cap * sizeof *m);
        if (!m) return dl_error_set("out of memory loading the UNet");
        u->modules = m;
        u->cap_modules = cap;
    }
    u->modules[u->n_modules++] = (dl_unet_module){name, kind, l, c, conv1x1};
    return DL_OK;
}

static int load_linear(dl_unet *u, const dl_loader *ld, dl_linear *m, const char *pre, const char *n, int in,
                       int out, int bias)
{
    const char *name = own_name(u, pre, n);
    if (!name) return DL_ERR;
    DL_TRY(dl_linear_load(m, ld, name, in, out, bias));
    return reg(u, name, DL_MODULE_LINEAR, m, NULL, 0);
}

/* proj_in / proj_out: a 1x1 conv (SD1) or a linear (SD2) in the file, a linear here. */
static int load_proj(dl_unet *u, const dl_loader *ld, dl_linear *m, const char *pre, const char *n, int c)
{
    const char *name = own_name(u, pre, n);
    if (!name) return DL_ERR;
    DL_TRY(dl_linear_load_any(m, ld, name, c, c, 1));
    return reg(u, name, DL_MODULE_LINEAR, m, NULL, !u->cfg.use_linear_projection);
}

static int load_conv(dl_unet *u, const dl_loader *ld, dl_conv *m, const char *pre, const char *n, int cin, int cout,
                     int k, int stride, int pad)
{
    const char *name = own_name(u, pre, n);
    if (!name) return DL_ERR;
    DL_TRY(dl_conv_load(m, ld, name, cin, cout, k, stride, pad));
    return reg(u, name, DL_MODULE_CONV, NULL, m, 0);
}

static int load_norm(dl_unet *u, const dl_loader *ld, dl_norm *m, const char *pre, const char *n, int C, int G,
                     float eps)
{
    const char *name = own_name(u, pre, n);
    if (!name) return DL_ERR;
    return dl_norm_load(m, ld, name, C, G, eps);
}

static int load_resnet(dl_unet *u, const dl_loader *ld, dl_unet_resnet *r, const char *pre, int cin, int cout)
{
    const dl_unet_config *c = &u->cfg;
    r->cin = cin;
    r->cout = cout;
    DL_TRY(load_norm(u, ld, &r->norm1, pre, "norm1", cin, c->norm_num_groups, c->norm_eps));
    DL_TRY(load_conv(u, ld, &r->conv1, pre, "conv1", cin, cout, 3, 1, 1));
    DL_TRY(load_linear(u, ld, &r->time_emb_proj, pre, "time_emb_proj", c->time_embed_dim, cout, 1));
    DL_TRY(load_norm(u, ld, &r->norm2, pre, "norm2", cout, c->norm_num_groups, c->norm_eps));
    DL_TRY(load_conv(u, ld, &r->conv2, pre, "conv2", cout, cout, 3, 1, 1));
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) DL_TRY(load_conv(u, ld, &r->conv_shortcut, pre, "conv_shortcut", cin, cout, 1, 1, 0));
    return DL_OK;
}

static int load_attn(dl_unet *u, const dl_loader *ld, dl_unet_attn *a, const char *pre, int C, int kv_dim, int heads)
{
    a->heads = heads;
    a->dim_head = C / heads;
    DL_TRY(load_linear(u, ld, &a->to_q, pre, "to_q", C, C, 0));
    DL_TRY(load_linear(u, ld, &a->to_k, pre, "to_k", kv_dim, C, 0));
    DL_TRY(load_linear(u, ld, &a->to_v, pre, "to_v", kv_dim, C, 0));
    return load_linear(u, ld, &a->to_out, pre, "to_out.0", C, C, 1);
}

static int load_transformer(dl_unet *u, const dl_loader *ld, dl_unet_transformer *tr, const char *pre, int C,
                            int heads, int layers)
{
    const dl_unet_config *c = &u->cfg;
    char p[256];
    tr->C = C;
    tr->n_blocks = layers;
    tr->blocks = calloc((size_t)layers, sizeof *tr->blocks);
    DL_TRY(own_ptr(u, tr->blocks));
    DL_TRY(load_norm(u, ld, &tr->norm, pre, "norm", C, c->norm_num_groups, TRANSFORMER_GN_EPS));
    DL_TRY(load_proj(u, ld, &tr->proj_in, pre, "proj_in", C));
    for (int i = 0; i < layers; i++) {
        dl_unet_tblock *b = &tr->blocks[i];
        snprintf(p, sizeof p, "%stransformer_blocks.%d.", pre, i);
        DL_TRY(load_norm(u, ld, &b->norm1, p, "norm1", C, 0, TBLOCK_LN_EPS));
        char q[300];
        snprintf(q, sizeof q, "%sattn1.", p);
        DL_TRY(load_attn(u, ld, &b->attn1, q, C, C, heads));
        DL_TRY(load_norm(u, ld, &b->norm2, p, "norm2", C, 0, TBLOCK_LN_EPS));
        snprintf(q, sizeof q, "%sattn2.", p);
        DL_TRY(load_attn(u, ld, &b->attn2, q, C, c->cross_attention_dim, heads));
        DL_TRY(load_norm(u, ld, &b->norm3, p, "norm3", C, 0, TBLOCK_LN_EPS));
        DL_TRY(load_linear(u, ld, &b->ff_proj, p, "ff.net.0.proj", C, 8 * C, 1));
        DL_TRY(load_linear(u, ld, &b->ff_out, p, "ff.net.2", 4 * C, C, 1));
    }
    return load_proj(u, ld, &tr->proj_out, pre, "proj_out", C);
}

static int load_all(dl_unet *u, const dl_loader *ld)
{
    const dl_unet_config *c = &u->cfg;
    const int n = c->n_blocks, L = c->layers_per_block;
    const int *C = c->block_out_channels;
    char p[256];
    DL_TRY(load_conv(u, ld, &u->conv_in, "", "conv_in", c->in_channels, C[0], 3, 1, 1));
    DL_TRY(load_linear(u, ld, &u->time_linear_1, "", "time_embedding.linear_1", C[0], c->time_embed_dim, 1));
    DL_TRY(load_linear(u, ld, &u->time_linear_2, "", "time_embedding.linear_2", c->time_embed_dim,
                       c->time_embed_dim, 1));
    for (int i = 0; i < n; i++) {
        dl_unet_down *d = &u->down[i];
        d->cin = i == 0 ? C[0] : C[i - 1];
        d->cout = C[i];
        d->has_attn = c->down_cross_attn[i];
        d->has_down = i < n - 1;
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d.", i, j);
            DL_TRY(load_resnet(u, ld, &d->resnets[j], p, j == 0 ? d->cin : d->cout, d->cout));
            if (d->has_attn) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d.", i, j);
                DL_TRY(load_transformer(u, ld, &d->attentions[j], p, d->cout, c->num_heads[i],
                                        c->transformer_layers[i]));
            }
        }
        if (d->has_down) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.", i);
            DL_TRY(load_conv(u, ld, &d->downsample, p, "conv", d->cout, d->cout, 3, 2, 1));
        }
    }
    const int cm = C[n - 1];
    DL_TRY(load_resnet(u, ld, &u->mid_res0, "mid_block.resnets.0.", cm, cm));
    DL_TRY(load_transformer(u, ld, &u->mid_attn, "mid_block.attentions.0.", cm, c->num_heads[n - 1],
                            c->transformer_layers[n - 1]));
    DL_TRY(load_resnet(u, ld, &u->mid_res1, "mid_block.resnets.1.", cm, cm));
    int out = cm;
    for (int i = 0; i < n; i++) { /* up block i mirrors down block n-1-i */
        dl_unet_up *up = &u->up[i];
        const int prev_out = out, mirror = n - 1 - i;
        out = C[mirror];
        const int in = C[i + 1 < n ? n - 2 - i : 0]; /* channels of the block below the mirror */
        up->cout = out;
        up->has_attn = c->up_cross_attn[i];
        up->has_up = i < n - 1;
        for (int j = 0; j <= L; j++) {
            const int skip = j == L ? in : out;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d.", i, j);
            DL_TRY(load_resnet(u, ld, &up->resnets[j], p, (j == 0 ? prev_out : out) + skip, out));
            if (up->has_attn) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d.", i, j);
                DL_TRY(load_transformer(u, ld, &up->attentions[j], p, out, c->num_heads[mirror],
                                        c->transformer_layers[mirror]));
            }
        }
        if (up->has_up) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.", i);
            DL_TRY(load_conv(u, ld, &up->upsample, p, "conv", out, out, 3, 1, 1));
        }
    }
    DL_TRY(load_norm(u, ld, &u->conv_norm_out, "", "conv_norm_out", C[0], c->norm_num_groups, c->norm_eps));
    return load_conv(u, ld, &u->conv_out, "", "conv_out", C[0], c->out_channels, 3, 1, 1);
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
    dl_loader ld = {ck, DL_PART_UNET, weights};
    if (load_all(u, &ld) != DL_OK) {
        dl_error_prefix("%s: loading the UNet: ", ck->path);
        dl_unet_free(u);
        return DL_ERR;
    }
    return DL_OK;
}

void dl_unet_free(dl_unet *u)
{
    for (int i = 0; i < u->n_owned; i++) free(u->owned[i]);
    free(u->owned);
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

/* ================================================================ scratch planning */

/* Bytes of one arena allocation of n floats (dl_alloc_f32 rounds 0 up to 1). */
static size_t al(int64_t n)
{
    return ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
}

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

/* Largest LoRA rank attached to any module (0 without LoRA). */
static int max_rank(const dl_unet *u)
{
    int r = 0;
    for (int i = 0; i < u->n_modules; i++) {
        const dl_lora *l = u->modules[i].kind == DL_MODULE_LINEAR ? u->modules[i].linear->lora
                                                                   : u->modules[i].conv->lora;
        if (l && !l->merged && l->r > r) r = l->r;
    }
    return r;
}

/* Temporaries of the module-level calls (norm statistics, LoRA's [rows, r]) on `rows` rows. */
static size_t op_bytes(int N, int G, int64_t rows, int r)
{
    size_t b = 2 * al((int64_t)N * (G > 0 ? G : 1));
    if (r > 0) b = zmax(b, al(rows * r));
    return zmax(b, 2 * al(rows)); /* layer-norm statistics */
}

static size_t resnet_bytes(int N, int64_t P, int cin, int cout, int G, int r)
{
    return al(P * (cin > cout ? cin : cout)) + al((int64_t)N * cout) + op_bytes(N, G, P, r);
}

static size_t tblock_bytes(int N, int64_t M, int C, int T, int r)
{
    const int64_t MT = (int64_t)N * T, MC = M * C;
    size_t self = 4 * al(MC) + op_bytes(N, 0, M, r);
    size_t cross = 2 * al(MC) + 2 * al(MT * C) + op_bytes(N, 0, M > MT ? M : MT, r);
    size_t ff = al(8 * MC) + al(4 * MC) + op_bytes(N, 0, M, r);
    return 2 * al(MC) + zmax(zmax(self, cross), ff);
}

static size_t transformer_bytes(int N, int64_t P, int C, int T, int G, int r)
{
    return al(P * C) + zmax(op_bytes(N, G, P, r), tblock_bytes(N, P, C, T, r));
}

/* Sizes the forward needs: ping-pong activation buffers, the concat buffer, the skips and the
 * largest block's temporaries (all in floats / bytes). */
typedef struct unet_plan {
    int64_t act;        /* floats of each of the two ping-pong buffers */
    int64_t cat;        /* floats of the concat buffer */
    size_t skip_bytes;  /* every skip tensor */
    size_t block_bytes; /* the largest block's own temporaries */
} unet_plan;

static int64_t i64max(int64_t a, int64_t b) { return a > b ? a : b; }

static unet_plan make_plan(const dl_unet *u, int N, int H, int W, int T)
{
    const dl_unet_config *c = &u->cfg;
    const int n = c->n_blocks, L = c->layers_per_block, G = c->norm_num_groups, r = max_rank(u);
    const int *C = c->block_out_channels;
    unet_plan pl = {0, 0, 0, 0};
    int64_t P = (int64_t)N * H * W;
    pl.block_bytes = al((int64_t)N * C[0]) + al((int64_t)N * c->time_embed_dim) + op_bytes(N, G, N, r);
    pl.block_bytes = zmax(pl.block_bytes, op_bytes(N, G, P, r)); /* conv_in */
    pl.skip_bytes = al(P * C[0]);
    for (int i = 0; i < n; i++) {
        const dl_unet_down *d = &u->down[i];
        for (int j = 0; j < L; j++) {
            const dl_unet_resnet *rs = &d->resnets[j];
            pl.block_bytes = zmax(pl.block_bytes, resnet_bytes(N, P, rs->cin, rs->cout, G, r));
            if (d->has_attn) {
                pl.act = i64max(pl.act, P * rs->cout);
                pl.block_bytes = zmax(pl.block_bytes, transformer_bytes(N, P, rs->cout, T, G, r));
            }
            pl.skip_bytes += al(P * rs->cout);
        }
        if (d->has_down) {
            P /= 4;
            pl.skip_bytes += al(P * d->cout);
            pl.block_bytes = zmax(pl.block_bytes, op_bytes(N, G, P, r));
        }
    }
    const int cm = C[n - 1];
    pl.act = i64max(pl.act, P * cm);
    pl.block_bytes = zmax(pl.block_bytes, resnet_bytes(N, P, cm, cm, G, r));
    pl.block_bytes = zmax(pl.block_bytes, transformer_bytes(N, P, cm, T, G, r));
    for (int i = 0; i < n; i++) {
        const dl_unet_up *up = &u->up[i];
        for (int j = 0; j <= L; j++) {
            const dl_unet_resnet *rs = &up->resnets[j];
            pl.cat = i64max(pl.cat, P * rs->cin);
            pl.act = i64max(pl.act, P * rs->cout);
            pl.block_bytes = zmax(pl.block_bytes, resnet_bytes(N, P, rs->cin, rs->cout, G, r));
            if (up->has_attn) pl.block_bytes = zmax(pl.block_bytes, transformer_bytes(N, P, rs->cout, T, G, r));
        }
        if (up->has_up) {
            pl.block_bytes = zmax(pl.block_bytes, al(4 * P * up->cout) + op_bytes(N, G, 4 * P, r));
            P *= 4;
            pl.act = i64max(pl.act, P * up->cout);
        }
    }
    pl.act = i64max(pl.act, P * C[0]); /* conv_norm_out */
    pl.block_bytes = zmax(pl.block_bytes, op_bytes(N, G, P, r));
    return pl;
}

size_t dl_unet_scratch_bytes(const dl_unet *u, int N, int H, int W, int T)
{
    unet_plan pl = make_plan(u, N, H, W, T);
    const int64_t Td = u->cfg.time_embed_dim;
    return 2 * al(N * Td) + 2 * al(pl.act) + al(pl.cat) + pl.skip_bytes + pl.block_bytes;
}

/* ================================================================ blocks */

void dl_unet_time_embed_fwd(const dl_ctx *ctx, const dl_unet *u, int N, const float *t, float *temb,
                            dl_arena *scratch)
{
    const dl_unet_config *c = &u->cfg;
    const int C0 = c->block_out_channels[0], Td = c->time_embed_dim;
    size_t mark = dl_arena_mark(scratch);
    float *sinus = dl_alloc_f32(scratch, (int64_t)N * C0);                           // [N, C0]
    dl_be(ctx)->timestep_embedding(ctx, N, C0, t, c->flip_sin_to_cos, (float)c->freq_shift, 1.0f, 10000.0f,
                                   sinus);                                                 // [N, C0]
    float *h = dl_alloc_f32(scratch, (int64_t)N * Td);                               // [N, Td]
    dl_linear_fwd(ctx, &u->time_linear_1, N, sinus, h, scratch);                     // [N, Td]
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, h, h);                // [N, Td]
    dl_linear_fwd(ctx, &u->time_linear_2, N, h, temb, scratch);                      // temb [N, Td]
    dl_arena_release(scratch, mark);
}

void dl_unet_resnet_fwd(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x,
                        const float *temb_act, float *y, dl_arena *scratch)
{
    DL_ASSERT(x != y && N > 0 && H > 0 && W > 0);
    const int64_t HW = (int64_t)H * W, P = N * HW;
    const int cin = r->cin, cout = r->cout;
    size_t mark = dl_arena_mark(scratch);
    float *a = dl_alloc_f32(scratch, P * (cin > cout ? cin : cout));                 // [N, H, W, max(cin, cout)]
    float *tp = dl_alloc_f32(scratch, (int64_t)N * cout);                            // [N, cout]
    dl_groupnorm_fwd(ctx, &r->norm1, N, HW, x, a, 1, scratch);                       // a [N, H, W, cin]
    dl_conv_fwd(ctx, &r->conv1, N, H, W, a, y, NULL, NULL, scratch);                 // y [N, H, W, cout]
    if (temb_act) { /* NULL: a resnet without time embedding (the VAE's) */
        dl_linear_fwd(ctx, &r->time_emb_proj, N, temb_act, tp, scratch);             // tp [N, cout]
        dl_be(ctx)->add_bcast_forward(ctx, N, HW, cout, 1, y, tp, y);                // y [N, H, W, cout]
    }
    dl_groupnorm_fwd(ctx, &r->norm2, N, HW, y, a, 1, scratch);                       // a [N, H, W, cout]
    dl_conv_fwd(ctx, &r->conv2, N, H, W, a, y, NULL, NULL, scratch);                 // y [N, H, W, cout]
    if (r->has_shortcut) {
        dl_conv_fwd(ctx, &r->conv_shortcut, N, H, W, x, a, NULL, NULL, scratch);     // a [N, H, W, cout]
        dl_be(ctx)->add_forward(ctx, P * cout, a, y, y);                             // y [N, H, W, cout]
    } else {
        dl_be(ctx)->add_forward(ctx, P * cout, x, y, y);                             // y [N, H, W, cout]
    }
    dl_arena_release(scratch, mark);
}

/* out [N, Tq, C] = to_out(attention(to_q(xq [N, Tq, C]), to_k(xkv), to_v(xkv))), xkv [N, Tk, Dkv]. */
static void attn_fwd(const dl_ctx *ctx, const dl_unet_attn *at, int N, int Tq, const float *xq, int Tk,
                     const float *xkv, float *out, dl_arena *scratch)
{
    const int C = at->to_q.out;
    const int64_t Mq = (int64_t)N * Tq, Mk = (int64_t)N * Tk;
    size_t mark = dl_arena_mark(scratch);
    float *q = dl_alloc_f32(scratch, Mq * C);                                        // [N, Tq, C]
    float *k = dl_alloc_f32(scratch, Mk * C);                                        // [N, Tk, C]
    float *v = dl_alloc_f32(scratch, Mk * C);                                        // [N, Tk, C]
    float *o = dl_alloc_f32(scratch, Mq * C);                                        // [N, Tq, C]
    dl_linear_fwd(ctx, &at->to_q, Mq, xq, q, scratch);                               // q [N, Tq, heads*d]
    dl_linear_fwd(ctx, &at->to_k, Mk, xkv, k, scratch);                              // k [N, Tk, heads*d]
    dl_linear_fwd(ctx, &at->to_v, Mk, xkv, v, scratch);                              // v [N, Tk, heads*d]
    dl_attention_shape s = {.N = N, .Tq = Tq, .Tk = Tk, .H = at->heads, .d = at->dim_head,
                            .scale = (float)(1.0 / sqrt((double)at->dim_head)), .causal = 0};
    dl_be(ctx)->attention_forward(ctx, s, q, k, v, o, NULL);                         // o [N, Tq, heads*d]
    dl_linear_fwd(ctx, &at->to_out, Mq, o, out, scratch);                            // out [N, Tq, C]
    dl_arena_release(scratch, mark);
}

void dl_unet_tblock_fwd(const dl_ctx *ctx, const dl_unet_tblock *b, int N, int S, int C, float *h,
                        const float *context, int T, dl_arena *scratch)
{
    const int64_t M = (int64_t)N * S;
    size_t mark = dl_arena_mark(scratch);
    float *n = dl_alloc_f32(scratch, M * C);                                         // [N, S, C]
    float *a = dl_alloc_f32(scratch, M * C);                                         // [N, S, C]
    dl_layernorm_fwd(ctx, &b->norm1, M, h, n, scratch);                              // n [N, S, C]
    attn_fwd(ctx, &b->attn1, N, S, n, S, n, a, scratch);                             // a [N, S, C] self
    dl_be(ctx)->add_forward(ctx, M * C, h, a, h);                                    // h [N, S, C]
    dl_layernorm_fwd(ctx, &b->norm2, M, h, n, scratch);                              // n [N, S, C]
    attn_fwd(ctx, &b->attn2, N, S, n, T, context, a, scratch);                       // a [N, S, C] cross
    dl_be(ctx)->add_forward(ctx, M * C, h, a, h);                                    // h [N, S, C]
    dl_layernorm_fwd(ctx, &b->norm3, M, h, n, scratch);                              // n [N, S, C]
    size_t mark_ff = dl_arena_mark(scratch);
    float *g = dl_alloc_f32(scratch, M * 8 * C);                                     // [N, S, 8C]
    float *f = dl_alloc_f32(scratch, M * 4 * C);                                     // [N, S, 4C]
    dl_linear_fwd(ctx, &b->ff_proj, M, n, g, scratch);                               // g [N, S, 4C | 4C]
    dl_be(ctx)->geglu_forward(ctx, M, 4 * C, g, f);                                  // f [N, S, 4C]
    dl_linear_fwd(ctx, &b->ff_out, M, f, a, scratch);                                // a [N, S, C]
    dl_arena_release(scratch, mark_ff);
    dl_be(ctx)->add_forward(ctx, M * C, h, a, h);                                    // h [N, S, C]
    dl_arena_release(scratch, mark);
}

void dl_unet_transformer_fwd(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W,
                             const float *x, const float *context, int T, float *y, dl_arena *scratch)
{
    DL_ASSERT(x != y);
    const int C = tr->C, S = H * W;
    const int64_t M = (int64_t)N * S;
    size_t mark = dl_arena_mark(scratch);
    float *a = dl_alloc_f32(scratch, M * C);                                         // [N, S, C]
    dl_groupnorm_fwd(ctx, &tr->norm, N, S, x, a, 0, scratch);                        // a [N, S, C]
    dl_linear_fwd(ctx, &tr->proj_in, M, a, y, scratch);                              // y = h [N, S, C]
    for (int i = 0; i < tr->n_blocks; i++)
        dl_unet_tblock_fwd(ctx, &tr->blocks[i], N, S, C, y, context, T, scratch);    // h [N, S, C]
    dl_linear_fwd(ctx, &tr->proj_out, M, y, a, scratch);                             // a [N, S, C]
    dl_be(ctx)->add_forward(ctx, M * C, a, x, y);                                    // y [N, H, W, C]
    dl_arena_release(scratch, mark);
}

void dl_unet_downsample_fwd(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x, float *y,
                            dl_arena *scratch)
{
    DL_ASSERT(conv->stride == 2 && H % 2 == 0 && W % 2 == 0);
    dl_conv_fwd(ctx, conv, N, H, W, x, y, NULL, NULL, scratch);                      // y [N, H/2, W/2, C]
}

void dl_unet_upsample_fwd(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x, float *y,
                          dl_arena *scratch)
{
    const int C = conv->cin;
    size_t mark = dl_arena_mark(scratch);
    float *up = dl_alloc_f32(scratch, (int64_t)N * 4 * H * W * C);                   // [N, 2H, 2W, C]
    dl_be(ctx)->upsample_nearest2x_forward(ctx, N, H, W, C, x, up);                  // up [N, 2H, 2W, C]
    dl_conv_fwd(ctx, conv, N, 2 * H, 2 * W, up, y, NULL, NULL, scratch);             // y [N, 2H, 2W, C]
    dl_arena_release(scratch, mark);
}

/* ================================================================ the network */

#define MAX_SKIPS (1 + DL_MAX_BLOCKS * (DL_UNET_MAX_LAYERS + 1))

void dl_unet_forward(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                     const float *ctx_emb, int T, float *out, dl_arena *scratch)
{
    const dl_unet_config *c = &u->cfg;
    const int n = c->n_blocks, L = c->layers_per_block, Td = c->time_embed_dim;
    const int *C = c->block_out_channels;
    DL_ASSERT(N > 0 && T > 0 && n >= 1);
    DL_ASSERTF(H % (1 << (n - 1)) == 0 && W % (1 << (n - 1)) == 0,
               "latent %dx%d is not divisible by 2^%d (the UNet's downsampling)", H, W, n - 1);
    const unet_plan pl = make_plan(u, N, H, W, T);
    size_t mark = dl_arena_mark(scratch);

    float *temb = dl_alloc_f32(scratch, (int64_t)N * Td);                            // [N, Td]
    float *temb_act = dl_alloc_f32(scratch, (int64_t)N * Td);                        // [N, Td]
    float *A = dl_alloc_f32(scratch, pl.act);                                        // ping
    float *B = dl_alloc_f32(scratch, pl.act);                                        // pong
    float *cat = dl_alloc_f32(scratch, pl.cat);                                      // up-block resnet input
    dl_unet_time_embed_fwd(ctx, u, N, t, temb, scratch);                             // temb [N, Td]
    dl_be(ctx)->act_forward(ctx, DL_ACT_SILU, (int64_t)N * Td, temb, temb_act);      // [N, Td]

    /* ---- down: every output is a skip, written straight into its own buffer */
    float *skip[MAX_SKIPS];
    int skip_c[MAX_SKIPS], ns = 0;
    int h = H, w = W;
    int64_t P = (int64_t)N * h * w;
    float *cur = dl_alloc_f32(scratch, P * C[0]);                                    // [N, H, W, C0]
    dl_conv_fwd(ctx, &u->conv_in, N, h, w, x, cur, NULL, NULL, scratch);             // [N, H, W, C0]
    skip[ns] = cur, skip_c[ns++] = C[0];
    for (int i = 0; i < n; i++) {
        const dl_unet_down *d = &u->down[i];
        for (int j = 0; j < L; j++) {
            float *o = dl_alloc_f32(scratch, P * d->cout);                           // [N, h, w, cout]
            if (d->has_attn) {
                dl_unet_resnet_fwd(ctx, &d->resnets[j], N, h, w, cur, temb_act, A, scratch);      // A [N, h, w, cout]
                dl_unet_transformer_fwd(ctx, &d->attentions[j], N, h, w, A, ctx_emb, T, o, scratch); // o
            } else {
                dl_unet_resnet_fwd(ctx, &d->resnets[j], N, h, w, cur, temb_act, o, scratch);      // o
            }
            cur = o;
            skip[ns] = cur, skip_c[ns++] = d->cout;
        }
        if (d->has_down) {
            float *o = dl_alloc_f32(scratch, P / 4 * d->cout);                       // [N, h/2, w/2, cout]
            dl_unet_downsample_fwd(ctx, &d->downsample, N, h, w, cur, o, scratch);   // o
            h /= 2, w /= 2, P /= 4;
            cur = o;
            skip[ns] = cur, skip_c[ns++] = d->cout;
        }
    }

    /* ---- mid */
    dl_unet_resnet_fwd(ctx, &u->mid_res0, N, h, w, cur, temb_act, A, scratch);       // A [N, h, w, Cm]
    dl_unet_transformer_fwd(ctx, &u->mid_attn, N, h, w, A, ctx_emb, T, B, scratch);  // B [N, h, w, Cm]
    dl_unet_resnet_fwd(ctx, &u->mid_res1, N, h, w, B, temb_act, A, scratch);         // A [N, h, w, Cm]
    cur = A;
    int cc = C[n - 1];

    /* ---- up: concat(h, skip) -> resnet (-> transformer), then upsample; cur ping-pongs A/B */
    for (int i = 0; i < n; i++) {
        const dl_unet_up *up = &u->up[i];
        for (int j = 0; j <= L; j++) {
            const dl_unet_resnet *rs = &up->resnets[j];
            DL_ASSERT(ns > 0);
            const float *sk = skip[--ns];
            const int cs = skip_c[ns];
            DL_ASSERT(cc + cs == rs->cin);
            dl_be(ctx)->concat_channels_forward(ctx, P, cc, cs, cur, sk, cat);       // cat [N, h, w, cc + cs]
            float *o = cur == A ? B : A;
            dl_unet_resnet_fwd(ctx, rs, N, h, w, cat, temb_act, o, scratch);         // o [N, h, w, cout]
            cur = o;
            cc = rs->cout;
            if (up->has_attn) {
                o = cur == A ? B : A;
                dl_unet_transformer_fwd(ctx, &up->attentions[j], N, h, w, cur, ctx_emb, T, o, scratch); // o
                cur = o;
            }
        }
        if (up->has_up) {
            float *o = cur == A ? B : A;
            dl_unet_upsample_fwd(ctx, &up->upsample, N, h, w, cur, o, scratch);      // o [N, 2h, 2w, cout]
            h *= 2, w *= 2, P *= 4;
            cur = o;
        }
    }
    DL_ASSERT(ns == 0 && h == H && w == W && cc == C[0]);

    /* ---- out */
    float *o = cur == A ? B : A;
    dl_groupnorm_fwd(ctx, &u->conv_norm_out, N, (int64_t)h * w, cur, o, 1, scratch); // o [N, H, W, C0]
    dl_conv_fwd(ctx, &u->conv_out, N, h, w, o, out, NULL, NULL, scratch);            // out [N, H, W, out_ch]
    dl_arena_release(scratch, mark);
}
