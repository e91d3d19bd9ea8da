/* test_cpu_isa.c - the run-time choice of the CPU code path: DANLU_CPU_ISA caps it for every op
 * that has a wider path (GEMM, attention, and the norm / activation loops compiled twice), and
 * the loops compiled twice agree on both paths (to the bit, where the compiler keeps its word). Each Criterion test is its own
 * process, so setenv here reaches no other test. */
#include "core/cpu_isa.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/groupnorm.h"
#include "ops/cpu/layernorm.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

Test(cpu_isa, native_path_is_at_least_the_build_baseline)
{
    dl_isa n = dl_cpu_isa_native();
#if defined(__x86_64__)
    cr_expect_geq(n, DL_ISA_AVX2, "the build targets x86-64-v3, yet the CPU reports %s", dl_isa_name(n));
#endif
    cr_log_info("this CPU: %s (GEMM kernel %s)", dl_isa_name(n), dl_sgemm_kernel_name());
}

Test(cpu_isa, environment_caps_the_path)
{
    const dl_isa n = dl_cpu_isa_native();
    unsetenv("DANLU_CPU_ISA");
    cr_expect_eq(dl_cpu_isa(), n);
    setenv("DANLU_CPU_ISA", "avx2", 1);
    cr_expect_eq(dl_cpu_isa(), n < DL_ISA_AVX2 ? n : DL_ISA_AVX2);
    if (n >= DL_ISA_AVX2) cr_expect(strstr(dl_sgemm_kernel_name(), "avx2") != NULL, "%s", dl_sgemm_kernel_name());
    setenv("DANLU_CPU_ISA", "generic", 1);
    cr_expect_eq(dl_cpu_isa(), DL_ISA_GENERIC);
    cr_expect(strstr(dl_sgemm_kernel_name(), "generic") != NULL, "%s", dl_sgemm_kernel_name());
    setenv("DANLU_CPU_ISA", "avx512", 1); /* a cap, never more than the CPU has */
    cr_expect_eq(dl_cpu_isa(), n);
    setenv("DANLU_CPU_ISA", "sse9", 1); /* unknown: ignored (with a warning) */
    cr_expect_eq(dl_cpu_isa(), n);
    cr_expect_str_eq(dl_isa_name(DL_ISA_AVX512), "avx512");
    cr_expect_str_eq(dl_isa_name(DL_ISA_AVX2), "avx2");
    cr_expect_str_eq(dl_isa_name(DL_ISA_GENERIC), "generic");
}

/* Outputs of the ops whose loops are compiled for both paths, on fixed inputs. */
enum { M = 77, C = 96, G = 32, HW = 33, NB = 2 };
typedef struct {
    float gn_y[NB * HW * C], gn_dx[NB * HW * C], gn_dg[C], gn_db[C];
    float ln_y[M * C], ln_dx[M * C], ln_dg[C], ln_db[C];
    float act_y[M * C], act_dx[M * C], gg_y[M * C / 2], gg_dx[M * C];
} twice_out;

static void run_twice_compiled(twice_out *o)
{
    /* inputs for every op: the largest is layer norm's [M, C] (group norm reads NB * HW * C) */
    enum { NX = M * C > NB * HW * C ? M * C : NB * HW * C, NS = M > NB * G ? M : NB * G };
    static float x[NX], dy[NX], gamma[C], beta[C], mean[NS], rstd[NS];
    tu_fill_uniform(x, NX, 1, -3.f, 3.f);
    tu_fill_uniform(dy, NX, 2, -1.f, 1.f);
    tu_fill_uniform(gamma, C, 3, 0.5f, 1.5f);
    tu_fill_uniform(beta, C, 4, -0.5f, 0.5f);
    dl_groupnorm_shape s = {NB, HW, C, G, 1e-5f, 1};
    dl_cpu_groupnorm_forward(tu_ctx(), s, x, gamma, beta, o->gn_y, mean, rstd);
    dl_cpu_groupnorm_backward(tu_ctx(), s, x, gamma, beta, mean, rstd, dy, o->gn_dx, o->gn_dg, o->gn_db);
    dl_cpu_layernorm_forward(tu_ctx(), M, C, 1e-5f, x, gamma, beta, o->ln_y, mean, rstd);
    dl_cpu_layernorm_backward(tu_ctx(), M, C, x, gamma, mean, rstd, dy, o->ln_dx, o->ln_dg, o->ln_db);
    dl_cpu_act_forward(tu_ctx(), DL_ACT_GELU, M * C, x, o->act_y);
    dl_cpu_act_backward(tu_ctx(), DL_ACT_GELU, M * C, x, dy, o->act_dx);
    dl_cpu_geglu_forward(tu_ctx(), M, C / 2, x, o->gg_y);
    dl_cpu_geglu_backward(tu_ctx(), M, C / 2, x, dy, o->gg_dx);
}

Test(cpu_isa, loops_compiled_twice_agree)
{
    twice_out *wide = malloc(sizeof *wide), *base = malloc(sizeof *base);
    cr_assert(wide && base);
    memset(wide, 0xff, sizeof *wide);
    memset(base, 0x7f, sizeof *base);
    unsetenv("DANLU_CPU_ISA");
    run_twice_compiled(wide);
    setenv("DANLU_CPU_ISA", "avx2", 1);
    run_twice_compiled(base);
    /* Both versions evaluate the same expressions in the same order, so the bits should agree;
     * what must hold on every machine is agreement to float rounding (a path computing something
     * else fails by far more). Differing bits are logged. */
    const float *pw = (const float *)wide, *pb = (const float *)base;
    const size_t n = sizeof *wide / sizeof(float);
    size_t differ = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&pw[i], &pb[i], sizeof(float)) == 0) continue;
        differ++;
        double d = fabs((double)pw[i] - pb[i]) / (fabs((double)pb[i]) + 1e-6);
        if (!(d <= worst)) worst = d;
    }
    cr_expect(worst <= 1e-6, "group/layer norm, GELU or GEGLU differ between %s and avx2: %zu of %zu values, worst "
              "relative %.3g", dl_isa_name(dl_cpu_isa_native()), differ, n, worst);
    if (differ) cr_log_info("%zu of %zu values differ in their last bits between the paths (worst %.3g)", differ, n, worst);
    if (dl_cpu_isa_native() < DL_ISA_AVX512)
        cr_log_info("this CPU has no AVX-512: both runs took the AVX2 path");
    free(wide);
    free(base);
}
