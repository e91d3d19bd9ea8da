/* test_train_backend.c - the CUDA backend end to end on the emulated device (no GPU needed): a
 * short LoRA training run of the tiny SD1.5-architecture model (tests/golden/tiny_pipe) with
 * text-encoder LoRA, min-SNR weighting and gradient clipping gives the CPU backend's losses to
 * 1e-4 relative and its LoRA to 1e-4 (relative L2 over all parameters), and sampling with the
 * trained LoRA merged gives the CPU's picture within one 8-bit level. Every tensor of the run
 * lives in device memory that faults on a host dereference, so a host access to an activation,
 * gradient or optimizer state anywhere in the path crashes this test. On a device backend the
 * trainer prepares the next micro-batch while the device runs the current one: a run stopped
 * and resumed there gives the uninterrupted run's losses and LoRA bit for bit. */
#include "backend/backend.h"
#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "sample/pipeline.h"
#include "sample/sd_models.h"
#include "train/config.h"
#include "train/trainer.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char g_root[64];

/* root/data/3_dot/img<i>.png: 32x32, a dot of one colour on a field of another, and a caption */
static void make_data(void)
{
    strcpy(g_root, "/tmp/danlu-be-XXXXXX");
    cr_assert_not_null(mkdtemp(g_root));
    char p[256];
    snprintf(p, sizeof p, "%s/data", g_root);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/data/3_dot", g_root);
    cr_assert_eq(mkdir(p, 0700), 0);
    static const uint8_t col[3][3] = {{220, 40, 40}, {40, 180, 60}, {40, 70, 220}};
    static const char *caps[3] = {"a red dot, dotstyle", "a green dot, dotstyle", "a blue dot, dotstyle"};
    for (int i = 0; i < 3; i++) {
        dl_image img = {32, 32, malloc(32 * 32 * 3)};
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                const int in = (x - 16) * (x - 16) + (y - 16) * (y - 16) < 64;
                for (int c = 0; c < 3; c++) img.data[(y * 32 + x) * 3 + c] = in ? col[i][c] : col[(i + 1) % 3][c];
            }
        snprintf(p, sizeof p, "%s/data/3_dot/img%d.png", g_root, i);
        cr_assert_eq(dl_png_save(p, &img, NULL, 0), DL_OK, "%s", dl_error_msg());
        free(img.data);
        snprintf(p, sizeof p, "%s/data/3_dot/img%d.txt", g_root, i);
        FILE *f = fopen(p, "wb");
        cr_assert_not_null(f);
        fputs(caps[i], f);
        fclose(f);
    }
}

static void configure_p(const char *backend, const char *outname, const char *precision, dl_train_config *c)
{
    char data[256], out[256];
    snprintf(data, sizeof data, "%s/data", g_root);
    snprintf(out, sizeof out, "%s/%s", g_root, outname);
    const char *a[] = {"train", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                       "--train_data_dir", data, "--output_dir", out, "--resolution", "32", "--seed", "11",
                       "--threads", "2", "--backend", backend, "--max_train_steps", "4", "--train_batch_size", "2",
                       "--learning_rate", "2e-3", "--network_dim", "4", "--network_alpha", "2",
                       "--min_snr_gamma", "5", "--max_grad_norm", "0.05", "--cache_latents",
                       "--mixed_precision", precision};
    const int n = (int)(sizeof a / sizeof *a);
    dl_train_config_defaults(c);
    cr_assert_eq(dl_train_config_parse_args(c, n, (char **)a, NULL), DL_OK, "%s", dl_error_msg());
}
static void configure(const char *backend, const char *outname, dl_train_config *c)
{
    configure_p(backend, outname, "no", c);
}

static void train_on(const char *backend, dl_train_result *r)
{
    dl_train_config c;
    char name[64];
    snprintf(name, sizeof name, "out-%s", backend);
    configure(backend, name, &c);
    dl_trainer_opts o = {.log = NULL, .tty = 0};
    cr_assert_eq(dl_train_run(&c, &o, r), DL_OK, "%s: %s", backend, dl_error_msg());
    dl_train_config_free(&c);
}

/* Relative L2 distance between every tensor of two LoRA files taken together. */
static double lora_distance(const char *a, const char *b)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(fa.n_tensors, fb.n_tensors);
    double num = 0, den = 0;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        cr_assert_not_null(tb, "%s missing in %s", ta->name, b);
        const int64_t n = dl_st_numel(ta);
        float *x = malloc(sizeof(float) * (size_t)(n + 1)), *y = malloc(sizeof(float) * (size_t)(n + 1));
        cr_assert_eq(dl_st_read_f32(&fa, ta, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&fb, tb, y), DL_OK);
        for (int64_t k = 0; k < n; k++) num += ((double)x[k] - y[k]) * ((double)x[k] - y[k]), den += (double)x[k] * x[k];
        free(x);
        free(y);
    }
    dl_st_close(&fa);
    dl_st_close(&fb);
    return sqrt(num / (den > 0 ? den : 1));
}

/* One 32x32 picture with the LoRA merged, as 8-bit values. */
static void sample_on(const dl_backend *be, const char *lora, uint8_t *px)
{
    dl_ctx ctx;
    cr_assert_eq(dl_ctx_init_backend(&ctx, 2, be), DL_OK, "%s", dl_error_msg());
    dl_sd *sd;
    cr_assert_eq(dl_sd_open(&sd, tu_path("tests/golden/tiny_pipe"), NULL, &ctx, 1), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_sd_lora_add(sd, lora, 1.0f, 1.0f, 0), DL_OK, "%s", dl_error_msg());
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = "a red dot, dotstyle";
    p.negative = "blurry";
    p.width = p.height = 32;
    p.steps = 4;
    p.cfg_scale = 5.0f;
    cr_assert_eq(dl_sampler_kind_parse("euler", &p.sampler), DL_OK);
    uint64_t seed = 5;
    float img[32 * 32 * 3];
    cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, img, NULL, NULL, NULL), DL_OK, "%s: %s",
                 be->name, dl_error_msg());
    for (int i = 0; i < 32 * 32 * 3; i++) px[i] = (uint8_t)lrintf(fminf(fmaxf(img[i], 0.0f), 1.0f) * 255.0f);
    dl_sd_close(sd);
    dl_ctx_free(&ctx);
}

Test(train_backend, cuda_on_the_emulated_device_matches_cpu, .timeout = 900)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    make_data();
    dl_train_result rc, rg;
    train_on("cpu", &rc);
    train_on("cuda", &rg);
    cr_assert_eq(rc.steps_done, 4);
    cr_assert_eq(rg.steps_done, 4);
    double worst = 0;
    for (int i = 0; i < 4; i++) {
        const double d = fabs(rg.losses[i] - rc.losses[i]) / fabs(rc.losses[i]);
        if (d > worst) worst = d;
    }
    const double dw = lora_distance(rc.output_path, rg.output_path);
    fprintf(stderr, "train_backend: losses cpu %.6f %.6f %.6f %.6f; worst relative difference %.2e; LoRA %.2e\n",
            rc.losses[0], rc.losses[1], rc.losses[2], rc.losses[3], worst, dw);
    cr_expect(worst <= 1e-4, "losses differ by %.3g relative (bound 1e-4)", worst);
    cr_expect(dw <= 1e-4, "the trained LoRA differs by %.3g relative L2 (bound 1e-4)", dw);

    uint8_t a[32 * 32 * 3], b[32 * 32 * 3];
    sample_on(&dl_backend_cpu, rc.output_path, a);
    sample_on(dl_backend_find("cuda"), rc.output_path, b);
    int worst_px = 0;
    for (int i = 0; i < 32 * 32 * 3; i++)
        if (abs((int)a[i] - (int)b[i]) > worst_px) worst_px = abs((int)a[i] - (int)b[i]);
    fprintf(stderr, "train_backend: sample differs by at most %d levels\n", worst_px);
    cr_expect(worst_px <= 1, "the sample differs by %d levels (bound 1)", worst_px);
    dl_train_result_free(&rc);
    dl_train_result_free(&rg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    cr_expect_eq(system(cmd), 0);
}

/* --mixed_precision bf16 (bf16 matrix products, fp32 tensors) on the emulated device: the losses
 * stay within 2e-2 of the CPU's fp32 run, two runs are identical bit for bit, and the CPU backend
 * refuses bf16 by name. */
Test(train_backend, bf16_matrix_products_stay_close_and_deterministic, .timeout = 900)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    make_data();
    dl_train_result r32, rb[2];
    train_on("cpu", &r32);
    for (int run = 0; run < 2; run++) {
        dl_train_config c;
        configure_p("cuda", run ? "bf16-b" : "bf16-a", "bf16", &c);
        dl_trainer_opts o = {.log = NULL, .tty = 0};
        cr_assert_eq(dl_train_run(&c, &o, &rb[run]), DL_OK, "bf16 run %d: %s", run, dl_error_msg());
        dl_train_config_free(&c);
    }
    double worst = 0;
    for (int i = 0; i < 4; i++) {
        const double d = fabs(rb[0].losses[i] - r32.losses[i]) / fabs(r32.losses[i]);
        if (d > worst) worst = d;
        cr_expect_eq(rb[1].losses[i], rb[0].losses[i], "step %d: two bf16 runs differ (%.9g, %.9g)", i + 1,
                     rb[0].losses[i], rb[1].losses[i]);
    }
    const double dw = lora_distance(rb[0].output_path, rb[1].output_path);
    const double d32 = lora_distance(r32.output_path, rb[0].output_path);
    fprintf(stderr, "train_backend: bf16 matrix products: losses %.2e from fp32 (relative), LoRA %.2e; run to run %g\n",
            worst, d32, dw);
    cr_expect(worst <= 2e-2, "bf16 losses differ from fp32 by %.3g relative (bound 2e-2)", worst);
    cr_expect(worst > 0, "the bf16 run gave the fp32 losses exactly: bf16 was not applied");
    cr_expect_eq(dw, 0.0, "two bf16 runs gave different LoRAs");
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, rb[0].output_path), DL_OK, "%s", dl_error_msg());
    const char *mp = dl_st_meta(&f, "ss_mixed_precision");
    cr_expect(mp && strcmp(mp, "bf16") == 0, "ss_mixed_precision %s", mp ? mp : "(none)");
    dl_st_close(&f);
    dl_train_result_free(&r32);
    dl_train_result_free(&rb[0]);
    dl_train_result_free(&rb[1]);

    dl_train_config c; /* the CPU multiplies in fp32 only */
    configure_p("cpu", "bf16-cpu", "bf16", &c);
    dl_trainer_opts o = {.log = NULL, .tty = 0};
    dl_train_result r;
    cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "mixed_precision bf16") && strstr(dl_error_msg(), "cpu backend"), "%s",
              dl_error_msg());
    dl_train_result_free(&r);
    dl_train_config_free(&c);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    cr_expect_eq(system(cmd), 0);
}

/* The next micro-batch is drawn, its images decoded and VAE-encoded (latents not cached), its
 * captions encoded by the frozen text encoder and its noise drawn while the current step runs
 * (prefetch, on device backends): a state saved in between must record the data order and the
 * generators from before that draw. Stopped after 3 of 6 steps (accumulation 2, so a prefetched
 * batch crosses both a step and an epoch boundary) and resumed, the run gives the uninterrupted
 * run's losses and LoRA bit for bit. */
Test(train_backend, resume_with_the_next_batch_prefetched_is_exact, .timeout = 900)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    make_data();
    char data[256], out[256];
    snprintf(data, sizeof data, "%s/data", g_root);
    snprintf(out, sizeof out, "%s/out", g_root);
    dl_train_result r[3];
    for (int run = 0; run < 3; run++) {
        const char *a[] = {"train", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                           "--train_data_dir", data, "--output_dir", out, "--output_name", run ? "part" : "full",
                           "--resolution", "32", "--seed", "3", "--threads", "2", "--backend", "cuda",
                           "--max_train_steps", "6", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
                           "--learning_rate", "2e-3", "--network_dim", "4", "--network_alpha", "2",
                           "--network_train_unet_only", "--flip_aug", "--shuffle_caption", "--noise_offset", "0.05",
                           "--mixed_precision", "no"};
        dl_train_config c;
        dl_train_config_defaults(&c);
        cr_assert_eq(dl_train_config_parse_args(&c, (int)(sizeof a / sizeof *a), (char **)a, NULL), DL_OK, "%s",
                     dl_error_msg());
        if (run == 2) c.resume = strdup(r[1].output_path);
        dl_trainer_opts o = {.log = NULL, .tty = 0, .stop_after = run == 1 ? 3 : 0};
        cr_assert_eq(dl_train_run(&c, &o, &r[run]), DL_OK, "run %d: %s", run, dl_error_msg());
        dl_train_config_free(&c);
    }
    cr_assert_eq(r[0].steps_done, 6);
    cr_assert_eq(r[1].interrupted, 1);
    cr_assert_eq(r[1].steps_done, 3);
    cr_assert_eq(r[2].start_step, 3);
    cr_assert_eq(r[2].steps_done, 6);
    for (int i = 0; i < 3; i++) cr_expect_eq(r[1].losses[i], r[0].losses[i], "step %d", i + 1);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(r[2].losses[i], r[0].losses[3 + i], "step %d: resumed %.9g, uninterrupted %.9g", 4 + i,
                     r[2].losses[i], r[0].losses[3 + i]);
    cr_expect_eq(lora_distance(r[0].output_path, r[2].output_path), 0.0, "the resumed LoRA differs");
    for (int i = 0; i < 3; i++) dl_train_result_free(&r[i]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    cr_expect_eq(system(cmd), 0);
}

/* A device too small for the step: one error before any step that says what is needed, what is
 * free and what brings it down, and no output written. */
Test(train_backend, a_step_that_does_not_fit_is_refused_before_training, .timeout = 300)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    setenv("DANLU_EMU_MEMORY_MIB", "40", 1); /* the weights and the LoRA fit, the step does not */
    make_data();
    dl_train_config c;
    configure("cuda", "small", &c);
    dl_trainer_opts o = {.log = NULL, .tty = 0};
    dl_train_result r;
    cr_assert_eq(dl_train_run(&c, &o, &r), DL_ERR, "a step larger than the device's free memory ran");
    const char *m = dl_error_msg();
    cr_expect(strstr(m, "a training step needs") && strstr(m, "MiB") && strstr(m, "free") &&
                  strstr(m, "gradient_checkpointing") && strstr(m, "train_batch_size"),
              "the message does not say what is needed and what helps: %s", m);
    char p[256];
    snprintf(p, sizeof p, "%s/small/last.safetensors", g_root);
    struct stat st;
    cr_expect_neq(stat(p, &st), 0, "%s was written", p);
    dl_train_config_free(&c);
    unsetenv("DANLU_EMU_MEMORY_MIB");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    cr_expect_eq(system(cmd), 0);
}
