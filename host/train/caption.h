/* caption.h - per-step caption processing as sd-scripts' process_caption: caption dropout,
 * shuffling of comma-separated tags behind the first keep_tokens (or a keep_tokens_separator
 * section), tag dropout; every random choice from a dl_rng. */
#ifndef DANLU_TRAIN_CAPTION_H
#define DANLU_TRAIN_CAPTION_H

#include "core/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_caption_cfg {
    int shuffle_caption;             /* shuffle the flexible tags */
    int keep_tokens;                 /* leading tags never shuffled nor dropped */
    const char *keep_tokens_separator; /* NULL/"": off; "a, b ||| c, d ||| e": a, b fixed front, e fixed back */
    const char *caption_separator;   /* NULL: "," */
    double caption_dropout_rate;     /* whole caption replaced by "" with this probability */
    double caption_tag_dropout_rate; /* each flexible tag dropped with this probability */
    const char *caption_prefix, *caption_suffix; /* NULL: none; joined with a space */
    int caption_dropout_every_n_epochs; /* 0: off; else every caption is dropped in epochs that are
                                         * multiples of it (sd-scripts, epochs counted from 1) */
    long long epoch;                 /* current epoch, 1-based (set by the batcher) */
} dl_caption_cfg;

/* Everything off (captions pass through unchanged). */
void dl_caption_cfg_default(dl_caption_cfg *c);

/* Working memory of dl_caption_process_into for captions of up to len_cap bytes (prefix and
 * suffix included): sized once, so processing allocates nothing. Zero-initialise, then reserve. */
typedef struct dl_caption_work {
    size_t len_cap;     /* longest caption the buffers hold */
    char *text;         /* [2 * (len_cap + 1)] the caption and its working copy */
    char **tags;        /* [4 * (len_cap + 2)] tag pointers (all, fixed, flexible, suffix) */
} dl_caption_work;

/* Grow w (never shrinks) to hold captions of len bytes; DL_ERR on out of memory. */
int dl_caption_work_reserve(dl_caption_work *w, size_t len);
void dl_caption_work_free(dl_caption_work *w);

/* Length of caption with c's prefix and suffix (what dl_caption_work_reserve must hold). */
size_t dl_caption_full_len(const dl_caption_cfg *c, size_t caption_len);
/* Bytes an output buffer needs for a caption of full length len (terminator included): tags
 * joined by ", " may be longer than the input ("a,b" -> "a, b"). */
size_t dl_caption_out_cap(size_t len);

/* The caption used for one sample, into out (out_cap >= dl_caption_out_cap(full length)), with
 * w reserved for the full length: allocates nothing. Order of operations and of random draws as
 * sd-scripts: prefix/suffix; caption dropout (one draw, only when the rate > 0); then, when
 * shuffling or tag dropout is on, split into tags (trimmed; with keep_tokens_separator empty
 * tags dropped), keep the fixed tags, shuffle the flexible ones (Fisher-Yates), drop tags (one
 * draw per tag), and join with ", ". With both off the caption is returned as is. */
void dl_caption_process_into(const dl_caption_cfg *c, const char *caption, dl_rng *rng, dl_caption_work *w,
                             char *out, size_t out_cap);

/* The same into a new malloc'd string (allocates its own working memory). */
char *dl_caption_process(const dl_caption_cfg *c, const char *caption, dl_rng *rng);

/* 1 when processing never changes a caption (no shuffle, no dropout of any kind), so text
 * encoder outputs may be cached (sd-scripts' is_text_encoder_output_cacheable). */
int dl_caption_is_static(const dl_caption_cfg *c);

#ifdef __cplusplus
}
#endif
#endif
