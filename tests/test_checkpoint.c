/* test_checkpoint.c - model loading: configs, both checkpoint layouts, name mapping, errors.
 * Golden data: tests/golden/tiny_sd15/ (diffusers folder) and tests/golden/tiny_sd15.safetensors
 * (the same weights in the original-SD layout), from tests/gen/gen_checkpoint.py, whose mapping
 * was checked against diffusers' own single-file converters. */
#include "testutil.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/config.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void open_ok(dl_checkpoint *ck, const char *rel)
{
    int r = dl_ckpt_open(ck, tu_path(rel), NULL);
    cr_assert_eq(r, DL_OK, "open %s: %s", rel, dl_error_msg());
}

static void expect_msg(const char *what, const char *needle)
{
    cr_expect(strstr(dl_error_msg(), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what, dl_error_msg(), needle);
}

Test(checkpoint, both_layouts_open_with_same_config)
{
    dl_checkpoint a, b;
    open_ok(&a, "tests/golden/tiny_sd15");
    open_ok(&b, "tests/golden/tiny_sd15.safetensors");
    cr_expect_eq(a.layout, DL_LAYOUT_DIFFUSERS);
    cr_expect_eq(b.layout, DL_LAYOUT_SINGLE);
    cr_expect_eq(b.text_layout, DL_TEXT_HF);
    cr_expect_eq(a.sd2, 0);
    cr_expect_eq(b.sd2, 0);
    cr_expect_null(a.tokenizer_dir); /* the tiny folder ships no tokenizer */

    /* config.json parse gives exactly the generator's config (= the "tiny" preset) */
    dl_model_config tiny;
    cr_assert_eq(dl_model_config_preset(&tiny, "tiny"), DL_OK);
    const char *d;
    cr_expect_null(d = dl_unet_config_diff(&a.cfg.unet, &tiny.unet), "unet json vs preset: %s", d);
    cr_expect_null(d = dl_vae_config_diff(&a.cfg.vae, &tiny.vae), "vae json vs preset: %s", d);
    cr_expect_null(d = dl_clip_config_diff(&a.cfg.text, &tiny.text), "text json vs preset: %s", d);
    cr_expect_eq(a.cfg.unet.num_heads[0], 8);
    cr_expect_eq(a.cfg.unet.cross_attention_dim, 64);
    cr_expect_float_eq(a.cfg.vae.scaling_factor, 0.18215f, 1e-9);

    /* detected from the single file's tensors: equal, except sample sizes (not in the weights) */
    dl_model_config det = b.cfg;
    cr_expect_eq(det.unet.sample_size, 64);
    det.unet.sample_size = a.cfg.unet.sample_size;
    det.vae.sample_size = a.cfg.vae.sample_size;
    cr_expect_null(d = dl_unet_config_diff(&det.unet, &a.cfg.unet), "unet detected vs json: %s", d);
    cr_expect_null(d = dl_vae_config_diff(&det.vae, &a.cfg.vae), "vae detected vs json: %s", d);
    cr_expect_null(d = dl_clip_config_diff(&det.text, &a.cfg.text), "text detected vs json: %s", d);
    dl_ckpt_close(&a);
    dl_ckpt_close(&b);
}

typedef struct cmp_state {
    dl_checkpoint *a, *b;
    int count[DL_PART_COUNT];
    double sumsq;
    int failed;
} cmp_state;

/* Read one weight from both layouts and compare bit for bit. */
static int cmp_weight(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    cmp_state *s = user;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *x = tu_alloc_nan((size_t)n), *y = tu_alloc_nan((size_t)n);
    int ra = dl_ckpt_load(s->a, part, name, ndim, shape, x);
    cr_expect_eq(ra, DL_OK, "folder: %s", dl_error_msg());
    int rb = dl_ckpt_load(s->b, part, name, ndim, shape, y);
    cr_expect_eq(rb, DL_OK, "single file: %s", dl_error_msg());
    if (ra == DL_OK && rb == DL_OK) {
        int64_t bad = -1;
        for (int64_t i = 0; i < n; i++) {
            if (!isfinite(x[i]) || memcmp(&x[i], &y[i], 4)) { bad = i; break; }
            s->sumsq += (double)x[i] * x[i];
        }
        cr_expect_eq(bad, -1, "%s %s differs at %lld: %g vs %g", dl_part_name(part), name, (long long)bad,
                     bad >= 0 ? x[bad] : 0.f, bad >= 0 ? y[bad] : 0.f);
        if (bad >= 0) s->failed++;
    } else s->failed++;
    free(x);
    free(y);
    s->count[part]++;
    return DL_OK;
}

Test(checkpoint, every_weight_reads_identically_from_both_layouts)
{
    dl_checkpoint a, b;
    open_ok(&a, "tests/golden/tiny_sd15");
    open_ok(&b, "tests/golden/tiny_sd15.safetensors");
    cmp_state s = {&a, &b, {0}, 0, 0};
    for (int p = 0; p < DL_PART_COUNT; p++) cr_assert_eq(dl_model_weights(&a.cfg, (dl_part)p, cmp_weight, &s), DL_OK);
    cr_expect_eq(s.failed, 0);
    cr_expect_gt(s.sumsq, 1.0, "weights are all zero?");
    /* the enumeration covers every tensor of the folder (208 unet, 120 vae, 36 text) */
    cr_expect_eq(s.count[DL_PART_TEXT2], 0, "an SD 1.x model has no second text encoder");
    for (int p = 0; p < DL_PART_TEXT2; p++)
        cr_expect_eq(s.count[p], a.files[a.part_file[p]].n_tensors, "%s: %d weights enumerated, %d in the file",
                     dl_part_name((dl_part)p), s.count[p], a.files[a.part_file[p]].n_tensors);
    int n;
    char **un = dl_ckpt_unused(&a, DL_PART_COUNT, &n);
    cr_expect_eq(n, 0, "folder: %d unused, first %s", n, n ? un[0] : "");
    dl_ckpt_free_names(un, n);
    /* the single file: only its non-weight extra (alphas_cumprod; position_ids is skipped) */
    un = dl_ckpt_unused(&b, DL_PART_COUNT, &n);
    cr_expect_eq(n, 1, "single file: %d unused, first %s", n, n ? un[0] : "");
    if (n >= 1) cr_expect(strstr(un[0], "alphas_cumprod") != NULL, "%s", un[0]);
    dl_ckpt_free_names(un, n);
    un = dl_ckpt_unused(&b, DL_PART_UNET, &n);
    cr_expect_eq(n, 0);
    dl_ckpt_free_names(un, n);
    dl_ckpt_close(&a);
    dl_ckpt_close(&b);
}

Test(checkpoint, ldm_keys_and_vae_attention_1x1)
{
    dl_checkpoint b;
    open_ok(&b, "tests/golden/tiny_sd15.safetensors");
    dl_ckpt_key k;
    struct { dl_part p; const char *name, *key; } cases[] = {
        {DL_PART_UNET, "down_blocks.0.resnets.0.conv1.weight", "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"},
        {DL_PART_UNET, "down_blocks.0.downsamplers.0.conv.bias", "model.diffusion_model.input_blocks.2.0.op.bias"},
        {DL_PART_UNET, "down_blocks.1.resnets.0.conv_shortcut.weight", "model.diffusion_model.input_blocks.3.0.skip_connection.weight"},
        {DL_PART_UNET, "mid_block.resnets.1.time_emb_proj.weight", "model.diffusion_model.middle_block.2.emb_layers.1.weight"},
        {DL_PART_UNET, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
         "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"},
        {DL_PART_UNET, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.1.1.conv.weight"},
        {DL_PART_UNET, "up_blocks.1.attentions.1.proj_out.weight", "model.diffusion_model.output_blocks.3.1.proj_out.weight"},
        {DL_PART_UNET, "conv_norm_out.bias", "model.diffusion_model.out.0.bias"},
        {DL_PART_VAE, "decoder.up_blocks.0.resnets.1.norm1.weight", "first_stage_model.decoder.up.1.block.1.norm1.weight"},
        {DL_PART_VAE, "encoder.mid_block.attentions.0.to_out.0.weight", "first_stage_model.encoder.mid.attn_1.proj_out.weight"},
        {DL_PART_VAE, "encoder.conv_norm_out.weight", "first_stage_model.encoder.norm_out.weight"},
        {DL_PART_TEXT, "text_model.encoder.layers.1.self_attn.q_proj.weight",
         "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(dl_ckpt_map_single(&b.cfg, DL_TEXT_HF, cases[i].p, cases[i].name, &k), DL_OK, "%s", dl_error_msg());
        cr_expect_str_eq(k.key, cases[i].key, "%s", cases[i].name);
    }
    /* SD2 OpenCLIP: q/k/v are thirds of the fused in_proj */
    cr_assert_eq(dl_ckpt_map_single(&b.cfg, DL_TEXT_OPENCLIP, DL_PART_TEXT,
                                    "text_model.encoder.layers.3.self_attn.v_proj.bias", &k), DL_OK);
    cr_expect_str_eq(k.key, "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_bias");
    cr_expect_eq(k.split, 2);
    cr_assert_eq(dl_ckpt_map_single(&b.cfg, DL_TEXT_OPENCLIP, DL_PART_TEXT,
                                    "text_model.embeddings.position_embedding.weight", &k), DL_OK);
    cr_expect_str_eq(k.key, "cond_stage_model.model.positional_embedding");
    /* old transformers layout: no "text_model." in the file */
    cr_assert_eq(dl_ckpt_map_single(&b.cfg, DL_TEXT_HF_OLD, DL_PART_TEXT, "text_model.encoder.layers.0.mlp.fc1.weight", &k),
                 DL_OK);
    cr_expect_str_eq(k.key, "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight");
    /* names that are not of this architecture */
    cr_expect_neq(dl_ckpt_map_single(&b.cfg, DL_TEXT_HF, DL_PART_UNET, "down_blocks.7.resnets.0.conv1.weight", &k), DL_OK);
    expect_msg("bad name", "down_blocks.7.resnets.0.conv1.weight");
    cr_expect_neq(dl_ckpt_map_single(&b.cfg, DL_TEXT_HF, DL_PART_UNET, "down_blocks.1.attentions.0.norm.weight", &k), DL_OK);
    cr_expect_neq(dl_ckpt_map_single(&b.cfg, DL_TEXT_HF, DL_PART_VAE, "decoder.up_blocks.1.upsamplers.0.conv.weight", &k), DL_OK);

    /* the ldm VAE attention weights are [C, C, 1, 1] in the file, [C, C] when asked for */
    int nd;
    int64_t sh[DL_MAX_DIMS];
    cr_assert_eq(dl_ckpt_shape(&b, DL_PART_VAE, "decoder.mid_block.attentions.0.to_q.weight", &nd, sh), DL_OK);
    cr_expect_eq(nd, 2);
    cr_expect_eq(sh[0], 32);
    cr_expect_eq(sh[1], 32);
    dl_ckpt_close(&b);
}

Test(checkpoint, conv_weights_to_ohwi)
{
    dl_checkpoint a;
    open_ok(&a, "tests/golden/tiny_sd15");
    const int64_t shape[4] = {32, 4, 3, 3};
    float *oihw = tu_alloc_nan(32 * 4 * 9), *ohwi = tu_alloc_nan(32 * 4 * 9);
    cr_assert_eq(dl_ckpt_load(&a, DL_PART_UNET, "conv_in.weight", 4, shape, oihw), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_load_conv(&a, DL_PART_UNET, "conv_in.weight", 32, 4, 3, 3, ohwi), DL_OK, "%s", dl_error_msg());
    int bad = 0;
    for (int o = 0; o < 32; o++)
        for (int i = 0; i < 4; i++)
            for (int y = 0; y < 3; y++)
                for (int x = 0; x < 3; x++)
                    bad += ohwi[((o * 3 + y) * 3 + x) * 4 + i] != oihw[((o * 4 + i) * 3 + y) * 3 + x];
    cr_expect_eq(bad, 0);
    free(oihw);
    free(ohwi);
    dl_ckpt_close(&a);
}

Test(checkpoint, missing_and_misshaped_tensors_name_both_shapes)
{
    const char *paths[2] = {"tests/golden/tiny_sd15", "tests/golden/tiny_sd15.safetensors"};
    float buf[32 * 4 * 5 * 5];
    for (int l = 0; l < 2; l++) {
        dl_checkpoint ck;
        open_ok(&ck, paths[l]);
        /* block 0 keeps its width: no shortcut conv */
        const int64_t s1[4] = {32, 32, 1, 1};
        cr_expect_eq(dl_ckpt_load(&ck, DL_PART_UNET, "down_blocks.0.resnets.0.conv_shortcut.weight", 4, s1, buf), DL_ERR);
        expect_msg("missing", "down_blocks.0.resnets.0.conv_shortcut.weight");
        expect_msg("missing", "not found");
        expect_msg("missing", "[32, 32, 1, 1]");
        if (l == 1) expect_msg("missing", "input_blocks.1.0.skip_connection.weight");
        const int64_t s2[4] = {32, 4, 5, 5};
        cr_expect_eq(dl_ckpt_load(&ck, DL_PART_UNET, "conv_in.weight", 4, s2, buf), DL_ERR);
        expect_msg("mis-shaped", "conv_in.weight");
        expect_msg("mis-shaped", "[32, 4, 5, 5]");
        expect_msg("mis-shaped", "[32, 4, 3, 3]");
        const int64_t s3[2] = {64, 65};
        cr_expect_eq(dl_ckpt_load(&ck, DL_PART_TEXT, "text_model.encoder.layers.0.self_attn.q_proj.weight", 2, s3, buf),
                     DL_ERR);
        expect_msg("mis-shaped", "[64, 65]");
        expect_msg("mis-shaped", "[64, 64]");
        /* failed reads are not "used" */
        int n;
        char **un = dl_ckpt_unused(&ck, DL_PART_UNET, &n);
        cr_expect_eq(n, ck.layout == DL_LAYOUT_SINGLE ? 208 : 208);
        dl_ckpt_free_names(un, n);
        dl_ckpt_close(&ck);
    }
}

Test(checkpoint, unused_tensors_are_reported)
{
    dl_checkpoint b;
    open_ok(&b, "tests/golden/tiny_sd15.safetensors");
    float buf[128 * 32];
    const int64_t s[2] = {128, 32};
    cr_assert_eq(dl_ckpt_load(&b, DL_PART_UNET, "time_embedding.linear_1.weight", 2, s, buf), DL_OK, "%s", dl_error_msg());
    int n, total = b.files[0].n_tensors;
    char **un = dl_ckpt_unused(&b, DL_PART_COUNT, &n);
    cr_expect_eq(n, total - 2, "%d unused of %d (one read, position_ids skipped)", n, total);
    int saw_read = 0, saw_alphas = 0;
    for (int i = 0; i < n; i++) {
        saw_read |= strstr(un[i], "time_embed.0.weight") != NULL;
        saw_alphas |= strstr(un[i], "alphas_cumprod") != NULL;
    }
    cr_expect(!saw_read);
    cr_expect(saw_alphas);
    dl_ckpt_free_names(un, n);
    un = dl_ckpt_unused(&b, DL_PART_TEXT, &n);
    cr_expect_eq(n, 36);
    dl_ckpt_free_names(un, n);
    dl_ckpt_close(&b);
}

static const char *tmp_file(const char *name, const void *data, size_t n)
{
    static char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_ckpt_%d_%s", (int)getpid(), name);
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    cr_assert_eq(fwrite(data, 1, n, fp), n);
    fclose(fp);
    return path;
}

Test(checkpoint, pickles_are_refused)
{
    static const unsigned char pickle[] = {0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e}; /* protocol 2: {} */
    dl_checkpoint ck;
    const char *p = tmp_file("model.ckpt", pickle, sizeof pickle);
    cr_expect_eq(dl_ckpt_open(&ck, p, NULL), DL_ERR);
    expect_msg(".ckpt", "pickle");
    expect_msg(".ckpt", "run arbitrary code");
    expect_msg(".ckpt", "save_file");
    unlink(p);
    /* a pickle (torch.save zip) renamed to .safetensors */
    static const unsigned char zip[] = {'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    p = tmp_file("renamed.safetensors", zip, sizeof zip);
    cr_expect_eq(dl_ckpt_open(&ck, p, NULL), DL_ERR);
    expect_msg("renamed", "pickle");
    unlink(p);
}

Test(checkpoint, unsupported_architectures_are_named)
{
    dl_unet_config u;
    cr_expect_eq(dl_unet_config_parse(&u,
                                      "{\"_class_name\": \"UNet2DConditionModel\", \"addition_embed_type\": "
                                      "\"text_image\", \"cross_attention_dim\": 768}",
                                      "kandinsky/unet/config.json"),
                 DL_ERR);
    expect_msg("kandinsky", "kandinsky/unet/config.json");
    expect_msg("kandinsky", "addition_embed_type");
    expect_msg("kandinsky", "text_image");
    /* SDXL's text_time without its sizes */
    cr_expect_eq(dl_unet_config_parse(&u,
                                      "{\"_class_name\": \"UNet2DConditionModel\", \"addition_embed_type\": "
                                      "\"text_time\", \"addition_time_embed_dim\": 256, \"cross_attention_dim\": 2048}",
                                      "sdxl/unet/config.json"),
                 DL_ERR);
    expect_msg("sdxl", "sdxl/unet/config.json");
    expect_msg("sdxl", "projection_class_embeddings_input_dim");
    cr_expect_eq(dl_unet_config_parse(&u, "{\"_class_name\": \"UNet2DModel\"}", "x.json"), DL_ERR);
    expect_msg("class", "UNet2DModel");
    cr_expect_eq(dl_unet_config_parse(&u, "{\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", "
                                          "\"SimpleCrossAttnDownBlock2D\", \"DownBlock2D\"]}", "x.json"), DL_ERR);
    expect_msg("block", "SimpleCrossAttnDownBlock2D");
    cr_expect_eq(dl_unet_config_parse(&u, "{\"frobnicate\": 3}", "x.json"), DL_ERR);
    expect_msg("unknown", "frobnicate");
    cr_expect_eq(dl_unet_config_parse(&u, "{\"some_future_flag\": null, \"other_flag\": false}", "x.json"), DL_OK,
                 "%s", dl_error_msg());
    dl_vae_config v;
    cr_expect_eq(dl_vae_config_parse(&v, "{\"_class_name\": \"AutoencoderKL\", \"shift_factor\": 0.0609}", "v.json"),
                 DL_ERR);
    expect_msg("vae", "shift_factor");
    dl_clip_config c;
    cr_expect_eq(dl_clip_config_parse(&c, "{\"model_type\": \"t5\"}", "t.json"), DL_ERR);
    expect_msg("text", "t5");

    /* an SDXL single file whose parts are incomplete */
    float w[4] = {1, 2, 3, 4};
    dl_st_entry e[2] = {{"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", DL_F32, 2,
                         {2, 2}, w},
                        {"model.diffusion_model.input_blocks.0.0.bias", DL_F32, 1, {4}, w}};
    char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_ckpt_%d_sdxl.safetensors", (int)getpid());
    cr_assert_eq(dl_st_save(path, e, 2, NULL, 0), DL_OK, "%s", dl_error_msg());
    dl_checkpoint ck;
    cr_expect_eq(dl_ckpt_open(&ck, path, NULL), DL_ERR);
    expect_msg("sdxl file", "SDXL");
    expect_msg("sdxl file", path);
    unlink(path);
}

Test(checkpoint, presets_are_valid_and_round_trip_json)
{
    static const char *const names[] = {"sd15", "sd21", "sd21-base", "tiny", "sdxl", "tiny-sdxl"};
    for (size_t i = 0; i < 6; i++) {
        dl_model_config m, back;
        cr_assert_eq(dl_model_config_preset(&m, names[i]), DL_OK);
        cr_expect_eq(dl_unet_config_validate(&m.unet, names[i]), DL_OK, "%s", dl_error_msg());
        char *j = dl_unet_config_to_json(&m.unet);
        cr_assert_eq(dl_unet_config_parse(&back.unet, j, names[i]), DL_OK, "%s", dl_error_msg());
        free(j);
        back.unet.prediction = m.unet.prediction; /* lives in the scheduler config */
        const char *d;
        cr_expect_null(d = dl_unet_config_diff(&m.unet, &back.unet), "%s unet: %s", names[i], d);
        j = dl_vae_config_to_json(&m.vae);
        cr_assert_eq(dl_vae_config_parse(&back.vae, j, names[i]), DL_OK, "%s", dl_error_msg());
        free(j);
        cr_expect_null(d = dl_vae_config_diff(&m.vae, &back.vae), "%s vae: %s", names[i], d);
        j = dl_clip_config_to_json(&m.text);
        cr_assert_eq(dl_clip_config_parse(&back.text, j, names[i]), DL_OK, "%s", dl_error_msg());
        free(j);
        cr_expect_null(d = dl_clip_config_diff(&m.text, &back.text), "%s text: %s", names[i], d);
    }
    cr_expect_eq(dl_model_config_preset(&(dl_model_config){0}, "sd3"), DL_ERR);
    expect_msg("preset", "sd3");
}

/* ---- SD2 style: OpenCLIP text keys with fused in_proj, linear proj_in, head dim 64 ---- */

typedef struct sd2_writer {
    dl_st_entry e[1024];
    float *data[1024];
    int n;
} sd2_writer;

static void sd2_add(sd2_writer *w, const char *key, int ndim, const int64_t *shape, const float *src)
{
    cr_assert_lt(w->n, 1024);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = src ? src[i] : (float)((i * 7919 + w->n * 104729) % 2001 - 1000) * 1e-4f;
    dl_st_entry *e = &w->e[w->n];
    e->name = strdup(key);
    e->dtype = DL_F32;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->data = d;
    w->data[w->n++] = d;
}

/* UNet and VAE weights under their ldm keys (the mapping itself is checked on the SD1 golden). */
static int sd2_add_mapped(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    sd2_writer *w = ((void **)user)[0];
    const dl_model_config *cfg = ((void **)user)[1];
    dl_ckpt_key k;
    cr_assert_eq(dl_ckpt_map_single(cfg, DL_TEXT_OPENCLIP, part, name, &k), DL_OK, "%s", dl_error_msg());
    int64_t s[4] = {shape[0], ndim > 1 ? shape[1] : 0, 1, 1};
    sd2_add(w, k.key, k.conv1x1 ? 4 : ndim, k.conv1x1 ? s : shape, NULL);
    return DL_OK;
}

static float *folder_tensor(dl_checkpoint *ck, const char *name, int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *x = tu_alloc_nan((size_t)n);
    cr_assert_eq(dl_ckpt_load(ck, DL_PART_TEXT, name, ndim, shape, x), DL_OK, "%s", dl_error_msg());
    return x;
}

Test(checkpoint, sd2_openclip_layout_is_split_and_detected)
{
    dl_checkpoint hf;
    open_ok(&hf, "tests/golden/tiny_sd15");
    dl_model_config cfg;
    dl_model_config_preset(&cfg, "tiny");
    cfg.unet.block_out_channels[0] = cfg.unet.block_out_channels[1] = 64;
    cfg.unet.time_embed_dim = 256;
    cfg.unet.use_linear_projection = 1;
    cfg.unet.num_heads[0] = cfg.unet.num_heads[1] = 1; /* head dim 64 */
    static sd2_writer w;
    memset(&w, 0, sizeof w);
    void *ctx[2] = {&w, &cfg};
    cr_assert_eq(dl_model_weights(&cfg, DL_PART_UNET, sd2_add_mapped, ctx), DL_OK);
    cr_assert_eq(dl_model_weights(&cfg, DL_PART_VAE, sd2_add_mapped, ctx), DL_OK);

    /* the text encoder, hand-mapped to OpenCLIP names from the tiny HF text encoder */
    const int64_t H = 64, I = 128, vh[2] = {1000, 64}, ph[2] = {77, 64}, hh[2] = {H, H}, h1[1] = {H},
                  h3[2] = {3 * H, H}, b3[1] = {3 * H}, ih[2] = {I, H}, hi[2] = {H, I}, i1[1] = {I};
    char key[256], name[256];
    float *x = folder_tensor(&hf, "text_model.embeddings.token_embedding.weight", 2, vh);
    sd2_add(&w, "cond_stage_model.model.token_embedding.weight", 2, vh, x);
    free(x);
    x = folder_tensor(&hf, "text_model.embeddings.position_embedding.weight", 2, ph);
    sd2_add(&w, "cond_stage_model.model.positional_embedding", 2, ph, x);
    free(x);
    static const char *const ln[2][2] = {{"final_layer_norm.weight", "ln_final.weight"}, {"final_layer_norm.bias", "ln_final.bias"}};
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "text_model.%s", ln[i][0]);
        snprintf(key, sizeof key, "cond_stage_model.model.%s", ln[i][1]);
        x = folder_tensor(&hf, name, 1, h1);
        sd2_add(&w, key, 1, h1, x);
        free(x);
    }
    for (int l = 0; l < 3; l++) { /* 3 blocks: SD2 leaves the last one unused */
        int src = l < 2 ? l : 1;
        float fused[3 * 64 * 64], fb[3 * 64];
        static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
        for (int q = 0; q < 3; q++) {
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.weight", src, qkv[q]);
            x = folder_tensor(&hf, name, 2, hh);
            memcpy(fused + q * H * H, x, H * H * sizeof(float));
            free(x);
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.bias", src, qkv[q]);
            x = folder_tensor(&hf, name, 1, h1);
            memcpy(fb + q * H, x, H * sizeof(float));
            free(x);
        }
        snprintf(key, sizeof key, "cond_stage_model.model.transformer.resblocks.%d.attn.in_proj_weight", l);
        sd2_add(&w, key, 2, h3, fused);
        snprintf(key, sizeof key, "cond_stage_model.model.transformer.resblocks.%d.attn.in_proj_bias", l);
        sd2_add(&w, key, 1, b3, fb);
        const struct { const char *hf, *oc; int nd; const int64_t *s; } m[] = {
            {"self_attn.out_proj.weight", "attn.out_proj.weight", 2, hh}, {"self_attn.out_proj.bias", "attn.out_proj.bias", 1, h1},
            {"layer_norm1.weight", "ln_1.weight", 1, h1}, {"layer_norm1.bias", "ln_1.bias", 1, h1},
            {"layer_norm2.weight", "ln_2.weight", 1, h1}, {"layer_norm2.bias", "ln_2.bias", 1, h1},
            {"mlp.fc1.weight", "mlp.c_fc.weight", 2, ih}, {"mlp.fc1.bias", "mlp.c_fc.bias", 1, i1},
            {"mlp.fc2.weight", "mlp.c_proj.weight", 2, hi}, {"mlp.fc2.bias", "mlp.c_proj.bias", 1, h1}};
        for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", src, m[i].hf);
            snprintf(key, sizeof key, "cond_stage_model.model.transformer.resblocks.%d.%s", l, m[i].oc);
            x = folder_tensor(&hf, name, m[i].nd, m[i].s);
            sd2_add(&w, key, m[i].nd, m[i].s, x);
            free(x);
        }
    }
    sd2_add(&w, "cond_stage_model.model.text_projection", 2, hh, NULL);
    const int64_t one[1] = {1};
    sd2_add(&w, "cond_stage_model.model.logit_scale", 0, one, NULL);

    char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_ckpt_%d_sd2.safetensors", (int)getpid());
    cr_assert_eq(dl_st_save(path, w.e, w.n, NULL, 0), DL_OK, "%s", dl_error_msg());
    for (int i = 0; i < w.n; i++) {
        free((char *)w.e[i].name);
        free(w.data[i]);
    }

    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, path, NULL), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ck.text_layout, DL_TEXT_OPENCLIP);
    cr_expect_eq(ck.sd2, 1);
    cr_expect_eq(ck.cfg.text.num_layers, 2);
    cr_expect_eq(ck.cfg.text.act, DL_ACT_GELU);
    cr_expect_eq(ck.cfg.text.num_heads, 1);
    cr_expect_eq(ck.cfg.unet.use_linear_projection, 1);
    cr_expect_eq(ck.cfg.unet.num_heads[0], 1);
    cr_expect_eq(ck.cfg.unet.num_heads[1], 1);
    cr_expect_eq(ck.cfg.unet.prediction, DL_PRED_EPSILON);
    const char *d;
    dl_model_config want = cfg;
    want.text.act = DL_ACT_GELU;
    want.unet.sample_size = 64; /* not in the weights: the default for a file without the v flag */
    cr_expect_null(d = dl_unet_config_diff(&ck.cfg.unet, &want.unet), "unet: %s", d);
    cr_expect_null(d = dl_clip_config_diff(&ck.cfg.text, &want.text), "text: %s", d);
    /* every text weight reads back as the HF original, q/k/v split out of in_proj */
    dl_checkpoint *pair[2] = {&hf, &ck};
    cmp_state s = {pair[0], pair[1], {0}, 0, 0};
    cr_assert_eq(dl_model_weights(&hf.cfg, DL_PART_TEXT, cmp_weight, &s), DL_OK);
    cr_expect_eq(s.failed, 0);
    cr_expect_eq(s.count[DL_PART_TEXT], 36);
    int n;
    char **un = dl_ckpt_unused(&ck, DL_PART_TEXT, &n);
    cr_expect_eq(n, 12 + 2, "unused: the skipped last block (12) + text_projection + logit_scale; got %d", n);
    dl_ckpt_free_names(un, n);
    dl_ckpt_close(&ck);
    /* told it is a v-prediction model */
    dl_ckpt_options vopt = {.prediction = 1};
    cr_assert_eq(dl_ckpt_open(&ck, path, &vopt), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ck.cfg.unet.prediction, DL_PRED_V);
    dl_ckpt_close(&ck);
    unlink(path);
    dl_ckpt_close(&hf);
}

/* ---- danlu-mkcheckpoint: run the built tool (build/tools/ beside build/tests/) when present ---- */

static int load_finite(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    dl_checkpoint *ck = user;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *x = tu_alloc_nan((size_t)n);
    cr_expect_eq(dl_ckpt_load(ck, part, name, ndim, shape, x), DL_OK, "%s", dl_error_msg());
    int64_t nonfinite = 0, distinct = 0;
    for (int64_t i = 0; i < n; i++) {
        nonfinite += !isfinite(x[i]);
        distinct += i > 0 && x[i] != x[0];
    }
    cr_expect_eq(nonfinite, 0, "%s: %lld non-finite", name, (long long)nonfinite);
    cr_expect(n < 4 || distinct > 0, "%s: constant", name);
    free(x);
    return DL_OK;
}

Test(checkpoint, mkcheckpoint_writes_loadable_checkpoints)
{
    char exe[4096], tool[4200];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert_gt(len, 0);
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    *slash = 0;
    snprintf(tool, sizeof tool, "%s/../tools/danlu-mkcheckpoint", exe);
    if (access(tool, X_OK) != 0) cr_skip_test("%s not built", tool);
    static const char *const layouts[2][2] = {{"single", "fp32"}, {"diffusers", "bf16"}};
    for (int l = 0; l < 2; l++) {
        char out[256], cmd[9000];
        snprintf(out, sizeof out, "/tmp/danlu_test_mkckpt_%d_%s", (int)getpid(), layouts[l][0]);
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' -o '%s' --preset tiny --layout %s --dtype %s --seed 7 > /dev/null",
                 out, tool, out, layouts[l][0], layouts[l][1]);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
        dl_checkpoint ck;
        cr_assert_eq(dl_ckpt_open(&ck, out, NULL), DL_OK, "%s", dl_error_msg());
        dl_model_config tiny;
        dl_model_config_preset(&tiny, "tiny");
        if (l == 0) { /* not in the weights */
            ck.cfg.unet.sample_size = tiny.unet.sample_size;
            ck.cfg.vae.sample_size = tiny.vae.sample_size;
        }
        const char *d;
        cr_expect_null(d = dl_unet_config_diff(&ck.cfg.unet, &tiny.unet), "%s unet: %s", layouts[l][0], d);
        cr_expect_null(d = dl_vae_config_diff(&ck.cfg.vae, &tiny.vae), "%s vae: %s", layouts[l][0], d);
        cr_expect_null(d = dl_clip_config_diff(&ck.cfg.text, &tiny.text), "%s text: %s", layouts[l][0], d);
        for (int p = 0; p < DL_PART_COUNT; p++) dl_model_weights(&ck.cfg, (dl_part)p, load_finite, &ck);
        int n;
        char **un = dl_ckpt_unused(&ck, DL_PART_COUNT, &n);
        cr_expect_eq(n, 0, "%s: %d unused, first %s", layouts[l][0], n, n ? un[0] : "");
        dl_ckpt_free_names(un, n);
        dl_ckpt_close(&ck);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
        cr_expect_eq(system(cmd), 0);
    }
}
