/* test_embedding.c - sinusoidal timestep embedding against diffusers' get_timestep_embedding
 * (float32, as the UNet runs it) and the same formula in float64 (tests/gen/gen_embedding.py). */
#include "ops/cpu/embedding.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TOL
#define TOL 1e-5 /* vs diffusers' float32 output */
#endif
/* vs float64: diffusers itself rounds t * freq to fp32 first; at t = 999 that moves the angle by
 * up to ~3e-5 rad, so the float64 formula differs from diffusers (and from us) by ~1e-5. */
#ifndef TOL64
#define TOL64 1e-4
#endif

Test(embedding, golden_diffusers)
{
    static const char *const cases[] = {"sd15", "n1_odd", "noflip_shift1", "scaled"};
    dl_st_file f;
    tu_golden_open(&f, "embedding");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128], label[128];
        int64_t N, np;
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c], t), key)
        float *t = tu_golden_f32(&f, G("t"), &N);
        float *p = tu_golden_f32(&f, G("params"), &np);
        cr_assert_eq(np, 5);
        int64_t dim = (int64_t)p[0], sh[2] = {N, dim};
        float *ref = tu_golden_f32_shape(&f, G("emb"), 2, sh);
        float *ref64 = tu_golden_f32_shape(&f, G("emb64"), 2, sh);
#undef G
        float *out = tu_alloc_nan((size_t)(N * dim));
        dl_cpu_timestep_embedding(tu_ctx(), N, dim, t, p[1] != 0, p[2], p[3], p[4], out);
        snprintf(label, sizeof label, "%s vs diffusers fp32", cases[c]);
        tu_expect_close(out, ref, (size_t)(N * dim), TOL, label);
        snprintf(label, sizeof label, "%s vs float64", cases[c]);
        tu_expect_close(out, ref64, (size_t)(N * dim), TOL64, label);
        if (dim % 2)
            for (int64_t n = 0; n < N; n++) cr_expect_eq(out[n * dim + dim - 1], 0.0f, "odd dim: zero pad");
        free(t), free(p), free(ref), free(ref64), free(out);
    }
    dl_st_close(&f);
}
