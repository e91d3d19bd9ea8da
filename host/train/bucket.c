/* bucket.c - aspect-ratio buckets and per-image bucket choice, as sd-scripts' BucketManager. */
#include "train/bucket.h"

#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dl_bucket_cfg_default(dl_bucket_cfg *c, int res_w, int res_h) {
    memset(c, 0, sizeof *c);
    c->enable = 1;
    c->res_w = res_w;
    c->res_h = res_h;
    c->min_reso = 256;
    c->max_reso = 1024;
    c->steps = 64;
    c->no_upscale = 0;
}

int dl_bucket_cfg_check(const dl_bucket_cfg *c) {
    if (c->res_w <= 0 || c->res_h <= 0 || c->res_w % 8 || c->res_h % 8)
        return dl_error_set("resolution %dx%d: width and height must be positive multiples of 8", c->res_w, c->res_h);
    if (!c->enable) return DL_OK;
    if (c->steps <= 0 || c->steps % 8)
        return dl_error_set("bucket_reso_steps %d: must be a positive multiple of 8", c->steps);
    if (c->no_upscale) return DL_OK; /* sd-scripts ignores min/max_bucket_reso then */
    if (c->min_reso <= 0 || c->min_reso > c->max_reso)
        return dl_error_set("min_bucket_reso %d: must be positive and <= max_bucket_reso %d", c->min_reso, c->max_reso);
    if (c->min_reso > c->res_w || c->min_reso > c->res_h)
        return dl_error_set("min_bucket_reso %d: must not exceed the resolution %dx%d", c->min_reso, c->res_w, c->res_h);
    if (c->max_reso < c->res_w || c->max_reso < c->res_h)
        return dl_error_set("max_bucket_reso %d: must be at least the resolution %dx%d", c->max_reso, c->res_w, c->res_h);
    return DL_OK;
}

static int reso_cmp(const void *a, const void *b) {
    const dl_reso *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? -1 : 1;
    return x->h < y->h ? -1 : (x->h > y->h);
}

/* Append r to the set (list, unique) of n entries; returns the new n. */
static int set_add(dl_reso *set, int n, dl_reso r) {
    for (int i = 0; i < n; i++)
        if (set[i].w == r.w && set[i].h == r.h) return n;
    set[n] = r;
    return n + 1;
}

int dl_bucket_resolutions(int max_w, int max_h, int min_size, int max_size, int divisible, dl_reso *out, int cap) {
    DL_ASSERT(max_w > 0 && max_h > 0 && divisible > 0 && min_size > 0 && max_size >= min_size);
    long long max_area = (long long)max_w * max_h;
    int n_cand = 2 * ((max_size - min_size) / divisible + 1) + 1;
    dl_reso *set = malloc((size_t)n_cand * sizeof *set);
    DL_ASSERT(set);
    int n = 0;
    /* width = int(math.sqrt(max_area) // divisible) * divisible */
    int sq = (int)floor(sqrt((double)max_area) / divisible) * divisible;
    n = set_add(set, n, (dl_reso){sq, sq});
    for (int w = min_size; w <= max_size; w += divisible) {
        long long h = (max_area / w) / divisible * divisible;
        if (h > max_size) h = max_size;
        if (h >= min_size) {
            n = set_add(set, n, (dl_reso){w, (int)h});
            n = set_add(set, n, (dl_reso){(int)h, w});
        }
    }
    qsort(set, (size_t)n, sizeof *set, reso_cmp);
    for (int i = 0; i < n && i < cap; i++) out[i] = set[i];
    free(set);
    return n;
}

int dl_bucket_mgr_init(dl_bucket_mgr *m, const dl_bucket_cfg *c) {
    memset(m, 0, sizeof *m);
    DL_TRY(dl_bucket_cfg_check(c));
    m->cfg = *c;
    if (!c->enable) {
        /* sd-scripts: BucketManager(False, (w, h), None, None, None) with predefined [(w, h)] */
        m->n_predef = 1;
        m->predef = malloc(sizeof *m->predef);
        DL_ASSERT(m->predef);
        m->predef[0] = (dl_reso){c->res_w, c->res_h};
        m->cfg.no_upscale = 0;
    } else if (!c->no_upscale) {
        int n = dl_bucket_resolutions(c->res_w, c->res_h, c->min_reso, c->max_reso, c->steps, NULL, 0);
        m->predef = malloc((size_t)n * sizeof *m->predef);
        DL_ASSERT(m->predef);
        m->n_predef = dl_bucket_resolutions(c->res_w, c->res_h, c->min_reso, c->max_reso, c->steps, m->predef, n);
    }
    if (m->n_predef) {
        m->predef_ar = malloc((size_t)m->n_predef * sizeof *m->predef_ar);
        DL_ASSERT(m->predef_ar);
        for (int i = 0; i < m->n_predef; i++) m->predef_ar[i] = (double)m->predef[i].w / m->predef[i].h;
    }
    return DL_OK;
}

void dl_bucket_mgr_free(dl_bucket_mgr *m) {
    free(m->predef);
    free(m->predef_ar);
    free(m->used);
    memset(m, 0, sizeof *m);
}

/* round_to_steps: int(x + 0.5) rounded down to a multiple of steps. */
static int round_to_steps(double x, int steps) {
    int v = (int)(x + 0.5);
    return v - v % steps;
}

static int add_used(dl_bucket_mgr *m, dl_reso r) {
    for (int i = 0; i < m->n_used; i++)
        if (m->used[i].w == r.w && m->used[i].h == r.h) return i;
    if (m->n_used == m->cap_used) {
        m->cap_used = m->cap_used ? 2 * m->cap_used : 16;
        m->used = realloc(m->used, (size_t)m->cap_used * sizeof *m->used);
        DL_ASSERT(m->used);
    }
    m->used[m->n_used] = r;
    return m->n_used++;
}

int dl_bucket_select(dl_bucket_mgr *m, int img_w, int img_h, dl_reso *bucket, dl_reso *resized) {
    DL_ASSERT(img_w > 0 && img_h > 0);
    double ar = (double)img_w / img_h;
    dl_reso reso, rs;
    if (!m->cfg.no_upscale) {
        int found = -1;
        for (int i = 0; i < m->n_predef; i++)
            if (m->predef[i].w == img_w && m->predef[i].h == img_h) found = i;
        if (found < 0) { /* np.abs(ar_errors).argmin(): the first minimum */
            double best = INFINITY;
            for (int i = 0; i < m->n_predef; i++) {
                double e = fabs(m->predef_ar[i] - ar);
                if (e < best) { best = e; found = i; }
            }
        }
        reso = m->predef[found];
        double ar_reso = (double)reso.w / reso.h;
        double scale = ar > ar_reso ? (double)reso.h / img_h : (double)reso.w / img_w;
        rs.w = (int)(img_w * scale + 0.5);
        rs.h = (int)(img_h * scale + 0.5);
    } else {
        int st = m->cfg.steps;
        double max_area = (double)m->cfg.res_w * m->cfg.res_h;
        if ((double)img_w * img_h > max_area) {
            double rw = sqrt(max_area * ar), rh = max_area / rw;
            int bw_r = round_to_steps(rw, st);
            int bh_in_wr = round_to_steps(bw_r / ar, st);
            int bh_r = round_to_steps(rh, st);
            int bw_in_hr = round_to_steps(bh_r * ar, st);
            /* sd-scripts divides by these; a degenerate aspect ratio gives 0 (inf/NaN there) */
            double ar_wr = bh_in_wr > 0 ? (double)bw_r / bh_in_wr : INFINITY;
            double ar_hr = bh_r > 0 ? (double)bw_in_hr / bh_r : INFINITY;
            if (fabs(ar_wr - ar) < fabs(ar_hr - ar)) {
                rs.w = bw_r;
                rs.h = (int)(bw_r / ar + 0.5);
            } else {
                rs.w = (int)(bh_r * ar + 0.5);
                rs.h = bh_r;
            }
        } else {
            rs.w = img_w;
            rs.h = img_h;
        }
        reso.w = rs.w - rs.w % st;
        reso.h = rs.h - rs.h % st;
        if (reso.w <= 0 || reso.h <= 0) return -1;
    }
    *bucket = reso;
    *resized = rs;
    return add_used(m, reso);
}
