/* cpu_isa.c - run-time choice of the CPU code path (see cpu_isa.h). */
#include "core/cpu_isa.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dl_isa detect(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return DL_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return DL_ISA_AVX2;
#endif
    return DL_ISA_GENERIC;
}

dl_isa dl_cpu_isa_native(void)
{
    static _Atomic int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        v = (int)detect();
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return (dl_isa)v;
}

dl_isa dl_cpu_isa(void)
{
    dl_isa isa = dl_cpu_isa_native();
    const char *force = getenv("DANLU_CPU_ISA");
    if (!force || !*force) return isa;
    dl_isa cap;
    if (!strcmp(force, "avx512")) cap = DL_ISA_AVX512;
    else if (!strcmp(force, "avx2")) cap = DL_ISA_AVX2;
    else if (!strcmp(force, "generic")) cap = DL_ISA_GENERIC;
    else {
        static atomic_flag warned = ATOMIC_FLAG_INIT;
        if (!atomic_flag_test_and_set(&warned))
            fprintf(stderr, "danlu: DANLU_CPU_ISA=%s is not avx512, avx2 or generic; ignored\n", force);
        return isa;
    }
    return cap < isa ? cap : isa;
}

const char *dl_isa_name(dl_isa isa)
{
    switch (isa) {
    case DL_ISA_AVX512: return "avx512";
    case DL_ISA_AVX2: return "avx2";
    default: return "generic";
    }
}
