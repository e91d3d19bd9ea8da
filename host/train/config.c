/* config.c - the `danlu train` configuration: a table of sd-scripts keys with types, defaults
 * and ranges, applied from JSON (cJSON) and from command-line flags, checked and serialised. */
#include "train/config.h"
#include "backend/backend.h"

#include "core/error.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define K_STR DL_TKEY_STR
#define K_INT DL_TKEY_INT
#define K_I64 DL_TKEY_I64
#define K_DBL DL_TKEY_DBL
#define K_BOOL DL_TKEY_BOOL
#define K_LIST DL_TKEY_LIST

typedef dl_train_key key_def;

#define OFF(f) offsetof(dl_train_config, f)
#define BIG 1e300

enum { G_FILE, G_MODEL, G_DATA, G_BUCKET, G_NET, G_OPT, G_TRAIN, G_MEM, G_SAVE, G_SAMPLE, G_OTHER, G_COUNT };

static const char *const k_groups[G_COUNT] = {
    "configuration file", "model", "dataset and captions", "aspect-ratio buckets", "network",
    "optimizer and learning rate", "training", "precision, memory and speed", "saving and resuming",
    "sampling during training", "other",
};

/* KEY: an option; REQUIRED: one that must be given. Columns: name, kind, field, default text
 * (NULL: unset), range, may be unset (numbers), help group, value placeholder, accepted values
 * ('|'-separated; for lists the accepted KEY=), one-line meaning. The order is the order of the
 * JSON and of the printed configuration. */
#define KEY(name, kind, field, def, lo, hi, opt, grp, meta, values, help) \
    {name, kind, OFF(field), def, lo, hi, opt, 0, grp, 0, meta, values, help}
/* an option of some commands only (DL_TKEY_LORA: train, DL_TKEY_FT: finetune, DL_TKEY_VAE: train-vae; or'd) */
#define KEY_ONLY(only, name, kind, field, def, lo, hi, opt, grp, meta, values, help) \
    {name, kind, OFF(field), def, lo, hi, opt, 0, grp, only, meta, values, help}
#define REQUIRED(name, field, grp, meta, help) {name, K_STR, OFF(field), NULL, 0, 0, 0, 1, grp, 0, meta, NULL, help}

static const key_def k_keys[] = {
    REQUIRED("pretrained_model_name_or_path", pretrained_model_name_or_path, G_MODEL, "PATH",
             "base model: a single .safetensors checkpoint or a diffusers folder"),
    REQUIRED("train_data_dir", train_data_dir, G_DATA, "DIR",
             "training images and captions; a subfolder N_name repeats its images N times per epoch"),
    REQUIRED("output_dir", output_dir, G_SAVE, "DIR", "where the saved LoRA or model, states, log and samples go"),
    KEY("output_name", K_STR, output_name, "last", 0, 0, 0, G_SAVE, "NAME", NULL,
        "file name stem of everything written to output_dir"),
    KEY("resolution", K_STR, resolution, "512", 0, 0, 0, G_DATA, "S|W,H", NULL,
        "training size in pixels: S for SxS or W,H (multiples of 8); the bucket area with enable_bucket"),
    KEY("v_parameterization", K_BOOL, v_parameterization, "false", 0, 1, 0, G_MODEL, NULL, NULL,
        "train with the v-prediction target (SD 2.x 768-v models) instead of the noise"),
    KEY("clip_skip", K_INT, clip_skip, "1", 1, 12, 0, G_MODEL, "N", NULL,
        "use the text encoder's output N layers from the end (2: the penultimate layer)"),
    KEY_ONLY(DL_TKEY_LORA, "network_module", K_STR, network_module, "networks.lora", 0, 0, 0, G_NET, "NAME", "networks.lora",
        "network type"),
    KEY_ONLY(DL_TKEY_LORA, "network_dim", K_INT, network_dim, "4", 1, 4096, 0, G_NET, "N", NULL, "LoRA rank"),
    KEY_ONLY(DL_TKEY_LORA, "network_alpha", K_DBL, network_alpha, "1", 0, 1e6, 0, G_NET, "X", NULL,
        "the LoRA output is scaled by alpha / rank (0: alpha = rank)"),
    KEY_ONLY(DL_TKEY_LORA, "network_args", K_LIST, network_args, NULL, 0, 0, 0, G_NET, "KEY=VALUE...", "conv_dim|conv_alpha|preset",
        "conv_dim=N conv_alpha=X add LoRA to the 3x3 convolutions (LoCon); preset=default|attn-only|"
        "attn-mlp|full chooses the UNet layers"),
    KEY_ONLY(DL_TKEY_LORA, "network_train_unet_only", K_BOOL, network_train_unet_only, "false", 0, 1, 0, G_NET, NULL, NULL,
        "no text-encoder LoRA: train the UNet's only"),
    KEY_ONLY(DL_TKEY_LORA, "network_train_text_encoder_only", K_BOOL, network_train_text_encoder_only, "false", 0, 1, 0, G_NET, NULL,
        NULL, "no UNet LoRA: train the text encoder's only"),
    KEY_ONLY(DL_TKEY_LORA, "network_weights", K_STR, network_weights, NULL, 0, 0, 0, G_NET, "PATH", NULL,
        "start from the weights of this LoRA file"),
    KEY_ONLY(DL_TKEY_LORA, "lora_format", K_STR, lora_format, "kohya", 0, 0, 0, G_SAVE, "NAME", "kohya|peft",
        "tensor names of the saved LoRA: kohya (lora_unet_*, lora_te_*) or peft (diffusers)"),
    KEY_ONLY(DL_TKEY_FT | DL_TKEY_VAE, "save_model_as", K_STR, save_model_as, "safetensors", 0, 0, 0, G_SAVE, "NAME",
             "safetensors|diffusers",
             "layout of the saved model: safetensors (one file, the SD layout) or diffusers (a folder)"),
    KEY_ONLY(DL_TKEY_FT, "train_text_encoder", K_BOOL, train_text_encoder, "false", 0, 1, 0, G_NET, NULL, NULL,
             "train the text encoder's weights too (its learning rate: text_encoder_lr)"),
    KEY_ONLY(DL_TKEY_VAE, "kl_weight", K_DBL, kl_weight, "1e-6", 0, 1e6, 0, G_OPT, "X", NULL,
             "weight of the KL term (per-sample sum over the latent, batch mean) beside the per-pixel MSE"),
    KEY("train_batch_size", K_INT, train_batch_size, "1", 1, 4096, 0, G_TRAIN, "N", NULL,
        "images per micro-batch"),
    KEY("max_train_steps", K_INT, max_train_steps, "1600", 1, 1e9, 0, G_TRAIN, "N", NULL,
        "optimizer steps to train"),
    KEY("max_train_epochs", K_INT, max_train_epochs, NULL, 1, 1e7, 1, G_TRAIN, "N", NULL,
        "train for N epochs instead; when set it decides the number of steps"),
    KEY("learning_rate", K_DBL, learning_rate, "2e-6", 0, 10, 0, G_OPT, "X", NULL,
        "learning rate of every trained weight without a rate of its own"),
    KEY("unet_lr", K_DBL, unet_lr, NULL, 0, 10, 1, G_OPT, "X", NULL,
        "learning rate of what trains in the UNet instead of learning_rate"),
    KEY("text_encoder_lr", K_DBL, text_encoder_lr, NULL, 0, 10, 1, G_OPT, "X [X]", NULL,
        "learning rate of what trains in the text encoder(s) instead of learning_rate (a second value, "
        "as sd-scripts reads it for SDXL, is not used by networks.lora)"),
    KEY("lr_scheduler", K_STR, lr_scheduler, "constant", 0, 0, 0, G_OPT, "NAME",
        "constant|constant_with_warmup|linear|cosine|cosine_with_restarts|polynomial",
        "how the learning rate changes over the steps"),
    KEY("lr_warmup_steps", K_INT, lr_warmup_steps, "0", 0, 1e9, 0, G_OPT, "N", NULL,
        "steps of linear warm-up from 0 at the start"),
    KEY("lr_scheduler_num_cycles", K_INT, lr_scheduler_num_cycles, "1", 1, 1e6, 0, G_OPT, "N", NULL,
        "hard restarts of cosine_with_restarts"),
    KEY("lr_scheduler_power", K_DBL, lr_scheduler_power, "1", 1e-12, 1e3, 0, G_OPT, "X", NULL,
        "exponent of the polynomial schedule"),
    KEY("optimizer_type", K_STR, optimizer_type, "AdamW", 0, 0, 0, G_OPT, "NAME", "AdamW|torch.optim.AdamW",
        "optimizer (AdamW only)"),
    KEY("optimizer_args", K_LIST, optimizer_args, NULL, 0, 0, 0, G_OPT, "KEY=VALUE...", "weight_decay|betas|eps",
        "AdamW settings: weight_decay=0.01 betas=0.9,0.999 eps=1e-8 unless given"),
    KEY("max_grad_norm", K_DBL, max_grad_norm, "1.0", 0, 1e9, 0, G_OPT, "X", NULL,
        "clip the gradient norm to this (0: no clipping)"),
    KEY("gradient_accumulation_steps", K_INT, gradient_accumulation_steps, "1", 1, 1e6, 0, G_TRAIN, "N", NULL,
        "micro-batches whose gradients add up to one optimizer step"),
    KEY("gradient_checkpointing", K_BOOL, gradient_checkpointing, "false", 0, 1, 0, G_MEM, NULL, NULL,
        "recompute activations in the backward pass to save memory"),
    KEY("mixed_precision", K_STR, mixed_precision, "no", 0, 0, 0, G_MEM, "NAME", "no|fp32|bf16",
        "compute precision: fp32, or bf16 matrix products and convolutions with fp32 tensors "
        "(backends that have it: cuda); fp16 is to come"),
    KEY("seed", K_I64, seed, "-1", -1, 9007199254740992.0, 0, G_TRAIN, "N", NULL,
        "random seed of the whole run; -1: draw one and print it"),
    KEY("noise_offset", K_DBL, noise_offset, NULL, 0, 1, 1, G_TRAIN, "X", NULL,
        "add X times a per-channel constant to the noise (learns darker and brighter images)"),
    KEY("min_snr_gamma", K_DBL, min_snr_gamma, NULL, 1e-12, 1e6, 1, G_TRAIN, "X", NULL,
        "Min-SNR loss weighting with this gamma (5 is usual)"),
    KEY("save_every_n_steps", K_INT, save_every_n_steps, NULL, 1, 1e9, 1, G_SAVE, "N", NULL,
        "also save NAME-stepNNNNNNNN.safetensors every N steps"),
    KEY("save_every_n_epochs", K_INT, save_every_n_epochs, NULL, 1, 1e9, 1, G_SAVE, "N", NULL,
        "also save NAME-NNNNNN.safetensors every N epochs"),
    KEY("save_last_n_steps", K_INT, save_last_n_steps, NULL, 1, 1e9, 1, G_SAVE, "N", NULL,
        "remove step saves older than the last N steps"),
    KEY("save_last_n_epochs", K_INT, save_last_n_epochs, NULL, 1, 1e9, 1, G_SAVE, "N", NULL,
        "keep only the last N epoch saves"),
    KEY("save_precision", K_STR, save_precision, "float", 0, 0, 0, G_SAVE, "NAME", "float|fp32|fp16|bf16",
        "dtype of the saved weights"),
    KEY("save_state", K_BOOL, save_state, "false", 0, 1, 0, G_SAVE, NULL, NULL,
        "write a resumable NAME-...-state.safetensors beside each save"),
    KEY("resume", K_STR, resume, NULL, 0, 0, 0, G_SAVE, "PATH", NULL,
        "continue from this state file (same thread count: the same result)"),
    KEY("sample_every_n_steps", K_INT, sample_every_n_steps, NULL, 1, 1e9, 1, G_SAMPLE, "N", NULL,
        "render the sample prompts every N steps"),
    KEY("sample_every_n_epochs", K_INT, sample_every_n_epochs, NULL, 1, 1e9, 1, G_SAMPLE, "N", NULL,
        "render the sample prompts every N epochs"),
    KEY("sample_prompts", K_STR, sample_prompts, NULL, 0, 0, 0, G_SAMPLE, "PATH", NULL,
        "prompts file: one prompt a line, with --n negative --w --h --s --l --d --ss"),
    KEY("sample_sampler", K_STR, sample_sampler, "ddim", 0, 0, 0, G_SAMPLE, "NAME",
        "ddim|euler|k_euler|euler_a|k_euler_a|heun|dpmsolver++|dpmsolver|dpmpp_2m|dpmpp_2m_karras|lcm",
        "sampler of the sample images"),
    KEY("training_comment", K_STR, training_comment, NULL, 0, 0, 0, G_SAVE, "TEXT", NULL,
        "stored as ss_training_comment in the saved file's metadata"),
    KEY("keep_tokens", K_INT, keep_tokens, "0", 0, 1e6, 0, G_DATA, "N", NULL,
        "the first N comma-separated tags stay in place when shuffling or dropping tags"),
    KEY("shuffle_caption", K_BOOL, shuffle_caption, "false", 0, 1, 0, G_DATA, NULL, NULL,
        "shuffle the comma-separated tags of a caption each time it is used"),
    KEY("caption_extension", K_STR, caption_extension, ".txt", 0, 0, 0, G_DATA, "EXT", NULL,
        "extension of the caption files (.caption is read too)"),
    KEY("caption_dropout_rate", K_DBL, caption_dropout_rate, "0", 0, 1, 0, G_DATA, "X", NULL,
        "probability that an image is trained with an empty caption"),
    KEY("caption_dropout_every_n_epochs", K_INT, caption_dropout_every_n_epochs, "0", 0, 1e9, 0, G_DATA, "N",
        NULL, "every N-th epoch trains every image with an empty caption (0: never)"),
    KEY("caption_tag_dropout_rate", K_DBL, caption_tag_dropout_rate, "0", 0, 1, 0, G_DATA, "X", NULL,
        "probability of dropping each tag after the first keep_tokens"),
    KEY("cache_latents", K_BOOL, cache_latents, "false", 0, 1, 0, G_MEM, NULL, NULL,
        "encode every image with the VAE once, before training (not with random_crop)"),
    KEY("cache_latents_to_disk", K_BOOL, cache_latents_to_disk, "false", 0, 1, 0, G_MEM, NULL, NULL,
        "keep the cached latents in files beside the images (implies cache_latents)"),
    KEY("cache_text_encoder_outputs", K_BOOL, cache_text_encoder_outputs, "false", 0, 1, 0, G_MEM, NULL, NULL,
        "encode every caption once, before training (danlu does so whenever captions and text encoders are "
        "fixed; set, it is an error when they are not)"),
    KEY("cache_text_encoder_outputs_to_disk", K_BOOL, cache_text_encoder_outputs_to_disk, "false", 0, 1, 0, G_MEM,
        NULL, NULL, "the same as cache_text_encoder_outputs (the outputs are kept in memory, not in files)"),
    KEY("enable_bucket", K_BOOL, enable_bucket, "false", 0, 1, 0, G_BUCKET, NULL, NULL,
        "group images by aspect ratio; each batch comes from one bucket"),
    KEY("min_bucket_reso", K_INT, min_bucket_reso, "256", 64, 8192, 0, G_BUCKET, "N", NULL,
        "smallest bucket side in pixels"),
    KEY("max_bucket_reso", K_INT, max_bucket_reso, "1024", 64, 8192, 0, G_BUCKET, "N", NULL,
        "largest bucket side in pixels"),
    KEY("bucket_reso_steps", K_INT, bucket_reso_steps, "64", 8, 1024, 0, G_BUCKET, "N", NULL,
        "bucket sides are multiples of this"),
    KEY("bucket_no_upscale", K_BOOL, bucket_no_upscale, "false", 0, 1, 0, G_BUCKET, NULL, NULL,
        "never enlarge an image to fill a bucket"),
    KEY("flip_aug", K_BOOL, flip_aug, "false", 0, 1, 0, G_DATA, NULL, NULL, "mirror images at random"),
    KEY("random_crop", K_BOOL, random_crop, "false", 0, 1, 0, G_DATA, NULL, NULL,
        "crop at a random position instead of the centre"),
    KEY("threads", K_INT, threads, "0", 0, 4096, 0, G_MEM, "N", NULL,
        "CPU threads (0: DANLU_THREADS or every core)"),
    KEY("backend", K_STR, backend, "auto", 0, 0, 0, G_MEM, "NAME", "auto",
        "where the ops run: cpu, cuda, or auto (cuda when an NVIDIA GPU is usable, else cpu)"),
    KEY("tokenizer", K_STR, tokenizer, NULL, 0, 0, 0, G_MODEL, "PATH", NULL,
        "tokenizer folder or CLIP's bpe_simple_vocab_16e6.txt.gz, for a checkpoint without tokenizer/"),
    KEY("no_hash_cache", K_BOOL, no_hash_cache, "false", 0, 1, 0, G_OTHER, NULL, NULL,
        "hash the base model again instead of reading $XDG_CACHE_HOME/danlu/hashes.json"),
    KEY("verbose", K_BOOL, verbose, "false", 0, 1, 0, G_OTHER, NULL, NULL,
        "print the time of each phase (load, data, steps, sampling, saving, hash) at the end"),
};
#define N_KEYS ((int)(sizeof k_keys / sizeof *k_keys))

/* Flags of the command line that are not keys: the config file, read before any flag. */
static const key_def k_file_flags[] = {
    {"config", K_STR, 0, NULL, 0, 0, 0, 0, G_FILE, 0, "FILE.json", NULL,
     "read options from this JSON object first; flags override it (TOML is not read)"},
    {"config_file", K_STR, 0, NULL, 0, 0, 0, 0, G_FILE, 0, "FILE.json", NULL, "the same as --config (sd-scripts' name)"},
};
#define N_FILE_FLAGS ((int)(sizeof k_file_flags / sizeof *k_file_flags))

/* sd-scripts flags that change nothing here: accepted with a warning so users can bring their
 * commands. */
static const char *const k_ignored[] = {
    "xformers", "sdpa", "mem_eff_attn", "max_data_loader_n_workers", "persistent_data_loader_workers",
    "logging_dir", "log_prefix", "log_with", "save_model_as", "max_token_length", "lowram",
    "highvram", "full_fp16", "full_bf16", "no_half_vae", "output_config",
};
#define N_IGNORED ((int)(sizeof k_ignored / sizeof *k_ignored))

int dl_train_config_n_keys(void) { return N_KEYS; }
const dl_train_key *dl_train_config_key(int i) { return i >= 0 && i < N_KEYS ? &k_keys[i] : NULL; }
int dl_train_config_n_file_flags(void) { return N_FILE_FLAGS; }
const dl_train_key *dl_train_config_file_flag(int i) { return i >= 0 && i < N_FILE_FLAGS ? &k_file_flags[i] : NULL; }
int dl_train_config_n_ignored(void) { return N_IGNORED; }
const char *dl_train_config_ignored(int i) { return i >= 0 && i < N_IGNORED ? k_ignored[i] : NULL; }
int dl_train_config_n_groups(void) { return G_COUNT; }
const char *dl_train_config_group_name(int g) { return g >= 0 && g < G_COUNT ? k_groups[g] : NULL; }

/* Keys of every command that mean nothing to train-vae (text, noise schedule, latent caches,
 * sample images): unknown there. */
static const char *const k_not_vae[] = {
    "v_parameterization", "clip_skip", "unet_lr", "text_encoder_lr", "noise_offset", "min_snr_gamma",
    "sample_every_n_steps", "sample_every_n_epochs", "sample_prompts", "sample_sampler", "keep_tokens",
    "shuffle_caption", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "cache_latents", "cache_latents_to_disk", "tokenizer",
};

int dl_train_key_applies(const dl_train_key *k, int finetune)
{
    const int bit = finetune == DL_TRAIN_VAE ? DL_TKEY_VAE : finetune ? DL_TKEY_FT : DL_TKEY_LORA;
    if (k->only) return (k->only & bit) != 0;
    if (bit == DL_TKEY_VAE)
        for (size_t i = 0; i < sizeof k_not_vae / sizeof *k_not_vae; i++)
            if (!strcmp(k->name, k_not_vae[i])) return 0;
    return 1;
}

/* A key of any command (its accepted values), or NULL. */
static const key_def *find_key(const char *name)
{
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(k_keys[i].name, name) == 0) return &k_keys[i];
    return NULL;
}

/* A key of c's command, or NULL (an option of the other command is unknown here). */
static const key_def *find_key_for(const dl_train_config *c, const char *name)
{
    const key_def *k = find_key(name);
    return k && dl_train_key_applies(k, c->finetune) ? k : NULL;
}

static int is_ignored(const char *name)
{
    for (int i = 0; i < N_IGNORED; i++)
        if (strcmp(k_ignored[i], name) == 0) return 1;
    return 0;
}

static int is_file_flag(const char *name)
{
    for (int i = 0; i < N_FILE_FLAGS; i++)
        if (strcmp(k_file_flags[i].name, name) == 0) return 1;
    return 0;
}

/* 1 if s is one of the key's '|'-separated values (s given with n chars; nocase: ignoring case) */
static int in_values(const char *values, const char *s, size_t n, int nocase)
{
    for (const char *p = values; p && *p;) {
        size_t k = strcspn(p, "|");
        if (k == n && !(nocase ? strncasecmp(p, s, n) : strncmp(p, s, n))) return 1;
        p += k + (p[k] ? 1 : 0);
    }
    return 0;
}

static int key_accepts(const char *key, const char *s, int nocase)
{
    return s && in_values(find_key(key)->values, s, strlen(s), nocase);
}

static void list_clear(dl_strlist *l)
{
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int list_push(dl_strlist *l, const char *s)
{
    char **v = realloc(l->v, (size_t)(l->n + 1) * sizeof *v);
    if (!v) return dl_error_set("out of memory");
    l->v = v;
    l->v[l->n] = strdup(s);
    if (!l->v[l->n]) return dl_error_set("out of memory");
    l->n++;
    return DL_OK;
}

static int parse_bool(const char *s, int *out)
{
    if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) { *out = 1; return DL_OK; }
    if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) { *out = 0; return DL_OK; }
    return DL_ERR;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    while (isspace((unsigned char)*s)) s++;
    if (!*s) return DL_ERR;
    double v = strtod(s, &end);
    while (isspace((unsigned char)*end)) end++;
    if (*end || errno == ERANGE || !isfinite(v)) return DL_ERR;
    *out = v;
    return DL_OK;
}

static int is_unset_text(const char *s)
{
    return !strcasecmp(s, "none") || !strcasecmp(s, "null");
}

/* Store a numeric value after range and integrality checks. */
static int set_number(dl_train_config *c, const key_def *k, double v, const char *where)
{
    char *base = (char *)c;
    if (k->kind == K_INT || k->kind == K_I64) {
        if (v != floor(v))
            return dl_error_set("%s%s: must be an integer, got %g", where, k->name, v);
    }
    if (v < k->lo || v > k->hi) {
        if (k->hi >= 1e18)
            return dl_error_set("%s%s: out of range: %g (must be >= %g)", where, k->name, v, k->lo);
        return dl_error_set("%s%s: out of range: %g (must be in [%g, %g])", where, k->name, v, k->lo, k->hi);
    }
    switch (k->kind) {
    case K_INT: *(int *)(base + k->off) = (int)v; break;
    case K_I64: *(long long *)(base + k->off) = (long long)v; break;
    case K_DBL: *(double *)(base + k->off) = v; break;
    default: break;
    }
    return DL_OK;
}

static void set_unset(dl_train_config *c, const key_def *k)
{
    char *base = (char *)c;
    switch (k->kind) {
    case K_STR: free(*(char **)(base + k->off)); *(char **)(base + k->off) = NULL; break;
    case K_INT: *(int *)(base + k->off) = 0; break;
    case K_I64: *(long long *)(base + k->off) = -1; break;
    case K_DBL: *(double *)(base + k->off) = NAN; break;
    case K_BOOL: *(int *)(base + k->off) = 0; break;
    case K_LIST: list_clear((dl_strlist *)(base + k->off)); break;
    }
}

/* Set from text; where = "FILE: " or "" for messages. */
static int set_text(dl_train_config *c, const key_def *k, const char *value, const char *where)
{
    char *base = (char *)c;
    switch (k->kind) {
    case K_STR: {
        char *s = strdup(value);
        if (!s) return dl_error_set("out of memory");
        free(*(char **)(base + k->off));
        *(char **)(base + k->off) = s;
        return DL_OK;
    }
    case K_BOOL: {
        int b;
        if (parse_bool(value, &b) != DL_OK)
            return dl_error_set("%s%s: expected true or false, got '%s'", where, k->name, value);
        *(int *)(base + k->off) = b;
        return DL_OK;
    }
    case K_LIST: return list_push((dl_strlist *)(base + k->off), value);
    default: {
        if (k->optional && is_unset_text(value)) { set_unset(c, k); return DL_OK; }
        double v;
        if (parse_double(value, &v) != DL_OK)
            return dl_error_set("%s%s: expected a number, got '%s'", where, k->name, value);
        return set_number(c, k, v, where);
    }
    }
}

/* text_encoder_lr takes several values as sd-scripts' (nargs="*": one per text encoder of SDXL);
 * the first is the key's, the second is kept in text_encoder_lr2 (networks.lora uses only the
 * first, for both of SDXL's text encoders), any further ones are checked and not kept. */
static int is_te_lr(const key_def *k) { return k->off == OFF(text_encoder_lr); }

static int set_te_lr_extra(dl_train_config *c, const key_def *k, double v, const char *where)
{
    if (!(v >= k->lo && v <= k->hi))
        return dl_error_set("%s%s: out of range: %g (must be in [%g, %g])", where, k->name, v, k->lo, k->hi);
    if (isnan(c->text_encoder_lr2)) c->text_encoder_lr2 = v;
    return DL_OK;
}

void dl_train_config_defaults(dl_train_config *c) { dl_train_config_defaults_for(c, 0); }

void dl_train_config_defaults_for(dl_train_config *c, int finetune)
{
    memset(c, 0, sizeof *c);
    c->finetune = finetune == DL_TRAIN_VAE ? DL_TRAIN_VAE : finetune != 0;
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &k_keys[i];
        if (k->def) {
            int rc = set_text(c, k, k->def, "default ");
            DL_ASSERTF(rc == DL_OK, "bad default for %s", k->name);
        } else {
            set_unset(c, k);
        }
    }
    c->conv_alpha = 1;
    c->text_encoder_lr2 = NAN;
    c->adam_beta1 = 0.9;
    c->adam_beta2 = 0.999;
    c->adam_eps = 1e-8;
    c->weight_decay = 0.01;
}

void dl_train_config_free(dl_train_config *c)
{
    for (int i = 0; i < N_KEYS; i++)
        if (k_keys[i].kind == K_STR || k_keys[i].kind == K_LIST) set_unset(c, &k_keys[i]);
    free(c->preset);
    c->preset = NULL;
}

int dl_train_config_set(dl_train_config *c, const char *key, const char *value)
{
    const key_def *k = find_key_for(c, key);
    if (!k) return dl_error_set("unknown option '%s'", key);
    if (is_te_lr(k)) c->text_encoder_lr2 = NAN;
    return set_text(c, k, value, "");
}

static int apply_json_value(dl_train_config *c, const key_def *k, const cJSON *v, const char *where)
{
    if (is_te_lr(k)) {
        c->text_encoder_lr2 = NAN;
        if (cJSON_IsArray(v)) { /* [] is None, [a] or [a, b] as sd-scripts' list */
            set_unset(c, k);
            int i = 0;
            for (const cJSON *e = v->child; e; e = e->next, i++) {
                if (!cJSON_IsNumber(e)) return dl_error_set("%s%s: expected a number or a list of numbers", where, k->name);
                DL_TRY(i == 0 ? set_number(c, k, e->valuedouble, where) : set_te_lr_extra(c, k, e->valuedouble, where));
            }
            return DL_OK;
        }
    }
    if (cJSON_IsNull(v)) {
        if (k->kind == K_STR || k->kind == K_LIST || k->optional) { set_unset(c, k); return DL_OK; }
        return dl_error_set("%s%s: must not be null", where, k->name);
    }
    switch (k->kind) {
    case K_STR:
        if (cJSON_IsNumber(v) || cJSON_IsArray(v)) {
            /* a JSON number or list of numbers stands for sd-scripts' text form of the option
             * ("resolution": 512 or [768, 512] is "512" / "768,512"); the option's own check
             * then judges the text */
            char buf[256];
            size_t n = 0;
            int ok = 1;
            for (const cJSON *e = cJSON_IsArray(v) ? v->child : v; e && ok; e = cJSON_IsArray(v) ? e->next : NULL) {
                ok = cJSON_IsNumber(e) && n + 32 < sizeof buf;
                if (ok) n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%.17g", n ? "," : "", e->valuedouble);
            }
            if (!ok || n == 0)
                return dl_error_set("%s%s: expected a string, a number or a list of numbers", where, k->name);
            return set_text(c, k, buf, where);
        }
        if (!cJSON_IsString(v)) return dl_error_set("%s%s: expected a string", where, k->name);
        return set_text(c, k, v->valuestring, where);
    case K_BOOL:
        if (cJSON_IsBool(v)) { *(int *)((char *)c + k->off) = cJSON_IsTrue(v); return DL_OK; }
        if (cJSON_IsString(v)) return set_text(c, k, v->valuestring, where);
        return dl_error_set("%s%s: expected true or false", where, k->name);
    case K_LIST:
        list_clear((dl_strlist *)((char *)c + k->off));
        if (cJSON_IsString(v)) return set_text(c, k, v->valuestring, where);
        if (!cJSON_IsArray(v)) return dl_error_set("%s%s: expected a list of strings", where, k->name);
        for (const cJSON *e = v->child; e; e = e->next) {
            if (!cJSON_IsString(e)) return dl_error_set("%s%s: expected a list of strings", where, k->name);
            DL_TRY(set_text(c, k, e->valuestring, where));
        }
        return DL_OK;
    default:
        if (cJSON_IsNumber(v)) return set_number(c, k, v->valuedouble, where);
        if (cJSON_IsString(v)) return set_text(c, k, v->valuestring, where);
        return dl_error_set("%s%s: expected a number", where, k->name);
    }
}

int dl_train_config_apply_json_text(dl_train_config *c, const char *text, const char *label)
{
    char where[1100];
    snprintf(where, sizeof where, "%s: ", label);
    cJSON *root = cJSON_Parse(text);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        return dl_error_set("%snot valid JSON%s%.20s%s", where, e ? " near '" : "", e ? e : "", e ? "'" : "");
    }
    int rc = DL_OK;
    if (!cJSON_IsObject(root)) {
        rc = dl_error_set("%sexpected a JSON object of option: value", where);
        goto done;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        const key_def *k = find_key_for(c, it->string);
        if (!k) {
            if (is_ignored(it->string)) continue;
            rc = dl_error_set("%sunknown key '%s'", where, it->string);
            goto done;
        }
        if (apply_json_value(c, k, it, where) != DL_OK) { rc = DL_ERR; goto done; }
    }
done:
    cJSON_Delete(root);
    return rc;
}

int dl_train_config_json_is_finetune(const char *text)
{
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    int ft = 0;
    for (const cJSON *it = root && cJSON_IsObject(root) ? root->child : NULL; it && !ft; it = it->next) {
        const key_def *k = find_key(it->string);
        ft = k && k->only == DL_TKEY_FT;
    }
    cJSON_Delete(root);
    return ft;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcasecmp(s + n - m, suf) == 0;
}

int dl_train_config_load_json(dl_train_config *c, const char *path)
{
    if (has_suffix(path, ".toml"))
        return dl_error_set("%s: TOML configs are not read; write the same keys as a JSON object (.json)", path);
    FILE *f = fopen(path, "rb");
    if (!f) return dl_error_set("%s: cannot open config: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) { free(buf); fclose(f); return dl_error_set("%s: config too large", path); }
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return dl_error_set("out of memory"); }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, 4096, f);
        len += r;
        if (r < 4096) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return dl_error_set("%s: read error", path); }
    buf[len] = 0;
    int rc = dl_train_config_apply_json_text(c, buf, path);
    free(buf);
    return rc;
}

/* "--name" -> "name" with '-' -> '_' into out. */
static void flag_name(const char *arg, size_t n, char *out, size_t cap)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) out[j++] = arg[i] == '-' ? '_' : arg[i];
    out[j] = 0;
}

int dl_train_config_parse_args(dl_train_config *c, int argc, char **argv, FILE *warn)
{
    /* The config file first, wherever it appears. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        for (int k = 0; k < N_FILE_FLAGS && !val; k++) {
            size_t n = strlen(k_file_flags[k].name);
            if (strncmp(a, "--", 2) || strncmp(a + 2, k_file_flags[k].name, n)) continue;
            if (a[2 + n] == '=') val = a + 3 + n;
            else if (!a[2 + n]) {
                if (i + 1 >= argc) return dl_error_set("%s: missing file name", a);
                val = argv[++i];
            }
        }
        if (val) DL_TRY(dl_train_config_load_json(c, val));
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) return dl_error_set("unexpected argument '%s' (options are --name value)", a);
        const char *body = a + 2;
        const char *eq = strchr(body, '=');
        char name[128];
        flag_name(body, eq ? (size_t)(eq - body) : strlen(body), name, sizeof name);
        if (is_file_flag(name)) {
            if (!eq) i++;
            continue;
        }
        const key_def *k = find_key_for(c, name);
        if (!k) {
            if (is_ignored(name)) {
                if (warn) fprintf(warn, "warning: --%s does not apply to danlu and is ignored\n", name);
                if (!eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) i++;
                continue;
            }
            return dl_error_set("unknown option '--%s'", name);
        }
        if (k->kind == K_LIST) {
            list_clear((dl_strlist *)((char *)c + k->off));
            if (eq) { DL_TRY(set_text(c, k, eq + 1, "--")); continue; }
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) DL_TRY(set_text(c, k, argv[++i], "--"));
            continue;
        }
        if (is_te_lr(k)) c->text_encoder_lr2 = NAN;
        if (is_te_lr(k) && !eq) { /* nargs="*": none (None), one, or one per text encoder */
            if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)) { set_unset(c, k); continue; }
            DL_TRY(set_text(c, k, argv[++i], "--"));
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                double v;
                if (parse_double(argv[++i], &v) != DL_OK)
                    return dl_error_set("--%s: expected a number, got '%s'", name, argv[i]);
                DL_TRY(set_te_lr_extra(c, k, v, "--"));
            }
            continue;
        }
        if (eq) { DL_TRY(set_text(c, k, eq + 1, "--")); continue; }
        if (k->kind == K_BOOL) {
            int b;
            if (i + 1 < argc && parse_bool(argv[i + 1], &b) == DL_OK) { *(int *)((char *)c + k->off) = b; i++; }
            else *(int *)((char *)c + k->off) = 1;
            continue;
        }
        if (i + 1 >= argc) return dl_error_set("--%s: missing value", name);
        DL_TRY(set_text(c, k, argv[++i], "--"));
    }
    return dl_train_config_finish(c);
}

/* "key=value" in a list: value of key, or NULL. */
static const char *list_get(const dl_strlist *l, const char *key, int *count)
{
    const char *r = NULL;
    size_t n = strlen(key);
    for (int i = 0; i < l->n; i++)
        if (!strncmp(l->v[i], key, n) && l->v[i][n] == '=') { r = l->v[i] + n + 1; if (count) (*count)++; }
    return r;
}

/* Every element of the list key is KEY=value with KEY one of the key's values. */
static int check_list_keys(const dl_strlist *l, const char *listname)
{
    const char *known = find_key(listname)->values;
    for (int i = 0; i < l->n; i++) {
        const char *eq = strchr(l->v[i], '=');
        if (!eq) return dl_error_set("%s: '%s' is not key=value", listname, l->v[i]);
        if (!in_values(known, l->v[i], (size_t)(eq - l->v[i]), 0))
            return dl_error_set("%s: unknown argument '%.*s'", listname, (int)(eq - l->v[i]), l->v[i]);
    }
    return DL_OK;
}

int dl_train_config_finish(dl_train_config *c)
{
    for (int i = 0; i < N_KEYS; i++)
        if (k_keys[i].required && !*(char **)((char *)c + k_keys[i].off))
            return dl_error_set("%s: required", k_keys[i].name);
    if (!c->output_name || !*c->output_name || strchr(c->output_name, '/'))
        return dl_error_set("output_name: must be a non-empty file name without '/'");

    /* resolution "S" or "W,H" */
    {
        char *end;
        const char *s = c->resolution ? c->resolution : "";
        long w = strtol(s, &end, 10), h = w;
        if (end == s) return dl_error_set("resolution: expected 'S' or 'W,H', got '%s'", s);
        if (*end == ',') {
            const char *s2 = end + 1;
            h = strtol(s2, &end, 10);
            if (end == s2) return dl_error_set("resolution: expected 'S' or 'W,H', got '%s'", s);
        }
        if (*end) return dl_error_set("resolution: expected 'S' or 'W,H', got '%s'", s);
        if (w < 32 || h < 32 || w > 8192 || h > 8192 || w % 8 || h % 8)
            return dl_error_set("resolution: out of range: '%s' (each side a multiple of 8 in [32, 8192])", s);
        c->res_w = (int)w;
        c->res_h = (int)h;
    }
    if (c->min_bucket_reso > c->max_bucket_reso)
        return dl_error_set("min_bucket_reso: %d is above max_bucket_reso %d", c->min_bucket_reso, c->max_bucket_reso);
    if (c->min_bucket_reso % c->bucket_reso_steps || c->max_bucket_reso % c->bucket_reso_steps)
        return dl_error_set("min_bucket_reso / max_bucket_reso: must be multiples of bucket_reso_steps (%d)", c->bucket_reso_steps);

    if (!key_accepts("network_module", c->network_module, 0))
        return dl_error_set("network_module: only 'networks.lora' is supported, got '%s'", c->network_module);
    {
        DL_TRY(check_list_keys(&c->network_args, "network_args"));
        const char *v;
        double d;
        c->conv_dim = 0;
        c->conv_alpha = 1;
        if ((v = list_get(&c->network_args, "conv_dim", NULL))) {
            if (parse_double(v, &d) != DL_OK || d != floor(d) || d < 0 || d > 4096)
                return dl_error_set("network_args: conv_dim: out of range: '%s' (an integer in [0, 4096])", v);
            c->conv_dim = (int)d;
        }
        if ((v = list_get(&c->network_args, "conv_alpha", NULL))) {
            if (parse_double(v, &d) != DL_OK || d <= 0 || d > 1e6)
                return dl_error_set("network_args: conv_alpha: out of range: '%s' (must be > 0)", v);
            c->conv_alpha = d;
        }
        free(c->preset);
        v = list_get(&c->network_args, "preset", NULL);
        if (v && strcmp(v, "default") && strcmp(v, "attn-only") && strcmp(v, "attn-mlp") && strcmp(v, "full"))
            return dl_error_set("network_args: preset: unknown '%s' (default, attn-only, attn-mlp, full)", v);
        c->preset = strdup(v ? v : "default");
        if (!c->preset) return dl_error_set("out of memory");
    }
    if (c->network_train_unet_only && c->network_train_text_encoder_only)
        return dl_error_set("network_train_unet_only and network_train_text_encoder_only: both set");
    if (!dl_backend_find(c->backend)) return dl_error_prefix("backend: ");
    if (!key_accepts("lora_format", c->lora_format, 0))
        return dl_error_set("lora_format: expected 'kohya' or 'peft', got '%s'", c->lora_format);

    if (!key_accepts("optimizer_type", c->optimizer_type, 1))
        return dl_error_set("optimizer_type: '%s' is not supported; danlu trains with AdamW only "
                            "(AdamW8bit, Lion, Prodigy, Adafactor, DAdaptation and others are not available)",
                            c->optimizer_type);
    {
        DL_TRY(check_list_keys(&c->optimizer_args, "optimizer_args"));
        const char *v;
        double d;
        if ((v = list_get(&c->optimizer_args, "weight_decay", NULL))) {
            if (parse_double(v, &d) != DL_OK || d < 0 || d > 10)
                return dl_error_set("optimizer_args: weight_decay: out of range: '%s'", v);
            c->weight_decay = d;
        }
        if ((v = list_get(&c->optimizer_args, "eps", NULL))) {
            if (parse_double(v, &d) != DL_OK || d <= 0 || d > 1)
                return dl_error_set("optimizer_args: eps: out of range: '%s'", v);
            c->adam_eps = d;
        }
        if ((v = list_get(&c->optimizer_args, "betas", NULL))) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *p = buf; *p; p++)
                if (*p == '(' || *p == ')') *p = ' ';
            char *comma = strchr(buf, ',');
            double b1, b2;
            if (!comma) return dl_error_set("optimizer_args: betas: expected 'b1,b2', got '%s'", v);
            *comma = 0;
            if (parse_double(buf, &b1) != DL_OK || parse_double(comma + 1, &b2) != DL_OK || b1 < 0 || b1 >= 1 ||
                b2 < 0 || b2 >= 1)
                return dl_error_set("optimizer_args: betas: out of range: '%s' (each in [0, 1))", v);
            c->adam_beta1 = b1;
            c->adam_beta2 = b2;
        }
    }
    if (!key_accepts("lr_scheduler", c->lr_scheduler, 0))
        return dl_error_set("lr_scheduler: unknown '%s' (constant, constant_with_warmup, linear, cosine, "
                            "cosine_with_restarts, polynomial)", c->lr_scheduler);
    if (!key_accepts("mixed_precision", c->mixed_precision, 0))
        return dl_error_set("mixed_precision: '%s' is not available: danlu trains in fp32 ('no') on every backend "
                            "and with bf16 matrix products and convolutions ('bf16') on the CUDA backend",
                            c->mixed_precision);
    if (!key_accepts("save_precision", c->save_precision, 0)) return dl_error_set("save_precision: expected float, fp32, fp16 or bf16, got '%s'", c->save_precision);
    c->save_dtype = !strcmp(c->save_precision, "fp16") ? DL_SAVE_FP16
                  : !strcmp(c->save_precision, "bf16") ? DL_SAVE_BF16 : DL_SAVE_FP32;
    if ((c->sample_every_n_steps || c->sample_every_n_epochs) && !c->sample_prompts)
        return dl_error_set("%s: needs sample_prompts", c->sample_every_n_steps ? "sample_every_n_steps" : "sample_every_n_epochs");
    if (c->cache_latents_to_disk) c->cache_latents = 1;
    if (c->cache_text_encoder_outputs_to_disk) c->cache_text_encoder_outputs = 1;
    if (!c->caption_extension || !*c->caption_extension)
        return dl_error_set("caption_extension: must not be empty");
    if (c->finetune) {
        if (!key_accepts("save_model_as", c->save_model_as, 0))
            return dl_error_set("save_model_as: expected 'safetensors' or 'diffusers', got '%s'",
                                c->save_model_as ? c->save_model_as : "");
    }
    return DL_OK;
}

int dl_train_config_check_run(const dl_train_config *c)
{
    if (c->cache_text_encoder_outputs) { /* sd-scripts' two asserts */
        const int te_trains = c->finetune ? c->train_text_encoder : !c->network_train_unet_only;
        if (te_trains)
            return dl_error_set("cache_text_encoder_outputs: the text encoder cannot be trained while its outputs are "
                                "cached (as sd-scripts); %s, or drop cache_text_encoder_outputs",
                                c->finetune ? "drop train_text_encoder" : "add network_train_unet_only");
        if (c->shuffle_caption || c->caption_dropout_rate > 0 || c->caption_tag_dropout_rate > 0)
            return dl_error_set("cache_text_encoder_outputs: captions that change between epochs (%s) cannot be "
                                "cached", c->shuffle_caption ? "shuffle_caption"
                                          : c->caption_dropout_rate > 0 ? "caption_dropout_rate" : "caption_tag_dropout_rate");
    }
    return DL_OK;
}

double dl_train_config_unet_lr(const dl_train_config *c)
{
    return isnan(c->unet_lr) ? c->learning_rate : c->unet_lr;
}

double dl_train_config_te_lr(const dl_train_config *c)
{
    return isnan(c->text_encoder_lr) ? c->learning_rate : c->text_encoder_lr;
}

static cJSON *key_json(const dl_train_config *c, const key_def *k)
{
    const char *base = (const char *)c;
    switch (k->kind) {
    case K_STR: {
        const char *s = *(char *const *)(base + k->off);
        return s ? cJSON_CreateString(s) : cJSON_CreateNull();
    }
    case K_BOOL: return cJSON_CreateBool(*(const int *)(base + k->off));
    case K_INT: {
        int v = *(const int *)(base + k->off);
        return (k->optional && v == 0) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
    }
    case K_I64: {
        long long v = *(const long long *)(base + k->off);
        return v < 0 ? cJSON_CreateNull() : cJSON_CreateNumber((double)v);
    }
    case K_DBL: {
        double v = *(const double *)(base + k->off);
        if (is_te_lr(k) && !isnan(v) && !isnan(c->text_encoder_lr2)) {
            cJSON *a = cJSON_CreateArray();
            cJSON_AddItemToArray(a, cJSON_CreateNumber(v));
            cJSON_AddItemToArray(a, cJSON_CreateNumber(c->text_encoder_lr2));
            return a;
        }
        return isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
    }
    case K_LIST: {
        const dl_strlist *l = (const dl_strlist *)(base + k->off);
        cJSON *a = cJSON_CreateArray();
        for (int i = 0; i < l->n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(l->v[i]));
        return a;
    }
    }
    return cJSON_CreateNull();
}

char *dl_train_config_to_json(const dl_train_config *c)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    for (int i = 0; i < N_KEYS; i++)
        if (dl_train_key_applies(&k_keys[i], c->finetune)) cJSON_AddItemToObject(root, k_keys[i].name, key_json(c, &k_keys[i]));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

void dl_train_config_print(const dl_train_config *c, FILE *f)
{
    for (int i = 0; i < N_KEYS; i++) {
        if (!dl_train_key_applies(&k_keys[i], c->finetune)) continue;
        cJSON *v = key_json(c, &k_keys[i]);
        char *s = v ? cJSON_PrintUnformatted(v) : NULL;
        fprintf(f, "  %-32s %s\n", k_keys[i].name, s ? s : "?");
        free(s);
        cJSON_Delete(v);
    }
}
