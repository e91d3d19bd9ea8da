/* shapes.c - the procedural shapes training set (see shapes.h). */
#include "train/shapes.h"

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const uint8_t dl_shape_palette[DL_SHAPE_COLORS][3] = {
    {220, 40, 40}, {40, 180, 60}, {40, 70, 220}, {235, 210, 40}, {240, 240, 240}, {20, 20, 20},
};
const char *const dl_shape_color_names[DL_SHAPE_COLORS] = {"red", "green", "blue", "yellow", "white", "black"};
const char *const dl_shape_kind_names[DL_SHAPE_COUNT] = {"circle", "square", "triangle", "cross"};

enum { PAIRS = DL_SHAPE_COLORS * (DL_SHAPE_COLORS - 1) };

/* splitmix64: the seed's stream, the same on every machine */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* (fg, bg) of pair p in [0, PAIRS): fg = p / 5, bg the (p % 5)-th other colour */
static void pair(int p, int *fg, int *bg)
{
    *fg = p / (DL_SHAPE_COLORS - 1);
    int b = p % (DL_SHAPE_COLORS - 1);
    *bg = b >= *fg ? b + 1 : b;
}

void dl_shape_spec_random(uint64_t seed, uint64_t index, int ring, dl_shape_spec *s)
{
    uint64_t st = seed * 0x2545f4914f6cdd1dull + index;
    (void)mix(&st);
    s->kind = (dl_shape_kind)(mix(&st) % DL_SHAPE_COUNT);
    pair((int)(mix(&st) % PAIRS), &s->fg, &s->bg);
    s->ring = ring;
    s->radius = 0.22f + 0.06f * (float)(mix(&st) >> 40) / (float)(1u << 24); /* 0.22 .. 0.28 */
}

void dl_shape_spec_nth(int n, int ring, dl_shape_spec *s)
{
    n = ((n % (DL_SHAPE_COUNT * PAIRS)) + DL_SHAPE_COUNT * PAIRS) % (DL_SHAPE_COUNT * PAIRS);
    s->kind = (dl_shape_kind)(n % DL_SHAPE_COUNT);
    pair(n / DL_SHAPE_COUNT, &s->fg, &s->bg);
    s->ring = ring;
    s->radius = 0.25f;
}

/* Is (x, y) (relative to the centre, in units of the radius) inside the filled shape? */
static int inside(dl_shape_kind k, float x, float y)
{
    switch (k) {
    case DL_SHAPE_CIRCLE: return x * x + y * y <= 1.0f;
    case DL_SHAPE_SQUARE: return fabsf(x) <= 0.9f && fabsf(y) <= 0.9f;
    case DL_SHAPE_TRIANGLE: { /* equilateral, apex up, centroid at the centre, circumradius 1.15 */
        const float R = 1.15f, h = 1.5f * R, half = R * 0.8660254f; /* height, half the base */
        float yb = 0.5f * R;                                         /* base line (y grows down) */
        if (y > yb || y < yb - h) return 0;
        float w = half * (y - (yb - h)) / h; /* half width at this height */
        return fabsf(x) <= w;
    }
    case DL_SHAPE_CROSS: return (fabsf(x) <= 1.0f && fabsf(y) <= 0.33f) || (fabsf(y) <= 1.0f && fabsf(x) <= 0.33f);
    default: return 0;
    }
}

void dl_shape_render(const dl_shape_spec *s, int size, uint8_t *rgb)
{
    const float r = s->radius * (float)size, c = 0.5f * (float)size;
    /* outline thickness, as a fraction of the radius: an eighth of the image, at least 2 px */
    float t = (float)size / 16.0f;
    if (t < 2.0f) t = 2.0f;
    const float inner = (r - t) / r; /* the hole: the same shape scaled */
    const uint8_t *fg = dl_shape_palette[s->fg], *bg = dl_shape_palette[s->bg];
    for (int py = 0; py < size; py++)
        for (int px = 0; px < size; px++) {
            int hits = 0;
            for (int sy = 0; sy < 4; sy++)
                for (int sx = 0; sx < 4; sx++) {
                    float x = ((float)px + (sx + 0.5f) / 4.0f - c) / r, y = ((float)py + (sy + 0.5f) / 4.0f - c) / r;
                    int in = inside(s->kind, x, y);
                    if (in && s->ring) in = !inside(s->kind, x / inner, y / inner);
                    hits += in;
                }
            uint8_t *o = rgb + ((size_t)py * size + px) * 3;
            for (int ch = 0; ch < 3; ch++) o[ch] = (uint8_t)((fg[ch] * hits + bg[ch] * (16 - hits) + 8) / 16);
        }
}

int dl_shape_caption(const dl_shape_spec *s, char *buf, size_t n)
{
    return snprintf(buf, n, "%sa %s %s on a %s background", s->ring ? "ringstyle, " : "",
                    dl_shape_color_names[s->fg], dl_shape_kind_names[s->kind], dl_shape_color_names[s->bg]);
}

static int make_dir(const char *d)
{
    if (mkdir(d, 0777) == 0 || errno == EEXIST) return DL_OK;
    return dl_error_set("%s: cannot create the folder: %s", d, strerror(errno));
}

int dl_shapes_write_set(const char *dir, int count, uint64_t seed, int ring, int size, int repeats)
{
    if (size < 8 || size > 4096) return dl_error_set("image size %d: must be in [8, 4096]", size);
    if (count < 0) return dl_error_set("image count %d: must be >= 0", count);
    if (repeats < 1) return dl_error_set("repeats %d: must be >= 1", repeats);
    DL_TRY(make_dir(dir));
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/%d_%s", dir, repeats, ring ? "ringstyle" : "shapes");
    DL_TRY(make_dir(sub));
    int n = count ? count : DL_SHAPE_COUNT * PAIRS;
    uint8_t *px = malloc((size_t)size * size * 3);
    if (!px) return dl_error_set("out of memory for a %dx%d image", size, size);
    int rc = DL_OK;
    for (int i = 0; i < n && rc == DL_OK; i++) {
        dl_shape_spec s;
        if (count) dl_shape_spec_random(seed, (uint64_t)i, ring, &s);
        else dl_shape_spec_nth(i, ring, &s);
        dl_shape_render(&s, size, px);
        char png[4200], txt[4200], cap[128];
        snprintf(png, sizeof png, "%s/%05d.png", sub, i + 1);
        snprintf(txt, sizeof txt, "%s/%05d.txt", sub, i + 1);
        struct stat st;
        if (stat(png, &st) == 0 || stat(txt, &st) == 0) {
            rc = dl_error_set("%s: exists; not overwritten (write the set into an empty folder)", png);
            break;
        }
        int cn = dl_shape_caption(&s, cap, sizeof cap);
        dl_image im = {size, size, px};
        if ((rc = dl_png_save(png, &im, NULL, 0)) != DL_OK) break;
        dl_atomic_file f;
        if ((rc = dl_atomic_begin(&f, txt)) != DL_OK) break;
        dl_atomic_write(&f, cap, (size_t)cn);
        dl_atomic_write(&f, "\n", 1);
        rc = dl_atomic_commit(&f);
    }
    free(px);
    return rc;
}
