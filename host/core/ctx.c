/* ctx.c - execution context setup. */
#include "ctx.h"
#include "error.h"

#include <stddef.h>

int dl_ctx_init(dl_ctx *ctx, int nthreads)
{
    ctx->pool = dl_pool_create(nthreads);
    if (!ctx->pool) return dl_error_set("cannot start the CPU thread pool");
    return DL_OK;
}

void dl_ctx_free(dl_ctx *ctx)
{
    dl_pool_destroy(ctx->pool);
    ctx->pool = NULL;
}
