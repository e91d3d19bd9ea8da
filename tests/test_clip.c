/* test_clip.c - the CLIP text encoder against transformers' CLIPTextModel (float64 reference)
 * on the tiny checkpoint, in both layouts: last hidden state, raw penultimate, clip skip 2. */
#include "model/clip.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    dl_checkpoint ck;
    dl_arena weights, scratch;
    dl_clip clip;
} fixture;

static void open_model(fixture *f, const char *rel, dl_act act, int heads)
{
    memset(f, 0, sizeof *f);
    cr_assert_eq(dl_ckpt_open(&f->ck, tu_path(rel), NULL), DL_OK, "%s", dl_error_msg());
    f->ck.cfg.text.act = act;        /* variants of the same weights, as gen_clip.py makes them */
    f->ck.cfg.text.num_heads = heads;
    cr_assert_eq(dl_arena_init(&f->weights, "weights", tu_clip_weights_bytes(&f->ck)), DL_OK);
    cr_assert_eq(dl_clip_load(&f->clip, &f->ck, &f->weights), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_arena_init(&f->scratch, "scratch", dl_clip_scratch_bytes(&f->clip, 2, 77)), DL_OK);
}

static void close_model(fixture *f)
{
    dl_clip_free(&f->clip);
    dl_arena_free(&f->scratch);
    dl_arena_free(&f->weights);
    dl_ckpt_close(&f->ck);
}

static void check_case(const char *rel, const char *cse, dl_act act, int heads)
{
    fixture f;
    open_model(&f, rel, act, heads);
    dl_st_file g;
    tu_golden_open(&g, "clip");
    char name[128];
    snprintf(name, sizeof name, "%s.input_ids", cse);
    const dl_st_tensor *t = dl_st_find(&g, name);
    cr_assert_not_null(t);
    int N = (int)t->shape[0], T = (int)t->shape[1], C = f.clip.cfg.hidden_size, L = f.clip.cfg.num_layers;
    int32_t *ids = malloc(sizeof(int32_t) * N * T);
    for (int i = 0; i < N * T; i++) ids[i] = (int32_t)((const int64_t *)t->data)[i];
    size_t n = (size_t)N * T * C;
    float *out = tu_alloc_nan(n);
    struct { const char *tensor; int layers, final_ln; } cases[] = {
        {"last_hidden_state", L, 1}, {"penultimate_hidden_state", L - 1, 0}, {"clip_skip2", L - 1, 1}};
    for (int c = 0; c < 3; c++) {
        dl_clip_forward(tu_ctx(), &f.clip, N, T, ids, cases[c].layers, cases[c].final_ln, out, &f.scratch);
        snprintf(name, sizeof name, "%s.%s", cse, cases[c].tensor);
        int64_t shape[3] = {N, T, C};
        float *ref = tu_golden_f32_shape(&g, name, 3, shape);
        char label[200];
        snprintf(label, sizeof label, "%s (%s)", name, rel);
        tu_expect_close(out, ref, n, 1e-5, label);
        free(ref);
    }
    cr_expect_eq(dl_arena_mark(&f.scratch), 0, "forward must release its scratch");
    free(out);
    free(ids);
    dl_st_close(&g);
    close_model(&f);
}

Test(clip, sd1_quick_gelu_matches_transformers_both_layouts)
{
    check_case("tests/golden/tiny_sd15", "quick_gelu_h1", DL_ACT_QUICK_GELU, 1);
    check_case("tests/golden/tiny_sd15.safetensors", "quick_gelu_h1", DL_ACT_QUICK_GELU, 1);
}

Test(clip, gelu_multihead_matches_transformers)
{
    check_case("tests/golden/tiny_sd15", "gelu_h4", DL_ACT_GELU, 4);
}
