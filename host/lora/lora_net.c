/* lora_net.c - LoRA network: target selection by module name, one parameter allocation,
 * Kaiming init, attach / merge into the UNet and text encoder. */
#include "lora/lora_net.h"
#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN_FLOATS 16 /* 64 bytes */

int dl_lora_preset_parse(const char *s, dl_lora_preset *out)
{
    if (!s || !*s || !strcmp(s, "default") || !strcmp(s, "transformer")) *out = DL_LORA_PRESET_DEFAULT;
    else if (!strcmp(s, "attn-only")) *out = DL_LORA_PRESET_ATTN_ONLY;
    else if (!strcmp(s, "attn-mlp")) *out = DL_LORA_PRESET_ATTN_MLP;
    else if (!strcmp(s, "full")) *out = DL_LORA_PRESET_FULL;
    else return dl_error_set("unknown LoRA preset \"%s\" (expected default, attn-only, attn-mlp or full)", s);
    return DL_OK;
}

const char *dl_lora_preset_name(dl_lora_preset p)
{
    switch (p) {
    case DL_LORA_PRESET_DEFAULT: return "default";
    case DL_LORA_PRESET_ATTN_ONLY: return "attn-only";
    case DL_LORA_PRESET_ATTN_MLP: return "attn-mlp";
    case DL_LORA_PRESET_FULL: return "full";
    case DL_LORA_PRESET_ALL: return "all";
    }
    return "?";
}

static void kohya_join(const char *prefix, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s", prefix, name);
    for (char *p = out; *p; p++)
        if (*p == '.') *p = '_';
}

void dl_lora_kohya_name(dl_lora_part part, const char *name, char *out, size_t cap)
{
    kohya_join(part == DL_LORA_UNET ? "lora_unet_" : part == DL_LORA_TEXT ? "lora_te_" : "lora_te2_", name, out, cap);
}

int dl_lora_cfg_is_xl(const dl_model_config *cfg) { return cfg->unet.addition_embed != DL_ADD_NONE; }

const char *dl_lora_part_label(dl_lora_part part)
{
    return part == DL_LORA_UNET ? "UNet" : part == DL_LORA_TEXT ? "text encoder" : "text encoder 2";
}

const char *dl_lora_part_prefix(dl_lora_part part)
{
    return part == DL_LORA_UNET ? "unet" : part == DL_LORA_TEXT ? "text_encoder" : "text_encoder_2";
}

int dl_lora_kohya_name_for(const dl_model_config *cfg, dl_lora_part part, const char *name, char *out, size_t cap)
{
    if (!dl_lora_cfg_is_xl(cfg)) {
        dl_lora_kohya_name(part, name, out, cap);
        return DL_OK;
    }
    if (part != DL_LORA_UNET) {
        kohya_join(part == DL_LORA_TEXT ? "lora_te1_" : "lora_te2_", name, out, cap);
        return DL_OK;
    }
    /* sd-scripts trains SDXL on its own SGM-layout UNet: the module path is the single-file key */
    static const char pre[] = "model.diffusion_model.";
    char w[200];
    dl_ckpt_key key;
    snprintf(w, sizeof w, "%s.weight", name);
    DL_TRY(dl_ckpt_map_single(cfg, DL_TEXT_HF, DL_PART_UNET, w, &key));
    const char *k = key.key;
    size_t len = strlen(k);
    if (strncmp(k, pre, sizeof pre - 1) || len < sizeof pre - 1 + 7 || strcmp(k + len - 7, ".weight"))
        return dl_error_set("UNet module %s maps to %s, not a model.diffusion_model.*.weight key", name, k);
    char nm[192];
    snprintf(nm, sizeof nm, "%.*s", (int)(len - 7 - (sizeof pre - 1)), k + sizeof pre - 1);
    kohya_join("lora_unet_", nm, out, cap);
    return DL_OK;
}

double dl_lora_kaiming_bound(int64_t fan_in)
{
    /* torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5)), computed in double as torch does:
     * gain = sqrt(2 / (1 + a^2)), std = gain / sqrt(fan_in), bound = sqrt(3) * std. */
    const double a = sqrt(5.0);
    const double gain = sqrt(2.0 / (1.0 + a * a));
    const double std = gain / sqrt((double)fan_in);
    return sqrt(3.0) * std;
}

/* ------------------------------------------------------------------ target selection */

typedef struct collect {
    const dl_model_config *cfg;
    const dl_lora_spec *spec;
    dl_lora_part part;
    dl_lora_module *mods;
    int n, cap;
    int err;
} collect;

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !memcmp(s + a - b, suf, b);
}

/* Which UNet layers the preset takes; rank/alpha chosen by kind (sd-scripts' rule). */
static int unet_selected(const dl_lora_spec *sp, const char *name, int ndim, int k, int *rank, float *alpha)
{
    const dl_lora_preset p = sp->preset;
    const int all = p == DL_LORA_PRESET_ALL;
    int take;
    if (strstr(name, ".attentions.")) {
        int attn = strstr(name, ".attn1.") || strstr(name, ".attn2.");
        int mlp = strstr(name, ".ff.") != NULL;
        int proj = has_suffix(name, ".proj_in") || has_suffix(name, ".proj_out");
        if (attn) take = 1;
        else if (mlp) take = p != DL_LORA_PRESET_ATTN_ONLY;
        else if (proj) take = p == DL_LORA_PRESET_DEFAULT || p == DL_LORA_PRESET_FULL || all;
        else take = all;
    } else if (strstr(name, ".resnets.") || strstr(name, "samplers.")) {
        take = sp->conv_rank > 0 || p == DL_LORA_PRESET_FULL || all;
    } else {
        take = p == DL_LORA_PRESET_FULL || all; /* conv_in, conv_out, time_embedding.* */
    }
    if (!take) return 0;
    const int kxk = ndim == 4 && k > 1;
    if (kxk && sp->conv_rank <= 0 && !all) return 0;
    if (kxk) { /* sd-scripts: conv_alpha defaults to network_alpha; no alpha at all means alpha = rank */
        *rank = sp->conv_rank;
        *alpha = sp->conv_alpha > 0 ? sp->conv_alpha : sp->alpha > 0 ? sp->alpha : (float)sp->conv_rank;
    } else {
        const float a = sp->alpha > 0 ? sp->alpha : (float)sp->rank;
        *rank = sp->rank;
        *alpha = a;
    }
    return 1;
}

static int text_selected(const dl_lora_spec *sp, const char *name, int *rank, float *alpha)
{
    if (strncmp(name, "text_model.encoder.layers.", 26) != 0) return 0;
    int attn = strstr(name, ".self_attn.") != NULL, mlp = strstr(name, ".mlp.") != NULL;
    if (!attn && !(mlp && sp->preset != DL_LORA_PRESET_ATTN_ONLY)) return 0;
    *rank = sp->rank;
    *alpha = sp->alpha > 0 ? sp->alpha : (float)sp->rank;
    return 1;
}

static int collect_fn(void *user, dl_part part, const char *wname, int ndim, const int64_t *shape)
{
    collect *c = user;
    if ((ndim != 2 && ndim != 4) || !has_suffix(wname, ".weight")) return DL_OK;
    char name[160];
    size_t len = strlen(wname) - 7;
    if (len >= sizeof name) return dl_error_set("module name too long: %s", wname);
    memcpy(name, wname, len);
    name[len] = 0;
    int k = ndim == 4 ? (int)shape[2] : 1, rank = 0;
    float alpha = 0;
    int sel = part == DL_PART_UNET ? unet_selected(c->spec, name, ndim, k, &rank, &alpha)
                                   : text_selected(c->spec, name, &rank, &alpha);
    if (!sel) return DL_OK;
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 256;
        dl_lora_module *m = realloc(c->mods, (size_t)cap * sizeof *m);
        if (!m) return dl_error_set("out of memory listing LoRA targets");
        c->mods = m;
        c->cap = cap;
    }
    dl_lora_module *m = &c->mods[c->n];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->part = part == DL_PART_UNET ? DL_LORA_UNET : part == DL_PART_TEXT ? DL_LORA_TEXT : DL_LORA_TEXT2;
    DL_TRY(dl_lora_kohya_name_for(c->cfg, m->part, name, m->kohya, sizeof m->kohya));
    c->n++;
    m->out = (int)shape[0];
    m->in = (int)shape[1];
    m->k = k;
    int proj = has_suffix(name, ".proj_in") || has_suffix(name, ".proj_out");
    m->is_conv = ndim == 4 && !proj; /* SD1 proj_in/out are 1x1 convs on disk, linears in danlu */
    m->conv1x1_on_disk = ndim == 4 && proj;
    m->alpha = alpha;
    m->lora.r = rank;
    return DL_OK;
}

int dl_lora_targets(const dl_model_config *cfg, const dl_lora_spec *spec, dl_lora_module **out, int *n)
{
    collect c = {.cfg = cfg, .spec = spec};
    *out = NULL;
    *n = 0;
    if (spec->unet && dl_model_weights(cfg, DL_PART_UNET, collect_fn, &c) != DL_OK) goto fail;
    if (spec->text && dl_model_weights(cfg, DL_PART_TEXT, collect_fn, &c) != DL_OK) goto fail;
    if (spec->text && dl_model_weights(cfg, DL_PART_TEXT2, collect_fn, &c) != DL_OK) goto fail; /* SDXL */
    *out = c.mods;
    *n = c.n;
    return DL_OK;
fail:
    free(c.mods);
    return DL_ERR;
}

/* ------------------------------------------------------------------ allocation */

static int64_t round_up(int64_t x) { return (x + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }
static void point_modules(dl_lora_net *net);

static void set_scale(dl_lora_module *m, float multiplier)
{
    m->lora.scale = m->lora.r > 0 ? m->alpha / (float)m->lora.r * multiplier : 0.0f;
}

int dl_lora_net_from_modules(dl_lora_net *net, const dl_lora_module *mods, int n, float multiplier)
{
    memset(net, 0, sizeof *net);
    net->mods = malloc((size_t)(n > 0 ? n : 1) * sizeof *net->mods);
    if (!net->mods) return dl_error_set("out of memory creating a LoRA network");
    net->n = n;
    net->multiplier = multiplier;
    /* UNet modules first so each part's parameters are one contiguous range */
    int j = 0;
    for (int pass = DL_LORA_UNET; pass <= DL_LORA_TEXT2; pass++)
        for (int i = 0; i < n; i++)
            if ((int)mods[i].part == pass) net->mods[j++] = mods[i];
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        dl_lora_module *m = &net->mods[i];
        if (m->part == DL_LORA_UNET) net->n_unet = i + 1;
        if (i == net->n_unet && m->part != DL_LORA_UNET) net->n_params_unet = off;
        DL_ASSERT(m->lora.r > 0 && m->in > 0 && m->out > 0 && m->k > 0);
        m->offset = off;
        off += round_up((int64_t)m->lora.r * m->k * m->k * m->in);
        off += round_up((int64_t)m->out * m->lora.r);
    }
    if (net->n_unet == n) net->n_params_unet = off;
    net->n_params = off;
    size_t bytes = (size_t)(off > 0 ? off : ALIGN_FLOATS) * sizeof(float);
    net->params = aligned_alloc(64, bytes);
    net->grads = aligned_alloc(64, bytes);
    if (!net->params || !net->grads) {
        dl_lora_net_free(net);
        return dl_error_set("out of memory allocating %lld LoRA parameters", (long long)off);
    }
    memset(net->params, 0, bytes);
    memset(net->grads, 0, bytes);
    net->host = net->params;
    point_modules(net);
    for (int i = 0; i < n; i++) {
        net->mods[i].lora.merged = 0;
        set_scale(&net->mods[i], multiplier);
    }
    return DL_OK;
}

void dl_lora_net_free(dl_lora_net *net)
{
    free(net->mods);
    if (net->dev) {
        dl_be_free(net->dev, net->params);
        dl_be_free(net->dev, net->grads);
        free(net->host);
    } else {
        free(net->params);
        free(net->grads);
    }
    memset(net, 0, sizeof *net);
}

static void point_modules(dl_lora_net *net)
{
    for (int i = 0; i < net->n; i++) {
        dl_lora_module *m = &net->mods[i];
        int64_t na = round_up((int64_t)m->lora.r * m->k * m->k * m->in);
        m->lora.A = net->params + m->offset;
        m->lora.B = net->params + m->offset + na;
        m->lora.dA = net->grads + m->offset;
        m->lora.dB = net->grads + m->offset + na;
    }
}

int dl_lora_net_to_backend(const dl_ctx *ctx, dl_lora_net *net)
{
    if (net->dev || !dl_be(ctx)->device_memory) return DL_OK;
    size_t bytes = (size_t)(net->n_params > 0 ? net->n_params : ALIGN_FLOATS) * sizeof(float);
    float *p = dl_be_alloc(ctx, bytes), *g = p ? dl_be_alloc(ctx, bytes) : NULL;
    if (!g || dl_be_upload(ctx, p, net->params, bytes) != DL_OK || dl_be(ctx)->fill(ctx, g, 0, bytes) != DL_OK) {
        dl_be_free(ctx, p);
        dl_be_free(ctx, g);
        return dl_error_prefix("LoRA parameters (%lld) on %s: ", (long long)net->n_params, dl_be(ctx)->name);
    }
    free(net->grads);
    net->host = net->params;
    net->params = p;
    net->grads = g;
    net->dev = ctx;
    point_modules(net);
    return DL_OK;
}

int dl_lora_net_pull(dl_lora_net *net)
{
    if (!net->dev) return DL_OK;
    return dl_be_download(net->dev, net->host, net->params, (size_t)net->n_params * sizeof(float));
}

int dl_lora_net_push(dl_lora_net *net)
{
    if (!net->dev) return DL_OK;
    return dl_be_upload(net->dev, net->params, net->host, (size_t)net->n_params * sizeof(float));
}

float *dl_lora_host_A(const dl_lora_net *net, const dl_lora_module *m) { return net->host + m->offset; }
float *dl_lora_host_B(const dl_lora_net *net, const dl_lora_module *m)
{
    return net->host + m->offset + round_up((int64_t)m->lora.r * m->k * m->k * m->in);
}

void dl_lora_net_zero_grads(dl_lora_net *net)
{
    if (net->dev) dl_be(net->dev)->fill(net->dev, net->grads, 0, (size_t)net->n_params * sizeof(float));
    else if (net->grads) memset(net->grads, 0, (size_t)net->n_params * sizeof(float));
}

void dl_lora_net_init_weights(dl_lora_net *net, uint64_t seed)
{
    for (int i = 0; i < net->n; i++) {
        dl_lora_module *m = &net->mods[i];
        const int r = m->lora.r, k = m->k, in = m->in;
        const int64_t fan_in = (int64_t)in * k * k;
        const float b = (float)dl_lora_kaiming_bound(fan_in), from = -b, width = b - from;
        dl_torch_rng g;
        dl_torch_rng_seed(&g, seed + (uint64_t)i);
        /* torch's uniform_ on fp32: x = (u32 & (2^24-1)) 2^-24, value = x (to - from) + from,
         * in float; drawn in torch's layout [r, in, k, k], stored as danlu's [r, k, k, in] */
        for (int o = 0; o < r; o++)
            for (int c = 0; c < in; c++)
                for (int kh = 0; kh < k; kh++)
                    for (int kw = 0; kw < k; kw++) {
                        float x = (float)(dl_torch_rng_u32(&g) & 0xffffffu) * (1.0f / 16777216.0f);
                        float p = (float)((double)x * (double)width); /* rounded product, no FMA */
                        dl_lora_host_A(net, m)[(((int64_t)o * k + kh) * k + kw) * in + c] = p + from;
                    }
        memset(dl_lora_host_B(net, m), 0, (size_t)m->out * r * sizeof(float));
    }
    DL_ASSERTF(dl_lora_net_push(net) == DL_OK, "%s", dl_error_msg());
}

int dl_lora_net_create(dl_lora_net *net, const dl_model_config *cfg, const dl_lora_spec *spec)
{
    memset(net, 0, sizeof *net);
    if (spec->rank < 1) return dl_error_set("LoRA rank (network_dim) must be >= 1, got %d", spec->rank);
    if (spec->conv_rank < 0) return dl_error_set("conv_dim must be >= 0, got %d", spec->conv_rank);
    if (!isfinite(spec->alpha) || !isfinite(spec->conv_alpha) || !isfinite(spec->multiplier))
        return dl_error_set("LoRA alpha and multiplier must be finite numbers");
    if (spec->preset == DL_LORA_PRESET_ALL) return dl_error_set("the \"all\" LoRA preset is internal");
    if (!spec->unet && !spec->text) return dl_error_set("a LoRA network needs the UNet or the text encoder");
    dl_lora_module *mods;
    int n;
    DL_TRY(dl_lora_targets(cfg, spec, &mods, &n));
    int r = dl_lora_net_from_modules(net, mods, n, spec->multiplier);
    free(mods);
    if (r != DL_OK) return DL_ERR;
    net->xl = dl_lora_cfg_is_xl(cfg);
    dl_lora_net_init_weights(net, spec->seed);
    return DL_OK;
}

void dl_lora_net_set_multiplier(dl_lora_net *net, float multiplier)
{
    net->multiplier = multiplier;
    for (int i = 0; i < net->n; i++) {
        DL_ASSERT(!net->mods[i].lora.merged);
        set_scale(&net->mods[i], multiplier);
    }
}

dl_lora_module *dl_lora_net_find(const dl_lora_net *net, const char *name)
{
    for (int i = 0; i < net->n; i++)
        if (!strcmp(net->mods[i].name, name) || !strcmp(net->mods[i].kohya, name)) return &net->mods[i];
    return NULL;
}

/* ------------------------------------------------------------------ attach / merge */

/* The model layer of module m (exactly one of *lin, *conv set), shapes checked. */
static int resolve(const dl_lora_module *m, const dl_lora_models *md, dl_linear **lin, dl_conv **conv)
{
    *lin = NULL;
    *conv = NULL;
    if (m->part == DL_LORA_UNET) {
        dl_unet *u = md->unet;
        if (!u) return dl_error_set("LoRA module %s is for the UNet, but no UNet was given", m->kohya);
        const dl_unet_module *um = dl_unet_find(u, m->name);
        if (!um) return dl_error_set("LoRA module %s: the UNet has no layer %s", m->kohya, m->name);
        if (um->kind == DL_MODULE_LINEAR) *lin = um->linear;
        else *conv = um->conv;
    } else {
        dl_clip *te = m->part == DL_LORA_TEXT ? md->te : md->te2;
        const char *what = dl_lora_part_label(m->part);
        if (!te) return dl_error_set("LoRA module %s is for the %s, but no %s was given", m->kohya, what, what);
        *lin = dl_clip_find(te, m->name);
        if (!*lin) return dl_error_set("LoRA module %s: the %s has no layer %s", m->kohya, what, m->name);
    }
    if (*lin) {
        if (m->is_conv || m->k != 1 || (*lin)->in != m->in || (*lin)->out != m->out)
            return dl_error_set("LoRA module %s is [out %d, in %d, k %d] but layer %s is a linear [%d, %d]", m->kohya,
                                m->out, m->in, m->k, m->name, (*lin)->out, (*lin)->in);
    } else {
        const dl_conv *c = *conv;
        if (c->cin != m->in || c->cout != m->out || c->k != m->k)
            return dl_error_set("LoRA module %s is [out %d, in %d, k %d] but layer %s is a conv [%d, %d, %d, %d]",
                                m->kohya, m->out, m->in, m->k, m->name, c->cout, c->cin, c->k, c->k);
    }
    return DL_OK;
}

/* Check every module resolves before changing anything. */
static int resolve_all(dl_lora_net *net, const dl_lora_models *md)
{
    dl_linear *lin;
    dl_conv *conv;
    for (int i = 0; i < net->n; i++) DL_TRY(resolve(&net->mods[i], md, &lin, &conv));
    return DL_OK;
}

int dl_lora_net_attach(dl_lora_net *net, dl_unet *u, dl_clip *te)
{
    const dl_lora_models md = {u, te, NULL};
    return dl_lora_net_attach_to(net, &md);
}

int dl_lora_net_attach_to(dl_lora_net *net, const dl_lora_models *mp)
{
    DL_TRY(resolve_all(net, mp));
    for (int i = 0; i < net->n; i++) {
        dl_linear *lin;
        dl_conv *conv;
        DL_ASSERT(resolve(&net->mods[i], mp, &lin, &conv) == DL_OK);
        if (lin) lin->lora = &net->mods[i].lora;
        else conv->lora = &net->mods[i].lora;
    }
    return DL_OK;
}

void dl_lora_net_detach(dl_lora_net *net, dl_unet *u, dl_clip *te)
{
    const dl_lora_models md = {u, te, NULL};
    dl_lora_net_detach_from(net, &md);
}

void dl_lora_net_detach_from(dl_lora_net *net, const dl_lora_models *md)
{
    /* detaching runs in teardown paths: keep the message of the error being reported */
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", dl_error_msg());
    for (int i = 0; i < net->n; i++) {
        dl_linear *lin;
        dl_conv *conv;
        if (resolve(&net->mods[i], md, &lin, &conv) != DL_OK) continue;
        if (lin && lin->lora == &net->mods[i].lora) lin->lora = NULL;
        if (conv && conv->lora == &net->mods[i].lora) conv->lora = NULL;
    }
    if (saved[0]) dl_error_set("%s", saved);
    else dl_error_clear();
}

static void merge_one(const dl_ctx *ctx, dl_lora_module *m, dl_linear *lin, dl_conv *conv, float sign)
{
    float *W = lin ? lin->w : conv->w; // [out, k, k, in], fp32 (dl_lora_net_merge checked)
    const int64_t K = (int64_t)m->k * m->k * m->in;
    if (sign > 0) dl_be(ctx)->lora_merge(ctx, m->out, K, m->lora.r, m->lora.scale, m->lora.A, m->lora.B, W);
    else dl_be(ctx)->lora_unmerge(ctx, m->out, K, m->lora.r, m->lora.scale, m->lora.A, m->lora.B, W);
}

int dl_lora_net_merge_into(const dl_ctx *ctx, dl_lora_net *net, const dl_lora_models *md)
{
    DL_TRY(resolve_all(net, md));
    for (int i = 0; i < net->n; i++) {
        dl_lora_module *m = &net->mods[i];
        if (m->lora.merged || m->lora.scale == 0.0f) continue;
        dl_linear *lin;
        dl_conv *conv;
        DL_ASSERT(resolve(m, md, &lin, &conv) == DL_OK);
        const dl_dtype wdt = lin ? lin->wdt : conv->wdt;
        if (wdt != DL_F32)
            return dl_error_set("cannot merge a LoRA into %s: its weights are kept as %s (merging needs a model "
                                "loaded with fp32 weights)", lin ? lin->name : conv->name, dl_dtype_name(wdt));
        merge_one(ctx, m, lin, conv, 1.0f);
        m->lora.merged = 1;
    }
    return DL_OK;
}

void dl_lora_net_unmerge_from(const dl_ctx *ctx, dl_lora_net *net, const dl_lora_models *md)
{
    for (int i = net->n - 1; i >= 0; i--) {
        dl_lora_module *m = &net->mods[i];
        if (!m->lora.merged) continue;
        dl_linear *lin;
        dl_conv *conv;
        DL_ASSERT(resolve(m, md, &lin, &conv) == DL_OK);
        merge_one(ctx, m, lin, conv, -1.0f);
        m->lora.merged = 0;
    }
}

int dl_lora_net_merge(const dl_ctx *ctx, dl_lora_net *net, dl_unet *u, dl_clip *te)
{
    const dl_lora_models md = {u, te, NULL};
    return dl_lora_net_merge_into(ctx, net, &md);
}

void dl_lora_net_unmerge(const dl_ctx *ctx, dl_lora_net *net, dl_unet *u, dl_clip *te)
{
    const dl_lora_models md = {u, te, NULL};
    dl_lora_net_unmerge_from(ctx, net, &md);
}
