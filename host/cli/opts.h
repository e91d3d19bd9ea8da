/* opts.h - option tables of the danlu subcommands. Each command describes the options it
 * accepts in one or more tables (name, kind, where the value goes, default, accepted values,
 * group, one-line meaning); the same tables drive the argv parser and `danlu <command> --help`,
 * so the help cannot list an option the parser does not take, or miss one it does. */
#ifndef DANLU_CLI_OPTS_H
#define DANLU_CLI_OPTS_H

#include <stddef.h>
#include <stdio.h>

typedef enum dl_opt_kind {
    DL_OPT_HELP,   /* --help / -h: print the help and exit */
    DL_OPT_FLAG,   /* int field set to 1, no value */
    DL_OPT_STR,    /* const char * field pointing into argv */
    DL_OPT_INT,    /* int field, integer in [lo, hi] */
    DL_OPT_I64,    /* int64_t field, integer in [lo, hi] */
    DL_OPT_FLOAT,  /* float field, any number (not NaN) */
    DL_OPT_DOUBLE, /* double field, any number (not NaN) */
    DL_OPT_FN,     /* the value goes to set() */
} dl_opt_kind;

typedef struct dl_opt {
    const char *name;    /* "--model" */
    const char *alias;   /* another spelling ("-h") or NULL */
    dl_opt_kind kind;
    size_t off;          /* offset of the field in the command's argument struct */
    const char *meta;    /* value placeholder in the help ("PATH", "N"); NULL for flags */
    const char *def;     /* the default as shown in the help; NULL: none */
    double lo, hi;       /* DL_OPT_INT / DL_OPT_I64 range */
    const char *values;  /* accepted values, '|'-separated, or NULL (any) */
    /* DL_OPT_FN: store value; print "danlu CMD: ..." and return -1 when it is bad, else 0 */
    int (*set)(void *obj, const char *cmd, const char *opt, const char *value);
    const char *group;   /* heading in the help */
    const char *help;    /* one-line meaning */
} dl_opt;

/* One table and the struct its offsets point into. */
typedef struct dl_optset {
    const dl_opt *opts;
    int n;
    void *obj;
    size_t obj_size;               /* sizeof the struct (for tests) */
    void (*defaults)(void *obj);   /* fills the struct with the defaults the help shows */
} dl_optset;

#define DL_OPT_CONSUMED 1
#define DL_OPT_NOT_OURS 0
#define DL_OPT_BAD (-1)
#define DL_OPT_WANTS_HELP 2

/* Try argv[*i] against the tables. Returns DL_OPT_CONSUMED (*i advanced past its value),
 * DL_OPT_NOT_OURS, DL_OPT_BAD (message "danlu CMD: ..." printed to stderr) or
 * DL_OPT_WANTS_HELP. */
int dl_opt_parse(const dl_optset *sets, int nsets, const char *cmd, int argc, char **argv, int *i);
/* The option named arg (name or alias) and, if set_index is not NULL, its table. NULL if none. */
const dl_opt *dl_opt_find(const dl_optset *sets, int nsets, const char *arg, int *set_index);
/* 1 if v is one of o's values (or o has no list of values). */
int dl_opt_value_ok(const dl_opt *o, const char *v);
/* The help option of every command (-h, --help), a table of one for the commands' lists. */
extern const dl_opt dl_opt_help_table[1];
/* 1 if the option reads a value from the next argument. */
int dl_opt_takes_value(const dl_opt *o);
/* Every option of the tables, grouped by heading (headings in order of first appearance). */
void dl_opt_usage(FILE *f, const dl_optset *sets, int nsets);

/* A command's whole argument loop: argv[1..argc) against the tables, arguments that are not
 * options collected into pos (at most max_pos; *npos gets their number). Returns 0 (parsed),
 * -1 (--help: usage(out) printed, the command returns 0) or 2 (a message and usage on
 * stderr: a bad value, an unknown option, or an argument too many). */
int dl_opt_parse_argv(const char *cmd, const dl_optset *sets, int nsets, int argc, char **argv, const char **pos,
                      int max_pos, int *npos, void (*usage)(FILE *), FILE *out);

/* One help entry: "  FLAG  meaning; one of: a, b (TAIL)", wrapped at 100 columns with the
 * continuation lines indented. values ('|'-separated) and tail ("default: 512", "required")
 * may be NULL. */
/* The ctx of a command on the backend named by --backend (backend/backend.h: "cpu", "cuda"):
 * dl_ctx_init_backend with that table, the error printed as "danlu CMD: ..." and -1 on
 * failure, 0 on success. */
struct dl_ctx;
int dl_cli_ctx_init(struct dl_ctx *ctx, const char *cmd, int threads, const char *backend);
/* The --backend option's help (one place for every command's table). */
#define DL_OPT_BACKEND_HELP                                                                                       \
    "where the ops run: cpu, cuda (an NVIDIA GPU; the emulated device with DANLU_CUDA_DEVICE=emulated), or auto "    \
    "(cuda when a GPU is usable, else cpu)"

void dl_help_entry(FILE *f, const char *flag, const char *meaning, const char *values, const char *tail);

#endif
