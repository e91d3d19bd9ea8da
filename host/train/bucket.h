/* bucket.h - aspect-ratio bucketing as sd-scripts' BucketManager does it: the bucket
 * resolutions of make_bucket_resolutions, the choice of a bucket (and of the size an image is
 * resized to before cropping) per image, the no-upscale mode, and enable_bucket off (one
 * bucket: the training resolution). */
#ifndef DANLU_TRAIN_BUCKET_H
#define DANLU_TRAIN_BUCKET_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_reso { int w, h; } dl_reso;

typedef struct dl_bucket_cfg {
    int enable;          /* enable_bucket; 0: every image is resized/cropped to res_w x res_h */
    int res_w, res_h;    /* resolution (target area res_w * res_h), multiples of 8 */
    int min_reso;        /* min_bucket_reso (default 256) */
    int max_reso;        /* max_bucket_reso (default 1024) */
    int steps;           /* bucket_reso_steps (default 64), a multiple of 8 */
    int no_upscale;      /* bucket_no_upscale: buckets from each image's own size, never upscaled */
} dl_bucket_cfg;

/* sd-scripts' defaults for a training resolution: buckets on, 256..1024 step 64, upscaling. */
void dl_bucket_cfg_default(dl_bucket_cfg *c, int res_w, int res_h);
/* Range checks as sd-scripts asserts them (min_reso <= min(res), max_reso >= max(res), steps a
 * positive multiple of 8, resolution a positive multiple of 8). DL_ERR names the option. */
int dl_bucket_cfg_check(const dl_bucket_cfg *c);

/* sd-scripts' make_bucket_resolutions(max_reso=(max_w, max_h), min_size, max_size, divisible):
 * the square of the target area rounded down to `divisible`, then for every width from
 * min_size to max_size in steps of `divisible` the height max_area / width rounded down
 * (capped at max_size, kept when >= min_size) and its transpose; sorted by (w, h), unique.
 * Writes at most cap entries to out and returns the total count. */
int dl_bucket_resolutions(int max_w, int max_h, int min_size, int max_size, int divisible, dl_reso *out, int cap);

/* The bucket manager: predefined resolutions and the list of buckets actually used. */
typedef struct dl_bucket_mgr {
    dl_bucket_cfg cfg;
    int n_predef;
    dl_reso *predef;     /* [n_predef] sorted; none in no-upscale mode */
    double *predef_ar;   /* [n_predef] w / h */
    int n_used, cap_used;
    dl_reso *used;       /* [n_used] buckets in order of first use */
} dl_bucket_mgr;

/* Build the predefined resolutions of c (checked with dl_bucket_cfg_check). DL_ERR on a bad
 * configuration. */
int dl_bucket_mgr_init(dl_bucket_mgr *m, const dl_bucket_cfg *c);
void dl_bucket_mgr_free(dl_bucket_mgr *m);

/* sd-scripts' BucketManager.select_bucket for an image of img_w x img_h pixels:
 * - upscaling mode: the predefined resolution equal to the image size, else the one with the
 *   closest aspect ratio (first on ties); the image is scaled uniformly so that it covers the
 *   bucket (resized = round(size * scale)), then cropped to it;
 * - no-upscale mode: images above the target area are scaled down to it (the side rounded to
 *   `steps` whose aspect ratio error is smaller), others keep their size; the bucket is the
 *   resized size rounded down to `steps`.
 * Sets *bucket, *resized (the size before cropping, each side >= the bucket's) and returns the
 * bucket's index in m->used (adding it when new), or -1 when the bucket would be empty (a side
 * below `steps` in no-upscale mode): the caller skips that image with a warning. */
int dl_bucket_select(dl_bucket_mgr *m, int img_w, int img_h, dl_reso *bucket, dl_reso *resized);

#ifdef __cplusplus
}
#endif
#endif
