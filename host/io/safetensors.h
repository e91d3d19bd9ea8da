/* safetensors.h - memory-mapped reader and atomic writer for .safetensors files.
 *
 * Format: 8-byte little-endian header length L, L bytes of JSON object mapping tensor names
 * to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the byte after the
 * header) plus an optional "__metadata__" object of string -> string; then the data.
 * The reader validates everything (see dl_st_parse) and never trusts the header. */
#ifndef DANLU_SAFETENSORS_H
#define DANLU_SAFETENSORS_H

#include "core/tensor.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Headers above this size are refused as absurd (real checkpoints stay well under 10 MB). */
#define DL_ST_MAX_HEADER (100u << 20)

typedef struct dl_st_tensor {
    char *name;
    dl_dtype dtype;
    int ndim;
    int64_t shape[DL_MAX_DIMS];
    uint64_t begin, end;   /* byte offsets into the data section */
    const void *data;      /* points into the mapping */
} dl_st_tensor;

typedef struct dl_st_file {
    char *path;            /* for messages */
    const uint8_t *base;   /* the whole file */
    size_t size;
    int mapped;            /* 1: base is an mmap to unmap on close */
    int n_tensors;
    dl_st_tensor *tensors; /* in data-offset order */
    int n_meta;
    char **meta_keys, **meta_vals;
} dl_st_file;

/* Map and validate path. Returns DL_OK, or DL_ERR with a message naming the file and the
 * problem (truncated, header not JSON, offsets out of range or overlapping, size not matching
 * shape x dtype, unknown dtype, duplicate names, absurd header, bad shapes); on error f is left
 * zeroed with nothing to release (dl_st_close on it is a harmless no-op). */
int dl_st_open(dl_st_file *f, const char *path);
/* Validate an in-memory image (not copied: buf must outlive f); f must be zero-initialised.
 * label names it in messages. On error, dl_st_close(f) still releases what was kept. */
int dl_st_parse(dl_st_file *f, const void *buf, size_t size, const char *label);
void dl_st_close(dl_st_file *f);

/* The tensor called name, or NULL. */
const dl_st_tensor *dl_st_find(const dl_st_file *f, const char *name);
/* A metadata value, or NULL. */
const char *dl_st_meta(const dl_st_file *f, const char *key);
/* Elements of t. */
int64_t dl_st_numel(const dl_st_tensor *t);
/* Convert t (F32/F16/BF16/F64) into dst (numel floats). DL_ERR (message) for other dtypes. */
int dl_st_read_f32(const dl_st_file *f, const dl_st_tensor *t, float *dst);
/* Give back the resident pages of t's bytes in a mapped file (madvise MADV_DONTNEED): after a
 * tensor is converted into its own buffer its file pages need not count in the process's memory.
 * The mapping stays valid: a later read faults the bytes in again from the file. No-op for a
 * file that is not mapped. */
void dl_st_drop_pages(const dl_st_file *f, const dl_st_tensor *t);

/* One tensor to write. */
typedef struct dl_st_entry {
    const char *name;
    dl_dtype dtype;
    int ndim;
    int64_t shape[DL_MAX_DIMS];
    const void *data;      /* numel * dtype size bytes */
} dl_st_entry;

/* Write entries (and metadata pairs meta[2i] = key, meta[2i+1] = value) to path atomically:
 * a temporary file in the same directory, fsync, rename. On any failure (disk full, not
 * writable) the temporary is removed, path is untouched, and DL_ERR names the file. */
int dl_st_save(const char *path, const dl_st_entry *entries, int n, const char *const *meta, int n_meta);

#ifdef __cplusplus
}
#endif
#endif
