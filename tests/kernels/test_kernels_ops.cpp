/* test_kernels_ops.cpp - kernels/ops.cu compiled for the CPU by the SIMT emulator: every
 * element-wise, normalisation, loss and optimiser kernel against the CPU op it implements
 * (tests/kernels/kcase_ops.h: fp32 1e-6, bf16 1e-2 relative L2, copies bit-exact, reductions
 * run twice for the same bits, outputs NaN-poisoned, guard bytes after every buffer), at SD1.5
 * channel counts and odd sizes, on the 16-byte and the one-element paths; then the same kernels
 * through the dl_dev API on the emulated device, where the pointer extents and the streams of
 * every argument are checked. */
#include "ops.cu"

#include "kcase_criterion.h"
#include "kcase_ops.h"

#include "core/error.h"
#include "device/dl_dev.h"

#include <vector>

#define OPS_ENV_BEGIN(name)                                                                         \
    kc_env e;                                                                                       \
    kc_env_begin(&e, name)
#define OPS_ENV_END() kc_env_end(&e)

// ---- activations, GEGLU ----
static void run_act(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "act bf16" : "act f32");
    for (int act = 0; act < DL_ACT_COUNT; act++) {
        // {act, n, dtype, seed, off, inplace}: 16-byte path with a tail, one-element path, in place
        kc_act_case cs[] = {{act, 4099, dt, 11u + act, 0, 0}, {act, 37, dt, 21u + act, 1, 0},
                            {act, 1030, dt, 31u + act, 0, 1}, {act, 1, dt, 41u + act, 0, 0}};
        for (const kc_act_case &c : cs) kc_run_act(&e, &c);
    }
    OPS_ENV_END();
}
Test(kernels_ops, act_f32) { run_act(DL_F32); }
Test(kernels_ops, act_bf16) { run_act(DL_BF16); }

static void run_geglu(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "geglu bf16" : "geglu f32");
    // {M, D, dtype, seed, off}: SD1.5's 320-channel feed-forward (D = 1280) on 6 tokens; odd D
    kc_geglu_case cs[] = {{6, 1280, dt, 51, 0}, {5, 13, dt, 52, 0}, {3, 16, dt, 53, 1}};
    for (const kc_geglu_case &c : cs) kc_run_geglu(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, geglu_f32) { run_geglu(DL_F32); }
Test(kernels_ops, geglu_bf16) { run_geglu(DL_BF16); }

// ---- add, scale, axpy, broadcast add, concat ----
static void run_ew(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "elementwise bf16" : "elementwise f32");
    kc_ew_case cs[] = {{20483, dt, 61, 0}, {1001, dt, 62, 1}, {1, dt, 63, 0}, {8, dt, 64, 0}};
    for (const kc_ew_case &c : cs) kc_run_ew(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, elementwise_f32) { run_ew(DL_F32); }
Test(kernels_ops, elementwise_bf16) { run_ew(DL_BF16); }

static void run_bcast(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "add_bcast bf16" : "add_bcast f32");
    // {N, HW, C, per_sample, dtype, seed, off}: SD1.5 channel counts at 8x8, odd C, 300 rows
    kc_bcast_case cs[] = {{2, 64, 320, 0, dt, 71, 0}, {2, 64, 1280, 1, dt, 72, 0}, {3, 7, 37, 1, dt, 73, 1},
                          {1, 300, 5, 0, dt, 74, 0},  {2, 16, 640, 0, dt, 75, 1}};
    for (const kc_bcast_case &c : cs) kc_run_bcast(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, add_bcast_f32) { run_bcast(DL_F32); }
Test(kernels_ops, add_bcast_bf16) { run_bcast(DL_BF16); }

static void run_concat(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "concat bf16" : "concat f32");
    // {M, C1, C2, dtype, seed, off}: the UNet's skip concats (640 + 320, 1280 + 1280), odd widths
    kc_concat_case cs[] = {{64, 640, 320, dt, 81, 0}, {16, 1280, 1280, dt, 82, 0}, {13, 5, 3, dt, 83, 0},
                           {9, 8, 16, dt, 84, 1}};
    for (const kc_concat_case &c : cs) kc_run_concat(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, concat_f32) { run_concat(DL_F32); }
Test(kernels_ops, concat_bf16) { run_concat(DL_BF16); }

// ---- upsampling, padding ----
static void run_spatial(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "upsample/pad bf16" : "upsample/pad f32");
    // {N, H, W, C, top, left, bottom, right, dtype, seed, off}: SD1.5's up blocks (1280 / 640
    // channels), the VAE downsample's right/bottom pad, odd sizes and asymmetric pads
    kc_spatial_case cs[] = {{1, 4, 4, 1280, 0, 0, 1, 1, dt, 91, 0}, {2, 8, 8, 640, 1, 1, 1, 1, dt, 92, 0},
                            {1, 5, 3, 7, 1, 2, 0, 3, dt, 93, 0},    {2, 3, 5, 16, 2, 0, 1, 0, dt, 94, 1}};
    for (const kc_spatial_case &c : cs) kc_run_spatial(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, upsample_pad_f32) { run_spatial(DL_F32); }
Test(kernels_ops, upsample_pad_bf16) { run_spatial(DL_BF16); }

// ---- embeddings ----
Test(kernels_ops, timestep_embedding)
{
    OPS_ENV_BEGIN("timestep_embedding");
    // {N, dim, flip, shift, scale, max_period, dtype}: SD1.5 (320, flipped), an odd dim with a
    // shift (the zero column), dim 1 (no frequency at all), bf16
    kc_temb_case cs[] = {{4, 320, 1, 0.0f, 1.0f, 10000.0f, DL_F32}, {3, 7, 0, 1.0f, 2.0f, 1000.0f, DL_F32},
                         {2, 1, 1, 0.0f, 1.0f, 10000.0f, DL_F32},   {4, 320, 1, 0.0f, 1.0f, 10000.0f, DL_BF16},
                         {3, 33, 0, 1.0f, 1.0f, 10000.0f, DL_BF16}};
    for (const kc_temb_case &c : cs) kc_run_temb(&e, &c);
    OPS_ENV_END();
}

Test(kernels_ops, embed_tokens)
{
    OPS_ENV_BEGIN("embed_tokens");
    // {N, T, C, V, dtype, seed, off}: CLIP ViT-L's 77 x 768 (a cut vocabulary), odd C
    kc_embed_case cs[] = {{2, 77, 768, 1000, DL_F32, 101, 0}, {2, 77, 768, 1000, DL_BF16, 102, 0},
                          {3, 5, 37, 11, DL_F32, 103, 1},     {1, 9, 40, 50, DL_BF16, 104, 1}};
    for (const kc_embed_case &c : cs) kc_run_embed(&e, &c);
    OPS_ENV_END();
}

// ---- layer norm, softmax ----
static void run_layernorm(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "layernorm bf16" : "layernorm f32");
    // {M, C, affine, inplace, dtype, seed, offset}: CLIP (77 x 768), the UNet transformer (320),
    // odd C without affine and with large row means, 1280 channels in place, C = 2 and 3 (C = 1
    // is degenerate: dx is the rounding residue of dy·gamma - mean(dy·gamma), 0 or ±1 ulp·rstd)
    kc_ln_case cs[] = {{154, 768, 1, 0, dt, 111, 0.0f}, {64, 320, 1, 0, dt, 112, 0.0f}, {5, 37, 0, 0, dt, 113, 5.0f},
                       {6, 1280, 1, 1, dt, 114, 1.0f},  {1, 2, 1, 0, dt, 115, 0.0f},   {130, 3, 0, 1, dt, 116, -2.0f}};
    for (const kc_ln_case &c : cs) kc_run_layernorm(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, layernorm_f32) { run_layernorm(DL_F32); }
Test(kernels_ops, layernorm_bf16) { run_layernorm(DL_BF16); }

Test(kernels_ops, softmax)
{
    OPS_ENV_BEGIN("softmax");
    // {rows, cols, scale, causal_tq, inplace, seed}: CLIP's causal 77 x 77 over 2 samples x 4
    // heads, 1/sqrt(64)-scaled rows of 200 keys, a single column, long rows in place
    kc_softmax_case cs[] = {{2 * 4 * 77, 77, 0.125f, 77, 0, 121}, {37, 200, 0.125f, 0, 0, 122},
                            {5, 1, 1.0f, 0, 0, 123},              {6, 1000, 0.5f, 0, 1, 124},
                            {12, 33, 1.0f, 4, 1, 125}};
    for (const kc_softmax_case &c : cs) kc_run_softmax(&e, &c);
    OPS_ENV_END();
}

// ---- loss, optimiser ----
static void run_mse(dl_dtype dt)
{
    OPS_ENV_BEGIN(dt == DL_BF16 ? "mse bf16" : "mse f32");
    // {N, D, weighted, inplace, dtype, seed, off}: SD1.5 latents (4 x 64 x 64) for 2 samples with
    // min-SNR weights, odd D unweighted with dpred over pred, one element
    kc_mse_case cs[] = {{2, 4 * 64 * 64, 1, 0, dt, 131, 0}, {3, 37, 0, 1, dt, 132, 1}, {1, 1, 1, 0, dt, 133, 0},
                        {4, 1000, 0, 0, dt, 134, 0}};
    for (const kc_mse_case &c : cs) kc_run_mse(&e, &c);
    OPS_ENV_END();
}
Test(kernels_ops, mse_f32) { run_mse(DL_F32); }
Test(kernels_ops, mse_bf16) { run_mse(DL_BF16); }

Test(kernels_ops, adamw_sumsq_clip)
{
    OPS_ENV_BEGIN("adamw / sumsq / clip");
    // {n, seed, off}: a LoRA-sized slice (16-byte path), odd n off alignment, one parameter
    kc_optim_case cs[] = {{100003, 141, 0}, {37, 142, 1}, {1, 143, 0}};
    for (const kc_optim_case &c : cs) kc_run_optim(&e, &c);
    OPS_ENV_END();
}

// ---- argument checks of the launchers ----
Test(kernels_ops, rejects_bad_arguments)
{
    float buf[64];
    cr_expect_eq(dl_cuda_act_forward(DL_F16, 0, 4, buf, buf, 0), -1, "fp16 storage");
    cr_expect_eq(dl_cuda_act_forward(DL_F32, DL_ACT_COUNT, 4, buf, buf, 0), -1, "unknown activation");
    cr_expect_eq(dl_cuda_add(DL_F32, -1, buf, buf, buf, 0), -1, "negative n");
    cr_expect_eq(dl_cuda_axpy(DL_F32, 4, 1.0f, buf, buf, 0), -1, "axpy with x == y");
    cr_expect_eq(dl_cuda_geglu_forward(DL_F32, 2, 0, buf, buf, 0), -1, "D = 0");
    cr_expect_eq(dl_cuda_pad2d_forward(DL_F32, 1, 2, 2, 1, -1, 0, 0, 0, buf, buf, 0), -1, "negative pad");
    cr_expect_eq(dl_cuda_timestep_embedding(DL_F32, 1, 8, buf, 1, 4.0f, 1.0f, 10000.0f, buf, 0), -1,
                 "half dim == shift");
    cr_expect_eq(dl_cuda_mse_loss_forward(DL_F32, 0, 4, buf, buf, NULL, NULL, buf, 0), -1, "N = 0");
    cr_expect_eq(dl_cuda_mse_loss_backward(DL_F32, 1, 4, buf, buf + 8, NULL, 1.0f, NULL, buf, 0), -1,
                 "dtarget == pred");
    cr_expect_eq(dl_cuda_adamw_step(4, 1e-3, 1.0, 0.999, 1e-8, 0.0, 1, buf, buf, buf, buf, 0), -1, "beta1 = 1");
    cr_expect_eq(dl_cuda_adamw_step(4, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0, buf, buf, buf, buf, 0), -1, "step 0");
    cr_expect_eq(dl_cuda_softmax_forward(2, 0, 1.0f, 0, buf, buf, NULL, 0), -1, "cols = 0");
    cr_expect_eq(dl_cuda_sumsq(4, buf, NULL, 0), -1, "no output");
    // sizes of 0 launch nothing and succeed
    cr_expect_eq(dl_cuda_add(DL_BF16, 0, NULL, NULL, NULL, 0), 0);
    cr_expect_eq(dl_cuda_layernorm_forward(DL_F32, 0, 8, 1e-5f, NULL, NULL, NULL, NULL, NULL, NULL, 0), 0);
}

// SIMT_ORDER=random: threads in random order between barriers, each seeing shared memory as at
// the last barrier: the block and warp reductions have no race, so they still match.
Test(kernels_ops, random_interleaving)
{
    simt::set_order("random", 4242);
    OPS_ENV_BEGIN("random interleaving");
    kc_ln_case ln = {37, 200, 1, 0, DL_F32, 151, 1.0f};
    kc_run_layernorm(&e, &ln);
    kc_softmax_case sm = {9, 70, 0.5f, 3, 0, 152};
    kc_run_softmax(&e, &sm);
    kc_bcast_case bc = {2, 40, 70, 1, DL_BF16, 153, 0};
    kc_run_bcast(&e, &bc);
    kc_mse_case ms = {2, 999, 1, 0, DL_F32, 154, 0};
    kc_run_mse(&e, &ms);
    kc_optim_case op = {5000, 155, 0};
    kc_run_optim(&e, &op);
    OPS_ENV_END();
    simt::set_order(NULL);
}

// ---- through the dl_dev API on the emulated device ----
typedef struct dev_env {
    dl_dev *dev;
    dl_dev_stream *s;
} dev_env;

static void *dev_upload(dev_env *d, const void *h, size_t bytes)
{
    void *p = NULL;
    cr_assert_eq(dl_dev_malloc(d->dev, &p, bytes), DL_DEV_SUCCESS, "%s", dl_error_msg());
    if (h) cr_assert_eq(dl_dev_memcpy_h2d(d->dev, p, h, bytes, d->s), DL_DEV_SUCCESS, "%s", dl_error_msg());
    return p;
}
static void dev_download(dev_env *d, void *h, const void *p, size_t bytes)
{
    cr_assert_eq(dl_dev_memcpy_d2h(d->dev, h, p, bytes, d->s), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_synchronize(d->dev, d->s), DL_DEV_SUCCESS);
}
static double rel_l2(const float *a, const float *b, size_t n) { return kc_rel_l2(a, b, n); }

Test(kernels_ops, device_api_matches_cpu)
{
    dev_env d = {dl_dev_open(DL_DEV_EMULATED), NULL};
    cr_assert(d.dev, "dl_dev_open: %s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_create(d.dev, &d.s, "ops"), DL_DEV_SUCCESS);
    const int64_t M = 77, C = 96, n = M * C;
    std::vector<float> x(n), g(C), b(C), y(n), y_ref(n), mu(M), rs(M), mu_ref(M), rs_ref(M);
    kc_fill(x.data(), n, 161, -2.0f, 2.0f);
    kc_fill(g.data(), C, 162, 0.5f, 1.5f);
    kc_fill(b.data(), C, 163, -0.5f, 0.5f);
    float *dx = (float *)dev_upload(&d, x.data(), n * 4), *dg = (float *)dev_upload(&d, g.data(), C * 4);
    float *db = (float *)dev_upload(&d, b.data(), C * 4), *dy = (float *)dev_upload(&d, NULL, n * 4);
    float *dmu = (float *)dev_upload(&d, NULL, M * 4), *drs = (float *)dev_upload(&d, NULL, M * 4);

    // layer norm, then quick GELU in place, against the CPU ops
    cr_assert_eq(dl_dev_layernorm_forward(d.dev, d.s, DL_F32, M, C, 1e-5f, dx, dg, db, dy, dmu, drs), DL_DEV_SUCCESS,
                 "%s", dl_error_msg());
    cr_assert_eq(dl_dev_act_forward(d.dev, d.s, DL_F32, DL_ACT_QUICK_GELU, n, dy, dy), DL_DEV_SUCCESS, "%s",
                 dl_error_msg());
    dl_cpu_layernorm_forward(tu_ctx(), M, C, 1e-5f, x.data(), g.data(), b.data(), y_ref.data(), mu_ref.data(),
                             rs_ref.data());
    dl_cpu_act_forward(tu_ctx(), DL_ACT_QUICK_GELU, n, y_ref.data(), y_ref.data());
    dev_download(&d, y.data(), dy, n * 4);
    dev_download(&d, rs.data(), drs, M * 4);
    cr_expect_lt(rel_l2(y.data(), y_ref.data(), n), KC_OPS_TOL_F32);
    cr_expect_lt(rel_l2(rs.data(), rs_ref.data(), M), KC_OPS_TOL_F32);

    // the loss stays in device memory until the host reads it; then the clipping chain
    float *dloss = (float *)dev_upload(&d, NULL, 4), *dss = (float *)dev_upload(&d, NULL, 4);
    float *dcoef = (float *)dev_upload(&d, NULL, 4);
    cr_assert_eq(dl_dev_mse_loss_forward(d.dev, d.s, DL_F32, 7, n / 7, dy, dx, NULL, NULL, dloss), DL_DEV_SUCCESS,
                 "%s", dl_error_msg());
    float loss = 0.0f;
    dev_download(&d, &loss, dloss, 4);
    const float loss_ref = (float)dl_cpu_mse_loss_forward(tu_ctx(), 7, n / 7, y_ref.data(), x.data(), NULL, NULL);
    cr_expect_lt(fabsf(loss - loss_ref), 1e-6f * fabsf(loss_ref), "loss %g, CPU %g", loss, loss_ref);
    cr_assert_eq(dl_dev_sumsq(d.dev, d.s, n, dy, dss), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_assert_eq(dl_dev_clip_coef(d.dev, d.s, dss, 1.0f, dcoef), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_assert_eq(dl_dev_scale_by(d.dev, d.s, n, dcoef, dy), DL_DEV_SUCCESS, "%s", dl_error_msg());
    const double norm = sqrt(dl_cpu_sumsq(tu_ctx(), n, y_ref.data()));
    dev_download(&d, y.data(), dy, n * 4);
    double nrm2 = 0.0;
    for (int64_t i = 0; i < n; i++) nrm2 += (double)y[i] * y[i];
    cr_expect(norm > 1.0 && fabs(sqrt(nrm2) - 1.0) < 1e-5, "clipped norm %g (from %g)", sqrt(nrm2), norm);

    void *bufs[] = {dx, dg, db, dy, dmu, drs, dloss, dss, dcoef};
    for (void *p : bufs) dl_dev_free(d.dev, p);
    dl_dev_stream_destroy(d.dev, d.s);
    dl_dev_close(d.dev);
}

Test(kernels_ops, device_api_checks_arguments)
{
    dev_env d = {dl_dev_open(DL_DEV_EMULATED), NULL};
    cr_assert(d.dev, "dl_dev_open: %s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_create(d.dev, &d.s, "main"), DL_DEV_SUCCESS);
    dl_dev_stream *s2 = NULL;
    cr_assert_eq(dl_dev_stream_create(d.dev, &s2, "side"), DL_DEV_SUCCESS);
    std::vector<float> h(1024, 0.5f);
    float *a = (float *)dev_upload(&d, h.data(), 1024 * 4), *b = (float *)dev_upload(&d, h.data(), 1024 * 4);
    float *y = (float *)dev_upload(&d, NULL, 1024 * 4);
    cr_assert_eq(dl_dev_stream_synchronize(d.dev, d.s), DL_DEV_SUCCESS);

    // one element past the allocation: the Arg extents catch it before any kernel runs
    cr_expect_eq(dl_dev_add(d.dev, d.s, DL_F32, 1025, a, b, y), DL_DEV_ERR_BAD_POINTER, "%s", dl_error_msg());
    cr_expect(strstr(dl_error_msg(), "'y'") || strstr(dl_error_msg(), "'a'"), "%s", dl_error_msg());
    cr_expect_eq(dl_dev_add(d.dev, d.s, DL_BF16, 2049, a, b, y), DL_DEV_ERR_BAD_POINTER, "%s", dl_error_msg());
    cr_expect_eq(dl_dev_add(d.dev, d.s, DL_BF16, 2048, a, b, y), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_expect_eq(dl_dev_layernorm_forward(d.dev, d.s, DL_F32, 32, 33, 1e-5f, a, NULL, NULL, y, NULL, NULL),
                 DL_DEV_ERR_BAD_POINTER, "%s", dl_error_msg());
    cr_expect_eq(dl_dev_upsample_nearest2x_forward(d.dev, d.s, DL_F32, 1, 16, 16, 1, a, y), DL_DEV_SUCCESS, "%s",
                 dl_error_msg()); // y: 4 x 256 floats, the whole allocation
    cr_expect_eq(dl_dev_upsample_nearest2x_forward(d.dev, d.s, DL_F32, 1, 16, 17, 1, a, y), DL_DEV_ERR_BAD_POINTER,
                 "y: 4 x 272 floats"); // x (272 floats) fits, y does not
    cr_expect_eq(dl_dev_sumsq(d.dev, d.s, 1024, a, (float *)h.data()), DL_DEV_ERR_BAD_POINTER,
                 "a host pointer as the output");

    // ordering: y written on "main", read on "side" with no event between
    cr_expect_eq(dl_dev_scale(d.dev, d.s, DL_F32, 1024, 2.0f, a, y), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_expect_eq(dl_dev_sumsq(d.dev, s2, 1024, y, b), DL_DEV_ERR_UNORDERED, "%s", dl_error_msg());
    cr_expect(strstr(dl_error_msg(), "dl_dev_scale") != NULL, "names the writer: %s", dl_error_msg());
    dl_dev_event *ev = NULL;
    cr_assert_eq(dl_dev_event_create(d.dev, &ev), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_event_record(d.dev, ev, d.s), DL_DEV_SUCCESS);
    cr_assert_eq(dl_dev_stream_wait_event(d.dev, s2, ev), DL_DEV_SUCCESS);
    cr_expect_eq(dl_dev_sumsq(d.dev, s2, 1024, y, b), DL_DEV_SUCCESS, "%s", dl_error_msg());
    // b[0] now belongs to "side": an AdamW step reading b as g on "main" is unordered
    cr_expect_eq(dl_dev_adamw_step(d.dev, d.s, 4, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, a, b, y, y + 4),
                 DL_DEV_ERR_UNORDERED, "%s", dl_error_msg());
    float ss = 0.0f;
    cr_assert_eq(dl_dev_memcpy_d2h(d.dev, &ss, b, 4, s2), DL_DEV_SUCCESS, "%s", dl_error_msg());
    cr_assert_eq(dl_dev_stream_synchronize(d.dev, s2), DL_DEV_SUCCESS); // the host, then "main", after "side"
    cr_expect_eq(ss, 1024.0f, "sum of 1024 ones squared: %g", ss);
    cr_expect_eq(dl_dev_adamw_step(d.dev, d.s, 4, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, a, b, y, y + 4), DL_DEV_SUCCESS,
                 "%s", dl_error_msg());
    cr_assert_eq(dl_dev_synchronize(d.dev), DL_DEV_SUCCESS);

    // a token id outside the vocabulary names the id; a bad dtype and a bad alias
    std::vector<int32_t> ids = {0, 3, 7, 2};
    int32_t *dids = (int32_t *)dev_upload(&d, ids.data(), ids.size() * 4);
    cr_expect_eq(dl_dev_embed_tokens(d.dev, d.s, DL_F32, 2, 2, 8, 8, dids, a, b, y), DL_DEV_SUCCESS, "%s",
                 dl_error_msg());
    cr_expect_eq(dl_dev_embed_tokens(d.dev, d.s, DL_F32, 2, 2, 8, 7, dids, a, b, y), DL_DEV_ERR_BAD_PARAM);
    cr_expect(strstr(dl_error_msg(), "token id 7") != NULL, "%s", dl_error_msg());
    cr_expect_eq(dl_dev_act_forward(d.dev, d.s, DL_F16, 0, 16, a, y), DL_DEV_ERR_NOT_SUPPORTED);
    cr_expect_eq(dl_dev_act_forward(d.dev, d.s, DL_F32, 7, 16, a, y), DL_DEV_ERR_BAD_PARAM);
    cr_expect_eq(dl_dev_axpy(d.dev, d.s, DL_F32, 16, 1.0f, a, a + 8), DL_DEV_ERR_BAD_PARAM, "overlapping x and y");
    cr_expect_eq(dl_dev_geglu_forward(d.dev, d.s, DL_F32, 4, 8, a, a + 16), DL_DEV_ERR_BAD_PARAM, "y inside x");
    cr_expect_eq(dl_dev_pad2d_forward(d.dev, d.s, DL_F32, 1, 2, 2, 1, 0, -1, 0, 0, a, y), DL_DEV_ERR_BAD_PARAM);
    cr_expect_eq(dl_dev_mse_loss_forward(d.dev, d.s, DL_F32, 0, 4, a, b, NULL, NULL, y), DL_DEV_ERR_BAD_PARAM);

    dl_dev_event_destroy(d.dev, ev);
    void *bufs[] = {a, b, y, dids};
    for (void *p : bufs) dl_dev_free(d.dev, p);
    dl_dev_stream_destroy(d.dev, s2);
    dl_dev_stream_destroy(d.dev, d.s);
    dl_dev_close(d.dev);
}
