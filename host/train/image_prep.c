/* image_prep.c - separable area / bilinear resampling, crop, flip and normalisation of
 * training images (see image_prep.h for the conventions). */
#include "train/image_prep.h"

#include "core/arena.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dl_prep_crop_offsets(dl_reso resized, dl_reso bucket, int random_crop, dl_rng *rng, int *x0, int *y0) {
    DL_ASSERT(resized.w >= bucket.w && resized.h >= bucket.h);
    int tw = resized.w - bucket.w, th = resized.h - bucket.h;
    if (random_crop) {
        DL_ASSERT(rng);
        *x0 = tw > 0 ? (int)dl_rng_below(rng, (uint64_t)tw + 1) : 0;
        *y0 = th > 0 ? (int)dl_rng_below(rng, (uint64_t)th + 1) : 0;
    } else {
        *x0 = tw / 2;
        *y0 = th / 2;
    }
}

/* Per output index: taps [first, first + n) of the source axis with weights. */
typedef struct taps {
    int *first, *n;   /* [dn] */
    float *w;         /* [dn * maxn] */
    int maxn;
} taps;

/* Weights of output positions [o0, o0 + dn) of an axis resized from sn to rn samples. */
static int taps_maxn(int sn, int rn) {
    return rn < sn ? (int)ceil((double)sn / rn) + 2 : 2;
}

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

/* Bytes of the taps of dn outputs (first, n, weights). */
static size_t taps_bytes(int sn, int rn, int dn) {
    return 2 * align64((size_t)dn * sizeof(int)) + align64((size_t)dn * taps_maxn(sn, rn) * sizeof(float));
}

/* Taps carved from *mem (advanced past them; taps_bytes long). */
static void make_taps(taps *t, int sn, int rn, int o0, int dn, uint8_t **mem) {
    double scale = (double)sn / rn;
    t->maxn = taps_maxn(sn, rn);
    t->first = (int *)*mem;
    *mem += align64((size_t)dn * sizeof(int));
    t->n = (int *)*mem;
    *mem += align64((size_t)dn * sizeof(int));
    t->w = (float *)*mem;
    *mem += align64((size_t)dn * t->maxn * sizeof(float));
    memset(t->w, 0, (size_t)dn * t->maxn * sizeof(float));
    for (int i = 0; i < dn; i++) {
        int o = o0 + i;
        float *w = t->w + (size_t)i * t->maxn;
        if (rn == sn) {
            t->first[i] = o;
            t->n[i] = 1;
            w[0] = 1.0f;
        } else if (rn < sn) {
            /* area: the source interval [o*scale, (o+1)*scale) with its overlaps as weights */
            double a = o * scale, b = a + scale;
            if (b > sn) b = sn;
            double cell = b - a;
            int s0 = (int)floor(a), s1 = (int)ceil(b);
            if (s1 > sn) s1 = sn;
            int k = 0;
            for (int s = s0; s < s1; s++) {
                double lo = s > a ? s : a, hi = s + 1 < b ? s + 1 : b;
                double ov = hi - lo;
                if (ov <= 1e-3 && (s == s0 || s == s1 - 1)) continue; /* cv2 drops slivers */
                if (k == 0) t->first[i] = s;
                w[k++] = (float)(ov / cell);
            }
            DL_ASSERT(k >= 1 && k <= t->maxn);
            /* renormalise after dropped slivers */
            float sum = 0;
            for (int j = 0; j < k; j++) sum += w[j];
            for (int j = 0; j < k; j++) w[j] /= sum;
            t->n[i] = k;
        } else {
            /* bilinear, half-pixel centres, clamped at the edges */
            double f = (o + 0.5) * scale - 0.5;
            int s = (int)floor(f);
            double fr = f - s;
            if (s < 0) { s = 0; fr = 0; }
            if (s >= sn - 1) { s = sn - 1; fr = 0; }
            t->first[i] = s;
            if (fr > 0) {
                t->n[i] = 2;
                w[0] = (float)(1 - fr);
                w[1] = (float)fr;
            } else {
                t->n[i] = 1;
                w[0] = 1.0f;
            }
        }
    }
}

typedef struct resize_job {
    const dl_image *src;
    taps tx, ty;
    int ow;
    uint8_t *dst;
    float *rows;      /* [nthreads, 2, ow * 3] each thread's filtered row and accumulator */
} resize_job;

/* Output rows [begin, end): vertical taps over source rows, each filtered horizontally. */
static void resize_rows(void *arg, int64_t begin, int64_t end, int tid) {
    resize_job *j = arg;
    int sw = j->src->w, ow = j->ow;
    float *row = j->rows + (size_t)tid * 2 * ow * 3; /* one horizontally filtered row */
    float *acc = row + (size_t)ow * 3;
    for (int64_t y = begin; y < end; y++) {
        memset(acc, 0, (size_t)ow * 3 * sizeof(float));
        const float *wy = j->ty.w + (size_t)y * j->ty.maxn;
        for (int k = 0; k < j->ty.n[y]; k++) {
            const uint8_t *s = j->src->data + (size_t)(j->ty.first[y] + k) * sw * 3;
            for (int x = 0; x < ow; x++) {
                const float *wx = j->tx.w + (size_t)x * j->tx.maxn;
                const uint8_t *p = s + (size_t)j->tx.first[x] * 3;
                float r = 0, g = 0, b = 0;
                for (int q = 0; q < j->tx.n[x]; q++) {
                    r += wx[q] * p[3 * q];
                    g += wx[q] * p[3 * q + 1];
                    b += wx[q] * p[3 * q + 2];
                }
                row[3 * x] = r;
                row[3 * x + 1] = g;
                row[3 * x + 2] = b;
            }
            for (int i = 0; i < ow * 3; i++) acc[i] += wy[k] * row[i];
        }
        uint8_t *d = j->dst + (size_t)y * ow * 3;
        for (int i = 0; i < ow * 3; i++) {
            float v = floorf(acc[i] + 0.5f); /* half up, as cv2's integer paths round */
            d[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

void dl_prep_work_free(dl_prep_work *w) {
    free(w->mem);
    memset(w, 0, sizeof *w);
}

/* Bytes of the resize's working memory (without the 8-bit crop). */
static size_t resize_bytes(dl_pool *pool, const dl_image *src, dl_reso resized, dl_reso out) {
    return taps_bytes(src->w, resized.w, out.w) + taps_bytes(src->h, resized.h, out.h) +
           (size_t)dl_pool_nthreads(pool) * 2 * out.w * 3 * sizeof(float);
}

/* w->mem of at least n bytes (grow-only). */
static void work_reserve(dl_prep_work *w, size_t n) {
    DL_ASSERTF(dl_buf_reserve(&w->mem, &w->cap, n, "image resize") == DL_OK, "%s", dl_error_msg());
}

static void resize_crop(dl_pool *pool, uint8_t *mem, const dl_image *src, dl_reso resized, int x0, int y0,
                        dl_reso out, uint8_t *dst) {
    DL_ASSERT(src && src->data && src->w > 0 && src->h > 0);
    DL_ASSERT(resized.w > 0 && resized.h > 0 && out.w > 0 && out.h > 0);
    DL_ASSERT(x0 >= 0 && y0 >= 0 && x0 + out.w <= resized.w && y0 + out.h <= resized.h);
    resize_job j = {.src = src, .ow = out.w, .dst = dst};
    make_taps(&j.tx, src->w, resized.w, x0, out.w, &mem);
    make_taps(&j.ty, src->h, resized.h, y0, out.h, &mem);
    j.rows = (float *)mem; // [nthreads, 2, ow * 3]
    if (pool)
        dl_parallel_for(pool, out.h, 8, resize_rows, &j);
    else
        resize_rows(&j, 0, out.h, 0);
}

void dl_image_resize_crop_u8(dl_pool *pool, const dl_image *src, dl_reso resized, int x0, int y0, dl_reso out,
                             uint8_t *dst) {
    DL_ASSERT(out.w > 0 && out.h > 0 && src && src->w > 0 && src->h > 0 && resized.w > 0 && resized.h > 0);
    dl_prep_work w = {0};
    work_reserve(&w, resize_bytes(pool, src, resized, out));
    resize_crop(pool, w.mem, src, resized, x0, y0, out, dst);
    dl_prep_work_free(&w);
}

void dl_image_prep_w(dl_pool *pool, dl_prep_work *work, const dl_image *src, dl_reso resized, dl_reso bucket, int x0,
                     int y0, int flip, float *out) {
    DL_ASSERT(bucket.w > 0 && bucket.h > 0 && src && src->w > 0 && src->h > 0 && resized.w > 0 && resized.h > 0);
    dl_prep_work local = {0};
    dl_prep_work *w = work ? work : &local;
    size_t n = (size_t)bucket.w * bucket.h * 3, rb = align64(resize_bytes(pool, src, resized, bucket));
    work_reserve(w, rb + n);
    uint8_t *u8 = (uint8_t *)w->mem + rb;
    resize_crop(pool, w->mem, src, resized, x0, y0, bucket, u8); // [bh, bw, 3]
    for (int y = 0; y < bucket.h; y++)
        for (int x = 0; x < bucket.w; x++) {
            int sx = flip ? bucket.w - 1 - x : x;
            const uint8_t *p = u8 + ((size_t)y * bucket.w + sx) * 3;
            float *o = out + ((size_t)y * bucket.w + x) * 3;
            for (int c = 0; c < 3; c++) o[c] = p[c] / 127.5f - 1.0f;
        }
    if (!work) dl_prep_work_free(&local);
}

void dl_image_prep(dl_pool *pool, const dl_image *src, dl_reso resized, dl_reso bucket, int x0, int y0, int flip,
                   float *out) {
    dl_image_prep_w(pool, NULL, src, resized, bucket, x0, y0, flip, out);
}
