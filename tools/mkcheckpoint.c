/* mkcheckpoint.c - danlu-mkcheckpoint: write a random-weight SD 1.x/2.x or SDXL checkpoint for a
 * config, in the single-file (original SD / SGM) or diffusers-folder layout, streaming so
 * full-size models need only a few MB of memory. For tests and benchmarks; the weights mean
 * nothing. SDXL checkpoints hold both text encoders (the second with its projection). */
#include "core/dtype.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/config.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TENSORS 8192
#define CHUNK (1 << 20) /* elements generated per step */

typedef struct wtensor {
    char key[256];
    int ndim;
    int64_t shape[4];
    char kind;          /* 'w' fan-in uniform, 'n' norm weight (ones), 'b' bias (zeros+small), 'e' embedding */
    uint64_t begin, end;
} wtensor;

typedef struct plan {
    wtensor *t;
    int n;
    dl_ckpt_layout layout;
    dl_text_layout tl;
    const dl_model_config *cfg;
    dl_dtype dtype;
} plan;

static int64_t numel(const wtensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static char kind_of(const char *name, int ndim)
{
    const char *dot = strrchr(name, '.');
    const char *last = dot ? dot + 1 : name;
    if (strstr(name, "token_embedding") || strstr(name, "position_embedding") || !strcmp(last, "positional_embedding"))
        return 'e';
    if (!strcmp(last, "bias") || strstr(last, "in_proj_bias")) return 'b';
    if (ndim == 1) return 'n';
    return 'w';
}

static int add_tensor(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    plan *p = user;
    if (p->n >= MAX_TENSORS) return dl_error_set("too many tensors");
    wtensor *t = &p->t[p->n];
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    if (p->layout == DL_LAYOUT_SINGLE) {
        dl_ckpt_key k;
        DL_TRY(dl_ckpt_map_single(p->cfg, p->tl, part, name, &k));
        if (k.split > 0) return DL_OK; /* k and v live in the fused tensor emitted for q */
        if (k.split == 0) t->shape[0] *= 3;
        if (k.transpose) { /* OpenCLIP's text_projection: [in, out] */
            t->shape[0] = shape[1];
            t->shape[1] = shape[0];
        }
        if (k.conv1x1) {
            t->ndim = 4;
            t->shape[2] = t->shape[3] = 1;
        }
        snprintf(t->key, sizeof t->key, "%s", k.key);
    } else {
        snprintf(t->key, sizeof t->key, "%s", name);
    }
    t->kind = kind_of(t->key, t->ndim);
    p->n++;
    return DL_OK;
}

/* splitmix64 */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Write one file: header, then each tensor generated in chunks. Atomic (temporary + rename). */
static int write_file(const char *path, wtensor *ts, int n, dl_dtype dtype, uint64_t seed)
{
    const size_t es = dl_dtype_size(dtype);
    uint64_t off = 0;
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "generator", "danlu-mkcheckpoint (random weights)");
    cJSON_AddItemToObject(h, "__metadata__", meta);
    for (int i = 0; i < n; i++) {
        ts[i].begin = off;
        off += (uint64_t)numel(&ts[i]) * es;
        ts[i].end = off;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "dtype", dl_dtype_name(dtype));
        cJSON *sh = cJSON_CreateArray();
        for (int d = 0; d < ts[i].ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)ts[i].shape[d]));
        cJSON_AddItemToObject(e, "shape", sh);
        cJSON *o = cJSON_CreateArray();
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)ts[i].begin));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)ts[i].end));
        cJSON_AddItemToObject(e, "data_offsets", o);
        cJSON_AddItemToObject(h, ts[i].key, e);
    }
    char *js = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!js) return dl_error_set("%s: out of memory", path);
    size_t hl = strlen(js), padded = (hl + 7) & ~(size_t)7;

    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(js);
        return dl_error_set("%s: cannot create (%s)", tmp, strerror(errno));
    }
    setvbuf(fp, NULL, _IOFBF, 1 << 22);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int bad = fwrite(len8, 1, 8, fp) != 8 || fwrite(js, 1, hl, fp) != hl;
    for (size_t i = hl; i < padded && !bad; i++) bad = fputc(' ', fp) == EOF;
    free(js);
    float *buf = malloc(CHUNK * sizeof *buf);
    void *out = malloc(CHUNK * es);
    if (!buf || !out) bad = 1;
    for (int i = 0; i < n && !bad; i++) {
        const wtensor *t = &ts[i];
        int64_t total = numel(t), fan_in = 1;
        for (int d = 1; d < t->ndim; d++) fan_in *= t->shape[d];
        const float bound = t->kind == 'w' ? 1.0f / sqrtf((float)fan_in) : t->kind == 'e' ? 0.035f : 0.02f;
        uint64_t s = seed ^ fnv1a(t->key);
        for (int64_t b = 0; b < total && !bad; b += CHUNK) {
            int64_t m = total - b < CHUNK ? total - b : CHUNK;
            for (int64_t j = 0; j < m; j++) {
                float u = (float)((mix(&s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; /* [-1, 1) */
                buf[j] = t->kind == 'n' ? 1.0f + 0.1f * u : bound * u;
            }
            dl_convert_from_f32(out, dtype, buf, (size_t)m);
            bad = fwrite(out, es, (size_t)m, fp) != (size_t)m;
        }
    }
    free(buf);
    free(out);
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) bad = 1;
    if (fclose(fp) != 0) bad = 1;
    if (bad) {
        int e = errno;
        unlink(tmp);
        return dl_error_set("%s: write failed (%s)", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return dl_error_set("%s: cannot rename into place (%s)", path, strerror(e));
    }
    return DL_OK;
}

static int write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return dl_error_set("%s: cannot create (%s)", path, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, fp) != n || fputc('\n', fp) == EOF;
    if (fclose(fp) != 0 || bad) return dl_error_set("%s: write failed", path);
    return DL_OK;
}

static int write_json(const char *dir, const char *rel, char *text)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    int r = text ? write_text(path, text) : dl_error_set("out of memory");
    free(text);
    return r;
}

static int mkdir_in(const char *dir, const char *sub)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    if (mkdir(path, 0755) != 0) return dl_error_set("%s: cannot create folder (%s)", path, strerror(errno));
    return DL_OK;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: danlu-mkcheckpoint -o OUT [options]\n"
            "Write a random-weight Stable Diffusion checkpoint (for tests and benchmarks).\n"
            "  -o, --out PATH           output .safetensors file (single) or folder (diffusers; must not exist)\n"
            "  --preset NAME            sd15 (default), sd21, sd21-base, sdxl, tiny, tiny-sdxl\n"
            "                           (SDXL: the UNet, VAE and both text encoders)\n"
            "  --unet-config FILE       diffusers unet/config.json (overrides the preset's UNet)\n"
            "  --vae-config FILE        diffusers vae/config.json\n"
            "  --text-config FILE       transformers text_encoder/config.json\n"
            "  --text-config-2 FILE     transformers text_encoder_2/config.json (SDXL)\n"
            "  --layout single|diffusers  (default single)\n"
            "  --text-layout hf|openclip  single-file text encoder keys (default: openclip for GELU\n"
            "                           text encoders, i.e. SD 2.x, else hf; SDXL files always hold\n"
            "                           conditioner.embedders.0.transformer.*)\n"
            "  --dtype fp32|fp16|bf16   (default fp16)\n"
            "  --seed N                 (default 0)\n"
            "  --v-prediction           scheduler config says v_prediction (diffusers layout)\n");
}

int main(int argc, char **argv)
{
    const char *out = NULL, *preset = "sd15", *ucfg = NULL, *vcfg = NULL, *tcfg = NULL, *t2cfg = NULL, *tl_name = NULL;
    dl_ckpt_layout layout = DL_LAYOUT_SINGLE;
    dl_dtype dtype = DL_F16;
    uint64_t seed = 0;
    int vpred = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("-o") || ARG("--out")) out = v;
        else if (ARG("--preset")) preset = v;
        else if (ARG("--unet-config")) ucfg = v;
        else if (ARG("--vae-config")) vcfg = v;
        else if (ARG("--text-config")) tcfg = v;
        else if (ARG("--text-config-2")) t2cfg = v;
        else if (ARG("--text-layout")) tl_name = v;
        else if (ARG("--seed")) seed = strtoull(v, NULL, 0);
        else if (ARG("--layout")) {
            if (!strcmp(v, "single")) layout = DL_LAYOUT_SINGLE;
            else if (!strcmp(v, "diffusers")) layout = DL_LAYOUT_DIFFUSERS;
            else { fprintf(stderr, "danlu-mkcheckpoint: --layout must be single or diffusers\n"); return 2; }
        } else if (ARG("--dtype")) {
            if (!strcmp(v, "fp32")) dtype = DL_F32;
            else if (!strcmp(v, "fp16")) dtype = DL_F16;
            else if (!strcmp(v, "bf16")) dtype = DL_BF16;
            else { fprintf(stderr, "danlu-mkcheckpoint: --dtype must be fp32, fp16 or bf16\n"); return 2; }
        } else if (!strcmp(a, "--v-prediction")) vpred = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else { fprintf(stderr, "danlu-mkcheckpoint: unknown or incomplete argument '%s'\n", a); usage(stderr); return 2; }
#undef ARG
    }
    if (!out) { usage(stderr); return 2; }
    dl_model_config cfg;
    if (dl_model_config_preset(&cfg, preset) != DL_OK || (ucfg && dl_unet_config_load(&cfg.unet, ucfg) != DL_OK) ||
        (vcfg && dl_vae_config_load(&cfg.vae, vcfg) != DL_OK) || (tcfg && dl_clip_config_load(&cfg.text, tcfg) != DL_OK) ||
        (t2cfg && dl_clip_config_load(&cfg.text2, t2cfg) != DL_OK)) {
        fprintf(stderr, "danlu-mkcheckpoint: %s\n", dl_error_msg());
        return 1;
    }
    if (vpred == 1) cfg.unet.prediction = DL_PRED_V;
    const int xl = cfg.unet.addition_embed != DL_ADD_NONE;
    if (!xl) memset(&cfg.text2, 0, sizeof cfg.text2); /* only SDXL has a second text encoder */
    if (xl && t2cfg && !cfg.text2.projection_dim) {
        fprintf(stderr, "danlu-mkcheckpoint: %s: SDXL's second text encoder is a CLIPTextModelWithProjection\n", t2cfg);
        return 2;
    }
    dl_text_layout tl = xl ? DL_TEXT_SDXL : cfg.text.act == DL_ACT_GELU ? DL_TEXT_OPENCLIP : DL_TEXT_HF;
    if (xl && tl_name) { fprintf(stderr, "danlu-mkcheckpoint: --text-layout does not apply to SDXL\n"); return 2; }
    if (tl_name && !strcmp(tl_name, "hf")) tl = DL_TEXT_HF;
    else if (tl_name && !strcmp(tl_name, "openclip")) tl = DL_TEXT_OPENCLIP;
    else if (tl_name) { fprintf(stderr, "danlu-mkcheckpoint: --text-layout must be hf or openclip\n"); return 2; }

    plan p = {calloc(MAX_TENSORS, sizeof(wtensor)), 0, layout, tl, &cfg, dtype};
    if (!p.t) { fprintf(stderr, "danlu-mkcheckpoint: out of memory\n"); return 1; }
    int rc = DL_OK;
    long long params = 0;
    if (layout == DL_LAYOUT_SINGLE) {
        dl_model_config tcfg_ = cfg;
        if (tl == DL_TEXT_OPENCLIP) tcfg_.text.num_layers++; /* OpenCLIP files hold the layer SD2 skips */
        p.cfg = &tcfg_;
        for (int part = 0; part < DL_PART_COUNT && rc == DL_OK; part++)
            rc = dl_model_weights(&tcfg_, (dl_part)part, add_tensor, &p);
        for (int i = 0; i < p.n; i++) params += numel(&p.t[i]);
        if (rc == DL_OK) rc = write_file(out, p.t, p.n, dtype, seed);
    } else {
        char tmpdir[4200];
        snprintf(tmpdir, sizeof tmpdir, "%s.tmp-%d", out, (int)getpid());
        struct stat st;
        if (stat(out, &st) == 0) rc = dl_error_set("%s: already exists (will not overwrite a folder)", out);
        else if (mkdir(tmpdir, 0755) != 0) rc = dl_error_set("%s: cannot create folder (%s)", tmpdir, strerror(errno));
        static const char *const sub[DL_PART_COUNT] = {"unet", "vae", "text_encoder", "text_encoder_2"};
        static const char *const file[DL_PART_COUNT] = {"unet/diffusion_pytorch_model.safetensors",
                                                        "vae/diffusion_pytorch_model.safetensors",
                                                        "text_encoder/model.safetensors",
                                                        "text_encoder_2/model.safetensors"};
        for (int part = 0; part < DL_PART_COUNT && rc == DL_OK; part++) {
            if (part == DL_PART_TEXT2 && !cfg.text2.num_layers) continue;
            p.n = 0;
            rc = mkdir_in(tmpdir, sub[part]);
            if (rc == DL_OK) rc = dl_model_weights(&cfg, (dl_part)part, add_tensor, &p);
            for (int i = 0; i < p.n; i++) params += numel(&p.t[i]);
            char path[4400];
            snprintf(path, sizeof path, "%s/%s", tmpdir, file[part]);
            if (rc == DL_OK) rc = write_file(path, p.t, p.n, dtype, seed + (uint64_t)part);
        }
        if (rc == DL_OK) rc = write_json(tmpdir, "unet/config.json", dl_unet_config_to_json(&cfg.unet));
        if (rc == DL_OK) rc = write_json(tmpdir, "vae/config.json", dl_vae_config_to_json(&cfg.vae));
        if (rc == DL_OK) rc = write_json(tmpdir, "text_encoder/config.json", dl_clip_config_to_json(&cfg.text));
        if (rc == DL_OK && cfg.text2.num_layers)
            rc = write_json(tmpdir, "text_encoder_2/config.json", dl_clip_config_to_json(&cfg.text2));
        if (rc == DL_OK) rc = mkdir_in(tmpdir, "scheduler");
        if (rc == DL_OK) rc = write_json(tmpdir, "scheduler/scheduler_config.json", dl_scheduler_config_to_json(cfg.unet.prediction));
        if (rc == DL_OK)
            rc = write_json(tmpdir, "model_index.json",
                            strdup(xl ? "{\n  \"_class_name\": \"StableDiffusionXLPipeline\",\n"
                                        "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                                        "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                                        "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
                                        "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                                        "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}"
                                      : "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n"
                                   "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                                   "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                                   "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                                   "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}"));
        if (rc == DL_OK && rename(tmpdir, out) != 0) rc = dl_error_set("%s: cannot rename into place (%s)", out, strerror(errno));
        if (rc != DL_OK) { /* leave nothing half-written behind */
            char cmd[9000];
            snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", tmpdir);
            if (strchr(tmpdir, '\'') == NULL && system(cmd) != 0) fprintf(stderr, "danlu-mkcheckpoint: could not remove %s\n", tmpdir);
        }
    }
    free(p.t);
    if (rc != DL_OK) {
        fprintf(stderr, "danlu-mkcheckpoint: %s\n", dl_error_msg());
        return 1;
    }
    printf("wrote %s: %s layout, %s, %lld parameters%s\n", out, layout == DL_LAYOUT_SINGLE ? "single-file" : "diffusers",
           dl_dtype_name(dtype), params, xl && !cfg.text2.num_layers ? " (SDXL without its second text encoder)" : "");
    return 0;
}
