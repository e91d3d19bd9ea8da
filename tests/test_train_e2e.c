/* test_train_e2e.c - `danlu train` end to end on the tiny SD1.5-architecture model
 * (tests/golden/tiny_pipe: random weights with a tiny tokenizer) and a dataset of 32x32 PNGs
 * with captions generated here: 200 steps complete and the loss falls; the kohya-layout output
 * loads with the LoRA reader (no unmatched keys) and carries ss_* / modelspec.* metadata; the
 * same seed gives the same losses and LoRA bit for bit; an interrupted run resumed from its
 * state reproduces the uninterrupted run's losses and weights exactly (with text-encoder LoRA,
 * gradient accumulation, flips, caption shuffle, noise offset, min-SNR and a cosine schedule). */
#include "cli/commands.h"
#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"
#include "model/checkpoint.h"
#include "train/config.h"
#include "train/state.h"
#include "train/train_sample.h"
#include "train/trainer.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[64];

static void rm_rf(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* dir/data/2_thing/img<i>.png (32x32, a coloured field with a textured square) + .txt */
static void make_dataset(void)
{
    strcpy(g_dir, "/tmp/danlu-train-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    char p[256];
    snprintf(p, sizeof p, "%s/data", g_dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/data/2_thing", g_dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    static const char *caps[] = {"red square, thing", "blue circle, thing", "green stripes, thing", "yellow dots, thing"};
    uint64_t s = 12345;
    for (int i = 0; i < 4; i++) {
        dl_image img = {32, 32, malloc(32 * 32 * 3)};
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                for (int c = 0; c < 3; c++) {
                    s = s * 6364136223846793005ull + 1442695040888963407ull;
                    int inside = x >= 8 && x < 24 && y >= 8 && y < 24;
                    img.data[(y * 32 + x) * 3 + c] = inside ? (uint8_t)(s >> 56) : (c == i % 3 ? 200 : 20);
                }
        snprintf(p, sizeof p, "%s/data/2_thing/img%d.png", g_dir, i);
        cr_assert_eq(dl_png_save(p, &img, NULL, 0), DL_OK, "%s", dl_error_msg());
        free(img.data);
        snprintf(p, sizeof p, "%s/data/2_thing/img%d.txt", g_dir, i);
        FILE *f = fopen(p, "wb");
        cr_assert_not_null(f);
        fputs(caps[i], f);
        fclose(f);
    }
}

/* Configure from flags (plus the common ones). */
static void configure(dl_train_config *c, const char *out, const char **extra)
{
    char data[256], outdir[256];
    snprintf(data, sizeof data, "%s/data", g_dir);
    snprintf(outdir, sizeof outdir, "%s/%s", g_dir, out);
    const char *a[64] = {"train", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                         "--train_data_dir", data, "--output_dir", outdir, "--resolution", "32", "--seed", "7",
                         "--threads", "2"};
    int n = 13;
    for (int i = 0; extra[i]; i++) a[n++] = extra[i];
    a[n] = NULL;
    dl_train_config_defaults(c);
    cr_assert_eq(dl_train_config_parse_args(c, n, (char **)a, NULL), DL_OK, "%s", dl_error_msg());
}

static void run(const dl_train_config *c, int stop_after, dl_train_result *r)
{
    dl_trainer_opts o = {.log = NULL, .tty = 0, .stop_after = stop_after};
    cr_assert_eq(dl_train_run(c, &o, r), DL_OK, "%s", dl_error_msg());
}

/* Every tensor of two safetensors files equal byte for byte. */
static void expect_same_tensors(const char *a, const char *b)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(fa.n_tensors, fb.n_tensors);
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        cr_assert_not_null(tb, "%s missing in %s", ta->name, b);
        cr_expect(ta->end - ta->begin == tb->end - tb->begin && memcmp(ta->data, tb->data, ta->end - ta->begin) == 0,
                  "%s differs between %s and %s", ta->name, a, b);
    }
    dl_st_close(&fa);
    dl_st_close(&fb);
}

Test(train_e2e, tiny_200_steps_loss_falls_and_output_loads, .timeout = 600)
{
    make_dataset();
    dl_train_config c;
    const char *ex[] = {"--max_train_steps", "200", "--learning_rate", "3e-3", "--network_dim", "4", "--network_alpha",
                        "4", "--network_train_unet_only", "--save_every_n_steps", "80", "--save_last_n_steps", "40",
                        "--training_comment", "e2e", NULL};
    configure(&c, "a", ex);
    dl_train_result r;
    run(&c, 0, &r);
    cr_assert_eq(r.steps_done, 200);
    cr_assert_eq(r.interrupted, 0);
    double first = 0, last = 0;
    for (int i = 0; i < 20; i++) {
        cr_assert(isfinite(r.losses[i]) && isfinite(r.losses[180 + i]));
        first += r.losses[i] / 20;
        last += r.losses[180 + i] / 20;
    }
    cr_expect(last < 0.6 * first, "loss did not fall: mean of the first 20 steps %.4f, of the last 20 %.4f", first,
              last);
    fprintf(stderr, "train_e2e: loss %.4f (steps 1-20) -> %.4f (steps 181-200)\n", first, last);

    /* the output loads with the reader: every key matched, 48 UNet modules of rank 4 */
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_pipe"), NULL), DL_OK, "%s", dl_error_msg());
    dl_lora_net net;
    dl_lora_report rep;
    cr_assert_eq(dl_lora_load(r.output_path, &ck.cfg, 1.0f, &net, &rep), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(rep.n_unmatched, 0);
    cr_expect_eq(rep.n_matched_keys, rep.n_keys);
    cr_expect(rep.kohya);
    cr_expect_eq(rep.n_text, 0);
    cr_expect(rep.n_unet > 0);
    cr_expect_eq(net.mods[0].lora.r, 4);
    int nonzero_b = 0;
    for (int i = 0; i < net.n; i++)
        for (int j = 0; j < net.mods[i].lora.r * net.mods[i].out; j++) nonzero_b += net.mods[i].lora.B[j] != 0;
    cr_expect(nonzero_b > 0, "the up weights are still zero: nothing was trained");
    dl_lora_net_free(&net);
    dl_ckpt_close(&ck);

    /* metadata */
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, r.output_path), DL_OK);
    static const struct { const char *k, *v; } meta[] = {
        {"ss_network_module", "networks.lora"}, {"ss_network_dim", "4"}, {"ss_network_alpha", "4.0"},
        {"ss_steps", "200"}, {"ss_seed", "7"}, {"ss_v2", "False"}, {"ss_base_model_version", "sd_v1"},
        {"ss_resolution", "(32, 32)"}, {"ss_num_train_images", "8"}, {"ss_learning_rate", "0.003"},
        {"ss_clip_skip", "1"}, {"ss_training_comment", "e2e"}, {"ss_output_name", "last"},
        {"modelspec.architecture", "stable-diffusion-v1/lora"}, {"modelspec.sai_model_spec", "1.0.0"},
        {"modelspec.prediction_type", "epsilon"},
    };
    for (size_t i = 0; i < sizeof meta / sizeof *meta; i++) {
        const char *v = dl_st_meta(&f, meta[i].k);
        cr_expect(v && !strcmp(v, meta[i].v), "%s = '%s', expected '%s'", meta[i].k, v ? v : "(missing)", meta[i].v);
    }
    const char *tf = dl_st_meta(&f, "ss_tag_frequency");
    cr_expect(tf && strstr(tf, "\"2_thing\"") && strstr(tf, "\"thing\":8") == NULL && strstr(tf, "\"thing\":4"),
              "ss_tag_frequency %s", tf ? tf : "(missing)");
    cr_expect_not_null(dl_st_meta(&f, "ss_training_started_at"));
    cr_expect_not_null(dl_st_meta(&f, "ss_training_finished_at"));
    cr_expect_not_null(dl_st_meta(&f, "danlu.config"));
    dl_st_close(&f);

    /* step saves as sd-scripts: at step 160, save_last_n_steps 40 removes step 80 (160 - 40 - 1 rounded down to 80) */
    char p[512];
    snprintf(p, sizeof p, "%s/a/last-step00000160.safetensors", g_dir);
    cr_expect_eq(access(p, F_OK), 0, "%s missing", p);
    snprintf(p, sizeof p, "%s/a/last-step00000080.safetensors", g_dir);
    cr_expect_neq(access(p, F_OK), 0, "%s not removed", p);
    snprintf(p, sizeof p, "%s/a/last_log.csv", g_dir);
    cr_expect_eq(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/a/last_loss.png", g_dir);
    dl_image img = {0};
    cr_expect_eq(dl_image_load(&img, p), DL_OK, "%s", dl_error_msg());
    dl_image_free(&img);

    /* same seed, same config, 12 steps (constant LR), latents cached in memory and on disk (the
     * encoding is a function of the item, cached or not): the first 12 losses bit for bit. Samples
     * at step 6 from a prompt file (sampling touches no training RNG). */
    char prompts[256];
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", g_dir);
    FILE *pf = fopen(prompts, "wb");
    cr_assert_not_null(pf);
    fputs("# comment\nred square, thing --n blurry --w 32 --h 32 --s 3 --l 5 --d 3\n\nblue circle --w 40 --h 32 --s 2\n", pf);
    fclose(pf);
    dl_train_config c2;
    const char *ex2[] = {"--max_train_steps", "12", "--learning_rate", "3e-3", "--network_dim", "4", "--network_alpha",
                         "4", "--network_train_unet_only", "--cache_latents_to_disk", "--sample_every_n_steps", "6",
                         "--sample_prompts", prompts, NULL};
    configure(&c2, "b", ex2);
    dl_train_result r2;
    run(&c2, 0, &r2);
    for (int i = 0; i < 12; i++)
        cr_expect_eq(r2.losses[i], r.losses[i], "step %d: %.17g vs %.17g", i + 1, r2.losses[i], r.losses[i]);
    dl_train_result_free(&r2);
    static const char *samples[] = {"last_000006_00.png", "last_000006_01.png", "last_000012_00.png", "last_000012_01.png"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/b/sample/%s", g_dir, samples[i]);
        cr_expect_eq(dl_image_load(&img, p), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(img.w, i % 2 ? 40 : 32);
        dl_image_free(&img);
        char *info = NULL;
        cr_expect_eq(dl_png_read_text(p, "parameters", &info), DL_OK);
        cr_expect(info && strstr(info, i % 2 ? "blue circle" : "Negative prompt: blurry"), "%s", info ? info : "");
        free(info);
    }
    /* sampling during training views the trainer's networks with the LoRA attached (no reload):
     * the step-12 sample equals `danlu sample` with the saved fp32 LoRA merged, up to the fp32
     * rounding of merging (measured: 1 level of 255 in 2 of 3072 values) */
    {
        char lora[300], outdir[300], got[320];
        snprintf(lora, sizeof lora, "%s/b/last.safetensors", g_dir);
        snprintf(outdir, sizeof outdir, "%s/b/cli", g_dir);
        const char *a[] = {"sample", "--model", tu_path("tests/golden/tiny_pipe"), "--lora", lora, "--prompt",
                           "red square, thing", "--negative-prompt", "blurry", "--width", "32", "--height", "32",
                           "--steps", "3", "--cfg-scale", "5", "--seed", "3", "--sampler", "ddim", "--out-dir", outdir,
                           "--quiet", NULL};
        FILE *devnull = fopen("/dev/null", "w");
        cr_assert_eq(dl_cmd_sample(24, (char **)a, devnull), 0, "%s", dl_error_msg());
        fclose(devnull);
        snprintf(got, sizeof got, "%s/00001-3.png", outdir);
        snprintf(p, sizeof p, "%s/b/sample/last_000012_00.png", g_dir);
        dl_image x = {0}, y = {0};
        cr_assert_eq(dl_image_load(&x, p), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_image_load(&y, got), DL_OK, "%s", dl_error_msg());
        cr_assert(x.w == y.w && x.h == y.h);
        int maxd = 0;
        long sum = 0;
        for (int i = 0; i < x.w * x.h * 3; i++) {
            int d = abs((int)x.data[i] - (int)y.data[i]);
            sum += d;
            if (d > maxd) maxd = d;
        }
        cr_expect(maxd <= 2 && sum <= 64, "training sample vs danlu sample: max %d, sum %ld", maxd, sum);
        dl_image_free(&x);
        dl_image_free(&y);
    }
    /* the disk cache is reused by a second run (same losses again) */
    dl_train_config_free(&c2);
    const char *ex3[] = {"--max_train_steps", "3", "--learning_rate", "3e-3", "--network_dim", "4", "--network_alpha",
                         "4", "--network_train_unet_only", "--cache_latents_to_disk", NULL};
    configure(&c2, "b", ex3);
    run(&c2, 0, &r2);
    for (int i = 0; i < 3; i++) cr_expect_eq(r2.losses[i], r.losses[i], "cached run step %d", i + 1);
    dl_train_result_free(&r2);
    dl_train_config_free(&c2);
    dl_train_result_free(&r);
    dl_train_config_free(&c);
    rm_rf(g_dir);
}

Test(train_e2e, interrupt_and_resume_matches_uninterrupted, .timeout = 600)
{
    make_dataset();
    static const char *ex[] = {"--max_train_steps", "10", "--learning_rate", "2e-3", "--text_encoder_lr", "1e-3",
                               "--network_dim", "2", "--network_alpha", "1", "--gradient_accumulation_steps", "2",
                               "--flip_aug", "--shuffle_caption", "--noise_offset", "0.05", "--min_snr_gamma", "5",
                               "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--train_batch_size", "2", NULL};
    /* uninterrupted */
    dl_train_config c;
    configure(&c, "full", ex);
    dl_train_result full;
    run(&c, 0, &full);
    cr_assert_eq(full.steps_done, 10);
    dl_train_config_free(&c);

    /* interrupted after 4 steps: a state, no final LoRA */
    configure(&c, "part", ex);
    dl_train_result part;
    run(&c, 4, &part);
    cr_assert_eq(part.interrupted, 1);
    cr_assert_eq(part.steps_done, 4);
    for (int i = 0; i < 4; i++) cr_expect_eq(part.losses[i], full.losses[i], "step %d", i + 1);
    char state[512], final[512];
    snprintf(state, sizeof state, "%s", part.output_path);
    snprintf(final, sizeof final, "%s/part/last.safetensors", g_dir);
    cr_expect_neq(access(final, F_OK), 0, "an interrupted run wrote its final LoRA");
    dl_train_state st;
    cr_assert_eq(dl_train_state_load(state, &st), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(st.step, 4);
    dl_train_state_free(&st);
    dl_train_result_free(&part);
    dl_train_config_free(&c);

    /* resumed: steps 5..10 exactly as the uninterrupted run, same final LoRA bit for bit */
    configure(&c, "part", ex);
    free(c.resume);
    c.resume = strdup(state);
    dl_train_result res;
    run(&c, 0, &res);
    cr_assert_eq(res.start_step, 4);
    cr_assert_eq(res.steps_done, 10);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(res.losses[i], full.losses[4 + i], "step %d: resumed %.17g, uninterrupted %.17g", 5 + i,
                     res.losses[i], full.losses[4 + i]);
    expect_same_tensors(res.output_path, full.output_path);
    /* the text encoder was trained too */
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, res.output_path), DL_OK);
    int te = 0;
    for (int i = 0; i < f.n_tensors; i++) te += strncmp(f.tensors[i].name, "lora_te_", 8) == 0;
    cr_expect(te > 0, "no lora_te_ tensors");
    dl_st_close(&f);
    /* the CSV of the resumed run holds all 10 steps */
    char csv[512], line[256];
    snprintf(csv, sizeof csv, "%s/part/last_log.csv", g_dir);
    FILE *fc = fopen(csv, "rb");
    cr_assert_not_null(fc);
    int rows = 0;
    while (fgets(line, sizeof line, fc)) rows++;
    fclose(fc);
    cr_expect_eq(rows, 11);
    dl_train_result_free(&res);
    dl_train_result_free(&full);
    dl_train_config_free(&c);
    rm_rf(g_dir);
}

Test(train_e2e, bad_input_messages)
{
    make_dataset();
    dl_train_config c;
    const char *ex[] = {"--max_train_steps", "1", NULL};
    /* missing base model */
    configure(&c, "x", ex);
    free(c.pretrained_model_name_or_path);
    c.pretrained_model_name_or_path = strdup("/nonexistent/model.safetensors");
    dl_train_result r;
    dl_trainer_opts o = {.tty = 0};
    cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "/nonexistent/model.safetensors") != NULL, "%s", dl_error_msg());
    dl_train_config_free(&c);
    /* empty dataset */
    configure(&c, "x", ex);
    char empty[256];
    snprintf(empty, sizeof empty, "%s/empty", g_dir);
    mkdir(empty, 0700);
    free(c.train_data_dir);
    c.train_data_dir = strdup(empty);
    cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), empty) != NULL, "%s", dl_error_msg());
    dl_train_config_free(&c);
    /* a resume state that is not one */
    configure(&c, "x", ex);
    c.resume = strdup(tu_path("tests/golden/lr.safetensors"));
    cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "lr.safetensors") != NULL, "%s", dl_error_msg());
    dl_train_config_free(&c);
    /* output directory not writable (a file in the way) */
    configure(&c, "x", ex);
    char file[256];
    snprintf(file, sizeof file, "%s/afile", g_dir);
    FILE *f = fopen(file, "wb");
    fclose(f);
    free(c.output_dir);
    c.output_dir = strdup(file);
    cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "afile") != NULL, "%s", dl_error_msg());
    dl_train_config_free(&c);
    rm_rf(g_dir);
}

Test(train_e2e, prompt_file_lines)
{
    dl_train_prompt p;
    cr_assert_eq(dl_train_prompt_parse_line("  a cat, sitting --n ugly, bad --w 768 --h 640 --s 25 --l 6.5 --d 42 --ss k_euler",
                                            &p, "t"), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(p.prompt, "a cat, sitting");
    cr_expect_str_eq(p.negative, "ugly, bad");
    cr_expect_eq(p.width, 768);
    cr_expect_eq(p.height, 640);
    cr_expect_eq(p.steps, 25);
    cr_expect_eq(p.scale, 6.5);
    cr_expect_eq(p.seed, 42);
    cr_expect_str_eq(p.sampler, "k_euler");
    dl_train_prompt *arr = malloc(sizeof *arr);
    arr[0] = p;
    dl_train_prompts_free(arr, 1);
    cr_assert_eq(dl_train_prompt_parse_line("just a prompt", &p, "t"), DL_OK);
    cr_expect_eq(p.width, 512);
    cr_expect_eq(p.steps, 30);
    cr_expect_eq(p.scale, 7.5);
    cr_expect_eq(p.seed, -1);
    cr_expect_str_eq(p.negative, "");
    arr = malloc(sizeof *arr);
    arr[0] = p;
    dl_train_prompts_free(arr, 1);
    cr_assert_eq(dl_train_prompt_parse_line("# a comment", &p, "t"), DL_OK);
    cr_expect_null(p.prompt);
    cr_expect_eq(dl_train_prompt_parse_line("x --w wide", &p, "file.txt:3"), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "file.txt:3") && strstr(dl_error_msg(), "--w wide"), "%s", dl_error_msg());
    cr_expect_eq(dl_train_prompt_parse_line("x --ss plms_fast", &p, "t"), DL_ERR);
    cr_expect_eq(dl_train_sampler_check("ddim"), DL_OK);
    cr_expect_eq(dl_train_sampler_check("lms"), DL_ERR);
}

/* A real SIGINT to a training process (forked, running `danlu train`): it saves a state and
 * exits 0; the state loads and sits at the step the CSV log reached. */
Test(train_e2e, sigint_saves_state_and_exits, .timeout = 300)
{
    make_dataset();
    char data[256], out[256], csv[300], state[300];
    snprintf(data, sizeof data, "%s/data", g_dir);
    snprintf(out, sizeof out, "%s/sig", g_dir);
    snprintf(csv, sizeof csv, "%s/last_log.csv", out);
    snprintf(state, sizeof state, "%s/last-state.safetensors", out);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        const char *a[] = {"train", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                           "--train_data_dir", data, "--output_dir", out, "--resolution", "32", "--seed", "3",
                           "--threads", "1", "--max_train_steps", "100000", "--network_train_unet_only", NULL};
        FILE *devnull = fopen("/dev/null", "wb");
        if (devnull) { dup2(fileno(devnull), 2); }
        _exit(dl_cmd_train(16, (char **)a, devnull ? devnull : stdout));
    }
    /* wait until a few steps are logged */
    int rows = 0;
    for (int tries = 0; tries < 1200 && rows < 4; tries++) {
        usleep(100000);
        FILE *f = fopen(csv, "rb");
        if (!f) continue;
        char line[256];
        rows = 0;
        while (fgets(line, sizeof line, f)) rows++;
        fclose(f);
    }
    cr_assert(rows >= 4, "training did not start logging");
    kill(pid, SIGINT);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    dl_train_state st;
    cr_assert_eq(dl_train_state_load(state, &st), DL_OK, "%s", dl_error_msg());
    cr_expect(st.step >= 3);
    FILE *f = fopen(csv, "rb");
    cr_assert_not_null(f);
    char line[256];
    rows = 0;
    while (fgets(line, sizeof line, f)) rows++;
    fclose(f);
    cr_expect_eq(rows - 1, st.step, "CSV has %d steps, state %lld", rows - 1, (long long)st.step);
    dl_train_state_free(&st);
    rm_rf(g_dir);
}

/* fp16 + PEFT layout output; epoch saves; network_weights starts from a file (with lr 0 the
 * output equals it bit for bit). */
Test(train_e2e, formats_epochs_and_network_weights, .timeout = 300)
{
    make_dataset();
    dl_train_config c;
    dl_train_result r;
    const char *ex1[] = {"--max_train_steps", "2", "--learning_rate", "1e-3", "--network_train_unet_only",
                         "--save_precision", "fp16", "--lora_format", "peft", NULL};
    configure(&c, "peft", ex1);
    run(&c, 0, &r);
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, r.output_path), DL_OK, "%s", dl_error_msg());
    cr_assert(f.n_tensors > 0);
    for (int i = 0; i < f.n_tensors; i++) {
        cr_expect_eq(f.tensors[i].dtype, DL_F16, "%s", f.tensors[i].name);
        cr_expect(strncmp(f.tensors[i].name, "lora_unet_", 10) != 0, "%s: kohya name in a PEFT file", f.tensors[i].name);
    }
    dl_st_close(&f);
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_pipe"), NULL), DL_OK, "%s", dl_error_msg());
    dl_lora_net net;
    dl_lora_report rep;
    cr_assert_eq(dl_lora_load(r.output_path, &ck.cfg, 1.0f, &net, &rep), DL_OK, "%s", dl_error_msg());
    cr_expect(rep.peft && rep.n_unmatched == 0 && rep.n_unet > 0);
    dl_lora_net_free(&net);
    dl_ckpt_close(&ck);
    dl_train_result_free(&r);
    dl_train_config_free(&c);

    /* 10 steps of batch 1 over 8 samples per epoch: epoch 1 ends at step 8 and is saved */
    const char *ex2[] = {"--max_train_steps", "10", "--learning_rate", "1e-3", "--network_train_unet_only",
                         "--save_every_n_epochs", "1", NULL};
    configure(&c, "x", ex2);
    run(&c, 0, &r);
    char p[512], first[512];
    snprintf(p, sizeof p, "%s/x/last-000001.safetensors", g_dir);
    cr_expect_eq(access(p, F_OK), 0, "%s missing", p);
    snprintf(first, sizeof first, "%s", r.output_path);
    dl_train_result_free(&r);
    dl_train_config_free(&c);

    const char *ex3[] = {"--max_train_steps", "1", "--learning_rate", "0", "--network_train_unet_only",
                         "--network_weights", first, NULL};
    configure(&c, "y", ex3);
    run(&c, 0, &r);
    expect_same_tensors(r.output_path, first);
    dl_train_result_free(&r);
    dl_train_config_free(&c);
    rm_rf(g_dir);
}

/* Aspect-ratio buckets: images of several shapes, batches of 2 from one bucket each, text
 * encoder trained, latents cached with flips; the run completes with finite losses and the
 * buckets are recorded in ss_bucket_info. */
Test(train_e2e, buckets_batches_from_one_bucket, .timeout = 300)
{
    strcpy(g_dir, "/tmp/danlu-train-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    char p[256];
    snprintf(p, sizeof p, "%s/data", g_dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/data/3_mix", g_dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    static const int sizes[][2] = {{64, 64}, {128, 64}, {64, 128}, {96, 64}};
    for (int i = 0; i < 4; i++) {
        int w = sizes[i][0], h = sizes[i][1];
        dl_image img = {w, h, malloc((size_t)w * h * 3)};
        for (int j = 0; j < w * h * 3; j++) img.data[j] = (uint8_t)(j * 37 + i * 11);
        snprintf(p, sizeof p, "%s/data/3_mix/im%d.png", g_dir, i);
        cr_assert_eq(dl_png_save(p, &img, NULL, 0), DL_OK);
        free(img.data);
        snprintf(p, sizeof p, "%s/data/3_mix/im%d.txt", g_dir, i);
        FILE *f = fopen(p, "wb");
        fprintf(f, "tag%d, mix", i);
        fclose(f);
    }
    char data[256], out[256];
    snprintf(data, sizeof data, "%s/data", g_dir);
    snprintf(out, sizeof out, "%s/out", g_dir);
    const char *a[] = {"train", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"), "--train_data_dir",
                       data, "--output_dir", out, "--resolution", "96", "--enable_bucket", "--min_bucket_reso", "64",
                       "--max_bucket_reso", "128", "--max_train_steps", "4", "--train_batch_size", "2", "--seed", "1",
                       "--threads", "2", "--cache_latents", "--flip_aug", "--learning_rate", "1e-3", NULL};
    dl_train_config c;
    dl_train_config_defaults(&c);
    cr_assert_eq(dl_train_config_parse_args(&c, 26, (char **)a, NULL), DL_OK, "%s", dl_error_msg());
    dl_train_result r;
    run(&c, 0, &r);
    for (int i = 0; i < 4; i++) cr_expect(isfinite(r.losses[i]) && r.losses[i] > 0);
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, r.output_path), DL_OK);
    const char *bi = dl_st_meta(&f, "ss_bucket_info");
    cr_expect(bi && strstr(bi, "\"resolution\":[128,64]") && strstr(bi, "\"resolution\":[64,128]"), "%s", bi ? bi : "");
    int te = 0;
    for (int i = 0; i < f.n_tensors; i++) te += strncmp(f.tensors[i].name, "lora_te_", 8) == 0;
    cr_expect(te > 0);
    dl_st_close(&f);
    dl_train_result_free(&r);
    dl_train_config_free(&c);
    rm_rf(g_dir);
}

/* The whole file (malloc'd, *n its size), or NULL. */
static char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = b ? fread(b, 1, (size_t)len, f) : 0;
    if (b) b[*n] = 0;
    fclose(f);
    return b;
}

/* Disk full while saving: a second run into the same output directory, with the file size
 * limited (RLIMIT_FSIZE, SIGXFSZ ignored so writes fail with EFBIG), stops with an error naming
 * the output, leaves the good LoRA and state of the first run byte for byte as they were, and no
 * temporary file behind. */
Test(train_e2e, disk_full_keeps_the_previous_outputs, .timeout = 300)
{
    make_dataset();
    dl_train_config c;
    const char *ex[] = {"--max_train_steps", "2", "--learning_rate", "3e-3", "--network_dim", "4", "--network_alpha",
                        "4", "--save_state", NULL};
    configure(&c, "df", ex);
    dl_train_result r;
    run(&c, 0, &r);
    dl_train_result_free(&r);
    char lora[400], state[400], dir[300];
    snprintf(dir, sizeof dir, "%s/df", g_dir);
    snprintf(lora, sizeof lora, "%s/last.safetensors", dir);
    snprintf(state, sizeof state, "%s/last-state.safetensors", dir);
    size_t nl = 0, ns = 0;
    char *l0 = read_all(lora, &nl), *s0 = read_all(state, &ns);
    cr_assert(l0 && s0 && nl > 4096 && ns > 4096, "first run outputs: %zu, %zu bytes", nl, ns);
    char errfile[300];
    snprintf(errfile, sizeof errfile, "%s/err.txt", g_dir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {4096, 4096}; /* the CSV log fits, the LoRA does not */
        setrlimit(RLIMIT_FSIZE, &rl);
        dl_trainer_opts o = {.log = NULL, .tty = 0};
        dl_train_config c2;
        const char *ex2[] = {"--max_train_steps", "3", "--learning_rate", "1e-3", "--network_dim", "4",
                             "--network_alpha", "4", "--save_state", NULL};
        configure(&c2, "df", ex2);
        int rc = dl_train_run(&c2, &o, &r);
        FILE *e = fopen(errfile, "w");
        if (e) fprintf(e, "%s", rc == DL_OK ? "ok" : dl_error_msg()), fclose(e);
        _exit(rc == DL_OK ? 0 : 3);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 3, "the run with a full disk did not fail (status %d)", st);
    size_t ne = 0;
    char *err = read_all(errfile, &ne);
    cr_assert_not_null(err);
    cr_expect(strstr(err, dir) != NULL, "the error does not name the output: %s", err);
    size_t nl2 = 0, ns2 = 0;
    char *l1 = read_all(lora, &nl2), *s1 = read_all(state, &ns2);
    cr_expect(l1 && nl2 == nl && memcmp(l0, l1, nl) == 0, "the previous LoRA was changed");
    cr_expect(s1 && ns2 == ns && memcmp(s0, s1, ns) == 0, "the previous state was changed");
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    while ((de = readdir(d))) cr_expect(strstr(de->d_name, ".tmp.") == NULL, "a temporary file was left: %s", de->d_name);
    closedir(d);
    free(l0), free(s0), free(l1), free(s1), free(err);
    dl_train_config_free(&c);
    rm_rf(g_dir);
}
