/* softmax.c - row softmax over the last dimension, forward and backward (CPU reference). */
#include "softmax.h"

#include "core/error.h"

#include <math.h>

/* Lane-wise partial reductions (16 independent lanes) so GCC vectorises without -ffast-math. */
#define SM_LANES 16

typedef struct {
    int64_t C;
    const float *x, *dy;
    float *y;
} sm_job;

static void softmax_fwd_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    const sm_job *j = arg;
    const int64_t C = j->C;
    for (int64_t m = m0; m < m1; m++) {
        const float *x = j->x + m * C; // [C]
        float *y = j->y + m * C;       // [C]
        float mx[SM_LANES];
        for (int l = 0; l < SM_LANES; l++) mx[l] = -INFINITY;
        int64_t c = 0;
        for (; c + SM_LANES <= C; c += SM_LANES)
            for (int l = 0; l < SM_LANES; l++) mx[l] = x[c + l] > mx[l] ? x[c + l] : mx[l];
        float xmax = -INFINITY;
        for (int l = 0; l < SM_LANES; l++) xmax = mx[l] > xmax ? mx[l] : xmax;
        for (; c < C; c++) xmax = x[c] > xmax ? x[c] : xmax;
        if (xmax == -INFINITY) { /* all masked: NaN like PyTorch */
            for (c = 0; c < C; c++) y[c] = NAN;
            continue;
        }
        float acc[SM_LANES] = {0};
        c = 0;
        for (; c + SM_LANES <= C; c += SM_LANES)
            for (int l = 0; l < SM_LANES; l++) {
                float e = dl_expf(x[c + l] - xmax);
                y[c + l] = e;
                acc[l] += e;
            }
        double sum = 0;
        for (int l = 0; l < SM_LANES; l++) sum += acc[l];
        for (; c < C; c++) {
            y[c] = dl_expf(x[c] - xmax);
            sum += y[c];
        }
        float inv = (float)(1.0 / sum);
        for (c = 0; c < C; c++) y[c] *= inv;
    }
}

void dl_cpu_softmax_forward(const dl_ctx *ctx, int64_t M, int64_t C, const float *x, float *y)
{
    DL_ASSERT(M >= 0 && C > 0 && x && y);
    sm_job j = {C, x, NULL, y};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, (4096 + C - 1) / C, softmax_fwd_rows, &j);
}

static void softmax_bwd_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    const sm_job *j = arg;
    const int64_t C = j->C;
    for (int64_t m = m0; m < m1; m++) {
        const float *y = j->x + m * C;  // [C]
        const float *dy = j->dy + m * C; // [C]
        float *dx = j->y + m * C;        // [C]
        float acc[SM_LANES] = {0};
        int64_t c = 0;
        for (; c + SM_LANES <= C; c += SM_LANES)
            for (int l = 0; l < SM_LANES; l++) acc[l] += y[c + l] * dy[c + l];
        double dot = 0;
        for (int l = 0; l < SM_LANES; l++) dot += acc[l];
        for (; c < C; c++) dot += (double)y[c] * dy[c];
        float d = (float)dot;
        for (c = 0; c < C; c++) dx[c] = y[c] * (dy[c] - d);
    }
}

void dl_cpu_softmax_backward(const dl_ctx *ctx, int64_t M, int64_t C, const float *y,
                             const float *dy, float *dx)
{
    DL_ASSERT(M >= 0 && C > 0 && y && dy && dx);
    sm_job j = {C, y, dy, dx};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, (4096 + C - 1) / C, softmax_bwd_rows, &j);
}
