/* vae_train.c - the VAE's training micro-step: the encoder's and the decoder's node lists on the
 * shared walkers, the diagonal Gaussian posterior (sample, KL, their gradients) between them. */
#include "train/vae_train.h"
#include "backend/backend.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOGVAR_MIN (-30.0f) /* diffusers' DiagonalGaussianDistribution clamps the log-variance */
#define LOGVAR_MAX 20.0f

static int factor(const dl_vae *m) { return 1 << (m->cfg.n_blocks - 1); }

int dl_vae_train_bufs_init(const dl_ctx *ctx, const dl_vae *m, dl_vae_train_bufs *b, int N, int64_t HW)
{
    memset(b, 0, sizeof *b);
    const int f = factor(m), L = m->cfg.latent_channels, Co = m->cfg.out_channels;
    const int64_t hw = HW / ((int64_t)f * f) + 1;
    const size_t nm = (size_t)(N * hw * 2 * L), nz = (size_t)(N * hw * L), ni = (size_t)(N * HW * Co);
    b->dev = dl_be(ctx)->device_memory != 0;
    int fail = 0;
#define HOST(p, n) (p = calloc((n) ? (n) : 1, sizeof(float)), fail |= !p)
    HOST(b->h_moments, nm), HOST(b->h_dmoments, nm), HOST(b->h_z, nz), HOST(b->h_dz, nz);
#undef HOST
    b->enc_tape = malloc(sizeof *b->enc_tape), b->dec_tape = malloc(sizeof *b->dec_tape);
    fail |= !b->enc_tape || !b->dec_tape;
    if (fail) {
        dl_vae_train_bufs_free(ctx, b);
        return dl_error_set("out of memory for the VAE's training buffers");
    }
#define DEV(p, h, n) (p = b->dev ? dl_be_alloc(ctx, (n) * sizeof(float)) : (h), fail |= !p)
    DEV(b->moments, b->h_moments, nm), DEV(b->dmoments, b->h_dmoments, nm);
    DEV(b->z, b->h_z, nz), DEV(b->dz, b->h_dz, nz);
    /* the image-sized buffers and the loss live only on the backend */
    b->rec = dl_be_alloc(ctx, ni * sizeof(float)), b->drec = dl_be_alloc(ctx, ni * sizeof(float));
    b->scal = dl_be_alloc(ctx, 4 * sizeof(float));
    fail |= !b->rec || !b->drec || !b->scal;
#undef DEV
    if (fail) {
        dl_vae_train_bufs_free(ctx, b);
        return dl_error_prefix("the VAE's training buffers on %s: ", dl_be(ctx)->name);
    }
    return DL_OK;
}

void dl_vae_train_bufs_free(const dl_ctx *ctx, dl_vae_train_bufs *b)
{
    if (b->dev) {
        void *d[] = {b->moments, b->dmoments, b->z, b->dz};
        for (size_t i = 0; i < sizeof d / sizeof *d; i++)
            if (d[i]) dl_be_free(ctx, d[i]);
    }
    void *d[] = {b->rec, b->drec, b->scal};
    for (size_t i = 0; i < sizeof d / sizeof *d; i++)
        if (d[i]) dl_be_free(ctx, d[i]);
    free(b->h_moments), free(b->h_dmoments), free(b->h_z), free(b->h_dz);
    free(b->enc_tape), free(b->dec_tape);
    memset(b, 0, sizeof *b);
}

void dl_vae_train_sizes(const dl_vae *m, int N, int H, int W, int checkpoint, size_t *act, size_t *scratch)
{
    const int f = factor(m);
    dl_size_table *tab = malloc(sizeof *tab);
    DL_ASSERTF(tab, "out of memory sizing the VAE's training pass");
    const dl_net enc = dl_vae_encoder_net(m), dec = dl_vae_decoder_net(m);
    const dl_pass_in ie = {.N = N, .H = H, .W = W}, id = {.N = N, .H = H / f, .W = W / f};
    dl_graph_size_table(&enc, &ie, checkpoint, 0, 0, tab);
    size_t a = tab->act, s = tab->scratch_train;
    dl_graph_size_table(&dec, &id, checkpoint, 1, 0, tab);
    a += tab->act;
    if (tab->scratch_train > s) s = tab->scratch_train;
    free(tab);
    *act = a, *scratch = s;
}

/* z = mean + exp(lv / 2) eps from the moments [M, 2L] (lv clamped); returns the batch's KL sum
 * 0.5 sum (mean^2 + exp(lv) - 1 - lv) over every element. */
static double posterior_sample(int64_t M, int L, const float *mom, const float *eps, float *z)
{
    double kl = 0;
    for (int64_t i = 0; i < M; i++) {
        const float *mo = mom + i * 2 * L;
        for (int c = 0; c < L; c++) {
            const float mu = mo[c], lv = fminf(fmaxf(mo[L + c], LOGVAR_MIN), LOGVAR_MAX);
            const float sd = expf(0.5f * lv), var = expf(lv);
            z[i * L + c] = mu + sd * eps[i * L + c];
            kl += 0.5 * ((double)mu * mu + var - 1.0 - lv);
        }
    }
    return kl;
}

/* d moments [M, 2L] from dz [M, L] (the decoder's d input) and the KL term's gradient, c =
 * dloss * kl_weight / N: d mean = dz + c mean, d lv = [lv inside the clamp] (dz eps sd / 2 +
 * c (exp(lv) - 1) / 2) (torch's clamp passes the gradient where the input lies in [min, max]). */
static void posterior_backward(int64_t M, int L, const float *mom, const float *eps, const float *dz, float c,
                               float *dmom)
{
    for (int64_t i = 0; i < M; i++) {
        const float *mo = mom + i * 2 * L;
        float *dm = dmom + i * 2 * L;
        for (int c2 = 0; c2 < L; c2++) {
            const float mu = mo[c2], raw = mo[L + c2];
            const int inside = raw >= LOGVAR_MIN && raw <= LOGVAR_MAX;
            const float lv = fminf(fmaxf(raw, LOGVAR_MIN), LOGVAR_MAX);
            const float sd = expf(0.5f * lv), var = expf(lv), g = dz[i * L + c2];
            dm[c2] = g + c * mu;
            dm[L + c2] = inside ? 0.5f * g * eps[i * L + c2] * sd + 0.5f * c * (var - 1.0f) : 0.0f;
        }
    }
}

int dl_vae_train_micro(const dl_ctx *ctx, const dl_vae *m, dl_vae_train_bufs *b, int N, int H, int W,
                       const float *img, const float *eps, double kl_weight, float dloss, int checkpoint,
                       dl_arena *act, dl_arena *scratch, dl_vae_losses *out)
{
    const int f = factor(m), L = m->cfg.latent_channels, h = H / f, w = W / f;
    DL_ASSERTF(H % f == 0 && W % f == 0, "image %dx%d is not a multiple of %d", H, W, f);
    const int64_t M = (int64_t)N * h * w, D = (int64_t)H * W * m->cfg.out_channels;
    const size_t bm = sizeof(float) * (size_t)(M * 2 * L), bz = sizeof(float) * (size_t)(M * L);
    const dl_net enc = dl_vae_encoder_net(m), dec = dl_vae_decoder_net(m);
    const size_t mark = dl_arena_mark(act);
    /* encode */
    const dl_pass_in ie = {.N = N, .H = H, .W = W, .x = img};
    dl_graph_train_forward(ctx, &enc, b->enc_tape, &ie, b->moments, checkpoint, act, scratch, NULL); // [N, h, w, 2L]
    if (b->dev) DL_TRY(dl_be_download(ctx, b->h_moments, b->moments, bm));
    /* sample the posterior, decode */
    const double kl_sum = posterior_sample(M, L, b->h_moments, eps, b->h_z);                // z [N, h, w, L]
    if (b->dev) DL_TRY(dl_be_upload(ctx, b->z, b->h_z, bz));
    const dl_pass_in id = {.N = N, .H = h, .W = w, .x = b->z};
    dl_graph_train_forward(ctx, &dec, b->dec_tape, &id, b->rec, checkpoint, act, scratch, NULL);   // [N, H, W, 3]
    /* reconstruction loss and its gradient, then back through the decoder to z */
    dl_be(ctx)->mse_loss_forward(ctx, N, D, b->rec, img, NULL, NULL, b->scal);
    dl_be(ctx)->mse_loss_backward(ctx, N, D, b->rec, img, NULL, dloss, b->drec, NULL);
    dl_graph_backward(ctx, b->dec_tape, b->drec, b->dz, NULL, scratch);                      // dz [N, h, w, L]
    if (b->dev) DL_TRY(dl_be_download(ctx, b->h_dz, b->dz, bz));
    /* through the sample and the KL term to the moments, then back through the encoder */
    posterior_backward(M, L, b->h_moments, eps, b->h_dz, (float)(dloss * kl_weight / N), b->h_dmoments);
    if (b->dev) DL_TRY(dl_be_upload(ctx, b->dmoments, b->h_dmoments, bm));
    dl_graph_backward(ctx, b->enc_tape, b->dmoments, NULL, NULL, scratch);
    dl_arena_release(act, mark);
    const double rec = dl_be_read_f32(ctx, b->scal);
    out->rec = rec;
    out->kl = kl_sum / N;
    out->total = rec + kl_weight * out->kl;
    return DL_OK;
}
