/* safetensors.c - validating mmap reader and atomic writer for .safetensors files. */
#include "safetensors.h"
#include "core/error.h"
#include "io/atomic_file.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- reading */

static void st_free_contents(dl_st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) { free(f->meta_keys[i]); free(f->meta_vals[i]); }
    free(f->meta_keys);
    free(f->meta_vals);
    f->tensors = NULL;
    f->meta_keys = f->meta_vals = NULL;
    f->n_tensors = f->n_meta = 0;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != (double)(uint64_t)v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int cmp_begin(const void *a, const void *b)
{
    const dl_st_tensor *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int parse_tensor(dl_st_tensor *t, const cJSON *item, const char *label, uint64_t data_size)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item)) return dl_error_set("%s: tensor '%s': entry is not a JSON object", label, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(jd)) return dl_error_set("%s: tensor '%s': missing or non-string \"dtype\"", label, name);
    if (dl_dtype_parse(jd->valuestring, &t->dtype) != 0)
        return dl_error_set("%s: tensor '%s': unknown dtype \"%s\"", label, name, jd->valuestring);
    if (!cJSON_IsArray(js)) return dl_error_set("%s: tensor '%s': missing or non-array \"shape\"", label, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > DL_MAX_DIMS) return dl_error_set("%s: tensor '%s': %d dimensions (at most %d supported)", label, name, nd, DL_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (json_uint(cJSON_GetArrayItem(js, i), &d) != 0)
            return dl_error_set("%s: tensor '%s': shape entry %d is not a non-negative integer", label, name, i);
        t->shape[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / d) overflow = 1;
        numel *= d;
    }
    size_t esz = dl_dtype_size(t->dtype);
    if (overflow || numel > UINT64_MAX / esz)
        return dl_error_set("%s: tensor '%s': shape overflows the addressable size", label, name);
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &t->begin) != 0 ||
        json_uint(cJSON_GetArrayItem(jo, 1), &t->end) != 0)
        return dl_error_set("%s: tensor '%s': \"data_offsets\" must be two non-negative integers", label, name);
    if (t->end < t->begin)
        return dl_error_set("%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", label, name,
                            (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_size)
        return dl_error_set("%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data (%llu bytes): truncated file or lying header",
                            label, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                            (unsigned long long)data_size);
    if (t->end - t->begin != numel * esz) {
        char sh[128];
        return dl_error_set("%s: tensor '%s': %s %s needs %llu bytes but data_offsets give %llu", label, name,
                            jd->valuestring, dl_shape_str(t->shape, t->ndim, sh, sizeof sh),
                            (unsigned long long)(numel * esz), (unsigned long long)(t->end - t->begin));
    }
    return DL_OK;
}

static int parse_metadata(dl_st_file *f, const cJSON *meta, const char *label)
{
    if (!cJSON_IsObject(meta)) return dl_error_set("%s: \"__metadata__\" is not a JSON object", label);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) return dl_error_set("%s: out of memory reading metadata", label);
    const cJSON *it;
    cJSON_ArrayForEach(it, meta) {
        if (!cJSON_IsString(it))
            return dl_error_set("%s: metadata key '%s' does not have a string value", label, it->string);
        f->meta_keys[f->n_meta] = strdup(it->string);
        f->meta_vals[f->n_meta] = strdup(it->valuestring);
        f->n_meta++;
    }
    return DL_OK;
}

int dl_st_parse(dl_st_file *f, const void *buf, size_t size, const char *label)
{
    const uint8_t *p = buf;
    if (!f->path) {
        memset(f, 0, sizeof *f);
        f->path = strdup(label);
    }
    f->base = p;
    f->size = size;
    if (size < 8) return dl_error_set("%s: truncated: %zu bytes, not even the 8-byte header length", label, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > DL_ST_MAX_HEADER)
        return dl_error_set("%s: header length %llu is absurd (limit %u bytes): not a safetensors file?", label,
                            (unsigned long long)hlen, DL_ST_MAX_HEADER);
    if (hlen > size - 8)
        return dl_error_set("%s: truncated: header length %llu runs past the end of the %zu-byte file", label,
                            (unsigned long long)hlen, size);
    if (hlen < 2 || p[8] != '{') return dl_error_set("%s: header is not a JSON object", label);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)p + 8, (size_t)hlen, &end, 0);
    if (!root) return dl_error_set("%s: header is not valid JSON", label);
    int rc = DL_ERR;
    for (const char *q = end; q < (const char *)p + 8 + hlen; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r' && *q != 0) {
            dl_error_set("%s: header has trailing bytes after the JSON object", label);
            goto out;
        }
    if (!cJSON_IsObject(root)) { dl_error_set("%s: header is not a JSON object", label); goto out; }

    uint64_t data_size = size - 8 - hlen;
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    if (!f->tensors) { dl_error_set("%s: out of memory", label); goto out; }
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (f->meta_keys) { dl_error_set("%s: duplicate \"__metadata__\"", label); goto out; }
            if (parse_metadata(f, it, label) != DL_OK) goto out;
            continue;
        }
        dl_st_tensor *t = &f->tensors[f->n_tensors];
        t->name = strdup(it->string);
        f->n_tensors++;
        if (parse_tensor(t, it, label, data_size) != DL_OK) goto out;
        t->data = p + 8 + hlen + t->begin;
    }
    /* duplicate names */
    if (f->n_tensors > 1) {
        char **names = malloc((size_t)f->n_tensors * sizeof *names);
        for (int i = 0; i < f->n_tensors; i++) names[i] = f->tensors[i].name;
        qsort(names, (size_t)f->n_tensors, sizeof *names, cmp_name_ptr);
        for (int i = 1; i < f->n_tensors; i++)
            if (strcmp(names[i - 1], names[i]) == 0) {
                dl_error_set("%s: tensor name '%s' appears twice in the header", label, names[i]);
                free(names);
                goto out;
            }
        free(names);
    }
    /* offsets: sorted, no overlap, no hole, covering the data section exactly */
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_begin);
    uint64_t pos = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const dl_st_tensor *t = &f->tensors[i];
        if (t->begin < pos) {
            dl_error_set("%s: tensor '%s' (bytes %llu..%llu) overlaps tensor '%s'", label, t->name,
                         (unsigned long long)t->begin, (unsigned long long)t->end, f->tensors[i - 1].name);
            goto out;
        }
        if (t->begin > pos) {
            dl_error_set("%s: %llu unclaimed bytes before tensor '%s' in the data section", label,
                         (unsigned long long)(t->begin - pos), t->name);
            goto out;
        }
        pos = t->end;
    }
    if (pos != data_size) {
        dl_error_set("%s: data section is %llu bytes but the header describes %llu (truncated or trailing data)",
                     label, (unsigned long long)data_size, (unsigned long long)pos);
        goto out;
    }
    rc = DL_OK;
out:
    cJSON_Delete(root);
    if (rc != DL_OK) st_free_contents(f);
    return rc;
}

int dl_st_open(dl_st_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return dl_error_set("%s: cannot stat: %s", path, strerror(errno)); }
    if (S_ISDIR(st.st_mode)) { close(fd); return dl_error_set("%s: is a directory, not a .safetensors file", path); }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) { close(fd); return dl_error_set("%s: cannot map: %s", path, strerror(errno)); }
    }
    close(fd);
    f->path = strdup(path);
    f->mapped = size > 0;
    if (dl_st_parse(f, map ? map : "", size, path) != DL_OK) {
        if (map) munmap(map, size);
        free(f->path);
        memset(f, 0, sizeof *f);
        return DL_ERR;
    }
    return DL_OK;
}

void dl_st_drop_pages(const dl_st_file *f, const dl_st_tensor *t)
{
    if (!f->mapped || !f->base || t->end <= t->begin) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = (uintptr_t)t->data & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)t->data + (t->end - t->begin) + page - 1) & ~(page - 1);
    const uintptr_t end = ((uintptr_t)f->base + f->size + page - 1) & ~(page - 1);
    /* read-only private file mapping never written: dropped pages read back from the file */
    madvise((void *)lo, (hi < end ? hi : end) - lo, MADV_DONTNEED);
}

void dl_st_close(dl_st_file *f)
{
    st_free_contents(f);
    if (f->mapped && f->base) munmap((void *)f->base, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const dl_st_tensor *dl_st_find(const dl_st_file *f, const char *name)
{
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *dl_st_meta(const dl_st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

int64_t dl_st_numel(const dl_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int dl_st_read_f32(const dl_st_file *f, const dl_st_tensor *t, float *dst)
{
    if (dl_convert_to_f32(dst, t->data, t->dtype, (size_t)dl_st_numel(t)) != 0)
        return dl_error_set("%s: tensor '%s' has dtype %s, expected a floating-point type", f->path, t->name,
                            dl_dtype_name(t->dtype));
    return DL_OK;
}

/* ---------------------------------------------------------------- writing */

int dl_st_save(const char *path, const dl_st_entry *entries, int n, const char *const *meta, int n_meta)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return dl_error_set("%s: out of memory building the header", path);
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(m, meta[2 * i], meta[2 * i + 1]);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const dl_st_entry *e = &entries[i];
        if (cJSON_GetObjectItemCaseSensitive(root, e->name)) {
            cJSON_Delete(root);
            return dl_error_set("%s: tensor name '%s' given twice", path, e->name);
        }
        uint64_t nb = dl_dtype_size(e->dtype);
        for (int d = 0; d < e->ndim; d++) nb *= (uint64_t)e->shape[d];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(t, "dtype", dl_dtype_name(e->dtype));
        cJSON *sh = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        cJSON *of = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return dl_error_set("%s: out of memory printing the header", path);
    size_t jlen = strlen(json), hlen = (jlen + 7) & ~(size_t)7;

    dl_atomic_file af;
    if (dl_atomic_begin(&af, path) != DL_OK) {
        free(json);
        return DL_ERR;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    dl_atomic_write(&af, len8, 8);
    dl_atomic_write(&af, json, jlen);
    for (size_t i = jlen; i < hlen; i++) dl_atomic_write(&af, " ", 1);
    free(json);
    for (int i = 0; i < n; i++) {
        const dl_st_entry *e = &entries[i];
        size_t nb = dl_dtype_size(e->dtype);
        for (int d = 0; d < e->ndim; d++) nb *= (size_t)e->shape[d];
        dl_atomic_write(&af, e->data, nb);
    }
    return dl_atomic_commit(&af);
}
