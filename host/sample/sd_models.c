/* sd_models.c - one SD checkpoint's tokenizer, text encoder, UNet and VAE loaded for sampling
 * (SDXL: both tokenizers and text encoders). */
#include "sample/sd_models.h"

#include "backend/backend.h"
#include "core/arena.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/tokenizer.h"
#include "model/unet.h"
#include "model/vae.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"

#include <stdlib.h>
#include <string.h>

struct dl_sd {
    const dl_ctx *ctx;
    dl_model_config cfg;
    int sd2;
    dl_checkpoint ck;
    int ck_open;
    dl_tokenizer *tok;        /* owned unless view */
    const dl_tokenizer *tokv; /* what is used: tok, or the viewed one */
    dl_clip *clip;            /* &clip_own, or the viewed network */
    int xl;                   /* SDXL: the second tokenizer and text encoder below, added conditioning */
    dl_tokenizer *tok2;       /* SDXL's tokenizer_2 (pads with "!") */
    dl_clip clip2;            /* SDXL's second text encoder (with its projection) */
    int have_clip2;
    dl_unet *unet;
    dl_vae *vae;
    dl_clip clip_own;
    dl_unet unet_own;
    dl_vae vae_own;
    int have_clip, have_unet, have_vae;
    int view;                 /* 1: networks borrowed (dl_sd_view): nothing merged, nothing freed */
    dl_arena weights;
    dl_arena scratch;   /* grown on demand (re-created when a call needs more) */
    int n_lora;
    dl_lora_net *loras; /* [n_lora] merged, in merge order */
    dl_be_stage io;     /* the calls below take and return host arrays, staged through it */
};

/* Make sure the scratch arena has at least bytes of room. */
static int ensure_scratch(dl_sd *sd, size_t bytes)
{
    if (sd->scratch.base && sd->scratch.cap >= bytes) return DL_OK;
    dl_arena_free(&sd->scratch);
    return dl_arena_init_on(&sd->scratch, "scratch", bytes, sd->ctx);
}

int dl_sd_open(dl_sd **out, const char *path, const char *tokenizer, const dl_ctx *ctx, int merge_loras)
{
    *out = NULL;
    dl_sd *sd = calloc(1, sizeof *sd);
    if (!sd) return dl_error_set("out of memory");
    sd->ctx = ctx;
    sd->io.ctx = ctx;
    const dl_ckpt_options copt = {.prediction = -1, .allow_sdxl = 1};
    if (dl_ckpt_open(&sd->ck, path, &copt) != DL_OK) {
        free(sd);
        return DL_ERR;
    }
    dl_ckpt_set_pool(&sd->ck, ctx ? ctx->pool : NULL); /* convert the weights on every core */
    if (!merge_loras) { /* fp16 stays fp16 where computed from; in the file's mapping in host memory */
        sd->ck.weight_dtypes = dl_be(ctx)->weight_dtypes;
        sd->ck.weights_in_place = !dl_be(ctx)->device_memory;
    }
    sd->ck_open = 1;
    sd->cfg = sd->ck.cfg;
    sd->sd2 = sd->ck.sd2;
    sd->clip = &sd->clip_own;
    sd->unet = &sd->unet_own;
    sd->vae = &sd->vae_own;
    const char *tp = tokenizer ? tokenizer : sd->ck.tokenizer_dir;
    if (!tp) {
        dl_error_set("%s: the model has no tokenizer/ folder; give one with --tokenizer "
                     "(a tokenizer folder or CLIP's bpe_simple_vocab_16e6.txt.gz)", path);
        dl_sd_close(sd);
        return DL_ERR;
    }
    if (dl_tokenizer_load(&sd->tok, tp) != DL_OK) {
        dl_sd_close(sd);
        return DL_ERR;
    }
    sd->tokv = sd->tok;
    const dl_model_config *c = &sd->ck.cfg;
    /* messages are set before dl_sd_close: tp and c may point into sd */
    if (dl_tokenizer_vocab_size(sd->tok) > c->text.vocab_size) {
        dl_error_set("%s: the tokenizer has %d tokens but the text encoder only %d", tp,
                     dl_tokenizer_vocab_size(sd->tok), c->text.vocab_size);
        dl_sd_close(sd);
        return DL_ERR;
    }
    sd->xl = sd->ck.sdxl;
    if (sd->xl) { /* SDXL: tokenizer_2 (the folder's, else the same vocabulary), padding with "!" */
        const char *tp2 = !tokenizer && sd->ck.tokenizer2_dir ? sd->ck.tokenizer2_dir : tp;
        const dl_unet_config *u = &c->unet;
        if (!c->text2.num_layers) {
            dl_error_set("%s: an SDXL model without its second text encoder (text_encoder_2/ or "
                         "conditioner.embedders.1.model.*) cannot sample", path);
            dl_sd_close(sd);
            return DL_ERR;
        }
        if (c->text.hidden_size + c->text2.hidden_size != u->cross_attention_dim ||
            c->text2.projection_dim != dl_unet_text_embeds_dim(u) || u->addition_time_ids != 6) {
            dl_error_set("%s: the text encoders (widths %d + %d, pooled %d) do not fit the UNet (cross "
                         "attention %d, pooled %d, %d time ids; SDXL base takes 6, the refiner is not "
                         "supported)", path, c->text.hidden_size, c->text2.hidden_size, c->text2.projection_dim,
                         u->cross_attention_dim, dl_unet_text_embeds_dim(u), u->addition_time_ids);
            dl_sd_close(sd);
            return DL_ERR;
        }
        if (dl_tokenizer_load(&sd->tok2, tp2) != DL_OK || dl_tokenizer_set_pad(sd->tok2, "!") != DL_OK) {
            dl_sd_close(sd);
            return DL_ERR;
        }
        if (dl_tokenizer_vocab_size(sd->tok2) > c->text2.vocab_size) {
            dl_error_set("%s: the tokenizer has %d tokens but the second text encoder only %d", tp2,
                         dl_tokenizer_vocab_size(sd->tok2), c->text2.vocab_size);
            dl_sd_close(sd);
            return DL_ERR;
        }
    }
    size_t wc, wc2 = 0, wu, wv; /* measured by running each loader against a measuring arena */
    if (dl_clip_weights_bytes(&sd->ck, &wc) != DL_OK || dl_unet_weights_bytes(&sd->ck, &wu) != DL_OK ||
        dl_vae_weights_bytes(&sd->ck, &wv) != DL_OK ||
        (sd->xl && dl_clip_weights_bytes_as(&sd->ck, DL_PART_TEXT2, &wc2) != DL_OK))
        goto fail;
    wc += wc2;
    if (dl_arena_init_on(&sd->weights, "weights", wc + wu + wv, ctx) != DL_OK) goto fail;
    if (dl_clip_load(sd->clip, &sd->ck, &sd->weights) != DL_OK) goto fail;
    sd->have_clip = 1;
    if (sd->xl) {
        if (dl_clip_load_as(&sd->clip2, &sd->ck, DL_PART_TEXT2, &sd->weights) != DL_OK) goto fail;
        sd->have_clip2 = 1;
    }
    if (dl_unet_load(sd->unet, &sd->ck, &sd->weights) != DL_OK) goto fail;
    sd->have_unet = 1;
    if (dl_vae_load(sd->vae, &sd->ck, &sd->weights) != DL_OK) goto fail;
    sd->have_vae = 1;
    if (dl_be_sync(ctx) != DL_OK) goto fail;
    DL_ASSERTF(sd->weights.used == wc + wu + wv, "weights took %zu bytes, measured %zu", sd->weights.used,
               wc + wu + wv);
    *out = sd;
    return DL_OK;
fail:
    dl_error_prefix("%s: ", path);
    dl_sd_close(sd);
    return DL_ERR;
}

int dl_sd_view(dl_sd **out, const dl_model_config *cfg, int sd2, const dl_tokenizer *tok, dl_clip *clip,
               dl_unet *unet, dl_vae *vae, const dl_ctx *ctx)
{
    *out = NULL;
    dl_sd *sd = calloc(1, sizeof *sd);
    if (!sd) return dl_error_set("out of memory");
    sd->ctx = ctx;
    sd->io.ctx = ctx;
    sd->cfg = *cfg;
    sd->sd2 = sd2;
    sd->tokv = tok;
    sd->clip = clip;
    sd->unet = unet;
    sd->vae = vae;
    sd->view = 1;
    *out = sd;
    return DL_OK;
}

void dl_sd_close(dl_sd *sd)
{
    if (!sd) return;
    dl_sd_lora_clear(sd);
    if (sd->have_clip) dl_clip_free(sd->clip);
    if (sd->have_clip2) dl_clip_free(&sd->clip2);
    if (sd->tok2) dl_tokenizer_free(sd->tok2);
    if (sd->have_unet) dl_unet_free(sd->unet);
    if (sd->have_vae) dl_vae_free(sd->vae);
    if (sd->tok) dl_tokenizer_free(sd->tok);
    if (sd->ck_open) dl_ckpt_close(&sd->ck);
    dl_arena_free(&sd->weights);
    dl_arena_free(&sd->scratch);
    dl_be_stage_free(&sd->io);
    free(sd);
}

const struct dl_tokenizer *dl_sd_tokenizer(const dl_sd *sd) { return sd->tokv; }
int dl_sd_hidden(const dl_sd *sd) { return sd->cfg.text.hidden_size + (sd->xl ? sd->cfg.text2.hidden_size : 0); }
int dl_sd_is_xl(const dl_sd *sd) { return sd->xl; }
const struct dl_tokenizer *dl_sd_tokenizer2(const dl_sd *sd) { return sd->xl ? sd->tok2 : NULL; }
int dl_sd_hidden2(const dl_sd *sd) { return sd->xl ? sd->cfg.text2.hidden_size : 0; }
int dl_sd_pooled_dim(const dl_sd *sd) { return sd->xl ? sd->cfg.text2.projection_dim : 0; }
int dl_sd_text_layers(const dl_sd *sd) { return sd->cfg.text.num_layers; }
int dl_sd_latent_channels(const dl_sd *sd) { return sd->cfg.vae.latent_channels; }
int dl_sd_vae_factor(const dl_sd *sd) { return 1 << (sd->cfg.vae.n_blocks - 1); }
int dl_sd_unet_multiple(const dl_sd *sd) { return 1 << (sd->cfg.unet.n_blocks - 1); }
float dl_sd_scaling_factor(const dl_sd *sd) { return sd->cfg.vae.scaling_factor; }
int dl_sd_v_prediction(const dl_sd *sd) { return sd->cfg.unet.prediction == DL_PRED_V; }
int dl_sd_is_sd2(const dl_sd *sd) { return sd->sd2; }
int dl_sd_lora_count(const dl_sd *sd) { return sd->n_lora; }

/* The networks a LoRA merges into (SDXL: both text encoders). */
static dl_lora_models lora_models(dl_sd *sd)
{
    return (dl_lora_models){sd->unet, sd->clip, sd->have_clip2 ? &sd->clip2 : NULL};
}

int dl_sd_lora_add(dl_sd *sd, const char *path, float te_w, float unet_w, int verbose)
{
    if (sd->view) return dl_error_set("%s: LoRA files are not merged into borrowed networks", path);
    dl_lora_net *v = realloc(sd->loras, sizeof *v * (size_t)(sd->n_lora + 1));
    if (!v) return dl_error_set("out of memory loading %s", path);
    sd->loras = v;
    dl_lora_net *net = &sd->loras[sd->n_lora];
    dl_lora_report rep;
    DL_TRY(dl_lora_load(path, &sd->cfg, 1.0f, net, &rep));
    if (verbose) dl_lora_report_print(&rep, path);
    for (int i = 0; i < net->n; i++) {
        dl_lora_module *m = &net->mods[i];
        float mult = m->part == DL_LORA_UNET ? unet_w : te_w;
        m->lora.scale = m->alpha / (float)m->lora.r * mult;
    }
    if (dl_lora_net_to_backend(sd->ctx, net) != DL_OK) {
        dl_lora_net_free(net);
        return dl_error_prefix("%s: ", path);
    }
    const dl_lora_models md = lora_models(sd);
    if (dl_lora_net_merge_into(sd->ctx, net, &md) != DL_OK) {
        dl_lora_net_free(net);
        return dl_error_prefix("%s: ", path);
    }
    sd->n_lora++;
    return DL_OK;
}

void dl_sd_lora_clear(dl_sd *sd)
{
    for (int k = sd->n_lora - 1; k >= 0; k--) {
        dl_lora_net *net = &sd->loras[k];
        const dl_lora_models md = lora_models(sd);
        dl_lora_net_unmerge_from(sd->ctx, net, &md);
        dl_lora_net_free(net);
    }
    free(sd->loras);
    sd->loras = NULL;
    sd->n_lora = 0;
}

int dl_sd_encode_text(dl_sd *sd, int N, const int32_t *ids, int clip_skip, float *out)
{
    const dl_clip_config *c = &sd->cfg.text;
    if (sd->xl) return dl_error_set("dl_sd_encode_text: an SDXL model encodes with dl_sd_encode_text_xl");
    if (clip_skip < 1 || clip_skip > c->num_layers)
        return dl_error_set("clip skip %d is outside 1..%d (the text encoder's layers)", clip_skip, c->num_layers);
    DL_TRY(ensure_scratch(sd, dl_clip_scratch_bytes(sd->clip, N, DL_TOK_CONTEXT)));
    const size_t no = (size_t)N * DL_TOK_CONTEXT * c->hidden_size * sizeof(float);
    const int32_t *di = dl_be_stage_in(&sd->io, 0, ids, (size_t)N * DL_TOK_CONTEXT * sizeof(int32_t));
    float *dout = dl_be_stage_out(&sd->io, 1, out, no);
    if (!di || !dout) return DL_ERR;
    dl_clip_forward(sd->ctx, sd->clip, N, DL_TOK_CONTEXT, di, c->num_layers - clip_skip + 1, 1, dout, &sd->scratch);
    return dl_be_stage_fetch(&sd->io);
}

/* One text encoder's hidden state before the final layer norm, clip skip k: layers L - k. */
static int encode_raw(dl_sd *sd, const dl_clip *m, int N, const int32_t *di, int clip_skip, float *out, int slot)
{
    const dl_clip_config *c = &m->cfg;
    const size_t no = (size_t)N * DL_TOK_CONTEXT * c->hidden_size * sizeof(float);
    float *dout = dl_be_stage_out(&sd->io, slot, out, no);
    if (!dout) return DL_ERR;
    dl_clip_forward(sd->ctx, m, N, DL_TOK_CONTEXT, di, c->num_layers - clip_skip, 0, dout, &sd->scratch);
    return DL_OK;
}

int dl_sd_encode_text_xl(dl_sd *sd, int N, const int32_t *ids1, const int32_t *ids2, int clip_skip, float *out1,
                         float *out2, float *pooled)
{
    if (!sd->xl) return dl_error_set("dl_sd_encode_text_xl: not an SDXL model");
    const dl_clip_config *c1 = &sd->cfg.text, *c2 = &sd->cfg.text2;
    const int lmin = c1->num_layers < c2->num_layers ? c1->num_layers : c2->num_layers;
    if (clip_skip < 1 || clip_skip >= lmin)
        return dl_error_set("clip skip %d is outside 1..%d (SDXL reads its text encoders' penultimate layer at clip "
                            "skip 1)", clip_skip, lmin - 1);
    size_t s1 = dl_clip_scratch_bytes(sd->clip, N, DL_TOK_CONTEXT), s2 = dl_clip_scratch_bytes(&sd->clip2, N, DL_TOK_CONTEXT);
    const size_t nl = (size_t)N * DL_TOK_CONTEXT * c2->hidden_size * sizeof(float);
    DL_TRY(ensure_scratch(sd, (s1 > s2 ? s1 : s2) + nl + 64));
    const int32_t *d1 = dl_be_stage_in(&sd->io, 0, ids1, (size_t)N * DL_TOK_CONTEXT * sizeof(int32_t));
    const int32_t *d2 = dl_be_stage_in(&sd->io, 1, ids2, (size_t)N * DL_TOK_CONTEXT * sizeof(int32_t));
    if (!d1 || !d2) return DL_ERR;
    DL_TRY(encode_raw(sd, sd->clip, N, d1, clip_skip, out1, 2));
    DL_TRY(encode_raw(sd, &sd->clip2, N, d2, clip_skip, out2, 3));
    /* pooled: text_projection of the last hidden state (every layer, final layer norm) at EOS */
    int *pos = malloc(sizeof *pos * (size_t)N);
    if (!pos) return dl_error_set("out of memory encoding a prompt");
    dl_clip_eos_positions(c2, N, DL_TOK_CONTEXT, ids2, pos);
    const size_t mark = dl_arena_mark(&sd->scratch);
    float *last = dl_alloc_f32(&sd->scratch, (int64_t)N * DL_TOK_CONTEXT * c2->hidden_size);
    float *dp = dl_be_stage_out(&sd->io, 4, pooled, (size_t)N * c2->projection_dim * sizeof(float));
    int rc = DL_ERR;
    if (dp) {
        dl_clip_forward(sd->ctx, &sd->clip2, N, DL_TOK_CONTEXT, d2, c2->num_layers, 1, last, &sd->scratch);
        dl_clip_pooled(sd->ctx, &sd->clip2, N, DL_TOK_CONTEXT, pos, last, dp, &sd->scratch);
        rc = DL_OK;
    }
    dl_arena_release(&sd->scratch, mark);
    free(pos);
    if (dl_be_stage_fetch(&sd->io) != DL_OK) rc = DL_ERR;
    return rc;
}

int dl_sd_unet(dl_sd *sd, int N, int h, int w, const float *x, const float *t, const float *context, int T,
               float *out)
{
    return dl_sd_unet_added(sd, N, h, w, x, t, context, T, NULL, NULL, out);
}

int dl_sd_unet_added(dl_sd *sd, int N, int h, int w, const float *x, const float *t, const float *context, int T,
                     const float *text_embeds, const float *time_ids, float *out)
{
    if (sd->cfg.unet.addition_embed != DL_ADD_NONE && (!text_embeds || !time_ids))
        return dl_error_set("the SDXL UNet needs text_embeds and time_ids");
    DL_TRY(ensure_scratch(sd, dl_unet_scratch_bytes(sd->unet, N, h, w, T)));
    const size_t nx = (size_t)N * h * w * sd->cfg.unet.in_channels * sizeof(float);
    const size_t no = (size_t)N * h * w * sd->cfg.unet.out_channels * sizeof(float);
    const float *dx = dl_be_stage_in(&sd->io, 0, x, nx), *dt = dl_be_stage_in(&sd->io, 1, t, (size_t)N * sizeof(float));
    const float *dc =
        dl_be_stage_in(&sd->io, 2, context, (size_t)N * T * sd->cfg.unet.cross_attention_dim * sizeof(float));
    float *dout = dl_be_stage_out(&sd->io, 3, out, no);
    if (!dx || !dt || !dc || !dout) return DL_ERR;
    if (sd->cfg.unet.addition_embed != DL_ADD_NONE) {
        const int K = sd->cfg.unet.addition_time_ids, P = dl_unet_text_embeds_dim(&sd->cfg.unet);
        dl_unet_added add = {dl_be_stage_in(&sd->io, 4, text_embeds, (size_t)N * P * sizeof(float)),
                             dl_be_stage_in(&sd->io, 5, time_ids, (size_t)N * K * sizeof(float))};
        if (!add.text_embeds || !add.time_ids) return DL_ERR;
        dl_unet_forward_added(sd->ctx, sd->unet, N, h, w, dx, dt, dc, T, &add, dout, &sd->scratch);
    } else {
        dl_unet_forward(sd->ctx, sd->unet, N, h, w, dx, dt, dc, T, dout, &sd->scratch);
    }
    return dl_be_stage_fetch(&sd->io);
}

int dl_sd_vae_encode(dl_sd *sd, int N, int H, int W, const float *img, float *mean, float *logvar)
{
    DL_TRY(ensure_scratch(sd, dl_vae_scratch_bytes(&sd->cfg.vae, N, H, W)));
    const float *di = dl_be_stage_in(&sd->io, 0, img, (size_t)N * H * W * sd->cfg.vae.in_channels * sizeof(float));
    if (!di) return DL_ERR;
    dl_vae_encode(sd->ctx, sd->vae, N, H, W, di, mean, logvar, &sd->scratch); /* mean, logvar: host */
    return dl_be_stage_fetch(&sd->io);
}

int dl_sd_vae_decode(dl_sd *sd, int N, int h, int w, const float *z, float *img)
{
    int f = dl_sd_vae_factor(sd);
    DL_TRY(ensure_scratch(sd, dl_vae_scratch_bytes(&sd->cfg.vae, N, h * f, w * f)));
    const size_t no = (size_t)N * h * f * w * f * sd->cfg.vae.out_channels * sizeof(float);
    const float *dz = dl_be_stage_in(&sd->io, 0, z, (size_t)N * h * w * sd->cfg.vae.latent_channels * sizeof(float));
    float *dout = dl_be_stage_out(&sd->io, 1, img, no);
    if (!dz || !dout) return DL_ERR;
    dl_vae_decode(sd->ctx, sd->vae, N, h, w, dz, dout, &sd->scratch);
    return dl_be_stage_fetch(&sd->io);
}
