/* dev_cuda.c - the real device (see dl_dev.h): cudart for memory, streams and events, cuBLASLt for
 * GEMM, cuDNN's legacy convolution API (NHWC tensors, KRSC filters), danlu's kernels for group-norm,
 * LoRA, attention and the element-wise / normalisation / loss / optimiser ops. Built only with the CUDA toolkit and cuDNN; it cannot run without a GPU. */
#include "device/dev_impl.h"

#include "core/error.h"
#include "dl_kernels.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Real {
    dl_dev head;
    cublasLtHandle_t lt;
    cudnnHandle_t dnn;
    char name[256];
} Real;

static Real *R(dl_dev *d) { return (Real *)d; }
static cudaStream_t CS(dl_dev_stream *s) { return s ? (cudaStream_t)s->handle : NULL; }

static dl_dev_status rt(cudaError_t e, const char *call)
{
    if (e == cudaSuccess) return DL_DEV_SUCCESS;
    return dl_dev_fail(e == cudaErrorMemoryAllocation ? DL_DEV_ERR_ALLOC : DL_DEV_ERR_EXEC, "%s: %s: %s", call,
                       cudaGetErrorName(e), cudaGetErrorString(e));
}
static dl_dev_status lt_st(cublasStatus_t st, const char *call)
{
    if (st == CUBLAS_STATUS_SUCCESS) return DL_DEV_SUCCESS;
    dl_dev_status r = st == CUBLAS_STATUS_INVALID_VALUE ? DL_DEV_ERR_BAD_PARAM
                      : st == CUBLAS_STATUS_NOT_SUPPORTED ? DL_DEV_ERR_NOT_SUPPORTED
                      : st == CUBLAS_STATUS_ALLOC_FAILED ? DL_DEV_ERR_ALLOC : DL_DEV_ERR_EXEC;
    return dl_dev_fail(r, "%s: cuBLAS status %d", call, (int)st);
}
static dl_dev_status dnn_st(cudnnStatus_t st, const char *call)
{
    if (st == CUDNN_STATUS_SUCCESS) return DL_DEV_SUCCESS;
    dl_dev_status r = st == CUDNN_STATUS_BAD_PARAM ? DL_DEV_ERR_BAD_PARAM
                      : st == CUDNN_STATUS_NOT_SUPPORTED ? DL_DEV_ERR_NOT_SUPPORTED
                      : st == CUDNN_STATUS_ALLOC_FAILED ? DL_DEV_ERR_ALLOC : DL_DEV_ERR_EXEC;
    return dl_dev_fail(r, "%s: %s", call, cudnnGetErrorString(st));
}
#define RT(x) do { dl_dev_status st_ = rt((x), #x); if (st_ != DL_DEV_SUCCESS) return st_; } while (0)

int dl_dev_cuda_present(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

dl_dev_status dl_dev_cuda_mem_info(dl_dev *d, size_t *free_bytes, size_t *total_bytes)
{
    (void)d;
    return rt(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

dl_dev_status dl_dev_cuda_host_alloc(void **p, size_t bytes)
{
    *p = NULL;
    return rt(cudaMallocHost(p, bytes ? bytes : 1), "cudaMallocHost");
}
dl_dev_status dl_dev_cuda_host_free(void *p) { return rt(cudaFreeHost(p), "cudaFreeHost"); }

static void real_close(dl_dev *d)
{
    Real *r = R(d);
    cublasLtDestroy(r->lt);
    cudnnDestroy(r->dnn);
    free(r);
}
static const char *real_name(const dl_dev *d) { return ((const Real *)d)->name; }
static dl_dev_status real_sync(dl_dev *d) { (void)d; return rt(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
static dl_dev_status real_malloc(dl_dev *d, void **p, size_t n)
{
    (void)d;
    *p = NULL;
    return n ? rt(cudaMalloc(p, n), "cudaMalloc") : DL_DEV_SUCCESS;
}
static dl_dev_status real_free(dl_dev *d, void *p) { (void)d; return rt(cudaFree(p), "cudaFree"); }
static dl_dev_status real_memcpy(dl_dev *d, void *dst, const void *src, size_t n, int kind, dl_dev_stream *s)
{
    (void)d;
    static const enum cudaMemcpyKind k[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice};
    return rt(cudaMemcpyAsync(dst, src, n, k[kind], CS(s)), "cudaMemcpyAsync");
}
static dl_dev_status real_memset(dl_dev *d, void *dst, int byte, size_t n, dl_dev_stream *s)
{
    (void)d;
    return rt(cudaMemsetAsync(dst, byte, n, CS(s)), "cudaMemsetAsync");
}
static dl_dev_status real_stream_create(dl_dev *d, dl_dev_stream **out, const char *name)
{
    (void)d;
    static int next_id = 1;
    dl_dev_stream *s = calloc(1, sizeof *s);
    if (!s) return dl_dev_fail(DL_DEV_ERR_ALLOC, "dl_dev_stream_create: out of host memory");
    cudaStream_t cs;
    dl_dev_status st = rt(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    if (st != DL_DEV_SUCCESS) { free(s); return st; }
    s->handle = cs;
    s->id = next_id++;
    snprintf(s->name, sizeof s->name, "%s", name ? name : "");
    *out = s;
    return DL_DEV_SUCCESS;
}
static dl_dev_status real_stream_destroy(dl_dev *d, dl_dev_stream *s)
{
    (void)d;
    dl_dev_status st = rt(cudaStreamDestroy(CS(s)), "cudaStreamDestroy");
    free(s);
    return st;
}
static dl_dev_status real_stream_sync(dl_dev *d, dl_dev_stream *s) { (void)d; return rt(cudaStreamSynchronize(CS(s)), "cudaStreamSynchronize"); }
static dl_dev_status real_event_create(dl_dev *d, dl_dev_event **e)
{
    (void)d;
    return rt(cudaEventCreate((cudaEvent_t *)e), "cudaEventCreate");
}
static dl_dev_status real_event_destroy(dl_dev *d, dl_dev_event *e) { (void)d; return rt(cudaEventDestroy((cudaEvent_t)e), "cudaEventDestroy"); }
static dl_dev_status real_event_record(dl_dev *d, dl_dev_event *e, dl_dev_stream *s)
{
    (void)d;
    return rt(cudaEventRecord((cudaEvent_t)e, CS(s)), "cudaEventRecord");
}
static dl_dev_status real_wait(dl_dev *d, dl_dev_stream *s, dl_dev_event *e)
{
    (void)d;
    return rt(cudaStreamWaitEvent(CS(s), (cudaEvent_t)e, 0), "cudaStreamWaitEvent");
}
static dl_dev_status real_event_sync(dl_dev *d, dl_dev_event *e) { (void)d; return rt(cudaEventSynchronize((cudaEvent_t)e), "cudaEventSynchronize"); }
static dl_dev_status real_elapsed(dl_dev *d, float *ms, dl_dev_event *a, dl_dev_event *b)
{
    (void)d;
    return rt(cudaEventElapsedTime(ms, (cudaEvent_t)a, (cudaEvent_t)b), "cudaEventElapsedTime");
}

/* ---- GEMM: cublasLtMatmul ---- */
static cudaDataType_t cuda_type(dl_dtype t) { return t == DL_BF16 ? CUDA_R_16BF : t == DL_F16 ? CUDA_R_16F : CUDA_R_32F; }

static dl_dev_status real_gemm(dl_dev *d, dl_dev_stream *s, const dl_dev_gemm_desc *g, float alpha, const void *A,
                               const void *B, float beta, void *C, void *ws, size_t ws_bytes)
{
    Real *r = R(d);
    if (g->m == 0 || g->n == 0) return DL_DEV_SUCCESS;
    const int batch = g->batch ? g->batch : 1;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    dl_dev_status st = lt_st(cublasLtMatmulDescCreate(&op, g->compute == DL_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F,
                                                          CUDA_R_32F), "cublasLtMatmulDescCreate");
    cublasOperation_t ta = g->transa == DL_DEV_OP_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = g->transb == DL_DEV_OP_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (st == DL_DEV_SUCCESS) {
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        cublasLtEpilogue_t epi = g->epilogue == DL_DEV_EPI_BIAS        ? CUBLASLT_EPILOGUE_BIAS
                                 : g->epilogue == DL_DEV_EPI_GELU      ? CUBLASLT_EPILOGUE_GELU
                                 : g->epilogue == DL_DEV_EPI_GELU_BIAS ? CUBLASLT_EPILOGUE_GELU_BIAS
                                                                        : CUBLASLT_EPILOGUE_DEFAULT;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        if (g->bias) {
            cudaDataType_t bt = cuda_type(g->c_type);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
        }
        const int64_t ar = ta == CUBLAS_OP_N ? g->m : g->k, ac = ta == CUBLAS_OP_N ? g->k : g->m;
        const int64_t br = tb == CUBLAS_OP_N ? g->k : g->n, bc = tb == CUBLAS_OP_N ? g->n : g->k;
        st = lt_st(cublasLtMatrixLayoutCreate(&la, cuda_type(g->ab_type), ar, ac, g->lda), "cublasLtMatrixLayoutCreate(A)");
        if (st == DL_DEV_SUCCESS)
            st = lt_st(cublasLtMatrixLayoutCreate(&lb, cuda_type(g->ab_type), br, bc, g->ldb), "cublasLtMatrixLayoutCreate(B)");
        if (st == DL_DEV_SUCCESS)
            st = lt_st(cublasLtMatrixLayoutCreate(&lc, cuda_type(g->c_type), g->m, g->n, g->ldc), "cublasLtMatrixLayoutCreate(C)");
    }
    if (st == DL_DEV_SUCCESS && batch > 1) {
        cublasLtMatrixLayout_t ls[3] = {la, lb, lc};
        int64_t strides[3] = {g->stride_a, g->stride_b, g->stride_c};
        for (int i = 0; i < 3; i++) {
            cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch);
            cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i],
                                             sizeof strides[i]);
        }
    }
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    if (st == DL_DEV_SUCCESS) st = lt_st(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    if (st == DL_DEV_SUCCESS) {
        uint64_t wsb = ws ? ws_bytes : 0;
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
        st = lt_st(cublasLtMatmulAlgoGetHeuristic(r->lt, op, la, lb, lc, lc, pref, 1, &heur, &found),
                   "cublasLtMatmulAlgoGetHeuristic");
        if (st == DL_DEV_SUCCESS && !found)
            st = dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "dl_dev_gemm: cuBLASLt has no algorithm for this problem");
    }
    if (st == DL_DEV_SUCCESS)
        st = lt_st(cublasLtMatmul(r->lt, op, &alpha, A, la, B, lb, &beta, C, lc, C, lc, &heur.algo, ws, ws ? ws_bytes : 0,
                                  CS(s)),
                   "cublasLtMatmul");
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    return st;
}

/* ---- convolution: cuDNN legacy API ---- */
static cudnnDataType_t dnn_type(dl_dtype t) { return t == DL_BF16 ? CUDNN_DATA_BFLOAT16 : t == DL_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT; }

typedef struct Descs {
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t c;
} Descs;

static void descs_free(Descs *D)
{
    if (D->x) cudnnDestroyTensorDescriptor(D->x);
    if (D->y) cudnnDestroyTensorDescriptor(D->y);
    if (D->w) cudnnDestroyFilterDescriptor(D->w);
    if (D->c) cudnnDestroyConvolutionDescriptor(D->c);
}
static dl_dev_status descs_make(Descs *D, const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w,
                                const dl_dev_conv_desc *c, const dl_dev_tensor_desc *y)
{
    memset(D, 0, sizeof *D);
    dl_dev_status st = dnn_st(cudnnCreateTensorDescriptor(&D->x), "cudnnCreateTensorDescriptor");
    if (st == DL_DEV_SUCCESS) st = dnn_st(cudnnCreateTensorDescriptor(&D->y), "cudnnCreateTensorDescriptor");
    if (st == DL_DEV_SUCCESS) st = dnn_st(cudnnCreateFilterDescriptor(&D->w), "cudnnCreateFilterDescriptor");
    if (st == DL_DEV_SUCCESS) st = dnn_st(cudnnCreateConvolutionDescriptor(&D->c), "cudnnCreateConvolutionDescriptor");
    if (st == DL_DEV_SUCCESS)
        st = dnn_st(cudnnSetTensor4dDescriptor(D->x, CUDNN_TENSOR_NHWC, dnn_type(x->dt), x->n, x->c, x->h, x->w),
                    "cudnnSetTensor4dDescriptor(x)");
    if (st == DL_DEV_SUCCESS)
        st = dnn_st(cudnnSetTensor4dDescriptor(D->y, CUDNN_TENSOR_NHWC, dnn_type(y->dt), y->n, y->c, y->h, y->w),
                    "cudnnSetTensor4dDescriptor(y)");
    if (st == DL_DEV_SUCCESS)
        st = dnn_st(cudnnSetFilter4dDescriptor(D->w, dnn_type(w->dt), CUDNN_TENSOR_NHWC, w->k, w->c, w->r, w->s),
                    "cudnnSetFilter4dDescriptor");
    if (st == DL_DEV_SUCCESS)
        st = dnn_st(cudnnSetConvolution2dDescriptor(D->c, c->pad_h, c->pad_w, c->stride_h ? c->stride_h : 1,
                                                    c->stride_w ? c->stride_w : 1, c->dil_h ? c->dil_h : 1,
                                                    c->dil_w ? c->dil_w : 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                    "cudnnSetConvolution2dDescriptor");
    if (st == DL_DEV_SUCCESS && x->dt != DL_F32)
        st = dnn_st(cudnnSetConvolutionMathType(D->c, CUDNN_TENSOR_OP_MATH), "cudnnSetConvolutionMathType");
    if (st != DL_DEV_SUCCESS) descs_free(D);
    return st;
}

static dl_dev_status real_conv_algo(dl_dev *d, dl_dev_conv_dir dir, const dl_dev_tensor_desc *x,
                                    const dl_dev_filter_desc *w, const dl_dev_conv_desc *c,
                                    const dl_dev_tensor_desc *y, int *algo, size_t *ws_bytes)
{
    Real *r = R(d);
    Descs D;
    dl_dev_status st = descs_make(&D, x, w, c, y);
    if (st != DL_DEV_SUCCESS) return st;
    int n = 0;
    if (dir == DL_DEV_CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t p;
        st = dnn_st(cudnnGetConvolutionForwardAlgorithm_v7(r->dnn, D.x, D.w, D.c, D.y, 1, &n, &p),
                    "cudnnGetConvolutionForwardAlgorithm_v7");
        if (st == DL_DEV_SUCCESS) {
            *algo = (int)p.algo;
            st = dnn_st(cudnnGetConvolutionForwardWorkspaceSize(r->dnn, D.x, D.w, D.c, D.y, p.algo, ws_bytes),
                        "cudnnGetConvolutionForwardWorkspaceSize");
        }
    } else if (dir == DL_DEV_CONV_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t p;
        st = dnn_st(cudnnGetConvolutionBackwardDataAlgorithm_v7(r->dnn, D.w, D.y, D.c, D.x, 1, &n, &p),
                    "cudnnGetConvolutionBackwardDataAlgorithm_v7");
        if (st == DL_DEV_SUCCESS) {
            *algo = (int)p.algo;
            st = dnn_st(cudnnGetConvolutionBackwardDataWorkspaceSize(r->dnn, D.w, D.y, D.c, D.x, p.algo, ws_bytes),
                        "cudnnGetConvolutionBackwardDataWorkspaceSize");
        }
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t p;
        st = dnn_st(cudnnGetConvolutionBackwardFilterAlgorithm_v7(r->dnn, D.x, D.y, D.c, D.w, 1, &n, &p),
                    "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
        if (st == DL_DEV_SUCCESS) {
            *algo = (int)p.algo;
            st = dnn_st(cudnnGetConvolutionBackwardFilterWorkspaceSize(r->dnn, D.x, D.y, D.c, D.w, p.algo, ws_bytes),
                        "cudnnGetConvolutionBackwardFilterWorkspaceSize");
        }
    }
    descs_free(&D);
    return st;
}

static dl_dev_status real_conv(dl_dev *d, dl_dev_stream *s, dl_dev_conv_dir dir, float alpha,
                               const dl_dev_tensor_desc *xd, const void *x, const dl_dev_filter_desc *wd, const void *w,
                               const dl_dev_tensor_desc *yd, const void *y, const dl_dev_conv_desc *c, int algo,
                               void *ws, size_t ws_bytes, float beta, void *out)
{
    Real *r = R(d);
    Descs D;
    dl_dev_status st = descs_make(&D, xd, wd, c, yd);
    if (st != DL_DEV_SUCCESS) return st;
    st = dnn_st(cudnnSetStream(r->dnn, CS(s)), "cudnnSetStream");
    if (st == DL_DEV_SUCCESS) {
        if (dir == DL_DEV_CONV_FWD)
            st = dnn_st(cudnnConvolutionForward(r->dnn, &alpha, D.x, x, D.w, w, D.c, (cudnnConvolutionFwdAlgo_t)algo,
                                                ws, ws_bytes, &beta, D.y, out),
                        "cudnnConvolutionForward");
        else if (dir == DL_DEV_CONV_BWD_DATA)
            st = dnn_st(cudnnConvolutionBackwardData(r->dnn, &alpha, D.w, w, D.y, y, D.c,
                                                     (cudnnConvolutionBwdDataAlgo_t)algo, ws, ws_bytes, &beta, D.x, out),
                        "cudnnConvolutionBackwardData");
        else
            st = dnn_st(cudnnConvolutionBackwardFilter(r->dnn, &alpha, D.x, x, D.y, y, D.c,
                                                       (cudnnConvolutionBwdFilterAlgo_t)algo, ws, ws_bytes, &beta, D.w,
                                                       out),
                        "cudnnConvolutionBackwardFilter");
    }
    descs_free(&D);
    return st;
}

/* ---- attention and danlu's kernels ---- */
static dl_dev_status kcheck(const char *op, int rc)
{
    if (rc) return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "%s: the launcher refuses its arguments", op);
    return rt(cudaGetLastError(), op);
}
/* kernel 2: the sm_80+ mma kernels (dev.c checked bf16, the head dim and the device), falling
 * back to the portable ones when the mma launcher refuses (shared memory the device cannot give);
 * 1 (and 0, until the cuDNN SDPA graph is wired): the portable kernels. */
static dl_dev_status real_sdpa_forward(dl_dev *d, dl_dev_stream *s, int kernel, const dl_dev_sdpa_desc *a,
                                       const void *q, const void *k, const void *v, void *o, float *lse)
{
    if (kernel == 2 && dl_cuda_attention_forward_mma(a->dt, a->N, a->H, a->Tq, a->Tk, a->d, a->scale, q, a->ldq, k,
                                                     a->ldk, v, a->ldv, o, a->ldo, lse, CS(s)) == 0) {
        d->attn_mma_calls++;
        return rt(cudaGetLastError(), "dl_dev_attention_forward");
    }
    return kcheck("dl_dev_attention_forward",
                  dl_cuda_attention_forward(a->dt, a->N, a->H, a->Tq, a->Tk, a->d, a->scale, q, a->ldq, k, a->ldk, v,
                                            a->ldv, o, a->ldo, lse, CS(s)));
}
static dl_dev_status real_sdpa_backward(dl_dev *d, dl_dev_stream *s, int kernel, const dl_dev_sdpa_desc *a,
                                        const void *q, const void *k, const void *v, const void *o, const void *dout,
                                        const float *lse, float *delta, void *dq, void *dk, void *dv)
{
    if (kernel == 2) {
        /* dQ's fp32 accumulator and the deterministic mode's counters, stream-ordered */
        const size_t wsb = dq ? dl_cuda_attention_backward_mma_workspace_size(a->N, a->H, a->Tq, a->Tk, a->d) : 0;
        void *ws = NULL;
        if (wsb && cudaMallocAsync(&ws, wsb, CS(s)) != cudaSuccess)
            return rt(cudaGetLastError(), "dl_dev_attention_backward: cudaMallocAsync of the dQ accumulator");
        const int rc = dl_cuda_attention_backward_mma(a->dt, a->N, a->H, a->Tq, a->Tk, a->d, a->scale, q, a->ldq, k,
                                                      a->ldk, v, a->ldv, o, dout, a->ldo, lse, delta, dq, dk, dv, 1,
                                                      ws, CS(s));
        if (ws) cudaFreeAsync(ws, CS(s));
        if (rc == 0) {
            d->attn_mma_calls++;
            return rt(cudaGetLastError(), "dl_dev_attention_backward");
        }
    }
    return kcheck("dl_dev_attention_backward",
                  dl_cuda_attention_backward(a->dt, a->N, a->H, a->Tq, a->Tk, a->d, a->scale, q, a->ldq, k, a->ldk, v,
                                             a->ldv, o, dout, a->ldo, lse, delta, dq, dk, dv, CS(s)));
}
static dl_dev_status real_gn_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                     float eps, int silu, const void *x, const float *gamma, const float *beta, void *y,
                                     float *mean, float *rstd, void *ws)
{
    (void)d;
    return kcheck("dl_dev_groupnorm_forward", dl_cuda_groupnorm_forward(dt, N, HW, C, G, eps, silu, x, gamma, beta, y,
                                                                         mean, rstd, ws, CS(s)));
}
static dl_dev_status real_gn_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                      int silu, const void *x, const float *gamma, const float *beta, const float *mean,
                                      const float *rstd, const void *dy, void *dx, float *dgamma, float *dbeta,
                                      void *ws)
{
    (void)d;
    return kcheck("dl_dev_groupnorm_backward", dl_cuda_groupnorm_backward(dt, N, HW, C, G, silu, x, gamma, beta, mean,
                                                                           rstd, dy, dx, dgamma, dbeta, ws, CS(s)));
}
static dl_dev_status real_lora_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                       float scale, const void *x, const void *W, const void *bias, const float *A,
                                       const float *B, float *u, void *y)
{
    (void)d;
    return kcheck("dl_dev_lora_forward",
                  dl_cuda_lora_forward(dt, NULL, M, in, out, rank, scale, x, W, bias, A, B, u, y, CS(s)));
}
static dl_dev_status real_lora_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out,
                                        int rank, float scale, const void *x, const void *W, const float *A,
                                        const float *B, const void *dy, void *dx, float *dA, float *dB, int accumulate,
                                        float *ws)
{
    (void)d;
    return kcheck("dl_dev_lora_backward", dl_cuda_lora_backward(dt, NULL, M, in, out, rank, scale, x, W, A, B, dy, dx,
                                                                 dA, dB, accumulate, ws, CS(s)));
}
static dl_dev_status real_lora_merge(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int out, int in, int rank, float scale,
                                     void *W, const float *A, const float *B, int unmerge)
{
    (void)d;
    int rc = unmerge ? dl_cuda_lora_unmerge(dt, out, in, rank, scale, W, A, B, CS(s))
                     : dl_cuda_lora_merge(dt, out, in, rank, scale, W, A, B, CS(s));
    return kcheck("dl_dev_lora_merge", rc);
}

/* ---- kernels/ops.cu ---- */
static dl_dev_status real_act_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                      void *y)
{
    (void)d;
    return kcheck("dl_dev_act_forward", dl_cuda_act_forward(dt, act, n, x, y, CS(s)));
}
static dl_dev_status real_act_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                       const void *dy, void *dx)
{
    (void)d;
    return kcheck("dl_dev_act_backward", dl_cuda_act_backward(dt, act, n, x, dy, dx, CS(s)));
}
static dl_dev_status real_geglu_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D,
                                        const void *x, void *y)
{
    (void)d;
    return kcheck("dl_dev_geglu_forward", dl_cuda_geglu_forward(dt, M, D, x, y, CS(s)));
}
static dl_dev_status real_geglu_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D,
                                         const void *x, const void *dy, void *dx)
{
    (void)d;
    return kcheck("dl_dev_geglu_backward", dl_cuda_geglu_backward(dt, M, D, x, dy, dx, CS(s)));
}
static dl_dev_status real_add(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *a, const void *b,
                              void *y)
{
    (void)d;
    return kcheck("dl_dev_add", dl_cuda_add(dt, n, a, b, y, CS(s)));
}
static dl_dev_status real_scale(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x,
                                void *y)
{
    (void)d;
    return kcheck("dl_dev_scale", dl_cuda_scale(dt, n, alpha, x, y, CS(s)));
}
static dl_dev_status real_axpy(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x,
                               void *y)
{
    (void)d;
    return kcheck("dl_dev_axpy", dl_cuda_axpy(dt, n, alpha, x, y, CS(s)));
}
static dl_dev_status real_add_bcast_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW,
                                            int64_t C, int per_sample, const void *x, const float *v, void *y)
{
    (void)d;
    return kcheck("dl_dev_add_bcast_forward", dl_cuda_add_bcast_forward(dt, N, HW, C, per_sample, x, v, y, CS(s)));
}
static dl_dev_status real_add_bcast_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW,
                                             int64_t C, int per_sample, const void *dy, void *dx, float *dv)
{
    (void)d;
    return kcheck("dl_dev_add_bcast_backward",
                  dl_cuda_add_bcast_backward(dt, N, HW, C, per_sample, dy, dx, dv, CS(s)));
}
static dl_dev_status real_concat_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                         int64_t C2, const void *a, const void *b, void *y)
{
    (void)d;
    return kcheck("dl_dev_concat_channels_forward", dl_cuda_concat_channels_forward(dt, M, C1, C2, a, b, y, CS(s)));
}
static dl_dev_status real_concat_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                          int64_t C2, const void *dy, void *da, void *db)
{
    (void)d;
    return kcheck("dl_dev_concat_channels_backward",
                  dl_cuda_concat_channels_backward(dt, M, C1, C2, dy, da, db, CS(s)));
}
static dl_dev_status real_upsample_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                           int64_t W, int64_t C, const void *x, void *y)
{
    (void)d;
    return kcheck("dl_dev_upsample_nearest2x_forward", dl_cuda_upsample_nearest2x_forward(dt, N, H, W, C, x, y, CS(s)));
}
static dl_dev_status real_upsample_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                            int64_t W, int64_t C, const void *dy, void *dx)
{
    (void)d;
    return kcheck("dl_dev_upsample_nearest2x_backward",
                  dl_cuda_upsample_nearest2x_backward(dt, N, H, W, C, dy, dx, CS(s)));
}
static dl_dev_status real_pad2d(dl_dev *d, dl_dev_stream *s, int bwd, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                int64_t C, int top, int left, int bottom, int right, const void *src, void *dst)
{
    (void)d;
    if (bwd)
        return kcheck("dl_dev_pad2d_backward",
                      dl_cuda_pad2d_backward(dt, N, H, W, C, top, left, bottom, right, src, dst, CS(s)));
    return kcheck("dl_dev_pad2d_forward",
                  dl_cuda_pad2d_forward(dt, N, H, W, C, top, left, bottom, right, src, dst, CS(s)));
}
static dl_dev_status real_timestep_embedding(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t dim,
                                             const float *t, int flip, float shift, float scale, float max_period,
                                             void *out)
{
    (void)d;
    return kcheck("dl_dev_timestep_embedding",
                  dl_cuda_timestep_embedding(dt, N, dim, t, flip, shift, scale, max_period, out, CS(s)));
}
static dl_dev_status real_layernorm_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C, float eps,
                                            const void *x, const float *gamma, const float *beta, void *y,
                                            float *mean, float *rstd)
{
    (void)d;
    return kcheck("dl_dev_layernorm_forward",
                  dl_cuda_layernorm_forward(dt, M, C, eps, x, gamma, beta, y, mean, rstd, CS(s)));
}
static dl_dev_status real_layernorm_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C,
                                             const void *x, const float *gamma, const float *mean, const float *rstd,
                                             const void *dy, void *dx, float *dgamma, float *dbeta)
{
    (void)d;
    return kcheck("dl_dev_layernorm_backward",
                  dl_cuda_layernorm_backward(dt, M, C, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, CS(s)));
}
static dl_dev_status real_embed_tokens(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t T, int64_t C,
                                       int64_t V, const int32_t *ids, const float *tok, const float *pos, void *out)
{
    (void)d;
    return kcheck("dl_dev_embed_tokens", dl_cuda_embed_tokens(dt, N, T, C, V, ids, tok, pos, out, CS(s)));
}
static dl_dev_status real_embed_tokens_backward(dl_dev *d, dl_dev_stream *s, int64_t N, int64_t T, int64_t C,
                                                int64_t V, const int32_t *ids, const float *dout, float *dtok,
                                                float *dpos)
{
    (void)d;
    return kcheck("dl_dev_embed_tokens_backward",
                  dl_cuda_embed_tokens_backward(N, T, C, V, ids, dout, dtok, dpos, CS(s)));
}
static dl_dev_status real_softmax_forward(dl_dev *d, dl_dev_stream *s, int64_t rows, int64_t cols, float scale,
                                          int64_t causal_tq, const float *x, float *y, float *lse)
{
    (void)d;
    return kcheck("dl_dev_softmax_forward", dl_cuda_softmax_forward(rows, cols, scale, causal_tq, x, y, lse, CS(s)));
}
static dl_dev_status real_softmax_backward(dl_dev *d, dl_dev_stream *s, int64_t rows, int64_t cols, const float *y,
                                           float *dp)
{
    (void)d;
    return kcheck("dl_dev_softmax_backward", dl_cuda_softmax_backward(rows, cols, y, dp, CS(s)));
}
static dl_dev_status real_mse_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                      const void *pred, const void *target, const float *weights, float *per_sample,
                                      float *loss)
{
    (void)d;
    return kcheck("dl_dev_mse_loss_forward",
                  dl_cuda_mse_loss_forward(dt, N, D, pred, target, weights, per_sample, loss, CS(s)));
}
static dl_dev_status real_mse_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                       const void *pred, const void *target, const float *weights, float dloss,
                                       void *dpred, void *dtarget)
{
    (void)d;
    return kcheck("dl_dev_mse_loss_backward",
                  dl_cuda_mse_loss_backward(dt, N, D, pred, target, weights, dloss, dpred, dtarget, CS(s)));
}
static dl_dev_status real_adamw_step(dl_dev *d, dl_dev_stream *s, int64_t n, double lr, double beta1, double beta2,
                                     double eps, double wd, int64_t step, float *p, const float *g, float *m, float *v)
{
    (void)d;
    return kcheck("dl_dev_adamw_step", dl_cuda_adamw_step(n, lr, beta1, beta2, eps, wd, step, p, g, m, v, CS(s)));
}
static dl_dev_status real_sumsq(dl_dev *d, dl_dev_stream *s, int64_t n, const float *x, float *out)
{
    (void)d;
    return kcheck("dl_dev_sumsq", dl_cuda_sumsq(n, x, out, CS(s)));
}
static dl_dev_status real_clip_coef(dl_dev *d, dl_dev_stream *s, const float *sumsq, float max_norm, float *coef)
{
    (void)d;
    return kcheck("dl_dev_clip_coef", dl_cuda_clip_coef(sumsq, max_norm, coef, CS(s)));
}
static dl_dev_status real_scale_by(dl_dev *d, dl_dev_stream *s, int64_t n, const float *coef, float *x)
{
    (void)d;
    return kcheck("dl_dev_scale_by", dl_cuda_scale_by(n, coef, x, CS(s)));
}

static dl_dev_status real_to_f32(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *x, float *y)
{
    (void)d;
    return kcheck("dl_dev_to_f32", dl_cuda_to_f32(dt, n, x, y, CS(s)));
}
static dl_dev_status real_from_f32(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, const float *x, void *y)
{
    (void)d;
    return kcheck("dl_dev_from_f32", dl_cuda_from_f32(dt, n, x, y, CS(s)));
}

static const dl_dev_vt kRealVt = {
    real_close, real_name, real_sync, real_malloc, real_free, real_memcpy, real_memset,
    real_stream_create, real_stream_destroy, real_stream_sync, real_event_create, real_event_destroy,
    real_event_record, real_wait, real_event_sync, real_elapsed, real_gemm,
    real_conv_algo, real_conv, real_sdpa_forward, real_sdpa_backward, real_gn_forward, real_gn_backward,
    real_lora_forward, real_lora_backward, real_lora_merge,
    real_act_forward, real_act_backward, real_geglu_forward, real_geglu_backward, real_add, real_scale, real_axpy,
    real_add_bcast_forward, real_add_bcast_backward, real_concat_forward, real_concat_backward,
    real_upsample_forward, real_upsample_backward, real_pad2d, real_timestep_embedding, real_layernorm_forward,
    real_layernorm_backward, real_embed_tokens, real_embed_tokens_backward, real_softmax_forward, real_softmax_backward, real_mse_forward,
    real_mse_backward, real_adamw_step, real_sumsq, real_clip_coef, real_scale_by, real_to_f32,
    real_from_f32,
};

dl_dev *dl_dev_cuda_open(void)
{
    if (!dl_dev_cuda_present()) {
        dl_dev_fail(DL_DEV_ERR_UNAVAILABLE, "dl_dev_open(real): no CUDA device present");
        return NULL;
    }
    Real *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->head.vt = &kRealVt;
    r->head.kind = DL_DEV_REAL;
    struct cudaDeviceProp p;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&p, 0) != cudaSuccess ||
        cublasLtCreate(&r->lt) != CUBLAS_STATUS_SUCCESS || cudnnCreate(&r->dnn) != CUDNN_STATUS_SUCCESS) {
        dl_dev_fail(DL_DEV_ERR_UNAVAILABLE, "dl_dev_open(real): CUDA, cuBLASLt or cuDNN initialisation failed");
        free(r);
        return NULL;
    }
    snprintf(r->name, sizeof r->name, "%s", p.name);
    r->head.sm = 10 * p.major + p.minor;
    return &r->head;
}
