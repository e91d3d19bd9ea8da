/* dev.c - the device layer's front: picks an implementation, dispatches every call through its
 * table, and holds the argument checks both implementations share (cuBLASLt's and cuDNN's
 * documented parameter rules), so the emulator rejects exactly what the libraries reject. */
#include "device/dev_impl.h"

#include "core/error.h"
#include "ops/cpu/activation.h" /* dl_act */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *dl_dev_status_name(dl_dev_status st)
{
    switch (st) {
    case DL_DEV_SUCCESS: return "DL_DEV_SUCCESS";
    case DL_DEV_ERR_ALLOC: return "DL_DEV_ERR_ALLOC";
    case DL_DEV_ERR_BAD_PARAM: return "DL_DEV_ERR_BAD_PARAM";
    case DL_DEV_ERR_NOT_SUPPORTED: return "DL_DEV_ERR_NOT_SUPPORTED";
    case DL_DEV_ERR_EXEC: return "DL_DEV_ERR_EXEC";
    case DL_DEV_ERR_BAD_POINTER: return "DL_DEV_ERR_BAD_POINTER";
    case DL_DEV_ERR_UNORDERED: return "DL_DEV_ERR_UNORDERED";
    case DL_DEV_ERR_UNAVAILABLE: return "DL_DEV_ERR_UNAVAILABLE";
    case DL_DEV_ERR_INTERNAL: return "DL_DEV_ERR_INTERNAL";
    }
    return "DL_DEV_ERR_?";
}

dl_dev_status dl_dev_fail(dl_dev_status st, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dl_error_set("%s (%s)", msg, dl_dev_status_name(st));
    return st;
}

dl_dev_kind dl_dev_default_kind(void)
{
#ifdef DANLU_DEV_DEFAULT_REAL
    return DL_DEV_REAL;
#else
    return DL_DEV_EMULATED;
#endif
}

int dl_dev_available(dl_dev_kind kind)
{
    if (kind == DL_DEV_EMULATED) return 1;
#ifdef DANLU_DEV_HAVE_REAL
    return dl_dev_cuda_present();
#else
    return 0;
#endif
}

dl_dev *dl_dev_open(dl_dev_kind kind)
{
    if (kind == DL_DEV_EMULATED) return dl_dev_emu_open();
#ifdef DANLU_DEV_HAVE_REAL
    return dl_dev_cuda_open();
#else
    dl_dev_fail(DL_DEV_ERR_UNAVAILABLE, "dl_dev_open: the real CUDA device is not built (CUDA toolkit not found "
                                        "or DANLU_CUDA=OFF)");
    return NULL;
#endif
}

void dl_dev_close(dl_dev *dev)
{
    if (dev) dev->vt->close(dev);
}
dl_dev_kind dl_dev_kind_of(const dl_dev *dev) { return dev->kind; }
const char *dl_dev_name(const dl_dev *dev) { return dev->vt->name(dev); }
int dl_dev_sm(const dl_dev *dev) { return dev->sm; }
dl_dev_status dl_dev_synchronize(dl_dev *dev) { return dev->vt->synchronize(dev); }
dl_dev_status dl_dev_mem_info(dl_dev *dev, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
#ifdef DANLU_DEV_HAVE_REAL
    if (dev->kind == DL_DEV_REAL) return dl_dev_cuda_mem_info(dev, free_bytes, total_bytes);
#endif
    return dl_dev_emu_mem_info(dev, free_bytes, total_bytes);
}

dl_dev_status dl_dev_malloc(dl_dev *dev, void **p, size_t bytes) { return dev->vt->malloc_(dev, p, bytes); }
dl_dev_status dl_dev_free(dl_dev *dev, void *p) { return p ? dev->vt->free_(dev, p) : DL_DEV_SUCCESS; }
dl_dev_status dl_dev_host_alloc(dl_dev *dev, void **p, size_t bytes)
{
    *p = NULL;
#ifdef DANLU_DEV_HAVE_REAL
    if (dev->kind == DL_DEV_REAL) return dl_dev_cuda_host_alloc(p, bytes);
#endif
    (void)dev;
    if (!(*p = aligned_alloc(64, bytes ? (bytes + 63) / 64 * 64 : 64)))
        return dl_dev_fail(DL_DEV_ERR_ALLOC, "dl_dev_host_alloc: out of host memory (%zu bytes)", bytes);
    return DL_DEV_SUCCESS;
}
dl_dev_status dl_dev_host_free(dl_dev *dev, void *p)
{
    if (!p) return DL_DEV_SUCCESS;
#ifdef DANLU_DEV_HAVE_REAL
    if (dev->kind == DL_DEV_REAL) return dl_dev_cuda_host_free(p);
#endif
    (void)dev;
    free(p);
    return DL_DEV_SUCCESS;
}
dl_dev_status dl_dev_memcpy_h2d(dl_dev *dev, void *dst, const void *src, size_t bytes, dl_dev_stream *s)
{
    return dev->vt->memcpy_(dev, dst, src, bytes, 0, s);
}
dl_dev_status dl_dev_memcpy_d2h(dl_dev *dev, void *dst, const void *src, size_t bytes, dl_dev_stream *s)
{
    return dev->vt->memcpy_(dev, dst, src, bytes, 1, s);
}
dl_dev_status dl_dev_memcpy_d2d(dl_dev *dev, void *dst, const void *src, size_t bytes, dl_dev_stream *s)
{
    return dev->vt->memcpy_(dev, dst, src, bytes, 2, s);
}
dl_dev_status dl_dev_memset(dl_dev *dev, void *dst, int byte, size_t bytes, dl_dev_stream *s)
{
    return dev->vt->memset_(dev, dst, byte, bytes, s);
}

dl_dev_status dl_dev_stream_create(dl_dev *dev, dl_dev_stream **s, const char *name)
{
    return dev->vt->stream_create(dev, s, name);
}
dl_dev_status dl_dev_stream_destroy(dl_dev *dev, dl_dev_stream *s) { return s ? dev->vt->stream_destroy(dev, s) : DL_DEV_SUCCESS; }
dl_dev_status dl_dev_stream_synchronize(dl_dev *dev, dl_dev_stream *s) { return dev->vt->stream_synchronize(dev, s); }
void *dl_dev_stream_handle(dl_dev_stream *s) { return s->handle; }
dl_dev_status dl_dev_event_create(dl_dev *dev, dl_dev_event **e) { return dev->vt->event_create(dev, e); }
dl_dev_status dl_dev_event_destroy(dl_dev *dev, dl_dev_event *e) { return e ? dev->vt->event_destroy(dev, e) : DL_DEV_SUCCESS; }
dl_dev_status dl_dev_event_record(dl_dev *dev, dl_dev_event *e, dl_dev_stream *s) { return dev->vt->event_record(dev, e, s); }
dl_dev_status dl_dev_stream_wait_event(dl_dev *dev, dl_dev_stream *s, dl_dev_event *e)
{
    return dev->vt->stream_wait_event(dev, s, e);
}
dl_dev_status dl_dev_event_synchronize(dl_dev *dev, dl_dev_event *e) { return dev->vt->event_synchronize(dev, e); }
dl_dev_status dl_dev_event_elapsed_ms(dl_dev *dev, float *ms, dl_dev_event *a, dl_dev_event *b)
{
    return dev->vt->event_elapsed_ms(dev, ms, a, b);
}

/* ---- GEMM ---- */
static int ab_type_ok(dl_dtype t) { return t == DL_F32 || t == DL_BF16 || t == DL_F16; }

dl_dev_status dl_dev_check_gemm(const dl_dev_gemm_desc *g)
{
    if (!g) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_gemm: NULL descriptor");
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 0)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_gemm: negative size (m %lld, n %lld, k %lld, batch %d)",
                           (long long)g->m, (long long)g->n, (long long)g->k, g->batch);
    if (!ab_type_ok(g->ab_type) || !ab_type_ok(g->c_type))
        return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "dl_dev_gemm: A/B type %s, C type %s (f32, bf16, f16 only)",
                           dl_dtype_name(g->ab_type), dl_dtype_name(g->c_type));
    if (g->compute != DL_F32 && !(g->compute == DL_BF16 && g->ab_type == DL_F32))
        return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "dl_dev_gemm: compute type %s with A/B %s (f32, or bf16 on f32 "
                           "data)", dl_dtype_name(g->compute), dl_dtype_name(g->ab_type));
    const int64_t arows = g->transa == DL_DEV_OP_N ? g->m : g->k, brows = g->transb == DL_DEV_OP_N ? g->k : g->n;
    if (g->lda < (arows > 1 ? arows : 1) || g->ldb < (brows > 1 ? brows : 1) || g->ldc < (g->m > 1 ? g->m : 1))
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM,
                           "dl_dev_gemm: leading dimension too small (lda %lld < %lld, ldb %lld < %lld or ldc %lld < "
                           "%lld; column-major)",
                           (long long)g->lda, (long long)arows, (long long)g->ldb, (long long)brows,
                           (long long)g->ldc, (long long)g->m);
    if ((g->epilogue == DL_DEV_EPI_BIAS || g->epilogue == DL_DEV_EPI_GELU_BIAS) && !g->bias)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_gemm: bias epilogue without a bias pointer");
    if (g->epilogue < DL_DEV_EPI_DEFAULT || g->epilogue > DL_DEV_EPI_GELU_BIAS)
        return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "dl_dev_gemm: unknown epilogue %d", (int)g->epilogue);
    return DL_DEV_SUCCESS;
}

dl_dev_status dl_dev_gemm(dl_dev *dev, dl_dev_stream *s, const dl_dev_gemm_desc *g, float alpha, const void *A,
                          const void *B, float beta, void *C, void *ws, size_t ws_bytes)
{
    dl_dev_status st = dl_dev_check_gemm(g);
    if (st != DL_DEV_SUCCESS) return st;
    return dev->vt->gemm(dev, s, g, alpha, A, B, beta, C, ws, ws_bytes);
}

/* ---- convolution ---- */
static int conv_type_ok(dl_dtype t) { return t == DL_F32 || t == DL_BF16 || t == DL_F16; }

dl_dev_status dl_dev_conv_output_desc(const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w,
                                      const dl_dev_conv_desc *c, dl_dev_tensor_desc *y)
{
    if (!x || !w || !c || !y) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_conv_output_desc: NULL argument");
    const int sh = c->stride_h ? c->stride_h : 1, sw = c->stride_w ? c->stride_w : 1;
    const int dh = c->dil_h ? c->dil_h : 1, dw = c->dil_w ? c->dil_w : 1;
    if (x->n <= 0 || x->c <= 0 || x->h <= 0 || x->w <= 0 || w->k <= 0 || w->r <= 0 || w->s <= 0 || sh < 0 ||
        sw < 0 || dh < 0 || dw < 0 || c->pad_h < 0 || c->pad_w < 0)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_conv_output_desc: non-positive dimension, stride or "
                                                 "dilation, or negative padding");
    if (w->c != x->c)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_conv_output_desc: filter has %d input channels, input %d",
                           w->c, x->c);
    const int eh = (w->r - 1) * dh + 1, ew = (w->s - 1) * dw + 1;
    const int ho = (x->h + 2 * c->pad_h - eh) / sh + 1, wo = (x->w + 2 * c->pad_w - ew) / sw + 1;
    if (x->h + 2 * c->pad_h < eh || x->w + 2 * c->pad_w < ew || ho <= 0 || wo <= 0)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_conv_output_desc: the filter is larger than the padded input");
    y->dt = x->dt;
    y->n = x->n;
    y->c = w->k;
    y->h = ho;
    y->w = wo;
    return DL_DEV_SUCCESS;
}

dl_dev_status dl_dev_check_conv(dl_dev_conv_dir dir, const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w,
                                const dl_dev_conv_desc *c, const dl_dev_tensor_desc *y)
{
    static const char *const names[] = {"dl_dev_conv_forward", "dl_dev_conv_backward_data",
                                        "dl_dev_conv_backward_filter"};
    const char *nm = names[dir];
    if (!x || !w || !c || !y) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: NULL descriptor", nm);
    dl_dev_tensor_desc want;
    dl_dev_status st = dl_dev_conv_output_desc(x, w, c, &want);
    if (st != DL_DEV_SUCCESS) return dl_dev_fail(st, "%s: %s", nm, dl_error_msg());
    if (y->n != want.n || y->c != want.c || y->h != want.h || y->w != want.w)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: output descriptor [%d, %d, %d, %d] (NCHW dims) does not match "
                           "the convolution's [%d, %d, %d, %d]", nm, y->n, y->c, y->h, y->w, want.n, want.c, want.h,
                           want.w);
    if (!conv_type_ok(x->dt) || x->dt != y->dt || x->dt != w->dt)
        return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "%s: data types %s/%s/%s (one of f32, bf16, f16 for all)", nm,
                           dl_dtype_name(x->dt), dl_dtype_name(w->dt), dl_dtype_name(y->dt));
    return DL_DEV_SUCCESS;
}

dl_dev_status dl_dev_conv_algo(dl_dev *dev, dl_dev_conv_dir dir, const dl_dev_tensor_desc *x,
                               const dl_dev_filter_desc *w, const dl_dev_conv_desc *c,
                               const dl_dev_tensor_desc *y, int *algo, size_t *ws_bytes)
{
    if ((int)dir < 0 || dir > DL_DEV_CONV_BWD_FILTER || !algo || !ws_bytes)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_conv_algo: bad direction or NULL output");
    dl_dev_status st = dl_dev_check_conv(dir, x, w, c, y);
    if (st != DL_DEV_SUCCESS) return st;
    return dev->vt->conv_algo(dev, dir, x, w, c, y, algo, ws_bytes);
}

dl_dev_status dl_dev_conv_forward(dl_dev *dev, dl_dev_stream *s, float alpha, const dl_dev_tensor_desc *xd,
                                  const void *x, const dl_dev_filter_desc *wd, const void *w,
                                  const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                                  const dl_dev_tensor_desc *yd, void *y)
{
    dl_dev_status st = dl_dev_check_conv(DL_DEV_CONV_FWD, xd, wd, c, yd);
    if (st != DL_DEV_SUCCESS) return st;
    return dev->vt->conv(dev, s, DL_DEV_CONV_FWD, alpha, xd, x, wd, w, yd, NULL, c, algo, ws, ws_bytes, beta, y);
}
dl_dev_status dl_dev_conv_backward_data(dl_dev *dev, dl_dev_stream *s, float alpha, const dl_dev_filter_desc *wd,
                                        const void *w, const dl_dev_tensor_desc *dyd, const void *dy,
                                        const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                                        const dl_dev_tensor_desc *dxd, void *dx)
{
    dl_dev_status st = dl_dev_check_conv(DL_DEV_CONV_BWD_DATA, dxd, wd, c, dyd);
    if (st != DL_DEV_SUCCESS) return st;
    return dev->vt->conv(dev, s, DL_DEV_CONV_BWD_DATA, alpha, dxd, NULL, wd, w, dyd, dy, c, algo, ws, ws_bytes, beta,
                         dx);
}
dl_dev_status dl_dev_conv_backward_filter(dl_dev *dev, dl_dev_stream *s, float alpha, const dl_dev_tensor_desc *xd,
                                          const void *x, const dl_dev_tensor_desc *dyd, const void *dy,
                                          const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                                          const dl_dev_filter_desc *dwd, void *dw)
{
    dl_dev_status st = dl_dev_check_conv(DL_DEV_CONV_BWD_FILTER, xd, dwd, c, dyd);
    if (st != DL_DEV_SUCCESS) return st;
    return dev->vt->conv(dev, s, DL_DEV_CONV_BWD_FILTER, alpha, xd, x, dwd, NULL, dyd, dy, c, algo, ws, ws_bytes,
                         beta, dw);
}

/* ---- attention ---- */
dl_dev_status dl_dev_check_sdpa(const dl_dev_sdpa_desc *a)
{
    if (!a) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "sdpa: NULL descriptor");
    if (a->N <= 0 || a->H <= 0 || a->Tq <= 0 || a->Tk <= 0 || a->d <= 0)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "sdpa: non-positive size (N %d, H %d, Tq %d, Tk %d, d %d)", a->N,
                           a->H, a->Tq, a->Tk, a->d);
    const int64_t hd = (int64_t)a->H * a->d;
    if (a->ldq < hd || a->ldk < hd || a->ldv < hd || a->ldo < hd)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "sdpa: a leading dimension is below H·d = %lld", (long long)hd);
    if (a->dt != DL_F32 && a->dt != DL_BF16)
        return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "sdpa: dtype %s (f32 or bf16)", dl_dtype_name(a->dt));
    return DL_DEV_SUCCESS;
}
dl_dev_status dl_dev_sdpa_forward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                  const void *k, const void *v, void *o, float *lse)
{
    dl_dev_status st = dl_dev_check_sdpa(a);
    return st != DL_DEV_SUCCESS ? st : dev->vt->sdpa_forward(dev, s, 0, a, q, k, v, o, lse);
}
dl_dev_status dl_dev_sdpa_backward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                   const void *k, const void *v, const void *o, const void *dout,
                                   const float *lse, float *delta, void *dq, void *dk, void *dv)
{
    dl_dev_status st = dl_dev_check_sdpa(a);
    return st != DL_DEV_SUCCESS ? st : dev->vt->sdpa_backward(dev, s, 0, a, q, k, v, o, dout, lse, delta, dq, dk, dv);
}
int dl_dev_attention_uses_mma(const dl_dev *dev, const dl_dev_sdpa_desc *a)
{
    return dev->sm >= 80 && a->dt == DL_BF16 && (a->d == 40 || a->d == 64 || a->d == 80 || a->d == 160);
}
static unsigned long long g_attn_mma_calls; /* over every device of the process (atomic adds) */
unsigned long long dl_dev_attention_mma_calls(const dl_dev *dev)
{
    return dev ? dev->attn_mma_calls : __atomic_load_n(&g_attn_mma_calls, __ATOMIC_RELAXED);
}
static dl_dev_status count_mma(const dl_dev *dev, unsigned long long before, dl_dev_status st)
{
    __atomic_fetch_add(&g_attn_mma_calls, dev->attn_mma_calls - before, __ATOMIC_RELAXED);
    return st;
}
dl_dev_status dl_dev_attention_forward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                       const void *k, const void *v, void *o, float *lse)
{
    dl_dev_status st = dl_dev_check_sdpa(a);
    if (st != DL_DEV_SUCCESS) return st;
    const unsigned long long before = dev->attn_mma_calls;
    return count_mma(dev, before,
                     dev->vt->sdpa_forward(dev, s, dl_dev_attention_uses_mma(dev, a) ? 2 : 1, a, q, k, v, o, lse));
}
dl_dev_status dl_dev_attention_backward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                        const void *k, const void *v, const void *o, const void *dout,
                                        const float *lse, float *delta, void *dq, void *dk, void *dv)
{
    dl_dev_status st = dl_dev_check_sdpa(a);
    if (st != DL_DEV_SUCCESS) return st;
    const unsigned long long before = dev->attn_mma_calls;
    return count_mma(dev, before,
                     dev->vt->sdpa_backward(dev, s, dl_dev_attention_uses_mma(dev, a) ? 2 : 1, a, q, k, v, o, dout,
                                            lse, delta, dq, dk, dv));
}

/* ---- danlu's kernels ---- */
dl_dev_status dl_dev_groupnorm_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                       float eps, int silu, const void *x, const float *gamma, const float *beta,
                                       void *y, float *mean, float *rstd, void *ws)
{
    return dev->vt->groupnorm_forward(dev, s, dt, N, HW, C, G, eps, silu, x, gamma, beta, y, mean, rstd, ws);
}
dl_dev_status dl_dev_groupnorm_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                        int silu, const void *x, const float *gamma, const float *beta,
                                        const float *mean, const float *rstd, const void *dy, void *dx,
                                        float *dgamma, float *dbeta, void *ws)
{
    return dev->vt->groupnorm_backward(dev, s, dt, N, HW, C, G, silu, x, gamma, beta, mean, rstd, dy, dx, dgamma,
                                       dbeta, ws);
}
dl_dev_status dl_dev_lora_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                  float scale, const void *x, const void *W, const void *bias, const float *A,
                                  const float *B, float *u, void *y)
{
    return dev->vt->lora_forward(dev, s, dt, M, in, out, rank, scale, x, W, bias, A, B, u, y);
}
dl_dev_status dl_dev_lora_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                   float scale, const void *x, const void *W, const float *A, const float *B,
                                   const void *dy, void *dx, float *dA, float *dB, int accumulate, float *ws)
{
    return dev->vt->lora_backward(dev, s, dt, M, in, out, rank, scale, x, W, A, B, dy, dx, dA, dB, accumulate, ws);
}
dl_dev_status dl_dev_lora_merge(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int out, int in, int rank, float scale,
                                void *W, const float *A, const float *B, int unmerge)
{
    return dev->vt->lora_merge(dev, s, dt, out, in, rank, scale, W, A, B, unmerge);
}

/* ---- element-wise, normalisation, loss and optimiser kernels (kernels/ops.cu) ----
 * The CPU ops' preconditions (host/ops/cpu/<family>.h), checked here so both devices reject the same
 * calls: a bad size, a missing pointer or a forbidden alias is DL_DEV_ERR_BAD_PARAM, a storage
 * type other than f32 / bf16 DL_DEV_ERR_NOT_SUPPORTED. */
#define OPS_REQUIRE(cond, ...)                                                                      \
    do {                                                                                            \
        if (!(cond)) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, __VA_ARGS__);                         \
    } while (0)
#define OPS_DTYPE(op, dt)                                                                           \
    do {                                                                                            \
        if ((dt) != DL_F32 && (dt) != DL_BF16)                                                      \
            return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "%s: dtype %s (f32 or bf16)", op, dl_dtype_name(dt)); \
    } while (0)

/* 1 if the byte ranges [a, a + na) and [b, b + nb) share a byte. */
static int ops_overlap(const void *a, size_t na, const void *b, size_t nb)
{
    const char *pa = (const char *)a, *pb = (const char *)b;
    return a && b && na && nb && pa < pb + nb && pb < pa + na;
}

dl_dev_status dl_dev_act_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                 void *y)
{
    const char *op = "dl_dev_act_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(act >= 0 && act < DL_ACT_COUNT, "%s: unknown activation %d", op, act);
    OPS_REQUIRE(n >= 0 && (n == 0 || (x && y)), "%s: n %lld, x %p, y %p", op, (long long)n, x, y);
    return dev->vt->act_forward(dev, s, dt, act, n, x, y);
}
dl_dev_status dl_dev_act_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                  const void *dy, void *dx)
{
    const char *op = "dl_dev_act_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(act >= 0 && act < DL_ACT_COUNT, "%s: unknown activation %d", op, act);
    OPS_REQUIRE(n >= 0 && (n == 0 || (x && dy && dx)), "%s: n %lld, x %p, dy %p, dx %p", op, (long long)n, x, dy, dx);
    OPS_REQUIRE(n == 0 || dx != x, "%s: dx must not alias x (it may alias dy)", op);
    return dev->vt->act_backward(dev, s, dt, act, n, x, dy, dx);
}
dl_dev_status dl_dev_geglu_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                   void *y)
{
    const char *op = "dl_dev_geglu_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(M >= 0 && D > 0 && (M == 0 || (x && y)), "%s: M %lld, D %lld, x %p, y %p", op, (long long)M,
                (long long)D, x, y);
    const size_t es = dl_dtype_size(dt);
    OPS_REQUIRE(!ops_overlap(x, (size_t)(M * 2 * D) * es, y, (size_t)(M * D) * es), "%s: y overlaps x", op);
    return dev->vt->geglu_forward(dev, s, dt, M, D, x, y);
}
dl_dev_status dl_dev_geglu_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                    const void *dy, void *dx)
{
    const char *op = "dl_dev_geglu_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(M >= 0 && D > 0 && (M == 0 || (x && dy && dx)), "%s: M %lld, D %lld, x %p, dy %p, dx %p", op,
                (long long)M, (long long)D, x, dy, dx);
    const size_t es = dl_dtype_size(dt), nx = (size_t)(M * 2 * D) * es;
    OPS_REQUIRE(!ops_overlap(dx, nx, x, nx) && !ops_overlap(dx, nx, dy, (size_t)(M * D) * es),
                "%s: dx overlaps x or dy", op);
    return dev->vt->geglu_backward(dev, s, dt, M, D, x, dy, dx);
}
dl_dev_status dl_dev_add(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *a, const void *b, void *y)
{
    const char *op = "dl_dev_add";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(n >= 0 && (n == 0 || (a && b && y)), "%s: n %lld, a %p, b %p, y %p", op, (long long)n, a, b, y);
    return dev->vt->add(dev, s, dt, n, a, b, y);
}
dl_dev_status dl_dev_scale(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y)
{
    const char *op = "dl_dev_scale";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(n >= 0 && (n == 0 || (x && y)), "%s: n %lld, x %p, y %p", op, (long long)n, x, y);
    return dev->vt->scale(dev, s, dt, n, alpha, x, y);
}
dl_dev_status dl_dev_axpy(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y)
{
    const char *op = "dl_dev_axpy";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(n >= 0 && (n == 0 || (x && y)), "%s: n %lld, x %p, y %p", op, (long long)n, x, y);
    const size_t nb = (size_t)n * dl_dtype_size(dt);
    OPS_REQUIRE(!ops_overlap(x, nb, y, nb), "%s: x overlaps y", op);
    return dev->vt->axpy(dev, s, dt, n, alpha, x, y);
}
dl_dev_status dl_dev_add_bcast_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                       int per_sample, const void *x, const float *v, void *y)
{
    const char *op = "dl_dev_add_bcast_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && HW >= 0 && C > 0 && (N * HW == 0 || (x && v && y)),
                "%s: N %lld, HW %lld, C %lld, x %p, v %p, y %p", op, (long long)N, (long long)HW, (long long)C, x,
                (const void *)v, y);
    return dev->vt->add_bcast_forward(dev, s, dt, N, HW, C, per_sample, x, v, y);
}
dl_dev_status dl_dev_add_bcast_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                        int per_sample, const void *dy, void *dx, float *dv)
{
    const char *op = "dl_dev_add_bcast_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && HW >= 0 && C > 0 && dy, "%s: N %lld, HW %lld, C %lld, dy %p", op, (long long)N,
                (long long)HW, (long long)C, dy);
    return dev->vt->add_bcast_backward(dev, s, dt, N, HW, C, per_sample, dy, dx, dv);
}
dl_dev_status dl_dev_concat_channels_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                             int64_t C2, const void *a, const void *b, void *y)
{
    const char *op = "dl_dev_concat_channels_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(M >= 0 && C1 > 0 && C2 > 0 && (M == 0 || (a && b && y)),
                "%s: M %lld, C1 %lld, C2 %lld, a %p, b %p, y %p", op, (long long)M, (long long)C1, (long long)C2, a,
                b, y);
    const size_t es = dl_dtype_size(dt), ny = (size_t)(M * (C1 + C2)) * es;
    OPS_REQUIRE(!ops_overlap(y, ny, a, (size_t)(M * C1) * es) && !ops_overlap(y, ny, b, (size_t)(M * C2) * es),
                "%s: y overlaps a or b", op);
    return dev->vt->concat_channels_forward(dev, s, dt, M, C1, C2, a, b, y);
}
dl_dev_status dl_dev_concat_channels_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                              int64_t C2, const void *dy, void *da, void *db)
{
    const char *op = "dl_dev_concat_channels_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(M >= 0 && C1 > 0 && C2 > 0 && (M == 0 || dy), "%s: M %lld, C1 %lld, C2 %lld, dy %p", op,
                (long long)M, (long long)C1, (long long)C2, dy);
    const size_t es = dl_dtype_size(dt), ny = (size_t)(M * (C1 + C2)) * es;
    OPS_REQUIRE(!ops_overlap(dy, ny, da, (size_t)(M * C1) * es) && !ops_overlap(dy, ny, db, (size_t)(M * C2) * es),
                "%s: da or db overlaps dy", op);
    return dev->vt->concat_channels_backward(dev, s, dt, M, C1, C2, dy, da, db);
}
dl_dev_status dl_dev_upsample_nearest2x_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                                int64_t W, int64_t C, const void *x, void *y)
{
    const char *op = "dl_dev_upsample_nearest2x_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && H > 0 && W > 0 && C > 0 && (N == 0 || (x && y)),
                "%s: N %lld, H %lld, W %lld, C %lld, x %p, y %p", op, (long long)N, (long long)H, (long long)W,
                (long long)C, x, y);
    const size_t nx = (size_t)(N * H * W * C) * dl_dtype_size(dt);
    OPS_REQUIRE(!ops_overlap(x, nx, y, 4 * nx), "%s: y overlaps x", op);
    return dev->vt->upsample_nearest2x_forward(dev, s, dt, N, H, W, C, x, y);
}
dl_dev_status dl_dev_upsample_nearest2x_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                                 int64_t W, int64_t C, const void *dy, void *dx)
{
    const char *op = "dl_dev_upsample_nearest2x_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && H > 0 && W > 0 && C > 0 && (N == 0 || (dy && dx)),
                "%s: N %lld, H %lld, W %lld, C %lld, dy %p, dx %p", op, (long long)N, (long long)H, (long long)W,
                (long long)C, dy, dx);
    const size_t nx = (size_t)(N * H * W * C) * dl_dtype_size(dt);
    OPS_REQUIRE(!ops_overlap(dx, nx, dy, 4 * nx), "%s: dx overlaps dy", op);
    return dev->vt->upsample_nearest2x_backward(dev, s, dt, N, H, W, C, dy, dx);
}
static dl_dev_status ops_pad2d(dl_dev *dev, dl_dev_stream *s, int bwd, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                               int64_t C, int top, int left, int bottom, int right, const void *src, void *dst)
{
    const char *op = bwd ? "dl_dev_pad2d_backward" : "dl_dev_pad2d_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && H > 0 && W > 0 && C > 0 && (N == 0 || (src && dst)),
                "%s: N %lld, H %lld, W %lld, C %lld, %s %p, %s %p", op, (long long)N, (long long)H, (long long)W,
                (long long)C, bwd ? "dy" : "x", src, bwd ? "dx" : "y", dst);
    OPS_REQUIRE(top >= 0 && left >= 0 && bottom >= 0 && right >= 0, "%s: negative padding (%d, %d, %d, %d)", op, top,
                left, bottom, right);
    const size_t es = dl_dtype_size(dt), ni = (size_t)(N * H * W * C) * es,
                 no = (size_t)(N * (H + top + bottom) * (W + left + right) * C) * es;
    OPS_REQUIRE(!ops_overlap(src, bwd ? no : ni, dst, bwd ? ni : no), "%s: the output overlaps the input", op);
    return dev->vt->pad2d(dev, s, bwd, dt, N, H, W, C, top, left, bottom, right, src, dst);
}
dl_dev_status dl_dev_pad2d_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                   int64_t C, int top, int left, int bottom, int right, const void *x, void *y)
{
    return ops_pad2d(dev, s, 0, dt, N, H, W, C, top, left, bottom, right, x, y);
}
dl_dev_status dl_dev_pad2d_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                    int64_t C, int top, int left, int bottom, int right, const void *dy, void *dx)
{
    return ops_pad2d(dev, s, 1, dt, N, H, W, C, top, left, bottom, right, dy, dx);
}
dl_dev_status dl_dev_timestep_embedding(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t dim,
                                        const float *t, int flip_sin_to_cos, float downscale_freq_shift, float scale,
                                        float max_period, void *out)
{
    const char *op = "dl_dev_timestep_embedding";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && dim > 0 && max_period > 0.0f && (N == 0 || (t && out)),
                "%s: N %lld, dim %lld, max_period %g, t %p, out %p", op, (long long)N, (long long)dim,
                (double)max_period, (const void *)t, out);
    OPS_REQUIRE(dim / 2 == 0 || (float)(dim / 2) - downscale_freq_shift != 0.0f,
                "%s: half dim %lld equals downscale_freq_shift", op, (long long)(dim / 2));
    return dev->vt->timestep_embedding(dev, s, dt, N, dim, t, flip_sin_to_cos, downscale_freq_shift, scale,
                                       max_period, out);
}
dl_dev_status dl_dev_layernorm_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C, float eps,
                                       const void *x, const float *gamma, const float *beta, void *y, float *mean,
                                       float *rstd)
{
    const char *op = "dl_dev_layernorm_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(M >= 0 && M <= INT32_MAX && C > 0 && eps >= 0.0f && (M == 0 || (x && y)),
                "%s: M %lld, C %lld, eps %g, x %p, y %p", op, (long long)M, (long long)C, (double)eps, x, y);
    return dev->vt->layernorm_forward(dev, s, dt, M, C, eps, x, gamma, beta, y, mean, rstd);
}
dl_dev_status dl_dev_layernorm_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C,
                                        const void *x, const float *gamma, const float *mean, const float *rstd,
                                        const void *dy, void *dx, float *dgamma, float *dbeta)
{
    const char *op = "dl_dev_layernorm_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(M >= 0 && M <= INT32_MAX && C > 0 && (M == 0 || (x && mean && rstd && dy)),
                "%s: M %lld, C %lld, x %p, mean %p, rstd %p, dy %p", op, (long long)M, (long long)C, x,
                (const void *)mean, (const void *)rstd, dy);
    return dev->vt->layernorm_backward(dev, s, dt, M, C, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
}
dl_dev_status dl_dev_embed_tokens(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t T, int64_t C,
                                  int64_t V, const int32_t *ids, const float *tok, const float *pos, void *out)
{
    const char *op = "dl_dev_embed_tokens";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N >= 0 && T >= 0 && C > 0 && V > 0 && (N * T == 0 || (ids && tok && pos && out)),
                "%s: N %lld, T %lld, C %lld, V %lld, ids %p, tok %p, pos %p, out %p", op, (long long)N, (long long)T,
                (long long)C, (long long)V, (const void *)ids, (const void *)tok, (const void *)pos, out);
    return dev->vt->embed_tokens(dev, s, dt, N, T, C, V, ids, tok, pos, out);
}
dl_dev_status dl_dev_embed_tokens_backward(dl_dev *dev, dl_dev_stream *s, int64_t N, int64_t T, int64_t C, int64_t V,
                                           const int32_t *ids, const float *dout, float *dtok, float *dpos)
{
    const char *op = "dl_dev_embed_tokens_backward";
    OPS_REQUIRE(N >= 0 && T >= 0 && C > 0 && V > 0 && (N * T == 0 || (ids && dout)),
                "%s: N %lld, T %lld, C %lld, V %lld, ids %p, dout %p", op, (long long)N, (long long)T, (long long)C,
                (long long)V, (const void *)ids, (const void *)dout);
    return dev->vt->embed_tokens_backward(dev, s, N, T, C, V, ids, dout, dtok, dpos);
}
dl_dev_status dl_dev_softmax_forward(dl_dev *dev, dl_dev_stream *s, int64_t rows, int64_t cols, float scale,
                                     int64_t causal_tq, const float *x, float *y, float *lse)
{
    const char *op = "dl_dev_softmax_forward";
    OPS_REQUIRE(rows >= 0 && cols > 0 && causal_tq >= 0 && (rows == 0 || (x && y)),
                "%s: rows %lld, cols %lld, causal_tq %lld, x %p, y %p", op, (long long)rows, (long long)cols,
                (long long)causal_tq, (const void *)x, (const void *)y);
    return dev->vt->softmax_forward(dev, s, rows, cols, scale, causal_tq, x, y, lse);
}
dl_dev_status dl_dev_softmax_backward(dl_dev *dev, dl_dev_stream *s, int64_t rows, int64_t cols, const float *y,
                                      float *dp)
{
    const char *op = "dl_dev_softmax_backward";
    OPS_REQUIRE(rows >= 0 && cols > 0 && (rows == 0 || (y && dp)), "%s: rows %lld, cols %lld, y %p, dp %p", op,
                (long long)rows, (long long)cols, (const void *)y, (const void *)dp);
    return dev->vt->softmax_backward(dev, s, rows, cols, y, dp);
}
dl_dev_status dl_dev_mse_loss_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                      const void *pred, const void *target, const float *weights, float *per_sample,
                                      float *loss)
{
    const char *op = "dl_dev_mse_loss_forward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N > 0 && D > 0 && pred && target && loss, "%s: N %lld, D %lld, pred %p, target %p, loss %p", op,
                (long long)N, (long long)D, pred, target, (const void *)loss);
    return dev->vt->mse_loss_forward(dev, s, dt, N, D, pred, target, weights, per_sample, loss);
}
dl_dev_status dl_dev_mse_loss_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                       const void *pred, const void *target, const float *weights, float dloss,
                                       void *dpred, void *dtarget)
{
    const char *op = "dl_dev_mse_loss_backward";
    OPS_DTYPE(op, dt);
    OPS_REQUIRE(N > 0 && D > 0 && pred && target, "%s: N %lld, D %lld, pred %p, target %p", op, (long long)N,
                (long long)D, pred, target);
    OPS_REQUIRE(!dtarget || (dtarget != pred && dtarget != target), "%s: dtarget must not alias pred or target", op);
    return dev->vt->mse_loss_backward(dev, s, dt, N, D, pred, target, weights, dloss, dpred, dtarget);
}
dl_dev_status dl_dev_adamw_step(dl_dev *dev, dl_dev_stream *s, int64_t n, double lr, double beta1, double beta2,
                                double eps, double weight_decay, int64_t step, float *p, const float *g, float *m,
                                float *v)
{
    const char *op = "dl_dev_adamw_step";
    OPS_REQUIRE(n >= 0 && (n == 0 || (p && g && m && v)), "%s: n %lld, p %p, g %p, m %p, v %p", op, (long long)n,
                (void *)p, (const void *)g, (void *)m, (void *)v);
    OPS_REQUIRE(step >= 1 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps >= 0,
                "%s: step %lld, beta1 %g, beta2 %g, eps %g (step >= 1, betas in [0, 1), eps >= 0)", op,
                (long long)step, beta1, beta2, eps);
    return dev->vt->adamw_step(dev, s, n, lr, beta1, beta2, eps, weight_decay, step, p, g, m, v);
}
dl_dev_status dl_dev_sumsq(dl_dev *dev, dl_dev_stream *s, int64_t n, const float *x, float *out)
{
    const char *op = "dl_dev_sumsq";
    OPS_REQUIRE(n >= 0 && out && (n == 0 || x), "%s: n %lld, x %p, out %p", op, (long long)n, (const void *)x,
                (void *)out);
    return dev->vt->sumsq(dev, s, n, x, out);
}
dl_dev_status dl_dev_clip_coef(dl_dev *dev, dl_dev_stream *s, const float *sumsq, float max_norm, float *coef)
{
    OPS_REQUIRE(sumsq && coef, "dl_dev_clip_coef: sumsq %p, coef %p", (const void *)sumsq, (void *)coef);
    return dev->vt->clip_coef(dev, s, sumsq, max_norm, coef);
}
dl_dev_status dl_dev_scale_by(dl_dev *dev, dl_dev_stream *s, int64_t n, const float *coef, float *x)
{
    OPS_REQUIRE(n >= 0 && coef && (n == 0 || x), "dl_dev_scale_by: n %lld, coef %p, x %p", (long long)n,
                (const void *)coef, (void *)x);
    return dev->vt->scale_by(dev, s, n, coef, x);
}
dl_dev_status dl_dev_to_f32(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *x, float *y)
{
    OPS_REQUIRE((dt == DL_F16 || dt == DL_BF16) && n >= 0 && (n == 0 || (x && y)),
                "dl_dev_to_f32: dtype %s, n %lld, x %p, y %p", dl_dtype_name(dt), (long long)n, x, (void *)y);
    return dev->vt->to_f32(dev, s, dt, n, x, y);
}
dl_dev_status dl_dev_from_f32(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const float *x, void *y)
{
    OPS_REQUIRE(dt == DL_BF16 && n >= 0 && (n == 0 || (x && y)), "dl_dev_from_f32: dtype %s, n %lld, x %p, y %p",
                dl_dtype_name(dt), (long long)n, (const void *)x, y);
    return dev->vt->from_f32(dev, s, dt, n, x, y);
}
