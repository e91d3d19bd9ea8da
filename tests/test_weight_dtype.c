/* test_weight_dtype.c - layer weights kept in the checkpoint's fp16 / bf16 (dl_backend.weight_dtypes,
 * dl_checkpoint.weight_dtypes): every product that reads such a weight gives, bit for bit, what it
 * gives with the weight converted to fp32 first (the conversion is exact and happens as the
 * weight is packed), on whichever CPU path runs; networks loaded that way train and sample
 * identically with half the weight memory; merging a LoRA into such weights is refused. */
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "lora/ckpt_tools.h"
#include "model/unet.h"
#include "model/vae.h"
#include "ops/cpu/conv_winograd.h"
#include "ops/cpu/gemm.h"
#include "sample/pipeline.h"
#include "sample/sd_models.h"
#include "testutil.h"
#include "train/latent_cache.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* n random values rounded to dt (fp16 or bf16): *lo holds them packed, the result as fp32 */
static float *rounded(size_t n, uint64_t seed, dl_dtype dt, uint16_t **lo)
{
    float *f = malloc(n * sizeof *f);
    *lo = malloc(n * sizeof **lo);
    cr_assert(f && *lo);
    tu_fill_uniform(f, n, seed, -1.5f, 1.5f);
    for (size_t i = 0; i + 3 < n; i += 7) { /* zeros of both signs and fp16 subnormals among them */
        f[i] = 0.0f;
        f[i + 1] = -0.0f;
        f[i + 2] = (i & 8) ? 1e-6f : -3e-7f;
    }
    cr_assert_eq(dl_convert_from_f32(*lo, dt, f, n), 0);
    cr_assert_eq(dl_convert_to_f32(f, *lo, dt, n), 0);
    return f;
}

static void expect_same(const float *a, const float *b, size_t n, const char *what)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&a[i], &b[i], sizeof *a) != 0;
    cr_expect_eq(bad, 0, "%s: %zu of %zu values differ from the fp32-weight result", what, bad, n);
}

Test(weight_dtype, gemm_with_fp16_bf16_b_equals_converted)
{
    /* shapes that take each path of dl_sgemm_cb: tiny, the fused small product, several K blocks
     * with edge panels, the swapped product (M small against N) */
    static const int64_t shapes[][3] = {{5, 7, 3}, {77, 320, 768}, {300, 130, 290}, {4, 1000, 512}, {33, 65, 17}};
    static const dl_dtype types[] = {DL_F16, DL_BF16};
    dl_ctx *ctx = tu_ctx();
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int ti = 0; ti < 2; ti++)
            for (int tA = 0; tA < 2; tA++)
                for (int tB = 0; tB < 2; tB++) {
                    const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                    float *A = malloc((size_t)(M * K) * sizeof *A);
                    tu_fill_uniform(A, (size_t)(M * K), 100 + si, -1, 1);
                    uint16_t *Bl;
                    float *B = rounded((size_t)(K * N), 200 + si, types[ti], &Bl);
                    float *c0 = malloc((size_t)(M * N) * sizeof *c0), *c1 = malloc((size_t)(M * N) * sizeof *c1);
                    const int64_t lda = tA ? M : K, ldb = tB ? K : N;
                    dl_sgemm(ctx, tA, tB, M, N, K, 0.75f, A, lda, B, ldb, 0.f, c0, N);
                    dl_sgemm_t(ctx, tA, tB, M, N, K, 0.75f, A, lda, Bl, types[ti], ldb, 0.f, c1, N);
                    char what[96];
                    snprintf(what, sizeof what, "gemm %lldx%lldx%lld %s tA %d tB %d", (long long)M, (long long)N,
                             (long long)K, dl_dtype_name(types[ti]), tA, tB);
                    expect_same(c1, c0, (size_t)(M * N), what);
                    free(A), free(B), free(Bl), free(c0), free(c1);
                }
}

Test(weight_dtype, backend_entries_with_fp16_weights_equal_converted)
{
    const dl_backend *be = &dl_backend_cpu;
    cr_assert(be->weight_dtypes & (1u << DL_F16) && be->weight_dtypes & (1u << DL_BF16));
    dl_ctx *ctx = tu_ctx();
    /* convolutions: 3x3 stride 1, the VAE's asymmetric stride-2 downsample, a 1x1 */
    static const dl_conv2d_shape cs[] = {{1, 48, 48, 128, 128, 3, 1, 1, 1, 1, 1}, /* Winograd's (checked below) */
                                         {2, 9, 7, 24, 40, 3, 1, 1, 1, 1, 1},
                                         {1, 10, 12, 16, 16, 3, 2, 0, 0, 1, 1},
                                         {2, 5, 6, 48, 20, 1, 1, 0, 0, 0, 0}};
    cr_assert(dl_cpu_conv2d_use_winograd(ctx, &cs[0]), "the first shape no longer takes the Winograd path");
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        const dl_conv2d_shape *s = &cs[i];
        const size_t nx = (size_t)s->N * s->H * s->W * s->Cin, nw = (size_t)s->Cout * s->k * s->k * s->Cin,
                     ny = (size_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s) * s->Cout;
        float *x = malloc(nx * sizeof *x), *dy = malloc(ny * sizeof *dy), *b = malloc((size_t)s->Cout * sizeof *b);
        tu_fill_uniform(x, nx, 1 + i, -1, 1);
        tu_fill_uniform(dy, ny, 2 + i, -1, 1);
        tu_fill_uniform(b, (size_t)s->Cout, 3 + i, -1, 1);
        uint16_t *wl;
        float *w = rounded(nw, 4 + i, DL_F16, &wl);
        float *y0 = malloc(ny * sizeof *y0), *y1 = malloc(ny * sizeof *y1);
        float *d0 = malloc(nx * sizeof *d0), *d1 = malloc(nx * sizeof *d1);
        be->conv2d_forward(ctx, s, x, w, DL_F32, b, y0);
        be->conv2d_forward(ctx, s, x, wl, DL_F16, b, y1);
        expect_same(y1, y0, ny, "conv2d_forward");
        be->conv2d_backward(ctx, s, x, w, DL_F32, dy, d0, NULL, NULL);
        be->conv2d_backward(ctx, s, x, wl, DL_F16, dy, d1, NULL, NULL);
        expect_same(d1, d0, nx, "conv2d_backward dx");
        /* LoCon on the same weights */
        const int64_t r = 3, na = r * s->k * s->k * s->Cin, nb = (int64_t)s->Cout * r, nh = (int64_t)(ny / s->Cout) * r;
        float *A = malloc((size_t)na * sizeof *A), *B = malloc((size_t)nb * sizeof *B);
        float *h = malloc((size_t)nh * sizeof *h), *dh = malloc((size_t)nh * sizeof *dh), *xs = malloc(nx * sizeof *xs);
        float *gA0 = malloc((size_t)na * sizeof *gA0), *gA1 = malloc((size_t)na * sizeof *gA1);
        tu_fill_uniform(A, (size_t)na, 5 + i, -0.3f, 0.3f);
        tu_fill_uniform(B, (size_t)nb, 6 + i, -0.3f, 0.3f);
        be->lora_conv_forward(ctx, s, r, 0.5f, x, w, DL_F32, b, A, B, h, y0);
        be->lora_conv_forward(ctx, s, r, 0.5f, x, wl, DL_F16, b, A, B, h, y1);
        expect_same(y1, y0, ny, "lora_conv_forward");
        be->lora_conv_backward(ctx, s, r, 0.5f, x, w, DL_F32, A, B, h, dy, dh, xs, d0, gA0, NULL);
        be->lora_conv_backward(ctx, s, r, 0.5f, x, wl, DL_F16, A, B, h, dy, dh, xs, d1, gA1, NULL);
        expect_same(d1, d0, nx, "lora_conv_backward dx");
        expect_same(gA1, gA0, (size_t)na, "lora_conv_backward dA");
        free(x), free(dy), free(b), free(w), free(wl), free(y0), free(y1), free(d0), free(d1);
        free(A), free(B), free(h), free(dh), free(xs), free(gA0), free(gA1);
    }
    /* linear (77 text tokens into a cross-attention projection; pixel rows into a wide one) */
    static const int64_t ls[][3] = {{77, 768, 320}, {256, 64, 1000}};
    for (size_t i = 0; i < 2; i++) {
        const int64_t M = ls[i][0], in = ls[i][1], out = ls[i][2], r = 4;
        float *x = malloc((size_t)(M * in) * sizeof *x), *dy = malloc((size_t)(M * out) * sizeof *dy);
        tu_fill_uniform(x, (size_t)(M * in), 11 + i, -1, 1);
        tu_fill_uniform(dy, (size_t)(M * out), 12 + i, -1, 1);
        uint16_t *wl;
        float *w = rounded((size_t)(out * in), 13 + i, DL_BF16, &wl);
        float *y0 = malloc((size_t)(M * out) * sizeof *y0), *y1 = malloc((size_t)(M * out) * sizeof *y1);
        float *d0 = malloc((size_t)(M * in) * sizeof *d0), *d1 = malloc((size_t)(M * in) * sizeof *d1);
        be->linear_forward(ctx, M, in, out, x, w, DL_F32, NULL, y0);
        be->linear_forward(ctx, M, in, out, x, wl, DL_BF16, NULL, y1);
        expect_same(y1, y0, (size_t)(M * out), "linear_forward");
        be->linear_backward(ctx, M, in, out, x, w, DL_F32, dy, d0, NULL, NULL);
        be->linear_backward(ctx, M, in, out, x, wl, DL_BF16, dy, d1, NULL, NULL);
        expect_same(d1, d0, (size_t)(M * in), "linear_backward dx");
        float *A = malloc((size_t)(r * in) * sizeof *A), *B = malloc((size_t)(out * r) * sizeof *B);
        float *h = malloc((size_t)(M * r) * sizeof *h), *dh = malloc((size_t)(M * r) * sizeof *dh);
        tu_fill_uniform(A, (size_t)(r * in), 14 + i, -0.3f, 0.3f);
        tu_fill_uniform(B, (size_t)(out * r), 15 + i, -0.3f, 0.3f);
        be->lora_linear_forward(ctx, M, in, out, r, 0.5f, x, w, DL_F32, NULL, A, B, h, y0);
        be->lora_linear_forward(ctx, M, in, out, r, 0.5f, x, wl, DL_BF16, NULL, A, B, h, y1);
        expect_same(y1, y0, (size_t)(M * out), "lora_linear_forward");
        be->lora_linear_backward(ctx, M, in, out, r, 0.5f, x, w, DL_F32, A, B, h, dy, dh, d0, NULL, NULL);
        be->lora_linear_backward(ctx, M, in, out, r, 0.5f, x, wl, DL_BF16, A, B, h, dy, dh, d1, NULL, NULL);
        expect_same(d1, d0, (size_t)(M * in), "lora_linear_backward dx");
        free(x), free(dy), free(w), free(wl), free(y0), free(y1), free(d0), free(d1), free(A), free(B), free(h),
            free(dh);
    }
}

/* A LoRA training step of the tiny UNet from an fp16 copy of its checkpoint: weights kept fp16
 * against the same weights converted to fp32 at load. */
Test(weight_dtype, unet_training_step_same_with_fp16_weights_kept, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    const char *h = tu_tmp("unet_f16");
    cr_assert_eq(dl_ckpt_convert(tu_path("tests/golden/tiny_unet_sd1x"), h, DL_LAYOUT_DIFFUSERS, DL_F16, NULL), DL_OK,
                 "%s", dl_error_msg());
    tu_unet_rig rig[3];
    tu_unet_rig_open_from(&rig[0], h, 0, 0);            /* converted to fp32 */
    tu_unet_rig_open_from(&rig[1], h, 1u << DL_F16, 0); /* fp16 copies */
    tu_unet_rig_open_from(&rig[2], h, 1u << DL_F16, 1); /* fp16, linears in the file's mapping */
    cr_expect(rig[1].w.used < rig[0].w.used * 6 / 10, "weights arena: %zu bytes kept fp16 against %zu as fp32",
              rig[1].w.used, rig[0].w.used);
    cr_expect(rig[2].w.used < rig[1].w.used, "in place: the arena still holds %zu bytes of %zu", rig[2].w.used,
              rig[1].w.used);
    cr_expect_eq(rig[1].u.conv_in.wdt, DL_F16);
    cr_expect_eq(rig[0].u.conv_in.wdt, DL_F32);
    const tu_unet_rig *a = &rig[0];
    dl_ctx *ctx = tu_ctx();
    const size_t nout = (size_t)a->N * a->H * a->W * a->C_out, nctx = (size_t)a->N * a->T * a->u.cfg.cross_attention_dim;
    size_t ng = nctx;
    for (int i = 0; i < a->n; i++) ng += (size_t)(a->nA[i] + a->nB[i]);
    float *out[3], *g[3], *dout = malloc(nout * sizeof(float)), *dctx = malloc(nctx * sizeof(float));
    dl_unet_tape *tape = malloc(sizeof *tape);
    double loss[3];
    for (int k = 0; k < 3; k++) {
        out[k] = malloc(nout * sizeof(float));
        g[k] = malloc(ng * sizeof(float));
        loss[k] = tu_unet_rig_step(ctx, &rig[k], tape, out[k], dout, dctx, g[k]);
    }
    for (int k = 1; k < 3; k++) {
        cr_expect(loss[0] == loss[k], "loss %.9g (fp16 kept, in place %d) against %.9g (fp32)", loss[k], k == 2,
                  loss[0]);
        expect_same(out[k], out[0], nout, k == 1 ? "UNet output" : "UNet output, in place");
        expect_same(g[k], g[0], ng, k == 1 ? "LoRA and context gradients" : "gradients, in place");
    }
    for (int k = 0; k < 3; k++) {
        free(out[k]), free(g[k]);
        tu_unet_rig_close(&rig[k]);
    }
    free(dout), free(dctx), free(tape);
}

/* Sampling from an fp16 pipeline: the same image whether the weights stay fp16 (merge_loras 0)
 * or are converted (1); merging a LoRA into kept fp16 weights is refused by name. */
Test(weight_dtype, sample_same_image_with_fp16_weights_kept, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    const char *h = tu_tmp("pipe_f16.safetensors");
    cr_assert_eq(dl_ckpt_convert(tu_path("tests/golden/tiny_pipe"), h, DL_LAYOUT_SINGLE, DL_F16, NULL), DL_OK, "%s",
                 dl_error_msg());
    const char *tok = tu_path("tests/golden/tiny_pipe/tokenizer");
    float *img[2], *lat[2], *mean[2], *logvar[2], *px = malloc(16 * 16 * 3 * sizeof(float));
    tu_fill_uniform(px, 16 * 16 * 3, 9, -1, 1);
    dl_sd *sd[2];
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(dl_sd_open(&sd[k], h, tok, tu_ctx(), k == 0), DL_OK, "%s", dl_error_msg());
        dl_gen_params p;
        dl_gen_params_default(&p);
        p.prompt = "a red circle on a blue background";
        p.negative = "blurry";
        p.width = p.height = 16;
        p.steps = 3;
        p.cfg_scale = 5.0f;
        const uint64_t seed = 42;
        img[k] = malloc(16 * 16 * 3 * sizeof(float));
        lat[k] = malloc(2 * 2 * 4 * sizeof(float) * 16);
        cr_assert_eq(dl_pipeline_generate(sd[k], &p, 1, &seed, DL_SEED_PER_IMAGE, img[k], lat[k], NULL, NULL), DL_OK,
                     "%s", dl_error_msg());
        mean[k] = malloc(2 * 2 * 4 * sizeof(float) * 16);
        logvar[k] = malloc(2 * 2 * 4 * sizeof(float) * 16);
        cr_assert_eq(dl_sd_vae_encode(sd[k], 1, 16, 16, px, mean[k], logvar[k]), DL_OK, "%s", dl_error_msg());
    }
    expect_same(img[1], img[0], 16 * 16 * 3, "image");
    const size_t nl = (size_t)(16 / dl_sd_vae_factor(sd[0])) * (16 / dl_sd_vae_factor(sd[0])) * 4;
    expect_same(mean[1], mean[0], nl, "VAE encoder mean");
    expect_same(logvar[1], logvar[0], nl, "VAE encoder logvar");
    /* the latent cache's key names the VAE by its weights' values, not by how they are held */
    uint64_t fp[2];
    for (int k = 0; k < 2; k++) {
        dl_checkpoint ck;
        cr_assert_eq(dl_ckpt_open(&ck, h, NULL), DL_OK, "%s", dl_error_msg());
        ck.weight_dtypes = k ? 1u << DL_F16 : 0;
        dl_arena w;
        dl_vae vae;
        cr_assert_eq(dl_arena_init(&w, "weights", tu_vae_weights_bytes(&ck)), DL_OK);
        cr_assert_eq(dl_vae_load(&vae, &ck, &w), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(vae.enc.conv_in.wdt, k ? DL_F16 : DL_F32);
        fp[k] = dl_vae_fingerprint(NULL, &vae);
        dl_vae_free(&vae);
        dl_arena_free(&w);
        dl_ckpt_close(&ck);
    }
    cr_expect_eq(fp[0], fp[1], "the VAE fingerprint depends on how the weights are held");
    cr_expect_eq(dl_sd_lora_add(sd[1], tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors"), 1.f, 1.f, 0),
                 DL_ERR, "a LoRA was merged into fp16 weights");
    cr_expect(strstr(dl_error_msg(), "cannot merge a LoRA") && strstr(dl_error_msg(), "F16"), "message: %s",
              dl_error_msg());
    cr_expect_eq(dl_sd_lora_add(sd[0], tu_path("tests/golden/tiny_pipe_loras/epoch1.safetensors"), 1.f, 1.f, 0),
                 DL_OK, "%s", dl_error_msg());
    for (int k = 0; k < 2; k++) {
        dl_sd_close(sd[k]);
        free(img[k]), free(lat[k]), free(mean[k]), free(logvar[k]);
    }
    free(px);
}

/* The CUDA backend (on the emulated device) keeps fp16 weights in device memory and widens each
 * one for the op that reads it: the same image as with fp32 weights. */
Test(weight_dtype, cuda_backend_samples_the_same_with_fp16_weights, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini,
     .timeout = 600)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    const dl_backend *be = dl_backend_find("cuda");
    cr_assert(be && be->weight_dtypes & (1u << DL_F16));
    const char *h = tu_tmp("pipe_f16.safetensors");
    cr_assert_eq(dl_ckpt_convert(tu_path("tests/golden/tiny_pipe"), h, DL_LAYOUT_SINGLE, DL_F16, NULL), DL_OK, "%s",
                 dl_error_msg());
    dl_ctx ctx;
    cr_assert_eq(dl_ctx_init_backend(&ctx, 2, be), DL_OK, "%s", dl_error_msg());
    float img[2][16 * 16 * 3];
    for (int k = 0; k < 2; k++) {
        dl_sd *sd;
        cr_assert_eq(dl_sd_open(&sd, h, tu_path("tests/golden/tiny_pipe/tokenizer"), &ctx, k == 0), DL_OK, "%s",
                     dl_error_msg());
        dl_gen_params p;
        dl_gen_params_default(&p);
        p.prompt = "a red circle on a blue background";
        p.width = p.height = 16;
        p.steps = 2;
        p.cfg_scale = 5.0f;
        const uint64_t seed = 7;
        cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, img[k], NULL, NULL, NULL), DL_OK, "%s",
                     dl_error_msg());
        dl_sd_close(sd);
    }
    expect_same(img[1], img[0], 16 * 16 * 3, "cuda (emulated) image");
    dl_ctx_free(&ctx);
}
