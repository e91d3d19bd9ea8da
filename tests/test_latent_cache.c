/* test_latent_cache.c - cached latents: memory and disk, hits, misses and invalidation when the
 * image file, the VAE fingerprint or the flip setting changes, a corrupt cache entry, the
 * random_crop refusal, flipped latents, and the VAE fingerprint itself. A stand-in encoder
 * (8x8 average pooling) counts its calls. */
#define _XOPEN_SOURCE 700
#include "io/image.h"
#include "testutil.h"
#include "train/batcher.h"
#include "train/image_prep.h"
#include "train/latent_cache.h"

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void put_png(const char *rel, int w, int h, int seed)
{
    dl_image img = {w, h, malloc((size_t)w * h * 3)};
    for (int i = 0; i < w * h * 3; i++) img.data[i] = (uint8_t)(i * 13 + seed * 31 + (i / (3 * w)) * 5);
    cr_assert_eq(dl_png_save(tu_tmp(rel), &img, NULL, 0), DL_OK, "%s", dl_error_msg());
    free(img.data);
}

/* latent[c] = mean of image channel c % 3 over the 8x8 block, + 0.01 c */
typedef struct enc_ctx { int calls; } enc_ctx;
static int pool_encode(void *user, int item, int H, int W, const float *img, float *lat)
{
    (void)item;
    ((enc_ctx *)user)->calls++;
    int h = H / 8, w = W / 8;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 4; c++) {
                double s = 0;
                for (int dy = 0; dy < 8; dy++)
                    for (int dx = 0; dx < 8; dx++) s += img[(((size_t)y * 8 + dy) * W + x * 8 + dx) * 3 + c % 3];
                lat[((size_t)y * w + x) * 4 + c] = (float)(s / 64 + 0.01 * c);
            }
    return DL_OK;
}

static void scan(dl_dataset *ds)
{
    dl_dataset_cfg cfg = {0};
    cfg.train_data_dir = tu_tmp("data");
    dl_bucket_cfg_default(&cfg.bucket, 64, 64);
    cfg.bucket.min_reso = 64;
    cfg.bucket.max_reso = 128;
    cr_assert_eq(dl_dataset_scan(ds, &cfg), DL_OK, "%s", dl_error_msg());
}

static void make_data(void)
{
    cr_assert_eq(mkdir(tu_tmp("data"), 0777), 0);
    cr_assert_eq(mkdir(tu_tmp("data/2_x"), 0777), 0);
    put_png("data/2_x/a.png", 64, 64, 1);
    put_png("data/2_x/b.png", 140, 70, 2);  /* 2:1, resized and cropped */
    put_png("data/2_x/c.png", 50, 100, 3);  /* upscaled */
}

static void cache_cfg(dl_latent_cache_cfg *c, const char *disk)
{
    memset(c, 0, sizeof *c);
    c->disk_dir = disk;
    c->latent_channels = 4;
    c->downscale = 8;
    c->vae_fingerprint = 0x1234;
}

TestSuite(latent_cache, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

Test(latent_cache, memory_cache_matches_direct_encoding)
{
    make_data();
    dl_dataset ds;
    scan(&ds);
    dl_latent_cache_cfg cfg;
    cache_cfg(&cfg, NULL);
    cfg.flip_aug = 1;
    enc_ctx e = {0};
    dl_latent_cache c;
    cr_assert_eq(dl_latent_cache_build(&c, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(e.calls, 2 * ds.n_items, "flip_aug encodes both images: %d calls", e.calls);
    cr_expect_eq(c.misses, ds.n_items);
    for (int i = 0; i < ds.n_items; i++) {
        const dl_dataset_item *it = &ds.items[i];
        dl_image img;
        cr_assert_eq(dl_image_load(&img, it->image_path), DL_OK);
        float *px = malloc((size_t)it->reso.w * it->reso.h * 3 * sizeof(float));
        int lh = it->reso.h / 8, lw = it->reso.w / 8;
        float *lat = malloc((size_t)lh * lw * 4 * sizeof(float));
        int x0, y0;
        dl_prep_crop_offsets(it->resized, it->reso, 0, NULL, &x0, &y0);
        for (int flip = 0; flip < 2; flip++) {
            dl_image_prep(NULL, &img, it->resized, it->reso, x0, y0, flip, px);
            pool_encode(&e, i, it->reso.h, it->reso.w, px, lat);
            tu_expect_close(dl_latent_cache_get(&c, i, flip), lat, (size_t)lh * lw * 4, 1e-7, it->image_path);
        }
        /* pooling commutes with the mirror: flipped latents are the mirrored latents */
        const float *u = dl_latent_cache_get(&c, i, 0), *fl = dl_latent_cache_get(&c, i, 1);
        for (int y = 0; y < lh; y++)
            for (int x = 0; x < lw; x++)
                for (int ch = 0; ch < 4; ch++)
                    cr_expect_float_eq(fl[(y * lw + x) * 4 + ch], u[(y * lw + lw - 1 - x) * 4 + ch], 1e-5);
        free(px);
        free(lat);
        dl_image_free(&img);
    }
    dl_latent_cache_free(&c);
    dl_dataset_free(&ds);
}

Test(latent_cache, disk_hits_misses_and_invalidation)
{
    make_data();
    const char *dir = tu_tmp("cache");
    dl_dataset ds;
    scan(&ds);
    int n = ds.n_items;
    dl_latent_cache_cfg cfg;
    cache_cfg(&cfg, dir);
    enc_ctx e = {0};
    dl_latent_cache c1, c2;
    cr_assert_eq(dl_latent_cache_build(&c1, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c1.misses == n && c1.hits == 0 && e.calls == n, "first build computes all");
    char *p0 = dl_latent_cache_path(&cfg, &ds.items[0]);
    struct stat sb;
    cr_expect_eq(stat(p0, &sb), 0, "cache file %s written", p0);

    e.calls = 0; /* second build: all hits, same numbers */
    cr_assert_eq(dl_latent_cache_build(&c2, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c2.hits == n && c2.misses == 0 && c2.invalidated == 0 && e.calls == 0, "hits %d calls %d", c2.hits,
              e.calls);
    for (int i = 0; i < n; i++) {
        int lh = ds.items[i].reso.h / 8, lw = ds.items[i].reso.w / 8;
        cr_expect_eq(memcmp(dl_latent_cache_get(&c1, i, 0), dl_latent_cache_get(&c2, i, 0),
                            (size_t)lh * lw * 4 * sizeof(float)), 0, "reloaded latents identical");
    }
    dl_latent_cache_free(&c2);

    /* the image changes (new content and size): only that entry is recomputed */
    put_png("data/2_x/a.png", 64, 72, 9);
    dl_dataset_free(&ds);
    scan(&ds);
    e.calls = 0;
    cr_assert_eq(dl_latent_cache_build(&c2, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c2.invalidated == 1 && c2.hits == n - 1 && e.calls == 1, "changed image: invalidated %d hits %d",
              c2.invalidated, c2.hits);
    dl_latent_cache_free(&c2);

    /* another VAE: everything recomputed */
    cfg.vae_fingerprint = 0x5678;
    e.calls = 0;
    cr_assert_eq(dl_latent_cache_build(&c2, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c2.invalidated == n && e.calls == n, "new VAE: invalidated %d", c2.invalidated);
    dl_latent_cache_free(&c2);

    /* flip_aug turned on: entries lack latents_flipped -> recomputed with both */
    cfg.flip_aug = 1;
    e.calls = 0;
    cr_assert_eq(dl_latent_cache_build(&c2, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c2.invalidated == n && e.calls == 2 * n, "flip_aug on: invalidated %d calls %d", c2.invalidated, e.calls);
    dl_latent_cache_free(&c2);
    /* and back off: the entries with both are still valid */
    cfg.flip_aug = 0;
    e.calls = 0;
    cr_assert_eq(dl_latent_cache_build(&c2, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c2.hits == n && e.calls == 0);
    dl_latent_cache_free(&c2);

    /* a truncated cache file is stale, not fatal */
    cr_assert_eq(truncate(p0, 20), 0);
    e.calls = 0;
    cr_assert_eq(dl_latent_cache_build(&c2, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    cr_expect(c2.invalidated == 1 && e.calls == 1, "truncated entry recomputed");
    dl_latent_cache_free(&c2);

    free(p0);
    dl_latent_cache_free(&c1);
    dl_dataset_free(&ds);
}

Test(latent_cache, random_crop_is_refused)
{
    make_data();
    dl_dataset ds;
    scan(&ds);
    dl_latent_cache_cfg cfg;
    cache_cfg(&cfg, NULL);
    cfg.random_crop = 1;
    enc_ctx e = {0};
    dl_latent_cache c;
    cr_expect_eq(dl_latent_cache_build(&c, &ds, &cfg, pool_encode, &e), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "random_crop"), "%s", dl_error_msg());
    cr_expect_eq(e.calls, 0);
    dl_dataset_free(&ds);
}

Test(latent_cache, unwritable_cache_dir_is_an_error)
{
    make_data();
    dl_dataset ds;
    scan(&ds);
    FILE *f = fopen(tu_tmp("afile"), "w");
    fclose(f);
    dl_latent_cache_cfg cfg;
    cache_cfg(&cfg, tu_tmp("afile"));
    enc_ctx e = {0};
    dl_latent_cache c;
    cr_expect_eq(dl_latent_cache_build(&c, &ds, &cfg, pool_encode, &e), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "afile"), "%s", dl_error_msg());
    dl_dataset_free(&ds);
}

Test(latent_cache, vae_fingerprint_tracks_encoder_weights)
{
    float w_in[2 * 3] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, w_q[4] = {1, 0, 0, 1};
    dl_vae v;
    memset(&v, 0, sizeof v);
    v.cfg.in_channels = 3;
    v.cfg.latent_channels = 2;
    v.cfg.n_blocks = 1;
    v.enc.conv_in = (dl_conv){.cin = 3, .cout = 2, .k = 1, .stride = 1, .w = w_in};
    v.quant_conv = (dl_linear){.in = 2, .out = 2, .w = w_q};
    uint64_t a = dl_vae_fingerprint(NULL, &v), b = dl_vae_fingerprint(NULL, &v);
    cr_expect_eq(a, b);
    w_in[4] += 1e-3f;
    cr_expect_neq(dl_vae_fingerprint(NULL, &v), a, "a changed encoder weight changes the fingerprint");
    w_in[4] -= 1e-3f;
    w_q[1] = 0.5f;
    cr_expect_neq(dl_vae_fingerprint(NULL, &v), a);
}

Test(latent_cache, batch_images_and_latents_follow_the_draws)
{
    make_data();
    dl_dataset ds;
    scan(&ds);
    dl_latent_cache_cfg cfg;
    cache_cfg(&cfg, NULL);
    cfg.flip_aug = 1;
    enc_ctx e = {0};
    dl_latent_cache c;
    cr_assert_eq(dl_latent_cache_build(&c, &ds, &cfg, pool_encode, &e), DL_OK, "%s", dl_error_msg());
    dl_batcher b;
    dl_batcher_init(&b, &ds, 2, 11);
    dl_augment_cfg aug;
    memset(&aug, 0, sizeof aug);
    aug.flip_aug = 1;
    dl_batch bt;
    dl_batch_init(&bt, 2);
    int flips = 0;
    for (int s = 0; s < 2 * dl_batcher_batches_per_epoch(&b); s++) {
        dl_batcher_next(&b, &aug, &bt);
        size_t lper = (size_t)(bt.reso.w / 8) * (bt.reso.h / 8) * 4, pper = (size_t)bt.reso.w * bt.reso.h * 3;
        float *lat = tu_alloc_nan(lper * bt.n), *px = tu_alloc_nan(pper * bt.n), *ref = malloc(pper * sizeof(float));
        dl_batch_latents(&c, &ds, &bt, lat);
        cr_assert_eq(dl_batch_images(tu_ctx()->pool, &ds, &bt, px), DL_OK, "%s", dl_error_msg());
        for (int j = 0; j < bt.n; j++) {
            const dl_dataset_item *it = &ds.items[bt.items[j]];
            flips += bt.flip[j];
            tu_expect_close(lat + j * lper, dl_latent_cache_get(&c, bt.items[j], bt.flip[j]), lper, 0, "batch latents");
            dl_image img;
            cr_assert_eq(dl_image_load(&img, it->image_path), DL_OK);
            dl_image_prep(NULL, &img, it->resized, it->reso, bt.crop_x[j], bt.crop_y[j], bt.flip[j], ref);
            tu_expect_close(px + j * pper, ref, pper, 0, "batch pixels");
            dl_image_free(&img);
        }
        free(lat);
        free(px);
        free(ref);
    }
    cr_expect_gt(flips, 0, "some samples flipped");
    dl_batch_free(&bt);
    dl_batcher_free(&b);
    dl_latent_cache_free(&c);
    dl_dataset_free(&ds);
}
