/* test_unet.c - the UNet forward against diffusers (float64 reference) on tiny random models,
 * both checkpoint layouts, module lookup by name, scratch sizing, errors naming the tensor.
 * Golden data: tests/golden/unet.safetensors and the tiny models tests/golden/tiny_sd15/ (+ its
 * single file tiny_sd15.safetensors), tiny_unet_sd1x/, tiny_unet_sd2x/, from
 * tests/gen/gen_unet.py (diffusers UNet2DConditionModel in float64). */
#include "testutil.h"
#include "core/arena.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/unet.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* fp32 forward vs the float64 reference: the figure reached on these cases is ~1e-6 or below
 * (printed per case); the tolerance is the project's fp32 bound. */
#define UNET_TOL 1e-5

typedef struct model {
    dl_checkpoint ck;
    dl_unet u;
    dl_arena w;
} model;

static void model_open(model *m, const char *rel)
{
    int r = dl_ckpt_open(&m->ck, tu_path(rel), NULL);
    cr_assert_eq(r, DL_OK, "open %s: %s", rel, dl_error_msg());
    size_t bytes = tu_unet_weights_bytes(&m->ck);
    cr_assert_eq(dl_arena_init(&m->w, "weights", bytes), DL_OK);
    r = dl_unet_load(&m->u, &m->ck, &m->w);
    cr_assert_eq(r, DL_OK, "load %s: %s", rel, dl_error_msg());
    cr_expect_eq(m->w.used, bytes, "%s: weights took %zu bytes, dl_unet_weights_bytes measured %zu", rel, m->w.used,
                 bytes);
}

static void model_close(model *m)
{
    dl_unet_free(&m->u);
    dl_arena_free(&m->w);
    dl_ckpt_close(&m->ck);
}

/* Run golden case `name` on m with a scratch arena sized exactly by dl_unet_scratch_bytes
 * (running out would abort the test); returns the malloc'd output [N, H, W, out_ch], *ref the
 * malloc'd reference, *n their length. */
static float *forward_case(model *m, const char *name, float **ref, size_t *n)
{
    dl_st_file g;
    tu_golden_open(&g, "unet");
    char key[128];
    snprintf(key, sizeof key, "%s.x", name);
    const dl_st_tensor *tx = dl_st_find(&g, key);
    cr_assert_not_null(tx, "%s missing", key);
    snprintf(key, sizeof key, "%s.ctx", name);
    const dl_st_tensor *tc = dl_st_find(&g, key);
    cr_assert_not_null(tc, "%s missing", key);
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], T = (int)tc->shape[1];
    const dl_unet_config *c = &m->u.cfg;
    cr_assert_eq(tx->shape[3], c->in_channels);
    cr_assert_eq(tc->shape[2], c->cross_attention_dim);
    snprintf(key, sizeof key, "%s.x", name);
    float *x = tu_golden_f32(&g, key, NULL);
    snprintf(key, sizeof key, "%s.t", name);
    int64_t nt = 0;
    float *t = tu_golden_f32(&g, key, &nt);
    cr_assert_eq(nt, N);
    snprintf(key, sizeof key, "%s.ctx", name);
    float *ctx = tu_golden_f32(&g, key, NULL);
    snprintf(key, sizeof key, "%s.out", name);
    int64_t oshape[4] = {N, H, W, c->out_channels};
    *ref = tu_golden_f32_shape(&g, key, 4, oshape);

    *n = (size_t)N * H * W * c->out_channels;
    float *out = tu_alloc_nan(*n);
    dl_arena s;
    size_t need = dl_unet_scratch_bytes(&m->u, N, H, W, T);
    cr_assert_eq(dl_arena_init(&s, "scratch", need), DL_OK);
    dl_unet_forward(tu_ctx(), &m->u, N, H, W, x, t, ctx, T, out, &s);
    cr_expect_eq(s.used, 0, "%s: scratch not released (%zu bytes held)", name, s.used);
    cr_log_info("unet %s (N=%d %dx%d T=%d): scratch %zu bytes (peak %zu)", name, N, H, W, T, need, s.peak);
    dl_arena_free(&s);
    free(x);
    free(t);
    free(ctx);
    dl_st_close(&g);
    return out;
}

/* forward_case checked against the reference; *err gets the relative L2 error. */
static float *run_case(model *m, const char *name, double *err)
{
    float *ref;
    size_t n;
    float *out = forward_case(m, name, &ref, &n);
    *err = tu_rel_l2(out, ref, n);
    cr_log_info("unet %s: rel L2 error %.3g vs diffusers float64", name, *err);
    tu_expect_close(out, ref, n, UNET_TOL, name);
    free(ref);
    return out;
}

static void check_model(const char *rel, const char *case0, const char *case1)
{
    model m;
    model_open(&m, rel);
    double e;
    free(run_case(&m, case0, &e));
    free(run_case(&m, case1, &e));
    /* every UNet tensor of the file was used */
    int nu = 0;
    char **unused = dl_ckpt_unused(&m.ck, DL_PART_UNET, &nu);
    cr_expect_eq(nu, 0, "%s: %d UNet tensors never read (first: %s)", rel, nu, nu ? unused[0] : "");
    dl_ckpt_free_names(unused, nu);
    model_close(&m);
}

Test(unet, sd15_folder_matches_diffusers) { check_model("tests/golden/tiny_sd15", "sd15_0", "sd15_1"); }

Test(unet, sd1x_odd_widths_two_layers_matches_diffusers)
{
    check_model("tests/golden/tiny_unet_sd1x", "sd1x_0", "sd1x_1");
}

Test(unet, sd2x_linear_proj_three_blocks_matches_diffusers)
{
    check_model("tests/golden/tiny_unet_sd2x", "sd2x_0", "sd2x_1");
}

Test(unet, both_layouts_give_identical_outputs)
{
    model a, b;
    model_open(&a, "tests/golden/tiny_sd15");
    model_open(&b, "tests/golden/tiny_sd15.safetensors");
    const char *d = dl_unet_config_diff(&a.u.cfg, &b.u.cfg);
    cr_expect(d == NULL || !strcmp(d, "sample_size"), "configs differ in %s", d);
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "sd15_1" : "sd15_0";
        double ea, eb;
        float *oa = run_case(&a, name, &ea), *ob = run_case(&b, name, &eb);
        dl_st_file g;
        tu_golden_open(&g, "unet");
        char key[64];
        snprintf(key, sizeof key, "%s.out", name);
        int64_t n = 0;
        float *ref = tu_golden_f32(&g, key, &n);
        cr_expect(memcmp(oa, ob, (size_t)n * sizeof(float)) == 0, "%s: folder and single file outputs differ", name);
        free(ref);
        dl_st_close(&g);
        free(oa);
        free(ob);
    }
    int nu = 0;
    char **unused = dl_ckpt_unused(&b.ck, DL_PART_UNET, &nu);
    cr_expect_eq(nu, 0, "single file: %d UNet tensors never read (first: %s)", nu, nu ? unused[0] : "");
    dl_ckpt_free_names(unused, nu);
    model_close(&a);
    model_close(&b);
}

typedef struct count_state {
    const dl_unet *u;
    int weights, missing;
} count_state;

/* Every 2-d/4-d ".weight" of the architecture is a registered linear/conv module. */
static int count_module(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    count_state *s = user;
    size_t L = strlen(name);
    if (ndim < 2 || L < 7 || strcmp(name + L - 7, ".weight")) return DL_OK;
    char base[256];
    snprintf(base, sizeof base, "%.*s", (int)(L - 7), name);
    s->weights++;
    const dl_unet_module *m = dl_unet_find(s->u, base);
    if (!m) {
        s->missing++;
        cr_log_error("no module %s", base);
        return DL_OK;
    }
    if (m->kind == DL_MODULE_LINEAR) {
        cr_expect(ndim == 2 || (ndim == 4 && m->conv1x1_on_disk), "%s: kind", base);
        cr_expect(m->linear->out == shape[0] && m->linear->in == shape[1], "%s: shape", base);
    } else {
        cr_expect_eq(ndim, 4, "%s: kind", base);
        cr_expect(m->conv->cout == shape[0] && m->conv->cin == shape[1] && m->conv->k == shape[2], "%s: shape", base);
    }
    return DL_OK;
}

static void check_modules(const char *rel, int conv1x1)
{
    model m;
    model_open(&m, rel);
    count_state s = {&m.u, 0, 0};
    dl_model_config mc = m.ck.cfg;
    cr_assert_eq(dl_model_weights(&mc, DL_PART_UNET, count_module, &s), DL_OK);
    int n = 0;
    const dl_unet_module *mods = dl_unet_modules(&m.u, &n);
    cr_expect_eq(s.missing, 0);
    cr_expect_eq(n, s.weights, "%s: %d modules for %d linear/conv weights", rel, n, s.weights);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) cr_expect(strcmp(mods[i].name, mods[j].name), "duplicate %s", mods[i].name);
    const dl_unet_module *q = dl_unet_find(&m.u, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    cr_assert_not_null(q);
    cr_expect_eq(q->kind, DL_MODULE_LINEAR);
    cr_expect_eq(q->linear, &m.u.down[0].attentions[0].blocks[0].attn1.to_q);
    const dl_unet_module *p = dl_unet_find(&m.u, "mid_block.attentions.0.proj_in");
    cr_assert_not_null(p);
    cr_expect_eq(p->conv1x1_on_disk, conv1x1);
    const dl_unet_module *cv = dl_unet_find(&m.u, "up_blocks.0.resnets.0.conv1");
    cr_assert_not_null(cv);
    cr_expect_eq(cv->kind, DL_MODULE_CONV);
    cr_expect_eq(cv->conv, &m.u.up[0].resnets[0].conv1);
    cr_expect_null(dl_unet_find(&m.u, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"));
    cr_expect_null(dl_unet_find(&m.u, "mid_block.attentions.0.norm")); /* norms carry no LoRA */
    model_close(&m);
}

Test(unet, modules_listed_and_found_by_diffusers_name)
{
    check_modules("tests/golden/tiny_sd15", 1);
    check_modules("tests/golden/tiny_unet_sd2x", 0);
}

/* A copy of the single file at path with tensor `drop` left out, or with tensor `reshape`
 * given a shorter first dimension (one row less). */
static void write_variant(const char *out, const char *drop, const char *reshape)
{
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, tu_path("tests/golden/tiny_sd15.safetensors")), DL_OK, "%s", dl_error_msg());
    dl_st_entry *e = calloc((size_t)f.n_tensors, sizeof *e);
    int n = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const dl_st_tensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        e[n].name = t->name;
        e[n].dtype = t->dtype;
        e[n].ndim = t->ndim;
        memcpy(e[n].shape, t->shape, sizeof t->shape);
        e[n].data = t->data;
        if (reshape && !strcmp(t->name, reshape)) e[n].shape[0]--;
        n++;
    }
    cr_assert_eq(n, f.n_tensors - (drop ? 1 : 0), "%s not in the file", drop);
    cr_assert_eq(dl_st_save(out, e, n, NULL, 0), DL_OK, "%s", dl_error_msg());
    free(e);
    dl_st_close(&f);
}

static void expect_load_error(const char *path, const char *needle1, const char *needle2)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, path, NULL), DL_OK, "%s", dl_error_msg());
    /* measuring the weights runs the loader's checks: the same error, before any allocation */
    size_t bytes = 0;
    dl_error_clear();
    cr_expect_eq(dl_unet_weights_bytes(&ck, &bytes), DL_ERR);
    const char *msg = dl_error_msg();
    cr_expect(strstr(msg, needle1) != NULL, "measuring: message \"%s\" lacks \"%s\"", msg, needle1);
    cr_expect(strstr(msg, needle2) != NULL, "measuring: message \"%s\" lacks \"%s\"", msg, needle2);
    dl_arena w;
    cr_assert_eq(dl_arena_init(&w, "weights", (size_t)64 << 20), DL_OK);
    dl_unet u;
    dl_error_clear();
    cr_expect_eq(dl_unet_load(&u, &ck, &w), DL_ERR);
    msg = dl_error_msg();
    cr_expect(strstr(msg, needle1) != NULL, "message \"%s\" lacks \"%s\"", msg, needle1);
    cr_expect(strstr(msg, needle2) != NULL, "message \"%s\" lacks \"%s\"", msg, needle2);
    cr_expect_eq(u.n_modules, 0); /* nothing left to free */
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

Test(unet, missing_or_misshaped_tensor_is_named)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_unet_%d.safetensors", (int)getpid());
    /* up_blocks.1.attentions.0 (SD1 tiny: 2 blocks, 1 layer) is output_blocks.2.1 in the file */
    write_variant(path, "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.ff.net.2.weight", NULL);
    expect_load_error(path, "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight", "not found");
    write_variant(path, NULL, "model.diffusion_model.time_embed.2.bias");
    expect_load_error(path, "time_embedding.linear_2.bias", "[127]");
    unlink(path);

    /* a config that asks for tensors the folder does not have / of other shapes */
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_sd15"), NULL), DL_OK, "%s", dl_error_msg());
    dl_arena w;
    dl_unet u;
    const size_t full = tu_unet_weights_bytes(&ck);
    size_t bytes = 0;
    ck.cfg.unet.down_cross_attn[1] = 1;
    cr_expect_eq(dl_unet_weights_bytes(&ck, &bytes), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "down_blocks.1.attentions.0.norm.weight") != NULL, "%s", dl_error_msg());
    cr_assert_eq(dl_arena_init(&w, "weights", 2 * full), DL_OK);
    cr_expect_eq(dl_unet_load(&u, &ck, &w), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "down_blocks.1.attentions.0.norm.weight") != NULL, "%s", dl_error_msg());
    dl_arena_free(&w);
    ck.cfg.unet.down_cross_attn[1] = 0;
    ck.cfg.unet.cross_attention_dim = 48;
    cr_expect_eq(dl_unet_weights_bytes(&ck, &bytes), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "attn2.to_k.weight") != NULL, "%s", dl_error_msg());
    cr_assert_eq(dl_arena_init(&w, "weights", 2 * full), DL_OK);
    cr_expect_eq(dl_unet_load(&u, &ck, &w), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight") != NULL,
              "%s", dl_error_msg());
    cr_expect(strstr(dl_error_msg(), "48") != NULL && strstr(dl_error_msg(), "64") != NULL, "%s", dl_error_msg());
    dl_arena_free(&w);
    /* a weights arena too small is an error naming the arena, not a crash */
    ck.cfg.unet.cross_attention_dim = 64;
    cr_assert_eq(dl_arena_init(&w, "weights", full / 2), DL_OK);
    cr_expect_eq(dl_unet_load(&u, &ck, &w), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "weights arena is full") != NULL, "%s", dl_error_msg());
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

/* A LoRA on a module gives the same output as its product merged into the weight: the hook
 * reaches every kind of layer through the name table, and the scratch size covers its rank. */
static void attach(const dl_unet *u, const char *name, dl_lora *l, int r, float scale, uint64_t seed)
{
    const dl_unet_module *m = dl_unet_find(u, name);
    cr_assert_not_null(m, "%s", name);
    int K = m->kind == DL_MODULE_LINEAR ? m->linear->in : m->conv->k * m->conv->k * m->conv->cin;
    int O = m->kind == DL_MODULE_LINEAR ? m->linear->out : m->conv->cout;
    l->r = r;
    l->scale = scale;
    l->merged = 0;
    l->A = malloc((size_t)r * K * sizeof(float));
    l->B = malloc((size_t)O * r * sizeof(float));
    tu_fill_uniform(l->A, (size_t)r * K, seed, -0.5f, 0.5f);
    tu_fill_uniform(l->B, (size_t)O * r, seed + 1, -0.5f, 0.5f);
    if (m->kind == DL_MODULE_LINEAR) m->linear->lora = l;
    else m->conv->lora = l;
}

/* w [O, K] += scale * B [O, r] · A [r, K] (in double), then detach. */
static void merge(const dl_unet *u, const char *name)
{
    const dl_unet_module *m = dl_unet_find(u, name);
    dl_lora *l = m->kind == DL_MODULE_LINEAR ? m->linear->lora : m->conv->lora;
    int K = m->kind == DL_MODULE_LINEAR ? m->linear->in : m->conv->k * m->conv->k * m->conv->cin;
    int O = m->kind == DL_MODULE_LINEAR ? m->linear->out : m->conv->cout;
    float *w = m->kind == DL_MODULE_LINEAR ? m->linear->w : m->conv->w;
    for (int o = 0; o < O; o++)
        for (int k = 0; k < K; k++) {
            double acc = 0;
            for (int j = 0; j < l->r; j++) acc += (double)l->B[o * l->r + j] * l->A[(size_t)j * K + k];
            w[(size_t)o * K + k] += (float)(l->scale * acc);
        }
    if (m->kind == DL_MODULE_LINEAR) m->linear->lora = NULL;
    else m->conv->lora = NULL;
    free(l->A);
    free(l->B);
}

Test(unet, lora_hook_equals_merged_weights)
{
    static const char *const names[] = {
        "conv_in",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.proj_in",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "up_blocks.1.resnets.0.conv1",
        "up_blocks.1.resnets.0.conv_shortcut",
        "up_blocks.0.upsamplers.0.conv",
    };
    const int n = (int)(sizeof names / sizeof names[0]);
    model m;
    model_open(&m, "tests/golden/tiny_unet_sd2x");
    dl_lora loras[8];
    for (int i = 0; i < n; i++) attach(&m.u, names[i], &loras[i], 2 + i, 0.5f, 100 + 7 * (uint64_t)i);
    float *ref, *ref2;
    size_t len;
    float *with = forward_case(&m, "sd2x_1", &ref, &len);
    double moved = tu_rel_l2(with, ref, len);
    cr_expect_gt(moved, 1e-2, "the LoRAs changed the output by only %.3g", moved);
    for (int i = 0; i < n; i++) merge(&m.u, names[i]);
    float *merged = forward_case(&m, "sd2x_1", &ref2, &len);
    double e = tu_rel_l2(with, merged, len);
    cr_log_info("unet LoRA hook vs merged weights: rel L2 %.3g (LoRA moved the output by %.3g)", e, moved);
    tu_expect_close(with, merged, len, UNET_TOL, "lora vs merged");
    free(with);
    free(merged);
    free(ref);
    free(ref2);
    model_close(&m);
}
