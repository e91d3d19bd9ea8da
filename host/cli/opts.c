/* opts.c - the table-driven option parser and help printer of the danlu subcommands. */
#include "cli/opts.h"
#include "backend/backend.h"
#include "core/ctx.h"
#include "core/error.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HELP_WIDTH 100
#define HELP_COL 32 /* where the meanings start */

static int matches(const dl_opt *o, const char *arg)
{
    return !strcmp(o->name, arg) || (o->alias && !strcmp(o->alias, arg));
}

const dl_opt *dl_opt_find(const dl_optset *sets, int nsets, const char *arg, int *set_index)
{
    for (int s = 0; s < nsets; s++)
        for (int k = 0; k < sets[s].n; k++)
            if (matches(&sets[s].opts[k], arg)) {
                if (set_index) *set_index = s;
                return &sets[s].opts[k];
            }
    return NULL;
}

int dl_opt_value_ok(const dl_opt *o, const char *v)
{
    if (!o || !o->values) return 1;
    size_t n = strlen(v);
    for (const char *p = o->values; *p;) {
        size_t k = strcspn(p, "|");
        if (k == n && !strncmp(p, v, n)) return 1;
        p += k + (p[k] ? 1 : 0);
    }
    return 0;
}

const dl_opt dl_opt_help_table[1] = {
    {"--help", "-h", DL_OPT_HELP, 0, NULL, NULL, 0, 0, NULL, NULL, "other", "print this help and exit"},
};

int dl_opt_takes_value(const dl_opt *o)
{
    return o->kind != DL_OPT_HELP && o->kind != DL_OPT_FLAG;
}

static int parse_int(const char *cmd, const char *opt, const char *s, double lo, double hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || (double)v < lo || (double)v > hi) {
        fprintf(stderr, "danlu %s: %s '%s' must be an integer in %lld..%lld\n", cmd, opt, s, (long long)lo,
                (long long)hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_num(const char *cmd, const char *opt, const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || v != v) {
        fprintf(stderr, "danlu %s: %s '%s' is not a number\n", cmd, opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int dl_opt_parse(const dl_optset *sets, int nsets, const char *cmd, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];
    int si = 0;
    const dl_opt *o = dl_opt_find(sets, nsets, arg, &si);
    if (!o) return DL_OPT_NOT_OURS;
    char *field = (char *)sets[si].obj + o->off;
    if (o->kind == DL_OPT_HELP) return DL_OPT_WANTS_HELP;
    if (o->kind == DL_OPT_FLAG) {
        *(int *)field = 1;
        return DL_OPT_CONSUMED;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "danlu %s: %s needs a value\n", cmd, arg);
        return DL_OPT_BAD;
    }
    const char *v = argv[++*i];
    int64_t n;
    double d;
    switch (o->kind) {
    case DL_OPT_STR: *(const char **)field = v; break;
    case DL_OPT_INT:
        if (parse_int(cmd, arg, v, o->lo, o->hi, &n) < 0) return DL_OPT_BAD;
        *(int *)field = (int)n;
        break;
    case DL_OPT_I64:
        if (parse_int(cmd, arg, v, o->lo, o->hi, &n) < 0) return DL_OPT_BAD;
        *(int64_t *)field = n;
        break;
    case DL_OPT_FLOAT:
        if (parse_num(cmd, arg, v, &d) < 0) return DL_OPT_BAD;
        *(float *)field = (float)d;
        break;
    case DL_OPT_DOUBLE:
        if (parse_num(cmd, arg, v, &d) < 0) return DL_OPT_BAD;
        *(double *)field = d;
        break;
    case DL_OPT_FN:
        if (o->set(sets[si].obj, cmd, arg, v) < 0) return DL_OPT_BAD;
        break;
    default: break;
    }
    return DL_OPT_CONSUMED;
}

/* Greedy word wrap of text from column col (the cursor is there already); whole: text is one
 * word (never broken). */
static int put_words(FILE *f, const char *text, int col, int whole)
{
    const char *p = text;
    while (*p) {
        while (*p == ' ') p++;
        if (!*p) break;
        size_t n = whole ? strlen(p) : strcspn(p, " ");
        if (col > HELP_COL && col + 1 + (int)n > HELP_WIDTH) {
            fprintf(f, "\n%*s", HELP_COL, "");
            col = HELP_COL;
        } else if (col > HELP_COL) {
            fputc(' ', f);
            col++;
        }
        fwrite(p, 1, n, f);
        col += (int)n;
        p += n;
    }
    return col;
}

void dl_help_entry(FILE *f, const char *flag, const char *meaning, const char *values, const char *tail)
{
    int col = fprintf(f, "  %s", flag);
    if (col + 2 > HELP_COL) {
        fprintf(f, "\n%*s", HELP_COL, "");
        col = HELP_COL;
    } else {
        col += fprintf(f, "%*s", HELP_COL - col, "");
    }
    col = put_words(f, meaning ? meaning : "", col, 0);
    if (values) {
        char buf[512];
        size_t k = (size_t)snprintf(buf, sizeof buf, "; one of:");
        for (const char *v = values; *v && k + 4 < sizeof buf;) {
            size_t n = strcspn(v, "|");
            k += (size_t)snprintf(buf + k, sizeof buf - k, " %.*s%s", (int)n, v, v[n] ? "," : "");
            v += n + (v[n] ? 1 : 0);
        }
        /* "; one of:" sticks to the meaning */
        if (col > HELP_COL) {
            fputc(';', f);
            col++;
        }
        col = put_words(f, buf + 1, col, 0);
    }
    if (tail) {
        char buf[512];
        snprintf(buf, sizeof buf, "(%s)", tail);
        col = put_words(f, buf, col, 1);
    }
    (void)col;
    fputc('\n', f);
}

void dl_opt_usage(FILE *f, const dl_optset *sets, int nsets)
{
    const char *groups[64];
    int ng = 0;
    for (int s = 0; s < nsets; s++)
        for (int k = 0; k < sets[s].n; k++) {
            const char *g = sets[s].opts[k].group;
            int seen = 0;
            for (int j = 0; j < ng; j++) seen |= !strcmp(groups[j], g);
            if (!seen && ng < 64) groups[ng++] = g;
        }
    for (int j = 0; j < ng; j++) {
        fprintf(f, "\n%s:\n", groups[j]);
        for (int s = 0; s < nsets; s++)
            for (int k = 0; k < sets[s].n; k++) {
                const dl_opt *o = &sets[s].opts[k];
                if (strcmp(o->group, groups[j])) continue;
                char flag[128], tail[256];
                snprintf(flag, sizeof flag, "%s%s%s%s%s", o->alias ? o->alias : "", o->alias ? ", " : "", o->name,
                         o->meta ? " " : "", o->meta ? o->meta : "");
                if (o->def) snprintf(tail, sizeof tail, "default: %s", o->def);
                dl_help_entry(f, flag, o->help, o->values, o->def ? tail : NULL);
            }
    }
}

int dl_opt_parse_argv(const char *cmd, const dl_optset *sets, int nsets, int argc, char **argv, const char **pos,
                      int max_pos, int *npos, void (*usage)(FILE *), FILE *out)
{
    *npos = 0;
    for (int i = 1; i < argc; i++) {
        int r = dl_opt_parse(sets, nsets, cmd, argc, argv, &i);
        if (r == DL_OPT_WANTS_HELP) {
            usage(out);
            return -1;
        }
        if (r < 0) return 2;
        if (r == DL_OPT_CONSUMED) continue;
        if (argv[i][0] == '-' || *npos == max_pos) {
            fprintf(stderr, "danlu %s: %s '%s'\n", cmd, argv[i][0] == '-' ? "unknown option" : "unexpected argument",
                    argv[i]);
            usage(stderr);
            return 2;
        }
        pos[(*npos)++] = argv[i];
    }
    return 0;
}

int dl_cli_ctx_init(struct dl_ctx *ctx, const char *cmd, int threads, const char *backend)
{
    const dl_backend *be = dl_backend_find(backend ? backend : "auto");
    if (!be || dl_ctx_init_backend(ctx, threads, be) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", cmd, dl_error_msg());
        return -1;
    }
    if (be != &dl_backend_cpu) { /* the device and its memory, once */
        char desc[256];
        be->describe(ctx, desc, sizeof desc);
        fprintf(stderr, "danlu %s: backend %s\n", cmd, desc);
    }
    return 0;
}
