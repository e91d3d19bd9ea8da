/* atomic_file.h - write a file so that it either appears whole or not at all: a temporary
 * beside the target (umask-filtered mode 0666), fsync, rename, fsync of the directory. */
#ifndef DANLU_ATOMIC_FILE_H
#define DANLU_ATOMIC_FILE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_atomic_file {
    const char *path;   /* the target, for messages */
    char *tmp;          /* the temporary beside it */
    int fd;
    int err;            /* first errno of a failed write (0: none) */
} dl_atomic_file;

/* Create the temporary for path. DL_OK, or DL_ERR naming path (directory missing, not writable). */
int dl_atomic_begin(dl_atomic_file *f, const char *path);
/* Append n bytes; a failure is remembered and reported by dl_atomic_commit. */
void dl_atomic_write(dl_atomic_file *f, const void *buf, size_t n);
/* fsync, close, rename over path. On any failure (including an earlier write) the temporary is
 * removed, path is untouched, and DL_ERR says "<path>: write failed: <reason>". */
int dl_atomic_commit(dl_atomic_file *f);
/* Give up: remove the temporary. */
void dl_atomic_abort(dl_atomic_file *f);

#ifdef __cplusplus
}
#endif
#endif
