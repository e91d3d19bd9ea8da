/* arena.c - 64-byte aligned bump allocation over one reservation. */
#include "arena.h"
#include "backend/backend.h"
#include "error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int dl_arena_init(dl_arena *a, const char *name, size_t cap)
{
    memset(a, 0, sizeof *a);
    a->name = name;
    cap = (cap + 63) & ~(size_t)63;
    if (cap == 0) return DL_OK;
    a->base = aligned_alloc(64, cap);
    if (!a->base) return dl_error_set("out of memory reserving %zu bytes for the %s arena", cap, name);
    a->cap = cap;
    return DL_OK;
}

int dl_arena_init_on(dl_arena *a, const char *name, size_t cap, const struct dl_ctx *ctx)
{
    const dl_backend *be = dl_be(ctx);
    if (!be->device_memory) return dl_arena_init(a, name, cap);
    memset(a, 0, sizeof *a);
    a->name = name;
    a->dev = ctx;
    cap = (cap + 255) & ~(size_t)255;
    if (cap == 0) return DL_OK;
    a->base = be->alloc(ctx, cap);
    if (!a->base)
        return dl_error_prefix("reserving %.1f MiB for the %s arena on %s: ", cap / 1048576.0, name, be->name);
    a->cap = cap;
    return DL_OK;
}

int dl_arena_on_device(const dl_arena *a) { return a->dev != NULL; }

void dl_arena_init_measure(dl_arena *a, const char *name)
{
    memset(a, 0, sizeof *a);
    a->name = name;
    a->cap = SIZE_MAX;
    a->measuring = 1;
}

int dl_arena_measuring(const dl_arena *a) { return a->measuring; }

/* What a measuring arena hands out: read-only, so a write through it faults at once. */
static const _Alignas(64) unsigned char measure_placeholder[64];

void dl_arena_free(dl_arena *a)
{
    if (a->dev) dl_be(a->dev)->free(a->dev, a->base);
    else free(a->base);
    memset(a, 0, sizeof *a);
}

void *dl_arena_alloc(dl_arena *a, size_t bytes)
{
    size_t need = (bytes + 63) & ~(size_t)63;
    if (need < bytes || a->used + need > a->cap || a->used + need < a->used) {
        dl_error_set("the %s arena is full: %zu bytes requested, %zu of %zu in use", a->name, bytes, a->used, a->cap);
        return NULL;
    }
    void *p = a->measuring ? (void *)(uintptr_t)measure_placeholder : a->base + a->used;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void *dl_arena_calloc(dl_arena *a, size_t bytes)
{
    void *p = dl_arena_alloc(a, bytes);
    if (p && a->dev) dl_be(a->dev)->fill(a->dev, p, 0, bytes);
    else if (p && !a->measuring) memset(p, 0, bytes);
    return p;
}

size_t dl_arena_mark(const dl_arena *a) { return a->used; }
void dl_arena_release(dl_arena *a, size_t mark) { DL_ASSERT(mark <= a->used); a->used = mark; }
void dl_arena_reset(dl_arena *a) { a->used = 0; }

int dl_buf_reserve(void **p, size_t *cap, size_t n, const char *what)
{
    if (*p && n <= *cap) return DL_OK;
    void *q = malloc(n ? n : 1);
    if (!q) return dl_error_set("%s: out of memory (%zu bytes)", what, n);
    free(*p);
    *p = q;
    *cap = n;
    return DL_OK;
}
