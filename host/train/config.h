/* config.h - the `danlu train` configuration: every sd-scripts option danlu understands, read
 * from a JSON file (--config FILE.json) and from command-line flags named as in sd-scripts
 * (flags override the file), checked, printed and serialised to JSON (ss_* metadata, states). */
#ifndef DANLU_TRAIN_CONFIG_H
#define DANLU_TRAIN_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A list of strings (network_args, optimizer_args), malloc'd. */
typedef struct dl_strlist {
    int n;
    char **v;
} dl_strlist;

typedef enum dl_save_precision {
    DL_SAVE_FP32 = 0,  /* "float", "fp32" (and sd-scripts' default None on the CPU) */
    DL_SAVE_FP16,      /* "fp16" */
    DL_SAVE_BF16,      /* "bf16" */
} dl_save_precision;

/* Names follow sd-scripts' train_network.py. Numbers that sd-scripts leaves as None when not
 * given are marked "unset": NaN for doubles, 0 for ints (0 means off for them). */
typedef struct dl_train_config {
    int finetune;                        /* the command: 0 `danlu train` (a LoRA), 1 `danlu finetune`
                                            (every UNet weight), DL_TRAIN_VAE `danlu train-vae` (every
                                            VAE weight); set by dl_train_config_defaults_for, not a
                                            key. Keys of the other commands are unknown. */
    /* model and data */
    char *pretrained_model_name_or_path; /* required: .safetensors file or diffusers folder */
    char *train_data_dir;                /* required: images + captions, N_name subfolders */
    char *output_dir;                    /* required */
    char *output_name;                   /* default "last" */
    char *resolution;                    /* "512" or "W,H" */
    int res_w, res_h;                    /* parsed resolution (pixels) */
    int v_parameterization;              /* v-prediction target */
    int clip_skip;                       /* 1 (last layer) .. 12 */
    /* network */
    char *network_module;                /* only "networks.lora" */
    int network_dim;                     /* rank, default 4 */
    double network_alpha;                /* default 1 */
    dl_strlist network_args;             /* "conv_dim=4", "conv_alpha=1", "preset=attn-mlp" */
    int conv_dim;                        /* from network_args; 0: no conv LoRA */
    double conv_alpha;                   /* from network_args; default 1 when conv_dim set */
    char *preset;                        /* from network_args; default "default" */
    int network_train_unet_only;
    int network_train_text_encoder_only;
    char *network_weights;               /* start from this LoRA file (or NULL) */
    char *lora_format;                   /* output layout: "kohya" (default) or "peft" */
    /* full fine-tuning (danlu finetune) */
    char *save_model_as;                 /* "safetensors" (single file, default) or "diffusers" (a folder) */
    int train_text_encoder;              /* also train the text encoder (not implemented: refused) */
    double kl_weight;                    /* train-vae: weight of the KL term (default 1e-6) */
    /* optimisation */
    int train_batch_size;                /* default 1 */
    int max_train_steps;                 /* default 1600 */
    int max_train_epochs;                /* 0 unset; when set it decides the number of steps */
    double learning_rate;                /* default 2e-6 (sd-scripts) */
    double unet_lr;                      /* unset: learning_rate */
    double text_encoder_lr;              /* unset: learning_rate */
    double text_encoder_lr2;             /* a second text_encoder_lr value (sd-scripts' nargs="*"),
                                            unset (NaN) unless given; networks.lora does not use it */
    char *lr_scheduler;                  /* default "constant" */
    int lr_warmup_steps;
    int lr_scheduler_num_cycles;         /* default 1 */
    double lr_scheduler_power;           /* default 1 */
    char *optimizer_type;                /* "AdamW" (default); nothing else */
    dl_strlist optimizer_args;           /* "weight_decay=0.01", "betas=0.9,0.999", "eps=1e-8" */
    double adam_beta1, adam_beta2, adam_eps, weight_decay; /* from optimizer_args */
    double max_grad_norm;                /* default 1.0; 0 disables clipping */
    int gradient_accumulation_steps;     /* default 1 */
    int gradient_checkpointing;
    char *mixed_precision;               /* "no" (fp32 on the CPU) */
    long long seed;                      /* -1 unset: the trainer picks one and prints it */
    double noise_offset;                 /* unset (NaN) or >= 0 */
    double min_snr_gamma;                /* unset (NaN) or > 0 */
    /* saving and sampling */
    int save_every_n_steps, save_every_n_epochs, save_last_n_steps, save_last_n_epochs;
    char *save_precision;                /* "float"/"fp32" (default), "fp16", "bf16" */
    dl_save_precision save_dtype;        /* parsed */
    int save_state;
    char *resume;                        /* state file to continue from (or NULL) */
    int sample_every_n_steps, sample_every_n_epochs;
    char *sample_prompts;
    char *sample_sampler;                /* default "ddim" */
    char *training_comment;
    /* dataset */
    int keep_tokens;
    int shuffle_caption;
    char *caption_extension;             /* default ".txt" (".caption" also read) */
    double caption_dropout_rate;
    int caption_dropout_every_n_epochs;
    double caption_tag_dropout_rate;
    int cache_latents, cache_latents_to_disk;
    int cache_text_encoder_outputs;      /* sd-scripts' flag: an error when the text encoder trains or
                                            captions change between epochs */
    int cache_text_encoder_outputs_to_disk; /* implies cache_text_encoder_outputs */
    int enable_bucket;
    int min_bucket_reso, max_bucket_reso, bucket_reso_steps;
    int bucket_no_upscale;
    int flip_aug, random_crop;
    int threads;                         /* danlu: CPU threads (0: DANLU_THREADS or all cores) */
    char *backend;                       /* danlu: op backend, "cpu" (default; backend/backend.h) */
    int no_hash_cache;                   /* danlu: 1 = never read or write the hash cache */
    int verbose;                         /* danlu: phase times at the end */
    char *tokenizer;                     /* danlu: tokenizer folder / CLIP bpe file when the model
                                            has no tokenizer/ (a single .safetensors file) */
} dl_train_config;

/* The table of keys that the JSON reader, the flag parser, the printer and `danlu train --help`
 * all walk. */
typedef enum dl_train_key_kind {
    DL_TKEY_STR, DL_TKEY_INT, DL_TKEY_I64, DL_TKEY_DBL, DL_TKEY_BOOL, DL_TKEY_LIST
} dl_train_key_kind;

typedef struct dl_train_key {
    const char *name;       /* the JSON key; the flag is --name */
    dl_train_key_kind kind;
    size_t off;             /* field in dl_train_config */
    const char *def;        /* default as text; NULL: unset (NULL string, NaN double, 0 int) */
    double lo, hi;          /* numeric range (inclusive) */
    int optional;           /* a number that may be unset (null in JSON, "none" on the command line) */
    int required;           /* must be given */
    int group;              /* help heading: dl_train_config_group_name(group) */
    int only;               /* 0: every command; else the commands it belongs to, or'd: DL_TKEY_LORA
                               `danlu train`, DL_TKEY_FT `danlu finetune`, DL_TKEY_VAE `danlu train-vae` */
    const char *meta;       /* value placeholder in the help ("N", "PATH"); NULL for booleans */
    const char *values;     /* accepted values, '|'-separated (lists: the accepted KEY of KEY=VALUE);
                               NULL: any */
    const char *help;       /* one-line meaning */
} dl_train_key;

enum { DL_TKEY_LORA = 1, DL_TKEY_FT = 2, DL_TKEY_VAE = 4 };
#define DL_TRAIN_VAE 2 /* dl_train_config.finetune of `danlu train-vae` */
/* 1 when key k is an option of the command (finetune 0: train, 1: finetune, DL_TRAIN_VAE:
 * train-vae; keys of every command that mean nothing to the VAE are not its options). */
int dl_train_key_applies(const dl_train_key *k, int finetune);

int dl_train_config_n_keys(void);
const dl_train_key *dl_train_config_key(int i);
/* --config / --config_file: command-line flags that name the JSON file (not keys). */
int dl_train_config_n_file_flags(void);
const dl_train_key *dl_train_config_file_flag(int i);
/* sd-scripts flags accepted with a warning and ignored (no '--'). */
int dl_train_config_n_ignored(void);
const char *dl_train_config_ignored(int i);
/* Help headings, in the order the help prints them. */
int dl_train_config_n_groups(void);
const char *dl_train_config_group_name(int g);

/* Fill every field with sd-scripts' default, for `danlu train`. */
void dl_train_config_defaults(dl_train_config *c);
/* The same for a command: finetune 0 `danlu train`, 1 `danlu finetune`, DL_TRAIN_VAE `danlu
 * train-vae` (c->finetune set). */
void dl_train_config_defaults_for(dl_train_config *c, int finetune);
void dl_train_config_free(dl_train_config *c);

/* Apply the keys of a JSON object file. ".toml" files are refused with a message saying that
 * only JSON is read. DL_ERR names the file and the key (unknown key, wrong type, out of range). */
int dl_train_config_load_json(dl_train_config *c, const char *path);
/* 1 when a configuration's JSON text (dl_train_config_to_json) is `danlu finetune`'s: it holds a
 * key of that command only. */
int dl_train_config_json_is_finetune(const char *text);
/* Apply a JSON text (label names it in messages). */
int dl_train_config_apply_json_text(dl_train_config *c, const char *text, const char *label);
/* Set one key from its text form (as on the command line). Booleans accept
 * true/false/1/0/yes/no; lists take the value as a single element appended. DL_ERR names it. */
int dl_train_config_set(dl_train_config *c, const char *key, const char *value);

/* Parse argv (argv[0] is the command name, skipped): --config/--config_file FILE first (applied
 * before any flag, wherever it appears), then --name value, --name=value, boolean --flag, list
 * flags (--network_args a b c) taking every following argument that does not start with "--".
 * Dashes in names are read as underscores. Ignored sd-scripts flags that do not apply here
 * (xformers, sdpa, ...) print a warning to warn (if not NULL). Then dl_train_config_finish. */
int dl_train_config_parse_args(dl_train_config *c, int argc, char **argv, FILE *warn);

/* Cross-field checks and derived fields (res_w/res_h, conv_dim/conv_alpha/preset from
 * network_args, Adam hyper-parameters from optimizer_args, save_dtype): required keys present,
 * min_bucket_reso <= max_bucket_reso, known scheduler / optimizer / precision names.
 * DL_ERR names the key. */
int dl_train_config_finish(dl_train_config *c);

/* The effective configuration as a JSON object text (malloc'd; every key of the command, unset
 * as null). */
char *dl_train_config_to_json(const dl_train_config *c);
/* Print "key: value" lines of the effective configuration. */
void dl_train_config_print(const dl_train_config *c, FILE *f);

/* Checks between options that a run makes (sd-scripts asserts them when training starts, so a
 * flag alone still parses): cache_text_encoder_outputs with a text encoder that trains or with
 * captions that change between epochs. DL_ERR names both options. */
int dl_train_config_check_run(const dl_train_config *c);

/* The learning rates actually used per group (unset -> learning_rate). */
double dl_train_config_unet_lr(const dl_train_config *c);
double dl_train_config_te_lr(const dl_train_config *c);

#ifdef __cplusplus
}
#endif
#endif
