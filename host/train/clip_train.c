/* clip_train.c - CLIP text encoder training forward (saving activations) and LoRA backward. */
#include "train/clip_train.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

static size_t al64(int64_t n) { return ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63; }

/* ================================================================ saved activations */

size_t dl_clip_saved_bytes(const dl_clip_config *c, int N, int T, int max_layers)
{
    const int64_t M = (int64_t)N * T, C = c->hidden_size, I = c->intermediate_size;
    const int64_t NHT = (int64_t)N * c->num_heads * T;
    size_t per_layer = 8 * al64(M * C) + 4 * al64(M) + 2 * al64(M * I) + al64(NHT);
    size_t layers_arr = ((size_t)max_layers * sizeof(dl_clip_layer_saved) + 63) & ~(size_t)63;
    return (size_t)max_layers * per_layer + al64(M * C) + 2 * al64(M) + layers_arr + 64;
}

static float *take(dl_arena *a, int64_t n) { return dl_arena_alloc(a, (size_t)(n > 0 ? n : 1) * sizeof(float)); }

int dl_clip_saved_init(dl_clip_saved *s, const dl_clip_config *c, int N, int T, int max_layers, dl_arena *arena)
{
    DL_ASSERTF(N >= 1 && T >= 1 && T <= c->max_positions, "N = %d, T = %d", N, T);
    DL_ASSERTF(max_layers >= 1 && max_layers <= c->num_layers, "max_layers = %d of %d", max_layers, c->num_layers);
    memset(s, 0, sizeof *s);
    const int64_t M = (int64_t)N * T, C = c->hidden_size, I = c->intermediate_size;
    const int64_t NHT = (int64_t)N * c->num_heads * T;
    s->N = s->n = N;
    s->T = s->t = T;
    s->max_layers = max_layers;
    s->l = dl_arena_calloc(arena, (size_t)max_layers * sizeof *s->l);
    if (!s->l) return DL_ERR;
    for (int l = 0; l < max_layers; l++) {
        dl_clip_layer_saved *y = &s->l[l];
        float **mc[] = {&y->x_in, &y->h1, &y->q, &y->k, &y->v, &y->a, &y->x_mid, &y->h2};
        float **m1[] = {&y->mean1, &y->rstd1, &y->mean2, &y->rstd2};
        for (size_t i = 0; i < sizeof mc / sizeof *mc; i++)
            if (!(*mc[i] = take(arena, M * C))) return DL_ERR;
        for (size_t i = 0; i < sizeof m1 / sizeof *m1; i++)
            if (!(*m1[i] = take(arena, M))) return DL_ERR;
        if (!(y->f1 = take(arena, M * I)) || !(y->f2 = take(arena, M * I)) || !(y->lse = take(arena, NHT)))
            return DL_ERR;
    }
    if (!(s->x_out = take(arena, M * C)) || !(s->meanf = take(arena, M)) || !(s->rstdf = take(arena, M)))
        return DL_ERR;
    return DL_OK;
}

/* ================================================================ forward */

typedef struct {
    const dl_clip *m;
    const int32_t *ids;
    int T;
    float *x;
} embed_job;

static void embed_rows(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const embed_job *j = arg;
    const int C = j->m->cfg.hidden_size;
    for (int64_t row = begin; row < end; row++) { // x = token_embedding[ids] + position_embedding[t]
        int id = j->ids[row], t = (int)(row % j->T);
        DL_ASSERTF(id >= 0 && id < j->m->cfg.vocab_size, "token id %d outside the vocabulary", id);
        const float *te = j->m->tok_emb + (size_t)id * C, *pe = j->m->pos_emb + (size_t)t * C;
        float *xr = j->x + (size_t)row * C;
        for (int i = 0; i < C; i++) xr[i] = te[i] + pe[i];
    }
}

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
    const int N = s->n, T = s->t, C = c->hidden_size, I = c->intermediate_size;
    const int64_t M = (int64_t)N * T;
    DL_ASSERTF(c->hidden_size % c->num_heads == 0, "hidden %d, heads %d", c->hidden_size, c->num_heads);
    DL_ASSERTF(layers >= 1 && layers <= s->max_layers, "layers = %d, saved for %d", layers, s->max_layers);
    s->layers = layers;
    s->final_ln = final_ln;

    embed_job ej = {m, ids, T, s->l[0].x_in};
    dl_parallel_for(ctx->pool, M, 16, embed_rows, &ej);                // [M, C]
    const dl_attention_shape as = attn_shape(c, N, T);
    for (int l = 0; l < layers; l++) {
        const dl_clip_layer *y = &m->layers[l];
        dl_clip_layer_saved *v = &s->l[l];
        float *x_next = l + 1 < layers ? s->l[l + 1].x_in : s->x_out;   // [M, C] the layer's output
        dl_be(ctx)->layernorm_forward(ctx, M, C, y->ln1.eps, v->x_in, y->ln1.gamma, y->ln1.beta, v->h1, v->mean1,
                                      v->rstd1);                              // [M, C]
        dl_linear_fwd(ctx, &y->q, M, v->h1, v->q, scratch);             // [M, C]
        dl_linear_fwd(ctx, &y->k, M, v->h1, v->k, scratch);             // [M, C]
        dl_linear_fwd(ctx, &y->v, M, v->h1, v->v, scratch);             // [M, C]
        dl_be(ctx)->attention_forward(ctx, as, v->q, v->k, v->v, v->a, v->lse); // [N, T, H*d], causal
        dl_linear_fwd(ctx, &y->o, M, v->a, v->x_mid, scratch);          // [M, C] attn
        dl_be(ctx)->add_forward(ctx, M * C, v->x_in, v->x_mid, v->x_mid);    // x_mid = x_in + attn
        dl_be(ctx)->layernorm_forward(ctx, M, C, y->ln2.eps, v->x_mid, y->ln2.gamma, y->ln2.beta, v->h2, v->mean2,
                                      v->rstd2);                              // [M, C]
        dl_linear_fwd(ctx, &y->fc1, M, v->h2, v->f1, scratch);          // [M, I]
        dl_be(ctx)->act_forward(ctx, c->act, M * I, v->f1, v->f2);      // [M, I]
        dl_linear_fwd(ctx, &y->fc2, M, v->f2, x_next, scratch);         // [M, C] mlp
        dl_be(ctx)->add_forward(ctx, M * C, v->x_mid, x_next, x_next);  // x_next = x_mid + mlp
    }
    if (final_ln)
        dl_be(ctx)->layernorm_forward(ctx, M, C, m->final_ln.eps, s->x_out, m->final_ln.gamma, m->final_ln.beta, out,
                                      s->meanf, s->rstdf);                    // [M, C]
    else
        memcpy(out, s->x_out, (size_t)M * C * sizeof(float));
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
    const dl_clip_config *c = &m->cfg;
    const int64_t M = (int64_t)N * T;
    size_t lin = 0;
    for (int l = 0; l < c->num_layers; l++) {
        const dl_clip_layer *y = &m->layers[l];
        const dl_linear *all[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
        for (int i = 0; i < 6; i++) {
            size_t b = dl_linear_bwd_scratch_bytes(all[i], M);
            if (b > lin) lin = b;
        }
    }
    return 6 * al64(M * c->hidden_size) + al64(M * c->intermediate_size) + lin + 64;
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
        memcpy(dx, d_out, (size_t)M * C * sizeof(float));
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
