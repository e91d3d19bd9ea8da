/* test_kernels_attention.cpp - kernels/attention.cu compiled for the CPU by the SIMT emulator,
 * forward and backward against the CPU reference (fp32 1e-5, bf16 1e-2 relative L2), outputs
 * poisoned with NaN, guard bytes after every buffer; the bf16 cases also run the tensor-core
 * forward of kernels/attention_tc.cu on a model of the WMMA API. Shapes are tiny: emulation is
 * slow. */
#include "attention.cu"

#include "wmma_model.h"

#include "attention_tc.cu"

#define KC_HAVE_ATTENTION_TC 1

#include "kcase_attention.h"
#include "kcase_criterion.h"

static void run(const char *name, kc_attention_case c)
{
    kc_env e;
    kc_env_begin(&e, name);
    kc_run_attention(&e, &c);
    kc_env_end(&e);
}

// {N, H, Tq, Tk, d, dtype, seed}: token counts that are not multiples of the 16/8/4-row blocks
// or of the 32-column tiles; cross-attention to 77 keys (SD text context).
Test(kernels_attention, f32_d40_self_odd_tokens) { run("f32 d40 37x37", {1, 2, 37, 37, 40, DL_F32, 11}); }
Test(kernels_attention, f32_d64_cross77) { run("f32 d64 20x77", {2, 1, 20, 77, 64, DL_F32, 12}); }
Test(kernels_attention, f32_d80_self) { run("f32 d80 33x45", {1, 1, 33, 45, 80, DL_F32, 13}); }
Test(kernels_attention, f32_d160_self) { run("f32 d160 19x40", {1, 1, 19, 40, 160, DL_F32, 14}); }
Test(kernels_attention, f32_d40_three_keys) { run("f32 d40 5x3", {1, 1, 5, 3, 40, DL_F32, 15}); }
Test(kernels_attention, bf16_d40_cross77) { run("bf16 d40 24x77", {1, 2, 24, 77, 40, DL_BF16, 16}); }
Test(kernels_attention, bf16_d160_self) { run("bf16 d160 9x33", {1, 1, 9, 33, 160, DL_BF16, 17}); }
Test(kernels_attention, bf16_d80_self) { run("bf16 d80 40x70", {1, 1, 40, 70, 80, DL_BF16, 18}); }
Test(kernels_attention, bf16_d64_batch2) { run("bf16 d64 17x33", {2, 1, 17, 33, 64, DL_BF16, 19}); }

Test(kernels_attention, rejects_unsupported_head_dim)
{
    // d = 48 is not instantiated: the launcher refuses before touching memory
    cr_expect_eq(dl_cuda_attention_forward(DL_F32, 1, 1, 4, 4, 48, 1.0f, NULL, 48, NULL, 48, NULL,
                                           48, NULL, 48, NULL, 0),
                 -1);
    cr_expect_eq(dl_cuda_attention_forward(DL_F16, 1, 1, 4, 4, 64, 1.0f, NULL, 64, NULL, 64, NULL,
                                           64, NULL, 64, NULL, 0),
                 -1);
}

// SIMT_ORDER=random: see test_kernels_groupnorm.cpp.
Test(kernels_attention, random_interleaving)
{
    simt::set_order("random", 777);
    run("random f32 d40 37x37", {1, 2, 37, 37, 40, DL_F32, 11});
    run("random bf16 d80 20x33", {1, 1, 20, 33, 80, DL_BF16, 18});
    simt::set_order(NULL);
}
