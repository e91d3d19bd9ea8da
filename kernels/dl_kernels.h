/* dl_kernels.h - C-linkage launchers of danlu's hand-written CUDA kernels (attention, group-norm,
 * LoRA, the element-wise, normalisation, loss and optimiser ops), callable from C host code, from
 * the CUDA backend and from the SIMT-emulator tests.
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
 * every run) instead of with atomics. bf16 only (-1 otherwise); d = 160 splits the columns of
 * dK, dV, dQ over two CTAs per key block. kernels/attention_mma.cu. */
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

/* ---- element-wise, normalisation, loss and optimiser ops (kernels/ops.cu) -----------------------
 * Each has exactly the contract of the CPU reference op it names (host/ops/cpu/<family>.h:
 * argument meaning, layout, overwrite / accumulate and alias rules, NULL outputs skipped) on
 * device pointers; dt (DL_F32 or DL_BF16, else -1) is the storage type of the activations, math
 * is fp32. Statistics, per-sample losses, optimiser state and the scalars reductions write are
 * fp32. Reductions are deterministic (fixed blocking, fp64 accumulation as the CPU ops, no
 * atomics): the same inputs give the same bits on every run. A size of 0 launches nothing. */

/* activation.h: act is a dl_act (erf GELU, tanh GELU, quick GELU, SiLU). y may alias x; dx may
 * alias dy, not x. */
int dl_cuda_act_forward(dl_dtype dt, int act, int64_t n, const void *x, void *y, cudaStream_t stream);
int dl_cuda_act_backward(dl_dtype dt, int act, int64_t n, const void *x, const void *dy, void *dx,
                         cudaStream_t stream);
/* GEGLU: x [M, 2D] (hidden | gate) -> y [M, D] = hidden · gelu(gate) (erf); backward dx [M, 2D]. */
int dl_cuda_geglu_forward(dl_dtype dt, int64_t M, int64_t D, const void *x, void *y, cudaStream_t stream);
int dl_cuda_geglu_backward(dl_dtype dt, int64_t M, int64_t D, const void *x, const void *dy, void *dx,
                           cudaStream_t stream);
/* elementwise.h: y = a + b (y may alias a or b); y = alpha·x (y may alias x); y += alpha·x (x must
 * not be y: -1). */
int dl_cuda_add(dl_dtype dt, int64_t n, const void *a, const void *b, void *y, cudaStream_t stream);
int dl_cuda_scale(dl_dtype dt, int64_t n, float alpha, const void *x, void *y, cudaStream_t stream);
int dl_cuda_axpy(dl_dtype dt, int64_t n, float alpha, const void *x, void *y, cudaStream_t stream);
/* y [N, HW, C] = x + v[c] (v [C]) or x + v[n, c] (per_sample, v [N, C]); v fp32; y may alias x.
 * Backward: dx = dy (a copy, skipped when dx is NULL or dy), dv [C] or [N, C] fp32 = the sum of
 * dy over the broadcast axes (NULL skipped). */
int dl_cuda_add_bcast_forward(dl_dtype dt, int64_t N, int64_t HW, int64_t C, int per_sample, const void *x,
                              const float *v, void *y, cudaStream_t stream);
int dl_cuda_add_bcast_backward(dl_dtype dt, int64_t N, int64_t HW, int64_t C, int per_sample, const void *dy,
                               void *dx, float *dv, cudaStream_t stream);
/* a [M, C1], b [M, C2] -> y [M, C1 + C2] (a first); backward splits dy into da, db (NULL skipped).
 * Exact copies of the stored bits. */
int dl_cuda_concat_channels_forward(dl_dtype dt, int64_t M, int64_t C1, int64_t C2, const void *a,
                                    const void *b, void *y, cudaStream_t stream);
int dl_cuda_concat_channels_backward(dl_dtype dt, int64_t M, int64_t C1, int64_t C2, const void *dy, void *da,
                                     void *db, cudaStream_t stream);
/* upsample.h: x [N, H, W, C] -> y [N, 2H, 2W, C] nearest (exact copy); backward dx = the sum of
 * each 2x2 block of dy (overwritten). */
int dl_cuda_upsample_nearest2x_forward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C,
                                       const void *x, void *y, cudaStream_t stream);
int dl_cuda_upsample_nearest2x_backward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C,
                                        const void *dy, void *dx, cudaStream_t stream);
/* Zero padding x [N, H, W, C] -> y [N, H + top + bottom, W + left + right, C] (pads >= 0) and its
 * backward, the crop dx [N, H, W, C] = the interior of dy. Exact copies. */
int dl_cuda_pad2d_forward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C, int top, int left,
                          int bottom, int right, const void *x, void *y, cudaStream_t stream);
int dl_cuda_pad2d_backward(dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C, int top, int left,
                           int bottom, int right, const void *dy, void *dx, cudaStream_t stream);
/* embedding.h: t [N] fp32 -> out [N, dim] (dt), the fp32 steps of dl_cpu_timestep_embedding
 * (-1 when dim / 2 - downscale_freq_shift is 0). */
int dl_cuda_timestep_embedding(dl_dtype dt, int64_t N, int64_t dim, const float *t, int flip_sin_to_cos,
                               float downscale_freq_shift, float scale, float max_period, void *out,
                               cudaStream_t stream);
/* layernorm.h over rows of x [M, C]: gamma, beta [C] fp32 (NULL: 1, 0), mean, rstd [M] fp32
 * (NULL skipped); y may alias x. Backward: dx [M, C] (may alias dy), dgamma, dbeta [C] fp32, each
 * overwritten, NULL skipped. */
int dl_cuda_layernorm_forward(dl_dtype dt, int64_t M, int64_t C, float eps, const void *x, const float *gamma,
                              const float *beta, void *y, float *mean, float *rstd, cudaStream_t stream);
int dl_cuda_layernorm_backward(dl_dtype dt, int64_t M, int64_t C, const void *x, const float *gamma,
                               const float *mean, const float *rstd, const void *dy, void *dx, float *dgamma,
                               float *dbeta, cudaStream_t stream);
/* out [N, T, C] (dt) = tok[ids[n, t], :] + pos[t, :]; ids int32 [N, T], tok [V, C], pos [>= T, C]
 * fp32. An id outside [0, V) is clamped into it (callers check ids where they can). */
int dl_cuda_embed_tokens(dl_dtype dt, int64_t N, int64_t T, int64_t C, int64_t V, const int32_t *ids,
                         const float *tok, const float *pos, void *out, cudaStream_t stream);
/* Its backward, fp32: dtok[ids[n, t], :] += dout[n, t, :], dpos[t, :] += dout[n, t, :] (added
 * into; NULL skips either). One thread per channel walks the rows in order: no atomics, the same
 * sums as the CPU's, bit for bit. An id outside [0, V) is clamped. */
int dl_cuda_embed_tokens_backward(int64_t N, int64_t T, int64_t C, int64_t V, const int32_t *ids, const float *dout,
                                  float *dtok, float *dpos, cudaStream_t stream);
/* Row softmax of scale·x, x and y [rows, cols] fp32 (y may alias x), lse [rows] (NULL skipped);
 * causal_tq > 0 keeps columns j <= row % causal_tq (y is 0 past them). Backward in place:
 * dp = y ∘ (dp − rowsum(dp ∘ y)). */
int dl_cuda_softmax_forward(int64_t rows, int64_t cols, float scale, int64_t causal_tq, const float *x, float *y,
                            float *lse, cudaStream_t stream);
int dl_cuda_softmax_backward(int64_t rows, int64_t cols, const float *y, float *dp, cudaStream_t stream);
/* loss.h: pred, target [N, D] (dt), weights [N] fp32 or NULL; per_sample [N] (NULL skipped) and
 * the loss (*loss, one fp32) written on the device. Backward: dpred = dloss·w[n]·2(pred −
 * target)/(N·D), dtarget = −dpred, NULL skipped; dpred may alias pred. */
int dl_cuda_mse_loss_forward(dl_dtype dt, int64_t N, int64_t D, const void *pred, const void *target,
                             const float *weights, float *per_sample, float *loss, cudaStream_t stream);
int dl_cuda_mse_loss_backward(dl_dtype dt, int64_t N, int64_t D, const void *pred, const void *target,
                              const float *weights, float dloss, void *dpred, void *dtarget, cudaStream_t stream);
/* adamw.h: one AdamW step on fp32 p, g, m, v [n] (the derived constants rounded to fp32 once, as
 * dl_cpu_adamw_step). *out = Σ x² over fp32 x [n] (fp64 accumulation, one rounding). *coef =
 * min(1, max_norm / (sqrt(*sumsq) + 1e-6)). x [n] fp32 *= *coef. The scalars are device memory. */
int dl_cuda_adamw_step(int64_t n, double lr, double beta1, double beta2, double eps, double weight_decay,
                       int64_t step, float *p, const float *g, float *m, float *v, cudaStream_t stream);
int dl_cuda_sumsq(int64_t n, const float *x, float *out, cudaStream_t stream);
int dl_cuda_clip_coef(const float *sumsq, float max_norm, float *coef, cudaStream_t stream);
int dl_cuda_scale_by(int64_t n, const float *coef, float *x, cudaStream_t stream);
/* y [n] = x [n] widened to fp32; x fp16 or bf16 (DL_F16 / DL_BF16), exact. */
int dl_cuda_to_f32(dl_dtype dt, int64_t n, const void *x, float *y, cudaStream_t stream);
/* y [n] = x [n] (fp32) rounded to bf16 (DL_BF16 only; round to nearest even). */
int dl_cuda_from_f32(dl_dtype dt, int64_t n, const float *x, void *y, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
