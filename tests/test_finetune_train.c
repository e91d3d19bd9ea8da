/* test_finetune_train.c - `danlu finetune` end to end on the tiny SD1.5-architecture model
 * (tests/golden/tiny_pipe) and a generated dataset: an interrupted run resumed from its state
 * ends with the uninterrupted run's weights bit for bit; the saved checkpoint (single file and
 * diffusers folder) reloads in danlu and samples, and with a learning rate of 0 is tensor for
 * tensor what `danlu convert` writes; bad options and outputs are refused with messages naming
 * them; the CUDA backend on the emulated device gives the CPU's losses and weights; the saved
 * single file and folder, as diffusers loads them, give danlu's UNet output on them
 * (tests/golden/finetune_diffusers.safetensors from tests/gen/gen_finetune_diffusers.py). */
#include "backend/backend.h"
#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "lora/ckpt_tools.h"
#include "sample/pipeline.h"
#include "sample/sd_models.h"
#include "train/provenance.h"
#include "train/config.h"
#include "train/trainer.h"
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

/* root/data/3_dot/img<i>.png: 32x32, a dot of one colour on a field of another, and a caption */
static void make_data(void)
{
    strcpy(g_root, "/tmp/danlu-ft-XXXXXX");
    cr_assert_not_null(mkdtemp(g_root));
    char p[256];
    snprintf(p, sizeof p, "%s/data", g_root);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/data/3_dot", g_root);
    cr_assert_eq(mkdir(p, 0700), 0);
    static const uint8_t col[3][3] = {{200, 50, 30}, {30, 160, 90}, {60, 60, 210}};
    static const char *caps[3] = {"a red dot, dotstyle", "a green dot, dotstyle", "a blue dot, dotstyle"};
    for (int i = 0; i < 3; i++) {
        dl_image img = {32, 32, malloc(32 * 32 * 3)};
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                const int in = (x - 12 - 3 * i) * (x - 12 - 3 * i) + (y - 16) * (y - 16) < 50;
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

static void cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    cr_expect_eq(system(cmd), 0);
}

/* Parse a finetune configuration: the common options, then extra (NULL-terminated). */
static int configure(dl_train_config *c, const char *outname, const char *const *extra)
{
    char data[256], out[256];
    snprintf(data, sizeof data, "%s/data", g_root);
    snprintf(out, sizeof out, "%s/%s", g_root, outname);
    const char *a[64] = {"finetune", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                         "--train_data_dir", data, "--output_dir", out, "--resolution", "32", "--seed", "11",
                         "--threads", "2", "--train_batch_size", "2", "--learning_rate", "1e-4",
                         "--cache_latents", "--max_grad_norm", "1"};
    int n = 20;
    for (int i = 0; extra && extra[i]; i++) a[n++] = extra[i];
    dl_train_config_defaults_for(c, 1);
    return dl_train_config_parse_args(c, n, (char **)a, NULL);
}

static void run_ok(const char *outname, const char *const *extra, int stop_after, dl_train_result *r)
{
    dl_train_config c;
    cr_assert_eq(configure(&c, outname, extra), DL_OK, "%s", dl_error_msg());
    dl_trainer_opts o = {.log = NULL, .tty = 0, .stop_after = stop_after};
    cr_assert_eq(dl_train_run(&c, &o, r), DL_OK, "%s: %s", outname, dl_error_msg());
    dl_train_config_free(&c);
}

/* The UNet tensors (model.diffusion_model.*) of two single files: the relative L2 distance over
 * all of them (0 when bit-identical: then *same is 1). */
static double unet_distance(const char *a, const char *b, int *same)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(fa.n_tensors, fb.n_tensors);
    double num = 0, den = 0;
    int n_unet = 0;
    *same = 1;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        cr_assert_not_null(tb, "%s missing in %s", ta->name, b);
        if (strncmp(ta->name, "model.diffusion_model.", 22)) continue;
        n_unet++;
        const int64_t n = dl_st_numel(ta);
        cr_assert_eq(n, dl_st_numel(tb));
        float *x = malloc(sizeof(float) * (size_t)(n + 1)), *y = malloc(sizeof(float) * (size_t)(n + 1));
        cr_assert_eq(dl_st_read_f32(&fa, ta, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&fb, tb, y), DL_OK);
        *same &= memcmp(x, y, sizeof(float) * (size_t)n) == 0;
        for (int64_t k = 0; k < n; k++) num += ((double)x[k] - y[k]) * ((double)x[k] - y[k]), den += (double)x[k] * x[k];
        free(x), free(y);
    }
    cr_expect_gt(n_unet, 100, "%s: %d UNet tensors", a, n_unet);
    dl_st_close(&fa);
    dl_st_close(&fb);
    return sqrt(num / (den > 0 ? den : 1));
}

/* Interrupted after 3 of 6 steps (the state saved as Ctrl-C saves it), resumed: the losses of
 * steps 4-6 and every UNet weight equal the uninterrupted run's, bit for bit. Two epochs (3
 * images x 3 repeats, batch 2: 5 batches an epoch) so the resume crosses an epoch end, with a
 * periodic save and gradient checkpointing on. */
Test(finetune_train, resume_gives_the_uninterrupted_weights, .timeout = 600)
{
    make_data();
    const char *opt[] = {"--max_train_steps", "6", "--save_state", "--save_every_n_steps", "4",
                         "--gradient_checkpointing", "--lr_scheduler", "cosine", NULL};
    dl_train_result a, b, c;
    run_ok("full", opt, 0, &a);
    run_ok("part", opt, 3, &b);
    cr_assert(b.interrupted && b.steps_done == 3, "interrupted %d at %d", b.interrupted, b.steps_done);
    char state[300];
    snprintf(state, sizeof state, "%s", b.output_path);
    const char *opt2[] = {"--max_train_steps", "6", "--save_state", "--save_every_n_steps", "4",
                          "--gradient_checkpointing", "--lr_scheduler", "cosine", "--resume", state, NULL};
    run_ok("part", opt2, 0, &c);
    cr_assert_eq(c.start_step, 3);
    cr_assert_eq(c.steps_done, 6);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(c.losses[i], a.losses[3 + i], "step %d: loss %.9g resumed, %.9g uninterrupted", 4 + i, c.losses[i],
                     a.losses[3 + i]);
    int same = 0;
    const double d = unet_distance(a.output_path, c.output_path, &same);
    cr_expect(same, "the resumed run's UNet differs (relative L2 %.3g)", d);
    char p[300];
    struct stat st;
    snprintf(p, sizeof p, "%s/full/last-step00000004.safetensors", g_root);
    cr_expect_eq(stat(p, &st), 0, "%s not written", p);
    dl_train_result_free(&a);
    dl_train_result_free(&b);
    dl_train_result_free(&c);
    cleanup();
}

/* Compare two single files tensor by tensor: same names in the same order, dtypes, shapes and
 * bytes; the count of tensors whose bytes differ (names of part prefix only, NULL: all). */
static int files_differ(const char *a, const char *b, const char *prefix)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(fa.n_tensors, fb.n_tensors, "%s: %d tensors, %s: %d", a, fa.n_tensors, b, fb.n_tensors);
    int differ = 0;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *x = &fa.tensors[i], *y = &fb.tensors[i];
        cr_assert_str_eq(x->name, y->name, "tensor %d", i);
        cr_assert_eq(x->dtype, y->dtype, "%s", x->name);
        cr_assert_eq(x->ndim, y->ndim, "%s", x->name);
        for (int k = 0; k < x->ndim; k++) cr_assert_eq(x->shape[k], y->shape[k], "%s", x->name);
        if (prefix && strncmp(x->name, prefix, strlen(prefix))) continue;
        differ += memcmp(x->data, y->data, (size_t)dl_st_numel(x) * dl_dtype_size(x->dtype)) != 0;
    }
    dl_st_close(&fa);
    dl_st_close(&fb);
    return differ;
}

/* A learning rate of 0 leaves every weight as loaded: the saved single file is, tensor for
 * tensor (names, order, dtypes, shapes, bytes), what `danlu convert` writes for the base model in
 * the same dtype, in fp32 and fp16; the diffusers folder likewise file by file. A trained run's
 * file differs from it in the UNet only, reloads (dl_ckpt_open, the UNet, VAE and text encoder
 * load) and samples a picture. */
Test(finetune_train, saved_checkpoint_is_converts_layout_and_reloads, .timeout = 600)
{
    make_data();
    const char *base = tu_path("tests/golden/tiny_pipe");
    char conv32[300], conv16[300], convd[300];
    snprintf(conv32, sizeof conv32, "%s/conv32.safetensors", g_root);
    snprintf(conv16, sizeof conv16, "%s/conv16.safetensors", g_root);
    snprintf(convd, sizeof convd, "%s/convd", g_root);
    cr_assert_eq(dl_ckpt_convert(base, conv32, DL_LAYOUT_SINGLE, DL_F32, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(base, conv16, DL_LAYOUT_SINGLE, DL_F16, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(conv32, convd, DL_LAYOUT_DIFFUSERS, DL_F32, NULL), DL_OK, "%s", dl_error_msg());
    dl_train_result r0, r16, rd, rt;
    const char *o0[] = {"--max_train_steps", "2", "--learning_rate", "0", NULL};
    run_ok("lr0", o0, 0, &r0);
    cr_expect_eq(files_differ(r0.output_path, conv32, NULL), 0, "lr 0 fp32: tensors differ from convert's");
    const char *o16[] = {"--max_train_steps", "1", "--learning_rate", "0", "--save_precision", "fp16", NULL};
    run_ok("lr0-16", o16, 0, &r16);
    cr_expect_eq(files_differ(r16.output_path, conv16, NULL), 0, "lr 0 fp16: tensors differ from convert's");
    const char *od[] = {"--max_train_steps", "1", "--learning_rate", "0", "--save_model_as", "diffusers", NULL};
    run_ok("lr0-d", od, 0, &rd);
    static const char *const parts[] = {"unet/diffusion_pytorch_model.safetensors",
                                        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char x[400], y[400];
        snprintf(x, sizeof x, "%s/%s", rd.output_path, parts[i]);
        snprintf(y, sizeof y, "%s/%s", convd, parts[i]);
        cr_expect_eq(files_differ(x, y, NULL), 0, "diffusers %s differs from convert's", parts[i]);
    }
    char tok[400];
    snprintf(tok, sizeof tok, "%s/tokenizer/vocab.json", rd.output_path);
    struct stat st;
    cr_expect_eq(stat(tok, &st), 0, "the folder has no tokenizer/");

    const char *ot[] = {"--max_train_steps", "3", "--learning_rate", "1e-3", NULL};
    run_ok("trained", ot, 0, &rt);
    const int nd = files_differ(rt.output_path, conv32, "model.diffusion_model.");
    cr_expect_gt(nd, 100, "training changed only %d UNet tensors", nd);
    cr_expect_eq(files_differ(rt.output_path, conv32, "first_stage_model."), 0, "the VAE changed");
    cr_expect_eq(files_differ(rt.output_path, conv32, "cond_stage_model."), 0, "the text encoder changed");
    /* reloads and samples */
    dl_ctx ctx;
    cr_assert_eq(dl_ctx_init_backend(&ctx, 2, &dl_backend_cpu), DL_OK, "%s", dl_error_msg());
    snprintf(tok, sizeof tok, "%s/tokenizer", base);
    dl_sd *sd;
    cr_assert_eq(dl_sd_open(&sd, rt.output_path, tok, &ctx, 0), DL_OK, "%s", dl_error_msg());
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = "a red dot, dotstyle";
    p.width = p.height = 32;
    p.steps = 3;
    uint64_t seed = 5;
    float img[32 * 32 * 3];
    cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, img, NULL, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    for (int i = 0; i < 32 * 32 * 3; i++) cr_assert(isfinite(img[i]));
    dl_sd_close(sd);
    dl_ctx_free(&ctx);
    dl_train_result_free(&r0);
    dl_train_result_free(&r16);
    dl_train_result_free(&rd);
    dl_train_result_free(&rt);
    cleanup();
}

/* Options of `danlu train` only, unknown keys and bad values are refused naming the key; an
 * output directory that cannot be made is refused naming it, before any step. */
Test(finetune_train, bad_options_and_outputs_are_refused)
{
    make_data();
    dl_train_config c;
    const char *e1[] = {"--network_dim", "8", NULL};
    cr_expect_neq(configure(&c, "x", e1), DL_OK);
    cr_expect(strstr(dl_error_msg(), "network_dim"), "%s", dl_error_msg());
    dl_train_config_free(&c);
    const char *e2[] = {"--save_model_as", "ckpt", NULL};
    cr_expect_neq(configure(&c, "x", e2), DL_OK);
    cr_expect(strstr(dl_error_msg(), "save_model_as") && strstr(dl_error_msg(), "ckpt"), "%s", dl_error_msg());
    dl_train_config_free(&c);
    const char *e3[] = {"--train_text_encoder=maybe", NULL};
    cr_expect_neq(configure(&c, "x", e3), DL_OK);
    cr_expect(strstr(dl_error_msg(), "train_text_encoder") && strstr(dl_error_msg(), "maybe"), "%s", dl_error_msg());
    dl_train_config_free(&c);
    /* a JSON file with a key of the LoRA trainer */
    char js[300];
    snprintf(js, sizeof js, "%s/ft.json", g_root);
    FILE *f = fopen(js, "w");
    cr_assert_not_null(f);
    fputs("{\"max_train_steps\": 2, \"lora_format\": \"peft\"}", f);
    fclose(f);
    const char *e4[] = {"--config", js, NULL};
    cr_expect_neq(configure(&c, "x", e4), DL_OK);
    cr_expect(strstr(dl_error_msg(), "lora_format") && strstr(dl_error_msg(), "ft.json"), "%s", dl_error_msg());
    dl_train_config_free(&c);
    /* an output directory under a regular file */
    char file[300], sub[300];
    snprintf(file, sizeof file, "%s/a-file", g_root);
    f = fopen(file, "w");
    cr_assert_not_null(f);
    fclose(f);
    snprintf(sub, sizeof sub, "a-file/out");
    cr_assert_eq(configure(&c, sub, NULL), DL_OK, "%s", dl_error_msg());
    dl_trainer_opts o = {.log = NULL, .tty = 0};
    dl_train_result r;
    cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "a-file"), "the message does not name the directory: %s", dl_error_msg());
    dl_train_config_free(&c);
    if (geteuid() != 0) { /* root writes anywhere */
        char ro[300];
        snprintf(ro, sizeof ro, "%s/ro", g_root);
        cr_assert_eq(mkdir(ro, 0500), 0);
        cr_assert_eq(configure(&c, "ro", NULL), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(dl_train_run(&c, &o, &r), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "ro") && strstr(dl_error_msg(), "writable"), "%s", dl_error_msg());
        dl_train_config_free(&c);
    }
    cleanup();
}

/* The CUDA backend on the emulated device (every tensor in memory that faults on a host access):
 * the CPU's losses within 1e-4 relative and its UNet within 1e-4 relative L2 after 3 steps. */
Test(finetune_train, cuda_on_the_emulated_device_matches_cpu, .timeout = 900)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    make_data();
    dl_train_result rc, rg;
    const char *oc[] = {"--max_train_steps", "3", "--backend", "cpu", "--learning_rate", "1e-3", NULL};
    const char *og[] = {"--max_train_steps", "3", "--backend", "cuda", "--learning_rate", "1e-3", NULL};
    run_ok("cpu", oc, 0, &rc);
    run_ok("cuda", og, 0, &rg);
    double worst = 0;
    for (int i = 0; i < 3; i++) {
        const double d = fabs(rg.losses[i] - rc.losses[i]) / fabs(rc.losses[i]);
        if (d > worst) worst = d;
    }
    int same = 0;
    const double dw = unet_distance(rc.output_path, rg.output_path, &same);
    fprintf(stderr, "finetune_train: losses cpu %.7f %.7f %.7f, cuda %.7f %.7f %.7f; worst relative %.2e; UNet %.2e\n",
            rc.losses[0], rc.losses[1], rc.losses[2], rg.losses[0], rg.losses[1], rg.losses[2], worst, dw);
    cr_expect(worst <= 1e-4, "losses differ by %.3g relative (bound 1e-4)", worst);
    cr_expect(dw <= 1e-4, "the trained UNet differs by %.3g relative L2 (bound 1e-4)", dw);
    dl_train_result_free(&rc);
    dl_train_result_free(&rg);
    cleanup();
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

/* The golden run's configuration re-run in process (same flags, same seed and thread count): its
 * saved model, loaded back by danlu, gives on fixed inputs the UNet output diffusers gave on the
 * generator's file (UNet2DConditionModel.from_single_file for the fp32 single file,
 * StableDiffusionPipeline.from_pretrained for the fp16 folder; float64). Bound 1e-4 relative L2:
 * the retrained weights match the generator's only to the rounding of this machine's code path
 * (the measured figure is logged; on the generator's machine it is ~1e-6). */
Test(finetune_train, diffusers_loads_the_saved_models, .timeout = 600)
{
    make_data();
    dl_st_file g;
    tu_golden_open(&g, "finetune_diffusers");
    int64_t nx = 0;
    float *x = tu_golden_f32(&g, "in.x", &nx), *t = tu_golden_f32(&g, "in.t", NULL);
    float *cx = tu_golden_f32(&g, "in.ctx", NULL);
    const dl_st_tensor *tc = dl_st_find(&g, "in.ctx"), *tx = dl_st_find(&g, "in.x");
    cr_assert(tc && tx);
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], T = (int)tc->shape[1];
    char model[1024], data[1024], out[1024];
    snprintf(model, sizeof model, "%s", tu_path("tests/golden/tiny_pipe"));
    snprintf(data, sizeof data, "%s", tu_path("tests/golden/train_diffusers/data"));
    snprintf(out, sizeof out, "%s/out", g_root);
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
        argv[argc++] = strdup("finetune");
        const cJSON *a;
        cJSON_ArrayForEach(a, args) {
            cr_assert_lt(argc, 63);
            argv[argc++] = expand(a->valuestring, model, data, out);
        }
        argv[argc] = NULL;
        dl_train_config c;
        dl_train_config_defaults_for(&c, 1);
        cr_assert_eq(dl_train_config_parse_args(&c, argc, argv, NULL), DL_OK, "%s", dl_error_msg());
        dl_trainer_opts o = {.log = NULL, .tty = 0};
        dl_train_result res;
        cr_assert_eq(dl_train_run(&c, &o, &res), DL_OK, "%s", dl_error_msg());
        /* danlu reads its own output back and runs the UNet */
        dl_checkpoint ck;
        cr_assert_eq(dl_ckpt_open(&ck, res.output_path, NULL), DL_OK, "%s", dl_error_msg());
        cr_expect_eq((int)ck.layout, r == 0 ? DL_LAYOUT_SINGLE : DL_LAYOUT_DIFFUSERS);
        dl_arena w, sc;
        dl_unet u;
        cr_assert_eq(dl_arena_init(&w, "weights", tu_unet_weights_bytes(&ck)), DL_OK);
        cr_assert_eq(dl_unet_load(&u, &ck, &w), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_arena_init(&sc, "scratch", dl_unet_scratch_bytes(&u, N, H, W, T)), DL_OK);
        float *y = tu_alloc_nan((size_t)nx);
        dl_unet_forward(tu_ctx(), &u, N, H, W, x, t, cx, T, y, &sc);
        snprintf(key, sizeof key, "%s.unet", runs[r]);
        float *ref = tu_golden_f32(&g, key, NULL);
        const double e = tu_rel_l2(y, ref, (size_t)nx);
        cr_log_info("finetune %s: danlu's UNet on its saved model vs diffusers' on the generator's: rel L2 %.2e", runs[r], e);
        cr_expect(e <= 1e-4, "%s: UNet output differs from diffusers' by %.3g (bound 1e-4)", runs[r], e);
        free(y), free(ref);
        dl_unet_free(&u);
        dl_arena_free(&w), dl_arena_free(&sc);
        dl_ckpt_close(&ck);
        dl_train_result_free(&res);
        dl_train_config_free(&c);
        for (int i = 0; i < argc; i++) free(argv[i]);
        cJSON_Delete(args);
    }
    free(x), free(t), free(cx);
    dl_st_close(&g);
    cleanup();
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

/* --train_text_encoder: the text encoder's weights train too (embeddings, layers, final norm) and
 * are saved; the VAE stays the base's. Resumed after 2 of 4 steps: the uninterrupted run's file
 * bit for bit. The CUDA backend on the emulated device: the CPU's losses within 1e-4 relative,
 * UNet and text encoder within 1e-4 relative L2. */
Test(finetune_train, text_encoder_trains_resumes_and_matches_on_cuda, .timeout = 900)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    make_data();
    const char *base = tu_path("tests/golden/tiny_pipe");
    char conv32[300];
    snprintf(conv32, sizeof conv32, "%s/conv32.safetensors", g_root);
    cr_assert_eq(dl_ckpt_convert(base, conv32, DL_LAYOUT_SINGLE, DL_F32, NULL), DL_OK, "%s", dl_error_msg());
    const char *oc[] = {"--max_train_steps", "4", "--backend", "cpu", "--learning_rate", "1e-3", "--train_text_encoder",
                        "--text_encoder_lr", "5e-4", "--save_state", NULL};
    dl_train_result rc, rp, rr, rg;
    run_ok("te-cpu", oc, 0, &rc);
    cr_expect_gt(files_differ(rc.output_path, conv32, "cond_stage_model."), 10, "the text encoder did not change");
    cr_expect_gt(files_differ(rc.output_path, conv32, "model.diffusion_model."), 100, "the UNet did not change");
    cr_expect_eq(files_differ(rc.output_path, conv32, "first_stage_model."), 0, "the VAE changed");
    run_ok("te-part", oc, 2, &rp);
    cr_assert(rp.interrupted && rp.steps_done == 2);
    char state[300];
    snprintf(state, sizeof state, "%s", rp.output_path);
    const char *or[] = {"--max_train_steps", "4", "--backend", "cpu", "--learning_rate", "1e-3", "--train_text_encoder",
                        "--text_encoder_lr", "5e-4", "--save_state", "--resume", state, NULL};
    run_ok("te-part", or, 0, &rr);
    cr_expect_eq(files_differ(rc.output_path, rr.output_path, NULL), 0, "the resumed run's model differs");
    const char *og[] = {"--max_train_steps", "4", "--backend", "cuda", "--learning_rate", "1e-3", "--train_text_encoder",
                        "--text_encoder_lr", "5e-4", NULL};
    run_ok("te-cuda", og, 0, &rg);
    double worst = 0;
    for (int i = 0; i < 4; i++) {
        const double d = fabs(rg.losses[i] - rc.losses[i]) / fabs(rc.losses[i]);
        if (d > worst) worst = d;
    }
    const double du = part_distance(rc.output_path, rg.output_path, "model.diffusion_model.");
    const double dt = part_distance(rc.output_path, rg.output_path, "cond_stage_model.");
    fprintf(stderr, "finetune_train (text encoder too): cuda vs cpu: losses %.2e, UNet %.2e, text encoder %.2e\n", worst,
            du, dt);
    cr_expect(worst <= 1e-4, "losses differ by %.3g relative (bound 1e-4)", worst);
    cr_expect(du <= 1e-4 && dt <= 1e-4, "the UNet (%.3g) or the text encoder (%.3g) differ (bound 1e-4)", du, dt);
    dl_train_result_free(&rc);
    dl_train_result_free(&rp);
    dl_train_result_free(&rr);
    dl_train_result_free(&rg);
    cleanup();
}

/* A fine-tuned checkpoint carries danlu's provenance record and its configuration: `danlu verify
 * --reproduce` (dl_prov_reproduce) reads it as finetune's, retrains and finds every tensor of the
 * model bit-identical. */
Test(finetune_train, verify_reproduces_a_finetune_run, .timeout = 600)
{
    make_data();
    const char *o[] = {"--max_train_steps", "2", "--train_text_encoder", NULL};
    dl_train_result r;
    run_ok("rec", o, 0, &r);
    dl_prov_repro_opts po = {0};
    dl_prov_repro pr;
    cr_assert_eq(dl_prov_reproduce(r.output_path, &po, &pr), DL_OK, "%s", dl_error_msg());
    cr_expect(pr.identical, "retrained model differs: rel L2 %.3g", pr.rel_l2);
    dl_prov_repro_free(&pr);
    dl_train_result_free(&r);
    cleanup();
}
