/* error.c - thread-local user-facing error messages and the fatal-error path. */
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char g_msg[1024];

int dl_error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return DL_ERR;
}

int dl_error_prefix(const char *fmt, ...)
{
    char old[sizeof g_msg];
    memcpy(old, g_msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof g_msg)
        snprintf(g_msg + n, sizeof g_msg - (size_t)n, "%s", old);
    return DL_ERR;
}

const char *dl_error_msg(void) { return g_msg; }
void dl_error_clear(void) { g_msg[0] = 0; }

void dl_fatal(const char *stmt, const char *func, const char *file, int line, const char *fmt, ...)
{
    fprintf(stderr, "danlu: internal error: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n  `%s` in %s() at %s:%d\n", stmt, func, file, line);
    abort();
}
