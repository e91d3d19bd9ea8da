/* gemm.c - fp32 GEMM (placeholder: straightforward threaded loops; replaced by a packed
 * AVX-512/AVX2 kernel). */
#include "gemm.h"

typedef struct {
    int ta, tb; int64_t M, N, K; float alpha, beta;
    const float *A; int64_t lda; const float *B; int64_t ldb; float *C; int64_t ldc;
} gemm_job;

static void gemm_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    const gemm_job *j = arg;
    for (int64_t m = m0; m < m1; m++) {
        float *c = j->C + m * j->ldc;
        for (int64_t n = 0; n < j->N; n++) c[n] = j->beta == 0.f ? 0.f : j->beta * c[n];
        for (int64_t k = 0; k < j->K; k++) {
            float a = j->alpha * (j->ta ? j->A[k * j->lda + m] : j->A[m * j->lda + k]);
            if (!j->tb) {
                const float *b = j->B + k * j->ldb;
                for (int64_t n = 0; n < j->N; n++) c[n] += a * b[n];
            } else {
                for (int64_t n = 0; n < j->N; n++) c[n] += a * j->B[n * j->ldb + k];
            }
        }
    }
}

void dl_sgemm(const dl_ctx *ctx, int transA, int transB, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
              float beta, float *C, int64_t ldc)
{
    gemm_job j = {transA, transB, M, N, K, alpha, beta, A, lda, B, ldb, C, ldc};
    dl_parallel_for(ctx ? ctx->pool : NULL, M, 4, gemm_rows, &j);
}
