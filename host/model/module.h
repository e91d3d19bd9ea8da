/* module.h - the layers networks are built from (linear, conv, group/layer norm), each holding
 * its weights by checkpoint name and an optional LoRA, with loading, forward and backward through
 * the op table of the ctx (backend/backend.h: dl_be(ctx)->op). Networks (clip.c, vae.c, unet.c)
 * are written against these and the table, never against a backend's functions, so LoRA
 * injection stays in one place and the backend is the ctx's choice. */
#ifndef DANLU_MODEL_MODULE_H
#define DANLU_MODEL_MODULE_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/checkpoint.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A LoRA adapter on one linear or conv layer: y += scale * B·(A·x).
 * A [r, K] with K = in (linear) or k*k*Cin (conv, [r, k, k, Cin]); B [out, r]. */
typedef struct dl_lora {
    int r;
    float scale;        /* alpha / r × multiplier */
    float *A, *B;
    float *dA, *dB;     /* gradients, same shapes (training only; backward accumulates into them) */
    int merged;         /* 1 while A·B is folded into the base weight */
} dl_lora;

typedef struct dl_linear {
    const char *name;   /* diffusers name without ".weight" (static or owned by the network) */
    int in, out;
    void *w;            /* [out, in] of type wdt */
    dl_dtype wdt;       /* DL_F32, or the checkpoint's fp16 / bf16 (checkpoint.h: weight_dtypes) */
    float *b;           /* [out] or NULL */
    dl_lora *lora;      /* NULL: none */
} dl_linear;

typedef struct dl_conv {
    const char *name;
    int cin, cout, k, stride;
    int pad_top, pad_left, pad_bottom, pad_right;
    void *w;            /* [cout, k, k, cin] of type wdt */
    dl_dtype wdt;
    float *b;           /* [cout] or NULL */
    dl_lora *lora;
} dl_conv;

typedef struct dl_norm {
    const char *name;
    int C, G;           /* G = 0: layer norm over C */
    float eps;
    float *gamma, *beta;/* [C] */
} dl_norm;

/* Where weights come from and where they go: the frozen-weights arena. */
typedef struct dl_loader {
    dl_checkpoint *ck;
    dl_part part;
    dl_arena *arena;
    dl_weight_fn list;  /* ck NULL: listing mode (dl_model_weights), each tensor reported to list
                           (list_user, part, name, ndim, PyTorch shape) when set; arena measuring */
    void *list_user;
} dl_loader;

/* Every loader below places its tensors through one function (module.c: place), which a
 * measuring weights arena (dl_arena_init_measure) turns into a check-and-count pass: that pass
 * is how the weights arenas are sized (dl_unet_weights_bytes, dl_vae_weights_bytes,
 * dl_clip_weights_bytes), so the size and the load cannot disagree. */

/* Tensor `name` (full checkpoint name, diffusers convention) of shape (ndim, shape) as fp32 in
 * the loader's arena. NULL (DL_ERR message naming the tensor, the shapes or the full arena). */
float *dl_load_tensor(const dl_loader *ld, const char *name, int ndim, const int64_t *shape);
/* Load "<name>.weight" (and "<name>.bias" when bias) for a linear [out, in]. DL_ERR names the
 * tensor and the shapes (from the checkpoint) or the full arena. name must outlive m. */
int dl_linear_load(dl_linear *m, const dl_loader *ld, const char *name, int in, int out, int bias);
/* A 1x1 conv in the checkpoint ([out, in, 1, 1]) loaded as a linear (SD1 proj_in/proj_out,
 * VAE mid attention in ldm files), or a real linear when the checkpoint has [out, in]. */
int dl_linear_load_any(dl_linear *m, const dl_loader *ld, const char *name, int in, int out, int bias);
/* A linear stored as a 1x1 conv [out, in, 1, 1] in the checkpoint. */
int dl_linear_load_1x1(dl_linear *m, const dl_loader *ld, const char *name, int in, int out, int bias);
/* Load a kxk conv with symmetric padding pad. */
int dl_conv_load(dl_conv *m, const dl_loader *ld, const char *name, int cin, int cout, int k, int stride, int pad);
/* Load group norm (G groups) or layer norm (G = 0): "<name>.weight", "<name>.bias". */
int dl_norm_load(dl_norm *m, const dl_loader *ld, const char *name, int C, int G, float eps);

/* y [M, out] = x [M, in] · wᵀ + b (+ LoRA). scratch holds LoRA's [M, r] temporary. */
void dl_linear_fwd(const dl_ctx *ctx, const dl_linear *m, int64_t M, const float *x, float *y, dl_arena *scratch);
/* y [N, Ho, Wo, cout] from x [N, H, W, cin]; *Ho, *Wo set when non-NULL. */
void dl_conv_fwd(const dl_ctx *ctx, const dl_conv *m, int N, int H, int W, const float *x, float *y,
                 int *Ho, int *Wo, dl_arena *scratch);
/* ---- backward (training): activation gradients, and LoRA gradients accumulated (+=) into
 * lora->dA / lora->dB when the layer has an unmerged LoRA with those buffers set (the base
 * weights are frozen: no dW, db). A merged LoRA is a programming error here (DL_ASSERT). The
 * LoRA's forward temporary h = x·Aᵀ is recomputed from x, so the forward need not keep it.
 * Scratch comes from `scratch` and is released on return (a walker run against a measuring
 * arena sizes it: model/graph.h). */

/* dx [M, in] = dy [M, out] · w (+ the LoRA path) overwritten (NULL: skipped); x [M, in] is the
 * forward input (needed only with a LoRA; may be NULL without). */
void dl_linear_bwd(const dl_ctx *ctx, const dl_linear *m, int64_t M, const float *x, const float *dy, float *dx,
                   dl_arena *scratch);
/* dx [N, H, W, cin] from dy [N, Ho, Wo, cout] overwritten (NULL: skipped); x is the forward
 * input (needed only with a LoRA). */
void dl_conv_bwd(const dl_ctx *ctx, const dl_conv *m, int N, int H, int W, const float *x, const float *dy,
                 float *dx, dl_arena *scratch);
/* Group norm (+ SiLU) backward: dx [N, HW, C] overwritten from the forward input x, its saved
 * mean, rstd [N, G] and dy. gamma/beta are frozen (no gradients). */
void dl_groupnorm_bwd(const dl_ctx *ctx, const dl_norm *m, int N, int64_t HW, const float *x, const float *mean,
                      const float *rstd, const float *dy, float *dx, int silu);
/* Layer norm backward: dx [M, C] overwritten from x, the saved mean, rstd [M] and dy. */
void dl_layernorm_bwd(const dl_ctx *ctx, const dl_norm *m, int64_t M, const float *x, const float *mean,
                      const float *rstd, const float *dy, float *dx);

/* Allocate floats from an arena or abort with the arena's message (networks size their
 * arenas beforehand; running out is a programming error). */
float *dl_alloc_f32(dl_arena *a, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
