/* hash_cache.c - cached SHA-256 of files and hashing on a thread (see hash_cache.h).
 *
 * File format: {"version": 1, "hashes": {"<absolute path>#<offset>+<len|end>":
 *   {"size": "<bytes>", "mtime": "<seconds>.<nanoseconds>", "sha256": "<hex>"}, ...}}; size and
 * mtime are strings so they compare exactly (cJSON prints numbers to 15 digits when that reads
 * back within an epsilon, which a nanosecond mtime does not survive). */
#include "io/hash_cache.h"

#include "core/error.h"
#include "core/sha256.h"
#include "io/atomic_file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static atomic_long g_hits, g_computed;

dl_hash_stats dl_hash_cache_stats(void)
{
    dl_hash_stats s = {atomic_load(&g_hits), atomic_load(&g_computed)};
    return s;
}

void dl_hash_cache_at(dl_hash_cache *c, const char *path)
{
    c->enabled = path && *path && strlen(path) < sizeof c->path;
    snprintf(c->path, sizeof c->path, "%s", c->enabled ? path : "");
}

void dl_hash_cache_default(dl_hash_cache *c, int enabled)
{
    c->enabled = 0;
    c->path[0] = 0;
    if (!enabled) return;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0] == '/') n = snprintf(c->path, sizeof c->path, "%s/danlu/hashes.json", xdg);
    else if (home && *home) n = snprintf(c->path, sizeof c->path, "%s/.cache/danlu/hashes.json", home);
    else return;
    c->enabled = n > 0 && (size_t)n < sizeof c->path;
}

/* mkdir -p of the directory holding file. 0 on success. */
static int make_parent_dirs(const char *file)
{
    char d[4096];
    snprintf(d, sizeof d, "%s", file);
    char *slash = strrchr(d, '/');
    if (!slash || slash == d) return 0;
    *slash = 0;
    for (char *p = d + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(d, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(d, 0777) != 0 && errno != EEXIST ? -1 : 0;
}

/* The cache's JSON (a fresh empty one when the file is missing; when it is unreadable or not
 * a cache, also empty, with a warning). NULL only when out of memory. */
static cJSON *read_cache(const char *path)
{
    cJSON *root = NULL;
    FILE *f = fopen(path, "rb");
    if (f) {
        char *text = NULL;
        size_t n = 0, cap = 0;
        for (;;) {
            if (n + 4096 + 1 > cap) {
                cap = cap ? 2 * cap : 65536;
                char *t = realloc(text, cap);
                if (!t) break;
                text = t;
            }
            size_t k = fread(text + n, 1, 4096, f);
            n += k;
            if (k == 0) break;
        }
        fclose(f);
        if (text) {
            text[n] = 0;
            root = cJSON_ParseWithLength(text, n);
            free(text);
        }
        if (!root || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "hashes"))) {
            fprintf(stderr, "danlu: warning: %s: not a hash cache (corrupt?); ignored, it will be rewritten\n", path);
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        root = cJSON_CreateObject();
        if (!root || !cJSON_AddNumberToObject(root, "version", 1) || !cJSON_AddObjectToObject(root, "hashes")) {
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

typedef struct file_id {
    char key[PATH_MAX + 64];
    char size[24], mtime[40];
} file_id;

static int identify(const char *path, uint64_t offset, uint64_t len, file_id *id)
{
    char abs[PATH_MAX];
    if (!realpath(path, abs)) return -1;
    struct stat st;
    if (stat(abs, &st) != 0) return -1;
    if (len == UINT64_MAX) snprintf(id->key, sizeof id->key, "%s#%llu+end", abs, (unsigned long long)offset);
    else snprintf(id->key, sizeof id->key, "%s#%llu+%llu", abs, (unsigned long long)offset, (unsigned long long)len);
    snprintf(id->size, sizeof id->size, "%lld", (long long)st.st_size);
    snprintf(id->mtime, sizeof id->mtime, "%lld.%09ld", (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
    return 0;
}

static int lookup(const dl_hash_cache *c, const file_id *id, char hex[65])
{
    int lock = -1, found = 0;
    char lp[4200];
    snprintf(lp, sizeof lp, "%s.lock", c->path);
    lock = open(lp, O_RDONLY | O_CLOEXEC);
    if (lock >= 0) flock(lock, LOCK_SH);
    struct stat st;
    if (stat(c->path, &st) == 0) {
        cJSON *root = read_cache(c->path);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "hashes"), id->key);
        const cJSON *sz = cJSON_GetObjectItemCaseSensitive(e, "size"), *mt = cJSON_GetObjectItemCaseSensitive(e, "mtime");
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "sha256");
        if (cJSON_IsString(sz) && cJSON_IsString(mt) && cJSON_IsString(h) && !strcmp(sz->valuestring, id->size) &&
            !strcmp(mt->valuestring, id->mtime) && strlen(h->valuestring) == 64 &&
            strspn(h->valuestring, "0123456789abcdef") == 64) {
            memcpy(hex, h->valuestring, 65);
            found = 1;
        }
        cJSON_Delete(root);
    }
    if (lock >= 0) close(lock);
    return found;
}

/* Add or replace the entry; any failure only warns. */
static void store(const dl_hash_cache *c, const file_id *id, const char hex[65])
{
    if (make_parent_dirs(c->path) != 0) {
        fprintf(stderr, "danlu: warning: cannot create the directory of %s: %s; hash not cached\n", c->path,
                strerror(errno));
        return;
    }
    char lp[4200];
    snprintf(lp, sizeof lp, "%s.lock", c->path);
    int lock = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (lock < 0 || flock(lock, LOCK_EX) != 0) {
        fprintf(stderr, "danlu: warning: cannot lock %s: %s; hash not cached\n", lp, strerror(errno));
        if (lock >= 0) close(lock);
        return;
    }
    /* re-read under the lock: another process may have added entries since our lookup */
    cJSON *root = read_cache(c->path);
    cJSON *hashes = cJSON_GetObjectItemCaseSensitive(root, "hashes");
    cJSON *e = cJSON_CreateObject();
    char *text = NULL;
    if (root && hashes && e && cJSON_AddStringToObject(e, "size", id->size) &&
        cJSON_AddStringToObject(e, "mtime", id->mtime) && cJSON_AddStringToObject(e, "sha256", hex)) {
        cJSON_DeleteItemFromObjectCaseSensitive(hashes, id->key);
        cJSON_AddItemToObject(hashes, id->key, e);
        e = NULL;
        text = cJSON_Print(root);
    }
    cJSON_Delete(e);
    if (text) {
        dl_atomic_file f;
        if (dl_atomic_begin(&f, c->path) == DL_OK) {
            dl_atomic_write(&f, text, strlen(text));
            dl_atomic_write(&f, "\n", 1);
            if (dl_atomic_commit(&f) != DL_OK) fprintf(stderr, "danlu: warning: %s; hash not cached\n", dl_error_msg());
        } else {
            fprintf(stderr, "danlu: warning: %s; hash not cached\n", dl_error_msg());
        }
        free(text);
    }
    cJSON_Delete(root);
    close(lock);
}

int dl_hash_file(const dl_hash_cache *c, const char *path, uint64_t offset, uint64_t len, char hex[65], int *hit)
{
    if (hit) *hit = 0;
    file_id id;
    int cached = c && c->enabled && identify(path, offset, len, &id) == 0;
    if (cached && lookup(c, &id, hex)) {
        atomic_fetch_add(&g_hits, 1);
        if (hit) *hit = 1;
        return DL_OK;
    }
    DL_TRY(dl_sha256_range(path, offset, len, hex));
    atomic_fetch_add(&g_computed, 1);
    if (cached) {
        file_id now; /* not stored when the file changed while it was hashed */
        if (identify(path, offset, len, &now) == 0 && !strcmp(now.size, id.size) && !strcmp(now.mtime, id.mtime))
            store(c, &id, hex);
    }
    return DL_OK;
}

static void *job_main(void *arg)
{
    dl_hash_job *j = arg;
    j->rc = dl_hash_file(j->cache, j->path, j->offset, j->len, j->hex, &j->hit);
    if (j->rc != DL_OK) snprintf(j->err, sizeof j->err, "%s", dl_error_msg());
    return NULL;
}

int dl_hash_job_start(dl_hash_job *j, const dl_hash_cache *c, const char *path, uint64_t offset, uint64_t len)
{
    memset(j, 0, sizeof *j);
    j->path = strdup(path);
    if (!j->path) return dl_error_set("out of memory hashing %s", path);
    j->cache = c;
    j->offset = offset;
    j->len = len;
    if (pthread_create(&j->thread, NULL, job_main, j) == 0) j->started = 2;
    else {
        job_main(j); /* no thread: hash now */
        j->started = 1;
    }
    return DL_OK;
}

int dl_hash_job_wait(dl_hash_job *j, char hex[65], int *hit)
{
    if (!j->started) return dl_error_set("internal: waiting for a hash that was never started");
    if (j->started == 2) pthread_join(j->thread, NULL);
    j->started = 0;
    free(j->path);
    j->path = NULL;
    if (j->rc != DL_OK) return dl_error_set("%s", j->err);
    memcpy(hex, j->hex, 65);
    if (hit) *hit = j->hit;
    return DL_OK;
}

void dl_hash_job_cancel(dl_hash_job *j)
{
    char hex[65];
    if (j->started) (void)dl_hash_job_wait(j, hex, NULL);
}
