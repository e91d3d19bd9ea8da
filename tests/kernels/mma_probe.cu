/* mma_probe.cu - one-warp kernels that exercise kernels/mma.cuh the way a tensor-core kernel
 * does: cp.async 16-byte copies global -> shared, ldmatrix (plain and .trans) into the PTX
 * fragment layout, one m16n8k16 MMA, fragment -> global. tests/kernels/test_mma.cpp runs them
 * under the SIMT emulator against a CPU product (and checks that a wrong fragment mapping or a
 * missing cp.async wait is caught); scripts/sass_check.sh compiles them for sm_80+ to show the
 * HMMA, LDSM and LDGSTS instructions they become. The k8 probe does the same for the half
 * k-step m16n8k8 (A 16x8, B 8x8). */
#include "common.cuh"
#include "launch.cuh"
#include "mma.cuh"

/* OK: the PTX ISA's mappings. The rest are planted mapping bugs the emulator's model must catch:
 * SWAP_A: A registers 1 and 2 exchanged; NO_WAIT: cp.async data read without waiting; SWAP_B: B
 * registers 0 and 1 (k 0-7 and 8-15) exchanged; NO_TRANS: B as [k][n] read with plain ldmatrix
 * (the .trans dropped); SWAP_D: accumulator rows g and g + 8 stored the wrong way round. */
enum { MMA_PROBE_OK = 0, MMA_PROBE_SWAP_A = 1, MMA_PROBE_NO_WAIT = 2, MMA_PROBE_SWAP_B = 3, MMA_PROBE_NO_TRANS = 4,
       MMA_PROBE_SWAP_D = 5 };

/* D [16][8] = A [16][16] (row-major) x B [16][8] + C [16][8], bf16 (or fp16) inputs, fp32 out.
 * B_is_kn: B given as [k][n] row-major (read with ldmatrix .trans); else as B^T [n][k]. */
template <bool BF16>
__global__ void mma_probe_kernel(const uint16_t *A, const uint16_t *B, int B_is_kn, const float *C, float *D,
                                 int variant)
{
    __shared__ __align__(16) uint16_t sA[16 * 16];
    __shared__ __align__(16) uint16_t sB[16 * 8];
    const int l = (int)threadIdx.x, g = l >> 2, t = l & 3;
    /* 256 + 128 halves = 48 chunks of 16 bytes: A's 32 over every lane, B's 16 over lanes 0-15 */
    dl_cp_async_16(sA + 8 * l, A + 8 * l);
    if (l < 16) dl_cp_async_16(sB + 8 * l, B + 8 * l);
    dl_cp_async_commit();
    if (variant != MMA_PROBE_NO_WAIT) dl_cp_async_wait<0>();
    __syncthreads();
    uint32_t a[4], b[2];
    /* A: matrix i = l / 8 is rows 8 (i & 1).., columns 8 (i >> 1)..; lane gives row l % 8 of it */
    const int mi = l >> 3, r = l & 7;
    dl_ldmatrix_x4(a, sA + (r + 8 * (mi & 1)) * 16 + 8 * (mi >> 1));
    if (variant == MMA_PROBE_SWAP_A) { /* a mapping bug: rows g+8 and columns 2t+8 exchanged */
        uint32_t x = a[1];
        a[1] = a[2];
        a[2] = x;
    }
    if (B_is_kn && variant == MMA_PROBE_NO_TRANS)
        dl_ldmatrix_x2(b, sB + (l & 15) * 8);
    else if (B_is_kn) /* [k][n]: matrix 0 is k 0-7, matrix 1 k 8-15 (lanes 0-15 give row k = l) */
        dl_ldmatrix_x2_trans(b, sB + (l & 15) * 8);
    else /* B^T [n][k]: matrix 0 is k 0-7 of the 8 rows n, matrix 1 k 8-15 */
        dl_ldmatrix_x2(b, sB + (l & 7) * 16 + 8 * ((l >> 3) & 1));
    if (variant == MMA_PROBE_SWAP_B) {
        uint32_t x = b[0];
        b[0] = b[1];
        b[1] = x;
    }
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]}, d[4];
    if (BF16) dl_mma_m16n8k16_bf16(d, a, b, c);
    else dl_mma_m16n8k16_f16(d, a, b, c);
    if (variant == MMA_PROBE_SWAP_D) {
        float x0 = d[0], x1 = d[1];
        d[0] = d[2];
        d[1] = d[3];
        d[2] = x0;
        d[3] = x1;
    }
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

/* Host launcher: A, B, C, D device (or, under the emulator, host) pointers; bf16 != 0 picks
 * the bf16 MMA (else fp16); 16-byte aligned A and B. */
extern "C" int dl_mma_probe(int bf16, const uint16_t *A, const uint16_t *B, int B_is_kn, const float *C, float *D,
                            int variant, cudaStream_t stream)
{
    if (bf16) DL_LAUNCH((mma_probe_kernel<true>), dim3(1), dim3(32), 0, stream, A, B, B_is_kn, C, D, variant);
    else DL_LAUNCH((mma_probe_kernel<false>), dim3(1), dim3(32), 0, stream, A, B, B_is_kn, C, D, variant);
    return 0;
}

/* D [16][8] = A [16][8] x B [8][8] + C with m16n8k8: A row-major (ldmatrix x2: rows 0-7, 8-15),
 * B as [k][n] (B_is_kn, ldmatrix .trans) or B^T [n][k]; x2 with both matrices the same 8 rows
 * stands in for the x1 form. */
template <bool BF16>
__global__ void mma_probe_k8_kernel(const uint16_t *A, const uint16_t *B, int B_is_kn, const float *C, float *D)
{
    __shared__ __align__(16) uint16_t sA[16 * 8];
    __shared__ __align__(16) uint16_t sB[8 * 8];
    const int l = (int)threadIdx.x, g = l >> 2, t = l & 3;
    if (l < 16) dl_cp_async_16(sA + 8 * l, A + 8 * l);
    if (l < 8) dl_cp_async_16(sB + 8 * l, B + 8 * l);
    dl_cp_async_commit();
    dl_cp_async_wait<0>();
    __syncthreads();
    uint32_t a[2], b[2];
    dl_ldmatrix_x2(a, sA + (l & 15) * 8);
    if (B_is_kn) dl_ldmatrix_x2_trans(b, sB + (l & 7) * 8);
    else dl_ldmatrix_x2(b, sB + (l & 7) * 8);
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]}, d[4];
    if (BF16) dl_mma_m16n8k8_bf16(d, a, b, c);
    else dl_mma_m16n8k8_f16(d, a, b, c);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

extern "C" int dl_mma_probe_k8(int bf16, const uint16_t *A, const uint16_t *B, int B_is_kn, const float *C,
                               float *D, cudaStream_t stream)
{
    if (bf16) DL_LAUNCH((mma_probe_k8_kernel<true>), dim3(1), dim3(32), 0, stream, A, B, B_is_kn, C, D);
    else DL_LAUNCH((mma_probe_k8_kernel<false>), dim3(1), dim3(32), 0, stream, A, B, B_is_kn, C, D);
    return 0;
}
