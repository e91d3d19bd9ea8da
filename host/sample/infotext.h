/* infotext.h - what A1111 writes about an image: the "parameters" PNG text chunk, and the file
 * hashes it names models and LoRAs by (SHA-256 of the model file, "shorthash" = first 10 hex;
 * LoRAs by the AddNet hash = SHA-256 of a safetensors file after its header, first 12 hex). */
#ifndef DANLU_SAMPLE_INFOTEXT_H
#define DANLU_SAMPLE_INFOTEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} dl_sha256;

void dl_sha256_init(dl_sha256 *s);
void dl_sha256_update(dl_sha256 *s, const void *data, size_t n);
void dl_sha256_final(dl_sha256 *s, uint8_t out[32]);
/* Lower-case hex of the digest of bytes [offset, end) of the file at path into hex[65].
 * Returns DL_OK or DL_ERR (message names the file). */
int dl_sha256_file(const char *path, uint64_t offset, char hex[65]);
/* A1111's model hash: SHA-256 of the whole file, first 10 hex. */
int dl_a1111_model_hash(const char *path, char out[11]);
/* A1111's LoRA hash (AddNet): SHA-256 of a .safetensors file past its 8 + N header, first 12 hex. */
int dl_a1111_lora_hash(const char *path, char out[13]);

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
