/* objective.h - the diffusion training objective of one batch as sd-scripts computes it:
 * noise (+ noise offset), uniform timesteps, noisy latents, the target (epsilon or v) and the
 * min-SNR-gamma loss weights, drawing from a torch-compatible generator in torch's order.
 * (Opaque so that trainer.c need not include sample/schedule.h beside model/config.h.) */
#ifndef DANLU_TRAIN_OBJECTIVE_H
#define DANLU_TRAIN_OBJECTIVE_H

#include "core/rng.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_objective dl_objective;

typedef struct dl_objective_cfg {
    int num_train_timesteps;   /* 1000 */
    double beta_start, beta_end;
    int beta_schedule;         /* 0 linear, 1 scaled_linear (SD1.x), 2 squaredcos_cap_v2 */
    int v_prediction;          /* 1: v target */
    double noise_offset;       /* 0: off */
    double min_snr_gamma;      /* 0: off */
} dl_objective_cfg;

/* SD 1.x: 1000 steps, scaled_linear 0.00085..0.012, epsilon, no offset, no min-SNR. */
void dl_objective_cfg_sd15(dl_objective_cfg *c);

/* Build the schedule. DL_ERR (message) on a bad config or no memory. */
int dl_objective_create(dl_objective **out, const dl_objective_cfg *cfg);
void dl_objective_free(dl_objective *o);

/* One batch. latents [N, H, W, C] (already x scaling factor). Draws from g exactly as
 * sd-scripts does with torch's global generator:
 *   noise = torch.randn_like(latents)                (NCHW order; stored here as NHWC)
 *   if noise_offset: noise += offset * torch.randn((N, C, 1, 1))
 *   t = torch.randint(0, T, (N,))
 * then noisy = add_noise(latents, noise, t), target = noise (epsilon) or the velocity, and
 * weights [N] = min-SNR weights (all 1 when off). Outputs: t [N], noise, noisy, target
 * [N, H, W, C], weights [N]; tmp [N*H*W*C] scratch for the NCHW draw. Nothing is allocated. */
void dl_objective_batch(const dl_objective *o, dl_torch_rng *g, int N, int H, int W, int C, const float *latents,
                        int64_t *t, float *noise, float *noisy, float *target, float *weights, float *tmp);

/* 1 when the loss weights are not all one (min-SNR on). */
int dl_objective_weighted(const dl_objective *o);

#ifdef __cplusplus
}
#endif
#endif
