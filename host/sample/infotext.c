/* infotext.c - A1111's model and LoRA hashes and the "parameters" text. */
#include "sample/infotext.h"

#include "core/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dl_a1111_model_hash(const dl_hash_cache *c, const char *path, char out[11])
{
    char hex[65];
    DL_TRY(dl_hash_file(c, path, 0, UINT64_MAX, hex, NULL));
    memcpy(out, hex, 10);
    out[10] = 0;
    return DL_OK;
}

int dl_a1111_lora_hash(const dl_hash_cache *c, const char *path, char out[13])
{
    FILE *f = fopen(path, "rb");
    if (!f) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    uint8_t b[8];
    size_t k = fread(b, 1, 8, f);
    fclose(f);
    if (k != 8) return dl_error_set("%s: not a safetensors file (shorter than 8 bytes)", path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
    char hex[65];
    DL_TRY(dl_hash_file(c, path, n + 8, UINT64_MAX, hex, NULL));
    memcpy(out, hex, 12);
    out[12] = 0;
    return DL_OK;
}

/* Append printf-style to a growing string. */
typedef struct { char *s; size_t n, cap; int oom; } sbuf;

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if (b->s && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        size_t cap = (b->cap + (size_t)k + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s) { b->oom = 1; return; }
        b->s = s;
        b->cap = cap;
    }
}

/* A number as Python's str(float) would show a CFG scale: 7 -> "7", 7.5 -> "7.5". */
static void fmt_num(char *out, size_t cap, double v)
{
    snprintf(out, cap, "%.6g", v);
}

char *dl_infotext_format(const dl_infotext *it)
{
    sbuf b = {0};
    char num[32];
    sb_printf(&b, "%s\n", it->prompt ? it->prompt : "");
    if (it->negative && it->negative[0]) sb_printf(&b, "Negative prompt: %s\n", it->negative);
    fmt_num(num, sizeof num, it->cfg_scale);
    sb_printf(&b, "Steps: %d, Sampler: %s, ", it->steps, it->sampler);
    if (it->schedule) sb_printf(&b, "Schedule type: %s, ", it->schedule);
    sb_printf(&b, "CFG scale: %s, Seed: %llu, Size: %dx%d", num, (unsigned long long)it->seed, it->width, it->height);
    if (it->model_hash) sb_printf(&b, ", Model hash: %s", it->model_hash);
    if (it->model_name) sb_printf(&b, ", Model: %s", it->model_name);
    if (it->strength >= 0) {
        fmt_num(num, sizeof num, it->strength);
        sb_printf(&b, ", Denoising strength: %s", num);
    }
    if (it->clip_skip > 1) sb_printf(&b, ", Clip skip: %d", it->clip_skip);
    if (it->rng) sb_printf(&b, ", RNG: %s", it->rng);
    if (it->n_loras > 0) {
        sb_printf(&b, ", Lora hashes: \"");
        for (int i = 0; i < it->n_loras; i++)
            sb_printf(&b, "%s%s: %s", i ? ", " : "", it->lora_names[i], it->lora_hashes[i]);
        sb_printf(&b, "\"");
    }
    sb_printf(&b, ", Version: danlu");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
