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
    /* kernel: 0 the library SDPA, 1 danlu's attention kernels */
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
} dl_dev_vt;

struct dl_dev {
    const dl_dev_vt *vt;
    dl_dev_kind kind;
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
#ifdef DANLU_DEV_HAVE_REAL
dl_dev *dl_dev_cuda_open(void);
int dl_dev_cuda_present(void);
#endif

#ifdef __cplusplus
}
#endif
#endif
