/* bench_kernels.cu - GPU benchmark of danlu's hand-written kernels beside the library baseline
 * and the card's limit: attention TFLOP/s (forward 4·N·H·Tq·Tk·d, backward 2.5× that) beside a
 * cuBLAS GEMM + softmax + GEMM forward; group-norm GB/s (minimum traffic: forward x + y,
 * backward x + dy + dx) beside the measured device-to-device copy bandwidth; LoRA forward +
 * backward time beside the base cuBLAS GEMMs alone. CUDA events, warm-up, median of many runs,
 * inputs rotated over several buffer sets so they do not sit in L2. Calls the production
 * launchers of dl_kernels.h (attention also in its tensor-core variants, bf16: WMMA, and the
 * mma.sync forward and backward on sm_80+, the backward with atomic dQ). Prints a table; `--json FILE` also writes the figures as JSON;
 * `--quick` runs one shape per family. cuDNN SDPA is not measured yet. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "dl_kernels.h"

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));  \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)
#define CKL(x)                                                                                    \
    do {                                                                                          \
        int r_ = (x);                                                                             \
        if (r_ != 0) {                                                                            \
            fprintf(stderr, "%s:%d: %s returned %d\n", __FILE__, __LINE__, #x, r_);               \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

static cudaStream_t g_stream;
static std::string g_json;

static const char *dtn(dl_dtype t) { return t == DL_BF16 ? "bf16" : "f32"; }
static size_t esz(dl_dtype t) { return t == DL_BF16 ? 2 : 4; }

// Median time in ms of fn(i) over adaptive iterations (i rotates buffer sets), after warm-up.
static double time_ms(const std::function<void(int)> &fn)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) fn(i);
    CK(cudaEventRecord(a, g_stream));
    fn(3);
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float one = 0.0f;
    CK(cudaEventElapsedTime(&one, a, b));
    int iters = (int)std::min(50.0, std::max(5.0, 300.0 / std::max(one, 1e-3f)));
    std::vector<float> t(iters);
    for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(a, g_stream));
        fn(4 + i);
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&t[i], a, b));
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return t[iters / 2];
}

// Number of buffer sets so that the rotated working set exceeds ~256 MiB (L2 is 50-60 MiB).
static int rotations(size_t set_bytes)
{
    size_t r = (256u << 20) / (set_bytes ? set_bytes : 1) + 1;
    return (int)std::min<size_t>(std::max<size_t>(r, 1), 8);
}

static void *dalloc_rand(size_t bytes, unsigned seed)
{
    void *d;
    CK(cudaMalloc(&d, bytes));
    // every 16-bit half-word is a bf16 of magnitude ~1/128 with a random sign and mantissa; read
    // as fp32, pairs of them are also small finite values: valid inputs for either dtype
    std::vector<unsigned char> h(bytes);
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i + 1 < bytes; i += 2) {
        s = s * 1664525u + 1013904223u;
        unsigned short v = (unsigned short)(0x3c00 | ((s >> 16) & 0x7f)) | (unsigned short)((s >> 8) & 0x8000);
        memcpy(&h[i], &v, 2);
    }
    CK(cudaMemcpy(d, h.data(), bytes, cudaMemcpyHostToDevice));
    return d;
}

static void json_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void json_add(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!g_json.empty()) g_json += ",\n";
    g_json += "  ";
    g_json += buf;
}

// ---- attention ---------------------------------------------------------------------------------

template <typename T>
__global__ void bench_softmax_kernel(T *s, int cols, float scale)
{
    // one block per row, fp32 math, in place
    T *row = s + (size_t)blockIdx.x * cols;
    __shared__ float red[32];
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, (float)row[c] * scale);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += expf((float)row[c] * scale - m);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) sum += red[w];
    float inv = 1.0f / sum;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        row[c] = (T)(expf((float)row[c] * scale - m) * inv);
}

static void bench_attention(cublasHandle_t blas, int N, int H, int Tq, int Tk, int d, dl_dtype dt)
{
    const size_t es = esz(dt), nq = (size_t)N * Tq * H * d, nk = (size_t)N * Tk * H * d;
    const size_t nl = (size_t)N * H * Tq;
    const size_t set = es * (3 * nq + 2 * nq + 4 * nk) + 8 * nl;
    const int R = rotations(set);
    struct Set { void *q, *k, *v, *o, *dout, *dq, *dk, *dv; float *lse, *delta; };
    std::vector<Set> S(R);
    for (int r = 0; r < R; r++) {
        S[r].q = dalloc_rand(nq * es, 1 + r);
        S[r].k = dalloc_rand(nk * es, 100 + r);
        S[r].v = dalloc_rand(nk * es, 200 + r);
        S[r].dout = dalloc_rand(nq * es, 300 + r);
        CK(cudaMalloc(&S[r].o, nq * es));
        CK(cudaMalloc(&S[r].dq, nq * es));
        CK(cudaMalloc(&S[r].dk, nk * es));
        CK(cudaMalloc(&S[r].dv, nk * es));
        CK(cudaMalloc(&S[r].lse, nl * 4));
        CK(cudaMalloc(&S[r].delta, nl * 4));
    }
    const float scale = 1.0f / sqrtf((float)d);
    const int64_t ld = (int64_t)H * d;
    auto fwd = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_attention_forward(dt, N, H, Tq, Tk, d, scale, s.q, ld, s.k, ld, s.v, ld, s.o,
                                      ld, s.lse, g_stream));
    };
    auto bwd = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_attention_backward(dt, N, H, Tq, Tk, d, scale, s.q, ld, s.k, ld, s.v, ld, s.o,
                                       s.dout, ld, s.lse, s.delta, s.dq, s.dk, s.dv, g_stream));
    };
    auto fwd_tc = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_attention_forward_tc(dt, N, H, Tq, Tk, d, scale, s.q, ld, s.k, ld, s.v, ld,
                                         s.o, ld, s.lse, g_stream));
    };
    auto bwd_tc = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_attention_backward_tc(dt, N, H, Tq, Tk, d, scale, s.q, ld, s.k, ld, s.v, ld,
                                          s.o, s.dout, ld, s.lse, s.delta, s.dq, s.dk, s.dv,
                                          g_stream));
    };
    auto fwd_mma = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_attention_forward_mma(dt, N, H, Tq, Tk, d, scale, s.q, ld, s.k, ld, s.v, ld,
                                          s.o, ld, s.lse, g_stream));
    };
    int dev = 0, major = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    void *ws_mma = NULL;
    CK(cudaMalloc(&ws_mma, dl_cuda_attention_backward_mma_workspace_size(N, H, Tq, Tk, d) + 16));
    auto bwd_mma = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_attention_backward_mma(dt, N, H, Tq, Tk, d, scale, s.q, ld, s.k, ld, s.v, ld, s.o,
                                           s.dout, ld, s.lse, s.delta, s.dq, s.dk, s.dv, 0, ws_mma,
                                           g_stream));
    };
    double tmma = dt == DL_BF16 && major >= 8 ? time_ms(fwd_mma) : 0.0;
    double tbmma = dt == DL_BF16 && major >= 8 ? time_ms(bwd_mma) : 0.0;
    CK(cudaFree(ws_mma));
    double ttc = dt == DL_BF16 ? time_ms(fwd_tc) : 0.0;
    double tbtc = dt == DL_BF16 ? time_ms(bwd_tc) : 0.0;
    for (int r = 0; r < R; r++) fwd(r);
    double tf = time_ms(fwd), tb = time_ms(bwd);

    // baseline: per sample, S = Q·Kᵀ (batched over heads), softmax, O = P·V, on cuBLAS
    void *sbuf;
    CK(cudaMalloc(&sbuf, (size_t)H * Tq * Tk * es));
    cudaDataType_t ty = dt == DL_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    auto base = [&](int i) {
        Set &s = S[i % R];
        const float one = 1.0f, zero = 0.0f;
        for (int n = 0; n < N; n++) {
            const char *qn = (const char *)s.q + (size_t)n * Tq * ld * es;
            const char *kn = (const char *)s.k + (size_t)n * Tk * ld * es;
            const char *vn = (const char *)s.v + (size_t)n * Tk * ld * es;
            char *on = (char *)s.o + (size_t)n * Tq * ld * es;
            cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, Tk, Tq, d, &one, kn, ty,
                                       (int)ld, d, qn, ty, (int)ld, d, &zero, sbuf, ty, Tk,
                                       (long long)Tq * Tk, H, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
            if (dt == DL_BF16)
                bench_softmax_kernel<<<H * Tq, 256, 0, g_stream>>>((__nv_bfloat16 *)sbuf, Tk, scale);
            else
                bench_softmax_kernel<<<H * Tq, 256, 0, g_stream>>>((float *)sbuf, Tk, scale);
            cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, Tq, Tk, &one, vn, ty,
                                       (int)ld, d, sbuf, ty, Tk, (long long)Tq * Tk, &zero, on,
                                       ty, (int)ld, d, H, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
        }
    };
    double tbase = time_ms(base);
    CK(cudaGetLastError());
    CK(cudaFree(sbuf));

    const double flop = 4.0 * N * H * (double)Tq * Tk * d;
    const double tff = flop / tf * 1e-9, tfb = 2.5 * flop / tb * 1e-9, tfbase = flop / tbase * 1e-9;
    const double tftc = ttc > 0 ? flop / ttc * 1e-9 : 0.0;
    const double tfbtc = tbtc > 0 ? 2.5 * flop / tbtc * 1e-9 : 0.0;
    const double tfmma = tmma > 0 ? flop / tmma * 1e-9 : 0.0;
    const double tfbmma = tbmma > 0 ? 2.5 * flop / tbmma * 1e-9 : 0.0;
    const double tfall = 3.5 * flop / (tf + tb) * 1e-9;
    const double tfalltc = ttc > 0 ? 3.5 * flop / (ttc + tbtc) * 1e-9 : 0.0;
    printf("attention %-4s N%d H%-2d %5dx%-5d d%-3d | portable fwd %7.2f bwd %7.2f fwd+bwd %7.2f | "
           "tc fwd %7.2f bwd %7.2f fwd+bwd %7.2f | mma fwd %7.2f bwd %7.2f | cuBLAS+softmax fwd %7.2f "
           "TFLOP/s\n",
           dtn(dt), N, H, Tq, Tk, d, tff, tfb, tfall, tftc, tfbtc, tfalltc, tfmma, tfbmma, tfbase);
    json_add("{\"kernel\": \"attention\", \"dtype\": \"%s\", \"N\": %d, \"H\": %d, \"Tq\": %d, "
             "\"Tk\": %d, \"d\": %d, \"fwd_ms\": %.4f, \"fwd_tflops\": %.3f, \"bwd_ms\": %.4f, "
             "\"bwd_tflops\": %.3f, \"fwd_tc_ms\": %.4f, \"fwd_tc_tflops\": %.3f, "
             "\"bwd_tc_ms\": %.4f, \"bwd_tc_tflops\": %.3f, \"fwd_bwd_tflops\": %.3f, "
             "\"fwd_bwd_tc_tflops\": %.3f, \"fwd_mma_ms\": %.4f, \"fwd_mma_tflops\": %.3f, "
             "\"bwd_mma_ms\": %.4f, \"bwd_mma_tflops\": %.3f, "
             "\"baseline_cublas_softmax_fwd_ms\": %.4f, \"baseline_fwd_tflops\": %.3f}",
             dtn(dt), N, H, Tq, Tk, d, tf, tff, tb, tfb, ttc, tftc, tbtc, tfbtc, tfall, tfalltc,
             tmma, tfmma, tbmma, tfbmma, tbase, tfbase);
    for (auto &s : S) {
        void *p[] = {s.q, s.k, s.v, s.o, s.dout, s.dq, s.dk, s.dv, s.lse, s.delta};
        for (void *x : p) CK(cudaFree(x));
    }
}

// ---- group-norm --------------------------------------------------------------------------------

static double g_copy_gbs = 0.0;

static void bench_copy(void)
{
    const size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 0, bytes));
    double t = time_ms([&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_stream)); });
    g_copy_gbs = 2.0 * bytes / (t * 1e-3) * 1e-9;
    printf("device-to-device copy: %.1f GB/s (read + write, 1 GiB)\n", g_copy_gbs);
    json_add("{\"kernel\": \"memcpy_d2d\", \"gbs\": %.2f}", g_copy_gbs);
    CK(cudaFree(a));
    CK(cudaFree(b));
}

static void bench_groupnorm(int N, int HW, int C, int G, int silu, dl_dtype dt)
{
    const size_t es = esz(dt), nx = (size_t)N * HW * C;
    const size_t ws_bytes = dl_cuda_groupnorm_workspace_size(N, HW, C, G);
    const int R = rotations(3 * nx * es);
    struct Set { void *x, *y, *dy, *dx; };
    std::vector<Set> S(R);
    for (int r = 0; r < R; r++) {
        S[r].x = dalloc_rand(nx * es, 400 + r);
        S[r].dy = dalloc_rand(nx * es, 500 + r);
        CK(cudaMalloc(&S[r].y, nx * es));
        CK(cudaMalloc(&S[r].dx, nx * es));
    }
    float *gamma, *beta, *mean, *rstd, *dg, *db;
    void *ws;
    CK(cudaMalloc(&gamma, C * 4));
    CK(cudaMalloc(&beta, C * 4));
    CK(cudaMemset(gamma, 0, C * 4));
    CK(cudaMemset(beta, 0, C * 4));
    CK(cudaMalloc(&mean, (size_t)N * G * 4));
    CK(cudaMalloc(&rstd, (size_t)N * G * 4));
    CK(cudaMalloc(&dg, C * 4));
    CK(cudaMalloc(&db, C * 4));
    CK(cudaMalloc(&ws, ws_bytes));
    auto fwd = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_groupnorm_forward(dt, N, HW, C, G, 1e-5f, silu, s.x, gamma, beta, s.y, mean,
                                      rstd, ws, g_stream));
    };
    auto bwd = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_groupnorm_backward(dt, N, HW, C, G, silu, s.x, gamma, beta, mean, rstd, s.dy,
                                       s.dx, dg, db, ws, g_stream));
    };
    double tf = time_ms(fwd), tb = time_ms(bwd);
    const double gf = 2.0 * nx * es / (tf * 1e-3) * 1e-9, gb = 3.0 * nx * es / (tb * 1e-3) * 1e-9;
    printf("groupnorm %-4s %dx%-6dx%-4d g%d%s | fwd %7.3f ms %7.1f GB/s (%4.0f%% of copy) | bwd "
           "%7.3f ms %7.1f GB/s (%4.0f%% of copy)\n",
           dtn(dt), N, HW, C, G, silu ? " silu" : "     ", tf, gf, 100 * gf / g_copy_gbs, tb, gb,
           100 * gb / g_copy_gbs);
    json_add("{\"kernel\": \"groupnorm\", \"dtype\": \"%s\", \"N\": %d, \"HW\": %d, \"C\": %d, "
             "\"G\": %d, \"silu\": %d, \"fwd_ms\": %.4f, \"fwd_gbs\": %.2f, \"bwd_ms\": %.4f, "
             "\"bwd_gbs\": %.2f, \"copy_gbs\": %.2f}",
             dtn(dt), N, HW, C, G, silu, tf, gf, tb, gb, g_copy_gbs);
    for (auto &s : S) {
        void *p[] = {s.x, s.y, s.dy, s.dx};
        for (void *x : p) CK(cudaFree(x));
    }
    void *p[] = {gamma, beta, mean, rstd, dg, db, ws};
    for (void *x : p) CK(cudaFree(x));
}

// ---- LoRA --------------------------------------------------------------------------------------

static void bench_lora(cublasHandle_t blas, int M, int in, int out, int rank, dl_dtype dt)
{
    const size_t es = esz(dt);
    const size_t nx = (size_t)M * in, ny = (size_t)M * out, nw = (size_t)out * in;
    const int R = rotations((2 * nx + 2 * ny) * es);
    struct Set { void *x, *y, *dy, *dx; };
    std::vector<Set> S(R);
    for (int r = 0; r < R; r++) {
        S[r].x = dalloc_rand(nx * es, 600 + r);
        S[r].dy = dalloc_rand(ny * es, 700 + r);
        CK(cudaMalloc(&S[r].y, ny * es));
        CK(cudaMalloc(&S[r].dx, nx * es));
    }
    void *W = dalloc_rand(nw * es, 800);
    float *A = (float *)dalloc_rand((size_t)rank * in * 4, 801);
    float *B = (float *)dalloc_rand((size_t)out * rank * 4, 802);
    float *u, *ws, *dA, *dB;
    CK(cudaMalloc(&u, (size_t)M * rank * 4));
    CK(cudaMalloc(&ws, dl_cuda_lora_workspace_size(M, in, out, rank)));
    CK(cudaMalloc(&dA, (size_t)rank * in * 4));
    CK(cudaMalloc(&dB, (size_t)out * rank * 4));
    cudaDataType_t ty = dt == DL_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasSetStream(blas, g_stream);
    const float one = 1.0f, zero = 0.0f;
    auto base_f = [&](int i) {
        Set &s = S[i % R];
        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, out, M, in, &one, W, ty, in, s.x, ty, in,
                     &zero, s.y, ty, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    auto base_b = [&](int i) {
        Set &s = S[i % R];
        cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, in, M, out, &one, W, ty, in, s.dy, ty, out,
                     &zero, s.dx, ty, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    auto lora_f = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_lora_forward(dt, (struct cublasContext *)blas, M, in, out, rank, 1.0f, s.x, W,
                                 NULL, A, B, u, s.y, g_stream));
    };
    auto lora_b = [&](int i) {
        Set &s = S[i % R];
        CKL(dl_cuda_lora_backward(dt, (struct cublasContext *)blas, M, in, out, rank, 1.0f, s.x, W,
                                  A, B, s.dy, s.dx, dA, dB, 0, ws, g_stream));
    };
    double bf = time_ms(base_f), bb = time_ms(base_b), lf = time_ms(lora_f), lb = time_ms(lora_b);
    const double over = 100.0 * ((lf + lb) / (bf + bb) - 1.0);
    printf("lora %-4s M%-6d %4d->%-4d r%-3d | base fwd %7.3f ms bwd(dx) %7.3f ms | lora fwd %7.3f "
           "ms bwd %7.3f ms | overhead %+6.1f%%\n",
           dtn(dt), M, in, out, rank, bf, bb, lf, lb, over);
    json_add("{\"kernel\": \"lora\", \"dtype\": \"%s\", \"M\": %d, \"in\": %d, \"out\": %d, "
             "\"rank\": %d, \"base_fwd_ms\": %.4f, \"base_bwd_ms\": %.4f, \"lora_fwd_ms\": %.4f, "
             "\"lora_bwd_ms\": %.4f, \"overhead_pct\": %.2f}",
             dtn(dt), M, in, out, rank, bf, bb, lf, lb, over);
    for (auto &s : S) {
        void *p[] = {s.x, s.y, s.dy, s.dx};
        for (void *x : p) CK(cudaFree(x));
    }
    void *p[] = {W, A, B, u, ws, dA, dB};
    for (void *x : p) CK(cudaFree(x));
}

int main(int argc, char **argv)
{
    const char *json_path = NULL;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "usage: %s [--quick] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, sm_%d%d, %d SMs, %.0f GiB\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    CK(cudaStreamCreate(&g_stream));
    cublasHandle_t blas;
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) return 1;

    // SD1.5 at 512x512: 4096/1024/256/64 tokens, d 40/80/160/160, 8 heads, CFG batch 2;
    // cross-attention to 77 tokens; SD2/SDXL-style d64 at 4096 tokens (the 300 TFLOP/s target)
    bench_attention(blas, 2, 8, 4096, 4096, 40, DL_BF16);
    if (!quick) {
        bench_attention(blas, 2, 8, 4096, 77, 40, DL_BF16);
        bench_attention(blas, 2, 8, 1024, 1024, 80, DL_BF16);
        bench_attention(blas, 2, 8, 256, 256, 160, DL_BF16);
        bench_attention(blas, 1, 16, 4096, 4096, 64, DL_BF16);
        bench_attention(blas, 2, 8, 1024, 1024, 80, DL_F32);
    }
    bench_copy();
    bench_groupnorm(2, 4096, 320, 32, 1, DL_BF16);
    if (!quick) {
        bench_groupnorm(2, 4096, 320, 32, 1, DL_F32);
        bench_groupnorm(2, 1024, 640, 32, 0, DL_BF16);
        bench_groupnorm(2, 256, 1280, 32, 1, DL_BF16);
        bench_groupnorm(1, 65536, 256, 32, 1, DL_BF16); // VAE decoder at 256x256
    }
    bench_lora(blas, 8192, 320, 320, 16, DL_BF16);
    if (!quick) {
        bench_lora(blas, 2048, 640, 640, 16, DL_BF16);
        bench_lora(blas, 512, 1280, 1280, 16, DL_BF16);
        bench_lora(blas, 8192, 320, 1280, 16, DL_BF16); // feed-forward shape
        bench_lora(blas, 8192, 320, 320, 128, DL_BF16);
        bench_lora(blas, 8192, 320, 320, 16, DL_F32);
    }
    CK(cudaStreamSynchronize(g_stream));
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            fprintf(stderr, "%s: cannot write\n", json_path);
            return 1;
        }
        fprintf(f, "{\"device\": \"%s\", \"results\": [\n%s\n]}\n", prop.name, g_json.c_str());
        fclose(f);
    }
    cublasDestroy(blas);
    CK(cudaStreamDestroy(g_stream));
    return 0;
}
