/* provenance.h - the provenance record a trained LoRA carries (metadata key "danlu_provenance",
 * docs/provenance.md): SHA-256 of every training image's file bytes, of its decoded pixels and
 * of its caption, the base model's file hashes, the seed, the steps, danlu's version and the
 * code path (backend, CPU ISA, threads); the resolved configuration stays in "danlu.config",
 * which the record pins by its hash. Only digests and relative paths: nothing in it rebuilds an
 * image or a caption.
 *
 * Three users: the trainer (dl_prov_writer: the dataset hashed once at setup, the record
 * printed at every save), `danlu verify FILE --dataset DIR` (dl_prov_scan + dl_prov_compare) and
 * `danlu verify FILE --reproduce` (dl_prov_reproduce). */
#ifndef DANLU_TRAIN_PROVENANCE_H
#define DANLU_TRAIN_PROVENANCE_H

#include "io/hash_cache.h"
#include "model/checkpoint.h"
#include "train/config.h"
#include "train/dataset.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_PROV_KEY "danlu_provenance"
#define DL_PROV_FORMAT 1
/* --reproduce on another code path: bound on the relative L2 of all tensors together (the
 * aggregate; single tensors are ill conditioned after AdamW, docs/testing.md). Measured 6e-4
 * between the AVX-512 and AVX2 paths on tests/test_train_diffusers.c's runs. */
#define DL_PROV_REPRO_BOUND 1e-2

/* One training image. */
typedef struct dl_prov_item {
    char *path;          /* relative to train_data_dir: "10_ring/a.png" (malloc'd) */
    char file[65];       /* SHA-256 of the file's bytes */
    char pixels[65];     /* SHA-256 of width, height (uint32 little-endian) and the RGB8 pixels */
    char caption[65];    /* SHA-256 of the caption as trained (dataset.h: first line, stripped) */
} dl_prov_item;

/* One file of the base model (a single file: one; a diffusers folder: one per part). */
typedef struct dl_prov_model_file {
    char *name;          /* "v1-5.safetensors" or "unet/diffusion_pytorch_model.safetensors" */
    char sha256[65];     /* "" when it could not be hashed */
} dl_prov_model_file;

/* A record as read back from a file. */
typedef struct dl_provenance {
    int format;
    char danlu[32];      /* danlu's version */
    char backend[16];    /* "cpu" */
    char isa[16];        /* "avx512", "avx2", "generic" */
    int threads;
    uint64_t seed;
    int steps, epoch;
    char config_sha256[65];
    int n_model;
    dl_prov_model_file *model;
    int n_items;
    dl_prov_item *items;
} dl_provenance;

void dl_prov_free(dl_provenance *p);
/* Parse a record's JSON text. DL_ERR (message) when it is not one. */
int dl_prov_parse(dl_provenance *p, const char *json);
/* Read FILE's record and (if config_json is not NULL) its danlu.config text (malloc'd). DL_ERR
 * naming the file when it is not a readable safetensors file, has no record ("not trained by
 * danlu, or by a danlu without provenance records"), or its danlu.config does not match the
 * record's hash. */
int dl_prov_read(dl_provenance *p, const char *path, char **config_json);

/* The digests of one image and its caption into it (path is not set): the file's bytes read
 * once, hashed, and decoded from memory. DL_ERR naming the file. */
int dl_prov_hash_image(dl_prov_item *it, const char *image_path, const char *caption);
/* Every item of ds hashed (on pool's threads; NULL: this thread), paths relative to ds->dir.
 * *items malloc'd (free with dl_prov_items_free). */
int dl_prov_hash_dataset(const dl_dataset *ds, struct dl_pool *pool, dl_prov_item **items);
void dl_prov_items_free(dl_prov_item *items, int n);

/* c = the defaults, then the configuration text of a record's danlu.config, checked
 * (dl_train_config_finish); label names the file in messages. Free c with dl_train_config_free. */
int dl_prov_load_config(dl_train_config *c, const char *config_json, const char *label);

/* Scan dir with the configuration c (caption extension, buckets), warnings to warn (may be
 * NULL): the trainer's own scan, so verify sees the images a run used. */
int dl_prov_scan(dl_dataset *ds, const char *dir, const dl_train_config *c, FILE *warn);

/* ---- the trainer's side ---- */
typedef struct dl_prov_writer {
    void *root;                  /* cJSON object of the record */
    int single_file;             /* the base model is one file: its hash comes from the trainer */
    int n_jobs;
    dl_hash_job jobs[DL_PART_COUNT]; /* a diffusers folder's part files, hashed on threads */
    char *job_name[DL_PART_COUNT];
    int jobs_waited;
} dl_prov_writer;

/* Hash the dataset (file bytes, pixels, captions) now, start hashing a diffusers folder's part
 * files on threads (a single file is hashed by the trainer: pass its hash to dl_prov_writer_json),
 * and fill the fields that do not change between saves. config_json is danlu.config's text. */
int dl_prov_writer_begin(dl_prov_writer *w, const dl_dataset *ds, const dl_checkpoint *ck, const dl_hash_cache *hc,
                         const char *config_json, uint64_t seed, int threads, const char *backend,
                         struct dl_pool *pool);
/* The record of a save at (step, epoch), malloc'd compact JSON; model_sha256 is the single
 * file's hash (NULL or "" when unknown or a folder). Waits for the part hashes the first time;
 * log (may be NULL) gets a warning for a part that could not be hashed. */
char *dl_prov_writer_json(dl_prov_writer *w, int step, int epoch, const char *model_sha256, FILE *log);
void dl_prov_writer_free(dl_prov_writer *w);

/* ---- danlu verify --dataset ---- */
typedef enum dl_prov_status {
    DL_PROV_IN = 0,         /* same file bytes as a recorded image, at the same path */
    DL_PROV_MOVED,          /* same file bytes as a recorded image at another path (moved, copied) */
    DL_PROV_REENCODED,      /* other bytes, same decoded pixels as a recorded image */
    DL_PROV_NOT_IN,         /* no recorded image has its bytes or pixels */
} dl_prov_status;

typedef struct dl_prov_match {
    const char *path;       /* the scanned image (relative to its DIR) */
    dl_prov_status status;
    int record;             /* the recorded item it matched (-1 for DL_PROV_NOT_IN) */
    int caption_changed;    /* matched, but the caption's hash differs */
} dl_prov_match;

typedef struct dl_prov_report {
    int n;                  /* scanned images */
    dl_prov_match *m;       /* [n] */
    int n_missing;
    int *missing;           /* [n_missing] recorded items no scanned image matched */
    int n_in, n_moved, n_reencoded, n_not_in, n_caption_changed;
    int exact;              /* every image DL_PROV_IN with its caption, nothing missing */
} dl_prov_report;

/* Match scanned items against the record, in four passes over all of them: file bytes at the
 * recorded path, file bytes at another path, pixels at the recorded path, pixels at another path
 * (an item not yet matched preferred, so that a copy of a training image is "at another path"
 * and the image itself, where it stood, "in"). Recorded items no scanned one matched are
 * missing. */
int dl_prov_compare(const dl_provenance *rec, const dl_prov_item *items, int n, dl_prov_report *rep);
void dl_prov_report_free(dl_prov_report *rep);
const char *dl_prov_status_text(dl_prov_status s);

/* ---- danlu verify --reproduce ---- */
typedef struct dl_prov_repro {
    int same_path;          /* backend, ISA and threads equal to the record's */
    char path_rec[64], path_now[64];
    int identical;          /* same tensors, every one bit-identical */
    int n_tensors, n_differ;
    double rel_l2;          /* ||new - old|| / ||old|| over all tensors together */
    double worst_rel;       /* the worst single tensor's relative L2 (informative) */
    char worst[256];
    int within_bound;       /* identical, or rel_l2 <= DL_PROV_REPRO_BOUND */
    char *retrained;        /* the retrained file (malloc'd; removed with the work folder) */
} dl_prov_repro;

typedef struct dl_prov_repro_opts {
    const char *dataset;    /* NULL: the record's train_data_dir */
    const char *model;      /* NULL: the record's pretrained_model_name_or_path */
    const char *work_dir;   /* where to retrain (kept); NULL: a temporary folder, removed */
    FILE *log;              /* progress and the checks (NULL: silent) */
} dl_prov_repro_opts;

/* Retrain FILE from its record and danlu.config (seed and threads from the record, no sample
 * images, no states) after checking that the dataset and the base model have the recorded
 * hashes (DL_ERR naming what differs), then compare the LoRA saved at the recorded step with
 * FILE tensor by tensor. DL_OK means the comparison ran (r says how it came out). */
int dl_prov_reproduce(const char *path, const dl_prov_repro_opts *o, dl_prov_repro *r);
void dl_prov_repro_free(dl_prov_repro *r);

/* Compare the tensors of two LoRA files (names, dtypes, shapes, bytes; relative L2 in double). */
int dl_prov_compare_tensors(const char *a, const char *b, dl_prov_repro *r);

#ifdef __cplusplus
}
#endif
#endif
