/* test_train_progress.c - training CSV log (parses back, resume keeps earlier rows), status
 * lines, and the loss-plot PNG (decodes, right size, curve and labels drawn). */
#include "core/error.h"
#include "io/image.h"
#include "train/plot.h"
#include "train/progress.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double loss_at(int step) { return 0.5 / (1.0 + 0.05 * step) + 0.01 * sin(step); }

/* Parse the CSV; returns rows, fills steps/losses. */
static int read_csv(const char *path, int *steps, double *losses, int cap)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    char line[512];
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "step,epoch,loss,lr,wall_s\n");
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        int st, ep;
        double l, lr, w;
        cr_assert_eq(sscanf(line, "%d,%d,%lf,%lf,%lf", &st, &ep, &l, &lr, &w), 5, "bad row '%s'", line);
        cr_assert(n < cap);
        cr_expect(isfinite(w) && w >= 0);
        cr_expect(ep >= 1);
        steps[n] = st;
        losses[n++] = l;
    }
    fclose(f);
    return n;
}

Test(train_progress, csv_and_status)
{
    char csv[256];
    snprintf(csv, sizeof csv, "/tmp/danlu_test_progress_%d.csv", (int)getpid());
    FILE *out = tmpfile();
    dl_progress p;
    cr_assert_eq(dl_progress_init(&p, out, 0, 40, 0, csv), DL_OK, "%s", dl_error_msg());
    for (int s = 1; s <= 40; s++) dl_progress_step(&p, s, 1 + (s - 1) / 10, loss_at(s), 1e-4 * s / 40);
    double run = dl_progress_running_loss(&p), want = 0;
    for (int s = 1; s <= 40; s++) want += loss_at(s);
    cr_expect(fabs(run - want / 40) < 1e-12);
    dl_progress_finish(&p);
    rewind(out);
    char buf[4096] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, out);
    fclose(out);
    cr_expect(got > 0 && strstr(buf, "step 40/40") != NULL, "status output: %s", buf);
    cr_expect(strchr(buf, '\r') == NULL);

    int steps[100];
    double losses[100];
    int n = read_csv(csv, steps, losses, 100);
    cr_assert_eq(n, 40);
    for (int i = 0; i < n; i++) {
        cr_expect_eq(steps[i], i + 1);
        cr_expect(fabs(losses[i] - loss_at(i + 1)) <= 1e-8 * fabs(loss_at(i + 1)));
    }
    /* resume at 25: rows 1..25 kept, later rows replaced by the new run's */
    cr_assert_eq(dl_progress_init(&p, NULL, 0, 40, 25, csv), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(p.n_loss, 25);
    for (int s = 26; s <= 30; s++) dl_progress_step(&p, s, 3, 2.0, 1e-4);
    cr_expect_eq(p.n_loss, 30);
    dl_progress_finish(&p);
    n = read_csv(csv, steps, losses, 100);
    cr_assert_eq(n, 30);
    cr_expect(fabs(losses[24] - loss_at(25)) <= 1e-8);
    cr_expect_eq(losses[25], 2.0);
    cr_expect_eq(steps[29], 30);
    unlink(csv);
}

Test(train_progress, plot_png)
{
    char png[256];
    snprintf(png, sizeof png, "/tmp/danlu_test_plot_%d.png", (int)getpid());
    double loss[300];
    for (int i = 0; i < 300; i++) loss[i] = loss_at(i + 1);
    loss[17] = NAN; /* skipped, not drawn */
    cr_assert_eq(dl_plot_loss_png(png, loss, 300), DL_OK, "%s", dl_error_msg());
    dl_image img = {0};
    cr_assert_eq(dl_image_load(&img, png), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(img.w, DL_PLOT_W);
    cr_expect_eq(img.h, DL_PLOT_H);
    long dark_blue = 0, light_blue = 0, black = 0;
    int cols_with_curve = 0;
    for (int x = 0; x < img.w; x++) {
        int any = 0;
        for (int y = 0; y < img.h; y++) {
            const uint8_t *q = img.data + ((size_t)y * img.w + x) * 3;
            if (q[0] == 20 && q[1] == 60 && q[2] == 170) { dark_blue++; any = 1; }
            if (q[0] == 150 && q[1] == 190 && q[2] == 240) { light_blue++; any = 1; }
            if (q[0] == 0 && q[1] == 0 && q[2] == 0) black++;
        }
        cols_with_curve += any;
    }
    cr_expect(cols_with_curve > 600, "curve spans %d columns", cols_with_curve);
    cr_expect(dark_blue > 600 && light_blue > 300, "dark %ld light %ld", dark_blue, light_blue);
    cr_expect(black > 1500, "axes and labels: %ld black pixels", black);
    /* the maximum label sits top-left: black text pixels in the box left of the axis */
    long label = 0;
    for (int y = 20; y < 50; y++)
        for (int x = 0; x < 120; x++) label += img.data[((size_t)y * img.w + x) * 3] == 0;
    cr_expect(label > 50, "max label pixels %ld", label);
    dl_image_free(&img);
    /* empty history: axes only, still a valid PNG */
    cr_assert_eq(dl_plot_loss_png(png, NULL, 0), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_image_load(&img, png), DL_OK, "%s", dl_error_msg());
    dl_image_free(&img);
    unlink(png);
}

Test(train_progress, font_glyph)
{
    /* '1' drawn at scale 1: its 7 rows as the glyph table says (0x04,0x0C,0x04,...,0x0E) */
    dl_image img = {8, 9, calloc(8 * 9 * 3, 1)};
    const unsigned char w[3] = {255, 255, 255};
    dl_plot_text(&img, 1, 1, 1, "1", w);
    static const unsigned char rows[7] = {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E};
    for (int r = 0; r < 7; r++)
        for (int c = 0; c < 5; c++) {
            int on = img.data[((size_t)(r + 1) * 8 + c + 1) * 3] == 255;
            cr_expect_eq(on, !!(rows[r] & (0x10 >> c)), "row %d col %d", r, c);
        }
    free(img.data);
}

Test(train_progress, tty_line)
{
    FILE *out = tmpfile();
    dl_progress p;
    cr_assert_eq(dl_progress_init(&p, out, 1, 10, 0, NULL), DL_OK);
    for (int s = 1; s <= 10; s++) dl_progress_step(&p, s, 1, 1.0 / s, 1e-4);
    dl_progress_note(&p, "saved %s", "x.safetensors");
    dl_progress_finish(&p);
    rewind(out);
    char buf[8192] = {0};
    cr_assert(fread(buf, 1, sizeof buf - 1, out) > 0);
    fclose(out);
    int redraws = 0;
    for (char *q = buf; (q = strchr(q, '\r')); q++) redraws++;
    cr_expect_eq(redraws, 11, "one redraw per step plus the note: %d", redraws);
    cr_expect(strstr(buf, "10/10") && strstr(buf, "it/s") && strstr(buf, "loss 0.1000") && strstr(buf, "lr 0.0001"),
              "%s", buf);
    cr_expect(strstr(buf, "saved x.safetensors\n") != NULL);
    cr_expect_eq(buf[strlen(buf) - 1], '\n');
}
