/* test_vae.c - AutoencoderKL encoder, sampling and decoder against diffusers (float64
 * reference) on two tiny VAEs: the tiny checkpoint's (both layouts) and one with channel
 * changes, three blocks and a non-square image. */
#include "model/vae.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_vae(const char *rel, const char *cse)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path(rel), NULL), DL_OK, "%s", dl_error_msg());
    dl_arena weights, scratch;
    cr_assert_eq(dl_arena_init(&weights, "weights", tu_vae_weights_bytes(&ck)), DL_OK);
    dl_vae vae;
    cr_assert_eq(dl_vae_load(&vae, &ck, &weights), DL_OK, "%s", dl_error_msg());

    dl_st_file g;
    tu_golden_open(&g, "vae");
    char name[128], label[256];
    snprintf(name, sizeof name, "%s.image", cse);
    const dl_st_tensor *ti = dl_st_find(&g, name);
    cr_assert_not_null(ti);
    int N = (int)ti->shape[0], H = (int)ti->shape[1], W = (int)ti->shape[2];
    int f = 1 << (vae.cfg.n_blocks - 1), h = H / f, w = W / f, L = vae.cfg.latent_channels;
    cr_assert_eq(dl_arena_init(&scratch, "scratch", dl_vae_scratch_bytes(&vae.cfg, N, H, W)), DL_OK);
    float *img = tu_golden_f32(&g, name, NULL);
    size_t nl = (size_t)N * h * w * L, ni = (size_t)N * H * W * 3;
    float *mean = tu_alloc_nan(nl), *logvar = tu_alloc_nan(nl), *lat = tu_alloc_nan(nl), *dec = tu_alloc_nan(ni);

    dl_vae_encode(tu_ctx(), &vae, N, H, W, img, mean, logvar, &scratch);
    int64_t ls[4] = {N, h, w, L}, is[4] = {N, H, W, 3};
    snprintf(name, sizeof name, "%s.mean", cse);
    float *ref = tu_golden_f32_shape(&g, name, 4, ls);
    snprintf(label, sizeof label, "%s (%s)", name, rel);
    tu_expect_close(mean, ref, nl, 1e-5, label);
    free(ref);
    snprintf(name, sizeof name, "%s.logvar", cse);
    ref = tu_golden_f32_shape(&g, name, 4, ls);
    snprintf(label, sizeof label, "%s (%s)", name, rel);
    tu_expect_close(logvar, ref, nl, 1e-5, label);
    free(ref);

    snprintf(name, sizeof name, "%s.noise", cse);
    float *noise = tu_golden_f32_shape(&g, name, 4, ls);
    dl_vae_sample((int64_t)nl, mean, logvar, noise, lat);
    snprintf(name, sizeof name, "%s.latent", cse);
    ref = tu_golden_f32_shape(&g, name, 4, ls);
    snprintf(label, sizeof label, "%s (%s)", name, rel);
    tu_expect_close(lat, ref, nl, 1e-5, label);

    /* decode the reference latent so the decoder is judged on its own */
    dl_vae_decode(tu_ctx(), &vae, N, h, w, ref, dec, &scratch);
    free(ref);
    snprintf(name, sizeof name, "%s.decoded", cse);
    ref = tu_golden_f32_shape(&g, name, 4, is);
    snprintf(label, sizeof label, "%s (%s)", name, rel);
    tu_expect_close(dec, ref, ni, 1e-5, label);
    free(ref);
    cr_expect_eq(dl_arena_mark(&scratch), 0, "encode/decode must release their scratch");

    free(img); free(mean); free(logvar); free(lat); free(dec); free(noise);
    dl_st_close(&g);
    dl_vae_free(&vae);
    dl_arena_free(&scratch);
    dl_arena_free(&weights);
    dl_ckpt_close(&ck);
}

Test(vae, tiny_sd15_both_layouts_match_diffusers)
{
    check_vae("tests/golden/tiny_sd15", "tiny_sd15");
    check_vae("tests/golden/tiny_sd15.safetensors", "tiny_sd15");
}

Test(vae, channel_changes_three_blocks_non_square)
{
    check_vae("tests/golden/tiny_vae2", "tiny_vae2");
}
