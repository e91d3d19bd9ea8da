/* clip_train.c - CLIP text encoder training forward (saving activations) and LoRA backward. */
#include "train/clip_train.h"
#include "backend/backend.h"
#include "core/error.h"
#include "model/graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ saved activations */

size_t dl_clip_saved_bytes(const dl_clip_config *c, int N, int T, int max_layers)
{
    dl_arena a;
    dl_arena_init_measure(&a, "text encoder activations (measuring)");
    dl_clip_saved s;
    DL_ASSERTF(dl_clip_saved_init(&s, c, N, T, max_layers, &a) == DL_OK, "%s", dl_error_msg());
    return a.used;
}

int dl_clip_saved_init(dl_clip_saved *s, const dl_clip_config *c, int N, int T, int max_layers, dl_arena *arena)
{
    DL_ASSERTF(N >= 1 && T >= 1 && T <= c->max_positions, "N = %d, T = %d", N, T);
    DL_ASSERTF(max_layers >= 1 && max_layers <= c->num_layers && max_layers <= DL_CLIP_MAX_LAYERS,
               "max_layers = %d of %d", max_layers, c->num_layers);
    memset(s, 0, sizeof *s);
    const int64_t M = (int64_t)N * T, C = c->hidden_size;
    s->N = s->n = N;
    s->T = s->t = T;
    s->max_layers = max_layers;
    for (int l = 0; l < max_layers; l++) DL_TRY(dl_clip_layer_carve(&s->l[l], c, N, T, arena));
    if (!(s->x_out = dl_arena_alloc(arena, (size_t)(M * C) * sizeof(float))) ||
        !(s->meanf = dl_arena_alloc(arena, (size_t)M * sizeof(float))) ||
        !(s->rstdf = dl_arena_alloc(arena, (size_t)M * sizeof(float))))
        return DL_ERR;
    return DL_OK;
}

/* ================================================================ forward */

static dl_attention_shape attn_shape(const dl_clip_config *c, int N, int T)
{
    const int d = c->hidden_size / c->num_heads;
    dl_attention_shape as = {.N = N, .Tq = T, .Tk = T, .H = c->num_heads, .d = d,
                             .scale = 1.0f / sqrtf((float)d), .causal = 1};
    return as;
}

void dl_clip_saved_set_batch(dl_clip_saved *s, int N, int T)
{
    DL_ASSERTF(N >= 1 && N <= s->N && T >= 1 && T <= s->T, "N = %d, T = %d, saved for %d x %d", N, T, s->N, s->T);
    s->n = N;
    s->t = T;
}

void dl_clip_train_forward(const dl_ctx *ctx, const dl_clip *m, dl_clip_saved *s, const int32_t *ids, int layers,
                           int final_ln, float *out, dl_arena *scratch)
{
    const dl_clip_config *c = &m->cfg;
    const int N = s->n, T = s->t, C = c->hidden_size;
    const int64_t M = (int64_t)N * T;
    DL_ASSERTF(c->hidden_size % c->num_heads == 0, "hidden %d, heads %d", c->hidden_size, c->num_heads);
    DL_ASSERTF(layers >= 1 && layers <= s->max_layers, "layers = %d, saved for %d", layers, s->max_layers);
    s->layers = layers;
    s->final_ln = final_ln;
    dl_clip_embed(ctx, m, N, T, ids, s->l[0].x_in);                                  // [M, C]
    for (int l = 0; l < layers; l++)                                                 // [M, C] each layer's output
        dl_clip_layer_forward(ctx, m, l, N, T, &s->l[l], l + 1 < layers ? s->l[l + 1].x_in : s->x_out, scratch);
    if (final_ln)
        dl_be(ctx)->layernorm_forward(ctx, M, C, m->final_ln.eps, s->x_out, m->final_ln.gamma, m->final_ln.beta, out,
                                      s->meanf, s->rstdf);                           // [M, C]
    else
        dl_be(ctx)->copy(ctx, out, s->x_out, (size_t)M * C * sizeof(float));
}

/* ================================================================ backward */

static int trainable(const dl_linear *lin)
{
    return lin->lora && (lin->lora->dA || lin->lora->dB);
}

static int layer_trainable(const dl_clip_layer *y)
{
    return trainable(&y->q) || trainable(&y->k) || trainable(&y->v) || trainable(&y->o) || trainable(&y->fc1) ||
           trainable(&y->fc2);
}

size_t dl_clip_backward_scratch_bytes(const dl_clip *m, int N, int T)
{
    static _Alignas(64) const float stand_in[16]; /* the pointers of a measuring run (never read) */
    dl_arena acts, a;
    dl_arena_init_measure(&acts, "text encoder activations (measuring)");
    dl_arena_init_measure(&a, "text encoder scratch (measuring)");
    dl_clip_saved *s = malloc(sizeof *s); /* sizing runs once, before the steady state */
    DL_ASSERTF(s && dl_clip_saved_init(s, &m->cfg, N, T, m->cfg.num_layers, &acts) == DL_OK, "%s", dl_error_msg());
    s->layers = m->cfg.num_layers, s->final_ln = 1;
    dl_clip_backward(dl_measure_ctx(), m, s, stand_in, &a);
    free(s);
    return a.peak;
}

void dl_clip_backward(const dl_ctx *ctx, const dl_clip *m, const dl_clip_saved *s, const float *d_out,
                      dl_arena *scratch)
{
    const dl_clip_config *c = &m->cfg;
    const int N = s->n, T = s->t, C = c->hidden_size, I = c->intermediate_size;
    const int64_t M = (int64_t)N * T;
    DL_ASSERTF(s->layers >= 1 && s->layers <= s->max_layers, "no forward saved (layers = %d)", s->layers);
    int lo = s->layers; // lowest layer with a trainable adapter: nothing below it needs a gradient
    for (int l = 0; l < s->layers && lo == s->layers; l++)
        if (layer_trainable(&m->layers[l])) lo = l;
    if (lo == s->layers) return;

    size_t mark = dl_arena_mark(scratch);
    float *dx = dl_alloc_f32(scratch, M * C);  // [M, C] gradient of the residual stream
    float *g = dl_alloc_f32(scratch, M * C);   // [M, C] gradient inside a sublayer
    float *t = dl_alloc_f32(scratch, M * C);   // [M, C] a term to accumulate
    float *dq = dl_alloc_f32(scratch, M * C);  // [N, T, H*d]
    float *dk = dl_alloc_f32(scratch, M * C);  // [N, T, H*d]
    float *dv = dl_alloc_f32(scratch, M * C);  // [N, T, H*d]
    float *df = dl_alloc_f32(scratch, M * I);  // [M, I]

    if (s->final_ln)
        dl_layernorm_bwd(ctx, &m->final_ln, M, s->x_out, s->meanf, s->rstdf, d_out, dx); // [M, C]
    else
        dl_be(ctx)->scale_forward(ctx, M * C, 1.0f, d_out, dx);                            // dx = d_out
    const dl_attention_shape as = attn_shape(c, N, T);
    for (int l = s->layers - 1; l >= lo; l--) {
        const dl_clip_layer *y = &m->layers[l];
        const dl_clip_layer_saved *v = &s->l[l];
        const int below = l > lo;                                         // gradient needed under layer l
        const int qkv = below || trainable(&y->q) || trainable(&y->k) || trainable(&y->v);
        const int attn = qkv || trainable(&y->o);                         // the attention branch matters
        const int fc1 = attn || trainable(&y->fc1);
        /* MLP branch: x_next = x_mid + fc2(act(fc1(ln2(x_mid)))); dx is d x_next */
        dl_linear_bwd(ctx, &y->fc2, M, v->f2, dx, fc1 ? df : NULL, scratch);   // [M, I] d f2
        if (fc1) {
            dl_be(ctx)->act_backward(ctx, c->act, M * I, v->f1, df, df);        // [M, I] d f1
            dl_linear_bwd(ctx, &y->fc1, M, v->h2, df, attn ? g : NULL, scratch); // [M, C] d h2
        }
        if (!attn) break;
        dl_layernorm_bwd(ctx, &y->ln2, M, v->x_mid, v->mean2, v->rstd2, g, t); // [M, C]
        dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, dx);                             // dx = d x_mid
        /* attention branch: x_mid = x_in + out_proj(attn(q, k, v of ln1(x_in))) */
        dl_linear_bwd(ctx, &y->o, M, v->a, dx, qkv ? g : NULL, scratch);      // [M, C] d a
        if (!qkv) break;
        dl_be(ctx)->attention_backward(ctx, as, v->q, v->k, v->v, v->a, v->lse, g, dq, dk, dv);
        dl_linear_bwd(ctx, &y->q, M, v->h1, dq, below ? g : NULL, scratch);   // [M, C] d h1
        dl_linear_bwd(ctx, &y->k, M, v->h1, dk, below ? t : NULL, scratch);
        if (below) dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, g);
        dl_linear_bwd(ctx, &y->v, M, v->h1, dv, below ? t : NULL, scratch);
        if (!below) break;
        dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, g);
        dl_layernorm_bwd(ctx, &y->ln1, M, v->x_in, v->mean1, v->rstd1, g, t); // [M, C]
        dl_be(ctx)->axpy(ctx, M * C, 1.0f, t, dx);                             // dx = d x_in
    }
    dl_arena_release(scratch, mark);
}

/* ================================================================ module names */

int dl_clip_train_modules(const dl_clip *m, dl_clip_named_linear *out, int cap)
{
    int n = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        dl_clip_layer *y = &m->layers[l];
        dl_linear *all[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
        for (int i = 0; i < 6; i++, n++)
            if (n < cap) out[n] = (dl_clip_named_linear){all[i]->name, all[i]};
    }
    return n;
}
