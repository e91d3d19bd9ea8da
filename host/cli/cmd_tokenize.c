/* cmd_tokenize.c - `danlu tokenize`: print the CLIP token ids of a prompt. */
#include "cli/commands.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *model, *tokenizer;
    int windows, encoder;
} tokenize_args;

static void tokenize_defaults(void *obj)
{
    tokenize_args *t = obj;
    memset(t, 0, sizeof *t);
    t->windows = 3;
    t->encoder = 1;
}

#define TA(f) offsetof(tokenize_args, f)

static const dl_opt k_tokenize_opts[] = {
    {"--model", NULL, DL_OPT_STR, TA(model), "PATH", NULL, 0, 0, NULL, NULL, "options",
     "a diffusers folder with tokenizer/ (vocab.json, merges.txt); this or --tokenizer is required"},
    {"--tokenizer", NULL, DL_OPT_STR, TA(tokenizer), "PATH", "the model's tokenizer/", 0, 0, NULL, NULL, "options",
     "a tokenizer folder, vocab.json, or CLIP's bpe_simple_vocab_16e6.txt.gz"},
    {"--windows", NULL, DL_OPT_INT, TA(windows), "N", "3", 1, 1000000, NULL, NULL, "options",
     "at most N windows of 75 tokens per prompt (3 = sd-scripts' max_token_length 225)"},
    {"--encoder", NULL, DL_OPT_INT, TA(encoder), "1|2", "1", 1, 2, NULL, NULL, "options",
     "which text encoder's tokenizer: 2 is SDXL's tokenizer_2 (the model's tokenizer_2/, else its tokenizer/ or "
     "--tokenizer), which pads with \"!\" where tokenizer 1 pads with <|endoftext|>"},
};

int dl_tokenize_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_tokenize_opts, (int)(sizeof k_tokenize_opts / sizeof *k_tokenize_opts), NULL,
                          sizeof(tokenize_args), tokenize_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu tokenize (--model PATH | --tokenizer PATH) [--windows N] [--encoder 1|2] \"prompt\"...\n"
               "  Prints the CLIP token ids of each prompt, in windows of 75 as sd-scripts pads them.\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_tokenize_optsets(sets));
}

int dl_cmd_tokenize(int argc, char **argv, FILE *out)
{
    int first_prompt = 0;
    tokenize_args ta;
    tokenize_defaults(&ta);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_tokenize_optsets(sets);
    sets[0].obj = &ta;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = dl_opt_parse(sets, nsets, "tokenize", argc, argv, &i);
        if (r == DL_OPT_WANTS_HELP) { usage(out); return 0; }
        if (r < 0) return 2;
        if (r == DL_OPT_CONSUMED) continue;
        if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "danlu tokenize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!first_prompt) first_prompt = i;
    }
    const char *model = ta.model, *tokpath = ta.tokenizer;
    int windows = ta.windows;
    if ((!model && !tokpath) || !first_prompt || windows < 1) { usage(stderr); return 2; }
    char *dir = NULL;
    if (!tokpath) {
        dl_checkpoint ck;
        const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1};
        if (dl_ckpt_open(&ck, model, &copt) != DL_OK) {
            fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
            return 1;
        }
        if (!ck.tokenizer_dir) {
            fprintf(stderr, "danlu tokenize: %s has no tokenizer/ folder; pass --tokenizer\n", model);
            dl_ckpt_close(&ck);
            return 1;
        }
        dir = strdup(ta.encoder == 2 && ck.tokenizer2_dir ? ck.tokenizer2_dir : ck.tokenizer_dir);
        dl_ckpt_close(&ck);
        tokpath = dir;
    }
    dl_tokenizer *tok;
    if (dl_tokenizer_load(&tok, tokpath) != DL_OK) {
        fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
        free(dir);
        return 1;
    }
    if (ta.encoder == 2 && dl_tokenizer_set_pad(tok, "!") != DL_OK) { /* SDXL's tokenizer_2 */
        fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
        dl_tokenizer_free(tok);
        free(dir);
        return 1;
    }
    int rc = 0;
    for (int i = first_prompt; i < argc; i++) {
        const dl_opt *o = dl_opt_find(sets, nsets, argv[i], NULL);
        if (o) { i += dl_opt_takes_value(o); continue; }
        if (dl_tokenizer_print(tok, argv[i], windows, out) != DL_OK) {
            fprintf(stderr, "danlu tokenize: %s\n", dl_error_msg());
            rc = 1;
        }
    }
    dl_tokenizer_free(tok);
    free(dir);
    return rc;
}
