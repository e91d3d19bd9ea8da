/* lora.cu - LoRA linear / 1x1-conv forward and backward, and merge/unmerge, portable CUDA.
 *
 * y = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ on tokens x [M, in] (channels-last: a 1x1 conv is the same op
 * with M = N·H·W). The base GEMMs (x·Wᵀ and dy·W) go to cuBLAS (cublasGemmEx, fp32 compute) on a
 * real GPU when the caller passes a handle; without one, and always under the SIMT emulator
 * (where cuBLAS does not exist), they run on lora_gemm_kernel below, so the emulated tests
 * exercise the very launch sequence used on the GPU. The low-rank products are ours, all on
 * lora_gemm_kernel, a 64×64×16 shared-memory tiled GEMM with fp32 accumulation that reads
 * float or bf16 operands in either orientation and fuses alpha, beta·C and a bias into its
 * epilogue:
 *   forward : u = x·Aᵀ [M, r]; y = s·u·Bᵀ + bias; y += x·Wᵀ (base GEMM with beta = 1, so the
 *             low-rank term rides in the base GEMM's epilogue: y is written once, read once)
 *   backward: u = x·Aᵀ, v = dy·B [M, r]; dB = s·dyᵀ·u, dA = s·vᵀ·x (split-K over M when the
 *             outputs are too small to fill the GPU); dx = s·v·A; dx += dy·W (base, beta = 1)
 *   merge   : W ± s·B·A in place (beta = 1 epilogue, fp32 math, one rounding). */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"

#if defined(__CUDACC__)
#include <cublas_v2.h>
#endif

#define LORA_BM 64
#define LORA_BN 64
#define LORA_BK 16
#define LORA_MAX_RANK 128

static __device__ inline float lora_ld(const float *p) { return *p; }
static __device__ inline float lora_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
static __device__ inline void lora_st(float *p, float v) { *p = v; }
static __device__ inline void lora_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }

// ---- kernel ------------------------------------------------------------------------------------

// C[M, N] = alpha·op(A)·op(B) + beta·C + bias[n], row-major. op(A) is [M, K]: A stored [M, K]
// (lda) or, with transA, [K, M]. op(B) is [K, N]: B stored [K, N] (ldb) or, with transB, [N, K].
// beta == 0 never reads C (NaN-safe); bias may be NULL. grid (ceil(N/64), ceil(M/64), splits),
// block 256; each thread owns a 4×4 micro-tile strided by 16 rows/columns. Split-K: with
// partial != NULL, block z sums k in [z·ksplit, (z+1)·ksplit) and stores its raw sums in
// partial[z, M, N] (lora_gemm_splitk_kernel finishes); otherwise ksplit >= K and z = 0.
template <typename TA, typename TB, typename TC>
__global__ void lora_gemm_kernel(int transA, int transB, int64_t M, int64_t N, int64_t K,
                                 float alpha, const TA *A, int64_t lda, const TB *B, int64_t ldb,
                                 float beta, TC *C, int64_t ldc, const TC *bias, int64_t ksplit,
                                 float *partial)
{
    __shared__ float As[LORA_BK][LORA_BM + 1]; // As[k][m]
    __shared__ float Bs[LORA_BK][LORA_BN + 1]; // Bs[k][n]
    const int tid = (int)threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int64_t m0 = (int64_t)blockIdx.y * LORA_BM, n0 = (int64_t)blockIdx.x * LORA_BN;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    const int64_t kbeg = (int64_t)blockIdx.z * ksplit;
    const int64_t kend = kbeg + ksplit < K ? kbeg + ksplit : K;
    for (int64_t k0 = kbeg; k0 < kend; k0 += LORA_BK) {
        for (int idx = tid; idx < LORA_BM * LORA_BK; idx += 256) {
            // consecutive threads walk the stored row, whichever way op(A) is read
            int mm, kk;
            if (transA) { kk = idx / LORA_BM; mm = idx - kk * LORA_BM; }
            else { mm = idx / LORA_BK; kk = idx - mm * LORA_BK; }
            int64_t gm = m0 + mm, gk = k0 + kk;
            float a = 0.0f;
            if (gm < M && gk < kend) a = lora_ld(transA ? A + gk * lda + gm : A + gm * lda + gk);
            As[kk][mm] = a;
        }
        for (int idx = tid; idx < LORA_BN * LORA_BK; idx += 256) {
            int nn, kk;
            if (transB) { nn = idx / LORA_BK; kk = idx - nn * LORA_BK; }
            else { kk = idx / LORA_BN; nn = idx - kk * LORA_BN; }
            int64_t gn = n0 + nn, gk = k0 + kk;
            float b = 0.0f;
            if (gn < N && gk < kend) b = lora_ld(transB ? B + gn * ldb + gk : B + gk * ldb + gn);
            Bs[kk][nn] = b;
        }
        __syncthreads();
        for (int kk = 0; kk < LORA_BK; kk++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; i++) {
        int64_t gm = m0 + ty + 16 * i;
        if (gm >= M) continue;
        for (int j = 0; j < 4; j++) {
            int64_t gn = n0 + tx + 16 * j;
            if (gn >= N) continue;
            if (partial) {
                partial[((int64_t)blockIdx.z * M + gm) * N + gn] = acc[i][j];
                continue;
            }
            TC *c = C + gm * ldc + gn;
            float val = alpha * acc[i][j];
            if (beta != 0.0f) val += beta * lora_ld(c);
            if (bias) val += lora_ld(bias + gn);
            lora_st(c, val);
        }
    }
}

// C[m, n] = alpha·Σ_z partial[z, m, n] + beta·C + bias[n], the sums in a fixed order
// (deterministic). Grid-stride over M·N, block 256.
template <typename TC>
__global__ void lora_gemm_splitk_kernel(const float *partial, int splits, int64_t M, int64_t N,
                                        float alpha, float beta, TC *C, int64_t ldc,
                                        const TC *bias)
{
    const int64_t total = M * N, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        float acc = 0.0f;
        for (int z = 0; z < splits; z++) acc += partial[(int64_t)z * total + e];
        const int64_t m = e / N, n = e - m * N;
        TC *c = C + m * ldc + n;
        float val = alpha * acc;
        if (beta != 0.0f) val += beta * lora_ld(c);
        if (bias) val += lora_ld(bias + n);
        lora_st(c, val);
    }
}

// ---- launchers ---------------------------------------------------------------------------------

#define LORA_SPLITK_TILES 256   // split-K when a GEMM has fewer output tiles than this ...
#define LORA_SPLITK_MIN_K 1024  // ... and a reduction at least this long

// Number of K splits for an [M, N] output with reduction K (1: no split).
static int lora_splits(int64_t M, int64_t N, int64_t K)
{
    int64_t tiles = ((M + LORA_BM - 1) / LORA_BM) * ((N + LORA_BN - 1) / LORA_BN);
    if (tiles >= LORA_SPLITK_TILES / 2 || K < LORA_SPLITK_MIN_K) return 1;
    int64_t s = LORA_SPLITK_TILES / tiles, smax = K / 256; // at least 256 of K per split
    s = s < smax ? s : smax;
    return (int)(s > 1 ? s : 1);
}

// Floats of split-K scratch for an [M, N] output with reduction K.
static size_t lora_splitk_floats(int64_t M, int64_t N, int64_t K)
{
    int s = lora_splits(M, N, K);
    return s > 1 ? (size_t)s * M * N : 0;
}

template <typename TA, typename TB, typename TC>
static int lora_gemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                     const void *A, int64_t lda, const void *B, int64_t ldb, float beta, void *C,
                     int64_t ldc, const void *bias, cudaStream_t stream, float *splitk_ws = NULL)
{
    const int splits = splitk_ws ? lora_splits(M, N, K) : 1;
    int64_t ksplit = K;
    if (splits > 1) ksplit = ((K + splits - 1) / splits + LORA_BK - 1) / LORA_BK * LORA_BK;
    const int nz = (int)((K + ksplit - 1) / ksplit);
    dim3 grid((unsigned)((N + LORA_BN - 1) / LORA_BN), (unsigned)((M + LORA_BM - 1) / LORA_BM),
              (unsigned)(nz > 0 ? nz : 1));
    float *partial = nz > 1 ? splitk_ws : NULL;
    DL_LAUNCH((lora_gemm_kernel<TA, TB, TC>), grid, dim3(256), 0, stream, transA, transB, M, N,
              K, alpha, (const TA *)A, lda, (const TB *)B, ldb, beta, (TC *)C, ldc,
              (const TC *)bias, ksplit, partial);
    int err = (int)cudaGetLastError();
    if (err || !partial) return err;
    int64_t blocks = (M * N + 255) / 256;
    DL_LAUNCH((lora_gemm_splitk_kernel<TC>), dim3((unsigned)(blocks < 4096 ? blocks : 4096)),
              dim3(256), 0, stream, (const float *)partial, nz, M, N, alpha, beta, (TC *)C, ldc,
              (const TC *)bias);
    return (int)cudaGetLastError();
}

// Base GEMM of storage type T, row-major: C[M, N] = op(A)·op(B) + beta·C with op(B) = Wᵀ
// (transB, forward) or W (backward). cuBLAS when a handle is given (nvcc builds only).
template <typename T>
static int lora_base_gemm(struct cublasContext *blas, int transB, int64_t M, int64_t N,
                          int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb,
                          float beta, void *C, int64_t ldc, cudaStream_t stream)
{
#if defined(__CUDACC__)
    if (blas) {
        // row-major C = A·op(B)  <=>  column-major Cᵀ = op(B)ᵀ·Aᵀ
        cudaDataType_t ty = sizeof(T) == 4 ? CUDA_R_32F : CUDA_R_16BF;
        const float one = 1.0f;
        if (cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) return -1;
        cublasStatus_t st = cublasGemmEx(
            blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one,
            B, ty, (int)ldb, A, ty, (int)lda, &beta, C, ty, (int)ldc, CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT);
        return st == CUBLAS_STATUS_SUCCESS ? 0 : -1;
    }
#else
    (void)blas;
#endif
    return lora_gemm<T, T, T>(0, transB, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, NULL,
                              stream);
}

template <typename T>
static int lora_forward_launch(struct cublasContext *blas, int64_t M, int in, int out, int rank,
                               float s, const void *x, const void *W, const void *bias,
                               const float *A, const float *B, float *u, void *y,
                               cudaStream_t stream)
{
    int err;
    // u = x·Aᵀ   [M, rank]
    if ((err = lora_gemm<T, float, float>(0, 1, M, rank, in, 1.0f, x, in, A, in, 0.0f, u, rank,
                                          NULL, stream)))
        return err;
    // y = s·u·Bᵀ + bias   [M, out] (written, never read)
    if ((err = lora_gemm<float, float, T>(0, 1, M, out, rank, s, u, rank, B, rank, 0.0f, y, out,
                                          bias, stream)))
        return err;
    // y += x·Wᵀ: the base GEMM accumulates (beta = 1), so y makes one round trip, in its epilogue
    return lora_base_gemm<T>(blas, 1, M, out, in, x, in, W, in, 1.0f, y, out, stream);
}

template <typename T>
static int lora_backward_launch(struct cublasContext *blas, int64_t M, int in, int out, int rank,
                                float s, const void *x, const void *W, const float *A,
                                const float *B, const void *dy, void *dx, float *dA, float *dB,
                                int accumulate, float *ws, cudaStream_t stream)
{
    int err;
    float *u = ws, *v = ws + M * rank; // [M, rank] each
    float *part = ws + 2 * M * rank;   // split-K scratch of the two reductions over M
    const float beta = accumulate ? 1.0f : 0.0f;
    if (dB) {
        // u = x·Aᵀ; dB = s·dyᵀ·u   [out, rank]
        if ((err = lora_gemm<T, float, float>(0, 1, M, rank, in, 1.0f, x, in, A, in, 0.0f, u,
                                              rank, NULL, stream)))
            return err;
        if ((err = lora_gemm<T, float, float>(1, 0, out, rank, M, s, dy, out, u, rank, beta, dB,
                                              rank, NULL, stream, part)))
            return err;
    }
    if (!dA && !dx) return 0;
    // v = dy·B   [M, rank]
    if ((err = lora_gemm<T, float, float>(0, 0, M, rank, out, 1.0f, dy, out, B, rank, 0.0f, v,
                                          rank, NULL, stream)))
        return err;
    // dA = s·vᵀ·x   [rank, in]
    if (dA && (err = lora_gemm<float, T, float>(1, 0, rank, in, M, s, v, rank, x, in, beta, dA,
                                                in, NULL, stream, part)))
        return err;
    if (!dx) return 0;
    // dx = s·v·A, then dx += dy·W in the base GEMM's epilogue
    if ((err = lora_gemm<float, float, T>(0, 0, M, in, rank, s, v, rank, A, in, 0.0f, dx, in, NULL,
                                          stream)))
        return err;
    return lora_base_gemm<T>(blas, 0, M, in, out, dy, out, W, in, 1.0f, dx, in, stream);
}

extern "C" size_t dl_cuda_lora_workspace_size(int64_t M, int in, int out, int rank)
{
    size_t a = lora_splitk_floats(out, rank, M), b = lora_splitk_floats(rank, in, M);
    return sizeof(float) * ((size_t)2 * M * rank + (a > b ? a : b));
}

static int lora_args_ok(dl_dtype dt, int64_t M, int in, int out, int rank)
{
    // grid.y of lora_gemm_kernel is ceil(rows / 64) <= 65535 for every GEMM launched
    const int64_t max_rows = (int64_t)65535 * LORA_BM;
    return (dt == DL_F32 || dt == DL_BF16) && M > 0 && in > 0 && out > 0 && rank >= 1 &&
           rank <= LORA_MAX_RANK && M <= max_rows && out <= max_rows;
}

extern "C" int dl_cuda_lora_forward(dl_dtype dt, struct cublasContext *blas, int64_t M, int in,
                                    int out, int rank, float s, const void *x, const void *W,
                                    const void *bias, const float *A, const float *B, float *u,
                                    void *y, cudaStream_t stream)
{
    if (!lora_args_ok(dt, M, in, out, rank) || !u) return -1;
    if (dt == DL_F32)
        return lora_forward_launch<float>(blas, M, in, out, rank, s, x, W, bias, A, B, u, y,
                                          stream);
    return lora_forward_launch<__nv_bfloat16>(blas, M, in, out, rank, s, x, W, bias, A, B, u, y,
                                              stream);
}

extern "C" int dl_cuda_lora_backward(dl_dtype dt, struct cublasContext *blas, int64_t M, int in,
                                     int out, int rank, float s, const void *x, const void *W,
                                     const float *A, const float *B, const void *dy, void *dx,
                                     float *dA, float *dB, int accumulate, float *ws,
                                     cudaStream_t stream)
{
    if (!lora_args_ok(dt, M, in, out, rank) || !ws) return -1;
    if (dt == DL_F32)
        return lora_backward_launch<float>(blas, M, in, out, rank, s, x, W, A, B, dy, dx, dA, dB,
                                           accumulate, ws, stream);
    return lora_backward_launch<__nv_bfloat16>(blas, M, in, out, rank, s, x, W, A, B, dy, dx, dA,
                                               dB, accumulate, ws, stream);
}

extern "C" int dl_cuda_lora_conv1x1_forward(dl_dtype dt, struct cublasContext *blas, int N, int H,
                                            int W, int cin, int cout, int rank, float s,
                                            const void *x, const void *w, const void *bias,
                                            const float *A, const float *B, float *u, void *y,
                                            cudaStream_t stream)
{
    return dl_cuda_lora_forward(dt, blas, (int64_t)N * H * W, cin, cout, rank, s, x, w, bias, A,
                                B, u, y, stream);
}

extern "C" int dl_cuda_lora_conv1x1_backward(dl_dtype dt, struct cublasContext *blas, int N,
                                             int H, int W, int cin, int cout, int rank, float s,
                                             const void *x, const void *w, const float *A,
                                             const float *B, const void *dy, void *dx, float *dA,
                                             float *dB, int accumulate, float *ws,
                                             cudaStream_t stream)
{
    return dl_cuda_lora_backward(dt, blas, (int64_t)N * H * W, cin, cout, rank, s, x, w, A, B,
                                 dy, dx, dA, dB, accumulate, ws, stream);
}

extern "C" int dl_cuda_lora_merge(dl_dtype dt, int out, int in, int rank, float s, void *W,
                                  const float *A, const float *B, cudaStream_t stream)
{
    if (!lora_args_ok(dt, 1, in, out, rank)) return -1;
    // W[out, in] += s·B[out, rank]·A[rank, in]
    if (dt == DL_F32)
        return lora_gemm<float, float, float>(0, 0, out, in, rank, s, B, rank, A, in, 1.0f, W, in,
                                              NULL, stream);
    return lora_gemm<float, float, __nv_bfloat16>(0, 0, out, in, rank, s, B, rank, A, in, 1.0f, W,
                                                  in, NULL, stream);
}

extern "C" int dl_cuda_lora_unmerge(dl_dtype dt, int out, int in, int rank, float s, void *W,
                                    const float *A, const float *B, cudaStream_t stream)
{
    return dl_cuda_lora_merge(dt, out, in, rank, -s, W, A, B, stream);
}
