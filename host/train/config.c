/* config.c - the `danlu train` configuration: a table of sd-scripts keys with types, defaults
 * and ranges, applied from JSON (cJSON) and from command-line flags, checked and serialised. */
#include "train/config.h"
#include "backend/backend.h"

#include "core/error.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { K_STR, K_INT, K_I64, K_DBL, K_BOOL, K_LIST } key_kind;

typedef struct key_def {
    const char *name;
    key_kind kind;
    size_t off;
    const char *def;       /* text default; NULL: unset (NULL string, NaN double, 0 int) */
    double lo, hi;         /* numeric range (inclusive) */
    int optional;          /* numbers that may be unset (null in JSON) */
} key_def;

#define OFF(f) offsetof(dl_train_config, f)
#define BIG 1e300

static const key_def k_keys[] = {
    {"pretrained_model_name_or_path", K_STR, OFF(pretrained_model_name_or_path), NULL, 0, 0, 0},
    {"train_data_dir", K_STR, OFF(train_data_dir), NULL, 0, 0, 0},
    {"output_dir", K_STR, OFF(output_dir), NULL, 0, 0, 0},
    {"output_name", K_STR, OFF(output_name), "last", 0, 0, 0},
    {"resolution", K_STR, OFF(resolution), "512", 0, 0, 0},
    {"v_parameterization", K_BOOL, OFF(v_parameterization), "false", 0, 1, 0},
    {"clip_skip", K_INT, OFF(clip_skip), "1", 1, 12, 0},
    {"network_module", K_STR, OFF(network_module), "networks.lora", 0, 0, 0},
    {"network_dim", K_INT, OFF(network_dim), "4", 1, 4096, 0},
    {"network_alpha", K_DBL, OFF(network_alpha), "1", 0, 1e6, 0}, /* 0: alpha = rank (sd-scripts) */
    {"network_args", K_LIST, OFF(network_args), NULL, 0, 0, 0},
    {"network_train_unet_only", K_BOOL, OFF(network_train_unet_only), "false", 0, 1, 0},
    {"network_train_text_encoder_only", K_BOOL, OFF(network_train_text_encoder_only), "false", 0, 1, 0},
    {"network_weights", K_STR, OFF(network_weights), NULL, 0, 0, 0},
    {"lora_format", K_STR, OFF(lora_format), "kohya", 0, 0, 0},
    {"train_batch_size", K_INT, OFF(train_batch_size), "1", 1, 4096, 0},
    {"max_train_steps", K_INT, OFF(max_train_steps), "1600", 1, 1e9, 0},
    {"max_train_epochs", K_INT, OFF(max_train_epochs), NULL, 1, 1e7, 1},
    {"learning_rate", K_DBL, OFF(learning_rate), "2e-6", 0, 10, 0},
    {"unet_lr", K_DBL, OFF(unet_lr), NULL, 0, 10, 1},
    {"text_encoder_lr", K_DBL, OFF(text_encoder_lr), NULL, 0, 10, 1},
    {"lr_scheduler", K_STR, OFF(lr_scheduler), "constant", 0, 0, 0},
    {"lr_warmup_steps", K_INT, OFF(lr_warmup_steps), "0", 0, 1e9, 0},
    {"lr_scheduler_num_cycles", K_INT, OFF(lr_scheduler_num_cycles), "1", 1, 1e6, 0},
    {"lr_scheduler_power", K_DBL, OFF(lr_scheduler_power), "1", 1e-12, 1e3, 0},
    {"optimizer_type", K_STR, OFF(optimizer_type), "AdamW", 0, 0, 0},
    {"optimizer_args", K_LIST, OFF(optimizer_args), NULL, 0, 0, 0},
    {"max_grad_norm", K_DBL, OFF(max_grad_norm), "1.0", 0, 1e9, 0},
    {"gradient_accumulation_steps", K_INT, OFF(gradient_accumulation_steps), "1", 1, 1e6, 0},
    {"gradient_checkpointing", K_BOOL, OFF(gradient_checkpointing), "false", 0, 1, 0},
    {"mixed_precision", K_STR, OFF(mixed_precision), "no", 0, 0, 0},
    {"seed", K_I64, OFF(seed), "-1", -1, 9007199254740992.0, 0},
    {"noise_offset", K_DBL, OFF(noise_offset), NULL, 0, 1, 1},
    {"min_snr_gamma", K_DBL, OFF(min_snr_gamma), NULL, 1e-12, 1e6, 1},
    {"save_every_n_steps", K_INT, OFF(save_every_n_steps), NULL, 1, 1e9, 1},
    {"save_every_n_epochs", K_INT, OFF(save_every_n_epochs), NULL, 1, 1e9, 1},
    {"save_last_n_steps", K_INT, OFF(save_last_n_steps), NULL, 1, 1e9, 1},
    {"save_last_n_epochs", K_INT, OFF(save_last_n_epochs), NULL, 1, 1e9, 1},
    {"save_precision", K_STR, OFF(save_precision), "float", 0, 0, 0},
    {"save_state", K_BOOL, OFF(save_state), "false", 0, 1, 0},
    {"resume", K_STR, OFF(resume), NULL, 0, 0, 0},
    {"sample_every_n_steps", K_INT, OFF(sample_every_n_steps), NULL, 1, 1e9, 1},
    {"sample_every_n_epochs", K_INT, OFF(sample_every_n_epochs), NULL, 1, 1e9, 1},
    {"sample_prompts", K_STR, OFF(sample_prompts), NULL, 0, 0, 0},
    {"sample_sampler", K_STR, OFF(sample_sampler), "ddim", 0, 0, 0},
    {"training_comment", K_STR, OFF(training_comment), NULL, 0, 0, 0},
    {"keep_tokens", K_INT, OFF(keep_tokens), "0", 0, 1e6, 0},
    {"shuffle_caption", K_BOOL, OFF(shuffle_caption), "false", 0, 1, 0},
    {"caption_extension", K_STR, OFF(caption_extension), ".txt", 0, 0, 0},
    {"caption_dropout_rate", K_DBL, OFF(caption_dropout_rate), "0", 0, 1, 0},
    {"caption_dropout_every_n_epochs", K_INT, OFF(caption_dropout_every_n_epochs), "0", 0, 1e9, 0},
    {"caption_tag_dropout_rate", K_DBL, OFF(caption_tag_dropout_rate), "0", 0, 1, 0},
    {"cache_latents", K_BOOL, OFF(cache_latents), "false", 0, 1, 0},
    {"cache_latents_to_disk", K_BOOL, OFF(cache_latents_to_disk), "false", 0, 1, 0},
    {"enable_bucket", K_BOOL, OFF(enable_bucket), "false", 0, 1, 0},
    {"min_bucket_reso", K_INT, OFF(min_bucket_reso), "256", 64, 8192, 0},
    {"max_bucket_reso", K_INT, OFF(max_bucket_reso), "1024", 64, 8192, 0},
    {"bucket_reso_steps", K_INT, OFF(bucket_reso_steps), "64", 8, 1024, 0},
    {"bucket_no_upscale", K_BOOL, OFF(bucket_no_upscale), "false", 0, 1, 0},
    {"flip_aug", K_BOOL, OFF(flip_aug), "false", 0, 1, 0},
    {"random_crop", K_BOOL, OFF(random_crop), "false", 0, 1, 0},
    {"threads", K_INT, OFF(threads), "0", 0, 4096, 0},
    {"backend", K_STR, OFF(backend), "cpu", 0, 0, 0},
    {"tokenizer", K_STR, OFF(tokenizer), NULL, 0, 0, 0},
};
#define N_KEYS ((int)(sizeof k_keys / sizeof *k_keys))

/* sd-scripts flags that change nothing here: accepted with a warning so users can bring their
 * commands. */
static const char *const k_ignored[] = {
    "xformers", "sdpa", "mem_eff_attn", "max_data_loader_n_workers", "persistent_data_loader_workers",
    "logging_dir", "log_prefix", "log_with", "save_model_as", "max_token_length", "lowram",
    "highvram", "full_fp16", "full_bf16", "no_half_vae", "output_config",
};

static const key_def *find_key(const char *name)
{
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(k_keys[i].name, name) == 0) return &k_keys[i];
    return NULL;
}

static int is_ignored(const char *name)
{
    for (size_t i = 0; i < sizeof k_ignored / sizeof *k_ignored; i++)
        if (strcmp(k_ignored[i], name) == 0) return 1;
    return 0;
}

static void list_clear(dl_strlist *l)
{
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int list_push(dl_strlist *l, const char *s)
{
    char **v = realloc(l->v, (size_t)(l->n + 1) * sizeof *v);
    if (!v) return dl_error_set("out of memory");
    l->v = v;
    l->v[l->n] = strdup(s);
    if (!l->v[l->n]) return dl_error_set("out of memory");
    l->n++;
    return DL_OK;
}

static int parse_bool(const char *s, int *out)
{
    if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) { *out = 1; return DL_OK; }
    if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) { *out = 0; return DL_OK; }
    return DL_ERR;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    while (isspace((unsigned char)*s)) s++;
    if (!*s) return DL_ERR;
    double v = strtod(s, &end);
    while (isspace((unsigned char)*end)) end++;
    if (*end || errno == ERANGE || !isfinite(v)) return DL_ERR;
    *out = v;
    return DL_OK;
}

static int is_unset_text(const char *s)
{
    return !strcasecmp(s, "none") || !strcasecmp(s, "null");
}

/* Store a numeric value after range and integrality checks. */
static int set_number(dl_train_config *c, const key_def *k, double v, const char *where)
{
    char *base = (char *)c;
    if (k->kind == K_INT || k->kind == K_I64) {
        if (v != floor(v))
            return dl_error_set("%s%s: must be an integer, got %g", where, k->name, v);
    }
    if (v < k->lo || v > k->hi) {
        if (k->hi >= 1e18)
            return dl_error_set("%s%s: out of range: %g (must be >= %g)", where, k->name, v, k->lo);
        return dl_error_set("%s%s: out of range: %g (must be in [%g, %g])", where, k->name, v, k->lo, k->hi);
    }
    switch (k->kind) {
    case K_INT: *(int *)(base + k->off) = (int)v; break;
    case K_I64: *(long long *)(base + k->off) = (long long)v; break;
    case K_DBL: *(double *)(base + k->off) = v; break;
    default: break;
    }
    return DL_OK;
}

static void set_unset(dl_train_config *c, const key_def *k)
{
    char *base = (char *)c;
    switch (k->kind) {
    case K_STR: free(*(char **)(base + k->off)); *(char **)(base + k->off) = NULL; break;
    case K_INT: *(int *)(base + k->off) = 0; break;
    case K_I64: *(long long *)(base + k->off) = -1; break;
    case K_DBL: *(double *)(base + k->off) = NAN; break;
    case K_BOOL: *(int *)(base + k->off) = 0; break;
    case K_LIST: list_clear((dl_strlist *)(base + k->off)); break;
    }
}

/* Set from text; where = "FILE: " or "" for messages. */
static int set_text(dl_train_config *c, const key_def *k, const char *value, const char *where)
{
    char *base = (char *)c;
    switch (k->kind) {
    case K_STR: {
        char *s = strdup(value);
        if (!s) return dl_error_set("out of memory");
        free(*(char **)(base + k->off));
        *(char **)(base + k->off) = s;
        return DL_OK;
    }
    case K_BOOL: {
        int b;
        if (parse_bool(value, &b) != DL_OK)
            return dl_error_set("%s%s: expected true or false, got '%s'", where, k->name, value);
        *(int *)(base + k->off) = b;
        return DL_OK;
    }
    case K_LIST: return list_push((dl_strlist *)(base + k->off), value);
    default: {
        if (k->optional && is_unset_text(value)) { set_unset(c, k); return DL_OK; }
        double v;
        if (parse_double(value, &v) != DL_OK)
            return dl_error_set("%s%s: expected a number, got '%s'", where, k->name, value);
        return set_number(c, k, v, where);
    }
    }
}

void dl_train_config_defaults(dl_train_config *c)
{
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &k_keys[i];
        if (k->def) {
            int rc = set_text(c, k, k->def, "default ");
            DL_ASSERTF(rc == DL_OK, "bad default for %s", k->name);
        } else {
            set_unset(c, k);
        }
    }
    c->conv_alpha = 1;
    c->adam_beta1 = 0.9;
    c->adam_beta2 = 0.999;
    c->adam_eps = 1e-8;
    c->weight_decay = 0.01;
}

void dl_train_config_free(dl_train_config *c)
{
    for (int i = 0; i < N_KEYS; i++)
        if (k_keys[i].kind == K_STR || k_keys[i].kind == K_LIST) set_unset(c, &k_keys[i]);
    free(c->preset);
    c->preset = NULL;
}

int dl_train_config_set(dl_train_config *c, const char *key, const char *value)
{
    const key_def *k = find_key(key);
    if (!k) return dl_error_set("unknown option '%s'", key);
    return set_text(c, k, value, "");
}

static int apply_json_value(dl_train_config *c, const key_def *k, const cJSON *v, const char *where)
{
    if (cJSON_IsNull(v)) {
        if (k->kind == K_STR || k->kind == K_LIST || k->optional) { set_unset(c, k); return DL_OK; }
        return dl_error_set("%s%s: must not be null", where, k->name);
    }
    switch (k->kind) {
    case K_STR:
        if (cJSON_IsNumber(v) || cJSON_IsArray(v)) {
            /* a JSON number or list of numbers stands for sd-scripts' text form of the option
             * ("resolution": 512 or [768, 512] is "512" / "768,512"); the option's own check
             * then judges the text */
            char buf[256];
            size_t n = 0;
            int ok = 1;
            for (const cJSON *e = cJSON_IsArray(v) ? v->child : v; e && ok; e = cJSON_IsArray(v) ? e->next : NULL) {
                ok = cJSON_IsNumber(e) && n + 32 < sizeof buf;
                if (ok) n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%.17g", n ? "," : "", e->valuedouble);
            }
            if (!ok || n == 0)
                return dl_error_set("%s%s: expected a string, a number or a list of numbers", where, k->name);
            return set_text(c, k, buf, where);
        }
        if (!cJSON_IsString(v)) return dl_error_set("%s%s: expected a string", where, k->name);
        return set_text(c, k, v->valuestring, where);
    case K_BOOL:
        if (cJSON_IsBool(v)) { *(int *)((char *)c + k->off) = cJSON_IsTrue(v); return DL_OK; }
        if (cJSON_IsString(v)) return set_text(c, k, v->valuestring, where);
        return dl_error_set("%s%s: expected true or false", where, k->name);
    case K_LIST:
        list_clear((dl_strlist *)((char *)c + k->off));
        if (cJSON_IsString(v)) return set_text(c, k, v->valuestring, where);
        if (!cJSON_IsArray(v)) return dl_error_set("%s%s: expected a list of strings", where, k->name);
        for (const cJSON *e = v->child; e; e = e->next) {
            if (!cJSON_IsString(e)) return dl_error_set("%s%s: expected a list of strings", where, k->name);
            DL_TRY(set_text(c, k, e->valuestring, where));
        }
        return DL_OK;
    default:
        if (cJSON_IsNumber(v)) return set_number(c, k, v->valuedouble, where);
        if (cJSON_IsString(v)) return set_text(c, k, v->valuestring, where);
        return dl_error_set("%s%s: expected a number", where, k->name);
    }
}

int dl_train_config_apply_json_text(dl_train_config *c, const char *text, const char *label)
{
    char where[1100];
    snprintf(where, sizeof where, "%s: ", label);
    cJSON *root = cJSON_Parse(text);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        return dl_error_set("%snot valid JSON%s%.20s%s", where, e ? " near '" : "", e ? e : "", e ? "'" : "");
    }
    int rc = DL_OK;
    if (!cJSON_IsObject(root)) {
        rc = dl_error_set("%sexpected a JSON object of option: value", where);
        goto done;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        const key_def *k = find_key(it->string);
        if (!k) {
            if (is_ignored(it->string)) continue;
            rc = dl_error_set("%sunknown key '%s'", where, it->string);
            goto done;
        }
        if (apply_json_value(c, k, it, where) != DL_OK) { rc = DL_ERR; goto done; }
    }
done:
    cJSON_Delete(root);
    return rc;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcasecmp(s + n - m, suf) == 0;
}

int dl_train_config_load_json(dl_train_config *c, const char *path)
{
    if (has_suffix(path, ".toml"))
        return dl_error_set("%s: TOML configs are not read; write the same keys as a JSON object (.json)", path);
    FILE *f = fopen(path, "rb");
    if (!f) return dl_error_set("%s: cannot open config: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) { free(buf); fclose(f); return dl_error_set("%s: config too large", path); }
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return dl_error_set("out of memory"); }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, 4096, f);
        len += r;
        if (r < 4096) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return dl_error_set("%s: read error", path); }
    buf[len] = 0;
    int rc = dl_train_config_apply_json_text(c, buf, path);
    free(buf);
    return rc;
}

/* "--name" -> "name" with '-' -> '_' into out. */
static void flag_name(const char *arg, size_t n, char *out, size_t cap)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) out[j++] = arg[i] == '-' ? '_' : arg[i];
    out[j] = 0;
}

int dl_train_config_parse_args(dl_train_config *c, int argc, char **argv, FILE *warn)
{
    /* The config file first, wherever it appears. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (!strncmp(a, "--config=", 9)) val = a + 9;
        else if (!strncmp(a, "--config_file=", 14)) val = a + 14;
        else if (!strcmp(a, "--config") || !strcmp(a, "--config_file")) {
            if (i + 1 >= argc) return dl_error_set("%s: missing file name", a);
            val = argv[++i];
        }
        if (val) DL_TRY(dl_train_config_load_json(c, val));
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) return dl_error_set("unexpected argument '%s' (options are --name value)", a);
        const char *body = a + 2;
        const char *eq = strchr(body, '=');
        char name[128];
        flag_name(body, eq ? (size_t)(eq - body) : strlen(body), name, sizeof name);
        if (!strcmp(name, "config") || !strcmp(name, "config_file")) {
            if (!eq) i++;
            continue;
        }
        const key_def *k = find_key(name);
        if (!k) {
            if (is_ignored(name)) {
                if (warn) fprintf(warn, "warning: --%s does not apply to danlu and is ignored\n", name);
                if (!eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) i++;
                continue;
            }
            return dl_error_set("unknown option '--%s'", name);
        }
        if (k->kind == K_LIST) {
            list_clear((dl_strlist *)((char *)c + k->off));
            if (eq) { DL_TRY(set_text(c, k, eq + 1, "--")); continue; }
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) DL_TRY(set_text(c, k, argv[++i], "--"));
            continue;
        }
        if (eq) { DL_TRY(set_text(c, k, eq + 1, "--")); continue; }
        if (k->kind == K_BOOL) {
            int b;
            if (i + 1 < argc && parse_bool(argv[i + 1], &b) == DL_OK) { *(int *)((char *)c + k->off) = b; i++; }
            else *(int *)((char *)c + k->off) = 1;
            continue;
        }
        if (i + 1 >= argc) return dl_error_set("--%s: missing value", name);
        DL_TRY(set_text(c, k, argv[++i], "--"));
    }
    return dl_train_config_finish(c);
}

/* "key=value" in a list: value of key, or NULL. */
static const char *list_get(const dl_strlist *l, const char *key, int *count)
{
    const char *r = NULL;
    size_t n = strlen(key);
    for (int i = 0; i < l->n; i++)
        if (!strncmp(l->v[i], key, n) && l->v[i][n] == '=') { r = l->v[i] + n + 1; if (count) (*count)++; }
    return r;
}

static int check_list_keys(const dl_strlist *l, const char *listname, const char *const *known, int nk)
{
    for (int i = 0; i < l->n; i++) {
        const char *eq = strchr(l->v[i], '=');
        if (!eq) return dl_error_set("%s: '%s' is not key=value", listname, l->v[i]);
        int ok = 0;
        for (int j = 0; j < nk; j++)
            if ((size_t)(eq - l->v[i]) == strlen(known[j]) && !strncmp(l->v[i], known[j], strlen(known[j]))) ok = 1;
        if (!ok) return dl_error_set("%s: unknown argument '%.*s'", listname, (int)(eq - l->v[i]), l->v[i]);
    }
    return DL_OK;
}

static const char *const k_schedulers[] = {"constant", "constant_with_warmup", "linear", "cosine",
                                           "cosine_with_restarts", "polynomial"};

int dl_train_config_finish(dl_train_config *c)
{
    if (!c->pretrained_model_name_or_path) return dl_error_set("pretrained_model_name_or_path: required");
    if (!c->train_data_dir) return dl_error_set("train_data_dir: required");
    if (!c->output_dir) return dl_error_set("output_dir: required");
    if (!c->output_name || !*c->output_name || strchr(c->output_name, '/'))
        return dl_error_set("output_name: must be a non-empty file name without '/'");

    /* resolution "S" or "W,H" */
    {
        char *end;
        const char *s = c->resolution ? c->resolution : "";
        long w = strtol(s, &end, 10), h = w;
        if (end == s) return dl_error_set("resolution: expected 'S' or 'W,H', got '%s'", s);
        if (*end == ',') {
            const char *s2 = end + 1;
            h = strtol(s2, &end, 10);
            if (end == s2) return dl_error_set("resolution: expected 'S' or 'W,H', got '%s'", s);
        }
        if (*end) return dl_error_set("resolution: expected 'S' or 'W,H', got '%s'", s);
        if (w < 32 || h < 32 || w > 8192 || h > 8192 || w % 8 || h % 8)
            return dl_error_set("resolution: out of range: '%s' (each side a multiple of 8 in [32, 8192])", s);
        c->res_w = (int)w;
        c->res_h = (int)h;
    }
    if (c->min_bucket_reso > c->max_bucket_reso)
        return dl_error_set("min_bucket_reso: %d is above max_bucket_reso %d", c->min_bucket_reso, c->max_bucket_reso);
    if (c->min_bucket_reso % c->bucket_reso_steps || c->max_bucket_reso % c->bucket_reso_steps)
        return dl_error_set("min_bucket_reso / max_bucket_reso: must be multiples of bucket_reso_steps (%d)", c->bucket_reso_steps);

    if (strcmp(c->network_module, "networks.lora") != 0)
        return dl_error_set("network_module: only 'networks.lora' is supported, got '%s'", c->network_module);
    {
        static const char *const known[] = {"conv_dim", "conv_alpha", "preset"};
        DL_TRY(check_list_keys(&c->network_args, "network_args", known, 3));
        const char *v;
        double d;
        c->conv_dim = 0;
        c->conv_alpha = 1;
        if ((v = list_get(&c->network_args, "conv_dim", NULL))) {
            if (parse_double(v, &d) != DL_OK || d != floor(d) || d < 0 || d > 4096)
                return dl_error_set("network_args: conv_dim: out of range: '%s' (an integer in [0, 4096])", v);
            c->conv_dim = (int)d;
        }
        if ((v = list_get(&c->network_args, "conv_alpha", NULL))) {
            if (parse_double(v, &d) != DL_OK || d <= 0 || d > 1e6)
                return dl_error_set("network_args: conv_alpha: out of range: '%s' (must be > 0)", v);
            c->conv_alpha = d;
        }
        free(c->preset);
        v = list_get(&c->network_args, "preset", NULL);
        if (v && strcmp(v, "default") && strcmp(v, "attn-only") && strcmp(v, "attn-mlp") && strcmp(v, "full"))
            return dl_error_set("network_args: preset: unknown '%s' (default, attn-only, attn-mlp, full)", v);
        c->preset = strdup(v ? v : "default");
        if (!c->preset) return dl_error_set("out of memory");
    }
    if (c->network_train_unet_only && c->network_train_text_encoder_only)
        return dl_error_set("network_train_unet_only and network_train_text_encoder_only: both set");
    if (!dl_backend_find(c->backend)) return dl_error_prefix("backend: ");
    if (strcmp(c->lora_format, "kohya") && strcmp(c->lora_format, "peft"))
        return dl_error_set("lora_format: expected 'kohya' or 'peft', got '%s'", c->lora_format);

    if (strcasecmp(c->optimizer_type, "AdamW") != 0 && strcasecmp(c->optimizer_type, "torch.optim.AdamW") != 0)
        return dl_error_set("optimizer_type: '%s' is not supported; danlu trains with AdamW only "
                            "(AdamW8bit, Lion, Prodigy, Adafactor, DAdaptation and others are not available)",
                            c->optimizer_type);
    {
        static const char *const known[] = {"weight_decay", "betas", "eps"};
        DL_TRY(check_list_keys(&c->optimizer_args, "optimizer_args", known, 3));
        const char *v;
        double d;
        if ((v = list_get(&c->optimizer_args, "weight_decay", NULL))) {
            if (parse_double(v, &d) != DL_OK || d < 0 || d > 10)
                return dl_error_set("optimizer_args: weight_decay: out of range: '%s'", v);
            c->weight_decay = d;
        }
        if ((v = list_get(&c->optimizer_args, "eps", NULL))) {
            if (parse_double(v, &d) != DL_OK || d <= 0 || d > 1)
                return dl_error_set("optimizer_args: eps: out of range: '%s'", v);
            c->adam_eps = d;
        }
        if ((v = list_get(&c->optimizer_args, "betas", NULL))) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *p = buf; *p; p++)
                if (*p == '(' || *p == ')') *p = ' ';
            char *comma = strchr(buf, ',');
            double b1, b2;
            if (!comma) return dl_error_set("optimizer_args: betas: expected 'b1,b2', got '%s'", v);
            *comma = 0;
            if (parse_double(buf, &b1) != DL_OK || parse_double(comma + 1, &b2) != DL_OK || b1 < 0 || b1 >= 1 ||
                b2 < 0 || b2 >= 1)
                return dl_error_set("optimizer_args: betas: out of range: '%s' (each in [0, 1))", v);
            c->adam_beta1 = b1;
            c->adam_beta2 = b2;
        }
    }
    {
        int ok = 0;
        for (size_t i = 0; i < sizeof k_schedulers / sizeof *k_schedulers; i++)
            if (!strcmp(c->lr_scheduler, k_schedulers[i])) ok = 1;
        if (!ok)
            return dl_error_set("lr_scheduler: unknown '%s' (constant, constant_with_warmup, linear, cosine, "
                                "cosine_with_restarts, polynomial)", c->lr_scheduler);
    }
    if (strcmp(c->mixed_precision, "no") && strcmp(c->mixed_precision, "fp32"))
        return dl_error_set("mixed_precision: '%s' needs the CUDA backend; the CPU trains in fp32 ('no')",
                            c->mixed_precision);
    if (!strcmp(c->save_precision, "float") || !strcmp(c->save_precision, "fp32")) c->save_dtype = DL_SAVE_FP32;
    else if (!strcmp(c->save_precision, "fp16")) c->save_dtype = DL_SAVE_FP16;
    else if (!strcmp(c->save_precision, "bf16")) c->save_dtype = DL_SAVE_BF16;
    else return dl_error_set("save_precision: expected float, fp32, fp16 or bf16, got '%s'", c->save_precision);
    if ((c->sample_every_n_steps || c->sample_every_n_epochs) && !c->sample_prompts)
        return dl_error_set("%s: needs sample_prompts", c->sample_every_n_steps ? "sample_every_n_steps" : "sample_every_n_epochs");
    if (c->cache_latents_to_disk) c->cache_latents = 1;
    if (!c->caption_extension || !*c->caption_extension)
        return dl_error_set("caption_extension: must not be empty");
    return DL_OK;
}

double dl_train_config_unet_lr(const dl_train_config *c)
{
    return isnan(c->unet_lr) ? c->learning_rate : c->unet_lr;
}

double dl_train_config_te_lr(const dl_train_config *c)
{
    return isnan(c->text_encoder_lr) ? c->learning_rate : c->text_encoder_lr;
}

static cJSON *key_json(const dl_train_config *c, const key_def *k)
{
    const char *base = (const char *)c;
    switch (k->kind) {
    case K_STR: {
        const char *s = *(char *const *)(base + k->off);
        return s ? cJSON_CreateString(s) : cJSON_CreateNull();
    }
    case K_BOOL: return cJSON_CreateBool(*(const int *)(base + k->off));
    case K_INT: {
        int v = *(const int *)(base + k->off);
        return (k->optional && v == 0) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
    }
    case K_I64: {
        long long v = *(const long long *)(base + k->off);
        return v < 0 ? cJSON_CreateNull() : cJSON_CreateNumber((double)v);
    }
    case K_DBL: {
        double v = *(const double *)(base + k->off);
        return isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
    }
    case K_LIST: {
        const dl_strlist *l = (const dl_strlist *)(base + k->off);
        cJSON *a = cJSON_CreateArray();
        for (int i = 0; i < l->n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(l->v[i]));
        return a;
    }
    }
    return cJSON_CreateNull();
}

char *dl_train_config_to_json(const dl_train_config *c)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    for (int i = 0; i < N_KEYS; i++) cJSON_AddItemToObject(root, k_keys[i].name, key_json(c, &k_keys[i]));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

void dl_train_config_print(const dl_train_config *c, FILE *f)
{
    for (int i = 0; i < N_KEYS; i++) {
        cJSON *v = key_json(c, &k_keys[i]);
        char *s = v ? cJSON_PrintUnformatted(v) : NULL;
        fprintf(f, "  %-32s %s\n", k_keys[i].name, s ? s : "?");
        free(s);
        cJSON_Delete(v);
    }
}
