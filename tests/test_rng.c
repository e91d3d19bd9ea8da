/* test_rng.c - the torch-compatible generator reproduces torch.randn / torch.rand for several
 * seeds and sizes (both of torch's code paths), and the internal generator is reproducible. */
#include "core/rng.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const uint64_t k_seeds[] = {0, 1, 42, 123456789, 4294967303ull};

static void check(const dl_st_file *f, const char *name, const float *got, int64_t n, double tol)
{
    int64_t m;
    float *ref = tu_golden_f32(f, name, &m);
    cr_assert_eq(m, n, "%s: size", name);
    tu_expect_close(got, ref, (size_t)n, tol, name);
    free(ref);
}

Test(rng, torch_randn_matches_all_paths)
{
    dl_st_file f;
    tu_golden_open(&f, "rng");
    static const int sizes[] = {1, 3, 15, 16, 17, 40, 256};
    float buf[256];
    char name[96];
    for (size_t s = 0; s < sizeof k_seeds / sizeof *k_seeds; s++) {
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            dl_torch_rng g;
            dl_torch_rng_seed(&g, k_seeds[s]);
            dl_torch_randn(&g, buf, (size_t)sizes[k]);
            snprintf(name, sizeof name, "randn_s%llu_n%d.x", (unsigned long long)k_seeds[s], sizes[k]);
            /* torch's AVX2 log/sincos approximations differ from libm by a few ulp */
            check(&f, name, buf, sizes[k], 1e-6);
        }
        dl_torch_rng g;
        dl_torch_rng_seed(&g, k_seeds[s]);
        dl_torch_rand(&g, buf, 37);
        snprintf(name, sizeof name, "rand_s%llu.x", (unsigned long long)k_seeds[s]);
        check(&f, name, buf, 37, 0); /* uniform draws are exact */
        dl_torch_rng_seed(&g, k_seeds[s]);
        dl_torch_randn(&g, buf, 3);
        dl_torch_randn(&g, buf + 3, 3);
        snprintf(name, sizeof name, "randn_twice_s%llu.x", (unsigned long long)k_seeds[s]);
        check(&f, name, buf, 6, 1e-7);
        dl_torch_rng_seed(&g, k_seeds[s]);
        dl_torch_randn(&g, buf, 256);
        snprintf(name, sizeof name, "latents_s%llu.x", (unsigned long long)k_seeds[s]);
        check(&f, name, buf, 256, 1e-6);
    }
    dl_st_close(&f);
}

Test(rng, internal_generator_is_reproducible_and_uniform)
{
    dl_rng a, b;
    dl_rng_seed(&a, 7);
    dl_rng_seed(&b, 7);
    for (int i = 0; i < 1000; i++) cr_assert_eq(dl_rng_u64(&a), dl_rng_u64(&b));
    dl_rng_seed(&b, 8);
    cr_expect_neq(dl_rng_u64(&a), dl_rng_u64(&b));
    /* moments of 200k draws */
    double s = 0, s2 = 0;
    int counts[10] = {0};
    for (int i = 0; i < 200000; i++) {
        double n = dl_rng_normal(&a);
        s += n;
        s2 += n * n;
        counts[dl_rng_below(&a, 10)]++;
    }
    cr_expect(fabs(s / 200000) < 0.01, "normal mean %g", s / 200000);
    cr_expect(fabs(s2 / 200000 - 1) < 0.02, "normal variance %g", s2 / 200000);
    for (int i = 0; i < 10; i++) cr_expect(abs(counts[i] - 20000) < 800, "bucket %d: %d", i, counts[i]);
}
