/* launch.cuh - the one way kernels are launched (DL_LAUNCH) and CUDA errors are checked
 * (DL_CUDA_CHECK aborts, DL_CUDA_TRY returns DL_ERR), identical under nvcc and the SIMT emulator. */
#ifndef DANLU_KERNELS_LAUNCH_CUH
#define DANLU_KERNELS_LAUNCH_CUH

#include "common.cuh"
#include "core/error.h"

/* Abort naming the failed statement, function, file and line and the CUDA error (under the
 * emulator the message of a failed launch names the kernel, block and cause). */
static inline void dl_cuda_fatal_(cudaError_t e, const char *stmt, const char *func, const char *file, int line)
{
    dl_fatal(stmt, func, file, line, "CUDA error %s: %s", cudaGetErrorName(e), cudaGetErrorString(e));
}

/* DL_CUDA_CHECK(stmt): stmt returns cudaError_t; anything but cudaSuccess is a programming error:
 * abort with statement, function, file and line. */
#define DL_CUDA_CHECK(stmt)                                                                         \
    do {                                                                                            \
        cudaError_t dl_cuda_e_ = (stmt);                                                            \
        if (dl_cuda_e_ != cudaSuccess) dl_cuda_fatal_(dl_cuda_e_, #stmt, __func__, __FILE__, __LINE__); \
    } while (0)

/* DL_CUDA_TRY(stmt): in a function returning int, record the error (dl_error_set, naming
 * statement, file and line) and return DL_ERR. */
#define DL_CUDA_TRY(stmt)                                                                           \
    do {                                                                                            \
        cudaError_t dl_cuda_e_ = (stmt);                                                            \
        if (dl_cuda_e_ != cudaSuccess)                                                              \
            return dl_error_set("%s:%d: %s: CUDA error %s: %s", __FILE__, __LINE__, #stmt,          \
                                cudaGetErrorName(dl_cuda_e_), cudaGetErrorString(dl_cuda_e_));      \
    } while (0)

/* DL_LAUNCH(kernel, grid, block, smem_bytes, stream, args...): kernel<<<grid, block, smem_bytes,
 * stream>>>(args...) under nvcc, the emulator's synchronous launch otherwise; then
 * cudaGetLastError() is checked and a failure aborts naming the kernel, file and line. A template
 * kernel with a comma in its arguments goes in parentheses: DL_LAUNCH((k<T, D>), ...). To get the
 * error code instead of aborting, launch by hand and call cudaGetLastError(). */
#ifdef __CUDACC__
#define DL_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                     \
    do {                                                                                            \
        kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__);                          \
        cudaError_t dl_launch_e_ = cudaGetLastError();                                              \
        if (dl_launch_e_ != cudaSuccess)                                                            \
            dl_cuda_fatal_(dl_launch_e_, "DL_LAUNCH(" #kernel ")", __func__, __FILE__, __LINE__);   \
    } while (0)
#else
#define DL_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                     \
    do {                                                                                            \
        (void)::simt::launch(#kernel, kernel, (grid), (block), (smem_bytes), (stream), ##__VA_ARGS__); \
        cudaError_t dl_launch_e_ = cudaGetLastError();                                              \
        if (dl_launch_e_ != cudaSuccess)                                                            \
            dl_cuda_fatal_(dl_launch_e_, "DL_LAUNCH(" #kernel ")", __func__, __FILE__, __LINE__);   \
    } while (0)
#endif

#endif
