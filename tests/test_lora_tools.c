/* test_lora_tools.c - danlu lora resize / merge / extract: sd-scripts' rank rules and singular
 * values against PyTorch goldens (tests/gen/gen_lora_tools.py), LoRA + LoRA merges, LoRAs baked
 * into checkpoints against the same LoRA applied at run time, extraction from a fine-tuned tiny
 * model, and bad input. */
#include "cli/commands.h"
#include "core/arena.h"
#include "lora/ckpt_tools.h"
#include "lora/lora_io.h"
#include "lora/lora_linalg.h"
#include "lora/lora_tools.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define N_MODS 4
#define N_CASES 7

/* up [out, r] @ down [r, cols] of a module, in float */
static float *product(const dl_lf_module *m)
{
    const int cols = m->in * m->kh * m->kw;
    float *w = calloc((size_t)m->out * cols, sizeof *w);
    for (int o = 0; o < m->out; o++)
        for (int j = 0; j < m->r; j++)
            for (int c = 0; c < cols; c++) w[(size_t)o * cols + c] += m->up[(size_t)o * m->r + j] * m->down[(size_t)j * cols + c];
    return w;
}

/* The golden's module names, in its order (metadata "modules"). */
static const char *k_mods[N_MODS] = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                                     "lora_unet_down_blocks_0_resnets_0_conv1",
                                     "lora_unet_down_blocks_0_attentions_0_proj_in",
                                     "lora_unet_mid_block_attentions_0_proj_out"};

static dl_lf_module *mod(const dl_lora_file *lf, int i)
{
    dl_lf_module *m = dl_lf_find(lf, k_mods[i]);
    cr_assert_not_null(m, "module %s missing", k_mods[i]);
    return m;
}

/* index of golden module i in lf */
static int idx(const dl_lora_file *lf, int i)
{
    return (int)(mod(lf, i) - lf->m);
}

static const char *k_cases[N_CASES][2] = {{"none", "0"},     {"sv_ratio", "4"},        {"sv_ratio", "30"},
                                          {"sv_fro", "0.9"}, {"sv_fro", "0.99"},      {"sv_cumulative", "0.7"},
                                          {"sv_cumulative", "0.95"}};

Test(lora_tools, singular_values_match_pytorch)
{
    dl_st_file g;
    tu_golden_open(&g, "lora_tools");
    dl_lora_file lf;
    cr_assert_eq(dl_lf_read(&lf, tu_path("tests/golden/lora_tools_in.safetensors")), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(lf.n, N_MODS);
    for (int i = 0; i < N_MODS - 1; i++) { /* the last is the zero module */
        const dl_lf_module *m = mod(&lf, i);
        const int cols = m->in * m->kh * m->kw;
        double *up = malloc((size_t)m->out * m->r * sizeof *up), *dn = malloc((size_t)m->r * cols * sizeof *dn);
        double *s = malloc((size_t)m->r * sizeof *s);
        for (int j = 0; j < m->out * m->r; j++) up[j] = m->up[j];
        for (int j = 0; j < m->r * cols; j++) dn[j] = m->down[j];
        cr_assert_eq(dl_svd_product(up, dn, m->out, m->r, cols, NULL, s, NULL), DL_OK);
        char key[64];
        snprintf(key, sizeof key, "m%d.S", i);
        int64_t n;
        float *ref = tu_golden_f32(&g, key, &n);
        cr_assert_eq(n, m->r);
        float got[16];
        for (int j = 0; j < m->r; j++) got[j] = (float)s[j];
        tu_expect_close(got, ref, (size_t)n, 1e-6, key);
        /* the full SVD of the product agrees with the QR route */
        float *w = product(m);
        double *wd = malloc((size_t)m->out * cols * sizeof *wd), *s2 = malloc((size_t)cols * sizeof *s2);
        for (int j = 0; j < m->out * cols; j++) wd[j] = w[j];
        cr_assert_eq(dl_svd(wd, m->out, cols, NULL, s2, NULL), DL_OK);
        for (int j = 0; j < m->r; j++) got[j] = (float)s2[j];
        tu_expect_close(got, ref, (size_t)n, 1e-6, "dgesdd");
        free(ref), free(w), free(wd), free(s2), free(up), free(dn), free(s);
    }
    dl_lf_free(&lf);
    dl_st_close(&g);
}

Test(lora_tools, resize_rank_rules_match_sd_scripts)
{
    dl_st_file g;
    tu_golden_open(&g, "lora_tools");
    const int cap = (int)tu_golden_int(&g, "rank_cap");
    for (int c = 0; c < N_CASES; c++) {
        dl_lora_file lf;
        cr_assert_eq(dl_lf_read(&lf, tu_path("tests/golden/lora_tools_in.safetensors")), DL_OK, "%s", dl_error_msg());
        dl_resize_opts o = {.rank = cap, .param = atof(k_cases[c][1])};
        cr_assert_eq(dl_dyn_parse(k_cases[c][0], &o.method), DL_OK);
        dl_resize_row rows[N_MODS];
        cr_assert_eq(dl_lora_resize(&lf, &o, rows, "lora_tools_in"), DL_OK, "%s", dl_error_msg());
        for (int i0 = 0; i0 < N_MODS; i0++) {
            const int i = idx(&lf, i0);
            char key[64];
            snprintf(key, sizeof key, "m%d.c%d.rank", i0, c);
            const int want = (int)tu_golden_int(&g, key);
            cr_expect_eq(lf.m[i].r, want, "%s %s module %d: rank %d, sd-scripts %d", k_cases[c][0], k_cases[c][1], i,
                         lf.m[i].r, want);
            cr_expect_eq(rows[i].pick.new_rank, want);
            snprintf(key, sizeof key, "m%d.c%d.alpha", i0, c);
            float *a = tu_golden_f32(&g, key, NULL);
            cr_expect_float_eq(lf.m[i].alpha, a[0], 1e-6f * fabsf(a[0]) + 1e-7f, "%s module %d alpha %g vs %g", key, i,
                               (double)lf.m[i].alpha, (double)a[0]);
            free(a);
            if (i0 < N_MODS - 1) {
                snprintf(key, sizeof key, "m%d.c%d.fro", i0, c);
                float *f = tu_golden_f32(&g, key, NULL);
                cr_expect(fabs(rows[i].pick.fro_retained - f[0]) < 1e-6, "%s: fro retained %.9f vs %.9f", key,
                          rows[i].pick.fro_retained, (double)f[0]);
                free(f);
                snprintf(key, sizeof key, "m%d.c%d.W", i0, c);
                int64_t n;
                float *ref = tu_golden_f32(&g, key, &n), *w = product(&lf.m[i]);
                cr_assert_eq(n, (int64_t)lf.m[i].out * lf.m[i].in * lf.m[i].kh * lf.m[i].kw);
                tu_expect_close(w, ref, (size_t)n, 1e-5, key);
                free(ref), free(w);
            }
        }
        dl_lf_free(&lf);
    }
    dl_st_close(&g);
}

Test(lora_tools, resize_writes_a_loadable_file, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    char *argv[] = {"resize", (char *)tu_path("tests/golden/lora_tools_in.safetensors"), "--rank", "3", "--dynamic",
                    "sv_fro", "--dynamic-param", "0.9", "--dtype", "fp16", "--quiet", "--out",
                    (char *)tu_tmp("r.safetensors"), NULL};
    FILE *devnull = fopen("/dev/null", "w");
    cr_assert_eq(dl_cmd_lora_resize(13, argv, devnull), 0, "%s", dl_error_msg());
    dl_lora_file lf;
    cr_assert_eq(dl_lf_read(&lf, tu_tmp("r.safetensors")), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(lf.dtype, DL_F16);
    cr_expect_eq(lf.n, N_MODS);
    cr_expect_eq(mod(&lf, 1)->four_d, 1, "conv module stays 4-D");
    cr_expect_eq(mod(&lf, 1)->kh, 3);
    cr_expect_str_eq(dl_lf_meta(&lf, "ss_network_dim"), "Dynamic");
    dl_lf_free(&lf);
    fclose(devnull);
}

Test(lora_tools, resize_refuses_bad_input, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    dl_lora_file lf;
    cr_assert_eq(dl_lf_read(&lf, tu_path("tests/golden/lora_tools_in.safetensors")), DL_OK);
    dl_resize_opts o = {.rank = 9}; /* proj_out is 8 x 8 */
    cr_expect_eq(dl_lora_resize(&lf, &o, NULL, "in.safetensors"), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "larger than module lora_unet_mid_block_attentions_0_proj_out allows"), "%s",
              dl_error_msg());
    cr_expect_eq(mod(&lf, 0)->r, 8, "unchanged on error");
    o = (dl_resize_opts){.rank = 4, .method = DL_DYN_SV_FRO, .param = 0};
    cr_expect_eq(dl_lora_resize(&lf, &o, NULL, "in.safetensors"), DL_ERR);
    dl_lf_free(&lf);
    dl_dyn_method m;
    cr_expect_eq(dl_dyn_parse("sv_magic", &m), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "sv_magic"));
    char *argv[] = {"resize", (char *)tu_path("tests/golden/lora_tools_in.safetensors"), "--rank", "2", "--dynamic",
                    "sv_magic", "--dynamic-param", "1", "--out", (char *)tu_tmp("x.safetensors"), NULL};
    FILE *devnull = fopen("/dev/null", "w");
    cr_expect_neq(dl_cmd_lora_resize(10, argv, devnull), 0);
    /* a corrupt file */
    FILE *f = fopen(tu_tmp("bad.safetensors"), "wb");
    fwrite("\x10\0\0\0\0\0\0\0{\"a\":", 1, 13, f);
    fclose(f);
    char *argv2[] = {"resize", (char *)tu_tmp("bad.safetensors"), "--rank", "2", "--out", (char *)tu_tmp("y.safetensors"), NULL};
    cr_expect_eq(dl_cmd_lora_resize(6, argv2, devnull), 1);
    struct stat st;
    cr_expect_neq(stat(tu_tmp("x.safetensors"), &st), 0, "no output on error");
    cr_expect_neq(stat(tu_tmp("y.safetensors"), &st), 0, "no output on error");
    fclose(devnull);
}

Test(lora_tools, merge_loras_concat_is_exact_and_svd_matches_pytorch)
{
    dl_st_file g;
    tu_golden_open(&g, "lora_tools");
    dl_lora_file in[2], out;
    cr_assert_eq(dl_lf_read(&in[0], tu_path("tests/golden/lora_tools_in.safetensors")), DL_OK);
    cr_assert_eq(dl_lf_read(&in[1], tu_path("tests/golden/lora_tools_in_b.safetensors")), DL_OK);
    float *w = tu_golden_f32(&g, "merge_w", NULL);
    int nc, ns;
    cr_assert_eq(dl_lora_merge_loras(in, w, 2, 0, 0, 1.0, &out, &nc, &ns), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(nc, N_MODS);
    cr_expect_eq(ns, 0);
    for (int i = 0; i < N_MODS; i++) {
        char key[64];
        snprintf(key, sizeof key, "merge.m%d.W", i);
        int64_t n;
        const dl_lf_module *om = mod(&out, i);
        float *ref = tu_golden_f32(&g, key, &n), *p = product(om);
        const float s = om->alpha / (float)om->r;
        for (int64_t j = 0; j < n; j++) p[j] *= s;
        tu_expect_close(p, ref, (size_t)n, 1e-6, key);
        free(ref), free(p);
    }
    dl_lf_free(&out);
    const int R = (int)tu_golden_int(&g, "merge_rank");
    cr_assert_eq(dl_lora_merge_loras(in, w, 2, R, R, 1.0, &out, &nc, &ns), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(ns, N_MODS, "every module has more than rank %d in total", R);
    for (int i = 0; i < N_MODS; i++) {
        char key[64];
        snprintf(key, sizeof key, "merge.m%d.Wr", i);
        int64_t n;
        const dl_lf_module *om = mod(&out, i);
        float *ref = tu_golden_f32(&g, key, &n), *p = product(om);
        cr_expect_eq(om->r, R);
        cr_expect_float_eq(om->alpha, (float)R, 0);
        tu_expect_close(p, ref, (size_t)n, 1e-5, key);
        free(ref), free(p);
    }
    dl_lf_free(&out);
    /* with sd-scripts' clamp the factors stay within the clamp value */
    cr_assert_eq(dl_lora_merge_loras(in, w, 2, R, R, 0.99, &out, &nc, &ns), DL_OK);
    cr_expect_eq(out.n, N_MODS);
    dl_lf_free(&out);
    free(w);
    dl_lf_free(&in[0]);
    dl_lf_free(&in[1]);
    dl_st_close(&g);
}

/* UNet output of the model at rel (with the LoRA at lora, weight w, attached at run time when
 * lora != NULL) on fixed inputs: [1, 8, 8, 4]. */
static float *unet_out(const char *path, const char *lora, float w)
{
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, path, NULL), DL_OK, "%s", dl_error_msg());
    dl_arena wa, scratch;
    cr_assert_eq(dl_arena_init(&wa, "weights", tu_unet_weights_bytes(&ck)), DL_OK);
    dl_unet u;
    cr_assert_eq(dl_unet_load(&u, &ck, &wa), DL_OK, "%s", dl_error_msg());
    dl_lora_net net;
    if (lora) {
        cr_assert_eq(dl_lora_load(lora, &ck.cfg, w, &net, NULL), DL_OK, "%s", dl_error_msg());
        dl_lora_net net_u = net;
        net_u.n = net.n_unet; /* the UNet's modules come first */
        cr_assert_eq(dl_lora_net_attach(&net_u, &u, NULL), DL_OK, "%s", dl_error_msg());
    }
    const int N = 1, H = 8, W = 8, T = 5, D = ck.cfg.unet.cross_attention_dim;
    float *x = malloc(sizeof(float) * N * H * W * 4), *c = malloc(sizeof(float) * N * T * D);
    float *out = malloc(sizeof(float) * N * H * W * ck.cfg.unet.out_channels), t = 421;
    tu_fill_uniform(x, (size_t)N * H * W * 4, 7, -1, 1);
    tu_fill_uniform(c, (size_t)N * T * D, 8, -1, 1);
    cr_assert_eq(dl_arena_init(&scratch, "scratch", dl_unet_scratch_bytes(&u, N, H, W, T)), DL_OK);
    dl_unet_forward(tu_ctx(), &u, N, H, W, x, &t, c, T, out, &scratch);
    if (lora) {
        dl_lora_net net_u = net;
        net_u.n = net.n_unet;
        dl_lora_net_detach(&net_u, &u, NULL);
        dl_lora_net_free(&net);
    }
    dl_arena_free(&scratch);
    dl_unet_free(&u);
    dl_arena_free(&wa);
    dl_ckpt_close(&ck);
    free(x), free(c);
    return out;
}

/* tiny_pipe in fp32 (a diffusers folder in the test's directory); the path in a static buffer */
static const char *fp32_pipe(void)
{
    static char p[4096];
    snprintf(p, sizeof p, "%s", tu_tmp("pipe32"));
    struct stat st;
    if (stat(p, &st) != 0) cr_assert_eq(dl_ckpt_convert(tu_path("tests/golden/tiny_pipe"), p, -1, DL_F32, NULL), DL_OK, "%s", dl_error_msg());
    return p;
}

#define LORA1 "tests/golden/tiny_pipe_loras/epoch1.safetensors"
#define LORA2 "tests/golden/tiny_pipe_loras/epoch2.safetensors"

Test(lora_tools, merged_checkpoint_equals_lora_at_run_time, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    const char *base = fp32_pipe();
    const int n = 8 * 8 * 4;
    float *ref = unet_out(base, tu_path(LORA1), 0.7f);
    /* diffusers folder, fp32 */
    dl_lora_weight l[1] = {{tu_path(LORA1), 0.7f}};
    cr_assert_eq(dl_ckpt_merge_loras(base, l, 1, tu_tmp("merged"), -1, NULL), DL_OK, "%s", dl_error_msg());
    float *got = unet_out(tu_tmp("merged"), NULL, 0);
    tu_expect_close(got, ref, n, 1e-5, "merged diffusers folder vs LoRA at run time");
    free(got);
    /* single file */
    cr_assert_eq(dl_ckpt_convert(base, tu_tmp("base.safetensors"), DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_merge_loras(tu_tmp("base.safetensors"), l, 1, tu_tmp("merged.safetensors"), -1, NULL), DL_OK,
                 "%s", dl_error_msg());
    got = unet_out(tu_tmp("merged.safetensors"), NULL, 0);
    tu_expect_close(got, ref, n, 1e-5, "merged single file vs LoRA at run time");
    /* the merged LoRA pair baked in equals the two baked one after the other */
    dl_lora_weight l2[2] = {{tu_path(LORA1), 0.7f}, {tu_path(LORA2), -0.3f}};
    cr_assert_eq(dl_ckpt_merge_loras(base, l2, 2, tu_tmp("merged2"), -1, NULL), DL_OK, "%s", dl_error_msg());
    dl_lora_file in[2], mo;
    cr_assert_eq(dl_lf_read(&in[0], tu_path(LORA1)), DL_OK);
    cr_assert_eq(dl_lf_read(&in[1], tu_path(LORA2)), DL_OK);
    float w[2] = {0.7f, -0.3f};
    cr_assert_eq(dl_lora_merge_loras(in, w, 2, 0, 0, 1.0, &mo, NULL, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_lf_save(&mo, tu_tmp("pair.safetensors"), DL_F32, NULL, 0), DL_OK, "%s", dl_error_msg());
    float *a = unet_out(tu_tmp("merged2"), NULL, 0), *b = unet_out(base, tu_tmp("pair.safetensors"), 1.0f);
    tu_expect_close(a, b, n, 1e-5, "two LoRAs baked vs their concatenation at run time");
    free(a), free(b), free(got), free(ref);
    dl_lf_free(&mo), dl_lf_free(&in[0]), dl_lf_free(&in[1]);
    /* fp16 output keeps the file's dtype; --dtype changes it */
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_merge_loras(tu_path("tests/golden/tiny_pipe"), l, 1, tu_tmp("m16"), -1, NULL), DL_OK);
    cr_assert_eq(dl_ckpt_open(&ck, tu_tmp("m16"), NULL), DL_OK);
    cr_expect_eq(ck.files[ck.part_file[DL_PART_UNET]].tensors[0].dtype, DL_F16);
    cr_expect(dl_st_meta(&ck.files[0], "danlu_merged_loras") != NULL);
    dl_ckpt_close(&ck);
}

Test(lora_tools, merge_refuses_wrong_architecture, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    dl_lora_weight l[1] = {{tu_path("tests/golden/tiny_pipe_loras/other_arch.safetensors"), 1.0f}};
    cr_expect_eq(dl_ckpt_merge_loras(tu_path("tests/golden/tiny_pipe"), l, 1, tu_tmp("m"), -1, NULL), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "other_arch.safetensors") && strstr(dl_error_msg(), "another model"), "%s",
              dl_error_msg());
    struct stat st;
    cr_expect_neq(stat(tu_tmp("m"), &st), 0, "nothing written");
    /* LoRA + LoRA of different shapes */
    dl_lora_file in[2], out;
    cr_assert_eq(dl_lf_read(&in[0], tu_path(LORA1)), DL_OK);
    cr_assert_eq(dl_lf_read(&in[1], tu_path("tests/golden/tiny_pipe_loras/other_arch.safetensors")), DL_OK);
    float w[2] = {1, 1};
    cr_expect_eq(dl_lora_merge_loras(in, w, 2, 0, 0, 1, &out, NULL, NULL), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "different shapes"), "%s", dl_error_msg());
    dl_lf_free(&in[0]), dl_lf_free(&in[1]);
}

Test(lora_tools, extract_reproduces_a_fine_tune, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    const char *base = fp32_pipe();
    /* the "fine-tune": base with a LoRA baked in (UNet ranks 4, 3x3 convs rank 2) */
    dl_lora_weight l[1] = {{tu_path(LORA1), 1.0f}};
    cr_assert_eq(dl_ckpt_merge_loras(base, l, 1, tu_tmp("tuned"), -1, NULL), DL_OK, "%s", dl_error_msg());
    dl_checkpoint a, b;
    cr_assert_eq(dl_ckpt_open(&a, base, NULL), DL_OK);
    cr_assert_eq(dl_ckpt_open(&b, tu_tmp("tuned"), NULL), DL_OK);
    dl_extract_opts o = {.rank = 4, .conv_rank = 2, .clamp_quantile = 1.0, .min_diff = 0.01, .module_threshold = 0};
    dl_lora_file lf;
    dl_extract_stats st;
    cr_assert_eq(dl_lora_extract(&a, &b, &o, &lf, &st), DL_OK, "%s", dl_error_msg());
    cr_expect(st.worst_rel_err < 1e-5, "the rank holds the whole change: worst error %g", st.worst_rel_err);
    cr_assert_eq(dl_lf_save(&lf, tu_tmp("x.safetensors"), DL_F32, NULL, 0), DL_OK);
    dl_lf_free(&lf);
    float *want = unet_out(tu_tmp("tuned"), NULL, 0), *got = unet_out(base, tu_tmp("x.safetensors"), 1.0f);
    tu_expect_close(got, want, 8 * 8 * 4, 1e-5, "base + extracted LoRA vs tuned");
    free(got);
    /* rank 1: an approximation, bounded by the discarded singular values */
    o.rank = 1, o.conv_rank = 1;
    cr_assert_eq(dl_lora_extract(&a, &b, &o, &lf, &st), DL_OK, "%s", dl_error_msg());
    cr_expect(st.worst_rel_err > 1e-3 && st.worst_rel_err < 1, "rank-1 error %g", st.worst_rel_err);
    dl_lf_free(&lf);
    /* a rank above what a module allows */
    o.rank = 100;
    cr_expect_eq(dl_lora_extract(&a, &b, &o, &lf, &st), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "larger than module"), "%s", dl_error_msg());
    /* nothing changed */
    o.rank = 4;
    cr_expect_eq(dl_lora_extract(&a, &a, &o, &lf, &st), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "nothing to extract"), "%s", dl_error_msg());
    free(want);
    dl_ckpt_close(&a);
    dl_ckpt_close(&b);
    /* different architectures */
    cr_assert_eq(dl_ckpt_open(&a, tu_path("tests/golden/tiny_pipe"), NULL), DL_OK);
    cr_assert_eq(dl_ckpt_open(&b, tu_path("tests/golden/tiny_unet_sd2x"), NULL) == DL_OK ||
                     dl_ckpt_open(&b, tu_path("tests/golden/tiny_sd15"), NULL) == DL_OK,
                 1);
    if (dl_unet_config_diff(&a.cfg.unet, &b.cfg.unet)) {
        cr_expect_eq(dl_lora_extract(&a, &b, &o, &lf, &st), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "different architectures"), "%s", dl_error_msg());
    }
    dl_ckpt_close(&a);
    dl_ckpt_close(&b);
}

static void expect_help(int (*fn)(int, char **, FILE *), const char *cmd, int (*optsets)(dl_optset *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    char *argv[] = {(char *)cmd, "--help", NULL};
    cr_expect_eq(fn(2, argv, f), 0, "%s --help", cmd);
    fclose(f);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int n = optsets(sets);
    for (int s = 0; s < n; s++)
        for (int k = 0; k < sets[s].n; k++) cr_expect(strstr(buf, sets[s].opts[k].name), "%s --help lacks %s", cmd, sets[s].opts[k].name);
    free(buf);
    char *bad[] = {(char *)cmd, "--no-such-option", NULL};
    FILE *devnull = fopen("/dev/null", "w");
    cr_expect_eq(fn(2, bad, devnull), 2);
    fclose(devnull);
}

Test(lora_tools, every_subcommand_has_help)
{
    expect_help(dl_cmd_lora_merge, "merge", dl_lora_merge_optsets);
    expect_help(dl_cmd_lora_resize, "resize", dl_lora_resize_optsets);
    expect_help(dl_cmd_lora_extract, "extract", dl_lora_extract_optsets);
    expect_help(dl_cmd_convert, "convert", dl_convert_optsets);
}
