/* gemm.h - fp32 matrix multiply for the CPU backend, row-major.
 *
 * C[M,N] = alpha * op(A) · op(B) + beta * C, where op(A) is [M,K] (A stored [M,K] with leading
 * dimension lda, or [K,M] when transA), op(B) is [K,N] (B stored [K,N], or [N,K] when transB).
 * beta == 0 overwrites C without reading it (NaN in C does not propagate). Threads from ctx.
 *
 * Implementation: B is packed once into NR-wide panels, A into MR-row strips per KC block, and a
 * register-blocked micro-kernel (AVX-512 14x32 when the CPU has it, else AVX2 6x16) computes
 * MR x NR tiles; threads split the (row block, column block) tiles. Small products (a few row
 * strips, e.g. the 77 text tokens' projections) run in one parallel region where threads take
 * column blocks and pack their own B panels; the path is chosen by shape only, so results do not
 * depend on the thread count. */
#ifndef DANLU_CPU_GEMM_H
#define DANLU_CPU_GEMM_H

#include "core/ctx.h"
#include "core/dtype.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void dl_sgemm(const dl_ctx *ctx, int transA, int transB, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
              float beta, float *C, int64_t ldc);

/* Writes element (m0+r, k0+k) of a virtual op(A) [M,K] to dst[r*rs + k*ks] for r < mr, k < kc
 * (rows mr.. of the strip are zeroed by the caller). Called concurrently from several threads
 * (user is shared, read-only). */
typedef void (*dl_gemm_pack_a_fn)(const void *user, int64_t m0, int mr, int64_t k0, int kc,
                                  float *dst, int64_t rs, int64_t ks);

/* Same product with op(A) produced by a packing callback (implicit GEMM: convolutions pack
 * im2col rows on the fly, never materialising them). a_kmajor picks the strip layout the
 * callback writes fastest: 0 = row-major (ks == 1, rows contiguous in k), 1 = k-major
 * (rs == 1, the strip's rows contiguous for each k). B and C as in dl_sgemm. */
void dl_sgemm_packed_a(const dl_ctx *ctx, int64_t M, int64_t N, int64_t K, float alpha,
                       dl_gemm_pack_a_fn pack_a, const void *user, int a_kmajor, int transB,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* The general form: op(A) [M,K] from pack_a and op(B)^T [N,K] from pack_bt (element (n, k) of
 * op(B)^T is op(B)[k, n]); *_kmajor give each callback's preferred strip layout. When M is
 * small against N the product is computed transposed (C^T = op(B)^T · op(A)^T) so that the
 * large operand is not packed whole. C as in dl_sgemm. */
void dl_sgemm_cb(const dl_ctx *ctx, int64_t M, int64_t N, int64_t K, float alpha,
                 dl_gemm_pack_a_fn pack_a, const void *ua, int a_kmajor,
                 dl_gemm_pack_a_fn pack_bt, const void *ub, int bt_kmajor,
                 float beta, float *C, int64_t ldc);

/* dl_sgemm / dl_sgemm_packed_a with B of type bdt: DL_F32, or DL_F16 / DL_BF16 (frozen weights
 * kept in the checkpoint's type). Each value of B is converted exactly to fp32 as it is packed:
 * the result is bit for bit the product with the converted matrix. */
void dl_sgemm_t(const dl_ctx *ctx, int transA, int transB, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, const void *B, dl_dtype bdt, int64_t ldb,
                float beta, float *C, int64_t ldc);
void dl_sgemm_packed_a_t(const dl_ctx *ctx, int64_t M, int64_t N, int64_t K, float alpha,
                         dl_gemm_pack_a_fn pack_a, const void *user, int a_kmajor, int transB,
                         const void *B, dl_dtype bdt, int64_t ldb, float beta, float *C, int64_t ldc);

/* The micro-kernel in use: "avx512 14x32", "avx2 6x16" (for benchmark reports). */
const char *dl_sgemm_kernel_name(void);

#ifdef __cplusplus
}
#endif
#endif
