/* image.h - reading training/init images (PNG, JPEG, BMP via stb_image; WebP via libwebp) and
 * writing PNGs that carry A1111's "parameters" text chunk. Pixels are 8-bit RGB, row-major,
 * interleaved ([H, W, 3]). */
#ifndef DANLU_IMAGE_H
#define DANLU_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_image {
    int w, h;          /* pixels */
    uint8_t *data;     /* [h, w, 3], malloc'd */
} dl_image;

/* Decode path (format from its bytes, not its name) into RGB; an alpha channel is dropped as
 * PIL's convert("RGB") does. Returns DL_OK, or DL_ERR with a message naming the file and the
 * problem (missing, not an image, corrupt, unsupported). */
int dl_image_load(dl_image *img, const char *path);
/* Decode an in-memory file; label names it in messages. */
int dl_image_decode(dl_image *img, const uint8_t *bytes, size_t n, const char *label);
void dl_image_free(dl_image *img);

/* A reusable decoder for loops that must not allocate (the training step): the file's bytes,
 * stb_image's working memory (a bump heap, reset per image) and the pixels live in buffers that
 * only grow, so once the image with the largest needs has been read, reading allocates nothing
 * (WebP excepted: libwebp allocates its decoder state inside, which cannot be hooked). Not
 * shareable between threads while reading. Zero-initialise; free with dl_image_reader_free. */
typedef struct dl_image_reader {
    uint8_t *file;        /* [file_cap] the last file's bytes */
    size_t file_cap;
    uint8_t *heap;        /* [heap_cap] stb_image's allocations while decoding */
    size_t heap_cap, heap_used, heap_demand;
    uint8_t *px;          /* [px_cap] the last image's pixels */
    size_t px_cap;
} dl_image_reader;

/* Decode path as dl_image_load does into img, whose data belongs to r (do not dl_image_free
 * it): valid until the next read or dl_image_reader_free. Same pixels and messages as
 * dl_image_load. */
int dl_image_read(dl_image_reader *r, const char *path, dl_image *img);
void dl_image_reader_free(dl_image_reader *r);

/* Write img as an 8-bit RGB PNG with text chunks (text[2i] = keyword, text[2i+1] = value;
 * tEXt when the value is Latin-1-safe ASCII, iTXt (UTF-8) otherwise). Atomic: temporary file,
 * fsync, rename; on failure nothing is left behind. */
int dl_png_save(const char *path, const dl_image *img, const char *const *text, int n_text);

/* Read the text chunk `keyword` (tEXt, zTXt or iTXt) of a PNG file into a malloc'd string.
 * Returns DL_OK (and *out), or DL_ERR when the file is unreadable, not a PNG, or lacks it. */
int dl_png_read_text(const char *path, const char *keyword, char **out);

#ifdef __cplusplus
}
#endif
#endif
