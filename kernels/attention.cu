/* attention.cu - fused flash-style attention, forward and backward, portable CUDA (no PTX).
 *
 * softmax(scale·Q·Kᵀ)·V per (batch, head) on channels-last tokens [N, T, H·d]; the T×T score
 * matrix never reaches global memory.
 *   forward : a block owns BR query rows of one (n, h); it streams K/V in tiles of 32 keys
 *             through shared memory and keeps an online softmax (running max m, sum l) and the
 *             output accumulator in registers; it writes O and lse = m + log(l).
 *   backward: delta = rowsum(dO ∘ O); then two recomputing kernels, no atomics (deterministic):
 *             dQ (a block owns query rows, streams key tiles) and dK/dV (a block owns key rows,
 *             streams query tiles), both rebuilding P = exp(S - lse) tile by tile.
 * Every kernel maps one warp to a few rows and the 32 lanes to the 32 columns of the streamed
 * tile for the dot products (rows padded to an odd stride: no bank conflicts), then to the head
 * dimension (lane + 32·m) for the accumulations. Storage float or bf16, all math fp32. */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"

#include <math.h>

// ---- configuration -----------------------------------------------------------------------------

template <int D, bool BWD>
struct AttnCfg {
    static constexpr int DPL = (D + 31) / 32;          // head-dim slots per lane
    static constexpr int NW = 4;                        // warps per block
    // rows per warp: keeps static shared memory under 48 KiB at d = 160
    static constexpr int RW = D > 96 ? (BWD ? 1 : 2) : 4;
    static constexpr int BR = NW * RW;                  // rows owned by a block
    static constexpr int BC = 32;                       // streamed tile: one column per lane
    static constexpr int KP = D + 1;                    // padded stride of lane-indexed rows
    static constexpr int THREADS = NW * 32;
};

static __device__ inline float attn_ld(const float *p) { return *p; }
static __device__ inline float attn_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
static __device__ inline void attn_st(float *p, float v) { *p = v; }
static __device__ inline void attn_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }

static __device__ inline float attn_warp_max(float v)
{
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

static __device__ inline float attn_warp_sum(float v)
{
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Copies rows [row0, row0 + nrows) of one head of a token matrix into shared memory as fp32,
// `mul` applied, rows past `T` zero-filled. src row t starts at src + t·ld.
template <typename T, int D>
static __device__ inline void attn_load_rows(float *dst, int dst_stride, const T *src, int64_t ld,
                                             int row0, int nrows, int T_, float mul)
{
    for (int idx = (int)threadIdx.x; idx < nrows * D; idx += (int)blockDim.x) {
        int r = idx / D, c = idx - r * D, t = row0 + r;
        dst[r * dst_stride + c] = t < T_ ? attn_ld(src + (int64_t)t * ld + c) * mul : 0.0f;
    }
}

// ---- kernels -----------------------------------------------------------------------------------

// grid (ceil(Tq / BR), H, N), block THREADS.
// q [N, Tq, ldq], k [N, Tk, ldk], v [N, Tk, ldv], o [N, Tq, ldo], lse [N, H, Tq]
template <typename T, int D>
__global__ void attention_forward_kernel(const T *q, int64_t ldq, const T *k, int64_t ldk,
                                         const T *v, int64_t ldv, T *o, int64_t ldo, float *lse,
                                         int H, int Tq, int Tk, float scale)
{
    typedef AttnCfg<D, false> C;
    __shared__ float qs[C::BR * D];       // scaled query rows
    __shared__ float ks[C::BC * C::KP];   // key tile, lane-indexed rows
    __shared__ float vs[C::BC * D];       // value tile

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const T *qh = q + (int64_t)n * Tq * ldq + (int64_t)h * D;
    const T *kh = k + (int64_t)n * Tk * ldk + (int64_t)h * D;
    const T *vh = v + (int64_t)n * Tk * ldv + (int64_t)h * D;

    attn_load_rows<T, D>(qs, D, qh, ldq, row0, C::BR, Tq, scale);

    float m[C::RW], l[C::RW], acc[C::RW][C::DPL];
    for (int r = 0; r < C::RW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int s = 0; s < C::DPL; s++) acc[r][s] = 0.0f;
    }

    for (int kt = 0; kt < Tk; kt += C::BC) {
        __syncthreads(); // the previous tile is consumed
        attn_load_rows<T, D>(ks, C::KP, kh, ldk, kt, C::BC, Tk, 1.0f);
        attn_load_rows<T, D>(vs, D, vh, ldv, kt, C::BC, Tk, 1.0f);
        __syncthreads();

        const bool valid = kt + lane < Tk;
        // scores of this lane's key against the warp's rows; each key element is loaded once
        float sc[C::RW], p[C::RW];
        const float *qw = qs + warp * C::RW * D, *kr = ks + lane * C::KP;
        for (int r = 0; r < C::RW; r++) sc[r] = 0.0f;
        for (int c = 0; c < D; c++) {
            const float kv = kr[c];
            for (int r = 0; r < C::RW; r++) sc[r] += qw[r * D + c] * kv;
        }
        for (int r = 0; r < C::RW; r++) {
            sc[r] = valid ? sc[r] : -INFINITY;
            // key kt (lane 0) is always valid, so the tile max is finite
            float mnew = fmaxf(m[r], attn_warp_max(sc[r]));
            float corr = expf(m[r] - mnew); // 0 on the first tile (m = -inf)
            p[r] = expf(sc[r] - mnew);
            l[r] = l[r] * corr + p[r];     // per-lane partial sums, reduced at the end
            m[r] = mnew;
            for (int s = 0; s < C::DPL; s++) acc[r][s] *= corr;
        }
        for (int j = 0; j < C::BC; j++) {
            float pj[C::RW];
            for (int r = 0; r < C::RW; r++) pj[r] = __shfl_sync(0xffffffffu, p[r], j);
            for (int s = 0; s < C::DPL; s++) {
                int c = lane + 32 * s;
                if (c < D) {
                    float vv = vs[j * D + c];
                    for (int r = 0; r < C::RW; r++) acc[r][s] += pj[r] * vv;
                }
            }
        }
    }

    for (int r = 0; r < C::RW; r++) {
        float lsum = attn_warp_sum(l[r]);
        int t = row0 + warp * C::RW + r;
        if (t >= Tq) continue;
        float inv = 1.0f / lsum;
        T *orow = o + ((int64_t)n * Tq + t) * ldo + (int64_t)h * D;
        for (int s = 0; s < C::DPL; s++) {
            int c = lane + 32 * s;
            if (c < D) attn_st(orow + c, acc[r][s] * inv);
        }
        if (lane == 0) lse[((int64_t)n * H + h) * Tq + t] = m[r] + logf(lsum);
    }
}

// delta[n, h, t] = Σ_c dO[n, t, h·d + c] · O[n, t, h·d + c]; one warp per (n, t, h).
// grid ceil(N·Tq·H / 4), block 128.
template <typename T, int D>
__global__ void attention_backward_delta_kernel(const T *o, const T *dout, int64_t ldo,
                                                float *delta, int N, int H, int Tq)
{
    const int64_t row = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = (int)threadIdx.x & 31;
    if (row >= (int64_t)N * Tq * H) return; // whole warps leave together
    const int h = (int)(row % H);
    const int64_t nt = row / H, n = nt / Tq, t = nt % Tq;
    const T *orow = o + nt * ldo + (int64_t)h * D, *drow = dout + nt * ldo + (int64_t)h * D;
    float sum = 0.0f;
    for (int c = lane; c < D; c += 32) sum += attn_ld(orow + c) * attn_ld(drow + c);
    sum = attn_warp_sum(sum);
    if (lane == 0) delta[(n * H + h) * Tq + t] = sum;
}

// dQ = scale · Σ_j dS_ij K_j with dS = P ∘ (dO·Vᵀ - delta), P = exp(scale·Q·Kᵀ - lse).
// grid (ceil(Tq / BR), H, N), block THREADS.
template <typename T, int D>
__global__ void attention_backward_dq_kernel(const T *q, int64_t ldq, const T *k, int64_t ldk,
                                             const T *v, int64_t ldv, const T *dout, int64_t ldo,
                                             const float *lse, const float *delta, T *dq,
                                             int H, int Tq, int Tk, float scale)
{
    typedef AttnCfg<D, true> C;
    __shared__ float qs[C::BR * D];       // scaled query rows
    __shared__ float dos[C::BR * D];      // dO rows
    __shared__ float ks[C::BC * C::KP];   // key tile
    __shared__ float vs[C::BC * C::KP];   // value tile (lane-indexed for dO·Vᵀ)

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const T *qh = q + (int64_t)n * Tq * ldq + (int64_t)h * D;
    const T *kh = k + (int64_t)n * Tk * ldk + (int64_t)h * D;
    const T *vh = v + (int64_t)n * Tk * ldv + (int64_t)h * D;
    const T *dh = dout + (int64_t)n * Tq * ldo + (int64_t)h * D;

    attn_load_rows<T, D>(qs, D, qh, ldq, row0, C::BR, Tq, scale);
    attn_load_rows<T, D>(dos, D, dh, ldo, row0, C::BR, Tq, 1.0f);

    float lse_r[C::RW], del_r[C::RW], acc[C::RW][C::DPL];
    for (int r = 0; r < C::RW; r++) {
        int t = row0 + warp * C::RW + r;
        int64_t si = ((int64_t)n * H + h) * Tq + t;
        lse_r[r] = t < Tq ? lse[si] : 0.0f;
        del_r[r] = t < Tq ? delta[si] : 0.0f;
        for (int s = 0; s < C::DPL; s++) acc[r][s] = 0.0f;
    }

    for (int kt = 0; kt < Tk; kt += C::BC) {
        __syncthreads();
        attn_load_rows<T, D>(ks, C::KP, kh, ldk, kt, C::BC, Tk, 1.0f);
        attn_load_rows<T, D>(vs, C::KP, vh, ldv, kt, C::BC, Tk, 1.0f);
        __syncthreads();

        const bool valid = kt + lane < Tk;
        float sc[C::RW], dp[C::RW], ds[C::RW];
        const float *qw = qs + warp * C::RW * D, *dw = dos + warp * C::RW * D;
        const float *kr = ks + lane * C::KP, *vr = vs + lane * C::KP;
        for (int r = 0; r < C::RW; r++) sc[r] = dp[r] = 0.0f;
        for (int c = 0; c < D; c++) {
            const float kv = kr[c], vv = vr[c];
            for (int r = 0; r < C::RW; r++) {
                sc[r] += qw[r * D + c] * kv;
                dp[r] += dw[r * D + c] * vv;
            }
        }
        for (int r = 0; r < C::RW; r++) {
            float p = valid ? expf(sc[r] - lse_r[r]) : 0.0f;
            ds[r] = p * (dp[r] - del_r[r]);
        }
        for (int j = 0; j < C::BC; j++) {
            float dsj[C::RW];
            for (int r = 0; r < C::RW; r++) dsj[r] = __shfl_sync(0xffffffffu, ds[r], j);
            for (int s = 0; s < C::DPL; s++) {
                int c = lane + 32 * s;
                if (c < D) {
                    float kv = ks[j * C::KP + c];
                    for (int r = 0; r < C::RW; r++) acc[r][s] += dsj[r] * kv;
                }
            }
        }
    }

    for (int r = 0; r < C::RW; r++) {
        int t = row0 + warp * C::RW + r;
        if (t >= Tq) continue;
        T *row = dq + ((int64_t)n * Tq + t) * ldq + (int64_t)h * D;
        for (int s = 0; s < C::DPL; s++) {
            int c = lane + 32 * s;
            if (c < D) attn_st(row + c, acc[r][s] * scale);
        }
    }
}

// dV_j = Σ_i P_ij dO_i, dK_j = Σ_i dS_ij (scale·Q_i); a block owns BR key rows and streams
// query tiles. grid (ceil(Tk / BR), H, N), block THREADS.
template <typename T, int D>
__global__ void attention_backward_dkdv_kernel(const T *q, int64_t ldq, const T *k, int64_t ldk,
                                               const T *v, int64_t ldv, const T *dout,
                                               int64_t ldo, const float *lse, const float *delta,
                                               T *dk, T *dv, int H, int Tq, int Tk, float scale)
{
    typedef AttnCfg<D, true> C;
    __shared__ float ks[C::BR * D];       // key rows of this block
    __shared__ float vs[C::BR * D];       // value rows of this block
    __shared__ float qs[C::BC * C::KP];   // scaled query tile, lane-indexed
    __shared__ float dos[C::BC * C::KP];  // dO tile, lane-indexed
    __shared__ float lse_s[C::BC], del_s[C::BC];

    const int n = (int)blockIdx.z, h = (int)blockIdx.y, row0 = (int)blockIdx.x * C::BR;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const T *qh = q + (int64_t)n * Tq * ldq + (int64_t)h * D;
    const T *kh = k + (int64_t)n * Tk * ldk + (int64_t)h * D;
    const T *vh = v + (int64_t)n * Tk * ldv + (int64_t)h * D;
    const T *dh = dout + (int64_t)n * Tq * ldo + (int64_t)h * D;
    const float *lse_h = lse + ((int64_t)n * H + h) * Tq;
    const float *del_h = delta + ((int64_t)n * H + h) * Tq;

    attn_load_rows<T, D>(ks, D, kh, ldk, row0, C::BR, Tk, 1.0f);
    attn_load_rows<T, D>(vs, D, vh, ldv, row0, C::BR, Tk, 1.0f);

    float adk[C::RW][C::DPL], adv[C::RW][C::DPL];
    for (int r = 0; r < C::RW; r++)
        for (int s = 0; s < C::DPL; s++) adk[r][s] = adv[r][s] = 0.0f;

    for (int qt = 0; qt < Tq; qt += C::BC) {
        __syncthreads();
        attn_load_rows<T, D>(qs, C::KP, qh, ldq, qt, C::BC, Tq, scale);
        attn_load_rows<T, D>(dos, C::KP, dh, ldo, qt, C::BC, Tq, 1.0f);
        if ((int)threadIdx.x < C::BC) {
            int t = qt + (int)threadIdx.x;
            lse_s[threadIdx.x] = t < Tq ? lse_h[t] : 0.0f;
            del_s[threadIdx.x] = t < Tq ? del_h[t] : 0.0f;
        }
        __syncthreads();

        const bool valid = qt + lane < Tq;
        float sc[C::RW], dp[C::RW], p[C::RW], ds[C::RW];
        const float *kw = ks + warp * C::RW * D, *vw = vs + warp * C::RW * D;
        const float *qr = qs + lane * C::KP, *dr = dos + lane * C::KP;
        for (int r = 0; r < C::RW; r++) sc[r] = dp[r] = 0.0f;
        for (int c = 0; c < D; c++) {
            const float qv = qr[c], dv_ = dr[c];
            for (int r = 0; r < C::RW; r++) {
                sc[r] += kw[r * D + c] * qv;
                dp[r] += vw[r * D + c] * dv_;
            }
        }
        for (int r = 0; r < C::RW; r++) {
            p[r] = valid ? expf(sc[r] - lse_s[lane]) : 0.0f;
            ds[r] = p[r] * (dp[r] - del_s[lane]);
        }
        for (int i = 0; i < C::BC; i++) {
            float pi[C::RW], dsi[C::RW];
            for (int r = 0; r < C::RW; r++) {
                pi[r] = __shfl_sync(0xffffffffu, p[r], i);
                dsi[r] = __shfl_sync(0xffffffffu, ds[r], i);
            }
            for (int s = 0; s < C::DPL; s++) {
                int c = lane + 32 * s;
                if (c < D) {
                    float qv = qs[i * C::KP + c], dv_ = dos[i * C::KP + c];
                    for (int r = 0; r < C::RW; r++) {
                        adv[r][s] += pi[r] * dv_;
                        adk[r][s] += dsi[r] * qv;
                    }
                }
            }
        }
    }

    for (int r = 0; r < C::RW; r++) {
        int t = row0 + warp * C::RW + r;
        if (t >= Tk) continue;
        T *krow = dk ? dk + ((int64_t)n * Tk + t) * ldk + (int64_t)h * D : dk;
        T *vrow = dv ? dv + ((int64_t)n * Tk + t) * ldv + (int64_t)h * D : dv;
        for (int s = 0; s < C::DPL; s++) {
            int c = lane + 32 * s;
            if (c < D) {
                if (dk) attn_st(krow + c, adk[r][s]);
                if (dv) attn_st(vrow + c, adv[r][s]);
            }
        }
    }
}

// ---- launchers ---------------------------------------------------------------------------------

template <typename T, int D>
static int attn_forward_launch(int N, int H, int Tq, int Tk, float scale, const void *q,
                               int64_t ldq, const void *k, int64_t ldk, const void *v,
                               int64_t ldv, void *o, int64_t ldo, float *lse, cudaStream_t stream)
{
    typedef AttnCfg<D, false> C;
    dim3 grid((unsigned)((Tq + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
    DL_LAUNCH((attention_forward_kernel<T, D>), grid, dim3(C::THREADS), 0, stream,
              (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (T *)o, ldo, lse, H, Tq,
              Tk, scale);
    return (int)cudaGetLastError();
}

template <typename T, int D>
static int attn_backward_launch(int N, int H, int Tq, int Tk, float scale, const void *q,
                                int64_t ldq, const void *k, int64_t ldk, const void *v,
                                int64_t ldv, const void *o, const void *dout, int64_t ldo,
                                const float *lse, float *delta, void *dq, void *dk, void *dv,
                                cudaStream_t stream)
{
    typedef AttnCfg<D, true> C;
    int64_t rows = (int64_t)N * Tq * H;
    DL_LAUNCH((attention_backward_delta_kernel<T, D>), dim3((unsigned)((rows + 3) / 4)), dim3(128),
              0, stream, (const T *)o, (const T *)dout, ldo, delta, N, H, Tq);
    int err = (int)cudaGetLastError();
    if (err) return err;
    dim3 gq((unsigned)((Tq + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
    if (dq) {
        DL_LAUNCH((attention_backward_dq_kernel<T, D>), gq, dim3(C::THREADS), 0, stream,
                  (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (const T *)dout, ldo, lse,
                  (const float *)delta, (T *)dq, H, Tq, Tk, scale);
        if ((err = (int)cudaGetLastError())) return err;
    }
    dim3 gk((unsigned)((Tk + C::BR - 1) / C::BR), (unsigned)H, (unsigned)N);
    if (!dk && !dv) return 0;
    DL_LAUNCH((attention_backward_dkdv_kernel<T, D>), gk, dim3(C::THREADS), 0, stream,
              (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, (const T *)dout, ldo, lse,
              (const float *)delta, (T *)dk, (T *)dv, H, Tq, Tk, scale);
    return (int)cudaGetLastError();
}

// Dispatches on (dtype, head dim) to FN<T, D>(args...); -1 when unsupported.
#define ATTN_DISPATCH(FN, dt, d, ...)                                                          \
    do {                                                                                       \
        if ((dt) == DL_F32) {                                                                  \
            switch (d) {                                                                       \
            case 40: return FN<float, 40>(__VA_ARGS__);                                        \
            case 64: return FN<float, 64>(__VA_ARGS__);                                        \
            case 80: return FN<float, 80>(__VA_ARGS__);                                        \
            case 160: return FN<float, 160>(__VA_ARGS__);                                      \
            default: return -1;                                                                \
            }                                                                                  \
        } else if ((dt) == DL_BF16) {                                                          \
            switch (d) {                                                                       \
            case 40: return FN<__nv_bfloat16, 40>(__VA_ARGS__);                                \
            case 64: return FN<__nv_bfloat16, 64>(__VA_ARGS__);                                \
            case 80: return FN<__nv_bfloat16, 80>(__VA_ARGS__);                                \
            case 160: return FN<__nv_bfloat16, 160>(__VA_ARGS__);                              \
            default: return -1;                                                                \
            }                                                                                  \
        }                                                                                      \
        return -1;                                                                             \
    } while (0)

extern "C" int dl_cuda_attention_forward(dl_dtype dt, int N, int H, int Tq, int Tk, int d,
                                         float scale, const void *q, int64_t ldq, const void *k,
                                         int64_t ldk, const void *v, int64_t ldv, void *o,
                                         int64_t ldo, float *lse, cudaStream_t stream)
{
    if (N <= 0 || H <= 0 || Tq <= 0 || Tk <= 0) return -1;
    if (ldq < (int64_t)H * d || ldk < (int64_t)H * d || ldv < (int64_t)H * d ||
        ldo < (int64_t)H * d)
        return -1;
    ATTN_DISPATCH(attn_forward_launch, dt, d, N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o, ldo,
                  lse, stream);
}

extern "C" int dl_cuda_attention_backward(dl_dtype dt, int N, int H, int Tq, int Tk, int d,
                                          float scale, const void *q, int64_t ldq, const void *k,
                                          int64_t ldk, const void *v, int64_t ldv, const void *o,
                                          const void *dout, int64_t ldo, const float *lse,
                                          float *delta, void *dq, void *dk, void *dv,
                                          cudaStream_t stream)
{
    if (N <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || !delta) return -1;
    if (ldq < (int64_t)H * d || ldk < (int64_t)H * d || ldv < (int64_t)H * d ||
        ldo < (int64_t)H * d)
        return -1;
    ATTN_DISPATCH(attn_backward_launch, dt, d, N, H, Tq, Tk, scale, q, ldq, k, ldk, v, ldv, o,
                  dout, ldo, lse, delta, dq, dk, dv, stream);
}
