/* lora_file.c - LoRA files as plain module lists (kohya and PEFT key layouts), no model needed. */
#include "lora/lora_file.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "lora/addnet_hash.h"
#include "lora/lora_net.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *down, *up; int peft; } k_pairs[] = {
    {".lora_down.weight", ".lora_up.weight", 0},
    {".lora_A.weight", ".lora_B.weight", 1},
    {".lora.down.weight", ".lora.up.weight", 1},
};

static int ends_with(const char *s, const char *suf, size_t *stem)
{
    size_t a = strlen(s), b = strlen(suf);
    if (a <= b || memcmp(s + a - b, suf, b)) return 0;
    *stem = a - b;
    return 1;
}

void dl_lf_free(dl_lora_file *lf)
{
    for (int i = 0; i < lf->n; i++) {
        free(lf->m[i].down);
        free(lf->m[i].up);
    }
    free(lf->m);
    for (int i = 0; i < 2 * lf->n_meta; i++) free(lf->meta[i]);
    free(lf->meta);
    memset(lf, 0, sizeof *lf);
}

int dl_lf_add(dl_lora_file *lf, const dl_lf_module *m)
{
    if (lf->n == lf->cap) {
        int cap = lf->cap ? 2 * lf->cap : 64;
        dl_lf_module *nm = realloc(lf->m, (size_t)cap * sizeof *nm);
        if (!nm) return dl_error_set("out of memory building a LoRA");
        lf->m = nm;
        lf->cap = cap;
    }
    dl_lf_module *d = &lf->m[lf->n];
    *d = *m;
    size_t nd = (size_t)m->r * m->in * m->kh * m->kw, nu = (size_t)m->out * m->r;
    d->down = malloc((nd ? nd : 1) * sizeof(float));
    d->up = malloc((nu ? nu : 1) * sizeof(float));
    if (!d->down || !d->up) {
        free(d->down), free(d->up);
        return dl_error_set("out of memory building a LoRA");
    }
    if (m->down) memcpy(d->down, m->down, nd * sizeof(float));
    else memset(d->down, 0, nd * sizeof(float));
    if (m->up) memcpy(d->up, m->up, nu * sizeof(float));
    else memset(d->up, 0, nu * sizeof(float));
    lf->n++;
    return DL_OK;
}

dl_lf_module *dl_lf_find(const dl_lora_file *lf, const char *stem)
{
    for (int i = 0; i < lf->n; i++)
        if (!strcmp(lf->m[i].stem, stem)) return &lf->m[i];
    return NULL;
}

const char *dl_lf_meta(const dl_lora_file *lf, const char *key)
{
    for (int i = 0; i < lf->n_meta; i++)
        if (!strcmp(lf->meta[2 * i], key)) return lf->meta[2 * i + 1];
    return NULL;
}

/* alpha of a PEFT module from diffusers' lora_adapter_metadata, or 0. */
static float adapter_alpha(const cJSON *meta, const char *stem)
{
    if (!meta) return 0;
    const char *dot = strchr(stem, '.');
    if (!dot) return 0;
    char pre[64], key[96];
    snprintf(pre, sizeof pre, "%.*s", (int)(dot - stem), stem);
    const char *name = dot + 1;
    snprintf(key, sizeof key, "%s.alpha_pattern", pre);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(meta, key), *it;
    if (cJSON_IsObject(pat)) {
        cJSON_ArrayForEach(it, pat)
        {
            const char *ps = it->string;
            int anchored = ps[0] == '^';
            ps += anchored;
            size_t n = strlen(name), m = strlen(ps);
            if (cJSON_IsNumber(it) && m <= n && !strcmp(name + n - m, ps) &&
                (m == n || (!anchored && name[n - m - 1] == '.')))
                return (float)it->valuedouble;
        }
    }
    snprintf(key, sizeof key, "%s.lora_alpha", pre);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(meta, key);
    return cJSON_IsNumber(a) ? (float)a->valuedouble : 0;
}

static const char *shp(const dl_st_tensor *t, char *buf, size_t cap)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && o < cap; d++) o += (size_t)snprintf(buf + o, cap - o, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* One module from its down / up / alpha tensors. */
static int read_one(dl_lora_file *lf, const dl_st_file *f, const char *stem, const dl_st_tensor *d,
                    const dl_st_tensor *u, const dl_st_tensor *a, const cJSON *ameta)
{
    char s1[96], s2[96];
    if (!(d->ndim == 2 || d->ndim == 4) || d->shape[0] < 1 || d->shape[1] < 1)
        return dl_error_set("%s: %s has shape %s: not a LoRA down weight ([r, in] or [r, in, kh, kw])", f->path,
                            d->name, shp(d, s1, sizeof s1));
    const int r = (int)d->shape[0];
    int ok = (u->ndim == d->ndim) && u->shape[1] == r && u->shape[0] >= 1 &&
             (u->ndim == 2 || (u->shape[2] == 1 && u->shape[3] == 1));
    if (!ok)
        return dl_error_set("%s: %s has shape %s, which does not fit %s of shape %s (expected [out, %d%s])", f->path,
                            u->name, shp(u, s1, sizeof s1), d->name, shp(d, s2, sizeof s2), r,
                            d->ndim == 4 ? ", 1, 1" : "");
    dl_lf_module m = {0};
    snprintf(m.stem, sizeof m.stem, "%s", stem);
    m.r = r;
    m.in = (int)d->shape[1];
    m.kh = d->ndim == 4 ? (int)d->shape[2] : 1;
    m.kw = d->ndim == 4 ? (int)d->shape[3] : 1;
    m.out = (int)u->shape[0];
    m.four_d = d->ndim == 4;
    m.alpha = (float)r;
    if (a) {
        if (dl_st_numel(a) != 1) return dl_error_set("%s: %s has shape %s, expected a scalar", f->path, a->name, shp(a, s1, sizeof s1));
        DL_TRY(dl_st_read_f32(f, a, &m.alpha));
        if (!(m.alpha > 0) && !(m.alpha < 0)) m.alpha = (float)r; /* 0 or NaN: alpha = r, as sd-scripts */
    } else if (lf->peft) {
        float x = adapter_alpha(ameta, stem);
        if (x > 0) m.alpha = x;
    }
    DL_TRY(dl_lf_add(lf, &m));
    dl_lf_module *dm = &lf->m[lf->n - 1];
    if (dl_st_read_f32(f, d, dm->down) != DL_OK || dl_st_read_f32(f, u, dm->up) != DL_OK) {
        free(dm->down), free(dm->up);
        lf->n--;
        return DL_ERR;
    }
    return DL_OK;
}

int dl_lf_read(dl_lora_file *lf, const char *path)
{
    memset(lf, 0, sizeof *lf);
    dl_st_file f;
    DL_TRY(dl_st_open(&f, path));
    cJSON *ameta = NULL;
    int ret = DL_ERR, kohya = 0, peft = 0;
    uint8_t *used = calloc((size_t)(f.n_tensors ? f.n_tensors : 1), 1);
    if (!used) {
        dl_error_set("%s: out of memory", path);
        goto done;
    }
    for (int t = 0; t < f.n_tensors; t++)
        for (size_t p = 0; p < sizeof k_pairs / sizeof *k_pairs; p++) {
            size_t n;
            if (ends_with(f.tensors[t].name, k_pairs[p].down, &n)) *(k_pairs[p].peft ? &peft : &kohya) = 1;
        }
    if (kohya && peft) {
        dl_error_set("%s: mixes kohya (lora_down) and PEFT (lora_A) keys", path);
        goto done;
    }
    lf->peft = peft;
    const char *am = dl_st_meta(&f, "lora_adapter_metadata");
    ameta = am ? cJSON_Parse(am) : NULL;
    for (int t = 0; t < f.n_tensors; t++) {
        const dl_st_tensor *d = &f.tensors[t];
        for (size_t p = 0; p < sizeof k_pairs / sizeof *k_pairs; p++) {
            size_t n;
            if (!ends_with(d->name, k_pairs[p].down, &n)) continue;
            char stem[256], key[320];
            if (n >= sizeof stem) {
                dl_error_set("%s: key %s is too long", path, d->name);
                goto done;
            }
            memcpy(stem, d->name, n);
            stem[n] = 0;
            snprintf(key, sizeof key, "%s%s", stem, k_pairs[p].up);
            const dl_st_tensor *u = dl_st_find(&f, key);
            if (!u) {
                dl_error_set("%s: %s has no matching %s", path, d->name, key);
                goto done;
            }
            snprintf(key, sizeof key, "%s.alpha", stem);
            const dl_st_tensor *a = dl_st_find(&f, key);
            if (read_one(lf, &f, stem, d, u, a, ameta) != DL_OK) goto done;
            used[t] = 1;
            used[u - f.tensors] = 1;
            if (a) used[a - f.tensors] = 1;
        }
    }
    for (int t = 0; t < f.n_tensors; t++) {
        if (used[t]) continue;
        const char *nm = f.tensors[t].name;
        if (strstr(nm, "hada_") || strstr(nm, "lokr_") || strstr(nm, "lora_mid") || strstr(nm, "dora_scale"))
            dl_error_set("%s: %s: LyCORIS LoHa / LoKr / Tucker (lora_mid) and DoRA weights are not supported by the "
                         "LoRA tools", path, nm);
        else
            dl_error_set("%s: %s is not a LoRA weight (down / up / alpha of a module)", path, nm);
        goto done;
    }
    if (lf->n == 0) {
        dl_error_set("%s: holds no LoRA modules (no .lora_down.weight / .lora_A.weight keys)", path);
        goto done;
    }
    lf->dtype = f.tensors[0].dtype;
    for (int t = 0; t < f.n_tensors; t++)
        if (used[t] && strstr(f.tensors[t].name, "down")) { lf->dtype = f.tensors[t].dtype; break; }
    for (int t = 0; t < f.n_tensors; t++)
        if (strstr(f.tensors[t].name, ".lora_A.")) { lf->dtype = f.tensors[t].dtype; break; }
    lf->meta = calloc((size_t)(2 * f.n_meta + 1), sizeof *lf->meta);
    if (!lf->meta) {
        dl_error_set("%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < f.n_meta; i++) {
        lf->meta[2 * i] = strdup(f.meta_keys[i]);
        lf->meta[2 * i + 1] = strdup(f.meta_vals[i]);
        lf->n_meta++;
        if (!lf->meta[2 * i] || !lf->meta[2 * i + 1]) {
            dl_error_set("%s: out of memory", path);
            goto done;
        }
    }
    ret = DL_OK;
done:
    if (ret != DL_OK) dl_lf_free(lf);
    cJSON_Delete(ameta);
    free(used);
    dl_st_close(&f);
    return ret;
}

int dl_lf_save(const dl_lora_file *lf, const char *path, dl_dtype dtype, const char *const *meta, int n_meta)
{
    if (dtype != DL_F32 && dtype != DL_F16 && dtype != DL_BF16)
        return dl_error_set("%s: LoRA files are saved as fp32, fp16 or bf16, not %s", path, dl_dtype_name(dtype));
    const int per = lf->peft ? 2 : 3;
    const size_t es = dl_dtype_size(dtype);
    size_t total = 0;
    for (int i = 0; i < lf->n; i++)
        total += (size_t)lf->m[i].r * lf->m[i].in * lf->m[i].kh * lf->m[i].kw + (size_t)lf->m[i].out * lf->m[i].r + 1;
    dl_st_entry *e = calloc((size_t)lf->n * per + 1, sizeof *e);
    char *names = calloc((size_t)lf->n * per + 1, 300);
    uint8_t *data = malloc(total * es + 1);
    float *tmp = NULL;
    const char **m2 = calloc((size_t)(n_meta + 3) * 2, sizeof *m2);
    cJSON *alphas = cJSON_CreateObject();
    char *alphas_s = NULL;
    int ret = DL_ERR, ne = 0, nm = 0;
    if (!e || !names || !data || !m2 || !alphas) {
        dl_error_set("%s: out of memory saving the LoRA", path);
        goto done;
    }
    uint8_t *dp = data;
    for (int i = 0; i < lf->n; i++) {
        const dl_lf_module *m = &lf->m[i];
        const size_t nd = (size_t)m->r * m->in * m->kh * m->kw, nu = (size_t)m->out * m->r;
        dl_st_entry *d = &e[ne];
        d->name = names + (size_t)ne * 300;
        snprintf((char *)d->name, 300, "%s%s", m->stem, lf->peft ? ".lora_A.weight" : ".lora_down.weight");
        d->dtype = dtype;
        d->ndim = m->four_d ? 4 : 2;
        d->shape[0] = m->r, d->shape[1] = m->in, d->shape[2] = m->kh, d->shape[3] = m->kw;
        d->data = dp;
        DL_ASSERT(dl_convert_from_f32(dp, dtype, m->down, nd) == 0);
        dp += nd * es;
        ne++;
        const float bake = lf->peft ? m->alpha / (float)m->r : 1.0f;
        const float *up = m->up;
        if (bake != 1.0f) {
            free(tmp);
            tmp = malloc(nu * sizeof *tmp);
            if (!tmp) {
                dl_error_set("%s: out of memory saving the LoRA", path);
                goto done;
            }
            for (size_t j = 0; j < nu; j++) tmp[j] = m->up[j] * bake;
            up = tmp;
            cJSON_AddNumberToObject(alphas, m->stem, m->alpha);
        }
        d = &e[ne];
        d->name = names + (size_t)ne * 300;
        snprintf((char *)d->name, 300, "%s%s", m->stem, lf->peft ? ".lora_B.weight" : ".lora_up.weight");
        d->dtype = dtype;
        d->ndim = m->four_d ? 4 : 2;
        d->shape[0] = m->out, d->shape[1] = m->r, d->shape[2] = 1, d->shape[3] = 1;
        d->data = dp;
        DL_ASSERT(dl_convert_from_f32(dp, dtype, up, nu) == 0);
        dp += nu * es;
        ne++;
        if (!lf->peft) {
            d = &e[ne];
            d->name = names + (size_t)ne * 300;
            snprintf((char *)d->name, 300, "%s.alpha", m->stem);
            d->dtype = dtype;
            d->ndim = 0;
            d->data = dp;
            DL_ASSERT(dl_convert_from_f32(dp, dtype, &m->alpha, 1) == 0);
            dp += es;
            ne++;
        }
    }
    for (int i = 0; i < n_meta; i++) {
        const char *k = meta[2 * i];
        if (!strcmp(k, "sshs_model_hash") || !strcmp(k, "sshs_legacy_hash") || !strcmp(k, "danlu_kohya_alphas")) continue;
        m2[2 * nm] = k;
        m2[2 * nm + 1] = meta[2 * i + 1];
        nm++;
    }
    if (lf->peft && cJSON_GetArraySize(alphas) > 0) {
        alphas_s = cJSON_PrintUnformatted(alphas);
        if (!alphas_s) {
            dl_error_set("%s: out of memory saving the LoRA", path);
            goto done;
        }
        m2[2 * nm] = "danlu_kohya_alphas";
        m2[2 * nm + 1] = alphas_s;
        nm++;
    }
    char model[65], legacy[9];
    if (!lf->peft && dl_addnet_has_ss(m2, nm)) {
        if (dl_addnet_hashes(e, ne, m2, nm, model, legacy) != DL_OK) {
            dl_error_prefix("%s: ", path);
            goto done;
        }
        m2[2 * nm] = "sshs_model_hash", m2[2 * nm + 1] = model, nm++;
        m2[2 * nm] = "sshs_legacy_hash", m2[2 * nm + 1] = legacy, nm++;
    }
    ret = dl_st_save(path, e, ne, m2, nm);
done:
    cJSON_Delete(alphas);
    free(alphas_s);
    free(m2);
    free(tmp);
    free(data);
    free(names);
    free(e);
    return ret;
}

int dl_lf_relayout(dl_lora_file *lf, const dl_model_config *cfg, int to_peft, const char *label)
{
    if (lf->peft == to_peft) return DL_OK;
    dl_lora_spec all = {.preset = DL_LORA_PRESET_ALL, .unet = 1, .text = 1};
    dl_lora_module *c = NULL;
    int n = 0;
    DL_TRY(dl_lora_targets(cfg, &all, &c, &n));
    const int xl = dl_lora_cfg_is_xl(cfg);
    const char *as = dl_lf_meta(lf, "danlu_kohya_alphas");
    cJSON *alphas = as ? cJSON_Parse(as) : NULL;
    int ret = DL_OK;
    for (int i = 0; i < lf->n && ret == DL_OK; i++) {
        dl_lf_module *m = &lf->m[i];
        char nw[256] = "";
        for (int j = 0; j < n && !nw[0]; j++) {
            char ps[256], alias[192] = "";
            snprintf(ps, sizeof ps, "%s.%s", dl_lora_part_prefix(c[j].part), c[j].name);
            /* SDXL: kohya files on the UNet's diffusers paths too (written back in sd-scripts' names) */
            if (xl && c[j].part == DL_LORA_UNET) dl_lora_kohya_name(DL_LORA_UNET, c[j].name, alias, sizeof alias);
            if (to_peft && (!strcmp(m->stem, c[j].kohya) || (alias[0] && !strcmp(m->stem, alias))))
                snprintf(nw, sizeof nw, "%s", ps);
            if (!to_peft && !strcmp(m->stem, ps)) snprintf(nw, sizeof nw, "%s", c[j].kohya);
        }
        if (!nw[0]) {
            ret = dl_error_set("%s: %s is not a module of this %s model (a LoRA for another architecture, or a "
                               "name danlu cannot map; --model names the checkpoint it was made for)",
                               label, m->stem, xl ? "SDXL" : "SD 1.x/2.x");
            break;
        }
        if (!to_peft && alphas) { /* undo the B x alpha / r of a danlu PEFT file */
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(alphas, m->stem);
            if (cJSON_IsNumber(a) && a->valuedouble > 0) {
                m->alpha = (float)a->valuedouble;
                const float inv = (float)m->r / m->alpha;
                for (size_t j = 0; j < (size_t)m->out * m->r; j++) m->up[j] *= inv;
            }
        }
        snprintf(m->stem, sizeof m->stem, "%s", nw);
    }
    cJSON_Delete(alphas);
    free(c);
    if (ret == DL_OK) lf->peft = to_peft;
    return ret;
}
