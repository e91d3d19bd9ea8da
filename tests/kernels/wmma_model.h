/* wmma_model.h - a model of the CUDA WMMA API (nvcuda::wmma, 16×16×16 tiles) for the SIMT
 * emulator, so tests can run kernels/attention_tc.cu on the CPU. Every lane holds the whole tile
 * (the real API hides the element-to-lane mapping, and kernels must not depend on it); loads and
 * stores are warp-collective (__syncwarp before and after) as on the GPU; mma_sync multiplies the
 * stored (bf16/half) values exactly and accumulates in fp32. Test-only, C++. */
#ifndef DANLU_TESTS_WMMA_MODEL_H
#define DANLU_TESTS_WMMA_MODEL_H

#include "common.cuh"

#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    float x[M * N > M * K ? (M * N > K * N ? M * N : K * N) : (M * K > K * N ? M * K : K * N)];
};

// Operand tiles: element (i, j) of the 16×16 operand, row-major or column-major in memory.
template <class Use, class T, class L>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ld)
{
    static_assert(!std::is_same<Use, accumulator>::value, "accumulators take a layout");
    const bool rm = std::is_same<L, row_major>::value;
    __syncwarp();
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.x[i * 16 + j] = dl_to_float(rm ? p[i * ld + j] : p[j * ld + i]);
    __syncwarp();
}

static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                                    unsigned ld, layout_t l)
{
    __syncwarp();
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.x[i * 16 + j] = l == mem_row_major ? p[i * ld + j] : p[j * ld + i];
    __syncwarp();
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                                     unsigned ld, layout_t l)
{
    __syncwarp();
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) (l == mem_row_major ? p[i * ld + j] : p[j * ld + i]) = f.x[i * 16 + j];
    __syncwarp();
}

static inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float v)
{
    for (int i = 0; i < 256; i++) f.x[i] = v;
}

// d = a·b + c (d may alias c)
template <class T, class LA, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c)
{
    float r[256];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[i * 16 + j];
            for (int k = 0; k < 16; k++) s += a.x[i * 16 + k] * b.x[k * 16 + j];
            r[i * 16 + j] = s;
        }
    for (int i = 0; i < 256; i++) d.x[i] = r[i];
}

} // namespace wmma
} // namespace nvcuda

#endif
