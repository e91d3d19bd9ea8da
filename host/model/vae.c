/* vae.c - AutoencoderKL encoder and decoder on the CPU backend, loaded by diffusers names. */
#include "model/vae.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_LEN 96
#define MAX_NAMES 1024
#define VAE_EPS 1e-6f

typedef struct { dl_vae *m; int used; } name_pool;

static const char *pool_name(name_pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *pool_name(name_pool *p, const char *fmt, ...)
{
    DL_ASSERT(p->used < MAX_NAMES);
    char *s = p->m->names + (size_t)p->used++ * NAME_LEN;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, NAME_LEN, fmt, ap);
    va_end(ap);
    return s;
}

static int load_resnet(dl_unet_resnet *r, const dl_loader *ld, name_pool *np, const char *pre, int cin, int cout, int G)
{
    memset(r, 0, sizeof *r);
    r->cin = cin;
    r->cout = cout;
    DL_TRY(dl_norm_load(&r->norm1, ld, pool_name(np, "%s.norm1", pre), cin, G, VAE_EPS));
    DL_TRY(dl_conv_load(&r->conv1, ld, pool_name(np, "%s.conv1", pre), cin, cout, 3, 1, 1));
    DL_TRY(dl_norm_load(&r->norm2, ld, pool_name(np, "%s.norm2", pre), cout, G, VAE_EPS));
    DL_TRY(dl_conv_load(&r->conv2, ld, pool_name(np, "%s.conv2", pre), cout, cout, 3, 1, 1));
    if (cin != cout) {
        r->has_shortcut = 1;
        DL_TRY(dl_conv_load(&r->conv_shortcut, ld, pool_name(np, "%s.conv_shortcut", pre), cin, cout, 1, 1, 0));
    }
    return DL_OK;
}

static int load_attn(dl_vae_attn *a, const dl_loader *ld, name_pool *np, const char *pre, int C, int G)
{
    DL_TRY(dl_norm_load(&a->norm, ld, pool_name(np, "%s.group_norm", pre), C, G, VAE_EPS));
    DL_TRY(dl_linear_load(&a->q, ld, pool_name(np, "%s.to_q", pre), C, C, 1));
    DL_TRY(dl_linear_load(&a->k, ld, pool_name(np, "%s.to_k", pre), C, C, 1));
    DL_TRY(dl_linear_load(&a->v, ld, pool_name(np, "%s.to_v", pre), C, C, 1));
    DL_TRY(dl_linear_load(&a->out, ld, pool_name(np, "%s.to_out.0", pre), C, C, 1));
    return DL_OK;
}

static int load_mid(dl_vae_coder *c, const dl_loader *ld, name_pool *np, const char *pre, const dl_vae_config *cfg)
{
    int C = cfg->block_out_channels[cfg->n_blocks - 1], G = cfg->norm_num_groups;
    char p[64];
    snprintf(p, sizeof p, "%s.mid_block.resnets.0", pre);
    DL_TRY(load_resnet(&c->mid_res0, ld, np, p, C, C, G));
    if (cfg->mid_attention) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0", pre);
        DL_TRY(load_attn(&c->mid_attn, ld, np, p, C, G));
    }
    snprintf(p, sizeof p, "%s.mid_block.resnets.1", pre);
    DL_TRY(load_resnet(&c->mid_res1, ld, np, p, C, C, G));
    return DL_OK;
}

static int load_encoder(dl_vae *m, const dl_loader *ld, name_pool *np)
{
    const dl_vae_config *c = &m->cfg;
    dl_vae_coder *e = &m->enc;
    int G = c->norm_num_groups, nb = c->n_blocks;
    DL_TRY(dl_conv_load(&e->conv_in, ld, "encoder.conv_in", c->in_channels, c->block_out_channels[0], 3, 1, 1));
    int ch = c->block_out_channels[0];
    for (int i = 0; i < nb; i++) {
        dl_vae_block *b = &e->blocks[i];
        b->cin = ch;
        b->cout = c->block_out_channels[i];
        b->n_res = c->layers_per_block;
        for (int j = 0; j < b->n_res; j++) {
            char p[64];
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", i, j);
            DL_TRY(load_resnet(&b->res[j], ld, np, p, j ? b->cout : b->cin, b->cout, G));
        }
        if ((b->has_sample = i < nb - 1)) {
            DL_TRY(dl_conv_load(&b->sample, ld, pool_name(np, "encoder.down_blocks.%d.downsamplers.0.conv", i), b->cout,
                                b->cout, 3, 2, 0));
            b->sample.pad_bottom = b->sample.pad_right = 1; /* diffusers pads (0, 1, 0, 1) before a k3 s2 conv */
        }
        ch = b->cout;
    }
    DL_TRY(load_mid(e, ld, np, "encoder", c));
    DL_TRY(dl_norm_load(&e->norm_out, ld, "encoder.conv_norm_out", ch, G, VAE_EPS));
    DL_TRY(dl_conv_load(&e->conv_out, ld, "encoder.conv_out", ch, 2 * c->latent_channels, 3, 1, 1));
    return DL_OK;
}

static int load_decoder(dl_vae *m, const dl_loader *ld, name_pool *np)
{
    const dl_vae_config *c = &m->cfg;
    dl_vae_coder *d = &m->dec;
    int G = c->norm_num_groups, nb = c->n_blocks, ch = c->block_out_channels[nb - 1];
    DL_TRY(dl_conv_load(&d->conv_in, ld, "decoder.conv_in", c->latent_channels, ch, 3, 1, 1));
    DL_TRY(load_mid(d, ld, np, "decoder", c));
    for (int i = 0; i < nb; i++) {
        dl_vae_block *b = &d->blocks[i];
        b->cin = ch;
        b->cout = c->block_out_channels[nb - 1 - i];
        b->n_res = c->layers_per_block + 1;
        for (int j = 0; j < b->n_res; j++) {
            char p[64];
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            DL_TRY(load_resnet(&b->res[j], ld, np, p, j ? b->cout : b->cin, b->cout, G));
        }
        if ((b->has_sample = i < nb - 1))
            DL_TRY(dl_conv_load(&b->sample, ld, pool_name(np, "decoder.up_blocks.%d.upsamplers.0.conv", i), b->cout,
                                b->cout, 3, 1, 1));
        ch = b->cout;
    }
    DL_TRY(dl_norm_load(&d->norm_out, ld, "decoder.conv_norm_out", ch, G, VAE_EPS));
    DL_TRY(dl_conv_load(&d->conv_out, ld, "decoder.conv_out", ch, c->out_channels, 3, 1, 1));
    return DL_OK;
}

int dl_vae_weights_bytes(dl_checkpoint *ck, size_t *bytes)
{
    dl_arena a;
    dl_arena_init_measure(&a, "VAE weights (measuring)");
    dl_vae m;
    if (dl_vae_load(&m, ck, &a) != DL_OK) return DL_ERR;
    dl_vae_free(&m);
    *bytes = a.used;
    return DL_OK;
}

static int load_all(dl_vae *m, dl_checkpoint *ck, dl_arena *weights)
{
    DL_TRY(dl_vae_config_validate(&m->cfg, ck->path));
    if (m->cfg.layers_per_block > DL_UNET_MAX_LAYERS)
        return dl_error_set("%s: VAE layers_per_block %d is not supported (at most %d)", ck->path,
                            m->cfg.layers_per_block, DL_UNET_MAX_LAYERS);
    m->names = calloc(MAX_NAMES, NAME_LEN);
    if (!m->names) return dl_error_set("out of memory loading the VAE");
    name_pool np = {m, 0};
    dl_loader ld = {ck, DL_PART_VAE, weights};
    int L = m->cfg.latent_channels;
    DL_TRY(load_encoder(m, &ld, &np));
    DL_TRY(load_decoder(m, &ld, &np));
    if (m->cfg.use_quant_conv) DL_TRY(dl_linear_load_any(&m->quant_conv, &ld, "quant_conv", 2 * L, 2 * L, 1));
    if (m->cfg.use_post_quant_conv) DL_TRY(dl_linear_load_any(&m->post_quant_conv, &ld, "post_quant_conv", L, L, 1));
    return DL_OK;
}

int dl_vae_load(dl_vae *m, dl_checkpoint *ck, dl_arena *weights)
{
    memset(m, 0, sizeof *m);
    m->cfg = ck->cfg.vae;
    if (load_all(m, ck, weights) == DL_OK) return DL_OK;
    dl_vae_free(m);
    return DL_ERR;
}

void dl_vae_free(dl_vae *m)
{
    free(m->names);
    m->names = NULL;
}

/* Largest activation (floats) of any level for N images of H x W pixels: channels x pixels,
 * counting the upsampled tensors of the decoder and the encoder's padded inputs. */
static size_t max_activation(const dl_vae_config *c, int N, int H, int W)
{
    size_t best = (size_t)N * H * W * (size_t)(c->in_channels > c->out_channels ? c->in_channels : c->out_channels);
    for (int i = 0; i < c->n_blocks; i++) {
        size_t px = (size_t)N * (size_t)(H >> i) * (size_t)(W >> i);
        size_t wide = (size_t)c->block_out_channels[i];
        if (i + 1 < c->n_blocks && (size_t)c->block_out_channels[i + 1] > wide) wide = (size_t)c->block_out_channels[i + 1];
        if (px * wide > best) best = px * wide;
    }
    return best;
}

size_t dl_vae_scratch_bytes(const dl_vae_config *c, int N, int H, int W)
{
    size_t a = max_activation(c, N, H, W);
    int f = 1 << (c->n_blocks - 1);
    size_t tokens = (size_t)N * (size_t)(H / f) * (size_t)(W / f), C = (size_t)c->block_out_channels[c->n_blocks - 1];
    /* two ping-pong buffers + a resnet's temporaries (3) + an upsample intermediate + attention */
    return (7 * a + 6 * tokens * C + tokens * 4) * sizeof(float) + 64 * 64;
}

/* x [N, S, C] += attention(group_norm(x)) with one head of width C. */
static void mid_attention(const dl_ctx *ctx, const dl_vae_attn *a, int N, int S, int C, float *x, dl_arena *scratch)
{
    size_t mark = dl_arena_mark(scratch);
    int64_t M = (int64_t)N * S;
    float *h = dl_alloc_f32(scratch, M * C);   // [N, S, C]
    float *q = dl_alloc_f32(scratch, M * C);   // [N, S, C]
    float *k = dl_alloc_f32(scratch, M * C);   // [N, S, C]
    float *v = dl_alloc_f32(scratch, M * C);   // [N, S, C]
    float *lse = dl_alloc_f32(scratch, M);     // [N, 1, S]
    dl_groupnorm_fwd(ctx, &a->norm, N, S, x, h, 0, scratch);
    dl_linear_fwd(ctx, &a->q, M, h, q, scratch);
    dl_linear_fwd(ctx, &a->k, M, h, k, scratch);
    dl_linear_fwd(ctx, &a->v, M, h, v, scratch);
    dl_attention_shape as = {.N = N, .Tq = S, .Tk = S, .H = 1, .d = C, .scale = 1.0f / sqrtf((float)C), .causal = 0};
    dl_be(ctx)->attention_forward(ctx, as, q, k, v, h, lse); // [N, S, C]
    dl_linear_fwd(ctx, &a->out, M, h, q, scratch);      // [N, S, C]
    dl_be(ctx)->add_forward(ctx, M * C, x, q, x);       // residual
    dl_arena_release(scratch, mark);
}

/* mid block in place on *x [N, h, w, C] using the spare buffer *y; swaps as it goes. */
static void mid_block(const dl_ctx *ctx, const dl_vae_coder *c, const dl_vae_config *cfg, int N, int h, int w,
                      float **x, float **y, dl_arena *scratch)
{
    int C = cfg->block_out_channels[cfg->n_blocks - 1];
    float *t;
    dl_unet_resnet_fwd(ctx, &c->mid_res0, N, h, w, *x, NULL, *y, scratch);
    t = *x; *x = *y; *y = t;
    if (cfg->mid_attention) mid_attention(ctx, &c->mid_attn, N, h * w, C, *x, scratch);
    dl_unet_resnet_fwd(ctx, &c->mid_res1, N, h, w, *x, NULL, *y, scratch);
    t = *x; *x = *y; *y = t;
}

void dl_vae_encode(const dl_ctx *ctx, const dl_vae *m, int N, int H, int W, const float *img, float *mean,
                   float *logvar, dl_arena *scratch)
{
    const dl_vae_config *c = &m->cfg;
    const dl_vae_coder *e = &m->enc;
    int f = 1 << (c->n_blocks - 1), L = c->latent_channels;
    DL_ASSERTF(H % f == 0 && W % f == 0, "image %dx%d is not a multiple of %d", H, W, f);
    size_t mark = dl_arena_mark(scratch);
    size_t cap = max_activation(c, N, H, W);
    float *x = dl_alloc_f32(scratch, (int64_t)cap), *y = dl_alloc_f32(scratch, (int64_t)cap), *t;
    int h = H, w = W;
    dl_conv_fwd(ctx, &e->conv_in, N, h, w, img, x, NULL, NULL, scratch);      // [N, H, W, c0]
    for (int i = 0; i < c->n_blocks; i++) {
        const dl_vae_block *b = &e->blocks[i];
        for (int j = 0; j < b->n_res; j++) {
            dl_unet_resnet_fwd(ctx, &b->res[j], N, h, w, x, NULL, y, scratch); // [N, h, w, cout]
            t = x; x = y; y = t;
        }
        if (b->has_sample) {
            dl_conv_fwd(ctx, &b->sample, N, h, w, x, y, &h, &w, scratch);     // [N, h/2, w/2, cout]
            t = x; x = y; y = t;
        }
    }
    mid_block(ctx, e, c, N, h, w, &x, &y, scratch);                            // [N, h, w, C]
    int C = c->block_out_channels[c->n_blocks - 1];
    int64_t M = (int64_t)N * h * w;
    dl_groupnorm_fwd(ctx, &e->norm_out, N, (int64_t)h * w, x, y, 1, scratch);  // GN + SiLU
    dl_conv_fwd(ctx, &e->conv_out, N, h, w, y, x, NULL, NULL, scratch);         // [N, h, w, 2L]
    (void)C;
    const float *moments = x;
    if (c->use_quant_conv) {
        dl_linear_fwd(ctx, &m->quant_conv, M, x, y, scratch);                   // [N, h, w, 2L]
        moments = y;
    }
    for (int64_t i = 0; i < M; i++) {
        const float *mo = moments + i * 2 * L;
        for (int l = 0; l < L; l++) {
            if (mean) mean[i * L + l] = mo[l];
            if (logvar) logvar[i * L + l] = fminf(fmaxf(mo[L + l], -30.0f), 20.0f);
        }
    }
    dl_arena_release(scratch, mark);
}

void dl_vae_sample(int64_t n, const float *mean, const float *logvar, const float *noise, float *latent)
{
    for (int64_t i = 0; i < n; i++) latent[i] = mean[i] + expf(0.5f * logvar[i]) * noise[i];
}

void dl_vae_decode(const dl_ctx *ctx, const dl_vae *m, int N, int h, int w, const float *z, float *img,
                   dl_arena *scratch)
{
    const dl_vae_config *c = &m->cfg;
    const dl_vae_coder *d = &m->dec;
    int f = 1 << (c->n_blocks - 1), L = c->latent_channels;
    size_t mark = dl_arena_mark(scratch);
    size_t cap = max_activation(c, N, h * f, w * f);
    float *x = dl_alloc_f32(scratch, (int64_t)cap), *y = dl_alloc_f32(scratch, (int64_t)cap), *t;
    int64_t M = (int64_t)N * h * w;
    const float *zin = z;
    if (c->use_post_quant_conv) {
        dl_linear_fwd(ctx, &m->post_quant_conv, M, z, y, scratch);              // [N, h, w, L]
        zin = y;
    }
    (void)L;
    dl_conv_fwd(ctx, &d->conv_in, N, h, w, zin, x, NULL, NULL, scratch);        // [N, h, w, C]
    mid_block(ctx, d, c, N, h, w, &x, &y, scratch);
    for (int i = 0; i < c->n_blocks; i++) {
        const dl_vae_block *b = &d->blocks[i];
        for (int j = 0; j < b->n_res; j++) {
            dl_unet_resnet_fwd(ctx, &b->res[j], N, h, w, x, NULL, y, scratch); // [N, h, w, cout]
            t = x; x = y; y = t;
        }
        if (b->has_sample) {
            dl_unet_upsample_fwd(ctx, &b->sample, N, h, w, x, y, scratch);      // [N, 2h, 2w, cout]
            t = x; x = y; y = t;
            h *= 2;
            w *= 2;
        }
    }
    dl_groupnorm_fwd(ctx, &d->norm_out, N, (int64_t)h * w, x, y, 1, scratch);   // GN + SiLU
    dl_conv_fwd(ctx, &d->conv_out, N, h, w, y, img, NULL, NULL, scratch);       // [N, H, W, 3]
    dl_arena_release(scratch, mark);
}
