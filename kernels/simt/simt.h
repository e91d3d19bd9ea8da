/* simt.h - the SIMT emulator: compiles danlu's CUDA kernel sources (kernels/<name>.cu) with the host
 * C++17 compiler and runs them on the CPU, so CI without a GPU runs the real kernels.
 *
 * ---- How to write a kernel for both builds ---------------------------------------------------
 *  - Include "common.cuh" (types, bf16/half, DL_DYNAMIC_SMEM) and "launch.cuh" (DL_LAUNCH,
 *    DL_CUDA_CHECK) first; never include CUDA headers directly in portable kernels. Under nvcc
 *    they pull in the CUDA runtime; otherwise (no __CUDACC__) they pull in this header, which
 *    defines DL_SIMT=1. Do not test __CUDA_ARCH__ to pick the portable path.
 *  - Launch only with DL_LAUNCH(kernel, grid, block, smem_bytes, stream, args...); a template
 *    kernel whose argument list has a comma goes in parentheses: DL_LAUNCH((k<T, D>), ...).
 *    DL_LAUNCH checks cudaGetLastError() and aborts naming the kernel, file and line.
 *  - Dynamic shared memory: `DL_DYNAMIC_SMEM(float, buf);` inside the kernel declares
 *    `float *buf` (16-byte aligned). Never write `extern __shared__` yourself. Dynamic shared
 *    memory above 48 KiB needs cudaFuncSetAttribute(kernel,
 *    cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first, in both builds.
 *  - Static `__shared__ T x[N];` works as in CUDA (per block). Shared memory starts with garbage:
 *    under the emulator every block starts with its dynamic and static shared memory filled with
 *    0xFF bytes (NaN floats), so a read before the block's own write shows.
 *  - Use bf16/half only through the CUDA functions (__float2bfloat16, __bfloat162float, ...) or
 *    the dl_to_float / dl_from_float<T> helpers of common.cuh; do math in float.
 *  - Warp intrinsics: the *_sync forms only, with a mask naming the lanes that call them; the
 *    warp size is 32. The emulator treats them as collective (all non-exited lanes of the mask
 *    must call the same intrinsic with the same mask). Reading a lane that does not take part
 *    (exited, outside the mask or past the end of the block) yields all-ones bits (NaN floats).
 *  - __syncthreads() must be reached by every thread of the block at the same call site
 *    (file:line); an early `return` before it, or threads at different __syncthreads(), make the
 *    launch fail with cudaErrorLaunchFailure and a message naming the kernel (instead of UB).
 *  - Unrolling hints are DL_UNROLL / DL_UNROLL_N(n) (common.cuh), not `#pragma unroll`, which
 *    GCC rejects under -Wall -Werror.
 *  - No inline PTX, no cooperative groups, no dynamic parallelism, no __CUDA_ARCH__-only paths,
 *    no `printf` of huge volumes; atomics: atomicAdd/Sub/Exch/Min/Max/CAS/And/Or/Xor/Inc/Dec.
 *  - Tests: one tests/kernels/test_<family>.cpp includes the kernel source ("attention.cu") and
 *    calls its C-ABI launchers on host memory; a .cu may be included by one test file only
 *    (kernels are ordinary external functions under the emulator).
 *
 * ---- How it runs -----------------------------------------------------------------------------
 *  Header-only (inline functions and variables; nothing to link but -pthread, which danlu_host
 *  already brings). Launches are synchronous and serialized: the blocks of a grid are shared by
 *  the launching thread and SIMT_THREADS-1 persistent worker threads (SIMT_THREADS defaults to
 *  DANLU_THREADS, else 2), so atomics between blocks really race. One OS thread runs one block
 *  at a time, to its end, hence `__shared__` is `static thread_local`: private to the block
 *  while it runs. The threads of a block are fibers (own stack: 64 KiB, 256 KiB under ASan, or
 *  SIMT_STACK_KB; guard pages below) on that OS thread, run in turn; a fiber gives up the CPU
 *  only at __syncthreads, a warp intrinsic or its end, so barrier-free kernels run thread after
 *  thread on one reused fiber (about 7 ns of CPU per thread; a barrier or shuffle costs about
 *  40 ns per thread). To expose missing __syncthreads, the order in which threads run between
 *  barriers alternates between ascending and descending thread index with block and barrier
 *  phase (SIMT_ORDER=forward|reverse|mixed, default mixed). SIMT_ORDER=random (seed SIMT_SEED,
 *  or simt::set_order("random", seed)) runs the threads in a random order between barriers, each
 *  against shared memory as it stood at the last barrier plus its own writes (and, after a warp
 *  intrinsic, its warp's), as if all ran at once: a shared-memory read-modify-write from several
 *  threads loses updates, a missing __syncthreads reads garbage, and two threads writing one byte
 *  between barriers fail the launch as a race (slow: it images shared memory per thread switch).
 *  Static shared memory is the TLS section "simt_tshared"; it and the dynamic shared memory are
 *  filled with 0xFF before every block. Context switches are a few x86-64
 *  instructions (ucontext elsewhere, or with -DSIMT_USE_UCONTEXT), annotated for
 *  AddressSanitizer; dynamic shared memory is a malloc of exactly smem_bytes, so ASan catches
 *  overruns. A segmentation fault inside a kernel prints the kernel, block and thread first.
 *
 * ---- For tests -------------------------------------------------------------------------------
 *  simt::launch(name, kernel, grid, block, smem, stream, args...) launches without aborting and
 *  returns the cudaError_t (also kept for cudaGetLastError()); cudaGetErrorString() of that code
 *  returns the emulator's message (kernel, grid, block, cause), as does
 *  simt::last_error_message(). */
#ifndef DANLU_SIMT_H
#define DANLU_SIMT_H

#ifdef __CUDACC__
#error "simt.h is the CPU emulator of CUDA; under nvcc include common.cuh instead"
#endif

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <link.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if !defined(__x86_64__) && !defined(SIMT_USE_UCONTEXT)
#define SIMT_USE_UCONTEXT 1
#endif
#ifdef SIMT_USE_UCONTEXT
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#ifdef SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define DL_SIMT 1

/* ================================ CUDA qualifiers and built-ins ================================ */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
/* Per block: each OS thread runs one block at a time, all of its threads (fibers) in turn. Every
 * static __shared__ variable lives in the thread-local section "simt_tshared", which the emulator
 * fills with 0xFF bytes before each block (see simt::detail::static_smem()). */
#define __shared__ __attribute__((section("simt_tshared"))) static thread_local

struct uint3 { unsigned int x, y, z; };
struct int3 { int x, y, z; };
struct float3 { float x, y, z; };
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
struct __align__(16) double2 { double x, y; };
struct __align__(16) longlong2 { long long x, y; };
struct __align__(4) ushort2 { unsigned short x, y; };
struct __align__(8) ushort4 { unsigned short x, y, z, w; };
struct __align__(4) char4 { signed char x, y, z, w; };
struct __align__(4) uchar4 { unsigned char x, y, z, w; };

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
static inline double2 make_double2(double x, double y) { return double2{x, y}; }

inline constexpr int warpSize = 32;

namespace simt {
namespace detail {
inline thread_local uint3 t_thread_idx;
inline thread_local uint3 t_block_idx;
inline thread_local uint3 t_block_dim;
inline thread_local uint3 t_grid_dim;
} // namespace detail
} // namespace simt

#define threadIdx (static_cast<const uint3 &>(::simt::detail::t_thread_idx))
#define blockIdx (static_cast<const uint3 &>(::simt::detail::t_block_idx))
#define blockDim (static_cast<const uint3 &>(::simt::detail::t_block_dim))
#define gridDim (static_cast<const uint3 &>(::simt::detail::t_grid_dim))

/* ================================ math and bit intrinsics ====================================== */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
/* __expf, __logf, __log2f, __log10f, __exp10f, __powf, __sinf, __cosf, __tanf, __sincosf: glibc
 * declares them (they are its own implementations of the same functions). */
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fadd_rn(float x, float y) { return x + y; }
static inline float __fsub_rn(float x, float y) { return x - y; }
static inline float __fmul_rn(float x, float y) { return x * y; }
static inline float __fdiv_rn(float x, float y) { return x / y; }
static inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline int __float_as_int(float x) { int r; memcpy(&r, &x, 4); return r; }
static inline unsigned __float_as_uint(float x) { unsigned r; memcpy(&r, &x, 4); return r; }
static inline float __int_as_float(int x) { float r; memcpy(&r, &x, 4); return r; }
static inline float __uint_as_float(unsigned x) { float r; memcpy(&r, &x, 4); return r; }
static inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, 8); return r; }
static inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, 8); return r; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x)
{
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static inline int __mul24(int x, int y) { return x * y; }
static inline unsigned __umul24(unsigned x, unsigned y) { return x * y; }
static inline int __mulhi(int x, int y) { return (int)(((long long)x * y) >> 32); }
static inline unsigned __umulhi(unsigned x, unsigned y) { return (unsigned)(((unsigned long long)x * y) >> 32); }
static inline long long clock64(void)
{
    return (long long)std::chrono::steady_clock::now().time_since_epoch().count();
}
static inline void __nanosleep(unsigned ns) { (void)ns; }
[[noreturn]] static inline void __trap(void)
{
    fprintf(stderr, "simt: __trap() called in a kernel\n");
    abort();
}

/* CUDA's integer and float min/max overloads (device code has them at global scope). */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

/* Read-only / streaming loads and stores are ordinary memory accesses. */
template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
template <typename T> static inline T __ldca(const T *p) { return *p; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
template <typename T> static inline T __ldlu(const T *p) { return *p; }
template <typename T> static inline void __stcg(T *p, T v) { *p = v; }
template <typename T> static inline void __stcs(T *p, T v) { *p = v; }
template <typename T> static inline void __stwb(T *p, T v) { *p = v; }

/* ================================ atomics (relaxed, device scope) ============================== */
#define SIMT_RLX __ATOMIC_RELAXED
static inline int atomicAdd(int *a, int v) { return __atomic_fetch_add(a, v, SIMT_RLX); }
static inline unsigned atomicAdd(unsigned *a, unsigned v) { return __atomic_fetch_add(a, v, SIMT_RLX); }
static inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) { return __atomic_fetch_add(a, v, SIMT_RLX); }
template <typename F> static inline F simt_atomic_float_add_(F *a, F v)
{
    F old, nw;
    __atomic_load(a, &old, SIMT_RLX);
    do {
        nw = old + v;
    } while (!__atomic_compare_exchange(a, &old, &nw, true, SIMT_RLX, SIMT_RLX));
    return old;
}
static inline float atomicAdd(float *a, float v) { return simt_atomic_float_add_(a, v); }
static inline double atomicAdd(double *a, double v) { return simt_atomic_float_add_(a, v); }
static inline int atomicSub(int *a, int v) { return __atomic_fetch_sub(a, v, SIMT_RLX); }
static inline unsigned atomicSub(unsigned *a, unsigned v) { return __atomic_fetch_sub(a, v, SIMT_RLX); }
static inline int atomicExch(int *a, int v) { return __atomic_exchange_n(a, v, SIMT_RLX); }
static inline unsigned atomicExch(unsigned *a, unsigned v) { return __atomic_exchange_n(a, v, SIMT_RLX); }
static inline unsigned long long atomicExch(unsigned long long *a, unsigned long long v) { return __atomic_exchange_n(a, v, SIMT_RLX); }
static inline float atomicExch(float *a, float v) { float r; __atomic_exchange(a, &v, &r, SIMT_RLX); return r; }
template <typename I> static inline I simt_atomic_minmax_(I *a, I v, bool is_max)
{
    I old = __atomic_load_n(a, SIMT_RLX);
    while ((is_max ? v > old : v < old) && !__atomic_compare_exchange_n(a, &old, v, true, SIMT_RLX, SIMT_RLX)) {
    }
    return old;
}
static inline int atomicMax(int *a, int v) { return simt_atomic_minmax_(a, v, true); }
static inline int atomicMin(int *a, int v) { return simt_atomic_minmax_(a, v, false); }
static inline unsigned atomicMax(unsigned *a, unsigned v) { return simt_atomic_minmax_(a, v, true); }
static inline unsigned atomicMin(unsigned *a, unsigned v) { return simt_atomic_minmax_(a, v, false); }
static inline long long atomicMax(long long *a, long long v) { return simt_atomic_minmax_(a, v, true); }
static inline long long atomicMin(long long *a, long long v) { return simt_atomic_minmax_(a, v, false); }
static inline unsigned long long atomicMax(unsigned long long *a, unsigned long long v) { return simt_atomic_minmax_(a, v, true); }
static inline unsigned long long atomicMin(unsigned long long *a, unsigned long long v) { return simt_atomic_minmax_(a, v, false); }
template <typename I> static inline I simt_atomic_cas_(I *a, I cmp, I v)
{
    __atomic_compare_exchange_n(a, &cmp, v, false, SIMT_RLX, SIMT_RLX);
    return cmp; /* the old value whether or not it matched */
}
static inline int atomicCAS(int *a, int cmp, int v) { return simt_atomic_cas_(a, cmp, v); }
static inline unsigned atomicCAS(unsigned *a, unsigned cmp, unsigned v) { return simt_atomic_cas_(a, cmp, v); }
static inline unsigned long long atomicCAS(unsigned long long *a, unsigned long long cmp, unsigned long long v) { return simt_atomic_cas_(a, cmp, v); }
static inline unsigned short atomicCAS(unsigned short *a, unsigned short cmp, unsigned short v) { return simt_atomic_cas_(a, cmp, v); }
static inline int atomicAnd(int *a, int v) { return __atomic_fetch_and(a, v, SIMT_RLX); }
static inline unsigned atomicAnd(unsigned *a, unsigned v) { return __atomic_fetch_and(a, v, SIMT_RLX); }
static inline unsigned long long atomicAnd(unsigned long long *a, unsigned long long v) { return __atomic_fetch_and(a, v, SIMT_RLX); }
static inline int atomicOr(int *a, int v) { return __atomic_fetch_or(a, v, SIMT_RLX); }
static inline unsigned atomicOr(unsigned *a, unsigned v) { return __atomic_fetch_or(a, v, SIMT_RLX); }
static inline unsigned long long atomicOr(unsigned long long *a, unsigned long long v) { return __atomic_fetch_or(a, v, SIMT_RLX); }
static inline int atomicXor(int *a, int v) { return __atomic_fetch_xor(a, v, SIMT_RLX); }
static inline unsigned atomicXor(unsigned *a, unsigned v) { return __atomic_fetch_xor(a, v, SIMT_RLX); }
static inline unsigned long long atomicXor(unsigned long long *a, unsigned long long v) { return __atomic_fetch_xor(a, v, SIMT_RLX); }
/* ((old >= limit) ? 0 : old + 1) and (((old == 0) || (old > limit)) ? limit : old - 1). */
static inline unsigned atomicInc(unsigned *a, unsigned limit)
{
    unsigned old = __atomic_load_n(a, SIMT_RLX);
    while (!__atomic_compare_exchange_n(a, &old, old >= limit ? 0u : old + 1u, true, SIMT_RLX, SIMT_RLX)) {
    }
    return old;
}
static inline unsigned atomicDec(unsigned *a, unsigned limit)
{
    unsigned old = __atomic_load_n(a, SIMT_RLX);
    while (!__atomic_compare_exchange_n(a, &old, (old == 0u || old > limit) ? limit : old - 1u, true, SIMT_RLX,
                                        SIMT_RLX)) {
    }
    return old;
}
#undef SIMT_RLX
static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* Within a block, threads only switch at barriers and warp intrinsics: a compiler barrier is enough. */
static inline void __threadfence_block(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/* ================================ runtime API types ============================================ */
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719,
    cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
struct CUstream_st;
typedef struct CUstream_st *cudaStream_t;
struct CUevent_st;
typedef struct CUevent_st *cudaEvent_t;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    size_t sharedMemPerMultiprocessor;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int multiProcessorCount;
    int maxThreadsPerMultiProcessor;
    int major;
    int minor;
};

/* ================================ the emulator core ============================================ */
namespace simt {
namespace detail {

enum class TState : unsigned char { Ready, Barrier, Warp, Done };
enum class WKind : unsigned char {
    ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp,
    RedAddU, RedMinU, RedMaxU, RedMinI, RedMaxI, RedAnd, RedOr, RedXor,
};
inline const char *wkind_name(WKind k)
{
    static const char *const names[] = {
        "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
        "__any_sync", "__all_sync", "__syncwarp", "__reduce_add_sync", "__reduce_min_sync",
        "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
        "__reduce_or_sync", "__reduce_xor_sync",
    };
    return names[(int)k];
}

struct Fiber {
#ifdef SIMT_USE_UCONTEXT
    ucontext_t uc;
#else
    void *sp = nullptr; /* saved stack pointer while suspended */
#endif
    char *stack_lo = nullptr; /* lowest usable byte (a guard page lies below) */
    size_t stack_size = 0;
    void *asan_fake = nullptr;
};

struct SimThread {
    uint3 tid;
    TState state;
    Fiber *fiber;
    /* __syncthreads */
    const char *bar_file;
    int bar_line;
    int bar_pred;
    /* warp intrinsic */
    WKind kind;
    unsigned mask;
    unsigned arg;
    int width;
    unsigned long long value, result;
    bool fresh; /* SIMT_ORDER=random: next segment starts from the barrier image */
};

struct LaunchCtx;

struct Worker { /* one per OS thread that runs blocks */
#ifdef SIMT_USE_UCONTEXT
    ucontext_t sched_uc;
#else
    void *sched_sp = nullptr;
#endif
    const void *sched_stack_lo = nullptr;
    size_t sched_stack_size = 0;
    std::vector<Fiber *> free_fibers;
    std::vector<SimThread> threads;
    std::vector<unsigned> queue; /* ring of runnable thread indices */
    size_t qhead = 0, qcount = 0;
    SimThread *cur = nullptr;
    LaunchCtx *launch = nullptr;
    unsigned n = 0;          /* threads in the block */
    unsigned done = 0;       /* threads that returned */
    unsigned at_barrier = 0; /* threads waiting at __syncthreads */
    unsigned bar_true = 0;   /* ... whose predicate was non-zero */
    unsigned in_warp_op = 0; /* threads waiting in warp intrinsics */
    std::vector<unsigned> warp_wait, warp_done; /* per warp: lanes in a warp intrinsic / exited */
    const char *bar_file = nullptr;
    int bar_line = 0;
    unsigned phase = 0;
    unsigned long long block_linear = 0;
    unsigned long long run_serial = 0; /* unique per block run, process-wide (models keyed on it) */
    unsigned char *dyn_smem = nullptr;
    bool failed = false;
    std::string err;
    /* SIMT_ORDER=random (see struct Shadow below) */
    uint64_t rng = 0;
    std::vector<unsigned> perm, all_idx;
    std::vector<unsigned> warp_epoch;
    unsigned char *sstat = nullptr; /* this OS thread's static shared section */
    size_t sstat_size = 0;
    std::vector<unsigned char> img_bar, img_merged; /* shared memory at the barrier / merged */
    /* per warp: the barrier image plus its lanes' writes since (valid when img_warp_phase == phase) */
    std::vector<std::vector<unsigned char>> img_warp;
    std::vector<unsigned> img_warp_phase;
    std::unordered_map<size_t, unsigned long long> owner; /* byte -> (thread << 32 | warp epoch) + 1 */
};

inline thread_local Worker *t_worker = nullptr;

struct LaunchCtx {
    const char *name;
    void (*body)(void *);
    void *arg;
    uint3 grid, block;
    size_t smem;
    unsigned long long nblocks;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    std::string err;
};

struct Config {
    int threads = 2;
    size_t stack_bytes = 0;
    int order = 2; /* 0 forward, 1 reverse, 2 mixed, 3 random */
    unsigned long long seed = 1;
};
/* Run-time override of SIMT_ORDER / SIMT_SEED (simt::set_order); -1: the environment's. */
inline std::atomic<int> order_override{-1};
inline std::atomic<unsigned long long> seed_override{0};
inline const Config &config()
{
    static const Config cfg = [] {
        Config c;
        if (const char *s = getenv("SIMT_THREADS")) c.threads = std::max(1, atoi(s));
        else if (const char *d = getenv("DANLU_THREADS")) c.threads = std::max(1, atoi(d));
#ifdef SIMT_ASAN
        size_t kb = 256;
#else
        size_t kb = 64;
#endif
        if (const char *s = getenv("SIMT_STACK_KB")) kb = (size_t)std::max(16, atoi(s));
        c.stack_bytes = kb * 1024;
        if (const char *s = getenv("SIMT_ORDER"))
            c.order = !strcmp(s, "forward") ? 0 : !strcmp(s, "reverse") ? 1 : !strcmp(s, "random") ? 3 : 2;
        if (const char *s = getenv("SIMT_SEED")) c.seed = strtoull(s, nullptr, 0);
        return c;
    }();
    return cfg;
}
inline int order()
{
    int o = order_override.load(std::memory_order_relaxed);
    return o >= 0 ? o : config().order;
}
inline unsigned long long seed()
{
    unsigned long long s = seed_override.load(std::memory_order_relaxed);
    return s ? s : config().seed;
}

[[noreturn]] inline void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
inline void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "simt: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* ---- context switching ---- */
#ifndef SIMT_USE_UCONTEXT
/* Saves the callee-saved registers on the current stack, stores the stack pointer in *save and
 * resumes the context whose stack pointer is `to` (x86-64 System V). noipa: callers must treat it
 * as an unknown function that clobbers every caller-saved register and all memory (GCC would
 * otherwise analyse the naked body, e.g. for IPA register allocation). */
#if defined(__clang__)
#define SIMT_NOIPA
#else
#define SIMT_NOIPA noipa,
#endif
__attribute__((SIMT_NOIPA naked, noinline)) inline void simt_switch(void ** /* save */, void * /* to */)
{
    __asm__ volatile("pushq %rbp\n\t"
                     "pushq %rbx\n\t"
                     "pushq %r12\n\t"
                     "pushq %r13\n\t"
                     "pushq %r14\n\t"
                     "pushq %r15\n\t"
                     "movq %rsp, (%rdi)\n\t"
                     "movq %rsi, %rsp\n\t"
                     "popq %r15\n\t"
                     "popq %r14\n\t"
                     "popq %r13\n\t"
                     "popq %r12\n\t"
                     "popq %rbx\n\t"
                     "popq %rbp\n\t"
                     "ret\n\t");
}
#endif

inline void fiber_main();

inline void fiber_init(Fiber *f)
{
#ifdef SIMT_ASAN
    __asan_unpoison_memory_region(f->stack_lo, f->stack_size);
#endif
    f->asan_fake = nullptr;
#ifdef SIMT_USE_UCONTEXT
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack_lo;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_main, 0);
#else
    uintptr_t top = ((uintptr_t)f->stack_lo + f->stack_size) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;                        /* fake return address of fiber_main */
    *--sp = (void *)(void (*)())fiber_main; /* popped by `ret` */
    for (int i = 0; i < 6; i++) *--sp = nullptr; /* rbp rbx r12 r13 r14 r15 */
    f->sp = sp;
#endif
}

inline Fiber *fiber_new()
{
    static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t size = (config().stack_bytes + page - 1) / page * page;
    const size_t guard = 16 * page;
    void *mem = mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) die("cannot map a %zu-byte fiber stack", size + guard);
    mprotect(mem, guard, PROT_NONE); /* guard pages: an overflow faults instead of corrupting */
    Fiber *f = new Fiber();
    f->stack_lo = (char *)mem + guard;
    f->stack_size = size;
    fiber_init(f);
    return f;
}

/* Scheduler -> fiber. Returns when the fiber yields. */
inline void resume(Worker &w, Fiber *f)
{
#ifdef SIMT_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack_lo, f->stack_size);
#endif
#ifdef SIMT_USE_UCONTEXT
    swapcontext(&w.sched_uc, &f->uc);
#else
    simt_switch(&w.sched_sp, f->sp);
#endif
#ifdef SIMT_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

/* Fiber -> scheduler. Returns when the scheduler resumes this fiber. */
inline void yield(Worker &w)
{
    Fiber *f = w.cur->fiber;
#ifdef SIMT_ASAN
    __sanitizer_start_switch_fiber(&f->asan_fake, w.sched_stack_lo, w.sched_stack_size);
#endif
#ifdef SIMT_USE_UCONTEXT
    swapcontext(&f->uc, &w.sched_uc);
#else
    simt_switch(&f->sp, w.sched_sp);
#endif
#ifdef SIMT_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, &w.sched_stack_lo, &w.sched_stack_size);
#endif
}

/* SIGSEGV/SIGBUS while a kernel thread runs: say which kernel, block and thread, and whether
 * the address is a fiber's guard page (stack overflow: raise SIMT_STACK_KB); then die as usual.
 * Installed only where nobody else handles the signal (not under ASan, which reports itself). */
inline void crash_handler(int sig, siginfo_t *si, void *)
{
    Worker *w = t_worker;
    if (w && w->launch && w->cur) {
        const char *a = (const char *)si->si_addr;
        const Fiber *f = w->cur->fiber;
        const bool guard = f && a >= f->stack_lo - (1 << 20) && a < f->stack_lo; /* in or below the guard */
        char msg[768];
        int n = snprintf(msg, sizeof msg, "simt: %s in kernel '%s', block (%u,%u,%u), thread (%u,%u,%u), address %p%s\n",
                         sig == SIGSEGV ? "segmentation fault" : "bus error", w->launch->name, t_block_idx.x,
                         t_block_idx.y, t_block_idx.z, w->cur->tid.x, w->cur->tid.y, w->cur->tid.z, si->si_addr,
                         guard ? ": probably a fiber stack overflow (raise SIMT_STACK_KB)" : "");
        if (n > 0) (void)!write(2, msg, (size_t)std::min(n, (int)sizeof msg - 1));
    }
    signal(sig, SIG_DFL); /* the faulting instruction runs again and kills the process */
}

inline void install_crash_handler()
{
#ifndef SIMT_ASAN
    static std::once_flag once;
    std::call_once(once, [] {
        for (int sig : {SIGSEGV, SIGBUS}) {
            struct sigaction old;
            if (sigaction(sig, nullptr, &old) != 0 || (old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = crash_handler;
            sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
            sigemptyset(&sa.sa_mask);
            sigaction(sig, &sa, nullptr);
        }
    });
    /* the handler needs a stack of its own when a fiber stack overflows */
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
        stack_t st;
        st.ss_size = 64 * 1024;
        st.ss_sp = malloc(st.ss_size); /* kept for the thread's life */
        st.ss_flags = 0;
        if (st.ss_sp) sigaltstack(&st, nullptr);
    }
#endif
}

/* ---- static shared memory ----
 * Every static __shared__ variable is placed in the ELF section "simt_tshared" of the thread-local
 * storage image. The executable's TLS block lies just below the thread pointer (x86-64, TLS variant
 * II), so this OS thread's copy of the section is found from the PT_TLS segment and the section's
 * link-time bounds; it is checked against a variable known to be in the section, and poisoning is
 * off (with a warning) where the layout is not the expected one. */
} // namespace detail
} // namespace simt
extern "C" char __start_simt_tshared[] __attribute__((weak));
extern "C" char __stop_simt_tshared[] __attribute__((weak));
namespace simt {
namespace detail {
/* One per translation unit (internal linkage: a COMDAT variable would conflict with the section's
 * other members); it makes sure the section exists and checks where it was found. */
__attribute__((section("simt_tshared"))) static thread_local unsigned char shared_anchor[16];

struct TlsLayout {
    bool ok = false;
    size_t sec_off = 0, sec_size = 0, block_size = 0; /* section offset in the TLS block; block size */
};
inline int tls_phdr_cb(struct dl_phdr_info *info, size_t, void *data)
{
    TlsLayout *L = static_cast<TlsLayout *>(data);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) &ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_TLS) continue;
        const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, sec = (uintptr_t)__start_simt_tshared;
        if (sec < lo || sec >= lo + ph.p_memsz) continue;
        if (info->dlpi_name && info->dlpi_name[0]) return 1; /* a shared object: dynamic TLS, not handled */
        const size_t align = ph.p_align ? ph.p_align : 1, first = ph.p_vaddr & (align - 1);
        L->sec_off = sec - lo;
        L->sec_size = (size_t)(__stop_simt_tshared - __start_simt_tshared);
        L->block_size = (ph.p_memsz + first + align - 1) / align * align - first;
        L->ok = true;
        return 1;
    }
    return 0;
}
struct StaticSmem {
    unsigned char *base = nullptr;
    size_t size = 0;
};
/* This OS thread's static shared memory (base NULL where it cannot be located). */
inline StaticSmem static_smem()
{
    static const TlsLayout layout = [] {
        TlsLayout L;
#if defined(__x86_64__)
        if (+__start_simt_tshared && +__stop_simt_tshared > +__start_simt_tshared) dl_iterate_phdr(tls_phdr_cb, &L);
#endif
        return L;
    }();
    thread_local StaticSmem r = [] {
        StaticSmem m;
#if defined(__x86_64__)
        if (layout.ok) {
            uintptr_t tp;
            __asm__("movq %%fs:0, %0" : "=r"(tp));
            unsigned char *b = (unsigned char *)(tp - layout.block_size + layout.sec_off);
            unsigned char *a = shared_anchor;
            if (a >= b && a + sizeof shared_anchor <= b + layout.sec_size) {
                m.base = b;
                m.size = layout.sec_size;
            }
        }
#endif
        if (!m.base) {
            static std::once_flag warned;
            std::call_once(warned, [] {
                fprintf(stderr, "simt: static __shared__ memory not located in this build: it is not poisoned\n");
            });
        }
        return m;
    }();
    return r;
}

inline Worker &this_worker()
{
    if (!t_worker) {
        t_worker = new Worker(); /* reachable through TLS for the thread's life */
        install_crash_handler();
    }
    return *t_worker;
}

inline Worker &in_kernel(const char *what)
{
    Worker *w = t_worker;
    if (!w || !w->cur) die("%s called outside a kernel", what);
    return *w;
}

/* ---- block-level errors ---- */
inline void vfail(Worker &w, const char *fmt, va_list ap)
{
    if (w.failed) return;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const LaunchCtx &L = *w.launch;
    char head[512];
    snprintf(head, sizeof head, "kernel '%s' (grid (%u,%u,%u), block (%u,%u,%u)), block (%u,%u,%u): ", L.name,
             L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z, t_block_idx.x, t_block_idx.y,
             t_block_idx.z);
    w.failed = true;
    w.err = std::string(head) + msg;
}
inline void fail(Worker &w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
inline void fail(Worker &w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(w, fmt, ap);
    va_end(ap);
}
/* From inside a fiber: record the error and never come back (the block is abandoned). */
[[noreturn]] inline void fail_in_fiber(Worker &w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
inline void fail_in_fiber(Worker &w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(w, fmt, ap);
    va_end(ap);
    yield(w);
    die("resumed a failed block");
}

inline unsigned tindex(const Worker &w, const SimThread &t) { return (unsigned)(&t - w.threads.data()); }

/* ---- run queue ---- */
inline void push(Worker &w, unsigned i)
{
    size_t at = w.qhead + w.qcount;
    w.queue[at < w.n ? at : at - w.n] = i;
    w.qcount++;
}
inline unsigned pop(Worker &w)
{
    const unsigned i = w.queue[w.qhead];
    if (++w.qhead == w.n) w.qhead = 0;
    w.qcount--;
    return i;
}
inline bool reverse_now(const Worker &w)
{
    int o = order();
    return o == 2 ? ((w.block_linear + w.phase) & 1) != 0 : o == 1;
}
inline uint64_t rng_next(Worker &w)
{
    uint64_t x = w.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w.rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}
/* Queue the threads idx[0..n) in the order of the mode: ascending, descending or (random) a
 * fresh permutation. */
inline void push_all(Worker &w, const unsigned *idx, unsigned n)
{
    if (order() == 3) {
        w.perm.assign(idx, idx + n);
        for (unsigned i = n; i > 1; i--) std::swap(w.perm[i - 1], w.perm[(unsigned)(rng_next(w) % i)]);
        for (unsigned i = 0; i < n; i++) push(w, w.perm[i]);
        return;
    }
    const bool rev = reverse_now(w);
    for (unsigned k = 0; k < n; k++) push(w, idx[rev ? n - 1 - k : k]);
}

/* Try to complete the warp-intrinsic rendezvous that thread `i` waits in. Returns true when it
 * completed; then every participant has its result and is Ready (queued, except `running`). */
inline bool warp_try_resolve(Worker &w, unsigned i, unsigned running)
{
    SimThread &t = w.threads[i];
    const unsigned wi = i >> 5, base = i & ~31u, mask = t.mask;
    const unsigned exist = w.n - base >= 32 ? ~0u : (1u << (w.n - base)) - 1u;
    const unsigned part = mask & exist & ~w.warp_done[wi]; /* the lanes that take part */
    if (part & ~w.warp_wait[wi]) return false;
    for (unsigned l = 0; l < 32; l++)
        if (((part >> l) & 1u) && w.threads[base + l].mask != mask) return false;
    for (unsigned l = 0; l < 32; l++) {
        if (!((part >> l) & 1u)) continue;
        const SimThread &u = w.threads[base + l];
        if (u.kind != t.kind) {
            fail(w, "warp %u lanes disagree on the warp intrinsic (mask 0x%08x): lane %u calls %s, lane %u calls %s",
                 i / 32, mask, i & 31u, wkind_name(t.kind), l, wkind_name(u.kind));
            return false;
        }
    }
    /* compute every participant's result */
    unsigned long long agg = 0;
    switch (t.kind) {
    case WKind::Ballot: case WKind::Any: case WKind::All:
        for (unsigned l = 0; l < 32; l++)
            if (((part >> l) & 1u) && w.threads[base + l].value) agg |= 1ull << l;
        break;
    case WKind::RedAddU: case WKind::RedOr: case WKind::RedXor: case WKind::RedMaxU: agg = 0; break;
    case WKind::RedAnd: case WKind::RedMinU: agg = 0xffffffffull; break;
    case WKind::RedMinI: agg = 0x7fffffff; break;
    case WKind::RedMaxI: agg = 0x80000000ull; break;
    default: break;
    }
    for (unsigned l = 0; l < 32; l++) {
        if (!((part >> l) & 1u)) continue;
        unsigned v = (unsigned)w.threads[base + l].value;
        int a = (int)(unsigned)agg, b = (int)v;
        switch (t.kind) {
        case WKind::RedAddU: agg = (unsigned)((unsigned)agg + v); break;
        case WKind::RedMinU: agg = std::min((unsigned)agg, v); break;
        case WKind::RedMaxU: agg = std::max((unsigned)agg, v); break;
        case WKind::RedMinI: agg = (unsigned)std::min(a, b); break;
        case WKind::RedMaxI: agg = (unsigned)std::max(a, b); break;
        case WKind::RedAnd: agg &= v; break;
        case WKind::RedOr: agg |= v; break;
        case WKind::RedXor: agg ^= v; break;
        default: break;
        }
    }
    for (unsigned l = 0; l < 32; l++) {
        if (!((part >> l) & 1u)) continue;
        SimThread &u = w.threads[base + l];
        /* PTX shfl.sync: only the low 5 bits of the lane / offset operand count; a source past the
         * caller's segment (of `width` lanes) gives the caller its own value. */
        const unsigned wd = (unsigned)u.width, seg = l & ~(wd - 1), maxl = seg + wd - 1, b = u.arg & 31u;
        unsigned src = l;
        switch (u.kind) {
        case WKind::ShflIdx: src = seg + (b & (wd - 1)); break;
        case WKind::ShflUp: src = l < seg + b ? l : l - b; break;
        case WKind::ShflDown: src = l + b > maxl ? l : l + b; break;
        case WKind::ShflXor: src = (l ^ b) > maxl ? l : (l ^ b); break;
        default: break;
        }
        switch (u.kind) {
        case WKind::ShflIdx: case WKind::ShflUp: case WKind::ShflDown: case WKind::ShflXor:
            u.result = src == l ? u.value : ((part >> src) & 1u) ? w.threads[base + src].value : ~0ull;
            break;
        case WKind::Ballot: u.result = agg; break;
        case WKind::Any: u.result = agg != 0; break;
        case WKind::All: u.result = agg == part; break;
        case WKind::SyncWarp: u.result = 0; break;
        default: u.result = agg; break;
        }
    }
    w.warp_wait[wi] &= ~part;
    if (wi < w.warp_epoch.size()) w.warp_epoch[wi]++;
    unsigned ready[32], nready = 0;
    for (unsigned l = 0; l < 32; l++) {
        if (!((part >> l) & 1u)) continue;
        w.threads[base + l].state = TState::Ready;
        w.threads[base + l].fresh = false; /* resumes seeing its warp's image (its lanes' writes) */
        w.in_warp_op--;
        if (base + l != running) ready[nready++] = base + l;
    }
    push_all(w, ready, nready);
    return true;
}

/* A warp intrinsic called by the current thread: rendezvous with the mask's other lanes. */
inline unsigned long long warp_op(WKind kind, unsigned mask, unsigned long long value, unsigned arg, int width)
{
    Worker &w = in_kernel(wkind_name(kind));
    SimThread &t = *w.cur;
    const unsigned i = tindex(w, t), lane = i & 31u;
    if (!((mask >> lane) & 1u))
        fail_in_fiber(w, "thread (%u,%u,%u) (lane %u) calls %s with mask 0x%08x that does not name it", t.tid.x,
                      t.tid.y, t.tid.z, lane, wkind_name(kind), mask);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail_in_fiber(w, "thread (%u,%u,%u) calls %s with width %d (must be a power of 2 <= 32)", t.tid.x, t.tid.y,
                      t.tid.z, wkind_name(kind), width);
    t.kind = kind;
    t.mask = mask;
    t.value = value;
    t.arg = arg;
    t.width = width;
    t.state = TState::Warp;
    w.in_warp_op++;
    w.warp_wait[i >> 5] |= 1u << lane;
    /* random order: the lane that completes the rendezvous yields too (queued as ready), so that
     * like its lanes it resumes from its warp's image, with their writes in it */
    const bool rnd = order() == 3;
    if (!warp_try_resolve(w, i, rnd ? ~0u : i)) {
        if (w.failed) fail_in_fiber(w, "(see above)");
        yield(w);
    } else if (rnd) {
        yield(w);
    }
    return t.result;
}

template <typename T> inline T shfl(WKind kind, unsigned mask, T var, unsigned arg, int width)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type over 8 bytes");
    unsigned long long bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = warp_op(kind, mask, bits, arg, width);
    T r;
    memcpy(&r, &bits, sizeof(T));
    return r;
}

inline int barrier(int pred, const char *file, int line)
{
    Worker &w = in_kernel("__syncthreads()");
    SimThread &t = *w.cur;
    if (w.n == 1) return pred != 0;
    t.state = TState::Barrier;
    t.bar_file = file;
    t.bar_line = line;
    t.bar_pred = pred != 0;
    yield(w); /* the scheduler does the bookkeeping */
    return (int)t.result;
}

inline const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Scheduler side of __syncthreads for thread t that just arrived. */
inline void on_barrier(Worker &w, SimThread &t)
{
    if (w.done > 0) {
        const SimThread *d = nullptr;
        for (const SimThread &u : w.threads)
            if (u.state == TState::Done) { d = &u; break; }
        fail(w, "__syncthreads() at %s:%d is reached by thread (%u,%u,%u) but %u of %u threads already exited "
             "(e.g. thread (%u,%u,%u)): divergent barrier",
             base_name(t.bar_file), t.bar_line, t.tid.x, t.tid.y, t.tid.z, w.done, w.n, d->tid.x, d->tid.y, d->tid.z);
        return;
    }
    if (w.at_barrier == 0) {
        w.bar_file = t.bar_file;
        w.bar_line = t.bar_line;
    } else if (w.bar_line != t.bar_line || (w.bar_file != t.bar_file && strcmp(w.bar_file, t.bar_file) != 0)) {
        const SimThread *o = nullptr;
        for (const SimThread &u : w.threads)
            if (u.state == TState::Barrier && &u != &t) { o = &u; break; }
        fail(w, "threads wait at different __syncthreads(): thread (%u,%u,%u) at %s:%d, thread (%u,%u,%u) at %s:%d: "
             "divergent barrier",
             o->tid.x, o->tid.y, o->tid.z, base_name(w.bar_file), w.bar_line, t.tid.x, t.tid.y, t.tid.z,
             base_name(t.bar_file), t.bar_line);
        return;
    }
    w.at_barrier++;
    w.bar_true += (unsigned)t.bar_pred;
    if (w.at_barrier == w.n) { /* release the block */
        w.phase++;
        for (unsigned k = 0; k < w.n; k++) {
            SimThread &u = w.threads[k];
            u.state = TState::Ready;
            u.result = w.bar_true;
            u.fresh = true;
        }
        push_all(w, w.all_idx.data(), w.n);
        w.at_barrier = 0;
        w.bar_true = 0;
        if (order() == 3) { /* the merged writes of the interval become everyone's view */
            w.img_bar = w.img_merged;
            w.owner.clear();
        }
    }
}

/* Bookkeeping for thread t that returned from the kernel (its fiber is dealt with by the caller). */
inline void exit_bookkeeping(Worker &w, SimThread &t)
{
    t.fiber = nullptr;
    w.done++;
    const unsigned ti = tindex(w, t);
    w.warp_done[ti >> 5] |= 1u << (ti & 31u);
    if (w.at_barrier > 0) {
        fail(w, "thread (%u,%u,%u) exited while %u of %u threads wait at __syncthreads() at %s:%d: divergent barrier",
             t.tid.x, t.tid.y, t.tid.z, w.at_barrier, w.n, base_name(w.bar_file), w.bar_line);
        return;
    }
    /* lanes of its warp may have been waiting for it */
    const unsigned base = ti & ~31u;
    for (unsigned l = 0; l < 32 && w.warp_wait[ti >> 5] && !w.failed; l++)
        if ((w.warp_wait[ti >> 5] >> l) & 1u) warp_try_resolve(w, base + l, ~0u);
}

inline void on_exit(Worker &w, SimThread &t)
{
    w.free_fibers.push_back(t.fiber);
    exit_bookkeeping(w, t);
}

inline void fiber_main()
{
    Worker *w = t_worker; /* a fiber never leaves the OS thread that created it */
#ifdef SIMT_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_stack_lo, &w->sched_stack_size);
#endif
    for (;;) { /* one kernel thread per turn; the fiber is then reused for the next thread */
        w->launch->body(w->launch->arg);
        w->cur->state = TState::Done;
        /* Fast path: while the next runnable thread has not started, run it right here on this
         * fiber instead of switching to the scheduler (barrier-free kernels never switch). */
        while (!w->failed && w->qcount && !w->threads[w->queue[w->qhead]].fiber && order() != 3) {
            SimThread &next = w->threads[w->queue[w->qhead]];
            next.fiber = w->cur->fiber;
            exit_bookkeeping(*w, *w->cur);
            if (w->failed) { /* the scheduler resets the fiber of w->cur */
                w->cur->fiber = next.fiber;
                next.fiber = nullptr;
                break;
            }
            pop(*w);
            w->cur = &next;
            t_thread_idx = next.tid;
            w->launch->body(w->launch->arg);
            w->cur->state = TState::Done;
        }
        yield(*w);
    }
}

inline void describe_deadlock(Worker &w)
{
    unsigned nwarp = 0;
    const SimThread *wt = nullptr;
    for (const SimThread &u : w.threads)
        if (u.state == TState::Warp) { nwarp++; if (!wt) wt = &u; }
    char wdesc[256] = "";
    if (wt) {
        unsigned i = tindex(w, *wt), missing = 32;
        for (unsigned l = 0; l < 32; l++) {
            unsigned j = (i & ~31u) + l;
            if (((wt->mask >> l) & 1u) && j < w.n && w.threads[j].state != TState::Warp) { missing = l; break; }
        }
        snprintf(wdesc, sizeof wdesc, " (e.g. thread (%u,%u,%u) in %s with mask 0x%08x, lane %u of the mask never "
                 "joins)", wt->tid.x, wt->tid.y, wt->tid.z, wkind_name(wt->kind), wt->mask, missing);
    }
    fail(w, "deadlock: %u of %u threads wait at __syncthreads()%s%s%s, %u wait in warp intrinsics%s, %u exited",
         w.at_barrier, w.n, w.at_barrier ? " at " : "", w.at_barrier ? base_name(w.bar_file) : "",
         w.at_barrier ? (":" + std::to_string(w.bar_line)).c_str() : "", nwarp, wdesc, w.done);
}

/* ---- SIMT_ORDER=random: every thread runs as if all ran at once between barriers ----
 * Shared memory (static section, then dynamic) is imaged at each barrier. A thread's segment
 * (from a barrier, or from a warp intrinsic, to its next yield) starts from the barrier image
 * (after a barrier) or from its warp's image (after a warp intrinsic: the barrier image plus the
 * writes of its own lanes, not those of other warps); its writes are merged when it yields. Writes of the other threads in the same barrier
 * interval are therefore invisible, so a read-modify-write from several threads loses updates,
 * and two threads writing one byte between barriers (other than lanes of one warp separated by a
 * warp intrinsic) fail the launch as a race. */
inline void shared_save(Worker &w, std::vector<unsigned char> &img)
{
    const size_t ns = w.sstat ? w.sstat_size : 0, nd = w.launch->smem;
    img.resize(ns + nd);
    if (ns) memcpy(img.data(), w.sstat, ns);
    if (nd) memcpy(img.data() + ns, w.dyn_smem, nd);
}
inline void shared_load(Worker &w, const std::vector<unsigned char> &img)
{
    const size_t ns = w.sstat ? w.sstat_size : 0, nd = w.launch->smem;
    if (ns) memcpy(w.sstat, img.data(), ns);
    if (nd) memcpy(w.dyn_smem, img.data() + ns, nd);
}
/* Warp wi's image: the barrier image plus what its lanes wrote since the barrier. */
inline std::vector<unsigned char> &warp_image(Worker &w, unsigned wi)
{
    if (w.img_warp_phase[wi] != w.phase) {
        w.img_warp[wi] = w.img_bar;
        w.img_warp_phase[wi] = w.phase;
    }
    return w.img_warp[wi];
}
inline void shared_merge(Worker &w, const SimThread &y, const std::vector<unsigned char> &base)
{
    const size_t ns = w.sstat ? w.sstat_size : 0, nd = w.launch->smem;
    const unsigned yi = tindex(w, y);
    const unsigned long long me = (((unsigned long long)yi << 32) | w.warp_epoch[yi >> 5]) + 1;
    std::vector<unsigned char> &wimg = warp_image(w, yi >> 5); /* may be base itself: same bytes */
    for (int part = 0; part < 2; part++) {
        const unsigned char *mem = part ? w.dyn_smem : w.sstat;
        const size_t n = part ? nd : ns, off0 = part ? ns : 0;
        for (size_t c = 0; c < n && !w.failed; c += 4096) {
            const size_t len = std::min((size_t)4096, n - c);
            if (!memcmp(mem + c, base.data() + off0 + c, len)) continue;
            for (size_t i = c; i < c + len; i++) {
                if (mem[i] == base[off0 + i]) continue;
                auto it = w.owner.find(off0 + i);
                if (it != w.owner.end() && it->second != me) {
                    const unsigned oi = (unsigned)((it->second - 1) >> 32), oe = (unsigned)(it->second - 1);
                    if (oi != yi && !((oi >> 5) == (yi >> 5) && oe < w.warp_epoch[yi >> 5])) {
                        const SimThread &o = w.threads[oi];
                        fail(w, "shared-memory race (SIMT_ORDER=random, seed %llu): threads (%u,%u,%u) and (%u,%u,%u) "
                             "both write byte %zu of %s shared memory between two barriers",
                             seed(), o.tid.x, o.tid.y, o.tid.z, y.tid.x, y.tid.y, y.tid.z, i,
                             part ? "dynamic" : "static");
                        return;
                    }
                }
                w.owner[off0 + i] = me;
                w.img_merged[off0 + i] = mem[i];
                wimg[off0 + i] = mem[i];
            }
        }
    }
}

/* Run block number b of launch L to its end on this OS thread. Sets w.failed on error. */
inline void run_block(Worker &w, LaunchCtx &L, unsigned long long b)
{
    const uint3 g = L.grid, bd = L.block;
    t_block_idx = uint3{(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y), (unsigned)(b / ((unsigned long long)g.x * g.y))};
    t_block_dim = bd;
    t_grid_dim = g;
    w.launch = &L;
    w.block_linear = b;
    static std::atomic<unsigned long long> serial{0};
    w.run_serial = ++serial;
    w.n = bd.x * bd.y * bd.z;
    w.done = w.at_barrier = w.bar_true = w.phase = w.in_warp_op = 0;
    w.failed = false;
    w.threads.resize(w.n);
    w.queue.resize(w.n);
    w.warp_wait.assign((w.n + 31) / 32, 0u);
    w.warp_done.assign((w.n + 31) / 32, 0u);
    w.qhead = w.qcount = 0;
    w.all_idx.resize(w.n);
    for (unsigned z = 0, i = 0; z < bd.z; z++)
        for (unsigned y = 0; y < bd.y; y++)
            for (unsigned x = 0; x < bd.x; x++, i++) {
                SimThread &t = w.threads[i];
                t.tid = uint3{x, y, z};
                t.state = TState::Ready;
                t.fiber = nullptr;
                t.fresh = true;
                w.all_idx[i] = i;
            }
    w.dyn_smem = (unsigned char *)malloc(L.smem); /* exact size: ASan sees overruns */
    if (L.smem && !w.dyn_smem) die("out of memory for %zu bytes of dynamic shared memory", L.smem);
    if (L.smem) memset(w.dyn_smem, 0xff, L.smem);
    const StaticSmem ss = static_smem();
    w.sstat = ss.base;
    w.sstat_size = ss.size;
    if (ss.base) memset(ss.base, 0xff, ss.size); /* static shared memory starts as garbage too */
    const bool rnd = order() == 3;
    if (rnd) {
        w.rng = (seed() ^ (0x9E3779B97F4A7C15ull * (b + 1))) | 1u;
        w.warp_epoch.assign((w.n + 31) / 32, 0u);
        w.owner.clear();
        shared_save(w, w.img_bar);
        w.img_merged = w.img_bar;
        w.img_warp.resize((w.n + 31) / 32);
        w.img_warp_phase.assign((w.n + 31) / 32, ~0u);
    }
    push_all(w, w.all_idx.data(), w.n);

    while (w.qcount && !w.failed) {
        const unsigned i = pop(w);
        SimThread &t = w.threads[i];
        if (!t.fiber) {
            if (w.free_fibers.empty()) {
                t.fiber = fiber_new();
            } else {
                t.fiber = w.free_fibers.back();
                w.free_fibers.pop_back();
            }
        }
        w.cur = &t;
        t_thread_idx = t.tid;
        const std::vector<unsigned char> *img = !rnd ? nullptr : t.fresh ? &w.img_bar : &warp_image(w, i >> 5);
        if (rnd) shared_load(w, *img);
        resume(w, t.fiber);
        SimThread &y = *w.cur; /* the thread that yielded: the fiber may have run several */
        w.cur = nullptr;
        if (rnd && !w.failed) shared_merge(w, y, *img);
        if (w.failed) break;
        switch (y.state) {
        case TState::Done: on_exit(w, y); break;
        case TState::Barrier: on_barrier(w, y); break;
        case TState::Warp: break; /* waits for its lanes */
        case TState::Ready: /* random order: the last lane of a warp intrinsic, already queued */
            if (!rnd) die("internal error: fiber yielded while ready");
            break;
        }
    }
    if (!w.failed && w.done != w.n) describe_deadlock(w);
    if (w.failed) { /* abandon the block: reset the fibers of threads that did not finish */
        for (SimThread &t : w.threads) {
            if (t.fiber) {
                fiber_init(t.fiber);
                w.free_fibers.push_back(t.fiber);
                t.fiber = nullptr;
            }
        }
    }
    free(w.dyn_smem);
    w.dyn_smem = nullptr;
}

inline void run_blocks(LaunchCtx &L)
{
    Worker &w = this_worker();
    while (!L.failed.load(std::memory_order_relaxed)) {
        unsigned long long b = L.next.fetch_add(1, std::memory_order_relaxed);
        if (b >= L.nblocks) break;
        run_block(w, L, b);
        if (w.failed) {
            std::lock_guard<std::mutex> lk(L.err_mu);
            if (!L.failed.load()) {
                L.err = w.err;
                L.failed.store(true);
            }
            break;
        }
    }
    w.launch = nullptr;
}

/* Persistent worker threads (SIMT_THREADS - 1 of them); the launching thread is the other one. */
struct Pool {
    std::mutex mu;
    std::condition_variable cv, done_cv;
    LaunchCtx *job = nullptr;
    unsigned long long gen = 0;
    int nworkers = 0, finished = 0;
    std::mutex launch_mu; /* launches are serialized */
};
inline Pool &pool()
{
    static Pool *p = [] {
        Pool *q = new Pool(); /* never destroyed: workers may still wait on it at exit */
        q->nworkers = config().threads - 1;
        for (int i = 0; i < q->nworkers; i++) {
            std::thread([q] {
                unsigned long long seen = 0;
                for (;;) {
                    std::unique_lock<std::mutex> lk(q->mu);
                    q->cv.wait(lk, [&] { return q->gen != seen; });
                    seen = q->gen;
                    LaunchCtx *L = q->job;
                    lk.unlock();
                    run_blocks(*L);
                    lk.lock();
                    if (++q->finished == q->nworkers) q->done_cv.notify_all();
                }
            }).detach();
        }
        return q;
    }();
    return *p;
}

/* ---- errors of the runtime API ---- */
struct ErrState {
    std::mutex mu;
    cudaError_t last = cudaSuccess;
    cudaError_t detail_code = cudaSuccess;
    char detail[2048] = "";
};
inline ErrState &errstate()
{
    static ErrState *e = new ErrState();
    return *e;
}
inline cudaError_t set_error(cudaError_t code, const std::string &msg)
{
    ErrState &e = errstate();
    std::lock_guard<std::mutex> lk(e.mu);
    e.last = code;
    e.detail_code = code;
    snprintf(e.detail, sizeof e.detail, "%s", msg.c_str());
    fprintf(stderr, "simt: %s\n", e.detail);
    return code;
}

inline std::unordered_map<const void *, int> &max_dyn_smem()
{
    static auto *m = new std::unordered_map<const void *, int>();
    return *m;
}

inline cudaError_t run_grid(const char *name, const void *kernel_key, void (*body)(void *), void *arg, dim3 grid,
                            dim3 block, size_t smem)
{
    char msg[512];
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u || !nthreads ||
        block.x > 1024 || block.y > 1024 || block.z > 64 || nthreads > 1024) {
        snprintf(msg, sizeof msg, "kernel '%s': invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)", name,
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return set_error(cudaErrorInvalidConfiguration, msg);
    }
    std::lock_guard<std::mutex> serial(pool().launch_mu);
    size_t smem_max = 48 * 1024;
    auto it = max_dyn_smem().find(kernel_key);
    if (it != max_dyn_smem().end()) smem_max = std::max(smem_max, (size_t)it->second);
    if (smem > smem_max) {
        snprintf(msg, sizeof msg, "kernel '%s': %zu bytes of dynamic shared memory exceed the %zu allowed (above 48 KiB "
                 "call cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))",
                 name, smem, smem_max);
        return set_error(cudaErrorInvalidValue, msg);
    }
    LaunchCtx L;
    L.name = name;
    L.body = body;
    L.arg = arg;
    L.grid = grid;
    L.block = block;
    L.smem = smem;
    L.nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    Pool &p = pool();
    const bool parallel = p.nworkers > 0 && L.nblocks > 1;
    if (parallel) {
        std::lock_guard<std::mutex> lk(p.mu);
        p.job = &L;
        p.finished = 0;
        p.gen++;
        p.cv.notify_all();
    }
    run_blocks(L);
    if (parallel) {
        std::unique_lock<std::mutex> lk(p.mu);
        p.done_cv.wait(lk, [&] { return p.finished == p.nworkers; });
        p.job = nullptr;
    }
    if (L.failed.load()) return set_error(cudaErrorLaunchFailure, L.err);
    return cudaSuccess;
}

template <typename... P> struct KernelCall {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> *params;
    static void run(void *self)
    {
        KernelCall *c = static_cast<KernelCall *>(self);
        std::apply(c->kernel, *c->params); /* each thread gets its own copies of the parameters */
    }
};

} // namespace detail

/* Run kernel<<<grid, block, smem>>>(args...) to completion (launches are synchronous). Returns
 * cudaSuccess, or the error it also records for cudaGetLastError() with a message that names
 * the kernel (bad configuration, too much shared memory, divergent barrier, deadlock). */
template <typename... P, typename... A>
inline cudaError_t launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, A &&...args)
{
    static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
    (void)stream;
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    detail::KernelCall<P...> call{kernel, &params};
    return detail::run_grid(name, reinterpret_cast<const void *>(kernel), &detail::KernelCall<P...>::run, &call, grid,
                            block, smem);
}

/* Override SIMT_ORDER ("forward", "reverse", "mixed", "random"; NULL: back to the environment's)
 * and SIMT_SEED (0: the environment's) for the launches that follow. */
inline void set_order(const char *mode, unsigned long long seed = 0)
{
    detail::order_override.store(!mode ? -1 : !strcmp(mode, "forward") ? 0 : !strcmp(mode, "reverse") ? 1
                                 : !strcmp(mode, "random") ? 3 : 2);
    detail::seed_override.store(seed);
}
/* The current order mode (0 forward, 1 reverse, 2 mixed, 3 random). */
inline int order_mode() { return detail::order(); }

/* Base of the current block's dynamic shared memory (16-byte aligned). */
inline void *dynamic_smem() { return detail::in_kernel("dynamic shared memory").dyn_smem; }

/* A number unique to the block run in progress (no two blocks of any launches share one), for
 * models that keep per-thread state across calls within a block (kernels/mma.cuh's cp.async). */
inline unsigned long long block_run_serial() { return detail::in_kernel("block_run_serial").run_serial; }

/* The message of the last launch error, or "" (kept after cudaGetLastError() clears the code). */
inline const char *last_error_message() { return detail::errstate().detail; }

} // namespace simt

/* ================================ warp and block intrinsics ==================================== */
#define __syncthreads() ((void)::simt::detail::barrier(1, __FILE__, __LINE__))
#define __syncthreads_count(pred) (::simt::detail::barrier((pred), __FILE__, __LINE__))
#define __syncthreads_and(pred) (::simt::detail::barrier((pred), __FILE__, __LINE__) == (int)::simt::detail::t_worker->n)
#define __syncthreads_or(pred) (::simt::detail::barrier((pred), __FILE__, __LINE__) != 0)

template <typename T> static inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize)
{
    return ::simt::detail::shfl(::simt::detail::WKind::ShflIdx, mask, var, (unsigned)srcLane, width);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize)
{
    return ::simt::detail::shfl(::simt::detail::WKind::ShflUp, mask, var, delta, width);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize)
{
    return ::simt::detail::shfl(::simt::detail::WKind::ShflDown, mask, var, delta, width);
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize)
{
    return ::simt::detail::shfl(::simt::detail::WKind::ShflXor, mask, var, (unsigned)laneMask, width);
}
static inline unsigned __ballot_sync(unsigned mask, int pred)
{
    return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::Ballot, mask, pred != 0, 0, 32);
}
static inline int __any_sync(unsigned mask, int pred)
{
    return (int)::simt::detail::warp_op(::simt::detail::WKind::Any, mask, pred != 0, 0, 32);
}
static inline int __all_sync(unsigned mask, int pred)
{
    return (int)::simt::detail::warp_op(::simt::detail::WKind::All, mask, pred != 0, 0, 32);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    (void)::simt::detail::warp_op(::simt::detail::WKind::SyncWarp, mask, 0, 0, 32);
}
static inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedAddU, mask, v, 0, 32); }
static inline int __reduce_add_sync(unsigned mask, int v) { return (int)(unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedAddU, mask, (unsigned)v, 0, 32); }
static inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedMinU, mask, v, 0, 32); }
static inline int __reduce_min_sync(unsigned mask, int v) { return (int)(unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedMinI, mask, (unsigned)v, 0, 32); }
static inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedMaxU, mask, v, 0, 32); }
static inline int __reduce_max_sync(unsigned mask, int v) { return (int)(unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedMaxI, mask, (unsigned)v, 0, 32); }
static inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedAnd, mask, v, 0, 32); }
static inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedOr, mask, v, 0, 32); }
static inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return (unsigned)::simt::detail::warp_op(::simt::detail::WKind::RedXor, mask, v, 0, 32); }
/* The lanes of the caller's warp that have not exited (the emulator has no partial convergence). */
static inline unsigned __activemask(void)
{
    ::simt::detail::Worker &w = ::simt::detail::in_kernel("__activemask()");
    unsigned i = ::simt::detail::tindex(w, *w.cur), base = i & ~31u, m = 0;
    for (unsigned l = 0; l < 32 && base + l < w.n; l++)
        if (w.threads[base + l].state != ::simt::detail::TState::Done) m |= 1u << l;
    return m;
}

/* ================================ runtime API =================================================== */
struct CUstream_st { int dummy; };
struct CUevent_st { std::chrono::steady_clock::time_point t; bool recorded; };

static inline cudaError_t cudaGetLastError(void)
{
    ::simt::detail::ErrState &e = ::simt::detail::errstate();
    std::lock_guard<std::mutex> lk(e.mu);
    cudaError_t r = e.last;
    e.last = cudaSuccess;
    return r;
}
static inline cudaError_t cudaPeekAtLastError(void)
{
    ::simt::detail::ErrState &e = ::simt::detail::errstate();
    std::lock_guard<std::mutex> lk(e.mu);
    return e.last;
}
static inline const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
    }
}
/* For the code of the last recorded launch error this is the emulator's detailed message
 * (it names the kernel); otherwise CUDA's generic text. */
static inline const char *cudaGetErrorString(cudaError_t e)
{
    ::simt::detail::ErrState &s = ::simt::detail::errstate();
    if (e != cudaSuccess && e == s.detail_code && s.detail[0]) return s.detail;
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
    }
}

static inline cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = nullptr;
    if (n == 0) return cudaSuccess;
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    return *p ? cudaSuccess : ::simt::detail::set_error(cudaErrorMemoryAllocation, "cudaMalloc: out of memory");
}
template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t n)
{
    void *v = nullptr;
    cudaError_t e = cudaMalloc(&v, n);
    *p = static_cast<T *>(v);
    return e;
}
static inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
template <typename T> static inline cudaError_t cudaMallocHost(T **p, size_t n) { return cudaMalloc(p, n); }
static inline cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
template <typename T> static inline cudaError_t cudaMallocAsync(T **p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
static inline cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaFreeAsync(void *p, cudaStream_t) { free(p); return cudaSuccess; }
static inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind)
{
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr)
{
    return cudaMemcpy(dst, src, n, k);
}
static inline cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                       size_t height, cudaMemcpyKind)
{
    for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                            size_t height, cudaMemcpyKind k, cudaStream_t = nullptr)
{
    return cudaMemcpy2D(dst, dpitch, src, spitch, width, height, k);
}
static inline cudaError_t cudaMemset(void *p, int v, size_t n)
{
    if (n) memset(p, v, n);
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = nullptr) { return cudaMemset(p, v, n); }
template <typename T>
static inline cudaError_t cudaMemcpyToSymbol(T &symbol, const void *src, size_t n, size_t offset = 0,
                                             cudaMemcpyKind = cudaMemcpyHostToDevice)
{
    memcpy((char *)&symbol + offset, src, n);
    return cudaSuccess;
}
template <typename T>
static inline cudaError_t cudaMemcpyFromSymbol(void *dst, const T &symbol, size_t n, size_t offset = 0,
                                               cudaMemcpyKind = cudaMemcpyDeviceToHost)
{
    memcpy(dst, (const char *)&symbol + offset, n);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamCreate(cudaStream_t *s) { *s = new CUstream_st(); return cudaSuccess; }
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { return cudaStreamCreate(s); }
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaPeekAtLastError(); }
static inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
static inline cudaError_t cudaDeviceSynchronize(void) { return cudaPeekAtLastError(); }
static inline cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = new CUevent_st(); (*e)->recorded = false; return cudaSuccess; }
static inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { return cudaEventCreate(e); }
static inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
static inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr)
{
    e->t = std::chrono::steady_clock::now();
    e->recorded = true;
    return cudaSuccess;
}
static inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
static inline cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    if (!a->recorded || !b->recorded) return cudaErrorInvalidResourceHandle;
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}
static inline cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
static inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "danlu SIMT emulator");
    p->totalGlobalMem = (size_t)8 << 30;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
    p->multiProcessorCount = ::simt::detail::config().threads;
    p->maxThreadsPerMultiProcessor = 2048;
    p->major = 8;
    p->minor = 0;
    return cudaSuccess;
}
/* Only cudaFuncAttributeMaxDynamicSharedMemorySize has an effect (checked at launch, max 227 KiB). */
template <typename... P>
static inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
    if (value < 0 || value > 227 * 1024)
        return ::simt::detail::set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: MaxDynamicSharedMemorySize "
                                         "out of range (0 .. 227 KiB)");
    std::lock_guard<std::mutex> lk(::simt::detail::pool().launch_mu);
    ::simt::detail::max_dyn_smem()[reinterpret_cast<const void *>(kernel)] = value;
    return cudaSuccess;
}

#endif
