/* outputs.c - a training run's output directory, file names and numbered saves (outputs.h). */
#include "train/outputs.h"

#include "core/error.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int dl_train_mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) return dl_error_set("%s: cannot create: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return dl_error_set("%s: cannot create: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) return dl_error_set("%s: not a directory", buf);
    if (access(buf, W_OK) != 0) return dl_error_set("output_dir %s: not writable: %s", buf, strerror(errno));
    return DL_OK;
}

char *dl_train_out_file(const char *dir, const char *fmt, ...)
{
    char name[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0) return NULL;
    return p;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}
int dl_train_remove_save(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return -1;
    if (S_ISDIR(st.st_mode)) return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return unlink(path);
}

int dl_train_save_stems(const dl_train_config *c, int by_epoch, int n, char *stem, char *old, size_t cap)
{
    int rm = 0;
    if (!by_epoch) {
        snprintf(stem, cap, "%s-step%08d", c->output_name, n);
        if (c->save_last_n_steps > 0 && c->save_every_n_steps > 0) {
            rm = n - c->save_last_n_steps - 1;
            rm -= rm % c->save_every_n_steps;
        }
        snprintf(old, cap, "%s-step%08d", c->output_name, rm);
    } else {
        snprintf(stem, cap, "%s-%06d", c->output_name, n);
        if (c->save_last_n_epochs > 0 && c->save_every_n_epochs > 0) rm = n - c->save_every_n_epochs * c->save_last_n_epochs;
        snprintf(old, cap, "%s-%06d", c->output_name, rm);
    }
    return rm > 0;
}
