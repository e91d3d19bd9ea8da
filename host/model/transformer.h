/* transformer.h - the UNet's Transformer2DModel (SpatialTransformer) and its parts, attention
 * and BasicTransformerBlock: loading, and the one forward/backward pair inference and training
 * share.
 *
 *   Transformer2D:  y = proj_out(blocks(proj_in(GN(x)))) + x        (tokens [N, H*W, C])
 *   block:          h += attn1(LN1(h)); h += attn2(LN2(h), context); h += ff(LN3(h))
 *   ff:             ff.net.2(GEGLU(ff.net.0.proj(.)))
 * proj_in / proj_out are 1x1 convs (SD1) or linears (SD2): the same map on channels-last
 * tokens, so both are held as dl_linear [C, C]. */
#ifndef DANLU_MODEL_TRANSFORMER_H
#define DANLU_MODEL_TRANSFORMER_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/graph.h"
#include "model/module.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Attention (diffusers' Attention processor): to_q/to_k/to_v without bias, to_out.0 with. */
typedef struct dl_unet_attn {
    int heads, dim_head;        /* heads * dim_head = C */
    dl_linear to_q;             /* [C, C] */
    dl_linear to_k, to_v;       /* [C, C] (self) or [C, cross_attention_dim] (cross) */
    dl_linear to_out;           /* to_out.0: [C, C] + bias */
} dl_unet_attn;

/* BasicTransformerBlock: LN -> self-attn -> +, LN -> cross-attn -> +, LN -> GEGLU FF -> +. */
typedef struct dl_unet_tblock {
    dl_norm norm1, norm2, norm3;/* LayerNorm(C), eps 1e-5 */
    dl_unet_attn attn1;         /* self-attention */
    dl_unet_attn attn2;         /* cross-attention on the text context */
    dl_linear ff_proj;          /* ff.net.0.proj: [8C, C] (GEGLU value | gate) */
    dl_linear ff_out;           /* ff.net.2: [C, 4C] */
} dl_unet_tblock;

typedef struct dl_unet_transformer {
    int C, n_blocks;
    dl_norm norm;               /* GroupNorm(G, C), eps 1e-6 */
    dl_linear proj_in;          /* [C, C] */
    dl_unet_tblock *blocks;     /* [n_blocks] (malloc'd by dl_transformer_load; free with free()) */
    dl_linear proj_out;         /* [C, C] */
} dl_unet_transformer;

/* Load "<pre>norm", "proj_in", "transformer_blocks.<i>.*" (layers of them) and "proj_out";
 * Dc = cross_attention_dim, conv1x1: the projections are 1x1 convs on disk (SD1). tr->blocks
 * is malloc'd first (the caller frees it, also after an error). */
int dl_transformer_load(dl_unet_transformer *tr, dl_netload *nl, const char *pre, int C, int heads, int layers,
                        int Dc, int G, int conv1x1);
/* 1 when any layer of tr has parameters with gradients (a LoRA, or full fine-tuning). */
int dl_transformer_trains(const dl_unet_transformer *tr);

/* y [N, H, W, C] = x + Transformer2D(x, context [N, T, Dc]). What the backward needs is saved
 * in one allocation from `save` (returned); temporaries from scratch, released. */
float *dl_transformer_forward(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W, const float *x,
                              const float *context, int T, float *y, dl_arena *save, dl_arena *scratch);
/* From dy [N, H, W, C]: dx overwritten (NULL: not wanted), dctx [N, T, Dc] accumulated (+=,
 * NULL: not wanted), parameter gradients accumulated. saved: the forward's return. Scratch released. */
void dl_transformer_backward(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W, const float *x,
                             const float *context, int T, const float *saved, const float *dy, float *dx,
                             float *dctx, dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
