/* bench_train_step.c - times one LoRA training step of a (full-size) checkpoint's UNet on the
 * CPU, as `danlu train` runs it with latents and text embeddings cached: the forward recorded on
 * the tape, the MSE loss, the backward into the LoRA gradients and one AdamW step. Batch 1, 77
 * context tokens, sd-scripts' default targets (192 modules for SD1.5) at the given rank. One
 * measurement per process, so the peak RSS (printed, and in the JSON) is the step's: weights,
 * activations, scratch, LoRA, optimizer moments and the opened checkpoint.
 *
 * usage: bench_train_step --model PATH [--size 32|64] [--rank 16] [--checkpointing 0|1]
 *                         [--threads N] [--steps S] [--json PATH]
 * --size is the latent side (32: 256² images, 64: 512²). The first step (warm-up: workspace
 * growth, page faults) is timed apart and not in the median. Compare with
 * bench/torch_train_step.py (diffusers UNet + PEFT LoRA, same targets, same threads). */
#include "bench_common.h"
#include "backend/backend.h"
#include "core/arena.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "lora/lora_net.h"
#include "model/checkpoint.h"
#include "model/unet.h"
#include "train/unet_train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(void)
{
    fprintf(stderr, "bench_train_step: %s\n", dl_error_msg());
    exit(1);
}

int main(int argc, char **argv)
{
    const char *model = NULL, *json = NULL;
    int threads = 0, steps = 3, size = 32, rank = 16, ckpt = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rank")) rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--checkpointing")) ckpt = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_train_step: unknown option %s\n", argv[i]); return 2; }
    }
    if (!model || steps < 1 || size < 8 || rank < 1) {
        fprintf(stderr, "usage: bench_train_step --model PATH [--size 32|64] [--rank 16] [--checkpointing 0|1] "
                        "[--threads N] [--steps S] [--json PATH]\n");
        return 2;
    }
    dl_ctx ctx;
    dl_checkpoint ck;
    if (dl_ctx_init(&ctx, threads) != DL_OK || dl_ckpt_open(&ck, model, NULL) != DL_OK) die();
    double t_load = bench_now();
    dl_arena weights, act, scratch;
    dl_unet u;
    size_t wb = 0;
    if (dl_unet_weights_bytes(&ck, &wb) != DL_OK || dl_arena_init(&weights, "weights", wb) != DL_OK ||
        dl_unet_load(&u, &ck, &weights) != DL_OK)
        die();
    t_load = bench_now() - t_load;

    dl_lora_net net;
    dl_lora_spec spec = {.preset = DL_LORA_PRESET_DEFAULT, .rank = rank, .alpha = (float)rank, .unet = 1,
                         .multiplier = 1.0f, .seed = 42};
    if (dl_lora_net_create(&net, &ck.cfg, &spec) != DL_OK || dl_lora_net_attach(&net, &u, NULL) != DL_OK) die();
    const int T = 77, H = size, W = size, C = ck.cfg.unet.in_channels, Dc = ck.cfg.unet.cross_attention_dim;
    if (dl_arena_init(&act, "activations", dl_unet_train_act_bytes(&u, 1, H, W, T, ckpt) + 4096) != DL_OK ||
        dl_arena_init(&scratch, "scratch", dl_unet_train_scratch_bytes(&u, 1, H, W, T, ckpt, 0) + 4096) != DL_OK)
        die();
    const size_t D = (size_t)H * W * C;
    float *x = bench_randn(D, 1), *target = bench_randn(D, 2), *context = bench_randn((size_t)T * Dc, 3);
    float *pred = malloc(D * sizeof *pred), *dpred = malloc(D * sizeof *dpred);
    float *m = calloc((size_t)net.n_params, sizeof *m), *v = calloc((size_t)net.n_params, sizeof *v);
    dl_unet_tape *tape = malloc(sizeof *tape);
    double *times = calloc((size_t)steps, sizeof *times);
    if (!x || !target || !context || !pred || !dpred || !m || !v || !tape || !times) {
        fprintf(stderr, "bench_train_step: out of memory\n");
        return 1;
    }
    const dl_adamw_hparams hp = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
    double warm = 0, loss = 0;
    for (int s = -1; s < steps; s++) {
        const float t = (float)(100 + 37 * (s + 1) % 900);
        double t0 = bench_now();
        dl_lora_net_zero_grads(&net);
        size_t mark = dl_arena_mark(&act);
        dl_unet_train_forward(&ctx, &u, tape, 1, H, W, x, &t, context, T, pred, ckpt, &act, &scratch);
        float lossf;
        dl_be(&ctx)->mse_loss_forward(&ctx, 1, (int64_t)D, pred, target, NULL, NULL, &lossf);
        loss = lossf;
        dl_be(&ctx)->mse_loss_backward(&ctx, 1, (int64_t)D, pred, target, NULL, 1.0f, dpred, NULL);
        dl_unet_backward(&ctx, tape, dpred, NULL, &scratch);
        dl_arena_release(&act, mark);
        dl_be(&ctx)->adamw_step(&ctx, net.n_params, &hp, s + 2, net.params, net.grads, m, v);
        double dt = bench_now() - t0;
        if (s < 0) warm = dt;
        else times[s] = dt;
    }
    qsort(times, (size_t)steps, sizeof *times, bench_cmp_double);
    const double med = times[steps / 2], peak = bench_peak_rss_gib();
    printf("train step %dx%d latent (%dx%d px), rank %d, %d modules, checkpointing %s, threads %d: median %.3f s, "
           "best %.3f s, first %.3f s (load %.1f s), loss %.4f, peak RSS %.2f GiB (weights %.2f, activations %.2f, "
           "scratch %.2f GiB)\n",
           H, W, H * 8, W * 8, rank, net.n, ckpt ? "on" : "off", dl_pool_nthreads(ctx.pool), med, times[0], warm,
           t_load, loss, peak, weights.cap / 1073741824.0, act.cap / 1073741824.0, scratch.cap / 1073741824.0);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) { fprintf(stderr, "bench_train_step: cannot write %s\n", json); return 1; }
        fprintf(f,
                "{\"what\": \"train_step\", \"latent\": %d, \"rank\": %d, \"modules\": %d, \"checkpointing\": %d, "
                "\"threads\": %d, \"median_s\": %.6f, \"best_s\": %.6f, \"first_s\": %.6f, \"peak_rss_gib\": %.4f}\n",
                size, rank, net.n, ckpt, dl_pool_nthreads(ctx.pool), med, times[0], warm, peak);
        fclose(f);
    }
    dl_lora_net_detach(&net, &u, NULL);
    dl_lora_net_free(&net);
    dl_unet_free(&u);
    dl_arena_free(&weights);
    dl_arena_free(&act);
    dl_arena_free(&scratch);
    dl_ckpt_close(&ck);
    dl_ctx_free(&ctx);
    free(x), free(target), free(context), free(pred), free(dpred), free(m), free(v), free(tape), free(times);
    return 0;
}
