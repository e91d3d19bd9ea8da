/* dl_kernels.h - C-linkage launchers of danlu's hand-written CUDA kernels (attention, group-norm,
 * LoRA), callable from C host code, from the CUDA backend and from the SIMT-emulator tests.
 *
 * Conventions shared by every launcher:
 *   - dt is the storage type of the activations and base weights: DL_F32 or DL_BF16. Math is fp32
 *     in every kernel; statistics, logsumexp, LoRA factors A/B and their gradients are fp32.
 *   - Pointers are device pointers (host memory under the emulator). Layouts are channels-last.
 *   - The stream is always an argument; launchers enqueue and return without synchronising.
 *   - Return 0 on success, -1 for an unsupported argument (dtype, head dim, rank, a shape that
 *     breaks the contract) without launching anything. A launch that fails aborts through
 *     DL_LAUNCH naming the kernel; errors raised while a kernel runs surface at the next
 *     synchronisation, as with any CUDA launch.
 *   - Backward outputs are overwritten unless a function says otherwise; a NULL gradient pointer
 *     skips that gradient. */
#ifndef DANLU_DL_KERNELS_H
#define DANLU_DL_KERNELS_H

#include "core/dtype.h"

#include <stddef.h>
#include <stdint.h>

#if defined(DL_SIMT)
#include "simt/simt.h" /* the emulator's runtime (common.cuh was included first) */
#elif defined(__CUDACC__) || defined(DANLU_HAVE_CUDA)
#include <cuda_runtime_api.h>
#else
/* CPU-only build without the emulator: no launcher is linked, the declarations stay valid. */
typedef struct CUstream_st *cudaStream_t;
#endif

#ifdef __cplusplus
extern "C" {
#endif

struct cublasContext; /* cublasHandle_t is `struct cublasContext *` */

/* ---- attention: softmax(scale · Q·Kᵀ)·V per (batch, head), no mask ----------------------------
 * Tokens are channels-last: q [N, Tq, ldq] with head h at columns [h·d, h·d + d), likewise
 * k [N, Tk, ldk], v [N, Tk, ldv], o [N, Tq, ldo] (ld = elements between consecutive tokens,
 * normally H·d; a larger ld lets Q/K/V be slices of a fused projection). Head dims 40, 64, 80,
 * 160. lse [N, H, Tq] fp32 receives the logsumexp of the scaled scores (natural log) for the
 * backward pass. */
int dl_cuda_attention_forward(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                              const void *q, int64_t ldq, const void *k, int64_t ldk,
                              const void *v, int64_t ldv, void *o, int64_t ldo, float *lse,
                              cudaStream_t stream);

/* Tensor-core (WMMA) variant of dl_cuda_attention_forward, same contract and outputs, bf16 only
 * (-1 otherwise). kernels/attention_tc.cu; under the emulator only its test builds it. */
int dl_cuda_attention_forward_tc(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                 const void *q, int64_t ldq, const void *k, int64_t ldk,
                                 const void *v, int64_t ldv, void *o, int64_t ldo, float *lse,
                                 cudaStream_t stream);

/* FlashAttention-2-style variant of dl_cuda_attention_forward for sm_80+ (mma.sync, ldmatrix,
 * cp.async; P and O kept in registers), same contract and outputs, bf16 only (-1 otherwise, and
 * when the device cannot give the kernel its shared memory). kernels/attention_mma.cu; under the
 * emulator only its test builds it. */
int dl_cuda_attention_forward_mma(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                  const void *q, int64_t ldq, const void *k, int64_t ldk,
                                  const void *v, int64_t ldv, void *o, int64_t ldo, float *lse,
                                  cudaStream_t stream);

/* FlashAttention-2-style backward for sm_80+ (one kernel of 5 GEMMs per step, dK/dV in
 * registers, dQ accumulated in fp32), the contract of dl_cuda_attention_backward plus: ws, scratch
 * of dl_cuda_attention_backward_mma_workspace_size() bytes (needed when dq is not NULL), and
 * deterministic != 0, which adds the dQ parts of the key blocks in a fixed order (same bits on
 * every run) instead of with atomics. bf16 only (-1 otherwise); d = 160 runs the portable
 * kernels (dl_cuda_attention_backward). kernels/attention_mma.cu. */
size_t dl_cuda_attention_backward_mma_workspace_size(int N, int H, int Tq, int Tk, int d);
int dl_cuda_attention_backward_mma(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                   const void *q, int64_t ldq, const void *k, int64_t ldk,
                                   const void *v, int64_t ldv, const void *o, const void *dout,
                                   int64_t ldo, const float *lse, float *delta, void *dq, void *dk,
                                   void *dv, int deterministic, void *ws, cudaStream_t stream);

/* Tensor-core variant of dl_cuda_attention_backward, same contract, bf16 only (-1 otherwise);
 * d = 160 runs the portable kernels. kernels/attention_tc.cu. */
int dl_cuda_attention_backward_tc(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                                  const void *q, int64_t ldq, const void *k, int64_t ldk,
                                  const void *v, int64_t ldv, const void *o, const void *dout,
                                  int64_t ldo, const float *lse, float *delta, void *dq, void *dk,
                                  void *dv, cudaStream_t stream);

/* Backward of dl_cuda_attention_forward: from o, lse (forward outputs) and dout (same layout as
 * o) writes dq (layout of q), dk (layout of k), dv (layout of v). delta [N, H, Tq] fp32 is
 * scratch (rowwise dout·o). Gradients are overwritten; a NULL one is skipped. No causal mask
 * (Stable Diffusion needs none). Same numbers as dl_cpu_attention_forward/backward. */
int dl_cuda_attention_backward(dl_dtype dt, int N, int H, int Tq, int Tk, int d, float scale,
                               const void *q, int64_t ldq, const void *k, int64_t ldk,
                               const void *v, int64_t ldv, const void *o, const void *dout,
                               int64_t ldo, const float *lse, float *delta, void *dq, void *dk,
                               void *dv, cudaStream_t stream);

/* ---- group-norm on channels-last x [N, HW, C], G groups of C/G consecutive channels ----------
 * y = act((x - mean_g) · rstd_g · gamma_c + beta_c), act = SiLU when silu != 0, identity
 * otherwise; rstd = 1/sqrt(var + eps), biased variance. gamma, beta [C] fp32 (NULL: 1 and 0).
 * Statistics are fp32 and saved: mean, rstd [N, G]. y may alias x. ws is scratch of
 * dl_cuda_groupnorm_workspace_size() bytes. Same contract as dl_cpu_groupnorm_forward. */
size_t dl_cuda_groupnorm_workspace_size(int N, int64_t HW, int C, int G);
int dl_cuda_groupnorm_forward(dl_dtype dt, int N, int64_t HW, int C, int G, float eps, int silu,
                              const void *x, const float *gamma, const float *beta, void *y,
                              float *mean, float *rstd, void *ws, cudaStream_t stream);
/* Backward from the saved mean/rstd: dx [N, HW, C] (storage dt), dgamma, dbeta [C] fp32, each
 * overwritten, NULL skipped. With silu the pre-activation is recomputed from x, gamma, beta. */
int dl_cuda_groupnorm_backward(dl_dtype dt, int N, int64_t HW, int C, int G, int silu,
                               const void *x, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, const void *dy, void *dx,
                               float *dgamma, float *dbeta, void *ws, cudaStream_t stream);

/* ---- LoRA linear: y = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ ----------------------------------------------
 * x [M, in], W [out, in], bias [out] (may be NULL), y [M, out] in storage dt; A [rank, in] and
 * B [out, rank] fp32 (master weights); rank 1..128. The base GEMM runs on cuBLAS when blas is a
 * cublasHandle_t (its stream is set to `stream`), else on danlu's portable tiled GEMM kernel (the
 * only path under the SIMT emulator). u [M, rank] fp32 is scratch receiving x·Aᵀ. */
int dl_cuda_lora_forward(dl_dtype dt, struct cublasContext *blas, int64_t M, int in, int out,
                         int rank, float s, const void *x, const void *W, const void *bias,
                         const float *A, const float *B, float *u, void *y, cudaStream_t stream);
/* Backward: dx = dy·W + s·(dy·B)·A (storage dt), dA = s·(dy·B)ᵀ·x, dB = s·dyᵀ·(x·Aᵀ) (fp32,
 * [rank, in] and [out, rank]); dbias is not computed (the base is frozen). accumulate != 0 adds
 * into dA/dB instead of overwriting them. ws is scratch of dl_cuda_lora_workspace_size() bytes
 * (u and dy·B, [M, rank] fp32 each, then split-K partial sums of the reductions over M). Any of
 * dx, dA, dB may be NULL. */
size_t dl_cuda_lora_workspace_size(int64_t M, int in, int out, int rank);
int dl_cuda_lora_backward(dl_dtype dt, struct cublasContext *blas, int64_t M, int in, int out,
                          int rank, float s, const void *x, const void *W, const float *A,
                          const float *B, const void *dy, void *dx, float *dA, float *dB,
                          int accumulate, float *ws, cudaStream_t stream);
/* 1x1 convolution on channels-last [N, H, W, Cin] with weight [Cout, 1, 1, Cin]: the linear form
 * with M = N·H·W (no transpose needed); scratch sizes as for M = N·H·W. */
int dl_cuda_lora_conv1x1_forward(dl_dtype dt, struct cublasContext *blas, int N, int H, int W,
                                 int cin, int cout, int rank, float s, const void *x,
                                 const void *w, const void *bias, const float *A, const float *B,
                                 float *u, void *y, cudaStream_t stream);
int dl_cuda_lora_conv1x1_backward(dl_dtype dt, struct cublasContext *blas, int N, int H, int W,
                                  int cin, int cout, int rank, float s, const void *x,
                                  const void *w, const float *A, const float *B, const void *dy,
                                  void *dx, float *dA, float *dB, int accumulate, float *ws,
                                  cudaStream_t stream);
/* In place W [out, in] (storage dt) += s·B·A (merge) or -= s·B·A (unmerge), fp32 math, one
 * rounding to dt per element. */
int dl_cuda_lora_merge(dl_dtype dt, int out, int in, int rank, float s, void *W, const float *A,
                       const float *B, cudaStream_t stream);
int dl_cuda_lora_unmerge(dl_dtype dt, int out, int in, int rank, float s, void *W, const float *A,
                         const float *B, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
