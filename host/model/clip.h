/* clip.h - the CLIP text encoder of SD 1.x (ViT-L/14 text tower) and SD 2.x (OpenCLIP ViT-H,
 * 23 layers): token + position embeddings, pre-LN transformer layers with causal self-attention,
 * final layer norm. Numerically as transformers' CLIPTextModel. */
#ifndef DANLU_MODEL_CLIP_H
#define DANLU_MODEL_CLIP_H

#include "model/module.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_clip_layer {
    dl_norm ln1, ln2;                 /* layer_norm1, layer_norm2: [C] */
    dl_linear q, k, v, o;             /* self_attn.{q,k,v,out}_proj: [C, C] + bias */
    dl_linear fc1, fc2;               /* mlp.fc1 [I, C], mlp.fc2 [C, I] */
} dl_clip_layer;

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
 * temporaries of the LoRAs attached to m at the time of the call (attach them first). */
size_t dl_clip_scratch_bytes(const dl_clip *m, int N, int T);

/* Encode ids [N, T] (T <= max_positions): run the first `layers` transformer layers (1 ..
 * num_layers), then the final layer norm when final_ln. out [N, T, C].
 *   last_hidden_state:            layers = num_layers,     final_ln = 1
 *   clip skip k (A1111/sd-scripts): layers = num_layers-k+1, final_ln = 1
 *   hidden_states[-2] (raw):       layers = num_layers - 1, final_ln = 0 */
void dl_clip_forward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, int layers,
                     int final_ln, float *out, dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
