/* common.cuh - what every kernel source includes first, identical in both builds: the CUDA
 * runtime (nvcc) or the SIMT emulator (host C++), the bf16/half types with CUDA's conversions,
 * DL_DYNAMIC_SMEM and a few small helpers. See kernels/simt/simt.h for how to write a kernel
 * that runs in both builds. */
#ifndef DANLU_KERNELS_COMMON_CUH
#define DANLU_KERNELS_COMMON_CUH

#include <stdint.h>

#ifdef __CUDACC__
/* ======================================= real CUDA ============================================ */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

/* `DL_DYNAMIC_SMEM(T, name);` inside a kernel declares `T *name`, the block's dynamic shared
 * memory (the launch's smem_bytes), 16-byte aligned. One per kernel; carve it up by hand. */
#define DL_DYNAMIC_SMEM(T, name)                                                                     \
    extern __shared__ __align__(16) unsigned char dl_dynamic_smem_raw_[];                           \
    T *name = reinterpret_cast<T *>(dl_dynamic_smem_raw_)

#else
/* =================================== the SIMT emulator ======================================== */
#include "simt/simt.h"

#define DL_DYNAMIC_SMEM(T, name) T *name = static_cast<T *>(::simt::dynamic_smem())

/* ---- fp16 / bf16 storage types with CUDA's conversions (round to nearest even) ---- */
struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

/* float -> IEEE binary16 bits, round to nearest even; NaN -> 0x7fff as CUDA does. */
static inline unsigned short simt_f32_to_f16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;                     /* NaN */
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u); /* >= 65520 (and inf) -> inf */
    if (a < 0x38800000u) { /* below 2^-14: a subnormal half (or zero), in units of 2^-24 */
        const uint32_t e = a >> 23;
        if (e < 102) return (unsigned short)sign; /* < 2^-25 rounds to zero */
        const uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t k = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (k & 1u))) k++;
        return (unsigned short)(sign | k);
    }
    uint32_t h = (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ffu);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry rolls into the exponent */
    return (unsigned short)(sign | h);
}
static inline float simt_f16_bits_to_f32(unsigned short h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t u;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
        return sign ? -v : v;
    }
    if (e == 31) u = m ? 0x7fffffffu : sign | 0x7f800000u; /* NaN -> canonical 0x7fffffff, as CUDA */
    else u = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* float -> bfloat16 bits, round to nearest even; NaN -> 0x7fff as CUDA does. */
static inline unsigned short simt_f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float simt_bf16_bits_to_f32(unsigned short b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct __align__(2) __half {
    unsigned short __x;
    __half() = default;
    __half(const __half_raw &r) : __x(r.x) {}
    __half(float f) : __x(simt_f32_to_f16_bits(f)) {}
    __half(double f) : __x(simt_f32_to_f16_bits((float)f)) {}
    __half(int v) : __x(simt_f32_to_f16_bits((float)v)) {}
    __half(unsigned v) : __x(simt_f32_to_f16_bits((float)v)) {}
    __half(long long v) : __x(simt_f32_to_f16_bits((float)v)) {}
    __half(unsigned long long v) : __x(simt_f32_to_f16_bits((float)v)) {}
    operator float() const { return simt_f16_bits_to_f32(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
};
struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(simt_f32_to_bf16_bits(f)) {}
    __nv_bfloat16(double f) : __x(simt_f32_to_bf16_bits((float)f)) {}
    __nv_bfloat16(int v) : __x(simt_f32_to_bf16_bits((float)v)) {}
    __nv_bfloat16(unsigned v) : __x(simt_f32_to_bf16_bits((float)v)) {}
    __nv_bfloat16(long long v) : __x(simt_f32_to_bf16_bits((float)v)) {}
    __nv_bfloat16(unsigned long long v) : __x(simt_f32_to_bf16_bits((float)v)) {}
    operator float() const { return simt_bf16_bits_to_f32(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;
struct __align__(4) __half2 { __half x, y; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half2 half2;
typedef __nv_bfloat162 nv_bfloat162;

static inline __half simt_mk_half(unsigned short b) { __half h; h.__x = b; return h; }
static inline __nv_bfloat16 simt_mk_bf16(unsigned short b) { __nv_bfloat16 h; h.__x = b; return h; }

static inline __half __float2half(float f) { return simt_mk_half(simt_f32_to_f16_bits(f)); }
static inline __half __float2half_rn(float f) { return __float2half(f); }
static inline float __half2float(__half h) { return simt_f16_bits_to_f32(h.__x); }
static inline __nv_bfloat16 __float2bfloat16(float f) { return simt_mk_bf16(simt_f32_to_bf16_bits(f)); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 b) { return simt_bf16_bits_to_f32(b.__x); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __ushort_as_half(unsigned short b) { return simt_mk_half(b); }
static inline __half __short_as_half(short b) { return simt_mk_half((unsigned short)b); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return simt_mk_bf16(b); }
static inline __nv_bfloat16 __short_as_bfloat16(short b) { return simt_mk_bf16((unsigned short)b); }

static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half(a), __float2half(b)}; }
static inline __half2 __float2half2_rn(float a) { return __half2{__float2half(a), __float2half(a)}; }
static inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__float2bfloat16(a), __float2bfloat16(b)}; }
static inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __floats2bfloat162_rn(a, a); }
static inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
static inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
static inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
static inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
static inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
static inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
static inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }

/* Arithmetic and comparisons as CUDA defines them: computed in float, rounded once (exact for
 * + - * of two halves / bfloat16s: float holds the exact product or sum before rounding). */
#define SIMT_LOWP_OPS(T, TO, FROM)                                                                  \
    static inline T operator+(const T &a, const T &b) { return FROM(TO(a) + TO(b)); }              \
    static inline T operator-(const T &a, const T &b) { return FROM(TO(a) - TO(b)); }              \
    static inline T operator*(const T &a, const T &b) { return FROM(TO(a) * TO(b)); }              \
    static inline T operator/(const T &a, const T &b) { return FROM(TO(a) / TO(b)); }              \
    static inline T &operator+=(T &a, const T &b) { return a = a + b; }                            \
    static inline T &operator-=(T &a, const T &b) { return a = a - b; }                            \
    static inline T &operator*=(T &a, const T &b) { return a = a * b; }                            \
    static inline T &operator/=(T &a, const T &b) { return a = a / b; }                            \
    static inline T operator-(const T &a) { T r = a; r.__x ^= 0x8000u; return r; }                \
    static inline T operator+(const T &a) { return a; }                                             \
    static inline bool operator==(const T &a, const T &b) { return TO(a) == TO(b); }               \
    static inline bool operator!=(const T &a, const T &b) { return TO(a) != TO(b); }               \
    static inline bool operator<(const T &a, const T &b) { return TO(a) < TO(b); }                 \
    static inline bool operator>(const T &a, const T &b) { return TO(a) > TO(b); }                 \
    static inline bool operator<=(const T &a, const T &b) { return TO(a) <= TO(b); }               \
    static inline bool operator>=(const T &a, const T &b) { return TO(a) >= TO(b); }               \
    static inline T __hadd(T a, T b) { return a + b; }                                              \
    static inline T __hsub(T a, T b) { return a - b; }                                              \
    static inline T __hmul(T a, T b) { return a * b; }                                              \
    static inline T __hdiv(T a, T b) { return a / b; }                                              \
    static inline T __hfma(T a, T b, T c) { return FROM(fmaf(TO(a), TO(b), TO(c))); }              \
    static inline T __hneg(T a) { return -a; }                                                      \
    static inline T __habs(T a) { T r = a; r.__x &= 0x7fffu; return r; }                           \
    static inline T __hmax(T a, T b) { return FROM(fmaxf(TO(a), TO(b))); }                          \
    static inline T __hmin(T a, T b) { return FROM(fminf(TO(a), TO(b))); }                          \
    static inline bool __hisnan(T a) { return TO(a) != TO(a); }                                     \
    static inline int __hisinf(T a) { float f = TO(a); return f == INFINITY ? 1 : f == -INFINITY ? -1 : 0; }
SIMT_LOWP_OPS(__half, __half2float, __float2half)
SIMT_LOWP_OPS(__nv_bfloat16, __bfloat162float, __float2bfloat16)
#undef SIMT_LOWP_OPS

#endif /* __CUDACC__ */

/* ======================================= both builds ========================================== */
/* Loop unrolling hints: write DL_UNROLL or DL_UNROLL_N(4) on the line before a `for` (a bare
 * `#pragma unroll` breaks the host build: GCC warns about unknown pragmas under -Wall). */
#define DL_PRAGMA_(x) _Pragma(#x)
#ifdef __CUDACC__
#define DL_UNROLL DL_PRAGMA_(unroll)
#define DL_UNROLL_N(n) DL_PRAGMA_(unroll n)
#else
#define DL_UNROLL
#define DL_UNROLL_N(n) DL_PRAGMA_(GCC unroll n)
#endif

#define DL_WARP_SIZE 32
#define DL_FULL_MASK 0xffffffffu

/* fp32 view of a stored element, and rounding (nearest even) of fp32 to a storage type. */
static __host__ __device__ __forceinline__ float dl_to_float(float x) { return x; }
static __host__ __device__ __forceinline__ float dl_to_float(__half x) { return __half2float(x); }
static __host__ __device__ __forceinline__ float dl_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __host__ __device__ __forceinline__ T dl_from_float(float x);
template <> __host__ __device__ __forceinline__ float dl_from_float<float>(float x) { return x; }
template <> __host__ __device__ __forceinline__ __half dl_from_float<__half>(float x) { return __float2half_rn(x); }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 dl_from_float<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* ceil(a / b) for positive integers. */
static __host__ __device__ __forceinline__ int64_t dl_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Sum / max over the 32 lanes of a full warp (every lane gets the result). */
static __device__ __forceinline__ float dl_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DL_FULL_MASK, v, o);
    return v;
}
static __device__ __forceinline__ float dl_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(DL_FULL_MASK, v, o));
    return v;
}

#endif
