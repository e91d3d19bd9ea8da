/* sha256.h - SHA-256 of memory and of files (incremental), for the model and LoRA hashes
 * front ends compare (A1111 shorthash, AddNet / sd-scripts sshs_* hashes), computed by OpenSSL's
 * libcrypto. Cached file hashes: io/hash_cache.h. */
#ifndef DANLU_CORE_SHA256_H
#define DANLU_CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_sha256 {
    void *ctx; /* libcrypto's EVP_MD_CTX, from init to final */
} dl_sha256;

/* init allocates the digest state and final releases it: every init needs its final. */
void dl_sha256_init(dl_sha256 *s);
void dl_sha256_update(dl_sha256 *s, const void *data, size_t n);
void dl_sha256_final(dl_sha256 *s, uint8_t out[32]);
/* Lower-case hex of a digest into hex[65]. */
void dl_sha256_hex(const uint8_t d[32], char hex[65]);
/* Lower-case hex of the digest of bytes [offset, end) of the file at path into hex[65].
 * Returns DL_OK or DL_ERR (message names the file). */
int dl_sha256_file(const char *path, uint64_t offset, char hex[65]);
/* The same over at most len bytes from offset (fewer where the file ends first; none past its end:
 * the digest of nothing), e.g. A1111's legacy model hash over 0x10000 bytes at 0x100000. */
int dl_sha256_range(const char *path, uint64_t offset, uint64_t len, char hex[65]);

#ifdef __cplusplus
}
#endif
#endif
