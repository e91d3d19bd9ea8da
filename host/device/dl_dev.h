/* dl_dev.h - the device layer under the CUDA backend: exactly the cudart / cuBLASLt / cuDNN calls
 * the backend makes, behind one C API with two implementations (see docs/device.md):
 *   - real      (dev_cuda.c, CUDA builds only): cudart, cublasLtMatmul, cuDNN's legacy
 *               convolution API, danlu's kernels (kernels/dl_kernels.h) on the real GPU;
 *   - emulated  (dev_emu.cpp, always built): host memory behind PROT_NONE device addresses,
 *               danlu's kernels through the SIMT emulator, GEMM / convolution / attention on the
 *               CPU with the libraries' documented semantics, and checks that real hardware
 *               would only punish later (host dereference of device memory faults; a read or
 *               write on one stream of bytes another stream wrote with no event or
 *               synchronisation between is DL_DEV_ERR_UNORDERED naming both streams, the
 *               allocation and the op).
 * Every call takes the device; every enqueuing call takes a stream (never an implicit default
 * stream). Calls return DL_DEV_SUCCESS or a status and record a message (dl_error_msg(), naming
 * the call and the cause). Pointers passed to ops are device pointers from dl_dev_malloc (any
 * address inside an allocation), except the host side of H2D/D2H copies. */
#ifndef DANLU_DL_DEV_H
#define DANLU_DL_DEV_H

#include "core/dtype.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dl_dev_kind { DL_DEV_EMULATED = 0, DL_DEV_REAL = 1 } dl_dev_kind;

/* Status codes: cuDNN's / cuBLAS's families folded into one, plus the emulator's ordering error. */
typedef enum dl_dev_status {
    DL_DEV_SUCCESS = 0,
    DL_DEV_ERR_ALLOC = 1,         /* out of device memory (cudaErrorMemoryAllocation, *_ALLOC_FAILED) */
    DL_DEV_ERR_BAD_PARAM = 2,     /* invalid argument (CUDNN_STATUS_BAD_PARAM, CUBLAS_STATUS_INVALID_VALUE) */
    DL_DEV_ERR_NOT_SUPPORTED = 3, /* valid but not implemented (CUDNN_STATUS_NOT_SUPPORTED) */
    DL_DEV_ERR_EXEC = 4,          /* the op failed while running (launch failure, EXECUTION_FAILED) */
    DL_DEV_ERR_BAD_POINTER = 5,   /* not device memory, or past the end of its allocation */
    DL_DEV_ERR_UNORDERED = 6,     /* emulator: cross-stream access with no event / sync between */
    DL_DEV_ERR_UNAVAILABLE = 7,   /* this implementation is not built or no GPU is present */
    DL_DEV_ERR_INTERNAL = 8,
} dl_dev_status;

const char *dl_dev_status_name(dl_dev_status st);

typedef struct dl_dev dl_dev;
typedef struct dl_dev_stream dl_dev_stream;
typedef struct dl_dev_event dl_dev_event;

/* ---- devices -------------------------------------------------------------------------------- */
/* The kind the CUDA backend uses in this build (CMake DANLU_CUDA_DEVICE=real|emulated). */
dl_dev_kind dl_dev_default_kind(void);
/* 1 if dl_dev_open(kind) can succeed here (emulated: always; real: built and a GPU is present). */
int dl_dev_available(dl_dev_kind kind);
/* Opens device 0 of that kind; NULL with a message when unavailable. */
dl_dev *dl_dev_open(dl_dev_kind kind);
void dl_dev_close(dl_dev *dev);
dl_dev_kind dl_dev_kind_of(const dl_dev *dev);
const char *dl_dev_name(const dl_dev *dev); /* "emulated" or the GPU's name */
/* Compute capability as 10·major + minor (86 for sm_86). Real: the GPU's; emulated: what the
 * emulated device claims to be, DANLU_EMU_SM at open (default 75: no sm_80 kernels), so tests
 * can run the sm_80+ dispatch without a GPU. */
int dl_dev_sm(const dl_dev *dev);
/* Waits for all streams (cudaDeviceSynchronize). */
dl_dev_status dl_dev_synchronize(dl_dev *dev);
/* cudaMemGetInfo: free and total bytes of the device's memory (for progress lines). The emulated
 * device has no fixed memory size: DL_DEV_ERR_NOT_SUPPORTED. */
dl_dev_status dl_dev_mem_info(dl_dev *dev, size_t *free_bytes, size_t *total_bytes);

/* ---- memory --------------------------------------------------------------------------------- */
/* cudaMalloc: 256-byte aligned; the emulator fills new memory with 0xFF bytes (NaN). */
dl_dev_status dl_dev_malloc(dl_dev *dev, void **p, size_t bytes);
/* cudaFree (synchronises the device, as cudaFree does). NULL is a no-op. */
dl_dev_status dl_dev_free(dl_dev *dev, void *p);
/* cudaMallocHost / cudaFreeHost: page-locked host memory, from which copies run asynchronously
 * and overlap kernels (the emulated device: ordinary 64-byte aligned memory). NULL is a no-op. */
dl_dev_status dl_dev_host_alloc(dl_dev *dev, void **p, size_t bytes);
dl_dev_status dl_dev_host_free(dl_dev *dev, void *p);
dl_dev_status dl_dev_memcpy_h2d(dl_dev *dev, void *dst, const void *src, size_t bytes, dl_dev_stream *s);
/* The host buffer holds the data once the stream is synchronised. */
dl_dev_status dl_dev_memcpy_d2h(dl_dev *dev, void *dst, const void *src, size_t bytes, dl_dev_stream *s);
dl_dev_status dl_dev_memcpy_d2d(dl_dev *dev, void *dst, const void *src, size_t bytes, dl_dev_stream *s);
dl_dev_status dl_dev_memset(dl_dev *dev, void *dst, int byte, size_t bytes, dl_dev_stream *s);

/* ---- streams and events --------------------------------------------------------------------- */
/* name (may be NULL) is used in the emulator's messages. Non-blocking streams. */
dl_dev_status dl_dev_stream_create(dl_dev *dev, dl_dev_stream **s, const char *name);
dl_dev_status dl_dev_stream_destroy(dl_dev *dev, dl_dev_stream *s);
dl_dev_status dl_dev_stream_synchronize(dl_dev *dev, dl_dev_stream *s);
/* The underlying cudaStream_t (real) or an opaque token (emulated), for code that launches by hand. */
void *dl_dev_stream_handle(dl_dev_stream *s);
dl_dev_status dl_dev_event_create(dl_dev *dev, dl_dev_event **e);
dl_dev_status dl_dev_event_destroy(dl_dev *dev, dl_dev_event *e);
dl_dev_status dl_dev_event_record(dl_dev *dev, dl_dev_event *e, dl_dev_stream *s);
/* Work enqueued on s after this waits for the work captured by e's last record. */
dl_dev_status dl_dev_stream_wait_event(dl_dev *dev, dl_dev_stream *s, dl_dev_event *e);
dl_dev_status dl_dev_event_synchronize(dl_dev *dev, dl_dev_event *e);
dl_dev_status dl_dev_event_elapsed_ms(dl_dev *dev, float *ms, dl_dev_event *start, dl_dev_event *end);

/* ---- GEMM in cuBLASLt's terms ----------------------------------------------------------------
 * Column-major: D = epilogue(alpha · op(A) · op(B) + beta · C), op(A) m x k, op(B) k x n, C and
 * D m x n with leading dimension ldc (D is written over C: cublasLt with C == D). A is stored
 * m x k (lda >= m) for DL_DEV_OP_N or k x m (lda >= k) for DL_DEV_OP_T; B k x n (ldb >= k) or
 * n x k (ldb >= n); ldc >= m. beta == 0 never reads C (NaN in C does not propagate). A and B
 * are fp32, bf16 or fp16 (both the same); C/D fp32, bf16 or fp16; compute is fp32. batch >= 1
 * matrices at element strides stride_a/b/c. Epilogues: bias [m] (type of C/D; added to every
 * column), GELU (tanh approximation, as cuBLASLt) after the bias. Row-major callers compute
 * Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. swap the operands. */
typedef enum dl_dev_op { DL_DEV_OP_N = 0, DL_DEV_OP_T = 1 } dl_dev_op;
typedef enum dl_dev_epilogue {
    DL_DEV_EPI_DEFAULT = 0,
    DL_DEV_EPI_BIAS = 1,
    DL_DEV_EPI_GELU = 2,
    DL_DEV_EPI_GELU_BIAS = 3,
} dl_dev_epilogue;
typedef struct dl_dev_gemm_desc {
    dl_dev_op transa, transb;
    int64_t m, n, k;
    dl_dtype ab_type, c_type;
    int64_t lda, ldb, ldc;
    int batch;                            /* 0 is taken as 1 */
    int64_t stride_a, stride_b, stride_c; /* elements between consecutive matrices */
    dl_dev_epilogue epilogue;
    const void *bias; /* [m], c_type, for the BIAS epilogues */
    dl_dtype compute; /* DL_F32 (0): fp32 products; DL_BF16 with fp32 A/B: each element of A and B
                         rounded to bf16, products accumulated in fp32 (cuBLASLt's
                         CUBLAS_COMPUTE_32F_FAST_16BF: tensor cores on fp32 data) */
} dl_dev_gemm_desc;
/* Workspace: ws may be NULL when ws_bytes is 0 (the real one then runs the algorithms that need
 * none); DL_DEV_GEMM_WORKSPACE bytes is always enough. */
#define DL_DEV_GEMM_WORKSPACE ((size_t)32 << 20)
dl_dev_status dl_dev_gemm(dl_dev *dev, dl_dev_stream *s, const dl_dev_gemm_desc *g, float alpha,
                          const void *A, const void *B, float beta, void *C, void *ws, size_t ws_bytes);

/* ---- convolution in cuDNN's terms -------------------------------------------------------------
 * Tensors NHWC packed (CUDNN_TENSOR_NHWC), filters KRSC = [Cout, kh, kw, Cin] (the NHWC filter
 * format, danlu's conv weight layout), cross-correlation, symmetric padding, fp32 compute,
 * one group. Outputs are y = alpha · result + beta · y; beta == 0 never reads y. */
typedef struct dl_dev_tensor_desc { dl_dtype dt; int n, c, h, w; } dl_dev_tensor_desc;
typedef struct dl_dev_filter_desc { dl_dtype dt; int k, c, r, s; } dl_dev_filter_desc;
typedef struct dl_dev_conv_desc {
    int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w; /* 0 strides / dilations are taken as 1 */
} dl_dev_conv_desc;
typedef enum dl_dev_conv_dir { DL_DEV_CONV_FWD = 0, DL_DEV_CONV_BWD_DATA = 1, DL_DEV_CONV_BWD_FILTER = 2 } dl_dev_conv_dir;
/* cudnnGetConvolution2dForwardOutputDim: the output descriptor (y->dt is x->dt). */
dl_dev_status dl_dev_conv_output_desc(const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w,
                                      const dl_dev_conv_desc *c, dl_dev_tensor_desc *y);
/* The algorithm to run for a direction and its workspace size (cudnnGet*Algorithm_v7's first
 * choice, then cudnnGet*WorkspaceSize). */
dl_dev_status dl_dev_conv_algo(dl_dev *dev, dl_dev_conv_dir dir, const dl_dev_tensor_desc *x,
                               const dl_dev_filter_desc *w, const dl_dev_conv_desc *c,
                               const dl_dev_tensor_desc *y, int *algo, size_t *ws_bytes);
dl_dev_status dl_dev_conv_forward(dl_dev *dev, dl_dev_stream *s, float alpha, const dl_dev_tensor_desc *xd,
                                  const void *x, const dl_dev_filter_desc *wd, const void *w,
                                  const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                                  const dl_dev_tensor_desc *yd, void *y);
dl_dev_status dl_dev_conv_backward_data(dl_dev *dev, dl_dev_stream *s, float alpha, const dl_dev_filter_desc *wd,
                                        const void *w, const dl_dev_tensor_desc *dyd, const void *dy,
                                        const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                                        const dl_dev_tensor_desc *dxd, void *dx);
dl_dev_status dl_dev_conv_backward_filter(dl_dev *dev, dl_dev_stream *s, float alpha, const dl_dev_tensor_desc *xd,
                                          const void *x, const dl_dev_tensor_desc *dyd, const void *dy,
                                          const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                                          const dl_dev_filter_desc *dwd, void *dw);

/* ---- scaled-dot-product attention ------------------------------------------------------------
 * q [N, Tq, ldq], k [N, Tk, ldk], v [N, Tk, ldv], o [N, Tq, ldo]: head h at columns
 * [h·d, h·d + d) (BSHD); dtype dt (f32 or bf16), fp32 math; lse [N, H, Tq] fp32 (natural log of
 * the row sums of exp(scale·q·kᵀ)). No mask. Backward writes dq/dk/dv (layouts of q/k/v, NULL
 * skipped); delta [N, H, Tq] fp32 is scratch. Real: danlu's attention kernels (the cuDNN SDPA
 * graph is not wired yet); emulated: CPU. */
typedef struct dl_dev_sdpa_desc {
    dl_dtype dt;
    int N, H, Tq, Tk, d;
    float scale;
    int64_t ldq, ldk, ldv, ldo;
} dl_dev_sdpa_desc;
dl_dev_status dl_dev_sdpa_forward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                  const void *k, const void *v, void *o, float *lse);
dl_dev_status dl_dev_sdpa_backward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                   const void *k, const void *v, const void *o, const void *dout,
                                   const float *lse, float *delta, void *dq, void *dk, void *dv);

/* ---- danlu's kernels on a stream ---------------------------------------------------------------
 * The launchers of kernels/dl_kernels.h with the same arguments (see there), enqueued on s: the
 * real GPU, or the SIMT emulator on the emulated device (pointers translated, accesses tracked).
 * A launcher's -1 (unsupported argument) is DL_DEV_ERR_NOT_SUPPORTED. The LoRA base GEMM runs on
 * danlu's kernel on both (cuBLAS is the backend's GEMM through dl_dev_gemm). */
size_t dl_dev_groupnorm_workspace_size(int N, int64_t HW, int C, int G);
dl_dev_status dl_dev_groupnorm_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                       float eps, int silu, const void *x, const float *gamma, const float *beta,
                                       void *y, float *mean, float *rstd, void *ws);
dl_dev_status dl_dev_groupnorm_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                        int silu, const void *x, const float *gamma, const float *beta,
                                        const float *mean, const float *rstd, const void *dy, void *dx,
                                        float *dgamma, float *dbeta, void *ws);
/* Which of danlu's attention kernels dl_dev_attention_* runs: the FlashAttention-2-style
 * mma.sync kernels (kernels/attention_mma.cu) when dl_dev_attention_uses_mma(dev, a) (bf16,
 * d in {40, 64, 80, 160}, dl_dev_sm ≥ 80; their backward deterministic, its fp32 dQ buffer taken
 * by the device: cudaMallocAsync on the stream), else the portable kernels (kernels/attention.cu,
 * f32 or bf16). dl_dev_attention_mma_calls counts the calls that ran the mma kernels on dev
 * (NULL: on every device of the process). */
int dl_dev_attention_uses_mma(const dl_dev *dev, const dl_dev_sdpa_desc *a);
unsigned long long dl_dev_attention_mma_calls(const dl_dev *dev);
dl_dev_status dl_dev_attention_forward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                       const void *k, const void *v, void *o, float *lse);
dl_dev_status dl_dev_attention_backward(dl_dev *dev, dl_dev_stream *s, const dl_dev_sdpa_desc *a, const void *q,
                                        const void *k, const void *v, const void *o, const void *dout,
                                        const float *lse, float *delta, void *dq, void *dk, void *dv);
size_t dl_dev_lora_workspace_size(int64_t M, int in, int out, int rank);
dl_dev_status dl_dev_lora_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                  float scale, const void *x, const void *W, const void *bias, const float *A,
                                  const float *B, float *u, void *y);
dl_dev_status dl_dev_lora_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                   float scale, const void *x, const void *W, const float *A, const float *B,
                                   const void *dy, void *dx, float *dA, float *dB, int accumulate, float *ws);
dl_dev_status dl_dev_lora_merge(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int out, int in, int rank, float scale,
                                void *W, const float *A, const float *B, int unmerge);


/* ---- element-wise, normalisation, loss and optimiser kernels (kernels/ops.cu) -----------------
 * The rest of the backend's op table as danlu kernels on a stream, each with exactly the contract
 * of the CPU reference op it names (host/ops/cpu/<family>.h: argument meaning, layout, overwrite /
 * accumulate and alias rules, NULL outputs skipped), on device pointers. dt is the storage type of
 * the activations (DL_F32 or DL_BF16; anything else is DL_DEV_ERR_NOT_SUPPORTED); math is fp32.
 * Statistics (mean, rstd), per-sample losses, optimiser state, LoRA factors and the scalars that
 * reductions write are fp32. Reductions are deterministic (fixed blocking, no atomics in the
 * sum order): the same inputs give the same bits from run to run. */
dl_dev_status dl_dev_act_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                 void *y);  /* act: dl_act (ops/cpu/activation.h); y may alias x */
dl_dev_status dl_dev_act_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                  const void *dy, void *dx);
dl_dev_status dl_dev_geglu_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                   void *y);
dl_dev_status dl_dev_geglu_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                    const void *dy, void *dx);
/* y = a + b; y = alpha x; y += alpha x (dl_cpu_add_forward / scale_forward / axpy) */
dl_dev_status dl_dev_add(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *a, const void *b, void *y);
dl_dev_status dl_dev_scale(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y);
dl_dev_status dl_dev_axpy(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y);
/* v is fp32 ([C] or [N, C]); dv fp32 */
dl_dev_status dl_dev_add_bcast_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                       int per_sample, const void *x, const float *v, void *y);
dl_dev_status dl_dev_add_bcast_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                        int per_sample, const void *dy, void *dx, float *dv);
dl_dev_status dl_dev_concat_channels_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                             int64_t C2, const void *a, const void *b, void *y);
dl_dev_status dl_dev_concat_channels_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                              int64_t C2, const void *dy, void *da, void *db);
dl_dev_status dl_dev_upsample_nearest2x_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                                int64_t W, int64_t C, const void *x, void *y);
dl_dev_status dl_dev_upsample_nearest2x_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                                 int64_t W, int64_t C, const void *dy, void *dx);
/* Zero padding of a channels-last x [N, H, W, C] into y [N, H+top+bottom, W+left+right, C]
 * (cuDNN takes symmetric padding only; the VAE's downsample pads right and bottom), and its
 * backward, the crop: dx [N, H, W, C] = the interior of dy. */
dl_dev_status dl_dev_pad2d_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                   int64_t C, int top, int left, int bottom, int right, const void *x, void *y);
dl_dev_status dl_dev_pad2d_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                    int64_t C, int top, int left, int bottom, int right, const void *dy, void *dx);
/* t [N] fp32 -> out [N, dim] (dt) */
dl_dev_status dl_dev_timestep_embedding(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t dim,
                                        const float *t, int flip_sin_to_cos, float downscale_freq_shift, float scale,
                                        float max_period, void *out);
/* gamma, beta, mean, rstd, dgamma, dbeta fp32 */
dl_dev_status dl_dev_layernorm_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C, float eps,
                                       const void *x, const float *gamma, const float *beta, void *y, float *mean,
                                       float *rstd);
dl_dev_status dl_dev_layernorm_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C,
                                        const void *x, const float *gamma, const float *mean, const float *rstd,
                                        const void *dy, void *dx, float *dgamma, float *dbeta);
/* Token + position embedding of a text encoder: out[n, t, :] = tok[ids[n, t], :] + pos[t, :]
 * (ids int32 [N, T] in device memory, tok [V, C], pos [>= T, C] fp32; out [N, T, C] dt). An id
 * outside [0, V) is DL_DEV_ERR_BAD_PARAM on the emulated device; the real one clamps it. */
dl_dev_status dl_dev_embed_tokens(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t T, int64_t C,
                                  int64_t V, const int32_t *ids, const float *tok, const float *pos, void *out);
/* Its backward (fp32): dtok[ids[n, t], :] += dout[n, t, :], dpos[t, :] += dout[n, t, :] (added into,
 * NULL skips either; each sum in row order, as the CPU's). A bad id as for the forward. */
dl_dev_status dl_dev_embed_tokens_backward(dl_dev *dev, dl_dev_stream *s, int64_t N, int64_t T, int64_t C, int64_t V,
                                           const int32_t *ids, const float *dout, float *dtok, float *dpos);
/* Row softmax with logsumexp, for attention the attention kernels do not take (other head dims,
 * the text encoder's causal mask): x [rows, cols] fp32 -> y = softmax(scale · x) per row (y may
 * alias x), lse [rows] = logsumexp of scale · x (NULL: skipped). causal_tq > 0 masks column
 * j > (row % causal_tq) (a causal block of causal_tq queries per matrix; y is 0 there).
 * Backward in place: dp [rows, cols] (dL/dy) becomes dL/d(scale · x) = y ∘ (dp − rowsum(dp ∘ y))
 * (the scale is not applied). */
dl_dev_status dl_dev_softmax_forward(dl_dev *dev, dl_dev_stream *s, int64_t rows, int64_t cols, float scale,
                                     int64_t causal_tq, const float *x, float *y, float *lse);
dl_dev_status dl_dev_softmax_backward(dl_dev *dev, dl_dev_stream *s, int64_t rows, int64_t cols, const float *y,
                                      float *dp);
/* MSE loss (dl_cpu_mse_loss_forward): pred, target [N, D] dt, weights [N] fp32 or NULL,
 * per_sample [N] fp32 or NULL; the loss is written to *loss (one fp32 in device memory), not
 * returned: the host reads it when it wants it. */
dl_dev_status dl_dev_mse_loss_forward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                      const void *pred, const void *target, const float *weights, float *per_sample,
                                      float *loss);
dl_dev_status dl_dev_mse_loss_backward(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                       const void *pred, const void *target, const float *weights, float dloss,
                                       void *dpred, void *dtarget);
/* AdamW (dl_cpu_adamw_step) on fp32 p, g, m, v [n]. The hyper-parameters travel by value. */
dl_dev_status dl_dev_adamw_step(dl_dev *dev, dl_dev_stream *s, int64_t n, double lr, double beta1, double beta2,
                                double eps, double weight_decay, int64_t step, float *p, const float *g, float *m,
                                float *v);
/* *out (one fp32 in device memory) = sum of x[i]^2 over fp32 x [n] (dl_cpu_sumsq, accumulated
 * in fp64 in fixed blocks, rounded once). */
dl_dev_status dl_dev_sumsq(dl_dev *dev, dl_dev_stream *s, int64_t n, const float *x, float *out);
/* x[i] *= *coef (a device scalar: gradient clipping without a host round trip:
 * *coef = min(1, max_norm / (sqrt(*sumsq) + 1e-6)) computed by dl_dev_clip_coef). */
dl_dev_status dl_dev_clip_coef(dl_dev *dev, dl_dev_stream *s, const float *sumsq, float max_norm, float *coef);
dl_dev_status dl_dev_scale_by(dl_dev *dev, dl_dev_stream *s, int64_t n, const float *coef, float *x);
/* y [n] = x [n] (fp16 or bf16) widened to fp32, exactly. */
dl_dev_status dl_dev_to_f32(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *x, float *y);
/* y [n] = x [n] (fp32) rounded to bf16 (dt DL_BF16 only), nearest even. */
dl_dev_status dl_dev_from_f32(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const float *x, void *y);

#ifdef __cplusplus
}
#endif
#endif
