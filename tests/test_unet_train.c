/* test_unet_train.c - one LoRA training step through the UNet (tape forward, MSE, backward)
 * against PyTorch: the loss, every LoRA gradient (linear LoRA on sd-scripts' default targets and
 * LoCon on resnet / sampler convs) and d(context); gradient checkpointing gives identical
 * gradients; two backward calls accumulate exactly 2x; float64-step finite differences of the
 * fp32 loss agree with the backward; arenas sized by the sizing functions are enough (and the
 * activation arena exactly).
 * Golden data: tests/golden/unet_train.safetensors from tests/gen/gen_unet_train.py (float64
 * torch, hand-written LoRA wrappers) on the tiny models tiny_unet_sd1x/ and tiny_unet_sd2x/. */
#include "testutil.h"
#include "core/arena.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/unet.h"
#include "ops/cpu/loss.h"
#include "train/unet_train.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bound for fp32 LoRA gradients vs the float64 reference. The figures reached are
 * logged per case (worst module and whole-gradient relative L2). */
#define GRAD_TOL 1e-4
#define OUT_TOL 1e-5

typedef struct adapter {
    const char *name;
    dl_lora lora;
    int64_t nA, nB;
    float *refdA, *refdB; /* [r, K], [out, r] */
} adapter;

typedef struct rig {
    dl_checkpoint ck;
    dl_unet u;
    dl_arena w;
    dl_st_file g;
    char case_name[16];
    int N, H, W, T, Dc, C_out;
    float *x, *t, *ctx, *target, *ref_out, *ref_dctx;
    double ref_loss;
    int n;
    adapter *a;
} rig;

static float *golden(rig *r, const char *tensor, int64_t *numel)
{
    char key[1024];
    snprintf(key, sizeof key, "%s.%s", r->case_name, tensor);
    return tu_golden_f32(&r->g, key, numel);
}

static void rig_open(rig *r, const char *model, const char *case_name)
{
    memset(r, 0, sizeof *r);
    snprintf(r->case_name, sizeof r->case_name, "%s", case_name);
    cr_assert_eq(dl_ckpt_open(&r->ck, tu_path(model), NULL), DL_OK, "open %s: %s", model, dl_error_msg());
    cr_assert_eq(dl_arena_init(&r->w, "weights", tu_unet_weights_bytes(&r->ck)), DL_OK);
    cr_assert_eq(dl_unet_load(&r->u, &r->ck, &r->w), DL_OK, "load %s: %s", model, dl_error_msg());
    tu_golden_open(&r->g, "unet_train");
    char key[512];
    snprintf(key, sizeof key, "%s.x", case_name);
    const dl_st_tensor *tx = dl_st_find(&r->g, key);
    snprintf(key, sizeof key, "%s.ctx", case_name);
    const dl_st_tensor *tc = dl_st_find(&r->g, key);
    cr_assert(tx && tc, "golden case %s missing", case_name);
    r->N = (int)tx->shape[0], r->H = (int)tx->shape[1], r->W = (int)tx->shape[2];
    r->T = (int)tc->shape[1], r->Dc = (int)tc->shape[2];
    r->C_out = r->u.cfg.out_channels;
    cr_assert_eq(r->Dc, r->u.cfg.cross_attention_dim);
    r->x = golden(r, "x", NULL);
    r->t = golden(r, "t", NULL);
    r->ctx = golden(r, "ctx", NULL);
    r->target = golden(r, "target", NULL);
    r->ref_out = golden(r, "out", NULL);
    r->ref_dctx = golden(r, "dctx", NULL);
    float *l = golden(r, "loss", NULL);
    r->ref_loss = l[0];
    free(l);
    snprintf(key, sizeof key, "%s.n_lora", case_name);
    const int want = (int)tu_golden_int(&r->g, key);

    /* attach an adapter to every module the reference adapted, found by diffusers name */
    int nm = 0;
    const dl_unet_module *mods = dl_unet_modules(&r->u, &nm);
    r->a = calloc((size_t)nm, sizeof *r->a);
    for (int i = 0; i < nm; i++) {
        snprintf(key, sizeof key, "%s.%s.A", case_name, mods[i].name);
        const dl_st_tensor *tA = dl_st_find(&r->g, key);
        if (!tA) continue;
        adapter *ad = &r->a[r->n++];
        ad->name = mods[i].name;
        cr_assert_eq(dl_unet_find(&r->u, ad->name), &mods[i]);
        char sub[600];
        snprintf(sub, sizeof sub, "%s.A", ad->name);
        ad->lora.A = golden(r, sub, &ad->nA);
        snprintf(sub, sizeof sub, "%s.B", ad->name);
        ad->lora.B = golden(r, sub, &ad->nB);
        snprintf(sub, sizeof sub, "%s.dA", ad->name);
        ad->refdA = golden(r, sub, NULL);
        snprintf(sub, sizeof sub, "%s.dB", ad->name);
        ad->refdB = golden(r, sub, NULL);
        snprintf(sub, sizeof sub, "%s.scale", ad->name);
        float *sc = golden(r, sub, NULL);
        ad->lora.scale = sc[0];
        free(sc);
        ad->lora.r = (int)tA->shape[0];
        ad->lora.dA = calloc((size_t)ad->nA, sizeof(float));
        ad->lora.dB = calloc((size_t)ad->nB, sizeof(float));
        if (mods[i].kind == DL_MODULE_LINEAR) {
            const dl_linear *m = mods[i].linear;
            cr_assert(ad->nA == (int64_t)ad->lora.r * m->in && ad->nB == (int64_t)m->out * ad->lora.r, "%s: shapes",
                      ad->name);
            mods[i].linear->lora = &ad->lora;
        } else {
            const dl_conv *m = mods[i].conv;
            cr_assert(ad->nA == (int64_t)ad->lora.r * m->k * m->k * m->cin && ad->nB == (int64_t)m->cout * ad->lora.r,
                      "%s: shapes", ad->name);
            mods[i].conv->lora = &ad->lora;
        }
    }
    cr_assert_eq(r->n, want, "%s: attached %d adapters, the reference has %d", case_name, r->n, want);
}

static void rig_close(rig *r)
{
    for (int i = 0; i < r->n; i++) {
        adapter *ad = &r->a[i];
        free(ad->lora.A), free(ad->lora.B), free(ad->lora.dA), free(ad->lora.dB), free(ad->refdA), free(ad->refdB);
    }
    free(r->a);
    free(r->x), free(r->t), free(r->ctx), free(r->target), free(r->ref_out), free(r->ref_dctx);
    dl_st_close(&r->g);
    dl_unet_free(&r->u);
    dl_arena_free(&r->w);
    dl_ckpt_close(&r->ck);
}

static void zero_grads(rig *r)
{
    for (int i = 0; i < r->n; i++) {
        memset(r->a[i].lora.dA, 0, (size_t)r->a[i].nA * sizeof(float));
        memset(r->a[i].lora.dB, 0, (size_t)r->a[i].nB * sizeof(float));
    }
}

/* Arenas sized by the sizing functions (running out aborts the test). */
typedef struct arenas {
    dl_arena act, scratch;
    size_t act_bytes, scratch_bytes;
} arenas;

static void arenas_init(arenas *A, const rig *r, int checkpoint, int want_dctx)
{
    A->act_bytes = dl_unet_train_act_bytes(&r->u, r->N, r->H, r->W, r->T, checkpoint);
    A->scratch_bytes = dl_unet_train_scratch_bytes(&r->u, r->N, r->H, r->W, r->T, checkpoint, want_dctx);
    cr_assert_eq(dl_arena_init(&A->act, "activations", A->act_bytes), DL_OK);
    cr_assert_eq(dl_arena_init(&A->scratch, "scratch", A->scratch_bytes), DL_OK);
}

static void arenas_free(arenas *A)
{
    dl_arena_free(&A->act);
    dl_arena_free(&A->scratch);
}

/* One step: zeroed grads, forward on the tape, MSE loss and its gradient, backward (twice when
 * twice != 0). out [N, H, W, C_out] and dctx [N, T, Dc] (may be NULL) are the caller's. */
static double step(rig *r, arenas *A, int checkpoint, float *out, float *dctx, int twice)
{
    const dl_ctx *ctx = tu_ctx();
    const int64_t D = (int64_t)r->H * r->W * r->C_out;
    dl_unet_tape *tape = malloc(sizeof *tape);
    zero_grads(r);
    dl_arena_reset(&A->act);
    dl_unet_train_forward(ctx, &r->u, tape, r->N, r->H, r->W, r->x, r->t, r->ctx, r->T, out, checkpoint, &A->act,
                          &A->scratch);
    cr_expect_eq(A->scratch.used, 0, "forward: scratch not released");
    cr_expect_eq(A->act.used, A->act_bytes, "act: used %zu bytes, dl_unet_train_act_bytes said %zu", A->act.used,
                 A->act_bytes);
    double loss = dl_cpu_mse_loss_forward(ctx, r->N, D, out, r->target, NULL, NULL);
    float *dout = malloc((size_t)(r->N * D) * sizeof(float));
    dl_cpu_mse_loss_backward(ctx, r->N, D, out, r->target, NULL, 1.0f, dout, NULL);
    for (int k = 0; k < (twice ? 2 : 1); k++) dl_unet_backward(ctx, tape, dout, dctx, &A->scratch);
    cr_expect_eq(A->scratch.used, 0, "backward: scratch not released");
    cr_expect(A->scratch.peak <= A->scratch_bytes, "scratch peak %zu > sized %zu", A->scratch.peak, A->scratch_bytes);
    free(dout);
    free(tape);
    return loss;
}

/* Loss and every gradient against the reference. */
static void check_against_torch(const char *model, const char *case_name)
{
    rig r;
    rig_open(&r, model, case_name);
    arenas A;
    arenas_init(&A, &r, 0, 1);
    const size_t nout = (size_t)r.N * r.H * r.W * r.C_out, nctx = (size_t)r.N * r.T * r.Dc;
    float *out = tu_alloc_nan(nout), *dctx = tu_alloc_nan(nctx);
    double loss = step(&r, &A, 0, out, dctx, 0);

    tu_expect_close(out, r.ref_out, nout, OUT_TOL, "training forward output");
    /* the training forward is the inference forward, recorded */
    float *inf = tu_alloc_nan(nout);
    dl_arena s;
    cr_assert_eq(dl_arena_init(&s, "scratch", dl_unet_scratch_bytes(&r.u, r.N, r.H, r.W, r.T)), DL_OK);
    dl_unet_forward(tu_ctx(), &r.u, r.N, r.H, r.W, r.x, r.t, r.ctx, r.T, inf, &s);
    dl_arena_free(&s);
    cr_expect(memcmp(inf, out, nout * sizeof(float)) == 0, "%s: training forward differs from dl_unet_forward (rel %g)",
              case_name, tu_rel_l2(out, inf, nout));
    free(inf);

    const double lerr = fabs(loss - r.ref_loss) / fabs(r.ref_loss);
    cr_expect(lerr <= OUT_TOL, "%s: loss %.9g vs torch %.9g (rel %.3g)", case_name, loss, r.ref_loss, lerr);

    double worst = 0, num = 0, den = 0;
    const char *worst_name = "";
    for (int i = 0; i < r.n; i++) {
        adapter *ad = &r.a[i];
        char label[600];
        for (int k = 0; k < 2; k++) {
            const float *got = k ? ad->lora.dB : ad->lora.dA, *ref = k ? ad->refdB : ad->refdA;
            const size_t n = (size_t)(k ? ad->nB : ad->nA);
            snprintf(label, sizeof label, "%s %s.%s", case_name, ad->name, k ? "dB" : "dA");
            tu_expect_close(got, ref, n, GRAD_TOL, label);
            const double e = tu_rel_l2(got, ref, n);
            if (e > worst) worst = e, worst_name = ad->name;
            for (size_t j = 0; j < n; j++) {
                const double d = (double)got[j] - ref[j];
                num += d * d, den += (double)ref[j] * ref[j];
            }
        }
    }
    tu_expect_close(dctx, r.ref_dctx, nctx, GRAD_TOL, "d context");
    cr_log_info("unet_train %s: %d adapters, loss rel err %.2g, LoRA grads rel L2 %.2g overall, worst module %.2g "
                "(%s), dctx %.2g; act %zu B, scratch %zu B (peak %zu)",
                case_name, r.n, lerr, sqrt(num / den), worst, worst_name, tu_rel_l2(dctx, r.ref_dctx, nctx),
                A.act_bytes, A.scratch_bytes, A.scratch.peak);
    free(out), free(dctx);
    arenas_free(&A);
    rig_close(&r);
}

Test(unet_train, sd1x_step_matches_torch) { check_against_torch("tests/golden/tiny_unet_sd1x", "sd1x"); }

Test(unet_train, sd2x_step_matches_torch) { check_against_torch("tests/golden/tiny_unet_sd2x", "sd2x"); }

/* Only to_k / to_v / to_out.0 adapted (no to_q, proj_in/out, ff), one resnet LoCon, one
 * time_emb_proj LoRA: the layers without a LoRA and the skipped recomputations. */
Test(unet_train, sd1x_partial_targets_match_torch)
{
    check_against_torch("tests/golden/tiny_unet_sd1x", "sd1x_subset");
}

/* All LoRA gradients, concatenated (malloc'd). */
static float *grads(const rig *r, size_t *n)
{
    size_t tot = 0;
    for (int i = 0; i < r->n; i++) tot += (size_t)(r->a[i].nA + r->a[i].nB);
    float *g = malloc(tot * sizeof(float)), *p = g;
    for (int i = 0; i < r->n; i++) {
        memcpy(p, r->a[i].lora.dA, (size_t)r->a[i].nA * sizeof(float)), p += r->a[i].nA;
        memcpy(p, r->a[i].lora.dB, (size_t)r->a[i].nB * sizeof(float)), p += r->a[i].nB;
    }
    *n = tot;
    return g;
}

Test(unet_train, checkpointing_gives_identical_gradients)
{
    const char *models[2][2] = {{"tests/golden/tiny_unet_sd1x", "sd1x"}, {"tests/golden/tiny_unet_sd2x", "sd2x"}};
    for (int m = 0; m < 2; m++) {
        rig r;
        rig_open(&r, models[m][0], models[m][1]);
        const size_t nout = (size_t)r.N * r.H * r.W * r.C_out, nctx = (size_t)r.N * r.T * r.Dc;
        float *out0 = tu_alloc_nan(nout), *out1 = tu_alloc_nan(nout);
        float *dc0 = tu_alloc_nan(nctx), *dc1 = tu_alloc_nan(nctx);
        arenas A0, A1;
        arenas_init(&A0, &r, 0, 1);
        arenas_init(&A1, &r, 1, 1);
        double l0 = step(&r, &A0, 0, out0, dc0, 0);
        size_t n0, n1;
        float *g0 = grads(&r, &n0);
        double l1 = step(&r, &A1, 1, out1, dc1, 0);
        float *g1 = grads(&r, &n1);
        cr_assert_eq(n0, n1);
        cr_expect(l0 == l1, "%s: loss %.9g with checkpointing, %.9g without", models[m][1], l1, l0);
        cr_expect(memcmp(out0, out1, nout * sizeof(float)) == 0, "%s: outputs differ", models[m][1]);
        cr_expect(memcmp(g0, g1, n0 * sizeof(float)) == 0, "%s: LoRA gradients differ with checkpointing (rel %g)",
                  models[m][1], tu_rel_l2(g1, g0, n0));
        cr_expect(memcmp(dc0, dc1, nctx * sizeof(float)) == 0, "%s: d context differs with checkpointing",
                  models[m][1]);
        cr_expect(A1.act_bytes < A0.act_bytes, "checkpointing keeps %zu bytes, no checkpointing %zu", A1.act_bytes,
                  A0.act_bytes);
        cr_log_info("unet_train %s: activations %zu B stored, %zu B checkpointed; scratch %zu B / %zu B",
                    models[m][1], A0.act_bytes, A1.act_bytes, A0.scratch_bytes, A1.scratch_bytes);
        free(g0), free(g1), free(out0), free(out1), free(dc0), free(dc1);
        arenas_free(&A0);
        arenas_free(&A1);
        rig_close(&r);
    }
}

Test(unet_train, two_backward_calls_accumulate_exactly_twice)
{
    rig r;
    rig_open(&r, "tests/golden/tiny_unet_sd1x", "sd1x");
    const size_t nout = (size_t)r.N * r.H * r.W * r.C_out;
    float *out = tu_alloc_nan(nout);
    for (int ck = 0; ck < 2; ck++) {
        arenas A;
        arenas_init(&A, &r, ck, 0);
        step(&r, &A, ck, out, NULL, 0);
        size_t n;
        float *g1 = grads(&r, &n);
        step(&r, &A, ck, out, NULL, 1);
        float *g2 = grads(&r, &n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += g2[i] != 2.0f * g1[i];
        cr_expect_eq(bad, 0, "checkpoint %d: %zu of %zu accumulated gradients are not exactly 2x", ck, bad, n);
        free(g1), free(g2);
        arenas_free(&A);
    }
    free(out);
    rig_close(&r);
}

/* The fp32 loss (accumulated in double) of the current adapters. */
static double loss_now(rig *r, float *out, dl_arena *s)
{
    const int64_t D = (int64_t)r->H * r->W * r->C_out;
    dl_unet_forward(tu_ctx(), &r->u, r->N, r->H, r->W, r->x, r->t, r->ctx, r->T, out, s);
    return dl_cpu_mse_loss_forward(tu_ctx(), r->N, D, out, r->target, NULL, NULL);
}

/* Central differences of the fp32 forward's loss w.r.t. the 4 entries of largest gradient in A
 * and in B of a cross-attention to_k (the context path), a resnet LoCon conv1 and the stride-2
 * downsampler LoCon. Step 1e-2 (the entries are ~0.1-0.5): the fp32 loss carries ~1e-7 relative
 * noise (~2e-7 absolute), i.e. ~1e-5 in the difference quotient, and the O(h^2) truncation is
 * of the same order; with gradient entries of ~1e-3 and above a 2e-2 relative L2 bound is a real
 * check (a missing term or factor is O(1)) without being noise-limited. */
Test(unet_train, finite_differences_agree)
{
    rig r;
    rig_open(&r, "tests/golden/tiny_unet_sd1x", "sd1x");
    const size_t nout = (size_t)r.N * r.H * r.W * r.C_out;
    float *out = tu_alloc_nan(nout);
    arenas A;
    arenas_init(&A, &r, 0, 0);
    step(&r, &A, 0, out, NULL, 0);
    dl_arena s;
    cr_assert_eq(dl_arena_init(&s, "scratch", dl_unet_scratch_bytes(&r.u, r.N, r.H, r.W, r.T)), DL_OK);
    const char *names[3] = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                            "down_blocks.1.resnets.0.conv1", "down_blocks.0.downsamplers.0.conv"};
    const double h = 1e-2;
    for (int m = 0; m < 3; m++) {
        adapter *ad = NULL;
        for (int i = 0; i < r.n; i++)
            if (!strcmp(r.a[i].name, names[m])) ad = &r.a[i];
        cr_assert_not_null(ad, "%s has no adapter", names[m]);
        for (int k = 0; k < 2; k++) {
            float *p = k ? ad->lora.B : ad->lora.A, *g = k ? ad->lora.dB : ad->lora.dA;
            const int64_t n = k ? ad->nB : ad->nA;
            enum { K = 4 };
            int64_t idx[K];
            float got[K];
            double fd[K];
            for (int q = 0; q < K; q++) { /* the K largest |g|, distinct */
                int64_t best = -1;
                for (int64_t j = 0; j < n; j++) {
                    int used = 0;
                    for (int e = 0; e < q; e++) used |= idx[e] == j;
                    if (!used && (best < 0 || fabsf(g[j]) > fabsf(g[best]))) best = j;
                }
                idx[q] = best;
                got[q] = g[best];
                const float keep = p[best];
                p[best] = (float)(keep + h);
                const double xp = p[best], lp = loss_now(&r, out, &s);
                p[best] = (float)(keep - h);
                const double xm = p[best], lm = loss_now(&r, out, &s);
                p[best] = keep;
                fd[q] = (lp - lm) / (xp - xm);
            }
            char label[600];
            snprintf(label, sizeof label, "finite differences %s.%s", names[m], k ? "B" : "A");
            tu_expect_close_d(got, fd, K, 2e-2, label);
            double num = 0, den = 0;
            for (int q = 0; q < K; q++) num += (got[q] - fd[q]) * (got[q] - fd[q]), den += fd[q] * fd[q];
            cr_log_info("unet_train FD %s.%s: rel L2 %.2g (largest |grad| %.3g)", names[m], k ? "B" : "A",
                        sqrt(num / den), fabs(got[0]));
        }
    }
    dl_arena_free(&s);
    arenas_free(&A);
    free(out);
    rig_close(&r);
}
