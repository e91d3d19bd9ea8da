/* config.h - architecture configs of the SD 1.x/2.x and SDXL networks (UNet, VAE, CLIP text
 * encoders, SDXL's second one with its projection): presets, diffusers config.json parsing (cJSON)
 * and writing, validation.
 *
 * Field meanings follow diffusers/transformers. One trap kept explicit here: diffusers'
 * UNet "attention_head_dim" is really the number of heads (SD1: 8 heads everywhere; SD2:
 * [5, 10, 20, 20] heads, i.e. head dim 64); we store heads per block in num_heads[]. Detection of
 * a config from the tensors of a single-file checkpoint lives in checkpoint.c. */
#ifndef DANLU_MODEL_CONFIG_H
#define DANLU_MODEL_CONFIG_H

#include "model/prediction.h"
#include "ops/cpu/activation.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DL_MAX_BLOCKS 8

/* The text encoder's activation is one of the CPU op set's (DL_ACT_QUICK_GELU or DL_ACT_GELU). */
typedef dl_act dl_clip_act;

/* Added conditioning of the UNet (diffusers addition_embed_type). */
typedef enum {
    DL_ADD_NONE = 0,      /* SD 1.x / 2.x */
    DL_ADD_TEXT_TIME = 1  /* SDXL "text_time": pooled text embedding + sinusoids of the time ids */
} dl_add_embed;

/* UNet2DConditionModel with CrossAttnDownBlock2D/DownBlock2D, UNetMidBlock2DCrossAttn,
 * UpBlock2D/CrossAttnUpBlock2D. Block arrays are indexed in diffusers order: down block i,
 * up block i (up block i mirrors down block n_blocks-1-i). num_heads[i] and
 * transformer_layers[i] are read by the attentions of level i only (down block i, up block
 * n_blocks-1-i, the mid block for the last level): a level without attention (SDXL's first)
 * may hold 0 there.
 *
 * SDXL (addition_embed == DL_ADD_TEXT_TIME): the time embedding gets
 *   add_embedding(concat(text_embeds [N, Dt], sinusoid_A(time_ids [N, K]) [N, K*A]))
 * added before its final SiLU, add_embedding = linear_1 [Td, P] -> SiLU -> linear_2 [Td, Td],
 * P = projection_class_embeddings_input_dim = Dt + K*A, the sinusoid as diffusers' add_time_proj
 * (Timesteps(A, flip_sin_to_cos, freq_shift), per time id). K is not a diffusers config key:
 * SDXL's pipelines pass 6 time ids (original size, crop top-left, target size), the refiner 5
 * (its aesthetic score in place of the target size); Dt follows from P, K and A. */
typedef struct dl_unet_config {
    int in_channels, out_channels;             /* 4, 4 (9 in for inpainting) */
    int n_blocks;                              /* len(block_out_channels) */
    int block_out_channels[DL_MAX_BLOCKS];     /* SD: 320, 640, 1280, 1280 */
    int down_cross_attn[DL_MAX_BLOCKS];        /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_cross_attn[DL_MAX_BLOCKS];          /* 1: CrossAttnUpBlock2D, 0: UpBlock2D */
    int layers_per_block;                      /* resnets per down block (up blocks: +1) */
    int num_heads[DL_MAX_BLOCKS];              /* heads at down block i; up block i uses
                                                  num_heads[n-1-i], the mid block num_heads[n-1] */
    int transformer_layers[DL_MAX_BLOCKS];     /* transformer blocks per attention, same indexing */
    int cross_attention_dim;                   /* 768 (SD1), 1024 (SD2) */
    int use_linear_projection;                 /* proj_in/proj_out: 0 = 1x1 conv (SD1), 1 = linear (SD2) */
    int upcast_attention;                      /* compute attention softmax in fp32 (SD2.1) */
    int norm_num_groups;                       /* 32 */
    float norm_eps;                            /* 1e-5 */
    int time_embed_dim;                        /* 4 * block_out_channels[0] */
    int flip_sin_to_cos;                       /* 1 */
    int freq_shift;                            /* 0 */
    int sample_size;                           /* latent size the model was trained at: 64 / 96 / 128 */
    dl_prediction prediction;                  /* from the scheduler config, or a flag */
    dl_add_embed addition_embed;               /* DL_ADD_NONE, or SDXL's DL_ADD_TEXT_TIME */
    int addition_time_embed_dim;               /* A: sinusoid width per time id (SDXL: 256) */
    int projection_class_embeddings_input_dim; /* P = Dt + K*A (SDXL: 2816 = 1280 + 6 x 256) */
    int addition_time_ids;                     /* K: time ids per sample (SDXL: 6; refiner: 5) */
} dl_unet_config;

/* Dt, the width of the pooled text embedding an SDXL UNet takes (P - K*A); 0 without added
 * conditioning. */
int dl_unet_text_embeds_dim(const dl_unet_config *cfg);

/* AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks. Decoder up block i mirrors
 * encoder down block n_blocks-1-i and has layers_per_block+1 resnets. */
typedef struct dl_vae_config {
    int in_channels, out_channels;             /* 3, 3 */
    int latent_channels;                       /* 4 */
    int n_blocks;
    int block_out_channels[DL_MAX_BLOCKS];     /* 128, 256, 512, 512 */
    int layers_per_block;                      /* 2 */
    int norm_num_groups;                       /* 32 */
    int mid_attention;                         /* mid_block_add_attention: 1 */
    int use_quant_conv, use_post_quant_conv;   /* 1, 1 */
    float scaling_factor;                      /* 0.18215 */
    int sample_size;                           /* 512 / 768 (informational) */
} dl_vae_config;

/* CLIPTextModel (transformers). SD2's OpenCLIP ViT-H text tower maps to hidden 1024, 16 heads,
 * 23 layers (the 24th is never used by SD2), GELU. SDXL's second text encoder (OpenCLIP ViT-bigG,
 * transformers' CLIPTextModelWithProjection) is hidden 1280, 20 heads, 32 layers, GELU, with a
 * bias-free text_projection [projection_dim, hidden] applied to the final-LN hidden state at each
 * sequence's EOS token (text_embeds). */
typedef struct dl_clip_config {
    int vocab_size;                            /* 49408 */
    int hidden_size;                           /* 768 / 1024 */
    int intermediate_size;                     /* 3072 / 4096 */
    int num_layers;                            /* 12 / 23 */
    int num_heads;                             /* 12 / 16 */
    int max_positions;                         /* 77 */
    dl_clip_act act;                           /* quick_gelu (SD1) / gelu (SD2) */
    float layer_norm_eps;                      /* 1e-5 */
    int bos_token_id, eos_token_id, pad_token_id;
    int projection_dim;                        /* text_projection's width (CLIPTextModelWithProjection);
                                                  0: no projection (CLIPTextModel) */
} dl_clip_config;

typedef struct dl_model_config {
    dl_unet_config unet;
    dl_vae_config vae;
    dl_clip_config text;
    dl_clip_config text2;                      /* SDXL's second text encoder; num_layers 0: none */
} dl_model_config;

/* Fill cfg with a named preset: "sd15" (SD 1.x), "sd21" (SD 2.x 768-v, v-prediction),
 * "sd21-base" (SD 2.x 512, epsilon), "sdxl" (SDXL base 1.0: its UNet and VAE, CLIP ViT-L and
 * OpenCLIP ViT-bigG with its projection as the text encoders), "tiny" (the tiny test model of
 * tests/gen/gen_checkpoint.py), "tiny-sdxl" (a small SDXL-architecture model whose config a
 * single file's tensors give back: 32 norm groups, head dim 64, 64- and 128-wide text encoders
 * whose widths add up to the UNet's cross-attention width).
 * Returns DL_OK, or DL_ERR naming the unknown preset. */
int dl_model_config_preset(dl_model_config *cfg, const char *name);

/* Parse a diffusers unet/config.json text (label names it in messages). Unknown keys whose
 * value is null or false are ignored (absent features); any other unknown key, an architecture
 * other than UNet2DConditionModel, or a feature we do not support (an addition_embed_type other
 * than SDXL's "text_time", class embeddings, dual cross attention) is DL_ERR naming the key. */
int dl_unet_config_parse(dl_unet_config *cfg, const char *json, const char *label);
/* Same for vae/config.json (AutoencoderKL). */
int dl_vae_config_parse(dl_vae_config *cfg, const char *json, const char *label);
/* Same for text_encoder/config.json (transformers CLIPTextConfig; generic transformers keys are
 * ignored, model_type must be clip_text_model, hidden_act quick_gelu or gelu). projection_dim is
 * kept only for the architecture CLIPTextModelWithProjection (text_encoder_2/config.json). */
int dl_clip_config_parse(dl_clip_config *cfg, const char *json, const char *label);
/* prediction_type of a scheduler/scheduler_config.json ("epsilon" or "v_prediction"). */
int dl_prediction_parse(dl_prediction *pred, const char *json, const char *label);

/* The same, reading the file at path. DL_ERR names the file when it cannot be read. */
int dl_unet_config_load(dl_unet_config *cfg, const char *path);
int dl_vae_config_load(dl_vae_config *cfg, const char *path);
int dl_clip_config_load(dl_clip_config *cfg, const char *path);
int dl_prediction_load(dl_prediction *pred, const char *path);

/* Check internal consistency (channels divisible by groups and heads, sizes > 0, ...).
 * DL_OK, or DL_ERR naming the field (label: the file or "preset sd15"). */
int dl_unet_config_validate(const dl_unet_config *cfg, const char *label);
int dl_vae_config_validate(const dl_vae_config *cfg, const char *label);
int dl_clip_config_validate(const dl_clip_config *cfg, const char *label);

/* Serialise as diffusers / transformers config.json text (malloc'd; free()). */
char *dl_unet_config_to_json(const dl_unet_config *cfg);
char *dl_vae_config_to_json(const dl_vae_config *cfg);
char *dl_clip_config_to_json(const dl_clip_config *cfg);
char *dl_scheduler_config_to_json(dl_prediction pred);

/* NULL when equal, else the name of the first differing field (static string). */
const char *dl_unet_config_diff(const dl_unet_config *a, const dl_unet_config *b);
const char *dl_vae_config_diff(const dl_vae_config *a, const dl_vae_config *b);
const char *dl_clip_config_diff(const dl_clip_config *a, const dl_clip_config *b);

#ifdef __cplusplus
}
#endif
#endif
