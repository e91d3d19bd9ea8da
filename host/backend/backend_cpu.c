/* backend_cpu.c - the CPU backend's op table (the dl_cpu_ reference ops) and backend lookup
 * (the CUDA table lives in danlu_device, which danlu_host links). */
#include "backend/backend.h"
#include "core/error.h"
#include "device/dl_dev.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- memory: host memory; ops run on the calling thread, so there is nothing to wait for ---- */
static void *cpu_alloc(const dl_ctx *ctx, size_t bytes)
{
    (void)ctx;
    void *p = aligned_alloc(64, bytes ? (bytes + 63) / 64 * 64 : 64);
    if (!p) dl_error_set("cpu backend: out of memory (%zu bytes)", bytes);
    return p;
}
static void cpu_free(const dl_ctx *ctx, void *p) { (void)ctx; free(p); }
static int cpu_copy(const dl_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (bytes) memmove(dst, src, bytes);
    return DL_OK;
}
static int cpu_fill(const dl_ctx *ctx, void *dst, int byte, size_t bytes)
{
    (void)ctx;
    if (bytes) memset(dst, byte, bytes);
    return DL_OK;
}
static int cpu_sync(const dl_ctx *ctx) { (void)ctx; return DL_OK; }
static int cpu_mem_info(const dl_ctx *ctx, size_t *free_bytes, size_t *total_bytes)
{
    (void)ctx;
    *free_bytes = *total_bytes = 0;
    return dl_error_set("cpu backend: host memory is not planned (the arenas report what they cannot reserve)");
}
static void cpu_describe(const dl_ctx *ctx, char *buf, size_t cap)
{
    snprintf(buf, cap, "cpu (%d threads)", ctx && ctx->pool ? dl_pool_nthreads(ctx->pool) : 1);
}

/* Streams and events: every copy is done when it is enqueued, so any order holds; a stream or an
 * event is a token (a distinct non-NULL address per object). */
static dl_be_stream *cpu_stream_create(const dl_ctx *ctx, const char *name)
{
    (void)ctx, (void)name;
    dl_be_stream *s = malloc(1);
    if (!s) dl_error_set("cpu backend: out of memory for a stream");
    return s;
}
static void cpu_stream_destroy(const dl_ctx *ctx, dl_be_stream *s) { (void)ctx; free(s); }
static dl_be_event *cpu_event_create(const dl_ctx *ctx)
{
    (void)ctx;
    dl_be_event *e = malloc(1);
    if (!e) dl_error_set("cpu backend: out of memory for an event");
    return e;
}
static void cpu_event_destroy(const dl_ctx *ctx, dl_be_event *e) { (void)ctx; free(e); }
static int cpu_event_record(const dl_ctx *ctx, dl_be_event *e, dl_be_stream *s) { (void)ctx, (void)e, (void)s; return DL_OK; }
static int cpu_stream_wait(const dl_ctx *ctx, dl_be_stream *s, dl_be_event *e) { (void)ctx, (void)e, (void)s; return DL_OK; }
static int cpu_event_sync(const dl_ctx *ctx, dl_be_event *e) { (void)ctx, (void)e; return DL_OK; }
static int cpu_copy_on(const dl_ctx *ctx, dl_be_stream *s, void *dst, const void *src, size_t bytes)
{
    (void)s;
    return cpu_copy(ctx, dst, src, bytes);
}

/* ---- the entries whose result stays in backend memory ---- */
static void cpu_mse_loss_forward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred, const float *target,
                                 const float *weights, float *per_sample, float *loss)
{
    *loss = (float)dl_cpu_mse_loss_forward(ctx, N, D, pred, target, weights, per_sample);
}
static void cpu_sumsq(const dl_ctx *ctx, int64_t n, const float *x, float *out) { *out = (float)dl_cpu_sumsq(ctx, n, x); }
static void cpu_clip_coef(const dl_ctx *ctx, const float *sumsq, float max_norm, float *coef)
{
    (void)ctx;
    const float c = max_norm / (sqrtf(*sumsq) + 1e-6f);
    *coef = c < 1.0f ? c : 1.0f;
}
static void cpu_scale_by(const dl_ctx *ctx, int64_t n, const float *coef, float *x)
{
    const float c = *coef;
    if (c != 1.0f) dl_cpu_scale_forward(ctx, n, c, x, x);
}

const dl_backend dl_backend_cpu = {
    .name = "cpu",
    .weight_dtypes = (1u << DL_F16) | (1u << DL_BF16),
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .synchronize = cpu_sync,
    .describe = cpu_describe,
    .mem_info = cpu_mem_info,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .event_create = cpu_event_create,
    .event_destroy = cpu_event_destroy,
    .event_record = cpu_event_record,
    .stream_wait = cpu_stream_wait,
    .event_synchronize = cpu_event_sync,
    .upload_on = cpu_copy_on,
    .download_on = cpu_copy_on,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .embed_tokens = dl_cpu_embed_tokens,
    .embed_tokens_backward = dl_cpu_embed_tokens_backward,
    .linear_forward = dl_cpu_linear_forward_t,
    .linear_backward = dl_cpu_linear_backward_t,
    .conv2d_forward = dl_cpu_conv2d_forward_t,
    .conv2d_backward = dl_cpu_conv2d_backward_t,
    .groupnorm_forward = dl_cpu_groupnorm_forward,
    .groupnorm_backward = dl_cpu_groupnorm_backward,
    .layernorm_forward = dl_cpu_layernorm_forward,
    .layernorm_backward = dl_cpu_layernorm_backward,
    .attention_forward = dl_cpu_attention_forward,
    .attention_backward = dl_cpu_attention_backward,
    .act_forward = dl_cpu_act_forward,
    .act_backward = dl_cpu_act_backward,
    .geglu_forward = dl_cpu_geglu_forward,
    .geglu_backward = dl_cpu_geglu_backward,
    .add_forward = dl_cpu_add_forward,
    .scale_forward = dl_cpu_scale_forward,
    .axpy = dl_cpu_axpy,
    .add_bcast_forward = dl_cpu_add_bcast_forward,
    .add_bcast_backward = dl_cpu_add_bcast_backward,
    .concat_channels_forward = dl_cpu_concat_channels_forward,
    .concat_channels_backward = dl_cpu_concat_channels_backward,
    .upsample_nearest2x_forward = dl_cpu_upsample_nearest2x_forward,
    .upsample_nearest2x_backward = dl_cpu_upsample_nearest2x_backward,
    .timestep_embedding = dl_cpu_timestep_embedding,
    .lora_linear_forward = dl_cpu_lora_linear_forward_t,
    .lora_linear_backward = dl_cpu_lora_linear_backward_t,
    .lora_conv_forward = dl_cpu_lora_conv_forward_t,
    .lora_conv_backward = dl_cpu_lora_conv_backward_t,
    .lora_merge = dl_cpu_lora_merge,
    .lora_unmerge = dl_cpu_lora_unmerge,
    .mse_loss_forward = cpu_mse_loss_forward,
    .mse_loss_backward = dl_cpu_mse_loss_backward,
    .adamw_step = dl_cpu_adamw_step,
    .sumsq = cpu_sumsq,
    .clip_coef = cpu_clip_coef,
    .scale_by = cpu_scale_by,
};

const dl_backend *dl_backend_find(const char *name)
{
    if (name && strcmp(name, "cpu") == 0) return &dl_backend_cpu;
    if (name && strcmp(name, "cuda") == 0) return &dl_backend_cuda;
    if (name && strcmp(name, "auto") == 0) { /* a real GPU when one is usable; never the emulated device */
        const char *env = getenv("DANLU_CUDA_DEVICE");
        const int emulated = env && strcmp(env, "emulated") == 0;
        return !emulated && dl_dev_available(DL_DEV_REAL) ? &dl_backend_cuda : &dl_backend_cpu;
    }
    dl_error_set("unknown backend \"%s\" (known: auto, cpu, cuda)", name ? name : "(null)");
    return NULL;
}

/* ---- helpers over the table ---- */
int dl_be_sync(const dl_ctx *ctx) { return dl_be(ctx)->synchronize(ctx); }
void *dl_be_alloc(const dl_ctx *ctx, size_t bytes) { return dl_be(ctx)->alloc(ctx, bytes); }
void dl_be_free(const dl_ctx *ctx, void *p)
{
    if (p) dl_be(ctx)->free(ctx, p);
}
int dl_be_upload(const dl_ctx *ctx, void *dst, const void *host_src, size_t bytes)
{
    return dl_be(ctx)->upload(ctx, dst, host_src, bytes);
}
int dl_be_download(const dl_ctx *ctx, void *host_dst, const void *src, size_t bytes)
{
    return dl_be(ctx)->download(ctx, host_dst, src, bytes);
}
int dl_be_set_precision(dl_ctx *ctx, const char *mp)
{
    const dl_backend *be = dl_be(ctx);
    if (!mp || !strcmp(mp, "no") || !strcmp(mp, "fp32")) {
        ctx->compute_dtype = DL_F32;
        return DL_OK;
    }
    if (strcmp(mp, "bf16") != 0)
        return dl_error_set("mixed_precision %s: not available (no, fp32 or bf16)", mp);
    if (!(be->compute_dtypes & (1u << DL_BF16)))
        return dl_error_set("mixed_precision bf16: the %s backend multiplies in fp32 only (bf16 runs on --backend "
                            "cuda)", be->name);
    ctx->compute_dtype = DL_BF16;
    return DL_OK;
}
float dl_be_read_f32(const dl_ctx *ctx, const float *src)
{
    float v;
    return dl_be_download(ctx, &v, src, sizeof v) == DL_OK ? v : NAN;
}

/* ---- staging at the data boundary ---- */
static void *stage_buf(dl_be_stage *st, int slot, size_t bytes)
{
    DL_ASSERT(slot >= 0 && slot < DL_BE_STAGE_SLOTS);
    st->out[slot] = NULL;
    if (st->buf[slot] && st->cap[slot] >= bytes) return st->buf[slot];
    dl_be_free(st->ctx, st->buf[slot]);
    st->cap[slot] = 0;
    if (!(st->buf[slot] = dl_be_alloc(st->ctx, bytes ? bytes : 1))) return NULL;
    st->cap[slot] = bytes;
    return st->buf[slot];
}

const void *dl_be_stage_in(dl_be_stage *st, int slot, const void *x, size_t bytes)
{
    if (!x || !dl_be(st->ctx)->device_memory) return x;
    void *d = stage_buf(st, slot, bytes);
    return d && dl_be_upload(st->ctx, d, x, bytes) == DL_OK ? d : NULL;
}

void *dl_be_stage_out(dl_be_stage *st, int slot, void *y, size_t bytes)
{
    if (!y || !dl_be(st->ctx)->device_memory) return y;
    void *d = stage_buf(st, slot, bytes);
    if (d) st->out[slot] = y, st->out_bytes[slot] = bytes;
    return d;
}

int dl_be_stage_fetch(dl_be_stage *st)
{
    int rc = dl_be_sync(st->ctx);
    for (int i = 0; i < DL_BE_STAGE_SLOTS; i++) {
        if (rc == DL_OK && st->out[i]) rc = dl_be_download(st->ctx, st->out[i], st->buf[i], st->out_bytes[i]);
        st->out[i] = NULL;
    }
    return rc;
}

void dl_be_stage_free(dl_be_stage *st)
{
    for (int i = 0; i < DL_BE_STAGE_SLOTS; i++) dl_be_free(st->ctx, st->buf[i]);
    memset(st->buf, 0, sizeof st->buf);
    memset(st->cap, 0, sizeof st->cap);
    memset(st->out, 0, sizeof st->out);
}
