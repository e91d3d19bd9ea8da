/* test_cli_run.c - `danlu run` and `danlu tokenize` end to end: inputs written to a file in
 * the reference's conventions, outputs read back and compared with the golden references;
 * bad inputs get a message naming the file and a non-zero status. */
#include "cli/commands.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static const char *g_backend = "cpu"; /* the component tests run on each backend */

static int run(const char *model, const char *comp, const char *in, const char *out)
{
    char *argv[] = {"run", "--model", (char *)model, "--component", (char *)comp, "--inputs", (char *)in,
                    "--out", (char *)out, "--threads", "2", "--backend", (char *)g_backend, NULL};
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_run(13, argv, devnull);
    fclose(devnull);
    return rc;
}

/* [N, H, W, C] golden -> [N, C, H, W] */
static float *to_nchw(const float *x, int N, int H, int W, int C)
{
    float *y = malloc(sizeof(float) * (size_t)N * H * W * C);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < H * W; p++) y[((size_t)n * C + c) * H * W + p] = x[((size_t)n * H * W + p) * C + c];
    return y;
}

static void expect_output(const char *path, const char *name, const float *ref, size_t n, double tol)
{
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, path), DL_OK, "%s", dl_error_msg());
    float *got = tu_golden_f32(&f, name, NULL);
    tu_expect_close(got, ref, n, tol, name);
    free(got);
    dl_st_close(&f);
}

static void text_encoder_case(void)
{
    dl_st_file g;
    tu_golden_open(&g, "clip");
    const dl_st_tensor *ids = dl_st_find(&g, "quick_gelu_h1.input_ids");
    dl_st_entry e = {"input_ids", DL_I64, 2, {ids->shape[0], ids->shape[1]}, ids->data};
    cr_assert_eq(dl_st_save(tu_tmp("in.safetensors"), &e, 1, NULL, 0), DL_OK);
    cr_assert_eq(run(tu_path("tests/golden/tiny_sd15"), "text-encoder", tu_tmp("in.safetensors"), tu_tmp("out.safetensors")), 0,
                 "%s", dl_error_msg());
    int64_t n;
    float *last = tu_golden_f32(&g, "quick_gelu_h1.last_hidden_state", &n);
    float *pen = tu_golden_f32(&g, "quick_gelu_h1.penultimate_hidden_state", NULL);
    expect_output(tu_tmp("out.safetensors"), "last_hidden_state", last, (size_t)n, 1e-5);
    expect_output(tu_tmp("out.safetensors"), "penultimate_hidden_state", pen, (size_t)n, 1e-5);
    free(last);
    free(pen);
    dl_st_close(&g);
}

Test(cli_run, text_encoder_matches_transformers, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini) { text_encoder_case(); }

/* the same on the CUDA backend over the emulated device (device memory, the kernels) */
Test(cli_run, text_encoder_matches_transformers_on_cuda, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    g_backend = "cuda";
    text_encoder_case();
}

static void vae_case(void)
{
    dl_st_file g;
    tu_golden_open(&g, "vae");
    const dl_st_tensor *ti = dl_st_find(&g, "tiny_vae2.image"), *tl = dl_st_find(&g, "tiny_vae2.latent");
    int N = (int)ti->shape[0], H = (int)ti->shape[1], W = (int)ti->shape[2];
    int h = (int)tl->shape[1], w = (int)tl->shape[2], L = (int)tl->shape[3];
    float *img = tu_golden_f32(&g, "tiny_vae2.image", NULL), *noise = tu_golden_f32(&g, "tiny_vae2.noise", NULL);
    float *img_c = to_nchw(img, N, H, W, 3), *noise_c = to_nchw(noise, N, h, w, L);
    dl_st_entry e[2] = {{"image", DL_F32, 4, {N, 3, H, W}, img_c}, {"noise", DL_F32, 4, {N, L, h, w}, noise_c}};
    cr_assert_eq(dl_st_save(tu_tmp("enc.safetensors"), e, 2, NULL, 0), DL_OK);
    const char *model = tu_path("tests/golden/tiny_vae2");
    cr_assert_eq(run(model, "vae-encode", tu_tmp("enc.safetensors"), tu_tmp("enc_out.safetensors")), 0, "%s", dl_error_msg());
    size_t nl = (size_t)N * h * w * L;
    const char *names[3] = {"mean", "logvar", "latent"};
    for (int i = 0; i < 3; i++) {
        char gname[64];
        snprintf(gname, sizeof gname, "tiny_vae2.%s", names[i]);
        float *r = tu_golden_f32(&g, gname, NULL), *rc = to_nchw(r, N, h, w, L);
        expect_output(tu_tmp("enc_out.safetensors"), names[i], rc, nl, 1e-5);
        free(r);
        free(rc);
    }
    float *lat = tu_golden_f32(&g, "tiny_vae2.latent", NULL), *lat_c = to_nchw(lat, N, h, w, L);
    dl_st_entry d = {"latent", DL_F32, 4, {N, L, h, w}, lat_c};
    cr_assert_eq(dl_st_save(tu_tmp("dec.safetensors"), &d, 1, NULL, 0), DL_OK);
    cr_assert_eq(run(model, "vae-decode", tu_tmp("dec.safetensors"), tu_tmp("dec_out.safetensors")), 0, "%s", dl_error_msg());
    float *dec = tu_golden_f32(&g, "tiny_vae2.decoded", NULL), *dec_c = to_nchw(dec, N, H, W, 3);
    expect_output(tu_tmp("dec_out.safetensors"), "image", dec_c, (size_t)N * H * W * 3, 1e-5);
    free(img); free(noise); free(img_c); free(noise_c); free(lat); free(lat_c); free(dec); free(dec_c);
    dl_st_close(&g);
}

Test(cli_run, vae_encode_and_decode_in_nchw, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini) { vae_case(); }

/* the same on the CUDA backend over the emulated device (device memory, the kernels) */
Test(cli_run, vae_encode_and_decode_in_nchw_on_cuda, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    g_backend = "cuda";
    vae_case();
}

Test(cli_run, bad_inputs_are_named, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    float x[4] = {0};
    dl_st_entry e = {"wrong_name", DL_F32, 1, {4}, x};
    cr_assert_eq(dl_st_save(tu_tmp("in.safetensors"), &e, 1, NULL, 0), DL_OK);
    const char *model = tu_path("tests/golden/tiny_sd15");
    cr_expect_eq(run(model, "unet", tu_tmp("in.safetensors"), tu_tmp("o.safetensors")), 1);
    cr_expect(strstr(dl_error_msg(), "in.safetensors") && strstr(dl_error_msg(), "'sample'"), "%s", dl_error_msg());
    cr_expect_eq(run(model, "text-encoder", tu_tmp("in.safetensors"), tu_tmp("o.safetensors")), 1);
    cr_expect(strstr(dl_error_msg(), "'input_ids'"), "%s", dl_error_msg());
    cr_expect_eq(run(model, "vae-decode", tu_tmp("missing.safetensors"), tu_tmp("o.safetensors")), 1);
    cr_expect_eq(run(tu_tmp("no-model"), "vae-decode", tu_tmp("in.safetensors"), tu_tmp("o.safetensors")), 1);
    cr_expect(strstr(dl_error_msg(), "no-model"), "%s", dl_error_msg());
    cr_expect_eq(run(model, "teapot", tu_tmp("in.safetensors"), tu_tmp("o.safetensors")), 2);
    cr_expect_eq(access(tu_tmp("o.safetensors"), F_OK), -1, "no output may be written on error");
    /* a latent with the wrong channel count */
    float z[2 * 3 * 3] = {0};
    dl_st_entry l = {"latent", DL_F32, 4, {1, 2, 3, 3}, z};
    cr_assert_eq(dl_st_save(tu_tmp("lat.safetensors"), &l, 1, NULL, 0), DL_OK);
    cr_expect_eq(run(model, "vae-decode", tu_tmp("lat.safetensors"), tu_tmp("o.safetensors")), 1);
    cr_expect(strstr(dl_error_msg(), "channels"), "%s", dl_error_msg());
}

Test(cli_tokenize, prints_ids_from_the_clip_vocabulary)
{
    FILE *out = tmpfile();
    char *argv[] = {"tokenize", "--tokenizer", (char *)tu_shared_path("clip/bpe_simple_vocab_16e6.txt.gz"),
                    "a photo of a cat", NULL};
    cr_assert_eq(dl_cmd_tokenize(4, argv, out), 0, "%s", dl_error_msg());
    rewind(out);
    char text[8192] = {0};
    size_t n = fread(text, 1, sizeof text - 1, out);
    text[n] = 0;
    fclose(out);
    /* transformers: "a photo of a cat" -> 320, 1125, 539, 320, 2368 */
    cr_expect(strstr(text, "320 1125 539 320 2368") != NULL, "%s", text);
    char *bad[] = {"tokenize", "--tokenizer", "/nonexistent/tok", "x", NULL};
    FILE *o2 = tmpfile();
    cr_expect_eq(dl_cmd_tokenize(4, bad, o2), 1);
    fclose(o2);
    cr_expect(strstr(dl_error_msg(), "/nonexistent/tok"), "%s", dl_error_msg());
}

static void unet_case(void)
{
    dl_st_file g;
    tu_golden_open(&g, "unet");
    const dl_st_tensor *tx = dl_st_find(&g, "sd15_1.x"), *tc = dl_st_find(&g, "sd15_1.ctx");
    int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], C = (int)tx->shape[3];
    float *x = tu_golden_f32(&g, "sd15_1.x", NULL), *xc = to_nchw(x, N, H, W, C);
    float *ctx = tu_golden_f32(&g, "sd15_1.ctx", NULL), *t = tu_golden_f32(&g, "sd15_1.t", NULL);
    dl_st_entry e[3] = {{"sample", DL_F32, 4, {N, C, H, W}, xc},
                        {"timestep", DL_F32, 1, {N}, t},
                        {"encoder_hidden_states", DL_F32, 3, {tc->shape[0], tc->shape[1], tc->shape[2]}, ctx}};
    cr_assert_eq(dl_st_save(tu_tmp("in.safetensors"), e, 3, NULL, 0), DL_OK);
    cr_assert_eq(run(tu_path("tests/golden/tiny_sd15.safetensors"), "unet", tu_tmp("in.safetensors"), tu_tmp("out.safetensors")), 0,
                 "%s", dl_error_msg());
    float *ref = tu_golden_f32(&g, "sd15_1.out", NULL), *refc = to_nchw(ref, N, H, W, C);
    expect_output(tu_tmp("out.safetensors"), "out", refc, (size_t)N * H * W * C, 1e-5);
    free(x); free(xc); free(ctx); free(t); free(ref); free(refc);
    dl_st_close(&g);
}

Test(cli_run, unet_matches_diffusers_in_nchw, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini) { unet_case(); }

/* the same on the CUDA backend over the emulated device (device memory, the kernels) */
Test(cli_run, unet_matches_diffusers_in_nchw_on_cuda, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    g_backend = "cuda";
    unet_case();
}

/* ---- SDXL: the UNet takes text_embeds and time_ids (tests/golden/tiny_unet_sdxl, from
 * tests/gen/gen_sdxl_unet.py); the single file with --unet-config (its heads and norm groups
 * are not in its weights). */

static int run_xl(const char *model, const char *in, const char *out, const char *unet_config)
{
    char *argv[] = {"run", "--model", (char *)model, "--component", "unet", "--inputs", (char *)in, "--out", (char *)out,
                    "--threads", "2", "--backend", (char *)g_backend, "--unet-config", (char *)unet_config, NULL};
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_run(unet_config ? 15 : 13, argv, devnull);
    fclose(devnull);
    return rc;
}

/* xl_1's inputs in the reference's conventions; time_ids as int64 (int_ids) or float32; drop: a
 * tensor left out; te_cols: text_embeds' width (the golden's when 0). */
static void write_xl_inputs(const char *path, int int_ids, const char *drop, int te_cols)
{
    dl_st_file g;
    tu_golden_open(&g, "sdxl_unet");
    const dl_st_tensor *tx = dl_st_find(&g, "xl_1.x"), *tc = dl_st_find(&g, "xl_1.ctx"),
                       *tt = dl_st_find(&g, "xl_1.text_embeds");
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], C = (int)tx->shape[3];
    float *x = tu_golden_f32(&g, "xl_1.x", NULL), *xc = to_nchw(x, N, H, W, C);
    float *ctx = tu_golden_f32(&g, "xl_1.ctx", NULL), *t = tu_golden_f32(&g, "xl_1.t", NULL);
    float *te = tu_golden_f32(&g, "xl_1.text_embeds", NULL), *tid = tu_golden_f32(&g, "xl_1.time_ids", NULL);
    int64_t ids[2 * 6];
    for (int i = 0; i < N * 6; i++) ids[i] = (int64_t)tid[i];
    dl_st_entry all[5] = {{"sample", DL_F32, 4, {N, C, H, W}, xc},
                          {"timestep", DL_F32, 1, {N}, t},
                          {"encoder_hidden_states", DL_F32, 3, {tc->shape[0], tc->shape[1], tc->shape[2]}, ctx},
                          {"text_embeds", DL_F32, 2, {N, te_cols ? te_cols : tt->shape[1]}, te},
                          {"time_ids", int_ids ? DL_I64 : DL_F32, 2, {N, 6}, int_ids ? (void *)ids : (void *)tid}};
    dl_st_entry e[5];
    int n = 0;
    for (int i = 0; i < 5; i++)
        if (!drop || strcmp(all[i].name, drop)) e[n++] = all[i];
    cr_assert_eq(dl_st_save(path, e, n, NULL, 0), DL_OK, "%s", dl_error_msg());
    free(x), free(xc), free(ctx), free(t), free(te), free(tid);
    dl_st_close(&g);
}

static void sdxl_unet_case(void)
{
    write_xl_inputs(tu_tmp("in.safetensors"), !strcmp(g_backend, "cpu"), NULL, 0);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_unet");
    const dl_st_tensor *tx = dl_st_find(&g, "xl_1.x");
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], C = (int)tx->shape[3];
    float *ref = tu_golden_f32(&g, "xl_1.out", NULL), *refc = to_nchw(ref, N, H, W, C);
    cr_assert_eq(run_xl(tu_path("tests/golden/tiny_unet_sdxl"), tu_tmp("in.safetensors"), tu_tmp("out.safetensors"), NULL),
                 0, "%s", dl_error_msg());
    expect_output(tu_tmp("out.safetensors"), "out", refc, (size_t)N * H * W * C, 1e-5);
    cr_assert_eq(run_xl(tu_path("tests/golden/tiny_unet_sdxl.safetensors"), tu_tmp("in.safetensors"),
                        tu_tmp("out1.safetensors"), tu_path("tests/golden/tiny_unet_sdxl/unet/config.json")),
                 0, "%s", dl_error_msg());
    expect_output(tu_tmp("out1.safetensors"), "out", refc, (size_t)N * H * W * C, 1e-5);
    free(ref), free(refc);
    dl_st_close(&g);
}

Test(cli_run, sdxl_unet_takes_text_embeds_and_time_ids, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    sdxl_unet_case();
}

Test(cli_run, sdxl_unet_takes_text_embeds_and_time_ids_on_cuda, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini,
     .timeout = 300)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    g_backend = "cuda";
    sdxl_unet_case();
}

Test(cli_run, sdxl_unet_inputs_are_checked, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    const char *model = tu_path("tests/golden/tiny_unet_sdxl");
    write_xl_inputs(tu_tmp("a.safetensors"), 0, "time_ids", 0);
    cr_expect_eq(run_xl(model, tu_tmp("a.safetensors"), tu_tmp("o.safetensors"), NULL), 1);
    cr_expect(strstr(dl_error_msg(), "a.safetensors") && strstr(dl_error_msg(), "'time_ids'"), "%s", dl_error_msg());
    write_xl_inputs(tu_tmp("b.safetensors"), 0, "text_embeds", 0);
    cr_expect_eq(run_xl(model, tu_tmp("b.safetensors"), tu_tmp("o.safetensors"), NULL), 1);
    cr_expect(strstr(dl_error_msg(), "'text_embeds'") && strstr(dl_error_msg(), "SDXL"), "%s", dl_error_msg());
    write_xl_inputs(tu_tmp("c.safetensors"), 0, NULL, 10); /* 10 of the 20 columns */
    cr_expect_eq(run_xl(model, tu_tmp("c.safetensors"), tu_tmp("o.safetensors"), NULL), 1);
    cr_expect(strstr(dl_error_msg(), "'text_embeds' is [2, 10]") && strstr(dl_error_msg(), "[2, 20]"), "%s",
              dl_error_msg());
    cr_expect_eq(access(tu_tmp("o.safetensors"), F_OK), -1, "no output may be written on error");
}
