/* lora_tools.h - LoRA resize, LoRA + LoRA merge and extraction from two checkpoints, with
 * sd-scripts' algorithms (networks/resize_lora.py, svd_merge_lora.py, extract_lora_from_models.py)
 * on the SVDs of lora/lora_linalg.h, in double precision.
 *
 * Rank choice (resize_lora.py's rank_resize), S the singular values of the module's full
 * up·down matrix [out, in·kh·kw] (min(out, in·kh·kw) of them, zeros past the old rank):
 *   none           new_rank = the requested rank
 *   sv_ratio X     new_rank = #{S_i > S_0 / X}, clamped to [1, len(S)]
 *   sv_cumulative X  new_rank = 1 + first i with cumsum(S)_i / sum(S) >= X, clamped to [1, len(S)]
 *   sv_fro X       new_rank = 1 + first i with cumsum(S²)_i / sum(S²) >= X², clamped to [1, len(S)]
 * then new_rank = 1 when S_0 <= 1e-6 (a zero module), else min(new_rank, the requested rank);
 * new_alpha = (alpha / old_rank) x new_rank, so the module's scale is unchanged. up = U·diag(S),
 * down = Vᵀ (first new_rank). Retained: sum(S[:k]) / sum(S) and sqrt(sum(S²[:k]) / sum(S²)). */
#ifndef DANLU_LORA_TOOLS_H
#define DANLU_LORA_TOOLS_H

#include "lora/lora_file.h"
#include "model/checkpoint.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DL_DYN_NONE = 0, DL_DYN_SV_RATIO, DL_DYN_SV_FRO, DL_DYN_SV_CUMULATIVE } dl_dyn_method;

/* "none" (or NULL/""), "sv_ratio", "sv_fro", "sv_cumulative". DL_ERR names an unknown method. */
int dl_dyn_parse(const char *s, dl_dyn_method *out);
const char *dl_dyn_name(dl_dyn_method m);

typedef struct dl_rank_pick {
    int new_rank;
    float new_alpha;
    double sum_retained, fro_retained, max_ratio;
} dl_rank_pick;

/* The rank choice above for singular values s [n] (descending), rank cap `rank`, alpha scale
 * `scale` (alpha / old rank). */
void dl_rank_pick_run(const double *s, int n, int rank, dl_dyn_method m, double param, double scale, dl_rank_pick *out);

typedef struct dl_resize_opts {
    int rank;                /* new rank (the cap with a dynamic method), >= 1 */
    int conv_rank;           /* for 4-D modules (convs, and SD1's 1x1 proj_in/out as sd-scripts); 0: rank */
    dl_dyn_method method;
    double param;            /* the dynamic method's parameter (> 0) */
} dl_resize_opts;

/* What resize did to one module. */
typedef struct dl_resize_row {
    char stem[256];
    int old_rank;
    dl_rank_pick pick;
} dl_resize_row;

/* Resize every module of lf in place. rows [lf->n] (may be NULL) receives a row per module.
 * DL_ERR (label names the file) for a rank above what a module's matrix allows (min(out,
 * in·kh·kw)), a bad parameter, or an SVD failure; lf is unchanged on error. */
int dl_lora_resize(dl_lora_file *lf, const dl_resize_opts *o, dl_resize_row *rows, const char *label);

/* Merge LoRAs into one: out gets, per module (union of stems; shapes must agree), the sum of
 * w_i x scale_i x up_i·down_i. rank <= 0, or the sum of the inputs' ranks <= rank (conv_rank for
 * 4-D modules): concatenation (down rows and up columns stacked, alpha = total rank: exact);
 * else SVD to rank (svd_merge_lora.py: up = U·S, down = Vᵀ, both clamped to [-h, h] with h
 * the clamp_quantile quantile of their values together, as sd-scripts; 1 = no clamp; alpha = rank). n_concat / n_svd (may be
 * NULL) count the modules of each kind. All inputs must share a key layout (kohya or PEFT). */
int dl_lora_merge_loras(const dl_lora_file *in, const float *w, int n, int rank, int conv_rank, double clamp_quantile,
                        dl_lora_file *out, int *n_concat, int *n_svd);

typedef struct dl_extract_opts {
    int rank;                /* for linears and 1x1 convs */
    int conv_rank;           /* 0: no 3x3 conv modules (sd-scripts' conv_dim) */
    double clamp_quantile;   /* 0.99 as sd-scripts; 1: no clamp */
    double min_diff;         /* text encoder extracted only when some module changed by more (0.01) */
    double module_threshold; /* a module whose largest change is <= this is left out (0: unchanged ones) */
    int no_text;             /* 1: UNet only */
} dl_extract_opts;

typedef struct dl_extract_stats {
    int n_modules, n_unchanged, text_skipped;
    double worst_rel_err;    /* max over modules of ||ΔW - up·down||_F / ||ΔW||_F */
} dl_extract_stats;

/* The kohya LoRA (sd-scripts' default targets, plus 3x3 convs with conv_rank) that best
 * approximates tuned - base at the given ranks. DL_ERR when the checkpoints' architectures
 * differ, a rank exceeds a module's min(out, in·kh·kw), or nothing changed. */
int dl_lora_extract(dl_checkpoint *base, dl_checkpoint *tuned, const dl_extract_opts *o, dl_lora_file *out,
                    dl_extract_stats *st);

/* torch.quantile(x, q) with linear interpolation (x is sorted in place). */
double dl_quantile(double *x, size_t n, double q);

#ifdef __cplusplus
}
#endif
#endif
