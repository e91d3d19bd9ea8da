/* cmd_grid.c - `danlu grid`: an X/Y grid (LoRA files, LoRA weights, prompts, CFG, steps,
 * samplers) of images with the same seed, labelled, in one PNG. */
#include "cli/commands.h"
#include "cli/sample_args.h"
#include "core/error.h"
#include "sample/grid.h"
#include "sample/prompt.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_VALUES 64

typedef enum { AX_NONE = 0, AX_LORA, AX_WEIGHT, AX_PROMPT, AX_CFG, AX_STEPS, AX_SAMPLER } axis_kind;

typedef struct {
    axis_kind kind;
    const char *spec;
    int n;
    char *val[MAX_VALUES];     /* the raw values */
    char *label[MAX_VALUES];
    double num[MAX_VALUES];    /* weight / cfg / steps */
    dl_sa_lora lora[MAX_VALUES];/* AX_LORA: path NULL for "none" */
    dl_sampler_kind sampler[MAX_VALUES];
    char *ptext[MAX_VALUES];   /* AX_PROMPT: the prompt without LoRA tags */
    dl_sa_lora *plora[MAX_VALUES];
    int n_plora[MAX_VALUES];
} axis;

/* the options of grid itself (the shared ones are in sample_args.c) */
typedef struct {
    const char *x, *y, *out;
    double lora_weight;
} grid_args;

static void grid_defaults(void *obj)
{
    grid_args *g = obj;
    memset(g, 0, sizeof *g);
    g->lora_weight = 1.0;
}

#define GA(f) offsetof(grid_args, f)

static const dl_opt k_grid_opts[] = {
    {"--x", NULL, DL_OPT_STR, GA(x), "KIND:VALUES", NULL, 0, 0, NULL, NULL, "grid",
     "the columns: KIND lora, weight, prompt, cfg, steps or sampler, and its values (required)"},
    {"--y", NULL, DL_OPT_STR, GA(y), "KIND:VALUES", "one row", 0, 0, NULL, NULL, "grid",
     "the rows, another KIND than --x"},
    {"--lora-weight", NULL, DL_OPT_DOUBLE, GA(lora_weight), "X", "1", 0, 0, NULL, NULL, "grid",
     "weight of the lora axis' files"},
    {"--out", NULL, DL_OPT_STR, GA(out), "PATH", "OUT_DIR/grid-NNNNN-SEED.png", 0, 0, NULL, NULL, "grid",
     "the grid file"},
};

int dl_grid_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_grid_opts, (int)(sizeof k_grid_opts / sizeof *k_grid_opts), NULL, sizeof(grid_args),
                          grid_defaults};
    sets[1] = dl_sa_optset(NULL);
    sets[2] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 3;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu grid --model PATH --prompt TEXT --x KIND:VALUES [--y KIND:VALUES] [options]\n"
               "  One PNG with a labelled X/Y grid of images, all from the same seed: the way to pick a\n"
               "  LoRA's best epoch and weight. KIND and VALUES:\n"
               "    lora:A.safetensors,B.safetensors,none   LoRA files (names resolve in --lora-dir;\n"
               "                                            none = without), each at --lora-weight\n"
               "    weight:0,0.5,0.8,1                      multiplier of the axis LoRA (or, without a\n"
               "                                            lora axis, of every --lora / <lora:> LoRA)\n"
               "    prompt:a cat|a dog                      prompts, separated by '|'\n"
               "    cfg:3,5,7   steps:10,20   sampler:euler,ddim\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_grid_optsets(sets));
}

static void axis_free(axis *a)
{
    for (int i = 0; i < a->n; i++) {
        free(a->val[i]);
        free(a->label[i]);
        free(a->lora[i].path);
        free(a->lora[i].name);
        free(a->ptext[i]);
        for (int k = 0; k < a->n_plora[i]; k++) {
            free(a->plora[i][k].path);
            free(a->plora[i][k].name);
        }
        free(a->plora[i]);
    }
    memset(a, 0, sizeof *a);
}

static char *dupf(const char *fmt, const char *s, double v)
{
    char b[256];
    if (s) snprintf(b, sizeof b, fmt, s);
    else snprintf(b, sizeof b, fmt, v);
    return strdup(b);
}

/* Parse "KIND:VALUES" and check every value (LoRA files must exist). Prints errors. */
static int axis_parse(axis *a, const char *spec, dl_sample_args *sa, float lora_weight)
{
    a->spec = spec;
    const char *colon = strchr(spec, ':');
    size_t kl = colon ? (size_t)(colon - spec) : 0;
    static const struct { const char *name; axis_kind k; } kinds[] = {
        {"lora", AX_LORA}, {"weight", AX_WEIGHT}, {"prompt", AX_PROMPT},
        {"cfg", AX_CFG},   {"steps", AX_STEPS},   {"sampler", AX_SAMPLER},
    };
    for (size_t i = 0; colon && i < sizeof kinds / sizeof *kinds; i++)
        if (strlen(kinds[i].name) == kl && !strncmp(spec, kinds[i].name, kl)) a->kind = kinds[i].k;
    if (!a->kind) {
        fprintf(stderr, "danlu grid: axis '%s': write KIND:VALUES with KIND lora, weight, prompt, cfg, steps or sampler\n",
                spec);
        return -1;
    }
    char sep = a->kind == AX_PROMPT ? '|' : ',';
    const char *p = colon + 1;
    for (;;) {
        const char *e = strchr(p, sep);
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (a->n == MAX_VALUES) {
            fprintf(stderr, "danlu grid: axis '%s': more than %d values\n", spec, MAX_VALUES);
            return -1;
        }
        char *v = malloc(l + 1);
        memcpy(v, p, l);
        v[l] = 0;
        if (a->kind != AX_PROMPT) { /* trim */
            char *s = v;
            while (*s == ' ') s++;
            memmove(v, s, strlen(s) + 1);
            for (size_t k = strlen(v); k && v[k - 1] == ' ';) v[--k] = 0;
        }
        int i = a->n++;
        a->val[i] = v;
        char *end;
        switch (a->kind) {
        case AX_LORA:
            if (!strcmp(v, "none") || !v[0]) {
                a->label[i] = strdup("no LoRA");
                break;
            }
            a->lora[i].path = dl_sa_resolve_lora(sa, v);
            if (!a->lora[i].path) {
                fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
                return -1;
            }
            {
                const char *b = strrchr(a->lora[i].path, '/');
                char *st = strdup(b ? b + 1 : a->lora[i].path), *dot = strrchr(st, '.');
                if (dot && dot != st) *dot = 0;
                a->lora[i].name = st;
                a->label[i] = strdup(st);
            }
            a->lora[i].te_w = a->lora[i].unet_w = lora_weight;
            break;
        case AX_WEIGHT:
        case AX_CFG:
        case AX_STEPS:
            a->num[i] = strtod(v, &end);
            if (!v[0] || *end || (a->kind == AX_STEPS && (a->num[i] < 1 || a->num[i] > 1000 || a->num[i] != (int)a->num[i])) ||
                (a->kind == AX_CFG && !(a->num[i] >= 0 && a->num[i] <= 100))) {
                fprintf(stderr, "danlu grid: axis '%s': bad value '%s'\n", spec, v);
                return -1;
            }
            a->label[i] = dupf(a->kind == AX_WEIGHT ? "weight %g" : a->kind == AX_CFG ? "CFG %g" : "steps %g", NULL, a->num[i]);
            break;
        case AX_SAMPLER:
            if (dl_sampler_kind_parse(v, &a->sampler[i]) != DL_OK) {
                fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
                return -1;
            }
            a->label[i] = strdup(v);
            break;
        case AX_PROMPT: {
            dl_prompt_lora *tags;
            int nt;
            if (dl_prompt_extract_loras(v, &a->ptext[i], &tags, &nt) != DL_OK) {
                fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
                return -1;
            }
            a->plora[i] = calloc((size_t)(nt ? nt : 1), sizeof(dl_sa_lora));
            for (int k = 0; k < nt; k++) {
                dl_sa_lora *l = &a->plora[i][k];
                l->path = dl_sa_resolve_lora(sa, tags[k].name);
                if (!l->path) {
                    fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
                    dl_prompt_loras_free(tags, nt);
                    return -1;
                }
                l->name = strdup(tags[k].name);
                l->te_w = (float)tags[k].te_weight;
                l->unet_w = (float)tags[k].unet_weight;
                a->n_plora[i]++;
            }
            dl_prompt_loras_free(tags, nt);
            a->label[i] = strdup(v);
            break;
        }
        default:
            break;
        }
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* The settings of one cell: the base ones with the x and y values applied. */
typedef struct {
    dl_gen_params gp;
    const char *prompt_shown;
    dl_sa_lora loras[2 * DL_SA_MAX_LORAS];
    int n_loras;
} cell;

static void apply(cell *c, const axis *a, int i, const axis *other)
{
    switch (a->kind) {
    case AX_LORA:
        if (a->lora[i].path) c->loras[c->n_loras++] = a->lora[i];
        break;
    case AX_PROMPT:
        c->gp.prompt = a->ptext[i];
        c->prompt_shown = a->val[i];
        for (int k = 0; k < a->n_plora[i]; k++) c->loras[c->n_loras++] = a->plora[i][k];
        break;
    case AX_CFG: c->gp.cfg_scale = (float)a->num[i]; break;
    case AX_STEPS: c->gp.steps = (int)a->num[i]; break;
    case AX_SAMPLER: c->gp.sampler = a->sampler[i]; break;
    default: break;
    }
    (void)other;
}

int dl_cmd_grid(int argc, char **argv, FILE *out)
{
    dl_sample_args a;
    dl_sa_defaults(&a, "grid");
    grid_args ga;
    grid_defaults(&ga);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_grid_optsets(sets);
    sets[0].obj = &ga;
    sets[1].obj = &a;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        int r = dl_opt_parse(sets, nsets, "grid", argc, argv, &i);
        if (r == DL_OPT_WANTS_HELP) {
            usage(out);
            return 0;
        }
        if (r < 0) return 2;
        if (r == 0) {
            fprintf(stderr, "danlu grid: unknown option '%s'\n", o);
            usage(stderr);
            return 2;
        }
    }
    const char *xs = ga.x, *ys = ga.y, *outp = ga.out;
    double lora_weight = ga.lora_weight;
    if (!xs) {
        fprintf(stderr, "danlu grid: --x KIND:VALUES is required\n");
        return 2;
    }
    axis ax, ay;
    memset(&ax, 0, sizeof ax);
    memset(&ay, 0, sizeof ay);
    int rc = 1;
    dl_ctx ctx = {0};
    dl_sd *sd = NULL;
    dl_grid grid = {0};
    float *img = NULL;
    uint8_t *px = NULL;
    char *info = NULL, *path = NULL;
    if (dl_sa_finish(&a) != 0 || axis_parse(&ax, xs, &a, (float)lora_weight) != 0 ||
        (ys && axis_parse(&ay, ys, &a, (float)lora_weight) != 0))
        goto done;
    if (!ys) {
        ay.n = 1;
        ay.kind = AX_NONE;
    }
    if (ax.kind == ay.kind && ax.kind != AX_NONE) {
        fprintf(stderr, "danlu grid: --x and --y are both '%s'\n", xs);
        goto done;
    }
    int has_lora_axis = ax.kind == AX_LORA || ay.kind == AX_LORA;
    if ((ax.kind == AX_WEIGHT || ay.kind == AX_WEIGHT) && !has_lora_axis && a.n_loras == 0) {
        fprintf(stderr, "danlu grid: a weight axis needs a lora axis, --lora or a <lora:...> tag\n");
        goto done;
    }
    /* output path, checked before any work */
    if (dl_sa_mkdir(a.out_dir) != 0) goto done;
    path = malloc(strlen(a.out_dir) + (outp ? strlen(outp) : 0) + 64);
    if (outp) strcpy(path, outp);
    else sprintf(path, "%s/grid-%05d-%llu.png", a.out_dir, dl_sa_next_index(a.out_dir, a.overwrite), (unsigned long long)a.seed);
    struct stat st;
    if (!a.overwrite && stat(path, &st) == 0) {
        fprintf(stderr, "danlu grid: %s exists (use --overwrite)\n", path);
        goto done;
    }
    if (dl_cli_ctx_init(&ctx, "grid", a.threads, a.backend) != 0) goto done;
    if (dl_sa_open_model(&a, &ctx, &sd, has_lora_axis || a.n_loras > 0) != 0) goto done;
    const char *ylab[MAX_VALUES] = {0};
    for (int j = 0; j < ay.n; j++) ylab[j] = ay.kind ? ay.label[j] : NULL;
    if (dl_grid_create(&grid, ax.n, ay.n, a.gp.width, a.gp.height, (const char *const *)ax.label, ylab) != DL_OK) {
        fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
        goto done;
    }
    size_t npx = (size_t)a.gp.width * a.gp.height * 3;
    img = malloc(sizeof(float) * npx);
    px = malloc(npx);
    uint64_t seed = (uint64_t)a.seed;
    for (int j = 0; j < ay.n; j++)
        for (int i = 0; i < ax.n; i++) {
            cell c;
            c.gp = a.gp;
            c.prompt_shown = a.prompt;
            c.n_loras = 0;
            for (int k = 0; k < a.n_loras; k++) c.loras[c.n_loras++] = a.loras[k];
            int base_end = c.n_loras;
            apply(&c, &ax, i, &ay);
            if (ay.kind) apply(&c, &ay, j, &ax);
            /* the weight axis scales the axis LoRA, or every base LoRA */
            const axis *wa = ax.kind == AX_WEIGHT ? &ax : ay.kind == AX_WEIGHT ? &ay : NULL;
            if (wa) {
                float w = (float)wa->num[wa == &ax ? i : j];
                for (int k = has_lora_axis ? base_end : 0; k < (has_lora_axis ? c.n_loras : base_end); k++)
                    c.loras[k].te_w = c.loras[k].unet_w = w;
            }
            if (!a.quiet) fprintf(stderr, "danlu grid: cell %d,%d: %s%s%s\n", i + 1, j + 1, ax.label[i],
                                  ay.kind ? " / " : "", ay.kind ? ay.label[j] : "");
            if (dl_sa_merge(&a, sd, c.loras, c.n_loras) != 0) goto done;
            int g_ok = dl_pipeline_generate(sd, &c.gp, 1, &seed, a.seed_mode, img, NULL, NULL, NULL) == DL_OK;
            dl_sd_lora_clear(sd);
            if (!g_ok) {
                fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
                goto done;
            }
            dl_pipeline_to_u8(img, (int64_t)npx, px);
            dl_grid_put(&grid, i, j, px);
            if (i == 0 && j == 0) info = dl_sa_infotext(&a, c.prompt_shown, c.gp.cfg_scale, seed, c.loras, c.n_loras, NULL);
        }
    {
        size_t l = (info ? strlen(info) : 0) + strlen(xs) + (ys ? strlen(ys) : 0) + 64;
        char *full = malloc(l);
        snprintf(full, l, "%s, X: %s%s%s", info ? info : "", xs, ys ? ", Y: " : "", ys ? ys : "");
        const char *text[2] = {"parameters", full};
        int ok = dl_png_save(path, &grid.img, text, 1) == DL_OK;
        free(full);
        if (!ok) {
            fprintf(stderr, "danlu grid: %s\n", dl_error_msg());
            goto done;
        }
    }
    fprintf(out, "%s\n", path);
    rc = 0;
done:
    free(info);
    free(path);
    free(img);
    free(px);
    dl_grid_free(&grid);
    dl_sd_close(sd);
    if (ctx.pool) dl_ctx_free(&ctx);
    axis_free(&ax);
    if (ys) axis_free(&ay);
    dl_sa_free(&a);
    return rc;
}
