/* ctx.h - the execution context passed to every op: no global state.
 * CPU ops use pool for threads; CUDA ops take a stream as an explicit argument beside it.
 * Networks reach the ops through the backend table of the context: dl_be(ctx)->op(ctx, ...).
 *
 * Workspace: the context owns reusable scratch memory so that ops allocate nothing once they
 * have run at their largest shapes (the steady state of a training step). There is one
 * buffer per pool thread and a few shared buffers ("slots"); each grows (64-byte aligned,
 * contents not kept) only when a call asks for more than it holds, and every growth is
 * counted (dl_ctx_workspace_grows).
 *
 * Rules:
 * - dl_ws_thread(ctx, tid, ...) is called only from inside a dl_parallel_for range function
 *   with the tid that dl_parallel_for passed: each thread touches only its own buffer. Only
 *   leaf ops (ops that call no other op while holding it) use the thread buffers.
 * - dl_ws_shared(ctx, slot, ...) is called only by the thread that issues the op, before or
 *   between its parallel sections, never from inside a range function. An op and every op
 *   it calls use distinct slots (the list below).
 * - Ops that use the workspace are not called from inside a range function on the same ctx
 *   (nested dl_parallel_for runs with tid 0, which would share the caller's buffer), and one
 *   ctx is not used by two threads at once.
 * - Without a workspace (ctx == NULL, or a ctx that dl_ctx_init did not set up, e.g. {0})
 *   the calls fall back to malloc: pair every dl_ws_thread / dl_ws_shared with dl_ws_release,
 *   which frees only in that case. Returned memory is uninitialised. */
#ifndef DANLU_CTX_H
#define DANLU_CTX_H

#include "threadpool.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_workspace dl_workspace;
struct dl_backend;

/* How the CPU runs 3x3 stride-1 convolution forwards (ops/cpu/conv_winograd.h). */
typedef enum {
    DL_CONV_AUTO = 0,  /* DANLU_CONV=direct|winograd if set, else Winograd where it pays */
    DL_CONV_DIRECT,    /* implicit GEMM always (the trainer's choice) */
    DL_CONV_WINOGRAD,  /* Winograd for every shape it supports */
} dl_conv_algo;

typedef struct dl_ctx {
    dl_pool *pool;     /* CPU threads (may be NULL: run on the caller) */
    dl_workspace *ws;  /* reusable scratch (may be NULL: ops malloc their scratch) */
    const struct dl_backend *be; /* the op table networks call (backend/backend.h); NULL: CPU */
    void *be_state;    /* the backend's own state (its device, stream, workspace), or NULL */
    int conv_algo;     /* dl_conv_algo (0: auto) */
    int compute_dtype; /* dl_dtype the matrix products of linear layers, LoRA and attention multiply
                          in: DL_F32 (0), or a type in the backend's compute_dtypes (DL_BF16:
                          inputs rounded to bf16, fp32 accumulation); tensors stay fp32 */
} dl_ctx;

/* Shared workspace slots, one per (op, buffer). Callers of other ops in brackets. */
enum {
    DL_WS_GEMM_B = 0,    /* gemm.c: packed B panels */
    DL_WS_GEMM_T,        /* gemm.c: transposed C of the swapped product */
    DL_WS_CONV_DX,       /* conv2d.c: strided dx phase buffer (calls gemm) */
    DL_WS_CONV_DW,       /* conv2d.c: transposed dw (calls gemm) */
    DL_WS_CONV_WINO,     /* conv_winograd.c: transformed weights */
    DL_WS_ATTN_DQ,       /* attention.c: backward dQ partials */
    DL_WS_GN_PART,       /* groupnorm.c: per-block partial sums */
    DL_WS_GN_COEF,       /* groupnorm.c: per-channel coefficients */
    DL_WS_LN_PART,       /* layernorm.c: backward per-block partial sums */
    DL_WS_BIAS_PART,     /* linear.c: bias gradient per-thread partials */
    DL_WS_NSLOTS
};

/* nthreads <= 0: DANLU_THREADS or every core; the backend is the CPU one (dl_backend_cpu).
 * Returns DL_OK or DL_ERR. */
int dl_ctx_init(dl_ctx *ctx, int nthreads);
/* dl_ctx_init with the op table be (backend/backend.h: dl_backend_cpu, dl_backend_find). */
int dl_ctx_init_backend(dl_ctx *ctx, int nthreads, const struct dl_backend *be);
/* Stops the pool and frees the workspace. */
void dl_ctx_free(dl_ctx *ctx);
/* The op table of ctx: ctx->be, or the CPU backend when ctx or ctx->be is NULL (a ctx built
 * as {0} or {pool, ws}). Never NULL. */
const struct dl_backend *dl_be(const dl_ctx *ctx);

/* At least `bytes` of 64-byte aligned scratch private to thread tid (0 <= tid < pool
 * threads), valid until the next dl_ws_thread call for the same tid or dl_ctx_free. */
void *dl_ws_thread(const dl_ctx *ctx, int tid, size_t bytes);
/* At least `bytes` of 64-byte aligned scratch in shared slot (DL_WS_*), valid until the next
 * dl_ws_shared call for the same slot or dl_ctx_free. */
void *dl_ws_shared(const dl_ctx *ctx, int slot, size_t bytes);
/* End of use of p from dl_ws_thread / dl_ws_shared: frees it when ctx has no workspace. */
void dl_ws_release(const dl_ctx *ctx, void *p);
/* Number of times the workspace of ctx grew a buffer since dl_ctx_init (0 without one). */
size_t dl_ctx_workspace_grows(const dl_ctx *ctx);
/* Bytes the workspace holds now, all buffers together (0 without one). */
size_t dl_ctx_workspace_bytes(const dl_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
