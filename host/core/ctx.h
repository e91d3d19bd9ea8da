/* ctx.h - the execution context passed to every op: no global state.
 * CPU ops use pool for threads; CUDA ops take a stream as an explicit argument beside it. */
#ifndef DANLU_CTX_H
#define DANLU_CTX_H

#include "threadpool.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_ctx {
    dl_pool *pool;   /* CPU threads (may be NULL: run on the caller) */
} dl_ctx;

/* nthreads <= 0: DANLU_THREADS or every core. Returns DL_OK or DL_ERR. */
int dl_ctx_init(dl_ctx *ctx, int nthreads);
void dl_ctx_free(dl_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
