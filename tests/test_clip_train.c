/* test_clip_train.c - text-encoder LoRA backward (host/train/clip_train.c) against transformers'
 * CLIPTextModel with a hand-written LoRA on every linear (tests/gen/gen_clip_train.py, float64):
 * loss and every dA, dB for clip skip 2 and the last layer (1 and 4 heads), accumulation, a
 * smaller batch, frozen adapters, gradient checkpointing, fp32 finite differences, and the
 * attached forward against merged weights. */
#include "model/clip.h"
#include "ops/cpu/lora.h"
#include "ops/cpu/loss.h"
#include "testutil.h"
#include "train/clip_train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TOL_GRAD
#define TOL_GRAD 1e-4 /* LoRA gradients, fp32 vs float64 (the figure; reached: ~1e-6) */
#endif
#define TOL_FWD 1e-5  /* forward output and loss, fp32 vs float64 */

enum { MAXMOD = 64 };

typedef struct {
    dl_checkpoint ck;
    dl_arena weights, scratch, acts;
    dl_clip clip;
    dl_st_file g;
    int N, T, C, L, nmod;
    int32_t *ids;
    float *target, scale;
    dl_clip_named_linear mods[MAXMOD];
    dl_lora lora[MAXMOD];
    dl_clip_tape *tape;
    int checkpoint;
} fixture;

static void setup(fixture *f, int heads)
{
    memset(f, 0, sizeof *f);
    cr_assert_eq(dl_ckpt_open(&f->ck, tu_path("tests/golden/tiny_sd15"), NULL), DL_OK, "%s", dl_error_msg());
    f->ck.cfg.text.num_heads = heads; /* the same weights with more heads, as the generator does */
    cr_assert_eq(dl_arena_init(&f->weights, "weights", tu_clip_weights_bytes(&f->ck)), DL_OK);
    cr_assert_eq(dl_clip_load(&f->clip, &f->ck, &f->weights), DL_OK, "%s", dl_error_msg());
    f->C = f->clip.cfg.hidden_size;
    f->L = f->clip.cfg.num_layers;
    tu_golden_open(&f->g, "clip_train");
    const dl_st_tensor *t = dl_st_find(&f->g, "common.input_ids");
    cr_assert_not_null(t);
    f->N = (int)t->shape[0];
    f->T = (int)t->shape[1];
    f->ids = malloc(sizeof(int32_t) * f->N * f->T);
    for (int i = 0; i < f->N * f->T; i++) f->ids[i] = (int32_t)((const int64_t *)t->data)[i];
    int64_t ts[3] = {f->N, f->T, f->C};
    f->target = tu_golden_f32_shape(&f->g, "common.target", 3, ts);
    float *sc = tu_golden_f32(&f->g, "common.scale", NULL);
    f->scale = sc[0];
    free(sc);

    f->nmod = dl_clip_train_modules(&f->clip, f->mods, MAXMOD);
    cr_assert_eq(f->nmod, 6 * f->L);
    for (int i = 0; i < f->nmod; i++) {
        dl_clip_named_linear *m = &f->mods[i];
        cr_assert_eq(dl_clip_find(&f->clip, m->name), m->lin, "%s", m->name);
        char key[160];
        int64_t n;
        dl_lora *l = &f->lora[i];
        snprintf(key, sizeof key, "%s.A", m->name);
        l->A = tu_golden_f32(&f->g, key, &n);
        l->r = (int)(n / m->lin->in);
        cr_assert_eq((int64_t)l->r * m->lin->in, n, "%s", key);
        snprintf(key, sizeof key, "%s.B", m->name);
        l->B = tu_golden_f32(&f->g, key, &n);
        cr_assert_eq(n, (int64_t)m->lin->out * l->r, "%s", key);
        l->scale = f->scale;
        l->dA = calloc((size_t)l->r * m->lin->in, sizeof(float));
        l->dB = calloc((size_t)m->lin->out * l->r, sizeof(float));
        m->lin->lora = l;
    }
    /* the arenas of the size table, with and without gradient checkpointing */
    size_t sb = dl_clip_scratch_bytes(&f->clip, f->N, f->T), ab = 0;
    dl_size_table *tab = malloc(sizeof *tab);
    for (int ckp = 0; ckp < 2; ckp++) {
        dl_clip_size_table(&f->clip, f->N, f->T, f->L, 1, ckp, tab);
        if (tab->scratch_train > sb) sb = tab->scratch_train;
        if (tab->act > ab) ab = tab->act;
    }
    free(tab);
    cr_assert_eq(dl_arena_init(&f->scratch, "scratch", sb), DL_OK);
    cr_assert_eq(dl_arena_init(&f->acts, "activations", ab), DL_OK);
    f->tape = malloc(sizeof *f->tape);
}

/* The training forward of N sequences (ids) through `layers` layers and the final layer norm. */
static void forward(fixture *f, int N, const int32_t *ids, int layers, float *out)
{
    dl_arena_reset(&f->acts);
    dl_clip_train_forward(tu_ctx(), &f->clip, f->tape, N, f->T, ids, layers, 1, out, f->checkpoint, &f->acts,
                          &f->scratch);
}

static void teardown(fixture *f)
{
    for (int i = 0; i < f->nmod; i++) {
        f->mods[i].lin->lora = NULL;
        free(f->lora[i].A), free(f->lora[i].B), free(f->lora[i].dA), free(f->lora[i].dB);
    }
    free(f->ids);
    free(f->target);
    free(f->tape);
    dl_st_close(&f->g);
    dl_clip_free(&f->clip);
    dl_arena_free(&f->acts);
    dl_arena_free(&f->scratch);
    dl_arena_free(&f->weights);
    dl_ckpt_close(&f->ck);
}

static void zero_grads(fixture *f)
{
    for (int i = 0; i < f->nmod; i++) {
        dl_lora *l = &f->lora[i];
        if (l->dA) memset(l->dA, 0, sizeof(float) * l->r * f->mods[i].lin->in);
        if (l->dB) memset(l->dB, 0, sizeof(float) * f->mods[i].lin->out * l->r);
    }
}

/* One training step's forward + loss (+ backward when grads): returns the loss. out [N, T, C]. */
static double step(fixture *f, int layers, float *out, int backward)
{
    const int64_t n = (int64_t)f->N * f->T * f->C;
    forward(f, f->N, f->ids, layers, out);
    double loss = dl_cpu_mse_loss_forward(tu_ctx(), 1, n, out, f->target, NULL, NULL);
    if (backward) {
        float *d = tu_alloc_nan((size_t)n);
        dl_cpu_mse_loss_backward(tu_ctx(), 1, n, out, f->target, NULL, 1.0f, d, NULL);
        dl_clip_backward(tu_ctx(), f->tape, d, &f->scratch);
        free(d);
    }
    cr_expect_eq(dl_arena_mark(&f->scratch), 0, "scratch must be released");
    return loss;
}

/* Compare module i's dA, dB (those not NULL) with the golden case, scaled by mult. */
static void expect_grads(fixture *f, const char *cse, int i, double mult, double tol)
{
    const dl_clip_named_linear *m = &f->mods[i];
    const dl_lora *l = &f->lora[i];
    char key[200];
    const char *which[2] = {"dA", "dB"};
    const float *got[2] = {l->dA, l->dB};
    for (int w = 0; w < 2; w++) {
        if (!got[w]) continue;
        int64_t n;
        snprintf(key, sizeof key, "%s.%s.%s", cse, m->name, which[w]);
        float *ref = tu_golden_f32(&f->g, key, &n);
        for (int64_t j = 0; j < n; j++) ref[j] = (float)(ref[j] * mult);
        tu_expect_close(got[w], ref, (size_t)n, tol, key);
        free(ref);
    }
}

static void check_case(const char *cse, int heads, int skip)
{
    fixture f;
    setup(&f, heads);
    const int layers = f.L - skip + 1;
    const size_t n = (size_t)f.N * f.T * f.C;
    float *out = tu_alloc_nan(n), *plain = tu_alloc_nan(n);
    double loss = step(&f, layers, out, 1);
    char key[160];
    snprintf(key, sizeof key, "%s.loss", cse);
    float *ref_loss = tu_golden_f32(&f.g, key, NULL);
    cr_expect(fabs(loss - ref_loss[0]) <= TOL_FWD * fabs(ref_loss[0]), "%s: loss %.9g vs %.9g", cse, loss,
              (double)ref_loss[0]);
    snprintf(key, sizeof key, "%s.out", cse);
    int64_t shape[3] = {f.N, f.T, f.C};
    float *ref_out = tu_golden_f32_shape(&f.g, key, 3, shape);
    tu_expect_close(out, ref_out, n, TOL_FWD, key);
    /* the training forward is dl_clip_forward, bit for bit */
    dl_clip_forward(tu_ctx(), &f.clip, f.N, f.T, f.ids, layers, 1, plain, &f.scratch);
    cr_expect(memcmp(out, plain, n * sizeof(float)) == 0, "%s: train forward differs from dl_clip_forward", cse);
    for (int i = 0; i < f.nmod; i++) expect_grads(&f, cse, i, 1.0, TOL_GRAD); /* layers not run: exactly 0 */
    free(ref_loss);
    free(ref_out);
    free(out);
    free(plain);
    teardown(&f);
}

Test(clip_train, clip_skip2_loss_and_lora_grads_match_torch)
{
    check_case("skip2", 1, 2);
}

Test(clip_train, last_layer_loss_and_lora_grads_match_torch)
{
    check_case("last", 1, 1);
}

Test(clip_train, multihead_last_layer_grads_match_torch)
{
    check_case("last_h4", 4, 1);
}

Test(clip_train, backward_accumulates)
{
    fixture f;
    setup(&f, 1);
    float *out = tu_alloc_nan((size_t)f.N * f.T * f.C);
    step(&f, f.L, out, 1);
    step(&f, f.L, out, 1); /* second forward + backward: grads += the same again */
    for (int i = 0; i < f.nmod; i++) expect_grads(&f, "last", i, 2.0, TOL_GRAD);
    free(out);
    teardown(&f);
}

/* A smaller batch than the arenas were sized for: each sequence alone (N = 1 in arenas for 2), with
 * dloss = 1/2 so the two accumulated backwards equal the batch's mean-loss gradients. */
Test(clip_train, smaller_batch_accumulates_to_the_batch_gradient)
{
    fixture f;
    setup(&f, 1);
    const int64_t n1 = (int64_t)f.T * f.C;
    float *out = tu_alloc_nan((size_t)n1), *d = tu_alloc_nan((size_t)n1);
    for (int s = 0; s < f.N; s++) {
        const float *tg = f.target + s * n1;
        forward(&f, 1, f.ids + s * f.T, f.L, out);
        dl_cpu_mse_loss_backward(tu_ctx(), 1, n1, out, tg, NULL, 1.0f / (float)f.N, d, NULL);
        dl_clip_backward(tu_ctx(), f.tape, d, &f.scratch);
    }
    for (int i = 0; i < f.nmod; i++) expect_grads(&f, "last", i, 1.0, TOL_GRAD);
    free(out);
    free(d);
    teardown(&f);
}

/* Frozen adapters (dA = dB = NULL) stay in the forward and pass gradients through, get nothing;
 * layers below the lowest trainable adapter are skipped. Here only layer 1's fc1 and q_proj
 * train: their grads equal the all-trainable reference. */
Test(clip_train, frozen_adapters_and_partial_training)
{
    fixture f;
    setup(&f, 1);
    const char *train[2] = {"text_model.encoder.layers.1.mlp.fc1", "text_model.encoder.layers.1.self_attn.q_proj"};
    for (int pass = 0; pass < 2; pass++) {
        float *keep[MAXMOD][2];
        for (int i = 0; i < f.nmod; i++) {
            keep[i][0] = f.lora[i].dA, keep[i][1] = f.lora[i].dB;
            if (strcmp(f.mods[i].name, train[pass]) != 0) f.lora[i].dA = f.lora[i].dB = NULL;
        }
        zero_grads(&f);
        float *out = tu_alloc_nan((size_t)f.N * f.T * f.C);
        step(&f, f.L, out, 1);
        int seen = 0;
        for (int i = 0; i < f.nmod; i++)
            if (f.lora[i].dA) expect_grads(&f, "last", i, 1.0, TOL_GRAD), seen++;
        cr_expect_eq(seen, 1);
        for (int i = 0; i < f.nmod; i++) f.lora[i].dA = keep[i][0], f.lora[i].dB = keep[i][1];
        free(out);
    }
    teardown(&f);
}

static size_t n_a(const fixture *f, int i) { return (size_t)f->lora[i].r * f->mods[i].lin->in; }
static size_t n_b(const fixture *f, int i) { return (size_t)f->mods[i].lin->out * f->lora[i].r; }

/* Gradient checkpointing recomputes each layer's internals before its backward: the output and
 * the LoRA gradients are those of the pass that stores its activations, bit for bit (4 heads,
 * clip skip 1 and 2; every adapter trainable, or only layer 0's fc1 and layer 1's out_proj:
 * layer 0 then runs its MLP branch only). */
Test(clip_train, checkpointing_gives_the_same_lora_grads)
{
    fixture f;
    setup(&f, 4);
    const size_t n = (size_t)f.N * f.T * f.C;
    float *out[2] = {tu_alloc_nan(n), tu_alloc_nan(n)}, *keep[MAXMOD][2], *got[MAXMOD][2];
    for (int i = 0; i < f.nmod; i++) {
        keep[i][0] = f.lora[i].dA, keep[i][1] = f.lora[i].dB;
        got[i][0] = malloc(n_a(&f, i) * sizeof(float)), got[i][1] = malloc(n_b(&f, i) * sizeof(float));
    }
    for (int only = 0; only < 2; only++)
        for (int skip = 1; skip <= 2; skip++)
            for (int ckp = 0; ckp < 2; ckp++) {
                for (int i = 0; i < f.nmod; i++) {
                    const int on = !only || strstr(f.mods[i].name, "layers.0.mlp.fc1") ||
                                   strstr(f.mods[i].name, "layers.1.self_attn.out_proj");
                    f.lora[i].dA = on ? keep[i][0] : NULL, f.lora[i].dB = on ? keep[i][1] : NULL;
                    memset(keep[i][0], 0, n_a(&f, i) * sizeof(float));
                    memset(keep[i][1], 0, n_b(&f, i) * sizeof(float));
                }
                f.checkpoint = ckp;
                step(&f, f.L - skip + 1, out[ckp], 1);
                if (!ckp) { /* the reference */
                    for (int i = 0; i < f.nmod; i++)
                        memcpy(got[i][0], keep[i][0], n_a(&f, i) * sizeof(float)),
                            memcpy(got[i][1], keep[i][1], n_b(&f, i) * sizeof(float));
                    continue;
                }
                cr_expect(memcmp(out[0], out[1], n * sizeof(float)) == 0, "skip %d: the output differs", skip);
                size_t nonzero = 0;
                for (int i = 0; i < f.nmod; i++) {
                    cr_expect(memcmp(got[i][0], keep[i][0], n_a(&f, i) * sizeof(float)) == 0 &&
                                  memcmp(got[i][1], keep[i][1], n_b(&f, i) * sizeof(float)) == 0,
                              "only %d, skip %d: %s: LoRA gradients differ under checkpointing", only, skip,
                              f.mods[i].name);
                    for (size_t j = 0; j < n_b(&f, i); j++) nonzero += keep[i][1][j] != 0;
                }
                cr_expect_gt(nonzero, 0, "only %d, skip %d: no gradient at all", only, skip);
            }
    for (int i = 0; i < f.nmod; i++) {
        f.lora[i].dA = keep[i][0], f.lora[i].dB = keep[i][1];
        free(got[i][0]), free(got[i][1]);
    }
    free(out[0]), free(out[1]);
    teardown(&f);
}

typedef struct {
    fixture *f;
    float **where; /* the fp32 parameters the doubles map to */
    int layers;
    float *out;
} fd_user;

static double fd_loss(void *user, const double *x)
{
    fd_user *u = user;
    for (int i = 0; u->where[i]; i++) *u->where[i] = (float)x[i];
    const int64_t n = (int64_t)u->f->N * u->f->T * u->f->C;
    forward(u->f, u->f->N, u->f->ids, u->layers, u->out);
    return dl_cpu_mse_loss_forward(tu_ctx(), 1, n, u->out, u->f->target, NULL, NULL);
}

/* Central differences of the fp32 loss on the largest-gradient entry of A and of B of a few
 * modules (both layers, attention and MLP; 4 heads). h = 1e-2 (entries ~0.1): the fp32 loss
 * is noisy at ~1e-8, so h = 1e-3 gives errors up to 2e-3 and h = 3e-4 up to 4e-3, while
 * h = 1e-2 gives <= 1e-4 (measured; truncation still negligible). Tolerance 5e-4 per entry. */
Test(clip_train, finite_differences_agree)
{
    fixture f;
    setup(&f, 4);
    float *out = tu_alloc_nan((size_t)f.N * f.T * f.C);
    step(&f, f.L, out, 1);
    const int pick[4] = {0, 3 + 6, 4, 5 + 6}; /* q_proj 0, out_proj 1, fc1 0, fc2 1 */
    float *where[9] = {0};
    double x[8], fd[8], an[8];
    int k = 0;
    for (int p = 0; p < 4; p++) {
        dl_lora *l = &f.lora[pick[p]];
        const dl_linear *lin = f.mods[pick[p]].lin;
        float *par[2] = {l->A, l->B}, *gr[2] = {l->dA, l->dB};
        int64_t cnt[2] = {(int64_t)l->r * lin->in, (int64_t)lin->out * l->r};
        for (int w = 0; w < 2; w++, k++) {
            int64_t best = 0;
            for (int64_t j = 1; j < cnt[w]; j++)
                if (fabsf(gr[w][j]) > fabsf(gr[w][best])) best = j;
            where[k] = &par[w][best];
            x[k] = par[w][best];
            an[k] = gr[w][best];
        }
    }
    fd_user u = {&f, where, f.L, out};
    tu_fd_grad(fd_loss, &u, x, 8, 1e-2, fd);
    for (int i = 0; i < 8; i++) {
        *where[i] = (float)x[i];
        double err = fabs(fd[i] - an[i]) / fmax(fabs(fd[i]), 1e-12);
        cr_expect(err <= 5e-4, "entry %d: backward %.8g, finite difference %.8g (rel %.3g)", i, an[i], fd[i], err);
    }
    free(out);
    teardown(&f);
}

/* The LoRA applied at run time equals the LoRA merged into the weights (dl_cpu_lora_merge). */
Test(clip_train, attached_forward_equals_merged_weights)
{
    fixture f;
    setup(&f, 1);
    const size_t n = (size_t)f.N * f.T * f.C;
    float *att = tu_alloc_nan(n), *mrg = tu_alloc_nan(n);
    for (int skip = 1; skip <= 2; skip++) {
        int layers = f.L - skip + 1;
        dl_clip_forward(tu_ctx(), &f.clip, f.N, f.T, f.ids, layers, 1, att, &f.scratch);
        for (int i = 0; i < f.nmod; i++) {
            dl_linear *lin = f.mods[i].lin;
            dl_cpu_lora_merge(tu_ctx(), lin->out, lin->in, f.lora[i].r, f.lora[i].scale, f.lora[i].A, f.lora[i].B,
                              lin->w);
            f.lora[i].merged = 1;
        }
        dl_clip_forward(tu_ctx(), &f.clip, f.N, f.T, f.ids, layers, 1, mrg, &f.scratch);
        tu_expect_close(att, mrg, n, 1e-6, skip == 1 ? "attached vs merged (last)" : "attached vs merged (skip 2)");
        for (int i = 0; i < f.nmod; i++) {
            dl_linear *lin = f.mods[i].lin;
            dl_cpu_lora_unmerge(tu_ctx(), lin->out, lin->in, f.lora[i].r, f.lora[i].scale, f.lora[i].A, f.lora[i].B,
                                lin->w);
            f.lora[i].merged = 0;
        }
    }
    free(att);
    free(mrg);
    teardown(&f);
}

Test(clip_train, module_names_are_transformers_names)
{
    fixture f;
    setup(&f, 1);
    const char *parts[6] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                            "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};
    for (int i = 0; i < f.nmod; i++) {
        char want[128];
        snprintf(want, sizeof want, "text_model.encoder.layers.%d.%s", i / 6, parts[i % 6]);
        cr_expect_str_eq(f.mods[i].name, want);
    }
    cr_expect_eq(dl_clip_train_modules(&f.clip, NULL, 0), 6 * f.L);
    teardown(&f);
}
