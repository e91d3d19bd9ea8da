/* test_hash_cache.c - cached file hashes: a second lookup reads the cache (no rehash), a file
 * that changed (new mtime or size) is hashed again, a corrupt cache is ignored and rewritten,
 * two processes storing at once lose nothing, and the threaded job gives the same digest. The
 * digests themselves are checked against hashlib in test_addnet_hash.c and test_sample.c. */
#include "core/error.h"
#include "core/sha256.h"
#include "io/hash_cache.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(hash_cache, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* Set the file's mtime to sec seconds (keeping its contents). */
static void set_mtime(const char *path, long sec)
{
    struct timespec ts[2] = {{sec, 0}, {sec, 0}};
    cr_assert_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void digest_of(const char *text, char hex[65])
{
    uint8_t d[32];
    dl_sha256 s;
    dl_sha256_init(&s);
    dl_sha256_update(&s, text, strlen(text));
    dl_sha256_final(&s, d);
    dl_sha256_hex(d, hex);
}

Test(hash_cache, second_lookup_is_a_hit_and_a_changed_file_is_rehashed)
{
    dl_hash_cache c;
    char cpath[1024], fpath[1024], hex[65], want[65];
    snprintf(cpath, sizeof cpath, "%s", tu_tmp("cache/sub/hashes.json")); /* directories made on store */
    snprintf(fpath, sizeof fpath, "%s", tu_tmp("model.safetensors"));
    dl_hash_cache_at(&c, cpath);
    write_file(fpath, "first contents");
    set_mtime(fpath, 1000000);
    int hit = -1;
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK, "%s", dl_error_msg());
    digest_of("first contents", want);
    cr_expect_str_eq(hex, want);
    cr_expect_eq(hit, 0);
    struct stat st;
    cr_expect_eq(stat(cpath, &st), 0, "the cache file was not written");

    dl_hash_stats before = dl_hash_cache_stats();
    memset(hex, 0, sizeof hex);
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
    cr_expect_eq(hit, 1, "second lookup was not answered from the cache");
    cr_expect_str_eq(hex, want);
    dl_hash_stats after = dl_hash_cache_stats();
    cr_expect_eq(after.computed, before.computed, "the file was hashed again");
    cr_expect_eq(after.hits, before.hits + 1);

    /* another byte range of the same file is its own entry */
    cr_assert_eq(dl_hash_file(&c, fpath, 6, UINT64_MAX, hex, &hit), DL_OK);
    digest_of("contents", want);
    cr_expect_str_eq(hex, want);
    cr_expect_eq(hit, 0);
    cr_assert_eq(dl_hash_file(&c, fpath, 0, 5, hex, &hit), DL_OK);
    digest_of("first", want);
    cr_expect_str_eq(hex, want);
    cr_expect_eq(hit, 0);

    /* same size, new mtime: rehashed */
    write_file(fpath, "other contents");
    set_mtime(fpath, 2000000);
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
    digest_of("other contents", want);
    cr_expect_str_eq(hex, want, "a file with a new mtime gave the cached hash");
    cr_expect_eq(hit, 0);
    /* same mtime, new size: rehashed */
    write_file(fpath, "other contents, longer");
    set_mtime(fpath, 2000000);
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
    digest_of("other contents, longer", want);
    cr_expect_str_eq(hex, want, "a file with a new size gave the cached hash");
    cr_expect_eq(hit, 0);
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
    cr_expect_eq(hit, 1);
}

Test(hash_cache, corrupt_cache_is_ignored_and_rewritten)
{
    dl_hash_cache c;
    char cpath[1024], fpath[1024], hex[65], want[65];
    snprintf(cpath, sizeof cpath, "%s", tu_tmp("hashes.json"));
    snprintf(fpath, sizeof fpath, "%s", tu_tmp("lora.safetensors"));
    write_file(cpath, "{\"version\": 1, \"hashes\": {\"trunc");
    write_file(fpath, "abc");
    dl_hash_cache_at(&c, cpath);
    int hit = -1;
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK, "%s", dl_error_msg());
    digest_of("abc", want);
    cr_expect_str_eq(hex, want);
    cr_expect_eq(hit, 0);
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
    cr_expect_eq(hit, 1, "the rewritten cache was not used");
    /* a cache entry with a malformed digest is not trusted */
    write_file(cpath, "{\"version\": 1, \"hashes\": {}}");
    cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
    cr_expect_eq(hit, 0);
}

Test(hash_cache, disabled_cache_reads_and_writes_nothing)
{
    dl_hash_cache c;
    dl_hash_cache_default(&c, 0);
    cr_expect_eq(c.enabled, 0);
    char fpath[1024], hex[65];
    snprintf(fpath, sizeof fpath, "%s", tu_tmp("m.bin"));
    write_file(fpath, "x");
    int hit = -1;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(dl_hash_file(&c, fpath, 0, UINT64_MAX, hex, &hit), DL_OK);
        cr_expect_eq(hit, 0);
    }
    /* the default location follows XDG_CACHE_HOME */
    setenv("XDG_CACHE_HOME", "/some/where", 1);
    dl_hash_cache_default(&c, 1);
    cr_expect_eq(c.enabled, 1);
    cr_expect_str_eq(c.path, "/some/where/danlu/hashes.json");
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/home/u", 1);
    dl_hash_cache_default(&c, 1);
    cr_expect_str_eq(c.path, "/home/u/.cache/danlu/hashes.json");
}

/* Two processes store 25 entries each into one cache at the same time: every entry is there
 * afterwards and the file is a valid cache. */
Test(hash_cache, two_concurrent_writers_lose_nothing)
{
    enum { PER = 25 };
    char cpath[1024];
    snprintf(cpath, sizeof cpath, "%s", tu_tmp("shared/hashes.json"));
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < PER; i++) {
            char p[64], text[64];
            snprintf(p, sizeof p, "f%d_%d", w, i);
            snprintf(text, sizeof text, "writer %d file %d", w, i);
            write_file(tu_tmp(p), text);
        }
    pid_t pid[2];
    for (int w = 0; w < 2; w++) {
        pid[w] = fork();
        cr_assert_geq(pid[w], 0);
        if (pid[w] == 0) {
            dl_hash_cache c;
            dl_hash_cache_at(&c, cpath);
            int bad = 0;
            for (int i = 0; i < PER; i++) {
                char p[64], hex[65];
                snprintf(p, sizeof p, "f%d_%d", w, i);
                bad |= dl_hash_file(&c, tu_tmp(p), 0, UINT64_MAX, hex, NULL) != DL_OK;
            }
            _exit(bad);
        }
    }
    for (int w = 0; w < 2; w++) {
        int status = 0;
        cr_assert_eq(waitpid(pid[w], &status, 0), pid[w]);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed", w);
    }
    dl_hash_cache c;
    dl_hash_cache_at(&c, cpath);
    dl_hash_stats before = dl_hash_cache_stats();
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < PER; i++) {
            char p[64], text[64], hex[65], want[65];
            snprintf(p, sizeof p, "f%d_%d", w, i);
            snprintf(text, sizeof text, "writer %d file %d", w, i);
            int hit = 0;
            cr_assert_eq(dl_hash_file(&c, tu_tmp(p), 0, UINT64_MAX, hex, &hit), DL_OK);
            digest_of(text, want);
            cr_expect_str_eq(hex, want);
            cr_expect_eq(hit, 1, "entry of writer %d file %d was lost", w, i);
        }
    cr_expect_eq(dl_hash_cache_stats().computed, before.computed);
}

Test(hash_cache, job_on_a_thread)
{
    dl_hash_cache c;
    char cpath[1024], fpath[1024], hex[65], want[65];
    snprintf(cpath, sizeof cpath, "%s", tu_tmp("hashes.json"));
    snprintf(fpath, sizeof fpath, "%s", tu_tmp("big.bin"));
    FILE *f = fopen(fpath, "wb");
    cr_assert_not_null(f);
    char *buf = malloc(3 << 20);
    cr_assert_not_null(buf);
    for (int i = 0; i < (3 << 20); i++) buf[i] = (char)(i * 7 + (i >> 9));
    fwrite(buf, 1, 3 << 20, f);
    fclose(f);
    uint8_t d[32];
    dl_sha256 s;
    dl_sha256_init(&s);
    dl_sha256_update(&s, buf, 3 << 20);
    dl_sha256_final(&s, d);
    dl_sha256_hex(d, want);
    free(buf);
    dl_hash_cache_at(&c, cpath);
    dl_hash_job j;
    cr_assert_eq(dl_hash_job_start(&j, &c, fpath, 0, UINT64_MAX), DL_OK);
    int hit = -1;
    cr_assert_eq(dl_hash_job_wait(&j, hex, &hit), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(hex, want);
    cr_expect_eq(hit, 0);
    cr_assert_eq(dl_hash_job_start(&j, &c, fpath, 0, UINT64_MAX), DL_OK);
    cr_assert_eq(dl_hash_job_wait(&j, hex, &hit), DL_OK);
    cr_expect_eq(hit, 1);
    /* a missing file: the error names it, from the waiting thread */
    cr_assert_eq(dl_hash_job_start(&j, &c, tu_tmp("no-such.safetensors"), 0, UINT64_MAX), DL_OK);
    cr_expect_eq(dl_hash_job_wait(&j, hex, NULL), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "no-such.safetensors") != NULL, "%s", dl_error_msg());
    dl_hash_job_cancel(&j); /* already waited: nothing to do */
}
