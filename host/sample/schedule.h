/* schedule.h - the DDPM training noise schedule (betas, alphas_cumprod) as diffusers'
 * DDPMScheduler builds it, and the training-side math on it: add_noise, the v-prediction target,
 * SNR, min-SNR-gamma loss weights and noise offset exactly as kohya sd-scripts computes them.
 * Pure math: random numbers come in as arguments, nothing here draws any. */
#ifndef DANLU_SCHEDULE_H
#define DANLU_SCHEDULE_H

#include "model/prediction.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dl_beta_schedule {
    DL_BETA_LINEAR = 0,         /* linspace(beta_start, beta_end, T) */
    DL_BETA_SCALED_LINEAR,      /* linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (SD1.x, SD2.x) */
    DL_BETA_SQUAREDCOS_CAP_V2,  /* cosine alpha_bar (Nichol & Dhariwal), betas capped at 0.999 */
} dl_beta_schedule;

/* The fields of a diffusers scheduler_config.json that the schedules and samplers read. */
typedef struct dl_schedule_config {
    int num_train_timesteps;     /* T, 1000 */
    double beta_start;           /* 0.00085 for SD1.x */
    double beta_end;             /* 0.012 for SD1.x */
    dl_beta_schedule beta_schedule;
    dl_prediction prediction;
    int steps_offset;            /* 1 in SD1.5's config (used by "leading" spacing) */
    int set_alpha_to_one;        /* DDIM / LCM: alphas_cumprod "before" t=0; false in SD1.5 */
} dl_schedule_config;

/* SD1.5's scheduler config (runwayml/stable-diffusion-v1-5 scheduler_config.json):
 * scaled_linear 0.00085..0.012, 1000 steps, epsilon, steps_offset 1, set_alpha_to_one false. */
void dl_schedule_config_sd15(dl_schedule_config *cfg);
/* Parse a beta schedule name ("linear", "scaled_linear", "squaredcos_cap_v2"). Returns DL_OK, or
 * DL_ERR with a message naming the value. */
int dl_beta_schedule_parse(const char *name, dl_beta_schedule *out);
/* Check ranges (T in [2, 100000], 0 < beta_start <= beta_end < 1 for the linear kinds).
 * Returns DL_OK or DL_ERR with a message. */
int dl_schedule_config_check(const dl_schedule_config *cfg);

/* The training schedule. Arrays are float32 and computed as diffusers does (float32 betas and
 * alphas, alphas_cumprod accumulated in double and rounded per element as torch.cumprod on the
 * CPU does), so they match DDPMScheduler to the last bit or two. */
typedef struct dl_schedule {
    dl_schedule_config cfg;
    int T;                   /* num_train_timesteps */
    float *betas;            /* [T] */
    float *alphas;           /* [T] 1 - betas */
    float *alphas_cumprod;   /* [T] */
    float *snr;              /* [T] (sqrt(acp) / sqrt(1 - acp))^2 in float32, sd-scripts' all_snr */
} dl_schedule;

/* Build the schedule for cfg. Returns DL_OK, or DL_ERR (bad config, out of memory) with a
 * message; on error *s is left freeable. */
int dl_schedule_init(dl_schedule *s, const dl_schedule_config *cfg);
void dl_schedule_free(dl_schedule *s);

/* x_t = sqrt(acp[t_n]) x0 + sqrt(1 - acp[t_n]) eps for each sample n of a batch of N samples of
 * D elements each (any layout: the op is elementwise per sample). t[n] in [0, T). xt may alias
 * x0 or eps. As DDPMScheduler.add_noise. */
void dl_schedule_add_noise(const dl_schedule *s, int64_t N, int64_t D, const int64_t *t,
                           const float *x0, const float *eps, float *xt);

/* The v-prediction target v = sqrt(acp[t_n]) eps - sqrt(1 - acp[t_n]) x0, as
 * DDPMScheduler.get_velocity(sample=x0, noise=eps, timesteps=t). v may alias x0 or eps. */
void dl_schedule_velocity(const dl_schedule *s, int64_t N, int64_t D, const int64_t *t,
                          const float *x0, const float *eps, float *v);

/* Min-SNR-gamma loss weights as sd-scripts' apply_snr_weight (library/custom_train_functions.py):
 *   snr = all_snr[t] (float32),  w = min(snr, gamma) / snr        for epsilon,
 *                                w = min(snr, gamma) / (snr + 1)  for v-prediction.
 * weights [N] receives one weight per sample, to multiply the per-sample mean loss by.
 * gamma > 0. */
void dl_schedule_min_snr_weights(const dl_schedule *s, int64_t N, const int64_t *t, float gamma,
                                 dl_prediction pred, float *weights);

/* Noise offset as sd-scripts' apply_noise_offset, on danlu's channels-last latents:
 *   noise[n, p, c] += off[n, c] * r[n, c],  p over the HW positions,
 * with off = noise_offset, or, when adaptive_noise_scale != 0 and latents != NULL,
 *   off[n, c] = max(0, noise_offset + adaptive_noise_scale * |mean_p latents[n, p, c]|).
 * r [N, C] are the caller's standard normal draws: torch.randn((N, C, 1, 1)) in that order.
 * noise, latents: [N, HW, C]. */
void dl_schedule_noise_offset(int64_t N, int64_t HW, int64_t C, float noise_offset,
                              float adaptive_noise_scale, const float *latents, const float *r,
                              float *noise);

#ifdef __cplusplus
}
#endif
#endif
