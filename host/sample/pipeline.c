/* pipeline.c - txt2img / img2img: embeddings, seeded noise, CFG sampling loop, VAE decode. */
#include "sample/pipeline.h"

#include "core/error.h"
#include "core/philox.h"
#include "core/rng.h"
#include "model/tokenizer.h"
#include "sample/prompt.h"
#include "sample/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dl_gen_params_default(dl_gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->negative = "";
    p->width = p->height = 512;
    p->steps = 20;
    p->cfg_scale = 7.0f;
    p->clip_skip = 1;
    p->emphasis = 1;
    p->max_chunks = 8;
    p->sampler = DL_SAMPLER_EULER_A;
    dl_sampler_opts_default(&p->sopts);
}

int dl_pipeline_encode_prompt_xl(dl_sd *sd, const char *text, int clip_skip, int emphasis, int max_chunks,
                                 float **emb, int *T, float *pooled)
{
    *emb = NULL;
    *T = 0;
    if (!dl_sd_is_xl(sd)) return dl_error_set("dl_pipeline_encode_prompt_xl: not an SDXL model");
    dl_prompt_chunks c1, c2;
    DL_TRY(dl_prompt_chunks_build(dl_sd_tokenizer(sd), text ? text : "", emphasis, max_chunks, &c1));
    if (dl_prompt_chunks_build(dl_sd_tokenizer2(sd), text ? text : "", emphasis, max_chunks, &c2) != DL_OK) {
        dl_prompt_chunks_free(&c1);
        return DL_ERR;
    }
    const int n = c1.n, C = dl_sd_hidden(sd), C2 = dl_sd_hidden2(sd), C1 = C - C2, P = dl_sd_pooled_dim(sd);
    const size_t rows = (size_t)n * DL_TOK_CONTEXT;
    float *z1 = malloc(sizeof(float) * rows * C1), *z2 = malloc(sizeof(float) * rows * C2);
    float *pl = malloc(sizeof(float) * (size_t)n * P), *z = malloc(sizeof(float) * rows * C);
    int rc = DL_ERR;
    if (c2.n != n) {
        dl_error_set("the two tokenizers cut the prompt into %d and %d chunks", n, c2.n);
        goto done;
    }
    if (!z1 || !z2 || !pl || !z) {
        dl_error_set("out of memory encoding a prompt");
        goto done;
    }
    /* all chunks in one batch: the encoders treat each sequence independently */
    if (dl_sd_encode_text_xl(sd, n, c1.ids, c2.ids, clip_skip, z1, z2, pl) != DL_OK) goto done;
    for (int k = 0; k < n; k++) {
        dl_prompt_apply_emphasis(z1 + (size_t)k * DL_TOK_CONTEXT * C1, c1.mult + (size_t)k * DL_TOK_CONTEXT,
                                 DL_TOK_CONTEXT, C1);
        dl_prompt_apply_emphasis(z2 + (size_t)k * DL_TOK_CONTEXT * C2, c2.mult + (size_t)k * DL_TOK_CONTEXT,
                                 DL_TOK_CONTEXT, C2);
    }
    for (size_t r = 0; r < rows; r++) { /* [T, C1] | [T, C2] -> [T, C1 + C2] */
        memcpy(z + r * C, z1 + r * C1, sizeof(float) * (size_t)C1);
        memcpy(z + r * C + C1, z2 + r * C2, sizeof(float) * (size_t)C2);
    }
    if (pooled) memcpy(pooled, pl, sizeof(float) * (size_t)P); /* the first chunk's */
    *emb = z;
    z = NULL;
    *T = n * DL_TOK_CONTEXT;
    rc = DL_OK;
done:
    free(z1), free(z2), free(pl), free(z);
    dl_prompt_chunks_free(&c1);
    dl_prompt_chunks_free(&c2);
    return rc;
}

int dl_pipeline_encode_prompt(dl_sd *sd, const char *text, int clip_skip, int emphasis, int max_chunks, float **emb,
                              int *T)
{
    if (dl_sd_is_xl(sd)) return dl_pipeline_encode_prompt_xl(sd, text, clip_skip, emphasis, max_chunks, emb, T, NULL);
    *emb = NULL;
    *T = 0;
    dl_prompt_chunks ch;
    DL_TRY(dl_prompt_chunks_build(dl_sd_tokenizer(sd), text ? text : "", emphasis, max_chunks, &ch));
    int C = dl_sd_hidden(sd);
    float *z = malloc(sizeof(float) * (size_t)ch.n * DL_TOK_CONTEXT * (size_t)C);
    if (!z) {
        dl_prompt_chunks_free(&ch);
        return dl_error_set("out of memory encoding a prompt");
    }
    /* all chunks in one batch: the encoder treats each sequence independently */
    if (dl_sd_encode_text(sd, ch.n, ch.ids, clip_skip, z) != DL_OK) {
        free(z);
        dl_prompt_chunks_free(&ch);
        return DL_ERR;
    }
    for (int k = 0; k < ch.n; k++)
        dl_prompt_apply_emphasis(z + (size_t)k * DL_TOK_CONTEXT * C, ch.mult + (size_t)k * DL_TOK_CONTEXT,
                                 DL_TOK_CONTEXT, C);
    *emb = z;
    *T = ch.n * DL_TOK_CONTEXT;
    dl_prompt_chunks_free(&ch);
    return DL_OK;
}

/* ---- noise ---- */

typedef struct {
    dl_seed_mode mode;
    dl_rng_source rng;
    int n, C, h, w;
    dl_torch_rng *gens;  /* [n] (per image) or [1] (batch); DL_RNG_TORCH_CPU */
    dl_philox_rng *pgens; /* the same for DL_RNG_NV */
    float *tmp;          /* [n, C, h, w] */
} noise_src;

/* [n, C, h, w] -> [n, h, w, C] */
static void nchw_to_nhwc(const float *x, int n, int C, int h, int w, float *y)
{
    int64_t hw = (int64_t)h * w;
    for (int b = 0; b < n; b++)
        for (int c = 0; c < C; c++)
            for (int64_t p = 0; p < hw; p++) y[((int64_t)b * hw + p) * C + c] = x[((int64_t)b * C + c) * hw + p];
}

/* Draw `count` images' worth of noise ([count, h, w, C] channels-last); per-image generators
 * draw one [1, C, h, w] each, the batch generator one [count, C, h, w]. */
static void noise_draw(noise_src *ns, int count, float *out)
{
    size_t per = (size_t)ns->C * ns->h * ns->w;
    if (ns->rng == DL_RNG_NV) {
        if (ns->mode == DL_SEED_BATCH) dl_philox_randn(&ns->pgens[0], ns->tmp, per * (size_t)count);
        else
            for (int b = 0; b < count; b++) dl_philox_randn(&ns->pgens[b], ns->tmp + per * b, per);
    } else if (ns->mode == DL_SEED_BATCH) dl_torch_randn(&ns->gens[0], ns->tmp, per * (size_t)count);
    else
        for (int b = 0; b < count; b++) dl_torch_randn(&ns->gens[b], ns->tmp + per * b, per);
    nchw_to_nhwc(ns->tmp, count, ns->C, ns->h, ns->w, out);
}

/* Allocate and seed the generators of ns (its mode, rng, n, C, h, w set) and its buffer. */
static int noise_open(noise_src *ns, const uint64_t *seeds)
{
    int ngen = ns->mode == DL_SEED_BATCH ? 1 : ns->n;
    if (ns->rng == DL_RNG_NV) ns->pgens = malloc(sizeof *ns->pgens * (size_t)ngen);
    else ns->gens = malloc(sizeof *ns->gens * (size_t)ngen);
    ns->tmp = malloc(sizeof(float) * (size_t)ns->n * ns->C * ns->h * ns->w);
    if (!(ns->gens || ns->pgens) || !ns->tmp) return dl_error_set("out of memory for the noise of %d images", ns->n);
    for (int g = 0; g < ngen; g++) {
        if (ns->rng == DL_RNG_NV) dl_philox_seed(&ns->pgens[g], seeds[g]);
        else dl_torch_rng_seed(&ns->gens[g], seeds[g]);
    }
    return DL_OK;
}

static void noise_close(noise_src *ns)
{
    free(ns->gens);
    free(ns->pgens);
    free(ns->tmp);
}

int dl_pipeline_initial_noise(dl_rng_source rng, dl_seed_mode mode, int n, const uint64_t *seeds, int C, int h, int w,
                              float *out)
{
    DL_ASSERT(n >= 1 && C >= 1 && h >= 1 && w >= 1 && seeds && out);
    noise_src ns = {.mode = mode, .rng = rng, .n = n, .C = C, .h = h, .w = w};
    int rc = noise_open(&ns, seeds);
    if (rc == DL_OK) noise_draw(&ns, n, out);
    noise_close(&ns);
    return rc;
}

static int noise_cb(void *user, float *out, int64_t n)
{
    noise_src *ns = user;
    (void)n;
    noise_draw(ns, ns->n, out);
    return DL_OK;
}

/* ---- the guided model ---- */

typedef struct {
    dl_sd *sd;
    int n, h, w, C;
    float g;
    const float *cond, *uncond;  /* [Tc, D], [Tu, D] */
    int Tc, Tu, D;
    float *xb, *ctx, *tb, *ob;   /* batch buffers [2n, ...] */
    float *te, *tid;             /* SDXL: text_embeds [2n, P] (uncond x n; cond x n), time ids [2n, 6]; else NULL */
    int P;
} guided;

static void fill_ctx(float *dst, const float *src, int n, int T, int D)
{
    for (int b = 0; b < n; b++) memcpy(dst + (size_t)b * T * D, src, sizeof(float) * (size_t)T * D);
}

static int guided_cb(void *user, const float *x_in, float t, float *out)
{
    guided *m = user;
    size_t per = (size_t)m->h * m->w * m->C, nx = per * m->n;
    int n = m->n;
    for (int i = 0; i < 2 * n; i++) m->tb[i] = t;
    const float *te_u = m->te, *te_c = m->te ? m->te + (size_t)n * m->P : NULL; /* SDXL's pooled rows */
    if (m->g <= 1.0f) {
        fill_ctx(m->ctx, m->cond, n, m->Tc, m->D);
        return dl_sd_unet_added(m->sd, n, m->h, m->w, x_in, m->tb, m->ctx, m->Tc, te_c, m->tid, out);
    }
    if (m->Tc == m->Tu) { /* one batch [uncond; cond], as diffusers */
        memcpy(m->xb, x_in, sizeof(float) * nx);
        memcpy(m->xb + nx, x_in, sizeof(float) * nx);
        fill_ctx(m->ctx, m->uncond, n, m->Tu, m->D);
        fill_ctx(m->ctx + (size_t)n * m->Tu * m->D, m->cond, n, m->Tc, m->D);
        DL_TRY(dl_sd_unet_added(m->sd, 2 * n, m->h, m->w, m->xb, m->tb, m->ctx, m->Tc, te_u, m->tid, m->ob));
    } else { /* different chunk counts: two calls (A1111 without pad_cond_uncond) */
        fill_ctx(m->ctx, m->uncond, n, m->Tu, m->D);
        DL_TRY(dl_sd_unet_added(m->sd, n, m->h, m->w, x_in, m->tb, m->ctx, m->Tu, te_u, m->tid, m->ob));
        fill_ctx(m->ctx, m->cond, n, m->Tc, m->D);
        DL_TRY(dl_sd_unet_added(m->sd, n, m->h, m->w, x_in, m->tb, m->ctx, m->Tc, te_c, m->tid, m->ob + nx));
    }
    const float *u = m->ob, *c = m->ob + nx;
    for (size_t i = 0; i < nx; i++) out[i] = u[i] + m->g * (c[i] - u[i]);
    return DL_OK;
}

int dl_pipeline_generate(dl_sd *sd, const dl_gen_params *p, int n, const uint64_t *seeds, dl_seed_mode mode,
                         float *images, float *latents, void (*progress)(void *user, int call, int total),
                         void *progress_user)
{
    int f = dl_sd_vae_factor(sd), um = dl_sd_unet_multiple(sd);
    if (n < 1) return dl_error_set("batch size %d must be at least 1", n);
    if (p->width <= 0 || p->height <= 0 || p->width % 8 || p->height % 8)
        return dl_error_set("size %dx%d: width and height must be positive multiples of 8", p->width, p->height);
    if (p->width % (f * um) || p->height % (f * um))
        return dl_error_set("size %dx%d: this model needs multiples of %d", p->width, p->height, f * um);
    int h = p->height / f, w = p->width / f, C = dl_sd_latent_channels(sd), D = dl_sd_hidden(sd);
    size_t per = (size_t)h * w * C, nx = per * n;

    dl_schedule_config scfg;
    dl_schedule_config_sd15(&scfg);
    scfg.prediction = dl_sd_v_prediction(sd) ? DL_PRED_V : DL_PRED_EPSILON;
    dl_sampler_opts so = p->sopts;
    if (!p->init) so.strength = 1.0;

    guided m = {.sd = sd, .n = n, .h = h, .w = w, .C = C, .g = p->cfg_scale, .D = D};
    noise_src ns = {.mode = mode, .rng = p->rng, .n = n, .C = C, .h = h, .w = w};
    dl_sampler s;
    memset(&s, 0, sizeof s);
    float *cond = NULL, *uncond = NULL, *x = NULL, *x0 = NULL, *nz = NULL, *out = NULL, *img = NULL;
    float *mean = NULL, *logvar = NULL;
    int rc = DL_ERR;
    if (dl_sampler_create(&s, p->sampler, &scfg, p->steps, &so, (int64_t)nx) != DL_OK) goto done;
    double t0 = dl_now_seconds();
    const int xl = dl_sd_is_xl(sd);
    if (xl) { /* SDXL: pooled text_embeds [2n, P] (uncond rows, cond rows) and time ids [2n, 6] */
        m.P = dl_sd_pooled_dim(sd);
        m.te = calloc((size_t)2 * n * m.P, sizeof(float));
        m.tid = malloc(sizeof(float) * 12 * (size_t)n);
        if (!m.te || !m.tid) {
            dl_error_set("out of memory");
            goto done;
        }
        const float ids[6] = {(float)(p->orig_h ? p->orig_h : p->height), (float)(p->orig_w ? p->orig_w : p->width),
                              (float)p->crop_top, (float)p->crop_left,
                              (float)(p->target_h ? p->target_h : p->height),
                              (float)(p->target_w ? p->target_w : p->width)};
        for (int i = 0; i < 2 * n; i++) memcpy(m.tid + 6 * (size_t)i, ids, sizeof ids);
        if (dl_pipeline_encode_prompt_xl(sd, p->prompt, p->clip_skip, p->emphasis, p->max_chunks, &cond, &m.Tc,
                                         m.te + (size_t)n * m.P) != DL_OK)
            goto done;
        for (int i = 1; i < n; i++) memcpy(m.te + (size_t)(n + i) * m.P, m.te + (size_t)n * m.P, sizeof(float) * m.P);
        if (p->cfg_scale > 1.0f && (!p->negative || !p->negative[0])) {
            /* force_zeros_for_empty_prompt: zeros for the context and the pooled embedding */
            uncond = calloc((size_t)m.Tc * D, sizeof(float));
            m.Tu = m.Tc;
            if (!uncond) {
                dl_error_set("out of memory");
                goto done;
            }
        } else if (p->cfg_scale > 1.0f) {
            if (dl_pipeline_encode_prompt_xl(sd, p->negative, p->clip_skip, p->emphasis, p->max_chunks, &uncond, &m.Tu,
                                             m.te) != DL_OK)
                goto done;
            for (int i = 1; i < n; i++) memcpy(m.te + (size_t)i * m.P, m.te, sizeof(float) * m.P);
        }
    } else {
        if (dl_pipeline_encode_prompt(sd, p->prompt, p->clip_skip, p->emphasis, p->max_chunks, &cond, &m.Tc) != DL_OK)
            goto done;
        if (p->cfg_scale > 1.0f &&
            dl_pipeline_encode_prompt(sd, p->negative, p->clip_skip, p->emphasis, p->max_chunks, &uncond, &m.Tu) !=
                DL_OK)
            goto done;
    }
    if (p->phases) dl_phases_add(p->phases, "text encoding", dl_now_seconds() - t0);
    m.cond = cond;
    m.uncond = uncond;
    int Tmax = m.Tc > m.Tu ? m.Tc : m.Tu;
    if (noise_open(&ns, seeds) != DL_OK) goto done;
    x = malloc(sizeof(float) * nx);
    nz = malloc(sizeof(float) * nx);
    out = malloc(sizeof(float) * nx);
    m.xb = malloc(sizeof(float) * 2 * nx);
    m.ob = malloc(sizeof(float) * 2 * nx);
    m.tb = malloc(sizeof(float) * 2 * (size_t)n);
    m.ctx = malloc(sizeof(float) * 2 * (size_t)n * Tmax * D);
    if (!x || !nz || !out || !m.xb || !m.ob || !m.tb || !m.ctx) {
        dl_error_set("out of memory for a batch of %d at %dx%d", n, p->width, p->height);
        goto done;
    }

    if (!p->init) {
        noise_draw(&ns, n, nz);
        dl_sampler_init_txt2img(&s, nz, x);
    } else {
        /* VAE posterior of the init image (encoded once), then the noise */
        size_t H = (size_t)p->height, W = (size_t)p->width;
        x0 = malloc(sizeof(float) * nx);
        mean = malloc(sizeof(float) * per);
        logvar = malloc(sizeof(float) * per);
        if (!x0 || !mean || !logvar) {
            dl_error_set("out of memory for img2img at %zux%zu", W, H);
            goto done;
        }
        t0 = dl_now_seconds();
        if (dl_sd_vae_encode(sd, 1, (int)H, (int)W, p->init, mean, logvar) != DL_OK) goto done;
        if (p->phases) dl_phases_add(p->phases, "VAE encode", dl_now_seconds() - t0);
        float sf = dl_sd_scaling_factor(sd);
        if (mode == DL_SEED_BATCH) {
            noise_draw(&ns, 1, nz);
            for (size_t i = 0; i < per; i++) x0[i] = (mean[i] + expf(0.5f * logvar[i]) * nz[i]) * sf;
            for (int b = 1; b < n; b++) memcpy(x0 + per * b, x0, sizeof(float) * per);
        } else {
            noise_draw(&ns, n, nz);
            for (int b = 0; b < n; b++)
                for (size_t i = 0; i < per; i++)
                    x0[per * b + i] = (mean[i] + expf(0.5f * logvar[i]) * nz[per * b + i]) * sf;
        }
        noise_draw(&ns, n, nz);
        dl_sampler_init_img2img(&s, x0, nz, x);
    }

    int total = s.n_calls, call = 0;
    while (!dl_sampler_done(&s)) {
        float t = dl_sampler_timestep(&s), c = dl_sampler_input_scale(&s);
        for (size_t i = 0; i < nx; i++) nz[i] = x[i] * c;  /* scale_model_input */
        t0 = dl_now_seconds();
        if (guided_cb(&m, nz, t, out) != DL_OK) goto done;
        if (p->phases) dl_phases_add(p->phases, "UNet steps", dl_now_seconds() - t0);
        const float *noise = NULL;
        if (dl_sampler_needs_noise(&s)) {
            noise_cb(&ns, nz, (int64_t)nx);
            noise = nz;
        }
        dl_sampler_step(&s, out, x, noise);
        if (progress) progress(progress_user, ++call, total);
    }
    if (latents) memcpy(latents, x, sizeof(float) * nx);

    /* decode: z = x / scaling_factor; image = clamp(dec / 2 + 0.5, 0, 1) */
    {
        float sf = dl_sd_scaling_factor(sd);
        for (size_t i = 0; i < nx; i++) x[i] = x[i] / sf;
        size_t npx = (size_t)n * p->height * p->width * 3;
        img = malloc(sizeof(float) * npx);
        if (!img) {
            dl_error_set("out of memory decoding %d images", n);
            goto done;
        }
        t0 = dl_now_seconds();
        if (dl_sd_vae_decode(sd, n, h, w, x, img) != DL_OK) goto done;
        if (p->phases) dl_phases_add(p->phases, "VAE decode", dl_now_seconds() - t0);
        for (size_t i = 0; i < npx; i++) {
            float v = img[i] * 0.5f + 0.5f;
            images[i] = v < 0 ? 0 : v > 1 ? 1 : v;
        }
    }
    rc = DL_OK;
done:
    dl_sampler_free(&s);
    free(cond);
    free(uncond);
    noise_close(&ns);
    free(x);
    free(x0);
    free(nz);
    free(out);
    free(img);
    free(mean);
    free(logvar);
    free(m.xb);
    free(m.ob);
    free(m.tb);
    free(m.ctx);
    free(m.te);
    free(m.tid);
    return rc;
}

void dl_pipeline_to_u8(const float *img, int64_t n, uint8_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        float v = img[i] * 255.0f;
        v = v < 0 ? 0 : v > 255 ? 255 : v;
        out[i] = (uint8_t)lrintf(v); /* numpy's round: half to even, as lrintf in the default mode */
    }
}

/* One axis of a separable triangle-filter resample: weights of source taps for each output. */
static void resample_axis(const float *src, int n_in, int n_out, int stride_in, int count, int stride_cnt,
                          float *dst, int stride_out)
{
    double scale = (double)n_in / n_out, support = scale > 1 ? scale : 1;
    for (int o = 0; o < n_out; o++) {
        double center = (o + 0.5) * scale;
        int lo = (int)floor(center - support), hi = (int)ceil(center + support);
        if (lo < 0) lo = 0;
        if (hi > n_in) hi = n_in;
        double wsum = 0, wts[4096];
        int nt = 0;
        for (int i = lo; i < hi && nt < 4096; i++, nt++) {
            double d = fabs((i + 0.5 - center) / support);
            wts[nt] = d < 1 ? 1 - d : 0;
            wsum += wts[nt];
        }
        for (int c = 0; c < count; c++) {
            double acc = 0;
            for (int k = 0; k < nt; k++) acc += wts[k] * src[(size_t)(lo + k) * stride_in + (size_t)c * stride_cnt];
            dst[(size_t)o * stride_out + (size_t)c * stride_cnt] = (float)(wsum > 0 ? acc / wsum : 0);
        }
    }
}

void dl_pipeline_image_in(const uint8_t *rgb, int w, int h, int W, int H, float *out)
{
    if (w == W && h == H) {
        for (size_t i = 0; i < (size_t)W * H * 3; i++) out[i] = (float)rgb[i] / 255.0f * 2.0f - 1.0f;
        return;
    }
    float *a = malloc(sizeof(float) * (size_t)w * h * 3), *b = malloc(sizeof(float) * (size_t)W * h * 3);
    DL_ASSERT(a && b);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) a[i] = rgb[i];
    for (int y = 0; y < h; y++) /* rows: along x, 3 channels interleaved */
        resample_axis(a + (size_t)y * w * 3, w, W, 3, 3, 1, b + (size_t)y * W * 3, 3);
    for (int x = 0; x < W; x++) /* columns: along y */
        resample_axis(b + (size_t)x * 3, h, H, W * 3, 3, 1, out + (size_t)x * 3, W * 3);
    for (size_t i = 0; i < (size_t)W * H * 3; i++) {
        float v = out[i] < 0 ? 0 : out[i] > 255 ? 255 : out[i];
        out[i] = (float)lrintf(v) / 255.0f * 2.0f - 1.0f; /* PIL rounds to 8 bits */
    }
    free(a);
    free(b);
}
