/* image.c - image decoding (stb_image, libwebp) and a PNG writer with text chunks (zlib). */
#include "image.h"
#include "core/arena.h"
#include "core/error.h"
#include "io/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <webp/decode.h>
#include <zlib.h>

/* stb_image compiled here (static, so it cannot clash with a shared libstb) with its
 * allocations routed through heap_*: the plain C heap, or a dl_image_reader's bump heap while
 * that reader decodes on this thread. */
static void *heap_malloc(size_t n);
static void *heap_realloc(void *p, size_t n);
static void heap_free(void *p);
#define STBI_MALLOC(n) heap_malloc(n)
#define STBI_REALLOC(p, n) heap_realloc(p, n)
#define STBI_FREE(p) heap_free(p)
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
/* file-wide: GCC reports stb's declared-but-unused statics at the end of the file */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#include <stb_image.h>
#pragma GCC diagnostic pop

static _Thread_local dl_image_reader *t_reader; /* the reader decoding on this thread, or NULL */

enum { HEAP_HDR = 16 }; /* each bump block: its size in a 16-byte header, then the bytes */

static size_t heap_round(size_t n) { return (n + 15) & ~(size_t)15; }

static int in_heap(const dl_image_reader *r, const void *p)
{
    const uint8_t *b = p;
    return r->heap && b >= r->heap && b < r->heap + r->heap_cap;
}

static void *heap_malloc(size_t n)
{
    dl_image_reader *r = t_reader;
    if (!r) return malloc(n);
    size_t need = HEAP_HDR + heap_round(n);
    r->heap_demand += need; /* an upper bound of what a bump heap needs for this image */
    if (r->heap_used + need > r->heap_cap) return malloc(n); /* grown after this image */
    uint8_t *b = r->heap + r->heap_used;
    memcpy(b, &n, sizeof n);
    r->heap_used += need;
    return b + HEAP_HDR;
}

static void *heap_realloc(void *p, size_t n)
{
    dl_image_reader *r = t_reader;
    if (!r) return realloc(p, n);
    if (!p) return heap_malloc(n);
    if (!in_heap(r, p)) {
        r->heap_demand += HEAP_HDR + heap_round(n);
        return realloc(p, n);
    }
    uint8_t *b = (uint8_t *)p - HEAP_HDR;
    size_t old;
    memcpy(&old, b, sizeof old);
    if (b + HEAP_HDR + heap_round(old) == r->heap + r->heap_used &&
        (size_t)(b - r->heap) + HEAP_HDR + heap_round(n) <= r->heap_cap) {
        /* the last block: grow or shrink in place */
        r->heap_demand += HEAP_HDR + heap_round(n);
        r->heap_used = (size_t)(b - r->heap) + HEAP_HDR + heap_round(n);
        memcpy(b, &n, sizeof n);
        return p;
    }
    void *q = heap_malloc(n);
    if (q) memcpy(q, p, old < n ? old : n);
    return q;
}

static void heap_free(void *p)
{
    dl_image_reader *r = t_reader;
    if (r && in_heap(r, p)) return; /* bump blocks go when the image is done */
    free(p);
}

/* The whole file at path into the grow-only buffer *buf (*cap bytes; one spare byte), *n its
 * length; open/read, so nothing else is allocated. */
static int read_whole(const char *path, uint8_t **buf, size_t *cap, size_t *n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0) { close(fd); return dl_error_set("%s: cannot read its size", path); }
    const size_t len = (size_t)st.st_size;
    if (dl_buf_reserve((void **)buf, cap, len + 1, path) != DL_OK) { close(fd); return DL_ERR; }
    size_t got = 0;
    while (got < len) {
        ssize_t k = read(fd, *buf + got, len - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { close(fd); return dl_error_set("%s: read error", path); }
        got += (size_t)k;
    }
    close(fd);
    *n = len;
    return DL_OK;
}

/* Decode bytes[0..n) into img (RGB). r == NULL: img->data is malloc'd (dl_image_free); else it
 * is r->px and stb_image allocates from r's bump heap, which is grown after an image that
 * needed more, so the next one like it allocates nothing. */
static int decode(dl_image_reader *r, const uint8_t *bytes, size_t n, const char *label, dl_image *img)
{
    memset(img, 0, sizeof *img);
    if (n == 0) return dl_error_set("%s: empty file, not an image", label);
    if (n >= 12 && memcmp(bytes, "RIFF", 4) == 0 && memcmp(bytes + 8, "WEBP", 4) == 0) {
        int w, h;
        if (!WebPGetInfo(bytes, n, &w, &h)) return dl_error_set("%s: corrupt or unsupported WebP image", label);
        const size_t sz = (size_t)w * h * 3;
        uint8_t *dst = NULL;
        if (r) {
            DL_TRY(dl_buf_reserve((void **)&r->px, &r->px_cap, sz, label));
            dst = r->px;
        } else if (!(dst = malloc(sz))) {
            return dl_error_set("%s: out of memory (%zu bytes)", label, sz);
        }
        if (!WebPDecodeRGBInto(bytes, n, dst, sz, w * 3)) {
            if (!r) free(dst);
            return dl_error_set("%s: corrupt or unsupported WebP image", label);
        }
        img->w = w;
        img->h = h;
        img->data = dst;
        return DL_OK;
    }
    if (n > 0x7fffffff) return dl_error_set("%s: file too large to decode", label);
    int w, h, c;
    if (r) r->heap_used = r->heap_demand = 0;
    t_reader = r;
    uint8_t *px = stbi_load_from_memory(bytes, (int)n, &w, &h, &c, 3);
    t_reader = NULL;
    if (!px) return dl_error_set("%s: cannot decode image: %s", label, stbi_failure_reason());
    img->w = w;
    img->h = h;
    if (!r) {
        img->data = px; /* stb allocated it with malloc */
        return DL_OK;
    }
    const size_t sz = (size_t)w * h * 3;
    int rc = dl_buf_reserve((void **)&r->px, &r->px_cap, sz, label);
    if (rc == DL_OK) {
        memcpy(r->px, px, sz);
        img->data = r->px;
    } else {
        memset(img, 0, sizeof *img);
    }
    if (!in_heap(r, px)) free(px);
    /* stb's blocks that spilled out of the bump heap were freed by stb (heap_free); make the
     * heap big enough for this image so the next one like it stays inside */
    if (r->heap_demand > r->heap_cap &&
        dl_buf_reserve((void **)&r->heap, &r->heap_cap, r->heap_demand + r->heap_demand / 4, label) != DL_OK)
        dl_error_clear(); /* not fatal: the next image spills to the C heap again */
    r->heap_used = 0;
    return rc;
}

int dl_image_decode(dl_image *img, const uint8_t *bytes, size_t n, const char *label)
{
    return decode(NULL, bytes, n, label, img);
}

int dl_image_load(dl_image *img, const char *path)
{
    uint8_t *bytes = NULL;
    size_t cap = 0, n = 0;
    memset(img, 0, sizeof *img);
    int rc = read_whole(path, &bytes, &cap, &n);
    if (rc == DL_OK) rc = decode(NULL, bytes, n, path, img);
    free(bytes);
    return rc;
}

void dl_image_free(dl_image *img)
{
    free(img->data);
    memset(img, 0, sizeof *img);
}

int dl_image_read(dl_image_reader *r, const char *path, dl_image *img)
{
    size_t n = 0;
    memset(img, 0, sizeof *img);
    DL_TRY(read_whole(path, &r->file, &r->file_cap, &n));
    return decode(r, r->file, n, path, img);
}

void dl_image_reader_free(dl_image_reader *r)
{
    free(r->file);
    free(r->heap);
    free(r->px);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- PNG writing */

typedef struct { uint8_t *p; size_t n, cap; int oom; } bytebuf;

static void bb_put(bytebuf *b, const void *src, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_u32(bytebuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    bb_put(b, x, 4);
}

static void put_chunk(bytebuf *b, const char type[4], const uint8_t *data, size_t n)
{
    put_u32(b, (uint32_t)n);
    size_t start = b->n;
    bb_put(b, type, 4);
    if (n) bb_put(b, data, n);
    if (b->oom) return;
    put_u32(b, (uint32_t)crc32(0, b->p + start, (uInt)(n + 4)));
}

static int is_plain_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

int dl_png_save(const char *path, const dl_image *img, const char *const *text, int n_text)
{
    bytebuf b = {0};
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    bb_put(&b, sig, 8);
    uint8_t ihdr[13];
    uint32_t w = (uint32_t)img->w, h = (uint32_t)img->h;
    for (int i = 0; i < 4; i++) { ihdr[i] = (uint8_t)(w >> (24 - 8 * i)); ihdr[4 + i] = (uint8_t)(h >> (24 - 8 * i)); }
    ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0; /* 8-bit RGB */
    put_chunk(&b, "IHDR", ihdr, 13);
    for (int i = 0; i < n_text; i++) {
        const char *key = text[2 * i], *val = text[2 * i + 1];
        bytebuf t = {0};
        bb_put(&t, key, strlen(key) + 1);
        if (is_plain_ascii(val)) {
            bb_put(&t, val, strlen(val));
            put_chunk(&b, "tEXt", t.p, t.n);
        } else {
            static const uint8_t flags[4] = {0, 0, 0, 0}; /* uncompressed, no language, no translated key */
            bb_put(&t, flags, 4);
            bb_put(&t, val, strlen(val));
            put_chunk(&b, "iTXt", t.p, t.n);
        }
        free(t.p);
    }
    /* image data: each row prefixed with filter type 1 (Sub), zlib-compressed */
    size_t row = (size_t)w * 3, raw_n = (row + 1) * h;
    uint8_t *raw = malloc(raw_n ? raw_n : 1);
    uLongf zcap = compressBound((uLong)raw_n);
    uint8_t *z = malloc(zcap);
    if (!raw || !z) { free(raw); free(z); free(b.p); return dl_error_set("%s: out of memory encoding PNG", path); }
    for (uint32_t y = 0; y < h; y++) {
        uint8_t *dst = raw + y * (row + 1);
        const uint8_t *src = img->data + y * row;
        dst[0] = 1;
        for (size_t x = 0; x < row; x++) dst[1 + x] = (uint8_t)(src[x] - (x >= 3 ? src[x - 3] : 0));
    }
    int zrc = compress2(z, &zcap, raw, (uLong)raw_n, 6);
    free(raw);
    if (zrc != Z_OK) { free(z); free(b.p); return dl_error_set("%s: zlib compression failed", path); }
    put_chunk(&b, "IDAT", z, zcap);
    free(z);
    put_chunk(&b, "IEND", NULL, 0);
    if (b.oom) { free(b.p); return dl_error_set("%s: out of memory encoding PNG", path); }

    dl_atomic_file af;
    if (dl_atomic_begin(&af, path) != DL_OK) {
        free(b.p);
        return DL_ERR;
    }
    dl_atomic_write(&af, b.p, b.n);
    free(b.p);
    return dl_atomic_commit(&af);
}

/* ---------------------------------------------------------------- PNG text reading */

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static char *inflate_text(const uint8_t *z, size_t n)
{
    size_t cap = n * 4 + 64;
    for (int tries = 0; tries < 12; tries++, cap *= 4) {
        char *out = malloc(cap + 1);
        uLongf got = cap;
        int rc = uncompress((Bytef *)out, &got, z, (uLong)n);
        if (rc == Z_OK) { out[got] = 0; return out; }
        free(out);
        if (rc != Z_BUF_ERROR) return NULL;
    }
    return NULL;
}

int dl_png_read_text(const char *path, const char *keyword, char **out)
{
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    *out = NULL;
    if (read_whole(path, &buf, &cap, &n) != DL_OK) {
        free(buf);
        return DL_ERR;
    }
    int rc = DL_ERR;
    if (n < 8 || memcmp(buf, "\x89PNG\r\n\x1a\n", 8) != 0) { dl_error_set("%s: not a PNG file", path); goto done; }
    size_t klen = strlen(keyword);
    for (size_t p = 8; p + 12 <= n;) {
        uint32_t len = be32(buf + p);
        if (len > n - p - 12) { dl_error_set("%s: truncated PNG chunk", path); goto done; }
        const uint8_t *type = buf + p + 4, *d = buf + p + 8;
        int is_t = !memcmp(type, "tEXt", 4), is_z = !memcmp(type, "zTXt", 4), is_i = !memcmp(type, "iTXt", 4);
        if ((is_t || is_z || is_i) && len > klen && memcmp(d, keyword, klen) == 0 && d[klen] == 0) {
            const uint8_t *v = d + klen + 1, *end = d + len;
            if (is_t) {
                *out = strndup((const char *)v, (size_t)(end - v));
            } else if (is_z) {
                if (v < end) *out = inflate_text(v + 1, (size_t)(end - v - 1));
            } else {
                if (end - v < 2) { dl_error_set("%s: malformed iTXt chunk", path); goto done; }
                int compressed = v[0];
                v += 2;
                for (int skip = 0; skip < 2 && v < end; skip++) { /* language tag, translated keyword */
                    while (v < end && *v) v++;
                    v++;
                }
                if (v > end) { dl_error_set("%s: malformed iTXt chunk", path); goto done; }
                *out = compressed ? inflate_text(v, (size_t)(end - v)) : strndup((const char *)v, (size_t)(end - v));
            }
            if (!*out) { dl_error_set("%s: cannot decode the '%s' text chunk", path, keyword); goto done; }
            rc = DL_OK;
            goto done;
        }
        if (!memcmp(type, "IEND", 4)) break;
        p += 12 + (size_t)len;
    }
    dl_error_set("%s: no '%s' text chunk", path, keyword);
done:
    free(buf);
    return rc;
}
