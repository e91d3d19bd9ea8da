/* resnet.c - ResnetBlock2D: loading, forward (inference and training) and backward. */
#include "model/resnet.h"
#include "backend/backend.h"
#include "core/error.h"

#include <stdint.h>

int dl_resnet_load(dl_unet_resnet *r, dl_netload *nl, const char *pre, int cin, int cout, int temb_dim, int G,
                   float eps)
{
    r->cin = cin;
    r->cout = cout;
    DL_TRY(dl_nl_norm(nl, &r->norm1, pre, "norm1", cin, G, eps));
    DL_TRY(dl_nl_conv(nl, &r->conv1, pre, "conv1", cin, cout, 3, 1, 1));
    if (temb_dim > 0) DL_TRY(dl_nl_linear(nl, &r->time_emb_proj, pre, "time_emb_proj", temb_dim, cout, 1));
    DL_TRY(dl_nl_norm(nl, &r->norm2, pre, "norm2", cout, G, eps));
    DL_TRY(dl_nl_conv(nl, &r->conv2, pre, "conv2", cout, cout, 3, 1, 1));
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) DL_TRY(dl_nl_conv(nl, &r->conv_shortcut, pre, "conv_shortcut", cin, cout, 1, 1, 0));
    return DL_OK;
}

int dl_resnet_trains(const dl_unet_resnet *r)
{
    return dl_conv_trains(&r->conv1) || dl_conv_trains(&r->conv2) || (r->has_shortcut && dl_conv_trains(&r->conv_shortcut)) ||
           dl_linear_trains(&r->time_emb_proj) || dl_norm_trains(&r->norm1) || dl_norm_trains(&r->norm2);
}

/* What the backward reads (P = N*H*W pixels). The SiLU(GN(.)) outputs are kept only where a
 * conv that trains (a LoRA, or full fine-tuning) reads them as its input; otherwise scratch. */
typedef struct saved {
    float *cat;            /* [P, cin] concat(x, skip) (up path), else NULL */
    float *mean1, *rstd1;  /* [N, G] */
    float *a1;             /* [P, cin] SiLU(GN1(x)) when conv1 trains, else NULL */
    float *y1;             /* [P, cout] conv1(a1) + time_emb_proj(temb_act): norm2's input */
    float *mean2, *rstd2;  /* [N, G] */
    float *a2;             /* [P, cout] SiLU(GN2(y1)) when conv2 trains, else NULL */
} saved;

static size_t layout(const dl_unet_resnet *r, int N, int64_t P, int cskip, uintptr_t base, saved *sv)
{
    dl_slab s = {base, 0};
    sv->cat = cskip ? dl_slab_take(&s, P * r->cin) : NULL;
    sv->mean1 = dl_slab_take(&s, (int64_t)N * r->norm1.G), sv->rstd1 = dl_slab_take(&s, (int64_t)N * r->norm1.G);
    sv->a1 = dl_conv_trains(&r->conv1) ? dl_slab_take(&s, P * r->cin) : NULL;
    sv->y1 = dl_slab_take(&s, P * r->cout);
    sv->mean2 = dl_slab_take(&s, (int64_t)N * r->norm2.G), sv->rstd2 = dl_slab_take(&s, (int64_t)N * r->norm2.G);
    sv->a2 = dl_conv_trains(&r->conv2) ? dl_slab_take(&s, P * r->cout) : NULL;
    return s.off;
}

float *dl_resnet_forward(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x,
                         const float *skip, int cskip, const float *temb_act, float *y, dl_arena *save,
                         dl_arena *scratch)
{
    const int64_t HW = (int64_t)H * W, P = N * HW;
    const int cin = r->cin, cout = r->cout;
    saved sv;
    float *base = dl_alloc_f32(save, (int64_t)(layout(r, N, P, cskip, 0, &sv) / sizeof(float)));
    layout(r, N, P, cskip, (uintptr_t)base, &sv);
    size_t mark = dl_arena_mark(scratch);
    const float *xin = x;
    if (cskip) {
        dl_be(ctx)->concat_channels_forward(ctx, P, cin - cskip, cskip, x, skip, sv.cat); // [N, H, W, cin]
        xin = sv.cat;
    }
    float *a1 = sv.a1 ? sv.a1 : dl_alloc_f32(scratch, P * cin);                      // [N, H, W, cin]
    float *a2 = sv.a2 ? sv.a2 : dl_alloc_f32(scratch, P * cout);                     // [N, H, W, cout]
    dl_groupnorm_shape g1 = {.N = N, .HW = (int)HW, .C = cin, .G = r->norm1.G, .eps = r->norm1.eps, .silu = 1};
    dl_groupnorm_shape g2 = {.N = N, .HW = (int)HW, .C = cout, .G = r->norm2.G, .eps = r->norm2.eps, .silu = 1};
    dl_be(ctx)->groupnorm_forward(ctx, g1, xin, r->norm1.gamma, r->norm1.beta, a1, sv.mean1, sv.rstd1);
    dl_conv_fwd(ctx, &r->conv1, N, H, W, a1, sv.y1, NULL, NULL, scratch);             // y1 [N, H, W, cout]
    if (temb_act) { /* NULL: a resnet without time embedding (the VAE's) */
        float *tp = dl_alloc_f32(scratch, (int64_t)N * cout);                        // [N, cout]
        dl_linear_fwd(ctx, &r->time_emb_proj, N, temb_act, tp, scratch);              // tp [N, cout]
        dl_be(ctx)->add_bcast_forward(ctx, N, HW, cout, 1, sv.y1, tp, sv.y1);         // y1 += tp
    }
    dl_be(ctx)->groupnorm_forward(ctx, g2, sv.y1, r->norm2.gamma, r->norm2.beta, a2, sv.mean2, sv.rstd2);
    dl_conv_fwd(ctx, &r->conv2, N, H, W, a2, y, NULL, NULL, scratch);                 // y [N, H, W, cout]
    if (r->has_shortcut) {
        float *sc = dl_alloc_f32(scratch, P * cout);                                 // [N, H, W, cout]
        dl_conv_fwd(ctx, &r->conv_shortcut, N, H, W, xin, sc, NULL, NULL, scratch);
        dl_be(ctx)->add_forward(ctx, P * cout, sc, y, y);                             // y += shortcut(x)
    } else {
        dl_be(ctx)->add_forward(ctx, P * cout, xin, y, y);                            // y += x
    }
    dl_arena_release(scratch, mark);
    return base;
}

void dl_resnet_backward(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x, int cskip,
                        const float *temb_act, const float *saved_base, const float *dy, float *dx, float *dtemb,
                        dl_arena *scratch)
{
    const int64_t HW = (int64_t)H * W, P = N * HW;
    const int cin = r->cin, cout = r->cout, mx = cin > cout ? cin : cout;
    saved sv;
    layout(r, N, P, cskip, (uintptr_t)saved_base, &sv);
    const float *xin = sv.cat ? sv.cat : x;
    size_t mark = dl_arena_mark(scratch);
    float *t1 = dl_alloc_f32(scratch, P * cout);                                     // [N, H, W, cout]
    float *t2 = dl_alloc_f32(scratch, P * mx);                                       // [N, H, W, max]
    float *t3 = dl_alloc_f32(scratch, P * cin);                                      // [N, H, W, cin]
    /* the residual branch (the shortcut's own gradients even when dx is not wanted) */
    if (r->has_shortcut) dl_conv_bwd(ctx, &r->conv_shortcut, N, H, W, xin, dy, dx, scratch);
    else if (dx) dl_be(ctx)->scale_forward(ctx, P * cout, 1.0f, dy, dx);              // dx = dy
    dl_conv_bwd(ctx, &r->conv2, N, H, W, sv.a2, dy, t1, scratch);                     // t1 = d a2
    dl_groupnorm_bwd(ctx, &r->norm2, N, HW, sv.y1, sv.mean2, sv.rstd2, t1, t2, 1, scratch); // t2 = d y1
    if (temb_act && (dl_linear_trains(&r->time_emb_proj) || dtemb)) {
        const int Td = r->time_emb_proj.in;
        float *dtp = dl_alloc_f32(scratch, (int64_t)N * cout);                       // [N, cout]
        float *dt = dtemb ? dl_alloc_f32(scratch, (int64_t)N * Td) : NULL;           // [N, Td]
        dl_be(ctx)->add_bcast_backward(ctx, N, HW, cout, 1, t2, NULL, dtp);
        dl_linear_bwd(ctx, &r->time_emb_proj, N, temb_act, dtp, dt, scratch);
        if (dt) dl_be(ctx)->axpy(ctx, (int64_t)N * Td, 1.0f, dt, dtemb);             // accumulate
    }
    const int below = dx || dl_norm_trains(&r->norm1);
    dl_conv_bwd(ctx, &r->conv1, N, H, W, sv.a1, t2, below ? t3 : NULL, scratch);     // t3 = d a1
    if (below) {
        dl_groupnorm_bwd(ctx, &r->norm1, N, HW, xin, sv.mean1, sv.rstd1, t3, dx ? t2 : NULL, 1, scratch); // t2 = d x
        if (dx) dl_be(ctx)->axpy(ctx, P * cin, 1.0f, t2, dx);
    }
    dl_arena_release(scratch, mark);
}
