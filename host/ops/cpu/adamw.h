/* adamw.h - one AdamW optimizer step over a contiguous fp32 parameter array (CPU reference),
 * matching torch.optim.AdamW (decoupled weight decay, bias correction, amsgrad off), and the
 * squared gradient norm used for clipping. */
#ifndef DANLU_CPU_ADAMW_H
#define DANLU_CPU_ADAMW_H

#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Double, as torch's Python floats: 1 - beta2 = 1e-3 exactly, where 1 - 0.999f would be off by
 * 1.3e-5 relative. The kernel rounds each derived constant to fp32 once, as torch does. */
typedef struct dl_adamw_hparams {
    double lr;           /* learning rate (this step's, after any schedule) */
    double beta1, beta2; /* moment decay rates, e.g. 0.9, 0.999 */
    double eps;          /* added to sqrt(v_hat), e.g. 1e-8 */
    double weight_decay; /* decoupled, e.g. 1e-2 (torch's default) */
} dl_adamw_hparams;

/* One step on n parameters p with gradients g and moments m, v (all [n], fp32; m and v start
 * at zero). step is the 1-based index of this step (torch's state["step"] after its increment).
 * As torch.optim.AdamW:
 *   p -= lr * weight_decay * p
 *   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
 *   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 * p, m, v updated in place; g is read only. */
void dl_cpu_adamw_step(const dl_ctx *ctx, int64_t n, const dl_adamw_hparams *hp, int64_t step,
                       float *p, const float *g, float *m, float *v);

/* sum_i x[i]^2 over [0, n), accumulated in double in fixed 4096-element blocks, so the result
 * does not depend on the thread count. For clip_grad_norm_ over the contiguous LoRA gradients:
 * norm = sqrt(dl_cpu_sumsq(g)); if norm > max_norm, scale g by max_norm / (norm + 1e-6)
 * (dl_cpu_scale_forward) before the step, as torch does. */
double dl_cpu_sumsq(const dl_ctx *ctx, int64_t n, const float *x);

#ifdef __cplusplus
}
#endif
#endif
