/* lora_linalg.c - SVDs for the LoRA tools through LAPACKE (double precision). */
#include "lora/lora_linalg.h"
#include "core/error.h"

#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

void dl_matmul_d(const double *a, const double *b, int m, int k, int n, double *c)
{
    memset(c, 0, (size_t)m * (size_t)n * sizeof *c);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) {
            const double x = a[(size_t)i * k + p];
            if (x == 0) continue;
            const double *br = b + (size_t)p * n;
            double *cr = c + (size_t)i * n;
            for (int j = 0; j < n; j++) cr[j] += x * br[j];
        }
}

int dl_svd(const double *a, int m, int n, double *u, double *s, double *vt)
{
    const int k = m < n ? m : n;
    double *w = malloc((size_t)m * (size_t)n * sizeof *w);
    double *uu = u ? NULL : malloc((size_t)m * (size_t)k * sizeof *uu);
    double *vv = vt ? NULL : malloc((size_t)k * (size_t)n * sizeof *vv);
    if (!w || (!u && !uu) || (!vt && !vv)) {
        free(w), free(uu), free(vv);
        return dl_error_set("SVD of a %d x %d matrix: out of memory", m, n);
    }
    memcpy(w, a, (size_t)m * (size_t)n * sizeof *w);
    /* jobz 'S': the first k columns of U and rows of Vᵀ */
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, w, n, s, u ? u : uu, k, vt ? vt : vv, n);
    free(w), free(uu), free(vv);
    if (info != 0) return dl_error_set("SVD of a %d x %d matrix failed (LAPACK dgesdd info %d)", m, n, (int)info);
    return DL_OK;
}

/* a [rows, cols] (rows >= cols or not) = q [rows, kq] r [kq, cols], kq = min(rows, cols). */
static int qr(const double *a, int rows, int cols, double *q, double *r)
{
    const int kq = rows < cols ? rows : cols;
    double *w = malloc((size_t)rows * (size_t)cols * sizeof *w), *tau = malloc((size_t)kq * sizeof *tau);
    if (!w || !tau) {
        free(w), free(tau);
        return dl_error_set("QR of a %d x %d matrix: out of memory", rows, cols);
    }
    memcpy(w, a, (size_t)rows * (size_t)cols * sizeof *w);
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, rows, cols, w, cols, tau);
    if (info == 0) {
        for (int i = 0; i < kq; i++) /* R: the upper triangle of the first kq rows */
            for (int j = 0; j < cols; j++) r[(size_t)i * cols + j] = j >= i ? w[(size_t)i * cols + j] : 0;
        for (int i = 0; i < rows; i++) /* Q from the reflectors in the first kq columns */
            for (int j = 0; j < kq; j++) q[(size_t)i * kq + j] = w[(size_t)i * cols + j];
        info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, rows, kq, kq, q, kq, tau);
    }
    free(w), free(tau);
    if (info != 0) return dl_error_set("QR of a %d x %d matrix failed (LAPACK info %d)", rows, cols, (int)info);
    return DL_OK;
}

int dl_svd_product(const double *up, const double *down, int m, int r, int n, double *u, double *s, double *vt)
{
    const int k1 = m < r ? m : r, k2 = n < r ? n : r, k = k1 < k2 ? k1 : k2;
    double *qu = malloc((size_t)m * k1 * sizeof *qu), *ru = malloc((size_t)k1 * r * sizeof *ru);
    double *dt = malloc((size_t)n * r * sizeof *dt), *qd = malloc((size_t)n * k2 * sizeof *qd);
    double *rd = malloc((size_t)k2 * r * sizeof *rd), *rdt = malloc((size_t)r * k2 * sizeof *rdt);
    double *core = malloc((size_t)k1 * k2 * sizeof *core), *cu = malloc((size_t)k1 * k * sizeof *cu);
    double *cvt = malloc((size_t)k * k2 * sizeof *cvt), *qdt = malloc((size_t)k2 * n * sizeof *qdt);
    int ret = DL_ERR;
    if (!qu || !ru || !dt || !qd || !rd || !rdt || !core || !cu || !cvt || !qdt) {
        dl_error_set("SVD of a rank-%d product (%d x %d): out of memory", r, m, n);
        goto done;
    }
    for (int i = 0; i < r; i++) /* downᵀ [n, r] */
        for (int j = 0; j < n; j++) dt[(size_t)j * r + i] = down[(size_t)i * n + j];
    if (qr(up, m, r, qu, ru) != DL_OK || qr(dt, n, r, qd, rd) != DL_OK) goto done;
    /* up down = qu ru rdᵀ qdᵀ: core = ru [k1, r] @ rdᵀ [r, k2] */
    for (int i = 0; i < k2; i++)
        for (int j = 0; j < r; j++) rdt[(size_t)j * k2 + i] = rd[(size_t)i * r + j];
    dl_matmul_d(ru, rdt, k1, r, k2, core);
    if (dl_svd(core, k1, k2, cu, s, cvt) != DL_OK) goto done;
    if (u) dl_matmul_d(qu, cu, m, k1, k, u);
    if (vt) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < k2; j++) qdt[(size_t)j * n + i] = qd[(size_t)i * k2 + j];
        dl_matmul_d(cvt, qdt, k, k2, n, vt);
    }
    ret = DL_OK;
done:
    free(qu), free(ru), free(dt), free(qd), free(rd), free(rdt), free(core), free(cu), free(cvt), free(qdt);
    return ret;
}
