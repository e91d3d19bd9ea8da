/* test_sched.c - noise schedules and samplers against diffusers (tests/gen/gen_sched.py): the
 * DDPM training schedule, add_noise, get_velocity, sd-scripts' min-SNR weights and noise offset,
 * every sampler's timesteps and sigmas, and full txt2img / img2img sampling loops over a toy
 * model with the noise drawn from dl_torch_randn in diffusers' order. */
#include "core/rng.h"
#include "sample/sampler.h"
#include "sample/schedule.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LATENT_NUMEL 256 /* [1, 4, 8, 8] */

/* fp32 end-to-end tolerance of a whole sampling loop against diffusers in fp32 */
static const double k_loop_tol = 1e-5;

static int64_t *golden_i64(const dl_st_file *f, const char *name, int64_t *n)
{
    const dl_st_tensor *t = dl_st_find(f, name);
    cr_assert(t, "golden %s missing", name);
    cr_assert_eq(t->dtype, DL_I64, "golden %s not int64", name);
    *n = dl_st_numel(t);
    int64_t *v = malloc(sizeof(int64_t) * (size_t)(*n > 0 ? *n : 1));
    memcpy(v, t->data, sizeof(int64_t) * (size_t)*n);
    return v;
}

static void check(const dl_st_file *f, const char *name, const float *got, int64_t n, double tol)
{
    int64_t m;
    float *ref = tu_golden_f32(f, name, &m);
    cr_assert_eq(m, n, "%s: %lld values, expected %lld", name, (long long)n, (long long)m);
    tu_expect_close(got, ref, (size_t)n, tol, name);
    free(ref);
}

static double rel_err(const dl_st_file *f, const char *name, const float *got, int64_t n)
{
    int64_t m;
    float *ref = tu_golden_f32(f, name, &m);
    cr_assert_eq(m, n, "%s: size", name);
    double e = tu_rel_l2(got, ref, (size_t)n);
    free(ref);
    return e;
}

Test(sched, training_schedules_match_ddpm)
{
    dl_st_file f;
    tu_golden_open(&f, "sched");
    const char *names[] = {"sd15", "linear", "cos"};
    for (int k = 0; k < 3; k++) {
        dl_schedule_config cfg;
        dl_schedule_config_sd15(&cfg);
        if (k == 1) {
            cfg.beta_schedule = DL_BETA_LINEAR;
            cfg.beta_start = 0.0001;
            cfg.beta_end = 0.02;
        } else if (k == 2) {
            cfg.beta_schedule = DL_BETA_SQUAREDCOS_CAP_V2;
        }
        dl_schedule s;
        cr_assert_eq(dl_schedule_init(&s, &cfg), DL_OK, "%s", dl_error_msg());
        char name[64];
        snprintf(name, sizeof name, "train_%s.betas", names[k]);
        check(&f, name, s.betas, 1000, 1e-6);
        snprintf(name, sizeof name, "train_%s.alphas_cumprod", names[k]);
        check(&f, name, s.alphas_cumprod, 1000, 1e-6);
        dl_schedule_free(&s);
    }
    dl_st_close(&f);
}

Test(sched, add_noise_velocity_min_snr_noise_offset)
{
    dl_st_file f;
    tu_golden_open(&f, "sched");
    dl_schedule_config cfg;
    dl_schedule_config_sd15(&cfg);
    dl_schedule s;
    cr_assert_eq(dl_schedule_init(&s, &cfg), DL_OK);

    int64_t n;
    float *x0 = tu_golden_f32(&f, "noise.x0", &n);
    float *eps = tu_golden_f32(&f, "noise.eps", NULL);
    int64_t nt, *t = golden_i64(&f, "noise.t", &nt);
    cr_assert_eq(nt, 3);
    float *out = tu_alloc_nan((size_t)n);
    dl_schedule_add_noise(&s, 3, n / 3, t, x0, eps, out);
    check(&f, "noise.xt", out, n, 1e-6);
    dl_schedule_velocity(&s, 3, n / 3, t, x0, eps, out);
    check(&f, "noise.v", out, n, 1e-6);
    free(x0);
    free(eps);
    free(t);
    free(out);

    /* min-SNR-gamma: sd-scripts' all_snr and weights */
    check(&f, "snr.all_snr", s.snr, 1000, 1e-6);
    int64_t *ts = golden_i64(&f, "snr.t", &nt);
    float *w = tu_alloc_nan((size_t)nt);
    const float gammas[] = {5, 1, 20};
    for (int g = 0; g < 3; g++) {
        char name[64];
        dl_schedule_min_snr_weights(&s, nt, ts, gammas[g], DL_PRED_EPSILON, w);
        snprintf(name, sizeof name, "snr.w_eps_g%d", (int)gammas[g]);
        check(&f, name, w, nt, 1e-6);
        dl_schedule_min_snr_weights(&s, nt, ts, gammas[g], DL_PRED_V, w);
        snprintf(name, sizeof name, "snr.w_v_g%d", (int)gammas[g]);
        check(&f, name, w, nt, 1e-6);
    }
    free(ts);
    free(w);

    /* noise offset on channels-last [2, 30, 4] */
    float *lat = tu_golden_f32(&f, "offset.latents", &n);
    float *noise = tu_golden_f32(&f, "offset.noise", NULL);
    float *r = tu_golden_f32(&f, "offset.r", NULL);
    float *buf = malloc(sizeof(float) * (size_t)n);
    const struct { const char *name; float off, ada; } cases[] = {
        {"offset_plain.out", 0.1f, 0.0f},
        {"offset_adaptive.out", 0.05f, 0.3f},
        {"offset_adaptive_neg.out", 0.01f, -0.4f},
    };
    for (int c = 0; c < 3; c++) {
        memcpy(buf, noise, sizeof(float) * (size_t)n);
        dl_schedule_noise_offset(2, 30, 4, cases[c].off, cases[c].ada, lat, r, buf);
        check(&f, cases[c].name, buf, n, 1e-6);
    }
    free(lat);
    free(noise);
    free(r);
    free(buf);
    dl_schedule_free(&s);
    dl_st_close(&f);
}

/* meta = [kind, v_prediction, spacing, karras, steps] */
static void create_from_meta(dl_sampler *s, const int64_t *meta, double strength)
{
    dl_schedule_config cfg;
    dl_schedule_config_sd15(&cfg);
    cfg.prediction = meta[1] ? DL_PRED_V : DL_PRED_EPSILON;
    dl_sampler_opts o;
    dl_sampler_opts_default(&o);
    o.spacing = (dl_spacing)meta[2];
    o.karras = (int)meta[3];
    o.strength = strength;
    int rc = dl_sampler_create(s, (dl_sampler_kind)meta[0], &cfg, (int)meta[4], &o, LATENT_NUMEL);
    cr_assert_eq(rc, DL_OK, "create %s: %s", dl_sampler_kind_name((dl_sampler_kind)meta[0]),
                 dl_error_msg());
}

Test(sched, timesteps_and_sigmas_match_diffusers)
{
    dl_st_file f;
    tu_golden_open(&f, "sched");
    const int count = (int)tu_golden_int(&f, "ts.count");
    cr_assert_gt(count, 50);
    double worst_t = 0, worst_s = 0;
    for (int c = 0; c < count; c++) {
        char name[64];
        int64_t nm;
        snprintf(name, sizeof name, "ts%d.meta", c);
        int64_t *meta = golden_i64(&f, name, &nm);
        dl_sampler s;
        create_from_meta(&s, meta, 1.0);
        const char *kn = dl_sampler_kind_name(s.kind);
        snprintf(name, sizeof name, "ts%d.timesteps", c);
        int64_t nt;
        float *ref = tu_golden_f32(&f, name, &nt);
        cr_assert_eq(nt, s.n_full, "%s (%s, spacing %d, karras %d, %d steps): %d timesteps, "
                     "diffusers %lld", name, kn, (int)meta[2], (int)meta[3], (int)meta[4], s.n_full,
                     (long long)nt);
        for (int i = 0; i < s.n_full; i++)
            cr_assert(fabsf(s.timesteps_full[i] - ref[i]) <= 1e-4f * fmaxf(1.0f, fabsf(ref[i])),
                      "%s (%s, spacing %d, karras %d, %d steps)[%d]: %.6f, diffusers %.6f", name,
                      kn, (int)meta[2], (int)meta[3], (int)meta[4], i, s.timesteps_full[i], ref[i]);
        double e = tu_rel_l2(s.timesteps_full, ref, (size_t)nt);
        if (e > worst_t) worst_t = e;
        free(ref);
        snprintf(name, sizeof name, "ts%d.sigmas", c);
        if (dl_st_find(&f, name)) {
            cr_assert(s.sigmas_full, "%s: no sigmas", name);
            check(&f, name, s.sigmas_full, s.n_full + 1, 1e-6);
            e = rel_err(&f, name, s.sigmas_full, s.n_full + 1);
            if (e > worst_s) worst_s = e;
        }
        snprintf(name, sizeof name, "ts%d.init_noise_sigma", c);
        check(&f, name, &s.init_noise_sigma, 1, 1e-6);
        dl_sampler_free(&s);
        free(meta);
    }
    fprintf(stderr, "sched: %d timestep tables, worst rel L2 timesteps %.2e, sigmas %.2e\n", count,
            worst_t, worst_s);
    dl_st_close(&f);
}

/* The toy model of the generator, in float32 as torch evaluates it. */
static int toy_model(void *user, const float *x, float t, float *out)
{
    int *calls = user;
    (*calls)++;
    const float c = cosf(t / 300.0f), d = t / 1000.0f;
    for (int i = 0; i < LATENT_NUMEL; i++) out[i] = 0.3f * x[i] * c + 0.1f * sinf(x[i] + d);
    return DL_OK;
}

typedef struct noise_src {
    dl_torch_rng g;
    int ndraws;
    float *draws;   /* [cap, LATENT_NUMEL] record of what was drawn */
    int cap;
} noise_src;

static int torch_noise(void *user, float *out, int64_t n)
{
    noise_src *ns = user;
    cr_assert_eq(n, LATENT_NUMEL);
    dl_torch_randn(&ns->g, out, (size_t)n);
    if (ns->ndraws < ns->cap) memcpy(ns->draws + (size_t)ns->ndraws * LATENT_NUMEL, out, sizeof(float) * LATENT_NUMEL);
    ns->ndraws++;
    return DL_OK;
}

/* Runs the loop of case `prefix` from x and compares draws and the result. */
static double run_and_check(const dl_st_file *f, const char *prefix, dl_sampler *s, float *x,
                            noise_src *ns)
{
    char name[64];
    int calls = 0;
    const int before = ns->ndraws;
    cr_assert_eq(dl_sampler_run(s, x, toy_model, &calls, torch_noise, ns), DL_OK, "%s",
                 dl_error_msg());
    cr_assert_eq(calls, s->n_calls, "%s: %d model calls, expected %d", prefix, calls, s->n_calls);
    snprintf(name, sizeof name, "%s.ndraws", prefix);
    const int64_t ndraws = tu_golden_int(f, name);
    cr_assert_eq(ns->ndraws - before, ndraws, "%s (%s): %d noise draws, diffusers %lld", prefix,
                 dl_sampler_kind_name(s->kind), ns->ndraws - before, (long long)ndraws);
    if (ndraws > 0) {
        snprintf(name, sizeof name, "%s.draws", prefix);
        check(f, name, ns->draws + (size_t)before * LATENT_NUMEL, ndraws * LATENT_NUMEL, 1e-6);
    }
    snprintf(name, sizeof name, "%s.out", prefix);
    const double e = rel_err(f, name, x, LATENT_NUMEL);
    cr_assert(e <= k_loop_tol, "%s (%s, pred %d, %d steps): rel L2 %.3e > %.0e", prefix,
              dl_sampler_kind_name(s->kind), (int)s->pred, s->num_inference_steps, e, k_loop_tol);
    return e;
}

Test(sched, txt2img_loops_match_diffusers)
{
    dl_st_file f;
    tu_golden_open(&f, "sched");
    const int count = (int)tu_golden_int(&f, "loop.count");
    cr_assert_geq(count, 14);
    float x[LATENT_NUMEL], init[LATENT_NUMEL];
    noise_src ns = {.cap = 64};
    ns.draws = malloc(sizeof(float) * (size_t)ns.cap * LATENT_NUMEL);
    double worst[DL_SAMPLER_COUNT] = {0};
    for (int c = 0; c < count; c++) {
        char name[64], prefix[32];
        snprintf(prefix, sizeof prefix, "loop%d", c);
        int64_t nm;
        snprintf(name, sizeof name, "%s.meta", prefix);
        int64_t *meta = golden_i64(&f, name, &nm);
        dl_schedule_config cfg;
        dl_schedule_config_sd15(&cfg);
        cfg.prediction = meta[1] ? DL_PRED_V : DL_PRED_EPSILON;
        dl_sampler_opts o;
        dl_sampler_opts_default(&o);
        o.spacing = (dl_spacing)meta[2];
        o.karras = (int)meta[3];
        snprintf(name, sizeof name, "%s.eta", prefix);
        float *eta = tu_golden_f32(&f, name, NULL);
        if (meta[0] == DL_SAMPLER_DDIM || (meta[0] == DL_SAMPLER_EULER_A && eta[0] > 0))
            o.eta = eta[0];
        free(eta);
        dl_sampler s;
        cr_assert_eq(dl_sampler_create(&s, (dl_sampler_kind)meta[0], &cfg, (int)meta[4], &o,
                                       LATENT_NUMEL), DL_OK, "%s", dl_error_msg());
        snprintf(name, sizeof name, "%s.seed", prefix);
        dl_torch_rng_seed(&ns.g, (uint64_t)tu_golden_int(&f, name));
        ns.ndraws = 0;
        dl_torch_randn(&ns.g, init, LATENT_NUMEL);
        snprintf(name, sizeof name, "%s.init", prefix);
        check(&f, name, init, LATENT_NUMEL, 1e-6);
        dl_sampler_init_txt2img(&s, init, x);
        const double e = run_and_check(&f, prefix, &s, x, &ns);
        if (e > worst[s.kind]) worst[s.kind] = e;
        dl_sampler_free(&s);
        free(meta);
    }
    fprintf(stderr, "sched: txt2img loops, worst rel L2 vs diffusers:");
    for (int k = 0; k < DL_SAMPLER_COUNT; k++)
        fprintf(stderr, " %s %.1e", dl_sampler_kind_name((dl_sampler_kind)k), worst[k]);
    fprintf(stderr, "\n");
    free(ns.draws);
    dl_st_close(&f);
}

Test(sched, img2img_matches_diffusers)
{
    dl_st_file f;
    tu_golden_open(&f, "sched");
    const int count = (int)tu_golden_int(&f, "i2i.count");
    cr_assert_geq(count, 7);
    float *x0 = tu_golden_f32(&f, "img2img.x0", NULL);
    float x[LATENT_NUMEL], noise[LATENT_NUMEL];
    noise_src ns = {.cap = 64};
    ns.draws = malloc(sizeof(float) * (size_t)ns.cap * LATENT_NUMEL);
    double worst = 0;
    for (int c = 0; c < count; c++) {
        char name[64], prefix[32];
        snprintf(prefix, sizeof prefix, "i2i%d", c);
        int64_t nm;
        snprintf(name, sizeof name, "%s.meta", prefix);
        int64_t *meta = golden_i64(&f, name, &nm);
        snprintf(name, sizeof name, "%s.strength_milli", prefix);
        const double strength = (double)tu_golden_int(&f, name) / 1000.0;
        dl_sampler s;
        create_from_meta(&s, meta, strength);
        snprintf(name, sizeof name, "%s.begin", prefix);
        cr_assert_eq(s.begin, tu_golden_int(&f, name), "%s: begin index", prefix);
        snprintf(name, sizeof name, "%s.pipeline_steps", prefix);
        cr_assert_eq(s.pipeline_steps, tu_golden_int(&f, name), "%s: steps", prefix);
        snprintf(name, sizeof name, "%s.timesteps", prefix);
        check(&f, name, s.timesteps, s.n_calls, 1e-7);

        snprintf(name, sizeof name, "%s.seed", prefix);
        dl_torch_rng_seed(&ns.g, (uint64_t)tu_golden_int(&f, name));
        ns.ndraws = 0;
        dl_torch_randn(&ns.g, noise, LATENT_NUMEL);
        dl_sampler_init_img2img(&s, x0, noise, x);
        snprintf(name, sizeof name, "%s.noised", prefix);
        check(&f, name, x, LATENT_NUMEL, 1e-6);
        const double e = run_and_check(&f, prefix, &s, x, &ns);
        if (e > worst) worst = e;
        dl_sampler_free(&s);
        free(meta);
    }
    fprintf(stderr, "sched: %d img2img loops, worst rel L2 vs diffusers %.1e\n", count, worst);
    free(x0);
    free(ns.draws);
    dl_st_close(&f);
}

Test(sched, step_api_equals_run_and_heun_calls)
{
    /* the step-wise API by hand gives exactly what dl_sampler_run gives; Heun makes 2N-1 calls */
    dl_schedule_config cfg;
    dl_schedule_config_sd15(&cfg);
    dl_sampler a, b;
    cr_assert_eq(dl_sampler_create(&a, DL_SAMPLER_HEUN, &cfg, 5, NULL, LATENT_NUMEL), DL_OK);
    cr_assert_eq(dl_sampler_create(&b, DL_SAMPLER_HEUN, &cfg, 5, NULL, LATENT_NUMEL), DL_OK);
    cr_assert_eq(a.n_calls, 9);
    float xa[LATENT_NUMEL], xb[LATENT_NUMEL], xin[LATENT_NUMEL], out[LATENT_NUMEL];
    tu_fill_uniform(xa, LATENT_NUMEL, 7, -1, 1);
    memcpy(xb, xa, sizeof xa);
    int calls = 0;
    cr_assert_eq(dl_sampler_run(&a, xa, toy_model, &calls, NULL, NULL), DL_OK);
    cr_assert_eq(calls, 9);
    while (!dl_sampler_done(&b)) {
        const float c = dl_sampler_input_scale(&b);
        for (int i = 0; i < LATENT_NUMEL; i++) xin[i] = xb[i] * c;
        toy_model(&calls, xin, dl_sampler_timestep(&b), out);
        cr_assert(!dl_sampler_needs_noise(&b));
        dl_sampler_step(&b, out, xb, NULL);
    }
    cr_assert_eq(memcmp(xa, xb, sizeof xa), 0);
    /* reset gives the same run again */
    dl_sampler_reset(&a);
    tu_fill_uniform(xb, LATENT_NUMEL, 7, -1, 1);
    cr_assert_eq(dl_sampler_run(&a, xb, toy_model, &calls, NULL, NULL), DL_OK);
    cr_assert_eq(memcmp(xa, xb, sizeof xa), 0);
    dl_sampler_free(&a);
    dl_sampler_free(&b);
}

Test(sched, bad_input_is_a_clear_error)
{
    dl_sampler_kind k;
    cr_assert_eq(dl_sampler_kind_parse("euler_a", &k), DL_OK);
    cr_assert_eq(k, DL_SAMPLER_EULER_A);
    cr_assert_eq(dl_sampler_kind_parse("k_lms", &k), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "k_lms") && strstr(dl_error_msg(), "dpmpp_2m"), "%s",
              dl_error_msg());
    dl_spacing sp;
    cr_assert_eq(dl_spacing_parse("trailing", &sp), DL_OK);
    cr_assert_eq(dl_spacing_parse("uniform", &sp), DL_ERR);
    dl_beta_schedule bs;
    cr_assert_eq(dl_beta_schedule_parse("scaled_linear", &bs), DL_OK);
    cr_assert_eq(dl_beta_schedule_parse("sigmoid", &bs), DL_ERR);

    dl_schedule_config cfg;
    dl_schedule_config_sd15(&cfg);
    dl_sampler_opts o;
    dl_sampler s;
    dl_sampler_opts_default(&o);
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER, &cfg, 0, &o, 16), DL_ERR);
    dl_sampler_free(&s);
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER, &cfg, 1001, &o, 16), DL_ERR);
    dl_sampler_free(&s);
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_LCM, &cfg, 51, &o, 16), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "original"), "%s", dl_error_msg());
    dl_sampler_free(&s);
    o.karras = 1;
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_DDIM, &cfg, 20, &o, 16), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "Karras"), "%s", dl_error_msg());
    dl_sampler_free(&s);
    o.karras = 0;
    o.strength = 0.01; /* int(20 * 0.01) = 0 steps */
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER, &cfg, 20, &o, 16), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "strength"), "%s", dl_error_msg());
    dl_sampler_free(&s);
    o.strength = 1.5;
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER, &cfg, 20, &o, 16), DL_ERR);
    dl_sampler_free(&s);
    /* leading spacing + steps_offset 1 at 1000 steps reaches t = 1000 (diffusers would index
     * alphas_cumprod out of range) */
    dl_sampler_opts_default(&o);
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_DDIM, &cfg, 1000, &o, 16), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "1000"), "%s", dl_error_msg());
    dl_sampler_free(&s);
    /* an ancestral run without a noise source */
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER_A, &cfg, 4, &o, LATENT_NUMEL), DL_OK);
    float x[LATENT_NUMEL] = {0};
    int calls = 0;
    cr_assert_eq(dl_sampler_run(&s, x, toy_model, &calls, NULL, NULL), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "noise"), "%s", dl_error_msg());
    dl_sampler_free(&s);
    cr_assert_str_eq(dl_sampler_kind_a1111_name(DL_SAMPLER_DPMPP_2M_KARRAS), "DPM++ 2M Karras");
    dl_schedule_config bad = cfg;
    bad.beta_end = 2.0;
    dl_sampler_opts_default(&o);
    cr_assert_eq(dl_sampler_create(&s, DL_SAMPLER_EULER, &bad, 20, &o, 16), DL_ERR);
    cr_assert(strstr(dl_error_msg(), "beta_end"), "%s", dl_error_msg());
    dl_sampler_free(&s);
}
