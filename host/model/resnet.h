/* resnet.h - ResnetBlock2D (the UNet's, with its time-embedding injection, and the VAE's,
 * without): loading, and the one forward/backward pair inference and training share.
 *
 *   y = conv2(SiLU(GN2(conv1(SiLU(GN1(x))) + time_emb_proj(temb_act)))) + shortcut(x)
 *
 * where x is concat(x, skip) on the UNet's up path, and shortcut is conv_shortcut (1x1) when
 * cin != cout, else the identity. */
#ifndef DANLU_MODEL_RESNET_H
#define DANLU_MODEL_RESNET_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/graph.h"
#include "model/module.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_unet_resnet {
    int cin, cout;
    dl_norm norm1;              /* GroupNorm(G, cin), eps norm_eps */
    dl_conv conv1;              /* [cout, 3, 3, cin] */
    dl_linear time_emb_proj;    /* [cout, Td] (the UNet's; unused in the VAE) */
    dl_norm norm2;              /* GroupNorm(G, cout) */
    dl_conv conv2;              /* [cout, 3, 3, cout] */
    int has_shortcut;
    dl_conv conv_shortcut;      /* [cout, 1, 1, cin] when cin != cout */
} dl_unet_resnet;

/* Load "<pre>norm1", "conv1", "time_emb_proj" (when temb_dim > 0), "norm2", "conv2" and
 * "conv_shortcut" (when cin != cout). DL_ERR as the module loaders. */
int dl_resnet_load(dl_unet_resnet *r, dl_netload *nl, const char *pre, int cin, int cout, int temb_dim, int G,
                   float eps);
/* 1 when any layer of r has parameters with gradients (a LoRA, or full fine-tuning). */
int dl_resnet_trains(const dl_unet_resnet *r);

/* y [N, H, W, cout] from x [N, H, W, cin - cskip] and, when cskip > 0, skip [N, H, W, cskip]
 * concatenated after it; temb_act [N, Td] = SiLU(temb), NULL: no time embedding. What the
 * backward needs is saved in one allocation from `save` (returned; the activations arena in
 * training, scratch at inference and when recomputing). Temporaries from scratch, released. */
float *dl_resnet_forward(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x,
                         const float *skip, int cskip, const float *temb_act, float *y, dl_arena *save,
                         dl_arena *scratch);
/* From dy [N, H, W, cout]: dx [N, H, W, cin] (of the whole concatenated input) overwritten, NULL:
 * not wanted; dtemb [N, Td] (d temb_act) accumulated, NULL: not wanted; parameter gradients
 * (LoRAs, or the layers' own under full fine-tuning) accumulated. x, cskip, temb_act as given
 * to the forward, saved its return. Scratch released. */
void dl_resnet_backward(const dl_ctx *ctx, const dl_unet_resnet *r, int N, int H, int W, const float *x, int cskip,
                        const float *temb_act, const float *saved, const float *dy, float *dx, float *dtemb,
                        dl_arena *scratch);

#ifdef __cplusplus
}
#endif
#endif
