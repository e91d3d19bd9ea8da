/* test_convert.c - danlu convert: single file <-> diffusers folder round trips keep every tensor's
 * bytes, dtype conversion rounds as dl_convert does, kohya <-> PEFT LoRA keys round-trip, bad
 * input is refused with nothing written. */
#include "cli/commands.h"
#include "lora/ckpt_tools.h"
#include "lora/lora_file.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <string.h>
#include <sys/stat.h>

/* Every tensor of a equals the tensor of the same name in b, byte for byte; returns the count
 * (b may hold more: buffers such as position_ids that are no weight). */
static int same_tensors(const char *pa, const char *pb)
{
    dl_st_file a, b;
    cr_assert_eq(dl_st_open(&a, pa), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&b, pb), DL_OK, "%s", dl_error_msg());
    cr_expect_leq(a.n_tensors, b.n_tensors, "%s vs %s", pa, pb);
    for (int i = 0; i < a.n_tensors; i++) {
        const dl_st_tensor *x = &a.tensors[i], *y = dl_st_find(&b, x->name);
        if (!y) { /* a transformers >= 5 text encoder has no "text_model." prefix; danlu writes it */
            char alt[300];
            snprintf(alt, sizeof alt, "text_model.%s", x->name);
            y = dl_st_find(&b, alt);
        }
        cr_assert_not_null(y, "%s: %s missing", pb, x->name);
        cr_expect_eq(x->dtype, y->dtype, "%s", x->name);
        cr_expect_eq(x->ndim, y->ndim, "%s", x->name);
        cr_expect_eq(x->end - x->begin, y->end - y->begin, "%s", x->name);
        cr_expect(memcmp(x->data, y->data, x->end - x->begin) == 0, "%s: values differ", x->name);
    }
    int n = a.n_tensors;
    dl_st_close(&a);
    dl_st_close(&b);
    return n;
}

static const char *k_files[3] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                 "text_encoder/model.safetensors"};

Test(convert, layouts_round_trip_byte_for_byte, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    const char *src = tu_path("tests/golden/tiny_sd15");
    char s1[4096], d1[4096];
    snprintf(s1, sizeof s1, "%s", tu_tmp("s.safetensors"));
    snprintf(d1, sizeof d1, "%s", tu_tmp("d"));
    cr_assert_eq(dl_ckpt_convert(src, s1, DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(s1, d1, DL_LAYOUT_DIFFUSERS, -1, NULL), DL_OK, "%s", dl_error_msg());
    for (int p = 0; p < 3; p++) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/%s", src, k_files[p]);
        snprintf(b, sizeof b, "%s/%s", d1, k_files[p]);
        cr_expect_gt(same_tensors(a, b), 10, "%s", k_files[p]);
    }
    /* and the other way: a single file -> diffusers -> single file keeps every weight's bytes */
    char d2[4096], s2[4096];
    snprintf(d2, sizeof d2, "%s", tu_tmp("d2"));
    snprintf(s2, sizeof s2, "%s", tu_tmp("s2.safetensors"));
    cr_assert_eq(dl_ckpt_convert(tu_path("tests/golden/tiny_sd15.safetensors"), d2, DL_LAYOUT_DIFFUSERS, -1, NULL), DL_OK,
                 "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(d2, s2, DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s", dl_error_msg());
    cr_expect_gt(same_tensors(s2, tu_path("tests/golden/tiny_sd15.safetensors")), 100);
    dl_checkpoint a, b;
    cr_assert_eq(dl_ckpt_open(&a, tu_path("tests/golden/tiny_sd15.safetensors"), NULL), DL_OK);
    cr_assert_eq(dl_ckpt_open(&b, d2, NULL), DL_OK, "%s", dl_error_msg());
    cr_expect_null(dl_unet_config_diff(&a.cfg.unet, &b.cfg.unet));
    cr_expect_null(dl_clip_config_diff(&a.cfg.text, &b.cfg.text));
    dl_ckpt_close(&a);
    dl_ckpt_close(&b);
    /* an existing folder is not overwritten */
    cr_expect_eq(dl_ckpt_convert(s1, d1, DL_LAYOUT_DIFFUSERS, -1, NULL), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "already exists"), "%s", dl_error_msg());
}

Test(convert, dtypes, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    char h[4096], f[4096];
    snprintf(h, sizeof h, "%s", tu_tmp("h.safetensors"));
    snprintf(f, sizeof f, "%s", tu_tmp("f.safetensors"));
    const char *src = tu_path("tests/golden/tiny_sd15.safetensors");
    cr_assert_eq(dl_ckpt_convert(src, h, -1, DL_F16, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(h, f, -1, DL_F32, NULL), DL_OK, "%s", dl_error_msg());
    dl_st_file a, b, c;
    cr_assert_eq(dl_st_open(&a, src), DL_OK);
    cr_assert_eq(dl_st_open(&b, h), DL_OK);
    cr_assert_eq(dl_st_open(&c, f), DL_OK);
    for (int i = 0; i < a.n_tensors; i++) {
        const dl_st_tensor *x = &a.tensors[i], *y = dl_st_find(&b, x->name), *z = dl_st_find(&c, x->name);
        cr_assert(y && z);
        if (x->dtype != DL_F32 && x->dtype != DL_F16) continue;
        cr_expect_eq(y->dtype, DL_F16, "%s", x->name);
        const int64_t n = dl_st_numel(x);
        float *fx = malloc((size_t)n * 4), *fz = malloc((size_t)n * 4);
        uint16_t *hx = malloc((size_t)n * 2);
        dl_st_read_f32(&a, x, fx);
        dl_st_read_f32(&c, z, fz);
        dl_convert_from_f32(hx, DL_F16, fx, (size_t)n);
        cr_expect(memcmp(hx, y->data, (size_t)n * 2) == 0, "%s: fp16 differs from round-to-nearest", x->name);
        for (int64_t j = 0; j < n; j++) cr_assert_eq(fz[j], dl_f16_to_f32(hx[j]), "%s[%lld]", x->name, (long long)j);
        free(fx), free(fz), free(hx);
    }
    dl_st_close(&a), dl_st_close(&b), dl_st_close(&c);
}

Test(convert, lora_kohya_peft_round_trip, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    /* alpha / r is a power of two in every module of this file: the round trip is bit-exact */
    const char *in = tu_path("tests/golden/lora_tools_in.safetensors");
    char p[4096], k[4096];
    snprintf(p, sizeof p, "%s", tu_tmp("p.safetensors"));
    snprintf(k, sizeof k, "%s", tu_tmp("k.safetensors"));
    FILE *devnull = fopen("/dev/null", "w");
    char *a1[] = {"convert", (char *)in, "--layout", "peft", "--out", p, NULL};
    cr_assert_eq(dl_cmd_convert(6, a1, devnull), 0, "%s", dl_error_msg());
    dl_lora_file lf;
    cr_assert_eq(dl_lf_read(&lf, p), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(lf.peft, 1);
    cr_expect_not_null(dl_lf_find(&lf, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"));
    dl_lf_free(&lf);
    char *a2[] = {"convert", p, "--layout", "kohya", "--out", k, NULL};
    cr_assert_eq(dl_cmd_convert(6, a2, devnull), 0, "%s", dl_error_msg());
    cr_expect_eq(same_tensors(in, k), 12);
    /* a LoRA layout for a checkpoint, and a corrupt input: refused, nothing written */
    char *a3[] = {"convert", (char *)tu_path("tests/golden/tiny_sd15"), "--layout", "peft", "--out", (char *)tu_tmp("x"), NULL};
    cr_expect_eq(dl_cmd_convert(6, a3, devnull), 2);
    FILE *f = fopen(tu_tmp("bad.safetensors"), "wb");
    fwrite("\x08\0\0\0\0\0\0\0{\"x\":1}", 1, 15, f);
    fclose(f);
    char *a4[] = {"convert", (char *)tu_tmp("bad.safetensors"), "--out", (char *)tu_tmp("y.safetensors"), NULL};
    cr_expect_eq(dl_cmd_convert(4, a4, devnull), 1);
    struct stat st;
    cr_expect_neq(stat(tu_tmp("x"), &st), 0);
    cr_expect_neq(stat(tu_tmp("y.safetensors"), &st), 0);
    fclose(devnull);
}
