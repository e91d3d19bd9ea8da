/* error.h - one error family: user-facing messages and CHECK for programming errors.
 *
 * User-facing errors (bad files, bad configs) are reported by returning DL_ERR from the
 * failing function after dl_error_set() has recorded a message naming the file and the
 * problem; the caller at the top (the CLI) prints dl_error_msg() and exits non-zero.
 * The message buffer is thread-local so concurrent loaders do not trample each other.
 *
 * Programming errors (violated shape contracts, impossible states) use DL_CHECK / DL_ASSERT:
 * they print the statement, function, file and line, then abort. */
#ifndef DANLU_ERROR_H
#define DANLU_ERROR_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DL_OK = 0, DL_ERR = -1 };

/* Record a user-facing error message (printf-style). Returns DL_ERR so callers can write
 * `return dl_error_set("%s: truncated", path);`. */
int dl_error_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefix the current message with more context ("loading X: " + old message). Returns DL_ERR. */
int dl_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last message recorded on this thread ("" if none). */
const char *dl_error_msg(void);
void dl_error_clear(void);

/* Abort with statement, function, file and line. */
void dl_fatal(const char *stmt, const char *func, const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 5, 6)));

#define DL_ASSERT(cond) \
    do { if (!(cond)) dl_fatal(#cond, __func__, __FILE__, __LINE__, "assertion failed"); } while (0)
#define DL_ASSERTF(cond, ...) \
    do { if (!(cond)) dl_fatal(#cond, __func__, __FILE__, __LINE__, __VA_ARGS__); } while (0)
/* Propagate DL_ERR from a call that already recorded its message. */
#define DL_TRY(expr) \
    do { if ((expr) != DL_OK) return DL_ERR; } while (0)

#ifdef __cplusplus
}
#endif
#endif
