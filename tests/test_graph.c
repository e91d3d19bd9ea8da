/* test_graph.c - the network descriptions (model/graph.h) on random legal configs: the UNet's
 * node list is built from a config drawn at random (1-3 levels, layers_per_block 1-2, heads,
 * linear or conv projections, transformer depth, norm groups, cross-attention, in/out
 * channels; and SDXL-like ones: text_time added conditioning with random sinusoid width, time-id
 * count and text embedding width, levels without attention holding 0 heads and layers), a
 * checkpoint of that config is written from the weight listing (the loader in listing mode) with
 * random weights, and the size table is checked against what the walkers actually touch:
 *  - weights: every node's weights lie where the table says, and the load takes exactly the
 *    table's total;
 *  - training (with and without gradient checkpointing, LoRA on all or a random subset of the
 *    layers, and full fine-tuning: every weight with its own gradient): every node's output starts at its table offset and every element of it is
 *    written; its saved tensors start at theirs; the activations arena is used exactly to the
 *    table's size; the scratch peak equals the table's; nothing is written past either (guard
 *    bytes behind each arena keep their poison);
 *  - inference: the scratch peak equals the table's, the guard stays poisoned, and the output
 *    is bit-identical to the training forward's.
 * The VAE's encoder and decoder get the same checks on the six committed random-config pipelines
 * (tests/golden/random_configs, drawn by tests/gen/gen_random_configs.py), and their backward
 * (d input and LoRA gradients, through every VAE block kind) is checked by finite differences.
 * The text encoder gets the same checks on those pipelines and on configs drawn at random (layers,
 * heads, widths, activation, positions), for every run of its list (all layers, clip skip 2, the
 * raw hidden state) with LoRA on none, all or half of its linears.
 * The seed or model of each case is printed on failure. */
#include "testutil.h"
#include "core/arena.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"
#include "train/clip_train.h"
#include "train/unet_train.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GUARD 4096          /* poisoned bytes behind every arena */
#define POISON 0xFF         /* a NaN pattern no op writes */

TestSuite(graph, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

/* xorshift for the config draw (internal randomness; the seed is what a failure prints). */
static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

static int pick(uint64_t *s, int lo, int hi) { return lo + (int)(next(s) % (uint64_t)(hi - lo + 1)); }

/* A random legal SD-style UNet config (small: the test runs every walker on it). */
static void draw_config(dl_unet_config *c, uint64_t seed)
{
    uint64_t s = seed * 2654435761u + 1;
    dl_model_config d;
    dl_model_config_preset(&d, "sd15");
    *c = d.unet;
    memset(c->block_out_channels, 0, sizeof c->block_out_channels);
    memset(c->down_cross_attn, 0, sizeof c->down_cross_attn);
    memset(c->up_cross_attn, 0, sizeof c->up_cross_attn);
    memset(c->num_heads, 0, sizeof c->num_heads);
    memset(c->transformer_layers, 0, sizeof c->transformer_layers);
    c->n_blocks = pick(&s, 1, 3);
    c->norm_num_groups = pick(&s, 1, 2) * 2;
    c->layers_per_block = pick(&s, 1, 2);
    c->in_channels = pick(&s, 1, 4);
    c->out_channels = pick(&s, 1, 4);
    c->cross_attention_dim = pick(&s, 2, 6) * 4;
    c->use_linear_projection = pick(&s, 0, 1);
    c->sample_size = 8;
    for (int i = 0; i < c->n_blocks; i++) {
        c->block_out_channels[i] = c->norm_num_groups * pick(&s, 2, 4) * (i + 1);
        c->num_heads[i] = c->block_out_channels[i] % 4 == 0 ? pick(&s, 1, 2) * 2 : 1;
        c->transformer_layers[i] = pick(&s, 1, 2);
        c->down_cross_attn[i] = pick(&s, 0, 1);
        c->up_cross_attn[i] = pick(&s, 0, 1);
    }
    c->time_embed_dim = 4 * c->block_out_channels[0];
}

/* An SDXL-like draw: text_time added conditioning (K time ids of A-wide sinusoids beside a
 * Dt-wide text embedding), and the levels that no attention reads hold 0 heads and layers. */
static void draw_sdxl_config(dl_unet_config *c, uint64_t seed)
{
    draw_config(c, seed);
    uint64_t s = seed * 40503u + 7;
    c->down_cross_attn[0] = 0; /* SDXL's first level: no attention */
    c->up_cross_attn[c->n_blocks - 1] = 0;
    c->addition_embed = DL_ADD_TEXT_TIME;
    c->addition_time_embed_dim = 2 * pick(&s, 1, 4);
    c->addition_time_ids = pick(&s, 1, 6); /* the inputs' count; a config holds P for 6 (SDXL's) or fewer */
    c->projection_class_embeddings_input_dim = pick(&s, 1, 12) + 6 * c->addition_time_embed_dim;
    for (int i = 0; i < c->n_blocks; i++)
        if (!c->down_cross_attn[i] && !c->up_cross_attn[c->n_blocks - 1 - i] && i != c->n_blocks - 1)
            c->num_heads[i] = c->transformer_layers[i] = 0;
}

/* ---- a diffusers folder of that config: the UNet written from the weight listing, the other
 * parts linked from a committed tiny pipeline */

typedef struct writer {
    dl_st_entry e[4096];
    float *data[4096];
    int n;
    uint64_t seed;
} writer;

static int add_weight(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    (void)part;
    writer *w = user;
    cr_assert_lt(w->n, 4096);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *d = malloc((size_t)n * sizeof(float));
    tu_fill_uniform(d, (size_t)n, w->seed + (uint64_t)w->n, -0.2f, 0.2f);
    dl_st_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->dtype = DL_F32;
    e->ndim = ndim;
    memcpy(e->shape, shape, sizeof(int64_t) * (size_t)ndim);
    e->data = d;
    w->data[w->n++] = d;
    return DL_OK;
}

static void write_int_list(FILE *f, const char *key, const int *v, int n)
{
    fprintf(f, "  \"%s\": [", key);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", v[i]);
    fprintf(f, "],\n");
}

static void write_unet_json(FILE *f, const dl_unet_config *c)
{
    fprintf(f, "{\n  \"_class_name\": \"UNet2DConditionModel\",\n");
    write_int_list(f, "block_out_channels", c->block_out_channels, c->n_blocks);
    fprintf(f, "  \"down_block_types\": [");
    for (int i = 0; i < c->n_blocks; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", c->down_cross_attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D");
    fprintf(f, "],\n  \"up_block_types\": [");
    for (int i = 0; i < c->n_blocks; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", c->up_cross_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D");
    fprintf(f, "],\n");
    write_int_list(f, "attention_head_dim", c->num_heads, c->n_blocks);
    write_int_list(f, "transformer_layers_per_block", c->transformer_layers, c->n_blocks);
    fprintf(f, "  \"layers_per_block\": %d,\n  \"in_channels\": %d,\n  \"out_channels\": %d,\n", c->layers_per_block,
            c->in_channels, c->out_channels);
    fprintf(f, "  \"norm_num_groups\": %d,\n  \"cross_attention_dim\": %d,\n  \"sample_size\": %d,\n",
            c->norm_num_groups, c->cross_attention_dim, c->sample_size);
    if (c->addition_embed == DL_ADD_TEXT_TIME) /* the number of time ids is not a config key */
        fprintf(f, "  \"addition_embed_type\": \"text_time\",\n  \"addition_time_embed_dim\": %d,\n"
                "  \"projection_class_embeddings_input_dim\": %d,\n", c->addition_time_embed_dim,
                c->projection_class_embeddings_input_dim);
    fprintf(f, "  \"use_linear_projection\": %s\n}\n", c->use_linear_projection ? "true" : "false");
}

static void write_text_json(FILE *f, const dl_clip_config *c)
{
    fprintf(f, "{\"architectures\": [\"CLIPTextModel\"], \"model_type\": \"clip_text_model\",\n");
    fprintf(f, " \"hidden_act\": \"%s\",\n", c->act == DL_ACT_GELU ? "gelu" : "quick_gelu");
    fprintf(f, " \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d,\n",
            c->vocab_size, c->hidden_size, c->intermediate_size, c->num_layers);
    fprintf(f, " \"num_attention_heads\": %d, \"max_position_embeddings\": %d, \"layer_norm_eps\": %g,\n",
            c->num_heads, c->max_positions, (double)c->layer_norm_eps);
    fprintf(f, " \"bos_token_id\": %d, \"eos_token_id\": %d, \"pad_token_id\": %d}\n", c->bos_token_id,
            c->eos_token_id, c->pad_token_id);
}

/* dir: a diffusers folder whose UNet or text encoder (part) is mc's, written from the weight
 * listing with random weights; the other parts are linked from rc0. */
static void write_folder(const char *dir, const dl_model_config *mc, dl_part part, uint64_t seed)
{
    const int unet = part == DL_PART_UNET;
    char p[1024], q[1024];
    snprintf(p, sizeof p, "%s/%s", dir, unet ? "unet" : "text_encoder");
    cr_assert_eq(mkdir(dir, 0755), 0);
    cr_assert_eq(mkdir(p, 0755), 0);
    const char *linked[] = {"vae", unet ? "text_encoder" : "unet", "model_index.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(q, sizeof q, "tests/golden/random_configs/rc0/%s", linked[i]);
        snprintf(p, sizeof p, "%s/%s", dir, linked[i]);
        cr_assert_eq(symlink(tu_path(q), p), 0);
    }
    snprintf(p, sizeof p, "%s/%s/config.json", dir, unet ? "unet" : "text_encoder");
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    if (unet) write_unet_json(f, &mc->unet);
    else write_text_json(f, &mc->text);
    fclose(f);
    writer *w = calloc(1, sizeof *w);
    w->seed = seed * 7919;
    cr_assert_eq(dl_model_weights(mc, part, add_weight, w), DL_OK, "%s", dl_error_msg());
    snprintf(p, sizeof p, "%s/%s", dir,
             unet ? "unet/diffusion_pytorch_model.safetensors" : "text_encoder/model.safetensors");
    cr_assert_eq(dl_st_save(p, w->e, w->n, NULL, 0), DL_OK, "%s", dl_error_msg());
    for (int i = 0; i < w->n; i++) {
        free((void *)w->e[i].name);
        free(w->data[i]);
    }
    free(w);
}

/* ---- arenas with poisoned guards */

static void arena_guarded(dl_arena *a, const char *name, size_t bytes)
{
    cr_assert_eq(dl_arena_init(a, name, bytes + GUARD), DL_OK);
    memset(a->base, POISON, a->cap);
    a->cap = bytes; /* the walkers get exactly the table's size; the guard lies behind it */
}

static void expect_guard(const dl_arena *a, const char *what, uint64_t seed)
{
    const unsigned char *g = (const unsigned char *)a->base + a->cap;
    size_t bad = 0;
    for (size_t i = 0; i < GUARD; i++) bad += g[i] != POISON;
    cr_expect_eq(bad, 0, "seed %llu: %s: %zu bytes written past the table's %zu", (unsigned long long)seed, what, bad,
                 a->cap);
}

static size_t written(const float *p, int64_t n)
{
    size_t k = 0;
    const uint32_t *u = (const uint32_t *)p;
    for (int64_t i = 0; i < n; i++) k += u[i] != 0xFFFFFFFFu;
    return k;
}

/* ---- LoRA on every layer (all = 1) or a random half of them */

typedef struct loras {
    dl_lora *l;
    int n;
} loras;

static void attach(loras *L, const dl_unet *u, uint64_t seed, int all)
{
    int nm = 0;
    const dl_unet_module *mods = dl_unet_modules(u, &nm);
    L->l = calloc((size_t)nm, sizeof *L->l);
    L->n = nm;
    uint64_t s = seed + 77;
    for (int i = 0; i < nm; i++) {
        if (!all && next(&s) % 2) continue;
        dl_lora *l = &L->l[i];
        const dl_conv *cv = mods[i].conv;
        const int64_t K = mods[i].kind == DL_MODULE_LINEAR ? mods[i].linear->in : (int64_t)cv->k * cv->k * cv->cin;
        const int64_t out = mods[i].kind == DL_MODULE_LINEAR ? mods[i].linear->out : mods[i].conv->cout;
        l->r = 2, l->scale = 0.5f;
        l->A = malloc((size_t)(2 * K) * sizeof(float)), l->B = malloc((size_t)(2 * out) * sizeof(float));
        l->dA = calloc((size_t)(2 * K), sizeof(float)), l->dB = calloc((size_t)(2 * out), sizeof(float));
        tu_fill_uniform(l->A, (size_t)(2 * K), seed + (uint64_t)i, -0.1f, 0.1f);
        tu_fill_uniform(l->B, (size_t)(2 * out), seed + 5000 + (uint64_t)i, -0.1f, 0.1f);
        if (mods[i].kind == DL_MODULE_LINEAR) mods[i].linear->lora = l;
        else mods[i].conv->lora = l;
    }
}

static void detach(loras *L, const dl_unet *u)
{
    int nm = 0;
    const dl_unet_module *mods = dl_unet_modules(u, &nm);
    for (int i = 0; i < nm; i++) {
        if (mods[i].kind == DL_MODULE_LINEAR) mods[i].linear->lora = NULL;
        else mods[i].conv->lora = NULL;
        free(L->l[i].A), free(L->l[i].B), free(L->l[i].dA), free(L->l[i].dB);
    }
    free(L->l);
}

/* ---- one training step and one inference forward through arenas of exactly the table's sizes */

static void check_pass(const dl_unet *u, int N, int H, int W, int T, int checkpoint, uint64_t seed)
{
    const dl_unet_config *c = &u->cfg;
    const dl_graph *g = &u->graph;
    dl_size_table *tab = malloc(sizeof *tab);
    dl_unet_size_table(u, N, H, W, T, checkpoint, 1, tab);
    cr_assert_eq(tab->n, g->n);

    const size_t nx = (size_t)N * H * W * c->in_channels, nout = (size_t)N * H * W * c->out_channels;
    const size_t nctx = (size_t)N * T * c->cross_attention_dim;
    float *x = malloc(nx * sizeof(float)), *t = malloc((size_t)N * sizeof(float)), *ctx = malloc(nctx * sizeof(float));
    tu_fill_uniform(x, nx, seed + 1, -1, 1);
    tu_fill_uniform(t, (size_t)N, seed + 2, 0, 999);
    tu_fill_uniform(ctx, nctx, seed + 3, -1, 1);
    /* SDXL-like: the added conditioning's inputs (ignored without it) */
    const size_t nte = (size_t)N * dl_unet_text_embeds_dim(c) + 1, ntid = (size_t)N * c->addition_time_ids + 1;
    float *te = malloc(nte * sizeof(float)), *tid = malloc(ntid * sizeof(float));
    tu_fill_uniform(te, nte, seed + 5, -1, 1);
    tu_fill_uniform(tid, ntid, seed + 6, 0, 1024);
    const dl_unet_added add = {te, tid};
    float *out = tu_alloc_nan(nout), *dout = malloc(nout * sizeof(float)), *dctx = tu_alloc_nan(nctx);
    tu_fill_uniform(dout, nout, seed + 4, -1, 1);

    dl_arena act, scratch;
    arena_guarded(&act, "activations", tab->act);
    arena_guarded(&scratch, "scratch", tab->scratch_train);
    dl_unet_tape *tape = malloc(sizeof *tape);
    dl_unet_train_forward_added(tu_ctx(), u, tape, N, H, W, x, t, ctx, T, &add, out, checkpoint, &act, &scratch);
    cr_expect_eq(act.used, tab->act, "seed %llu: activations used %zu, table %zu", (unsigned long long)seed, act.used,
                 tab->act);
    for (int i = 0; i < g->n; i++) {
        const dl_node *nd = &g->node[i];
        const dl_size_row *r = &tab->row[i];
        const dl_tape_node *tn = &tape->node[i];
        if (nd->kind == DL_NODE_OUT) continue; /* the caller's buffer */
        cr_expect_eq((size_t)((char *)tn->y - act.base), r->y_off, "seed %llu: node %d (%s) output at %zu, table %zu",
                     (unsigned long long)seed, i, nd->name, (size_t)((char *)tn->y - act.base), r->y_off);
        const int64_t e = dl_node_numel(nd, N, H, W);
        cr_expect_eq(written(tn->y, e), (size_t)e, "seed %llu: node %d (%s): %zu of %lld output elements written",
                     (unsigned long long)seed, i, nd->name, written(tn->y, e), (long long)e);
        cr_expect_eq(r->y_bytes, dl_f32_bytes(e), "seed %llu: node %d", (unsigned long long)seed, i);
        if (tn->saved)
            cr_expect_eq((size_t)((char *)tn->saved - act.base), r->saved_off, "seed %llu: node %d (%s) saved at %zu, "
                         "table %zu", (unsigned long long)seed, i, nd->name, (size_t)((char *)tn->saved - act.base),
                         r->saved_off);
        else cr_expect_eq(r->saved_bytes, 0, "seed %llu: node %d (%s) saves nothing", (unsigned long long)seed, i,
                          nd->name);
    }
    cr_expect_eq(written(out, (int64_t)nout), nout, "seed %llu: output not fully written", (unsigned long long)seed);
    dl_unet_backward(tu_ctx(), tape, dout, dctx, &scratch);
    cr_expect_eq(scratch.used, 0);
    cr_expect_eq(scratch.peak, tab->scratch_train, "seed %llu: scratch peak %zu, table %zu", (unsigned long long)seed,
                 scratch.peak, tab->scratch_train);
    cr_expect_eq(written(dctx, (int64_t)nctx), nctx, "seed %llu: d(context) not fully written",
                 (unsigned long long)seed);
    expect_guard(&act, "activations", seed);
    expect_guard(&scratch, "training scratch", seed);

    dl_arena inf;
    arena_guarded(&inf, "scratch", tab->scratch_infer);
    float *y = tu_alloc_nan(nout);
    dl_unet_forward_added(tu_ctx(), u, N, H, W, x, t, ctx, T, &add, y, &inf);
    cr_expect_eq(inf.peak, tab->scratch_infer, "seed %llu: inference scratch peak %zu, table %zu",
                 (unsigned long long)seed, inf.peak, tab->scratch_infer);
    expect_guard(&inf, "inference scratch", seed);
    cr_expect(memcmp(y, out, nout * sizeof(float)) == 0, "seed %llu: training forward differs from inference",
              (unsigned long long)seed);

    inf.cap += GUARD, act.cap += GUARD, scratch.cap += GUARD;
    dl_arena_free(&inf), dl_arena_free(&act), dl_arena_free(&scratch);
    free(x), free(t), free(ctx), free(te), free(tid), free(out), free(dout), free(dctx), free(y), free(tape), free(tab);
}

/* seeds 1-8: SD 1.x/2.x-like configs; 9-14: SDXL-like ones */
Test(graph, unet_size_tables_match_what_the_walkers_touch, .timeout = 300)
{
    for (uint64_t seed = 1; seed <= 14; seed++) {
        dl_unet_config c;
        if (seed <= 8) draw_config(&c, seed);
        else draw_sdxl_config(&c, seed);
        cr_assert_eq(dl_unet_config_validate(&c, "drawn"), DL_OK, "seed %llu: %s", (unsigned long long)seed,
                     dl_error_msg());
        char dir[512];
        snprintf(dir, sizeof dir, "%s/unet%llu", tu_tmpdir(), (unsigned long long)seed);
        dl_model_config mc;
        memset(&mc, 0, sizeof mc);
        mc.unet = c;
        write_folder(dir, &mc, DL_PART_UNET, seed);
        dl_checkpoint ck;
        const dl_ckpt_options xl = {.prediction = -1, .allow_sdxl = 1};
        cr_assert_eq(dl_ckpt_open(&ck, dir, &xl), DL_OK, "seed %llu: %s", (unsigned long long)seed, dl_error_msg());
        cr_assert_eq(ck.sdxl, c.addition_embed != DL_ADD_NONE);
        ck.cfg.unet.addition_time_ids = c.addition_time_ids; /* the inputs' count (danlu run: from time_ids) */
        const char *d = dl_unet_config_diff(&ck.cfg.unet, &c);
        cr_expect_null(d, "seed %llu: the folder's config differs from the draw in %s", (unsigned long long)seed, d);
        dl_arena w;
        const size_t wb = tu_unet_weights_bytes(&ck);
        cr_assert_eq(dl_arena_init(&w, "weights", wb), DL_OK);
        dl_unet *u = malloc(sizeof *u);
        cr_assert_eq(dl_unet_load(u, &ck, &w), DL_OK, "seed %llu: %s", (unsigned long long)seed, dl_error_msg());
        cr_expect_eq(w.used, wb);
        /* weights: the nodes tile the arena in order */
        size_t at = 0;
        for (int i = 0; i < u->graph.n; i++) {
            cr_expect_eq(u->graph.node[i].w_off, at, "seed %llu: node %d (%s) weights at %zu, expected %zu",
                         (unsigned long long)seed, i, u->graph.node[i].name, u->graph.node[i].w_off, at);
            at += u->graph.node[i].w_bytes;
        }
        cr_expect_eq(at, w.used);

        const int n = c.n_blocks, s = 1 << (n - 1);
        const int N = 1 + (int)(seed % 2), H = s * (1 + (int)(seed % 3)), W = s * (2 - (int)(seed % 2)), T = 3;
        cr_log_info("seed %llu%s: %d levels, %d nodes, latent %dx%d, batch %d", (unsigned long long)seed,
                    c.addition_embed ? " (SDXL-like)" : "", n, u->graph.n,
                    H, W, N);
        for (int all = 0; all < 2; all++) {
            loras L;
            attach(&L, u, seed, all);
            for (int ckp = 0; ckp < 2; ckp++) check_pass(u, N, H, W, T, ckp, seed);
            detach(&L, u);
        }
        {   /* full fine-tuning: every weight trains with its own gradients (the time embedding too,
             * without SDXL's added embedding): what the blocks keep changes, the table follows */
            dl_arena wt;
            cr_assert_eq(dl_arena_init(&wt, "weights", wb), DL_OK);
            char *grads = calloc(1, wb);
            cr_assert_not_null(grads);
            const dl_trainable tr = {grads, NULL, NULL};
            dl_unet *ut = malloc(sizeof *ut);
            cr_assert_eq(dl_unet_load_trainable(ut, &ck, &wt, &tr), DL_OK, "seed %llu: %s", (unsigned long long)seed,
                         dl_error_msg());
            cr_expect_eq(wt.used, wb);
            for (int ckp = 0; ckp < 2; ckp++) check_pass(ut, N, H, W, T, ckp, seed);
            const float *gt = (const float *)(grads + ((const char *)ut->time_linear_1.w - wt.base));
            cr_expect_eq(ut->time_linear_1.dw, gt, "seed %llu: the time embedding's gradient is not at its weight's offset",
                         (unsigned long long)seed);
            size_t nz = 0;
            for (size_t i = 0; i < wb / sizeof(float); i++) nz += ((const float *)grads)[i] != 0;
            if (c.addition_embed == DL_ADD_NONE) /* (SDXL-like: the time and added embeddings, often most weights, stay frozen) */
                cr_expect_gt(nz, wb / sizeof(float) / 2, "seed %llu: only %zu gradients are nonzero",
                             (unsigned long long)seed, nz);
            else cr_expect_gt(nz, 0, "seed %llu: no gradient", (unsigned long long)seed);
            dl_unet_free(ut);
            free(ut), free(grads);
            dl_arena_free(&wt);
        }
        dl_unet_free(u);
        free(u);
        dl_arena_free(&w);
        dl_ckpt_close(&ck);
    }
}

/* ================================================================ the VAE */

/* The training pass of net (the VAE's encoder or decoder, the text encoder) through arenas of
 * exactly its size table, and its inference through exactly the table's inference scratch,
 * checked as the UNet's. in: the shapes and the token ids; nx > 0: an input x [nx] is drawn and
 * d x asked for. */
static void check_net_pass(const dl_net *net, dl_pass_in in, int64_t nx, int64_t nout, int checkpoint,
                           const char *label)
{
    const dl_graph *g = net->g;
    const int N = in.N, H = in.H, W = in.W;
    dl_size_table *tab = malloc(sizeof *tab);
    dl_graph_size_table(net, &in, checkpoint, nx > 0, 0, tab);
    float *x = nx ? malloc((size_t)nx * sizeof(float)) : NULL, *dx = nx ? tu_alloc_nan((size_t)nx) : NULL;
    if (nx) tu_fill_uniform(x, (size_t)nx, 11, -1, 1);
    in.x = x;
    float *out = tu_alloc_nan((size_t)nout), *dout = malloc((size_t)nout * sizeof(float));
    tu_fill_uniform(dout, (size_t)nout, 12, -1, 1);
    dl_arena act, scratch, inf;
    arena_guarded(&act, "activations", tab->act);
    arena_guarded(&scratch, "scratch", tab->scratch_train);
    dl_tape *tape = malloc(sizeof *tape);
    dl_graph_train_forward(tu_ctx(), net, tape, &in, out, checkpoint, &act, &scratch, NULL);
    cr_expect_eq(act.used, tab->act, "%s: activations used %zu, table %zu", label, act.used, tab->act);
    for (int i = 0; i + 1 < g->n; i++) {
        const int64_t e = dl_node_numel(&g->node[i], N, H, W);
        cr_expect_eq((size_t)((char *)tape->node[i].y - act.base), tab->row[i].y_off, "%s: node %d (%s)", label, i,
                     g->node[i].name);
        cr_expect_eq(written(tape->node[i].y, e), (size_t)e, "%s: node %d (%s) output not fully written", label, i,
                     g->node[i].name);
        cr_expect_eq(tab->row[i].y_bytes, dl_f32_bytes(e), "%s: node %d", label, i);
        if (tape->node[i].saved)
            cr_expect_eq((size_t)((char *)tape->node[i].saved - act.base), tab->row[i].saved_off, "%s: node %d", label,
                         i);
        else cr_expect_eq(tab->row[i].saved_bytes, 0, "%s: node %d (%s) saves nothing", label, i, g->node[i].name);
    }
    cr_expect_eq(written(out, nout), (size_t)nout, "%s: output not fully written", label);
    dl_graph_backward(tu_ctx(), tape, dout, dx, NULL, &scratch);
    cr_expect_eq(scratch.used, 0, "%s: scratch not released", label);
    cr_expect_eq(scratch.peak, tab->scratch_train, "%s: scratch peak %zu, table %zu", label, scratch.peak,
                 tab->scratch_train);
    cr_expect_eq(written(dx, nx), (size_t)nx, "%s: d input not fully written", label);
    expect_guard(&act, label, 0);
    expect_guard(&scratch, label, 0);
    arena_guarded(&inf, "scratch", tab->scratch_infer);
    float *y = tu_alloc_nan((size_t)nout);
    dl_graph_infer(tu_ctx(), net, &in, y, &inf);
    cr_expect_eq(inf.peak, tab->scratch_infer, "%s: inference scratch peak %zu, table %zu", label, inf.peak,
                 tab->scratch_infer);
    expect_guard(&inf, label, 0);
    cr_expect(memcmp(y, out, (size_t)nout * sizeof(float)) == 0, "%s: training forward differs from inference", label);
    inf.cap += GUARD, act.cap += GUARD, scratch.cap += GUARD;
    dl_arena_free(&inf), dl_arena_free(&act), dl_arena_free(&scratch);
    free(x), free(dx), free(out), free(dout), free(y), free(tape), free(tab);
}

/* A rank-2 LoRA with random A and B (B non-zero, so dA is too) on conv or linear layers. */
typedef struct vae_loras {
    dl_lora l[8];
    int64_t nA[8], nB[8]; /* elements of each A and B */
    int n;
} vae_loras;

static void lora_on(vae_loras *L, dl_lora **slot, int64_t K, int64_t out)
{
    L->nA[L->n] = 2 * K, L->nB[L->n] = 2 * out;
    dl_lora *l = &L->l[L->n++];
    l->r = 2, l->scale = 0.5f;
    l->A = malloc((size_t)(2 * K) * sizeof(float)), l->B = malloc((size_t)(2 * out) * sizeof(float));
    l->dA = calloc((size_t)(2 * K), sizeof(float)), l->dB = calloc((size_t)(2 * out), sizeof(float));
    tu_fill_uniform(l->A, (size_t)(2 * K), 100 + (uint64_t)L->n, -0.3f, 0.3f);
    tu_fill_uniform(l->B, (size_t)(2 * out), 200 + (uint64_t)L->n, -0.3f, 0.3f);
    *slot = l;
}

static void lora_conv(vae_loras *L, dl_conv *c) { lora_on(L, &c->lora, (int64_t)c->k * c->k * c->cin, c->cout); }

/* LoRAs on the decoder's (enc = 0) or encoder's conv_in, first resnet's conv1 and shortcut,
 * mid attention to_v, and conv_out: every block kind's backward carries a gradient. */
static void vae_attach(vae_loras *L, dl_vae *m, int enc)
{
    dl_vae_coder *c = enc ? &m->enc : &m->dec;
    memset(L, 0, sizeof *L);
    lora_conv(L, &c->conv_in);
    lora_conv(L, &c->blocks[0].res[0].conv1);
    lora_conv(L, &c->conv_out);
    if (m->cfg.mid_attention) lora_on(L, &c->mid_attn.v.lora, c->mid_attn.v.in, c->mid_attn.v.out);
}

static void vae_detach(vae_loras *L, dl_vae *m, int enc)
{
    dl_vae_coder *c = enc ? &m->enc : &m->dec;
    c->conv_in.lora = c->blocks[0].res[0].conv1.lora = c->conv_out.lora = NULL;
    c->mid_attn.v.lora = NULL;
    for (int i = 0; i < L->n; i++) free(L->l[i].A), free(L->l[i].B), free(L->l[i].dA), free(L->l[i].dB);
}

static dl_vae *open_vae(dl_checkpoint *ck, dl_arena *w, const char *model)
{
    char rel[128];
    snprintf(rel, sizeof rel, "tests/golden/random_configs/%s", model);
    cr_assert_eq(dl_ckpt_open(ck, tu_path(rel), NULL), DL_OK, "%s: %s", rel, dl_error_msg());
    const size_t wb = tu_vae_weights_bytes(ck);
    cr_assert_eq(dl_arena_init(w, "weights", wb), DL_OK);
    dl_vae *m = malloc(sizeof *m);
    cr_assert_eq(dl_vae_load(m, ck, w), DL_OK, "%s: %s", model, dl_error_msg());
    cr_expect_eq(w->used, wb);
    size_t at = 0;
    const dl_graph *gs[2] = {&m->enc_graph, &m->dec_graph};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < gs[k]->n; i++) {
            cr_expect_eq(gs[k]->node[i].w_off, at, "%s: node %s weights at %zu, expected %zu", model,
                         gs[k]->node[i].name, gs[k]->node[i].w_off, at);
            at += gs[k]->node[i].w_bytes;
        }
    cr_expect_eq(at, w->used, "%s: the nodes' weights do not tile the arena", model);
    return m;
}

Test(graph, vae_size_tables_match_what_the_walkers_touch, .timeout = 300)
{
    static const char *const models[] = {"rc0", "rc1", "rc2", "rc3", "rc4", "rcs"};
    for (int k = 0; k < 6; k++) {
        dl_checkpoint ck;
        dl_arena w;
        dl_vae *m = open_vae(&ck, &w, models[k]);
        const dl_vae_config *c = &m->cfg;
        const int f = 1 << (c->n_blocks - 1), N = 1 + k % 2, H = 2 * f, W = f * (1 + k % 3);
        cr_expect_geq(dl_vae_scratch_bytes(c, N, H, W), 0);
        for (int enc = 0; enc < 2; enc++)
            for (int lora = 0; lora < 2; lora++) {
                vae_loras L = {0};
                if (lora) vae_attach(&L, m, enc);
                const dl_net net = enc ? dl_vae_encoder_net(m) : dl_vae_decoder_net(m);
                char label[96];
                for (int ckp = 0; ckp < 2; ckp++) {
                    snprintf(label, sizeof label, "%s %s lora %d checkpointing %d", models[k],
                             enc ? "encoder" : "decoder", lora, ckp);
                    if (enc)
                        check_net_pass(&net, (dl_pass_in){.N = N, .H = H, .W = W}, (int64_t)N * H * W * c->in_channels,
                                       (int64_t)N * (H / f) * (W / f) * 2 * c->latent_channels, ckp, label);
                    else
                        check_net_pass(&net, (dl_pass_in){.N = N, .H = H / f, .W = W / f},
                                       (int64_t)N * (H / f) * (W / f) * c->latent_channels,
                                       (int64_t)N * H * W * c->out_channels, ckp, label);
                }
                if (lora) vae_detach(&L, m, enc);
            }
        dl_vae_free(m);
        free(m);
        dl_arena_free(&w);
        dl_ckpt_close(&ck);
    }
}

/* loss = sum(g * net(x)) in double, from an inference pass. */
typedef struct fd_case {
    const dl_net *net;
    dl_pass_in in;
    const float *g;
    float *out;
    int64_t nout;
    dl_arena *s;
} fd_case;

static double fd_loss(fd_case *f)
{
    dl_graph_infer(tu_ctx(), f->net, &f->in, f->out, f->s);
    double L = 0;
    for (int64_t i = 0; i < f->nout; i++) L += (double)f->g[i] * f->out[i];
    return L;
}

/* d loss / d *p by the fourth-order central difference (steps h and 2h). */
static double fd_at(fd_case *f, float *p, float h)
{
    const float keep = *p;
    double L[4];
    const float step[4] = {h, -h, 2 * h, -2 * h};
    for (int i = 0; i < 4; i++) {
        *p = keep + step[i];
        L[i] = fd_loss(f);
    }
    *p = keep;
    return (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h);
}

static void expect_fd(fd_case *f, float *p, float got, const char *what, int i)
{
    /* float32 forwards: a step of 2e-2 keeps rounding (~1e-4 absolute here) small, the fourth-order
     * stencil the truncation; the bound is relative with a floor of 0.02 for small gradients */
    const double ref = fd_at(f, p, 2e-2f);
    const double err = fabs(got - ref) / (fabs(ref) + 2e-2);
    cr_log_info("%s[%d]: backward %.6g, finite differences %.6g (rel %.3g)", what, i, got, ref, err);
    cr_expect(err < 2e-2, "%s[%d]: backward %.6g, finite differences %.6g (rel %.3g)", what, i, got, ref, err);
}

/* The decoder's and the encoder's backward by finite differences: d input, and the LoRA
 * gradients of conv_in, a resnet conv1, the mid attention's to_v and conv_out (the gradient
 * reaches them through every block kind: resnet, attention, samplers, head, quant convs). */
Test(graph, vae_backward_matches_finite_differences, .timeout = 300)
{
    dl_checkpoint ck;
    dl_arena w;
    dl_vae *m = open_vae(&ck, &w, "rc4");
    const dl_vae_config *c = &m->cfg;
    const int f = 1 << (c->n_blocks - 1), N = 1, H = 2 * f, W = 2 * f;
    for (int enc = 0; enc < 2; enc++) {
        vae_loras L;
        vae_attach(&L, m, enc);
        const dl_net net = enc ? dl_vae_encoder_net(m) : dl_vae_decoder_net(m);
        const int h = enc ? H : H / f, wd = enc ? W : W / f, cin = enc ? c->in_channels : c->latent_channels;
        const int64_t nx = (int64_t)N * h * wd * cin;
        const int64_t nout = enc ? (int64_t)N * (H / f) * (W / f) * 2 * c->latent_channels
                                 : (int64_t)N * H * W * c->out_channels;
        float *x = malloc((size_t)nx * sizeof(float)), *dx = tu_alloc_nan((size_t)nx);
        float *g = malloc((size_t)nout * sizeof(float)), *out = tu_alloc_nan((size_t)nout);
        tu_fill_uniform(x, (size_t)nx, 31 + (uint64_t)enc, -1, 1);
        tu_fill_uniform(g, (size_t)nout, 41 + (uint64_t)enc, -1, 1);
        dl_pass_in in = {.N = N, .H = h, .W = wd, .x = x};
        dl_size_table *tab = malloc(sizeof *tab);
        dl_graph_size_table(&net, &in, 0, 1, 0, tab);
        dl_arena act, s;
        cr_assert_eq(dl_arena_init(&act, "activations", tab->act), DL_OK);
        cr_assert_eq(dl_arena_init(&s, "scratch", tab->scratch_train > tab->scratch_infer ? tab->scratch_train
                                                                                          : tab->scratch_infer),
                     DL_OK);
        dl_tape *tape = malloc(sizeof *tape);
        dl_graph_train_forward(tu_ctx(), &net, tape, &in, out, 0, &act, &s, NULL);
        dl_graph_backward(tu_ctx(), tape, g, dx, NULL, &s);
        fd_case fc = {&net, in, g, out, nout, &s};
        const char *side = enc ? "encoder" : "decoder";
        char what[64];
        for (int i = 0; i < 6; i++) {
            const int64_t j = (int64_t)(i * 7919) % nx;
            snprintf(what, sizeof what, "%s d input", side);
            expect_fd(&fc, &x[j], dx[j], what, (int)j);
        }
        for (int a = 0; a < L.n; a++)
            for (int i = 0; i < 3; i++) {
                dl_lora *l = &L.l[a];
                const int jb = (int)((i * 3) % L.nB[a]), ja = (int)((i * 5) % L.nA[a]); /* conv_out's B has 2 x 3 */
                snprintf(what, sizeof what, "%s lora %d dB", side, a);
                expect_fd(&fc, &l->B[jb], l->dB[jb], what, jb);
                snprintf(what, sizeof what, "%s lora %d dA", side, a);
                expect_fd(&fc, &l->A[ja], l->dA[ja], what, ja);
            }
        vae_detach(&L, m, enc);
        dl_arena_free(&act), dl_arena_free(&s);
        free(x), free(dx), free(g), free(out), free(tape), free(tab);
    }
    dl_vae_free(m);
    free(m);
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

/* ================================================================ the text encoder */

/* A random legal text-encoder config (small: every walker runs on it). */
static void draw_text_config(dl_clip_config *c, uint64_t seed)
{
    uint64_t s = seed * 40503u + 7;
    dl_model_config d;
    dl_model_config_preset(&d, "sd15");
    *c = d.text;
    c->num_heads = pick(&s, 1, 4);
    c->hidden_size = c->num_heads * 4 * pick(&s, 1, 3);
    c->intermediate_size = 8 * pick(&s, 1, 6);
    c->num_layers = pick(&s, 1, 5);
    c->vocab_size = 64;
    c->max_positions = pick(&s, 2, 12);
    c->act = pick(&s, 0, 1) ? DL_ACT_GELU : DL_ACT_QUICK_GELU;
    c->layer_norm_eps = pick(&s, 0, 1) ? 1e-5f : 1e-6f;
    c->bos_token_id = 62, c->eos_token_id = 63, c->pad_token_id = 1;
}

/* LoRA on none (mode 0), every (1) or a random half (2) of the text encoder's linears. */
static void clip_attach(loras *L, const dl_clip *m, uint64_t seed, int mode)
{
    dl_clip_named_linear mods[6 * DL_CLIP_MAX_LAYERS];
    L->n = dl_clip_train_modules(m, mods, 6 * DL_CLIP_MAX_LAYERS);
    L->l = calloc((size_t)L->n, sizeof *L->l);
    uint64_t s = seed + 99;
    for (int i = 0; i < L->n; i++) {
        if (mode == 0 || (mode == 2 && next(&s) % 2)) continue;
        const int64_t K = mods[i].lin->in, out = mods[i].lin->out;
        dl_lora *l = &L->l[i];
        l->r = 2, l->scale = 0.5f;
        l->A = malloc((size_t)(2 * K) * sizeof(float)), l->B = malloc((size_t)(2 * out) * sizeof(float));
        l->dA = calloc((size_t)(2 * K), sizeof(float)), l->dB = calloc((size_t)(2 * out), sizeof(float));
        tu_fill_uniform(l->A, (size_t)(2 * K), seed + (uint64_t)i, -0.3f, 0.3f);
        tu_fill_uniform(l->B, (size_t)(2 * out), seed + 5000 + (uint64_t)i, -0.3f, 0.3f);
        mods[i].lin->lora = l;
    }
}

static void clip_detach(loras *L, const dl_clip *m)
{
    dl_clip_named_linear mods[6 * DL_CLIP_MAX_LAYERS];
    dl_clip_train_modules(m, mods, 6 * DL_CLIP_MAX_LAYERS);
    for (int i = 0; i < L->n; i++) {
        mods[i].lin->lora = NULL;
        free(L->l[i].A), free(L->l[i].B), free(L->l[i].dA), free(L->l[i].dB);
    }
    free(L->l);
}

/* The text encoder of ck: its nodes tile the weights arena; every run (all layers, clip skip 2,
 * the raw hidden state before the last layer) with LoRA on none, all or half of its linears,
 * with and without gradient checkpointing, through arenas of exactly its size table. */
static void check_clip(dl_checkpoint *ck, const char *label, uint64_t seed)
{
    dl_arena w;
    const size_t wb = tu_clip_weights_bytes(ck);
    cr_assert_eq(dl_arena_init(&w, "weights", wb), DL_OK);
    dl_clip *m = malloc(sizeof *m);
    cr_assert_eq(dl_clip_load(m, ck, &w), DL_OK, "%s: %s", label, dl_error_msg());
    cr_expect_eq(w.used, wb);
    size_t at = 0;
    for (int i = 0; i < m->graph.n; i++) {
        cr_expect_eq(m->graph.node[i].w_off, at, "%s: node %s weights at %zu, expected %zu", label,
                     m->graph.node[i].name, m->graph.node[i].w_off, at);
        at += m->graph.node[i].w_bytes;
    }
    cr_expect_eq(at, w.used, "%s: the nodes' weights do not tile the arena", label);
    const dl_clip_config *c = &m->cfg;
    const int L = c->num_layers, N = 1 + (int)(seed % 2), T = 1 + (int)(seed % (uint64_t)c->max_positions);
    int32_t *ids = malloc((size_t)N * T * sizeof *ids);
    for (int i = 0; i < N * T; i++) ids[i] = (int32_t)((seed + (uint64_t)i * 7919) % (uint64_t)c->vocab_size);
    cr_log_info("%s: %d layers, %d heads, C %d, I %d, batch %d x %d tokens", label, L, c->num_heads, c->hidden_size,
                c->intermediate_size, N, T);
    dl_graph *g = malloc(sizeof *g);
    dl_size_table *tab = malloc(sizeof *tab);
    for (int mode = 0; mode < 3; mode++) {
        loras ls;
        clip_attach(&ls, m, seed, mode);
        const int layers[3] = {L, L > 1 ? L - 1 : 1, L > 1 ? L - 1 : 1}, final_ln[3] = {1, 1, 0};
        for (int r = 0; r < 3; r++)
            for (int ckp = 0; ckp < 2; ckp++) {
                char lb[160];
                snprintf(lb, sizeof lb, "%s: lora %d, %d layers, final LN %d, checkpointing %d", label, mode,
                         layers[r], final_ln[r], ckp);
                dl_net net;
                dl_pass_in in;
                dl_clip_pass(m, N, T, ids, layers[r], final_ln[r], g, &net, &in);
                cr_expect_eq(g->n, layers[r] + 1 + final_ln[r], "%s", lb);
                check_net_pass(&net, in, 0, (int64_t)N * T * c->hidden_size, ckp, lb);
            }
        dl_clip_size_table(m, N, T, L, 1, 0, tab);
        cr_expect_eq(dl_clip_scratch_bytes(m, N, T), tab->scratch_infer, "%s: inference scratch", label);
        cr_expect_eq(tab->weights, w.used, "%s: the table's weights", label);
        clip_detach(&ls, m);
    }
    free(g), free(tab), free(ids);
    dl_clip_free(m);
    free(m);
    dl_arena_free(&w);
}

Test(graph, clip_size_tables_match_what_the_walkers_touch, .timeout = 300)
{
    static const char *const models[] = {"rc0", "rc1", "rc2", "rc3", "rc4", "rcs"};
    for (int k = 0; k < 6; k++) { /* the committed pipelines */
        char rel[128];
        snprintf(rel, sizeof rel, "tests/golden/random_configs/%s", models[k]);
        dl_checkpoint ck;
        cr_assert_eq(dl_ckpt_open(&ck, tu_path(rel), NULL), DL_OK, "%s: %s", rel, dl_error_msg());
        check_clip(&ck, models[k], (uint64_t)k + 1);
        dl_ckpt_close(&ck);
    }
    for (uint64_t seed = 1; seed <= 8; seed++) { /* configs drawn at random */
        dl_model_config mc;
        memset(&mc, 0, sizeof mc);
        draw_text_config(&mc.text, seed);
        cr_assert_eq(dl_clip_config_validate(&mc.text, "drawn"), DL_OK, "seed %llu: %s", (unsigned long long)seed,
                     dl_error_msg());
        char dir[512], label[64];
        snprintf(dir, sizeof dir, "%s/text%llu", tu_tmpdir(), (unsigned long long)seed);
        snprintf(label, sizeof label, "seed %llu", (unsigned long long)seed);
        write_folder(dir, &mc, DL_PART_TEXT, seed);
        dl_checkpoint ck;
        cr_assert_eq(dl_ckpt_open(&ck, dir, NULL), DL_OK, "%s: %s", label, dl_error_msg());
        check_clip(&ck, label, seed);
        dl_ckpt_close(&ck);
    }
}
