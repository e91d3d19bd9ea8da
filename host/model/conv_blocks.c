/* conv_blocks.c - upsampler and the GroupNorm + SiLU + conv output head: forward (inference and
 * training) and backward. */
#include "model/conv_blocks.h"
#include "backend/backend.h"
#include "core/error.h"
#include "model/graph.h"

#include <stdint.h>

/* ================================================================ upsampler */

/* Saved: the upsampled input [N, 2H, 2W, C] (the conv's input) when the conv trains. */
float *dl_upsample_forward(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x, float *y,
                           dl_arena *save, dl_arena *scratch)
{
    const int C = conv->cin;
    const int64_t n = (int64_t)N * 4 * H * W * C;
    float *saved = dl_conv_trains(conv) ? dl_alloc_f32(save, n) : NULL;
    size_t mark = dl_arena_mark(scratch);
    float *up = saved ? saved : dl_alloc_f32(scratch, n);                            // [N, 2H, 2W, C]
    dl_be(ctx)->upsample_nearest2x_forward(ctx, N, H, W, C, x, up);                  // up [N, 2H, 2W, C]
    dl_conv_fwd(ctx, conv, N, 2 * H, 2 * W, up, y, NULL, NULL, scratch);             // y [N, 2H, 2W, C]
    dl_arena_release(scratch, mark);
    return saved;
}

void dl_upsample_backward(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *saved,
                          const float *dy, float *dx, dl_arena *scratch)
{
    const int C = conv->cin;
    size_t mark = dl_arena_mark(scratch);
    float *dup = dx ? dl_alloc_f32(scratch, (int64_t)N * 4 * H * W * C) : NULL;      // [N, 2H, 2W, C]
    dl_conv_bwd(ctx, conv, N, 2 * H, 2 * W, saved, dy, dup, scratch);
    if (dx) dl_be(ctx)->upsample_nearest2x_backward(ctx, N, H, W, C, dup, dx);       // dx [N, H, W, C]
    dl_arena_release(scratch, mark);
}

/* ================================================================ output head */

typedef struct head_saved {
    float *mean, *rstd; /* [N, G] */
    float *a;           /* [N, H, W, C] SiLU(GN(x)) when the conv trains, else NULL */
} head_saved;

static size_t head_layout(const dl_norm *norm, const dl_conv *conv, int N, int64_t P, uintptr_t base, head_saved *sv)
{
    dl_slab s = {base, 0};
    sv->mean = dl_slab_take(&s, (int64_t)N * norm->G), sv->rstd = dl_slab_take(&s, (int64_t)N * norm->G);
    sv->a = dl_conv_trains(conv) ? dl_slab_take(&s, P * norm->C) : NULL;
    return s.off;
}

float *dl_head_forward(const dl_ctx *ctx, const dl_norm *norm, const dl_conv *conv, int N, int H, int W,
                       const float *x, float *y, dl_arena *save, dl_arena *scratch)
{
    const int64_t P = (int64_t)N * H * W;
    head_saved sv;
    float *base = dl_alloc_f32(save, (int64_t)(head_layout(norm, conv, N, P, 0, &sv) / sizeof(float)));
    head_layout(norm, conv, N, P, (uintptr_t)base, &sv);
    size_t mark = dl_arena_mark(scratch);
    float *a = sv.a ? sv.a : dl_alloc_f32(scratch, P * norm->C);                     // [N, H, W, C]
    dl_groupnorm_shape g = {.N = N, .HW = H * W, .C = norm->C, .G = norm->G, .eps = norm->eps, .silu = 1};
    dl_be(ctx)->groupnorm_forward(ctx, g, x, norm->gamma, norm->beta, a, sv.mean, sv.rstd);
    dl_conv_fwd(ctx, conv, N, H, W, a, y, NULL, NULL, scratch);                      // y [N, H, W, cout]
    dl_arena_release(scratch, mark);
    return base;
}

void dl_head_backward(const dl_ctx *ctx, const dl_norm *norm, const dl_conv *conv, int N, int H, int W,
                      const float *x, const float *saved, const float *dy, float *dx, dl_arena *scratch)
{
    const int64_t P = (int64_t)N * H * W;
    head_saved sv;
    head_layout(norm, conv, N, P, (uintptr_t)saved, &sv);
    size_t mark = dl_arena_mark(scratch);
    const int below = dx || dl_norm_trains(norm);
    float *da = below ? dl_alloc_f32(scratch, P * norm->C) : NULL;                   // [N, H, W, C]
    dl_conv_bwd(ctx, conv, N, H, W, sv.a, dy, da, scratch);
    if (below) dl_groupnorm_bwd(ctx, norm, N, (int64_t)H * W, x, sv.mean, sv.rstd, da, dx, 1, scratch);
    dl_arena_release(scratch, mark);
}
