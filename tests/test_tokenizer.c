/* test_tokenizer.c - CLIP tokenizer against transformers' CLIPTokenizer (tests/golden/tokenizer.json),
 * loaded from CLIP's .txt.gz and from vocab.json + merges.txt folders; SD 2.x's pad "!" against
 * transformers and open_clip (tests/golden/tokenizer_sd2.json); bad-input errors. */
#include "core/error.h"
#include "model/tokenizer.h"
#include "testutil.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BPE_GZ "clip/bpe_simple_vocab_16e6.txt.gz"


static void write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(text, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

static cJSON *golden_file(const char *rel)
{
    const char *path = tu_path(rel);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    cr_assert_eq(fread(text, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    text[n] = 0;
    cJSON *root = cJSON_ParseWithLength(text, (size_t)n);
    free(text);
    cr_assert_not_null(root, "%s: bad JSON", path);
    return root;
}

static cJSON *golden(void) { return golden_file("tests/golden/tokenizer.json"); }

static dl_tokenizer *load_or_fail(const char *path)
{
    dl_tokenizer *t = NULL;
    if (dl_tokenizer_load(&t, path) != DL_OK) cr_assert_fail("load %s: %s", path, dl_error_msg());
    cr_assert_not_null(t);
    return t;
}

/* ids (n of them) equal the JSON array `ref`; names the prompt and the first difference. */
static void expect_ids(const int32_t *ids, int n, const cJSON *ref, const char *prompt,
                       const char *what)
{
    cr_assert(cJSON_IsArray(ref), "golden %s missing", what);
    int nr = cJSON_GetArraySize(ref);
    int i = 0;
    for (const cJSON *e = ref->child; e && i < n; e = e->next, i++)
        if (ids[i] != e->valueint)
            cr_assert_fail("%s of \"%s\": id[%d] = %d, reference %d (length %d vs %d)", what,
                           prompt, i, (int)ids[i], e->valueint, n, nr);
    cr_assert_eq(n, nr, "%s of \"%s\": %d ids, reference %d", what, prompt, n, nr);
}

/* Every golden case: raw ids, the 77-id encoding and sd-scripts' 3 windows, with pad = EOS
 * (sd1) or pad = "!" (sd2 = 1). Returns the number of prompts checked. */
static int check_cases(const dl_tokenizer *t, const cJSON *root, int sd2, int raw_only)
{
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    cr_assert(cJSON_GetArraySize(cases) > 100);
    int count = 0;
    dl_tok_work shared = {0}; /* reused over every prompt: buffers grow and are reused */
    for (const cJSON *c = cases->child; c; c = c->next, count++) {
        const char *p = cJSON_GetObjectItem(c, "prompt")->valuestring;
        int32_t *ids = NULL;
        int n = -1;
        if (dl_tokenizer_encode(t, p, &ids, &n) != DL_OK)
            cr_assert_fail("encode \"%s\": %s", p, dl_error_msg());
        expect_ids(ids, n, cJSON_GetObjectItem(c, sd2 ? "sd2_ids" : "ids"), p, "ids");
        free(ids);
        if (raw_only) continue;
        int32_t padded[DL_TOK_CONTEXT], win[3 * DL_TOK_CONTEXT];
        cr_assert_eq(dl_tokenizer_encode_padded(t, p, padded), DL_OK);
        expect_ids(padded, DL_TOK_CONTEXT, cJSON_GetObjectItem(c, sd2 ? "sd2_padded" : "padded"),
                   p, "padded");
        cr_assert_eq(dl_tokenizer_encode_windows(t, p, 3, win), DL_OK);
        const cJSON *w = cJSON_GetObjectItem(c, sd2 ? "sd2_win3" : "win3");
        cr_assert_eq(cJSON_GetArraySize(w), 3);
        for (int k = 0; k < 3; k++)
            expect_ids(win + k * DL_TOK_CONTEXT, DL_TOK_CONTEXT, cJSON_GetArrayItem(w, k), p,
                       k == 0 ? "window 0" : k == 1 ? "window 1" : "window 2");
        /* the working-memory variants: same ids with a reused work, and a work reserved for
         * the prompt's length never grows while encoding it */
        int32_t padded_w[DL_TOK_CONTEXT], win_w[3 * DL_TOK_CONTEXT];
        cr_assert_eq(dl_tokenizer_encode_padded_w(t, &shared, p, padded_w), DL_OK);
        cr_assert(memcmp(padded, padded_w, sizeof padded) == 0, "padded_w of \"%s\" differs", p);
        dl_tok_work r = {0};
        cr_assert_eq(dl_tok_work_reserve(&r, strlen(p)), DL_OK);
        dl_tok_work before = r;
        cr_assert_eq(dl_tokenizer_encode_windows_w(t, &r, p, 3, win_w), DL_OK);
        cr_assert(memcmp(win, win_w, sizeof win) == 0, "windows_w of \"%s\" differs", p);
        cr_expect(r.cp == before.cp && r.nf == before.nf && r.low == before.low && r.piece == before.piece &&
                      r.bpe == before.bpe && r.ids == before.ids &&
                      r.ids_cap == before.ids_cap && r.bpe_cap == before.bpe_cap && r.low_cap == before.low_cap,
                  "encoding \"%s\" grew a work reserved for its %zu bytes", p, strlen(p));
        dl_tok_work_free(&r);
    }
    dl_tok_work_free(&shared);
    return count;
}

Test(tokenizer, gz_matches_transformers)
{
    cJSON *root = golden();
    dl_tokenizer *t = load_or_fail(tu_shared_path(BPE_GZ));
    cr_assert_eq(dl_tokenizer_vocab_size(t), 49408);
    cr_assert_eq(dl_tokenizer_bos(t), 49406);
    cr_assert_eq(dl_tokenizer_eos(t), 49407);
    cr_assert_eq(dl_tokenizer_pad(t), 49407);
    cr_assert_str_eq(dl_tokenizer_token(t, 320), "a</w>");
    cr_assert_eq(dl_tokenizer_id(t, "cat</w>"), 2368);
    check_cases(t, root, 0, 0);
    /* SD2's tokenizer: pad "!" (id 0), which only pads ("!" in the text stays ordinary text) */
    cr_assert_eq(dl_tokenizer_set_pad(t, "!"), DL_OK);
    cr_assert_eq(dl_tokenizer_pad(t), 0);
    check_cases(t, root, 1, 0);
    dl_tokenizer_free(t);
    cJSON_Delete(root);
}

Test(tokenizer, folder_roundtrip_and_config, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    cJSON *root = golden();
    dl_tokenizer *gz = load_or_fail(tu_shared_path(BPE_GZ));
    /* a model folder: <dir>/tokenizer/{vocab.json, merges.txt}, written by our writer */
    char sub[600];
    snprintf(sub, sizeof sub, "%s/tokenizer", tu_tmpdir());
    cr_assert_eq(mkdir(sub, 0755), 0);
    if (dl_tokenizer_save(gz, sub) != DL_OK) cr_assert_fail("save: %s", dl_error_msg());
    dl_tokenizer_free(gz);
    dl_tokenizer *t = load_or_fail(tu_tmpdir());           /* the model folder */
    cr_assert_eq(dl_tokenizer_vocab_size(t), 49408);
    cr_assert_eq(dl_tokenizer_pad(t), 49407);
    check_cases(t, root, 0, 0);
    dl_tokenizer_free(t);
    /* SD2 folder: special_tokens_map.json sets pad "!" (overriding tokenizer_config.json) */
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", sub);
    const char *conf = "{\"pad_token\": \"<|endoftext|>\", \"model_max_length\": 77}";
    write_text(cfg, conf, strlen(conf));
    snprintf(cfg, sizeof cfg, "%s/special_tokens_map.json", sub);
    const char *map = "{\"bos_token\": {\"content\": \"<|startoftext|>\", \"lstrip\": false}, "
                      "\"pad_token\": \"!\"}";
    write_text(cfg, map, strlen(map));
    t = load_or_fail(sub);                           /* the tokenizer folder itself */
    cr_assert_eq(dl_tokenizer_pad(t), 0);
    check_cases(t, root, 1, 1);
    dl_tokenizer_free(t);
    snprintf(cfg, sizeof cfg, "%s/vocab.json", sub);
    t = load_or_fail(cfg);                           /* vocab.json named directly */
    cr_assert_eq(dl_tokenizer_pad(t), 0);
    cr_assert_eq(dl_tokenizer_vocab_size(t), 49408);
    dl_tokenizer_free(t);
    cJSON_Delete(root);
}

Test(tokenizer, tiny_vocab_json, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    cJSON *root = golden();
    const cJSON *tiny = cJSON_GetObjectItem(root, "tiny");
    char *vocab = cJSON_PrintUnformatted(cJSON_GetObjectItem(tiny, "vocab"));
    write_text(tu_tmp("vocab.json"), vocab, strlen(vocab));
    free(vocab);
    FILE *f = fopen(tu_tmp("merges.txt"), "wb");
    fputs("#version: 0.2\n", f);
    for (const cJSON *m = cJSON_GetObjectItem(tiny, "merges")->child; m; m = m->next)
        fprintf(f, "%s\n", m->valuestring);
    fclose(f);
    dl_tokenizer *t = load_or_fail(tu_tmpdir());
    for (const cJSON *c = cJSON_GetObjectItem(tiny, "cases")->child; c; c = c->next) {
        const char *p = cJSON_GetObjectItem(c, "prompt")->valuestring;
        int32_t *ids = NULL;
        int n = -1;
        cr_assert_eq(dl_tokenizer_encode(t, p, &ids, &n), DL_OK, "%s", dl_error_msg());
        expect_ids(ids, n, cJSON_GetObjectItem(c, "ids"), p, "tiny ids");
        free(ids);
    }
    dl_tokenizer_free(t);
    cJSON_Delete(root);
}

/* The load fails and the message contains both needles. */
static void expect_load_error(const char *path, const char *needle1, const char *needle2)
{
    dl_tokenizer *t = (dl_tokenizer *)1;
    dl_error_clear();
    cr_assert_eq(dl_tokenizer_load(&t, path), DL_ERR, "loading %s should fail", path);
    cr_assert_null(t);
    const char *msg = dl_error_msg();
    cr_assert(strstr(msg, needle1) && strstr(msg, needle2),
              "message \"%s\" should name \"%s\" and \"%s\"", msg, needle1, needle2);
}

Test(tokenizer, bad_input, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    expect_load_error(tu_tmp("nope"), tu_tmp("nope"), "no such tokenizer");
    /* a folder with vocab.json only */
    const char *vocab = "{\"a\": 0, \"b\": 1, \"ab\": 2, \"<|startoftext|>\": 3, \"<|endoftext|>\": 4}";
    write_text(tu_tmp("vocab.json"), vocab, strlen(vocab));
    expect_load_error(tu_tmpdir(), "merges.txt", tu_tmpdir());
    /* a merge line with three tokens, one naming an unknown token, an unknown result */
    write_text(tu_tmp("merges.txt"), "#version: 0.2\na b c\n", 20);
    expect_load_error(tu_tmpdir(), tu_tmp("merges.txt"), ":2: bad merge line");
    write_text(tu_tmp("merges.txt"), "a b\na q\n", 8);
    expect_load_error(tu_tmpdir(), tu_tmp("merges.txt"), ":2: merge \"a q\": token \"q\"");
    write_text(tu_tmp("merges.txt"), "b a\n", 4);
    expect_load_error(tu_tmpdir(), tu_tmp("merges.txt"), "result \"ba\" is not in the vocabulary");
    /* vocab.json that is not an object, or with a non-integer id, or without the specials */
    write_text(tu_tmp("merges.txt"), "a b\n", 4);
    write_text(tu_tmp("vocab.json"), "[1, 2", 5);
    expect_load_error(tu_tmpdir(), tu_tmp("vocab.json"), "not a JSON object");
    write_text(tu_tmp("vocab.json"), "{\"a\": 0.5}", 10);
    expect_load_error(tu_tmpdir(), tu_tmp("vocab.json"), "not a non-negative integer");
    write_text(tu_tmp("vocab.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}", 26);
    expect_load_error(tu_tmpdir(), tu_tmp("vocab.json"), "<|startoftext|>");
    /* a pad token the vocabulary lacks */
    write_text(tu_tmp("vocab.json"), vocab, strlen(vocab));
    write_text(tu_tmp("special_tokens_map.json"), "{\"pad_token\": \"zz\"}", 19);
    expect_load_error(tu_tmpdir(), tu_tmp("special_tokens_map.json"), "pad_token \"zz\"");
    /* CLIP's .gz cut short: corrupt gzip or too few merges, naming the file */
    FILE *f = fopen(tu_shared_path(BPE_GZ), "rb");
    cr_assert_not_null(f);
    char *buf = malloc(200000);
    size_t n = fread(buf, 1, 200000, f);
    fclose(f);
    cr_assert_eq(n, 200000);
    write_text(tu_tmp("cut.txt.gz"), buf, n);
    expect_load_error(tu_tmp("cut.txt.gz"), tu_tmp("cut.txt.gz"), "truncated or corrupt gzip");
    free(buf);
    write_text(tu_tmp("plain.txt.gz"), "not gzip\n", 9);
    expect_load_error(tu_tmp("plain.txt.gz"), tu_tmp("plain.txt.gz"), "not gzip data");
    write_text(tu_tmp("short.txt"), "header\na b\n", 11);
    expect_load_error(tu_tmp("short.txt"), tu_tmp("short.txt"), "truncated");
}

Test(tokenizer, invalid_utf8_prompt)
{
    dl_tokenizer *t = load_or_fail(tu_shared_path(BPE_GZ));
    static const char *bad[] = {"caf\xc3", "\xff", "a\xc0\xafz", "\xed\xa0\x80", "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = NULL, out[DL_TOK_CONTEXT];
        int n = 0;
        cr_assert_eq(dl_tokenizer_encode(t, bad[i], &ids, &n), DL_ERR, "bad prompt %zu", i);
        cr_assert(strstr(dl_error_msg(), "not valid UTF-8"), "%s", dl_error_msg());
        cr_assert_eq(dl_tokenizer_encode_padded(t, bad[i], out), DL_ERR);
    }
    dl_tokenizer_free(t);
}

Test(tokenizer, count_windows_and_print)
{
    dl_tokenizer *t = load_or_fail(tu_shared_path(BPE_GZ));
    char text[2000] = "";
    for (int i = 0; i < 160; i++) strcat(text, "cat ");   /* 160 tokens */
    int nw = 0, nt = 0;
    cr_assert_eq(dl_tokenizer_count_windows(t, text, 3, &nw, &nt), DL_OK);
    cr_assert_eq(nt, 160);
    cr_assert_eq(nw, 3);
    cr_assert_eq(dl_tokenizer_count_windows(t, text, 2, &nw, NULL), DL_OK);
    cr_assert_eq(nw, 2);
    cr_assert_eq(dl_tokenizer_count_windows(t, "", 3, &nw, &nt), DL_OK);
    cr_assert_eq(nw, 1);
    cr_assert_eq(nt, 0);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    cr_assert_eq(dl_tokenizer_print(t, "a photo of a cat", 3, f), DL_OK);
    fclose(f);
    const char *want = "tokens 5: 320 1125 539 320 2368\nwindow 0: 49406 320 1125 539 320 2368 49407";
    cr_assert(strncmp(out, want, strlen(want)) == 0, "got: %s", out);
    cr_assert_null(strstr(out, "window 1"));
    free(out);
    dl_tokenizer_free(t);
}

typedef struct { const dl_tokenizer *t; const cJSON *root; int bad; } thread_arg;

static void *encode_all(void *p)
{
    thread_arg *a = p;
    for (const cJSON *c = cJSON_GetObjectItem(a->root, "cases")->child; c; c = c->next) {
        int32_t *ids = NULL;
        int n = 0;
        if (dl_tokenizer_encode(a->t, cJSON_GetObjectItem(c, "prompt")->valuestring, &ids, &n)) {
            a->bad++;
            continue;
        }
        const cJSON *ref = cJSON_GetObjectItem(c, "ids");
        int i = 0;
        for (const cJSON *e = ref->child; e; e = e->next, i++)
            if (i >= n || ids[i] != e->valueint) { a->bad++; break; }
        if (i != n) a->bad++;
        free(ids);
    }
    return NULL;
}

/* Two threads encode the corpus at once through the shared BPE cache. */
Test(tokenizer, concurrent_encode)
{
    cJSON *root = golden();
    dl_tokenizer *t = load_or_fail(tu_shared_path(BPE_GZ));
    thread_arg a[2] = {{t, root, 0}, {t, root, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) cr_assert_eq(pthread_create(&th[i], NULL, encode_all, &a[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    cr_assert_eq(a[0].bad + a[1].bad, 0, "%d prompts differ", a[0].bad + a[1].bad);
    dl_tokenizer_free(t);
    cJSON_Delete(root);
}

/* ---- SD 2.x: the pad token "!" only pads (tests/golden/tokenizer_sd2.json) ---- */

static const int32_t red_hair[] = {736, 2225, 748};   /* "red hair!!": "!!</w>" is one token */

/* Every "!" prompt of tokenizer_sd2.json: danlu's raw ids, 77-id encoding (BOS, ids, EOS, pad 0)
 * and sd-scripts' 3 windows equal transformers' (pad assigned, not an added token); raw ids and
 * the 77 ids equal open_clip's too, except on the prompts the generator marks "differs" (open_clip
 * cleans text with ftfy / html.unescape and has its own special literals; danlu follows
 * transformers there). Returns the number of prompts compared with open_clip. */
static int check_sd2_cases(const dl_tokenizer *t, const cJSON *root)
{
    cr_assert_eq(dl_tokenizer_pad(t), 0);
    cr_assert_eq(dl_tokenizer_bos(t), 49406);
    cr_assert_eq(dl_tokenizer_eos(t), 49407);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    cr_assert(cJSON_GetArraySize(cases) >= 60);
    int n_open_clip = 0, n_differ = 0;
    for (const cJSON *c = cases->child; c; c = c->next) {
        const char *p = cJSON_GetObjectItem(c, "prompt")->valuestring;
        int differs = cJSON_GetObjectItem(c, "differs") != NULL;
        int32_t *ids = NULL;
        int n = -1;
        if (dl_tokenizer_encode(t, p, &ids, &n) != DL_OK)
            cr_assert_fail("encode \"%s\": %s", p, dl_error_msg());
        expect_ids(ids, n, cJSON_GetObjectItem(c, "hf_ids"), p, "transformers ids");
        if (!differs) expect_ids(ids, n, cJSON_GetObjectItem(c, "open_clip_ids"), p, "open_clip ids");
        free(ids);
        int eos_at = 1 + (n < DL_TOK_WINDOW ? n : DL_TOK_WINDOW);
        int32_t padded[DL_TOK_CONTEXT], win[3 * DL_TOK_CONTEXT];
        cr_assert_eq(dl_tokenizer_encode_padded(t, p, padded), DL_OK);
        expect_ids(padded, DL_TOK_CONTEXT, cJSON_GetObjectItem(c, "hf_padded"), p,
                   "transformers padded");
        if (!differs)
            expect_ids(padded, DL_TOK_CONTEXT, cJSON_GetObjectItem(c, "open_clip_padded"), p,
                       "open_clip padded");
        /* the padding itself: EOS after the (truncated) ids, then only pad ids (0) */
        cr_assert_eq(padded[eos_at], 49407, "padded \"%s\": no EOS at %d", p, eos_at);
        for (int i = eos_at + 1; i < DL_TOK_CONTEXT; i++)
            cr_assert_eq(padded[i], 0, "padded \"%s\": id[%d] = %d after EOS, want pad 0", p, i,
                         (int)padded[i]);
        cr_assert_eq(dl_tokenizer_encode_windows(t, p, 3, win), DL_OK);
        const cJSON *w = cJSON_GetObjectItem(c, "hf_win3");
        cr_assert_eq(cJSON_GetArraySize(w), 3);
        for (int k = 0; k < 3; k++)
            expect_ids(win + k * DL_TOK_CONTEXT, DL_TOK_CONTEXT, cJSON_GetArrayItem(w, k), p,
                       k == 0 ? "window 0" : k == 1 ? "window 1" : "window 2");
        n_open_clip += !differs;
        n_differ += differs;
    }
    cr_assert(n_differ > 0 && n_open_clip >= 60, "%d / %d", n_open_clip, n_differ);
    return n_open_clip;
}

/* The prompt, spelled out: "red hair!!" -> 736 2225 748, padded with 0 after EOS. */
static void check_red_hair(const dl_tokenizer *t)
{
    int32_t *ids = NULL;
    int n = -1;
    cr_assert_eq(dl_tokenizer_encode(t, "red hair!!", &ids, &n), DL_OK);
    cr_assert_eq(n, 3);
    cr_assert(memcmp(ids, red_hair, sizeof red_hair) == 0, "red hair!! -> %d %d %d", (int)ids[0],
              (int)ids[1], (int)ids[2]);
    free(ids);
    int32_t padded[DL_TOK_CONTEXT];
    cr_assert_eq(dl_tokenizer_encode_padded(t, "red hair!!", padded), DL_OK);
    cr_assert_eq(padded[0], 49406);
    cr_assert(memcmp(padded + 1, red_hair, sizeof red_hair) == 0);
    cr_assert_eq(padded[4], 49407);
    for (int i = 5; i < DL_TOK_CONTEXT; i++) cr_assert_eq(padded[i], 0);
}

/* CLIP's .gz with the pad set to "!" by dl_tokenizer_set_pad. */
Test(tokenizer, sd2_pad_only_pads_gz)
{
    cJSON *root = golden_file("tests/golden/tokenizer_sd2.json");
    dl_tokenizer *t = load_or_fail(tu_shared_path(BPE_GZ));
    cr_assert_eq(dl_tokenizer_set_pad(t, "!"), DL_OK);
    check_red_hair(t);
    check_sd2_cases(t, root);
    dl_tokenizer_free(t);
    cJSON_Delete(root);
}

/* An SD 2.x tokenizer folder (the generator's tokenizer_config.json + special_tokens_map.json,
 * pad "!", beside our vocab.json + merges.txt): the pad comes from the folder, and neither "!"
 * nor the unk token is cut out of the text; `danlu tokenize` prints the single "!!" token. */
Test(tokenizer, sd2_pad_only_pads_folder, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    cJSON *root = golden_file("tests/golden/tokenizer_sd2.json");
    dl_tokenizer *gz = load_or_fail(tu_shared_path(BPE_GZ));
    if (dl_tokenizer_save(gz, tu_tmpdir()) != DL_OK) cr_assert_fail("save: %s", dl_error_msg());
    dl_tokenizer_free(gz);
    const cJSON *folder = cJSON_GetObjectItem(root, "folder");
    cr_assert_not_null(folder);
    for (const cJSON *e = folder->child; e; e = e->next) {
        char *json = cJSON_PrintUnformatted(e);
        write_text(tu_tmp(e->string), json, strlen(json));
        free(json);
    }
    dl_tokenizer *t = load_or_fail(tu_tmpdir());
    check_red_hair(t);
    check_sd2_cases(t, root);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    cr_assert_eq(dl_tokenizer_print(t, "red hair!!", 1, f), DL_OK);
    fclose(f);
    const char *want = "tokens 3: 736 2225 748\nwindow 0: 49406 736 2225 748 49407 0 0 ";
    cr_assert(strncmp(out, want, strlen(want)) == 0, "got: %s", out);
    free(out);
    dl_tokenizer_free(t);
    /* unk set to "!" too: still only a stand-in for unknown bytes, never cut out of the text */
    const char *map = "{\"pad_token\": \"!\", \"unk_token\": {\"content\": \"!\"}}";
    write_text(tu_tmp("special_tokens_map.json"), map, strlen(map));
    t = load_or_fail(tu_tmpdir());
    check_red_hair(t);
    dl_tokenizer_free(t);
    cJSON_Delete(root);
}
