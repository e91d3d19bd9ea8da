/* clip_train.h - text-encoder LoRA training on the CPU backend: a CLIP forward that keeps what
 * the backward needs, and the backward into the LoRA adapters (q/k/v/out_proj, fc1, fc2 of each
 * layer); the base weights and embeddings are frozen and get no gradients. */
#ifndef DANLU_TRAIN_CLIP_TRAIN_H
#define DANLU_TRAIN_CLIP_TRAIN_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/clip.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What dl_clip_train_forward keeps for dl_clip_backward. The LoRA temporaries h = x·Aᵀ are not
 * kept: dl_linear_bwd recomputes them from the saved layer input (r columns, cheap). */
typedef struct dl_clip_saved {
    int N, T, max_layers;      /* capacity (set by dl_clip_saved_init) */
    int n, t;                  /* the batch run (n <= N, t <= T) */
    int layers, final_ln;      /* of the last forward */
    dl_clip_layer_saved l[DL_CLIP_MAX_LAYERS]; /* the first max_layers used */
    float *x_out;              /* [M, C] residual after `layers` layers (final LN input) */
    float *meanf, *rstdf;      /* [M]    final LN statistics */
} dl_clip_saved;

/* Bytes dl_clip_saved_init takes from its arena for N sequences of T tokens and up to
 * max_layers layers: dl_clip_saved_init run against a measuring arena. SD1.5 (C 768, I 3072),
 * N = 1, T = 77, 11 layers (clip skip 2): about 41 MB. */
size_t dl_clip_saved_bytes(const dl_clip_config *cfg, int N, int T, int max_layers);
/* Carve the saved buffers for (N, T, max_layers) out of arena (sized with dl_clip_saved_bytes).
 * DL_OK, or DL_ERR with the arena's message when it is too small. */
int dl_clip_saved_init(dl_clip_saved *s, const dl_clip_config *cfg, int N, int T, int max_layers, dl_arena *arena);

/* Run the next forwards on a batch of N sequences of T tokens, at most the capacity (a smaller
 * last batch). dl_clip_saved_init sets the full capacity. */
void dl_clip_saved_set_batch(dl_clip_saved *s, int N, int T);

/* dl_clip_forward (bit-identical output) that also fills s for the backward: ids [n, t] ->
 * out [n, t, C] with (n, t) = s's batch (dl_clip_saved_set_batch), running `layers` layers
 * (<= s->max_layers) then the final LN when final_ln (clip skip k: layers = num_layers - k + 1,
 * final_ln = 1, as sd-scripts). LoRAs attached to m's linears apply (unmerged). scratch:
 * dl_clip_scratch_bytes. */
void dl_clip_train_forward(const dl_ctx *ctx, const dl_clip *m, dl_clip_saved *s, const int32_t *ids, int layers,
                           int final_ln, float *out, dl_arena *scratch);

/* Bytes of scratch dl_clip_backward takes with m's LoRAs as attached now, for N x T tokens
 * through every layer: the backward run against a measuring arena under the measuring backend. */
size_t dl_clip_backward_scratch_bytes(const dl_clip *m, int N, int T);
/* Backward of the last dl_clip_train_forward from d_out [N, T, C] (the gradient of the loss
 * with respect to its out): accumulates (+=) into dA / dB of every LoRA attached (unmerged,
 * with dA / dB set) to the linears of the layers that ran. Nothing else is written: the base
 * weights and embeddings are frozen. Layers below the lowest trainable adapter are skipped.
 * The weights and LoRAs must be those of the forward. Scratch is released on return. */
void dl_clip_backward(const dl_ctx *ctx, const dl_clip *m, const dl_clip_saved *s, const float *d_out,
                      dl_arena *scratch);

/* A linear of the text encoder by its transformers module name. */
typedef struct dl_clip_named_linear {
    const char *name;     /* "text_model.encoder.layers.3.self_attn.q_proj", "...mlp.fc1" (owned by m) */
    dl_linear *lin;
} dl_clip_named_linear;

/* Every LoRA target of m, 6 per layer in order q_proj, k_proj, v_proj, out_proj, fc1, fc2
 * (72 for SD 1.5): fills out[0 .. min(cap, 6*num_layers)) and returns 6*num_layers. */
int dl_clip_train_modules(const dl_clip *m, dl_clip_named_linear *out, int cap);

#ifdef __cplusplus
}
#endif
#endif
