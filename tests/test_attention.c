/* test_attention.c - CPU multi-head attention: PyTorch golden forward/backward (self, cross
 * Tk = 77, causal, d 16..160, token counts off the tile sizes) on every ISA path, and float64
 * finite differences of the backward. */
#include "ops/cpu/attention.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *key(const char *c, const char *t)
{
    static char buf[4][128];
    static int slot;
    char *b = buf[slot++ & 3];
    snprintf(b, 128, "%s.%s", c, t);
    return b;
}

static void golden_case(const dl_st_file *f, const char *c)
{
    dl_attention_shape s = {(int)tu_golden_int(f, key(c, "N")), (int)tu_golden_int(f, key(c, "Tq")),
                            (int)tu_golden_int(f, key(c, "Tk")), (int)tu_golden_int(f, key(c, "H")),
                            (int)tu_golden_int(f, key(c, "d")), 0, (int)tu_golden_int(f, key(c, "causal"))};
    float *sc = tu_golden_f32(f, key(c, "scale"), NULL);
    s.scale = sc[0];
    const size_t nq = (size_t)s.N * s.Tq * s.H * s.d, nk = (size_t)s.N * s.Tk * s.H * s.d;
    const size_t nl = (size_t)s.N * s.H * s.Tq;
    float *q = tu_golden_f32(f, key(c, "q"), NULL), *k = tu_golden_f32(f, key(c, "k"), NULL);
    float *v = tu_golden_f32(f, key(c, "v"), NULL), *dy = tu_golden_f32(f, key(c, "dy"), NULL);
    float *ro = tu_golden_f32(f, key(c, "o"), NULL), *rl = tu_golden_f32(f, key(c, "lse"), NULL);
    float *rdq = tu_golden_f32(f, key(c, "dq"), NULL), *rdk = tu_golden_f32(f, key(c, "dk"), NULL);
    float *rdv = tu_golden_f32(f, key(c, "dv"), NULL);
    float *o = tu_alloc_nan(nq), *lse = tu_alloc_nan(nl);
    float *dq = tu_alloc_nan(nq), *dk = tu_alloc_nan(nk), *dv = tu_alloc_nan(nk);

    dl_cpu_attention_forward(tu_ctx(), s, q, k, v, o, lse);
    tu_expect_close(o, ro, nq, 1e-5, key(c, "o"));
    tu_expect_close(lse, rl, nl, 1e-5, key(c, "lse"));
    dl_cpu_attention_backward(tu_ctx(), s, q, k, v, o, lse, dy, dq, dk, dv);
    tu_expect_close(dq, rdq, nq, 1e-5, key(c, "dq"));
    tu_expect_close(dk, rdk, nk, 1e-5, key(c, "dk"));
    tu_expect_close(dv, rdv, nk, 1e-5, key(c, "dv"));
    /* a NULL gradient is skipped and does not disturb the others */
    float *dv2 = tu_alloc_nan(nk);
    dl_cpu_attention_backward(tu_ctx(), s, q, k, v, o, lse, dy, NULL, NULL, dv2);
    tu_expect_close(dv2, rdv, nk, 1e-5, key(c, "dv (dq, dk NULL)"));

    free(sc); free(q); free(k); free(v); free(dy); free(ro); free(rl); free(rdq); free(rdk);
    free(rdv); free(o); free(lse); free(dq); free(dk); free(dv); free(dv2);
}

static void golden_all(void)
{
    dl_st_file f;
    tu_golden_open(&f, "attention");
    const char *cases[] = {"self37_d40", "self70_d64", "cross77_d80", "cross77_d160",
                           "clip_causal77_d64", "causal130_d16", "self130_d40", "odd_d24"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) golden_case(&f, cases[i]);
    dl_st_close(&f);
}

/* the widest kernel the CPU offers (AVX-512 where present) */
Test(attention, golden) { golden_all(); }

/* the AVX2 baseline kernel, forced (each Criterion test runs in its own process) */
Test(attention, golden_avx2)
{
    setenv("DANLU_CPU_ISA", "avx2", 1);
    golden_all();
}

/* ---- finite differences: L = sum(w * o) in float64 ---- */

typedef struct {
    dl_attention_shape s;
    const float *w; // [N, Tq, H*d]
} fd_user;

/* params = [q (N*Tq*H*d), k (N*Tk*H*d), v (N*Tk*H*d)] */
static double attn_loss(void *u, const double *p)
{
    const fd_user *fu = u;
    const dl_attention_shape s = fu->s;
    const int ld = s.H * s.d;
    const double *q = p, *k = q + (size_t)s.N * s.Tq * ld, *v = k + (size_t)s.N * s.Tk * ld;
    double L = 0, P[64];
    cr_assert(s.Tk <= 64);
    for (int n = 0; n < s.N; n++)
        for (int h = 0; h < s.H; h++)
            for (int i = 0; i < s.Tq; i++) {
                const double *qi = q + ((size_t)n * s.Tq + i) * ld + h * s.d;
                double mx = -INFINITY, sum = 0;
                const int kend = s.causal ? i + 1 : s.Tk;
                for (int j = 0; j < kend; j++) {
                    const double *kj = k + ((size_t)n * s.Tk + j) * ld + h * s.d;
                    double a = 0;
                    for (int c = 0; c < s.d; c++) a += qi[c] * kj[c];
                    P[j] = a * s.scale;
                    mx = P[j] > mx ? P[j] : mx;
                }
                for (int j = 0; j < kend; j++) sum += (P[j] = exp(P[j] - mx));
                for (int c = 0; c < s.d; c++) {
                    double oc = 0;
                    for (int j = 0; j < kend; j++) oc += P[j] * v[((size_t)n * s.Tk + j) * ld + h * s.d + c];
                    L += fu->w[((size_t)n * s.Tq + i) * ld + h * s.d + c] * oc / sum;
                }
            }
    return L;
}

static void fd_case(dl_attention_shape s, uint64_t seed)
{
    const size_t nq = (size_t)s.N * s.Tq * s.H * s.d, nk = (size_t)s.N * s.Tk * s.H * s.d;
    const size_t np = nq + 2 * nk;
    float *in = malloc(np * sizeof *in), *w = malloc(nq * sizeof *w);
    tu_fill_uniform(in, np, seed, -1.5f, 1.5f);
    tu_fill_uniform(w, nq, seed + 1, -1.0f, 1.0f);
    float *o = tu_alloc_nan(nq), *lse = tu_alloc_nan((size_t)s.N * s.H * s.Tq), *got = tu_alloc_nan(np);
    dl_cpu_attention_forward(tu_ctx(), s, in, in + nq, in + nq + nk, o, lse);
    dl_cpu_attention_backward(tu_ctx(), s, in, in + nq, in + nq + nk, o, lse, w, got, got + nq,
                              got + nq + nk);
    double *p = malloc(np * sizeof *p), *fd = malloc(np * sizeof *fd);
    for (size_t i = 0; i < np; i++) p[i] = in[i];
    fd_user u = {s, w};
    tu_fd_grad(attn_loss, &u, p, np, 1e-5, fd);
    char label[3][96];
    const char *nm[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++)
        snprintf(label[t], sizeof label[t], "attention FD %s causal=%d seed=%llu", nm[t], s.causal,
                 (unsigned long long)seed);
    /* fp32 gradients vs float64 central differences (h = 1e-5, truncation ~1e-10) */
    tu_expect_close_d(got, fd, nq, 1e-5, label[0]);
    tu_expect_close_d(got + nq, fd + nq, nk, 1e-5, label[1]);
    tu_expect_close_d(got + nq + nk, fd + nq + nk, nk, 1e-5, label[2]);
    free(in); free(w); free(o); free(lse); free(got); free(p); free(fd);
}

Test(attention, finite_differences)
{
    fd_case((dl_attention_shape){1, 5, 7, 2, 3, 0.57735f, 0}, 51);   /* cross, odd sizes */
    fd_case((dl_attention_shape){2, 6, 6, 1, 4, 0.5f, 1}, 52);       /* causal, N = 2 */
    fd_case((dl_attention_shape){1, 3, 19, 1, 17, 0.2425f, 0}, 53);  /* d not a multiple of 16 */
}

/* The forward does not depend on the thread count; the backward's dq may be summed in a
 * different order, so it is compared with a tolerance. */
Test(attention, thread_count)
{
    dl_attention_shape s = {1, 200, 150, 1, 40, 0.158f, 0};
    const size_t nq = (size_t)s.Tq * s.d, nk = (size_t)s.Tk * s.d;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *g = malloc(nq * 4);
    tu_fill_uniform(q, nq, 61, -1, 1);
    tu_fill_uniform(k, nk, 62, -1, 1);
    tu_fill_uniform(v, nk, 63, -1, 1);
    tu_fill_uniform(g, nq, 64, -1, 1);
    float *o1 = tu_alloc_nan(nq), *o2 = tu_alloc_nan(nq), *l1 = tu_alloc_nan(s.Tq), *l2 = tu_alloc_nan(s.Tq);
    float *dq1 = tu_alloc_nan(nq), *dq2 = tu_alloc_nan(nq), *dk = tu_alloc_nan(nk), *dv = tu_alloc_nan(nk);
    dl_ctx one;
    cr_assert_eq(dl_ctx_init(&one, 1), 0);
    dl_cpu_attention_forward(tu_ctx(), s, q, k, v, o1, l1);
    dl_cpu_attention_forward(&one, s, q, k, v, o2, l2);
    for (size_t i = 0; i < nq; i++) cr_assert_eq(o1[i], o2[i], "o[%zu] differs with 1 thread", i);
    dl_cpu_attention_backward(tu_ctx(), s, q, k, v, o1, l1, g, dq1, dk, dv);
    dl_cpu_attention_backward(&one, s, q, k, v, o1, l1, g, dq2, dk, dv);
    tu_expect_close(dq1, dq2, nq, 1e-6, "dq with 1 thread vs the test pool");
    dl_ctx_free(&one);
    free(q); free(k); free(v); free(g); free(o1); free(o2); free(l1); free(l2); free(dq1);
    free(dq2); free(dk); free(dv);
}
