/* philox.c - Philox4x32-10 with A1111's NV counter layout and Box-Muller (see philox.h). */
#include "core/philox.h"

#include "core/error.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* 2^-32 and 2^-32 * 2 pi as the float32 constants A1111 uses (the arithmetic itself is done in
 * double, as numpy promotes uint32 * float32 to float64). */
static const float k_inv32 = 2.3283064e-10f;
static const float k_inv32_2pi = (float)(2.3283064e-10 * 6.2831855);

void dl_philox_seed(dl_philox_rng *g, uint64_t seed)
{
    g->seed = seed;
    g->offset = 0;
}

void dl_philox4x32_10(uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)ctr[0] * PHILOX_M0, p1 = (uint64_t)ctr[2] * PHILOX_M1;
        uint32_t c0 = (uint32_t)(p1 >> 32) ^ ctr[1] ^ k0;
        uint32_t c2 = (uint32_t)(p0 >> 32) ^ ctr[3] ^ k1;
        ctr[0] = c0;
        ctr[1] = (uint32_t)p1;
        ctr[2] = c2;
        ctr[3] = (uint32_t)p0;
        k0 += PHILOX_W0; /* the key bump after the last round is unused */
        k1 += PHILOX_W1;
    }
}

void dl_philox_randn(dl_philox_rng *g, float *out, size_t n)
{
    DL_ASSERT(n == 0 || out);
    DL_ASSERT((uint64_t)n <= 0xFFFFFFFFull + 1);
    const uint32_t key[2] = {(uint32_t)g->seed, (uint32_t)(g->seed >> 32)};
    const double a = (double)k_inv32, a_half = (double)(k_inv32 / 2.0f);
    const double b = (double)k_inv32_2pi, b_half = (double)(k_inv32_2pi / 2.0f);
    for (size_t i = 0; i < n; i++) {
        uint32_t c[4] = {(uint32_t)g->offset, 0, (uint32_t)i, 0};
        dl_philox4x32_10(c, key);
        /* numpy rounds the product, then the sum: the volatile stops -ffp-contract from fusing
         * them into an FMA (which would round once) */
        volatile double pu = (double)c[0] * a, pv = (double)c[1] * b;
        double u = pu + a_half; /* in (0, 1]: log is finite */
        double v = pv + b_half;
        out[i] = (float)(sqrt(-2.0 * log(u)) * sin(v));
    }
    g->offset++;
}
