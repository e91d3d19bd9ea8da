/* test_dataset.c - train_data_dir scanning (N_name repeats, captions, buckets), its bad-input
 * messages, and the batcher (one bucket per batch, repeats, seeded order, resume mid-epoch).
 * Datasets are generated in temporary directories. */
#define _XOPEN_SOURCE 700
#include "io/image.h"
#include "testutil.h"
#include "train/batcher.h"
#include "train/dataset.h"

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void mk(const char *rel) { cr_assert_eq(mkdir(tu_tmp(rel), 0777), 0, "mkdir %s", rel); }
static void put(const char *rel, const void *data, size_t n)
{
    FILE *f = fopen(tu_tmp(rel), "wb");
    cr_assert_not_null(f, "cannot write %s", rel);
    fwrite(data, 1, n, f);
    fclose(f);
}
static void put_str(const char *rel, const char *s) { put(rel, s, strlen(s)); }
static void put_png(const char *rel, int w, int h)
{
    dl_image img = {w, h, malloc((size_t)w * h * 3)};
    for (int i = 0; i < w * h * 3; i++) img.data[i] = (uint8_t)(i * 7 + w);
    cr_assert_eq(dl_png_save(tu_tmp(rel), &img, NULL, 0), DL_OK, "%s", dl_error_msg());
    free(img.data);
}
static void copy_fixture(const char *fixture, const char *rel)
{
    char src[256];
    snprintf(src, sizeof src, "tests/golden/images/%s", fixture);
    FILE *f = fopen(tu_path(src), "rb");
    cr_assert_not_null(f, "fixture %s", fixture);
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    put(rel, buf, n);
}

static void small_cfg(dl_dataset_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->train_data_dir = tu_tmpdir();
    dl_bucket_cfg_default(&c->bucket, 128, 128);
    c->bucket.min_reso = 64;
    c->bucket.max_reso = 256;
}

static const dl_dataset_item *find_item(const dl_dataset *ds, const char *name)
{
    for (int i = 0; i < ds->n_items; i++) {
        const char *b = strrchr(ds->items[i].image_path, '/');
        if (b && strcmp(b + 1, name) == 0) return &ds->items[i];
    }
    return NULL;
}
static int warned(const dl_dataset *ds, const char *a, const char *b)
{
    for (int i = 0; i < ds->n_warnings; i++)
        if (strstr(ds->warnings[i], a) && (!b || strstr(ds->warnings[i], b))) return 1;
    return 0;
}

TestSuite(dataset, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

Test(dataset, layout_repeats_and_captions)
{
    mk("10_sks cat");
    put_png("10_sks cat/a.png", 128, 128);
    put_str("10_sks cat/a.txt", "\xEF\xBB\xBF  cat, cute \r\nsecond line ignored\n"); /* BOM, CRLF */
    put_png("10_sks cat/b.PNG", 128, 64);                  /* upper-case extension, no caption */
    put_str("10_sks cat/notes.md", "not an image");
    mk("3_dog");
    put_png("3_dog/d.png", 64, 128);
    put_str("3_dog/d.caption", "a dog");                     /* .caption accepted beside .txt */
    mk("noprefix");
    put_png("noprefix/e.png", 64, 64);
    put_png("stray.png", 64, 64);                            /* ignored: subfolders exist */
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    dl_dataset ds;
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ds.n_items, 3);
    cr_expect_eq(ds.n_subsets, 2);
    cr_expect_eq(ds.num_train_images, 10 + 10 + 3, "repeats counted: %lld", (long long)ds.num_train_images);
    const dl_dataset_item *a = find_item(&ds, "a.png"), *b = find_item(&ds, "b.PNG"), *d = find_item(&ds, "d.png");
    cr_assert(a && b && d, "items found");
    cr_expect_str_eq(a->caption, "cat, cute");
    cr_expect_str_eq(b->caption, "sks cat", "class tokens from the folder name when no caption file");
    cr_expect_str_eq(d->caption, "a dog");
    cr_expect_eq(a->num_repeats, 10);
    cr_expect_eq(d->num_repeats, 3);
    cr_expect(warned(&ds, "noprefix", "repeat count"), "folder without N_ prefix warned");
    cr_expect(warned(&ds, "directly in", NULL), "root images warned");
    cr_expect(!find_item(&ds, "e.png") && !find_item(&ds, "stray.png"));
    /* buckets of res 128, 64..256 step 64: ..., (128,128), (192,64), ...; a 2:1 image ties between
     * 128x128 and 192x64 (aspect error 1) and takes the first, as np.argmin: 128x128, resized 256x128 */
    cr_expect(a->reso.w == 128 && a->reso.h == 128);
    cr_expect(b->reso.w == 128 && b->reso.h == 128 && b->resized.w == 256 && b->resized.h == 128,
              "b bucket %dx%d resized %dx%d", b->reso.w, b->reso.h, b->resized.w, b->resized.h);
    cr_expect(warned(&ds, "b.PNG", "upscaled"), "upscaled image warned by name");
    int64_t counts[16];
    cr_assert_leq(ds.buckets.n_used, 16);
    dl_dataset_bucket_counts(&ds, counts);
    int64_t total = 0;
    for (int k = 0; k < ds.buckets.n_used; k++) {
        total += counts[k];
        if (k) cr_expect(ds.buckets.used[k - 1].w < ds.buckets.used[k].w ||
                         (ds.buckets.used[k - 1].w == ds.buckets.used[k].w && ds.buckets.used[k - 1].h < ds.buckets.used[k].h),
                         "buckets sorted");
    }
    cr_expect_eq(total, 23);
    for (int i = 0; i < ds.n_items; i++) {
        dl_reso u = ds.buckets.used[ds.items[i].bucket];
        cr_expect(u.w == ds.items[i].reso.w && u.h == ds.items[i].reso.h, "item bucket index consistent");
    }
    dl_dataset_free(&ds);
}

Test(dataset, sd_scripts_metadata_json)
{
    mk("4_a b");
    put_png("4_a b/1.png", 64, 64);
    put_str("4_a b/1.txt", "Cat, cute,, caf\xc3\xa9 \"q\"");
    put_png("4_a b/2.png", 64, 64);
    put_str("4_a b/2.txt", " cat ,dog");
    mk("1_c");
    put_png("1_c/3.png", 64, 64);
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    dl_dataset ds;
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    char *tf = dl_dataset_tag_frequency_json(&ds), *dd = dl_dataset_dirs_json(&ds);
    /* json.dumps({"1_c": {"c": 1}, "4_a b": {"cat": 2, "cute": 1, "caf\u00e9 \"q\"": 1, "dog": 1}}) */
    cr_expect_str_eq(tf, "{\"1_c\": {\"c\": 1}, \"4_a b\": {\"cat\": 2, \"cute\": 1, \"caf\\u00e9 \\\"q\\\"\": 1, "
                         "\"dog\": 1}}");
    cr_expect_str_eq(dd, "{\"1_c\": {\"n_repeats\": 1, \"img_count\": 1}, \"4_a b\": {\"n_repeats\": 4, \"img_count\": 2}}");
    free(tf);
    free(dd);
    dl_dataset_free(&ds);
}

Test(dataset, flat_folder_and_extension_option)
{
    put_png("x.png", 64, 64);
    put_str("x.txt", "from txt");
    put_str("x.cap", "from cap");
    copy_fixture("rgb.webp", "y.WebP");
    copy_fixture("rgb.bmp", "z.bmp");
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    dl_dataset ds;
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ds.n_items, 3);
    cr_expect_eq(ds.num_train_images, 3);
    cr_expect_str_eq(find_item(&ds, "x.png")->caption, "from txt");
    cr_expect(warned(&ds, "y.WebP", "empty caption"), "missing caption without class tokens warned");
    dl_dataset_free(&ds);
    cfg.caption_extension = ".cap";
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(find_item(&ds, "x.png")->caption, "from cap");
    dl_dataset_free(&ds);
}

Test(dataset, missing_and_empty_dirs)
{
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    dl_dataset ds;
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR, "empty directory is an error");
    cr_expect_not_null(strstr(dl_error_msg(), tu_tmpdir()), "%s", dl_error_msg());
    cr_expect_not_null(strstr(dl_error_msg(), "no usable training images"), "%s", dl_error_msg());
    mk("5_empty");
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR);
    char missing[128];
    snprintf(missing, sizeof missing, "%s/nope", tu_tmpdir());
    cfg.train_data_dir = missing;
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), missing), "%s", dl_error_msg());
    put_str("file", "x");
    cfg.train_data_dir = tu_tmp("file");
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "not a directory"), "%s", dl_error_msg());
}

Test(dataset, corrupt_image_skipped_with_warning)
{
    mk("2_x");
    copy_fixture("truncated.png", "2_x/bad.png");
    copy_fixture("not_an_image.png", "2_x/text.jpg");
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    dl_dataset ds;
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR, "only corrupt images: error");
    cr_expect_not_null(strstr(dl_error_msg(), "2 skipped"), "%s", dl_error_msg());
    put_png("2_x/good.png", 64, 64);
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ds.n_items, 1);
    cr_expect_eq(ds.n_skipped, 2);
    cr_expect(warned(&ds, "bad.png", "skipping"), "warning names the corrupt file");
    cr_expect(warned(&ds, "text.jpg", "skipping"), "warning names the non-image");
    dl_dataset_free(&ds);
}

Test(dataset, bad_captions_are_errors_naming_the_file)
{
    mk("1_x");
    put_png("1_x/a.png", 64, 64);
    put("1_x/a.txt", "caf\xe9, latin1", 12); /* Latin-1, not UTF-8 */
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    dl_dataset ds;
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "1_x/a.txt"), "%s", dl_error_msg());
    cr_expect_not_null(strstr(dl_error_msg(), "not UTF-8"), "%s", dl_error_msg());
    put("1_x/a.txt", "", 0);
    cr_expect_eq(dl_dataset_scan(&ds, &cfg), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "a.txt: caption file is empty"), "%s", dl_error_msg());
    put_str("1_x/a.txt", "\xe7\x8c\xab, \xf0\x9f\x90\x88"); /* valid UTF-8 */
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    dl_dataset_free(&ds);
}

Test(dataset, no_upscale_skips_images_below_one_step)
{
    mk("1_x");
    put_png("1_x/tiny.png", 40, 100);
    put_png("1_x/ok.png", 100, 70);
    dl_dataset_cfg cfg;
    small_cfg(&cfg);
    cfg.bucket.no_upscale = 1;
    dl_dataset ds;
    cr_assert_eq(dl_dataset_scan(&ds, &cfg), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ds.n_items, 1);
    cr_expect(warned(&ds, "tiny.png", "bucket_no_upscale"), "tiny image warned by name");
    const dl_dataset_item *ok = find_item(&ds, "ok.png");
    cr_assert_not_null(ok);
    cr_expect(ok->reso.w == 64 && ok->reso.h == 64 && ok->resized.w == 100 && ok->resized.h == 70);
    dl_dataset_free(&ds);
}

Test(dataset, utf8_validator)
{
    size_t off;
    cr_expect(dl_utf8_valid((const uint8_t *)"abc \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 15, NULL));
    cr_expect(!dl_utf8_valid((const uint8_t *)"ab\xc0\xaf", 4, &off) && off == 2, "overlong");
    cr_expect(!dl_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3, &off) && off == 0, "surrogate");
    cr_expect(!dl_utf8_valid((const uint8_t *)"x\xe2\x82", 3, &off) && off == 1, "truncated");
    cr_expect(!dl_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4, &off), "above U+10FFFF");
}

/* ---- batcher, on an in-memory dataset ---- */

typedef struct fake_ds {
    dl_dataset ds;
    dl_dataset_item items[16];
    dl_reso used[3];
    char names[16][16];
} fake_ds;

/* 11 images over 3 buckets, repeats 1..3. */
static void fake_init(fake_ds *f)
{
    memset(f, 0, sizeof *f);
    f->used[0] = (dl_reso){64, 128};
    f->used[1] = (dl_reso){128, 128};
    f->used[2] = (dl_reso){192, 64};
    for (int i = 0; i < 11; i++) {
        dl_dataset_item *it = &f->items[i];
        snprintf(f->names[i], sizeof f->names[i], "img%02d.png", i);
        it->image_path = f->names[i];
        it->caption = (char *)"a, b, c, d, e";
        it->num_repeats = 1 + i % 3;
        it->bucket = i % 3;
        it->reso = f->used[it->bucket];
        it->resized = (dl_reso){it->reso.w + 8, it->reso.h};
        it->w = it->resized.w;
        it->h = it->resized.h;
        f->ds.num_train_images += it->num_repeats;
    }
    f->ds.n_items = 11;
    f->ds.items = f->items;
    f->ds.buckets.used = f->used;
    f->ds.buckets.n_used = 3;
}

static void aug_cfg(dl_augment_cfg *a)
{
    memset(a, 0, sizeof *a);
    a->caption.shuffle_caption = 1;
    a->caption.keep_tokens = 1;
    a->flip_aug = 1;
    a->random_crop = 1;
}

/* Hash of a batch: items, bucket, flips, crops, captions. */
static uint64_t batch_hash(const dl_batch *b)
{
    uint64_t h = 1469598103934665603ULL;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211ULL)
    MIX(b->n);
    MIX(b->bucket);
    for (int i = 0; i < b->n; i++) {
        MIX(b->items[i]);
        MIX(b->flip[i]);
        MIX(b->crop_x[i]);
        MIX(b->crop_y[i]);
        for (const char *c = b->captions[i]; *c; c++) MIX(*c);
    }
#undef MIX
    return h;
}

Test(batcher, epoch_covers_every_repeat_once_one_bucket_per_batch)
{
    fake_ds f;
    fake_init(&f);
    dl_batcher b;
    dl_batcher_init(&b, &f.ds, 2, 42);
    /* buckets hold 1+3+1+3 .. : counts with repeats per bucket */
    int64_t cnt[3] = {0};
    for (int i = 0; i < 11; i++) cnt[f.items[i].bucket] += f.items[i].num_repeats;
    int want = 0;
    for (int k = 0; k < 3; k++) want += (int)((cnt[k] + 1) / 2);
    cr_expect_eq(dl_batcher_batches_per_epoch(&b), want);
    dl_augment_cfg aug;
    aug_cfg(&aug);
    dl_batch bt;
    dl_batch_init(&bt, 2);
    for (int epoch = 0; epoch < 2; epoch++) {
        int seen[11] = {0};
        for (int s = 0; s < want; s++) {
            dl_batcher_next(&b, &aug, &bt);
            cr_assert(bt.n >= 1 && bt.n <= 2);
            for (int i = 0; i < bt.n; i++) {
                const dl_dataset_item *it = &f.items[bt.items[i]];
                cr_expect_eq(it->bucket, bt.bucket, "batch mixes buckets");
                cr_expect(bt.reso.w == it->reso.w && bt.reso.h == it->reso.h);
                cr_expect(bt.crop_x[i] >= 0 && bt.crop_x[i] <= 8 && bt.crop_y[i] == 0);
                cr_expect(strncmp(bt.captions[i], "a, ", 3) == 0, "keep_tokens=1 keeps 'a' first: %s", bt.captions[i]);
                seen[bt.items[i]]++;
            }
        }
        cr_expect_eq(b.st.epoch, epoch);
        for (int i = 0; i < 11; i++)
            cr_expect_eq(seen[i], f.items[i].num_repeats, "epoch %d: item %d seen %d times, repeats %d", epoch, i,
                         seen[i], f.items[i].num_repeats);
    }
    dl_batch_free(&bt);
    dl_batcher_free(&b);
}

Test(batcher, seeded_order_is_deterministic_and_varies)
{
    fake_ds f;
    fake_init(&f);
    dl_augment_cfg aug;
    aug_cfg(&aug);
    dl_batcher a, b, c;
    dl_batcher_init(&a, &f.ds, 3, 7);
    dl_batcher_init(&b, &f.ds, 3, 7);
    dl_batcher_init(&c, &f.ds, 3, 8);
    dl_batch x, y, z;
    dl_batch_init(&x, 3);
    dl_batch_init(&y, 3);
    dl_batch_init(&z, 3);
    int per = dl_batcher_batches_per_epoch(&a), diff_seed = 0, diff_epoch = 0;
    uint64_t first[64];
    cr_assert_leq(per, 64);
    for (int s = 0; s < 3 * per; s++) {
        dl_batcher_next(&a, &aug, &x);
        dl_batcher_next(&b, &aug, &y);
        dl_batcher_next(&c, &aug, &z);
        cr_assert_eq(batch_hash(&x), batch_hash(&y), "same seed, step %d differs", s);
        diff_seed += batch_hash(&x) != batch_hash(&z);
        if (s < per) first[s] = batch_hash(&x);
        else if (s < 2 * per) diff_epoch += first[s - per] != batch_hash(&x);
    }
    cr_expect_gt(diff_seed, per, "another seed gives another order");
    cr_expect_gt(diff_epoch, per / 2, "epochs are reshuffled");
    dl_batch_free(&x);
    dl_batch_free(&y);
    dl_batch_free(&z);
    dl_batcher_free(&a);
    dl_batcher_free(&b);
    dl_batcher_free(&c);
}

Test(batcher, resume_mid_epoch_continues_exactly)
{
    fake_ds f;
    fake_init(&f);
    dl_augment_cfg aug;
    aug_cfg(&aug);
    aug.caption.caption_tag_dropout_rate = 0.3;
    int per;
    {
        dl_batcher tmp;
        dl_batcher_init(&tmp, &f.ds, 2, 99);
        per = dl_batcher_batches_per_epoch(&tmp);
        dl_batcher_free(&tmp);
    }
    int stops[3] = {3, per, per + 2}; /* mid-epoch, at the epoch boundary, in the second epoch */
    for (int t = 0; t < 3; t++) {
        dl_batcher ref, run;
        dl_batcher_init(&ref, &f.ds, 2, 99);
        dl_batcher_init(&run, &f.ds, 2, 99);
        dl_batch x, y;
        dl_batch_init(&x, 2);
        dl_batch_init(&y, 2);
        for (int s = 0; s < stops[t]; s++) dl_batcher_next(&run, &aug, &y);
        dl_batcher_state st, st2;
        uint64_t words[DL_BATCHER_STATE_WORDS];
        dl_batcher_get_state(&run, &st);
        dl_batcher_state_pack(&st, words);
        dl_batcher_free(&run);
        dl_batcher_state_unpack(&st2, words);
        dl_batcher res;
        dl_batcher_init(&res, &f.ds, 2, 99);
        cr_assert_eq(dl_batcher_set_state(&res, &st2), DL_OK, "%s", dl_error_msg());
        for (int s = 0; s < stops[t]; s++) dl_batcher_next(&ref, &aug, &x);
        for (int s = 0; s < 2 * per; s++) {
            dl_batcher_next(&ref, &aug, &x);
            dl_batcher_next(&res, &aug, &y);
            cr_assert_eq(batch_hash(&x), batch_hash(&y), "stop %d: step %d after resume differs", stops[t], s);
        }
        dl_batch_free(&x);
        dl_batch_free(&y);
        dl_batcher_free(&ref);
        dl_batcher_free(&res);
    }
}

Test(batcher, state_of_another_dataset_is_refused)
{
    fake_ds f;
    fake_init(&f);
    dl_batcher a, b;
    dl_batcher_init(&a, &f.ds, 2, 1);
    dl_batcher_state st;
    dl_batcher_get_state(&a, &st);
    dl_batcher_init(&b, &f.ds, 4, 1); /* other batch size */
    cr_expect_eq(dl_batcher_set_state(&b, &st), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "another dataset"), "%s", dl_error_msg());
    dl_batcher_free(&b);
    f.items[3].num_repeats++; /* changed dataset */
    dl_batcher_init(&b, &f.ds, 2, 1);
    cr_expect_eq(dl_batcher_set_state(&b, &st), DL_ERR);
    dl_batcher_free(&b);
    dl_batcher_free(&a);
}
