/* lora_tools.c - resize, LoRA + LoRA merge and extraction (sd-scripts' algorithms, LAPACK SVDs). */
#include "lora/lora_tools.h"
#include "core/error.h"
#include "lora/lora_linalg.h"
#include "lora/lora_net.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MIN_SV 1e-6 /* resize_lora.py: a module whose largest singular value is below this is zero */

int dl_dyn_parse(const char *s, dl_dyn_method *out)
{
    if (!s || !*s || !strcmp(s, "none")) *out = DL_DYN_NONE;
    else if (!strcmp(s, "sv_ratio")) *out = DL_DYN_SV_RATIO;
    else if (!strcmp(s, "sv_fro")) *out = DL_DYN_SV_FRO;
    else if (!strcmp(s, "sv_cumulative")) *out = DL_DYN_SV_CUMULATIVE;
    else return dl_error_set("unknown dynamic method '%s' (one of: sv_ratio, sv_fro, sv_cumulative)", s);
    return DL_OK;
}

const char *dl_dyn_name(dl_dyn_method m)
{
    static const char *const n[] = {"none", "sv_ratio", "sv_fro", "sv_cumulative"};
    return n[m];
}

/* torch.searchsorted(c, v) (side left): the first i with c[i] >= v, or n. */
static int search_left(const double *c, int n, double v)
{
    int i = 0;
    while (i < n && c[i] < v) i++;
    return i;
}

static int clamp_index(int i, int n)
{
    return i < 0 ? 0 : i > n - 1 ? n - 1 : i;
}

void dl_rank_pick_run(const double *s, int n, int rank, dl_dyn_method m, double param, double scale, dl_rank_pick *out)
{
    int nr = rank;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < n; i++) sum += s[i], sum2 += s[i] * s[i];
    if (m == DL_DYN_SV_RATIO) {
        const double min_sv = s[0] / param;
        int cnt = 0;
        for (int i = 0; i < n; i++) cnt += s[i] > min_sv;
        nr = clamp_index(cnt - 1, n) + 1;
    } else if (m == DL_DYN_SV_CUMULATIVE || m == DL_DYN_SV_FRO) {
        double *c = malloc((size_t)n * sizeof *c), acc = 0;
        DL_ASSERT(c);
        const int fro = m == DL_DYN_SV_FRO;
        for (int i = 0; i < n; i++) {
            acc += fro ? s[i] * s[i] : s[i];
            c[i] = acc / (fro ? sum2 : sum);
        }
        nr = clamp_index(search_left(c, n, fro ? param * param : param), n) + 1;
        free(c);
    }
    if (s[0] <= MIN_SV) nr = 1;
    else if (nr > rank) nr = rank;
    double kept = 0, kept2 = 0;
    for (int i = 0; i < nr && i < n; i++) kept += fabs(s[i]), kept2 += s[i] * s[i];
    out->new_rank = nr;
    out->new_alpha = (float)(scale * nr);
    out->sum_retained = sum > 0 ? kept / sum : NAN;
    out->fro_retained = sum2 > 0 ? sqrt(kept2) / sqrt(sum2) : NAN;
    out->max_ratio = nr - 1 < n && s[nr - 1] != 0 ? s[0] / s[nr - 1] : INFINITY;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double dl_quantile(double *x, size_t n, double q)
{
    qsort(x, n, sizeof *x, cmp_d);
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)floor(pos), hi = lo + 1 < n ? lo + 1 : lo;
    return x[lo] + (pos - (double)lo) * (x[hi] - x[lo]);
}

/* Fill module m (r, out, in, kh, kw, four_d set; down / up allocated) from a truncated SVD:
 * up = U[:, :k] S[:k], down = Vt[:k] (k = m->r; rows past kk, the SVD's length, are zero), then
 * the sd-scripts clamp to the quantile q of the values (q >= 1: none). */
static int fill_from_svd(dl_lf_module *m, const double *u, const double *s, const double *vt, int kk, double q)
{
    const int k = m->r, cols = m->in * m->kh * m->kw;
    const size_t nu = (size_t)m->out * k, nd = (size_t)k * cols;
    double *uu = calloc(nu + nd, sizeof *uu);
    if (!uu) return dl_error_set("out of memory");
    double *vv = uu + nu;
    for (int o = 0; o < m->out; o++)
        for (int j = 0; j < k && j < kk; j++) uu[(size_t)o * k + j] = u[(size_t)o * kk + j] * s[j];
    for (int j = 0; j < k && j < kk; j++) memcpy(vv + (size_t)j * cols, vt + (size_t)j * cols, (size_t)cols * sizeof *vv);
    double hi = INFINITY;
    if (q < 1) {
        double *all = malloc((nu + nd) * sizeof *all);
        if (!all) {
            free(uu);
            return dl_error_set("out of memory");
        }
        memcpy(all, uu, (nu + nd) * sizeof *all);
        hi = dl_quantile(all, nu + nd, q);
        free(all);
    }
    for (size_t i = 0; i < nu; i++) m->up[i] = (float)fmin(fmax(uu[i], -hi), hi);
    for (size_t i = 0; i < nd; i++) m->down[i] = (float)fmin(fmax(vv[i], -hi), hi);
    free(uu);
    return DL_OK;
}

int dl_lora_resize(dl_lora_file *lf, const dl_resize_opts *o, dl_resize_row *rows, const char *label)
{
    if (o->rank < 1) return dl_error_set("%s: --rank must be at least 1", label);
    if (o->method != DL_DYN_NONE && !(o->param > 0))
        return dl_error_set("%s: --dynamic %s needs --dynamic-param > 0", label, dl_dyn_name(o->method));
    const int conv_rank = o->conv_rank > 0 ? o->conv_rank : o->rank;
    for (int i = 0; i < lf->n; i++) { /* check everything before changing anything */
        const dl_lf_module *m = &lf->m[i];
        const int cap = m->four_d ? conv_rank : o->rank, cols = m->in * m->kh * m->kw;
        const int lim = m->out < cols ? m->out : cols;
        if (o->method == DL_DYN_NONE && cap > lim)
            return dl_error_set("%s: rank %d is larger than module %s allows (its matrix is %d x %d: at most %d)", label,
                                cap, m->stem, m->out, cols, lim);
    }
    dl_lora_file nw = {0};
    nw.peft = lf->peft;
    nw.dtype = lf->dtype;
    int ret = DL_ERR;
    for (int i = 0; i < lf->n; i++) {
        const dl_lf_module *m = &lf->m[i];
        const int cols = m->in * m->kh * m->kw, r = m->r;
        const int lim = m->out < cols ? m->out : cols;
        const int k = r < lim ? r : lim;
        double *up = malloc((size_t)m->out * r * sizeof *up), *dn = malloc((size_t)r * cols * sizeof *dn);
        double *u = malloc((size_t)m->out * k * sizeof *u), *vt = malloc((size_t)k * cols * sizeof *vt);
        double *s = calloc((size_t)lim, sizeof *s);
        int ok = up && dn && u && vt && s;
        if (ok) {
            for (size_t j = 0; j < (size_t)m->out * r; j++) up[j] = m->up[j];
            for (size_t j = 0; j < (size_t)r * cols; j++) dn[j] = m->down[j];
            ok = dl_svd_product(up, dn, m->out, r, cols, u, s, vt) == DL_OK;
            if (!ok) dl_error_prefix("%s: module %s: ", label, m->stem);
        } else {
            dl_error_set("%s: out of memory", label);
        }
        dl_rank_pick p;
        if (ok) { /* s holds k values, zeros past them: the full product's min(out, cols) values */
            dl_rank_pick_run(s, lim, m->four_d ? conv_rank : o->rank, o->method, o->param, m->alpha / (double)r, &p);
            dl_lf_module nm = *m;
            nm.r = p.new_rank;
            nm.alpha = p.new_alpha;
            nm.down = nm.up = NULL;
            ok = dl_lf_add(&nw, &nm) == DL_OK && fill_from_svd(&nw.m[nw.n - 1], u, s, vt, k, 1.0) == DL_OK;
            if (ok && rows) {
                snprintf(rows[i].stem, sizeof rows[i].stem, "%s", m->stem);
                rows[i].old_rank = r;
                rows[i].pick = p;
            }
        }
        free(up), free(dn), free(u), free(vt), free(s);
        if (!ok) goto done;
    }
    /* swap in the new modules, keep the metadata */
    for (int i = 0; i < lf->n; i++) free(lf->m[i].down), free(lf->m[i].up);
    free(lf->m);
    lf->m = nw.m;
    lf->n = nw.n;
    lf->cap = nw.cap;
    nw.m = NULL;
    nw.n = 0;
    ret = DL_OK;
done:
    dl_lf_free(&nw);
    return ret;
}

int dl_lora_merge_loras(const dl_lora_file *in, const float *w, int n, int rank, int conv_rank, double q,
                        dl_lora_file *out, int *n_concat, int *n_svd)
{
    memset(out, 0, sizeof *out);
    if (n_concat) *n_concat = 0;
    if (n_svd) *n_svd = 0;
    for (int i = 1; i < n; i++)
        if (in[i].peft != in[0].peft)
            return dl_error_set("the LoRAs mix kohya and PEFT key layouts; convert one first (danlu convert)");
    out->peft = in[0].peft;
    out->dtype = in[0].dtype;
    if (conv_rank <= 0) conv_rank = rank;
    int ret = DL_ERR;
    for (int f = 0; f < n; f++)
        for (int i = 0; i < in[f].n; i++) {
            const dl_lf_module *m0 = &in[f].m[i];
            if (dl_lf_find(out, m0->stem)) continue;
            /* every file's copy of this module */
            int total = 0;
            for (int g = f; g < n; g++) {
                const dl_lf_module *m = dl_lf_find(&in[g], m0->stem);
                if (!m) continue;
                if (m->out != m0->out || m->in != m0->in || m->kh != m0->kh || m->kw != m0->kw) {
                    dl_error_set("module %s has different shapes in the LoRAs being merged ([%d, %d, %d, %d] and "
                                 "[%d, %d, %d, %d]): LoRAs for different models?",
                                 m0->stem, m0->out, m0->in, m0->kh, m0->kw, m->out, m->in, m->kh, m->kw);
                    goto done;
                }
                total += m->r;
            }
            const int cols = m0->in * m0->kh * m0->kw, cap = m0->four_d ? conv_rank : rank;
            const int lim = m0->out < cols ? m0->out : cols;
            /* concatenated factors: up_cat [out, total] (w x scale folded in), down_cat [total, cols] */
            double *uc = malloc((size_t)m0->out * total * sizeof *uc), *dc = malloc((size_t)total * cols * sizeof *dc);
            if (!uc || !dc) {
                free(uc), free(dc);
                dl_error_set("out of memory merging LoRAs");
                goto done;
            }
            int off = 0;
            for (int g = f; g < n; g++) {
                const dl_lf_module *m = dl_lf_find(&in[g], m0->stem);
                if (!m) continue;
                const double sc = (double)w[g] * m->alpha / m->r;
                for (int o = 0; o < m->out; o++)
                    for (int j = 0; j < m->r; j++) uc[(size_t)o * total + off + j] = sc * m->up[(size_t)o * m->r + j];
                for (size_t j = 0; j < (size_t)m->r * cols; j++) dc[(size_t)off * cols + j] = m->down[j];
                off += m->r;
            }
            dl_lf_module nm = *m0;
            nm.down = nm.up = NULL;
            int ok;
            if (rank <= 0 || total <= cap) {
                nm.r = total;
                nm.alpha = (float)total;
                ok = dl_lf_add(out, &nm) == DL_OK;
                if (ok) {
                    dl_lf_module *d = &out->m[out->n - 1];
                    for (size_t j = 0; j < (size_t)m0->out * total; j++) d->up[j] = (float)uc[j];
                    for (size_t j = 0; j < (size_t)total * cols; j++) d->down[j] = (float)dc[j];
                    if (n_concat) (*n_concat)++;
                }
            } else if (cap > lim) {
                ok = dl_error_set("rank %d is larger than module %s allows (its matrix is %d x %d: at most %d)", cap,
                                  m0->stem, m0->out, cols, lim);
            } else {
                const int k = total < lim ? total : lim;
                double *u = malloc((size_t)m0->out * k * sizeof *u), *vt = malloc((size_t)k * cols * sizeof *vt);
                double *s = malloc((size_t)k * sizeof *s);
                ok = u && vt && s && dl_svd_product(uc, dc, m0->out, total, cols, u, s, vt) == DL_OK;
                if (ok) {
                    nm.r = cap;
                    nm.alpha = (float)cap;
                    ok = dl_lf_add(out, &nm) == DL_OK && fill_from_svd(&out->m[out->n - 1], u, s, vt, k, q) == DL_OK;
                    if (ok && n_svd) (*n_svd)++;
                } else if (!(u && vt && s)) {
                    dl_error_set("out of memory merging LoRAs");
                }
                free(u), free(vt), free(s);
            }
            free(uc), free(dc);
            if (!ok) goto done;
        }
    ret = DL_OK;
done:
    if (ret != DL_OK) dl_lf_free(out);
    return ret;
}

/* max |x| */
static double max_abs(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* tuned - base of one weight, [out, cols] in PyTorch's layout; *nd and shape from base. */
static int weight_diff(dl_checkpoint *a, dl_checkpoint *b, dl_part part, const char *name, double **diff, int *rows,
                       int *cols, int *nd)
{
    int64_t shape[DL_MAX_DIMS];
    DL_TRY(dl_ckpt_shape(a, part, name, nd, shape));
    int64_t numel = 1;
    for (int d = 0; d < *nd; d++) numel *= shape[d];
    float *x = malloc((size_t)numel * sizeof *x), *y = malloc((size_t)numel * sizeof *y);
    *diff = malloc((size_t)numel * sizeof **diff);
    if (!x || !y || !*diff) {
        free(x), free(y), free(*diff);
        return dl_error_set("out of memory extracting %s", name);
    }
    if (dl_ckpt_load(a, part, name, *nd, shape, x) != DL_OK || dl_ckpt_load(b, part, name, *nd, shape, y) != DL_OK) {
        free(x), free(y), free(*diff);
        *diff = NULL;
        return DL_ERR;
    }
    for (int64_t i = 0; i < numel; i++) (*diff)[i] = (double)y[i] - (double)x[i];
    free(x), free(y);
    *rows = (int)shape[0];
    *cols = (int)(numel / shape[0]);
    return DL_OK;
}

static dl_part part_of(dl_lora_part p)
{
    return p == DL_LORA_UNET ? DL_PART_UNET : p == DL_LORA_TEXT ? DL_PART_TEXT : DL_PART_TEXT2;
}

int dl_lora_extract(dl_checkpoint *base, dl_checkpoint *tuned, const dl_extract_opts *o, dl_lora_file *out,
                    dl_extract_stats *st)
{
    memset(out, 0, sizeof *out);
    memset(st, 0, sizeof *st);
    out->dtype = DL_F32;
    const char *d = dl_unet_config_diff(&base->cfg.unet, &tuned->cfg.unet);
    if (!d && !o->no_text) d = dl_clip_config_diff(&base->cfg.text, &tuned->cfg.text);
    if (!d && !o->no_text && (base->cfg.text2.num_layers || tuned->cfg.text2.num_layers))
        d = dl_clip_config_diff(&base->cfg.text2, &tuned->cfg.text2); /* SDXL's second text encoder */
    if (d)
        return dl_error_set("%s and %s are different architectures (%s differs): a LoRA is extracted between a model "
                            "and its fine-tune",
                            base->path, tuned->path, d);
    if (o->rank < 1) return dl_error_set("--rank must be at least 1");
    dl_lora_spec spec = {.preset = DL_LORA_PRESET_DEFAULT, .rank = o->rank, .alpha = (float)o->rank,
                         .conv_rank = o->conv_rank, .conv_alpha = (float)o->conv_rank, .unet = 1, .text = !o->no_text};
    dl_lora_module *t = NULL;
    int nt = 0;
    DL_TRY(dl_lora_targets(&base->cfg, &spec, &t, &nt));
    int ret = DL_ERR;
    /* sd-scripts: the text encoder(s) only when some module of them changed by more than min_diff
     * (SDXL: both encoders together) */
    int text_changed = 0;
    for (int i = 0; i < nt && !o->no_text; i++) {
        if (t[i].part == DL_LORA_UNET) continue;
        char w[200];
        snprintf(w, sizeof w, "%s.weight", t[i].name);
        double *df;
        int rows, cols, nd;
        if (weight_diff(base, tuned, part_of(t[i].part), w, &df, &rows, &cols, &nd) != DL_OK) goto done;
        if (max_abs(df, (size_t)rows * cols) > o->min_diff) text_changed = 1;
        free(df);
        if (text_changed) break;
    }
    st->text_skipped = !o->no_text && !text_changed;
    for (int i = 0; i < nt; i++) {
        const dl_lora_module *m = &t[i];
        if (m->part != DL_LORA_UNET && !text_changed) continue;
        char w[200];
        snprintf(w, sizeof w, "%s.weight", m->name);
        double *df = NULL, *u = NULL, *s = NULL, *vt = NULL;
        int rows, cols, nd;
        if (weight_diff(base, tuned, part_of(m->part), w, &df, &rows, &cols, &nd) != DL_OK) goto done;
        const int rank = m->k == 1 ? o->rank : o->conv_rank, lim = rows < cols ? rows : cols;
        const double mx = max_abs(df, (size_t)rows * cols);
        if (mx <= o->module_threshold) {
            st->n_unchanged++;
            free(df);
            continue;
        }
        if (rank > lim) {
            free(df);
            dl_error_set("rank %d is larger than module %s allows (its matrix is %d x %d: at most %d)", rank, m->kohya,
                         rows, cols, lim);
            goto done;
        }
        u = malloc((size_t)rows * lim * sizeof *u);
        s = malloc((size_t)lim * sizeof *s);
        vt = malloc((size_t)lim * cols * sizeof *vt);
        int ok = u && s && vt;
        if (!ok) dl_error_set("out of memory extracting %s", m->kohya);
        else ok = dl_svd(df, rows, cols, u, s, vt) == DL_OK;
        if (ok) {
            dl_lf_module nm = {0};
            snprintf(nm.stem, sizeof nm.stem, "%s", m->kohya);
            nm.r = rank;
            nm.alpha = (float)rank;
            nm.out = rows;
            nm.in = m->in;
            nm.kh = nm.kw = m->k;
            nm.four_d = nd == 4;
            ok = dl_lf_add(out, &nm) == DL_OK && fill_from_svd(&out->m[out->n - 1], u, s, vt, lim, o->clamp_quantile) == DL_OK;
        }
        if (ok) { /* how well the stored (clamped, fp32) factors approximate the difference */
            const dl_lf_module *q = &out->m[out->n - 1];
            double e2 = 0, n2 = 0;
            for (int r0 = 0; r0 < rows; r0++)
                for (int c = 0; c < cols; c++) {
                    double acc = 0;
                    for (int j = 0; j < rank; j++) acc += (double)q->up[(size_t)r0 * rank + j] * q->down[(size_t)j * cols + c];
                    double x = df[(size_t)r0 * cols + c];
                    e2 += (x - acc) * (x - acc);
                    n2 += x * x;
                }
            double rel = n2 > 0 ? sqrt(e2 / n2) : 0;
            if (rel > st->worst_rel_err) st->worst_rel_err = rel;
            st->n_modules++;
        }
        free(df), free(u), free(s), free(vt);
        if (!ok) goto done;
    }
    if (out->n == 0) {
        dl_error_set("%s and %s: no targeted module differs (by more than %g): nothing to extract", base->path,
                     tuned->path, o->module_threshold);
        goto done;
    }
    ret = DL_OK;
done:
    free(t);
    if (ret != DL_OK) dl_lf_free(out);
    return ret;
}
