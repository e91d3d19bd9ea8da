/* test_sdxl_text.c - SDXL's second text encoder (transformers' CLIPTextModelWithProjection, as
 * OpenCLIP ViT-bigG is used by SDXL) on the tiny SDXL pipeline tests/golden/tiny_sdxl_pipe:
 * last hidden state, raw penultimate hidden state and the pooled text_embeds against transformers
 * (float64), both pooling rules, both checkpoint layouts, `danlu run --component text-encoder-2`,
 * danlu-mkcheckpoint's SDXL presets, and bad checkpoints named in one message.
 * Golden data: tests/gen/gen_sdxl_pipe.py -> tests/golden/sdxl_text.safetensors. */
#include "cli/commands.h"
#include "model/clip.h"
#include "model/tokenizer.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FOLDER "tests/golden/tiny_sdxl_pipe"
#define SINGLE "tests/golden/tiny_sdxl_pipe.safetensors"

static const dl_ckpt_options k_xl = {.prediction = -1, .allow_sdxl = 1};

/* Options for rel: a single file of the tiny pipeline takes the folder's unet/config.json (its
 * UNet's heads and norm groups are not in the weights). */
static dl_ckpt_options opts_for(const char *rel)
{
    static char ucfg[4200];
    dl_ckpt_options o = k_xl;
    if (strstr(rel, ".safetensors")) {
        snprintf(ucfg, sizeof ucfg, "%s", tu_path(FOLDER "/unet/config.json"));
        o.unet_config = ucfg;
    }
    return o;
}

typedef struct {
    dl_checkpoint ck;
    dl_arena weights, scratch;
    dl_clip clip;
} te2;

static void te2_open(te2 *f, const char *rel, int eos)
{
    memset(f, 0, sizeof *f);
    const dl_ckpt_options o = opts_for(rel);
    cr_assert_eq(dl_ckpt_open(&f->ck, tu_path(rel), &o), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(f->ck.sdxl, 1);
    cr_assert_gt(f->ck.cfg.text2.num_layers, 0, "%s: no second text encoder found", rel);
    if (eos >= 0) f->ck.cfg.text2.eos_token_id = eos; /* a variant of the config, as the generator makes it */
    size_t wb;
    cr_assert_eq(dl_clip_weights_bytes_as(&f->ck, DL_PART_TEXT2, &wb), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_arena_init(&f->weights, "weights", wb), DL_OK);
    cr_assert_eq(dl_clip_load_as(&f->clip, &f->ck, DL_PART_TEXT2, &f->weights), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(f->weights.used, wb, "the measured weights size is what the load took");
    cr_assert_eq(dl_arena_init(&f->scratch, "scratch", dl_clip_scratch_bytes(&f->clip, 2, 77)), DL_OK);
}

static void te2_close(te2 *f)
{
    dl_clip_free(&f->clip);
    dl_arena_free(&f->scratch);
    dl_arena_free(&f->weights);
    dl_ckpt_close(&f->ck);
}

static int32_t *golden_ids(const dl_st_file *g, const char *cse, int *N, int *T)
{
    char name[96];
    snprintf(name, sizeof name, "%s.input_ids", cse);
    const dl_st_tensor *t = dl_st_find(g, name);
    cr_assert_not_null(t, "%s", name);
    *N = (int)t->shape[0], *T = (int)t->shape[1];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)*N * *T);
    for (int i = 0; i < *N * *T; i++) ids[i] = (int32_t)((const int64_t *)t->data)[i];
    return ids;
}

/* The three outputs of one golden case; out3 (if non-NULL) receives them, concatenated. */
static void check_case(const char *rel, const char *cse, int eos, float *out3)
{
    te2 f;
    te2_open(&f, rel, eos);
    const dl_clip_config *c = &f.clip.cfg;
    cr_expect_eq(c->projection_dim, 32);
    cr_expect_eq(c->act, DL_ACT_GELU);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_text");
    int N, T;
    int32_t *ids = golden_ids(&g, cse, &N, &T);
    const int C = c->hidden_size, L = c->num_layers, P = c->projection_dim;
    const size_t n = (size_t)N * T * C;
    float *last = tu_alloc_nan(n), *pen = tu_alloc_nan(n), *pooled = tu_alloc_nan((size_t)N * P);
    int pos[2];
    dl_clip_forward(tu_ctx(), &f.clip, N, T, ids, L, 1, last, &f.scratch);
    dl_clip_forward(tu_ctx(), &f.clip, N, T, ids, L - 1, 0, pen, &f.scratch);
    dl_clip_eos_positions(c, N, T, ids, pos);
    dl_clip_pooled(tu_ctx(), &f.clip, N, T, pos, last, pooled, &f.scratch);
    cr_expect_eq(dl_arena_mark(&f.scratch), 0, "the passes must release their scratch");
    char name[128], label[256];
    const int64_t s3[3] = {N, T, C}, s2[2] = {N, P};
    struct { const char *tensor; const float *got; size_t n; int ndim; const int64_t *shape; } outs[3] = {
        {"last_hidden_state", last, n, 3, s3}, {"penultimate_hidden_state", pen, n, 3, s3},
        {"text_embeds", pooled, (size_t)N * P, 2, s2}};
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.%s", cse, outs[k].tensor);
        float *ref = tu_golden_f32_shape(&g, name, outs[k].ndim, outs[k].shape);
        snprintf(label, sizeof label, "%s (%s)", name, rel);
        tu_expect_close(outs[k].got, ref, outs[k].n, 1e-5, label);
        free(ref);
    }
    if (out3) {
        memcpy(out3, last, n * sizeof(float));
        memcpy(out3 + n, pen, n * sizeof(float));
        memcpy(out3 + 2 * n, pooled, (size_t)N * P * sizeof(float));
    }
    free(last), free(pen), free(pooled), free(ids);
    dl_st_close(&g);
    te2_close(&f);
}

Test(sdxl_text, second_encoder_matches_transformers_argmax_pooling)
{
    check_case(FOLDER, "argmax", -1, NULL);
}

Test(sdxl_text, eos_token_pooling_when_the_config_says_so)
{
    /* eos_token_id 500 in the config: pooled at the first 500, not at the largest id */
    check_case(FOLDER, "eos", 500, NULL);
    const dl_clip_config c = {.eos_token_id = 500};
    const int32_t ids[2 * 4] = {998, 990, 500, 500, 998, 3, 4, 7};
    int pos[2];
    dl_clip_eos_positions(&c, 2, 4, ids, pos);
    cr_expect_eq(pos[0], 2);
    cr_expect_eq(pos[1], 0, "no eos: the first position, as argmax of an all-false mask");
    const dl_clip_config legacy = {.eos_token_id = 2};
    dl_clip_eos_positions(&legacy, 2, 4, ids, pos);
    cr_expect_eq(pos[0], 0, "argmax: the first of the largest ids");
    cr_expect_eq(pos[1], 0);
}

/* The single file (conditioner.embedders.1.model.*, OpenCLIP names, fused q/k/v, text_projection
 * stored [in, out]) detects the folder's config and gives the same outputs bit for bit, reading
 * every one of its second text encoder's tensors. */
Test(sdxl_text, single_file_reads_like_the_folder)
{
    dl_checkpoint a, b;
    cr_assert_eq(dl_ckpt_open(&a, tu_path(FOLDER), &k_xl), DL_OK, "%s", dl_error_msg());
    const dl_ckpt_options ob = opts_for(SINGLE);
    cr_assert_eq(dl_ckpt_open(&b, tu_path(SINGLE), &ob), DL_OK, "%s", dl_error_msg());
    dl_clip_config want = a.cfg.text2;
    want.bos_token_id = b.cfg.text2.bos_token_id; /* special ids are not in the weights */
    want.eos_token_id = b.cfg.text2.eos_token_id;
    want.pad_token_id = b.cfg.text2.pad_token_id;
    const char *d = dl_clip_config_diff(&b.cfg.text2, &want);
    cr_expect_null(d, "detected vs config.json: %s", d);
    dl_ckpt_close(&a);
    dl_ckpt_close(&b);
    const size_t n = 2 * 77 * 128;
    float *x = malloc(sizeof(float) * (2 * n + 64)), *y = malloc(sizeof(float) * (2 * n + 64));
    check_case(FOLDER, "argmax", -1, x);
    check_case(SINGLE, "argmax", 2, y); /* the folder's eos_token_id (argmax pooling) */
    cr_expect(memcmp(x, y, sizeof(float) * (2 * n + 64)) == 0, "single file and folder outputs differ");
    free(x), free(y);
    /* every tensor of conditioner.embedders.1.* is read */
    te2 f;
    te2_open(&f, SINGLE, -1);
    int nu = 0;
    char **un = dl_ckpt_unused(&f.ck, DL_PART_TEXT2, &nu);
    cr_expect_eq(nu, 0, "%d unused, first %s", nu, nu ? un[0] : "");
    dl_ckpt_free_names(un, nu);
    te2_close(&f);
}

static const char *g_backend = "cpu"; /* danlu run's backend in the tests below */

static int run_cli(const char *model, const char *comp, const char *in, const char *out)
{
    char ucfg[4200];
    snprintf(ucfg, sizeof ucfg, "%s", tu_path(FOLDER "/unet/config.json"));
    char *argv[] = {"run", "--model", (char *)model, "--component", (char *)comp, "--inputs", (char *)in,
                    "--out", (char *)out, "--threads", "2", "--backend", (char *)g_backend, "--unet-config", ucfg, NULL};
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_run(strstr(model, ".safetensors") ? 15 : 13, argv, devnull);
    fclose(devnull);
    return rc;
}

static void run_text_encoder_2(void)
{
    dl_st_file g;
    tu_golden_open(&g, "sdxl_text");
    const dl_st_tensor *ids = dl_st_find(&g, "argmax.input_ids");
    dl_st_entry e = {"input_ids", DL_I64, 2, {ids->shape[0], ids->shape[1]}, ids->data};
    cr_assert_eq(dl_st_save(tu_tmp("in.safetensors"), &e, 1, NULL, 0), DL_OK);
    for (int l = 0; l < 2; l++) {
        cr_assert_eq(run_cli(tu_path(l ? SINGLE : FOLDER), "text-encoder-2", tu_tmp("in.safetensors"),
                             tu_tmp("out.safetensors")), 0);
        dl_st_file o;
        cr_assert_eq(dl_st_open(&o, tu_tmp("out.safetensors")), DL_OK, "%s", dl_error_msg());
        static const char *const names[3] = {"last_hidden_state", "penultimate_hidden_state", "text_embeds"};
        for (int k = 0; k < 3; k++) {
            char gn[96];
            snprintf(gn, sizeof gn, "argmax.%s", names[k]);
            int64_t n, m;
            float *ref = tu_golden_f32(&g, gn, &n), *got = tu_golden_f32(&o, names[k], &m);
            cr_assert_eq(n, m, "%s: %lld values, golden %lld", names[k], (long long)m, (long long)n);
            tu_expect_close(got, ref, (size_t)n, 1e-5, names[k]);
            free(ref), free(got);
        }
        dl_st_close(&o);
    }
    /* an SD 1.x model has no second text encoder: one message naming the model */
    cr_expect_eq(run_cli(tu_path("tests/golden/tiny_sd15"), "text-encoder-2", tu_tmp("in.safetensors"),
                         tu_tmp("o.safetensors")), 1);
    dl_st_close(&g);
}

Test(sdxl_text, danlu_run_text_encoder_2, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini) { run_text_encoder_2(); }

/* the same on the CUDA backend over the emulated device (device memory: the pooled rows are
 * gathered with the backend's copy) */
Test(sdxl_text, danlu_run_text_encoder_2_on_cuda, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    setenv("DANLU_CUDA_DEVICE", "emulated", 1);
    g_backend = "cuda";
    run_text_encoder_2();
}

/* A single file without one of its second text encoder's tensors, and a folder with a mis-shaped
 * text_projection: one message naming the file and the tensor. */
Test(sdxl_text, bad_checkpoints_are_named, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    dl_st_file src;
    cr_assert_eq(dl_st_open(&src, tu_path(SINGLE)), DL_OK, "%s", dl_error_msg());
    dl_st_entry *e = calloc((size_t)src.n_tensors, sizeof *e);
    int n = 0;
    const char *drop = "conditioner.embedders.1.model.transformer.resblocks.1.attn.out_proj.weight";
    for (int i = 0; i < src.n_tensors; i++) {
        const dl_st_tensor *t = &src.tensors[i];
        if (!strcmp(t->name, drop)) continue;
        e[n].name = t->name, e[n].dtype = t->dtype, e[n].ndim = t->ndim, e[n].data = t->data;
        memcpy(e[n].shape, t->shape, sizeof t->shape[0] * (size_t)t->ndim);
        n++;
    }
    cr_assert_eq(n, src.n_tensors - 1);
    cr_assert_eq(dl_st_save(tu_tmp("bad.safetensors"), e, n, NULL, 0), DL_OK, "%s", dl_error_msg());
    free(e);
    dl_st_close(&src);
    dl_checkpoint ck;
    const dl_ckpt_options ob = opts_for(SINGLE);
    cr_assert_eq(dl_ckpt_open(&ck, tu_tmp("bad.safetensors"), &ob), DL_OK, "%s", dl_error_msg());
    size_t wb;
    cr_expect_eq(dl_clip_weights_bytes_as(&ck, DL_PART_TEXT2, &wb), DL_ERR);
    const char *msg = dl_error_msg();
    cr_expect(strstr(msg, "text_model.encoder.layers.1.self_attn.out_proj.weight") && strstr(msg, drop) &&
                  strstr(msg, "bad.safetensors") && strstr(msg, "text_encoder_2"),
              "message: %s", msg);
    dl_ckpt_close(&ck);

    /* the folder, its text_encoder_2 with text_projection [32, 64] instead of [32, 128] */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/m/text_encoder_2' && for p in unet vae text_encoder scheduler; do ln -s '%s/%s/'$p '%s/m/'$p; done && cp '%s/%s/text_encoder_2/config.json' '%s/m/text_encoder_2/'",
             tu_tmpdir(), tu_path(""), FOLDER, tu_tmpdir(), tu_path(""), FOLDER, tu_tmpdir());
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    char te[4096];
    snprintf(te, sizeof te, "%s/%s/text_encoder_2/model.safetensors", tu_path(""), FOLDER);
    cr_assert_eq(dl_st_open(&src, te), DL_OK, "%s", dl_error_msg());
    e = calloc((size_t)src.n_tensors, sizeof *e);
    for (int i = 0; i < src.n_tensors; i++) {
        const dl_st_tensor *t = &src.tensors[i];
        e[i].name = t->name, e[i].dtype = t->dtype, e[i].ndim = t->ndim, e[i].data = t->data;
        memcpy(e[i].shape, t->shape, sizeof t->shape[0] * (size_t)t->ndim);
        if (!strcmp(t->name, "text_projection.weight")) e[i].shape[1] = 64; /* half the data, read as [32, 64] */
    }
    cr_assert_eq(dl_st_save(tu_tmp("m/text_encoder_2/model.safetensors"), e, src.n_tensors, NULL, 0), DL_OK,
                 "%s", dl_error_msg());
    free(e);
    dl_st_close(&src);
    cr_assert_eq(dl_ckpt_open(&ck, tu_tmp("m"), &k_xl), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(dl_clip_weights_bytes_as(&ck, DL_PART_TEXT2, &wb), DL_ERR);
    msg = dl_error_msg();
    cr_expect(strstr(msg, "text_projection.weight") && strstr(msg, "[32, 128]") && strstr(msg, "[32, 64]") &&
                  strstr(msg, "text_encoder_2/model.safetensors"),
              "message: %s", msg);
    dl_ckpt_close(&ck);
}

static const char *mkcheckpoint_tool(void)
{
    static char tool[4200];
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert_gt(len, 0);
    exe[len] = 0;
    *strrchr(exe, '/') = 0;
    snprintf(tool, sizeof tool, "%s/../tools/danlu-mkcheckpoint", exe);
    return access(tool, X_OK) == 0 ? tool : NULL;
}

/* danlu-mkcheckpoint writes tiny-sdxl's second text encoder in both layouts: detected back as the
 * preset's, every tensor read, finite outputs. The full-size preset's config is bigG's. */
Test(sdxl_text, mkcheckpoint_writes_the_second_encoder, .timeout = 120)
{
    dl_model_config xl;
    cr_assert_eq(dl_model_config_preset(&xl, "sdxl"), DL_OK);
    cr_expect_eq(xl.text2.hidden_size, 1280);
    cr_expect_eq(xl.text2.num_layers, 32);
    cr_expect_eq(xl.text2.num_heads, 20);
    cr_expect_eq(xl.text2.intermediate_size, 5120);
    cr_expect_eq(xl.text2.projection_dim, 1280);
    cr_expect_eq(xl.text2.act, DL_ACT_GELU);
    cr_expect_eq(xl.text.hidden_size + xl.text2.hidden_size, xl.unet.cross_attention_dim);
    cr_expect_eq(xl.text2.projection_dim, dl_unet_text_embeds_dim(&xl.unet));
    const char *tool = mkcheckpoint_tool();
    if (!tool) cr_skip_test("danlu-mkcheckpoint not built");
    dl_model_config want;
    cr_assert_eq(dl_model_config_preset(&want, "tiny-sdxl"), DL_OK);
    cr_expect_eq(want.text.hidden_size + want.text2.hidden_size, want.unet.cross_attention_dim);
    cr_expect_eq(want.text2.projection_dim, dl_unet_text_embeds_dim(&want.unet));
    static const char *const layouts[2] = {"single", "diffusers"};
    for (int l = 0; l < 2; l++) {
        char out[256], cmd[9000];
        snprintf(out, sizeof out, "/tmp/danlu_test_mkte2_%d_%s", (int)getpid(), layouts[l]);
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' -o '%s' --preset tiny-sdxl --layout %s --dtype bf16 > /dev/null",
                 out, tool, out, layouts[l]);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
        dl_checkpoint ck;
        cr_assert_eq(dl_ckpt_open(&ck, out, &k_xl), DL_OK, "%s: %s", layouts[l], dl_error_msg());
        const char *d = dl_clip_config_diff(&ck.cfg.text2, &want.text2);
        cr_expect_null(d, "%s text2: %s", layouts[l], d);
        dl_arena w;
        size_t wb;
        dl_clip m;
        cr_assert_eq(dl_clip_weights_bytes_as(&ck, DL_PART_TEXT2, &wb), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(dl_arena_init(&w, "weights", wb), DL_OK);
        cr_assert_eq(dl_clip_load_as(&m, &ck, DL_PART_TEXT2, &w), DL_OK, "%s", dl_error_msg());
        int nu = 0;
        char **un = dl_ckpt_unused(&ck, DL_PART_COUNT, &nu);
        int te2_unused = 0;
        for (int i = 0; i < nu; i++) te2_unused += strstr(un[i], "embedders.1") || strstr(un[i], "text_encoder_2");
        cr_expect_eq(te2_unused, 0, "%s: second text encoder tensors unread", layouts[l]);
        dl_ckpt_free_names(un, nu);
        const int N = 1, T = 5, P = m.cfg.projection_dim;
        int32_t ids[5] = {998, 5, 6, 999, 999};
        int pos[1];
        float *h = tu_alloc_nan((size_t)T * m.cfg.hidden_size), *pooled = tu_alloc_nan((size_t)P);
        dl_arena s;
        cr_assert_eq(dl_arena_init(&s, "scratch", dl_clip_scratch_bytes(&m, N, T)), DL_OK);
        dl_clip_forward(tu_ctx(), &m, N, T, ids, m.cfg.num_layers, 1, h, &s);
        dl_clip_eos_positions(&m.cfg, N, T, ids, pos);
        cr_expect_eq(pos[0], 3);
        dl_clip_pooled(tu_ctx(), &m, N, T, pos, h, pooled, &s);
        size_t finite = 0;
        for (int i = 0; i < P; i++) finite += isfinite(pooled[i]);
        cr_expect_eq(finite, (size_t)P, "%s: non-finite text_embeds", layouts[l]);
        free(h), free(pooled);
        dl_arena_free(&s);
        dl_clip_free(&m);
        dl_arena_free(&w);
        dl_ckpt_close(&ck);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
        cr_expect_eq(system(cmd), 0);
    }
}

/* SDXL's tokenizer_2 pads with "!" (tiny_sdxl_pipe/tokenizer_2's special_tokens_map.json, as
 * SDXL's), tokenizer 1 with <|endoftext|>; the ids before the padding are the same. `danlu
 * tokenize --encoder 2` prints tokenizer_2's. */
Test(sdxl_text, tokenizer_2_pads_with_exclamation_mark)
{
    dl_tokenizer *t1, *t2;
    cr_assert_eq(dl_tokenizer_load(&t1, tu_path(FOLDER "/tokenizer")), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_tokenizer_load(&t2, tu_path(FOLDER "/tokenizer_2")), DL_OK, "%s", dl_error_msg());
    int32_t a[77], b[77];
    /* the vocabulary entry "!" (byte 33; not "!</w>", what a "!" in a prompt encodes to) */
    const int32_t bang[1] = {33};
    cr_expect_eq(dl_tokenizer_pad(t2), bang[0], "tokenizer_2's pad is the id of \"!\"");
    cr_expect_eq(dl_tokenizer_pad(t1), 999, "tokenizer 1 pads with <|endoftext|>");
    cr_assert_eq(dl_tokenizer_encode_padded(t1, "a photo of a cat", a), DL_OK);
    cr_assert_eq(dl_tokenizer_encode_padded(t2, "a photo of a cat", b), DL_OK);
    int eos = 0;
    while (eos < 77 && a[eos] != 999) eos++;
    cr_assert_lt(eos, 76);
    cr_expect(memcmp(a, b, sizeof(int32_t) * (size_t)(eos + 1)) == 0, "ids up to EOS differ");
    for (int i = eos + 1; i < 77; i++) {
        cr_expect_eq(a[i], 999);
        cr_expect_eq(b[i], bang[0]);
    }
    dl_tokenizer_free(t1);
    dl_tokenizer_free(t2);
    /* danlu tokenize --encoder 2 on the folder (and on its tokenizer/ alone) */
    for (int k = 0; k < 2; k++) {
        FILE *out = tmpfile();
        char *argv[] = {"tokenize", k ? "--tokenizer" : "--model", (char *)tu_path(k ? FOLDER "/tokenizer" : FOLDER),
                        "--encoder", "2", "--windows", "1", "a cat", NULL};
        cr_assert_eq(dl_cmd_tokenize(8, argv, out), 0, "%s", dl_error_msg());
        rewind(out);
        char text[8192] = {0};
        size_t n = fread(text, 1, sizeof text - 1, out);
        text[n] = 0;
        fclose(out);
        char want[64];
        snprintf(want, sizeof want, " 999 %d %d ", bang[0], bang[0]);
        cr_expect(strstr(text, want) != NULL, "encoder 2 (%s): %s", k ? "--tokenizer" : "--model", text);
    }
}
