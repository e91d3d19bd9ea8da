/* sampler.c - inference timesteps/sigmas and the sampler steps, as diffusers computes them
 * (see sampler.h). The per-step scalars are computed in float32 in the order diffusers' torch
 * code evaluates them (0-d float32 tensors), the timestep/sigma tables in float64 as numpy does,
 * so results agree with diffusers to float rounding. */
#include "sample/sampler.h"

#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const k_names[DL_SAMPLER_COUNT] = {
    "euler", "euler_a", "heun", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm",
};
static const char *const k_a1111[DL_SAMPLER_COUNT] = {
    "Euler", "Euler a", "Heun", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "LCM",
};

void dl_sampler_opts_default(dl_sampler_opts *o)
{
    memset(o, 0, sizeof *o);
    o->spacing = DL_SPACING_DEFAULT;
    o->karras = 0;
    o->eta = -1.0f;
    o->lcm_original_steps = 50;
    o->strength = 1.0f;
}

int dl_sampler_kind_parse(const char *name, dl_sampler_kind *out)
{
    for (int k = 0; k < DL_SAMPLER_COUNT; k++)
        if (!strcmp(name, k_names[k])) {
            *out = (dl_sampler_kind)k;
            return DL_OK;
        }
    return dl_error_set("unknown sampler \"%s\" (known: euler, euler_a, heun, ddim, dpmpp_2m, "
                        "dpmpp_2m_karras, lcm)", name);
}

const char *dl_sampler_kind_name(dl_sampler_kind kind)
{
    return (unsigned)kind < DL_SAMPLER_COUNT ? k_names[kind] : "?";
}

const char *dl_sampler_kind_a1111_name(dl_sampler_kind kind)
{
    return (unsigned)kind < DL_SAMPLER_COUNT ? k_a1111[kind] : "?";
}

int dl_spacing_parse(const char *name, dl_spacing *out)
{
    if (!strcmp(name, "linspace")) *out = DL_SPACING_LINSPACE;
    else if (!strcmp(name, "leading")) *out = DL_SPACING_LEADING;
    else if (!strcmp(name, "trailing")) *out = DL_SPACING_TRAILING;
    else
        return dl_error_set("unknown timestep spacing \"%s\" (known: linspace, leading, trailing)",
                            name);
    return DL_OK;
}

/* ---- schedule tables (numpy semantics) ---- */

static int is_sigma_kind(dl_sampler_kind k)
{
    return k == DL_SAMPLER_EULER || k == DL_SAMPLER_EULER_A || k == DL_SAMPLER_HEUN;
}

static int is_dpm_kind(dl_sampler_kind k)
{
    return k == DL_SAMPLER_DPMPP_2M || k == DL_SAMPLER_DPMPP_2M_KARRAS;
}

/* np.linspace(0, stop, num)[j] (float64; the last value is stop exactly). */
static double np_linspace(double stop, int num, int j)
{
    if (num == 1) return 0.0;
    if (j == num - 1) return stop;
    return (double)j * (stop / (double)(num - 1));
}

/* np.arange(start, 0, -step) for start > 0, step > 0: length ceil(start / step), values
 * start + i * delta with delta = (start - step) - start, as numpy's float fill computes them.
 * Writes up to cap values; returns the length. */
static int np_arange_down(double start, double step, double *out, int cap)
{
    const int len = (int)ceil((0.0 - start) / -step);
    const double delta = (start + -step) - start;
    for (int i = 0; i < len && i < cap; i++) out[i] = i == 0 ? start : start + (double)i * delta;
    return len;
}

/* np.interp(x, arange(n), fp) with fp float32. */
static double np_interp_index(double x, const float *fp, int n)
{
    if (x <= 0) return fp[0];
    if (x >= n - 1) return fp[n - 1];
    const int j = (int)floor(x);
    if (x == (double)j) return fp[j];
    const double slope = (double)fp[j + 1] - (double)fp[j]; /* xp spacing is 1 */
    return slope * (x - (double)j) + (double)fp[j];
}

/* diffusers' _sigma_to_t: the fractional timestep whose log-sigma interpolates to log(sigma),
 * log_sigmas [n] float32 ascending. */
static double sigma_to_t(double sigma, const float *log_sigmas, int n)
{
    const double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int i = 0; i < n; i++)
        if (ls - (double)log_sigmas[i] >= 0) low = i;
    if (low > n - 2) low = n - 2;
    const double lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = (lo - ls) / (lo - hi);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1 - w) * low + w * (low + 1);
}

/* Karras et al. (2022) sigmas, rho = 7, from sigma_max down to sigma_min. */
static void karras_sigmas(double sigma_min, double sigma_max, int n, double *out)
{
    const double rho = 7.0;
    const double min_inv = pow(sigma_min, 1 / rho), max_inv = pow(sigma_max, 1 / rho);
    for (int i = 0; i < n; i++) {
        const double ramp = np_linspace(1.0, n, i);
        out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
    }
}

/* Base timesteps (before Karras) for the spacing of Euler/Heun/EulerA (float), DDIM (rounded
 * ints), DPM (N+1 grid, drop last). Writes steps values into t. Returns DL_OK or DL_ERR. */
static int base_timesteps(dl_sampler_kind kind, dl_spacing sp, int T, int N, int offset, double *t)
{
    if (sp == DL_SPACING_LINSPACE) {
        for (int k = 0; k < N; k++) {
            if (is_dpm_kind(kind)) t[k] = rint(np_linspace(T - 1, N + 1, N - k));
            else if (kind == DL_SAMPLER_DDIM) t[k] = rint(np_linspace(T - 1, N, N - 1 - k));
            else t[k] = (float)np_linspace(T - 1, N, N - 1 - k);
        }
    } else if (sp == DL_SPACING_LEADING) {
        const int ratio = is_dpm_kind(kind) ? T / (N + 1) : T / N;
        for (int k = 0; k < N; k++)
            t[k] = (double)((is_dpm_kind(kind) ? N - k : N - 1 - k) * ratio + offset);
    } else {
        double *buf = malloc(sizeof(double) * (size_t)(N + 2));
        if (!buf) return dl_error_set("sampler: out of memory");
        const int len = np_arange_down((double)T, (double)T / N, buf, N + 2);
        /* numpy's float arange yields N + 1 values for some N (61, 103, ...), and diffusers
         * then runs N + 1 steps; danlu keeps the first N (the schedule diffusers intends). */
        if (len < N) {
            free(buf);
            return dl_error_set("trailing spacing: %d timesteps for %d steps", len, N);
        }
        for (int k = 0; k < N; k++) t[k] = rint(buf[k]) - 1;
        free(buf);
    }
    return DL_OK;
}

static int build_tables(dl_sampler *s, const dl_sampler_opts *o)
{
    const dl_sampler_kind kind = s->kind;
    const int T = s->sched.T, N = s->num_inference_steps;
    const float *acp = s->sched.alphas_cumprod;
    dl_spacing sp = o->spacing;
    if (sp == DL_SPACING_DEFAULT)
        sp = (kind == DL_SAMPLER_DDIM || kind == DL_SAMPLER_LCM) ? DL_SPACING_LEADING
                                                                 : DL_SPACING_LINSPACE;
    const int n_full = kind == DL_SAMPLER_HEUN ? 2 * N - 1 : N;
    s->n_full = n_full;
    s->timesteps_full = malloc(sizeof(float) * (size_t)n_full);
    double *t = malloc(sizeof(double) * (size_t)N);
    double *sg = malloc(sizeof(double) * (size_t)N);
    float *sig_train = malloc(sizeof(float) * (size_t)T);   /* ((1-acp)/acp)^0.5, float32 */
    float *log_sig = malloc(sizeof(float) * (size_t)T);
    int rc = DL_OK;
    if (!s->timesteps_full || !t || !sg || !sig_train || !log_sig) {
        rc = dl_error_set("sampler: out of memory");
        goto done;
    }
    for (int i = 0; i < T; i++) {
        sig_train[i] = sqrtf((1.0f - acp[i]) / acp[i]);
        log_sig[i] = logf(sig_train[i]);
    }

    if (kind == DL_SAMPLER_LCM) {
        const int orig = o->lcm_original_steps;
        const int k = T / orig;
        const int n_origin = orig; /* set_timesteps' own strength is 1 in the pipelines */
        if (N > orig) {
            rc = dl_error_set("LCM: %d steps exceed original_inference_steps %d", N, orig);
            goto done;
        }
        for (int i = 0; i < N; i++) {
            const int idx = (int)floor((double)i * ((double)n_origin / (double)N));
            /* lcm_origin_timesteps reversed: (n_origin - idx) * k - 1 */
            t[i] = (double)((n_origin - idx) * k - 1);
        }
    } else {
        if ((rc = base_timesteps(kind, sp, T, N, s->sched.cfg.steps_offset, t)) != DL_OK) goto done;
    }
    for (int i = 0; i < N; i++)
        if (t[i] < 0 || t[i] > T - 1) {
            rc = dl_error_set("%s: %d steps with this spacing give timestep %g, outside [0, %d]",
                              k_names[kind], N, t[i], T - 1);
            goto done;
        }

    if (is_sigma_kind(kind) || is_dpm_kind(kind)) {
        s->sigmas_full = malloc(sizeof(float) * (size_t)(n_full + 1));
        if (!s->sigmas_full) {
            rc = dl_error_set("sampler: out of memory");
            goto done;
        }
        if (s->karras) {
            double smin, smax;
            if (is_dpm_kind(kind)) {
                smin = sig_train[0];
                smax = sig_train[T - 1];
            } else {
                smin = np_interp_index(t[N - 1], sig_train, T);
                smax = np_interp_index(t[0], sig_train, T);
            }
            karras_sigmas(smin, smax, N, sg);
            for (int i = 0; i < N; i++) {
                t[i] = sigma_to_t(sg[i], log_sig, T);
                if (is_dpm_kind(kind)) t[i] = rint(t[i]);
                else t[i] = (float)t[i];
            }
        } else {
            for (int i = 0; i < N; i++) sg[i] = np_interp_index(t[i], sig_train, T);
        }
        if (kind == DL_SAMPLER_HEUN) {
            /* [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0] and [t0, t1, t1, ..., t_{N-1}, t_{N-1}] */
            s->sigmas_full[0] = (float)sg[0];
            s->timesteps_full[0] = (float)t[0];
            for (int i = 1; i < N; i++) {
                s->sigmas_full[2 * i - 1] = s->sigmas_full[2 * i] = (float)sg[i];
                s->timesteps_full[2 * i - 1] = s->timesteps_full[2 * i] = (float)t[i];
            }
            s->sigmas_full[2 * N - 1] = 0.0f;
        } else {
            for (int i = 0; i < N; i++) {
                s->sigmas_full[i] = (float)sg[i];
                s->timesteps_full[i] = (float)t[i];
            }
            s->sigmas_full[N] = 0.0f;
        }
    } else {
        for (int i = 0; i < N; i++) s->timesteps_full[i] = (float)t[i];
    }

    /* init_noise_sigma: max sigma for linspace/trailing, sqrt(max^2 + 1) for leading */
    s->init_noise_sigma = 1.0f;
    if (is_sigma_kind(kind)) {
        float mx = 0;
        for (int i = 0; i <= n_full; i++)
            if (s->sigmas_full[i] > mx) mx = s->sigmas_full[i];
        s->init_noise_sigma = sp == DL_SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
    }
done:
    free(t);
    free(sg);
    free(sig_train);
    free(log_sig);
    return rc;
}

int dl_sampler_create(dl_sampler *s, dl_sampler_kind kind, const dl_schedule_config *cfg,
                      int steps, const dl_sampler_opts *opts, int64_t numel)
{
    memset(s, 0, sizeof *s);
    dl_sampler_opts def;
    if (!opts) {
        dl_sampler_opts_default(&def);
        opts = &def;
    }
    if ((unsigned)kind >= DL_SAMPLER_COUNT) return dl_error_set("unknown sampler kind %d", (int)kind);
    DL_TRY(dl_schedule_init(&s->sched, cfg));
    s->kind = kind;
    s->pred = cfg->prediction;
    s->numel = numel;
    if (steps < 1 || steps > cfg->num_train_timesteps)
        return dl_error_set("%s: %d steps out of range [1, %d]", k_names[kind], steps,
                            cfg->num_train_timesteps);
    if (numel < 1) return dl_error_set("sampler: empty latents");
    if (!(opts->strength > 0 && opts->strength <= 1))
        return dl_error_set("img2img strength %g outside (0, 1]", (double)opts->strength);
    if (kind == DL_SAMPLER_LCM && (opts->lcm_original_steps < 1 ||
                                   opts->lcm_original_steps > cfg->num_train_timesteps))
        return dl_error_set("LCM original_inference_steps %d out of range", opts->lcm_original_steps);
    s->karras = kind == DL_SAMPLER_DPMPP_2M_KARRAS || opts->karras;
    if (s->karras && !(kind == DL_SAMPLER_EULER || kind == DL_SAMPLER_HEUN || is_dpm_kind(kind)))
        return dl_error_set("%s: Karras sigmas are not available for this sampler", k_names[kind]);
    if (kind == DL_SAMPLER_DDIM) s->eta = opts->eta < 0 ? 0.0f : opts->eta;
    else if (kind == DL_SAMPLER_EULER_A) s->eta = opts->eta < 0 ? 1.0f : opts->eta;
    s->num_inference_steps = steps;
    DL_TRY(build_tables(s, opts));

    /* img2img subset, as StableDiffusionImg2ImgPipeline.get_timesteps */
    const int order = kind == DL_SAMPLER_HEUN ? 2 : 1;
    int init_timestep = (int)((double)steps * (double)opts->strength);
    if (init_timestep > steps) init_timestep = steps;
    int t_start = steps - init_timestep;
    if (t_start < 0) t_start = 0;
    s->begin = t_start * order;
    s->pipeline_steps = steps - t_start;
    if (s->pipeline_steps < 1 || s->begin >= s->n_full)
        return dl_error_set("img2img strength %g with %d steps leaves no step to run",
                            (double)opts->strength, steps);
    s->n_calls = s->n_full - s->begin;
    s->timesteps = s->timesteps_full + s->begin;

    const size_t bytes = sizeof(float) * (size_t)numel;
    s->prev = malloc(bytes);
    s->saved = malloc(bytes);
    s->xin = malloc(bytes);
    s->out = malloc(bytes);
    s->noise = malloc(bytes);
    if (!s->prev || !s->saved || !s->xin || !s->out || !s->noise)
        return dl_error_set("sampler: out of memory for %lld latents", (long long)numel);
    dl_sampler_reset(s);
    return DL_OK;
}

void dl_sampler_free(dl_sampler *s)
{
    dl_schedule_free(&s->sched);
    free(s->timesteps_full);
    free(s->sigmas_full);
    free(s->prev);
    free(s->saved);
    free(s->xin);
    free(s->out);
    free(s->noise);
    memset(s, 0, sizeof *s);
}

void dl_sampler_reset(dl_sampler *s)
{
    s->call = 0;
    s->heun_second = 0;
    s->heun_dt = 0;
    s->dpm_lower_order_nums = 0;
}

/* ---- starting latents ---- */

void dl_sampler_init_txt2img(const dl_sampler *s, const float *noise, float *x)
{
    const float g = s->init_noise_sigma;
    for (int64_t i = 0; i < s->numel; i++) x[i] = noise[i] * g;
}

void dl_sampler_init_img2img(const dl_sampler *s, const float *x0, const float *noise, float *x)
{
    const int64_t n = s->numel;
    if (is_sigma_kind(s->kind)) {
        const float sigma = s->sigmas_full[s->begin];
        for (int64_t i = 0; i < n; i++) x[i] = x0[i] + noise[i] * sigma;
    } else if (is_dpm_kind(s->kind)) {
        const float sigma = s->sigmas_full[s->begin];
        const float alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
        const float sigma_t = sigma * alpha_t;
        for (int64_t i = 0; i < n; i++) x[i] = alpha_t * x0[i] + sigma_t * noise[i];
    } else {
        const float acp = s->sched.alphas_cumprod[(int)s->timesteps_full[s->begin]];
        const float a = sqrtf(acp), b = sqrtf(1.0f - acp);
        for (int64_t i = 0; i < n; i++) x[i] = a * x0[i] + b * noise[i];
    }
}

/* ---- the loop ---- */

int dl_sampler_done(const dl_sampler *s) { return s->call >= s->n_calls; }

static int step_index(const dl_sampler *s) { return s->begin + s->call; }

float dl_sampler_timestep(const dl_sampler *s)
{
    DL_ASSERT(!dl_sampler_done(s));
    return s->timesteps_full[step_index(s)];
}

float dl_sampler_sigma(const dl_sampler *s)
{
    DL_ASSERT(!dl_sampler_done(s));
    return s->sigmas_full ? s->sigmas_full[step_index(s)] : 0.0f;
}

float dl_sampler_input_scale(const dl_sampler *s)
{
    DL_ASSERT(!dl_sampler_done(s));
    if (!is_sigma_kind(s->kind)) return 1.0f;
    const float sigma = s->sigmas_full[step_index(s)];
    return 1.0f / sqrtf(sigma * sigma + 1.0f);
}

int dl_sampler_needs_noise(const dl_sampler *s)
{
    DL_ASSERT(!dl_sampler_done(s));
    switch (s->kind) {
    case DL_SAMPLER_EULER_A: return s->eta > 0;
    case DL_SAMPLER_DDIM: return s->eta > 0;
    case DL_SAMPLER_LCM: return step_index(s) != s->num_inference_steps - 1;
    default: return 0;
    }
}

/* x0 prediction of the sigma (VE-scaled) samplers: eps -> x - sigma eps,
 * v -> v (-sigma / sqrt(sigma^2+1)) + x / (sigma^2+1). */
static inline float sigma_x0(dl_prediction pred, float x, float m, float sigma, float cv, float cx)
{
    return pred == DL_PRED_V ? m * cv + x / cx : x - sigma * m;
}

static void step_euler(dl_sampler *s, const float *m, float *x, const float *noise)
{
    const int si = step_index(s);
    const float sigma = s->sigmas_full[si], sigma_to = s->sigmas_full[si + 1];
    const float cx = sigma * sigma + 1.0f, cv = -sigma / sqrtf(cx);
    float dt = sigma_to - sigma, sigma_up = 0;
    if (s->kind == DL_SAMPLER_EULER_A) {
        const float sf2 = sigma * sigma, st2 = sigma_to * sigma_to;
        sigma_up = sqrtf(st2 * (sf2 - st2) / sf2);
        if (s->eta != 1.0f) {
            sigma_up *= s->eta;
            if (sigma_up > sigma_to) sigma_up = sigma_to;
        }
        const float sigma_down = sqrtf(st2 - sigma_up * sigma_up);
        dt = sigma_down - sigma;
    }
    const int noisy = s->kind == DL_SAMPLER_EULER_A && s->eta > 0;
    for (int64_t i = 0; i < s->numel; i++) {
        const float x0 = sigma_x0(s->pred, x[i], m[i], sigma, cv, cx);
        const float d = (x[i] - x0) / sigma;
        float y = x[i] + d * dt;
        if (noisy) y = y + noise[i] * sigma_up;
        x[i] = y;
    }
}

static void step_heun(dl_sampler *s, const float *m, float *x)
{
    const int si = step_index(s);
    if (!s->heun_second) {
        const float sigma = s->sigmas_full[si], sigma_next = s->sigmas_full[si + 1];
        const float cx = sigma * sigma + 1.0f, cv = -sigma / sqrtf(cx);
        const float dt = sigma_next - sigma;
        for (int64_t i = 0; i < s->numel; i++) {
            const float x0 = sigma_x0(s->pred, x[i], m[i], sigma, cv, cx);
            const float d = (x[i] - x0) / sigma;
            s->prev[i] = d;
            s->saved[i] = x[i];
            x[i] = x[i] + d * dt;
        }
        s->heun_dt = dt;
        /* the last call (sigma_next = 0) ends the run on the Euler step, as diffusers does */
        s->heun_second = 1;
    } else {
        const float sigma_next = s->sigmas_full[si];
        const float cx = sigma_next * sigma_next + 1.0f, cv = -sigma_next / sqrtf(cx);
        const float dt = s->heun_dt;
        for (int64_t i = 0; i < s->numel; i++) {
            const float x0 = sigma_x0(s->pred, x[i], m[i], sigma_next, cv, cx);
            float d = (x[i] - x0) / sigma_next;
            d = (s->prev[i] + d) / 2.0f;
            x[i] = s->saved[i] + d * dt;
        }
        s->heun_second = 0;
    }
}

static void step_ddim(dl_sampler *s, const float *m, float *x, const float *noise)
{
    const int si = step_index(s);
    const float *acp = s->sched.alphas_cumprod;
    const int t = (int)s->timesteps_full[si];
    const int prev_t = t - s->sched.T / s->num_inference_steps;
    const float final_acp = s->sched.cfg.set_alpha_to_one ? 1.0f : acp[0];
    const float a_t = acp[t], a_prev = prev_t >= 0 ? acp[prev_t] : final_acp;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float variance = b_prev / b_t * (1.0f - a_t / a_prev);
    const float std = s->eta * sqrtf(variance);
    const float cdir = sqrtf(1.0f - a_prev - std * std), cprev = sqrtf(a_prev);
    const int noisy = s->eta > 0;
    for (int64_t i = 0; i < s->numel; i++) {
        float x0, eps;
        if (s->pred == DL_PRED_V) {
            x0 = sa * x[i] - sb * m[i];
            eps = sa * m[i] + sb * x[i];
        } else {
            x0 = (x[i] - sb * m[i]) / sa;
            eps = m[i];
        }
        float y = cprev * x0 + cdir * eps;
        if (noisy) y = y + std * noise[i];
        x[i] = y;
    }
}

/* alpha_t, sigma_t of DPM-Solver from a VE sigma */
static void dpm_alpha_sigma(float sigma, float *alpha_t, float *sigma_t)
{
    *alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_t = sigma * *alpha_t;
}

static void step_dpm(dl_sampler *s, const float *m, float *x)
{
    const int si = step_index(s);
    const float *sg = s->sigmas_full;
    const int lower_order_final = si == s->n_full - 1; /* final_sigmas_type "zero" */
    const int first = s->dpm_lower_order_nums < 1 || lower_order_final;
    float a0, s0;
    dpm_alpha_sigma(sg[si], &a0, &s0);
    /* x0 prediction of this call, kept for the next step in s->prev */
    float ca = 0, cb = 0, cc = 0; /* x = ca * x - cb * D0 - cc * D1 */
    if (sg[si + 1] == 0.0f) {
        ca = 0.0f;
        cb = -1.0f; /* x = x0 exactly: alpha_t = 1, sigma_t = 0, exp(-inf) = 0 */
    } else {
        float at, st;
        dpm_alpha_sigma(sg[si + 1], &at, &st);
        const float lt = logf(at) - logf(st), l0 = logf(a0) - logf(s0);
        const float h = lt - l0;
        const float em1 = expf(-h) - 1.0f;
        ca = st / s0;
        cb = at * em1;
        if (!first) {
            float a1, s1;
            dpm_alpha_sigma(sg[si - 1], &a1, &s1);
            const float l1 = logf(a1) - logf(s1);
            const float h0 = l0 - l1;
            const float r0 = h0 / h;
            cc = 0.5f * (at * em1) * (1.0f / r0);
        }
    }
    for (int64_t i = 0; i < s->numel; i++) {
        const float x0 = s->pred == DL_PRED_V ? a0 * x[i] - s0 * m[i] : (x[i] - s0 * m[i]) / a0;
        float y = ca * x[i] - cb * x0;
        if (!first) y = y - cc * (x0 - s->prev[i]);
        s->prev[i] = x0;
        x[i] = y;
    }
    if (s->dpm_lower_order_nums < 2) s->dpm_lower_order_nums++;
}

static void step_lcm(dl_sampler *s, const float *m, float *x, const float *noise)
{
    const int si = step_index(s);
    const float *acp = s->sched.alphas_cumprod;
    const int t = (int)s->timesteps_full[si];
    const int prev_t = si + 1 < s->n_full ? (int)s->timesteps_full[si + 1] : t;
    const float a_t = acp[t], a_prev = acp[prev_t];
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float st = (float)t * 10.0f; /* timestep_scaling 10, sigma_data 0.5 */
    const float c_skip = 0.25f / (st * st + 0.25f);
    const float c_out = st / sqrtf(st * st + 0.25f);
    const int last = si == s->num_inference_steps - 1;
    const float cp = sqrtf(a_prev), cn = sqrtf(b_prev);
    for (int64_t i = 0; i < s->numel; i++) {
        const float x0 = s->pred == DL_PRED_V ? sa * x[i] - sb * m[i] : (x[i] - sb * m[i]) / sa;
        const float den = c_out * x0 + c_skip * x[i];
        x[i] = last ? den : cp * den + cn * noise[i];
    }
}

void dl_sampler_step(dl_sampler *s, const float *model_out, float *x, const float *noise)
{
    DL_ASSERT(!dl_sampler_done(s));
    DL_ASSERTF(!dl_sampler_needs_noise(s) || noise, "%s: this step needs noise",
               k_names[s->kind]);
    switch (s->kind) {
    case DL_SAMPLER_EULER:
    case DL_SAMPLER_EULER_A: step_euler(s, model_out, x, noise); break;
    case DL_SAMPLER_HEUN: step_heun(s, model_out, x); break;
    case DL_SAMPLER_DDIM: step_ddim(s, model_out, x, noise); break;
    case DL_SAMPLER_DPMPP_2M:
    case DL_SAMPLER_DPMPP_2M_KARRAS: step_dpm(s, model_out, x); break;
    case DL_SAMPLER_LCM: step_lcm(s, model_out, x, noise); break;
    default: DL_ASSERT(0);
    }
    s->call++;
}

int dl_sampler_run(dl_sampler *s, float *x, dl_model_fn model, void *model_user,
                   dl_noise_fn noise_fn, void *noise_user)
{
    while (!dl_sampler_done(s)) {
        const float t = dl_sampler_timestep(s), c = dl_sampler_input_scale(s);
        for (int64_t i = 0; i < s->numel; i++) s->xin[i] = x[i] * c;
        DL_TRY(model(model_user, s->xin, t, s->out));
        const float *noise = NULL;
        if (dl_sampler_needs_noise(s)) {
            if (!noise_fn)
                return dl_error_set("%s: this run draws noise but no noise source was given",
                                    k_names[s->kind]);
            DL_TRY(noise_fn(noise_user, s->noise, s->numel));
            noise = s->noise;
        }
        dl_sampler_step(s, s->out, x, noise);
    }
    return DL_OK;
}
