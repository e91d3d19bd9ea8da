/* attention_mma.cu - FlashAttention-2-style attention forward and backward on sm_80+ tensor
 * cores (mma.sync, ldmatrix, cp.async through kernels/mma.cuh), bf16 storage, fp32 accumulation.
 *
 * Same contract and outputs as dl_cuda_attention_forward / _backward (kernels/dl_kernels.h):
 * q [N, Tq, ldq] with head h at columns [h·d, h·d + d), likewise k, v [N, Tk, ld], o [N, Tq, ldo],
 * lse [N, H, Tq] (natural log), no mask, head dims 40, 64, 80, 160; bf16 only (-1 otherwise).
 * The backward also takes a workspace and a deterministic flag (see its section below).
 *
 * ---- How the forward works ---------------------------------------------------------------------
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

/* Byte offset of chunk c (16 bytes) of row r in a tile of CH chunks per row, XOR-swizzled: see
 * the file comment. */
template <int CH>
static __device__ __forceinline__ int attn_swz(int r, int c)
{
    constexpr int BITS = CH % 8 == 0 ? 3 : CH % 4 == 0 ? 2 : CH % 2 == 0 ? 1 : 0;
    return (r * CH + (c ^ ((r >> (3 - BITS)) & ((1 << BITS) - 1)))) * 16;
}

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
    static constexpr int Q_BYTES = BR * D * 2;
    static constexpr int KV_BYTES = BC * D * 2; // one stage of K (or V)
    static constexpr size_t SMEM = (size_t)Q_BYTES + 4 * (size_t)KV_BYTES;
    static_assert(D % 8 == 0 && BC % 32 == 0, "tile shape");

    static __device__ __forceinline__ int swz(int r, int c) { return attn_swz<CH>(r, c); }
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

/* A fragments of rows [r0, r0 + 16) of a swizzled [rows][D] tile, every k-step (x4: rows 0-7 /
 * 8-15 of chunk 2ks, then of chunk 2ks + 1) and the k8 tail (x2), sign bits XORed with sign. */
template <class C>
static __device__ __forceinline__ void attn_mma_load_afrags(uint32_t (&af)[C::KS][4], uint32_t (&at)[2],
                                                            const unsigned char *tile, int r0, int lane,
                                                            uint32_t sign)
{
    const int row = r0 + (lane & 7) + 8 * ((lane >> 3) & 1);
    DL_UNROLL
    for (int ks = 0; ks < C::KS; ks++) {
        dl_ldmatrix_x4(af[ks], tile + C::swz(row, 2 * ks + (lane >> 4)));
        DL_UNROLL
        for (int i = 0; i < 4; i++) af[ks][i] ^= sign;
    }
    at[0] = at[1] = 0u;
    if (C::K8) {
        dl_ldmatrix_x2(at, tile + C::swz(row, 2 * C::KS));
        at[0] ^= sign;
        at[1] ^= sign;
    }
}

/* Accumulator tiles (16 × 8 each, NT of them) as bf16 A fragments of NT / 2 k16 steps: n-tiles
 * 2kk and 2kk + 1 of the accumulator layout are exactly the A layout of k-step kk. */
template <int NT>
static __device__ __forceinline__ void attn_mma_acc_to_a(uint32_t (&pf)[NT / 2][4], const float (&s)[NT][4])
{
    DL_UNROLL
    for (int kk = 0; kk < NT / 2; kk++) {
        pf[kk][0] = attn_pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pf[kk][1] = attn_pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pf[kk][2] = attn_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pf[kk][3] = attn_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

/* acc (16 × 8·NO) += A (16 × NK, as NK / 16 k-step fragments) · B, B columns [8·nd0, 8·(nd0 + NO))
 * of the first NK rows of a swizzled [rows][D] tile read with ldmatrix.trans x4 over 32 rows
 * (lane l gives row 32kp + l) of one n8 tile. NO = C::ND, nd0 = 0: all D columns. */
template <class C, int NK, int NO = C::ND>
static __device__ __forceinline__ void attn_mma_ab_trans(float (&acc)[NO][4], const uint32_t (&af)[NK / 16][4],
                                                         const unsigned char *Bt, int lane, int nd0 = 0)
{
    DL_UNROLL
    for (int kp = 0; kp < NK / 32; kp++)
        DL_UNROLL
        for (int nd = 0; nd < NO; nd++) {
            uint32_t b[4];
            dl_ldmatrix_x4_trans(b, Bt + C::swz(32 * kp + lane, nd0 + nd));
            dl_mma_m16n8k16_bf16(acc[nd], af[2 * kp], b, acc[nd]);
            dl_mma_m16n8k16_bf16(acc[nd], af[2 * kp + 1], b + 2, acc[nd]);
        }
}

/* Writes this warp's 16 × 8·NO accumulator rows (row g scaled by mul0, row g + 8 by mul1) as bf16
 * to columns [8·nd0, 8·(nd0 + NO)) of rows [r0, r0 + 16) of a swizzled tile that only this warp
 * uses now, then stores those columns of the rows to dst rows [t0, t0 + 16) (row t at dst + t·ld),
 * rows ≥ T skipped; 16-byte stores when ALIGNED. NO = C::ND, nd0 = 0: all D columns. */
template <class C, bool ALIGNED, int NO = C::ND>
static __device__ __forceinline__ void attn_mma_store_rows(const float (&acc)[NO][4], float mul0, float mul1,
                                                           unsigned char *tile, int r0, dl_bf16 *dst, int64_t ld,
                                                           int t0, int T, int lane, int nd0 = 0)
{
    const int g = lane >> 2, t = lane & 3;
    DL_UNROLL
    for (int nd = 0; nd < NO; nd++) {
        *(uint32_t *)(tile + C::swz(r0 + g, nd0 + nd) + 4 * t) =
            attn_pack_bf16(acc[nd][0] * mul0, acc[nd][1] * mul0);
        *(uint32_t *)(tile + C::swz(r0 + g + 8, nd0 + nd) + 4 * t) =
            attn_pack_bf16(acc[nd][2] * mul1, acc[nd][3] * mul1);
    }
    __syncwarp();
    constexpr int NCH = 16 * NO; // 16-byte chunks (one per n8 tile and row)
    DL_UNROLL
    for (int it = 0; it < (NCH + 31) / 32; it++) {
        const int i = lane + 32 * it;
        if (NCH % 32 == 0 || i < NCH) {
            const int r = i / NO, c = nd0 + (i - r * NO), row = t0 + r;
            if (row < T) {
                const uint4 val = *(const uint4 *)(tile + C::swz(r0 + r, c));
                dl_bf16 *p = dst + (int64_t)row * ld + 8 * c;
                if (ALIGNED) {
                    *(uint4 *)p = val;
                } else {
                    unsigned short *ps = (unsigned short *)p;
                    const uint32_t w[4] = {val.x, val.y, val.z, val.w};
                    DL_UNROLL
                    for (int e = 0; e < 4; e++) {
                        ps[2 * e] = (unsigned short)(w[e] & 0xffffu);
                        ps[2 * e + 1] = (unsigned short)(w[e] >> 16);
                    }
                }
            }
        }
    }
    __syncwarp();
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

    /* Q fragments, once */
    uint32_t qf[C::KS][4], qt[2];
    attn_mma_load_afrags<C>(qf, qt, Qs, wr, lane, qsign);

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
        uint32_t pf[C::PK][4]; /* P as the A operand of P·V */
        attn_mma_acc_to_a<C::NT>(pf, s);

        /* V of the next tile into the other stage (its last reader, P·V of tile j - 1, is behind
         * the first barrier of this iteration) */
        if (j + 1 < ntiles)
            attn_mma_load_tile<C, C::BC, ALIGNED>(Vs + (st ^ 1) * C::KV_BYTES, vh, ldv, key0 + C::BC, Tk, tid);
        dl_cp_async_commit();
        dl_cp_async_wait<WAIT>(); // V j (K j + 1 and V j + 1 may stay in flight)
        __syncthreads();

        attn_mma_ab_trans<C, C::BC>(of, pf, Vt, lane); /* O += P·V */
    }

    /* O / l into this warp's own Q rows (read only by this warp, long ago), then 16-byte rows */
    float inv[2];
    DL_UNROLL
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(DL_FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(DL_FULL_MASK, l[r], 2);
        inv[r] = 1.0f / l[r];
    }
    attn_mma_store_rows<C, ALIGNED>(of, inv[0], inv[1], Qs, wr, o + (int64_t)n * Tq * ldo + (int64_t)h * D, ldo,
                                    row0 + wr, Tq, lane);
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

/* ================================== backward ===================================================
 * One main kernel, 5 GEMMs per step, FlashAttention-2's order: a CTA owns BN = 64 keys of one
 * (n, h), 16 per warp, with K and V copied to shared memory once (their A fragments read with
 * ldmatrix at every step) and dK, dV accumulated in fp32 registers; it walks the queries in steps of BM = 32 (Q, dO, lse, delta
 * double-buffered through cp.async):
 *   Sᵀ  = K_w·Q_iᵀ            (16 keys × 32 queries)   Pᵀ = exp2(Sᵀ·scale·log2 e − lse·log2 e)
 *   dV += Pᵀ·dO_i             (Pᵀ reused from registers as the A operand, dO via ldmatrix.trans)
 *   dPᵀ = V_w·dO_iᵀ            dSᵀ = Pᵀ ∘ (dPᵀ − delta)
 *   dK += dSᵀ·Q_i              (dSᵀ from registers, Q via ldmatrix.trans)
 *   dQ_i += dS·K               (dSᵀ through shared memory, read with ldmatrix.trans; each warp
 *                               16 queries × half of the n8 tiles), added to an fp32 buffer.
 * dQ's fp32 buffer (workspace) is added to either with atomics (order free) or, deterministic,
 * in key-block order: a per-(n, h, query step) counter says which key block adds next, so every
 * run gives the same bits. A prep kernel computes delta = rowsum(dO ∘ O) and zeroes the buffer
 * and the counters; a final kernel writes dq = scale · buffer as bf16 (FlashAttention-2's three
 * launches). d = 160: a warp's 16 × 160 dK and dV tiles alone would take 160 fp32 registers per
 * lane, so two CTAs share each key block (DS = 2), each accumulating dK, dV and dQ for 80 of the
 * columns and both computing Sᵀ and dPᵀ (7 GEMMs' work for 5, against spills or the portable
 * kernels); in deterministic mode the CTAs of a step take turns in blockIdx order. */

template <int D_>
struct AttnMmaBwdCfg {
    static constexpr int D = D_;
    static constexpr int NW = 4;
    static constexpr int THREADS = 32 * NW;
    static constexpr int BN = 16 * NW;      // keys per CTA
    static constexpr int BM = 32;           // queries per step
    static constexpr int CH = D / 8;
    static constexpr int KS = D / 16;
    static constexpr bool K8 = D % 16 != 0;
    static constexpr int NT = BM / 8;       // n8 tiles of Sᵀ and dPᵀ
    static constexpr int ND = D / 8;        // n8 tiles of dK, dV, dQ
    static constexpr int DS = D > 80 ? 2 : 1; // CTAs per key block, each owning D / DS columns
    static constexpr int NDO = ND / DS;     // n8 tiles of dK, dV, dQ a CTA owns
    static constexpr int NDH = (NDO + 1) / 2; // n8 tiles of dQ per warp (at most)
    static constexpr int KV_BYTES = BN * D * 2, QT_BYTES = BM * D * 2, DS_BYTES = BN * BM * 2;
    static constexpr size_t OFF_V = KV_BYTES, OFF_Q = 2 * (size_t)KV_BYTES;
    static constexpr size_t OFF_DO = OFF_Q + 2 * (size_t)QT_BYTES, OFF_DS = OFF_DO + 2 * (size_t)QT_BYTES;
    static constexpr size_t OFF_ST = OFF_DS + DS_BYTES;
    static constexpr size_t SMEM = OFF_ST + 4 * BM * sizeof(float); // lse, delta: 2 stages each
    static_assert(BN % 32 == 0 && BM % 32 == 0 && ND % DS == 0, "tile shape");
    static __device__ __forceinline__ int swz(int r, int c) { return attn_swz<CH>(r, c); }
};

/* lse·log2 e and delta of queries [q0, q0 + BM) (rows ≥ Tq repeat row Tq − 1). */
template <class C>
static __device__ __forceinline__ void attn_mma_bwd_rowstats(float *Ls, float *Es, const float *lse_h,
                                                             const float *del_h, int q0, int Tq, int tid)
{
    if (tid < C::BM) {
        const int r = min(q0 + tid, Tq - 1);
        Ls[tid] = lse_h[r] * 1.4426950408889634f;
        Es[tid] = del_h[r];
    }
}

/* grid (ceil(Tk / BN)·DS, H, N), block THREADS, dynamic shared memory C::SMEM: CTA x owns key
 * block x / DS and columns part x % DS (n8 tiles [NDO·part, NDO·(part + 1))) of dK, dV, dQ; with
 * DS = 2 (d 160) both parts compute the whole Sᵀ and dPᵀ. q, k, v, dout: the heads' inputs; lse,
 * delta [N, H, Tq]; dq_acc [N·H, Tq, D] fp32 (zeroed), sem [N·H, ceil(Tq / BM)] (zeroed, DET only:
 * CTA x adds its dQ part of a step after CTA x − 1); dk, dv may be NULL; dq_acc NULL skips dQ.
 * sl = |scale|·log2 e, ksign flips the K fragments when scale < 0 (as Q in the forward). */
template <int D, bool ALIGNED, bool DET>
__global__ void __launch_bounds__(AttnMmaBwdCfg<D>::THREADS)
attention_backward_mma_kernel(const dl_bf16 *q, int64_t ldq, const dl_bf16 *k, int64_t ldk, const dl_bf16 *v,
                              int64_t ldv, const dl_bf16 *dout, int64_t ldo, const float *lse, const float *delta,
                              float *dq_acc, int *sem, dl_bf16 *dk, dl_bf16 *dv, int H, int Tq, int Tk, float scale,
                              float sl, uint32_t ksign)
{
    typedef AttnMmaBwdCfg<D> C;
    DL_DYNAMIC_SMEM(unsigned char, smem);
    unsigned char *Ks = smem, *Vs = smem + C::OFF_V;       // [BN][D]
    unsigned char *Qs = smem + C::OFF_Q, *Ds = smem + C::OFF_DO; // 2 stages of [BM][D]
    unsigned char *Ss = smem + C::OFF_DS;                  // dSᵀ [BN][BM] bf16
    float *Ls = (float *)(smem + C::OFF_ST), *Es = Ls + 2 * C::BM; // 2 stages of [BM]

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, kb = (int)blockIdx.x / C::DS, key0 = kb * C::BN;
    const int nd0 = ((int)blockIdx.x % C::DS) * C::NDO; // first n8 tile of the columns this CTA owns
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int wr = 16 * warp;
    const int64_t bh = (int64_t)n * H + h;
    const dl_bf16 *qh = q + (int64_t)n * Tq * ldq + (int64_t)h * D;
    const dl_bf16 *kh = k + (int64_t)n * Tk * ldk + (int64_t)h * D;
    const dl_bf16 *vh = v + (int64_t)n * Tk * ldv + (int64_t)h * D;
    const dl_bf16 *doh = dout + (int64_t)n * Tq * ldo + (int64_t)h * D;
    const float *lse_h = lse + bh * Tq, *del_h = delta + bh * Tq;
    const int nsteps = (Tq + C::BM - 1) / C::BM;

    /* groups: [K, V, Q 0, dO 0], then per step i: [Q i + 1, dO i + 1] (empty past the end) */
    attn_mma_load_tile<C, C::BN, ALIGNED>(Ks, kh, ldk, key0, Tk, tid);
    attn_mma_load_tile<C, C::BN, ALIGNED>(Vs, vh, ldv, key0, Tk, tid);
    attn_mma_load_tile<C, C::BM, ALIGNED>(Qs, qh, ldq, 0, Tq, tid);
    attn_mma_load_tile<C, C::BM, ALIGNED>(Ds, doh, ldo, 0, Tq, tid);
    attn_mma_bwd_rowstats<C>(Ls, Es, lse_h, del_h, 0, Tq, tid);
    dl_cp_async_commit();
    dl_cp_async_wait<0>();
    __syncthreads();

    float dka[C::NDO][4], dva[C::NDO][4];
    DL_UNROLL
    for (int nd = 0; nd < C::NDO; nd++)
        DL_UNROLL
        for (int e = 0; e < 4; e++) dka[nd][e] = dva[nd][e] = 0.0f;
    const bool key_ok[2] = {key0 + wr + g < Tk, key0 + wr + g + 8 < Tk};
    const int qhalf = warp & 1, dpar = warp >> 1; // this warp's part of dQ

    for (int i = 0; i < nsteps; i++) {
        const int st = i & 1, q0 = i * C::BM;
        /* the next step into the other stage (last read in step i - 1, before its second barrier) */
        if (i + 1 < nsteps) {
            attn_mma_load_tile<C, C::BM, ALIGNED>(Qs + (st ^ 1) * C::QT_BYTES, qh, ldq, q0 + C::BM, Tq, tid);
            attn_mma_load_tile<C, C::BM, ALIGNED>(Ds + (st ^ 1) * C::QT_BYTES, doh, ldo, q0 + C::BM, Tq, tid);
            attn_mma_bwd_rowstats<C>(Ls + (st ^ 1) * C::BM, Es + (st ^ 1) * C::BM, lse_h, del_h, q0 + C::BM, Tq,
                                     tid);
        }
        dl_cp_async_commit();
        dl_cp_async_wait<1>(); // step i
        __syncthreads();
        const unsigned char *Qt = Qs + st * C::QT_BYTES, *Dt = Ds + st * C::QT_BYTES;
        const float *Lt = Ls + st * C::BM, *Et = Es + st * C::BM;

        /* Pᵀ: rows g, g + 8 are keys, columns 8nt + 2t + (e & 1) queries; 0 outside the shape */
        /* K_w, V_w as A fragments: read again every step (ldmatrix), which keeps d 80 at ~180
         * registers instead of 255 with them resident */
        uint32_t kvf[C::KS][4], kvt[2];
        float s[C::NT][4];
        attn_mma_load_afrags<C>(kvf, kvt, Ks, wr, lane, ksign);
        attn_mma_scores<C>(s, kvf, kvt, Qt, lane);
        DL_UNROLL
        for (int nt = 0; nt < C::NT; nt++)
            DL_UNROLL
            for (int e = 0; e < 4; e++) {
                const int col = 8 * nt + 2 * t + (e & 1);
                const bool ok = key_ok[e >> 1] && q0 + col < Tq;
                s[nt][e] = ok ? attn_exp2(fmaf(s[nt][e], sl, -Lt[col])) : 0.0f;
            }
        uint32_t af[C::NT / 2][4];
        attn_mma_acc_to_a<C::NT>(af, s);
        attn_mma_ab_trans<C, C::BM, C::NDO>(dva, af, Dt, lane, nd0); /* dV += Pᵀ·dO */

        float dp[C::NT][4];
        attn_mma_load_afrags<C>(kvf, kvt, Vs, wr, lane, 0u);
        attn_mma_scores<C>(dp, kvf, kvt, Dt, lane); /* dPᵀ = V·dOᵀ */
        DL_UNROLL
        for (int nt = 0; nt < C::NT; nt++)
            DL_UNROLL
            for (int e = 0; e < 4; e++) dp[nt][e] = s[nt][e] * (dp[nt][e] - Et[8 * nt + 2 * t + (e & 1)]);
        attn_mma_acc_to_a<C::NT>(af, dp);
        attn_mma_ab_trans<C, C::BM, C::NDO>(dka, af, Qt, lane, nd0); /* dK += dSᵀ·Q (× scale at the end) */

        if (dq_acc) { /* dSᵀ (bf16, as multiplied above) to shared memory, [key][query] */
            DL_UNROLL
            for (int kk = 0; kk < C::NT / 2; kk++) {
                *(uint32_t *)(Ss + attn_swz<C::BM / 8>(wr + g, 2 * kk) + 4 * t) = af[kk][0];
                *(uint32_t *)(Ss + attn_swz<C::BM / 8>(wr + g + 8, 2 * kk) + 4 * t) = af[kk][1];
                *(uint32_t *)(Ss + attn_swz<C::BM / 8>(wr + g, 2 * kk + 1) + 4 * t) = af[kk][2];
                *(uint32_t *)(Ss + attn_swz<C::BM / 8>(wr + g + 8, 2 * kk + 1) + 4 * t) = af[kk][3];
            }
        }
        __syncthreads(); /* dSᵀ complete; every read of this step's Q/dO stage done */
        if (dq_acc) {
            /* dQ (queries 16·qhalf.., n8 tiles dpar, dpar + 2, ..) = dS·K over the BN keys; A from
             * dSᵀ with ldmatrix.trans (matrices: keys 0-7 × queries 0-7, 8-15, keys 8-15 × ..) */
            uint32_t sa[C::BN / 16][4];
            DL_UNROLL
            for (int kk = 0; kk < C::BN / 16; kk++)
                dl_ldmatrix_x4_trans(sa[kk], Ss + attn_swz<C::BM / 8>(16 * kk + 8 * (lane >> 4) + (lane & 7),
                                                                        2 * qhalf + ((lane >> 3) & 1)));
            float dqa[C::NDH][4];
            DL_UNROLL
            for (int j = 0; j < C::NDH; j++)
                DL_UNROLL
                for (int e = 0; e < 4; e++) dqa[j][e] = 0.0f;
            DL_UNROLL
            for (int j = 0; j < C::NDH; j++) {
                const int nd = nd0 + dpar + 2 * j;
                if (dpar + 2 * j < C::NDO) {
                    DL_UNROLL
                    for (int kp = 0; kp < C::BN / 32; kp++) {
                        uint32_t b[4];
                        dl_ldmatrix_x4_trans(b, Ks + C::swz(32 * kp + lane, nd));
                        dl_mma_m16n8k16_bf16(dqa[j], sa[2 * kp], b, dqa[j]);
                        dl_mma_m16n8k16_bf16(dqa[j], sa[2 * kp + 1], b + 2, dqa[j]);
                    }
                }
            }
            int *sm = DET ? sem + bh * nsteps + i : NULL;
            if (DET) { /* wait for CTA x - 1 (key block, column part) to have added its part */
                if (tid == 0)
                    while (atomicAdd(sm, 0) != (int)blockIdx.x) {
                    }
                __threadfence();
                __syncthreads();
            }
            float *acc = dq_acc + (bh * Tq + q0 + 16 * qhalf) * D;
            DL_UNROLL
            for (int j = 0; j < C::NDH; j++) {
                const int nd = nd0 + dpar + 2 * j;
                if (dpar + 2 * j < C::NDO)
                    DL_UNROLL
                    for (int hr = 0; hr < 2; hr++) { /* rows g, g + 8; columns 8nd + 2t, + 1 */
                        const int r = g + 8 * hr;
                        if (q0 + 16 * qhalf + r < Tq) {
                            float *p = acc + r * D + 8 * nd + 2 * t;
                            if (DET) { /* L2 (ld.cg): L1 is not coherent with other SMs' adds */
                                float2 x = __ldcg((const float2 *)p);
                                x.x += dqa[j][2 * hr];
                                x.y += dqa[j][2 * hr + 1];
                                *(float2 *)p = x;
                            } else {
                                atomicAdd(p, dqa[j][2 * hr]);
                                atomicAdd(p + 1, dqa[j][2 * hr + 1]);
                            }
                        }
                    }
            }
            if (DET) { /* hand the step to CTA x + 1 */
                __threadfence();
                __syncthreads();
                if (tid == 0) atomicExch(sm, (int)blockIdx.x + 1);
            }
        }
    }

    /* dV, dK rows through this warp's own rows of the V and K tiles (K was read by every warp
     * for dQ: after the barrier) */
    __syncthreads();
    if (dv)
        attn_mma_store_rows<C, ALIGNED, C::NDO>(dva, 1.0f, 1.0f, Vs, wr, dv + (int64_t)n * Tk * ldv + (int64_t)h * D,
                                                ldv, key0 + wr, Tk, lane, nd0);
    if (dk)
        attn_mma_store_rows<C, ALIGNED, C::NDO>(dka, scale, scale, Ks, wr, dk + (int64_t)n * Tk * ldk + (int64_t)h * D,
                                                ldk, key0 + wr, Tk, lane, nd0);
}

/* delta [N, H, Tq] = Σ_c dO·O per row (one warp per row (n, h, t) in delta's order); zeroes the
 * row of dq_acc (when not NULL) and, from the first threads, nsem counters. grid
 * ceil(N·H·Tq / 4), block 128. */
template <int D>
__global__ void attention_backward_mma_prep_kernel(const dl_bf16 *o, const dl_bf16 *dout, int64_t ldo,
                                                   float *delta, float *dq_acc, int *sem, int64_t nsem, int N,
                                                   int H, int Tq)
{
    const int64_t gt = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gt < nsem) sem[gt] = 0;
    const int64_t row = gt >> 5; // (n·H + h)·Tq + t
    const int lane = (int)threadIdx.x & 31;
    if (row >= (int64_t)N * H * Tq) return; // whole warps leave together
    const int64_t bh = row / Tq, tq = row - bh * Tq, n = bh / H, h = bh - n * H;
    const dl_bf16 *orow = o + (n * Tq + tq) * ldo + h * D, *drow = dout + (n * Tq + tq) * ldo + h * D;
    float sum = 0.0f;
    for (int c = lane; c < D; c += 32) sum += __bfloat162float(orow[c]) * __bfloat162float(drow[c]);
    sum = dl_warp_sum(sum);
    if (lane == 0) delta[row] = sum;
    if (dq_acc)
        for (int c = lane; c < D; c += 32) dq_acc[row * D + c] = 0.0f;
}

/* dq = scale · dq_acc as bf16 into q's layout; one thread per element. */
template <int D>
__global__ void attention_backward_mma_dq_kernel(const float *dq_acc, dl_bf16 *dq, int64_t ldq, int N, int H,
                                                 int Tq, float scale)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * H * Tq * D) return;
    const int64_t row = i / D, c = i - row * D, bh = row / Tq, tq = row - bh * Tq, n = bh / H, h = bh - n * H;
    dq[(n * Tq + tq) * ldq + h * D + c] = __float2bfloat16(dq_acc[i] * scale);
}

/* Workspace of the backward: dq_acc [N·H, Tq, d] fp32, then the counters [N·H, ceil(Tq / 32)]. */
static inline size_t attn_mma_bwd_acc_bytes(int N, int H, int Tq, int d)
{
    return ((size_t)N * H * Tq * d * sizeof(float) + 15) & ~(size_t)15;
}
static inline int64_t attn_mma_bwd_nsem(int N, int H, int Tq) { return (int64_t)N * H * ((Tq + 31) / 32); }

extern "C" size_t dl_cuda_attention_backward_mma_workspace_size(int N, int H, int Tq, int Tk, int d)
{
    (void)Tk;
    if (N <= 0 || H <= 0 || Tq <= 0 || d <= 0) return 0;
    return attn_mma_bwd_acc_bytes(N, H, Tq, d) + (size_t)attn_mma_bwd_nsem(N, H, Tq) * sizeof(int);
}

template <int D, bool ALIGNED, bool DET>
static int attn_mma_backward_launch(int N, int H, int Tq, int Tk, float scale, const void *q, int64_t ldq,
                                    const void *k, int64_t ldk, const void *v, int64_t ldv, const void *dout,
                                    int64_t ldo, const float *lse, const float *delta, float *dq_acc, int *sem,
                                    void *dk, void *dv, cudaStream_t stream)
{
    typedef AttnMmaBwdCfg<D> C;
    if (C::SMEM > 48 * 1024 &&
        cudaFuncSetAttribute(attention_backward_mma_kernel<D, ALIGNED, DET>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    const float sl = fabsf(scale) * 1.4426950408889634f;
    const uint32_t ksign = scale < 0.0f ? 0x80008000u : 0u;
    dim3 grid((unsigned)((Tk + C::BN - 1) / C::BN * C::DS), (unsigned)H, (unsigned)N);
    DL_LAUNCH((attention_backward_mma_kernel<D, ALIGNED, DET>), grid, dim3(C::THREADS), C::SMEM, stream,
              (const dl_bf16 *)q, ldq, (const dl_bf16 *)k, ldk, (const dl_bf16 *)v, ldv, (const dl_bf16 *)dout, ldo,
              lse, delta, dq_acc, sem, (dl_bf16 *)dk, (dl_bf16 *)dv, H, Tq, Tk, scale, sl, ksign);
    return 0;
}

template <int D>
static int attn_mma_backward_dispatch(int N, int H, int Tq, int Tk, float scale, const void *q, int64_t ldq,
                                      const void *k, int64_t ldk, const void *v, int64_t ldv, const void *o,
                                      const void *dout, int64_t ldo, const float *lse, float *delta, void *dq,
                                      void *dk, void *dv, int deterministic, void *ws, cudaStream_t stream)
{
    float *dq_acc = dq ? (float *)ws : NULL;
    int *sem = (int *)((char *)ws + attn_mma_bwd_acc_bytes(N, H, Tq, D));
    const int64_t nsem = dq && deterministic ? attn_mma_bwd_nsem(N, H, Tq) : 0;
    const int64_t rows = (int64_t)N * H * Tq, prep_threads = rows * 32 > nsem ? rows * 32 : nsem;
    DL_LAUNCH(attention_backward_mma_prep_kernel<D>, dim3((unsigned)((prep_threads + 127) / 128)), dim3(128), 0,
              stream, (const dl_bf16 *)o, (const dl_bf16 *)dout, ldo, delta, dq_acc, sem, nsem, N, H, Tq);
    int rc;
    const bool al = attn_mma_aligned(q, ldq, k, ldk, v, ldv, dout, ldo) &&
                    ((uintptr_t)dk & 15) == 0 && ((uintptr_t)dv & 15) == 0;
    if (al && deterministic)
        rc = attn_mma_backward_launch<D, true, true>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, dout, ldo, lse,
                                                    delta, dq_acc, sem, dk, dv, stream);
    else if (al)
        rc = attn_mma_backward_launch<D, true, false>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, dout, ldo, lse,
                                                     delta, dq_acc, sem, dk, dv, stream);
    else if (deterministic)
        rc = attn_mma_backward_launch<D, false, true>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, dout, ldo, lse,
                                                     delta, dq_acc, sem, dk, dv, stream);
    else
        rc = attn_mma_backward_launch<D, false, false>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, dout, ldo, lse,
                                                      delta, dq_acc, sem, dk, dv, stream);
    if (rc != 0 || !dq) return rc;
    const int64_t total = rows * D;
    DL_LAUNCH(attention_backward_mma_dq_kernel<D>, dim3((unsigned)((total + 255) / 256)), dim3(256), 0, stream,
              (const float *)dq_acc, (dl_bf16 *)dq, ldq, N, H, Tq, scale);
    return 0;
}

extern "C" int dl_cuda_attention_backward_mma(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                              const void *q, int64_t ldq, const void *k, int64_t ldk,
                                              const void *v, int64_t ldv, const void *o, const void *dout,
                                              int64_t ldo, const float *lse, float *delta, void *dq, void *dk,
                                              void *dv, int deterministic, void *ws, cudaStream_t stream)
{
    if (dt != DL_BF16 || N <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || N > 65535 || H > 65535 || !delta) return -1;
    if (ldq < (int64_t)H * d || ldk < (int64_t)H * d || ldv < (int64_t)H * d || ldo < (int64_t)H * d) return -1;
    if (dq && !ws) return -1;
    switch (d) {
    case 40:
        return attn_mma_backward_dispatch<40>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout, ldo, lse, delta,
                                              dq, dk, dv, deterministic, ws, stream);
    case 64:
        return attn_mma_backward_dispatch<64>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout, ldo, lse, delta,
                                              dq, dk, dv, deterministic, ws, stream);
    case 80:
        return attn_mma_backward_dispatch<80>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout, ldo, lse, delta,
                                              dq, dk, dv, deterministic, ws, stream);
    case 160:
        return attn_mma_backward_dispatch<160>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout, ldo, lse, delta,
                                               dq, dk, dv, deterministic, ws, stream);
    default: return -1;
    }
}
