/* prompt.h - A1111's prompt syntax: LoRA tags (<lora:name:w>) cut out of the text, emphasis
 * ((word:1.3), (word) x1.1, [word] /1.1, \( escapes, nesting, BREAK) parsed as A1111's
 * modules/prompt_parser.py parse_prompt_attention does, and the token chunks of 75 (+ BOS/EOS)
 * with per-token multipliers as modules/sd_hijack_clip.py tokenize_line builds them (comma
 * backtracking of 20 tokens, BREAK starts a new chunk). The multipliers are applied to the text
 * encoder's output by dl_prompt_apply_emphasis (A1111's "Original" emphasis). */
#ifndef DANLU_SAMPLE_PROMPT_H
#define DANLU_SAMPLE_PROMPT_H

#include "model/tokenizer.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One parsed fragment: text with its weight; weight -1 with text "BREAK" is a chunk break. */
typedef struct dl_prompt_frag {
    char *text;
    double weight;
} dl_prompt_frag;

/* A LoRA tag <lora:name>, <lora:name:w> or <lora:name:te:unet> (also <lyco:...>). */
typedef struct dl_prompt_lora {
    char *name;
    double te_weight;    /* the first number (1 when absent) */
    double unet_weight;  /* the second number (te_weight when absent) */
} dl_prompt_lora;

/* Remove every <lora:...> / <lyco:...> tag from prompt as A1111's extra-networks parser does
 * (the tag is replaced by nothing). *text gets the malloc'd remaining text; *loras a malloc'd
 * array of *n tags (free with dl_prompt_loras_free; NULL when none). DL_ERR with a message for a
 * tag with an empty name or a weight that is not a number. */
int dl_prompt_extract_loras(const char *prompt, char **text, dl_prompt_lora **loras, int *n);
void dl_prompt_loras_free(dl_prompt_lora *loras, int n);

/* parse_prompt_attention(text): the fragments with their weights (products of nested
 * multipliers, in double as Python computes them), adjacent equal weights merged, at least one
 * fragment ("" 1.0). *frags malloc'd (free with dl_prompt_frags_free). DL_ERR only for out of
 * memory. */
int dl_prompt_parse(const char *text, dl_prompt_frag **frags, int *n);
void dl_prompt_frags_free(dl_prompt_frag *frags, int n);

/* The chunks of a prompt: n windows of 77 ids (BOS, 75 tokens padded with EOS, EOS) and their
 * float32 multipliers (1 on BOS, EOS and padding). */
typedef struct dl_prompt_chunks {
    int n;
    int32_t *ids;   /* [n, 77] */
    float *mult;    /* [n, 77] */
    int n_tokens;   /* A1111's token count (for messages) */
} dl_prompt_chunks;

/* Tokenize text (LoRA tags already removed) into chunks as A1111 does: each fragment encoded
 * separately (no BOS/EOS), 75 tokens a chunk, a chunk boundary that falls within 20 tokens after
 * a comma moves the tokens after the comma to the next chunk, BREAK ends a chunk, an empty
 * prompt is one chunk. emphasis 0 treats the whole text as one fragment of weight 1 (A1111's
 * emphasis "None"). When the tokenizer's pad differs from EOS (SD2) the ids after the first EOS
 * of a chunk become pad, as A1111's process_tokens does. More than max_chunks chunks is DL_ERR
 * (message gives the token count). */
int dl_prompt_chunks_build(const dl_tokenizer *tok, const char *text, int emphasis, int max_chunks,
                           dl_prompt_chunks *out);
void dl_prompt_chunks_free(dl_prompt_chunks *c);

/* A1111's "Original" emphasis on one chunk's hidden states z [T, C] (T = 77 per chunk, any
 * number of rows): m = mean(z); z *= mult[t] per row; z *= m / mean(z). Means in double. */
void dl_prompt_apply_emphasis(float *z, const float *mult, int T, int C);

#ifdef __cplusplus
}
#endif
#endif
