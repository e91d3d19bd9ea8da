/* state.c - training state files (.safetensors + metadata) and the Ctrl-C flag. */
#include "train/state.h"

#include "core/error.h"
#include "io/safetensors.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void entry(dl_st_entry *e, const char *name, dl_dtype dt, int64_t n, const void *data)
{
    memset(e, 0, sizeof *e);
    e->name = name;
    e->dtype = dt;
    e->ndim = 1;
    e->shape[0] = n;
    e->data = data;
}

int dl_train_state_save(const char *path, const dl_train_state *s, const char *const *meta, int n_meta)
{
    int64_t counters[3] = {s->step, s->epoch, s->micro_step};
    int64_t trng_meta[2] = {s->noise_rng.next, s->noise_rng.has_cached_normal};
    double trng_cached = s->noise_rng.cached_normal;
    uint8_t empty = 0;
    dl_st_entry e[9];
    int n = 0;
    entry(&e[n++], "lora.params", DL_F32, s->n_params, s->params);
    entry(&e[n++], "adamw.m", DL_F32, s->n_params, s->m);
    entry(&e[n++], "adamw.v", DL_F32, s->n_params, s->v);
    entry(&e[n++], "state.counters", DL_I64, 3, counters);
    entry(&e[n++], "rng.xoshiro", DL_U64, 4, s->rng.s);
    entry(&e[n++], "rng.torch.mt", DL_U32, 624, s->noise_rng.state);
    entry(&e[n++], "rng.torch.meta", DL_I64, 2, trng_meta);
    entry(&e[n++], "rng.torch.cached", DL_F64, 1, &trng_cached);
    entry(&e[n++], "data.state", DL_U8, s->data_state_len ? (int64_t)s->data_state_len : 1,
          s->data_state_len ? (const void *)s->data_state : &empty);

    char step[32], epoch[32], dlen[32];
    snprintf(step, sizeof step, "%" PRId64, s->step);
    snprintf(epoch, sizeof epoch, "%" PRId64, s->epoch);
    snprintf(dlen, sizeof dlen, "%zu", s->data_state_len);
    int nm = 0;
    const char **m = malloc(sizeof *m * (size_t)(2 * 6 + n_meta * 2));
    if (!m) return dl_error_set("out of memory");
    m[nm++] = "format"; m[nm++] = DL_STATE_FORMAT;
    m[nm++] = "danlu.step"; m[nm++] = step;
    m[nm++] = "danlu.epoch"; m[nm++] = epoch;
    m[nm++] = "danlu.data_state_len"; m[nm++] = dlen;
    m[nm++] = "danlu.signature"; m[nm++] = s->signature ? s->signature : "";
    m[nm++] = "danlu.config"; m[nm++] = s->config_json ? s->config_json : "{}";
    for (int i = 0; i < 2 * n_meta; i++) m[nm++] = meta[i];
    int rc = dl_st_save(path, e, n, m, nm / 2);
    free(m);
    if (rc != DL_OK) return dl_error_prefix("saving training state: ");
    return DL_OK;
}

static const dl_st_tensor *need(const dl_st_file *f, const char *name, dl_dtype dt, int64_t numel)
{
    const dl_st_tensor *t = dl_st_find(f, name);
    if (!t) { dl_error_set("%s: not a complete training state: missing '%s'", f->path, name); return NULL; }
    if (t->dtype != dt || (numel >= 0 && dl_st_numel(t) != numel)) {
        dl_error_set("%s: training state tensor '%s' has the wrong type or size", f->path, name);
        return NULL;
    }
    return t;
}

int dl_train_state_load(const char *path, dl_train_state *s)
{
    memset(s, 0, sizeof *s);
    dl_st_file f;
    DL_TRY(dl_st_open(&f, path));
    const char *fmt = dl_st_meta(&f, "format");
    if (!fmt || strcmp(fmt, DL_STATE_FORMAT) != 0) {
        dl_st_close(&f);
        return dl_error_set("%s: not a danlu training state (format '%s', expected '%s')", path,
                            fmt ? fmt : "missing", DL_STATE_FORMAT);
    }
    const dl_st_tensor *tp = need(&f, "lora.params", DL_F32, -1), *tm, *tv, *tc, *tx, *tmt, *tmm, *tcn, *td;
    if (!tp) goto fail;
    int64_t n = dl_st_numel(tp);
    if (!(tm = need(&f, "adamw.m", DL_F32, n)) || !(tv = need(&f, "adamw.v", DL_F32, n)) ||
        !(tc = need(&f, "state.counters", DL_I64, 3)) || !(tx = need(&f, "rng.xoshiro", DL_U64, 4)) ||
        !(tmt = need(&f, "rng.torch.mt", DL_U32, 624)) || !(tmm = need(&f, "rng.torch.meta", DL_I64, 2)) ||
        !(tcn = need(&f, "rng.torch.cached", DL_F64, 1)) || !(td = need(&f, "data.state", DL_U8, -1)))
        goto fail;
    const char *dlen = dl_st_meta(&f, "danlu.data_state_len");
    size_t data_len = dlen ? (size_t)strtoull(dlen, NULL, 10) : 0;
    if (data_len > (size_t)dl_st_numel(td)) {
        dl_error_set("%s: training state: data state length %zu exceeds its tensor", path, data_len);
        goto fail;
    }
    s->n_params = n;
    s->params = malloc((size_t)n * sizeof(float) + 1);
    s->m = malloc((size_t)n * sizeof(float) + 1);
    s->v = malloc((size_t)n * sizeof(float) + 1);
    s->data_state = malloc(data_len + 1);
    if (!s->params || !s->m || !s->v || !s->data_state) { dl_error_set("out of memory"); goto fail; }
    memcpy(s->params, tp->data, (size_t)n * sizeof(float));
    memcpy(s->m, tm->data, (size_t)n * sizeof(float));
    memcpy(s->v, tv->data, (size_t)n * sizeof(float));
    memcpy(s->data_state, td->data, data_len);
    s->data_state_len = data_len;
    int64_t c[3], mm[2];
    memcpy(c, tc->data, sizeof c);
    memcpy(mm, tmm->data, sizeof mm);
    s->step = c[0];
    s->epoch = c[1];
    s->micro_step = c[2];
    memcpy(s->rng.s, tx->data, sizeof s->rng.s);
    memcpy(s->noise_rng.state, tmt->data, sizeof s->noise_rng.state);
    if (mm[0] < 0 || mm[0] > 624 || s->step < 0 || s->epoch < 0 || s->micro_step < 0) {
        dl_error_set("%s: training state: counters out of range", path);
        goto fail;
    }
    s->noise_rng.next = (int)mm[0];
    s->noise_rng.has_cached_normal = (int)mm[1];
    memcpy(&s->noise_rng.cached_normal, tcn->data, sizeof(double));
    const char *sig = dl_st_meta(&f, "danlu.signature"), *cfg = dl_st_meta(&f, "danlu.config");
    s->signature = strdup(sig ? sig : "");
    s->config_json = strdup(cfg ? cfg : "{}");
    if (!s->signature || !s->config_json) { dl_error_set("out of memory"); goto fail; }
    dl_st_close(&f);
    return DL_OK;
fail:
    dl_st_close(&f);
    dl_train_state_free(s);
    return DL_ERR;
}

void dl_train_state_free(dl_train_state *s)
{
    free(s->params);
    free(s->m);
    free(s->v);
    free(s->data_state);
    free(s->signature);
    free(s->config_json);
    memset(s, 0, sizeof *s);
}

static volatile sig_atomic_t g_interrupted;
static struct sigaction g_old_sigint;
static int g_installed;

static void on_sigint(int sig)
{
    (void)sig;
    if (g_interrupted) signal(SIGINT, SIG_DFL); /* second Ctrl-C: next one kills */
    g_interrupted = 1;
}

void dl_train_signal_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    g_interrupted = 0;
    if (sigaction(SIGINT, &sa, &g_old_sigint) == 0) g_installed = 1;
}

int dl_train_interrupted(void) { return g_interrupted != 0; }

void dl_train_set_interrupted(int v) { g_interrupted = v ? 1 : 0; }

void dl_train_signal_restore(void)
{
    if (g_installed) sigaction(SIGINT, &g_old_sigint, NULL);
    g_installed = 0;
}
