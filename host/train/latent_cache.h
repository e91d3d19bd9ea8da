/* latent_cache.h - VAE latents of the training images computed once (cache_latents), kept in
 * memory and optionally on disk (cache_latents_to_disk) as one .safetensors per image in a
 * cache directory. A disk entry is reused only when its key matches: the image file (path,
 * size, modification time), its size, bucket, resize and crop, the latent shape and the VAE
 * (a fingerprint of its encoder weights); otherwise it is recomputed and replaced (written
 * atomically). With flip_aug the mirrored image is encoded too (latents_flipped), as sd-scripts
 * does; random_crop cannot be cached (an error, as sd-scripts asserts). */
#ifndef DANLU_TRAIN_LATENT_CACHE_H
#define DANLU_TRAIN_LATENT_CACHE_H

#include "core/threadpool.h"
#include "model/vae.h"
#include "train/dataset.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Encode one prepared image img [H, W, 3] in [-1, 1] into latent [H/f, W/f, C] (whatever the
 * trainer trains on: typically sampled and multiplied by scaling_factor; seed any noise from
 * item so results do not depend on which entries were cache hits). Returns DL_OK or DL_ERR. */
typedef int (*dl_latent_encode_fn)(void *user, int item, int H, int W, const float *img, float *latent);

typedef struct dl_latent_cache_cfg {
    const char *disk_dir;     /* NULL: memory only; else created if missing */
    int flip_aug;             /* also cache the latents of the mirrored image */
    int random_crop;          /* must be 0 (DL_ERR otherwise) */
    int latent_channels;      /* C (4 for SD) */
    int downscale;            /* f (8 for SD) */
    uint64_t vae_fingerprint; /* dl_vae_fingerprint(vae), or any value naming the encoder */
    dl_pool *pool;            /* for image resizing; may be NULL */
    FILE *log;                /* progress / warnings (NULL: silent) */
} dl_latent_cache_cfg;

typedef struct dl_latent_cache {
    int n_items, C, f, has_flipped;
    float **lat;              /* [n_items] -> [reso.h/f, reso.w/f, C] */
    float **lat_flipped;      /* [n_items] or NULL without flip_aug */
    int hits;                 /* disk entries reused */
    int misses;               /* entries computed (no disk entry, or memory only) */
    int invalidated;          /* disk entries present but stale or unreadable, recomputed */
} dl_latent_cache;

/* A fingerprint of the VAE encoder: its configuration and the weights of conv_in, conv_out,
 * quant_conv and the mid-block attention (a changed encoder changes these). */
uint64_t dl_vae_fingerprint(const dl_ctx *ctx, const dl_vae *m); /* ctx: where m's weights are (NULL: host) */

/* The cache key of item i under cfg (see the file comment). */
uint64_t dl_latent_cache_key(const dl_dataset_item *it, const dl_latent_cache_cfg *cfg);

/* The disk path of item's entry (malloc'd): disk_dir/<image stem>_<hash of the image path>.safetensors. */
char *dl_latent_cache_path(const dl_latent_cache_cfg *cfg, const dl_dataset_item *it);

/* Fill the cache for every item of ds: reuse valid disk entries, encode the rest (image loaded,
 * resized and centre-cropped to its bucket, as the trainer would) and save them. DL_ERR (with
 * a message naming the file) when random_crop is set, an image cannot be read, encoding fails
 * or the cache directory cannot be written; c is then left with nothing to release. */
int dl_latent_cache_build(dl_latent_cache *c, const dl_dataset *ds, const dl_latent_cache_cfg *cfg,
                          dl_latent_encode_fn encode, void *user);
/* Latents of item ([reso.h/f, reso.w/f, C]); flip selects the mirrored image's (requires
 * flip_aug at build time). */
const float *dl_latent_cache_get(const dl_latent_cache *c, int item, int flip);
void dl_latent_cache_free(dl_latent_cache *c);

#ifdef __cplusplus
}
#endif
#endif
