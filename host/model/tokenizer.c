/* tokenizer.c - CLIP byte-level BPE tokenizer matching transformers' CLIPTokenizer (see tokenizer.h). */
#include "model/tokenizer.h"

#include "core/arena.h"
#include "core/error.h"
#include "model/unicode_tables.h"

#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* CLIP's merge list yields 49408 tokens: 512 byte symbols, 48894 merges, 2 specials. */
#define CLIP_N_MERGES 48894
#define CACHE_SLOTS 8192        /* BPE cache: words -> ids; cleared when half full */
#define CACHE_MAX_WORD 64       /* longer words are not cached */
#define MAX_SPECIAL 4

typedef struct { int32_t *v; size_t n, cap; } ivec;

static int ivec_push(ivec *a, int32_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return dl_error_set("tokenizer: out of memory");
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return DL_OK;
}

typedef struct { char *word; int32_t *ids; int n; } cache_entry;

static int wgrow(void **p, size_t *cap, size_t n) { return dl_buf_reserve(p, cap, n, "tokenizer"); }

int dl_tok_work_reserve(dl_tok_work *w, size_t len)
{
    /* encode_span's bounds: NFC at most quadruples the code points, lower casing triples them,
     * a code point is at most 4 UTF-8 bytes; a piece of n bytes has at most n ids */
    size_t m = 4 * len;
    DL_TRY(wgrow(&w->cp, &w->cp_cap, (len + 1) * sizeof(uint32_t)));
    DL_TRY(wgrow(&w->nf, &w->nf_cap, (4 * len + 1) * sizeof(uint32_t)));
    DL_TRY(wgrow(&w->low, &w->low_cap, (3 * m + 1) * sizeof(uint32_t)));
    DL_TRY(wgrow(&w->piece, &w->piece_cap, 4 * 3 * m + 8));
    size_t piece = 4 * 3 * m + 8;
    DL_TRY(wgrow(&w->bpe, &w->bpe_cap, piece * (3 * sizeof(int32_t) + 3 * 3 * sizeof(int32_t))));
    if (!w->ids || w->ids_cap < 4 * 3 * m + 64) {
        int32_t *v = realloc(w->ids, (4 * 3 * m + 64) * sizeof *v);
        if (!v) return dl_error_set("tokenizer: out of memory");
        w->ids = v;
        w->ids_cap = 4 * 3 * m + 64;
    }
    return DL_OK;
}

void dl_tok_work_free(dl_tok_work *w)
{
    free(w->cp);
    free(w->nf);
    free(w->low);
    free(w->piece);
    free(w->bpe);
    free(w->ids);
    memset(w, 0, sizeof *w);
}

struct dl_tokenizer {
    int32_t n_vocab;
    char **tokens;             /* [n_vocab] token strings; NULL for unused ids */
    uint32_t str_cap;          /* power of two */
    int32_t *str_slots;        /* [str_cap] id or -1: token string -> id */
    int32_t n_merges;
    int32_t *merge_a, *merge_b, *merge_new;   /* [n_merges] in rank order */
    uint32_t pair_cap;
    uint64_t *pair_keys;       /* [pair_cap] (a << 32 | b) or UINT64_MAX when empty */
    int32_t *pair_rank;        /* [pair_cap] rank of the merge of (a, b) */
    int32_t byte_id[256];      /* id of byte b's symbol, -1 if not in the vocabulary */
    int32_t byte_end_id[256];  /* id of byte b's symbol + "</w>" */
    int32_t bos, eos, unk, pad;
    int n_special;
    int32_t special[MAX_SPECIAL];   /* ids cut out of raw text as exact matches (bos, eos) */
    pthread_mutex_t cache_mu;
    cache_entry *cache;        /* [CACHE_SLOTS] */
    int cache_used;
};

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int32_t dl_tokenizer_id(const dl_tokenizer *tok, const char *s)
{
    size_t len = strlen(s);
    uint32_t mask = tok->str_cap - 1;
    for (uint32_t i = (uint32_t)hash_bytes(s, len) & mask;; i = (i + 1) & mask) {
        int32_t id = tok->str_slots[i];
        if (id < 0) return -1;
        if (strcmp(tok->tokens[id], s) == 0) return id;
    }
}

static int32_t pair_lookup(const dl_tokenizer *tok, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t mask = tok->pair_cap - 1;
    for (uint32_t i = (uint32_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (tok->pair_keys[i] == UINT64_MAX) return -1;
        if (tok->pair_keys[i] == key) return tok->pair_rank[i];
    }
}

/* ---------------------------------------------------------------- construction */

/* CLIP / GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes
 * to U+0100.. in byte order. `order` receives the bytes in the map's enumeration order (the
 * printable ones first), which is the vocabulary order of the 256 byte symbols. */
static void byte_unicode(uint32_t cp[256], uint8_t order[256])
{
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (printable) { cp[b] = (uint32_t)b; order[k++] = (uint8_t)b; }
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!printable) { cp[b] = 256u + (uint32_t)extra++; order[k++] = (uint8_t)b; }
    }
}

static int utf8_put(uint32_t c, char *o)
{
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F)); o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static dl_tokenizer *tok_alloc(int32_t n_vocab)
{
    dl_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n_vocab = n_vocab;
    t->tokens = calloc((size_t)n_vocab, sizeof *t->tokens);
    t->cache = calloc(CACHE_SLOTS, sizeof *t->cache);
    pthread_mutex_init(&t->cache_mu, NULL);
    if (!t->tokens || !t->cache) { dl_tokenizer_free(t); return NULL; }
    return t;
}

void dl_tokenizer_free(dl_tokenizer *tok)
{
    if (!tok) return;
    if (tok->tokens)
        for (int32_t i = 0; i < tok->n_vocab; i++) free(tok->tokens[i]);
    free(tok->tokens);
    free(tok->str_slots);
    free(tok->merge_a);
    free(tok->merge_b);
    free(tok->merge_new);
    free(tok->pair_keys);
    free(tok->pair_rank);
    if (tok->cache)
        for (int i = 0; i < CACHE_SLOTS; i++) { free(tok->cache[i].word); free(tok->cache[i].ids); }
    free(tok->cache);
    pthread_mutex_destroy(&tok->cache_mu);
    free(tok);
}

/* Index token strings (tokens[] filled). `src` names the vocabulary file for messages. */
static int build_str_index(dl_tokenizer *t, const char *src)
{
    t->str_cap = pow2_at_least((uint64_t)t->n_vocab * 2);
    t->str_slots = malloc(t->str_cap * sizeof *t->str_slots);
    if (!t->str_slots) return dl_error_set("%s: out of memory", src);
    memset(t->str_slots, 0xFF, t->str_cap * sizeof *t->str_slots);
    uint32_t mask = t->str_cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->tokens[id];
        if (!s) continue;
        uint32_t i = (uint32_t)hash_bytes(s, strlen(s)) & mask;
        for (; t->str_slots[i] >= 0; i = (i + 1) & mask)
            if (strcmp(t->tokens[t->str_slots[i]], s) == 0)
                return dl_error_set("%s: token \"%s\" appears twice (ids %d and %d)", src, s,
                                    (int)t->str_slots[i], (int)id);
        t->str_slots[i] = id;
    }
    return DL_OK;
}

/* Resolve merges given as (left, right) token strings into ids and index them by pair.
 * `left`/`right` arrays hold n strings; `src` and `lines` (line number of each merge, may be
 * NULL) are for messages. */
static int build_merges(dl_tokenizer *t, char **left, char **right, int32_t n, const int *lines,
                        const char *src)
{
    t->n_merges = n;
    t->merge_a = malloc(((size_t)n + 1) * sizeof *t->merge_a);
    t->merge_b = malloc(((size_t)n + 1) * sizeof *t->merge_b);
    t->merge_new = malloc(((size_t)n + 1) * sizeof *t->merge_new);
    t->pair_cap = pow2_at_least((uint64_t)n * 2);
    t->pair_keys = malloc(t->pair_cap * sizeof *t->pair_keys);
    t->pair_rank = malloc(t->pair_cap * sizeof *t->pair_rank);
    if (!t->merge_a || !t->merge_b || !t->merge_new || !t->pair_keys || !t->pair_rank)
        return dl_error_set("%s: out of memory", src);
    memset(t->pair_keys, 0xFF, t->pair_cap * sizeof *t->pair_keys);
    uint32_t mask = t->pair_cap - 1;
    char buf[1024];
    for (int32_t r = 0; r < n; r++) {
        int line = lines ? lines[r] : r + 2;
        int32_t a = dl_tokenizer_id(t, left[r]), b = dl_tokenizer_id(t, right[r]);
        if (a < 0 || b < 0)
            return dl_error_set("%s:%d: merge \"%s %s\": token \"%s\" is not in the vocabulary",
                                src, line, left[r], right[r], a < 0 ? left[r] : right[r]);
        size_t la = strlen(left[r]), lb = strlen(right[r]);
        if (la + lb >= sizeof buf)
            return dl_error_set("%s:%d: merge too long", src, line);
        memcpy(buf, left[r], la);
        memcpy(buf + la, right[r], lb + 1);
        int32_t c = dl_tokenizer_id(t, buf);
        if (c < 0)
            return dl_error_set("%s:%d: merge \"%s %s\": result \"%s\" is not in the vocabulary",
                                src, line, left[r], right[r], buf);
        t->merge_a[r] = a;
        t->merge_b[r] = b;
        t->merge_new[r] = c;
        uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        uint32_t i = (uint32_t)hash_u64(key) & mask;
        while (t->pair_keys[i] != UINT64_MAX && t->pair_keys[i] != key) i = (i + 1) & mask;
        if (t->pair_keys[i] == key) continue;   /* a repeated merge keeps its first rank */
        t->pair_keys[i] = key;
        t->pair_rank[i] = r;
    }
    return DL_OK;
}

/* Byte symbol ids and the CLIP special tokens. */
static int finish(dl_tokenizer *t, const char *src)
{
    uint32_t cp[256];
    uint8_t order[256];
    byte_unicode(cp, order);
    for (int b = 0; b < 256; b++) {
        char s[16];
        int n = utf8_put(cp[b], s);
        s[n] = 0;
        t->byte_id[b] = dl_tokenizer_id(t, s);
        memcpy(s + n, "</w>", 5);
        t->byte_end_id[b] = dl_tokenizer_id(t, s);
    }
    t->bos = dl_tokenizer_id(t, "<|startoftext|>");
    t->eos = dl_tokenizer_id(t, "<|endoftext|>");
    if (t->bos < 0 || t->eos < 0)
        return dl_error_set("%s: the vocabulary has no %s token", src,
                            t->bos < 0 ? "<|startoftext|>" : "<|endoftext|>");
    t->unk = t->eos;
    t->pad = t->eos;
    t->n_special = 2;
    t->special[0] = t->bos;
    t->special[1] = t->eos;
    return DL_OK;
}

static void add_special(dl_tokenizer *t, int32_t id)
{
    for (int i = 0; i < t->n_special; i++)
        if (t->special[i] == id) return;
    if (t->n_special < MAX_SPECIAL) t->special[t->n_special++] = id;
}

/* The pad token only pads: SD2's "!" is an ordinary vocabulary entry, so "!!" in a prompt stays
 * one BPE token (open_clip, which A1111 and ComfyUI use for SD2, never splits it out). */
int dl_tokenizer_set_pad(dl_tokenizer *tok, const char *token)
{
    int32_t id = dl_tokenizer_id(tok, token);
    if (id < 0) return dl_error_set("pad token \"%s\" is not in the vocabulary", token);
    tok->pad = id;
    return DL_OK;
}

/* ---------------------------------------------------------------- file reading */

static int read_file(const char *path, char **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) { free(buf); buf = NULL; }
        buf = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return dl_error_set("%s: out of memory", path);
    if (err) { free(buf); return dl_error_set("%s: read error", path); }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return DL_OK;
}

static int read_gz(const char *path, char **data, size_t *len)
{
    gzFile g = gzopen(path, "rb");
    if (!g) return dl_error_set("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) { gzclose(g); return dl_error_set("%s: out of memory", path); }
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) free(buf);
            buf = nb;
            continue;
        }
        unsigned want = (unsigned)((cap - n) > (1u << 30) ? (1u << 30) : (cap - n));
        int got = gzread(g, buf + n, want);
        if (got < 0) {
            int zerr;
            const char *msg = gzerror(g, &zerr);
            int r = dl_error_set("%s: corrupt gzip data: %s", path, msg);
            free(buf);
            gzclose(g);
            return r;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    int zerr = Z_OK;
    const char *msg = gzerror(g, &zerr);
    int rc = DL_OK;
    if (gzdirect(g)) rc = dl_error_set("%s: not gzip data", path);
    else if (zerr != Z_OK && zerr != Z_STREAM_END) {
        size_t pl = strlen(path);   /* zlib's message repeats the path */
        if (strncmp(msg, path, pl) == 0 && strncmp(msg + pl, ": ", 2) == 0) msg += pl + 2;
        rc = dl_error_set("%s: truncated or corrupt gzip data (%s)", path, msg);
    }
    gzclose(g);
    if (rc != DL_OK) { free(buf); return rc; }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return DL_OK;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Split a merges text into (left, right) pairs in place. Skips "#version" lines and blank
 * lines; max_merges < 0 means all. Every kept line must be exactly "left right". */
static int parse_merge_lines(char *text, const char *src, int skip_first, int max_merges,
                             char ***left, char ***right, int **lines, int32_t *n)
{
    size_t cap = 1024;
    int32_t cnt = 0;
    char **l = malloc(cap * sizeof *l), **r = malloc(cap * sizeof *r);
    int *ln = malloc(cap * sizeof *ln);
    int line = 0, rc = DL_OK;
    char *p = text;
    while (*p && (max_merges < 0 || cnt < max_merges)) {
        char *e = strchr(p, '\n');
        char *next = e ? e + 1 : p + strlen(p);
        if (e) *e = 0;
        line++;
        size_t len = strlen(p);
        if (len && p[len - 1] == '\r') p[--len] = 0;
        if ((line == 1 && skip_first) || len == 0 || strncmp(p, "#version", 8) == 0) {
            p = next;
            continue;
        }
        char *sp = strchr(p, ' ');
        if (!sp || sp == p || sp[1] == 0 || strchr(sp + 1, ' ')) {
            rc = dl_error_set("%s:%d: bad merge line \"%.60s\" (want two tokens separated by "
                              "one space)", src, line, p);
            break;
        }
        *sp = 0;
        if ((size_t)cnt == cap) {
            cap *= 2;
            char **nl = realloc(l, cap * sizeof *l), **nr = realloc(r, cap * sizeof *r);
            int *nln = realloc(ln, cap * sizeof *ln);
            if (nl) l = nl;
            if (nr) r = nr;
            if (nln) ln = nln;
            if (!nl || !nr || !nln) { rc = dl_error_set("%s: out of memory", src); break; }
        }
        l[cnt] = p;
        r[cnt] = sp + 1;
        ln[cnt] = line;
        cnt++;
        p = next;
    }
    if (rc == DL_OK && (!l || !r || !ln)) rc = dl_error_set("%s: out of memory", src);
    if (rc != DL_OK) { free(l); free(r); free(ln); return rc; }
    *left = l;
    *right = r;
    *lines = ln;
    *n = cnt;
    return DL_OK;
}

int dl_tokenizer_load_bpe(dl_tokenizer **out, const char *bpe_path)
{
    *out = NULL;
    size_t len = strlen(bpe_path);
    char *text = NULL;
    size_t n = 0;
    if (len > 3 && strcmp(bpe_path + len - 3, ".gz") == 0) DL_TRY(read_gz(bpe_path, &text, &n));
    else DL_TRY(read_file(bpe_path, &text, &n));
    if (memchr(text, 0, n)) {
        free(text);
        return dl_error_set("%s: not a BPE merge list (binary data)", bpe_path);
    }
    char **l = NULL, **r = NULL;
    int *lines = NULL;
    int32_t nm = 0;
    if (parse_merge_lines(text, bpe_path, 1, CLIP_N_MERGES, &l, &r, &lines, &nm) != DL_OK) {
        free(text);
        return DL_ERR;
    }
    int rc = DL_OK;
    if (nm < CLIP_N_MERGES)
        rc = dl_error_set("%s: truncated: %d merges, CLIP's vocabulary needs %d", bpe_path,
                          (int)nm, CLIP_N_MERGES);
    dl_tokenizer *t = rc == DL_OK ? tok_alloc(512 + CLIP_N_MERGES + 2) : NULL;
    if (rc == DL_OK && !t) rc = dl_error_set("%s: out of memory", bpe_path);
    if (rc == DL_OK) {
        /* vocabulary: byte symbols in bytes_to_unicode order, the same with </w>, one token per
         * merge, then <|startoftext|> and <|endoftext|>. */
        uint32_t cp[256];
        uint8_t order[256];
        byte_unicode(cp, order);
        int32_t id = 0;
        for (int pass = 0; pass < 2 && rc == DL_OK; pass++)
            for (int k = 0; k < 256; k++) {
                char s[16];
                int m = utf8_put(cp[order[k]], s);
                strcpy(s + m, pass ? "</w>" : "");
                if (!(t->tokens[id++] = strdup(s))) rc = dl_error_set("out of memory");
            }
        for (int32_t k = 0; k < nm && rc == DL_OK; k++) {
            size_t la = strlen(l[k]), lb = strlen(r[k]);
            char *s = malloc(la + lb + 1);
            if (!s) { rc = dl_error_set("out of memory"); break; }
            memcpy(s, l[k], la);
            memcpy(s + la, r[k], lb + 1);
            t->tokens[id++] = s;
        }
        if (rc == DL_OK) {
            t->tokens[id++] = strdup("<|startoftext|>");
            t->tokens[id++] = strdup("<|endoftext|>");
            if (!t->tokens[id - 1] || !t->tokens[id - 2]) rc = dl_error_set("out of memory");
        }
        if (rc == DL_OK) rc = build_str_index(t, bpe_path);
        if (rc == DL_OK) rc = build_merges(t, l, r, nm, lines, bpe_path);
        if (rc == DL_OK) rc = finish(t, bpe_path);
    }
    free(l);
    free(r);
    free(lines);
    free(text);
    if (rc != DL_OK) { dl_tokenizer_free(t); return DL_ERR; }
    *out = t;
    return DL_OK;
}

/* Read vocab.json into a new tokenizer (tokens only). */
static int load_vocab_json(dl_tokenizer **out, const char *path)
{
    char *text = NULL;
    size_t n = 0;
    DL_TRY(read_file(path, &text, &n));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dl_error_set("%s: not a JSON object (vocab.json maps token -> id)", path);
    }
    int64_t max_id = -1;
    int rc = DL_OK;
    for (cJSON *e = root->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int64_t)e->valuedouble ||
            e->valuedouble < 0 || e->valuedouble > 10000000) {
            rc = dl_error_set("%s: token \"%s\": id is not a non-negative integer", path,
                              e->string ? e->string : "");
            break;
        }
        if ((int64_t)e->valuedouble > max_id) max_id = (int64_t)e->valuedouble;
    }
    dl_tokenizer *t = NULL;
    if (rc == DL_OK && max_id < 0) rc = dl_error_set("%s: empty vocabulary", path);
    if (rc == DL_OK && !(t = tok_alloc((int32_t)max_id + 1)))
        rc = dl_error_set("%s: out of memory", path);
    for (cJSON *e = rc == DL_OK ? root->child : NULL; e; e = e->next) {
        int32_t id = (int32_t)e->valuedouble;
        if (t->tokens[id]) {
            rc = dl_error_set("%s: id %d used by both \"%s\" and \"%s\"", path, (int)id,
                              t->tokens[id], e->string);
            break;
        }
        if (!(t->tokens[id] = strdup(e->string))) { rc = dl_error_set("out of memory"); break; }
    }
    cJSON_Delete(root);
    if (rc == DL_OK) rc = build_str_index(t, path);
    if (rc != DL_OK) { dl_tokenizer_free(t); return DL_ERR; }
    *out = t;
    return DL_OK;
}

int dl_tokenizer_load_files(dl_tokenizer **out, const char *vocab_json, const char *merges_txt)
{
    *out = NULL;
    dl_tokenizer *t = NULL;
    DL_TRY(load_vocab_json(&t, vocab_json));
    char *text = NULL;
    size_t n = 0;
    if (read_file(merges_txt, &text, &n) != DL_OK) { dl_tokenizer_free(t); return DL_ERR; }
    char **l = NULL, **r = NULL;
    int *lines = NULL;
    int32_t nm = 0;
    int rc = DL_OK;
    if (memchr(text, 0, n)) rc = dl_error_set("%s: not a merges file (binary data)", merges_txt);
    if (rc == DL_OK) rc = parse_merge_lines(text, merges_txt, 0, -1, &l, &r, &lines, &nm);
    if (rc == DL_OK) rc = build_merges(t, l, r, nm, lines, merges_txt);
    if (rc == DL_OK) rc = finish(t, vocab_json);
    free(l);
    free(r);
    free(lines);
    free(text);
    if (rc != DL_OK) { dl_tokenizer_free(t); return DL_ERR; }
    *out = t;
    return DL_OK;
}

/* A special-token entry of tokenizer_config.json / special_tokens_map.json: a string or an
 * object with "content". NULL if absent or of another shape. */
static const char *special_content(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

/* Apply bos/eos/unk/pad from a tokenizer config file if it exists (bos and eos also become
 * special tokens of the text). */
static int apply_special_config(dl_tokenizer *t, const char *path)
{
    if (!is_file(path)) return DL_OK;
    char *text = NULL;
    size_t n = 0;
    DL_TRY(read_file(path, &text, &n));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dl_error_set("%s: not a JSON object", path);
    }
    static const char *keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int32_t *dst[4] = {&t->bos, &t->eos, &t->unk, &t->pad};
    int rc = DL_OK;
    for (int k = 0; k < 4 && rc == DL_OK; k++) {
        const char *s = special_content(root, keys[k]);
        if (!s) continue;
        int32_t id = dl_tokenizer_id(t, s);
        if (id < 0) {
            rc = dl_error_set("%s: %s \"%s\" is not in the vocabulary", path, keys[k], s);
            break;
        }
        *dst[k] = id;
        /* only bos / eos (<|startoftext|>, <|endoftext|>) are cut out of prompt text; the
         * unk and pad tokens (SD2's "!") only stand in for unknown bytes and fill padding */
        if (k < 2) add_special(t, id);
    }
    cJSON_Delete(root);
    return rc;
}

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

int dl_tokenizer_load(dl_tokenizer **out, const char *path)
{
    *out = NULL;
    if (!is_dir(path)) {
        if (!is_file(path))
            return dl_error_set("%s: no such tokenizer (want a folder with vocab.json and "
                                "merges.txt, or CLIP's bpe_simple_vocab_16e6.txt.gz)", path);
        /* vocab.json or merges.txt named directly: load the folder holding it */
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        if (strcmp(base, "vocab.json") == 0 || strcmp(base, "merges.txt") == 0) {
            size_t dl = (size_t)(base - path);
            char *d = malloc(dl + 2);
            if (!d) return dl_error_set("out of memory");
            if (dl == 0) strcpy(d, ".");
            else { memcpy(d, path, dl - 1); d[dl - 1] = 0; if (dl == 1) strcpy(d, "/"); }
            int rc = dl_tokenizer_load(out, d);
            free(d);
            return rc;
        }
        return dl_tokenizer_load_bpe(out, path);
    }
    char *dir = NULL, *sub = join_path(path, "tokenizer");
    char *probe = sub ? join_path(sub, "vocab.json") : NULL;
    if (probe && is_file(probe)) { dir = sub; sub = NULL; }
    else if (!(dir = strdup(path))) { free(sub); free(probe); return dl_error_set("out of memory"); }
    free(sub);
    free(probe);
    char *vocab = join_path(dir, "vocab.json"), *merges = join_path(dir, "merges.txt");
    char *cfg = join_path(dir, "tokenizer_config.json");
    char *map = join_path(dir, "special_tokens_map.json");
    int rc = DL_OK;
    dl_tokenizer *t = NULL;
    if (!vocab || !merges || !cfg || !map) rc = dl_error_set("out of memory");
    else if (!is_file(vocab) || !is_file(merges))
        rc = dl_error_set("%s: no %s in the tokenizer folder (want vocab.json and merges.txt)",
                          dir, is_file(vocab) ? "merges.txt" : "vocab.json");
    if (rc == DL_OK) rc = dl_tokenizer_load_files(&t, vocab, merges);
    /* transformers reads tokenizer_config.json, then special_tokens_map.json overrides it. */
    if (rc == DL_OK) rc = apply_special_config(t, cfg);
    if (rc == DL_OK) rc = apply_special_config(t, map);
    free(vocab);
    free(merges);
    free(cfg);
    free(map);
    free(dir);
    if (rc != DL_OK) { dl_tokenizer_free(t); return DL_ERR; }
    *out = t;
    return DL_OK;
}

int dl_tokenizer_save(const dl_tokenizer *tok, const char *dir)
{
    char *vpath = join_path(dir, "vocab.json"), *mpath = join_path(dir, "merges.txt");
    int rc = DL_OK;
    if (!vpath || !mpath) rc = dl_error_set("out of memory");
    cJSON *root = rc == DL_OK ? cJSON_CreateObject() : NULL;
    for (int32_t id = 0; root && id < tok->n_vocab; id++)
        if (tok->tokens[id] && !cJSON_AddNumberToObject(root, tok->tokens[id], id)) {
            rc = dl_error_set("out of memory");
            break;
        }
    char *json = root && rc == DL_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (rc == DL_OK && !json) rc = dl_error_set("out of memory");
    if (rc == DL_OK) {
        FILE *f = fopen(vpath, "wb");
        if (!f) rc = dl_error_set("%s: cannot create: %s", vpath, strerror(errno));
        else {
            int bad = fputs(json, f) < 0;
            bad |= fclose(f) != 0;
            if (bad) rc = dl_error_set("%s: write error", vpath);
        }
    }
    free(json);
    if (rc == DL_OK) {
        FILE *f = fopen(mpath, "wb");
        if (!f) rc = dl_error_set("%s: cannot create: %s", mpath, strerror(errno));
        else {
            int bad = fputs("#version: 0.2\n", f) < 0;
            for (int32_t r = 0; r < tok->n_merges && !bad; r++)
                bad = fprintf(f, "%s %s\n", tok->tokens[tok->merge_a[r]],
                              tok->tokens[tok->merge_b[r]]) < 0;
            bad |= fclose(f) != 0;
            if (bad) rc = dl_error_set("%s: write error", mpath);
        }
    }
    free(vpath);
    free(mpath);
    return rc;
}

int32_t dl_tokenizer_bos(const dl_tokenizer *tok) { return tok->bos; }
int32_t dl_tokenizer_eos(const dl_tokenizer *tok) { return tok->eos; }
int32_t dl_tokenizer_pad(const dl_tokenizer *tok) { return tok->pad; }
int32_t dl_tokenizer_vocab_size(const dl_tokenizer *tok) { return tok->n_vocab; }

const char *dl_tokenizer_token(const dl_tokenizer *tok, int32_t id)
{
    if (id < 0 || id >= tok->n_vocab || !tok->tokens[id]) return "";
    return tok->tokens[id];
}

/* ---------------------------------------------------------------- Unicode */

static int in_ranges(const dl_uni_range *r, int n, uint32_t c)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid - 1;
        else if (c > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int is_letter(uint32_t c)
{
    if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    return in_ranges(dl_uni_letter, dl_uni_letter_count, c);
}
static int is_number(uint32_t c)
{
    if (c < 0x80) return c >= '0' && c <= '9';
    return in_ranges(dl_uni_number, dl_uni_number_count, c);
}
static int is_space(uint32_t c) { return in_ranges(dl_uni_space, dl_uni_space_count, c); }

static int ccc_of(uint32_t c)
{
    if (c < 0x300) return 0;
    int lo = 0, hi = dl_uni_ccc_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < dl_uni_ccc_table[mid].lo) hi = mid - 1;
        else if (c > dl_uni_ccc_table[mid].hi) lo = mid + 1;
        else return dl_uni_ccc_table[mid].ccc;
    }
    return 0;
}

/* Lower case of c into o (1..3 code points); returns the count. */
static int lower_of(uint32_t c, uint32_t o[3])
{
    if (c < 0x80) { o[0] = (c >= 'A' && c <= 'Z') ? c + 32 : c; return 1; }
    int lo = 0, hi = dl_uni_lower1_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < dl_uni_lower1[mid].cp) hi = mid - 1;
        else if (c > dl_uni_lower1[mid].cp) lo = mid + 1;
        else { o[0] = dl_uni_lower1[mid].to; return 1; }
    }
    for (int i = 0; i < dl_uni_lower3_count; i++)
        if (dl_uni_lower3[i].cp == c) {
            for (int k = 0; k < dl_uni_lower3[i].n; k++) o[k] = dl_uni_lower3[i].to[k];
            return dl_uni_lower3[i].n;
        }
    o[0] = c;
    return 1;
}

enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_NL = 19, HANGUL_NV = 21, HANGUL_NT = 28, HANGUL_NS = 19 * 21 * 28 };

/* Full canonical decomposition of c into o (at most 4 code points); returns the count. */
static int decompose(uint32_t c, uint32_t o[4])
{
    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_NS) {
        uint32_t s = c - HANGUL_S;
        o[0] = HANGUL_L + s / (HANGUL_NV * HANGUL_NT);
        o[1] = HANGUL_V + (s % (HANGUL_NV * HANGUL_NT)) / HANGUL_NT;
        if (s % HANGUL_NT == 0) return 2;
        o[2] = HANGUL_T + s % HANGUL_NT;
        return 3;
    }
    if (c >= 0xC0) {
        int lo = 0, hi = dl_uni_decomp_count - 1;
        while (lo <= hi) {
            int mid = (lo + hi) / 2;
            if (c < dl_uni_decomp_table[mid].cp) hi = mid - 1;
            else if (c > dl_uni_decomp_table[mid].cp) lo = mid + 1;
            else {
                int n = dl_uni_decomp_table[mid].n;
                DL_ASSERT(n <= 4);
                for (int k = 0; k < n; k++) o[k] = dl_uni_decomp_pool[dl_uni_decomp_table[mid].off + k];
                return n;
            }
        }
    }
    o[0] = c;
    return 1;
}

/* Primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_NL && b >= HANGUL_V && b < HANGUL_V + HANGUL_NV)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_NV + (b - HANGUL_V)) * HANGUL_NT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_NS && (a - HANGUL_S) % HANGUL_NT == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_NT)
        return a + (b - HANGUL_T);
    int lo = 0, hi = dl_uni_comp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const dl_uni_comp *e = &dl_uni_comp_table[mid];
        if (a < e->a || (a == e->a && b < e->b)) hi = mid - 1;
        else if (a > e->a || b > e->b) lo = mid + 1;
        else return e->c;
    }
    return 0;
}

/* NFC of s[0..n) into d (room for 4n + 1 code points; *nout of them used). */
static void nfc(const uint32_t *s, size_t n, uint32_t *d, size_t *nout)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t o[4];
        int k = decompose(s[i], o);
        for (int j = 0; j < k; j++) {
            /* canonical ordering: insertion sort of the non-starter run by class (stable) */
            uint32_t c = o[j];
            int cc = ccc_of(c);
            size_t p = m;
            if (cc) while (p > 0 && ccc_of(d[p - 1]) > cc) { d[p] = d[p - 1]; p--; }
            d[p] = c;
            m++;
        }
    }
    /* canonical composition: c joins the last starter unless blocked, i.e. unless a
     * character between them has a class >= c's (last_cc: class of the last character kept
     * after the starter, -1 when none) */
    size_t w = 0;
    long starter = -1;
    int last_cc = -1;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = d[i];
        int cc = ccc_of(c);
        if (starter >= 0 && (last_cc < 0 || last_cc < cc)) {
            uint32_t comp = compose(d[starter], c);
            if (comp) { d[starter] = comp; continue; }
        }
        if (cc == 0) { starter = (long)w; last_cc = -1; }
        else last_cc = cc;
        d[w++] = c;
    }
    *nout = w;
}

/* Decode strict UTF-8 (no overlongs, surrogates or values past U+10FFFF). Returns the number
 * of code points, or -1 - (byte offset of the first bad sequence). */
static long utf8_decode(const uint8_t *s, size_t n, uint32_t *out)
{
    size_t i = 0;
    long m = 0;
    while (i < n) {
        uint32_t c = s[i];
        int len;
        uint32_t min;
        if (c < 0x80) { out[m++] = c; i++; continue; }
        else if ((c & 0xE0) == 0xC0) { len = 2; c &= 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; c &= 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; c &= 0x07; min = 0x10000; }
        else return -1 - (long)i;
        if (i + (size_t)len > n) return -1 - (long)i;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return -1 - (long)i;
            c = c << 6 | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) return -1 - (long)i;
        out[m++] = c;
        i += (size_t)len;
    }
    return m;
}

/* ---------------------------------------------------------------- BPE */

typedef struct { int32_t rank, pos, new_id; } merge_item;

static int item_less(merge_item x, merge_item y)
{
    return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos);
}

static void heap_push(merge_item *h, int *n, merge_item x)
{
    int i = (*n)++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!item_less(x, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static merge_item heap_pop(merge_item *h, int *n)
{
    merge_item top = h[0], x = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && item_less(h[c + 1], h[c])) c++;
        if (!item_less(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
    return top;
}

/* Push the merge of symbols (pos, next) if the vocabulary has one. */
static void push_pair(const dl_tokenizer *t, merge_item *h, int *nh, const int32_t *sym,
                      int pos, int next)
{
    int32_t r = pair_lookup(t, sym[pos], sym[next]);
    if (r >= 0) heap_push(h, nh, (merge_item){r, pos, t->merge_new[r]});
}

/* BPE of one pre-tokenized piece (its UTF-8 bytes b[0..n)), appended to out. Follows
 * tokenizers' Word::merge_all: a heap of (rank, position), lowest rank first, ties to the
 * left; stale entries (a side already merged, or the pair changed) are skipped. */
static int bpe_piece(const dl_tokenizer *t, const uint8_t *b, int n, ivec *out, dl_tok_work *wk)
{
    int32_t sym_s[64];
    int prev_s[64], next_s[64];
    merge_item heap_s[192];
    int32_t *sym = sym_s;
    int *prev = prev_s, *next = next_s;
    merge_item *heap = heap_s;
    if (n > 64) {
        /* [n] symbols, [n] prev, [n] next, [3n] heap items from the work */
        DL_TRY(wgrow(&wk->bpe, &wk->bpe_cap, (size_t)n * (3 * sizeof(int32_t) + 3 * sizeof(merge_item))));
        heap = wk->bpe;
        sym = (int32_t *)(heap + 3 * n);
        prev = sym + n;
        next = prev + n;
    }
    for (int i = 0; i < n; i++) {
        int32_t id = i == n - 1 ? t->byte_end_id[b[i]] : t->byte_id[b[i]];
        sym[i] = id >= 0 ? id : t->unk;
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    int nh = 0;
    for (int i = 0; i + 1 < n; i++) push_pair(t, heap, &nh, sym, i, i + 1);
    while (nh > 0) {
        merge_item top = heap_pop(heap, &nh);
        int pos = top.pos;
        if (sym[pos] < 0 || next[pos] < 0) continue;
        int right = next[pos];
        int32_t r = pair_lookup(t, sym[pos], sym[right]);
        if (r < 0 || t->merge_new[r] != top.new_id) continue;
        sym[pos] = top.new_id;
        sym[right] = -1;   /* removed */
        next[pos] = next[right];
        if (next[pos] >= 0) prev[next[pos]] = pos;
        if (prev[pos] >= 0) push_pair(t, heap, &nh, sym, prev[pos], pos);
        if (next[pos] >= 0) push_pair(t, heap, &nh, sym, pos, next[pos]);
    }
    int rc = DL_OK;
    for (int i = 0; i < n && rc == DL_OK; i++)
        if (sym[i] >= 0) rc = ivec_push(out, sym[i]);
    return rc;
}

/* BPE with the cache for short pieces. */
static int bpe_cached(dl_tokenizer *t, const uint8_t *b, int n, ivec *out, dl_tok_work *wk)
{
    if (n > CACHE_MAX_WORD) return bpe_piece(t, b, n, out, wk);
    uint32_t mask = CACHE_SLOTS - 1, slot = (uint32_t)hash_bytes(b, (size_t)n) & mask;
    pthread_mutex_lock(&t->cache_mu);
    for (uint32_t i = slot; t->cache[i].word; i = (i + 1) & mask) {
        cache_entry *e = &t->cache[i];
        if ((int)strlen(e->word) == n && memcmp(e->word, b, (size_t)n) == 0) {
            int rc = DL_OK;
            for (int k = 0; k < e->n && rc == DL_OK; k++) rc = ivec_push(out, e->ids[k]);
            pthread_mutex_unlock(&t->cache_mu);
            return rc;
        }
    }
    pthread_mutex_unlock(&t->cache_mu);
    size_t start = out->n;
    DL_TRY(bpe_piece(t, b, n, out, wk));
    int cnt = (int)(out->n - start);
    char *word = malloc((size_t)n + 1);
    int32_t *ids = malloc((size_t)(cnt ? cnt : 1) * sizeof *ids);
    if (!word || !ids) { free(word); free(ids); return DL_OK; }   /* cache is optional */
    memcpy(word, b, (size_t)n);
    word[n] = 0;
    memcpy(ids, out->v + start, (size_t)cnt * sizeof *ids);
    pthread_mutex_lock(&t->cache_mu);
    if (t->cache_used >= CACHE_SLOTS / 2) {
        for (int i = 0; i < CACHE_SLOTS; i++) {
            free(t->cache[i].word);
            free(t->cache[i].ids);
            t->cache[i] = (cache_entry){0};
        }
        t->cache_used = 0;
    }
    uint32_t i = slot;
    while (t->cache[i].word && !((int)strlen(t->cache[i].word) == n &&
                                 memcmp(t->cache[i].word, b, (size_t)n) == 0))
        i = (i + 1) & mask;
    if (t->cache[i].word) { free(word); free(ids); }   /* another thread inserted it */
    else {
        t->cache[i] = (cache_entry){word, ids, cnt};
        t->cache_used++;
    }
    pthread_mutex_unlock(&t->cache_mu);
    return DL_OK;
}

/* ---------------------------------------------------------------- encoding */

/* Emit the UTF-8 of cps[0..n) as one piece through BPE. */
static int emit_piece(dl_tokenizer *t, const uint32_t *cps, size_t n, ivec *out, uint8_t *buf, dl_tok_work *wk)
{
    int len = 0;
    for (size_t i = 0; i < n; i++) len += utf8_put(cps[i], (char *)buf + len);
    return bpe_cached(t, buf, len, out, wk);
}

static int is_literal(const uint32_t *s, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    if (n < k) return 0;
    for (size_t i = 0; i < k; i++)
        if (s[i] != (uint8_t)lit[i]) return 0;
    return 1;
}

/* Normalize and pre-tokenize the span text[0..len) (no special tokens inside), BPE each
 * piece and append the ids. */
static int encode_span(dl_tokenizer *t, const char *text, size_t len, ivec *out, dl_tok_work *wk)
{
    if (len == 0) return DL_OK;
    DL_TRY(wgrow(&wk->cp, &wk->cp_cap, (len + 1) * sizeof(uint32_t)));
    uint32_t *cp = wk->cp;
    long n = utf8_decode((const uint8_t *)text, len, cp);
    if (n < 0) return dl_error_set("prompt is not valid UTF-8 (bad byte sequence at offset %ld)", -1 - n);
    uint32_t *c = NULL;
    size_t m = 0;
    int all_ascii = 1;
    for (long i = 0; i < n; i++) all_ascii &= cp[i] < 0x80;
    if (all_ascii) { c = cp; m = (size_t)n; }   /* NFC is the identity on ASCII */
    else {
        DL_TRY(wgrow(&wk->nf, &wk->nf_cap, (4 * (size_t)n + 1) * sizeof(uint32_t)));
        c = wk->nf;
        nfc(cp, (size_t)n, c, &m);
    }
    /* whitespace runs -> ' ', then per-character lower case (up to 3 code points each) */
    DL_TRY(wgrow(&wk->low, &wk->low_cap, (3 * m + 1) * sizeof(uint32_t)));
    DL_TRY(wgrow(&wk->piece, &wk->piece_cap, 4 * m + 8));
    uint32_t *s = wk->low;
    uint8_t *buf = wk->piece;
    size_t k = 0;
    for (size_t i = 0; i < m;) {
        if (is_space(c[i])) {
            while (i < m && is_space(c[i])) i++;
            s[k++] = ' ';
            continue;
        }
        k += (size_t)lower_of(c[i++], s + k);
    }
    /* CLIP's pattern, alternatives in order; whitespace between matches is dropped. */
    int rc = DL_OK;
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    static const char *const literals[] = {"<|startoftext|>", "<|endoftext|>"};
    for (size_t i = 0; i < k && rc == DL_OK;) {
        uint32_t ch = s[i];
        if (is_space(ch)) { i++; continue; }
        size_t j = i;
        int lit = -1;
        for (int q = 0; q < 2 && lit < 0; q++)
            if (ch == '<' && is_literal(s + i, k - i, literals[q])) lit = q;
        if (lit >= 0) {
            /* the byte-level pre-tokenizer's GPT-2 pattern splits it: "<|", name, "|>" */
            size_t L = strlen(literals[lit]);
            rc = emit_piece(t, s + i, 2, out, buf, wk);
            if (rc == DL_OK) rc = emit_piece(t, s + i + 2, L - 4, out, buf, wk);
            if (rc == DL_OK) rc = emit_piece(t, s + i + L - 2, 2, out, buf, wk);
            i += L;
            continue;
        }
        if (ch == '\'') {
            for (int q = 0; q < 7 && j == i; q++)
                if (is_literal(s + i, k - i, contractions[q])) j = i + strlen(contractions[q]);
        }
        if (j == i) {
            if (is_letter(ch)) { while (j < k && is_letter(s[j])) j++; }
            else if (is_number(ch)) j = i + 1;
            else while (j < k && !is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j])) j++;
        }
        rc = emit_piece(t, s + i, j - i, out, buf, wk);
        i = j;
    }
    return rc;
}

static int encode_vec(const dl_tokenizer *ctok, const char *text, ivec *out, dl_tok_work *wk)
{
    dl_tokenizer *t = (dl_tokenizer *)ctok;   /* only the mutex-guarded cache changes */
    size_t len = strlen(text), start = 0;
    for (size_t i = 0; i < len;) {
        /* special tokens: leftmost, then longest match on the raw text */
        int best = -1;
        size_t best_len = 0;
        for (int q = 0; q < t->n_special; q++) {
            const char *sp = t->tokens[t->special[q]];
            size_t sl = strlen(sp);
            if (sl > best_len && sl <= len - i && memcmp(text + i, sp, sl) == 0) {
                best = q;
                best_len = sl;
            }
        }
        if (best < 0) { i++; continue; }
        DL_TRY(encode_span(t, text + start, i - start, out, wk));
        DL_TRY(ivec_push(out, t->special[best]));
        i += best_len;
        start = i;
    }
    return encode_span(t, text + start, len - start, out, wk);
}

int dl_tokenizer_encode(const dl_tokenizer *tok, const char *text, int32_t **ids, int *n)
{
    ivec v = {0};
    dl_tok_work wk = {0};
    int rc = encode_vec(tok, text, &v, &wk);
    dl_tok_work_free(&wk);
    if (rc != DL_OK) { free(v.v); *ids = NULL; *n = 0; return DL_ERR; }
    if (!v.v && !(v.v = malloc(sizeof *v.v))) return dl_error_set("tokenizer: out of memory");
    *ids = v.v;
    *n = (int)v.n;
    return DL_OK;
}

int dl_tokenizer_encode_windows_w(const dl_tokenizer *tok, dl_tok_work *wk, const char *text, int n_windows,
                                  int32_t *out)
{
    DL_ASSERT(n_windows >= 1);
    ivec v = {wk->ids, 0, wk->ids_cap};
    int rc = encode_vec(tok, text, &v, wk);
    wk->ids = v.v;   /* keep the (possibly grown) buffer */
    wk->ids_cap = v.cap;
    DL_TRY(rc);
    /* the sd-scripts sequence seq: BOS, tokens truncated to 75 * n_windows, EOS, pad (read in
     * place: seq[i] is seq_at(i)) */
    int body = DL_TOK_WINDOW * n_windows, total = body + 2;
    int nt = (int)v.n < body ? (int)v.n : body;
#define seq_at(i) ((i) == 0 ? tok->bos : (i) <= nt ? v.v[(i) - 1] : (i) == nt + 1 ? tok->eos : tok->pad)
    for (int w = 0; w < n_windows; w++) {
        int32_t *o = out + (size_t)w * DL_TOK_CONTEXT;   // [77]
        o[0] = seq_at(0);
        for (int k = 0; k < DL_TOK_WINDOW; k++) o[1 + k] = seq_at(1 + w * DL_TOK_WINDOW + k);
        o[DL_TOK_CONTEXT - 1] = seq_at(total - 1);
        if (n_windows > 1 && tok->pad != tok->eos) {
            if (o[DL_TOK_CONTEXT - 2] != tok->eos && o[DL_TOK_CONTEXT - 2] != tok->pad)
                o[DL_TOK_CONTEXT - 1] = tok->eos;
            if (o[1] == tok->pad) o[1] = tok->eos;
        }
    }
#undef seq_at
    return DL_OK;
}

int dl_tokenizer_encode_windows(const dl_tokenizer *tok, const char *text, int n_windows,
                                int32_t *out)
{
    dl_tok_work wk = {0};
    int rc = dl_tokenizer_encode_windows_w(tok, &wk, text, n_windows, out);
    dl_tok_work_free(&wk);
    return rc;
}

int dl_tokenizer_encode_padded_w(const dl_tokenizer *tok, dl_tok_work *wk, const char *text,
                                 int32_t out[DL_TOK_CONTEXT])
{
    return dl_tokenizer_encode_windows_w(tok, wk, text, 1, out);
}

int dl_tokenizer_encode_padded(const dl_tokenizer *tok, const char *text,
                               int32_t out[DL_TOK_CONTEXT])
{
    return dl_tokenizer_encode_windows(tok, text, 1, out);
}

int dl_tokenizer_count_windows(const dl_tokenizer *tok, const char *text, int max_windows,
                               int *n_windows, int *n_tokens)
{
    DL_ASSERT(max_windows >= 1);
    int32_t *ids = NULL;
    int n = 0;
    DL_TRY(dl_tokenizer_encode(tok, text, &ids, &n));
    free(ids);
    int w = (n + DL_TOK_WINDOW - 1) / DL_TOK_WINDOW;
    *n_windows = w < 1 ? 1 : w > max_windows ? max_windows : w;
    if (n_tokens) *n_tokens = n;
    return DL_OK;
}

int dl_tokenizer_print(const dl_tokenizer *tok, const char *text, int max_windows, FILE *f)
{
    int32_t *ids = NULL;
    int n = 0, nw = 0;
    DL_TRY(dl_tokenizer_encode(tok, text, &ids, &n));
    fprintf(f, "tokens %d:", n);
    for (int i = 0; i < n; i++) fprintf(f, " %d", (int)ids[i]);
    fputc('\n', f);
    free(ids);
    DL_TRY(dl_tokenizer_count_windows(tok, text, max_windows, &nw, NULL));
    int32_t *win = malloc((size_t)nw * DL_TOK_CONTEXT * sizeof *win);
    if (!win) return dl_error_set("tokenizer: out of memory");
    if (dl_tokenizer_encode_windows(tok, text, nw, win) != DL_OK) { free(win); return DL_ERR; }
    for (int w = 0; w < nw; w++) {
        fprintf(f, "window %d:", w);
        for (int i = 0; i < DL_TOK_CONTEXT; i++) fprintf(f, " %d", (int)win[w * DL_TOK_CONTEXT + i]);
        fputc('\n', f);
    }
    free(win);
    return DL_OK;
}
