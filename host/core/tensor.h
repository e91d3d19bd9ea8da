/* tensor.h - a strided-free dense tensor view: data pointer, dtype, shape (row-major).
 *
 * Activations are channels-last: [N, H, W, C] for images, [N, T, C] for tokens. Linear
 * weights are [out, in] as in PyTorch; conv weights are [Cout, kh, kw, Cin] (converted from the
 * checkpoints' OIHW at load). A tensor does not own its memory: an arena or a mapped file does. */
#ifndef DANLU_TENSOR_H
#define DANLU_TENSOR_H

#include "dtype.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_MAX_DIMS 8

typedef struct dl_tensor {
    void *data;
    dl_dtype dtype;
    int ndim;
    int64_t shape[DL_MAX_DIMS];
} dl_tensor;

/* Number of elements (1 for a scalar, ndim == 0). */
int64_t dl_tensor_numel(const dl_tensor *t);
/* Size of the data in bytes. */
size_t dl_tensor_nbytes(const dl_tensor *t);
/* Build a view over data with the given shape. */
dl_tensor dl_tensor_view(void *data, dl_dtype dtype, int ndim, const int64_t *shape);
/* Write "[2, 3, 4]" into buf; returns buf. */
char *dl_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);
/* 1 if both shapes are equal. */
int dl_shape_eq(const int64_t *a, int na, const int64_t *b, int nb);

#ifdef __cplusplus
}
#endif
#endif
