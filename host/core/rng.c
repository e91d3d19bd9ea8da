/* rng.c - torch-compatible mt19937 + randn, and xoshiro256** for internal randomness. */
#include "rng.h"

#include <math.h>

#define MT_N 624
#define MT_M 397

void dl_torch_rng_seed(dl_torch_rng *g, uint64_t seed)
{
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < MT_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
    g->next = MT_N;
    g->has_cached_normal = 0;
    g->cached_normal = 0;
}

static void mt_regenerate(dl_torch_rng *g)
{
    uint32_t *s = g->state;
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    g->next = 0;
}

uint32_t dl_torch_rng_u32(dl_torch_rng *g)
{
    if (g->next >= MT_N) mt_regenerate(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static uint64_t torch_u64(dl_torch_rng *g)
{
    uint64_t hi = dl_torch_rng_u32(g), lo = dl_torch_rng_u32(g);
    return hi << 32 | lo;
}

static float torch_uniform_f32(dl_torch_rng *g)
{
    return (float)(dl_torch_rng_u32(g) & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
}

/* Box-Muller over 16 uniforms in place: pairs (j, j + 8). */
static void normal_fill_16(float *d)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = 2.0f * (float)M_PI * u2;
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
    }
}

void dl_torch_randn(dl_torch_rng *g, float *out, size_t n)
{
    if (n >= 16) {
        for (size_t i = 0; i < n; i++) out[i] = torch_uniform_f32(g);
        for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
        if (n % 16) {
            float *tail = out + n - 16;
            for (int i = 0; i < 16; i++) tail[i] = torch_uniform_f32(g);
            normal_fill_16(tail);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) { /* torch's scalar path: double Box-Muller with a cache */
        if (g->has_cached_normal) {
            g->has_cached_normal = 0;
            out[i] = (float)g->cached_normal;
            continue;
        }
        double u1 = (double)(torch_u64(g) & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
        double u2 = (double)(torch_u64(g) & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
        double r = sqrt(-2.0 * log1p(-u2)), theta = 2.0 * M_PI * u1;
        g->cached_normal = r * sin(theta);
        g->has_cached_normal = 1;
        out[i] = (float)(r * cos(theta));
    }
}

void dl_torch_rand(dl_torch_rng *g, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = torch_uniform_f32(g);
}

/* ---------------------------------------------------------------- xoshiro256** */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void dl_rng_seed(dl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t dl_rng_u64(dl_rng *r)
{
    uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double dl_rng_uniform(dl_rng *r) { return (double)(dl_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

uint64_t dl_rng_below(dl_rng *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do x = dl_rng_u64(r); while (x >= limit);
    return x % n;
}

double dl_rng_normal(dl_rng *r)
{
    double u1 = 1.0 - dl_rng_uniform(r), u2 = dl_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
