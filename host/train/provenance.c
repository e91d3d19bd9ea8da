/* provenance.c - the provenance record of a trained LoRA: hashing the dataset, writing the
 * record at each save, reading it back, matching a folder against it, retraining from it
 * (provenance.h, docs/provenance.md). */
#include "train/provenance.h"

#include "backend/backend.h"
#include "backend/code_path.h"
#include "core/error.h"
#include "core/sha256.h"
#include "core/threadpool.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "train/state.h"
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef DANLU_VERSION
#define DANLU_VERSION "unknown"
#endif

static int is_hex64(const char *s)
{
    return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

static void sha_hex_of(const void *data, size_t n, char hex[65])
{
    dl_sha256 s;
    uint8_t d[32];
    dl_sha256_init(&s);
    dl_sha256_update(&s, data, n);
    dl_sha256_final(&s, d);
    dl_sha256_hex(d, hex);
}

/* ---- hashing images ---- */
static int read_file(const char *path, uint8_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0) {
        fclose(f);
        return dl_error_set("%s: cannot stat: %s", path, strerror(errno));
    }
    size_t cap = (size_t)st.st_size + 1;
    uint8_t *b = malloc(cap);
    if (!b) { fclose(f); return dl_error_set("%s: out of memory", path); }
    size_t got = fread(b, 1, cap, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != (size_t)st.st_size) { /* changed while read, or a read error */
        free(b);
        return dl_error_set("%s: read error (or the file changed while it was read)", path);
    }
    *out = b;
    *n = got;
    return DL_OK;
}

int dl_prov_hash_image(dl_prov_item *it, const char *image_path, const char *caption)
{
    uint8_t *bytes;
    size_t n;
    DL_TRY(read_file(image_path, &bytes, &n));
    sha_hex_of(bytes, n, it->file);
    dl_image img;
    memset(&img, 0, sizeof img);
    int rc = dl_image_decode(&img, bytes, n, image_path);
    free(bytes);
    DL_TRY(rc);
    uint8_t hdr[8]; /* width and height, uint32 little-endian, then the pixels */
    for (int k = 0; k < 4; k++) {
        hdr[k] = (uint8_t)((uint32_t)img.w >> (8 * k));
        hdr[4 + k] = (uint8_t)((uint32_t)img.h >> (8 * k));
    }
    dl_sha256 s;
    uint8_t d[32];
    dl_sha256_init(&s);
    dl_sha256_update(&s, hdr, sizeof hdr);
    dl_sha256_update(&s, img.data, (size_t)img.w * img.h * 3);
    dl_sha256_final(&s, d);
    dl_sha256_hex(d, it->pixels);
    dl_image_free(&img);
    sha_hex_of(caption ? caption : "", caption ? strlen(caption) : 0, it->caption);
    return DL_OK;
}

static const char *rel_path(const dl_dataset *ds, const char *image_path)
{
    size_t n = strlen(ds->dir);
    if (strncmp(image_path, ds->dir, n) != 0) return image_path;
    return image_path[n] == '/' ? image_path + n + 1 : image_path + n;
}

typedef struct hash_job {
    const dl_dataset *ds;
    dl_prov_item *items;
    int *rc;
} hash_job;

static void hash_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    hash_job *j = arg;
    for (int64_t i = begin; i < end; i++)
        j->rc[i] = dl_prov_hash_image(&j->items[i], j->ds->items[i].image_path, j->ds->items[i].caption);
}

int dl_prov_hash_dataset(const dl_dataset *ds, struct dl_pool *pool, dl_prov_item **out)
{
    *out = NULL;
    int n = ds->n_items;
    dl_prov_item *items = calloc((size_t)(n > 0 ? n : 1), sizeof *items);
    int *rc = calloc((size_t)(n > 0 ? n : 1), sizeof *rc);
    if (!items || !rc) { free(items); free(rc); return dl_error_set("out of memory hashing the dataset"); }
    for (int i = 0; i < n; i++) {
        items[i].path = strdup(rel_path(ds, ds->items[i].image_path));
        if (!items[i].path) { dl_prov_items_free(items, n); free(rc); return dl_error_set("out of memory"); }
    }
    hash_job j = {ds, items, rc};
    if (pool) dl_parallel_for(pool, n, 1, hash_range, &j);
    else hash_range(&j, 0, n, 0);
    for (int i = 0; i < n; i++)
        if (rc[i] != DL_OK) { /* messages are per thread: hash it again here for the message */
            dl_prov_hash_image(&items[i], ds->items[i].image_path, ds->items[i].caption);
            dl_prov_items_free(items, n);
            free(rc);
            return dl_error_prefix("provenance: ");
        }
    free(rc);
    *out = items;
    return DL_OK;
}

void dl_prov_items_free(dl_prov_item *items, int n)
{
    if (!items) return;
    for (int i = 0; i < n; i++) free(items[i].path);
    free(items);
}

int dl_prov_scan(dl_dataset *ds, const char *dir, const dl_train_config *c, FILE *warn)
{
    /* the trainer scans with this too (trainer.c setup_data): the settings that decide which
     * images it uses */
    dl_dataset_cfg dc = {.train_data_dir = dir, .caption_extension = c->caption_extension, .warn = warn};
    dl_bucket_cfg_default(&dc.bucket, c->res_w, c->res_h);
    dc.bucket.enable = c->enable_bucket;
    dc.bucket.min_reso = c->min_bucket_reso;
    dc.bucket.max_reso = c->max_bucket_reso;
    dc.bucket.steps = c->bucket_reso_steps;
    dc.bucket.no_upscale = c->bucket_no_upscale;
    DL_TRY(dl_bucket_cfg_check(&dc.bucket));
    return dl_dataset_scan(ds, &dc);
}

int dl_prov_load_config(dl_train_config *c, const char *config_json, const char *label)
{
    dl_train_config_defaults_for(c, dl_train_config_json_is_finetune(config_json)); /* the command that wrote it */
    if (dl_train_config_apply_json_text(c, config_json, label) != DL_OK || dl_train_config_finish(c) != DL_OK) {
        dl_error_prefix("%s: danlu.config: ", label);
        dl_train_config_free(c);
        return DL_ERR;
    }
    return DL_OK;
}

/* ---- the writer ---- */
int dl_prov_writer_begin(dl_prov_writer *w, const dl_dataset *ds, const dl_checkpoint *ck, const dl_hash_cache *hc,
                         const char *config_json, uint64_t seed, int threads, const char *backend,
                         struct dl_pool *pool)
{
    memset(w, 0, sizeof *w);
    dl_prov_item *items;
    DL_TRY(dl_prov_hash_dataset(ds, pool, &items));
    char cfg_hex[65];
    sha_hex_of(config_json ? config_json : "", config_json ? strlen(config_json) : 0, cfg_hex);
    cJSON *r = cJSON_CreateObject();
    cJSON *arr = cJSON_CreateArray();
    int ok = r && arr;
    if (ok) {
        cJSON_AddNumberToObject(r, "format", DL_PROV_FORMAT);
        cJSON_AddStringToObject(r, "danlu", DANLU_VERSION);
        cJSON_AddStringToObject(r, "backend", backend ? backend : "cpu");
        cJSON_AddStringToObject(r, "isa", dl_code_path_isa(backend));
        cJSON_AddNumberToObject(r, "threads", threads);
        cJSON_AddNumberToObject(r, "seed", (double)seed);
        cJSON_AddNumberToObject(r, "steps", 0);
        cJSON_AddNumberToObject(r, "epoch", 0);
        cJSON_AddStringToObject(r, "config_sha256", cfg_hex);
        cJSON_AddItemToObject(r, "model", cJSON_CreateObject());
        for (int i = 0; i < ds->n_items && ok; i++) {
            const char *v[4] = {items[i].path, items[i].file, items[i].pixels, items[i].caption};
            cJSON *e = cJSON_CreateStringArray(v, 4);
            ok = e && cJSON_AddItemToArray(arr, e);
        }
        cJSON_AddItemToObject(r, "items", arr);
        arr = NULL;
    }
    cJSON_Delete(arr);
    dl_prov_items_free(items, ds->n_items);
    if (!ok) { cJSON_Delete(r); return dl_error_set("out of memory building the provenance record"); }
    w->root = r;
    w->single_file = ck->layout == DL_LAYOUT_SINGLE;
    if (!w->single_file)
        for (int i = 0; i < ck->n_files; i++) {
            w->job_name[w->n_jobs] = strdup(ck->file_label[i] ? ck->file_label[i] : "");
            if (!w->job_name[w->n_jobs]) break;
            if (dl_hash_job_start(&w->jobs[w->n_jobs], hc, ck->files[i].path, 0, UINT64_MAX) != DL_OK) {
                free(w->job_name[w->n_jobs]);
                w->job_name[w->n_jobs] = NULL;
                break;
            }
            w->n_jobs++;
        }
    else {
        const char *base = strrchr(ck->path, '/');
        w->job_name[0] = strdup(base && base[1] ? base + 1 : ck->path);
    }
    return DL_OK;
}

char *dl_prov_writer_json(dl_prov_writer *w, int step, int epoch, const char *model_sha256, FILE *log)
{
    cJSON *r = w->root;
    if (!r) return NULL;
    cJSON_ReplaceItemInObjectCaseSensitive(r, "steps", cJSON_CreateNumber(step));
    cJSON_ReplaceItemInObjectCaseSensitive(r, "epoch", cJSON_CreateNumber(epoch));
    cJSON *model = cJSON_GetObjectItemCaseSensitive(r, "model");
    if (w->single_file) {
        cJSON_DeleteItemFromObjectCaseSensitive(model, w->job_name[0] ? w->job_name[0] : "");
        if (is_hex64(model_sha256)) cJSON_AddStringToObject(model, w->job_name[0] ? w->job_name[0] : "", model_sha256);
        else cJSON_AddNullToObject(model, w->job_name[0] ? w->job_name[0] : "");
    } else if (!w->jobs_waited) {
        for (int i = 0; i < w->n_jobs; i++) {
            char hex[65];
            if (dl_hash_job_wait(&w->jobs[i], hex, NULL) == DL_OK) cJSON_AddStringToObject(model, w->job_name[i], hex);
            else {
                if (log) fprintf(log, "warning: provenance: no hash of the base model's %s: %s\n", w->job_name[i],
                                 dl_error_msg());
                cJSON_AddNullToObject(model, w->job_name[i]);
            }
        }
        w->jobs_waited = 1;
    }
    return cJSON_PrintUnformatted(r);
}

void dl_prov_writer_free(dl_prov_writer *w)
{
    if (!w->jobs_waited)
        for (int i = 0; i < w->n_jobs; i++) dl_hash_job_cancel(&w->jobs[i]);
    for (int i = 0; i < DL_PART_COUNT; i++) free(w->job_name[i]);
    cJSON_Delete(w->root);
    memset(w, 0, sizeof *w);
}

/* ---- reading ---- */
void dl_prov_free(dl_provenance *p)
{
    for (int i = 0; i < p->n_model; i++) free(p->model[i].name);
    free(p->model);
    dl_prov_items_free(p->items, p->n_items);
    memset(p, 0, sizeof *p);
}

static int get_str(const cJSON *o, const char *key, char *dst, size_t cap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap) return dl_error_set("record: \"%s\" missing or bad", key);
    strcpy(dst, v->valuestring);
    return DL_OK;
}

static int get_num(const cJSON *o, const char *key, double *dst)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0)
        return dl_error_set("record: \"%s\" missing or bad", key);
    *dst = v->valuedouble;
    return DL_OK;
}

int dl_prov_parse(dl_provenance *p, const char *json)
{
    memset(p, 0, sizeof *p);
    cJSON *r = cJSON_Parse(json);
    if (!cJSON_IsObject(r)) { cJSON_Delete(r); return dl_error_set("record: not a JSON object"); }
    double fmt = 0, thr = 0, seed = 0, steps = 0, epoch = 0;
    int rc = DL_ERR;
    if (get_num(r, "format", &fmt) != DL_OK) goto done;
    if (fmt != DL_PROV_FORMAT) {
        dl_error_set("record: format %g, this danlu reads format %d (a newer danlu wrote it?)", fmt, DL_PROV_FORMAT);
        goto done;
    }
    p->format = (int)fmt;
    if (get_str(r, "danlu", p->danlu, sizeof p->danlu) != DL_OK ||
        get_str(r, "backend", p->backend, sizeof p->backend) ||
        get_str(r, "isa", p->isa, sizeof p->isa) || get_num(r, "threads", &thr) || get_num(r, "seed", &seed) ||
        get_num(r, "steps", &steps) || get_num(r, "epoch", &epoch) ||
        get_str(r, "config_sha256", p->config_sha256, sizeof p->config_sha256))
        goto done;
    p->threads = (int)thr;
    p->seed = (uint64_t)seed;
    p->steps = (int)steps;
    p->epoch = (int)epoch;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(r, "model");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(r, "items");
    if (!cJSON_IsObject(model) || !cJSON_IsArray(items)) {
        dl_error_set("record: \"model\" or \"items\" missing");
        goto done;
    }
    int nm = cJSON_GetArraySize(model), ni = cJSON_GetArraySize(items);
    p->model = calloc((size_t)nm + 1, sizeof *p->model);
    p->items = calloc((size_t)ni + 1, sizeof *p->items);
    if (!p->model || !p->items) { dl_error_set("out of memory"); goto done; }
    const cJSON *e;
    cJSON_ArrayForEach(e, model) {
        dl_prov_model_file *m = &p->model[p->n_model];
        m->name = strdup(e->string ? e->string : "");
        if (!m->name) { dl_error_set("out of memory"); goto done; }
        p->n_model++;
        if (cJSON_IsString(e) && is_hex64(e->valuestring)) strcpy(m->sha256, e->valuestring);
        else if (!cJSON_IsNull(e)) { dl_error_set("record: model file %s: bad hash", m->name); goto done; }
    }
    cJSON_ArrayForEach(e, items) {
        const cJSON *f[4];
        for (int k = 0; k < 4; k++) f[k] = cJSON_GetArrayItem(e, k);
        if (cJSON_GetArraySize(e) != 4 || !cJSON_IsString(f[0]) || !is_hex64(cJSON_GetStringValue(f[1])) ||
            !is_hex64(cJSON_GetStringValue(f[2])) || !is_hex64(cJSON_GetStringValue(f[3]))) {
            dl_error_set("record: item %d is not [path, file, pixels, caption] hashes", p->n_items);
            goto done;
        }
        dl_prov_item *it = &p->items[p->n_items];
        it->path = strdup(f[0]->valuestring);
        if (!it->path) { dl_error_set("out of memory"); goto done; }
        p->n_items++;
        strcpy(it->file, f[1]->valuestring);
        strcpy(it->pixels, f[2]->valuestring);
        strcpy(it->caption, f[3]->valuestring);
    }
    rc = DL_OK;
done:
    cJSON_Delete(r);
    if (rc != DL_OK) dl_prov_free(p);
    return rc;
}

int dl_prov_read(dl_provenance *p, const char *path, char **config_json)
{
    memset(p, 0, sizeof *p);
    if (config_json) *config_json = NULL;
    dl_st_file f;
    if (dl_st_open(&f, path) != DL_OK) return DL_ERR;
    int rc = DL_ERR;
    const char *rec = dl_st_meta(&f, DL_PROV_KEY), *cfg = dl_st_meta(&f, "danlu.config");
    if (!rec) {
        dl_error_set("%s: no provenance record (metadata key %s): not trained by danlu, or by a danlu from before "
                     "records, or the metadata was stripped", path, DL_PROV_KEY);
        goto done;
    }
    if (dl_prov_parse(p, rec) != DL_OK) { dl_error_prefix("%s: ", path); goto done; }
    char hex[65];
    sha_hex_of(cfg ? cfg : "", cfg ? strlen(cfg) : 0, hex);
    if (!cfg || strcmp(hex, p->config_sha256) != 0) {
        dl_error_set("%s: the danlu.config metadata %s: it does not match the record's config_sha256", path,
                     cfg ? "was changed" : "is missing");
        dl_prov_free(p);
        goto done;
    }
    if (config_json && !(*config_json = strdup(cfg))) { dl_prov_free(p); dl_error_set("out of memory"); goto done; }
    rc = DL_OK;
done:
    dl_st_close(&f);
    return rc;
}

/* ---- matching a folder against the record ---- */
const char *dl_prov_status_text(dl_prov_status s)
{
    switch (s) {
    case DL_PROV_IN: return "in the training set";
    case DL_PROV_MOVED: return "in the training set, at another path";
    case DL_PROV_REENCODED: return "in the training set, re-encoded";
    case DL_PROV_NOT_IN: return "not in the training set";
    }
    return "?";
}

/* A recorded item whose digest (file or pixels) equals hex: at the same path when same_path,
 * else one not matched yet if there is one, else any. -1: none. */
static int find_record(const dl_provenance *rec, const int *used, int pixels, const char *hex, const char *path,
                       int same_path)
{
    int any = -1;
    for (int k = 0; k < rec->n_items; k++) {
        if (strcmp(pixels ? rec->items[k].pixels : rec->items[k].file, hex) != 0) continue;
        if (same_path) {
            if (!strcmp(rec->items[k].path, path)) return k;
            continue;
        }
        if (!used[k]) return k;
        if (any < 0) any = k;
    }
    return any;
}

int dl_prov_compare(const dl_provenance *rec, const dl_prov_item *items, int n, dl_prov_report *rep)
{
    memset(rep, 0, sizeof *rep);
    int *used = calloc((size_t)rec->n_items + 1, sizeof *used);
    rep->m = calloc((size_t)n + 1, sizeof *rep->m);
    rep->missing = calloc((size_t)rec->n_items + 1, sizeof *rep->missing);
    if (!used || !rep->m || !rep->missing) {
        free(used);
        dl_prov_report_free(rep);
        return dl_error_set("out of memory");
    }
    rep->n = n;
    for (int i = 0; i < n; i++) {
        rep->m[i].path = items[i].path;
        rep->m[i].record = -1;
        rep->m[i].status = DL_PROV_NOT_IN;
    }
    /* four passes over the whole folder, so that a copy or a renamed image cannot take the record
     * of an image that stands at its recorded path: bytes at the same path, bytes anywhere, pixels
     * at the same path, pixels anywhere */
    static const struct { int pixels, same_path; dl_prov_status status; } pass[4] = {
        {0, 1, DL_PROV_IN}, {0, 0, DL_PROV_MOVED}, {1, 1, DL_PROV_REENCODED}, {1, 0, DL_PROV_REENCODED}};
    for (int ps = 0; ps < 4; ps++)
        for (int i = 0; i < n; i++) {
            dl_prov_match *m = &rep->m[i];
            if (m->record >= 0) continue;
            int k = find_record(rec, used, pass[ps].pixels, pass[ps].pixels ? items[i].pixels : items[i].file,
                                items[i].path, pass[ps].same_path);
            if (k < 0) continue;
            used[k] = 1;
            m->record = k;
            m->status = pass[ps].status;
        }
    for (int i = 0; i < n; i++) {
        dl_prov_match *m = &rep->m[i];
        if (m->record >= 0) m->caption_changed = strcmp(rec->items[m->record].caption, items[i].caption) != 0;
        rep->n_in += m->status == DL_PROV_IN;
        rep->n_moved += m->status == DL_PROV_MOVED;
        rep->n_reencoded += m->status == DL_PROV_REENCODED;
        rep->n_not_in += m->status == DL_PROV_NOT_IN;
        rep->n_caption_changed += m->caption_changed;
    }
    for (int k = 0; k < rec->n_items; k++)
        if (!used[k]) rep->missing[rep->n_missing++] = k;
    free(used);
    rep->exact = rep->n_in == n && rep->n_caption_changed == 0 && rep->n_missing == 0;
    return DL_OK;
}

void dl_prov_report_free(dl_prov_report *rep)
{
    free(rep->m);
    free(rep->missing);
    memset(rep, 0, sizeof *rep);
}

/* ---- comparing two LoRA files ---- */
int dl_prov_compare_tensors(const char *a, const char *b, dl_prov_repro *r)
{
    dl_st_file fa, fb;
    if (dl_st_open(&fa, a) != DL_OK) return DL_ERR;
    if (dl_st_open(&fb, b) != DL_OK) { dl_st_close(&fa); return DL_ERR; }
    int rc = DL_ERR, same = fa.n_tensors == fb.n_tensors;
    double d2 = 0, r2 = 0;
    float *x = NULL, *y = NULL;
    r->n_tensors = fa.n_tensors;
    r->n_differ = 0;
    r->worst_rel = 0;
    r->worst[0] = 0;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        int shape_ok = tb && tb->ndim == ta->ndim && dl_st_numel(tb) == dl_st_numel(ta);
        for (int k = 0; shape_ok && k < ta->ndim; k++) shape_ok = ta->shape[k] == tb->shape[k];
        if (!shape_ok) {
            dl_error_set("%s: tensor %s is %s in %s", b, ta->name, tb ? "another shape" : "missing", b);
            goto done;
        }
        size_t na = (size_t)(ta->end - ta->begin);
        int bits = ta->dtype == tb->dtype && na == (size_t)(tb->end - tb->begin) && !memcmp(ta->data, tb->data, na);
        if (bits) { /* still counts in the norm of the reference */
            int64_t n = dl_st_numel(ta);
            free(x);
            x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
            if (!x) { dl_error_set("out of memory"); goto done; }
            if (dl_st_read_f32(&fa, ta, x) != DL_OK) goto done;
            for (int64_t k = 0; k < n; k++) r2 += (double)x[k] * x[k];
            continue;
        }
        same = 0;
        r->n_differ++;
        int64_t n = dl_st_numel(ta);
        free(x);
        free(y);
        x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
        y = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
        if (!x || !y) { dl_error_set("out of memory"); goto done; }
        if (dl_st_read_f32(&fa, ta, x) != DL_OK || dl_st_read_f32(&fb, tb, y) != DL_OK) goto done;
        double td = 0, tr = 0;
        for (int64_t k = 0; k < n; k++) {
            double dd = (double)y[k] - x[k];
            td += isfinite(dd) ? dd * dd : INFINITY;
            tr += (double)x[k] * x[k];
        }
        d2 += td;
        r2 += tr;
        double rel = tr > 0 ? sqrt(td / tr) : (td > 0 ? INFINITY : 0);
        if (rel >= r->worst_rel) {
            r->worst_rel = rel;
            snprintf(r->worst, sizeof r->worst, "%s", ta->name);
        }
    }
    r->identical = same;
    r->rel_l2 = r2 > 0 ? sqrt(d2 / r2) : (d2 > 0 ? INFINITY : 0);
    rc = DL_OK;
done:
    free(x);
    free(y);
    dl_st_close(&fa);
    dl_st_close(&fb);
    return rc;
}

/* ---- retraining from the record ---- */
static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static void repro_stop(void *user, int step)
{
    if (step >= *(const int *)user) dl_train_set_interrupted(1); /* the trainer saves a state and stops */
}

/* The dataset at dir holds exactly the recorded images (bytes may differ where the pixels do
 * not: a re-encoded copy trains the same) with the recorded captions. */
static int check_dataset(const dl_provenance *rec, const dl_train_config *c, const char *dir, FILE *log)
{
    dl_dataset ds;
    if (dl_prov_scan(&ds, dir, c, NULL) != DL_OK) return dl_error_prefix("dataset: ");
    dl_prov_item *items = NULL;
    int rc = dl_prov_hash_dataset(&ds, NULL, &items);
    dl_prov_report rep = {0};
    if (rc == DL_OK) rc = dl_prov_compare(rec, items, ds.n_items, &rep);
    if (rc == DL_OK) {
        int bad = rep.n_not_in + rep.n_moved + rep.n_missing + rep.n_caption_changed;
        for (int i = 0; i < rep.n; i++) /* a re-encoded image must stand where it stood */
            if (rep.m[i].status == DL_PROV_REENCODED && strcmp(rep.m[i].path, rec->items[rep.m[i].record].path)) bad++;
        if (bad)
            rc = dl_error_set("dataset %s differs from the record: %d image(s) not in the training set, %d missing, "
                              "%d moved, %d caption(s) changed (danlu verify FILE --dataset %s lists them); give the "
                              "training folder with --dataset", dir, rep.n_not_in, rep.n_missing, rep.n_moved,
                              rep.n_caption_changed, dir);
        else if (log)
            fprintf(log, "dataset %s: the %d recorded images and captions%s\n", dir, rec->n_items,
                    rep.n_reencoded ? " (some re-encoded, same pixels)" : "");
    }
    dl_prov_report_free(&rep);
    dl_prov_items_free(items, ds.n_items);
    dl_dataset_free(&ds);
    return rc;
}

static int check_model(const dl_provenance *rec, const char *model, int use_cache, FILE *log)
{
    struct stat st;
    if (stat(model, &st) != 0) return dl_error_set("base model %s: %s (give it with --model)", model, strerror(errno));
    dl_hash_cache hc;
    dl_hash_cache_default(&hc, use_cache);
    int single = S_ISREG(st.st_mode), unknown = 0;
    if (single != (rec->n_model == 1 && !strchr(rec->model[0].name, '/')))
        return dl_error_set("base model %s: the record names a %s", model, single ? "diffusers folder" : "single file");
    for (int i = 0; i < rec->n_model; i++) {
        char *p = NULL;
        if (single) p = strdup(model);
        else if (asprintf(&p, "%s/%s", model, rec->model[i].name) < 0) p = NULL;
        if (!p) return dl_error_set("out of memory");
        char hex[65];
        int rc = dl_hash_file(&hc, p, 0, UINT64_MAX, hex, NULL);
        if (rc == DL_OK && rec->model[i].sha256[0] && strcmp(hex, rec->model[i].sha256) != 0)
            rc = dl_error_set("base model %s: SHA-256 %s, the record has %s for %s: not the model it was trained on "
                              "(give that one with --model)", p, hex, rec->model[i].sha256, rec->model[i].name);
        unknown += !rec->model[i].sha256[0];
        free(p);
        DL_TRY(rc);
    }
    if (log)
        fprintf(log, "base model %s: %s\n", model,
                unknown ? "the record has no hash of it: not checked" : "matches the record");
    return DL_OK;
}

/* The saved LoRA in dir whose record has the given step; the same name as want preferred. */
static char *find_saved(const char *dir, int steps, const char *want)
{
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char *best = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors") || strstr(e->d_name, "-state.safetensors")) continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s", dir, e->d_name) < 0) continue;
        dl_provenance r;
        if (dl_prov_read(&r, p, NULL) == DL_OK && r.steps == steps && (!best || !strcmp(e->d_name, want))) {
            free(best);
            best = p;
            p = NULL;
        }
        dl_prov_free(&r);
        free(p);
    }
    closedir(d);
    dl_error_clear();
    return best;
}

int dl_prov_reproduce(const char *path, const dl_prov_repro_opts *o, dl_prov_repro *r)
{
    memset(r, 0, sizeof *r);
    dl_provenance rec;
    char *cfg_json = NULL;
    DL_TRY(dl_prov_read(&rec, path, &cfg_json));
    dl_train_config c;
    int rc = dl_prov_load_config(&c, cfg_json, path);
    free(cfg_json);
    if (rc != DL_OK) { dl_prov_free(&rec); return DL_ERR; }
    char work[4096] = "", num[32];
    int made_tmp = 0;
    FILE *log = o->log;
    rc = DL_ERR;
    if (rec.steps <= 0) { dl_error_set("%s: the record has no steps", path); goto done; }
    /* the record's seed and thread count; no sample images and no states (they change nothing) */
    snprintf(num, sizeof num, "%llu", (unsigned long long)rec.seed);
    if (dl_train_config_set(&c, "seed", num) != DL_OK) goto done;
    snprintf(num, sizeof num, "%d", rec.threads);
    if (dl_train_config_set(&c, "threads", num) != DL_OK) goto done;
    static const char k_off[] = "{\"sample_prompts\":null,\"sample_every_n_steps\":null,"
                                "\"sample_every_n_epochs\":null,\"save_state\":false}";
    if (dl_train_config_apply_json_text(&c, k_off, "reproduce") != DL_OK) goto done;
    if (o->dataset && dl_train_config_set(&c, "train_data_dir", o->dataset) != DL_OK) goto done;
    if (o->model && dl_train_config_set(&c, "pretrained_model_name_or_path", o->model) != DL_OK) goto done;
    if (check_dataset(&rec, &c, c.train_data_dir, log) != DL_OK) goto done;
    if (check_model(&rec, c.pretrained_model_name_or_path, !c.no_hash_cache, log) != DL_OK) goto done;
    if (o->work_dir) {
        snprintf(work, sizeof work, "%s", o->work_dir);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(work, sizeof work, "%s/danlu-verify-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(work)) {
            dl_error_set("%s: cannot create a temporary folder: %s", work, strerror(errno));
            goto done;
        }
        made_tmp = 1;
    }
    if (dl_train_config_set(&c, "output_dir", work) != DL_OK || dl_train_config_finish(&c) != DL_OK) goto done;
    snprintf(r->path_rec, sizeof r->path_rec, "%s/%s, %d threads", rec.backend, rec.isa, rec.threads);
    const dl_backend *now = dl_backend_find(c.backend ? c.backend : "auto"); /* "auto" resolved */
    const char *bn = now ? now->name : c.backend;
    snprintf(r->path_now, sizeof r->path_now, "%s/%s, %d threads", bn, dl_code_path_isa(bn), rec.threads);
    r->same_path = !strcmp(r->path_rec, r->path_now);
    if (log) {
        fprintf(log, "retraining %d steps in %s (%s)\n", rec.steps, work, r->path_now);
        fflush(log);
    }
    int target = rec.steps;
    dl_trainer_opts to = {.log = NULL, .tty = 0, .on_step = repro_stop, .on_step_user = &target};
    dl_train_result res;
    if (dl_train_run(&c, &to, &res) != DL_OK) { dl_error_prefix("retraining: "); goto done; }
    int done_steps = res.steps_done;
    dl_train_result_free(&res);
    const char *base = strrchr(path, '/');
    r->retrained = find_saved(work, rec.steps, base ? base + 1 : path);
    if (!r->retrained) {
        dl_error_set("retraining stopped at step %d but saved no LoRA at step %d (the record's step is not a save "
                     "point of its configuration)", done_steps, rec.steps);
        goto done;
    }
    if (dl_prov_compare_tensors(path, r->retrained, r) != DL_OK) goto done;
    r->within_bound = r->identical || r->rel_l2 <= DL_PROV_REPRO_BOUND;
    rc = DL_OK;
done:
    if (made_tmp) {
        nftw(work, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        if (r->retrained) { free(r->retrained); r->retrained = NULL; }
    }
    dl_train_config_free(&c);
    dl_prov_free(&rec);
    return rc;
}

void dl_prov_repro_free(dl_prov_repro *r)
{
    free(r->retrained);
    memset(r, 0, sizeof *r);
}
