/* rng.h - a torch-compatible CPU random generator: Mersenne Twister (mt19937) seeded as
 * torch.manual_seed does, and torch.randn's CPU algorithm, so a seed gives the same initial
 * latents as diffusers and ComfyUI on the CPU. Also a small fast generator for everything
 * else (data order, dropout, timesteps) that must merely be reproducible. */
#ifndef DANLU_RNG_H
#define DANLU_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_torch_rng {
    uint32_t state[624];
    int next;               /* index of the next word; 624 means "regenerate" */
    int has_cached_normal;  /* torch caches the second Box-Muller value of its scalar path */
    double cached_normal;
} dl_torch_rng;

/* Same state as torch.Generator().manual_seed(seed) (the low 32 bits seed the twister). */
void dl_torch_rng_seed(dl_torch_rng *g, uint64_t seed);
/* One 32-bit draw of the twister (torch's generator->random()). */
uint32_t dl_torch_rng_u32(dl_torch_rng *g);
/* torch.randn(n, generator=g) into out (contiguous fp32), bit-for-bit up to the last ulp of
 * log/sin/cos (torch's vectorised CPU path uses its own approximations). */
void dl_torch_randn(dl_torch_rng *g, float *out, size_t n);
/* torch.rand(n, generator=g): uniform [0, 1) from 24 random bits. */
void dl_torch_rand(dl_torch_rng *g, float *out, size_t n);

/* splitmix64-seeded xoshiro256**: fast, reproducible, with a copyable state (saved in training
 * states so a resumed run draws what an uninterrupted one would have). */
typedef struct dl_rng { uint64_t s[4]; } dl_rng;
void dl_rng_seed(dl_rng *r, uint64_t seed);
uint64_t dl_rng_u64(dl_rng *r);
/* Uniform double in [0, 1). */
double dl_rng_uniform(dl_rng *r);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t dl_rng_below(dl_rng *r, uint64_t n);
/* Standard normal (Box-Muller, double). */
double dl_rng_normal(dl_rng *r);

#ifdef __cplusplus
}
#endif
#endif
