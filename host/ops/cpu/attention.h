/* attention.h - multi-head scaled dot-product attention on channels-last tokens (CPU
 * reference, fp32), forward and backward, flash-attention-2 style (tiles + online softmax). */
#ifndef DANLU_CPU_ATTENTION_H
#define DANLU_CPU_ATTENTION_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* q: [N, Tq, H*d], k, v: [N, Tk, H*d], o: [N, Tq, H*d], contiguous; head h uses channels
 * [h*d, (h+1)*d) of every token (diffusers' layout after to_q/to_k/to_v). scale multiplies
 * the logits (usually 1/sqrt(d)); causal masks key j > query i (requires Tq == Tk). */
typedef struct dl_attention_shape {
    int N, Tq, Tk, H, d;
    float scale;
    int causal;
} dl_attention_shape;

/* o = softmax(scale * q k^T [+ causal mask]) v per (sample, head); saves the natural-log
 * row logsumexp of the scaled logits, lse [N, H, Tq] (NULL: not saved). Never materialises
 * the Tq x Tk matrix: query tiles x key tiles with an online softmax. Deterministic. */
void dl_cpu_attention_forward(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                              const float *k, const float *v, float *o, float *lse);

/* Gradients of the forward above from q, k, v, its output o, its lse and dout [N, Tq, H*d]:
 * dq [N, Tq, H*d], dk, dv [N, Tk, H*d], each overwritten; a NULL output is skipped (all three
 * are still computed internally). Recomputes the probabilities tile by tile. */
void dl_cpu_attention_backward(const dl_ctx *ctx, dl_attention_shape s, const float *q,
                               const float *k, const float *v, const float *o,
                               const float *lse, const float *dout, float *dq, float *dk,
                               float *dv);

#ifdef __cplusplus
}
#endif
#endif
