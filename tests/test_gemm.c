/* test_gemm.c - dl_sgemm against a float64 reference: every transpose pair, alpha/beta, odd and
 * edge sizes, padded leading dimensions, each micro-kernel (AVX-512, AVX2, generic). */
#include "ops/cpu/gemm.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL 12345.f

typedef struct { int64_t M, N, K; } gemm_size;

static const gemm_size SIZES[] = {
    {1, 1, 1}, {1, 37, 5}, {29, 1, 3}, {13, 31, 17}, {14, 32, 256}, {15, 33, 257},
    {6, 16, 8}, {7, 17, 9}, {29, 65, 300}, {100, 70, 513}, {64, 96, 64},
    /* small M, large N and K: computed as C^T = B^T A^T */
    {3, 200, 40}, {2, 130, 300}, {20, 300, 200}, {33, 170, 280},
};

/* Runs one case; returns nothing, records expectations. ld* are padded by 3 to test strides. */
static void run_case(const dl_ctx *ctx, gemm_size sz, int ta, int tb, float alpha, float beta, uint64_t seed)
{
    const int64_t M = sz.M, N = sz.N, K = sz.K;
    const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 3, ldc = N + 3;
    const int64_t arows = ta ? K : M, brows = tb ? N : K;
    float *A = malloc((size_t)(arows * lda) * sizeof(float));
    float *B = malloc((size_t)(brows * ldb) * sizeof(float));
    float *C = malloc((size_t)(M * ldc + 16) * sizeof(float));
    float *C0 = malloc((size_t)(M * ldc + 16) * sizeof(float));
    tu_fill_uniform(A, (size_t)(arows * lda), seed, -1.f, 1.f);
    tu_fill_uniform(B, (size_t)(brows * ldb), seed + 1, -1.f, 1.f);
    tu_fill_uniform(C0, (size_t)(M * ldc), seed + 2, -1.f, 1.f);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = N; n < ldc; n++) C0[m * ldc + n] = SENTINEL;
    for (int i = 0; i < 16; i++) C0[M * ldc + i] = SENTINEL;
    for (int64_t i = 0; i < M * ldc + 16; i++) C[i] = C0[i];
    if (beta == 0.f) /* beta == 0 must not read C */
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) C[m * ldc + n] = NAN;

    dl_sgemm(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);

    float *got = malloc((size_t)(M * N) * sizeof(float));
    double *ref = malloc((size_t)(M * N) * sizeof(double));
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)(ta ? A[k * lda + m] : A[m * lda + k]) * (double)(tb ? B[n * ldb + k] : B[k * ldb + n]);
            ref[m * N + n] = alpha * acc + (beta == 0.f ? 0.0 : (double)beta * C0[m * ldc + n]);
            got[m * N + n] = C[m * ldc + n];
        }
    char label[160];
    snprintf(label, sizeof label, "sgemm[%s] M=%lld N=%lld K=%lld ta=%d tb=%d alpha=%g beta=%g seed=%llu",
             dl_sgemm_kernel_name(), (long long)M, (long long)N, (long long)K, ta, tb, alpha, beta,
             (unsigned long long)seed);
    tu_expect_close_d(got, ref, (size_t)(M * N), 1e-5, label);
    int guard_ok = 1;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = N; n < ldc; n++) guard_ok &= C[m * ldc + n] == SENTINEL;
    for (int i = 0; i < 16; i++) guard_ok &= C[M * ldc + i] == SENTINEL;
    cr_expect(guard_ok, "%s: wrote outside the C tile", label);
    free(A); free(B); free(C); free(C0); free(got); free(ref);
}

static void run_all(const char *kernel)
{
    if (kernel) setenv("DANLU_CPU_ISA", kernel, 1); /* each Criterion test is its own process */
    uint64_t seed = 100;
    for (size_t i = 0; i < sizeof SIZES / sizeof SIZES[0]; i++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                run_case(tu_ctx(), SIZES[i], ta, tb, 1.f, 0.f, seed++);
                run_case(tu_ctx(), SIZES[i], ta, tb, -0.5f, 0.75f, seed++);
            }
}

Test(gemm, best_kernel) { run_all(NULL); }
Test(gemm, avx2_kernel) { run_all("avx2"); }
Test(gemm, generic_kernel) { run_all("generic"); }

Test(gemm, single_thread_and_large)
{
    gemm_size big = {300, 130, 700};
    run_case(NULL, big, 0, 1, 1.f, 0.f, 7);
    run_case(tu_ctx(), big, 1, 0, 2.f, 1.f, 8);
}

Test(gemm, k_zero_scales_c)
{
    float C[6] = {1, 2, 3, 4, 5, 6};
    dl_sgemm(tu_ctx(), 0, 0, 2, 3, 0, 1.f, NULL, 1, NULL, 3, 0.5f, C, 3);
    for (int i = 0; i < 6; i++) cr_expect_float_eq(C[i], 0.5f * (i + 1), 1e-7);
    float D[4] = {NAN, NAN, NAN, NAN};
    dl_sgemm(tu_ctx(), 0, 0, 2, 2, 0, 1.f, NULL, 1, NULL, 2, 0.f, D, 2);
    for (int i = 0; i < 4; i++) cr_expect(D[i] == 0.f, "beta=0, K=0 must zero C, got %g", D[i]);
}

Test(gemm, kernel_name)
{
    const char *name = dl_sgemm_kernel_name();
    cr_expect(name && *name);
    cr_log_info("sgemm kernel: %s", name);
}

/* Every C element is accumulated by one thread in a fixed K-block order, so the result does not
 * depend on the thread count. */
Test(gemm, thread_count_invariant)
{
    const int64_t M = 150, N = 70, K = 600;
    float *A = malloc((size_t)(M * K) * 4), *B = malloc((size_t)(N * K) * 4);
    float *C1 = malloc((size_t)(M * N) * 4), *C2 = malloc((size_t)(M * N) * 4);
    tu_fill_uniform(A, (size_t)(M * K), 41, -1.f, 1.f);
    tu_fill_uniform(B, (size_t)(N * K), 42, -1.f, 1.f);
    dl_sgemm(NULL, 0, 1, M, N, K, 1.f, A, K, B, K, 0.f, C1, N);
    dl_sgemm(tu_ctx(), 0, 1, M, N, K, 1.f, A, K, B, K, 0.f, C2, N);
    cr_expect(memcmp(C1, C2, (size_t)(M * N) * 4) == 0, "sgemm differs between 1 and %d threads",
              dl_pool_nthreads(tu_ctx()->pool));
    free(A); free(B); free(C1); free(C2);
}
