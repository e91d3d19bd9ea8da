/* sha256.c - SHA-256 of memory and of files (model and LoRA hashes: A1111, sd-scripts' addnet
 * hashes), through OpenSSL's libcrypto, which uses the CPU's SHA extensions (SHA-NI) or its
 * AVX2 code where the CPU has them. */
#include "core/sha256.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void dl_sha256_init(dl_sha256 *s)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    DL_ASSERTF(c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1, "SHA-256: libcrypto could not start a digest");
    s->ctx = c;
}

void dl_sha256_update(dl_sha256 *s, const void *data, size_t n)
{
    if (n) DL_ASSERT(EVP_DigestUpdate((EVP_MD_CTX *)s->ctx, data, n) == 1);
}

void dl_sha256_final(dl_sha256 *s, uint8_t out[32])
{
    unsigned int k = 0;
    DL_ASSERT(EVP_DigestFinal_ex((EVP_MD_CTX *)s->ctx, out, &k) == 1 && k == 32);
    EVP_MD_CTX_free((EVP_MD_CTX *)s->ctx);
    s->ctx = NULL;
}

void dl_sha256_hex(const uint8_t d[32], char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = 0;
}

int dl_sha256_range(const char *path, uint64_t offset, uint64_t len, char hex[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    enum { BUF = 4 << 20 };
    uint8_t *buf = malloc(BUF);
    if (!buf) {
        close(fd);
        return dl_error_set("out of memory hashing %s", path);
    }
    (void)posix_fadvise(fd, (off_t)offset, 0, POSIX_FADV_SEQUENTIAL);
    dl_sha256 s;
    dl_sha256_init(&s);
    uint64_t pos = offset;
    int err = 0;
    while (len > 0) {
        ssize_t k = pread(fd, buf, len < BUF ? (size_t)len : BUF, (off_t)pos);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { err = errno; break; }
        if (k == 0) break; /* end of file */
        dl_sha256_update(&s, buf, (size_t)k);
        pos += (uint64_t)k;
        len -= (uint64_t)k;
    }
    free(buf);
    close(fd);
    uint8_t d[32];
    dl_sha256_final(&s, d);
    if (err) return dl_error_set("%s: read error: %s", path, strerror(err));
    dl_sha256_hex(d, hex);
    return DL_OK;
}

int dl_sha256_file(const char *path, uint64_t offset, char hex[65]) { return dl_sha256_range(path, offset, UINT64_MAX, hex); }
