/* graph.h - the one description of a network: its node list (each node one block: kind,
 * checkpoint prefix, the node its input comes from, the skip it concatenates, channels, spatial
 * level), built once from the config, and the walkers every network shares:
 *   naming, loading  the loader loads each node's weights under its prefix; run in listing mode
 *                    (module.c: place) it is dl_model_weights;
 *   inference        each node's forward, its saved tensors in scratch, released at once;
 *   training         each node's forward saving into the activations arena (or recomputed under
 *                    gradient checkpointing), then the backward over the list in reverse;
 *   sizing           the size table: these walkers run against measuring arenas under a
 *                    measuring backend (nothing computed, every allocation counted and placed).
 * One forward/backward pair per block kind (model/resnet.c, model/transformer.c,
 * model/conv_blocks.c, the VAE's attention in model/vae.c, the text encoder's layer in
 * model/clip.c) serves inference and training; what
 * a block's backward reads is laid out by one function per kind over one allocation (a dl_slab)
 * that the forward fills and the backward reads back from the same base. */
#ifndef DANLU_MODEL_GRAPH_H
#define DANLU_MODEL_GRAPH_H

#include "core/arena.h"
#include "core/ctx.h"
#include "model/module.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_GRAPH_MAX_NODES 192
#define DL_NODE_INPUT (-1)   /* x of a node fed by the network input */
#define DL_NODE_NONE (-2)    /* no producer (skip unused; the time embedding reads timesteps, the embeddings ids) */

typedef enum {
    DL_NODE_CONV_IN = 0, /* conv_in: the latents -> C0 channels */
    DL_NODE_TIME_EMBED,  /* time_embedding: timesteps -> SiLU(temb) [N, Td], read by every resnet
                            (temb itself when an ADD_EMBED node follows) */
    DL_NODE_RESNET,      /* ResnetBlock2D (on concat(x, skip) in the up path) */
    DL_NODE_TRANSFORMER, /* Transformer2DModel */
    DL_NODE_DOWNSAMPLE,  /* downsamplers.0: conv k3 s2 */
    DL_NODE_UPSAMPLE,    /* upsamplers.0: nearest 2x, conv k3 */
    DL_NODE_OUT,         /* conv_norm_out + SiLU -> conv_out */
    DL_NODE_ATTENTION,   /* the VAE's mid-block attention: GroupNorm, one head, residual */
    DL_NODE_LINEAR,      /* a 1x1 conv held as a linear (the VAE's quant_conv, post_quant_conv) */
    DL_NODE_EMBED,       /* token + position embeddings: ids [N, T] -> [N, T, C] (the text encoder) */
    DL_NODE_CLIP_LAYER,  /* a CLIP encoder layer: pre-LN causal self-attention, pre-LN MLP */
    DL_NODE_LAYERNORM,   /* a layer norm over the channels (the text encoder's final_layer_norm) */
    DL_NODE_CLIP_PROJ,   /* text_projection (CLIPTextModelWithProjection): the final-LN hidden state at
                            each sequence's EOS token -> [N, P]; loaded and listed with the list, run by
                            dl_clip_pooled, never by the walkers */
    DL_NODE_ADD_EMBED    /* SDXL's add_embedding: SiLU(temb + add_embedding(text_embeds, time_ids)),
                            a side node after the time embedding; the resnets read its output */
} dl_node_kind;

typedef struct dl_node {
    dl_node_kind kind;
    char name[64];         /* checkpoint prefix with its trailing '.', "" at the top level */
    int x;                 /* node whose output is the input (DL_NODE_INPUT: the network's) */
    int skip;              /* node whose output is concatenated after x, DL_NODE_NONE: none */
    int is_skip;           /* the output is also a skip of a later node */
    int level;             /* the input is at (H, W) / 2^level (negative: x 2^-level) */
    int side;              /* the output is a side input of later nodes (the time embedding), not
                              on the chain of x; each side node reads the previous one's (in->side)
                              and replaces it */
    int cin, cout, cskip;  /* channels in (incl. the skip's cskip) and out */
    int heads, layers;     /* transformer: attention heads, transformer blocks */
    void *block;           /* the loaded block (dl_unet_resnet, dl_clip_layer, dl_conv, dl_norm...) or the net */
    size_t w_off, w_bytes; /* its weights in the weights arena (set by the loader) */
} dl_node;

typedef struct dl_graph {
    int n;
    dl_node node[DL_GRAPH_MAX_NODES];
} dl_graph;

/* A node appended to g (fields as given, the rest zero); its index. DL_ASSERT on overflow. */
int dl_graph_add(dl_graph *g, dl_node_kind kind, const char *name, int x, int level, int cin, int cout);
/* H at a level: H >> level, or H << -level. */
int dl_level_size(int H, int level);

/* ---- the size table (llm.c's TensorSpec, per node): where each node's output and saved
 * tensors lie in the activations arena of a training forward; the arenas' sizes. */
typedef struct dl_size_row {
    size_t y_off, y_bytes;         /* output */
    size_t saved_off, saved_bytes; /* saved for the backward (0 when recomputed) */
} dl_size_row;

typedef struct dl_size_table {
    int n;
    size_t weights;        /* the weights arena */
    size_t act;            /* the activations arena of a training forward */
    size_t scratch_train;  /* scratch of the training forward and backward (the larger) */
    size_t scratch_infer;  /* scratch of the inference forward */
    dl_size_row row[DL_GRAPH_MAX_NODES];
} dl_size_table;

/* ---- measuring: a ctx whose backend computes nothing. Walkers run under it against measuring
 * arenas (core/arena.h) touch no tensor and count every allocation. */
const dl_ctx *dl_measure_ctx(void);
int dl_ctx_measuring(const dl_ctx *ctx);

/* ---- a slab: consecutive 64-byte aligned tensors from one base (a layout walked twice: once
 * with base 0 to size it, once with the allocation to place it). */
typedef struct dl_slab {
    uintptr_t base;
    size_t off;
} dl_slab;
/* n floats at the slab's current offset. */
float *dl_slab_take(dl_slab *s, int64_t n);
/* Bytes of one arena allocation of n floats. */
size_t dl_f32_bytes(int64_t n);

/* ---- the walkers, shared by every network: a network is its graph and four functions */

/* The inputs of one pass. */
typedef struct dl_pass_in {
    int N, H, W;              /* batch, and the network input's spatial size */
    const float *x;           /* the network input [N, H, W, node 0's cin] */
    const float *t;           /* timesteps [N] (UNet) */
    const float *context;     /* [N, T, Dc] (UNet) */
    int T;
    const float *side;        /* the last side node's output (UNet: SiLU(temb) [N, Td]), set by the walk */
    const int32_t *ids;       /* token ids [N, T] (the text encoder: H = T, W = 1) */
    const float *text_embeds; /* SDXL UNet: pooled text embedding [N, Dt] (NULL otherwise) */
    const float *time_ids;    /* SDXL UNet: [N, K] original size, crop top-left, target size */
} dl_pass_in;

typedef struct dl_net {
    const void *self;         /* the loaded network */
    const dl_graph *g;
    /* node nd's forward: y from x (and skip); returns its saved allocation from save (NULL: none) */
    float *(*forward)(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in, const float *x,
                      const float *skip, float *y, dl_arena *save, dl_arena *scratch);
    /* its backward: dx overwritten (NULL: not wanted), dctx and dside (d of in->side, the side
     * nodes' output the node read; NULL: not wanted) accumulated, parameter gradients
     * accumulated. A side node's backward gets dy = d(its output) and dx NULL. */
    void (*backward)(const dl_ctx *ctx, const void *self, const dl_node *nd, const dl_pass_in *in, const float *x,
                     const float *saved, const float *dy, float *dx, float *dctx, float *dside, dl_arena *scratch);
    int (*trains)(const void *self, const dl_node *nd); /* 1 when the node has parameters with gradients */
    int context_dim;          /* Dc of the context [N, T, Dc] (0: the network has none) */
} dl_net;

/* Elements of node nd's output (the side node: N x cout). */
int64_t dl_node_numel(const dl_node *nd, int N, int H, int W);

/* One node's buffers on a tape; valid until the caller releases the activations arena. */
typedef struct dl_tape_node {
    const float *x, *skip; /* its inputs (the network input, or earlier nodes' outputs) */
    float *y;              /* its output */
    float *saved;          /* what its backward reads (NULL when it saves nothing or recomputes) */
    int recompute;         /* checkpointed: only x and y kept, saved recomputed in the backward
                              (per node, so a policy may choose; today all or none) */
} dl_tape_node;

typedef struct dl_tape {
    dl_net net;
    dl_pass_in in;
    int checkpoint;
    dl_tape_node node[DL_GRAPH_MAX_NODES]; /* indexed as the graph's nodes */
} dl_tape;

/* Inference: out (the last node's output) from in; each node's saved tensors in scratch,
 * released as soon as it returns; skip outputs kept, the others ping-pong between two buffers. */
void dl_graph_infer(const dl_ctx *ctx, const dl_net *net, const dl_pass_in *in, float *out, dl_arena *scratch);
/* Training forward: every node's output in act, its saved tensors in act (or, checkpoint != 0,
 * recomputed in the backward), recorded on tp; out is the last node's output. tab: record the
 * size table's rows (measuring runs), else NULL. */
void dl_graph_train_forward(const dl_ctx *ctx, const dl_net *net, dl_tape *tp, const dl_pass_in *in, float *out,
                            int checkpoint, dl_arena *act, dl_arena *scratch, dl_size_table *tab);
/* Backward of the recorded forward from dout: parameter gradients (LoRAs, or the layers
 * themselves under full fine-tuning) accumulated, dctx (NULL: not wanted) overwritten, dx_in
 * [the network input] (NULL: not wanted) overwritten. Nodes whose backward reaches neither a
 * parameter with a gradient nor a wanted gradient are not run. When the last side node trains
 * (the UNet's time embedding under full fine-tuning), the gradient of its output is gathered from
 * every node that read it and its backward runs last. Scratch released. */
void dl_graph_backward(const dl_ctx *ctx, const dl_tape *tp, const float *dout, float *dx_in, float *dctx,
                       dl_arena *scratch);
/* The size table of net for in's shapes (its pointers are ignored): the three walkers above run
 * against measuring arenas under the measuring backend. weights: the nodes' w_bytes. */
void dl_graph_size_table(const dl_net *net, const dl_pass_in *in, int checkpoint, int want_dx, int want_dctx,
                         dl_size_table *tab);

/* ---- loading. Layer names live as long as the network: 96-character slots in chunks. */
typedef struct dl_names {
    char **chunk;
    int n_chunks, n;
} dl_names;
/* prefix + suffix, stored; NULL (message) when out of memory or too long. */
const char *dl_names_add(dl_names *p, const char *prefix, const char *suffix);
void dl_names_free(dl_names *p);

/* What a block loader needs besides the weights: where names go, and the network's module
 * registry for LoRA injection (reg NULL: none). */
typedef struct dl_netload {
    dl_loader ld;
    dl_names *names;
    void *net;
    /* register a linear (l) or conv (c) by name; conv1x1: a linear stored as a 1x1 conv */
    int (*reg)(void *net, const char *name, dl_linear *l, dl_conv *c, int conv1x1);
} dl_netload;

int dl_nl_linear(dl_netload *nl, dl_linear *m, const char *pre, const char *n, int in, int out, int bias);
/* A [c, c] projection stored as a linear or a 1x1 conv (conv1x1: what a listing reports). */
int dl_nl_proj(dl_netload *nl, dl_linear *m, const char *pre, const char *n, int c, int conv1x1);
int dl_nl_conv(dl_netload *nl, dl_conv *m, const char *pre, const char *n, int cin, int cout, int k, int stride,
               int pad);
int dl_nl_norm(dl_netload *nl, dl_norm *m, const char *pre, const char *n, int C, int G, float eps);

#ifdef __cplusplus
}
#endif
#endif
