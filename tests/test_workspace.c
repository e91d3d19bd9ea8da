/* test_workspace.c - the ctx scratch workspace: after a warm-up call every op (gemm both ways,
 * conv2d, linear, attention, groupnorm, layernorm) and a whole UNet LoRA training step run again at
 * the same or smaller shapes without growing it (no allocation in the steady state), and the
 * results are bit-identical to the malloc fallback (a ctx without workspace, same threads). */
#include "testutil.h"
#include "core/arena.h"
#include "core/ctx.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/unet.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/groupnorm.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/linear.h"
#include "ops/cpu/loss.h"
#include "train/unet_train.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdlib.h>
#include <string.h>

#define MAXF (1 << 20) /* floats in each of the input pools and in the output log */

/* Inputs (random, fixed) and a log of every output, appended in call order. */
typedef struct opsrig {
    float *in[4];
    float *log;
    size_t n;
} opsrig;

static float *out_slot(opsrig *r, size_t n)
{
    cr_assert(r->n + n <= MAXF, "test log too small");
    float *p = r->log + r->n;
    r->n += n;
    return p;
}

/* Every converted op once; small != 0 runs smaller shapes. Appends all outputs to r->log. */
static void run_ops(const dl_ctx *c, opsrig *r, int small)
{
    float *a = r->in[0], *b = r->in[1], *x = r->in[2], *dy = r->in[3];
    r->n = 0;
    const int sh = small ? 2 : 1;
    { // gemm, the plain product (packs B): [M, K] x [N, K]^T
        int64_t M = 128 / sh, N = 128 / sh, K = 160;
        dl_sgemm(c, 0, 1, M, N, K, 1.f, a, K, b, K, 0.f, out_slot(r, (size_t)(M * N)), N);
    }
    { // gemm, the swapped product (few rows: transposed C)
        int64_t M = 4 / sh, N = 512, K = 512 / sh;
        dl_sgemm(c, 0, 1, M, N, K, 1.f, a, K, b, K, 0.f, out_slot(r, (size_t)(M * N)), N);
    }
    { // conv2d k3 s2 (strided dx phases, transposed dw) and its bias gradient
        dl_conv2d_shape s = dl_conv2d_shape_make(1, 16 / sh, 16 / sh, 8, 8, 3, 2, 1);
        const int Ho = dl_conv2d_out_h(&s), Wo = dl_conv2d_out_w(&s);
        float *y = out_slot(r, (size_t)Ho * Wo * s.Cout);
        dl_cpu_conv2d_forward(c, &s, x, a, b, y);
        float *dx = out_slot(r, (size_t)s.H * s.W * s.Cin), *dw = out_slot(r, (size_t)9 * s.Cin * s.Cout);
        dl_cpu_conv2d_backward(c, &s, x, a, dy, dx, dw, out_slot(r, (size_t)s.Cout));
    }
    { // linear with bias gradient
        int64_t M = 300 / sh, in = 24, out = 40;
        dl_cpu_linear_forward(c, M, in, out, x, a, b, out_slot(r, (size_t)(M * out)));
        dl_cpu_linear_backward(c, M, in, out, x, a, dy, out_slot(r, (size_t)(M * in)), out_slot(r, (size_t)(in * out)),
                               out_slot(r, (size_t)out));
    }
    { // attention: one head, several key tiles (backward splits them over threads)
        dl_attention_shape s = {1, 300 / sh, 300 / sh, 1, 16, 0.25f, 0};
        const size_t nq = (size_t)s.Tq * s.d, nk = (size_t)s.Tk * s.d;
        float *o = out_slot(r, nq), *lse = out_slot(r, (size_t)s.Tq);
        dl_cpu_attention_forward(c, s, x, a, b, o, lse);
        dl_cpu_attention_backward(c, s, x, a, b, o, lse, dy, out_slot(r, nq), out_slot(r, nk), out_slot(r, nk));
    }
    { // groupnorm + silu
        dl_groupnorm_shape s = {2, 64 / sh, 32, 8, 1e-5f, 1};
        const size_t n = (size_t)s.N * s.HW * s.C;
        float *mean = out_slot(r, (size_t)(s.N * s.G)), *rstd = out_slot(r, (size_t)(s.N * s.G));
        dl_cpu_groupnorm_forward(c, s, x, a, b, out_slot(r, n), mean, rstd);
        dl_cpu_groupnorm_backward(c, s, x, a, b, mean, rstd, dy, out_slot(r, n), out_slot(r, (size_t)s.C),
                                  out_slot(r, (size_t)s.C));
    }
    { // layernorm
        int64_t M = 200 / sh, C = 48;
        float *mean = out_slot(r, (size_t)M), *rstd = out_slot(r, (size_t)M);
        dl_cpu_layernorm_forward(c, M, C, 1e-5f, x, a, b, out_slot(r, (size_t)(M * C)), mean, rstd);
        dl_cpu_layernorm_backward(c, M, C, x, a, mean, rstd, dy, out_slot(r, (size_t)(M * C)), out_slot(r, (size_t)C),
                                  out_slot(r, (size_t)C));
    }
}

Test(workspace, ops_do_not_grow_after_warm_up)
{
    dl_ctx c;
    cr_assert_eq(dl_ctx_init(&c, 2), DL_OK);
    opsrig r = {0}, ref = {0};
    for (int i = 0; i < 4; i++) {
        r.in[i] = malloc(MAXF * sizeof(float));
        tu_fill_uniform(r.in[i], MAXF, 100 + (uint64_t)i, -1.f, 1.f);
        ref.in[i] = r.in[i];
    }
    r.log = malloc(MAXF * sizeof(float));
    ref.log = malloc(MAXF * sizeof(float));
    const dl_ctx nows = {c.pool, NULL}; /* same threads, scratch malloc'd per call */

    run_ops(&c, &r, 0);
    const size_t g0 = dl_ctx_workspace_grows(&c);
    cr_expect(g0 > 0, "the warm-up grew nothing: the ops do not use the workspace");
    for (int k = 0; k < 3; k++) {
        const int small = k == 1;
        run_ops(&c, &r, small);
        cr_expect_eq(dl_ctx_workspace_grows(&c), g0, "call %d (%s shapes) grew the workspace (%zu -> %zu)", k + 2,
                     small ? "smaller" : "same", g0, dl_ctx_workspace_grows(&c));
        /* reused (dirty) scratch gives the same bits as fresh malloc'd scratch */
        run_ops(&nows, &ref, small);
        cr_assert_eq(r.n, ref.n);
        cr_expect(memcmp(r.log, ref.log, r.n * sizeof(float)) == 0, "call %d: results differ from the malloc path",
                  k + 2);
    }
    cr_expect_eq(dl_ctx_workspace_grows(&nows), 0);
    cr_log_info("workspace ops: %zu grows at warm-up, %zu bytes held", g0, dl_ctx_workspace_bytes(&c));
    for (int i = 0; i < 4; i++) free(r.in[i]);
    free(r.log), free(ref.log);
    dl_ctx_free(&c);
    cr_expect_eq(c.ws, NULL);
}

/* ---- a whole training step ------------------------------------------------------------- */

Test(workspace, training_step_does_not_grow_after_the_first)
{
    dl_ctx c;
    cr_assert_eq(dl_ctx_init(&c, 2), DL_OK);
    tu_unet_rig r;
    tu_unet_rig_open(&r);
    size_t ng = (size_t)r.N * r.T * r.u.cfg.cross_attention_dim;
    for (int i = 0; i < r.n; i++) ng += (size_t)(r.nA[i] + r.nB[i]);
    const size_t nout = (size_t)r.N * r.H * r.W * r.C_out;
    dl_unet_tape *tape = malloc(sizeof *tape);
    float *out = malloc(nout * sizeof(float)), *dout = malloc(nout * sizeof(float));
    float *dctx = malloc((size_t)r.N * r.T * r.u.cfg.cross_attention_dim * sizeof(float));
    float *g1 = malloc(ng * sizeof(float)), *g2 = malloc(ng * sizeof(float));

    const double l1 = tu_unet_rig_step(&c, &r, tape, out, dout, dctx, g1);
    const size_t g0 = dl_ctx_workspace_grows(&c);
    cr_expect(g0 > 0);
    for (int k = 0; k < 2; k++) {
        const double l2 = tu_unet_rig_step(&c, &r, tape, out, dout, dctx, g2);
        cr_expect_eq(dl_ctx_workspace_grows(&c), g0, "step %d grew the workspace (%zu -> %zu)", k + 2, g0,
                     dl_ctx_workspace_grows(&c));
        cr_expect(l2 == l1 && memcmp(g1, g2, ng * sizeof(float)) == 0, "step %d differs from step 1", k + 2);
    }
    /* the malloc fallback (same threads) gives the same bits */
    const dl_ctx nows = {c.pool, NULL};
    const double l3 = tu_unet_rig_step(&nows, &r, tape, out, dout, dctx, g2);
    cr_expect(l3 == l1 && memcmp(g1, g2, ng * sizeof(float)) == 0, "the step without workspace differs");
    cr_log_info("workspace step: %d LoRA modules, %zu grows in step 1, %zu bytes held, loss %.6g", r.n, g0,
                dl_ctx_workspace_bytes(&c), l1);
    free(tape), free(out), free(dout), free(dctx), free(g1), free(g2);
    tu_unet_rig_close(&r);
    dl_ctx_free(&c);
}

/* The grow-only buffer the data side keeps its working memory in: reallocated only when a call
 * asks for more than it holds. */
Test(workspace, grow_only_buffer)
{
    void *p = NULL;
    size_t cap = 0;
    cr_assert_eq(dl_buf_reserve(&p, &cap, 100, "test"), DL_OK);
    cr_assert(p && cap == 100);
    void *first = p;
    memset(p, 7, 100);
    cr_expect_eq(dl_buf_reserve(&p, &cap, 60, "test"), DL_OK);
    cr_expect(p == first && cap == 100, "a smaller request reallocated");
    cr_expect_eq(((unsigned char *)p)[99], 7, "a smaller request dropped the contents");
    cr_expect_eq(dl_buf_reserve(&p, &cap, 100, "test"), DL_OK);
    cr_expect(p == first, "an equal request reallocated");
    cr_expect_eq(dl_buf_reserve(&p, &cap, 4096, "test"), DL_OK);
    cr_expect(cap == 4096);
    free(p);
}
