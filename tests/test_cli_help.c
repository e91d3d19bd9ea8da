/* test_cli_help.c - `danlu <command> --help` lists every option its parser accepts, with its
 * default and meaning, and every option the help lists is accepted by that parser: both sides
 * are driven from the real tables (cli/opts.h for sample, grid, run, inspect and tokenize;
 * train/config.h's key table for train and finetune). */
#include "cli/commands.h"
#include "cli/sample_args.h"
#include "core/error.h"
#include "sample/sampler.h"
#include "train/config.h"
#include "train/train_sample.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*cmd_fn)(int argc, char **argv, FILE *out);

/* The output of fn(cmd --help), malloc'd. */
static char *capture_help(cmd_fn fn, const char *cmd)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    char *argv[] = {(char *)cmd, "--help", NULL};
    int rc = fn(2, argv, f);
    fclose(f);
    cr_assert_eq(rc, 0, "danlu %s --help: exit %d", cmd, rc);
    cr_assert(len > 0);
    return buf;
}

/* Run fn on argv with stdout and stderr discarded; its exit code. */
static int run_quiet(cmd_fn fn, int argc, char **argv)
{
    FILE *null = fopen("/dev/null", "w");
    fflush(stderr);
    int saved = dup(2);
    dup2(fileno(null), 2);
    int rc = fn(argc, argv, null);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(null);
    return rc;
}

/* Collapse runs of spaces and newlines to one space. */
static void squeeze(const char *in, size_t n, char *out, size_t cap)
{
    size_t j = 0;
    int sp = 0;
    for (size_t i = 0; i < n && in[i] && j + 1 < cap; i++) {
        if (in[i] == ' ' || in[i] == '\n') {
            sp = 1;
            continue;
        }
        if (sp && j) out[j++] = ' ';
        sp = 0;
        if (j + 1 < cap) out[j++] = in[i];
    }
    out[j] = 0;
}

/* The help entry whose flag column starts with head ("--steps", "-h, --help"): its first line
 * and the continuation lines (indented by more than two spaces), squeezed into out. Returns
 * how many entries start with head (0: none). */
static int entry(const char *help, const char *head, char *out, size_t cap)
{
    int count = 0;
    size_t hl = strlen(head);
    out[0] = 0;
    for (const char *p = help; (p = strstr(p, head)); p += hl) {
        if (p < help + 2 || p[-1] != ' ' || p[-2] != ' ' || (p > help + 2 && p[-3] != '\n')) continue;
        if (p[hl] != ' ' && p[hl] != '\n') continue;
        count++;
        const char *e = p;
        for (;;) {
            const char *nl = strchr(e, '\n');
            if (!nl) { e += strlen(e); break; }
            if (strncmp(nl + 1, "    ", 4) != 0) { e = nl; break; }
            e = nl + 1;
        }
        squeeze(p, (size_t)(e - p), out, cap);
    }
    return count;
}

static int contains_squeezed(const char *block, const char *text)
{
    char t[1024];
    squeeze(text, strlen(text), t, sizeof t);
    return strstr(block, t) != NULL;
}

/* Each '|'-separated value of values appears in block. */
static void expect_values_listed(const char *block, const char *values, const char *what)
{
    for (const char *p = values; *p;) {
        size_t n = strcspn(p, "|");
        char v[128];
        snprintf(v, sizeof v, " %.*s", (int)n, p);
        cr_expect(strstr(block, v), "%s: value '%s' not in its help: %s", what, v + 1, block);
        p += n + (p[n] ? 1 : 0);
    }
}

/* ---- sample, grid, run, inspect, tokenize ---------------------------------------------- */

/* The default the help shows agrees with the struct after the command's defaults. */
static void expect_default_true(const dl_opt *o, const void *obj, const char *cmd)
{
    const char *f = (const char *)obj + o->off;
    char *end;
    if (!o->def || o->kind == DL_OPT_FN || o->kind == DL_OPT_HELP) return;
    switch (o->kind) {
    case DL_OPT_FLAG:
        cr_expect_str_eq(o->def, "off", "%s %s", cmd, o->name);
        cr_expect_eq(*(const int *)f, 0, "%s %s", cmd, o->name);
        break;
    case DL_OPT_INT: {
        long long v = strtoll(o->def, &end, 10);
        if (!*end) cr_expect_eq(*(const int *)f, v, "%s %s: help says %s", cmd, o->name, o->def);
        else cr_expect_eq(*(const int *)f, 0, "%s %s: a default in words is 'not given'", cmd, o->name);
        break;
    }
    case DL_OPT_I64: {
        long long v = strtoll(o->def, &end, 10);
        cr_expect(!*end && *(const int64_t *)f == v, "%s %s: help says %s", cmd, o->name, o->def);
        break;
    }
    case DL_OPT_FLOAT: {
        double v = strtod(o->def, &end);
        cr_expect(!*end && *(const float *)f == (float)v, "%s %s: help says %s", cmd, o->name, o->def);
        break;
    }
    case DL_OPT_DOUBLE: {
        double v = strtod(o->def, &end);
        cr_expect(!*end && *(const double *)f == v, "%s %s: help says %s", cmd, o->name, o->def);
        break;
    }
    case DL_OPT_STR: {
        const char *s = *(const char *const *)f;
        if (s) cr_expect_str_eq(s, !strcmp(o->def, "empty") ? "" : o->def, "%s %s", cmd, o->name);
        break;
    }
    default: break;
    }
}

/* Parse argv = {cmd, name, value} against the tables; its result and *i. */
static int parse_one(const dl_optset *sets, int n, const char *cmd, const char *name, const char *value, int *i)
{
    char *argv[] = {(char *)cmd, (char *)name, (char *)value, NULL};
    *i = 1;
    fflush(stderr);
    int saved = dup(2);
    FILE *null = fopen("/dev/null", "w");
    dup2(fileno(null), 2);
    int r = dl_opt_parse(sets, n, cmd, value ? 3 : 2, argv, i);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(null);
    return r;
}

/* The parser takes the option, stores its value and refuses bad ones. */
static void expect_parsed(const dl_optset *sets, int n, int s, const dl_opt *o, const char *cmd)
{
    const char *f = (const char *)sets[s].obj + o->off;
    int i;
    switch (o->kind) {
    case DL_OPT_HELP:
        cr_expect_eq(parse_one(sets, n, cmd, o->name, NULL, &i), DL_OPT_WANTS_HELP, "%s %s", cmd, o->name);
        if (o->alias)
            cr_expect_eq(parse_one(sets, n, cmd, o->alias, NULL, &i), DL_OPT_WANTS_HELP, "%s %s", cmd, o->alias);
        return;
    case DL_OPT_FLAG:
        cr_expect_eq(parse_one(sets, n, cmd, o->name, NULL, &i), DL_OPT_CONSUMED, "%s %s", cmd, o->name);
        cr_expect_eq(i, 1);
        cr_expect_eq(*(const int *)f, 1, "%s %s: not stored", cmd, o->name);
        return;
    default: break;
    }
    /* every value-taking option needs its value */
    cr_expect_eq(parse_one(sets, n, cmd, o->name, NULL, &i), DL_OPT_BAD, "%s %s without a value", cmd, o->name);
    switch (o->kind) {
    case DL_OPT_STR:
        if (o->values) {
            for (const char *p = o->values; *p;) {
                size_t l = strcspn(p, "|");
                char v[128];
                snprintf(v, sizeof v, "%.*s", (int)l, p);
                cr_expect_eq(parse_one(sets, n, cmd, o->name, v, &i), DL_OPT_CONSUMED, "%s %s %s", cmd, o->name, v);
                cr_expect_str_eq(*(const char *const *)f, v, "%s %s", cmd, o->name);
                p += l + (p[l] ? 1 : 0);
            }
        } else {
            cr_expect_eq(parse_one(sets, n, cmd, o->name, "some/text", &i), DL_OPT_CONSUMED, "%s %s", cmd, o->name);
            cr_expect_eq(i, 2);
            cr_expect_str_eq(*(const char *const *)f, "some/text", "%s %s", cmd, o->name);
        }
        break;
    case DL_OPT_INT:
    case DL_OPT_I64: {
        long long want = (long long)o->lo + (o->lo + 1 <= o->hi ? 1 : 0);
        char v[64], over[64];
        snprintf(v, sizeof v, "%lld", want);
        snprintf(over, sizeof over, "%lld", (long long)o->hi + 1);
        cr_expect_eq(parse_one(sets, n, cmd, o->name, v, &i), DL_OPT_CONSUMED, "%s %s %s", cmd, o->name, v);
        cr_expect_eq(i, 2);
        long long got = o->kind == DL_OPT_INT ? *(const int *)f : (long long)*(const int64_t *)f;
        cr_expect_eq(got, want, "%s %s: stored %lld", cmd, o->name, got);
        cr_expect_eq(parse_one(sets, n, cmd, o->name, over, &i), DL_OPT_BAD, "%s %s %s accepted", cmd, o->name, over);
        cr_expect_eq(parse_one(sets, n, cmd, o->name, "abc", &i), DL_OPT_BAD, "%s %s abc accepted", cmd, o->name);
        break;
    }
    case DL_OPT_FLOAT:
    case DL_OPT_DOUBLE: {
        cr_expect_eq(parse_one(sets, n, cmd, o->name, "0.25", &i), DL_OPT_CONSUMED, "%s %s", cmd, o->name);
        double got = o->kind == DL_OPT_FLOAT ? *(const float *)f : *(const double *)f;
        cr_expect_eq(got, 0.25, "%s %s: stored %g", cmd, o->name, got);
        cr_expect_eq(parse_one(sets, n, cmd, o->name, "abc", &i), DL_OPT_BAD, "%s %s abc accepted", cmd, o->name);
        break;
    }
    case DL_OPT_FN:
        if (o->values) {
            for (const char *p = o->values; *p;) {
                size_t l = strcspn(p, "|");
                char v[128];
                snprintf(v, sizeof v, "%.*s", (int)l, p);
                cr_expect_eq(parse_one(sets, n, cmd, o->name, v, &i), DL_OPT_CONSUMED, "%s %s %s", cmd, o->name, v);
                p += l + (p[l] ? 1 : 0);
            }
            cr_expect_eq(parse_one(sets, n, cmd, o->name, "zz_bogus", &i), DL_OPT_BAD, "%s %s zz_bogus", cmd, o->name);
        } else {
            cr_expect_eq(parse_one(sets, n, cmd, o->name, "x.safetensors:0.5", &i), DL_OPT_CONSUMED, "%s %s", cmd,
                         o->name);
        }
        break;
    default: break;
    }
}

/* A value the command itself accepts for o (NULL for flags). */
static const char *good_value(const dl_opt *o, char *buf, size_t cap)
{
    switch (o->kind) {
    case DL_OPT_FLAG:
    case DL_OPT_HELP: return NULL;
    case DL_OPT_INT:
    case DL_OPT_I64: snprintf(buf, cap, "%lld", (long long)o->lo); return buf;
    case DL_OPT_FLOAT:
    case DL_OPT_DOUBLE: return "0.5";
    default:
        if (o->values) {
            snprintf(buf, cap, "%.*s", (int)strcspn(o->values, "|"), o->values);
            return buf;
        }
        return "x.safetensors";
    }
}

static void check_command(const char *cmd, cmd_fn fn, int (*optsets)(dl_optset *))
{
    char *help = capture_help(fn, cmd);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int n = optsets(sets);
    cr_assert(n >= 1 && n <= DL_CMD_MAX_OPTSETS);
    void *defs[DL_CMD_MAX_OPTSETS];
    int total = 0, has_help = 0;
    for (int s = 0; s < n; s++) {
        cr_expect_null(sets[s].obj, "%s: tables come without objects", cmd);
        sets[s].obj = calloc(1, sets[s].obj_size ? sets[s].obj_size : 1);
        defs[s] = calloc(1, sets[s].obj_size ? sets[s].obj_size : 1);
        if (sets[s].defaults) {
            sets[s].defaults(sets[s].obj);
            sets[s].defaults(defs[s]);
        }
    }
    for (int s = 0; s < n; s++)
        for (int k = 0; k < sets[s].n; k++) {
            const dl_opt *o = &sets[s].opts[k];
            char head[128], block[2048];
            snprintf(head, sizeof head, "%s%s%s", o->alias ? o->alias : "", o->alias ? ", " : "", o->name);
            total++;
            has_help |= o->kind == DL_OPT_HELP;
            /* listed once, with its meaning, default (or "required") and values */
            cr_expect_eq(entry(help, head, block, sizeof block), 1, "danlu %s --help: %s listed %d times", cmd, head,
                         entry(help, head, block, sizeof block));
            cr_expect(o->help && contains_squeezed(block, o->help), "%s %s: meaning missing: %s", cmd, o->name, block);
            if (o->def) {
                char d[256];
                snprintf(d, sizeof d, "(default: %s)", o->def);
                cr_expect(contains_squeezed(block, d), "%s %s: '%s' missing: %s", cmd, o->name, d, block);
            } else if (o->kind != DL_OPT_HELP) {
                cr_expect(strstr(block, "required"), "%s %s: neither a default nor required: %s", cmd, o->name, block);
            }
            if (o->values) expect_values_listed(block, o->values, o->name);
            if (o->meta) cr_expect(strstr(block, o->meta), "%s %s: placeholder %s missing", cmd, o->name, o->meta);
            expect_default_true(o, defs[s], cmd);
            /* the parser takes it */
            expect_parsed(sets, n, s, o, cmd);
            /* so does the command: OPTION [VALUE] --help stops at --help with 0 only when the
             * option before it was accepted */
            if (o->kind != DL_OPT_HELP) {
                char vb[64];
                const char *v = good_value(o, vb, sizeof vb);
                char *argv[] = {(char *)cmd, (char *)o->name, (char *)(v ? v : "--help"), "--help", NULL};
                cr_expect_eq(run_quiet(fn, v ? 4 : 3, argv), 0, "danlu %s %s %s --help: refused", cmd, o->name,
                             v ? v : "");
            }
        }
    cr_expect(has_help, "%s: no --help in its tables", cmd);
    cr_expect(total >= 2);
    /* and nothing else: every option line of the help names a table entry */
    for (const char *p = help; (p = strstr(p, "\n  -")); p++) {
        char name[64];
        size_t l = strcspn(p + 3, " ,\n");
        snprintf(name, sizeof name, "%.*s", (int)l, p + 3);
        cr_expect_not_null(dl_opt_find(sets, n, name, NULL), "danlu %s --help lists %s, which its parser refuses", cmd,
                           name);
    }
    /* an option that is in no table is refused by the command */
    char *bad[] = {(char *)cmd, "--no-such-option", "1", NULL};
    cr_expect_eq(run_quiet(fn, 3, bad), 2, "danlu %s --no-such-option accepted", cmd);
    for (int s = 0; s < n; s++) {
        free(sets[s].obj);
        free(defs[s]);
    }
    free(help);
}

Test(cli_help, sample_lists_and_accepts_every_option) { check_command("sample", dl_cmd_sample, dl_sample_optsets); }
Test(cli_help, grid_lists_and_accepts_every_option) { check_command("grid", dl_cmd_grid, dl_grid_optsets); }
Test(cli_help, run_lists_and_accepts_every_option) { check_command("run", dl_cmd_run, dl_run_optsets); }
Test(cli_help, inspect_lists_and_accepts_every_option) { check_command("inspect", dl_cmd_inspect, dl_inspect_optsets); }
Test(cli_help, verify_lists_and_accepts_every_option) { check_command("verify", dl_cmd_verify, dl_verify_optsets); }
Test(cli_help, tokenize_lists_and_accepts_every_option)
{
    check_command("tokenize", dl_cmd_tokenize, dl_tokenize_optsets);
}

/* The values the help lists are the ones the later checks accept. */
Test(cli_help, listed_values_are_the_accepted_ones)
{
    dl_optset sa = dl_sa_optset(NULL);
    /* --sampler lists exactly the sampler module's names */
    const dl_opt *o = dl_opt_find(&sa, 1, "--sampler", NULL);
    cr_assert_not_null(o);
    int listed = 0;
    for (const char *p = o->values; *p; listed++) {
        size_t l = strcspn(p, "|");
        char v[64];
        snprintf(v, sizeof v, "%.*s", (int)l, p);
        dl_sampler_kind k;
        cr_expect_eq(dl_sampler_kind_parse(v, &k), DL_OK, "--sampler lists '%s'", v);
        p += l + (p[l] ? 1 : 0);
    }
    cr_expect_eq(listed, DL_SAMPLER_COUNT, "--sampler lists %d of %d samplers", listed, DL_SAMPLER_COUNT);
    for (int k = 0; k < DL_SAMPLER_COUNT; k++)
        cr_expect(dl_opt_value_ok(o, dl_sampler_kind_name((dl_sampler_kind)k)), "%s not listed",
                  dl_sampler_kind_name((dl_sampler_kind)k));
    /* --schedule: what dl_sa_finish accepts */
    o = dl_opt_find(&sa, 1, "--schedule", NULL);
    cr_assert(o && o->values);
    cr_expect(dl_opt_value_ok(o, "karras") && dl_opt_value_ok(o, "normal") && !dl_opt_value_ok(o, "exponential"));
    /* run --component: every listed component gets past the check (then fails on the missing
     * inputs file: exit 1), an unlisted one is a usage error (2) */
    dl_optset rs[DL_CMD_MAX_OPTSETS];
    int nr = dl_run_optsets(rs);
    o = dl_opt_find(rs, nr, "--component", NULL);
    cr_assert(o && o->values);
    for (const char *p = o->values; *p;) {
        size_t l = strcspn(p, "|");
        char v[64];
        snprintf(v, sizeof v, "%.*s", (int)l, p);
        char *argv[] = {"run", "--model", "/nonexistent/m", "--component", v, "--inputs", "/nonexistent/in.safetensors",
                        "--out", "/nonexistent/out.safetensors", NULL};
        cr_expect_eq(run_quiet(dl_cmd_run, 9, argv), 1, "run --component %s", v);
        p += l + (p[l] ? 1 : 0);
    }
    char *argv[] = {"run", "--model", "/nonexistent/m", "--component", "vae", "--inputs", "/nonexistent/in.safetensors",
                    "--out", "/nonexistent/out.safetensors", NULL};
    cr_expect_eq(run_quiet(dl_cmd_run, 9, argv), 2);
}

/* ---- train -------------------------------------------------------------------------------- */

#define REQ "--pretrained_model_name_or_path", "m.safetensors", "--train_data_dir", "d", "--output_dir", "o"

/* The command the train/finetune tests below look at: 0 `danlu train`, 1 `danlu finetune`,
 * DL_TRAIN_VAE `danlu train-vae` (one key table; each test runs in its own process). */
static int g_ft;

/* Parse the required keys, --sample_prompts (so the sampling keys are valid) and extra. */
static int train_parse(dl_train_config *c, const char *name, const char *value, FILE *warn)
{
    char flag[160];
    snprintf(flag, sizeof flag, "--%s", name);
    const char *argv[] = {g_ft == DL_TRAIN_VAE ? "train-vae" : g_ft ? "finetune" : "train", REQ, "--sample_prompts",
                          "p.txt", flag, value, NULL};
    dl_train_config_defaults_for(c, g_ft);
    if (g_ft == DL_TRAIN_VAE) { /* no sample images: without --sample_prompts */
        argv[7] = flag, argv[8] = value;
        return dl_train_config_parse_args(c, value ? 9 : 8, (char **)argv, warn);
    }
    return dl_train_config_parse_args(c, value ? 11 : 10, (char **)argv, warn);
}

/* The key's value in the configuration's JSON (a cJSON the caller deletes with root). */
static cJSON *json_key(const dl_train_config *c, const char *name, cJSON **root)
{
    char *s = dl_train_config_to_json(c);
    *root = cJSON_Parse(s);
    free(s);
    cr_assert_not_null(*root);
    return cJSON_GetObjectItemCaseSensitive(*root, name);
}

static void train_expect_accepted(const dl_train_key *k)
{
    dl_train_config c;
    cJSON *root, *j;
    char v[128];
    switch (k->kind) {
    case DL_TKEY_BOOL:
        cr_expect_eq(train_parse(&c, k->name, NULL, NULL), DL_OK, "--%s: %s", k->name, dl_error_msg());
        j = json_key(&c, k->name, &root);
        cr_expect(cJSON_IsTrue(j), "--%s not stored", k->name);
        cJSON_Delete(root);
        dl_train_config_free(&c);
        cr_expect_eq(train_parse(&c, k->name, "false", NULL), DL_OK, "--%s false: %s", k->name, dl_error_msg());
        dl_train_config_free(&c);
        return;
    case DL_TKEY_LIST: {
        cr_assert_not_null(k->values, "--%s: its accepted KEYs are not listed", k->name);
        for (const char *p = k->values; *p;) {
            size_t l = strcspn(p, "|");
            snprintf(v, sizeof v, "%.*s=1", (int)l, p);
            int rc = train_parse(&c, k->name, v, NULL);
            cr_expect(rc == DL_OK || !strstr(dl_error_msg(), "unknown argument"), "--%s %s: %s", k->name, v,
                      dl_error_msg());
            if (rc == DL_OK) {
                j = json_key(&c, k->name, &root);
                cr_expect(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 1 &&
                          !strcmp(cJSON_GetArrayItem(j, 0)->valuestring, v), "--%s %s not stored", k->name, v);
                cJSON_Delete(root);
            }
            dl_train_config_free(&c);
            p += l + (p[l] ? 1 : 0);
        }
        cr_expect_neq(train_parse(&c, k->name, "zz_bogus=1", NULL), DL_OK);
        cr_expect(strstr(dl_error_msg(), "unknown argument"), "--%s zz_bogus=1: %s", k->name, dl_error_msg());
        dl_train_config_free(&c);
        return;
    }
    case DL_TKEY_STR:
        if (k->values) {
            for (const char *p = k->values; *p;) {
                size_t l = strcspn(p, "|");
                snprintf(v, sizeof v, "%.*s", (int)l, p);
                cr_expect_eq(train_parse(&c, k->name, v, NULL), DL_OK, "--%s %s: %s", k->name, v, dl_error_msg());
                j = json_key(&c, k->name, &root);
                cr_expect(cJSON_IsString(j) && !strcmp(j->valuestring, v), "--%s %s not stored", k->name, v);
                cJSON_Delete(root);
                dl_train_config_free(&c);
                if (!strcmp(k->name, "sample_sampler"))
                    cr_expect_eq(dl_train_sampler_check(v), DL_OK, "sample_sampler lists '%s'", v);
                p += l + (p[l] ? 1 : 0);
            }
            /* an unlisted value is refused: by the configuration's check, or for the sampler
             * when training starts */
            int rc = train_parse(&c, k->name, "zz_bogus", NULL);
            dl_train_config_free(&c);
            if (!strcmp(k->name, "sample_sampler")) cr_expect_neq(dl_train_sampler_check("zz_bogus"), DL_OK);
            else cr_expect_neq(rc, DL_OK, "--%s zz_bogus accepted", k->name);
        } else {
            const char *cand[] = {"x", "64"};
            int ok = 0;
            for (int t = 0; t < 2 && !ok; t++) {
                if (train_parse(&c, k->name, cand[t], NULL) == DL_OK) {
                    j = json_key(&c, k->name, &root);
                    cr_expect(cJSON_IsString(j) && !strcmp(j->valuestring, cand[t]), "--%s not stored", k->name);
                    cJSON_Delete(root);
                    ok = 1;
                }
                dl_train_config_free(&c);
            }
            cr_expect(ok, "--%s: no value accepted", k->name);
        }
        return;
    default: {
        /* numbers: a value other than the default, inside the range */
        double def = k->def ? atof(k->def) : NAN, cand[] = {k->lo, k->lo + 1, k->hi};
        int ok = 0;
        for (int t = 0; t < 3 && !ok; t++) {
            if (cand[t] == def || cand[t] > k->hi) continue;
            snprintf(v, sizeof v, "%.17g", cand[t]);
            if (train_parse(&c, k->name, v, NULL) == DL_OK) {
                j = json_key(&c, k->name, &root);
                cr_expect(cJSON_IsNumber(j) && j->valuedouble == cand[t], "--%s %s not stored", k->name, v);
                cJSON_Delete(root);
                ok = 1;
            }
            dl_train_config_free(&c);
        }
        cr_expect(ok, "--%s: no value accepted", k->name);
        cr_expect_neq(train_parse(&c, k->name, "abc", NULL), DL_OK, "--%s abc accepted", k->name);
        dl_train_config_free(&c);
        if (k->optional) {
            cr_expect_eq(train_parse(&c, k->name, "none", NULL), DL_OK, "--%s none: %s", k->name, dl_error_msg());
            dl_train_config_free(&c);
        }
        return;
    }
    }
}

/* 1 when name is a key of the command g_ft names */
static int key_of_command(const char *name)
{
    for (int i = 0; i < dl_train_config_n_keys(); i++)
        if (!strcmp(dl_train_config_key(i)->name, name)) return dl_train_key_applies(dl_train_config_key(i), g_ft);
    return 0;
}

static void help_lists_every_key_with_its_default(void)
{
    char *help = g_ft == DL_TRAIN_VAE ? capture_help(dl_cmd_train_vae, "train-vae")
                 : g_ft             ? capture_help(dl_cmd_finetune, "finetune")
                                    : capture_help(dl_cmd_train, "train");
    dl_train_config d;
    dl_train_config_defaults_for(&d, g_ft);
    cJSON *root;
    int n = dl_train_config_n_keys();
    cr_assert(n > 50);
    for (int i = 0; i < n; i++) {
        const dl_train_key *k = dl_train_config_key(i);
        char head[160], block[2048], tail[256];
        snprintf(head, sizeof head, "--%s", k->name);
        if (!dl_train_key_applies(k, g_ft)) { /* the other command's option: not listed */
            cr_expect_eq(entry(help, head, block, sizeof block), 0, "%s --help lists %s", g_ft ? "finetune" : "train",
                         head);
            continue;
        }
        cr_expect_eq(entry(help, head, block, sizeof block), 1, "train --help: %s listed %d times", head,
                     entry(help, head, block, sizeof block));
        cr_expect(contains_squeezed(block, k->help), "%s: meaning missing: %s", head, block);
        if (k->meta) cr_expect(strstr(block, k->meta), "%s: placeholder missing", head);
        else cr_expect_eq(k->kind, DL_TKEY_BOOL, "%s: no placeholder for a value", head);
        cJSON *j = json_key(&d, k->name, &root);
        if (k->required) {
            snprintf(tail, sizeof tail, "(required)");
            cr_expect(cJSON_IsNull(j));
        } else if (k->kind == DL_TKEY_BOOL) {
            snprintf(tail, sizeof tail, "(default: %s)", cJSON_IsTrue(j) ? "on" : "off");
        } else if (!k->def) {
            /* shown unset / none: nothing is set */
            snprintf(tail, sizeof tail, "(default: %s)", k->optional ? "unset" : "none");
            cr_expect(cJSON_IsNull(j) || (cJSON_IsArray(j) && cJSON_GetArraySize(j) == 0), "%s: has a default", head);
        } else {
            snprintf(tail, sizeof tail, "(default: %s)", k->def);
            if (cJSON_IsNumber(j)) cr_expect_eq(j->valuedouble, atof(k->def), "%s", head);
            else if (cJSON_IsString(j)) cr_expect_str_eq(j->valuestring, k->def, "%s", head);
        }
        cJSON_Delete(root);
        cr_expect(strstr(block, tail), "%s: '%s' missing: %s", head, tail, block);
        if (k->values) expect_values_listed(block, k->values, k->name);
        cr_expect_str_neq((char *)dl_train_config_group_name(k->group), "", "%s", head);
    }
    /* the config-file flags, -h/--help and every ignored sd-scripts flag are listed too */
    for (int i = 0; i < dl_train_config_n_file_flags(); i++) {
        char head[64], block[1024];
        snprintf(head, sizeof head, "--%s", dl_train_config_file_flag(i)->name);
        cr_expect_eq(entry(help, head, block, sizeof block), 1, "%s", head);
    }
    char block[2048];
    cr_expect_eq(entry(help, "-h, --help", block, sizeof block), 1);
    cr_expect_eq(entry(help, "(ignored)", block, sizeof block), 1);
    for (int i = 0; i < dl_train_config_n_ignored(); i++) {
        char flag[80];
        snprintf(flag, sizeof flag, " --%s", dl_train_config_ignored(i));
        if (key_of_command(dl_train_config_ignored(i))) cr_expect(!strstr(block, flag), "%s is a key, not ignored", flag);
        else cr_expect(strstr(block, flag), "ignored%s not listed", flag);
    }
    /* every option line names a key or a config-file flag */
    for (const char *p = help; (p = strstr(p, "\n  --")); p++) {
        char name[96];
        size_t l = strcspn(p + 5, " \n");
        snprintf(name, sizeof name, "%.*s", (int)l, p + 5);
        int found = 0;
        for (int i = 0; i < n; i++) found |= !strcmp(dl_train_config_key(i)->name, name) && key_of_command(name);
        for (int i = 0; i < dl_train_config_n_file_flags(); i++) found |= !strcmp(dl_train_config_file_flag(i)->name, name);
        cr_expect(found, "train --help lists --%s, which is not in the table", name);
    }
    /* every heading shown has options; train shows every heading */
    for (int g = 0; g < dl_train_config_n_groups(); g++) {
        int used = g == dl_train_config_n_groups() - 1; /* "other" holds --help */
        for (int i = 0; i < n; i++) used |= dl_train_config_key(i)->group == g && dl_train_key_applies(dl_train_config_key(i), g_ft);
        for (int i = 0; i < dl_train_config_n_file_flags(); i++) used |= dl_train_config_file_flag(i)->group == g;
        char h[128];
        snprintf(h, sizeof h, "\n%s:\n", dl_train_config_group_name(g));
        if (g_ft) cr_expect_eq(strstr(help, h) != NULL, used, "heading '%s' shown %d, has options %d",
                               dl_train_config_group_name(g), strstr(help, h) != NULL, used);
        else cr_expect(used, "heading '%s' is empty", dl_train_config_group_name(g));
    }
    dl_train_config_free(&d);
    free(help);
}

Test(cli_help, train_lists_every_key_with_its_default) { help_lists_every_key_with_its_default(); }

Test(cli_help, finetune_lists_every_key_with_its_default)
{
    g_ft = 1;
    help_lists_every_key_with_its_default();
}

/* finetune: its keys accepted, the LoRA trainer's refused as unknown, --help anywhere */
Test(cli_help, finetune_accepts_every_listed_option)
{
    g_ft = 1;
    for (int i = 0; i < dl_train_config_n_keys(); i++) {
        const dl_train_key *k = dl_train_config_key(i);
        if (dl_train_key_applies(k, 1)) {
            train_expect_accepted(k);
            continue;
        }
        dl_train_config c;
        cr_expect_neq(train_parse(&c, k->name, k->kind == DL_TKEY_BOOL ? NULL : "1", NULL), DL_OK, "--%s accepted",
                      k->name);
        cr_expect(strstr(dl_error_msg(), "unknown option") && strstr(dl_error_msg(), k->name), "--%s: %s", k->name,
                  dl_error_msg());
        dl_train_config_free(&c);
    }
    char *argv[] = {"finetune", "--max_train_steps", "8", "-h", NULL};
    char *buf = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&buf, &len);
    cr_expect_eq(dl_cmd_finetune(4, argv, o), 0);
    fclose(o);
    cr_expect(buf && strstr(buf, "--save_model_as NAME") && !strstr(buf, "--network_dim"));
    free(buf);
}

Test(cli_help, train_vae_lists_every_key_with_its_default)
{
    g_ft = DL_TRAIN_VAE;
    help_lists_every_key_with_its_default();
}

/* train-vae: its keys accepted; the LoRA trainer's, finetune's own and those that mean nothing to
 * a VAE (captions, text encoder, noise schedule, samples) refused as unknown; --help anywhere */
Test(cli_help, train_vae_accepts_every_listed_option)
{
    g_ft = DL_TRAIN_VAE;
    for (int i = 0; i < dl_train_config_n_keys(); i++) {
        const dl_train_key *k = dl_train_config_key(i);
        if (dl_train_key_applies(k, DL_TRAIN_VAE)) {
            train_expect_accepted(k);
            continue;
        }
        dl_train_config c;
        cr_expect_neq(train_parse(&c, k->name, k->kind == DL_TKEY_BOOL ? NULL : "1", NULL), DL_OK, "--%s accepted",
                      k->name);
        cr_expect(strstr(dl_error_msg(), "unknown option") && strstr(dl_error_msg(), k->name), "--%s: %s", k->name,
                  dl_error_msg());
        dl_train_config_free(&c);
    }
    char *argv[] = {"train-vae", "--max_train_steps", "8", "-h", NULL};
    char *buf = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&buf, &len);
    cr_expect_eq(dl_cmd_train_vae(4, argv, o), 0);
    fclose(o);
    cr_expect(buf && strstr(buf, "--kl_weight X") && strstr(buf, "--save_model_as NAME") &&
              !strstr(buf, "--network_dim") && !strstr(buf, "--clip_skip"));
    free(buf);
}

Test(cli_help, train_accepts_every_listed_option)
{
    for (int i = 0; i < dl_train_config_n_keys(); i++)
        if (dl_train_key_applies(dl_train_config_key(i), 0)) train_expect_accepted(dl_train_config_key(i));
    /* --config / --config_file (both spellings, =value too) */
    char path[256];
    snprintf(path, sizeof path, "/tmp/danlu_test_help_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"network_dim\": 7}", f);
    fclose(f);
    for (int i = 0; i < dl_train_config_n_file_flags(); i++) {
        dl_train_config c;
        cr_expect_eq(train_parse(&c, dl_train_config_file_flag(i)->name, path, NULL), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(c.network_dim, 7, "--%s not read", dl_train_config_file_flag(i)->name);
        dl_train_config_free(&c);
        char eq[512];
        snprintf(eq, sizeof eq, "--%s=%s", dl_train_config_file_flag(i)->name, path);
        const char *argv[] = {"train", REQ, eq, NULL};
        dl_train_config_defaults(&c);
        cr_expect_eq(dl_train_config_parse_args(&c, 8, (char **)argv, NULL), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(c.network_dim, 7);
        dl_train_config_free(&c);
    }
    unlink(path);
    /* the ignored flags: accepted with a warning naming them */
    for (int i = 0; i < dl_train_config_n_ignored(); i++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *w = open_memstream(&buf, &len);
        dl_train_config c;
        cr_expect_eq(train_parse(&c, dl_train_config_ignored(i), NULL, w), DL_OK, "%s", dl_error_msg());
        fclose(w);
        cr_expect(buf && strstr(buf, dl_train_config_ignored(i)), "--%s: no warning", dl_train_config_ignored(i));
        free(buf);
        dl_train_config_free(&c);
    }
    /* anything else is refused */
    dl_train_config c;
    cr_expect_neq(train_parse(&c, "no_such_option", "1", NULL), DL_OK);
    dl_train_config_free(&c);
    /* --help anywhere prints the help */
    char *argv[] = {"train", "--network_dim", "8", "-h", NULL};
    char *buf = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&buf, &len);
    cr_expect_eq(dl_cmd_train(4, argv, o), 0);
    fclose(o);
    cr_expect(buf && strstr(buf, "--min_snr_gamma X"));
    free(buf);
}
