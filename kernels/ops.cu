/* ops.cu - element-wise, normalisation, loss and optimiser kernels, portable CUDA (no PTX): the
 * rest of the backend's op table, each with exactly the contract of the CPU reference op it
 * names (host/ops/cpu/<family>.h) on storage float or bf16, fp32 math.
 *
 *   element-wise  activations (erf / tanh / quick GELU, SiLU) and GEGLU, add, scale, axpy,
 *                 broadcast add, AdamW, the MSE gradient, scale_by: grid-stride loops over groups
 *                 of 16 bytes (4 floats or 8 bf16) when every pointer is 16-byte aligned and the
 *                 group never straddles a row, one element at a time otherwise.
 *   copies        channel concat / split, nearest 2x upsampling, zero padding and its crop, the
 *                 dx of the broadcast add: moved as raw bits (16-byte units when aligned), so a
 *                 copy is exact whatever the bytes hold.
 *   row ops       layer norm forward / backward dx, row softmax and its backward, the token
 *                 embedding: one block (layer norm) or one warp (softmax) per row.
 *   reductions    broadcast-add dv, layer-norm dgamma/dbeta (one thread per column and row
 *                 lane, a fixed-order pass over the lanes), MSE loss and sum of squares (one
 *                 block, fixed thread count): fp64 accumulation as the CPU ops, no atomics, so
 *                 the same inputs give the same bits on every run. The device API passes no
 *                 workspace, so the scalar reductions stay in one block (enough for a loss over
 *                 a batch of latents or a norm over the LoRA gradients once per step).
 * Launchers return 0, or -1 (launching nothing) for a dtype other than float / bf16 or an
 * argument that breaks the contract; sizes of 0 launch nothing. */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"
#include "ops/cpu/activation.h" /* dl_act */

#include <math.h>

#define OPS_THREADS 256    // threads per block of the element-wise and copy kernels
#define OPS_MAX_GRID 4096  // grid-stride loops cap their grid here
#define OPS_ROW_THREADS 128 // threads per row of the layer-norm row kernels
#define OPS_SM_WARPS 4     // softmax rows (one per warp) per block
#define OPS_COL_TY 16      // row lanes per column of the column reductions (block 32 x 16)
#define OPS_RED_THREADS 512 // threads of the one-block scalar reductions (MSE loss)
#define OPS_SUMSQ_THREADS 1024

#define OPS_SQRT1_2 0.70710678118654752440f      // 1/sqrt(2)
#define OPS_INV_SQRT_2PI 0.39894228040143267794f // 1/sqrt(2 pi)
#define OPS_SQRT_2_PI 0.79788456080286535588f    // sqrt(2/pi)
#define OPS_GELU_TANH_C 0.044715f
#define OPS_QUICK_GELU_C 1.702f

// ---- helpers -----------------------------------------------------------------------------------

static inline unsigned ops_grid(int64_t work, int threads)
{
    int64_t b = (work + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > OPS_MAX_GRID ? OPS_MAX_GRID : b);
}
static inline bool ops_al16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// K consecutive elements of storage type T as fp32. K > 1: the pointer is 16-byte aligned (one
// 16-byte access per 4 floats or 8 bf16); bf16 <-> fp32 by bits (a bf16 is the top half of its
// float), rounding to nearest even on the way back as __float2bfloat16.
template <typename T, int K> struct OpsIo;
template <> struct OpsIo<float, 1> {
    static __device__ __forceinline__ void load(const float *p, float *f) { f[0] = *p; }
    static __device__ __forceinline__ void store(float *p, const float *f) { *p = f[0]; }
};
template <> struct OpsIo<float, 4> {
    static __device__ __forceinline__ void load(const float *p, float *f)
    {
        const float4 v = *reinterpret_cast<const float4 *>(p);
        f[0] = v.x;
        f[1] = v.y;
        f[2] = v.z;
        f[3] = v.w;
    }
    static __device__ __forceinline__ void store(float *p, const float *f)
    {
        *reinterpret_cast<float4 *>(p) = make_float4(f[0], f[1], f[2], f[3]);
    }
};
template <> struct OpsIo<float, 8> {
    static __device__ __forceinline__ void load(const float *p, float *f)
    {
        OpsIo<float, 4>::load(p, f);
        OpsIo<float, 4>::load(p + 4, f + 4);
    }
    static __device__ __forceinline__ void store(float *p, const float *f)
    {
        OpsIo<float, 4>::store(p, f);
        OpsIo<float, 4>::store(p + 4, f + 4);
    }
};
template <> struct OpsIo<__nv_bfloat16, 1> {
    static __device__ __forceinline__ void load(const __nv_bfloat16 *p, float *f) { f[0] = __bfloat162float(*p); }
    static __device__ __forceinline__ void store(__nv_bfloat16 *p, const float *f) { *p = __float2bfloat16(f[0]); }
};
static __device__ __forceinline__ unsigned ops_bf16_pack(float lo, float hi)
{
    return (unsigned)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((unsigned)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}
template <> struct OpsIo<__nv_bfloat16, 8> {
    static __device__ __forceinline__ void load(const __nv_bfloat16 *p, float *f)
    {
        const uint4 v = *reinterpret_cast<const uint4 *>(p);
        const unsigned w[4] = {v.x, v.y, v.z, v.w};
        DL_UNROLL
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ void store(__nv_bfloat16 *p, const float *f)
    {
        *reinterpret_cast<uint4 *>(p) = make_uint4(ops_bf16_pack(f[0], f[1]), ops_bf16_pack(f[2], f[3]),
                                                   ops_bf16_pack(f[4], f[5]), ops_bf16_pack(f[6], f[7]));
    }
};
template <typename T> struct OpsVec { static constexpr int K = (int)(16 / sizeof(T)); };

// Raw units of the copy kernels: one element (2 or 4 bytes) or 16 bytes.
template <int BYTES> struct OpsUnit;
template <> struct OpsUnit<2> { typedef unsigned short type; };
template <> struct OpsUnit<4> { typedef unsigned int type; };
template <> struct OpsUnit<16> { typedef uint4 type; };

static __device__ __forceinline__ double ops_warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DL_FULL_MASK, v, o);
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024), in a fixed order; every
// thread gets it. sh: 33 doubles of shared memory. Two barriers; back-to-back calls are safe.
static __device__ __forceinline__ double ops_block_sum(double v, double *sh)
{
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5, nw = (int)blockDim.x >> 5;
    v = ops_warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = ops_warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

// ---- activations -------------------------------------------------------------------------------

static __device__ __forceinline__ float ops_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// Phi(x), the normal CDF, through erfc: relative accuracy in both tails (no 1 + erf cancellation)
static __device__ __forceinline__ float ops_normal_cdf(float x) { return 0.5f * erfcf(-x * OPS_SQRT1_2); }
// 1 + tanh(u) = 2e / (e + 1) and 1 - tanh(u) = 2 / (e + 1), e = exp(2u) (clamped: no inf / inf)
static __device__ __forceinline__ void ops_tanh_pm(float u, float *one_plus, float *one_minus)
{
    const float e = expf(fminf(2.0f * u, 80.0f)), q = 2.0f / (e + 1.0f);
    *one_plus = e * q;
    *one_minus = q;
}
static __device__ __forceinline__ float ops_gelu(float x) { return x * ops_normal_cdf(x); }
static __device__ __forceinline__ float ops_gelu_grad(float x)
{
    return ops_normal_cdf(x) + x * OPS_INV_SQRT_2PI * expf(-0.5f * x * x);
}

static __device__ __forceinline__ float ops_act(int act, float x)
{
    switch (act) {
    case DL_ACT_GELU: return ops_gelu(x);
    case DL_ACT_GELU_TANH: {
        float tp, tm;
        ops_tanh_pm(OPS_SQRT_2_PI * (x + OPS_GELU_TANH_C * x * x * x), &tp, &tm);
        return 0.5f * x * tp;
    }
    case DL_ACT_QUICK_GELU: return x * ops_sigmoid(OPS_QUICK_GELU_C * x);
    default: return x * ops_sigmoid(x); // DL_ACT_SILU
    }
}
// act'(x) · dy
static __device__ __forceinline__ float ops_act_grad(int act, float x, float dy)
{
    switch (act) {
    case DL_ACT_GELU: return dy * ops_gelu_grad(x);
    case DL_ACT_GELU_TANH: {
        const float x2 = x * x;
        float tp, tm;
        ops_tanh_pm(OPS_SQRT_2_PI * (x + OPS_GELU_TANH_C * x2 * x), &tp, &tm);
        const float du = OPS_SQRT_2_PI * (1.0f + 3.0f * OPS_GELU_TANH_C * x2);
        return dy * (0.5f * tp + 0.5f * x * (tp * tm) * du);
    }
    case DL_ACT_QUICK_GELU: {
        const float s = ops_sigmoid(OPS_QUICK_GELU_C * x);
        return dy * (s + OPS_QUICK_GELU_C * x * s * (1.0f - s));
    }
    default: { // DL_ACT_SILU
        const float s = ops_sigmoid(x);
        return dy * (s * (1.0f + x * (1.0f - s)));
    }
    }
}

// ---- generic element-wise maps -----------------------------------------------------------------

// y[i] = f(x[i]), i in [0, n): groups of K by the grid, the n % K tail by block 0.
template <typename T, int K, typename F>
__global__ void ops_map1_kernel(int64_t n, const T *x, T *y, F f)
{
    const int64_t groups = n / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        float v[K];
        OpsIo<T, K>::load(x + g * K, v);
        DL_UNROLL
        for (int k = 0; k < K; k++) v[k] = f(v[k]);
        OpsIo<T, K>::store(y + g * K, v);
    }
    const int64_t i = groups * K + threadIdx.x;
    if (K > 1 && blockIdx.x == 0 && i < n) {
        float v;
        OpsIo<T, 1>::load(x + i, &v);
        v = f(v);
        OpsIo<T, 1>::store(y + i, &v);
    }
}

// y[i] = f(a[i], b[i]) (y may be a or b).
template <typename T, int K, typename F>
__global__ void ops_map2_kernel(int64_t n, const T *a, const T *b, T *y, F f)
{
    const int64_t groups = n / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        float u[K], v[K];
        OpsIo<T, K>::load(a + g * K, u);
        OpsIo<T, K>::load(b + g * K, v);
        DL_UNROLL
        for (int k = 0; k < K; k++) u[k] = f(u[k], v[k]);
        OpsIo<T, K>::store(y + g * K, u);
    }
    const int64_t i = groups * K + threadIdx.x;
    if (K > 1 && blockIdx.x == 0 && i < n) {
        float u, v;
        OpsIo<T, 1>::load(a + i, &u);
        OpsIo<T, 1>::load(b + i, &v);
        u = f(u, v);
        OpsIo<T, 1>::store(y + i, &u);
    }
}

struct OpsActFwd {
    int act;
    __device__ __forceinline__ float operator()(float x) const { return ops_act(act, x); }
};
struct OpsActBwd { // (x, dy)
    int act;
    __device__ __forceinline__ float operator()(float x, float dy) const { return ops_act_grad(act, x, dy); }
};
struct OpsAdd {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct OpsScale {
    float alpha;
    __device__ __forceinline__ float operator()(float x) const { return alpha * x; }
};
struct OpsAxpy { // (x, y) -> y + alpha x
    float alpha;
    __device__ __forceinline__ float operator()(float x, float y) const { return y + alpha * x; }
};

template <typename T, typename F>
static void ops_map1(int64_t n, const void *x, void *y, F f, cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    if (ops_al16(x) && ops_al16(y))
        DL_LAUNCH((ops_map1_kernel<T, OpsVec<T>::K, F>), dim3(ops_grid(n / K, OPS_THREADS)), dim3(OPS_THREADS), 0,
                  stream, n, (const T *)x, (T *)y, f);
    else
        DL_LAUNCH((ops_map1_kernel<T, 1, F>), dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n,
                  (const T *)x, (T *)y, f);
}
template <typename T, typename F>
static void ops_map2(int64_t n, const void *a, const void *b, void *y, F f, cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    if (ops_al16(a) && ops_al16(b) && ops_al16(y))
        DL_LAUNCH((ops_map2_kernel<T, OpsVec<T>::K, F>), dim3(ops_grid(n / K, OPS_THREADS)), dim3(OPS_THREADS), 0,
                  stream, n, (const T *)a, (const T *)b, (T *)y, f);
    else
        DL_LAUNCH((ops_map2_kernel<T, 1, F>), dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n,
                  (const T *)a, (const T *)b, (T *)y, f);
}

// ---- GEGLU -------------------------------------------------------------------------------------

// y [M, D] = x[:, :D] * gelu(x[:, D:]) (x [M, 2D]); K > 1 only when D % K == 0.
template <typename T, int K>
__global__ void ops_geglu_forward_kernel(int64_t M, int64_t D, const T *x, T *y)
{
    const int64_t groups = M * D / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const int64_t e = g * K, m = e / D, d = e - m * D;
        const T *h = x + m * 2 * D + d; // [K] hidden, gate at h + D
        float hv[K], gv[K];
        OpsIo<T, K>::load(h, hv);
        OpsIo<T, K>::load(h + D, gv);
        DL_UNROLL
        for (int k = 0; k < K; k++) hv[k] = hv[k] * ops_gelu(gv[k]);
        OpsIo<T, K>::store(y + e, hv);
    }
}

// dx [M, 2D]: dhidden = dy * gelu(gate), dgate = dy * hidden * gelu'(gate).
template <typename T, int K>
__global__ void ops_geglu_backward_kernel(int64_t M, int64_t D, const T *x, const T *dy, T *dx)
{
    const int64_t groups = M * D / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const int64_t e = g * K, m = e / D, d = e - m * D, o = m * 2 * D + d;
        float hv[K], gv[K], dv[K], dh[K], dg[K];
        OpsIo<T, K>::load(x + o, hv);
        OpsIo<T, K>::load(x + o + D, gv);
        OpsIo<T, K>::load(dy + e, dv);
        DL_UNROLL
        for (int k = 0; k < K; k++) {
            dh[k] = dv[k] * ops_gelu(gv[k]);
            dg[k] = dv[k] * hv[k] * ops_gelu_grad(gv[k]);
        }
        OpsIo<T, K>::store(dx + o, dh);
        OpsIo<T, K>::store(dx + o + D, dg);
    }
}

template <typename T>
static void ops_geglu(int bwd, int64_t M, int64_t D, const void *x, const void *dy, void *out, cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    const bool vec = D % K == 0 && ops_al16(x) && ops_al16(dy) && ops_al16(out);
    const unsigned grid = ops_grid(M * D / (vec ? K : 1), OPS_THREADS);
    if (bwd && vec)
        DL_LAUNCH((ops_geglu_backward_kernel<T, OpsVec<T>::K>), dim3(grid), dim3(OPS_THREADS), 0, stream, M, D,
                  (const T *)x, (const T *)dy, (T *)out);
    else if (bwd)
        DL_LAUNCH((ops_geglu_backward_kernel<T, 1>), dim3(grid), dim3(OPS_THREADS), 0, stream, M, D, (const T *)x,
                  (const T *)dy, (T *)out);
    else if (vec)
        DL_LAUNCH((ops_geglu_forward_kernel<T, OpsVec<T>::K>), dim3(grid), dim3(OPS_THREADS), 0, stream, M, D,
                  (const T *)x, (T *)out);
    else
        DL_LAUNCH((ops_geglu_forward_kernel<T, 1>), dim3(grid), dim3(OPS_THREADS), 0, stream, M, D, (const T *)x,
                  (T *)out);
}

// ---- broadcast add -----------------------------------------------------------------------------

// y [rows, C] = x + v[c] (or v[row / HW, c] per sample); K > 1 only when C % K == 0.
template <typename T, int K>
__global__ void ops_add_bcast_kernel(int64_t rows, int64_t HW, int64_t C, int per_sample, const T *x,
                                     const float *v, T *y)
{
    const int64_t groups = rows * C / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const int64_t e = g * K, r = e / C, c = e - r * C;
        const float *vr = v + (per_sample ? (r / HW) * C : 0) + c; // [K]
        float a[K];
        OpsIo<T, K>::load(x + e, a);
        DL_UNROLL
        for (int k = 0; k < K; k++) a[k] += vr[k];
        OpsIo<T, K>::store(y + e, a);
    }
}

// dv[grp, c] = sum over the rows of group grp of dy[row, c], in double.
// grid (ceil(C / 32), groups), block (32, OPS_COL_TY).
template <typename T>
__global__ void ops_colsum_kernel(int64_t rows, int64_t C, const T *dy, float *dv)
{
    __shared__ double part[OPS_COL_TY][32];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int64_t c = (int64_t)blockIdx.x * 32 + tx, grp = blockIdx.y;
    double acc = 0.0;
    if (c < C) {
        const T *col = dy + grp * rows * C + c;
        for (int64_t r = ty; r < rows; r += OPS_COL_TY) acc += (double)dl_to_float(col[r * C]);
    }
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < C) {
        double s = 0.0;
        for (int i = 0; i < OPS_COL_TY; i++) s += part[i][tx];
        dv[grp * C + c] = (float)s;
    }
}

// ---- raw copies: concat / split, upsample, pad / crop --------------------------------------------
// Sizes in units U (an element, or 16 bytes when every row length and pointer allows).

template <typename U>
__global__ void ops_concat_kernel(int64_t M, int64_t C1, int64_t C2, const U *a, const U *b, U *y)
{
    const int64_t Ct = C1 + C2, n = M * Ct, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t r = e / Ct, c = e - r * Ct;
        y[e] = c < C1 ? a[r * C1 + c] : b[r * C2 + (c - C1)];
    }
}

template <typename U>
__global__ void ops_split_kernel(int64_t M, int64_t C1, int64_t C2, const U *dy, U *da, U *db)
{
    const int64_t Ct = C1 + C2, n = M * Ct, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t r = e / Ct, c = e - r * Ct;
        if (c < C1) {
            if (da) da[r * C1 + c] = dy[e];
        } else if (db) {
            db[r * C2 + (c - C1)] = dy[e];
        }
    }
}

// y [N, 2H, 2W, C] = x [N, H, W, C] at (oh / 2, ow / 2)
template <typename U>
__global__ void ops_upsample_kernel(int64_t N, int64_t H, int64_t W, int64_t C, const U *x, U *y)
{
    const int64_t n = N * 4 * H * W * C, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t pix = e / C, c = e - pix * C;
        const int64_t ow = pix % (2 * W), t = pix / (2 * W), oh = t % (2 * H), nb = t / (2 * H);
        y[e] = x[((nb * H + oh / 2) * W + ow / 2) * C + c];
    }
}

// Zero padding x [N, H, W, C] -> y [N, H + top + bottom, W + left + right, C] (bwd = 0), or its
// crop dy (that shape) -> dx [N, H, W, C] (bwd = 1).
template <typename U>
__global__ void ops_pad_kernel(int bwd, int64_t N, int64_t H, int64_t W, int64_t C, int top, int left, int64_t Ho,
                               int64_t Wo, const U *src, U *dst)
{
    const int64_t oh = bwd ? H : Ho, ow = bwd ? W : Wo; // the destination's rows and columns
    const int64_t n = N * oh * ow * C, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t pix = e / C, c = e - pix * C;
        const int64_t w = pix % ow, t = pix / ow, h = t % oh, nb = t / oh;
        if (bwd) {
            dst[e] = src[((nb * Ho + h + top) * Wo + w + left) * C + c];
        } else {
            const int64_t hi = h - top, wi = w - left;
            dst[e] = hi >= 0 && hi < H && wi >= 0 && wi < W ? src[((nb * H + hi) * W + wi) * C + c] : U();
        }
    }
}

// Launches a copy kernel on units of 16 bytes when `ok16` (every pointer aligned and every row
// length a multiple of 16 bytes), else on elements of es bytes; the sizes passed to `launch` are
// divided by the elements per unit.
template <typename F> static void ops_copy_dispatch(bool ok16, size_t es, F launch)
{
    if (ok16) launch(typename OpsUnit<16>::type(), (int64_t)(16 / es));
    else if (es == 4) launch(typename OpsUnit<4>::type(), (int64_t)1);
    else launch(typename OpsUnit<2>::type(), (int64_t)1);
}

// ---- timestep embedding ------------------------------------------------------------------------

// out [N, dim]: the fp32 steps of dl_cpu_timestep_embedding (exp, sin, cos in double, rounded once).
template <typename T>
__global__ void ops_timestep_kernel(int64_t N, int64_t dim, const float *t, int flip, float denom,
                                    float neg_log_period, float scale, T *out)
{
    const int64_t half = dim / 2, cols = half + (dim & 1), n_all = N * cols;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n_all; e += stride) {
        const int64_t n = e / cols, i = e - n * cols;
        T *o = out + n * dim; // [dim]
        if (i == half) { // odd dim: the trailing zero column
            o[dim - 1] = dl_from_float<T>(0.0f);
            continue;
        }
        float ex = neg_log_period * (float)i;
        ex = ex / denom;
        const float freq = (float)exp((double)ex);
        float a = t[n] * freq;
        a = scale * a;
        const float s = (float)sin((double)a), c = (float)cos((double)a);
        o[flip ? half + i : i] = dl_from_float<T>(s);
        o[flip ? i : half + i] = dl_from_float<T>(c);
    }
}

// ---- layer norm --------------------------------------------------------------------------------

// One block per row of x [M, C]: mean and the centred second moment in double, as the CPU op;
// y may alias x (every read of the row precedes the barriers before the writes).
template <typename T>
__global__ void ops_layernorm_forward_kernel(int64_t C, float eps, const T *x, const float *gamma,
                                             const float *beta, T *y, float *mean, float *rstd)
{
    __shared__ double sh[33];
    const int64_t m = blockIdx.x;
    const T *xr = x + m * C;
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (double)dl_to_float(xr[c]);
    const float mu = (float)(ops_block_sum(s, sh) / (double)C);
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float d = dl_to_float(xr[c]) - mu;
        ss += (double)(d * d);
    }
    ss = ops_block_sum(ss, sh);
    const float rs = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    if (threadIdx.x == 0) {
        if (mean) mean[m] = mu;
        if (rstd) rstd[m] = rs;
    }
    T *yr = y + m * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        yr[c] = dl_from_float<T>((dl_to_float(xr[c]) - mu) * rs * (gamma ? gamma[c] : 1.0f) +
                                 (beta ? beta[c] : 0.0f));
}

// dx = rstd · (dxh - mean(dxh) - xhat · mean(dxh · xhat)), dxh = dy · gamma; one block per row.
// dx may alias dy.
template <typename T>
__global__ void ops_layernorm_backward_dx_kernel(int64_t C, const T *x, const float *gamma, const float *mean,
                                                 const float *rstd, const T *dy, T *dx)
{
    __shared__ double sh[33];
    const int64_t m = blockIdx.x;
    const T *xr = x + m * C, *dyr = dy + m * C;
    const float mu = mean[m], rs = rstd[m];
    double s1 = 0.0, s2 = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float dxh = dl_to_float(dyr[c]) * (gamma ? gamma[c] : 1.0f);
        s1 += (double)dxh;
        s2 += (double)(dxh * ((dl_to_float(xr[c]) - mu) * rs));
    }
    const float m1 = (float)(ops_block_sum(s1, sh) / (double)C);
    const float m2 = (float)(ops_block_sum(s2, sh) / (double)C);
    T *dxr = dx + m * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float xh = (dl_to_float(xr[c]) - mu) * rs;
        dxr[c] = dl_from_float<T>(rs * (dl_to_float(dyr[c]) * (gamma ? gamma[c] : 1.0f) - m1 - xh * m2));
    }
}

// dgamma[c] = Σ_m dy · xhat, dbeta[c] = Σ_m dy over the rows, in double.
// grid ceil(C / 32), block (32, OPS_COL_TY).
template <typename T>
__global__ void ops_layernorm_backward_param_kernel(int64_t M, int64_t C, const T *x, const float *mean,
                                                    const float *rstd, const T *dy, float *dgamma, float *dbeta)
{
    __shared__ double pg[OPS_COL_TY][32], pb[OPS_COL_TY][32];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int64_t c = (int64_t)blockIdx.x * 32 + tx;
    double ag = 0.0, ab = 0.0;
    if (c < C) {
        for (int64_t m = ty; m < M; m += OPS_COL_TY) {
            const float d = dl_to_float(dy[m * C + c]);
            ag += (double)(d * ((dl_to_float(x[m * C + c]) - mean[m]) * rstd[m]));
            ab += (double)d;
        }
    }
    pg[ty][tx] = ag;
    pb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && c < C) {
        double sg = 0.0, sb = 0.0;
        for (int i = 0; i < OPS_COL_TY; i++) {
            sg += pg[i][tx];
            sb += pb[i][tx];
        }
        if (dgamma) dgamma[c] = (float)sg;
        if (dbeta) dbeta[c] = (float)sb;
    }
}

// ---- token embedding ---------------------------------------------------------------------------

// out[row, :] = tok[clamp(ids[row], 0, V - 1), :] + pos[row % T, :], rows = N·T; K > 1 only when
// C % K == 0 and every pointer is 16-byte aligned.
template <typename T, int K>
__global__ void ops_embed_kernel(int64_t rows, int64_t T_, int64_t C, int64_t V, const int32_t *ids,
                                 const float *tok, const float *pos, T *out)
{
    const int64_t cu = C / K, n = rows * cu, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t row = e / cu, c = (e - row * cu) * K;
        int64_t id = ids[row];
        id = id < 0 ? 0 : id >= V ? V - 1 : id;
        float a[K], b[K];
        OpsIo<float, K>::load(tok + id * C + c, a);
        OpsIo<float, K>::load(pos + (row % T_) * C + c, b);
        DL_UNROLL
        for (int k = 0; k < K; k++) a[k] += b[k];
        OpsIo<T, K>::store(out + row * C + c, a);
    }
}

// ---- softmax -----------------------------------------------------------------------------------

// One warp per row of x [rows, cols]: y = softmax(scale · x) over the visible columns
// j < (row % causal_tq) + 1 (all when causal_tq == 0), 0 past them; lse = max + log(sum).
// Each column is read and written by one lane only, so y may alias x.
__global__ void ops_softmax_forward_kernel(int64_t rows, int64_t cols, float scale, int64_t causal_tq,
                                           const float *x, float *y, float *lse)
{
    const int lane = (int)threadIdx.x & 31;
    const int64_t wpb = blockDim.x >> 5;
    for (int64_t r = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows; r += (int64_t)gridDim.x * wpb) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        const int64_t lim = causal_tq > 0 ? r % causal_tq + 1 : cols, nv = lim < cols ? lim : cols;
        float mx = -INFINITY;
        for (int64_t j = lane; j < nv; j += 32) {
            const float z = scale * xr[j];
            mx = z > mx ? z : mx;
        }
        mx = dl_warp_max(mx);
        if (mx == -INFINITY) { // every visible score is -inf: NaN, as PyTorch (and the CPU op)
            for (int64_t j = lane; j < cols; j += 32) yr[j] = j < nv ? NAN : 0.0f;
            if (lse && lane == 0) lse[r] = -INFINITY;
            continue;
        }
        double sum = 0.0;
        for (int64_t j = lane; j < nv; j += 32) {
            const float e = expf(scale * xr[j] - mx);
            yr[j] = e;
            sum += (double)e;
        }
        sum = ops_warp_sum(sum);
        const float inv = (float)(1.0 / sum);
        for (int64_t j = lane; j < cols; j += 32) yr[j] = j < nv ? yr[j] * inv : 0.0f;
        if (lse && lane == 0) lse[r] = (float)((double)mx + log(sum));
    }
}

// dp = y ∘ (dp − rowsum(dp ∘ y)) in place; one warp per row.
__global__ void ops_softmax_backward_kernel(int64_t rows, int64_t cols, const float *y, float *dp)
{
    const int lane = (int)threadIdx.x & 31;
    const int64_t wpb = blockDim.x >> 5;
    for (int64_t r = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows; r += (int64_t)gridDim.x * wpb) {
        const float *yr = y + r * cols;
        float *dr = dp + r * cols;
        double dot = 0.0;
        for (int64_t j = lane; j < cols; j += 32) dot += (double)(yr[j] * dr[j]);
        const float d = (float)ops_warp_sum(dot);
        for (int64_t j = lane; j < cols; j += 32) dr[j] = yr[j] * (dr[j] - d);
    }
}

// ---- MSE loss ----------------------------------------------------------------------------------

// One block: per-sample sums of (pred - target)² in double, the weighted mean of the sample means
// in sample order. K > 1 only when D % K == 0 and pred, target are 16-byte aligned.
template <typename T, int K>
__global__ void ops_mse_forward_kernel(int64_t N, int64_t D, const T *pred, const T *target, const float *weights,
                                       float *per_sample, float *loss)
{
    __shared__ double sh[33];
    double total = 0.0;
    for (int64_t n = 0; n < N; n++) {
        const T *p = pred + n * D, *t = target + n * D;
        double acc = 0.0;
        for (int64_t g = threadIdx.x; g < D / K; g += blockDim.x) {
            float a[K], b[K];
            OpsIo<T, K>::load(p + g * K, a);
            OpsIo<T, K>::load(t + g * K, b);
            DL_UNROLL
            for (int k = 0; k < K; k++) {
                const double d = (double)a[k] - (double)b[k];
                acc += d * d;
            }
        }
        const double mean = ops_block_sum(acc, sh) / (double)D;
        if (threadIdx.x == 0) {
            if (per_sample) per_sample[n] = (float)mean;
            total += (weights ? (double)weights[n] : 1.0) * mean;
        }
    }
    if (threadIdx.x == 0) *loss = (float)(total / (double)N);
}

// dpred = scale · w[n] · (pred - target), dtarget = -dpred (NULL skipped); dpred may alias pred.
template <typename T, int K>
__global__ void ops_mse_backward_kernel(int64_t N, int64_t D, const T *pred, const T *target, const float *weights,
                                        float scale, T *dpred, T *dtarget)
{
    const int64_t groups = N * D / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const int64_t e = g * K, n = e / D;
        const float c = scale * (weights ? weights[n] : 1.0f);
        float a[K], b[K];
        OpsIo<T, K>::load(pred + e, a);
        OpsIo<T, K>::load(target + e, b);
        DL_UNROLL
        for (int k = 0; k < K; k++) {
            a[k] = c * (a[k] - b[k]);
            b[k] = -a[k];
        }
        if (dtarget) OpsIo<T, K>::store(dtarget + e, b);
        if (dpred) OpsIo<T, K>::store(dpred + e, a);
    }
}

// ---- AdamW, gradient norm, clipping ------------------------------------------------------------

// The derived constants of dl_cpu_adamw_step, each rounded to fp32 once on the host.
struct OpsAdamW {
    float decay, omb1, b2, omb2, step_size, inv_bc2_sqrt, eps;
};

template <int K>
__global__ void ops_adamw_kernel(int64_t n, OpsAdamW h, float *p, const float *g, float *m, float *v)
{
    const int64_t groups = n / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {
        float pv[K], gv[K], mv[K], vv[K];
        OpsIo<float, K>::load(p + i * K, pv);
        OpsIo<float, K>::load(g + i * K, gv);
        OpsIo<float, K>::load(m + i * K, mv);
        OpsIo<float, K>::load(v + i * K, vv);
        DL_UNROLL
        for (int k = 0; k < K; k++) {
            const float gi = gv[k];
            const float mi = mv[k] + h.omb1 * (gi - mv[k]); // torch: m.lerp_(g, 1 - beta1)
            const float vi = h.b2 * vv[k] + h.omb2 * gi * gi;
            mv[k] = mi;
            vv[k] = vi;
            const float denom = sqrtf(vi) * h.inv_bc2_sqrt + h.eps;
            pv[k] = pv[k] * h.decay - h.step_size * mi / denom;
        }
        OpsIo<float, K>::store(m + i * K, mv);
        OpsIo<float, K>::store(v + i * K, vv);
        OpsIo<float, K>::store(p + i * K, pv);
    }
}

// *out = Σ x² in double by one block (blockDim OPS_SUMSQ_THREADS); x 16-byte aligned when vec.
__global__ void ops_sumsq_kernel(int64_t n, int vec, const float *x, float *out)
{
    __shared__ double sh[33];
    double a0 = 0.0, a1 = 0.0;
    int64_t done = 0;
    if (vec) {
        const int64_t groups = n / 4;
        for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
            float f[4];
            OpsIo<float, 4>::load(x + g * 4, f);
            a0 += (double)f[0] * f[0] + (double)f[1] * f[1];
            a1 += (double)f[2] * f[2] + (double)f[3] * f[3];
        }
        done = groups * 4;
    }
    for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) a0 += (double)x[i] * x[i];
    const double s = ops_block_sum(a0 + a1, sh);
    if (threadIdx.x == 0) *out = (float)s;
}

// torch's clip_grad_norm_ coefficient, as the CPU backend computes it (fp32).
__global__ void ops_clip_coef_kernel(const float *sumsq, float max_norm, float *coef)
{
    const float c = max_norm / (sqrtf(*sumsq) + 1e-6f);
    *coef = c < 1.0f ? c : 1.0f;
}

// x *= *coef (nothing to do when it is 1, as the CPU backend).
template <int K>
__global__ void ops_scale_by_kernel(int64_t n, const float *coef, float *x)
{
    const float c = *coef;
    if (c == 1.0f) return;
    const int64_t groups = n / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        float v[K];
        OpsIo<float, K>::load(x + g * K, v);
        DL_UNROLL
        for (int k = 0; k < K; k++) v[k] *= c;
        OpsIo<float, K>::store(x + g * K, v);
    }
    const int64_t i = groups * K + threadIdx.x;
    if (K > 1 && blockIdx.x == 0 && i < n) x[i] *= c;
}

// y = x as fp32, x fp16 or bf16 (frozen weights kept in the checkpoint's type, widened where an op
// computes in fp32): exact, one element per thread of a grid-stride loop.
__device__ __forceinline__ float ops_widen(__half h) { return __half2float(h); }
__device__ __forceinline__ float ops_widen(__nv_bfloat16 b) { return __bfloat162float(b); }
template <typename T>
__global__ void ops_to_f32_kernel(int64_t n, const T *x, float *y)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = ops_widen(x[i]);
}

// y = x rounded to bf16 (nearest even), x fp32: the narrowing twin of ops_to_f32_kernel.
__global__ void ops_f32_to_bf16_kernel(int64_t n, const float *x, __nv_bfloat16 *y)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = __float2bfloat16(x[i]);
}

// ---- launchers ---------------------------------------------------------------------------------

static inline bool ops_dt_ok(dl_dtype dt) { return dt == DL_F32 || dt == DL_BF16; }

extern "C" int dl_cuda_act_forward(dl_dtype dt, int act, int64_t n, const void *x, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || act < 0 || act >= DL_ACT_COUNT || n < 0 || (n && (!x || !y))) return -1;
    if (n == 0) return 0;
    if (dt == DL_F32)
        ops_map1<float>(n, x, y, OpsActFwd{act}, stream);
    else
        ops_map1<__nv_bfloat16>(n, x, y, OpsActFwd{act}, stream);
    return 0;
}

extern "C" int dl_cuda_act_backward(dl_dtype dt, int act, int64_t n, const void *x, const void *dy, void *dx,
                                    cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || act < 0 || act >= DL_ACT_COUNT || n < 0 || (n && (!x || !dy || !dx))) return -1;
    if (n == 0) return 0;
    if (dt == DL_F32)
        ops_map2<float>(n, x, dy, dx, OpsActBwd{act}, stream);
    else
        ops_map2<__nv_bfloat16>(n, x, dy, dx, OpsActBwd{act}, stream);
    return 0;
}

extern "C" int dl_cuda_geglu_forward(dl_dtype dt, int64_t M, int64_t D, const void *x, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || M < 0 || D <= 0 || (M && (!x || !y))) return -1;
    if (M == 0) return 0;
    if (dt == DL_F32)
        ops_geglu<float>(0, M, D, x, NULL, y, stream);
    else
        ops_geglu<__nv_bfloat16>(0, M, D, x, NULL, y, stream);
    return 0;
}

extern "C" int dl_cuda_geglu_backward(dl_dtype dt, int64_t M, int64_t D, const void *x, const void *dy, void *dx,
                                      cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || M < 0 || D <= 0 || (M && (!x || !dy || !dx))) return -1;
    if (M == 0) return 0;
    if (dt == DL_F32)
        ops_geglu<float>(1, M, D, x, dy, dx, stream);
    else
        ops_geglu<__nv_bfloat16>(1, M, D, x, dy, dx, stream);
    return 0;
}

extern "C" int dl_cuda_add(dl_dtype dt, int64_t n, const void *a, const void *b, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || n < 0 || (n && (!a || !b || !y))) return -1;
    if (n == 0) return 0;
    if (dt == DL_F32)
        ops_map2<float>(n, a, b, y, OpsAdd{}, stream);
    else
        ops_map2<__nv_bfloat16>(n, a, b, y, OpsAdd{}, stream);
    return 0;
}

extern "C" int dl_cuda_scale(dl_dtype dt, int64_t n, float alpha, const void *x, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || n < 0 || (n && (!x || !y))) return -1;
    if (n == 0) return 0;
    if (dt == DL_F32)
        ops_map1<float>(n, x, y, OpsScale{alpha}, stream);
    else
        ops_map1<__nv_bfloat16>(n, x, y, OpsScale{alpha}, stream);
    return 0;
}

extern "C" int dl_cuda_axpy(dl_dtype dt, int64_t n, float alpha, const void *x, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || n < 0 || (n && (!x || !y || x == y))) return -1;
    if (n == 0) return 0;
    if (dt == DL_F32)
        ops_map2<float>(n, x, y, y, OpsAxpy{alpha}, stream);
    else
        ops_map2<__nv_bfloat16>(n, x, y, y, OpsAxpy{alpha}, stream);
    return 0;
}

template <typename T>
static void ops_add_bcast(int64_t N, int64_t HW, int64_t C, int per_sample, const void *x, const float *v, void *y,
                          cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    const int64_t rows = N * HW;
    if (C % K == 0 && ops_al16(x) && ops_al16(y))
        DL_LAUNCH((ops_add_bcast_kernel<T, OpsVec<T>::K>), dim3(ops_grid(rows * C / K, OPS_THREADS)),
                  dim3(OPS_THREADS), 0, stream, rows, HW, C, per_sample, (const T *)x, v, (T *)y);
    else
        DL_LAUNCH((ops_add_bcast_kernel<T, 1>), dim3(ops_grid(rows * C, OPS_THREADS)), dim3(OPS_THREADS), 0, stream,
                  rows, HW, C, per_sample, (const T *)x, v, (T *)y);
}

extern "C" int dl_cuda_add_bcast_forward(dl_dtype dt, int64_t N, int64_t HW, int64_t C, int per_sample,
                                         const void *x, const float *v, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N < 0 || HW < 0 || C <= 0 || (N * HW != 0 && (!x || !v || !y))) return -1;
    if (N * HW == 0) return 0;
    if (dt == DL_F32)
        ops_add_bcast<float>(N, HW, C, per_sample, x, v, y, stream);
    else
        ops_add_bcast<__nv_bfloat16>(N, HW, C, per_sample, x, v, y, stream);
    return 0;
}

extern "C" int dl_cuda_add_bcast_backward(dl_dtype dt, int64_t N, int64_t HW, int64_t C, int per_sample,
                                          const void *dy, void *dx, float *dv, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N < 0 || HW < 0 || C <= 0 || !dy) return -1;
    const size_t es = dl_dtype_size(dt);
    if (dx && dx != dy && N * HW != 0)
        DL_CUDA_CHECK(cudaMemcpyAsync(dx, dy, (size_t)(N * HW * C) * es, cudaMemcpyDeviceToDevice, stream));
    if (dv) {
        const int64_t groups = per_sample ? N : 1, rows = per_sample ? HW : N * HW;
        if (groups == 0) return 0;
        const dim3 grid((unsigned)((C + 31) / 32), (unsigned)groups), block(32, OPS_COL_TY);
        if (dt == DL_F32)
            DL_LAUNCH(ops_colsum_kernel<float>, grid, block, 0, stream, rows, C, (const float *)dy, dv);
        else
            DL_LAUNCH(ops_colsum_kernel<__nv_bfloat16>, grid, block, 0, stream, rows, C, (const __nv_bfloat16 *)dy,
                      dv);
    }
    return 0;
}

extern "C" int dl_cuda_concat_channels_forward(dl_dtype dt, int64_t M, int64_t C1, int64_t C2, const void *a,
                                               const void *b, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || M < 0 || C1 <= 0 || C2 <= 0 || (M && (!a || !b || !y))) return -1;
    if (M == 0) return 0;
    const size_t es = dl_dtype_size(dt);
    const bool ok16 = (C1 * es) % 16 == 0 && (C2 * es) % 16 == 0 && ops_al16(a) && ops_al16(b) && ops_al16(y);
    ops_copy_dispatch(ok16, es, [&](auto u, int64_t k) {
        typedef decltype(u) U;
        (void)u;
        DL_LAUNCH(ops_concat_kernel<U>, dim3(ops_grid(M * (C1 + C2) / k, OPS_THREADS)), dim3(OPS_THREADS), 0, stream,
                  M, C1 / k, C2 / k, (const U *)a, (const U *)b, (U *)y);
    });
    return 0;
}

extern "C" int dl_cuda_concat_channels_backward(dl_dtype dt, int64_t M, int64_t C1, int64_t C2, const void *dy,
                                                void *da, void *db, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || M < 0 || C1 <= 0 || C2 <= 0 || (M && !dy)) return -1;
    if (M == 0 || (!da && !db)) return 0;
    const size_t es = dl_dtype_size(dt);
    const bool ok16 = (C1 * es) % 16 == 0 && (C2 * es) % 16 == 0 && ops_al16(dy) && ops_al16(da) && ops_al16(db);
    ops_copy_dispatch(ok16, es, [&](auto u, int64_t k) {
        typedef decltype(u) U;
        (void)u;
        DL_LAUNCH(ops_split_kernel<U>, dim3(ops_grid(M * (C1 + C2) / k, OPS_THREADS)), dim3(OPS_THREADS), 0, stream,
                  M, C1 / k, C2 / k, (const U *)dy, (U *)da, (U *)db);
    });
    return 0;
}

extern "C" int dl_cuda_upsample_nearest2x_forward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C,
                                                  const void *x, void *y, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N < 0 || H <= 0 || W <= 0 || C <= 0 || (N && (!x || !y))) return -1;
    if (N == 0) return 0;
    const size_t es = dl_dtype_size(dt);
    const bool ok16 = (C * es) % 16 == 0 && ops_al16(x) && ops_al16(y);
    ops_copy_dispatch(ok16, es, [&](auto u, int64_t k) {
        typedef decltype(u) U;
        (void)u;
        DL_LAUNCH(ops_upsample_kernel<U>, dim3(ops_grid(N * 4 * H * W * C / k, OPS_THREADS)), dim3(OPS_THREADS), 0,
                  stream, N, H, W, C / k, (const U *)x, (U *)y);
    });
    return 0;
}

// dx [N, H, W, C] = the sum of the 2x2 block of dy each element was copied to, in the CPU op's order.
template <typename T, int K>
__global__ void ops_upsample_backward_kernel(int64_t N, int64_t H, int64_t W, int64_t C, const T *dy, T *dx)
{
    const int64_t groups = N * H * W * C / K, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        const int64_t e = g * K, pix = e / C, c = e - pix * C;
        const int64_t w = pix % W, t = pix / W, h = t % H, nb = t / H;
        const T *a = dy + ((nb * 2 * H + 2 * h) * 2 * W + 2 * w) * C + c; // [K] at (2h, 2w)
        const T *b = a + 2 * W * C;                                       // [K] at (2h + 1, 2w)
        float a0[K], a1[K], b0[K], b1[K];
        OpsIo<T, K>::load(a, a0);
        OpsIo<T, K>::load(a + C, a1);
        OpsIo<T, K>::load(b, b0);
        OpsIo<T, K>::load(b + C, b1);
        DL_UNROLL
        for (int k = 0; k < K; k++) a0[k] = (a0[k] + a1[k]) + (b0[k] + b1[k]);
        OpsIo<T, K>::store(dx + e, a0);
    }
}

template <typename T>
static void ops_upsample_backward(int64_t N, int64_t H, int64_t W, int64_t C, const void *dy, void *dx,
                                  cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    if (C % K == 0 && ops_al16(dy) && ops_al16(dx))
        DL_LAUNCH((ops_upsample_backward_kernel<T, OpsVec<T>::K>), dim3(ops_grid(N * H * W * C / K, OPS_THREADS)),
                  dim3(OPS_THREADS), 0, stream, N, H, W, C, (const T *)dy, (T *)dx);
    else
        DL_LAUNCH((ops_upsample_backward_kernel<T, 1>), dim3(ops_grid(N * H * W * C, OPS_THREADS)),
                  dim3(OPS_THREADS), 0, stream, N, H, W, C, (const T *)dy, (T *)dx);
}

extern "C" int dl_cuda_upsample_nearest2x_backward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C,
                                                   const void *dy, void *dx, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N < 0 || H <= 0 || W <= 0 || C <= 0 || (N && (!dy || !dx))) return -1;
    if (N == 0) return 0;
    if (dt == DL_F32)
        ops_upsample_backward<float>(N, H, W, C, dy, dx, stream);
    else
        ops_upsample_backward<__nv_bfloat16>(N, H, W, C, dy, dx, stream);
    return 0;
}

static int ops_pad(int bwd, dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C, int top, int left, int bottom,
                   int right, const void *src, void *dst, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N < 0 || H <= 0 || W <= 0 || C <= 0 || top < 0 || left < 0 || bottom < 0 || right < 0 ||
        (N && (!src || !dst)))
        return -1;
    if (N == 0) return 0;
    const int64_t Ho = H + top + bottom, Wo = W + left + right, nd = N * (bwd ? H * W : Ho * Wo) * C;
    const size_t es = dl_dtype_size(dt);
    const bool ok16 = (C * es) % 16 == 0 && ops_al16(src) && ops_al16(dst);
    ops_copy_dispatch(ok16, es, [&](auto u, int64_t k) {
        typedef decltype(u) U;
        (void)u;
        DL_LAUNCH(ops_pad_kernel<U>, dim3(ops_grid(nd / k, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, bwd, N, H, W,
                  C / k, top, left, Ho, Wo, (const U *)src, (U *)dst);
    });
    return 0;
}

extern "C" int dl_cuda_pad2d_forward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C, int top, int left,
                                     int bottom, int right, const void *x, void *y, cudaStream_t stream)
{
    return ops_pad(0, dt, N, H, W, C, top, left, bottom, right, x, y, stream);
}

extern "C" int dl_cuda_pad2d_backward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C, int top, int left,
                                      int bottom, int right, const void *dy, void *dx, cudaStream_t stream)
{
    return ops_pad(1, dt, N, H, W, C, top, left, bottom, right, dy, dx, stream);
}

extern "C" int dl_cuda_timestep_embedding(dl_dtype dt, int64_t N, int64_t dim, const float *t, int flip_sin_to_cos,
                                          float downscale_freq_shift, float scale, float max_period, void *out,
                                          cudaStream_t stream)
{
    const int64_t half = dim / 2;
    if (!ops_dt_ok(dt) || N < 0 || dim <= 0 || !(max_period > 0.0f) || (N && (!t || !out))) return -1;
    if (half > 0 && (float)half - downscale_freq_shift == 0.0f) return -1;
    if (N == 0) return 0;
    const float denom = (float)half - downscale_freq_shift, nlp = (float)(-log((double)max_period));
    const unsigned grid = ops_grid(N * (half + (dim & 1)), OPS_THREADS);
    if (dt == DL_F32)
        DL_LAUNCH(ops_timestep_kernel<float>, dim3(grid), dim3(OPS_THREADS), 0, stream, N, dim, t, flip_sin_to_cos,
                  denom, nlp, scale, (float *)out);
    else
        DL_LAUNCH(ops_timestep_kernel<__nv_bfloat16>, dim3(grid), dim3(OPS_THREADS), 0, stream, N, dim, t,
                  flip_sin_to_cos, denom, nlp, scale, (__nv_bfloat16 *)out);
    return 0;
}

extern "C" int dl_cuda_layernorm_forward(dl_dtype dt, int64_t M, int64_t C, float eps, const void *x,
                                         const float *gamma, const float *beta, void *y, float *mean, float *rstd,
                                         cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || M < 0 || M > 0x7fffffff || C <= 0 || !(eps >= 0.0f) || (M && (!x || !y))) return -1;
    if (M == 0) return 0;
    if (dt == DL_F32)
        DL_LAUNCH(ops_layernorm_forward_kernel<float>, dim3((unsigned)M), dim3(OPS_ROW_THREADS), 0, stream, C, eps,
                  (const float *)x, gamma, beta, (float *)y, mean, rstd);
    else
        DL_LAUNCH(ops_layernorm_forward_kernel<__nv_bfloat16>, dim3((unsigned)M), dim3(OPS_ROW_THREADS), 0, stream, C,
                  eps, (const __nv_bfloat16 *)x, gamma, beta, (__nv_bfloat16 *)y, mean, rstd);
    return 0;
}

template <typename T>
static void ops_layernorm_backward(int64_t M, int64_t C, const void *x, const float *gamma, const float *mean,
                                   const float *rstd, const void *dy, void *dx, float *dgamma, float *dbeta,
                                   cudaStream_t stream)
{
    // the parameter gradients first: they read dy, which dx may overwrite
    if (dgamma || dbeta)
        DL_LAUNCH(ops_layernorm_backward_param_kernel<T>, dim3((unsigned)((C + 31) / 32)), dim3(32, OPS_COL_TY), 0,
                  stream, M, C, (const T *)x, mean, rstd, (const T *)dy, dgamma, dbeta);
    if (dx)
        DL_LAUNCH(ops_layernorm_backward_dx_kernel<T>, dim3((unsigned)M), dim3(OPS_ROW_THREADS), 0, stream, C,
                  (const T *)x, gamma, mean, rstd, (const T *)dy, (T *)dx);
}

extern "C" int dl_cuda_layernorm_backward(dl_dtype dt, int64_t M, int64_t C, const void *x, const float *gamma,
                                          const float *mean, const float *rstd, const void *dy, void *dx,
                                          float *dgamma, float *dbeta, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || M < 0 || M > 0x7fffffff || C <= 0 || (M && (!x || !mean || !rstd || !dy))) return -1;
    if (M == 0) { // no rows: the parameter gradients are sums over nothing
        if (dgamma) DL_CUDA_CHECK(cudaMemsetAsync(dgamma, 0, (size_t)C * sizeof(float), stream));
        if (dbeta) DL_CUDA_CHECK(cudaMemsetAsync(dbeta, 0, (size_t)C * sizeof(float), stream));
        return 0;
    }
    if (dt == DL_F32)
        ops_layernorm_backward<float>(M, C, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, stream);
    else
        ops_layernorm_backward<__nv_bfloat16>(M, C, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, stream);
    return 0;
}

template <typename T>
static void ops_embed(int64_t N, int64_t T_, int64_t C, int64_t V, const int32_t *ids, const float *tok,
                      const float *pos, void *out, cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    const int64_t rows = N * T_;
    if (C % K == 0 && ops_al16(tok) && ops_al16(pos) && ops_al16(out))
        DL_LAUNCH((ops_embed_kernel<T, OpsVec<T>::K>), dim3(ops_grid(rows * C / K, OPS_THREADS)), dim3(OPS_THREADS),
                  0, stream, rows, T_, C, V, ids, tok, pos, (T *)out);
    else
        DL_LAUNCH((ops_embed_kernel<T, 1>), dim3(ops_grid(rows * C, OPS_THREADS)), dim3(OPS_THREADS), 0, stream,
                  rows, T_, C, V, ids, tok, pos, (T *)out);
}

extern "C" int dl_cuda_embed_tokens(dl_dtype dt, int64_t N, int64_t T, int64_t C, int64_t V, const int32_t *ids,
                                    const float *tok, const float *pos, void *out, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N < 0 || T < 0 || C <= 0 || V <= 0 || (N * T != 0 && (!ids || !tok || !pos || !out))) return -1;
    if (N * T == 0) return 0;
    if (dt == DL_F32)
        ops_embed<float>(N, T, C, V, ids, tok, pos, out, stream);
    else
        ops_embed<__nv_bfloat16>(N, T, C, V, ids, tok, pos, out, stream);
    return 0;
}

/* thread c: channel c of every row, in row order (deterministic, no atomics) */
__global__ void ops_embed_backward_kernel(int64_t rows, int64_t T, int64_t C, int64_t V, const int32_t *ids,
                                          const float *dout, float *dtok, float *dpos)
{
    const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int64_t r = 0; r < rows; r++) {
        int64_t id = ids[r];
        id = id < 0 ? 0 : id >= V ? V - 1 : id;
        const float d = dout[r * C + c];
        if (dtok) dtok[id * C + c] += d;
        if (dpos) dpos[(r % T) * C + c] += d;
    }
}

extern "C" int dl_cuda_embed_tokens_backward(int64_t N, int64_t T, int64_t C, int64_t V, const int32_t *ids,
                                             const float *dout, float *dtok, float *dpos, cudaStream_t stream)
{
    if (N < 0 || T < 0 || C <= 0 || V <= 0 || (N * T != 0 && (!ids || !dout))) return -1;
    if (N * T == 0 || (!dtok && !dpos)) return 0;
    DL_LAUNCH(ops_embed_backward_kernel, dim3(ops_grid(C, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, N * T, T, C, V,
              ids, dout, dtok, dpos);
    return 0;
}

extern "C" int dl_cuda_softmax_forward(int64_t rows, int64_t cols, float scale, int64_t causal_tq, const float *x,
                                       float *y, float *lse, cudaStream_t stream)
{
    if (rows < 0 || cols <= 0 || causal_tq < 0 || (rows && (!x || !y))) return -1;
    if (rows == 0) return 0;
    DL_LAUNCH(ops_softmax_forward_kernel, dim3(ops_grid(rows, OPS_SM_WARPS)), dim3(OPS_SM_WARPS * 32), 0, stream,
              rows, cols, scale, causal_tq, x, y, lse);
    return 0;
}

extern "C" int dl_cuda_softmax_backward(int64_t rows, int64_t cols, const float *y, float *dp, cudaStream_t stream)
{
    if (rows < 0 || cols <= 0 || (rows && (!y || !dp))) return -1;
    if (rows == 0) return 0;
    DL_LAUNCH(ops_softmax_backward_kernel, dim3(ops_grid(rows, OPS_SM_WARPS)), dim3(OPS_SM_WARPS * 32), 0, stream,
              rows, cols, y, dp);
    return 0;
}

template <typename T>
static void ops_mse_forward(int64_t N, int64_t D, const void *pred, const void *target, const float *weights,
                            float *per_sample, float *loss, cudaStream_t stream)
{
    if (D % OpsVec<T>::K == 0 && ops_al16(pred) && ops_al16(target))
        DL_LAUNCH((ops_mse_forward_kernel<T, OpsVec<T>::K>), dim3(1), dim3(OPS_RED_THREADS), 0, stream, N, D,
                  (const T *)pred, (const T *)target, weights, per_sample, loss);
    else
        DL_LAUNCH((ops_mse_forward_kernel<T, 1>), dim3(1), dim3(OPS_RED_THREADS), 0, stream, N, D, (const T *)pred,
                  (const T *)target, weights, per_sample, loss);
}

extern "C" int dl_cuda_mse_loss_forward(dl_dtype dt, int64_t N, int64_t D, const void *pred, const void *target,
                                        const float *weights, float *per_sample, float *loss, cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N <= 0 || D <= 0 || !pred || !target || !loss) return -1;
    if (dt == DL_F32)
        ops_mse_forward<float>(N, D, pred, target, weights, per_sample, loss, stream);
    else
        ops_mse_forward<__nv_bfloat16>(N, D, pred, target, weights, per_sample, loss, stream);
    return 0;
}

template <typename T>
static void ops_mse_backward(int64_t N, int64_t D, const void *pred, const void *target, const float *weights,
                             float scale, void *dpred, void *dtarget, cudaStream_t stream)
{
    const int K = OpsVec<T>::K;
    if (D % K == 0 && ops_al16(pred) && ops_al16(target) && ops_al16(dpred) && ops_al16(dtarget))
        DL_LAUNCH((ops_mse_backward_kernel<T, OpsVec<T>::K>), dim3(ops_grid(N * D / K, OPS_THREADS)),
                  dim3(OPS_THREADS), 0, stream, N, D, (const T *)pred, (const T *)target, weights, scale, (T *)dpred,
                  (T *)dtarget);
    else
        DL_LAUNCH((ops_mse_backward_kernel<T, 1>), dim3(ops_grid(N * D, OPS_THREADS)), dim3(OPS_THREADS), 0, stream,
                  N, D, (const T *)pred, (const T *)target, weights, scale, (T *)dpred, (T *)dtarget);
}

extern "C" int dl_cuda_mse_loss_backward(dl_dtype dt, int64_t N, int64_t D, const void *pred, const void *target,
                                         const float *weights, float dloss, void *dpred, void *dtarget,
                                         cudaStream_t stream)
{
    if (!ops_dt_ok(dt) || N <= 0 || D <= 0 || !pred || !target) return -1;
    if (dtarget && (dtarget == pred || dtarget == target)) return -1;
    if (!dpred && !dtarget) return 0;
    const float scale = (float)(2.0 * (double)dloss / ((double)N * (double)D));
    if (dt == DL_F32)
        ops_mse_backward<float>(N, D, pred, target, weights, scale, dpred, dtarget, stream);
    else
        ops_mse_backward<__nv_bfloat16>(N, D, pred, target, weights, scale, dpred, dtarget, stream);
    return 0;
}

extern "C" int dl_cuda_adamw_step(int64_t n, double lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t step, float *p, const float *g, float *m, float *v, cudaStream_t stream)
{
    if (n < 0 || step < 1 || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps >= 0) ||
        (n && (!p || !g || !m || !v)))
        return -1;
    if (n == 0) return 0;
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    const OpsAdamW h = {(float)(1.0 - lr * weight_decay), (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2),
                        (float)(lr / bc1), (float)(1.0 / sqrt(bc2)), (float)eps};
    if (n % 4 == 0 && ops_al16(p) && ops_al16(g) && ops_al16(m) && ops_al16(v))
        DL_LAUNCH(ops_adamw_kernel<4>, dim3(ops_grid(n / 4, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n, h, p, g,
                  m, v);
    else
        DL_LAUNCH(ops_adamw_kernel<1>, dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n, h, p, g, m,
                  v);
    return 0;
}

extern "C" int dl_cuda_sumsq(int64_t n, const float *x, float *out, cudaStream_t stream)
{
    if (n < 0 || !out || (n && !x)) return -1;
    DL_LAUNCH(ops_sumsq_kernel, dim3(1), dim3(OPS_SUMSQ_THREADS), 0, stream, n, ops_al16(x) ? 1 : 0, x, out);
    return 0;
}

extern "C" int dl_cuda_clip_coef(const float *sumsq, float max_norm, float *coef, cudaStream_t stream)
{
    if (!sumsq || !coef) return -1;
    DL_LAUNCH(ops_clip_coef_kernel, dim3(1), dim3(1), 0, stream, sumsq, max_norm, coef);
    return 0;
}

extern "C" int dl_cuda_scale_by(int64_t n, const float *coef, float *x, cudaStream_t stream)
{
    if (n < 0 || !coef || (n && !x)) return -1;
    if (n == 0) return 0;
    if (ops_al16(x))
        DL_LAUNCH(ops_scale_by_kernel<4>, dim3(ops_grid(n / 4, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n, coef,
                  x);
    else
        DL_LAUNCH(ops_scale_by_kernel<1>, dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n, coef, x);
    return 0;
}

extern "C" int dl_cuda_to_f32(dl_dtype dt, int64_t n, const void *x, float *y, cudaStream_t stream)
{
    if ((dt != DL_F16 && dt != DL_BF16) || n < 0 || (n && (!x || !y))) return -1;
    if (n == 0) return 0;
    if (dt == DL_F16)
        DL_LAUNCH(ops_to_f32_kernel<__half>, dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n,
                  (const __half *)x, y);
    else
        DL_LAUNCH(ops_to_f32_kernel<__nv_bfloat16>, dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n,
                  (const __nv_bfloat16 *)x, y);
    return 0;
}

extern "C" int dl_cuda_from_f32(dl_dtype dt, int64_t n, const float *x, void *y, cudaStream_t stream)
{
    if (dt != DL_BF16 || n < 0 || (n && (!x || !y))) return -1;
    if (n == 0) return 0;
    DL_LAUNCH(ops_f32_to_bf16_kernel, dim3(ops_grid(n, OPS_THREADS)), dim3(OPS_THREADS), 0, stream, n, x,
              (__nv_bfloat16 *)y);
    return 0;
}
