/* test_bucket.c - aspect-ratio buckets against sd-scripts' make_bucket_resolutions and
 * BucketManager.select_bucket (re-implemented in tests/gen/gen_buckets.py), and the image
 * preparation (resize/crop/flip/normalise) against cv2's INTER_AREA / INTER_LINEAR. */
#include "io/image.h"
#include "testutil.h"
#include "train/bucket.h"
#include "train/image_prep.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int32_t *golden_i32(const dl_st_file *f, const char *name, int64_t *rows, int64_t *cols)
{
    const dl_st_tensor *t = dl_st_find(f, name);
    cr_assert_not_null(t, "golden tensor %s missing", name);
    cr_assert_eq(t->dtype, DL_I32, "%s dtype", name);
    *rows = t->shape[0];
    *cols = t->ndim > 1 ? t->shape[1] : 1;
    return t->data;
}

Test(bucket, resolutions_match_sd_scripts)
{
    dl_st_file f;
    tu_golden_open(&f, "buckets");
    for (int i = 0; i < 5; i++) {
        char name[64];
        int64_t r, c;
        snprintf(name, sizeof name, "reso%d.setting", i);
        const int32_t *s = golden_i32(&f, name, &r, &c);
        snprintf(name, sizeof name, "reso%d.resos", i);
        const int32_t *ref = golden_i32(&f, name, &r, &c);
        dl_reso got[256];
        int n = dl_bucket_resolutions(s[0], s[1], s[2], s[3], s[4], got, 256);
        cr_assert_eq(n, r, "setting %d (%dx%d, %d..%d step %d): %d buckets, sd-scripts %lld", i, s[0], s[1], s[2],
                     s[3], s[4], n, (long long)r);
        for (int k = 0; k < n; k++)
            cr_expect(got[k].w == ref[2 * k] && got[k].h == ref[2 * k + 1], "setting %d bucket %d: %dx%d, want %dx%d",
                      i, k, got[k].w, got[k].h, ref[2 * k], ref[2 * k + 1]);
    }
    dl_st_close(&f);
}

Test(bucket, select_matches_sd_scripts)
{
    dl_st_file f;
    tu_golden_open(&f, "buckets");
    const char *modes[3] = {"up", "noup", "off"};
    for (int i = 0; i < 5; i++)
        for (int m = 0; m < 3; m++) {
            char name[64];
            int64_t r, c;
            snprintf(name, sizeof name, "reso%d.setting", i);
            const int32_t *s = golden_i32(&f, name, &r, &c);
            dl_bucket_cfg cfg;
            dl_bucket_cfg_default(&cfg, s[0], s[1]);
            cfg.min_reso = s[2];
            cfg.max_reso = s[3];
            cfg.steps = s[4];
            cfg.no_upscale = m == 1;
            cfg.enable = m != 2;
            dl_bucket_mgr bm;
            cr_assert_eq(dl_bucket_mgr_init(&bm, &cfg), DL_OK, "%s", dl_error_msg());
            snprintf(name, sizeof name, "reso%d.select_%s", i, modes[m]);
            const int32_t *ref = golden_i32(&f, name, &r, &c);
            cr_assert_eq(c, 6);
            for (int k = 0; k < r; k++) {
                const int32_t *row = ref + 6 * k;
                dl_reso b, rs;
                int id = dl_bucket_select(&bm, row[0], row[1], &b, &rs);
                if (row[2] == 0 || row[3] == 0) {
                    cr_expect_eq(id, -1, "setting %d %s image %dx%d: sd-scripts gets an empty bucket", i, modes[m],
                                 row[0], row[1]);
                    continue;
                }
                cr_assert_geq(id, 0);
                cr_expect(b.w == row[2] && b.h == row[3] && rs.w == row[4] && rs.h == row[5],
                          "setting %d %s image %dx%d: bucket %dx%d resized %dx%d, sd-scripts %dx%d / %dx%d", i,
                          modes[m], row[0], row[1], b.w, b.h, rs.w, rs.h, row[2], row[3], row[4], row[5]);
                cr_expect(rs.w >= b.w && rs.h >= b.h, "resized must cover the bucket");
                cr_expect(bm.used[id].w == b.w && bm.used[id].h == b.h);
            }
            dl_bucket_mgr_free(&bm);
        }
    dl_st_close(&f);
}

Test(bucket, config_errors_name_the_option)
{
    dl_bucket_cfg c;
    dl_bucket_mgr m;
    dl_bucket_cfg_default(&c, 512, 512);
    c.steps = 60;
    cr_expect_eq(dl_bucket_mgr_init(&m, &c), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "bucket_reso_steps"), "%s", dl_error_msg());
    dl_bucket_cfg_default(&c, 512, 512);
    c.max_reso = 384;
    cr_expect_eq(dl_bucket_mgr_init(&m, &c), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "max_bucket_reso"), "%s", dl_error_msg());
    dl_bucket_cfg_default(&c, 512, 512);
    c.min_reso = 640;
    cr_expect_eq(dl_bucket_mgr_init(&m, &c), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "min_bucket_reso"), "%s", dl_error_msg());
    dl_bucket_cfg_default(&c, 500, 512);
    cr_expect_eq(dl_bucket_mgr_init(&m, &c), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "resolution"), "%s", dl_error_msg());
}

/* resize against cv2 (whole image, no crop): at most 1 level off (cv2 rounds fixed-point). */
static void check_resize(const char *name)
{
    dl_st_file f;
    tu_golden_open(&f, "buckets");
    char k[64];
    snprintf(k, sizeof k, "resize_%s.src", name);
    const dl_st_tensor *s = dl_st_find(&f, k);
    snprintf(k, sizeof k, "resize_%s.dst", name);
    const dl_st_tensor *d = dl_st_find(&f, k);
    cr_assert(s && d, "golden %s missing", name);
    dl_image img = {(int)s->shape[1], (int)s->shape[0], (uint8_t *)s->data};
    dl_reso out = {(int)d->shape[1], (int)d->shape[0]};
    size_t n = (size_t)out.w * out.h * 3;
    uint8_t *got = malloc(n);
    dl_image_resize_crop_u8(tu_ctx()->pool, &img, out, 0, 0, out, got);
    const uint8_t *ref = d->data;
    int worst = 0;
    double mean = 0;
    for (size_t i = 0; i < n; i++) {
        int e = abs((int)got[i] - (int)ref[i]);
        if (e > worst) worst = e;
        mean += e;
    }
    cr_expect_leq(worst, 1, "%s %dx%d -> %dx%d: max difference to cv2 %d levels", name, img.w, img.h, out.w, out.h,
                  worst);
    /* mean: cv2's uint8 bilinear path uses fixed-point weights and itself differs from its float
     * path by up to 0.74 levels (mean 0.12 on linear_up); the float check below is the tight one */
    cr_expect_lt(mean / n, 0.15, "%s: mean difference to cv2 %.3f", name, mean / n);
    snprintf(k, sizeof k, "resize_%s.dst_f32", name);
    const dl_st_tensor *df = dl_st_find(&f, k);
    cr_assert_not_null(df);
    const float *reff = df->data;
    double worst_f = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - reff[i]);
        if (e > worst_f) worst_f = e;
    }
    /* ours is the exact resampling rounded to 8 bits: within half a level (+ fp32 slack) */
    cr_expect_leq(worst_f, 0.5 + 1e-3, "%s: max difference to cv2's float resize %.4f", name, worst_f);
    free(got);
    dl_st_close(&f);
}

Test(prep, area_downscale_matches_cv2) { check_resize("area_int"); check_resize("area_frac"); check_resize("area_big"); }
Test(prep, linear_upscale_matches_cv2) { check_resize("linear_up"); }

Test(prep, crop_window_equals_crop_of_full_resize)
{
    dl_st_file f;
    tu_golden_open(&f, "buckets");
    const dl_st_tensor *s = dl_st_find(&f, "resize_area_big.src");
    dl_image img = {(int)s->shape[1], (int)s->shape[0], (uint8_t *)s->data};
    dl_reso rs = {80, 62}, win = {64, 48};
    uint8_t *full = malloc((size_t)rs.w * rs.h * 3), *part = malloc((size_t)win.w * win.h * 3);
    dl_image_resize_crop_u8(NULL, &img, rs, 0, 0, rs, full);
    dl_image_resize_crop_u8(tu_ctx()->pool, &img, rs, 9, 11, win, part);
    for (int y = 0; y < win.h; y++)
        cr_assert_eq(memcmp(part + (size_t)y * win.w * 3, full + ((size_t)(y + 11) * rs.w + 9) * 3, (size_t)win.w * 3),
                     0, "row %d of the window differs from the cropped full resize", y);
    free(full);
    free(part);
    dl_st_close(&f);
}

Test(prep, center_crop_flip_and_normalise)
{
    /* 6x4 image, no resize, bucket 4x2: centre crop offset (1, 1); pixel value encodes x, y */
    dl_image img = {6, 4, malloc(6 * 4 * 3)};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 6; x++) {
            img.data[(y * 6 + x) * 3 + 0] = (uint8_t)(x * 40);
            img.data[(y * 6 + x) * 3 + 1] = (uint8_t)(y * 80);
            img.data[(y * 6 + x) * 3 + 2] = 255;
        }
    int x0, y0;
    dl_prep_crop_offsets((dl_reso){6, 4}, (dl_reso){4, 2}, 0, NULL, &x0, &y0);
    cr_assert(x0 == 1 && y0 == 1, "centre crop (%d, %d)", x0, y0);
    float out[2 * 4 * 3];
    for (int flip = 0; flip < 2; flip++) {
        dl_image_prep(NULL, &img, (dl_reso){6, 4}, (dl_reso){4, 2}, x0, y0, flip, out);
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 4; x++) {
                int sx = (flip ? 3 - x : x) + 1, sy = y + 1;
                const float *p = out + (y * 4 + x) * 3;
                cr_expect_float_eq(p[0], sx * 40 / 127.5f - 1, 1e-6, "flip %d (%d,%d) r", flip, x, y);
                cr_expect_float_eq(p[1], sy * 80 / 127.5f - 1, 1e-6, "flip %d (%d,%d) g", flip, x, y);
                cr_expect_float_eq(p[2], 1.0f, 1e-6);
            }
    }
    free(img.data);
}

Test(prep, random_crop_covers_the_range)
{
    dl_rng r;
    dl_rng_seed(&r, 5);
    int seen_x[5] = {0}, seen_y[3] = {0};
    for (int i = 0; i < 400; i++) {
        int x, y;
        dl_prep_crop_offsets((dl_reso){68, 66}, (dl_reso){64, 64}, 1, &r, &x, &y);
        cr_assert(x >= 0 && x <= 4 && y >= 0 && y <= 2, "offset (%d, %d) out of range", x, y);
        seen_x[x]++;
        seen_y[y]++;
    }
    for (int i = 0; i < 5; i++) cr_expect_gt(seen_x[i], 40, "x offset %d drawn %d times of 400", i, seen_x[i]);
    for (int i = 0; i < 3; i++) cr_expect_gt(seen_y[i], 80, "y offset %d drawn %d times of 400", i, seen_y[i]);
}

/* dl_image_prep_w with one reused work (pool or serial) gives dl_image_prep's floats bit for bit
 * over downscales, upscales, crops and flips; a second pass over the same cases grows nothing. */
Test(prep, work_reuse_matches_and_stops_growing)
{
    static const struct { int w, h, rw, rh, bw, bh; } cases[] = {
        {40, 30, 32, 24, 32, 16}, {17, 23, 34, 46, 32, 32}, {64, 40, 48, 30, 32, 30}, {9, 9, 16, 16, 16, 16},
    };
    dl_pool *pool = dl_pool_create(2);
    dl_prep_work w = {0};
    for (int pass = 0; pass < 2; pass++) {
        dl_prep_work before = w;
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            dl_image img = {cases[i].w, cases[i].h, malloc((size_t)cases[i].w * cases[i].h * 3)};
            for (int j = 0; j < img.w * img.h * 3; j++) img.data[j] = (uint8_t)(j * 29 + (int)i * 7);
            dl_reso rz = {cases[i].rw, cases[i].rh}, b = {cases[i].bw, cases[i].bh};
            size_t n = (size_t)b.w * b.h * 3;
            float *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got);
            int x0 = rz.w - b.w, y0 = (rz.h - b.h) / 2, flip = (int)i & 1;
            dl_image_prep(NULL, &img, rz, b, x0, y0, flip, ref);
            dl_image_prep_w(pass ? pool : NULL, &w, &img, rz, b, x0, y0, flip, got);
            cr_expect(memcmp(ref, got, n * sizeof *ref) == 0, "case %zu pass %d: prepared pixels differ", i, pass);
            free(ref);
            free(got);
            free(img.data);
        }
        /* the pooled pass needs rows for 2 threads: it may grow once; a third pass must not */
        if (pass == 1) {
            before = w;
            for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
                dl_image img = {cases[i].w, cases[i].h, calloc((size_t)cases[i].w * cases[i].h * 3, 1)};
                dl_reso rz = {cases[i].rw, cases[i].rh}, b = {cases[i].bw, cases[i].bh};
                float *got = malloc((size_t)b.w * b.h * 3 * sizeof *got);
                dl_image_prep_w(pool, &w, &img, rz, b, 0, 0, 0, got);
                free(got);
                free(img.data);
            }
            cr_expect(w.mem == before.mem && w.cap == before.cap, "a repeated pass grew the work");
        }
    }
    dl_prep_work_free(&w);
    dl_pool_destroy(pool);
}
