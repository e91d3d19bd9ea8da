/* infotext.h - what A1111 writes about an image: the "parameters" PNG text chunk, and the file
 * hashes it names models and LoRAs by (SHA-256 of the model file, "shorthash" = first 10 hex;
 * LoRAs by the AddNet hash = SHA-256 of a safetensors file after its header, first 12 hex). */
#ifndef DANLU_SAMPLE_INFOTEXT_H
#define DANLU_SAMPLE_INFOTEXT_H

#include "core/sha256.h"
#include "io/hash_cache.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A1111's model hash: SHA-256 of the whole file, first 10 hex; from the hash cache c when it
 * knows the file (c may be NULL: computed). */
int dl_a1111_model_hash(const dl_hash_cache *c, const char *path, char out[11]);
/* A1111's LoRA hash (AddNet): SHA-256 of a .safetensors file past its 8 + N header, first 12
 * hex; cached as above. */
int dl_a1111_lora_hash(const dl_hash_cache *c, const char *path, char out[13]);

typedef struct dl_infotext {
    const char *prompt;       /* as the user wrote it (LoRA tags included) */
    const char *negative;     /* "" or NULL: no line */
    int steps;
    const char *sampler;      /* A1111 display name */
    const char *schedule;     /* "Karras" or NULL */
    float cfg_scale;
    uint64_t seed;
    int width, height;
    const char *model_hash;   /* or NULL */
    const char *model_name;   /* or NULL */
    double strength;          /* img2img denoising strength, < 0: none */
    int clip_skip;            /* written when > 1 */
    const char *rng;          /* "NV" for A1111's NV seeds, NULL for the default (not written) */
    int n_loras;
    const char *const *lora_names;
    const char *const *lora_hashes;
} dl_infotext;

/* The A1111 "parameters" text (malloc'd):
 *   <prompt>\nNegative prompt: <neg>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42,
 *   Size: 512x512, Model hash: 0123456789, Model: name, Denoising strength: 0.75, Clip skip: 2,
 *   Lora hashes: "a: 0123456789ab, b: ...", Version: danlu */
char *dl_infotext_format(const dl_infotext *it);

#ifdef __cplusplus
}
#endif
#endif
