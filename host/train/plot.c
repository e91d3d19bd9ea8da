/* plot.c - loss-curve PNG: a tiny rasteriser (pixels, lines, rectangles) and a 5x7 font. */
#include "train/plot.h"

#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 5x7 glyphs: 7 rows top to bottom, bit 4 = leftmost column. */
typedef struct { char c; unsigned char rows[7]; } glyph;
static const glyph k_font[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}}, {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {' ', {0, 0, 0, 0, 0, 0, 0}},
    {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}}, {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}}, {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'m', {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11}}, {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}}, {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}}, {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}}, {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
};

static const unsigned char k_box[7] = {0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F};

static void put(dl_image *img, int x, int y, const unsigned char c[3])
{
    if (x < 0 || y < 0 || x >= img->w || y >= img->h) return;
    unsigned char *p = img->data + ((size_t)y * img->w + x) * 3;
    p[0] = c[0];
    p[1] = c[1];
    p[2] = c[2];
}

static void fill_rect(dl_image *img, int x0, int y0, int x1, int y1, const unsigned char c[3])
{
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) put(img, x, y, c);
}

/* Bresenham line, inclusive of both ends. */
static void line(dl_image *img, int x0, int y0, int x1, int y1, const unsigned char c[3])
{
    int dx = abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
    int dy = -abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
        put(img, x0, y0, c);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) { err += dy; x0 += sx; }
        if (e2 <= dx) { err += dx; y0 += sy; }
    }
}

void dl_plot_text(dl_image *img, int x, int y, int scale, const char *s, const unsigned char rgb[3])
{
    for (; *s; s++, x += 6 * scale) {
        const unsigned char *rows = k_box;
        for (size_t g = 0; g < sizeof k_font / sizeof *k_font; g++)
            if (k_font[g].c == *s) { rows = k_font[g].rows; break; }
        for (int r = 0; r < 7; r++)
            for (int col = 0; col < 5; col++)
                if (rows[r] & (0x10 >> col))
                    fill_rect(img, x + col * scale, y + r * scale, x + col * scale + scale - 1,
                              y + r * scale + scale - 1, rgb);
    }
}

int dl_plot_loss_render(dl_image *img, const double *loss, int n)
{
    const int W = DL_PLOT_W, H = DL_PLOT_H;
    const int L = 130, R = W - 20, T = 30, B = H - 50; /* plot area */
    static const unsigned char white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, grid[3] = {225, 225, 225},
                               raw[3] = {150, 190, 240}, mean[3] = {20, 60, 170};
    img->w = W;
    img->h = H;
    img->data = malloc((size_t)W * H * 3);
    if (!img->data) return dl_error_set("out of memory");
    memset(img->data, 255, (size_t)W * H * 3);
    (void)white;

    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(loss[i])) {
            if (loss[i] < lo) lo = loss[i];
            if (loss[i] > hi) hi = loss[i];
        }
    if (!(lo <= hi)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { hi += 0.5 * (fabs(hi) + 1e-3); lo -= 0.5 * (fabs(lo) + 1e-3); }

    for (int k = 1; k < 4; k++) {
        int y = T + (B - T) * k / 4;
        line(img, L, y, R, y, grid);
    }
    line(img, L, T, L, B, black);
    line(img, L, B, R, B, black);

    int steps = n > 1 ? n : 1;
#define PX(i) (L + (int)lround((double)(i) * (R - L) / (steps > 1 ? steps - 1 : 1)))
#define PY(v) (B - (int)lround(((v) - lo) / (hi - lo) * (B - T)))
    int px = -1, py = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(loss[i])) continue;
        int x = PX(i), y = PY(loss[i]);
        if (px >= 0) line(img, px, py, x, y, raw);
        else put(img, x, y, raw);
        px = x;
        py = y;
    }
    /* running mean over a window of n/20 steps (at least 1) */
    int win = n / 20 > 1 ? n / 20 : 1;
    double s = 0;
    int cnt = 0;
    px = -1;
    for (int i = 0; i < n; i++) {
        if (isfinite(loss[i])) { s += loss[i]; cnt++; }
        if (i >= win && isfinite(loss[i - win])) { s -= loss[i - win]; cnt--; }
        if (cnt <= 0) continue;
        int x = PX(i), y = PY(s / cnt);
        if (px >= 0) { line(img, px, py, x, y, mean); line(img, px, py + 1, x, y + 1, mean); }
        px = x;
        py = y;
    }
#undef PX
#undef PY
    char buf[64];
    snprintf(buf, sizeof buf, "max %.4g", hi);
    dl_plot_text(img, 6, T - 3, 2, buf, black);
    snprintf(buf, sizeof buf, "min %.4g", lo);
    dl_plot_text(img, 6, B - 12, 2, buf, black);
    dl_plot_text(img, L, 6, 2, "loss", black);
    dl_plot_text(img, L - 4, B + 10, 2, "1", black);
    snprintf(buf, sizeof buf, "step %d", n);
    dl_plot_text(img, R - (int)strlen(buf) * 12, B + 10, 2, buf, black);
    return DL_OK;
}

int dl_plot_loss_png(const char *path, const double *loss, int n)
{
    dl_image img = {0};
    DL_TRY(dl_plot_loss_render(&img, loss, n));
    const char *text[2] = {"Software", "danlu"};
    int rc = dl_png_save(path, &img, text, 1);
    dl_image_free(&img);
    return rc;
}
