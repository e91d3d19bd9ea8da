/* sample_args.c - shared options of `danlu sample` / `danlu grid`: parsing, validation, LoRAs. */
#include "cli/sample_args.h"

#include "core/error.h"
#include "sample/infotext.h"
#include "sample/prompt.h"

#include <dirent.h>
#include <stddef.h>
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

/* --seed-mode, --rng, --lora: values that are not a plain number or text */
static int set_seed_mode(void *obj, const char *cmd, const char *opt, const char *v)
{
    dl_sample_args *a = obj;
    (void)opt;
    if (!strcmp(v, "per-image")) a->seed_mode = DL_SEED_PER_IMAGE;
    else if (!strcmp(v, "batch")) a->seed_mode = DL_SEED_BATCH;
    else {
        fprintf(stderr, "danlu %s: --seed-mode '%s': use per-image or batch\n", cmd, v);
        return -1;
    }
    return 0;
}

static int set_rng(void *obj, const char *cmd, const char *opt, const char *v)
{
    dl_sample_args *a = obj;
    (void)opt;
    if (!strcmp(v, "torch-cpu")) a->rng = DL_RNG_TORCH_CPU;
    else if (!strcmp(v, "nv")) a->rng = DL_RNG_NV;
    else {
        fprintf(stderr, "danlu %s: --rng '%s': use torch-cpu or nv\n", cmd, v);
        return -1;
    }
    return 0;
}

static int add_lora_cli(void *obj, const char *cmd, const char *opt, const char *v)
{
    dl_sample_args *a = obj;
    (void)opt;
    if (a->n_lora_cli == DL_SA_MAX_LORAS) {
        fprintf(stderr, "danlu %s: at most %d --lora\n", cmd, DL_SA_MAX_LORAS);
        return -1;
    }
    a->lora_cli[a->n_lora_cli++] = v;
    return 0;
}

/* --original-size / --target-size WIDTHxHEIGHT, --crop TOP,LEFT (SDXL's time ids): -1 bad */
static int parse_pair(const char *cmd, const char *opt, const char *v, int *a_out, int *b_out, char sep)
{
    if (!v) return 0;
    char *e1, *e2 = NULL;
    long a = strtol(v, &e1, 10), b = *e1 == sep ? strtol(e1 + 1, &e2, 10) : -1;
    if (e1 == v || *e1 != sep || e2 == e1 + 1 || *e2 || a < 0 || b < 0 || a > 1 << 20 || b > 1 << 20) {
        fprintf(stderr, "danlu %s: %s '%s': expected %s\n", cmd, opt, v,
                sep == 'x' ? "WIDTHxHEIGHT in pixels" : "TOP,LEFT in pixels");
        return -1;
    }
    *a_out = (int)a, *b_out = (int)b;
    return 0;
}

#define SA(f) offsetof(dl_sample_args, f)

/* name, alias, kind, field, placeholder, default shown, range, values, setter, group, meaning */
static const dl_opt k_sa_opts[] = {
    {"--model", NULL, DL_OPT_STR, SA(model), "PATH", NULL, 0, 0, NULL, NULL, "model",
     "checkpoint: a diffusers folder or a single .safetensors file (required)"},
    {"--tokenizer", NULL, DL_OPT_STR, SA(tokenizer), "PATH", "the model's tokenizer/", 0, 0, NULL, NULL, "model",
     "tokenizer folder or CLIP's bpe_simple_vocab_16e6.txt.gz"},
    {"--prompt", NULL, DL_OPT_STR, SA(prompt), "TEXT", "empty", 0, 0, NULL, NULL, "prompt",
     "A1111 syntax: (word:1.3), (word), [word], \\( escapes, BREAK, <lora:name:weight> (a LoRA "
     "file LORA_DIR/name.safetensors)"},
    {"--negative-prompt", NULL, DL_OPT_STR, SA(negative), "TEXT", "empty", 0, 0, NULL, NULL, "prompt",
     "what the image should not show (same syntax)"},
    {"--no-emphasis", NULL, DL_OPT_FLAG, SA(no_emphasis), NULL, "off", 0, 0, NULL, NULL, "prompt",
     "take the prompt verbatim (no (word:w) weighting)"},
    {"--clip-skip", NULL, DL_OPT_INT, SA(clip_skip), "N", "1", 1, 64, NULL, NULL, "prompt",
     "text-encoder layer counted from the end (2 = A1111's clip skip 2)"},
    {"--sampler", NULL, DL_OPT_STR, SA(sampler_name), "NAME", "euler_a", 0, 0,
     "euler|euler_a|heun|ddim|dpmpp_2m|dpmpp_2m_karras|lcm", NULL, "sampling", "sampling method"},
    {"--schedule", NULL, DL_OPT_STR, SA(schedule), "NAME", "normal", 0, 0, "normal|karras", NULL, "sampling",
     "noise levels; karras for euler, heun and dpmpp_2m"},
    {"--steps", NULL, DL_OPT_INT, SA(steps), "N", "20", 1, 1000, NULL, NULL, "sampling", "sampling steps"},
    {"--cfg-scale", NULL, DL_OPT_FLOAT, SA(cfg_scale), "X", "7", 0, 0, NULL, NULL, "sampling",
     "classifier-free guidance scale, 0..100 (<= 1 disables guidance)"},
    {"--eta", NULL, DL_OPT_FLOAT, SA(eta), "X", "-1", 0, 0, NULL, NULL, "sampling",
     "DDIM eta / Euler a noise scale (negative: the sampler's usual value)"},
    {"--width", NULL, DL_OPT_INT, SA(width), "N", "512; img2img: the init image's size", 8, 16384, NULL, NULL,
     "size, seeds and batches", "image width in pixels, a multiple of 8"},
    {"--height", NULL, DL_OPT_INT, SA(height), "N", "512; img2img: the init image's size", 8, 16384, NULL, NULL,
     "size, seeds and batches", "image height in pixels, a multiple of 8"},
    {"--original-size", NULL, DL_OPT_STR, SA(original_size), "WxH", "the image size", 0, 0, NULL, NULL,
     "size, seeds and batches",
     "SDXL: the original_size the UNet is conditioned on (StableDiffusionXLPipeline's, as width x height)"},
    {"--crop", NULL, DL_OPT_STR, SA(crop), "TOP,LEFT", "0,0", 0, 0, NULL, NULL, "size, seeds and batches",
     "SDXL: the crop's top-left corner the UNet is conditioned on (crops_coords_top_left)"},
    {"--target-size", NULL, DL_OPT_STR, SA(target_size), "WxH", "the image size", 0, 0, NULL, NULL,
     "size, seeds and batches", "SDXL: the target_size the UNet is conditioned on (as width x height)"},
    {"--seed", NULL, DL_OPT_I64, SA(seed), "N", "-1", -1, 4294967295.0, NULL, NULL, "size, seeds and batches",
     "seed of the first image (-1: a random one)"},
    {"--seed-mode", NULL, DL_OPT_FN, 0, "MODE", "per-image", 0, 0, "per-image|batch", set_seed_mode,
     "size, seeds and batches",
     "per-image: image i uses seed + i, the same as a batch-1 run of that seed (A1111); batch: one torch "
     "generator per batch (diffusers' num_images_per_prompt)"},
    {"--rng", NULL, DL_OPT_FN, 0, "SOURCE", "torch-cpu", 0, 0, "torch-cpu|nv", set_rng, "size, seeds and batches",
     "noise source: torch-cpu = torch's CPU generator (diffusers/ComfyUI CPU seeds); nv = A1111's NV "
     "source (Philox, torch.randn on an NVIDIA GPU: A1111's GPU seeds)"},
    {"--batch-size", NULL, DL_OPT_INT, SA(batch_size), "N", "1", 1, 64, NULL, NULL, "size, seeds and batches",
     "images per sampling run (danlu sample; grid makes one per cell)"},
    {"--batch-count", NULL, DL_OPT_INT, SA(batch_count), "N", "1", 1, 100000, NULL, NULL,
     "size, seeds and batches",
     "sampling runs; image i of the whole job has seed + i (danlu sample; grid makes one per cell)"},
    {"--init-image", NULL, DL_OPT_STR, SA(init_image), "PATH", "none, txt2img", 0, 0, NULL, NULL, "img2img",
     "start from this PNG/JPEG/BMP/WebP, resized to --width/--height or to its size rounded down to the "
     "model's multiple"},
    {"--strength", NULL, DL_OPT_DOUBLE, SA(strength), "X", "0.75", 0, 0, NULL, NULL, "img2img",
     "img2img denoising strength in (0, 1]"},
    {"--lora", NULL, DL_OPT_FN, 0, "PATH[:WEIGHT]", "none", 0, 0, NULL, add_lora_cli, "LoRA",
     "merge a LoRA file or LORA_DIR name at WEIGHT (1); repeatable"},
    {"--lora-dir", NULL, DL_OPT_STR, SA(lora_dir), "DIR", ".", 0, 0, NULL, NULL, "LoRA",
     "where <lora:name:w> tags and --lora names are looked up"},
    {"--out-dir", NULL, DL_OPT_STR, SA(out_dir), "DIR", "outputs", 0, 0, NULL, NULL, "output",
     "folder of the PNG files (created)"},
    {"--overwrite", NULL, DL_OPT_FLAG, SA(overwrite), NULL, "off", 0, 0, NULL, NULL, "output",
     "number files from 00001 again, replacing existing ones"},
    {"--quiet", NULL, DL_OPT_FLAG, SA(quiet), NULL, "off", 0, 0, NULL, NULL, "output", "no progress on stderr"},
    {"--verbose", NULL, DL_OPT_FLAG, SA(verbose), NULL, "off", 0, 0, NULL, NULL, "output",
     "print the time of each phase (load, hash, text encoding, steps, VAE, save) on stderr"},
    {"--no-hash-cache", NULL, DL_OPT_FLAG, SA(no_hash_cache), NULL, "off", 0, 0, NULL, NULL, "other",
     "hash model and LoRA files again instead of reading $XDG_CACHE_HOME/danlu/hashes.json"},
    {"--threads", NULL, DL_OPT_INT, SA(threads), "N", "0", 0, 1024, NULL, NULL, "other",
     "CPU threads (0: DANLU_THREADS or every core)"},
    {"--backend", NULL, DL_OPT_STR, SA(backend), "NAME", "auto", 0, 0, "auto|cpu|cuda", NULL, "other",
     DL_OPT_BACKEND_HELP},
};

static void sa_defaults_obj(void *obj)
{
    dl_sa_defaults(obj, "sample");
}

dl_optset dl_sa_optset(dl_sample_args *a)
{
    dl_optset s = {k_sa_opts, (int)(sizeof k_sa_opts / sizeof *k_sa_opts), a, sizeof(dl_sample_args),
                   sa_defaults_obj};
    return s;
}

int dl_sa_parse(dl_sample_args *a, int argc, char **argv, int *i)
{
    dl_optset s = dl_sa_optset(a);
    return dl_opt_parse(&s, 1, a->cmd, argc, argv, i);
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
    dl_hash_cache_default(&a->hash_cache, !a->no_hash_cache);
    if (!a->model) {
        fprintf(stderr, "danlu %s: --model is required\n", c);
        return -1;
    }
    if (dl_sampler_kind_parse(a->sampler_name, &g->sampler) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", c, dl_error_msg());
        return -1;
    }
    dl_optset sa = dl_sa_optset(a);
    if (!dl_opt_value_ok(dl_opt_find(&sa, 1, "--schedule", NULL), a->schedule)) {
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
    if (parse_pair(c, "--original-size", a->original_size, &g->orig_w, &g->orig_h, 'x') ||
        parse_pair(c, "--crop", a->crop, &g->crop_top, &g->crop_left, ',') ||
        parse_pair(c, "--target-size", a->target_size, &g->target_w, &g->target_h, 'x'))
        return -1;
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

int dl_sa_open_model(dl_sample_args *a, const dl_ctx *ctx, dl_sd **sd, int merge_loras)
{
    if (dl_sd_open(sd, a->model, a->tokenizer, ctx, merge_loras) != DL_OK) {
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
        if (dl_a1111_lora_hash(&a->hash_cache, l[k].path, hbuf[n]) != DL_OK) continue;
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
