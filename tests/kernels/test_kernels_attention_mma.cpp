/* test_kernels_attention_mma.cpp - kernels/attention_mma.cu (mma.sync / ldmatrix / cp.async
 * attention forward and backward) under the SIMT emulator against the CPU reference: head dims 40/64/80/160,
 * token counts that are not multiples of the 128/64-query or 64/32-key tiles (77 keys of the
 * text context included), N·H > 1, ld > H·d (16-byte aligned and not), a negative and a sharp
 * scale, outputs poisoned with NaN; then in random interleaving, where a kernel missing its
 * barrier after the cp.async wait must fail, and a pipeline that waits one group short must fail
 * in any order. The backward: dq, dk, dv with atomic and deterministic dQ (the latter twice, same
 * bits). Shapes are small: the emulator runs the threads one by one. */
#include "attention_mma.cu"

#include "kcase_attention_mma.h"
#include "kcase_criterion.h"

static void run(const char *name, kc_attention_mma_case c)
{
    kc_env e;
    kc_env_begin(&e, name);
    kc_run_attention_mma(&e, &c, NULL);
    kc_env_end(&e);
}

// {N, H, Tq, Tk, d, pad, scale_mul, seed}
Test(kernels_attention_mma, d40_self_two_query_tiles) { run("d40 130x130", {1, 2, 130, 130, 40, 0, 1.0f, 101}); }
Test(kernels_attention_mma, d40_cross77_ld) { run("d40 77x77 pad 8", {2, 2, 77, 77, 40, 8, 1.0f, 102}); }
Test(kernels_attention_mma, d64_cross77_ld) { run("d64 40x77 pad 8", {1, 3, 40, 77, 64, 8, 1.0f, 103}); }
Test(kernels_attention_mma, d64_five_key_tiles) { run("d64 20x300", {2, 1, 20, 300, 64, 0, 1.0f, 104}); }
Test(kernels_attention_mma, d80_self_ld) { run("d80 70x100 pad 16", {1, 2, 70, 100, 80, 16, 1.0f, 105}); }
Test(kernels_attention_mma, d160_cross77) { run("d160 70x77 pad 8", {2, 1, 70, 77, 160, 8, 1.0f, 106}); }
Test(kernels_attention_mma, d160_two_query_tiles) { run("d160 65x100", {1, 2, 65, 100, 160, 0, 1.0f, 107}); }
Test(kernels_attention_mma, three_keys) { run("d40 5x3", {1, 1, 5, 3, 40, 0, 1.0f, 108}); }
Test(kernels_attention_mma, negative_sharp_scale)
{
    // scale = -3/sqrt(d): the Q fragments flip sign; peaked rows rescale O often
    run("d64 40x150 scale -3", {1, 1, 40, 150, 64, 0, -3.0f, 109});
    run("d40 24x77 scale -2", {1, 2, 24, 77, 40, 0, -2.0f, 112}); // and the k8 fragments
}

// ld not a multiple of 8 elements: rows are not 16-byte aligned, the plain-load instantiation
Test(kernels_attention_mma, unaligned_ld_d40) { run("d40 50x77 pad 3", {1, 2, 50, 77, 40, 3, 1.0f, 110}); }
Test(kernels_attention_mma, unaligned_ld_d80) { run("d80 30x40 pad 5", {1, 2, 30, 40, 80, 5, 1.0f, 111}); }

Test(kernels_attention_mma, rejects_unsupported)
{
    cr_expect_eq(dl_cuda_attention_forward_mma(DL_F32, 1, 1, 4, 4, 64, 1.0f, NULL, 64, NULL, 64, NULL, 64, NULL, 64,
                                               NULL, 0),
                 -1, "fp32 storage");
    cr_expect_eq(dl_cuda_attention_forward_mma(DL_BF16, 1, 1, 4, 4, 48, 1.0f, NULL, 48, NULL, 48, NULL, 48, NULL, 48,
                                               NULL, 0),
                 -1, "head dim 48");
    cr_expect_eq(dl_cuda_attention_forward_mma(DL_BF16, 1, 2, 4, 4, 64, 1.0f, NULL, 64, NULL, 128, NULL, 128, NULL,
                                               128, NULL, 0),
                 -1, "ldq < H·d");
    cr_expect_eq(dl_cuda_attention_forward_mma(DL_BF16, 1, 1, 0, 4, 64, 1.0f, NULL, 64, NULL, 64, NULL, 64, NULL, 64,
                                               NULL, 0),
                 -1, "Tq = 0");
}

/* The launcher with a fault planted (FAULT 1: no barrier after the K wait; 2: cp.async waits
 * leave one group too many in flight). */
template <int FAULT>
static int faulty_forward(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale, const void *q, int64_t ldq,
                          const void *k, int64_t ldk, const void *v, int64_t ldv, void *o, int64_t ldo, float *lse,
                          cudaStream_t stream)
{
    (void)dt;
    switch (d) {
    case 40: return attn_mma_forward_dispatch<40, FAULT>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 160:
        return attn_mma_forward_dispatch<160, FAULT>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    default: return -1;
    }
}

/* Runs a case expected to fail: checks over tolerance are counted, not logged. */
static int failures_of(kc_attention_mma_case c, kc_attention_fwd_fn fwd)
{
    kc_env e;
    kc_env_begin(&e, "planted fault");
    e.report = NULL;
    kc_run_attention_mma(&e, &c, fwd);
    cudaStreamDestroy(e.stream);
    return e.failures;
}

// SIMT_ORDER=random: threads run in random order between barriers, each seeing shared memory as
// of the last barrier plus its own writes (see kernels/simt/simt.h).
Test(kernels_attention_mma, random_interleaving)
{
    simt::set_order("random", 1313);
    run("random d40 20x77", {1, 2, 20, 77, 40, 8, 1.0f, 120});
    run("random d160 9x40", {1, 1, 9, 40, 160, 0, 1.0f, 121});
    simt::set_order(NULL);
}

Test(kernels_attention_mma, random_interleaving_catches_missing_barrier)
{
    const kc_attention_mma_case c = {1, 1, 16, 77, 40, 0, 1.0f, 122};
    simt::set_order("random", 99);
    const int f = failures_of(c, faulty_forward<1>);
    simt::set_order(NULL);
    cr_expect_gt(f, 0, "random order did not catch the missing __syncthreads after the cp.async wait");
}

Test(kernels_attention_mma, short_cp_async_wait_reads_nan)
{
    const kc_attention_mma_case c = {1, 1, 16, 77, 160, 0, 1.0f, 123};
    cr_expect_gt(failures_of(c, faulty_forward<2>), 0, "a stage read before its cp.async group completed");
}

static void run_bwd(const char *name, kc_attention_mma_case c, int deterministic)
{
    kc_env e;
    kc_env_begin(&e, name);
    kc_run_attention_mma_backward(&e, &c, deterministic);
    kc_env_end(&e);
}

// backward, {N, H, Tq, Tk, d, pad, scale_mul, seed}: key blocks of 64 and query steps of 32 not
// filled (77 keys), several of each, N·H > 1, strided and unaligned rows
Test(kernels_attention_mma, bwd_d40_cross77) { run_bwd("bwd d40 40x77 pad 8", {1, 2, 40, 77, 40, 8, 1.0f, 201}, 0); }
Test(kernels_attention_mma, bwd_d40_deterministic) { run_bwd("bwd d40 70x130 det", {2, 1, 70, 130, 40, 0, 1.0f, 202}, 1); }
Test(kernels_attention_mma, bwd_d64_self) { run_bwd("bwd d64 65x65", {1, 2, 65, 65, 64, 0, 1.0f, 203}, 0); }
Test(kernels_attention_mma, bwd_d64_deterministic_ld) { run_bwd("bwd d64 33x77 pad 8 det", {1, 2, 33, 77, 64, 8, 1.0f, 204}, 1); }
Test(kernels_attention_mma, bwd_d80_unaligned) { run_bwd("bwd d80 30x45 pad 3", {1, 2, 30, 45, 80, 3, 1.0f, 205}, 0); }
Test(kernels_attention_mma, bwd_d80_negative_scale_det) { run_bwd("bwd d80 20x70 scale -2 det", {1, 1, 20, 70, 80, 0, -2.0f, 206}, 1); }
// d 160: two CTAs per key block, each with half of dK, dV, dQ's columns
Test(kernels_attention_mma, bwd_d160_two_key_blocks) { run_bwd("bwd d160 40x77 pad 8", {1, 2, 40, 77, 160, 8, 1.0f, 207}, 0); }
Test(kernels_attention_mma, bwd_d160_deterministic) { run_bwd("bwd d160 70x130 det", {2, 1, 70, 130, 160, 0, 1.0f, 208}, 1); }
Test(kernels_attention_mma, bwd_d160_unaligned_negative_scale) { run_bwd("bwd d160 9x33 pad 3 scale -2", {1, 1, 9, 33, 160, 3, -2.0f, 209}, 0); }

Test(kernels_attention_mma, bwd_random_interleaving)
{
    simt::set_order("random", 2024);
    run_bwd("random bwd d40 20x70 det", {1, 1, 20, 70, 40, 0, 1.0f, 210}, 1);
    run_bwd("random bwd d64 40x33", {1, 1, 40, 33, 64, 8, 1.0f, 211}, 0);
    run_bwd("random bwd d160 20x70 det", {1, 1, 20, 70, 160, 0, 1.0f, 212}, 1);
    simt::set_order(NULL);
}
