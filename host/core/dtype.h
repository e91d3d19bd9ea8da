/* dtype.h - element types and fp16/bf16 <-> fp32 conversion (round to nearest even). */
#ifndef DANLU_DTYPE_H
#define DANLU_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DL_F32 = 0, DL_F16, DL_BF16, DL_F64,
    DL_I8, DL_U8, DL_I16, DL_U16, DL_I32, DL_U32, DL_I64, DL_U64, DL_BOOL,
    DL_DTYPE_COUNT
} dl_dtype;

/* Size in bytes of one element. */
size_t dl_dtype_size(dl_dtype t);
/* The safetensors name ("F32", "BF16", ...). */
const char *dl_dtype_name(dl_dtype t);
/* Parse a safetensors dtype name; returns 0 and sets *out, or -1 for an unknown name. */
int dl_dtype_parse(const char *name, dl_dtype *out);

static inline float dl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t dl_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* result is subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((ax >> 13) - (112u << 10));
    uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float dl_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t dl_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* n fp16 or bf16 values (dt) at src (any alignment) to fp32, inline for the short runs GEMM
 * packing converts (a weight panel's 14 or 32 values): F16C 8 at a time where the build has it,
 * the tail value by value. Exact. */
static inline void dl_run16_to_f32(float *dst, const void *src, dl_dtype dt, int n)
{
    const char *s = (const char *)src;
    int i = 0;
    if (dt == DL_BF16) {
        for (; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            const uint32_t b = (uint32_t)h << 16;
            memcpy(dst + i, &b, 4);
        }
        return;
    }
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i))));
#endif
    for (; i < n; i++) { /* normal numbers by moving bits; zeros, subnormals, inf, NaN the long way */
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        const uint32_t e = h & 0x7c00u;
        if (e != 0 && e != 0x7c00u) {
            const uint32_t b = ((uint32_t)(h & 0x8000u) << 16) | ((((uint32_t)h & 0x7fffu) << 13) + 0x38000000u);
            memcpy(dst + i, &b, 4);
        } else dst[i] = dl_f16_to_f32(h);
    }
}

/* Convert n elements of src (F32, F16, BF16 or F64) to fp32. Returns 0, or -1 for other types. */
int dl_convert_to_f32(float *dst, const void *src, dl_dtype t, size_t n);
/* Convert n fp32 values to dst of type t (F32, F16, BF16). Returns 0, or -1 for other types. */
int dl_convert_from_f32(void *dst, dl_dtype t, const float *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
