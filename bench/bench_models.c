/* bench_models.c - times the networks of a (full-size) checkpoint on a backend (the CPU, or the
 * GPU with --backend cuda): the text encoder (1 x 77 tokens), one UNet evaluation at 32x32 and
 * 64x64 latents (256² and 512² images, 77 context tokens; --batch 2 is a sampling step with CFG:
 * the conditional and unconditional halves in one batch), and the VAE decoder at 256². One
 * measurement per process so the peak RSS belongs to it.
 *
 * Weights and scratch are arenas in the backend's memory (dl_arena_init_on), the inputs are
 * uploaded once, outputs stay there; every evaluation ends with dl_be_sync before the clock is
 * read, so a device evaluation is timed whole. After the timing the output is read back once
 * and must be finite. "backend memory" is the arenas' capacities plus the input/output buffers
 * (not the backend's own workspace or the CUDA context).
 *
 * usage: bench_models --model PATH --what text|unet32|unet64|vae256 [--backend cpu|cuda]
 *                     [--batch N] [--threads N] [--repeats R] [--json PATH]
 * --batch applies to the UNet (default 1). Make a random full-size SD1.5 checkpoint with:
 * danlu-mkcheckpoint --preset sd15 ... Compare with bench/torch_models.py (diffusers on the CPU,
 * same threads) and, for sampling on a GPU, bench/torch_sample.py --device cuda. */
#include "bench_common.h"
#include "backend/backend.h"
#include "core/arena.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "bench_models"

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --model PATH --what text|unet32|unet64|vae256 [options]\n"
               "Times one network of the checkpoint (median of R evaluations after a warm-up).\n"
               "  --backend cpu|cuda    where it runs (default cpu)\n"
               "  --batch N             UNet batch (default 1; 2 = one sampling step with CFG)\n"
               "  --threads N           CPU threads (default: DANLU_THREADS or every core)\n"
               "  --repeats R           timed evaluations (default 3)\n"
               "  --json PATH           write the figures as one JSON object\n");
}

/* Reads n floats of backend memory back; 1 when every one is finite. */
static int all_finite(const dl_ctx *ctx, const float *d, size_t n)
{
    float *h = malloc(n * sizeof *h);
    int ok = h && dl_be_download(ctx, h, d, n * sizeof *h) == DL_OK;
    for (size_t i = 0; ok && i < n; i++) ok = isfinite(h[i]);
    free(h);
    return ok;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *what = NULL, *json = NULL, *backend = "cpu";
    int threads = 0, repeats = 3, batch = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
        if (i + 1 >= argc) { fprintf(stderr, PROG ": %s needs a value\n", argv[i]); return 2; }
        const char *v = argv[++i], *o = argv[i - 1];
        if (!strcmp(o, "--model")) model = v;
        else if (!strcmp(o, "--what")) what = v;
        else if (!strcmp(o, "--backend")) backend = v;
        else if (!strcmp(o, "--batch")) batch = atoi(v);
        else if (!strcmp(o, "--json")) json = v;
        else if (!strcmp(o, "--threads")) threads = atoi(v);
        else if (!strcmp(o, "--repeats")) repeats = atoi(v);
        else { fprintf(stderr, PROG ": unknown option %s\n", o); return 2; }
    }
    if (!model || !what || repeats < 1 || batch < 1) {
        usage(stderr);
        return 2;
    }
    const dl_backend *be = bench_backend(PROG, backend);
    dl_ctx ctx;
    dl_checkpoint ck;
    if (dl_ctx_init_backend(&ctx, threads, be) != DL_OK || dl_ckpt_open(&ck, model, NULL) != DL_OK) {
        fprintf(stderr, PROG ": %s\n", dl_error_msg());
        return 1;
    }
    char device[256];
    be->describe(&ctx, device, sizeof device);
    dl_arena weights = {0}, scratch = {0};
    double t_load = bench_now();
    double *times = calloc((size_t)repeats, sizeof *times);
    int ok = 1, finite = 1, N = 1;
    size_t wb = 0, bufs = 0; /* bufs: backend memory outside the arenas */
    if (!strcmp(what, "text")) {
        dl_clip m;
        ok = dl_clip_weights_bytes(&ck, &wb) == DL_OK && dl_arena_init_on(&weights, "weights", wb, &ctx) == DL_OK &&
             dl_clip_load(&m, &ck, &weights) == DL_OK &&
             dl_arena_init_on(&scratch, "scratch", dl_clip_scratch_bytes(&m, 1, 77), &ctx) == DL_OK;
        if (ok) {
            t_load = bench_now() - t_load;
            int32_t ids[77];
            for (int i = 0; i < 77; i++) ids[i] = i == 0 ? 49406 : (i < 20 ? 320 + i : 49407);
            const size_t n_out = 77 * (size_t)ck.cfg.text.hidden_size;
            int32_t *d_ids = bench_be_alloc(PROG, &ctx, sizeof ids, &bufs);
            float *out = bench_be_alloc(PROG, &ctx, sizeof(float) * n_out, &bufs);
            ok = dl_be_upload(&ctx, d_ids, ids, sizeof ids) == DL_OK;
            dl_clip_forward(&ctx, &m, 1, 77, d_ids, ck.cfg.text.num_layers, 1, out, &scratch); /* warm-up */
            bench_be_sync(PROG, &ctx);
            for (int r = 0; ok && r < repeats; r++) {
                double t0 = bench_now();
                dl_clip_forward(&ctx, &m, 1, 77, d_ids, ck.cfg.text.num_layers, 1, out, &scratch);
                bench_be_sync(PROG, &ctx);
                times[r] = bench_now() - t0;
            }
            finite = all_finite(&ctx, out, n_out);
            dl_be_free(&ctx, d_ids), dl_be_free(&ctx, out);
            dl_clip_free(&m);
        }
    } else if (!strcmp(what, "unet32") || !strcmp(what, "unet64")) {
        int HW = !strcmp(what, "unet32") ? 32 : 64, Dc = ck.cfg.unet.cross_attention_dim;
        N = batch;
        dl_unet m;
        ok = dl_unet_weights_bytes(&ck, &wb) == DL_OK && dl_arena_init_on(&weights, "weights", wb, &ctx) == DL_OK &&
             dl_unet_load(&m, &ck, &weights) == DL_OK &&
             dl_arena_init_on(&scratch, "scratch", dl_unet_scratch_bytes(&m, N, HW, HW, 77), &ctx) == DL_OK;
        if (ok) {
            t_load = bench_now() - t_load;
            const size_t n_x = (size_t)N * HW * HW * 4;
            float *x = bench_be_randn(PROG, &ctx, n_x, 1, &bufs),
                  *c = bench_be_randn(PROG, &ctx, (size_t)N * 77 * Dc, 2, &bufs);
            float ts[64];
            for (int i = 0; i < N && i < 64; i++) ts[i] = 500.0f;
            float *t = bench_be_alloc(PROG, &ctx, sizeof(float) * (size_t)N, &bufs),
                  *out = bench_be_alloc(PROG, &ctx, sizeof(float) * n_x, &bufs);
            ok = N <= 64 && dl_be_upload(&ctx, t, ts, sizeof(float) * (size_t)N) == DL_OK;
            if (!ok) dl_error_set("--batch %d: at most 64", N);
            if (ok) dl_unet_forward(&ctx, &m, N, HW, HW, x, t, c, 77, out, &scratch);
            bench_be_sync(PROG, &ctx);
            for (int r = 0; ok && r < repeats; r++) {
                double t0 = bench_now();
                dl_unet_forward(&ctx, &m, N, HW, HW, x, t, c, 77, out, &scratch);
                bench_be_sync(PROG, &ctx);
                times[r] = bench_now() - t0;
            }
            if (ok) finite = all_finite(&ctx, out, n_x);
            dl_be_free(&ctx, x), dl_be_free(&ctx, c), dl_be_free(&ctx, t), dl_be_free(&ctx, out);
            dl_unet_free(&m);
        }
    } else if (!strcmp(what, "vae256")) {
        int f = 1 << (ck.cfg.vae.n_blocks - 1), h = 256 / f;
        dl_vae m;
        ok = dl_vae_weights_bytes(&ck, &wb) == DL_OK && dl_arena_init_on(&weights, "weights", wb, &ctx) == DL_OK &&
             dl_vae_load(&m, &ck, &weights) == DL_OK &&
             dl_arena_init_on(&scratch, "scratch", dl_vae_scratch_bytes(&ck.cfg.vae, 1, 256, 256), &ctx) == DL_OK;
        if (ok) {
            t_load = bench_now() - t_load;
            const size_t n_img = 256 * 256 * 3;
            float *z = bench_be_randn(PROG, &ctx, (size_t)h * h * ck.cfg.vae.latent_channels, 3, &bufs),
                  *img = bench_be_alloc(PROG, &ctx, sizeof(float) * n_img, &bufs);
            dl_vae_decode(&ctx, &m, 1, h, h, z, img, &scratch);
            bench_be_sync(PROG, &ctx);
            for (int r = 0; r < repeats; r++) {
                double t0 = bench_now();
                dl_vae_decode(&ctx, &m, 1, h, h, z, img, &scratch);
                bench_be_sync(PROG, &ctx);
                times[r] = bench_now() - t0;
            }
            finite = all_finite(&ctx, img, n_img);
            dl_be_free(&ctx, z), dl_be_free(&ctx, img);
            dl_vae_free(&m);
        }
    } else {
        fprintf(stderr, PROG ": unknown --what '%s'\n", what);
        return 2;
    }
    if (!ok) {
        fprintf(stderr, PROG ": %s\n", dl_error_msg());
        return 1;
    }
    if (!finite) {
        fprintf(stderr, PROG ": %s on %s gave a NaN or an infinity\n", what, be->name);
        return 1;
    }
    qsort(times, (size_t)repeats, sizeof *times, bench_cmp_double);
    const double peak_gib = bench_peak_rss_gib(), GiB = 1073741824.0;
    const double be_mem = (weights.cap + scratch.cap + bufs) / GiB;
    printf("device: %s\n", device);
    printf("%-8s threads %d  median %.3f s  best %.3f s  (load %.1f s)  peak RSS %.2f GiB  (weights %.2f GiB, scratch %.2f GiB)\n",
           what, dl_pool_nthreads(ctx.pool), times[repeats / 2], times[0], t_load, peak_gib,
           weights.cap / GiB, scratch.cap / GiB);
    printf("backend %s: batch %d, %.2f ms per evaluation (median), backend memory %.2f GiB\n", be->name, N,
           times[repeats / 2] * 1e3, be_mem);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) { fprintf(stderr, PROG ": cannot write %s\n", json); return 1; }
        fprintf(f, "{\"what\": \"%s\", \"backend\": \"%s\", \"device\": ", what, be->name);
        bench_json_str(f, device);
        fprintf(f, ", \"batch\": %d, \"threads\": %d, \"median_s\": %.6f, \"best_s\": %.6f, \"peak_rss_gib\": %.4f, "
                   "\"backend_mem_gib\": %.4f}\n",
                N, dl_pool_nthreads(ctx.pool), times[repeats / 2], times[0], peak_gib, be_mem);
        fclose(f);
    }
    dl_arena_free(&weights);
    dl_arena_free(&scratch);
    dl_ckpt_close(&ck);
    dl_ctx_free(&ctx);
    free(times);
    return 0;
}
