/* test_provenance.c - the provenance record a trained LoRA carries and `danlu verify`: the record
 * holds the right hashes (file bytes, decoded pixels, captions, base model files), the seed, the
 * steps and the code path; a folder is matched against it (the same folder; one image added, one
 * removed, one re-encoded, one copied, one caption changed); --reproduce retrains bit-identically on this
 * machine and refuses a changed dataset; a LoRA without a record is refused. Each test trains a
 * 3-step UNet LoRA on tests/golden/tiny_pipe (well under a second on two cores). */
#include "testutil.h"
#include "cli/commands.h"
#include "core/cpu_isa.h"
#include "core/error.h"
#include "core/sha256.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "lora/ckpt_tools.h"
#include "train/config.h"
#include "train/provenance.h"
#include "train/trainer.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

TestSuite(provenance, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    cr_assert(a && b, "copy %s -> %s", from, to);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) cr_assert_eq(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

/* A 32x32 PNG of a colour gradient seeded by k. */
static void make_png(const char *path, int k)
{
    dl_image img = {.w = 32, .h = 32, .data = malloc(32 * 32 * 3)};
    cr_assert_not_null(img.data);
    for (int i = 0; i < 32 * 32; i++) {
        img.data[3 * i] = (uint8_t)(i * (k + 3));
        img.data[3 * i + 1] = (uint8_t)(255 - i * (k + 1));
        img.data[3 * i + 2] = (uint8_t)(40 * k);
    }
    cr_assert_eq(dl_png_save(path, &img, NULL, 0), DL_OK, "%s", dl_error_msg());
    dl_image_free(&img);
}

/* data/2_thing: the two golden images with their captions and a third made here. */
static void make_dataset(const char *dir)
{
    char p[1024], q[1024];
    mkdir(dir, 0777);
    snprintf(p, sizeof p, "%s/2_thing", dir);
    cr_assert_eq(mkdir(p, 0777), 0, "%s", p);
    const char *names[] = {"img0.png", "img0.txt", "img1.png", "img1.txt"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "tests/golden/train_diffusers/data/2_thing/%s", names[i]);
        snprintf(q, sizeof q, "%s/2_thing/%s", dir, names[i]);
        copy_file(tu_path(p), q);
    }
    snprintf(p, sizeof p, "%s/2_thing/img2.png", dir);
    make_png(p, 2);
    snprintf(p, sizeof p, "%s/2_thing/img2.txt", dir);
    write_text(p, "blue stripes, thing\n");
}

/* Train 3 steps (a save at step 2) on dir into tu_tmp("out") from model (NULL: tiny_pipe; a
 * single file takes tiny_pipe's tokenizer); the final LoRA's path into path. */
static void train_on(const char *model, const char *dir, char *path, size_t cap)
{
    dl_train_config c;
    dl_train_config_defaults(&c);
    const char *kv[][2] = {
        {"pretrained_model_name_or_path", model ? model : tu_path("tests/golden/tiny_pipe")},
        {"tokenizer", model ? tu_path("tests/golden/tiny_pipe/tokenizer") : NULL}, {"train_data_dir", dir},
        {"output_dir", tu_tmp("out")}, {"output_name", "prov"}, {"resolution", "32"}, {"seed", "11"},
        {"threads", "2"}, {"max_train_steps", "3"}, {"learning_rate", "2e-2"}, {"network_dim", "4"},
        {"network_alpha", "2"}, {"network_train_unet_only", "true"}, {"save_every_n_steps", "2"},
        {"cache_latents", "true"},
    };
    for (size_t i = 0; i < sizeof kv / sizeof *kv; i++)
        if (kv[i][1]) cr_assert_eq(dl_train_config_set(&c, kv[i][0], kv[i][1]), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_train_config_finish(&c), DL_OK, "%s", dl_error_msg());
    dl_trainer_opts o = {.log = NULL, .tty = 0};
    dl_train_result res;
    cr_assert_eq(dl_train_run(&c, &o, &res), DL_OK, "%s", dl_error_msg());
    snprintf(path, cap, "%s", res.output_path);
    dl_train_result_free(&res);
    dl_train_config_free(&c);
}

static void train(const char *dir, char *path, size_t cap) { train_on(NULL, dir, path, cap); }

/* danlu verify ARGS...: exit status, and stdout into *text (malloc'd). */
static int run_verify(char **text, int argc, const char **args)
{
    char *argv[16];
    argv[0] = "verify";
    for (int i = 0; i < argc; i++) argv[i + 1] = (char *)args[i];
    argv[argc + 1] = NULL;
    size_t n = 0;
    FILE *out = open_memstream(text, &n);
    cr_assert_not_null(out);
    int rc = dl_cmd_verify(argc + 1, argv, out);
    fclose(out);
    return rc;
}

/* The report has the line "  STATUS PATH" (status padded as the command prints it). */
static void expect_line(const char *text, const char *status, const char *path)
{
    char line[256];
    snprintf(line, sizeof line, "\n  %-36s %s", status, path);
    cr_expect_not_null(strstr(text, line), "no line '%s' in:\n%s", line + 1, text);
}

static void pixels_hex(const char *path, char hex[65])
{
    dl_image img;
    cr_assert_eq(dl_image_load(&img, path), DL_OK, "%s", dl_error_msg());
    uint8_t hdr[8] = {(uint8_t)img.w, (uint8_t)(img.w >> 8), 0, 0, (uint8_t)img.h, (uint8_t)(img.h >> 8), 0, 0};
    dl_sha256 s;
    uint8_t d[32];
    dl_sha256_init(&s);
    dl_sha256_update(&s, hdr, 8);
    dl_sha256_update(&s, img.data, (size_t)img.w * img.h * 3);
    dl_sha256_final(&s, d);
    dl_sha256_hex(d, hex);
    dl_image_free(&img);
}

static void text_hex(const char *text, char hex[65])
{
    dl_sha256 s;
    uint8_t d[32];
    dl_sha256_init(&s);
    dl_sha256_update(&s, text, strlen(text));
    dl_sha256_final(&s, d);
    dl_sha256_hex(d, hex);
}

Test(provenance, record_holds_the_hashes_seed_steps_and_code_path, .timeout = 120)
{
    char data[1024], lora[1024];
    snprintf(data, sizeof data, "%s", tu_tmp("data"));
    make_dataset(data);
    train(data, lora, sizeof lora);
    dl_provenance p;
    cr_assert_eq(dl_prov_read(&p, lora, NULL), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(p.format, DL_PROV_FORMAT);
    cr_expect_str_neq(p.danlu, "unknown", "the build gives the version");
    cr_expect_str_eq(p.backend, "cpu");
    cr_expect_str_eq(p.isa, dl_isa_name(dl_cpu_isa()));
    cr_expect_eq(p.threads, 2);
    cr_expect_eq(p.seed, 11);
    cr_expect_eq(p.steps, 3);
    /* the base model: each part file of the diffusers folder, by its SHA-256 */
    cr_assert_eq(p.n_model, 3);
    for (int i = 0; i < p.n_model; i++) {
        char rel[512], hex[65];
        snprintf(rel, sizeof rel, "tests/golden/tiny_pipe/%s", p.model[i].name);
        cr_assert_eq(dl_sha256_file(tu_path(rel), 0, hex), DL_OK, "%s", dl_error_msg());
        cr_expect_str_eq(p.model[i].sha256, hex, "%s", p.model[i].name);
    }
    /* the images: bytes, decoded pixels (with the size), caption as trained */
    static const char *const caps[] = {NULL, NULL, "blue stripes, thing"};
    cr_assert_eq(p.n_items, 3);
    for (int i = 0; i < 3; i++) {
        char rel[64], img[1200], hex[65];
        snprintf(rel, sizeof rel, "2_thing/img%d.png", i);
        cr_expect_str_eq(p.items[i].path, rel);
        snprintf(img, sizeof img, "%s/%s", data, rel);
        cr_assert_eq(dl_sha256_file(img, 0, hex), DL_OK);
        cr_expect_str_eq(p.items[i].file, hex, "%s: file hash", rel);
        pixels_hex(img, hex);
        cr_expect_str_eq(p.items[i].pixels, hex, "%s: pixel hash", rel);
        if (caps[i]) {
            text_hex(caps[i], hex);
            cr_expect_str_eq(p.items[i].caption, hex, "%s: caption hash", rel);
        }
    }
    {
        char hex[65];
        text_hex("red square, thing", hex);
        cr_expect_str_eq(p.items[0].caption, hex, "img0: caption hash");
    }
    dl_prov_free(&p);
    /* the step-2 save carries its own step; the record holds digests and names, not captions */
    char step2[1024];
    snprintf(step2, sizeof step2, "%s/prov-step00000002.safetensors", tu_tmp("out"));
    cr_assert_eq(dl_prov_read(&p, step2, NULL), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(p.steps, 2);
    cr_expect_eq(p.n_items, 3);
    dl_prov_free(&p);
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, lora), DL_OK);
    const char *rec = dl_st_meta(&f, DL_PROV_KEY);
    cr_assert_not_null(rec);
    cr_expect_null(strstr(rec, "blue stripes"), "the record holds a caption's text");
    cr_expect_lt(strlen(rec), 1000 + 3 * 230, "record of %zu bytes for 3 images", strlen(rec));
    cr_log_info("record: %zu bytes for 3 images", strlen(rec));
    dl_st_close(&f);
}

Test(provenance, verify_dataset_finds_added_removed_reencoded_and_recaptioned, .timeout = 120)
{
    char data[1024], lora[1024], p[1100], q[1100];
    snprintf(data, sizeof data, "%s", tu_tmp("data"));
    make_dataset(data);
    train(data, lora, sizeof lora);
    /* the training folder itself: the same, exit 0 */
    char *text = NULL;
    const char *same[] = {lora, "--dataset", data};
    cr_expect_eq(run_verify(&text, 3, same), 0, "%s", text);
    cr_expect_not_null(strstr(text, "the same as the training set"), "%s", text);
    free(text);
    /* img0 re-encoded (same pixels, other bytes), img1 removed, img3 added, img2's caption edited */
    snprintf(p, sizeof p, "%s/2_thing/img0.png", data);
    dl_image img;
    cr_assert_eq(dl_image_load(&img, p), DL_OK);
    const char *chunk[] = {"Comment", "re-saved by another program"};
    cr_assert_eq(dl_png_save(p, &img, chunk, 1), DL_OK, "%s", dl_error_msg());
    dl_image_free(&img);
    snprintf(p, sizeof p, "%s/2_thing/img1.png", data);
    cr_assert_eq(unlink(p), 0);
    snprintf(p, sizeof p, "%s/2_thing/img3.png", data);
    make_png(p, 3);
    snprintf(q, sizeof q, "%s/2_thing/img2.txt", data);
    write_text(q, "green stripes, thing\n");
    /* and a copy of img2 under a name that is scanned first: a copy, not img2's place */
    snprintf(p, sizeof p, "%s/2_thing/img2.png", data);
    snprintf(q, sizeof q, "%s/2_thing/a_copy.png", data);
    copy_file(p, q);

    dl_provenance rec;
    char *cfg = NULL;
    cr_assert_eq(dl_prov_read(&rec, lora, &cfg), DL_OK, "%s", dl_error_msg());
    dl_train_config c;
    cr_assert_eq(dl_prov_load_config(&c, cfg, lora), DL_OK, "%s", dl_error_msg());
    dl_dataset ds;
    cr_assert_eq(dl_prov_scan(&ds, data, &c, NULL), DL_OK, "%s", dl_error_msg());
    dl_prov_item *items;
    cr_assert_eq(dl_prov_hash_dataset(&ds, NULL, &items), DL_OK, "%s", dl_error_msg());
    dl_prov_report rep;
    cr_assert_eq(dl_prov_compare(&rec, items, ds.n_items, &rep), DL_OK);
    cr_assert_eq(rep.n, 4); /* a_copy, img0, img2, img3 */
    cr_expect_str_eq(rep.m[0].path, "2_thing/a_copy.png");
    cr_expect_eq(rep.m[0].status, DL_PROV_MOVED);
    cr_expect_eq(rep.m[0].record, 2);
    cr_expect_str_eq(rep.m[1].path, "2_thing/img0.png");
    cr_expect_eq(rep.m[1].status, DL_PROV_REENCODED);
    cr_expect_eq(rep.m[1].record, 0);
    cr_expect_eq(rep.m[1].caption_changed, 0);
    cr_expect_eq(rep.m[2].status, DL_PROV_IN);
    cr_expect_eq(rep.m[2].record, 2);
    cr_expect_eq(rep.m[2].caption_changed, 1);
    cr_expect_str_eq(rep.m[3].path, "2_thing/img3.png");
    cr_expect_eq(rep.m[3].status, DL_PROV_NOT_IN);
    cr_assert_eq(rep.n_missing, 1);
    cr_expect_str_eq(rec.items[rep.missing[0]].path, "2_thing/img1.png");
    cr_expect_eq(rep.exact, 0);
    dl_prov_report_free(&rep);
    dl_prov_items_free(items, ds.n_items);
    dl_dataset_free(&ds);
    dl_train_config_free(&c);
    dl_prov_free(&rec);
    free(cfg);
    /* the command says the same, and exits 1 */
    const char *changed[] = {lora, "--dataset", data};
    cr_expect_eq(run_verify(&text, 3, changed), 1, "%s", text);
    expect_line(text, "in the training set, re-encoded", "2_thing/img0.png");
    expect_line(text, "not in the training set", "2_thing/img3.png");
    expect_line(text, "missing (recorded, not in DIR)", "2_thing/img1.png");
    expect_line(text, "in the training set, at another path", "2_thing/a_copy.png (recorded as 2_thing/img2.png)");
    expect_line(text, "in the training set", "2_thing/img2.png; its caption changed");
    cr_expect_not_null(strstr(text, "differs from the training set"), "%s", text);
    free(text);
}

Test(provenance, reproduce_is_bit_identical_here_and_refuses_another_dataset, .timeout = 120)
{
    char data[1024], lora[1024], step2[1100];
    snprintf(data, sizeof data, "%s", tu_tmp("data"));
    make_dataset(data);
    train(data, lora, sizeof lora);
    /* the final save and the step-2 save, each retrained (stopping at its step) and compared */
    snprintf(step2, sizeof step2, "%s/prov-step00000002.safetensors", tu_tmp("out"));
    const char *files[] = {lora, step2};
    for (int i = 0; i < 2; i++) {
        dl_prov_repro_opts o = {0};
        dl_prov_repro r;
        cr_assert_eq(dl_prov_reproduce(files[i], &o, &r), DL_OK, "%s: %s", files[i], dl_error_msg());
        cr_expect(r.same_path, "%s vs %s", r.path_now, r.path_rec);
        cr_expect(r.identical, "%s: %d of %d tensors differ, rel L2 %.3e (worst %s %.3e)", files[i], r.n_differ,
                  r.n_tensors, r.rel_l2, r.worst, r.worst_rel);
        cr_expect_gt(r.n_tensors, 0);
        dl_prov_repro_free(&r);
    }
    char *text = NULL;
    const char *args[] = {lora, "--reproduce"};
    cr_expect_eq(run_verify(&text, 2, args), 0, "%s", text);
    cr_expect_not_null(strstr(text, "exact match"), "%s", text);
    free(text);
    /* a dataset whose caption changed is refused before any training */
    char p[1100];
    snprintf(p, sizeof p, "%s/2_thing/img2.txt", data);
    write_text(p, "green stripes, thing\n");
    const char *changed[] = {lora, "--reproduce", "--dataset", data};
    cr_expect_eq(run_verify(&text, 4, changed), 2, "%s", text);
    free(text);
    dl_provenance rec;
    cr_assert_eq(dl_prov_read(&rec, lora, NULL), DL_OK);
    dl_prov_repro_opts o = {.dataset = data};
    dl_prov_repro r;
    cr_expect_eq(dl_prov_reproduce(lora, &o, &r), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "differs from the record"), "%s", dl_error_msg());
    dl_prov_free(&rec);
}

Test(provenance, a_file_without_a_record_is_refused)
{
    float x[4] = {1, 2, 3, 4};
    dl_st_entry e = {.name = "lora_unet_x.lora_down.weight", .dtype = DL_F32, .ndim = 2, .shape = {2, 2}, .data = x};
    const char *meta[] = {"ss_network_dim", "2"};
    const char *path = tu_tmp("other.safetensors");
    cr_assert_eq(dl_st_save(path, &e, 1, meta, 1), DL_OK, "%s", dl_error_msg());
    dl_provenance p;
    cr_expect_eq(dl_prov_read(&p, path, NULL), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "no provenance record"), "%s", dl_error_msg());
    char *text = NULL;
    const char *args[] = {path, "--dataset", tu_tmpdir()};
    cr_expect_eq(run_verify(&text, 3, args), 2);
    free(text);
    const char *usage[] = {"--dataset"};
    cr_expect_eq(run_verify(&text, 1, usage), 2);
    free(text);
}

Test(provenance, single_file_model_is_recorded_by_its_hash_and_checked, .timeout = 120)
{
    char data[1024], lora[1024], model[1024];
    snprintf(model, sizeof model, "%s", tu_tmp("model.safetensors"));
    cr_assert_eq(dl_ckpt_convert(tu_path("tests/golden/tiny_pipe"), model, DL_LAYOUT_SINGLE, -1, NULL), DL_OK, "%s",
                 dl_error_msg());
    snprintf(data, sizeof data, "%s", tu_tmp("data"));
    make_dataset(data);
    train_on(model, data, lora, sizeof lora);
    dl_provenance p;
    cr_assert_eq(dl_prov_read(&p, lora, NULL), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(p.n_model, 1);
    cr_expect_str_eq(p.model[0].name, "model.safetensors");
    char hex[65];
    cr_assert_eq(dl_sha256_file(model, 0, hex), DL_OK);
    cr_expect_str_eq(p.model[0].sha256, hex);
    dl_st_file f; /* the same digest as sd-scripts' ss_new_sd_model_hash, computed once */
    cr_assert_eq(dl_st_open(&f, lora), DL_OK);
    cr_expect_str_eq(dl_st_meta(&f, "ss_new_sd_model_hash"), hex);
    dl_st_close(&f);
    dl_prov_free(&p);
    char *text = NULL;
    const char *args[] = {lora, "--reproduce"};
    cr_expect_eq(run_verify(&text, 2, args), 0, "%s", text);
    cr_expect_not_null(strstr(text, "exact match"), "%s", text);
    free(text);
    /* another model file: refused before training, naming it */
    char other[1100];
    snprintf(other, sizeof other, "%s", tu_tmp("other.safetensors"));
    cr_assert_eq(dl_ckpt_convert(model, other, DL_LAYOUT_SINGLE, DL_F16, NULL), DL_OK, "%s", dl_error_msg());
    dl_prov_repro_opts o = {.model = other};
    dl_prov_repro r;
    cr_expect_eq(dl_prov_reproduce(lora, &o, &r), DL_ERR);
    cr_expect_not_null(strstr(dl_error_msg(), "not the model it was trained on"), "%s", dl_error_msg());
}

Test(provenance, tensor_comparison_reports_bits_then_the_aggregate)
{
    float a[6] = {1, 2, 3, 4, 0, 0}, b[6] = {1, 2, 3, 4, 0, 0}, c[2] = {1e-3f, -1e-3f}, d[2] = {1e-3f, 1e-3f};
    dl_st_entry ea[2] = {{.name = "big", .dtype = DL_F32, .ndim = 1, .shape = {6}, .data = a},
                         {.name = "tiny", .dtype = DL_F32, .ndim = 1, .shape = {2}, .data = c}};
    dl_st_entry eb[2] = {ea[0], ea[1]};
    const char *pa = tu_tmp("a.safetensors"), *pb = tu_tmp("b.safetensors");
    cr_assert_eq(dl_st_save(pa, ea, 2, NULL, 0), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_st_save(pb, eb, 2, NULL, 0), DL_OK, "%s", dl_error_msg());
    dl_prov_repro r = {0};
    cr_assert_eq(dl_prov_compare_tensors(pa, pb, &r), DL_OK, "%s", dl_error_msg());
    cr_expect(r.identical && r.n_differ == 0 && r.rel_l2 == 0 && r.n_tensors == 2);
    /* a near-zero value flips sign: 141% of that tensor, 3.7e-4 of all tensors together */
    b[0] = 1.0f;
    eb[0].data = b;
    eb[1].data = d;
    cr_assert_eq(dl_st_save(pb, eb, 2, NULL, 0), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_prov_compare_tensors(pa, pb, &r), DL_OK, "%s", dl_error_msg());
    cr_expect(!r.identical);
    cr_expect_eq(r.n_differ, 1);
    cr_expect_str_eq(r.worst, "tiny");
    cr_expect_float_eq(r.worst_rel, sqrt(2.0), 1e-6);
    double want = sqrt(4e-6 / (30.0 + 2e-6));
    cr_expect_float_eq(r.rel_l2, want, 1e-9, "%.6e vs %.6e", r.rel_l2, want);
    cr_expect_lt(r.rel_l2, DL_PROV_REPRO_BOUND);
}
