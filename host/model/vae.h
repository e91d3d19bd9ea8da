/* vae.h - the SD AutoencoderKL: encoder (image -> latent mean / logvar, sampled with a given
 * noise), decoder (latent -> image), both with the mid-block self-attention. Numerically as
 * diffusers' AutoencoderKL. Images are [N, H, W, 3] in [-1, 1]; latents [N, H/8, W/8, 4]
 * (for 4 blocks), unscaled: callers multiply by scaling_factor (0.18215 for SD1.x) after
 * encoding and divide before decoding, as diffusers' pipelines do. */
#ifndef DANLU_MODEL_VAE_H
#define DANLU_MODEL_VAE_H

#include "model/graph.h"
#include "model/module.h"
#include "model/unet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Mid-block attention: GroupNorm, one head over C channels, q/k/v/out with bias, residual. */
typedef struct dl_vae_attn {
    dl_norm norm;                        /* group_norm: GroupNorm(G, C), eps 1e-6 */
    dl_linear q, k, v, out;              /* to_q, to_k, to_v, to_out.0: [C, C] + bias */
} dl_vae_attn;

typedef struct dl_vae_block {
    dl_unet_resnet res[DL_UNET_MAX_LAYERS + 1]; /* ResnetBlock2D without time embedding */
    dl_conv sample;                      /* [cout, 3, 3, cout]: encoder downsample (k3 s2, pad 0,1,0,1),
                                            decoder upsample */
} dl_vae_block;

typedef struct dl_vae_coder {
    dl_conv conv_in;                     /* encoder: [c0, 3, 3, 3]; decoder: [c_last, 3, 3, latent] */
    dl_vae_block blocks[DL_MAX_BLOCKS];  /* encoder down_blocks / decoder up_blocks */
    dl_unet_resnet mid_res0, mid_res1;   /* mid_block.resnets.{0,1} */
    dl_vae_attn mid_attn;                /* mid_block.attentions.0 */
    dl_norm norm_out;                    /* conv_norm_out: GroupNorm(G, c) + SiLU */
    dl_conv conv_out;                    /* encoder: [2*latent, 3, 3, c_last]; decoder: [3, 3, 3, c0] */
} dl_vae_coder;

typedef struct dl_vae {
    dl_vae_config cfg;
    dl_vae_coder enc, dec;
    dl_linear quant_conv;                /* 1x1 conv [2*latent, 2*latent] as a linear */
    dl_linear post_quant_conv;           /* 1x1 conv [latent, latent] as a linear */
    dl_names names;                      /* the layers' names */
    dl_graph enc_graph, dec_graph;       /* the encoder's and the decoder's node lists */
} dl_vae;

/* *bytes = what dl_vae_load(ck) will take from its weights arena (encoder + decoder): the
 * loader run against a measuring arena (every tensor it places checked against ck and counted,
 * nothing read). DL_ERR with the error dl_vae_load would give. */
int dl_vae_weights_bytes(dl_checkpoint *ck, size_t *bytes);
/* Load encoder and decoder from ck (exactly dl_vae_weights_bytes of weights). DL_ERR names a
 * missing or mis-shaped tensor (m then holds nothing to free). */
int dl_vae_load(dl_vae *m, dl_checkpoint *ck, dl_arena *weights);
/* The same with every weight trainable (full training, danlu train-vae; tr NULL: dl_vae_load):
 * fp32 in the arena, gradients at the same offsets in tr->grads, each tensor reported to
 * tr->placed (model/module.h: dl_trainable). */
int dl_vae_load_trainable(dl_vae *m, dl_checkpoint *ck, dl_arena *weights, const dl_trainable *tr);
void dl_vae_free(dl_vae *m);
/* Scratch bytes for encoding or decoding N images of H x W pixels: both walks run against a
 * measuring arena on a VAE of this config loaded in listing mode. */
size_t dl_vae_scratch_bytes(const dl_vae_config *cfg, int N, int H, int W);
/* Every weight of a VAE of this config, in diffusers names and PyTorch shapes: the loader in
 * listing mode (dl_model_weights' VAE part). Stops with DL_ERR when fn does. */
int dl_vae_list_weights(const dl_vae_config *cfg, dl_weight_fn fn, void *user);
/* The encoder (input: image [N, H, W, in_channels]; output: moments [N, H/f, W/f, 2 latent],
 * after quant_conv) and the decoder (input: latent [N, h, w, latent]; output: image) as the
 * walkers of model/graph.h see them: inference, training forward/backward (full fine-tuning or
 * LoRA; dx of the input on request), size tables. */
dl_net dl_vae_encoder_net(const dl_vae *m);
dl_net dl_vae_decoder_net(const dl_vae *m);

/* img [N, H, W, 3] -> mean, logvar [N, H/f, W/f, latent] (f = 2^(n_blocks-1)); logvar is
 * clamped to [-30, 20] as diffusers does. Either output may be NULL. */
void dl_vae_encode(const dl_ctx *ctx, const dl_vae *m, int N, int H, int W, const float *img, float *mean,
                   float *logvar, dl_arena *scratch);
/* latent = mean + exp(0.5 logvar) * noise (all [n] elements); may alias mean. */
void dl_vae_sample(int64_t n, const float *mean, const float *logvar, const float *noise, float *latent);
/* z [N, h, w, latent] -> img [N, h*f, w*f, 3]. */
void dl_vae_decode(const dl_ctx *ctx, const dl_vae *m, int N, int h, int w, const float *z, float *img,
                   dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
