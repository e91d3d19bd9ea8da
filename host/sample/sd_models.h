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
 * Returns DL_OK (*out set) or DL_ERR with a message. */
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
int dl_sd_hidden(const dl_sd *sd);            /* text encoder width = UNet cross-attention dim */
int dl_sd_text_layers(const dl_sd *sd);       /* text encoder layers */
int dl_sd_latent_channels(const dl_sd *sd);   /* 4 */
int dl_sd_vae_factor(const dl_sd *sd);        /* pixels per latent: 2^(vae blocks - 1) */
int dl_sd_unet_multiple(const dl_sd *sd);     /* latent H, W must be multiples of this */
float dl_sd_scaling_factor(const dl_sd *sd);  /* VAE scaling_factor */
int dl_sd_v_prediction(const dl_sd *sd);      /* 1: v-prediction, 0: epsilon */
int dl_sd_is_sd2(const dl_sd *sd);

/* Text encoder: out [N, 77, C] from ids [N, 77], clip skip k >= 1 (1 = last layer). */
int dl_sd_encode_text(dl_sd *sd, int N, const int32_t *ids, int clip_skip, float *out);
/* UNet: out [N, h, w, 4] from x [N, h, w, 4], t [N], context [N, T, C]. */
int dl_sd_unet(dl_sd *sd, int N, int h, int w, const float *x, const float *t, const float *context, int T,
               float *out);
/* VAE encoder: mean, logvar [N, h, w, 4] from img [N, H, W, 3] in [-1, 1]. */
int dl_sd_vae_encode(dl_sd *sd, int N, int H, int W, const float *img, float *mean, float *logvar);
/* VAE decoder: img [N, h*f, w*f, 3] from the unscaled latent z [N, h, w, 4]. */
int dl_sd_vae_decode(dl_sd *sd, int N, int h, int w, const float *z, float *img);

/* Read the LoRA file at path (kohya, LyCORIS LoCon or diffusers/PEFT layout; lora/lora_io.h)
 * and merge it into the weights with scale alpha / rank x unet_w on UNet modules and x te_w on
 * text-encoder modules. Several may be merged; dl_sd_lora_clear unmerges them all (in reverse
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
