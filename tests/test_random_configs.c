/* test_random_configs.c - tiny pipelines whose UNet, VAE and text-encoder configs were drawn at
 * random over the legal space (tests/gen/gen_random_configs.py: 1-4 levels, layers_per_block,
 * heads per level, linear or conv projection, transformer depth, norm groups, latent channels,
 * activations), loaded and run through the sizing paths the product uses, against diffusers /
 * transformers in float64.
 *
 * For every network of every pipeline:
 *  - the weights arena is sized by dl_*_weights_bytes (the loader run against a measuring
 *    arena), and that size equals the checkpoint's own tensor list as placed (each tensor of the
 *    part's file as fp32, rounded to the arena's 64 bytes) and the bytes the real load takes;
 *    every tensor of the part's file is read;
 *  - the forward runs on a scratch arena of exactly dl_*_scratch_bytes (a formula too small
 *    aborts the test) and gives it all back;
 *  - the outputs match the reference (relative L2, the project's fp32 bound).
 * rcs is also written in the single-file layout (our diffusers -> ldm mapping) and loaded from
 * there: same detected structure, same measured sizes, byte-identical weights. */
#include "testutil.h"
#include "core/arena.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* fp32 forward vs the float64 reference on fp16 weights scaled up 1.5-2x: the errors reached
 * are printed per case; the bound is the project's fp32 one. */
#define TOL 1e-5

static const char *const MODELS[] = {"rc0", "rc1", "rc2", "rc3", "rc4", "rcs"};
#define N_MODELS (int)(sizeof MODELS / sizeof *MODELS)

TestSuite(random_configs, .init = tu_tmpdir_init, .fini = tu_tmpdir_fini);

static void open_model(dl_checkpoint *ck, const char *name)
{
    char rel[128];
    snprintf(rel, sizeof rel, "tests/golden/random_configs/%s", name);
    cr_assert_eq(dl_ckpt_open(ck, tu_path(rel), NULL), DL_OK, "open %s: %s", rel, dl_error_msg());
}

/* The part's tensors as the arena holds them: each of its file's tensors (a diffusers folder
 * has one file per part) as fp32, rounded up to 64 bytes; buffers that are not weights
 * (position_ids) are not placed. */
static size_t file_bytes(const dl_checkpoint *ck, dl_part part)
{
    const dl_st_file *f = &ck->files[ck->part_file[part]];
    size_t b = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const char *nm = f->tensors[i].name;
        size_t len = strlen(nm);
        if (len >= 12 && !strcmp(nm + len - 12, "position_ids")) continue;
        b += ((size_t)dl_st_numel(&f->tensors[i]) * sizeof(float) + 63) & ~(size_t)63;
    }
    return b;
}

static void expect_all_read(const dl_checkpoint *ck, dl_part part, const char *label)
{
    int n = 0;
    char **unused = dl_ckpt_unused(ck, part, &n);
    cr_expect_eq(n, 0, "%s: %d %s tensors never read (first: %s)", label, n, dl_part_name(part), n ? unused[0] : "");
    dl_ckpt_free_names(unused, n);
}

/* measured == the file's tensors as placed (diffusers folders only: a single file holds every
 * part) == what the load took. */
static void expect_sized(const dl_checkpoint *ck, dl_part part, size_t measured, const dl_arena *w, const char *label)
{
    if (ck->layout == DL_LAYOUT_DIFFUSERS)
        cr_expect_eq(measured, file_bytes(ck, part), "%s %s: measured %zu bytes, its file's tensors take %zu", label,
                     dl_part_name(part), measured, file_bytes(ck, part));
    cr_expect_eq(w->used, measured, "%s %s: the load took %zu bytes, measured %zu", label, dl_part_name(part), w->used,
                 measured);
    expect_all_read(ck, part, label);
}

static void expect_close(const float *got, const float *ref, size_t n, const char *model, const char *what)
{
    char label[128];
    snprintf(label, sizeof label, "%s %s", model, what);
    cr_log_info("random_configs %s: rel L2 %.3g vs float64", label, tu_rel_l2(got, ref, n));
    tu_expect_close(got, ref, n, TOL, label);
}

static float *golden(const dl_st_file *g, const char *model, const char *tensor, int ndim, const int64_t *shape)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", model, tensor);
    return shape ? tu_golden_f32_shape(g, key, ndim, shape) : tu_golden_f32(g, key, NULL);
}

static const dl_st_tensor *golden_t(const dl_st_file *g, const char *model, const char *tensor)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", model, tensor);
    const dl_st_tensor *t = dl_st_find(g, key);
    cr_assert_not_null(t, "%s missing from random_configs.safetensors", key);
    return t;
}

/* ---------------------------------------------------------------- UNet */

static void check_unet(const char *model, const dl_st_file *g)
{
    dl_checkpoint ck;
    open_model(&ck, model);
    size_t wb = tu_unet_weights_bytes(&ck);
    dl_arena w, s;
    cr_assert_eq(dl_arena_init(&w, "weights", wb), DL_OK);
    dl_unet u;
    cr_assert_eq(dl_unet_load(&u, &ck, &w), DL_OK, "%s: %s", model, dl_error_msg());
    expect_sized(&ck, DL_PART_UNET, wb, &w, model);

    const dl_st_tensor *tx = golden_t(g, model, "unet.x"), *tc = golden_t(g, model, "unet.ctx");
    const int N = (int)tx->shape[0], H = (int)tx->shape[1], W = (int)tx->shape[2], T = (int)tc->shape[1];
    const dl_unet_config *c = &u.cfg;
    float *x = golden(g, model, "unet.x", 0, NULL), *t = golden(g, model, "unet.t", 0, NULL);
    float *ctx = golden(g, model, "unet.ctx", 0, NULL);
    int64_t os[4] = {N, H, W, c->out_channels};
    float *ref = golden(g, model, "unet.out", 4, os);
    size_t n = (size_t)N * H * W * c->out_channels;
    float *out = tu_alloc_nan(n);
    size_t sb = dl_unet_scratch_bytes(&u, N, H, W, T);
    cr_assert_eq(dl_arena_init(&s, "scratch", sb), DL_OK);
    dl_unet_forward(tu_ctx(), &u, N, H, W, x, t, ctx, T, out, &s);
    cr_expect_eq(s.used, 0, "%s: UNet scratch not given back", model);
    cr_log_info("random_configs %s unet: weights %zu bytes, scratch sized %zu, peak %zu", model, wb, sb, s.peak);
    expect_close(out, ref, n, model, "unet");
    free(x); free(t); free(ctx); free(ref); free(out);
    dl_unet_free(&u);
    dl_arena_free(&s);
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

Test(random_configs, unet_sized_by_the_loader_matches_diffusers)
{
    dl_st_file g;
    tu_golden_open(&g, "random_configs");
    for (int i = 0; i < N_MODELS; i++) check_unet(MODELS[i], &g);
    dl_st_close(&g);
}

/* ---------------------------------------------------------------- VAE */

static void check_vae(const char *model, const dl_st_file *g)
{
    dl_checkpoint ck;
    open_model(&ck, model);
    size_t wb = tu_vae_weights_bytes(&ck);
    dl_arena w, s;
    cr_assert_eq(dl_arena_init(&w, "weights", wb), DL_OK);
    dl_vae vae;
    cr_assert_eq(dl_vae_load(&vae, &ck, &w), DL_OK, "%s: %s", model, dl_error_msg());
    expect_sized(&ck, DL_PART_VAE, wb, &w, model);

    const dl_st_tensor *ti = golden_t(g, model, "vae.image");
    const int N = (int)ti->shape[0], H = (int)ti->shape[1], W = (int)ti->shape[2];
    const int f = 1 << (vae.cfg.n_blocks - 1), h = H / f, wl = W / f, L = vae.cfg.latent_channels;
    const size_t nl = (size_t)N * h * wl * L, ni = (size_t)N * H * W * 3;
    int64_t ls[4] = {N, h, wl, L}, is[4] = {N, H, W, 3};
    float *img = golden(g, model, "vae.image", 4, is), *z = golden(g, model, "vae.z", 4, ls);
    float *mean = tu_alloc_nan(nl), *logvar = tu_alloc_nan(nl), *dec = tu_alloc_nan(ni);
    size_t se = dl_vae_scratch_bytes(&vae.cfg, N, H, W);
    cr_assert_eq(dl_arena_init(&s, "scratch", se), DL_OK);
    dl_vae_encode(tu_ctx(), &vae, N, H, W, img, mean, logvar, &s);
    cr_expect_eq(s.used, 0, "%s: VAE encoder scratch not given back", model);
    size_t peak_enc = s.peak;
    s.peak = 0;
    dl_vae_decode(tu_ctx(), &vae, N, h, wl, z, dec, &s);
    cr_expect_eq(s.used, 0, "%s: VAE decoder scratch not given back", model);
    cr_log_info("random_configs %s vae: weights %zu bytes, scratch sized %zu, peak %zu (encode) %zu (decode)", model,
                wb, se, peak_enc, s.peak);
    float *ref = golden(g, model, "vae.mean", 4, ls);
    expect_close(mean, ref, nl, model, "vae mean");
    free(ref);
    ref = golden(g, model, "vae.logvar", 4, ls);
    expect_close(logvar, ref, nl, model, "vae logvar");
    free(ref);
    ref = golden(g, model, "vae.decoded", 4, is);
    expect_close(dec, ref, ni, model, "vae decoded");
    free(ref);
    free(img); free(z); free(mean); free(logvar); free(dec);
    dl_vae_free(&vae);
    dl_arena_free(&s);
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

Test(random_configs, vae_sized_by_the_loader_matches_diffusers)
{
    dl_st_file g;
    tu_golden_open(&g, "random_configs");
    for (int i = 0; i < N_MODELS; i++) check_vae(MODELS[i], &g);
    dl_st_close(&g);
}

/* ---------------------------------------------------------------- text encoder */

static void check_te(const char *model, const dl_st_file *g)
{
    dl_checkpoint ck;
    open_model(&ck, model);
    size_t wb = tu_clip_weights_bytes(&ck);
    dl_arena w, s;
    cr_assert_eq(dl_arena_init(&w, "weights", wb), DL_OK);
    dl_clip te;
    cr_assert_eq(dl_clip_load(&te, &ck, &w), DL_OK, "%s: %s", model, dl_error_msg());
    expect_sized(&ck, DL_PART_TEXT, wb, &w, model);

    const dl_st_tensor *ti = golden_t(g, model, "te.input_ids");
    cr_assert_eq(ti->dtype, DL_I64);
    const int N = (int)ti->shape[0], T = (int)ti->shape[1], C = te.cfg.hidden_size, L = te.cfg.num_layers;
    int32_t *ids = malloc(sizeof *ids * (size_t)N * T);
    for (int i = 0; i < N * T; i++) {
        int64_t v;
        memcpy(&v, (const char *)ti->data + 8 * (size_t)i, 8);
        ids[i] = (int32_t)v;
    }
    const size_t n = (size_t)N * T * C;
    int64_t hs[3] = {N, T, C};
    float *out = tu_alloc_nan(n);
    size_t sb = dl_clip_scratch_bytes(&te, N, T);
    cr_assert_eq(dl_arena_init(&s, "scratch", sb), DL_OK);
    dl_clip_forward(tu_ctx(), &te, N, T, ids, L, 1, out, &s);
    float *ref = golden(g, model, "te.last", 3, hs);
    expect_close(out, ref, n, model, "text encoder last_hidden_state");
    free(ref);
    if (L > 1) { /* hidden_states[-2] of a one-layer encoder is the embeddings: no layer to stop after */
        dl_clip_forward(tu_ctx(), &te, N, T, ids, L - 1, 0, out, &s);
        ref = golden(g, model, "te.penultimate", 3, hs);
        expect_close(out, ref, n, model, "text encoder hidden_states[-2]");
        free(ref);
    }
    cr_expect_eq(s.used, 0, "%s: text encoder scratch not given back", model);
    cr_log_info("random_configs %s text encoder: weights %zu bytes, scratch sized %zu, peak %zu", model, wb, sb, s.peak);
    free(ids); free(out);
    dl_clip_free(&te);
    dl_arena_free(&s);
    dl_arena_free(&w);
    dl_ckpt_close(&ck);
}

Test(random_configs, text_encoder_sized_by_the_loader_matches_transformers)
{
    dl_st_file g;
    tu_golden_open(&g, "random_configs");
    for (int i = 0; i < N_MODELS; i++) check_te(MODELS[i], &g);
    dl_st_close(&g);
}

/* ---------------------------------------------------------------- single-file layout */

typedef struct writer {
    dl_checkpoint *ck;
    dl_st_entry *e;
    float **data;
    int n, cap;
} writer;

/* One tensor of the folder, under its single-file key, as fp32 (the ldm VAE attention's [C, C]
 * linears as the [C, C, 1, 1] convs the single file holds). */
static int add_single(void *user, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    writer *w = user;
    dl_ckpt_key k;
    cr_assert_eq(dl_ckpt_map_single(&w->ck->cfg, DL_TEXT_HF, part, name, &k), DL_OK, "%s", dl_error_msg());
    cr_assert_eq(k.split, -1);
    cr_assert_lt(w->n, w->cap);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    float *d = malloc(sizeof *d * (size_t)numel);
    cr_assert_eq(dl_ckpt_load(w->ck, part, name, ndim, shape, d), DL_OK, "%s", dl_error_msg());
    dl_st_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(k.key);
    e->dtype = DL_F32;
    e->ndim = ndim;
    memcpy(e->shape, shape, sizeof(int64_t) * (size_t)ndim);
    if (k.conv1x1 && ndim == 2) {
        e->ndim = 4;
        e->shape[2] = e->shape[3] = 1;
    }
    e->data = d;
    w->data[w->n++] = d;
    return DL_OK;
}

/* Every part of the checkpoint measured and loaded into its own arena (w[part]); measured
 * sizes to bytes[part]. The networks are freed again: only the arenas are kept. */
static void load_parts(dl_checkpoint *ck, dl_arena w[DL_PART_COUNT], size_t bytes[DL_PART_COUNT], const char *label)
{
    bytes[DL_PART_UNET] = tu_unet_weights_bytes(ck);
    bytes[DL_PART_VAE] = tu_vae_weights_bytes(ck);
    bytes[DL_PART_TEXT] = tu_clip_weights_bytes(ck);
    for (int p = 0; p < DL_PART_TEXT2; p++) { /* SD-like configs: no second text encoder */
        cr_assert_eq(dl_arena_init(&w[p], "weights", bytes[p]), DL_OK);
        memset(w[p].base, 0, w[p].cap); /* the 64-byte rounding leaves gaps: make them compare equal */
    }
    dl_unet u;
    dl_vae v;
    dl_clip c;
    cr_assert_eq(dl_unet_load(&u, ck, &w[DL_PART_UNET]), DL_OK, "%s: %s", label, dl_error_msg());
    cr_assert_eq(dl_vae_load(&v, ck, &w[DL_PART_VAE]), DL_OK, "%s: %s", label, dl_error_msg());
    cr_assert_eq(dl_clip_load(&c, ck, &w[DL_PART_TEXT]), DL_OK, "%s: %s", label, dl_error_msg());
    for (int p = 0; p < DL_PART_TEXT2; p++) expect_sized(ck, (dl_part)p, bytes[p], &w[p], label);
    dl_unet_free(&u);
    dl_vae_free(&v);
    dl_clip_free(&c);
}

Test(random_configs, single_file_layout_loads_the_same)
{
    dl_checkpoint a;
    open_model(&a, "rcs");
    writer wr = {&a, NULL, NULL, 0, 4096};
    wr.e = calloc((size_t)wr.cap, sizeof *wr.e);
    wr.data = calloc((size_t)wr.cap, sizeof *wr.data);
    for (int p = 0; p < DL_PART_COUNT; p++)
        cr_assert_eq(dl_model_weights(&a.cfg, (dl_part)p, add_single, &wr), DL_OK, "%s", dl_error_msg());
    const char *path = tu_tmp("rcs.safetensors");
    cr_assert_eq(dl_st_save(path, wr.e, wr.n, NULL, 0), DL_OK, "%s", dl_error_msg());
    for (int i = 0; i < wr.n; i++) {
        free((void *)wr.e[i].name);
        free(wr.data[i]);
    }
    free(wr.e);
    free(wr.data);

    dl_checkpoint b;
    cr_assert_eq(dl_ckpt_open(&b, path, NULL), DL_OK, "%s", dl_error_msg());
    cr_expect_eq(b.layout, DL_LAYOUT_SINGLE);
    /* what the weights do not say is taken from the folder; the structure must be detected */
    dl_model_config det = b.cfg;
    det.unet.sample_size = a.cfg.unet.sample_size;
    det.unet.norm_eps = a.cfg.unet.norm_eps;
    det.unet.flip_sin_to_cos = a.cfg.unet.flip_sin_to_cos;
    det.unet.freq_shift = a.cfg.unet.freq_shift;
    det.unet.prediction = a.cfg.unet.prediction;
    det.vae.sample_size = a.cfg.vae.sample_size;
    det.vae.scaling_factor = a.cfg.vae.scaling_factor;
    det.text.layer_norm_eps = a.cfg.text.layer_norm_eps;
    const char *d;
    cr_expect_null(d = dl_unet_config_diff(&det.unet, &a.cfg.unet), "unet detected vs json: %s", d);
    cr_expect_null(d = dl_vae_config_diff(&det.vae, &a.cfg.vae), "vae detected vs json: %s", d);
    cr_expect_null(d = dl_clip_config_diff(&det.text, &a.cfg.text), "text detected vs json: %s", d);

    dl_arena wa[DL_PART_COUNT], wb[DL_PART_COUNT];
    size_t ba[DL_PART_COUNT], bb[DL_PART_COUNT];
    load_parts(&a, wa, ba, "rcs folder");
    load_parts(&b, wb, bb, "rcs single file");
    for (int p = 0; p < DL_PART_TEXT2; p++) {
        cr_expect_eq(bb[p], ba[p], "%s: single file measured %zu bytes, the folder %zu", dl_part_name((dl_part)p),
                     bb[p], ba[p]);
        if (wa[p].used == wb[p].used)
        {
            size_t off = 0;
            while (off < wa[p].used && wa[p].base[off] == wb[p].base[off]) off++;
            cr_expect(off == wa[p].used, "%s: the two layouts load different weights (first at byte %zu of %zu)",
                      dl_part_name((dl_part)p), off, wa[p].used);
        }
        dl_arena_free(&wa[p]);
        dl_arena_free(&wb[p]);
    }
    dl_ckpt_close(&b);
    dl_ckpt_close(&a);
}

/* A measuring arena counts like a real one and hands out nothing usable; the loaders fill
 * nothing through it (the placeholder is read-only: a write would fault). */
Test(random_configs, measuring_arena_counts_like_a_real_one)
{
    dl_arena m, r;
    dl_arena_init_measure(&m, "measuring");
    cr_assert_eq(dl_arena_init(&r, "real", 4096), DL_OK);
    const size_t sizes[] = {1, 63, 64, 65, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        cr_assert_not_null(dl_arena_alloc(&m, sizes[i]));
        cr_assert_not_null(dl_arena_calloc(&r, sizes[i]));
    }
    cr_expect_eq(m.used, r.used);
    cr_expect(dl_arena_measuring(&m));
    cr_expect(!dl_arena_measuring(&r));
    dl_arena_free(&r);
}
