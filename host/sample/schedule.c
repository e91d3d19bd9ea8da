/* schedule.c - the DDPM training schedule and the training-side noise math (see schedule.h). */
#include "sample/schedule.h"

#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dl_schedule_config_sd15(dl_schedule_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->num_train_timesteps = 1000;
    cfg->beta_start = 0.00085;
    cfg->beta_end = 0.012;
    cfg->beta_schedule = DL_BETA_SCALED_LINEAR;
    cfg->prediction = DL_PRED_EPSILON;
    cfg->steps_offset = 1;
    cfg->set_alpha_to_one = 0;
}

int dl_beta_schedule_parse(const char *name, dl_beta_schedule *out)
{
    if (!strcmp(name, "linear")) *out = DL_BETA_LINEAR;
    else if (!strcmp(name, "scaled_linear")) *out = DL_BETA_SCALED_LINEAR;
    else if (!strcmp(name, "squaredcos_cap_v2")) *out = DL_BETA_SQUAREDCOS_CAP_V2;
    else
        return dl_error_set("unknown beta_schedule \"%s\" (expected linear, scaled_linear or "
                            "squaredcos_cap_v2)", name);
    return DL_OK;
}

int dl_schedule_config_check(const dl_schedule_config *cfg)
{
    if (cfg->num_train_timesteps < 2 || cfg->num_train_timesteps > 100000)
        return dl_error_set("num_train_timesteps %d out of range [2, 100000]",
                            cfg->num_train_timesteps);
    if (cfg->beta_schedule != DL_BETA_SQUAREDCOS_CAP_V2 &&
        !(cfg->beta_start > 0 && cfg->beta_start <= cfg->beta_end && cfg->beta_end < 1))
        return dl_error_set("beta_start %g / beta_end %g: need 0 < beta_start <= beta_end < 1",
                            cfg->beta_start, cfg->beta_end);
    if ((int)cfg->beta_schedule < 0 || cfg->beta_schedule > DL_BETA_SQUAREDCOS_CAP_V2)
        return dl_error_set("unknown beta schedule %d", (int)cfg->beta_schedule);
    if (cfg->prediction != DL_PRED_EPSILON && cfg->prediction != DL_PRED_V)
        return dl_error_set("unknown prediction type %d", (int)cfg->prediction);
    if (cfg->steps_offset < 0 || cfg->steps_offset >= cfg->num_train_timesteps)
        return dl_error_set("steps_offset %d out of range", cfg->steps_offset);
    return DL_OK;
}

/* torch.linspace(a, b, n, dtype=float32) on the CPU: float step, the first half counted up
 * from a and the second half down from b. */
static void torch_linspace_f32(double a, double b, int n, float *out)
{
    const float start = (float)a, end = (float)b;
    const float step = (end - start) / (float)(n - 1);
    const int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? start + step * (float)i : end - step * (float)(n - 1 - i);
}

static double alpha_bar_cosine(double t)
{
    const double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

int dl_schedule_init(dl_schedule *s, const dl_schedule_config *cfg)
{
    memset(s, 0, sizeof *s);
    DL_TRY(dl_schedule_config_check(cfg));
    const int T = cfg->num_train_timesteps;
    s->cfg = *cfg;
    s->T = T;
    s->betas = malloc(sizeof(float) * (size_t)T * 4);
    if (!s->betas) return dl_error_set("schedule: out of memory");
    s->alphas = s->betas + T;
    s->alphas_cumprod = s->alphas + T;
    s->snr = s->alphas_cumprod + T;

    switch (cfg->beta_schedule) {
    case DL_BETA_LINEAR:
        torch_linspace_f32(cfg->beta_start, cfg->beta_end, T, s->betas);
        break;
    case DL_BETA_SCALED_LINEAR:
        torch_linspace_f32(sqrt(cfg->beta_start), sqrt(cfg->beta_end), T, s->betas);
        for (int i = 0; i < T; i++) s->betas[i] = s->betas[i] * s->betas[i];
        break;
    case DL_BETA_SQUAREDCOS_CAP_V2:
        for (int i = 0; i < T; i++) {
            const double b = 1 - alpha_bar_cosine((double)(i + 1) / T) / alpha_bar_cosine((double)i / T);
            s->betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
        break;
    }
    double cum = 1.0; /* torch.cumprod on the CPU accumulates float in double */
    for (int i = 0; i < T; i++) {
        s->alphas[i] = 1.0f - s->betas[i];
        cum *= (double)s->alphas[i];
        s->alphas_cumprod[i] = (float)cum;
        const float a = sqrtf(s->alphas_cumprod[i]);
        const float sg = sqrtf(1.0f - s->alphas_cumprod[i]);
        const float r = a / sg;
        s->snr[i] = r * r;
    }
    return DL_OK;
}

void dl_schedule_free(dl_schedule *s)
{
    free(s->betas);
    memset(s, 0, sizeof *s);
}

void dl_schedule_add_noise(const dl_schedule *s, int64_t N, int64_t D, const int64_t *t,
                           const float *x0, const float *eps, float *xt)
{
    DL_ASSERT(N >= 0 && D >= 0);
    for (int64_t n = 0; n < N; n++) {
        DL_ASSERTF(t[n] >= 0 && t[n] < s->T, "timestep %lld out of [0, %d)", (long long)t[n], s->T);
        const float acp = s->alphas_cumprod[t[n]];
        const float a = sqrtf(acp), b = sqrtf(1.0f - acp);
        const size_t o = (size_t)(n * D);
        for (int64_t i = 0; i < D; i++) xt[o + i] = a * x0[o + i] + b * eps[o + i];
    }
}

void dl_schedule_velocity(const dl_schedule *s, int64_t N, int64_t D, const int64_t *t,
                          const float *x0, const float *eps, float *v)
{
    DL_ASSERT(N >= 0 && D >= 0);
    for (int64_t n = 0; n < N; n++) {
        DL_ASSERTF(t[n] >= 0 && t[n] < s->T, "timestep %lld out of [0, %d)", (long long)t[n], s->T);
        const float acp = s->alphas_cumprod[t[n]];
        const float a = sqrtf(acp), b = sqrtf(1.0f - acp);
        const size_t o = (size_t)(n * D);
        for (int64_t i = 0; i < D; i++) v[o + i] = a * eps[o + i] - b * x0[o + i];
    }
}

void dl_schedule_min_snr_weights(const dl_schedule *s, int64_t N, const int64_t *t, float gamma,
                                 dl_prediction pred, float *weights)
{
    DL_ASSERT(gamma > 0);
    for (int64_t n = 0; n < N; n++) {
        DL_ASSERTF(t[n] >= 0 && t[n] < s->T, "timestep %lld out of [0, %d)", (long long)t[n], s->T);
        const float snr = s->snr[t[n]];
        const float m = snr < gamma ? snr : gamma;
        weights[n] = pred == DL_PRED_V ? m / (snr + 1.0f) : m / snr;
    }
}

void dl_schedule_noise_offset(int64_t N, int64_t HW, int64_t C, float noise_offset,
                              float adaptive_noise_scale, const float *latents, const float *r,
                              float *noise)
{
    DL_ASSERT(N >= 0 && HW > 0 && C > 0);
    DL_ASSERT(adaptive_noise_scale == 0 || latents);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t c = 0; c < C; c++) {
            float off = noise_offset;
            if (adaptive_noise_scale != 0) {
                double sum = 0;
                for (int64_t p = 0; p < HW; p++) sum += latents[(n * HW + p) * C + c];
                off = noise_offset + adaptive_noise_scale * fabsf((float)(sum / (double)HW));
                if (off < 0) off = 0;
            }
            const float add = off * r[n * C + c];
            for (int64_t p = 0; p < HW; p++) noise[(n * HW + p) * C + c] += add;
        }
    }
}
