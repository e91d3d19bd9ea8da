/* test_train_state.c - training state files: save/load round trip bit for bit (parameters,
 * moments, counters, both RNGs continue identically, data state), atomic replacement (a
 * failed save keeps the old state), rejected foreign/corrupt files, and the Ctrl-C flag. */
#include "core/error.h"
#include "train/state.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void make_state(dl_train_state *s, int64_t n)
{
    memset(s, 0, sizeof *s);
    s->n_params = n;
    s->params = malloc(n * sizeof(float));
    s->m = malloc(n * sizeof(float));
    s->v = malloc(n * sizeof(float));
    tu_fill_uniform(s->params, n, 1, -1, 1);
    tu_fill_uniform(s->m, n, 2, -1e-3f, 1e-3f);
    tu_fill_uniform(s->v, n, 3, 0, 1e-6f);
    s->step = 123;
    s->epoch = 4;
    s->micro_step = 246;
    dl_rng_seed(&s->rng, 99);
    for (int i = 0; i < 7; i++) dl_rng_u64(&s->rng);
    dl_torch_rng_seed(&s->noise_rng, 1234);
    float tmp[3];
    dl_torch_randn(&s->noise_rng, tmp, 3); /* odd count: a cached normal may be pending */
    s->data_state_len = 37;
    s->data_state = malloc(37);
    for (int i = 0; i < 37; i++) s->data_state[i] = (uint8_t)(i * 7 + 1);
    s->signature = "sig:modules=3";
    s->config_json = "{\"seed\":1}";
}

static void free_made(dl_train_state *s)
{
    free(s->params);
    free(s->m);
    free(s->v);
    free(s->data_state);
}

Test(train_state, round_trip)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_state_%d.safetensors", (int)getpid());
    dl_train_state s, r;
    make_state(&s, 1001);
    const char *meta[] = {"ss_output_name", "x"};
    cr_assert_eq(dl_train_state_save(path, &s, meta, 1), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_train_state_load(path, &r), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(r.n_params, 1001);
    cr_expect_eq(memcmp(r.params, s.params, 1001 * 4), 0);
    cr_expect_eq(memcmp(r.m, s.m, 1001 * 4), 0);
    cr_expect_eq(memcmp(r.v, s.v, 1001 * 4), 0);
    cr_expect_eq(r.step, 123);
    cr_expect_eq(r.epoch, 4);
    cr_expect_eq(r.micro_step, 246);
    cr_expect_eq(r.data_state_len, 37);
    cr_expect_eq(memcmp(r.data_state, s.data_state, 37), 0);
    cr_expect_str_eq(r.signature, s.signature);
    cr_expect_str_eq(r.config_json, s.config_json);
    /* both generators continue with the same draws */
    for (int i = 0; i < 5; i++) cr_expect_eq(dl_rng_u64(&r.rng), dl_rng_u64(&s.rng));
    float a[5], b[5];
    dl_torch_randn(&r.noise_rng, a, 5);
    dl_torch_randn(&s.noise_rng, b, 5);
    cr_expect_eq(memcmp(a, b, sizeof a), 0);
    dl_train_state_free(&r);

    /* a save that fails (directory in the way of the temp/rename) leaves the good state */
    dl_train_state bad = s;
    bad.step = 999;
    char dirpath[300];
    snprintf(dirpath, sizeof dirpath, "/tmp/danlu_test_state_dir_%d", (int)getpid());
    mkdir(dirpath, 0700);
    char inner[400];
    snprintf(inner, sizeof inner, "%s/nonexistent/state.safetensors", dirpath);
    cr_expect_eq(dl_train_state_save(inner, &bad, NULL, 0), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "nonexistent") != NULL, "%s", dl_error_msg());
    rmdir(dirpath);
    cr_assert_eq(dl_train_state_load(path, &r), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(r.step, 123);
    dl_train_state_free(&r);
    free_made(&s);
    unlink(path);
}

Test(train_state, rejects_foreign_and_truncated)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_state2_%d.safetensors", (int)getpid());
    float x[4] = {1, 2, 3, 4};
    dl_st_entry e = {.name = "lora.params", .dtype = DL_F32, .ndim = 1, .shape = {4}, .data = x};
    cr_assert_eq(dl_st_save(path, &e, 1, NULL, 0), DL_OK);
    dl_train_state r;
    cr_expect_eq(dl_train_state_load(path, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "not a danlu training state") != NULL, "%s", dl_error_msg());
    /* a state missing its moments */
    const char *meta[] = {"format", DL_STATE_FORMAT};
    cr_assert_eq(dl_st_save(path, &e, 1, meta, 1), DL_OK);
    cr_expect_eq(dl_train_state_load(path, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), "adamw.m") != NULL, "%s", dl_error_msg());
    /* a truncated good state */
    dl_train_state s;
    make_state(&s, 64);
    cr_assert_eq(dl_train_state_save(path, &s, NULL, 0), DL_OK);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size - 10), 0);
    cr_expect_eq(dl_train_state_load(path, &r), DL_ERR);
    cr_expect(strstr(dl_error_msg(), path) != NULL, "%s", dl_error_msg());
    free_made(&s);
    unlink(path);
}

Test(train_state, sigint_sets_flag)
{
    dl_train_signal_install();
    cr_expect_eq(dl_train_interrupted(), 0);
    raise(SIGINT);
    cr_expect_eq(dl_train_interrupted(), 1);
    dl_train_set_interrupted(0);
    cr_expect_eq(dl_train_interrupted(), 0);
    dl_train_signal_restore();
}
