/* test_addnet_hash.c - sd-scripts' sshs_model_hash / sshs_legacy_hash: danlu's values against
 * Python's (safetensors.torch.save + sd-scripts' hash functions) for small, straddling and
 * partial legacy windows, UTF-8 / escaped metadata and no ss_* keys; and the kohya writer putting
 * the same hashes in the files it saves. Golden data: tests/gen/gen_addnet_hash.py. */
#include "testutil.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/sha256.h"
#include "lora/addnet_hash.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"
#include "model/checkpoint.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(addnet_hash, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

/* One golden case: entries, metadata pairs and the expected hashes. */
typedef struct gcase {
    cJSON *spec;
    int n;
    dl_st_entry e[300];
    char names[300][200];
    void *owned[300];
    const char *meta[64];
    int n_meta;
} gcase;

static dl_dtype dtype_of(const char *s)
{
    if (!strcmp(s, "F16")) return DL_F16;
    if (!strcmp(s, "BF16")) return DL_BF16;
    if (!strcmp(s, "F32")) return DL_F32;
    if (!strcmp(s, "F64")) return DL_F64;
    cr_assert_fail("unknown dtype %s", s);
    return DL_F32;
}

static void case_open(gcase *c, const dl_st_file *g, const char *name)
{
    memset(c, 0, sizeof *c);
    char key[128];
    snprintf(key, sizeof key, "%s.spec", name);
    const char *js = dl_st_meta(g, key);
    cr_assert_not_null(js, "golden has no %s", key);
    c->spec = cJSON_Parse(js);
    cr_assert_not_null(c->spec);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, cJSON_GetObjectItem(c->spec, "meta")) {
        cr_assert_lt(c->n_meta, 32);
        c->meta[2 * c->n_meta] = cJSON_GetArrayItem(kv, 0)->valuestring;
        c->meta[2 * c->n_meta + 1] = cJSON_GetArrayItem(kv, 1)->valuestring;
        c->n_meta++;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(c->spec, "tensors")) { /* stored in their own dtype */
        char full[256];
        snprintf(full, sizeof full, "%s.t.%s", name, t->valuestring);
        const dl_st_tensor *s = dl_st_find(g, full);
        cr_assert_not_null(s, "golden has no %s", full);
        dl_st_entry *e = &c->e[c->n];
        snprintf(c->names[c->n], sizeof c->names[0], "%s", t->valuestring);
        e->name = c->names[c->n];
        e->dtype = s->dtype;
        e->ndim = s->ndim;
        memcpy(e->shape, s->shape, sizeof e->shape);
        e->data = s->data;
        c->n++;
    }
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(c->spec, "formula")) { /* v = ((7i + 13k) % 256 - 128) / 16 */
        dl_st_entry *e = &c->e[c->n];
        snprintf(c->names[c->n], sizeof c->names[0], "%s", cJSON_GetArrayItem(t, 0)->valuestring);
        e->name = c->names[c->n];
        e->dtype = dtype_of(cJSON_GetArrayItem(t, 1)->valuestring);
        const cJSON *sh = cJSON_GetArrayItem(t, 2), *d;
        int64_t numel = 1;
        cJSON_ArrayForEach(d, sh) {
            e->shape[e->ndim++] = (int64_t)d->valuedouble;
            numel *= (int64_t)d->valuedouble;
        }
        float *v = malloc((size_t)numel * sizeof *v);
        void *buf = malloc((size_t)numel * dl_dtype_size(e->dtype));
        cr_assert(v && buf);
        for (int64_t i = 0; i < numel; i++) v[i] = (float)((7 * i + 13 * c->n) % 256 - 128) / 16.0f;
        cr_assert_eq(dl_convert_from_f32(buf, e->dtype, v, (size_t)numel), 0);
        free(v);
        e->data = buf;
        c->owned[c->n] = buf;
        c->n++;
    }
}

static void case_close(gcase *c)
{
    for (int i = 0; i < c->n; i++) free(c->owned[i]);
    cJSON_Delete(c->spec);
}

static const char *spec_str(const gcase *c, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(c->spec, k);
    cr_assert(cJSON_IsString(v), "spec has no %s", k);
    return v->valuestring;
}

static void check_case(const char *name)
{
    dl_st_file g;
    tu_golden_open(&g, "addnet_hash");
    gcase *c = malloc(sizeof *c);
    cr_assert_not_null(c);
    case_open(c, &g, name);
    size_t hlen = 0;
    char *hdr = dl_addnet_header(c->e, c->n, c->meta, c->n_meta, &hlen, NULL);
    cr_assert_not_null(hdr);
    cr_expect_eq((double)hlen, cJSON_GetObjectItem(c->spec, "header_len")->valuedouble,
                 "%s: header of %zu bytes, Python's safetensors writes %.0f", name, hlen,
                 cJSON_GetObjectItem(c->spec, "header_len")->valuedouble);
    char exp_hdr[64];
    snprintf(exp_hdr, sizeof exp_hdr, "%s.header", name);
    const char *py = dl_st_meta(&g, exp_hdr);
    if (py) cr_expect_str_eq(hdr, py, "%s: header bytes differ from Python's:\n%s\n%s", name, hdr, py);
    free(hdr);
    char mh[65], lh[9];
    cr_assert_eq(dl_addnet_hashes(c->e, c->n, c->meta, c->n_meta, mh, lh), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(mh, spec_str(c, "model_hash"), "%s: sshs_model_hash %s, sd-scripts %s", name, mh,
                     spec_str(c, "model_hash"));
    cr_expect_str_eq(lh, spec_str(c, "legacy_hash"), "%s: sshs_legacy_hash %s, sd-scripts %s", name, lh,
                     spec_str(c, "legacy_hash"));
    cr_log_info("%s: %d tensors, image %.0f bytes: %s %s (sd-scripts' values)", name, c->n,
                cJSON_GetObjectItem(c->spec, "image_len")->valuedouble, mh, lh);
    case_close(c);
    free(c);
    dl_st_close(&g);
}

Test(addnet_hash, small_mixed_dtypes_escaped_metadata) { check_case("small"); }
Test(addnet_hash, one_key_header_bytes) { check_case("one_key"); }
Test(addnet_hash, no_ss_keys) { check_case("no_ss"); }
Test(addnet_hash, legacy_window_in_data) { check_case("straddle"); }
Test(addnet_hash, legacy_window_past_end) { check_case("partial"); }

/* Hashes recomputed from a written file: its tensors (raw bytes) and its metadata. */
static void recompute_from_file(const char *path, char mh[65], char lh[9])
{
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, path), DL_OK, "%s", dl_error_msg());
    dl_st_entry *e = calloc((size_t)f.n_tensors, sizeof *e);
    const char **meta = calloc((size_t)f.n_meta * 2 + 1, sizeof *meta);
    cr_assert(e && meta);
    for (int i = 0; i < f.n_tensors; i++) {
        const dl_st_tensor *t = &f.tensors[i];
        e[i] = (dl_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
    }
    for (int i = 0; i < f.n_meta; i++) {
        meta[2 * i] = f.meta_keys[i];
        meta[2 * i + 1] = f.meta_vals[i];
    }
    cr_assert_eq(dl_addnet_hashes(e, f.n_tensors, meta, f.n_meta, mh, lh), DL_OK, "%s", dl_error_msg());
    free(meta);
    free(e);
    dl_st_close(&f);
}

/* The kohya writer, fp16, on the network of lora_net_kohya.safetensors: the hashes sd-scripts
 * computes for the same tensors and ss_* keys, and the same as recomputed from the file. */
Test(addnet_hash, kohya_writer_matches_sd_scripts)
{
    dl_st_file g;
    tu_golden_open(&g, "addnet_hash");
    gcase *c = malloc(sizeof *c);
    cr_assert_not_null(c);
    case_open(c, &g, "kohya_file");
    dl_checkpoint ck;
    cr_assert_eq(dl_ckpt_open(&ck, tu_path("tests/golden/tiny_sd15"), NULL), DL_OK, "%s", dl_error_msg());
    dl_lora_net net;
    cr_assert_eq(dl_lora_load(tu_path("tests/golden/lora_net_kohya.safetensors"), &ck.cfg, 1.0f, &net, NULL), DL_OK,
                 "%s", dl_error_msg());
    const char *p = tu_tmp("k16.safetensors");
    cr_assert_eq(dl_lora_save(p, &net, DL_LORA_FMT_KOHYA, DL_F16, c->meta, c->n_meta), DL_OK, "%s", dl_error_msg());
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, p), DL_OK, "%s", dl_error_msg());
    const char *mh = dl_st_meta(&f, "sshs_model_hash"), *lh = dl_st_meta(&f, "sshs_legacy_hash");
    cr_assert(mh && lh, "%s: no sshs_model_hash / sshs_legacy_hash", p);
    cr_expect_str_eq(mh, spec_str(c, "model_hash"), "written sshs_model_hash %s, sd-scripts %s", mh,
                     spec_str(c, "model_hash"));
    cr_expect_str_eq(lh, spec_str(c, "legacy_hash"), "written sshs_legacy_hash %s, sd-scripts %s", lh,
                     spec_str(c, "legacy_hash"));
    cr_expect_str_eq(dl_st_meta(&f, "modelspec.architecture"), "stable-diffusion-v1/lora");
    cr_expect_eq(f.n_tensors, (int)cJSON_GetObjectItem(c->spec, "n_tensors")->valuedouble, "tensors written");
    char rmh[65], rlh[9];
    recompute_from_file(p, rmh, rlh);
    cr_expect_str_eq(rmh, mh);
    cr_expect_str_eq(rlh, lh);
    cr_log_info("kohya fp16 file: %d tensors, sshs %s %s", f.n_tensors, mh, lh);
    dl_st_close(&f);
    dl_lora_net_free(&net);
    dl_ckpt_close(&ck);
    case_close(c);
    free(c);
    dl_st_close(&g);
}

/* A file large enough that the legacy window lies in the tensor data (fp32, one 1024x1024 module
 * of rank 160: 1.3 MB); a stale sshs key from the caller is replaced; no hashes without ss_* keys
 * or in the PEFT layout. */
Test(addnet_hash, kohya_writer_large_and_rules)
{
    dl_lora_module m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "down_blocks.0.attentions.0.proj_in");
    snprintf(m.kohya, sizeof m.kohya, "lora_unet_down_blocks_0_attentions_0_proj_in");
    m.part = DL_LORA_UNET;
    m.k = 1;
    m.in = m.out = 1024;
    m.alpha = 8.0f;
    m.lora.r = 160;
    dl_lora_net net;
    cr_assert_eq(dl_lora_net_from_modules(&net, &m, 1, 1.0f), DL_OK, "%s", dl_error_msg());
    tu_fill_uniform(net.params, (size_t)net.n_params, 5, -1.0f, 1.0f);
    const char *meta[] = {"sshs_model_hash", "stale", "ss_network_dim", "160", "modelspec.title", "big"};
    const char *p = tu_tmp("big.safetensors");
    cr_assert_eq(dl_lora_save(p, &net, DL_LORA_FMT_KOHYA, DL_F32, meta, 3), DL_OK, "%s", dl_error_msg());
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, p), DL_OK, "%s", dl_error_msg());
    cr_assert_gt(f.size, 0x110000);
    const char *mh = dl_st_meta(&f, "sshs_model_hash"), *lh = dl_st_meta(&f, "sshs_legacy_hash");
    cr_assert(mh && lh);
    cr_expect_neq(strcmp(mh, "stale"), 0, "the caller's stale sshs_model_hash was kept");
    int n_mh = 0;
    for (int i = 0; i < f.n_meta; i++) n_mh += strcmp(f.meta_keys[i], "sshs_model_hash") == 0;
    cr_expect_eq(n_mh, 1);
    char rmh[65], rlh[9];
    recompute_from_file(p, rmh, rlh);
    cr_expect_str_eq(rmh, mh);
    cr_expect_str_eq(rlh, lh);
    cr_expect_str_neq(lh, "e3b0c442", "legacy hash of no bytes on a 1.3 MB file");
    dl_st_close(&f);

    const char *p2 = tu_tmp("no_ss.safetensors"), *p3 = tu_tmp("peft.safetensors");
    cr_assert_eq(dl_lora_save(p2, &net, DL_LORA_FMT_KOHYA, DL_F32, meta + 4, 1), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_lora_save(p3, &net, DL_LORA_FMT_PEFT, DL_F32, meta + 2, 1), DL_OK, "%s", dl_error_msg());
    const char *ps[2] = {p2, p3};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(dl_st_open(&f, ps[i]), DL_OK, "%s", dl_error_msg());
        cr_expect_null(dl_st_meta(&f, "sshs_model_hash"), "%s has sshs_model_hash", ps[i]);
        cr_expect_null(dl_st_meta(&f, "sshs_legacy_hash"));
        dl_st_close(&f);
    }
    dl_lora_net_free(&net);
}

/* A dtype safetensors' Python side never sees in a LoRA is still ordered, and a bad dtype is
 * an error naming the tensor. */
Test(addnet_hash, bad_dtype_names_tensor)
{
    float x = 1.0f;
    dl_st_entry e = {.name = "odd.weight", .dtype = (dl_dtype)999, .ndim = 1, .shape = {1}, .data = &x};
    char mh[65], lh[9];
    cr_assert_eq(dl_addnet_hashes(&e, 1, NULL, 0, mh, lh), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "odd.weight") != NULL, "%s", dl_error_msg());
}

/* sd-scripts' base-model hashes (ss_sd_model_hash: A1111's legacy 8 hex of SHA-256 over 64 KiB at
 * 1 MiB; ss_new_sd_model_hash: SHA-256 of the file), against hashlib on a committed file; a
 * window past the end hashes nothing, as Python's read() returns b"". */
Test(addnet_hash, base_model_hashes)
{
    const char *path = tu_path("tests/golden/tiny_sd15.safetensors");
    char hex[65];
    cr_assert_eq(dl_sha256_range(path, 0x100000, 0x10000, hex), DL_OK, "%s", dl_error_msg());
    cr_expect(strncmp(hex, "8d9377d5", 8) == 0, "legacy hash %.8s", hex);
    cr_assert_eq(dl_sha256_file(path, 0, hex), DL_OK, "%s", dl_error_msg());
    cr_expect_str_eq(hex, "d5028c8d0eec208b6a24e93e4c56721983a12a4dbf3c2c83978c69577318428f");
    cr_assert_eq(dl_sha256_range(path, 0x300000, 0x10000, hex), DL_OK, "%s", dl_error_msg());
    cr_expect(strncmp(hex, "e3b0c442", 8) == 0, "past the end: %.8s", hex);
    cr_expect_eq(dl_sha256_range(tu_path("tests/golden/no-such-file"), 0, 1, hex), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "no-such-file") != NULL, "%s", dl_error_msg());
}
