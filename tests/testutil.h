/* testutil.h - shared helpers for the Criterion suite: golden data, comparisons, random
 * inputs, finite differences. Every comparison rejects NaN and prints the seed it used. */
#ifndef DANLU_TESTUTIL_H
#define DANLU_TESTUTIL_H

#include "core/ctx.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"
#include "train/unet_train.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Absolute path of a file in the source tree (DANLU_SOURCE_DIR/rel). Static buffer per call
 * slot: valid until the 8th following call. */
const char *tu_path(const char *rel);
/* Absolute path of a file in ../shared/data (beside the checkout), e.g. "clip/bpe_...gz". */
const char *tu_shared_path(const char *rel);

/* A fresh temporary directory for the current test (Criterion runs each test in its own
 * process): use tu_tmpdir_init / tu_tmpdir_fini as .init / .fini. tu_tmp(rel) is a path inside
 * it (static buffer per call slot: valid until the 8th following call). */
void tu_tmpdir_init(void);
void tu_tmpdir_fini(void);
const char *tu_tmpdir(void);
const char *tu_tmp(const char *rel);

/* Open tests/golden/<name>.safetensors; fails the test if it cannot. */
void tu_golden_open(dl_st_file *f, const char *name);
/* malloc'd fp32 copy of tensor `tensor` (any float dtype); *numel set if non-NULL. Fails the
 * test when missing. */
float *tu_golden_f32(const dl_st_file *f, const char *tensor, int64_t *numel);
/* Same, and asserts the golden shape equals (ndim, shape). */
float *tu_golden_f32_shape(const dl_st_file *f, const char *tensor, int ndim, const int64_t *shape);
/* Read an integer scalar or 1-element tensor (I64/I32/F32) from the golden file. */
int64_t tu_golden_int(const dl_st_file *f, const char *tensor);

/* Relative error in the L2 (Frobenius) norm: ||got - ref|| / max(||ref||, 1e-30), computed in
 * double. Returns +inf if any element of got is NaN or inf. */
double tu_rel_l2(const float *got, const float *ref, size_t n);
/* Assert tu_rel_l2(got, ref) <= tol; the message names label, the error, the worst index. */
void tu_expect_close(const float *got, const float *ref, size_t n, double tol, const char *label);
/* Same against a double reference (for float64 finite differences). */
void tu_expect_close_d(const float *got, const double *ref, size_t n, double tol, const char *label);

/* Deterministic uniform [lo, hi) fill (xorshift; seed printed on failure by callers). */
void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
/* malloc'd array of n floats pre-filled with NaN (poisoned outputs). */
float *tu_alloc_nan(size_t n);

/* Weights-arena bytes of ck's UNet / VAE / text encoder, measured as the product measures them
 * (dl_*_weights_bytes: the loader against a measuring arena); fails the test on an error. */
size_t tu_unet_weights_bytes(dl_checkpoint *ck);
size_t tu_vae_weights_bytes(dl_checkpoint *ck);
size_t tu_clip_weights_bytes(dl_checkpoint *ck);

/* A CPU context for tests (2 threads unless DANLU_THREADS says otherwise). */
dl_ctx *tu_ctx(void);

/* Central finite differences in double precision of a scalar function f(params) with respect
 * to x[0..n): grad[i] = (f(x+h e_i) - f(x-h e_i)) / 2h. x is restored on return. */
typedef double (*tu_scalar_fn)(void *user, const double *x);
void tu_fd_grad(tu_scalar_fn f, void *user, double *x, size_t n, double h, double *grad);

/* A UNet training rig: tests/golden/tiny_unet_sd1x with a rank-2 LoRA (scale 0.5, random A
 * and B) on every linear and conv, inputs x, t, ctx and target from the unet_train golden,
 * activation and scratch arenas sized for them. */
typedef struct tu_unet_rig {
    dl_checkpoint ck;
    dl_unet u;
    dl_arena w, act, scratch;
    dl_st_file g;
    int N, H, W, T, C_out, n;
    float *x, *t, *cond, *target;
    dl_lora *l;
    int64_t *nA, *nB;
} tu_unet_rig;
void tu_unet_rig_open(tu_unet_rig *r);
/* The same rig on the UNet of model (a path; tiny_unet_sd1x's architecture) with the checkpoint's
 * weight_dtypes and weights_in_place set (layer weights kept fp16 / bf16, in the file's mapping). */
void tu_unet_rig_open_from(tu_unet_rig *r, const char *model, unsigned weight_dtypes, int in_place);
void tu_unet_rig_close(tu_unet_rig *r);
/* One step through dl_be(c): zeroed LoRA grads, tape forward, MSE, backward; every gradient
 * (dA, dB of each module, then d context) copied to grads. tape, out, dout, dctx are the
 * caller's. Returns the loss. */
double tu_unet_rig_step(const dl_ctx *c, tu_unet_rig *r, dl_unet_tape *tape, float *out, float *dout, float *dctx,
                        float *grads);

/* A checkpoint's UNet and text encoder loaded into one arena (rel: a model path relative to the
 * source tree); asserts on failure. */
typedef struct tu_te_unet {
    dl_checkpoint ck;
    dl_unet u;
    dl_clip te;
    dl_arena w;
} tu_te_unet;
void tu_te_unet_open(tu_te_unet *m, const char *rel);
void tu_te_unet_close(tu_te_unet *m);

/* The inputs stored with the tiny-pipe golden files of test_train_diffusers.c and
 * test_lora_tools_diffusers.c: in.x [N, H, W, 4], in.t [N], in.ctx [N, T, CTX], in.ids [N, T]. */
enum { TU_TE_N = 2, TU_TE_H = 8, TU_TE_W = 8, TU_TE_T = 8, TU_TE_CTX = 64 };
typedef struct tu_te_inputs {
    float *x, *t, *c; /* [N, H, W, 4], [N], [N, T, CTX] */
    int32_t ids[TU_TE_N * TU_TE_T];
} tu_te_inputs;
void tu_te_inputs_load(tu_te_inputs *in, const dl_st_file *g);
void tu_te_inputs_free(tu_te_inputs *in);

#ifdef __cplusplus
}
#endif
#endif
