/* sd_models.h - the networks of one SD checkpoint bundled for sampling (tokenizer, text
 * encoder, UNet, VAE, their arenas), behind an opaque handle, so the pipeline sees what it
 * samples with and none of the networks' internals. */
#ifndef DANLU_SAMPLE_SD_MODELS_H
#define DANLU_SAMPLE_SD_MODELS_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_sd dl_sd;
struct dl_tokenizer;
struct dl_model_config;
struct dl_clip;
struct dl_unet;
struct dl_vae;

/* Open the checkpoint at path (diffusers folder or single .safetensors) and load its text
 * encoder, UNet and VAE. tokenizer: a tokenizer folder / vocab.json / CLIP bpe .txt.gz, or NULL
 * for the checkpoint's tokenizer/ folder (a single file needs one: DL_ERR says so). ctx is
 * borrowed. merge_loras 1: LoRA files will be merged (dl_sd_lora_add), so every weight is held
 * in fp32; 0: layer weights stored fp16 / bf16 stay so where ctx's backend computes from them
 * (half the memory, no conversion; the same images bit for bit), and dl_sd_lora_add fails.
 * Returns DL_OK (*out set) or DL_ERR with a message.
 * SDXL: both text encoders load, and tokenizer_2 is the folder's tokenizer_2/ (or, with a
 * tokenizer given or none there, the same vocabulary) padding with "!"; a model whose second
 * text encoder or UNet do not fit (the refiner's 5 time ids) is DL_ERR. LoRAs: not for SDXL yet. */
int dl_sd_open(dl_sd **out, const char *path, const char *tokenizer, const dl_ctx *ctx, int merge_loras);
/* A view on networks loaded elsewhere, e.g. the trainer's, with its LoRA adapters attached and
 * live: nothing is loaded or copied (cfg is copied; tok, clip, unet, vae and ctx must outlive the
 * view). dl_sd_lora_add refuses a view (DL_ERR); dl_sd_close frees only the view's scratch. */
int dl_sd_view(dl_sd **out, const struct dl_model_config *cfg, int sd2, const struct dl_tokenizer *tok,
               struct dl_clip *clip, struct dl_unet *unet, struct dl_vae *vae, const dl_ctx *ctx);
/* Frees what dl_sd_open loaded (or a view's scratch); NULL is fine. */
void dl_sd_close(dl_sd *sd);

/* Facts about the model. */
const struct dl_tokenizer *dl_sd_tokenizer(const dl_sd *sd);
int dl_sd_hidden(const dl_sd *sd);            /* text encoder width = UNet cross-attention dim
                                                 (SDXL: both encoders' widths) */
int dl_sd_is_xl(const dl_sd *sd);             /* SDXL: two text encoders, pooled + time ids */
const struct dl_tokenizer *dl_sd_tokenizer2(const dl_sd *sd); /* SDXL's tokenizer_2, else NULL */
int dl_sd_hidden2(const dl_sd *sd);           /* SDXL: the second encoder's width (else 0) */
int dl_sd_pooled_dim(const dl_sd *sd);        /* SDXL: text_embeds width (else 0) */
int dl_sd_text_layers(const dl_sd *sd);       /* text encoder layers */
int dl_sd_latent_channels(const dl_sd *sd);   /* 4 */
int dl_sd_vae_factor(const dl_sd *sd);        /* pixels per latent: 2^(vae blocks - 1) */
int dl_sd_unet_multiple(const dl_sd *sd);     /* latent H, W must be multiples of this */
float dl_sd_scaling_factor(const dl_sd *sd);  /* VAE scaling_factor */
int dl_sd_v_prediction(const dl_sd *sd);      /* 1: v-prediction, 0: epsilon */
int dl_sd_is_sd2(const dl_sd *sd);

/* Text encoder: out [N, 77, C] from ids [N, 77], clip skip k >= 1 (1 = last layer). */
int dl_sd_encode_text(dl_sd *sd, int N, const int32_t *ids, int clip_skip, float *out);
/* SDXL: out1 [N, 77, C1], out2 [N, 77, C2] the two encoders' hidden states before the final
 * layer norm at clip skip k (1: hidden_states[-2], as StableDiffusionXLPipeline; k: diffusers'
 * clip_skip k - 1), from ids1 (tokenizer) and ids2 (tokenizer_2); pooled [N, P] = the second
 * encoder's text_embeds (CLIPTextModelWithProjection: its projection at the EOS token). */
int dl_sd_encode_text_xl(dl_sd *sd, int N, const int32_t *ids1, const int32_t *ids2, int clip_skip, float *out1,
                         float *out2, float *pooled);
/* UNet: out [N, h, w, 4] from x [N, h, w, 4], t [N], context [N, T, C]. */
int dl_sd_unet(dl_sd *sd, int N, int h, int w, const float *x, const float *t, const float *context, int T,
               float *out);
/* The same with SDXL's added conditioning: text_embeds [N, P], time_ids [N, 6] (NULL for SD). */
int dl_sd_unet_added(dl_sd *sd, int N, int h, int w, const float *x, const float *t, const float *context, int T,
                     const float *text_embeds, const float *time_ids, float *out);
/* VAE encoder: mean, logvar [N, h, w, 4] from img [N, H, W, 3] in [-1, 1]. */
int dl_sd_vae_encode(dl_sd *sd, int N, int H, int W, const float *img, float *mean, float *logvar);
/* VAE decoder: img [N, h*f, w*f, 3] from the unscaled latent z [N, h, w, 4]. */
int dl_sd_vae_decode(dl_sd *sd, int N, int h, int w, const float *z, float *img);

/* Read the LoRA file at path (kohya, LyCORIS LoCon or diffusers/PEFT layout; lora/lora_io.h)
 * and merge it into the weights with scale alpha / rank x unet_w on UNet modules and x te_w on
 * text-encoder modules (SDXL: both text encoders). Several may be merged; dl_sd_lora_clear unmerges them all (in reverse
 * order; weights restored up to fp32 rounding). Keys that matched nothing are reported on
 * stderr when verbose; a file none of whose keys match, or whose shapes belong to another
 * architecture, is DL_ERR naming the file (nothing merged). */
int dl_sd_lora_add(dl_sd *sd, const char *path, float te_w, float unet_w, int verbose);
void dl_sd_lora_clear(dl_sd *sd);
/* LoRAs merged now. */
int dl_sd_lora_count(const dl_sd *sd);

#ifdef __cplusplus
}
#endif
#endif
