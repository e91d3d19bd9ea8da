/* test_prompt.c - A1111 prompt syntax: parse_prompt_attention fragments and weights, the
 * 75-token chunks and multipliers of sd_hijack_clip's tokenize_line, LoRA tags, emphasis math.
 * Reference: tests/gen/gen_sample.py re-implements A1111's prompt_parser.py / sd_hijack_clip.py
 * in Python (A1111 is not installable here) and writes tests/golden/sample_cases.json (fragments)
 * and sample.safetensors ("prompt_<case>.ids / .mult / .weights"). Fragments and ids must be
 * equal; weights equal to the float32 the golden holds (A1111 turns them into float32 too). */
#include "sample/prompt.h"
#include "testutil.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_all(const char *path)
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

Test(prompt, corpus_matches_a1111_parser_and_chunker)
{
    char *js = read_all(tu_path("tests/golden/sample_cases.json"));
    cJSON *root = cJSON_Parse(js);
    cr_assert_not_null(root);
    cJSON *prompts = cJSON_GetObjectItem(root, "prompts");
    dl_st_file g;
    tu_golden_open(&g, "sample");
    dl_tokenizer *tok;
    cr_assert_eq(dl_tokenizer_load(&tok, tu_path("tests/golden/tiny_pipe/tokenizer")), DL_OK, "%s", dl_error_msg());
    int cases = 0;
    for (cJSON *c = prompts->child; c; c = c->next) {
        cJSON *parsed = cJSON_GetObjectItem(c, "parsed");
        if (!parsed) continue; /* embedding cases */
        const char *name = c->string, *text = cJSON_GetObjectItem(c, "prompt")->valuestring;
        cases++;
        /* fragments */
        dl_prompt_frag *fr;
        int nf;
        cr_assert_eq(dl_prompt_parse(text, &fr, &nf), DL_OK);
        cr_expect_eq(nf, cJSON_GetArraySize(parsed), "%s: %d fragments, want %d", name, nf, cJSON_GetArraySize(parsed));
        char key[96];
        snprintf(key, sizeof key, "prompt_%s.weights", name);
        int64_t nw;
        float *w = tu_golden_f32(&g, key, &nw);
        for (int i = 0; i < nf && i < cJSON_GetArraySize(parsed); i++) {
            cJSON *e = cJSON_GetArrayItem(parsed, i);
            cr_expect_str_eq(fr[i].text, cJSON_GetArrayItem(e, 0)->valuestring, "%s: fragment %d", name, i);
            cr_expect_eq(fr[i].weight, cJSON_GetArrayItem(e, 1)->valuedouble, "%s: weight %d: %.17g vs %.17g", name, i,
                         fr[i].weight, cJSON_GetArrayItem(e, 1)->valuedouble);
            cr_expect_eq((float)fr[i].weight, w[i], "%s: weight %d", name, i);
        }
        free(w);
        dl_prompt_frags_free(fr, nf);
        /* chunks */
        dl_prompt_chunks ch;
        cr_assert_eq(dl_prompt_chunks_build(tok, text, 1, 8, &ch), DL_OK, "%s: %s", name, dl_error_msg());
        snprintf(key, sizeof key, "prompt_%s.ids", name);
        const dl_st_tensor *ids = dl_st_find(&g, key);
        cr_assert_not_null(ids, "%s", key);
        cr_expect_eq(ch.n, ids->shape[0], "%s: %d chunks, want %lld", name, ch.n, (long long)ids->shape[0]);
        if (ch.n == ids->shape[0])
            cr_expect_eq(memcmp(ch.ids, ids->data, sizeof(int32_t) * 77 * (size_t)ch.n), 0, "%s: ids differ", name);
        snprintf(key, sizeof key, "prompt_%s.mult", name);
        int64_t nm;
        float *m = tu_golden_f32(&g, key, &nm);
        if (nm == (int64_t)ch.n * 77)
            for (int i = 0; i < ch.n * 77; i++) cr_expect_eq(ch.mult[i], m[i], "%s: multiplier %d", name, i);
        free(m);
        dl_prompt_chunks_free(&ch);
    }
    cr_expect_geq(cases, 10);
    dl_tokenizer_free(tok);
    dl_st_close(&g);
    cJSON_Delete(root);
    free(js);
}

Test(prompt, lora_tags_are_extracted)
{
    char *text;
    dl_prompt_lora *l;
    int n;
    cr_assert_eq(dl_prompt_extract_loras("a <lora:style_v2:0.8> cat <lora:eyes> <lyco:x:0.5:0.25>, <hypernet:h:1>",
                                         &text, &l, &n), DL_OK);
    cr_expect_str_eq(text, "a  cat  , <hypernet:h:1>");
    cr_assert_eq(n, 3);
    cr_expect_str_eq(l[0].name, "style_v2");
    cr_expect_eq(l[0].te_weight, 0.8);
    cr_expect_eq(l[0].unet_weight, 0.8);
    cr_expect_str_eq(l[1].name, "eyes");
    cr_expect_eq(l[1].te_weight, 1.0);
    cr_expect_eq(l[2].te_weight, 0.5);
    cr_expect_eq(l[2].unet_weight, 0.25);
    dl_prompt_loras_free(l, n);
    free(text);
    cr_expect_eq(dl_prompt_extract_loras("a <lora::0.5>", &text, &l, &n), DL_ERR);
    cr_expect_eq(dl_prompt_extract_loras("a <lora:x:abc>", &text, &l, &n), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "not a number") != NULL, "%s", dl_error_msg());
}

Test(prompt, too_many_chunks_is_an_error)
{
    dl_tokenizer *tok;
    cr_assert_eq(dl_tokenizer_load(&tok, tu_path("tests/golden/tiny_pipe/tokenizer")), DL_OK, "%s", dl_error_msg());
    char p[4096] = "";
    for (int i = 0; i < 100; i++) strcat(p, "cat dog ");
    dl_prompt_chunks ch;
    cr_expect_eq(dl_prompt_chunks_build(tok, p, 1, 2, &ch), DL_ERR);
    cr_expect_eq(dl_prompt_chunks_build(tok, p, 1, 8, &ch), DL_OK);
    cr_expect_eq(ch.n, 3); /* 200 tokens */
    dl_prompt_chunks_free(&ch);
    dl_tokenizer_free(tok);
}

Test(prompt, emphasis_keeps_the_mean)
{
    float z[3 * 4], mult[3] = {1.0f, 1.5f, 0.5f};
    for (int i = 0; i < 12; i++) z[i] = 0.1f * (float)i - 0.3f;
    double m0 = 0, m1 = 0;
    for (int i = 0; i < 12; i++) m0 += z[i];
    float ref[12];
    for (int t = 0; t < 3; t++)
        for (int c = 0; c < 4; c++) ref[t * 4 + c] = z[t * 4 + c] * mult[t];
    double r0 = 0;
    for (int i = 0; i < 12; i++) r0 += ref[i];
    for (int i = 0; i < 12; i++) ref[i] = (float)(ref[i] * (m0 / r0));
    dl_prompt_apply_emphasis(z, mult, 3, 4);
    for (int i = 0; i < 12; i++) m1 += z[i];
    cr_expect(fabs(m1 - m0) < 1e-5, "mean %g vs %g", m1 / 12, m0 / 12);
    tu_expect_close(z, ref, 12, 1e-6, "emphasis");
}
