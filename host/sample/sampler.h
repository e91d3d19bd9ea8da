/* sampler.h - inference timesteps, sigmas and sampler steps (Euler, Euler ancestral, Heun,
 * DDIM, DPM++ 2M, DPM++ 2M Karras, LCM) numerically as diffusers' schedulers compute them, for
 * epsilon and v-prediction models, txt2img and img2img. Pure math, independent of the networks:
 * the caller runs the model (with CFG) and supplies the random numbers, so seeding
 * dl_torch_randn as a diffusers pipeline seeds its torch.Generator gives diffusers' images.
 *
 * Use (the loop diffusers' StableDiffusionPipeline runs):
 *
 *     dl_sampler s;  dl_sampler_create(&s, DL_SAMPLER_EULER_A, &cfg, 20, &opts, numel);
 *     draw numel normals -> noise;  dl_sampler_init_txt2img(&s, noise, x);     // x: latents
 *     while (!dl_sampler_done(&s)) {
 *         float t = dl_sampler_timestep(&s), c = dl_sampler_input_scale(&s);
 *         model(c * x, t) -> out                                 // CFG combined by the caller
 *         if (dl_sampler_needs_noise(&s)) draw numel normals -> noise;
 *         dl_sampler_step(&s, out, x, noise);
 *     }
 *
 * or dl_sampler_run() with a model and a noise callback, which does exactly that. The noise is
 * drawn in diffusers' order: the initial latents first (img2img: the noise added to the init
 * latents), then one tensor of the latents' full shape per step that draws one (Euler ancestral:
 * every step, the last included; DDIM with eta > 0: every step; LCM: every step but the last;
 * the others never). A caller matching diffusers draws each tensor with dl_torch_randn in
 * torch's [N, C, H, W] order and permutes it to its own layout; every operation here is
 * elementwise, so the layout of x, out and noise is the caller's choice (the same for all). */
#ifndef DANLU_SAMPLER_H
#define DANLU_SAMPLER_H

#include "sample/schedule.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dl_sampler_kind {
    DL_SAMPLER_EULER = 0,         /* EulerDiscreteScheduler */
    DL_SAMPLER_EULER_A,           /* EulerAncestralDiscreteScheduler */
    DL_SAMPLER_HEUN,              /* HeunDiscreteScheduler (2 model calls per step but the last) */
    DL_SAMPLER_DDIM,              /* DDIMScheduler */
    DL_SAMPLER_DPMPP_2M,          /* DPMSolverMultistepScheduler (dpmsolver++, order 2) */
    DL_SAMPLER_DPMPP_2M_KARRAS,   /* the same with use_karras_sigmas=True */
    DL_SAMPLER_LCM,               /* LCMScheduler */
    DL_SAMPLER_COUNT
} dl_sampler_kind;

/* Timestep spacing ("timestep_spacing" in diffusers). DEFAULT is what
 * Scheduler.from_config(sd15_pipe.scheduler.config) gives, whose config has no such key: the
 * class default, "leading" for DDIM and LCM (LCM ignores it), "linspace" for the others. */
typedef enum dl_spacing {
    DL_SPACING_DEFAULT = 0,
    DL_SPACING_LINSPACE,
    DL_SPACING_LEADING,
    DL_SPACING_TRAILING,
} dl_spacing;

typedef struct dl_sampler_opts {
    dl_spacing spacing;
    int karras;               /* Karras sigmas (rho 7) for EULER, HEUN, DPMPP_2M (DPMPP_2M_KARRAS
                                 always); an error for the others, which diffusers lacks */
    float eta;                /* < 0: the default. DDIM: eta (default 0). EULER_A: k-diffusion's
                                 eta, sigma_up scaled by it (default 1 = diffusers). Else unused. */
    int lcm_original_steps;   /* LCM original_inference_steps (default 50) */
    double strength;          /* img2img strength in (0, 1]; 1 (default) = txt2img (double, as the
                                 Python float diffusers multiplies by the steps) */
} dl_sampler_opts;

/* Defaults: spacing DEFAULT, karras 0, eta -1, lcm_original_steps 50, strength 1. */
void dl_sampler_opts_default(dl_sampler_opts *o);

/* "euler", "euler_a", "heun", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm" (the names danlu's
 * CLI takes). Returns DL_OK, or DL_ERR with a message listing the known names. */
int dl_sampler_kind_parse(const char *name, dl_sampler_kind *out);
/* The CLI name of a kind. */
const char *dl_sampler_kind_name(dl_sampler_kind kind);
/* A1111's display name ("Euler a", "DPM++ 2M Karras", ...), for the PNG parameters chunk. */
const char *dl_sampler_kind_a1111_name(dl_sampler_kind kind);
/* Parse "linspace", "leading", "trailing". Returns DL_OK or DL_ERR with a message. */
int dl_spacing_parse(const char *name, dl_spacing *out);

/* The model: out = eps or v (the schedule config's prediction type) for the input x_in, already
 * scaled by the input scale, at model timestep t (the value diffusers feeds the UNet; float,
 * fractional with Karras sigmas on Euler/Heun). x_in and out hold numel floats. Returns DL_OK or
 * DL_ERR (recorded message), which stops the run. */
typedef int (*dl_model_fn)(void *user, const float *x_in, float t, float *out);
/* Fill out[0..n) with standard normal draws (e.g. dl_torch_randn). Returns DL_OK or DL_ERR. */
typedef int (*dl_noise_fn)(void *user, float *out, int64_t n);

typedef struct dl_sampler {
    dl_sampler_kind kind;
    dl_schedule sched;          /* the training schedule the sampler is built on */
    dl_prediction pred;
    int num_inference_steps;    /* the steps asked for */
    int karras;
    float eta;
    /* the full schedule as diffusers' scheduler.timesteps / scheduler.sigmas */
    int n_full;                 /* len(scheduler.timesteps): steps, or 2 steps - 1 for Heun */
    float *timesteps_full;      /* [n_full] */
    float *sigmas_full;         /* [n_full + 1] scheduler.sigmas (EULER, EULER_A, HEUN, DPM++);
                                   NULL for DDIM and LCM, which have none */
    /* this run: the img2img subset scheduler.timesteps[begin:] (begin 0 for txt2img) */
    int begin;                  /* t_start * scheduler.order, set_begin_index's argument */
    int n_calls;                /* model calls in this run: n_full - begin */
    const float *timesteps;     /* [n_calls] = timesteps_full + begin */
    int pipeline_steps;         /* what diffusers' get_timesteps returns as num_inference_steps */
    float init_noise_sigma;     /* scheduler.init_noise_sigma */
    int64_t numel;              /* elements of the latents (whole batch) */
    /* loop state */
    int call;                   /* model calls done in this run */
    int heun_second;            /* Heun: the next step is the second-order correction */
    float heun_dt;
    int dpm_lower_order_nums;
    float *prev;                /* [numel] Heun: first derivative; DPM++: previous x0 */
    float *saved;               /* [numel] Heun: the sample before the first-order step */
    float *xin, *out, *noise;   /* [numel] scratch for dl_sampler_run */
} dl_sampler;

/* Build a sampler of `kind` over the schedule of cfg for `steps` inference steps, for latents of
 * numel elements. Returns DL_OK, or DL_ERR with a message (bad config, steps < 1 or above
 * num_train_timesteps, LCM steps above original steps, Karras on a sampler without it, strength
 * outside (0, 1] or leaving no step, out of memory); on error *s is freeable. */
int dl_sampler_create(dl_sampler *s, dl_sampler_kind kind, const dl_schedule_config *cfg,
                      int steps, const dl_sampler_opts *opts, int64_t numel);
void dl_sampler_free(dl_sampler *s);
/* Rewind to the first call (for the next batch), keeping the schedule. */
void dl_sampler_reset(dl_sampler *s);

/* txt2img start: x = noise * init_noise_sigma. noise, x: [numel], may alias. */
void dl_sampler_init_txt2img(const dl_sampler *s, const float *noise, float *x);
/* img2img start: the init latents x0 noised to the run's first timestep as the scheduler's
 * add_noise does: x0 + sigma * noise (Euler, Euler a, Heun), alpha_t x0 + sigma_t noise with
 * alpha_t = 1/sqrt(sigma^2+1) (DPM++), sqrt(acp) x0 + sqrt(1-acp) noise (DDIM, LCM).
 * x may alias x0 or noise. */
void dl_sampler_init_img2img(const dl_sampler *s, const float *x0, const float *noise, float *x);

/* True when every call of this run is done. */
int dl_sampler_done(const dl_sampler *s);
/* The model timestep of the next call. */
float dl_sampler_timestep(const dl_sampler *s);
/* The factor scale_model_input applies to x before the next call: 1/sqrt(sigma^2 + 1) for the
 * sigma samplers (Euler, Euler a, Heun), 1 for DDIM, DPM++ and LCM. */
float dl_sampler_input_scale(const dl_sampler *s);
/* The sigma of the next call (scheduler.sigmas[step_index]); 0 for DDIM and LCM. */
float dl_sampler_sigma(const dl_sampler *s);
/* True when the next dl_sampler_step consumes a noise tensor (see the order above). */
int dl_sampler_needs_noise(const dl_sampler *s);
/* One scheduler.step: x (the current sample, [numel]) is replaced by the previous sample, given
 * the model output for the current call (already CFG-combined) and, when
 * dl_sampler_needs_noise(), numel standard normal draws (else ignored, may be NULL). */
void dl_sampler_step(dl_sampler *s, const float *model_out, float *x, const float *noise);

/* The whole loop from the current state: x holds the initial latents (after dl_sampler_init_*)
 * and receives the result. noise_fn may be NULL when the run draws no noise. Returns DL_OK or the
 * first DL_ERR of a callback. */
int dl_sampler_run(dl_sampler *s, float *x, dl_model_fn model, void *model_user,
                   dl_noise_fn noise_fn, void *noise_user);

#ifdef __cplusplus
}
#endif
#endif
