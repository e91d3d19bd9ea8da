/* attention_tc.cu - tensor-core variant of attention forward and backward (bf16, WMMA 16×16×16),
 * checked against the CPU reference by scripts/gpu_check.sh on a GPU and by the emulated tests.
 *
 * Same contracts and outputs as dl_cuda_attention_forward/backward in attention.cu, bf16 storage
 * only. Blocks of 4 warps own 64 rows of one (n, h), 16 per warp, and stream the other operand in
 * tiles of 32 rows through shared memory (bf16, head dim zero-padded to a multiple of 16):
 *   forward : S = Q·Kᵀ on tensor cores (fp32 accumulate) -> shared memory -> online softmax in
 *             SIMT (two lanes per row) -> P (bf16) -> O += P·V on tensor cores, O kept in shared
 *             memory (fp32) because WMMA accumulators cannot be rescaled element-wise.
 *   backward: dQ kernel (S and dP = dO·Vᵀ on tensor cores, dS = P∘(dP - delta) in SIMT, dQ +=
 *             dS·K) and dK/dV kernel (Sᵀ, dPᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q); no rescaling, so the
 *             accumulators stay in fragments; d = 160 falls back to the portable kernels.
 * The portable kernels of attention.cu stay the reference; CI runs this kernel under the emulator
 * with a model of the WMMA calls (tests/kernels/wmma_model.h). */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"

#ifdef __CUDACC__
#include <mma.h>
#endif
/* Under the SIMT emulator (which has no tensor cores) only tests/kernels/test_kernels_attention.cpp
 * compiles this file, after tests/kernels/wmma_model.h has defined nvcuda::wmma. */

#include <math.h>

namespace wmma = nvcuda::wmma;

template <int D>
struct AttnTcCfg {
    static constexpr int DP = (D + 15) / 16 * 16; // padded head dim
    static constexpr int NW = 4;                  // warps per block
    static constexpr int BR = 16 * NW;            // query rows per block
    static constexpr int BC = 32;                 // keys per tile
    static constexpr int THREADS = 32 * NW;
    // shared memory: Q, K, V (bf16), S (fp32), P (bf16), O (fp32), row stats m, l (fp32)
    static constexpr size_t OFF_Q = 0;
    static constexpr size_t OFF_K = OFF_Q + (size_t)BR * DP * 2;
    static constexpr size_t OFF_V = OFF_K + (size_t)BC * DP * 2;
    static constexpr size_t OFF_S = OFF_V + (size_t)BC * DP * 2;
    static constexpr size_t OFF_P = OFF_S + (size_t)BR * BC * 4;
    static constexpr size_t OFF_O = OFF_P + (size_t)BR * BC * 2;
    static constexpr size_t OFF_ST = OFF_O + (size_t)BR * DP * 4;
    static constexpr size_t SMEM = OFF_ST + (size_t)BR * 2 * 4;
};

// grid (ceil(Tq / 64), H, N), block 128, dynamic shared memory AttnTcCfg<D>::SMEM.
template <int D>
__global__ void attention_forward_tc_kernel(const __nv_bfloat16 *q, int64_t ldq,
                                            const __nv_bfloat16 *k, int64_t ldk,
                                            const __nv_bfloat16 *v, int64_t ldv,
                                            __nv_bfloat16 *o, int64_t ldo, float *lse, int H,
                                            int Tq, int Tk, float scale)
{
    typedef AttnTcCfg<D> C;
    constexpr int DP = C::DP;
    DL_DYNAMIC_SMEM(unsigned char, smem);
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)(smem + C::OFF_Q);
    __nv_bfloat16 *Ks = (__nv_bfloat16 *)(smem + C::OFF_K);
    __nv_bfloat16 *Vs = (__nv_bfloat16 *)(smem + C::OFF_V);
    float *Ss = (float *)(smem + C::OFF_S);
    __nv_bfloat16 *Ps = (__nv_bfloat16 *)(smem + C::OFF_P);
    float *Os = (float *)(smem + C::OFF_O);
    float *Ms = (float *)(smem + C::OFF_ST), *Ls = Ms + C::BR;

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const __nv_bfloat16 *qh = q + (int64_t)n * Tq * ldq + (int64_t)h * D;
    const __nv_bfloat16 *kh = k + (int64_t)n * Tk * ldk + (int64_t)h * D;
    const __nv_bfloat16 *vh = v + (int64_t)n * Tk * ldv + (int64_t)h * D;
    const __nv_bfloat16 zero = __float2bfloat16(0.0f);

    for (int i = tid; i < C::BR * DP; i += C::THREADS) {
        int r = i / DP, c = i - r * DP, t = row0 + r;
        Qs[i] = (t < Tq && c < D) ? qh[(int64_t)t * ldq + c] : zero;
        Os[i] = 0.0f;
    }
    for (int i = tid; i < C::BR; i += C::THREADS) {
        Ms[i] = -INFINITY;
        Ls[i] = 0.0f;
    }

    // this warp's 16 rows; in the softmax lane owns row (lane >> 1), columns half (lane & 1)
    __nv_bfloat16 *Qw = Qs + warp * 16 * DP;
    float *Sw = Ss + warp * 16 * C::BC, *Ow = Os + warp * 16 * DP;
    __nv_bfloat16 *Pw = Ps + warp * 16 * C::BC;
    const int sr = lane >> 1, sh = lane & 1, wr = warp * 16 + sr;

    for (int kt = 0; kt < Tk; kt += C::BC) {
        __syncthreads(); // previous K/V tile consumed (and Q/O initialised on the first pass)
        for (int i = tid; i < C::BC * DP; i += C::THREADS) {
            int j = i / DP, c = i - j * DP, key = kt + j;
            bool ok = key < Tk && c < D;
            Ks[i] = ok ? kh[(int64_t)key * ldk + c] : zero;
            Vs[i] = ok ? vh[(int64_t)key * ldv + c] : zero;
        }
        __syncthreads();

        // S (16 × 32) = Q_w · K_tileᵀ
        for (int nb = 0; nb < C::BC / 16; nb++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < DP; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(a, Qw + kk, DP);
                wmma::load_matrix_sync(b, Ks + nb * 16 * DP + kk, DP);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Sw + nb * 16, acc, C::BC, wmma::mem_row_major);
        }
        __syncwarp();

        // online softmax on row sr, columns [sh·16, sh·16 + 16)
        float sv[16], mx = -INFINITY;
        for (int j = 0; j < 16; j++) {
            int col = sh * 16 + j;
            sv[j] = kt + col < Tk ? Sw[sr * C::BC + col] * scale : -INFINITY;
            mx = fmaxf(mx, sv[j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float mold = Ms[wr], mnew = fmaxf(mold, mx); // key kt is valid: mnew finite
        const float corr = expf(mold - mnew);
        float ps = 0.0f;
        for (int j = 0; j < 16; j++) {
            float p = expf(sv[j] - mnew);
            __nv_bfloat16 pb = __float2bfloat16(p);
            Pw[sr * C::BC + sh * 16 + j] = pb;
            ps += __bfloat162float(pb); // normalise by what the tensor cores multiply
        }
        ps += __shfl_xor_sync(0xffffffffu, ps, 1);
        for (int c = sh; c < DP; c += 2) Ow[sr * DP + c] *= corr;
        __syncwarp();
        if (sh == 0) {
            Ms[wr] = mnew;
            Ls[wr] = Ls[wr] * corr + ps;
        }

        // O_w (16 × DP) += P_w (16 × 32) · V_tile (32 × DP)
        for (int nb = 0; nb < DP / 16; nb++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, Ow + nb * 16, DP, wmma::mem_row_major);
            for (int kk = 0; kk < C::BC; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(a, Pw + kk, C::BC);
                wmma::load_matrix_sync(b, Vs + kk * DP + nb * 16, DP);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Ow + nb * 16, acc, DP, wmma::mem_row_major);
        }
        __syncwarp();
    }

    // o = O / l, lse = m + log(l); lane pair per row as in the softmax
    const int t = row0 + wr;
    if (t < Tq) {
        const float l = Ls[wr], inv = 1.0f / l;
        __nv_bfloat16 *orow = o + ((int64_t)n * Tq + t) * ldo + (int64_t)h * D;
        for (int c = sh; c < D; c += 2) orow[c] = __float2bfloat16(Ow[sr * DP + c] * inv);
        if (sh == 0) lse[((int64_t)n * H + h) * Tq + t] = Ms[wr] + logf(l);
    }
}

// ---- backward: dQ and dK/dV on tensor cores, accumulators in WMMA fragments (d <= 80) ----------

template <int D>
struct AttnTcBwdCfg {
    static constexpr int DP = (D + 15) / 16 * 16;
    static constexpr int NF = DP / 16;            // accumulator fragments per warp
    static constexpr int NW = 4;
    static constexpr int BR = 16 * NW;            // rows (queries or keys) owned by a block
    static constexpr int BC = 32;                 // streamed tile
    static constexpr int THREADS = 32 * NW;
};

// delta[n, h, t] = Σ_c dO·O over the head's channels; one warp per (n, t, h). grid
// ceil(N·Tq·H / 4), block 128.
template <int D>
__global__ void attention_backward_delta_tc_kernel(const __nv_bfloat16 *o,
                                                   const __nv_bfloat16 *dout, int64_t ldo,
                                                   float *delta, int N, int H, int Tq)
{
    const int64_t row = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = (int)threadIdx.x & 31;
    if (row >= (int64_t)N * Tq * H) return; // whole warps leave together
    const int h = (int)(row % H);
    const int64_t nt = row / H, n = nt / Tq, t = nt % Tq;
    float sum = 0.0f;
    for (int c = lane; c < D; c += 32)
        sum += __bfloat162float(o[nt * ldo + (int64_t)h * D + c]) *
               __bfloat162float(dout[nt * ldo + (int64_t)h * D + c]);
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) delta[(n * H + h) * Tq + t] = sum;
}

// Writes a warp's 16 × DP fragments ·mul to rows [t0, t0 + 16) of a token matrix (columns < D,
// rows < T), staging each 16 × 16 fragment through the warp's fp32 scratch (16 × 32 floats).
template <int D, int NF>
static __device__ inline void attn_tc_store_rows(
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> (&acc)[NF], float *scratch,
    __nv_bfloat16 *dst, int64_t ld, int t0, int T, float mul)
{
    const int lane = (int)threadIdx.x & 31;
    for (int nb = 0; nb < NF; nb++) {
        wmma::store_matrix_sync(scratch, acc[nb], 16, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 256; i += 32) {
            int r = i >> 4, c = nb * 16 + (i & 15), t = t0 + r;
            if (t < T && c < D) dst[(int64_t)t * ld + c] = __float2bfloat16(scratch[i] * mul);
        }
        __syncwarp();
    }
}

// dQ = scale·dS·K, dS = P∘(dO·Vᵀ - delta), P = exp(scale·Q·Kᵀ - lse); a block owns 64 queries.
// grid (ceil(Tq / 64), H, N), block 128.
template <int D>
__global__ void attention_backward_dq_tc_kernel(const __nv_bfloat16 *q, int64_t ldq,
                                                const __nv_bfloat16 *k, int64_t ldk,
                                                const __nv_bfloat16 *v, int64_t ldv,
                                                const __nv_bfloat16 *dout, int64_t ldo,
                                                const float *lse, const float *delta,
                                                __nv_bfloat16 *dq, int H, int Tq, int Tk,
                                                float scale)
{
    typedef AttnTcBwdCfg<D> C;
    constexpr int DP = C::DP, BC = C::BC;
    __shared__ __align__(32) __nv_bfloat16 Qs[C::BR * DP], Ds[C::BR * DP];
    __shared__ __align__(32) __nv_bfloat16 Ks[BC * DP], Vs[BC * DP];
    __shared__ __align__(32) float Ss[C::NW * 16 * BC];
    __shared__ __align__(32) __nv_bfloat16 Ps[C::NW * 16 * BC];
    __shared__ float lse_s[C::BR], del_s[C::BR];

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const __nv_bfloat16 zero = __float2bfloat16(0.0f);
    const int64_t bh = (int64_t)n * H + h;
    for (int i = tid; i < C::BR * DP; i += C::THREADS) {
        int r = i / DP, c = i - r * DP, t = row0 + r;
        bool ok = t < Tq && c < D;
        Qs[i] = ok ? q[((int64_t)n * Tq + t) * ldq + (int64_t)h * D + c] : zero;
        Ds[i] = ok ? dout[((int64_t)n * Tq + t) * ldo + (int64_t)h * D + c] : zero;
    }
    for (int i = tid; i < C::BR; i += C::THREADS) {
        int t = row0 + i;
        lse_s[i] = t < Tq ? lse[bh * Tq + t] : 0.0f;
        del_s[i] = t < Tq ? delta[bh * Tq + t] : 0.0f;
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[C::NF];
    for (int f = 0; f < C::NF; f++) wmma::fill_fragment(acc[f], 0.0f);
    const __nv_bfloat16 *Qw = Qs + warp * 16 * DP, *Dw = Ds + warp * 16 * DP;
    float *Sw = Ss + warp * 16 * BC;
    __nv_bfloat16 *Pw = Ps + warp * 16 * BC;
    const int sr = lane >> 1, sh = lane & 1, wr = warp * 16 + sr;

    for (int kt = 0; kt < Tk; kt += BC) {
        __syncthreads();
        for (int i = tid; i < BC * DP; i += C::THREADS) {
            int j = i / DP, c = i - j * DP, key = kt + j;
            bool ok = key < Tk && c < D;
            Ks[i] = ok ? k[((int64_t)n * Tk + key) * ldk + (int64_t)h * D + c] : zero;
            Vs[i] = ok ? v[((int64_t)n * Tk + key) * ldv + (int64_t)h * D + c] : zero;
        }
        __syncthreads();
        float p[16];
        for (int pass = 0; pass < 2; pass++) {
            // pass 0: S = Q·Kᵀ; pass 1: dP = dO·Vᵀ (both 16 × 32, through Sw)
            for (int nb = 0; nb < BC / 16; nb++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
                wmma::fill_fragment(s, 0.0f);
                for (int kk = 0; kk < DP; kk += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                    wmma::load_matrix_sync(a, (pass ? Dw : Qw) + kk, DP);
                    wmma::load_matrix_sync(b, (pass ? Vs : Ks) + nb * 16 * DP + kk, DP);
                    wmma::mma_sync(s, a, b, s);
                }
                wmma::store_matrix_sync(Sw + nb * 16, s, BC, wmma::mem_row_major);
            }
            __syncwarp();
            for (int j = 0; j < 16; j++) {
                int col = sh * 16 + j;
                float x = Sw[sr * BC + col];
                if (pass == 0) p[j] = kt + col < Tk ? expf(x * scale - lse_s[wr]) : 0.0f;
                else Pw[sr * BC + col] = __float2bfloat16(p[j] * (x - del_s[wr]));
            }
            __syncwarp();
        }
        // dQ_w += dS_w (16 × 32) · K_tile (32 × DP)
        for (int nb = 0; nb < C::NF; nb++)
            for (int kk = 0; kk < BC; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(a, Pw + kk, BC);
                wmma::load_matrix_sync(b, Ks + kk * DP + nb * 16, DP);
                wmma::mma_sync(acc[nb], a, b, acc[nb]);
            }
    }
    attn_tc_store_rows<D, C::NF>(acc, Sw, dq + (int64_t)n * Tq * ldq + (int64_t)h * D, ldq,
                                 row0 + warp * 16, Tq, scale);
}

// dV = Pᵀ·dO, dK = scale·dSᵀ·Q; a block owns 64 keys, streams query tiles of 32.
// grid (ceil(Tk / 64), H, N), block 128.
template <int D>
__global__ void attention_backward_dkdv_tc_kernel(const __nv_bfloat16 *q, int64_t ldq,
                                                  const __nv_bfloat16 *k, int64_t ldk,
                                                  const __nv_bfloat16 *v, int64_t ldv,
                                                  const __nv_bfloat16 *dout, int64_t ldo,
                                                  const float *lse, const float *delta,
                                                  __nv_bfloat16 *dk, __nv_bfloat16 *dv, int H,
                                                  int Tq, int Tk, float scale)
{
    typedef AttnTcBwdCfg<D> C;
    constexpr int DP = C::DP, BC = C::BC;
    __shared__ __align__(32) __nv_bfloat16 Ks[C::BR * DP], Vs[C::BR * DP];
    __shared__ __align__(32) __nv_bfloat16 Qs[BC * DP], Ds[BC * DP];
    __shared__ __align__(32) float Ss[C::NW * 16 * BC];
    __shared__ __align__(32) __nv_bfloat16 Ps[C::NW * 16 * BC];
    __shared__ float lse_s[BC], del_s[BC];

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const __nv_bfloat16 zero = __float2bfloat16(0.0f);
    const int64_t bh = (int64_t)n * H + h;
    for (int i = tid; i < C::BR * DP; i += C::THREADS) {
        int r = i / DP, c = i - r * DP, t = row0 + r;
        bool ok = t < Tk && c < D;
        Ks[i] = ok ? k[((int64_t)n * Tk + t) * ldk + (int64_t)h * D + c] : zero;
        Vs[i] = ok ? v[((int64_t)n * Tk + t) * ldv + (int64_t)h * D + c] : zero;
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> adk[C::NF], adv[C::NF];
    for (int f = 0; f < C::NF; f++) {
        wmma::fill_fragment(adk[f], 0.0f);
        wmma::fill_fragment(adv[f], 0.0f);
    }
    const __nv_bfloat16 *Kw = Ks + warp * 16 * DP, *Vw = Vs + warp * 16 * DP;
    float *Sw = Ss + warp * 16 * BC;
    __nv_bfloat16 *Pw = Ps + warp * 16 * BC;
    const int sr = lane >> 1, sh = lane & 1;

    for (int qt = 0; qt < Tq; qt += BC) {
        __syncthreads();
        for (int i = tid; i < BC * DP; i += C::THREADS) {
            int j = i / DP, c = i - j * DP, t = qt + j;
            bool ok = t < Tq && c < D;
            Qs[i] = ok ? q[((int64_t)n * Tq + t) * ldq + (int64_t)h * D + c] : zero;
            Ds[i] = ok ? dout[((int64_t)n * Tq + t) * ldo + (int64_t)h * D + c] : zero;
        }
        for (int i = tid; i < BC; i += C::THREADS) {
            int t = qt + i;
            lse_s[i] = t < Tq ? lse[bh * Tq + t] : 0.0f;
            del_s[i] = t < Tq ? delta[bh * Tq + t] : 0.0f;
        }
        __syncthreads();
        float p[16];
        for (int pass = 0; pass < 2; pass++) {
            // pass 0: Sᵀ = K_w·Q_tileᵀ; pass 1: dPᵀ = V_w·dO_tileᵀ (16 keys × 32 queries)
            for (int nb = 0; nb < BC / 16; nb++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
                wmma::fill_fragment(s, 0.0f);
                for (int kk = 0; kk < DP; kk += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                    wmma::load_matrix_sync(a, (pass ? Vw : Kw) + kk, DP);
                    wmma::load_matrix_sync(b, (pass ? Ds : Qs) + nb * 16 * DP + kk, DP);
                    wmma::mma_sync(s, a, b, s);
                }
                wmma::store_matrix_sync(Sw + nb * 16, s, BC, wmma::mem_row_major);
            }
            __syncwarp();
            for (int j = 0; j < 16; j++) {
                int col = sh * 16 + j;
                float x = Sw[sr * BC + col];
                if (pass == 0) {
                    p[j] = qt + col < Tq ? expf(x * scale - lse_s[col]) : 0.0f;
                    Pw[sr * BC + col] = __float2bfloat16(p[j]);
                } else {
                    Pw[sr * BC + col] = __float2bfloat16(p[j] * (x - del_s[col]));
                }
            }
            __syncwarp();
            // pass 0: dV_w += Pᵀ_w · dO_tile; pass 1: dK_w += dSᵀ_w · Q_tile
            for (int nb = 0; nb < C::NF; nb++)
                for (int kk = 0; kk < BC; kk += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                    wmma::load_matrix_sync(a, Pw + kk, BC);
                    wmma::load_matrix_sync(b, (pass ? Qs : Ds) + kk * DP + nb * 16, DP);
                    if (pass) wmma::mma_sync(adk[nb], a, b, adk[nb]);
                    else wmma::mma_sync(adv[nb], a, b, adv[nb]);
                }
            __syncwarp(); // Pw and Sw are rewritten next
        }
    }
    const int t0 = row0 + warp * 16;
    if (dv)
        attn_tc_store_rows<D, C::NF>(adv, Sw, dv + (int64_t)n * Tk * ldv + (int64_t)h * D, ldv,
                                     t0, Tk, 1.0f);
    if (dk)
        attn_tc_store_rows<D, C::NF>(adk, Sw, dk + (int64_t)n * Tk * ldk + (int64_t)h * D, ldk,
                                     t0, Tk, scale);
}

template <int D>
static int attn_tc_launch(int N, int H, int Tq, int Tk, float scale, const void *q, int64_t ldq,
                          const void *k, int64_t ldk, const void *v, int64_t ldv, void *o,
                          int64_t ldo, float *lse, cudaStream_t stream)
{
    typedef AttnTcCfg<D> C;
    cudaError_t e = cudaFuncSetAttribute(attention_forward_tc_kernel<D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)C::SMEM);
    if (e != cudaSuccess) return (int)e;
    dim3 grid((unsigned)((Tq + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
    DL_LAUNCH(attention_forward_tc_kernel<D>, grid, dim3(C::THREADS), C::SMEM, stream,
              (const __nv_bfloat16 *)q, ldq, (const __nv_bfloat16 *)k, ldk,
              (const __nv_bfloat16 *)v, ldv, (__nv_bfloat16 *)o, ldo, lse, H, Tq, Tk, scale);
    return (int)cudaGetLastError();
}

template <int D>
static int attn_tc_backward_launch(int N, int H, int Tq, int Tk, float scale, const void *q,
                                   int64_t ldq, const void *k, int64_t ldk, const void *v,
                                   int64_t ldv, const void *o, const void *dout, int64_t ldo,
                                   const float *lse, float *delta, void *dq, void *dk, void *dv,
                                   cudaStream_t stream)
{
    typedef AttnTcBwdCfg<D> C;
    typedef __nv_bfloat16 B;
    // delta = rowsum(dO ∘ O) (memory-bound, one pass)
    int64_t rows = (int64_t)N * Tq * H;
    DL_LAUNCH(attention_backward_delta_tc_kernel<D>, dim3((unsigned)((rows + 3) / 4)), dim3(128),
              0, stream, (const B *)o, (const B *)dout, ldo, delta, N, H, Tq);
    if (dq) {
        dim3 g((unsigned)((Tq + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
        DL_LAUNCH(attention_backward_dq_tc_kernel<D>, g, dim3(C::THREADS), 0, stream,
                  (const B *)q, ldq, (const B *)k, ldk, (const B *)v, ldv, (const B *)dout, ldo,
                  lse, (const float *)delta, (B *)dq, H, Tq, Tk, scale);
    }
    if (dk || dv) {
        dim3 g((unsigned)((Tk + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
        DL_LAUNCH(attention_backward_dkdv_tc_kernel<D>, g, dim3(C::THREADS), 0, stream,
                  (const B *)q, ldq, (const B *)k, ldk, (const B *)v, ldv, (const B *)dout, ldo,
                  lse, (const float *)delta, (B *)dk, (B *)dv, H, Tq, Tk, scale);
    }
    return (int)cudaGetLastError();
}

extern "C" int dl_cuda_attention_backward_tc(dl_dtype dt, int N, int H, int Tq, int Tk, int d,
                                             float scale, const void *q, int64_t ldq,
                                             const void *k, int64_t ldk, const void *v,
                                             int64_t ldv, const void *o, const void *dout,
                                             int64_t ldo, const float *lse, float *delta,
                                             void *dq, void *dk, void *dv, cudaStream_t stream)
{
    if (dt != DL_BF16 || N <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || !delta) return -1;
    if (ldq < (int64_t)H * d || ldk < (int64_t)H * d || ldv < (int64_t)H * d ||
        ldo < (int64_t)H * d)
        return -1;
    switch (d) {
    case 40:
        return attn_tc_backward_launch<40>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout,
                                           ldo, lse, delta, dq, dk, dv, stream);
    case 64:
        return attn_tc_backward_launch<64>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout,
                                           ldo, lse, delta, dq, dk, dv, stream);
    case 80:
        return attn_tc_backward_launch<80>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, dout,
                                           ldo, lse, delta, dq, dk, dv, stream);
    default: // d = 160: 20 accumulator fragments per warp would spill; the portable kernels
        return dl_cuda_attention_backward(dt, N, H, Tq, Tk, d, scale, q, ldq, k, ldk, v, ldv, o,
                                          dout, ldo, lse, delta, dq, dk, dv, stream);
    }
}

extern "C" int dl_cuda_attention_forward_tc(dl_dtype dt, int N, int H, int Tq, int Tk, int d,
                                            float scale, const void *q, int64_t ldq,
                                            const void *k, int64_t ldk, const void *v,
                                            int64_t ldv, void *o, int64_t ldo, float *lse,
                                            cudaStream_t stream)
{
    if (dt != DL_BF16 || N <= 0 || H <= 0 || Tq <= 0 || Tk <= 0) return -1;
    if (ldq < (int64_t)H * d || ldk < (int64_t)H * d || ldv < (int64_t)H * d ||
        ldo < (int64_t)H * d)
        return -1;
    switch (d) {
    case 40: return attn_tc_launch<40>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 64: return attn_tc_launch<64>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 80: return attn_tc_launch<80>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    case 160: return attn_tc_launch<160>(N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
    default: return -1;
    }
}
