/* cpu_isa.h - which CPU code path runs: the one place that decides between the AVX-512, AVX2
 * and portable paths of the CPU ops.
 *
 * The build targets x86-64-v3 (AVX2 + FMA); wider paths are compiled with function target
 * attributes and chosen here at run time. DANLU_CPU_ISA=avx2 (or generic) caps the choice, so a
 * machine with AVX-512 can run the path an AVX2-only machine takes: scripts/test.sh runs the
 * numeric suites both ways. The variable is read on every call (tests set it per process), and
 * the CPU's own capabilities once. */
#ifndef DANLU_CPU_ISA_H
#define DANLU_CPU_ISA_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DL_ISA_GENERIC = 0, /* portable C (the GEMM's generic micro-kernel) */
    DL_ISA_AVX2 = 1,    /* x86-64-v3: AVX2 + FMA, the build's baseline on x86-64 */
    DL_ISA_AVX512 = 2,  /* x86-64-v4: AVX-512 F/VL/BW/DQ */
} dl_isa;

/* The widest path this CPU runs, capped by DANLU_CPU_ISA (avx512 | avx2 | generic; an unknown
 * value is ignored with a one-time warning on stderr). */
dl_isa dl_cpu_isa(void);
/* The widest path the CPU itself supports, ignoring DANLU_CPU_ISA. */
dl_isa dl_cpu_isa_native(void);
/* "avx512", "avx2", "generic". */
const char *dl_isa_name(dl_isa isa);

#ifdef __cplusplus
}
#endif
#endif
