/* clip.c - CLIP text encoder: loading by transformers names and the CPU forward. */
#include "model/clip.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_LEN 96
enum { NAMES_PER_LAYER = 8 };

int dl_clip_weights_bytes(dl_checkpoint *ck, size_t *bytes)
{
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder weights (measuring)");
    dl_clip m;
    if (dl_clip_load(&m, ck, &a) != DL_OK) return DL_ERR;
    dl_clip_free(&m);
    *bytes = a.used;
    return DL_OK;
}

static size_t al64(int64_t n) { return ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63; }

/* Largest rank of an unmerged LoRA on any layer (0 without). */
static int max_rank(const dl_clip *m)
{
    int r = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        const dl_clip_layer *y = &m->layers[l];
        const dl_linear *all[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
        for (int i = 0; i < 6; i++)
            if (all[i]->lora && !all[i]->lora->merged && all[i]->lora->r > r) r = all[i]->lora->r;
    }
    return r;
}

size_t dl_clip_scratch_bytes(const dl_clip *m, int N, int T)
{
    const dl_clip_config *c = &m->cfg;
    const int64_t M = (int64_t)N * T, C = c->hidden_size, I = c->intermediate_size;
    /* what dl_clip_forward holds throughout: x, h, q, k, v, a [M, C], f1, f2 [M, I], lse [N, H, T] */
    size_t held = 6 * al64(M * C) + 2 * al64(M * I) + al64((int64_t)N * c->num_heads * T);
    /* and the most one layer call takes and gives back: layer-norm mean/rstd [M], LoRA's [M, r] */
    size_t call = 2 * al64(M), lora = al64(M * max_rank(m));
    return held + (call > lora ? call : lora);
}

static int load_all(dl_clip *m, dl_checkpoint *ck, dl_arena *weights)
{
    const dl_clip_config *c = &m->cfg;
    int C = c->hidden_size, I = c->intermediate_size, L = c->num_layers;
    dl_loader ld = {ck, DL_PART_TEXT, weights};
    int64_t ts[2] = {c->vocab_size, C}, ps[2] = {c->max_positions, C};
    m->layers = calloc((size_t)L, sizeof *m->layers);
    m->names = calloc((size_t)L * NAMES_PER_LAYER, NAME_LEN);
    if (!m->layers || !m->names) return dl_error_set("out of memory loading the text encoder");
    if (!(m->tok_emb = dl_load_tensor(&ld, "text_model.embeddings.token_embedding.weight", 2, ts))) return DL_ERR;
    if (!(m->pos_emb = dl_load_tensor(&ld, "text_model.embeddings.position_embedding.weight", 2, ps))) return DL_ERR;
    for (int l = 0; l < L; l++) {
        dl_clip_layer *y = &m->layers[l];
        char *nm = m->names + (size_t)l * NAMES_PER_LAYER * NAME_LEN;
        static const char *const parts[NAMES_PER_LAYER] = {"layer_norm1", "layer_norm2", "self_attn.q_proj",
                                                           "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                                           "mlp.fc1", "mlp.fc2"};
        for (int p = 0; p < NAMES_PER_LAYER; p++)
            snprintf(nm + p * NAME_LEN, NAME_LEN, "text_model.encoder.layers.%d.%s", l, parts[p]);
        DL_TRY(dl_norm_load(&y->ln1, &ld, nm + 0 * NAME_LEN, C, 0, c->layer_norm_eps));
        DL_TRY(dl_norm_load(&y->ln2, &ld, nm + 1 * NAME_LEN, C, 0, c->layer_norm_eps));
        DL_TRY(dl_linear_load(&y->q, &ld, nm + 2 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->k, &ld, nm + 3 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->v, &ld, nm + 4 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->o, &ld, nm + 5 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->fc1, &ld, nm + 6 * NAME_LEN, C, I, 1));
        DL_TRY(dl_linear_load(&y->fc2, &ld, nm + 7 * NAME_LEN, I, C, 1));
    }
    DL_TRY(dl_norm_load(&m->final_ln, &ld, "text_model.final_layer_norm", C, 0, c->layer_norm_eps));
    return DL_OK;
}

int dl_clip_load(dl_clip *m, dl_checkpoint *ck, dl_arena *weights)
{
    memset(m, 0, sizeof *m);
    m->cfg = ck->cfg.text;
    if (load_all(m, ck, weights) == DL_OK) return DL_OK;
    dl_clip_free(m);
    return DL_ERR;
}

void dl_clip_free(dl_clip *m)
{
    free(m->layers);
    free(m->names);
    m->layers = NULL;
    m->names = NULL;
}

dl_linear *dl_clip_find(const dl_clip *m, const char *name)
{
    static const char prefix[] = "text_model.encoder.layers.";
    if (!m->layers || strncmp(name, prefix, sizeof prefix - 1) != 0) return NULL;
    const char *p = name + sizeof prefix - 1;
    char *end;
    long l = strtol(p, &end, 10);
    if (end == p || *end != '.' || l < 0 || l >= m->cfg.num_layers) return NULL;
    dl_clip_layer *y = &m->layers[l];
    dl_linear *all[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
    for (int i = 0; i < 6; i++)
        if (all[i]->name && strcmp(all[i]->name, name) == 0) return all[i];
    return NULL;
}

void dl_clip_forward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, int layers,
                     int final_ln, float *out, dl_arena *scratch)
{
    const dl_clip_config *c = &m->cfg;
    const int C = c->hidden_size, I = c->intermediate_size, H = c->num_heads, d = C / H;
    const int64_t M = (int64_t)N * T;
    DL_ASSERTF(T >= 1 && T <= c->max_positions, "T = %d", T);
    DL_ASSERTF(layers >= 1 && layers <= c->num_layers, "layers = %d of %d", layers, c->num_layers);
    size_t mark = dl_arena_mark(scratch);
    float *x = dl_alloc_f32(scratch, M * C);   // [N, T, C] residual stream
    float *h = dl_alloc_f32(scratch, M * C);   // [N, T, C] normed input of a sublayer
    float *q = dl_alloc_f32(scratch, M * C);   // [N, T, H*d]
    float *k = dl_alloc_f32(scratch, M * C);   // [N, T, H*d]
    float *v = dl_alloc_f32(scratch, M * C);   // [N, T, H*d]
    float *a = dl_alloc_f32(scratch, M * C);   // [N, T, H*d] attention output
    float *f1 = dl_alloc_f32(scratch, M * I);  // [N, T, I]
    float *f2 = dl_alloc_f32(scratch, M * I);  // [N, T, I]
    float *lse = dl_alloc_f32(scratch, (int64_t)N * H * T); // [N, H, T]

    for (int n = 0; n < N; n++) // x = token_embedding[ids] + position_embedding[0:T]
        for (int t = 0; t < T; t++) {
            int id = ids[n * T + t];
            DL_ASSERTF(id >= 0 && id < c->vocab_size, "token id %d outside the vocabulary", id);
            const float *te = m->tok_emb + (size_t)id * C, *pe = m->pos_emb + (size_t)t * C;
            float *xr = x + ((size_t)n * T + t) * C;
            for (int i = 0; i < C; i++) xr[i] = te[i] + pe[i];
        }
    dl_attention_shape as = {.N = N, .Tq = T, .Tk = T, .H = H, .d = d, .scale = 1.0f / sqrtf((float)d), .causal = 1};
    for (int l = 0; l < layers; l++) {
        const dl_clip_layer *y = &m->layers[l];
        dl_layernorm_fwd(ctx, &y->ln1, M, x, h, scratch);     // [M, C]
        dl_linear_fwd(ctx, &y->q, M, h, q, scratch);          // [M, C]
        dl_linear_fwd(ctx, &y->k, M, h, k, scratch);          // [M, C]
        dl_linear_fwd(ctx, &y->v, M, h, v, scratch);          // [M, C]
        dl_be(ctx)->attention_forward(ctx, as, q, k, v, a, lse);   // [N, T, H*d], causal
        dl_linear_fwd(ctx, &y->o, M, a, h, scratch);          // [M, C]
        dl_be(ctx)->add_forward(ctx, M * C, x, h, x);         // x += attn
        dl_layernorm_fwd(ctx, &y->ln2, M, x, h, scratch);     // [M, C]
        dl_linear_fwd(ctx, &y->fc1, M, h, f1, scratch);       // [M, I]
        dl_be(ctx)->act_forward(ctx, c->act, M * I, f1, f2);  // [M, I]
        dl_linear_fwd(ctx, &y->fc2, M, f2, h, scratch);       // [M, C]
        dl_be(ctx)->add_forward(ctx, M * C, x, h, x);         // x += mlp
    }
    if (final_ln) dl_layernorm_fwd(ctx, &m->final_ln, M, x, out, scratch);
    else memcpy(out, x, (size_t)M * C * sizeof(float));
    dl_arena_release(scratch, mark);
}
