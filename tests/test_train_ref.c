/* test_train_ref.c - ten steps of `danlu train` against the same loop in PyTorch
 * (tests/gen/gen_train_ref.py: diffusers' VAE, CLIP and UNet on tests/golden/tiny_pipe, LoRA on
 * sd-scripts' default targets started from a given kohya file, torch's generator for noise and
 * timesteps, MSE, clip_grad_norm_, AdamW, cosine schedule with warmup): every step's loss and
 * the final LoRA weights agree to fp32 accuracy (so do the image preparation, VAE sampling and
 * text embeddings that feed them). */
#include "core/error.h"
#include "io/safetensors.h"
#include "train/config.h"
#include "train/trainer.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_case(const char *golden, const char *const *extra)
{
    char dir[64] = "/tmp/danlu-trainref-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char init[1024];
    snprintf(init, sizeof init, "%s", tu_path("tests/golden/train_ref/init_lora.safetensors"));
    const char *a[] = {"train", "--pretrained_model_name_or_path", tu_path("tests/golden/tiny_pipe"),
                       "--train_data_dir", tu_path("tests/golden/train_ref/data"), "--output_dir", dir,
                       "--resolution", "32", "--seed", "7", "--max_train_steps", "10", "--learning_rate", "2e-3",
                       "--network_dim", "4", "--network_alpha", "2", "--network_train_unet_only",
                       "--network_weights", init, "--lr_scheduler", "cosine", "--lr_warmup_steps", "3",
                       "--threads", "2", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    int argc = 0;
    while (a[argc]) argc++;
    for (int i = 0; extra[i]; i++) a[argc++] = extra[i];
    dl_train_config c;
    dl_train_config_defaults(&c);
    cr_assert_eq(dl_train_config_parse_args(&c, argc, (char **)a, NULL), DL_OK, "%s", dl_error_msg());
    dl_trainer_opts o = {.tty = 0};
    dl_train_result r;
    cr_assert_eq(dl_train_run(&c, &o, &r), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(r.steps_done, 10);

    dl_st_file ref;
    tu_golden_open(&ref, golden);
    const dl_st_tensor *tl = dl_st_find(&ref, "losses");
    cr_assert(tl && tl->dtype == DL_F64 && dl_st_numel(tl) == 10);
    const double *want = tl->data;
    double worst = 0;
    for (int i = 0; i < 10; i++) {
        double e = fabs(r.losses[i] - want[i]) / fabs(want[i]);
        if (e > worst) worst = e;
        /* fp32 UNet forward/backward vs torch's fp32: a few 1e-6 relative, growing slowly with
         * the AdamW steps */
        cr_expect(e <= 1e-4, "step %d: loss %.9g, PyTorch %.9g (rel %.2e)", i + 1, r.losses[i], want[i], e);
    }
    fprintf(stderr, "train_ref %s: worst relative loss error over 10 steps %.2e\n", golden, worst);

    /* final weights: every tensor of the output against PyTorch's */
    dl_st_file got;
    cr_assert_eq(dl_st_open(&got, r.output_path), DL_OK, "%s", dl_error_msg());
    int compared = 0;
    double worst_w = 0;
    for (int i = 0; i < ref.n_tensors; i++) {
        const dl_st_tensor *t = &ref.tensors[i];
        if (!strstr(t->name, ".lora_")) continue;
        const dl_st_tensor *g = dl_st_find(&got, t->name);
        cr_assert_not_null(g, "%s missing in the output", t->name);
        int64_t n = dl_st_numel(t);
        cr_assert_eq(dl_st_numel(g), n, "%s", t->name);
        float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        cr_assert_eq(dl_st_read_f32(&got, g, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&ref, t, y), DL_OK);
        double e = tu_rel_l2(x, y, (size_t)n);
        if (e > worst_w) worst_w = e;
        tu_expect_close(x, y, (size_t)n, 1e-4, t->name);
        free(x);
        free(y);
        compared++;
    }
    cr_expect_eq(compared, 96);
    fprintf(stderr, "train_ref %s: worst relative L2 error of the final LoRA weights %.2e\n", golden, worst_w);
    dl_st_close(&got);
    dl_st_close(&ref);
    dl_train_result_free(&r);
    dl_train_config_free(&c);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

Test(train_ref, ten_steps_match_pytorch, .timeout = 300)
{
    static const char *const none[] = {NULL};
    check_case("train_ref/expected", none);
}

/* v-prediction target, min-SNR-gamma (v form) and noise offset */
Test(train_ref, ten_steps_v_minsnr_offset_match_pytorch, .timeout = 300)
{
    static const char *const ex[] = {"--v_parameterization", "--min_snr_gamma", "5", "--noise_offset", "0.1", NULL};
    check_case("train_ref/expected_v", ex);
}

/* gradient checkpointing recomputes the blocks' internals: the same numbers */
Test(train_ref, ten_steps_gradient_checkpointing_match_pytorch, .timeout = 300)
{
    static const char *const ex[] = {"--gradient_checkpointing", NULL};
    check_case("train_ref/expected", ex);
}
