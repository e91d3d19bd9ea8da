/* test_kernels_groupnorm.cpp - kernels/groupnorm.cu compiled for the CPU by the SIMT emulator,
 * forward and backward with and without fused SiLU against the CPU reference (fp32 1e-5, bf16
 * 1e-2 relative L2), outputs poisoned with NaN, guard bytes after every buffer. */
#include "groupnorm.cu"

#include "kcase_criterion.h"
#include "kcase_groupnorm.h"

static void run(const char *name, kc_groupnorm_case c)
{
    kc_env e;
    kc_env_begin(&e, name);
    kc_run_groupnorm(&e, &c);
    kc_env_end(&e);
}

// {N, HW, C, G, silu, dtype, seed, offset}. HW = 300 spans three 128-row chunks (last partial);
// C = 36 with 4 groups and C = 6 with 2 groups are not multiples of any vector width or of the
// 32-channel block; offset 3 gives every group a large mean.
Test(kernels_groupnorm, f32_sd_like) { run("f32 2x37x64 g32", {2, 37, 64, 32, 0, DL_F32, 21, 0.0f}); }
Test(kernels_groupnorm, f32_silu_chunks_offset) { run("f32 1x300x160 g32 silu", {1, 300, 160, 32, 1, DL_F32, 22, 3.0f}); }
Test(kernels_groupnorm, f32_odd_channels) { run("f32 2x45x36 g4", {2, 45, 36, 4, 0, DL_F32, 23, 0.0f}); }
Test(kernels_groupnorm, f32_tiny_channels_silu) { run("f32 1x7x6 g2 silu", {1, 7, 6, 2, 1, DL_F32, 24, -1.0f}); }
// HW = 33000 switches to 136-row chunks (at most 256 chunks per sample); offset 1 keeps the
// group means away from 0, where a relative error of the mean says nothing
Test(kernels_groupnorm, f32_long_rows_silu) { run("f32 1x33000x8 g2 silu", {1, 33000, 8, 2, 1, DL_F32, 27, 1.0f}); }
Test(kernels_groupnorm, bf16_silu) { run("bf16 2x50x96 g32 silu", {2, 50, 96, 32, 1, DL_BF16, 25, 0.5f}); }
Test(kernels_groupnorm, bf16_plain) { run("bf16 1x129x64 g32", {1, 129, 64, 32, 0, DL_BF16, 26, 0.0f}); }

Test(kernels_groupnorm, rejects_bad_groups)
{
    char ws[64];
    cr_expect_eq(dl_cuda_groupnorm_forward(DL_F32, 1, 4, 10, 3, 1e-5f, 0, NULL, NULL, NULL, NULL,
                                           NULL, NULL, ws, 0),
                 -1);
}

// SIMT_ORDER=random (threads in random order between barriers, each seeing shared memory as at
// the last barrier): the kernels have no shared-memory race, so they still match the reference.
Test(kernels_groupnorm, random_interleaving)
{
    simt::set_order("random", 12345);
    run("random f32 2x37x64 g32", {2, 37, 64, 32, 0, DL_F32, 21, 0.0f});
    run("random f32 1x300x160 g32 silu", {1, 300, 160, 32, 1, DL_F32, 22, 3.0f});
    simt::set_order(NULL);
}
