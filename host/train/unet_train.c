/* unet_train.c - the UNet training pass: the graph walkers of model/graph.h on the UNet's node
 * list (dl_unet_net), with the UNet's inputs (latents, timesteps, text context). */
#include "train/unet_train.h"
#include "core/error.h"

#include <stdlib.h>

static dl_pass_in pass_in(const dl_unet *u, int N, int H, int W, const float *x, const float *t, const float *context,
                          int T)
{
    const int n = u->cfg.n_blocks;
    DL_ASSERT(N > 0 && T > 0 && n >= 1);
    DL_ASSERTF(H % (1 << (n - 1)) == 0 && W % (1 << (n - 1)) == 0,
               "latent %dx%d is not divisible by 2^%d (the UNet's downsampling)", H, W, n - 1);
    return (dl_pass_in){N, H, W, x, t, context, T, NULL, NULL};
}

void dl_unet_train_forward(const dl_ctx *ctx, const dl_unet *u, dl_unet_tape *tape, int N, int H, int W,
                           const float *x, const float *t, const float *context, int T, float *out,
                           int checkpoint, dl_arena *act, dl_arena *scratch)
{
    DL_ASSERT(ctx && u && tape && x && t && context && out && act && scratch);
    const dl_net net = dl_unet_net(u);
    const dl_pass_in in = pass_in(u, N, H, W, x, t, context, T);
    dl_graph_train_forward(ctx, &net, tape, &in, out, checkpoint, act, scratch, NULL);
}

void dl_unet_backward(const dl_ctx *ctx, const dl_unet_tape *tape, const float *dout, float *dcontext,
                      dl_arena *scratch)
{
    DL_ASSERT(ctx && tape && tape->net.self && dout && scratch);
    dl_graph_backward(ctx, tape, dout, NULL, dcontext, scratch);
}

void dl_unet_size_table(const dl_unet *u, int N, int H, int W, int T, int checkpoint, int want_dcontext,
                        dl_size_table *tab)
{
    const dl_net net = dl_unet_net(u);
    const dl_pass_in in = pass_in(u, N, H, W, NULL, NULL, NULL, T);
    dl_graph_size_table(&net, &in, checkpoint, 0, want_dcontext, tab);
}

/* One entry of the size table (act: the activations arena, else the training scratch). */
static size_t table_entry(const dl_unet *u, int N, int H, int W, int T, int checkpoint, int want_dcontext, int act)
{
    dl_size_table *tab = malloc(sizeof *tab); /* sizing runs once, before the steady state */
    DL_ASSERTF(tab, "out of memory sizing the UNet training pass");
    dl_unet_size_table(u, N, H, W, T, checkpoint, want_dcontext, tab);
    const size_t b = act ? tab->act : tab->scratch_train;
    free(tab);
    return b;
}

size_t dl_unet_train_act_bytes(const dl_unet *u, int N, int H, int W, int T, int checkpoint)
{
    return table_entry(u, N, H, W, T, checkpoint, 0, 1);
}

size_t dl_unet_train_scratch_bytes(const dl_unet *u, int N, int H, int W, int T, int checkpoint, int want_dcontext)
{
    return table_entry(u, N, H, W, T, checkpoint, want_dcontext, 0);
}
