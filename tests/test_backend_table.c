/* test_backend_table.c - every entry of the backend op table (backend/backend.h) on every backend
 * present: the CPU backend, the CUDA backend over the emulated device (always), and the CUDA
 * backend on a real GPU when dl_dev_available(DL_DEV_REAL). In the manner of ggml's
 * test-backend-ops: one table of cases {entry, runner, shape, scalars, flags, tolerance}, one
 * runner per signature; inputs are random, uploaded to the backend; outputs are NaN-poisoned and
 * followed by sentinel floats before the call (an output left unwritten, or a write past the
 * end, fails); results are downloaded and compared with the CPU reference op (dl_backend_cpu on
 * host memory). Shapes include odd sizes and SD1.5's channel counts and head dims with few
 * tokens (the emulated device runs kernels thread by thread).
 *
 * Also: a coverage test (every function pointer of dl_backend, counted through sizeof, has a
 * case, so a new entry cannot go untested), finite differences of the backward entries on tiny
 * shapes (suite group "finite_differences"), the memory entries (round trips, fill, copy, the
 * allocation failure message), the sticky device error surfacing at synchronize, and a steady
 * state without scratch growth. DANLU_BACKEND_TABLE_TIME=1: the `timing` test prints the time of
 * every entry on every backend and asserts nothing. */
#include "backend/backend.h"
#include "device/dl_dev.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the entries: every function pointer of dl_backend, by name and offset ------------------- */
#define BACKEND_ENTRIES(X)                                                                               \
    X(open) X(close) X(alloc) X(free) X(upload) X(download) X(copy) X(fill) X(synchronize) X(describe)   \
    X(mem_info) X(stream_create) X(stream_destroy) X(event_create) X(event_destroy) X(event_record)      \
    X(stream_wait) X(event_synchronize) X(upload_on) X(download_on) X(host_alloc) X(host_free)         \
    X(linear_forward) X(linear_backward) X(conv2d_forward) X(conv2d_backward) X(groupnorm_forward)       \
    X(groupnorm_backward) X(layernorm_forward) X(layernorm_backward) X(attention_forward)               \
    X(attention_backward) X(act_forward) X(act_backward) X(geglu_forward) X(geglu_backward)             \
    X(add_forward) X(scale_forward) X(axpy) X(add_bcast_forward) X(add_bcast_backward)                  \
    X(concat_channels_forward) X(concat_channels_backward) X(upsample_nearest2x_forward)                \
    X(upsample_nearest2x_backward) X(embed_tokens) X(embed_tokens_backward) X(timestep_embedding)      \
    X(mse_loss_forward)                                                                                \
    X(mse_loss_backward) X(adamw_step) X(sumsq) X(clip_coef) X(scale_by) X(lora_linear_forward)         \
    X(lora_linear_backward) X(lora_conv_forward) X(lora_conv_backward) X(lora_merge) X(lora_unmerge)
typedef struct entry_info {
    const char *name;
    size_t off;
} entry_info;
#define ENTRY_INFO(f) {#f, offsetof(dl_backend, f)},
static const entry_info k_entries[] = {BACKEND_ENTRIES(ENTRY_INFO)};
enum { N_ENTRIES = sizeof k_entries / sizeof k_entries[0] };
/* the function pointers of the table: everything from .open to the end */
#define N_POINTERS ((sizeof(dl_backend) - offsetof(dl_backend, open)) / sizeof(void (*)(void)))

/* ---- backends under test ---------------------------------------------------------------------- */
enum { T_CPU, T_CUDA_EMU, T_CUDA_REAL, T_N };
typedef struct tgt {
    const char *name;
    const dl_backend *be;
    dl_ctx ctx;
    void *bufs[128]; /* backend memory of the current case */
    int nbufs;
} tgt;

static const char *const k_tgt_names[T_N] = {"cpu", "cuda (emulated)", "cuda (real)"};

/* Opens backend `which` into t; 0 when it is not present here. */
static int tgt_open(tgt *t, int which)
{
    memset(t, 0, sizeof *t);
    t->name = k_tgt_names[which];
    if (which == T_CUDA_REAL && !dl_dev_available(DL_DEV_REAL)) return 0;
    if (which != T_CPU) setenv("DANLU_CUDA_DEVICE", which == T_CUDA_EMU ? "emulated" : "real", 1);
    t->be = which == T_CPU ? &dl_backend_cpu : &dl_backend_cuda;
    cr_assert_eq(dl_ctx_init_backend(&t->ctx, 2, t->be), DL_OK, "%s: %s", t->name, dl_error_msg());
    return 1;
}
static void tgt_close(tgt *t) { dl_ctx_free(&t->ctx); }
#define FOR_EACH_TARGET(t) \
    for (int which_ = 0; which_ < T_N; which_++) for (tgt t##_s, *t = &t##_s; t && tgt_open(t, which_); tgt_close(t), t = NULL)

/* ---- host scratch of a case (freed together) ---------------------------------------------------- */
static void *g_host[128];
static int g_nhost;
static float *hnew(size_t n)
{
    cr_assert_lt(g_nhost, 128);
    float *p = malloc((n ? n : 1) * sizeof(float));
    cr_assert(p);
    return g_host[g_nhost++] = p;
}
static float *hrand(size_t n, uint64_t seed, float lo, float hi)
{
    float *p = hnew(n);
    tu_fill_uniform(p, n, seed, lo, hi);
    return p;
}
static void hfree_all(void)
{
    while (g_nhost) free(g_host[--g_nhost]);
}

/* ---- backend buffers with sentinels ------------------------------------------------------------- */
#define GUARD 16                          /* sentinel floats after every tensor */
static const uint32_t k_sentinel = 0x4b5a5a5au; /* 14310490.0f: no op writes it by chance */

/* backend copy of h[0..n) (NaN-poisoned when h is NULL) followed by GUARD sentinels */
static float *t_buf(tgt *t, const float *h, size_t n)
{
    cr_assert_lt(t->nbufs, 128);
    float *tmp = malloc((n + GUARD) * sizeof(float));
    if (h) memcpy(tmp, h, n * sizeof(float));
    else memset(tmp, 0xff, n * sizeof(float));
    for (size_t i = 0; i < GUARD; i++) memcpy(&tmp[n + i], &k_sentinel, 4);
    float *d = t->be->alloc(&t->ctx, (n + GUARD) * sizeof(float));
    cr_assert(d, "%s: alloc: %s", t->name, dl_error_msg());
    cr_assert_eq(t->be->upload(&t->ctx, d, tmp, (n + GUARD) * sizeof(float)), DL_OK, "%s: upload: %s", t->name,
                 dl_error_msg());
    free(tmp);
    return t->bufs[t->nbufs++] = d;
}
#define t_in(t, h, n) t_buf(t, h, n)
#define t_out(t, n) t_buf(t, NULL, n)
static void t_free_all(tgt *t)
{
    while (t->nbufs) t->be->free(&t->ctx, t->bufs[--t->nbufs]);
}
/* h[0..n) = the backend's d[0..n); fails the test when a sentinel after it changed */
static void t_get(tgt *t, float *h, const float *d, size_t n, const char *what)
{
    float *tmp = malloc((n + GUARD) * sizeof(float));
    cr_assert_eq(t->be->download(&t->ctx, tmp, d, (n + GUARD) * sizeof(float)), DL_OK, "%s: %s: download: %s",
                 t->name, what, dl_error_msg());
    int bad = 0;
    for (size_t i = 0; i < GUARD; i++) bad |= memcmp(&tmp[n + i], &k_sentinel, 4) != 0;
    cr_expect(!bad, "%s: %s: written past its %zu elements", t->name, what, n);
    memcpy(h, tmp, n * sizeof(float));
    free(tmp);
}

/* ---- cases -------------------------------------------------------------------------------------- */
enum { F_ALIAS = 1, F_NULLS = 2, F_FD = 4 }; /* output aliases an input; optional outputs NULL; finite differences */
enum { G_MEMORY, G_DENSE, G_NORM, G_ATTN, G_POINT, G_TRAIN, G_FD, G_N };
typedef struct tcase tcase;
typedef void (*runner_fn)(tgt *t, const tcase *c);
struct tcase {
    const char *entry; /* the dl_backend field it exercises */
    runner_fn run;
    int group;
    int64_t p[12];     /* the shape, as the runner reads it (see each runner) */
    float f[4];        /* scalar arguments */
    int flags;
    double tol;        /* relative L2 against the CPU reference; 0: 1e-5 */
};

static const tcase k_cases[];
static int g_check = 1;  /* 0 in the timing test: run and time, compare nothing */
static int g_reps = 1;   /* timed repetitions of each call (timing test: 3 after a warm-up) */
static const tcase *g_case;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static const char *case_label(const tcase *c)
{
    static char buf[160];
    int o = snprintf(buf, sizeof buf, "%s [", c->entry);
    int last = 11;
    while (last > 0 && c->p[last] == 0) last--;
    for (int i = 0; i <= last && o < (int)sizeof buf; i++) o += snprintf(buf + o, sizeof buf - o, i ? " %lld" : "%lld", (long long)c->p[i]);
    if (o < (int)sizeof buf) snprintf(buf + o, sizeof buf - o, "]%s%s", c->flags & F_ALIAS ? " aliased" : "",
                                      c->flags & F_NULLS ? " nulls" : "");
    return buf;
}
static void t_sync(tgt *t)
{
    int rc = t->be->synchronize(&t->ctx);
    cr_expect_eq(rc, DL_OK, "%s: %s: synchronize: %s", t->name, case_label(g_case), dl_error_msg());
}
/* Runs one call of the entry (g_reps times, after a warm-up in the timing test), synchronised. */
#define CALL(t, stmt)                                                                                    \
    do {                                                                                                 \
        if (g_reps > 1) { stmt; t_sync(t); }                                                             \
        double t0_ = now_s();                                                                            \
        for (int r_ = 0; r_ < g_reps; r_++) { stmt; }                                                    \
        t_sync(t);                                                                                       \
        if (!g_check) cr_log_info("time %-28s %-16s %-52s %10.3f ms", g_case->entry, t->name, case_label(g_case), \
                                  (now_s() - t0_) * 1e3 / g_reps);                                       \
    } while (0)

/* The backend's d[0..n) against the CPU reference ref: no NaN, relative L2 within the case's
 * tolerance, sentinels intact. */
static void t_expect(tgt *t, const char *what, const float *d, const float *ref, size_t n)
{
    if (!g_check) return;
    float *h = malloc((n ? n : 1) * sizeof(float));
    t_get(t, h, d, n, what);
    const double tol = g_case->tol > 0 ? g_case->tol : 1e-5, err = tu_rel_l2(h, ref, n);
    cr_expect(err <= tol, "%s: case #%d %s: %s: relative L2 %.3g over %.3g (inputs from the runner's fixed seeds)",
              t->name, (int)(g_case - k_cases), case_label(g_case), what, err, tol);
    free(h);
}
static int nulls(const tcase *c) { return (c->flags & F_NULLS) != 0; }
static int aliased(const tcase *c) { return (c->flags & F_ALIAS) != 0; }
static const dl_ctx *cpu(void) { return tu_ctx(); }
#define REF dl_backend_cpu

/* ---- finite differences --------------------------------------------------------------------------
 * L = Σ_i w_i · y_i over the outputs of a forward run on the backend; the gradient a backward
 * entry gave for an input x is compared with (L(x + h e_j) - L(x - h e_j)) / 2h at a few j. */
typedef struct fd_out {
    const float *dev; /* the forward's output on the backend */
    const float *w;   /* host weights (the dy given to the backward) */
    size_t n;
} fd_out;
typedef struct fd_fn {
    void (*fwd)(tgt *t, const void *ud);
    const void *ud;
    fd_out out[2];
} fd_fn;
static double fd_loss(tgt *t, const fd_fn *f)
{
    f->fwd(t, f->ud);
    double L = 0;
    for (int o = 0; o < 2; o++) {
        if (!f->out[o].dev) continue;
        float *y = malloc(f->out[o].n * sizeof(float));
        t_get(t, y, f->out[o].dev, f->out[o].n, "finite-difference forward");
        for (size_t i = 0; i < f->out[o].n; i++) L += (double)f->out[o].w[i] * y[i];
        free(y);
    }
    return L;
}
/* x: the input's host values (restored on return) and its backend copy; grad: the backward's
 * gradient for it (host). */
static void fd_check(tgt *t, const char *what, const fd_fn *f, float *xh, float *xd, size_t n, const float *grad)
{
    if (!(g_case->flags & F_FD) || !g_check) return;
    const float h = 1e-2f;
    double gmax = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(grad[i]));
    const size_t probes = n < 6 ? n : 6;
    for (size_t k = 0; k < probes; k++) {
        const size_t j = (k * 7919 + 3) % n;
        const float keep = xh[j];
        double L[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            xh[j] = keep + (sgn ? -h : h);
            cr_assert_eq(t->be->upload(&t->ctx, xd, xh, n * sizeof(float)), DL_OK);
            L[sgn] = fd_loss(t, f);
        }
        xh[j] = keep;
        cr_assert_eq(t->be->upload(&t->ctx, xd, xh, n * sizeof(float)), DL_OK);
        const double fd = (L[0] - L[1]) / (2.0 * h);
        cr_expect(fabs(fd - grad[j]) <= 1e-2 * fmax(fabs(fd), 0.1 * gmax) + 1e-5,
                  "%s: %s: d/d%s[%zu]: backward %.6g, finite difference %.6g", t->name, case_label(g_case), what, j,
                  grad[j], fd);
    }
}
/* the backward's gradient downloaded (for fd_check) */
static float *t_host(tgt *t, const float *d, size_t n)
{
    float *h = hnew(n);
    t_get(t, h, d, n, "gradient");
    return h;
}

/* ==== runners, one per signature ================================================================== */

/* memory and ordering entries (p unused): each case checks its own entry */
static void run_memory(tgt *t, const tcase *c)
{
    const dl_backend *be = t->be;
    const dl_ctx *ctx = &t->ctx;
    const size_t align = be->device_memory ? 256 : 64;
    const char *e = c->entry;
    if (!strcmp(e, "open") || !strcmp(e, "close")) {
        if (!be->open) { /* a backend without state: both NULL */
            cr_expect_null(be->close, "%s: close without open", t->name);
            return;
        }
        for (int i = 0; i < 2; i++) { /* a second ctx beside the first, opened and closed twice */
            dl_ctx c2;
            cr_assert_eq(dl_ctx_init_backend(&c2, 1, be), DL_OK, "%s: %s", t->name, dl_error_msg());
            cr_expect(c2.be_state != NULL && c2.be_state != t->ctx.be_state);
            float *p = be->alloc(&c2, 64);
            cr_expect(p != NULL);
            be->free(&c2, p);
            dl_ctx_free(&c2);
            cr_expect_null(c2.be_state, "%s: close leaves the state", t->name);
        }
        if (be == &dl_backend_cuda) { /* an unknown device kind is refused at open, by name */
            const char *keep = getenv("DANLU_CUDA_DEVICE");
            char saved[32];
            snprintf(saved, sizeof saved, "%s", keep ? keep : "");
            setenv("DANLU_CUDA_DEVICE", "quantum", 1);
            dl_ctx c3;
            cr_expect_eq(dl_ctx_init_backend(&c3, 1, be), DL_ERR);
            cr_expect(strstr(dl_error_msg(), "quantum") != NULL, "%s", dl_error_msg());
            unsetenv("DANLU_CUDA_DEVICE"); /* the build's default device */
            if (dl_dev_available(dl_dev_default_kind())) {
                cr_expect_eq(dl_ctx_init_backend(&c3, 1, be), DL_OK, "%s", dl_error_msg());
                char buf[128];
                be->describe(&c3, buf, sizeof buf);
                cr_expect(strncmp(buf, "cuda: ", 6) == 0, "%s", buf);
                dl_ctx_free(&c3);
            }
            setenv("DANLU_CUDA_DEVICE", saved, 1);
        }
    } else if (!strcmp(e, "alloc")) {
        const size_t sizes[] = {0, 1, 1000, 1 << 20};
        for (size_t i = 0; i < 4; i++) {
            void *p = be->alloc(ctx, sizes[i]);
            cr_expect(p != NULL && (uintptr_t)p % align == 0, "%s: alloc(%zu) = %p", t->name, sizes[i], p);
            be->free(ctx, p);
        }
        const size_t huge = (size_t)1 << 52;
#ifdef __SANITIZE_ADDRESS__
        const int host_huge_aborts = be == &dl_backend_cpu; /* ASan aborts on an oversized malloc */
#else
        const int host_huge_aborts = 0;
#endif
        if (!host_huge_aborts) {
            dl_error_clear();
            cr_expect_null(be->alloc(ctx, huge), "%s: 4 PiB allocated", t->name);
            cr_expect(strstr(dl_error_msg(), "4503599627370496") != NULL,
                      "%s: the message does not name the size: %s", t->name, dl_error_msg());
        }
        cr_expect_eq(be->synchronize(ctx), DL_OK, "%s: a failed alloc is not a sticky error: %s", t->name,
                     dl_error_msg());
    } else if (!strcmp(e, "free")) {
        for (int i = 0; i < 40; i++) {
            void *p = be->alloc(ctx, (size_t)(i + 1) * 4096);
            cr_assert(p);
            be->free(ctx, p);
        }
        dl_be_free(ctx, NULL);
        cr_expect_eq(be->synchronize(ctx), DL_OK, "%s", dl_error_msg());
    } else if (!strcmp(e, "upload") || !strcmp(e, "download")) {
        const size_t n = (1 << 20) + 4099;
        unsigned char *a = malloc(n), *b = malloc(n);
        for (size_t i = 0; i < n; i++) a[i] = (unsigned char)(i * 131 + 7);
        unsigned char *d = be->alloc(ctx, n + 64);
        cr_assert(d);
        cr_expect_eq(be->upload(ctx, d + 3, a, n), DL_OK, "%s", dl_error_msg()); /* at an odd offset */
        memset(b, 0, n);
        cr_expect_eq(be->download(ctx, b, d + 3, n), DL_OK, "%s", dl_error_msg());
        cr_expect(memcmp(a, b, n) == 0, "%s: upload/download round trip differs", t->name);
        cr_expect_eq(be->download(ctx, b, d + 10, 5), DL_OK);
        cr_expect(memcmp(a + 7, b, 5) == 0, "%s: a 5-byte download at an offset", t->name);
        cr_expect_eq(be->upload(ctx, d, a, 0), DL_OK);
        be->free(ctx, d);
        free(a);
        free(b);
    } else if (!strcmp(e, "copy")) {
        const size_t n = 10000;
        unsigned char *a = malloc(n), *b = malloc(n);
        for (size_t i = 0; i < n; i++) a[i] = (unsigned char)(i * 31 + 1);
        unsigned char *d1 = be->alloc(ctx, n), *d2 = be->alloc(ctx, n);
        cr_assert(d1 && d2);
        cr_assert_eq(be->upload(ctx, d1, a, n), DL_OK);
        cr_assert_eq(be->fill(ctx, d2, 0, n), DL_OK);
        cr_expect_eq(be->copy(ctx, d2 + 100, d1 + 17, 5000), DL_OK, "%s", dl_error_msg());
        cr_assert_eq(be->download(ctx, b, d2, n), DL_OK);
        int ok = 1;
        for (size_t i = 0; i < n; i++) ok &= b[i] == (i >= 100 && i < 5100 ? a[i - 100 + 17] : 0);
        cr_expect(ok, "%s: copy of 5000 bytes between offsets", t->name);
        be->free(ctx, d1);
        be->free(ctx, d2);
        free(a);
        free(b);
    } else if (!strcmp(e, "fill")) {
        const size_t n = 70001;
        unsigned char *b = malloc(n);
        unsigned char *d = be->alloc(ctx, n);
        cr_assert(d);
        cr_expect_eq(be->fill(ctx, d, 0x3c, n), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(be->fill(ctx, d + 5, 0, 11), DL_OK);
        cr_assert_eq(be->download(ctx, b, d, n), DL_OK);
        int ok = 1;
        for (size_t i = 0; i < n; i++) ok &= b[i] == (i >= 5 && i < 16 ? 0 : 0x3c);
        cr_expect(ok, "%s: fill", t->name);
        be->free(ctx, d);
        free(b);
    } else if (!strcmp(e, "synchronize")) {
        float *d = t_out(t, 1000);
        cr_expect_eq(be->fill(ctx, d, 0, 4000), DL_OK);
        cr_expect_eq(be->synchronize(ctx), DL_OK, "%s: %s", t->name, dl_error_msg());
        cr_expect_eq(dl_be_sync(ctx), DL_OK);
        cr_expect_eq(dl_be_read_f32(ctx, d + 999), 0.0f);
    } else if (!strcmp(e, "describe")) {
        char buf[256] = "";
        be->describe(ctx, buf, sizeof buf);
        if (be == &dl_backend_cpu) cr_expect(strncmp(buf, "cpu (", 5) == 0, "%s", buf);
        else if (!strcmp(t->name, "cuda (emulated)")) cr_expect_str_eq(buf, "cuda: emulated device");
        else cr_expect(strncmp(buf, "cuda: ", 6) == 0 && strstr(buf, "GiB"), "%s", buf);
        char small[8];
        be->describe(ctx, small, sizeof small); /* truncated, terminated */
        cr_expect(strlen(small) < sizeof small);
    } else if (!strcmp(e, "mem_info")) {
        size_t fr = 1, tot = 1;
        const int rc = be->mem_info(ctx, &fr, &tot);
        if (be == &dl_backend_cpu || !strcmp(t->name, "cuda (emulated)")) {
            cr_expect_eq(rc, DL_ERR, "%s: the memory of the CPU / an unbounded emulated device is not known", t->name);
        } else {
            cr_expect_eq(rc, DL_OK, "%s: %s", t->name, dl_error_msg());
            cr_expect(tot > 0 && fr <= tot, "%s: %zu of %zu free", t->name, fr, tot);
        }
        if (strcmp(t->name, "cuda (emulated)") == 0) { /* a bounded emulated device: 64 MiB */
            const char *saved = getenv("DANLU_EMU_MEMORY_MIB");
            setenv("DANLU_EMU_MEMORY_MIB", "64", 1);
            dl_ctx c2;
            cr_assert_eq(dl_ctx_init_backend(&c2, 1, be), DL_OK, "%s", dl_error_msg());
            size_t f0, t0, f1, t1;
            cr_assert_eq(be->mem_info(&c2, &f0, &t0), DL_OK, "%s", dl_error_msg());
            cr_expect_eq(t0, (size_t)64 << 20);
            void *p = be->alloc(&c2, 10 << 20);
            cr_assert_not_null(p, "%s", dl_error_msg());
            cr_assert_eq(be->mem_info(&c2, &f1, &t1), DL_OK);
            cr_expect_eq(f0 - f1, (size_t)10 << 20, "10 MiB allocated, free went from %zu to %zu", f0, f1);
            dl_error_clear();
            cr_expect_null(be->alloc(&c2, f1 + 1), "more than the free memory was allocated");
            cr_expect(strstr(dl_error_msg(), "out of memory") != NULL, "%s", dl_error_msg());
            be->free(&c2, p);
            dl_ctx_free(&c2);
            if (saved) setenv("DANLU_EMU_MEMORY_MIB", saved, 1);
            else unsetenv("DANLU_EMU_MEMORY_MIB");
        }
    } else {
        cr_assert_fail("run_memory: no check for %s", e);
    }
}

/* streams and events (p unused; every stream entry runs the same exchange): an upload stream
 * copies page-locked input up, the compute stream waits for its event and scales it, a download
 * stream waits for the compute stream's event and copies the result down, the host waits for
 * that event and reads it. Three rounds reuse every buffer, so each round's copies are ordered
 * after the previous round's uses only by the events. */
static void run_streams(tgt *t, const tcase *c)
{
    (void)c;
    const dl_backend *be = t->be;
    const dl_ctx *ctx = &t->ctx;
    const int64_t n = 4099;
    float *h_in = be->host_alloc(ctx, n * sizeof(float)), *h_out = be->host_alloc(ctx, n * sizeof(float));
    cr_assert(h_in && h_out, "%s: host_alloc: %s", t->name, dl_error_msg());
    cr_expect((uintptr_t)h_in % 64 == 0 && (uintptr_t)h_out % 64 == 0, "%s: host_alloc alignment", t->name);
    dl_be_stream *up = be->stream_create(ctx, "upload"), *down = be->stream_create(ctx, "download");
    dl_be_event *e_up = be->event_create(ctx), *e_done = be->event_create(ctx), *e_down = be->event_create(ctx);
    cr_assert(up && down && e_up && e_done && e_down, "%s: %s", t->name, dl_error_msg());
    cr_expect(up != down && e_up != e_done, "%s: streams and events are distinct objects", t->name);
    float *x = be->alloc(ctx, n * sizeof(float)), *y = be->alloc(ctx, n * sizeof(float));
    cr_assert(x && y);
    for (int64_t i = 0; i < n; i++) h_in[i] = (float)i * 0.5f - 7.0f;
    for (int round = 0; round < 3; round++) {
        for (int64_t i = 0; i < n; i++) h_in[i] += 1.0f; /* e_down of the last round ordered the upload */
        cr_expect_eq(be->upload_on(ctx, up, x, h_in, n * sizeof(float)), DL_OK, "%s: %s", t->name, dl_error_msg());
        cr_expect_eq(be->event_record(ctx, e_up, up), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(be->stream_wait(ctx, NULL, e_up), DL_OK, "%s", dl_error_msg());
        be->scale_forward(ctx, n, 2.0f, x, y);
        cr_expect_eq(be->event_record(ctx, e_done, NULL), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(be->stream_wait(ctx, down, e_done), DL_OK, "%s", dl_error_msg());
        memset(h_out, 0, n * sizeof(float));
        cr_expect_eq(be->download_on(ctx, down, h_out, y, n * sizeof(float)), DL_OK, "%s: %s", t->name,
                     dl_error_msg());
        cr_expect_eq(be->event_record(ctx, e_down, down), DL_OK, "%s", dl_error_msg());
        cr_expect_eq(be->event_synchronize(ctx, e_down), DL_OK, "%s: %s", t->name, dl_error_msg());
        int ok = 1;
        for (int64_t i = 0; i < n; i++) ok &= h_out[i] == 2.0f * h_in[i];
        cr_expect(ok, "%s: round %d: the result read after event_synchronize is not 2x the upload", t->name, round);
    }
    cr_expect_eq(be->synchronize(ctx), DL_OK, "%s: %s", t->name, dl_error_msg());
    be->free(ctx, x);
    be->free(ctx, y);
    be->event_destroy(ctx, e_up);
    be->event_destroy(ctx, e_done);
    be->event_destroy(ctx, e_down);
    be->stream_destroy(ctx, up);
    be->stream_destroy(ctx, down);
    be->host_free(ctx, h_in);
    be->host_free(ctx, h_out);
    cr_expect_eq(be->synchronize(ctx), DL_OK, "%s: %s", t->name, dl_error_msg());
}

/* linear_forward / linear_backward: p = {M, in, out}; nulls: b NULL (forward), db and dx NULL
 * (backward). */
typedef struct lin_fd {
    int64_t M, in, out;
    const float *x, *w, *b;
    float *y;
} lin_fd;
static void lin_fwd(tgt *t, const void *ud)
{
    const lin_fd *a = ud;
    t->be->linear_forward(&t->ctx, a->M, a->in, a->out, a->x, a->w, DL_F32, a->b, a->y);
}
static void run_linear(tgt *t, const tcase *c)
{
    const int64_t M = c->p[0], in = c->p[1], out = c->p[2];
    float *x = hrand(M * in, 1, -1, 1), *w = hrand(out * in, 2, -0.5f, 0.5f), *b = hrand(out, 3, -1, 1);
    float *dx_x = t_in(t, x, M * in), *dx_w = t_in(t, w, out * in), *d_b = nulls(c) ? NULL : t_in(t, b, out);
    if (!strcmp(c->entry, "linear_forward")) {
        float *y = hnew(M * out), *d_y = t_out(t, M * out);
        REF.linear_forward(cpu(), M, in, out, x, w, DL_F32, nulls(c) ? NULL : b, y);
        CALL(t, t->be->linear_forward(&t->ctx, M, in, out, dx_x, dx_w, DL_F32, d_b, d_y));
        t_expect(t, "y", d_y, y, M * out);
        return;
    }
    float *dy = hrand(M * out, 4, -1, 1), *d_dy = t_in(t, dy, M * out);
    float *gx = hnew(M * in), *gw = hnew(out * in), *gb = hnew(out);
    float *d_gx = nulls(c) ? NULL : t_out(t, M * in), *d_gw = t_out(t, out * in), *d_gb = nulls(c) ? NULL : t_out(t, out);
    REF.linear_backward(cpu(), M, in, out, x, w, DL_F32, dy, gx, gw, gb);
    CALL(t, t->be->linear_backward(&t->ctx, M, in, out, dx_x, dx_w, DL_F32, d_dy, d_gx, d_gw, d_gb));
    if (d_gx) t_expect(t, "dx", d_gx, gx, M * in);
    t_expect(t, "dw", d_gw, gw, out * in);
    if (d_gb) t_expect(t, "db", d_gb, gb, out);
    if (c->flags & F_FD) {
        float *d_b2 = t_in(t, b, out);
        lin_fd a = {M, in, out, dx_x, dx_w, d_b2, t_out(t, M * out)};
        fd_fn f = {lin_fwd, &a, {{a.y, dy, (size_t)(M * out)}}};
        fd_check(t, "x", &f, x, dx_x, M * in, t_host(t, d_gx, M * in));
        fd_check(t, "w", &f, w, dx_w, out * in, t_host(t, d_gw, out * in));
        fd_check(t, "b", &f, b, d_b2, out, t_host(t, d_gb, out));
    }
}

/* conv2d_forward / conv2d_backward: p = {N, H, W, Cin, Cout, k, stride, top, left, bottom, right};
 * nulls: b NULL (forward), dw and db NULL (backward). */
static dl_conv2d_shape conv_of(const tcase *c)
{
    dl_conv2d_shape s = {(int)c->p[0], (int)c->p[1], (int)c->p[2], (int)c->p[3], (int)c->p[4], (int)c->p[5],
                         (int)c->p[6], (int)c->p[7], (int)c->p[8], (int)c->p[9], (int)c->p[10]};
    return s;
}
typedef struct conv_fd {
    dl_conv2d_shape s;
    const float *x, *w, *b;
    float *y;
} conv_fd;
static void conv_fwd(tgt *t, const void *ud)
{
    const conv_fd *a = ud;
    t->be->conv2d_forward(&t->ctx, &a->s, a->x, a->w, DL_F32, a->b, a->y);
}
static void run_conv(tgt *t, const tcase *c)
{
    const dl_conv2d_shape s = conv_of(c);
    const size_t nx = (size_t)s.N * s.H * s.W * s.Cin, nw = (size_t)s.Cout * s.k * s.k * s.Cin,
                 ny = (size_t)s.N * dl_conv2d_out_h(&s) * dl_conv2d_out_w(&s) * s.Cout;
    float *x = hrand(nx, 11, -1, 1), *w = hrand(nw, 12, -0.3f, 0.3f), *b = hrand(s.Cout, 13, -1, 1);
    float *d_x = t_in(t, x, nx), *d_w = t_in(t, w, nw), *d_b = nulls(c) ? NULL : t_in(t, b, s.Cout);
    if (!strcmp(c->entry, "conv2d_forward")) {
        float *y = hnew(ny), *d_y = t_out(t, ny);
        REF.conv2d_forward(cpu(), &s, x, w, DL_F32, nulls(c) ? NULL : b, y);
        CALL(t, t->be->conv2d_forward(&t->ctx, &s, d_x, d_w, DL_F32, d_b, d_y));
        t_expect(t, "y", d_y, y, ny);
        return;
    }
    float *dy = hrand(ny, 14, -1, 1), *d_dy = t_in(t, dy, ny);
    float *gx = hnew(nx), *gw = hnew(nw), *gb = hnew(s.Cout);
    float *d_gx = t_out(t, nx), *d_gw = nulls(c) ? NULL : t_out(t, nw), *d_gb = nulls(c) ? NULL : t_out(t, s.Cout);
    REF.conv2d_backward(cpu(), &s, x, w, DL_F32, dy, gx, gw, gb);
    CALL(t, t->be->conv2d_backward(&t->ctx, &s, d_x, d_w, DL_F32, d_dy, d_gx, d_gw, d_gb));
    t_expect(t, "dx", d_gx, gx, nx);
    if (d_gw) t_expect(t, "dw", d_gw, gw, nw);
    if (d_gb) t_expect(t, "db", d_gb, gb, s.Cout);
    if (c->flags & F_FD) {
        float *d_b2 = t_in(t, b, s.Cout);
        conv_fd a = {s, d_x, d_w, d_b2, t_out(t, ny)};
        fd_fn f = {conv_fwd, &a, {{a.y, dy, ny}}};
        fd_check(t, "x", &f, x, d_x, nx, t_host(t, d_gx, nx));
        fd_check(t, "w", &f, w, d_w, nw, t_host(t, d_gw, nw));
        fd_check(t, "b", &f, b, d_b2, s.Cout, t_host(t, d_gb, s.Cout));
    }
}

/* groupnorm_forward / groupnorm_backward: p = {N, HW, C, G, silu}, f = {eps}; aliased: y = x
 * (forward), dx = dy (backward); nulls: mean, rstd NULL (forward), dgamma NULL (backward). */
typedef struct gn_fd {
    dl_groupnorm_shape s;
    const float *x, *g, *b;
    float *y;
} gn_fd;
static void gn_fwd(tgt *t, const void *ud)
{
    const gn_fd *a = ud;
    t->be->groupnorm_forward(&t->ctx, a->s, a->x, a->g, a->b, a->y, NULL, NULL);
}
static void run_groupnorm(tgt *t, const tcase *c)
{
    const dl_groupnorm_shape s = {(int)c->p[0], (int)c->p[1], (int)c->p[2], (int)c->p[3], c->f[0], (int)c->p[4]};
    const size_t nx = (size_t)s.N * s.HW * s.C, ng = (size_t)s.N * s.G;
    float *x = hrand(nx, 21, -2, 3), *g = hrand(s.C, 22, 0.5f, 1.5f), *b = hrand(s.C, 23, -0.5f, 0.5f);
    float *y = hnew(nx), *mean = hnew(ng), *rstd = hnew(ng);
    REF.groupnorm_forward(cpu(), s, x, g, b, y, mean, rstd);
    float *d_x = t_in(t, x, nx), *d_g = t_in(t, g, s.C), *d_b = t_in(t, b, s.C);
    if (!strcmp(c->entry, "groupnorm_forward")) {
        float *d_y = aliased(c) ? d_x : t_out(t, nx);
        float *d_m = nulls(c) ? NULL : t_out(t, ng), *d_r = nulls(c) ? NULL : t_out(t, ng);
        CALL(t, t->be->groupnorm_forward(&t->ctx, s, d_x, d_g, d_b, d_y, d_m, d_r));
        t_expect(t, "y", d_y, y, nx);
        if (d_m) t_expect(t, "mean", d_m, mean, ng);
        if (d_r) t_expect(t, "rstd", d_r, rstd, ng);
        return;
    }
    float *dy = hrand(nx, 24, -1, 1), *gx = hnew(nx), *gg = hnew(s.C), *gb = hnew(s.C);
    REF.groupnorm_backward(cpu(), s, x, g, b, mean, rstd, dy, gx, gg, gb);
    float *d_m = t_in(t, mean, ng), *d_r = t_in(t, rstd, ng), *d_dy = t_in(t, dy, nx);
    float *d_gx = aliased(c) ? d_dy : t_out(t, nx), *d_gg = nulls(c) ? NULL : t_out(t, s.C), *d_gb = t_out(t, s.C);
    CALL(t, t->be->groupnorm_backward(&t->ctx, s, d_x, d_g, d_b, d_m, d_r, d_dy, d_gx, d_gg, d_gb));
    t_expect(t, "dx", d_gx, gx, nx);
    if (d_gg) t_expect(t, "dgamma", d_gg, gg, s.C);
    t_expect(t, "dbeta", d_gb, gb, s.C);
    if (c->flags & F_FD) {
        gn_fd a = {s, d_x, d_g, d_b, t_out(t, nx)};
        fd_fn f = {gn_fwd, &a, {{a.y, dy, nx}}};
        fd_check(t, "x", &f, x, d_x, nx, t_host(t, d_gx, nx));
        fd_check(t, "gamma", &f, g, d_g, s.C, t_host(t, d_gg, s.C));
        fd_check(t, "beta", &f, b, d_b, s.C, t_host(t, d_gb, s.C));
    }
}

/* layernorm_forward / layernorm_backward: p = {M, C}, f = {eps}; aliased: y = x; nulls: mean,
 * rstd NULL (forward), dbeta NULL (backward). */
typedef struct ln_fd {
    int64_t M, C;
    float eps;
    const float *x, *g, *b;
    float *y;
} ln_fd;
static void ln_fwd(tgt *t, const void *ud)
{
    const ln_fd *a = ud;
    t->be->layernorm_forward(&t->ctx, a->M, a->C, a->eps, a->x, a->g, a->b, a->y, NULL, NULL);
}
static void run_layernorm(tgt *t, const tcase *c)
{
    const int64_t M = c->p[0], C = c->p[1];
    const float eps = c->f[0];
    float *x = hrand(M * C, 31, -2, 3), *g = hrand(C, 32, 0.5f, 1.5f), *b = hrand(C, 33, -0.5f, 0.5f);
    float *y = hnew(M * C), *mean = hnew(M), *rstd = hnew(M);
    REF.layernorm_forward(cpu(), M, C, eps, x, g, b, y, mean, rstd);
    float *d_x = t_in(t, x, M * C), *d_g = t_in(t, g, C), *d_b = t_in(t, b, C);
    if (!strcmp(c->entry, "layernorm_forward")) {
        float *d_y = aliased(c) ? d_x : t_out(t, M * C);
        float *d_m = nulls(c) ? NULL : t_out(t, M), *d_r = nulls(c) ? NULL : t_out(t, M);
        CALL(t, t->be->layernorm_forward(&t->ctx, M, C, eps, d_x, d_g, d_b, d_y, d_m, d_r));
        t_expect(t, "y", d_y, y, M * C);
        if (d_m) t_expect(t, "mean", d_m, mean, M);
        if (d_r) t_expect(t, "rstd", d_r, rstd, M);
        return;
    }
    float *dy = hrand(M * C, 34, -1, 1), *gx = hnew(M * C), *gg = hnew(C), *gb = hnew(C);
    REF.layernorm_backward(cpu(), M, C, x, g, mean, rstd, dy, gx, gg, gb);
    float *d_m = t_in(t, mean, M), *d_r = t_in(t, rstd, M), *d_dy = t_in(t, dy, M * C);
    float *d_gx = t_out(t, M * C), *d_gg = t_out(t, C), *d_gb = nulls(c) ? NULL : t_out(t, C);
    CALL(t, t->be->layernorm_backward(&t->ctx, M, C, d_x, d_g, d_m, d_r, d_dy, d_gx, d_gg, d_gb));
    t_expect(t, "dx", d_gx, gx, M * C);
    t_expect(t, "dgamma", d_gg, gg, C);
    if (d_gb) t_expect(t, "dbeta", d_gb, gb, C);
    if (c->flags & F_FD) {
        ln_fd a = {M, C, eps, d_x, d_g, d_b, t_out(t, M * C)};
        fd_fn f = {ln_fwd, &a, {{a.y, dy, (size_t)(M * C)}}};
        fd_check(t, "x", &f, x, d_x, M * C, t_host(t, d_gx, M * C));
        fd_check(t, "gamma", &f, g, d_g, C, t_host(t, d_gg, C));
        fd_check(t, "beta", &f, b, d_b, C, t_host(t, d_gb, C));
    }
}

/* attention_forward / attention_backward: p = {N, Tq, Tk, H, d, causal}; nulls: lse NULL
 * (forward), dk NULL (backward). scale = 1/sqrt(d). */
typedef struct at_fd {
    dl_attention_shape s;
    const float *q, *k, *v;
    float *o, *lse;
} at_fd;
static void at_fwd(tgt *t, const void *ud)
{
    const at_fd *a = ud;
    t->be->attention_forward(&t->ctx, a->s, a->q, a->k, a->v, a->o, a->lse);
}
static void run_attention(tgt *t, const tcase *c)
{
    const dl_attention_shape s = {(int)c->p[0], (int)c->p[1], (int)c->p[2], (int)c->p[3], (int)c->p[4],
                                  1.0f / sqrtf((float)c->p[4]), (int)c->p[5]};
    const size_t hd = (size_t)s.H * s.d, nq = s.N * s.Tq * hd, nk = s.N * s.Tk * hd, nl = (size_t)s.N * s.H * s.Tq;
    float *q = hrand(nq, 41, -1.5f, 1.5f), *k = hrand(nk, 42, -1.5f, 1.5f), *v = hrand(nk, 43, -1, 1);
    float *o = hnew(nq), *lse = hnew(nl);
    REF.attention_forward(cpu(), s, q, k, v, o, lse);
    float *d_q = t_in(t, q, nq), *d_k = t_in(t, k, nk), *d_v = t_in(t, v, nk);
    if (!strcmp(c->entry, "attention_forward")) {
        float *d_o = t_out(t, nq), *d_l = nulls(c) ? NULL : t_out(t, nl);
        CALL(t, t->be->attention_forward(&t->ctx, s, d_q, d_k, d_v, d_o, d_l));
        t_expect(t, "o", d_o, o, nq);
        if (d_l) t_expect(t, "lse", d_l, lse, nl);
        return;
    }
    float *dout = hrand(nq, 44, -1, 1), *gq = hnew(nq), *gk = hnew(nk), *gv = hnew(nk);
    REF.attention_backward(cpu(), s, q, k, v, o, lse, dout, gq, gk, gv);
    float *d_o = t_in(t, o, nq), *d_l = t_in(t, lse, nl), *d_do = t_in(t, dout, nq);
    float *d_gq = t_out(t, nq), *d_gk = nulls(c) ? NULL : t_out(t, nk), *d_gv = t_out(t, nk);
    CALL(t, t->be->attention_backward(&t->ctx, s, d_q, d_k, d_v, d_o, d_l, d_do, d_gq, d_gk, d_gv));
    t_expect(t, "dq", d_gq, gq, nq);
    if (d_gk) t_expect(t, "dk", d_gk, gk, nk);
    t_expect(t, "dv", d_gv, gv, nk);
    if (c->flags & F_FD) {
        at_fd a = {s, d_q, d_k, d_v, t_out(t, nq), t_out(t, nl)};
        fd_fn f = {at_fwd, &a, {{a.o, dout, nq}}};
        fd_check(t, "q", &f, q, d_q, nq, t_host(t, d_gq, nq));
        fd_check(t, "k", &f, k, d_k, nk, t_host(t, d_gk, nk));
        fd_check(t, "v", &f, v, d_v, nk, t_host(t, d_gv, nk));
    }
}

/* act_forward / act_backward: p = {act, n}; aliased: y = x (forward), dx = dy (backward). */
typedef struct act_fd {
    dl_act act;
    int64_t n;
    const float *x;
    float *y;
} act_fd;
static void act_fwd(tgt *t, const void *ud)
{
    const act_fd *a = ud;
    t->be->act_forward(&t->ctx, a->act, a->n, a->x, a->y);
}
static void run_act(tgt *t, const tcase *c)
{
    const dl_act act = (dl_act)c->p[0];
    const int64_t n = c->p[1];
    float *x = hrand(n, 51 + act, -4, 4), *y = hnew(n);
    REF.act_forward(cpu(), act, n, x, y);
    float *d_x = t_in(t, x, n);
    if (!strcmp(c->entry, "act_forward")) {
        float *d_y = aliased(c) ? d_x : t_out(t, n);
        CALL(t, t->be->act_forward(&t->ctx, act, n, d_x, d_y));
        t_expect(t, dl_act_name(act), d_y, y, n);
        return;
    }
    float *dy = hrand(n, 55, -1, 1), *gx = hnew(n), *d_dy = t_in(t, dy, n);
    REF.act_backward(cpu(), act, n, x, dy, gx);
    float *d_gx = aliased(c) ? d_dy : t_out(t, n);
    CALL(t, t->be->act_backward(&t->ctx, act, n, d_x, d_dy, d_gx));
    t_expect(t, dl_act_name(act), d_gx, gx, n);
    if (c->flags & F_FD) {
        act_fd a = {act, n, d_x, t_out(t, n)};
        fd_fn f = {act_fwd, &a, {{a.y, dy, (size_t)n}}};
        fd_check(t, dl_act_name(act), &f, x, d_x, n, t_host(t, d_gx, n));
    }
}

/* geglu_forward / geglu_backward: p = {M, D} */
typedef struct geglu_fd {
    int64_t M, D;
    const float *x;
    float *y;
} geglu_fd;
static void geglu_fwd(tgt *t, const void *ud)
{
    const geglu_fd *a = ud;
    t->be->geglu_forward(&t->ctx, a->M, a->D, a->x, a->y);
}
static void run_geglu(tgt *t, const tcase *c)
{
    const int64_t M = c->p[0], D = c->p[1];
    float *x = hrand(M * 2 * D, 61, -3, 3), *y = hnew(M * D);
    REF.geglu_forward(cpu(), M, D, x, y);
    float *d_x = t_in(t, x, M * 2 * D);
    if (!strcmp(c->entry, "geglu_forward")) {
        float *d_y = t_out(t, M * D);
        CALL(t, t->be->geglu_forward(&t->ctx, M, D, d_x, d_y));
        t_expect(t, "y", d_y, y, M * D);
        return;
    }
    float *dy = hrand(M * D, 62, -1, 1), *gx = hnew(M * 2 * D), *d_dy = t_in(t, dy, M * D), *d_gx = t_out(t, M * 2 * D);
    REF.geglu_backward(cpu(), M, D, x, dy, gx);
    CALL(t, t->be->geglu_backward(&t->ctx, M, D, d_x, d_dy, d_gx));
    t_expect(t, "dx", d_gx, gx, M * 2 * D);
    if (c->flags & F_FD) {
        geglu_fd a = {M, D, d_x, t_out(t, M * D)};
        fd_fn f = {geglu_fwd, &a, {{a.y, dy, (size_t)(M * D)}}};
        fd_check(t, "x", &f, x, d_x, M * 2 * D, t_host(t, d_gx, M * 2 * D));
    }
}

/* add_forward / scale_forward / axpy: p = {n}, f = {alpha}; aliased: y = a (add), y = x (scale). */
static void run_elementwise(tgt *t, const tcase *c)
{
    const int64_t n = c->p[0];
    const float alpha = c->f[0];
    float *a = hrand(n, 71, -1, 1), *b = hrand(n, 72, -1, 1), *y = hnew(n);
    float *d_a = t_in(t, a, n), *d_b = t_in(t, b, n);
    if (!strcmp(c->entry, "add_forward")) {
        REF.add_forward(cpu(), n, a, b, y);
        float *d_y = aliased(c) ? d_a : t_out(t, n);
        CALL(t, t->be->add_forward(&t->ctx, n, d_a, d_b, d_y));
        t_expect(t, "y", d_y, y, n);
    } else if (!strcmp(c->entry, "scale_forward")) {
        REF.scale_forward(cpu(), n, alpha, a, y);
        float *d_y = aliased(c) ? d_a : t_out(t, n);
        CALL(t, t->be->scale_forward(&t->ctx, n, alpha, d_a, d_y));
        t_expect(t, "y", d_y, y, n);
    } else {
        memcpy(y, b, n * sizeof(float));
        REF.axpy(cpu(), n, alpha, a, y);
        CALL(t, t->be->axpy(&t->ctx, n, alpha, d_a, d_b));
        t_expect(t, "y", d_b, y, n);
    }
}

/* add_bcast_forward / add_bcast_backward: p = {N, HW, C, per_sample}; aliased: y = x (forward),
 * dx = dy (backward); nulls: dx NULL (backward). */
typedef struct bc_fd {
    int64_t N, HW, C;
    int per;
    const float *x, *v;
    float *y;
} bc_fd;
static void bc_fwd(tgt *t, const void *ud)
{
    const bc_fd *a = ud;
    t->be->add_bcast_forward(&t->ctx, a->N, a->HW, a->C, a->per, a->x, a->v, a->y);
}
static void run_bcast(tgt *t, const tcase *c)
{
    const int64_t N = c->p[0], HW = c->p[1], C = c->p[2];
    const int per = (int)c->p[3];
    const size_t nx = N * HW * C, nv = per ? N * C : C;
    float *x = hrand(nx, 81, -1, 1), *v = hrand(nv, 82, -1, 1);
    float *d_x = t_in(t, x, nx), *d_v = t_in(t, v, nv);
    if (!strcmp(c->entry, "add_bcast_forward")) {
        float *y = hnew(nx), *d_y = aliased(c) ? d_x : t_out(t, nx);
        REF.add_bcast_forward(cpu(), N, HW, C, per, x, v, y);
        CALL(t, t->be->add_bcast_forward(&t->ctx, N, HW, C, per, d_x, d_v, d_y));
        t_expect(t, "y", d_y, y, nx);
        return;
    }
    float *dy = hrand(nx, 83, -1, 1), *gx = hnew(nx), *gv = hnew(nv), *d_dy = t_in(t, dy, nx);
    REF.add_bcast_backward(cpu(), N, HW, C, per, dy, gx, gv);
    float *d_gx = nulls(c) ? NULL : aliased(c) ? d_dy : t_out(t, nx), *d_gv = t_out(t, nv);
    CALL(t, t->be->add_bcast_backward(&t->ctx, N, HW, C, per, d_dy, d_gx, d_gv));
    if (d_gx) t_expect(t, "dx", d_gx, gx, nx);
    t_expect(t, "dv", d_gv, gv, nv);
    if (c->flags & F_FD) {
        bc_fd a = {N, HW, C, per, d_x, d_v, t_out(t, nx)};
        fd_fn f = {bc_fwd, &a, {{a.y, dy, nx}}};
        if (d_gx) fd_check(t, "x", &f, x, d_x, nx, t_host(t, d_gx, nx));
        fd_check(t, "v", &f, v, d_v, nv, t_host(t, d_gv, nv));
    }
}

/* concat_channels_forward / concat_channels_backward: p = {M, C1, C2}; nulls: da NULL. */
typedef struct cat_fd {
    int64_t M, C1, C2;
    const float *a, *b;
    float *y;
} cat_fd;
static void cat_fwd(tgt *t, const void *ud)
{
    const cat_fd *a = ud;
    t->be->concat_channels_forward(&t->ctx, a->M, a->C1, a->C2, a->a, a->b, a->y);
}
static void run_concat(tgt *t, const tcase *c)
{
    const int64_t M = c->p[0], C1 = c->p[1], C2 = c->p[2];
    const size_t na = M * C1, nb = M * C2, ny = M * (C1 + C2);
    float *a = hrand(na, 91, -1, 1), *b = hrand(nb, 92, -1, 1);
    float *d_a = t_in(t, a, na), *d_b = t_in(t, b, nb);
    if (!strcmp(c->entry, "concat_channels_forward")) {
        float *y = hnew(ny), *d_y = t_out(t, ny);
        REF.concat_channels_forward(cpu(), M, C1, C2, a, b, y);
        CALL(t, t->be->concat_channels_forward(&t->ctx, M, C1, C2, d_a, d_b, d_y));
        t_expect(t, "y", d_y, y, ny);
        return;
    }
    float *dy = hrand(ny, 93, -1, 1), *ga = hnew(na), *gb = hnew(nb), *d_dy = t_in(t, dy, ny);
    REF.concat_channels_backward(cpu(), M, C1, C2, dy, ga, gb);
    float *d_ga = nulls(c) ? NULL : t_out(t, na), *d_gb = t_out(t, nb);
    CALL(t, t->be->concat_channels_backward(&t->ctx, M, C1, C2, d_dy, d_ga, d_gb));
    if (d_ga) t_expect(t, "da", d_ga, ga, na);
    t_expect(t, "db", d_gb, gb, nb);
    if (c->flags & F_FD) {
        cat_fd f_ = {M, C1, C2, d_a, d_b, t_out(t, ny)};
        fd_fn f = {cat_fwd, &f_, {{f_.y, dy, ny}}};
        fd_check(t, "a", &f, a, d_a, na, t_host(t, d_ga, na));
        fd_check(t, "b", &f, b, d_b, nb, t_host(t, d_gb, nb));
    }
}

/* upsample_nearest2x_forward / _backward: p = {N, H, W, C} */
typedef struct up_fd {
    int64_t N, H, W, C;
    const float *x;
    float *y;
} up_fd;
static void up_fwd(tgt *t, const void *ud)
{
    const up_fd *a = ud;
    t->be->upsample_nearest2x_forward(&t->ctx, a->N, a->H, a->W, a->C, a->x, a->y);
}
static void run_upsample(tgt *t, const tcase *c)
{
    const int64_t N = c->p[0], H = c->p[1], W = c->p[2], C = c->p[3];
    const size_t nx = N * H * W * C, ny = 4 * nx;
    float *x = hrand(nx, 101, -1, 1), *d_x = t_in(t, x, nx);
    if (!strcmp(c->entry, "upsample_nearest2x_forward")) {
        float *y = hnew(ny), *d_y = t_out(t, ny);
        REF.upsample_nearest2x_forward(cpu(), N, H, W, C, x, y);
        CALL(t, t->be->upsample_nearest2x_forward(&t->ctx, N, H, W, C, d_x, d_y));
        t_expect(t, "y", d_y, y, ny);
        return;
    }
    float *dy = hrand(ny, 102, -1, 1), *gx = hnew(nx), *d_dy = t_in(t, dy, ny), *d_gx = t_out(t, nx);
    REF.upsample_nearest2x_backward(cpu(), N, H, W, C, dy, gx);
    CALL(t, t->be->upsample_nearest2x_backward(&t->ctx, N, H, W, C, d_dy, d_gx));
    t_expect(t, "dx", d_gx, gx, nx);
    if (c->flags & F_FD) {
        up_fd a = {N, H, W, C, d_x, t_out(t, ny)};
        fd_fn f = {up_fwd, &a, {{a.y, dy, ny}}};
        fd_check(t, "x", &f, x, d_x, nx, t_host(t, d_gx, nx));
    }
}

/* embed_tokens: p = {N, T, C, V, rows of pos (>= T)} */
static void run_embed(tgt *t, const tcase *c)
{
    const int64_t N = c->p[0], T = c->p[1], C = c->p[2], V = c->p[3], P = c->p[4];
    int32_t *ids = malloc(N * T * sizeof(int32_t));
    for (int64_t i = 0; i < N * T; i++) ids[i] = (int32_t)((i * 7919 + 13) % V);
    ids[0] = 0;
    ids[N * T - 1] = (int32_t)(V - 1);
    float *tok = hrand(V * C, 111, -1, 1), *pos = hrand(P * C, 112, -1, 1), *out = hnew(N * T * C);
    REF.embed_tokens(cpu(), N, T, C, V, ids, tok, pos, out);
    int32_t *d_ids = t->be->alloc(&t->ctx, N * T * sizeof(int32_t));
    cr_assert(d_ids);
    t->bufs[t->nbufs++] = d_ids;
    cr_assert_eq(t->be->upload(&t->ctx, d_ids, ids, N * T * sizeof(int32_t)), DL_OK);
    float *d_tok = t_in(t, tok, V * C), *d_pos = t_in(t, pos, P * C), *d_out = t_out(t, N * T * C);
    CALL(t, t->be->embed_tokens(&t->ctx, N, T, C, V, d_ids, d_tok, d_pos, d_out));
    t_expect(t, "out", d_out, out, N * T * C);
    free(ids);
}

/* embed_tokens_backward: p = {N, T, C, V, rows of pos (>= T)}; the gradients are added into
 * dtok and dpos (drawn nonzero), a token id repeats (two rows into one table row); F_NULLS: dpos
 * NULL. Finite differences of <embed_tokens(tok, pos), dout> on what was added. */
typedef struct embed_fd {
    int64_t N, T, C, V;
    const int32_t *ids;
    const float *tok, *pos;
    float *out;
} embed_fd;
static void embed_fwd(tgt *t, const void *ud)
{
    const embed_fd *a = ud;
    t->be->embed_tokens(&t->ctx, a->N, a->T, a->C, a->V, a->ids, a->tok, a->pos, a->out);
}
static void run_embed_backward(tgt *t, const tcase *c)
{
    const int64_t N = c->p[0], T = c->p[1], C = c->p[2], V = c->p[3], P = c->p[4], R = N * T;
    int32_t *ids = malloc(R * sizeof(int32_t));
    for (int64_t i = 0; i < R; i++) ids[i] = (int32_t)((i * 7919 + 13) % V);
    ids[0] = 0;
    if (R > 2) ids[R - 2] = ids[1];
    ids[R - 1] = (int32_t)(V - 1);
    float *dy = hrand(R * C, 121, -1, 1), *gt0 = hrand(V * C, 122, -1, 1), *gp0 = hrand(P * C, 123, -1, 1);
    float *gt = hnew(V * C), *gp = hnew(P * C);
    memcpy(gt, gt0, V * C * sizeof(float));
    memcpy(gp, gp0, P * C * sizeof(float));
    REF.embed_tokens_backward(cpu(), N, T, C, V, ids, dy, gt, nulls(c) ? NULL : gp);
    if (nulls(c)) memcpy(gp, gp0, P * C * sizeof(float));
    int32_t *d_ids = t->be->alloc(&t->ctx, R * sizeof(int32_t));
    cr_assert(d_ids);
    t->bufs[t->nbufs++] = d_ids;
    cr_assert_eq(t->be->upload(&t->ctx, d_ids, ids, R * sizeof(int32_t)), DL_OK);
    float *d_dy = t_in(t, dy, R * C), *d_gt = t_in(t, gt0, V * C), *d_gp = t_in(t, gp0, P * C);
    CALL(t, t->be->embed_tokens_backward(&t->ctx, N, T, C, V, d_ids, d_dy, d_gt, nulls(c) ? NULL : d_gp));
    t_expect(t, "dtok", d_gt, gt, V * C);
    t_expect(t, "dpos", d_gp, gp, P * C);
    if (c->flags & F_FD) {
        float *tok = hrand(V * C, 124, -1, 1), *pos = hrand(P * C, 125, -1, 1);
        float *d_tok = t_in(t, tok, V * C), *d_pos = t_in(t, pos, P * C);
        embed_fd a = {N, T, C, V, d_ids, d_tok, d_pos, t_out(t, R * C)};
        fd_fn f = {embed_fwd, &a, {{a.out, dy, (size_t)(R * C)}}};
        float *added_t = t_host(t, d_gt, V * C), *added_p = t_host(t, d_gp, P * C);
        for (int64_t i = 0; i < V * C; i++) added_t[i] -= gt0[i];
        for (int64_t i = 0; i < P * C; i++) added_p[i] -= gp0[i];
        fd_check(t, "tok", &f, tok, d_tok, V * C, added_t);
        if (!nulls(c)) fd_check(t, "pos", &f, pos, d_pos, P * C, added_p);
    }
    free(ids);
}

/* timestep_embedding: p = {N, dim, flip_sin_to_cos}, f = {downscale_freq_shift, scale, max_period} */
static void run_timestep(tgt *t, const tcase *c)
{
    const int64_t N = c->p[0], dim = c->p[1];
    const int flip = (int)c->p[2];
    float *ts = hrand(N, 121, 0, 999), *out = hnew(N * dim);
    ts[0] = 0.0f;
    if (N > 1) ts[1] = 999.0f;
    REF.timestep_embedding(cpu(), N, dim, ts, flip, c->f[0], c->f[1], c->f[2], out);
    float *d_t = t_in(t, ts, N), *d_out = t_out(t, N * dim);
    CALL(t, t->be->timestep_embedding(&t->ctx, N, dim, d_t, flip, c->f[0], c->f[1], c->f[2], d_out));
    t_expect(t, "out", d_out, out, N * dim);
}

/* mse_loss_forward / mse_loss_backward: p = {N, D, weighted}, f = {dloss}; nulls: per_sample NULL
 * (forward), dtarget NULL (backward); aliased: dpred = pred (backward). */
typedef struct mse_fd {
    int64_t N, D;
    const float *p, *t, *w;
    float *loss;
} mse_fd;
static void mse_fwd(tgt *t, const void *ud)
{
    const mse_fd *a = ud;
    t->be->mse_loss_forward(&t->ctx, a->N, a->D, a->p, a->t, a->w, NULL, a->loss);
}
static void run_mse(tgt *t, const tcase *c)
{
    const int64_t N = c->p[0], D = c->p[1];
    const int weighted = (int)c->p[2];
    const size_t n = N * D;
    float *pred = hrand(n, 131, -1, 1), *tgt_ = hrand(n, 132, -1, 1), *w = hrand(N, 133, 0.2f, 2.0f);
    float *d_p = t_in(t, pred, n), *d_t = t_in(t, tgt_, n), *d_w = weighted ? t_in(t, w, N) : NULL;
    if (!strcmp(c->entry, "mse_loss_forward")) {
        float *per = hnew(N), *loss = hnew(1);
        REF.mse_loss_forward(cpu(), N, D, pred, tgt_, weighted ? w : NULL, per, loss);
        float *d_per = nulls(c) ? NULL : t_out(t, N), *d_loss = t_out(t, 1);
        CALL(t, t->be->mse_loss_forward(&t->ctx, N, D, d_p, d_t, d_w, d_per, d_loss));
        t_expect(t, "loss", d_loss, loss, 1);
        if (d_per) t_expect(t, "per_sample", d_per, per, N);
        return;
    }
    const float dloss = c->f[0];
    float *gp = hnew(n), *gt = hnew(n);
    REF.mse_loss_backward(cpu(), N, D, pred, tgt_, weighted ? w : NULL, dloss, gp, gt);
    float *d_gp = aliased(c) ? d_p : t_out(t, n), *d_gt = nulls(c) ? NULL : t_out(t, n);
    CALL(t, t->be->mse_loss_backward(&t->ctx, N, D, d_p, d_t, d_w, dloss, d_gp, d_gt));
    t_expect(t, "dpred", d_gp, gp, n);
    if (d_gt) t_expect(t, "dtarget", d_gt, gt, n);
    if (c->flags & F_FD) {
        float *d_p2 = t_in(t, pred, n);
        mse_fd a = {N, D, d_p2, d_t, d_w, t_out(t, 1)};
        fd_fn f = {mse_fwd, &a, {{a.loss, &dloss, 1}}};
        fd_check(t, "pred", &f, pred, d_p2, n, t_host(t, d_gp, n));
        fd_check(t, "target", &f, tgt_, d_t, n, t_host(t, d_gt, n));
    }
}

/* adamw_step: p = {n, step}, f = {lr, weight_decay}; beta1 0.9, beta2 0.999, eps 1e-8; m and v
 * start from a mid-training state. */
static void run_adamw(tgt *t, const tcase *c)
{
    const int64_t n = c->p[0], step = c->p[1];
    const dl_adamw_hparams hp = {c->f[0], 0.9, 0.999, 1e-8, c->f[1]};
    float *p = hrand(n, 141, -1, 1), *g = hrand(n, 142, -1, 1), *m = hrand(n, 143, -0.1f, 0.1f),
          *v = hrand(n, 144, 0, 0.01f);
    float *d_p = t_in(t, p, n), *d_g = t_in(t, g, n), *d_m = t_in(t, m, n), *d_v = t_in(t, v, n);
    REF.adamw_step(cpu(), n, &hp, step, p, g, m, v);
    CALL(t, t->be->adamw_step(&t->ctx, n, &hp, step, d_p, d_g, d_m, d_v));
    t_expect(t, "p", d_p, p, n);
    t_expect(t, "m", d_m, m, n);
    t_expect(t, "v", d_v, v, n);
}

/* sumsq: p = {n} */
static void run_sumsq(tgt *t, const tcase *c)
{
    const int64_t n = c->p[0];
    float *x = hrand(n, 151, -1, 1), *out = hnew(1);
    REF.sumsq(cpu(), n, x, out);
    float *d_x = t_in(t, x, n), *d_out = t_out(t, 1);
    CALL(t, t->be->sumsq(&t->ctx, n, d_x, d_out));
    t_expect(t, "sum of squares", d_out, out, 1);
}

/* clip_coef: f = {sum of squares, max_norm} */
static void run_clip_coef(tgt *t, const tcase *c)
{
    float ss = c->f[0], coef;
    REF.clip_coef(cpu(), &ss, c->f[1], &coef);
    float *d_ss = t_in(t, &ss, 1), *d_c = t_out(t, 1);
    CALL(t, t->be->clip_coef(&t->ctx, d_ss, c->f[1], d_c));
    t_expect(t, "coef", d_c, &coef, 1);
}

/* scale_by: p = {n}, f = {coef} */
static void run_scale_by(tgt *t, const tcase *c)
{
    const int64_t n = c->p[0];
    float coef = c->f[0], *x = hrand(n, 161, -1, 1);
    float *d_c = t_in(t, &coef, 1), *d_x = t_in(t, x, n);
    REF.scale_by(cpu(), n, &coef, x);
    CALL(t, t->be->scale_by(&t->ctx, n, d_c, d_x));
    t_expect(t, "x", d_x, x, n);
}

/* lora_linear_forward / _backward: p = {M, in, out, r}, f = {s}; nulls: b NULL (forward), dx and
 * dA NULL (backward). */
typedef struct ll_fd {
    int64_t M, in, out, r;
    float s;
    const float *x, *W, *A, *B;
    float *h, *y;
} ll_fd;
static void ll_fwd(tgt *t, const void *ud)
{
    const ll_fd *a = ud;
    t->be->lora_linear_forward(&t->ctx, a->M, a->in, a->out, a->r, a->s, a->x, a->W, DL_F32, NULL, a->A, a->B, a->h, a->y);
}
static void run_lora_linear(tgt *t, const tcase *c)
{
    const int64_t M = c->p[0], in = c->p[1], out = c->p[2], r = c->p[3];
    const float s = c->f[0];
    float *x = hrand(M * in, 171, -1, 1), *W = hrand(out * in, 172, -0.3f, 0.3f), *b = hrand(out, 173, -1, 1),
          *A = hrand(r * in, 174, -0.3f, 0.3f), *B = hrand(out * r, 175, -0.3f, 0.3f);
    float *h = hnew(M * r), *y = hnew(M * out);
    REF.lora_linear_forward(cpu(), M, in, out, r, s, x, W, DL_F32, nulls(c) ? NULL : b, A, B, h, y);
    float *d_x = t_in(t, x, M * in), *d_W = t_in(t, W, out * in), *d_A = t_in(t, A, r * in), *d_B = t_in(t, B, out * r);
    if (!strcmp(c->entry, "lora_linear_forward")) {
        float *d_b = nulls(c) ? NULL : t_in(t, b, out), *d_h = t_out(t, M * r), *d_y = t_out(t, M * out);
        CALL(t, t->be->lora_linear_forward(&t->ctx, M, in, out, r, s, d_x, d_W, DL_F32, d_b, d_A, d_B, d_h, d_y));
        t_expect(t, "h", d_h, h, M * r);
        t_expect(t, "y", d_y, y, M * out);
        return;
    }
    float *dy = hrand(M * out, 176, -1, 1), *dh = hnew(M * r), *gx = hnew(M * in), *gA = hnew(r * in), *gB = hnew(out * r);
    REF.lora_linear_backward(cpu(), M, in, out, r, s, x, W, DL_F32, A, B, h, dy, dh, gx, gA, gB);
    float *d_h = t_in(t, h, M * r), *d_dy = t_in(t, dy, M * out), *d_dh = t_out(t, M * r);
    float *d_gx = nulls(c) ? NULL : t_out(t, M * in), *d_gA = nulls(c) ? NULL : t_out(t, r * in), *d_gB = t_out(t, out * r);
    CALL(t, t->be->lora_linear_backward(&t->ctx, M, in, out, r, s, d_x, d_W, DL_F32, d_A, d_B, d_h, d_dy, d_dh, d_gx, d_gA, d_gB));
    t_expect(t, "dh", d_dh, dh, M * r);
    if (d_gx) t_expect(t, "dx", d_gx, gx, M * in);
    if (d_gA) t_expect(t, "dA", d_gA, gA, r * in);
    t_expect(t, "dB", d_gB, gB, out * r);
    if (c->flags & F_FD) {
        ll_fd a = {M, in, out, r, s, d_x, d_W, d_A, d_B, t_out(t, M * r), t_out(t, M * out)};
        fd_fn f = {ll_fwd, &a, {{a.y, dy, (size_t)(M * out)}}};
        fd_check(t, "x", &f, x, d_x, M * in, t_host(t, d_gx, M * in));
        fd_check(t, "A", &f, A, d_A, r * in, t_host(t, d_gA, r * in));
        fd_check(t, "B", &f, B, d_B, out * r, t_host(t, d_gB, out * r));
    }
}

/* lora_conv_forward / _backward: p = {N, H, W, Cin, Cout, k, stride, top, left, bottom, right, r},
 * f = {scale}; nulls: b NULL (forward), dx and dB NULL (backward). */
typedef struct lc_fd {
    dl_conv2d_shape s;
    int64_t r;
    float sc;
    const float *x, *W, *A, *B;
    float *h, *y;
} lc_fd;
static void lc_fwd(tgt *t, const void *ud)
{
    const lc_fd *a = ud;
    t->be->lora_conv_forward(&t->ctx, &a->s, a->r, a->sc, a->x, a->W, DL_F32, NULL, a->A, a->B, a->h, a->y);
}
static void run_lora_conv(tgt *t, const tcase *c)
{
    const dl_conv2d_shape s = conv_of(c);
    const int64_t r = c->p[11];
    const float sc = c->f[0];
    const size_t nx = (size_t)s.N * s.H * s.W * s.Cin, nw = (size_t)s.Cout * s.k * s.k * s.Cin, na = r * s.k * s.k * s.Cin,
                 nb = s.Cout * r, M = (size_t)s.N * dl_conv2d_out_h(&s) * dl_conv2d_out_w(&s), ny = M * s.Cout,
                 nh = M * r;
    float *x = hrand(nx, 181, -1, 1), *W = hrand(nw, 182, -0.3f, 0.3f), *b = hrand(s.Cout, 183, -1, 1),
          *A = hrand(na, 184, -0.3f, 0.3f), *B = hrand(nb, 185, -0.3f, 0.3f);
    float *h = hnew(nh), *y = hnew(ny);
    REF.lora_conv_forward(cpu(), &s, r, sc, x, W, DL_F32, nulls(c) ? NULL : b, A, B, h, y);
    float *d_x = t_in(t, x, nx), *d_W = t_in(t, W, nw), *d_A = t_in(t, A, na), *d_B = t_in(t, B, nb);
    if (!strcmp(c->entry, "lora_conv_forward")) {
        float *d_b = nulls(c) ? NULL : t_in(t, b, s.Cout), *d_h = t_out(t, nh), *d_y = t_out(t, ny);
        CALL(t, t->be->lora_conv_forward(&t->ctx, &s, r, sc, d_x, d_W, DL_F32, d_b, d_A, d_B, d_h, d_y));
        t_expect(t, "h", d_h, h, nh);
        t_expect(t, "y", d_y, y, ny);
        return;
    }
    float *dy = hrand(ny, 186, -1, 1), *dh = hnew(nh), *dxs = hnew(nx), *gx = hnew(nx), *gA = hnew(na), *gB = hnew(nb);
    REF.lora_conv_backward(cpu(), &s, r, sc, x, W, DL_F32, A, B, h, dy, dh, dxs, gx, gA, gB);
    float *d_h = t_in(t, h, nh), *d_dy = t_in(t, dy, ny), *d_dh = t_out(t, nh), *d_dxs = t_out(t, nx);
    float *d_gx = nulls(c) ? NULL : t_out(t, nx), *d_gA = t_out(t, na), *d_gB = nulls(c) ? NULL : t_out(t, nb);
    CALL(t, t->be->lora_conv_backward(&t->ctx, &s, r, sc, d_x, d_W, DL_F32, d_A, d_B, d_h, d_dy, d_dh, d_dxs, d_gx, d_gA,
                                      d_gB));
    t_expect(t, "dh", d_dh, dh, nh);
    if (d_gx) t_expect(t, "dx", d_gx, gx, nx);
    t_expect(t, "dA", d_gA, gA, na);
    if (d_gB) t_expect(t, "dB", d_gB, gB, nb);
    if (c->flags & F_FD) {
        lc_fd a = {s, r, sc, d_x, d_W, d_A, d_B, t_out(t, nh), t_out(t, ny)};
        fd_fn f = {lc_fwd, &a, {{a.y, dy, ny}}};
        fd_check(t, "x", &f, x, d_x, nx, t_host(t, d_gx, nx));
        fd_check(t, "A", &f, A, d_A, na, t_host(t, d_gA, na));
        fd_check(t, "B", &f, B, d_B, nb, t_host(t, d_gB, nb));
    }
}

/* lora_merge / lora_unmerge: p = {out, K, r}, f = {s} */
static void run_lora_merge(tgt *t, const tcase *c)
{
    const int64_t out = c->p[0], K = c->p[1], r = c->p[2];
    const float s = c->f[0];
    float *W = hrand(out * K, 191, -1, 1), *A = hrand(r * K, 192, -0.5f, 0.5f), *B = hrand(out * r, 193, -0.5f, 0.5f);
    float *d_W = t_in(t, W, out * K), *d_A = t_in(t, A, r * K), *d_B = t_in(t, B, out * r);
    const int merge = !strcmp(c->entry, "lora_merge");
    (merge ? REF.lora_merge : REF.lora_unmerge)(cpu(), out, K, r, s, A, B, W);
    CALL(t, (merge ? t->be->lora_merge : t->be->lora_unmerge)(&t->ctx, out, K, r, s, d_A, d_B, d_W));
    t_expect(t, "W", d_W, W, out * K);
}

/* ==== the table =================================================================================== */
#define P(...) {__VA_ARGS__}
static const tcase k_cases[] = {
    /* memory and ordering */
    {"open", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"close", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"alloc", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"free", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"upload", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"download", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"copy", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"fill", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"synchronize", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"describe", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"mem_info", run_memory, G_MEMORY, P(0), P(0), 0, 0},
    {"stream_create", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"stream_destroy", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"event_create", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"event_destroy", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"event_record", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"stream_wait", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"event_synchronize", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"upload_on", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"download_on", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"host_alloc", run_streams, G_MEMORY, P(0), P(0), 0, 0},
    {"host_free", run_streams, G_MEMORY, P(0), P(0), 0, 0},

    /* linear: odd sizes; SD1.5's 320 -> 1280 time-embedding / FF shapes, 768 -> 320 to_k */
    {"linear_forward", run_linear, G_DENSE, P(7, 13, 5), P(0), 0, 0},
    {"linear_forward", run_linear, G_DENSE, P(7, 13, 5), P(0), F_NULLS, 0},
    {"linear_forward", run_linear, G_DENSE, P(16, 320, 1280), P(0), 0, 0},
    {"linear_forward", run_linear, G_DENSE, P(77, 768, 320), P(0), 0, 0},
    {"linear_backward", run_linear, G_DENSE, P(7, 13, 5), P(0), 0, 0},
    {"linear_backward", run_linear, G_DENSE, P(7, 13, 5), P(0), F_NULLS, 0},
    {"linear_backward", run_linear, G_DENSE, P(16, 320, 1280), P(0), 0, 0},
    {"linear_backward", run_linear, G_DENSE, P(24, 1280, 320), P(0), 0, 0},
    /* conv: odd; stride 2; the VAE downsample's right/bottom padding; SD1.5 resnet 320 -> 320 3x3,
     * 640 -> 320 1x1 skip */
    {"conv2d_forward", run_conv, G_DENSE, P(2, 7, 5, 3, 4, 3, 1, 1, 1, 1, 1), P(0), 0, 0},
    {"conv2d_forward", run_conv, G_DENSE, P(1, 9, 8, 4, 6, 3, 2, 1, 1, 1, 1), P(0), F_NULLS, 0},
    {"conv2d_forward", run_conv, G_DENSE, P(1, 8, 7, 8, 8, 3, 2, 0, 0, 1, 1), P(0), 0, 0},
    {"conv2d_forward", run_conv, G_DENSE, P(1, 6, 6, 320, 320, 3, 1, 1, 1, 1, 1), P(0), 0, 0},
    {"conv2d_forward", run_conv, G_DENSE, P(1, 4, 4, 640, 320, 1, 1, 0, 0, 0, 0), P(0), 0, 0},
    {"conv2d_backward", run_conv, G_DENSE, P(2, 7, 5, 3, 4, 3, 1, 1, 1, 1, 1), P(0), 0, 0},
    {"conv2d_backward", run_conv, G_DENSE, P(1, 9, 8, 4, 6, 3, 2, 1, 1, 1, 1), P(0), F_NULLS, 0},
    {"conv2d_backward", run_conv, G_DENSE, P(1, 8, 7, 8, 8, 3, 2, 0, 0, 1, 1), P(0), 0, 0},
    {"conv2d_backward", run_conv, G_DENSE, P(1, 6, 6, 320, 320, 3, 1, 1, 1, 1, 1), P(0), 0, 0},
    {"conv2d_backward", run_conv, G_DENSE, P(1, 4, 4, 640, 320, 1, 1, 0, 0, 0, 0), P(0), 0, 0},
    /* LoRA: linear (odd; SD1.5 320 attention projection rank 8; 768 -> 320 to_k rank 4), LoCon */
    {"lora_linear_forward", run_lora_linear, G_DENSE, P(7, 13, 5, 2), P(0.75f), 0, 0},
    {"lora_linear_forward", run_lora_linear, G_DENSE, P(7, 13, 5, 2), P(0.75f), F_NULLS, 0},
    {"lora_linear_forward", run_lora_linear, G_DENSE, P(16, 320, 320, 8), P(0.5f), 0, 0},
    {"lora_linear_forward", run_lora_linear, G_DENSE, P(77, 768, 320, 4), P(1.0f), 0, 0},
    {"lora_linear_backward", run_lora_linear, G_DENSE, P(7, 13, 5, 2), P(0.75f), 0, 0},
    {"lora_linear_backward", run_lora_linear, G_DENSE, P(7, 13, 5, 2), P(0.75f), F_NULLS, 0},
    {"lora_linear_backward", run_lora_linear, G_DENSE, P(16, 320, 320, 8), P(0.5f), 0, 0},
    {"lora_conv_forward", run_lora_conv, G_DENSE, P(2, 6, 5, 3, 4, 3, 1, 1, 1, 1, 1, 2), P(0.5f), 0, 0},
    {"lora_conv_forward", run_lora_conv, G_DENSE, P(1, 8, 7, 4, 4, 3, 2, 0, 0, 1, 1, 2), P(0.5f), F_NULLS, 0},
    {"lora_conv_forward", run_lora_conv, G_DENSE, P(1, 4, 4, 320, 320, 3, 1, 1, 1, 1, 1, 8), P(0.25f), 0, 0},
    {"lora_conv_backward", run_lora_conv, G_DENSE, P(2, 6, 5, 3, 4, 3, 1, 1, 1, 1, 1, 2), P(0.5f), 0, 0},
    {"lora_conv_backward", run_lora_conv, G_DENSE, P(1, 8, 7, 4, 4, 3, 2, 0, 0, 1, 1, 2), P(0.5f), 0, 0},
    {"lora_conv_backward", run_lora_conv, G_DENSE, P(1, 8, 7, 4, 4, 3, 2, 0, 0, 1, 1, 2), P(0.5f), F_NULLS, 0},
    {"lora_conv_backward", run_lora_conv, G_DENSE, P(1, 4, 4, 320, 320, 3, 1, 1, 1, 1, 1, 8), P(0.25f), 0, 0},
    {"lora_merge", run_lora_merge, G_DENSE, P(5, 13, 2), P(0.75f), 0, 0},
    {"lora_merge", run_lora_merge, G_DENSE, P(320, 2880, 8), P(0.5f), 0, 0}, /* 320 x 3x3x320 LoCon */
    {"lora_unmerge", run_lora_merge, G_DENSE, P(5, 13, 2), P(0.75f), 0, 0},
    {"lora_unmerge", run_lora_merge, G_DENSE, P(320, 768, 4), P(1.0f), 0, 0},

    /* normalisation: odd; SD1.5 320 / 1280 channels in 32 groups with SiLU; CLIP's 768 */
    {"groupnorm_forward", run_groupnorm, G_NORM, P(2, 9, 12, 3, 0), P(1e-5f), 0, 0},
    {"groupnorm_forward", run_groupnorm, G_NORM, P(2, 9, 12, 3, 1), P(1e-6f), F_ALIAS | F_NULLS, 0},
    {"groupnorm_forward", run_groupnorm, G_NORM, P(1, 64, 320, 32, 1), P(1e-5f), 0, 0},
    {"groupnorm_forward", run_groupnorm, G_NORM, P(2, 16, 1280, 32, 0), P(1e-6f), 0, 0},
    {"groupnorm_backward", run_groupnorm, G_NORM, P(2, 9, 12, 3, 1), P(1e-5f), 0, 0},
    {"groupnorm_backward", run_groupnorm, G_NORM, P(2, 9, 12, 3, 0), P(1e-5f), F_ALIAS | F_NULLS, 0},
    {"groupnorm_backward", run_groupnorm, G_NORM, P(1, 64, 320, 32, 1), P(1e-5f), 0, 0},
    {"groupnorm_backward", run_groupnorm, G_NORM, P(2, 16, 1280, 32, 0), P(1e-6f), 0, 0},
    {"layernorm_forward", run_layernorm, G_NORM, P(5, 7), P(1e-5f), 0, 0},
    {"layernorm_forward", run_layernorm, G_NORM, P(5, 7), P(1e-5f), F_ALIAS | F_NULLS, 0},
    {"layernorm_forward", run_layernorm, G_NORM, P(64, 320), P(1e-5f), 0, 0},
    {"layernorm_forward", run_layernorm, G_NORM, P(77, 768), P(1e-5f), 0, 0},
    {"layernorm_backward", run_layernorm, G_NORM, P(5, 7), P(1e-5f), 0, 0},
    {"layernorm_backward", run_layernorm, G_NORM, P(5, 7), P(1e-5f), F_NULLS, 0},
    {"layernorm_backward", run_layernorm, G_NORM, P(64, 320), P(1e-5f), 0, 0},
    {"layernorm_backward", run_layernorm, G_NORM, P(77, 768), P(1e-5f), 0, 0},

    /* attention: the kernels (SD1.5 level 1 self-attention 8 x 40, level 2 cross-attention to 77
     * text tokens 8 x 80, level 3 8 x 160) and the GEMM + softmax fallback (odd d; CLIP's causal
     * 12 x 64 over 77 tokens) */
    {"attention_forward", run_attention, G_ATTN, P(1, 64, 64, 8, 40, 0), P(0), 0, 0},
    {"attention_forward", run_attention, G_ATTN, P(1, 16, 77, 8, 80, 0), P(0), F_NULLS, 0},
    {"attention_forward", run_attention, G_ATTN, P(1, 16, 16, 8, 160, 0), P(0), 0, 0},
    {"attention_forward", run_attention, G_ATTN, P(2, 5, 7, 3, 8, 0), P(0), 0, 0},
    {"attention_forward", run_attention, G_ATTN, P(2, 5, 7, 3, 8, 0), P(0), F_NULLS, 0},
    {"attention_forward", run_attention, G_ATTN, P(1, 77, 77, 12, 64, 1), P(0), 0, 0},
    {"attention_backward", run_attention, G_ATTN, P(1, 64, 64, 8, 40, 0), P(0), 0, 0},
    {"attention_backward", run_attention, G_ATTN, P(1, 16, 77, 8, 80, 0), P(0), F_NULLS, 0},
    {"attention_backward", run_attention, G_ATTN, P(1, 16, 16, 8, 160, 0), P(0), 0, 0},
    {"attention_backward", run_attention, G_ATTN, P(2, 5, 7, 3, 8, 0), P(0), 0, 0},
    {"attention_backward", run_attention, G_ATTN, P(2, 6, 6, 2, 8, 1), P(0), F_NULLS, 0},
    {"attention_backward", run_attention, G_ATTN, P(1, 77, 77, 12, 64, 1), P(0), 0, 0},

    /* pointwise, element-wise, layout */
    {"act_forward", run_act, G_POINT, P(DL_ACT_GELU, 1001), P(0), 0, 0},
    {"act_forward", run_act, G_POINT, P(DL_ACT_GELU_TANH, 1001), P(0), F_ALIAS, 0},
    {"act_forward", run_act, G_POINT, P(DL_ACT_QUICK_GELU, 1001), P(0), 0, 0},
    {"act_forward", run_act, G_POINT, P(DL_ACT_SILU, 64 * 320), P(0), 0, 0},
    {"act_backward", run_act, G_POINT, P(DL_ACT_GELU, 1001), P(0), 0, 0},
    {"act_backward", run_act, G_POINT, P(DL_ACT_GELU_TANH, 1001), P(0), 0, 0},
    {"act_backward", run_act, G_POINT, P(DL_ACT_QUICK_GELU, 1001), P(0), F_ALIAS, 0},
    {"act_backward", run_act, G_POINT, P(DL_ACT_SILU, 64 * 320), P(0), 0, 0},
    {"geglu_forward", run_geglu, G_POINT, P(7, 9), P(0), 0, 0},
    {"geglu_forward", run_geglu, G_POINT, P(16, 1280), P(0), 0, 0},
    {"geglu_backward", run_geglu, G_POINT, P(7, 9), P(0), 0, 0},
    {"geglu_backward", run_geglu, G_POINT, P(16, 1280), P(0), 0, 0},
    {"add_forward", run_elementwise, G_POINT, P(1001), P(0), 0, 0},
    {"add_forward", run_elementwise, G_POINT, P(64 * 320), P(0), F_ALIAS, 0},
    {"scale_forward", run_elementwise, G_POINT, P(1001), P(-0.75f), 0, 0},
    {"scale_forward", run_elementwise, G_POINT, P(64 * 320), P(0.18215f), F_ALIAS, 0},
    {"axpy", run_elementwise, G_POINT, P(1001), P(0.5f), 0, 0},
    {"axpy", run_elementwise, G_POINT, P(64 * 320), P(-1.0f), 0, 0},
    {"add_bcast_forward", run_bcast, G_POINT, P(2, 9, 12, 0), P(0), 0, 0},
    {"add_bcast_forward", run_bcast, G_POINT, P(2, 9, 12, 1), P(0), F_ALIAS, 0},
    {"add_bcast_forward", run_bcast, G_POINT, P(2, 64, 320, 1), P(0), 0, 0},
    {"add_bcast_backward", run_bcast, G_POINT, P(2, 9, 12, 0), P(0), 0, 0},
    {"add_bcast_backward", run_bcast, G_POINT, P(2, 9, 12, 1), P(0), F_ALIAS, 0},
    {"add_bcast_backward", run_bcast, G_POINT, P(2, 9, 12, 0), P(0), F_NULLS, 0},
    {"add_bcast_backward", run_bcast, G_POINT, P(2, 64, 320, 0), P(0), 0, 0},
    {"add_bcast_backward", run_bcast, G_POINT, P(2, 64, 1280, 1), P(0), 0, 0},
    {"concat_channels_forward", run_concat, G_POINT, P(9, 5, 7), P(0), 0, 0},
    {"concat_channels_forward", run_concat, G_POINT, P(64, 320, 640), P(0), 0, 0},
    {"concat_channels_backward", run_concat, G_POINT, P(9, 5, 7), P(0), 0, 0},
    {"concat_channels_backward", run_concat, G_POINT, P(9, 5, 7), P(0), F_NULLS, 0},
    {"concat_channels_backward", run_concat, G_POINT, P(64, 320, 640), P(0), 0, 0},
    {"upsample_nearest2x_forward", run_upsample, G_POINT, P(2, 3, 5, 4), P(0), 0, 0},
    {"upsample_nearest2x_forward", run_upsample, G_POINT, P(1, 8, 8, 320), P(0), 0, 0},
    {"upsample_nearest2x_backward", run_upsample, G_POINT, P(2, 3, 5, 4), P(0), 0, 0},
    {"upsample_nearest2x_backward", run_upsample, G_POINT, P(1, 8, 8, 320), P(0), 0, 0},
    {"embed_tokens", run_embed, G_POINT, P(1, 5, 8, 11, 5), P(0), 0, 0},
    {"embed_tokens", run_embed, G_POINT, P(2, 77, 768, 1000, 80), P(0), 0, 0},
    {"embed_tokens_backward", run_embed_backward, G_POINT, P(1, 5, 8, 11, 5), P(0), F_FD, 0},
    {"embed_tokens_backward", run_embed_backward, G_POINT, P(2, 7, 6, 9, 8), P(0), F_NULLS | F_FD, 0},
    {"embed_tokens_backward", run_embed_backward, G_POINT, P(2, 77, 768, 1000, 80), P(0), 0, 0},
    {"timestep_embedding", run_timestep, G_POINT, P(3, 320, 1), P(0.0f, 1.0f, 10000.0f), 0, 0},
    {"timestep_embedding", run_timestep, G_POINT, P(2, 7, 0), P(1.0f, 2.0f, 100.0f), 0, 0},

    /* loss, optimiser, clipping */
    {"mse_loss_forward", run_mse, G_TRAIN, P(2, 100, 0), P(0), 0, 0},
    {"mse_loss_forward", run_mse, G_TRAIN, P(3, 100, 1), P(0), F_NULLS, 0},
    {"mse_loss_forward", run_mse, G_TRAIN, P(2, 64 * 64 * 4, 1), P(0), 0, 0}, /* SD1.5 512² latents */
    {"mse_loss_backward", run_mse, G_TRAIN, P(2, 100, 0), P(1.0f), 0, 0},
    {"mse_loss_backward", run_mse, G_TRAIN, P(3, 100, 1), P(0.5f), F_NULLS | F_ALIAS, 0},
    {"mse_loss_backward", run_mse, G_TRAIN, P(2, 64 * 64 * 4, 1), P(1.0f), 0, 0},
    {"adamw_step", run_adamw, G_TRAIN, P(1001, 1), P(1e-3f, 1e-2f), 0, 0},
    {"adamw_step", run_adamw, G_TRAIN, P(100000, 10), P(1e-4f, 0.0f), 0, 0},
    {"sumsq", run_sumsq, G_TRAIN, P(1001), P(0), 0, 0},
    {"sumsq", run_sumsq, G_TRAIN, P(300000), P(0), 0, 0},
    {"clip_coef", run_clip_coef, G_TRAIN, P(0), P(16.0f, 1.0f), 0, 0}, /* norm 4 > 1: clipped */
    {"clip_coef", run_clip_coef, G_TRAIN, P(0), P(0.25f, 1.0f), 0, 0}, /* norm 0.5: coefficient 1 */
    {"scale_by", run_scale_by, G_TRAIN, P(1001), P(0.25f), 0, 0},
    {"scale_by", run_scale_by, G_TRAIN, P(100000), P(1.0f), 0, 0},

    /* finite differences of every backward entry, tiny shapes */
    {"linear_backward", run_linear, G_FD, P(3, 5, 4), P(0), F_FD, 0},
    {"conv2d_backward", run_conv, G_FD, P(1, 5, 4, 2, 3, 3, 2, 0, 0, 1, 1), P(0), F_FD, 0},
    {"groupnorm_backward", run_groupnorm, G_FD, P(2, 4, 6, 2, 1), P(1e-5f), F_FD, 0},
    {"layernorm_backward", run_layernorm, G_FD, P(3, 6), P(1e-5f), F_FD, 0},
    {"attention_backward", run_attention, G_FD, P(1, 4, 5, 2, 40, 0), P(0), F_FD, 0},
    {"attention_backward", run_attention, G_FD, P(1, 5, 5, 2, 8, 1), P(0), F_FD, 0},
    {"act_backward", run_act, G_FD, P(DL_ACT_GELU, 20), P(0), F_FD, 0},
    {"act_backward", run_act, G_FD, P(DL_ACT_SILU, 20), P(0), F_FD, 0},
    {"geglu_backward", run_geglu, G_FD, P(3, 4), P(0), F_FD, 0},
    {"add_bcast_backward", run_bcast, G_FD, P(2, 3, 4, 1), P(0), F_FD, 0},
    {"concat_channels_backward", run_concat, G_FD, P(3, 2, 3), P(0), F_FD, 0},
    {"upsample_nearest2x_backward", run_upsample, G_FD, P(1, 2, 3, 2), P(0), F_FD, 0},
    {"mse_loss_backward", run_mse, G_FD, P(2, 6, 1), P(0.5f), F_FD, 0},
    {"lora_linear_backward", run_lora_linear, G_FD, P(3, 5, 4, 2), P(0.75f), F_FD, 0},
    {"lora_conv_backward", run_lora_conv, G_FD, P(1, 5, 4, 2, 3, 3, 2, 0, 0, 1, 1, 2), P(0.5f), F_FD, 0},
};
enum { N_CASES = sizeof k_cases / sizeof k_cases[0] };

static void run_case(tgt *t, const tcase *c)
{
    g_case = c;
    c->run(t, c);
    t_free_all(t);
    hfree_all();
}
/* every case of group g on every backend present */
static void run_group(int g)
{
    FOR_EACH_TARGET(t) {
        for (int i = 0; i < N_CASES; i++)
            if (k_cases[i].group == g) run_case(t, &k_cases[i]);
    }
}

/* ==== tests ========================================================================================= */

/* Every function pointer of dl_backend is a named entry with a case; every backend fills it. */
Test(backend_table, every_entry_has_a_case)
{
    cr_assert_eq((size_t)N_ENTRIES, (size_t)N_POINTERS, "dl_backend has %zu function pointers, this test names %d: add the new "
                 "entry to BACKEND_ENTRIES and give it a case", (size_t)N_POINTERS, N_ENTRIES);
    char seen[N_POINTERS] = {0};
    for (int i = 0; i < N_ENTRIES; i++) {
        const size_t slot = (k_entries[i].off - offsetof(dl_backend, open)) / sizeof(void (*)(void));
        cr_assert_lt(slot, N_POINTERS);
        cr_expect(!seen[slot], "%s named twice", k_entries[i].name);
        seen[slot] = 1;
        int cases = 0, fd = 0;
        for (int j = 0; j < N_CASES; j++)
            if (!strcmp(k_cases[j].entry, k_entries[i].name)) cases++, fd += (k_cases[j].flags & F_FD) != 0;
        cr_expect(cases > 0, "entry %s has no case in k_cases", k_entries[i].name);
        if (strstr(k_entries[i].name, "_backward"))
            cr_expect(fd > 0, "backward entry %s has no finite-difference case", k_entries[i].name);
        const dl_backend *bes[2] = {&dl_backend_cpu, &dl_backend_cuda};
        for (int b = 0; b < 2; b++) {
            void *fp;
            memcpy(&fp, (const char *)bes[b] + k_entries[i].off, sizeof fp);
            const int optional = bes[b] == &dl_backend_cpu && (!strcmp(k_entries[i].name, "open") ||
                                                                !strcmp(k_entries[i].name, "close"));
            cr_expect(fp || optional, "backend %s leaves %s NULL", bes[b]->name, k_entries[i].name);
        }
    }
    for (int j = 0; j < N_CASES; j++) {
        int known = 0;
        for (int i = 0; i < N_ENTRIES; i++) known |= !strcmp(k_cases[j].entry, k_entries[i].name);
        cr_expect(known, "case %d names no entry: %s", j, k_cases[j].entry);
    }
    cr_expect_eq(dl_backend_find("cuda"), &dl_backend_cuda);
    cr_expect(dl_backend_cuda.device_memory && !dl_backend_cpu.device_memory);
}

Test(backend_table, memory) { run_group(G_MEMORY); }
Test(backend_table, dense) { run_group(G_DENSE); }
Test(backend_table, norm) { run_group(G_NORM); }
Test(backend_table, attention) { run_group(G_ATTN); }
Test(backend_table, pointwise) { run_group(G_POINT); }
Test(backend_table, training) { run_group(G_TRAIN); }
Test(backend_table, finite_differences) { run_group(G_FD); }

/* An op that gets a device error (here cuDNN's BAD_PARAM for a filter larger than the padded
 * input) returns nothing; the next synchronize and download return DL_ERR with its message, the
 * ops after it are not run, and the error stays. */
Test(backend_table, sticky_error_surfaces_at_synchronize)
{
    FOR_EACH_TARGET(t) {
        if (t->be != &dl_backend_cuda) continue;
        const dl_conv2d_shape bad = dl_conv2d_shape_make(1, 3, 3, 2, 2, 5, 1, 0); /* 5x5 filter on 3x3 */
        float *x = t_out(t, 18), *w = t_out(t, 100), *y = t_out(t, 18);
        cr_assert_eq(t->be->synchronize(&t->ctx), DL_OK);
        t->be->conv2d_forward(&t->ctx, &bad, x, w, DL_F32, NULL, y);
        t->be->act_forward(&t->ctx, DL_ACT_SILU, 18, x, y); /* not run */
        cr_expect_eq(t->be->synchronize(&t->ctx), DL_ERR, "%s: the error did not surface", t->name);
        const char *m = dl_error_msg();
        cr_expect(strstr(m, "conv2d_forward") && strstr(m, "larger than the padded input"), "%s: message: %s",
                  t->name, m);
        float h[18];
        dl_error_clear();
        cr_expect_eq(t->be->download(&t->ctx, h, y, sizeof h), DL_ERR);
        cr_expect(strstr(dl_error_msg(), "conv2d_forward") != NULL, "%s", dl_error_msg());
        cr_expect_eq(t->be->synchronize(&t->ctx), DL_ERR, "sticky: still reported");
        cr_expect_eq(t->be->upload(&t->ctx, x, h, sizeof h), DL_ERR);
        cr_expect(isnan(dl_be_read_f32(&t->ctx, y)));
        t_free_all(t); /* free still works after the error */
    }
}

/* The emulated device's ordering trap, reached through the table: a copy on one stream and an op
 * on another that touch the same bytes with no event between are an error (sticky, named at the
 * next synchronize) — an upload read by the compute stream, a download of what the compute stream
 * wrote, and an upload over what the compute stream is still reading. With the events (run_streams) the same exchange passes; on the CPU backend, which
 * does every copy when it is enqueued, these orders are fine. */
Test(backend_table, unordered_streams_are_caught)
{
    FOR_EACH_TARGET(t) {
        if (strcmp(t->name, "cuda (real)") == 0) continue; /* real hardware races silently */
        const dl_backend *be = t->be;
        const int emu = be == &dl_backend_cuda;
        const int64_t n = 1000;
        float h[1000];
        for (int i = 0; i < n; i++) h[i] = (float)i;
        for (int which = 0; which < 3; which++) {
            dl_ctx c2;
            cr_assert_eq(dl_ctx_init_backend(&c2, 1, be), DL_OK, "%s", dl_error_msg());
            dl_be_stream *side = be->stream_create(&c2, which == 1 ? "download" : "upload");
            float *x = be->alloc(&c2, n * sizeof(float)), *y = be->alloc(&c2, n * sizeof(float));
            cr_assert(side && x && y);
            int rc;
            if (which == 0) { /* upload on the side stream, read by the compute stream: no event */
                cr_expect_eq(be->upload_on(&c2, side, x, h, sizeof h), DL_OK, "%s", dl_error_msg());
                be->scale_forward(&c2, n, 2.0f, x, y);
                rc = be->synchronize(&c2);
            } else if (which == 1) { /* written on the compute stream, downloaded on the side stream */
                cr_expect_eq(be->upload(&c2, x, h, sizeof h), DL_OK);
                be->scale_forward(&c2, n, 2.0f, x, y);
                rc = be->download_on(&c2, side, h, y, sizeof h);
                if (rc == DL_OK) rc = be->synchronize(&c2);
            } else { /* read on the compute stream, overwritten by an upload on the side stream */
                cr_expect_eq(be->upload(&c2, x, h, sizeof h), DL_OK);
                cr_expect_eq(be->synchronize(&c2), DL_OK); /* the upload is ordered before both */
                be->scale_forward(&c2, n, 2.0f, x, y);
                rc = be->upload_on(&c2, side, x, h, sizeof h);
                if (rc == DL_OK) rc = be->synchronize(&c2);
            }
            if (emu) {
                cr_expect_eq(rc, DL_ERR, "%s: case %d: the unordered access was not caught", t->name, which);
                const char *m = dl_error_msg();
                cr_expect(strstr(m, "no event recorded") != NULL && strstr(m, which == 1 ? "download" : "upload") &&
                              strstr(m, which == 2 ? "reads" : "wrote"),
                          "%s: case %d: the message does not name the streams and the missing event: %s", t->name,
                          which, m);
                cr_expect_eq(be->synchronize(&c2), DL_ERR, "%s: sticky", t->name);
            } else {
                cr_expect_eq(rc, DL_OK, "%s: case %d: %s", t->name, which, dl_error_msg());
            }
            be->free(&c2, x);
            be->free(&c2, y);
            be->stream_destroy(&c2, side);
            dl_ctx_free(&c2);
        }
    }
}

/* The bf16 compute type: with ctx->compute_dtype DL_BF16, a backend that lists it multiplies
 * linear layers' inputs rounded to bf16 with fp32 accumulation. The result is the CPU's fp32 op on
 * bf16-rounded copies of the inputs (to 1e-5: summation order), and not the fp32 result (which it
 * misses by bf16's rounding, ~1e-3), forward and backward (dx from dy and w, dw from dy and x,
 * db summed from bf16-rounded dy). Backends without it keep fp32 whatever the ctx says. */
static float *bf16_copy(const float *x, size_t n)
{
    float *y = hnew(n);
    for (size_t i = 0; i < n; i++) y[i] = dl_bf16_to_f32(dl_f32_to_bf16(x[i]));
    return y;
}
static double rel_l2_dev(tgt *t, const float *d, const float *ref, size_t n)
{
    float *h = hnew(n);
    cr_assert_eq(t->be->download(&t->ctx, h, d, n * sizeof(float)), DL_OK, "%s", dl_error_msg());
    return tu_rel_l2(h, ref, n);
}
Test(backend_table, bf16_compute_rounds_matrix_inputs)
{
    const int64_t M = 24, in = 320, out = 72;
    FOR_EACH_TARGET(t) {
        const int bf16 = (t->be->compute_dtypes & (1u << DL_BF16)) != 0;
        cr_expect(bf16 == (t->be == &dl_backend_cuda), "%s: compute_dtypes %#x", t->name, t->be->compute_dtypes);
        t->ctx.compute_dtype = DL_BF16;
        float *x = hrand((size_t)(M * in), 1, -1, 1), *w = hrand((size_t)(out * in), 2, -0.1f, 0.1f);
        float *b = hrand((size_t)out, 3, -1, 1), *dy = hrand((size_t)(M * out), 4, -1, 1);
        float *xr = bf16_copy(x, (size_t)(M * in)), *wr = bf16_copy(w, (size_t)(out * in));
        float *dyr = bf16_copy(dy, (size_t)(M * out));
        float *y32 = hnew((size_t)(M * out)), *yr = hnew((size_t)(M * out));
        REF.linear_forward(cpu(), M, in, out, x, w, DL_F32, b, y32);
        REF.linear_forward(cpu(), M, in, out, xr, wr, DL_F32, b, yr);
        float *dx32 = hnew((size_t)(M * in)), *dw32 = hnew((size_t)(out * in)), *db32 = hnew((size_t)out);
        float *dxr = hnew((size_t)(M * in)), *dwr = hnew((size_t)(out * in)), *dbr = hnew((size_t)out);
        REF.linear_backward(cpu(), M, in, out, x, w, DL_F32, dy, dx32, dw32, db32);
        REF.linear_backward(cpu(), M, in, out, xr, wr, DL_F32, dyr, dxr, dwr, dbr);
        float *dx = t_in(t, x, (size_t)(M * in)), *dw_ = t_in(t, w, (size_t)(out * in)), *db_ = t_in(t, b, (size_t)out);
        float *ddy = t_in(t, dy, (size_t)(M * out)), *dyo = t_out(t, (size_t)(M * out));
        float *gx = t_out(t, (size_t)(M * in)), *gw = t_out(t, (size_t)(out * in)), *gb = t_out(t, (size_t)out);
        t->be->linear_forward(&t->ctx, M, in, out, dx, dw_, DL_F32, db_, dyo);
        t->be->linear_backward(&t->ctx, M, in, out, dx, dw_, DL_F32, ddy, gx, gw, gb);
        cr_assert_eq(t->be->synchronize(&t->ctx), DL_OK, "%s: %s", t->name, dl_error_msg());
        /* the real GPU's conversion may round differently from round-to-nearest-even */
        const double tol = strcmp(t->name, "cuda (real)") == 0 ? 2e-3 : 1e-5;
        const struct { const char *what; const float *d, *r32, *rb; int64_t n; } o[] = {
            {"y", dyo, y32, yr, M * out}, {"dx", gx, dx32, dxr, M * in}, {"dw", gw, dw32, dwr, out * in},
            {"db", gb, db32, dbr, out}};
        for (int i = 0; i < 4; i++) {
            const double e32 = rel_l2_dev(t, o[i].d, o[i].r32, (size_t)o[i].n);
            const double eb = rel_l2_dev(t, o[i].d, o[i].rb, (size_t)o[i].n);
            fprintf(stderr, "backend_table: %s: compute bf16: %s: %.2e from the fp32 result, %.2e from fp32 on bf16 inputs\n",
                    t->name, o[i].what, e32, eb);
            if (bf16) {
                cr_expect(eb <= tol, "%s: %s: %.3g from the product of bf16-rounded inputs (bound %.1g)", t->name,
                          o[i].what, eb, tol);
                cr_expect(e32 >= 1e-4, "%s: %s: %.3g from the fp32 result: the inputs were not rounded", t->name,
                          o[i].what, e32);
            } else {
                cr_expect(e32 <= 1e-5, "%s: %s: %.3g from the fp32 result without bf16 compute", t->name, o[i].what,
                          e32);
            }
        }
        t->ctx.compute_dtype = DL_F32;
        t_free_all(t);
        hfree_all();
    }
}

/* After every case ran once, running them again grows no scratch buffer (the steady state of a
 * training step allocates nothing). */
Test(backend_table, steady_state_grows_no_scratch)
{
    FOR_EACH_TARGET(t) {
        if (t->be != &dl_backend_cuda) continue;
        const int groups[] = {G_DENSE, G_NORM, G_ATTN};
        size_t after_first = 0;
        for (int pass = 0; pass < 2; pass++) {
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
                for (int i = 0; i < N_CASES; i++)
                    if (k_cases[i].group == groups[gi]) run_case(t, &k_cases[i]);
            if (pass == 0) after_first = dl_backend_cuda_grows(&t->ctx);
        }
        cr_expect_gt(after_first, 0);
        cr_expect_eq(dl_backend_cuda_grows(&t->ctx), after_first, "%s: the second pass grew scratch %zu times",
                     t->name, dl_backend_cuda_grows(&t->ctx) - after_first);
    }
}

/* DANLU_BACKEND_TABLE_TIME=1: every case on every backend, a warm-up then 3 timed calls; prints
 * the mean time per call. Compares and asserts nothing. */
Test(backend_table, timing)
{
    const char *env = getenv("DANLU_BACKEND_TABLE_TIME");
    if (!env || strcmp(env, "1") != 0) return;
    g_check = 0;
    g_reps = 3;
    FOR_EACH_TARGET(t) {
        for (int i = 0; i < N_CASES; i++)
            if (k_cases[i].group != G_MEMORY && k_cases[i].group != G_FD) run_case(t, &k_cases[i]);
    }
}
