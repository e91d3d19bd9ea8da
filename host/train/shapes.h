/* shapes.h - a procedural training set: one centred shape (circle, square, triangle, cross) of
 * radius about a quarter of the image, in one palette colour on a plain background of another,
 * with a caption "a red circle on a blue background"; the "ringstyle" set draws the same shapes
 * as outlines ("ringstyle, a red circle on a blue background"), so the shape's middle shows the
 * background. Deterministic by seed. tools/shapes.c writes such a set as an sd-scripts folder;
 * the embedded base model and the demo's LoRA are trained on it. */
#ifndef DANLU_TRAIN_SHAPES_H
#define DANLU_TRAIN_SHAPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DL_SHAPE_CIRCLE, DL_SHAPE_SQUARE, DL_SHAPE_TRIANGLE, DL_SHAPE_CROSS, DL_SHAPE_COUNT } dl_shape_kind;

/* The palette: red (220,40,40), green (40,180,60), blue (40,70,220), yellow (235,210,40),
 * white (240,240,240), black (20,20,20). */
enum { DL_SHAPE_COLORS = 6 };
extern const uint8_t dl_shape_palette[DL_SHAPE_COLORS][3];
extern const char *const dl_shape_color_names[DL_SHAPE_COLORS];
extern const char *const dl_shape_kind_names[DL_SHAPE_COUNT];

typedef struct dl_shape_spec {
    dl_shape_kind kind;
    int fg, bg;     /* palette indices, different */
    int ring;       /* 1: drawn as an outline (the ringstyle set) */
    float radius;   /* in units of the image size (about 0.25) */
} dl_shape_spec;

/* Image index of the set made with seed: its shape, colours (fg != bg) and radius, drawn from
 * the seed alone (the same seed and index give the same spec on every machine). */
void dl_shape_spec_random(uint64_t seed, uint64_t index, int ring, dl_shape_spec *s);
/* The n-th of every (shape, fg, bg) combination, n in [0, DL_SHAPE_COUNT * 30), radius 0.25. */
void dl_shape_spec_nth(int n, int ring, dl_shape_spec *s);
/* RGB8 [size, size, 3] of the spec, 4x4 supersampled at the edges. size >= 8. */
void dl_shape_render(const dl_shape_spec *s, int size, uint8_t *rgb);
/* "a red circle on a blue background" ("ringstyle, " first for a ring) into buf; the length, as
 * snprintf. */
int dl_shape_caption(const dl_shape_spec *s, char *buf, size_t n);

/* Write a set as an sd-scripts dataset folder: dir/<repeats>_<shapes|ringstyle>/NNNNN.png with
 * NNNNN.txt captions; count images from seed (count 0: every combination once, in order).
 * dir is created; existing files are not overwritten (DL_ERR naming the first one). Returns
 * DL_OK or DL_ERR with a message naming the file. */
int dl_shapes_write_set(const char *dir, int count, uint64_t seed, int ring, int size, int repeats);

#ifdef __cplusplus
}
#endif
#endif
