/* attention.c - multi-head scaled dot-product attention, forward and backward (CPU reference).
 *
 * Flash-attention-2 on the CPU; the Tq x Tk matrix is never formed.
 * Forward: a work item is (sample, head, tile of BQ queries). The thread packs the head's keys
 * (transposed) and values once, then streams key tiles of BK tokens: S = q k^T, running row
 * max and sum (online softmax), O += P v, and writes O / sum and the row logsumexp.
 * Backward: a work item is (sample, head, share of the key tiles; the share count is > 1 only
 * when there are fewer heads than threads). The thread packs the head's queries and output
 * gradients once, then for each of its key tiles streams the query tiles: S^T and dP^T, P from
 * the saved logsumexp, dS = P (dP - rowsum(dO o O)), accumulates dK and dV of the tile, and adds
 * dS k into dQ (a per-thread buffer, or per-share partials summed at the end).
 *
 * Tile products go through tile_gemm, a register-blocked kernel written with GCC vector
 * extensions: an AVX2 instantiation (8-wide, the build's baseline) and an AVX-512 one (16-wide,
 * 32 registers) selected at run time when the CPU has it; DANLU_CPU_ISA=avx2 forces the
 * former (tests run both). BQ and BK may be overridden at compile time for tuning. */
#include "attention.h"

#include "core/cpu_isa.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
#define PADW 16                   /* padding of packed token counts (the widest vector) */
#ifndef BQ
#define BQ 96                     /* query tile (multiple of 6 and of PADW) */
#endif
#ifndef BK
#define BK 128                    /* key tile (multiple of PADW) */
#endif
#define MR 6                      /* micro-kernel rows */

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Vector helpers for one vector width W (8: AVX2, 16: AVX-512), written with GCC vector
 * extensions. Generated twice by a macro because GCC lowers a vector wider than the ISA
 * through the stack, so each ISA gets its own native width.
 *   ukern_W:   C[mr, nv*W] (= or +=) op(A)[mr, K] * B[K, nv*W] (row stride ldb); op(A) is
 *              A [mr, K] with row stride lda or, with ta, the transpose of A stored [K, mr]
 *   vexp_W:    p[0..W) = exp(p[0..W)) for p <= 0, scheme and accuracy of dl_expf (softmax.h)
 *   rowmax_W:  max of p[0..n), n a multiple of W
 *   expsum_W:  p[i] = exp(p[i] - sub) for i < n (multiple of W), returns the sum
 *   expsubv_W: p[i] = exp(p[i] - sub[i]) for i < n (multiple of W) */
#define DEFINE_VEC(W)                                                                         \
    typedef float vf##W __attribute__((vector_size(W * sizeof(float))));                    \
    typedef int32_t vi##W __attribute__((vector_size(W * sizeof(int32_t))));                \
    AI void ukern_##W(const int ta, const int mr, const int nv, int K, const float *A,        \
                      int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,        \
                      int accumulate)                                                         \
    {                                                                                         \
        vf##W acc[MR][4];                                                                     \
        _Pragma("GCC unroll 6") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {                            \
                if (accumulate) memcpy(&acc[i][v], C + i * ldc + v * W, sizeof(vf##W));       \
                else acc[i][v] = (vf##W){0};                                                  \
            }                                                                                 \
        for (int k = 0; k < K; k++) {                                                         \
            vf##W b[4];                                                                       \
            const float *Bk = B + (int64_t)k * ldb;                                           \
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                              \
                memcpy(&b[v], Bk + v * W, sizeof(vf##W));                                     \
            _Pragma("GCC unroll 6") for (int i = 0; i < mr; i++) {                            \
                const float a = ta ? A[(int64_t)k * lda + i] : A[i * lda + k];                \
                _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) acc[i][v] += a * b[v];   \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 6") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                              \
                memcpy(C + i * ldc + v * W, &acc[i][v], sizeof(vf##W));                       \
    }                                                                                         \
    AI void vexp_##W(float *p)                                                                \
    {                                                                                         \
        /* inputs here are logits minus their row max or logsumexp: <= 0 up to rounding, so   \
         * only the lower end is clamped (x < -87.3, -inf included, gives 0) */               \
        vf##W x, lo = (vf##W){0} - 87.3f;                                                     \
        memcpy(&x, p, sizeof x);                                                              \
        vi##W under = x < lo;                                                                 \
        vf##W xc = (vf##W)(((vi##W)x & ~under) | ((vi##W)lo & under));                        \
        const vf##W magic = (vf##W){0} + 12582912.f;                                          \
        vf##W kf = (xc * 1.44269504088896341f + magic) - magic;                               \
        vf##W r = xc - kf * 0.693145751953125f;                                               \
        r = r - kf * 1.428606765330187045e-06f;                                               \
        vf##W e = (vf##W){0} + 1.0f / 5040;                                                   \
        e = e * r + 1.0f / 720;                                                               \
        e = e * r + 1.0f / 120;                                                               \
        e = e * r + 1.0f / 24;                                                                \
        e = e * r + 1.0f / 6;                                                                 \
        e = e * r + 0.5f;                                                                     \
        e = e * r + 1.0f;                                                                     \
        e = e * r + 1.0f;                                                                     \
        vi##W ki = __builtin_convertvector(kf, vi##W);                                        \
        e = e * (vf##W)((ki + 127) << 23);                                                    \
        e = (vf##W)((vi##W)e & ~under);                                                       \
        memcpy(p, &e, sizeof e);                                                              \
    }                                                                                         \
    /* horizontal sum / max of the W floats at p, as a halving tree */                        \
    AI float hsum_##W(float *t)                                                               \
    {                                                                                         \
        _Pragma("GCC unroll 4") for (int w = W / 2; w >= 1; w /= 2)                           \
            _Pragma("GCC unroll 8") for (int l = 0; l < w; l++) t[l] += t[l + w];             \
        return t[0];                                                                          \
    }                                                                                         \
    AI float hmax_##W(float *t)                                                               \
    {                                                                                         \
        _Pragma("GCC unroll 4") for (int w = W / 2; w >= 1; w /= 2)                           \
            _Pragma("GCC unroll 8") for (int l = 0; l < w; l++)                               \
                t[l] = t[l + w] > t[l] ? t[l + w] : t[l];                                     \
        return t[0];                                                                          \
    }                                                                                         \
    AI float rowmax_##W(const float *p, int n)                                                \
    {                                                                                         \
        vf##W m = (vf##W){0} - INFINITY, x;                                                   \
        for (int i = 0; i < n; i += W) {                                                      \
            memcpy(&x, p + i, sizeof x);                                                      \
            vi##W gt = x > m;                                                                 \
            m = (vf##W)(((vi##W)x & gt) | ((vi##W)m & ~gt));                                  \
        }                                                                                     \
        float t[W];                                                                           \
        memcpy(t, &m, sizeof m);                                                              \
        return hmax_##W(t);                                                                   \
    }                                                                                         \
    AI float expsum_##W(float *p, int n, float sub)                                           \
    {                                                                                         \
        vf##W s = (vf##W){0}, x;                                                              \
        for (int i = 0; i < n; i += W) {                                                      \
            memcpy(&x, p + i, sizeof x);                                                      \
            x -= sub;                                                                         \
            memcpy(p + i, &x, sizeof x);                                                      \
            vexp_##W(p + i);                                                                  \
            memcpy(&x, p + i, sizeof x);                                                      \
            s += x;                                                                           \
        }                                                                                     \
        float t[W];                                                                           \
        memcpy(t, &s, sizeof s);                                                              \
        return hsum_##W(t);                                                                   \
    }                                                                                         \
    AI void expsubv_##W(float *p, const float *sub, int n)                                    \
    {                                                                                         \
        vf##W x, y;                                                                           \
        for (int i = 0; i < n; i += W) {                                                      \
            memcpy(&x, p + i, sizeof x);                                                      \
            memcpy(&y, sub + i, sizeof y);                                                    \
            x -= y;                                                                           \
            memcpy(p + i, &x, sizeof x);                                                      \
            vexp_##W(p + i);                                                                  \
        }                                                                                     \
    }

DEFINE_VEC(8)
DEFINE_VEC(16)

/* ---- tile GEMM: C[m, ncols] (= or +=) A[m, K] * B[K, ncols], ncols a multiple of W ----- */

AI void ukern(const int W, const int ta, const int mr, const int nv, int K, const float *A,
              int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate)
{
    if (W == 8) ukern_8(ta, mr, nv, K, A, lda, B, ldb, C, ldc, accumulate);
    else ukern_16(ta, mr, nv, K, A, lda, B, ldb, C, ldc, accumulate);
}

/* One band of mr rows across ncols (a multiple of W) columns: NV vectors at a time, then
 * the remaining vectors in one pass over K. */
AI void band(const int W, const int ta, const int mr, const int NV, int ncols, int K,
             const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
             int accumulate)
{
    int j = 0;
    for (; j + NV * W <= ncols; j += NV * W)
        ukern(W, ta, mr, NV, K, A, lda, B + j, ldb, C + j, ldc, accumulate);
    B += j;
    C += j;
    switch ((ncols - j) / W) {
    case 3: if (NV > 3) ukern(W, ta, mr, 3, K, A, lda, B, ldb, C, ldc, accumulate); break;
    case 2: if (NV > 2) ukern(W, ta, mr, 2, K, A, lda, B, ldb, C, ldc, accumulate); break;
    case 1: if (NV > 1) ukern(W, ta, mr, 1, K, A, lda, B, ldb, C, ldc, accumulate); break;
    default: break;
    }
}

/* C[m, ncols] (= or +=) op(A)[m, K] * B[K, ncols]; op(A) = A [m, K] (row stride lda) or, with
 * ta, the transpose of A stored [K, m]. */
AI void tile_gemm_impl(const int W, const int NV, const int ta, int m, int ncols, int K,
                       const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                       int64_t ldc, int accumulate)
{
    int i = 0;
#define DL_ROWS(i) (ta ? A + (i) : A + (int64_t)(i) * lda)
    for (; i + MR <= m; i += MR)
        band(W, ta, MR, NV, ncols, K, DL_ROWS(i), lda, B, ldb, C + i * ldc, ldc, accumulate);
    const float *Ar = DL_ROWS(i);
#undef DL_ROWS
    float *Cr = C + i * ldc;
    switch (m - i) {
    case 5: band(W, ta, 5, NV, ncols, K, Ar, lda, B, ldb, Cr, ldc, accumulate); break;
    case 4: band(W, ta, 4, NV, ncols, K, Ar, lda, B, ldb, Cr, ldc, accumulate); break;
    case 3: band(W, ta, 3, NV, ncols, K, Ar, lda, B, ldb, Cr, ldc, accumulate); break;
    case 2: band(W, ta, 2, NV, ncols, K, Ar, lda, B, ldb, Cr, ldc, accumulate); break;
    case 1: band(W, ta, 1, NV, ncols, K, Ar, lda, B, ldb, Cr, ldc, accumulate); break;
    default: break;
    }
}

typedef void (*tile_gemm_fn)(int ta, int m, int ncols, int K, const float *A, int64_t lda,
                             const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate);

/* ---- forward --------------------------------------------------------------------------- */

typedef struct {
    dl_attention_shape s;
    const float *q, *k, *v, *o, *lse, *dout;
    float *out, *out_lse;
    int64_t nqb;          /* query tiles per (n, h) */
    int nsplit;           /* backward: key-tile shares per (n, h) */
    int dp;               /* d padded to the vector width */
    float *dq_part;       // [N, H, nsplit, Tq, dp] backward dQ partials (nsplit > 1)
    float *dq, *dk, *dv;
    const dl_ctx *ctx;    /* workspace owner: per-thread tiles */
} attn_job;


/* Row stride of a transposed head [d, T]: T padded, plus one cache line so that the d rows
 * do not alias in the L1 when T is a power of two. */
static inline int trans_ld(int T) { return (int)round_up(T, PADW) + PADW; }

/* Keys of head (n, h) transposed, Kt [d, trans_ld(Tk)], and values, Vp [Tkp, dp],
 * zero-padded. */
static void pack_kv(const dl_attention_shape *s, int dp, int64_t n, int64_t h, const float *k,
                    const float *v, float *Kt, float *Vp)
{
    const int d = s->d, Tkp = (int)round_up(s->Tk, PADW), ldt = trans_ld(s->Tk);
    const int64_t ld = (int64_t)s->H * d;
    const float *kh = k + (int64_t)n * s->Tk * ld + h * d; // [Tk, d] stride ld
    const float *vh = v + (int64_t)n * s->Tk * ld + h * d; // [Tk, d] stride ld
    for (int t0 = 0; t0 < Tkp; t0 += 16) /* 16 tokens at a time: whole lines of Kt */
        for (int c = 0; c < d; c++)
            for (int t = t0; t < t0 + 16; t++) Kt[(int64_t)c * ldt + t] = t < s->Tk ? kh[t * ld + c] : 0.0f;
    for (int t = 0; t < Tkp; t++) {
        if (t < s->Tk) memcpy(Vp + (int64_t)t * dp, vh + t * ld, (size_t)d * sizeof *Vp);
        else memset(Vp + (int64_t)t * dp, 0, (size_t)d * sizeof *Vp);
        memset(Vp + (int64_t)t * dp + d, 0, (size_t)(dp - d) * sizeof *Vp);
    }
}

AI void fwd_items_impl(const int W, const attn_job *j, int64_t it0, int64_t it1, int tid,
                       tile_gemm_fn gemm)
{
    const dl_attention_shape s = j->s;
    const int d = s.d, dp = j->dp, H = s.H, Tkp = (int)round_up(s.Tk, PADW), ldt = trans_ld(s.Tk);
    const int64_t ld = (int64_t)H * d;
    /* per-thread scratch; the packed keys/values serve every query tile of a head */
    float *buf = dl_ws_thread(j->ctx, tid, ((size_t)d * ldt + (size_t)Tkp * dp + (size_t)BQ * d + (size_t)BQ * BK +
                                            (size_t)BQ * dp + 2 * BQ) * sizeof(float));
    float *Kt = buf;                         // [d, ldt] keys of the head, transposed
    float *Vp = Kt + (size_t)d * ldt;        // [Tkp, dp] values of the head, zero-padded
    float *Qs = Vp + (size_t)Tkp * dp;       // [BQ, d] scaled queries
    float *S = Qs + BQ * d;                  // [BQ, BK] logits, then probabilities
    float *Oa = S + BQ * BK;                 // [BQ, dp] output accumulator
    float *mrow = Oa + BQ * dp;              // [BQ] running max
    float *lrow = mrow + BQ;                 // [BQ] running sum
    int64_t packed = -1;                     /* n * H + h of the head in Kt, Vp */

    for (int64_t it = it0; it < it1; it++) {
        const int64_t nh = it / j->nqb, n = nh / H, h = nh % H, qb = it % j->nqb;
        if (nh != packed) {
            pack_kv(&s, dp, n, h, j->k, j->v, Kt, Vp);
            packed = nh;
        }
        const int q0 = (int)(qb * BQ), bq = s.Tq - q0 < BQ ? s.Tq - q0 : BQ;
        const float *qh = j->q + ((int64_t)n * s.Tq + q0) * ld + h * d; // [bq, d] stride ld
        for (int i = 0; i < bq; i++)
            for (int c = 0; c < d; c++) Qs[i * d + c] = qh[i * ld + c] * s.scale;
        memset(Oa, 0, (size_t)bq * dp * sizeof *Oa);
        for (int i = 0; i < bq; i++) { mrow[i] = -INFINITY; lrow[i] = 0; }

        const int kend = s.causal ? (q0 + bq < s.Tk ? q0 + bq : s.Tk) : s.Tk;
        for (int k0 = 0; k0 < kend; k0 += BK) {
            const int bk = kend - k0 < BK ? kend - k0 : BK, bkp = (int)round_up(bk, W);
            gemm(0, bq, bkp, d, Qs, d, Kt + k0, ldt, S, BK, 0); // S = scale q k^T  [bq, bkp]
            for (int i = 0; i < bq; i++) {
                float *sr = S + i * BK; // [bkp]
                for (int jj = bk; jj < bkp; jj++) sr[jj] = -INFINITY;
                if (s.causal)
                    for (int jj = q0 + i - k0 + 1 > 0 ? q0 + i - k0 + 1 : 0; jj < bk; jj++) sr[jj] = -INFINITY;
                float rmax = W == 8 ? rowmax_8(sr, bkp) : rowmax_16(sr, bkp);
                rmax = rmax > mrow[i] ? rmax : mrow[i];
                const float alpha = expf(mrow[i] - rmax); /* 0 on the first tile */
                const float rsum = W == 8 ? expsum_8(sr, bkp, rmax) : expsum_16(sr, bkp, rmax);
                lrow[i] = lrow[i] * alpha + rsum;
                mrow[i] = rmax;
                if (alpha != 1.0f)
                    for (int c = 0; c < dp; c++) Oa[i * dp + c] *= alpha;
            }
            gemm(0, bq, dp, bkp, S, BK, Vp + (int64_t)k0 * dp, dp, Oa, dp, 1); // O += P V
        }
        float *oh = j->out + ((int64_t)n * s.Tq + q0) * ld + h * d; // [bq, d] stride ld
        for (int i = 0; i < bq; i++) {
            const float inv = 1.0f / lrow[i];
            for (int c = 0; c < d; c++) oh[i * ld + c] = Oa[i * dp + c] * inv;
            if (j->out_lse) j->out_lse[nh * s.Tq + q0 + i] = mrow[i] + logf(lrow[i]);
        }
    }
    dl_ws_release(j->ctx, buf);
}

/* ---- backward -------------------------------------------------------------------------- */

AI void bwd_items_impl(const int W, const attn_job *j, int64_t it0, int64_t it1, int tid,
                       tile_gemm_fn gemm)
{
    const dl_attention_shape s = j->s;
    const int d = s.d, dp = j->dp, H = s.H, ns = j->nsplit;
    const int Tqp = (int)round_up(s.Tq, PADW), ldt = trans_ld(s.Tq);
    const int64_t ld = (int64_t)H * d;
    float *buf = dl_ws_thread(j->ctx, tid, (2 * (size_t)d * ldt + 2 * (size_t)Tqp * dp + 2 * (size_t)Tqp +
                                            2 * (size_t)BK * dp + 2 * (size_t)BK * BQ +
                                            2 * (size_t)BK * dp + (ns == 1 ? (size_t)s.Tq * dp : 0)) * sizeof(float));
    float *Qt = buf;                        // [d, ldt] scaled queries of the head, transposed
    float *dOt = Qt + (size_t)d * ldt;      // [d, ldt] output gradient, transposed
    float *Qr = dOt + (size_t)d * ldt;      // [Tqp, dp] queries (unscaled), zero-padded
    float *dOr = Qr + (size_t)Tqp * dp;     // [Tqp, dp] output gradient, zero-padded
    float *Lr = dOr + (size_t)Tqp * dp;     // [Tqp] logsumexp (+inf on padding)
    float *Dr = Lr + Tqp;                   // [Tqp] rowsum(dO * O) (0 on padding)
    float *Kp = Dr + Tqp;                   // [BK, dp] key tile, zero-padded
    float *Vp = Kp + BK * dp;               // [BK, dp] value tile, zero-padded
    float *PT = Vp + BK * dp;               // [BK, BQ] logits, then P^T
    float *dST = PT + BK * BQ;              // [BK, BQ] dP^T, then dS^T (scaled)
    float *dKa = dST + BK * BQ;             // [BK, dp] dK accumulator
    float *dVa = dKa + BK * dp;             // [BK, dp] dV accumulator
    float *dQown = dVa + BK * dp;           // [Tq, dp] dQ accumulator (unsplit heads only)

    const int nkb = (s.Tk + BK - 1) / BK;
    int64_t packed = -1;
    for (int64_t it = it0; it < it1; it++) {
        const int64_t nh = it / ns, n = nh / H, h = nh % H;
        const int split = (int)(it % ns);
        const float *kh = j->k + (int64_t)n * s.Tk * ld + h * d;    // [Tk, d] stride ld
        const float *vh = j->v + (int64_t)n * s.Tk * ld + h * d;    // [Tk, d] stride ld
        if (nh != packed) { /* queries, output gradients and row statistics of the head */
            const float *qh = j->q + (int64_t)n * s.Tq * ld + h * d;    // [Tq, d] stride ld
            const float *oh = j->o + (int64_t)n * s.Tq * ld + h * d;    // [Tq, d] stride ld
            const float *gh = j->dout + (int64_t)n * s.Tq * ld + h * d; // [Tq, d] stride ld
            for (int t0 = 0; t0 < Tqp; t0 += 16)
                for (int c = 0; c < d; c++)
                    for (int t = t0; t < t0 + 16; t++) {
                        Qt[(int64_t)c * ldt + t] = t < s.Tq ? qh[t * ld + c] * s.scale : 0.0f;
                        dOt[(int64_t)c * ldt + t] = t < s.Tq ? gh[t * ld + c] : 0.0f;
                    }
            for (int t = 0; t < Tqp; t++) {
                float *qr = Qr + (int64_t)t * dp, *gr = dOr + (int64_t)t * dp;
                memset(qr, 0, (size_t)dp * sizeof *qr);
                memset(gr, 0, (size_t)dp * sizeof *gr);
                Lr[t] = INFINITY;
                Dr[t] = 0;
                if (t >= s.Tq) continue;
                memcpy(qr, qh + t * ld, (size_t)d * sizeof *qr);
                memcpy(gr, gh + t * ld, (size_t)d * sizeof *gr);
                double dl[8] = {0}; /* lanes: vectorises without reassociation */
                int c = 0;
                for (; c + 8 <= d; c += 8)
                    for (int l = 0; l < 8; l++) dl[l] += (double)gh[t * ld + c + l] * oh[t * ld + c + l];
                double dsum = ((dl[0] + dl[1]) + (dl[2] + dl[3])) + ((dl[4] + dl[5]) + (dl[6] + dl[7]));
                for (; c < d; c++) dsum += (double)gh[t * ld + c] * oh[t * ld + c];
                Lr[t] = j->lse[nh * s.Tq + t];
                Dr[t] = (float)dsum;
            }
            packed = nh;
        }
        /* dQ of this share: the split partials, or this thread's buffer when not split */
        float *dQa = ns > 1 ? j->dq_part + (size_t)it * s.Tq * dp : dQown; // [Tq, dp]
        memset(dQa, 0, (size_t)s.Tq * dp * sizeof *dQa);

        for (int kb = split; kb < nkb; kb += ns) { /* interleaved: balanced under causal */
            const int k0 = kb * BK, bk = s.Tk - k0 < BK ? s.Tk - k0 : BK;
            const int bkp = (int)round_up(bk, W);
            for (int jj = 0; jj < bkp; jj++) {
                memset(Kp + jj * dp, 0, (size_t)dp * sizeof *Kp);
                memset(Vp + jj * dp, 0, (size_t)dp * sizeof *Vp);
                if (jj >= bk) continue;
                memcpy(Kp + jj * dp, kh + (int64_t)(k0 + jj) * ld, (size_t)d * sizeof *Kp);
                memcpy(Vp + jj * dp, vh + (int64_t)(k0 + jj) * ld, (size_t)d * sizeof *Vp);
            }
            for (int jj = bk; jj < bkp; jj++) /* rows of dS^T read by the dQ product */
                memset(dST + jj * BQ, 0, BQ * sizeof *dST);
            memset(dKa, 0, (size_t)bk * dp * sizeof *dKa);
            memset(dVa, 0, (size_t)bk * dp * sizeof *dVa);

            for (int q0 = s.causal ? k0 : 0; q0 < s.Tq; q0 += BQ) {
                const int bq = s.Tq - q0 < BQ ? s.Tq - q0 : BQ, bqp = (int)round_up(bq, W);
                gemm(0, bk, bqp, d, Kp, dp, Qt + q0, ldt, PT, BQ, 0);   // S^T = scale k q^T
                gemm(0, bk, bqp, d, Vp, dp, dOt + q0, ldt, dST, BQ, 0); // dP^T = v dO^T
                for (int jj = 0; jj < bk; jj++) {
                    float *pr = PT + jj * BQ, *gr = dST + jj * BQ; // [bqp]
                    if (W == 8) expsubv_8(pr, Lr + q0, bqp);
                    else expsubv_16(pr, Lr + q0, bqp);
                    if (s.causal) /* query q0+i sees key k0+jj only when k0+jj <= q0+i */
                        for (int i = 0; i < bqp && q0 + i < k0 + jj; i++) pr[i] = 0;
                    const float *D = Dr + q0;
                    for (int i = 0; i < bqp; i++) gr[i] = pr[i] * (gr[i] - D[i]) * s.scale;
                }
                gemm(0, bk, dp, bqp, PT, BQ, dOr + (int64_t)q0 * dp, dp, dVa, dp, 1);  // dV += P^T dO
                gemm(0, bk, dp, bqp, dST, BQ, Qr + (int64_t)q0 * dp, dp, dKa, dp, 1);  // dK += dS^T q
                gemm(1, bq, dp, bkp, dST, BQ, Kp, dp, dQa + (int64_t)q0 * dp, dp, 1);   // dQ += dS k
            }
            for (int jj = 0; jj < bk; jj++) {
                if (j->dk) memcpy(j->dk + ((int64_t)n * s.Tk + k0 + jj) * ld + h * d, dKa + jj * dp, (size_t)d * sizeof(float));
                if (j->dv) memcpy(j->dv + ((int64_t)n * s.Tk + k0 + jj) * ld + h * d, dVa + jj * dp, (size_t)d * sizeof(float));
            }
        }
        if (ns == 1 && j->dq)
            for (int t = 0; t < s.Tq; t++)
                memcpy(j->dq + ((int64_t)n * s.Tq + t) * ld + h * d, dQa + (int64_t)t * dp, (size_t)d * sizeof(float));
    }
    dl_ws_release(j->ctx, buf);
}

/* dq[n, t, h*d + c] = sum over splits of the partials. Items: (n, h). */
static void bwd_reduce_dq(void *arg, int64_t it0, int64_t it1, int tid)
{
    const attn_job *j = arg;
    const dl_attention_shape s = j->s;
    const int d = s.d, dp = j->dp;
    const int64_t ld = (int64_t)s.H * d;
    for (int64_t nh = it0; nh < it1; nh++) {
        const int64_t n = nh / s.H, h = nh % s.H;
        const float *p = j->dq_part + (size_t)nh * j->nsplit * s.Tq * dp; // [nsplit, Tq, dp]
        for (int t = 0; t < s.Tq; t++) {
            float *dst = j->dq + ((int64_t)n * s.Tq + t) * ld + h * d; // [d]
            for (int c = 0; c < d; c++) {
                float acc = 0;
                for (int sp = 0; sp < j->nsplit; sp++) acc += p[((size_t)sp * s.Tq + t) * dp + c];
                dst[c] = acc;
            }
        }
    }
}

/* ---- instantiations and dispatch ------------------------------------------------------- */

/* AVX2 (the build's baseline): 8-wide vectors, 6 x 16 register tile. */
static void gemm_avx2(int ta, int m, int ncols, int K, const float *A, int64_t lda,
                      const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate)
{
    if (ta) tile_gemm_impl(8, 2, 1, m, ncols, K, A, lda, B, ldb, C, ldc, accumulate);
    else tile_gemm_impl(8, 2, 0, m, ncols, K, A, lda, B, ldb, C, ldc, accumulate);
}
static void fwd_avx2(void *arg, int64_t b, int64_t e, int tid) { fwd_items_impl(8, arg, b, e, tid, gemm_avx2); }
static void bwd_avx2(void *arg, int64_t b, int64_t e, int tid) { bwd_items_impl(8, arg, b, e, tid, gemm_avx2); }

#if defined(__x86_64__) && defined(__GNUC__)
#define DL_HAVE_AVX512_PATH 1
#define TGT512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
/* AVX-512 (32 registers): 16-wide vectors, 6 x 64 register tile. */
TGT512 static void gemm_avx512(int ta, int m, int ncols, int K, const float *A, int64_t lda,
                               const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate)
{
    if (ta) tile_gemm_impl(16, 4, 1, m, ncols, K, A, lda, B, ldb, C, ldc, accumulate);
    else tile_gemm_impl(16, 4, 0, m, ncols, K, A, lda, B, ldb, C, ldc, accumulate);
}
TGT512 static void fwd_avx512(void *arg, int64_t b, int64_t e, int tid) { fwd_items_impl(16, arg, b, e, tid, gemm_avx512); }
TGT512 static void bwd_avx512(void *arg, int64_t b, int64_t e, int tid) { bwd_items_impl(16, arg, b, e, tid, gemm_avx512); }
#endif

/* Vector width of the kernel to run: 16 when dl_cpu_isa() allows AVX-512, else 8. */
static int vector_width(void)
{
#ifdef DL_HAVE_AVX512_PATH
    if (dl_cpu_isa() >= DL_ISA_AVX512) return 16;
#endif
    return 8;
}

static void attn_check(dl_attention_shape s)
{
    DL_ASSERTF(s.N >= 0 && s.Tq >= 1 && s.Tk >= 1 && s.H >= 1 && s.d >= 1,
               "attention: bad shape N=%d Tq=%d Tk=%d H=%d d=%d", s.N, s.Tq, s.Tk, s.H, s.d);
    DL_ASSERTF(!s.causal || s.Tq == s.Tk, "attention: causal needs Tq == Tk (%d, %d)", s.Tq, s.Tk);
    DL_ASSERT(isfinite(s.scale));
}

void dl_cpu_attention_forward(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                              const float *k, const float *v, float *o, float *lse)
{
    attn_check(s);
    DL_ASSERT(q && k && v && o);
    attn_job j = {.s = s, .q = q, .k = k, .v = v, .out = o, .out_lse = lse,
                  .nqb = (s.Tq + BQ - 1) / BQ, .ctx = ctx};
    const int W = vector_width();
    j.dp = (int)round_up(s.d, W);
    dl_range_fn fn = fwd_avx2;
#ifdef DL_HAVE_AVX512_PATH
    if (W == 16) fn = fwd_avx512;
#endif
    dl_parallel_for(ctx ? ctx->pool : NULL, (int64_t)s.N * s.H * j.nqb, 1, fn, &j);
}

void dl_cpu_attention_backward(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                               const float *k, const float *v, const float *o,
                               const float *lse, const float *dout, float *dq, float *dk,
                               float *dv)
{
    attn_check(s);
    DL_ASSERT(q && k && v && o && lse && dout);
    if (s.N == 0) return;
    dl_pool *pool = ctx ? ctx->pool : NULL;
    const int64_t nh = (int64_t)s.N * s.H;
    const int nt = dl_pool_nthreads(pool), nkb = (s.Tk + BK - 1) / BK;
    /* split each head's key tiles over threads only when there are fewer heads than threads */
    int nsplit = (int)((nt + nh - 1) / nh);
    if (nsplit > nkb) nsplit = nkb;
    if (nsplit < 1) nsplit = 1;
    const int W = vector_width(), dp = (int)round_up(s.d, W);
    float *part = NULL;
    if (nsplit > 1) {
        part = dl_ws_shared(ctx, DL_WS_ATTN_DQ, (size_t)nh * nsplit * s.Tq * dp * sizeof *part); // [N, H, nsplit, Tq, dp]
    }
    attn_job j = {.s = s, .q = q, .k = k, .v = v, .o = o, .lse = lse, .dout = dout,
                  .nsplit = nsplit, .dp = dp, .dq_part = part, .dq = dq, .dk = dk, .dv = dv, .ctx = ctx};
    dl_range_fn fn = bwd_avx2;
#ifdef DL_HAVE_AVX512_PATH
    if (W == 16) fn = bwd_avx512;
#endif
    dl_parallel_for(pool, nh * nsplit, 1, fn, &j);
    if (dq && nsplit > 1) dl_parallel_for(pool, nh, 1, bwd_reduce_dq, &j);
    if (part) dl_ws_release(ctx, part);
}
