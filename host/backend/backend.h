/* backend.h - the op interface: one table of function pointers (forward and backward of every
 * op the networks, training and sampling use) that each backend implements once.
 *
 * Model code is written against this table only: it calls dl_be(ctx)->op(ctx, ...) and never a
 * backend's functions by name, so the backend that runs a network is chosen by the ctx it is
 * given (dl_ctx_init_backend). Every entry has exactly the signature, argument meaning, layout
 * and overwrite/alias rules of the CPU reference op of the same name (host/ops/cpu/<family>.h,
 * dl_cpu_<op>): those headers are the contract of each entry. A backend with device_memory set
 * takes and returns pointers to its own memory; the CPU backend uses host memory.
 *
 * The shape and parameter types (dl_act, dl_attention_shape, dl_conv2d_shape,
 * dl_groupnorm_shape, dl_adamw_hparams) are declared with the CPU reference ops, whose headers
 * are included below (backend_cpu.c fills the table from them). */
#ifndef DANLU_BACKEND_H
#define DANLU_BACKEND_H

#include "core/ctx.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/adamw.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/conv2d.h"
#include "ops/cpu/elementwise.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/groupnorm.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/linear.h"
#include "ops/cpu/lora.h"
#include "ops/cpu/loss.h"
#include "ops/cpu/softmax.h"
#include "ops/cpu/upsample.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A stream and an event of a backend (see "Streams and events" below); opaque. */
typedef struct dl_be_stream dl_be_stream;
typedef struct dl_be_event dl_be_event;

typedef struct dl_backend {
    const char *name;  /* "cpu", "cuda" */
    int device_memory; /* nonzero: tensors live in the backend's own memory, not host memory */
    unsigned weight_dtypes; /* bits 1u << DL_F16 / DL_BF16: linear/conv weights it computes from
                               in that type (see "Weights" below); 0: fp32 weights only */
    unsigned compute_dtypes; /* bits 1u << dt: compute types it takes from ctx->compute_dtype
                                besides fp32 (see "Compute type" below); 0: fp32 only */

    /* ---- the backend's state, memory and ordering --------------------------------------------
     * open: sets up ctx->be_state (device, stream, workspace) for dl_ctx_init_backend; DL_OK or
     * DL_ERR with a message. close: frees it (dl_ctx_free). NULL: the backend keeps no state.
     * Memory: alloc returns backend memory (256-byte aligned on a device, 64 on the CPU), NULL
     * with a message naming the size when there is none; contents undefined. Ops are enqueued in
     * order on the ctx's one compute stream: upload, copy and fill are ordered with them;
     * download waits for everything enqueued before it and returns with the host buffer filled.
     * A device error raised by an op is sticky: the next download or synchronize returns DL_ERR
     * with its message (the op itself returns nothing, as a kernel launch). Host code reads
     * backend memory only through download (the loss, the gradient norm, an image). */
    int (*open)(struct dl_ctx *ctx);
    void (*close)(struct dl_ctx *ctx);
    void *(*alloc)(const dl_ctx *ctx, size_t bytes);
    void (*free)(const dl_ctx *ctx, void *p);
    int (*upload)(const dl_ctx *ctx, void *dst, const void *host_src, size_t bytes);
    int (*download)(const dl_ctx *ctx, void *host_dst, const void *src, size_t bytes);
    int (*copy)(const dl_ctx *ctx, void *dst, const void *src, size_t bytes);
    int (*fill)(const dl_ctx *ctx, void *dst, int byte, size_t bytes);
    int (*synchronize)(const dl_ctx *ctx);
    /* A one-line description for progress lines: "cpu (2 threads)", "cuda: NVIDIA H100 80GB
     * HBM3, 79.1 GiB (78.6 free)", "cuda: emulated device". */
    void (*describe)(const dl_ctx *ctx, char *buf, size_t cap);
    /* Free and total bytes of the backend's memory: DL_OK, or DL_ERR when the backend cannot
     * tell (the CPU; the emulated device without DANLU_EMU_MEMORY_MIB). Used to plan a run
     * before its first step. */
    int (*mem_info)(const dl_ctx *ctx, size_t *free_bytes, size_t *total_bytes);

    /* Streams and events. The ctx's compute stream (stream argument NULL) runs every op and the
     * upload / download / copy / fill above. More streams (stream_create) carry copies beside
     * it: upload_on / download_on enqueue one on a stream and return at once. Work on one stream
     * runs in the order it was enqueued; between streams only an event orders it:
     * event_record(e, s) captures what s has enqueued so far, stream_wait(s2, e) makes what s2
     * enqueues next wait for that, event_synchronize(e) makes the host wait for it. The host
     * buffer of an upload_on must stay as it is, and that of a download_on unread, until an
     * event recorded after the copy has been waited for; from host_alloc's page-locked memory
     * such copies overlap compute on a GPU. On the emulated device a use on one stream of bytes
     * another stream wrote, with no event or synchronisation between, is an error
     * (DL_DEV_ERR_UNORDERED: sticky, surfacing at the next synchronize). The CPU backend does
     * each copy when it is enqueued, so every order holds; its streams and events are tokens.
     * Creation returns NULL with a message; destroy waits for the stream's work; record, wait
     * and synchronize return DL_OK or the (sticky) error. */
    struct dl_be_stream *(*stream_create)(const dl_ctx *ctx, const char *name);
    void (*stream_destroy)(const dl_ctx *ctx, struct dl_be_stream *s);
    struct dl_be_event *(*event_create)(const dl_ctx *ctx);
    void (*event_destroy)(const dl_ctx *ctx, struct dl_be_event *e);
    int (*event_record)(const dl_ctx *ctx, struct dl_be_event *e, struct dl_be_stream *s);
    int (*stream_wait)(const dl_ctx *ctx, struct dl_be_stream *s, struct dl_be_event *e);
    int (*event_synchronize)(const dl_ctx *ctx, struct dl_be_event *e);
    int (*upload_on)(const dl_ctx *ctx, struct dl_be_stream *s, void *dst, const void *host_src, size_t bytes);
    int (*download_on)(const dl_ctx *ctx, struct dl_be_stream *s, void *host_dst, const void *src, size_t bytes);
    /* Page-locked host memory (cudaMallocHost; plain memory on the CPU and the emulated device),
     * 64-byte aligned; NULL with a message. */
    void *(*host_alloc)(const dl_ctx *ctx, size_t bytes);
    void (*host_free)(const dl_ctx *ctx, void *p);

    /* Weights of linear and conv layers (w, and W of the LoRA entries) carry their element type
     * wdt: DL_F32 always, and the types whose bit (1u << dt) is set in weight_dtypes (frozen
     * weights kept in the checkpoint's fp16 / bf16: half the memory, no conversion at load).
     * Every other tensor is fp32. A weight gradient (dw) needs wdt == DL_F32; lora_merge and
     * lora_unmerge take fp32 weights only.
     *
     * Compute type: with ctx->compute_dtype DL_BF16 (a backend whose compute_dtypes has it), the
     * matrix products of linear_* and lora_linear_* (forward and backward, bias gradients too)
     * round their fp32 inputs to bf16 and accumulate in fp32, as torch's bf16 autocast
     * multiplies (on the GPU: tensor cores). Convolutions' forwards and input gradients convolve
     * bf16 copies of their inputs into a bf16 output widened back (autocast's conv outputs are
     * bf16; a LoCon forward that adds into its output, and weight gradients, stay fp32). The
     * attention entries take it too: the causal text-encoder attention is built from GEMMs, and
     * on a GPU of compute capability 8.0 or more the CUDA backend runs the others on its bf16
     * mma.sync kernels (inputs rounded to bf16, outputs widened back). Tensors, norms,
     * element-wise ops, losses and the optimizer stay fp32. */

    /* linear.h: y[M,out] = x[M,in] w^T + b; gradients dx, dw, db */
    void (*linear_forward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, const float *x,
                           const void *w, dl_dtype wdt, const float *b, float *y);
    void (*linear_backward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, const float *x,
                            const void *w, dl_dtype wdt, const float *dy, float *dx, float *dw, float *db);

    /* conv2d.h: channels-last convolution x [N,H,W,Cin] * w [Cout,k,k,Cin] -> y [N,Ho,Wo,Cout] */
    void (*conv2d_forward)(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                           const void *w, dl_dtype wdt, const float *b, float *y);
    void (*conv2d_backward)(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                            const void *w, dl_dtype wdt, const float *dy, float *dx, float *dw, float *db);

    /* groupnorm.h: x [N,HW,C], G groups, optional fused SiLU; saves mean, rstd [N,G] */
    void (*groupnorm_forward)(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                              const float *gamma, const float *beta, float *y, float *mean,
                              float *rstd);
    void (*groupnorm_backward)(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x,
                               const float *gamma, const float *beta, const float *mean,
                               const float *rstd, const float *dy, float *dx, float *dgamma,
                               float *dbeta);

    /* layernorm.h: rows of x [M,C]; saves mean, rstd [M] */
    void (*layernorm_forward)(const dl_ctx *ctx, int64_t M, int64_t C, float eps, const float *x,
                              const float *gamma, const float *beta, float *y, float *mean,
                              float *rstd);
    void (*layernorm_backward)(const dl_ctx *ctx, int64_t M, int64_t C, const float *x,
                               const float *gamma, const float *mean, const float *rstd,
                               const float *dy, float *dx, float *dgamma, float *dbeta);

    /* attention.h: q [N,Tq,H*d], k, v [N,Tk,H*d] -> o [N,Tq,H*d], lse [N,H,Tq] */
    void (*attention_forward)(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                              const float *k, const float *v, float *o, float *lse);
    void (*attention_backward)(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                               const float *k, const float *v, const float *o, const float *lse,
                               const float *dout, float *dq, float *dk, float *dv);

    /* activation.h: pointwise activations over n values; GEGLU x [M,2D] -> y [M,D] */
    void (*act_forward)(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, float *y);
    void (*act_backward)(const dl_ctx *ctx, dl_act act, int64_t n, const float *x,
                         const float *dy, float *dx);
    void (*geglu_forward)(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, float *y);
    void (*geglu_backward)(const dl_ctx *ctx, int64_t M, int64_t D, const float *x,
                           const float *dy, float *dx);

    /* elementwise.h: add, scale, axpy, broadcast add, channel concat / split */
    void (*add_forward)(const dl_ctx *ctx, int64_t n, const float *a, const float *b, float *y);
    void (*scale_forward)(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y);
    void (*axpy)(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y);
    void (*add_bcast_forward)(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                              const float *x, const float *v, float *y);
    void (*add_bcast_backward)(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C,
                               int per_sample, const float *dy, float *dx, float *dv);
    void (*concat_channels_forward)(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                    const float *a, const float *b, float *y);
    void (*concat_channels_backward)(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2,
                                     const float *dy, float *da, float *db);

    /* upsample.h: nearest 2x, x [N,H,W,C] -> y [N,2H,2W,C] */
    void (*upsample_nearest2x_forward)(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                       int64_t C, const float *x, float *y);
    void (*upsample_nearest2x_backward)(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W,
                                        int64_t C, const float *dy, float *dx);

    /* text-encoder input: out[n,t,:] = tok[ids[n,t],:] + pos[t,:]; ids int32 [N,T] in backend
     * memory, tok [V,C], pos [>=T,C]. The backward ADDS into dtok [V,C] and dpos [>=T,C] (a
     * scatter by token id; NULL skips), in row order (embedding.h) */
    void (*embed_tokens)(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V,
                         const int32_t *ids, const float *tok, const float *pos, float *out);
    void (*embed_tokens_backward)(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V,
                                  const int32_t *ids, const float *dout, float *dtok, float *dpos);

    /* embedding.h: sinusoidal timestep embedding t [N] -> out [N,dim] (no backward) */
    void (*timestep_embedding)(const dl_ctx *ctx, int64_t N, int64_t dim, const float *t,
                               int flip_sin_to_cos, float downscale_freq_shift, float scale,
                               float max_period, float *out);

    /* loss.h: (weighted) MSE over pred, target [N,D]; the loss is written to *loss (one float
     * in backend memory, read by the host through download when it wants it) */
    void (*mse_loss_forward)(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                             const float *target, const float *weights, float *per_sample,
                             float *loss);
    void (*mse_loss_backward)(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred,
                              const float *target, const float *weights, float dloss,
                              float *dpred, float *dtarget);

    /* adamw.h: one AdamW step over n contiguous parameters. Gradient clipping stays in backend
     * memory: sumsq writes sum x^2 to *out (one float), clip_coef turns it into torch's
     * clip_grad_norm_ coefficient min(1, max_norm / (sqrt(sumsq) + 1e-6)), scale_by multiplies
     * x by that device scalar. The host reads the norm only to log it. */
    void (*adamw_step)(const dl_ctx *ctx, int64_t n, const dl_adamw_hparams *hp, int64_t step,
                       float *p, const float *g, float *m, float *v);
    void (*sumsq)(const dl_ctx *ctx, int64_t n, const float *x, float *out);
    void (*clip_coef)(const dl_ctx *ctx, const float *sumsq, float max_norm, float *coef);
    void (*scale_by)(const dl_ctx *ctx, int64_t n, const float *coef, float *x);


    /* lora.h: LoRA on a frozen linear / kxk conv (LoCon), and merge / unmerge into W */
    void (*lora_linear_forward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                float s, const float *x, const void *W, dl_dtype wdt, const float *b,
                                const float *A, const float *B, float *h, float *y);
    void (*lora_linear_backward)(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r,
                                 float s, const float *x, const void *W, dl_dtype wdt, const float *A,
                                 const float *B, const float *h, const float *dy, float *dh,
                                 float *dx, float *dA, float *dB);
    void (*lora_conv_forward)(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                              const float *x, const void *W, dl_dtype wdt, const float *b, const float *A,
                              const float *B, float *h, float *y);
    void (*lora_conv_backward)(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale,
                               const float *x, const void *W, dl_dtype wdt, const float *A, const float *B,
                               const float *h, const float *dy, float *dh, float *dx_scratch,
                               float *dx, float *dA, float *dB);
    void (*lora_merge)(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                       const float *A, const float *B, float *W);
    void (*lora_unmerge)(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s,
                         const float *A, const float *B, float *W);
} dl_backend;

/* The CPU reference backend (backend_cpu.c): every entry is the dl_cpu_ op of the same name. */
extern const dl_backend dl_backend_cpu;
/* The CUDA backend (backend_cuda.c, in the danlu_device library) over the device layer
 * (device/dl_dev.h), present in every build: open picks the real GPU, or the emulated device
 * when built with -DDANLU_CUDA_DEVICE=emulated or without a GPU build; DANLU_CUDA_DEVICE=real or
 * emulated in the environment overrides the build's choice. fp32 tensors. */
extern const dl_backend dl_backend_cuda;
/* Times the CUDA backend state of ctx grew a scratch buffer since open (0 for another backend):
 * constant once every op has run at its largest shape. */
size_t dl_backend_cuda_grows(const dl_ctx *ctx);

/* Checks that ctx's backend has no pending error (the sticky error of a device backend);
 * DL_OK, or DL_ERR with the message. Synchronises. */
int dl_be_sync(const dl_ctx *ctx);
/* Backend memory helpers over the table (ctx's backend): */
void *dl_be_alloc(const dl_ctx *ctx, size_t bytes);
void dl_be_free(const dl_ctx *ctx, void *p);
int dl_be_upload(const dl_ctx *ctx, void *dst, const void *host_src, size_t bytes);
int dl_be_download(const dl_ctx *ctx, void *host_dst, const void *src, size_t bytes);
/* ctx's compute type from sd-scripts' mixed_precision value: "no" / "fp32" (or NULL) fp32, "bf16"
 * the bf16 compute type where ctx's backend lists it in compute_dtypes. DL_ERR naming the value
 * and the backend otherwise. */
int dl_be_set_precision(dl_ctx *ctx, const char *mixed_precision);
/* One float read back (the loss, a norm): waits for the stream. NAN with a message on error. */
float dl_be_read_f32(const dl_ctx *ctx, const float *src);

/* Host arrays crossing into and out of a network run on ctx's backend (the data boundary of
 * sampling and `danlu run`): on the CPU the host arrays themselves; on a device backend copies
 * in backend buffers, one per slot, grown on demand and kept for the next call. Begin with
 * {.ctx = ctx} and end with dl_be_stage_free. */
#define DL_BE_STAGE_SLOTS 8
typedef struct dl_be_stage {
    const dl_ctx *ctx;
    void *buf[DL_BE_STAGE_SLOTS];
    size_t cap[DL_BE_STAGE_SLOTS];
    void *out[DL_BE_STAGE_SLOTS];      /* host destinations of pending outputs */
    size_t out_bytes[DL_BE_STAGE_SLOTS];
} dl_be_stage;
/* The backend's copy of host input x (bytes) in slot: x itself on the CPU (or when x is NULL),
 * else uploaded; NULL with a message on error. */
const void *dl_be_stage_in(dl_be_stage *st, int slot, const void *x, size_t bytes);
/* Where a network writes host output y (bytes): y itself on the CPU, else slot's buffer, which
 * dl_be_stage_fetch downloads into y. NULL with a message on error. */
void *dl_be_stage_out(dl_be_stage *st, int slot, void *y, size_t bytes);
/* Waits for the backend and downloads every pending output: DL_OK, or DL_ERR with the
 * backend's error. */
int dl_be_stage_fetch(dl_be_stage *st);
void dl_be_stage_free(dl_be_stage *st);

/* The backend named `name`: "cpu", "cuda" (found in every build; whether a GPU is there is
 * known at open), or "auto" (cuda when a real GPU is usable, cpu otherwise; never the emulated
 * device); NULL with dl_error_set naming an unknown name. */
const dl_backend *dl_backend_find(const char *name);

/* dl_be(ctx), the table that runs ops on ctx (CPU when ctx or ctx->be is NULL), is declared
 * in core/ctx.h. */

#ifdef __cplusplus
}
#endif
#endif
