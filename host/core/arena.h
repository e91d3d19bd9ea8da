/* arena.h - bump allocators, one per lifetime class (frozen weights; LoRA parameters,
 * gradients and optimizer moments; activations; scratch). Allocation is a pointer bump with
 * 64-byte alignment; reset frees everything at once. An arena never grows: its capacity is
 * sized once (e.g. from the first training step), so nothing is allocated in the steady state. */
#ifndef DANLU_ARENA_H
#define DANLU_ARENA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_arena {
    const char *name;   /* for messages: "weights", "activations", ... */
    char *base;
    size_t cap, used, peak;
    int measuring;      /* 1: a measuring arena (dl_arena_init_measure) */
    const struct dl_ctx *dev; /* set: the reservation is the memory of this ctx's device backend
                                 (dl_arena_init_on), which host code never dereferences */
} dl_arena;

/* Reserve cap bytes. Returns DL_OK, or DL_ERR with a message naming the arena. */
int dl_arena_init(dl_arena *a, const char *name, size_t cap);
/* dl_arena_init in the memory of ctx's backend: host memory for the CPU backend (exactly
 * dl_arena_init), device memory for a backend with device_memory (then dl_arena_calloc fills
 * through the backend and dl_arena_free returns the memory to it). ctx must outlive the arena. */
struct dl_ctx;
int dl_arena_init_on(dl_arena *a, const char *name, size_t cap, const struct dl_ctx *ctx);
/* 1 when a's memory belongs to a device backend (host code must not read or write it). */
int dl_arena_on_device(const dl_arena *a);
/* A measuring arena: it reserves nothing and never runs out; allocations only count (used, peak,
 * with the same 64-byte rounding as a real arena) and return a placeholder address that must
 * not be read or written (it points into read-only memory). Code that fills what it allocates
 * checks dl_arena_measuring and skips the filling: a loader run against a measuring arena is
 * the measure of the arena it needs (dl_unet_weights_bytes and friends). */
void dl_arena_init_measure(dl_arena *a, const char *name);
/* 1 when a is a measuring arena. */
int dl_arena_measuring(const dl_arena *a);
void dl_arena_free(dl_arena *a);
/* 64-byte aligned, uninitialised; NULL (with a message) when the arena is full. */
void *dl_arena_alloc(dl_arena *a, size_t bytes);
/* Same, zero-filled (a measuring arena fills nothing). */
void *dl_arena_calloc(dl_arena *a, size_t bytes);
/* Current mark, and release back to it (stack discipline for scratch). */
size_t dl_arena_mark(const dl_arena *a);
void dl_arena_release(dl_arena *a, size_t mark);
void dl_arena_reset(dl_arena *a);

/* A grow-only buffer (the other steady-state tool, for working memory whose size is known only
 * per call): afterwards *p holds at least n bytes. It is reallocated only when n exceeds *cap,
 * and then its contents are not kept. Returns DL_OK, or DL_ERR naming `what` when memory runs
 * out (*p and *cap unchanged). Free *p with free(). */
int dl_buf_reserve(void **p, size_t *cap, size_t n, const char *what);

#ifdef __cplusplus
}
#endif
#endif
