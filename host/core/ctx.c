/* ctx.c - execution context setup and its reusable scratch workspace. */
#include "ctx.h"
#include "backend/backend.h"
#include "error.h"

#include <stdatomic.h>
#include <stdlib.h>

typedef struct {
    void *p;
    size_t cap;
    char pad[64 - sizeof(void *) - sizeof(size_t)]; /* one cache line per thread buffer */
} ws_buf;

struct dl_workspace {
    int nthr;
    ws_buf *thr;                 // [nthr] per-thread buffers
    ws_buf shared[DL_WS_NSLOTS];
    atomic_size_t grows;
};

int dl_ctx_init(dl_ctx *ctx, int nthreads)
{
    ctx->ws = NULL;
    ctx->be = &dl_backend_cpu;
    ctx->be_state = NULL;
    ctx->conv_algo = DL_CONV_AUTO;
    ctx->pool = dl_pool_create(nthreads);
    if (!ctx->pool) return dl_error_set("cannot start the CPU thread pool");
    dl_workspace *ws = calloc(1, sizeof *ws);
    int nthr = dl_pool_nthreads(ctx->pool);
    ws_buf *thr = ws ? aligned_alloc(64, (size_t)nthr * sizeof *thr) : NULL;
    if (!thr) {
        free(ws);
        dl_pool_destroy(ctx->pool);
        ctx->pool = NULL;
        return dl_error_set("out of memory for the context workspace");
    }
    for (int i = 0; i < nthr; i++) thr[i] = (ws_buf){0};
    ws->nthr = nthr;
    ws->thr = thr;
    atomic_init(&ws->grows, 0);
    ctx->ws = ws;
    return DL_OK;
}

void dl_ctx_free(dl_ctx *ctx)
{
    if (ctx->be && ctx->be->close && ctx->be_state) ctx->be->close(ctx);
    ctx->be_state = NULL;
    dl_pool_destroy(ctx->pool);
    ctx->pool = NULL;
    dl_workspace *ws = ctx->ws;
    if (ws) {
        for (int i = 0; i < ws->nthr; i++) free(ws->thr[i].p);
        for (int i = 0; i < DL_WS_NSLOTS; i++) free(ws->shared[i].p);
        free(ws->thr);
        free(ws);
    }
    ctx->ws = NULL;
}

int dl_ctx_init_backend(dl_ctx *ctx, int nthreads, const struct dl_backend *be)
{
    DL_TRY(dl_ctx_init(ctx, nthreads));
    if (be) ctx->be = be;
    if (ctx->be->open && ctx->be->open(ctx) != DL_OK) {
        ctx->be = &dl_backend_cpu;
        dl_ctx_free(ctx);
        return DL_ERR;
    }
    return DL_OK;
}

const struct dl_backend *dl_be(const dl_ctx *ctx)
{
    return ctx && ctx->be ? ctx->be : &dl_backend_cpu;
}

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

static void *plain_alloc(size_t bytes, const char *what)
{
    void *p = aligned_alloc(64, round64(bytes ? bytes : 1));
    DL_ASSERTF(p, "%s scratch: out of memory (%zu bytes)", what, bytes);
    return p;
}

/* b holds at least bytes afterwards (old contents dropped). */
static void *grow(dl_workspace *ws, ws_buf *b, size_t bytes, const char *what)
{
    if (bytes <= b->cap && b->p) return b->p;
    free(b->p);
    b->p = NULL;
    b->cap = 0;
    size_t cap = round64(bytes ? bytes : 1);
    b->p = plain_alloc(cap, what);
    b->cap = cap;
    atomic_fetch_add_explicit(&ws->grows, 1, memory_order_relaxed);
    return b->p;
}

void *dl_ws_thread(const dl_ctx *ctx, int tid, size_t bytes)
{
    if (!ctx || !ctx->ws) return plain_alloc(bytes, "thread");
    dl_workspace *ws = ctx->ws;
    DL_ASSERTF(tid >= 0 && tid < ws->nthr, "workspace: thread %d out of [0, %d)", tid, ws->nthr);
    return grow(ws, &ws->thr[tid], bytes, "thread");
}

void *dl_ws_shared(const dl_ctx *ctx, int slot, size_t bytes)
{
    DL_ASSERTF(slot >= 0 && slot < DL_WS_NSLOTS, "workspace: bad slot %d", slot);
    if (!ctx || !ctx->ws) return plain_alloc(bytes, "shared");
    return grow(ctx->ws, &ctx->ws->shared[slot], bytes, "shared");
}

void dl_ws_release(const dl_ctx *ctx, void *p)
{
    if (!ctx || !ctx->ws) free(p);
}

size_t dl_ctx_workspace_grows(const dl_ctx *ctx)
{
    return ctx && ctx->ws ? atomic_load(&ctx->ws->grows) : 0;
}

size_t dl_ctx_workspace_bytes(const dl_ctx *ctx)
{
    if (!ctx || !ctx->ws) return 0;
    size_t n = 0;
    for (int i = 0; i < ctx->ws->nthr; i++) n += ctx->ws->thr[i].cap;
    for (int i = 0; i < DL_WS_NSLOTS; i++) n += ctx->ws->shared[i].cap;
    return n;
}
