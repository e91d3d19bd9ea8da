/* cmd_run.c - `danlu run`: one model component of a checkpoint on tensors from a .safetensors
 * file, outputs to another, in the reference implementation's conventions (NCHW images), so
 * any implementation can be compared with danlu on any weights. */
#include "cli/commands.h"
#include "backend/backend.h"
#include "core/ctx.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *model, *component, *inputs, *out, *backend, *unet_config;
    int threads;
} run_args;

static void run_defaults(void *obj)
{
    memset(obj, 0, sizeof(run_args));
}

#define RA(f) offsetof(run_args, f)

static const dl_opt k_run_opts[] = {
    {"--model", NULL, DL_OPT_STR, RA(model), "PATH", NULL, 0, 0, NULL, NULL, "options",
     "checkpoint: a single .safetensors file or a diffusers folder (required)"},
    {"--component", NULL, DL_OPT_STR, RA(component), "COMPONENT", NULL, 0, 0,
     "text-encoder|text-encoder-2|unet|vae-encode|vae-decode", NULL, "options", "the network to run (required)"},
    {"--inputs", NULL, DL_OPT_STR, RA(inputs), "IN.safetensors", NULL, 0, 0, NULL, NULL, "options",
     "input tensors, named as above (required)"},
    {"--out", NULL, DL_OPT_STR, RA(out), "OUT.safetensors", NULL, 0, 0, NULL, NULL, "options",
     "where the output tensors are written (required)"},
    {"--unet-config", NULL, DL_OPT_STR, RA(unet_config), "FILE", "detected from the weights", 0, 0, NULL, NULL,
     "options", "a diffusers unet/config.json for a single file's UNet (its heads and norm groups are not in its "
     "weights: detection assumes SD's and SDXL's)"},
    {"--threads", NULL, DL_OPT_INT, RA(threads), "N", "0", 0, 1024, NULL, NULL, "options",
     "CPU threads (0: DANLU_THREADS or every core)"},
    {"--backend", NULL, DL_OPT_STR, RA(backend), "NAME", "auto", 0, 0, "auto|cpu|cuda", NULL, "options",
     DL_OPT_BACKEND_HELP},
};

int dl_run_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_run_opts, (int)(sizeof k_run_opts / sizeof *k_run_opts), NULL, sizeof(run_args),
                          run_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: danlu run --model PATH --component COMPONENT --inputs IN.safetensors --out OUT.safetensors\n"
            "                 [--unet-config FILE] [--threads N] [--backend auto|cpu|cuda]\n"
            "  Runs one component of a checkpoint (single .safetensors file or diffusers folder).\n"
            "  Tensors use diffusers/transformers conventions (images NCHW, float32/16/bf16 in, float32 out):\n"
            "    text-encoder  input_ids [N, T] (int64 or int32)\n"
            "                  -> last_hidden_state [N, T, C], penultimate_hidden_state [N, T, C]\n"
            "                     (hidden_states[-2], before the final layer norm); SDXL: its first text\n"
            "                     encoder (CLIP ViT-L)\n"
            "    text-encoder-2  SDXL's second text encoder (OpenCLIP ViT-bigG, CLIPTextModelWithProjection):\n"
            "                  input_ids [N, T] -> last_hidden_state, penultimate_hidden_state [N, T, 1280],\n"
            "                     text_embeds [N, 1280] (text_projection of the final-LN state at the EOS token)\n"
            "    unet          sample [N, 4, H, W], timestep [N] or [], encoder_hidden_states [N, T, D]\n"
            "                  SDXL also: text_embeds [N, 1280] (pooled), time_ids [N, 6] (original H, W, crop\n"
            "                  top, left, target H, W; any count K with text_embeds [N, P - K * 256])\n"
            "                  -> out [N, 4, H, W]\n"
            "    vae-encode    image [N, 3, H, W] in [-1, 1], optional noise [N, 4, H/8, W/8]\n"
            "                  -> mean, logvar [N, 4, H/8, W/8] (and latent = mean + std * noise)\n"
            "    vae-decode    latent [N, 4, H/8, W/8] (unscaled) -> image [N, 3, H, W]\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_run_optsets(sets));
}

/* A float input as fp32, with its shape checked against the rank wanted. */
static float *input_f32(const dl_st_file *in, const char *name, int ndim, int64_t *shape)
{
    const dl_st_tensor *t = dl_st_find(in, name);
    if (!t) {
        dl_error_set("%s: no tensor '%s' (see danlu run --help)", in->path, name);
        return NULL;
    }
    if (t->ndim != ndim) {
        char s[128];
        dl_error_set("%s: tensor '%s' has shape %s, expected %d dimensions", in->path, name,
                     dl_shape_str(t->shape, t->ndim, s, sizeof s), ndim);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) shape[i] = t->shape[i];
    float *x = malloc((size_t)(dl_st_numel(t) ? dl_st_numel(t) : 1) * sizeof *x);
    if (dl_st_read_f32(in, t, x) != DL_OK) { free(x); return NULL; }
    return x;
}

/* A numeric tensor of any int or float dtype as fp32 (malloc'd; n floats, at least one). */
static float *numbers_f32(const dl_st_file *in, const dl_st_tensor *t)
{
    const int64_t n = dl_st_numel(t);
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!v) return dl_error_set("out of memory"), NULL;
    if (t->dtype == DL_I64 || t->dtype == DL_I32) {
        for (int64_t i = 0; i < n; i++) {
            int64_t x;
            if (t->dtype == DL_I64) memcpy(&x, (const char *)t->data + 8 * i, 8);
            else { int32_t w; memcpy(&w, (const char *)t->data + 4 * i, 4); x = w; }
            v[i] = (float)x;
        }
    } else if (dl_st_read_f32(in, t, v) != DL_OK) {
        free(v);
        return NULL;
    }
    return v;
}

/* [N, C, H, W] <-> [N, H, W, C] */
static float *nchw_to_nhwc(const float *x, int64_t N, int64_t C, int64_t H, int64_t W)
{
    float *y = malloc((size_t)(N * C * H * W) * sizeof *y);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < H * W; p++) y[(n * H * W + p) * C + c] = x[(n * C + c) * H * W + p];
    return y;
}

static float *nhwc_to_nchw(const float *x, int64_t N, int64_t H, int64_t W, int64_t C)
{
    float *y = malloc((size_t)(N * C * H * W) * sizeof *y);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < H * W; p++) y[(n * C + c) * H * W + p] = x[(n * H * W + p) * C + c];
    return y;
}

typedef struct {
    dl_ctx ctx;
    dl_checkpoint ck;
    dl_arena weights, scratch;
    dl_st_entry out[4];
    float *owned[16];
    int n_out, n_owned;
    dl_be_stage io;     /* inputs and outputs on the backend (backend/backend.h) */
} run_state;

static float *keep(run_state *s, float *p)
{
    DL_ASSERT(s->n_owned < (int)(sizeof s->owned / sizeof *s->owned));
    s->owned[s->n_owned++] = p;
    return p;
}

static void add_out(run_state *s, const char *name, float *data, int ndim, const int64_t *shape)
{
    dl_st_entry *e = &s->out[s->n_out++];
    e->name = name;
    e->dtype = DL_F32;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
}

static int run_text_part(run_state *s, const dl_st_file *in, dl_part part)
{
    const dl_st_tensor *t = dl_st_find(in, "input_ids");
    if (!t) return dl_error_set("%s: no tensor 'input_ids' (see danlu run --help)", in->path);
    if (t->ndim != 2 || (t->dtype != DL_I64 && t->dtype != DL_I32))
        return dl_error_set("%s: 'input_ids' must be int64 or int32 [N, T]", in->path);
    int N = (int)t->shape[0], T = (int)t->shape[1];
    if (part == DL_PART_TEXT2 && !s->ck.cfg.text2.num_layers)
        return dl_error_set("%s: no second text encoder (an SDXL model with text_encoder_2/ or "
                            "conditioner.embedders.1.model.*)", s->ck.path);
    const dl_clip_config *c = part == DL_PART_TEXT2 ? &s->ck.cfg.text2 : &s->ck.cfg.text;
    if (T < 1 || T > c->max_positions || N < 1)
        return dl_error_set("%s: 'input_ids' is [%d, %d]; T must be 1..%d", in->path, N, T, c->max_positions);
    int32_t *ids = malloc(sizeof *ids * (size_t)N * T);
    for (int64_t i = 0; i < (int64_t)N * T; i++) {
        int64_t v;
        if (t->dtype == DL_I64) memcpy(&v, (const char *)t->data + 8 * i, 8);
        else { int32_t w; memcpy(&w, (const char *)t->data + 4 * i, 4); v = w; }
        if (v < 0 || v >= c->vocab_size) {
            free(ids);
            return dl_error_set("%s: input_ids[%lld] = %lld is outside the vocabulary (0..%d)", in->path, (long long)i,
                                (long long)v, c->vocab_size - 1);
        }
        ids[i] = (int32_t)v;
    }
    dl_clip m;
    size_t wb;
    if (dl_clip_weights_bytes_as(&s->ck, part, &wb) != DL_OK ||
        dl_arena_init_on(&s->weights, "weights", wb, &s->ctx) != DL_OK || dl_clip_load_as(&m, &s->ck, part, &s->weights) != DL_OK ||
        dl_arena_init_on(&s->scratch, "scratch", dl_clip_scratch_bytes(&m, N, T), &s->ctx) != DL_OK) {
        free(ids);
        return DL_ERR;
    }
    int64_t shape[3] = {N, T, c->hidden_size};
    const size_t no = sizeof(float) * (size_t)(N * T * c->hidden_size);
    float *last = keep(s, malloc(no)), *pen = keep(s, malloc(no));
    const int32_t *di = dl_be_stage_in(&s->io, 0, ids, sizeof *ids * (size_t)N * T);
    float *dl = dl_be_stage_out(&s->io, 1, last, no), *dp = dl_be_stage_out(&s->io, 2, pen, no);
    const int P = c->projection_dim;
    float *pooled = P ? keep(s, malloc(sizeof(float) * (size_t)N * P)) : NULL;
    float *dpool = P ? dl_be_stage_out(&s->io, 3, pooled, sizeof(float) * (size_t)N * P) : NULL;
    int *pos = malloc(sizeof *pos * (size_t)N);
    int rc = DL_ERR;
    if (di && dl && dp && pos && (!P || dpool)) {
        dl_clip_forward(&s->ctx, &m, N, T, di, c->num_layers, 1, dl, &s->scratch);
        dl_clip_forward(&s->ctx, &m, N, T, di, c->num_layers > 1 ? c->num_layers - 1 : 1, 0, dp, &s->scratch);
        if (P) {
            dl_clip_eos_positions(c, N, T, ids, pos);
            dl_clip_pooled(&s->ctx, &m, N, T, pos, dl, dpool, &s->scratch);
        }
        rc = DL_OK;
    }
    free(pos);
    if (dl_be_stage_fetch(&s->io) != DL_OK) rc = DL_ERR;
    add_out(s, "last_hidden_state", last, 3, shape);
    add_out(s, "penultimate_hidden_state", pen, 3, shape);
    if (P) {
        const int64_t ps[2] = {N, P};
        add_out(s, "text_embeds", pooled, 2, ps);
    }
    dl_clip_free(&m);
    free(ids);
    return rc;
}

static int run_text(run_state *s, const dl_st_file *in) { return run_text_part(s, in, DL_PART_TEXT); }
static int run_text2(run_state *s, const dl_st_file *in) { return run_text_part(s, in, DL_PART_TEXT2); }

/* SDXL's added conditioning: text_embeds [N, Dt] and time_ids [N, K] (any numeric dtype) as fp32
 * in *te, *tid (kept by s); es = {Dt, K}. The UNet is configured for K time ids before it loads
 * (K is not in a config or the weights), and Dt must then be P - K x A. */
static int sdxl_inputs(run_state *s, const dl_st_file *in, int64_t N, float **te, float **tid, int64_t es[2])
{
    dl_unet_config *u = &s->ck.cfg.unet;
    int64_t sh[2];
    *te = keep(s, input_f32(in, "text_embeds", 2, sh));
    if (!*te) return dl_error_prefix("the UNet is SDXL's (text_time added conditioning): ");
    if (sh[0] != N) return dl_error_set("%s: 'text_embeds' has %lld rows, 'sample' %lld", in->path, (long long)sh[0], (long long)N);
    es[0] = sh[1];
    const dl_st_tensor *t = dl_st_find(in, "time_ids");
    if (!t) return dl_error_set("%s: no tensor 'time_ids' [N, 6] (the UNet is SDXL's; see danlu run --help)", in->path);
    if (t->ndim != 2 || t->shape[0] != N || t->shape[1] < 1 || t->shape[1] > 64)
        return dl_error_set("%s: 'time_ids' must be [%lld, K] with 1 <= K <= 64 (SDXL: K = 6)", in->path, (long long)N);
    es[1] = t->shape[1];
    if (!(*tid = keep(s, numbers_f32(in, t)))) return DL_ERR;
    const int64_t want = u->projection_class_embeddings_input_dim - es[1] * u->addition_time_embed_dim;
    if (es[0] != want)
        return dl_error_set("%s: 'text_embeds' is [%lld, %lld]; with %lld time ids the UNet takes [%lld, %lld] "
                            "(projection_class_embeddings_input_dim %d = text_embeds + time ids x %d)",
                            in->path, (long long)N, (long long)es[0], (long long)es[1], (long long)N, (long long)want,
                            u->projection_class_embeddings_input_dim, u->addition_time_embed_dim);
    u->addition_time_ids = (int)es[1];
    return DL_OK;
}

static int run_unet(run_state *s, const dl_st_file *in)
{
    int64_t xs[4], cs[3], ts[1] = {1};
    float *x = keep(s, input_f32(in, "sample", 4, xs));
    if (!x) return DL_ERR;
    float *cond = keep(s, input_f32(in, "encoder_hidden_states", 3, cs));
    if (!cond) return DL_ERR;
    const dl_st_tensor *tt = dl_st_find(in, "timestep");
    if (!tt) return dl_error_set("%s: no tensor 'timestep' (see danlu run --help)", in->path);
    int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3], nt = dl_st_numel(tt);
    const dl_unet_config *u = &s->ck.cfg.unet;
    if (C != u->in_channels) return dl_error_set("%s: 'sample' has %lld channels, the UNet takes %d", in->path, (long long)C, u->in_channels);
    if (cs[0] != N || cs[2] != u->cross_attention_dim)
        return dl_error_set("%s: 'encoder_hidden_states' must be [%lld, T, %d]", in->path, (long long)N, u->cross_attention_dim);
    int f = 1 << (u->n_blocks - 1);
    if (H % f || W % f) return dl_error_set("%s: 'sample' is %lldx%lld; H and W must be multiples of %d", in->path, (long long)H, (long long)W, f);
    if (nt != 1 && nt != N) return dl_error_set("%s: 'timestep' must hold 1 or N = %lld values", in->path, (long long)N);
    float *tv = keep(s, malloc(sizeof(float) * (size_t)N)), *t1 = numbers_f32(in, tt);
    if (!t1) return DL_ERR;
    for (int64_t i = 0; i < N; i++) tv[i] = t1[nt == 1 ? 0 : i];
    free(t1);
    (void)ts;
    float *te = NULL, *tid = NULL;
    int64_t es[2] = {0, 0};
    if (u->addition_embed == DL_ADD_TEXT_TIME) DL_TRY(sdxl_inputs(s, in, N, &te, &tid, es));
    dl_unet m;
    size_t wb;
    if (dl_unet_weights_bytes(&s->ck, &wb) != DL_OK || dl_arena_init_on(&s->weights, "weights", wb, &s->ctx) != DL_OK ||
        dl_unet_load(&m, &s->ck, &s->weights) != DL_OK)
        return DL_ERR;
    if (dl_arena_init_on(&s->scratch, "scratch", dl_unet_scratch_bytes(&m, (int)N, (int)H, (int)W, (int)cs[1]),
                         &s->ctx) != DL_OK)
        return DL_ERR;
    float *xn = keep(s, nchw_to_nhwc(x, N, C, H, W));
    const size_t ny = sizeof(float) * (size_t)(N * H * W * u->out_channels);
    float *y = keep(s, malloc(ny));
    const float *dx = dl_be_stage_in(&s->io, 0, xn, sizeof(float) * (size_t)(N * H * W * C));
    const float *dt = dl_be_stage_in(&s->io, 1, tv, sizeof(float) * N);
    const float *dc = dl_be_stage_in(&s->io, 2, cond, sizeof(float) * (size_t)(cs[0] * cs[1] * cs[2]));
    dl_unet_added add = {NULL, NULL};
    if (te) {
        add.text_embeds = dl_be_stage_in(&s->io, 3, te, sizeof(float) * (size_t)(N * es[0]));
        add.time_ids = dl_be_stage_in(&s->io, 4, tid, sizeof(float) * (size_t)(N * es[1]));
        if (!add.text_embeds || !add.time_ids) return DL_ERR;
    }
    float *dy = dl_be_stage_out(&s->io, 5, y, ny);
    if (!dx || !dt || !dc || !dy) return DL_ERR;
    dl_unet_forward_added(&s->ctx, &m, (int)N, (int)H, (int)W, dx, dt, dc, (int)cs[1], &add, dy, &s->scratch);
    if (dl_be_stage_fetch(&s->io) != DL_OK) return DL_ERR;
    int64_t os[4] = {N, u->out_channels, H, W};
    add_out(s, "out", keep(s, nhwc_to_nchw(y, N, H, W, u->out_channels)), 4, os);
    dl_unet_free(&m);
    return DL_OK;
}

static int load_vae(run_state *s, dl_vae *m, int N, int H, int W)
{
    size_t wb;
    if (dl_vae_weights_bytes(&s->ck, &wb) != DL_OK || dl_arena_init_on(&s->weights, "weights", wb, &s->ctx) != DL_OK ||
        dl_vae_load(m, &s->ck, &s->weights) != DL_OK ||
        dl_arena_init_on(&s->scratch, "scratch", dl_vae_scratch_bytes(&s->ck.cfg.vae, N, H, W), &s->ctx) != DL_OK)
        return DL_ERR;
    return DL_OK;
}

static int run_vae_encode(run_state *s, const dl_st_file *in)
{
    int64_t is[4];
    float *img = keep(s, input_f32(in, "image", 4, is));
    if (!img) return DL_ERR;
    const dl_vae_config *c = &s->ck.cfg.vae;
    int64_t N = is[0], H = is[2], W = is[3], f = 1 << (c->n_blocks - 1), L = c->latent_channels;
    if (is[1] != c->in_channels) return dl_error_set("%s: 'image' must have %d channels", in->path, c->in_channels);
    if (H % f || W % f) return dl_error_set("%s: 'image' is %lldx%lld; H and W must be multiples of %lld", in->path, (long long)H, (long long)W, (long long)f);
    dl_vae m;
    if (load_vae(s, &m, (int)N, (int)H, (int)W) != DL_OK) return DL_ERR;
    int64_t h = H / f, w = W / f, nl = N * h * w * L, ls[4] = {N, L, h, w};
    float *mean = keep(s, malloc(sizeof(float) * (size_t)nl)), *logvar = keep(s, malloc(sizeof(float) * (size_t)nl));
    const float *di = dl_be_stage_in(&s->io, 0, keep(s, nchw_to_nhwc(img, N, 3, H, W)), sizeof(float) * (size_t)(N * H * W * 3));
    if (!di) return DL_ERR;
    dl_vae_encode(&s->ctx, &m, (int)N, (int)H, (int)W, di, mean, logvar, &s->scratch); /* mean, logvar: host */
    if (dl_be_stage_fetch(&s->io) != DL_OK) return DL_ERR;
    add_out(s, "mean", keep(s, nhwc_to_nchw(mean, N, h, w, L)), 4, ls);
    add_out(s, "logvar", keep(s, nhwc_to_nchw(logvar, N, h, w, L)), 4, ls);
    if (dl_st_find(in, "noise")) {
        int64_t ns[4];
        float *noise = keep(s, input_f32(in, "noise", 4, ns));
        if (!noise) return DL_ERR;
        if (!dl_shape_eq(ns, 4, ls, 4)) return dl_error_set("%s: 'noise' must have the latent's shape", in->path);
        float *nn = keep(s, nchw_to_nhwc(noise, N, L, h, w)), *lat = keep(s, malloc(sizeof(float) * (size_t)nl));
        dl_vae_sample(nl, mean, logvar, nn, lat);
        add_out(s, "latent", keep(s, nhwc_to_nchw(lat, N, h, w, L)), 4, ls);
    }
    dl_vae_free(&m);
    return DL_OK;
}

static int run_vae_decode(run_state *s, const dl_st_file *in)
{
    int64_t zs[4];
    float *z = keep(s, input_f32(in, "latent", 4, zs));
    if (!z) return DL_ERR;
    const dl_vae_config *c = &s->ck.cfg.vae;
    int64_t N = zs[0], h = zs[2], w = zs[3], f = 1 << (c->n_blocks - 1);
    if (zs[1] != c->latent_channels) return dl_error_set("%s: 'latent' must have %d channels", in->path, c->latent_channels);
    dl_vae m;
    if (load_vae(s, &m, (int)N, (int)(h * f), (int)(w * f)) != DL_OK) return DL_ERR;
    const size_t ni = sizeof(float) * (size_t)(N * h * f * w * f * c->out_channels);
    float *img = keep(s, malloc(ni));
    const float *dz = dl_be_stage_in(&s->io, 0, keep(s, nchw_to_nhwc(z, N, zs[1], h, w)), sizeof(float) * (size_t)(N * zs[1] * h * w));
    float *di = dl_be_stage_out(&s->io, 1, img, ni);
    if (!dz || !di) return DL_ERR;
    dl_vae_decode(&s->ctx, &m, (int)N, (int)h, (int)w, dz, di, &s->scratch);
    if (dl_be_stage_fetch(&s->io) != DL_OK) return DL_ERR;
    int64_t os[4] = {N, c->out_channels, h * f, w * f};
    add_out(s, "image", keep(s, nhwc_to_nchw(img, N, h * f, w * f, c->out_channels)), 4, os);
    dl_vae_free(&m);
    return DL_OK;
}

/* Tensors of the component's file(s) that the network never read: a sign of a mismatched
 * architecture or a layout we do not understand. Reported, not fatal. */
static void report_unused(const dl_checkpoint *ck, dl_part part)
{
    int n = 0;
    char **names = dl_ckpt_unused(ck, part, &n);
    if (n > 0) {
        fprintf(stderr, "danlu run: note: %d tensor%s of %s not used:", n, n == 1 ? "" : "s", ck->path);
        for (int i = 0; i < n && i < 5; i++) fprintf(stderr, " %s", names[i]);
        fprintf(stderr, "%s\n", n > 5 ? " ..." : "");
    }
    dl_ckpt_free_names(names, n);
}

int dl_cmd_run(int argc, char **argv, FILE *out)
{
    run_args ra;
    run_defaults(&ra);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_run_optsets(sets);
    sets[0].obj = &ra;
    int npos, pr = dl_opt_parse_argv("run", sets, nsets, argc, argv, NULL, 0, &npos, usage, out);
    if (pr) return pr < 0 ? 0 : pr;
    const char *model = ra.model, *component = ra.component, *inputs = ra.inputs, *outp = ra.out;
    int threads = ra.threads;
    if (!model || !component || !inputs || !outp) {
        fprintf(stderr, "danlu run: --model, --component, --inputs and --out are required\n");
        usage(stderr);
        return 2;
    }
    dl_part part = !strcmp(component, "text-encoder")     ? DL_PART_TEXT
                   : !strcmp(component, "text-encoder-2") ? DL_PART_TEXT2
                   : !strcmp(component, "unet")           ? DL_PART_UNET
                                                          : DL_PART_VAE;
    int (*fn)(run_state *, const dl_st_file *) = !strcmp(component, "text-encoder") ? run_text
                                               : !strcmp(component, "text-encoder-2") ? run_text2
                                               : !strcmp(component, "unet")         ? run_unet
                                               : !strcmp(component, "vae-encode")   ? run_vae_encode
                                               : !strcmp(component, "vae-decode")   ? run_vae_decode : NULL;
    if (!fn) {
        fprintf(stderr, "danlu run: unknown component '%s' (text-encoder, text-encoder-2, unet, vae-encode, vae-decode)\n",
                component);
        return 2;
    }
    run_state s;
    memset(&s, 0, sizeof s);
    s.io.ctx = &s.ctx;
    dl_st_file in;
    int rc = 1;
    if (dl_st_open(&in, inputs) != DL_OK) {
        fprintf(stderr, "danlu run: %s\n", dl_error_msg());
        return 1;
    }
    const dl_backend *be = dl_backend_find(ra.backend ? ra.backend : "auto");
    /* SDXL: its UNet, VAE and both text encoders run */
    const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1, .unet_config = ra.unet_config};
    if (!be || dl_ctx_init_backend(&s.ctx, threads, be) != DL_OK || dl_ckpt_open(&s.ck, model, &copt) != DL_OK ||
        (dl_ckpt_set_pool(&s.ck, s.ctx.pool), s.ck.weight_dtypes = be->weight_dtypes,
         s.ck.weights_in_place = !be->device_memory, fn(&s, &in)) != DL_OK ||
        dl_st_save(outp, s.out, s.n_out, NULL, 0) != DL_OK) {
        fprintf(stderr, "danlu run: %s\n", dl_error_msg());
    } else {
        rc = 0;
        report_unused(&s.ck, part);
        for (int i = 0; i < s.n_out; i++) {
            char sh[96];
            fprintf(out, "%s %s\n", s.out[i].name, dl_shape_str(s.out[i].shape, s.out[i].ndim, sh, sizeof sh));
        }
    }
    for (int i = 0; i < s.n_owned; i++) free(s.owned[i]);
    dl_st_close(&in);
    dl_ckpt_close(&s.ck);
    dl_arena_free(&s.weights);
    dl_arena_free(&s.scratch);
    dl_be_stage_free(&s.io);
    if (s.ctx.pool) dl_ctx_free(&s.ctx);
    return rc;
}
