/* test_image.c - image decoding against PIL's convert("RGB"), PNG writing with A1111 text
 * chunks, and the errors bad images get. */
#include "io/image.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void expect_pixels(const char *name, int tol)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/golden/images/%s", name);
    dl_image img;
    cr_assert_eq(dl_image_load(&img, tu_path(rel)), DL_OK, "%s", dl_error_msg());
    dl_st_file f;
    tu_golden_open(&f, "images");
    const dl_st_tensor *t = dl_st_find(&f, name);
    cr_assert_not_null(t, "no reference for %s", name);
    cr_assert_eq(t->shape[0], img.h, "%s height", name);
    cr_assert_eq(t->shape[1], img.w, "%s width", name);
    const uint8_t *ref = t->data;
    int worst = 0;
    for (int i = 0; i < img.w * img.h * 3; i++) {
        int d = abs((int)img.data[i] - (int)ref[i]);
        if (d > worst) worst = d;
    }
    cr_expect_leq(worst, tol, "%s: max pixel difference %d > %d", name, worst, tol);
    dl_st_close(&f);
    dl_image_free(&img);
}

Test(image, png_bmp_webp_exact)
{
    expect_pixels("rgb.png", 0);
    expect_pixels("rgba.png", 0);   /* alpha dropped, as PIL's convert("RGB") */
    expect_pixels("gray.png", 0);   /* gray expanded to RGB */
    expect_pixels("rgb.bmp", 0);
    expect_pixels("rgb.webp", 0);
    expect_pixels("rgba.webp", 0);
    expect_pixels("png_named.jpg", 0); /* format from the bytes, not the name */
}

/* A reader gives the pixels dl_image_load gives, for every format, reusing its buffers; once it
 * has read the largest image, reading any of them again grows nothing. */
Test(image, reader_matches_load_and_stops_growing)
{
    static const char *names[] = {"rgb.png", "rgba.png", "gray.png", "rgb.bmp", "rgb.webp", "rgba.webp", "rgb.jpg",
                                  "png_named.jpg"};
    const int n = (int)(sizeof names / sizeof *names);
    dl_image_reader r = {0};
    for (int pass = 0; pass < 2; pass++) {
        dl_image_reader before = r;
        for (int i = 0; i < n; i++) {
            char rel[256];
            snprintf(rel, sizeof rel, "tests/golden/images/%s", names[i]);
            dl_image a, b;
            cr_assert_eq(dl_image_load(&a, tu_path(rel)), DL_OK, "%s", dl_error_msg());
            cr_assert_eq(dl_image_read(&r, tu_path(rel), &b), DL_OK, "%s", dl_error_msg());
            cr_expect(a.w == b.w && a.h == b.h, "%s: %dx%d read, %dx%d loaded", names[i], b.w, b.h, a.w, a.h);
            cr_expect(memcmp(a.data, b.data, (size_t)a.w * a.h * 3) == 0, "%s: pixels differ", names[i]);
            cr_expect(b.data == r.px, "%s: the pixels must live in the reader", names[i]);
            dl_image_free(&a);
        }
        if (pass == 1)
            cr_expect(r.file == before.file && r.heap == before.heap && r.px == before.px &&
                          r.heap_cap == before.heap_cap && r.file_cap == before.file_cap && r.px_cap == before.px_cap,
                      "the second pass over the same images grew the reader's buffers");
    }
    cr_expect(r.heap_cap > 0, "stb_image's allocations did not go through the reader's heap");
    /* errors name the file, as dl_image_load's */
    dl_image img;
    cr_expect_eq(dl_image_read(&r, tu_path("tests/golden/images/not_an_image.png"), &img), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "not_an_image.png") != NULL, "%s", dl_error_msg());
    cr_expect_eq(dl_image_read(&r, tu_path("tests/golden/images/missing.png"), &img), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "missing.png") && strstr(dl_error_msg(), "cannot open"), "%s", dl_error_msg());
    dl_image_reader_free(&r);
}

Test(image, jpeg_close_to_libjpeg)
{
    /* stb_image's JPEG decoder upsamples chroma differently from libjpeg: allow a few levels */
    expect_pixels("rgb.jpg", 8);
}

static void expect_load_error(const char *rel, const char *want)
{
    dl_image img;
    cr_expect_eq(dl_image_load(&img, tu_path(rel)), DL_ERR, "%s should be refused", rel);
    cr_expect(strstr(dl_error_msg(), rel) != NULL, "message '%s' must name the file", dl_error_msg());
    cr_expect(strstr(dl_error_msg(), want) != NULL, "message '%s' should say '%s'", dl_error_msg(), want);
    cr_expect_null(img.data);
}

Test(image, bad_images_are_named)
{
    expect_load_error("tests/golden/images/truncated.png", "cannot decode");
    expect_load_error("tests/golden/images/not_an_image.png", "cannot decode");
    expect_load_error("tests/golden/images/missing.png", "cannot open");
}

Test(image, png_roundtrip_with_parameters_chunk)
{
    char dir[] = "/tmp/danlu-img-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/out.png", dir);
    dl_image img = {.w = 13, .h = 6};
    img.data = malloc(13 * 6 * 3);
    for (int i = 0; i < 13 * 6 * 3; i++) img.data[i] = (uint8_t)(i * 37 + 11);
    const char *params = "a cat, (masterpiece:1.2)\nNegative prompt: blurry\n"
                         "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 13x6";
    const char *utf8 = "\xe4\xb8\xb9\xe7\x82\x89 caf\xc3\xa9";
    const char *text[] = {"parameters", params, "comment", utf8};
    cr_assert_eq(dl_png_save(path, &img, text, 2), DL_OK, "%s", dl_error_msg());

    dl_image back;
    cr_assert_eq(dl_image_load(&back, path), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(back.w, 13);
    cr_expect_eq(back.h, 6);
    cr_expect_arr_eq(back.data, img.data, 13 * 6 * 3);
    char *got = NULL;
    cr_assert_eq(dl_png_read_text(path, "parameters", &got), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(got, params);
    free(got);
    cr_assert_eq(dl_png_read_text(path, "comment", &got), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(got, utf8);
    free(got);
    cr_expect_eq(dl_png_read_text(path, "absent", &got), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "no 'absent' text chunk"), "%s", dl_error_msg());
    dl_image_free(&back);

    char bad[160];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.png", dir);
    cr_expect_eq(dl_png_save(bad, &img, NULL, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "x.png"), "%s", dl_error_msg());
    free(img.data);
    unlink(path);
    rmdir(dir);
}
