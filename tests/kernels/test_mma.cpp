/* test_mma.cpp - kernels/mma.cuh under the SIMT emulator: a one-warp m16n8k16 tile through
 * cp.async, ldmatrix (plain and .trans) and mma.sync equals the CPU product for bf16 and fp16;
 * the half k-step m16n8k8 likewise; the model is not layout-agnostic (a kernel that swaps two A fragment registers gets a wrong
 * result), and a kernel that reads cp.async's destination without waiting sees NaN. */
#include "mma_probe.cu"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    alignas(16) uint16_t A[16 * 16];
    alignas(16) uint16_t B[16 * 8];
    float Af[16 * 16], Bf[16 * 8]; /* the rounded values, [m][k] and [k][n] */
    float C[16 * 8], D[16 * 8];
} tile;

static uint16_t to16(float v, int bf16)
{
    return bf16 ? __bfloat16_as_ushort(__float2bfloat16(v)) : __half_as_ushort(__float2half(v));
}
static float from16(uint16_t h, int bf16)
{
    return bf16 ? __bfloat162float(__ushort_as_bfloat16(h)) : __half2float(__ushort_as_half(h));
}

/* Random A, B (stored [k][n] when kn, else as B^T [n][k]) and C. */
static void fill(tile *x, int bf16, int kn, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < 256; i++) {
        x->A[i] = to16((float)rand() / RAND_MAX * 2 - 1, bf16);
        x->Af[i] = from16(x->A[i], bf16);
    }
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) {
            uint16_t h = to16((float)rand() / RAND_MAX * 2 - 1, bf16);
            x->Bf[k * 8 + n] = from16(h, bf16);
            if (kn) x->B[k * 8 + n] = h;
            else x->B[n * 16 + k] = h;
        }
    for (int i = 0; i < 128; i++) x->C[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int i = 0; i < 128; i++) x->D[i] = NAN;
}

/* Worst |D - (A B + C)| over the tile, in double. */
static double worst_error(const tile *x)
{
    double w = 0;
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double ref = x->C[m * 8 + n];
            for (int k = 0; k < 16; k++) ref += (double)x->Af[m * 16 + k] * x->Bf[k * 8 + n];
            double e = fabs(x->D[m * 8 + n] - ref);
            if (!(e <= w)) w = e; /* NaN wins */
        }
    return w;
}

static double run(int bf16, int kn, int variant, unsigned seed)
{
    tile *x = (tile *)aligned_alloc(16, sizeof(tile));
    cr_assert_not_null(x);
    fill(x, bf16, kn, seed);
    cr_assert_eq(dl_mma_probe(bf16, x->A, x->B, kn, x->C, x->D, variant, 0), 0);
    double w = worst_error(x);
    free(x);
    return w;
}

Test(mma, bf16_tile_through_cp_async_ldmatrix_mma)
{
    for (unsigned s = 1; s <= 3; s++) {
        double e = run(1, 0, MMA_PROBE_OK, s);
        cr_expect(e < 1e-5, "bf16, B^T via ldmatrix: worst error %g", e);
        e = run(1, 1, MMA_PROBE_OK, s + 10);
        cr_expect(e < 1e-5, "bf16, B [k][n] via ldmatrix.trans: worst error %g", e);
    }
}

Test(mma, f16_tile_through_cp_async_ldmatrix_mma)
{
    double e = run(0, 0, MMA_PROBE_OK, 5);
    cr_expect(e < 1e-5, "fp16, B^T via ldmatrix: worst error %g", e);
    e = run(0, 1, MMA_PROBE_OK, 6);
    cr_expect(e < 1e-5, "fp16, B [k][n] via ldmatrix.trans: worst error %g", e);
}

Test(mma, a_wrong_fragment_mapping_gives_a_wrong_tile)
{
    double e = run(1, 0, MMA_PROBE_SWAP_A, 7);
    cr_expect(e > 1e-2, "swapped A fragment registers still gave the right tile (worst error %g)", e);
}

/* More planted mapping bugs, each a wrong tile under the model (C is random, so even a swap of
 * accumulator rows changes D) */
Test(mma, wrong_b_fragment_mapping_gives_a_wrong_tile)
{
    double e = run(1, 0, MMA_PROBE_SWAP_B, 9);
    cr_expect(e > 1e-2, "swapped B fragment registers still gave the right tile (worst error %g)", e);
}
Test(mma, ldmatrix_without_trans_gives_a_wrong_tile)
{
    double e = run(1, 1, MMA_PROBE_NO_TRANS, 10);
    cr_expect(e > 1e-2, "B [k][n] read without .trans still gave the right tile (worst error %g)", e);
}
Test(mma, wrong_accumulator_rows_give_a_wrong_tile)
{
    double e = run(0, 0, MMA_PROBE_SWAP_D, 11);
    cr_expect(e > 1e-2, "accumulator rows g / g + 8 exchanged still gave the right tile (worst error %g)", e);
}

Test(mma, reading_before_the_cp_async_wait_sees_nan)
{
    double e = run(1, 0, MMA_PROBE_NO_WAIT, 8);
    cr_expect(isnan(e), "a kernel that skips cp.async.wait_group read real data (worst error %g)", e);
}

/* The same tile with threads interleaved at random between barriers (SIMT_ORDER=random): the
 * kernel has no shared-memory race, and the cp.async model keeps its state per block run. */
Test(mma, tile_under_random_interleaving)
{
    simt::set_order("random", 7);
    for (unsigned s = 20; s < 23; s++) {
        double e = run(1, (int)(s & 1), MMA_PROBE_OK, s);
        cr_expect(e < 1e-5, "random order, seed %u: worst error %g (%s)", s, e, simt::last_error_message());
    }
    simt::set_order(NULL);
}

/* m16n8k8: A [16][8], B [8][8] given as [k][n] (kn) or [n][k]; worst |D - (A B + C)|. */
static double run_k8(int bf16, int kn, unsigned seed)
{
    alignas(16) uint16_t A[16 * 8], B[8 * 8];
    float Af[16 * 8], Bf[8 * 8], C[16 * 8], D[16 * 8];
    srand(seed);
    for (int i = 0; i < 128; i++) {
        A[i] = to16((float)rand() / RAND_MAX * 2 - 1, bf16);
        Af[i] = from16(A[i], bf16);
    }
    for (int k = 0; k < 8; k++)
        for (int n = 0; n < 8; n++) {
            uint16_t h = to16((float)rand() / RAND_MAX * 2 - 1, bf16);
            Bf[k * 8 + n] = from16(h, bf16);
            B[kn ? k * 8 + n : n * 8 + k] = h;
        }
    for (int i = 0; i < 128; i++) {
        C[i] = (float)rand() / RAND_MAX - 0.5f;
        D[i] = NAN;
    }
    cr_assert_eq(dl_mma_probe_k8(bf16, A, B, kn, C, D, 0), 0);
    double w = 0;
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double ref = C[m * 8 + n];
            for (int k = 0; k < 8; k++) ref += (double)Af[m * 8 + k] * Bf[k * 8 + n];
            double e = fabs(D[m * 8 + n] - ref);
            if (!(e <= w)) w = e;
        }
    return w;
}

Test(mma, k8_tile_through_ldmatrix_mma)
{
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int kn = 0; kn < 2; kn++) {
            double e = run_k8(bf16, kn, (unsigned)(30 + 2 * bf16 + kn));
            cr_expect(e < 1e-5, "m16n8k8 %s, B %s: worst error %g", bf16 ? "bf16" : "fp16", kn ? "[k][n]" : "[n][k]", e);
        }
}
