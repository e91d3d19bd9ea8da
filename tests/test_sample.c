/* test_sample.c - the txt2img / img2img pipeline against diffusers' StableDiffusionPipeline and
 * StableDiffusionImg2ImgPipeline on the tiny pipeline tests/golden/tiny_pipe (16x16 pixels),
 * every sampler, CFG, batches, clip skip, A1111 emphasis; then `danlu sample` end to end (PNG
 * and its parameters chunk) and its bad-input errors.
 * Golden data: tests/gen/gen_sample.py -> tests/golden/sample.safetensors. The reference runs
 * in float64 with float32 noise from the same torch generator; danlu runs in float32.
 * Tolerance 1e-4 relative (L2) on the final latents and images: the bound; a few
 * sampler steps through a random tiny UNet reach ~1e-6 in practice. */
#include "cli/commands.h"
#include "core/error.h"
#include "core/sha256.h"
#include "io/hash_cache.h"
#include "io/image.h"
#include "sample/infotext.h"
#include "sample/pipeline.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PROMPT "a photo of a cat sitting on a red chair, masterpiece"
#define NEGATIVE "blurry, low quality"

static dl_sd *open_tiny(void)
{
    dl_sd *sd = NULL;
    cr_assert_eq(dl_sd_open(&sd, tu_path("tests/golden/tiny_pipe"), NULL, tu_ctx(), 1), DL_OK, "%s", dl_error_msg());
    return sd;
}

typedef struct {
    const char *name, *sampler, *prompt;
    int steps, n, clip_skip, batch_mode;
    float cfg;
    uint64_t seed;
    double strength;   /* 0: txt2img */
} gcase;

static void run_case(dl_sd *sd, const gcase *c)
{
    dl_st_file g;
    tu_golden_open(&g, "sample");
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = c->prompt ? c->prompt : PROMPT;
    p.negative = NEGATIVE;
    p.width = p.height = 16;
    p.steps = c->steps;
    p.cfg_scale = c->cfg;
    p.clip_skip = c->clip_skip ? c->clip_skip : 1;
    const char *sn = c->sampler;
    if (!strcmp(sn, "euler_karras")) {
        sn = "euler";
        p.sopts.karras = 1;
    }
    cr_assert_eq(dl_sampler_kind_parse(sn, &p.sampler), DL_OK);
    float *init = NULL;
    if (c->strength > 0) {
        const dl_st_tensor *t = dl_st_find(&g, "i2i.init");
        cr_assert_not_null(t);
        init = malloc(sizeof(float) * 16 * 16 * 3);
        dl_pipeline_image_in((const uint8_t *)t->data, 16, 16, 16, 16, init);
        p.init = init;
        p.sopts.strength = c->strength;
    }
    int n = c->n;
    uint64_t seeds[4];
    for (int i = 0; i < n; i++) seeds[i] = c->seed + (uint64_t)i;
    size_t npx = (size_t)n * 16 * 16 * 3, nl = (size_t)n * 8 * 8 * 4;
    float *img = tu_alloc_nan(npx), *lat = tu_alloc_nan(nl);
    cr_assert_eq(dl_pipeline_generate(sd, &p, n, seeds, c->batch_mode ? DL_SEED_BATCH : DL_SEED_PER_IMAGE, img, lat,
                                      NULL, NULL),
                 DL_OK, "%s", dl_error_msg());
    char k[128];
    snprintf(k, sizeof k, "%s.latents", c->name);
    int64_t ls[4] = {n, 8, 8, 4}, is[4] = {n, 16, 16, 3};
    float *rl = tu_golden_f32_shape(&g, k, 4, ls);
    tu_expect_close(lat, rl, nl, 1e-4, k);
    snprintf(k, sizeof k, "%s.image", c->name);
    float *ri = tu_golden_f32_shape(&g, k, 4, is);
    tu_expect_close(img, ri, npx, 1e-4, k);
    free(rl);
    free(ri);
    free(img);
    free(lat);
    free(init);
    dl_st_close(&g);
}

Test(sample, txt2img_every_sampler_matches_diffusers)
{
    dl_sd *sd = open_tiny();
    const char *names[] = {"euler", "euler_karras", "euler_a", "heun", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char case_name[64];
        snprintf(case_name, sizeof case_name, "t2i_%s", names[i]);
        gcase c = {.name = case_name, .sampler = names[i], .steps = 4, .n = 1, .cfg = 7.0f, .seed = 42};
        run_case(sd, &c);
    }
    dl_sd_close(sd);
}

Test(sample, txt2img_batch_cfg_clip_skip_emphasis)
{
    dl_sd *sd = open_tiny();
    /* diffusers' num_images_per_prompt = 2 with one generator */
    gcase b = {.name = "t2i_euler_a_batch", .sampler = "euler_a", .steps = 3, .n = 2, .cfg = 5.0f, .seed = 7, .batch_mode = 1};
    run_case(sd, &b);
    gcase nocfg = {.name = "t2i_ddim_nocfg", .sampler = "ddim", .steps = 3, .n = 1, .cfg = 1.0f, .seed = 3};
    run_case(sd, &nocfg);
    gcase skip = {.name = "t2i_euler_skip2", .sampler = "euler", .steps = 3, .n = 1, .cfg = 7.0f, .seed = 5, .clip_skip = 2};
    run_case(sd, &skip);
    gcase w = {.name = "t2i_euler_weighted", .sampler = "euler", .steps = 3, .n = 1, .cfg = 7.0f, .seed = 11,
               .prompt = "a photo of a (cat:1.3) sitting on a [red] chair, (masterpiece)"};
    run_case(sd, &w);
    dl_sd_close(sd);
}

/* Per-image seeds: image 1 of a batch seeded 41 is the batch-1 image of seed 42. */
Test(sample, per_image_seeds_equal_single_runs)
{
    dl_sd *sd = open_tiny();
    dl_st_file g;
    tu_golden_open(&g, "sample");
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = PROMPT;
    p.negative = NEGATIVE;
    p.width = p.height = 16;
    p.steps = 4;
    p.sampler = DL_SAMPLER_EULER_A;
    uint64_t seeds[2] = {41, 42};
    float *img = tu_alloc_nan(2 * 16 * 16 * 3);
    cr_assert_eq(dl_pipeline_generate(sd, &p, 2, seeds, DL_SEED_PER_IMAGE, img, NULL, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    float *ref = tu_golden_f32(&g, "t2i_euler_a.image", NULL);
    tu_expect_close(img + 16 * 16 * 3, ref, 16 * 16 * 3, 1e-4, "batch image 1 (seed 42)");
    free(ref);
    free(img);
    dl_st_close(&g);
    dl_sd_close(sd);
}

Test(sample, img2img_matches_diffusers)
{
    dl_sd *sd = open_tiny();
    gcase cs[] = {
        {.name = "i2i_euler_a", .sampler = "euler_a", .steps = 5, .n = 1, .cfg = 7.0f, .seed = 21, .strength = 0.6},
        {.name = "i2i_ddim", .sampler = "ddim", .steps = 5, .n = 1, .cfg = 7.0f, .seed = 22, .strength = 0.5},
        {.name = "i2i_dpmpp_2m", .sampler = "dpmpp_2m", .steps = 5, .n = 1, .cfg = 7.0f, .seed = 23, .strength = 0.75},
        {.name = "i2i_euler_a_batch", .sampler = "euler_a", .steps = 5, .n = 2, .cfg = 7.0f, .seed = 24, .strength = 0.6,
         .batch_mode = 1},
    };
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) run_case(sd, &cs[i]);
    dl_sd_close(sd);
}

Test(sample, a1111_emphasis_embeddings)
{
    dl_sd *sd = open_tiny();
    dl_st_file g;
    tu_golden_open(&g, "sample");
    struct { const char *name, *prompt; int skip; } cs[] = {
        {"emb_weight", "a (cat:1.3), [blurry] (dog)", 1},
        {"emb_skip2", "(masterpiece:1.2), a dog", 2},
        {"emb_long", NULL, 1},
    };
    char longp[1024] = "";
    for (int i = 0; i < 16; i++) strcat(strcat(longp, i ? ", " : ""), "a (photo:1.1) of a cat");
    cs[2].prompt = longp;
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        float *emb;
        int T;
        cr_assert_eq(dl_pipeline_encode_prompt(sd, cs[i].prompt, cs[i].skip, 1, 8, &emb, &T), DL_OK, "%s", dl_error_msg());
        char k[64];
        snprintf(k, sizeof k, "%s.emb", cs[i].name);
        int64_t n;
        float *ref = tu_golden_f32(&g, k, &n);
        cr_assert_eq(n, (int64_t)T * dl_sd_hidden(sd), "%s: %d tokens", k, T);
        tu_expect_close(emb, ref, (size_t)n, 1e-5, k);
        free(ref);
        free(emb);
    }
    dl_st_close(&g);
    dl_sd_close(sd);
}

/* v-prediction: the folder's scheduler config says v_prediction (tests/golden/tiny_pipe_v). */
Test(sample, v_prediction_matches_diffusers)
{
    dl_sd *sd = NULL;
    cr_assert_eq(dl_sd_open(&sd, tu_path("tests/golden/tiny_pipe_v"), NULL, tu_ctx(), 1), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_sd_v_prediction(sd), 1);
    const char *names[] = {"euler", "dpmpp_2m", "ddim"};
    for (int i = 0; i < 3; i++) {
        char case_name[64];
        snprintf(case_name, sizeof case_name, "vpred_%s", names[i]);
        gcase c = {.name = case_name, .sampler = names[i], .steps = 4, .n = 1, .cfg = 7.0f, .seed = 31};
        run_case(sd, &c);
    }
    dl_sd_close(sd);
}

/* LoRAs merged into the weights vs diffusers with the same files loaded through PEFT and
 * set_adapters weights; unmerging restores the base model. */
Test(sample, merged_loras_match_diffusers)
{
    dl_sd *sd = open_tiny();
    const char *e1 = tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors");
    const char *e2 = tu_path("tests/golden/tiny_pipe_loras/epoch2.safetensors");
    cr_assert_eq(dl_sd_lora_add(sd, e1, 0.7f, 0.7f, 0), DL_OK, "%s", dl_error_msg());
    gcase c1 = {.name = "lora_e1", .sampler = "euler", .steps = 3, .n = 1, .cfg = 7.0f, .seed = 13};
    run_case(sd, &c1);
    cr_assert_eq(dl_sd_lora_add(sd, e2, 0.5f, 0.5f, 0), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(dl_sd_lora_count(sd), 2);
    gcase c2 = {.name = "lora_e1_e2", .sampler = "euler", .steps = 3, .n = 1, .cfg = 7.0f, .seed = 14};
    run_case(sd, &c2);
    dl_sd_lora_clear(sd);
    gcase base = {.name = "t2i_euler", .sampler = "euler", .steps = 4, .n = 1, .cfg = 7.0f, .seed = 42};
    run_case(sd, &base);
    /* a file that is not a LoRA of this model is an error and merges nothing */
    cr_expect_eq(dl_sd_lora_add(sd, tu_path("tests/golden/sample.safetensors"), 1, 1, 0), DL_ERR);
    cr_expect_eq(dl_sd_lora_count(sd), 0);
    dl_sd_close(sd);
}

/* ---- the CLI ---- */

static char g_dir[64];
static void mk(void) { strcpy(g_dir, "/tmp/danlu-sample-XXXXXX"); cr_assert_not_null(mkdtemp(g_dir)); }
static void rm(void) { char c[128]; snprintf(c, sizeof c, "rm -rf %s", g_dir); cr_assert_eq(system(c), 0); }

static int cli(int argc, char **argv)
{
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_sample(argc, argv, devnull);
    fclose(devnull);
    return rc;
}

static int count_files(const char *dir)
{
    char c[256];
    snprintf(c, sizeof c, "ls -A %s | wc -l", dir);
    FILE *p = popen(c, "r");
    int n = -1;
    cr_assert_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

Test(sample, cli_writes_png_with_a1111_parameters, .init = mk, .fini = rm)
{
    char out[128];
    snprintf(out, sizeof out, "%s/out", g_dir);
    char *argv[] = {"sample", "--model", (char *)tu_path("tests/golden/tiny_pipe"), "--prompt", PROMPT,
                    "--negative-prompt", NEGATIVE, "--width", "16", "--height", "16", "--steps", "4", "--seed", "42",
                    "--sampler", "euler_a", "--cfg-scale", "7", "--out-dir", out, "--threads", "2", "--quiet",
                    "--batch-count", "2", NULL};
    cr_assert_eq(cli(26, argv), 0, "%s", dl_error_msg());
    char path[256];
    snprintf(path, sizeof path, "%s/00001-42.png", out);
    dl_image im;
    cr_assert_eq(dl_image_load(&im, path), DL_OK, "%s", dl_error_msg());
    cr_assert(im.w == 16 && im.h == 16);
    /* pixels = round(255 * diffusers' image) (at most 1 off where the float lands near .5) */
    dl_st_file g;
    tu_golden_open(&g, "sample");
    float *ref = tu_golden_f32(&g, "t2i_euler_a.image", NULL);
    int worst = 0;
    for (int i = 0; i < 16 * 16 * 3; i++) {
        int d = abs((int)im.data[i] - (int)lrintf(ref[i] * 255.0f));
        if (d > worst) worst = d;
    }
    cr_expect_leq(worst, 1, "pixel off by %d", worst);
    free(ref);
    dl_st_close(&g);
    dl_image_free(&im);
    char *params = NULL;
    cr_assert_eq(dl_png_read_text(path, "parameters", &params), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(params, PROMPT "\nNegative prompt: " NEGATIVE "\nSteps: 4, Sampler: Euler a, CFG scale: 7, "
                             "Seed: 42, Size: 16x16, Model: tiny_pipe, Version: danlu");
    free(params);
    /* batch count 2: the second image is seed 43; a new run continues the numbering */
    snprintf(path, sizeof path, "%s/00002-43.png", out);
    struct stat st;
    cr_expect_eq(stat(path, &st), 0, "%s missing", path);
    cr_assert_eq(cli(26, argv), 0, "%s", dl_error_msg());
    snprintf(path, sizeof path, "%s/00003-42.png", out);
    cr_expect_eq(stat(path, &st), 0, "%s missing: files must never be overwritten", path);
    cr_expect_eq(count_files(out), 4);
}

Test(sample, cli_bad_input_is_a_clear_error_and_writes_nothing, .init = mk, .fini = rm)
{
    char out[128], notimg[128];
    snprintf(out, sizeof out, "%s/out", g_dir);
    snprintf(notimg, sizeof notimg, "%s/not_an_image.png", g_dir);
    FILE *f = fopen(notimg, "w");
    fputs("this is text", f);
    fclose(f);
    const char *model = tu_path("tests/golden/tiny_pipe");
    struct { const char *opt, *val, *prompt; } bad[] = {
        {"--sampler", "euler_b", "a cat"},
        {"--width", "20", "a cat"},
        {"--init-image", notimg, "a cat"},
        {"--init-image", "/nonexistent/x.png", "a cat"},
        {"--lora-dir", g_dir, "a cat <lora:missing_lora:0.8>"},
        {"--lora", "/nonexistent/l.safetensors:0.5", "a cat"},
        {"--schedule", "karras", "a cat"},  /* euler_a has no Karras variant in diffusers */
        {"--lora", tu_path("tests/golden/tiny_pipe_loras/other_arch.safetensors"), "a cat"},
        {"--lora", tu_path("tests/golden/sample.safetensors"), "a cat"}, /* not a LoRA */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[] = {"sample", "--model", (char *)model, "--prompt", (char *)bad[i].prompt, "--width", "16",
                        "--height", "16", "--steps", "2", "--seed", "1", "--out-dir", out, "--quiet",
                        (char *)bad[i].opt, (char *)bad[i].val, NULL};
        int rc = cli(18, argv);
        cr_expect_neq(rc, 0, "%s %s accepted", bad[i].opt, bad[i].val);
        struct stat st;
        cr_expect_neq(stat(out, &st), 0, "%s %s: output folder created", bad[i].opt, bad[i].val);
    }
}

Test(sample, sha256_and_a1111_hashes, .init = mk, .fini = rm)
{
    /* FIPS 180-4 test vectors */
    uint8_t d[32];
    char hex[65];
    dl_sha256 s;
    const char *msgs[] = {"", "abc", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"};
    const char *want[] = {"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"};
    for (int i = 0; i < 3; i++) {
        dl_sha256_init(&s);
        dl_sha256_update(&s, msgs[i], strlen(msgs[i]));
        dl_sha256_final(&s, d);
        for (int k = 0; k < 32; k++) sprintf(hex + 2 * k, "%02x", d[k]);
        cr_expect_str_eq(hex, want[i]);
    }
    /* a million 'a' in odd-sized pieces */
    dl_sha256_init(&s);
    char buf[1000];
    memset(buf, 'a', sizeof buf);
    for (int left = 1000000; left > 0;) {
        int k = left < 777 ? left : 777;
        dl_sha256_update(&s, buf, (size_t)k);
        left -= k;
    }
    dl_sha256_final(&s, d);
    for (int k = 0; k < 32; k++) sprintf(hex + 2 * k, "%02x", d[k]);
    cr_expect_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    /* file hashes: whole file (model) and past the safetensors header (LoRA / AddNet) */
    char path[128];
    snprintf(path, sizeof path, "%s/x.safetensors", g_dir);
    FILE *f = fopen(path, "wb");
    uint8_t hdr[8] = {2, 0, 0, 0, 0, 0, 0, 0};
    fwrite(hdr, 1, 8, f);
    fputs("{}abc", f);
    fclose(f);
    char mh[11], lh[13];
    cr_assert_eq(dl_a1111_model_hash(NULL, path, mh), DL_OK);
    cr_assert_eq(dl_a1111_lora_hash(NULL, path, lh), DL_OK);
    cr_expect_str_eq(lh, "ba7816bf8f01");
    cr_expect_eq(strlen(mh), 10);
}

static int grid_cli(int argc, char **argv)
{
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_grid(argc, argv, devnull);
    fclose(devnull);
    return rc;
}

/* A LoRA x CFG grid: layout, labels, cells equal to single runs with the same seed. */
Test(sample, grid_lora_by_cfg, .init = mk, .fini = rm)
{
    char out[128];
    snprintf(out, sizeof out, "%s/grid.png", g_dir);
    char *argv[] = {"grid", "--model", (char *)tu_path("tests/golden/tiny_pipe"), "--prompt", PROMPT,
                    "--negative-prompt", NEGATIVE, "--width", "16", "--height", "16", "--steps", "4", "--seed", "42",
                    "--lora-dir", (char *)tu_path("tests/golden/tiny_pipe_loras"), "--x", "lora:epoch1,none",
                    "--y", "cfg:1,7", "--out", out, "--quiet", "--out-dir", g_dir, NULL};
    cr_assert_eq(grid_cli(26, argv), 0, "%s", dl_error_msg());
    dl_image im;
    cr_assert_eq(dl_image_load(&im, out), DL_OK, "%s", dl_error_msg());
    /* columns widen to the x labels: 7 chars x 6 + 8 = 50; label row 7 + 8; label column
     * "CFG 1" 5 x 6 + 8 = 38 */
    cr_assert(im.w == 38 + 2 * 50 && im.h == 15 + 2 * 16, "grid is %dx%d", im.w, im.h);
    dl_st_file g;
    tu_golden_open(&g, "sample");
    float *ref = tu_golden_f32(&g, "t2i_euler_a.image", NULL);
    int worst_base = 0;
    double diff_lora = 0;
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++)
            for (int c = 0; c < 3; c++) {
                int r = (int)lrintf(ref[(y * 16 + x) * 3 + c] * 255.0f);
                int base = im.data[((15 + 16 + y) * im.w + 38 + 50 + 17 + x) * 3 + c]; /* cell (none, CFG 7) */
                int lora = im.data[((15 + 16 + y) * im.w + 38 + 17 + x) * 3 + c];      /* cell (epoch1, CFG 7) */
                if (abs(base - r) > worst_base) worst_base = abs(base - r);
                diff_lora += abs(lora - r);
            }
    cr_expect_leq(worst_base, 1, "cell without LoRA differs from the single run by %d", worst_base);
    cr_expect_gt(diff_lora / 768, 2.0, "the LoRA cell looks like the base image");
    /* labels are drawn: dark pixels in the label row */
    int dark = 0;
    for (int i = 0; i < im.w * 15; i++) dark += im.data[3 * i] < 64;
    cr_expect_gt(dark, 50);
    free(ref);
    dl_st_close(&g);
    dl_image_free(&im);
    char *params = NULL, hash[13];
    cr_assert_eq(dl_png_read_text(out, "parameters", &params), DL_OK);
    cr_assert_eq(dl_a1111_lora_hash(NULL, tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors"), hash), DL_OK);
    char want[64];
    snprintf(want, sizeof want, "Lora hashes: \"epoch1: %s\"", hash);
    cr_expect(strstr(params, want) != NULL, "%s", params);
    cr_expect(strstr(params, "X: lora:epoch1,none, Y: cfg:1,7") != NULL, "%s", params);
    free(params);
    /* never overwritten */
    cr_expect_neq(grid_cli(26, argv), 0);
}

/* <lora:name:w> in the prompt: merged, kept in the parameters text, hashed. */
Test(sample, cli_lora_tag, .init = mk, .fini = rm)
{
    char *argv[] = {"sample", "--model", (char *)tu_path("tests/golden/tiny_pipe"), "--prompt",
                    PROMPT " <lora:epoch1:0.7>", "--negative-prompt", NEGATIVE, "--width", "16", "--height", "16",
                    "--steps", "3", "--seed", "13", "--sampler", "euler", "--lora-dir",
                    (char *)tu_path("tests/golden/tiny_pipe_loras"), "--out-dir", g_dir, "--quiet", NULL};
    cr_assert_eq(cli(22, argv), 0, "%s", dl_error_msg());
    char path[128];
    snprintf(path, sizeof path, "%s/00001-13.png", g_dir);
    dl_image im;
    cr_assert_eq(dl_image_load(&im, path), DL_OK, "%s", dl_error_msg());
    dl_st_file g;
    tu_golden_open(&g, "sample");
    float *ref = tu_golden_f32(&g, "lora_e1.image", NULL);
    int worst = 0;
    for (int i = 0; i < 16 * 16 * 3; i++) {
        int d = abs((int)im.data[i] - (int)lrintf(ref[i] * 255.0f));
        if (d > worst) worst = d;
    }
    cr_expect_leq(worst, 1, "pixel off by %d", worst);
    free(ref);
    dl_st_close(&g);
    dl_image_free(&im);
    char *params = NULL;
    cr_assert_eq(dl_png_read_text(path, "parameters", &params), DL_OK);
    cr_expect(strncmp(params, PROMPT " <lora:epoch1:0.7>\n", strlen(PROMPT) + 19) == 0, "%s", params);
    cr_expect(strstr(params, "Lora hashes: \"epoch1: ") != NULL, "%s", params);
    free(params);
}

/* The model hash of a single-file checkpoint: in the PNG (A1111's shorthash of the file's
 * SHA-256), computed on the first run, read from the hash cache on the second (no rehash), and
 * computed again without touching the cache under --no-hash-cache. */
Test(sample, cli_model_hash_comes_from_the_cache_on_the_second_run, .init = mk, .fini = rm)
{
    char out[128], cache[128], cfile[160];
    snprintf(out, sizeof out, "%s/out", g_dir);
    snprintf(cache, sizeof cache, "%s/cache", g_dir);
    snprintf(cfile, sizeof cfile, "%s/danlu/hashes.json", cache);
    cr_assert_eq(setenv("XDG_CACHE_HOME", cache, 1), 0);
    const char *model = tu_path("tests/golden/tiny_sd15.safetensors");
    char full[65], want[11];
    cr_assert_eq(dl_sha256_file(model, 0, full), DL_OK);
    memcpy(want, full, 10);
    want[10] = 0;
    char *argv[] = {"sample", "--model", (char *)model, "--tokenizer", (char *)tu_path("tests/golden/tiny_pipe/tokenizer"),
                    "--prompt", "a cat", "--width", "16", "--height", "16", "--steps", "1", "--seed", "5",
                    "--out-dir", out, "--threads", "2", "--quiet", "--overwrite", NULL, NULL};
    const int argc = 21; /* --overwrite: each run writes 00001-5.png again */
    for (int run = 0; run < 3; run++) {
        if (run == 2) argv[argc] = "--no-hash-cache";
        struct stat before;
        int had_cache = stat(cfile, &before) == 0;
        dl_hash_stats s0 = dl_hash_cache_stats();
        char png[200], *text = NULL;
        snprintf(png, sizeof png, "%s/00001-5.png", out);
        remove(png);
        cr_assert_eq(cli(argc + (run == 2), argv), 0, "run %d: %s", run, dl_error_msg());
        dl_hash_stats s1 = dl_hash_cache_stats();
        cr_assert_eq(dl_png_read_text(png, "parameters", &text), DL_OK, "%s", dl_error_msg());
        char line[64];
        snprintf(line, sizeof line, "Model hash: %s", want);
        cr_expect(strstr(text, line) != NULL, "run %d: '%s' not in the parameters: %s", run, line, text);
        free(text);
        if (run == 0) {
            cr_expect_eq(s1.computed, s0.computed + 1, "first run: the model was not hashed once");
            cr_expect_eq(s1.hits, s0.hits);
            cr_expect(stat(cfile, &before) == 0, "first run: no cache file %s", cfile);
        } else if (run == 1) {
            cr_expect_eq(s1.computed, s0.computed, "second run: the model was hashed again");
            cr_expect_eq(s1.hits, s0.hits + 1, "second run: the cache was not used");
        } else {
            cr_expect_eq(s1.computed, s0.computed + 1, "--no-hash-cache: the model was not hashed");
            cr_expect_eq(s1.hits, s0.hits, "--no-hash-cache: the cache was read");
            struct stat after;
            cr_assert(had_cache && stat(cfile, &after) == 0);
            cr_expect(after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
                      "--no-hash-cache: the cache file was rewritten");
        }
    }
    unsetenv("XDG_CACHE_HOME");
}

/* A tokenizer with more tokens than the text encoder: one message naming the tokenizer and both
 * sizes (the message was once formatted from freed memory, and the process crashed). */
Test(sample, tokenizer_larger_than_the_text_encoder_is_refused)
{
    dl_sd *sd = NULL;
    const char *bpe = tu_shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    cr_assert_eq(dl_sd_open(&sd, tu_path("tests/golden/tiny_pipe"), bpe, tu_ctx(), 0), DL_ERR);
    cr_expect_null(sd);
    cr_expect(strstr(dl_error_msg(), "bpe_simple_vocab_16e6.txt.gz: the tokenizer has 49408 tokens but the text "
                                     "encoder only"),
              "message: %s", dl_error_msg());
}
