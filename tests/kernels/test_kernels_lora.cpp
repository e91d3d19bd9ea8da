/* test_kernels_lora.cpp - kernels/lora.cu compiled for the CPU by the SIMT emulator: forward,
 * backward (overwrite and accumulate), merge and unmerge, linear and 1x1-conv forms, against a
 * CPU-GEMM reference (fp32 1e-5, bf16 1e-2 relative L2), outputs poisoned with NaN, guard bytes
 * after every buffer. Under the emulator the base GEMM runs on lora_gemm_kernel (no cuBLAS). */
#include "lora.cu"

#include "kcase_criterion.h"
#include "kcase_lora.h"

static void run(const char *name, kc_lora_case c)
{
    kc_env e;
    kc_env_begin(&e, name);
    kc_run_lora(&e, &c);
    kc_env_end(&e);
}

// {M, in, out, rank, s, bias, conv, dtype, seed}: sizes off the 64x64x16 tile everywhere.
Test(kernels_lora, f32_rank4_bias) { run("f32 37x40->48 r4", {37, 40, 48, 4, 0.5f, 1, 0, DL_F32, 31}); }
Test(kernels_lora, f32_rank1) { run("f32 19x33->17 r1", {19, 33, 17, 1, 2.0f, 0, 0, DL_F32, 32}); }
Test(kernels_lora, f32_rank128_conv1x1) { run("f32 65x70->130 r128 conv", {65, 70, 130, 128, 0.125f, 1, 1, DL_F32, 33}); }
// M = 1100 >= 1024 with few output tiles: dA and dB reduce over M in 4 split-K slices
Test(kernels_lora, f32_splitk) { run("f32 1100x24->20 r4 split-K", {1100, 24, 20, 4, 1.5f, 1, 0, DL_F32, 36}); }
Test(kernels_lora, bf16_splitk_conv1x1) { run("bf16 1030x16->40 r2 split-K conv", {1030, 16, 40, 2, 1.0f, 0, 1, DL_BF16, 37}); }
Test(kernels_lora, bf16_rank16) { run("bf16 40x64->80 r16", {40, 64, 80, 16, 1.0f, 1, 0, DL_BF16, 34}); }
Test(kernels_lora, bf16_rank8_conv1x1) { run("bf16 33x20->36 r8 conv", {33, 20, 36, 8, 0.75f, 0, 1, DL_BF16, 35}); }

Test(kernels_lora, rejects_bad_rank)
{
    float ws[4];
    cr_expect_eq(dl_cuda_lora_forward(DL_F32, NULL, 4, 4, 4, 0, 1.0f, NULL, NULL, NULL, NULL, NULL,
                                      ws, NULL, 0),
                 -1);
    cr_expect_eq(dl_cuda_lora_merge(DL_F32, 4, 4, 129, 1.0f, NULL, NULL, NULL, 0), -1);
}

// SIMT_ORDER=random: see test_kernels_groupnorm.cpp.
Test(kernels_lora, random_interleaving)
{
    simt::set_order("random", 99);
    run("random f32 37x40->48 r4", {37, 40, 48, 4, 0.5f, 1, 0, DL_F32, 31});
    simt::set_order(NULL);
}
