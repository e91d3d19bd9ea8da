/* cmd_inspect.c - `danlu inspect FILE`: list the tensors and metadata of a .safetensors file. */
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int no_meta;
} inspect_args;

static void inspect_defaults(void *obj)
{
    memset(obj, 0, sizeof(inspect_args));
}

static const dl_opt k_inspect_opts[] = {
    {"--no-meta", NULL, DL_OPT_FLAG, offsetof(inspect_args, no_meta), NULL, "off", 0, 0, NULL, NULL, "options",
     "list the tensors only, not the __metadata__"},
};

int dl_inspect_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_inspect_opts, (int)(sizeof k_inspect_opts / sizeof *k_inspect_opts), NULL,
                          sizeof(inspect_args), inspect_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu inspect [--no-meta] FILE.safetensors...\n"
               "  Lists every tensor (name, dtype, shape, bytes) and the __metadata__ of each file.\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_inspect_optsets(sets));
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const dl_st_tensor *)a)->name, ((const dl_st_tensor *)b)->name);
}

int dl_cmd_inspect(int argc, char **argv, FILE *out)
{
    int nfiles = 0, rc = 0;
    inspect_args ia;
    inspect_defaults(&ia);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_inspect_optsets(sets);
    sets[0].obj = &ia;
    for (int i = 1; i < argc; i++) {
        int r = dl_opt_parse(sets, nsets, "inspect", argc, argv, &i);
        if (r == DL_OPT_WANTS_HELP) { usage(out); return 0; }
        if (r < 0) return 2;
        if (r == DL_OPT_CONSUMED) continue;
        if (argv[i][0] == '-') {
            fprintf(stderr, "danlu inspect: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        nfiles++;
    }
    if (nfiles == 0) { usage(stderr); return 2; }
    int show_meta = !ia.no_meta;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-') continue;
        dl_st_file f;
        if (dl_st_open(&f, argv[i]) != DL_OK) {
            fprintf(stderr, "danlu inspect: %s\n", dl_error_msg());
            dl_st_close(&f);
            rc = 1;
            continue;
        }
        qsort(f.tensors, (size_t)f.n_tensors, sizeof *f.tensors, cmp_name);
        uint64_t total = 0;
        fprintf(out, "%s: %d tensors\n", argv[i], f.n_tensors);
        for (int t = 0; t < f.n_tensors; t++) {
            const dl_st_tensor *x = &f.tensors[t];
            char sh[160];
            fprintf(out, "  %-60s %-5s %-22s %llu\n", x->name, dl_dtype_name(x->dtype),
                    dl_shape_str(x->shape, x->ndim, sh, sizeof sh), (unsigned long long)(x->end - x->begin));
            total += x->end - x->begin;
        }
        fprintf(out, "  total %llu bytes of tensor data\n", (unsigned long long)total);
        if (show_meta && f.n_meta) {
            fprintf(out, "metadata (%d keys):\n", f.n_meta);
            for (int m = 0; m < f.n_meta; m++) fprintf(out, "  %s = %s\n", f.meta_keys[m], f.meta_vals[m]);
        }
        dl_st_close(&f);
    }
    return rc;
}
