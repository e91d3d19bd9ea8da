/* ckpt_tools.c - bake LoRAs into checkpoints and convert checkpoints (layouts, dtypes). */
#define _XOPEN_SOURCE 700
#include "lora/ckpt_tools.h"
#include "core/error.h"
#include "lora/lora_io.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ output files */

typedef struct otensor {
    char key[256];
    dl_dtype dtype;
    int ndim;
    int64_t shape[DL_MAX_DIMS];
    const void *data;     /* raw bytes in dtype (into a mapping, or owned) */
    void *owned;
} otensor;

typedef struct ofile {
    char rel[128];        /* "" for a single file, else "unet/diffusion_pytorch_model.safetensors", ... */
    otensor *t;
    int n, cap;
    const dl_st_file *meta_src; /* metadata copied from here (may be NULL) */
} ofile;

static otensor *ofile_add(ofile *f, const char *key)
{
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 256;
        otensor *t = realloc(f->t, (size_t)cap * sizeof *t);
        if (!t) return NULL;
        f->t = t;
        f->cap = cap;
    }
    otensor *o = &f->t[f->n++];
    memset(o, 0, sizeof *o);
    snprintf(o->key, sizeof o->key, "%s", key);
    return o;
}

static otensor *ofile_find(ofile *f, const char *key)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].key, key)) return &f->t[i];
    return NULL;
}

static void ofile_free(ofile *f)
{
    for (int i = 0; i < f->n; i++) free(f->t[i].owned);
    free(f->t);
    memset(f, 0, sizeof *f);
}

static int is_float(dl_dtype t)
{
    return t == DL_F32 || t == DL_F16 || t == DL_BF16 || t == DL_F64;
}

static int64_t numel_of(int ndim, const int64_t *s)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= s[i];
    return n;
}

/* Write f to path with every float tensor in dtype (-1: as it is). */
static int ofile_save(const ofile *f, const char *path, int dtype, const char *const *extra, int n_extra)
{
    dl_st_entry *e = calloc((size_t)f->n + 1, sizeof *e);
    void **conv = calloc((size_t)f->n + 1, sizeof *conv);
    int nm = f->meta_src ? f->meta_src->n_meta : 0, ret = DL_ERR, k = 0;
    const char **meta = calloc((size_t)(nm + n_extra + 1) * 2, sizeof *meta);
    if (!e || !conv || !meta) {
        dl_error_set("%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < f->n; i++) {
        const otensor *t = &f->t[i];
        e[i].name = t->key;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
        e[i].dtype = t->dtype;
        e[i].data = t->data;
        if (dtype >= 0 && is_float(t->dtype) && t->dtype != (dl_dtype)dtype) {
            const size_t n = (size_t)numel_of(t->ndim, t->shape);
            float *tmp = malloc((n ? n : 1) * sizeof *tmp);
            conv[i] = malloc((n ? n : 1) * dl_dtype_size((dl_dtype)dtype));
            if (!tmp || !conv[i]) {
                free(tmp);
                dl_error_set("%s: out of memory converting %s", path, t->key);
                goto done;
            }
            DL_ASSERT(dl_convert_to_f32(tmp, t->data, t->dtype, n) == 0);
            DL_ASSERT(dl_convert_from_f32(conv[i], (dl_dtype)dtype, tmp, n) == 0);
            free(tmp);
            e[i].dtype = (dl_dtype)dtype;
            e[i].data = conv[i];
        }
    }
    for (int i = 0; i < nm; i++) {
        int replaced = 0;
        for (int j = 0; j < n_extra; j++) replaced |= !strcmp(extra[2 * j], f->meta_src->meta_keys[i]);
        if (replaced) continue;
        meta[2 * k] = f->meta_src->meta_keys[i];
        meta[2 * k + 1] = f->meta_src->meta_vals[i];
        k++;
    }
    for (int j = 0; j < n_extra; j++, k++) meta[2 * k] = extra[2 * j], meta[2 * k + 1] = extra[2 * j + 1];
    ret = dl_st_save(path, e, f->n, meta, k);
done:
    for (int i = 0; i < f->n && conv; i++) free(conv[i]);
    free(conv);
    free(meta);
    free(e);
    return ret;
}

/* ------------------------------------------------------------------ folders */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int mkdirs_for(const char *path)
{
    char buf[8192];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return dl_error_set("%.200s...: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return dl_error_set("%s: cannot create folder (%s)", buf, strerror(errno));
        *p = '/';
    }
    return DL_OK;
}

static int copy_file(const char *src, const char *dst)
{
    FILE *in = fopen(src, "rb");
    if (!in) return dl_error_set("%s: cannot read (%s)", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return dl_error_set("%s: cannot create (%s)", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    int bad = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) bad |= fwrite(buf, 1, n, out) != n;
    bad |= ferror(in);
    fclose(in);
    if (fclose(out) != 0 || bad) return dl_error_set("%s: write failed (disk full?)", dst);
    return DL_OK;
}

/* Copy every regular file under src/rel into dst/rel except the weight files we write. */
static int copy_tree(const char *src, const char *dst, const char *rel, const char *const *skip, int n_skip)
{
    char sp[8192], dp[8192];
    snprintf(sp, sizeof sp, "%s%s%s", src, *rel ? "/" : "", rel);
    DIR *d = opendir(sp);
    if (!d) return dl_error_set("%s: cannot list (%s)", sp, strerror(errno));
    struct dirent *de;
    int ret = DL_OK;
    while (ret == DL_OK && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char r2[1024];
        snprintf(r2, sizeof r2, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
        snprintf(sp, sizeof sp, "%s/%s", src, r2);
        snprintf(dp, sizeof dp, "%s/%s", dst, r2);
        struct stat st;
        if (stat(sp, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (mkdir(dp, 0755) != 0 && errno != EEXIST) ret = dl_error_set("%s: cannot create folder (%s)", dp, strerror(errno));
            else ret = copy_tree(src, dst, r2, skip, n_skip);
        } else if (S_ISREG(st.st_mode)) {
            int sk = 0;
            for (int i = 0; i < n_skip; i++) sk |= !strcmp(skip[i], r2);
            if (!sk) ret = copy_file(sp, dp);
        }
    }
    closedir(d);
    return ret;
}

static int write_text(const char *path, char *text)
{
    if (!text) return dl_error_set("%s: out of memory", path);
    FILE *fp = fopen(path, "wb");
    int bad = !fp;
    if (fp) {
        size_t n = strlen(text);
        bad = fwrite(text, 1, n, fp) != n || fputc('\n', fp) == EOF;
        bad |= fclose(fp) != 0;
    }
    free(text);
    return bad ? dl_error_set("%s: write failed", path) : DL_OK;
}

/* Write a diffusers folder: files[0..n) under out (built in a temporary folder, renamed into
 * place); src_dir (may be NULL) has its other files copied; cfg (may be NULL) writes config.json
 * files for a folder made from a single file. */
static int save_folder_ex(const char *out, ofile *files, int n, int dtype, const char *src_dir,
                          const dl_model_config *cfg, const char *tok_dir, const char *const *extra, int n_extra,
                          int replace);

static int save_folder(const char *out, ofile *files, int n, int dtype, const char *src_dir, const dl_model_config *cfg,
                       const char *const *extra, int n_extra)
{
    return save_folder_ex(out, files, n, dtype, src_dir, cfg, NULL, extra, n_extra, 0);
}

/* save_folder with a tokenizer folder copied in as tokenizer/ (tok_dir, may be NULL), and, with
 * replace, an existing out replaced once the new folder is complete (renamed away, then removed). */
static int save_folder_ex(const char *out, ofile *files, int n, int dtype, const char *src_dir,
                          const dl_model_config *cfg, const char *tok_dir, const char *const *extra, int n_extra,
                          int replace)
{
    struct stat st;
    const int exists = stat(out, &st) == 0;
    if (exists && (!replace || !S_ISDIR(st.st_mode)))
        return dl_error_set("%s: already exists (%s)", out, replace ? "not a folder" : "a folder is never overwritten");
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", out, (int)getpid()) >= (int)sizeof tmp) return dl_error_set("%.200s...: path too long", out);
    if (mkdir(tmp, 0755) != 0) return dl_error_set("%s: cannot create folder (%s)", tmp, strerror(errno));
    int ret = DL_OK;
    const char *skip[8];
    for (int i = 0; i < n; i++) skip[i] = files[i].rel;
    if (src_dir) ret = copy_tree(src_dir, tmp, "", skip, n);
    for (int i = 0; i < n && ret == DL_OK; i++) {
        char p[8192];
        if (snprintf(p, sizeof p, "%s/%s", tmp, files[i].rel) >= (int)sizeof p) ret = dl_error_set("%s: path too long", tmp);
        if (ret == DL_OK) ret = mkdirs_for(p);
        if (ret == DL_OK) ret = ofile_save(&files[i], p, dtype, extra, n_extra);
    }
    if (ret == DL_OK && cfg) {
        char p[8192];
        snprintf(p, sizeof p, "%s/scheduler/x", tmp);
        ret = mkdirs_for(p);
        snprintf(p, sizeof p, "%s/unet/config.json", tmp);
        if (ret == DL_OK) ret = write_text(p, dl_unet_config_to_json(&cfg->unet));
        snprintf(p, sizeof p, "%s/vae/config.json", tmp);
        if (ret == DL_OK) ret = write_text(p, dl_vae_config_to_json(&cfg->vae));
        snprintf(p, sizeof p, "%s/text_encoder/config.json", tmp);
        if (ret == DL_OK) ret = write_text(p, dl_clip_config_to_json(&cfg->text));
        const int xl = cfg->unet.addition_embed != DL_ADD_NONE;
        if (xl && cfg->text2.num_layers) { /* SDXL's second text encoder */
            snprintf(p, sizeof p, "%s/text_encoder_2/config.json", tmp);
            if (ret == DL_OK) ret = mkdirs_for(p);
            if (ret == DL_OK) ret = write_text(p, dl_clip_config_to_json(&cfg->text2));
        }
        snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", tmp);
        if (ret == DL_OK) ret = write_text(p, dl_scheduler_config_to_json(cfg->unet.prediction));
        snprintf(p, sizeof p, "%s/model_index.json", tmp);
        if (ret == DL_OK && !xl)
            ret = write_text(p, strdup(tok_dir ? "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n"
                                                 "  \"feature_extractor\": [null, null],\n"
                                                 "  \"requires_safety_checker\": false,\n"
                                                 "  \"safety_checker\": [null, null],\n"
                                                 "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                                                 "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                                                 "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
                                                 "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                                                 "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}"
                                               : "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n"
                                                 "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                                                 "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                                                 "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                                                 "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}"));
        else if (ret == DL_OK)
            ret = write_text(p, strdup(cfg->text2.num_layers
                                           ? "{\n  \"_class_name\": \"StableDiffusionXLPipeline\",\n"
                                             "  \"force_zeros_for_empty_prompt\": true,\n"
                                             "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                                             "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                                             "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
                                             "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                                             "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}"
                                           : "{\n  \"_class_name\": \"StableDiffusionXLPipeline\",\n"
                                             "  \"force_zeros_for_empty_prompt\": true,\n"
                                             "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                                             "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                                             "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                                             "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}"));
    }
    if (ret == DL_OK && tok_dir) {
        char p[8192];
        snprintf(p, sizeof p, "%s/tokenizer", tmp);
        if (mkdir(p, 0755) != 0) ret = dl_error_set("%s: cannot create folder (%s)", p, strerror(errno));
        else ret = copy_tree(tok_dir, p, "", NULL, 0);
    }
    char old[4200] = "";
    if (ret == DL_OK && exists) { /* the previous folder goes only once the new one is complete */
        snprintf(old, sizeof old, "%s.old-%d", out, (int)getpid());
        if (rename(out, old) != 0) ret = dl_error_set("%s: cannot move the previous folder away (%s)", out, strerror(errno));
    }
    if (ret == DL_OK && rename(tmp, out) != 0) {
        ret = dl_error_set("%s: cannot rename into place (%s)", out, strerror(errno));
        if (*old) rename(old, out);
    }
    if (ret == DL_OK && *old) rm_tree(old);
    if (ret != DL_OK) rm_tree(tmp);
    return ret;
}

static const char *const k_part_file[DL_PART_COUNT] = {"unet/diffusion_pytorch_model.safetensors",
                                                       "vae/diffusion_pytorch_model.safetensors",
                                                       "text_encoder/model.safetensors",
                                                       "text_encoder_2/model.safetensors"};

/* Every tensor of a source file as an output tensor pointing at its bytes. */
static int copy_all(ofile *o, const dl_st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++) {
        const dl_st_tensor *t = &f->tensors[i];
        otensor *x = ofile_add(o, t->name);
        if (!x) return dl_error_set("out of memory");
        x->dtype = t->dtype;
        x->ndim = t->ndim;
        memcpy(x->shape, t->shape, sizeof x->shape);
        x->data = t->data;
    }
    o->meta_src = f;
    return DL_OK;
}

/* The tensor of diffusers name `name` in ck: file index, the tensor, its row third (-1: all). */
static const dl_st_tensor *locate(const dl_checkpoint *ck, dl_part part, const char *name, int *file, int *split,
                                  int *conv1x1, int *transpose)
{
    *file = ck->part_file[part];
    *split = -1;
    *conv1x1 = 0;
    *transpose = 0;
    const dl_st_file *f = &ck->files[*file];
    if (ck->layout == DL_LAYOUT_SINGLE) {
        dl_ckpt_key k;
        if (dl_ckpt_map_single(&ck->cfg, ck->text_layout, part, name, &k) != DL_OK) return NULL;
        *split = k.split;
        *conv1x1 = k.conv1x1;
        *transpose = k.transpose;
        return dl_st_find(f, k.key);
    }
    const dl_st_tensor *t = dl_st_find(f, name);
    if (!t && (part == DL_PART_TEXT || part == DL_PART_TEXT2) && !strncmp(name, "text_model.", 11))
        t = dl_st_find(f, name + 11);
    return t;
}

/* The [rows, cols] matrix of es-byte elements at src transposed into a new buffer. */
static void *transposed(const void *src, int64_t rows, int64_t cols, size_t es)
{
    uint8_t *d = malloc((size_t)(rows * cols > 0 ? rows * cols : 1) * es);
    if (!d) return NULL;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            memcpy(d + ((size_t)j * (size_t)rows + (size_t)i) * es, (const uint8_t *)src + ((size_t)i * (size_t)cols + (size_t)j) * es, es);
    return d;
}

/* ------------------------------------------------------------------ merge */

int dl_ckpt_merge_loras(const char *model, const dl_lora_weight *loras, int n, const char *out, int dtype, FILE *log)
{
    dl_checkpoint ck;
    const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1};
    DL_TRY(dl_ckpt_open(&ck, model, &copt));
    ofile of[DL_PART_COUNT];
    memset(of, 0, sizeof of);
    int ret = DL_ERR, n_mod = 0;
    for (int f = 0; f < ck.n_files; f++) {
        if (copy_all(&of[f], &ck.files[f]) != DL_OK) goto done;
        if (ck.layout == DL_LAYOUT_DIFFUSERS) snprintf(of[f].rel, sizeof of[f].rel, "%s", ck.file_label[f]);
    }
    for (int l = 0; l < n; l++) {
        dl_lora_net net;
        dl_lora_report rep;
        if (dl_lora_load(loras[l].path, &ck.cfg, loras[l].weight, &net, &rep) != DL_OK) goto done;
        if (log) dl_lora_report_print(&rep, loras[l].path);
        for (int i = 0; i < net.n; i++) {
            const dl_lora_module *m = &net.mods[i];
            char w[200];
            snprintf(w, sizeof w, "%s.weight", m->name);
            const dl_part part = m->part == DL_LORA_UNET ? DL_PART_UNET : m->part == DL_LORA_TEXT ? DL_PART_TEXT
                                                                                                 : DL_PART_TEXT2;
            int fi, split, c11, tr;
            const dl_st_tensor *t = locate(&ck, part, w, &fi, &split, &c11, &tr);
            if (!t) {
                dl_error_set("%s: %s has no weight %s for LoRA module %s", model, dl_part_name(part), w, m->kohya);
                dl_lora_net_free(&net);
                goto done;
            }
            otensor *o = ofile_find(&of[fi], t->name);
            DL_ASSERT(o);
            const int64_t nel = dl_st_numel(t);
            const int k = m->k, r = m->lora.r, in = m->in, rows0 = split >= 0 ? split * m->out : 0;
            if (tr || nel != (int64_t)(split >= 0 ? 3 : 1) * m->out * in * k * k) {
                dl_error_set("%s: %s has %lld values, LoRA module %s needs [%d, %d, %d, %d]", model, t->name,
                             (long long)nel, m->kohya, m->out, in, k, k);
                dl_lora_net_free(&net);
                goto done;
            }
            if (!o->owned) { /* first change of this tensor: an fp32 copy to add into */
                o->owned = malloc((size_t)nel * sizeof(float));
                if (!o->owned || dl_st_read_f32(&ck.files[fi], t, o->owned) != DL_OK) {
                    if (!o->owned) dl_error_set("%s: out of memory", model);
                    dl_lora_net_free(&net);
                    goto done;
                }
                o->data = o->owned;
                o->dtype = DL_F32;
            }
            float *W = (float *)o->owned + (int64_t)rows0 * in * k * k;
            const float s = m->lora.scale;
            /* W [out, in, kh, kw] += s B [out, r] A [r, kh, kw, in] (danlu's layout) */
            for (int oo = 0; oo < m->out; oo++)
                for (int c = 0; c < in; c++)
                    for (int kh = 0; kh < k; kh++)
                        for (int kw = 0; kw < k; kw++) {
                            double acc = 0;
                            for (int j = 0; j < r; j++)
                                acc += (double)m->lora.B[(int64_t)oo * r + j] * m->lora.A[(((int64_t)j * k + kh) * k + kw) * in + c];
                            W[(((int64_t)oo * in + c) * k + kh) * k + kw] += (float)(s * acc);
                        }
            n_mod++;
        }
        dl_lora_net_free(&net);
    }
    /* changed tensors go back to their file's dtype (unless a dtype was asked for) */
    for (int f = 0; f < ck.n_files; f++)
        for (int i = 0; i < of[f].n; i++) {
            otensor *o = &of[f].t[i];
            if (!o->owned) continue;
            const dl_st_tensor *src = dl_st_find(&ck.files[f], o->key);
            dl_dtype want = dtype >= 0 ? (dl_dtype)dtype : src->dtype;
            if (want == DL_F32) continue;
            const size_t nel = (size_t)numel_of(o->ndim, o->shape);
            void *c = malloc(nel * dl_dtype_size(want));
            if (!c) {
                dl_error_set("%s: out of memory", out);
                goto done;
            }
            DL_ASSERT(dl_convert_from_f32(c, want, o->owned, nel) == 0);
            free(o->owned);
            o->owned = c;
            o->data = c;
            o->dtype = want;
        }
    char desc[4096];
    size_t dl = 0;
    dl += (size_t)snprintf(desc, sizeof desc, "[");
    for (int l = 0; l < n && dl < sizeof desc; l++) {
        const char *b = strrchr(loras[l].path, '/');
        dl += (size_t)snprintf(desc + dl, sizeof desc - dl, "%s{\"lora\": \"%s\", \"weight\": %g}", l ? ", " : "",
                               b ? b + 1 : loras[l].path, (double)loras[l].weight);
    }
    if (dl < sizeof desc) snprintf(desc + dl, sizeof desc - dl, "]");
    const char *extra[2] = {"danlu_merged_loras", desc};
    if (ck.layout == DL_LAYOUT_SINGLE) ret = ofile_save(&of[0], out, dtype, extra, 1);
    else ret = save_folder(out, of, ck.n_files, dtype, ck.path, NULL, extra, 1);
    if (ret == DL_OK && log)
        fprintf(log, "%s: %d LoRA modules from %d file%s baked into %s\n", out, n_mod, n, n == 1 ? "" : "s", model);
done:
    for (int f = 0; f < DL_PART_COUNT; f++) ofile_free(&of[f]);
    dl_ckpt_close(&ck);
    return ret;
}

/* ------------------------------------------------------------------ convert */

typedef struct conv_ctx {
    dl_checkpoint *ck;
    ofile *of;                 /* per output file */
    int to_single;
    dl_text_layout tl;         /* of a single-file output */
    dl_model_config *ocfg;     /* of a single-file output */
    int n_used;
    dl_weight_fill_fn fill;    /* replacement weights (NULL: none) */
    void *fill_user;
} conv_ctx;

static int k_split_of(conv_ctx *c, dl_part part, const char *name);
static int conv_put(conv_ctx *c, dl_part part, const char *name, int ndim, const int64_t *shape, const uint8_t *src,
                    dl_dtype sdt, void *owned);

static int conv_one(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    conv_ctx *c = user;
    int fi, split, c11, tr;
    const dl_st_tensor *t = locate(c->ck, part, name, &fi, &split, &c11, &tr);
    if (!t) return dl_error_set("%s: no tensor for %s weight %s", c->ck->path, dl_part_name(part), name);
    const size_t tes = dl_dtype_size(t->dtype);
    const int64_t nel0 = numel_of(ndim, shape);
    if (nel0 * (split >= 0 ? 3 : 1) != dl_st_numel(t))
        return dl_error_set("%s: %s holds %lld values, %s needs %lld", c->ck->path, t->name, (long long)dl_st_numel(t), name,
                            (long long)nel0);
    const uint8_t *src = (const uint8_t *)t->data + (split >= 0 ? (size_t)split * (size_t)nel0 * tes : 0);
    dl_dtype sdt = t->dtype;
    void *own = NULL; /* values in the model's orientation (a replacement, or the source turned around),
                         owned by the output tensor or freed below */
    if (c->fill) {
        float *f = malloc((size_t)(nel0 > 0 ? nel0 : 1) * sizeof(float));
        if (!f) return dl_error_set("out of memory");
        const int r = c->fill(c->fill_user, part, name, ndim, shape, f);
        if (r < 0) { free(f); return DL_ERR; }
        if (r == 0) free(f);
        else own = f, src = (const uint8_t *)f, sdt = DL_F32;
    }
    if (tr && !own) { /* stored [in, out] in the single file (SDXL's text_projection): [out, in] from here */
        if (ndim != 2 || !(own = transposed(src, shape[1], shape[0], tes)))
            return dl_error_set("%s: cannot transpose %s", c->ck->path, t->name);
        src = own;
    }
    c->n_used += split <= 0; /* a fused q/k/v tensor is one source tensor */
    if (!c->to_single || k_split_of(c, part, name) < 0) { /* one output tensor: it takes own */
        int rc = conv_put(c, part, name, ndim, shape, src, sdt, own);
        if (rc != DL_OK) free(own);
        return rc;
    }
    int rc = conv_put(c, part, name, ndim, shape, src, sdt, NULL);
    free(own);
    return rc;
}

/* The row third a single-file output keeps name's values in (-1: a tensor of its own). */
static int k_split_of(conv_ctx *c, dl_part part, const char *name)
{
    dl_ckpt_key k;
    return dl_ckpt_map_single(c->ocfg, c->tl, part, name, &k) == DL_OK ? k.split : -1;
}

/* Put name's values (src: numel of shape in dtype sdt, in the model's orientation; owned: handed
 * to the output tensor, or NULL) into the output, under its own name (diffusers) or its
 * single-file key. */
static int conv_put(conv_ctx *c, dl_part part, const char *name, int ndim, const int64_t *shape, const uint8_t *src,
                    dl_dtype sdt, void *owned)
{
    const size_t es = dl_dtype_size(sdt);
    const int64_t nel = numel_of(ndim, shape);
    if (!c->to_single) { /* diffusers: one tensor per name, shape as the model asks */
        ofile *o = &c->of[part];
        otensor *x = ofile_add(o, name);
        if (!x) return dl_error_set("out of memory");
        x->dtype = sdt;
        x->ndim = ndim;
        memcpy(x->shape, shape, sizeof *shape * (size_t)ndim); /* shape has ndim entries (emitters pass 4) */
        x->data = src;
        x->owned = owned;
        return DL_OK;
    }
    dl_ckpt_key k;
    DL_TRY(dl_ckpt_map_single(c->ocfg, c->tl, part, name, &k));
    ofile *o = &c->of[0];
    otensor *x = ofile_find(o, k.key);
    if (k.split < 0) {
        if (x) return dl_error_set("%s: two tensors map to %s", c->ck->path, k.key);
        x = ofile_add(o, k.key);
        if (!x) return dl_error_set("out of memory");
        x->dtype = sdt;
        x->ndim = ndim;
        memcpy(x->shape, shape, sizeof *shape * (size_t)ndim); /* shape has ndim entries (emitters pass 4) */
        if (k.conv1x1 && ndim == 2) x->ndim = 4, x->shape[2] = 1, x->shape[3] = 1;
        x->data = src;
        if (k.transpose) { /* the single file stores this [out, in] weight as [in, out] */
            void *t2 = ndim == 2 ? transposed(src, shape[0], shape[1], es) : NULL;
            if (!t2) return dl_error_set("%s: cannot transpose %s", c->ck->path, k.key);
            free(owned); /* the output keeps the turned copy */
            owned = t2;
            x->data = t2;
            x->shape[0] = shape[1], x->shape[1] = shape[0];
        }
        x->owned = owned;
        return DL_OK;
    }
    if (!x) { /* a fused q/k/v tensor: three thirds gathered into one buffer */
        x = ofile_add(o, k.key);
        if (!x || !(x->owned = malloc((size_t)(3 * nel) * es))) return dl_error_set("out of memory");
        x->dtype = sdt;
        x->ndim = ndim;
        memcpy(x->shape, shape, sizeof *shape * (size_t)ndim); /* shape has ndim entries (emitters pass 4) */
        x->shape[0] *= 3;
        x->data = x->owned;
    }
    if (x->dtype != sdt) return dl_error_set("%s: the q, k and v parts of %s differ in dtype", c->ck->path, k.key);
    memcpy((uint8_t *)x->owned + (size_t)k.split * (size_t)nel * es, src, (size_t)nel * es);
    return DL_OK;
}

/* ck's UNet, VAE and text-encoder weights through dl_model_weights into layout (the mapping of a
 * change of layout), fill replacing those it says; metadata: ck's (keep_meta) and extra. total:
 * the source's tensor count (for the log line). A folder made without keep_meta gets ck's
 * tokenizer/ (when it has one). */
static int write_mapped(dl_checkpoint *ck, const char *out, int layout, int dtype, dl_weight_fill_fn fill, void *user,
                        int keep_meta, const char *const *extra, int n_extra, int replace, int total, FILE *log)
{
    ofile of[DL_PART_COUNT];
    memset(of, 0, sizeof of);
    int ret = DL_ERR;
    dl_model_config ocfg = ck->cfg;
    conv_ctx c = {.ck = ck, .of = of, .to_single = layout == DL_LAYOUT_SINGLE, .ocfg = &ocfg, .fill = fill,
                  .fill_user = user};
    c.tl = ck->sdxl ? DL_TEXT_SDXL : ck->cfg.text.act == DL_ACT_GELU ? DL_TEXT_OPENCLIP : DL_TEXT_HF;
    const int nparts = ck->cfg.text2.num_layers ? DL_PART_COUNT : DL_PART_TEXT2; /* the parts the model has */
    for (int p = 0; p < nparts; p++) {
        if (!c.to_single) snprintf(of[p].rel, sizeof of[p].rel, "%s", k_part_file[p]);
        if (dl_model_weights(&ck->cfg, (dl_part)p, conv_one, &c) != DL_OK) goto done;
    }
    if (c.to_single) {
        of[0].meta_src = keep_meta ? &ck->files[ck->part_file[DL_PART_UNET]] : NULL;
        ret = ofile_save(&of[0], out, dtype, extra, n_extra); /* atomic: a file is always replaced */
    } else {
        of[0].meta_src = keep_meta ? &ck->files[0] : NULL;
        ret = save_folder_ex(out, of, nparts, dtype, NULL, &ck->cfg, keep_meta ? NULL : ck->tokenizer_dir,
                             extra, n_extra, replace);
    }
    if (ret == DL_OK && log)
        fprintf(log, "%s: %d weights written (%s layout); %d tensors of the source belong to no part and were left out\n",
                out, c.n_used, c.to_single ? "single-file" : "diffusers", total - c.n_used);
done:
    for (int f = 0; f < DL_PART_COUNT; f++) ofile_free(&of[f]);
    return ret;
}

int dl_ckpt_write(dl_checkpoint *ck, const char *out, int layout, int dtype, dl_weight_fill_fn fill, void *user,
                  const char *const *meta, int n_meta, int replace, FILE *log)
{
    int total = 0;
    for (int f = 0; f < ck->n_files; f++) total += ck->files[f].n_tensors;
    return write_mapped(ck, out, layout, dtype, fill, user, 0, meta, n_meta, replace, total, log);
}

int dl_ckpt_convert(const char *in, const char *out, int layout, int dtype, FILE *log)
{
    dl_checkpoint ck;
    const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1};
    DL_TRY(dl_ckpt_open(&ck, in, &copt));
    if (layout < 0) layout = (int)ck.layout;
    ofile of[DL_PART_COUNT];
    memset(of, 0, sizeof of);
    int ret = DL_ERR, total = 0;
    for (int f = 0; f < ck.n_files; f++) total += ck.files[f].n_tensors;
    if (layout == (int)ck.layout) { /* dtype only: every tensor, every file */
        for (int f = 0; f < ck.n_files; f++) {
            if (copy_all(&of[f], &ck.files[f]) != DL_OK) goto done;
            if (ck.layout == DL_LAYOUT_DIFFUSERS) snprintf(of[f].rel, sizeof of[f].rel, "%s", ck.file_label[f]);
        }
        if (ck.layout == DL_LAYOUT_SINGLE) ret = ofile_save(&of[0], out, dtype, NULL, 0);
        else ret = save_folder(out, of, ck.n_files, dtype, ck.path, NULL, NULL, 0);
        if (ret == DL_OK && log) fprintf(log, "%s: %d tensors written\n", out, total);
        goto done;
    }
    ret = write_mapped(&ck, out, layout, dtype, NULL, NULL, 1, NULL, 0, 0, total, log);
done:
    for (int f = 0; f < DL_PART_COUNT; f++) ofile_free(&of[f]);
    dl_ckpt_close(&ck);
    return ret;
}
