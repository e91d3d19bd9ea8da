/* sample_args.h - the options `danlu sample` and `danlu grid` share (model, prompt, sampler,
 * size, seeds, LoRAs, output), their parsing and validation, LoRA name resolution, and the
 * writing of A1111-tagged PNGs. */
#ifndef DANLU_CLI_SAMPLE_ARGS_H
#define DANLU_CLI_SAMPLE_ARGS_H

#include "cli/opts.h"
#include "io/hash_cache.h"
#include "io/image.h"
#include "sample/pipeline.h"

#include <stdint.h>
#include <stdio.h>

#define DL_SA_MAX_LORAS 32

/* A LoRA to merge: resolved path, display name (file stem), weights. */
typedef struct dl_sa_lora {
    char *path;
    char *name;
    float te_w, unet_w;
} dl_sa_lora;

typedef struct dl_sample_args {
    const char *cmd;                 /* "sample" / "grid", for messages */
    const char *model, *tokenizer, *prompt, *negative, *out_dir, *init_image, *lora_dir;
    const char *sampler_name, *schedule;
    const char *backend;             /* --backend */
    int width, height;               /* 0: not given */
    const char *original_size, *crop, *target_size; /* SDXL size conditioning: WxH, TOP,LEFT, WxH; NULL: default */
    int steps, clip_skip, batch_size, batch_count, threads, overwrite, quiet, no_emphasis;
    int verbose, no_hash_cache;
    float cfg_scale, eta;
    double strength;
    int64_t seed;                    /* -1: random */
    dl_seed_mode seed_mode;
    dl_rng_source rng;               /* --rng torch-cpu (default) | nv */
    const char *lora_cli[DL_SA_MAX_LORAS];  /* --lora PATH[:WEIGHT] as given */
    int n_lora_cli;
    /* after dl_sa_finish */
    dl_gen_params gp;
    char *prompt_text;               /* the prompt without LoRA tags */
    dl_sa_lora loras[DL_SA_MAX_LORAS];
    int n_loras;
    dl_hash_cache hash_cache;        /* the user's hash cache, or disabled (--no-hash-cache) */
    dl_image init;                   /* loaded init image (data NULL when none) */
    float *init_f;                   /* [height, width, 3] in [-1, 1] */
} dl_sample_args;

void dl_sa_defaults(dl_sample_args *a, const char *cmd);
/* The table of the shared options (cli/opts.h), its values stored in a: what the commands'
 * parsers and their --help walk. */
dl_optset dl_sa_optset(dl_sample_args *a);
/* Try argv[*i] as a shared option. Returns 1 (consumed, *i advanced past its value), 0 (not
 * one of ours), or -1 (a bad value: message printed). */
int dl_sa_parse(dl_sample_args *a, int argc, char **argv, int *i);
/* Validate everything before any model is loaded: sampler and schedule names, size (multiples
 * of 8), steps, CFG, strength, LoRA tags and --lora files (resolved in --lora-dir; a missing
 * one is an error), the init image (read and resized). Prints the error and returns -1, else 0. */
int dl_sa_finish(dl_sample_args *a);
/* Resolve one LoRA name or path (name -> lora_dir/name.safetensors). malloc'd path or NULL with
 * a message. */
char *dl_sa_resolve_lora(const dl_sample_args *a, const char *name);
void dl_sa_free(dl_sample_args *a);

/* Open the model and merge the LoRAs of a (plus extra ones, may be NULL/0). Prints errors. */
int dl_sa_open_model(dl_sample_args *a, const dl_ctx *ctx, dl_sd **sd, int merge_loras);
/* Merge LoRAs into sd. Prints errors. */
int dl_sa_merge(dl_sample_args *a, dl_sd *sd, const dl_sa_lora *l, int n);

/* A1111 parameters text for image seed (malloc'd) with the given LoRAs, prompt and CFG. */
char *dl_sa_infotext(const dl_sample_args *a, const char *prompt, float cfg, uint64_t seed, const dl_sa_lora *l,
                     int n_l, const char *model_hash);

/* The next free file index in dir: 1 + the largest NNNNN of "NNNNN-*.png" there (1 with
 * overwrite). */
int dl_sa_next_index(const char *dir, int overwrite);
/* mkdir -p dir. Prints errors. */
int dl_sa_mkdir(const char *dir);

#endif
