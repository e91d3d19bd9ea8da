/* bench_models.c - times the networks of a (full-size) checkpoint on the CPU: the text encoder
 * (1 x 77 tokens), one UNet evaluation at 32x32 and 64x64 latents (256² and 512² images,
 * batch 1, 77 context tokens), and the VAE decoder at 256². One measurement per process so
 * the peak RSS belongs to it.
 *
 * usage: bench_models --model PATH --what text|unet32|unet64|vae256 [--threads N] [--repeats R]
 *                     [--json PATH]
 * Make a random full-size SD1.5 checkpoint with: danlu-mkcheckpoint --preset sd15 ...
 * Compare with bench/torch_models.py (diffusers on the CPU, same threads). */
#include "bench_common.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *model = NULL, *what = NULL, *json = NULL;
    int threads = 0, repeats = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--what")) what = argv[i + 1];
        else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeats")) repeats = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_models: unknown option %s\n", argv[i]); return 2; }
    }
    if (!model || !what || repeats < 1) {
        fprintf(stderr, "usage: bench_models --model PATH --what text|unet32|unet64|vae256 [--threads N] [--repeats R] [--json PATH]\n");
        return 2;
    }
    dl_ctx ctx;
    dl_checkpoint ck;
    if (dl_ctx_init(&ctx, threads) != DL_OK || dl_ckpt_open(&ck, model, NULL) != DL_OK) {
        fprintf(stderr, "bench_models: %s\n", dl_error_msg());
        return 1;
    }
    dl_arena weights, scratch;
    double t_load = bench_now();
    double *times = calloc((size_t)repeats, sizeof *times);
    int ok = 1;
    size_t wb = 0;
    if (!strcmp(what, "text")) {
        dl_clip m;
        ok = dl_clip_weights_bytes(&ck, &wb) == DL_OK && dl_arena_init(&weights, "weights", wb) == DL_OK &&
             dl_clip_load(&m, &ck, &weights) == DL_OK &&
             dl_arena_init(&scratch, "scratch", dl_clip_scratch_bytes(&m, 1, 77)) == DL_OK;
        if (ok) {
            t_load = bench_now() - t_load;
            int32_t ids[77];
            for (int i = 0; i < 77; i++) ids[i] = i == 0 ? 49406 : (i < 20 ? 320 + i : 49407);
            float *out = malloc(sizeof(float) * 77 * (size_t)ck.cfg.text.hidden_size);
            dl_clip_forward(&ctx, &m, 1, 77, ids, ck.cfg.text.num_layers, 1, out, &scratch); /* warm-up */
            for (int r = 0; r < repeats; r++) {
                double t0 = bench_now();
                dl_clip_forward(&ctx, &m, 1, 77, ids, ck.cfg.text.num_layers, 1, out, &scratch);
                times[r] = bench_now() - t0;
            }
            free(out);
        }
    } else if (!strcmp(what, "unet32") || !strcmp(what, "unet64")) {
        int HW = !strcmp(what, "unet32") ? 32 : 64, Dc = ck.cfg.unet.cross_attention_dim;
        dl_unet m;
        ok = dl_unet_weights_bytes(&ck, &wb) == DL_OK && dl_arena_init(&weights, "weights", wb) == DL_OK &&
             dl_unet_load(&m, &ck, &weights) == DL_OK &&
             dl_arena_init(&scratch, "scratch", dl_unet_scratch_bytes(&m, 1, HW, HW, 77)) == DL_OK;
        if (ok) {
            t_load = bench_now() - t_load;
            float *x = bench_randn((size_t)HW * HW * 4, 1), *c = bench_randn((size_t)77 * Dc, 2), t = 500.0f;
            float *out = malloc(sizeof(float) * (size_t)HW * HW * 4);
            dl_unet_forward(&ctx, &m, 1, HW, HW, x, &t, c, 77, out, &scratch);
            for (int r = 0; r < repeats; r++) {
                double t0 = bench_now();
                dl_unet_forward(&ctx, &m, 1, HW, HW, x, &t, c, 77, out, &scratch);
                times[r] = bench_now() - t0;
            }
            free(x); free(c); free(out);
        }
    } else if (!strcmp(what, "vae256")) {
        int f = 1 << (ck.cfg.vae.n_blocks - 1), h = 256 / f;
        dl_vae m;
        ok = dl_vae_weights_bytes(&ck, &wb) == DL_OK && dl_arena_init(&weights, "weights", wb) == DL_OK &&
             dl_vae_load(&m, &ck, &weights) == DL_OK &&
             dl_arena_init(&scratch, "scratch", dl_vae_scratch_bytes(&ck.cfg.vae, 1, 256, 256)) == DL_OK;
        if (ok) {
            t_load = bench_now() - t_load;
            float *z = bench_randn((size_t)h * h * ck.cfg.vae.latent_channels, 3), *img = malloc(sizeof(float) * 256 * 256 * 3);
            dl_vae_decode(&ctx, &m, 1, h, h, z, img, &scratch);
            for (int r = 0; r < repeats; r++) {
                double t0 = bench_now();
                dl_vae_decode(&ctx, &m, 1, h, h, z, img, &scratch);
                times[r] = bench_now() - t0;
            }
            free(z); free(img);
        }
    } else {
        fprintf(stderr, "bench_models: unknown --what '%s'\n", what);
        return 2;
    }
    if (!ok) {
        fprintf(stderr, "bench_models: %s\n", dl_error_msg());
        return 1;
    }
    qsort(times, (size_t)repeats, sizeof *times, bench_cmp_double);
    const double peak_gib = bench_peak_rss_gib();
    printf("%-8s threads %d  median %.3f s  best %.3f s  (load %.1f s)  peak RSS %.2f GiB  (weights %.2f GiB, scratch %.2f GiB)\n",
           what, dl_pool_nthreads(ctx.pool), times[repeats / 2], times[0], t_load, peak_gib,
           weights.cap / 1073741824.0, scratch.cap / 1073741824.0);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) { fprintf(stderr, "bench_models: cannot write %s\n", json); return 1; }
        fprintf(f, "{\"what\": \"%s\", \"threads\": %d, \"median_s\": %.6f, \"best_s\": %.6f, \"peak_rss_gib\": %.4f}\n",
                what, dl_pool_nthreads(ctx.pool), times[repeats / 2], times[0], peak_gib);
        fclose(f);
    }
    free(times);
    return 0;
}
