/* testutil.c - golden-data access, comparisons, random fills and finite differences for tests. */
#define _XOPEN_SOURCE 700
#include "testutil.h"
#include "backend/backend.h"

#include <criterion/criterion.h>
#include <ftw.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hashes the tests compute go to a cache under build/, never the user's ~/.cache (each test
 * that needs a cache of its own sets XDG_CACHE_HOME itself). */
__attribute__((constructor)) static void tu_private_hash_cache(void)
{
    setenv("XDG_CACHE_HOME", DANLU_SOURCE_DIR "/build/test-cache", 1);
}

const char *tu_path(const char *rel)
{
    static _Thread_local char bufs[8][1024];
    static _Thread_local int slot;
    char *b = bufs[slot++ & 7];
    snprintf(b, 1024, "%s/%s", DANLU_SOURCE_DIR, rel);
    return b;
}

const char *tu_shared_path(const char *rel)
{
    static _Thread_local char bufs[8][1024];
    static _Thread_local int slot;
    char *b = bufs[slot++ & 7];
    snprintf(b, 1024, "%s/../shared/data/%s", DANLU_SOURCE_DIR, rel);
    return b;
}

static char g_tmpdir[64];

static int tmp_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

void tu_tmpdir_init(void)
{
    strcpy(g_tmpdir, "/tmp/danlu-test-XXXXXX");
    cr_assert_not_null(mkdtemp(g_tmpdir), "cannot create a temporary directory");
}

void tu_tmpdir_fini(void)
{
    if (g_tmpdir[0]) nftw(g_tmpdir, tmp_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    g_tmpdir[0] = 0;
}

const char *tu_tmpdir(void) { return g_tmpdir; }

const char *tu_tmp(const char *rel)
{
    static _Thread_local char bufs[8][1024];
    static _Thread_local int slot;
    char *b = bufs[slot++ & 7];
    snprintf(b, 1024, "%s/%s", g_tmpdir, rel);
    return b;
}

void tu_golden_open(dl_st_file *f, const char *name)
{
    char rel[512];
    snprintf(rel, sizeof rel, "tests/golden/%s.safetensors", name);
    if (dl_st_open(f, tu_path(rel)) != DL_OK) cr_assert_fail("golden data: %s", dl_error_msg());
}

float *tu_golden_f32(const dl_st_file *f, const char *tensor, int64_t *numel)
{
    const dl_st_tensor *t = dl_st_find(f, tensor);
    if (!t) cr_assert_fail("golden data %s: no tensor '%s'", f->path, tensor);
    int64_t n = dl_st_numel(t);
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    if (dl_st_read_f32(f, t, x) != DL_OK) cr_assert_fail("%s", dl_error_msg());
    if (numel) *numel = n;
    return x;
}

float *tu_golden_f32_shape(const dl_st_file *f, const char *tensor, int ndim, const int64_t *shape)
{
    const dl_st_tensor *t = dl_st_find(f, tensor);
    if (!t) cr_assert_fail("golden data %s: no tensor '%s'", f->path, tensor);
    if (!dl_shape_eq(t->shape, t->ndim, shape, ndim)) {
        char a[128], b[128];
        cr_assert_fail("golden tensor '%s' has shape %s, test expects %s", tensor, dl_shape_str(t->shape, t->ndim, a, 128),
                 dl_shape_str(shape, ndim, b, 128));
    }
    return tu_golden_f32(f, tensor, NULL);
}

int64_t tu_golden_int(const dl_st_file *f, const char *tensor)
{
    const dl_st_tensor *t = dl_st_find(f, tensor);
    if (!t || dl_st_numel(t) != 1) cr_assert_fail("golden data %s: no scalar '%s'", f->path, tensor);
    switch (t->dtype) {
    case DL_I64: { int64_t v; memcpy(&v, t->data, 8); return v; }
    case DL_I32: { int32_t v; memcpy(&v, t->data, 4); return v; }
    case DL_F32: { float v; memcpy(&v, t->data, 4); return (int64_t)v; }
    default: cr_assert_fail("golden scalar '%s' has dtype %s", tensor, dl_dtype_name(t->dtype));
    }
    return 0;
}

static double rel_l2_worst(const float *got, const float *refF, const double *refD, size_t n, size_t *worst)
{
    double num = 0, den = 0, wmax = -1;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], r = refF ? (double)refF[i] : refD[i];
        if (!isfinite(g)) { *worst = i; return INFINITY; }
        double d = g - r;
        num += d * d;
        den += r * r;
        if (fabs(d) > wmax) { wmax = fabs(d); *worst = i; }
    }
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

double tu_rel_l2(const float *got, const float *ref, size_t n)
{
    size_t w;
    return rel_l2_worst(got, ref, NULL, n, &w);
}

void tu_expect_close(const float *got, const float *ref, size_t n, double tol, const char *label)
{
    size_t w;
    double e = rel_l2_worst(got, ref, NULL, n, &w);
    cr_expect(e <= tol, "%s: relative L2 error %.3g > %.3g (worst element %zu: got %.9g, want %.9g)", label, e,
              tol, w, n ? got[w] : 0.0, n ? ref[w] : 0.0);
}

void tu_expect_close_d(const float *got, const double *ref, size_t n, double tol, const char *label)
{
    size_t w;
    double e = rel_l2_worst(got, NULL, ref, n, &w);
    cr_expect(e <= tol, "%s: relative L2 error %.3g > %.3g (worst element %zu: got %.9g, want %.9g)", label, e,
              tol, w, n ? got[w] : 0.0, n ? ref[w] : 0.0);
}

void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
}

float *tu_alloc_nan(size_t n)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

dl_ctx *tu_ctx(void)
{
    static dl_ctx ctx;
    static int init;
    if (!init) {
        const char *env = getenv("DANLU_THREADS");
        if (dl_ctx_init(&ctx, env && *env ? 0 : 2) != DL_OK) cr_assert_fail("%s", dl_error_msg());
        init = 1;
    }
    return &ctx;
}

void tu_fd_grad(tu_scalar_fn f, void *user, double *x, size_t n, double h, double *grad)
{
    for (size_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        double fp = f(user, x);
        x[i] = keep - h;
        double fm = f(user, x);
        x[i] = keep;
        grad[i] = (fp - fm) / (2 * h);
    }
}

/* ---- UNet training rig ---- */

size_t tu_unet_weights_bytes(dl_checkpoint *ck)
{
    size_t b = 0;
    cr_assert_eq(dl_unet_weights_bytes(ck, &b), DL_OK, "measuring the UNet of %s: %s", ck->path, dl_error_msg());
    return b;
}

size_t tu_vae_weights_bytes(dl_checkpoint *ck)
{
    size_t b = 0;
    cr_assert_eq(dl_vae_weights_bytes(ck, &b), DL_OK, "measuring the VAE of %s: %s", ck->path, dl_error_msg());
    return b;
}

size_t tu_clip_weights_bytes(dl_checkpoint *ck)
{
    size_t b = 0;
    cr_assert_eq(dl_clip_weights_bytes(ck, &b), DL_OK, "measuring the text encoder of %s: %s", ck->path,
                 dl_error_msg());
    return b;
}

/* tiny_unet_sd1x with a rank-2 LoRA on every linear and conv, inputs from the unet_train golden. */
void tu_unet_rig_open(tu_unet_rig *r)
{
    tu_unet_rig_open_from(r, tu_path("tests/golden/tiny_unet_sd1x"), 0, 0);
}

void tu_unet_rig_open_from(tu_unet_rig *r, const char *model, unsigned weight_dtypes, int in_place)
{
    memset(r, 0, sizeof *r);
    cr_assert_eq(dl_ckpt_open(&r->ck, model, NULL), DL_OK, "%s", dl_error_msg());
    r->ck.weight_dtypes = weight_dtypes;
    r->ck.weights_in_place = in_place;
    cr_assert_eq(dl_arena_init(&r->w, "weights", tu_unet_weights_bytes(&r->ck)), DL_OK);
    cr_assert_eq(dl_unet_load(&r->u, &r->ck, &r->w), DL_OK, "%s", dl_error_msg());
    tu_golden_open(&r->g, "unet_train");
    const dl_st_tensor *tx = dl_st_find(&r->g, "sd1x.x"), *tc = dl_st_find(&r->g, "sd1x.ctx");
    cr_assert(tx && tc);
    r->N = (int)tx->shape[0], r->H = (int)tx->shape[1], r->W = (int)tx->shape[2], r->T = (int)tc->shape[1];
    r->C_out = r->u.cfg.out_channels;
    r->x = tu_golden_f32(&r->g, "sd1x.x", NULL);
    r->t = tu_golden_f32(&r->g, "sd1x.t", NULL);
    r->cond = tu_golden_f32(&r->g, "sd1x.ctx", NULL);
    r->target = tu_golden_f32(&r->g, "sd1x.target", NULL);
    int nm = 0;
    const dl_unet_module *mods = dl_unet_modules(&r->u, &nm);
    r->l = calloc((size_t)nm, sizeof *r->l);
    r->nA = calloc((size_t)nm, sizeof *r->nA);
    r->nB = calloc((size_t)nm, sizeof *r->nB);
    for (int i = 0; i < nm; i++) {
        dl_lora *l = &r->l[i];
        const int64_t K = mods[i].kind == DL_MODULE_LINEAR ? mods[i].linear->in
                                                           : (int64_t)mods[i].conv->k * mods[i].conv->k * mods[i].conv->cin;
        const int64_t out = mods[i].kind == DL_MODULE_LINEAR ? mods[i].linear->out : mods[i].conv->cout;
        l->r = 2, l->scale = 0.5f;
        r->nA[i] = 2 * K, r->nB[i] = out * 2;
        l->A = malloc((size_t)r->nA[i] * sizeof(float)), l->B = malloc((size_t)r->nB[i] * sizeof(float));
        l->dA = calloc((size_t)r->nA[i], sizeof(float)), l->dB = calloc((size_t)r->nB[i], sizeof(float));
        tu_fill_uniform(l->A, (size_t)r->nA[i], 7 + (uint64_t)i, -0.1f, 0.1f);
        tu_fill_uniform(l->B, (size_t)r->nB[i], 9000 + (uint64_t)i, -0.1f, 0.1f);
        if (mods[i].kind == DL_MODULE_LINEAR) mods[i].linear->lora = l;
        else mods[i].conv->lora = l;
    }
    r->n = nm;
    cr_assert_eq(dl_arena_init(&r->act, "activations", dl_unet_train_act_bytes(&r->u, r->N, r->H, r->W, r->T, 0)),
                 DL_OK);
    cr_assert_eq(dl_arena_init(&r->scratch, "scratch",
                               dl_unet_train_scratch_bytes(&r->u, r->N, r->H, r->W, r->T, 0, 1)),
                 DL_OK);
}

void tu_unet_rig_close(tu_unet_rig *r)
{
    for (int i = 0; i < r->n; i++) free(r->l[i].A), free(r->l[i].B), free(r->l[i].dA), free(r->l[i].dB);
    free(r->l), free(r->nA), free(r->nB);
    free(r->x), free(r->t), free(r->cond), free(r->target);
    dl_arena_free(&r->act);
    dl_arena_free(&r->scratch);
    dl_st_close(&r->g);
    dl_unet_free(&r->u);
    dl_arena_free(&r->w);
    dl_ckpt_close(&r->ck);
}

double tu_unet_rig_step(const dl_ctx *c, tu_unet_rig *r, dl_unet_tape *tape, float *out, float *dout, float *dctx,
                         float *grads)
{
    const int64_t D = (int64_t)r->H * r->W * r->C_out;
    for (int i = 0; i < r->n; i++) {
        memset(r->l[i].dA, 0, (size_t)r->nA[i] * sizeof(float));
        memset(r->l[i].dB, 0, (size_t)r->nB[i] * sizeof(float));
    }
    dl_arena_reset(&r->act);
    dl_unet_train_forward(c, &r->u, tape, r->N, r->H, r->W, r->x, r->t, r->cond, r->T, out, 0, &r->act, &r->scratch);
    float loss;
    dl_be(c)->mse_loss_forward(c, r->N, D, out, r->target, NULL, NULL, &loss);
    dl_be(c)->mse_loss_backward(c, r->N, D, out, r->target, NULL, 1.0f, dout, NULL);
    dl_unet_backward(c, tape, dout, dctx, &r->scratch);
    size_t k = 0;
    for (int i = 0; i < r->n; i++) {
        memcpy(grads + k, r->l[i].dA, (size_t)r->nA[i] * sizeof(float)), k += (size_t)r->nA[i];
        memcpy(grads + k, r->l[i].dB, (size_t)r->nB[i] * sizeof(float)), k += (size_t)r->nB[i];
    }
    memcpy(grads + k, dctx, (size_t)r->N * r->T * r->u.cfg.cross_attention_dim * sizeof(float));
    return loss;
}

/* ---- tiny UNet + text encoder ---- */

void tu_te_unet_open(tu_te_unet *m, const char *rel)
{
    cr_assert_eq(dl_ckpt_open(&m->ck, tu_path(rel), NULL), DL_OK, "%s", dl_error_msg());
    size_t bytes = tu_unet_weights_bytes(&m->ck) + tu_clip_weights_bytes(&m->ck);
    cr_assert_eq(dl_arena_init(&m->w, "weights", bytes), DL_OK);
    cr_assert_eq(dl_unet_load(&m->u, &m->ck, &m->w), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(dl_clip_load(&m->te, &m->ck, &m->w), DL_OK, "%s", dl_error_msg());
}

void tu_te_unet_close(tu_te_unet *m)
{
    dl_clip_free(&m->te);
    dl_unet_free(&m->u);
    dl_arena_free(&m->w);
    dl_ckpt_close(&m->ck);
}

void tu_te_inputs_load(tu_te_inputs *in, const dl_st_file *g)
{
    int64_t xs[4] = {TU_TE_N, TU_TE_H, TU_TE_W, 4}, ts[1] = {TU_TE_N}, cs[3] = {TU_TE_N, TU_TE_T, TU_TE_CTX},
            is[2] = {TU_TE_N, TU_TE_T};
    in->x = tu_golden_f32_shape(g, "in.x", 4, xs);
    in->t = tu_golden_f32_shape(g, "in.t", 1, ts);
    in->c = tu_golden_f32_shape(g, "in.ctx", 3, cs);
    float *ids = tu_golden_f32_shape(g, "in.ids", 2, is);
    for (int i = 0; i < TU_TE_N * TU_TE_T; i++) in->ids[i] = (int32_t)ids[i];
    free(ids);
}

void tu_te_inputs_free(tu_te_inputs *in)
{
    free(in->x);
    free(in->t);
    free(in->c);
}
