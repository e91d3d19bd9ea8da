/* test_sdxl_unet.c - the SDXL UNet (text_time added conditioning, per-level transformer depth, a
 * first level without attention) against diffusers on a tiny random model of SDXL's
 * architecture: the forward in both checkpoint layouts, on the CPU and on the CUDA backend over
 * the emulated device; one LoRA training step against PEFT; config parsing, single-file
 * detection, module names, and danlu-mkcheckpoint's SDXL presets.
 * Golden data: tests/golden/sdxl_unet.safetensors, sdxl_unet_train.safetensors and the model
 * tests/golden/tiny_unet_sdxl/ (+ its single file tiny_unet_sdxl.safetensors), from
 * tests/gen/gen_sdxl_unet.py (diffusers UNet2DConditionModel and PEFT in float64). */
#include "testutil.h"
#include "backend/backend.h"
#include "core/arena.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "ops/cpu/loss.h"
#include "train/unet_train.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The SD 1.x UNet parity bound (tests/test_unet.c: fp32 vs the float64 reference), and the LoRA
 * gradient bound of tests/test_unet_train.c; the figures reached are logged per case. */
#define UNET_TOL 1e-5
#define GRAD_TOL 1e-4

#define FOLDER "tests/golden/tiny_unet_sdxl"
#define SINGLE "tests/golden/tiny_unet_sdxl.safetensors"

static const dl_ckpt_options k_xl = {.prediction = -1, .allow_sdxl = 1};

/* The single file with the folder's UNet config (heads and norm groups are not in its weights). */
static dl_ckpt_options single_opts(void)
{
    dl_ckpt_options o = k_xl;
    o.unet_config = tu_path(FOLDER "/unet/config.json");
    return o;
}

typedef struct model {
    dl_checkpoint ck;
    dl_unet u;
    dl_arena w;
} model;

/* Open rel with opt and load its UNet into a weights arena made on ctx. */
static void model_open_on(model *m, const char *rel, const dl_ckpt_options *opt, const dl_ctx *ctx)
{
    cr_assert_eq(dl_ckpt_open(&m->ck, tu_path(rel), opt), DL_OK, "open %s: %s", rel, dl_error_msg());
    cr_assert_eq(m->ck.sdxl, 1, "%s is not recognised as SDXL", rel);
    size_t bytes;
    cr_assert_eq(dl_unet_weights_bytes(&m->ck, &bytes), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_arena_init_on(&m->w, "weights", bytes, ctx), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_unet_load(&m->u, &m->ck, &m->w), DL_OK, "load %s: %s", rel, dl_error_msg());
    cr_expect_eq(m->w.used, bytes, "%s: weights took %zu bytes, measured %zu", rel, m->w.used, bytes);
}

static void model_open(model *m, const char *rel, const dl_ckpt_options *opt)
{
    model_open_on(m, rel, opt, tu_ctx());
}

static void model_close(model *m)
{
    dl_unet_free(&m->u);
    dl_arena_free(&m->w);
    dl_ckpt_close(&m->ck);
}

/* ---- a golden case's inputs */

typedef struct xcase {
    int N, H, W, T;
    float *x, *t, *ctx, *te, *tid, *ref; /* host: [N,H,W,4], [N], [N,T,Dc], [N,Dt], [N,K], out [N,H,W,4] */
    size_t nx, nctx, nte, ntid, nout;
} xcase;

static float *golden_of(const dl_st_file *g, const char *name, const char *tensor, int64_t *n)
{
    char key[1024];
    snprintf(key, sizeof key, "%s.%s", name, tensor);
    return tu_golden_f32(g, key, n);
}

static void case_load(xcase *c, const dl_st_file *g, const char *name, const dl_unet_config *cfg)
{
    char key[128];
    snprintf(key, sizeof key, "%s.x", name);
    const dl_st_tensor *tx = dl_st_find(g, key);
    snprintf(key, sizeof key, "%s.ctx", name);
    const dl_st_tensor *tc = dl_st_find(g, key);
    cr_assert(tx && tc, "golden case %s missing", name);
    c->N = (int)tx->shape[0], c->H = (int)tx->shape[1], c->W = (int)tx->shape[2], c->T = (int)tc->shape[1];
    cr_assert_eq(tx->shape[3], cfg->in_channels);
    cr_assert_eq(tc->shape[2], cfg->cross_attention_dim);
    int64_t n;
    c->x = golden_of(g, name, "x", &n), c->nx = (size_t)n;
    c->t = golden_of(g, name, "t", &n);
    cr_assert_eq(n, c->N);
    c->ctx = golden_of(g, name, "ctx", &n), c->nctx = (size_t)n;
    c->te = golden_of(g, name, "text_embeds", &n), c->nte = (size_t)n;
    cr_assert_eq(n, (int64_t)c->N * dl_unet_text_embeds_dim(cfg), "%s: text_embeds [N, %d]", name,
                 dl_unet_text_embeds_dim(cfg));
    c->tid = golden_of(g, name, "time_ids", &n), c->ntid = (size_t)n;
    cr_assert_eq(n, (int64_t)c->N * cfg->addition_time_ids);
    c->ref = golden_of(g, name, "out", &n), c->nout = (size_t)n;
    cr_assert_eq(n, (int64_t)c->N * c->H * c->W * cfg->out_channels);
}

static void case_free(xcase *c)
{
    free(c->x), free(c->t), free(c->ctx), free(c->te), free(c->tid), free(c->ref);
}

/* The CPU forward of golden case name on m, with a scratch arena of exactly dl_unet_scratch_bytes;
 * returns the malloc'd output, *err its relative L2 error vs diffusers. */
static float *forward_cpu(model *m, const char *name, double *err)
{
    dl_st_file g;
    tu_golden_open(&g, "sdxl_unet");
    xcase c;
    case_load(&c, &g, name, &m->u.cfg);
    float *out = tu_alloc_nan(c.nout);
    dl_arena s;
    const size_t need = dl_unet_scratch_bytes(&m->u, c.N, c.H, c.W, c.T);
    cr_assert_eq(dl_arena_init(&s, "scratch", need), DL_OK);
    const dl_unet_added add = {c.te, c.tid};
    dl_unet_forward_added(tu_ctx(), &m->u, c.N, c.H, c.W, c.x, c.t, c.ctx, c.T, &add, out, &s);
    cr_expect_eq(s.used, 0, "%s: scratch not released", name);
    cr_expect_eq(s.peak, need, "%s: scratch peak %zu, measured %zu", name, s.peak, need);
    *err = tu_rel_l2(out, c.ref, c.nout);
    cr_log_info("sdxl unet %s (N=%d %dx%d T=%d): rel L2 error %.3g vs diffusers float64", name, c.N, c.H, c.W, c.T,
                *err);
    tu_expect_close(out, c.ref, c.nout, UNET_TOL, name);
    dl_arena_free(&s);
    case_free(&c);
    dl_st_close(&g);
    return out;
}

static void expect_all_unet_tensors_used(const model *m, const char *label)
{
    int nu = 0;
    char **unused = dl_ckpt_unused(&m->ck, DL_PART_UNET, &nu);
    cr_expect_eq(nu, 0, "%s: %d UNet tensors never read (first: %s)", label, nu, nu ? unused[0] : "");
    dl_ckpt_free_names(unused, nu);
}

/* ================================================================ config */

/* stabilityai/stable-diffusion-xl-base-1.0 unet/config.json */
static const char k_sdxl_config[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.19.0.dev0\", \"act_fn\": \"silu\","
    " \"addition_embed_type\": \"text_time\", \"addition_embed_type_num_heads\": 64, \"addition_time_embed_dim\": 256,"
    " \"attention_head_dim\": [5, 10, 20], \"block_out_channels\": [320, 640, 1280], \"center_input_sample\": false,"
    " \"class_embed_type\": null, \"class_embeddings_concat\": false, \"conv_in_kernel\": 3, \"conv_out_kernel\": 3,"
    " \"cross_attention_dim\": 2048, \"cross_attention_norm\": null,"
    " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"downsample_padding\": 1, \"dual_cross_attention\": false, \"encoder_hid_dim\": null,"
    " \"encoder_hid_dim_type\": null, \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4,"
    " \"layers_per_block\": 2, \"mid_block_only_cross_attention\": null, \"mid_block_scale_factor\": 1,"
    " \"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"norm_eps\": 1e-05, \"norm_num_groups\": 32,"
    " \"num_attention_heads\": null, \"num_class_embeds\": null, \"only_cross_attention\": false,"
    " \"out_channels\": 4, \"projection_class_embeddings_input_dim\": 2816, \"resnet_out_scale_factor\": 1.0,"
    " \"resnet_skip_time_act\": false, \"resnet_time_scale_shift\": \"default\", \"sample_size\": 128,"
    " \"time_cond_proj_dim\": null, \"time_embedding_act_fn\": null, \"time_embedding_dim\": null,"
    " \"time_embedding_type\": \"positional\", \"timestep_post_act\": null,"
    " \"transformer_layers_per_block\": [1, 2, 10],"
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],"
    " \"upcast_attention\": null, \"use_linear_projection\": true}";

Test(sdxl_unet, sdxl_base_config_parses_to_the_preset)
{
    dl_unet_config u;
    cr_assert_eq(dl_unet_config_parse(&u, k_sdxl_config, "sdxl/unet/config.json"), DL_OK, "%s", dl_error_msg());
    dl_model_config p;
    cr_assert_eq(dl_model_config_preset(&p, "sdxl"), DL_OK);
    const char *d = dl_unet_config_diff(&u, &p.unet);
    cr_expect_null(d, "SDXL base config differs from the sdxl preset in %s", d);
    cr_expect_eq(u.addition_embed, DL_ADD_TEXT_TIME);
    cr_expect_eq(u.addition_time_ids, 6);
    cr_expect_eq(dl_unet_text_embeds_dim(&u), 1280);
    cr_expect_eq(u.time_embed_dim, 1280);
    cr_expect(u.num_heads[0] == 5 && u.num_heads[1] == 10 && u.num_heads[2] == 20);
    cr_expect(u.transformer_layers[0] == 1 && u.transformer_layers[1] == 2 && u.transformer_layers[2] == 10);
    cr_expect(!u.down_cross_attn[0] && u.down_cross_attn[1] && u.down_cross_attn[2]);
    cr_expect(u.up_cross_attn[0] && u.up_cross_attn[1] && !u.up_cross_attn[2]);
    /* a level without attention may say 0 heads / 0 layers; a level with attention may not */
    u.num_heads[0] = 0, u.transformer_layers[0] = 0;
    cr_expect_eq(dl_unet_config_validate(&u, "x"), DL_OK, "%s", dl_error_msg());
    u.transformer_layers[1] = 0;
    cr_expect_eq(dl_unet_config_validate(&u, "x"), DL_ERR);
    /* the added conditioning's sizes are checked */
    dl_unet_config v = p.unet;
    v.projection_class_embeddings_input_dim = 6 * 256;
    cr_expect_eq(dl_unet_config_validate(&v, "x.json"), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "projection_class_embeddings_input_dim"), "%s", dl_error_msg());
    v = p.unet;
    v.addition_time_embed_dim = 255;
    cr_expect_eq(dl_unet_config_validate(&v, "x.json"), DL_ERR);
    /* round trip through config.json */
    char *j = dl_unet_config_to_json(&p.unet);
    dl_unet_config back;
    cr_assert_eq(dl_unet_config_parse(&back, j, "written"), DL_OK, "%s", dl_error_msg());
    free(j);
    cr_expect_null(d = dl_unet_config_diff(&back, &p.unet), "round trip: %s", d);
}

Test(sdxl_unet, folder_config_and_node_list)
{
    model m;
    model_open(&m, FOLDER, &k_xl);
    const dl_unet_config *c = &m.u.cfg;
    cr_expect_eq(c->addition_embed, DL_ADD_TEXT_TIME);
    cr_expect_eq(c->addition_time_embed_dim, 8);
    cr_expect_eq(c->projection_class_embeddings_input_dim, 68);
    cr_expect_eq(dl_unet_text_embeds_dim(c), 20);
    /* the added embedding is a side node right after the time embedding */
    const dl_graph *g = &m.u.graph;
    cr_assert_eq(g->node[1].kind, DL_NODE_TIME_EMBED);
    cr_assert_eq(g->node[2].kind, DL_NODE_ADD_EMBED);
    cr_expect(g->node[2].side && g->node[2].cin == 68 && g->node[2].cout == 32);
    cr_expect_str_eq(g->node[2].name, "add_embedding.");
    int transformers = 0, tblocks = 0;
    for (int i = 0; i < g->n; i++) {
        const dl_node *nd = &g->node[i];
        if (nd->kind != DL_NODE_TRANSFORMER) continue;
        transformers++, tblocks += nd->layers;
        cr_expect(strncmp(nd->name, "down_blocks.0.", 14) && strncmp(nd->name, "up_blocks.2.", 12),
                  "attention on the first level: %s", nd->name);
        const int deep = !strncmp(nd->name, "down_blocks.2.", 14) || !strncmp(nd->name, "mid_block.", 10) ||
                         !strncmp(nd->name, "up_blocks.0.", 12);
        cr_expect_eq(nd->layers, deep ? 2 : 1, "%s: %d transformer blocks", nd->name, nd->layers);
        cr_expect_eq(nd->heads, deep ? 4 : 2, "%s: %d heads", nd->name, nd->heads);
    }
    cr_expect_eq(transformers, 2 + 2 + 1 + 3 + 3);
    cr_expect_eq(tblocks, 2 + 4 + 2 + 6 + 3);
    /* the added embedding's linears are modules by diffusers name */
    const dl_unet_module *a1 = dl_unet_find(&m.u, "add_embedding.linear_1");
    cr_assert_not_null(a1);
    cr_expect(a1->kind == DL_MODULE_LINEAR && a1->linear == &m.u.add_linear_1 && a1->linear->in == 68 &&
              a1->linear->out == 32);
    cr_expect_not_null(dl_unet_find(&m.u, "add_embedding.linear_2"));
    model_close(&m);
}

/* ================================================================ forward parity */

Test(sdxl_unet, folder_matches_diffusers)
{
    model m;
    model_open(&m, FOLDER, &k_xl);
    double e;
    free(forward_cpu(&m, "xl_0", &e));
    free(forward_cpu(&m, "xl_1", &e));
    expect_all_unet_tensors_used(&m, FOLDER);
    model_close(&m);
}

Test(sdxl_unet, single_file_gives_the_folders_outputs)
{
    const dl_ckpt_options so = single_opts();
    model a, b;
    model_open(&a, FOLDER, &k_xl);
    model_open(&b, SINGLE, &so);
    cr_expect_eq(b.ck.layout, DL_LAYOUT_SINGLE);
    cr_expect_eq(b.ck.text_layout, DL_TEXT_SDXL);
    const char *d = dl_unet_config_diff(&a.u.cfg, &b.u.cfg);
    cr_expect_null(d, "configs differ in %s", d);
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "xl_1" : "xl_0";
        double ea, eb;
        float *oa = forward_cpu(&a, name, &ea), *ob = forward_cpu(&b, name, &eb);
        dl_st_file g;
        tu_golden_open(&g, "sdxl_unet");
        int64_t n = 0;
        float *ref = golden_of(&g, name, "out", &n);
        cr_expect(memcmp(oa, ob, (size_t)n * sizeof(float)) == 0, "%s: folder and single file outputs differ", name);
        free(ref), free(oa), free(ob);
        dl_st_close(&g);
    }
    expect_all_unet_tensors_used(&b, SINGLE);
    model_close(&a);
    model_close(&b);
}

/* ================================================================ recognising SDXL */

Test(sdxl_unet, sdxl_is_recognised_and_refused_where_not_handled)
{
    dl_checkpoint ck;
    /* callers that do not handle SDXL get a message saying what is missing */
    const char *const paths[2] = {FOLDER, SINGLE};
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(dl_ckpt_open(&ck, tu_path(paths[i]), NULL), DL_ERR, "%s opened without allow_sdxl", paths[i]);
        cr_expect(strstr(dl_error_msg(), "SDXL") && strstr(dl_error_msg(), "not supported yet"), "%s",
                  dl_error_msg());
        cr_expect(strstr(dl_error_msg(), paths[i]), "%s", dl_error_msg());
    }
    /* the tiny single file's own config cannot be detected (SDXL's 32 norm groups and head dim 64
     * are assumed): a message naming the file */
    cr_expect_eq(dl_ckpt_open(&ck, tu_path(SINGLE), &k_xl), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "SDXL checkpoint") && strstr(dl_error_msg(), "norm_num_groups 32"), "%s",
              dl_error_msg());
    /* a non-SDXL UNet config given for an SDXL file */
    dl_ckpt_options o = k_xl;
    o.unet_config = tu_path("tests/golden/tiny_unet_sd2x/unet/config.json");
    cr_expect_eq(dl_ckpt_open(&ck, tu_path(SINGLE), &o), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "not an SDXL UNet config"), "%s", dl_error_msg());
    /* SD 1.x stays SD 1.x */
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_sd15.safetensors"), &k_xl), DL_OK, "%s",
                 dl_error_msg());
    cr_expect_eq(ck.sdxl, 0);
    cr_expect_eq(ck.cfg.unet.addition_embed, DL_ADD_NONE);
    dl_ckpt_close(&ck);
}

typedef struct count_state {
    int tensors;
    long long params;
} count_state;

static int count_weight(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    (void)part, (void)name;
    count_state *s = user;
    long long n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    s->tensors++, s->params += n;
    return DL_OK;
}

/* Single-file names of the added embedding and the first text encoder; SDXL's weight count. */
Test(sdxl_unet, single_file_names)
{
    dl_model_config cfg;
    cr_assert_eq(dl_model_config_preset(&cfg, "sdxl"), DL_OK);
    static const struct {
        dl_part p;
        const char *name, *key;
    } cases[] = {
        {DL_PART_UNET, "add_embedding.linear_1.weight", "model.diffusion_model.label_emb.0.0.weight"},
        {DL_PART_UNET, "add_embedding.linear_2.bias", "model.diffusion_model.label_emb.0.2.bias"},
        {DL_PART_UNET, "down_blocks.0.resnets.1.conv2.weight", "model.diffusion_model.input_blocks.2.0.out_layers.3.weight"},
        {DL_PART_UNET, "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight",
         "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight"},
        {DL_PART_UNET, "up_blocks.1.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight"},
        {DL_PART_UNET, "up_blocks.2.resnets.2.conv1.weight", "model.diffusion_model.output_blocks.8.0.in_layers.2.weight"},
        {DL_PART_TEXT, "text_model.encoder.layers.11.mlp.fc2.weight",
         "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dl_ckpt_key k;
        cr_assert_eq(dl_ckpt_map_single(&cfg, DL_TEXT_SDXL, cases[i].p, cases[i].name, &k), DL_OK, "%s",
                     dl_error_msg());
        cr_expect_str_eq(k.key, cases[i].key);
    }
    /* SDXL base: diffusers' UNet2DConditionModel holds 1680 tensors, 2,567,463,684 parameters */
    count_state st = {0, 0};
    cr_assert_eq(dl_model_weights(&cfg, DL_PART_UNET, count_weight, &st), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(st.tensors, 1680);
    cr_expect_eq(st.params, 2567463684LL);
}

/* The first text encoder reads the same from conditioner.embedders.0.transformer.text_model.*
 * as from the folder's text_encoder/ (config detected from the tensors; outputs bit-identical). */
Test(sdxl_unet, first_text_encoder_in_both_layouts)
{
    const dl_ckpt_options so = single_opts();
    dl_checkpoint ck[2];
    cr_assert_eq(dl_ckpt_open(&ck[0], tu_path(FOLDER), &k_xl), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_open(&ck[1], tu_path(SINGLE), &so), DL_OK, "%s", dl_error_msg());
    const char *d = dl_clip_config_diff(&ck[0].cfg.text, &ck[1].cfg.text);
    cr_expect_null(d, "text encoder configs differ in %s", d);
    const int N = 2, T = 7;
    int32_t ids[2 * 7] = {62, 5, 9, 33, 63, 63, 63, 62, 17, 2, 40, 11, 8, 63};
    float *out[2];
    for (int k = 0; k < 2; k++) {
        dl_arena w, s;
        dl_clip m;
        cr_assert_eq(dl_arena_init(&w, "weights", tu_clip_weights_bytes(&ck[k])), DL_OK);
        cr_assert_eq(dl_clip_load(&m, &ck[k], &w), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_arena_init(&s, "scratch", dl_clip_scratch_bytes(&m, N, T)), DL_OK);
        out[k] = tu_alloc_nan((size_t)N * T * m.cfg.hidden_size);
        dl_clip_forward(tu_ctx(), &m, N, T, ids, m.cfg.num_layers, 1, out[k], &s);
        int nu = 0;
        char **unused = dl_ckpt_unused(&ck[k], DL_PART_TEXT, &nu);
        cr_expect_eq(nu, 0, "%d text encoder tensors never read (first: %s)", nu, nu ? unused[0] : "");
        dl_ckpt_free_names(unused, nu);
        dl_clip_free(&m);
        dl_arena_free(&s), dl_arena_free(&w);
    }
    const size_t n = (size_t)N * T * ck[0].cfg.text.hidden_size;
    cr_expect(memcmp(out[0], out[1], n * sizeof(float)) == 0, "folder and single file text encoder outputs differ");
    size_t finite = 0;
    for (size_t i = 0; i < n; i++) finite += isfinite(out[0][i]);
    cr_expect_eq(finite, n, "non-finite text encoder outputs");
    free(out[0]), free(out[1]);
    dl_ckpt_close(&ck[0]), dl_ckpt_close(&ck[1]);
}

/* ================================================================ the CUDA backend (emulated device) */

Test(sdxl_unet, cuda_backend_on_the_emulated_device_matches_diffusers, .timeout = 600)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    const dl_backend *be = dl_backend_find("cuda");
    cr_assert_not_null(be, "%s", dl_error_msg());
    dl_ctx ctx;
    cr_assert_eq(dl_ctx_init_backend(&ctx, 2, be), DL_OK, "%s", dl_error_msg());
    model m;
    model_open_on(&m, FOLDER, &k_xl, &ctx);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_unet");
    xcase c;
    case_load(&c, &g, "xl_1", &m.u.cfg);
    /* inputs uploaded, the output downloaded: every tensor lives in memory that faults on a host
     * dereference */
    const float *hin[5] = {c.x, c.t, c.ctx, c.te, c.tid};
    const size_t nin[5] = {c.nx, (size_t)c.N, c.nctx, c.nte, c.ntid};
    float *din[5];
    for (int i = 0; i < 5; i++) {
        din[i] = dl_be_alloc(&ctx, nin[i] * sizeof(float));
        cr_assert_not_null(din[i], "%s", dl_error_msg());
        cr_assert_eq(dl_be_upload(&ctx, din[i], hin[i], nin[i] * sizeof(float)), DL_OK, "%s", dl_error_msg());
    }
    float *dout = dl_be_alloc(&ctx, c.nout * sizeof(float));
    dl_arena s;
    cr_assert_eq(dl_arena_init_on(&s, "scratch", dl_unet_scratch_bytes(&m.u, c.N, c.H, c.W, c.T), &ctx), DL_OK, "%s",
                 dl_error_msg());
    const dl_unet_added add = {din[3], din[4]};
    dl_unet_forward_added(&ctx, &m.u, c.N, c.H, c.W, din[0], din[1], din[2], c.T, &add, dout, &s);
    cr_assert_eq(dl_be_sync(&ctx), DL_OK, "%s", dl_error_msg());
    float *out = tu_alloc_nan(c.nout);
    cr_assert_eq(dl_be_download(&ctx, out, dout, c.nout * sizeof(float)), DL_OK, "%s", dl_error_msg());
    const double e = tu_rel_l2(out, c.ref, c.nout);
    cr_log_info("sdxl unet xl_1 on cuda (emulated device): rel L2 error %.3g vs diffusers float64", e);
    tu_expect_close(out, c.ref, c.nout, UNET_TOL, "cuda xl_1");
    dl_arena_free(&s);
    for (int i = 0; i < 5; i++) dl_be_free(&ctx, din[i]);
    dl_be_free(&ctx, dout);
    free(out);
    case_free(&c);
    dl_st_close(&g);
    model_close(&m);
    dl_ctx_free(&ctx);
}

/* ================================================================ one LoRA step against PEFT */

typedef struct adapter {
    const char *name;
    dl_lora lora;
    int64_t nA, nB;
    float *refdA, *refdB;
} adapter;

typedef struct rig {
    model m;
    dl_st_file g;
    xcase c;
    float *target, *ref_dctx;
    double ref_loss;
    int n;
    adapter *a;
} rig;

/* The folder's UNet with an adapter on every module the reference adapted (by diffusers name). */
static void rig_open(rig *r)
{
    memset(r, 0, sizeof *r);
    model_open(&r->m, FOLDER, &k_xl);
    tu_golden_open(&r->g, "sdxl_unet_train");
    const char *cs = "xl_train";
    case_load(&r->c, &r->g, cs, &r->m.u.cfg);
    r->target = golden_of(&r->g, cs, "target", NULL);
    r->ref_dctx = golden_of(&r->g, cs, "dctx", NULL);
    float *l = golden_of(&r->g, cs, "loss", NULL);
    r->ref_loss = l[0];
    free(l);
    const int want = (int)tu_golden_int(&r->g, "xl_train.n_lora");
    int nm = 0;
    const dl_unet_module *mods = dl_unet_modules(&r->m.u, &nm);
    r->a = calloc((size_t)nm, sizeof *r->a);
    char key[600];
    for (int i = 0; i < nm; i++) {
        snprintf(key, sizeof key, "%s.%s.A", cs, mods[i].name);
        const dl_st_tensor *tA = dl_st_find(&r->g, key);
        if (!tA) continue;
        adapter *ad = &r->a[r->n++];
        ad->name = mods[i].name;
        snprintf(key, sizeof key, "%s.A", ad->name);
        ad->lora.A = golden_of(&r->g, cs, key, &ad->nA);
        snprintf(key, sizeof key, "%s.B", ad->name);
        ad->lora.B = golden_of(&r->g, cs, key, &ad->nB);
        snprintf(key, sizeof key, "%s.dA", ad->name);
        ad->refdA = golden_of(&r->g, cs, key, NULL);
        snprintf(key, sizeof key, "%s.dB", ad->name);
        ad->refdB = golden_of(&r->g, cs, key, NULL);
        snprintf(key, sizeof key, "%s.scale", ad->name);
        float *sc = golden_of(&r->g, cs, key, NULL);
        ad->lora.scale = sc[0];
        free(sc);
        ad->lora.r = (int)tA->shape[0];
        ad->lora.dA = calloc((size_t)ad->nA, sizeof(float));
        ad->lora.dB = calloc((size_t)ad->nB, sizeof(float));
        if (mods[i].kind == DL_MODULE_LINEAR) {
            cr_assert(ad->nA == (int64_t)ad->lora.r * mods[i].linear->in &&
                      ad->nB == (int64_t)mods[i].linear->out * ad->lora.r, "%s: shapes", ad->name);
            mods[i].linear->lora = &ad->lora;
        } else {
            const dl_conv *cv = mods[i].conv;
            cr_assert(ad->nA == (int64_t)ad->lora.r * cv->k * cv->k * cv->cin && ad->nB == (int64_t)cv->cout * ad->lora.r,
                      "%s: shapes", ad->name);
            mods[i].conv->lora = &ad->lora;
        }
    }
    cr_assert_eq(r->n, want, "attached %d adapters, the reference has %d", r->n, want);
}

static void rig_close(rig *r)
{
    for (int i = 0; i < r->n; i++) {
        adapter *ad = &r->a[i];
        free(ad->lora.A), free(ad->lora.B), free(ad->lora.dA), free(ad->lora.dB), free(ad->refdA), free(ad->refdB);
    }
    free(r->a), free(r->target), free(r->ref_dctx);
    case_free(&r->c);
    dl_st_close(&r->g);
    model_close(&r->m);
}

/* One step with arenas sized by the size table: zeroed grads, tape forward with the added
 * conditioning, MSE, backward. out and dctx are the caller's; returns the loss. */
static double step(rig *r, int checkpoint, float *out, float *dctx)
{
    const dl_ctx *ctx = tu_ctx();
    const xcase *c = &r->c;
    const int64_t D = (int64_t)c->H * c->W * r->m.u.cfg.out_channels;
    for (int i = 0; i < r->n; i++) {
        memset(r->a[i].lora.dA, 0, (size_t)r->a[i].nA * sizeof(float));
        memset(r->a[i].lora.dB, 0, (size_t)r->a[i].nB * sizeof(float));
    }
    const size_t ab = dl_unet_train_act_bytes(&r->m.u, c->N, c->H, c->W, c->T, checkpoint);
    const size_t sb = dl_unet_train_scratch_bytes(&r->m.u, c->N, c->H, c->W, c->T, checkpoint, 1);
    dl_arena act, scratch;
    cr_assert_eq(dl_arena_init(&act, "activations", ab), DL_OK);
    cr_assert_eq(dl_arena_init(&scratch, "scratch", sb), DL_OK);
    dl_unet_tape *tape = malloc(sizeof *tape);
    const dl_unet_added add = {c->te, c->tid};
    dl_unet_train_forward_added(ctx, &r->m.u, tape, c->N, c->H, c->W, c->x, c->t, c->ctx, c->T, &add, out, checkpoint,
                                &act, &scratch);
    cr_expect_eq(act.used, ab, "activations: used %zu, sized %zu", act.used, ab);
    const double loss = dl_cpu_mse_loss_forward(ctx, c->N, D, out, r->target, NULL, NULL);
    float *dout = malloc((size_t)(c->N * D) * sizeof(float));
    dl_cpu_mse_loss_backward(ctx, c->N, D, out, r->target, NULL, 1.0f, dout, NULL);
    dl_unet_backward(ctx, tape, dout, dctx, &scratch);
    cr_expect_eq(scratch.used, 0);
    cr_expect_eq(scratch.peak, sb, "scratch peak %zu, sized %zu", scratch.peak, sb);
    free(dout), free(tape);
    dl_arena_free(&act), dl_arena_free(&scratch);
    return loss;
}

Test(sdxl_unet, lora_step_matches_peft, .timeout = 120)
{
    rig r;
    rig_open(&r);
    const xcase *c = &r.c;
    const size_t nctx = (size_t)c->N * c->T * r.m.u.cfg.cross_attention_dim;
    float *out = tu_alloc_nan(c->nout), *dctx = tu_alloc_nan(nctx);
    const double loss = step(&r, 0, out, dctx);
    tu_expect_close(out, c->ref, c->nout, UNET_TOL, "training forward output");
    /* the training forward is the inference forward, recorded */
    float *inf = tu_alloc_nan(c->nout);
    dl_arena s;
    cr_assert_eq(dl_arena_init(&s, "scratch", dl_unet_scratch_bytes(&r.m.u, c->N, c->H, c->W, c->T)), DL_OK);
    const dl_unet_added add = {c->te, c->tid};
    dl_unet_forward_added(tu_ctx(), &r.m.u, c->N, c->H, c->W, c->x, c->t, c->ctx, c->T, &add, inf, &s);
    dl_arena_free(&s);
    cr_expect(memcmp(inf, out, c->nout * sizeof(float)) == 0, "training forward differs from inference (rel %g)",
              tu_rel_l2(out, inf, c->nout));
    free(inf);
    const double lerr = fabs(loss - r.ref_loss) / fabs(r.ref_loss);
    cr_expect(lerr <= UNET_TOL, "loss %.9g vs PEFT %.9g (rel %.3g)", loss, r.ref_loss, lerr);
    double worst = 0, num = 0, den = 0;
    const char *worst_name = "";
    int convs = 0;
    for (int i = 0; i < r.n; i++) {
        const adapter *ad = &r.a[i];
        convs += dl_unet_find(&r.m.u, ad->name)->kind == DL_MODULE_CONV;
        for (int k = 0; k < 2; k++) {
            const float *got = k ? ad->lora.dB : ad->lora.dA, *ref = k ? ad->refdB : ad->refdA;
            const size_t n = (size_t)(k ? ad->nB : ad->nA);
            char label[600];
            snprintf(label, sizeof label, "%s.%s", ad->name, k ? "dB" : "dA");
            tu_expect_close(got, ref, n, GRAD_TOL, label);
            const double e = tu_rel_l2(got, ref, n);
            if (e > worst) worst = e, worst_name = ad->name;
            for (size_t j = 0; j < n; j++) {
                const double d = (double)got[j] - ref[j];
                num += d * d, den += (double)ref[j] * ref[j];
            }
        }
    }
    tu_expect_close(dctx, r.ref_dctx, nctx, GRAD_TOL, "d context");
    cr_log_info("sdxl lora step: %d PEFT adapters (%d conv), loss rel err %.2g, output %.2g, LoRA grads rel L2 %.2g "
                "overall, worst module %.2g (%s), dctx %.2g",
                r.n, convs, lerr, tu_rel_l2(out, c->ref, c->nout), sqrt(num / den), worst, worst_name,
                tu_rel_l2(dctx, r.ref_dctx, nctx));
    free(out), free(dctx);
    rig_close(&r);
}

Test(sdxl_unet, checkpointing_gives_identical_gradients, .timeout = 120)
{
    rig r;
    rig_open(&r);
    const size_t nctx = (size_t)r.c.N * r.c.T * r.m.u.cfg.cross_attention_dim;
    float *o0 = tu_alloc_nan(r.c.nout), *o1 = tu_alloc_nan(r.c.nout), *d0 = tu_alloc_nan(nctx),
          *d1 = tu_alloc_nan(nctx);
    size_t tot = 0;
    for (int i = 0; i < r.n; i++) tot += (size_t)(r.a[i].nA + r.a[i].nB);
    float *g[2] = {malloc(tot * sizeof(float)), malloc(tot * sizeof(float))};
    double l[2];
    for (int ckp = 0; ckp < 2; ckp++) {
        l[ckp] = step(&r, ckp, ckp ? o1 : o0, ckp ? d1 : d0);
        float *p = g[ckp];
        for (int i = 0; i < r.n; i++) {
            memcpy(p, r.a[i].lora.dA, (size_t)r.a[i].nA * sizeof(float)), p += r.a[i].nA;
            memcpy(p, r.a[i].lora.dB, (size_t)r.a[i].nB * sizeof(float)), p += r.a[i].nB;
        }
    }
    cr_expect(l[0] == l[1], "loss %.9g with checkpointing, %.9g without", l[1], l[0]);
    cr_expect(memcmp(o0, o1, r.c.nout * sizeof(float)) == 0, "outputs differ");
    cr_expect(memcmp(g[0], g[1], tot * sizeof(float)) == 0, "LoRA gradients differ with checkpointing");
    cr_expect(memcmp(d0, d1, nctx * sizeof(float)) == 0, "d context differs with checkpointing");
    free(o0), free(o1), free(d0), free(d1), free(g[0]), free(g[1]);
    rig_close(&r);
}

/* Central differences of the fp32 loss (MSE against the reference target, in double) w.r.t. the
 * 3 entries of largest gradient in A and in B of adapters on the paths SDXL adds or changes: a
 * cross-attention to_k (the 192-wide context of both text encoders), two resnets' conv1 (their
 * output gets the time embedding with the added embedding of the pooled text and the time ids)
 * and the linear proj_in; the reference's adapters are those of sdxl_unet_train. Step 1e-2 as unet_train's finite-difference test, for the same reasons: fp32
 * loss noise of ~1e-7 relative and O(h^2) truncation keep the quotient within ~1e-5 of the true
 * gradient, against entries of 1e-3 and above, so 2e-2 relative L2 is a real check (measured:
 * 3e-4 to 3.6e-3 on the AVX-512, AVX2 and generic paths). */
static double xl_loss_now(rig *r, float *out, dl_arena *s)
{
    const xcase *c = &r->c;
    const dl_unet_added add = {c->te, c->tid};
    dl_unet_forward_added(tu_ctx(), &r->m.u, c->N, c->H, c->W, c->x, c->t, c->ctx, c->T, &add, out, s);
    const int64_t D = (int64_t)c->H * c->W * r->m.u.cfg.out_channels;
    return dl_cpu_mse_loss_forward(tu_ctx(), c->N, D, out, r->target, NULL, NULL);
}

Test(sdxl_unet, lora_finite_differences_agree, .timeout = 120)
{
    rig r;
    rig_open(&r);
    const xcase *c = &r.c;
    float *out = tu_alloc_nan(c->nout);
    step(&r, 0, out, NULL);
    dl_arena s;
    cr_assert_eq(dl_arena_init(&s, "scratch", dl_unet_scratch_bytes(&r.m.u, c->N, c->H, c->W, c->T)), DL_OK);
    const char *names[] = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                           "down_blocks.0.resnets.1.conv1", "up_blocks.2.resnets.0.conv1",
                           "mid_block.attentions.0.proj_in"};
    const double h = 1e-2;
    int checked = 0;
    for (size_t m = 0; m < sizeof names / sizeof *names; m++) {
        adapter *ad = NULL;
        for (int i = 0; i < r.n; i++)
            if (!strcmp(r.a[i].name, names[m])) ad = &r.a[i];
        if (!ad) { cr_log_warn("%s has no adapter in the reference", names[m]); continue; }
        for (int k = 0; k < 2; k++) {
            float *p = k ? ad->lora.B : ad->lora.A, *g = k ? ad->lora.dB : ad->lora.dA;
            const int64_t n = k ? ad->nB : ad->nA;
            enum { K = 3 };
            int64_t idx[K];
            float got[K];
            double fd[K];
            for (int q = 0; q < K; q++) { /* the K largest |g|, distinct */
                int64_t best = -1;
                for (int64_t j = 0; j < n; j++) {
                    int used = 0;
                    for (int e = 0; e < q; e++) used |= idx[e] == j;
                    if (!used && (best < 0 || fabsf(g[j]) > fabsf(g[best]))) best = j;
                }
                idx[q] = best;
                got[q] = g[best];
                const float keep = p[best];
                p[best] = (float)(keep + h);
                const double xp = p[best], lp = xl_loss_now(&r, out, &s);
                p[best] = (float)(keep - h);
                const double xm = p[best], lm = xl_loss_now(&r, out, &s);
                p[best] = keep;
                fd[q] = (lp - lm) / (xp - xm);
            }
            char label[600];
            snprintf(label, sizeof label, "finite differences %s.%s", names[m], k ? "B" : "A");
            tu_expect_close_d(got, fd, K, 2e-2, label);
            double num = 0, den = 0;
            for (int q = 0; q < K; q++) num += (got[q] - fd[q]) * (got[q] - fd[q]), den += fd[q] * fd[q];
            cr_log_info("sdxl FD %s.%s: rel L2 %.2g (largest |grad| %.3g)", names[m], k ? "B" : "A", sqrt(num / den),
                        fabs(got[0]));
            checked++;
        }
    }
    cr_expect_eq(checked, 8, "only %d adapter tensors checked", checked);
    dl_arena_free(&s);
    free(out);
    rig_close(&r);
}

/* ================================================================ danlu-mkcheckpoint's SDXL presets */

/* The built tool beside the test binary (build/tools/), or NULL. */
static const char *mkcheckpoint_tool(void)
{
    static char tool[4200];
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert_gt(len, 0);
    exe[len] = 0;
    *strrchr(exe, '/') = 0;
    snprintf(tool, sizeof tool, "%s/../tools/danlu-mkcheckpoint", exe);
    return access(tool, X_OK) == 0 ? tool : NULL;
}

/* tiny-sdxl written by the tool in both layouts is recognised as SDXL, detected back as the
 * preset (a single file: the sample sizes are not in the weights), every tensor is used, and the
 * UNet runs with its added conditioning. */
Test(sdxl_unet, mkcheckpoint_tiny_sdxl_round_trips, .timeout = 120)
{
    const char *tool = mkcheckpoint_tool();
    if (!tool) cr_skip_test("danlu-mkcheckpoint not built");
    dl_model_config want;
    cr_assert_eq(dl_model_config_preset(&want, "tiny-sdxl"), DL_OK);
    static const char *const layouts[2] = {"single", "diffusers"};
    for (int l = 0; l < 2; l++) {
        char out[256], cmd[9000];
        snprintf(out, sizeof out, "/tmp/danlu_test_mkxl_%d_%s", (int)getpid(), layouts[l]);
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' -o '%s' --preset tiny-sdxl --layout %s --dtype fp32 > /dev/null",
                 out, tool, out, layouts[l]);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
        model m;
        cr_assert_eq(dl_ckpt_open(&m.ck, out, &k_xl), DL_OK, "%s: %s", layouts[l], dl_error_msg());
        cr_expect_eq(m.ck.sdxl, 1);
        if (l == 0) {
            cr_expect_eq(m.ck.text_layout, DL_TEXT_SDXL);
            m.ck.cfg.unet.sample_size = want.unet.sample_size;
            m.ck.cfg.vae.sample_size = want.vae.sample_size;
        }
        const char *d;
        cr_expect_null(d = dl_unet_config_diff(&m.ck.cfg.unet, &want.unet), "%s unet: %s", layouts[l], d);
        cr_expect_null(d = dl_vae_config_diff(&m.ck.cfg.vae, &want.vae), "%s vae: %s", layouts[l], d);
        cr_expect_null(d = dl_clip_config_diff(&m.ck.cfg.text, &want.text), "%s text: %s", layouts[l], d);
        size_t bytes;
        cr_assert_eq(dl_unet_weights_bytes(&m.ck, &bytes), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_arena_init(&m.w, "weights", bytes), DL_OK);
        cr_assert_eq(dl_unet_load(&m.u, &m.ck, &m.w), DL_OK, "%s", dl_error_msg());
        expect_all_unet_tensors_used(&m, layouts[l]);
        /* a forward with random inputs: finite, and the added conditioning changes it */
        const dl_unet_config *c = &m.u.cfg;
        const int N = 2, H = 8, W = 8, T = 3, Dt = dl_unet_text_embeds_dim(c), K = c->addition_time_ids;
        const size_t nx = (size_t)N * H * W * 4, nctx = (size_t)N * T * c->cross_attention_dim;
        float *x = malloc(nx * sizeof(float)), *ctx = malloc(nctx * sizeof(float)), t[2] = {10, 900};
        float *te = malloc((size_t)N * Dt * sizeof(float)), tid[2 * 6] = {1024, 1024, 0, 0, 1024, 1024,
                                                                          768, 1344, 64, 0, 1024, 1024};
        cr_assert_eq(K, 6);
        tu_fill_uniform(x, nx, 1, -1, 1), tu_fill_uniform(ctx, nctx, 2, -1, 1);
        tu_fill_uniform(te, (size_t)N * Dt, 3, -1, 1);
        float *o1 = tu_alloc_nan(nx), *o2 = tu_alloc_nan(nx);
        dl_arena s;
        cr_assert_eq(dl_arena_init(&s, "scratch", dl_unet_scratch_bytes(&m.u, N, H, W, T)), DL_OK);
        dl_unet_added add = {te, tid};
        dl_unet_forward_added(tu_ctx(), &m.u, N, H, W, x, t, ctx, T, &add, o1, &s);
        tid[1] = 512; /* the first sample's original width */
        dl_unet_forward_added(tu_ctx(), &m.u, N, H, W, x, t, ctx, T, &add, o2, &s);
        size_t finite = 0;
        for (size_t i = 0; i < nx; i++) finite += isfinite(o1[i]) && isfinite(o2[i]);
        cr_expect_eq(finite, nx, "%s: non-finite outputs", layouts[l]);
        cr_expect(memcmp(o1, o2, nx / 2 * sizeof(float)) != 0, "%s: time_ids do not reach the output", layouts[l]);
        cr_expect(memcmp(o1 + nx / 2, o2 + nx / 2, nx / 2 * sizeof(float)) == 0,
                  "%s: one sample's time_ids changed another's output", layouts[l]);
        dl_arena_free(&s);
        free(x), free(ctx), free(te), free(o1), free(o2);
        model_close(&m);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
        cr_expect_eq(system(cmd), 0);
    }
}
