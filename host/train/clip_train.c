/* clip_train.c - the text encoder's training pass: the graph walkers of model/graph.h on the
 * node list of the clip skip used (dl_clip_pass), and the LoRA targets by name. */
#include "train/clip_train.h"
#include "core/error.h"


void dl_clip_size_table(const dl_clip *m, int N, int T, int layers, int final_ln, int checkpoint,
                        dl_size_table *tab)
{
    dl_graph g;
    dl_net net;
    dl_pass_in in;
    dl_clip_pass(m, N, T, NULL, layers, final_ln, &g, &net, &in);
    dl_graph_size_table(&net, &in, checkpoint, 0, 0, tab);
}

void dl_clip_train_forward(const dl_ctx *ctx, const dl_clip *m, dl_clip_tape *tape, int N, int T, const int32_t *ids,
                           int layers, int final_ln, float *out, int checkpoint, dl_arena *act, dl_arena *scratch)
{
    DL_ASSERT(ctx && m && tape && ids && out && act && scratch);
    dl_net net;
    dl_pass_in in;
    dl_clip_pass(m, N, T, ids, layers, final_ln, &tape->g, &net, &in);
    dl_graph_train_forward(ctx, &net, &tape->tape, &in, out, checkpoint, act, scratch, NULL);
}

void dl_clip_backward(const dl_ctx *ctx, const dl_clip_tape *tape, const float *d_out, dl_arena *scratch)
{
    DL_ASSERT(ctx && tape && tape->tape.net.g == &tape->g && d_out && scratch);
    dl_graph_backward(ctx, &tape->tape, d_out, NULL, NULL, scratch);
}

int dl_clip_train_modules(const dl_clip *m, dl_clip_named_linear *out, int cap)
{
    int n = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        dl_clip_layer *y = &m->layers[l];
        dl_linear *all[6] = {&y->q, &y->k, &y->v, &y->o, &y->fc1, &y->fc2};
        for (int i = 0; i < 6; i++, n++)
            if (n < cap) out[n] = (dl_clip_named_linear){all[i]->name, all[i]};
    }
    return n;
}
