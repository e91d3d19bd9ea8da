/* dtype.c - element type table and bulk conversions. */
#include "dtype.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

static const struct { const char *name; size_t size; } k_types[DL_DTYPE_COUNT] = {
    [DL_F32] = {"F32", 4},  [DL_F16] = {"F16", 2},  [DL_BF16] = {"BF16", 2}, [DL_F64] = {"F64", 8},
    [DL_I8] = {"I8", 1},    [DL_U8] = {"U8", 1},    [DL_I16] = {"I16", 2},   [DL_U16] = {"U16", 2},
    [DL_I32] = {"I32", 4},  [DL_U32] = {"U32", 4},  [DL_I64] = {"I64", 8},   [DL_U64] = {"U64", 8},
    [DL_BOOL] = {"BOOL", 1},
};

size_t dl_dtype_size(dl_dtype t) { return (unsigned)t < DL_DTYPE_COUNT ? k_types[t].size : 0; }
const char *dl_dtype_name(dl_dtype t) { return (unsigned)t < DL_DTYPE_COUNT ? k_types[t].name : "?"; }

int dl_dtype_parse(const char *name, dl_dtype *out)
{
    for (int i = 0; i < DL_DTYPE_COUNT; i++)
        if (strcmp(name, k_types[i].name) == 0) { *out = (dl_dtype)i; return 0; }
    return -1;
}

/* fp16 -> fp32 of n values from a possibly unaligned source: F16C (8 at a time, the tail through
 * a padded copy) where the build has it (x86-64-v3 and up), the scalar conversion elsewhere.
 * Every value converts exactly; F16C returns a signalling NaN quieted (the scalar path keeps
 * its bits). Short runs are common (GEMM panels pack 14 or 32 weights at a time). */
static void f16_to_f32(float *dst, const char *s, size_t n)
{
    size_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
    if (i < n) {
        uint16_t h[8] = {0};
        float f[8];
        memcpy(h, s + 2 * i, 2 * (n - i));
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
        memcpy(dst + i, f, 4 * (n - i));
        return;
    }
#endif
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = dl_f16_to_f32(h);
    }
}

int dl_convert_to_f32(float *dst, const void *src, dl_dtype t, size_t n)
{
    switch (t) {
    case DL_F32: memmove(dst, src, n * 4); return 0;
    /* sources may be unaligned (safetensors does not promise alignment): load through memcpy */
    case DL_F16: f16_to_f32(dst, src, n); return 0;
    case DL_BF16: { const char *s = src; for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = dl_bf16_to_f32(h); } return 0; }
    case DL_F64: { const char *s = src; for (size_t i = 0; i < n; i++) { double d; memcpy(&d, s + 8 * i, 8); dst[i] = (float)d; } return 0; }
    default: return -1;
    }
}

int dl_convert_from_f32(void *dst, dl_dtype t, const float *src, size_t n)
{
    switch (t) {
    case DL_F32: memmove(dst, src, n * 4); return 0;
    case DL_F16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = dl_f32_to_f16(src[i]); return 0; }
    case DL_BF16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = dl_f32_to_bf16(src[i]); return 0; }
    default: return -1;
    }
}
