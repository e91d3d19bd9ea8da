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
    float *dw, *db;     /* full fine-tuning: gradients of w [out, in] and b [out] (backward adds
                           into them); NULL: the weight is frozen. Only with wdt fp32, no LoRA. */
} dl_linear;

typedef struct dl_conv {
    const char *name;
    int cin, cout, k, stride;
    int pad_top, pad_left, pad_bottom, pad_right;
    void *w;            /* [cout, k, k, cin] of type wdt */
    dl_dtype wdt;
    float *b;           /* [cout] or NULL */
    dl_lora *lora;
    float *dw, *db;     /* full fine-tuning: gradients of w [cout, k, k, cin] and b (as dl_linear) */
} dl_conv;

typedef struct dl_norm {
    const char *name;
    int C, G;           /* G = 0: layer norm over C */
    float eps;
    float *gamma, *beta;/* [C] */
    float *dgamma, *dbeta;/* full fine-tuning: their gradients [C] (backward adds into them); NULL: frozen */
} dl_norm;

/* Full fine-tuning: each tensor the loader placed (full name, PyTorch shape, byte offset in the
 * weights arena; conv: a kxk conv weight stored as [cout, k, k, cin], not in the file's order). */
typedef void (*dl_placed_fn)(void *user, const char *name, int ndim, const int64_t *shape, size_t off, int conv);

/* Loading weights that train (full fine-tuning): where their gradients go (memory of the weights
 * arena's size in its backend, dl_loader.grads) and who hears of each tensor placed (may be NULL). */
typedef struct dl_trainable {
    char *grads;
    dl_placed_fn placed;
    void *user;
} dl_trainable;

/* Where weights come from and where they go: the weights arena. */
typedef struct dl_loader {
    dl_checkpoint *ck;
    dl_part part;
    dl_arena *arena;
    dl_weight_fn list;  /* ck NULL: listing mode (dl_model_weights), each tensor reported to list
                           (list_user, part, name, ndim, PyTorch shape) when set; arena measuring */
    void *list_user;
    char *grads;        /* full fine-tuning (NULL: frozen weights): gradient memory of the arena's
                           size, in the arena's backend; every tensor placed at offset o of the
                           arena gets its gradient at grads + o (dl_linear.dw, dl_norm.dgamma...),
                           and every weight is fp32 and in the arena (nothing kept in the file's
                           type or mapping) */
    dl_placed_fn placed;/* with grads: told of every tensor placed (NULL: nobody) */
    void *placed_user;
} dl_loader;

/* Every loader below places its tensors through one function (module.c: place), which a
 * measuring weights arena (dl_arena_init_measure) turns into a check-and-count pass: that pass
 * is how the weights arenas are sized (dl_unet_weights_bytes, dl_vae_weights_bytes,
 * dl_clip_weights_bytes), so the size and the load cannot disagree. */

/* Tensor `name` (full checkpoint name, diffusers convention) of shape (ndim, shape) as fp32 in
 * the loader's arena. NULL (DL_ERR message naming the tensor, the shapes or the full arena). */
float *dl_load_tensor(const dl_loader *ld, const char *name, int ndim, const int64_t *shape);
/* The gradient of a tensor the loader placed at p (full fine-tuning: p's offset in ld->grads), or
 * NULL (frozen weights, a measuring or listing pass). */
float *dl_loader_grad(const dl_loader *ld, const void *p);
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
/* 1 when the layer's backward computes a parameter gradient (a LoRA, or dw / dgamma set), so
 * the forward input must be kept for it. */
int dl_linear_trains(const dl_linear *m);
int dl_conv_trains(const dl_conv *m);
int dl_norm_trains(const dl_norm *m);

/* ---- backward (training): activation gradients, and parameter gradients accumulated (+=):
 * into lora->dA / lora->dB when the layer has an unmerged LoRA with those buffers set, or into
 * dw / db (dgamma / dbeta) when the layer itself trains (full fine-tuning); otherwise the
 * weights are frozen. A merged LoRA is a programming error here (DL_ASSERT). The
 * LoRA's forward temporary h = x·Aᵀ is recomputed from x, so the forward need not keep it.
 * Scratch comes from `scratch` and is released on return (a walker run against a measuring
 * arena sizes it: model/graph.h). */

/* dx [M, in] = dy [M, out] · w (+ the LoRA path) overwritten (NULL: skipped); x [M, in] is the
 * forward input (needed only when the layer trains; may be NULL otherwise). */
void dl_linear_bwd(const dl_ctx *ctx, const dl_linear *m, int64_t M, const float *x, const float *dy, float *dx,
                   dl_arena *scratch);
/* dx [N, H, W, cin] from dy [N, Ho, Wo, cout] overwritten (NULL: skipped); x is the forward
 * input (needed only when the layer trains). */
void dl_conv_bwd(const dl_ctx *ctx, const dl_conv *m, int N, int H, int W, const float *x, const float *dy,
                 float *dx, dl_arena *scratch);
/* Group norm (+ SiLU) backward: dx [N, HW, C] overwritten (NULL: skipped) from the forward
 * input x, its saved mean, rstd [N, G] and dy; dgamma / dbeta accumulated when set. */
void dl_groupnorm_bwd(const dl_ctx *ctx, const dl_norm *m, int N, int64_t HW, const float *x, const float *mean,
                      const float *rstd, const float *dy, float *dx, int silu, dl_arena *scratch);
/* Layer norm backward: dx [M, C] overwritten (NULL: skipped) from x, the saved mean, rstd [M]
 * and dy; dgamma / dbeta accumulated when set. */
void dl_layernorm_bwd(const dl_ctx *ctx, const dl_norm *m, int64_t M, const float *x, const float *mean,
                      const float *rstd, const float *dy, float *dx, dl_arena *scratch);

/* Allocate floats from an arena or abort with the arena's message (networks size their
 * arenas beforehand; running out is a programming error). */
float *dl_alloc_f32(dl_arena *a, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
