/* test_sdxl_lora.c - SDXL LoRA files in sampling: sd-scripts' SDXL module names (UNet in SGM
 * paths, lora_te1_ / lora_te2_), and the tiny SDXL pipeline with a LoRA on its UNet and both text
 * encoders, read from a diffusers/PEFT file, a kohya file in sd-scripts' names and a kohya file
 * on diffusers' names, against StableDiffusionXLPipeline.load_lora_weights (Euler). Golden data:
 * tests/gen/gen_sdxl_lora.py -> tests/golden/tiny_sdxl_loras/, sdxl_lora.safetensors,
 * lora_names_sdxl.json. The reference runs in float64 with float32 noise from the same torch
 * generator, danlu in float32; 1e-4 relative (L2) on latents and images, the bound of the SD 1.x
 * LoRA sample test (test_sample.c merged_loras_match_diffusers). */
#include "cli/commands.h"
#include "core/error.h"
#include "io/image.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"
#include "sample/pipeline.h"
#include "testutil.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FOLDER "tests/golden/tiny_sdxl_pipe"
#define LORAS "tests/golden/tiny_sdxl_loras"
#define PROMPT "a photo of a cat sitting on a red chair, masterpiece"
#define NEGATIVE "blurry, low quality"

/* ---- names ---- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The kohya names of part in mods equal the JSON array (strings, or [name, is_3x3] pairs), as sets. */
static void expect_names(const dl_lora_module *m, int n, dl_lora_part part, const cJSON *arr, const char *label)
{
    int nref = cJSON_GetArraySize(arr), k = 0;
    const char **ref = malloc(sizeof *ref * (size_t)nref), **got = malloc(sizeof *got * (size_t)(n + 1));
    for (int i = 0; i < nref; i++) {
        const cJSON *it = cJSON_GetArrayItem(arr, i);
        ref[i] = (cJSON_IsArray(it) ? cJSON_GetArrayItem(it, 0) : it)->valuestring;
    }
    for (int i = 0; i < n; i++)
        if (m[i].part == part) got[k++] = m[i].kohya;
    qsort(ref, (size_t)nref, sizeof *ref, cmp_str);
    qsort(got, (size_t)k, sizeof *got, cmp_str);
    cr_assert_eq(k, nref, "%s: %d modules, sd-scripts has %d", label, k, nref);
    for (int i = 0; i < k; i++) cr_assert_str_eq(got[i], ref[i], "%s: module %d", label, i);
    free(ref), free(got);
}

/* SDXL base: danlu's targets carry the names sd-scripts gives its own SDXL UNet's modules and
 * the two text encoders'. */
Test(sdxl_lora, names_equal_sd_scripts)
{
    char *txt = read_text(tu_path("tests/golden/lora_names_sdxl.json"));
    cJSON *j = cJSON_Parse(txt);
    cr_assert_not_null(j);
    dl_model_config cfg;
    cr_assert_eq(dl_model_config_preset(&cfg, "sdxl"), DL_OK);
    cr_assert(dl_lora_cfg_is_xl(&cfg));
    dl_lora_spec sp = {.preset = DL_LORA_PRESET_DEFAULT, .rank = 8, .alpha = 4, .unet = 1, .text = 1, .multiplier = 1};
    dl_lora_module *m;
    int n;
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK, "%s", dl_error_msg());
    expect_names(m, n, DL_LORA_UNET, cJSON_GetObjectItem(j, "unet"), "SDXL UNet");
    expect_names(m, n, DL_LORA_TEXT, cJSON_GetObjectItem(j, "te1"), "SDXL text encoder 1");
    expect_names(m, n, DL_LORA_TEXT2, cJSON_GetObjectItem(j, "te2"), "SDXL text encoder 2");
    cr_expect_eq(n, 722 + 72 + 192);
    free(m);
    sp.conv_rank = 2, sp.text = 0;
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK, "%s", dl_error_msg());
    expect_names(m, n, DL_LORA_UNET, cJSON_GetObjectItem(j, "unet_conv"), "SDXL UNet with conv_dim");
    const cJSON *pairs = cJSON_GetObjectItem(j, "unet_conv");
    for (int i = 0; i < cJSON_GetArraySize(pairs); i++) {
        const cJSON *p = cJSON_GetArrayItem(pairs, i);
        const char *nm = cJSON_GetArrayItem(p, 0)->valuestring;
        for (int q = 0; q < n; q++)
            if (!strcmp(m[q].kohya, nm)) cr_expect_eq(m[q].k == 3, cJSON_GetArrayItem(p, 1)->valueint, "%s", nm);
    }
    free(m);
    cJSON_Delete(j);
    free(txt);
    char kn[192];
    cr_assert_eq(dl_lora_kohya_name_for(&cfg, DL_LORA_UNET, "mid_block.resnets.1.conv1", kn, sizeof kn), DL_OK);
    cr_expect_str_eq(kn, "lora_unet_middle_block_2_in_layers_2");
    cr_assert_eq(dl_lora_kohya_name_for(&cfg, DL_LORA_UNET, "up_blocks.1.upsamplers.0.conv", kn, sizeof kn), DL_OK);
    cr_expect_str_eq(kn, "lora_unet_output_blocks_5_2_conv");
}

/* ---- sampling against diffusers ---- */

static void run_case(dl_sd *sd, const char *golden_case, uint64_t seed)
{
    dl_st_file g;
    tu_golden_open(&g, "sdxl_lora");
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = PROMPT;
    p.negative = NEGATIVE;
    p.width = p.height = 16;
    p.steps = 3;
    p.cfg_scale = 5.0f;
    cr_assert_eq(dl_sampler_kind_parse("euler", &p.sampler), DL_OK);
    const size_t npx = 16 * 16 * 3, nl = 8 * 8 * 4;
    float *img = tu_alloc_nan(npx), *lat = tu_alloc_nan(nl);
    cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, img, lat, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    char k[128];
    const int64_t ls[4] = {1, 8, 8, 4}, is[4] = {1, 16, 16, 3};
    snprintf(k, sizeof k, "%s.latents", golden_case);
    float *rl = tu_golden_f32_shape(&g, k, 4, ls);
    tu_expect_close(lat, rl, nl, 1e-4, k);
    snprintf(k, sizeof k, "%s.image", golden_case);
    float *ri = tu_golden_f32_shape(&g, k, 4, is);
    tu_expect_close(img, ri, npx, 1e-4, k);
    free(rl), free(ri), free(img), free(lat);
    dl_st_close(&g);
}

static void expect_report(const char *file)
{
    dl_model_config cfg;
    dl_checkpoint ck;
    const dl_ckpt_options o = {.prediction = -1, .allow_sdxl = 1};
    cr_assert_eq(dl_ckpt_open(&ck, tu_path(FOLDER), &o), DL_OK, "%s", dl_error_msg());
    cfg = ck.cfg;
    dl_ckpt_close(&ck);
    dl_lora_net net;
    dl_lora_report rep;
    cr_assert_eq(dl_lora_load(tu_path(file), &cfg, 1.0f, &net, &rep), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(rep.n_unet, 257, "%s", file);
    cr_expect_eq(rep.n_text, 12, "%s", file);
    cr_expect_eq(rep.n_text2, 18, "%s", file);
    cr_expect_eq(rep.n_unmatched, 0, "%s: %d keys unmatched (first %s)", file, rep.n_unmatched, rep.unmatched[0]);
    cr_expect_eq(rep.n_matched_keys, rep.n_keys, "%s", file);
    /* the conv modules: rank 2, alpha 1.5 (PEFT: alpha_pattern in lora_adapter_metadata) */
    const dl_lora_module *c = dl_lora_net_find(&net, "down_blocks.0.resnets.0.conv1");
    cr_assert_not_null(c);
    cr_expect(c->lora.r == 2 && c->k == 3, "%s", file);
    if (!strstr(file, "dnames")) cr_expect_float_eq(c->alpha, 1.5f, 1e-7, "%s", file);
    const dl_lora_module *t2 = dl_lora_net_find(&net, "lora_te2_text_model_encoder_layers_2_mlp_fc2");
    cr_assert_not_null(t2, "%s", file);
    cr_expect(t2->part == DL_LORA_TEXT2 && t2->lora.r == 2, "%s", file);
    dl_lora_net_free(&net);
}

Test(sdxl_lora, files_read_in_every_layout)
{
    expect_report(LORAS "/peft.safetensors");
    expect_report(LORAS "/kohya.safetensors");
    expect_report(LORAS "/kohya_dnames.safetensors");
}

static dl_sd *open_xl(void)
{
    dl_sd *sd = NULL;
    cr_assert_eq(dl_sd_open(&sd, tu_path(FOLDER), NULL, tu_ctx(), 1), DL_OK, "%s", dl_error_msg());
    cr_assert(dl_sd_is_xl(sd));
    return sd;
}

Test(sdxl_lora, merged_loras_match_diffusers, .timeout = 600)
{
    dl_sd *sd = open_xl();
    static const char *files[] = {LORAS "/peft.safetensors", LORAS "/kohya.safetensors",
                                  LORAS "/kohya_dnames.safetensors"};
    for (int i = 0; i < 3; i++) { /* every layout gives diffusers' image of the PEFT file at 0.8 */
        cr_assert_eq(dl_sd_lora_add(sd, tu_path(files[i]), 0.8f, 0.8f, 0), DL_OK, "%s", dl_error_msg());
        run_case(sd, "peft_08", 21);
        dl_sd_lora_clear(sd);
    }
    /* text encoders at 0.5, UNet at 1 (diffusers' per-component adapter weights) */
    cr_assert_eq(dl_sd_lora_add(sd, tu_path(LORAS "/kohya.safetensors"), 0.5f, 1.0f, 0), DL_OK, "%s", dl_error_msg());
    run_case(sd, "kohya_split", 22);
    dl_sd_lora_clear(sd);
    cr_expect_eq(dl_sd_lora_count(sd), 0);
    run_case(sd, "base", 21); /* unmerged: the base model again */
    dl_sd_close(sd);
}

/* ---- other architectures and bad files ---- */

Test(sdxl_lora, other_architecture_and_corrupt_files_are_refused, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini,
     .timeout = 120)
{
    dl_sd *sd = open_xl();
    /* an SD 1.x LoRA on SDXL */
    const char *sd15 = tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors");
    cr_expect_eq(dl_sd_lora_add(sd, sd15, 1, 1, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "epoch1.safetensors") && strstr(dl_error_msg(), "SD 1.x/2.x") &&
                  strstr(dl_error_msg(), "SDXL"),
              "%s", dl_error_msg());
    /* a corrupt file: the kohya file cut short */
    FILE *in = fopen(tu_path(LORAS "/kohya.safetensors"), "rb"), *out = fopen(tu_tmp("cut.safetensors"), "wb");
    cr_assert(in && out);
    char buf[65536];
    size_t got = fread(buf, 1, sizeof buf, in);
    fwrite(buf, 1, got, out);
    fclose(in), fclose(out);
    cr_expect_eq(dl_sd_lora_add(sd, tu_tmp("cut.safetensors"), 1, 1, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "cut.safetensors"), "%s", dl_error_msg());
    cr_expect_eq(dl_sd_lora_count(sd), 0);
    dl_sd_close(sd);
    /* SDXL LoRAs on an SD 1.x model, both layouts */
    cr_assert_eq(dl_sd_open(&sd, tu_path("tests/golden/tiny_pipe"), NULL, tu_ctx(), 1), DL_OK, "%s", dl_error_msg());
    const char *xl[] = {LORAS "/kohya.safetensors", LORAS "/peft.safetensors"};
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(dl_sd_lora_add(sd, tu_path(xl[i]), 1, 1, 0), DL_ERR, "%s accepted", xl[i]);
        cr_expect(strstr(dl_error_msg(), "a LoRA for SDXL") && strstr(dl_error_msg(), xl[i] + sizeof LORAS),
                  "%s", dl_error_msg());
    }
    dl_sd_close(sd);
}

/* ---- the CLI ---- */

static int sample_cli(char **argv)
{
    int argc = 0;
    while (argv[argc]) argc++;
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_sample(argc, argv, devnull);
    fclose(devnull);
    return rc;
}

/* danlu sample with a tag from --lora-dir writes diffusers' pixels (uint8 of the golden image) */
Test(sdxl_lora, danlu_sample_with_a_lora_tag, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    char *argv[] = {"sample", "--model", (char *)tu_path(FOLDER), "--prompt", PROMPT " <lora:kohya:0.8>",
                    "--negative-prompt", NEGATIVE, "--lora-dir", (char *)tu_path(LORAS), "--sampler", "euler",
                    "--steps", "3", "--cfg-scale", "5", "--seed", "21", "--width", "16", "--height", "16",
                    "--out-dir", (char *)tu_tmp("o"), "--backend", "cpu", "--quiet", "--threads", "2", NULL};
    cr_assert_eq(sample_cli(argv), 0, "%s", dl_error_msg());
    dl_image im;
    cr_assert_eq(dl_image_load(&im, tu_tmp("o/00001-21.png")), DL_OK, "%s", dl_error_msg());
    cr_assert(im.w == 16 && im.h == 16);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_lora");
    int64_t n;
    float *ref = tu_golden_f32(&g, "peft_08.image", &n);
    cr_assert_eq(n, 16 * 16 * 3);
    uint8_t want[16 * 16 * 3];
    dl_pipeline_to_u8(ref, n, want);
    int off = 0;
    for (int i = 0; i < n; i++) off += abs((int)im.data[i] - (int)want[i]) > 1;
    cr_expect_eq(off, 0, "%d of %lld pixel values differ from diffusers' by more than 1", off, (long long)n);
    free(ref);
    dl_image_free(&im);
    dl_st_close(&g);
    char *params = NULL;
    cr_assert_eq(dl_png_read_text(tu_tmp("o/00001-21.png"), "parameters", &params), DL_OK, "%s", dl_error_msg());
    cr_expect(strstr(params, "Lora hashes: \"kohya: "), "%s", params);
    free(params);
    /* an SD 1.x LoRA is refused before any image is made */
    char *bad[] = {"sample", "--model", (char *)tu_path(FOLDER), "--prompt", "a cat", "--lora",
                   (char *)tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors"), "--steps", "2", "--width", "16",
                   "--height", "16", "--out-dir", (char *)tu_tmp("bad"), "--quiet", NULL};
    cr_expect_neq(sample_cli(bad), 0);
    FILE *f = fopen(tu_tmp("bad/00001-0.png"), "rb");
    cr_expect_null(f, "an image was written");
    if (f) fclose(f);
}

/* danlu grid with a LoRA axis on SDXL: the LoRA cell is diffusers' image with the LoRA at 0.8,
 * the "none" cell the base model's (so the LoRA is unmerged between cells). */
Test(sdxl_lora, danlu_grid_lora_axis, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    char *argv[] = {"grid", "--model", (char *)tu_path(FOLDER), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                    "--lora-dir", (char *)tu_path(LORAS), "--x", "lora:kohya,none", "--lora-weight", "0.8",
                    "--sampler", "euler", "--steps", "3", "--cfg-scale", "5", "--seed", "21", "--width", "16",
                    "--height", "16", "--out", (char *)tu_tmp("grid.png"), "--out-dir", (char *)tu_tmp("g"),
                    "--backend", "cpu", "--quiet", "--threads", "2", NULL};
    int argc = 0;
    while (argv[argc]) argc++;
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_grid(argc, argv, devnull);
    fclose(devnull);
    cr_assert_eq(rc, 0, "%s", dl_error_msg());
    dl_image im;
    cr_assert_eq(dl_image_load(&im, tu_tmp("grid.png")), DL_OK, "%s", dl_error_msg());
    const int sw = im.w / 2, top = im.h - 16; /* two columns under a label row, no label column */
    cr_assert(im.w % 2 == 0 && sw >= 16 && top > 0, "grid is %dx%d", im.w, im.h);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_lora");
    const char *cells[2] = {"peft_08.image", "base.image"};
    for (int c = 0; c < 2; c++) {
        float *ref = tu_golden_f32(&g, cells[c], NULL);
        uint8_t want[16 * 16 * 3];
        dl_pipeline_to_u8(ref, 16 * 16 * 3, want);
        int off = 0;
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
                for (int k = 0; k < 3; k++) {
                    int got = im.data[((size_t)(top + y) * im.w + c * sw + (sw - 16) / 2 + x) * 3 + k];
                    off += abs(got - (int)want[(y * 16 + x) * 3 + k]) > 1;
                }
        cr_expect_eq(off, 0, "cell %d (%s): %d pixel values differ by more than 1", c, cells[c], off);
        free(ref);
    }
    dl_st_close(&g);
    dl_image_free(&im);
}
