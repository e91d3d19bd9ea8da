/* gemm.c - packed, cache-blocked fp32 GEMM with AVX-512 / AVX2 register-blocked micro-kernels. */
#include "gemm.h"
#include "core/cpu_isa.h"
#include "core/dtype.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DL_GEMM_X86 1
#endif

/* Largest micro-tile rows and the K block: a packed A strip (MR x KC floats) stays in L1 while
 * the packed B block (KC x NC) streams from L2. */
#define GEMM_MR_MAX 14
#define GEMM_KC 256
#define GEMM_NC 1024      /* columns per work item (rounded to NR); B block KC x NC = 1 MiB */
#define GEMM_MB_STRIPS 8  /* MR-row strips per work item */
#define GEMM_C_BUDGET (768 << 10) /* bytes of C one run of items keeps hot across K blocks */
/* Row stride of a row-major A strip: padded by one cache line so the strip's rows do not all
 * fall into the same few L1 sets. */
#define GEMM_ARS (GEMM_KC + 16)
/* Packed B floats up to which a small product (M within one row item) is never swapped and
 * runs in one parallel region (gemm_fused_items): 4 Mi floats = 16 MiB (77 tokens x 768 -> 3072
 * measured ~9 % faster this way than swapped, 768 -> 768 ~20 %). */
#define GEMM_SMALL_B_FLOATS (4096 << 10)
/* Column panels per work unit of such a product: 2 x NR columns (A strips are re-packed per
 * unit, so 1 costs ~10 %; more makes the last units too coarse to balance). */
#define GEMM_FUSED_PANELS 2

/* kc steps over a packed A strip and b [kc][NR]; the MR x NR tile goes to c (only the mr x nr
 * corner is stored): c = alpha * acc + beta * c, c not read when beta == 0. The A strip is
 * k-major, a[k*MR + r] (ukr_k), or row-major with row stride GEMM_ARS, a[r*GEMM_ARS + k] (ukr_r). */
typedef void (*gemm_ukr_fn)(int kc, const float *a, const float *b, float *c, int64_t ldc,
                            int mr, int nr, float alpha, float beta);

typedef struct {
    const char *name;
    int MR, NR;
    gemm_ukr_fn ukr_k, ukr_r;
} gemm_kernel;

/* ---- portable micro-kernel (4 x 16), also the reference for non-x86 builds ---- */
static inline void ukr_generic_body(int kc, const float *a, const float *b, float *c, int64_t ldc,
                                    int mr, int nr, float alpha, float beta, int RS, int KS)
{
    float acc[4][16];
    memset(acc, 0, sizeof acc);
    for (int k = 0; k < kc; k++) {
        for (int r = 0; r < 4; r++) {
            float av = a[k * KS + r * RS];
            for (int j = 0; j < 16; j++) acc[r][j] += av * b[k * 16 + j];
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        for (int j = 0; j < nr; j++)
            cr[j] = beta == 0.f ? alpha * acc[r][j] : alpha * acc[r][j] + beta * cr[j];
    }
}

static void ukr_generic_k(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                          int nr, float alpha, float beta)
{
    ukr_generic_body(kc, a, b, c, ldc, mr, nr, alpha, beta, 1, 4);
}

static void ukr_generic_r(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                          int nr, float alpha, float beta)
{
    ukr_generic_body(kc, a, b, c, ldc, mr, nr, alpha, beta, GEMM_ARS, 1);
}

#ifdef DL_GEMM_X86
/* ---- AVX2 + FMA micro-kernel: 6 rows x 16 columns, 12 ymm accumulators ---- */
__attribute__((target("avx2,fma"), always_inline))
static inline void ukr_avx2_body(int kc, const float *a, const float *b, float *c, int64_t ldc,
                                 int mr, int nr, float alpha, float beta, const int RS, const int KS)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), t;
#define ROW6(r)                                          \
    t = _mm256_broadcast_ss(a + r * RS);                      \
    c##r##0 = _mm256_fmadd_ps(t, b0, c##r##0);           \
    c##r##1 = _mm256_fmadd_ps(t, b1, c##r##1);
        ROW6(0) ROW6(1) ROW6(2) ROW6(3) ROW6(4) ROW6(5)
#undef ROW6
        a += KS;
        b += 16;
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (nr == 16) {
#define ST6(r)                                                                         \
    if (r < mr) {                                                                      \
        float *cr = c + r * ldc;                                                       \
        __m256 x0 = _mm256_mul_ps(c##r##0, va), x1 = _mm256_mul_ps(c##r##1, va);       \
        if (beta != 0.f) {                                                             \
            x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), x0);                         \
            x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), x1);                     \
        }                                                                              \
        _mm256_storeu_ps(cr, x0);                                                      \
        _mm256_storeu_ps(cr + 8, x1);                                                  \
    }
        ST6(0) ST6(1) ST6(2) ST6(3) ST6(4) ST6(5)
#undef ST6
        return;
    }
    /* column edge: spill the tile, then store the valid corner */
    float tile[6][16] __attribute__((aligned(32)));
#define SP6(r) _mm256_store_ps(tile[r], c##r##0); _mm256_store_ps(tile[r] + 8, c##r##1);
    SP6(0) SP6(1) SP6(2) SP6(3) SP6(4) SP6(5)
#undef SP6
    for (int r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        for (int j = 0; j < nr; j++)
            cr[j] = beta == 0.f ? alpha * tile[r][j] : alpha * tile[r][j] + beta * cr[j];
    }
}

__attribute__((target("avx2,fma")))
static void ukr_avx2_k(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                       int nr, float alpha, float beta)
{
    ukr_avx2_body(kc, a, b, c, ldc, mr, nr, alpha, beta, 1, 6);
}

__attribute__((target("avx2,fma")))
static void ukr_avx2_r(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                       int nr, float alpha, float beta)
{
    ukr_avx2_body(kc, a, b, c, ldc, mr, nr, alpha, beta, GEMM_ARS, 1);
}

/* ---- AVX-512 micro-kernel: 14 rows x 32 columns, 28 zmm accumulators ---- */
#define DL_AVX512 "avx512f,avx512vl,avx512dq,avx512bw,fma"
__attribute__((target(DL_AVX512), always_inline))
static inline void ukr_avx512_body(int kc, const float *a, const float *b, float *c, int64_t ldc,
                                   int mr, int nr, float alpha, float beta, const int RS, const int KS)
{
    __m512 z = _mm512_setzero_ps();
    __m512 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    __m512 c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z, c70 = z, c71 = z;
    __m512 c80 = z, c81 = z, c90 = z, c91 = z, cA0 = z, cA1 = z, cB0 = z, cB1 = z;
    __m512 cC0 = z, cC1 = z, cD0 = z, cD1 = z;
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), t;
        _mm_prefetch((const char *)(b + 32 * 8), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 32 * 8 + 16), _MM_HINT_T0);
#define ROW14(r, i)                                      \
    t = _mm512_set1_ps(a[i * RS]);                            \
    c##r##0 = _mm512_fmadd_ps(t, b0, c##r##0);           \
    c##r##1 = _mm512_fmadd_ps(t, b1, c##r##1);
        ROW14(0, 0) ROW14(1, 1) ROW14(2, 2) ROW14(3, 3) ROW14(4, 4) ROW14(5, 5) ROW14(6, 6)
        ROW14(7, 7) ROW14(8, 8) ROW14(9, 9) ROW14(A, 10) ROW14(B, 11) ROW14(C, 12) ROW14(D, 13)
#undef ROW14
        a += KS;
        b += 32;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1u);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1u) : 0;
#define ST14(r, i)                                                                          \
    if (i < mr) {                                                                           \
        float *cr = c + (int64_t)i * ldc;                                                   \
        __m512 x0 = _mm512_mul_ps(c##r##0, va), x1 = _mm512_mul_ps(c##r##1, va);            \
        if (beta != 0.f) {                                                                  \
            x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), x0);                    \
            x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), x1);               \
        }                                                                                   \
        _mm512_mask_storeu_ps(cr, m0, x0);                                                  \
        _mm512_mask_storeu_ps(cr + 16, m1, x1);                                             \
    }
    ST14(0, 0) ST14(1, 1) ST14(2, 2) ST14(3, 3) ST14(4, 4) ST14(5, 5) ST14(6, 6)
    ST14(7, 7) ST14(8, 8) ST14(9, 9) ST14(A, 10) ST14(B, 11) ST14(C, 12) ST14(D, 13)
#undef ST14
}

__attribute__((target(DL_AVX512)))
static void ukr_avx512_k(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                         int nr, float alpha, float beta)
{
    ukr_avx512_body(kc, a, b, c, ldc, mr, nr, alpha, beta, 1, 14);
}

__attribute__((target(DL_AVX512)))
static void ukr_avx512_r(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                         int nr, float alpha, float beta)
{
    ukr_avx512_body(kc, a, b, c, ldc, mr, nr, alpha, beta, GEMM_ARS, 1);
}
#endif

static const gemm_kernel k_generic = {"generic 4x16", 4, 16, ukr_generic_k, ukr_generic_r};
#ifdef DL_GEMM_X86
static const gemm_kernel k_avx2 = {"avx2 6x16", 6, 16, ukr_avx2_k, ukr_avx2_r};
static const gemm_kernel k_avx512 = {"avx512 14x32", 14, 32, ukr_avx512_k, ukr_avx512_r};
#endif

/* The kernel of the path dl_cpu_isa() chooses (DANLU_CPU_ISA=avx2|generic forces a narrower
 * one: tests run all three). */
static const gemm_kernel *pick_kernel(void)
{
#ifdef DL_GEMM_X86
    switch (dl_cpu_isa()) {
    case DL_ISA_AVX512: return &k_avx512;
    case DL_ISA_AVX2: return &k_avx2;
    default: break;
    }
#endif
    return &k_generic;
}

const char *dl_sgemm_kernel_name(void) { return pick_kernel()->name; }

/* ---- packing ---- */

/* A stored matrix: fp32, or fp16 / bf16 (frozen weights kept in the checkpoint's type), each
 * value converted exactly to fp32 as it is packed, so the product is the one of the converted
 * matrix bit for bit. */
typedef struct { const void *A; int64_t lda; int transA; dl_dtype dt; } plain_a;

#ifdef DL_GEMM_X86
/* dst[i * 32 + r] = src[r * lds + i] for a 16 x 16 block (a transpose into a 32-wide B panel):
 * unpack pairs of rows, then 4-row groups, then 128-bit lanes twice. Moves data only. */
/* Row r of a 16 x 16 block at src (leading dimension lds, in elements of type dt). */
__attribute__((target(DL_AVX512), always_inline))
static inline __m512 load_row16(const void *src, int64_t lds, int r, dl_dtype dt)
{
    if (dt == DL_F32) return _mm512_loadu_ps((const float *)src + r * lds);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)src + r * lds));
    if (dt == DL_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* bf16 */
}

__attribute__((target(DL_AVX512)))
static void transpose16_to_panel32(const void *src, int64_t lds, dl_dtype dt, float *dst)
{
    __m512 t[16], u[16];
    for (int r = 0; r < 16; r += 2) {
        __m512 a = load_row16(src, lds, r, dt), b = load_row16(src, lds, r + 1, dt);
        t[r] = _mm512_unpacklo_ps(a, b);     /* per lane: a0 b0 a1 b1 */
        t[r + 1] = _mm512_unpackhi_ps(a, b); /* per lane: a2 b2 a3 b3 */
    }
    for (int g = 0; g < 16; g += 4) { /* u[g + j], lane L: rows g..g+3 at column 4L + j */
        u[g + 0] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        __m512 a8 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), aD = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
        __m512 b8 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88), bD = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
        _mm512_storeu_ps(dst + (j + 0) * 32, _mm512_shuffle_f32x4(a8, b8, 0x88));
        _mm512_storeu_ps(dst + (j + 8) * 32, _mm512_shuffle_f32x4(a8, b8, 0xDD));
        _mm512_storeu_ps(dst + (j + 4) * 32, _mm512_shuffle_f32x4(aD, bD, 0x88));
        _mm512_storeu_ps(dst + (j + 12) * 32, _mm512_shuffle_f32x4(aD, bD, 0xDD));
    }
}

/* dst[k * 32 + r] = A[r * lda + k] for r < mr (<= 32), k < kc: rows of a row-major matrix
 * into a 32-wide k-major panel, 16 x 16 blocks through registers, the edges scalar. */
__attribute__((target(DL_AVX512)))
static void pack_rows_panel32_avx512(const void *A, int64_t lda, dl_dtype dt, int mr, int kc, float *dst)
{
    const size_t es = dl_dtype_size(dt);
    const char *a = A;
    float row[GEMM_KC];
    int r0 = 0;
    for (; r0 + 16 <= mr; r0 += 16) {
        int k = 0;
        for (; k + 16 <= kc; k += 16)
            transpose16_to_panel32(a + ((size_t)r0 * lda + k) * es, lda, dt, dst + k * 32 + r0);
        for (int r = r0; k < kc && r < r0 + 16; r++) {
            if (dt == DL_F32) memcpy(row, a + ((size_t)r * lda + k) * es, (size_t)(kc - k) * 4);
            else dl_run16_to_f32(row, a + ((size_t)r * lda + k) * es, dt, kc - k);
            for (int q = k; q < kc; q++) dst[q * 32 + r] = row[q - k];
        }
    }
    for (int r = r0; r < mr; r++) {
        if (dt == DL_F32) memcpy(row, a + (size_t)r * lda * es, (size_t)kc * 4);
        else dl_run16_to_f32(row, a + (size_t)r * lda * es, dt, kc);
        for (int k = 0; k < kc; k++) dst[k * 32 + r] = row[k];
    }
}
#endif

/* pack_a_plain for fp16 / bf16: each run of values converted to fp32 first (kc, mr <= GEMM_KC). */
static void pack_a_typed(const plain_a *p, int64_t m0, int mr, int64_t k0, int kc, float *dst, int64_t rs, int64_t ks)
{
    const char *a = p->A;
    float row[GEMM_KC];
    if (!p->transA) {
        for (int r = 0; r < mr; r++) {
            const char *src = a + ((size_t)(m0 + r) * p->lda + k0) * 2;
            if (ks == 1) dl_run16_to_f32(dst + r * rs, src, p->dt, kc);
            else {
                dl_run16_to_f32(row, src, p->dt, kc);
                for (int k = 0; k < kc; k++) dst[k * ks + r * rs] = row[k];
            }
        }
    } else {
        for (int k = 0; k < kc; k++) {
            const char *src = a + ((size_t)(k0 + k) * p->lda + m0) * 2;
            if (rs == 1) dl_run16_to_f32(dst + k * ks, src, p->dt, mr);
            else {
                dl_run16_to_f32(row, src, p->dt, mr);
                for (int r = 0; r < mr; r++) dst[k * ks + r * rs] = row[r];
            }
        }
    }
}

/* Default A packer for a stored matrix (op(A) = A or A^T). */
static void pack_a_plain(const void *user, int64_t m0, int mr, int64_t k0, int kc, float *dst,
                         int64_t rs, int64_t ks)
{
    const plain_a *p = user;
#ifdef DL_GEMM_X86
    /* ks == 32 only with the AVX-512 kernel (NR 32), which runs only where the CPU has it: no
     * per-panel look at DANLU_CPU_ISA, the native capability (cached) guards the instruction set */
    if (!p->transA && rs == 1 && ks == 32 && mr <= 32 && dl_cpu_isa_native() >= DL_ISA_AVX512) {
        pack_rows_panel32_avx512((const char *)p->A + (size_t)(m0 * p->lda + k0) * dl_dtype_size(p->dt), p->lda,
                                 p->dt, mr, kc, dst); /* B panels */
        return;
    }
#endif
    if (p->dt != DL_F32) {
        pack_a_typed(p, m0, mr, k0, kc, dst, rs, ks);
        return;
    }
    const float *A = p->A;
    if (!p->transA) {
        for (int r = 0; r < mr; r++) {
            const float *src = A + (m0 + r) * p->lda + k0;
            if (ks == 1) memcpy(dst + r * rs, src, (size_t)kc * sizeof(float));
            else for (int k = 0; k < kc; k++) dst[k * ks + r * rs] = src[k];
        }
    } else {
        for (int k = 0; k < kc; k++) {
            const float *src = A + (k0 + k) * p->lda + m0;
            if (rs == 1) for (int r = 0; r < mr; r++) dst[k * ks + r] = src[r];
            else for (int r = 0; r < mr; r++) dst[k * ks + r * rs] = src[r];
        }
    }
}

/* The packed B: for the K block starting at k0 (size kc), panel j lives at
 * Bp + k0 * Npad + j * kc * NR, laid out [kc][NR], zero beyond column N. It is produced by a
 * pack callback over op(B)^T [N, K]: element (n, k) of that matrix is op(B)[k, n]. */
typedef struct {
    dl_gemm_pack_a_fn cb; const void *cbu;
    int64_t N, K, Npad; int KCb, NR, npanels, nkb;
    float *Bp;
} packb_job;

static void pack_b_items(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const packb_job *p = arg;
    const int NR = p->NR;
    for (int64_t it = i0; it < i1; it++) {
        int q = (int)(it / p->npanels), j = (int)(it % p->npanels);
        int64_t k0 = (int64_t)q * p->KCb;
        int kc = (int)(p->K - k0 < p->KCb ? p->K - k0 : p->KCb);
        int64_t n0 = (int64_t)j * NR;
        int nr = (int)(p->N - n0 < NR ? p->N - n0 : NR);
        float *dst = p->Bp + k0 * p->Npad + (int64_t)j * kc * NR;
        if (nr < NR) memset(dst, 0, (size_t)kc * NR * sizeof(float));
        p->cb(p->cbu, n0, nr, k0, kc, dst, 1, NR);
    }
}

/* ---- the blocked product ---- */

typedef struct {
    const gemm_kernel *kr;
    int64_t M, N, K;
    float alpha, beta;
    dl_gemm_pack_a_fn pack_a;
    const void *ua;
    int a_kmajor;
    const float *Bp;
    int64_t Npad;
    int KCb, nkb;
    float *C; int64_t ldc;
    int nstrips, mb_strips, nmb;   /* row strips, strips per item, row items */
    int npanels, pb_panels;        /* column panels, panels per item */
} gemm_job;

static void gemm_items(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const gemm_job *g = arg;
    const int MR = g->kr->MR, NR = g->kr->NR;
    gemm_ukr_fn ukr = g->a_kmajor ? g->kr->ukr_k : g->kr->ukr_r;
    const int64_t rs = g->a_kmajor ? 1 : GEMM_ARS, ks = g->a_kmajor ? MR : 1;
    float abuf[GEMM_MR_MAX * GEMM_ARS] __attribute__((aligned(64)));
    /* runs of items sharing a column block: K blocks outermost, so the packed B block
     * (KC x NC) stays in L2 across every row strip of the run */
    /* cap a run so that its C block (re-read once per K block) stays in L2 */
    const int64_t item_bytes = (int64_t)g->mb_strips * MR * g->pb_panels * NR * (int64_t)sizeof(float);
    int64_t max_run = GEMM_C_BUDGET / item_bytes;
    if (max_run < 1) max_run = 1;
    for (int64_t run0 = i0; run0 < i1;) {
        int nb = (int)(run0 / g->nmb);
        int64_t run1 = (int64_t)(nb + 1) * g->nmb;
        if (run1 > i1) run1 = i1;
        if (run1 > run0 + max_run) run1 = run0 + max_run;
        int p0 = nb * g->pb_panels, p1 = p0 + g->pb_panels;
        if (p1 > g->npanels) p1 = g->npanels;
        int s0 = (int)(run0 % g->nmb) * g->mb_strips;
        int s1 = (int)((run1 - 1) % g->nmb + 1) * g->mb_strips;
        if (s1 > g->nstrips) s1 = g->nstrips;
        for (int q = 0; q < g->nkb; q++) {
            int64_t k0 = (int64_t)q * g->KCb;
            int kc = (int)(g->K - k0 < g->KCb ? g->K - k0 : g->KCb);
            const float *bq = g->Bp + k0 * g->Npad;
            float beta = q == 0 ? g->beta : 1.f;
            for (int s = s0; s < s1; s++) {
                int64_t m0 = (int64_t)s * MR;
                int mr = (int)(g->M - m0 < MR ? g->M - m0 : MR);
                if (mr < MR) /* rows past M are computed but never stored: keep them finite */
                    memset(abuf, 0, sizeof abuf);
                g->pack_a(g->ua, m0, mr, k0, kc, abuf, rs, ks);
                float *crow = g->C + m0 * g->ldc;
                for (int j = p0; j < p1; j++) {
                    int64_t n0 = (int64_t)j * NR;
                    int nr = (int)(g->N - n0 < NR ? g->N - n0 : NR);
                    ukr(kc, abuf, bq + (int64_t)j * kc * NR, crow + n0, g->ldc, mr, nr, g->alpha, beta);
                }
            }
        }
        run0 = run1;
    }
}

typedef struct { float *C; int64_t ldc, N; float beta; } scale_job;

static void scale_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    (void)tid;
    const scale_job *s = arg;
    for (int64_t m = m0; m < m1; m++) {
        float *c = s->C + m * s->ldc;
        for (int64_t n = 0; n < s->N; n++) c[n] = s->beta == 0.f ? 0.f : s->beta * c[n];
    }
}

/* Small products in one parallel region: work unit nb is column block nb (GEMM_FUSED_PANELS
 * panels) with every row strip (g.nmb == 1); the thread that claims it packs that block's B
 * panels for every K block itself, then multiplies, so no thread reads a panel another packed
 * and the separate packing round (a pool wake-up and a barrier, a large share of a ~0.1 ms
 * call) is gone. Units are claimed from a counter, so the caller is not held up by a worker
 * that wakes late; which thread computes a tile changes nothing in its arithmetic. */
typedef struct { packb_job pj; gemm_job g; atomic_int next; int nnb; /* next unit to claim, units */ } fused_job;

/* Each thread of the region (its range is ignored) claims units until none is left. */
static void gemm_fused_items(void *arg, int64_t b0, int64_t b1, int tid)
{
    (void)b0, (void)b1;
    fused_job *f = arg;
    const int np = f->g.npanels;
    for (;;) {
        int nb = atomic_fetch_add_explicit(&f->next, 1, memory_order_relaxed);
        if (nb >= f->nnb) break;
        int64_t p0 = (int64_t)nb * f->g.pb_panels, p1 = p0 + f->g.pb_panels;
        if (p1 > np) p1 = np;
        for (int q = 0; q < f->pj.nkb; q++) pack_b_items((void *)&f->pj, q * (int64_t)np + p0, q * (int64_t)np + p1, tid);
        gemm_items((void *)&f->g, nb, nb + 1, tid);
    }
}

/* C = alpha * op(A) · op(B) + beta * C with op(A) from pack_a and op(B)^T from pack_bt.
 * fused: one parallel region over column blocks claimed dynamically (gemm_fused_items); the
 * tiles and their arithmetic are the same either way. */
static void gemm_core(const dl_ctx *ctx, dl_pool *pool, int nt, const gemm_kernel *kr, int64_t M, int64_t N, int64_t K,
                      float alpha, dl_gemm_pack_a_fn pack_a, const void *user, int a_kmajor,
                      dl_gemm_pack_a_fn pack_bt, const void *ub, float beta, float *C, int64_t ldc, int fused)
{
    const int MR = kr->MR, NR = kr->NR;
    int nkb = (int)((K + GEMM_KC - 1) / GEMM_KC);
    int KCb = (int)((K + nkb - 1) / nkb);
    int npanels = (int)((N + NR - 1) / NR);
    int64_t Npad = (int64_t)npanels * NR;

    float *Bp = dl_ws_shared(ctx, DL_WS_GEMM_B, (size_t)(K * Npad) * sizeof(float)); // [nkb, npanels, KCb, NR]
    packb_job pj = {0};
    pj.cb = pack_bt; pj.cbu = ub;
    pj.N = N; pj.K = K; pj.Npad = Npad; pj.KCb = KCb; pj.NR = NR; pj.npanels = npanels; pj.nkb = nkb;
    pj.Bp = Bp;
    if (!fused) {
        if (nt > 1) dl_parallel_for(pool, (int64_t)nkb * npanels, 1, pack_b_items, &pj);
        else pack_b_items(&pj, 0, (int64_t)nkb * npanels, 0);
    }

    gemm_job g = {0};
    g.kr = kr; g.M = M; g.N = N; g.K = K; g.alpha = alpha; g.beta = beta;
    g.pack_a = pack_a; g.ua = user; g.a_kmajor = a_kmajor; g.Bp = Bp; g.Npad = Npad; g.KCb = KCb; g.nkb = nkb;
    g.C = C; g.ldc = ldc;
    g.nstrips = (int)((M + MR - 1) / MR);
    g.npanels = npanels;
    g.pb_panels = GEMM_NC / NR;
    if (g.pb_panels > npanels) g.pb_panels = npanels;
    g.mb_strips = GEMM_MB_STRIPS;
    if (g.mb_strips > g.nstrips) g.mb_strips = g.nstrips;
    if (fused) {
        fused_job f = {pj, g, 0, 0};
        atomic_init(&f.next, 0);
        f.g.mb_strips = f.g.nstrips;
        f.g.nmb = 1;
        f.g.pb_panels = GEMM_FUSED_PANELS;
        f.nnb = (npanels + GEMM_FUSED_PANELS - 1) / GEMM_FUSED_PANELS;
        dl_parallel_for(pool, nt, 1, gemm_fused_items, &f);
        dl_ws_release(ctx, Bp);
        return;
    }
    /* enough items for every thread: shrink row items first, then column items */
    for (;;) {
        int nmb = (g.nstrips + g.mb_strips - 1) / g.mb_strips;
        int nnb = (npanels + g.pb_panels - 1) / g.pb_panels;
        if ((int64_t)nmb * nnb >= 4 * nt) break;
        if (g.mb_strips > 1) g.mb_strips = (g.mb_strips + 1) / 2;
        else if (g.pb_panels > 1) g.pb_panels = (g.pb_panels + 1) / 2;
        else break;
    }
    g.nmb = (g.nstrips + g.mb_strips - 1) / g.mb_strips;
    int64_t nitems = (int64_t)g.nmb * ((npanels + g.pb_panels - 1) / g.pb_panels);
    if (nt > 1) dl_parallel_for(pool, nitems, 1, gemm_items, &g);
    else gemm_items(&g, 0, nitems, 0);
    dl_ws_release(ctx, Bp);
}

typedef struct { const float *T; int64_t M, N; float beta; float *C; int64_t ldc; } untranspose_job;

/* C[m, n] = T[n, m] + beta * C[m, n] (C not read when beta == 0) for rows m in range */
static void untranspose_rows(void *arg, int64_t m0, int64_t m1, int tid)
{
    (void)tid;
    const untranspose_job *j = arg;
    for (int64_t m = m0; m < m1; m++) {
        float *c = j->C + m * j->ldc;
        if (j->beta == 0.f)
            for (int64_t n = 0; n < j->N; n++) c[n] = j->T[n * j->M + m];
        else
            for (int64_t n = 0; n < j->N; n++) c[n] = j->T[n * j->M + m] + j->beta * c[n];
    }
}

void dl_sgemm_cb(const dl_ctx *ctx, int64_t M, int64_t N, int64_t K, float alpha,
                 dl_gemm_pack_a_fn pack_a, const void *ua, int a_kmajor,
                 dl_gemm_pack_a_fn pack_bt, const void *ub, int bt_kmajor,
                 float beta, float *C, int64_t ldc)
{
    DL_ASSERT(M >= 0 && N >= 0 && K >= 0 && C && ldc >= N);
    DL_ASSERT(K == 0 || (pack_a && pack_bt));
    if (M == 0 || N == 0) return;
    dl_pool *pool = ctx ? ctx->pool : NULL;
    if (K == 0 || alpha == 0.f) {
        scale_job sj = {C, ldc, N, beta};
        dl_parallel_for(pool, M, 16, scale_rows, &sj);
        return;
    }
    const gemm_kernel *kr = pick_kernel();
    int nt = dl_pool_nthreads(pool);
    double flops = 2.0 * (double)M * (double)N * (double)K;
    if (flops < 2e6) nt = 1; /* not worth waking the pool */

    /* A small product (16 <= M <= one row item, B at most 16 MiB packed, at least four column
     * panels) runs unswapped whatever the thread count; on several threads in one parallel
     * region where each thread packs and uses its own B panels (gemm_fused_items). The choice
     * depends on the shape only, so the result and the workspace slots used do not depend on
     * the thread count. */
    const int64_t npan = (N + kr->NR - 1) / kr->NR, nstr = (M + kr->MR - 1) / kr->MR;
    if (M >= 16 && nstr <= GEMM_MB_STRIPS && npan >= 4 && (double)K * (double)(npan * kr->NR) <= (double)GEMM_SMALL_B_FLOATS) {
        gemm_core(ctx, pool, nt, kr, M, N, K, alpha, pack_a, ua, a_kmajor, pack_bt, ub, beta, C, ldc, nt > 1);
        return;
    }
    /* Packing B moves K*N floats whatever M is. When M is small (low-resolution convolutions,
     * few tokens) compute C^T = op(B)^T · op(A)^T instead: the big operand is then packed strip
     * by strip on the A side and only K*M floats plus a transpose of M*N are moved. */
    const double cost = (double)K * (double)N, cost_swapped = (double)K * (double)M + 2.0 * (double)M * (double)N;
    if (cost_swapped < 0.5 * cost) {
        float *T = dl_ws_shared(ctx, DL_WS_GEMM_T, (size_t)(N * M) * sizeof(float)); // [N, M]
        gemm_core(ctx, pool, nt, kr, N, M, K, alpha, pack_bt, ub, bt_kmajor, pack_a, ua, 0.f, T, M, 0);
        untranspose_job uj = {T, M, N, beta, C, ldc};
        if (nt > 1) dl_parallel_for(pool, M, 4, untranspose_rows, &uj);
        else untranspose_rows(&uj, 0, M, 0);
        dl_ws_release(ctx, T);
        return;
    }
    gemm_core(ctx, pool, nt, kr, M, N, K, alpha, pack_a, ua, a_kmajor, pack_bt, ub, beta, C, ldc, 0);
}

void dl_sgemm_packed_a_t(const dl_ctx *ctx, int64_t M, int64_t N, int64_t K, float alpha,
                         dl_gemm_pack_a_fn pack_a, const void *user, int a_kmajor, int transB,
                         const void *B, dl_dtype bdt, int64_t ldb, float beta, float *C, int64_t ldc)
{
    DL_ASSERT(K == 0 || (B && ldb >= (transB ? K : N)));
    DL_ASSERT(bdt == DL_F32 || bdt == DL_F16 || bdt == DL_BF16);
    plain_a bt = {B, ldb, !transB, bdt}; /* op(B)^T [N, K] */
    dl_sgemm_cb(ctx, M, N, K, alpha, pack_a, user, a_kmajor, pack_a_plain, &bt, !transB, beta, C, ldc);
}

void dl_sgemm_packed_a(const dl_ctx *ctx, int64_t M, int64_t N, int64_t K, float alpha,
                       dl_gemm_pack_a_fn pack_a, const void *user, int a_kmajor, int transB,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    dl_sgemm_packed_a_t(ctx, M, N, K, alpha, pack_a, user, a_kmajor, transB, B, DL_F32, ldb, beta, C, ldc);
}

void dl_sgemm_t(const dl_ctx *ctx, int transA, int transB, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, const void *B, dl_dtype bdt, int64_t ldb,
                float beta, float *C, int64_t ldc)
{
    DL_ASSERT(K == 0 || M == 0 || (A && lda >= (transA ? M : K)));
    plain_a pa = {A, lda, transA, DL_F32};
    dl_sgemm_packed_a_t(ctx, M, N, K, alpha, pack_a_plain, &pa, transA, transB, B, bdt, ldb, beta, C, ldc);
}

void dl_sgemm(const dl_ctx *ctx, int transA, int transB, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
              float beta, float *C, int64_t ldc)
{
    dl_sgemm_t(ctx, transA, transB, M, N, K, alpha, A, lda, B, DL_F32, ldb, beta, C, ldc);
}
