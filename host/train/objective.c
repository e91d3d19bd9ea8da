/* objective.c - noise, timesteps, noisy latents, target and min-SNR weights of a batch. */
#include "train/objective.h"

#include "core/error.h"
#include "sample/schedule.h"

#include <stdlib.h>
#include <string.h>

struct dl_objective {
    dl_objective_cfg cfg;
    dl_schedule s;
};

void dl_objective_cfg_sd15(dl_objective_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->num_train_timesteps = 1000;
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
    c->beta_schedule = 1;
}

int dl_objective_create(dl_objective **out, const dl_objective_cfg *cfg)
{
    *out = NULL;
    dl_objective *o = calloc(1, sizeof *o);
    if (!o) return dl_error_set("out of memory");
    o->cfg = *cfg;
    dl_schedule_config sc;
    dl_schedule_config_sd15(&sc);
    sc.num_train_timesteps = cfg->num_train_timesteps;
    sc.beta_start = cfg->beta_start;
    sc.beta_end = cfg->beta_end;
    sc.beta_schedule = cfg->beta_schedule == 0 ? DL_BETA_LINEAR
                       : cfg->beta_schedule == 2 ? DL_BETA_SQUAREDCOS_CAP_V2 : DL_BETA_SCALED_LINEAR;
    sc.prediction = cfg->v_prediction ? DL_PRED_V : DL_PRED_EPSILON;
    if (dl_schedule_config_check(&sc) != DL_OK || dl_schedule_init(&o->s, &sc) != DL_OK) {
        dl_schedule_free(&o->s);
        free(o);
        return DL_ERR;
    }
    *out = o;
    return DL_OK;
}

void dl_objective_free(dl_objective *o)
{
    if (!o) return;
    dl_schedule_free(&o->s);
    free(o);
}

int dl_objective_weighted(const dl_objective *o) { return o->cfg.min_snr_gamma > 0; }

void dl_objective_batch(const dl_objective *o, dl_torch_rng *g, int N, int H, int W, int C, const float *latents,
                        int64_t *t, float *noise, float *noisy, float *target, float *weights, float *tmp)
{
    const int64_t HW = (int64_t)H * W, D = HW * C;
    /* torch.randn_like on [N, C, H, W], then to channels-last */
    dl_torch_randn(g, tmp, (size_t)(N * D));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int64_t p = 0; p < HW; p++) noise[n * D + p * C + c] = tmp[n * D + c * HW + p];
    if (o->cfg.noise_offset > 0) {
        float r[64 * 16];
        DL_ASSERT((int64_t)N * C <= (int64_t)(sizeof r / sizeof *r));
        dl_torch_randn(g, r, (size_t)N * C);
        dl_schedule_noise_offset(N, HW, C, (float)o->cfg.noise_offset, 0.0f, latents, r, noise);
    }
    /* torch.randint(0, T, (N,)) on the CPU: random() % range + low for ranges below 2^32 */
    for (int n = 0; n < N; n++) t[n] = (int64_t)(dl_torch_rng_u32(g) % (uint32_t)o->s.T);
    dl_schedule_add_noise(&o->s, N, D, t, latents, noise, noisy);
    if (o->cfg.v_prediction) dl_schedule_velocity(&o->s, N, D, t, latents, noise, target);
    else memcpy(target, noise, sizeof(float) * (size_t)(N * D));
    if (o->cfg.min_snr_gamma > 0)
        dl_schedule_min_snr_weights(&o->s, N, t, (float)o->cfg.min_snr_gamma,
                                    o->cfg.v_prediction ? DL_PRED_V : DL_PRED_EPSILON, weights);
    else
        for (int n = 0; n < N; n++) weights[n] = 1.0f;
}
