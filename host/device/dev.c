/* dev.c - the device layer's front: picks an implementation, dispatches every call through its
 * table, and holds the argument checks both implementations share (cuBLASLt's and cuDNN's
 * documented parameter rules), so the emulator rejects exactly what the libraries reject. */
#include "device/dev_impl.h"

#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>

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
dl_dev_status dl_dev_synchronize(dl_dev *dev) { return dev->vt->synchronize(dev); }

dl_dev_status dl_dev_malloc(dl_dev *dev, void **p, size_t bytes) { return dev->vt->malloc_(dev, p, bytes); }
dl_dev_status dl_dev_free(dl_dev *dev, void *p) { return p ? dev->vt->free_(dev, p) : DL_DEV_SUCCESS; }
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
dl_dev_status dl_dev_attention_forward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                       const void *k, const void *v, void *o, float *lse)
{
    dl_dev_status st = dl_dev_check_sdpa(a);
    return st != DL_DEV_SUCCESS ? st : dev->vt->sdpa_forward(dev, s, 1, a, q, k, v, o, lse);
}
dl_dev_status dl_dev_attention_backward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                        const void *k, const void *v, const void *o, const void *dout,
                                        const float *lse, float *delta, void *dq, void *dk, void *dv)
{
    dl_dev_status st = dl_dev_check_sdpa(a);
    return st != DL_DEV_SUCCESS ? st : dev->vt->sdpa_backward(dev, s, 1, a, q, k, v, o, dout, lse, delta, dq, dk, dv);
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
