/* clip_train.h - text-encoder training: the graph walkers (model/graph.h) on the text
 * encoder's node list for the clip skip used (dl_clip_pass). The forward is inference's, node by
 * node, saving what each backward reads into `act` (or, with gradient checkpointing, recomputing
 * it into scratch before the node's backward: the same gradients, bit for bit); the backward
 * reaches the LoRAs of q/k/v/out_proj, fc1, fc2 down to the lowest layer with a trainable one
 * (dA or dB set), or, for a text encoder loaded with dl_clip_load_trainable (full fine-tuning),
 * every weight down to the token and position embeddings. act and scratch are sized once from
 * the size table (dl_clip_size_table, LoRAs attached) for the largest batch. */
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

/* The text encoder's tape: the run's node list and the generic tape over it. Plain memory the
 * caller owns (~35 KB: keep it off small stacks); the tape points into it, so it must not move
 * between the forward and the backward. */
typedef struct dl_clip_tape {
    dl_graph g;
    dl_tape tape;
} dl_clip_tape;

/* The size table of a training pass (and of inference) of N sequences of T tokens through
 * `layers` layers (and the final layer norm when final_ln) with the LoRAs now attached to m:
 * the walkers run against measuring arenas under the measuring backend (model/graph.h). */
void dl_clip_size_table(const dl_clip *m, int N, int T, int layers, int final_ln, int checkpoint,
                        dl_size_table *tab);

/* dl_clip_forward (bit-identical output) recorded on tape: ids [N, T] -> out [N, T, C] through
 * `layers` layers, then the final layer norm when final_ln (clip skip k: layers = num_layers -
 * k + 1, final_ln = 1, as sd-scripts). LoRAs attached to m's linears apply (unmerged). Saved
 * activations are taken from act and stay there for the backward (the caller gives them back
 * after it); scratch is released on return. */
void dl_clip_train_forward(const dl_ctx *ctx, const dl_clip *m, dl_clip_tape *tape, int N, int T, const int32_t *ids,
                           int layers, int final_ln, float *out, int checkpoint, dl_arena *act, dl_arena *scratch);

/* Backward of the recorded forward from d_out [N, T, C] (the gradient of the loss with respect
 * to its out): accumulates (+=) into dA / dB of every LoRA attached (unmerged, with dA / dB
 * set) to the linears of the layers that ran, or into the weights' own gradients under full
 * fine-tuning. Nothing else is written. The weights and LoRAs
 * must be those of the forward. Scratch is released on return; act is left as it is. */
void dl_clip_backward(const dl_ctx *ctx, const dl_clip_tape *tape, const float *d_out, dl_arena *scratch);

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
