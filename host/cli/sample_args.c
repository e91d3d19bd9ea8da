/* sample_args.c - shared options of `danlu sample` / `danlu grid`: parsing, validation, LoRAs. */
#include "cli/sample_args.h"

#include "core/error.h"
#include "sample/infotext.h"
#include "sample/prompt.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void dl_sa_defaults(dl_sample_args *a, const char *cmd)
{
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->prompt = "";
    a->negative = "";
    a->out_dir = "outputs";
    a->lora_dir = ".";
    a->sampler_name = "euler_a";
    a->schedule = "normal";
    a->steps = 20;
    a->clip_skip = 1;
    a->batch_size = 1;
    a->batch_count = 1;
    a->cfg_scale = 7.0f;
    a->eta = -1.0f;
    a->strength = 0.75;
    a->seed = -1;
    a->seed_mode = DL_SEED_PER_IMAGE;
    a->rng = DL_RNG_TORCH_CPU;
}

void dl_sa_usage(FILE *f)
{
    fprintf(f,
            "  --model PATH            checkpoint: diffusers folder or single .safetensors (required)\n"
            "  --tokenizer PATH        tokenizer folder / CLIP bpe .txt.gz (default: the model's tokenizer/)\n"
            "  --prompt TEXT           A1111 syntax: (word:1.3), (word), [word], \\( escapes, BREAK,\n"
            "                          <lora:name:weight> (resolved as LORA_DIR/name.safetensors)\n"
            "  --negative-prompt TEXT\n"
            "  --no-emphasis           take the prompt verbatim (no (word:w) parsing)\n"
            "  --steps N               (20)            --cfg-scale X  (7; <= 1 disables guidance)\n"
            "  --width N --height N    pixels, multiples of 8 (512; img2img: the init image's size)\n"
            "  --sampler NAME          euler, euler_a (default), heun, ddim, dpmpp_2m, dpmpp_2m_karras, lcm\n"
            "  --schedule normal|karras  Karras sigmas (euler, heun, dpmpp_2m)\n"
            "  --eta X                 DDIM eta / Euler a noise scale\n"
            "  --seed N                (-1: random)\n"
            "  --seed-mode per-image|batch  per-image (default): image i uses seed + i and equals a\n"
            "                          batch-1 run of that seed (A1111-like); batch: one torch generator\n"
            "                          per batch as diffusers with num_images_per_prompt\n"
            "  --rng torch-cpu|nv      noise source: torch-cpu (default) = torch's CPU generator, same\n"
            "                          seeds as diffusers/ComfyUI on CPU; nv = A1111's NV source (Philox,\n"
            "                          what torch.randn gives on an NVIDIA GPU): A1111's GPU/NV seeds\n"
            "  --clip-skip N           (1 = last layer; 2 = A1111's clip skip 2)\n"
            "  --init-image PATH       img2img from any PNG/JPEG/BMP/WebP (resized to --width/--height\n"
            "                          or to its size rounded down to the model's multiple)\n"
            "  --strength X            img2img denoising strength (0.75)\n"
            "  --lora PATH[:WEIGHT]    merge a LoRA (repeatable); --lora-dir DIR for <lora:...> tags (.)\n"
            "  --out-dir DIR           (outputs)      --overwrite: number files from 00001 again\n"
            "  --threads N             CPU threads (DANLU_THREADS or all cores)\n"
            "  --quiet\n");
}

static int want_value(const dl_sample_args *a, int argc, int i)
{
    if (i + 1 >= argc) {
        fprintf(stderr, "danlu %s: %s needs a value\n", a->cmd, "option");
        return 0;
    }
    return 1;
}

static int parse_int(const dl_sample_args *a, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "danlu %s: %s '%s' must be an integer in %lld..%lld\n", a->cmd, opt, s, (long long)lo,
                (long long)hi);
        return -1;
    }
    *out = v;
    return 1;
}

static int parse_float(const dl_sample_args *a, const char *opt, const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || v != v) {
        fprintf(stderr, "danlu %s: %s '%s' is not a number\n", a->cmd, opt, s);
        return -1;
    }
    *out = v;
    return 1;
}

int dl_sa_parse(dl_sample_args *a, int argc, char **argv, int *i)
{
    const char *o = argv[*i];
    const char **str = !strcmp(o, "--model")             ? &a->model
                     : !strcmp(o, "--tokenizer")         ? &a->tokenizer
                     : !strcmp(o, "--prompt")            ? &a->prompt
                     : !strcmp(o, "--negative-prompt")   ? &a->negative
                     : !strcmp(o, "--out-dir")           ? &a->out_dir
                     : !strcmp(o, "--init-image")        ? &a->init_image
                     : !strcmp(o, "--lora-dir")          ? &a->lora_dir
                     : !strcmp(o, "--sampler")           ? &a->sampler_name
                     : !strcmp(o, "--schedule")          ? &a->schedule : NULL;
    if (!strcmp(o, "--overwrite")) { a->overwrite = 1; return 1; }
    if (!strcmp(o, "--quiet")) { a->quiet = 1; return 1; }
    if (!strcmp(o, "--no-emphasis")) { a->no_emphasis = 1; return 1; }
    struct { const char *name; int *p; int64_t lo, hi; } ints[] = {
        {"--width", &a->width, 8, 16384},      {"--height", &a->height, 8, 16384},
        {"--steps", &a->steps, 1, 1000},       {"--clip-skip", &a->clip_skip, 1, 64},
        {"--batch-size", &a->batch_size, 1, 64}, {"--batch-count", &a->batch_count, 1, 100000},
        {"--threads", &a->threads, 0, 1024},
    };
    struct { const char *name; float *p; } floats[] = {{"--cfg-scale", &a->cfg_scale}, {"--eta", &a->eta}};
    int known = str || !strcmp(o, "--seed") || !strcmp(o, "--seed-mode") || !strcmp(o, "--rng") ||
                !strcmp(o, "--strength") || !strcmp(o, "--lora");
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) known |= !strcmp(o, ints[k].name);
    for (size_t k = 0; k < sizeof floats / sizeof *floats; k++) known |= !strcmp(o, floats[k].name);
    if (!known) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "danlu %s: %s needs a value\n", a->cmd, o);
        return -1;
    }
    (void)want_value;
    const char *v = argv[++*i];
    if (str) { *str = v; return 1; }
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++)
        if (!strcmp(o, ints[k].name)) {
            int64_t x;
            if (parse_int(a, o, v, ints[k].lo, ints[k].hi, &x) < 0) return -1;
            *ints[k].p = (int)x;
            return 1;
        }
    for (size_t k = 0; k < sizeof floats / sizeof *floats; k++)
        if (!strcmp(o, floats[k].name)) {
            double x;
            if (parse_float(a, o, v, &x) < 0) return -1;
            *floats[k].p = (float)x;
            return 1;
        }
    if (!strcmp(o, "--seed")) {
        int64_t x;
        if (parse_int(a, o, v, -1, 0xffffffffLL, &x) < 0) return -1;
        a->seed = x;
        return 1;
    }
    if (!strcmp(o, "--strength")) {
        if (parse_float(a, o, v, &a->strength) < 0) return -1;
        return 1;
    }
    if (!strcmp(o, "--seed-mode")) {
        if (!strcmp(v, "per-image")) a->seed_mode = DL_SEED_PER_IMAGE;
        else if (!strcmp(v, "batch")) a->seed_mode = DL_SEED_BATCH;
        else {
            fprintf(stderr, "danlu %s: --seed-mode '%s': use per-image or batch\n", a->cmd, v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(o, "--rng")) {
        if (!strcmp(v, "torch-cpu")) a->rng = DL_RNG_TORCH_CPU;
        else if (!strcmp(v, "nv")) a->rng = DL_RNG_NV;
        else {
            fprintf(stderr, "danlu %s: --rng '%s': use torch-cpu or nv\n", a->cmd, v);
            return -1;
        }
        return 1;
    }
    /* --lora */
    if (a->n_lora_cli == DL_SA_MAX_LORAS) {
        fprintf(stderr, "danlu %s: at most %d --lora\n", a->cmd, DL_SA_MAX_LORAS);
        return -1;
    }
    a->lora_cli[a->n_lora_cli++] = v;
    return 1;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

char *dl_sa_resolve_lora(const dl_sample_args *a, const char *name)
{
    size_t n = strlen(name);
    char *p = NULL;
    if (strchr(name, '/') || (n > 12 && !strcmp(name + n - 12, ".safetensors"))) {
        p = strdup(name);
    } else {
        p = malloc(strlen(a->lora_dir) + n + 16);
        if (p) sprintf(p, "%s/%s.safetensors", a->lora_dir, name);
    }
    if (!p) {
        dl_error_set("out of memory");
        return NULL;
    }
    if (!file_exists(p)) {
        dl_error_set("LoRA '%s' not found: %s does not exist", name, p);
        free(p);
        return NULL;
    }
    return p;
}

/* The file stem of a path ("dir/my_lora.safetensors" -> "my_lora"), malloc'd. */
static char *stem(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    char *s = strdup(b);
    if (!s) return NULL;
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = 0;
    return s;
}

static int add_lora(dl_sample_args *a, const char *name, float te, float un)
{
    if (a->n_loras == DL_SA_MAX_LORAS) return dl_error_set("more than %d LoRAs", DL_SA_MAX_LORAS);
    char *p = dl_sa_resolve_lora(a, name);
    if (!p) return DL_ERR;
    dl_sa_lora *l = &a->loras[a->n_loras++];
    l->path = p;
    l->name = stem(p);
    l->te_w = te;
    l->unet_w = un;
    return DL_OK;
}

int dl_sa_finish(dl_sample_args *a)
{
    const char *c = a->cmd;
    dl_gen_params *g = &a->gp;
    dl_gen_params_default(g);
    if (!a->model) {
        fprintf(stderr, "danlu %s: --model is required\n", c);
        return -1;
    }
    if (dl_sampler_kind_parse(a->sampler_name, &g->sampler) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", c, dl_error_msg());
        return -1;
    }
    if (strcmp(a->schedule, "normal") && strcmp(a->schedule, "karras")) {
        fprintf(stderr, "danlu %s: unknown schedule '%s' (normal, karras)\n", c, a->schedule);
        return -1;
    }
    g->sopts.karras = !strcmp(a->schedule, "karras") && g->sampler != DL_SAMPLER_DPMPP_2M_KARRAS;
    g->sopts.eta = a->eta;
    if ((a->width && a->width % 8) || (a->height && a->height % 8)) {
        fprintf(stderr, "danlu %s: size %dx%d: width and height must be multiples of 8\n", c, a->width ? a->width : 512,
                a->height ? a->height : 512);
        return -1;
    }
    if (!(a->cfg_scale >= 0 && a->cfg_scale <= 100)) {
        fprintf(stderr, "danlu %s: --cfg-scale %g outside 0..100\n", c, (double)a->cfg_scale);
        return -1;
    }
    if (a->init_image && !(a->strength > 0 && a->strength <= 1)) {
        fprintf(stderr, "danlu %s: --strength %g outside (0, 1]\n", c, a->strength);
        return -1;
    }
    g->steps = a->steps;
    g->rng = a->rng;
    g->cfg_scale = a->cfg_scale;
    g->clip_skip = a->clip_skip;
    g->emphasis = !a->no_emphasis;
    g->negative = a->negative;
    /* LoRA tags in the prompt, then --lora */
    dl_prompt_lora *tags = NULL;
    int nt = 0;
    if (dl_prompt_extract_loras(a->prompt, &a->prompt_text, &tags, &nt) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", c, dl_error_msg());
        return -1;
    }
    g->prompt = a->prompt_text;
    for (int k = 0; k < nt; k++)
        if (add_lora(a, tags[k].name, (float)tags[k].te_weight, (float)tags[k].unet_weight) != DL_OK) {
            fprintf(stderr, "danlu %s: %s\n", c, dl_error_msg());
            dl_prompt_loras_free(tags, nt);
            return -1;
        }
    dl_prompt_loras_free(tags, nt);
    for (int k = 0; k < a->n_lora_cli; k++) {
        char *spec = strdup(a->lora_cli[k]);
        double w = 1.0;
        char *colon = strrchr(spec, ':'), *end;
        if (colon && colon[1]) {
            double x = strtod(colon + 1, &end);
            if (!*end) {
                w = x;
                *colon = 0;
            }
        }
        int rc = add_lora(a, spec, (float)w, (float)w);
        free(spec);
        if (rc != DL_OK) {
            fprintf(stderr, "danlu %s: --lora %s: %s\n", c, a->lora_cli[k], dl_error_msg());
            return -1;
        }
    }
    /* init image and size */
    g->width = a->width ? a->width : 512;
    g->height = a->height ? a->height : 512;
    if (a->init_image) {
        if (dl_image_load(&a->init, a->init_image) != DL_OK) {
            fprintf(stderr, "danlu %s: init image: %s\n", c, dl_error_msg());
            return -1;
        }
        if (!a->width) g->width = a->init.w / 8 * 8;
        if (!a->height) g->height = a->init.h / 8 * 8;
        if (g->width < 8 || g->height < 8) {
            fprintf(stderr, "danlu %s: init image %s is %dx%d: smaller than 8 pixels\n", c, a->init_image, a->init.w,
                    a->init.h);
            return -1;
        }
        a->init_f = malloc(sizeof(float) * (size_t)g->width * g->height * 3);
        if (!a->init_f) {
            fprintf(stderr, "danlu %s: out of memory\n", c);
            return -1;
        }
        dl_pipeline_image_in(a->init.data, a->init.w, a->init.h, g->width, g->height, a->init_f);
        g->init = a->init_f;
        g->sopts.strength = a->strength;
    }
    /* the sampler accepts these settings (steps, Karras, strength) */
    dl_schedule_config scfg;
    dl_schedule_config_sd15(&scfg);
    dl_sampler s;
    if (dl_sampler_create(&s, g->sampler, &scfg, g->steps, &g->sopts, 1) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", c, dl_error_msg());
        dl_sampler_free(&s);
        return -1;
    }
    dl_sampler_free(&s);
    if (a->seed < 0) a->seed = (int64_t)(((uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid()) % 4294967294u);
    return 0;
}

void dl_sa_free(dl_sample_args *a)
{
    for (int k = 0; k < a->n_loras; k++) {
        free(a->loras[k].path);
        free(a->loras[k].name);
    }
    a->n_loras = 0;
    free(a->prompt_text);
    a->prompt_text = NULL;
    dl_image_free(&a->init);
    free(a->init_f);
    a->init_f = NULL;
}

int dl_sa_merge(dl_sample_args *a, dl_sd *sd, const dl_sa_lora *l, int n)
{
    for (int k = 0; k < n; k++)
        if (dl_sd_lora_add(sd, l[k].path, l[k].te_w, l[k].unet_w, !a->quiet) != DL_OK) {
            fprintf(stderr, "danlu %s: LoRA %s: %s\n", a->cmd, l[k].name, dl_error_msg());
            return -1;
        }
    return 0;
}

int dl_sa_open_model(dl_sample_args *a, const dl_ctx *ctx, dl_sd **sd)
{
    if (dl_sd_open(sd, a->model, a->tokenizer, ctx) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", a->cmd, dl_error_msg());
        return -1;
    }
    int m = dl_sd_vae_factor(*sd) * dl_sd_unet_multiple(*sd);
    dl_gen_params *g = &a->gp;
    if (g->width % m || g->height % m) {
        fprintf(stderr, "danlu %s: size %dx%d: this model needs multiples of %d\n", a->cmd, g->width, g->height, m);
        dl_sd_close(*sd);
        *sd = NULL;
        return -1;
    }
    return 0;
}

char *dl_sa_infotext(const dl_sample_args *a, const char *prompt, float cfg, uint64_t seed, const dl_sa_lora *l,
                     int n_l, const char *model_hash)
{
    const char *names[DL_SA_MAX_LORAS], *hashes[DL_SA_MAX_LORAS];
    char hbuf[DL_SA_MAX_LORAS][13];
    int n = 0;
    for (int k = 0; k < n_l && k < DL_SA_MAX_LORAS; k++) {
        if (dl_a1111_lora_hash(l[k].path, hbuf[n]) != DL_OK) continue;
        names[n] = l[k].name;
        hashes[n] = hbuf[n];
        n++;
    }
    const dl_gen_params *g = &a->gp;
    char *model_name = stem(a->model);
    dl_infotext it = {
        .prompt = prompt, .negative = a->negative, .steps = g->steps,
        .sampler = dl_sampler_kind_a1111_name(g->sampler), .schedule = g->sopts.karras ? "Karras" : NULL,
        .cfg_scale = cfg, .seed = seed, .width = g->width, .height = g->height, .model_hash = model_hash,
        .model_name = model_name, .strength = g->init ? g->sopts.strength : -1, .clip_skip = g->clip_skip,
        .n_loras = n, .lora_names = names, .lora_hashes = hashes,
        .rng = g->rng == DL_RNG_NV ? "NV" : NULL,
    };
    char *s = dl_infotext_format(&it);
    free(model_name);
    return s;
}

int dl_sa_next_index(const char *dir, int overwrite)
{
    if (overwrite) return 1;
    DIR *d = opendir(dir);
    int best = 0;
    if (!d) return 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        int k = 0, v = 0;
        while (k < 5 && n[k] >= '0' && n[k] <= '9') v = v * 10 + (n[k++] - '0');
        size_t len = strlen(n);
        if (k == 5 && n[5] == '-' && len > 4 && !strcmp(n + len - 4, ".png") && v > best) best = v;
    }
    closedir(d);
    return best + 1;
}

int dl_sa_mkdir(const char *dir)
{
    char *p = strdup(dir);
    if (!p) return -1;
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                fprintf(stderr, "danlu: cannot create %s: %s\n", p, strerror(errno));
                free(p);
                return -1;
            }
            *s = c;
            if (!c) break;
        }
    }
    free(p);
    return 0;
}
