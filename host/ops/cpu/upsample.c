/* upsample.c - nearest 2x upsampling, forward and backward (CPU reference). */
#include "upsample.h"

#include "core/error.h"

#include <string.h>

typedef struct {
    int64_t H, W, C;
    const float *x;
    float *y;
} up_job;

/* Item = one input row (n, h): writes output rows 2h and 2h+1. */
static void up_fwd_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const up_job *j = arg;
    const int64_t W = j->W, C = j->C;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->x + r * W * C;   // [W, C]
        float *y0 = j->y + r * 4 * W * C;    // [2W, C] output row 2h
        float *y1 = y0 + 2 * W * C;          // [2W, C] output row 2h + 1
        for (int64_t w = 0; w < W; w++) {
            memcpy(y0 + (2 * w) * C, x + w * C, (size_t)C * sizeof(float));
            memcpy(y0 + (2 * w + 1) * C, x + w * C, (size_t)C * sizeof(float));
        }
        memcpy(y1, y0, (size_t)(2 * W * C) * sizeof(float));
    }
}

void dl_cpu_upsample_nearest2x_forward(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                       int64_t C, const float *x, float *y)
{
    DL_ASSERT(N >= 0 && H > 0 && W > 0 && C > 0);
    DL_ASSERT(N == 0 || (x && y && x != y));
    up_job j = {H, W, C, x, y};
    dl_parallel_for(ctx ? ctx->pool : NULL, N * H, (4096 + W * C - 1) / (W * C), up_fwd_rows, &j);
}

static void up_bwd_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const up_job *j = arg;
    const int64_t W = j->W, C = j->C;
    for (int64_t r = r0; r < r1; r++) {
        const float *d0 = j->x + r * 4 * W * C; // [2W, C] dy row 2h
        const float *d1 = d0 + 2 * W * C;       // [2W, C] dy row 2h + 1
        float *dx = j->y + r * W * C;           // [W, C]
        for (int64_t w = 0; w < W; w++) {
            const float *a = d0 + 2 * w * C, *b = d1 + 2 * w * C;
            float *o = dx + w * C;
            for (int64_t c = 0; c < C; c++) o[c] = (a[c] + a[C + c]) + (b[c] + b[C + c]);
        }
    }
}

void dl_cpu_upsample_nearest2x_backward(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                        int64_t C, const float *dy, float *dx)
{
    DL_ASSERT(N >= 0 && H > 0 && W > 0 && C > 0);
    DL_ASSERT(N == 0 || (dy && dx && dy != dx));
    up_job j = {H, W, C, dy, dx};
    dl_parallel_for(ctx ? ctx->pool : NULL, N * H, (4096 + W * C - 1) / (W * C), up_bwd_rows, &j);
}
