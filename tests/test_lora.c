/* test_lora.c - LoRA linear / 1x1-conv / LoCon kxk-conv forward, backward and merge against
 * PyTorch float64 golden data (tests/gen/gen_lora.py) and float64 finite differences. */
#include "ops/cpu/conv2d.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/lora.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TOL
#define TOL 1e-5 /* fp32 vs float64 (override with -DTOL to see the errors reached) */
#endif

typedef struct {
    float *x, *W, *b, *A, *B, *h, *y, *dy, *dx, *dA, *dB, *Wm;
    int64_t nx, nW, nA, nB, nh, ny;
} lora_case;

static void load_case(const dl_st_file *f, const char *name, lora_case *c)
{
    char key[128];
#define G(t, n) (snprintf(key, sizeof key, "%s.%s", name, t), tu_golden_f32(f, key, n))
    c->x = G("x", &c->nx), c->W = G("W", &c->nW), c->A = G("A", &c->nA), c->B = G("B", &c->nB);
    c->h = G("h", &c->nh), c->y = G("y", &c->ny), c->dy = G("dy", NULL), c->dx = G("dx", NULL);
    c->dA = G("dA", NULL), c->dB = G("dB", NULL), c->Wm = G("Wm", NULL);
#undef G
    snprintf(key, sizeof key, "%s.b", name);
    c->b = dl_st_find(f, key) ? tu_golden_f32(f, key, NULL) : NULL;
}

static void free_case(lora_case *c)
{
    free(c->x), free(c->W), free(c->b), free(c->A), free(c->B), free(c->h), free(c->y), free(c->dy);
    free(c->dx), free(c->dA), free(c->dB), free(c->Wm);
}

#define EXPECT(got, ref, n, tol, what)                                            \
    do {                                                                          \
        char label_[160];                                                         \
        snprintf(label_, sizeof label_, "%s %s", name, what);                     \
        tu_expect_close(got, ref, (size_t)(n), tol, label_);                      \
    } while (0)

/* Merge W + s B A against torch; merged plain forward equals the LoRA forward; unmerge restores W. */
static void check_merge(const char *name, const lora_case *c, int64_t out, int64_t K, int64_t r, float s,
                        const float *ymerged_ref_input, void (*plain_fwd)(const void *, const float *, float *),
                        const void *user)
{
    float *W = malloc((size_t)c->nW * sizeof *W), *y = tu_alloc_nan((size_t)c->ny);
    memcpy(W, c->W, (size_t)c->nW * sizeof *W);
    dl_cpu_lora_merge(tu_ctx(), out, K, r, s, c->A, c->B, W);
    EXPECT(W, c->Wm, c->nW, TOL, "merged W");
    plain_fwd(user, W, y);
    EXPECT(y, ymerged_ref_input, c->ny, TOL, "merged forward vs LoRA forward");
    dl_cpu_lora_unmerge(tu_ctx(), out, K, r, s, c->A, c->B, W);
    EXPECT(W, c->W, c->nW, 1e-6, "merge then unmerge restores W");
    free(W), free(y);
}

typedef struct { int64_t M, in, out; const float *x, *b; const dl_conv2d_shape *s; } plain_user;

static void plain_linear(const void *u, const float *W, float *y)
{
    const plain_user *p = u;
    dl_sgemm(tu_ctx(), 0, 1, p->M, p->out, p->in, 1.0f, p->x, p->in, W, p->in, 0.0f, y, p->out);
    if (p->b)
        for (int64_t m = 0; m < p->M; m++)
            for (int64_t o = 0; o < p->out; o++) y[m * p->out + o] += p->b[o];
}

static void plain_conv(const void *u, const float *W, float *y)
{
    const plain_user *p = u;
    dl_cpu_conv2d_forward(tu_ctx(), p->s, p->x, W, p->b, y);
}

static void run_linear(const char *name, const lora_case *c, int64_t M, int64_t in, int64_t out, int64_t r, float s)
{
    float *h = tu_alloc_nan((size_t)(M * r)), *y = tu_alloc_nan((size_t)(M * out));
    float *dh = tu_alloc_nan((size_t)(M * r)), *dx = tu_alloc_nan((size_t)(M * in));
    float *dA = tu_alloc_nan((size_t)(r * in)), *dB = tu_alloc_nan((size_t)(out * r));
    dl_cpu_lora_linear_forward(tu_ctx(), M, in, out, r, s, c->x, c->W, c->b, c->A, c->B, h, y);
    EXPECT(h, c->h, M * r, TOL, "h");
    EXPECT(y, c->y, M * out, TOL, "y");
    dl_cpu_lora_linear_backward(tu_ctx(), M, in, out, r, s, c->x, c->W, c->A, c->B, h, c->dy, dh, dx, dA, dB);
    EXPECT(dx, c->dx, M * in, TOL, "dx");
    EXPECT(dA, c->dA, r * in, TOL, "dA");
    EXPECT(dB, c->dB, out * r, TOL, "dB");
    /* NULL gradients are skipped; the others still right (overwrite: poisoned again first) */
    for (int64_t i = 0; i < r * in; i++) dA[i] = NAN;
    dl_cpu_lora_linear_backward(tu_ctx(), M, in, out, r, s, c->x, c->W, c->A, c->B, h, c->dy, dh, NULL, dA, NULL);
    EXPECT(dA, c->dA, r * in, TOL, "dA alone");
    plain_user u = {M, in, out, c->x, c->b, NULL};
    check_merge(name, c, out, in, r, s, y, plain_linear, &u);
    free(h), free(y), free(dh), free(dx), free(dA), free(dB);
}

Test(lora, golden_linear)
{
    static const char *const cases[] = {"lin_odd", "lin_sd", "lin_n1_nobias"};
    dl_st_file f;
    tu_golden_open(&f, "lora");
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *name = cases[k];
        char key[128];
        lora_case c;
        load_case(&f, name, &c);
        snprintf(key, sizeof key, "%s.params", name);
        int64_t np;
        float *p = tu_golden_f32(&f, key, &np);
        int64_t M = (int64_t)p[0], in = (int64_t)p[1], out = (int64_t)p[2], r = (int64_t)p[3];
        cr_assert(c.nx == M * in && c.nW == out * in && c.nA == r * in && c.nB == out * r, "%s: shapes", name);
        run_linear(name, &c, M, in, out, r, p[4]);
        free(p);
        free_case(&c);
    }
    dl_st_close(&f);
}

Test(lora, golden_conv)
{
    static const char *const cases[] = {"conv1x1", "conv3_s1", "conv3_s2", "conv3_sd"};
    dl_st_file f;
    tu_golden_open(&f, "lora");
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *name = cases[k];
        char key[128];
        lora_case c;
        load_case(&f, name, &c);
        snprintf(key, sizeof key, "%s.params", name);
        int64_t np;
        float *p = tu_golden_f32(&f, key, &np);
        cr_assert_eq(np, 10);
        dl_conv2d_shape s = dl_conv2d_shape_make((int)p[0], (int)p[1], (int)p[2], (int)p[3], (int)p[4],
                                                 (int)p[6], (int)p[7], (int)p[8]);
        int64_t r = (int64_t)p[5], Ho = dl_conv2d_out_h(&s), Wo = dl_conv2d_out_w(&s);
        int64_t M = (int64_t)s.N * Ho * Wo, nxin = (int64_t)s.N * s.H * s.W * s.Cin, K = (int64_t)s.k * s.k * s.Cin;
        float scale = p[9];
        cr_assert(c.ny == M * s.Cout && c.nh == M * r && c.nA == r * K && c.nx == nxin, "%s: shapes", name);
        if (s.k == 1 && s.stride == 1 && s.pad_top == 0) /* 1x1 conv through the linear entry points */
            run_linear(name, &c, M, s.Cin, s.Cout, r, scale);

        float *h = tu_alloc_nan((size_t)(M * r)), *y = tu_alloc_nan((size_t)(M * s.Cout));
        float *dh = tu_alloc_nan((size_t)(M * r)), *dxs = tu_alloc_nan((size_t)nxin), *dx = tu_alloc_nan((size_t)nxin);
        float *dA = tu_alloc_nan((size_t)(r * K)), *dB = tu_alloc_nan((size_t)(s.Cout * r));
        dl_cpu_lora_conv_forward(tu_ctx(), &s, r, scale, c.x, c.W, c.b, c.A, c.B, h, y);
        EXPECT(h, c.h, M * r, TOL, "conv h");
        EXPECT(y, c.y, M * s.Cout, TOL, "conv y");
        dl_cpu_lora_conv_backward(tu_ctx(), &s, r, scale, c.x, c.W, c.A, c.B, h, c.dy, dh, dxs, dx, dA, dB);
        EXPECT(dx, c.dx, nxin, TOL, "conv dx");
        EXPECT(dA, c.dA, r * K, TOL, "conv dA");
        EXPECT(dB, c.dB, s.Cout * r, TOL, "conv dB");
        for (int64_t i = 0; i < r * K; i++) dA[i] = NAN;
        dl_cpu_lora_conv_backward(tu_ctx(), &s, r, scale, c.x, c.W, c.A, c.B, h, c.dy, dh, NULL, NULL, dA, NULL);
        EXPECT(dA, c.dA, r * K, TOL, "conv dA alone");
        plain_user u = {0, 0, 0, c.x, c.b, &s};
        check_merge(name, &c, s.Cout, K, r, scale, y, plain_conv, &u);
        free(h), free(y), free(dh), free(dxs), free(dx), free(dA), free(dB), free(p);
        free_case(&c);
    }
    dl_st_close(&f);
}

/* ---- finite differences against a float64 LoCon / linear LoRA reference ----
 * params = [x (N H W Cin), A (r k k Cin), B (Cout r)]; L = sum dy * (conv(x, W) + s B conv(x, A)).
 * The linear layer is the k = 1 case with H = W = 1. */
typedef struct { dl_conv2d_shape s; int64_t r; double scale; const double *W, *dy; } fd_user;

static double conv_ref(const dl_conv2d_shape *s, int Cout, const double *x, const double *w, int n, int oh,
                       int ow, int o)
{
    double acc = 0;
    for (int kh = 0; kh < s->k; kh++)
        for (int kw = 0; kw < s->k; kw++) {
            int ih = oh * s->stride - s->pad_top + kh, iw = ow * s->stride - s->pad_left + kw;
            if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
            for (int i = 0; i < s->Cin; i++)
                acc += x[(((int64_t)n * s->H + ih) * s->W + iw) * s->Cin + i] *
                       w[(((int64_t)o * s->k + kh) * s->k + kw) * s->Cin + i];
        }
    (void)Cout;
    return acc;
}

static double lora_loss(void *up, const double *prm)
{
    const fd_user *u = up;
    const dl_conv2d_shape *s = &u->s;
    const int64_t nx = (int64_t)s->N * s->H * s->W * s->Cin, nA = u->r * s->k * s->k * s->Cin;
    const double *x = prm, *A = prm + nx, *B = prm + nx + nA;
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    double L = 0, hr[16];
    for (int n = 0; n < s->N; n++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                for (int q = 0; q < u->r; q++) hr[q] = conv_ref(s, (int)u->r, x, A, n, oh, ow, q);
                for (int o = 0; o < s->Cout; o++) {
                    double y = conv_ref(s, s->Cout, x, u->W, n, oh, ow, o);
                    for (int q = 0; q < u->r; q++) y += u->scale * B[o * u->r + q] * hr[q];
                    L += u->dy[(((int64_t)n * Ho + oh) * Wo + ow) * s->Cout + o] * y;
                }
            }
    return L;
}

static void fd_case(dl_conv2d_shape s, int64_t r, float scale, int linear, uint64_t seed)
{
    const int64_t nx = (int64_t)s.N * s.H * s.W * s.Cin, K = (int64_t)s.k * s.k * s.Cin, nA = r * K, nB = s.Cout * r;
    const int64_t M = (int64_t)s.N * dl_conv2d_out_h(&s) * dl_conv2d_out_w(&s), ny = M * s.Cout, np = nx + nA + nB;
    float *prm = malloc((size_t)np * sizeof *prm), *W = malloc((size_t)(s.Cout * K) * sizeof *W);
    float *dy = malloc((size_t)ny * sizeof *dy), *h = malloc((size_t)(M * r) * sizeof *h);
    float *y = malloc((size_t)ny * sizeof *y), *dh = malloc((size_t)(M * r) * sizeof *dh);
    float *grad = tu_alloc_nan((size_t)np), *dxs = malloc((size_t)nx * sizeof *dxs);
    double *prmd = malloc((size_t)np * sizeof *prmd), *Wd = malloc((size_t)(s.Cout * K) * sizeof *Wd);
    double *dyd = malloc((size_t)ny * sizeof *dyd), *g = malloc((size_t)np * sizeof *g);
    tu_fill_uniform(prm, (size_t)np, seed, -1, 1);
    tu_fill_uniform(W, (size_t)(s.Cout * K), seed + 1, -1, 1);
    tu_fill_uniform(dy, (size_t)ny, seed + 2, -1, 1);
    for (int64_t i = 0; i < np; i++) prmd[i] = prm[i];
    for (int64_t i = 0; i < s.Cout * K; i++) Wd[i] = W[i];
    for (int64_t i = 0; i < ny; i++) dyd[i] = dy[i];
    fd_user u = {s, r, scale, Wd, dyd};
    tu_fd_grad(lora_loss, &u, prmd, (size_t)np, 1e-5, g);
    const float *x = prm, *A = prm + nx, *B = prm + nx + nA;
    if (linear) {
        dl_cpu_lora_linear_forward(tu_ctx(), M, s.Cin, s.Cout, r, scale, x, W, NULL, A, B, h, y);
        dl_cpu_lora_linear_backward(tu_ctx(), M, s.Cin, s.Cout, r, scale, x, W, A, B, h, dy, dh, grad,
                                    grad + nx, grad + nx + nA);
    } else {
        dl_cpu_lora_conv_forward(tu_ctx(), &s, r, scale, x, W, NULL, A, B, h, y);
        dl_cpu_lora_conv_backward(tu_ctx(), &s, r, scale, x, W, A, B, h, dy, dh, dxs, grad, grad + nx,
                                  grad + nx + nA);
    }
    char label[96];
    snprintf(label, sizeof label, "%s k%d s%d: dx vs FD", linear ? "linear" : "conv", s.k, s.stride);
    tu_expect_close_d(grad, g, (size_t)nx, TOL, label);
    snprintf(label, sizeof label, "%s k%d s%d: dA vs FD", linear ? "linear" : "conv", s.k, s.stride);
    tu_expect_close_d(grad + nx, g + nx, (size_t)nA, TOL, label);
    snprintf(label, sizeof label, "%s k%d s%d: dB vs FD", linear ? "linear" : "conv", s.k, s.stride);
    tu_expect_close_d(grad + nx + nA, g + nx + nA, (size_t)nB, TOL, label);
    free(prm), free(W), free(dy), free(h), free(y), free(dh), free(grad), free(dxs), free(prmd), free(Wd), free(dyd), free(g);
}

Test(lora, finite_differences)
{
    fd_case(dl_conv2d_shape_make(3, 1, 1, 5, 4, 1, 1, 0), 2, 0.75f, 1, 101); /* linear: M 3, in 5, out 4 */
    fd_case(dl_conv2d_shape_make(1, 4, 5, 2, 3, 3, 1, 1), 2, 1.5f, 0, 102);
    fd_case(dl_conv2d_shape_make(2, 5, 4, 2, 3, 3, 2, 1), 3, 0.5f, 0, 103);
    dl_conv2d_shape asym = dl_conv2d_shape_make(1, 5, 5, 2, 2, 3, 2, 0); /* VAE-style (0,1,0,1) pad */
    asym.pad_bottom = asym.pad_right = 1;
    fd_case(asym, 2, 1.0f, 0, 104);
}
