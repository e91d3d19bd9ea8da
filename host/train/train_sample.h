/* train_sample.h - sample images during training: sd-scripts' prompt file format (one prompt
 * per line, options --n negative, --w, --h, --s steps, --l CFG scale, --d seed, --ss sampler;
 * '#' comments) and generation with the LoRA saved so far, through the sampling pipeline. */
#ifndef DANLU_TRAIN_SAMPLE_H
#define DANLU_TRAIN_SAMPLE_H

#include "core/ctx.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_train_prompt {
    char *prompt;
    char *negative;        /* "" when none */
    int width, height;     /* default 512 (sd-scripts), rounded down to multiples of 64 there: here
                              of the model's latent multiple */
    int steps;             /* default 30 */
    double scale;          /* default 7.5 */
    int64_t seed;          /* -1: the training seed */
    char *sampler;         /* NULL: the run's sample_sampler */
} dl_train_prompt;

/* Parse a prompt file. DL_ERR names the file and line (bad number, unknown sampler, empty). */
int dl_train_prompts_load(const char *path, dl_train_prompt **out, int *n);
/* Parse one line (no trailing newline) into p; DL_ERR names label. Returns DL_OK with
 * p->prompt == NULL for blank and comment lines. */
int dl_train_prompt_parse_line(const char *line, dl_train_prompt *p, const char *label);
/* Free the n prompts of an array from dl_train_prompts_load and the array. */
void dl_train_prompts_free(dl_train_prompt *p, int n);

/* sd-scripts sampler names (ddim, euler, k_euler, euler_a, k_euler_a, heun, dpmsolver++, ...)
 * or danlu's (euler, euler_a, heun, ddim, dpmpp_2m, dpmpp_2m_karras, lcm) -> DL_OK when known. */
int dl_train_sampler_check(const char *name);

typedef struct dl_train_sampler dl_train_sampler;

/* A sampler for model (loaded on first use: a second copy of the weights), tokenizer as
 * dl_sd_open. ctx borrowed. */
int dl_train_sampler_create(dl_train_sampler **out, const char *model, const char *tokenizer, const dl_ctx *ctx);
/* A sampler on a dl_sd view of the trainer's own networks (sample/sd_models.h dl_sd_view), the
 * LoRA being trained attached and live: no second copy of the weights. Takes ownership of view
 * (closed by dl_train_sampler_free). */
struct dl_sd;
int dl_train_sampler_create_view(dl_train_sampler **out, struct dl_sd *view);
void dl_train_sampler_free(dl_train_sampler *s);

/* Generate every prompt with the LoRA file lora_path merged (weight 1; NULL: the networks as
 * they are, e.g. a view with the LoRA attached), writing
 * out_dir/<prefix>_<idx:02d>.png (A1111 "parameters" text chunk). default_sampler: the run's
 * sample_sampler; seed for prompts without --d; clip_skip as training. log may be NULL. */
int dl_train_sample(dl_train_sampler *s, const char *lora_path, const dl_train_prompt *p, int n,
                    const char *default_sampler, uint64_t seed, int clip_skip, const char *out_dir,
                    const char *prefix, FILE *log);

#ifdef __cplusplus
}
#endif
#endif
