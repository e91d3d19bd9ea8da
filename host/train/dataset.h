/* dataset.h - the training images of a train_data_dir in sd-scripts' DreamBooth layout:
 * subfolders `N_name` whose images repeat N times per epoch, captions in same-stem files, each
 * image assigned an aspect-ratio bucket. Bad input follows sd-scripts where it is sound:
 *   - a subfolder whose name does not start with a repeat count (or with a count < 1): warned
 *     and ignored (sd-scripts: "ignore directory without repeats");
 *   - images directly in train_data_dir: sd-scripts ignores them; danlu uses them (1 repeat)
 *     when the directory has no `N_name` subfolder at all (a flat folder), else warns that
 *     they are ignored;
 *   - an unreadable or corrupt image: warned (naming the file and the decoder's reason) and
 *     skipped (sd-scripts would stop; a scraped dataset often holds one bad file);
 *   - a caption file that is not UTF-8, or is empty: an error naming the file (sd-scripts
 *     raises on both);
 *   - an image smaller than its bucket: upscaled, with a warning naming it when by more than
 *     10% (sd-scripts upscales silently); with bucket_no_upscale an image whose side is under
 *     bucket_reso_steps has no bucket: warned and skipped (sd-scripts would fail);
 *   - no usable image at all, a missing or unreadable train_data_dir: an error.
 * Images: .png .jpg .jpeg .webp .bmp in any letter case, not recursive below a subfolder,
 * decoded once while scanning (which is what finds corrupt files; pixels are not kept).
 * Captions: the first line of <stem><caption_extension> (default ".txt"; when the extension
 * is ".txt" or ".caption" and that file is missing the other one is read), stripped, a UTF-8
 * byte-order mark removed; without a caption file the folder's class tokens ("name" of
 * `N_name`) are the caption, as in sd-scripts. */
#ifndef DANLU_TRAIN_DATASET_H
#define DANLU_TRAIN_DATASET_H

#include "train/bucket.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_dataset_item {
    char *image_path;    /* train_data_dir/10_name/img.png */
    char *caption;       /* raw caption (before shuffle/dropout) */
    int subset;          /* index into dl_dataset.subsets */
    int num_repeats;
    int w, h;            /* original size in pixels */
    int bucket;          /* index into dl_dataset.buckets.used (sorted by w, then h) */
    dl_reso reso;        /* bucket resolution */
    dl_reso resized;     /* size before cropping to reso */
    int64_t file_size;   /* bytes, for cache keys */
    int64_t mtime_ns;    /* modification time, for cache keys */
} dl_dataset_item;

typedef struct dl_dataset_subset {
    char *dir;           /* the folder */
    int num_repeats;
    char *class_tokens;  /* "name" of N_name ("" for a flat folder) */
    int n_images;        /* usable images found */
} dl_dataset_subset;

typedef struct dl_dataset_cfg {
    const char *train_data_dir;
    const char *caption_extension;  /* NULL: ".txt" */
    dl_bucket_cfg bucket;
    FILE *warn;                     /* warnings are printed here as "warning: ..." (NULL: not printed) */
} dl_dataset_cfg;

typedef struct dl_dataset {
    char *dir;
    int n_items;
    dl_dataset_item *items;         /* sorted by folder, then file name */
    int n_subsets;
    dl_dataset_subset *subsets;
    dl_bucket_mgr buckets;          /* buckets.used: the buckets in use, sorted */
    int64_t num_train_images;       /* sum of repeats (sd-scripts' num_train_images) */
    int n_skipped;                  /* images skipped with a warning */
    int n_warnings;
    char **warnings;                /* every warning issued, in order */
} dl_dataset;

/* Scan cfg->train_data_dir (see the file comment for the layout and the bad-input rules).
 * Returns DL_OK, or DL_ERR with a message naming the directory or file and the problem; on
 * error ds is left with nothing to release. */
int dl_dataset_scan(dl_dataset *ds, const dl_dataset_cfg *cfg);
void dl_dataset_free(dl_dataset *ds);

/* Image count (with repeats) per bucket into counts[ds->buckets.n_used]. */
void dl_dataset_bucket_counts(const dl_dataset *ds, int64_t *counts);
/* Print subsets and buckets as sd-scripts does at start ("bucket 0: resolution (512, 512),
 * count: 40"). */
void dl_dataset_print_summary(const dl_dataset *ds, FILE *f);

/* sd-scripts' ss_tag_frequency metadata: a JSON object {folder name: {tag: images}} counting, per
 * subset folder, the lower-cased (ASCII letters), stripped, non-empty comma-separated tags of
 * each image's raw caption once per image; formatted as Python's json.dumps (", " and ": "
 * separators, non-ASCII as \uXXXX escapes). malloc'd. */
char *dl_dataset_tag_frequency_json(const dl_dataset *ds);
/* sd-scripts' ss_dataset_dirs: {folder name: {"n_repeats": N, "img_count": M}}. malloc'd. */
char *dl_dataset_dirs_json(const dl_dataset *ds);

/* 1 if the bytes are valid UTF-8 (no overlong forms, surrogates or code points above
 * U+10FFFF); *bad_offset (if not NULL) gets the offset of the first invalid byte. */
int dl_utf8_valid(const uint8_t *s, size_t n, size_t *bad_offset);

#ifdef __cplusplus
}
#endif
#endif
