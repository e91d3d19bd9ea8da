/* groupnorm.cu - group-norm forward and backward on channels-last [N, HW, C], optional fused
 * SiLU, portable CUDA (no PTX): one kernel launch each way.
 *
 * G groups of Cg = C/G consecutive channels; statistics over HW·Cg elements per (n, g), in fp32
 * whatever the storage type (float or bf16), computed inside the kernel.
 *
 * ---- Work split ---------------------------------------------------------------------------------
 * A block owns one "span" of one sample: k consecutive groups, W = k·Cg channels, all HW rows.
 * It walks the span twice: pass 1 reduces, pass 2 writes (the second read of the span mostly
 * hits L2: a span is at most a few hundred KiB at SD shapes).
 *  - Vector path: a thread moves VEC = 16 / sizeof(T) elements with one 16-byte load or store
 *    (LDG.E.128 / STG.E.128). It needs x, y (dy, dx) 16-byte aligned and C·sizeof(T) a multiple
 *    of 16; k is then the smallest group count whose channels fill whole 16-byte vectors
 *    (k·Cg·sizeof(T) ≡ 0 mod 16; such a k always divides G). SD1.5: fp32 C 320 → k 2, C 640 and
 *    1280 → k 1; bf16 C 320 → k 4, 640 → 2, 1280 → 1. A vector may straddle two groups.
 *  - Scalar path (anything else, e.g. odd C): VEC = 1, k = 1.
 * The span is V = W / VEC vector columns; the block's GN_THREADS threads form R rows × TV
 * columns (TV = min(V, GN_THREADS), R = GN_THREADS / TV): thread (ry, cx) takes column
 * cx (+ TV, + 2·TV, ... in further column passes when V > GN_THREADS) and rows ry, ry + R, ...
 * A thread therefore always sees the same VEC channels in a column pass and keeps per-channel
 * sums in registers; no per-element index division in the row loop.
 *
 * ---- Reductions (deterministic: fixed order everywhere, no floating-point atomics) ---------------
 * Per column pass: every thread's per-channel partials go to shared memory; one thread per
 * channel adds the R row partials in order; one thread per group adds its channels in order.
 *  - forward : sums of (x − K_g) and (x − K_g)² with K_g = x[n, 0, first channel of g] (a shift
 *              that keeps the one-pass variance accurate for groups with a large mean).
 *  - backward: per channel Σ dz and Σ dz·x̂ (dz = dy·act'(z)); per group the means of dz·γ and
 *              dz·γ·x̂ (for dx), and the per-(n, c) sums for dγ, dβ, which need all N samples:
 *              each block writes its span's sums to the workspace, and the last block of a span
 *              to finish (an integer ticket per span; the launcher zeroes the tickets with one
 *              cudaMemsetAsync when N > 1) adds them over n = 0..N−1 in order. With N = 1 the
 *              block writes dγ, dβ itself. Same bits on every run. */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"

#include <math.h>

#define GN_THREADS 512 // threads per block
#define GN_UNROLL 4    // row vectors in flight per thread in the row loops
#define GN_MAXK 8      // most groups per span (16 bytes / 2-byte storage)

// ---- 1- or 16-byte element moves: VEC elements of T as floats ---------------------------------

/* A 16-byte global store. nvcc splits a plain float4 / uint4 store in these kernels into four
 * 4-byte STG (seen in the SASS); __stcg (st.global.cg.v4) stays one STG.E.128 and keeps the
 * written activations out of L1, which never reads them again. */
/* GN_LDCG reads what other blocks wrote before their fence and ticket (at L2, never a stale L1
 * line). */
#ifdef __CUDACC__
#define GN_ST16(p, v) __stcg((p), (v))
#define GN_LDCG(p) __ldcg(p)
#else
#define GN_ST16(p, v) (*(p) = (v))
#define GN_LDCG(p) (*(const volatile float *)(p))
#endif

template <typename T, int VEC> struct GnIO;
template <> struct GnIO<float, 1> {
    static __device__ __forceinline__ void ld(const float *p, float (&f)[1]) { f[0] = *p; }
    static __device__ __forceinline__ void st(float *p, const float (&f)[1]) { *p = f[0]; }
};
template <> struct GnIO<float, 4> {
    static __device__ __forceinline__ void ld(const float *p, float (&f)[4])
    {
        const float4 v = *reinterpret_cast<const float4 *>(p);
        f[0] = v.x;
        f[1] = v.y;
        f[2] = v.z;
        f[3] = v.w;
    }
    static __device__ __forceinline__ void st(float *p, const float (&f)[4])
    {
        GN_ST16(reinterpret_cast<float4 *>(p), make_float4(f[0], f[1], f[2], f[3]));
    }
};
template <> struct GnIO<__nv_bfloat16, 1> {
    static __device__ __forceinline__ void ld(const __nv_bfloat16 *p, float (&f)[1]) { f[0] = __bfloat162float(*p); }
    static __device__ __forceinline__ void st(__nv_bfloat16 *p, const float (&f)[1]) { *p = __float2bfloat16(f[0]); }
};
// 8 bf16 in one uint4, element 2i in the low half of word i (little-endian memory order)
template <> struct GnIO<__nv_bfloat16, 8> {
    static __device__ __forceinline__ void unpack(unsigned w, float &lo, float &hi)
    {
        lo = __uint_as_float(w << 16);
        hi = __uint_as_float(w & 0xffff0000u);
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi)
    {
        return (unsigned)__bfloat16_as_ushort(__float2bfloat16(lo)) |
               ((unsigned)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
    }
    static __device__ __forceinline__ void ld(const __nv_bfloat16 *p, float (&f)[8])
    {
        const uint4 u = *reinterpret_cast<const uint4 *>(p);
        unpack(u.x, f[0], f[1]);
        unpack(u.y, f[2], f[3]);
        unpack(u.z, f[4], f[5]);
        unpack(u.w, f[6], f[7]);
    }
    static __device__ __forceinline__ void st(__nv_bfloat16 *p, const float (&f)[8])
    {
        GN_ST16(reinterpret_cast<uint4 *>(p),
                make_uint4(pack(f[0], f[1]), pack(f[2], f[3]), pack(f[4], f[5]), pack(f[6], f[7])));
    }
};

static __device__ __forceinline__ float gn_silu_grad(float z)
{
    const float sg = 1.0f / (1.0f + expf(-z));
    return sg * (1.0f + z * (1.0f - sg));
}

/* Per-channel partials of every thread (red1, red2 [GN_THREADS·VEC], written by the caller)
 * → per-channel sums of this column pass, in place at index j = cx·VEC + e (the slot of row 0),
 * R rows added in order. Channels j < nch; threads loop when nch > GN_THREADS. Ends with a
 * barrier. */
template <int VEC>
static __device__ __forceinline__ void gn_reduce_rows(float *red1, float *red2, int TV, int R, int nch)
{
    __syncthreads();
    for (int j = (int)threadIdx.x; j < nch; j += GN_THREADS) {
        const int cx = j / VEC, e = j - cx * VEC;
        float a = red1[j], b = red2[j];
        for (int ry = 1; ry < R; ry++) {
            a += red1[(ry * TV + cx) * VEC + e];
            b += red2[(ry * TV + cx) * VEC + e];
        }
        red1[j] = a;
        red2[j] = b;
    }
    __syncthreads();
}

// ---- forward -----------------------------------------------------------------------------------

/* y = act((x − mean)·rstd·γ + β), mean and rstd [N, G] written too.
 * grid (G / k, N), block GN_THREADS. x, y [N, HW, C]. TV: thread columns (see the file comment). */
template <typename T, int VEC>
__global__ void __launch_bounds__(GN_THREADS, 1)
    groupnorm_forward_kernel(const T *x, const float *gamma, const float *beta, T *y, float *mean, float *rstd,
                             int64_t HW, int C, int Cg, int G, int k, int TV, float eps, int silu)
{
    __shared__ float red1[GN_THREADS * VEC], red2[GN_THREADS * VEC];
    __shared__ float gs1[GN_MAXK], gs2[GN_MAXK], gshift[GN_MAXK], gmean[GN_MAXK], grstd[GN_MAXK];
    const int t = (int)threadIdx.x, n = (int)blockIdx.y, g0 = (int)blockIdx.x * k;
    const int W = k * Cg, V = W / VEC, R = GN_THREADS / TV, cx = t % TV, ry = t / TV;
    const int64_t c0 = (int64_t)g0 * Cg;
    const T *xs = x + (int64_t)n * HW * C + c0; // row p of the span: xs + p·C
    T *ys = y + (int64_t)n * HW * C + c0;

    if (t < k) {
        gs1[t] = 0.0f;
        gs2[t] = 0.0f;
        float f[1];
        GnIO<T, 1>::ld(xs + t * Cg, f);
        gshift[t] = f[0];
    }
    __syncthreads();

    // pass 1: shifted sums
    for (int col0 = 0; col0 < V; col0 += TV) {
        const int col = col0 + cx;
        float a[VEC], b[VEC], sh[VEC];
        DL_UNROLL
        for (int e = 0; e < VEC; e++) {
            a[e] = b[e] = 0.0f;
            sh[e] = col < V ? gshift[(col * VEC + e) / Cg] : 0.0f;
        }
        if (col < V && ry < R) {
            const T *p = xs + (int64_t)col * VEC;
            int64_t r = ry;
            for (; r + (GN_UNROLL - 1) * R < HW; r += GN_UNROLL * R) {
                float v[GN_UNROLL][VEC];
                DL_UNROLL
                for (int u = 0; u < GN_UNROLL; u++) GnIO<T, VEC>::ld(p + (r + (int64_t)u * R) * C, v[u]);
                DL_UNROLL
                for (int u = 0; u < GN_UNROLL; u++) {
                    DL_UNROLL
                    for (int e = 0; e < VEC; e++) {
                        const float d = v[u][e] - sh[e];
                        a[e] += d;
                        b[e] += d * d;
                    }
                }
            }
            for (; r < HW; r += R) {
                float v[VEC];
                GnIO<T, VEC>::ld(p + r * C, v);
                DL_UNROLL
                for (int e = 0; e < VEC; e++) {
                    const float d = v[e] - sh[e];
                    a[e] += d;
                    b[e] += d * d;
                }
            }
        }
        DL_UNROLL
        for (int e = 0; e < VEC; e++) {
            red1[t * VEC + e] = a[e];
            red2[t * VEC + e] = b[e];
        }
        const int nch = (V - col0 < TV ? V - col0 : TV) * VEC; // channels of this column pass
        gn_reduce_rows<VEC>(red1, red2, TV, R, nch);
        if (t < k) { // group t's channels in this pass, in order
            const int base = col0 * VEC;
            int j0 = t * Cg - base, j1 = (t + 1) * Cg - base;
            j0 = j0 < 0 ? 0 : j0;
            j1 = j1 > nch ? nch : j1;
            float s1 = gs1[t], s2 = gs2[t];
            for (int j = j0; j < j1; j++) {
                s1 += red1[j];
                s2 += red2[j];
            }
            gs1[t] = s1;
            gs2[t] = s2;
        }
        __syncthreads(); // red1/red2 are rewritten by the next pass
    }
    if (t < k) {
        const float inv = 1.0f / (float)(HW * Cg);
        const float m = gs1[t] * inv; // mean of the shifted data
        const float var = fmaxf(gs2[t] * inv - m * m, 0.0f);
        gmean[t] = gshift[t] + m;
        grstd[t] = rsqrtf(var + eps);
        mean[n * G + g0 + t] = gmean[t];
        rstd[n * G + g0 + t] = grstd[t];
    }
    __syncthreads();

    // pass 2: y = act(x·A_c + B_c), A_c = rstd·γ_c, B_c = β_c − mean·A_c (no barrier below)
    if (ry >= R) return;
    for (int col = cx; col < V; col += TV) {
        float A[VEC], B[VEC];
        DL_UNROLL
        for (int e = 0; e < VEC; e++) {
            const int j = col * VEC + e, lg = j / Cg;
            const int64_t c = c0 + j;
            A[e] = grstd[lg] * (gamma ? gamma[c] : 1.0f);
            B[e] = (beta ? beta[c] : 0.0f) - gmean[lg] * A[e];
        }
        const T *p = xs + (int64_t)col * VEC;
        T *q = ys + (int64_t)col * VEC;
        for (int64_t r = ry; r < HW; r += R) {
            float v[VEC];
            GnIO<T, VEC>::ld(p + r * C, v);
            DL_UNROLL
            for (int e = 0; e < VEC; e++) {
                const float z = v[e] * A[e] + B[e];
                v[e] = silu ? z / (1.0f + expf(-z)) : z;
            }
            GnIO<T, VEC>::st(q + r * C, v);
        }
    }
}

// ---- backward ----------------------------------------------------------------------------------

/* dx = rstd·(dz·γ − mean_g(dz·γ) − x̂·mean_g(dz·γ·x̂)), dβ_c = Σ dz, dγ_c = Σ dz·x̂ (over n and
 * rows), dz = dy·act'(z), z = x̂·γ + β. grid (G / k, N), block GN_THREADS.
 * part [N, C, 2] fp32 and ticket [G / k] (zeroed when N > 1): workspace, used when dgamma or
 * dbeta is wanted. */
template <typename T, int VEC>
__global__ void __launch_bounds__(GN_THREADS, 1)
    groupnorm_backward_kernel(const T *x, const T *dy, const float *gamma, const float *beta, const float *mean,
                              const float *rstd, T *dx, float *dgamma, float *dbeta, float *part, unsigned *ticket,
                              int N, int64_t HW, int C, int Cg, int G, int k, int TV, int silu)
{
    __shared__ float red1[GN_THREADS * VEC], red2[GN_THREADS * VEC];
    __shared__ float gs1[GN_MAXK], gs2[GN_MAXK], gmu[GN_MAXK], grs[GN_MAXK];
    __shared__ int last;
    const int t = (int)threadIdx.x, n = (int)blockIdx.y, g0 = (int)blockIdx.x * k;
    const int W = k * Cg, V = W / VEC, R = GN_THREADS / TV, cx = t % TV, ry = t / TV;
    const int64_t c0 = (int64_t)g0 * Cg, off = (int64_t)n * HW * C + c0;
    const bool params = dgamma || dbeta;

    if (t < k) {
        gs1[t] = 0.0f;
        gs2[t] = 0.0f;
        gmu[t] = mean[n * G + g0 + t];
        grs[t] = rstd[n * G + g0 + t];
    }
    __syncthreads();

    // pass 1: per-channel Σ dz and Σ dz·x̂
    for (int col0 = 0; col0 < V; col0 += TV) {
        const int col = col0 + cx;
        float a[VEC], b[VEC], mu[VEC], rs[VEC], ga[VEC], be[VEC];
        DL_UNROLL
        for (int e = 0; e < VEC; e++) {
            a[e] = b[e] = 0.0f;
            const int j = (col < V ? col : 0) * VEC + e, lg = j / Cg;
            mu[e] = gmu[lg];
            rs[e] = grs[lg];
            ga[e] = gamma ? gamma[c0 + j] : 1.0f;
            be[e] = beta ? beta[c0 + j] : 0.0f;
        }
        if (col < V && ry < R) {
            const T *px = x + off + (int64_t)col * VEC, *pd = dy + off + (int64_t)col * VEC;
            for (int64_t r = ry; r < HW; r += R) {
                float xv[VEC], dv[VEC];
                GnIO<T, VEC>::ld(px + r * C, xv);
                GnIO<T, VEC>::ld(pd + r * C, dv);
                DL_UNROLL
                for (int e = 0; e < VEC; e++) {
                    const float xh = (xv[e] - mu[e]) * rs[e];
                    const float dz = silu ? dv[e] * gn_silu_grad(xh * ga[e] + be[e]) : dv[e];
                    a[e] += dz;
                    b[e] += dz * xh;
                }
            }
        }
        DL_UNROLL
        for (int e = 0; e < VEC; e++) {
            red1[t * VEC + e] = a[e];
            red2[t * VEC + e] = b[e];
        }
        const int nch = (V - col0 < TV ? V - col0 : TV) * VEC;
        gn_reduce_rows<VEC>(red1, red2, TV, R, nch);
        const int base = col0 * VEC;
        if (params) // per-(n, c) sums for dγ, dβ
            for (int j = t; j < nch; j += GN_THREADS) {
                float *o = part + ((int64_t)n * C + c0 + base + j) * 2;
                o[0] = red1[j];
                o[1] = red2[j];
            }
        if (t < k) { // group sums of dz·γ and dz·γ·x̂, channels in order
            int j0 = t * Cg - base, j1 = (t + 1) * Cg - base;
            j0 = j0 < 0 ? 0 : j0;
            j1 = j1 > nch ? nch : j1;
            float s1 = gs1[t], s2 = gs2[t];
            for (int j = j0; j < j1; j++) {
                const float gm = gamma ? gamma[c0 + base + j] : 1.0f;
                s1 += gm * red1[j];
                s2 += gm * red2[j];
            }
            gs1[t] = s1;
            gs2[t] = s2;
        }
        __syncthreads();
    }

    // dγ, dβ: this block alone (N = 1), or the last block of the span to finish adds all n
    if (params) {
        if (N > 1) __threadfence(); // this thread's part writes, before the ticket
        __syncthreads();
        if (t == 0) last = N == 1 || atomicAdd(ticket + blockIdx.x, 1u) == (unsigned)(N - 1);
        __syncthreads();
        if (last) {
            __threadfence();
            for (int j = t; j < W; j += GN_THREADS) {
                float s1 = 0.0f, s2 = 0.0f;
                for (int i = 0; i < N; i++) {
                    const float *o = part + ((int64_t)i * C + c0 + j) * 2;
                    s1 += GN_LDCG(o);
                    s2 += GN_LDCG(o + 1);
                }
                if (dbeta) dbeta[c0 + j] = s1;
                if (dgamma) dgamma[c0 + j] = s2;
            }
        }
    }
    if (!dx) return;

    // pass 2: dx (no barrier below)
    if (ry >= R) return;
    const float inv = 1.0f / (float)(HW * Cg);
    for (int col = cx; col < V; col += TV) {
        float mu[VEC], rs[VEC], ga[VEC], be[VEC], ma[VEC], mb[VEC];
        DL_UNROLL
        for (int e = 0; e < VEC; e++) {
            const int j = col * VEC + e, lg = j / Cg;
            mu[e] = gmu[lg];
            rs[e] = grs[lg];
            ga[e] = gamma ? gamma[c0 + j] : 1.0f;
            be[e] = beta ? beta[c0 + j] : 0.0f;
            ma[e] = gs1[lg] * inv;
            mb[e] = gs2[lg] * inv;
        }
        const T *px = x + off + (int64_t)col * VEC, *pd = dy + off + (int64_t)col * VEC;
        T *po = dx + off + (int64_t)col * VEC;
        for (int64_t r = ry; r < HW; r += R) {
            float xv[VEC], dv[VEC];
            GnIO<T, VEC>::ld(px + r * C, xv);
            GnIO<T, VEC>::ld(pd + r * C, dv);
            DL_UNROLL
            for (int e = 0; e < VEC; e++) {
                const float xh = (xv[e] - mu[e]) * rs[e];
                const float dz = silu ? dv[e] * gn_silu_grad(xh * ga[e] + be[e]) : dv[e];
                xv[e] = rs[e] * (dz * ga[e] - ma[e] - xh * mb[e]);
            }
            GnIO<T, VEC>::st(po + r * C, xv);
        }
    }
}

// ---- launchers ---------------------------------------------------------------------------------

/* The split of one problem: vec (16-byte moves or not), k groups per span, TV thread columns. */
typedef struct gn_plan {
    int vec, k, TV;
} gn_plan;

static gn_plan gn_plan_of(size_t es, int C, int G, const void *a, const void *b, const void *c)
{
    const int Cg = C / G;
    const uintptr_t mis = ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15u;
    gn_plan p = {1, 1, 0};
    if (mis == 0 && ((size_t)C * es) % 16 == 0) {
        p.vec = (int)(16 / es);
        while (((size_t)p.k * Cg * es) % 16 != 0) p.k++; // ≤ 16 / es, and divides G (see top)
    }
    const int V = p.k * Cg / p.vec;
    p.TV = V < GN_THREADS ? V : GN_THREADS;
    return p;
}

extern "C" size_t dl_cuda_groupnorm_workspace_size(int N, int64_t HW, int C, int G)
{
    (void)HW;
    // part [N, C, 2] fp32, then one ticket per span (at most G spans)
    return sizeof(float) * 2 * (size_t)N * C + sizeof(unsigned) * (size_t)G;
}

template <typename T>
static int gn_forward_launch(int N, int64_t HW, int C, int G, float eps, int silu, const void *x,
                             const float *gamma, const float *beta, void *y, float *mean, float *rstd,
                             cudaStream_t stream)
{
    const gn_plan p = gn_plan_of(sizeof(T), C, G, x, y, x);
    const dim3 grid((unsigned)(G / p.k), (unsigned)N);
    if (p.vec == 1)
        DL_LAUNCH((groupnorm_forward_kernel<T, 1>), grid, dim3(GN_THREADS), 0, stream, (const T *)x, gamma, beta,
                  (T *)y, mean, rstd, HW, C, C / G, G, p.k, p.TV, eps, silu);
    else
        DL_LAUNCH((groupnorm_forward_kernel<T, 16 / sizeof(T)>), grid, dim3(GN_THREADS), 0, stream, (const T *)x,
                  gamma, beta, (T *)y, mean, rstd, HW, C, C / G, G, p.k, p.TV, eps, silu);
    return (int)cudaGetLastError();
}

template <typename T>
static int gn_backward_launch(int N, int64_t HW, int C, int G, int silu, const void *x, const float *gamma,
                              const float *beta, const float *mean, const float *rstd, const void *dy, void *dx,
                              float *dgamma, float *dbeta, void *ws, cudaStream_t stream)
{
    const gn_plan p = gn_plan_of(sizeof(T), C, G, x, dy, dx ? dx : x);
    const int spans = G / p.k;
    float *part = (float *)ws;
    unsigned *ticket = (unsigned *)(part + (size_t)2 * N * C);
    if ((dgamma || dbeta) && N > 1) {
        cudaError_t e = cudaMemsetAsync(ticket, 0, sizeof(unsigned) * (size_t)spans, stream);
        if (e != cudaSuccess) return (int)e;
    }
    const dim3 grid((unsigned)spans, (unsigned)N);
    if (p.vec == 1)
        DL_LAUNCH((groupnorm_backward_kernel<T, 1>), grid, dim3(GN_THREADS), 0, stream, (const T *)x, (const T *)dy,
                  gamma, beta, mean, rstd, (T *)dx, dgamma, dbeta, part, ticket, N, HW, C, C / G, G, p.k, p.TV,
                  silu);
    else
        DL_LAUNCH((groupnorm_backward_kernel<T, 16 / sizeof(T)>), grid, dim3(GN_THREADS), 0, stream, (const T *)x,
                  (const T *)dy, gamma, beta, mean, rstd, (T *)dx, dgamma, dbeta, part, ticket, N, HW, C, C / G, G,
                  p.k, p.TV, silu);
    return (int)cudaGetLastError();
}

extern "C" int dl_cuda_groupnorm_forward(dl_dtype dt, int N, int64_t HW, int C, int G, float eps, int silu,
                                         const void *x, const float *gamma, const float *beta, void *y, float *mean,
                                         float *rstd, void *ws, cudaStream_t stream)
{
    if (N <= 0 || HW <= 0 || G <= 0 || C <= 0 || C % G != 0 || !ws) return -1;
    if (dt == DL_F32)
        return gn_forward_launch<float>(N, HW, C, G, eps, silu, x, gamma, beta, y, mean, rstd, stream);
    if (dt == DL_BF16)
        return gn_forward_launch<__nv_bfloat16>(N, HW, C, G, eps, silu, x, gamma, beta, y, mean, rstd, stream);
    return -1;
}

extern "C" int dl_cuda_groupnorm_backward(dl_dtype dt, int N, int64_t HW, int C, int G, int silu, const void *x,
                                          const float *gamma, const float *beta, const float *mean,
                                          const float *rstd, const void *dy, void *dx, float *dgamma,
                                          float *dbeta, void *ws, cudaStream_t stream)
{
    if (N <= 0 || HW <= 0 || G <= 0 || C <= 0 || C % G != 0 || !ws) return -1;
    if (dt == DL_F32)
        return gn_backward_launch<float>(N, HW, C, G, silu, x, gamma, beta, mean, rstd, dy, dx, dgamma, dbeta, ws,
                                         stream);
    if (dt == DL_BF16)
        return gn_backward_launch<__nv_bfloat16>(N, HW, C, G, silu, x, gamma, beta, mean, rstd, dy, dx, dgamma,
                                                 dbeta, ws, stream);
    return -1;
}
