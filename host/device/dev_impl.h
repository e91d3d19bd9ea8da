/* dev_impl.h - what the two device implementations share (private to host/device/): the
 * function table each fills and the handles' common heads. */
#ifndef DANLU_DEV_IMPL_H
#define DANLU_DEV_IMPL_H

#include "device/dl_dev.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dl_dev_stream {
    void *handle; /* cudaStream_t (real) or the emulator's token */
    int id;
    char name[48];
};

typedef struct dl_dev_vt {
    void (*close)(dl_dev *dev);
    const char *(*name)(const dl_dev *dev);
    dl_dev_status (*synchronize)(dl_dev *dev);
    dl_dev_status (*malloc_)(dl_dev *dev, void **p, size_t bytes);
    dl_dev_status (*free_)(dl_dev *dev, void *p);
    /* kind: 0 h2d, 1 d2h, 2 d2d */
    dl_dev_status (*memcpy_)(dl_dev *dev, void *dst, const void *src, size_t bytes, int kind, dl_dev_stream *s);
    dl_dev_status (*memset_)(dl_dev *dev, void *dst, int byte, size_t bytes, dl_dev_stream *s);
    dl_dev_status (*stream_create)(dl_dev *dev, dl_dev_stream **s, const char *name);
    dl_dev_status (*stream_destroy)(dl_dev *dev, dl_dev_stream *s);
    dl_dev_status (*stream_synchronize)(dl_dev *dev, dl_dev_stream *s);
    dl_dev_status (*event_create)(dl_dev *dev, dl_dev_event **e);
    dl_dev_status (*event_destroy)(dl_dev *dev, dl_dev_event *e);
    dl_dev_status (*event_record)(dl_dev *dev, dl_dev_event *e, dl_dev_stream *s);
    dl_dev_status (*stream_wait_event)(dl_dev *dev, dl_dev_stream *s, dl_dev_event *e);
    dl_dev_status (*event_synchronize)(dl_dev *dev, dl_dev_event *e);
    dl_dev_status (*event_elapsed_ms)(dl_dev *dev, float *ms, dl_dev_event *a, dl_dev_event *b);
    dl_dev_status (*gemm)(dl_dev *dev, dl_dev_stream *s, const dl_dev_gemm_desc *g, float alpha, const void *A,
                          const void *B, float beta, void *C, void *ws, size_t ws_bytes);
    dl_dev_status (*conv_algo)(dl_dev *dev, dl_dev_conv_dir dir, const dl_dev_tensor_desc *x,
                               const dl_dev_filter_desc *w, const dl_dev_conv_desc *c, const dl_dev_tensor_desc *y,
                               int *algo, size_t *ws_bytes);
    /* one entry for the three directions: x, w, y as in the forward (the direction's output is
     * y, x or w), alpha/beta blend into that output */
    dl_dev_status (*conv)(dl_dev *dev, dl_dev_stream *s, dl_dev_conv_dir dir, float alpha,
                          const dl_dev_tensor_desc *xd, const void *x, const dl_dev_filter_desc *wd, const void *w,
                          const dl_dev_tensor_desc *yd, const void *y, const dl_dev_conv_desc *c, int algo, void *ws,
                          size_t ws_bytes, float beta, void *out);
    /* kernel: 0 the library SDPA, 1 danlu's portable attention kernels, 2 its sm_80+ mma kernels
     * (dev.c picks 2 when dl_dev_attention_uses_mma) */
    dl_dev_status (*sdpa_forward)(dl_dev *dev, dl_dev_stream *s, int kernel, const dl_dev_sdpa_desc *a,
                                  const void *q, const void *k, const void *v, void *o, float *lse);
    dl_dev_status (*sdpa_backward)(dl_dev *dev, dl_dev_stream *s, int kernel, const dl_dev_sdpa_desc *a,
                                   const void *q, const void *k, const void *v, const void *o, const void *dout,
                                   const float *lse, float *delta, void *dq, void *dk, void *dv);
    dl_dev_status (*groupnorm_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                       float eps, int silu, const void *x, const float *gamma, const float *beta,
                                       void *y, float *mean, float *rstd, void *ws);
    dl_dev_status (*groupnorm_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G,
                                        int silu, const void *x, const float *gamma, const float *beta,
                                        const float *mean, const float *rstd, const void *dy, void *dx,
                                        float *dgamma, float *dbeta, void *ws);
    dl_dev_status (*lora_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                  float scale, const void *x, const void *W, const void *bias, const float *A,
                                  const float *B, float *u, void *y);
    dl_dev_status (*lora_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                   float scale, const void *x, const void *W, const float *A, const float *B,
                                   const void *dy, void *dx, float *dA, float *dB, int accumulate, float *ws);
    dl_dev_status (*lora_merge)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int out, int in, int rank, float scale,
                                void *W, const float *A, const float *B, int unmerge);
    /* kernels/ops.cu: the arguments of the dl_dev_ calls of the same names (dev.c has checked them) */
    dl_dev_status (*act_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                 void *y);
    dl_dev_status (*act_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                                  const void *dy, void *dx);
    dl_dev_status (*geglu_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                   void *y);
    dl_dev_status (*geglu_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                    const void *dy, void *dx);
    dl_dev_status (*add)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *a, const void *b, void *y);
    dl_dev_status (*scale)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y);
    dl_dev_status (*axpy)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y);
    dl_dev_status (*add_bcast_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                       int per_sample, const void *x, const float *v, void *y);
    dl_dev_status (*add_bcast_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                        int per_sample, const void *dy, void *dx, float *dv);
    dl_dev_status (*concat_channels_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                             int64_t C2, const void *a, const void *b, void *y);
    dl_dev_status (*concat_channels_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1,
                                              int64_t C2, const void *dy, void *da, void *db);
    dl_dev_status (*upsample_nearest2x_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                                int64_t W, int64_t C, const void *x, void *y);
    dl_dev_status (*upsample_nearest2x_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H,
                                                 int64_t W, int64_t C, const void *dy, void *dx);
    /* bwd: 0 pad x -> y, 1 crop dy -> dx (src, dst) */
    dl_dev_status (*pad2d)(dl_dev *dev, dl_dev_stream *s, int bwd, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                           int64_t C, int top, int left, int bottom, int right, const void *src, void *dst);
    dl_dev_status (*timestep_embedding)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t dim,
                                        const float *t, int flip_sin_to_cos, float downscale_freq_shift, float scale,
                                        float max_period, void *out);
    dl_dev_status (*layernorm_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C, float eps,
                                       const void *x, const float *gamma, const float *beta, void *y, float *mean,
                                       float *rstd);
    dl_dev_status (*layernorm_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C,
                                        const void *x, const float *gamma, const float *mean, const float *rstd,
                                        const void *dy, void *dx, float *dgamma, float *dbeta);
    dl_dev_status (*embed_tokens)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t T, int64_t C,
                                  int64_t V, const int32_t *ids, const float *tok, const float *pos, void *out);
    dl_dev_status (*embed_tokens_backward)(dl_dev *dev, dl_dev_stream *s, int64_t N, int64_t T, int64_t C, int64_t V,
                                           const int32_t *ids, const float *dout, float *dtok, float *dpos);
    dl_dev_status (*softmax_forward)(dl_dev *dev, dl_dev_stream *s, int64_t rows, int64_t cols, float scale,
                                     int64_t causal_tq, const float *x, float *y, float *lse);
    dl_dev_status (*softmax_backward)(dl_dev *dev, dl_dev_stream *s, int64_t rows, int64_t cols, const float *y,
                                      float *dp);
    dl_dev_status (*mse_loss_forward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                      const void *pred, const void *target, const float *weights, float *per_sample,
                                      float *loss);
    dl_dev_status (*mse_loss_backward)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D,
                                       const void *pred, const void *target, const float *weights, float dloss,
                                       void *dpred, void *dtarget);
    dl_dev_status (*adamw_step)(dl_dev *dev, dl_dev_stream *s, int64_t n, double lr, double beta1, double beta2,
                                double eps, double weight_decay, int64_t step, float *p, const float *g, float *m,
                                float *v);
    dl_dev_status (*sumsq)(dl_dev *dev, dl_dev_stream *s, int64_t n, const float *x, float *out);
    dl_dev_status (*clip_coef)(dl_dev *dev, dl_dev_stream *s, const float *sumsq, float max_norm, float *coef);
    dl_dev_status (*scale_by)(dl_dev *dev, dl_dev_stream *s, int64_t n, const float *coef, float *x);
    dl_dev_status (*to_f32)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *x, float *y);
    dl_dev_status (*from_f32)(dl_dev *dev, dl_dev_stream *s, dl_dtype dt, int64_t n, const float *x, void *y);
} dl_dev_vt;

struct dl_dev {
    const dl_dev_vt *vt;
    dl_dev_kind kind;
    int sm;                               /* compute capability, 10·major + minor (set at open) */
    unsigned long long attn_mma_calls;    /* attention calls that ran the mma kernels */
};

/* Shared argument checks (dev.c): DL_DEV_SUCCESS or DL_DEV_ERR_BAD_PARAM with a message. */
dl_dev_status dl_dev_check_gemm(const dl_dev_gemm_desc *g);
dl_dev_status dl_dev_check_conv(dl_dev_conv_dir dir, const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w,
                                const dl_dev_conv_desc *c, const dl_dev_tensor_desc *y);
dl_dev_status dl_dev_check_sdpa(const dl_dev_sdpa_desc *a);
/* Records "<call>: <message>" (dl_error_set) and returns st. */
dl_dev_status dl_dev_fail(dl_dev_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The implementations' constructors. */
dl_dev *dl_dev_emu_open(void);
/* The emulated device's memory: DANLU_EMU_MEMORY_MIB (read at open) caps what dl_dev_malloc
 * hands out, so a run that does not fit fails as it would on a card of that size; without it
 * there is no fixed size (DL_DEV_ERR_NOT_SUPPORTED). */
dl_dev_status dl_dev_emu_mem_info(dl_dev *dev, size_t *free_bytes, size_t *total_bytes);
#ifdef DANLU_DEV_HAVE_REAL
dl_dev *dl_dev_cuda_open(void);
int dl_dev_cuda_present(void);
dl_dev_status dl_dev_cuda_mem_info(dl_dev *dev, size_t *free_bytes, size_t *total_bytes);
dl_dev_status dl_dev_cuda_host_alloc(void **p, size_t bytes);
dl_dev_status dl_dev_cuda_host_free(void *p);
#endif

#ifdef __cplusplus
}
#endif
#endif
