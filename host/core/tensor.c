/* tensor.c - tensor views and shape helpers. */
#include "tensor.h"
#include "error.h"

#include <stdio.h>

int64_t dl_tensor_numel(const dl_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t dl_tensor_nbytes(const dl_tensor *t) { return (size_t)dl_tensor_numel(t) * dl_dtype_size(t->dtype); }

dl_tensor dl_tensor_view(void *data, dl_dtype dtype, int ndim, const int64_t *shape)
{
    DL_ASSERT(ndim >= 0 && ndim <= DL_MAX_DIMS);
    dl_tensor t = {.data = data, .dtype = dtype, .ndim = ndim};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    return t;
}

char *dl_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

int dl_shape_eq(const int64_t *a, int na, const int64_t *b, int nb)
{
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}
