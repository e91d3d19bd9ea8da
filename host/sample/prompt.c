/* prompt.c - A1111 prompt syntax: LoRA tags, emphasis parsing, 75-token chunks with multipliers. */
#include "sample/prompt.h"

#include "core/error.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* ---- growable fragment list ---- */

typedef struct {
    dl_prompt_frag *v;
    int n, cap;
} frag_vec;

static int frag_push(frag_vec *f, const char *s, size_t len, double w)
{
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 16;
        dl_prompt_frag *v = realloc(f->v, sizeof *v * (size_t)cap);
        if (!v) return dl_error_set("prompt: out of memory");
        f->v = v;
        f->cap = cap;
    }
    char *t = malloc(len + 1);
    if (!t) return dl_error_set("prompt: out of memory");
    memcpy(t, s, len);
    t[len] = 0;
    f->v[f->n].text = t;
    f->v[f->n].weight = w;
    f->n++;
    return DL_OK;
}

void dl_prompt_frags_free(dl_prompt_frag *frags, int n)
{
    for (int i = 0; i < n; i++) free(frags[i].text);
    free(frags);
}

void dl_prompt_loras_free(dl_prompt_lora *loras, int n)
{
    for (int i = 0; i < n; i++) free(loras[i].name);
    free(loras);
}

/* ---- LoRA tags ---- */

static int parse_number(const char *s, size_t len, double *out)
{
    char buf[64];
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (len == 0 || len >= sizeof buf) return DL_ERR;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    *out = strtod(buf, &end);
    return *end ? DL_ERR : DL_OK;
}

int dl_prompt_extract_loras(const char *prompt, char **text, dl_prompt_lora **loras, int *n)
{
    size_t len = strlen(prompt);
    char *out = malloc(len + 1);
    dl_prompt_lora *v = NULL;
    int nv = 0;
    size_t o = 0;
    *text = NULL;
    *loras = NULL;
    *n = 0;
    if (!out) return dl_error_set("prompt: out of memory");
    for (size_t i = 0; i < len;) {
        /* A1111's re_extra_net: <(\w+):([^>]+)> ; only lora/lyco are ours */
        size_t skip = 0;
        if (prompt[i] == '<' && (!strncmp(prompt + i + 1, "lora:", 5) || !strncmp(prompt + i + 1, "lyco:", 5))) {
            const char *close = strchr(prompt + i + 6, '>');
            if (close && close > prompt + i + 6) {
                const char *a = prompt + i + 6;
                size_t alen = (size_t)(close - a);
                /* split on ':' : name, te weight, unet weight */
                const char *c1 = memchr(a, ':', alen);
                size_t nlen = c1 ? (size_t)(c1 - a) : alen;
                double te = 1.0, un;
                int has_un = 0;
                while (nlen && isspace((unsigned char)a[nlen - 1])) nlen--;
                if (nlen == 0) {
                    free(out);
                    dl_prompt_loras_free(v, nv);
                    return dl_error_set("prompt: LoRA tag '%.*s' has no name", (int)(close - prompt - i + 1), prompt + i);
                }
                if (c1) {
                    const char *w1 = c1 + 1;
                    const char *c2 = memchr(w1, ':', (size_t)(close - w1));
                    size_t l1 = c2 ? (size_t)(c2 - w1) : (size_t)(close - w1);
                    if (parse_number(w1, l1, &te) != DL_OK ||
                        (c2 && (has_un = 1, parse_number(c2 + 1, (size_t)(close - c2 - 1), &un) != DL_OK))) {
                        free(out);
                        dl_prompt_loras_free(v, nv);
                        return dl_error_set("prompt: LoRA tag '%.*s': the weight is not a number",
                                            (int)(close - prompt - i + 1), prompt + i);
                    }
                }
                dl_prompt_lora *nvv = realloc(v, sizeof *v * (size_t)(nv + 1));
                char *name = malloc(nlen + 1);
                if (!nvv || !name) {
                    free(name);
                    free(nvv ? nvv : v);
                    free(out);
                    return dl_error_set("prompt: out of memory");
                }
                v = nvv;
                memcpy(name, a, nlen);
                name[nlen] = 0;
                v[nv].name = name;
                v[nv].te_weight = te;
                v[nv].unet_weight = has_un ? un : te;
                nv++;
                skip = (size_t)(close - (prompt + i)) + 1;
            }
        }
        if (skip) i += skip;
        else out[o++] = prompt[i++];
    }
    out[o] = 0;
    *text = out;
    *loras = v;
    *n = nv;
    return DL_OK;
}

/* ---- parse_prompt_attention ---- */

static int is_word(unsigned char c) { return isalnum(c) || c == '_' || c >= 0x80; }

/* Split a plain run on re_break = \s*\bBREAK\b\s* and push the parts (BREAK entries weight -1). */
static int push_run(frag_vec *f, const char *s, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i + 5 <= len; i++) {
        if (memcmp(s + i, "BREAK", 5) != 0) continue;
        if (i > 0 && is_word((unsigned char)s[i - 1])) continue;
        if (i + 5 < len && is_word((unsigned char)s[i + 5])) continue;
        size_t a = i, b = i + 5;
        while (a > start && isspace((unsigned char)s[a - 1])) a--;
        while (b < len && isspace((unsigned char)s[b])) b++;
        DL_TRY(frag_push(f, s + start, a - start, 1.0));
        DL_TRY(frag_push(f, "BREAK", 5, -1.0));
        start = b;
        i = b - 1;
    }
    return frag_push(f, s + start, len - start, 1.0);
}

/* `:\s*([+-]?[.\d]+)\s*\)` at s; returns the match length (0 when no match) and the number. */
static size_t match_weight(const char *s, double *w)
{
    size_t i = 1;
    while (isspace((unsigned char)s[i])) i++;
    size_t ns = i;
    if (s[i] == '+' || s[i] == '-') i++;
    size_t ds = i;
    while (s[i] == '.' || isdigit((unsigned char)s[i])) i++;
    if (i == ds) return 0;
    size_t ne = i;
    while (isspace((unsigned char)s[i])) i++;
    if (s[i] != ')') return 0;
    char buf[64];
    size_t l = ne - ns < sizeof buf - 1 ? ne - ns : sizeof buf - 1;
    memcpy(buf, s + ns, l);
    buf[l] = 0;
    *w = strtod(buf, NULL); /* Python's float() would reject "1.2.3"; we read its prefix */
    return i + 1;
}

static void multiply_range(frag_vec *f, int start, double m)
{
    for (int p = start; p < f->n; p++) f->v[p].weight *= m;
}

int dl_prompt_parse(const char *text, dl_prompt_frag **frags, int *n)
{
    frag_vec f = {0};
    int *round = malloc(sizeof(int) * (strlen(text) + 1)), *square = malloc(sizeof(int) * (strlen(text) + 1));
    int nr = 0, ns = 0;
    *frags = NULL;
    *n = 0;
    if (!round || !square) {
        free(round);
        free(square);
        return dl_error_set("prompt: out of memory");
    }
    const double round_mult = 1.1, square_mult = 1 / 1.1;
    int rc = DL_OK;
    for (size_t i = 0; text[i] && rc == DL_OK;) {
        char c = text[i];
        double w;
        size_t m;
        if (c == '\\') {
            char d = text[i + 1];
            if (d == '(' || d == ')' || d == '[' || d == ']' || d == '\\') {
                rc = frag_push(&f, text + i + 1, 1, 1.0);
                i += 2;
            } else {
                rc = frag_push(&f, "", 0, 1.0); /* a lone backslash: text[1:] is empty */
                i += 1;
            }
        } else if (c == '(') {
            round[nr++] = f.n;
            i++;
        } else if (c == '[') {
            square[ns++] = f.n;
            i++;
        } else if (c == ':' && (m = match_weight(text + i, &w)) > 0) {
            if (nr) multiply_range(&f, round[--nr], w);
            else rc = push_run(&f, text + i, m);
            i += m;
        } else if (c == ')') {
            if (nr) multiply_range(&f, round[--nr], round_mult);
            else rc = push_run(&f, ")", 1);
            i++;
        } else if (c == ']') {
            if (ns) multiply_range(&f, square[--ns], square_mult);
            else rc = push_run(&f, "]", 1);
            i++;
        } else if (c == ':') {
            rc = push_run(&f, ":", 1);
            i++;
        } else {
            size_t j = i;
            while (text[j] && !strchr("\\()[]:", text[j])) j++;
            rc = push_run(&f, text + i, j - i);
            i = j;
        }
    }
    for (int k = 0; k < nr; k++) multiply_range(&f, round[k], round_mult);
    for (int k = 0; k < ns; k++) multiply_range(&f, square[k], square_mult);
    free(round);
    free(square);
    if (rc == DL_OK && f.n == 0) rc = frag_push(&f, "", 0, 1.0);
    if (rc != DL_OK) {
        dl_prompt_frags_free(f.v, f.n);
        return DL_ERR;
    }
    /* merge runs of identical weights */
    for (int i = 0; i + 1 < f.n;) {
        if (f.v[i].weight == f.v[i + 1].weight) {
            size_t la = strlen(f.v[i].text), lb = strlen(f.v[i + 1].text);
            char *t = realloc(f.v[i].text, la + lb + 1);
            if (!t) {
                dl_prompt_frags_free(f.v, f.n);
                return dl_error_set("prompt: out of memory");
            }
            memcpy(t + la, f.v[i + 1].text, lb + 1);
            f.v[i].text = t;
            free(f.v[i + 1].text);
            memmove(f.v + i + 1, f.v + i + 2, sizeof *f.v * (size_t)(f.n - i - 2));
            f.n--;
        } else {
            i++;
        }
    }
    *frags = f.v;
    *n = f.n;
    return DL_OK;
}

/* ---- chunks ---- */

enum { CHUNK = DL_TOK_WINDOW, CTX = DL_TOK_CONTEXT, COMMA_BACKTRACK = 20 };

typedef struct {
    const dl_tokenizer *tok;
    dl_prompt_chunks *out;
    int cap;
    int32_t cur[CHUNK + 1];
    float cm[CHUNK + 1];
    int len;          /* tokens in the current chunk */
    int last_comma;   /* -1 or the position of the last comma in the current chunk */
    int max_chunks;
} chunker;

static int next_chunk(chunker *c, int is_last)
{
    dl_prompt_chunks *o = c->out;
    o->n_tokens += is_last ? c->len : CHUNK;
    if (o->n == c->max_chunks)
        return dl_error_set("prompt: more than %d chunks of 75 tokens (%d+ tokens)", c->max_chunks, o->n_tokens);
    if (o->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 2;
        int32_t *ids = realloc(o->ids, sizeof *ids * CTX * (size_t)cap);
        if (!ids) return dl_error_set("prompt: out of memory");
        o->ids = ids;
        float *m = realloc(o->mult, sizeof *m * CTX * (size_t)cap);
        if (!m) return dl_error_set("prompt: out of memory");
        o->mult = m;
        c->cap = cap;
    }
    int32_t eos = dl_tokenizer_eos(c->tok), pad = dl_tokenizer_pad(c->tok);
    int32_t *ids = o->ids + (size_t)o->n * CTX;
    float *m = o->mult + (size_t)o->n * CTX;
    ids[0] = dl_tokenizer_bos(c->tok);
    m[0] = 1.0f;
    for (int i = 0; i < CHUNK; i++) {
        ids[1 + i] = i < c->len ? c->cur[i] : eos;
        m[1 + i] = i < c->len ? c->cm[i] : 1.0f;
    }
    ids[CTX - 1] = eos;
    m[CTX - 1] = 1.0f;
    if (pad != eos) { /* SD2: everything after the first EOS becomes pad */
        int k = 0;
        while (k < CTX && ids[k] != eos) k++;
        for (int i = k + 1; i < CTX; i++) ids[i] = pad;
    }
    o->n++;
    c->len = 0;
    c->last_comma = -1;
    return DL_OK;
}

int dl_prompt_chunks_build(const dl_tokenizer *tok, const char *text, int emphasis, int max_chunks,
                           dl_prompt_chunks *out)
{
    memset(out, 0, sizeof *out);
    dl_prompt_frag *frags = NULL, one = {(char *)text, 1.0};
    int nf = 1;
    if (emphasis) DL_TRY(dl_prompt_parse(text, &frags, &nf));
    chunker c = {.tok = tok, .out = out, .last_comma = -1, .max_chunks = max_chunks};
    int32_t comma = dl_tokenizer_id(tok, ",</w>");
    int rc = DL_OK;
    for (int f = 0; f < nf && rc == DL_OK; f++) {
        const dl_prompt_frag *fr = emphasis ? &frags[f] : &one;
        if (fr->weight == -1.0 && !strcmp(fr->text, "BREAK")) {
            rc = next_chunk(&c, 0);
            continue;
        }
        int32_t *ids = NULL;
        int n = 0;
        rc = dl_tokenizer_encode(tok, fr->text, &ids, &n);
        if (rc != DL_OK) break;
        float w = (float)fr->weight;
        for (int p = 0; p < n && rc == DL_OK; p++) {
            if (ids[p] == comma && comma >= 0) {
                c.last_comma = c.len;
            } else if (c.len == CHUNK && c.last_comma != -1 && c.len - c.last_comma <= COMMA_BACKTRACK) {
                int brk = c.last_comma + 1, nrel = c.len - brk;
                int32_t rt[CHUNK];
                float rm[CHUNK];
                memcpy(rt, c.cur + brk, sizeof *rt * (size_t)nrel);
                memcpy(rm, c.cm + brk, sizeof *rm * (size_t)nrel);
                c.len = brk;
                rc = next_chunk(&c, 0);
                if (rc != DL_OK) break;
                memcpy(c.cur, rt, sizeof *rt * (size_t)nrel);
                memcpy(c.cm, rm, sizeof *rm * (size_t)nrel);
                c.len = nrel;
            }
            if (c.len == CHUNK) {
                rc = next_chunk(&c, 0);
                if (rc != DL_OK) break;
            }
            c.cur[c.len] = ids[p];
            c.cm[c.len] = w;
            c.len++;
        }
        free(ids);
    }
    if (rc == DL_OK && (c.len > 0 || out->n == 0)) rc = next_chunk(&c, 1);
    if (emphasis) dl_prompt_frags_free(frags, nf);
    if (rc != DL_OK) dl_prompt_chunks_free(out);
    return rc;
}

void dl_prompt_chunks_free(dl_prompt_chunks *c)
{
    free(c->ids);
    free(c->mult);
    memset(c, 0, sizeof *c);
}

void dl_prompt_apply_emphasis(float *z, const float *mult, int T, int C)
{
    double s0 = 0, s1 = 0;
    size_t n = (size_t)T * (size_t)C;
    for (size_t i = 0; i < n; i++) s0 += z[i];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            float *p = &z[(size_t)t * C + c];
            *p *= mult[t];
            s1 += *p;
        }
    float m0 = (float)(s0 / (double)n), m1 = (float)(s1 / (double)n);
    float r = m0 / m1;
    for (size_t i = 0; i < n; i++) z[i] *= r;
}
