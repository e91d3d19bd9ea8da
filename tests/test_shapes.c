/* test_shapes.c - the procedural shapes set: colours where they belong (centre, corners, the
 * ring's hole), the four shapes told apart by where they cover, captions, determinism by seed,
 * and the dataset folder it writes (read back by the project's own image and caption readers). */
#include "io/image.h"
#include "testutil.h"
#include "train/shapes.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(shapes, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

enum { S = 64 };

static const uint8_t *px(const uint8_t *img, int x, int y) { return img + ((size_t)y * S + x) * 3; }

static int is_color(const uint8_t *p, int c)
{
    return p[0] == dl_shape_palette[c][0] && p[1] == dl_shape_palette[c][1] && p[2] == dl_shape_palette[c][2];
}

Test(shapes, colours_where_they_belong)
{
    static uint8_t img[S * S * 3];
    for (int n = 0; n < DL_SHAPE_COUNT * 30; n++)
        for (int ring = 0; ring < 2; ring++) {
            dl_shape_spec s;
            dl_shape_spec_nth(n, ring, &s);
            cr_assert_neq(s.fg, s.bg);
            dl_shape_render(&s, S, img);
            const int corners[4][2] = {{0, 0}, {S - 1, 0}, {0, S - 1}, {S - 1, S - 1}};
            for (int k = 0; k < 4; k++)
                cr_expect(is_color(px(img, corners[k][0], corners[k][1]), s.bg), "spec %d ring %d: corner %d", n, ring, k);
            /* the middle: the shape's colour, or the background through the ring's hole */
            cr_expect(is_color(px(img, S / 2, S / 2), ring ? s.bg : s.fg), "spec %d ring %d: centre", n, ring);
        }
}

/* Which of a few probe points (relative to the centre, in radii) a shape covers. */
static int covers(dl_shape_kind k, float x, float y)
{
    static uint8_t img[S * S * 3];
    dl_shape_spec s = {k, 0, 2, 0, 0.25f}; /* red on blue */
    dl_shape_render(&s, S, img);
    int px_ = (int)(S / 2 + x * 0.25f * S), py_ = (int)(S / 2 + y * 0.25f * S);
    return is_color(px(img, px_, py_), 0);
}

Test(shapes, the_four_shapes_differ)
{
    /* diagonal at 0.8 radii: only the square; on the axis at 0.8: all but the triangle's side;
     * straight up at 0.9: not the square's... */
    cr_expect(covers(DL_SHAPE_SQUARE, 0.8f, 0.8f));
    cr_expect(!covers(DL_SHAPE_CIRCLE, 0.8f, 0.8f));
    cr_expect(!covers(DL_SHAPE_CROSS, 0.8f, 0.8f));
    cr_expect(!covers(DL_SHAPE_TRIANGLE, 0.8f, 0.8f));
    cr_expect(covers(DL_SHAPE_CROSS, 0.9f, 0.0f));
    cr_expect(covers(DL_SHAPE_CIRCLE, 0.9f, 0.0f));
    cr_expect(!covers(DL_SHAPE_TRIANGLE, 0.9f, -0.3f)); /* above the base, outside the slanted side */
    cr_expect(covers(DL_SHAPE_TRIANGLE, 0.0f, -1.0f));  /* under the apex */
    cr_expect(!covers(DL_SHAPE_CIRCLE, 0.0f, -1.1f));
    cr_expect(covers(DL_SHAPE_TRIANGLE, 0.7f, 0.45f));  /* a base corner */
    cr_expect(!covers(DL_SHAPE_CROSS, 0.7f, 0.45f));
    cr_expect(!covers(DL_SHAPE_CIRCLE, 0.7f, 0.75f));
    cr_expect(covers(DL_SHAPE_SQUARE, 0.7f, 0.75f));
}

Test(shapes, captions)
{
    char buf[128];
    dl_shape_spec s = {DL_SHAPE_CIRCLE, 0, 2, 0, 0.25f};
    dl_shape_caption(&s, buf, sizeof buf);
    cr_expect_str_eq(buf, "a red circle on a blue background");
    s = (dl_shape_spec){DL_SHAPE_CROSS, 5, 4, 1, 0.25f};
    dl_shape_caption(&s, buf, sizeof buf);
    cr_expect_str_eq(buf, "ringstyle, a black cross on a white background");
}

Test(shapes, deterministic_by_seed)
{
    int same = 0, kinds[DL_SHAPE_COUNT] = {0};
    for (int i = 0; i < 200; i++) {
        dl_shape_spec a, b, c;
        dl_shape_spec_random(7, (uint64_t)i, 0, &a);
        dl_shape_spec_random(7, (uint64_t)i, 0, &b);
        dl_shape_spec_random(8, (uint64_t)i, 0, &c);
        cr_assert(a.kind == b.kind && a.fg == b.fg && a.bg == b.bg && a.radius == b.radius);
        cr_assert_neq(a.fg, a.bg);
        cr_assert(a.radius >= 0.22f && a.radius <= 0.28f, "radius %g", a.radius);
        same += a.kind == c.kind && a.fg == c.fg && a.bg == c.bg;
        kinds[a.kind]++;
    }
    cr_expect_lt(same, 40, "seeds 7 and 8 drew %d of 200 identical specs", same);
    for (int k = 0; k < DL_SHAPE_COUNT; k++) cr_expect_gt(kinds[k], 25, "shape %d drawn %d times of 200", k, kinds[k]);
    /* a fixed value: the set of a seed must not change between versions or machines */
    dl_shape_spec f;
    dl_shape_spec_random(0, 0, 0, &f);
    char buf[128];
    dl_shape_caption(&f, buf, sizeof buf);
    cr_expect_str_eq(buf, "a yellow circle on a black background");
    cr_expect(fabsf(f.radius - 0.2783f) < 1e-4f, "seed 0, image 0: radius %.4f", f.radius);
}

Test(shapes, writes_a_dataset_folder)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", tu_tmp("set"));
    cr_assert_eq(dl_shapes_write_set(dir, 5, 3, 1, S, 2), DL_OK, "%s", dl_error_msg());
    for (int i = 1; i <= 5; i++) {
        char p[1200];
        snprintf(p, sizeof p, "%s/2_ringstyle/%05d.png", dir, i);
        dl_image im;
        cr_assert_eq(dl_image_load(&im, p), DL_OK, "%s", dl_error_msg());
        cr_expect(im.w == S && im.h == S);
        dl_shape_spec s;
        dl_shape_spec_random(3, (uint64_t)(i - 1), 1, &s);
        uint8_t *want = malloc(S * S * 3);
        dl_shape_render(&s, S, want);
        cr_expect(memcmp(im.data, want, S * S * 3) == 0, "%s: pixels differ from the render", p);
        free(want);
        dl_image_free(&im);
        snprintf(p, sizeof p, "%s/2_ringstyle/%05d.txt", dir, i);
        FILE *f = fopen(p, "r");
        cr_assert_not_null(f, "%s", p);
        char line[128] = {0}, cap[128];
        cr_assert_not_null(fgets(line, sizeof line, f));
        fclose(f);
        dl_shape_caption(&s, cap, sizeof cap);
        strcat(cap, "\n");
        cr_expect_str_eq(line, cap);
    }
    /* an existing set is not overwritten */
    cr_expect_eq(dl_shapes_write_set(dir, 5, 3, 1, S, 2), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "00001.png") != NULL, "%s", dl_error_msg());
    cr_expect_eq(dl_shapes_write_set(dir, 5, 3, 1, 4, 2), DL_ERR); /* size out of range */
}
