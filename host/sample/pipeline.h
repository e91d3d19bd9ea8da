/* pipeline.h - text-to-image and image-to-image as diffusers' StableDiffusionPipeline and
 * StableDiffusionImg2ImgPipeline compute them on the CPU: prompt -> embeddings (A1111 emphasis
 * and 75-token chunks, clip skip), initial noise from torch-compatible generators, the sampler
 * loop with classifier-free guidance, VAE decode.
 *
 * Seeds. DL_SEED_PER_IMAGE (the default of `danlu sample`): image i has its own generator seeded
 * seeds[i]; it draws that image's initial latents [1, C, h, w] and its per-step noise, so image i
 * equals a diffusers run of batch 1 with torch.Generator("cpu").manual_seed(seeds[i]) whatever
 * the batch size (as A1111 gives image i seed + i). DL_SEED_BATCH: one generator seeded seeds[0]
 * draws [n, C, h, w] tensors for the whole batch, exactly diffusers called with
 * num_images_per_prompt = n and generator = torch.Generator("cpu").manual_seed(seeds[0]).
 * Every tensor is drawn in torch's [N, C, H, W] order and permuted to channels-last. img2img
 * draws the VAE posterior sample first, then the noise added to it (per image, or for batch
 * mode: one posterior [1, ...] repeated n times, as diffusers encodes the image once).
 *
 * Random source. DL_RNG_TORCH_CPU (the default): torch's CPU generator, as above. DL_RNG_NV:
 * A1111's "NV" source (core/philox.h, what torch.randn gives on an NVIDIA GPU): per image, a
 * Philox generator seeded seeds[i] draws the initial latents [C, h, w] on its first call and
 * each ancestral step's noise [C, h, w] on the next ones (A1111's ImageRNG first()/next(),
 * eta noise seed delta 0), so a txt2img seed gives A1111's GPU/NV latents. With DL_SEED_BATCH
 * one Philox generator seeded seeds[0] draws [n, C, h, w] per call; img2img draws its posterior
 * sample and its noise from the same generators in the order above (not A1111's order). */
#ifndef DANLU_SAMPLE_PIPELINE_H
#define DANLU_SAMPLE_PIPELINE_H

#include "core/clock.h"
#include "sample/sampler.h"
#include "sample/sd_models.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DL_SEED_PER_IMAGE = 0, DL_SEED_BATCH = 1 } dl_seed_mode;
typedef enum { DL_RNG_TORCH_CPU = 0, DL_RNG_NV = 1 } dl_rng_source;

typedef struct dl_gen_params {
    const char *prompt;          /* LoRA tags already removed */
    const char *negative;        /* may be NULL ("") */
    int width, height;           /* pixels; multiples of the model's latent factor */
    int steps;
    float cfg_scale;             /* <= 1: no guidance (the negative prompt is unused), as diffusers */
    int clip_skip;               /* 1 = last layer */
    int emphasis;                /* 1: A1111 (word:1.2) syntax; 0: the prompt verbatim */
    int max_chunks;              /* prompt length limit in 75-token chunks */
    dl_sampler_kind sampler;
    dl_sampler_opts sopts;       /* spacing, karras, eta, strength (img2img) */
    const float *init;           /* img2img: [height, width, 3] in [-1, 1], or NULL (txt2img) */
    dl_rng_source rng;           /* noise source (DL_RNG_TORCH_CPU by default) */
    dl_phases *phases;           /* when non-NULL, receives the time of text encoding, each
                                    sampling step and the VAE (--verbose); NULL by default */
    /* SDXL's size conditioning (time ids, pixels), as StableDiffusionXLPipeline's original_size,
     * crops_coords_top_left and target_size; 0: the default (height, width) / (0, 0) / (height,
     * width). Ignored by SD 1.x/2.x models. */
    int orig_h, orig_w, crop_top, crop_left, target_h, target_w;
} dl_gen_params;

/* Defaults: 512x512, 20 steps, CFG 7, clip skip 1, emphasis on, 8 chunks, Euler a, no init. */
void dl_gen_params_default(dl_gen_params *p);

/* Prompt -> context [n_chunks * 77, C] (malloc'd into *emb, *T = n_chunks * 77): each chunk
 * through the text encoder with clip skip, then A1111's emphasis on it.
 * SDXL: each chunk through both tokenizers and text encoders (dl_sd_encode_text_xl: the hidden
 * states before the final layer norm, penultimate at clip skip 1), emphasis on each encoder's
 * output, then concatenated along the channels (C = C1 + C2); pooled (when non-NULL, [P]) gets
 * the first chunk's text_embeds. */
int dl_pipeline_encode_prompt(dl_sd *sd, const char *text, int clip_skip, int emphasis, int max_chunks, float **emb,
                              int *T);
int dl_pipeline_encode_prompt_xl(dl_sd *sd, const char *text, int clip_skip, int emphasis, int max_chunks,
                                 float **emb, int *T, float *pooled);

/* Generate n images: images [n, height, width, 3] in [0, 1] (diffusers' output_type "np"
 * before the uint8 conversion). SDXL as StableDiffusionXLPipeline: the pooled text_embeds and
 * the time ids (original size, crop, target size) condition the UNet, and an empty negative prompt
 * is zeros (context and pooled; force_zeros_for_empty_prompt of SDXL base's config); latents, when non-NULL, receives the final latents
 * [n, h, w, C] (diffusers' output_type "latent"). seeds: n seeds (DL_SEED_PER_IMAGE) or one
 * (DL_SEED_BATCH). progress, when non-NULL, is called after every model call.
 * Returns DL_OK or DL_ERR with a message. */
int dl_pipeline_generate(dl_sd *sd, const dl_gen_params *p, int n, const uint64_t *seeds, dl_seed_mode mode,
                         float *images, float *latents, void (*progress)(void *user, int call, int total),
                         void *progress_user);

/* The first noise draw of a txt2img run, before the sampler's initial sigma scaling: out
 * [n, h, w, C] channels-last for n images with seeds (n, or one with DL_SEED_BATCH) from
 * the random source rng. Returns DL_OK or DL_ERR (out of memory). */
int dl_pipeline_initial_noise(dl_rng_source rng, dl_seed_mode mode, int n, const uint64_t *seeds, int C, int h, int w,
                              float *out);

/* 8-bit RGB [h, w, 3] -> float [H, W, 3] in [-1, 1] as diffusers' VaeImageProcessor
 * (x / 255 * 2 - 1). When the size changes it is resampled first with a triangle (bilinear)
 * filter widened by the scale factor, as PIL's BILINEAR resize does (diffusers' default is
 * Lanczos: resized images are close to, not equal to, diffusers'). */
void dl_pipeline_image_in(const uint8_t *rgb, int w, int h, int W, int H, float *out);

/* Float image [H, W, 3] in [0, 1] -> 8-bit as diffusers' numpy_to_pil: round(x * 255). */
void dl_pipeline_to_u8(const float *img, int64_t n, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif
