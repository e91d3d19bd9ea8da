/* conv2d.c - channels-last 2-D convolution on the CPU as implicit GEMMs (forward, dx, dw). */
#include "conv2d.h"
#include "conv_winograd.h"
#include "core/error.h"
#include "gemm.h"
#include "linear.h"

#include <stdlib.h>
#include <string.h>

static void check_shape(const dl_conv2d_shape *s)
{
    DL_ASSERT(s);
    DL_ASSERTF(s->N > 0 && s->H > 0 && s->W > 0 && s->Cin > 0 && s->Cout > 0,
               "conv2d: bad dims N=%d H=%d W=%d Cin=%d Cout=%d", s->N, s->H, s->W, s->Cin, s->Cout);
    DL_ASSERTF(s->k >= 1 && s->stride >= 1, "conv2d: bad k=%d stride=%d", s->k, s->stride);
    DL_ASSERTF(s->pad_top >= 0 && s->pad_left >= 0 && s->pad_bottom >= 0 && s->pad_right >= 0,
               "conv2d: bad padding (%d %d %d %d)", s->pad_top, s->pad_left, s->pad_bottom, s->pad_right);
    DL_ASSERTF(s->H + s->pad_top + s->pad_bottom >= s->k && s->W + s->pad_left + s->pad_right >= s->k,
               "conv2d: kernel %d larger than padded input %dx%d", s->k, s->H, s->W);
}

static int is_pointwise(const dl_conv2d_shape *s)
{
    return s->k == 1 && s->stride == 1 && !s->pad_top && !s->pad_left && !s->pad_bottom && !s->pad_right;
}

/* Copy len floats from src (NULL: zeros) to dst with element stride ds. */
static inline void put(float *dst, int64_t ds, const float *src, int len)
{
    if (ds == 1) {
        if (src) memcpy(dst, src, (size_t)len * sizeof(float));
        else memset(dst, 0, (size_t)len * sizeof(float));
    } else if (src) {
        for (int i = 0; i < len; i++) dst[i * ds] = src[i];
    } else {
        for (int i = 0; i < len; i++) dst[i * ds] = 0.f;
    }
}

/* ---- forward and dw: im2col of x, col[p, kk] with p = (n, oh, ow), kk = (kh, kw, ci) ---- */

typedef struct {
    const dl_conv2d_shape *s;
    int Ho, Wo;
    const float *x;   // [N, H, W, Cin]
} col_src;

/* col[p, kk0 .. kk0+len) -> dst[i * ds] */
static void col_segment(const col_src *c, int64_t p, int64_t kk0, int len, float *dst, int64_t ds)
{
    const dl_conv2d_shape *s = c->s;
    const int Cin = s->Cin;
    int ow = (int)(p % c->Wo);
    int64_t t = p / c->Wo;
    int oh = (int)(t % c->Ho), n = (int)(t / c->Ho);
    int ih0 = oh * s->stride - s->pad_top, iw0 = ow * s->stride - s->pad_left;
    const float *xn = c->x + (int64_t)n * s->H * s->W * Cin;
    int tap = (int)(kk0 / Cin), ci = (int)(kk0 % Cin), done = 0;
    while (done < len) {
        int seg = Cin - ci < len - done ? Cin - ci : len - done;
        int ih = ih0 + tap / s->k, iw = iw0 + tap % s->k;
        const float *src = NULL;
        if (ih >= 0 && ih < s->H && iw >= 0 && iw < s->W) src = xn + ((int64_t)ih * s->W + iw) * Cin + ci;
        put(dst + done * ds, ds, src, seg);
        done += seg;
        tap++;
        ci = 0;
    }
}

/* forward: op(A) = col [P, KK]; rows are pixels */
static void pack_col_rows(const void *user, int64_t m0, int mr, int64_t k0, int kc, float *dst,
                          int64_t rs, int64_t ks)
{
    for (int r = 0; r < mr; r++) col_segment(user, m0 + r, k0, kc, dst + r * rs, ks);
}

/* dw: op(A) = col^T [KK, P]; rows are (kh, kw, ci), the contraction runs over pixels. The
 * strip's rows split into the same (tap, channel range) segments for every pixel, so they are
 * computed once and the pixels are walked incrementally. */
static void pack_col_cols(const void *user, int64_t m0, int mr, int64_t k0, int kc, float *dst,
                          int64_t rs, int64_t ks)
{
    const col_src *c = user;
    const dl_conv2d_shape *s = c->s;
    const int Cin = s->Cin;
    int seg_kh[16], seg_kw[16], seg_ci[16], seg_r[16], seg_len[16], nseg = 0;
    for (int r = 0; r < mr;) {
        int64_t kk = m0 + r;
        int tap = (int)(kk / Cin), ci = (int)(kk % Cin);
        int len = Cin - ci < mr - r ? Cin - ci : mr - r;
        seg_kh[nseg] = tap / s->k; seg_kw[nseg] = tap % s->k;
        seg_ci[nseg] = ci; seg_r[nseg] = r; seg_len[nseg] = len;
        nseg++;
        r += len;
    }
    int ow = (int)(k0 % c->Wo);
    int64_t t = k0 / c->Wo;
    int oh = (int)(t % c->Ho), n = (int)(t / c->Ho);
    const int64_t img = (int64_t)s->H * s->W * Cin;
    for (int k = 0; k < kc; k++) {
        const float *xn = c->x + n * img;
        const int ih0 = oh * s->stride - s->pad_top, iw0 = ow * s->stride - s->pad_left;
        float *d = dst + k * ks;
        for (int g = 0; g < nseg; g++) {
            int ih = ih0 + seg_kh[g], iw = iw0 + seg_kw[g];
            float *dd = d + seg_r[g] * rs;
            const int len = seg_len[g];
            if (ih >= 0 && ih < s->H && iw >= 0 && iw < s->W) {
                const float *src = xn + ((int64_t)ih * s->W + iw) * Cin + seg_ci[g];
                if (rs == 1) for (int i = 0; i < len; i++) dd[i] = src[i];
                else for (int i = 0; i < len; i++) dd[i * rs] = src[i];
            } else {
                for (int i = 0; i < len; i++) dd[i * rs] = 0.f;
            }
        }
        if (++ow == c->Wo) {
            ow = 0;
            if (++oh == c->Ho) { oh = 0; n++; }
        }
    }
}

void dl_cpu_conv2d_forward(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                           const float *w, const float *b, float *y)
{
    dl_cpu_conv2d_forward_t(ctx, s, x, w, DL_F32, b, y);
}

void dl_cpu_conv2d_forward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                             const void *w, dl_dtype wdt, const float *b, float *y)
{
    check_shape(s);
    DL_ASSERT(x && w && y);
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    const int64_t P = (int64_t)s->N * Ho * Wo, KK = (int64_t)s->k * s->k * s->Cin;
    if (dl_cpu_conv2d_use_winograd(ctx, s)) { // 3x3 stride 1 where it pays (conv_winograd.h)
        dl_cpu_conv2d_winograd(ctx, s, x, w, wdt, b, y);
        return;
    }
    if (is_pointwise(s)) {
        // y[P, Cout] = x[P, Cin] · w[Cout, Cin]^T
        dl_sgemm_t(ctx, 0, 1, P, s->Cout, s->Cin, 1.f, x, s->Cin, w, wdt, s->Cin, 0.f, y, s->Cout);
    } else {
        // y[P, Cout] = col(x)[P, KK] · w[Cout, KK]^T
        col_src c = {s, Ho, Wo, x};
        dl_sgemm_packed_a_t(ctx, P, s->Cout, KK, 1.f, pack_col_rows, &c, 0, 1, w, wdt, KK, 0.f, y, s->Cout);
    }
    if (b) dl_cpu_bias_add(ctx, P, s->Cout, y, b);
}

/* ---- dx: gather-form transposed convolution, one GEMM per stride phase ----
 * Input pixel (h, w) with h = ph + stride*i, w = pw + stride*j receives
 * sum over taps (kh, kw) with kh = (ph + pad_top) mod stride (same for kw) of
 * dy[n, (h + pad_top - kh) / stride, (w + pad_left - kw) / stride, :] · w[:, kh, kw, :]. */

typedef struct {
    const dl_conv2d_shape *s;
    int Ho, Wo, ph, pw, Hp, Wp, ntaps;
    int tkh[64], tkw[64];
    const float *dy;  // [N, Ho, Wo, Cout]
} dx_src;

static void pack_dy_rows(const void *user, int64_t m0, int mr, int64_t k0, int kc, float *dst,
                         int64_t rs, int64_t ks)
{
    const dx_src *c = user;
    const dl_conv2d_shape *s = c->s;
    const int Cout = s->Cout, st = s->stride;
    for (int r = 0; r < mr; r++) {
        int64_t m = m0 + r;
        int j = (int)(m % c->Wp);
        int64_t t = m / c->Wp;
        int i = (int)(t % c->Hp), n = (int)(t / c->Hp);
        int hh = c->ph + st * i + s->pad_top, ww = c->pw + st * j + s->pad_left;
        const float *dyn = c->dy + (int64_t)n * c->Ho * c->Wo * Cout;
        float *d = dst + r * rs;
        int tap = (int)(k0 / Cout), co = (int)(k0 % Cout), done = 0;
        while (done < kc) {
            int seg = Cout - co < kc - done ? Cout - co : kc - done;
            int vh = hh - c->tkh[tap], vw = ww - c->tkw[tap];
            const float *src = NULL;
            if (vh >= 0 && vw >= 0 && vh / st < c->Ho && vw / st < c->Wo)
                src = dyn + ((int64_t)(vh / st) * c->Wo + vw / st) * Cout + co;
            put(d + done * ks, ks, src, seg);
            done += seg;
            tap++;
            co = 0;
        }
    }
}

typedef struct {
    const dl_conv2d_shape *s;
    const dx_src *phase;
    const void *w;    // [Cout, k, k, Cin] of type wdt
    dl_dtype wdt;
} wphase_src;

/* op(B)^T of the dx GEMM, [Cin, ntaps*Cout]: element (ci, t*Cout + co) = w[co, kh_t, kw_t, ci],
 * read straight from the weights (no rearranged copy). */
static void pack_w_phase(const void *user, int64_t m0, int mr, int64_t k0, int kc, float *dst,
                         int64_t rs, int64_t ks)
{
    const wphase_src *c = user;
    const dl_conv2d_shape *s = c->s;
    const int Cout = s->Cout, Cin = s->Cin, k = s->k;
    int t = (int)(k0 / Cout), co = (int)(k0 % Cout);
    if (c->wdt == DL_F32) {
        const float *w = c->w;
        for (int kk = 0; kk < kc; kk++) {
            const float *src = w + (((int64_t)co * k + c->phase->tkh[t]) * k + c->phase->tkw[t]) * Cin + m0;
            float *d = dst + kk * ks;
            if (rs == 1) for (int r = 0; r < mr; r++) d[r] = src[r];
            else for (int r = 0; r < mr; r++) d[r * rs] = src[r];
            if (++co == Cout) { co = 0; t++; }
        }
        return;
    }
    const uint16_t *w = c->w; /* fp16 / bf16: each run converted on the way */
    float row[64];            /* mr <= the widest micro-tile (32) */
    DL_ASSERT(mr <= 64);
    for (int kk = 0; kk < kc; kk++) {
        const uint16_t *src = w + (((int64_t)co * k + c->phase->tkh[t]) * k + c->phase->tkw[t]) * Cin + m0;
        float *d = dst + kk * ks;
        if (rs == 1) dl_run16_to_f32(d, src, c->wdt, mr);
        else {
            dl_run16_to_f32(row, src, c->wdt, mr);
            for (int r = 0; r < mr; r++) d[r * rs] = row[r];
        }
        if (++co == Cout) { co = 0; t++; }
    }
}

typedef struct {
    const float *src; float *dst;
    int H, W, Hp, Wp, ph, pw, st, C;
} scatter_job;

/* dx[n, ph + st*i, pw + st*j, :] = tmp[(n, i, j), :] for rows (n, i) in the range */
static void scatter_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const scatter_job *j = arg;
    for (int64_t r = r0; r < r1; r++) {
        int i = (int)(r % j->Hp), n = (int)(r / j->Hp);
        int h = j->ph + j->st * i;
        for (int q = 0; q < j->Wp; q++) {
            int w = j->pw + j->st * q;
            memcpy(j->dst + (((int64_t)n * j->H + h) * j->W + w) * j->C,
                   j->src + (r * j->Wp + q) * j->C, (size_t)j->C * sizeof(float));
        }
    }
}

static void conv2d_dx(const dl_ctx *ctx, const dl_conv2d_shape *s, int Ho, int Wo,
                      const void *w, dl_dtype wdt, const float *dy, float *dx)
{
    const int st = s->stride, k = s->k, Cin = s->Cin, Cout = s->Cout;
    DL_ASSERTF(k * k <= 64, "conv2d: kernel %d too large for the dx path", k);
    float *tmp = NULL;
    if (st > 1) {
        int64_t hp = (s->H + st - 1) / st, wp = (s->W + st - 1) / st;
        tmp = dl_ws_shared(ctx, DL_WS_CONV_DX, (size_t)(s->N * hp * wp * Cin) * sizeof(float)); // [N, hp, wp, Cin]
    }
    for (int ph = 0; ph < st && ph < s->H; ph++) {
        for (int pw = 0; pw < st && pw < s->W; pw++) {
            dx_src c = {0};
            c.s = s; c.Ho = Ho; c.Wo = Wo; c.ph = ph; c.pw = pw; c.dy = dy;
            c.Hp = (s->H - ph + st - 1) / st;
            c.Wp = (s->W - pw + st - 1) / st;
            for (int kh = 0; kh < k; kh++)
                for (int kw = 0; kw < k; kw++)
                    if ((ph + s->pad_top - kh) % st == 0 && (pw + s->pad_left - kw) % st == 0) {
                        c.tkh[c.ntaps] = kh;
                        c.tkw[c.ntaps] = kw;
                        c.ntaps++;
                    }
            const int64_t M = (int64_t)s->N * c.Hp * c.Wp;
            float *out = st > 1 ? tmp : dx;
            if (c.ntaps == 0) {
                memset(out, 0, (size_t)(M * Cin) * sizeof(float));
            } else {
                // out[M, Cin] = gather(dy)[M, ntaps*Cout] · wphase[ntaps*Cout, Cin]
                wphase_src wp = {s, &c, w, wdt};
                dl_sgemm_cb(ctx, M, Cin, (int64_t)c.ntaps * Cout, 1.f, pack_dy_rows, &c, 0, pack_w_phase, &wp, 1,
                            0.f, out, Cin);
            }
            if (st > 1) {
                scatter_job sj = {tmp, dx, s->H, s->W, c.Hp, c.Wp, ph, pw, st, Cin};
                dl_parallel_for(ctx ? ctx->pool : NULL, (int64_t)s->N * c.Hp, 8, scatter_rows, &sj);
            }
        }
    }
    if (tmp) dl_ws_release(ctx, tmp);
}

typedef struct { const float *dy; int64_t C; } dyt_src;

/* dy^T [Cout, P] as op(A): element (co, p) = dy[p, co] */
static void pack_dyt(const void *user, int64_t m0, int mr, int64_t k0, int kc, float *dst, int64_t rs,
                     int64_t ks)
{
    const dyt_src *d = user;
    for (int k = 0; k < kc; k++) {
        const float *src = d->dy + (k0 + k) * d->C + m0;
        float *o = dst + k * ks;
        if (rs == 1) for (int r = 0; r < mr; r++) o[r] = src[r];
        else for (int r = 0; r < mr; r++) o[r * rs] = src[r];
    }
}

typedef struct { const float *src; float *dst; int64_t rows, cols; } transpose_job;

/* dst[c, r] = src[r, c] for destination rows c in range, in 64-row tiles (cache friendly) */
static void transpose_rows(void *arg, int64_t c0, int64_t c1, int tid)
{
    (void)tid;
    const transpose_job *j = arg;
    for (int64_t r0 = 0; r0 < j->rows; r0 += 64) {
        int64_t r1 = r0 + 64 < j->rows ? r0 + 64 : j->rows;
        for (int64_t c = c0; c < c1; c++)
            for (int64_t r = r0; r < r1; r++) j->dst[c * j->rows + r] = j->src[r * j->cols + c];
    }
}

void dl_cpu_conv2d_backward(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                            const float *w, const float *dy, float *dx, float *dw, float *db)
{
    dl_cpu_conv2d_backward_t(ctx, s, x, w, DL_F32, dy, dx, dw, db);
}

void dl_cpu_conv2d_backward_t(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x,
                              const void *w, dl_dtype wdt, const float *dy, float *dx, float *dw, float *db)
{
    check_shape(s);
    DL_ASSERT(dy);
    const int Ho = dl_conv2d_out_h(s), Wo = dl_conv2d_out_w(s);
    const int64_t P = (int64_t)s->N * Ho * Wo, KK = (int64_t)s->k * s->k * s->Cin;
    const int Cin = s->Cin, Cout = s->Cout;
    if (db) dl_cpu_bias_grad(ctx, P, Cout, dy, db);
    if (dx) {
        DL_ASSERT(w);
        if (is_pointwise(s)) // dx[P, Cin] = dy[P, Cout] · w[Cout, Cin]
            dl_sgemm_t(ctx, 0, 0, P, Cin, Cout, 1.f, dy, Cout, w, wdt, Cin, 0.f, dx, Cin);
        else
            conv2d_dx(ctx, s, Ho, Wo, w, wdt, dy, dx);
    }
    if (dw) {
        DL_ASSERT(x);
        if (is_pointwise(s)) { // dw[Cout, Cin] = dy[P, Cout]^T · x[P, Cin]
            dl_sgemm(ctx, 1, 0, Cout, Cin, P, 1.f, dy, Cout, x, Cin, 0.f, dw, Cin);
        } else if (P < 2 * (int64_t)Cout) {
            // few pixels: dw[Cout, KK] = dy[P, Cout]^T · col(x)[P, KK], col packed as B
            col_src c = {s, Ho, Wo, x};
            dyt_src d = {dy, Cout};
            dl_sgemm_cb(ctx, Cout, KK, P, 1.f, pack_dyt, &d, 1, pack_col_cols, &c, 1, 0.f, dw, KK);
        } else {
            // dwT[KK, Cout] = col(x)^T[KK, P] · dy[P, Cout], then dw[Cout, KK] = dwT^T
            float *dwt = dl_ws_shared(ctx, DL_WS_CONV_DW, (size_t)(KK * Cout) * sizeof(float)); // [KK, Cout]
            col_src c = {s, Ho, Wo, x};
            dl_sgemm_packed_a(ctx, KK, Cout, P, 1.f, pack_col_cols, &c, 1, 0, dy, Cout, 0.f, dwt, Cout);
            transpose_job tj = {dwt, dw, KK, Cout};
            dl_parallel_for(ctx ? ctx->pool : NULL, Cout, 8, transpose_rows, &tj);
            dl_ws_release(ctx, dwt);
        }
    }
}
