/* gemm.h - fp32 matrix multiply for the CPU backend, row-major.
 *
 * C[M,N] = alpha * op(A) · op(B) + beta * C, where op(A) is [M,K] (A stored [M,K] with leading
 * dimension lda, or [K,M] when transA), op(B) is [K,N] (B stored [K,N], or [N,K] when transB).
 * beta == 0 overwrites C without reading it (NaN in C does not propagate). Threads from ctx. */
#ifndef DANLU_CPU_GEMM_H
#define DANLU_CPU_GEMM_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void dl_sgemm(const dl_ctx *ctx, int transA, int transB, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
              float beta, float *C, int64_t ldc);

#ifdef __cplusplus
}
#endif
#endif
