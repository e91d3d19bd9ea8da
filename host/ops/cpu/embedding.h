/* embedding.h - sinusoidal timestep embedding as diffusers' get_timestep_embedding (CPU
 * reference, fp32). */
#ifndef DANLU_CPU_EMBEDDING_H
#define DANLU_CPU_EMBEDDING_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out [N, dim] from timesteps t [N] (float, may be fractional), following diffusers'
 * get_timestep_embedding step by step in fp32 (so it reproduces diffusers' float32 output):
 *   half = dim / 2;  freq[i] = exp(-ln(max_period) * i / (half - downscale_freq_shift)), i < half
 *   arg[n, i] = scale * t[n] * freq[i]
 *   out[n, :] = [sin(arg), cos(arg)], or [cos(arg), sin(arg)] when flip_sin_to_cos;
 *   an odd dim gets one trailing zero column.
 * SD 1.x/2.x UNets use flip_sin_to_cos = 1, downscale_freq_shift = 0, scale = 1,
 * max_period = 10000. Requires half - downscale_freq_shift != 0. No backward: timesteps are
 * not trained. */
/* Text-encoder input embedding: out[n, t, :] = tok[ids[n, t], :] + pos[t, :] for ids int32
 * [N, T], tok [V, C], pos [>= T, C]; out [N, T, C] overwritten. An id outside [0, V) is a
 * programming error (DL_ASSERT): the tokenizer never makes one. */
void dl_cpu_embed_tokens(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V,
                         const int32_t *ids, const float *tok, const float *pos, float *out);
/* Its backward (training the embeddings): from dout [N, T, C], dtok[ids[n, t], :] += dout[n, t, :]
 * and dpos[t, :] += dout[n, t, :], ADDED INTO dtok [V, C] and dpos [>= T, C] (unlike the other
 * backward entries: a scatter into a table that most rows of which no token touches; NULL skips
 * either). Every element's additions are made in row order (n, t), so the result does not
 * depend on the thread count. */
void dl_cpu_embed_tokens_backward(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V,
                                  const int32_t *ids, const float *dout, float *dtok, float *dpos);

void dl_cpu_timestep_embedding(const dl_ctx *ctx, int64_t N, int64_t dim, const float *t,
                               int flip_sin_to_cos, float downscale_freq_shift, float scale,
                               float max_period, float *out);

#ifdef __cplusplus
}
#endif
#endif
