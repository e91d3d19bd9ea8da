/* plot.h - a PNG line plot of the loss curve (own tiny rasteriser and 5x7 bitmap font): axes,
 * the raw loss in light blue, its running mean in dark blue, min/max and step labels. */
#ifndef DANLU_TRAIN_PLOT_H
#define DANLU_TRAIN_PLOT_H

#include "io/image.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DL_PLOT_W 800
#define DL_PLOT_H 480

/* Render loss[0..n) (loss of steps 1..n) into img (malloc'd RGB, DL_PLOT_W x DL_PLOT_H).
 * n may be 0 (axes only). Non-finite values are skipped. DL_ERR only when out of memory. */
int dl_plot_loss_render(dl_image *img, const double *loss, int n);
/* Render and write as PNG atomically (dl_png_save). DL_ERR names the file. */
int dl_plot_loss_png(const char *path, const double *loss, int n);

/* Draw text with the 5x7 font at (x, y) (top-left), each font pixel scale x scale. Characters
 * without a glyph are drawn as a box. */
void dl_plot_text(dl_image *img, int x, int y, int scale, const char *s, const unsigned char rgb[3]);

#ifdef __cplusplus
}
#endif
#endif
