/* clip.h - the CLIP text encoder of SD 1.x (ViT-L/14 text tower), SD 2.x (OpenCLIP ViT-H,
 * 23 layers) and SDXL (ViT-L, and OpenCLIP ViT-bigG with its projection): token + position
 * embeddings, pre-LN transformer layers with causal self-attention, final layer norm, and with a
 * config's projection_dim the bias-free text_projection of the pooled (EOS) token. Numerically as
 * transformers' CLIPTextModel / CLIPTextModelWithProjection.
 *
 * Described once as a node list (model/graph.h) built from the config at load (dl_clip.graph):
 *   text_model.embeddings (ids -> [N, T, C]) -> text_model.encoder.layers.l (one node each)
 *   -> text_model.final_layer_norm [-> text_projection (projection_dim > 0)]
 * Loading and the weight listing walk it; a run (inference: dl_clip_forward; training:
 * train/clip_train.h) walks the list built for its clip skip (dl_clip_pass): the embeddings, the
 * first `layers` layers, then the final layer norm when asked for. */
#ifndef DANLU_MODEL_CLIP_H
#define DANLU_MODEL_CLIP_H

#include "model/graph.h"
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

typedef struct dl_clip {
    dl_clip_config cfg;
    float *tok_emb;                   /* [vocab, C] */
    float *pos_emb;                   /* [max_positions, C] */
    float *d_tok_emb, *d_pos_emb;     /* their gradients (full fine-tuning), or NULL: frozen */
    dl_clip_layer *layers;            /* [num_layers] (malloc'd; dl_clip_free) */
    dl_norm final_ln;                 /* [C] */
    dl_linear proj;                   /* text_projection [P, C], no bias (projection_dim P > 0) */
    dl_part part;                     /* where it loads from: DL_PART_TEXT or DL_PART_TEXT2 */
    dl_names names;                   /* the layers' names */
    dl_graph graph;                   /* every node (all layers, the final layer norm), built at load */
} dl_clip;

/* *bytes = what dl_clip_load(ck) will take from its weights arena: the loader run against a
 * measuring arena (every tensor it places, checked against ck and counted, nothing read).
 * DL_ERR with the error dl_clip_load would give (missing or mis-shaped tensor, bad config). */
int dl_clip_weights_bytes(dl_checkpoint *ck, size_t *bytes);
/* Load the text encoder of ck into weights (exactly dl_clip_weights_bytes of it). DL_ERR names
 * a missing or mis-shaped tensor (m then holds nothing to free). */
int dl_clip_load(dl_clip *m, dl_checkpoint *ck, dl_arena *weights);
/* The same for one part: DL_PART_TEXT (ck->cfg.text) or DL_PART_TEXT2 (SDXL's second text
 * encoder, ck->cfg.text2; DL_ERR when ck has none). */
int dl_clip_weights_bytes_as(dl_checkpoint *ck, dl_part part, size_t *bytes);
int dl_clip_load_as(dl_clip *m, dl_checkpoint *ck, dl_part part, dl_arena *weights);
/* dl_clip_load for full fine-tuning (tr NULL: dl_clip_load): every weight fp32 in the arena with
 * its gradient at the same offset in tr->grads (the embeddings', the layers' linears and norms',
 * the final layer norm's), each placed tensor reported to tr->placed (model/module.h). */
int dl_clip_load_trainable(dl_clip *m, dl_checkpoint *ck, dl_arena *weights, const dl_trainable *tr);
void dl_clip_free(dl_clip *m);
/* The linear layer called name (transformers name without ".weight", e.g.
 * "text_model.encoder.layers.0.self_attn.q_proj", "...mlp.fc1"), or NULL: for LoRA injection. */
dl_linear *dl_clip_find(const dl_clip *m, const char *name);
/* Bytes of scratch dl_clip_forward (and dl_clip_pooled) needs for N sequences of T tokens, including the
 * temporaries of the LoRAs attached to m at the time of the call (attach them first): the
 * forward run against a measuring arena under the measuring backend (model/graph.h). */
size_t dl_clip_scratch_bytes(const dl_clip *m, int N, int T);

/* Encode ids [N, T] (T <= max_positions): run the first `layers` transformer layers (1 ..
 * num_layers), then the final layer norm when final_ln. out [N, T, C]. dl_graph_infer on the
 * list of dl_clip_pass.
 *   last_hidden_state:            layers = num_layers,     final_ln = 1
 *   clip skip k (A1111/sd-scripts): layers = num_layers-k+1, final_ln = 1
 *   hidden_states[-2] (raw):       layers = num_layers - 1, final_ln = 0 */
void dl_clip_forward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int32_t *ids, int layers,
                     int final_ln, float *out, dl_arena *scratch);

/* What the walkers (model/graph.h) take to encode ids [N, T] as dl_clip_forward does: g = m's
 * node list for that run (the embeddings, the first `layers` layers, the final layer norm when
 * final_ln; the nodes point at m's blocks), net = m over g, in = the pass's inputs (H = T,
 * W = 1). g must outlive the pass (and its tape). */
void dl_clip_pass(const dl_clip *m, int N, int T, const int32_t *ids, int layers, int final_ln, dl_graph *g,
                  dl_net *net, dl_pass_in *in);

/* The position transformers pools each sequence at (CLIPTextTransformer): with eos_token_id 2 (the
 * legacy configs of SD's and SDXL's text encoders) the first position of the largest id (argmax,
 * which is the EOS token for CLIP's vocabulary), else the first position holding eos_token_id (0
 * when none). ids [N, T] host memory; pos [N]. */
void dl_clip_eos_positions(const dl_clip_config *c, int N, int T, const int32_t *ids, int *pos);
/* text_embeds [N, P] = text_projection(hidden [N, T, C] at pos[n]) (m->cfg.projection_dim > 0):
 * hidden is the last hidden state (dl_clip_forward with every layer and the final layer norm),
 * pos host memory (dl_clip_eos_positions); hidden and out on the backend; scratch takes N x C
 * floats. */
void dl_clip_pooled(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int *pos, const float *hidden,
                    float *out, dl_arena *scratch);
/* Its backward from dout [N, P]: dhidden [N, T, C] overwritten, zero but at each pos[n] (the
 * projection is frozen). Backend memory as dl_clip_pooled; scratch takes N x C floats. */
void dl_clip_pooled_backward(const dl_ctx *ctx, const dl_clip *m, int N, int T, const int *pos, const float *dout,
                             float *dhidden, dl_arena *scratch);

/* Every weight of a text encoder of this config, in transformers names and PyTorch shapes: the
 * loader in listing mode (dl_model_weights' text part). Stops with DL_ERR when fn does. */
int dl_clip_list_weights(const dl_clip_config *cfg, dl_weight_fn fn, void *user);
/* The same, reported as part's (dl_model_weights' DL_PART_TEXT2). */
int dl_clip_list_weights_as(const dl_clip_config *cfg, dl_part part, dl_weight_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
