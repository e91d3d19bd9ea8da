/* unicode_tables.h - Unicode data for the CLIP tokenizer (letter/number/space classes,
 * lower-case mapping, NFC), generated into unicode_tables.c by tests/gen/gen_unicode_tables.py.
 * All tables are sorted by code point; the lookups live in model/tokenizer.c. */
#ifndef DANLU_UNICODE_TABLES_H
#define DANLU_UNICODE_TABLES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct { uint32_t lo, hi; } dl_uni_range;               /* inclusive [lo, hi] */
typedef struct { uint32_t cp, to; } dl_uni_map;                 /* cp -> one code point */
typedef struct { uint32_t cp, to[3]; int n; } dl_uni_map3;      /* cp -> n code points */
typedef struct { uint32_t lo, hi; int ccc; } dl_uni_ccc;        /* canonical combining class */
typedef struct { uint32_t cp; int off, n; } dl_uni_decomp;      /* full NFD in the pool */
typedef struct { uint32_t a, b, c; } dl_uni_comp;               /* a + b composes to c */

/* \p{L}, \p{N} and \s as Oniguruma (tokenizers' regex engine) defines them. */
extern const dl_uni_range dl_uni_letter[];
extern const int dl_uni_letter_count;
extern const dl_uni_range dl_uni_number[];
extern const int dl_uni_number_count;
extern const dl_uni_range dl_uni_space[];
extern const int dl_uni_space_count;

/* Per-character lower case as tokenizers' Lowercase normalizer (Rust char::to_lowercase). */
extern const dl_uni_map dl_uni_lower1[];
extern const int dl_uni_lower1_count;
extern const dl_uni_map3 dl_uni_lower3[];
extern const int dl_uni_lower3_count;

/* NFC: non-zero combining classes, full canonical decompositions (Hangul excluded: it is
 * algorithmic), primary composites sorted by (a, b). */
extern const dl_uni_ccc dl_uni_ccc_table[];
extern const int dl_uni_ccc_count;
extern const uint32_t dl_uni_decomp_pool[];
extern const dl_uni_decomp dl_uni_decomp_table[];
extern const int dl_uni_decomp_count;
extern const dl_uni_comp dl_uni_comp_table[];
extern const int dl_uni_comp_count;

#ifdef __cplusplus
}
#endif
#endif
