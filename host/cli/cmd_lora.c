/* cmd_lora.c - `danlu lora merge|resize|extract`: sd-scripts' LoRA scripts (merge_lora.py,
 * svd_merge_lora.py, resize_lora.py, extract_lora_from_models.py) as one command. */
#include "cli/commands.h"
#include "core/error.h"
#include "lora/ckpt_tools.h"
#include "lora/lora_tools.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LORAS 64

/* "fp32" / "fp16" / "bf16" -> dtype, "keep" -> -1 */
int dl_cli_dtype(const char *s)
{
    if (!s || !strcmp(s, "keep")) return -1;
    if (!strcmp(s, "fp32")) return DL_F32;
    if (!strcmp(s, "fp16")) return DL_F16;
    if (!strcmp(s, "bf16")) return DL_BF16;
    return -2;
}

/* ------------------------------------------------------------------ merge */

typedef struct {
    const char *model, *out, *dtype;
    int rank, conv_rank;
    double clamp;
    int n_loras;
    dl_lora_weight loras[MAX_LORAS];
} merge_args;

static void merge_defaults(void *obj)
{
    merge_args *a = obj;
    memset(a, 0, sizeof *a);
    a->dtype = "keep";
    a->clamp = 0.99;
}

static int add_lora(void *obj, const char *cmd, const char *opt, const char *value)
{
    merge_args *a = obj;
    if (a->n_loras == MAX_LORAS) {
        fprintf(stderr, "danlu %s: at most %d %s options\n", cmd, MAX_LORAS, opt);
        return -1;
    }
    dl_lora_weight *l = &a->loras[a->n_loras];
    l->path = value;
    l->weight = 1.0f;
    const char *c = strrchr(value, ':');
    if (c && c[1]) {
        char *end;
        double w = strtod(c + 1, &end);
        if (*end == 0 && isfinite(w)) { /* FILE:W (a path may hold ':' too: only a number counts) */
            char *p = strndup(value, (size_t)(c - value));
            if (!p) return -1;
            l->path = p; /* lives until the process exits */
            l->weight = (float)w;
        }
    }
    a->n_loras++;
    return 0;
}

#define MA(f) offsetof(merge_args, f)
static const dl_opt k_merge_opts[] = {
    {"--lora", NULL, DL_OPT_FN, 0, "FILE[:W]", NULL, 0, 0, NULL, add_lora, "inputs",
     "a LoRA (kohya, PEFT or LyCORIS LoCon) at weight W (default 1); repeatable"},
    {"--model", NULL, DL_OPT_STR, MA(model), "CKPT", "none", 0, 0, NULL, NULL, "inputs",
     "bake the LoRAs into this checkpoint (single file or diffusers folder); without it the LoRAs are merged "
     "into one LoRA"},
    {"--out", "-o", DL_OPT_STR, MA(out), "PATH", NULL, 0, 0, NULL, NULL, "output",
     "the merged checkpoint (same layout as --model) or LoRA"},
    {"--dtype", NULL, DL_OPT_STR, MA(dtype), "T", "keep", 0, 0, "keep|fp32|fp16|bf16", NULL, "output",
     "dtype of the output's float tensors (keep: as the input)"},
    {"--rank", NULL, DL_OPT_INT, MA(rank), "R", "0", 0, 4096, NULL, NULL, "LoRA + LoRA",
     "rank of the merged LoRA: modules whose summed ranks exceed it are SVD-truncated (0: concatenate, exact)"},
    {"--conv-rank", NULL, DL_OPT_INT, MA(conv_rank), "R", "0", 0, 4096, NULL, NULL, "LoRA + LoRA",
     "the same for 4-D (conv) modules (0: --rank)"},
    {"--clamp-quantile", NULL, DL_OPT_DOUBLE, MA(clamp), "Q", "0.99", 0, 0, NULL, NULL, "LoRA + LoRA",
     "SVD-truncated factors clamped at this quantile of their values, as svd_merge_lora.py (1: no clamp)"},
};
#undef MA

int dl_lora_merge_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_merge_opts, (int)(sizeof k_merge_opts / sizeof *k_merge_opts), NULL, sizeof(merge_args),
                          merge_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

/* Parse argv with sets; positional arguments go to pos (at most max). Returns -1 on help (printed
 * to out), 2 on a usage error, 0 otherwise. */
static void merge_usage(FILE *f)
{
    fprintf(f, "usage: danlu lora merge --model CKPT --lora FILE[:W] ... --out CKPT2\n"
               "       danlu lora merge --lora A[:W] --lora B[:W] ... --out LORA [--rank R]\n"
               "  Bakes LoRAs into a checkpoint (merge_lora.py), or merges LoRAs into one (svd_merge_lora.py).\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_lora_merge_optsets(sets));
}

static int cmd_merge(int argc, char **argv, FILE *out)
{
    merge_args a;
    merge_defaults(&a);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_lora_merge_optsets(sets), npos;
    sets[0].obj = &a;
    const char *pos[1] = {NULL};
    int r = dl_opt_parse_argv("lora merge", sets, nsets, argc, argv, pos, 0, &npos, merge_usage, out);
    if (r) return r < 0 ? 0 : r;
    if (!a.out || a.n_loras == 0) {
        fprintf(stderr, "danlu lora merge: --out and at least one --lora are required\n");
        merge_usage(stderr);
        return 2;
    }
    int dt = dl_cli_dtype(a.dtype);
    if (dt == -2) {
        fprintf(stderr, "danlu lora merge: --dtype must be keep, fp32, fp16 or bf16\n");
        return 2;
    }
    if (a.model) {
        if (dl_ckpt_merge_loras(a.model, a.loras, a.n_loras, a.out, dt, stderr) != DL_OK) {
            fprintf(stderr, "danlu lora merge: %s\n", dl_error_msg());
            return 1;
        }
        return 0;
    }
    if (!(a.clamp > 0 && a.clamp <= 1)) {
        fprintf(stderr, "danlu lora merge: --clamp-quantile must be in (0, 1]\n");
        return 2;
    }
    dl_lora_file in[MAX_LORAS], mo;
    float w[MAX_LORAS];
    int rc = 1, n_in = 0, nc, ns;
    for (; n_in < a.n_loras; n_in++) {
        if (dl_lf_read(&in[n_in], a.loras[n_in].path) != DL_OK) goto done;
        w[n_in] = a.loras[n_in].weight;
    }
    if (dl_lora_merge_loras(in, w, n_in, a.rank, a.conv_rank, a.clamp, &mo, &nc, &ns) != DL_OK) goto done;
    char ranks[64];
    snprintf(ranks, sizeof ranks, "%d", a.rank);
    const char *meta[] = {"ss_network_module", "networks.lora", "danlu_merged_from", "lora merge"};
    if (dl_lf_save(&mo, a.out, dt >= 0 ? (dl_dtype)dt : in[0].dtype, meta, 2) != DL_OK) {
        dl_lf_free(&mo);
        goto done;
    }
    fprintf(stderr, "%s: %d modules (%d concatenated, %d SVD-truncated to rank %d) from %d LoRAs\n", a.out, mo.n, nc,
            ns, a.rank, n_in);
    dl_lf_free(&mo);
    rc = 0;
done:
    if (rc) fprintf(stderr, "danlu lora merge: %s\n", dl_error_msg());
    for (int i = 0; i < n_in; i++) dl_lf_free(&in[i]);
    return rc;
}

/* ------------------------------------------------------------------ resize */

typedef struct {
    const char *out, *dtype, *dynamic;
    int rank, conv_rank, quiet;
    double param;
} resize_args;

static void resize_defaults(void *obj)
{
    resize_args *a = obj;
    memset(a, 0, sizeof *a);
    a->dtype = "keep";
    a->dynamic = "none";
}

#define RA(f) offsetof(resize_args, f)
static const dl_opt k_resize_opts[] = {
    {"--rank", NULL, DL_OPT_INT, RA(rank), "R", NULL, 1, 4096, NULL, NULL, "resize",
     "the new rank (with --dynamic: the largest rank kept)"},
    {"--conv-rank", NULL, DL_OPT_INT, RA(conv_rank), "R", "0", 0, 4096, NULL, NULL, "resize",
     "the same for 4-D (conv) modules (0: --rank)"},
    {"--dynamic", NULL, DL_OPT_STR, RA(dynamic), "METHOD", "none", 0, 0, "none|sv_ratio|sv_fro|sv_cumulative", NULL,
     "resize", "choose each module's rank from its singular values (resize_lora.py's dynamic methods)"},
    {"--dynamic-param", NULL, DL_OPT_DOUBLE, RA(param), "X", "0", 0, 0, NULL, NULL, "resize",
     "sv_ratio: largest/smallest kept; sv_fro, sv_cumulative: the fraction retained"},
    {"--out", "-o", DL_OPT_STR, RA(out), "PATH", NULL, 0, 0, NULL, NULL, "output", "the resized LoRA"},
    {"--dtype", NULL, DL_OPT_STR, RA(dtype), "T", "keep", 0, 0, "keep|fp32|fp16|bf16", NULL, "output",
     "dtype of the output (keep: as the input)"},
    {"--quiet", "-q", DL_OPT_FLAG, RA(quiet), NULL, "off", 0, 0, NULL, NULL, "output",
     "no per-module report (retained energy), only the summary"},
};
#undef RA

int dl_lora_resize_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_resize_opts, (int)(sizeof k_resize_opts / sizeof *k_resize_opts), NULL, sizeof(resize_args),
                          resize_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void resize_usage(FILE *f)
{
    fprintf(f, "usage: danlu lora resize IN.safetensors --rank R [--dynamic METHOD --dynamic-param X] --out OUT\n"
               "  Re-decomposes every module (conv modules included) at a new rank by SVD, as resize_lora.py, and\n"
               "  reports per module the fraction of sum(S) and of the Frobenius norm retained.\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_lora_resize_optsets(sets));
}

static int cmd_resize(int argc, char **argv, FILE *out)
{
    resize_args a;
    resize_defaults(&a);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_lora_resize_optsets(sets), npos;
    sets[0].obj = &a;
    const char *pos[1] = {NULL};
    int r = dl_opt_parse_argv("lora resize", sets, nsets, argc, argv, pos, 1, &npos, resize_usage, out);
    if (r) return r < 0 ? 0 : r;
    if (npos != 1 || !a.out || a.rank < 1) {
        fprintf(stderr, "danlu lora resize: IN, --rank and --out are required\n");
        resize_usage(stderr);
        return 2;
    }
    dl_resize_opts o = {.rank = a.rank, .conv_rank = a.conv_rank, .param = a.param};
    int dt = dl_cli_dtype(a.dtype);
    if (dl_dyn_parse(a.dynamic, &o.method) != DL_OK || dt == -2) {
        fprintf(stderr, "danlu lora resize: %s\n", dt == -2 ? "--dtype must be keep, fp32, fp16 or bf16" : dl_error_msg());
        return 2;
    }
    dl_lora_file lf;
    if (dl_lf_read(&lf, pos[0]) != DL_OK) {
        fprintf(stderr, "danlu lora resize: %s\n", dl_error_msg());
        return 1;
    }
    dl_resize_row *rows = calloc((size_t)lf.n, sizeof *rows);
    int rc = 1, n = lf.n;
    if (!rows || dl_lora_resize(&lf, &o, rows, pos[0]) != DL_OK) goto done;
    double fro = 0, fro2 = 0;
    int old_max = 0;
    for (int i = 0; i < n; i++) {
        const dl_resize_row *w = &rows[i];
        if (!a.quiet)
            fprintf(out, "%-80s rank %3d -> %3d  alpha %-8g sum(S) retained %5.1f%%  fro retained %5.1f%%  max(S) ratio %.1f\n",
                    w->stem, w->old_rank, w->pick.new_rank, (double)w->pick.new_alpha, 100 * w->pick.sum_retained,
                    100 * w->pick.fro_retained, w->pick.max_ratio);
        double f = isnan(w->pick.fro_retained) ? 1 : w->pick.fro_retained;
        fro += f, fro2 += f * f;
        if (w->old_rank > old_max) old_max = w->old_rank;
    }
    const double mean = fro / n, sd = sqrt(fmax(fro2 / n - mean * mean, 0));
    char comment[256], dim[32];
    if (o.method == DL_DYN_NONE) snprintf(comment, sizeof comment, "dimension is resized from %d to %d", old_max, a.rank);
    else snprintf(comment, sizeof comment, "Dynamic resize with %s: %g from %d", dl_dyn_name(o.method), a.param, old_max);
    snprintf(dim, sizeof dim, "%d", a.rank);
    /* the input's metadata, with sd-scripts' keys updated */
    const char **meta = calloc((size_t)(lf.n_meta + 3) * 2, sizeof *meta);
    if (!meta) goto done;
    int nm = 0;
    for (int i = 0; i < lf.n_meta; i++) {
        const char *k = lf.meta[2 * i];
        if (!strcmp(k, "ss_training_comment") || !strcmp(k, "ss_network_dim") || !strcmp(k, "ss_network_alpha")) continue;
        meta[2 * nm] = k, meta[2 * nm + 1] = lf.meta[2 * i + 1], nm++;
    }
    meta[2 * nm] = "ss_training_comment", meta[2 * nm + 1] = comment, nm++;
    meta[2 * nm] = "ss_network_dim", meta[2 * nm + 1] = o.method == DL_DYN_NONE ? dim : "Dynamic", nm++;
    char alpha[32];
    snprintf(alpha, sizeof alpha, "%g", n ? (double)lf.m[n - 1].alpha : 0.0);
    meta[2 * nm] = "ss_network_alpha", meta[2 * nm + 1] = o.method == DL_DYN_NONE ? alpha : "Dynamic", nm++;
    int ok = dl_lf_save(&lf, a.out, dt >= 0 ? (dl_dtype)dt : lf.dtype, meta, nm) == DL_OK;
    free(meta);
    if (!ok) goto done;
    fprintf(out, "%s: %d modules; Frobenius norm retained: mean %.2f%%, std %.3f\n", a.out, n, 100 * mean, sd);
    rc = 0;
done:
    if (rc) fprintf(stderr, "danlu lora resize: %s\n", dl_error_msg());
    free(rows);
    dl_lf_free(&lf);
    return rc;
}

/* ------------------------------------------------------------------ extract */

typedef struct {
    const char *base, *tuned, *out, *dtype;
    int rank, conv_rank, unet_only;
    double clamp, min_diff, threshold;
} extract_args;

static void extract_defaults(void *obj)
{
    extract_args *a = obj;
    memset(a, 0, sizeof *a);
    a->dtype = "fp32";
    a->rank = 4;
    a->clamp = 0.99;
    a->min_diff = 0.01;
}

#define EA(f) offsetof(extract_args, f)
static const dl_opt k_extract_opts[] = {
    {"--base", NULL, DL_OPT_STR, EA(base), "CKPT", NULL, 0, 0, NULL, NULL, "inputs", "the original checkpoint"},
    {"--tuned", NULL, DL_OPT_STR, EA(tuned), "CKPT", NULL, 0, 0, NULL, NULL, "inputs",
     "the fine-tuned checkpoint (the LoRA approximates tuned - base)"},
    {"--rank", NULL, DL_OPT_INT, EA(rank), "R", "4", 1, 4096, NULL, NULL, "extract",
     "rank of the linear (and 1x1 conv) modules"},
    {"--conv-rank", NULL, DL_OPT_INT, EA(conv_rank), "R", "0", 0, 4096, NULL, NULL, "extract",
     "rank of the 3x3 conv modules (LoCon); 0: none"},
    {"--clamp-quantile", NULL, DL_OPT_DOUBLE, EA(clamp), "Q", "0.99", 0, 0, NULL, NULL, "extract",
     "factors clamped at this quantile of their values, as extract_lora_from_models.py (1: no clamp)"},
    {"--min-diff", NULL, DL_OPT_DOUBLE, EA(min_diff), "X", "0.01", 0, 0, NULL, NULL, "extract",
     "the text encoder is extracted only when a weight of it changed by more than X"},
    {"--module-threshold", NULL, DL_OPT_DOUBLE, EA(threshold), "X", "0", 0, 0, NULL, NULL, "extract",
     "a module whose largest change is at most X is left out (0: only unchanged ones)"},
    {"--unet-only", NULL, DL_OPT_FLAG, EA(unet_only), NULL, "off", 0, 0, NULL, NULL, "extract", "no text-encoder modules"},
    {"--out", "-o", DL_OPT_STR, EA(out), "PATH", NULL, 0, 0, NULL, NULL, "output", "the LoRA (kohya layout)"},
    {"--dtype", NULL, DL_OPT_STR, EA(dtype), "T", "fp32", 0, 0, "fp32|fp16|bf16", NULL, "output", "dtype of the LoRA"},
};
#undef EA

int dl_lora_extract_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_extract_opts, (int)(sizeof k_extract_opts / sizeof *k_extract_opts), NULL,
                          sizeof(extract_args), extract_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void extract_usage(FILE *f)
{
    fprintf(f, "usage: danlu lora extract --base A --tuned B --rank R [--conv-rank Rc] --out LORA\n"
               "  The LoRA whose up·down best approximates B - A per module (truncated SVD, as\n"
               "  extract_lora_from_models.py).\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_lora_extract_optsets(sets));
}

static int cmd_extract(int argc, char **argv, FILE *out)
{
    extract_args a;
    extract_defaults(&a);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_lora_extract_optsets(sets), npos;
    sets[0].obj = &a;
    const char *pos[1] = {NULL};
    int r = dl_opt_parse_argv("lora extract", sets, nsets, argc, argv, pos, 0, &npos, extract_usage, out);
    if (r) return r < 0 ? 0 : r;
    if (!a.base || !a.tuned || !a.out) {
        fprintf(stderr, "danlu lora extract: --base, --tuned and --out are required\n");
        extract_usage(stderr);
        return 2;
    }
    if (!(a.clamp > 0 && a.clamp <= 1)) {
        fprintf(stderr, "danlu lora extract: --clamp-quantile must be in (0, 1]\n");
        return 2;
    }
    int dt = dl_cli_dtype(a.dtype);
    if (dt < 0) {
        fprintf(stderr, "danlu lora extract: --dtype must be fp32, fp16 or bf16\n");
        return 2;
    }
    dl_checkpoint b, t;
    memset(&t, 0, sizeof t);
    int rc = 1;
    const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1};
    if (dl_ckpt_open(&b, a.base, &copt) != DL_OK) {
        fprintf(stderr, "danlu lora extract: %s\n", dl_error_msg());
        return 1;
    }
    dl_lora_file lf;
    dl_extract_stats st;
    dl_extract_opts o = {.rank = a.rank, .conv_rank = a.conv_rank, .clamp_quantile = a.clamp, .min_diff = a.min_diff,
                         .module_threshold = a.threshold, .no_text = a.unet_only};
    if (dl_ckpt_open(&t, a.tuned, &copt) != DL_OK) goto done;
    if (b.sdxl != t.sdxl) {
        dl_error_set("%s and %s: one is SDXL, the other is not (a LoRA is extracted between a model and its "
                     "fine-tune)", a.base, a.tuned);
        goto done;
    }
    if (dl_lora_extract(&b, &t, &o, &lf, &st) != DL_OK) goto done;
    char dim[16], cdim[16], args[96];
    snprintf(dim, sizeof dim, "%d", a.rank);
    snprintf(cdim, sizeof cdim, "%d", a.conv_rank);
    snprintf(args, sizeof args, a.conv_rank ? "{\"conv_dim\": \"%d\", \"conv_alpha\": \"%d.0\"}" : "{}", a.conv_rank,
             a.conv_rank);
    const char *meta[] = {"ss_network_module", "networks.lora", "ss_network_dim", dim, "ss_network_alpha", dim,
                          "ss_network_args", args, "ss_v2", b.sd2 ? "True" : "False",
                          "ss_base_model_version", "sdxl_base_v1-0"};
    if (dl_lf_save(&lf, a.out, (dl_dtype)dt, meta, b.sdxl ? 6 : 5) != DL_OK) {
        dl_lf_free(&lf);
        goto done;
    }
    fprintf(out, "%s: %d modules (%d unchanged left out%s); worst relative Frobenius error %.3g\n", a.out, st.n_modules,
            st.n_unchanged, st.text_skipped ? "; text encoder unchanged: UNet only" : "", st.worst_rel_err);
    dl_lf_free(&lf);
    rc = 0;
done:
    if (rc) fprintf(stderr, "danlu lora extract: %s\n", dl_error_msg());
    dl_ckpt_close(&t);
    dl_ckpt_close(&b);
    return rc;
}

/* ------------------------------------------------------------------ dispatch */

static void lora_usage(FILE *f)
{
    fprintf(f, "usage: danlu lora <merge|resize|extract> [options]\n"
               "  merge    bake LoRAs into a checkpoint, or merge LoRAs into one\n"
               "  resize   change the rank of a LoRA (fixed or dynamic, by SVD)\n"
               "  extract  the LoRA that approximates the difference of two checkpoints\n"
               "'danlu lora <subcommand> --help' describes each.\n");
}

int dl_cmd_lora_merge(int argc, char **argv, FILE *out) { return cmd_merge(argc, argv, out); }
int dl_cmd_lora_resize(int argc, char **argv, FILE *out) { return cmd_resize(argc, argv, out); }
int dl_cmd_lora_extract(int argc, char **argv, FILE *out) { return cmd_extract(argc, argv, out); }

int dl_cmd_lora(int argc, char **argv, FILE *out)
{
    if (argc < 2) {
        lora_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        lora_usage(out);
        return 0;
    }
    if (!strcmp(argv[1], "merge")) return cmd_merge(argc - 1, argv + 1, out);
    if (!strcmp(argv[1], "resize")) return cmd_resize(argc - 1, argv + 1, out);
    if (!strcmp(argv[1], "extract")) return cmd_extract(argc - 1, argv + 1, out);
    fprintf(stderr, "danlu lora: unknown subcommand '%s'\n", argv[1]);
    lora_usage(stderr);
    return 2;
}
