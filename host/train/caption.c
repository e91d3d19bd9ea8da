/* caption.c - caption dropout, tag shuffle with kept tokens, tag dropout (sd-scripts' rules). */
#include "train/caption.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

void dl_caption_cfg_default(dl_caption_cfg *c) {
    memset(c, 0, sizeof *c);
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    DL_ASSERT(d);
    memcpy(d, s, n + 1);
    return d;
}

static int is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* A list of trimmed tags (pointers into a private copy). */
typedef struct tags {
    int n, cap;
    char **v;
} tags;

static void tags_push(tags *t, char *s) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 16;
        t->v = realloc(t->v, (size_t)t->cap * sizeof *t->v);
        DL_ASSERT(t->v);
    }
    t->v[t->n++] = s;
}

/* Split s (modified in place) at sep; trim each piece; drop empties when skip_empty. */
static void split_tags(tags *t, char *s, const char *sep, int skip_empty) {
    size_t sl = strlen(sep);
    for (;;) {
        char *e = sl ? strstr(s, sep) : NULL;
        if (e) *e = 0;
        char *a = s;
        while (*a && is_space(*a)) a++;
        char *b = a + strlen(a);
        while (b > a && is_space(b[-1])) *--b = 0;
        if (!skip_empty || *a) tags_push(t, a);
        if (!e) break;
        s = e + sl;
    }
}

char *dl_caption_process(const dl_caption_cfg *c, const char *caption, dl_rng *rng) {
    DL_ASSERT(c && caption);
    const char *pre = c->caption_prefix && *c->caption_prefix ? c->caption_prefix : NULL;
    const char *suf = c->caption_suffix && *c->caption_suffix ? c->caption_suffix : NULL;
    size_t len = strlen(caption) + (pre ? strlen(pre) + 1 : 0) + (suf ? strlen(suf) + 1 : 0);
    char *cap = malloc(len + 1);
    DL_ASSERT(cap);
    cap[0] = 0;
    if (pre) { strcat(cap, pre); strcat(cap, " "); }
    strcat(cap, caption);
    if (suf) { strcat(cap, " "); strcat(cap, suf); }

    int drop = c->caption_dropout_rate > 0 && dl_rng_uniform(rng) < c->caption_dropout_rate;
    if (c->caption_dropout_every_n_epochs > 0 && c->epoch % c->caption_dropout_every_n_epochs == 0) drop = 1;
    if (drop) {
        cap[0] = 0;
        return cap;
    }
    if (!c->shuffle_caption && c->caption_tag_dropout_rate <= 0) return cap;

    const char *sep = c->caption_separator && *c->caption_separator ? c->caption_separator : ",";
    tags fixed = {0}, flex = {0}, suffix = {0};
    const char *kts = c->keep_tokens_separator;
    char *work = xstrdup(cap);
    char *split = kts && *kts ? strstr(work, kts) : NULL;
    if (split) {
        /* "fixed ||| flex ||| fixed suffix": empty tags dropped in this form */
        *split = 0;
        char *flexp = split + strlen(kts);
        char *split2 = strstr(flexp, kts);
        if (split2) {
            *split2 = 0;
            split_tags(&suffix, split2 + strlen(kts), sep, 1);
        }
        split_tags(&fixed, work, sep, 1);
        split_tags(&flex, flexp, sep, 1);
    } else {
        /* caption.strip().split(sep), each tag stripped; empties kept as sd-scripts does */
        tags all = {0};
        split_tags(&all, work, sep, 0);
        int k = c->keep_tokens > 0 ? (c->keep_tokens < all.n ? c->keep_tokens : all.n) : 0;
        for (int i = 0; i < all.n; i++) tags_push(i < k ? &fixed : &flex, all.v[i]);
        free(all.v);
    }
    if (c->shuffle_caption)
        for (int i = flex.n - 1; i > 0; i--) {
            int j = (int)dl_rng_below(rng, (uint64_t)i + 1);
            char *tmp = flex.v[i];
            flex.v[i] = flex.v[j];
            flex.v[j] = tmp;
        }
    if (c->caption_tag_dropout_rate > 0) {
        int m = 0;
        for (int i = 0; i < flex.n; i++)
            if (dl_rng_uniform(rng) >= c->caption_tag_dropout_rate) flex.v[m++] = flex.v[i];
        flex.n = m;
    }
    size_t out_len = 1;
    tags *parts[3] = {&fixed, &flex, &suffix};
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < parts[p]->n; i++) out_len += strlen(parts[p]->v[i]) + 2;
    char *out = malloc(out_len);
    DL_ASSERT(out);
    out[0] = 0;
    int first = 1;
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < parts[p]->n; i++) {
            if (!first) strcat(out, ", ");
            strcat(out, parts[p]->v[i]);
            first = 0;
        }
    free(fixed.v);
    free(flex.v);
    free(suffix.v);
    free(work);
    free(cap);
    return out;
}

int dl_caption_is_static(const dl_caption_cfg *c) {
    return !c->shuffle_caption && c->caption_dropout_rate <= 0 && c->caption_tag_dropout_rate <= 0 &&
           c->caption_dropout_every_n_epochs <= 0;
}
