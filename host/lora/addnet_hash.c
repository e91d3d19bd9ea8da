/* addnet_hash.c - sd-scripts' sshs_model_hash / sshs_legacy_hash of a LoRA's tensors and ss_* metadata. */
#include "lora/addnet_hash.h"
#include "core/error.h"
#include "core/sha256.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growing byte buffer; ok drops to 0 once an allocation fails. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    int ok;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (!b->ok) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->ok = 0;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string as serde_json prints it: only '"', '\\' and control bytes are escaped
 * (\b \f \n \r \t, else \u00xx lower-case); every other byte, UTF-8 included, is copied. */
static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        switch (*c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            if (*c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *c);
                sb_put(b, esc, 6);
            } else {
                sb_put(b, (const char *)c, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

/* Rank of a dtype in safetensors' Dtype enum (the data section is sorted by it, descending);
 * -1 for dtypes safetensors has no counterpart of here. */
static int dtype_rank(dl_dtype t)
{
    switch (t) {
    case DL_BOOL: return 0;
    case DL_U8: return 1;
    case DL_I8: return 2;
    case DL_I16: return 3;
    case DL_U16: return 4;
    case DL_F16: return 5;
    case DL_BF16: return 6;
    case DL_I32: return 7;
    case DL_U32: return 8;
    case DL_F32: return 9;
    case DL_F64: return 10;
    case DL_I64: return 11;
    case DL_U64: return 12;
    default: return -1;
    }
}

typedef struct keyed {
    const dl_st_entry *e;
    int idx;
} keyed;

static int cmp_keyed(const void *pa, const void *pb)
{
    const dl_st_entry *a = ((const keyed *)pa)->e, *b = ((const keyed *)pb)->e;
    int ra = dtype_rank(a->dtype), rb = dtype_rank(b->dtype);
    if (ra != rb) return rb - ra;
    return strcmp(a->name, b->name); /* unsigned bytes, as Rust's str ordering */
}

/* order[0..n) = indices of e in safetensors' data-section order (names are distinct).
 * Returns 0, or -1 when out of memory. */
static int sort_order(const dl_st_entry *e, int n, int *order)
{
    keyed *k = malloc((size_t)(n > 0 ? n : 1) * sizeof *k);
    if (!k) return -1;
    for (int i = 0; i < n; i++) k[i] = (keyed){&e[i], i};
    qsort(k, (size_t)n, sizeof *k, cmp_keyed);
    for (int i = 0; i < n; i++) order[i] = k[i].idx;
    free(k);
    return 0;
}

static uint64_t entry_bytes(const dl_st_entry *e)
{
    uint64_t nb = dl_dtype_size(e->dtype);
    for (int d = 0; d < e->ndim; d++) nb *= (uint64_t)e->shape[d];
    return nb;
}

int dl_addnet_has_ss(const char *const *meta, int n_meta)
{
    for (int i = 0; i < n_meta; i++)
        if (strncmp(meta[2 * i], "ss_", 3) == 0) return 1;
    return 0;
}

char *dl_addnet_header(const dl_st_entry *e, int n, const char *const *meta, int n_meta, size_t *len,
                       int *order)
{
    int *ord = malloc((size_t)(n > 0 ? n : 1) * sizeof *ord);
    if (!ord || sort_order(e, n, ord) != 0) {
        free(ord);
        return NULL;
    }
    sbuf b = {NULL, 0, 0, 1};
    sb_str(&b, "{\"__metadata__\":{");
    int first = 1;
    for (int i = 0; i < n_meta; i++) {
        if (strncmp(meta[2 * i], "ss_", 3) != 0) continue;
        if (!first) sb_put(&b, ",", 1);
        first = 0;
        sb_json_string(&b, meta[2 * i]);
        sb_put(&b, ":", 1);
        sb_json_string(&b, meta[2 * i + 1]);
    }
    sb_put(&b, "}", 1);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const dl_st_entry *t = &e[ord[i]];
        char num[64];
        sb_put(&b, ",", 1);
        sb_json_string(&b, t->name);
        sb_str(&b, ":{\"dtype\":");
        sb_json_string(&b, dl_dtype_name(t->dtype));
        sb_str(&b, ",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)t->shape[d]);
            sb_str(&b, num);
        }
        uint64_t nb = entry_bytes(t);
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + nb));
        sb_str(&b, num);
        off += nb;
    }
    sb_put(&b, "}", 1);
    while (b.ok && b.n % 8) sb_put(&b, " ", 1);
    if (!b.ok) {
        free(b.p);
        free(ord);
        return NULL;
    }
    if (order) memcpy(order, ord, (size_t)n * sizeof *ord);
    free(ord);
    *len = b.n;
    return b.p;
}

/* Feed the part of src (which sits at [pos, pos + n) of the image) that falls in [lo, hi). */
static void feed_window(dl_sha256 *s, const void *src, uint64_t pos, uint64_t n, uint64_t lo, uint64_t hi)
{
    uint64_t a = pos > lo ? pos : lo, z = pos + n < hi ? pos + n : hi;
    if (a < z) dl_sha256_update(s, (const uint8_t *)src + (a - pos), (size_t)(z - a));
}

static void to_hex(const uint8_t *d, int n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[2 * n] = 0;
}

int dl_addnet_hashes(const dl_st_entry *e, int n, const char *const *meta, int n_meta,
                     char model_hash[65], char legacy_hash[9])
{
    for (int i = 0; i < n; i++)
        if (dtype_rank(e[i].dtype) < 0)
            return dl_error_set("AddNet hash: tensor '%s' has dtype %s, which safetensors cannot hold", e[i].name,
                                dl_dtype_name(e[i].dtype));
    int *ord = malloc((size_t)(n > 0 ? n : 1) * sizeof *ord);
    size_t hlen = 0;
    char *hdr = ord ? dl_addnet_header(e, n, meta, n_meta, &hlen, ord) : NULL;
    if (!hdr) {
        free(ord);
        return dl_error_set("AddNet hash: out of memory building the header");
    }
    const uint64_t lo = 0x100000, hi = 0x110000; /* the legacy hash's window */
    uint8_t len8[8], dig[32];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    dl_sha256 model, legacy;
    dl_sha256_init(&model);
    dl_sha256_init(&legacy);
    feed_window(&legacy, len8, 0, 8, lo, hi);
    feed_window(&legacy, hdr, 8, hlen, lo, hi);
    uint64_t pos = 8 + (uint64_t)hlen;
    for (int i = 0; i < n; i++) {
        const dl_st_entry *t = &e[ord[i]];
        uint64_t nb = entry_bytes(t);
        if (nb) dl_sha256_update(&model, t->data, (size_t)nb);
        feed_window(&legacy, t->data, pos, nb, lo, hi);
        pos += nb;
    }
    dl_sha256_final(&model, dig);
    to_hex(dig, 32, model_hash);
    dl_sha256_final(&legacy, dig);
    to_hex(dig, 4, legacy_hash);
    free(hdr);
    free(ord);
    return DL_OK;
}
