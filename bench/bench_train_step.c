/* bench_train_step.c - times one LoRA training step of a (full-size) checkpoint's UNet on a
 * backend (the CPU, or the GPU with --backend cuda), as `danlu train` runs it with latents and
 * text embeddings cached: the forward recorded on the tape, the MSE loss, the backward into the
 * LoRA gradients and one AdamW step. Batch 1, 77 context tokens, sd-scripts' default targets
 * (192 modules for SD1.5) at the given rank. One measurement per process, so the peak RSS
 * (printed, and in the JSON) is the step's: weights, activations, scratch, LoRA, optimizer
 * moments and the opened checkpoint.
 *
 * Everything the step touches lives in the backend's memory, as in the trainer: the weights,
 * activation and scratch arenas (dl_arena_init_on), the inputs x, context, target and the
 * timestep, pred / dpred, the LoRA parameters and gradients (dl_lora_net_to_backend), the AdamW
 * moments (zero-filled with the table's fill) and the loss, read back with dl_be_read_f32 once
 * per step. Each step ends with dl_be_sync before the clock is read, so a device step is timed
 * whole. "backend memory" is what the benchmark took from the backend (the arenas' capacities
 * plus its buffers), not the backend's own workspace or the CUDA context.
 *
 * usage: bench_train_step --model PATH [--backend cpu|cuda] [--size 32|64] [--rank 16]
 *                         [--checkpointing 0|1] [--threads N] [--steps S] [--json PATH]
 * --size is the latent side (32: 256² images, 64: 512²). The first step (warm-up: workspace
 * growth, page faults, the device's plan caches) is timed apart and not in the median. Compare
 * with bench/torch_train_step.py (diffusers UNet + PEFT LoRA, same targets, same threads;
 * --device cuda --dtype fp32|bf16 on a GPU). */
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

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "bench_train_step"

static void die(void)
{
    fprintf(stderr, PROG ": %s\n", dl_error_msg());
    exit(1);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --model PATH [options]\n"
               "One LoRA training step of the checkpoint's UNet (batch 1, 77 tokens), timed.\n"
               "  --model PATH          checkpoint (.safetensors or diffusers folder)\n"
               "  --backend cpu|cuda    where the step runs (default cpu)\n"
               "  --size N              latent side: 32 (256² images, default) or 64 (512²)\n"
               "  --rank R              LoRA rank (default 16; alpha = rank)\n"
               "  --checkpointing 0|1   gradient checkpointing (default 0)\n"
               "  --threads N           CPU threads (default: DANLU_THREADS or every core)\n"
               "  --steps S             timed steps after the warm-up step (default 3)\n"
               "  --weights native|f32  frozen weights in the checkpoint's fp16/bf16 where the backend takes\n"
               "                        them, as the trainer holds them (default), or converted to fp32\n"
               "  --precision fp32|bf16 the compute type (bf16: matrix products of bf16-rounded inputs with\n"
               "                        fp32 accumulation, as --mixed_precision bf16; backends that have it)\n"
               "  --json PATH           write the figures as one JSON object\n");
}

int main(int argc, char **argv)
{
    const char *model = NULL, *json = NULL, *backend = "cpu";
    int threads = 0, steps = 3, size = 32, rank = 16, ckpt = 0, native = 1, bf16 = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
        if (i + 1 >= argc) { fprintf(stderr, PROG ": %s needs a value\n", argv[i]); return 2; }
        const char *v = argv[++i], *o = argv[i - 1];
        if (!strcmp(o, "--model")) model = v;
        else if (!strcmp(o, "--backend")) backend = v;
        else if (!strcmp(o, "--json")) json = v;
        else if (!strcmp(o, "--threads")) threads = atoi(v);
        else if (!strcmp(o, "--steps")) steps = atoi(v);
        else if (!strcmp(o, "--size")) size = atoi(v);
        else if (!strcmp(o, "--rank")) rank = atoi(v);
        else if (!strcmp(o, "--checkpointing")) ckpt = atoi(v);
        else if (!strcmp(o, "--weights") && (!strcmp(v, "native") || !strcmp(v, "f32"))) native = !strcmp(v, "native");
        else if (!strcmp(o, "--precision") && (!strcmp(v, "fp32") || !strcmp(v, "bf16"))) bf16 = !strcmp(v, "bf16");
        else { fprintf(stderr, PROG ": unknown option %s\n", o); return 2; }
    }
    if (!model || steps < 1 || size < 8 || rank < 1) {
        usage(stderr);
        return 2;
    }
    const dl_backend *be = bench_backend(PROG, backend);
    dl_ctx ctx;
    dl_checkpoint ck;
    if (dl_ctx_init_backend(&ctx, threads, be) != DL_OK || dl_ckpt_open(&ck, model, NULL) != DL_OK) die();
    if (bf16 && !(be->compute_dtypes & (1u << DL_BF16))) {
        fprintf(stderr, PROG ": --precision bf16: the %s backend multiplies in fp32 only\n", be->name);
        return 2;
    }
    ctx.compute_dtype = bf16 ? DL_BF16 : DL_F32;
    if (native) { /* as the trainer: fp16 stays fp16 where computed from, in the file's mapping on the CPU */
        ck.weight_dtypes = be->weight_dtypes;
        ck.weights_in_place = !be->device_memory;
    }
    char device[256];
    be->describe(&ctx, device, sizeof device);
    double t_load = bench_now();
    dl_arena weights, act, scratch;
    dl_unet u;
    size_t wb = 0, bufs = 0; /* bufs: backend memory outside the arenas */
    if (dl_unet_weights_bytes(&ck, &wb) != DL_OK || dl_arena_init_on(&weights, "weights", wb, &ctx) != DL_OK ||
        dl_unet_load(&u, &ck, &weights) != DL_OK)
        die();
    t_load = bench_now() - t_load;

    dl_lora_net net;
    dl_lora_spec spec = {.preset = DL_LORA_PRESET_DEFAULT, .rank = rank, .alpha = (float)rank, .unet = 1,
                         .multiplier = 1.0f, .seed = 42};
    if (dl_lora_net_create(&net, &ck.cfg, &spec) != DL_OK || dl_lora_net_attach(&net, &u, NULL) != DL_OK ||
        dl_lora_net_to_backend(&ctx, &net) != DL_OK)
        die();
    const size_t pbytes = (size_t)(net.n_params > 0 ? net.n_params : 1) * sizeof(float);
    bufs += 2 * pbytes; /* the LoRA parameters and gradients */
    const int T = 77, H = size, W = size, C = ck.cfg.unet.in_channels, Dc = ck.cfg.unet.cross_attention_dim;
    if (dl_arena_init_on(&act, "activations", dl_unet_train_act_bytes(&u, 1, H, W, T, ckpt) + 4096, &ctx) != DL_OK ||
        dl_arena_init_on(&scratch, "scratch", dl_unet_train_scratch_bytes(&u, 1, H, W, T, ckpt, 0) + 4096, &ctx) !=
            DL_OK)
        die();
    const size_t D = (size_t)H * W * C;
    float *x = bench_be_randn(PROG, &ctx, D, 1, &bufs),                 /* [1, H, W, C] noisy latents */
          *target = bench_be_randn(PROG, &ctx, D, 2, &bufs),            /* [1, H, W, C] */
          *context = bench_be_randn(PROG, &ctx, (size_t)T * Dc, 3, &bufs); /* [1, T, Dc] */
    float *pred = bench_be_alloc(PROG, &ctx, D * sizeof *pred, &bufs),   /* [1, H, W, C] */
          *dpred = bench_be_alloc(PROG, &ctx, D * sizeof *dpred, &bufs), /* [1, H, W, C] */
          *d_t = bench_be_alloc(PROG, &ctx, sizeof *d_t, &bufs),   /* [1] timestep */
          *d_loss = bench_be_alloc(PROG, &ctx, sizeof *d_loss, &bufs); /* [1] the loss, read once a step */
    float *m = bench_be_alloc(PROG, &ctx, pbytes, &bufs), /* [n_params] AdamW moments */
          *v = bench_be_alloc(PROG, &ctx, pbytes, &bufs);
    if (be->fill(&ctx, m, 0, pbytes) != DL_OK || be->fill(&ctx, v, 0, pbytes) != DL_OK) die();
    dl_unet_tape *tape = malloc(sizeof *tape);
    double *times = calloc((size_t)steps, sizeof *times);
    if (!tape || !times) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    bench_be_sync(PROG, &ctx); /* uploads and fills done before the first clock */
    const dl_adamw_hparams hp = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
    double warm = 0, loss = 0;
    for (int s = -1; s < steps; s++) {
        const float t = (float)(100 + 37 * (s + 1) % 900);
        double t0 = bench_now();
        if (dl_be_upload(&ctx, d_t, &t, sizeof t) != DL_OK) die();
        dl_lora_net_zero_grads(&net);
        size_t mark = dl_arena_mark(&act);
        dl_unet_train_forward(&ctx, &u, tape, 1, H, W, x, d_t, context, T, pred, ckpt, &act, &scratch);
        be->mse_loss_forward(&ctx, 1, (int64_t)D, pred, target, NULL, NULL, d_loss);
        be->mse_loss_backward(&ctx, 1, (int64_t)D, pred, target, NULL, 1.0f, dpred, NULL);
        dl_unet_backward(&ctx, tape, dpred, NULL, &scratch);
        dl_arena_release(&act, mark);
        be->adamw_step(&ctx, net.n_params, &hp, s + 2, net.params, net.grads, m, v);
        loss = dl_be_read_f32(&ctx, d_loss); /* as the trainer: one loss read per step */
        bench_be_sync(PROG, &ctx);
        double dt = bench_now() - t0;
        if (isnan(loss)) {
            fprintf(stderr, PROG ": the loss of step %d is NaN\n", s + 2);
            return 1;
        }
        if (s < 0) warm = dt;
        else times[s] = dt;
    }
    qsort(times, (size_t)steps, sizeof *times, bench_cmp_double);
    const double med = times[steps / 2], peak = bench_peak_rss_gib(), GiB = 1073741824.0;
    const double be_mem = (weights.cap + act.cap + scratch.cap + bufs) / GiB;
    printf("device: %s, compute %s\n", device, bf16 ? "bf16" : "fp32");
    printf("train step %dx%d latent (%dx%d px), rank %d, %d modules, checkpointing %s, threads %d: median %.3f s, "
           "best %.3f s, first %.3f s (load %.1f s), loss %.4f, peak RSS %.2f GiB (weights %.2f, activations %.2f, "
           "scratch %.2f GiB)\n",
           H, W, H * 8, W * 8, rank, net.n, ckpt ? "on" : "off", dl_pool_nthreads(ctx.pool), med, times[0], warm,
           t_load, loss, peak, weights.cap / GiB, act.cap / GiB, scratch.cap / GiB);
    printf("backend %s: %.2f it/s, backend memory %.2f GiB (arenas %.2f GiB + buffers %.3f GiB; the backend's own "
           "workspace not counted)\n",
           be->name, 1.0 / med, be_mem, (weights.cap + act.cap + scratch.cap) / GiB, bufs / GiB);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) { fprintf(stderr, PROG ": cannot write %s\n", json); return 1; }
        fprintf(f, "{\"what\": \"train_step\", \"backend\": \"%s\", \"precision\": \"%s\", \"weights\": \"%s\", "
                   "\"device\": ", be->name, bf16 ? "bf16" : "fp32", native ? "native" : "f32");
        bench_json_str(f, device);
        fprintf(f,
                ", \"latent\": %d, \"rank\": %d, \"modules\": %d, \"checkpointing\": %d, \"threads\": %d, "
                "\"median_s\": %.6f, \"best_s\": %.6f, \"first_s\": %.6f, \"it_per_s\": %.4f, \"loss\": %.6f, "
                "\"peak_rss_gib\": %.4f, \"backend_mem_gib\": %.4f}\n",
                size, rank, net.n, ckpt, dl_pool_nthreads(ctx.pool), med, times[0], warm, 1.0 / med, loss, peak,
                be_mem);
        fclose(f);
    }
    void *dev_bufs[] = {x, target, context, pred, dpred, d_t, d_loss, m, v};
    for (size_t i = 0; i < sizeof dev_bufs / sizeof *dev_bufs; i++) dl_be_free(&ctx, dev_bufs[i]);
    dl_lora_net_detach(&net, &u, NULL);
    dl_lora_net_free(&net);
    dl_unet_free(&u);
    dl_arena_free(&weights);
    dl_arena_free(&act);
    dl_arena_free(&scratch);
    dl_ckpt_close(&ck);
    dl_ctx_free(&ctx);
    free(tape), free(times);
    return 0;
}
