/* lora_io.c - reading and writing LoRA files (kohya / LyCORIS LoCon / diffusers PEFT). */
#include "lora/lora_io.h"
#include "core/error.h"
#include "lora/addnet_hash.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ writing */

/* dl_st_save, adding sd-scripts' "sshs_model_hash" / "sshs_legacy_hash" (computed from the tensors
 * and the ss_* keys alone, as sd-scripts does) to a kohya file whose metadata has ss_* keys; any
 * such keys the caller passed are replaced. */
static int save_with_hashes(const char *path, dl_lora_format fmt, const dl_st_entry *e, int ne,
                            const char *const *meta, int n_meta)
{
    if (fmt != DL_LORA_FMT_KOHYA || !dl_addnet_has_ss(meta, n_meta)) return dl_st_save(path, e, ne, meta, n_meta);
    char model[65], legacy[9];
    if (dl_addnet_hashes(e, ne, meta, n_meta, model, legacy) != DL_OK) return dl_error_prefix("%s: ", path);
    const char **m = malloc((size_t)(n_meta + 2) * 2 * sizeof *m);
    if (!m) return dl_error_set("%s: out of memory saving the LoRA", path);
    int nm = 0;
    for (int i = 0; i < n_meta; i++) {
        if (strcmp(meta[2 * i], "sshs_model_hash") == 0 || strcmp(meta[2 * i], "sshs_legacy_hash") == 0) continue;
        m[2 * nm] = meta[2 * i];
        m[2 * nm + 1] = meta[2 * i + 1];
        nm++;
    }
    m[2 * nm] = "sshs_model_hash";
    m[2 * nm + 1] = model;
    m[2 * nm + 2] = "sshs_legacy_hash";
    m[2 * nm + 3] = legacy;
    int ret = dl_st_save(path, e, ne, m, nm + 2);
    free(m);
    return ret;
}

int dl_lora_save(const char *path, const dl_lora_net *net, dl_lora_format fmt, dl_dtype dtype,
                 const char *const *meta, int n_meta)
{
    if (dtype != DL_F32 && dtype != DL_F16 && dtype != DL_BF16)
        return dl_error_set("%s: LoRA files are saved as fp32, fp16 or bf16, not %s", path, dl_dtype_name(dtype));
    const int per = fmt == DL_LORA_FMT_KOHYA ? 3 : 2;
    const size_t es = dl_dtype_size(dtype);
    int64_t total = 0;
    for (int i = 0; i < net->n; i++) {
        const dl_lora_module *m = &net->mods[i];
        total += (int64_t)m->lora.r * m->k * m->k * m->in + (int64_t)m->out * m->lora.r + 1;
    }
    dl_st_entry *e = calloc((size_t)(net->n > 0 ? net->n : 1) * per, sizeof *e);
    char *names = calloc((size_t)(net->n > 0 ? net->n : 1) * per, 256);
    uint8_t *data = malloc((size_t)(total > 0 ? total : 1) * es);
    float *tmp = NULL;
    int64_t tmp_cap = 0;
    int ret = DL_ERR;
    if (!e || !names || !data) {
        dl_error_set("%s: out of memory saving the LoRA", path);
        goto done;
    }
    uint8_t *dp = data;
    int ne = 0;
    for (int i = 0; i < net->n; i++) {
        const dl_lora_module *m = &net->mods[i];
        const int r = m->lora.r, k = m->k, in = m->in, out = m->out;
        const int64_t na = (int64_t)r * k * k * in, nb = (int64_t)out * r;
        int64_t need = na > nb ? na : nb;
        if (need > tmp_cap) {
            free(tmp);
            tmp = malloc((size_t)need * sizeof(float));
            tmp_cap = need;
            if (!tmp) {
                dl_error_set("%s: out of memory saving the LoRA", path);
                goto done;
            }
        }
        const int four_d = m->is_conv || m->conv1x1_on_disk;
        char pre[200];
        if (fmt == DL_LORA_FMT_KOHYA) snprintf(pre, sizeof pre, "%s", m->kohya);
        else snprintf(pre, sizeof pre, "%s.%s", dl_lora_part_prefix(m->part), m->name);
        /* down / lora_A: danlu [r, k, k, in] -> OIHW [r, in, k, k] */
        for (int o = 0; o < r; o++)
            for (int c = 0; c < in; c++)
                for (int kh = 0; kh < k; kh++)
                    for (int kw = 0; kw < k; kw++)
                        tmp[(((int64_t)o * in + c) * k + kh) * k + kw] =
                            dl_lora_host_A(net, m)[(((int64_t)o * k + kh) * k + kw) * in + c];
        dl_st_entry *d = &e[ne];
        snprintf(names + (size_t)ne * 256, 256, "%s.%s", pre,
                 fmt == DL_LORA_FMT_KOHYA ? "lora_down.weight" : "lora_A.weight");
        d->name = names + (size_t)ne * 256;
        d->dtype = dtype;
        d->ndim = four_d ? 4 : 2;
        d->shape[0] = r;
        d->shape[1] = in;
        d->shape[2] = k;
        d->shape[3] = k;
        d->data = dp;
        DL_ASSERT(dl_convert_from_f32(dp, dtype, tmp, (size_t)na) == 0);
        dp += na * es;
        ne++;
        /* up / lora_B: [out, r] (PEFT: x alpha / r, as diffusers assumes lora_alpha = r) */
        const float bake = fmt == DL_LORA_FMT_PEFT ? m->alpha / (float)r : 1.0f;
        for (int64_t j = 0; j < nb; j++) tmp[j] = dl_lora_host_B(net, m)[j] * bake;
        d = &e[ne];
        snprintf(names + (size_t)ne * 256, 256, "%s.%s", pre,
                 fmt == DL_LORA_FMT_KOHYA ? "lora_up.weight" : "lora_B.weight");
        d->name = names + (size_t)ne * 256;
        d->dtype = dtype;
        d->ndim = four_d ? 4 : 2;
        d->shape[0] = out;
        d->shape[1] = r;
        d->shape[2] = 1;
        d->shape[3] = 1;
        d->data = dp;
        DL_ASSERT(dl_convert_from_f32(dp, dtype, tmp, (size_t)nb) == 0);
        dp += nb * es;
        ne++;
        if (fmt == DL_LORA_FMT_KOHYA) { /* alpha: a 0-d tensor in the save dtype, as sd-scripts */
            d = &e[ne];
            snprintf(names + (size_t)ne * 256, 256, "%s.alpha", pre);
            d->name = names + (size_t)ne * 256;
            d->dtype = dtype;
            d->ndim = 0;
            d->data = dp;
            DL_ASSERT(dl_convert_from_f32(dp, dtype, &m->alpha, 1) == 0);
            dp += es;
            ne++;
        }
    }
    ret = save_with_hashes(path, fmt, e, ne, meta, n_meta);
done:
    free(tmp);
    free(data);
    free(names);
    free(e);
    return ret;
}

/* ------------------------------------------------------------------ reading */

enum { ROLE_DOWN = 0, ROLE_UP = 1, ROLE_ALPHA = 2 };

typedef struct found {
    const dl_st_tensor *t[3]; /* down, up, alpha */
} found;

typedef struct cand_set {
    const dl_lora_module *c; /* candidates */
    int n;
    char (*alias)[192];      /* another kohya name of the layer (or ""): SD 1.x/2.x the ldm path's,
                                SDXL the diffusers path's */
    int xl;                  /* the model is SDXL */
} cand_set;

static int ends(const char *s, const char *suf, size_t *stem)
{
    size_t a = strlen(s), b = strlen(suf);
    if (a <= b || memcmp(s + a - b, suf, b)) return 0;
    *stem = a - b;
    return 1;
}

static int find_kohya(const cand_set *cs, const char *stem)
{
    for (int i = 0; i < cs->n; i++)
        if (!strcmp(cs->c[i].kohya, stem)) return i;
    if (cs->alias)
        for (int i = 0; i < cs->n; i++)
            if (cs->alias[i][0] && !strcmp(cs->alias[i], stem)) return i;
    return -1;
}

static int find_name(const cand_set *cs, const char *stem)
{
    dl_lora_part part = DL_LORA_UNET;
    int any = 0;
    if (!strncmp(stem, "unet.", 5)) stem += 5;
    else if (!strncmp(stem, "base_model.model.", 17)) stem += 17;
    else if (!strncmp(stem, "text_encoder.", 13)) {
        stem += 13;
        part = DL_LORA_TEXT;
    } else if (!strncmp(stem, "text_encoder_2.", 15)) {
        stem += 15;
        part = DL_LORA_TEXT2;
    } else any = 1;
    for (int i = 0; i < cs->n; i++)
        if ((any || cs->c[i].part == part) && !strcmp(cs->c[i].name, stem)) return i;
    if (part != DL_LORA_UNET && !strncmp(stem, "encoder.", 8)) { /* transformers 5 dropped "text_model." */
        char full[300];
        snprintf(full, sizeof full, "text_model.%s", stem);
        for (int i = 0; i < cs->n; i++)
            if (cs->c[i].part == part && !strcmp(cs->c[i].name, full)) return i;
    }
    return -1;
}

/* The candidate and role of key, or -1. *peft set for the diffusers layouts. */
static int match_key(const cand_set *cs, const char *key, int *role, int *peft)
{
    static const struct { const char *suf; int role, peft; } sufs[] = {
        {".lora_down.weight", ROLE_DOWN, 0}, {".lora_up.weight", ROLE_UP, 0}, {".alpha", ROLE_ALPHA, 0},
        {".lora_A.weight", ROLE_DOWN, 1},    {".lora_B.weight", ROLE_UP, 1},  {".lora.down.weight", ROLE_DOWN, 1},
        {".lora.up.weight", ROLE_UP, 1},
    };
    char stem[256];
    for (size_t s = 0; s < sizeof sufs / sizeof sufs[0]; s++) {
        size_t n;
        if (!ends(key, sufs[s].suf, &n) || n >= sizeof stem) continue;
        memcpy(stem, key, n);
        stem[n] = 0;
        int i = -1;
        if (!sufs[s].peft) {
            i = find_kohya(cs, stem);
            if (i < 0 && sufs[s].role == ROLE_ALPHA) { /* diffusers-named alpha */
                i = find_name(cs, stem);
                if (i >= 0) {
                    *role = ROLE_ALPHA;
                    *peft = 1;
                    return i;
                }
            }
        } else {
            i = find_name(cs, stem);
        }
        if (i >= 0) {
            *role = sufs[s].role;
            *peft = sufs[s].peft;
            return i;
        }
        return -1;
    }
    return -1;
}

static void report_unmatched(dl_lora_report *rep, const char *key)
{
    if (rep->n_unmatched < DL_LORA_REPORT_KEYS)
        snprintf(rep->unmatched[rep->n_unmatched], sizeof rep->unmatched[0], "%s", key);
    rep->n_unmatched++;
    /* kind: the last name part, or the last two when it is "weight" */
    const char *k = strrchr(key, '.');
    if (k && !strcmp(k, ".weight")) {
        const char *p = k - 1;
        while (p > key && *p != '.') p--;
        if (*p == '.') k = p;
    }
    if (!k) k = key;
    for (int i = 0; i < rep->n_kinds; i++)
        if (!strcmp(rep->kind[i], k)) {
            rep->kind_count[i]++;
            return;
        }
    if (rep->n_kinds < DL_LORA_REPORT_KEYS) {
        snprintf(rep->kind[rep->n_kinds], sizeof rep->kind[0], "%s", k);
        rep->kind_count[rep->n_kinds++] = 1;
    }
}

static const char *shape_str(const dl_st_tensor *t, char *buf, size_t cap)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int d = 0; d < t->ndim && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* What a shape that does not fit suggests, for a model that is SDXL (xl) or not. */
static const char *arch_hint(int xl)
{
    return xl ? "a LoRA made for another model, e.g. SD 1.x/2.x on SDXL?" : "a LoRA made for another model, e.g. SD2 or "
                                                                           "SDXL on SD1?";
}

/* Check the shapes of a found module against candidate c: sets *r. */
static int check_shapes(const char *path, const dl_lora_module *c, const found *f, int xl, int *r)
{
    char a[96], b[96];
    const dl_st_tensor *d = f->t[ROLE_DOWN], *u = f->t[ROLE_UP];
    if (!d || !u) {
        const dl_st_tensor *have = d ? d : u;
        return dl_error_set("%s: module %s has %s but no %s weight", path, c->kohya, have->name,
                            d ? "up (lora_up / lora_B)" : "down (lora_down / lora_A)");
    }
    const int k = c->k;
    int ok = d->ndim >= 2 && d->shape[0] >= 1 && d->shape[1] == c->in;
    if (ok) {
        if (d->ndim == 2) ok = k == 1;
        else ok = d->ndim == 4 && d->shape[2] == k && d->shape[3] == k;
    }
    if (!ok) {
        if (k == 1) snprintf(b, sizeof b, "[r, %d]", c->in);
        else snprintf(b, sizeof b, "[r, %d, %d, %d]", c->in, k, k);
        return dl_error_set("%s: %s has shape %s but layer %s of this model needs %s (%s)", path, d->name,
                            shape_str(d, a, sizeof a), c->name, b, arch_hint(xl));
    }
    *r = (int)d->shape[0];
    ok = (u->ndim == 2 || (u->ndim == 4 && u->shape[2] == 1 && u->shape[3] == 1)) && u->shape[0] == c->out &&
         u->shape[1] == *r;
    if (!ok) {
        snprintf(b, sizeof b, "[%d, %d]", c->out, *r);
        return dl_error_set("%s: %s has shape %s but layer %s of this model with rank %d needs %s (%s)", path,
                            u->name, shape_str(u, a, sizeof a), c->name, *r, b, arch_hint(xl));
    }
    if (f->t[ROLE_ALPHA] && dl_st_numel(f->t[ROLE_ALPHA]) != 1)
        return dl_error_set("%s: %s has shape %s, expected a scalar", path, f->t[ROLE_ALPHA]->name,
                            shape_str(f->t[ROLE_ALPHA], a, sizeof a));
    return DL_OK;
}

/* Alphas from diffusers' "lora_adapter_metadata" (LoraConfig per prefix), or 0 when absent. */
static float peft_alpha(const cJSON *meta, const dl_lora_module *c)
{
    if (!meta) return 0;
    const char *pre = dl_lora_part_prefix(c->part);
    char key[64];
    snprintf(key, sizeof key, "%s.alpha_pattern", pre);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (cJSON_IsObject(pat)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, pat) { /* a pattern matches the name or a dotted suffix of it;
                                          "^name" only the whole name */
            const char *ps = it->string;
            int anchored = ps[0] == '^';
            ps += anchored;
            size_t n = strlen(c->name), m = strlen(ps);
            if (cJSON_IsNumber(it) && m <= n && !strcmp(c->name + n - m, ps) &&
                (m == n || (!anchored && c->name[n - m - 1] == '.')))
                return (float)it->valuedouble;
        }
    }
    snprintf(key, sizeof key, "%s.lora_alpha", pre);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(meta, key);
    return cJSON_IsNumber(a) ? (float)a->valuedouble : 0;
}

/* Read A (file OIHW -> danlu [r, k, k, in]), B and alpha of one module into m. */
static int read_module(const dl_st_file *f, const found *fd, dl_lora_module *m, const cJSON *meta, int peft)
{
    const int r = m->lora.r, k = m->k, in = m->in;
    const int64_t na = (int64_t)r * k * k * in;
    float *tmp = malloc((size_t)na * sizeof(float));
    if (!tmp) return dl_error_set("%s: out of memory reading the LoRA", f->path);
    if (dl_st_read_f32(f, fd->t[ROLE_DOWN], tmp) != DL_OK) {
        free(tmp);
        return DL_ERR;
    }
    for (int o = 0; o < r; o++)
        for (int c = 0; c < in; c++)
            for (int kh = 0; kh < k; kh++)
                for (int kw = 0; kw < k; kw++)
                    m->lora.A[(((int64_t)o * k + kh) * k + kw) * in + c] = tmp[(((int64_t)o * in + c) * k + kh) * k + kw];
    free(tmp);
    DL_TRY(dl_st_read_f32(f, fd->t[ROLE_UP], m->lora.B));
    float alpha = (float)r;
    if (fd->t[ROLE_ALPHA]) DL_TRY(dl_st_read_f32(f, fd->t[ROLE_ALPHA], &alpha));
    else if (peft) {
        float a = peft_alpha(meta, m);
        if (a > 0) alpha = a;
    }
    if (!(alpha > 0) && !(alpha < 0)) alpha = (float)r; /* 0 or NaN: sd-scripts takes alpha = r for 0 */
    m->alpha = alpha;
    return DL_OK;
}

/* The architecture a file's metadata names (sd-scripts' ss_base_model_version, the model spec's
 * modelspec.architecture): 1 SDXL, 0 SD 1.x/2.x, -1 none said; *what gets the key and value. */
static int meta_arch(const dl_st_file *f, char *what, size_t cap)
{
    const char *v = dl_st_meta(f, "ss_base_model_version");
    if (v && (!strncmp(v, "sdxl", 4) || !strncmp(v, "sd_v1", 5) || !strncmp(v, "sd_v2", 5))) {
        snprintf(what, cap, "ss_base_model_version %s", v);
        return !strncmp(v, "sdxl", 4);
    }
    v = dl_st_meta(f, "modelspec.architecture");
    if (v && (!strncmp(v, "stable-diffusion-xl-v1", 22) || !strncmp(v, "stable-diffusion-v1", 19) ||
              !strncmp(v, "stable-diffusion-v2", 19))) {
        snprintf(what, cap, "modelspec.architecture %s", v);
        return !strncmp(v, "stable-diffusion-xl", 19);
    }
    return -1;
}

/* Which architecture a file is for: what its metadata says (sd-scripts and danlu write it), and
 * its text-encoder keys: SDXL files name a second text encoder (kohya lora_te1_ / lora_te2_,
 * diffusers text_encoder_2.), SD 1.x/2.x kohya files have lora_te_. DL_ERR naming the key when
 * the file is for the other architecture than the model. */
static int check_arch(const dl_st_file *f, const cand_set *cs)
{
    char what[160];
    const int file_xl = meta_arch(f, what, sizeof what);
    if (file_xl >= 0 && file_xl != cs->xl)
        return dl_error_set("%s: a LoRA for %s (its metadata: %s), but the model is %s", f->path,
                            file_xl ? "SDXL" : "SD 1.x/2.x", what, cs->xl ? "SDXL" : "SD 1.x/2.x");
    const char *xl_key = NULL, *sd_key = NULL;
    for (int t = 0; t < f->n_tensors; t++) {
        const char *k = f->tensors[t].name;
        if (!xl_key && (!strncmp(k, "lora_te1_", 9) || !strncmp(k, "lora_te2_", 9) || !strncmp(k, "text_encoder_2.", 15)))
            xl_key = k;
        if (!sd_key && !strncmp(k, "lora_te_", 8)) sd_key = k;
    }
    if (cs->xl && sd_key && !xl_key)
        return dl_error_set("%s: a LoRA for SD 1.x/2.x (its text-encoder key %s; SDXL LoRAs name their text "
                            "encoders lora_te1_ / lora_te2_), but the model is SDXL",
                            f->path, sd_key);
    if (!cs->xl && xl_key && !sd_key)
        return dl_error_set("%s: a LoRA for SDXL (%s is for a second text encoder), but the model is SD 1.x/2.x",
                            f->path, xl_key);
    return DL_OK;
}

/* Match every key of f against cs; *fd [cs->n] receives the tensors. */
static int scan(const dl_st_file *f, const cand_set *cs, found *fd, dl_lora_report *rep, int *n_mod)
{
    memset(rep, 0, sizeof *rep);
    rep->n_keys = f->n_tensors;
    for (int t = 0; t < f->n_tensors; t++) {
        const dl_st_tensor *ts = &f->tensors[t];
        int role, peft;
        int i = match_key(cs, ts->name, &role, &peft);
        if (i < 0) {
            size_t stem;
            if (ends(ts->name, ".lora_mid.weight", &stem) || ends(ts->name, ".dora_scale", &stem))
                return dl_error_set("%s: %s: LyCORIS CP/Tucker LoCon (lora_mid) and DoRA (dora_scale) adapters are "
                                    "not supported; applying the rest would give wrong images",
                                    f->path, ts->name);
            report_unmatched(rep, ts->name);
            continue;
        }
        if (fd[i].t[role])
            return dl_error_set("%s: %s and %s are the same weight of module %s", f->path, fd[i].t[role]->name,
                                ts->name, cs->c[i].kohya);
        fd[i].t[role] = ts;
        rep->n_matched_keys++;
        if (peft) rep->peft = 1;
        else rep->kohya = 1;
    }
    DL_TRY(check_arch(f, cs));
    *n_mod = 0;
    for (int i = 0; i < cs->n; i++)
        if (fd[i].t[0] || fd[i].t[1] || fd[i].t[2]) (*n_mod)++;
    if (*n_mod == 0) {
        if (rep->n_keys == 0) return dl_error_set("%s: the LoRA file holds no tensors", f->path);
        return dl_error_set("%s: none of its %d keys match a layer of this %s model (first: %s); is it a LoRA for "
                            "another architecture, or a kind danlu does not read (LoHa, LoKr, ...)?",
                            f->path, rep->n_keys, cs->xl ? "SDXL" : "SD 1.x/2.x", rep->unmatched[0]);
    }
    return DL_OK;
}

static cJSON *adapter_meta(const dl_st_file *f)
{
    const char *s = dl_st_meta(f, "lora_adapter_metadata");
    return s ? cJSON_Parse(s) : NULL;
}

/* The other kohya name of each UNet layer: on SD 1.x/2.x the ldm (single-file) path's, as some
 * trainers write them; on SDXL, where sd-scripts' names are the ldm paths, the diffusers path's
 * (diffusers' convert_state_dict_to_kohya, and converters like it). */
static char (*unet_aliases(const dl_model_config *cfg, const dl_lora_module *c, int n))[192]
{
    char(*al)[192] = calloc((size_t)(n > 0 ? n : 1), sizeof *al);
    if (!al) return NULL;
    const int xl = dl_lora_cfg_is_xl(cfg);
    for (int i = 0; i < n; i++) {
        if (c[i].part != DL_LORA_UNET) continue;
        if (xl) {
            dl_lora_kohya_name(DL_LORA_UNET, c[i].name, al[i], sizeof al[i]);
            continue;
        }
        char w[200], nm[192];
        dl_ckpt_key key;
        static const char pre[] = "model.diffusion_model.";
        snprintf(w, sizeof w, "%s.weight", c[i].name);
        if (dl_ckpt_map_single(cfg, DL_TEXT_HF, DL_PART_UNET, w, &key) != DL_OK) continue;
        const char *k = key.key;
        if (!strncmp(k, pre, sizeof pre - 1)) k += sizeof pre - 1;
        size_t len = strlen(k);
        if (len > 7 && !strcmp(k + len - 7, ".weight")) len -= 7;
        snprintf(nm, sizeof nm, "%.*s", (int)len, k);
        dl_lora_kohya_name(DL_LORA_UNET, nm, al[i], sizeof al[i]);
    }
    dl_error_clear();
    return al;
}

int dl_lora_load(const char *path, const dl_model_config *cfg, float multiplier, dl_lora_net *net,
                 dl_lora_report *rep_out)
{
    memset(net, 0, sizeof *net);
    dl_lora_report rep_local, *rep = rep_out ? rep_out : &rep_local;
    memset(rep, 0, sizeof *rep);
    dl_st_file f;
    DL_TRY(dl_st_open(&f, path));
    dl_lora_spec all = {.preset = DL_LORA_PRESET_ALL, .unet = 1, .text = 1};
    dl_lora_module *cands = NULL, *mods = NULL;
    found *fd = NULL;
    cJSON *meta = NULL;
    cand_set cs = {0};
    int n = 0, ret = DL_ERR;
    if (dl_lora_targets(cfg, &all, &cands, &n) != DL_OK) goto done;
    cs.c = cands;
    cs.n = n;
    cs.alias = unet_aliases(cfg, cands, n);
    cs.xl = dl_lora_cfg_is_xl(cfg);
    fd = calloc((size_t)(n > 0 ? n : 1), sizeof *fd);
    mods = calloc((size_t)(n > 0 ? n : 1), sizeof *mods);
    if (!fd || !mods || !cs.alias) {
        dl_error_set("%s: out of memory reading the LoRA", path);
        goto done;
    }
    int n_mod;
    if (scan(&f, &cs, fd, rep, &n_mod) != DL_OK) goto done;
    int j = 0;
    for (int i = 0; i < n; i++) {
        if (!fd[i].t[0] && !fd[i].t[1] && !fd[i].t[2]) continue;
        int r;
        if (check_shapes(path, &cands[i], &fd[i], cs.xl, &r) != DL_OK) goto done;
        mods[j] = cands[i];
        mods[j].lora.r = r;
        mods[j].alpha = (float)r;
        j++;
    }
    if (dl_lora_net_from_modules(net, mods, j, multiplier) != DL_OK) goto done;
    meta = adapter_meta(&f);
    for (int i = 0; i < n; i++) {
        if (!fd[i].t[0]) continue;
        dl_lora_module *mm = dl_lora_net_find(net, cands[i].kohya); /* unique: SDXL's text encoders share names */
        DL_ASSERT(mm);
        int peft = strstr(fd[i].t[ROLE_DOWN]->name, ".lora_down.") == NULL;
        if (read_module(&f, &fd[i], mm, meta, peft) != DL_OK) {
            dl_error_prefix("%s: ", path);
            dl_lora_net_free(net);
            goto done;
        }
    }
    dl_lora_net_set_multiplier(net, multiplier);
    rep->n_modules = net->n;
    rep->n_unet = net->n_unet;
    for (int i = net->n_unet; i < net->n; i++) {
        if (net->mods[i].part == DL_LORA_TEXT2) rep->n_text2++;
        else rep->n_text++;
    }
    ret = DL_OK;
done:
    cJSON_Delete(meta);
    free(cs.alias);
    free(cands);
    free(mods);
    free(fd);
    dl_st_close(&f);
    return ret;
}

int dl_lora_load_into(const char *path, dl_lora_net *net, dl_lora_report *rep_out)
{
    dl_lora_report rep_local, *rep = rep_out ? rep_out : &rep_local;
    memset(rep, 0, sizeof *rep);
    dl_st_file f;
    DL_TRY(dl_st_open(&f, path));
    cand_set cs = {.c = net->mods, .n = net->n};
    cs.xl = net->xl;
    for (int i = 0; i < net->n; i++) /* an SDXL network: its kohya names say so */
        if (net->mods[i].part == DL_LORA_TEXT2 || !strncmp(net->mods[i].kohya, "lora_te1_", 9)) cs.xl = 1;
    found *fd = calloc((size_t)(net->n > 0 ? net->n : 1), sizeof *fd);
    cJSON *meta = NULL;
    int ret = DL_ERR, n_mod;
    if (!fd) {
        dl_error_set("%s: out of memory reading the LoRA", path);
        goto done;
    }
    if (scan(&f, &cs, fd, rep, &n_mod) != DL_OK) goto done;
    for (int i = 0; i < net->n; i++) { /* check everything before changing anything */
        if (!fd[i].t[0] && !fd[i].t[1] && !fd[i].t[2]) continue;
        int r;
        if (check_shapes(path, &net->mods[i], &fd[i], cs.xl, &r) != DL_OK) goto done;
        if (r != net->mods[i].lora.r) {
            dl_error_set("%s: %s has rank %d but the network's module %s has rank %d (network_dim / conv_dim "
                         "must match the file)",
                         path, fd[i].t[ROLE_DOWN]->name, r, net->mods[i].kohya, net->mods[i].lora.r);
            goto done;
        }
    }
    meta = adapter_meta(&f);
    for (int i = 0; i < net->n; i++) {
        if (!fd[i].t[0]) continue;
        dl_lora_module *m = &net->mods[i];
        DL_ASSERT(!m->lora.merged);
        int peft = strstr(fd[i].t[ROLE_DOWN]->name, ".lora_down.") == NULL;
        if (read_module(&f, &fd[i], m, meta, peft) != DL_OK) {
            dl_error_prefix("%s: ", path);
            goto done;
        }
        m->lora.scale = m->alpha / (float)m->lora.r * net->multiplier;
        rep->n_modules++;
        if (m->part == DL_LORA_UNET) rep->n_unet++;
        else if (m->part == DL_LORA_TEXT) rep->n_text++;
        else rep->n_text2++;
    }
    ret = DL_OK;
done:
    cJSON_Delete(meta);
    free(fd);
    dl_st_close(&f);
    return ret;
}

void dl_lora_report_print(const dl_lora_report *rep, const char *path)
{
    char te2[48] = "";
    if (rep->n_text2) snprintf(te2, sizeof te2, ", %d text encoder 2", rep->n_text2);
    fprintf(stderr, "%s: %d LoRA modules (%d UNet, %d text encoder%s) from %d of %d keys (%s%s%s)\n", path,
            rep->n_modules, rep->n_unet, rep->n_text, te2, rep->n_matched_keys, rep->n_keys,
            rep->kohya ? "kohya" : "", rep->kohya && rep->peft ? " + " : "", rep->peft ? "diffusers/PEFT" : "");
    if (rep->n_unmatched) {
        fprintf(stderr, "%s: %d keys matched no layer of the model:", path, rep->n_unmatched);
        for (int i = 0; i < rep->n_kinds; i++) fprintf(stderr, "%s %d x %s", i ? "," : "", rep->kind_count[i], rep->kind[i]);
        fprintf(stderr, " (first: %s)\n", rep->unmatched[0]);
    }
}
