/* test_lora_tools_diffusers.c - what `danlu lora merge` and `danlu convert` write, against
 * diffusers: tests/gen/gen_lora_tools_diffusers.py ran the danlu binary on tests/golden/tiny_pipe,
 * loaded the results with diffusers / transformers and checked them there (the merged folder
 * against diffusers' load_lora_weights + fuse_lora(0.7); the folder converted to a single file and
 * back against the original, bit for bit). Here the same commands run in process with the
 * generator's arguments, and danlu's UNet and text encoder on today's outputs give the numbers
 * diffusers computed on the generator's; the converted folder's config.json reads back as the
 * original's numbers. Golden data: tests/golden/lora_tools_diffusers.safetensors. */
#include "cli/commands.h"
#include "core/arena.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "testutil.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(lora_tools_diffusers, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

#define TOL_DIFFUSERS 1e-4 /* fp32 danlu vs diffusers in float64, relative L2 (as test_train_diffusers.c) */

enum { N = TU_TE_N, H = TU_TE_H, W = TU_TE_W, T = TU_TE_T, CTX = TU_TE_CTX };
typedef tu_te_inputs inputs;

/* Run the danlu command of golden metadata key `key` (a JSON list of arguments, {model},
 * {lora}, {out}, {single} standing for paths) in process; the paths are absolute. */
static void run_golden_command(const dl_st_file *g, const char *key, const char *model, const char *lora,
                               const char *out, const char *single)
{
    const char *js = dl_st_meta(g, key);
    cr_assert_not_null(js, "golden has no %s", key);
    cJSON *args = cJSON_Parse(js);
    cr_assert(cJSON_IsArray(args), "%s: %s", key, js);
    char *argv[32];
    int argc = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, args) {
        cr_assert(cJSON_IsString(a) && argc < 31);
        const char *v = a->valuestring;
        char buf[4200];
        if (!strcmp(v, "{model}")) v = model;
        else if (!strcmp(v, "{out}")) v = out;
        else if (!strcmp(v, "{single}")) v = single;
        else if (!strncmp(v, "{lora}", 6)) { /* "{lora}:0.7" */
            snprintf(buf, sizeof buf, "%s%s", lora, v + 6);
            v = buf;
        }
        argv[argc] = strdup(v);
        cr_assert_not_null(argv[argc]);
        argc++;
    }
    argv[argc] = NULL;
    FILE *devnull = fopen("/dev/null", "w");
    cr_assert_not_null(devnull);
    int rc = !strcmp(argv[0], "lora") ? dl_cmd_lora(argc, argv, devnull) : dl_cmd_convert(argc, argv, devnull);
    fclose(devnull);
    cr_assert_eq(rc, 0, "%s (%s): exit status %d: %s", key, js, rc, dl_error_msg());
    for (int i = 0; i < argc; i++) free(argv[i]);
    cJSON_Delete(args);
}

/* danlu's UNet [N, H, W, 4] and text encoder [N, T, CTX] on the model at path (absolute) against
 * golden "<o>.unet" / "<o>.te"; the relative L2 errors go to *eu, *et. */
static void expect_model_outputs(const char *path, const inputs *in, const dl_st_file *g, const char *o, double *eu,
                                 double *et)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, path, NULL), DL_OK, "%s", dl_error_msg());
    dl_arena w, s;
    cr_assert_eq(dl_arena_init(&w, "weights", tu_unet_weights_bytes(&ck) + tu_clip_weights_bytes(&ck)), DL_OK);
    dl_unet u;
    dl_clip te;
    cr_assert_eq(dl_unet_load(&u, &ck, &w), DL_OK, "%s: %s", path, dl_error_msg());
    cr_assert_eq(dl_clip_load(&te, &ck, &w), DL_OK, "%s: %s", path, dl_error_msg());
    cr_assert_eq(te.cfg.hidden_size, CTX);
    size_t sb = dl_unet_scratch_bytes(&u, N, H, W, T), cb = dl_clip_scratch_bytes(&te, N, T);
    cr_assert_eq(dl_arena_init(&s, "scratch", sb > cb ? sb : cb), DL_OK);
    const size_t nu = (size_t)N * H * W * 4, nt = (size_t)N * T * CTX;
    float *out = tu_alloc_nan(nu), *h = tu_alloc_nan(nt);
    dl_unet_forward(tu_ctx(), &u, N, H, W, in->x, in->t, in->c, T, out, &s);
    dl_clip_forward(tu_ctx(), &te, N, T, in->ids, te.cfg.num_layers, 1, h, &s);
    char key[64], lab[128];
    snprintf(key, sizeof key, "%s.unet", o);
    float *ref = tu_golden_f32(g, key, NULL);
    *eu = tu_rel_l2(out, ref, nu);
    snprintf(lab, sizeof lab, "%s: danlu UNet vs diffusers", o);
    tu_expect_close(out, ref, nu, TOL_DIFFUSERS, lab);
    free(ref);
    snprintf(key, sizeof key, "%s.te", o);
    ref = tu_golden_f32(g, key, NULL);
    *et = tu_rel_l2(h, ref, nt);
    snprintf(lab, sizeof lab, "%s: danlu text encoder vs diffusers", o);
    tu_expect_close(h, ref, nt, TOL_DIFFUSERS, lab);
    free(ref);
    free(out);
    free(h);
    dl_arena_free(&s);
    dl_clip_free(&te);
    dl_unet_free(&u);
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

/* Relative L2 between golden tensors a and b (how far the LoRA moves an output). */
static double golden_rel(const dl_st_file *g, const char *a, const char *b)
{
    int64_t na, nb;
    float *x = tu_golden_f32(g, a, &na), *y = tu_golden_f32(g, b, &nb);
    cr_assert_eq(na, nb);
    double r = tu_rel_l2(x, y, (size_t)na);
    free(x);
    free(y);
    return r;
}

/* `danlu lora merge --model tiny_pipe --lora epoch1:0.7 --dtype fp32` into a diffusers folder:
 * diffusers checked the generator's folder against its own fuse_lora(0.7) and computed these
 * outputs on it; danlu on today's folder gives them. The single-file merge too (the generator
 * found it equal to the folder merge in diffusers, bit for bit). */
Test(lora_tools_diffusers, merged_checkpoint_matches_diffusers, .timeout = 120)
{
    dl_st_file g;
    tu_golden_open(&g, "lora_tools_diffusers");
    inputs in;
    tu_te_inputs_load(&in, &g);
    const char *mrel = dl_st_meta(&g, "model"), *lrel = dl_st_meta(&g, "lora");
    cr_assert(mrel && lrel);
    char model[1024], lora[1024], out[1024], single[1024], ms[1024];
    snprintf(model, sizeof model, "%s", tu_path(mrel));
    snprintf(lora, sizeof lora, "%s", tu_path(lrel));
    snprintf(out, sizeof out, "%s", tu_tmp("merged"));
    snprintf(single, sizeof single, "%s", tu_tmp("s.safetensors"));
    snprintf(ms, sizeof ms, "%s", tu_tmp("ms.safetensors"));
    double eu, et;
    expect_model_outputs(model, &in, &g, "base", &eu, &et);
    cr_log_info("tiny_pipe, no LoRA: danlu vs diffusers UNet rel L2 %.2e, text encoder %.2e", eu, et);
    const double su = golden_rel(&g, "merge.unet", "base.unet"), st = golden_rel(&g, "merge.te", "base.te");
    cr_expect(su > 1e-2 && st > 1e-2, "the LoRA barely changes the outputs (%.2e, %.2e): nothing is compared", su, st);
    run_golden_command(&g, "merge.args", model, lora, out, NULL);
    expect_model_outputs(out, &in, &g, "merge", &eu, &et);
    cr_log_info("merged folder: danlu vs diffusers UNet rel L2 %.2e, text encoder %.2e (the LoRA moves them by %.2e, "
                "%.2e)", eu, et, su, st);
    /* the same LoRA baked into a single file */
    run_golden_command(&g, "to_single.args", model, lora, NULL, single);
    run_golden_command(&g, "merge.args", single, lora, ms, NULL);
    expect_model_outputs(ms, &in, &g, "merge", &eu, &et);
    cr_log_info("merged single file: danlu vs diffusers UNet rel L2 %.2e, text encoder %.2e", eu, et);
    tu_te_inputs_free(&in);
    dl_st_close(&g);
}

/* The value of field `key` in the JSON file at path (a number). */
static double json_number(const char *path, const char *key)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "%s: not JSON", path);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    cr_assert(cJSON_IsNumber(v), "%s: no number %s", path, key);
    double d = v->valuedouble;
    cJSON_Delete(o);
    return d;
}

/* tiny_pipe -> single file -> diffusers folder: diffusers computed the original's outputs on the
 * generator's converted folder bit for bit; danlu loads today's and gives them, and the
 * config.json float fields read back as the original's numbers (1e-05, not the float's exact
 * value 9.99999974737875e-06: diffusers and transformers compute with what the file says). */
Test(lora_tools_diffusers, converted_folder_matches_diffusers, .timeout = 120)
{
    dl_st_file g;
    tu_golden_open(&g, "lora_tools_diffusers");
    inputs in;
    tu_te_inputs_load(&in, &g);
    char model[1024], single[1024], out[1024];
    snprintf(model, sizeof model, "%s", tu_path(dl_st_meta(&g, "model")));
    snprintf(single, sizeof single, "%s", tu_tmp("s.safetensors"));
    snprintf(out, sizeof out, "%s", tu_tmp("conv"));
    run_golden_command(&g, "to_single.args", model, NULL, NULL, single);
    run_golden_command(&g, "to_folder.args", NULL, NULL, out, single);
    double eu, et;
    expect_model_outputs(out, &in, &g, "convert", &eu, &et);
    cr_log_info("converted folder: danlu vs diffusers UNet rel L2 %.2e, text encoder %.2e", eu, et);
    cr_expect_eq(golden_rel(&g, "convert.unet", "base.unet"), 0.0, "diffusers: the converted UNet differs");
    cr_expect_eq(golden_rel(&g, "convert.te", "base.te"), 0.0, "diffusers: the converted text encoder differs");
    static const struct { const char *file, *key; } fields[] = {
        {"unet/config.json", "norm_eps"},
        {"vae/config.json", "scaling_factor"},
        {"text_encoder/config.json", "layer_norm_eps"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        char a[1200], b[1200];
        snprintf(a, sizeof a, "%s/%s", model, fields[i].file);
        snprintf(b, sizeof b, "%s/%s", out, fields[i].file);
        const double va = json_number(a, fields[i].key), vb = json_number(b, fields[i].key);
        cr_expect(va == vb, "%s %s: %.17g, the original says %.17g", fields[i].file, fields[i].key, vb, va);
    }
    tu_te_inputs_free(&in);
    dl_st_close(&g);
}
