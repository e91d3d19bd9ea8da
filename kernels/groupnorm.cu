/* groupnorm.cu - group-norm forward and backward on channels-last [N, HW, C], optional fused
 * SiLU, portable CUDA (no PTX).
 *
 * G groups of Cg = C/G consecutive channels; statistics over HW·Cg elements per (n, g), in fp32
 * whatever the storage type (float or bf16). Passes over the activations:
 *   forward : 1 read (per-chunk, per-channel partial sums, shifted by the group's first element
 *             for accuracy) + 1 read/1 write (normalise, affine, SiLU).
 *   backward: 1 read of x, dy (per-chunk, per-channel Σdz and Σdz·x̂) + 1 read of x, dy and
 *             1 write of dx. The small reductions between passes run on [N, chunks, C] partials
 *             in a fixed order, so results are deterministic (no atomics).
 * Every pass over the activations uses a 32×8 block: 32 consecutive channels per warp (coalesced
 * for any C, no vector-width requirement, no per-element index division), 8 rows in parallel.
 * Reductions split HW into at most GN_MAX_CHUNKS chunks of rows for parallelism. */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"

#include <math.h>

#define GN_MIN_ROWS 128    // fewest rows (pixels) per reduction chunk
#define GN_MAX_CHUNKS 256  // most reduction chunks per sample
#define GN_APPLY_ROWS 64   // rows per block of the elementwise passes
#define GN_TX 32           // channels per block
#define GN_TY 8            // rows in flight per block

static __device__ inline float gn_ld(const float *p) { return *p; }
static __device__ inline float gn_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
static __device__ inline void gn_st(float *p, float v) { *p = v; }
static __device__ inline void gn_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }

// Rows per reduction chunk (a multiple of GN_TY) and the number of chunks.
static inline int64_t gn_rows(int64_t HW)
{
    int64_t r = (HW + GN_MAX_CHUNKS - 1) / GN_MAX_CHUNKS;
    r = (r + GN_TY - 1) / GN_TY * GN_TY;
    return r > GN_MIN_ROWS ? r : GN_MIN_ROWS;
}
static inline int gn_chunks(int64_t HW) { return (int)((HW + gn_rows(HW) - 1) / gn_rows(HW)); }

// ---- forward -----------------------------------------------------------------------------------

// part[n, chunk, c] = (Σ (x - K_g), Σ (x - K_g)²) over the rows of the chunk, K_g = x[n, 0, g·Cg].
// grid (chunks, ceil(C / 32), N), block (32, 8). x [N, HW, C], part [N, chunks, C, 2]
template <typename T>
__global__ void groupnorm_forward_stats_kernel(const T *x, float *part, int64_t HW, int64_t rows,
                                               int C, int Cg)
{
    __shared__ float s1[GN_TY][GN_TX], s2[GN_TY][GN_TX];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int c = (int)blockIdx.y * GN_TX + tx, n = (int)blockIdx.z, chunk = (int)blockIdx.x;
    const T *xn = x + (int64_t)n * HW * C;
    float a = 0.0f, b = 0.0f;
    if (c < C) {
        const float shift = gn_ld(xn + (c / Cg) * Cg);
        const int64_t p0 = (int64_t)chunk * rows;
        const int64_t p1 = p0 + rows < HW ? p0 + rows : HW;
        for (int64_t p = p0 + ty; p < p1; p += GN_TY) {
            float d = gn_ld(xn + p * C + c) - shift;
            a += d;
            b += d * d;
        }
    }
    s1[ty][tx] = a;
    s2[ty][tx] = b;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int i = 1; i < GN_TY; i++) {
            a += s1[i][tx];
            b += s2[i][tx];
        }
        float *o = part + (((int64_t)n * gridDim.x + chunk) * C + c) * 2;
        o[0] = a;
        o[1] = b;
    }
}

// mean, rstd [N, G] from the partials. grid (G, N), block 128.
template <typename T>
__global__ void groupnorm_forward_finalize_kernel(const T *x, const float *part, float *mean,
                                                  float *rstd, int64_t HW, int C, int Cg,
                                                  int chunks, float eps)
{
    __shared__ float s1[128], s2[128];
    const int g = (int)blockIdx.x, n = (int)blockIdx.y, G = (int)gridDim.x, t = (int)threadIdx.x;
    float a = 0.0f, b = 0.0f;
    for (int i = t; i < chunks * Cg; i += 128) {
        int ch = i / Cg, c = g * Cg + (i - ch * Cg);
        const float *pp = part + (((int64_t)n * chunks + ch) * C + c) * 2;
        a += pp[0];
        b += pp[1];
    }
    s1[t] = a;
    s2[t] = b;
    __syncthreads();
    for (int w = 64; w > 0; w >>= 1) {
        if (t < w) {
            s1[t] += s1[t + w];
            s2[t] += s2[t + w];
        }
        __syncthreads();
    }
    if (t == 0) {
        const float inv = 1.0f / (float)(HW * Cg);
        const float shift = gn_ld(x + (int64_t)n * HW * C + (int64_t)g * Cg);
        const float m = s1[0] * inv; // mean of the shifted data
        const float var = fmaxf(s2[0] * inv - m * m, 0.0f);
        mean[n * G + g] = shift + m;
        rstd[n * G + g] = rsqrtf(var + eps);
    }
}

// y = act(x·a_c + b_c) with a_c = rstd·gamma_c, b_c = beta_c - mean·a_c.
// grid (ceil(HW / GN_APPLY_ROWS), ceil(C / 32), N), block (32, 8).
template <typename T>
__global__ void groupnorm_forward_kernel(const T *x, const float *gamma, const float *beta,
                                         const float *mean, const float *rstd, T *y, int64_t HW,
                                         int C, int Cg, int G, int silu)
{
    const int c = (int)blockIdx.y * GN_TX + (int)threadIdx.x, n = (int)blockIdx.z;
    if (c >= C) return; // no barrier in this kernel
    const int ng = n * G + c / Cg;
    const float a = rstd[ng] * (gamma ? gamma[c] : 1.0f);
    const float b = (beta ? beta[c] : 0.0f) - mean[ng] * a;
    const int64_t p0 = (int64_t)blockIdx.x * GN_APPLY_ROWS;
    const int64_t p1 = p0 + GN_APPLY_ROWS < HW ? p0 + GN_APPLY_ROWS : HW;
    const int64_t base = (int64_t)n * HW * C + c;
    for (int64_t p = p0 + threadIdx.y; p < p1; p += GN_TY) {
        float z = gn_ld(x + base + p * C) * a + b;
        if (silu) z = z / (1.0f + expf(-z));
        gn_st(y + base + p * C, z);
    }
}

// ---- backward ----------------------------------------------------------------------------------

// dz = dy·act'(z), z = x̂·gamma + beta; part[n, chunk, c] = (Σ dz, Σ dz·x̂) over the chunk.
// grid (chunks, ceil(C / 32), N), block (32, 8).
template <typename T>
__global__ void groupnorm_backward_reduce_kernel(const T *x, const T *dy, const float *gamma,
                                                 const float *beta, const float *mean,
                                                 const float *rstd, float *part, int64_t HW,
                                                 int64_t rows, int C, int Cg, int G, int silu)
{
    __shared__ float s1[GN_TY][GN_TX], s2[GN_TY][GN_TX];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int c = (int)blockIdx.y * GN_TX + tx, n = (int)blockIdx.z, chunk = (int)blockIdx.x;
    float a = 0.0f, b = 0.0f;
    if (c < C) {
        const int ng = n * G + c / Cg;
        const float mu = mean[ng], rs = rstd[ng], ga = gamma ? gamma[c] : 1.0f;
        const float be = beta ? beta[c] : 0.0f;
        const int64_t p0 = (int64_t)chunk * rows;
        const int64_t p1 = p0 + rows < HW ? p0 + rows : HW;
        const int64_t base = (int64_t)n * HW * C + c;
        for (int64_t p = p0 + ty; p < p1; p += GN_TY) {
            float xh = (gn_ld(x + base + p * C) - mu) * rs;
            float dz = gn_ld(dy + base + p * C);
            if (silu) {
                float z = xh * ga + be, sg = 1.0f / (1.0f + expf(-z));
                dz *= sg * (1.0f + z * (1.0f - sg));
            }
            a += dz;
            b += dz * xh;
        }
    }
    s1[ty][tx] = a;
    s2[ty][tx] = b;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int i = 1; i < GN_TY; i++) {
            a += s1[i][tx];
            b += s2[i][tx];
        }
        float *o = part + (((int64_t)n * gridDim.x + chunk) * C + c) * 2;
        o[0] = a;
        o[1] = b;
    }
}

// chan[n, c] = Σ_chunks part[n, chunk, c]. grid (ceil(C / 32), N), block (32, 8).
__global__ void groupnorm_backward_channel_kernel(const float *part, float *chan, int C,
                                                  int chunks)
{
    __shared__ float s1[GN_TY][GN_TX], s2[GN_TY][GN_TX];
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int c = (int)blockIdx.x * GN_TX + tx, n = (int)blockIdx.y;
    float a = 0.0f, b = 0.0f;
    if (c < C) {
        for (int ch = ty; ch < chunks; ch += GN_TY) {
            const float *pp = part + (((int64_t)n * chunks + ch) * C + c) * 2;
            a += pp[0];
            b += pp[1];
        }
    }
    s1[ty][tx] = a;
    s2[ty][tx] = b;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int i = 1; i < GN_TY; i++) {
            a += s1[i][tx];
            b += s2[i][tx];
        }
        chan[((int64_t)n * C + c) * 2] = a;
        chan[((int64_t)n * C + c) * 2 + 1] = b;
    }
}

// dbeta[c] = Σ_n chan[n, c, 0], dgamma[c] = Σ_n chan[n, c, 1]. grid ceil(C / 128), block 128.
__global__ void groupnorm_backward_param_kernel(const float *chan, float *dgamma, float *dbeta,
                                                int N, int C)
{
    const int c = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (c >= C) return;
    float db = 0.0f, dg = 0.0f;
    for (int n = 0; n < N; n++) {
        db += chan[((int64_t)n * C + c) * 2];
        dg += chan[((int64_t)n * C + c) * 2 + 1];
    }
    if (dbeta) dbeta[c] = db;
    if (dgamma) dgamma[c] = dg;
}

// grp[n, g] = (mean over the group of dz·gamma, mean of dz·gamma·x̂). grid N·G, block 32.
__global__ void groupnorm_backward_group_kernel(const float *chan, const float *gamma, float *grp,
                                                int64_t HW, int C, int Cg, int G)
{
    const int ng = (int)blockIdx.x, n = ng / G, g = ng - n * G, lane = (int)threadIdx.x;
    float a = 0.0f, b = 0.0f;
    for (int i = lane; i < Cg; i += 32) {
        int c = g * Cg + i;
        const float ga = gamma ? gamma[c] : 1.0f;
        a += ga * chan[((int64_t)n * C + c) * 2];
        b += ga * chan[((int64_t)n * C + c) * 2 + 1];
    }
    for (int off = 16; off > 0; off >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, off);
        b += __shfl_xor_sync(0xffffffffu, b, off);
    }
    if (lane == 0) {
        const float inv = 1.0f / (float)(HW * Cg);
        grp[ng * 2] = a * inv;
        grp[ng * 2 + 1] = b * inv;
    }
}

// dx = rstd·(dz·gamma - mean(dz·gamma) - x̂·mean(dz·gamma·x̂)).
// grid (ceil(HW / GN_APPLY_ROWS), ceil(C / 32), N), block (32, 8).
template <typename T>
__global__ void groupnorm_backward_kernel(const T *x, const T *dy, const float *gamma,
                                          const float *beta, const float *mean, const float *rstd,
                                          const float *grp, T *dx, int64_t HW, int C, int Cg,
                                          int G, int silu)
{
    const int c = (int)blockIdx.y * GN_TX + (int)threadIdx.x, n = (int)blockIdx.z;
    if (c >= C) return; // no barrier in this kernel
    const int ng = n * G + c / Cg;
    const float mu = mean[ng], rs = rstd[ng], ga = gamma ? gamma[c] : 1.0f;
    const float be = beta ? beta[c] : 0.0f, ma = grp[ng * 2], mb = grp[ng * 2 + 1];
    const int64_t p0 = (int64_t)blockIdx.x * GN_APPLY_ROWS;
    const int64_t p1 = p0 + GN_APPLY_ROWS < HW ? p0 + GN_APPLY_ROWS : HW;
    const int64_t base = (int64_t)n * HW * C + c;
    for (int64_t p = p0 + threadIdx.y; p < p1; p += GN_TY) {
        const float xh = (gn_ld(x + base + p * C) - mu) * rs;
        float dz = gn_ld(dy + base + p * C);
        if (silu) {
            float z = xh * ga + be, sg = 1.0f / (1.0f + expf(-z));
            dz *= sg * (1.0f + z * (1.0f - sg));
        }
        gn_st(dx + base + p * C, rs * (dz * ga - ma - xh * mb));
    }
}

// ---- launchers ---------------------------------------------------------------------------------

static dim3 gn_apply_grid(int N, int64_t HW, int C)
{
    return dim3((unsigned)((HW + GN_APPLY_ROWS - 1) / GN_APPLY_ROWS),
                (unsigned)((C + GN_TX - 1) / GN_TX), (unsigned)N);
}

extern "C" size_t dl_cuda_groupnorm_workspace_size(int N, int64_t HW, int C, int G)
{
    // part [N, chunks, C, 2] + chan [N, C, 2] + grp [N, G, 2], fp32
    return sizeof(float) * 2 * ((size_t)N * gn_chunks(HW) * C + (size_t)N * C + (size_t)N * G);
}

template <typename T>
static int gn_forward_launch(int N, int64_t HW, int C, int G, float eps, int silu, const void *x,
                             const float *gamma, const float *beta, void *y, float *mean,
                             float *rstd, void *ws, cudaStream_t stream)
{
    const int Cg = C / G, chunks = gn_chunks(HW);
    float *part = (float *)ws;
    DL_LAUNCH(groupnorm_forward_stats_kernel<T>,
              dim3((unsigned)chunks, (unsigned)((C + GN_TX - 1) / GN_TX), (unsigned)N),
              dim3(GN_TX, GN_TY), 0, stream, (const T *)x, part, HW, gn_rows(HW), C, Cg);
    int err = (int)cudaGetLastError();
    if (err) return err;
    DL_LAUNCH(groupnorm_forward_finalize_kernel<T>, dim3((unsigned)G, (unsigned)N), dim3(128), 0,
              stream, (const T *)x, (const float *)part, mean, rstd, HW, C, Cg, chunks, eps);
    if ((err = (int)cudaGetLastError())) return err;
    DL_LAUNCH(groupnorm_forward_kernel<T>, gn_apply_grid(N, HW, C), dim3(GN_TX, GN_TY), 0, stream,
              (const T *)x, gamma, beta, (const float *)mean, (const float *)rstd, (T *)y, HW, C,
              Cg, G, silu);
    return (int)cudaGetLastError();
}

template <typename T>
static int gn_backward_launch(int N, int64_t HW, int C, int G, int silu, const void *x,
                              const float *gamma, const float *beta, const float *mean,
                              const float *rstd, const void *dy, void *dx, float *dgamma,
                              float *dbeta, void *ws, cudaStream_t stream)
{
    const int Cg = C / G, chunks = gn_chunks(HW);
    float *part = (float *)ws;
    float *chan = part + (size_t)2 * N * chunks * C;
    float *grp = chan + (size_t)2 * N * C;
    DL_LAUNCH(groupnorm_backward_reduce_kernel<T>,
              dim3((unsigned)chunks, (unsigned)((C + GN_TX - 1) / GN_TX), (unsigned)N),
              dim3(GN_TX, GN_TY), 0, stream, (const T *)x, (const T *)dy, gamma, beta, mean,
              rstd, part, HW, gn_rows(HW), C, Cg, G, silu);
    int err = (int)cudaGetLastError();
    if (err) return err;
    DL_LAUNCH(groupnorm_backward_channel_kernel, dim3((unsigned)((C + GN_TX - 1) / GN_TX),
              (unsigned)N), dim3(GN_TX, GN_TY), 0, stream, (const float *)part, chan, C, chunks);
    if ((err = (int)cudaGetLastError())) return err;
    if (dgamma || dbeta) {
        DL_LAUNCH(groupnorm_backward_param_kernel, dim3((unsigned)((C + 127) / 128)), dim3(128), 0,
                  stream, (const float *)chan, dgamma, dbeta, N, C);
        if ((err = (int)cudaGetLastError())) return err;
    }
    if (!dx) return 0;
    DL_LAUNCH(groupnorm_backward_group_kernel, dim3((unsigned)(N * G)), dim3(32), 0, stream,
              (const float *)chan, gamma, grp, HW, C, Cg, G);
    if ((err = (int)cudaGetLastError())) return err;
    DL_LAUNCH(groupnorm_backward_kernel<T>, gn_apply_grid(N, HW, C), dim3(GN_TX, GN_TY), 0, stream,
              (const T *)x, (const T *)dy, gamma, beta, mean, rstd, (const float *)grp, (T *)dx,
              HW, C, Cg, G, silu);
    return (int)cudaGetLastError();
}

extern "C" int dl_cuda_groupnorm_forward(dl_dtype dt, int N, int64_t HW, int C, int G, float eps,
                                         int silu, const void *x, const float *gamma,
                                         const float *beta, void *y, float *mean, float *rstd,
                                         void *ws, cudaStream_t stream)
{
    if (N <= 0 || HW <= 0 || G <= 0 || C <= 0 || C % G != 0 || !ws) return -1;
    if (dt == DL_F32)
        return gn_forward_launch<float>(N, HW, C, G, eps, silu, x, gamma, beta, y, mean, rstd,
                                        ws, stream);
    if (dt == DL_BF16)
        return gn_forward_launch<__nv_bfloat16>(N, HW, C, G, eps, silu, x, gamma, beta, y, mean,
                                                rstd, ws, stream);
    return -1;
}

extern "C" int dl_cuda_groupnorm_backward(dl_dtype dt, int N, int64_t HW, int C, int G, int silu,
                                          const void *x, const float *gamma, const float *beta,
                                          const float *mean, const float *rstd, const void *dy,
                                          void *dx, float *dgamma, float *dbeta, void *ws,
                                          cudaStream_t stream)
{
    if (N <= 0 || HW <= 0 || G <= 0 || C <= 0 || C % G != 0 || !ws) return -1;
    if (dt == DL_F32)
        return gn_backward_launch<float>(N, HW, C, G, silu, x, gamma, beta, mean, rstd, dy, dx,
                                         dgamma, dbeta, ws, stream);
    if (dt == DL_BF16)
        return gn_backward_launch<__nv_bfloat16>(N, HW, C, G, silu, x, gamma, beta, mean, rstd,
                                                 dy, dx, dgamma, dbeta, ws, stream);
    return -1;
}
