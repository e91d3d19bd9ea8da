/* test_train_objective.c - one batch of the training objective (noise, offset, timesteps,
 * noisy latents, eps/v target, min-SNR weights) against sd-scripts' order of torch draws
 * (tests/gen/gen_objective.py, torch's CPU generator and diffusers' DDPMScheduler). */
#include "train/objective.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Test(train_objective, golden_sd_scripts)
{
    static const struct { const char *name; int N, C, H, W; double off, gamma; int v; uint64_t seed; } cases[] = {
        {"eps", 2, 4, 8, 8, 0.0, 0.0, 0, 7},
        {"eps_offset_snr", 3, 4, 6, 10, 0.1, 5.0, 0, 11},
        {"v_snr", 2, 4, 8, 4, 0.0, 1.0, 1, 3},
    };
    dl_st_file f;
    tu_golden_open(&f, "objective");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char key[128], label[160];
        int N = cases[c].N;
        size_t n = (size_t)N * cases[c].C * cases[c].H * cases[c].W;
#define G(t) (snprintf(key, sizeof key, "%s.%s", cases[c].name, t), key)
        float *lat = tu_golden_f32(&f, G("latents"), NULL);
        float *noise_ref = tu_golden_f32(&f, G("noise"), NULL);
        float *noisy_ref = tu_golden_f32(&f, G("noisy"), NULL);
        float *target_ref = tu_golden_f32(&f, G("target"), NULL);
        float *w_ref = tu_golden_f32(&f, G("w"), NULL);
        const dl_st_tensor *tt = dl_st_find(&f, G("t"));
#undef G
        cr_assert(tt && tt->dtype == DL_I64);
        dl_objective_cfg oc;
        dl_objective_cfg_sd15(&oc);
        oc.noise_offset = cases[c].off;
        oc.min_snr_gamma = cases[c].gamma;
        oc.v_prediction = cases[c].v;
        dl_objective *o;
        cr_assert_eq(dl_objective_create(&o, &oc), DL_OK);
        dl_torch_rng g;
        dl_torch_rng_seed(&g, cases[c].seed);
        int64_t t[8];
        float *noise = tu_alloc_nan(n), *noisy = tu_alloc_nan(n), *target = tu_alloc_nan(n), *tmp = tu_alloc_nan(n);
        float w[8];
        dl_objective_batch(o, &g, N, cases[c].H, cases[c].W, cases[c].C, lat, t, noise, noisy, target, w, tmp);
        for (int i = 0; i < N; i++)
            cr_expect_eq(t[i], ((const int64_t *)tt->data)[i], "%s t[%d]", cases[c].name, i);
        snprintf(label, sizeof label, "%s noise", cases[c].name);
        tu_expect_close(noise, noise_ref, n, 1e-6, label); /* torch's vectorised log/sin/cos: last ulp */
        snprintf(label, sizeof label, "%s noisy", cases[c].name);
        tu_expect_close(noisy, noisy_ref, n, 1e-6, label);
        snprintf(label, sizeof label, "%s target", cases[c].name);
        tu_expect_close(target, target_ref, n, 1e-6, label);
        snprintf(label, sizeof label, "%s weights", cases[c].name);
        tu_expect_close(w, w_ref, (size_t)N, 1e-6, label);
        cr_expect_eq(dl_objective_weighted(o), cases[c].gamma > 0);
        dl_objective_free(o);
        free(lat); free(noise_ref); free(noisy_ref); free(target_ref); free(w_ref);
        free(noise); free(noisy); free(target); free(tmp);
    }
    dl_st_close(&f);
}
