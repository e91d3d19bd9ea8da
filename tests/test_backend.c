/* test_backend.c - the op table (backend/backend.h): networks reach every op through dl_be(ctx)
 * and never name a backend's functions. A counting table (the CPU ops behind wrappers) runs a
 * UNet LoRA training step, a CLIP forward and a VAE decode bit-identically to the plain CPU ctx
 * while seeing the ops called; a poisoned table (linear or conv forwards writing zeros) changes
 * the networks' outputs; no source file of the model, training, sampling or LoRA code calls a
 * dl_cpu_ function; dl_backend_find knows "cpu" and "cuda" and refuses the others by name. */
#include "testutil.h"
#include "backend/backend.h"
#include "model/clip.h"
#include "model/vae.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a counting backend ---- */
enum { OP_LINEAR_F, OP_LINEAR_B, OP_CONV_F, OP_CONV_B, OP_GN_F, OP_GN_B, OP_LN_F, OP_LN_B, OP_ATTN_F, OP_ATTN_B,
       OP_LORA_LIN_F, OP_LORA_LIN_B, OP_LORA_CONV_F, OP_LORA_CONV_B, OP_MSE_F, OP_N };
static const char *const k_op_names[OP_N] = {"linear_forward", "linear_backward", "conv2d_forward", "conv2d_backward",
                                             "groupnorm_forward", "groupnorm_backward", "layernorm_forward",
                                             "layernorm_backward", "attention_forward", "attention_backward",
                                             "lora_linear_forward", "lora_linear_backward", "lora_conv_forward",
                                             "lora_conv_backward", "mse_loss_forward"};
static long g_calls[OP_N];
static int g_poison; /* 1: linear forwards (plain and with LoRA) write zeros; 2: conv forwards do */

static void c_linear_f(const dl_ctx *c, int64_t M, int64_t in, int64_t out, const float *x, const void *w,
                       dl_dtype wdt, const float *b, float *y)
{
    g_calls[OP_LINEAR_F]++;
    if (g_poison == 1) memset(y, 0, sizeof(float) * (size_t)(M * out));
    else dl_backend_cpu.linear_forward(c, M, in, out, x, w, wdt, b, y);
}
static void c_linear_b(const dl_ctx *c, int64_t M, int64_t in, int64_t out, const float *x, const void *w,
                       dl_dtype wdt, const float *dy, float *dx, float *dw, float *db)
{
    g_calls[OP_LINEAR_B]++;
    dl_backend_cpu.linear_backward(c, M, in, out, x, w, wdt, dy, dx, dw, db);
}
static void c_conv_f(const dl_ctx *c, const dl_conv2d_shape *s, const float *x, const void *w, dl_dtype wdt,
                     const float *b, float *y)
{
    g_calls[OP_CONV_F]++;
    if (g_poison == 2)
        memset(y, 0, sizeof(float) * (size_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s) * (size_t)s->Cout);
    else dl_backend_cpu.conv2d_forward(c, s, x, w, wdt, b, y);
}
static void c_conv_b(const dl_ctx *c, const dl_conv2d_shape *s, const float *x, const void *w, dl_dtype wdt,
                     const float *dy, float *dx, float *dw, float *db)
{
    g_calls[OP_CONV_B]++;
    dl_backend_cpu.conv2d_backward(c, s, x, w, wdt, dy, dx, dw, db);
}
static void c_gn_f(const dl_ctx *c, dl_groupnorm_shape s, const float *x, const float *g, const float *b, float *y,
                   float *mean, float *rstd)
{
    g_calls[OP_GN_F]++;
    dl_backend_cpu.groupnorm_forward(c, s, x, g, b, y, mean, rstd);
}
static void c_gn_b(const dl_ctx *c, dl_groupnorm_shape s, const float *x, const float *g, const float *b,
                   const float *mean, const float *rstd, const float *dy, float *dx, float *dg, float *db)
{
    g_calls[OP_GN_B]++;
    dl_backend_cpu.groupnorm_backward(c, s, x, g, b, mean, rstd, dy, dx, dg, db);
}
static void c_ln_f(const dl_ctx *c, int64_t M, int64_t C, float eps, const float *x, const float *g, const float *b,
                   float *y, float *mean, float *rstd)
{
    g_calls[OP_LN_F]++;
    dl_backend_cpu.layernorm_forward(c, M, C, eps, x, g, b, y, mean, rstd);
}
static void c_ln_b(const dl_ctx *c, int64_t M, int64_t C, const float *x, const float *g, const float *mean,
                   const float *rstd, const float *dy, float *dx, float *dg, float *db)
{
    g_calls[OP_LN_B]++;
    dl_backend_cpu.layernorm_backward(c, M, C, x, g, mean, rstd, dy, dx, dg, db);
}
static void c_attn_f(const dl_ctx *c, dl_attention_shape s, const float *q, const float *k, const float *v, float *o,
                     float *lse)
{
    g_calls[OP_ATTN_F]++;
    dl_backend_cpu.attention_forward(c, s, q, k, v, o, lse);
}
static void c_attn_b(const dl_ctx *c, dl_attention_shape s, const float *q, const float *k, const float *v,
                     const float *o, const float *lse, const float *dout, float *dq, float *dk, float *dv)
{
    g_calls[OP_ATTN_B]++;
    dl_backend_cpu.attention_backward(c, s, q, k, v, o, lse, dout, dq, dk, dv);
}
static void c_mse_f(const dl_ctx *c, int64_t N, int64_t D, const float *p, const float *t, const float *w, float *ps,
                    float *loss)
{
    g_calls[OP_MSE_F]++;
    dl_backend_cpu.mse_loss_forward(c, N, D, p, t, w, ps, loss);
}

static void c_lora_lin_f(const dl_ctx *c, int64_t M, int64_t in, int64_t out, int64_t r, float sc, const float *x,
                         const void *W, dl_dtype wdt, const float *b, const float *A, const float *B, float *h,
                         float *y)
{
    g_calls[OP_LORA_LIN_F]++;
    if (g_poison == 1) memset(y, 0, sizeof(float) * (size_t)(M * out));
    else dl_backend_cpu.lora_linear_forward(c, M, in, out, r, sc, x, W, wdt, b, A, B, h, y);
}

static void c_lora_lin_b(const dl_ctx *c, int64_t M, int64_t in, int64_t out, int64_t r, float sc, const float *x,
                         const void *W, dl_dtype wdt, const float *A, const float *B, const float *h, const float *dy,
                         float *dh, float *dx, float *dA, float *dB)
{
    g_calls[OP_LORA_LIN_B]++;
    dl_backend_cpu.lora_linear_backward(c, M, in, out, r, sc, x, W, wdt, A, B, h, dy, dh, dx, dA, dB);
}
static void c_lora_conv_f(const dl_ctx *c, const dl_conv2d_shape *s, int64_t r, float sc, const float *x,
                          const void *W, dl_dtype wdt, const float *b, const float *A, const float *B, float *h,
                          float *y)
{
    g_calls[OP_LORA_CONV_F]++;
    if (g_poison == 2)
        memset(y, 0, sizeof(float) * (size_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s) * (size_t)s->Cout);
    else dl_backend_cpu.lora_conv_forward(c, s, r, sc, x, W, wdt, b, A, B, h, y);
}

static dl_backend counting_backend(void)
{
    dl_backend b = dl_backend_cpu;
    b.name = "counting";
    b.linear_forward = c_linear_f;
    b.linear_backward = c_linear_b;
    b.conv2d_forward = c_conv_f;
    b.conv2d_backward = c_conv_b;
    b.groupnorm_forward = c_gn_f;
    b.groupnorm_backward = c_gn_b;
    b.layernorm_forward = c_ln_f;
    b.layernorm_backward = c_ln_b;
    b.attention_forward = c_attn_f;
    b.attention_backward = c_attn_b;
    b.mse_loss_forward = c_mse_f;
    b.lora_linear_forward = c_lora_lin_f;
    b.lora_linear_backward = c_lora_lin_b;
    b.lora_conv_forward = c_lora_conv_f;
    return b;
}

/* One UNet LoRA training step on ctx c: loss, output and every gradient into res. */
typedef struct step_out {
    double loss;
    float *out, *grads;
    size_t nout, ng;
} step_out;

static void unet_step(const dl_ctx *c, tu_unet_rig *r, step_out *s)
{
    s->nout = (size_t)r->N * r->H * r->W * r->C_out;
    const size_t nctx = (size_t)r->N * r->T * r->u.cfg.cross_attention_dim;
    s->ng = nctx;
    for (int i = 0; i < r->n; i++) s->ng += (size_t)(r->nA[i] + r->nB[i]);
    dl_unet_tape *tape = malloc(sizeof *tape);
    float *dout = malloc(s->nout * sizeof(float)), *dctx = malloc(nctx * sizeof(float));
    s->out = malloc(s->nout * sizeof(float));
    s->grads = malloc(s->ng * sizeof(float));
    cr_assert(tape && dout && dctx && s->out && s->grads);
    s->loss = tu_unet_rig_step(c, r, tape, s->out, dout, dctx, s->grads);
    free(tape), free(dout), free(dctx);
}

static void step_free(step_out *s) { free(s->out), free(s->grads); }

Test(backend, unet_training_step_goes_through_the_table)
{
    dl_ctx cpu, cnt;
    cr_assert_eq(dl_ctx_init(&cpu, 2), DL_OK);
    const dl_backend counting = counting_backend();
    cr_assert_eq(dl_ctx_init_backend(&cnt, 2, &counting), DL_OK);
    cr_expect_eq(dl_be(&cnt), &counting);
    cr_expect_eq(dl_be(&cpu), &dl_backend_cpu);
    cr_expect_eq(dl_be(NULL), &dl_backend_cpu);
    tu_unet_rig r;
    tu_unet_rig_open(&r);
    step_out ref, got;
    unet_step(&cpu, &r, &ref);
    memset(g_calls, 0, sizeof g_calls);
    g_poison = 0;
    unet_step(&cnt, &r, &got);
    cr_expect(got.loss == ref.loss && memcmp(got.out, ref.out, ref.nout * sizeof(float)) == 0 &&
                  memcmp(got.grads, ref.grads, ref.ng * sizeof(float)) == 0,
              "the counting table (CPU ops behind wrappers) changed the step's results");
    /* every linear and conv of the rig holds a LoRA: their forwards are the fused LoRA ops */
    static const int expect_called[] = {OP_LORA_LIN_F, OP_LORA_LIN_B, OP_LORA_CONV_F, OP_GN_F, OP_GN_B,
                                        OP_LN_F, OP_LN_B, OP_ATTN_F, OP_ATTN_B, OP_MSE_F};
    for (size_t i = 0; i < sizeof expect_called / sizeof *expect_called; i++)
        cr_expect(g_calls[expect_called[i]] > 0, "%s never called through the table", k_op_names[expect_called[i]]);
    cr_log_info("training step through the table: lora linear %ld/%ld, lora conv %ld, conv %ld, attention %ld/%ld",
                g_calls[OP_LORA_LIN_F], g_calls[OP_LORA_LIN_B], g_calls[OP_LORA_CONV_F], g_calls[OP_CONV_F],
                g_calls[OP_ATTN_F], g_calls[OP_ATTN_B]);
    step_free(&got);

    /* poisoned linear / conv forwards change the output: the networks do not call around them */
    for (int p = 1; p <= 2; p++) {
        g_poison = p;
        unet_step(&cnt, &r, &got);
        g_poison = 0;
        cr_expect(tu_rel_l2(got.out, ref.out, ref.nout) > 1e-3, "a poisoned %s left the UNet output unchanged",
                  p == 1 ? "linear forward" : "conv forward");
        step_free(&got);
    }
    step_free(&ref);
    tu_unet_rig_close(&r);
    dl_ctx_free(&cnt);
    dl_ctx_free(&cpu);
}

Test(backend, clip_and_vae_go_through_the_table)
{
    dl_ctx cpu, cnt;
    cr_assert_eq(dl_ctx_init(&cpu, 2), DL_OK);
    const dl_backend counting = counting_backend();
    cr_assert_eq(dl_ctx_init_backend(&cnt, 2, &counting), DL_OK);
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_sd15"), NULL), DL_OK, "%s", dl_error_msg());
    dl_arena w, scratch;
    dl_clip clip;
    dl_vae vae;
    cr_assert_eq(dl_arena_init(&w, "weights", tu_clip_weights_bytes(&ck) + tu_vae_weights_bytes(&ck)),
                 DL_OK);
    cr_assert_eq(dl_clip_load(&clip, &ck, &w), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_vae_load(&vae, &ck, &w), DL_OK, "%s", dl_error_msg());
    const int T = 77, C = ck.cfg.text.hidden_size, f = 1 << (ck.cfg.vae.n_blocks - 1), h = 4;
    const size_t sb = dl_clip_scratch_bytes(&clip, 1, T), vb = dl_vae_scratch_bytes(&ck.cfg.vae, 1, h * f, h * f);
    cr_assert_eq(dl_arena_init(&scratch, "scratch", sb > vb ? sb : vb), DL_OK);
    int32_t ids[77];
    for (int i = 0; i < T; i++) ids[i] = (int32_t)((i * 37 + 5) % ck.cfg.text.vocab_size);
    const size_t nz = (size_t)h * h * ck.cfg.vae.latent_channels, nimg = (size_t)h * f * h * f * 3;
    float *z = malloc(nz * sizeof(float));
    tu_fill_uniform(z, nz, 77, -1.f, 1.f);
    float *e[3], *img[3];
    for (int k = 0; k < 3; k++) {
        e[k] = malloc((size_t)T * C * sizeof(float));
        img[k] = malloc(nimg * sizeof(float));
    }
    dl_clip_forward(&cpu, &clip, 1, T, ids, ck.cfg.text.num_layers, 1, e[0], &scratch);
    dl_vae_decode(&cpu, &vae, 1, h, h, z, img[0], &scratch);
    memset(g_calls, 0, sizeof g_calls);
    g_poison = 0;
    dl_clip_forward(&cnt, &clip, 1, T, ids, ck.cfg.text.num_layers, 1, e[1], &scratch);
    const long clip_lin = g_calls[OP_LINEAR_F], clip_ln = g_calls[OP_LN_F], clip_attn = g_calls[OP_ATTN_F];
    dl_vae_decode(&cnt, &vae, 1, h, h, z, img[1], &scratch);
    cr_expect(memcmp(e[0], e[1], (size_t)T * C * sizeof(float)) == 0, "CLIP through the counting table differs");
    cr_expect(memcmp(img[0], img[1], nimg * sizeof(float)) == 0, "VAE decode through the counting table differs");
    cr_expect(clip_lin > 0 && clip_ln > 0 && clip_attn > 0, "CLIP: linear %ld, layernorm %ld, attention %ld", clip_lin,
              clip_ln, clip_attn);
    cr_expect(g_calls[OP_CONV_F] > 0 && g_calls[OP_GN_F] > 0, "VAE: conv %ld, groupnorm %ld", g_calls[OP_CONV_F],
              g_calls[OP_GN_F]);
    g_poison = 1;
    dl_clip_forward(&cnt, &clip, 1, T, ids, ck.cfg.text.num_layers, 1, e[2], &scratch);
    g_poison = 2;
    dl_vae_decode(&cnt, &vae, 1, h, h, z, img[2], &scratch);
    g_poison = 0;
    cr_expect(tu_rel_l2(e[2], e[0], (size_t)T * C) > 1e-3, "a poisoned linear_forward left CLIP unchanged");
    cr_expect(tu_rel_l2(img[2], img[0], nimg) > 1e-3, "a poisoned conv2d_forward left the VAE decoder unchanged");
    for (int k = 0; k < 3; k++) free(e[k]), free(img[k]);
    free(z);
    dl_clip_free(&clip);
    dl_vae_free(&vae);
    dl_arena_free(&w);
    dl_arena_free(&scratch);
    dl_ckpt_close(&ck);
    dl_ctx_free(&cnt);
    dl_ctx_free(&cpu);
}

/* No source of the code written against the table names a backend's function. */
Test(backend, no_network_code_calls_cpu_ops_by_name)
{
    static const char *const dirs[] = {"host/model", "host/train", "host/sample", "host/lora"};
    int files = 0;
    for (size_t d = 0; d < sizeof dirs / sizeof *dirs; d++) {
        const char *dir = tu_path(dirs[d]);
        char dirbuf[4096];
        snprintf(dirbuf, sizeof dirbuf, "%s", dir);
        DIR *dp = opendir(dirbuf);
        cr_assert_not_null(dp, "cannot list %s", dirbuf);
        struct dirent *de;
        while ((de = readdir(dp))) {
            size_t n = strlen(de->d_name);
            if (n < 3 || strcmp(de->d_name + n - 2, ".c") != 0) continue;
            char path[4400];
            snprintf(path, sizeof path, "%s/%s", dirbuf, de->d_name);
            FILE *f = fopen(path, "r");
            cr_assert_not_null(f, "cannot read %s", path);
            char line[1024];
            int lineno = 0;
            while (fgets(line, sizeof line, f)) {
                lineno++;
                cr_expect(strstr(line, "dl_cpu_") == NULL, "%s:%d calls a CPU op by name: %s", path, lineno, line);
            }
            fclose(f);
            files++;
        }
        closedir(dp);
    }
    cr_expect(files > 30, "only %d source files scanned", files);
}

Test(backend, find_by_name)
{
    cr_expect_eq(dl_backend_find("cpu"), &dl_backend_cpu);
    cr_expect_str_eq(dl_backend_cpu.name, "cpu");
    cr_expect_eq(dl_backend_find("cuda"), &dl_backend_cuda); /* every build: the emulated device always exists */
    cr_expect_str_eq(dl_backend_cuda.name, "cuda");
    cr_expect_null(dl_backend_find("metal"));
    cr_expect(strstr(dl_error_msg(), "metal") != NULL && strstr(dl_error_msg(), "cpu") != NULL, "%s", dl_error_msg());
}
