/* hash_cache.h - SHA-256 of model and LoRA files, remembered between runs (as A1111 keeps
 * cache.json): an entry is keyed by the file's absolute path and the hashed byte range, and
 * holds the file's size and modification time when it was hashed; a file whose size or mtime
 * changed is hashed again. The cache is one JSON file, by default
 * $XDG_CACHE_HOME/danlu/hashes.json (~/.cache/danlu/hashes.json), rewritten under an exclusive
 * lock on a lock file beside it and by atomic replace, so concurrent danlu processes neither
 * corrupt it nor lose each other's entries. A cache file that cannot be read as one is ignored
 * with a warning (and rewritten at the next store); the cache never makes a run fail.
 *
 * dl_hash_job computes such a hash on a thread of its own, so loading and sampling or training
 * proceed while the file is hashed; its result is waited for only where it is written. */
#ifndef DANLU_IO_HASH_CACHE_H
#define DANLU_IO_HASH_CACHE_H

#include <pthread.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_hash_cache {
    int enabled;     /* 0: every hash is computed, nothing is read or written */
    char path[4096]; /* the cache file */
} dl_hash_cache;

/* The user's cache ($XDG_CACHE_HOME/danlu/hashes.json, else $HOME/.cache/danlu/hashes.json);
 * enabled = 0 (e.g. --no-hash-cache), or no usable location, gives a disabled cache. */
void dl_hash_cache_default(dl_hash_cache *c, int enabled);
/* A cache in the file at path (tests, tools). */
void dl_hash_cache_at(dl_hash_cache *c, const char *path);

/* Counters of this process (for tests and --verbose): lookups answered from the cache, and
 * hashes computed. */
typedef struct dl_hash_stats { long hits, computed; } dl_hash_stats;
dl_hash_stats dl_hash_cache_stats(void);

/* Lower-case hex SHA-256 of bytes [offset, offset + len) of the file at path (len UINT64_MAX: to
 * its end), from the cache when it holds an entry for this path and range with the file's
 * current size and mtime, else computed (and stored). *hit (may be NULL) says which. Returns
 * DL_OK, or DL_ERR naming the file (cannot open / read). */
int dl_hash_file(const dl_hash_cache *c, const char *path, uint64_t offset, uint64_t len, char hex[65], int *hit);

/* A hash computed on its own thread. */
typedef struct dl_hash_job {
    pthread_t thread;
    int started;
    const dl_hash_cache *cache;
    char *path;
    uint64_t offset, len;
    int rc, hit;
    char hex[65];
    char err[512];
} dl_hash_job;

/* Start hashing (as dl_hash_file) on a new thread; when no thread can be started the hash is
 * computed here and now. DL_OK, or DL_ERR when out of memory. */
int dl_hash_job_start(dl_hash_job *j, const dl_hash_cache *c, const char *path, uint64_t offset, uint64_t len);
/* Wait for the job (once). DL_OK with hex filled (and *hit, may be NULL), or DL_ERR with the
 * job's message. Releases the job. */
int dl_hash_job_wait(dl_hash_job *j, char hex[65], int *hit);
/* Wait and discard the result (cleanup paths). Safe on a job never started (zeroed). */
void dl_hash_job_cancel(dl_hash_job *j);

#ifdef __cplusplus
}
#endif
#endif
