/* cmd_tokenize.c - `danlu tokenize`: print the CLIP token ids of a prompt. */
#include "cli/commands.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu tokenize (--model PATH | --tokenizer PATH) [--windows N] \"prompt\"...\n"
               "  --model      a diffusers folder with tokenizer/ (vocab.json, merges.txt)\n"
               "  --tokenizer  a tokenizer folder, vocab.json, or CLIP's bpe_simple_vocab_16e6.txt.gz\n"
               "  --windows    up to N 75-token windows (default 3, as sd-scripts)\n");
}

int dl_cmd_tokenize(int argc, char **argv, FILE *out)
{
    const char *model = NULL, *tokpath = NULL;
    int windows = 3, first_prompt = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(out); return 0; }
        if (!strcmp(a, "--model") || !strcmp(a, "--tokenizer") || !strcmp(a, "--windows")) {
            if (i + 1 >= argc) { fprintf(stderr, "danlu tokenize: %s needs a value\n", a); return 2; }
            if (!strcmp(a, "--model")) model = argv[++i];
            else if (!strcmp(a, "--tokenizer")) tokpath = argv[++i];
            else windows = atoi(argv[++i]);
            continue;
        }
        if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "danlu tokenize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!first_prompt) first_prompt = i;
    }
    if ((!model && !tokpath) || !first_prompt || windows < 1) { usage(stderr); return 2; }
    char *dir = NULL;
    if (!tokpath) {
        dl_checkpoint ck;
        if (dl_ckpt_open(&ck, model, NULL) != DL_OK) {
            fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
            return 1;
        }
        if (!ck.tokenizer_dir) {
            fprintf(stderr, "danlu tokenize: %s has no tokenizer/ folder; pass --tokenizer\n", model);
            dl_ckpt_close(&ck);
            return 1;
        }
        dir = strdup(ck.tokenizer_dir);
        dl_ckpt_close(&ck);
        tokpath = dir;
    }
    dl_tokenizer *tok;
    if (dl_tokenizer_load(&tok, tokpath) != DL_OK) {
        fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
        free(dir);
        return 1;
    }
    int rc = 0;
    for (int i = first_prompt; i < argc; i++) {
        if (!strcmp(argv[i], "--model") || !strcmp(argv[i], "--tokenizer") || !strcmp(argv[i], "--windows")) { i++; continue; }
        if (dl_tokenizer_print(tok, argv[i], windows, out) != DL_OK) {
            fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
            rc = 1;
        }
    }
    dl_tokenizer_free(tok);
    free(dir);
    return rc;
}
