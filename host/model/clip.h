/* clip.h - the CLIP text encoder of SD 1.x (ViT-L/14 text tower) and SD 2.x (OpenCLIP ViT-H,
 * 23 layers): token + position embeddings, pre-LN transformer layers with causal self-attention,
 * final layer norm. Numerically as transformers' CLIPTextModel. */
#ifndef DANLU_MODEL_CLIP_H
#define DANLU_MODEL_CLIP_H

#include "model/module.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_clip_layer {
    dl_norm ln1, ln2;                 /* layer_norm1, layer_norm2: [C] */
    dl_linear q, k, v, o;             /* self_attn.{q,k,v,out}_proj: [C, C] + bias */
    dl_linear fc1, fc2;               /* mlp.fc1 [I, C], mlp.fc2 [C, I] */
} dl_clip_layer;

#define DL_CLIP_MAX_LAYERS 48 /* num_hidden_layers supported (SD: 12, 23; SDXL: 32) */

/* One encoder layer's activations: what its backward reads (training) or its working buffers
 * (inference). M = N*T tokens. */
typedef struct dl_clip_layer_saved {
    float *x_in;          /* [M, C]  residual stream entering the layer (ln1 input) */
    float *mean1, *rstd1; /* [M]     ln1 statistics */
    float *h1;            /* [M, C]  ln1 output: q/k/v input */
    float *q, *k, *v;     /* [M, C]  [N, T, H*d] */
    float *a;             /* [M, C]  attention output: out_proj input */
    float *lse;           /* [N, H, T] attention row logsumexp */
    float *x_mid;         /* [M, C]  residual after attention (ln2 input) */
    float *mean2, *rstd2; /* [M]     ln2 statistics */
    float *h2;            /* [M, C]  ln2 output: fc1 input */
    float *f1;            /* [M, I]  fc1 output, pre-activation */
    float *f2;            /* [M, I]  activation output: fc2 input */
} dl_clip_layer_saved;

typedef struct dl_clip {
    dl_clip_config cfg;
    float *tok_emb;                   /* [vocab, C] */
    float *pos_emb;                   /* [max_positions, C] */
    dl_clip_layer *layers;            /* [num_layers] (malloc'd; dl_clip_free) */
    dl_norm final_ln;                 /* [C] */
    char *names;                      /* storage for the layers' names */
} dl_clip;

/* *bytes = what dl_clip_load(ck) will take from its weights arena: the loader run against a
 * measuring arena (every tensor it places, checked against ck and counted, nothing read).
 * DL_ERR with the error dl_clip_load would give (missing or mis-shaped tensor, bad config). */
int dl_clip_weights_bytes(dl_checkpoint *ck, size_t *bytes);
/* Load the text encoder of ck into weights (exactly dl_clip_weights_bytes of it). DL_ERR names
 * a missing or mis-shaped tensor (m then holds nothing to free). */
int dl_clip_load(dl_clip *m, dl_checkpoint *ck, dl_arena *weights);
void dl_clip_free(dl_clip *m);
/* The linear layer called name (transformers name without ".weight", e.g.
 * "text_model.encoder.layers.0.self_attn.q_proj", "...mlp.fc1"), or NULL: for LoRA injection. */
dl_linear *dl_clip_find(const dl_clip *m, const char *name);
/* Bytes of scratch dl_clip_forward needs for N sequences of T tokens, including the
 * temporaries of the LoRAs attached to m at the time of the call (attach them first): the
 * forward run against a measuring arena under the measuring backend (model/graph.h). */
size_t dl_clip_scratch_bytes(const dl_clip *m, int N, int T);

/* Encode ids [N, T] (T <= max_positions): run the first `layers` transformer layers (1 ..
 * num_layers), then the final layer norm when final_ln. out [N, T, C].
 *   last_hidden_state:            layers = num_layers,     final_ln = 1
 *   clip skip k (A1111/sd-scripts): layers = num_layers-k+1, final_ln = 1
 *   hidden_states[-2] (raw):       layers = num_layers - 1, final_ln = 0 */
void dl_clip_forward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, int layers,
                     int final_ln, float *out, dl_arena *scratch);

/* Every weight of a text encoder of this config, in transformers names and PyTorch shapes: the
 * loader in listing mode (dl_model_weights' text part). Stops with DL_ERR when fn does. */
int dl_clip_list_weights(const dl_clip_config *cfg, dl_weight_fn fn, void *user);

/* ---- the pieces the forwards share (inference above, training in train/clip_train.h) */
/* One layer's tensors for N x T tokens carved from a (DL_OK; DL_ERR: the arena's message). */
int dl_clip_layer_carve(dl_clip_layer_saved *v, const dl_clip_config *c, int N, int T, dl_arena *a);
/* x [N, T, C] = token_embedding[ids [N, T]] + position_embedding[0 .. T). */
void dl_clip_embed(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, float *x);
/* Encoder layer l from v->x_in to x_next [N, T, C], filling v's other tensors. */
void dl_clip_layer_forward(const dl_ctx *ctx, const dl_clip *m, int l, int N, int T, const dl_clip_layer_saved *v,
                           float *x_next, dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
