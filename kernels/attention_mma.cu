/* attention_mma.cu - FlashAttention-2-style attention forward on sm_80+ tensor cores (mma.sync,
 * ldmatrix, cp.async through kernels/mma.cuh), bf16 storage, fp32 accumulation.
 *
 * Same contract and outputs as dl_cuda_attention_forward (kernels/dl_kernels.h): q [N, Tq, ldq]
 * with head h at columns [h·d, h·d + d), likewise k, v [N, Tk, ld], o [N, Tq, ldo], lse [N, H, Tq]
 * (natural log), no mask, head dims 40, 64, 80, 160; bf16 only (-1 otherwise).
 *
 * ---- How it works -----------------------------------------------------------------------------
 *  - A CTA owns BR = 16·NW queries of one (n, h); warp w owns rows [16w, 16w + 16). It streams
 *    the keys in tiles of BC through shared memory: K and V of tile j + 1 are in flight (cp.async,
 *    16-byte copies, one commit group each) while tile j is used; two stages of each.
 *  - Q is copied once and read once into registers with ldmatrix (A fragments of every k-step);
 *    the shared copy of a warp's Q rows later stages its O rows for 16-byte global stores.
 *  - S = Q·Kᵀ with mma.sync m16n8k16 (K read with ldmatrix: [key][d] is Bᵀ row-major), fp32
 *    accumulators in registers; online softmax in registers on the accumulator layout (a lane
 *    holds rows g and g + 8, the 4 lanes of a group share a row: 2 xor-shuffles per max); the
 *    scale is folded into one FFMA per score: p = exp2(s·scale·log2 e − m·scale·log2 e), exp2
 *    being one MUFU.EX2; the row sums stay per lane until the end (FA2's deferred reduction).
 *  - P is rounded to bf16 in registers and reused as the A operand of P·V: the accumulator
 *    layout of two adjacent n8 tiles is exactly the A layout of one k16 step, so no shared-memory
 *    round trip. V comes in with ldmatrix.trans ([key][d] is B row-major). O accumulates in fp32
 *    registers, rescaled per tile by exp2(m_old − m_new); at the end O / l and lse = m + ln l.
 *  - Shared-memory tiles are rows of d bf16 = C = d/8 16-byte chunks, XOR-swizzled without
 *    padding: chunk c of row r lives at chunk c ^ ((r >> (3 − b)) & (2^b − 1)) with 2^b the
 *    largest power of two (≤ 8) dividing C. ldmatrix reads one chunk column of 8 rows; with row
 *    stride C chunks rows r and r + 8/2^b share banks, and the XOR (which stays inside an
 *    aligned group of 2^b chunks, hence inside the row) separates them: conflict-free for
 *    C = 5 (d 40, odd stride needs none), 8 (d 64, c ^ r%8), 10 (d 80), 20 (d 160).
 *  - Head dims without padding: d = 64, 80, 160 are whole k16 steps (80 = 5·16) and every d is a
 *    whole number of n8 tiles of O. d = 40 = 2·16 + 8: the last 8 columns of Q·Kᵀ are one
 *    m16n8k8 MMA (A from ldmatrix x2, B from ldmatrix x4 over four key tiles). Chosen over a
 *    zero-filled half of an m16n8k16: HMMA.1688 costs half an HMMA.16816, so the k8 step does
 *    no wasted tensor work (a zero-filled k16 would make S for d 40 cost 3 k-steps instead of
 *    2.5, +10 % of the tensor time at SD1.5's most common attention shape), and it needs no
 *    zeroed registers or shared memory.
 *  - Masking: rows past Tq / Tk are loaded from the last valid row (clamped addresses: finite
 *    values, never out of bounds); scores of keys ≥ Tk are −inf for the max and p = 0 exactly,
 *    only in the last, partial key tile; query rows ≥ Tq are not stored.
 *  - scale < 0 flips the sign bits of the Q fragments once, so the kernel always works with
 *    |scale| (the max of the raw scores is then the max of the scaled ones).
 *  - Tiles: d 40/64/80: 8 warps × 16 rows = 128 queries, 64-key tiles (S 32, O ≤ 40, Q ≤ 20
 *    registers per lane); d 160: 4 warps = 64 queries, 32-key tiles (O 80 + Q 40 registers).
 *    Shared memory: Q + 2 stages × (K + V) = 30 / 48 / 60 / 60 KiB.
 *  - Pointers 16-byte aligned and ld multiples of 8 (every SD layout) take the cp.async and
 *    16-byte-store path; anything else the same kernel with plain 2-byte loads and stores.
 *
 * Under the SIMT emulator (tests/kernels/test_kernels_attention_mma.cpp) mma.cuh models the
 * PTX fragment layouts and the cp.async groups, so a wrong fragment mapping, a read of a stage
 * before its wait, or (in random interleaving) a missing __syncthreads fails the test. The
 * FAULT template argument exists only for those tests (launchers instantiate FAULT = 0).
 *
 * Speed on a real card is still to be measured (scripts/gpu_check.sh, docs/perf.md). */
#include "common.cuh"
#include "launch.cuh"
#include "mma.cuh"
#include "dl_kernels.h"

#include <math.h>
#include <string.h>

typedef __nv_bfloat16 dl_bf16;

/* Tile shapes of one head dim; see the file comment. */
template <int D_, int NW_, int BC_>
struct AttnMmaShape {
    static constexpr int D = D_;
    static constexpr int NW = NW_;           // warps per CTA
    static constexpr int BR = 16 * NW;       // queries per CTA
    static constexpr int BC = BC_;           // keys per tile
    static constexpr int THREADS = 32 * NW;
    static constexpr int CH = D / 8;         // 16-byte chunks per row
    static constexpr int KS = D / 16;        // whole k16 steps of Q·Kᵀ
    static constexpr bool K8 = D % 16 != 0;  // plus one k8 step (d = 40)
    static constexpr int NT = BC / 8;        // n8 tiles of S
    static constexpr int ND = D / 8;         // n8 tiles of O
    static constexpr int PK = BC / 16;       // k16 steps of P·V
    static constexpr int SW_BITS = CH % 8 == 0 ? 3 : CH % 4 == 0 ? 2 : CH % 2 == 0 ? 1 : 0;
    static constexpr int Q_BYTES = BR * D * 2;
    static constexpr int KV_BYTES = BC * D * 2; // one stage of K (or V)
    static constexpr size_t SMEM = (size_t)Q_BYTES + 4 * (size_t)KV_BYTES;
    static_assert(D % 8 == 0 && BC % 32 == 0, "tile shape");

    /* Byte offset of chunk c of row r in a swizzled tile (see the file comment). */
    static __device__ __forceinline__ int swz(int r, int c)
    {
        return (r * CH + (c ^ ((r >> (3 - SW_BITS)) & ((1 << SW_BITS) - 1)))) * 16;
    }
};

template <int D> struct AttnMmaCfg;
template <> struct AttnMmaCfg<40> : AttnMmaShape<40, 8, 64> {};
template <> struct AttnMmaCfg<64> : AttnMmaShape<64, 8, 64> {};
template <> struct AttnMmaCfg<80> : AttnMmaShape<80, 8, 64> {};
template <> struct AttnMmaCfg<160> : AttnMmaShape<160, 4, 32> {};

/* 2^x: one MUFU.EX2 on the GPU (relative error ~2^-22, flushes results below 2^-126 to 0). */
static __device__ __forceinline__ float attn_exp2(float x)
{
#ifdef __CUDACC__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

/* Two floats rounded to bf16 and packed, lo in the low half (the mma operand order). */
static __device__ __forceinline__ uint32_t attn_pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
}

/* Copies rows [row0, row0 + ROWS) of a head (row t at src + t·ld, d contiguous bf16) into a
 * swizzled tile; rows ≥ T repeat row T − 1. ALIGNED: cp.async 16-byte copies in the open group;
 * else plain loads, stored at once. */
template <class C, int ROWS, bool ALIGNED>
static __device__ __forceinline__ void attn_mma_load_tile(unsigned char *dst, const dl_bf16 *src,
                                                          int64_t ld, int row0, int T, int tid)
{
    constexpr int TOTAL = ROWS * C::CH, ITERS = (TOTAL + C::THREADS - 1) / C::THREADS;
    DL_UNROLL
    for (int it = 0; it < ITERS; it++) {
        const int i = tid + it * C::THREADS;
        if (TOTAL % C::THREADS == 0 || i < TOTAL) {
            const int r = i / C::CH, c = i - r * C::CH;
            const int row = min(row0 + r, T - 1);
            const dl_bf16 *g = src + (int64_t)row * ld + c * 8;
            unsigned char *s = dst + C::swz(r, c);
            if (ALIGNED) {
                dl_cp_async_16(s, g);
            } else {
                const unsigned short *gs = (const unsigned short *)g;
                uint4 v;
                v.x = (uint32_t)gs[0] | (uint32_t)gs[1] << 16;
                v.y = (uint32_t)gs[2] | (uint32_t)gs[3] << 16;
                v.z = (uint32_t)gs[4] | (uint32_t)gs[5] << 16;
                v.w = (uint32_t)gs[6] | (uint32_t)gs[7] << 16;
                *(uint4 *)s = v;
            }
        }
    }
}

/* S (16 × BC, this warp's rows) = Q·Kᵀ of one key tile. */
template <class C>
static __device__ __forceinline__ void attn_mma_scores(float (&s)[C::NT][4], const uint32_t (&qf)[C::KS][4],
                                                       const uint32_t (&qt)[2], const unsigned char *Kt,
                                                       int lane)
{
    DL_UNROLL
    for (int nt = 0; nt < C::NT; nt++)
        DL_UNROLL
        for (int e = 0; e < 4; e++) s[nt][e] = 0.0f;
    DL_UNROLL
    for (int ks = 0; ks < C::KS; ks++)
        DL_UNROLL
        for (int np = 0; np < C::NT / 2; np++) {
            /* matrices: keys of n-tile 2np, chunks 2ks and 2ks + 1; then n-tile 2np + 1 */
            uint32_t b[4];
            dl_ldmatrix_x4(b, Kt + C::swz(16 * np + 8 * (lane >> 4) + (lane & 7), 2 * ks + ((lane >> 3) & 1)));
            dl_mma_m16n8k16_bf16(s[2 * np], qf[ks], b, s[2 * np]);
            dl_mma_m16n8k16_bf16(s[2 * np + 1], qf[ks], b + 2, s[2 * np + 1]);
        }
    if (C::K8) {
        DL_UNROLL
        for (int nq = 0; nq < C::NT / 4; nq++) {
            /* matrix i: keys of n-tile 4nq + i, the last chunk (d 32..39) */
            uint32_t b[4];
            dl_ldmatrix_x4(b, Kt + C::swz(32 * nq + lane, 2 * C::KS));
            DL_UNROLL
            for (int i = 0; i < 4; i++) dl_mma_m16n8k8_bf16(s[4 * nq + i], qt, b + i, s[4 * nq + i]);
        }
    }
}

/* grid (ceil(Tq / BR), H, N), block THREADS, dynamic shared memory C::SMEM. sl = |scale|·log2 e,
 * sc = |scale|, qsign = 0x80008000 when scale < 0 (flips the Q fragments), else 0.
 * FAULT (tests only): 1 drops the barrier after the K wait, 2 waits one cp.async group short. */
template <int D, bool ALIGNED, int FAULT>
__global__ void __launch_bounds__(AttnMmaCfg<D>::THREADS)
attention_forward_mma_kernel(const dl_bf16 *q, int64_t ldq, const dl_bf16 *k, int64_t ldk, const dl_bf16 *v,
                             int64_t ldv, dl_bf16 *o, int64_t ldo, float *lse, int H, int Tq, int Tk, float sl,
                             float sc, uint32_t qsign)
{
    typedef AttnMmaCfg<D> C;
    constexpr int WAIT = FAULT == 2 ? 3 : 2; // groups left in flight: the other operand, the next K
    DL_DYNAMIC_SMEM(unsigned char, smem);
    unsigned char *Qs = smem;                              // [BR][D]
    unsigned char *Ks = smem + C::Q_BYTES;                 // 2 stages of [BC][D]
    unsigned char *Vs = Ks + 2 * C::KV_BYTES;              // 2 stages of [BC][D]

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int wr = warp * 16; // this warp's first row in the CTA tile
    const dl_bf16 *qh = q + (int64_t)n * Tq * ldq + (int64_t)h * D;
    const dl_bf16 *kh = k + (int64_t)n * Tk * ldk + (int64_t)h * D;
    const dl_bf16 *vh = v + (int64_t)n * Tk * ldv + (int64_t)h * D;
    const int ntiles = (Tk + C::BC - 1) / C::BC;

    /* groups: [Q], [K0], [V0], then per tile j: [K j+1], [V j+1] (empty past the end) */
    attn_mma_load_tile<C, C::BR, ALIGNED>(Qs, qh, ldq, row0, Tq, tid);
    dl_cp_async_commit();
    attn_mma_load_tile<C, C::BC, ALIGNED>(Ks, kh, ldk, 0, Tk, tid);
    dl_cp_async_commit();
    attn_mma_load_tile<C, C::BC, ALIGNED>(Vs, vh, ldv, 0, Tk, tid);
    dl_cp_async_commit();
    dl_cp_async_wait<2>(); // Q
    __syncthreads();

    /* Q fragments, once: x4 matrices rows 0-7 / 8-15 of chunk 2ks, then of chunk 2ks + 1 */
    uint32_t qf[C::KS][4], qt[2] = {0u, 0u};
    const int qrow = wr + (lane & 7) + 8 * ((lane >> 3) & 1);
    DL_UNROLL
    for (int ks = 0; ks < C::KS; ks++) {
        dl_ldmatrix_x4(qf[ks], Qs + C::swz(qrow, 2 * ks + (lane >> 4)));
        DL_UNROLL
        for (int i = 0; i < 4; i++) qf[ks][i] ^= qsign;
    }
    if (C::K8) {
        dl_ldmatrix_x2(qt, Qs + C::swz(qrow, 2 * C::KS));
        qt[0] ^= qsign;
        qt[1] ^= qsign;
    }

    float of[C::ND][4];
    DL_UNROLL
    for (int nd = 0; nd < C::ND; nd++)
        DL_UNROLL
        for (int e = 0; e < 4; e++) of[nd][e] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; // rows g, g + 8 (l: this lane's part)

    for (int j = 0; j < ntiles; j++) {
        const int st = j & 1, key0 = j * C::BC;
        const unsigned char *Kt = Ks + st * C::KV_BYTES, *Vt = Vs + st * C::KV_BYTES;
        /* K of the next tile into the other stage (its last reader, S of tile j - 1, is behind
         * the second barrier of that iteration) */
        if (j + 1 < ntiles)
            attn_mma_load_tile<C, C::BC, ALIGNED>(Ks + (st ^ 1) * C::KV_BYTES, kh, ldk, key0 + C::BC, Tk, tid);
        dl_cp_async_commit();
        dl_cp_async_wait<WAIT>(); // K j (V j and K j + 1 may stay in flight)
        if (FAULT != 1) __syncthreads();

        float s[C::NT][4];
        attn_mma_scores<C>(s, qf, qt, Kt, lane);

        /* online softmax on rows g (s[.][0..1]) and g + 8 (s[.][2..3]) */
        const bool partial = key0 + C::BC > Tk;
        if (partial) {
            DL_UNROLL
            for (int nt = 0; nt < C::NT; nt++)
                DL_UNROLL
                for (int e = 0; e < 4; e++)
                    if (key0 + 8 * nt + 2 * t + (e & 1) >= Tk) s[nt][e] = -INFINITY;
        }
        float mx[2] = {-INFINITY, -INFINITY};
        DL_UNROLL
        for (int nt = 0; nt < C::NT; nt++) {
            mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
        }
        float corr[2], msl[2];
        DL_UNROLL
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(DL_FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(DL_FULL_MASK, mx[r], 2));
            const float mnew = fmaxf(m[r], mx[r]); // finite: the tile holds a valid key
            corr[r] = m[r] == -INFINITY ? 0.0f : attn_exp2((m[r] - mnew) * sl);
            m[r] = mnew;
            msl[r] = mnew * sl;
        }
        float ps[2] = {0.0f, 0.0f};
        DL_UNROLL
        for (int nt = 0; nt < C::NT; nt++)
            DL_UNROLL
            for (int e = 0; e < 4; e++) {
                float p = attn_exp2(fmaf(s[nt][e], sl, -msl[e >> 1]));
                if (partial && key0 + 8 * nt + 2 * t + (e & 1) >= Tk) p = 0.0f; // also when sl = 0
                s[nt][e] = p;
                ps[e >> 1] += p;
            }
        l[0] = l[0] * corr[0] + ps[0];
        l[1] = l[1] * corr[1] + ps[1];
        DL_UNROLL
        for (int nd = 0; nd < C::ND; nd++) {
            of[nd][0] *= corr[0];
            of[nd][1] *= corr[0];
            of[nd][2] *= corr[1];
            of[nd][3] *= corr[1];
        }
        /* P as A fragments: n-tiles 2kk and 2kk + 1 of the accumulators are k-step kk */
        uint32_t pf[C::PK][4];
        DL_UNROLL
        for (int kk = 0; kk < C::PK; kk++) {
            pf[kk][0] = attn_pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            pf[kk][1] = attn_pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            pf[kk][2] = attn_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pf[kk][3] = attn_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        }

        /* V of the next tile into the other stage (its last reader, P·V of tile j - 1, is behind
         * the first barrier of this iteration) */
        if (j + 1 < ntiles)
            attn_mma_load_tile<C, C::BC, ALIGNED>(Vs + (st ^ 1) * C::KV_BYTES, vh, ldv, key0 + C::BC, Tk, tid);
        dl_cp_async_commit();
        dl_cp_async_wait<WAIT>(); // V j (K j + 1 and V j + 1 may stay in flight)
        __syncthreads();

        /* O += P·V: ldmatrix.trans x4 over 32 keys (lane l gives key 32kp + l) of one n8 tile */
        DL_UNROLL
        for (int kp = 0; kp < C::PK / 2; kp++)
            DL_UNROLL
            for (int nd = 0; nd < C::ND; nd++) {
                uint32_t b[4];
                dl_ldmatrix_x4_trans(b, Vt + C::swz(32 * kp + lane, nd));
                dl_mma_m16n8k16_bf16(of[nd], pf[2 * kp], b, of[nd]);
                dl_mma_m16n8k16_bf16(of[nd], pf[2 * kp + 1], b + 2, of[nd]);
            }
    }

    /* O / l into this warp's own Q rows (read only by this warp, long ago), then 16-byte rows */
    float inv[2];
    DL_UNROLL
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(DL_FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(DL_FULL_MASK, l[r], 2);
        inv[r] = 1.0f / l[r];
    }
    DL_UNROLL
    for (int nd = 0; nd < C::ND; nd++) {
        *(uint32_t *)(Qs + C::swz(wr + g, nd) + 4 * t) = attn_pack_bf16(of[nd][0] * inv[0], of[nd][1] * inv[0]);
        *(uint32_t *)(Qs + C::swz(wr + g + 8, nd) + 4 * t) = attn_pack_bf16(of[nd][2] * inv[1], of[nd][3] * inv[1]);
    }
    __syncwarp();
    dl_bf16 *oh = o + (int64_t)n * Tq * ldo + (int64_t)h * D;
    constexpr int OCH = 16 * C::CH;
    DL_UNROLL
    for (int it = 0; it < (OCH + 31) / 32; it++) {
        const int i = lane + 32 * it;
        if (OCH % 32 == 0 || i < OCH) {
            const int r = i / C::CH, c = i - r * C::CH, tq = row0 + wr + r;
            if (tq < Tq) {
                const uint4 val = *(const uint4 *)(Qs + C::swz(wr + r, c));
                dl_bf16 *dst = oh + (int64_t)tq * ldo + 8 * c;
                if (ALIGNED) {
                    *(uint4 *)dst = val;
                } else {
                    unsigned short *ds = (unsigned short *)dst;
                    const uint32_t w[4] = {val.x, val.y, val.z, val.w};
                    DL_UNROLL
                    for (int e = 0; e < 4; e++) {
                        ds[2 * e] = (unsigned short)(w[e] & 0xffffu);
                        ds[2 * e + 1] = (unsigned short)(w[e] >> 16);
                    }
                }
            }
        }
    }
    if (t == 0) {
        float *lh = lse + ((int64_t)n * H + h) * Tq;
        const int t0 = row0 + wr + g;
        if (t0 < Tq) lh[t0] = m[0] * sc + logf(l[0]);
        if (t0 + 8 < Tq) lh[t0 + 8] = m[1] * sc + logf(l[1]);
    }
}

/* Launches the forward for head dim D; FAULT != 0 only from the tests. */
template <int D, bool ALIGNED, int FAULT>
static int attn_mma_forward_launch(int N, int H, int Tq, int Tk, float scale, const void *q, int64_t ldq,
                                   const void *k, int64_t ldk, const void *v, int64_t ldv, void *o, int64_t ldo,
                                   float *lse, cudaStream_t stream)
{
    typedef AttnMmaCfg<D> C;
    if (C::SMEM > 48 * 1024 &&
        cudaFuncSetAttribute(attention_forward_mma_kernel<D, ALIGNED, FAULT>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM) != cudaSuccess) {
        (void)cudaGetLastError(); // not this device's: unsupported, nothing launched
        return -1;
    }
    const float sc = fabsf(scale), sl = sc * 1.4426950408889634f;
    const uint32_t qsign = scale < 0.0f ? 0x80008000u : 0u;
    dim3 grid((unsigned)((Tq + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
    DL_LAUNCH((attention_forward_mma_kernel<D, ALIGNED, FAULT>), grid, dim3(C::THREADS), C::SMEM, stream,
              (const dl_bf16 *)q, ldq, (const dl_bf16 *)k, ldk, (const dl_bf16 *)v, ldv, (dl_bf16 *)o, ldo, lse,
              H, Tq, Tk, sl, sc, qsign);
    return 0;
}

/* 1 when every pointer is 16-byte aligned and every ld a multiple of 8 elements (16 bytes). */
static inline int attn_mma_aligned(const void *q, int64_t ldq, const void *k, int64_t ldk, const void *v,
                                   int64_t ldv, const void *o, int64_t ldo)
{
    const uintptr_t p = (uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)o;
    return (p & 15) == 0 && ((ldq | ldk | ldv | ldo) & 7) == 0;
}

template <int D, int FAULT>
static int attn_mma_forward_dispatch(int N, int H, int Tq, int Tk, float scale, const void *q, int64_t ldq,
                                     const void *k, int64_t ldk, const void *v, int64_t ldv, void *o, int64_t ldo,
                                     float *lse, cudaStream_t stream)
{
    if (attn_mma_aligned(q, ldq, k, ldk, v, ldv, o, ldo))
        return attn_mma_forward_launch<D, true, FAULT>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse,
                                                      stream);
    return attn_mma_forward_launch<D, false, FAULT>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse,
                                                   stream);
}

extern "C" int dl_cuda_attention_forward_mma(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                             const void *q, int64_t ldq, const void *k, int64_t ldk,
                                             const void *v, int64_t ldv, void *o, int64_t ldo, float *lse,
                                             cudaStream_t stream)
{
    if (dt != DL_BF16 || N <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || N > 65535 || H > 65535) return -1;
    if (ldq < (int64_t)H * d || ldk < (int64_t)H * d || ldv < (int64_t)H * d || ldo < (int64_t)H * d) return -1;
    switch (d) {
    case 40: return attn_mma_forward_dispatch<40, 0>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 64: return attn_mma_forward_dispatch<64, 0>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 80: return attn_mma_forward_dispatch<80, 0>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 160:
        return attn_mma_forward_dispatch<160, 0>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    default: return -1;
    }
}
