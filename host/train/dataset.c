/* dataset.c - scanning a train_data_dir: N_name subsets, images, captions, buckets, and the
 * warnings and errors for bad input (rules in dataset.h). */
#define _POSIX_C_SOURCE 200809L
#include "train/dataset.h"

#include "core/error.h"
#include "io/image.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static char *xstrdup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    DL_ASSERT(d);
    memcpy(d, s, n + 1);
    return d;
}

static char *path_join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    int slash = na > 0 && a[na - 1] != '/';
    char *p = malloc(na + nb + 2);
    DL_ASSERT(p);
    memcpy(p, a, na);
    if (slash) p[na] = '/';
    memcpy(p + na + slash, b, nb + 1);
    return p;
}

static void warnf(dl_dataset *ds, FILE *f, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void warnf(dl_dataset *ds, FILE *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = malloc((size_t)n + 1);
    DL_ASSERT(s);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    ds->warnings = realloc(ds->warnings, (size_t)(ds->n_warnings + 1) * sizeof *ds->warnings);
    DL_ASSERT(ds->warnings);
    ds->warnings[ds->n_warnings++] = s;
    if (f) fprintf(f, "warning: %s\n", s);
}

int dl_utf8_valid(const uint8_t *s, size_t n, size_t *bad_offset) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else goto bad;
        if (i + len > n) goto bad;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) goto bad;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) goto bad;
        i += len;
    }
    return 1;
bad:
    if (bad_offset) *bad_offset = i;
    return 0;
}

static int is_image_name(const char *name) {
    static const char *exts[] = {".png", ".jpg", ".jpeg", ".webp", ".bmp"};
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name) return 0;
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
        if (strcasecmp(dot, exts[i]) == 0) return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names in dir (without "." entries and hidden files); want_dirs selects folders or
 * regular files. DL_ERR names dir when it cannot be read. */
static int list_dir(const char *dir, int want_dirs, char ***names, int *n) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return dl_error_set("%s: cannot read directory: %s", dir, strerror(errno));
    struct dirent *e;
    int cap = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *p = path_join(dir, e->d_name);
        struct stat st;
        int ok = stat(p, &st) == 0 && (want_dirs ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode));
        free(p);
        if (!ok) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            *names = realloc(*names, (size_t)cap * sizeof **names);
            DL_ASSERT(*names);
        }
        (*names)[(*n)++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (*n) qsort(*names, (size_t)*n, sizeof **names, cmp_str);
    return DL_OK;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* Read a caption file: first line, stripped, BOM removed. *out NULL when the file does not
 * exist. DL_ERR (naming the file) when unreadable, empty or not UTF-8. */
static int read_caption_file(const char *path, char **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return DL_OK;
        return dl_error_set("%s: cannot read caption file: %s", path, strerror(errno));
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    DL_ASSERT(buf);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            DL_ASSERT(buf);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return dl_error_set("%s: read error in caption file", path);
    }
    size_t bad;
    if (!dl_utf8_valid(buf, n, &bad)) {
        unsigned byte = buf[bad];
        free(buf);
        return dl_error_set("%s: caption file is not UTF-8 (invalid byte 0x%02x at offset %zu); re-save it as UTF-8",
                            path, byte, bad);
    }
    size_t s = 0;
    if (n >= 3 && buf[0] == 0xEF && buf[1] == 0xBB && buf[2] == 0xBF) s = 3;
    if (n == s) {
        free(buf);
        return dl_error_set("%s: caption file is empty", path);
    }
    size_t e = s;
    while (e < n && buf[e] != '\n' && buf[e] != '\r') e++; /* first line */
    while (s < e && isspace(buf[s])) s++;
    while (e > s && isspace(buf[e - 1])) e--;
    char *c = malloc(e - s + 1);
    DL_ASSERT(c);
    memcpy(c, buf + s, e - s);
    c[e - s] = 0;
    free(buf);
    *out = c;
    return DL_OK;
}

/* The caption of image path: from <stem><ext>, else the alternative extension. */
static int find_caption(const char *img_path, const char *ext, char **out) {
    const char *dot = strrchr(img_path, '.');
    size_t stem = (size_t)(dot - img_path);
    const char *alt = NULL;
    if (strcmp(ext, ".txt") == 0) alt = ".caption";
    else if (strcmp(ext, ".caption") == 0) alt = ".txt";
    const char *exts[2] = {ext, alt};
    for (int k = 0; k < 2 && exts[k]; k++) {
        char *p = malloc(stem + strlen(exts[k]) + 1);
        DL_ASSERT(p);
        memcpy(p, img_path, stem);
        strcpy(p + stem, exts[k]);
        int rc = read_caption_file(p, out);
        free(p);
        DL_TRY(rc);
        if (*out) return DL_OK;
    }
    return DL_OK;
}

/* sd-scripts' extract_dreambooth_params: int(name.split("_")[0]) and the rest as class tokens.
 * Returns 0 when the first token is not an integer. */
static int parse_repeats(const char *name, long *repeats, char **class_tokens) {
    const char *us = strchr(name, '_');
    size_t n = us ? (size_t)(us - name) : strlen(name);
    char tok[32];
    if (n == 0 || n >= sizeof tok) return 0;
    memcpy(tok, name, n);
    tok[n] = 0;
    char *end;
    errno = 0;
    long v = strtol(tok, &end, 10);
    if (*end || errno || !(isdigit((unsigned char)tok[0]) || tok[0] == '+' || tok[0] == '-')) return 0;
    *repeats = v;
    *class_tokens = xstrdup(us ? us + 1 : "");
    return 1;
}

typedef struct scan_state {
    dl_dataset *ds;
    const dl_dataset_cfg *cfg;
    const char *ext;
    int cap_items;
} scan_state;

/* Add the images of folder dir as subset si. */
static int scan_folder(scan_state *st, int si, char **files, int n_files) {
    dl_dataset *ds = st->ds;
    dl_dataset_subset *sub = &ds->subsets[si];
    for (int i = 0; i < n_files; i++) {
        if (!is_image_name(files[i])) continue;
        char *path = path_join(sub->dir, files[i]);
        struct stat sb;
        dl_image img = {0};
        if (stat(path, &sb) != 0 || dl_image_load(&img, path) != DL_OK) {
            const char *why = dl_error_msg();
            warnf(ds, st->cfg->warn, "skipping image %s: %s", path, *why ? why : strerror(errno));
            dl_error_clear();
            ds->n_skipped++;
            free(path);
            continue;
        }
        int w = img.w, h = img.h;
        dl_image_free(&img);
        char *caption = NULL;
        if (find_caption(path, st->ext, &caption) != DL_OK) {
            free(path);
            return DL_ERR;
        }
        if (!caption) {
            if (!*sub->class_tokens)
                warnf(ds, st->cfg->warn, "%s: neither a caption file (%s) nor class tokens in the folder name; "
                      "using an empty caption", path, st->ext);
            caption = xstrdup(sub->class_tokens);
        }
        dl_reso reso, resized;
        int b = dl_bucket_select(&ds->buckets, w, h, &reso, &resized);
        if (b < 0) {
            warnf(ds, st->cfg->warn, "skipping image %s: %dx%d is smaller than bucket_reso_steps %d, so it has no "
                  "bucket with bucket_no_upscale", path, w, h, st->cfg->bucket.steps);
            ds->n_skipped++;
            free(caption);
            free(path);
            continue;
        }
        if ((int64_t)resized.w * 10 > (int64_t)w * 11) /* more than 10%: a visible loss of sharpness */
            warnf(ds, st->cfg->warn, "image %s (%dx%d) is smaller than its bucket %dx%d: it is upscaled %.2fx to %dx%d",
                  path, w, h, reso.w, reso.h, (double)resized.w / w, resized.w, resized.h);
        if (ds->n_items == st->cap_items) {
            st->cap_items = st->cap_items ? 2 * st->cap_items : 64;
            ds->items = realloc(ds->items, (size_t)st->cap_items * sizeof *ds->items);
            DL_ASSERT(ds->items);
        }
        dl_dataset_item *it = &ds->items[ds->n_items++];
        memset(it, 0, sizeof *it);
        it->image_path = path;
        it->caption = caption;
        it->subset = si;
        it->num_repeats = sub->num_repeats;
        it->w = w;
        it->h = h;
        it->bucket = b;
        it->reso = reso;
        it->resized = resized;
        it->file_size = (int64_t)sb.st_size;
        it->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
        sub->n_images++;
        ds->num_train_images += sub->num_repeats;
    }
    return DL_OK;
}

static void add_subset(dl_dataset *ds, char *dir, int repeats, char *class_tokens) {
    ds->subsets = realloc(ds->subsets, (size_t)(ds->n_subsets + 1) * sizeof *ds->subsets);
    DL_ASSERT(ds->subsets);
    ds->subsets[ds->n_subsets++] = (dl_dataset_subset){dir, repeats, class_tokens, 0};
}

/* Sort the used buckets by (w, h) as sd-scripts' BucketManager.sort and remap items. */
static void sort_buckets(dl_dataset *ds) {
    dl_bucket_mgr *m = &ds->buckets;
    int n = m->n_used;
    size_t nn = n > 0 ? (size_t)n : 1;
    int *order = malloc(nn * sizeof *order), *remap = malloc(nn * sizeof *remap);
    DL_ASSERT(order && remap);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort: few buckets */
        for (int j = i; j > 0; j--) {
            dl_reso a = m->used[order[j - 1]], b = m->used[order[j]];
            if (a.w < b.w || (a.w == b.w && a.h <= b.h)) break;
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    dl_reso *sorted = malloc(nn * sizeof *sorted);
    DL_ASSERT(sorted);
    for (int i = 0; i < n; i++) {
        sorted[i] = m->used[order[i]];
        remap[order[i]] = i;
    }
    if (n > 0) memcpy(m->used, sorted, (size_t)n * sizeof *sorted);
    for (int i = 0; i < ds->n_items; i++) ds->items[i].bucket = remap[ds->items[i].bucket];
    free(sorted);
    free(order);
    free(remap);
}

int dl_dataset_scan(dl_dataset *ds, const dl_dataset_cfg *cfg) {
    memset(ds, 0, sizeof *ds);
    if (!cfg->train_data_dir || !*cfg->train_data_dir) return dl_error_set("train_data_dir is not set");
    char dir[4096];
    if (strlen(cfg->train_data_dir) >= sizeof dir) return dl_error_set("train_data_dir: path too long");
    strcpy(dir, cfg->train_data_dir);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = 0; /* "data/" -> "data" */
    struct stat sb;
    if (stat(dir, &sb) != 0) return dl_error_set("train_data_dir %s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return dl_error_set("train_data_dir %s: not a directory", dir);
    const char *ext = cfg->caption_extension && *cfg->caption_extension ? cfg->caption_extension : ".txt";
    if (ext[0] != '.') return dl_error_set("caption_extension \"%s\": must start with a dot (e.g. \".txt\")", ext);
    if (dl_bucket_mgr_init(&ds->buckets, &cfg->bucket) != DL_OK) return DL_ERR;
    ds->dir = xstrdup(dir);

    char **subdirs = NULL, **root_files = NULL;
    int n_sub = 0, n_root = 0;
    if (list_dir(dir, 1, &subdirs, &n_sub) != DL_OK || list_dir(dir, 0, &root_files, &n_root) != DL_OK) {
        free_names(subdirs, n_sub);
        dl_dataset_free(ds);
        return DL_ERR;
    }
    for (int i = 0; i < n_sub; i++) {
        long rep;
        char *cls = NULL;
        char *p = path_join(dir, subdirs[i]);
        if (!parse_repeats(subdirs[i], &rep, &cls)) {
            warnf(ds, cfg->warn, "ignoring directory %s: its name does not start with a repeat count "
                  "(name subfolders N_name, e.g. 10_mychar)", p);
            free(p);
        } else if (rep < 1 || rep > 1000000) {
            warnf(ds, cfg->warn, "ignoring directory %s: repeat count %ld is not in 1..1000000", p, rep);
            free(p);
            free(cls);
        } else {
            add_subset(ds, p, (int)rep, cls);
        }
    }
    int n_root_images = 0;
    for (int i = 0; i < n_root; i++) n_root_images += is_image_name(root_files[i]);
    int flat = ds->n_subsets == 0 && n_root_images > 0;
    if (!flat && n_root_images > 0)
        warnf(ds, cfg->warn, "%d image(s) directly in %s are ignored: only N_name subfolders are read when there "
              "are any (as sd-scripts)", n_root_images, dir);
    if (flat) add_subset(ds, xstrdup(dir), 1, xstrdup(""));

    scan_state st = {ds, cfg, ext, 0};
    int rc = DL_OK;
    for (int si = 0; si < ds->n_subsets && rc == DL_OK; si++) {
        char **files = NULL;
        int nf = 0;
        if (flat) {
            rc = scan_folder(&st, si, root_files, n_root);
        } else {
            rc = list_dir(ds->subsets[si].dir, 0, &files, &nf);
            if (rc == DL_OK) rc = scan_folder(&st, si, files, nf);
            free_names(files, nf);
        }
        if (rc == DL_OK && ds->subsets[si].n_images == 0)
            warnf(ds, cfg->warn, "no usable image in %s", ds->subsets[si].dir);
    }
    free_names(subdirs, n_sub);
    free_names(root_files, n_root);
    if (rc != DL_OK) {
        dl_dataset_free(ds);
        return DL_ERR;
    }
    if (ds->n_items == 0) {
        char msg[64] = "";
        if (ds->n_skipped) snprintf(msg, sizeof msg, " (%d skipped)", ds->n_skipped);
        dl_error_set("train_data_dir %s: no usable training images%s; it must hold subfolders named N_name "
                     "(N = repeats, e.g. 10_mychar) with .png/.jpg/.jpeg/.webp/.bmp images, or the images "
                     "themselves", dir, msg);
        dl_dataset_free(ds);
        return DL_ERR;
    }
    sort_buckets(ds);
    return DL_OK;
}

void dl_dataset_free(dl_dataset *ds) {
    for (int i = 0; i < ds->n_items; i++) {
        free(ds->items[i].image_path);
        free(ds->items[i].caption);
    }
    free(ds->items);
    for (int i = 0; i < ds->n_subsets; i++) {
        free(ds->subsets[i].dir);
        free(ds->subsets[i].class_tokens);
    }
    free(ds->subsets);
    for (int i = 0; i < ds->n_warnings; i++) free(ds->warnings[i]);
    free(ds->warnings);
    dl_bucket_mgr_free(&ds->buckets);
    free(ds->dir);
    memset(ds, 0, sizeof *ds);
}

void dl_dataset_bucket_counts(const dl_dataset *ds, int64_t *counts) {
    for (int b = 0; b < ds->buckets.n_used; b++) counts[b] = 0;
    for (int i = 0; i < ds->n_items; i++) counts[ds->items[i].bucket] += ds->items[i].num_repeats;
}

void dl_dataset_print_summary(const dl_dataset *ds, FILE *f) {
    fprintf(f, "dataset %s: %d images, %lld with repeats, %d skipped\n", ds->dir, ds->n_items,
            (long long)ds->num_train_images, ds->n_skipped);
    for (int s = 0; s < ds->n_subsets; s++)
        fprintf(f, "  %s: %d images x %d repeats, class tokens \"%s\"\n", ds->subsets[s].dir,
                ds->subsets[s].n_images, ds->subsets[s].num_repeats, ds->subsets[s].class_tokens);
    int nb = ds->buckets.n_used;
    int64_t *counts = malloc((nb > 0 ? (size_t)nb : 1) * sizeof *counts);
    DL_ASSERT(counts);
    dl_dataset_bucket_counts(ds, counts);
    for (int b = 0; b < nb; b++)
        fprintf(f, "  bucket %d: resolution (%d, %d), count: %lld\n", b, ds->buckets.used[b].w,
                ds->buckets.used[b].h, (long long)counts[b]);
    free(counts);
}

/* ---- sd-scripts metadata (json.dumps formatting) ---- */

typedef struct sbuf { char *s; size_t n, cap; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 256;
        b->s = realloc(b->s, b->cap);
        DL_ASSERT(b->s);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string as Python's json.dumps(ensure_ascii=True) writes it (s is valid UTF-8). */
static void sb_json(sbuf *b, const char *s, size_t n) {
    char tmp[16];
    sb_str(b, "\"");
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)s[i];
        if (c < 0x80) {
            if (c == '"') sb_str(b, "\\\"");
            else if (c == '\\') sb_str(b, "\\\\");
            else if (c == '\n') sb_str(b, "\\n");
            else if (c == '\r') sb_str(b, "\\r");
            else if (c == '\t') sb_str(b, "\\t");
            else if (c == '\b') sb_str(b, "\\b");
            else if (c == '\f') sb_str(b, "\\f");
            else if (c < 0x20 || c == 0x7f) {
                if (c == 0x7f) sb_put(b, (const char *)&c, 1);
                else { snprintf(tmp, sizeof tmp, "\\u%04x", c); sb_str(b, tmp); }
            } else sb_put(b, (const char *)&c, 1);
            i++;
            continue;
        }
        int len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        uint32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
        for (int k = 1; k < len && i + (size_t)k < n; k++) cp = (cp << 6) | ((uint8_t)s[i + (size_t)k] & 0x3F);
        i += (size_t)len;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
        }
        sb_str(b, tmp);
    }
    sb_str(b, "\"");
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

char *dl_dataset_tag_frequency_json(const dl_dataset *ds) {
    sbuf b = {0};
    sb_str(&b, "{");
    for (int si = 0; si < ds->n_subsets; si++) {
        /* tags in first-seen order with counts (insertion order, as a Python dict) */
        int nt = 0, cap = 0;
        char **tag = NULL;
        int *cnt = NULL;
        for (int i = 0; i < ds->n_items; i++) {
            if (ds->items[i].subset != si) continue;
            const char *c = ds->items[i].caption;
            for (;;) {
                const char *e = strchr(c, ',');
                size_t len = e ? (size_t)(e - c) : strlen(c);
                const char *a = c, *z = c + len;
                while (a < z && isspace((unsigned char)*a)) a++;
                while (z > a && isspace((unsigned char)z[-1])) z--;
                if (z > a) {
                    char *t = malloc((size_t)(z - a) + 1);
                    DL_ASSERT(t);
                    for (size_t k = 0; k < (size_t)(z - a); k++) t[k] = (char)tolower((unsigned char)a[k]);
                    t[z - a] = 0;
                    int f = -1;
                    for (int k = 0; k < nt && f < 0; k++)
                        if (!strcmp(tag[k], t)) f = k;
                    if (f >= 0) {
                        cnt[f]++;
                        free(t);
                    } else {
                        if (nt == cap) {
                            cap = cap ? 2 * cap : 32;
                            tag = realloc(tag, (size_t)cap * sizeof *tag);
                            cnt = realloc(cnt, (size_t)cap * sizeof *cnt);
                            DL_ASSERT(tag && cnt);
                        }
                        tag[nt] = t;
                        cnt[nt++] = 1;
                    }
                }
                if (!e) break;
                c = e + 1;
            }
        }
        if (si) sb_str(&b, ", ");
        const char *dn = base_name(ds->subsets[si].dir);
        sb_json(&b, dn, strlen(dn));
        sb_str(&b, ": {");
        for (int k = 0; k < nt; k++) {
            char num[32];
            if (k) sb_str(&b, ", ");
            sb_json(&b, tag[k], strlen(tag[k]));
            snprintf(num, sizeof num, ": %d", cnt[k]);
            sb_str(&b, num);
            free(tag[k]);
        }
        sb_str(&b, "}");
        free(tag);
        free(cnt);
    }
    sb_str(&b, "}");
    return b.s;
}

char *dl_dataset_dirs_json(const dl_dataset *ds) {
    sbuf b = {0};
    sb_str(&b, "{");
    for (int si = 0; si < ds->n_subsets; si++) {
        char num[96];
        if (si) sb_str(&b, ", ");
        const char *dn = base_name(ds->subsets[si].dir);
        sb_json(&b, dn, strlen(dn));
        snprintf(num, sizeof num, ": {\"n_repeats\": %d, \"img_count\": %d}", ds->subsets[si].num_repeats,
                 ds->subsets[si].n_images);
        sb_str(&b, num);
    }
    sb_str(&b, "}");
    return b.s;
}
