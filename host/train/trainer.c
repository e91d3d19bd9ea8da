/* trainer.c - the training loop of `danlu train` (a LoRA) and `danlu finetune` (every UNet
 * weight): load, data, what trains, objective, AdamW, schedules, logs, atomic saves with ss_*
 * metadata, states, Ctrl-C and resume. The two differ only in the parameter set the optimizer
 * updates (train/param_set.h) and in what a save writes (a LoRA file, or the whole model as a
 * checkpoint through lora/ckpt_tools.h). */
#include "train/trainer.h"
#include "train/outputs.h"
#include "train/train_sample.h"

#include "backend/backend.h"
#include "core/arena.h"
#include "core/clock.h"
#include "io/hash_cache.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "lora/ckpt_tools.h"
#include "lora/lora_io.h"
#include "lora/lora_net.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/tokenizer.h"
#include "model/unet.h"
#include "model/vae.h"
#include "sample/sd_models.h"
#include "train/batcher.h"
#include "train/clip_train.h"
#include "train/dataset.h"
#include "train/image_prep.h"
#include "train/latent_cache.h"
#include "train/lr_schedule.h"
#include "train/objective.h"
#include "train/param_set.h"
#include "train/plot.h"
#include "train/progress.h"
#include "train/provenance.h"
#include "train/state.h"
#include "train/unet_train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CTX_T 77 /* text context tokens (one 77-token window) */

/* ---- metadata pairs ---- */
typedef struct kv_list {
    int n, cap;
    char **kv; /* [2n] */
} kv_list;

static void kv_add(kv_list *l, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void kv_add(kv_list *l, const char *key, const char *fmt, ...)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        char **nk = realloc(l->kv, sizeof *nk * 2 * (size_t)cap);
        if (!nk) return;
        l->kv = nk;
        l->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    char *v = NULL;
    if (vasprintf(&v, fmt, ap) < 0) v = NULL;
    va_end(ap);
    char *k = strdup(key);
    if (!v || !k) { free(v); free(k); return; }
    l->kv[2 * l->n] = k;
    l->kv[2 * l->n + 1] = v;
    l->n++;
}

/* Replace a key's value (or add it). */
static void kv_set(kv_list *l, const char *key, const char *val)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->kv[2 * i], key)) {
            char *v = strdup(val);
            if (v) { free(l->kv[2 * i + 1]); l->kv[2 * i + 1] = v; }
            return;
        }
    kv_add(l, key, "%s", val);
}

static const char *kv_get(const kv_list *l, const char *key)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->kv[2 * i], key)) return l->kv[2 * i + 1];
    return NULL;
}

static void kv_free(kv_list *l)
{
    for (int i = 0; i < 2 * l->n; i++) free(l->kv[i]);
    free(l->kv);
    memset(l, 0, sizeof *l);
}

/* A UNet tensor as a full fine-tuning load placed it (to write the model back). */
typedef struct ft_tensor {
    char *name;         /* diffusers name ("conv_in.weight") */
    int ndim;
    int64_t shape[4];   /* PyTorch shape */
    size_t off;         /* bytes into the UNet weights arena */
    int conv;           /* stored [cout, k, k, cin] (written back as [cout, cin, k, k]) */
    dl_part part;
} ft_tensor;

/* ---- the trainer ---- */
typedef struct trainer {
    const dl_train_config *cfg;
    const dl_trainer_opts *opts;
    dl_hash_cache hash_cache;   /* the user's, or disabled (no_hash_cache) */
    dl_hash_job model_hash;     /* SHA-256 of a single-file base model, on its own thread */
    int model_hashing;          /* 1 while model_hash runs (waited for at the first save) */
    dl_phases phases;           /* verbose: time of each phase */
    FILE *log;
    dl_ctx ctx;
    int ctx_ok;
    uint64_t seed;
    dl_checkpoint ck;
    int ck_ok;
    dl_tokenizer *tok;
    dl_arena w_clip, w_unet, w_vae; /* frozen weights, one arena per network (freed apart) */
    dl_clip clip;
    dl_unet unet;
    dl_vae vae;
    int have_clip, have_unet, have_vae;
    int v_pred;
    float scaling;
    int vae_f, C;                 /* latent factor and channels */
    int clip_layers;              /* layers to run for clip skip */
    dl_dataset ds;
    int ds_ok;
    dl_lora_net net;
    int net_ok, attached;
    /* full fine-tuning (cfg->finetune): every UNet weight trains in place in w_unet */
    int ft;
    char *ft_grads;               /* [w_unet.cap bytes] their gradients at the weights' offsets (backend memory) */
    size_t ft_unet_bytes;         /* w_unet's UNet part; the text encoder's follows with train_text_encoder */
    dl_part ft_part;              /* the part being loaded (ft_placed records it) */
    ft_tensor *ft_t;              /* the UNet's tensors as placed, in load order */
    int ft_n, ft_cap;
    float *ft_host;               /* a host copy of w_unet for files (NULL on the CPU: the arena itself) */
    dl_param_set ps;              /* what the optimizer updates: the LoRA's, or the UNet's weights */
    int train_te;
    /* SDXL (ck.sdxl): the second text encoder and its tokenizer. The UNet's context is the two
     * encoders' penultimate hidden states side by side [.., 77, D1 + D2]; it also takes the
     * second's pooled, projected embedding and six time ids per image (original size, crop
     * top-left, target size), as sd-scripts' sdxl_train_network.py */
    int xl;
    dl_tokenizer *tok2;           /* pads with "!" */
    dl_arena w_clip2;
    dl_clip clip2;
    int have_clip2;
    int D1, D2, Dp;               /* widths of the text encoders' hidden states and of the pooled embedding */
    float *pooled_cache;          /* [n_items, Dp] beside emb_cache */
    float *text_embeds;           /* [B, Dp] */
    float *time_ids;              /* [B, 6] */
    int32_t *ids2;                /* [B, 77] the second tokenizer's ids */
    int *eos;                     /* [B] where each ids2 row pools (dl_clip_eos_positions) */
    float *dtext;                 /* [B, Dp] d loss / d text_embeds (train_te; backend memory) */
    dl_clip_tape te_tape2, te_tape3; /* train_te: the second encoder to its penultimate layer, and to
                                        its last hidden state for the pooled embedding */
    dl_objective *obj;
    dl_batcher batcher;
    int batcher_ok;
    dl_augment_cfg aug;
    int static_captions;          /* captions never change: text embeddings cached per item */
    float *emb_cache;             /* [n_items, 77, Ctx] when static_captions && !train_te */
    dl_latent_cache lc;
    int lc_ok;
    /* sizes */
    int B;                        /* batch size */
    int max_lat_hw;               /* max h*w of a latent over the buckets */
    int max_img_hw;               /* max H*W of an image */
    int Dc;                       /* context width */
    /* arenas and buffers (sized once) */
    dl_arena act, scratch, te_arena;
    float *img;                   /* [B, H, W, 3] */
    float *mean, *logvar, *vnoise;/* [h, w, C] one sample's VAE outputs */
    float *latents, *noise, *noisy, *target, *pred, *dpred, *tmp; /* [B, h, w, C] */
    float *context, *dcontext;    /* [B, 77, Dc] */
    float *tf;                    /* [B] timesteps as floats */
    int64_t *t;                   /* [B] */
    float *w;                     /* [B] loss weights */
    int32_t *ids;                 /* [B, 77] */
    float *m, *v;                 /* AdamW moments [n_params] */
    float *scal;                  /* [4] scalars: loss, gradient sum of squares, clip coef */
    /* the backend's copies of what the steps compute on: the host arrays above themselves on
     * the CPU backend; on a device backend, device memory that the host fills only by upload
     * (the batch's inputs) and reads only by download (the loss; params, m, v when saving) */
    int dev;                      /* 1: a device backend */
    /* device backends: a micro-batch's inputs go up on a transfer stream into one of two sets
     * (page-locked host arrays to device buffers), the set the micro-batch before last used;
     * events order the upload after that step's reads (used) and the step after the upload (up) */
    struct { float *noisy, *target, *tf, *w; } in[2]; /* [B, h, w, C] x2, [B] x2 */
    int next_slot, used_rec[2];
    dl_be_stream *xfer;
    dl_be_event *up[2], *used[2];
    struct {
        float *img, *noisy, *target, *pred, *dpred, *context, *dcontext, *tf, *w, *m, *v, *scal;
        int32_t *ids;
        float *text_embeds, *time_ids; /* SDXL */
        int32_t *ids2;
    } d;
    dl_batch batch;
    int batch_ok;
    struct {                      /* on a device backend, the next micro-batch is drawn and prepared
                                   * on the host while the device runs the current one */
        int ready;                /* batch, latents, noisy, target, tf, w (and ids / context) hold it */
        int slot;                 /* the device input set it was uploaded into */
        int epoch, epoch_end;     /* its epoch (1-based) and whether it ends the epoch */
        dl_batcher_state bs;      /* the data order and generators from before it was drawn: what a */
        dl_rng rng;               /* state saved while it waits records, so a resumed run draws */
        dl_torch_rng noise_rng;   /* it again */
    } pre;
    dl_unet_tape tape;            /* the UNet forward's record (in the trainer: no per-step malloc) */
    dl_clip_tape te_tape;         /* the text encoder forward's record (train_te) */
    dl_image_reader reader;       /* image decoding without per-step allocations (latents not cached) */
    dl_prep_work prep;            /* resize working memory */
    dl_tok_work tok_work;         /* tokenizer working memory (captions change every step) */
    /* schedule */
    dl_lr_schedule lrs;
    int total_steps, steps_per_epoch, num_epochs, batches_per_epoch;
    double unet_lr, te_lr;
    /* bookkeeping */
    dl_rng rng;
    dl_torch_rng noise_rng;
    char *signature;
    char *config_json;
    kv_list meta;
    dl_prov_writer prov;          /* the provenance record (train/provenance.h), printed at each save */
    char started_at[64];
    dl_progress prog;
    int prog_ok;
    /* sample images */
    dl_train_prompt *prompts;
    int n_prompts;
    dl_train_sampler *sampler;
} trainer;

static void say(trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(trainer *t, const char *fmt, ...)
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

/* ---- latents ---- */
/* Encode one prepared image into scaled latents: mean + exp(logvar / 2) noise with the noise
 * drawn from a generator seeded by (seed, item), so cached and uncached runs agree. */
#define MIB(b) ((double)(b) / 1048576.0)

static int encode_item(void *user, int item, int H, int W, const float *img, float *latent)
{
    trainer *t = user;
    size_t mark = dl_arena_mark(&t->scratch);
    if (t->dev) DL_TRY(dl_be_upload(&t->ctx, t->d.img, img, (size_t)H * W * 3 * sizeof(float)));
    dl_vae_encode(&t->ctx, &t->vae, 1, H, W, t->dev ? t->d.img : img, t->mean, t->logvar, &t->scratch);
    dl_arena_release(&t->scratch, mark);
    DL_TRY(dl_be_sync(&t->ctx));
    int64_t n = (int64_t)(H / t->vae_f) * (W / t->vae_f) * t->C;
    dl_torch_rng g;
    dl_torch_rng_seed(&g, t->seed * 1000003ull + (uint64_t)item + 1);
    /* torch.randn of the NCHW latent (diffusers' latent_dist.sample(generator)), to NHWC */
    const int64_t HW = n / t->C;
    dl_torch_randn(&g, t->tmp, (size_t)n);
    for (int c = 0; c < t->C; c++)
        for (int64_t p = 0; p < HW; p++) t->vnoise[p * t->C + c] = t->tmp[c * HW + p];
    dl_vae_sample(n, t->mean, t->logvar, t->vnoise, latent);
    for (int64_t i = 0; i < n; i++) latent[i] *= t->scaling;
    return DL_OK;
}

/* Latents of the batch into t->latents ([n, h, w, C]). */
static int batch_latents(trainer *t, const dl_batch *b)
{
    const int H = b->reso.h, W = b->reso.w;
    const int64_t D = (int64_t)(H / t->vae_f) * (W / t->vae_f) * t->C;
    for (int i = 0; i < b->n; i++) {
        const dl_dataset_item *it = &t->ds.items[b->items[i]];
        if (t->lc_ok) {
            const float *l = dl_latent_cache_get(&t->lc, b->items[i], b->flip[i]);
            memcpy(t->latents + i * D, l, sizeof(float) * (size_t)D);
            continue;
        }
        dl_image img; /* borrowed from the reader */
        DL_TRY(dl_image_read(&t->reader, it->image_path, &img));
        dl_image_prep_w(t->ctx.pool, &t->prep, &img, it->resized, b->reso, b->crop_x[i], b->crop_y[i], b->flip[i],
                        t->img);
        DL_TRY(encode_item(t, b->items[i], H, W, t->img, t->latents + i * D));
    }
    return DL_OK;
}

/* ---- SDXL's conditioning ---- */
/* Scratch an SDXL encoding of n captions takes beside the text encoders' own: both penultimate
 * hidden states and the second encoder's last one. */
static size_t xl_encode_bytes(const trainer *t, int n)
{
    return (size_t)n * CTX_T * (t->D1 + 2 * t->D2) * sizeof(float) + 3 * 64;
}

/* Both text encoders on ids [n, 77] and ids2 [n, 77] (backend memory; ids2_host for the pooling
 * positions) as sd-scripts' get_hidden_states_sdxl: context [n, 77, D1 + D2] = the first's and
 * the second's penultimate hidden states (before the final layer norm) side by side, pooled
 * [n, Dp] = the second's text_projection of its last hidden state (after the final layer norm)
 * at each sequence's EOS. */
static void xl_encode(trainer *t, int n, const int32_t *ids, const int32_t *ids2, const int32_t *ids2_host,
                      float *context, float *pooled)
{
    const int64_t M = (int64_t)n * CTX_T;
    const size_t mark = dl_arena_mark(&t->scratch);
    float *h1 = dl_alloc_f32(&t->scratch, M * t->D1), *h2 = dl_alloc_f32(&t->scratch, M * t->D2);
    float *last = dl_alloc_f32(&t->scratch, M * t->D2);
    dl_clip_forward(&t->ctx, &t->clip, n, CTX_T, ids, t->clip.cfg.num_layers - 1, 0, h1, &t->scratch);
    dl_clip_forward(&t->ctx, &t->clip2, n, CTX_T, ids2, t->clip2.cfg.num_layers - 1, 0, h2, &t->scratch);
    dl_be(&t->ctx)->concat_channels_forward(&t->ctx, M, t->D1, t->D2, h1, h2, context);
    dl_clip_forward(&t->ctx, &t->clip2, n, CTX_T, ids2, t->clip2.cfg.num_layers, 1, last, &t->scratch);
    dl_clip_eos_positions(&t->clip2.cfg, n, CTX_T, ids2_host, t->eos);
    dl_clip_pooled(&t->ctx, &t->clip2, n, CTX_T, t->eos, last, pooled, &t->scratch);
    dl_arena_release(&t->scratch, mark);
}

/* One caption through both tokenizers into ids [77] and ids2 [77]. */
static int xl_tokenize(trainer *t, const char *caption, int32_t *ids, int32_t *ids2)
{
    DL_TRY(dl_tokenizer_encode_padded_w(t->tok, &t->tok_work, caption, ids));
    return dl_tokenizer_encode_padded_w(t->tok2, &t->tok_work, caption, ids2);
}

/* The time ids of one image, as sd-scripts' dataset gives them for SDXL: the image's size before
 * any resize (h, w), the crop top-left that BucketManager.get_crop_ltrb computes from the bucket
 * and that size (Stability AI's rule: the image fitted inside the bucket and centred, whatever
 * crop the training image itself gets; mirrored with the image under flip_aug), and the bucket
 * size (h, w). out [6]: original h, w, crop top, left, target h, w. */
void dl_train_xl_time_ids(int img_w, int img_h, int bucket_w, int bucket_h, int flipped, float out[6])
{
    const double bar = (double)bucket_w / bucket_h, iar = (double)img_w / img_h;
    double rw, rh; /* the image resized to fit inside the bucket */
    if (bar > iar) rw = bucket_h * iar, rh = bucket_h;
    else rw = bucket_w, rh = bucket_w / iar;
    const double left = floor((bucket_w - rw) / 2), top = floor((bucket_h - rh) / 2), right = left + rw;
    const double crop_left = flipped ? bucket_w - right : left; /* int() of a value >= 0: floor */
    out[0] = (float)img_h, out[1] = (float)img_w;
    out[2] = (float)floor(top), out[3] = (float)floor(crop_left);
    out[4] = (float)bucket_h, out[5] = (float)bucket_w;
}

/* The batch's time ids [n, 6] and, uploaded, d.time_ids. */
static int batch_time_ids(trainer *t, const dl_batch *b)
{
    for (int i = 0; i < b->n; i++) {
        const dl_dataset_item *it = &t->ds.items[b->items[i]];
        dl_train_xl_time_ids(it->w, it->h, b->reso.w, b->reso.h, b->flip[i], t->time_ids + 6 * i);
    }
    if (t->dev) DL_TRY(dl_be_upload(&t->ctx, t->d.time_ids, t->time_ids, sizeof(float) * 6 * (size_t)b->n));
    return DL_OK;
}

/* SDXL: context [n, 77, D1 + D2] and pooled text embeddings [n, Dp] of the batch (text encoders
 * frozen), from the caches or encoded now. */
static int batch_context_xl(trainer *t, const dl_batch *b)
{
    const int64_t E = (int64_t)CTX_T * t->Dc;
    if (t->emb_cache) {
        for (int i = 0; i < b->n; i++) {
            const int64_t it = b->items[i];
            DL_TRY(dl_be_upload(&t->ctx, t->d.context + i * E, t->emb_cache + it * E, sizeof(float) * (size_t)E));
            DL_TRY(dl_be_upload(&t->ctx, t->d.text_embeds + i * t->Dp, t->pooled_cache + it * t->Dp,
                                sizeof(float) * (size_t)t->Dp));
        }
        return DL_OK;
    }
    for (int i = 0; i < b->n; i++)
        if (xl_tokenize(t, b->captions[i], t->ids + i * CTX_T, t->ids2 + i * CTX_T) != DL_OK)
            return dl_error_prefix("caption of %s: ", t->ds.items[b->items[i]].image_path);
    if (t->dev) {
        DL_TRY(dl_be_upload(&t->ctx, t->d.ids, t->ids, sizeof(int32_t) * (size_t)b->n * CTX_T));
        DL_TRY(dl_be_upload(&t->ctx, t->d.ids2, t->ids2, sizeof(int32_t) * (size_t)b->n * CTX_T));
    }
    xl_encode(t, b->n, t->d.ids, t->d.ids2, t->ids2, t->d.context, t->d.text_embeds);
    return DL_OK;
}

/* Context [n, 77, Dc] of the batch (text encoder frozen). */
static int batch_context_frozen(trainer *t, const dl_batch *b)
{
    const int64_t E = (int64_t)CTX_T * t->Dc;
    if (t->xl) return batch_context_xl(t, b);
    if (t->emb_cache) {
        for (int i = 0; i < b->n; i++)
            DL_TRY(dl_be_upload(&t->ctx, t->d.context + i * E, t->emb_cache + (int64_t)b->items[i] * E,
                                sizeof(float) * (size_t)E));
        return DL_OK;
    }
    for (int i = 0; i < b->n; i++)
        if (dl_tokenizer_encode_padded_w(t->tok, &t->tok_work, b->captions[i], t->ids + i * CTX_T) != DL_OK)
            return dl_error_prefix("caption of %s: ", t->ds.items[b->items[i]].image_path);
    if (t->dev) DL_TRY(dl_be_upload(&t->ctx, t->d.ids, t->ids, sizeof(int32_t) * (size_t)b->n * CTX_T));
    size_t mark = dl_arena_mark(&t->scratch);
    dl_clip_forward(&t->ctx, &t->clip, b->n, CTX_T, t->d.ids, t->clip_layers, 1, t->d.context, &t->scratch);
    dl_arena_release(&t->scratch, mark);
    return DL_OK;
}

/* ---- network signature (must match on resume) ---- */
static char *net_signature(const dl_lora_net *net)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < net->n; i++) {
        const dl_lora_module *m = &net->mods[i];
        char buf[256];
        int len = snprintf(buf, sizeof buf, "%s|%d|%d|%d|%d|%g;", m->name, m->lora.r, m->k, m->in, m->out, m->alpha);
        for (int j = 0; j < len; j++) { h ^= (unsigned char)buf[j]; h *= 1099511628211ull; }
    }
    char *s = NULL;
    if (asprintf(&s, "modules=%d params=%lld fnv=%016" PRIx64, net->n, (long long)net->n_params, h) < 0) return NULL;
    return s;
}

/* ---- ss_* metadata ---- */
static void fmt_py_float(char *buf, size_t cap, double v)
{
    /* Python's str(float) for the usual values: shortest repr */
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strchr(buf, '.') && !strchr(buf, 'e') && !strchr(buf, 'n') && !strchr(buf, 'i')) strncat(buf, ".0", cap - strlen(buf) - 1);
}

static const char *py_bool(int b) { return b ? "True" : "False"; }

static int build_metadata(trainer *t)
{
    const dl_train_config *c = t->cfg;
    kv_list *m = &t->meta;
    char f1[64];
    time_t now = time(NULL);
    snprintf(t->started_at, sizeof t->started_at, "%.6f", (double)now);
    kv_add(m, "ss_session_id", "%u", (unsigned)(t->seed * 2654435761u) & 0x7fffffff);
    kv_add(m, "ss_training_started_at", "%s", t->started_at);
    kv_add(m, "ss_output_name", "%s", c->output_name);
    fmt_py_float(f1, sizeof f1, c->learning_rate);
    kv_add(m, "ss_learning_rate", "%s", f1);
    if (isnan(c->text_encoder_lr)) kv_add(m, "ss_text_encoder_lr", "None"); /* the first value: networks.lora's */
    else { fmt_py_float(f1, sizeof f1, c->text_encoder_lr); kv_add(m, "ss_text_encoder_lr", "%s", f1); }
    if (isnan(c->unet_lr)) kv_add(m, "ss_unet_lr", "None");
    else { fmt_py_float(f1, sizeof f1, c->unet_lr); kv_add(m, "ss_unet_lr", "%s", f1); }
    kv_add(m, "ss_num_train_images", "%lld", (long long)t->ds.num_train_images);
    kv_add(m, "ss_num_reg_images", "0");
    kv_add(m, "ss_num_batches_per_epoch", "%d", t->batches_per_epoch);
    kv_add(m, "ss_num_epochs", "%d", t->num_epochs);
    kv_add(m, "ss_gradient_checkpointing", "%s", py_bool(c->gradient_checkpointing));
    kv_add(m, "ss_gradient_accumulation_steps", "%d", c->gradient_accumulation_steps);
    kv_add(m, "ss_max_train_steps", "%d", t->total_steps);
    kv_add(m, "ss_lr_warmup_steps", "%d", c->lr_warmup_steps);
    kv_add(m, "ss_lr_scheduler", "%s", c->lr_scheduler);
    if (!t->ft) { /* a LoRA's network (full fine-tuning trains the UNet itself) */
        kv_add(m, "ss_network_module", "networks.lora");
        kv_add(m, "ss_network_dim", "%d", c->network_dim);
        fmt_py_float(f1, sizeof f1, c->network_alpha);
        kv_add(m, "ss_network_alpha", "%s", f1);
        kv_add(m, "ss_network_dropout", "None");
        {
            cJSON *o = cJSON_CreateObject();
            for (int i = 0; i < c->network_args.n; i++) {
                char key[64];
                const char *eq = strchr(c->network_args.v[i], '=');
                if (!eq) continue;
                snprintf(key, sizeof key, "%.*s", (int)(eq - c->network_args.v[i]), c->network_args.v[i]);
                cJSON_AddStringToObject(o, key, eq + 1);
            }
            char *s = cJSON_PrintUnformatted(o);
            if (c->network_args.n) kv_add(m, "ss_network_args", "%s", s ? s : "{}");
            free(s);
            cJSON_Delete(o);
        }
        kv_add(m, "ss_network_train_unet_only", "%s", py_bool(!t->train_te));
    }
    kv_add(m, "ss_mixed_precision", "%s", strcmp(c->mixed_precision, "bf16") == 0 ? "bf16" : "no");
    kv_add(m, "ss_full_fp16", "False");
    kv_add(m, "ss_v2", "%s", py_bool(t->ck.sd2 && !t->xl));
    kv_add(m, "ss_base_model_version", "%s",
           t->xl ? "sdxl_base_v1-0" : t->ck.sd2 ? (t->v_pred ? "sd_v2_768_v" : "sd_v2_512") : "sd_v1");
    kv_add(m, "ss_v_parameterization", "%s", py_bool(t->v_pred));
    kv_add(m, "ss_resolution", "(%d, %d)", c->res_w, c->res_h);
    kv_add(m, "ss_clip_skip", "%d", c->clip_skip);
    kv_add(m, "ss_max_token_length", "None");
    kv_add(m, "ss_cache_latents", "%s", py_bool(c->cache_latents));
    kv_add(m, "ss_seed", "%" PRIu64, t->seed);
    kv_add(m, "ss_lowram", "False");
    if (isnan(c->noise_offset)) kv_add(m, "ss_noise_offset", "None");
    else { fmt_py_float(f1, sizeof f1, c->noise_offset); kv_add(m, "ss_noise_offset", "%s", f1); }
    if (isnan(c->min_snr_gamma)) kv_add(m, "ss_min_snr_gamma", "None");
    else { fmt_py_float(f1, sizeof f1, c->min_snr_gamma); kv_add(m, "ss_min_snr_gamma", "%s", f1); }
    kv_add(m, "ss_multires_noise_iterations", "None");
    kv_add(m, "ss_adaptive_noise_scale", "None");
    kv_add(m, "ss_zero_terminal_snr", "False");
    kv_add(m, "ss_training_comment", "%s", c->training_comment ? c->training_comment : "None");
    {
        char wd[64], e[64], b1[64], b2[64];
        fmt_py_float(wd, sizeof wd, c->weight_decay);
        fmt_py_float(e, sizeof e, c->adam_eps);
        fmt_py_float(b1, sizeof b1, c->adam_beta1);
        fmt_py_float(b2, sizeof b2, c->adam_beta2);
        kv_add(m, "ss_optimizer", "torch.optim.adamw.AdamW(weight_decay=%s,betas=(%s, %s),eps=%s)", wd, b1, b2, e);
    }
    fmt_py_float(f1, sizeof f1, c->max_grad_norm);
    kv_add(m, "ss_max_grad_norm", "%s", f1);
    fmt_py_float(f1, sizeof f1, c->caption_dropout_rate);
    kv_add(m, "ss_caption_dropout_rate", "%s", f1);
    kv_add(m, "ss_caption_dropout_every_n_epochs", "%d", c->caption_dropout_every_n_epochs);
    fmt_py_float(f1, sizeof f1, c->caption_tag_dropout_rate);
    kv_add(m, "ss_caption_tag_dropout_rate", "%s", f1);
    kv_add(m, "ss_face_crop_aug_range", "None");
    kv_add(m, "ss_prior_loss_weight", "1.0");
    kv_add(m, "ss_loss_type", "l2");
    kv_add(m, "ss_enable_bucket", "%s", py_bool(c->enable_bucket));
    kv_add(m, "ss_min_bucket_reso", "%d", c->min_bucket_reso);
    kv_add(m, "ss_max_bucket_reso", "%d", c->max_bucket_reso);
    kv_add(m, "ss_keep_tokens", "%d", c->keep_tokens);
    kv_add(m, "ss_shuffle_caption", "%s", py_bool(c->shuffle_caption));
    kv_add(m, "ss_color_aug", "False");
    kv_add(m, "ss_flip_aug", "%s", py_bool(c->flip_aug));
    kv_add(m, "ss_random_crop", "%s", py_bool(c->random_crop));
    kv_add(m, "ss_bucket_no_upscale", "%s", py_bool(c->bucket_no_upscale));
    kv_add(m, "ss_total_batch_size", "%d", c->train_batch_size * c->gradient_accumulation_steps);
    kv_add(m, "ss_batch_size_per_device", "%d", c->train_batch_size);
    kv_add(m, "ss_reg_dataset_dirs", "{}");
    {
        const char *base = strrchr(c->pretrained_model_name_or_path, '/');
        base = base && base[1] ? base + 1 : c->pretrained_model_name_or_path;
        kv_add(m, "ss_sd_model_name", "%s", base);
        /* sd-scripts: the A1111 legacy hash (8 hex of SHA-256 over 64 KiB at 1 MiB) and the
         * full-file SHA-256 of a single-file base model */
        struct stat st;
        if (stat(c->pretrained_model_name_or_path, &st) == 0 && S_ISREG(st.st_mode)) {
            char hex[65]; /* ss_new_sd_model_hash: from t->model_hash at the first save */
            if (dl_hash_file(&t->hash_cache, c->pretrained_model_name_or_path, 0x100000, 0x10000, hex, NULL) == DL_OK) {
                hex[8] = 0;
                kv_add(m, "ss_sd_model_hash", "%s", hex);
            }
        }
    }
    /* dataset dirs, tag frequency, buckets */
    {
        cJSON *dirs = cJSON_CreateObject(), *freq = cJSON_CreateObject();
        for (int s = 0; s < t->ds.n_subsets; s++) {
            const dl_dataset_subset *sub = &t->ds.subsets[s];
            const char *name = strrchr(sub->dir, '/');
            name = name && name[1] ? name + 1 : sub->dir;
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "n_repeats", sub->num_repeats);
            cJSON_AddNumberToObject(d, "img_count", sub->n_images);
            cJSON_AddItemToObject(dirs, name, d);
            cJSON *tf = cJSON_CreateObject();
            for (int i = 0; i < t->ds.n_items; i++) {
                if (t->ds.items[i].subset != s || !t->ds.items[i].caption) continue;
                char *cap = strdup(t->ds.items[i].caption);
                if (!cap) continue;
                for (char *tok = strtok(cap, ","); tok; tok = strtok(NULL, ",")) {
                    while (*tok == ' ') tok++;
                    char *e = tok + strlen(tok);
                    while (e > tok && e[-1] == ' ') *--e = 0;
                    if (!*tok) continue;
                    cJSON *cnt = cJSON_GetObjectItemCaseSensitive(tf, tok);
                    if (cnt) cJSON_SetNumberValue(cnt, cnt->valuedouble + 1);
                    else cJSON_AddNumberToObject(tf, tok, 1);
                }
                free(cap);
            }
            cJSON_AddItemToObject(freq, name, tf);
        }
        char *s1 = cJSON_PrintUnformatted(dirs), *s2 = cJSON_PrintUnformatted(freq);
        kv_add(m, "ss_dataset_dirs", "%s", s1 ? s1 : "{}");
        kv_add(m, "ss_tag_frequency", "%s", s2 ? s2 : "{}");
        free(s1);
        free(s2);
        cJSON_Delete(dirs);
        cJSON_Delete(freq);
        cJSON *bi = cJSON_CreateObject(), *bk = cJSON_CreateObject();
        int64_t *counts = calloc((size_t)t->ds.buckets.n_used + 1, sizeof *counts);
        if (counts) dl_dataset_bucket_counts(&t->ds, counts);
        for (int i = 0; i < t->ds.buckets.n_used; i++) {
            char key[16];
            snprintf(key, sizeof key, "%d", i);
            cJSON *e = cJSON_CreateObject();
            cJSON *r = cJSON_CreateArray();
            cJSON_AddItemToArray(r, cJSON_CreateNumber(t->ds.buckets.used[i].w));
            cJSON_AddItemToArray(r, cJSON_CreateNumber(t->ds.buckets.used[i].h));
            cJSON_AddItemToObject(e, "resolution", r);
            cJSON_AddNumberToObject(e, "count", counts ? (double)counts[i] : 0);
            cJSON_AddItemToObject(bk, key, e);
        }
        free(counts);
        cJSON_AddItemToObject(bi, "buckets", bk);
        char *s3 = cJSON_PrintUnformatted(bi);
        if (c->enable_bucket) kv_add(m, "ss_bucket_info", "%s", s3 ? s3 : "{}");
        free(s3);
        cJSON_Delete(bi);
    }
    /* modelspec (Stability AI model spec 1.0.0) */
    kv_add(m, "modelspec.sai_model_spec", "1.0.0");
    kv_add(m, "modelspec.architecture", "%s%s",
           t->xl ? "stable-diffusion-xl-v1-base"
           : t->ck.sd2 ? (t->v_pred ? "stable-diffusion-v2-768-v" : "stable-diffusion-v2-512") : "stable-diffusion-v1",
           t->ft ? "" : "/lora");
    /* sd-scripts: Stability AI's implementation for SDXL LoRAs, diffusers' otherwise */
    kv_add(m, "modelspec.implementation", "%s",
           t->xl && !t->ft ? "https://github.com/Stability-AI/generative-models" : "diffusers");
    kv_add(m, "modelspec.title", "%s", c->output_name);
    kv_add(m, "modelspec.resolution", "%dx%d", c->res_w, c->res_h);
    kv_add(m, "modelspec.prediction_type", "%s", t->v_pred ? "v" : "epsilon");
    {
        struct tm tmv;
        char d[64];
        gmtime_r(&now, &tmv);
        strftime(d, sizeof d, "%Y-%m-%dT%H:%M:%S", &tmv);
        kv_add(m, "modelspec.date", "%s", d);
    }
    if (c->training_comment) kv_add(m, "modelspec.description", "%s", c->training_comment);
    kv_add(m, "danlu.config", "%s", t->config_json ? t->config_json : "{}");
    /* the provenance record: the dataset's hashes now (one read and decode per image, before the
     * steps), the rest at each save (save_lora) */
    double t0 = dl_now_seconds();
    DL_TRY(dl_prov_writer_begin(&t->prov, &t->ds, &t->ck, &t->hash_cache, t->config_json ? t->config_json : "{}",
                                t->seed, t->ctx.pool ? dl_pool_nthreads(t->ctx.pool) : 1, dl_be(&t->ctx)->name, t->ctx.pool));
    dl_phases_add(&t->phases, "provenance hashes", dl_now_seconds() - t0);
    return DL_OK;
}

/* ---- saving ---- */
/* The base model's SHA-256 (sd-scripts' ss_new_sd_model_hash) into the metadata, once: the hash
 * ran on its own thread since setup and is waited for here, where it is first written. */
static void finish_model_hash(trainer *t)
{
    if (!t->model_hashing) return;
    double t0 = dl_now_seconds();
    char hex[65];
    int hit = 0;
    if (dl_hash_job_wait(&t->model_hash, hex, &hit) == DL_OK) kv_set(&t->meta, "ss_new_sd_model_hash", hex);
    else say(t, "warning: no base-model hash in the LoRA metadata: %s", dl_error_msg());
    t->model_hashing = 0;
    dl_phases_add(&t->phases, hit ? "hash wait (cached)" : "hash wait", dl_now_seconds() - t0);
}

static const float *pull_params(trainer *t);

/* ---- full fine-tuning: the model written back ---- */
typedef struct ft_writer {
    trainer *t;
    const float *host;  /* the UNet weights arena's contents */
    int cursor;         /* where the next name is expected (the writer lists in load order) */
} ft_writer;

static const ft_tensor *ft_find(ft_writer *w, const char *name)
{
    trainer *t = w->t;
    for (int k = 0; k < t->ft_n; k++) {
        const int i = (w->cursor + k) % t->ft_n;
        if (!strcmp(t->ft_t[i].name, name)) {
            w->cursor = i + 1;
            return &t->ft_t[i];
        }
    }
    return NULL;
}

/* dl_ckpt_write's source of the UNet's weights: the trained values, back in PyTorch's layout. */
static int ft_fill(void *user, dl_part part, const char *name, int ndim, const int64_t *shape, float *out)
{
    ft_writer *w = user;
    if (part == DL_PART_VAE || (part == DL_PART_TEXT && !w->t->train_te)) return 0; /* frozen: as they are */
    const ft_tensor *e = ft_find(w, name);
    if (!e || e->part != part) return dl_error_set("%s weight %s: not among the trained weights", dl_part_name(part), name);
    int64_t n = 1, m = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    for (int i = 0; i < e->ndim; i++) m *= e->shape[i];
    if (n != m) return dl_error_set("UNet weight %s: %lld values written, %lld trained", name, (long long)n, (long long)m);
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

/* The whole model (the UNet as trained, the VAE and text encoder as loaded) to path in the
 * layout of save_model_as, every weight in dt. */
static int save_model(trainer *t, const char *path, dl_dtype dt)
{
    ft_writer w = {t, pull_params(t), 0};
    if (!w.host) return DL_ERR;
    const int layout = strcmp(t->cfg->save_model_as, "diffusers") == 0 ? DL_LAYOUT_DIFFUSERS : DL_LAYOUT_SINGLE;
    return dl_ckpt_write(&t->ck, path, layout, (int)dt, ft_fill, &w, (const char *const *)t->meta.kv, t->meta.n, 1,
                         NULL);
}

static int save_lora(trainer *t, const char *path, int step, int epoch)
{
    finish_model_hash(t);
    double t0 = dl_now_seconds();
    char buf[64];
    snprintf(buf, sizeof buf, "%.6f", (double)time(NULL));
    kv_set(&t->meta, "ss_training_finished_at", buf);
    snprintf(buf, sizeof buf, "%d", step);
    kv_set(&t->meta, "ss_steps", buf);
    snprintf(buf, sizeof buf, "%d", epoch);
    kv_set(&t->meta, "ss_epoch", buf);
    char *prov = dl_prov_writer_json(&t->prov, step, epoch, kv_get(&t->meta, "ss_new_sd_model_hash"), t->log);
    if (!prov) return dl_error_set("%s: out of memory writing the provenance record", path);
    kv_set(&t->meta, DL_PROV_KEY, prov);
    free(prov);
    dl_dtype dt = t->cfg->save_dtype == DL_SAVE_FP16 ? DL_F16 : t->cfg->save_dtype == DL_SAVE_BF16 ? DL_BF16 : DL_F32;
    int rc;
    if (t->ft) {
        rc = save_model(t, path, dt);
    } else {
        dl_lora_format fmt = strcmp(t->cfg->lora_format, "peft") == 0 ? DL_LORA_FMT_PEFT : DL_LORA_FMT_KOHYA;
        rc = dl_lora_net_pull(&t->net);
        if (rc == DL_OK) rc = dl_lora_save(path, &t->net, fmt, dt, (const char *const *)t->meta.kv, t->meta.n);
    }
    dl_phases_add(&t->phases, "save", dl_now_seconds() - t0);
    return rc;
}

/* AdamW's moments between the backend (d.m, d.v) and the host arrays (m, v): no-ops on the CPU. */
static int pull_moments(trainer *t)
{
    const size_t b = sizeof(float) * (size_t)t->ps.n;
    if (!t->dev) return DL_OK;
    DL_TRY(dl_be_download(&t->ctx, t->m, t->d.m, b));
    return dl_be_download(&t->ctx, t->v, t->d.v, b);
}
static int push_moments(trainer *t)
{
    const size_t b = sizeof(float) * (size_t)t->ps.n;
    if (!t->dev) return DL_OK;
    DL_TRY(dl_be_upload(&t->ctx, t->d.m, t->m, b));
    return dl_be_upload(&t->ctx, t->d.v, t->v, b);
}

/* The trained parameters' host copy, brought up to date (LoRA: dl_lora_net_pull; full
 * fine-tuning: the UNet weights arena downloaded, or the arena itself on the CPU). */
static const float *pull_params(trainer *t)
{
    if (!t->ft) return dl_lora_net_pull(&t->net) == DL_OK ? t->net.host : NULL;
    if (!t->dev) return t->ps.p;
    return dl_be_download(&t->ctx, t->ft_host, t->ps.p, sizeof(float) * (size_t)t->ps.n) == DL_OK ? t->ft_host : NULL;
}
/* Set the trained parameters from host values (a resumed state). */
static int push_params(trainer *t, const float *host)
{
    if (!t->ft) {
        memcpy(t->net.host, host, sizeof(float) * (size_t)t->ps.n);
        return dl_lora_net_push(&t->net);
    }
    return dl_be_upload(&t->ctx, t->ps.p, host, sizeof(float) * (size_t)t->ps.n);
}

static int save_state(trainer *t, const char *path, int step, int epoch, int64_t micro)
{
    uint64_t words[DL_BATCHER_STATE_WORDS];
    dl_batcher_state bs;
    dl_batcher_get_state(&t->batcher, &bs);
    if (t->pre.ready) bs = t->pre.bs; /* a prefetched batch is not consumed yet */
    dl_batcher_state_pack(&bs, words);
    const float *params = pull_params(t);
    if (!params) return DL_ERR;
    DL_TRY(pull_moments(t));
    dl_train_state s = {
        .step = step, .epoch = epoch, .micro_step = micro, .n_params = t->ps.n,
        .params = (float *)params, .m = t->m, .v = t->v, .rng = t->pre.ready ? t->pre.rng : t->rng,
        .noise_rng = t->pre.ready ? t->pre.noise_rng : t->noise_rng,
        .data_state = (uint8_t *)words, .data_state_len = sizeof words, .signature = t->signature,
        .config_json = t->config_json,
    };
    const char *base = kv_get(&t->meta, "ss_base_model_version"); /* which model the state is for */
    const char *meta[] = {"ss_output_name", t->cfg->output_name, "ss_base_model_version", base ? base : "unknown"};
    return dl_train_state_save(path, &s, meta, 2);
}

/* What a save's file name ends with: ".safetensors", or "" for a diffusers folder. */
static const char *model_ext(const trainer *t)
{
    return t->ft && strcmp(t->cfg->save_model_as, "diffusers") == 0 ? "" : ".safetensors";
}

/* Remove a save: a file, or a diffusers folder and everything in it. 0 when removed. */
static char *out_file(trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *out_file(trainer *t, const char *fmt, ...)
{
    char name[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return dl_train_out_file(t->cfg->output_dir, "%s", name);
}

static void write_plot(trainer *t)
{
    char *png = out_file(t, "%s_loss.png", t->cfg->output_name);
    if (png && dl_plot_loss_png(png, t->prog.loss, t->prog.n_loss) != DL_OK)
        say(t, "warning: loss plot: %s", dl_error_msg());
    free(png);
}

/* Save <stem>.safetensors (and <stem>-state.safetensors with save_state), then remove the save
 * named old_stem (NULL: none) that the keep-last-N rule drops. */
static int save_numbered(trainer *t, const char *stem, const char *old_stem, int step, int epoch, int64_t micro,
                         char **state_path)
{
    char *p = out_file(t, "%s%s", stem, model_ext(t));
    if (!p) return dl_error_set("out of memory");
    int rc = save_lora(t, p, step, epoch);
    if (rc == DL_OK) say(t, "saved %s", p);
    free(p);
    DL_TRY(rc);
    if (t->cfg->save_state) {
        char *sp = out_file(t, "%s-state.safetensors", stem);
        if (!sp) return dl_error_set("out of memory");
        if (save_state(t, sp, step, epoch, micro) != DL_OK) { free(sp); return DL_ERR; }
        free(*state_path);
        *state_path = sp;
    }
    if (old_stem) {
        char *old = out_file(t, "%s%s", old_stem, model_ext(t));
        char *olds = out_file(t, "%s-state.safetensors", old_stem);
        if (old && dl_train_remove_save(old) == 0) say(t, "removed %s", old);
        if (olds) unlink(olds);
        free(old);
        free(olds);
    }
    write_plot(t);
    return DL_OK;
}

/* A step (by_epoch 0) or epoch save, with the keep-last-N rule (outputs.h). */
static int save_at(trainer *t, int by_epoch, int step, int epoch, int64_t micro, char **state_path)
{
    char stem[600], old[600];
    const int drop = dl_train_save_stems(t->cfg, by_epoch, by_epoch ? epoch : step, stem, old, sizeof stem);
    return save_numbered(t, stem, drop ? old : NULL, step, epoch, micro, state_path);
}

/* ---- sample images with the LoRA as it is now ---- */
static int sample_now_timed(trainer *t, int step, int epoch, int by_epoch);
static int sample_now(trainer *t, int step, int epoch, int by_epoch)
{
    double t0 = dl_now_seconds();
    int rc = sample_now_timed(t, step, epoch, by_epoch);
    dl_phases_add(&t->phases, "sample images", dl_now_seconds() - t0);
    return rc;
}

static int sample_now_timed(trainer *t, int step, int epoch, int by_epoch)
{
    const dl_train_config *c = t->cfg;
    char *dir = dl_train_out_file(c->output_dir, "sample");
    int rc = DL_ERR;
    if (!dir) { dl_error_set("out of memory"); goto done; }
    if (dl_train_mkdir_p(dir) != DL_OK) goto done;
    char prefix[1200];
    if (by_epoch) snprintf(prefix, sizeof prefix, "%s_e%06d", c->output_name, epoch);
    else snprintf(prefix, sizeof prefix, "%s_%06d", c->output_name, step);
    if (t->prog_ok && t->log) dl_progress_note(&t->prog, "sampling %d prompt(s) at step %d", t->n_prompts, step);
    /* the sampler views the trainer's own networks: the LoRA as trained so far, attached */
    rc = dl_train_sample(t->sampler, NULL, t->prompts, t->n_prompts, c->sample_sampler, t->seed, c->clip_skip, dir,
                         prefix, NULL);
    if (rc != DL_OK) dl_error_prefix("sampling at step %d: ", step);
done:
    free(dir);
    return rc;
}

/* ---- setup ---- */
/* Once every latent and text embedding is cached (and no sample images are drawn during the
 * run) the VAE and the frozen text encoder are not run again: give their weights back. */
static void release_unused_networks(trainer *t)
{
    if (t->sampler) return;
    if (t->lc_ok && t->have_vae) {
        dl_vae_free(&t->vae);
        dl_arena_free(&t->w_vae);
        t->have_vae = 0;
        say(t, "latents cached: VAE weights released");
    }
    if (t->emb_cache && !t->train_te && t->have_clip) {
        dl_clip_free(&t->clip);
        dl_arena_free(&t->w_clip);
        t->have_clip = 0;
        if (t->have_clip2) {
            dl_clip_free(&t->clip2);
            dl_arena_free(&t->w_clip2);
            t->have_clip2 = 0;
        }
        say(t, "text embeddings cached: text encoder weights released");
    }
}

/* dl_trainable's report of each UNet tensor placed (full fine-tuning): kept to write them back.
 * Out of memory leaves ft_n at -1. */
static void ft_placed(void *user, const char *name, int ndim, const int64_t *shape, size_t off, int conv)
{
    trainer *t = user;
    if (t->ft_n < 0) return;
    if (t->ft_n == t->ft_cap) {
        const int cap = t->ft_cap ? 2 * t->ft_cap : 512;
        ft_tensor *n = realloc(t->ft_t, (size_t)cap * sizeof *n);
        if (!n) { t->ft_n = -1; return; }
        t->ft_t = n, t->ft_cap = cap;
    }
    ft_tensor *e = &t->ft_t[t->ft_n++];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) { t->ft_n = -1; return; }
    e->ndim = ndim;
    for (int i = 0; i < ndim && i < 4; i++) e->shape[i] = shape[i];
    e->off = off;
    e->conv = conv;
    e->part = t->ft_part;
}

/* SDXL: the second tokenizer (the model's tokenizer_2/, else the first's vocabulary; pads with
 * "!" as SDXL's) and the checks that the two text encoders fit the UNet; tp is the first
 * tokenizer's path. */
static int setup_xl_text(trainer *t, const char *tp)
{
    const dl_train_config *c = t->cfg;
    const dl_model_config *mc = &t->ck.cfg;
    const dl_unet_config *u = &mc->unet;
    if (!mc->text2.num_layers)
        return dl_error_set("%s: an SDXL model without its second text encoder (text_encoder_2/ or "
                            "conditioner.embedders.1.model.*) cannot be trained", c->pretrained_model_name_or_path);
    if (mc->text.hidden_size + mc->text2.hidden_size != u->cross_attention_dim ||
        mc->text2.projection_dim != dl_unet_text_embeds_dim(u) || u->addition_time_ids != 6)
        return dl_error_set("%s: the text encoders (widths %d + %d, pooled %d) do not fit the UNet (cross attention "
                            "%d, pooled %d, %d time ids; SDXL base takes 6, the refiner is not supported)",
                            c->pretrained_model_name_or_path, mc->text.hidden_size, mc->text2.hidden_size,
                            mc->text2.projection_dim, u->cross_attention_dim, dl_unet_text_embeds_dim(u),
                            u->addition_time_ids);
    if (mc->text.num_layers < 2 || mc->text2.num_layers < 2)
        return dl_error_set("%s: SDXL's conditioning reads each text encoder's penultimate layer; they have %d and %d",
                            c->pretrained_model_name_or_path, mc->text.num_layers, mc->text2.num_layers);
    const char *tp2 = !c->tokenizer && t->ck.tokenizer2_dir ? t->ck.tokenizer2_dir : tp;
    DL_TRY(dl_tokenizer_load(&t->tok2, tp2));
    DL_TRY(dl_tokenizer_set_pad(t->tok2, "!"));
    if (dl_tokenizer_vocab_size(t->tok2) > mc->text2.vocab_size)
        return dl_error_set("%s: the tokenizer has %d tokens but the second text encoder only %d", tp2,
                            dl_tokenizer_vocab_size(t->tok2), mc->text2.vocab_size);
    return DL_OK;
}

static int setup_model(trainer *t)
{
    const dl_train_config *c = t->cfg;
    dl_ckpt_options opt = {.prediction = c->v_parameterization ? 1 : -1, .allow_sdxl = 1};
    struct stat st;
    if (stat(c->pretrained_model_name_or_path, &st) != 0)
        return dl_error_set("pretrained_model_name_or_path: %s: %s", c->pretrained_model_name_or_path, strerror(errno));
    if (dl_ckpt_open(&t->ck, c->pretrained_model_name_or_path, &opt) != DL_OK)
        return dl_error_prefix("pretrained_model_name_or_path: ");
    t->ck_ok = 1;
    dl_ckpt_set_pool(&t->ck, t->ctx.pool); /* convert the weights on every core */
    t->ck.weight_dtypes = dl_be(&t->ctx)->weight_dtypes; /* frozen fp16 weights stay fp16 where computed from */
    t->ck.weights_in_place = !dl_be(&t->ctx)->device_memory;
    if (t->ft && t->ck.sdxl)
        return dl_error_set("%s: full fine-tuning of SDXL is not implemented", c->pretrained_model_name_or_path);
    const char *tp = c->tokenizer ? c->tokenizer : t->ck.tokenizer_dir;
    if (!tp)
        return dl_error_set("%s: the model has no tokenizer/ folder; give one with --tokenizer (a tokenizer folder "
                            "or CLIP's bpe_simple_vocab_16e6.txt.gz)", c->pretrained_model_name_or_path);
    DL_TRY(dl_tokenizer_load(&t->tok, tp));
    const dl_model_config *mc = &t->ck.cfg;
    if (dl_tokenizer_vocab_size(t->tok) > mc->text.vocab_size)
        return dl_error_set("%s: the tokenizer has %d tokens but the text encoder only %d", tp,
                            dl_tokenizer_vocab_size(t->tok), mc->text.vocab_size);
    t->xl = t->ck.sdxl;
    if (t->xl) DL_TRY(setup_xl_text(t, tp));
    /* full fine-tuning: the weights that train load fp32 and writable (their loaders with
     * gradients ignore the kept types; measured so), the UNet's and, with train_text_encoder, the
     * text encoder's after them in the same arena (one parameter set); the rest stays frozen */
    const int te_ft = t->ft && c->train_text_encoder;
    size_t wc, wu, wv, wc2 = 0; /* measured by running each loader against a measuring arena */
    if (dl_vae_weights_bytes(&t->ck, &wv) != DL_OK) goto fail;
    if (t->xl && dl_clip_weights_bytes_as(&t->ck, DL_PART_TEXT2, &wc2) != DL_OK) goto fail;
    {
        const unsigned keep_dt = t->ck.weight_dtypes;
        const int keep_in_place = t->ck.weights_in_place;
        if (t->ft) t->ck.weight_dtypes = 0, t->ck.weights_in_place = 0;
        int rc = dl_unet_weights_bytes(&t->ck, &wu);
        if (!te_ft) t->ck.weight_dtypes = keep_dt, t->ck.weights_in_place = keep_in_place;
        if (rc == DL_OK) rc = dl_clip_weights_bytes(&t->ck, &wc);
        t->ck.weight_dtypes = keep_dt, t->ck.weights_in_place = keep_in_place;
        if (rc != DL_OK) goto fail;
    }
    size_t fr, tot;
    const size_t wt = wu + (te_ft ? wc : 0);  /* the weights that train (UNet first) */
    const size_t wg = t->ft ? wt : 0;         /* full fine-tuning: their gradients beside them */
    wc += wc2; /* SDXL: both text encoders (the second in an arena of its own) */
    if (dl_be(&t->ctx)->mem_info(&t->ctx, &fr, &tot) == DL_OK && wc + wu + wg + wv > fr)
        return dl_error_set("the model's weights need %.1f MiB on %s (UNet %.1f, text encoder%s %.1f, VAE %.1f%s) "
                            "and %.1f MiB of its %.1f MiB are free", MIB(wc + wu + wg + wv), dl_be(&t->ctx)->name,
                            MIB(wu), t->xl ? "s" : "", MIB(wc), MIB(wv),
                            wg ? ", the gradients of what trains as much again" : "", MIB(fr), MIB(tot));
    wc -= wc2;
    if (!te_ft) DL_TRY(dl_arena_init_on(&t->w_clip, "text encoder weights", wc, &t->ctx));
    DL_TRY(dl_arena_init_on(&t->w_unet, te_ft ? "UNet and text encoder weights" : "UNet weights", wt, &t->ctx));
    DL_TRY(dl_arena_init_on(&t->w_vae, "VAE weights", wv, &t->ctx));
    if (!te_ft) {
        if (dl_clip_load(&t->clip, &t->ck, &t->w_clip) != DL_OK) goto fail;
        t->have_clip = 1;
    }
    if (t->xl) {
        DL_TRY(dl_arena_init_on(&t->w_clip2, "text encoder 2 weights", wc2, &t->ctx));
        if (dl_clip_load_as(&t->clip2, &t->ck, DL_PART_TEXT2, &t->w_clip2) != DL_OK) goto fail;
        t->have_clip2 = 1;
    }
    if (t->ft) { /* the weights train in place: zero padding, gradients at the same offsets */
        if (!(t->ft_grads = dl_be_alloc(&t->ctx, wt > 0 ? wt : 1))) return dl_error_prefix("the gradients: ");
        DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->ft_grads, 0, wt));
        DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->w_unet.base, 0, wt));
        const dl_trainable tr = {t->ft_grads, ft_placed, t};
        t->ft_part = DL_PART_UNET;
        if (dl_unet_load_trainable(&t->unet, &t->ck, &t->w_unet, &tr) != DL_OK) goto fail;
        t->have_unet = 1;
        t->ft_unet_bytes = t->w_unet.used;
        if (te_ft) {
            t->ft_part = DL_PART_TEXT;
            if (dl_clip_load_trainable(&t->clip, &t->ck, &t->w_unet, &tr) != DL_OK) goto fail;
            t->have_clip = 1;
        }
        if (t->ft_n < 0) return dl_error_set("out of memory listing the trained weights");
    } else if (dl_unet_load(&t->unet, &t->ck, &t->w_unet) != DL_OK) {
        goto fail;
    }
    t->have_unet = 1;
    if (dl_vae_load(&t->vae, &t->ck, &t->w_vae) != DL_OK) goto fail;
    t->have_vae = 1;
    t->v_pred = c->v_parameterization || mc->unet.prediction == DL_PRED_V;
    t->scaling = mc->vae.scaling_factor;
    t->vae_f = 1 << (mc->vae.n_blocks - 1);
    t->C = mc->vae.latent_channels;
    t->Dc = mc->text.hidden_size;
    if (t->xl) {
        t->D1 = mc->text.hidden_size, t->D2 = mc->text2.hidden_size, t->Dp = mc->text2.projection_dim;
        t->Dc = t->D1 + t->D2;
        t->clip_layers = mc->text.num_layers - 1;
        if (c->clip_skip != 1) /* sd-scripts warns likewise and reads hidden_states[11] / [-2] */
            say(t, "warning: clip_skip %d does not apply to SDXL: both text encoders' penultimate layers are "
                   "used (sd-scripts ignores it too)", c->clip_skip);
        return DL_OK;
    }
    if (c->clip_skip > mc->text.num_layers)
        return dl_error_set("clip_skip: %d is more than the text encoder's %d layers", c->clip_skip, mc->text.num_layers);
    t->clip_layers = mc->text.num_layers - c->clip_skip + 1;
    return DL_OK;
fail:
    return dl_error_prefix("%s: ", c->pretrained_model_name_or_path);
}

static int setup_data(trainer *t)
{
    const dl_train_config *c = t->cfg;
    DL_TRY(dl_prov_scan(&t->ds, c->train_data_dir, c, t->log)); /* the one scan verify repeats */
    t->ds_ok = 1;
    if (t->log) dl_dataset_print_summary(&t->ds, t->log);
    int mult = t->vae_f * (1 << (t->ck.cfg.unet.n_blocks - 1));
    t->max_lat_hw = 0;
    t->max_img_hw = 0;
    for (int i = 0; i < t->ds.buckets.n_used; i++) {
        dl_reso r = t->ds.buckets.used[i];
        if (r.w % mult || r.h % mult)
            return dl_error_set("bucket %dx%d: sides must be multiples of %d for this model (resolution / "
                                "bucket_reso_steps)", r.w, r.h, mult);
        int hw = (r.w / t->vae_f) * (r.h / t->vae_f);
        if (hw > t->max_lat_hw) t->max_lat_hw = hw;
        if (r.w * r.h > t->max_img_hw) t->max_img_hw = r.w * r.h;
    }
    dl_caption_cfg_default(&t->aug.caption);
    t->aug.caption.shuffle_caption = c->shuffle_caption;
    t->aug.caption.keep_tokens = c->keep_tokens;
    t->aug.caption.caption_dropout_rate = c->caption_dropout_rate;
    t->aug.caption.caption_tag_dropout_rate = c->caption_tag_dropout_rate;
    t->aug.flip_aug = c->flip_aug;
    t->aug.random_crop = c->random_crop;
    t->static_captions = !c->shuffle_caption && c->caption_dropout_rate == 0 && c->caption_tag_dropout_rate == 0;
    t->B = c->train_batch_size;
    dl_batcher_init(&t->batcher, &t->ds, t->B, t->seed);
    t->batcher_ok = 1;
    dl_batch_init(&t->batch, t->B);
    t->batch_ok = 1;
    return DL_OK;
}

/* The signature of a full fine-tuning run (must match on resume): the UNet's tensors. */
static char *ft_signature(const trainer *t)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < t->ft_n; i++) {
        const ft_tensor *e = &t->ft_t[i];
        char buf[256];
        int len = snprintf(buf, sizeof buf, "%s|%zu|%lld;", e->name, e->off,
                           (long long)(e->shape[0] * (e->ndim > 1 ? e->shape[1] : 1)));
        for (int j = 0; j < len && j < (int)sizeof buf; j++) { h ^= (unsigned char)buf[j]; h *= 1099511628211ull; }
    }
    char *s = NULL;
    if (asprintf(&s, "finetune unet tensors=%d floats=%lld fnv=%016" PRIx64, t->ft_n, (long long)t->ps.n, h) < 0)
        return NULL;
    return s;
}

static int setup_network(trainer *t)
{
    const dl_train_config *c = t->cfg;
    if (t->ft) { /* every UNet (and text encoder) weight, in place in its arena (padding zero: it stays zero) */
        t->train_te = c->train_text_encoder;
        t->ps = (dl_param_set){.p = (float *)t->w_unet.base, .g = (float *)t->ft_grads,
                               .n = (int64_t)(t->w_unet.used / sizeof(float))};
        t->ps.n_unet = (int64_t)(t->ft_unet_bytes / sizeof(float));
        if (dl_be(&t->ctx)->device_memory && !(t->ft_host = malloc(t->w_unet.used > 0 ? t->w_unet.used : 1)))
            return dl_error_set("out of memory for the host copy of the UNet's weights");
        t->signature = ft_signature(t);
        int64_t n = 0;
        for (int i = 0; i < t->ft_n; i++) {
            int64_t k = 1;
            for (int d = 0; d < t->ft_t[i].ndim; d++) k *= t->ft_t[i].shape[d];
            n += k;
        }
        say(t, "full fine-tuning: every UNet%s weight (%d tensors, %lld parameters)",
            t->train_te ? " and text encoder" : "", t->ft_n, (long long)n);
        return DL_OK;
    }
    dl_lora_spec spec = {0};
    DL_TRY(dl_lora_preset_parse(c->preset, &spec.preset));
    spec.rank = c->network_dim;
    spec.alpha = (float)c->network_alpha;
    spec.conv_rank = c->conv_dim;
    spec.conv_alpha = (float)c->conv_alpha;
    t->train_te = !c->network_train_unet_only;
    spec.unet = !c->network_train_text_encoder_only;
    spec.text = t->train_te;
    spec.multiplier = 1.0f;
    spec.seed = t->seed;
    DL_TRY(dl_lora_net_create(&t->net, &t->ck.cfg, &spec));
    t->net_ok = 1;
    if (c->network_weights) {
        dl_lora_report rep;
        if (dl_lora_load_into(c->network_weights, &t->net, &rep) != DL_OK) return dl_error_prefix("network_weights: ");
        if (t->log) dl_lora_report_print(&rep, c->network_weights);
    }
    const dl_lora_models md = {&t->unet, t->train_te ? &t->clip : NULL, t->train_te && t->xl ? &t->clip2 : NULL};
    DL_TRY(dl_lora_net_attach_to(&t->net, &md));
    t->attached = 1;
    DL_TRY(dl_lora_net_to_backend(&t->ctx, &t->net)); /* parameters, gradients: backend memory */
    t->ps = (dl_param_set){.p = t->net.params, .g = t->net.grads, .n = t->net.n_params, .n_unet = t->net.n_params_unet};
    t->signature = net_signature(&t->net);
    say(t, "network: %d modules (%d UNet, %d text encoder), %lld parameters, rank %d alpha %g%s", t->net.n,
        t->net.n_unet, t->net.n - t->net.n_unet, (long long)t->net.n_params, c->network_dim, c->network_alpha,
        c->conv_dim ? " + conv" : "");
    return DL_OK;
}

static void *xcalloc(size_t n, size_t sz, int *fail)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) *fail = 1;
    return p;
}
/* A host array a transfer stream uploads from: page-locked on a device backend. */
static void *xhost(trainer *t, size_t n, size_t sz, int *fail)
{
    if (!t->dev) return xcalloc(n, sz, fail);
    void *p = dl_be(&t->ctx)->host_alloc(&t->ctx, (n ? n : 1) * sz);
    if (!p) *fail = 1;
    return p;
}

/* Before the first step, on a backend that knows its memory: does the step fit? If not, one
 * error that says what it needs, what is free and which options bring it down. */
static int plan_memory(trainer *t, size_t act, size_t scr, size_t te, size_t bufs)
{
    size_t fr, tot;
    if (dl_be(&t->ctx)->mem_info(&t->ctx, &fr, &tot) != DL_OK) return DL_OK; /* the CPU: arenas say it */
    const size_t need = act + scr + te + bufs;
    if (need <= fr) return DL_OK;
    const dl_train_config *c = t->cfg;
    char hint[512];
    int n = snprintf(hint, sizeof hint, "%s", "");
    if (!c->gradient_checkpointing) {
        size_t ack = 0;
        for (int i = 0; i < t->ds.buckets.n_used; i++) {
            const dl_reso r = t->ds.buckets.used[i];
            size_t a = dl_unet_train_act_bytes(&t->unet, t->B, r.h / t->vae_f, r.w / t->vae_f, CTX_T, 1);
            if (a > ack) ack = a;
        }
        n += snprintf(hint + n, sizeof hint - (size_t)n, "gradient_checkpointing (activations %.1f -> %.1f MiB), ",
                      MIB(act), MIB(ack));
    }
    if (t->B > 1) n += snprintf(hint + n, sizeof hint - (size_t)n, "a smaller train_batch_size (now %d), ", t->B);
    snprintf(hint + n, sizeof hint - (size_t)n, "a lower resolution or max_bucket_reso (now %dx%d at most)",
             c->res_w, c->res_h);
    return dl_error_set("a training step needs %.1f MiB on %s (activations %.1f, scratch %.1f, text encoder "
                        "activations %.1f, batch buffers and AdamW moments %.1f) and %.1f MiB of its %.1f MiB are "
                        "free (the weights and the LoRA are placed); what brings it down: %s",
                        MIB(need), dl_be(&t->ctx)->name, MIB(act), MIB(scr), MIB(te), MIB(bufs), MIB(fr), MIB(tot),
                        hint);
}

static int setup_buffers(trainer *t)
{
    const int B = t->B, C = t->C, T = CTX_T;
    const int ckp = t->cfg->gradient_checkpointing;
    size_t act = 0, scr = 0, te = 0;
    if (t->xl && t->train_te) { /* the added embedding back-propagated into text_embeds (before sizing) */
        t->dtext = dl_be_alloc(&t->ctx, sizeof(float) * (size_t)B * t->Dp);
        if (!t->dtext) return dl_error_prefix("allocating the training buffers on %s: ", dl_be(&t->ctx)->name);
        t->unet.dtext_embeds = t->dtext;
    }
    for (int i = 0; i < t->ds.buckets.n_used; i++) {
        dl_reso r = t->ds.buckets.used[i];
        int h = r.h / t->vae_f, w = r.w / t->vae_f;
        size_t a = dl_unet_train_act_bytes(&t->unet, B, h, w, T, ckp);
        size_t s = dl_unet_train_scratch_bytes(&t->unet, B, h, w, T, ckp, t->train_te);
        size_t v = dl_vae_scratch_bytes(&t->ck.cfg.vae, 1, r.h, r.w);
        if (a > act) act = a;
        if (s > scr) scr = s;
        if (v > scr) scr = v;
    }
    size_t cs = dl_clip_scratch_bytes(&t->clip, B, T);
    if (t->xl) { /* both encoders one after the other, their outputs held beside */
        const size_t cs2 = dl_clip_scratch_bytes(&t->clip2, B, T);
        cs = (cs2 > cs ? cs2 : cs) + xl_encode_bytes(t, B);
    }
    if (cs > scr) scr = cs;
    if (t->train_te && t->xl) { /* three passes (xl_train_te_forward) and their outputs and gradients */
        dl_size_table tab;
        const struct { const dl_clip *m; int layers, final_ln; } pass[3] = {
            {&t->clip, t->clip.cfg.num_layers - 1, 0}, {&t->clip2, t->clip2.cfg.num_layers - 1, 0},
            {&t->clip2, t->clip2.cfg.num_layers, 1}};
        for (int p = 0; p < 3; p++) {
            dl_clip_size_table(pass[p].m, B, T, pass[p].layers, pass[p].final_ln, ckp, &tab);
            if (tab.scratch_train > scr) scr = tab.scratch_train;
            te += tab.act + 64;
        }
        te += 2 * xl_encode_bytes(t, B);
    } else if (t->train_te) {
        dl_size_table tab; /* the text encoder's training pass, checkpointed as the UNet's */
        dl_clip_size_table(&t->clip, B, T, t->clip_layers, 1, ckp, &tab);
        if (tab.scratch_train > scr) scr = tab.scratch_train;
        te = tab.act;
    }
    {   /* the backend's copies of the batch buffers and the moments (setup below) */
        const size_t L = (size_t)B * t->max_lat_hw * C * sizeof(float), E = (size_t)B * T * t->Dc * sizeof(float);
        const size_t bufs = (size_t)t->max_img_hw * 3 * sizeof(float) + 6 * L + E * (t->train_te ? 2 : 1) +
                            2 * (size_t)t->ps.n * sizeof(float) + (size_t)B * (16 + 4 * T) + 16;
        DL_TRY(plan_memory(t, act + 4096, scr + 4096, te ? te + 4096 : 0, bufs));
    }
    DL_TRY(dl_arena_init_on(&t->act, "activations", act + 4096, &t->ctx));
    DL_TRY(dl_arena_init_on(&t->scratch, "scratch", scr + 4096, &t->ctx));
    if (te) DL_TRY(dl_arena_init_on(&t->te_arena, "text encoder activations", te + 4096, &t->ctx));
    int fail = 0;
    size_t L = (size_t)B * t->max_lat_hw * C, one = (size_t)t->max_lat_hw * C;
    t->img = xcalloc((size_t)t->max_img_hw * 3, sizeof(float), &fail);
    t->mean = xcalloc(one, sizeof(float), &fail);
    t->logvar = xcalloc(one, sizeof(float), &fail);
    t->vnoise = xcalloc(one, sizeof(float), &fail);
    t->latents = xcalloc(L, sizeof(float), &fail);
    t->noise = xcalloc(L, sizeof(float), &fail);
    t->dev = dl_be(&t->ctx)->device_memory;
    t->noisy = xhost(t, L, sizeof(float), &fail);
    t->target = xhost(t, L, sizeof(float), &fail);
    t->pred = xcalloc(L, sizeof(float), &fail);
    t->dpred = xcalloc(L, sizeof(float), &fail);
    t->tmp = xcalloc(L, sizeof(float), &fail);
    t->context = xcalloc((size_t)B * T * t->Dc, sizeof(float), &fail);
    t->dcontext = t->train_te ? xcalloc((size_t)B * T * t->Dc, sizeof(float), &fail) : NULL;
    t->tf = xhost(t, (size_t)B, sizeof(float), &fail);
    t->t = xcalloc((size_t)B, sizeof(int64_t), &fail);
    t->w = xhost(t, (size_t)B, sizeof(float), &fail);
    t->ids = xcalloc((size_t)B * T, sizeof(int32_t), &fail);
    t->m = xcalloc((size_t)t->ps.n, sizeof(float), &fail);
    t->v = xcalloc((size_t)t->ps.n, sizeof(float), &fail);
    t->scal = xcalloc(4, sizeof(float), &fail);
    if (t->xl) {
        t->text_embeds = xcalloc((size_t)B * t->Dp, sizeof(float), &fail);
        t->time_ids = xcalloc((size_t)B * 6, sizeof(float), &fail);
        t->ids2 = xcalloc((size_t)B * T, sizeof(int32_t), &fail);
        t->eos = xcalloc((size_t)B, sizeof(int), &fail);
    }
    if (fail) return dl_error_set("out of memory allocating training buffers");
    /* the backend's copies (the inputs on a device: two sets, a transfer stream and its events) */
#define DEV(f, host, bytes) (t->d.f = t->dev ? dl_be_alloc(&t->ctx, (bytes)) : (host), fail |= !t->d.f)
    DEV(img, t->img, (size_t)t->max_img_hw * 3 * sizeof(float));
    if (!t->dev) t->d.noisy = t->noisy, t->d.target = t->target, t->d.tf = t->tf, t->d.w = t->w;
    for (int s = 0; t->dev && s < 2; s++) {
        const dl_backend *be = dl_be(&t->ctx);
        fail |= !(t->in[s].noisy = dl_be_alloc(&t->ctx, L * sizeof(float)));
        fail |= !(t->in[s].target = dl_be_alloc(&t->ctx, L * sizeof(float)));
        fail |= !(t->in[s].tf = dl_be_alloc(&t->ctx, (size_t)B * sizeof(float)));
        fail |= !(t->in[s].w = dl_be_alloc(&t->ctx, (size_t)B * sizeof(float)));
        fail |= !(t->up[s] = be->event_create(&t->ctx)) || !(t->used[s] = be->event_create(&t->ctx));
        if (s == 0) fail |= !(t->xfer = be->stream_create(&t->ctx, "transfer"));
    }
    DEV(pred, t->pred, L * sizeof(float));
    DEV(dpred, t->dpred, L * sizeof(float));
    DEV(context, t->context, (size_t)B * T * t->Dc * sizeof(float));
    if (t->train_te) DEV(dcontext, t->dcontext, (size_t)B * T * t->Dc * sizeof(float));
    DEV(ids, t->ids, (size_t)B * T * sizeof(int32_t));
    DEV(m, t->m, (size_t)(t->ps.n > 0 ? t->ps.n : 1) * sizeof(float));
    DEV(v, t->v, (size_t)(t->ps.n > 0 ? t->ps.n : 1) * sizeof(float));
    DEV(scal, t->scal, 4 * sizeof(float));
    if (t->xl) {
        DEV(text_embeds, t->text_embeds, (size_t)B * t->Dp * sizeof(float));
        DEV(time_ids, t->time_ids, (size_t)B * 6 * sizeof(float));
        DEV(ids2, t->ids2, (size_t)B * T * sizeof(int32_t));
    }
#undef DEV
    if (fail) return dl_error_prefix("allocating the training buffers on %s: ", dl_be(&t->ctx)->name);
    t->ps.m = t->d.m, t->ps.v = t->d.v;
    if (t->dev) {
        const size_t pb = (size_t)(t->ps.n > 0 ? t->ps.n : 1) * sizeof(float);
        DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->d.m, 0, pb));
        DL_TRY(dl_be(&t->ctx)->fill(&t->ctx, t->d.v, 0, pb));
    }
    if (t->train_te || !t->static_captions) {
        /* captions are tokenized every step: size the tokenizer's working memory for the longest
         * processed caption and put every caption's words in its BPE cache now, so the steps
         * allocate nothing (a shuffled or tag-dropped caption is made of the same words) */
        size_t longest = dl_caption_out_cap(dl_caption_full_len(&t->aug.caption, t->batcher.max_caption));
        DL_TRY(dl_tok_work_reserve(&t->tok_work, longest));
        for (int i = 0; i < t->ds.n_items; i++)
            if ((t->xl ? xl_tokenize(t, t->ds.items[i].caption, t->ids, t->ids2)
                       : dl_tokenizer_encode_padded_w(t->tok, &t->tok_work, t->ds.items[i].caption, t->ids)) != DL_OK)
                return dl_error_prefix("caption of %s: ", t->ds.items[i].image_path);
    }
    return DL_OK;
}

static int setup_caches(trainer *t)
{
    const dl_train_config *c = t->cfg;
    if (c->cache_latents) {
        dl_latent_cache_cfg lc = {.flip_aug = c->flip_aug, .random_crop = c->random_crop, .latent_channels = t->C,
                                  .downscale = t->vae_f, .vae_fingerprint = dl_vae_fingerprint(&t->ctx, &t->vae),
                                  .pool = t->ctx.pool, .log = t->log};
        char *dir = NULL;
        if (c->cache_latents_to_disk) {
            dir = dl_train_out_file(c->output_dir, "latent_cache");
            lc.disk_dir = dir;
        }
        /* the cache encodes at the key of (seed, item): a run with another seed re-encodes */
        lc.vae_fingerprint ^= t->seed * 0x9E3779B97F4A7C15ull;
        int rc = dl_latent_cache_build(&t->lc, &t->ds, &lc, encode_item, t);
        free(dir);
        DL_TRY(rc);
        t->lc_ok = 1;
    }
    if (!t->train_te && t->static_captions && t->xl) {
        const int64_t E = (int64_t)CTX_T * t->Dc;
        t->emb_cache = malloc(sizeof(float) * (size_t)(E * t->ds.n_items));
        t->pooled_cache = malloc(sizeof(float) * (size_t)t->Dp * (size_t)t->ds.n_items);
        if (!t->emb_cache || !t->pooled_cache) return dl_error_set("out of memory caching text embeddings");
        for (int i = 0; i < t->ds.n_items; i++) {
            if (xl_tokenize(t, t->ds.items[i].caption, t->ids, t->ids2) != DL_OK)
                return dl_error_prefix("caption of %s: ", t->ds.items[i].image_path);
            if (t->dev) {
                DL_TRY(dl_be_upload(&t->ctx, t->d.ids, t->ids, sizeof(int32_t) * CTX_T));
                DL_TRY(dl_be_upload(&t->ctx, t->d.ids2, t->ids2, sizeof(int32_t) * CTX_T));
            }
            float *ctx_out = t->dev ? t->d.context : t->emb_cache + i * E;
            float *pool_out = t->dev ? t->d.text_embeds : t->pooled_cache + (int64_t)i * t->Dp;
            xl_encode(t, 1, t->d.ids, t->d.ids2, t->ids2, ctx_out, pool_out);
            if (t->dev) {
                DL_TRY(dl_be_download(&t->ctx, t->emb_cache + i * E, t->d.context, sizeof(float) * (size_t)E));
                DL_TRY(dl_be_download(&t->ctx, t->pooled_cache + (int64_t)i * t->Dp, t->d.text_embeds,
                                      sizeof(float) * (size_t)t->Dp));
            }
        }
        say(t, "cached both text encoders' outputs for %d captions", t->ds.n_items);
    } else if (!t->train_te && t->static_captions) {
        const int64_t E = (int64_t)CTX_T * t->Dc;
        t->emb_cache = malloc(sizeof(float) * (size_t)(E * t->ds.n_items));
        if (!t->emb_cache) return dl_error_set("out of memory caching text embeddings");
        for (int i = 0; i < t->ds.n_items; i++) {
            if (dl_tokenizer_encode_padded(t->tok, t->ds.items[i].caption, t->ids) != DL_OK)
                return dl_error_prefix("caption of %s: ", t->ds.items[i].image_path);
            size_t mark = dl_arena_mark(&t->scratch);
            if (t->dev) DL_TRY(dl_be_upload(&t->ctx, t->d.ids, t->ids, sizeof(int32_t) * CTX_T));
            dl_clip_forward(&t->ctx, &t->clip, 1, CTX_T, t->d.ids, t->clip_layers, 1,
                            t->dev ? t->d.context : t->emb_cache + i * E, &t->scratch);
            dl_arena_release(&t->scratch, mark);
            if (t->dev) DL_TRY(dl_be_download(&t->ctx, t->emb_cache + i * E, t->d.context, sizeof(float) * (size_t)E));
        }
        say(t, "cached the text embeddings of %d captions", t->ds.n_items);
    }
    return DL_OK;
}

static void teardown(trainer *t)
{
    if (t->model_hashing) dl_hash_job_cancel(&t->model_hash);
    t->model_hashing = 0;
    if (t->prog_ok) dl_progress_finish(&t->prog);
    dl_train_prompts_free(t->prompts, t->n_prompts);
    dl_train_sampler_free(t->sampler);
    if (t->attached) {
        const dl_lora_models md = {&t->unet, t->train_te ? &t->clip : NULL, t->train_te && t->xl ? &t->clip2 : NULL};
        dl_lora_net_detach_from(&t->net, &md);
    }
    if (t->net_ok) dl_lora_net_free(&t->net);
    if (t->ft_grads) dl_be_free(&t->ctx, t->ft_grads);
    if (t->dtext) dl_be_free(&t->ctx, t->dtext);
    for (int i = 0; i < t->ft_n; i++) free(t->ft_t[i].name);
    free(t->ft_t);
    free(t->ft_host);
    if (t->lc_ok) dl_latent_cache_free(&t->lc);
    if (t->batch_ok) dl_batch_free(&t->batch);
    dl_image_reader_free(&t->reader);
    dl_prep_work_free(&t->prep);
    dl_tok_work_free(&t->tok_work);
    if (t->batcher_ok) dl_batcher_free(&t->batcher);
    if (t->ds_ok) dl_dataset_free(&t->ds);
    if (t->obj) dl_objective_free(t->obj);
    if (t->have_clip) dl_clip_free(&t->clip);
    if (t->have_clip2) dl_clip_free(&t->clip2);
    if (t->tok2) dl_tokenizer_free(t->tok2);
    dl_arena_free(&t->w_clip2);
    if (t->have_unet) dl_unet_free(&t->unet);
    if (t->have_vae) dl_vae_free(&t->vae);
    if (t->tok) dl_tokenizer_free(t->tok);
    if (t->ck_ok) dl_ckpt_close(&t->ck);
    dl_arena_free(&t->w_clip);
    dl_arena_free(&t->w_unet);
    dl_arena_free(&t->w_vae);
    dl_arena_free(&t->act);
    dl_arena_free(&t->scratch);
    dl_arena_free(&t->te_arena);
    if (t->dev) {
        const dl_backend *be = dl_be(&t->ctx);
        void *db[] = {t->d.img, t->d.pred, t->d.dpred, t->d.context, t->d.dcontext, t->d.ids, t->d.m, t->d.v,
                      t->d.scal, t->in[0].noisy, t->in[0].target, t->in[0].tf, t->in[0].w, t->in[1].noisy,
                      t->in[1].target, t->in[1].tf, t->in[1].w, t->d.text_embeds, t->d.time_ids, t->d.ids2};
        for (size_t i = 0; i < sizeof db / sizeof *db; i++) dl_be_free(&t->ctx, db[i]);
        for (int s = 0; s < 2; s++) {
            if (t->up[s]) be->event_destroy(&t->ctx, t->up[s]);
            if (t->used[s]) be->event_destroy(&t->ctx, t->used[s]);
        }
        if (t->xfer) be->stream_destroy(&t->ctx, t->xfer);
        void *hb[] = {t->noisy, t->target, t->tf, t->w};
        for (size_t i = 0; i < sizeof hb / sizeof *hb; i++)
            if (hb[i]) be->host_free(&t->ctx, hb[i]);
    } else {
        free(t->noisy), free(t->target), free(t->tf), free(t->w);
    }
    void *bufs[] = {t->img, t->mean, t->logvar, t->vnoise, t->latents, t->noise, t->pred, t->dpred, t->tmp,
                    t->context, t->dcontext, t->t, t->ids, t->m, t->v, t->scal, t->emb_cache, t->signature,
                    t->config_json, t->pooled_cache, t->text_embeds, t->time_ids, t->ids2, t->eos};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    kv_free(&t->meta);
    dl_prov_writer_free(&t->prov);
    if (t->ctx_ok) dl_ctx_free(&t->ctx);
}

/* ---- SDXL with its text encoders training (sd-scripts' get_hidden_states_sdxl, differentiated) ---- */
/* Three passes, each on its own tape in te_arena: the first encoder to its penultimate layer
 * (h1), the second to its penultimate layer (h2) and to its last hidden state after the final
 * layer norm (last, for the pooled embedding: the same weights, so their LoRAs' gradients from
 * both passes add up as one pass's would). context = [h1, h2], text_embeds = pooled(last); the
 * outputs stay in te_arena (the tapes reference them) until the caller releases it. */
static void xl_train_te_forward(trainer *t, int n)
{
    const int64_t M = (int64_t)n * CTX_T;
    const int ckp = t->cfg->gradient_checkpointing;
    float *out[3] = {dl_alloc_f32(&t->te_arena, M * t->D1),                         // h1 [n, 77, D1]
                     dl_alloc_f32(&t->te_arena, M * t->D2),                         // h2 [n, 77, D2]
                     dl_alloc_f32(&t->te_arena, M * t->D2)};                        // last [n, 77, D2]
    dl_clip_train_forward(&t->ctx, &t->clip, &t->te_tape, n, CTX_T, t->d.ids, t->clip.cfg.num_layers - 1, 0, out[0],
                          ckp, &t->te_arena, &t->scratch);
    dl_clip_train_forward(&t->ctx, &t->clip2, &t->te_tape2, n, CTX_T, t->d.ids2, t->clip2.cfg.num_layers - 1, 0,
                          out[1], ckp, &t->te_arena, &t->scratch);
    dl_clip_train_forward(&t->ctx, &t->clip2, &t->te_tape3, n, CTX_T, t->d.ids2, t->clip2.cfg.num_layers, 1, out[2],
                          ckp, &t->te_arena, &t->scratch);
    dl_be(&t->ctx)->concat_channels_forward(&t->ctx, M, t->D1, t->D2, out[0], out[1], t->d.context);
    dl_clip_eos_positions(&t->clip2.cfg, n, CTX_T, t->ids2, t->eos);
    dl_clip_pooled(&t->ctx, &t->clip2, n, CTX_T, t->eos, out[2], t->d.text_embeds, &t->scratch);
}

/* From d context (d.dcontext) and d text_embeds (dtext, both written by the UNet's backward):
 * the three passes back-propagated into the text encoders' LoRAs (gradients added); the
 * gradients of their outputs are taken from te_arena (released by the caller). */
static void xl_train_te_backward(trainer *t, int n)
{
    const int64_t M = (int64_t)n * CTX_T;
    float *d1 = dl_alloc_f32(&t->te_arena, M * t->D1), *d2 = dl_alloc_f32(&t->te_arena, M * t->D2);
    float *dlast = dl_alloc_f32(&t->te_arena, M * t->D2);
    dl_be(&t->ctx)->concat_channels_backward(&t->ctx, M, t->D1, t->D2, t->d.dcontext, d1, d2);
    dl_clip_backward(&t->ctx, &t->te_tape, d1, &t->scratch);
    dl_clip_backward(&t->ctx, &t->te_tape2, d2, &t->scratch);
    dl_clip_pooled_backward(&t->ctx, &t->clip2, n, CTX_T, t->eos, t->dtext, dlast, &t->scratch);
    dl_clip_backward(&t->ctx, &t->te_tape3, dlast, &t->scratch);
}

/* ---- one micro-batch: drawn and prepared, then forward, loss, backward ---- */
/* The next micro-batch into t->pre: its draw, latents, token ids (uploaded) or frozen text
 * context, noise, noisy latents, target, timesteps and loss weights. Device work it needs (the
 * frozen text encoder, VAE encoding) is enqueued after whatever runs now. */
static int prep_batch(trainer *t)
{
    dl_batch *b = &t->batch;
    dl_batcher_next(&t->batcher, &t->aug, b);
    t->pre.epoch = (int)t->batcher.st.epoch + 1;
    t->pre.epoch_end = t->batcher.st.pos >= t->batcher.n_batches;
    const int n = b->n, h = b->reso.h / t->vae_f, w = b->reso.w / t->vae_f, C = t->C;
    DL_TRY(batch_latents(t, b));
    if (t->train_te) {
        for (int i = 0; i < n; i++)
            if ((t->xl ? xl_tokenize(t, b->captions[i], t->ids + i * CTX_T, t->ids2 + i * CTX_T)
                       : dl_tokenizer_encode_padded_w(t->tok, &t->tok_work, b->captions[i], t->ids + i * CTX_T)) != DL_OK)
                return dl_error_prefix("caption of %s: ", t->ds.items[b->items[i]].image_path);
        if (t->dev) DL_TRY(dl_be_upload(&t->ctx, t->d.ids, t->ids, sizeof(int32_t) * (size_t)n * CTX_T));
        if (t->dev && t->xl) DL_TRY(dl_be_upload(&t->ctx, t->d.ids2, t->ids2, sizeof(int32_t) * (size_t)n * CTX_T));
    } else {
        DL_TRY(batch_context_frozen(t, b));
    }
    if (t->xl) DL_TRY(batch_time_ids(t, b));
    const dl_backend *be = dl_be(&t->ctx);
    const int s = t->pre.slot = t->next_slot;
    if (t->dev) { /* the host arrays are free once the last upload from them is done */
        t->next_slot ^= 1;
        DL_TRY(be->event_synchronize(&t->ctx, t->up[s ^ 1]));
    }
    dl_objective_batch(t->obj, &t->noise_rng, n, h, w, C, t->latents, t->t, t->noise, t->noisy, t->target, t->w,
                       t->tmp);
    for (int i = 0; i < n; i++) t->tf[i] = (float)t->t[i];
    if (t->dev) { /* up into set s once the step that last read it is done */
        const size_t lat = sizeof(float) * (size_t)n * h * w * C;
        if (t->used_rec[s]) DL_TRY(be->stream_wait(&t->ctx, t->xfer, t->used[s]));
        DL_TRY(be->upload_on(&t->ctx, t->xfer, t->in[s].noisy, t->noisy, lat));
        DL_TRY(be->upload_on(&t->ctx, t->xfer, t->in[s].target, t->target, lat));
        DL_TRY(be->upload_on(&t->ctx, t->xfer, t->in[s].tf, t->tf, sizeof(float) * (size_t)n));
        if (dl_objective_weighted(t->obj))
            DL_TRY(be->upload_on(&t->ctx, t->xfer, t->in[s].w, t->w, sizeof(float) * (size_t)n));
        DL_TRY(be->event_record(&t->ctx, t->up[s], t->xfer));
    }
    t->pre.ready = 1;
    return DL_OK;
}

/* One micro-batch: the prepared one (or one prepared now), its gradients added into the trained
 * parameters' gradients. With prefetch, the next micro-batch is prepared on the host after this
 * one's device work is enqueued and before its loss is read, so the two overlap on a GPU. */
static int micro_step(trainer *t, float dloss, int prefetch, double *loss_out, int *epoch_out, int *epoch_end)
{
    if (!t->pre.ready) DL_TRY(prep_batch(t));
    t->pre.ready = 0;
    *epoch_out = t->pre.epoch;
    *epoch_end = t->pre.epoch_end;
    const dl_batch *b = &t->batch;
    const int n = b->n, h = b->reso.h / t->vae_f, w = b->reso.w / t->vae_f, C = t->C;
    const int64_t D = (int64_t)h * w * C;
    const int first_item = b->items[0];
    size_t te_mark = 0;
    if (t->train_te) te_mark = dl_arena_mark(&t->te_arena);
    if (t->train_te && t->xl) {
        xl_train_te_forward(t, n);
    } else if (t->train_te) {
        dl_clip_train_forward(&t->ctx, &t->clip, &t->te_tape, n, CTX_T, t->d.ids, t->clip_layers, 1, t->d.context,
                              t->cfg->gradient_checkpointing, &t->te_arena, &t->scratch);
    }
    const int weighted = dl_objective_weighted(t->obj);
    const int slot = t->pre.slot;
    if (t->dev) { /* the inputs went up with the batch; nothing else crosses until the loss comes back */
        DL_TRY(dl_be(&t->ctx)->stream_wait(&t->ctx, NULL, t->up[slot]));
        t->d.noisy = t->in[slot].noisy, t->d.target = t->in[slot].target;
        t->d.tf = t->in[slot].tf, t->d.w = t->in[slot].w;
    }
    size_t act_mark = dl_arena_mark(&t->act);
    dl_unet_tape *tape = &t->tape;
    const dl_unet_added add = {t->d.text_embeds, t->d.time_ids}; /* SDXL's; NULL otherwise */
    dl_unet_train_forward_added(&t->ctx, &t->unet, tape, n, h, w, t->d.noisy, t->d.tf, t->d.context, CTX_T,
                                t->xl ? &add : NULL, t->d.pred, t->cfg->gradient_checkpointing, &t->act, &t->scratch);
    const float *wts = weighted ? t->d.w : NULL;
    dl_be(&t->ctx)->mse_loss_forward(&t->ctx, n, D, t->d.pred, t->d.target, wts, NULL, t->d.scal + 0);
    dl_be(&t->ctx)->mse_loss_backward(&t->ctx, n, D, t->d.pred, t->d.target, wts, dloss, t->d.dpred, NULL);
    dl_unet_backward(&t->ctx, tape, t->d.dpred, t->train_te ? t->d.dcontext : NULL, &t->scratch);
    dl_arena_release(&t->act, act_mark);
    if (t->train_te && t->xl) xl_train_te_backward(t, n);
    else if (t->train_te) dl_clip_backward(&t->ctx, &t->te_tape, t->d.dcontext, &t->scratch);
    if (t->train_te) dl_arena_release(&t->te_arena, te_mark);
    if (t->dev) { /* this input set may be written again once the step's reads are done */
        DL_TRY(dl_be(&t->ctx)->event_record(&t->ctx, t->used[slot], NULL));
        t->used_rec[slot] = 1;
    }
    if (prefetch) {
        dl_batcher_get_state(&t->batcher, &t->pre.bs);
        t->pre.rng = t->rng;
        t->pre.noise_rng = t->noise_rng;
        DL_TRY(prep_batch(t));
    }
    const double loss = dl_be_read_f32(&t->ctx, t->d.scal + 0);
    if (isnan(loss) && dl_be_sync(&t->ctx) != DL_OK) return DL_ERR; /* a device error, not a diverged loss */
    if (!isfinite(loss)) return dl_error_set("the loss became %g at a batch of %s: lower the learning rate", loss,
                                             t->ds.items[first_item].image_path);
    *loss_out = loss;
    return DL_OK;
}

/* A state saved by a run on the other architecture (SD 1.x/2.x vs SDXL) is refused by name; states
 * without ss_base_model_version (older ones) are left to the network signature's check. */
static int check_state_arch(trainer *t, const char *path)
{
    dl_st_file f;
    if (dl_st_open(&f, path) != DL_OK) return dl_error_prefix("resume: ");
    const char *v = dl_st_meta(&f, "ss_base_model_version");
    const char *want = kv_get(&t->meta, "ss_base_model_version");
    int rc = DL_OK;
    if (v && want && strcmp(v, "unknown") && strcmp(v, want) &&
        (!strncmp(v, "sdxl", 4) != !strncmp(want, "sdxl", 4)))
        rc = dl_error_set("resume: %s: a state of a training run on %s (ss_base_model_version %s), but the model is %s",
                          path, strncmp(v, "sdxl", 4) ? "SD 1.x/2.x" : "SDXL", v, t->xl ? "SDXL" : "SD 1.x/2.x");
    dl_st_close(&f);
    return rc;
}

int dl_train_run(const dl_train_config *cfg, const dl_trainer_opts *opts, dl_train_result *res)
{
    static const dl_trainer_opts k_default = {.log = NULL, .tty = -1};
    if (!opts) opts = &k_default;
    memset(res, 0, sizeof *res);
    DL_TRY(dl_train_config_check_run(cfg));
    trainer *t = calloc(1, sizeof *t);
    if (!t) return dl_error_set("out of memory");
    t->cfg = cfg;
    t->opts = opts;
    t->log = opts->log;
    t->ft = cfg->finetune;
    int rc = DL_ERR;
    char *state_path = NULL;
    dl_train_state rs = {0};
    int have_rs = 0;

    dl_phases_init(&t->phases);
    dl_hash_cache_default(&t->hash_cache, !cfg->no_hash_cache);
    {
        struct stat st; /* a single-file base model: hash it while everything else runs */
        if (stat(cfg->pretrained_model_name_or_path, &st) == 0 && S_ISREG(st.st_mode) &&
            dl_hash_job_start(&t->model_hash, &t->hash_cache, cfg->pretrained_model_name_or_path, 0, UINT64_MAX) == DL_OK)
            t->model_hashing = 1;
    }
    if (dl_ctx_init_backend(&t->ctx, cfg->threads, dl_backend_find(cfg->backend)) != DL_OK) goto out;
    t->ctx_ok = 1;
    if (dl_be_set_precision(&t->ctx, cfg->mixed_precision) != DL_OK) goto out;
    {
        char desc[256];
        dl_be(&t->ctx)->describe(&t->ctx, desc, sizeof desc);
        say(t, "backend: %s%s", desc, t->ctx.compute_dtype == DL_BF16 ? ", bf16 matrix products and convolutions" : "");
    }
    t->seed = cfg->seed >= 0 ? (uint64_t)cfg->seed : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16)) & 0xffffffffu;
    if (cfg->seed < 0) say(t, "seed: %" PRIu64 " (none given)", t->seed);
    t->config_json = dl_train_config_to_json(cfg);
    if (dl_train_mkdir_p(cfg->output_dir) != DL_OK) goto out;
    if (cfg->resume) {
        if (dl_train_state_load(cfg->resume, &rs) != DL_OK) { dl_error_prefix("resume: "); goto out; }
        have_rs = 1;
    }
    double t0 = dl_now_seconds();
    if (setup_model(t) != DL_OK) goto out;
    dl_phases_add(&t->phases, "load", dl_now_seconds() - t0);
    t0 = dl_now_seconds();
    if (setup_data(t) != DL_OK) goto out;
    dl_phases_add(&t->phases, "data (and caches)", dl_now_seconds() - t0);
    t0 = dl_now_seconds();
    if (setup_network(t) != DL_OK) goto out;
    dl_phases_add(&t->phases, "network setup", dl_now_seconds() - t0);
    {
        dl_objective_cfg oc;
        dl_objective_cfg_sd15(&oc);
        oc.v_prediction = t->v_pred;
        oc.noise_offset = isnan(cfg->noise_offset) ? 0 : cfg->noise_offset;
        oc.min_snr_gamma = isnan(cfg->min_snr_gamma) ? 0 : cfg->min_snr_gamma;
        if (dl_objective_create(&t->obj, &oc) != DL_OK) goto out;
    }
    if (setup_buffers(t) != DL_OK) goto out;
    if (setup_caches(t) != DL_OK) goto out;
    if (cfg->sample_prompts && t->xl) {
        dl_error_set("sample_prompts: sample images during SDXL training are not implemented yet; sample the saved "
                     "LoRA with danlu sample");
        goto out;
    }
    if (cfg->sample_prompts) {
        if (dl_train_sampler_check(cfg->sample_sampler) != DL_OK) goto out;
        if (dl_train_prompts_load(cfg->sample_prompts, &t->prompts, &t->n_prompts) != DL_OK) goto out;
        dl_sd *view = NULL;
        if (dl_sd_view(&view, &t->ck.cfg, t->ck.sd2, t->tok, &t->clip, &t->unet, &t->vae, &t->ctx) != DL_OK ||
            dl_train_sampler_create_view(&t->sampler, view) != DL_OK) {
            dl_sd_close(view);
            goto out;
        }
    }
    release_unused_networks(t);

    /* steps and epochs as sd-scripts */
    t->batches_per_epoch = dl_batcher_batches_per_epoch(&t->batcher);
    const int accum = cfg->gradient_accumulation_steps;
    t->steps_per_epoch = (t->batches_per_epoch + accum - 1) / accum;
    t->total_steps = cfg->max_train_epochs > 0 ? cfg->max_train_epochs * t->steps_per_epoch : cfg->max_train_steps;
    t->num_epochs = (t->total_steps + t->steps_per_epoch - 1) / t->steps_per_epoch;
    {
        dl_lr_kind kind;
        if (dl_lr_kind_parse(cfg->lr_scheduler, &kind) != DL_OK) goto out;
        dl_lr_schedule_init(&t->lrs, kind, cfg->lr_warmup_steps, t->total_steps, cfg->lr_scheduler_num_cycles,
                            cfg->lr_scheduler_power);
    }
    t->unet_lr = dl_train_config_unet_lr(cfg);
    t->te_lr = dl_train_config_te_lr(cfg);
    if (t->train_te && !isnan(cfg->text_encoder_lr2) && cfg->text_encoder_lr2 != cfg->text_encoder_lr)
        say(t, "warning: text_encoder_lr: networks.lora takes the first value (%g) for every text encoder, as "
               "sd-scripts does; the second (%g) is not used", cfg->text_encoder_lr, cfg->text_encoder_lr2);
    dl_rng_seed(&t->rng, t->seed);
    dl_torch_rng_seed(&t->noise_rng, t->seed);
    if (build_metadata(t) != DL_OK) goto out;

    int step = 0, epoch = 0;
    int64_t micro = 0;
    if (have_rs && check_state_arch(t, cfg->resume) != DL_OK) goto out;
    if (have_rs) {
        if (rs.n_params != t->ps.n || strcmp(rs.signature, t->signature ? t->signature : "") != 0) {
            dl_error_set("resume: %s: the state's network (%s) differs from this configuration's (%s)", cfg->resume,
                         rs.signature, t->signature ? t->signature : "?");
            goto out;
        }
        if (rs.data_state_len != sizeof(uint64_t) * DL_BATCHER_STATE_WORDS) {
            dl_error_set("resume: %s: data loader state of %zu bytes, expected %zu", cfg->resume, rs.data_state_len,
                         sizeof(uint64_t) * DL_BATCHER_STATE_WORDS);
            goto out;
        }
        uint64_t words[DL_BATCHER_STATE_WORDS];
        memcpy(words, rs.data_state, sizeof words);
        dl_batcher_state bs;
        dl_batcher_state_unpack(&bs, words);
        if (dl_batcher_set_state(&t->batcher, &bs) != DL_OK) { dl_error_prefix("resume: %s: ", cfg->resume); goto out; }
        memcpy(t->m, rs.m, sizeof(float) * (size_t)rs.n_params);
        memcpy(t->v, rs.v, sizeof(float) * (size_t)rs.n_params);
        if (push_params(t, rs.params) != DL_OK || push_moments(t) != DL_OK) { dl_error_prefix("resume: "); goto out; }
        t->rng = rs.rng;
        t->noise_rng = rs.noise_rng;
        step = (int)rs.step;
        epoch = (int)rs.epoch;
        micro = rs.micro_step;
        say(t, "resumed from %s at step %d (epoch %d)", cfg->resume, step, epoch);
        if (step >= t->total_steps) say(t, "warning: the state is already at step %d of %d", step, t->total_steps);
    }
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
    say(t, "training: %d steps (%d epochs of %d batches, batch %d, accumulation %d), %d images with repeats",
        t->total_steps, t->num_epochs, t->batches_per_epoch, t->B, accum, (int)t->ds.num_train_images);

    dl_train_signal_install();
    const float dloss = 1.0f / (float)accum;
    int interrupted = 0;
    while (step < t->total_steps) {
        double ts = dl_now_seconds();
        dl_param_set_zero_grads(&t->ctx, &t->ps);
        double loss_sum = 0;
        int cur_epoch = epoch + 1, epoch_end = 0;
        for (int a = 0; a < accum; a++) {
            double l = 0;
            int ee = 0;
            const int prefetch = t->dev && !(step + 1 >= t->total_steps && a == accum - 1);
            if (micro_step(t, dloss, prefetch, &l, &cur_epoch, &ee) != DL_OK) goto out_sig;
            micro++;
            loss_sum += l;
            if (ee) { epoch_end = 1; break; } /* the epoch's last batch ends an accumulation early */
        }
        /* clipping and AdamW in backend memory (LambdaLR: one multiplier for every group;
         * polynomial's lr_end is relative to the optimizer's default lr, sd-scripts'
         * learning_rate) */
        const double mult = dl_lr_multiplier(&t->lrs, step, cfg->learning_rate);
        const dl_adamw_hparams hp = {.lr = t->unet_lr * mult, .beta1 = cfg->adam_beta1, .beta2 = cfg->adam_beta2,
                                     .eps = cfg->adam_eps, .weight_decay = cfg->weight_decay};
        dl_param_set_step(&t->ctx, &t->ps, cfg->max_grad_norm, &hp, t->unet_lr * mult, t->te_lr * mult, step + 1,
                          t->d.scal + 1);
        step++;
        if (epoch_end) epoch = cur_epoch;
        double loss = loss_sum / accum; /* the step's loss: mean over its micro-batches */
        res->losses[step - 1 - res->start_step] = loss;
        res->steps_done = step;
        dl_progress_step(&t->prog, step, cur_epoch, loss, hp.lr);
        dl_phases_add(&t->phases, "steps", dl_now_seconds() - ts);
        if (step < t->total_steps) {
            if (cfg->save_every_n_steps > 0 && step % cfg->save_every_n_steps == 0 &&
                save_at(t, 0, step, epoch, micro, &state_path) != DL_OK)
                goto out_sig;
            if (epoch_end && cfg->save_every_n_epochs > 0 && epoch % cfg->save_every_n_epochs == 0 &&
                save_at(t, 1, step, epoch, micro, &state_path) != DL_OK)
                goto out_sig;
        }
        if (t->sampler && cfg->sample_every_n_steps > 0 && step % cfg->sample_every_n_steps == 0 &&
            sample_now(t, step, epoch, 0) != DL_OK)
            goto out_sig;
        if (t->sampler && epoch_end && cfg->sample_every_n_epochs > 0 && epoch % cfg->sample_every_n_epochs == 0 &&
            (cfg->sample_every_n_steps <= 0 || step % cfg->sample_every_n_steps != 0) && sample_now(t, step, epoch, 1) != DL_OK)
            goto out_sig;
        if (opts->on_step) opts->on_step(opts->on_step_user, step);
        if (opts->stop_after > 0 && step - res->start_step >= opts->stop_after && step < t->total_steps)
            dl_train_set_interrupted(1);
        if (dl_train_interrupted() && step < t->total_steps) { interrupted = 1; break; }
    }
    if (interrupted) {
        char *sp = out_file(t, "%s-state.safetensors", cfg->output_name);
        if (!sp || save_state(t, sp, step, epoch, micro) != DL_OK) { free(sp); goto out_sig; }
        say(t, "interrupted at step %d: state saved to %s (continue with --resume %s)", step, sp, sp);
        free(state_path);
        state_path = sp;
        res->output_path = strdup(sp);
        res->interrupted = 1;
        write_plot(t);
    } else {
        char *p = out_file(t, "%s%s", cfg->output_name, model_ext(t));
        if (!p || save_lora(t, p, step, epoch > 0 ? epoch : 1) != DL_OK) { free(p); goto out_sig; }
        say(t, "saved %s", p);
        res->output_path = p;
        if (cfg->save_state) {
            char *sp = out_file(t, "%s-state.safetensors", cfg->output_name);
            if (!sp || save_state(t, sp, step, epoch, micro) != DL_OK) { free(sp); goto out_sig; }
            free(state_path);
            state_path = sp;
        }
        write_plot(t);
    }
    res->state_path = state_path;
    state_path = NULL;
    rc = DL_OK;
    if (cfg->verbose) {
        char line[1024];
        FILE *mf = fmemopen(line, sizeof line, "w");
        if (mf) {
            dl_phases_print(&t->phases, mf, "train");
            fclose(mf);
            line[sizeof line - 1] = 0;
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            say(t, "%s", line);
        }
    }
out_sig:
    dl_train_set_interrupted(0);
    dl_train_signal_restore();
out:
    if (have_rs) dl_train_state_free(&rs);
    free(state_path);
    teardown(t);
    free(t);
    if (rc != DL_OK) {
        free(res->losses);
        free(res->output_path);
        memset(res, 0, sizeof *res);
    }
    return rc;
}

void dl_train_result_free(dl_train_result *res)
{
    free(res->losses);
    free(res->output_path);
    free(res->state_path);
    memset(res, 0, sizeof *res);
}
