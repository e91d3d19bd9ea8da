/* test_simt.cpp - the SIMT emulator (kernels/simt/simt.h): barriers, shared memory, warp
 * shuffles and votes, atomics, bf16/half conversions and the detection of divergent barriers. */
#include "common.cuh"
#include "launch.cuh"

#include <criterion/criterion.h>

#include <signal.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <vector>

/* ---- kernels ---------------------------------------------------------------------------------- */

/* Tree reduction in static shared memory: out[b] = sum of x[b*256 .. b*256+255]. */
__global__ void simt_block_sum_kernel(const float *x, float *out)
{
    __shared__ float s[256];
    const unsigned t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

/* Every thread writes its global linear id at its global linear position (3-D grid and block). */
__global__ void simt_index_kernel(unsigned *out)
{
    const unsigned bl = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned tl = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
    out[bl * nt + tl] = bl * 1000u + tl;
}

/* Each block fills its static shared memory with its own id, then checks nobody else's is there. */
__global__ void simt_shared_isolation_kernel(int *bad)
{
    __shared__ int s[64];
    s[threadIdx.x] = (int)blockIdx.x;
    __syncthreads();
    for (int i = 0; i < 64; i++)
        if (s[i] != (int)blockIdx.x) atomicAdd(bad, 1);
    __syncthreads();
    s[threadIdx.x] = -1;
}

/* out[tid * 8 + k]: warp shuffle results for k = 0..7. */
__global__ void simt_shuffle_kernel(float *out, double *out_d)
{
    const unsigned tid = threadIdx.x, lane = tid & 31u;
    float v = (float)tid;
    float sum = v;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o); /* butterfly */
    out[tid * 8 + 0] = sum;
    out[tid * 8 + 1] = __shfl_down_sync(0xffffffffu, v, 3);
    out[tid * 8 + 2] = __shfl_up_sync(0xffffffffu, v, 2, 8);
    out[tid * 8 + 3] = __shfl_sync(0xffffffffu, v, 5, 16);
    out[tid * 8 + 4] = __shfl_xor_sync(0xffffffffu, v, 8, 8);
    out[tid * 8 + 5] = __shfl_sync(0xffffffffu, v, (int)(31 - lane));
    out[tid * 8 + 6] = __shfl_down_sync(0xffffffffu, v, 1, 4);
    out[tid * 8 + 7] = dl_warp_sum(v);
    out_d[tid] = __shfl_xor_sync(0xffffffffu, (double)tid + 0.25, 1);
}

/* Votes; the partial-mask vote is taken by even lanes only. */
__global__ void simt_vote_kernel(unsigned *out)
{
    const unsigned lane = threadIdx.x & 31u;
    out[threadIdx.x * 6 + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
    out[threadIdx.x * 6 + 1] = (unsigned)__any_sync(0xffffffffu, lane == 17);
    out[threadIdx.x * 6 + 2] = (unsigned)__all_sync(0xffffffffu, lane < 31);
    out[threadIdx.x * 6 + 3] = (unsigned)__all_sync(0xffffffffu, 1);
    if (lane % 2 == 0) out[threadIdx.x * 6 + 4] = __ballot_sync(0x55555555u, lane >= 16);
    else out[threadIdx.x * 6 + 4] = 0xdeadbeefu;
    out[threadIdx.x * 6 + 5] = __reduce_add_sync(0xffffffffu, lane);
}

/* __syncthreads_count / _and / _or. */
__global__ void simt_sync_pred_kernel(int *out)
{
    const int c = __syncthreads_count(threadIdx.x % 4 == 0);
    const int a = __syncthreads_and(threadIdx.x < 1000);
    const int o = __syncthreads_or(threadIdx.x == 77);
    const int z = __syncthreads_or(0);
    if (threadIdx.x == 0) { out[0] = c; out[1] = a; out[2] = o; out[3] = z; }
}

__global__ void simt_atomics_kernel(int *ci, unsigned *cu, float *cf, double *cd, unsigned long long *cll, int *mx,
                                    int *mn, int *cas_counter, int *exch)
{
    const int g = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(ci, 1);
    atomicAdd(cu, 2u);
    atomicAdd(cf, 1.0f);
    atomicAdd(cd, 0.5);
    atomicAdd(cll, 3ull);
    atomicMax(mx, (g * 7919) % 100003);
    atomicMin(mn, -((g * 7919) % 100003));
    int old = *cas_counter, assumed;
    do {
        assumed = old;
        old = atomicCAS(cas_counter, assumed, assumed + 1);
    } while (old != assumed);
    atomicExch(exch, g);
}

/* Reverses each block's slice through dynamic shared memory (two arrays carved from one buffer). */
__global__ void simt_dyn_smem_kernel(const float *x, float *y)
{
    DL_DYNAMIC_SMEM(float, buf);
    float *a = buf, *b = buf + blockDim.x;
    const unsigned t = threadIdx.x, n = blockDim.x;
    a[t] = x[blockIdx.x * n + t];
    __syncthreads();
    b[n - 1 - t] = a[t] * 2.0f;
    __syncthreads();
    y[blockIdx.x * n + t] = b[t];
}

__global__ void simt_big_smem_kernel(float *y)
{
    DL_DYNAMIC_SMEM(float, buf);
    buf[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) y[blockIdx.x] = buf[blockDim.x - 1];
}

/* Parameters are per-thread copies: modifying one in a thread does not leak to the others. */
__global__ void simt_param_copy_kernel(int n, int *out)
{
    n += (int)threadIdx.x;
    out[threadIdx.x] = n;
}

/* Divergent barrier: the upper half of the block returns before __syncthreads. */
__global__ void simt_divergent_exit_kernel(float *y)
{
    if (threadIdx.x >= 64) return;
    y[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] += 1.0f;
}

/* Divergent barrier: two halves wait at different __syncthreads. */
__global__ void simt_divergent_sites_kernel(float *y)
{
    if (threadIdx.x % 2) {
        y[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        y[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}

/* Deadlock: lane 0 of each warp waits at a shuffle that the others never reach. */
__global__ void simt_shfl_deadlock_kernel(float *y)
{
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 == 0) v = __shfl_xor_sync(0xffffffffu, v, 1);
    __syncthreads();
    y[threadIdx.x] = v;
}

/* A broadcast with the __syncthreads before the read missing: thread 0 writes s after the
 * others may have read it. The emulator's alternating thread order makes this visible. */
__global__ void simt_missing_barrier_kernel(float *y)
{
    __shared__ float s;
    if (threadIdx.x == 0) s = (float)blockIdx.x + 1.0f;
    /* __syncthreads() missing here */
    y[blockIdx.x * blockDim.x + threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) s = -1.0f;
}

/* Partial warps and exited lanes: reads from lanes that do not take part give all-ones bits. */
__global__ void simt_partial_warp_kernel(float *out, unsigned *ballots)
{
    const unsigned tid = threadIdx.x, lane = tid & 31u;
    out[tid] = __shfl_down_sync(0xffffffffu, (float)tid, 8); /* block of 48: lanes 8-15 of warp 1 read past the end */
    if (tid < 32 && lane >= 16) return;                      /* upper half of warp 0 exits */
    __syncwarp();
    const float x = __shfl_xor_sync(0xffffffffu, (float)tid, 16);
    if (tid < 32) out[48 + tid] = x;
    ballots[tid] = __ballot_sync(0xffffffffu, 1);
}

/* A lane calling a warp intrinsic with a mask that does not name it. */
__global__ void simt_bad_mask_kernel(float *y)
{
    y[threadIdx.x] = __shfl_sync(0x1u, 1.0f, 0);
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static void check_launch(cudaError_t e)
{
    cr_assert_eq(e, cudaSuccess, "launch failed: %s", cudaGetErrorString(e));
    cr_assert_eq(cudaGetLastError(), cudaSuccess);
}

/* ---- tests ------------------------------------------------------------------------------------ */

Test(simt, barrier_block_reduction)
{
    const int B = 7, T = 256;
    std::vector<float> x(B * T), out(B, -1.0f);
    for (int i = 0; i < B * T; i++) x[i] = (float)((i * 37) % 101) - 50.0f; /* exact in fp32 */
    float *dx, *dout;
    DL_CUDA_CHECK(cudaMalloc(&dx, x.size() * sizeof(float)));
    DL_CUDA_CHECK(cudaMalloc(&dout, out.size() * sizeof(float)));
    DL_CUDA_CHECK(cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    DL_LAUNCH(simt_block_sum_kernel, dim3(B), dim3(T), 0, nullptr, dx, dout);
    DL_CUDA_CHECK(cudaMemcpy(out.data(), dout, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    for (int b = 0; b < B; b++) {
        double ref = 0;
        for (int t = 0; t < T; t++) ref += x[b * T + t];
        cr_expect_eq(out[b], (float)ref, "block %d: got %g want %g", b, (double)out[b], ref);
    }
    cudaFree(dx);
    cudaFree(dout);
}

Test(simt, thread_and_block_indices_3d)
{
    const dim3 grid(3, 2, 2), block(4, 3, 5);
    const unsigned nt = 60, nb = 12;
    std::vector<unsigned> out(nb * nt, 0xffffffffu);
    DL_LAUNCH(simt_index_kernel, grid, block, 0, nullptr, out.data());
    for (unsigned b = 0; b < nb; b++)
        for (unsigned t = 0; t < nt; t++)
            cr_expect_eq(out[b * nt + t], b * 1000u + t, "block %u thread %u", b, t);
}

Test(simt, static_shared_is_per_block)
{
    int bad = 0;
    DL_LAUNCH(simt_shared_isolation_kernel, dim3(300), dim3(64), 0, nullptr, &bad);
    cr_assert_eq(bad, 0, "%d reads saw another block's shared memory", bad);
}

Test(simt, warp_shuffles)
{
    const unsigned T = 64;
    std::vector<float> out(T * 8, -1.0f);
    std::vector<double> outd(T, -1.0);
    DL_LAUNCH(simt_shuffle_kernel, dim3(1), dim3(T), 0, nullptr, out.data(), outd.data());
    for (unsigned tid = 0; tid < T; tid++) {
        const unsigned lane = tid % 32, wbase = tid - lane;
        const float *o = &out[tid * 8];
        const float wsum = (float)(32 * wbase + 31 * 32 / 2);
        cr_expect_eq(o[0], wsum, "xor butterfly, thread %u: %g", tid, (double)o[0]);
        cr_expect_eq(o[1], (float)(lane + 3 < 32 ? tid + 3 : tid), "down 3, thread %u: %g", tid, (double)o[1]);
        cr_expect_eq(o[2], (float)(lane % 8 >= 2 ? tid - 2 : tid), "up 2 width 8, thread %u: %g", tid, (double)o[2]);
        cr_expect_eq(o[3], (float)(wbase + (lane & ~15u) + 5), "idx 5 width 16, thread %u: %g", tid, (double)o[3]);
        /* width 8, xor 8: lanes 0-7 of each 16 would read a later group: own value; 8-15 read the earlier one */
        cr_expect_eq(o[4], (float)((lane & 8) ? tid - 8 : tid), "xor 8 width 8, thread %u: %g", tid, (double)o[4]);
        cr_expect_eq(o[5], (float)(wbase + 31 - lane), "idx 31-lane, thread %u: %g", tid, (double)o[5]);
        cr_expect_eq(o[6], (float)(lane % 4 < 3 ? tid + 1 : tid), "down 1 width 4, thread %u: %g", tid, (double)o[6]);
        cr_expect_eq(o[7], wsum, "dl_warp_sum, thread %u: %g", tid, (double)o[7]);
        cr_expect_eq(outd[tid], (double)(tid ^ 1u) + 0.25, "double xor 1, thread %u: %g", tid, outd[tid]);
    }
}

Test(simt, warp_votes)
{
    const unsigned T = 64;
    std::vector<unsigned> out(T * 6, 0);
    DL_LAUNCH(simt_vote_kernel, dim3(1), dim3(T), 0, nullptr, out.data());
    unsigned ballot3 = 0;
    for (unsigned l = 0; l < 32; l += 3) ballot3 |= 1u << l;
    for (unsigned tid = 0; tid < T; tid++) {
        const unsigned lane = tid % 32, *o = &out[tid * 6];
        cr_expect_eq(o[0], ballot3, "ballot, thread %u: 0x%08x", tid, o[0]);
        cr_expect_eq(o[1], 1u, "any, thread %u", tid);
        cr_expect_eq(o[2], 0u, "all (lane < 31), thread %u", tid);
        cr_expect_eq(o[3], 1u, "all (1), thread %u", tid);
        cr_expect_eq(o[4], lane % 2 == 0 ? 0x55550000u : 0xdeadbeefu, "partial ballot, thread %u: 0x%08x", tid, o[4]);
        cr_expect_eq(o[5], 496u, "reduce_add, thread %u: %u", tid, o[5]);
    }
}

Test(simt, syncthreads_count_and_or)
{
    int out[4] = {-1, -1, -1, -1};
    DL_LAUNCH(simt_sync_pred_kernel, dim3(1), dim3(200), 0, nullptr, out);
    cr_expect_eq(out[0], 50);
    cr_expect_eq(out[1], 1);
    cr_expect_eq(out[2], 1);
    cr_expect_eq(out[3], 0);
}

Test(simt, contended_atomics)
{
    const int B = 64, T = 256, N = B * T;
    int ci = 0, mx = -1, mn = 1, cas_counter = 0, exch = -1;
    unsigned cu = 0;
    float cf = 0.0f;
    double cd = 0.0;
    unsigned long long cll = 0;
    DL_LAUNCH(simt_atomics_kernel, dim3(B), dim3(T), 0, nullptr, &ci, &cu, &cf, &cd, &cll, &mx, &mn, &cas_counter,
              &exch);
    int want_max = -1;
    for (int g = 0; g < N; g++) want_max = want_max > (g * 7919) % 100003 ? want_max : (g * 7919) % 100003;
    cr_expect_eq(ci, N);
    cr_expect_eq(cu, 2u * N);
    cr_expect_eq(cf, (float)N, "float atomicAdd: %g", (double)cf); /* integers < 2^24: exact */
    cr_expect_eq(cd, 0.5 * N);
    cr_expect_eq(cll, 3ull * N);
    cr_expect_eq(mx, want_max);
    cr_expect_eq(mn, -want_max);
    cr_expect_eq(cas_counter, N);
    cr_expect(exch >= 0 && exch < N);
}

Test(simt, dynamic_shared_memory)
{
    const unsigned B = 5, T = 96;
    std::vector<float> x(B * T), y(B * T, -1.0f);
    for (unsigned i = 0; i < B * T; i++) x[i] = (float)i;
    DL_LAUNCH(simt_dyn_smem_kernel, dim3(B), dim3(T), 2 * T * sizeof(float), nullptr, x.data(), y.data());
    for (unsigned b = 0; b < B; b++)
        for (unsigned t = 0; t < T; t++)
            cr_expect_eq(y[b * T + t], 2.0f * x[b * T + (T - 1 - t)], "block %u thread %u", b, t);
}

Test(simt, dynamic_shared_memory_over_48k_needs_attribute)
{
    std::vector<float> y(2, -1.0f);
    const size_t big = 64 * 1024;
    cudaError_t e = ::simt::launch("simt_big_smem_kernel", simt_big_smem_kernel, dim3(2), dim3(128), big, nullptr,
                                   y.data());
    cr_assert_eq(e, cudaErrorInvalidValue);
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue);
    cr_expect(strstr(cudaGetErrorString(e), "simt_big_smem_kernel") != nullptr, "%s", cudaGetErrorString(e));
    DL_CUDA_CHECK(cudaFuncSetAttribute(simt_big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)big));
    DL_LAUNCH(simt_big_smem_kernel, dim3(2), dim3(128), big, nullptr, y.data());
    cr_expect_eq(y[0], 1.0f);
    cr_expect_eq(y[1], 1.0f);
}

Test(simt, kernel_parameters_are_per_thread_copies)
{
    std::vector<int> out(40, -1);
    DL_LAUNCH(simt_param_copy_kernel, 1, 40, 0, nullptr, 100, out.data());
    for (int t = 0; t < 40; t++) cr_expect_eq(out[t], 100 + t);
}

Test(simt, invalid_configuration_is_reported)
{
    std::vector<int> out(4, -1);
    cudaError_t e = ::simt::launch("simt_param_copy_kernel", simt_param_copy_kernel, dim3(1), dim3(2048), 0, nullptr,
                                   1, out.data());
    cr_assert_eq(e, cudaErrorInvalidConfiguration);
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
    cr_assert_eq(cudaGetLastError(), cudaSuccess, "cudaGetLastError must reset the error");
}

Test(simt, divergent_barrier_exit_is_an_error)
{
    std::vector<float> y(128, 0.0f);
    cudaError_t e = ::simt::launch("simt_divergent_exit_kernel", simt_divergent_exit_kernel, dim3(3), dim3(128), 0,
                                   nullptr, y.data());
    cr_assert_eq(e, cudaErrorLaunchFailure);
    cudaError_t last = cudaGetLastError();
    cr_assert_eq(last, cudaErrorLaunchFailure);
    const char *msg = cudaGetErrorString(last);
    cr_expect(strstr(msg, "simt_divergent_exit_kernel") != nullptr, "message does not name the kernel: %s", msg);
    cr_expect(strstr(msg, "__syncthreads") != nullptr, "%s", msg);
    /* the emulator is usable again after a failed launch */
    std::vector<int> out(32, -1);
    DL_LAUNCH(simt_param_copy_kernel, 1, 32, 0, nullptr, 5, out.data());
    cr_expect_eq(out[31], 36);
}

Test(simt, divergent_barrier_sites_is_an_error)
{
    std::vector<float> y(64, 0.0f);
    cudaError_t e = ::simt::launch("simt_divergent_sites_kernel", simt_divergent_sites_kernel, dim3(2), dim3(64), 0,
                                   nullptr, y.data());
    cr_assert_eq(e, cudaErrorLaunchFailure);
    const char *msg = cudaGetErrorString(cudaGetLastError());
    cr_expect(strstr(msg, "simt_divergent_sites_kernel") != nullptr, "%s", msg);
    cr_expect(strstr(msg, "different __syncthreads") != nullptr, "%s", msg);
}

Test(simt, shuffle_deadlock_is_an_error)
{
    std::vector<float> y(64, 0.0f);
    cudaError_t e = ::simt::launch("simt_shfl_deadlock_kernel", simt_shfl_deadlock_kernel, dim3(1), dim3(64), 0,
                                   nullptr, y.data());
    cr_assert_eq(e, cudaErrorLaunchFailure);
    const char *msg = cudaGetErrorString(cudaGetLastError());
    cr_expect(strstr(msg, "simt_shfl_deadlock_kernel") != nullptr, "%s", msg);
    cr_expect(strstr(msg, "__shfl_xor_sync") != nullptr, "%s", msg);
}

Test(simt, dl_launch_aborts_on_divergent_barrier, .signal = SIGABRT)
{
    std::vector<float> y(128, 0.0f);
    DL_LAUNCH(simt_divergent_exit_kernel, dim3(1), dim3(128), 0, nullptr, y.data());
}

Test(simt, partial_warps_and_exited_lanes)
{
    std::vector<float> out(80, -1.0f);
    std::vector<unsigned> ballots(48, 0);
    DL_LAUNCH(simt_partial_warp_kernel, 1, 48, 0, nullptr, out.data(), ballots.data());
    for (unsigned tid = 0; tid < 48; tid++) {
        const unsigned lane = tid % 32;
        if (tid >= 32 && lane >= 8)
            cr_expect(out[tid] != out[tid], "thread %u read a lane past the block: %g, want NaN", tid, (double)out[tid]);
        else
            cr_expect_eq(out[tid], (float)(lane + 8 < 32 ? tid + 8 : tid), "thread %u: %g", tid, (double)out[tid]);
    }
    for (unsigned tid = 0; tid < 16; tid++)
        cr_expect(out[48 + tid] != out[48 + tid], "thread %u read an exited lane: %g, want NaN", tid, (double)out[48 + tid]);
    for (unsigned tid = 0; tid < 48; tid++)
        if (!(tid < 32 && tid >= 16)) cr_expect_eq(ballots[tid], 0xffffu, "ballot of thread %u: 0x%08x", tid, ballots[tid]);
}

Test(simt, warp_mask_without_the_caller_is_an_error)
{
    std::vector<float> y(32, 0.0f);
    cudaError_t e = ::simt::launch("simt_bad_mask_kernel", simt_bad_mask_kernel, dim3(1), dim3(32), 0, nullptr, y.data());
    cr_assert_eq(e, cudaErrorLaunchFailure);
    const char *msg = cudaGetErrorString(cudaGetLastError());
    cr_expect(strstr(msg, "simt_bad_mask_kernel") != nullptr && strstr(msg, "does not name it") != nullptr, "%s", msg);
}

Test(simt, missing_barrier_shows_up)
{
    const char *order = getenv("SIMT_ORDER");
    if (order && strcmp(order, "mixed") != 0) cr_skip_test("SIMT_ORDER=%s fixes the thread order", order);
    const unsigned B = 4, T = 64;
    std::vector<float> y(B * T, 0.0f);
    DL_LAUNCH(simt_missing_barrier_kernel, dim3(B), dim3(T), 0, nullptr, y.data());
    unsigned wrong = 0;
    for (unsigned b = 0; b < B; b++)
        for (unsigned t = 0; t < T; t++) wrong += y[b * T + t] != (float)b + 1.0f;
    cr_expect(wrong > 0, "the racy broadcast gave the right answer in every block: the thread order hides races");
}

Test(simt, bf16_conversion_rounding)
{
    struct { uint32_t f; uint16_t b; } cases[] = {
        {0x3f800000u, 0x3f80u}, /* 1.0 */
        {0x3f808000u, 0x3f80u}, /* 1 + 2^-8: tie, to even (down) */
        {0x3f818000u, 0x3f82u}, /* 1 + 3*2^-8: tie, to even (up) */
        {0x3f808001u, 0x3f81u}, /* just above the tie: up */
        {0x3f807fffu, 0x3f80u}, /* just below the tie: down */
        {0xbf808001u, 0xbf81u}, /* negative */
        {0x7f800000u, 0x7f80u}, /* +inf */
        {0xff800000u, 0xff80u}, /* -inf */
        {0x7f7fffffu, 0x7f80u}, /* FLT_MAX rounds to inf */
        {0x7fc00000u, 0x7fffu}, /* NaN: canonical */
        {0xffc00001u, 0x7fffu}, /* negative NaN: canonical */
        {0x7f800001u, 0x7fffu}, /* signalling NaN that would round to inf if treated as a number */
        {0x00000001u, 0x0000u}, /* smallest subnormal float: to zero */
        {0x00018000u, 0x0002u}, /* subnormal tie: to even */
        {0x80000000u, 0x8000u}, /* -0 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float f;
        memcpy(&f, &cases[i].f, 4);
        uint16_t got = __bfloat16_as_ushort(__float2bfloat16(f));
        cr_expect_eq(got, cases[i].b, "bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].f, got, cases[i].b);
        cr_expect_eq(__bfloat16_as_ushort(__float2bfloat16_rn(f)), cases[i].b);
    }
    /* round trip of every non-NaN bf16 is exact */
    for (uint32_t b = 0; b < 0x10000u; b++) {
        if ((b & 0x7f80u) == 0x7f80u && (b & 0x7fu)) continue;
        __nv_bfloat16 h = __ushort_as_bfloat16((unsigned short)b);
        float f = __bfloat162float(h);
        uint32_t fb;
        memcpy(&fb, &f, 4);
        cr_assert_eq(fb, b << 16);
        cr_assert_eq(__bfloat16_as_ushort(__float2bfloat16(f)), b);
    }
    cr_expect_eq((float)__nv_bfloat16(2.5f), 2.5f);
    cr_expect_eq(dl_to_float(dl_from_float<__nv_bfloat16>(-3.0f)), -3.0f);
}

Test(simt, half_conversion_rounding)
{
    struct { uint32_t f; uint16_t h; } cases[] = {
        {0x3f800000u, 0x3c00u}, /* 1.0 */
        {0x3f801000u, 0x3c00u}, /* 1 + 2^-11: tie, to even (down) */
        {0x3f803000u, 0x3c02u}, /* 1 + 3*2^-11: tie, to even (up) */
        {0x3f801001u, 0x3c01u}, /* above the tie */
        {0xc0000000u, 0xc000u}, /* -2 */
        {0x477fe000u, 0x7bffu}, /* 65504 = max half */
        {0x477fefffu, 0x7bffu}, /* just below 65520: max half */
        {0x477ff000u, 0x7c00u}, /* 65520: tie between 65504 and 2^16 -> even -> inf */
        {0x7f800000u, 0x7c00u}, /* +inf */
        {0xff800000u, 0xfc00u}, /* -inf */
        {0x7fc00000u, 0x7fffu}, /* NaN: canonical */
        {0xff800001u, 0x7fffu}, /* negative NaN: canonical */
        {0x38800000u, 0x0400u}, /* 2^-14: smallest normal */
        {0x387fc000u, 0x03ffu}, /* 2^-14 - 2^-24: largest subnormal */
        {0x387fe000u, 0x0400u}, /* tie between largest subnormal and smallest normal -> even (normal) */
        {0x33800000u, 0x0001u}, /* 2^-24: smallest subnormal */
        {0x33000000u, 0x0000u}, /* 2^-25: tie between 0 and 2^-24 -> even (0) */
        {0x33000001u, 0x0001u}, /* just above 2^-25 -> 2^-24 */
        {0x33c00000u, 0x0002u}, /* 1.5 * 2^-24: tie -> even (2) */
        {0x34200000u, 0x0002u}, /* 2.5 * 2^-24: tie -> even (2) */
        {0xb3c00000u, 0x8002u}, /* negative subnormal */
        {0x32ffffffu, 0x0000u}, /* below 2^-25 -> 0 */
        {0x80000000u, 0x8000u}, /* -0 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float f;
        memcpy(&f, &cases[i].f, 4);
        uint16_t got = __half_as_ushort(__float2half(f));
        cr_expect_eq(got, cases[i].h, "half(0x%08x) = 0x%04x, want 0x%04x", cases[i].f, got, cases[i].h);
        cr_expect_eq(__half_as_ushort(__float2half_rn(f)), cases[i].h);
    }
    /* every non-NaN half converts to float exactly and back; value checked against ldexp */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        const uint32_t e = (h >> 10) & 31u, m = h & 0x3ffu;
        if (e == 31 && m) continue;
        const double mag = e == 31 ? INFINITY : e == 0 ? ldexp((double)m, -24) : ldexp(1024.0 + m, (int)e - 25);
        const double want = (h & 0x8000u) ? -mag : mag;
        const float f = __half2float(__ushort_as_half((unsigned short)h));
        cr_assert_eq((double)f, want, "half 0x%04x -> %g, want %g", h, (double)f, want);
        cr_assert_eq(__half_as_ushort(__float2half(f)), h);
    }
    for (uint32_t nan : {0x7c01u, 0x7e00u, 0xfe00u, 0xffffu}) { /* any NaN -> canonical 0x7fffffff, as CUDA */
        const float f = __half2float(__ushort_as_half((unsigned short)nan));
        uint32_t fb;
        memcpy(&fb, &f, 4);
        cr_expect_eq(fb, 0x7fffffffu, "half 0x%04x -> float 0x%08x", nan, fb);
    }
    const __half a = __float2half(1.5f), b = __float2half(2.25f);
    cr_expect_eq(__half2float(a * b), 3.375f);
    cr_expect_eq(__half2float(__hadd(a, b)), 3.75f);
}

Test(simt, runtime_api)
{
    cudaStream_t s;
    cudaEvent_t e0, e1;
    DL_CUDA_CHECK(cudaStreamCreate(&s));
    DL_CUDA_CHECK(cudaEventCreate(&e0));
    DL_CUDA_CHECK(cudaEventCreate(&e1));
    int *d = nullptr;
    DL_CUDA_CHECK(cudaMalloc(&d, 100 * sizeof(int)));
    cr_assert(((uintptr_t)d & 255) == 0, "cudaMalloc alignment");
    DL_CUDA_CHECK(cudaEventRecord(e0, s));
    DL_CUDA_CHECK(cudaMemsetAsync(d, 0, 100 * sizeof(int), s));
    DL_LAUNCH(simt_param_copy_kernel, 1, 100, 0, s, 7, d);
    DL_CUDA_CHECK(cudaEventRecord(e1, s));
    DL_CUDA_CHECK(cudaStreamSynchronize(s));
    float ms = -1.0f;
    DL_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    cr_expect(ms >= 0.0f);
    int h[100];
    DL_CUDA_CHECK(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, s));
    DL_CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < 100; i++) cr_expect_eq(h[i], 7 + i);
    DL_CUDA_CHECK(cudaFree(d));
    DL_CUDA_CHECK(cudaEventDestroy(e0));
    DL_CUDA_CHECK(cudaEventDestroy(e1));
    DL_CUDA_CHECK(cudaStreamDestroy(s));
    check_launch(cudaSuccess);
}

/* ---- traps: static shared memory poisoned per block; random interleaving -------------------- */

/* Each block reads its static shared memory before writing it: what the previous block on this
 * OS thread left there must not show (the emulator fills it with 0xFF bytes per block). */
__global__ void simt_static_smem_peek_kernel(unsigned *out)
{
    __shared__ unsigned s[64];
    out[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = 1234u + blockIdx.x;
}

Test(simt, static_shared_memory_is_poisoned_per_block)
{
    std::vector<unsigned> out(8 * 64, 0u);
    cr_assert_eq(simt::launch("peek", simt_static_smem_peek_kernel, dim3(8), dim3(64), 0, nullptr, out.data()),
                 cudaSuccess);
    for (size_t i = 0; i < out.size(); i++)
        cr_assert_eq(out[i], 0xFFFFFFFFu, "block %zu thread %zu read %u, not the poison", i / 64, i % 64, out[i]);
}

/* Every thread does s[0] += 1 without an atomic: a read-modify-write race. */
__global__ void simt_smem_rmw_race_kernel(int *out)
{
    __shared__ int s[1];
    if (threadIdx.x == 0) s[0] = 0;
    __syncthreads();
    s[0] += 1;
    __syncthreads();
    if (threadIdx.x == 0) *out = s[0];
}

/* Thread t reads what thread t+1 wrote, with the __syncthreads() missing. */
__global__ void simt_unsynced_neighbour_kernel(float *out)
{
    __shared__ float s[128];
    s[threadIdx.x] = (float)threadIdx.x;
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

Test(simt, random_order_catches_shared_rmw_race)
{
    int r = -1;
    // default (mixed) order: each thread runs its read-modify-write alone, the race is invisible
    cr_assert_eq(simt::launch("rmw", simt_smem_rmw_race_kernel, dim3(1), dim3(64), 0, nullptr, &r), cudaSuccess);
    cr_expect_eq(r, 64);
    simt::set_order("random", 4242);
    cudaError_t e = simt::launch("rmw", simt_smem_rmw_race_kernel, dim3(1), dim3(64), 0, nullptr, &r);
    cudaGetLastError();
    simt::set_order(NULL);
    cr_assert_eq(e, cudaErrorLaunchFailure, "the race was not caught");
    cr_expect(strstr(simt::last_error_message(), "shared-memory race") != NULL, "message: %s",
              simt::last_error_message());
}

Test(simt, random_order_catches_missing_barrier)
{
    std::vector<float> out(128, 0.0f);
    simt::set_order("forward");
    cr_assert_eq(simt::launch("nobar", simt_unsynced_neighbour_kernel, dim3(1), dim3(128), 0, nullptr, out.data()),
                 cudaSuccess);
    int wrong_fwd = 0;
    for (int t = 0; t < 128; t++) wrong_fwd += out[t] != (float)((t + 1) % 128);
    simt::set_order("random", 7);
    cr_assert_eq(simt::launch("nobar", simt_unsynced_neighbour_kernel, dim3(1), dim3(128), 0, nullptr, out.data()),
                 cudaSuccess);
    simt::set_order(NULL);
    int wrong = 0;
    for (int t = 0; t < 128; t++) wrong += out[t] != (float)((t + 1) % 128);
    cr_expect_eq(wrong, 128, "random order: %d of 128 threads read another thread's unsynchronised write", 128 - wrong);
    cr_expect_gt(wrong_fwd, 0); // forward order: the threads after t have not run yet either
}

/* Each thread writes s[t], meets its warp in a shuffle, then reads its lane neighbour's s[t ^ 1]
 * (same warp: visible after the warp intrinsic) and the other warp's s[(t + 32) % 64] (no
 * barrier: must not be visible, whatever has run before). */
__global__ void simt_warp_view_kernel(float *own, float *other)
{
    __shared__ float s[64];
    const unsigned t = threadIdx.x;
    s[t] = (float)t;
    const int x = __shfl_sync(0xffffffffu, (int)t, 0);
    own[t] = s[t ^ 1u] + (float)(x & 0);
    other[t] = s[(t + 32u) % 64u];
}

Test(simt, random_order_after_warp_intrinsic_sees_only_its_warp)
{
    std::vector<float> own(64, 0.0f), other(64, 0.0f);
    simt::set_order("random", 11);
    cr_assert_eq(simt::launch("warpview", simt_warp_view_kernel, dim3(1), dim3(64), 0, nullptr, own.data(), other.data()),
                 cudaSuccess);
    simt::set_order(NULL);
    for (unsigned t = 0; t < 64; t++) {
        cr_expect_eq(own[t], (float)(t ^ 1u), "thread %u: its lane's write is not visible after the shuffle", t);
        cr_expect(isnan(other[t]), "thread %u read the other warp's write (%g) without a barrier", t, other[t]);
    }
}
