/* test_safetensors.c - reader/writer round trips, every malformed-file case, `danlu inspect`. */
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* An image: 8-byte length, header text, then data_len bytes of data. */
static size_t build(uint8_t *buf, size_t cap, const char *header, size_t data_len)
{
    uint64_t h = strlen(header);
    cr_assert(8 + h + data_len <= cap);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(h >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + i] = (uint8_t)i;
    return 8 + h + data_len;
}

/* Parse an image and expect failure with a message containing want. */
static void expect_bad(const uint8_t *buf, size_t n, const char *want)
{
    dl_st_file f;
    memset(&f, 0, sizeof f);
    dl_error_clear();
    int rc = dl_st_parse(&f, buf, n, "case.safetensors");
    cr_expect_eq(rc, DL_ERR, "expected an error containing '%s'", want);
    cr_expect(strstr(dl_error_msg(), want) != NULL, "message '%s' should contain '%s'", dl_error_msg(), want);
    cr_expect(strstr(dl_error_msg(), "case.safetensors") != NULL, "message '%s' should name the file", dl_error_msg());
    dl_st_close(&f);
}

static void expect_bad_header(const char *header, size_t data_len, const char *want)
{
    static uint8_t buf[4096];
    expect_bad(buf, build(buf, sizeof buf, header, data_len), want);
}

Test(safetensors, roundtrip_dtypes_and_metadata, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    float a[6] = {1, -2, 3.5f, 1e-3f, 0, 65504};
    uint16_t h[3] = {dl_f32_to_f16(1.5f), dl_f32_to_f16(-0.25f), dl_f32_to_f16(1e-6f)};
    uint16_t b[2] = {dl_f32_to_bf16(3.0f), dl_f32_to_bf16(-1e20f)};
    int64_t ids[4] = {49406, 1, -5, 49407};
    dl_st_entry e[4] = {
        {"w.f32", DL_F32, 2, {2, 3}, a},
        {"w.f16", DL_F16, 1, {3}, h},
        {"w.bf16", DL_BF16, 2, {1, 2}, b},
        {"ids", DL_I64, 1, {4}, ids},
    };
    const char *meta[] = {"ss_network_dim", "16", "note", "unicode \xe4\xb8\xb9 \"quoted\""};
    const char *path = tu_tmp("x.safetensors");
    cr_assert_eq(dl_st_save(path, e, 4, meta, 2), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(count_files(tu_tmpdir()), 1, "no temporary file may be left behind");
    struct stat sb;
    mode_t um = umask(022);
    cr_assert_eq(stat(path, &sb), 0);
    cr_expect_eq(sb.st_mode & 0777, 0666 & ~um, "a saved file is readable as any other (mode %o)", sb.st_mode & 0777);
    umask(um);

    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, path), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(f.n_tensors, 4);
    const dl_st_tensor *t = dl_st_find(&f, "w.f32");
    cr_assert_not_null(t);
    cr_expect_eq(t->ndim, 2);
    cr_expect_eq(t->shape[0], 2);
    cr_expect_eq(t->shape[1], 3);
    float got[6];
    cr_assert_eq(dl_st_read_f32(&f, t, got), DL_OK);
    cr_expect_arr_eq(got, a, sizeof a);
    cr_assert_eq(dl_st_read_f32(&f, dl_st_find(&f, "w.f16"), got), DL_OK);
    cr_expect_eq(got[0], 1.5f);
    cr_expect_eq(got[1], -0.25f);
    cr_expect_float_eq(got[2], 1e-6f, 2e-8f);
    cr_assert_eq(dl_st_read_f32(&f, dl_st_find(&f, "w.bf16"), got), DL_OK);
    cr_expect_eq(got[0], 3.0f);
    t = dl_st_find(&f, "ids");
    cr_expect_eq(t->dtype, DL_I64);
    cr_expect_arr_eq(t->data, ids, sizeof ids);
    cr_expect_eq(dl_st_read_f32(&f, t, got), DL_ERR, "an integer tensor is not readable as float");
    cr_expect_str_eq(dl_st_meta(&f, "ss_network_dim"), "16");
    cr_expect_str_eq(dl_st_meta(&f, "note"), meta[3]);
    cr_expect_null(dl_st_meta(&f, "absent"));
    cr_expect_null(dl_st_find(&f, "absent"));
    dl_st_close(&f);
}

Test(safetensors, reads_empty_and_scalar_tensors, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    float s = 7;
    dl_st_entry e[2] = {{"scalar", DL_F32, 0, {0}, &s}, {"empty", DL_F32, 2, {0, 5}, &s}};
    cr_assert_eq(dl_st_save(tu_tmp("s.safetensors"), e, 2, NULL, 0), DL_OK, "%s", dl_error_msg());
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, tu_tmp("s.safetensors")), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(dl_st_numel(dl_st_find(&f, "scalar")), 1);
    cr_expect_eq(*(const float *)dl_st_find(&f, "scalar")->data, 7.0f);
    cr_expect_eq(dl_st_numel(dl_st_find(&f, "empty")), 0);
    dl_st_close(&f);
}

Test(safetensors, truncated_files)
{
    uint8_t buf[256] = {0};
    expect_bad(buf, 0, "truncated");
    expect_bad(buf, 5, "truncated");
    size_t n = build(buf, sizeof buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16);
    expect_bad(buf, n - 3, "truncated");         /* data cut short */
    expect_bad(buf, 8 + 10, "truncated");        /* header cut short */
}

Test(safetensors, header_length_past_end)
{
    uint8_t buf[64] = {0};
    uint64_t h = 1000;
    memcpy(buf, &h, 8);
    memcpy(buf + 8, "{}", 2);
    expect_bad(buf, 20, "runs past the end");
}

Test(safetensors, absurd_header_size)
{
    uint8_t buf[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    expect_bad(buf, sizeof buf, "absurd");
}

Test(safetensors, header_not_json_or_not_object)
{
    expect_bad_header("{not json at all", 0, "not valid JSON");
    expect_bad_header("[1, 2, 3]", 0, "not a JSON object");
    expect_bad_header("\"string\"", 0, "not a JSON object");
    expect_bad_header("{\"a\": 5}", 0, "not a JSON object");
    expect_bad_header("{} trailing", 0, "trailing bytes");
}

Test(safetensors, offsets_out_of_range)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "past the end of the data");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "end before they begin");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8, "non-negative integers");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8, "two non-negative");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, "data_offsets");
}

Test(safetensors, overlapping_and_gaps)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "unclaimed bytes");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing data");
}

Test(safetensors, size_not_matching_shape_times_dtype)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 6 bytes");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12, "needs 16 bytes");
}

Test(safetensors, unknown_dtype)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype \"F31\"");
    expect_bad_header("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
}

Test(safetensors, duplicate_names)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "appears twice");
}

Test(safetensors, negative_overflowing_and_fractional_shapes)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape entry 0");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape entry 0");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 4,
                      "overflows");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                      "dimensions");
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":\"4\",\"data_offsets\":[0,16]}}", 16, "shape");
}

Test(safetensors, bad_metadata)
{
    expect_bad_header("{\"__metadata__\":{\"k\":5}}", 0, "string value");
    expect_bad_header("{\"__metadata__\":[1]}", 0, "\"__metadata__\" is not a JSON object");
}

Test(safetensors, open_errors_name_the_file, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    dl_st_file f;
    cr_expect_eq(dl_st_open(&f, tu_tmp("missing.safetensors")), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "missing.safetensors") && strstr(dl_error_msg(), "cannot open"), "%s",
              dl_error_msg());
    dl_st_close(&f);
    cr_expect_eq(dl_st_open(&f, tu_tmpdir()), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "directory"), "%s", dl_error_msg());
    dl_st_close(&f);
    FILE *e = fopen(tu_tmp("empty.safetensors"), "wb");
    fclose(e);
    cr_expect_eq(dl_st_open(&f, tu_tmp("empty.safetensors")), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "empty.safetensors") && strstr(dl_error_msg(), "truncated"), "%s",
              dl_error_msg());
    dl_st_close(&f);
}

Test(safetensors, writer_refuses_duplicates, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    float x = 1;
    dl_st_entry e[2] = {{"a", DL_F32, 1, {1}, &x}, {"a", DL_F32, 1, {1}, &x}};
    cr_expect_eq(dl_st_save(tu_tmp("d.safetensors"), e, 2, NULL, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "given twice"), "%s", dl_error_msg());
    cr_expect_eq(count_files(tu_tmpdir()), 0);
}

Test(safetensors, unwritable_directory_leaves_nothing)
{
    float x = 1;
    dl_st_entry e = {"a", DL_F32, 1, {1}, &x};
    cr_expect_eq(dl_st_save("/nonexistent-dir/out.safetensors", &e, 1, NULL, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "/nonexistent-dir/out.safetensors"), "%s", dl_error_msg());
}

/* A full disk, simulated with a file-size limit: the write fails, the old file survives intact
 * and no temporary is left behind. */
Test(safetensors, disk_full_keeps_the_old_file, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    float small = 42;
    dl_st_entry e = {"a", DL_F32, 1, {1}, &small};
    const char *path = tu_tmp("keep.safetensors");
    cr_assert_eq(dl_st_save(path, &e, 1, NULL, 0), DL_OK, "%s", dl_error_msg());

    enum { N = 1 << 16 };
    float *big = calloc(N, sizeof *big);
    dl_st_entry eb = {"big", DL_F32, 1, {N}, big};
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {4096, 4096};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    cr_expect_eq(dl_st_save(path, &eb, 1, NULL, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "write failed") && strstr(dl_error_msg(), "keep.safetensors"), "%s",
              dl_error_msg());
    free(big);
    cr_expect_eq(count_files(tu_tmpdir()), 1, "the temporary must be removed");
    dl_st_file f;
    cr_assert_eq(dl_st_open(&f, path), DL_OK, "old file damaged: %s", dl_error_msg());
    cr_expect_eq(*(const float *)dl_st_find(&f, "a")->data, 42.0f);
    dl_st_close(&f);
}

Test(inspect, lists_tensors_and_metadata, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    float w[6] = {0};
    dl_st_entry e = {"lora_unet_x.lora_down.weight", DL_F32, 2, {2, 3}, w};
    const char *meta[] = {"ss_network_alpha", "8"};
    cr_assert_eq(dl_st_save(tu_tmp("l.safetensors"), &e, 1, meta, 1), DL_OK);
    FILE *out = tmpfile();
    char *argv[] = {"inspect", (char *)tu_tmp("l.safetensors"), NULL};
    cr_expect_eq(dl_cmd_inspect(2, argv, out), 0);
    rewind(out);
    char text[4096] = {0};
    size_t n = fread(text, 1, sizeof text - 1, out);
    fclose(out);
    text[n] = 0;
    cr_expect(strstr(text, "lora_unet_x.lora_down.weight"), "%s", text);
    cr_expect(strstr(text, "[2, 3]"), "%s", text);
    cr_expect(strstr(text, " 24\n"), "bytes column: %s", text);
    cr_expect(strstr(text, "ss_network_alpha = 8"), "%s", text);
}

Test(inspect, bad_file_exits_nonzero, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini)
{
    FILE *bad = fopen(tu_tmp("bad.safetensors"), "wb");
    fputs("garbage!garbage!", bad);
    fclose(bad);
    FILE *out = tmpfile();
    char *argv[] = {"inspect", (char *)tu_tmp("bad.safetensors"), NULL};
    cr_expect_eq(dl_cmd_inspect(2, argv, out), 1);
    char *argv2[] = {"inspect", "--bogus", NULL};
    cr_expect_eq(dl_cmd_inspect(2, argv2, out), 2);
    fclose(out);
}
