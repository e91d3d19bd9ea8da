/* simd.h - hot loops compiled for two CPU paths, chosen per call by dl_cpu_isa().
 *
 *     DL_SIMD_RANGE(gn_fwd_stats, arg, i0, i1, tid) { ...loop body... }
 *     dl_parallel_for(pool, n, grain, DL_SIMD_PICK(gn_fwd_stats), &job);
 *
 * defines the body once (always inlined) and two dl_range_fn wrappers around it: name_v4,
 * compiled for x86-64-v4 (AVX-512, 16 lanes), and name_v3 for the build's baseline (x86-64-v3).
 * Both evaluate the same expressions in the same order. DL_SIMD_PICK takes the AVX-512 one only
 * when dl_cpu_isa() allows it, so DANLU_CPU_ISA=avx2 runs the baseline on any CPU. Where the
 * compiler cannot target x86-64-v4 (clang's fuzz build, other architectures) there is one
 * version. */
#ifndef DANLU_OPS_CPU_SIMD_H
#define DANLU_OPS_CPU_SIMD_H

#include "core/cpu_isa.h"

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DL_SIMD_RANGE(name, a, b, e, t)                                                                    \
    static inline __attribute__((always_inline)) void name##_body(void *a, int64_t b, int64_t e, int t);  \
    __attribute__((target("arch=x86-64-v4"))) static void name##_v4(void *a, int64_t b, int64_t e, int t) \
    {                                                                                                      \
        name##_body(a, b, e, t);                                                                           \
    }                                                                                                      \
    static void name##_v3(void *a, int64_t b, int64_t e, int t) { name##_body(a, b, e, t); }               \
    static inline __attribute__((always_inline)) void name##_body(void *a, int64_t b, int64_t e, int t)
#define DL_SIMD_PICK(name) (dl_cpu_isa() >= DL_ISA_AVX512 ? name##_v4 : name##_v3)
#else
#define DL_SIMD_RANGE(name, a, b, e, t) static void name(void *a, int64_t b, int64_t e, int t)
#define DL_SIMD_PICK(name) (name)
#endif

#endif
