/* test_caption.c - caption shuffle with keep_tokens / keep_tokens_separator, caption and tag
 * dropout rates (checked statistically), prefix/suffix, pass-through when all is off. */
#include "testutil.h"
#include "train/caption.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Split "x, y, z" into tags (in place); returns the count. */
static int tags_of(char *s, char **v, int cap)
{
    int n = 0;
    if (!*s) return 0;
    for (char *t = strtok(s, ","); t && n < cap; t = strtok(NULL, ",")) {
        while (*t == ' ') t++;
        v[n++] = t;
    }
    return n;
}

Test(caption, passthrough_when_off)
{
    dl_caption_cfg c;
    dl_caption_cfg_default(&c);
    dl_rng r;
    dl_rng_seed(&r, 1);
    char *o = dl_caption_process(&c, "a,b ,  c", &r);
    cr_expect_str_eq(o, "a,b ,  c");
    free(o);
    c.caption_prefix = "pre";
    c.caption_suffix = "post";
    o = dl_caption_process(&c, "mid", &r);
    cr_expect_str_eq(o, "pre mid post");
    free(o);
}

Test(caption, shuffle_keeps_first_keep_tokens)
{
    dl_caption_cfg c;
    dl_caption_cfg_default(&c);
    c.shuffle_caption = 1;
    c.keep_tokens = 2;
    dl_rng r;
    dl_rng_seed(&r, 3);
    const char *in = "sks person,  red hair, smile, outdoors, hat, blue sky";
    int orders = 0;
    char prev[256] = "";
    int first_pos_count[4] = {0}; /* which flexible tag comes third */
    const char *flex[4] = {"smile", "outdoors", "hat", "blue sky"};
    for (int i = 0; i < 400; i++) {
        char *o = dl_caption_process(&c, in, &r);
        if (strcmp(o, prev)) orders++;
        snprintf(prev, sizeof prev, "%s", o);
        char *v[16];
        int n = tags_of(o, v, 16);
        cr_assert_eq(n, 6, "tag count");
        cr_assert_str_eq(v[0], "sks person");
        cr_assert_str_eq(v[1], "red hair");
        int mask = 0;
        for (int k = 2; k < 6; k++)
            for (int j = 0; j < 4; j++)
                if (!strcmp(v[k], flex[j])) {
                    mask |= 1 << j;
                    if (k == 2) first_pos_count[j]++;
                }
        cr_assert_eq(mask, 15, "flexible tags are a permutation");
        free(o);
    }
    cr_expect_gt(orders, 200, "shuffled: %d order changes in 400", orders);
    for (int j = 0; j < 4; j++) /* uniform: 100 each, 5 sigma ~ 43 */
        cr_expect(first_pos_count[j] > 57 && first_pos_count[j] < 143, "tag %s first %d/400", flex[j],
                  first_pos_count[j]);
}

Test(caption, keep_tokens_separator_front_and_back)
{
    dl_caption_cfg c;
    dl_caption_cfg_default(&c);
    c.shuffle_caption = 1;
    c.keep_tokens = 5; /* ignored when the separator is present */
    c.keep_tokens_separator = "|||";
    dl_rng r;
    dl_rng_seed(&r, 4);
    for (int i = 0; i < 50; i++) {
        char *o = dl_caption_process(&c, "a, b ||| c, d, e, , f ||| g, h", &r);
        cr_assert(strncmp(o, "a, b, ", 6) == 0, "%s", o);
        size_t n = strlen(o);
        cr_assert(n > 6 && strcmp(o + n - 6, ", g, h") == 0, "%s", o);
        cr_assert_eq(n, strlen("a, b, c, d, e, f, g, h"), "empty tag dropped: %s", o);
        free(o);
    }
}

Test(caption, caption_dropout_rate)
{
    dl_caption_cfg c;
    dl_caption_cfg_default(&c);
    c.caption_dropout_rate = 0.3;
    c.shuffle_caption = 1;
    dl_rng r;
    dl_rng_seed(&r, 5);
    int N = 4000, dropped = 0;
    for (int i = 0; i < N; i++) {
        char *o = dl_caption_process(&c, "x, y", &r);
        dropped += o[0] == 0;
        free(o);
    }
    double p = (double)dropped / N, sd = sqrt(0.3 * 0.7 / N);
    cr_expect(fabs(p - 0.3) < 4 * sd, "dropout fraction %.4f, want 0.3 +- %.4f", p, 4 * sd);
}

Test(caption, tag_dropout_rate_spares_kept_tokens)
{
    dl_caption_cfg c;
    dl_caption_cfg_default(&c);
    c.caption_tag_dropout_rate = 0.25;
    c.keep_tokens = 1;
    dl_rng r;
    dl_rng_seed(&r, 6);
    int N = 2000;
    long kept = 0;
    for (int i = 0; i < N; i++) {
        char *o = dl_caption_process(&c, "keep, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10", &r);
        cr_assert(strncmp(o, "keep", 4) == 0, "kept token first: %s", o);
        char *v[16];
        int n = tags_of(o, v, 16);
        kept += n - 1;
        /* without shuffle the survivors stay in order */
        for (int k = 2; k < n; k++) cr_assert_lt(atoi(v[k - 1] + 1), atoi(v[k] + 1), "order kept: %s", o);
        free(o);
    }
    double p = (double)kept / (10.0 * N), sd = sqrt(0.75 * 0.25 / (10.0 * N));
    cr_expect(fabs(p - 0.75) < 4 * sd, "tag survival %.4f, want 0.75 +- %.4f", p, 4 * sd);
}

Test(caption, dropout_every_n_epochs_and_static)
{
    dl_caption_cfg c;
    dl_caption_cfg_default(&c);
    cr_expect(dl_caption_is_static(&c));
    c.caption_dropout_every_n_epochs = 3;
    cr_expect(!dl_caption_is_static(&c));
    dl_rng r;
    dl_rng_seed(&r, 7);
    for (int e = 1; e <= 6; e++) {
        c.epoch = e;
        char *o = dl_caption_process(&c, "x, y", &r);
        cr_expect_str_eq(o, e % 3 == 0 ? "" : "x, y", "epoch %d", e);
        free(o);
    }
    dl_caption_cfg_default(&c);
    c.caption_tag_dropout_rate = 0.1;
    cr_expect(!dl_caption_is_static(&c));
}

/* dl_caption_process_into with one work reserved for the longest caption and exact-size output
 * buffers gives dl_caption_process's captions and draws, including worst cases for the output
 * bound (one-byte tags, empty tags, separators only). */
Test(caption, into_matches_process_with_exact_buffers)
{
    static const char *caps[] = {"a,b,c,d,e,f,g", ",,,,,", "x", "", "long tag one, b ,c,, d, e e e", "p ||| q, r ||| s",
                                 "a, b ||| c ||| d", "   ,  "};
    const int n = (int)(sizeof caps / sizeof *caps);
    for (int mode = 0; mode < 4; mode++) {
        dl_caption_cfg c;
        dl_caption_cfg_default(&c);
        c.shuffle_caption = mode & 1;
        c.caption_tag_dropout_rate = mode & 2 ? 0.3 : 0;
        c.keep_tokens = mode == 3 ? 1 : 0;
        c.keep_tokens_separator = mode == 2 ? "|||" : NULL;
        c.caption_prefix = mode == 1 ? "pre" : NULL;
        size_t longest = 0;
        for (int i = 0; i < n; i++) {
            size_t l = dl_caption_full_len(&c, strlen(caps[i]));
            if (l > longest) longest = l;
        }
        dl_caption_work w = {0};
        cr_assert_eq(dl_caption_work_reserve(&w, longest), DL_OK);
        dl_rng r1, r2;
        dl_rng_seed(&r1, 5 + (uint64_t)mode);
        dl_rng_seed(&r2, 5 + (uint64_t)mode);
        for (int rep = 0; rep < 20; rep++)
            for (int i = 0; i < n; i++) {
                char *ref = dl_caption_process(&c, caps[i], &r1);
                size_t oc = dl_caption_out_cap(dl_caption_full_len(&c, strlen(caps[i])));
                char *out = malloc(oc);
                dl_caption_process_into(&c, caps[i], &r2, &w, out, oc);
                cr_expect_str_eq(out, ref, "mode %d caption '%s'", mode, caps[i]);
                cr_expect_leq(strlen(out) + 1, oc);
                free(out);
                free(ref);
            }
        cr_expect_eq(r1.s[0], r2.s[0], "mode %d: the draws diverged", mode);
        dl_caption_work_free(&w);
    }
}
