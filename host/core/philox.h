/* philox.h - A1111's "NV" random number source: a CPU imitation of torch.randn on an NVIDIA
 * GPU (Philox4x32-10 counter-based generator + Box-Muller), so a seed gives the same initial
 * latents and ancestral noise as A1111 with "Random number generator source: NV" (and, up to
 * the last float bit, the first draw of A1111's default GPU source on NVIDIA cards, per A1111). */
#ifndef DANLU_PHILOX_H
#define DANLU_PHILOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* State of one generator: the seed (the 64-bit Philox key) and the number of randn calls made
 * so far (every call, whatever its size, uses the next offset). */
typedef struct dl_philox_rng {
    uint64_t seed;
    uint64_t offset;
} dl_philox_rng;

/* A fresh generator for seed (offset 0), as A1111's rng_philox.Generator(seed). */
void dl_philox_seed(dl_philox_rng *g, uint64_t seed);

/* One Philox4x32-10 block: ctr (4 words) is replaced by the output, key (2 words) is the seed. */
void dl_philox4x32_10(uint32_t ctr[4], const uint32_t key[2]);

/* randn of an n-element tensor (n < 2^32), as A1111's Generator.randn(shape) with prod(shape)
 * = n: element i is Box-Muller (first value only) of words 0 and 1 of the block with counter
 * [offset, 0, i, 0] and key = seed. Then offset += 1. out: contiguous fp32 [n]. */
void dl_philox_randn(dl_philox_rng *g, float *out, size_t n);

#ifdef __cplusplus
}
#endif
#endif
