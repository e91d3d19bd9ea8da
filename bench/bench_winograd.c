/* bench_winograd.c - 3x3 stride-1 convolution forward: the direct (implicit GEMM) path against
 * Winograd F(2x2,3x3) and F(4x4,3x3) on the SD VAE decoder's and UNet's shapes: time, GFLOP/s
 * counted as the direct convolution's 2*P*Cout*9*Cin, and the relative L2 error of each against
 * a float64 direct convolution on sampled output pixels (every channel).
 *
 * usage: bench_winograd [--threads N] [--repeats R] [--json PATH] [--only SUBSTRING] [--skip-direct]
 *                       [--skip-f2] [--skip-f4] [--no-check] */
#include "bench_common.h"
#include "core/ctx.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/conv_winograd.h"
#include "ops/cpu/gemm.h"

#include <math.h>
#include <string.h>

typedef struct { const char *name; int N, H, W, Cin, Cout; } wshape;

static const wshape SHAPES[] = {
    {"vae 32x32 512->512", 1, 32, 32, 512, 512},
    {"vae 64x64 512->512", 1, 64, 64, 512, 512},
    {"vae 128x128 512->256", 1, 128, 128, 512, 256},
    {"vae 128x128 256->256", 1, 128, 128, 256, 256},
    {"vae 256x256 256->128", 1, 256, 256, 256, 128},
    {"vae 256x256 128->128", 1, 256, 256, 128, 128},
    {"unet 32x32 320->320", 2, 32, 32, 320, 320},
    {"unet 16x16 640->640", 2, 16, 16, 640, 640},
    {"unet 8x8 1280->1280", 2, 8, 8, 1280, 1280},
    {"unet 4x4 1280->1280", 2, 4, 4, 1280, 1280},
    {"small 32x32 64->64", 1, 32, 32, 64, 64},
    {"small 16x16 32->32", 1, 16, 16, 32, 32},
};
#define NSHAPES (sizeof SHAPES / sizeof SHAPES[0])
#define NSAMPLE 48 /* output pixels checked against float64 */

/* relative L2 error of y against the float64 convolution at NSAMPLE pixels (all channels) */
static double sampled_error(const dl_conv2d_shape *s, const float *x, const float *w, const float *b, const float *y)
{
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    const int64_t P = (int64_t)s->N * Ho * Wo;
    double num = 0, den = 0;
    uint64_t r = 12345;
    for (int i = 0; i < NSAMPLE; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int64_t p = (int64_t)((r >> 33) % (uint64_t)P);
        if (i < 4) p = i == 0 ? 0 : i == 1 ? Wo - 1 : i == 2 ? P - Wo : P - 1; /* corners */
        const int ow = (int)(p % Wo), oh = (int)(p / Wo % Ho), n = (int)(p / Wo / Ho);
        for (int co = 0; co < s->Cout; co++) {
            double acc = b ? b[co] : 0.0;
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++) {
                    int ih = oh - s->pad_top + kh, iw = ow - s->pad_left + kw;
                    if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                    const float *xp = x + (((int64_t)n * s->H + ih) * s->W + iw) * s->Cin;
                    const float *wp = w + (((int64_t)co * 3 + kh) * 3 + kw) * s->Cin;
                    for (int ci = 0; ci < s->Cin; ci++) acc += (double)xp[ci] * wp[ci];
                }
            const double d = y[p * s->Cout + co] - acc;
            num += d * d;
            den += acc * acc;
        }
    }
    return sqrt(num / (den > 0 ? den : 1));
}

typedef struct { double ms, gflops, err; } result;

static result run(const dl_ctx *ctx, int algo, const dl_conv2d_shape *s, const float *x, const float *w,
                  const float *b, float *y, int repeats, int check)
{
    double *t = malloc((size_t)repeats * sizeof *t);
    for (int i = -1; i < repeats; i++) { /* one warm-up (workspace growth) */
        double t0 = bench_now();
        if (algo == 0) dl_cpu_conv2d_forward(ctx, s, x, w, b, y);
        else dl_cpu_conv2d_winograd_m(ctx, s, algo, x, w, DL_F32, b, y);
        if (i >= 0) t[i] = bench_now() - t0;
    }
    qsort(t, (size_t)repeats, sizeof *t, bench_cmp_double);
    const double med = t[repeats / 2];
    free(t);
    const double flops = 2.0 * s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s) * (double)s->Cout * 9.0 * s->Cin;
    result r = {med * 1e3, flops / med * 1e-9, check ? sampled_error(s, x, w, b, y) : 0.0};
    return r;
}

int main(int argc, char **argv)
{
    int threads = 0, repeats = 5;
    const char *json = NULL, *only = NULL;
    int skip[3] = {0, 0, 0}, check = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--skip-direct")) skip[0] = 1;
        else if (!strcmp(argv[i], "--skip-f2")) skip[1] = 1;
        else if (!strcmp(argv[i], "--skip-f4")) skip[2] = 1;
        else if (!strcmp(argv[i], "--no-check")) check = 0;
        else {
            fprintf(stderr, "usage: %s [--threads N] [--repeats R] [--json PATH] [--only SUBSTRING] [--skip-direct] [--skip-f2] [--skip-f4] [--no-check]\n", argv[0]);
            return 2;
        }
    }
    if (repeats < 1) repeats = 1;
    dl_ctx ctx;
    if (dl_ctx_init(&ctx, threads) != DL_OK) return 1;
    ctx.conv_algo = DL_CONV_DIRECT; /* algo 0 below: the implicit GEMM */
    printf("conv3x3 s1 p1 forward, %d threads, gemm kernel %s, median of %d\n", dl_pool_nthreads(ctx.pool),
           dl_sgemm_kernel_name(), repeats);
    printf("%-24s | %9s %7s %8s | %9s %7s %8s | %9s %7s %8s | %s\n", "shape", "direct ms", "GF/s", "err",
           "F(2) ms", "GF/s", "err", "F(4) ms", "GF/s", "err", "auto");
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (json && !jf) {
        fprintf(stderr, "bench_winograd: cannot write %s\n", json);
        return 1;
    }
    if (jf) fprintf(jf, "{\"threads\": %d, \"results\": [", dl_pool_nthreads(ctx.pool));
    int first = 1;
    for (size_t k = 0; k < NSHAPES; k++) {
        const wshape *ws = &SHAPES[k];
        if (only && !strstr(ws->name, only)) continue;
        dl_conv2d_shape s = dl_conv2d_shape_make(ws->N, ws->H, ws->W, ws->Cin, ws->Cout, 3, 1, 1);
        const size_t nx = (size_t)s.N * s.H * s.W * s.Cin, nw = (size_t)s.Cout * 9 * s.Cin;
        const size_t ny = (size_t)s.N * s.H * s.W * s.Cout;
        float *x = bench_randn(nx, 1 + k), *w = bench_randn(nw, 100 + k), *b = bench_randn((size_t)s.Cout, 200 + k);
        float *y = malloc(ny * sizeof *y);
        const float ws_scale = 1.f / sqrtf(9.f * s.Cin);
        for (size_t i = 0; i < nw; i++) w[i] *= ws_scale;
        result r[3] = {{0}};
        for (int a = 0; a < 3; a++)
            if (!skip[a]) r[a] = run(&ctx, a == 0 ? 0 : 2 * a, &s, x, w, b, y, repeats, check);
        dl_ctx actx = ctx;
        actx.conv_algo = DL_CONV_AUTO;
        const int use = dl_cpu_conv2d_use_winograd(&actx, &s);
        printf("%-24s | %9.2f %7.1f %8.2e | %9.2f %7.1f %8.2e | %9.2f %7.1f %8.2e | %s\n", ws->name, r[0].ms,
               r[0].gflops, r[0].err, r[1].ms, r[1].gflops, r[1].err, r[2].ms, r[2].gflops, r[2].err,
               use ? (dl_cpu_conv2d_winograd_tile(&s) == 2 ? "F(2)" : "F(4)") : "direct");
        if (jf) {
            fprintf(jf, "%s\n  {\"shape\": \"%s\"", first ? "" : ",", ws->name);
            const char *nm[3] = {"direct", "f2", "f4"};
            for (int a = 0; a < 3; a++)
                fprintf(jf, ", \"%s_ms\": %.4f, \"%s_gflops\": %.2f, \"%s_err\": %.3e", nm[a], r[a].ms, nm[a], r[a].gflops,
                        nm[a], r[a].err);
            fprintf(jf, "}");
            first = 0;
        }
        free(x); free(w); free(b); free(y);
    }
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
        printf("wrote %s\n", json);
    }
    dl_ctx_free(&ctx);
    return 0;
}
