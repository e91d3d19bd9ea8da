/* backend_cuda.c - the CUDA backend's op table over the device layer (device/dl_dev.h): every
 * entry of backend.h on device memory, fp32 tensors, one compute stream per ctx (and the
 * streams and events the table hands out, for copies beside it).
 *
 * Paths (docs/device.md):
 *   - GEMMs (linear, LoRA, merge, bias gradients as dyᵀ·1, the attention fallback) are
 *     dl_dev_gemm (cuBLASLt) with the row-major operands swapped; the linear forward's bias is
 *     the GEMM's bias epilogue.
 *   - Convolutions are dl_dev_conv_* (cuDNN, NHWC / KRSC = danlu's [Cout, k, k, Cin]); padding
 *     that differs between opposite sides (the VAE's downsample) goes through dl_dev_pad2d into
 *     scratch and an unpadded convolution; the conv bias is dl_dev_add_bcast_forward.
 *   - Attention: danlu's kernels when not causal and d is 40, 64, 80 or 160; otherwise per
 *     sample S = Q·Kᵀ (batched over heads), dl_dev_softmax_forward (scale, causal mask,
 *     logsumexp), O = P·V, and the matching backward.
 *   - Everything else is the device kernel of the same name (dl_dev.h, last section).
 *
 * State (ctx->be_state): the device, the stream, a GEMM workspace, a ones vector and scratch
 * buffers that grow only when a call needs more than they hold (the steady state allocates
 * nothing; dl_backend_cuda_grows counts growths). An op that gets a device error records the
 * first message and enqueues nothing more: synchronize and download return it (sticky, like a
 * CUDA context error), and so do upload, copy and fill. */
#include "backend/backend.h"
#include "core/error.h"
#include "device/dl_dev.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Scratch slots: one buffer per (op, use); an op and what it calls use distinct slots. */
enum {
    SC_PAD_X,     /* conv: x padded for an asymmetric padding [N, H+t+b, W+l+r, Cin] */
    SC_PAD_DX,    /* conv backward: dx of the padded input, cropped into dx */
    SC_CONV_WS,   /* conv: the algorithm's workspace */
    SC_GN_WS,     /* groupnorm: the kernels' workspace */
    SC_STATS,     /* mean/rstd (groupnorm) or lse (attention) the caller did not ask for */
    SC_DELTA,     /* attention kernel backward: rowwise dO·O [N, H, Tq] */
    SC_ATTN_P,    /* attention fallback: S then P [H, Tq, Tk] of one sample */
    SC_ATTN_DP,   /* attention fallback backward: dP then dS [H, Tq, Tk] */
    SC_ATTN_BF16, /* attention on sm_80+: bf16 copies of q, k, v, o, dout and dq, dk, dv */
    SC_WEIGHT,    /* an fp16 / bf16 layer weight widened to fp32 for the op that reads it */
    SC_N
};

#define CONV_MEMO 256 /* convolution shapes whose algorithm is remembered (SD1.5 training: ~120) */

typedef struct cu_buf {
    void *p;
    size_t cap;
} cu_buf;

typedef struct cu_state {
    dl_dev *dev;
    dl_dev_stream *s;   /* the compute stream: every op, upload, copy and fill */
    void *gemm_ws;      /* DL_DEV_GEMM_WORKSPACE bytes */
    cu_buf ones;        /* fp32 ones, for bias gradients as a GEMM */
    cu_buf sc[SC_N];
    struct conv_memo {  /* the algorithm cuDNN's heuristic picked per (direction, shape) */
        int key[17], algo;
        size_t ws;
    } memo[CONV_MEMO];
    int n_memo;
    size_t grows;       /* scratch / ones growths since open */
    int failed;         /* sticky error */
    char err[1024];
    dl_dtype compute;   /* the calling ctx's compute_dtype (set by ST at every entry): GEMMs' type */
} cu_state;

static cu_state *ST(const dl_ctx *ctx)
{
    DL_ASSERTF(ctx && ctx->be_state, "cuda backend: ctx has no backend state (not opened with "
                                     "dl_ctx_init_backend, or the open failed)");
    cu_state *st = ctx->be_state;
    st->compute = ctx->compute_dtype == DL_BF16 ? DL_BF16 : DL_F32;
    return st;
}

/* Records the first device error of an op (its name and dl_error_msg()); 1 if rc failed. */
static int chk(cu_state *st, const char *entry, dl_dev_status rc)
{
    if (rc == DL_DEV_SUCCESS) return 0;
    if (!st->failed) {
        st->failed = 1;
        snprintf(st->err, sizeof st->err, "cuda backend: %s: %s", entry, dl_error_msg());
    }
    return 1;
}
/* DL_ERR with the sticky message when an earlier op failed, else DL_OK. */
static int sticky(const cu_state *st)
{
    return st->failed ? dl_error_set("%s", st->err) : DL_OK;
}

/* ---- scratch ---------------------------------------------------------------------------------- */
/* At least `bytes` of device memory in slot b (contents undefined); NULL (sticky error) when the
 * device has none. Grows only when asked for more than it holds. */
static void *grow(cu_state *st, const char *entry, cu_buf *b, size_t bytes)
{
    if (st->failed) return NULL;
    if (bytes <= b->cap && b->p) return b->p;
    const size_t want = (bytes + 255) / 256 * 256;
    if (b->p) chk(st, entry, dl_dev_free(st->dev, b->p));
    b->p = NULL;
    b->cap = 0;
    if (chk(st, entry, dl_dev_malloc(st->dev, &b->p, want ? want : 256))) return NULL;
    b->cap = want ? want : 256;
    st->grows++;
    return b->p;
}
static void *scratch(cu_state *st, const char *entry, int slot, size_t bytes)
{
    return grow(st, entry, &st->sc[slot], bytes);
}

/* The fp32 weight of n values an op computes from: w itself, or an fp16 / bf16 weight (kept in
 * the checkpoint's type: half the device memory) widened exactly into scratch. NULL after a
 * failure (the sticky error is set). */
static const float *weight_f32(cu_state *st, const char *entry, const void *w, dl_dtype wdt, int64_t n)
{
    if (wdt == DL_F32) return w;
    float *f = scratch(st, entry, SC_WEIGHT, (size_t)n * sizeof(float));
    if (!f || chk(st, entry, dl_dev_to_f32(st->dev, st->s, wdt, n, w, f))) return NULL;
    return f;
}

/* n fp32 ones (grown and refilled when n outgrows them). */
static const float *ones(cu_state *st, const char *entry, int64_t n)
{
    const size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    if (st->ones.p && bytes <= st->ones.cap) return st->ones.p;
    if (!grow(st, entry, &st->ones, bytes)) return NULL;
    const size_t cnt = st->ones.cap / sizeof(float);
    float *h = malloc(st->ones.cap);
    if (!h) {
        if (!st->failed) {
            st->failed = 1;
            snprintf(st->err, sizeof st->err, "cuda backend: %s: out of host memory for %zu ones", entry, cnt);
        }
        return NULL;
    }
    for (size_t i = 0; i < cnt; i++) h[i] = 1.0f;
    int bad = chk(st, entry, dl_dev_memcpy_h2d(st->dev, st->ones.p, h, st->ones.cap, st->s)) ||
              chk(st, entry, dl_dev_stream_synchronize(st->dev, st->s)); /* h is freed below */
    free(h);
    return bad ? NULL : st->ones.p;
}

/* ---- GEMM in row-major terms ------------------------------------------------------------------
 * C[M, N] = alpha · op(A) · op(B) + beta · C (+ bias[N] on every row), the arguments of dl_sgemm
 * (ta: A stored [K, M] with row stride lda, else [M, K]; tb: B stored [N, K], else [K, N]), batch
 * matrices at element strides sa, sb, sc. cuBLASLt is column-major: it computes
 * Cᵀ = op(B)ᵀ · op(A)ᵀ, i.e. m = N, n = M with the operands swapped. */
typedef struct rm_batch {
    int count;
    int64_t sa, sb, sc;
} rm_batch;
static void rm_gemm_b(cu_state *st, const char *entry, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                      const float *bias, rm_batch bt)
{
    if (st->failed || M <= 0 || N <= 0 || bt.count <= 0) return;
    if (K == 0) { /* cuBLASLt takes no empty reduction: C = beta·C (+ bias) by hand */
        DL_ASSERTF(beta == 0.0f && !bias, "cuda backend: %s: empty GEMM reduction with beta %g", entry, beta);
        for (int b = 0; b < bt.count; b++)
            for (int64_t i = 0; i < M; i++)
                if (chk(st, entry, dl_dev_memset(st->dev, C + b * bt.sc + i * ldc, 0, (size_t)N * sizeof(float), st->s)))
                    return;
        return;
    }
    dl_dev_gemm_desc g = {
        .transa = tb ? DL_DEV_OP_T : DL_DEV_OP_N,
        .transb = ta ? DL_DEV_OP_T : DL_DEV_OP_N,
        .m = N, .n = M, .k = K,
        .ab_type = DL_F32, .c_type = DL_F32,
        .lda = ldb, .ldb = lda, .ldc = ldc,
        .batch = bt.count, .stride_a = bt.sb, .stride_b = bt.sa, .stride_c = bt.sc,
        .epilogue = bias ? DL_DEV_EPI_BIAS : DL_DEV_EPI_DEFAULT,
        .bias = bias,
        .compute = st->compute,
    };
    chk(st, entry, dl_dev_gemm(st->dev, st->s, &g, alpha, B, A, beta, C, st->gemm_ws, DL_DEV_GEMM_WORKSPACE));
}
static void rm_gemm(cu_state *st, const char *entry, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    rm_gemm_b(st, entry, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, (rm_batch){1, 0, 0, 0});
}
/* db[C] = sum over the M rows of dy [M, C]: onesᵀ · dy */
static void bias_grad(cu_state *st, const char *entry, int64_t M, int64_t C, const float *dy, float *db)
{
    const float *one = M > 0 ? ones(st, entry, M) : NULL;
    if (M > 0 && !one) return;
    rm_gemm(st, entry, 0, 0, 1, C, M, 1.0f, one, M, dy, C, 0.0f, db, C);
}

/* ---- memory and ordering ---------------------------------------------------------------------- */
static void cu_close(dl_ctx *ctx)
{
    cu_state *st = ctx->be_state;
    if (!st) return;
    if (st->dev) {
        if (st->s) dl_dev_stream_synchronize(st->dev, st->s);
        for (int i = 0; i < SC_N; i++) dl_dev_free(st->dev, st->sc[i].p);
        dl_dev_free(st->dev, st->ones.p);
        dl_dev_free(st->dev, st->gemm_ws);
        dl_dev_stream_destroy(st->dev, st->s);
        dl_dev_close(st->dev);
    }
    free(st);
    ctx->be_state = NULL;
}

static int cu_open(dl_ctx *ctx)
{
    dl_dev_kind kind = dl_dev_default_kind();
    const char *env = getenv("DANLU_CUDA_DEVICE");
    if (env && *env) {
        if (strcmp(env, "emulated") == 0) kind = DL_DEV_EMULATED;
        else if (strcmp(env, "real") == 0) kind = DL_DEV_REAL;
        else return dl_error_set("cuda backend: DANLU_CUDA_DEVICE is '%s' (expected 'real' or 'emulated')", env);
    }
    cu_state *st = calloc(1, sizeof *st);
    if (!st) return dl_error_set("cuda backend: out of host memory for the backend state");
    ctx->be_state = st;
    st->dev = dl_dev_open(kind);
    if (!st->dev) {
        dl_error_prefix("cuda backend: opening the %s device: ", kind == DL_DEV_REAL ? "real" : "emulated");
        cu_close(ctx);
        return DL_ERR;
    }
    if (dl_dev_stream_create(st->dev, &st->s, "compute") != DL_DEV_SUCCESS ||
        dl_dev_malloc(st->dev, &st->gemm_ws, DL_DEV_GEMM_WORKSPACE) != DL_DEV_SUCCESS) {
        dl_error_prefix("cuda backend: setting up %s: ", dl_dev_name(st->dev));
        cu_close(ctx);
        return DL_ERR;
    }
    return DL_OK;
}

static void *cu_alloc(const dl_ctx *ctx, size_t bytes)
{
    cu_state *st = ST(ctx);
    void *p = NULL;
    if (dl_dev_malloc(st->dev, &p, bytes ? bytes : 1) != DL_DEV_SUCCESS) {
        dl_error_prefix("cuda backend: cannot allocate %zu bytes on %s: ", bytes, dl_dev_name(st->dev));
        return NULL;
    }
    return p;
}
static void cu_free(const dl_ctx *ctx, void *p)
{
    cu_state *st = ST(ctx);
    chk(st, "free", dl_dev_free(st->dev, p));
}
static int cu_upload(const dl_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    if (bytes && chk(st, "upload", dl_dev_memcpy_h2d(st->dev, dst, src, bytes, st->s))) return sticky(st);
    return DL_OK;
}
static int cu_download(const dl_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    if (bytes) chk(st, "download", dl_dev_memcpy_d2h(st->dev, dst, src, bytes, st->s));
    if (!st->failed) chk(st, "download", dl_dev_stream_synchronize(st->dev, st->s));
    return sticky(st);
}
static int cu_copy(const dl_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    if (bytes && dst != src) chk(st, "copy", dl_dev_memcpy_d2d(st->dev, dst, src, bytes, st->s));
    return sticky(st);
}
static int cu_fill(const dl_ctx *ctx, void *dst, int byte, size_t bytes)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    if (bytes) chk(st, "fill", dl_dev_memset(st->dev, dst, byte, bytes, st->s));
    return sticky(st);
}
static int cu_sync(const dl_ctx *ctx)
{
    cu_state *st = ST(ctx);
    if (!st->failed) chk(st, "synchronize", dl_dev_stream_synchronize(st->dev, st->s));
    return sticky(st);
}
/* Streams and events are the device layer's; NULL is the compute stream. */
static dl_dev_stream *dev_stream(const cu_state *st, dl_be_stream *s) { return s ? (dl_dev_stream *)s : st->s; }
static dl_be_stream *cu_stream_create(const dl_ctx *ctx, const char *name)
{
    cu_state *st = ST(ctx);
    dl_dev_stream *s = NULL;
    if (dl_dev_stream_create(st->dev, &s, name) != DL_DEV_SUCCESS) {
        dl_error_prefix("cuda backend: creating stream '%s': ", name ? name : "");
        return NULL;
    }
    return (dl_be_stream *)s;
}
static void cu_stream_destroy(const dl_ctx *ctx, dl_be_stream *s)
{
    cu_state *st = ST(ctx);
    if (!s) return;
    chk(st, "stream_destroy", dl_dev_stream_synchronize(st->dev, (dl_dev_stream *)s));
    chk(st, "stream_destroy", dl_dev_stream_destroy(st->dev, (dl_dev_stream *)s));
}
static dl_be_event *cu_event_create(const dl_ctx *ctx)
{
    cu_state *st = ST(ctx);
    dl_dev_event *e = NULL;
    if (dl_dev_event_create(st->dev, &e) != DL_DEV_SUCCESS) {
        dl_error_prefix("cuda backend: creating an event: ");
        return NULL;
    }
    return (dl_be_event *)e;
}
static void cu_event_destroy(const dl_ctx *ctx, dl_be_event *e)
{
    cu_state *st = ST(ctx);
    if (e) chk(st, "event_destroy", dl_dev_event_destroy(st->dev, (dl_dev_event *)e));
}
static int cu_event_record(const dl_ctx *ctx, dl_be_event *e, dl_be_stream *s)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    chk(st, "event_record", dl_dev_event_record(st->dev, (dl_dev_event *)e, dev_stream(st, s)));
    return sticky(st);
}
static int cu_stream_wait(const dl_ctx *ctx, dl_be_stream *s, dl_be_event *e)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    chk(st, "stream_wait", dl_dev_stream_wait_event(st->dev, dev_stream(st, s), (dl_dev_event *)e));
    return sticky(st);
}
static int cu_event_sync(const dl_ctx *ctx, dl_be_event *e)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    chk(st, "event_synchronize", dl_dev_event_synchronize(st->dev, (dl_dev_event *)e));
    return sticky(st);
}
static int cu_upload_on(const dl_ctx *ctx, dl_be_stream *s, void *dst, const void *src, size_t bytes)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    if (bytes) chk(st, "upload_on", dl_dev_memcpy_h2d(st->dev, dst, src, bytes, dev_stream(st, s)));
    return sticky(st);
}
static int cu_download_on(const dl_ctx *ctx, dl_be_stream *s, void *dst, const void *src, size_t bytes)
{
    cu_state *st = ST(ctx);
    DL_TRY(sticky(st));
    if (bytes) chk(st, "download_on", dl_dev_memcpy_d2h(st->dev, dst, src, bytes, dev_stream(st, s)));
    return sticky(st);
}
static void *cu_host_alloc(const dl_ctx *ctx, size_t bytes)
{
    cu_state *st = ST(ctx);
    void *p = NULL;
    if (dl_dev_host_alloc(st->dev, &p, bytes) != DL_DEV_SUCCESS) {
        dl_error_prefix("cuda backend: cannot allocate %zu bytes of page-locked host memory: ", bytes);
        return NULL;
    }
    return p;
}
static void cu_host_free(const dl_ctx *ctx, void *p)
{
    cu_state *st = ST(ctx);
    chk(st, "host_free", dl_dev_host_free(st->dev, p));
}

static int cu_mem_info(const dl_ctx *ctx, size_t *free_bytes, size_t *total_bytes)
{
    cu_state *st = ST(ctx);
    if (dl_dev_mem_info(st->dev, free_bytes, total_bytes) != DL_DEV_SUCCESS)
        return dl_error_prefix("cuda backend: %s: ", dl_dev_name(st->dev));
    return DL_OK;
}

static void cu_describe(const dl_ctx *ctx, char *buf, size_t cap)
{
    const cu_state *st = ctx ? ctx->be_state : NULL;
    size_t fr = 0, tot = 0;
    if (!st || !st->dev) snprintf(buf, cap, "cuda: not open");
    else if (dl_dev_kind_of(st->dev) == DL_DEV_EMULATED) snprintf(buf, cap, "cuda: emulated device");
    else if (dl_dev_mem_info(st->dev, &fr, &tot) == DL_DEV_SUCCESS)
        snprintf(buf, cap, "cuda: %s, %.1f GiB (%.1f free)", dl_dev_name(st->dev), tot / 1073741824.0,
                 fr / 1073741824.0);
    else snprintf(buf, cap, "cuda: %s", dl_dev_name(st->dev));
}

/* ---- linear ------------------------------------------------------------------------------------ */
static void cu_linear_forward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, const float *x, const void *wv,
                              dl_dtype wdt, const float *b, float *y)
{
    cu_state *st = ST(ctx);
    const float *w = weight_f32(st, "linear_forward", wv, wdt, in * out);
    if (!w) return;
    // y [M, out] = x [M, in] · w [out, in]ᵀ + b (bias epilogue)
    rm_gemm_b(st, "linear_forward", 0, 1, M, out, in, 1.0f, x, in, w, in, 0.0f, y, out, b, (rm_batch){1, 0, 0, 0});
}
static void cu_linear_backward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, const float *x, const void *wv,
                               dl_dtype wdt, const float *dy, float *dx, float *dw, float *db)
{
    cu_state *st = ST(ctx);
    const char *e = "linear_backward";
    const float *w = dx ? weight_f32(st, e, wv, wdt, in * out) : NULL;
    if (dx && !w) return;
    if (dx) rm_gemm(st, e, 0, 0, M, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in); // dx [M, in] = dy · w
    if (dw) rm_gemm(st, e, 1, 0, out, in, M, 1.0f, dy, out, x, in, 0.0f, dw, in); // dw [out, in] = dyᵀ · x
    if (db) bias_grad(st, e, M, out, dy, db);                                     // db [out] = dyᵀ · 1
}

/* ---- convolution -------------------------------------------------------------------------------- */
static int conv_symmetric(const dl_conv2d_shape *s)
{
    return s->pad_top == s->pad_bottom && s->pad_left == s->pad_right;
}
/* The cuDNN view of a convolution: x as cuDNN sees it (padded into SC_PAD_X when the padding is
 * asymmetric and pad_x is set), the filter of cout outputs, symmetric padding, y. */
typedef struct conv_view {
    dl_dev_tensor_desc xd, yd;
    dl_dev_filter_desc wd;
    dl_dev_conv_desc cd;
    int padded; /* asymmetric: x lives padded in scratch */
} conv_view;
static conv_view conv_make(const dl_conv2d_shape *s, int cout)
{
    conv_view v;
    v.padded = !conv_symmetric(s);
    const int Hp = s->H + (v.padded ? s->pad_top + s->pad_bottom : 0);
    const int Wp = s->W + (v.padded ? s->pad_left + s->pad_right : 0);
    v.xd = (dl_dev_tensor_desc){DL_F32, s->N, s->Cin, Hp, Wp};
    v.wd = (dl_dev_filter_desc){DL_F32, cout, s->Cin, s->k, s->k};
    v.cd = (dl_dev_conv_desc){v.padded ? 0 : s->pad_top, v.padded ? 0 : s->pad_left, s->stride, s->stride, 1, 1};
    v.yd = (dl_dev_tensor_desc){DL_F32, s->N, cout, dl_conv2d_out_h(s), dl_conv2d_out_w(s)};
    return v;
}
static size_t conv_x_elems(const conv_view *v) { return (size_t)v->xd.n * v->xd.h * v->xd.w * v->xd.c; }
/* x as the convolution reads it: x itself, or padded into SC_PAD_X. NULL on a sticky error. */
static const float *conv_input(cu_state *st, const char *e, const dl_conv2d_shape *s, const conv_view *v,
                               const float *x)
{
    if (!v->padded) return x;
    float *xp = scratch(st, e, SC_PAD_X, conv_x_elems(v) * sizeof(float));
    if (!xp || chk(st, e, dl_dev_pad2d_forward(st->dev, st->s, DL_F32, s->N, s->H, s->W, s->Cin, s->pad_top,
                                               s->pad_left, s->pad_bottom, s->pad_right, x, xp)))
        return NULL;
    return xp;
}
/* The algorithm and a workspace for one direction; -1 on a sticky error. */
static int conv_algo(cu_state *st, const char *e, dl_dev_conv_dir dir, const conv_view *v, void **ws, size_t *wsb)
{
    int algo = 0;
    *ws = NULL;
    *wsb = 0;
    if (st->failed) return -1;
    const int key[17] = {(int)dir, (int)v->xd.dt, v->xd.n, v->xd.c, v->xd.h, v->xd.w, (int)v->wd.dt, v->wd.k, v->wd.c,
                         v->wd.r, v->wd.s, v->cd.pad_h, v->cd.pad_w, v->cd.stride_h, v->cd.stride_w, v->cd.dil_h,
                         v->cd.dil_w};
    int hit = -1;
    for (int i = 0; i < st->n_memo && hit < 0; i++)
        if (!memcmp(st->memo[i].key, key, sizeof key)) hit = i;
    if (hit >= 0) {
        algo = st->memo[hit].algo;
        *wsb = st->memo[hit].ws;
    } else {
        if (chk(st, e, dl_dev_conv_algo(st->dev, dir, &v->xd, &v->wd, &v->cd, &v->yd, &algo, wsb))) return -1;
        if (st->n_memo < CONV_MEMO) { /* beyond that (unusual shape churn) the heuristic is asked each time */
            struct conv_memo *m = &st->memo[st->n_memo++];
            memcpy(m->key, key, sizeof key);
            m->algo = algo;
            m->ws = *wsb;
        }
    }
    if (*wsb && !(*ws = scratch(st, e, SC_CONV_WS, *wsb))) return -1;
    return algo;
}
/* y = conv(xin, w) (+ beta · y), xin from conv_input */
static void conv_fwd(cu_state *st, const char *e, const conv_view *v, const float *xin, const float *w, float beta,
                     float *y)
{
    void *ws;
    size_t wsb;
    const int algo = conv_algo(st, e, DL_DEV_CONV_FWD, v, &ws, &wsb);
    if (algo < 0) return;
    chk(st, e, dl_dev_conv_forward(st->dev, st->s, 1.0f, &v->xd, xin, &v->wd, w, &v->cd, algo, ws, wsb, beta, &v->yd,
                                   y));
}
/* dxin = conv_transpose(dy, w) (+ beta · dxin); dxin is the padded input's gradient when padded */
static void conv_bwd_data(cu_state *st, const char *e, const conv_view *v, const float *w, const float *dy,
                          float beta, float *dxin)
{
    void *ws;
    size_t wsb;
    const int algo = conv_algo(st, e, DL_DEV_CONV_BWD_DATA, v, &ws, &wsb);
    if (algo < 0) return;
    chk(st, e, dl_dev_conv_backward_data(st->dev, st->s, 1.0f, &v->wd, w, &v->yd, dy, &v->cd, algo, ws, wsb, beta,
                                         &v->xd, dxin));
}
static void conv_bwd_filter(cu_state *st, const char *e, const conv_view *v, const float *xin, const float *dy,
                            float *dw)
{
    void *ws;
    size_t wsb;
    const int algo = conv_algo(st, e, DL_DEV_CONV_BWD_FILTER, v, &ws, &wsb);
    if (algo < 0) return;
    chk(st, e, dl_dev_conv_backward_filter(st->dev, st->s, 1.0f, &v->xd, xin, &v->yd, dy, &v->cd, algo, ws, wsb, 0.0f,
                                           &v->wd, dw));
}
/* Where the input gradient is accumulated: dx itself, or the padded gradient in SC_PAD_DX. */
static float *conv_dx_target(cu_state *st, const char *e, const conv_view *v, float *dx)
{
    return v->padded ? scratch(st, e, SC_PAD_DX, conv_x_elems(v) * sizeof(float)) : dx;
}
/* dx = the interior of the padded gradient (nothing to do without padding) */
static void conv_dx_finish(cu_state *st, const char *e, const dl_conv2d_shape *s, const conv_view *v,
                           const float *dxp, float *dx)
{
    if (!v->padded || st->failed) return;
    chk(st, e, dl_dev_pad2d_backward(st->dev, st->s, DL_F32, s->N, s->H, s->W, s->Cin, s->pad_top, s->pad_left,
                                     s->pad_bottom, s->pad_right, dxp, dx));
}
static int64_t conv_rows(const dl_conv2d_shape *s)
{
    return (int64_t)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s);
}

static void cu_conv2d_forward(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x, const void *wv,
                              dl_dtype wdt, const float *b, float *y)
{
    cu_state *st = ST(ctx);
    const char *e = "conv2d_forward";
    const float *w = weight_f32(st, e, wv, wdt, (int64_t)s->Cout * s->k * s->k * s->Cin);
    if (!w) return;
    const conv_view v = conv_make(s, s->Cout);
    const float *xin = conv_input(st, e, s, &v, x);
    if (!xin) return;
    conv_fwd(st, e, &v, xin, w, 0.0f, y); // y [N, Ho, Wo, Cout]
    if (b && !st->failed) chk(st, e, dl_dev_add_bcast_forward(st->dev, st->s, DL_F32, 1, conv_rows(s), s->Cout, 0, y, b, y));
}
static void cu_conv2d_backward(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x, const void *wv,
                               dl_dtype wdt, const float *dy, float *dx, float *dw, float *db)
{
    cu_state *st = ST(ctx);
    const char *e = "conv2d_backward";
    const float *w = dx ? weight_f32(st, e, wv, wdt, (int64_t)s->Cout * s->k * s->k * s->Cin) : NULL;
    if (dx && !w) return;
    const conv_view v = conv_make(s, s->Cout);
    if (dx) {
        float *dxp = conv_dx_target(st, e, &v, dx);
        if (!dxp) return;
        conv_bwd_data(st, e, &v, w, dy, 0.0f, dxp); // dx [N, H, W, Cin]
        conv_dx_finish(st, e, s, &v, dxp, dx);
    }
    if (dw) {
        const float *xin = conv_input(st, e, s, &v, x);
        if (!xin) return;
        conv_bwd_filter(st, e, &v, xin, dy, dw); // dw [Cout, k, k, Cin]
    }
    if (db) bias_grad(st, e, conv_rows(s), s->Cout, dy, db); // db [Cout]
}

/* ---- normalisation ----------------------------------------------------------------------------- */
static void cu_groupnorm_forward(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x, const float *gamma,
                                 const float *beta, float *y, float *mean, float *rstd)
{
    cu_state *st = ST(ctx);
    const char *e = "groupnorm_forward";
    const size_t ng = (size_t)s.N * s.G;
    void *ws = scratch(st, e, SC_GN_WS, dl_dev_groupnorm_workspace_size(s.N, s.HW, s.C, s.G));
    float *stats = (!mean || !rstd) ? scratch(st, e, SC_STATS, 2 * ng * sizeof(float)) : NULL;
    if (!ws || (!stats && (!mean || !rstd))) return;
    chk(st, e, dl_dev_groupnorm_forward(st->dev, st->s, DL_F32, s.N, s.HW, s.C, s.G, s.eps, s.silu, x, gamma, beta, y,
                                        mean ? mean : stats, rstd ? rstd : stats + ng, ws));
}
static void cu_groupnorm_backward(const dl_ctx *ctx, dl_groupnorm_shape s, const float *x, const float *gamma,
                                  const float *beta, const float *mean, const float *rstd, const float *dy, float *dx,
                                  float *dgamma, float *dbeta)
{
    cu_state *st = ST(ctx);
    const char *e = "groupnorm_backward";
    void *ws = scratch(st, e, SC_GN_WS, dl_dev_groupnorm_workspace_size(s.N, s.HW, s.C, s.G));
    if (!ws) return;
    chk(st, e, dl_dev_groupnorm_backward(st->dev, st->s, DL_F32, s.N, s.HW, s.C, s.G, s.silu, x, gamma, beta, mean,
                                         rstd, dy, dx, dgamma, dbeta, ws));
}
static void cu_layernorm_forward(const dl_ctx *ctx, int64_t M, int64_t C, float eps, const float *x,
                                 const float *gamma, const float *beta, float *y, float *mean, float *rstd)
{
    cu_state *st = ST(ctx);
    if (st->failed) return;
    chk(st, "layernorm_forward",
        dl_dev_layernorm_forward(st->dev, st->s, DL_F32, M, C, eps, x, gamma, beta, y, mean, rstd));
}
static void cu_layernorm_backward(const dl_ctx *ctx, int64_t M, int64_t C, const float *x, const float *gamma,
                                  const float *mean, const float *rstd, const float *dy, float *dx, float *dgamma,
                                  float *dbeta)
{
    cu_state *st = ST(ctx);
    if (st->failed) return;
    chk(st, "layernorm_backward",
        dl_dev_layernorm_backward(st->dev, st->s, DL_F32, M, C, x, gamma, mean, rstd, dy, dx, dgamma, dbeta));
}

/* ---- attention --------------------------------------------------------------------------------- */
/* danlu's attention kernels take no mask and these head dims; the rest goes through GEMMs. */
static int attn_kernel_path(const dl_attention_shape *s)
{
    return !s->causal && (s->d == 40 || s->d == 64 || s->d == 80 || s->d == 160);
}
static dl_dev_sdpa_desc sdpa_of(const dl_attention_shape *s)
{
    const int64_t hd = (int64_t)s->H * s->d;
    return (dl_dev_sdpa_desc){DL_F32, s->N, s->H, s->Tq, s->Tk, s->d, s->scale, hd, hd, hd, hd};
}
/* P [H, Tq, Tk] = softmax(scale · Q·Kᵀ [+ causal mask]) of sample n (lse_n [H, Tq] or NULL) */
static void attn_probs(cu_state *st, const char *e, const dl_attention_shape *s, const float *qn, const float *kn,
                       float *P, float *lse_n)
{
    const int64_t hd = (int64_t)s->H * s->d, TT = (int64_t)s->Tq * s->Tk;
    // S_h [Tq, Tk] = Q_h [Tq, d] · K_h [Tk, d]ᵀ for every head h (rows of ld H·d, heads d apart)
    rm_gemm_b(st, e, 0, 1, s->Tq, s->Tk, s->d, 1.0f, qn, hd, kn, hd, 0.0f, P, s->Tk, NULL,
              (rm_batch){s->H, s->d, s->d, TT});
    if (st->failed) return;
    chk(st, e, dl_dev_softmax_forward(st->dev, st->s, (int64_t)s->H * s->Tq, s->Tk, s->scale, s->causal ? s->Tq : 0, P,
                                      P, lse_n));
}
/* On a device with compute capability ≥ 8.0 danlu's mma.sync kernels (bf16 only) run the head dims
 * of attn_kernel_path: the fp32 inputs are rounded to bf16 in scratch (SC_ATTN_BF16) and the
 * outputs widened back, DESIGN's CUDA numerics (bf16 matrix inputs, fp32 accumulation and
 * softmax; about 1e-2 relative against the fp32 CPU op). 1 when that path applies. */
static int attn_mma_path(const cu_state *st, const dl_attention_shape *s)
{
    dl_dev_sdpa_desc a = sdpa_of(s);
    a.dt = DL_BF16;
    return attn_kernel_path(s) && dl_dev_attention_uses_mma(st->dev, &a);
}
/* n fp32 values rounded to bf16 at dst (scratch); 1 after a failure */
static int attn_narrow(cu_state *st, const char *e, const float *src, uint16_t *dst, size_t n)
{
    return chk(st, e, dl_dev_from_f32(st->dev, st->s, DL_BF16, (int64_t)n, src, dst));
}
static void cu_attention_forward_mma(cu_state *st, const dl_attention_shape *s, const float *q, const float *k,
                                     const float *v, float *o, float *lse)
{
    const char *e = "attention_forward";
    const size_t hd = (size_t)s->H * s->d, nq = (size_t)s->N * s->Tq * hd, nk = (size_t)s->N * s->Tk * hd;
    float *l = lse ? lse : scratch(st, e, SC_STATS, (size_t)s->N * s->H * s->Tq * sizeof(float));
    uint16_t *b = scratch(st, e, SC_ATTN_BF16, (2 * nq + 2 * nk) * sizeof(uint16_t));
    if (!l || !b) return;
    uint16_t *qb = b, *ob = b + nq, *kb = ob + nq, *vb = kb + nk; // q, o [N, Tq, H·d]; k, v [N, Tk, H·d]
    if (attn_narrow(st, e, q, qb, nq) || attn_narrow(st, e, k, kb, nk) || attn_narrow(st, e, v, vb, nk)) return;
    dl_dev_sdpa_desc a = sdpa_of(s);
    a.dt = DL_BF16;
    if (chk(st, e, dl_dev_attention_forward(st->dev, st->s, &a, qb, kb, vb, ob, l))) return;
    chk(st, e, dl_dev_to_f32(st->dev, st->s, DL_BF16, (int64_t)nq, ob, o));
}
static void cu_attention_backward_mma(cu_state *st, const dl_attention_shape *s, const float *q, const float *k,
                                      const float *v, const float *o, const float *lse, const float *dout, float *dq,
                                      float *dk, float *dv)
{
    const char *e = "attention_backward";
    const size_t hd = (size_t)s->H * s->d, nq = (size_t)s->N * s->Tq * hd, nk = (size_t)s->N * s->Tk * hd;
    float *delta = scratch(st, e, SC_DELTA, (size_t)s->N * s->H * s->Tq * sizeof(float));
    uint16_t *b = scratch(st, e, SC_ATTN_BF16, (4 * nq + 4 * nk) * sizeof(uint16_t));
    if (!delta || !b) return;
    // q, o, dout, dq [N, Tq, H·d]; k, v, dk, dv [N, Tk, H·d]
    uint16_t *qb = b, *ob = qb + nq, *db = ob + nq, *dqb = db + nq;
    uint16_t *kb = dqb + nq, *vb = kb + nk, *dkb = vb + nk, *dvb = dkb + nk;
    if (attn_narrow(st, e, q, qb, nq) || attn_narrow(st, e, k, kb, nk) || attn_narrow(st, e, v, vb, nk) ||
        attn_narrow(st, e, o, ob, nq) || attn_narrow(st, e, dout, db, nq))
        return;
    dl_dev_sdpa_desc a = sdpa_of(s);
    a.dt = DL_BF16;
    if (chk(st, e, dl_dev_attention_backward(st->dev, st->s, &a, qb, kb, vb, ob, db, lse, delta, dq ? dqb : NULL,
                                             dk ? dkb : NULL, dv ? dvb : NULL)))
        return;
    if (dq && chk(st, e, dl_dev_to_f32(st->dev, st->s, DL_BF16, (int64_t)nq, dqb, dq))) return;
    if (dk && chk(st, e, dl_dev_to_f32(st->dev, st->s, DL_BF16, (int64_t)nk, dkb, dk))) return;
    if (dv) chk(st, e, dl_dev_to_f32(st->dev, st->s, DL_BF16, (int64_t)nk, dvb, dv));
}
static void cu_attention_forward(const dl_ctx *ctx, dl_attention_shape s, const float *q, const float *k,
                                 const float *v, float *o, float *lse)
{
    cu_state *st = ST(ctx);
    const char *e = "attention_forward";
    DL_ASSERTF(!s.causal || s.Tq == s.Tk, "attention: causal needs Tq == Tk (%d, %d)", s.Tq, s.Tk);
    const size_t nl = (size_t)s.N * s.H * s.Tq;
    if (attn_mma_path(st, &s)) {
        cu_attention_forward_mma(st, &s, q, k, v, o, lse);
        return;
    }
    if (attn_kernel_path(&s)) {
        float *l = lse ? lse : scratch(st, e, SC_STATS, nl * sizeof(float));
        const dl_dev_sdpa_desc a = sdpa_of(&s);
        if (l) chk(st, e, dl_dev_attention_forward(st->dev, st->s, &a, q, k, v, o, l));
        return;
    }
    const int64_t hd = (int64_t)s.H * s.d, TT = (int64_t)s.Tq * s.Tk;
    float *P = scratch(st, e, SC_ATTN_P, (size_t)s.H * TT * sizeof(float));
    for (int n = 0; P && n < s.N && !st->failed; n++) {
        const int64_t oq = (int64_t)n * s.Tq * hd, ok = (int64_t)n * s.Tk * hd;
        attn_probs(st, e, &s, q + oq, k + ok, P, lse ? lse + (int64_t)n * s.H * s.Tq : NULL);
        // O_h [Tq, d] = P_h [Tq, Tk] · V_h [Tk, d]
        rm_gemm_b(st, e, 0, 0, s.Tq, s.d, s.Tk, 1.0f, P, s.Tk, v + ok, hd, 0.0f, o + oq, hd, NULL,
                  (rm_batch){s.H, TT, s.d, s.d});
    }
}
static void cu_attention_backward(const dl_ctx *ctx, dl_attention_shape s, const float *q, const float *k,
                                  const float *v, const float *o, const float *lse, const float *dout, float *dq,
                                  float *dk, float *dv)
{
    cu_state *st = ST(ctx);
    const char *e = "attention_backward";
    DL_ASSERTF(!s.causal || s.Tq == s.Tk, "attention: causal needs Tq == Tk (%d, %d)", s.Tq, s.Tk);
    if (attn_mma_path(st, &s)) {
        cu_attention_backward_mma(st, &s, q, k, v, o, lse, dout, dq, dk, dv);
        return;
    }
    if (attn_kernel_path(&s)) {
        float *delta = scratch(st, e, SC_DELTA, (size_t)s.N * s.H * s.Tq * sizeof(float));
        const dl_dev_sdpa_desc a = sdpa_of(&s);
        if (delta) chk(st, e, dl_dev_attention_backward(st->dev, st->s, &a, q, k, v, o, dout, lse, delta, dq, dk, dv));
        return;
    }
    const int64_t hd = (int64_t)s.H * s.d, TT = (int64_t)s.Tq * s.Tk;
    float *P = scratch(st, e, SC_ATTN_P, (size_t)s.H * TT * sizeof(float));
    float *dP = scratch(st, e, SC_ATTN_DP, (size_t)s.H * TT * sizeof(float));
    for (int n = 0; P && dP && n < s.N && !st->failed; n++) {
        const int64_t oq = (int64_t)n * s.Tq * hd, ok = (int64_t)n * s.Tk * hd;
        const float *qn = q + oq, *kn = k + ok, *vn = v + ok, *don = dout + oq;
        attn_probs(st, e, &s, qn, kn, P, NULL); // P recomputed (the same bits as the forward's)
        // dV_h [Tk, d] = P_hᵀ · dO_h
        if (dv) rm_gemm_b(st, e, 1, 0, s.Tk, s.d, s.Tq, 1.0f, P, s.Tk, don, hd, 0.0f, dv + ok, hd, NULL,
                          (rm_batch){s.H, TT, s.d, s.d});
        if (!dq && !dk) continue;
        // dP_h [Tq, Tk] = dO_h · V_hᵀ, then dS = P ∘ (dP − rowsum(dP ∘ P)) in place
        rm_gemm_b(st, e, 0, 1, s.Tq, s.Tk, s.d, 1.0f, don, hd, vn, hd, 0.0f, dP, s.Tk, NULL,
                  (rm_batch){s.H, s.d, s.d, TT});
        if (st->failed) return;
        if (chk(st, e, dl_dev_softmax_backward(st->dev, st->s, (int64_t)s.H * s.Tq, s.Tk, P, dP))) return;
        // dQ_h [Tq, d] = scale · dS_h · K_h;  dK_h [Tk, d] = scale · dS_hᵀ · Q_h
        if (dq) rm_gemm_b(st, e, 0, 0, s.Tq, s.d, s.Tk, s.scale, dP, s.Tk, kn, hd, 0.0f, dq + oq, hd, NULL,
                          (rm_batch){s.H, TT, s.d, s.d});
        if (dk) rm_gemm_b(st, e, 1, 0, s.Tk, s.d, s.Tq, s.scale, dP, s.Tk, qn, hd, 0.0f, dk + ok, hd, NULL,
                          (rm_batch){s.H, TT, s.d, s.d});
    }
}

/* ---- pointwise, element-wise, layout ----------------------------------------------------------- */
/* The entries that are one device kernel: skip once the ctx has failed, record the kernel's error. */
#define CU_KERNEL(entry, call)                     \
    do {                                           \
        cu_state *st = ST(ctx);                    \
        if (!st->failed) chk(st, entry, (call));   \
    } while (0)
#define DEV st->dev, st->s

static void cu_act_forward(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, float *y)
{
    CU_KERNEL("act_forward", dl_dev_act_forward(DEV, DL_F32, (int)act, n, x, y));
}
static void cu_act_backward(const dl_ctx *ctx, dl_act act, int64_t n, const float *x, const float *dy, float *dx)
{
    CU_KERNEL("act_backward", dl_dev_act_backward(DEV, DL_F32, (int)act, n, x, dy, dx));
}
static void cu_geglu_forward(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, float *y)
{
    CU_KERNEL("geglu_forward", dl_dev_geglu_forward(DEV, DL_F32, M, D, x, y));
}
static void cu_geglu_backward(const dl_ctx *ctx, int64_t M, int64_t D, const float *x, const float *dy, float *dx)
{
    CU_KERNEL("geglu_backward", dl_dev_geglu_backward(DEV, DL_F32, M, D, x, dy, dx));
}
static void cu_add_forward(const dl_ctx *ctx, int64_t n, const float *a, const float *b, float *y)
{
    CU_KERNEL("add_forward", dl_dev_add(DEV, DL_F32, n, a, b, y));
}
static void cu_scale_forward(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y)
{
    CU_KERNEL("scale_forward", dl_dev_scale(DEV, DL_F32, n, alpha, x, y));
}
static void cu_axpy(const dl_ctx *ctx, int64_t n, float alpha, const float *x, float *y)
{
    CU_KERNEL("axpy", dl_dev_axpy(DEV, DL_F32, n, alpha, x, y));
}
static void cu_add_bcast_forward(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample, const float *x,
                                 const float *v, float *y)
{
    CU_KERNEL("add_bcast_forward", dl_dev_add_bcast_forward(DEV, DL_F32, N, HW, C, per_sample, x, v, y));
}
static void cu_add_bcast_backward(const dl_ctx *ctx, int64_t N, int64_t HW, int64_t C, int per_sample,
                                  const float *dy, float *dx, float *dv)
{
    CU_KERNEL("add_bcast_backward", dl_dev_add_bcast_backward(DEV, DL_F32, N, HW, C, per_sample, dy, dx, dv));
}
static void cu_concat_forward(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2, const float *a, const float *b,
                              float *y)
{
    CU_KERNEL("concat_channels_forward", dl_dev_concat_channels_forward(DEV, DL_F32, M, C1, C2, a, b, y));
}
static void cu_concat_backward(const dl_ctx *ctx, int64_t M, int64_t C1, int64_t C2, const float *dy, float *da,
                               float *db)
{
    CU_KERNEL("concat_channels_backward", dl_dev_concat_channels_backward(DEV, DL_F32, M, C1, C2, dy, da, db));
}
static void cu_upsample_forward(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W, int64_t C, const float *x,
                                float *y)
{
    CU_KERNEL("upsample_nearest2x_forward", dl_dev_upsample_nearest2x_forward(DEV, DL_F32, N, H, W, C, x, y));
}
static void cu_upsample_backward(const dl_ctx *ctx, int64_t N, int64_t H, int64_t W, int64_t C, const float *dy,
                                 float *dx)
{
    CU_KERNEL("upsample_nearest2x_backward", dl_dev_upsample_nearest2x_backward(DEV, DL_F32, N, H, W, C, dy, dx));
}
static void cu_embed_tokens(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V, const int32_t *ids,
                            const float *tok, const float *pos, float *out)
{
    CU_KERNEL("embed_tokens", dl_dev_embed_tokens(DEV, DL_F32, N, T, C, V, ids, tok, pos, out));
}
static void cu_embed_tokens_backward(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V, const int32_t *ids,
                                     const float *dout, float *dtok, float *dpos)
{
    CU_KERNEL("embed_tokens_backward", dl_dev_embed_tokens_backward(DEV, N, T, C, V, ids, dout, dtok, dpos));
}
static void cu_timestep_embedding(const dl_ctx *ctx, int64_t N, int64_t dim, const float *t, int flip_sin_to_cos,
                                  float downscale_freq_shift, float scale, float max_period, float *out)
{
    CU_KERNEL("timestep_embedding", dl_dev_timestep_embedding(DEV, DL_F32, N, dim, t, flip_sin_to_cos,
                                                              downscale_freq_shift, scale, max_period, out));
}

/* ---- loss, optimiser, gradient clipping -------------------------------------------------------- */
static void cu_mse_loss_forward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred, const float *target,
                                const float *weights, float *per_sample, float *loss)
{
    CU_KERNEL("mse_loss_forward",
              dl_dev_mse_loss_forward(DEV, DL_F32, N, D, pred, target, weights, per_sample, loss));
}
static void cu_mse_loss_backward(const dl_ctx *ctx, int64_t N, int64_t D, const float *pred, const float *target,
                                 const float *weights, float dloss, float *dpred, float *dtarget)
{
    CU_KERNEL("mse_loss_backward",
              dl_dev_mse_loss_backward(DEV, DL_F32, N, D, pred, target, weights, dloss, dpred, dtarget));
}
static void cu_adamw_step(const dl_ctx *ctx, int64_t n, const dl_adamw_hparams *hp, int64_t step, float *p,
                          const float *g, float *m, float *v)
{
    CU_KERNEL("adamw_step", dl_dev_adamw_step(DEV, n, hp->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, step,
                                              p, g, m, v));
}
static void cu_sumsq(const dl_ctx *ctx, int64_t n, const float *x, float *out)
{
    CU_KERNEL("sumsq", dl_dev_sumsq(DEV, n, x, out));
}
static void cu_clip_coef(const dl_ctx *ctx, const float *sumsq, float max_norm, float *coef)
{
    CU_KERNEL("clip_coef", dl_dev_clip_coef(DEV, sumsq, max_norm, coef));
}
static void cu_scale_by(const dl_ctx *ctx, int64_t n, const float *coef, float *x)
{
    CU_KERNEL("scale_by", dl_dev_scale_by(DEV, n, coef, x));
}

/* ---- LoRA (lora.h), composed of GEMMs and convolutions ----------------------------------------- */
static void cu_lora_linear_forward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r, float s,
                                   const float *x, const void *Wv, dl_dtype wdt, const float *b, const float *A,
                                   const float *B, float *h, float *y)
{
    cu_state *st = ST(ctx);
    const char *e = "lora_linear_forward";
    const float *W = weight_f32(st, e, Wv, wdt, in * out);
    if (!W) return;
    rm_gemm(st, e, 0, 1, M, r, in, 1.0f, x, in, A, in, 0.0f, h, r);                                 // h = x Aᵀ [M, r]
    rm_gemm_b(st, e, 0, 1, M, out, in, 1.0f, x, in, W, in, 0.0f, y, out, b, (rm_batch){1, 0, 0, 0}); // y = x Wᵀ + b
    rm_gemm(st, e, 0, 1, M, out, r, s, h, r, B, r, 1.0f, y, out);                                   // y += s h Bᵀ
}
static void cu_lora_linear_backward(const dl_ctx *ctx, int64_t M, int64_t in, int64_t out, int64_t r, float s,
                                    const float *x, const void *Wv, dl_dtype wdt, const float *A, const float *B,
                                    const float *h, const float *dy, float *dh, float *dx, float *dA, float *dB)
{
    cu_state *st = ST(ctx);
    const char *e = "lora_linear_backward";
    const float *W = dx ? weight_f32(st, e, Wv, wdt, in * out) : NULL;
    if (dx && !W) return;
    rm_gemm(st, e, 0, 0, M, r, out, s, dy, out, B, r, 0.0f, dh, r);          // dh = s dy B     [M, r]
    if (dB) rm_gemm(st, e, 1, 0, out, r, M, s, dy, out, h, r, 0.0f, dB, r);   // dB = s dyᵀ h    [out, r]
    if (dA) rm_gemm(st, e, 1, 0, r, in, M, 1.0f, dh, r, x, in, 0.0f, dA, in); // dA = dhᵀ x      [r, in]
    if (dx) {
        rm_gemm(st, e, 0, 0, M, in, out, 1.0f, dy, out, W, in, 0.0f, dx, in); // dx = dy W       [M, in]
        rm_gemm(st, e, 0, 0, M, in, r, 1.0f, dh, r, A, in, 1.0f, dx, in);     // dx += dh A
    }
}
static void cu_lora_conv_forward(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale, const float *x,
                                 const void *Wv, dl_dtype wdt, const float *b, const float *A, const float *B, float *h,
                                 float *y)
{
    cu_state *st = ST(ctx);
    const char *e = "lora_conv_forward";
    const float *W = weight_f32(st, e, Wv, wdt, (int64_t)s->Cout * s->k * s->k * s->Cin);
    if (!W) return;
    const conv_view vb = conv_make(s, s->Cout), va = conv_make(s, (int)r);
    const float *xin = conv_input(st, e, s, &vb, x); // padded once for both convolutions
    if (!xin) return;
    const int64_t M = conv_rows(s);
    conv_fwd(st, e, &va, xin, A, 0.0f, h); // h = conv(x, A)     [N, Ho, Wo, r]
    conv_fwd(st, e, &vb, xin, W, 0.0f, y); // y = conv(x, W)     [N, Ho, Wo, Cout]
    if (b && !st->failed) chk(st, e, dl_dev_add_bcast_forward(DEV, DL_F32, 1, M, s->Cout, 0, y, b, y)); // y += b
    rm_gemm(st, e, 0, 1, M, s->Cout, r, scale, h, r, B, r, 1.0f, y, s->Cout); // y += s h Bᵀ
}
/* dx_scratch is not used: the LoRA branch's input gradient is accumulated into dx (or its padded
 * form) by the convolution's beta = 1. */
static void cu_lora_conv_backward(const dl_ctx *ctx, const dl_conv2d_shape *s, int64_t r, float scale, const float *x,
                                  const void *Wv, dl_dtype wdt, const float *A, const float *B, const float *h,
                                  const float *dy, float *dh, float *dx_scratch, float *dx, float *dA, float *dB)
{
    cu_state *st = ST(ctx);
    const char *e = "lora_conv_backward";
    const float *W = dx ? weight_f32(st, e, Wv, wdt, (int64_t)s->Cout * s->k * s->k * s->Cin) : NULL;
    if (dx && !W) return;
    (void)dx_scratch;
    const conv_view vb = conv_make(s, s->Cout), va = conv_make(s, (int)r);
    const int64_t M = conv_rows(s), Cout = s->Cout;
    rm_gemm(st, e, 0, 0, M, r, Cout, scale, dy, Cout, B, r, 0.0f, dh, r);        // dh = s dy B   [M, r]
    if (dB) rm_gemm(st, e, 1, 0, Cout, r, M, scale, dy, Cout, h, r, 0.0f, dB, r); // dB = s dyᵀ h [Cout, r]
    if (dA) {
        const float *xin = conv_input(st, e, s, &va, x);
        if (!xin) return;
        conv_bwd_filter(st, e, &va, xin, dh, dA); // dA [r, k, k, Cin]
    }
    if (dx) {
        float *dxp = conv_dx_target(st, e, &vb, dx);
        if (!dxp) return;
        conv_bwd_data(st, e, &vb, W, dy, 0.0f, dxp); // dx = conv_transpose(dy, W)
        conv_bwd_data(st, e, &va, A, dh, 1.0f, dxp); //    + conv_transpose(dh, A)
        conv_dx_finish(st, e, s, &vb, dxp, dx);
    }
}
static void cu_lora_merge(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s, const float *A,
                          const float *B, float *W)
{
    rm_gemm(ST(ctx), "lora_merge", 0, 0, out, K, r, s, B, r, A, K, 1.0f, W, K); // W += s B A [out, K]
}
static void cu_lora_unmerge(const dl_ctx *ctx, int64_t out, int64_t K, int64_t r, float s, const float *A,
                            const float *B, float *W)
{
    rm_gemm(ST(ctx), "lora_unmerge", 0, 0, out, K, r, -s, B, r, A, K, 1.0f, W, K); // W -= s B A
}

size_t dl_backend_cuda_grows(const dl_ctx *ctx)
{
    const cu_state *st = ctx && ctx->be == &dl_backend_cuda ? ctx->be_state : NULL;
    return st ? st->grows : 0;
}

const dl_backend dl_backend_cuda = {
    .name = "cuda",
    .device_memory = 1,
    .weight_dtypes = (1u << DL_F16) | (1u << DL_BF16),
    .compute_dtypes = 1u << DL_BF16,
    .open = cu_open,
    .close = cu_close,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .fill = cu_fill,
    .synchronize = cu_sync,
    .describe = cu_describe,
    .mem_info = cu_mem_info,
    .stream_create = cu_stream_create,
    .stream_destroy = cu_stream_destroy,
    .event_create = cu_event_create,
    .event_destroy = cu_event_destroy,
    .event_record = cu_event_record,
    .stream_wait = cu_stream_wait,
    .event_synchronize = cu_event_sync,
    .upload_on = cu_upload_on,
    .download_on = cu_download_on,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .linear_forward = cu_linear_forward,
    .linear_backward = cu_linear_backward,
    .conv2d_forward = cu_conv2d_forward,
    .conv2d_backward = cu_conv2d_backward,
    .groupnorm_forward = cu_groupnorm_forward,
    .groupnorm_backward = cu_groupnorm_backward,
    .layernorm_forward = cu_layernorm_forward,
    .layernorm_backward = cu_layernorm_backward,
    .attention_forward = cu_attention_forward,
    .attention_backward = cu_attention_backward,
    .act_forward = cu_act_forward,
    .act_backward = cu_act_backward,
    .geglu_forward = cu_geglu_forward,
    .geglu_backward = cu_geglu_backward,
    .add_forward = cu_add_forward,
    .scale_forward = cu_scale_forward,
    .axpy = cu_axpy,
    .add_bcast_forward = cu_add_bcast_forward,
    .add_bcast_backward = cu_add_bcast_backward,
    .concat_channels_forward = cu_concat_forward,
    .concat_channels_backward = cu_concat_backward,
    .upsample_nearest2x_forward = cu_upsample_forward,
    .upsample_nearest2x_backward = cu_upsample_backward,
    .embed_tokens = cu_embed_tokens,
    .embed_tokens_backward = cu_embed_tokens_backward,
    .timestep_embedding = cu_timestep_embedding,
    .mse_loss_forward = cu_mse_loss_forward,
    .mse_loss_backward = cu_mse_loss_backward,
    .adamw_step = cu_adamw_step,
    .sumsq = cu_sumsq,
    .clip_coef = cu_clip_coef,
    .scale_by = cu_scale_by,
    .lora_linear_forward = cu_lora_linear_forward,
    .lora_linear_backward = cu_lora_linear_backward,
    .lora_conv_forward = cu_lora_conv_forward,
    .lora_conv_backward = cu_lora_conv_backward,
    .lora_merge = cu_lora_merge,
    .lora_unmerge = cu_lora_unmerge,
};
