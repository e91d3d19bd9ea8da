/* clip.c - CLIP text encoder: loading by transformers names (and the weight listing that runs
 * the loader), and the forward, layer by layer on the pieces the training forward shares. */
#include "model/clip.h"
#include "backend/backend.h"
#include "core/error.h"
#include "model/graph.h"

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

/* The weights in the order transformers lists them (k, v, q, out_proj, layer_norm1, fc1, fc2,
 * layer_norm2 per layer): a listing (dl_model_weights) is the order LoRA targets are taken in. */
static int load_all(dl_clip *m, const dl_loader *ld)
{
    const dl_clip_config *c = &m->cfg;
    int C = c->hidden_size, I = c->intermediate_size, L = c->num_layers;
    if (L > DL_CLIP_MAX_LAYERS)
        return dl_error_set("text encoder with %d layers: at most %d are supported", L, DL_CLIP_MAX_LAYERS);
    int64_t ts[2] = {c->vocab_size, C}, ps[2] = {c->max_positions, C};
    m->layers = calloc((size_t)L, sizeof *m->layers);
    m->names = calloc((size_t)L * NAMES_PER_LAYER, NAME_LEN);
    if (!m->layers || !m->names) return dl_error_set("out of memory loading the text encoder");
    if (!(m->tok_emb = dl_load_tensor(ld, "text_model.embeddings.token_embedding.weight", 2, ts))) return DL_ERR;
    if (!(m->pos_emb = dl_load_tensor(ld, "text_model.embeddings.position_embedding.weight", 2, ps))) return DL_ERR;
    for (int l = 0; l < L; l++) {
        dl_clip_layer *y = &m->layers[l];
        char *nm = m->names + (size_t)l * NAMES_PER_LAYER * NAME_LEN;
        static const char *const parts[NAMES_PER_LAYER] = {"self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                                                           "self_attn.out_proj", "layer_norm1", "mlp.fc1", "mlp.fc2",
                                                           "layer_norm2"};
        for (int p = 0; p < NAMES_PER_LAYER; p++)
            snprintf(nm + p * NAME_LEN, NAME_LEN, "text_model.encoder.layers.%d.%s", l, parts[p]);
        DL_TRY(dl_linear_load(&y->k, ld, nm + 0 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->v, ld, nm + 1 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->q, ld, nm + 2 * NAME_LEN, C, C, 1));
        DL_TRY(dl_linear_load(&y->o, ld, nm + 3 * NAME_LEN, C, C, 1));
        DL_TRY(dl_norm_load(&y->ln1, ld, nm + 4 * NAME_LEN, C, 0, c->layer_norm_eps));
        DL_TRY(dl_linear_load(&y->fc1, ld, nm + 5 * NAME_LEN, C, I, 1));
        DL_TRY(dl_linear_load(&y->fc2, ld, nm + 6 * NAME_LEN, I, C, 1));
        DL_TRY(dl_norm_load(&y->ln2, ld, nm + 7 * NAME_LEN, C, 0, c->layer_norm_eps));
    }
    DL_TRY(dl_norm_load(&m->final_ln, ld, "text_model.final_layer_norm", C, 0, c->layer_norm_eps));
    return DL_OK;
}

int dl_clip_load(dl_clip *m, dl_checkpoint *ck, dl_arena *weights)
{
    memset(m, 0, sizeof *m);
    m->cfg = ck->cfg.text;
    dl_loader ld = {ck, DL_PART_TEXT, weights, NULL, NULL};
    if (load_all(m, &ld) == DL_OK) return DL_OK;
    dl_clip_free(m);
    return DL_ERR;
}

int dl_clip_list_weights(const dl_clip_config *cfg, dl_weight_fn fn, void *user)
{
    dl_clip m;
    memset(&m, 0, sizeof m);
    m.cfg = *cfg;
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder weights (listing)");
    dl_loader ld = {NULL, DL_PART_TEXT, &a, fn, user};
    int rc = load_all(&m, &ld);
    dl_clip_free(&m);
    return rc;
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

/* ================================================================ forward */

int dl_clip_layer_carve(dl_clip_layer_saved *v, const dl_clip_config *c, int N, int T, dl_arena *a)
{
    const int64_t M = (int64_t)N * T, C = c->hidden_size, I = c->intermediate_size;
    float **mc[] = {&v->x_in, &v->h1, &v->q, &v->k, &v->v, &v->a, &v->x_mid, &v->h2};
    float **m1[] = {&v->mean1, &v->rstd1, &v->mean2, &v->rstd2};
    for (size_t i = 0; i < sizeof mc / sizeof *mc; i++)
        if (!(*mc[i] = dl_arena_alloc(a, (size_t)(M * C) * sizeof(float)))) return DL_ERR;
    for (size_t i = 0; i < sizeof m1 / sizeof *m1; i++)
        if (!(*m1[i] = dl_arena_alloc(a, (size_t)M * sizeof(float)))) return DL_ERR;
    if (!(v->f1 = dl_arena_alloc(a, (size_t)(M * I) * sizeof(float))) ||
        !(v->f2 = dl_arena_alloc(a, (size_t)(M * I) * sizeof(float))) ||
        !(v->lse = dl_arena_alloc(a, (size_t)N * c->num_heads * T * sizeof(float))))
        return DL_ERR;
    return DL_OK;
}

void dl_clip_embed(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, float *x)
{
    if (dl_ctx_measuring(ctx)) return;
    dl_be(ctx)->embed_tokens(ctx, N, T, m->cfg.hidden_size, m->cfg.vocab_size, ids, m->tok_emb, m->pos_emb,
                             x); // [N, T, C]
}

void dl_clip_layer_forward(const dl_ctx *ctx, const dl_clip *m, int l, int N, int T, const dl_clip_layer_saved *v,
                           float *x_next, dl_arena *scratch)
{
    const dl_clip_config *c = &m->cfg;
    const dl_clip_layer *y = &m->layers[l];
    const int C = c->hidden_size, I = c->intermediate_size, d = C / c->num_heads;
    const int64_t M = (int64_t)N * T;
    const dl_attention_shape as = {.N = N, .Tq = T, .Tk = T, .H = c->num_heads, .d = d,
                                   .scale = 1.0f / sqrtf((float)d), .causal = 1};
    dl_be(ctx)->layernorm_forward(ctx, M, C, y->ln1.eps, v->x_in, y->ln1.gamma, y->ln1.beta, v->h1, v->mean1,
                                  v->rstd1);                                         // [M, C]
    dl_linear_fwd(ctx, &y->q, M, v->h1, v->q, scratch);                              // [M, C]
    dl_linear_fwd(ctx, &y->k, M, v->h1, v->k, scratch);                              // [M, C]
    dl_linear_fwd(ctx, &y->v, M, v->h1, v->v, scratch);                              // [M, C]
    dl_be(ctx)->attention_forward(ctx, as, v->q, v->k, v->v, v->a, v->lse);          // [N, T, H*d], causal
    dl_linear_fwd(ctx, &y->o, M, v->a, v->x_mid, scratch);                           // [M, C] attn
    dl_be(ctx)->add_forward(ctx, M * C, v->x_in, v->x_mid, v->x_mid);                // x_mid = x_in + attn
    dl_be(ctx)->layernorm_forward(ctx, M, C, y->ln2.eps, v->x_mid, y->ln2.gamma, y->ln2.beta, v->h2, v->mean2,
                                  v->rstd2);                                         // [M, C]
    dl_linear_fwd(ctx, &y->fc1, M, v->h2, v->f1, scratch);                           // [M, I]
    dl_be(ctx)->act_forward(ctx, c->act, M * I, v->f1, v->f2);                       // [M, I]
    dl_linear_fwd(ctx, &y->fc2, M, v->f2, x_next, scratch);                          // [M, C] mlp
    dl_be(ctx)->add_forward(ctx, M * C, v->x_mid, x_next, x_next);                   // x_next = x_mid + mlp
}

/* The layers run on one set of buffers (the residual stream ping-pongs between x_in and x). */
void dl_clip_forward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, int layers,
                     int final_ln, float *out, dl_arena *scratch)
{
    const dl_clip_config *c = &m->cfg;
    const int64_t M = (int64_t)N * T, C = c->hidden_size;
    DL_ASSERTF(T >= 1 && T <= c->max_positions, "T = %d", T);
    DL_ASSERTF(layers >= 1 && layers <= c->num_layers, "layers = %d of %d", layers, c->num_layers);
    size_t mark = dl_arena_mark(scratch);
    dl_clip_layer_saved v;
    DL_ASSERTF(dl_clip_layer_carve(&v, c, N, T, scratch) == DL_OK, "%s", dl_error_msg());
    float *x = dl_alloc_f32(scratch, M * C);                                         // [N, T, C]
    dl_clip_embed(ctx, m, N, T, ids, v.x_in);                                        // [N, T, C]
    for (int l = 0; l < layers; l++) {
        dl_clip_layer_forward(ctx, m, l, N, T, &v, x, scratch);                      // x [N, T, C]
        float *t = v.x_in;
        v.x_in = x, x = t;
    }
    if (final_ln)
        dl_be(ctx)->layernorm_forward(ctx, M, C, m->final_ln.eps, v.x_in, m->final_ln.gamma, m->final_ln.beta, out,
                                      v.mean1, v.rstd1);                             // [N, T, C]
    else
        dl_be(ctx)->copy(ctx, out, v.x_in, (size_t)(M * C) * sizeof(float));
    dl_arena_release(scratch, mark);
}

size_t dl_clip_scratch_bytes(const dl_clip *m, int N, int T)
{
    static _Alignas(64) const float stand_in[16]; /* the pointers of a measuring run (never read) */
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder scratch (measuring)");
    dl_clip_forward(dl_measure_ctx(), m, N, T, (const int32_t *)stand_in, m->cfg.num_layers, 1, (float *)stand_in,
                    &a);
    return a.peak;
}
