/* caption.c - caption dropout, tag shuffle with kept tokens, tag dropout (sd-scripts' rules). */
#include "train/caption.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

void dl_caption_cfg_default(dl_caption_cfg *c) {
    memset(c, 0, sizeof *c);
}

int dl_caption_work_reserve(dl_caption_work *w, size_t len) {
    if (w->text && len <= w->len_cap) return DL_OK;
    char *text = malloc(2 * (len + 1));
    char **tags = malloc(4 * (len + 2) * sizeof *tags);
    if (!text || !tags) {
        free(text);
        free(tags);
        return dl_error_set("out of memory (caption buffers of %zu bytes)", len);
    }
    free(w->text);
    free(w->tags);
    w->text = text;
    w->tags = tags;
    w->len_cap = len;
    return DL_OK;
}

void dl_caption_work_free(dl_caption_work *w) {
    free(w->text);
    free(w->tags);
    memset(w, 0, sizeof *w);
}

size_t dl_caption_full_len(const dl_caption_cfg *c, size_t caption_len) {
    size_t n = caption_len;
    if (c->caption_prefix && *c->caption_prefix) n += strlen(c->caption_prefix) + 1;
    if (c->caption_suffix && *c->caption_suffix) n += strlen(c->caption_suffix) + 1;
    return n;
}

size_t dl_caption_out_cap(size_t len) {
    /* at most len + 1 tags (separators are >= 1 byte), each followed by ", " */
    return 3 * len + 4;
}

static int is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* A list of trimmed tags (pointers into the working copy), in a slice of the work's array. */
typedef struct tags {
    int n, cap;
    char **v;
} tags;

static void tags_push(tags *t, char *s) {
    DL_ASSERT(t->n < t->cap);
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

/* Append s to out (length *len, capacity cap). */
static void put(char *out, size_t cap, size_t *len, const char *s) {
    size_t n = strlen(s);
    DL_ASSERT(*len + n < cap);
    memcpy(out + *len, s, n + 1);
    *len += n;
}

void dl_caption_process_into(const dl_caption_cfg *c, const char *caption, dl_rng *rng, dl_caption_work *w,
                             char *out, size_t out_cap) {
    DL_ASSERT(c && caption && w && out);
    const char *pre = c->caption_prefix && *c->caption_prefix ? c->caption_prefix : NULL;
    const char *suf = c->caption_suffix && *c->caption_suffix ? c->caption_suffix : NULL;
    size_t len = dl_caption_full_len(c, strlen(caption));
    DL_ASSERT(w->text && len <= w->len_cap && out_cap >= dl_caption_out_cap(len));
    char *cap = w->text;
    size_t cl = 0;
    cap[0] = 0;
    if (pre) { put(cap, len + 1, &cl, pre); put(cap, len + 1, &cl, " "); }
    put(cap, len + 1, &cl, caption);
    if (suf) { put(cap, len + 1, &cl, " "); put(cap, len + 1, &cl, suf); }

    int drop = c->caption_dropout_rate > 0 && dl_rng_uniform(rng) < c->caption_dropout_rate;
    if (c->caption_dropout_every_n_epochs > 0 && c->epoch % c->caption_dropout_every_n_epochs == 0) drop = 1;
    if (drop) {
        out[0] = 0;
        return;
    }
    if (!c->shuffle_caption && c->caption_tag_dropout_rate <= 0) {
        memcpy(out, cap, cl + 1);
        return;
    }

    const char *sep = c->caption_separator && *c->caption_separator ? c->caption_separator : ",";
    const int tcap = (int)w->len_cap + 2;
    tags all = {0, tcap, w->tags}, fixed = {0, tcap, w->tags + tcap}, flex = {0, tcap, w->tags + 2 * tcap},
         suffix = {0, tcap, w->tags + 3 * tcap};
    const char *kts = c->keep_tokens_separator;
    char *work = w->text + w->len_cap + 1;
    memcpy(work, cap, cl + 1);
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
        split_tags(&all, work, sep, 0);
        int k = c->keep_tokens > 0 ? (c->keep_tokens < all.n ? c->keep_tokens : all.n) : 0;
        for (int i = 0; i < all.n; i++) tags_push(i < k ? &fixed : &flex, all.v[i]);
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
    size_t ol = 0;
    out[0] = 0;
    int first = 1;
    tags *parts[3] = {&fixed, &flex, &suffix};
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < parts[p]->n; i++) {
            if (!first) put(out, out_cap, &ol, ", ");
            put(out, out_cap, &ol, parts[p]->v[i]);
            first = 0;
        }
}

char *dl_caption_process(const dl_caption_cfg *c, const char *caption, dl_rng *rng) {
    DL_ASSERT(c && caption);
    size_t len = dl_caption_full_len(c, strlen(caption)), oc = dl_caption_out_cap(len);
    dl_caption_work w = {0};
    char *out = malloc(oc);
    DL_ASSERT(out && dl_caption_work_reserve(&w, len) == DL_OK);
    dl_caption_process_into(c, caption, rng, &w, out, oc);
    dl_caption_work_free(&w);
    return out;
}

int dl_caption_is_static(const dl_caption_cfg *c) {
    return !c->shuffle_caption && c->caption_dropout_rate <= 0 && c->caption_tag_dropout_rate <= 0 &&
           c->caption_dropout_every_n_epochs <= 0;
}
