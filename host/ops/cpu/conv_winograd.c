/* conv_winograd.c - Winograd F(2x2,3x3) and F(4x4,3x3) forward convolution, channels-last. */
#include "conv_winograd.h"
#include "core/cpu_isa.h"
#include "core/error.h"
#include "simd.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WINO_X86 1
#endif

#define VL 16        /* channels per transform step (one zmm, two ymm) */
#define A_MAX 6      /* largest transform size m + 2 */
#define CO_BLOCK 128 /* output channels per work item (a multiple of every NR) */
#define MAX_STRIPS 2 /* kernel row strips per work item: each weight panel read from L2 serves them all */

/* ---- product kernels: c[r * ldc + j] = sum_k a[r * lda + k] * b[k * NR + j], r < MR, j < NR,
 * the whole MR x NR tile stored (rows past the valid tiles read zeros and land in scratch) ---- */
typedef void (*wino_ukr_fn)(int K, const float *a, int64_t lda, const float *b, float *c, int64_t ldc);

typedef struct {
    int MR, NR;
    wino_ukr_fn fn;
} wino_kernel;

static void ukr_generic(int K, const float *a, int64_t lda, const float *b, float *c, int64_t ldc)
{
    float acc[4][16];
    memset(acc, 0, sizeof acc);
    for (int k = 0; k < K; k++) {
        for (int r = 0; r < 4; r++) {
            const float av = a[r * lda + k];
            for (int j = 0; j < 16; j++) acc[r][j] += av * b[k * 16 + j];
        }
    }
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 16; j++) c[r * ldc + j] = acc[r][j];
}

#ifdef WINO_X86
__attribute__((target("avx2,fma")))
static void ukr_avx2(int K, const float *a, int64_t lda, const float *b, float *c, int64_t ldc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda, *a5 = a + 5 * lda;
    for (int k = 0; k < K; k++) {
        const __m256 b0 = _mm256_loadu_ps(b + 16 * k), b1 = _mm256_loadu_ps(b + 16 * k + 8);
        __m256 t;
#define R6(r)                                    \
    t = _mm256_broadcast_ss(a##r + k);           \
    c##r##0 = _mm256_fmadd_ps(t, b0, c##r##0);   \
    c##r##1 = _mm256_fmadd_ps(t, b1, c##r##1);
        R6(0) R6(1) R6(2) R6(3) R6(4) R6(5)
#undef R6
    }
#define S6(r) _mm256_storeu_ps(c + r * ldc, c##r##0); _mm256_storeu_ps(c + r * ldc + 8, c##r##1);
    S6(0) S6(1) S6(2) S6(3) S6(4) S6(5)
#undef S6
}

#define WINO_AVX512 "avx512f,avx512vl,avx512dq,avx512bw,fma"
__attribute__((target(WINO_AVX512)))
static void ukr_avx512(int K, const float *a, int64_t lda, const float *b, float *c, int64_t ldc)
{
    const __m512 z = _mm512_setzero_ps();
    __m512 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    __m512 c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z, c70 = z, c71 = z;
    __m512 c80 = z, c81 = z, c90 = z, c91 = z, cA0 = z, cA1 = z, cB0 = z, cB1 = z;
    __m512 cC0 = z, cC1 = z, cD0 = z, cD1 = z;
    const float *a0 = a, *a7 = a + 7 * lda;
    const int64_t l2 = 2 * lda, l3 = 3 * lda;
    for (int k = 0; k < K; k++) {
        const __m512 b0 = _mm512_loadu_ps(b + 32 * k), b1 = _mm512_loadu_ps(b + 32 * k + 16);
        __m512 t;
#define R14(r, p)                                \
    t = _mm512_set1_ps(p);                       \
    c##r##0 = _mm512_fmadd_ps(t, b0, c##r##0);   \
    c##r##1 = _mm512_fmadd_ps(t, b1, c##r##1);
        R14(0, a0[k]) R14(1, a0[lda + k]) R14(2, a0[l2 + k]) R14(3, a0[l3 + k]) R14(4, a0[4 * lda + k])
        R14(5, a0[5 * lda + k]) R14(6, a0[6 * lda + k]) R14(7, a7[k]) R14(8, a7[lda + k]) R14(9, a7[l2 + k])
        R14(A, a7[l3 + k]) R14(B, a7[4 * lda + k]) R14(C, a7[5 * lda + k]) R14(D, a7[6 * lda + k])
#undef R14
    }
#define S14(r, i) _mm512_storeu_ps(c + i * ldc, c##r##0); _mm512_storeu_ps(c + i * ldc + 16, c##r##1);
    S14(0, 0) S14(1, 1) S14(2, 2) S14(3, 3) S14(4, 4) S14(5, 5) S14(6, 6)
    S14(7, 7) S14(8, 8) S14(9, 9) S14(A, 10) S14(B, 11) S14(C, 12) S14(D, 13)
#undef S14
}
#endif

static const wino_kernel k_generic = {4, 16, ukr_generic};
#ifdef WINO_X86
static const wino_kernel k_avx2 = {6, 16, ukr_avx2};
static const wino_kernel k_avx512 = {14, 32, ukr_avx512};
#endif

/* The kernel of the path dl_cpu_isa() chooses, like the GEMM's. */
static const wino_kernel *pick_kernel(void)
{
#ifdef WINO_X86
    switch (dl_cpu_isa()) {
    case DL_ISA_AVX512: return &k_avx512;
    case DL_ISA_AVX2: return &k_avx2;
    default: break;
    }
#endif
    return &k_generic;
}

/* ---- the transforms, VL channels at a time: in[k * is + c] -> out[i * os + c], c < VL ----
 * F(2,3): points 0, 1, -1; F(4,3): points 0, 1, -1, 2, -2 (and infinity for both). Written on
 * GCC vectors of VL floats (one zmm on the AVX-512 path, two ymm on the AVX2 one). */
#define INL static inline __attribute__((always_inline))
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vfu __attribute__((vector_size(VL * sizeof(float)), aligned(4), may_alias));
#define LD(p) (*(const vfu *)(p))
#define ST(p, v) (*(vfu *)(p) = (v))

/* weights: u = G g (3 -> m + 2) */
INL void tf_g(int m, const float *in, int64_t is, float *out, int64_t os)
{
    const vf g0 = LD(in), g1 = LD(in + is), g2 = LD(in + 2 * is), e = g0 + g2;
    if (m == 2) {
        ST(out, g0);
        ST(out + os, 0.5f * (e + g1));
        ST(out + 2 * os, 0.5f * (e - g1));
        ST(out + 3 * os, g2);
    } else {
        const vf q = g0 * (1.f / 24.f) + g2 * (1.f / 6.f), h = g1 * (1.f / 12.f);
        ST(out, g0 * 0.25f);
        ST(out + os, (e + g1) * (-1.f / 6.f));
        ST(out + 2 * os, (e - g1) * (-1.f / 6.f));
        ST(out + 3 * os, q + h);
        ST(out + 4 * os, q - h);
        ST(out + 5 * os, g2);
    }
}

/* inputs: v = B^T d (m + 2 -> m + 2) */
INL void tf_bt(int m, const float *in, int64_t is, float *out, int64_t os)
{
    const vf d0 = LD(in), d1 = LD(in + is), d2 = LD(in + 2 * is), d3 = LD(in + 3 * is);
    if (m == 2) {
        ST(out, d0 - d2);
        ST(out + os, d1 + d2);
        ST(out + 2 * os, d2 - d1);
        ST(out + 3 * os, d1 - d3);
    } else {
        const vf d4 = LD(in + 4 * is), d5 = LD(in + 5 * is);
        const vf p = d4 - 4.f * d2, q = d3 - 4.f * d1, r = d4 - d2, t = 2.f * (d3 - d1);
        ST(out, 4.f * d0 - 5.f * d2 + d4);
        ST(out + os, p + q);
        ST(out + 2 * os, p - q);
        ST(out + 3 * os, r + t);
        ST(out + 4 * os, r - t);
        ST(out + 5 * os, 4.f * d1 - 5.f * d3 + d5);
    }
}

/* outputs: y = A^T p (m + 2 -> m) */
INL void tf_at(int m, const float *in, int64_t is, float *out, int64_t os)
{
    const vf p0 = LD(in), p1 = LD(in + is), p2 = LD(in + 2 * is), p3 = LD(in + 3 * is);
    if (m == 2) {
        ST(out, p0 + p1 + p2);
        ST(out + os, p1 - p2 - p3);
    } else {
        const vf p4 = LD(in + 4 * is), p5 = LD(in + 5 * is);
        const vf s12 = p1 + p2, d12 = p1 - p2, s34 = p3 + p4, d34 = p3 - p4;
        ST(out, p0 + s12 + s34);
        ST(out + os, d12 + 2.f * d34);
        ST(out + 2 * os, s12 + 4.f * s34);
        ST(out + 3 * os, d12 + 8.f * d34 + p5);
    }
}

/* ---- the job ---- */
typedef struct {
    const dl_ctx *ctx;
    const dl_conv2d_shape *s;
    const wino_kernel *kr;
    int m, A, A2;          /* tile, patch side, transform elements */
    int Ho, Wo, th, tw;    /* output size, tiles per column and per row */
    int64_t ntiles;        /* N * th * tw */
    int T, ntb;            /* tiles per item (MR multiple), tile blocks */
    int CoB, ncb, npan;    /* Cout per item (NR multiple), Cout blocks, NR panels in all */
    int64_t ldv, ldm;      /* row strides of V and M */
    int64_t vxs, mxs, uxs; /* strides of V, M and U between transform elements (spread()) */
    const float *x;        /* [N, H, W, Cin] */
    const void *w;         /* [Cout, 3, 3, Cin] of dtype wdt */
    dl_dtype wdt;
    const float *b;        /* [Cout] or NULL */
    float *y;              /* [N, Ho, Wo, Cout] */
    float *U;              /* [A2, npan, Cin, NR] transformed weights, zero past Cout */
} wino_job;

/* dst[0 .. len) = weights from element off converted to f32, zeros up to VL */
INL void load_w(const wino_job *j, int64_t off, int len, float *dst)
{
    /* the panel's 9 NR rows are read VL at a time: more streams than the hardware prefetcher
     * follows, so ask for the line four steps ahead */
    __builtin_prefetch((const char *)j->w + (off + 4 * VL) * (j->wdt == DL_F32 ? 4 : 2));
    switch (j->wdt) {
    case DL_F16: {
        const uint16_t *p = (const uint16_t *)j->w + off;
        for (int i = 0; i < len; i++) dst[i] = dl_f16_to_f32(p[i]);
        break;
    }
    case DL_BF16: {
        const uint16_t *p = (const uint16_t *)j->w + off;
        for (int i = 0; i < len; i++) dst[i] = dl_bf16_to_f32(p[i]);
        break;
    }
    default:
        if (len == VL) {
            ST(dst, LD((const float *)j->w + off));
            return;
        }
        for (int i = 0; i < len; i++) dst[i] = ((const float *)j->w)[off + i];
        break;
    }
    for (int i = len; i < VL; i++) dst[i] = 0.f;
}

/* U for NR-wide panels [p0, p1): U[xi, p, ci, jj] = (G g G^T)[xi] of g = w[p * NR + jj, :, :, ci].
 * Per VL input channels the panel's raw weights are first transposed to gt[tap, c, jj] (zero
 * past Cout), then transformed VL output channels at a time straight into U's rows. */
DL_SIMD_RANGE(wino_weights, arg, p0, p1, tid)
{
    (void)tid;
    const wino_job *j = arg;
    const int Cin = j->s->Cin, Cout = j->s->Cout, NR = j->kr->NR, A = j->A, m = j->m;
    const int64_t xs = j->uxs;
    float gt[9 * VL * 32], row[VL], t[A_MAX * 3 * VL];
    for (int64_t p = p0; p < p1; p++) {
        for (int ci0 = 0; ci0 < Cin; ci0 += VL) {
            const int len = Cin - ci0 < VL ? Cin - ci0 : VL;
            for (int jj = 0; jj < NR; jj++) {
                const int co = (int)p * NR + jj;
                for (int tap = 0; tap < 9; tap++) {
                    if (co < Cout) load_w(j, ((int64_t)co * 9 + tap) * Cin + ci0, len, row);
                    else memset(row, 0, sizeof row);
                    for (int c = 0; c < VL; c++) gt[(tap * VL + c) * NR + jj] = row[c];
                }
            }
            for (int c = 0; c < len; c++) {
                for (int h = 0; h < NR; h += VL) {
                    const float *g = gt + c * NR + h; /* g[(kh * 3 + kw) * VL * NR] */
                    float *u = j->U + (p * Cin + ci0 + c) * NR + h;
                    for (int kw = 0; kw < 3; kw++) tf_g(m, g + kw * VL * NR, 3 * VL * NR, t + kw * VL, 3 * VL); // t[i][kw]
                    for (int i = 0; i < A; i++) tf_g(m, t + i * 3 * VL, VL, u + i * A * xs, xs);        // u[i][jx]
                }
            }
        }
    }
}

/* Ask for the input rows of tile's patch: A runs of A pixels (A * Cin contiguous floats each,
 * channels-last), walked while the previous tile is transformed (the transform reads them 16
 * channels at a time across 36 pixels, a pattern the hardware prefetcher does not follow). */
INL void prefetch_patch(const wino_job *j, int64_t tile)
{
    const dl_conv2d_shape *s = j->s;
    const int tx = (int)(tile % j->tw);
    const int64_t q = tile / j->tw;
    const int ty = (int)(q % j->th), n = (int)(q / j->th);
    const int ih0 = ty * j->m - s->pad_top;
    int iw0 = tx * j->m - s->pad_left, iw1 = iw0 + j->A;
    if (iw0 < 0) iw0 = 0;
    if (iw1 > s->W) iw1 = s->W;
    for (int i = 0; i < j->A; i++) {
        const int ih = ih0 + i;
        if (ih < 0 || ih >= s->H) continue;
        const char *row = (const char *)(j->x + (((int64_t)n * s->H + ih) * s->W + iw0) * s->Cin);
        const int64_t bytes = (int64_t)(iw1 - iw0) * s->Cin * (int64_t)sizeof(float);
        for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o);
    }
}

/* V[xi, r, :] for the tiles of block tb (rows past the last tile zeroed up to the strip end);
 * returns the number of valid tiles. */
INL int input_transform(const wino_job *j, int tb, float *V)
{
    const dl_conv2d_shape *s = j->s;
    const int Cin = s->Cin, A = j->A, m = j->m, MR = j->kr->MR;
    const int64_t t0 = (int64_t)tb * j->T;
    const int nv = (int)(j->ntiles - t0 < j->T ? j->ntiles - t0 : j->T);
    const int64_t xs = j->vxs;
    float d[A_MAX * A_MAX * VL], t[A_MAX * A_MAX * VL];
    const vf zero = {0};
    for (int r = 0; r < nv; r++) {
        const int64_t tile = t0 + r;
        const int tx = (int)(tile % j->tw);
        const int64_t q = tile / j->tw;
        const int ty = (int)(q % j->th), n = (int)(q / j->th);
        const int ih0 = ty * m - s->pad_top, iw0 = tx * m - s->pad_left;
        const float *xn = j->x + (int64_t)n * s->H * s->W * Cin;
        if (r + 1 < nv) prefetch_patch(j, tile + 1);
        for (int c0 = 0; c0 < Cin; c0 += VL) {
            const int len = Cin - c0 < VL ? Cin - c0 : VL;
            for (int i = 0; i < A; i++) {
                const int ih = ih0 + i;
                for (int jx = 0; jx < A; jx++) {
                    const int iw = iw0 + jx;
                    float *dd = d + (i * A + jx) * VL;
                    if (ih >= 0 && ih < s->H && iw >= 0 && iw < s->W) {
                        const float *src = xn + ((int64_t)ih * s->W + iw) * Cin + c0;
                        if (len == VL) ST(dd, LD(src));
                        else {
                            for (int c = 0; c < len; c++) dd[c] = src[c];
                            for (int c = len; c < VL; c++) dd[c] = 0.f;
                        }
                    } else {
                        ST(dd, zero);
                    }
                }
            }
            float *dst = V + r * j->ldv + c0;
            for (int jx = 0; jx < A; jx++) tf_bt(m, d + jx * VL, A * VL, t + jx * VL, A * VL); // t = B^T d
            for (int i = 0; i < A; i++) tf_bt(m, t + i * A * VL, VL, dst + i * A * xs, xs);    // V = t B
        }
    }
    const int rows = (nv + MR - 1) / MR * MR;
    for (int xi = 0; xi < j->A2; xi++)
        for (int r = nv; r < rows; r++) memset(V + xi * xs + r * j->ldv, 0, (size_t)Cin * sizeof(float));
    return nv;
}

/* y for the nv tiles of block tb, output channels of block cb, from M[xi, r, co - co0] */
INL void output_transform(const wino_job *j, int cb, int tb, int nv, const float *M)
{
    const dl_conv2d_shape *s = j->s;
    const int Cout = s->Cout, A = j->A, m = j->m;
    const int co0 = cb * j->CoB, co1 = co0 + j->CoB < Cout ? co0 + j->CoB : Cout;
    const int64_t xs = j->mxs;
    float t[A_MAX * A_MAX * VL], o[4 * 4 * VL], bias[VL];
    for (int r = 0; r < nv; r++) {
        const int64_t tile = (int64_t)tb * j->T + r;
        const int tx = (int)(tile % j->tw);
        const int64_t q = tile / j->tw;
        const int ty = (int)(q % j->th), n = (int)(q / j->th);
        const int oh0 = ty * m, ow0 = tx * m;
        const int mh = j->Ho - oh0 < m ? j->Ho - oh0 : m, mw = j->Wo - ow0 < m ? j->Wo - ow0 : m;
        float *yn = j->y + (int64_t)n * j->Ho * j->Wo * Cout;
        for (int c0 = co0; c0 < co1; c0 += VL) {
            const int len = co1 - c0 < VL ? co1 - c0 : VL;
            const float *src = M + r * j->ldm + (c0 - co0);
            for (int jx = 0; jx < A; jx++) tf_at(m, src + jx * xs, A * xs, t + jx * VL, A * VL); // t = A^T p
            for (int i = 0; i < m; i++) tf_at(m, t + i * A * VL, VL, o + i * m * VL, VL);       // o = t A
            for (int c = 0; c < VL; c++) bias[c] = j->b && c < len ? j->b[c0 + c] : 0.f;
            const vf bv = LD(bias);
            for (int i = 0; i < mh; i++) {
                for (int jx = 0; jx < mw; jx++) {
                    float *dst = yn + ((int64_t)(oh0 + i) * j->Wo + ow0 + jx) * Cout + c0;
                    const vf ov = LD(o + (i * m + jx) * VL) + bv;
                    if (len == VL) ST(dst, ov);
                    else for (int c = 0; c < len; c++) dst[c] = ov[c];
                }
            }
        }
    }
}

/* Work items (Cout block cb, tile block tb) with it = cb * ntb + tb: each item transforms its
 * tiles' inputs, multiplies them by the block's weights per transform element and writes
 * its outputs; nothing is shared between items but the read-only U. */
DL_SIMD_RANGE(wino_items, arg, i0, i1, tid)
{
    const wino_job *j = arg;
    const wino_kernel *kr = j->kr;
    const int MR = kr->MR, NR = kr->NR, Cin = j->s->Cin;
    const size_t vfl = (size_t)j->A2 * j->vxs, mfl = (size_t)j->A2 * j->mxs;
    float *V = dl_ws_thread(j->ctx, tid, (vfl + mfl) * sizeof(float)); // [A2, T, ldv] then M [A2, T, ldm]
    float *M = V + vfl;
    int last_tb = -1, nv = 0;
    for (int64_t it = i0; it < i1; it++) {
        const int cb = (int)(it / j->ntb), tb = (int)(it % j->ntb);
        if (tb != last_tb) nv = input_transform(j, tb, V);
        last_tb = tb;
        const int nstrips = (nv + MR - 1) / MR;
        const int pa = cb * (j->CoB / NR), pb = pa + j->CoB / NR < j->npan ? pa + j->CoB / NR : j->npan;
        for (int xi = 0; xi < j->A2; xi++) {
            const float *Vx = V + xi * j->vxs;
            float *Mx = M + xi * j->mxs;
            for (int p = pa; p < pb; p++) {
                const float *Ub = j->U + xi * j->uxs + (int64_t)p * Cin * NR;
                for (int st = 0; st < nstrips; st++)
                    kr->fn(Cin, Vx + (int64_t)st * MR * j->ldv, j->ldv, Ub, Mx + (int64_t)st * MR * j->ldm + (p - pa) * NR,
                           j->ldm);
            }
        }
        output_transform(j, cb, tb, nv, M);
    }
    dl_ws_release(j->ctx, V);
}

/* ---- entry points ---- */

/* A stride between the (m+2)^2 slices of V, M or U holding n floats each: whole 4 KiB pages
 * plus one cache line, so that the slices' rows written or read together fall into different
 * L1 and L2 sets (a power-of-two stride puts all 36 in one set). */
static int64_t spread(int64_t n)
{
    return (n + 1023) / 1024 * 1024 + 16;
}

int dl_cpu_conv2d_winograd_ok(const dl_conv2d_shape *s)
{
    return s && s->k == 3 && s->stride == 1 && s->N > 0 && s->H > 0 && s->W > 0 && s->Cin > 0 && s->Cout > 0 &&
           s->pad_top >= 0 && s->pad_top <= 1 && s->pad_left >= 0 && s->pad_left <= 1 && s->pad_bottom >= 0 &&
           s->pad_bottom <= 1 && s->pad_right >= 0 && s->pad_right <= 1 && s->H + s->pad_top + s->pad_bottom >= 3 &&
           s->W + s->pad_left + s->pad_right >= 3;
}

/* Cost in ns per (Cin, Cout) pair on one thread, fitted to bench_winograd on a Zen 4 core
 * (docs/perf.md): the direct convolution costs per output pixel; Winograd per tile (the
 * products and transforms) plus a fixed part (transforming and re-reading the weights, which
 * dominates when the image has few tiles, e.g. the UNet's 8x8 and 4x4 levels). */
static double cost_direct(const dl_conv2d_shape *s)
{
    return 0.171 * (double)s->N * dl_conv2d_out_h(s) * dl_conv2d_out_w(s);
}

static double cost_wino(const dl_conv2d_shape *s, int m)
{
    const double tiles = (double)s->N * ((dl_conv2d_out_h(s) + m - 1) / m) * ((dl_conv2d_out_w(s) + m - 1) / m);
    return m == 2 ? 12.0 + 0.335 * tiles : 43.0 + 0.875 * tiles;
}

int dl_cpu_conv2d_winograd_tile(const dl_conv2d_shape *s)
{
    return cost_wino(s, 2) < cost_wino(s, 4) ? 2 : 4;
}

int dl_cpu_conv2d_use_winograd(const dl_ctx *ctx, const dl_conv2d_shape *s)
{
    if (!dl_cpu_conv2d_winograd_ok(s)) return 0;
    int algo = ctx ? ctx->conv_algo : DL_CONV_AUTO;
    if (algo == DL_CONV_AUTO) {
        const char *e = getenv("DANLU_CONV");
        if (e && *e) {
            if (!strcmp(e, "direct")) algo = DL_CONV_DIRECT;
            else if (!strcmp(e, "winograd")) algo = DL_CONV_WINOGRAD;
            else {
                static atomic_int warned;
                if (!atomic_exchange(&warned, 1))
                    fprintf(stderr, "danlu: DANLU_CONV=%s ignored (direct or winograd)\n", e);
            }
        }
    }
    if (algo == DL_CONV_DIRECT) return 0;
    if (algo == DL_CONV_WINOGRAD) return 1;
    /* few channels: the transforms (per channel) outweigh the products (per channel pair) */
    if (s->Cin < 32 || s->Cout < 32) return 0;
    return cost_wino(s, dl_cpu_conv2d_winograd_tile(s)) < 0.85 * cost_direct(s);
}

void dl_cpu_conv2d_winograd_m(const dl_ctx *ctx, const dl_conv2d_shape *s, int m, const float *x, const void *w,
                              dl_dtype wdt, const float *b, float *y)
{
    DL_ASSERTF(dl_cpu_conv2d_winograd_ok(s), "conv2d winograd: unsupported shape");
    DL_ASSERTF(m == 2 || m == 4, "conv2d winograd: tile %d (2 or 4)", m);
    DL_ASSERTF(wdt == DL_F32 || wdt == DL_F16 || wdt == DL_BF16, "conv2d winograd: weight dtype %d", (int)wdt);
    DL_ASSERT(x && w && y);
    wino_job j;
    memset(&j, 0, sizeof j);
    j.ctx = ctx; j.s = s; j.kr = pick_kernel();
    j.m = m; j.A = m + 2; j.A2 = j.A * j.A;
    j.Ho = dl_conv2d_out_h(s); j.Wo = dl_conv2d_out_w(s);
    j.th = (j.Ho + m - 1) / m; j.tw = (j.Wo + m - 1) / m;
    j.ntiles = (int64_t)s->N * j.th * j.tw;
    j.x = x; j.w = w; j.wdt = wdt; j.b = b; j.y = y;
    const int MR = j.kr->MR, NR = j.kr->NR;
    j.ldv = (s->Cin + VL - 1) / VL * VL;
    if (j.ldv % 128 == 0) j.ldv += VL; /* rows of a strip off the same L1 sets */
    j.npan = (s->Cout + NR - 1) / NR;
    j.CoB = j.npan * NR < CO_BLOCK ? j.npan * NR : CO_BLOCK;
    j.ldm = j.CoB;
    j.ncb = (s->Cout + j.CoB - 1) / j.CoB;
    /* tile blocks of at most MAX_STRIPS strips, as even as the strip count allows */
    const int64_t need = (j.ntiles + MR - 1) / MR, nblk = (need + MAX_STRIPS - 1) / MAX_STRIPS;
    j.T = (int)((need + nblk - 1) / nblk) * MR;
    j.ntb = (int)((j.ntiles + j.T - 1) / j.T);
    j.vxs = spread((int64_t)j.T * j.ldv);
    j.mxs = spread((int64_t)j.T * j.ldm);
    j.uxs = spread((int64_t)j.npan * s->Cin * NR);

    dl_pool *pool = ctx ? ctx->pool : NULL;
    j.U = dl_ws_shared(ctx, DL_WS_CONV_WINO, (size_t)j.A2 * j.uxs * sizeof(float)); // [A2, npan, Cin, NR] (slices uxs apart)
    dl_parallel_for(pool, j.npan, 1, DL_SIMD_PICK(wino_weights), &j);
    dl_parallel_for(pool, (int64_t)j.ncb * j.ntb, 1, DL_SIMD_PICK(wino_items), &j);
    dl_ws_release(ctx, j.U);
}

void dl_cpu_conv2d_winograd(const dl_ctx *ctx, const dl_conv2d_shape *s, const float *x, const void *w, dl_dtype wdt,
                            const float *b, float *y)
{
    dl_cpu_conv2d_winograd_m(ctx, s, dl_cpu_conv2d_winograd_tile(s), x, w, wdt, b, y);
}
