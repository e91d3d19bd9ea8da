/* dtype.c - element type table and bulk conversions. */
#include "dtype.h"

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

/* fp16 / bf16 -> fp32 of n values through dl_run16_to_f32 (dtype.h), in runs an int holds. */
static void run16_to_f32(float *dst, const char *s, dl_dtype t, size_t n)
{
    for (size_t i = 0; i < n; i += (size_t)1 << 30) {
        const size_t m = n - i < ((size_t)1 << 30) ? n - i : ((size_t)1 << 30);
        dl_run16_to_f32(dst + i, s + 2 * i, t, (int)m);
    }
}

int dl_convert_to_f32(float *dst, const void *src, dl_dtype t, size_t n)
{
    switch (t) {
    case DL_F32: memmove(dst, src, n * 4); return 0;
    /* sources may be unaligned (safetensors does not promise alignment): load through memcpy */
    case DL_F16:
    case DL_BF16: run16_to_f32(dst, src, t, n); return 0;
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
