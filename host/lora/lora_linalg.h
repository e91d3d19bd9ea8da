/* lora_linalg.h - the dense linear algebra the LoRA tools need (singular value decompositions
 * of weight differences and of LoRA products), in double precision through LAPACK (LAPACKE's
 * dgesdd and dgeqrf/dorgqr); no hand-written solver. Matrices are row-major. */
#ifndef DANLU_LORA_LINALG_H
#define DANLU_LORA_LINALG_H

#ifdef __cplusplus
extern "C" {
#endif

/* Thin SVD a [m, n] = u [m, k] diag(s [k]) vt [k, n], k = min(m, n), s descending. a is not
 * changed. u and vt may be NULL (singular values only). DL_ERR (message) when LAPACK fails to
 * converge or memory runs out. */
int dl_svd(const double *a, int m, int n, double *u, double *s, double *vt);

/* SVD of the product up [m, r] @ down [r, n] (rank <= r) without forming it: QR of up and of
 * downᵀ, then the SVD of the small k1 x k2 core. k = min(m, r, n) values: u [m, k], s [k],
 * vt [k, n]; the product's other singular values are zero. Same errors as dl_svd. */
int dl_svd_product(const double *up, const double *down, int m, int r, int n, double *u, double *s,
                   double *vt);

/* c [m, n] = a [m, k] @ b [k, n]. */
void dl_matmul_d(const double *a, const double *b, int m, int k, int n, double *c);

#ifdef __cplusplus
}
#endif
#endif
