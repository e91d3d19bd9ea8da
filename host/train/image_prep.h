/* image_prep.h - a training image into its bucket, as sd-scripts' trim_and_resize_if_required
 * does it: resize keeping the aspect ratio so the image covers the bucket, crop (center or
 * random) to the bucket, optional horizontal flip, then to float [-1, 1] channels-last.
 *
 * Resampling: area averaging (cv2.INTER_AREA) along an axis that shrinks, bilinear with
 * half-pixel centres (cv2.INTER_LINEAR) along an axis that grows; the result is rounded to
 * 8 bits before normalising, as sd-scripts works on uint8 images. (Recent sd-scripts uses PIL
 * Lanczos when upscaling; bilinear is our choice: upscaled training images are rare and
 * soft either way.) */
#ifndef DANLU_TRAIN_IMAGE_PREP_H
#define DANLU_TRAIN_IMAGE_PREP_H

#include "core/rng.h"
#include "core/threadpool.h"
#include "io/image.h"
#include "train/bucket.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Crop offsets of a resized image into its bucket (resized.w >= bucket.w, resized.h >= bucket.h):
 * centre ((resized - bucket) / 2, floor) or, with random_crop, uniform in [0, resized - bucket]
 * inclusive, the x offset drawn before the y offset (sd-scripts' order). rng may be NULL
 * unless random_crop. */
void dl_prep_crop_offsets(dl_reso resized, dl_reso bucket, int random_crop, dl_rng *rng, int *x0, int *y0);

/* Working memory of the resampling (taps, per-thread rows, the 8-bit crop), grow-only: once it
 * has served the largest case, preparing allocates nothing. Zero-initialise; one per thread
 * calling dl_image_prep_w (the pool's tasks take their rows from it by thread index). */
typedef struct dl_prep_work {
    void *mem;
    size_t cap;
} dl_prep_work;
void dl_prep_work_free(dl_prep_work *w);

/* Resize src ([h, w, 3] RGB8) to resized, then cut the out.w x out.h window at (x0, y0) into dst
 * ([out.h, out.w, 3] RGB8). Only the window is computed. pool may be NULL (serial). */
void dl_image_resize_crop_u8(dl_pool *pool, const dl_image *src, dl_reso resized, int x0, int y0, dl_reso out,
                             uint8_t *dst);

/* The whole preparation: resize to resized, crop the bucket at (x0, y0), mirror left-right when
 * flip, and write out = pixel / 127.5 - 1 as [bucket.h, bucket.w, 3] floats. */
void dl_image_prep(dl_pool *pool, const dl_image *src, dl_reso resized, dl_reso bucket, int x0, int y0, int flip,
                   float *out);

/* dl_image_prep with its working memory from w (grown when too small; NULL: allocated and
 * freed inside, as dl_image_prep). Identical output. */
void dl_image_prep_w(dl_pool *pool, dl_prep_work *w, const dl_image *src, dl_reso resized, dl_reso bucket, int x0,
                     int y0, int flip, float *out);

#ifdef __cplusplus
}
#endif
#endif
