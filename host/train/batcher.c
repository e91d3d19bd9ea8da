/* batcher.c - per-epoch shuffled batches from single buckets, with a resumable state. */
#include "train/batcher.h"

#include "core/error.h"
#include "io/image.h"
#include "train/image_prep.h"

#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Build epoch e's order from the canonical one: shuffle each bucket, then the batch list. */
static void build_epoch(dl_batcher *b, int64_t epoch) {
    const dl_dataset *ds = b->ds;
    for (int k = 0; k < b->n_buckets; k++) b->bucket_len[k] = 0;
    for (int i = 0; i < ds->n_items; i++) /* canonical: items in scan order, repeats adjacent */
        for (int r = 0; r < ds->items[i].num_repeats; r++) {
            int k = ds->items[i].bucket;
            b->bucket_items[k][b->bucket_len[k]++] = i;
        }
    dl_rng r;
    dl_rng_seed(&r, b->seed + (uint64_t)epoch * 0x9E3779B97F4A7C15ULL + 1);
    int nb = 0;
    for (int k = 0; k < b->n_buckets; k++) {
        int *v = b->bucket_items[k];
        for (int i = b->bucket_len[k] - 1; i > 0; i--) {
            int j = (int)dl_rng_below(&r, (uint64_t)i + 1);
            int t = v[i];
            v[i] = v[j];
            v[j] = t;
        }
        for (int s = 0; s < b->bucket_len[k]; s += b->batch_size) {
            b->batch_bucket[nb] = k;
            b->batch_start[nb] = s;
            nb++;
        }
    }
    DL_ASSERT(nb == b->n_batches);
    for (int i = nb - 1; i > 0; i--) {
        int j = (int)dl_rng_below(&r, (uint64_t)i + 1);
        int t = b->batch_bucket[i];
        b->batch_bucket[i] = b->batch_bucket[j];
        b->batch_bucket[j] = t;
        t = b->batch_start[i];
        b->batch_start[i] = b->batch_start[j];
        b->batch_start[j] = t;
    }
}

void dl_batcher_init(dl_batcher *b, const dl_dataset *ds, int batch_size, uint64_t seed) {
    DL_ASSERT(ds && ds->n_items > 0 && batch_size >= 1);
    memset(b, 0, sizeof *b);
    b->ds = ds;
    b->batch_size = batch_size;
    b->seed = seed;
    b->n_buckets = ds->buckets.n_used;
    b->bucket_len = calloc((size_t)b->n_buckets, sizeof *b->bucket_len);
    b->bucket_items = calloc((size_t)b->n_buckets, sizeof *b->bucket_items);
    DL_ASSERT(b->bucket_len && b->bucket_items);
    int64_t *cnt = calloc((size_t)b->n_buckets, sizeof *cnt);
    DL_ASSERT(cnt);
    dl_dataset_bucket_counts(ds, cnt);
    uint64_t fp = 0xcbf29ce484222325ULL;
    for (int k = 0; k < b->n_buckets; k++) {
        b->bucket_items[k] = malloc((size_t)(cnt[k] ? cnt[k] : 1) * sizeof(int));
        DL_ASSERT(b->bucket_items[k]);
        b->n_batches += (int)((cnt[k] + batch_size - 1) / batch_size);
    }
    free(cnt);
    for (int i = 0; i < ds->n_items; i++) {
        const dl_dataset_item *it = &ds->items[i];
        fp = fnv1a(fp, it->image_path, strlen(it->image_path) + 1);
        fp = fnv1a(fp, &it->num_repeats, sizeof it->num_repeats);
        fp = fnv1a(fp, &it->reso, sizeof it->reso);
    }
    for (int i = 0; i < ds->n_items; i++) {
        size_t l = strlen(ds->items[i].caption);
        if (l > b->max_caption) b->max_caption = l;
    }
    fp = fnv1a(fp, &batch_size, sizeof batch_size);
    fp = fnv1a(fp, &seed, sizeof seed);
    b->batch_bucket = malloc((size_t)b->n_batches * sizeof(int));
    b->batch_start = malloc((size_t)b->n_batches * sizeof(int));
    DL_ASSERT(b->batch_bucket && b->batch_start);
    b->st.epoch = 0;
    b->st.pos = 0;
    b->st.fingerprint = fp;
    dl_rng_seed(&b->st.rng, seed ^ 0xA5A5A5A55A5A5A5AULL);
    build_epoch(b, 0);
}

void dl_batcher_free(dl_batcher *b) {
    for (int k = 0; k < b->n_buckets; k++) free(b->bucket_items[k]);
    free(b->bucket_items);
    free(b->bucket_len);
    free(b->batch_bucket);
    free(b->batch_start);
    memset(b, 0, sizeof *b);
}

int dl_batcher_batches_per_epoch(const dl_batcher *b) {
    return b->n_batches;
}

void dl_batch_init(dl_batch *bt, int batch_size) {
    DL_ASSERT(batch_size >= 1);
    memset(bt, 0, sizeof *bt);
    bt->items = calloc((size_t)batch_size, sizeof(int));
    bt->flip = calloc((size_t)batch_size, sizeof(int));
    bt->crop_x = calloc((size_t)batch_size, sizeof(int));
    bt->crop_y = calloc((size_t)batch_size, sizeof(int));
    bt->captions = calloc((size_t)batch_size, sizeof(char *));
    DL_ASSERT(bt->items && bt->flip && bt->crop_x && bt->crop_y && bt->captions);
}

void dl_batch_free(dl_batch *bt) {
    free(bt->items);
    free(bt->flip);
    free(bt->crop_x);
    free(bt->crop_y);
    free(bt->captions);
    free(bt->caption_text);
    dl_caption_work_free(&bt->caption_work);
    memset(bt, 0, sizeof *bt);
}

/* Caption buffers of bt ([batch_size] slots) for captions of up to len bytes; grow-only. */
static void batch_reserve_captions(dl_batch *bt, int batch_size, size_t len) {
    size_t slot = dl_caption_out_cap(len);
    if (slot > bt->caption_slot) {
        free(bt->caption_text);
        bt->caption_text = malloc(slot * (size_t)batch_size);
        DL_ASSERT(bt->caption_text);
        bt->caption_slot = slot;
        for (int j = 0; j < batch_size; j++) bt->captions[j] = bt->caption_text + (size_t)j * slot;
    }
    DL_ASSERT(dl_caption_work_reserve(&bt->caption_work, len) == DL_OK);
}

void dl_batcher_next(dl_batcher *b, const dl_augment_cfg *aug, dl_batch *out) {
    if (b->st.pos >= b->n_batches) {
        b->st.epoch++;
        b->st.pos = 0;
        build_epoch(b, b->st.epoch);
    }
    int i = (int)b->st.pos++;
    int k = b->batch_bucket[i], s = b->batch_start[i];
    int n = b->bucket_len[k] - s;
    if (n > b->batch_size) n = b->batch_size;
    out->n = n;
    out->bucket = k;
    out->reso = b->ds->buckets.used[k];
    dl_caption_cfg cc = aug->caption;
    cc.epoch = b->st.epoch + 1; /* sd-scripts counts epochs from 1 */
    batch_reserve_captions(out, b->batch_size, dl_caption_full_len(&cc, b->max_caption));
    for (int j = 0; j < n; j++) {
        int item = b->bucket_items[k][s + j];
        const dl_dataset_item *it = &b->ds->items[item];
        out->items[j] = item;
        dl_caption_process_into(&cc, it->caption, &b->st.rng, &out->caption_work, out->captions[j], out->caption_slot);
        out->flip[j] = aug->flip_aug ? dl_rng_uniform(&b->st.rng) < 0.5 : 0;
        dl_prep_crop_offsets(it->resized, it->reso, aug->random_crop, &b->st.rng, &out->crop_x[j], &out->crop_y[j]);
    }
}

void dl_batcher_get_state(const dl_batcher *b, dl_batcher_state *s) {
    *s = b->st;
}

int dl_batcher_set_state(dl_batcher *b, const dl_batcher_state *s) {
    if (s->fingerprint != b->st.fingerprint)
        return dl_error_set("the saved data order belongs to another dataset, batch size or seed (fingerprint "
                            "%016llx, this run %016llx): resume with the same train_data_dir contents, "
                            "train_batch_size and seed", (unsigned long long)s->fingerprint,
                            (unsigned long long)b->st.fingerprint);
    if (s->epoch < 0 || s->pos < 0 || s->pos > b->n_batches)
        return dl_error_set("the saved data order is out of range (epoch %lld, batch %lld of %d)",
                            (long long)s->epoch, (long long)s->pos, b->n_batches);
    b->st = *s;
    build_epoch(b, s->epoch);
    return DL_OK;
}

void dl_batcher_state_pack(const dl_batcher_state *s, uint64_t w[DL_BATCHER_STATE_WORDS]) {
    w[0] = (uint64_t)s->epoch;
    w[1] = (uint64_t)s->pos;
    for (int i = 0; i < 4; i++) w[2 + i] = s->rng.s[i];
    w[6] = s->fingerprint;
}

void dl_batcher_state_unpack(dl_batcher_state *s, const uint64_t w[DL_BATCHER_STATE_WORDS]) {
    s->epoch = (int64_t)w[0];
    s->pos = (int64_t)w[1];
    for (int i = 0; i < 4; i++) s->rng.s[i] = w[2 + i];
    s->fingerprint = w[6];
}

int dl_batch_images(dl_pool *pool, const dl_dataset *ds, const dl_batch *bt, float *out) {
    size_t per = (size_t)bt->reso.w * bt->reso.h * 3;
    for (int j = 0; j < bt->n; j++) {
        const dl_dataset_item *it = &ds->items[bt->items[j]];
        DL_ASSERT(it->reso.w == bt->reso.w && it->reso.h == bt->reso.h);
        dl_image img = {0};
        if (dl_image_load(&img, it->image_path) != DL_OK) return DL_ERR;
        if (img.w != it->w || img.h != it->h) {
            dl_image_free(&img);
            return dl_error_set("%s: image changed since the dataset was scanned (%dx%d, was %dx%d)", it->image_path,
                                img.w, img.h, it->w, it->h);
        }
        dl_image_prep(pool, &img, it->resized, it->reso, bt->crop_x[j], bt->crop_y[j], bt->flip[j],
                      out + (size_t)j * per); // [H, W, 3]
        dl_image_free(&img);
    }
    return DL_OK;
}

void dl_batch_latents(const dl_latent_cache *c, const dl_dataset *ds, const dl_batch *bt, float *out) {
    size_t per = (size_t)(bt->reso.w / c->f) * (bt->reso.h / c->f) * c->C;
    for (int j = 0; j < bt->n; j++) {
        const dl_dataset_item *it = &ds->items[bt->items[j]];
        DL_ASSERT(it->reso.w == bt->reso.w && it->reso.h == bt->reso.h);
        memcpy(out + (size_t)j * per, dl_latent_cache_get(c, bt->items[j], bt->flip[j]), per * sizeof(float));
    }
}
