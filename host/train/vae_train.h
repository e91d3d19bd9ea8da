/* vae_train.h - the VAE's training pass (danlu train-vae): encode, sample the diagonal Gaussian
 * posterior with a given noise, decode, and back again, every weight of encoder and decoder
 * (conv, group norm, mid attention, quant_conv / post_quant_conv) getting its gradient.
 *
 *   moments = quant_conv(encoder(x))            [N, h, w, 2L]: mean, logvar
 *   logvar  = clamp(logvar, -30, 20)            (diffusers' DiagonalGaussianDistribution)
 *   z       = mean + exp(logvar / 2) * eps      eps given, [N, h, w, L]
 *   rec     = decoder(post_quant_conv(z))       [N, H, W, 3]
 *   loss    = mean((rec - x)^2)                                (over every pixel and channel)
 *           + kl_weight * (1/N) sum_n 0.5 sum_{h,w,c} (mean^2 + exp(logvar) - 1 - logvar)
 *
 * The KL term is diffusers' DiagonalGaussianDistribution.kl() (a sum over each sample's latent)
 * averaged over the batch, as the CompVis autoencoder's loss reduces it; the reconstruction term
 * is F.mse_loss's mean. Both networks walk their node lists with the shared walkers (model/graph.h):
 * the encoder's and the decoder's tapes live in one act arena, gradient checkpointing is the
 * walkers'. The posterior's few element-wise ops run on the host (on a device backend the moments
 * come down and z goes up, as dl_vae_encode does). */
#ifndef DANLU_TRAIN_VAE_TRAIN_H
#define DANLU_TRAIN_VAE_TRAIN_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/vae.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The buffers of one micro-step, sized once for the largest batch (N images of at most HW
 * pixels): backend memory (the host arrays themselves on the CPU) and the host side of the
 * posterior. */
typedef struct dl_vae_train_bufs {
    int dev;                       /* 1: a device backend (host and backend arrays differ) */
    float *moments, *dmoments;     /* [N, h, w, 2L] backend */
    float *z, *dz;                 /* [N, h, w, L] backend */
    float *rec, *drec;             /* [N, H, W, out_channels] backend */
    float *scal;                   /* [1] backend: the reconstruction loss */
    float *h_moments, *h_z, *h_dz, *h_dmoments; /* host copies (aliases on the CPU) */
    dl_tape *enc_tape, *dec_tape;  /* the two forwards' records */
} dl_vae_train_bufs;

typedef struct dl_vae_losses {
    double total;                  /* rec + kl_weight * kl */
    double rec;                    /* mean squared error per pixel and channel */
    double kl;                     /* KL per sample (summed over the latent), batch mean */
} dl_vae_losses;

/* Allocate b for up to N images of HW pixels (H*W) of m's config on ctx's backend. DL_ERR
 * (message) when out of memory; b then holds nothing to free. */
int dl_vae_train_bufs_init(const dl_ctx *ctx, const dl_vae *m, dl_vae_train_bufs *b, int N, int64_t HW);
void dl_vae_train_bufs_free(const dl_ctx *ctx, dl_vae_train_bufs *b);

/* Bytes of the act arena (both tapes) and of scratch (the larger of every walk) for a training
 * micro-step on N images of H x W, with the weights that now train in m; checkpoint as the
 * walkers'. Measured by running the walkers under the measuring backend. */
void dl_vae_train_sizes(const dl_vae *m, int N, int H, int W, int checkpoint, size_t *act, size_t *scratch);

/* One micro-step: forward, loss, backward; parameter gradients ADDED (+=) into the layers' dw /
 * dgamma... (every layer loaded with dl_vae_load_trainable), scaled by dloss (1 / accumulation
 * steps). img [N, H, W, 3] in [-1, 1] (backend memory), eps [N, h, w, L] host, NHWC. act and
 * scratch are left as found. Losses into *out (read back from the backend). DL_ERR only for a
 * device error. */
int dl_vae_train_micro(const dl_ctx *ctx, const dl_vae *m, dl_vae_train_bufs *b, int N, int H, int W,
                       const float *img, const float *eps, double kl_weight, float dloss, int checkpoint,
                       dl_arena *act, dl_arena *scratch, dl_vae_losses *out);

#ifdef __cplusplus
}
#endif
#endif
