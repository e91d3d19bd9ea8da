/* latent_cache.c - cached VAE latents in memory and on disk, keyed by image, bucket and VAE. */
#define _POSIX_C_SOURCE 200809L
#include "train/latent_cache.h"

#include "backend/backend.h"
#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "train/image_prep.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LATENT_CACHE_VERSION 1

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
static uint64_t fnv_i64(uint64_t h, int64_t v) {
    return fnv(h, &v, sizeof v);
}
#define FNV0 0xcbf29ce484222325ULL

/* The weights may be in a device backend's memory (hashed from a host copy then) and kept in
 * fp16 / bf16: hashed as their fp32 values, so the key does not depend on how they are held. */
static uint64_t hash_weights(const dl_ctx *ctx, uint64_t h, const void *w, dl_dtype dt, size_t n) {
    if (!w) return fnv_i64(h, -1);
    if (!dl_be(ctx)->device_memory && dt == DL_F32) return fnv(h, w, n * sizeof(float));
    const size_t es = dl_dtype_size(dt);
    float *c = malloc(n * sizeof *c + 1);
    void *raw = dt == DL_F32 ? (void *)c : malloc(n * es + 1);
    DL_ASSERTF(c && raw, "out of memory hashing %zu VAE weights", n);
    if (!dl_be(ctx)->device_memory) memcpy(raw, w, n * es);
    else if (dl_be_download(ctx, raw, w, n * es) != DL_OK) { /* the error surfaces at the next sync */
        h = fnv_i64(h, -2);
        goto done;
    }
    if (raw != c) dl_convert_to_f32(c, raw, dt, n);
    h = fnv(h, c, n * sizeof *c);
done:
    if (raw != c) free(raw);
    free(c);
    return h;
}

uint64_t dl_vae_fingerprint(const dl_ctx *ctx, const dl_vae *m) {
    const dl_vae_config *c = &m->cfg;
    uint64_t h = FNV0;
    int64_t ints[] = {c->in_channels, c->latent_channels, c->n_blocks, c->layers_per_block, c->norm_num_groups,
                      c->mid_attention, c->use_quant_conv};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) h = fnv_i64(h, ints[i]);
    for (int b = 0; b < c->n_blocks; b++) h = fnv_i64(h, c->block_out_channels[b]);
    const dl_conv *convs[] = {&m->enc.conv_in, &m->enc.conv_out};
    for (int i = 0; i < 2; i++)
        h = hash_weights(ctx, h, convs[i]->w, convs[i]->wdt,
                         (size_t)convs[i]->cout * convs[i]->k * convs[i]->k * convs[i]->cin);
    const dl_linear *lins[] = {&m->quant_conv, &m->enc.mid_attn.q, &m->enc.mid_attn.k, &m->enc.mid_attn.v,
                               &m->enc.mid_attn.out};
    for (int i = 0; i < 5; i++) h = hash_weights(ctx, h, lins[i]->w, lins[i]->wdt, (size_t)lins[i]->out * lins[i]->in);
    return h;
}

uint64_t dl_latent_cache_key(const dl_dataset_item *it, const dl_latent_cache_cfg *cfg) {
    uint64_t h = fnv_i64(FNV0, LATENT_CACHE_VERSION);
    h = fnv(h, it->image_path, strlen(it->image_path) + 1);
    int64_t v[] = {it->file_size, it->mtime_ns, it->w, it->h, it->reso.w, it->reso.h, it->resized.w, it->resized.h,
                   cfg->latent_channels, cfg->downscale};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) h = fnv_i64(h, v[i]);
    int x0, y0;
    dl_prep_crop_offsets(it->resized, it->reso, 0, NULL, &x0, &y0); /* centre crop */
    h = fnv_i64(h, x0);
    h = fnv_i64(h, y0);
    return fnv(h, &cfg->vae_fingerprint, sizeof cfg->vae_fingerprint);
}

char *dl_latent_cache_path(const dl_latent_cache_cfg *cfg, const dl_dataset_item *it) {
    const char *base = strrchr(it->image_path, '/');
    base = base ? base + 1 : it->image_path;
    const char *dot = strrchr(base, '.');
    int stem = dot ? (int)(dot - base) : (int)strlen(base);
    uint64_t ph = fnv(FNV0, it->image_path, strlen(it->image_path));
    size_t n = strlen(cfg->disk_dir) + (size_t)stem + 64;
    char *p = malloc(n);
    DL_ASSERT(p);
    snprintf(p, n, "%s/%.*s_%016" PRIx64 ".safetensors", cfg->disk_dir, stem, base, ph);
    return p;
}

/* Try the disk entry: 1 when valid (latents copied into lat / latf), 0 when absent, -1 when
 * present but stale or unreadable. */
static int load_entry(const char *path, uint64_t key, int lh, int lw, int C, int need_flip, float *lat, float *latf) {
    struct stat sb;
    if (stat(path, &sb) != 0) return 0;
    dl_st_file f = {0};
    if (dl_st_open(&f, path) != DL_OK) {
        dl_error_clear();
        return -1;
    }
    int ok = 0;
    const char *k = dl_st_meta(&f, "danlu.latent_key");
    char want[32];
    snprintf(want, sizeof want, "%016" PRIx64, key);
    if (k && strcmp(k, want) == 0) {
        const char *names[2] = {"latents", "latents_flipped"};
        float *dst[2] = {lat, latf};
        ok = 1;
        for (int i = 0; i < 1 + need_flip && ok; i++) {
            const dl_st_tensor *t = dl_st_find(&f, names[i]);
            ok = t && t->ndim == 3 && t->shape[0] == lh && t->shape[1] == lw && t->shape[2] == C &&
                 dl_st_read_f32(&f, t, dst[i]) == DL_OK;
        }
        dl_error_clear();
    }
    dl_st_close(&f);
    return ok ? 1 : -1;
}

static int save_entry(const char *path, uint64_t key, const dl_dataset_item *it, int lh, int lw, int C,
                      const float *lat, const float *latf) {
    dl_st_entry e[2];
    int n = 0;
    e[n++] = (dl_st_entry){.name = "latents", .dtype = DL_F32, .ndim = 3, .shape = {lh, lw, C}, .data = lat};
    if (latf)
        e[n++] = (dl_st_entry){.name = "latents_flipped", .dtype = DL_F32, .ndim = 3, .shape = {lh, lw, C},
                               .data = latf};
    char ks[32], bucket[48];
    snprintf(ks, sizeof ks, "%016" PRIx64, key);
    snprintf(bucket, sizeof bucket, "%dx%d", it->reso.w, it->reso.h);
    const char *meta[] = {"danlu.latent_key", ks, "danlu.image", it->image_path, "danlu.bucket", bucket};
    return dl_st_save(path, e, n, meta, 3);
}

static int ensure_dir(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) return dl_error_set("latent cache directory %s: not a directory", dir);
        return DL_OK;
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return dl_error_set("latent cache directory %s: cannot create: %s", dir, strerror(errno));
    return DL_OK;
}

/* Encode item (and its mirror into latf when not NULL). */
static int encode_item(const dl_dataset *ds, int i, const dl_latent_cache_cfg *cfg, dl_latent_encode_fn encode,
                       void *user, float *lat, float *latf) {
    const dl_dataset_item *it = &ds->items[i];
    dl_image img = {0};
    DL_TRY(dl_image_load(&img, it->image_path));
    int x0, y0;
    dl_prep_crop_offsets(it->resized, it->reso, 0, NULL, &x0, &y0);
    float *px = malloc((size_t)it->reso.w * it->reso.h * 3 * sizeof(float)); // [H, W, 3]
    DL_ASSERT(px);
    int rc = DL_OK;
    for (int flip = 0; flip <= (latf != NULL) && rc == DL_OK; flip++) {
        dl_image_prep(cfg->pool, &img, it->resized, it->reso, x0, y0, flip, px);
        rc = encode(user, i, it->reso.h, it->reso.w, px, flip ? latf : lat);
        if (rc != DL_OK) dl_error_prefix("encoding %s: ", it->image_path);
    }
    free(px);
    dl_image_free(&img);
    return rc;
}

int dl_latent_cache_build(dl_latent_cache *c, const dl_dataset *ds, const dl_latent_cache_cfg *cfg,
                          dl_latent_encode_fn encode, void *user) {
    memset(c, 0, sizeof *c);
    if (cfg->random_crop)
        return dl_error_set("cache_latents cannot be used with random_crop (the crop would be frozen into the "
                            "cache; sd-scripts refuses it too): turn one of them off");
    DL_ASSERT(cfg->latent_channels > 0 && cfg->downscale > 0 && encode);
    if (cfg->disk_dir) DL_TRY(ensure_dir(cfg->disk_dir));
    c->n_items = ds->n_items;
    c->C = cfg->latent_channels;
    c->f = cfg->downscale;
    c->has_flipped = cfg->flip_aug != 0;
    c->lat = calloc((size_t)ds->n_items, sizeof *c->lat);
    DL_ASSERT(c->lat);
    if (c->has_flipped) {
        c->lat_flipped = calloc((size_t)ds->n_items, sizeof *c->lat_flipped);
        DL_ASSERT(c->lat_flipped);
    }
    for (int i = 0; i < ds->n_items; i++) {
        const dl_dataset_item *it = &ds->items[i];
        if (it->reso.w % c->f || it->reso.h % c->f) {
            dl_error_set("%s: bucket %dx%d is not divisible by the VAE factor %d", it->image_path, it->reso.w,
                         it->reso.h, c->f);
            dl_latent_cache_free(c);
            return DL_ERR;
        }
        int lh = it->reso.h / c->f, lw = it->reso.w / c->f;
        size_t n = (size_t)lh * lw * c->C;
        c->lat[i] = malloc(n * sizeof(float));
        DL_ASSERT(c->lat[i]);
        if (c->has_flipped) {
            c->lat_flipped[i] = malloc(n * sizeof(float));
            DL_ASSERT(c->lat_flipped[i]);
        }
        float *latf = c->has_flipped ? c->lat_flipped[i] : NULL;
        uint64_t key = dl_latent_cache_key(it, cfg);
        char *path = cfg->disk_dir ? dl_latent_cache_path(cfg, it) : NULL;
        int st = path ? load_entry(path, key, lh, lw, c->C, c->has_flipped, c->lat[i], latf) : 0;
        if (st == 1) {
            c->hits++;
            free(path);
            continue;
        }
        if (st < 0) {
            c->invalidated++;
            if (cfg->log) fprintf(cfg->log, "latent cache: %s is stale, recomputing\n", path);
        } else {
            c->misses++;
        }
        int rc = encode_item(ds, i, cfg, encode, user, c->lat[i], latf);
        if (rc == DL_OK && path) rc = save_entry(path, key, it, lh, lw, c->C, c->lat[i], latf);
        free(path);
        if (rc != DL_OK) {
            dl_latent_cache_free(c);
            return DL_ERR;
        }
    }
    if (cfg->log)
        fprintf(cfg->log, "latent cache: %d images, %d reused from disk, %d computed, %d stale recomputed\n",
                ds->n_items, c->hits, c->misses, c->invalidated);
    return DL_OK;
}

const float *dl_latent_cache_get(const dl_latent_cache *c, int item, int flip) {
    DL_ASSERT(item >= 0 && item < c->n_items);
    DL_ASSERTF(!flip || c->has_flipped, "flipped latents requested but the cache was built without flip_aug");
    return flip ? c->lat_flipped[item] : c->lat[item];
}

void dl_latent_cache_free(dl_latent_cache *c) {
    for (int i = 0; i < c->n_items; i++) {
        if (c->lat) free(c->lat[i]);
        if (c->lat_flipped) free(c->lat_flipped[i]);
    }
    free(c->lat);
    free(c->lat_flipped);
    memset(c, 0, sizeof *c);
}
