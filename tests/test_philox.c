/* test_philox.c - A1111's "NV" randn (Philox4x32-10 + Box-Muller) against the numpy
 * transcription of A1111's modules/rng_philox.py (tests/gen/gen_philox.py ->
 * tests/golden/philox.safetensors: seeds incl. one above 2^32, sizes 1, 7, 16, 4*64*64, two
 * consecutive calls), A1111's documented seed-0 values, and the `--rng nv` initial latents.
 * Tolerance: max |got - ref| <= 1e-6 * max(1, |ref|) per element (the math is double libm
 * log/sqrt/sin rounded to float32, as numpy; in practice it is bit-exact, checked too). */
#include "cli/sample_args.h"
#include "core/philox.h"
#include "sample/infotext.h"
#include "sample/pipeline.h"
#include "sample/schedule.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void expect_match(const float *got, const float *ref, size_t n, const char *label)
{
    size_t differ = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "%s[%zu] = %g", label, i, got[i]);
        double d = fabs((double)got[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
        if (d > worst) worst = d;
        if (got[i] != ref[i]) differ++;
    }
    cr_expect(worst <= 1e-6, "%s: max rel diff %g", label, worst);
    /* bit-exactness: allow a rare last-ulp difference of libm vs numpy's SIMD log/sin */
    cr_expect(differ <= n / 1000, "%s: %zu of %zu elements not bit-exact", label, differ, n);
}

Test(philox, matches_a1111_transcription)
{
    dl_st_file f;
    tu_golden_open(&f, "philox");
    const uint64_t seeds[] = {0, 1, 42, 3735928559u, (1ull << 32) + 7};
    const size_t sizes[] = {1, 7, 16, 4 * 64 * 64};
    for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++)
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k];
            char name[96];
            dl_philox_rng g;
            dl_philox_seed(&g, seeds[s]);
            float *got = tu_alloc_nan(n);
            for (int call = 0; call < 2; call++) {
                snprintf(name, sizeof name, "s%llu_n%zu.x%d", (unsigned long long)seeds[s], n, call);
                int64_t numel = 0;
                float *ref = tu_golden_f32(&f, name, &numel);
                cr_assert_eq((size_t)numel, n, "%s", name);
                dl_philox_randn(&g, got, n);
                cr_expect_eq(g.offset, (uint64_t)call + 1);
                expect_match(got, ref, n, name);
                free(ref);
            }
            free(got);
        }
    dl_st_close(&f);
}

/* A1111's rng_philox docstring (and torch.randn((3, 4), device="cuda") after seed 0). */
Test(philox, a1111_documented_seed0)
{
    const double want[12] = {-0.92466259, -0.42534415, -2.6438457,  0.14518388, -0.12086647, -0.57972564,
                             -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497};
    dl_philox_rng g;
    dl_philox_seed(&g, 0);
    float got[12];
    dl_philox_randn(&g, got, 12);
    for (int i = 0; i < 12; i++) cr_expect(fabs(got[i] - want[i]) < 1e-6, "[%d] %.8f vs %.8f", i, got[i], want[i]);
}

/* `danlu sample --rng nv`: image i's initial latents are seed+i's first Philox draw of shape
 * [4, h, w] (offset 0), returned channels-last; torch-cpu stays torch's generator. */
Test(philox, pipeline_initial_latents_nv)
{
    dl_st_file f;
    tu_golden_open(&f, "philox");
    const int C = 4, h = 64, w = 64, n = 2;
    const size_t per = (size_t)C * h * w;
    const uint64_t seeds[2] = {42, 43};
    float *got = tu_alloc_nan(per * n);
    cr_assert_eq(dl_pipeline_initial_noise(DL_RNG_NV, DL_SEED_PER_IMAGE, n, seeds, C, h, w, got), DL_OK);
    int64_t numel = 0;
    float *ref = tu_golden_f32(&f, "s42_n16384.x0", &numel);
    float *nchw = malloc(sizeof(float) * per);
    for (int c = 0; c < C; c++)
        for (int p = 0; p < h * w; p++) nchw[(size_t)c * h * w + p] = got[(size_t)p * C + c];
    expect_match(nchw, ref, per, "nv latents seed 42");
    /* image 1 is seed 43's own first draw */
    dl_philox_rng g;
    dl_philox_seed(&g, 43);
    dl_philox_randn(&g, ref, per);
    for (int c = 0; c < C; c++)
        for (int p = 0; p < h * w; p++) nchw[(size_t)c * h * w + p] = got[per + (size_t)p * C + c];
    cr_expect_eq(memcmp(nchw, ref, sizeof(float) * per), 0, "nv latents seed 43");
    /* the default source is unchanged: torch's CPU generator */
    float *cpu = tu_alloc_nan(per * n);
    cr_assert_eq(dl_pipeline_initial_noise(DL_RNG_TORCH_CPU, DL_SEED_PER_IMAGE, n, seeds, C, h, w, cpu), DL_OK);
    cr_expect_neq(memcmp(cpu, got, sizeof(float) * per), 0);
    free(cpu);
    free(nchw);
    free(ref);
    free(got);
    dl_st_close(&f);
}

/* One noise tensor as A1111's ImageRNG draws it: per image its own generator's next [C, h, w]
 * (which must be at offset `draw`), into nz [n, h, w, C]. */
static void draw_nv(dl_philox_rng *g, int n, int C, int h, int w, float *tmp, float *nz, int draw)
{
    size_t per = (size_t)C * h * w;
    for (int b = 0; b < n; b++) {
        cr_assert_eq(g[b].offset, (uint64_t)draw);
        dl_philox_randn(&g[b], tmp, per); /* [C, h, w] */
        for (int c = 0; c < C; c++)
            for (int q = 0; q < h * w; q++) nz[per * b + (size_t)q * C + c] = tmp[(size_t)c * h * w + q];
    }
}

/* The whole txt2img loop with --rng nv (Euler a, 2 images, no guidance) equals a hand-written
 * loop that draws, per image, the initial latents at Philox offset 0 and step k's ancestral
 * noise at offset k + 1 from the generator of seed + i (A1111's ImageRNG order). Bit-exact:
 * both run the same float ops in the same order. */
Test(philox, pipeline_nv_ancestral_noise_order)
{
    dl_sd *sd = NULL;
    cr_assert_eq(dl_sd_open(&sd, tu_path("tests/golden/tiny_pipe"), NULL, tu_ctx(), 1), DL_OK, "%s", dl_error_msg());
    const int n = 2, h = 8, w = 8, C = dl_sd_latent_channels(sd), D = dl_sd_hidden(sd);
    const size_t per = (size_t)C * h * w, nx = per * n;
    const uint64_t seeds[2] = {7, 8};
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = "a red chair";
    p.width = p.height = 16;
    p.steps = 3;
    p.cfg_scale = 1.0f;
    p.sampler = DL_SAMPLER_EULER_A;
    p.rng = DL_RNG_NV;
    float *img = tu_alloc_nan((size_t)n * 16 * 16 * 3), *lat = tu_alloc_nan(nx);
    cr_assert_eq(dl_pipeline_generate(sd, &p, n, seeds, DL_SEED_PER_IMAGE, img, lat, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());

    /* reference loop */
    float *cond = NULL;
    int T = 0;
    cr_assert_eq(dl_pipeline_encode_prompt(sd, p.prompt, 1, 1, 8, &cond, &T), DL_OK);
    float *ctx = malloc(sizeof(float) * (size_t)n * T * D);
    for (int b = 0; b < n; b++) memcpy(ctx + (size_t)b * T * D, cond, sizeof(float) * (size_t)T * D);
    dl_schedule_config scfg;
    dl_schedule_config_sd15(&scfg);
    scfg.prediction = dl_sd_v_prediction(sd) ? DL_PRED_V : DL_PRED_EPSILON;
    dl_sampler_opts so = p.sopts;
    so.strength = 1.0;
    dl_sampler s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER_A, &scfg, p.steps, &so, (int64_t)nx), DL_OK);
    dl_philox_rng g[2];
    for (int b = 0; b < n; b++) dl_philox_seed(&g[b], seeds[b]);
    float *x = malloc(sizeof(float) * nx), *nz = malloc(sizeof(float) * nx), *xin = malloc(sizeof(float) * nx);
    float *out = malloc(sizeof(float) * nx), *tmp = malloc(sizeof(float) * per);
    int draws = 0;
    draw_nv(g, n, C, h, w, tmp, nz, draws++);
    dl_sampler_init_txt2img(&s, nz, x);
    while (!dl_sampler_done(&s)) {
        float t = dl_sampler_timestep(&s), c = dl_sampler_input_scale(&s), tb[2] = {t, t};
        for (size_t i = 0; i < nx; i++) xin[i] = x[i] * c;
        cr_assert_eq(dl_sd_unet(sd, n, h, w, xin, tb, ctx, T, out), DL_OK);
        if (dl_sampler_needs_noise(&s)) draw_nv(g, n, C, h, w, tmp, nz, draws++);
        dl_sampler_step(&s, out, x, nz);
    }
    cr_expect_geq(draws, 1 + p.steps - 1, "Euler a draws its noise every step");
    for (size_t i = 0; i < nx; i++) cr_assert(isfinite(lat[i]));
    cr_expect_eq(memcmp(lat, x, sizeof(float) * nx), 0, "nv latents differ from the A1111-order reference");
    dl_sampler_free(&s);
    free(x);
    free(nz);
    free(xin);
    free(out);
    free(tmp);
    free(ctx);
    free(cond);
    free(img);
    free(lat);
    dl_sd_close(sd);
}

/* --rng parsing: torch-cpu (default), nv, anything else an error. */
Test(philox, cli_rng_option)
{
    dl_sample_args a;
    dl_sa_defaults(&a, "sample");
    cr_expect_eq(a.rng, DL_RNG_TORCH_CPU);
    char *ok[] = {"--rng", "nv"}, *back[] = {"--rng", "torch-cpu"}, *bad[] = {"--rng", "gpu"};
    int i = 0;
    cr_expect_eq(dl_sa_parse(&a, 2, ok, &i), 1);
    cr_expect_eq(a.rng, DL_RNG_NV);
    i = 0;
    cr_expect_eq(dl_sa_parse(&a, 2, back, &i), 1);
    cr_expect_eq(a.rng, DL_RNG_TORCH_CPU);
    i = 0;
    cr_expect_eq(dl_sa_parse(&a, 2, bad, &i), -1);
    dl_sa_free(&a);
}

Test(philox, infotext_names_the_rng_source)
{
    dl_infotext it = {.prompt = "a cat", .steps = 20, .sampler = "Euler a", .cfg_scale = 7, .seed = 42,
                      .width = 512, .height = 512, .strength = -1, .clip_skip = 1, .rng = "NV"};
    char *s = dl_infotext_format(&it);
    cr_assert_not_null(s);
    cr_expect(strstr(s, ", RNG: NV") != NULL, "%s", s);
    free(s);
    it.rng = NULL;
    s = dl_infotext_format(&it);
    cr_expect(strstr(s, "RNG") == NULL, "the default source is not written: %s", s);
    free(s);
}
