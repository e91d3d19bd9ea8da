/* test_sdxl_sample.c - SDXL txt2img against diffusers' StableDiffusionXLPipeline (Euler) on the
 * tiny SDXL pipeline tests/golden/tiny_sdxl_pipe (both text encoders and tokenizers): prompt and
 * negative prompt through both encoders, the pooled embedding and the time ids, the zeros of an
 * empty negative prompt (force_zeros_for_empty_prompt), a batch at a non-square size, explicit
 * original size / crop / target size, the VAE's 0.13025 scaling; then `danlu sample` end to end.
 * Golden data: tests/gen/gen_sdxl_pipe.py -> tests/golden/sdxl_sample.safetensors. The reference
 * runs in float64 with float32 noise from the same torch generator; danlu in float32. Tolerance
 * 1e-4 relative (L2) on the final latents and images, the bound of the SD 1.x sample tests. */
#include "cli/commands.h"
#include "core/error.h"
#include "io/image.h"
#include "sample/pipeline.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FOLDER "tests/golden/tiny_sdxl_pipe"
#define PROMPT "a photo of a cat sitting on a red chair, masterpiece"
#define NEGATIVE "blurry, low quality"

typedef struct {
    const char *name, *negative;
    int steps, n, width, height;
    float cfg;
    uint64_t seed;
    int orig_h, orig_w, crop_top, crop_left, target_h, target_w;
} xcase;

static void run_case(dl_sd *sd, const xcase *c)
{
    dl_st_file g;
    tu_golden_open(&g, "sdxl_sample");
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = PROMPT;
    p.negative = c->negative;
    p.width = c->width, p.height = c->height;
    p.steps = c->steps;
    p.cfg_scale = c->cfg;
    p.orig_h = c->orig_h, p.orig_w = c->orig_w, p.crop_top = c->crop_top, p.crop_left = c->crop_left;
    p.target_h = c->target_h, p.target_w = c->target_w;
    cr_assert_eq(dl_sampler_kind_parse("euler", &p.sampler), DL_OK);
    const int n = c->n, f = dl_sd_vae_factor(sd), h = c->height / f, w = c->width / f;
    const size_t npx = (size_t)n * c->height * c->width * 3, nl = (size_t)n * h * w * 4;
    float *img = tu_alloc_nan(npx), *lat = tu_alloc_nan(nl);
    /* diffusers' num_images_per_prompt = n with one generator */
    cr_assert_eq(dl_pipeline_generate(sd, &p, n, &c->seed, DL_SEED_BATCH, img, lat, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    char k[128];
    snprintf(k, sizeof k, "%s.latents", c->name);
    const int64_t ls[4] = {n, h, w, 4}, is[4] = {n, c->height, c->width, 3};
    float *rl = tu_golden_f32_shape(&g, k, 4, ls);
    tu_expect_close(lat, rl, nl, 1e-4, k);
    snprintf(k, sizeof k, "%s.image", c->name);
    float *ri = tu_golden_f32_shape(&g, k, 4, is);
    tu_expect_close(img, ri, npx, 1e-4, k);
    free(rl), free(ri), free(img), free(lat);
    dl_st_close(&g);
}

static dl_sd *open_xl(void)
{
    dl_sd *sd = NULL;
    cr_assert_eq(dl_sd_open(&sd, tu_path(FOLDER), NULL, tu_ctx(), 0), DL_OK, "%s", dl_error_msg());
    cr_assert(dl_sd_is_xl(sd));
    cr_expect_eq(dl_sd_hidden(sd), 192, "the context is both encoders' widths");
    cr_expect_eq(dl_sd_pooled_dim(sd), 32);
    cr_expect_float_eq(dl_sd_scaling_factor(sd), 0.13025f, 1e-7);
    return sd;
}

Test(sdxl_sample, txt2img_matches_diffusers_sdxl_pipeline, .timeout = 300)
{
    dl_sd *sd = open_xl();
    const xcase cases[] = {
        {.name = "euler", .negative = NEGATIVE, .steps = 4, .n = 1, .width = 16, .height = 16, .cfg = 5.0f, .seed = 42},
        {.name = "euler_zero_negative", .negative = "", .steps = 3, .n = 1, .width = 16, .height = 16, .cfg = 7.0f,
         .seed = 5},
        {.name = "euler_batch_wide", .negative = NEGATIVE, .steps = 3, .n = 2, .width = 24, .height = 16, .cfg = 4.0f,
         .seed = 9},
        {.name = "euler_sizes", .negative = NEGATIVE, .steps = 3, .n = 1, .width = 16, .height = 16, .cfg = 5.0f,
         .seed = 13, .orig_h = 40, .orig_w = 24, .crop_top = 4, .crop_left = 8, .target_h = 32, .target_w = 32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(sd, &cases[i]);
    dl_sd_close(sd);
}

/* The pieces: the prompt's context is [TE1 penultimate | TE2 penultimate] per token, and the
 * size conditioning reaches the output (different time ids, different latents). */
Test(sdxl_sample, context_is_both_penultimate_states_and_time_ids_matter, .timeout = 120)
{
    dl_sd *sd = open_xl();
    float *emb = NULL, pooled[32];
    int T = 0;
    cr_assert_eq(dl_pipeline_encode_prompt_xl(sd, PROMPT, 1, 1, 8, &emb, &T, pooled), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(T, 77);
    float *emb2 = NULL;
    int T2 = 0;
    cr_assert_eq(dl_pipeline_encode_prompt(sd, PROMPT, 1, 1, 8, &emb2, &T2), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(T2, 77);
    cr_expect(memcmp(emb, emb2, sizeof(float) * 77 * 192) == 0, "the two entry points differ");
    free(emb), free(emb2);
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = PROMPT;
    p.width = p.height = 16;
    p.steps = 2;
    p.cfg_scale = 3.0f;
    cr_assert_eq(dl_sampler_kind_parse("euler", &p.sampler), DL_OK);
    float a[16 * 16 * 3], b[16 * 16 * 3], la[8 * 8 * 4], lb[8 * 8 * 4];
    const uint64_t seed = 1;
    cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, a, la, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    p.orig_h = 1024, p.orig_w = 768;
    cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, b, lb, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    cr_expect(memcmp(la, lb, sizeof la) != 0, "the original size does not reach the latents");
    /* an SD 1.x LoRA is refused, saying so (SDXL LoRAs: test_sdxl_lora.c) */
    cr_expect_eq(dl_sd_lora_add(sd, tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors"), 1, 1, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "SD 1.x/2.x") && strstr(dl_error_msg(), "SDXL"), "%s", dl_error_msg());
    dl_sd_close(sd);
}

/* danlu sample on the SDXL folder writes the PNG diffusers' pipeline gives (uint8 of the golden
 * image), with the size options. */
static const char *g_backend = "cpu";

static void sample_cli(void)
{
    /* euler_sizes: original_size (h 40, w 24), crops_coords_top_left (4, 8), target_size (32, 32) */
    char *argv[] = {"sample", "--model", (char *)tu_path(FOLDER), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                    "--sampler", "euler", "--steps", "3", "--cfg-scale", "5", "--seed", "13", "--seed-mode", "batch",
                    "--width", "16", "--height", "16", "--original-size", "24x40", "--crop", "4,8", "--target-size",
                    "32x32", "--out-dir", (char *)tu_tmp("o"), "--backend", (char *)g_backend, "--quiet", "--threads", "2", NULL};
    const int argc = (int)(sizeof argv / sizeof *argv) - 1;
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_sample(argc, argv, devnull);
    fclose(devnull);
    cr_assert_eq(rc, 0, "%s", dl_error_msg());
    dl_image im;
    cr_assert_eq(dl_image_load(&im, tu_tmp("o/00001-13.png")), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(im.w, 16);
    cr_assert_eq(im.h, 16);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_sample");
    int64_t n;
    float *ref = tu_golden_f32(&g, "euler_sizes.image", &n);
    cr_assert_eq(n, 16 * 16 * 3);
    uint8_t want[16 * 16 * 3];
    dl_pipeline_to_u8(ref, n, want);
    int off = 0;
    for (int i = 0; i < n; i++) off += abs((int)im.data[i] - (int)want[i]) > 1;
    cr_expect_eq(off, 0, "%d of %lld pixel values differ from diffusers' by more than 1", off, (long long)n);
    free(ref);
    dl_image_free(&im);
    dl_st_close(&g);
    /* a malformed size is refused */
    argv[22] = "24by40";
    FILE *dn = fopen("/dev/null", "w");
    cr_expect_neq(dl_cmd_sample(argc, argv, dn), 0, "--original-size 24by40 accepted");
    fclose(dn);
}

Test(sdxl_sample, danlu_sample_writes_the_image, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    sample_cli();
}

/* the same on the CUDA backend over the emulated device (staged pooled embeddings and time ids) */
Test(sdxl_sample, danlu_sample_on_cuda, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 600)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    g_backend = "cuda";
    sample_cli();
}
