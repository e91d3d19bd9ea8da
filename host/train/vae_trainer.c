/* vae_trainer.c - `danlu train-vae`: setup (backend, checkpoint with a trainable VAE, dataset),
 * the step (zero, micro-batches, clip + AdamW), saves (the checkpoint with the trained VAE,
 * states), resume and Ctrl-C. The micro-step itself is train/vae_train.c. */
#include "train/vae_trainer.h"

#include "backend/backend.h"
#include "core/arena.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/image.h"
#include "lora/ckpt_tools.h"
#include "model/checkpoint.h"
#include "model/vae.h"
#include "train/batcher.h"
#include "train/dataset.h"
#include "train/image_prep.h"
#include "train/lr_schedule.h"
#include "train/outputs.h"
#include "train/param_set.h"
#include "train/plot.h"
#include "train/progress.h"
#include "train/provenance.h"
#include "train/state.h"
#include "train/vae_train.h"

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A VAE tensor as the trainable load placed it (to write the model back). */
typedef struct vt_tensor {
    char *name;           /* diffusers name ("encoder.conv_in.weight") */
    int ndim;
    int64_t shape[4];     /* PyTorch shape */
    size_t off;           /* bytes into the weights arena */
    int conv;             /* stored [cout, k, k, cin] */
} vt_tensor;

typedef struct vtrainer {
    const dl_train_config *cfg;
    FILE *log;
    dl_ctx ctx;
    int ctx_ok;
    uint64_t seed;
    dl_checkpoint ck;
    int ck_ok;
    dl_arena w;                   /* the VAE's weights (fp32, trained in place) */
    char *grads;                  /* [w.cap] their gradients at the same offsets (backend memory) */
    dl_vae vae;
    int have_vae;
    vt_tensor *pl;                /* the placed tensors, in load order */
    int n_pl, cap_pl;
    float *host_w;                /* host copy of the weights on a device backend (else NULL) */
    dl_param_set ps;
    float *m, *v;                 /* [ps.n] AdamW moments, host (aliased by ps.m / ps.v on the CPU) */
    float *scal;                  /* [4] backend: gradient sum of squares, clip coefficient */
    dl_dataset ds;
    int ds_ok;
    dl_batcher batcher;
    int batcher_ok;
    dl_batch batch;
    int batch_ok;
    dl_augment_cfg aug;
    dl_image_reader reader;
    dl_prep_work prep;
    int B, f, L, max_hw;          /* batch, latent factor and channels, largest bucket's H*W */
    float *img, *d_img;           /* [B, H, W, 3] host, backend */
    float *eps, *tmp;             /* [B, h, w, L] posterior noise (NHWC), its NCHW draw */
    dl_arena act, scratch;
    dl_vae_train_bufs bufs;
    int bufs_ok;
    dl_lr_schedule lrs;
    int total_steps, steps_per_epoch, num_epochs, batches_per_epoch;
    dl_rng rng;                   /* kept in the state (the data side draws from the batcher's own) */
    dl_torch_rng noise_rng;       /* the posterior's noise */
    char *signature, *config_json;
    dl_progress prog;
    int prog_ok;
} vtrainer;

static void say(vtrainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(vtrainer *t, const char *fmt, ...)
{
    if (!t->log) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (t->prog_ok) dl_progress_note(&t->prog, "%s", buf);
    else { fprintf(t->log, "%s\n", buf); fflush(t->log); }
}

static char *out_file(vtrainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *out_file(vtrainer *t, const char *fmt, ...)
{
    char name[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return dl_train_out_file(t->cfg->output_dir, "%s", name);
}

/* ---- setup ---- */
static void on_placed(void *user, const char *name, int ndim, const int64_t *shape, size_t off, int conv)
{
    vtrainer *t = user;
    if (t->n_pl < 0) return;
    if (t->n_pl == t->cap_pl) {
        const int cap = t->cap_pl ? 2 * t->cap_pl : 256;
        vt_tensor *n = realloc(t->pl, (size_t)cap * sizeof *n);
        if (!n) { t->n_pl = -1; return; }
        t->pl = n, t->cap_pl = cap;
    }
    vt_tensor *e = &t->pl[t->n_pl];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) { t->n_pl = -1; return; }
    t->n_pl++;
    e->ndim = ndim;
    for (int i = 0; i < ndim && i < 4; i++) e->shape[i] = shape[i];
    e->off = off, e->conv = conv;
}

static int setup_model(vtrainer *t)
{
    const dl_train_config *c = t->cfg;
    const char *path = c->pretrained_model_name_or_path;
    struct stat st;
    if (stat(path, &st) != 0) return dl_error_set("pretrained_model_name_or_path: %s: %s", path, strerror(errno));
    dl_ckpt_options opt = {.prediction = -1};
    if (dl_ckpt_open(&t->ck, path, &opt) != DL_OK) return dl_error_prefix("pretrained_model_name_or_path: ");
    t->ck_ok = 1;
    dl_ckpt_set_pool(&t->ck, t->ctx.pool);
    t->ck.weight_dtypes = 0, t->ck.weights_in_place = 0; /* every weight trains: fp32, writable */
    size_t wb;
    if (dl_vae_weights_bytes(&t->ck, &wb) != DL_OK) return dl_error_prefix("%s: ", path);
    DL_TRY(dl_arena_init_on(&t->w, "VAE weights", wb, &t->ctx));
    if (!(t->grads = dl_be_alloc(&t->ctx, wb > 0 ? wb : 1))) return dl_error_prefix("the VAE's gradients: ");
    DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->grads, 0, wb));
    DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->w.base, 0, wb)); /* padding stays zero */
    const dl_trainable tr = {t->grads, on_placed, t};
    if (dl_vae_load_trainable(&t->vae, &t->ck, &t->w, &tr) != DL_OK) return dl_error_prefix("%s: ", path);
    t->have_vae = 1;
    if (t->n_pl < 0) return dl_error_set("out of memory listing the VAE's weights");
    const dl_vae_config *vc = &t->vae.cfg;
    if (vc->in_channels != 3 || vc->out_channels != 3)
        return dl_error_set("%s: the VAE has %d input and %d output channels; train-vae trains on RGB images (3)", path,
                            vc->in_channels, vc->out_channels);
    t->f = 1 << (vc->n_blocks - 1);
    t->L = vc->latent_channels;
    const int64_t n = (int64_t)(t->w.used / sizeof(float));
    t->ps = (dl_param_set){.p = (float *)t->w.base, .g = (float *)t->grads, .n = n, .n_unet = n};
    if (dl_be(&t->ctx)->device_memory && !(t->host_w = malloc(t->w.used ? t->w.used : 1)))
        return dl_error_set("out of memory for the host copy of the VAE's weights");
    /* the signature a resumed state must match: the tensors and where they lie */
    uint64_t h = 1469598103934665603ull;
    int64_t count = 0;
    for (int i = 0; i < t->n_pl; i++) {
        const vt_tensor *e = &t->pl[i];
        char buf[256];
        int len = snprintf(buf, sizeof buf, "%s|%zu;", e->name, e->off);
        for (int j = 0; j < len && j < (int)sizeof buf; j++) h = (h ^ (unsigned char)buf[j]) * 1099511628211ull;
        int64_t k = 1;
        for (int d = 0; d < e->ndim; d++) k *= e->shape[d];
        count += k;
    }
    if (asprintf(&t->signature, "train-vae tensors=%d floats=%lld fnv=%016" PRIx64, t->n_pl, (long long)n, h) < 0)
        return dl_error_set("out of memory");
    say(t, "train-vae: every VAE weight (%d tensors, %lld parameters; latent factor %d, %d channels)", t->n_pl,
        (long long)count, t->f, t->L);
    return DL_OK;
}

static int setup_data(vtrainer *t)
{
    const dl_train_config *c = t->cfg;
    DL_TRY(dl_prov_scan(&t->ds, c->train_data_dir, c, t->log));
    t->ds_ok = 1;
    if (t->log) dl_dataset_print_summary(&t->ds, t->log);
    t->max_hw = 0;
    for (int i = 0; i < t->ds.buckets.n_used; i++) {
        const dl_reso r = t->ds.buckets.used[i];
        if (r.w % t->f || r.h % t->f)
            return dl_error_set("bucket %dx%d: sides must be multiples of %d for this VAE (resolution / "
                                "bucket_reso_steps)", r.w, r.h, t->f);
        if (r.w * r.h > t->max_hw) t->max_hw = r.w * r.h;
    }
    dl_caption_cfg_default(&t->aug.caption);
    t->aug.flip_aug = c->flip_aug;
    t->aug.random_crop = c->random_crop;
    t->B = c->train_batch_size;
    dl_batcher_init(&t->batcher, &t->ds, t->B, t->seed);
    t->batcher_ok = 1;
    dl_batch_init(&t->batch, t->B);
    t->batch_ok = 1;
    return DL_OK;
}

static int setup_buffers(vtrainer *t)
{
    size_t act = 0, scr = 0;
    for (int i = 0; i < t->ds.buckets.n_used; i++) {
        const dl_reso r = t->ds.buckets.used[i];
        size_t a, s;
        dl_vae_train_sizes(&t->vae, t->B, r.h, r.w, t->cfg->gradient_checkpointing, &a, &s);
        if (a > act) act = a;
        if (s > scr) scr = s;
    }
    size_t fr, tot;
    const size_t bufs = (size_t)t->B * t->max_hw * 3 * 3 * sizeof(float) + 2 * (size_t)t->ps.n * sizeof(float);
    if (dl_be(&t->ctx)->mem_info(&t->ctx, &fr, &tot) == DL_OK && act + scr + bufs > fr)
        return dl_error_set("a VAE training step needs %.1f MiB on %s (activations %.1f, scratch %.1f) and %.1f MiB "
                            "are free; what brings it down: %sa smaller train_batch_size or resolution",
                            (double)(act + scr + bufs) / 1048576.0, dl_be(&t->ctx)->name, (double)act / 1048576.0,
                            (double)scr / 1048576.0, (double)fr / 1048576.0,
                            t->cfg->gradient_checkpointing ? "" : "gradient_checkpointing, ");
    DL_TRY(dl_arena_init_on(&t->act, "activations", act + 4096, &t->ctx));
    DL_TRY(dl_arena_init_on(&t->scratch, "scratch", scr + 4096, &t->ctx));
    DL_TRY(dl_vae_train_bufs_init(&t->ctx, &t->vae, &t->bufs, t->B, t->max_hw));
    t->bufs_ok = 1;
    const size_t ni = (size_t)t->B * t->max_hw * 3, ne = (size_t)t->B * (t->max_hw / (t->f * t->f)) * t->L;
    t->img = calloc(ni, sizeof(float));
    t->eps = calloc(ne + 1, sizeof(float)), t->tmp = calloc(ne + 1, sizeof(float));
    t->m = calloc((size_t)t->ps.n + 1, sizeof(float)), t->v = calloc((size_t)t->ps.n + 1, sizeof(float));
    if (!t->img || !t->eps || !t->tmp || !t->m || !t->v) return dl_error_set("out of memory for training buffers");
    const int dev = dl_be(&t->ctx)->device_memory != 0;
    const size_t pb = sizeof(float) * (size_t)(t->ps.n + 1);
    t->d_img = dev ? dl_be_alloc(&t->ctx, ni * sizeof(float)) : t->img;
    t->ps.m = dev ? dl_be_alloc(&t->ctx, pb) : t->m;
    t->ps.v = dev ? dl_be_alloc(&t->ctx, pb) : t->v;
    t->scal = dl_be_alloc(&t->ctx, 4 * sizeof(float));
    if (!t->d_img || !t->ps.m || !t->ps.v || !t->scal) return dl_error_prefix("training buffers on %s: ", dl_be(&t->ctx)->name);
    if (dev) {
        DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->ps.m, 0, pb));
        DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->ps.v, 0, pb));
    }
    return DL_OK;
}

static void teardown(vtrainer *t)
{
    if (t->prog_ok) dl_progress_finish(&t->prog);
    const int dev = t->ctx_ok && dl_be(&t->ctx)->device_memory;
    if (t->bufs_ok) dl_vae_train_bufs_free(&t->ctx, &t->bufs);
    if (dev) {
        void *d[] = {t->d_img, t->ps.m, t->ps.v};
        for (size_t i = 0; i < sizeof d / sizeof *d; i++)
            if (d[i]) dl_be_free(&t->ctx, d[i]);
    }
    if (t->scal) dl_be_free(&t->ctx, t->scal);
    if (t->grads) dl_be_free(&t->ctx, t->grads);
    if (t->batch_ok) dl_batch_free(&t->batch);
    if (t->batcher_ok) dl_batcher_free(&t->batcher);
    if (t->ds_ok) dl_dataset_free(&t->ds);
    dl_image_reader_free(&t->reader);
    dl_prep_work_free(&t->prep);
    if (t->have_vae) dl_vae_free(&t->vae);
    if (t->ck_ok) dl_ckpt_close(&t->ck);
    dl_arena_free(&t->w);
    dl_arena_free(&t->act);
    dl_arena_free(&t->scratch);
    for (int i = 0; i < t->n_pl; i++) free(t->pl[i].name);
    free(t->pl);
    void *h[] = {t->host_w, t->img, t->eps, t->tmp, t->m, t->v, t->signature, t->config_json};
    for (size_t i = 0; i < sizeof h / sizeof *h; i++) free(h[i]);
    if (t->ctx_ok) dl_ctx_free(&t->ctx);
}

/* ---- weights and moments between the backend and the host ---- */
static const float *pull_params(vtrainer *t)
{
    if (!t->host_w) return t->ps.p;
    return dl_be_download(&t->ctx, t->host_w, t->ps.p, t->w.used) == DL_OK ? t->host_w : NULL;
}

static int pull_moments(vtrainer *t)
{
    if (t->ps.m == t->m) return DL_OK;
    const size_t b = sizeof(float) * (size_t)t->ps.n;
    DL_TRY(dl_be_download(&t->ctx, t->m, t->ps.m, b));
    return dl_be_download(&t->ctx, t->v, t->ps.v, b);
}

/* ---- saving ---- */
typedef struct vt_writer {
    vtrainer *t;
    const float *host;
    int cursor;
} vt_writer;

/* dl_ckpt_write's source of the VAE's weights: the trained values in PyTorch's layout; the UNet
 * and the text encoder are written as they are in the base model. */
static int fill_vae(void *user, dl_part part, const char *name, int ndim, const int64_t *shape, float *out)
{
    vt_writer *w = user;
    vtrainer *t = w->t;
    if (part != DL_PART_VAE) return 0;
    const vt_tensor *e = NULL;
    for (int k = 0; k < t->n_pl && !e; k++) {
        const int i = (w->cursor + k) % t->n_pl;
        if (!strcmp(t->pl[i].name, name)) e = &t->pl[i], w->cursor = i + 1;
    }
    if (!e) return dl_error_set("VAE weight %s: not among the trained weights", name);
    int64_t n = 1, m = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    for (int i = 0; i < e->ndim; i++) m *= e->shape[i];
    if (n != m) return dl_error_set("VAE weight %s: %lld values written, %lld trained", name, (long long)n, (long long)m);
    const float *src = (const float *)((const char *)w->host + e->off);
    if (!e->conv || e->shape[2] * e->shape[3] == 1) {
        memcpy(out, src, sizeof(float) * (size_t)n);
        return 1;
    }
    const int64_t co = e->shape[0], ci = e->shape[1], kk = e->shape[2] * e->shape[3];
    for (int64_t o = 0; o < co; o++) /* [cout, k, k, cin] -> [cout, cin, k, k] */
        for (int64_t q = 0; q < kk; q++)
            for (int64_t c = 0; c < ci; c++) out[(o * ci + c) * kk + q] = src[(o * kk + q) * ci + c];
    return 1;
}

static const char *model_ext(const vtrainer *t) { return strcmp(t->cfg->save_model_as, "diffusers") ? ".safetensors" : ""; }

static int save_model(vtrainer *t, const char *path, int step, int epoch)
{
    vt_writer w = {t, pull_params(t), 0};
    if (!w.host) return DL_ERR;
    const dl_train_config *c = t->cfg;
    const int dt = c->save_dtype == DL_SAVE_FP16 ? DL_F16 : c->save_dtype == DL_SAVE_BF16 ? DL_BF16 : DL_F32;
    const int layout = strcmp(c->save_model_as, "diffusers") == 0 ? DL_LAYOUT_DIFFUSERS : DL_LAYOUT_SINGLE;
    char s_step[32], s_epoch[32], s_kl[64];
    snprintf(s_step, sizeof s_step, "%d", step);
    snprintf(s_epoch, sizeof s_epoch, "%d", epoch);
    snprintf(s_kl, sizeof s_kl, "%.17g", c->kl_weight);
    const char *meta[] = {"danlu.trained", "vae", "danlu.config", t->config_json, "ss_output_name", c->output_name,
                          "ss_steps", s_step, "ss_epoch", s_epoch, "danlu.kl_weight", s_kl,
                          "ss_training_comment", c->training_comment ? c->training_comment : ""};
    return dl_ckpt_write(&t->ck, path, layout, dt, fill_vae, &w, meta, (int)(sizeof meta / sizeof *meta / 2), 1, NULL);
}

static int save_state(vtrainer *t, const char *path, int step, int epoch, int64_t micro)
{
    uint64_t words[DL_BATCHER_STATE_WORDS];
    dl_batcher_state bs;
    dl_batcher_get_state(&t->batcher, &bs);
    dl_batcher_state_pack(&bs, words);
    const float *params = pull_params(t);
    if (!params) return DL_ERR;
    DL_TRY(pull_moments(t));
    dl_train_state s = {
        .step = step, .epoch = epoch, .micro_step = micro, .n_params = t->ps.n, .params = (float *)params,
        .m = t->m, .v = t->v, .rng = t->rng, .noise_rng = t->noise_rng, .data_state = (uint8_t *)words,
        .data_state_len = sizeof words, .signature = t->signature, .config_json = t->config_json,
    };
    const char *meta[] = {"ss_output_name", t->cfg->output_name};
    return dl_train_state_save(path, &s, meta, 1);
}

/* <stem> (model) and, with save_state, <stem>-state.safetensors; then the save old_stem (NULL:
 * none) that the keep-last-N rule drops is removed. */
static int save_numbered(vtrainer *t, const char *stem, const char *old_stem, int step, int epoch, int64_t micro,
                         char **state_path)
{
    char *p = out_file(t, "%s%s", stem, model_ext(t));
    if (!p) return dl_error_set("out of memory");
    int rc = save_model(t, p, step, epoch);
    if (rc == DL_OK) say(t, "saved %s", p);
    free(p);
    DL_TRY(rc);
    if (t->cfg->save_state) {
        char *sp = out_file(t, "%s-state.safetensors", stem);
        if (!sp || save_state(t, sp, step, epoch, micro) != DL_OK) { free(sp); return DL_ERR; }
        free(*state_path);
        *state_path = sp;
    }
    if (old_stem) {
        char *old = out_file(t, "%s%s", old_stem, model_ext(t)), *olds = out_file(t, "%s-state.safetensors", old_stem);
        if (old && dl_train_remove_save(old) == 0) say(t, "removed %s", old);
        if (olds) unlink(olds);
        free(old), free(olds);
    }
    char *png = out_file(t, "%s_loss.png", t->cfg->output_name);
    if (png && dl_plot_loss_png(png, t->prog.loss, t->prog.n_loss) != DL_OK) say(t, "warning: loss plot: %s", dl_error_msg());
    free(png);
    return DL_OK;
}

static int save_periodic(vtrainer *t, int step, int epoch, int epoch_end, int64_t micro, char **state_path)
{
    const dl_train_config *c = t->cfg;
    char stem[600], old[600];
    if (c->save_every_n_steps > 0 && step % c->save_every_n_steps == 0) {
        const int drop = dl_train_save_stems(c, 0, step, stem, old, sizeof stem);
        DL_TRY(save_numbered(t, stem, drop ? old : NULL, step, epoch, micro, state_path));
    }
    if (epoch_end && c->save_every_n_epochs > 0 && epoch % c->save_every_n_epochs == 0) {
        const int drop = dl_train_save_stems(c, 1, epoch, stem, old, sizeof stem);
        DL_TRY(save_numbered(t, stem, drop ? old : NULL, step, epoch, micro, state_path));
    }
    return DL_OK;
}

/* ---- one micro-batch ---- */
static int micro_step(vtrainer *t, float dloss, double *loss, int *epoch_out, int *epoch_end)
{
    dl_batch *b = &t->batch;
    dl_batcher_next(&t->batcher, &t->aug, b);
    *epoch_out = (int)t->batcher.st.epoch + 1;
    *epoch_end = t->batcher.st.pos >= t->batcher.n_batches;
    const int n = b->n, H = b->reso.h, W = b->reso.w, h = H / t->f, w = W / t->f;
    const int64_t P = (int64_t)H * W * 3;
    for (int i = 0; i < n; i++) {
        const dl_dataset_item *it = &t->ds.items[b->items[i]];
        dl_image im; /* borrowed from the reader */
        DL_TRY(dl_image_read(&t->reader, it->image_path, &im));
        dl_image_prep_w(t->ctx.pool, &t->prep, &im, it->resized, b->reso, b->crop_x[i], b->crop_y[i], b->flip[i],
                        t->img + i * P);
    }
    if (t->d_img != t->img) DL_TRY(dl_be_upload(&t->ctx, t->d_img, t->img, sizeof(float) * (size_t)(n * P)));
    /* the posterior's noise: torch.randn of the NCHW latent (as DiagonalGaussianDistribution.sample
     * with a generator), to NHWC */
    const int64_t hw = (int64_t)h * w;
    dl_torch_randn(&t->noise_rng, t->tmp, (size_t)(n * hw * t->L));
    for (int i = 0; i < n; i++)
        for (int c = 0; c < t->L; c++)
            for (int64_t p = 0; p < hw; p++)
                t->eps[(i * hw + p) * t->L + c] = t->tmp[(i * t->L + c) * hw + p];
    dl_vae_losses l;
    DL_TRY(dl_vae_train_micro(&t->ctx, &t->vae, &t->bufs, n, H, W, t->d_img, t->eps, t->cfg->kl_weight, dloss,
                              t->cfg->gradient_checkpointing, &t->act, &t->scratch, &l));
    if (isnan(l.total) && dl_be_sync(&t->ctx) != DL_OK) return DL_ERR;
    if (!isfinite(l.total))
        return dl_error_set("the loss became %g at a batch of %s: lower the learning rate", l.total,
                            t->ds.items[b->items[0]].image_path);
    *loss = l.total;
    return DL_OK;
}

/* ---- the run ---- */
static int resume_from(vtrainer *t, const dl_train_state *rs, int *step, int *epoch, int64_t *micro)
{
    const char *path = t->cfg->resume;
    if (rs->n_params != t->ps.n || strcmp(rs->signature, t->signature) != 0)
        return dl_error_set("resume: %s: the state's weights (%s) differ from this configuration's (%s)", path,
                            rs->signature, t->signature);
    if (rs->data_state_len != sizeof(uint64_t) * DL_BATCHER_STATE_WORDS)
        return dl_error_set("resume: %s: data loader state of %zu bytes, expected %zu", path, rs->data_state_len,
                            sizeof(uint64_t) * DL_BATCHER_STATE_WORDS);
    uint64_t words[DL_BATCHER_STATE_WORDS];
    memcpy(words, rs->data_state, sizeof words);
    dl_batcher_state bs;
    dl_batcher_state_unpack(&bs, words);
    if (dl_batcher_set_state(&t->batcher, &bs) != DL_OK) return dl_error_prefix("resume: %s: ", path);
    const size_t b = sizeof(float) * (size_t)t->ps.n;
    memcpy(t->m, rs->m, b), memcpy(t->v, rs->v, b);
    DL_TRY(dl_be_upload(&t->ctx, t->ps.p, rs->params, b));
    if (t->ps.m != t->m) {
        DL_TRY(dl_be_upload(&t->ctx, t->ps.m, t->m, b));
        DL_TRY(dl_be_upload(&t->ctx, t->ps.v, t->v, b));
    }
    t->rng = rs->rng, t->noise_rng = rs->noise_rng;
    *step = (int)rs->step, *epoch = (int)rs->epoch, *micro = rs->micro_step;
    say(t, "resumed from %s at step %d (epoch %d)", path, *step, *epoch);
    return DL_OK;
}

static int run(vtrainer *t, const dl_trainer_opts *opts, dl_train_result *res, char **state_path)
{
    const dl_train_config *cfg = t->cfg;
    dl_train_state rs = {0};
    int have_rs = 0, rc = DL_ERR;
    DL_TRY(dl_ctx_init_backend(&t->ctx, cfg->threads, dl_backend_find(cfg->backend)));
    t->ctx_ok = 1;
    DL_TRY(dl_be_set_precision(&t->ctx, cfg->mixed_precision));
    {
        char desc[256];
        dl_be(&t->ctx)->describe(&t->ctx, desc, sizeof desc);
        say(t, "backend: %s%s", desc, t->ctx.compute_dtype == DL_BF16 ? ", bf16 matrix products and convolutions" : "");
    }
    t->seed = cfg->seed >= 0 ? (uint64_t)cfg->seed : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16)) & 0xffffffffu;
    if (cfg->seed < 0) say(t, "seed: %" PRIu64 " (none given)", t->seed);
    if (!(t->config_json = dl_train_config_to_json(cfg))) return dl_error_set("out of memory");
    DL_TRY(dl_train_mkdir_p(cfg->output_dir));
    if (cfg->resume) {
        if (dl_train_state_load(cfg->resume, &rs) != DL_OK) return dl_error_prefix("resume: ");
        have_rs = 1;
    }
    if (setup_model(t) != DL_OK || setup_data(t) != DL_OK || setup_buffers(t) != DL_OK) goto out;
    t->batches_per_epoch = dl_batcher_batches_per_epoch(&t->batcher);
    const int accum = cfg->gradient_accumulation_steps;
    t->steps_per_epoch = (t->batches_per_epoch + accum - 1) / accum;
    t->total_steps = cfg->max_train_epochs > 0 ? cfg->max_train_epochs * t->steps_per_epoch : cfg->max_train_steps;
    t->num_epochs = (t->total_steps + t->steps_per_epoch - 1) / t->steps_per_epoch;
    dl_lr_kind kind;
    if (dl_lr_kind_parse(cfg->lr_scheduler, &kind) != DL_OK) goto out;
    dl_lr_schedule_init(&t->lrs, kind, cfg->lr_warmup_steps, t->total_steps, cfg->lr_scheduler_num_cycles,
                        cfg->lr_scheduler_power);
    dl_rng_seed(&t->rng, t->seed);
    dl_torch_rng_seed(&t->noise_rng, t->seed);
    int step = 0, epoch = 0;
    int64_t micro = 0;
    if (have_rs && resume_from(t, &rs, &step, &epoch, &micro) != DL_OK) goto out;
    res->start_step = step;
    res->total_steps = t->total_steps;
    res->losses = calloc((size_t)(t->total_steps > step ? t->total_steps - step : 0) + 1, sizeof(double));
    if (!res->losses) { dl_error_set("out of memory"); goto out; }
    {
        char *csv = out_file(t, "%s_log.csv", cfg->output_name);
        int prc = csv ? dl_progress_init(&t->prog, t->log, opts->tty, t->total_steps, step, csv) : DL_ERR;
        free(csv);
        if (prc != DL_OK) goto out;
        t->prog_ok = 1;
    }
    say(t, "training the VAE: %d steps (%d epochs of %d batches, batch %d, accumulation %d), kl_weight %g",
        t->total_steps, t->num_epochs, t->batches_per_epoch, t->B, accum, cfg->kl_weight);
    dl_train_signal_install();
    int interrupted = 0;
    while (step < t->total_steps) {
        dl_param_set_zero_grads(&t->ctx, &t->ps);
        double loss_sum = 0;
        int cur_epoch = epoch + 1, epoch_end = 0;
        for (int a = 0; a < accum && !epoch_end; a++) {
            double l = 0;
            if (micro_step(t, 1.0f / (float)accum, &l, &cur_epoch, &epoch_end) != DL_OK) goto out_sig;
            micro++;
            loss_sum += l;
        }
        const double lr = cfg->learning_rate * dl_lr_multiplier(&t->lrs, step, cfg->learning_rate);
        const dl_adamw_hparams hp = {.lr = lr, .beta1 = cfg->adam_beta1, .beta2 = cfg->adam_beta2, .eps = cfg->adam_eps,
                                     .weight_decay = cfg->weight_decay};
        dl_param_set_step(&t->ctx, &t->ps, cfg->max_grad_norm, &hp, lr, lr, step + 1, t->scal);
        step++;
        if (epoch_end) epoch = cur_epoch;
        const double loss = loss_sum / accum;
        res->losses[step - 1 - res->start_step] = loss;
        res->steps_done = step;
        dl_progress_step(&t->prog, step, cur_epoch, loss, lr);
        if (step < t->total_steps && save_periodic(t, step, epoch, epoch_end, micro, state_path) != DL_OK) goto out_sig;
        if (opts->on_step) opts->on_step(opts->on_step_user, step);
        if (opts->stop_after > 0 && step - res->start_step >= opts->stop_after && step < t->total_steps)
            dl_train_set_interrupted(1);
        if (dl_train_interrupted() && step < t->total_steps) { interrupted = 1; break; }
    }
    char *p = interrupted ? out_file(t, "%s-state.safetensors", cfg->output_name)
                          : out_file(t, "%s%s", cfg->output_name, model_ext(t));
    if (!p) { dl_error_set("out of memory"); goto out_sig; }
    if (interrupted) {
        if (save_state(t, p, step, epoch, micro) != DL_OK) { free(p); goto out_sig; }
        say(t, "interrupted at step %d: state saved to %s (continue with --resume %s)", step, p, p);
        free(*state_path);
        *state_path = strdup(p);
        res->interrupted = 1;
    } else {
        if (save_model(t, p, step, epoch > 0 ? epoch : 1) != DL_OK) { free(p); goto out_sig; }
        say(t, "saved %s", p);
        if (cfg->save_state) {
            char *sp = out_file(t, "%s-state.safetensors", cfg->output_name);
            if (!sp || save_state(t, sp, step, epoch, micro) != DL_OK) { free(sp); free(p); goto out_sig; }
            free(*state_path);
            *state_path = sp;
        }
    }
    res->output_path = p;
    char *png = out_file(t, "%s_loss.png", cfg->output_name);
    if (png && dl_plot_loss_png(png, t->prog.loss, t->prog.n_loss) != DL_OK) say(t, "warning: loss plot: %s", dl_error_msg());
    free(png);
    rc = DL_OK;
out_sig:
    dl_train_set_interrupted(0);
    dl_train_signal_restore();
out:
    if (have_rs) dl_train_state_free(&rs);
    return rc;
}

int dl_vae_train_run(const dl_train_config *cfg, const dl_trainer_opts *opts, dl_train_result *res)
{
    static const dl_trainer_opts k_default = {.log = NULL, .tty = -1};
    if (!opts) opts = &k_default;
    memset(res, 0, sizeof *res);
    if (cfg->finetune != DL_TRAIN_VAE) return dl_error_set("train-vae: not a train-vae configuration");
    vtrainer *t = calloc(1, sizeof *t);
    if (!t) return dl_error_set("out of memory");
    t->cfg = cfg, t->log = opts->log;
    char *state_path = NULL;
    int rc = run(t, opts, res, &state_path);
    teardown(t);
    free(t);
    if (rc != DL_OK) {
        free(res->losses);
        free(res->output_path);
        free(state_path);
        memset(res, 0, sizeof *res);
        return rc;
    }
    res->state_path = state_path;
    return DL_OK;
}
