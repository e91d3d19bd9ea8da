/* addnet_hash.h - sd-scripts' precalculated AddNet hashes of a LoRA file (metadata keys
 * "sshs_model_hash" and "sshs_legacy_hash"), computed without writing anything.
 *
 * sd-scripts (library/train_util.py, precalculate_safetensors_hashes) serialises the tensors
 * with only the ss_* metadata keys by Python's safetensors, then
 *   sshs_model_hash  = sha256 hex of everything after the 8-byte length and the header,
 *   sshs_legacy_hash = first 8 hex of sha256 of the bytes [0x100000, 0x110000) of that image
 *                      (fewer, or none, when it is shorter).
 * So the hashes depend on the exact image safetensors would write: header JSON as serde_json
 * prints it ("__metadata__" first, always present, then the tensors), padded with spaces to a
 * multiple of 8, and the data of the tensors sorted by dtype (F64, F32, BF16, F16) then by name
 * (bytewise). The order of the metadata keys inside the header does not change its length and
 * so changes neither hash. */
#ifndef DANLU_ADDNET_HASH_H
#define DANLU_ADDNET_HASH_H

#include "io/safetensors.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The header safetensors would write for entries e[0..n) (dtypes F64/F32/BF16/F16) and the ss_*
 * pairs of meta (meta[2i] key, meta[2i+1] value; other keys ignored, in the given order), padded
 * with spaces: a malloc'd buffer of *len bytes followed by a NUL (not counted), or NULL when out
 * of memory. order (may be NULL) receives the data-section order: n indices into e. */
char *dl_addnet_header(const dl_st_entry *e, int n, const char *const *meta, int n_meta, size_t *len,
                       int *order);

/* sd-scripts' two hashes for e[0..n) and meta: model_hash = 64 lower-case hex + NUL, legacy_hash =
 * 8 hex + NUL. Returns DL_OK, or DL_ERR (message) when out of memory or a dtype is not one of
 * F64/F32/BF16/F16. */
int dl_addnet_hashes(const dl_st_entry *e, int n, const char *const *meta, int n_meta,
                     char model_hash[65], char legacy_hash[9]);

/* 1 when meta holds a key starting with "ss_". */
int dl_addnet_has_ss(const char *const *meta, int n_meta);

#ifdef __cplusplus
}
#endif
#endif
