/* grid.h - X/Y image grids: an RGB canvas with a label row on top and a label column on the
 * left, cells pasted in, and text drawn with a built-in 5x7 ASCII bitmap font (scaled by an
 * integer factor). */
#ifndef DANLU_SAMPLE_GRID_H
#define DANLU_SAMPLE_GRID_H

#include "io/image.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { DL_FONT_W = 5, DL_FONT_H = 7, DL_FONT_ADV = 6 /* glyph + 1 column of space */ };

/* The 7 rows of glyph c (bit 4 = leftmost pixel); characters outside 32..126 draw as '?'. */
const unsigned char *dl_font5x7_glyph(char c);

/* Draw text at (x, y) (top-left) in colour rgb, each font pixel a scale x scale square, clipped
 * to the image and to max_w pixels of width (max_w <= 0: no limit). Returns the width drawn. */
int dl_draw_text(dl_image *img, int x, int y, const char *text, int scale, const unsigned char rgb[3], int max_w);

typedef struct dl_grid {
    dl_image img;         /* the whole canvas, white */
    int nx, ny;           /* cells */
    int cw, ch;           /* cell (image) size */
    int sw;               /* column width: cw, or wider to fit the x labels (image centred) */
    int left, top;        /* label column width, label row height (0 when no labels) */
    int scale;            /* font scale */
} dl_grid;

/* A canvas for nx x ny cells of cw x ch pixels with room for the labels (x labels above the
 * columns when any is non-empty, y labels left of the rows likewise), drawn now in black.
 * Columns widen to fit x labels of up to 32 characters; longer labels are cut. DL_ERR on out of memory or a canvas over 2^28 pixels. */
int dl_grid_create(dl_grid *g, int nx, int ny, int cw, int ch, const char *const *xlabels,
                   const char *const *ylabels);
/* Paste cell (ix, iy) from an RGB [ch, cw, 3] image. */
void dl_grid_put(dl_grid *g, int ix, int iy, const unsigned char *rgb);
void dl_grid_free(dl_grid *g);

#ifdef __cplusplus
}
#endif
#endif
