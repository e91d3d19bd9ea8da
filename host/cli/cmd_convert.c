/* cmd_convert.c - `danlu convert IN --out OUT`: checkpoints between the single-file and diffusers
 * layouts and between dtypes; LoRAs between the kohya and PEFT key layouts. */
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "lora/ckpt_tools.h"
#include "lora/lora_file.h"
#include "model/checkpoint.h"

#include <stddef.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *out, *layout, *dtype, *model;
} convert_args;

static void convert_defaults(void *obj)
{
    convert_args *a = obj;
    memset(a, 0, sizeof *a);
    a->layout = "keep";
    a->dtype = "keep";
}

#define CA(f) offsetof(convert_args, f)
static const dl_opt k_convert_opts[] = {
    {"--out", "-o", DL_OPT_STR, CA(out), "PATH", NULL, 0, 0, NULL, NULL, "output",
     "the converted file (single file, LoRA) or folder (diffusers; must not exist)"},
    {"--layout", NULL, DL_OPT_STR, CA(layout), "L", "keep", 0, 0, "keep|single|diffusers|kohya|peft", NULL, "output",
     "checkpoints: single or diffusers; LoRAs: kohya or peft"},
    {"--dtype", NULL, DL_OPT_STR, CA(dtype), "T", "keep", 0, 0, "keep|fp32|fp16|bf16", NULL, "output",
     "dtype of every float tensor"},
    {"--model", NULL, DL_OPT_STR, CA(model), "CKPT", "SD 1.x/2.x names", 0, 0, NULL, NULL, "LoRA",
     "the checkpoint whose module names map kohya <-> PEFT keys (default: the SD 1.x/2.x UNet and text encoders)"},
};
#undef CA

int dl_convert_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_convert_opts, (int)(sizeof k_convert_opts / sizeof *k_convert_opts), NULL,
                          sizeof(convert_args), convert_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu convert IN --out OUT [--layout single|diffusers|kohya|peft] [--dtype fp32|fp16|bf16]\n"
               "  IN is a checkpoint (single .safetensors file or diffusers folder) or a LoRA file.\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_convert_optsets(sets));
}

/* 1 when path is a LoRA file (down / A keys), 0 a checkpoint, -1 unreadable (message set). */
static int is_lora(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    dl_st_file f;
    if (dl_st_open(&f, path) != DL_OK) return -1;
    int l = 0;
    for (int i = 0; i < f.n_tensors && !l; i++)
        l = strstr(f.tensors[i].name, ".lora_down.") || strstr(f.tensors[i].name, ".lora_A.") ||
            strstr(f.tensors[i].name, ".lora.down.");
    dl_st_close(&f);
    return l;
}

/* A LoRA for SDXL: a stem of a second text encoder (kohya lora_te1_ / lora_te2_, PEFT
 * text_encoder_2.). */
static int lora_is_xl(const dl_lora_file *lf)
{
    for (int i = 0; i < lf->n; i++) {
        const char *s = lf->m[i].stem;
        if (!strncmp(s, "lora_te1_", 9) || !strncmp(s, "lora_te2_", 9) || !strncmp(s, "text_encoder_2.", 15)) return 1;
    }
    return 0;
}

static int convert_lora(const convert_args *a, const char *in, int dt)
{
    dl_model_config cfg;
    dl_lora_file lf;
    DL_TRY(dl_lf_read(&lf, in));
    int ret = DL_OK;
    if (a->model) {
        dl_checkpoint ck;
        const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1};
        ret = dl_ckpt_open(&ck, a->model, &copt);
        if (ret == DL_OK) {
            cfg = ck.cfg;
            dl_ckpt_close(&ck);
        }
    } else { /* SD 1.x/2.x (23 text layers), or SDXL base when the file names a second text encoder */
        ret = dl_model_config_preset(&cfg, lora_is_xl(&lf) ? "sdxl" : "sd21");
    }
    if (ret != DL_OK) {
        dl_lf_free(&lf);
        return DL_ERR;
    }
    int to_peft = lf.peft;
    if (!strcmp(a->layout, "peft")) to_peft = 1;
    else if (!strcmp(a->layout, "kohya")) to_peft = 0;
    ret = dl_lf_relayout(&lf, &cfg, to_peft, in);
    if (ret == DL_OK) ret = dl_lf_save(&lf, a->out, dt >= 0 ? (dl_dtype)dt : lf.dtype, (const char *const *)lf.meta, lf.n_meta);
    if (ret == DL_OK) fprintf(stderr, "%s: %d LoRA modules (%s layout)\n", a->out, lf.n, to_peft ? "PEFT" : "kohya");
    dl_lf_free(&lf);
    return ret;
}

int dl_cmd_convert(int argc, char **argv, FILE *out)
{
    convert_args a;
    convert_defaults(&a);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_convert_optsets(sets);
    sets[0].obj = &a;
    const char *in = NULL;
    int npos, pr = dl_opt_parse_argv("convert", sets, nsets, argc, argv, &in, 1, &npos, usage, out);
    if (pr) return pr < 0 ? 0 : pr;
    if (!in || !a.out) {
        fprintf(stderr, "danlu convert: IN and --out are required\n");
        usage(stderr);
        return 2;
    }
    int dt = dl_cli_dtype(a.dtype);
    if (dt == -2) {
        fprintf(stderr, "danlu convert: --dtype must be keep, fp32, fp16 or bf16\n");
        return 2;
    }
    int lora = is_lora(in), ret;
    if (lora < 0) ret = DL_ERR;
    else if (lora) {
        if (!strcmp(a.layout, "single") || !strcmp(a.layout, "diffusers")) {
            fprintf(stderr, "danlu convert: %s is a LoRA: --layout kohya or peft\n", in);
            return 2;
        }
        ret = convert_lora(&a, in, dt);
    } else {
        if (!strcmp(a.layout, "kohya") || !strcmp(a.layout, "peft")) {
            fprintf(stderr, "danlu convert: %s is a checkpoint: --layout single or diffusers\n", in);
            return 2;
        }
        int layout = !strcmp(a.layout, "single") ? DL_LAYOUT_SINGLE : !strcmp(a.layout, "diffusers") ? DL_LAYOUT_DIFFUSERS : -1;
        ret = dl_ckpt_convert(in, a.out, layout, dt, stderr);
    }
    if (ret != DL_OK) {
        fprintf(stderr, "danlu convert: %s\n", dl_error_msg());
        return 1;
    }
    return 0;
}
