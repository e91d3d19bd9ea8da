/* alloc_count.h - a process-wide count of heap allocations (every thread), for tests that
 * demand "nothing is allocated": alloc_count.c replaces malloc and its family in the
 * executable that links it (not usable under AddressSanitizer, which owns malloc). */
#ifndef DANLU_ALLOC_COUNT_H
#define DANLU_ALLOC_COUNT_H

#include <stdint.h>

/* Allocation calls (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc,
 * pvalloc) made by any thread since the start, counted only while counting is on. */
uint64_t alloc_count_get(void);
/* Turn counting on (1) or off (0); off at start. With DANLU_ALLOC_TRACE=1 in the environment
 * every counted call also prints its call stack to stderr. */
void alloc_count_enable(int on);

#endif
