/* test_finetune.c - full fine-tuning of the UNet (every weight trains): the weight gradients of
 * the layers (linear, conv, group norm, layer norm, the time embedding through every resnet)
 * against central differences of the fp32 loss; gradient checkpointing gives the same
 * gradients; three AdamW steps (clipping included) of the shared optimizer step against
 * diffusers + torch.optim.AdamW in float32 (tests/golden/finetune_ref.safetensors from
 * tests/gen/gen_finetune_ref.py, on tests/golden/tiny_unet_sd1x). */
#include "testutil.h"
#include "core/arena.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/unet.h"
#include "ops/cpu/loss.h"
#include "train/clip_train.h"
#include "train/param_set.h"
#include "train/unet_train.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "tests/golden/tiny_unet_sd1x"

typedef struct placed {
    char name[128];
    int ndim;
    int64_t shape[4];
    size_t off;
    int conv;
} placed;

/* A trainable tiny UNet on the CPU backend: weights, gradients at the same offsets, the table of
 * placed tensors. */
typedef struct ft_rig {
    dl_checkpoint ck;
    dl_unet u;
    dl_arena w, act, scratch;
    char *grads;
    placed *pl;
    int n_pl, cap_pl;
} ft_rig;

static void on_placed(void *user, const char *name, int ndim, const int64_t *shape, size_t off, int conv)
{
    ft_rig *r = user;
    if (r->n_pl == r->cap_pl) {
        r->cap_pl = r->cap_pl ? 2 * r->cap_pl : 256;
        r->pl = realloc(r->pl, (size_t)r->cap_pl * sizeof *r->pl);
        cr_assert_not_null(r->pl);
    }
    placed *p = &r->pl[r->n_pl++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i];
    p->off = off;
    p->conv = conv;
}

static const placed *find_placed(const ft_rig *r, const char *name)
{
    for (int i = 0; i < r->n_pl; i++)
        if (!strcmp(r->pl[i].name, name)) return &r->pl[i];
    cr_assert_fail("no placed tensor %s", name);
    return NULL;
}

static int64_t numel_of(const placed *p)
{
    int64_t n = 1;
    for (int i = 0; i < p->ndim; i++) n *= p->shape[i];
    return n;
}

static void rig_open(ft_rig *r, int N, int H, int W, int T, int checkpoint)
{
    memset(r, 0, sizeof *r);
    cr_assert_eq(dl_ckpt_open(&r->ck, tu_path(MODEL), NULL), DL_OK, "%s", dl_error_msg());
    r->ck.weight_dtypes = 0, r->ck.weights_in_place = 0; /* what a fine-tuning run sets */
    const size_t wb = tu_unet_weights_bytes(&r->ck);
    cr_assert_eq(dl_arena_init(&r->w, "weights", wb), DL_OK);
    r->grads = calloc(1, wb);
    cr_assert_not_null(r->grads);
    const dl_trainable tr = {r->grads, on_placed, r};
    cr_assert_eq(dl_unet_load_trainable(&r->u, &r->ck, &r->w, &tr), DL_OK, "%s", dl_error_msg());
    cr_assert_gt(r->n_pl, 100);
    cr_assert_eq(dl_arena_init(&r->act, "act", dl_unet_train_act_bytes(&r->u, N, H, W, T, checkpoint) + 4096), DL_OK);
    size_t s = dl_unet_train_scratch_bytes(&r->u, N, H, W, T, checkpoint, 0);
    const size_t si = dl_unet_scratch_bytes(&r->u, N, H, W, T);
    cr_assert_eq(dl_arena_init(&r->scratch, "scratch", (s > si ? s : si) + 4096), DL_OK);
}

static void rig_close(ft_rig *r)
{
    dl_unet_free(&r->u);
    dl_arena_free(&r->w);
    dl_arena_free(&r->act);
    dl_arena_free(&r->scratch);
    dl_ckpt_close(&r->ck);
    free(r->grads);
    free(r->pl);
}

/* Every weight and gradient of the UNet as one parameter set (the weights arena is zero-filled
 * padding between tensors on the CPU's calloc'd gradients: padding gradients stay zero). */
static dl_param_set rig_params(ft_rig *r, float *m, float *v)
{
    const int64_t n = (int64_t)(r->w.used / sizeof(float));
    return (dl_param_set){(float *)r->w.base, (float *)r->grads, m, v, n, n};
}

/* One micro-batch: forward on the tape, MSE against target, backward (gradients added). */
static double micro_step(ft_rig *r, int N, int H, int W, int T, const float *x, const float *t, const float *ctx,
                         const float *target, int checkpoint)
{
    const int C = r->u.cfg.out_channels;
    const int64_t D = (int64_t)H * W * C;
    float *out = tu_alloc_nan((size_t)(N * D)), *dout = tu_alloc_nan((size_t)(N * D));
    dl_unet_tape *tape = malloc(sizeof *tape);
    cr_assert_not_null(tape);
    dl_unet_train_forward(tu_ctx(), &r->u, tape, N, H, W, x, t, ctx, T, out, checkpoint, &r->act, &r->scratch);
    const double loss = dl_cpu_mse_loss_forward(tu_ctx(), N, D, out, target, NULL, NULL);
    dl_cpu_mse_loss_backward(tu_ctx(), N, D, out, target, NULL, 1.0f, dout, NULL);
    dl_unet_backward(tu_ctx(), tape, dout, NULL, &r->scratch);
    dl_arena_reset(&r->act);
    free(tape), free(out), free(dout);
    return loss;
}

typedef struct inputs {
    int N, H, W, T;
    float *x, *t, *ctx, *target;
} inputs;

static void inputs_random(inputs *in, int Dc)
{
    *in = (inputs){.N = 2, .H = 8, .W = 8, .T = 5};
    const size_t nx = (size_t)in->N * in->H * in->W * 4, nc = (size_t)in->N * in->T * Dc;
    in->x = malloc(nx * sizeof(float)), in->target = malloc(nx * sizeof(float));
    in->ctx = malloc(nc * sizeof(float)), in->t = malloc((size_t)in->N * sizeof(float));
    tu_fill_uniform(in->x, nx, 11, -1.5f, 1.5f);
    tu_fill_uniform(in->target, nx, 12, -1.f, 1.f);
    tu_fill_uniform(in->ctx, nc, 13, -1.f, 1.f);
    in->t[0] = 37, in->t[1] = 811;
}

static void inputs_free(inputs *in) { free(in->x), free(in->t), free(in->ctx), free(in->target); }

static double loss_now(ft_rig *r, const inputs *in, float *out)
{
    const int64_t D = (int64_t)in->H * in->W * r->u.cfg.out_channels;
    dl_unet_forward(tu_ctx(), &r->u, in->N, in->H, in->W, in->x, in->t, in->ctx, in->T, out, &r->scratch);
    return dl_cpu_mse_loss_forward(tu_ctx(), in->N, D, out, in->target, NULL, NULL);
}

/* Central differences of the fp32 loss (step 1e-2: the fp32 loss carries ~1e-7 relative noise,
 * ~1e-5 in the quotient; truncation is of the same order) at the 4 entries of largest gradient
 * of one tensor of each kind: conv (3x3, 1x1 shortcut, stride-2 downsampler, conv_in, conv_out),
 * linear (attention, feed-forward, time_emb_proj, the time embedding's linears, reached only
 * through every resnet's time_emb_proj), group norm (resnet, + SiLU; the transformer's, without),
 * layer norm, biases. Bound: 3e-2 relative L2 over the 4 (a missing term or factor is O(1)). */
Test(finetune, weight_gradients_match_finite_differences)
{
    ft_rig r;
    inputs in;
    inputs_random(&in, 48);
    rig_open(&r, in.N, in.H, in.W, in.T, 0);
    micro_step(&r, in.N, in.H, in.W, in.T, in.x, in.t, in.ctx, in.target, 0);
    float *out = tu_alloc_nan((size_t)in.N * in.H * in.W * 4);
    static const char *const names[] = {
        "conv_in.weight", "conv_in.bias", "time_embedding.linear_1.weight", "time_embedding.linear_2.bias",
        "down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.resnets.0.norm2.bias",
        "down_blocks.0.resnets.0.conv1.weight", "down_blocks.0.resnets.1.time_emb_proj.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight", "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.0.attentions.0.norm.weight", "down_blocks.0.attentions.0.proj_in.weight",
        "down_blocks.1.attentions.1.transformer_blocks.0.norm1.weight",
        "mid_block.attentions.0.transformer_blocks.0.norm3.bias",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
        "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj.weight",
        "up_blocks.0.upsamplers.0.conv.weight", "up_blocks.1.resnets.2.conv2.bias", "conv_norm_out.weight",
        "conv_out.weight",
    };
    const double h = 1e-2;
    for (size_t m = 0; m < sizeof names / sizeof *names; m++) {
        const placed *p = find_placed(&r, names[m]);
        float *w = (float *)(r.w.base + p->off), *g = (float *)(r.grads + p->off);
        const int64_t n = numel_of(p);
        enum { K = 4 };
        int64_t idx[K];
        float got[K];
        double fd[K];
        const int k = n < K ? (int)n : K;
        for (int q = 0; q < k; q++) {
            int64_t best = -1;
            for (int64_t j = 0; j < n; j++) {
                int used = 0;
                for (int e = 0; e < q; e++) used |= idx[e] == j;
                if (!used && (best < 0 || fabsf(g[j]) > fabsf(g[best]))) best = j;
            }
            idx[q] = best;
            got[q] = g[best];
            const float keep = w[best];
            w[best] = (float)(keep + h);
            const double xp = w[best], lp = loss_now(&r, &in, out);
            w[best] = (float)(keep - h);
            const double xm = w[best], lm = loss_now(&r, &in, out);
            w[best] = keep;
            fd[q] = (lp - lm) / (xp - xm);
        }
        char label[300];
        snprintf(label, sizeof label, "finite differences of %s", names[m]);
        cr_expect_gt(fabsf(got[0]), 1e-4f, "%s: gradient %g (not reached?)", names[m], got[0]);
        tu_expect_close_d(got, fd, (size_t)k, 3e-2, label);
        double num = 0, den = 0;
        for (int q = 0; q < k; q++) num += (got[q] - fd[q]) * (got[q] - fd[q]), den += fd[q] * fd[q];
        cr_log_info("finetune FD %s: rel L2 %.2g (largest |grad| %.3g)", names[m], sqrt(num / den), fabs(got[0]));
    }
    free(out);
    inputs_free(&in);
    rig_close(&r);
}

/* Gradient checkpointing recomputes every node's internals before its backward: the same
 * gradients bit for bit, every weight's. */
Test(finetune, checkpointing_gives_identical_gradients)
{
    inputs in;
    inputs_random(&in, 48);
    ft_rig a, b;
    rig_open(&a, in.N, in.H, in.W, in.T, 0);
    rig_open(&b, in.N, in.H, in.W, in.T, 1);
    const double la = micro_step(&a, in.N, in.H, in.W, in.T, in.x, in.t, in.ctx, in.target, 0);
    const double lb = micro_step(&b, in.N, in.H, in.W, in.T, in.x, in.t, in.ctx, in.target, 1);
    cr_expect_eq(la, lb);
    cr_assert_eq(a.w.used, b.w.used);
    cr_expect(memcmp(a.grads, b.grads, a.w.used) == 0, "checkpointed gradients differ");
    inputs_free(&in);
    rig_close(&a);
    rig_close(&b);
}

/* Three steps of full fine-tuning (forward, MSE, backward into every weight, clip to norm 1,
 * AdamW lr 1e-3 wd 1e-2) against diffusers' UNet2DConditionModel and torch.optim.AdamW in
 * float32 on the same inputs. Bounds: losses 1e-5 relative, the weights 1e-5 relative L2 (all
 * together), and what the steps changed (final - initial) 1e-3 relative L2; the figures reached
 * are logged. */
Test(finetune, three_adamw_steps_match_torch)
{
    dl_st_file g;
    tu_golden_open(&g, "finetune_ref");
    const dl_st_tensor *tx = dl_st_find(&g, "ft.s0.noisy"), *tc = dl_st_find(&g, "ft.s0.ctx");
    cr_assert(tx && tc);
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], T = (int)tc->shape[1];
    ft_rig r;
    rig_open(&r, N, H, W, T, 0);
    const size_t wb = r.w.used;
    float *w0 = malloc(wb), *m = calloc(1, wb), *v = calloc(1, wb), scal[4];
    cr_assert(w0 && m && v);
    memcpy(w0, r.w.base, wb);
    const dl_param_set ps = rig_params(&r, m, v);
    const dl_adamw_hparams hp = {.lr = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
    float *ref_loss = tu_golden_f32(&g, "ft.loss", NULL), *ref_norm = tu_golden_f32(&g, "ft.gnorm", NULL);
    for (int s = 0; s < 3; s++) {
        char key[64];
        float *x, *t, *ctx, *target;
        snprintf(key, sizeof key, "ft.s%d.noisy", s), x = tu_golden_f32(&g, key, NULL);
        snprintf(key, sizeof key, "ft.s%d.target", s), target = tu_golden_f32(&g, key, NULL);
        snprintf(key, sizeof key, "ft.s%d.t", s), t = tu_golden_f32(&g, key, NULL);
        snprintf(key, sizeof key, "ft.s%d.ctx", s), ctx = tu_golden_f32(&g, key, NULL);
        dl_param_set_zero_grads(tu_ctx(), &ps);
        const double loss = micro_step(&r, N, H, W, T, x, t, ctx, target, 0);
        dl_param_set_step(tu_ctx(), &ps, 1.0, &hp, 1e-3, 1e-3, s + 1, scal);
        const double norm = sqrt(scal[0]);
        cr_log_info("finetune step %d: loss %.9g (torch %.9g, rel %.2g), gradient norm %.7g (torch %.7g)", s + 1, loss,
                    ref_loss[s], fabs(loss - ref_loss[s]) / ref_loss[s], norm, ref_norm[s]);
        cr_expect_leq(fabs(loss - ref_loss[s]), 1e-5 * ref_loss[s], "step %d: loss %.9g, torch %.9g", s + 1, loss,
                      ref_loss[s]);
        cr_expect_leq(fabs(norm - ref_norm[s]), 1e-4 * ref_norm[s], "step %d: gradient norm %.7g, torch %.7g", s + 1,
                      norm, ref_norm[s]);
        free(x), free(target), free(t), free(ctx);
    }
    /* every parameter of diffusers' UNet is one placed tensor, and the other way round */
    int n_ref = 0;
    for (int i = 0; i < g.n_tensors; i++) n_ref += !strncmp(g.tensors[i].name, "ft.w.", 5);
    cr_expect_eq(n_ref, r.n_pl, "diffusers has %d parameters, danlu placed %d tensors", n_ref, r.n_pl);
    double dd = 0, dw = 0, ww = 0, worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < r.n_pl; i++) {
        const placed *p = &r.pl[i];
        char key[200];
        snprintf(key, sizeof key, "ft.w.%s", p->name);
        int64_t n = 0;
        float *ref = tu_golden_f32(&g, key, &n);
        cr_assert_eq(n, numel_of(p), "%s: %lld values, danlu %lld", p->name, (long long)n, (long long)numel_of(p));
        const float *got = (const float *)(r.w.base + p->off), *ini = (const float *)((const char *)w0 + p->off);
        double e = 0, c = 0;
        for (int64_t j = 0; j < n; j++) {
            const double d = (double)got[j] - ref[j], ch = (double)ref[j] - ini[j];
            e += d * d, c += ch * ch, ww += (double)ref[j] * ref[j];
        }
        dd += e, dw += c;
        if (c > 0 && sqrt(e / c) > worst) worst = sqrt(e / c), worst_name = p->name;
        free(ref);
    }
    const double rel_w = sqrt(dd / ww), rel_upd = sqrt(dd / dw);
    cr_log_info("finetune weights after 3 steps: rel L2 %.2g of the weights, %.2g of the update (worst tensor %s: "
                "%.2g of its update)", rel_w, rel_upd, worst_name, worst);
    cr_expect_leq(rel_w, 1e-5, "weights: rel L2 %.3g", rel_w);
    cr_expect_leq(rel_upd, 1e-3, "update: rel L2 %.3g", rel_upd);
    free(ref_loss), free(ref_norm), free(w0), free(m), free(v);
    dl_st_close(&g);
    rig_close(&r);
}

/* With the text encoder trained too (finetune --train_text_encoder): tests/golden/tiny_sd15's
 * UNet and text encoder loaded into one arena (UNet first, gradients at the same offsets), the
 * text encoder's training pass feeding the UNet's, d(context) back through it down to the
 * token and position embeddings, one clip over every gradient, AdamW with a learning rate per
 * part (1e-3 UNet, 5e-4 text encoder); against diffusers + transformers + torch.optim.AdamW in
 * float32. Bounds: losses 1e-5 relative, gradient norms 1e-4, the text encoder's weights 1e-5
 * relative L2 and what the steps changed in them 1e-3 (k_proj's bias aside, below). */
Test(finetune, text_encoder_steps_match_torch)
{
    dl_st_file g;
    tu_golden_open(&g, "finetune_te_ref");
    const dl_st_tensor *tx = dl_st_find(&g, "te.s0.noisy"), *ti = dl_st_find(&g, "te.s0.ids");
    cr_assert(tx && ti);
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], T = (int)ti->shape[1];
    ft_rig r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(dl_ckpt_open(&r.ck, tu_path("tests/golden/tiny_pipe"), NULL), DL_OK, "%s", dl_error_msg());
    size_t wu = 0, wc = 0;
    cr_assert_eq(dl_unet_weights_bytes(&r.ck, &wu), DL_OK);
    cr_assert_eq(dl_clip_weights_bytes(&r.ck, &wc), DL_OK);
    cr_assert_eq(dl_arena_init(&r.w, "weights", wu + wc), DL_OK);
    memset(r.w.base, 0, wu + wc);
    r.grads = calloc(1, wu + wc);
    cr_assert_not_null(r.grads);
    const dl_trainable tr = {r.grads, on_placed, &r};
    cr_assert_eq(dl_unet_load_trainable(&r.u, &r.ck, &r.w, &tr), DL_OK, "%s", dl_error_msg());
    const size_t unet_bytes = r.w.used;
    const int n_unet_tensors = r.n_pl;
    dl_clip clip;
    cr_assert_eq(dl_clip_load_trainable(&clip, &r.ck, &r.w, &tr), DL_OK, "%s", dl_error_msg());
    const int L = clip.cfg.num_layers, Dc = clip.cfg.hidden_size;
    dl_size_table *tab = malloc(sizeof *tab);
    dl_clip_size_table(&clip, N, T, L, 1, 0, tab);
    dl_arena te_act;
    cr_assert_eq(dl_arena_init(&te_act, "text encoder activations", tab->act + 4096), DL_OK);
    const size_t cs = tab->scratch_train;
    free(tab);
    cr_assert_eq(dl_arena_init(&r.act, "act", dl_unet_train_act_bytes(&r.u, N, H, W, T, 0) + 4096), DL_OK);
    size_t s = dl_unet_train_scratch_bytes(&r.u, N, H, W, T, 0, 1);
    cr_assert_eq(dl_arena_init(&r.scratch, "scratch", (s > cs ? s : cs) + 4096), DL_OK);
    const size_t wb = r.w.used;
    float *w0 = malloc(wb), *m = calloc(1, wb), *v = calloc(1, wb), scal[4];
    cr_assert(w0 && m && v);
    memcpy(w0, r.w.base, wb);
    const int64_t n = (int64_t)(wb / sizeof(float));
    const dl_param_set ps = {(float *)r.w.base, (float *)r.grads, m, v, n, (int64_t)(unet_bytes / sizeof(float))};
    const dl_adamw_hparams hp = {.lr = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
    float *ref_loss = tu_golden_f32(&g, "te.loss", NULL), *ref_norm = tu_golden_f32(&g, "te.gnorm", NULL);
    const int C = r.u.cfg.out_channels;
    const int64_t D = (int64_t)H * W * C;
    float *ctx = tu_alloc_nan((size_t)N * T * Dc), *dctx = tu_alloc_nan((size_t)N * T * Dc);
    float *out = tu_alloc_nan((size_t)(N * D)), *dout = tu_alloc_nan((size_t)(N * D));
    dl_clip_tape *ctape = malloc(sizeof *ctape);
    dl_unet_tape *utape = malloc(sizeof *utape);
    cr_assert(ctape && utape);
    for (int st = 0; st < 3; st++) {
        char key[64];
        float *x, *t, *idf, *target;
        snprintf(key, sizeof key, "te.s%d.noisy", st), x = tu_golden_f32(&g, key, NULL);
        snprintf(key, sizeof key, "te.s%d.target", st), target = tu_golden_f32(&g, key, NULL);
        snprintf(key, sizeof key, "te.s%d.t", st), t = tu_golden_f32(&g, key, NULL);
        snprintf(key, sizeof key, "te.s%d.ids", st), idf = tu_golden_f32(&g, key, NULL);
        int32_t ids[64];
        cr_assert_leq(N * T, 64);
        for (int i = 0; i < N * T; i++) ids[i] = (int32_t)idf[i];
        dl_param_set_zero_grads(tu_ctx(), &ps);
        dl_clip_train_forward(tu_ctx(), &clip, ctape, N, T, ids, L, 1, ctx, 0, &te_act, &r.scratch);
        dl_unet_train_forward(tu_ctx(), &r.u, utape, N, H, W, x, t, ctx, T, out, 0, &r.act, &r.scratch);
        const double loss = dl_cpu_mse_loss_forward(tu_ctx(), N, D, out, target, NULL, NULL);
        dl_cpu_mse_loss_backward(tu_ctx(), N, D, out, target, NULL, 1.0f, dout, NULL);
        dl_unet_backward(tu_ctx(), utape, dout, dctx, &r.scratch);
        dl_arena_reset(&r.act);
        dl_clip_backward(tu_ctx(), ctape, dctx, &r.scratch);
        dl_arena_reset(&te_act);
        dl_param_set_step(tu_ctx(), &ps, 1.0, &hp, 1e-3, 5e-4, st + 1, scal);
        const double norm = sqrt(scal[0]);
        cr_log_info("finetune+te step %d: loss %.9g (torch %.9g, rel %.2g), gradient norm %.7g (torch %.7g)", st + 1,
                    loss, ref_loss[st], fabs(loss - ref_loss[st]) / ref_loss[st], norm, ref_norm[st]);
        cr_expect_leq(fabs(loss - ref_loss[st]), 1e-5 * ref_loss[st], "step %d: loss %.9g, torch %.9g", st + 1, loss,
                      ref_loss[st]);
        cr_expect_leq(fabs(norm - ref_norm[st]), 1e-4 * ref_norm[st], "step %d: gradient norm %.7g, torch %.7g",
                      st + 1, norm, ref_norm[st]);
        free(x), free(target), free(t), free(idf);
    }
    int n_ref = 0;
    for (int i = 0; i < g.n_tensors; i++) n_ref += !strncmp(g.tensors[i].name, "te.w.", 5);
    cr_expect_eq(n_ref, r.n_pl - n_unet_tensors, "transformers has %d parameters, danlu placed %d tensors", n_ref,
                 r.n_pl - n_unet_tensors);
    double dd = 0, dw = 0, ww = 0, worst = 0;
    const char *worst_name = "";
    for (int i = n_unet_tensors; i < r.n_pl; i++) {
        const placed *p = &r.pl[i];
        char key[200];
        snprintf(key, sizeof key, "te.w.%s", p->name);
        /* the key projection's bias has a zero gradient (a shift of every key's score for a query
         * leaves its softmax as it is): both sides see rounding noise there, which AdamW scales
         * to steps of +-lr of either sign. Not compared. */
        if (strstr(p->name, "k_proj.bias")) continue;
        int64_t k = 0;
        float *ref = tu_golden_f32(&g, key, &k);
        cr_assert_eq(k, numel_of(p), "%s", p->name);
        const float *got = (const float *)(r.w.base + p->off), *ini = (const float *)((const char *)w0 + p->off);
        double e = 0, c = 0;
        for (int64_t j = 0; j < k; j++) {
            const double d = (double)got[j] - ref[j], ch = (double)ref[j] - ini[j];
            e += d * d, c += ch * ch, ww += (double)ref[j] * ref[j];
        }
        dd += e, dw += c;
        if (c > 0 && sqrt(e / c) > worst) worst = sqrt(e / c), worst_name = p->name;
        free(ref);
    }
    const double rel_w = sqrt(dd / ww), rel_upd = sqrt(dd / dw);
    cr_log_info("finetune+te text encoder weights after 3 steps: rel L2 %.2g of the weights, %.2g of the update "
                "(worst tensor %s: %.2g of its update)", rel_w, rel_upd, worst_name, worst);
    cr_expect_leq(rel_w, 1e-5, "text encoder weights: rel L2 %.3g", rel_w);
    cr_expect_leq(rel_upd, 1e-3, "text encoder update: rel L2 %.3g", rel_upd);
    free(ctape), free(utape), free(ctx), free(dctx), free(out), free(dout);
    free(ref_loss), free(ref_norm), free(w0), free(m), free(v);
    dl_clip_free(&clip);
    dl_arena_free(&te_act);
    dl_st_close(&g);
    rig_close(&r);
}
