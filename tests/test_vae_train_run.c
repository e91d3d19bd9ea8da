/* test_vae_train_run.c - `danlu train-vae` end to end on the tiny SD1.5-architecture model
 * (tests/golden/tiny_pipe) and a generated dataset: an interrupted run resumed from its state ends
 * with the uninterrupted run's VAE bit for bit; gradient checkpointing changes nothing; only the
 * VAE's tensors change in the saved checkpoint, which reloads in danlu (single file and
 * diffusers folder); diffusers loads both layouts and decodes as danlu does on them
 * (tests/golden/vae_train_diffusers.safetensors from tests/gen/gen_vae_train_diffusers.py); the
 * CUDA backend on the emulated device gives the CPU's losses and VAE; bad options and models are
 * refused with messages naming them. */
#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/vae.h"
#include "train/config.h"
#include "train/vae_trainer.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_root[64];

/* root/data/2_blob/img<i>.png: 32x32, a disc of one colour on another */
static void make_data(void)
{
    strcpy(g_root, "/tmp/danlu-vt-XXXXXX");
    cr_assert_not_null(mkdtemp(g_root));
    char p[256];
    snprintf(p, sizeof p, "%s/data", g_root);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/data/2_blob", g_root);
    cr_assert_eq(mkdir(p, 0700), 0);
    static const uint8_t col[3][3] = {{220, 40, 40}, {40, 180, 60}, {40, 70, 220}};
    for (int i = 0; i < 3; i++) {
        dl_image img = {32, 32, malloc(32 * 32 * 3)};
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                const int in = (x - 10 - 4 * i) * (x - 10 - 4 * i) + (y - 16) * (y - 16) < 60;
                for (int c = 0; c < 3; c++) img.data[(y * 32 + x) * 3 + c] = in ? col[i][c] : col[(i + 1) % 3][c];
            }
        snprintf(p, sizeof p, "%s/data/2_blob/img%d.png", g_root, i);
        cr_assert_eq(dl_png_save(p, &img, NULL, 0), DL_OK, "%s", dl_error_msg());
        free(img.data);
    }
}

static void cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    cr_expect_eq(system(cmd), 0);
}

/* Parse a train-vae configuration: the common options, then extra (NULL-terminated). */
static int configure(dl_train_config *c, const char *outname, const char *const *extra)
{
    char data[256], out[256];
    snprintf(data, sizeof data, "%s/data", g_root);
    snprintf(out, sizeof out, "%s/%s", g_root, outname);
    const char *a[64] = {"train-vae", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                         "--train_data_dir", data, "--output_dir", out, "--resolution", "32", "--seed", "5",
                         "--threads", "2", "--train_batch_size", "2", "--learning_rate", "1e-3",
                         "--kl_weight", "1e-3", "--max_train_steps", "6", "--flip_aug"};
    int n = 22;
    for (int i = 0; extra && extra[i]; i++) a[n++] = extra[i];
    dl_train_config_defaults_for(c, DL_TRAIN_VAE);
    return dl_train_config_parse_args(c, n, (char **)a, NULL);
}

static void run_ok(const char *outname, const char *const *extra, int stop_after, dl_train_result *r)
{
    dl_train_config c;
    cr_assert_eq(configure(&c, outname, extra), DL_OK, "%s", dl_error_msg());
    dl_trainer_opts o = {.log = NULL, .tty = 0, .stop_after = stop_after};
    cr_assert_eq(dl_vae_train_run(&c, &o, r), DL_OK, "%s: %s", outname, dl_error_msg());
    dl_train_config_free(&c);
}

/* Compare the tensors of two single files whose names start with prefix: *same = bit-identical;
 * returns how many were compared. */
static int compare_prefix(const char *a, const char *b, const char *prefix, int *same)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(fa.n_tensors, fb.n_tensors);
    int n_cmp = 0;
    *same = 1;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        cr_assert_not_null(tb, "%s missing in %s", ta->name, b);
        if (strncmp(ta->name, prefix, strlen(prefix))) continue;
        n_cmp++;
        const int64_t n = dl_st_numel(ta);
        cr_assert_eq(n, dl_st_numel(tb));
        float *x = malloc(sizeof(float) * (size_t)(n + 1)), *y = malloc(sizeof(float) * (size_t)(n + 1));
        cr_assert_eq(dl_st_read_f32(&fa, ta, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&fb, tb, y), DL_OK);
        *same &= memcmp(x, y, sizeof(float) * (size_t)n) == 0;
        free(x), free(y);
    }
    dl_st_close(&fa);
    dl_st_close(&fb);
    return n_cmp;
}

/* Six steps straight, and three + Ctrl-C (the test hook) + resume for three more: the same VAE
 * bit for bit, and the same losses for the resumed steps. */
Test(vae_train_run, resume_gives_identical_weights, .init = make_data, .fini = cleanup)
{
    dl_train_result a, b, c;
    run_ok("full", NULL, 0, &a);
    run_ok("cut", NULL, 3, &b);
    cr_assert(b.interrupted);
    cr_assert_not_null(b.output_path);
    const char *extra[] = {"--resume", b.output_path, NULL};
    run_ok("cut", extra, 0, &c);
    cr_expect_eq(c.start_step, 3);
    for (int s = 3; s < 6; s++)
        cr_expect_eq(a.losses[s], c.losses[s - 3], "step %d: %.9g vs resumed %.9g", s + 1, a.losses[s], c.losses[s - 3]);
    int same = 0;
    const int n = compare_prefix(a.output_path, c.output_path, "first_stage_model.", &same);
    cr_expect_gt(n, 40, "%d VAE tensors", n);
    cr_expect(same, "the resumed run's VAE differs from the uninterrupted run's");
    cr_log_info("train-vae resume: %d VAE tensors bit-identical; losses %.6g .. %.6g", n, a.losses[0], a.losses[5]);
    dl_train_result_free(&a), dl_train_result_free(&b), dl_train_result_free(&c);
}

/* Gradient checkpointing and accumulation: checkpointing gives the same VAE bit for bit; the
 * saved file changes only the VAE (a learning rate of 0 keeps it too) and reloads in danlu. */
Test(vae_train_run, checkpointing_and_what_is_saved, .init = make_data, .fini = cleanup)
{
    dl_train_result a, b, z;
    const char *ck[] = {"--gradient_checkpointing", "--gradient_accumulation_steps", "2", NULL};
    const char *plain[] = {"--gradient_accumulation_steps", "2", NULL};
    const char *zero[] = {"--learning_rate", "0", "--optimizer_args", "weight_decay=0", NULL};
    run_ok("plain", plain, 0, &a);
    run_ok("ckpt", ck, 0, &b);
    run_ok("zero", zero, 0, &z);
    int same = 0;
    cr_expect_gt(compare_prefix(a.output_path, b.output_path, "first_stage_model.", &same), 40);
    cr_expect(same, "gradient checkpointing changed the trained VAE");
    cr_expect_gt(compare_prefix(a.output_path, z.output_path, "first_stage_model.", &same), 40);
    cr_expect(!same, "the trained VAE equals the untrained one");
    cr_expect_gt(compare_prefix(a.output_path, z.output_path, "model.diffusion_model.", &same), 100);
    cr_expect(same, "training the VAE changed the UNet");
    cr_expect_gt(compare_prefix(a.output_path, z.output_path, "cond_stage_model.", &same), 10);
    cr_expect(same, "training the VAE changed the text encoder");
    /* the trained single file loads as any checkpoint and its VAE decodes to finite values */
    dl_checkpoint ck2;
    cr_assert_eq(dl_ckpt_open(&ck2, a.output_path, NULL), DL_OK, "%s", dl_error_msg());
    size_t wb;
    cr_assert_eq(dl_vae_weights_bytes(&ck2, &wb), DL_OK, "%s", dl_error_msg());
    dl_arena w, s;
    cr_assert_eq(dl_arena_init(&w, "w", wb), DL_OK);
    dl_vae *m = malloc(sizeof *m);
    cr_assert_eq(dl_vae_load(m, &ck2, &w), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_arena_init(&s, "s", dl_vae_scratch_bytes(&m->cfg, 1, 32, 32) + 4096), DL_OK);
    float z0[16 * 16 * 4], img[32 * 32 * 3];
    tu_fill_uniform(z0, 16 * 16 * 4, 3, -1, 1);
    dl_vae_decode(tu_ctx(), m, 1, 16, 16, z0, img, &s);
    for (int i = 0; i < 32 * 32 * 3; i++) cr_assert(isfinite(img[i]));
    dl_vae_free(m), free(m);
    dl_arena_free(&w), dl_arena_free(&s);
    dl_ckpt_close(&ck2);
    dl_train_result_free(&a), dl_train_result_free(&b), dl_train_result_free(&z);
}

/* --save_model_as diffusers: a folder that opens as a model, with the trained VAE in vae/. */
Test(vae_train_run, diffusers_folder, .init = make_data, .fini = cleanup)
{
    dl_train_result a;
    const char *extra[] = {"--save_model_as", "diffusers", "--max_train_steps", "2", NULL};
    run_ok("dif", extra, 0, &a);
    char p[512];
    snprintf(p, sizeof p, "%s/vae/config.json", a.output_path);
    cr_expect_eq(access(p, R_OK), 0, "%s", p);
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, a.output_path, NULL), DL_OK, "%s", dl_error_msg());
    size_t wb;
    cr_expect_eq(dl_vae_weights_bytes(&ck, &wb), DL_OK, "%s", dl_error_msg());
    dl_ckpt_close(&ck);
    dl_train_result_free(&a);
}

/* Options of the other commands, or that mean nothing to a VAE, are unknown; a file that is not
 * a checkpoint and a missing model are refused naming them; nothing is written. */
Test(vae_train_run, bad_input_is_refused, .init = make_data, .fini = cleanup)
{
    static const char *const unknown[] = {"--network_dim", "--clip_skip", "--cache_latents", "--train_text_encoder",
                                          "--sample_prompts", "--noise_offset"};
    static const char *const value[] = {"4", "2", "true", "true", "p.txt", "0.1"};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        dl_train_config c;
        const char *extra[] = {unknown[i], value[i], NULL};
        cr_expect_eq(configure(&c, "bad", extra), DL_ERR, "%s accepted", unknown[i]);
        cr_expect(strstr(dl_error_msg(), unknown[i] + 2) != NULL, "%s: message '%s'", unknown[i], dl_error_msg());
        dl_train_config_free(&c);
    }
    {   /* kl_weight is train-vae's only */
        dl_train_config c;
        dl_train_config_defaults_for(&c, 0);
        cr_expect_eq(dl_train_config_set(&c, "kl_weight", "1e-6"), DL_ERR, "train accepted kl_weight");
        dl_train_config_free(&c);
        const char *neg[] = {"--kl_weight", "-1", NULL};
        cr_expect_eq(configure(&c, "bad", neg), DL_ERR, "a negative kl_weight accepted");
        cr_expect(strstr(dl_error_msg(), "kl_weight") != NULL, "%s", dl_error_msg());
        dl_train_config_free(&c);
    }
    static const char *const models[] = {"tests/golden/vae_train_ref.safetensors", "tests/golden/nonexistent"};
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) {
        dl_train_config c;
        const char *extra[] = {"--pretrained_model_name_or_path", tu_path(models[i]), NULL};
        cr_assert_eq(configure(&c, "bad", extra), DL_OK, "%s", dl_error_msg());
        dl_train_result r;
        cr_expect_eq(dl_vae_train_run(&c, NULL, &r), DL_ERR, "%s accepted", models[i]);
        cr_expect(strstr(dl_error_msg(), models[i]) != NULL, "message '%s' does not name %s", dl_error_msg(), models[i]);
        cr_log_info("train-vae on %s: %s", models[i], dl_error_msg());
        dl_train_config_free(&c);
    }
    char p[256];
    snprintf(p, sizeof p, "%s/bad/last.safetensors", g_root);
    cr_expect_neq(access(p, F_OK), 0, "a model was written");
}

/* s with {model}, {data}, {out} replaced (malloc'd) */
static char *expand(const char *s, const char *model, const char *data, const char *out)
{
    char buf[2048];
    if (!strcmp(s, "{model}")) snprintf(buf, sizeof buf, "%s", model);
    else if (!strcmp(s, "{data}")) snprintf(buf, sizeof buf, "%s", data);
    else if (!strcmp(s, "{out}")) snprintf(buf, sizeof buf, "%s", out);
    else snprintf(buf, sizeof buf, "%s", s);
    return strdup(buf);
}

/* danlu's VAE decoder of the model at path on z [1, h, w, L] into img (NHWC). */
static void decode_with(const char *path, int h, int wd, const float *z, float *img)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, path, NULL), DL_OK, "%s", dl_error_msg());
    size_t wb;
    cr_assert_eq(dl_vae_weights_bytes(&ck, &wb), DL_OK, "%s", dl_error_msg());
    dl_arena wa, s;
    cr_assert_eq(dl_arena_init(&wa, "w", wb), DL_OK);
    dl_vae *m = malloc(sizeof *m);
    cr_assert_eq(dl_vae_load(m, &ck, &wa), DL_OK, "%s", dl_error_msg());
    const int f = 1 << (m->cfg.n_blocks - 1);
    cr_assert_eq(dl_arena_init(&s, "s", dl_vae_scratch_bytes(&m->cfg, 1, h * f, wd * f) + 4096), DL_OK);
    dl_vae_decode(tu_ctx(), m, 1, h, wd, z, img, &s);
    dl_vae_free(m), free(m);
    dl_arena_free(&wa), dl_arena_free(&s);
    dl_ckpt_close(&ck);
}

/* The golden run's configuration re-run in process (same flags, seed and thread count): its saved
 * model (fp32 single file, fp16 diffusers folder), loaded back by danlu, decodes a fixed latent as
 * diffusers decoded the generator's file (AutoencoderKL.from_single_file for the single file,
 * StableDiffusionPipeline.from_pretrained for the folder; float64). Compared by effect
 * (docs/testing.md): the distance to diffusers' output relative to what training changed in it
 * (diffusers' output minus danlu's on the base model). Measured 3.8e-6 for both on the
 * generator's AVX-512 path; 4.4e-6 (single) and 8.8e-5 (the fp16 folder: a retrained weight that
 * differs in its last fp32 bits can round to another fp16 value) on the AVX2 and portable paths.
 * Bound 2e-3 (about 20x); the figures are logged. */
Test(vae_train_run, diffusers_loads_the_saved_models, .init = make_data, .fini = cleanup, .timeout = 300)
{
    dl_st_file g;
    tu_golden_open(&g, "vae_train_diffusers");
    const dl_st_tensor *tz = dl_st_find(&g, "in.z"), *td = dl_st_find(&g, "single.dec");
    cr_assert(tz && td);
    const int h = (int)tz->shape[1], w = (int)tz->shape[2];
    const int64_t nd = dl_st_numel(td);
    float *z = tu_golden_f32(&g, "in.z", NULL), *base = tu_alloc_nan((size_t)nd), *y = tu_alloc_nan((size_t)nd);
    char model[1024], data[1024], out[1024];
    snprintf(model, sizeof model, "%s", tu_path("tests/golden/tiny_pipe"));
    snprintf(data, sizeof data, "%s", tu_path("tests/golden/train_diffusers/data"));
    snprintf(out, sizeof out, "%s/out", g_root);
    decode_with(model, h, w, z, base);
    static const char *const runs[] = {"single", "folder"};
    for (int r = 0; r < 2; r++) {
        char key[64];
        snprintf(key, sizeof key, "%s.args", runs[r]);
        const char *js = dl_st_meta(&g, key);
        cr_assert_not_null(js, "golden has no %s", key);
        cJSON *args = cJSON_Parse(js);
        cr_assert(cJSON_IsArray(args));
        char *argv[64];
        int argc = 0;
        argv[argc++] = strdup("train-vae");
        const cJSON *a;
        cJSON_ArrayForEach(a, args) {
            cr_assert_lt(argc, 63);
            argv[argc++] = expand(a->valuestring, model, data, out);
        }
        argv[argc] = NULL;
        dl_train_config c;
        dl_train_config_defaults_for(&c, DL_TRAIN_VAE);
        cr_assert_eq(dl_train_config_parse_args(&c, argc, argv, NULL), DL_OK, "%s", dl_error_msg());
        dl_train_result res;
        cr_assert_eq(dl_vae_train_run(&c, NULL, &res), DL_OK, "%s", dl_error_msg());
        decode_with(res.output_path, h, w, z, y);
        snprintf(key, sizeof key, "%s.dec", runs[r]);
        float *ref = tu_golden_f32(&g, key, NULL);
        double num = 0, eff = 0;
        for (int64_t i = 0; i < nd; i++)
            num += ((double)y[i] - ref[i]) * ((double)y[i] - ref[i]), eff += ((double)ref[i] - base[i]) * ((double)ref[i] - base[i]);
        const double e = sqrt(num / eff), abs_rel = tu_rel_l2(y, ref, (size_t)nd);
        cr_log_info("train-vae %s: danlu's decoder on its saved model vs diffusers' on the generator's: %.2e of the "
                    "training's effect (%.2e of the output)", runs[r], e, abs_rel);
        cr_expect_gt(eff, 1e-6, "%s: training changed nothing", runs[r]);
        cr_expect(e <= 2e-3, "%s: decoder output differs from diffusers' by %.3g of the effect (bound 2e-3)", runs[r], e);
        free(ref);
        dl_train_result_free(&res);
        dl_train_config_free(&c);
        for (int i = 0; i < argc; i++) free(argv[i]);
        cJSON_Delete(args);
    }
    free(z), free(base), free(y);
    dl_st_close(&g);
}

/* Relative L2 distance over the tensors of two single files whose names start with prefix. */
static double part_distance(const char *a, const char *b, const char *prefix)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    double num = 0, den = 0;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        cr_assert_not_null(tb);
        if (strncmp(ta->name, prefix, strlen(prefix))) continue;
        const int64_t n = dl_st_numel(ta);
        float *x = malloc(sizeof(float) * (size_t)(n + 1)), *y = malloc(sizeof(float) * (size_t)(n + 1));
        cr_assert_eq(dl_st_read_f32(&fa, ta, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&fb, tb, y), DL_OK);
        for (int64_t k = 0; k < n; k++) num += ((double)x[k] - y[k]) * ((double)x[k] - y[k]), den += (double)x[k] * x[k];
        free(x), free(y);
    }
    dl_st_close(&fa);
    dl_st_close(&fb);
    return sqrt(num / (den > 0 ? den : 1));
}

/* The CUDA backend on the emulated device (memory that faults on a host access; the moments and
 * d(z) staged through the host): the CPU's losses within 1e-4 relative and its VAE within 1e-4
 * relative L2 after 3 steps; the figures are logged. */
Test(vae_train_run, cuda_on_the_emulated_device_matches_cpu, .init = make_data, .fini = cleanup, .timeout = 600)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    dl_train_result rc, rg;
    const char *oc[] = {"--max_train_steps", "3", "--backend", "cpu", NULL};
    const char *og[] = {"--max_train_steps", "3", "--backend", "cuda", NULL};
    run_ok("cpu", oc, 0, &rc);
    run_ok("cuda", og, 0, &rg);
    double worst = 0;
    for (int i = 0; i < 3; i++) worst = fmax(worst, fabs(rg.losses[i] - rc.losses[i]) / fabs(rc.losses[i]));
    const double dw = part_distance(rc.output_path, rg.output_path, "first_stage_model.");
    cr_log_info("train-vae cuda (emulated) vs cpu: losses %.2e relative, VAE %.2e relative L2", worst, dw);
    cr_expect(worst <= 1e-4, "losses differ by %.3g relative (bound 1e-4)", worst);
    cr_expect(dw <= 1e-4, "the trained VAE differs by %.3g relative L2 (bound 1e-4)", dw);
    dl_train_result_free(&rc);
    dl_train_result_free(&rg);
}
