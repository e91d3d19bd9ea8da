/* test_conv_winograd.c - Winograd F(2x2,3x3) and F(4x4,3x3) forward convolution against a
 * float64 direct convolution and the direct (implicit GEMM) path: partial tiles, batches,
 * channel counts off the vector widths, a 1x1 image, unpadded and one-sided padding, the SD VAE
 * shapes; f16/bf16 weights against the same weights as f32 (bit for bit); independence from
 * the thread count and the workspace's steady state; and the dispatcher's policy. */
#include "core/dtype.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/conv_winograd.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds on the relative L2 error against float64, per tile size: measured ~2e-7 (m = 2) and
 * ~1e-6..3e-6 (m = 4, growing with Cin) on these inputs; the direct path reaches ~2e-7. */
#define TOL_M2 2e-6
#define TOL_M4 1e-5

static double tol_of(int m) { return m == 2 ? TOL_M2 : TOL_M4; }

/* float64 direct convolution at the output pixels listed (all when pix == NULL), into yr[i, co] */
static void ref_pixels(const dl_conv2d_shape *s, const float *x, const float *w, const float *b,
                       const int64_t *pix, int64_t npix, double *yr)
{
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    for (int64_t i = 0; i < npix; i++) {
        const int64_t p = pix ? pix[i] : i;
        const int ow = (int)(p % Wo), oh = (int)(p / Wo % Ho), n = (int)(p / Wo / Ho);
        for (int co = 0; co < s->Cout; co++) {
            double acc = b ? b[co] : 0.0;
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++) {
                    const int ih = oh - s->pad_top + kh, iw = ow - s->pad_left + kw;
                    if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                    const float *xp = x + (((int64_t)n * s->H + ih) * s->W + iw) * s->Cin;
                    const float *wp = w + (((int64_t)co * 3 + kh) * 3 + kw) * s->Cin;
                    for (int ci = 0; ci < s->Cin; ci++) acc += (double)xp[ci] * wp[ci];
                }
            yr[i * s->Cout + co] = acc;
        }
    }
}

typedef struct {
    dl_conv2d_shape s;
    float *x, *w, *b;
    size_t nx, nw, ny;
} conv_in;

static conv_in make_in(dl_conv2d_shape s, uint64_t seed, int bias)
{
    conv_in c = {s, NULL, NULL, NULL, 0, 0, 0};
    c.nx = (size_t)s.N * s.H * s.W * s.Cin;
    c.nw = (size_t)s.Cout * 9 * s.Cin;
    c.ny = (size_t)s.N * dl_conv2d_out_h(&s) * dl_conv2d_out_w(&s) * s.Cout;
    c.x = malloc(c.nx * sizeof(float));
    c.w = malloc(c.nw * sizeof(float));
    tu_fill_uniform(c.x, c.nx, seed, -1.f, 1.f);
    const float a = 1.f / sqrtf(3.f * s.Cin); /* outputs of order one */
    tu_fill_uniform(c.w, c.nw, seed + 1, -a, a);
    if (bias) {
        c.b = malloc((size_t)s.Cout * sizeof(float));
        tu_fill_uniform(c.b, (size_t)s.Cout, seed + 2, -0.5f, 0.5f);
    }
    return c;
}

static void free_in(conv_in *c)
{
    free(c->x); free(c->w); free(c->b);
}

static dl_ctx direct_ctx(void)
{
    dl_ctx c = *tu_ctx();
    c.conv_algo = DL_CONV_DIRECT;
    return c;
}

/* Both tile sizes against float64 (every pixel) and against the direct path. */
Test(winograd, small_shapes_vs_float64_and_direct)
{
    const dl_conv2d_shape shapes[] = {
        dl_conv2d_shape_make(1, 8, 8, 16, 16, 3, 1, 1),   /* whole tiles */
        dl_conv2d_shape_make(2, 7, 9, 5, 6, 3, 1, 1),     /* partial tiles, N 2, few channels */
        dl_conv2d_shape_make(3, 11, 5, 37, 29, 3, 1, 1),  /* channels off 16 and the panel widths */
        dl_conv2d_shape_make(1, 1, 1, 20, 35, 3, 1, 1),   /* a 1x1 image: one tile, all padding */
        dl_conv2d_shape_make(2, 2, 3, 33, 17, 3, 1, 1),
        dl_conv2d_shape_make(1, 9, 10, 24, 40, 3, 1, 0),  /* unpadded */
        dl_conv2d_shape_make(1, 3, 3, 8, 8, 3, 1, 0),     /* unpadded, 1x1 output */
        {2, 10, 7, 18, 21, 3, 1, 1, 0, 0, 1},             /* one-sided padding */
        dl_conv2d_shape_make(1, 13, 17, 70, 100, 3, 1, 1), /* several Cout blocks and tile blocks */
    };
    dl_ctx dc = direct_ctx();
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const dl_conv2d_shape *s = &shapes[t];
        cr_assert(dl_cpu_conv2d_winograd_ok(s));
        for (int bias = 0; bias < 2; bias++) {
            conv_in c = make_in(*s, 100 + 10 * t + bias, bias);
            double *yr = malloc(c.ny * sizeof(double));
            ref_pixels(s, c.x, c.w, c.b, NULL, (int64_t)(c.ny / s->Cout), yr);
            float *yd = tu_alloc_nan(c.ny);
            dl_cpu_conv2d_forward(&dc, s, c.x, c.w, c.b, yd);
            for (int m = 2; m <= 4; m += 2) {
                float *y = tu_alloc_nan(c.ny);
                dl_cpu_conv2d_winograd_m(tu_ctx(), s, m, c.x, c.w, DL_F32, c.b, y);
                char label[128];
                snprintf(label, sizeof label, "shape #%zu bias %d F(%d) vs float64", t, bias, m);
                tu_expect_close_d(y, yr, c.ny, tol_of(m), label);
                snprintf(label, sizeof label, "shape #%zu bias %d F(%d) vs direct", t, bias, m);
                tu_expect_close(y, yd, c.ny, tol_of(m), label);
                free(y);
            }
            free(yd); free(yr);
            free_in(&c);
        }
    }
}

/* The SD VAE decoder's shapes (and a UNet one): float64 at sampled pixels (corners and edges
 * included), the direct path everywhere. */
Test(winograd, sd_shapes)
{
    const dl_conv2d_shape shapes[] = {
        dl_conv2d_shape_make(1, 32, 32, 512, 512, 3, 1, 1),
        dl_conv2d_shape_make(1, 64, 64, 128, 128, 3, 1, 1),
        dl_conv2d_shape_make(1, 33, 31, 256, 128, 3, 1, 1),
        dl_conv2d_shape_make(2, 16, 16, 320, 320, 3, 1, 1),
    };
    dl_ctx dc = direct_ctx();
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const dl_conv2d_shape *s = &shapes[t];
        conv_in c = make_in(*s, 300 + t, 1);
        const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
        const int64_t P = (int64_t)s->N * Ho * Wo;
        int64_t pix[40];
        const int npix = 40;
        pix[0] = 0; pix[1] = Wo - 1; pix[2] = P - Wo; pix[3] = P - 1;
        pix[4] = Wo / 2; pix[5] = (int64_t)(Ho / 2) * Wo; pix[6] = (int64_t)(Ho / 2) * Wo + Wo - 1;
        uint64_t r = 7 + t;
        for (int i = 7; i < npix; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            pix[i] = (int64_t)((r >> 33) % (uint64_t)P);
        }
        double *yr = malloc((size_t)npix * s->Cout * sizeof(double));
        ref_pixels(s, c.x, c.w, c.b, pix, npix, yr);
        float *yd = tu_alloc_nan(c.ny), *ys = malloc((size_t)npix * s->Cout * sizeof(float));
        dl_cpu_conv2d_forward(&dc, s, c.x, c.w, c.b, yd);
        for (int m = 2; m <= 4; m += 2) {
            float *y = tu_alloc_nan(c.ny);
            dl_cpu_conv2d_winograd_m(tu_ctx(), s, m, c.x, c.w, DL_F32, c.b, y);
            for (int i = 0; i < npix; i++) memcpy(ys + (size_t)i * s->Cout, y + pix[i] * s->Cout, (size_t)s->Cout * sizeof(float));
            char label[128];
            snprintf(label, sizeof label, "%dx%dx%d %d->%d F(%d) vs float64", s->N, s->H, s->W, s->Cin, s->Cout, m);
            tu_expect_close_d(ys, yr, (size_t)npix * s->Cout, tol_of(m), label);
            snprintf(label, sizeof label, "%dx%dx%d %d->%d F(%d) vs direct", s->N, s->H, s->W, s->Cin, s->Cout, m);
            tu_expect_close(y, yd, c.ny, tol_of(m), label);
            free(y);
        }
        free(yr); free(yd); free(ys);
        free_in(&c);
    }
}

/* f16 and bf16 weights give the bits of the same weights converted to f32. */
Test(winograd, half_weights_match_f32)
{
    const dl_conv2d_shape s = dl_conv2d_shape_make(2, 9, 14, 40, 36, 3, 1, 1);
    conv_in c = make_in(s, 500, 1);
    uint16_t *h = malloc(c.nw * sizeof *h);
    float *wf = malloc(c.nw * sizeof *wf);
    for (int dt = 0; dt < 2; dt++) {
        const dl_dtype wdt = dt ? DL_BF16 : DL_F16;
        for (size_t i = 0; i < c.nw; i++) {
            h[i] = dt ? dl_f32_to_bf16(c.w[i]) : dl_f32_to_f16(c.w[i]);
            wf[i] = dt ? dl_bf16_to_f32(h[i]) : dl_f16_to_f32(h[i]);
        }
        for (int m = 2; m <= 4; m += 2) {
            float *y16 = tu_alloc_nan(c.ny), *y32 = tu_alloc_nan(c.ny);
            dl_cpu_conv2d_winograd_m(tu_ctx(), &s, m, c.x, h, wdt, c.b, y16);
            dl_cpu_conv2d_winograd_m(tu_ctx(), &s, m, c.x, wf, DL_F32, c.b, y32);
            cr_expect(memcmp(y16, y32, c.ny * sizeof(float)) == 0, "%s weights, F(%d): not the f32 result",
                      dt ? "bf16" : "f16", m);
            free(y16); free(y32);
        }
    }
    free(h); free(wf);
    free_in(&c);
}

/* The same bits on 1, 2 and 3 threads and without a workspace; a repeated call grows nothing. */
Test(winograd, thread_count_and_workspace)
{
    const dl_conv2d_shape s = dl_conv2d_shape_make(2, 23, 19, 48, 150, 3, 1, 1);
    conv_in c = make_in(s, 600, 1);
    dl_ctx c1, c3;
    cr_assert_eq(dl_ctx_init(&c1, 1), DL_OK);
    cr_assert_eq(dl_ctx_init(&c3, 3), DL_OK);
    const dl_ctx nows = {c3.pool, NULL, NULL, NULL, DL_CONV_AUTO};
    for (int m = 2; m <= 4; m += 2) {
        float *y1 = tu_alloc_nan(c.ny), *y2 = tu_alloc_nan(c.ny), *y3 = tu_alloc_nan(c.ny), *yn = tu_alloc_nan(c.ny);
        dl_cpu_conv2d_winograd_m(&c1, &s, m, c.x, c.w, DL_F32, c.b, y1);
        dl_cpu_conv2d_winograd_m(tu_ctx(), &s, m, c.x, c.w, DL_F32, c.b, y2);
        dl_cpu_conv2d_winograd_m(&c3, &s, m, c.x, c.w, DL_F32, c.b, y3);
        dl_cpu_conv2d_winograd_m(&nows, &s, m, c.x, c.w, DL_F32, c.b, yn);
        cr_expect(memcmp(y1, y2, c.ny * sizeof(float)) == 0, "F(%d): 1 and 2 threads differ", m);
        cr_expect(memcmp(y1, y3, c.ny * sizeof(float)) == 0, "F(%d): 1 and 3 threads differ", m);
        cr_expect(memcmp(y1, yn, c.ny * sizeof(float)) == 0, "F(%d): without a workspace differs", m);
        const size_t g = dl_ctx_workspace_grows(&c3);
        dl_cpu_conv2d_winograd_m(&c3, &s, m, c.x, c.w, DL_F32, c.b, y3);
        cr_expect_eq(dl_ctx_workspace_grows(&c3), g, "F(%d): a repeated call grew the workspace", m);
        free(y1); free(y2); free(y3); free(yn);
    }
    dl_ctx_free(&c1);
    dl_ctx_free(&c3);
    free_in(&c);
}

/* conv2d_forward takes Winograd for a VAE-sized shape under the default policy (the result is
 * Winograd's to the bit, and not the direct path's), and the direct path when asked, for
 * shapes Winograd does not cover or does not pay on. */
Test(winograd, dispatch)
{
    unsetenv("DANLU_CONV");
    const dl_conv2d_shape s = dl_conv2d_shape_make(1, 64, 64, 128, 128, 3, 1, 1);
    dl_ctx ac = *tu_ctx(), dc = direct_ctx(), wc = *tu_ctx();
    ac.conv_algo = DL_CONV_AUTO;
    wc.conv_algo = DL_CONV_WINOGRAD;
    cr_assert(dl_cpu_conv2d_use_winograd(&ac, &s), "auto does not pick Winograd for 64x64 128->128");
    cr_expect_not(dl_cpu_conv2d_use_winograd(&dc, &s));
    cr_expect(dl_cpu_conv2d_use_winograd(NULL, &s), "a NULL ctx is auto");

    conv_in c = make_in(s, 700, 1);
    float *ya = tu_alloc_nan(c.ny), *yw = tu_alloc_nan(c.ny), *yd = tu_alloc_nan(c.ny);
    dl_cpu_conv2d_forward(&ac, &s, c.x, c.w, c.b, ya);
    dl_cpu_conv2d_winograd(&ac, &s, c.x, c.w, DL_F32, c.b, yw);
    dl_cpu_conv2d_forward(&dc, &s, c.x, c.w, c.b, yd);
    cr_expect(memcmp(ya, yw, c.ny * sizeof(float)) == 0, "conv2d_forward (auto) is not the Winograd result");
    cr_expect(memcmp(ya, yd, c.ny * sizeof(float)) != 0, "conv2d_forward (auto) is the direct result");
    tu_expect_close(ya, yd, c.ny, TOL_M4, "auto vs direct");

    setenv("DANLU_CONV", "direct", 1);
    cr_expect_not(dl_cpu_conv2d_use_winograd(&ac, &s), "DANLU_CONV=direct ignored");
    cr_expect(dl_cpu_conv2d_use_winograd(&wc, &s), "the ctx's choice comes before DANLU_CONV");
    setenv("DANLU_CONV", "winograd", 1);
    const dl_conv2d_shape few = dl_conv2d_shape_make(1, 16, 16, 4, 8, 3, 1, 1);
    cr_expect(dl_cpu_conv2d_use_winograd(&ac, &few), "DANLU_CONV=winograd ignored");
    unsetenv("DANLU_CONV");
    cr_expect_not(dl_cpu_conv2d_use_winograd(&ac, &few), "4 input channels: Winograd does not pay");

    /* shapes it does not cover, whatever is asked */
    const dl_conv2d_shape no[] = {
        dl_conv2d_shape_make(1, 64, 64, 128, 128, 3, 2, 1),
        dl_conv2d_shape_make(1, 64, 64, 128, 128, 1, 1, 0),
        dl_conv2d_shape_make(1, 64, 64, 128, 128, 3, 1, 2),
        {1, 64, 64, 128, 128, 3, 2, 0, 0, 1, 1},
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        cr_expect_not(dl_cpu_conv2d_winograd_ok(&no[i]), "shape #%zu", i);
        cr_expect_not(dl_cpu_conv2d_use_winograd(&wc, &no[i]), "shape #%zu", i);
    }
    free(ya); free(yw); free(yd);
    free_in(&c);
}
