/* test_train_config.c - `danlu train` configuration: defaults as sd-scripts, JSON file and
 * command-line flags (flags override the file), and every kind of error naming its key. */
#include "core/error.h"
#include "train/config.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *write_tmp(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_trcfg_%d_%s", (int)getpid(), name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Parse argv (NULL-terminated after argv[0]); returns rc, message in dl_error_msg. */
static int parse(dl_train_config *c, const char **args)
{
    int argc = 0;
    while (args[argc]) argc++;
    dl_train_config_defaults(c);
    return dl_train_config_parse_args(c, argc, (char **)args, NULL);
}

#define REQ "--pretrained_model_name_or_path", "m.safetensors", "--train_data_dir", "d", "--output_dir", "o"

Test(train_config, defaults_as_sd_scripts)
{
    dl_train_config c;
    const char *a[] = {"train", REQ, NULL};
    cr_assert_eq(parse(&c, a), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(c.train_batch_size, 1);
    cr_expect_eq(c.max_train_steps, 1600);
    cr_expect_eq(c.max_train_epochs, 0);
    cr_expect_eq(c.learning_rate, 2e-6);
    cr_expect(isnan(c.unet_lr) && isnan(c.text_encoder_lr));
    cr_expect_eq(dl_train_config_unet_lr(&c), 2e-6);
    cr_expect_eq(c.network_dim, 4);
    cr_expect_eq(c.network_alpha, 1.0);
    cr_expect_str_eq(c.lr_scheduler, "constant");
    cr_expect_eq(c.lr_scheduler_num_cycles, 1);
    cr_expect_eq(c.lr_scheduler_power, 1.0);
    cr_expect_eq(c.max_grad_norm, 1.0);
    cr_expect_eq(c.gradient_accumulation_steps, 1);
    cr_expect_eq(c.res_w, 512);
    cr_expect_eq(c.res_h, 512);
    cr_expect_eq(c.min_bucket_reso, 256);
    cr_expect_eq(c.max_bucket_reso, 1024);
    cr_expect_eq(c.clip_skip, 1);
    cr_expect_eq(c.seed, -1);
    cr_expect(isnan(c.noise_offset) && isnan(c.min_snr_gamma));
    cr_expect_str_eq(c.output_name, "last");
    cr_expect_str_eq(c.caption_extension, ".txt");
    cr_expect_eq(c.save_dtype, DL_SAVE_FP32);
    cr_expect_eq(c.weight_decay, 0.01);
    cr_expect_eq(c.adam_beta1, 0.9);
    cr_expect_eq(c.adam_beta2, 0.999);
    cr_expect_eq(c.adam_eps, 1e-8);
    cr_expect_eq(c.conv_dim, 0);
    cr_expect_str_eq(c.preset, "default");
    dl_train_config_free(&c);
}

Test(train_config, flags_forms_and_override)
{
    const char *json = "{\"pretrained_model_name_or_path\": \"base.safetensors\", \"train_data_dir\": \"data\","
                       " \"output_dir\": \"out\", \"learning_rate\": 1e-4, \"network_dim\": 16,"
                       " \"network_args\": [\"conv_dim=8\", \"conv_alpha=2\"], \"shuffle_caption\": true,"
                       " \"resolution\": \"512,768\", \"unet_lr\": null, \"noise_offset\": 0.05,"
                       " \"optimizer_args\": [\"weight_decay=0.1\", \"betas=0.8,0.99\"]}";
    const char *path = write_tmp("a.json", json);
    char cfgflag[300];
    snprintf(cfgflag, sizeof cfgflag, "--config=%s", path);
    dl_train_config c;
    const char *a[] = {"train", "--network_dim", "32", "--learning_rate=5e-5", "--flip_aug", "--network-alpha", "8",
                       "--shuffle_caption", "false", "--text_encoder_lr", "1e-5", cfgflag, "--min_snr_gamma=5",
                       "--network_args", "conv_dim=4", "preset=attn-mlp", "--seed", "42", "--xformers", NULL};
    FILE *warn = tmpfile();
    int argc = 0;
    while (a[argc]) argc++;
    dl_train_config_defaults(&c);
    cr_assert_eq(dl_train_config_parse_args(&c, argc, (char **)a, warn), DL_OK, "%s", dl_error_msg());
    rewind(warn);
    char wbuf[256] = {0};
    cr_expect(fread(wbuf, 1, sizeof wbuf - 1, warn) > 0);
    cr_expect(strstr(wbuf, "xformers") != NULL);
    fclose(warn);
    cr_expect_str_eq(c.pretrained_model_name_or_path, "base.safetensors");
    cr_expect_eq(c.network_dim, 32);          /* flag beats file */
    cr_expect_eq(c.learning_rate, 5e-5);
    cr_expect_eq(c.network_alpha, 8.0);
    cr_expect_eq(c.flip_aug, 1);
    cr_expect_eq(c.shuffle_caption, 0);       /* "--flag false" */
    cr_expect_eq(c.text_encoder_lr, 1e-5);
    cr_expect_eq(dl_train_config_unet_lr(&c), 5e-5);
    cr_expect_eq(c.min_snr_gamma, 5.0);
    cr_expect_eq(c.noise_offset, 0.05);
    cr_expect_eq(c.seed, 42);
    cr_expect_eq(c.res_w, 512);
    cr_expect_eq(c.res_h, 768);
    cr_expect_eq(c.network_args.n, 2);        /* the flag's list replaces the file's */
    cr_expect_eq(c.conv_dim, 4);
    cr_expect_eq(c.conv_alpha, 1.0);
    cr_expect_str_eq(c.preset, "attn-mlp");
    cr_expect_eq(c.weight_decay, 0.1);
    cr_expect_eq(c.adam_beta1, 0.8);
    cr_expect_eq(c.adam_beta2, 0.99);

    /* the effective config round-trips through JSON */
    char *js = dl_train_config_to_json(&c);
    cr_assert_not_null(js);
    dl_train_config d;
    dl_train_config_defaults(&d);
    cr_assert_eq(dl_train_config_apply_json_text(&d, js, "roundtrip"), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_train_config_finish(&d), DL_OK, "%s", dl_error_msg());
    char *js2 = dl_train_config_to_json(&d);
    cr_expect_str_eq(js, js2);
    cr_expect(strstr(js, "\"unet_lr\":null") != NULL, "%s", js);
    free(js);
    free(js2);
    dl_train_config_free(&d);
    dl_train_config_free(&c);
    unlink(path);
}

/* Each case must fail with a message containing `expect`. */
Test(train_config, errors_name_the_key)
{
    static const struct { const char *args[8]; const char *expect; } cases[] = {
        {{"--network_dim", "0"}, "network_dim"},
        {{"--network_dim", "2.5"}, "network_dim"},
        {{"--learning_rate", "abc"}, "learning_rate"},
        {{"--learning_rate", "-1"}, "learning_rate"},
        {{"--caption_dropout_rate", "1.5"}, "caption_dropout_rate"},
        {{"--clip_skip", "13"}, "clip_skip"},
        {{"--noise_offset", "-0.1"}, "noise_offset"},
        {{"--train_batch_size", "0"}, "train_batch_size"},
        {{"--no_such_flag", "1"}, "no_such_flag"},
        {{"--optimizer_type", "AdamW8bit"}, "AdamW8bit"},
        {{"--optimizer_type", "Lion"}, "optimizer_type"},
        {{"--lr_scheduler", "adafactor"}, "lr_scheduler"},
        {{"--network_module", "lycoris.kohya"}, "network_module"},
        {{"--mixed_precision", "fp16"}, "mixed_precision"},
        {{"--save_precision", "fp8"}, "save_precision"},
        {{"--resolution", "512x512"}, "resolution"},
        {{"--resolution", "24"}, "resolution"},
        {{"--min_bucket_reso", "1024", "--max_bucket_reso", "512"}, "min_bucket_reso"},
        {{"--network_args", "conv_dim=-1"}, "conv_dim"},
        {{"--network_args", "dropout=0.1"}, "dropout"},
        {{"--network_args", "preset=everything"}, "preset"},
        {{"--optimizer_args", "betas=0.9"}, "betas"},
        {{"--shuffle_caption", "--flip_aug=maybe"}, "flip_aug"},
        {{"--sample_every_n_steps", "10"}, "sample_prompts"},
        {{"--max_train_steps"}, "max_train_steps"},
        {{"stray"}, "stray"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *a[16] = {"train", REQ};
        int n = 7;
        for (int j = 0; j < 8 && cases[i].args[j]; j++) a[n++] = cases[i].args[j];
        a[n] = NULL;
        dl_train_config c;
        dl_error_clear();
        cr_expect_eq(parse(&c, a), DL_ERR, "case %zu (%s) accepted", i, cases[i].expect);
        cr_expect(strstr(dl_error_msg(), cases[i].expect) != NULL, "case %zu: message '%s' lacks '%s'", i,
                  dl_error_msg(), cases[i].expect);
        dl_train_config_free(&c);
    }
    /* missing required keys */
    const char *a[] = {"train", "--train_data_dir", "d", "--output_dir", "o", NULL};
    dl_train_config c;
    cr_expect_eq(parse(&c, a), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "pretrained_model_name_or_path") != NULL, "%s", dl_error_msg());
    dl_train_config_free(&c);
}

Test(train_config, file_errors_name_file_and_key)
{
    static const struct { const char *json; const char *expect; } cases[] = {
        {"{\"network_dim\": 0}", "network_dim"},
        {"{\"nework_dim\": 4}", "nework_dim"},
        {"{\"learning_rate\": \"fast\"}", "learning_rate"},
        {"{\"shuffle_caption\": 3}", "shuffle_caption"},
        {"{\"network_args\": [1]}", "network_args"},
        {"{\"max_train_steps\": null}", "max_train_steps"},
        {"[1, 2]", "JSON object"},
        {"{\"a\": ", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = write_tmp("bad.json", cases[i].json);
        dl_train_config c;
        dl_train_config_defaults(&c);
        dl_error_clear();
        cr_expect_eq(dl_train_config_load_json(&c, path), DL_ERR, "case %zu accepted", i);
        cr_expect(strstr(dl_error_msg(), cases[i].expect) != NULL, "case %zu: '%s' lacks '%s'", i, dl_error_msg(),
                  cases[i].expect);
        cr_expect(strstr(dl_error_msg(), path) != NULL, "case %zu: '%s' lacks the file name", i, dl_error_msg());
        dl_train_config_free(&c);
        unlink(path);
    }
    dl_train_config c;
    dl_train_config_defaults(&c);
    cr_expect_eq(dl_train_config_load_json(&c, "/tmp/some_config.toml"), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "JSON") != NULL && strstr(dl_error_msg(), "some_config.toml") != NULL, "%s",
              dl_error_msg());
    cr_expect_eq(dl_train_config_load_json(&c, "/nonexistent/x.json"), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "/nonexistent/x.json") != NULL, "%s", dl_error_msg());
    dl_train_config_free(&c);
}

/* A minimal config with key set to the JSON value json_value, applied and finished: DL_OK or
 * DL_ERR (c initialised either way; free it). */
static int with_json_value(dl_train_config *c, const char *key, const char *json_value)
{
    char json[256];
    snprintf(json, sizeof json,
             "{\"pretrained_model_name_or_path\": \"m\", \"train_data_dir\": \"d\", \"output_dir\": \"o\", "
             "\"%s\": %s}", key, json_value);
    dl_train_config_defaults(c);
    int rc = dl_train_config_apply_json_text(c, json, "t.json");
    return rc == DL_OK ? dl_train_config_finish(c) : rc;
}

/* resolution in JSON as a number or a [W, H] pair as well as sd-scripts' string; other shapes
 * are errors naming the key */
Test(train_config, resolution_json_forms)
{
    static const struct { const char *v; int ok, w, h; } cases[] = {
        {"768", 1, 768, 768}, {"[768, 512]", 1, 768, 512}, {"\"640\"", 1, 640, 640},
        {"[512]", 1, 512, 512}, {"[512, 512, 3]", 0, 0, 0}, {"512.5", 0, 0, 0}, {"true", 0, 0, 0},
        {"[\"512\", 512]", 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dl_train_config c;
        int rc = with_json_value(&c, "resolution", cases[i].v);
        if (cases[i].ok) {
            cr_expect_eq(rc, DL_OK, "%s: %s", cases[i].v, dl_error_msg());
            cr_expect_eq(c.res_w, cases[i].w, "%s", cases[i].v);
            cr_expect_eq(c.res_h, cases[i].h, "%s", cases[i].v);
        } else {
            cr_expect_eq(rc, DL_ERR, "%s accepted", cases[i].v);
            cr_expect(strstr(dl_error_msg(), "resolution") != NULL, "%s: %s", cases[i].v, dl_error_msg());
        }
        dl_train_config_free(&c);
    }
}

/* the backend is a parameter of the run: "cpu" by default, "cuda" (a GPU, or the emulated device),
 * unknown ones refused by name */
Test(train_config, backend_key)
{
    static const struct { const char *v; int ok; } cases[] = {{"\"cpu\"", 1}, {"\"cuda\"", 1}, {"\"metal\"", 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dl_train_config c;
        int rc = with_json_value(&c, "backend", cases[i].v);
        if (cases[i].ok) {
            cr_expect_eq(rc, DL_OK, "%s: %s", cases[i].v, dl_error_msg());
            cr_expect_str_eq(c.backend, i == 0 ? "cpu" : "cuda");
        } else {
            cr_expect_eq(rc, DL_ERR, "%s accepted", cases[i].v);
            cr_expect(strstr(dl_error_msg(), "backend") != NULL, "%s: %s", cases[i].v, dl_error_msg());
        }
        dl_train_config_free(&c);
    }
}
