/* embedding.c - sinusoidal timestep embedding (CPU reference). */
#include "embedding.h"

#include "core/error.h"

#include <math.h>

typedef struct {
    int64_t dim, half;
    int flip;
    float shift, scale, neg_log_period;
    const float *t;
    float *out;
} emb_job;

static void emb_rows(void *arg, int64_t n0, int64_t n1, int tid)
{
    const emb_job *j = arg;
    const int64_t half = j->half;
    const float denom = (float)half - j->shift;
    for (int64_t n = n0; n < n1; n++) {
        float *o = j->out + n * j->dim; // [dim]
        float *os = j->flip ? o + half : o, *oc = j->flip ? o : o + half;
        for (int64_t i = 0; i < half; i++) {
            /* the same fp32 roundings as torch: exponent, division, exp, product, scale */
            float e = j->neg_log_period * (float)i;
            e = e / denom;
            float freq = (float)exp((double)e);
            float a = j->t[n] * freq;
            a = j->scale * a;
            os[i] = (float)sin((double)a);
            oc[i] = (float)cos((double)a);
        }
        if (j->dim % 2) o[j->dim - 1] = 0.0f;
    }
}

void dl_cpu_timestep_embedding(const dl_ctx *ctx, int64_t N, int64_t dim, const float *t,
                               int flip_sin_to_cos, float downscale_freq_shift, float scale,
                               float max_period, float *out)
{
    DL_ASSERT(N >= 0 && dim > 0 && max_period > 0);
    DL_ASSERT(N == 0 || (t && out));
    DL_ASSERTF(dim / 2 == 0 || (float)(dim / 2) - downscale_freq_shift != 0.0f,
               "half dim %lld equals downscale_freq_shift", (long long)(dim / 2));
    emb_job j = {dim, dim / 2, flip_sin_to_cos, downscale_freq_shift, scale,
                 (float)(-log((double)max_period)), t, out};
    dl_parallel_for(ctx ? ctx->pool : NULL, N, (1024 + dim - 1) / dim, emb_rows, &j);
}

typedef struct {
    int64_t T, C, V;
    const int32_t *ids;
    const float *tok, *pos;
    float *out;
} embed_job;

static void embed_rows(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const embed_job *j = arg;
    for (int64_t row = begin; row < end; row++) {
        const int64_t id = j->ids[row], t = row % j->T;
        DL_ASSERTF(id >= 0 && id < j->V, "token id %lld outside the vocabulary of %lld", (long long)id,
                   (long long)j->V);
        const float *te = j->tok + id * j->C, *pe = j->pos + t * j->C;
        float *o = j->out + row * j->C;
        for (int64_t i = 0; i < j->C; i++) o[i] = te[i] + pe[i];
    }
}

void dl_cpu_embed_tokens(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V,
                         const int32_t *ids, const float *tok, const float *pos, float *out)
{
    embed_job j = {T, C, V, ids, tok, pos, out};
    dl_parallel_for(ctx ? ctx->pool : NULL, N * T, 16, embed_rows, &j);
}

typedef struct embed_bwd_job {
    int64_t rows, T, C, V;
    const int32_t *ids;
    const float *dout;
    float *dtok, *dpos;
} embed_bwd_job;

/* channels [begin, end): every row in order (each element's sum in row order) */
static void embed_bwd_cols(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const embed_bwd_job *j = arg;
    for (int64_t row = 0; row < j->rows; row++) {
        const int64_t id = j->ids[row], t = row % j->T;
        DL_ASSERTF(id >= 0 && id < j->V, "token id %lld outside the vocabulary of %lld", (long long)id,
                   (long long)j->V);
        const float *d = j->dout + row * j->C;
        if (j->dtok)
            for (int64_t c = begin; c < end; c++) j->dtok[id * j->C + c] += d[c];
        if (j->dpos)
            for (int64_t c = begin; c < end; c++) j->dpos[t * j->C + c] += d[c];
    }
}

void dl_cpu_embed_tokens_backward(const dl_ctx *ctx, int64_t N, int64_t T, int64_t C, int64_t V,
                                  const int32_t *ids, const float *dout, float *dtok, float *dpos)
{
    DL_ASSERT(N >= 0 && T >= 0 && C > 0 && V > 0 && (N * T == 0 || (ids && dout)));
    embed_bwd_job j = {N * T, T, C, V, ids, dout, dtok, dpos};
    if (N * T == 0 || (!dtok && !dpos)) return;
    dl_parallel_for(ctx ? ctx->pool : NULL, C, 64, embed_bwd_cols, &j);
}
