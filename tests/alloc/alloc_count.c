/* alloc_count.c - malloc and its family replaced by wrappers that forward to glibc's own
 * allocator (__libc_malloc and friends) and count each allocation with an atomic counter, on
 * any thread (pool workers included) while counting is on. glibc routes its own internal
 * allocations (fopen, strdup, qsort's buffer, ...) through these symbols too. */
#include "alloc_count.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <execinfo.h>
#include <stdlib.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t sz);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);
extern void *__libc_valloc(size_t n);
extern void *__libc_pvalloc(size_t n);

static atomic_uint_fast64_t g_count;
static atomic_int g_on;

static int g_trace;                /* DANLU_ALLOC_TRACE=1: print each counted call's stack */
static _Thread_local int t_tracing; /* no recursion from inside backtrace */

__attribute__((constructor)) static void trace_init(void)
{
    const char *e = getenv("DANLU_ALLOC_TRACE");
    g_trace = e && *e == '1';
    void *dummy[2];
    if (g_trace) backtrace(dummy, 2); /* loads libgcc_s (which allocates) before counting starts */
}

static inline void note(void)
{
    if (atomic_load_explicit(&g_on, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&g_count, 1, memory_order_relaxed);
        if (g_trace && !t_tracing) {
            /* backtrace_symbols_fd writes without allocating; resolve static functions with
             * addr2line on the printed offsets */
            t_tracing = 1;
            void *frames[16];
            int n = backtrace(frames, 16);
            static const char hdr[] = "---- allocation counted at:\n";
            if (write(2, hdr, sizeof hdr - 1) < 0) { /* nothing to do */ }
            backtrace_symbols_fd(frames, n, 2);
            t_tracing = 0;
        }
    }
}

uint64_t alloc_count_get(void)
{
    return (uint64_t)atomic_load(&g_count);
}

void alloc_count_enable(int on)
{
    atomic_store(&g_on, on);
}

void *malloc(size_t n)
{
    note();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t sz)
{
    note();
    return __libc_calloc(n, sz);
}

void *realloc(void *p, size_t n)
{
    note();
    return __libc_realloc(p, n);
}

void free(void *p)
{
    __libc_free(p);
}

void *memalign(size_t align, size_t n)
{
    note();
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    note();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    note();
    if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
    void *p = __libc_memalign(align, n);
    if (!p && n) return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n)
{
    note();
    return __libc_valloc(n);
}

void *pvalloc(size_t n)
{
    note();
    return __libc_pvalloc(n);
}
