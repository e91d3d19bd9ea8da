/* unet_train.h - the UNet's training pass on the CPU backend: a forward recorded block by block
 * on a tape (conv_in, resnets, transformers, down/up-samplers, the output head), and its
 * backward replaying the tape in reverse: activation gradients through every op, weight
 * gradients only for the LoRA adapters attached to the UNet's modules (accumulated into
 * lora->dA / lora->dB), optionally the gradient w.r.t. the text context (encoder_hidden_states).
 *
 * The pass walks the UNet's node list (model/unet.h: dl_unet.graph), each node's block
 * forward saving what its backward needs into the act arena, and the backward walks it in
 * reverse. The blocks' forwards are those of inference, so the output is dl_unet_forward's.
 *
 * Memory: the tape's activations live in an `act` arena, temporaries in a `scratch` arena; both
 * are sized once from the size table (dl_unet_size_table; dl_unet_train_act_bytes /
 * dl_unet_train_scratch_bytes; attach the LoRAs first: what is saved depends on them), so a
 * training step allocates nothing.
 *
 * Gradient checkpointing (checkpoint != 0): the forward keeps only each block's input and output;
 * the backward recomputes a block's internals into scratch just before its backward. The result
 * is bit-identical to the stored-activation path (the ops are deterministic).
 *
 * Blocks whose backward cannot reach a LoRA (everything before the first block holding one, and
 * before the first transformer when d(context) is asked for) are not back-propagated at all. */
#ifndef DANLU_TRAIN_UNET_TRAIN_H
#define DANLU_TRAIN_UNET_TRAIN_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/unet.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The UNet's tape: the generic one of model/graph.h (its net is dl_unet_net(u)). */
typedef dl_tape dl_unet_tape;

/* The size table of a training pass (and of inference) at (N, H, W, T) with the LoRAs now
 * attached to u: the walkers below run against measuring arenas under the measuring backend,
 * and every node's output, saved tensors and scratch peaks are recorded (model/graph.h). */
void dl_unet_size_table(const dl_unet *u, int N, int H, int W, int T, int checkpoint, int want_dcontext,
                        dl_size_table *tab);

/* Bytes of the act arena a training forward takes for (N, H, W, T) with the LoRAs now attached
 * to u; checkpoint as for dl_unet_train_forward. Both sizes grow with N*H*W (every level's
 * buffers are N*H*W/4^i pixels) and T only, so with aspect-ratio buckets size once for the
 * largest N*H*W and the longest T. */
size_t dl_unet_train_act_bytes(const dl_unet *u, int N, int H, int W, int T, int checkpoint);
/* Bytes of scratch the forward and the backward take (the larger of the two); want_dcontext
 * as the backward's dcontext != NULL. */
size_t dl_unet_train_scratch_bytes(const dl_unet *u, int N, int H, int W, int T, int checkpoint,
                                   int want_dcontext);

/* The UNet forward (same result as dl_unet_forward) recorded on tape: out [N, H, W, out_ch]
 * from x [N, H, W, in_ch], timesteps t [N] and context [N, T, Dc]. x and context are
 * referenced, not copied: they must stay unchanged until the backward. Saved activations are
 * taken from act (dl_unet_train_act_bytes free) and stay there for the backward (the caller
 * gives them back, e.g. dl_arena_reset, before the next forward); scratch is released on
 * return. H and W divisible by 2^(n_blocks-1). The tape is plain memory the caller owns
 * (sizeof(dl_unet_tape) ~ 8 KB: keep it off small stacks); dl_unet_train_forward fills it. */
void dl_unet_train_forward(const dl_ctx *ctx, const dl_unet *u, dl_unet_tape *tape, int N, int H, int W,
                           const float *x, const float *t, const float *context, int T, float *out,
                           int checkpoint, dl_arena *act, dl_arena *scratch);

/* The same with SDXL's added conditioning (model/unet.h: dl_unet_added; required when u's config
 * has it, ignored otherwise); text_embeds and time_ids are referenced like x. The added
 * embedding is frozen: no gradient flows into it or its inputs. */
void dl_unet_train_forward_added(const dl_ctx *ctx, const dl_unet *u, dl_unet_tape *tape, int N, int H, int W,
                                 const float *x, const float *t, const float *context, int T,
                                 const dl_unet_added *add, float *out, int checkpoint, dl_arena *act,
                                 dl_arena *scratch);

/* The backward of the recorded forward from dout [N, H, W, out_ch] (d loss / d out; may alias
 * the forward's out): every unmerged LoRA with dA/dB set gets its gradients ADDED (+=), so
 * several calls accumulate; dcontext [N, T, Dc], if not NULL, is overwritten with d loss /
 * d context (through every cross-attention to_k / to_v). Nothing else is differentiated (base
 * weights, norms and the time embedding are frozen; no dx for the latents). scratch needs
 * dl_unet_train_scratch_bytes free and is released on return; the act arena is left as it is. */
void dl_unet_backward(const dl_ctx *ctx, const dl_unet_tape *tape, const float *dout, float *dcontext,
                      dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
