/* train_sample.c - sd-scripts prompt files and sample images during training. */
#include "train/train_sample.h"

#include "core/error.h"
#include "io/image.h"
#include "sample/pipeline.h"
#include "sample/sampler.h"
#include "sample/sd_models.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* sd-scripts name -> danlu sampler name */
static const char *map_sampler(const char *name)
{
    static const char *const pairs[][2] = {
        {"ddim", "ddim"}, {"euler", "euler"}, {"k_euler", "euler"}, {"euler_a", "euler_a"},
        {"k_euler_a", "euler_a"}, {"heun", "heun"}, {"dpmsolver++", "dpmpp_2m"}, {"dpmsolver", "dpmpp_2m"},
        {"dpmpp_2m", "dpmpp_2m"}, {"dpmpp_2m_karras", "dpmpp_2m_karras"}, {"lcm", "lcm"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++)
        if (!strcmp(pairs[i][0], name)) return pairs[i][1];
    return NULL;
}

int dl_train_sampler_check(const char *name)
{
    if (!map_sampler(name))
        return dl_error_set("sample_sampler: '%s' is not available (ddim, euler, k_euler, euler_a, k_euler_a, heun, "
                            "dpmsolver++, dpmpp_2m, dpmpp_2m_karras, lcm)", name);
    return DL_OK;
}

static void free_one(dl_train_prompt *p)
{
    free(p->prompt);
    free(p->negative);
    free(p->sampler);
    memset(p, 0, sizeof *p);
}

static char *trim_dup(const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s)) { s++; n--; }
    while (n && isspace((unsigned char)s[n - 1])) n--;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

int dl_train_prompt_parse_line(const char *line, dl_train_prompt *p, const char *label)
{
    memset(p, 0, sizeof *p);
    p->width = p->height = 512;
    p->steps = 30;
    p->scale = 7.5;
    p->seed = -1;
    const char *s = line;
    while (isspace((unsigned char)*s)) s++;
    if (!*s || *s == '#') return DL_OK;
    /* split on " --" as sd-scripts does */
    const char *seg = s;
    int first = 1;
    for (;;) {
        const char *next = strstr(seg, " --");
        size_t len = next ? (size_t)(next - seg) : strlen(seg);
        char *part = trim_dup(seg, len);
        if (!part) return dl_error_set("out of memory");
        if (first) {
            p->prompt = part;
            first = 0;
        } else {
            char *sp = part;
            while (*sp && !isspace((unsigned char)*sp)) sp++;
            char *val = sp;
            while (isspace((unsigned char)*val)) val++;
            *sp = 0;
            char *end;
            int bad = 0;
            if (!strcmp(part, "n")) { free(p->negative); p->negative = strdup(val); }
            else if (!strcmp(part, "ss")) { free(p->sampler); p->sampler = strdup(val); bad = !map_sampler(val); }
            else if (!strcmp(part, "w") || !strcmp(part, "h") || !strcmp(part, "s") || !strcmp(part, "d")) {
                errno = 0;
                long long v = strtoll(val, &end, 10);
                bad = end == val || *end || errno || v < 0 || v > 1000000000000LL;
                if (!bad) {
                    if (part[0] == 'w') bad = (p->width = (int)v) < 8 || v > 8192;
                    else if (part[0] == 'h') bad = (p->height = (int)v) < 8 || v > 8192;
                    else if (part[0] == 's') bad = (p->steps = (int)v) < 1 || v > 1000;
                    else p->seed = v;
                }
            } else if (!strcmp(part, "l")) {
                p->scale = strtod(val, &end);
                bad = end == val || *end || p->scale < 0 || p->scale > 100;
            }
            /* other sd-scripts options (--cn, --am, ...) are ignored as sd-scripts ignores unknown ones */
            if (bad) {
                int rc = dl_error_set("%s: bad value '--%s %s'", label, part, val);
                free(part);
                free_one(p);
                return rc;
            }
            free(part);
        }
        if (!next) break;
        seg = next + 3;
    }
    if (!p->negative) p->negative = strdup("");
    return DL_OK;
}

int dl_train_prompts_load(const char *path, dl_train_prompt **out, int *n)
{
    *out = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return dl_error_set("sample_prompts: %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = DL_OK;
    dl_train_prompt *arr = NULL;
    int cnt = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        char label[1100];
        snprintf(label, sizeof label, "%s:%d", path, lineno);
        dl_train_prompt p;
        if (dl_train_prompt_parse_line(line, &p, label) != DL_OK) { rc = DL_ERR; break; }
        if (!p.prompt) continue;
        dl_train_prompt *na = realloc(arr, sizeof *na * (size_t)(cnt + 1));
        if (!na) { free_one(&p); rc = dl_error_set("out of memory"); break; }
        arr = na;
        arr[cnt++] = p;
    }
    free(line);
    fclose(f);
    if (rc == DL_OK && cnt == 0) rc = dl_error_set("sample_prompts: %s: no prompt in the file", path);
    if (rc != DL_OK) { dl_train_prompts_free(arr, cnt); return rc; }
    *out = arr;
    *n = cnt;
    return DL_OK;
}

void dl_train_prompts_free(dl_train_prompt *p, int n)
{
    if (!p) return;
    for (int i = 0; i < n; i++) free_one(&p[i]);
    free(p);
}

struct dl_train_sampler {
    char *model, *tokenizer;
    const dl_ctx *ctx;
    dl_sd *sd;
};

int dl_train_sampler_create(dl_train_sampler **out, const char *model, const char *tokenizer, const dl_ctx *ctx)
{
    dl_train_sampler *s = calloc(1, sizeof *s);
    if (!s) return dl_error_set("out of memory");
    s->model = strdup(model);
    s->tokenizer = tokenizer ? strdup(tokenizer) : NULL;
    s->ctx = ctx;
    *out = s;
    return DL_OK;
}

int dl_train_sampler_create_view(dl_train_sampler **out, dl_sd *view)
{
    dl_train_sampler *s = calloc(1, sizeof *s);
    if (!s) return dl_error_set("out of memory");
    s->sd = view;
    *out = s;
    return DL_OK;
}

void dl_train_sampler_free(dl_train_sampler *s)
{
    if (!s) return;
    if (s->sd) dl_sd_close(s->sd);
    free(s->model);
    free(s->tokenizer);
    free(s);
}

int dl_train_sample(dl_train_sampler *s, const char *lora_path, const dl_train_prompt *p, int n,
                    const char *default_sampler, uint64_t seed, int clip_skip, const char *out_dir,
                    const char *prefix, FILE *log)
{
    if (!s->sd) DL_TRY(dl_sd_open(&s->sd, s->model, s->tokenizer, s->ctx, 1));
    if (lora_path) {
        dl_sd_lora_clear(s->sd);
        DL_TRY(dl_sd_lora_add(s->sd, lora_path, 1.0f, 1.0f, 0));
    }
    const int mult = dl_sd_vae_factor(s->sd) * dl_sd_unet_multiple(s->sd);
    int rc = DL_OK;
    for (int i = 0; i < n && rc == DL_OK; i++) {
        dl_gen_params g;
        dl_gen_params_default(&g);
        g.prompt = p[i].prompt;
        g.negative = p[i].negative;
        g.width = p[i].width / mult * mult;
        g.height = p[i].height / mult * mult;
        if (g.width < mult) g.width = mult;
        if (g.height < mult) g.height = mult;
        g.steps = p[i].steps;
        g.cfg_scale = (float)p[i].scale;
        g.clip_skip = clip_skip;
        const char *sn = map_sampler(p[i].sampler ? p[i].sampler : default_sampler);
        if (!sn || dl_sampler_kind_parse(sn, &g.sampler) != DL_OK) { rc = dl_error_set("unknown sampler"); break; }
        uint64_t sd_seed = p[i].seed >= 0 ? (uint64_t)p[i].seed : seed;
        float *img = malloc(sizeof(float) * (size_t)g.width * g.height * 3);
        uint8_t *u8 = malloc((size_t)g.width * g.height * 3);
        if (!img || !u8) { free(img); free(u8); rc = dl_error_set("out of memory"); break; }
        rc = dl_pipeline_generate(s->sd, &g, 1, &sd_seed, DL_SEED_PER_IMAGE, img, NULL, NULL, NULL);
        if (rc == DL_OK) {
            dl_pipeline_to_u8(img, (int64_t)g.width * g.height * 3, u8);
            char path[4096], info[8192];
            snprintf(path, sizeof path, "%s/%s_%02d.png", out_dir, prefix, i);
            snprintf(info, sizeof info, "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, "
                     "Size: %dx%d", g.prompt, g.negative, g.steps, dl_sampler_kind_name(g.sampler), g.cfg_scale,
                     (unsigned long long)sd_seed, g.width, g.height);
            const char *text[2] = {"parameters", info};
            dl_image im = {g.width, g.height, u8};
            rc = dl_png_save(path, &im, text, 1);
            if (rc == DL_OK && log) fprintf(log, "sample %s\n", path);
        }
        free(img);
        free(u8);
    }
    dl_sd_lora_clear(s->sd);
    return rc;
}
