/* param_set.c - zeroing the gradients and one optimizer step (clipping, AdamW) over a run's
 * parameters, in backend memory. */
#include "train/param_set.h"

void dl_param_set_zero_grads(const dl_ctx *ctx, const dl_param_set *ps)
{
    if (ps->n > 0) dl_be(ctx)->fill(ctx, ps->g, 0, (size_t)ps->n * sizeof(float));
}

void dl_param_set_step(const dl_ctx *ctx, const dl_param_set *ps, double max_grad_norm, const dl_adamw_hparams *hp,
                       double lr_unet, double lr_te, int64_t step, float *scal)
{
    const dl_backend *be = dl_be(ctx);
    if (max_grad_norm > 0 && ps->n > 0) { /* the norm stays in backend memory: no host round trip */
        be->sumsq(ctx, ps->n, ps->g, scal + 0);
        be->clip_coef(ctx, scal + 0, (float)max_grad_norm, scal + 1);
        be->scale_by(ctx, ps->n, scal + 1, ps->g);
    }
    dl_adamw_hparams h = *hp;
    if (ps->n_unet > 0) {
        h.lr = lr_unet;
        be->adamw_step(ctx, ps->n_unet, &h, step, ps->p, ps->g, ps->m, ps->v);
    }
    if (ps->n > ps->n_unet) {
        h.lr = lr_te;
        const int64_t u = ps->n_unet;
        be->adamw_step(ctx, ps->n - u, &h, step, ps->p + u, ps->g + u, ps->m + u, ps->v + u);
    }
}
