/* mma.cuh - the sm_80+ warp-level building blocks of tensor-core kernels, in both builds:
 *
 *   dl_mma_m16n8k16_bf16 / _f16   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
 *   dl_mma_m16n8k8_bf16 / _f16    mma.sync.aligned.m16n8k8.row.col.f32.{bf16,f16}.{bf16,f16}.f32
 *   dl_ldmatrix_x4 / _x2 (+ _trans) ldmatrix.sync.aligned.m8n8.{x4,x2}[.trans].shared.b16
 *   dl_cp_async_16 / _commit / _wait<N>   cp.async.cg.shared.global (16 bytes) and its groups
 *
 * Under nvcc these are the PTX instructions (HMMA, LDSM, LDGSTS in SASS). Under the SIMT
 * emulator they are modelled with the PTX ISA's own lane layouts, so a kernel that maps a
 * fragment element to the wrong lane computes a wrong result in CI:
 *   - mma: lane l (group g = l / 4, thread-in-group t = l % 4) holds
 *       A (16x16, row-major): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1],
 *                             a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
 *       B (16x8, "col"):      b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
 *       C, D (16x8, fp32):    c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
 *     and for m16n8k8 (the half k-step, e.g. a head dim of 40 = 16 + 16 + 8):
 *       A (16x8):  a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1];   B (8x8): b[0] = B[2t..2t+1][g]
 *     (pairs packed low element first in each 32-bit register); the model gathers the operands
 *     with warp shuffles and accumulates the exact products in fp32, k in order.
 *   - ldmatrix: lanes 8i..8i+7 give the row addresses of 8x8 matrix i; register i of lane l
 *     receives row l / 4, columns 2(l % 4), 2(l % 4) + 1 of matrix i (.trans: rows 2(l % 4) and
 *     2(l % 4) + 1 of column l / 4). x2 reads matrices 0 and 1 (addresses of lanes 0-15).
 *   - cp.async: the 16 destination bytes read as all-ones (NaN) from the issue until the
 *     cp.async.wait_group that completes the copy, which is when the model copies them: a kernel
 *     that reads shared memory before waiting (or before the __syncthreads after the wait) sees
 *     NaN instead of data. Groups follow the PTX rules: commit closes the open group;
 *     wait<N> completes all but the N most recent committed groups.
 * All lanes of the warp must call mma and ldmatrix together (they are warp-collective). */
#ifndef DANLU_KERNELS_MMA_CUH
#define DANLU_KERNELS_MMA_CUH

#include "common.cuh"

#include <stdint.h>

#ifdef __CUDACC__
/* ======================================= real CUDA ============================================ */

__device__ __forceinline__ void dl_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                     const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void dl_mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                    const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void dl_mma_m16n8k8_bf16(float d[4], const uint32_t a[2], const uint32_t b[1],
                                                    const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void dl_mma_m16n8k8_f16(float d[4], const uint32_t a[2], const uint32_t b[1],
                                                   const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ uint32_t dl_smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void dl_ldmatrix_x4(uint32_t r[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(dl_smem_addr(row)));
}

__device__ __forceinline__ void dl_ldmatrix_x4_trans(uint32_t r[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(dl_smem_addr(row)));
}

__device__ __forceinline__ void dl_ldmatrix_x2(uint32_t r[2], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(dl_smem_addr(row)));
}

__device__ __forceinline__ void dl_ldmatrix_x2_trans(uint32_t r[2], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(dl_smem_addr(row)));
}

__device__ __forceinline__ void dl_cp_async_16(void *smem, const void *gmem)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dl_smem_addr(smem)), "l"(gmem));
}

__device__ __forceinline__ void dl_cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> __device__ __forceinline__ void dl_cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#else
/* =================================== the SIMT emulator ======================================== */

#include <string.h>
#include <vector>

namespace dl_mma_model {

static inline float lo_bf16(uint32_t r) { return __bfloat162float(__ushort_as_bfloat16((unsigned short)(r & 0xffffu))); }
static inline float hi_bf16(uint32_t r) { return __bfloat162float(__ushort_as_bfloat16((unsigned short)(r >> 16))); }
static inline float lo_f16(uint32_t r) { return __half2float(__ushort_as_half((unsigned short)(r & 0xffffu))); }
static inline float hi_f16(uint32_t r) { return __half2float(__ushort_as_half((unsigned short)(r >> 16))); }

static inline unsigned lane_id(void) { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u; }

/* D = A B + C for one m16n8k16 tile; every lane gathers the rows and columns it needs. */
template <bool BF16> static inline void mma(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
{
    const unsigned l = lane_id(), g = l >> 2, t = l & 3;
    float arow[2][16], bcol[2][16]; /* A rows g, g+8 and B columns 2t, 2t+1, over k */
    for (unsigned j = 0; j < 4; j++) {
        /* lane g*4 + j holds A[g][2j..2j+1] (a[0]), A[g+8][2j..] (a[1]), A[g][2j+8..] (a[2]), A[g+8][2j+8..] (a[3]) */
        uint32_t r[4];
        for (int q = 0; q < 4; q++) r[q] = __shfl_sync(0xffffffffu, a[q], (int)(g * 4 + j));
        for (int q = 0; q < 4; q++) {
            const int row = q & 1, k = (int)(2 * j) + (q >> 1) * 8;
            arow[row][k] = BF16 ? lo_bf16(r[q]) : lo_f16(r[q]);
            arow[row][k + 1] = BF16 ? hi_bf16(r[q]) : hi_f16(r[q]);
        }
        /* lane n*4 + j holds B[2j..2j+1][n] (b[0]) and B[2j+8..2j+9][n] (b[1]) */
        for (unsigned col = 0; col < 2; col++) {
            const int src = (int)((2 * t + col) * 4 + j);
            uint32_t s0 = __shfl_sync(0xffffffffu, b[0], src), s1 = __shfl_sync(0xffffffffu, b[1], src);
            bcol[col][2 * j] = BF16 ? lo_bf16(s0) : lo_f16(s0);
            bcol[col][2 * j + 1] = BF16 ? hi_bf16(s0) : hi_f16(s0);
            bcol[col][2 * j + 8] = BF16 ? lo_bf16(s1) : lo_f16(s1);
            bcol[col][2 * j + 9] = BF16 ? hi_bf16(s1) : hi_f16(s1);
        }
    }
    for (int i = 0; i < 4; i++) {
        float acc = c[i];
        const int row = i >> 1, col = i & 1;
        for (int k = 0; k < 16; k++) acc += arow[row][k] * bcol[col][k]; /* products of 8-bit-mantissa values: exact */
        d[i] = acc;
    }
}

/* D = A B + C for one m16n8k8 tile (A 16x8 in a[0..1], B 8x8 in b[0]). */
template <bool BF16> static inline void mma_k8(float d[4], const uint32_t a[2], const uint32_t b[1], const float c[4])
{
    const unsigned l = lane_id(), g = l >> 2, t = l & 3;
    float arow[2][8], bcol[2][8]; /* A rows g, g+8 and B columns 2t, 2t+1, over k */
    for (unsigned j = 0; j < 4; j++) {
        /* lane g*4 + j holds A[g][2j..2j+1] (a[0]) and A[g+8][2j..2j+1] (a[1]) */
        for (int q = 0; q < 2; q++) {
            const uint32_t r = __shfl_sync(0xffffffffu, a[q], (int)(g * 4 + j));
            arow[q][2 * j] = BF16 ? lo_bf16(r) : lo_f16(r);
            arow[q][2 * j + 1] = BF16 ? hi_bf16(r) : hi_f16(r);
        }
        /* lane n*4 + j holds B[2j..2j+1][n] */
        for (unsigned col = 0; col < 2; col++) {
            const uint32_t s0 = __shfl_sync(0xffffffffu, b[0], (int)((2 * t + col) * 4 + j));
            bcol[col][2 * j] = BF16 ? lo_bf16(s0) : lo_f16(s0);
            bcol[col][2 * j + 1] = BF16 ? hi_bf16(s0) : hi_f16(s0);
        }
    }
    for (int i = 0; i < 4; i++) {
        float acc = c[i];
        const int row = i >> 1, col = i & 1;
        for (int k = 0; k < 8; k++) acc += arow[row][k] * bcol[col][k];
        d[i] = acc;
    }
}

/* ldmatrix of nmat (2 or 4) 8x8 b16 matrices; lanes 8i..8i+7 point at the rows of matrix i. */
static inline void ldmatrix(uint32_t *r, int nmat, bool trans, const void *row)
{
    const unsigned l = lane_id();
    const uintptr_t mine = (uintptr_t)row;
    for (int i = 0; i < nmat; i++) {
        if (!trans) {
            const uintptr_t p = __shfl_sync(0xffffffffu, mine, (int)(8 * i + (l >> 2)));
            uint32_t v;
            memcpy(&v, (const char *)p + 4 * (l & 3), 4); /* columns 2(l%4), 2(l%4)+1 */
            r[i] = v;
        } else {
            const uintptr_t p0 = __shfl_sync(0xffffffffu, mine, (int)(8 * i + 2 * (l & 3)));
            const uintptr_t p1 = __shfl_sync(0xffffffffu, mine, (int)(8 * i + 2 * (l & 3) + 1));
            unsigned short e0, e1;
            memcpy(&e0, (const char *)p0 + 2 * (l >> 2), 2); /* column l/4 of rows 2(l%4), 2(l%4)+1 */
            memcpy(&e1, (const char *)p1 + 2 * (l >> 2), 2);
            r[i] = (uint32_t)e0 | (uint32_t)e1 << 16;
        }
    }
}

/* cp.async: per emulated thread, the copies of the open group and of the committed groups. */
struct copy16 { void *dst; const void *src; };
struct thread_copies {
    unsigned long long run = 0; /* the block run the lists belong to */
    std::vector<copy16> open;
    std::vector<std::vector<copy16>> committed; /* oldest first */
};
/* The emulator's number for the block run in progress: what one block leaves un-waited is never
 * completed into a later block, even one of the next launch with the same index. */
static inline unsigned long long block_run(void) { return ::simt::block_run_serial(); }
static inline thread_copies &copies_of_this_thread(void)
{
    static thread_local std::vector<thread_copies> per_thread; /* one OS thread runs one block at a time */
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    if (per_thread.size() < n) per_thread.resize(n);
    thread_copies &tc = per_thread[tid];
    const unsigned long long run = block_run();
    if (tc.run != run) { /* a new block run: whatever an earlier one left is dropped */
        tc.run = run;
        tc.open.clear();
        tc.committed.clear();
    }
    return tc;
}

static inline void issue(void *smem, const void *gmem)
{
    memset(smem, 0xff, 16); /* undefined until waited for: NaN in the model */
    copies_of_this_thread().open.push_back({smem, gmem});
}

static inline void commit(void)
{
    thread_copies &tc = copies_of_this_thread();
    tc.committed.push_back(tc.open);
    tc.open.clear();
}

static inline void wait(int keep)
{
    thread_copies &tc = copies_of_this_thread();
    while ((int)tc.committed.size() > keep) {
        for (const copy16 &c : tc.committed.front()) memcpy(c.dst, c.src, 16);
        tc.committed.erase(tc.committed.begin());
    }
}

} // namespace dl_mma_model

static inline void dl_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
{
    dl_mma_model::mma<true>(d, a, b, c);
}
static inline void dl_mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
{
    dl_mma_model::mma<false>(d, a, b, c);
}
static inline void dl_mma_m16n8k8_bf16(float d[4], const uint32_t a[2], const uint32_t b[1], const float c[4])
{
    dl_mma_model::mma_k8<true>(d, a, b, c);
}
static inline void dl_mma_m16n8k8_f16(float d[4], const uint32_t a[2], const uint32_t b[1], const float c[4])
{
    dl_mma_model::mma_k8<false>(d, a, b, c);
}
static inline void dl_ldmatrix_x4(uint32_t r[4], const void *row) { dl_mma_model::ldmatrix(r, 4, false, row); }
static inline void dl_ldmatrix_x4_trans(uint32_t r[4], const void *row) { dl_mma_model::ldmatrix(r, 4, true, row); }
static inline void dl_ldmatrix_x2(uint32_t r[2], const void *row) { dl_mma_model::ldmatrix(r, 2, false, row); }
static inline void dl_ldmatrix_x2_trans(uint32_t r[2], const void *row) { dl_mma_model::ldmatrix(r, 2, true, row); }
static inline void dl_cp_async_16(void *smem, const void *gmem) { dl_mma_model::issue(smem, gmem); }
static inline void dl_cp_async_commit(void) { dl_mma_model::commit(); }
template <int N> static inline void dl_cp_async_wait(void) { dl_mma_model::wait(N); }

#endif /* __CUDACC__ */
#endif
