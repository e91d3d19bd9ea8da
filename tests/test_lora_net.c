/* test_lora_net.c - LoRA networks and files: sd-scripts' module names for SD 1.5, torch's
 * Kaiming init, kohya / PEFT files loaded on the tiny SD 1.5 pipeline giving diffusers' outputs
 * (run time and merged, multiplier), save -> load round trips, merge -> unmerge, and the errors
 * for files that do not fit. Golden data: tests/gen/gen_lora_net.py (lora_net*.safetensors,
 * lora_net_names_sd15.json, diffusers in float64). */
#include "testutil.h"
#include "core/arena.h"
#include "core/dtype.h"
#include "core/error.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/config.h"
#include "model/unet.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOL 1e-5 /* fp32 forward vs diffusers float64 */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Sorted names of a JSON array (of strings, or of [name, flag] pairs). */
static char **json_names(const cJSON *arr, int *n)
{
    *n = cJSON_GetArraySize(arr);
    char **v = malloc((size_t)*n * sizeof *v);
    for (int i = 0; i < *n; i++) {
        const cJSON *it = cJSON_GetArrayItem(arr, i);
        if (cJSON_IsArray(it)) it = cJSON_GetArrayItem(it, 0);
        v[i] = it->valuestring;
    }
    qsort(v, (size_t)*n, sizeof *v, cmp_str);
    return v;
}

static void expect_same_names(dl_lora_module *mods, int n, dl_lora_part part, char **ref, int nref, const char *label)
{
    const char **got = malloc((size_t)n * sizeof *got);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (mods[i].part == part) got[k++] = mods[i].kohya;
    qsort(got, (size_t)k, sizeof *got, cmp_str);
    cr_assert_eq(k, nref, "%s: %d modules, sd-scripts has %d", label, k, nref);
    for (int i = 0; i < k; i++) cr_assert_str_eq(got[i], ref[i], "%s: module %d", label, i);
    free(got);
}

Test(lora_net, sd15_names_equal_sd_scripts)
{
    char *txt = read_text(tu_path("tests/golden/lora_net_names_sd15.json"));
    cJSON *j = cJSON_Parse(txt);
    cr_assert_not_null(j);
    int nu, nt, nc;
    char **ru = json_names(cJSON_GetObjectItem(j, "unet"), &nu);
    char **rt = json_names(cJSON_GetObjectItem(j, "text"), &nt);
    char **rc = json_names(cJSON_GetObjectItem(j, "unet_conv"), &nc);
    cr_assert_eq(nu, 192);
    cr_assert_eq(nt, 72);
    dl_model_config cfg;
    cr_assert_eq(dl_model_config_preset(&cfg, "sd15"), DL_OK);

    dl_lora_spec sp = {.preset = DL_LORA_PRESET_DEFAULT, .rank = 8, .alpha = 4, .unet = 1, .text = 1, .multiplier = 1};
    dl_lora_module *m;
    int n;
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(n, 192 + 72);
    expect_same_names(m, n, DL_LORA_UNET, ru, nu, "sd15 UNet");
    expect_same_names(m, n, DL_LORA_TEXT, rt, nt, "sd15 text encoder");
    for (int i = 0; i < n; i++) cr_expect(m[i].lora.r == 8 && m[i].alpha == 4.0f && m[i].k == 1, "%s", m[i].kohya);
    free(m);

    /* conv_dim: sd-scripts adds ResnetBlock2D / Downsample2D / Upsample2D: 3x3 convs get
     * conv_dim, time_emb_proj and 1x1 conv_shortcut network_dim */
    sp.conv_rank = 2;
    sp.conv_alpha = 1;
    sp.text = 0;
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK);
    expect_same_names(m, n, DL_LORA_UNET, rc, nc, "sd15 UNet with conv_dim");
    const cJSON *pairs = cJSON_GetObjectItem(j, "unet_conv");
    for (int i = 0; i < cJSON_GetArraySize(pairs); i++) {
        const cJSON *p = cJSON_GetArrayItem(pairs, i);
        const char *nm = cJSON_GetArrayItem(p, 0)->valuestring;
        int is3 = cJSON_GetArrayItem(p, 1)->valueint;
        for (int q = 0; q < n; q++)
            if (!strcmp(m[q].kohya, nm)) {
                cr_expect_eq(m[q].k == 3, is3, "%s", nm);
                cr_expect_eq(m[q].lora.r, is3 ? 2 : 8, "%s rank", nm);
                cr_expect_eq(m[q].alpha, is3 ? 1.0f : 4.0f, "%s alpha", nm);
            }
    }
    free(m);

    /* presets: attn-only 16 transformers x 8, attn-mlp x 10; text attn-only 12 x 4 */
    sp = (dl_lora_spec){.preset = DL_LORA_PRESET_ATTN_ONLY, .rank = 4, .unet = 1, .text = 1, .multiplier = 1};
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK);
    cr_expect_eq(n, 128 + 48);
    free(m);
    sp.preset = DL_LORA_PRESET_ATTN_MLP;
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK);
    cr_expect_eq(n, 160 + 72);
    free(m);
    sp.preset = DL_LORA_PRESET_FULL;
    sp.text = 0;
    cr_assert_eq(dl_lora_targets(&cfg, &sp, &m, &n), DL_OK);
    int has_temb = 0, has_conv3 = 0;
    for (int i = 0; i < n; i++) {
        has_temb |= !strcmp(m[i].kohya, "lora_unet_time_embedding_linear_1");
        has_conv3 |= m[i].k == 3;
    }
    cr_expect(has_temb && !has_conv3, "full without conv_dim: time embedding, no 3x3 convs");
    free(m);
    dl_lora_preset p;
    cr_expect_eq(dl_lora_preset_parse("attn-mlp", &p), DL_OK);
    cr_expect_eq(p, DL_LORA_PRESET_ATTN_MLP);
    cr_expect_eq(dl_lora_preset_parse("everything", &p), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "everything") != NULL);

    char kn[200];
    dl_lora_kohya_name(DL_LORA_TEXT, "text_model.encoder.layers.0.self_attn.q_proj", kn, sizeof kn);
    cr_expect_str_eq(kn, "lora_te_text_model_encoder_layers_0_self_attn_q_proj");

    /* a full SD 1.5 network in one allocation: the UNet range first */
    dl_lora_net net;
    sp = (dl_lora_spec){.preset = DL_LORA_PRESET_DEFAULT, .rank = 1, .unet = 1, .text = 1, .multiplier = 1};
    cr_assert_eq(dl_lora_net_create(&net, &cfg, &sp), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(net.n, 264);
    cr_expect_eq(net.n_unet, 192);
    int64_t lo = net.n_params_unet;
    cr_expect(lo > 0 && lo < net.n_params);
    for (int i = 0; i < net.n; i++) {
        const dl_lora_module *q = &net.mods[i];
        int in_unet = q->lora.A >= net.params && q->lora.B + q->out * q->lora.r <= net.params + lo;
        cr_expect_eq(in_unet, q->part == DL_LORA_UNET, "%s", q->kohya);
        cr_expect(q->lora.dA == net.grads + (q->lora.A - net.params));
        cr_expect(q->lora.dB == net.grads + (q->lora.B - net.params));
        cr_expect(dl_lora_module_of(&q->lora) == q);
        cr_expect_float_eq(q->lora.scale, 1.0f, 0);
    }
    dl_lora_net_free(&net);
    free(ru);
    free(rt);
    free(rc);
    cJSON_Delete(j);
    free(txt);
}

Test(lora_net, kaiming_init_equals_torch)
{
    dl_lora_module mods[2] = {0};
    mods[0] = (dl_lora_module){.part = DL_LORA_UNET, .k = 1, .in = 32, .out = 8, .alpha = 4, .lora = {.r = 4}};
    mods[1] = (dl_lora_module){.part = DL_LORA_UNET, .is_conv = 1, .k = 3, .in = 32, .out = 8, .alpha = 4,
                               .lora = {.r = 4}};
    dl_lora_net net;
    cr_assert_eq(dl_lora_net_from_modules(&net, mods, 2, 1.0f), DL_OK);
    for (int64_t i = 0; i < net.n_params; i++) net.params[i] = NAN;
    dl_lora_net_init_weights(&net, 100);
    dl_st_file g;
    tu_golden_open(&g, "lora_net");
    const char *names[2] = {"kaiming.lin", "kaiming.conv"};
    for (int m = 0; m < 2; m++) {
        int64_t n;
        float *ref = tu_golden_f32(&g, names[m], &n);
        const dl_lora_module *q = &net.mods[m];
        cr_assert_eq(n, (int64_t)q->lora.r * q->k * q->k * q->in);
        double bound = dl_lora_kaiming_bound((int64_t)q->in * q->k * q->k);
        cr_expect(fabs(bound - 1.0 / sqrt((double)q->in * q->k * q->k)) < 1e-12);
        int diff = 0;
        for (int64_t i = 0; i < n; i++) {
            diff += q->lora.A[i] != ref[i];
            cr_assert(fabs(q->lora.A[i]) <= bound, "%s[%lld] = %g outside +-%g", names[m], (long long)i,
                      q->lora.A[i], bound);
        }
        cr_expect_eq(diff, 0, "%s: %d values differ from torch's kaiming_uniform_ (seed %d)", names[m], diff, 100 + m);
        for (int64_t i = 0; i < (int64_t)q->out * q->lora.r; i++) cr_assert_eq(q->lora.B[i], 0.0f);
        free(ref);
    }
    dl_st_close(&g);
    dl_lora_net_free(&net);
}

/* ------------------------------------------------------------------ the tiny pipeline */

typedef struct inputs {
    float *x, *t, *c;
    int32_t ids[16];
    int N, H, W, T;
} inputs;

static void inputs_load(inputs *in, const dl_st_file *g)
{
    in->N = 2, in->H = 8, in->W = 8, in->T = 8;
    int64_t xs[4] = {2, 8, 8, 4}, ts[1] = {2}, cs[3] = {2, 8, 64}, is[2] = {2, 8};
    in->x = tu_golden_f32_shape(g, "unet.x", 4, xs);
    in->t = tu_golden_f32_shape(g, "unet.t", 1, ts);
    in->c = tu_golden_f32_shape(g, "unet.ctx", 3, cs);
    float *ids = tu_golden_f32_shape(g, "te.ids", 2, is);
    for (int i = 0; i < 16; i++) in->ids[i] = (int32_t)ids[i];
    free(ids);
}

static void inputs_free(inputs *in)
{
    free(in->x);
    free(in->t);
    free(in->c);
}

/* UNet and text-encoder outputs of m as it is now, compared with golden "unet.<o>", "te.<o>". */
static void expect_outputs(tu_te_unet *m, const inputs *in, const dl_st_file *g, const char *o, const char *label)
{
    dl_arena s;
    size_t sb = dl_unet_scratch_bytes(&m->u, in->N, in->H, in->W, in->T);
    size_t cb = dl_clip_scratch_bytes(&m->te, in->N, in->T);
    cr_assert_eq(dl_arena_init(&s, "scratch", sb > cb ? sb : cb), DL_OK);
    const size_t nu = (size_t)in->N * in->H * in->W * 4, nt = (size_t)in->N * in->T * 64;
    float *out = tu_alloc_nan(nu), *h = tu_alloc_nan(nt);
    dl_unet_forward(tu_ctx(), &m->u, in->N, in->H, in->W, in->x, in->t, in->c, in->T, out, &s);
    dl_clip_forward(tu_ctx(), &m->te, in->N, in->T, in->ids, m->te.cfg.num_layers, 1, h, &s);
    char key[64], lab[160];
    snprintf(key, sizeof key, "unet.%s", o);
    float *ref = tu_golden_f32(g, key, NULL);
    snprintf(lab, sizeof lab, "%s: UNet %s", label, o);
    cr_log_info("%s: rel err %.2e", lab, tu_rel_l2(out, ref, nu));
    tu_expect_close(out, ref, nu, TOL, lab);
    free(ref);
    snprintf(key, sizeof key, "te.%s", o);
    ref = tu_golden_f32(g, key, NULL);
    snprintf(lab, sizeof lab, "%s: text encoder %s", label, o);
    cr_log_info("%s: rel err %.2e", lab, tu_rel_l2(h, ref, nt));
    tu_expect_close(h, ref, nt, TOL, lab);
    free(ref);
    free(out);
    free(h);
    dl_arena_free(&s);
}

static float *layer_weight(tu_te_unet *m, const dl_lora_module *q, int64_t *n)
{
    *n = (int64_t)q->out * q->k * q->k * q->in;
    if (q->part == DL_LORA_TEXT) return dl_clip_find(&m->te, q->name)->w;
    const dl_unet_module *um = dl_unet_find(&m->u, q->name);
    return um->kind == DL_MODULE_LINEAR ? um->linear->w : um->conv->w;
}

static void check_file(const char *rel, const char *label)
{
    tu_te_unet m;
    tu_te_unet_open(&m, "tests/golden/tiny_sd15");
    dl_st_file g;
    tu_golden_open(&g, "lora_net");
    inputs in;
    inputs_load(&in, &g);
    expect_outputs(&m, &in, &g, "out_base", label);

    dl_lora_net net;
    dl_lora_report rep;
    int r = dl_lora_load(tu_path(rel), &m.ck.cfg, 1.0f, &net, &rep);
    cr_assert_eq(r, DL_OK, "%s: %s", rel, dl_error_msg());
    cr_expect_eq(rep.n_modules, 91, "%s: %d modules", label, rep.n_modules);
    cr_expect_eq(rep.n_unet, 79);
    cr_expect_eq(rep.n_text, 12);
    cr_expect_eq(rep.n_unmatched, 0, "%s: %d unmatched keys (first %s)", label, rep.n_unmatched, rep.unmatched[0]);

    /* at run time */
    cr_assert_eq(dl_lora_net_attach(&net, &m.u, &m.te), DL_OK, "%s", dl_error_msg());
    expect_outputs(&m, &in, &g, "out", label);
    dl_lora_net_set_multiplier(&net, 0.5f);
    expect_outputs(&m, &in, &g, "out_m05", label);
    dl_lora_net_detach(&net, &m.u, &m.te);
    expect_outputs(&m, &in, &g, "out_base", label);

    /* merged, then unmerged: weights restored */
    dl_lora_net_set_multiplier(&net, 1.0f);
    float **saved = malloc((size_t)net.n * sizeof *saved);
    for (int i = 0; i < net.n; i++) {
        int64_t n;
        float *w = layer_weight(&m, &net.mods[i], &n);
        saved[i] = malloc((size_t)n * sizeof(float));
        memcpy(saved[i], w, (size_t)n * sizeof(float));
    }
    cr_assert_eq(dl_lora_net_merge(tu_ctx(), &net, &m.u, &m.te), DL_OK, "%s", dl_error_msg());
    expect_outputs(&m, &in, &g, "out", label);
    dl_lora_net_unmerge(tu_ctx(), &net, &m.u, &m.te);
    double worst = 0;
    for (int i = 0; i < net.n; i++) {
        int64_t n;
        float *w = layer_weight(&m, &net.mods[i], &n);
        double mx = 0, d = 0;
        for (int64_t j = 0; j < n; j++) {
            mx = fmax(mx, fabs(saved[i][j]));
            d = fmax(d, fabs((double)w[j] - saved[i][j]));
        }
        worst = fmax(worst, d / mx);
        free(saved[i]);
    }
    free(saved);
    cr_log_info("%s: merge -> unmerge max |dW| / max |W| = %.2e", label, worst);
    cr_expect(worst <= 1e-6, "%s: unmerge left a relative difference of %.2e", label, worst);
    expect_outputs(&m, &in, &g, "out_base", label);

    dl_lora_net_free(&net);
    inputs_free(&in);
    dl_st_close(&g);
    tu_te_unet_close(&m);
}

Test(lora_net, kohya_file_equals_diffusers) { check_file("tests/golden/lora_net_kohya.safetensors", "kohya"); }
Test(lora_net, diffusers_peft_file_equals_diffusers) { check_file("tests/golden/lora_net_peft.safetensors", "peft"); }
Test(lora_net, danlu_peft_file_equals_diffusers)
{
    check_file("tests/golden/lora_net_peft_baked.safetensors", "danlu-peft");
}

/* Two LoRAs merged with multipliers 0.5 each add up to the file at 1.0; unmerged in reverse
 * order the base outputs come back. */
Test(lora_net, several_loras_merged_with_multipliers)
{
    tu_te_unet m;
    tu_te_unet_open(&m, "tests/golden/tiny_sd15");
    dl_st_file g;
    tu_golden_open(&g, "lora_net");
    inputs in;
    inputs_load(&in, &g);
    dl_lora_net a, b;
    cr_assert_eq(dl_lora_load(tu_path("tests/golden/lora_net_kohya.safetensors"), &m.ck.cfg, 0.5f, &a, NULL), DL_OK,
                 "%s", dl_error_msg());
    cr_assert_eq(dl_lora_load(tu_path("tests/golden/lora_net_peft.safetensors"), &m.ck.cfg, 0.5f, &b, NULL), DL_OK,
                 "%s", dl_error_msg());
    cr_assert_eq(dl_lora_net_merge(tu_ctx(), &a, &m.u, &m.te), DL_OK);
    expect_outputs(&m, &in, &g, "out_m05", "one LoRA merged at 0.5");
    cr_assert_eq(dl_lora_net_merge(tu_ctx(), &b, &m.u, &m.te), DL_OK);
    expect_outputs(&m, &in, &g, "out", "two LoRAs merged at 0.5 + 0.5");
    dl_lora_net_unmerge(tu_ctx(), &b, &m.u, &m.te);
    dl_lora_net_unmerge(tu_ctx(), &a, &m.u, &m.te);
    expect_outputs(&m, &in, &g, "out_base", "both unmerged");
    dl_lora_net_free(&a);
    dl_lora_net_free(&b);
    inputs_free(&in);
    dl_st_close(&g);
    tu_te_unet_close(&m);
}

/* ------------------------------------------------------------------ save / load */

static const char *tmp_path(const char *name)
{
    static char path[8][256]; /* 8 live paths: save_load_round_trip holds 6 */
    static int slot;
    char *p = path[slot++ & 7];
    snprintf(p, 256, "/tmp/danlu_test_lora_%d_%s", (int)getpid(), name);
    return p;
}

/* Every tensor of a equals (rel L2 <= tol) the same-named tensor of b; same key sets. */
static void expect_same_file(const char *pa, const char *pb, double tol, const char *label)
{
    dl_st_file a, b;
    cr_assert_eq(dl_st_open(&a, pa), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&b, pb), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(a.n_tensors, b.n_tensors, "%s: %d vs %d tensors", label, a.n_tensors, b.n_tensors);
    for (int i = 0; i < a.n_tensors; i++) {
        const dl_st_tensor *ta = &a.tensors[i], *tb = dl_st_find(&b, ta->name);
        cr_assert_not_null(tb, "%s: %s missing in %s", label, ta->name, pb);
        cr_assert_eq(ta->ndim, tb->ndim, "%s: %s ndim %d vs %d", label, ta->name, ta->ndim, tb->ndim);
        for (int d = 0; d < ta->ndim; d++) cr_assert_eq(ta->shape[d], tb->shape[d], "%s: %s dim %d", label, ta->name, d);
        int64_t n = dl_st_numel(ta);
        float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
        cr_assert_eq(dl_st_read_f32(&a, ta, x), DL_OK);
        cr_assert_eq(dl_st_read_f32(&b, tb, y), DL_OK);
        char lab[300];
        snprintf(lab, sizeof lab, "%s: %s", label, ta->name);
        if (tol == 0) cr_assert_eq(memcmp(x, y, (size_t)n * sizeof(float)), 0, "%s differs", lab);
        else tu_expect_close(x, y, (size_t)n, tol, lab);
        free(x);
        free(y);
    }
    dl_st_close(&a);
    dl_st_close(&b);
}

Test(lora_net, save_load_round_trip)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_sd15"), NULL), DL_OK, "%s", dl_error_msg());
    const char *src = tu_path("tests/golden/lora_net_kohya.safetensors");
    dl_lora_net net, back;
    cr_assert_eq(dl_lora_load(src, &ck.cfg, 1.0f, &net, NULL), DL_OK, "%s", dl_error_msg());

    /* fp32 kohya: the same tensors as the sd-scripts-layout file (names, OIHW shapes, values) */
    const char *meta[] = {"ss_network_module", "networks.lora", "ss_network_dim", "4"};
    const char *p32 = tmp_path("k32.safetensors");
    cr_assert_eq(dl_lora_save(p32, &net, DL_LORA_FMT_KOHYA, DL_F32, meta, 2), DL_OK, "%s", dl_error_msg());
    expect_same_file(src, p32, 0, "kohya fp32 rewrite");
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, p32), DL_OK);
    cr_expect_str_eq(dl_st_meta(&f, "ss_network_module"), "networks.lora");
    cr_expect_str_eq(dl_st_meta(&f, "ss_network_dim"), "4");
    const dl_st_tensor *al = dl_st_find(&f, "lora_unet_down_blocks_0_resnets_0_conv1.alpha");
    cr_assert_not_null(al);
    cr_expect_eq(al->ndim, 0);
    const dl_st_tensor *dn = dl_st_find(&f, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight");
    cr_assert_not_null(dn);
    cr_expect(dn->ndim == 4 && dn->shape[0] == 2 && dn->shape[1] == 32 && dn->shape[2] == 3, "conv down OIHW");
    dl_st_close(&f);

    /* danlu's PEFT layout: what gen_lora_net.py checked diffusers loads to the same outputs */
    const char *pp = tmp_path("peft.safetensors");
    cr_assert_eq(dl_lora_save(pp, &net, DL_LORA_FMT_PEFT, DL_F32, NULL, 0), DL_OK, "%s", dl_error_msg());
    expect_same_file(tu_path("tests/golden/lora_net_peft_baked.safetensors"), pp, 1e-7, "danlu PEFT vs reference");

    /* fp16 / bf16: the values read back are the rounded ones, alphas exact */
    dl_dtype dts[2] = {DL_F16, DL_BF16};
    for (int d = 0; d < 2; d++) {
        const char *ph = tmp_path(d ? "kbf16.safetensors" : "kf16.safetensors");
        cr_assert_eq(dl_lora_save(ph, &net, DL_LORA_FMT_KOHYA, dts[d], NULL, 0), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_lora_load(ph, &ck.cfg, 1.0f, &back, NULL), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(back.n, net.n);
        for (int i = 0; i < net.n; i++) {
            const dl_lora_module *a = &net.mods[i], *b = dl_lora_net_find(&back, a->name);
            cr_assert_not_null(b);
            cr_assert_eq(a->lora.r, b->lora.r);
            cr_expect_eq(a->alpha, b->alpha, "%s alpha", a->kohya);
            int64_t na = (int64_t)a->lora.r * a->k * a->k * a->in, nb = (int64_t)a->out * a->lora.r;
            for (int64_t j = 0; j < na; j++) {
                float want = d ? dl_bf16_to_f32(dl_f32_to_bf16(a->lora.A[j])) : dl_f16_to_f32(dl_f32_to_f16(a->lora.A[j]));
                cr_assert_eq(b->lora.A[j], want, "%s A[%lld]", a->kohya, (long long)j);
            }
            for (int64_t j = 0; j < nb; j++) {
                float want = d ? dl_bf16_to_f32(dl_f32_to_bf16(a->lora.B[j])) : dl_f16_to_f32(dl_f32_to_f16(a->lora.B[j]));
                cr_assert_eq(b->lora.B[j], want, "%s B[%lld]", a->kohya, (long long)j);
            }
        }
        dl_lora_net_free(&back);
        unlink(ph);
    }

    /* a created network (training) -> file -> network_weights into a fresh one: exact */
    dl_lora_spec sp = {.preset = DL_LORA_PRESET_DEFAULT, .rank = 3, .alpha = 1.5f, .conv_rank = 2, .conv_alpha = 0.5f,
                       .unet = 1, .text = 1, .multiplier = 1, .seed = 5};
    dl_lora_net a, b;
    cr_assert_eq(dl_lora_net_create(&a, &ck.cfg, &sp), DL_OK, "%s", dl_error_msg());
    tu_fill_uniform(a.params, (size_t)a.n_params, 11, -1, 1); /* B not zero */
    const char *pa = tmp_path("created.safetensors");
    cr_assert_eq(dl_lora_save(pa, &a, DL_LORA_FMT_KOHYA, DL_F32, NULL, 0), DL_OK, "%s", dl_error_msg());
    sp.seed = 6;
    cr_assert_eq(dl_lora_net_create(&b, &ck.cfg, &sp), DL_OK);
    dl_lora_report rep;
    cr_assert_eq(dl_lora_load_into(pa, &b, &rep), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(rep.n_modules, a.n);
    cr_expect_eq(rep.n_unmatched, 0);
    for (int i = 0; i < a.n; i++) {
        const dl_lora_module *x = &a.mods[i], *y = &b.mods[i];
        cr_assert_str_eq(x->name, y->name);
        int64_t na = (int64_t)x->lora.r * x->k * x->k * x->in, nb = (int64_t)x->out * x->lora.r;
        cr_assert_eq(memcmp(x->lora.A, y->lora.A, (size_t)na * 4), 0, "%s A", x->kohya);
        cr_assert_eq(memcmp(x->lora.B, y->lora.B, (size_t)nb * 4), 0, "%s B", x->kohya);
        cr_expect_eq(x->alpha, y->alpha);
        cr_expect_eq(x->lora.scale, y->lora.scale);
    }
    /* and read as a file of its own: same modules, PEFT too */
    const char *pq = tmp_path("created_peft.safetensors");
    cr_assert_eq(dl_lora_save(pq, &a, DL_LORA_FMT_PEFT, DL_F32, NULL, 0), DL_OK);
    cr_assert_eq(dl_lora_load(pq, &ck.cfg, 1.0f, &back, &rep), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(back.n, a.n);
    cr_expect(rep.peft && !rep.kohya);
    for (int i = 0; i < a.n; i++) {
        const dl_lora_module *x = &a.mods[i], *y = dl_lora_net_find(&back, x->name);
        cr_assert_not_null(y, "%s", x->name);
        /* PEFT has no alpha: alpha = r, B x alpha / r, so the product s B A is kept */
        cr_expect_float_eq(y->lora.scale, 1.0f, 0);
        int64_t nb = (int64_t)x->out * x->lora.r;
        for (int64_t j = 0; j < nb; j++)
            cr_assert_float_eq(y->lora.B[j], x->lora.B[j] * x->lora.scale, 1e-6f * (1 + fabsf(x->lora.B[j])));
    }
    dl_lora_net_free(&back);
    dl_lora_net_free(&a);
    dl_lora_net_free(&b);
    unlink(pa);
    unlink(pq);
    unlink(p32);
    unlink(pp);
    dl_lora_net_free(&net);
    dl_ckpt_close(&ck);
}

/* ------------------------------------------------------------------ bad files */

/* Write a file holding n entries of random data with the given names and shapes. */
static void write_file(const char *path, int n, const char *const *names, const int64_t (*shapes)[4], const int *ndim)
{
    dl_st_entry e[16];
    float *bufs[16];
    for (int i = 0; i < n; i++) {
        int64_t k = 1;
        for (int d = 0; d < ndim[i]; d++) k *= shapes[i][d];
        bufs[i] = malloc((size_t)k * sizeof(float));
        tu_fill_uniform(bufs[i], (size_t)k, 3 + i, -1, 1);
        e[i] = (dl_st_entry){.name = names[i], .dtype = DL_F32, .ndim = ndim[i], .data = bufs[i]};
        memcpy(e[i].shape, shapes[i], sizeof shapes[i]);
    }
    cr_assert_eq(dl_st_save(path, e, n, NULL, 0), DL_OK, "%s", dl_error_msg());
    for (int i = 0; i < n; i++) free(bufs[i]);
}

#define Q "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"

Test(lora_net, bad_files_are_reported)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_sd15"), NULL), DL_OK, "%s", dl_error_msg());
    dl_lora_net net;
    dl_lora_report rep;
    const char *p = tmp_path("bad.safetensors");

    /* keys that match nothing are counted by kind; the rest loads */
    {
        const char *nm[] = {Q ".lora_down.weight", Q ".lora_up.weight", Q ".alpha", "lora_unet_foo_bar.lora_down.weight",
                            "lora_unet_x.hada_w1_a", "lora_unet_y.hada_w1_a"};
        const int64_t sh[][4] = {{4, 32}, {32, 4}, {0}, {4, 7}, {3, 3}, {3, 3}};
        const int nd[] = {2, 2, 0, 2, 2, 2};
        write_file(p, 6, nm, sh, nd);
        cr_assert_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(rep.n_modules, 1);
        cr_expect_eq(rep.n_keys, 6);
        cr_expect_eq(rep.n_matched_keys, 3);
        cr_expect_eq(rep.n_unmatched, 3);
        int hada = 0, down = 0;
        for (int i = 0; i < rep.n_kinds; i++) {
            if (!strcmp(rep.kind[i], ".hada_w1_a")) hada = rep.kind_count[i];
            if (!strcmp(rep.kind[i], ".lora_down.weight")) down = rep.kind_count[i];
        }
        cr_expect(hada == 2 && down == 1, "kinds: %d hada, %d down", hada, down);
        dl_lora_net_free(&net);
    }
    /* ldm-style kohya names (lora_unet_input_blocks_1_1_proj_in) some trainers write */
    {
        const char *nm[] = {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight",
                            "lora_unet_input_blocks_1_1_proj_in.lora_up.weight",
                            "lora_unet_output_blocks_1_0_in_layers_2.lora_down.weight",
                            "lora_unet_output_blocks_1_0_in_layers_2.lora_up.weight"};
        const int64_t sh[][4] = {{4, 32, 1, 1}, {32, 4, 1, 1}, {2, 96, 3, 3}, {64, 2, 1, 1}};
        const int nd[] = {4, 4, 4, 4};
        write_file(p, 4, nm, sh, nd);
        cr_assert_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_OK, "%s", dl_error_msg());
        dl_lora_report_print(&rep, p);
        cr_expect_eq(rep.n_modules, 2);
        cr_expect_not_null(dl_lora_net_find(&net, "down_blocks.0.attentions.0.proj_in"));
        const dl_lora_module *q = dl_lora_net_find(&net, "up_blocks.0.resnets.1.conv1");
        cr_expect(q && q->k == 3 && q->in == 96 && q->lora.r == 2, "ldm output_blocks.1.0 = up_blocks.0.resnets.1");
        dl_lora_net_free(&net);
    }
    /* LyCORIS CP decomposition: refused, not silently half-applied */
    {
        const char *nm[] = {Q ".lora_down.weight", Q ".lora_up.weight", Q ".lora_mid.weight"};
        const int64_t sh[][4] = {{4, 32}, {32, 4}, {4, 4, 3, 3}};
        const int nd[] = {2, 2, 4};
        write_file(p, 3, nm, sh, nd);
        cr_expect_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "lora_mid"), "%s", dl_error_msg());
    }
    /* nothing matches: an error naming the file */
    {
        const char *nm[] = {"lora_unet_x.hada_w1_a", "lora_unet_x.hada_w1_b"};
        const int64_t sh[][4] = {{3, 3}, {3, 3}};
        const int nd[] = {2, 2};
        write_file(p, 2, nm, sh, nd);
        cr_expect_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_ERR);
        cr_expect(strstr(dl_error_msg(), p) && strstr(dl_error_msg(), "none of its 2 keys"), "%s", dl_error_msg());
    }
    /* a shape that does not fit: key and both shapes named */
    {
        const char *nm[] = {Q ".lora_down.weight", Q ".lora_up.weight"};
        const int64_t sh[][4] = {{4, 40}, {32, 4}};
        const int nd[] = {2, 2};
        write_file(p, 2, nm, sh, nd);
        cr_expect_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_ERR);
        const char *msg = dl_error_msg();
        cr_expect(strstr(msg, Q ".lora_down.weight") && strstr(msg, "[4, 40]") && strstr(msg, "[r, 32]"), "%s", msg);
    }
    /* down without up */
    {
        const char *nm[] = {Q ".lora_down.weight", Q ".alpha"};
        const int64_t sh[][4] = {{4, 32}, {0}};
        const int nd[] = {2, 0};
        write_file(p, 2, nm, sh, nd);
        cr_expect_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "no up"), "%s", dl_error_msg());
    }
    /* a LoRA made for another model (the SD2-style tiny UNet) on this one */
    {
        dl_checkpoint ck2;
        cr_assert_eq(dl_ckpt_open(&ck2, tu_path("tests/golden/tiny_unet_sd2x"), NULL), DL_OK, "%s", dl_error_msg());
        dl_lora_spec sp = {.preset = DL_LORA_PRESET_DEFAULT, .rank = 2, .unet = 1, .multiplier = 1, .seed = 1};
        dl_lora_net other;
        cr_assert_eq(dl_lora_net_create(&other, &ck2.cfg, &sp), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_lora_save(p, &other, DL_LORA_FMT_KOHYA, DL_F16, NULL, 0), DL_OK);
        cr_expect_eq(dl_lora_load(p, &ck.cfg, 1.0f, &net, &rep), DL_ERR);
        const char *msg = dl_error_msg();
        cr_log_info("SD2-style LoRA on SD1: %s", msg);
        cr_expect(strstr(msg, p) && strstr(msg, "has shape [2, 12") && strstr(msg, "needs [r, 32"), "%s", msg);
        /* and network_weights with another rank */
        sp.rank = 3;
        dl_lora_net third;
        cr_assert_eq(dl_lora_net_create(&third, &ck2.cfg, &sp), DL_OK);
        cr_expect_eq(dl_lora_load_into(p, &third, &rep), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "rank 2") && strstr(dl_error_msg(), "rank 3"), "%s", dl_error_msg());
        dl_lora_net_free(&third);
        dl_lora_net_free(&other);
        dl_ckpt_close(&ck2);
    }
    /* attaching a net to a model that lacks its layers */
    {
        dl_lora_module mod = {.name = "down_blocks.9.attentions.0.proj_in", .kohya = "lora_unet_x", .part = DL_LORA_UNET,
                              .k = 1, .in = 32, .out = 32, .alpha = 1, .lora = {.r = 1}};
        tu_te_unet m;
        tu_te_unet_open(&m, "tests/golden/tiny_sd15");
        cr_assert_eq(dl_lora_net_from_modules(&net, &mod, 1, 1), DL_OK);
        cr_expect_eq(dl_lora_net_attach(&net, &m.u, &m.te), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "down_blocks.9.attentions.0.proj_in"), "%s", dl_error_msg());
        dl_lora_net_free(&net);
        tu_te_unet_close(&m);
    }
    unlink(p);
    dl_ckpt_close(&ck);
}
