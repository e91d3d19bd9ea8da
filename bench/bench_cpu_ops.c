/* bench_cpu_ops.c - times the production CPU ops at SD 1.5 shapes; prints a table and JSON.
 *
 * usage: bench_cpu_ops [--threads N] [--repeats R] [--json PATH] [--only SUBSTRING]
 * Threads default to DANLU_THREADS (else every core). Each op runs once to warm up, then R
 * times; the median (and the best, useful on a loaded machine) is reported with GFLOP/s (GEMM-like ops) or GB/s (memory-bound ops, counting
 * the minimum traffic: every input read once, every output written once). Compare with
 * bench/torch_cpu_ops.py, which runs the same shapes in PyTorch and prints the ratios. */
#include "core/ctx.h"
#include "core/error.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/groupnorm.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/linear.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* SD 1.5 UNet, first down block at 512x512 (latent 64x64): 320 channels, 8 heads of 40. */
enum { HW = 64, C = 320, T = HW * HW, HEADS = 8, HDIM = 40, TCTX = 77, FF = 1280, GROUPS = 32 };
/* the lowest UNet level (8x8 latent, 1280 channels) and the text-context projections (77 x 768) */
enum { HW8 = 8, C8 = 1280, CTXD = 768 };

typedef enum {
    OP_CONV3_FWD, OP_CONV3_BWD, OP_CONV3S2_FWD, OP_CONV3S2_BWD, OP_CONV1_FWD,
    OP_CONV8_FWD, OP_CONV8_BWD,
    OP_LINEAR_FWD, OP_LINEAR_BWD, OP_LINEAR_CTX_FWD,
    OP_ATTN_SELF_FWD, OP_ATTN_SELF_BWD, OP_ATTN_CROSS_FWD, OP_ATTN_CROSS_BWD,
    OP_GN_FWD, OP_GN_FWDBWD, OP_LN_FWD, OP_LN_FWDBWD, OP_GEGLU_FWD, OP_GEGLU_BWD,
    OP_COUNT
} op_id;

typedef struct {
    const char *name;   /* also the key torch_cpu_ops.py uses */
    const char *shape;
    double flops;       /* > 0: report GFLOP/s */
    double bytes;       /* > 0: report GB/s */
    int repeats_div;    /* slow ops run fewer repeats */
} op_info;

static op_info g_ops[OP_COUNT];

/* buffers, sized for the largest user */
static float *x, *w, *b, *y, *dy, *dx, *dw, *db, *q, *k, *v, *o, *lse, *dq, *dk, *dv, *kc, *vc;
static float *gamma_, *beta_, *mean, *rstd, *ffx, *ffy, *ffdy, *ffdx;
static float *x8, *w8, *y8, *dy8, *dx8, *dw8, *ctx_in, *wctx;

static float *alloc_fill(size_t n, uint64_t seed, float scale)
{
    float *p = aligned_alloc(64, ((n * sizeof(float)) + 63) / 64 * 64);
    DL_ASSERTF(p, "bench: out of memory");
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        p[i] = scale * ((float)((s >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f);
    }
    return p;
}

static void setup(void)
{
    const size_t act = (size_t)T * C, wsz = (size_t)C * 9 * C;
    x = alloc_fill(act, 1, 1.f); w = alloc_fill(wsz, 2, 0.02f); b = alloc_fill(C, 3, 0.1f);
    y = alloc_fill(act, 4, 0.f); dy = alloc_fill(act, 5, 1.f); dx = alloc_fill(act, 6, 0.f);
    dw = alloc_fill(wsz, 7, 0.f); db = alloc_fill(C, 8, 0.f);
    q = alloc_fill(act, 9, 1.f); k = alloc_fill(act, 10, 1.f); v = alloc_fill(act, 11, 1.f);
    o = alloc_fill(act, 12, 0.f); lse = alloc_fill((size_t)HEADS * T, 13, 0.f);
    dq = alloc_fill(act, 14, 0.f); dk = alloc_fill(act, 15, 0.f); dv = alloc_fill(act, 16, 0.f);
    kc = alloc_fill((size_t)TCTX * C, 17, 1.f); vc = alloc_fill((size_t)TCTX * C, 18, 1.f);
    gamma_ = alloc_fill(C, 19, 1.f); beta_ = alloc_fill(C, 20, 1.f);
    mean = alloc_fill(T, 21, 0.f); rstd = alloc_fill(T, 22, 0.f);
    ffx = alloc_fill((size_t)T * 2 * FF, 23, 1.f); ffy = alloc_fill((size_t)T * FF, 24, 0.f);
    ffdy = alloc_fill((size_t)T * FF, 25, 1.f); ffdx = alloc_fill((size_t)T * 2 * FF, 26, 0.f);

    x8 = alloc_fill((size_t)HW8 * HW8 * C8, 27, 1.f); w8 = alloc_fill((size_t)C8 * 9 * C8, 28, 0.01f);
    y8 = alloc_fill((size_t)HW8 * HW8 * C8, 29, 0.f); dy8 = alloc_fill((size_t)HW8 * HW8 * C8, 30, 1.f);
    dx8 = alloc_fill((size_t)HW8 * HW8 * C8, 31, 0.f); dw8 = alloc_fill((size_t)C8 * 9 * C8, 32, 0.f);
    ctx_in = alloc_fill((size_t)TCTX * CTXD, 33, 1.f); wctx = alloc_fill((size_t)C * CTXD, 34, 0.03f);

    const double P = T, K3 = 9.0 * C, act_b = 4.0 * T * C;
    const double conv8 = 2.0 * HW8 * HW8 * C8 * 9.0 * C8;
    const double conv3 = 2 * P * C * K3, conv3s2 = 2 * (P / 4) * C * K3;
    const double attn_self = 4.0 * HEADS * T * (double)T * HDIM, attn_cross = 4.0 * HEADS * T * (double)TCTX * HDIM;
    g_ops[OP_CONV3_FWD] = (op_info){"conv3x3_fwd", "1x64x64x320 -> 320, k3 s1 p1", conv3, 0, 1};
    g_ops[OP_CONV3_BWD] = (op_info){"conv3x3_bwd", "dx+dw+db, 1x64x64x320 -> 320", 2 * conv3, 0, 1};
    g_ops[OP_CONV3S2_FWD] = (op_info){"conv3x3s2_fwd", "1x64x64x320 -> 32x32x320, k3 s2 p1", conv3s2, 0, 1};
    g_ops[OP_CONV3S2_BWD] = (op_info){"conv3x3s2_bwd", "dx+dw+db, k3 s2 p1", 2 * conv3s2, 0, 1};
    g_ops[OP_CONV1_FWD] = (op_info){"conv1x1_fwd", "1x64x64x320 -> 320", 2 * P * C * C, 0, 1};
    g_ops[OP_CONV8_FWD] = (op_info){"conv3x3_8x8_fwd", "1x8x8x1280 -> 1280, k3 s1 p1", conv8, 0, 1};
    g_ops[OP_CONV8_BWD] = (op_info){"conv3x3_8x8_bwd", "dx+dw+db, 1x8x8x1280 -> 1280", 2 * conv8, 0, 1};
    g_ops[OP_LINEAR_CTX_FWD] = (op_info){"linear_ctx_fwd", "77x768 -> 320 (to_k on the text)", 2.0 * TCTX * CTXD * C, 0, 1};
    g_ops[OP_LINEAR_FWD] = (op_info){"linear_fwd", "4096x320 -> 320, bias", 2 * P * C * C, 0, 1};
    g_ops[OP_LINEAR_BWD] = (op_info){"linear_bwd", "dx+dw+db, 4096x320 -> 320", 4 * P * C * C, 0, 1};
    g_ops[OP_ATTN_SELF_FWD] = (op_info){"attn_self_fwd", "4096 tok x 8 heads x d40", attn_self, 0, 2};
    g_ops[OP_ATTN_SELF_BWD] = (op_info){"attn_self_bwd", "dq+dk+dv, 4096 x 8 x d40", 2.5 * attn_self, 0, 3};
    g_ops[OP_ATTN_CROSS_FWD] = (op_info){"attn_cross_fwd", "4096 q x 77 kv x 8 x d40", attn_cross, 0, 1};
    g_ops[OP_ATTN_CROSS_BWD] = (op_info){"attn_cross_bwd", "dq+dk+dv, 4096 x 77 x 8 x d40", 2.5 * attn_cross, 0, 1};
    g_ops[OP_GN_FWD] = (op_info){"groupnorm_silu_fwd", "1x64x64x320, 32 groups", 0, 2 * act_b, 1};
    g_ops[OP_GN_FWDBWD] = (op_info){"groupnorm_silu_fwdbwd", "fwd + dx,dgamma,dbeta", 0, 5 * act_b, 1};
    g_ops[OP_LN_FWD] = (op_info){"layernorm_fwd", "4096x320", 0, 2 * act_b, 1};
    g_ops[OP_LN_FWDBWD] = (op_info){"layernorm_fwdbwd", "fwd + dx,dgamma,dbeta", 0, 5 * act_b, 1};
    g_ops[OP_GEGLU_FWD] = (op_info){"geglu_fwd", "4096x2560 -> 4096x1280", 0, 4.0 * T * 3 * FF, 1};
    g_ops[OP_GEGLU_BWD] = (op_info){"geglu_bwd", "dx 4096x2560", 0, 4.0 * T * 5 * FF, 1};
}

static void run_op(const dl_ctx *ctx, op_id id)
{
    const dl_conv2d_shape s3 = dl_conv2d_shape_make(1, HW, HW, C, C, 3, 1, 1);
    const dl_conv2d_shape s2 = dl_conv2d_shape_make(1, HW, HW, C, C, 3, 2, 1);
    const dl_conv2d_shape s1 = dl_conv2d_shape_make(1, HW, HW, C, C, 1, 1, 0);
    const dl_conv2d_shape s8 = dl_conv2d_shape_make(1, HW8, HW8, C8, C8, 3, 1, 1);
    const dl_attention_shape as = {1, T, T, HEADS, HDIM, 1.f / sqrtf((float)HDIM), 0};
    const dl_attention_shape ac = {1, T, TCTX, HEADS, HDIM, 1.f / sqrtf((float)HDIM), 0};
    const dl_groupnorm_shape gs = {1, T, C, GROUPS, 1e-5f, 1};
    switch (id) {
    case OP_CONV3_FWD: dl_cpu_conv2d_forward(ctx, &s3, x, w, b, y); break;
    case OP_CONV3_BWD: dl_cpu_conv2d_backward(ctx, &s3, x, w, dy, dx, dw, db); break;
    case OP_CONV3S2_FWD: dl_cpu_conv2d_forward(ctx, &s2, x, w, b, y); break;
    case OP_CONV3S2_BWD: dl_cpu_conv2d_backward(ctx, &s2, x, w, dy, dx, dw, db); break;
    case OP_CONV1_FWD: dl_cpu_conv2d_forward(ctx, &s1, x, w, b, y); break;
    case OP_CONV8_FWD: dl_cpu_conv2d_forward(ctx, &s8, x8, w8, NULL, y8); break;
    case OP_CONV8_BWD: dl_cpu_conv2d_backward(ctx, &s8, x8, w8, dy8, dx8, dw8, db); break;
    case OP_LINEAR_CTX_FWD: dl_cpu_linear_forward(ctx, TCTX, CTXD, C, ctx_in, wctx, NULL, y); break;
    case OP_LINEAR_FWD: dl_cpu_linear_forward(ctx, T, C, C, x, w, b, y); break;
    case OP_LINEAR_BWD: dl_cpu_linear_backward(ctx, T, C, C, x, w, dy, dx, dw, db); break;
    case OP_ATTN_SELF_FWD: dl_cpu_attention_forward(ctx, as, q, k, v, o, lse); break;
    case OP_ATTN_SELF_BWD: dl_cpu_attention_backward(ctx, as, q, k, v, o, lse, dy, dq, dk, dv); break;
    case OP_ATTN_CROSS_FWD: dl_cpu_attention_forward(ctx, ac, q, kc, vc, o, lse); break;
    case OP_ATTN_CROSS_BWD: dl_cpu_attention_backward(ctx, ac, q, kc, vc, o, lse, dy, dq, dk, dv); break;
    case OP_GN_FWD: dl_cpu_groupnorm_forward(ctx, gs, x, gamma_, beta_, y, mean, rstd); break;
    case OP_GN_FWDBWD:
        dl_cpu_groupnorm_forward(ctx, gs, x, gamma_, beta_, y, mean, rstd);
        dl_cpu_groupnorm_backward(ctx, gs, x, gamma_, beta_, mean, rstd, dy, dx, dw, db);
        break;
    case OP_LN_FWD: dl_cpu_layernorm_forward(ctx, T, C, 1e-5f, x, gamma_, beta_, y, mean, rstd); break;
    case OP_LN_FWDBWD:
        dl_cpu_layernorm_forward(ctx, T, C, 1e-5f, x, gamma_, beta_, y, mean, rstd);
        dl_cpu_layernorm_backward(ctx, T, C, x, gamma_, mean, rstd, dy, dx, dw, db);
        break;
    case OP_GEGLU_FWD: dl_cpu_geglu_forward(ctx, T, FF, ffx, ffy); break;
    case OP_GEGLU_BWD: dl_cpu_geglu_backward(ctx, T, FF, ffx, ffdy, ffdx); break;
    default: break;
    }
}

/* the attention forward's lse feeds its backward: compute it once for each shape */
static void prepare_op(const dl_ctx *ctx, op_id id)
{
    if (id == OP_ATTN_SELF_BWD) run_op(ctx, OP_ATTN_SELF_FWD);
    if (id == OP_ATTN_CROSS_BWD) run_op(ctx, OP_ATTN_CROSS_FWD);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int threads = 0, repeats = 7;
    const char *json = NULL, *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--repeats R] [--json PATH] [--only SUBSTRING]\n", argv[0]);
            return 2;
        }
    }
    if (repeats < 1) repeats = 1;
    dl_ctx ctx;
    if (dl_ctx_init(&ctx, threads) != DL_OK) {
        fprintf(stderr, "bench_cpu_ops: %s\n", dl_error_msg());
        return 1;
    }
    const int nt = dl_pool_nthreads(ctx.pool);
    setup();
    printf("danlu CPU ops, %d thread(s), sgemm kernel %s, median of %d (after 1 warm-up)\n", nt,
           dl_sgemm_kernel_name(), repeats);
    printf("%-24s %-36s %10s %10s %16s\n", "op", "shape", "median ms", "best ms", "rate (median)");
    double ms[OP_COUNT] = {0}, best[OP_COUNT] = {0};
    int ran[OP_COUNT] = {0};
    for (int id = 0; id < OP_COUNT; id++) {
        const op_info *oi = &g_ops[id];
        if (only && !strstr(oi->name, only)) continue;
        int reps = repeats / oi->repeats_div;
        if (reps < 1) reps = 1;
        double t[64];
        if (reps > 64) reps = 64;
        prepare_op(&ctx, (op_id)id);
        run_op(&ctx, (op_id)id); /* warm-up */
        for (int r = 0; r < reps; r++) {
            double t0 = now_s();
            run_op(&ctx, (op_id)id);
            t[r] = now_s() - t0;
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp_double);
        ms[id] = 1e3 * (reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]));
        best[id] = 1e3 * t[0];
        ran[id] = 1;
        if (oi->flops > 0)
            printf("%-24s %-36s %10.3f %10.3f %8.1f GFLOP/s\n", oi->name, oi->shape, ms[id], best[id],
                   oi->flops / ms[id] * 1e-6);
        else
            printf("%-24s %-36s %10.3f %10.3f %8.1f GB/s\n", oi->name, oi->shape, ms[id], best[id],
                   oi->bytes / ms[id] * 1e-6);
        fflush(stdout);
    }
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_cpu_ops: cannot write %s\n", json);
            return 1;
        }
        fprintf(f, "{\n  \"threads\": %d,\n  \"sgemm_kernel\": \"%s\",\n  \"repeats\": %d,\n  \"ops\": [", nt,
                dl_sgemm_kernel_name(), repeats);
        int first = 1;
        for (int id = 0; id < OP_COUNT; id++) {
            if (!ran[id]) continue;
            const op_info *oi = &g_ops[id];
            fprintf(f, "%s\n    {\"name\": \"%s\", \"shape\": \"%s\", \"ms\": %.4f, \"best_ms\": %.4f, \"flops\": %.6g, \"bytes\": %.6g, "
                       "\"gflops\": %.2f, \"gbps\": %.2f}",
                    first ? "" : ",", oi->name, oi->shape, ms[id], best[id], oi->flops, oi->bytes,
                    oi->flops > 0 ? oi->flops / ms[id] * 1e-6 : 0.0, oi->bytes > 0 ? oi->bytes / ms[id] * 1e-6 : 0.0);
            first = 0;
        }
        fprintf(f, "\n  ]\n}\n");
        if (fclose(f) != 0) {
            fprintf(stderr, "bench_cpu_ops: cannot write %s\n", json);
            return 1;
        }
        printf("wrote %s\n", json);
    }
    dl_ctx_free(&ctx);
    return 0;
}
