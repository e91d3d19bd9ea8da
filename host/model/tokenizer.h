/* tokenizer.h - CLIP's byte-level BPE tokenizer, exactly as transformers' CLIPTokenizer
 * (the `tokenizers`-backed one that diffusers pipelines and sd-scripts call) encodes prompts.
 *
 * Pipeline, in the reference's order:
 *   1. the special tokens <|startoftext|> and <|endoftext|> (bos and eos) are cut out of the
 *      raw text as exact matches (leftmost-longest) and map to their ids. The pad token is not
 *      special: SD2's pad "!" (id 0) only fills padding, and a "!" in the prompt is ordinary
 *      text ("red hair!!" ends in the single BPE token "!!</w>"), as open_clip (A1111, ComfyUI)
 *      and transformers' CLIPTokenizer with pad_token assigned after loading encode it
 *      (transformers' from_pretrained on an SD2 folder registers "!" as an added special token
 *      and splits it out, "red hair!!" -> ... 0 0; danlu deliberately does not);
 *   2. every other span is normalized: NFC, each run of whitespace -> one space, per-character
 *      lower case (no final-sigma rule; U+0130 -> "i" + U+0307), with no ftfy / html unescape;
 *   3. pre-tokenized by CLIP's pattern
 *      `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
 *      (whitespace dropped), then by the byte-level GPT-2 pattern (which only splits a
 *      lower-cased special-token literal into "<|", "...", "|>");
 *   4. each piece -> UTF-8 bytes -> byte-to-unicode symbols, "</w>" on the last symbol, and BPE
 *      merges applied lowest rank first (ties: leftmost), as tokenizers' BPE::merge_all does.
 * Invalid UTF-8 in a prompt is an error (never silently replaced).
 *
 * Vocabulary sources: a tokenizer folder (vocab.json + merges.txt, optional tokenizer_config.json
 * and special_tokens_map.json for the bos/eos/unk/pad tokens; a model folder with tokenizer/ is
 * accepted too), or CLIP's own merge list bpe_simple_vocab_16e6.txt.gz (vocabulary derived from
 * it: 256 byte symbols, the same with </w>, 48894 merges, <|startoftext|>, <|endoftext|>).
 *
 * Thread safety: encoding is safe from several threads on one tokenizer (the BPE cache is
 * guarded by a mutex; each thread passes its own dl_tok_work to the _w functions).
 *
 * Allocations: the _w functions keep their working memory in a caller's dl_tok_work whose
 * buffers only grow, and the BPE cache allocates only for a word it has not seen before (it is
 * cleared, and refilled, only when it holds 4096 words). So once w is reserved for the longest
 * text and every word has been seen, encoding allocates nothing: a trainer encodes each caption
 * once at setup, and shuffled or tag-dropped captions (made of the same words) then allocate
 * nothing, unless the captions hold more than 4096 distinct words. */
#ifndef DANLU_TOKENIZER_H
#define DANLU_TOKENIZER_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DL_TOK_CONTEXT = 77,  /* text encoder context: BOS + 75 tokens + EOS */
    DL_TOK_WINDOW = 75,   /* prompt tokens per window */
};

typedef struct dl_tokenizer dl_tokenizer;

/* Load a tokenizer from `path`: a directory holding vocab.json + merges.txt (or a model folder
 * whose tokenizer/ does; naming the vocab.json or merges.txt itself also works), or CLIP's
 * bpe_simple_vocab_16e6.txt.gz. On success *out owns a new tokenizer (free it with
 * dl_tokenizer_free) and DL_OK is returned; on failure *out is NULL and DL_ERR is returned
 * with a message naming the file and the problem. */
int dl_tokenizer_load(dl_tokenizer **out, const char *path);
/* Load from an explicit vocab.json and merges.txt pair (special tokens: CLIP defaults). */
int dl_tokenizer_load_files(dl_tokenizer **out, const char *vocab_json, const char *merges_txt);
/* Load from CLIP's merge list (.txt.gz or uncompressed .txt). */
int dl_tokenizer_load_bpe(dl_tokenizer **out, const char *bpe_path);
void dl_tokenizer_free(dl_tokenizer *tok);

/* Write the vocabulary as vocab.json and merges.txt ("#version: 0.2" header) into the existing
 * directory `dir`, in the layout of a diffusers tokenizer/ folder. DL_ERR names the file. */
int dl_tokenizer_save(const dl_tokenizer *tok, const char *dir);

/* Special ids and sizes. pad defaults to <|endoftext|> (SD1.x); SD2 folders set "!" (id 0). */
int32_t dl_tokenizer_bos(const dl_tokenizer *tok);
int32_t dl_tokenizer_eos(const dl_tokenizer *tok);
int32_t dl_tokenizer_pad(const dl_tokenizer *tok);
int32_t dl_tokenizer_vocab_size(const dl_tokenizer *tok);
/* Token string of `id` ("" when out of range or unused). */
const char *dl_tokenizer_token(const dl_tokenizer *tok, int32_t id);
/* Id of token string `s`, or -1. */
int32_t dl_tokenizer_id(const dl_tokenizer *tok, const char *s);
/* Make `token` (a vocabulary entry) the pad token (padding only: it is not cut out of prompt
 * text). DL_ERR if unknown. */
int dl_tokenizer_set_pad(dl_tokenizer *tok, const char *token);

/* Encode NUL-terminated UTF-8 `text` to raw ids (no BOS/EOS, no truncation): *ids is a new
 * malloc'd array of *n ids (free() it; non-NULL even when *n == 0). DL_ERR on invalid UTF-8. */
int dl_tokenizer_encode(const dl_tokenizer *tok, const char *text, int32_t **ids, int *n);

/* The standard SD encoding (tokenizer(text, padding="max_length", max_length=77,
 * truncation=True)): out[77] = BOS, the first 75 ids, EOS, then pad. */
int dl_tokenizer_encode_padded(const dl_tokenizer *tok, const char *text,
                               int32_t out[DL_TOK_CONTEXT]);

/* Working memory of encoding (grow-only buffers). Zero-initialise; free with dl_tok_work_free. */
typedef struct dl_tok_work {
    void *cp, *nf, *low, *piece, *bpe;       /* code points, NFC, lower-cased, one piece, BPE */
    size_t cp_cap, nf_cap, low_cap, piece_cap, bpe_cap;   /* bytes */
    int32_t *ids;                            /* raw ids */
    size_t ids_cap;                          /* entries */
} dl_tok_work;
void dl_tok_work_free(dl_tok_work *w);
/* Grow w for texts of up to len bytes (then encoding them needs no more working memory). */
int dl_tok_work_reserve(dl_tok_work *w, size_t len);

/* dl_tokenizer_encode_padded / _windows with working memory from w: identical ids, and no
 * allocation once w and the BPE cache have seen text like this (see the file comment). */
int dl_tokenizer_encode_padded_w(const dl_tokenizer *tok, dl_tok_work *w, const char *text,
                                 int32_t out[DL_TOK_CONTEXT]);
int dl_tokenizer_encode_windows_w(const dl_tokenizer *tok, dl_tok_work *w, const char *text,
                                  int n_windows, int32_t *out);

/* Long prompts, as sd-scripts does for max_token_length = 75 * n_windows: the text is encoded
 * with BOS/EOS and padded/truncated to 75 * n_windows + 2 ids, then cut into n_windows windows
 * out[w] = [BOS, ids[1 + 75w .. 76 + 75w), last id] (each 77 long; the text encoder runs on
 * each and the hidden states are concatenated). When pad != EOS (SD2) each window is fixed up
 * like sd-scripts: a window whose token before the last is neither EOS nor pad ends in EOS,
 * and a window that starts [BOS, pad, ...] becomes [BOS, EOS, pad, ...].
 * n_windows = 1 is exactly dl_tokenizer_encode_padded. out: [n_windows, 77]. */
int dl_tokenizer_encode_windows(const dl_tokenizer *tok, const char *text, int n_windows,
                                int32_t *out);
/* How many windows the prompt needs: ceil(n_tokens / 75), clamped to [1, max_windows]; the
 * untruncated token count goes to *n_tokens when non-NULL. */
int dl_tokenizer_count_windows(const dl_tokenizer *tok, const char *text, int max_windows,
                               int *n_windows, int *n_tokens);

/* For `danlu tokenize`: print to f one line "tokens N: id id ..." with the raw ids, then one
 * line per window "window W: id ... (77 ids)" for the windows the prompt needs (at most
 * max_windows; 1 gives the standard 77-id encoding). DL_ERR on invalid UTF-8. */
int dl_tokenizer_print(const dl_tokenizer *tok, const char *text, int max_windows, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
