/* cmd_inspect.c - `danlu inspect FILE`: list the tensors and metadata of a .safetensors file. */
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu inspect [--no-meta] FILE.safetensors...\n"
               "  Lists every tensor (name, dtype, shape, bytes) and the __metadata__ of each file.\n");
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const dl_st_tensor *)a)->name, ((const dl_st_tensor *)b)->name);
}

int dl_cmd_inspect(int argc, char **argv, FILE *out)
{
    int show_meta = 1, nfiles = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) { usage(out); return 0; }
        if (strcmp(argv[i], "--no-meta") == 0) { show_meta = 0; continue; }
        if (argv[i][0] == '-') {
            fprintf(stderr, "danlu inspect: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        nfiles++;
    }
    if (nfiles == 0) { usage(stderr); return 2; }
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
