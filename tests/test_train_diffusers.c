/* test_train_diffusers.c - the trainer's own kohya-layout output against diffusers: LoRA files
 * written by `danlu train` on the tiny SD1.5-architecture model (UNet + text encoder; UNet with
 * 3x3 conv LoCon) were loaded by diffusers' load_lora_weights with no missing or unexpected keys
 * (checked by the generator); here danlu's reader loads the same committed files and its UNet and
 * text encoder give diffusers' outputs, and today's trainer, run in process with the same flags,
 * writes the same LoRA. Golden data: tests/gen/gen_train_diffusers.py (train_diffusers.safetensors,
 * train_diffusers/{unet_te,conv}.safetensors and the dataset train_diffusers/data). */
#include "testutil.h"
#include "core/arena.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "train/config.h"
#include "train/trainer.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(train_diffusers, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

#define TOL_DIFFUSERS 1e-4 /* fp32 danlu vs diffusers in float64, relative L2 */
#define TOL_RETRAIN 1e-4   /* a re-run of the trainer vs the committed file (summation order) */

static const char *const RUNS[] = {"unet_te", "conv"};

enum { N = 2, H = 8, W = 8, T = 8, CTX = 64 };

typedef struct inputs {
    float *x, *t, *c; /* [N, H, W, 4], [N], [N, T, CTX] */
    int32_t ids[N * T];
} inputs;

static void inputs_load(inputs *in, const dl_st_file *g)
{
    int64_t xs[4] = {N, H, W, 4}, ts[1] = {N}, cs[3] = {N, T, CTX}, is[2] = {N, T};
    in->x = tu_golden_f32_shape(g, "in.x", 4, xs);
    in->t = tu_golden_f32_shape(g, "in.t", 1, ts);
    in->c = tu_golden_f32_shape(g, "in.ctx", 3, cs);
    float *ids = tu_golden_f32_shape(g, "in.ids", 2, is);
    for (int i = 0; i < N * T; i++) in->ids[i] = (int32_t)ids[i];
    free(ids);
}

static void inputs_free(inputs *in)
{
    free(in->x);
    free(in->t);
    free(in->c);
}

/* UNet [N, H, W, 4] and text-encoder [N, T, CTX] outputs of m as it is now against golden
 * "<o>.unet" / "<o>.te"; the relative L2 errors go to *eu, *et. */
static void expect_outputs(tu_te_unet *m, const inputs *in, const dl_st_file *g, const char *o, double *eu, double *et)
{
    dl_arena s;
    size_t sb = dl_unet_scratch_bytes(&m->u, N, H, W, T), cb = dl_clip_scratch_bytes(&m->te.cfg, N, T);
    cr_assert_eq(dl_arena_init(&s, "scratch", sb > cb ? sb : cb), DL_OK);
    const size_t nu = (size_t)N * H * W * 4, nt = (size_t)N * T * CTX;
    cr_assert_eq(m->te.cfg.hidden_size, CTX);
    float *out = tu_alloc_nan(nu), *h = tu_alloc_nan(nt);
    dl_unet_forward(tu_ctx(), &m->u, N, H, W, in->x, in->t, in->c, T, out, &s);
    dl_clip_forward(tu_ctx(), &m->te, N, T, in->ids, m->te.cfg.num_layers, 1, h, &s);
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
}

static const char *committed(const char *run)
{
    char rel[128];
    snprintf(rel, sizeof rel, "tests/golden/train_diffusers/%s.safetensors", run);
    return tu_path(rel);
}

/* The committed trainer outputs, loaded by danlu's reader onto the tiny model: every key used,
 * the module count diffusers injected, and diffusers' UNet / text-encoder outputs. */
Test(train_diffusers, committed_outputs_match_diffusers)
{
    tu_te_unet m;
    tu_te_unet_open(&m, "tests/golden/tiny_pipe");
    dl_st_file g;
    tu_golden_open(&g, "train_diffusers");
    inputs in;
    inputs_load(&in, &g);
    double eu, et;
    expect_outputs(&m, &in, &g, "base", &eu, &et);
    cr_log_info("no LoRA: UNet rel L2 %.2e, text encoder %.2e", eu, et);
    for (int r = 0; r < 2; r++) {
        char path[1024], key[64];
        snprintf(path, sizeof path, "%s", committed(RUNS[r]));
        dl_lora_net net;
        dl_lora_report rep;
        cr_assert_eq(dl_lora_load(path, &m.ck.cfg, 1.0f, &net, &rep), DL_OK, "%s", dl_error_msg());
        snprintf(key, sizeof key, "%s.n_modules", RUNS[r]);
        const char *nm = dl_st_meta(&g, key);
        cr_assert_not_null(nm, "golden has no %s", key);
        cr_expect_eq(rep.n_unmatched, 0, "%s: %d keys matched nothing (first %s)", path, rep.n_unmatched,
                     rep.unmatched[0]);
        cr_expect_eq(rep.n_matched_keys, rep.n_keys, "%s", path);
        cr_expect_eq(rep.n_modules, atoi(nm), "%s: %d modules, diffusers injected %s", path, rep.n_modules, nm);
        cr_expect(r == 0 ? rep.n_text > 0 : rep.n_text == 0, "%s: %d text-encoder modules", path, rep.n_text);
        int conv3 = 0;
        for (int i = 0; i < net.n; i++) conv3 += net.mods[i].is_conv && net.mods[i].k == 3;
        cr_expect(r == 1 ? conv3 > 0 : conv3 == 0, "%s: %d 3x3 conv modules", path, conv3);
        cr_assert_eq(dl_lora_net_attach(&net, &m.u, &m.te), DL_OK, "%s", dl_error_msg());
        expect_outputs(&m, &in, &g, RUNS[r], &eu, &et);
        cr_log_info("%s (%d modules, %d 3x3 conv): danlu vs diffusers with the LoRA: UNet rel L2 %.2e, text encoder "
                    "%.2e", RUNS[r], net.n, conv3, eu, et);
        dl_lora_net_detach(&net, &m.u, &m.te);
        dl_lora_net_free(&net);
    }
    inputs_free(&in);
    dl_st_close(&g);
    tu_te_unet_close(&m);
}

/* Replace {model}, {data}, {out} in a golden flag. */
static char *expand(const char *a, const char *model, const char *data, const char *out)
{
    const char *v = !strcmp(a, "{model}") ? model : !strcmp(a, "{data}") ? data : !strcmp(a, "{out}") ? out : a;
    char *s = strdup(v);
    cr_assert_not_null(s);
    return s;
}

/* Largest per-tensor relative L2 between the tensors of a and b (same names and shapes). */
static double compare_files(const char *a, const char *b)
{
    dl_st_file fa, fb;
    cr_assert_eq(dl_st_open(&fa, a), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&fb, b), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(fa.n_tensors, fb.n_tensors, "%s has %d tensors, %s %d", a, fa.n_tensors, b, fb.n_tensors);
    double worst = 0;
    for (int i = 0; i < fa.n_tensors; i++) {
        const dl_st_tensor *ta = &fa.tensors[i], *tb = dl_st_find(&fb, ta->name);
        cr_assert_not_null(tb, "%s: no %s", b, ta->name);
        int64_t n = dl_st_numel(ta);
        cr_assert(tb->ndim == ta->ndim && dl_st_numel(tb) == n, "%s: shape differs", ta->name);
        float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x), *y = malloc((size_t)(n > 0 ? n : 1) * sizeof *y);
        cr_assert(x && y);
        cr_assert_eq(dl_st_read_f32(&fa, ta, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&fb, tb, y), DL_OK);
        double e = tu_rel_l2(x, y, (size_t)n);
        if (e > worst) worst = e;
        char lab[300];
        snprintf(lab, sizeof lab, "retrained vs committed %s", ta->name);
        tu_expect_close(x, y, (size_t)n, TOL_RETRAIN, lab);
        free(x);
        free(y);
    }
    dl_st_close(&fa);
    dl_st_close(&fb);
    return worst;
}

/* dl_train_run with the generator's flags writes what is committed: ties the golden files to
 * today's trainer (a change in training must come with regenerated golden data). */
Test(train_diffusers, trainer_reproduces_committed_outputs, .timeout = 300)
{
    dl_st_file g;
    tu_golden_open(&g, "train_diffusers");
    char model[1024], data[1024], out[1024];
    snprintf(model, sizeof model, "%s", tu_path("tests/golden/tiny_pipe"));
    snprintf(data, sizeof data, "%s", tu_path("tests/golden/train_diffusers/data"));
    snprintf(out, sizeof out, "%s", tu_tmp("out"));
    for (int r = 0; r < 2; r++) {
        char key[64];
        snprintf(key, sizeof key, "%s.args", RUNS[r]);
        const char *js = dl_st_meta(&g, key);
        cr_assert_not_null(js, "golden has no %s", key);
        cJSON *args = cJSON_Parse(js);
        cr_assert(cJSON_IsArray(args));
        char *argv[64];
        int argc = 0;
        argv[argc++] = strdup("train");
        const cJSON *a;
        cJSON_ArrayForEach(a, args) {
            cr_assert_lt(argc, 63);
            argv[argc++] = expand(a->valuestring, model, data, out);
        }
        argv[argc] = NULL;
        dl_train_config c;
        dl_train_config_defaults(&c);
        cr_assert_eq(dl_train_config_parse_args(&c, argc, argv, NULL), DL_OK, "%s", dl_error_msg());
        dl_trainer_opts o = {.log = NULL, .tty = 0, .stop_after = 0};
        dl_train_result res;
        cr_assert_eq(dl_train_run(&c, &o, &res), DL_OK, "%s", dl_error_msg());
        char ref[1024];
        snprintf(ref, sizeof ref, "%s", committed(RUNS[r]));
        double worst = compare_files(res.output_path, ref);
        cr_log_info("%s: %d steps retrained in process; worst tensor rel L2 vs the committed file %.2e", RUNS[r],
                    res.steps_done, worst);
        dl_st_file f;
        cr_assert_eq(dl_st_open(&f, res.output_path), DL_OK, "%s", dl_error_msg());
        cr_expect_not_null(dl_st_meta(&f, "sshs_model_hash"), "%s: no sshs_model_hash", res.output_path);
        cr_expect_not_null(dl_st_meta(&f, "sshs_legacy_hash"), "%s: no sshs_legacy_hash", res.output_path);
        dl_st_close(&f);
        dl_train_result_free(&res);
        dl_train_config_free(&c);
        for (int i = 0; i < argc; i++) free(argv[i]);
        cJSON_Delete(args);
    }
    dl_st_close(&g);
}
