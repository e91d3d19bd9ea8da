/* test_sdxl_tools.c - danlu convert and danlu lora on SDXL: checkpoint layouts round-trip byte for
 * byte (both text encoders; the second's fused in_proj and transposed text_projection), a folder
 * converted to a single file equals the SGM file gen_sdxl_pipe.py wrote with its own map, LoRA
 * key layouts (diffusers' PEFT file -> sd-scripts' kohya names gives the generator's kohya file
 * byte for byte), a LoRA baked into the checkpoint samples as diffusers' load_lora_weights, and
 * extraction from the baked checkpoint gives the LoRA back. Golden data: tests/gen/gen_sdxl_pipe.py,
 * tests/gen/gen_sdxl_lora.py. */
#include "cli/commands.h"
#include "core/error.h"
#include "lora/ckpt_tools.h"
#include "lora/lora_file.h"
#include "lora/lora_io.h"
#include "lora/lora_tools.h"
#include "sample/pipeline.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FOLDER "tests/golden/tiny_sdxl_pipe"
#define LORAS "tests/golden/tiny_sdxl_loras"

static const dl_ckpt_options k_xl = {.prediction = -1, .allow_sdxl = 1};

/* Every tensor of a is in b with the same dtype, shape and bytes; returns the count. */
static int same_tensors(const char *pa, const char *pb)
{
    dl_st_file a, b;
    cr_assert_eq(dl_st_open(&a, pa), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_open(&b, pb), DL_OK, "%s", dl_error_msg());
    for (int i = 0; i < a.n_tensors; i++) {
        const dl_st_tensor *x = &a.tensors[i], *y = dl_st_find(&b, x->name);
        if (!y) {
            char alt[300];
            snprintf(alt, sizeof alt, "text_model.%s", x->name);
            y = dl_st_find(&b, alt);
        }
        cr_assert_not_null(y, "%s: %s missing", pb, x->name);
        cr_expect_eq(x->dtype, y->dtype, "%s", x->name);
        cr_expect_eq(x->ndim, y->ndim, "%s", x->name);
        for (int d = 0; d < x->ndim; d++) cr_expect_eq(x->shape[d], y->shape[d], "%s dim %d", x->name, d);
        cr_expect_eq(x->end - x->begin, y->end - y->begin, "%s", x->name);
        cr_expect(memcmp(x->data, y->data, x->end - x->begin) == 0, "%s: values differ", x->name);
    }
    int n = a.n_tensors;
    dl_st_close(&a);
    dl_st_close(&b);
    return n;
}

static const char *k_files[4] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                 "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"};

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

/* The tiny SDXL folder as a single file is the SGM file gen_sdxl_pipe.py wrote (its own map,
 * checked against diffusers' single-file converters), every tensor byte for byte. */
Test(sdxl_tools, folder_to_single_file_equals_the_sgm_file, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    cr_assert_eq(dl_ckpt_convert(tu_path(FOLDER), tu_tmp("s.safetensors"), DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s",
                 dl_error_msg());
    cr_expect_eq(same_tensors(tu_tmp("s.safetensors"), tu_path("tests/golden/tiny_sdxl_pipe.safetensors")), 815);
    cr_expect_eq(same_tensors(tu_path("tests/golden/tiny_sdxl_pipe.safetensors"), tu_tmp("s.safetensors")), 815);
}

/* tiny-sdxl (whose single file is detected back): single -> diffusers -> single and diffusers ->
 * single -> diffusers keep every weight's bytes; the folder gets SDXL's config files. */
Test(sdxl_tools, layouts_round_trip_byte_for_byte, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 120)
{
    const char *tool = mkcheckpoint_tool();
    if (!tool) cr_skip_test("danlu-mkcheckpoint not built");
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "'%s' -o '%s' --preset tiny-sdxl --layout single --dtype bf16 > /dev/null && "
                              "'%s' -o '%s' --preset tiny-sdxl --layout diffusers --dtype fp16 > /dev/null",
             tool, tu_tmp("m.safetensors"), tool, tu_tmp("md"));
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    cr_assert_eq(dl_ckpt_convert(tu_tmp("m.safetensors"), tu_tmp("d"), DL_LAYOUT_DIFFUSERS, -1, NULL), DL_OK, "%s",
                 dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(tu_tmp("d"), tu_tmp("s.safetensors"), DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s",
                 dl_error_msg());
    cr_expect_gt(same_tensors(tu_tmp("m.safetensors"), tu_tmp("s.safetensors")), 500);
    cr_assert_eq(dl_ckpt_convert(tu_tmp("md"), tu_tmp("ms.safetensors"), DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s",
                 dl_error_msg());
    cr_assert_eq(dl_ckpt_convert(tu_tmp("ms.safetensors"), tu_tmp("md2"), DL_LAYOUT_DIFFUSERS, -1, NULL), DL_OK, "%s",
                 dl_error_msg());
    for (int p = 0; p < 4; p++) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/%s", tu_tmp("md"), k_files[p]);
        snprintf(b, sizeof b, "%s/%s", tu_tmp("md2"), k_files[p]);
        cr_expect_gt(same_tensors(a, b), 10, "%s", k_files[p]);
    }
    dl_checkpoint x, y;
    cr_assert_eq(dl_ckpt_open(&x, tu_tmp("m.safetensors"), &k_xl), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_open(&y, tu_tmp("d"), &k_xl), DL_OK, "%s", dl_error_msg());
    cr_expect(y.sdxl && y.layout == DL_LAYOUT_DIFFUSERS);
    cr_expect_null(dl_unet_config_diff(&x.cfg.unet, &y.cfg.unet));
    cr_expect_null(dl_clip_config_diff(&x.cfg.text, &y.cfg.text));
    cr_expect_null(dl_clip_config_diff(&x.cfg.text2, &y.cfg.text2));
    dl_ckpt_close(&x);
    dl_ckpt_close(&y);
    /* dtype: bf16 -> fp32 -> bf16 gives the bytes back */
    cr_assert_eq(dl_ckpt_convert(tu_tmp("m.safetensors"), tu_tmp("f.safetensors"), -1, DL_F32, NULL), DL_OK);
    cr_assert_eq(dl_ckpt_convert(tu_tmp("f.safetensors"), tu_tmp("b.safetensors"), -1, DL_BF16, NULL), DL_OK);
    cr_expect_gt(same_tensors(tu_tmp("m.safetensors"), tu_tmp("b.safetensors")), 500);
}

static int convert_cli(char **argv)
{
    int argc = 0;
    while (argv[argc]) argc++;
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_convert(argc, argv, devnull);
    fclose(devnull);
    return rc;
}

/* LoRA key layouts on SDXL: diffusers' PEFT file (alphas in its metadata) -> kohya is the
 * generator's sd-scripts-named file byte for byte; kohya -> PEFT -> kohya keeps every down, alpha
 * and (alpha / r a power of two) up; the diffusers-path kohya file converts too; without --model
 * the names of SDXL base are used. */
Test(sdxl_tools, lora_layouts, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    char *a1[] = {"convert", (char *)tu_path(LORAS "/peft.safetensors"), "--layout", "kohya", "--model",
                  (char *)tu_path(FOLDER), "--out", (char *)tu_tmp("k.safetensors"), NULL};
    cr_assert_eq(convert_cli(a1), 0, "%s", dl_error_msg());
    cr_expect_eq(same_tensors(tu_path(LORAS "/kohya.safetensors"), tu_tmp("k.safetensors")), 861);
    char *a2[] = {"convert", (char *)tu_path(LORAS "/kohya.safetensors"), "--layout", "peft", "--out",
                  (char *)tu_tmp("p.safetensors"), NULL}; /* no --model: SDXL base's names */
    cr_assert_eq(convert_cli(a2), 0, "%s", dl_error_msg());
    dl_lora_file lf;
    cr_assert_eq(dl_lf_read(&lf, tu_tmp("p.safetensors")), DL_OK, "%s", dl_error_msg());
    cr_expect(lf.peft && lf.n == 287);
    cr_expect_not_null(dl_lf_find(&lf, "text_encoder_2.text_model.encoder.layers.2.mlp.fc2"));
    cr_expect_not_null(dl_lf_find(&lf, "unet.down_blocks.0.downsamplers.0.conv"));
    dl_lf_free(&lf);
    char *a3[] = {"convert", (char *)tu_tmp("p.safetensors"), "--layout", "kohya", "--model", (char *)tu_path(FOLDER),
                  "--out", (char *)tu_tmp("k2.safetensors"), NULL};
    cr_assert_eq(convert_cli(a3), 0, "%s", dl_error_msg());
    dl_lora_file a, b;
    cr_assert_eq(dl_lf_read(&a, tu_path(LORAS "/kohya.safetensors")), DL_OK);
    cr_assert_eq(dl_lf_read(&b, tu_tmp("k2.safetensors")), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(a.n, b.n);
    for (int i = 0; i < a.n; i++) {
        const dl_lf_module *x = &a.m[i], *y = dl_lf_find(&b, x->stem);
        cr_assert_not_null(y, "%s", x->stem);
        cr_expect(x->r == y->r && x->alpha == y->alpha, "%s", x->stem);
        cr_expect(!memcmp(x->down, y->down, sizeof(float) * (size_t)x->r * x->in * x->kh * x->kw), "%s", x->stem);
        const float q = x->alpha / (float)x->r;
        const int pow2 = q == ldexpf(1.0f, ilogbf(q));
        for (int j = 0; j < x->out * x->r; j++) {
            const float d = fabsf(x->up[j] - y->up[j]);
            if (pow2) cr_assert_eq(d, 0.0f, "%s up[%d]: alpha / r = %g is a power of two", x->stem, j, (double)q);
            else cr_assert_leq(d, 2.4e-7f * fabsf(x->up[j]), "%s up[%d]", x->stem, j);
        }
    }
    dl_lf_free(&a), dl_lf_free(&b);
    char *a4[] = {"convert", (char *)tu_path(LORAS "/kohya_dnames.safetensors"), "--layout", "peft", "--model",
                  (char *)tu_path(FOLDER), "--out", (char *)tu_tmp("p3.safetensors"), NULL};
    cr_expect_eq(convert_cli(a4), 0, "%s", dl_error_msg());
    /* an SDXL LoRA with SD 1.x names is refused, nothing written */
    char *a5[] = {"convert", (char *)tu_path(LORAS "/kohya.safetensors"), "--layout", "peft", "--model",
                  (char *)tu_path("tests/golden/tiny_sd15"), "--out", (char *)tu_tmp("x.safetensors"), NULL};
    cr_expect_eq(convert_cli(a5), 1);
    cr_expect_neq(access(tu_tmp("x.safetensors"), F_OK), 0);
}

/* danlu lora merge --model on SDXL: the baked checkpoint samples as diffusers with the LoRA at
 * 0.8 (bound 1e-4 as test_sdxl_lora.c); lora extract from base and baked checkpoints gives the
 * LoRA's products back. */
Test(sdxl_tools, bake_sample_and_extract, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini, .timeout = 300)
{
    const dl_lora_weight lw = {tu_path(LORAS "/kohya.safetensors"), 0.8f};
    cr_assert_eq(dl_ckpt_merge_loras(tu_path(FOLDER), &lw, 1, tu_tmp("baked"), DL_F32, NULL), DL_OK, "%s",
                 dl_error_msg());
    dl_sd *sd = NULL;
    cr_assert_eq(dl_sd_open(&sd, tu_tmp("baked"), NULL, tu_ctx(), 0), DL_OK, "%s", dl_error_msg());
    cr_assert(dl_sd_is_xl(sd));
    dl_gen_params p;
    dl_gen_params_default(&p);
    p.prompt = "a photo of a cat sitting on a red chair, masterpiece";
    p.negative = "blurry, low quality";
    p.width = p.height = 16;
    p.steps = 3;
    p.cfg_scale = 5.0f;
    cr_assert_eq(dl_sampler_kind_parse("euler", &p.sampler), DL_OK);
    float img[16 * 16 * 3], lat[8 * 8 * 4];
    const uint64_t seed = 21;
    cr_assert_eq(dl_pipeline_generate(sd, &p, 1, &seed, DL_SEED_PER_IMAGE, img, lat, NULL, NULL), DL_OK, "%s",
                 dl_error_msg());
    dl_sd_close(sd);
    dl_st_file g;
    tu_golden_open(&g, "sdxl_lora");
    const int64_t ls[4] = {1, 8, 8, 4}, is[4] = {1, 16, 16, 3};
    float *rl = tu_golden_f32_shape(&g, "peft_08.latents", 4, ls), *ri = tu_golden_f32_shape(&g, "peft_08.image", 4, is);
    tu_expect_close(lat, rl, 8 * 8 * 4, 1e-4, "baked latents");
    tu_expect_close(img, ri, 16 * 16 * 3, 1e-4, "baked image");
    free(rl), free(ri);
    dl_st_close(&g);
    /* extract (rank 4, conv rank 2: every module's own rank or more; no clamp) */
    dl_checkpoint base, tuned;
    cr_assert_eq(dl_ckpt_open(&base, tu_path(FOLDER), &k_xl), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_ckpt_open(&tuned, tu_tmp("baked"), &k_xl), DL_OK, "%s", dl_error_msg());
    dl_extract_opts o = {.rank = 4, .conv_rank = 2, .clamp_quantile = 1.0, .min_diff = 0.01};
    dl_lora_file ex;
    dl_extract_stats st;
    cr_assert_eq(dl_lora_extract(&base, &tuned, &o, &ex, &st), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(st.n_modules, 287);
    cr_expect_lt(st.worst_rel_err, 1e-5, "worst relative Frobenius error %g", st.worst_rel_err);
    cr_expect_not_null(dl_lf_find(&ex, "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"));
    cr_expect_not_null(dl_lf_find(&ex, "lora_unet_output_blocks_2_2_conv"));
    dl_lf_free(&ex);
    dl_ckpt_close(&base);
    dl_ckpt_close(&tuned);
}

/* LoRA-only tools need no model: resize and LoRA + LoRA merge keep sd-scripts' SDXL names. */
Test(sdxl_tools, resize_and_merge_keep_the_names, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    FILE *devnull = fopen("/dev/null", "w");
    char *r[] = {"resize", (char *)tu_path(LORAS "/kohya.safetensors"), "--rank", "1", "--out",
                 (char *)tu_tmp("r.safetensors"), NULL};
    cr_assert_eq(dl_cmd_lora_resize(6, r, devnull), 0, "%s", dl_error_msg());
    char *m[] = {"merge", "--lora", (char *)tu_path(LORAS "/kohya.safetensors"), "--lora",
                 (char *)tu_tmp("r.safetensors"), "--out", (char *)tu_tmp("m.safetensors"), NULL};
    cr_assert_eq(dl_cmd_lora_merge(7, m, devnull), 0, "%s", dl_error_msg());
    fclose(devnull);
    dl_lora_file a, b;
    cr_assert_eq(dl_lf_read(&a, tu_tmp("r.safetensors")), DL_OK);
    cr_assert_eq(dl_lf_read(&b, tu_tmp("m.safetensors")), DL_OK);
    cr_expect(a.n == 287 && b.n == 287);
    const dl_lf_module *x = dl_lf_find(&a, "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k"),
                       *y = dl_lf_find(&b, "lora_te2_text_model_encoder_layers_1_mlp_fc1");
    cr_expect(x && x->r == 1);
    cr_expect(y && y->r == 3, "concatenated ranks 2 + 1");
    dl_lf_free(&a), dl_lf_free(&b);
}

/* Training still refuses SDXL, by name. */
/* SDXL LoRA training works (tests/test_train_sdxl.c); full fine-tuning of SDXL is refused by name */
Test(sdxl_tools, finetune_refuses_sdxl, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    char *argv[] = {"finetune", "--pretrained_model_name_or_path", (char *)tu_path(FOLDER), "--train_data_dir",
                    (char *)tu_path("examples/demo/data"), "--output_dir", (char *)tu_tmp("out"), "--max_train_steps",
                    "1", "--resolution", "64", NULL};
    FILE *devnull = fopen("/dev/null", "w");
    int rc = dl_cmd_finetune(11, argv, devnull);
    fclose(devnull);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(dl_error_msg(), "full fine-tuning of SDXL is not implemented"), "%s", dl_error_msg());
}
