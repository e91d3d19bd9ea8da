/* shapes.c - danlu-shapes: writes the procedural shapes training set (train/shapes.h) as an
 * sd-scripts dataset folder: 64x64 images of one centred shape in one palette colour on
 * another, with captions ("a red circle on a blue background"), or the ringstyle set (outlines,
 * "ringstyle, ..."). Deterministic by seed. */
#include "cli/opts.h"
#include "core/error.h"
#include "train/shapes.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct args {
    const char *out, *style;
    int count, size, repeats;
    int64_t seed;
} args;

#define A(f) offsetof(args, f)
static const dl_opt k_opts[] = {
    {"--out", "-o", DL_OPT_STR, A(out), "DIR", NULL, 0, 0, NULL, NULL, "output",
     "the dataset folder (created); images go to DIR/<repeats>_<shapes|ringstyle>/"},
    {"--style", NULL, DL_OPT_STR, A(style), "NAME", "fill", 0, 0, "fill|ring", NULL, "set",
     "filled shapes, or outlines with \"ringstyle\" in the caption"},
    {"--count", NULL, DL_OPT_INT, A(count), "N", "0", 0, 1000000, NULL, NULL, "set",
     "images drawn at random from the seed (0: every shape and colour pair once, 120 images)"},
    {"--seed", NULL, DL_OPT_I64, A(seed), "N", "0", 0, 9007199254740992.0, NULL, NULL, "set",
     "the seed the shapes, colours and radii are drawn from"},
    {"--size", NULL, DL_OPT_INT, A(size), "PX", "64", 8, 4096, NULL, NULL, "set", "image side in pixels"},
    {"--repeats", NULL, DL_OPT_INT, A(repeats), "N", "1", 1, 100000, NULL, NULL, "set",
     "sd-scripts' repeats: the folder's N_ prefix"},
};

static void defaults(void *obj)
{
    args *a = obj;
    memset(a, 0, sizeof *a);
    a->style = "fill";
    a->size = 64;
    a->repeats = 1;
}

int main(int argc, char **argv)
{
    args a;
    defaults(&a);
    dl_optset sets[2] = {{k_opts, (int)(sizeof k_opts / sizeof *k_opts), &a, sizeof a, defaults},
                         {dl_opt_help_table, 1, NULL, 0, NULL}};
    for (int i = 1; i < argc; i++) {
        int r = dl_opt_parse(sets, 2, "shapes", argc, argv, &i);
        if (r == DL_OPT_WANTS_HELP) {
            printf("usage: danlu-shapes --out DIR [options]\n"
                   "  Writes the procedural shapes training set: centred circles, squares, triangles and crosses in\n"
                   "  one colour on another, captioned \"a red circle on a blue background\".\n");
            dl_opt_usage(stdout, sets, 2);
            return 0;
        }
        if (r < 0) return 2;
        if (r == 0) {
            fprintf(stderr, "danlu-shapes: unknown option '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (!a.out) {
        fprintf(stderr, "danlu-shapes: --out is required (see --help)\n");
        return 2;
    }
    int ring = strcmp(a.style, "ring") == 0;
    if (dl_shapes_write_set(a.out, a.count, (uint64_t)a.seed, ring, a.size, a.repeats) != DL_OK) {
        fprintf(stderr, "danlu-shapes: %s\n", dl_error_msg());
        return 1;
    }
    printf("%s/%d_%s: %d images of %dx%d\n", a.out, a.repeats, ring ? "ringstyle" : "shapes", a.count ? a.count : 120,
           a.size, a.size);
    return 0;
}
