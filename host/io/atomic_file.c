/* atomic_file.c - temporary file, fsync, rename: outputs are never half-written. */
#include "io/atomic_file.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int dl_atomic_begin(dl_atomic_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->path = path;
    f->fd = -1;
    size_t plen = strlen(path);
    f->tmp = malloc(plen + 16);
    if (!f->tmp) return dl_error_set("%s: out of memory", path);
    snprintf(f->tmp, plen + 16, "%s.tmp.XXXXXX", path);
    f->fd = mkstemp(f->tmp);
    if (f->fd < 0) {
        int e = errno;
        free(f->tmp);
        f->tmp = NULL;
        return dl_error_set("%s: cannot create a file in its directory: %s", path, strerror(e));
    }
    mode_t um = umask(0); /* mkstemp makes 0600: give the file the usual 0666 & ~umask */
    umask(um);
    fchmod(f->fd, 0666 & ~um);
    return DL_OK;
}

void dl_atomic_write(dl_atomic_file *f, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0 && !f->err) {
        ssize_t w = write(f->fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            f->err = errno;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
}

void dl_atomic_abort(dl_atomic_file *f)
{
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    f->tmp = NULL;
    f->fd = -1;
}

int dl_atomic_commit(dl_atomic_file *f)
{
    int e = f->err;
    if (!e && fsync(f->fd) != 0) e = errno;
    if (close(f->fd) != 0 && !e) e = errno;
    f->fd = -1;
    if (!e && rename(f->tmp, f->path) != 0) e = errno;
    if (e) {
        dl_atomic_abort(f);
        return dl_error_set("%s: write failed: %s (nothing was written)", f->path, strerror(e));
    }
    free(f->tmp);
    f->tmp = NULL;
    char *dcopy = strdup(f->path); /* make the rename durable */
    int dfd = dcopy ? open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    free(dcopy);
    return DL_OK;
}
