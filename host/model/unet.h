/* unet.h - the SD 1.x/2.x and SDXL denoising UNet (diffusers UNet2DConditionModel), run through
 * the ctx's backend.
 *
 * Structure (diffusers names, channels-last activations), described once as a node list
 * (model/graph.h) built from the config at load (dl_unet.graph):
 *   conv_in; time_embedding (time_proj sinusoid -> linear_1 -> SiLU -> linear_2, then SiLU)
 *   SDXL: add_embedding (linear_1 -> SiLU -> linear_2 on concat(text_embeds, add_time_proj
 *         sinusoids of the time ids)) added to the time embedding before that SiLU; frozen
 *   down_blocks.i.{resnets.j, attentions.j}, downsamplers.0          (every output a skip)
 *   mid_block.resnets.0 -> mid_block.attentions.0 -> mid_block.resnets.1
 *   up_blocks.i.{resnets.j on concat(h, skip), attentions.j}, upsamplers.0
 *   conv_norm_out + SiLU -> conv_out
 * The up path's resnet widths follow from the skips popped (cin = h's channels + the skip's).
 * Every walker (model/graph.h; training: train/unet_train.h) reads that list.
 *
 * Memory: weights go to the caller's weights arena (dl_unet_weights_bytes measures it); the
 * forward takes everything it needs from a scratch arena (dl_unet_scratch_bytes: the forward run
 * against a measuring arena) and releases it on return. Small bookkeeping (module tables, names,
 * transformer-block arrays) is malloc'd at load and freed by dl_unet_free. */
#ifndef DANLU_MODEL_UNET_H
#define DANLU_MODEL_UNET_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/conv_blocks.h"
#include "model/graph.h"
#include "model/module.h"
#include "model/resnet.h"
#include "model/transformer.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_UNET_MAX_LAYERS 4 /* layers_per_block supported (SD: 2) */

/* CrossAttnDownBlock2D / DownBlock2D (has_attn 0). */
typedef struct dl_unet_down {
    dl_unet_resnet resnets[DL_UNET_MAX_LAYERS];
    dl_unet_transformer attentions[DL_UNET_MAX_LAYERS];
    dl_conv downsample;         /* downsamplers.0.conv: k3 s2 p1, [cout, 3, 3, cout] */
} dl_unet_down;

/* CrossAttnUpBlock2D / UpBlock2D: layers_per_block + 1 resnets, each on concat(h, skip). */
typedef struct dl_unet_up {
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
    dl_linear add_linear_1;     /* SDXL add_embedding.linear_1: [Td, P] (unused without added conditioning) */
    dl_linear add_linear_2;     /* SDXL add_embedding.linear_2: [Td, Td] */
    dl_unet_down down[DL_MAX_BLOCKS];
    dl_unet_resnet mid_res0, mid_res1;
    dl_unet_transformer mid_attn;
    dl_unet_up up[DL_MAX_BLOCKS];
    dl_norm conv_norm_out;      /* GroupNorm(G, C0) + SiLU */
    dl_conv conv_out;           /* [out_channels, 3, 3, C0] */
    /* bookkeeping (malloc'd) */
    int n_modules, cap_modules;
    dl_unet_module *modules;    /* every linear and conv, in load (= forward) order */
    dl_names names;             /* the layers' names */
    dl_graph graph;             /* the node list, built from cfg by dl_unet_load */
    float *dtext_embeds;        /* SDXL training: when set (backend memory, [N, Dt]), the added
                                   embedding is back-propagated (its weights stay frozen) and the
                                   backward overwrites d loss / d text_embeds there; set it before
                                   sizing and the forward (what the forward saves depends on it) */
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
/* dl_unet_load for full fine-tuning (tr NULL: dl_unet_load): every weight fp32 in the arena
 * (ck->weight_dtypes and weights_in_place are not used) with its gradient at the same offset in
 * tr->grads (memory of the arena's size, in its backend: dl_linear.dw, dl_conv.dw, dl_norm.dgamma
 * ...), each placed tensor reported to tr->placed. The backward then accumulates every weight's
 * gradient, the time embedding's included. dl_unet_weights_bytes measures the arena when ck has
 * weight_dtypes 0 and weights_in_place 0. */
int dl_unet_load_trainable(dl_unet *u, dl_checkpoint *ck, dl_arena *weights, const dl_trainable *tr);
/* Release the bookkeeping of u (not the weights: they belong to the arena). */
void dl_unet_free(dl_unet *u);

/* The linear/conv layer called name (diffusers name without ".weight"), or NULL. */
const dl_unet_module *dl_unet_find(const dl_unet *u, const char *name);
/* All linear/conv layers in forward order; *n set. Valid until dl_unet_free. */
const dl_unet_module *dl_unet_modules(const dl_unet *u, int *n);

/* Bytes of scratch dl_unet_forward takes for (N, H, W, T), including the temporaries of any
 * LoRA attached to u's modules at the time of the call (attach LoRAs first). */
size_t dl_unet_scratch_bytes(const dl_unet *u, int N, int H, int W, int T);

/* SDXL's added conditioning (cfg.addition_embed DL_ADD_TEXT_TIME), in backend memory. */
typedef struct dl_unet_added {
    const float *text_embeds; /* [N, Dt]: the pooled text embedding, Dt = dl_unet_text_embeds_dim */
    const float *time_ids;    /* [N, K], K = cfg.addition_time_ids: original height, width, crop top,
                                 left, target height, width (SDXL base) */
} dl_unet_added;

/* eps/v prediction: out [N, H, W, out_channels] from the latents x [N, H, W, in_channels],
 * timesteps t [N] (may be fractional) and the text context ctx [N, T, cross_attention_dim].
 * H and W must be divisible by 2^(n_blocks-1) (DL_ASSERT; diffusers' upsample_size path for
 * other sizes is not implemented). upcast_attention has no effect here: the CPU path is fp32
 * throughout. scratch needs dl_unet_scratch_bytes(u, N, H, W, T) free; it is released back on
 * return. */
void dl_unet_forward(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                     const float *ctx_emb, int T, float *out, dl_arena *scratch);
/* The same with SDXL's added conditioning: add is required (DL_ASSERT) when the config has it
 * and ignored (may be NULL) when not. dl_unet_forward is this with add NULL. */
void dl_unet_forward_added(const dl_ctx *ctx, const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                           const float *ctx_emb, int T, const dl_unet_added *add, float *out, dl_arena *scratch);
/* The walkers' inputs of one UNet pass (model/graph.h), with the shape contract checked. */
dl_pass_in dl_unet_pass_in(const dl_unet *u, int N, int H, int W, const float *x, const float *t,
                           const float *ctx_emb, int T, const dl_unet_added *add);

/* Every weight of a UNet of this config, in diffusers names and PyTorch shapes, in load order:
 * the loader run in listing mode (dl_model_weights' UNet part). Stops with DL_ERR when fn does. */
int dl_unet_list_weights(const dl_unet_config *cfg, dl_weight_fn fn, void *user);

/* The UNet as the walkers see it (model/graph.h): its graph and its node forward/backward. */
dl_net dl_unet_net(const dl_unet *u);

#ifdef __cplusplus
}
#endif
#endif
