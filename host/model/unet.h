/* unet.h - the SD 1.x/2.x denoising UNet (diffusers UNet2DConditionModel) on the CPU backend:
 * layers held by diffusers name, loading from either checkpoint layout, block-by-block forward.
 *
 * Structure (diffusers names, channels-last activations):
 *   time_proj (sinusoidal) -> time_embedding.linear_1 -> SiLU -> linear_2        temb [N, Td]
 *   conv_in -> down_blocks.i.{resnets.j, attentions.j}, downsamplers.0 (every skip saved)
 *   mid_block.resnets.0 -> mid_block.attentions.0 -> mid_block.resnets.1
 *   up_blocks.i.{concat skip, resnets.j, attentions.j}, upsamplers.0
 *   conv_norm_out + SiLU -> conv_out
 * Every block is a function with explicit input and output buffers (dl_unet_*_fwd below) so a
 * training tape can run them one by one and add backward passes beside them.
 *
 * Memory: weights go to the caller's weights arena (dl_unet_weights_bytes measures it); the
 * forward takes everything it needs from a scratch arena (dl_unet_scratch_bytes sizes it) and
 * releases it on return. Small bookkeeping (module tables, names) is malloc'd at load and freed
 * by dl_unet_free. */
#ifndef DANLU_MODEL_UNET_H
#define DANLU_MODEL_UNET_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/module.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_UNET_MAX_LAYERS 4 /* layers_per_block supported (SD: 2) */

/* ResnetBlock2D: norm1+SiLU -> conv1 -> + time_emb_proj(SiLU(temb)) -> norm2+SiLU -> conv2,
 * plus x (or conv_shortcut(x) when cin != cout). */
typedef struct dl_unet_resnet {
    int cin, cout;
    dl_norm norm1;              /* GroupNorm(G, cin), eps norm_eps */
    dl_conv conv1;              /* [cout, 3, 3, cin] */
    dl_linear time_emb_proj;    /* [cout, Td] */
    dl_norm norm2;              /* GroupNorm(G, cout) */
    dl_conv conv2;              /* [cout, 3, 3, cout] */
    int has_shortcut;
    dl_conv conv_shortcut;      /* [cout, 1, 1, cin] when cin != cout */
} dl_unet_resnet;

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

/* Transformer2DModel (SpatialTransformer): GroupNorm(eps 1e-6) -> proj_in -> blocks ->
 * proj_out -> + x. proj_in/proj_out are 1x1 convs (SD1) or linears (SD2): the same map on
 * channels-last tokens, so both are held as dl_linear [C, C]. */
typedef struct dl_unet_transformer {
    int C, n_blocks;
    dl_norm norm;
    dl_linear proj_in;          /* [C, C] */
    dl_unet_tblock *blocks;     /* [n_blocks] (malloc'd) */
    dl_linear proj_out;         /* [C, C] */
} dl_unet_transformer;

/* CrossAttnDownBlock2D / DownBlock2D (has_attn 0). */
typedef struct dl_unet_down {
    int cin, cout, has_attn, has_down;
    dl_unet_resnet resnets[DL_UNET_MAX_LAYERS];
    dl_unet_transformer attentions[DL_UNET_MAX_LAYERS];
    dl_conv downsample;         /* downsamplers.0.conv: k3 s2 p1, [cout, 3, 3, cout] */
} dl_unet_down;

/* CrossAttnUpBlock2D / UpBlock2D: layers_per_block + 1 resnets, each on concat(h, skip). */
typedef struct dl_unet_up {
    int cout, has_attn, has_up;
    dl_unet_resnet resnets[DL_UNET_MAX_LAYERS + 1];
    dl_unet_transformer attentions[DL_UNET_MAX_LAYERS + 1];
    dl_conv upsample;           /* upsamplers.0.conv: nearest 2x then k3 p1, [cout, 3, 3, cout] */
} dl_unet_up;

/* A linear or conv layer by its diffusers name (without ".weight"), for LoRA injection. */
typedef enum { DL_MODULE_LINEAR = 0, DL_MODULE_CONV = 1 } dl_module_kind;
typedef struct dl_unet_module {
    const char *name;           /* "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" */
    dl_module_kind kind;
    dl_linear *linear;          /* kind LINEAR (proj_in/proj_out of SD1 are 1x1 convs on disk) */
    dl_conv *conv;              /* kind CONV */
    int conv1x1_on_disk;        /* 1 for a LINEAR stored as a [out, in, 1, 1] conv (SD1 proj_in/out) */
} dl_unet_module;

typedef struct dl_unet {
    dl_unet_config cfg;
    dl_conv conv_in;            /* [C0, 3, 3, in_channels] */
    dl_linear time_linear_1;    /* time_embedding.linear_1: [Td, C0] */
    dl_linear time_linear_2;    /* time_embedding.linear_2: [Td, Td] */
    dl_unet_down down[DL_MAX_BLOCKS];
    dl_unet_resnet mid_res0, mid_res1;
    dl_unet_transformer mid_attn;
    dl_unet_up up[DL_MAX_BLOCKS];
    dl_norm conv_norm_out;      /* GroupNorm(G, C0) + SiLU */
    dl_conv conv_out;           /* [out_channels, 3, 3, C0] */
    /* bookkeeping (malloc'd) */
    int n_modules, cap_modules;
    dl_unet_module *modules;    /* every linear and conv, in load (= forward) order */
    int n_owned, cap_owned;
    void **owned;               /* malloc'd names and transformer-block arrays */
} dl_unet;

/* *bytes = what dl_unet_load(ck) will take from its weights arena: the loader run against a
 * measuring arena (every tensor it places checked against ck and counted, nothing read).
 * DL_ERR with the error dl_unet_load would give. */
int dl_unet_weights_bytes(dl_checkpoint *ck, size_t *bytes);

/* Load the UNet of ck (config ck->cfg.unet) into u, weights into the `weights` arena
 * (exactly dl_unet_weights_bytes of it). Every weight is requested by diffusers name, so either
 * layout works. Returns DL_OK, or DL_ERR with a message naming the missing or mis-shaped tensor
 * (with both shapes), the full arena, or an unsupported config (layers_per_block >
 * DL_UNET_MAX_LAYERS); on error u holds nothing to free (the arena keeps what it handed out). */
int dl_unet_load(dl_unet *u, dl_checkpoint *ck, dl_arena *weights);
/* Release the bookkeeping of u (not the weights: they belong to the arena). */
void dl_unet_free(dl_unet *u);

/* The linear/conv layer called name (diffusers name without ".weight"), or NULL. */
const dl_unet_module *dl_unet_find(const dl_unet *u, const char *name);
/* All linear/conv layers in forward order; *n set. Valid until dl_unet_free. */
const dl_unet_module *dl_unet_modules(const dl_unet *u, int *n);

/* Bytes of scratch dl_unet_forward takes for (N, H, W, T), including the temporaries of any
 * LoRA attached to u's modules at the time of the call (attach LoRAs first). */
size_t dl_unet_scratch_bytes(const dl_unet *u, int N, int H, int W, int T);

/* eps/v prediction: out [N, H, W, out_channels] from the latents x [N, H, W, in_channels],
 * timesteps t [N] (may be fractional) and the text context ctx [N, T, cross_attention_dim].
 * H and W must be divisible by 2^(n_blocks-1) (DL_ASSERT; diffusers' upsample_size path for
 * other sizes is not implemented). upcast_attention has no effect here: the CPU path is fp32
 * throughout. scratch needs dl_unet_scratch_bytes(u, N, H, W, T) free; it is released back on
 * return. */
void dl_unet_forward(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                     const float *ctx_emb, int T, float *out, dl_arena *scratch);

/* ---- the blocks, each on explicit buffers (outputs must not alias inputs unless noted) ---- */

/* temb [N, Td] = linear_2(SiLU(linear_1(sinusoid(t [N])))), the sinusoid as diffusers'
 * Timesteps(C0, flip_sin_to_cos, freq_shift). */
void dl_unet_time_embed_fwd(const dl_ctx *ctx, const dl_unet *u, int N, const float *t, float *temb,
                            dl_arena *scratch);
/* y [N, H, W, cout] from x [N, H, W, cin] and temb_act [N, Td] = SiLU(temb); temb_act NULL
 * skips the time-embedding injection (the VAE's resnets). */
void dl_unet_resnet_fwd(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x,
                        const float *temb_act, float *y, dl_arena *scratch);
/* One BasicTransformerBlock in place on h [N, S, C] (S = H*W tokens), context [N, T, Dc]. */
void dl_unet_tblock_fwd(const dl_ctx *ctx, const dl_unet_tblock *b, int N, int S, int C, float *h,
                        const float *context, int T, dl_arena *scratch);
/* y [N, H, W, C] = x + Transformer2D(x, context [N, T, Dc]). */
void dl_unet_transformer_fwd(const dl_ctx *ctx, const dl_unet_transformer *tr, int N, int H, int W,
                             const float *x, const float *context, int T, float *y, dl_arena *scratch);
/* y [N, H/2, W/2, C] = conv k3 s2 p1 (x [N, H, W, C]). */
void dl_unet_downsample_fwd(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x, float *y,
                            dl_arena *scratch);
/* y [N, 2H, 2W, C] = conv k3 p1 (nearest2x (x [N, H, W, C])). */
void dl_unet_upsample_fwd(const dl_ctx *ctx, const dl_conv *conv, int N, int H, int W, const float *x, float *y,
                          dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
