/* batcher.h - the epoch order of training samples as sd-scripts builds it: every image
 * appears num_repeats times in its bucket; each bucket is cut into batches of batch_size
 * (the last one may be smaller); the list of batches and each bucket's contents are shuffled
 * per epoch; so each batch holds images of one bucket. The shuffle of epoch e is a pure
 * function of (seed, e), and the per-sample augmentation draws (caption shuffle/dropout,
 * flip, random crop) come from one dl_rng carried in the state: the state (epoch, position,
 * RNG) is a few integers, saved with a training state so a resumed run sees exactly the
 * batches and augmentations an uninterrupted one would have. */
#ifndef DANLU_TRAIN_BATCHER_H
#define DANLU_TRAIN_BATCHER_H

#include "core/rng.h"
#include "train/caption.h"
#include "train/dataset.h"
#include "train/latent_cache.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Per-sample augmentation settings. */
typedef struct dl_augment_cfg {
    dl_caption_cfg caption;
    int flip_aug;        /* mirror each sample with probability 1/2 */
    int random_crop;     /* random instead of centre crop offsets */
} dl_augment_cfg;

/* One batch, drawn from one bucket. Arrays have batch_size entries, n of them used. */
typedef struct dl_batch {
    int n;
    int bucket;          /* index into ds->buckets.used */
    dl_reso reso;        /* the bucket's pixel size */
    int *items;          /* [n] indices into ds->items */
    int *flip;           /* [n] 1: mirror left-right */
    int *crop_x, *crop_y;/* [n] crop offsets into the resized image */
    char **captions;     /* [n] processed captions (slices of caption_text, owned by the batch) */
    char *caption_text;  /* [batch_size, caption_slot] caption storage, sized on the first batch
                          * for the dataset's longest caption: later batches allocate nothing */
    size_t caption_slot; /* bytes per caption */
    dl_caption_work caption_work;
} dl_batch;

/* The serialisable position. */
typedef struct dl_batcher_state {
    int64_t epoch;       /* 0-based */
    int64_t pos;         /* batches of this epoch already returned */
    dl_rng rng;          /* augmentation draws */
    uint64_t fingerprint;/* dataset + batch size + seed: refuses a state from another dataset */
} dl_batcher_state;

/* Words of a packed state (for an I64/U64 tensor in a state file). */
#define DL_BATCHER_STATE_WORDS 7

typedef struct dl_batcher {
    const dl_dataset *ds;
    int batch_size;
    uint64_t seed;
    int n_buckets;
    int *bucket_len;      /* [n_buckets] entries (with repeats) */
    int **bucket_items;   /* [n_buckets][bucket_len] item indices, this epoch's order */
    int n_batches;        /* batches per epoch */
    int *batch_bucket;    /* [n_batches] this epoch's order: bucket of batch i */
    int *batch_start;     /* [n_batches] offset of batch i in its bucket */
    size_t max_caption;   /* bytes of the dataset's longest caption (sizes the batch's buffers) */
    dl_batcher_state st;
} dl_batcher;

/* Build the order for ds (which must outlive b), at epoch 0, position 0, the augmentation RNG
 * seeded from seed. batch_size >= 1. */
void dl_batcher_init(dl_batcher *b, const dl_dataset *ds, int batch_size, uint64_t seed);
void dl_batcher_free(dl_batcher *b);

/* Batches per epoch (sum over buckets of ceil(len / batch_size)). */
int dl_batcher_batches_per_epoch(const dl_batcher *b);

/* The next batch: when the epoch is exhausted the next epoch starts (reshuffled) first. Draws
 * the batch's augmentations from the state's RNG, in sample order: caption (dl_caption_process),
 * then flip (one draw when flip_aug), then crop offsets (when random_crop). out must be
 * initialised with dl_batch_init(out, batch_size) and is overwritten. Allocates only on the first
 * call for a batch (its caption buffers, for the longest caption of the dataset). */
void dl_batcher_next(dl_batcher *b, const dl_augment_cfg *aug, dl_batch *out);

/* Current state / restore one. DL_ERR when the state is from another dataset, batch size or
 * seed, or out of range. */
void dl_batcher_get_state(const dl_batcher *b, dl_batcher_state *s);
int dl_batcher_set_state(dl_batcher *b, const dl_batcher_state *s);
void dl_batcher_state_pack(const dl_batcher_state *s, uint64_t w[DL_BATCHER_STATE_WORDS]);
void dl_batcher_state_unpack(dl_batcher_state *s, const uint64_t w[DL_BATCHER_STATE_WORDS]);

/* The batch's pixels: each image loaded, resized, cropped at the batch's offsets and flipped as
 * drawn, into out [bt->n, reso.h, reso.w, 3] in [-1, 1]. DL_ERR names an image that can no
 * longer be read (changed on disk since the scan). */
int dl_batch_images(dl_pool *pool, const dl_dataset *ds, const dl_batch *bt, float *out);
/* The batch's latents from the cache (flipped ones where drawn) into out
 * [bt->n, reso.h/f, reso.w/f, C]. */
void dl_batch_latents(const dl_latent_cache *c, const dl_dataset *ds, const dl_batch *bt, float *out);

void dl_batch_init(dl_batch *bt, int batch_size);
void dl_batch_free(dl_batch *bt);

#ifdef __cplusplus
}
#endif
#endif
