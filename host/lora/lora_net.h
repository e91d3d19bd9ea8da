/* lora_net.h - a LoRA network: the set of adapters on the UNet and the text encoder, chosen
 * by module name from the model config (sd-scripts' target rules and presets), with every A
 * and B in one contiguous fp32 allocation beside a matching gradient allocation, Kaiming init,
 * and attaching to (run time) or merging into (weights) a loaded UNet and text encoder.
 *
 * Target rules (kohya-ss/sd-scripts networks/lora.py, SD 1.x/2.x):
 *   default    every Linear / Conv2d inside a Transformer2DModel: proj_in, proj_out and per
 *              transformer block attn1/attn2 to_q, to_k, to_v, to_out.0, ff.net.0.proj,
 *              ff.net.2 (192 modules for SD 1.5); with conv_rank > 0 also everything inside
 *              ResnetBlock2D / Downsample2D / Upsample2D: 3x3 convs get conv_rank/conv_alpha,
 *              time_emb_proj and the 1x1 conv_shortcut get rank/alpha (sd-scripts' LoCon).
 *   attn-only  attn1/attn2 to_q, to_k, to_v, to_out.0 only (+ conv rule when conv_rank > 0).
 *   attn-mlp   attn-only + ff.net.0.proj, ff.net.2.
 *   full       default + conv_in, conv_out, time_embedding.linear_1/2 (LyCORIS' "full"); kxk
 *              convs only when conv_rank > 0.
 *   text       CLIPAttention q/k/v/out_proj and CLIPMLP fc1/fc2 of every layer (72 for SD 1.5);
 *              attn-only keeps q/k/v/out_proj.
 * Names: the diffusers / transformers module name, and the kohya name "lora_unet_" or
 * "lora_te_" + name with '.' -> '_'.
 *
 * SDXL (a UNet with the text_time added conditioning): the same rules over its UNet, and the
 * text rule over both text encoders (DL_LORA_TEXT: CLIP ViT-L, DL_LORA_TEXT2: OpenCLIP bigG as
 * CLIPTextModelWithProjection; its text_projection is not a target). kohya names are sd-scripts'
 * SDXL ones (networks/lora.py over library/sdxl_original_unet.py): "lora_unet_" + the module's
 * SGM (ldm) path, e.g. input_blocks.4.1.transformer_blocks.0.attn1.to_q,
 * middle_block.0.in_layers.2, output_blocks.2.2.conv, and "lora_te1_" / "lora_te2_" + the
 * transformers name (checked against sd-scripts' own module list: tests/gen/gen_sdxl_lora.py). */
#ifndef DANLU_LORA_NET_H
#define DANLU_LORA_NET_H

#include "core/ctx.h"
#include "model/clip.h"
#include "model/config.h"
#include "model/module.h"
#include "model/unet.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* DL_LORA_TEXT: the text encoder (SDXL: the first); DL_LORA_TEXT2: SDXL's second. */
typedef enum { DL_LORA_UNET = 0, DL_LORA_TEXT = 1, DL_LORA_TEXT2 = 2 } dl_lora_part;

typedef enum {
    DL_LORA_PRESET_DEFAULT = 0, /* sd-scripts' default (transformer modules) */
    DL_LORA_PRESET_ATTN_ONLY,
    DL_LORA_PRESET_ATTN_MLP,
    DL_LORA_PRESET_FULL,
    DL_LORA_PRESET_ALL          /* internal: every linear/conv (candidates when reading files) */
} dl_lora_preset;

/* "default" (also "" and "transformer"), "attn-only", "attn-mlp", "full". DL_ERR names an
 * unknown preset. */
int dl_lora_preset_parse(const char *s, dl_lora_preset *out);
const char *dl_lora_preset_name(dl_lora_preset p);

/* What to create (sd-scripts' network_dim, network_alpha, conv_dim, conv_alpha). */
typedef struct dl_lora_spec {
    dl_lora_preset preset;
    int rank;               /* network_dim, >= 1 */
    float alpha;            /* network_alpha; <= 0 means alpha = rank (scale 1) */
    int conv_rank;          /* conv_dim; 0: no kxk conv adapters */
    float conv_alpha;       /* conv_alpha; <= 0 means alpha (sd-scripts: conv_alpha = alpha) */
    int unet, text;         /* 1: adapters on that part (text: SDXL's both text encoders) */
    float multiplier;       /* scale = alpha / rank x multiplier (1 when training) */
    uint64_t seed;          /* Kaiming init of A */
} dl_lora_spec;

/* One adapter. A [r, k, k, in] (k = 1: [r, in]), B [out, r]; gradients dA, dB alike. */
typedef struct dl_lora_module {
    char name[160];         /* "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" */
    char kohya[192];        /* "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" */
    dl_lora_part part;
    int is_conv;            /* 1: a conv (dl_conv) in danlu, 0: a linear (dl_linear) */
    int k;                  /* kernel size (1 for linears) */
    int in, out;            /* in = Cin for convs */
    int conv1x1_on_disk;    /* a linear stored as a 1x1 conv in the checkpoint (SD1 proj_in/out):
                               LoRA files hold its down/up as [r, in, 1, 1] / [out, r, 1, 1] */
    float alpha;
    dl_lora lora;           /* r, scale, A, B (slices of net->params), dA, dB (the same slices of
                               net->grads), merged */
    int64_t offset;         /* of A in params (B follows at offset + r*k*k*in) */
} dl_lora_module;

typedef struct dl_lora_net {
    int n, n_unet;          /* modules; the UNet's come first [0, n_unet), then the text encoder's
                               (SDXL: the first text encoder's, then the second's) */
    dl_lora_module *mods;   /* [n] (malloc'd) */
    float multiplier;
    int64_t n_params;       /* floats in params (and grads) */
    int64_t n_params_unet;  /* params[0, n_params_unet) belong to the UNet: two optimizer groups */
    float *params;          /* [n_params] every A and B, 64-byte aligned, in backend memory */
    float *grads;           /* [n_params] matching gradients (zeroed at creation), backend memory */
    float *host;            /* [n_params] the host copy of params: params itself until
                               dl_lora_net_to_backend moves them to a device; files are written
                               from and read into it (dl_lora_net_pull / _push) */
    const struct dl_ctx *dev; /* the device ctx params and grads live on, or NULL (host) */
    int xl;                 /* made for an SDXL model (dl_lora_net_create; 0 from a module list) */
} dl_lora_net;

/* Moves params (uploaded from host) and grads (zeroed) to the memory of ctx's backend when it
 * is a device backend, and points every module's A, B, dA, dB there; host stays as the host
 * copy. Nothing to do on the CPU backend. DL_ERR (message) when there is no device memory. */
int dl_lora_net_to_backend(const struct dl_ctx *ctx, dl_lora_net *net);
/* host <- params (before saving), and params <- host (after loading a state); no-ops on the
 * host. DL_OK or DL_ERR (the backend's message). */
int dl_lora_net_pull(dl_lora_net *net);
int dl_lora_net_push(dl_lora_net *net);
/* The host copies of module m's A [r, k, k, in] and B [out, r]. */
float *dl_lora_host_A(const dl_lora_net *net, const dl_lora_module *m);
float *dl_lora_host_B(const dl_lora_net *net, const dl_lora_module *m);

/* Build the network for cfg and spec: modules in forward order (UNet, then text encoder), A
 * Kaiming-uniform from spec->seed, B zero. DL_ERR (message) on a bad spec or no memory; on
 * error net holds nothing to free. */
int dl_lora_net_create(dl_lora_net *net, const dl_model_config *cfg, const dl_lora_spec *spec);

/* Create an empty network from an explicit module list (each with name, kohya, part, is_conv,
 * k, in, out, conv1x1_on_disk, alpha and lora.r set); allocates and zeroes params and grads
 * (A and B zero: call dl_lora_net_init_weights for Kaiming). Used by the file reader. */
int dl_lora_net_from_modules(dl_lora_net *net, const dl_lora_module *mods, int n, float multiplier);

void dl_lora_net_free(dl_lora_net *net);

/* The module that holds adapter l (a dl_lora of some net, as attached to a dl_linear / dl_conv):
 * how training code finds the module (name, part, alpha) of an adapter it meets. */
static inline dl_lora_module *dl_lora_module_of(const dl_lora *l)
{
    return (dl_lora_module *)(void *)((char *)(void *)(uintptr_t)l - offsetof(dl_lora_module, lora));
}

/* grads <- 0 (all of them, padding included). */
void dl_lora_net_zero_grads(dl_lora_net *net);

/* Every module the preset targets in cfg (no allocation of weights): *out malloc'd array of
 * modules with names, shapes, alpha and lora.r filled; *n set. With DL_LORA_PRESET_ALL every
 * linear and conv of the UNet (rank/alpha as 0) and every text-encoder linear (SDXL: of both
 * text encoders). */
int dl_lora_targets(const dl_model_config *cfg, const dl_lora_spec *spec, dl_lora_module **out, int *n);

/* torch.nn.init.kaiming_uniform_(A, a=sqrt(5)) bound for fan_in = k*k*in: 1/sqrt(fan_in). */
double dl_lora_kaiming_bound(int64_t fan_in);

/* A <- U(-b, b) with b = dl_lora_kaiming_bound, B <- 0 for every module. Module i draws its A
 * in torch's layout ([r, in] or [r, Cin, k, k]) from torch's generator seeded with seed + i, so
 * module i equals torch.manual_seed(seed + i); kaiming_uniform_(w, a=math.sqrt(5)). */
void dl_lora_net_init_weights(dl_lora_net *net, uint64_t seed);

/* Set the multiplier: scale = alpha / r x multiplier on every module. Not while merged. */
void dl_lora_net_set_multiplier(dl_lora_net *net, float multiplier);

/* The module called name (diffusers/transformers name or kohya name), or NULL. On SDXL the two
 * text encoders' modules share their transformers names (the first encoder's is returned); the
 * kohya names are unique. */
dl_lora_module *dl_lora_net_find(const dl_lora_net *net, const char *name);

/* The networks adapters go into; a part may be NULL when the net has no module for it. */
typedef struct dl_lora_models {
    dl_unet *unet;
    dl_clip *te;   /* the text encoder (SDXL: the first) */
    dl_clip *te2;  /* SDXL's second text encoder */
} dl_lora_models;

/* Attach every adapter to its layer in u / te (either may be NULL when the net has no module
 * for that part) so dl_linear_fwd / dl_conv_fwd apply it at run time. DL_ERR names a module the
 * model does not have, or both shapes when they differ; on error nothing stays attached. A
 * module of SDXL's second text encoder is DL_ERR here (merge it with dl_lora_net_merge_into). */
int dl_lora_net_attach(dl_lora_net *net, dl_unet *u, dl_clip *te);
/* The same into the networks of m, SDXL's second text encoder included (training it). */
int dl_lora_net_attach_to(dl_lora_net *net, const dl_lora_models *m);
/* Remove this net's adapters from the layers they are attached to. */
void dl_lora_net_detach(dl_lora_net *net, dl_unet *u, dl_clip *te);
void dl_lora_net_detach_from(dl_lora_net *net, const dl_lora_models *m);

/* Fold scale x B·A into the weights of u / te (W [out, k, k, in] += s B A). Several nets may be
 * merged one after another (each with its multiplier); unmerge them in reverse order. DL_ERR
 * as dl_lora_net_attach (nothing merged on error). */
int dl_lora_net_merge(const dl_ctx *ctx, dl_lora_net *net, dl_unet *u, dl_clip *te);
/* Subtract what dl_lora_net_merge added (weights restored up to fp32 rounding). */
void dl_lora_net_unmerge(const dl_ctx *ctx, dl_lora_net *net, dl_unet *u, dl_clip *te);
/* dl_lora_net_merge / _unmerge into the networks of m (SDXL: both text encoders). */
int dl_lora_net_merge_into(const dl_ctx *ctx, dl_lora_net *net, const dl_lora_models *m);
void dl_lora_net_unmerge_from(const dl_ctx *ctx, dl_lora_net *net, const dl_lora_models *m);

/* "lora_unet_" / "lora_te_" (DL_LORA_TEXT2: "lora_te2_") + name with '.' -> '_' into out (cap
 * bytes): the SD 1.x/2.x kohya name, and on SDXL the kohya name of the UNet module's diffusers
 * path that some converters write (lora_unet_down_blocks_1_attentions_0_...). */
void dl_lora_kohya_name(dl_lora_part part, const char *name, char *out, size_t cap);
/* The kohya name sd-scripts gives module name of part in a model of config cfg: as
 * dl_lora_kohya_name on SD 1.x/2.x; on SDXL "lora_unet_" + the SGM path, "lora_te1_" /
 * "lora_te2_" + name. DL_ERR (message) for a UNet name the SGM layout does not have. */
int dl_lora_kohya_name_for(const dl_model_config *cfg, dl_lora_part part, const char *name, char *out, size_t cap);
/* 1 when cfg is an SDXL model (its UNet has the text_time added conditioning). */
int dl_lora_cfg_is_xl(const dl_model_config *cfg);
/* "UNet", "text encoder", "text encoder 2"; the PEFT key prefixes "unet", "text_encoder",
 * "text_encoder_2". */
const char *dl_lora_part_label(dl_lora_part part);
const char *dl_lora_part_prefix(dl_lora_part part);

#ifdef __cplusplus
}
#endif
#endif
