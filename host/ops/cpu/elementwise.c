/* elementwise.c - add, scale, axpy, broadcast add and channel concat/split (CPU reference). */
#include "elementwise.h"

#include "core/error.h"

#include <string.h>

#define EW_GRAIN 16384
#define EW_CBLK 32 /* channels per reduction block in the broadcast-add backward */

static dl_pool *pool_of(const dl_ctx *ctx) { return ctx ? ctx->pool : NULL; }

typedef struct {
    int64_t N, HW, C, C2;
    int per_sample;
    float alpha;
    const float *a, *b;
    float *y, *z;
} ew_job;

static void add_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    const ew_job *j = arg;
    for (int64_t i = i0; i < i1; i++) j->y[i] = j->a[i] + j->b[i];
}

void dl_cpu_add_forward(const dl_ctx *ctx, int64_t n, const float *a, const float *b, float *y)
{
    DL_ASSERT(n >= 0 && (n == 0 || (a && b && y)));
    ew_job j = {.a = a, .b = b, .y = y};
    dl_parallel_for(pool_of(ctx), n, EW_GRAIN, add_range, &j);
}

static void scale_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    const ew_job *j = arg;
    for (int64_t i = i0; i < i1; i++) j->y[i] = j->alpha * j->a[i];
}

void dl_cpu_scale_forward(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y)
{
    DL_ASSERT(n >= 0 && (n == 0 || (x && y)));
    ew_job j = {.alpha = alpha, .a = x, .y = y};
    dl_parallel_for(pool_of(ctx), n, EW_GRAIN, scale_range, &j);
}

static void axpy_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    const ew_job *j = arg;
    for (int64_t i = i0; i < i1; i++) j->y[i] += j->alpha * j->a[i];
}

void dl_cpu_axpy(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y)
{
    DL_ASSERT(n >= 0 && (n == 0 || (x && y && x != y)));
    ew_job j = {.alpha = alpha, .a = x, .y = y};
    dl_parallel_for(pool_of(ctx), n, EW_GRAIN, axpy_range, &j);
}

/* ---- broadcast add ---- */

static void bcast_fwd_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const ew_job *j = arg;
    const int64_t C = j->C;
    for (int64_t r = r0; r < r1; r++) { /* r indexes the N*HW pixel rows */
        const float *x = j->a + r * C;                                  // [C]
        const float *v = j->per_sample ? j->b + (r / j->HW) * C : j->b; // [C]
        float *y = j->y + r * C;                                        // [C]
        for (int64_t c = 0; c < C; c++) y[c] = x[c] + v[c];
    }
}

void dl_cpu_add_bcast_forward(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                              const float *x, const float *v, float *y)
{
    DL_ASSERT(N >= 0 && HW >= 0 && C > 0);
    DL_ASSERT(N * HW == 0 || (x && v && y));
    ew_job j = {.N = N, .HW = HW, .C = C, .per_sample = per_sample, .a = x, .b = v, .y = y};
    dl_parallel_for(pool_of(ctx), N * HW, (EW_GRAIN + C - 1) / C, bcast_fwd_rows, &j);
}

/* Item = (sample s or the one broadcast group, channel block cb): sums rows sequentially in
 * double, so the result does not depend on how items fall on threads. */
static void bcast_bwd_items(void *arg, int64_t i0, int64_t i1, int tid)
{
    const ew_job *j = arg;
    const int64_t C = j->C, nblk = (C + EW_CBLK - 1) / EW_CBLK;
    for (int64_t it = i0; it < i1; it++) {
        int64_t s = it / nblk, c0 = (it % nblk) * EW_CBLK;
        int64_t cn = C - c0 < EW_CBLK ? C - c0 : EW_CBLK;
        int64_t r0 = j->per_sample ? s * j->HW : 0;
        int64_t r1 = j->per_sample ? r0 + j->HW : j->N * j->HW;
        double acc[EW_CBLK] = {0};
        for (int64_t r = r0; r < r1; r++) {
            const float *dy = j->a + r * C + c0; // [cn]
            for (int64_t c = 0; c < cn; c++) acc[c] += dy[c];
        }
        float *dv = j->y + s * C + c0; // [cn]
        for (int64_t c = 0; c < cn; c++) dv[c] = (float)acc[c];
    }
}

static void copy_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    const ew_job *j = arg;
    memcpy(j->y + i0, j->a + i0, (size_t)(i1 - i0) * sizeof(float));
}

void dl_cpu_add_bcast_backward(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                               const float *dy, float *dx, float *dv)
{
    DL_ASSERT(N >= 0 && HW >= 0 && C > 0 && dy);
    if (dx && dx != dy) {
        ew_job j = {.a = dy, .y = dx};
        dl_parallel_for(pool_of(ctx), N * HW * C, EW_GRAIN, copy_range, &j);
    }
    if (dv) {
        int64_t groups = per_sample ? N : 1, nblk = (C + EW_CBLK - 1) / EW_CBLK;
        ew_job j = {.N = N, .HW = HW, .C = C, .per_sample = per_sample, .a = dy, .y = dv};
        dl_parallel_for(pool_of(ctx), groups * nblk, 1, bcast_bwd_items, &j);
    }
}

/* ---- channel concat / split ---- */

static void concat_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const ew_job *j = arg;
    const int64_t C1 = j->C, C2 = j->C2;
    for (int64_t r = r0; r < r1; r++) {
        float *y = j->y + r * (C1 + C2); // [C1 + C2]
        memcpy(y, j->a + r * C1, (size_t)C1 * sizeof(float));
        memcpy(y + C1, j->b + r * C2, (size_t)C2 * sizeof(float));
    }
}

void dl_cpu_concat_channels_forward(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                    const float *a, const float *b, float *y)
{
    DL_ASSERT(M >= 0 && C1 > 0 && C2 > 0);
    DL_ASSERT(M == 0 || (a && b && y && y != a && y != b));
    ew_job j = {.C = C1, .C2 = C2, .a = a, .b = b, .y = y};
    dl_parallel_for(pool_of(ctx), M, (EW_GRAIN + C1 + C2 - 1) / (C1 + C2), concat_rows, &j);
}

static void split_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const ew_job *j = arg;
    const int64_t C1 = j->C, C2 = j->C2;
    for (int64_t r = r0; r < r1; r++) {
        const float *dy = j->a + r * (C1 + C2); // [C1 + C2]
        if (j->y) memcpy(j->y + r * C1, dy, (size_t)C1 * sizeof(float));
        if (j->z) memcpy(j->z + r * C2, dy + C1, (size_t)C2 * sizeof(float));
    }
}

void dl_cpu_concat_channels_backward(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                     const float *dy, float *da, float *db)
{
    DL_ASSERT(M >= 0 && C1 > 0 && C2 > 0);
    DL_ASSERT(M == 0 || dy);
    if (!da && !db) return;
    ew_job j = {.C = C1, .C2 = C2, .a = dy, .y = da, .z = db};
    dl_parallel_for(pool_of(ctx), M, (EW_GRAIN + C1 + C2 - 1) / (C1 + C2), split_rows, &j);
}
