/* param_set.h - the parameters one training run updates, whichever they are (a LoRA's A and B,
 * or every UNet weight under full fine-tuning), as the optimizer sees them: contiguous
 * parameters, gradients and AdamW moments in backend memory, UNet ones first. One step of the
 * optimizer (clip the gradient norm, AdamW per group) is one function that the trainer and the
 * tests share. */
#ifndef DANLU_TRAIN_PARAM_SET_H
#define DANLU_TRAIN_PARAM_SET_H

#include "backend/backend.h"
#include "core/ctx.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_param_set {
    float *p, *g;       /* [n] parameters and their gradients (backend memory) */
    float *m, *v;       /* [n] AdamW moments (backend memory) */
    int64_t n;          /* floats in each */
    int64_t n_unet;     /* the first n_unet are the UNet's (unet learning rate); the rest the text encoder's */
} dl_param_set;

/* Gradients to zero (before a step's first micro-batch). */
void dl_param_set_zero_grads(const dl_ctx *ctx, const dl_param_set *ps);

/* One optimizer step on the accumulated gradients: when max_grad_norm > 0 their global L2 norm is
 * clipped to it as torch's clip_grad_norm_ does (scal [3] backend floats: sum of squares, the
 * coefficient; never leaves the backend), then AdamW with hp (its lr is ignored) at lr_unet over
 * the UNet's part and lr_te over the rest. step is 1-based (bias correction). */
void dl_param_set_step(const dl_ctx *ctx, const dl_param_set *ps, double max_grad_norm, const dl_adamw_hparams *hp,
                       double lr_unet, double lr_te, int64_t step, float *scal);

#ifdef __cplusplus
}
#endif
#endif
