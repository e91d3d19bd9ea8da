/* config.c - SD network configs: presets, diffusers/transformers config.json parse and write. */
#include "model/config.h"
#include "core/error.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- presets */

static void unet_sd15(dl_unet_config *c)
{
    static const int ch[4] = {320, 640, 1280, 1280};
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 4;
    c->n_blocks = 4;
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = ch[i];
        c->down_cross_attn[i] = i < 3;
        c->up_cross_attn[i] = i > 0;
        c->num_heads[i] = 8;
        c->transformer_layers[i] = 1;
    }
    c->layers_per_block = 2;
    c->cross_attention_dim = 768;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->time_embed_dim = 1280;
    c->flip_sin_to_cos = 1;
    c->sample_size = 64;
    c->prediction = DL_PRED_EPSILON;
}

/* SDXL base 1.0's UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json). */
static void unet_sdxl(dl_unet_config *c)
{
    static const int ch[3] = {320, 640, 1280}, heads[3] = {5, 10, 20}, depth[3] = {1, 2, 10};
    unet_sd15(c);
    c->n_blocks = 3;
    for (int i = 0; i < DL_MAX_BLOCKS; i++) {
        c->block_out_channels[i] = i < 3 ? ch[i] : 0;
        c->down_cross_attn[i] = i == 1 || i == 2; /* DownBlock2D, CrossAttnDownBlock2D x 2 */
        c->up_cross_attn[i] = i == 0 || i == 1;   /* CrossAttnUpBlock2D x 2, UpBlock2D */
        c->num_heads[i] = i < 3 ? heads[i] : 0;   /* head dim 64 */
        c->transformer_layers[i] = i < 3 ? depth[i] : 0;
    }
    c->cross_attention_dim = 2048;
    c->use_linear_projection = 1;
    c->sample_size = 128;
    c->addition_embed = DL_ADD_TEXT_TIME;
    c->addition_time_embed_dim = 256;
    c->projection_class_embeddings_input_dim = 2816;
    c->addition_time_ids = 6;
}

static void vae_sd(dl_vae_config *c)
{
    static const int ch[4] = {128, 256, 512, 512};
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 3;
    c->latent_channels = 4;
    c->n_blocks = 4;
    for (int i = 0; i < 4; i++) c->block_out_channels[i] = ch[i];
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->mid_attention = 1;
    c->use_quant_conv = c->use_post_quant_conv = 1;
    c->scaling_factor = 0.18215f;
    c->sample_size = 512;
}

static void clip_sd15(dl_clip_config *c)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 49408;
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->num_layers = 12;
    c->num_heads = 12;
    c->max_positions = 77;
    c->act = DL_ACT_QUICK_GELU;
    c->layer_norm_eps = 1e-5f;
    c->bos_token_id = 49406;
    c->eos_token_id = 49407;
    c->pad_token_id = 1;
}

/* OpenCLIP ViT-bigG/14's text tower as SDXL's text_encoder_2 (CLIPTextModelWithProjection). */
static void clip_bigg(dl_clip_config *c)
{
    clip_sd15(c);
    c->hidden_size = 1280;
    c->intermediate_size = 5120;
    c->num_layers = 32;
    c->num_heads = 20;
    c->act = DL_ACT_GELU;
    c->projection_dim = 1280;
}

/* The tiny presets' VAE (two 32-wide levels) and text encoder (64 wide, 2 layers, 1000 tokens;
 * tests/gen/gen_checkpoint.py), on top of the SD 1.5 defaults. */
static void tiny_vae_text(dl_model_config *cfg, int vae_sample_size)
{
    dl_vae_config *v = &cfg->vae;
    v->n_blocks = 2;
    v->block_out_channels[0] = v->block_out_channels[1] = 32;
    v->block_out_channels[2] = v->block_out_channels[3] = 0;
    v->layers_per_block = 1;
    v->sample_size = vae_sample_size;
    dl_clip_config *t = &cfg->text;
    t->vocab_size = 1000;
    t->hidden_size = 64;
    t->intermediate_size = 128;
    t->num_layers = 2;
    t->num_heads = 1;
    t->bos_token_id = 998;
    t->eos_token_id = 999;
}

int dl_model_config_preset(dl_model_config *cfg, const char *name)
{
    memset(cfg, 0, sizeof *cfg);
    unet_sd15(&cfg->unet);
    vae_sd(&cfg->vae);
    clip_sd15(&cfg->text);
    if (!strcmp(name, "sd15")) return DL_OK;
    if (!strcmp(name, "sd21") || !strcmp(name, "sd21-base")) {
        static const int heads[4] = {5, 10, 20, 20}; /* head dim 64 */
        int v = !strcmp(name, "sd21");
        for (int i = 0; i < 4; i++) cfg->unet.num_heads[i] = heads[i];
        cfg->unet.cross_attention_dim = 1024;
        cfg->unet.use_linear_projection = 1;
        cfg->unet.sample_size = v ? 96 : 64;
        cfg->unet.prediction = v ? DL_PRED_V : DL_PRED_EPSILON;
        cfg->vae.sample_size = v ? 768 : 512;
        cfg->text.hidden_size = 1024;
        cfg->text.intermediate_size = 4096;
        cfg->text.num_layers = 23;
        cfg->text.num_heads = 16;
        cfg->text.act = DL_ACT_GELU;
        return DL_OK;
    }
    if (!strcmp(name, "tiny")) { /* tests/gen/gen_checkpoint.py */
        dl_unet_config *u = &cfg->unet;
        u->n_blocks = 2;
        u->block_out_channels[0] = 32;
        u->block_out_channels[1] = 64;
        u->down_cross_attn[0] = 1; u->down_cross_attn[1] = 0;
        u->up_cross_attn[0] = 0; u->up_cross_attn[1] = 1;
        for (int i = 2; i < 4; i++) {
            u->block_out_channels[i] = u->down_cross_attn[i] = u->up_cross_attn[i] = 0;
            u->num_heads[i] = u->transformer_layers[i] = 0;
        }
        u->layers_per_block = 1;
        u->cross_attention_dim = 64;
        u->time_embed_dim = 128;
        u->sample_size = 8;
        tiny_vae_text(cfg, 16);
        return DL_OK;
    }
    if (!strcmp(name, "sdxl")) {
        unet_sdxl(&cfg->unet);
        clip_bigg(&cfg->text2);
        cfg->vae.scaling_factor = 0.13025f;
        cfg->vae.sample_size = 1024;
        return DL_OK;
    }
    if (!strcmp(name, "tiny-sdxl")) { /* what a single file of it detects back (checkpoint.c):
                                          32 groups, head dim 64, 256-wide time-id sinusoids */
        static const int ch[3] = {32, 64, 128}, heads[3] = {0, 1, 2};
        dl_unet_config *u = &cfg->unet;
        unet_sdxl(u);
        for (int i = 0; i < 3; i++) u->block_out_channels[i] = ch[i], u->num_heads[i] = heads[i];
        u->transformer_layers[1] = 1, u->transformer_layers[2] = 2;
        u->cross_attention_dim = 128; /* the two text encoders' widths, 64 + 64 */
        u->time_embed_dim = 128;
        u->sample_size = 16;
        u->projection_class_embeddings_input_dim = 6 * 256 + 40; /* SDXL's 256-wide sinusoids */
        tiny_vae_text(cfg, 32);
        cfg->vae.scaling_factor = 0.13025f;
        dl_clip_config *t2 = &cfg->text2; /* single-file detection: head dim 64 */
        *t2 = cfg->text;
        t2->act = DL_ACT_GELU;
        t2->projection_dim = 40; /* the UNet's pooled text embedding */
        return DL_OK;
    }
    return dl_error_set("unknown model preset '%s' (known: sd15, sd21, sd21-base, sdxl, tiny, tiny-sdxl)", name);
}

/* ---------------------------------------------------------------- JSON helpers */

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) { dl_error_set("%s: cannot open", path); return NULL; }
    if (fseek(fp, 0, SEEK_END) != 0) { fclose(fp); dl_error_set("%s: cannot read", path); return NULL; }
    long n = ftell(fp);
    if (n < 0 || n > (16L << 20)) { fclose(fp); dl_error_set("%s: not a config file (size %ld)", path, n); return NULL; }
    rewind(fp);
    char *s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, fp) != (size_t)n) {
        free(s);
        fclose(fp);
        dl_error_set("%s: cannot read", path);
        return NULL;
    }
    fclose(fp);
    s[n] = 0;
    return s;
}

static int is_int(const cJSON *j)
{
    return cJSON_IsNumber(j) && j->valuedouble == floor(j->valuedouble) && fabs(j->valuedouble) < 1e9;
}

/* Integer key; absent keeps *out. */
static int get_int(const cJSON *o, const char *key, int *out, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return DL_OK;
    if (!is_int(j)) return dl_error_set("%s: \"%s\" must be an integer", label, key);
    *out = (int)j->valuedouble;
    return DL_OK;
}

static int get_float(const cJSON *o, const char *key, float *out, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return DL_OK;
    if (!cJSON_IsNumber(j)) return dl_error_set("%s: \"%s\" must be a number", label, key);
    *out = (float)j->valuedouble;
    return DL_OK;
}

/* Boolean key; absent or null (diffusers' "not set", e.g. SDXL's upcast_attention) keeps *out. */
static int get_bool(const cJSON *o, const char *key, int *out, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return DL_OK;
    if (!cJSON_IsBool(j)) return dl_error_set("%s: \"%s\" must be true or false", label, key);
    *out = cJSON_IsTrue(j);
    return DL_OK;
}

/* An int, or a list of n ints (one per block); absent keeps out[]. */
static int get_int_list(const cJSON *o, const char *key, int *out, int n, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return DL_OK;
    if (is_int(j)) {
        for (int i = 0; i < n; i++) out[i] = (int)j->valuedouble;
        return DL_OK;
    }
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != n)
        return dl_error_set("%s: \"%s\" must be an integer or a list of %d integers", label, key, n);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(j, i);
        if (!is_int(e)) return dl_error_set("%s: \"%s\"[%d] must be an integer", label, key, i);
        out[i] = (int)e->valuedouble;
    }
    return DL_OK;
}

/* Key must be absent, null, or equal to the string want (NULL: must be null/absent). */
static int expect_str(const cJSON *o, const char *key, const char *want, const char *label, const char *what)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return DL_OK;
    if (want && cJSON_IsString(j) && !strcmp(j->valuestring, want)) return DL_OK;
    char *v = cJSON_PrintUnformatted(j);
    int r = dl_error_set("%s: \"%s\": %s is not supported (%s)", label, key, v ? v : "?", what);
    free(v);
    return r;
}

/* Key must be absent, null, false or equal to the number want (NAN: must be null/absent/false). */
static int expect_num(const cJSON *o, const char *key, double want, const char *label, const char *what)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j) || cJSON_IsFalse(j)) return DL_OK;
    if (!isnan(want) && cJSON_IsNumber(j) && j->valuedouble == want) return DL_OK;
    char *v = cJSON_PrintUnformatted(j);
    int r = dl_error_set("%s: \"%s\": %s is not supported (%s)", label, key, v ? v : "?", what);
    free(v);
    return r;
}

static int in_list(const char *key, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (!strcmp(key, list[i])) return 1;
    return 0;
}

/* Every key of o must be known, start with '_', or be null/false (an absent feature). */
static int check_unknown(const cJSON *o, const char *const *known, const char *label)
{
    for (const cJSON *j = o->child; j; j = j->next) {
        if (j->string[0] == '_' || in_list(j->string, known)) continue;
        if (cJSON_IsNull(j) || cJSON_IsFalse(j)) continue;
        return dl_error_set("%s: unknown key \"%s\" (not a feature of the SD 1.x/2.x/SDXL architectures danlu supports)",
                            label, j->string);
    }
    return DL_OK;
}

static int class_name(const cJSON *o, const char *want, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, "_class_name");
    if (!j) return DL_OK;
    if (!cJSON_IsString(j) || strcmp(j->valuestring, want))
        return dl_error_set("%s: architecture \"%s\" is not supported (expected %s)", label,
                            cJSON_IsString(j) ? j->valuestring : "?", want);
    return DL_OK;
}

/* A list of block type names; kinds[i] = 1 when it equals attn, 0 when plain, error otherwise. */
static int block_types(const cJSON *o, const char *key, const char *attn, const char *plain, int *kinds,
                       int *n, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return DL_OK;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) < 1 || cJSON_GetArraySize(j) > DL_MAX_BLOCKS)
        return dl_error_set("%s: \"%s\" must be a list of 1 to %d block types", label, key, DL_MAX_BLOCKS);
    *n = cJSON_GetArraySize(j);
    for (int i = 0; i < *n; i++) {
        const cJSON *e = cJSON_GetArrayItem(j, i);
        if (!cJSON_IsString(e)) return dl_error_set("%s: \"%s\"[%d] must be a string", label, key, i);
        if (attn && !strcmp(e->valuestring, attn)) kinds[i] = 1;
        else if (!strcmp(e->valuestring, plain)) kinds[i] = 0;
        else
            return dl_error_set("%s: block type \"%s\" in \"%s\" is not supported (expected %s%s%s)", label,
                                e->valuestring, key, plain, attn ? " or " : "", attn ? attn : "");
    }
    return DL_OK;
}

static cJSON *parse_object(const char *json, const char *label)
{
    cJSON *o = cJSON_Parse(json);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        dl_error_set("%s: not a JSON object", label);
        return NULL;
    }
    return o;
}

/* ---------------------------------------------------------------- UNet */

static const char *const UNET_KEYS[] = {
    "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
    "down_block_types", "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "dropout", "act_fn", "norm_num_groups",
    "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
    "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim", "num_attention_heads",
    "dual_cross_attention", "use_linear_projection", "class_embed_type", "addition_embed_type",
    "addition_time_embed_dim", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
    "resnet_skip_time_act", "resnet_out_scale_factor", "time_embedding_type", "time_embedding_dim",
    "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim", "conv_in_kernel", "conv_out_kernel",
    "projection_class_embeddings_input_dim", "attention_type", "class_embeddings_concat",
    "mid_block_only_cross_attention", "cross_attention_norm", "addition_embed_type_num_heads", NULL};

static int unet_parse_obj(dl_unet_config *c, const cJSON *o, const char *label)
{
    DL_TRY(class_name(o, "UNet2DConditionModel", label));
    const cJSON *ja = cJSON_GetObjectItemCaseSensitive(o, "addition_embed_type");
    c->addition_embed = DL_ADD_NONE;
    if (ja && !cJSON_IsNull(ja)) {
        if (!cJSON_IsString(ja) || strcmp(ja->valuestring, "text_time"))
            return dl_error_set("%s: addition_embed_type \"%s\" is not supported (SDXL's \"text_time\" is; "
                                "the others belong to Kandinsky-style UNets)",
                                label, cJSON_IsString(ja) ? ja->valuestring : "?");
        c->addition_embed = DL_ADD_TEXT_TIME;
    }
    DL_TRY(expect_str(o, "class_embed_type", NULL, label, "class-conditioned UNets (SD 2.x unCLIP) are not supported"));
    DL_TRY(expect_num(o, "num_class_embeds", NAN, label, "class-conditioned UNets are not supported"));
    DL_TRY(expect_num(o, "encoder_hid_dim", NAN, label, "encoder_hid_dim projections are not supported"));
    DL_TRY(expect_str(o, "encoder_hid_dim_type", NULL, label, "encoder_hid_dim projections are not supported"));
    DL_TRY(expect_num(o, "time_cond_proj_dim", NAN, label, "timestep-conditioned (LCM) UNets are not supported"));
    DL_TRY(expect_num(o, "dual_cross_attention", NAN, label, "dual cross-attention is not supported"));
    DL_TRY(expect_num(o, "only_cross_attention", NAN, label, "cross-attention-only transformers are not supported"));
    DL_TRY(expect_num(o, "center_input_sample", NAN, label, "input centering is not supported"));
    DL_TRY(expect_num(o, "class_embeddings_concat", NAN, label, "class embeddings are not supported"));
    if (!c->addition_embed)
        DL_TRY(expect_num(o, "projection_class_embeddings_input_dim", NAN, label,
                          "class embeddings are not supported"));
    DL_TRY(expect_num(o, "time_embedding_dim", NAN, label, "a custom time embedding width is not supported"));
    DL_TRY(expect_str(o, "time_embedding_act_fn", NULL, label, "a time embedding activation is not supported"));
    DL_TRY(expect_str(o, "timestep_post_act", NULL, label, "a timestep post-activation is not supported"));
    DL_TRY(expect_str(o, "cross_attention_norm", NULL, label, "cross-attention norms are not supported"));
    DL_TRY(expect_num(o, "mid_block_only_cross_attention", NAN, label, "not supported"));
    DL_TRY(expect_num(o, "reverse_transformer_layers_per_block", NAN, label, "not supported"));
    DL_TRY(expect_num(o, "resnet_skip_time_act", NAN, label, "not supported"));
    DL_TRY(expect_str(o, "mid_block_type", "UNetMidBlock2DCrossAttn", label, "expected UNetMidBlock2DCrossAttn"));
    DL_TRY(expect_str(o, "act_fn", "silu", label, "expected silu"));
    DL_TRY(expect_str(o, "resnet_time_scale_shift", "default", label, "expected default"));
    DL_TRY(expect_str(o, "time_embedding_type", "positional", label, "expected positional"));
    DL_TRY(expect_str(o, "attention_type", "default", label, "expected default"));
    DL_TRY(expect_num(o, "conv_in_kernel", 3, label, "expected 3"));
    DL_TRY(expect_num(o, "conv_out_kernel", 3, label, "expected 3"));
    DL_TRY(expect_num(o, "downsample_padding", 1, label, "expected 1"));
    DL_TRY(expect_num(o, "mid_block_scale_factor", 1, label, "expected 1"));
    DL_TRY(expect_num(o, "resnet_out_scale_factor", 1, label, "expected 1"));
    DL_TRY(check_unknown(o, UNET_KEYS, label));

    const cJSON *jb = cJSON_GetObjectItemCaseSensitive(o, "block_out_channels");
    if (jb) {
        if (!cJSON_IsArray(jb) || cJSON_GetArraySize(jb) < 1 || cJSON_GetArraySize(jb) > DL_MAX_BLOCKS)
            return dl_error_set("%s: \"block_out_channels\" must be a list of 1 to %d integers", label, DL_MAX_BLOCKS);
        int n = cJSON_GetArraySize(jb);
        if (n != c->n_blocks) { /* a different depth than the defaults: block types must be given */
            memset(c->down_cross_attn, 0, sizeof c->down_cross_attn);
            memset(c->up_cross_attn, 0, sizeof c->up_cross_attn);
            for (int i = 0; i < DL_MAX_BLOCKS; i++) c->num_heads[i] = c->transformer_layers[i] = 0;
            for (int i = 0; i < n; i++) { c->num_heads[i] = 8; c->transformer_layers[i] = 1; }
        }
        c->n_blocks = n;
        memset(c->block_out_channels, 0, sizeof c->block_out_channels);
        DL_TRY(get_int_list(o, "block_out_channels", c->block_out_channels, n, label));
    }
    int nd = c->n_blocks, nu = c->n_blocks;
    DL_TRY(block_types(o, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D", c->down_cross_attn, &nd, label));
    DL_TRY(block_types(o, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", c->up_cross_attn, &nu, label));
    if (nd != c->n_blocks || nu != c->n_blocks)
        return dl_error_set("%s: %d down and %d up block types for %d block_out_channels", label, nd, nu, c->n_blocks);
    DL_TRY(get_int(o, "in_channels", &c->in_channels, label));
    DL_TRY(get_int(o, "out_channels", &c->out_channels, label));
    DL_TRY(get_int(o, "layers_per_block", &c->layers_per_block, label));
    DL_TRY(get_int(o, "norm_num_groups", &c->norm_num_groups, label));
    DL_TRY(get_float(o, "norm_eps", &c->norm_eps, label));
    DL_TRY(get_int(o, "freq_shift", &c->freq_shift, label));
    DL_TRY(get_bool(o, "flip_sin_to_cos", &c->flip_sin_to_cos, label));
    DL_TRY(get_bool(o, "use_linear_projection", &c->use_linear_projection, label));
    DL_TRY(get_bool(o, "upcast_attention", &c->upcast_attention, label));
    DL_TRY(get_int(o, "sample_size", &c->sample_size, label));
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(o, "cross_attention_dim");
    if (jc && !is_int(jc))
        return dl_error_set("%s: \"cross_attention_dim\" must be one integer (per-block values are not supported)", label);
    DL_TRY(get_int(o, "cross_attention_dim", &c->cross_attention_dim, label));
    /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim (a legacy name:
     * it has always meant the number of heads for this model). */
    const cJSON *jh = cJSON_GetObjectItemCaseSensitive(o, "num_attention_heads");
    DL_TRY(get_int_list(o, (jh && !cJSON_IsNull(jh)) ? "num_attention_heads" : "attention_head_dim", c->num_heads,
                        c->n_blocks, label));
    DL_TRY(get_int_list(o, "transformer_layers_per_block", c->transformer_layers, c->n_blocks, label));
    c->time_embed_dim = 4 * c->block_out_channels[0];
    c->addition_time_embed_dim = c->projection_class_embeddings_input_dim = c->addition_time_ids = 0;
    if (c->addition_embed == DL_ADD_TEXT_TIME) {
        const char *need[2] = {"addition_time_embed_dim", "projection_class_embeddings_input_dim"};
        for (int i = 0; i < 2; i++)
            if (!is_int(cJSON_GetObjectItemCaseSensitive(o, need[i])))
                return dl_error_set("%s: addition_embed_type \"text_time\" needs an integer \"%s\"", label, need[i]);
        DL_TRY(get_int(o, "addition_time_embed_dim", &c->addition_time_embed_dim, label));
        DL_TRY(get_int(o, "projection_class_embeddings_input_dim", &c->projection_class_embeddings_input_dim, label));
        c->addition_time_ids = 6; /* what SDXL's pipelines pass (not a config key) */
    }
    return dl_unet_config_validate(c, label);
}

int dl_unet_config_parse(dl_unet_config *cfg, const char *json, const char *label)
{
    dl_model_config d;
    dl_model_config_preset(&d, "sd15");
    *cfg = d.unet;
    cJSON *o = parse_object(json, label);
    if (!o) return DL_ERR;
    int r = unet_parse_obj(cfg, o, label);
    cJSON_Delete(o);
    return r;
}

int dl_unet_config_validate(const dl_unet_config *c, const char *label)
{
    if (c->n_blocks < 1 || c->n_blocks > DL_MAX_BLOCKS) return dl_error_set("%s: %d blocks", label, c->n_blocks);
    if (c->in_channels < 1 || c->out_channels < 1 || c->layers_per_block < 1 || c->cross_attention_dim < 1 ||
        c->norm_num_groups < 1 || c->sample_size < 1 || !(c->norm_eps > 0))
        return dl_error_set("%s: a size is out of range (in/out channels, layers_per_block, cross_attention_dim, "
                            "norm_num_groups, norm_eps, sample_size)", label);
    for (int i = 0; i < c->n_blocks; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch % c->norm_num_groups)
            return dl_error_set("%s: block_out_channels[%d] = %d is not a positive multiple of norm_num_groups %d",
                                label, i, ch, c->norm_num_groups);
        /* heads and depth are read by the attentions of the level only (down block i, up block
         * n-1-i, the mid block at the last level): a level without any may hold 0 */
        const int attn = c->down_cross_attn[i] || c->up_cross_attn[c->n_blocks - 1 - i] || i == c->n_blocks - 1;
        if (!attn && c->num_heads[i] >= 0 && c->transformer_layers[i] >= 0) continue;
        if (c->num_heads[i] < 1 || ch % c->num_heads[i])
            return dl_error_set("%s: %d attention heads do not divide the %d channels of block %d", label,
                                c->num_heads[i], ch, i);
        if (c->transformer_layers[i] < 1)
            return dl_error_set("%s: transformer_layers_per_block[%d] = %d", label, i, c->transformer_layers[i]);
    }
    if (c->addition_embed == DL_ADD_TEXT_TIME) {
        const int A = c->addition_time_embed_dim, K = c->addition_time_ids;
        if (A < 2 || A % 2 || c->freq_shift >= A / 2 || K < 1 || K > 64 ||
            c->projection_class_embeddings_input_dim <= (int64_t)K * A)
            return dl_error_set("%s: SDXL added conditioning out of range (addition_time_embed_dim %d must be even "
                                "and above 2 x freq_shift %d; projection_class_embeddings_input_dim %d must exceed "
                                "%d time ids x %d)", label, A, c->freq_shift,
                                c->projection_class_embeddings_input_dim, K, A);
    } else if (c->addition_embed != DL_ADD_NONE) {
        return dl_error_set("%s: unknown added conditioning %d", label, (int)c->addition_embed);
    }
    return DL_OK;
}

int dl_unet_text_embeds_dim(const dl_unet_config *c)
{
    if (c->addition_embed != DL_ADD_TEXT_TIME) return 0;
    return c->projection_class_embeddings_input_dim - c->addition_time_ids * c->addition_time_embed_dim;
}

int dl_unet_config_load(dl_unet_config *cfg, const char *path)
{
    char *s = read_text(path);
    if (!s) return DL_ERR;
    int r = dl_unet_config_parse(cfg, s, path);
    free(s);
    return r;
}

/* ---------------------------------------------------------------- VAE */

static const char *const VAE_KEYS[] = {
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
    "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv", "use_post_quant_conv",
    "mid_block_add_attention", NULL};

static int vae_parse_obj(dl_vae_config *c, const cJSON *o, const char *label)
{
    DL_TRY(class_name(o, "AutoencoderKL", label));
    DL_TRY(expect_str(o, "act_fn", "silu", label, "expected silu"));
    DL_TRY(expect_num(o, "shift_factor", NAN, label, "a latent shift is not supported"));
    DL_TRY(check_unknown(o, VAE_KEYS, label));
    const cJSON *jb = cJSON_GetObjectItemCaseSensitive(o, "block_out_channels");
    if (jb) {
        if (!cJSON_IsArray(jb) || cJSON_GetArraySize(jb) < 1 || cJSON_GetArraySize(jb) > DL_MAX_BLOCKS)
            return dl_error_set("%s: \"block_out_channels\" must be a list of 1 to %d integers", label, DL_MAX_BLOCKS);
        c->n_blocks = cJSON_GetArraySize(jb);
        memset(c->block_out_channels, 0, sizeof c->block_out_channels);
        DL_TRY(get_int_list(o, "block_out_channels", c->block_out_channels, c->n_blocks, label));
    }
    int kinds[DL_MAX_BLOCKS], nd = c->n_blocks, nu = c->n_blocks;
    DL_TRY(block_types(o, "down_block_types", NULL, "DownEncoderBlock2D", kinds, &nd, label));
    DL_TRY(block_types(o, "up_block_types", NULL, "UpDecoderBlock2D", kinds, &nu, label));
    if (nd != c->n_blocks || nu != c->n_blocks)
        return dl_error_set("%s: %d down and %d up block types for %d block_out_channels", label, nd, nu, c->n_blocks);
    DL_TRY(get_int(o, "in_channels", &c->in_channels, label));
    DL_TRY(get_int(o, "out_channels", &c->out_channels, label));
    DL_TRY(get_int(o, "latent_channels", &c->latent_channels, label));
    DL_TRY(get_int(o, "layers_per_block", &c->layers_per_block, label));
    DL_TRY(get_int(o, "norm_num_groups", &c->norm_num_groups, label));
    DL_TRY(get_int(o, "sample_size", &c->sample_size, label));
    DL_TRY(get_float(o, "scaling_factor", &c->scaling_factor, label));
    DL_TRY(get_bool(o, "use_quant_conv", &c->use_quant_conv, label));
    DL_TRY(get_bool(o, "use_post_quant_conv", &c->use_post_quant_conv, label));
    DL_TRY(get_bool(o, "mid_block_add_attention", &c->mid_attention, label));
    return dl_vae_config_validate(c, label);
}

int dl_vae_config_parse(dl_vae_config *cfg, const char *json, const char *label)
{
    vae_sd(cfg);
    cJSON *o = parse_object(json, label);
    if (!o) return DL_ERR;
    int r = vae_parse_obj(cfg, o, label);
    cJSON_Delete(o);
    return r;
}

int dl_vae_config_validate(const dl_vae_config *c, const char *label)
{
    if (c->n_blocks < 1 || c->n_blocks > DL_MAX_BLOCKS) return dl_error_set("%s: %d blocks", label, c->n_blocks);
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 || c->layers_per_block < 1 ||
        c->norm_num_groups < 1 || !(c->scaling_factor > 0))
        return dl_error_set("%s: a size is out of range (in/out/latent channels, layers_per_block, "
                            "norm_num_groups, scaling_factor)", label);
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups)
            return dl_error_set("%s: block_out_channels[%d] = %d is not a positive multiple of norm_num_groups %d",
                                label, i, c->block_out_channels[i], c->norm_num_groups);
    return DL_OK;
}

int dl_vae_config_load(dl_vae_config *cfg, const char *path)
{
    char *s = read_text(path);
    if (!s) return DL_ERR;
    int r = dl_vae_config_parse(cfg, s, path);
    free(s);
    return r;
}

/* ---------------------------------------------------------------- CLIP text encoder */

static int clip_parse_obj(dl_clip_config *c, const cJSON *o, const char *label)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "clip_text_model")))
        return dl_error_set("%s: model_type \"%s\" is not supported (expected clip_text_model)", label,
                            cJSON_IsString(mt) ? mt->valuestring : "?");
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(o, "architectures");
    int with_projection = 0;
    if (ar && cJSON_IsArray(ar)) {
        for (const cJSON *e = ar->child; e; e = e->next) {
            if (!cJSON_IsString(e) ||
                (strcmp(e->valuestring, "CLIPTextModel") && strcmp(e->valuestring, "CLIPTextModelWithProjection")))
                return dl_error_set("%s: architecture \"%s\" is not supported (expected CLIPTextModel or "
                                    "CLIPTextModelWithProjection)", label, cJSON_IsString(e) ? e->valuestring : "?");
            with_projection |= !strcmp(e->valuestring, "CLIPTextModelWithProjection");
        }
    }
    c->projection_dim = 0;
    if (with_projection) {
        c->projection_dim = 512; /* transformers' CLIPTextConfig default */
        DL_TRY(get_int(o, "projection_dim", &c->projection_dim, label));
    }
    DL_TRY(get_int(o, "vocab_size", &c->vocab_size, label));
    DL_TRY(get_int(o, "hidden_size", &c->hidden_size, label));
    DL_TRY(get_int(o, "intermediate_size", &c->intermediate_size, label));
    DL_TRY(get_int(o, "num_hidden_layers", &c->num_layers, label));
    DL_TRY(get_int(o, "num_attention_heads", &c->num_heads, label));
    DL_TRY(get_int(o, "max_position_embeddings", &c->max_positions, label));
    DL_TRY(get_float(o, "layer_norm_eps", &c->layer_norm_eps, label));
    DL_TRY(get_int(o, "bos_token_id", &c->bos_token_id, label));
    DL_TRY(get_int(o, "eos_token_id", &c->eos_token_id, label));
    DL_TRY(get_int(o, "pad_token_id", &c->pad_token_id, label));
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
    if (act) {
        if (cJSON_IsString(act) && !strcmp(act->valuestring, "quick_gelu")) c->act = DL_ACT_QUICK_GELU;
        else if (cJSON_IsString(act) && !strcmp(act->valuestring, "gelu")) c->act = DL_ACT_GELU;
        else
            return dl_error_set("%s: hidden_act \"%s\" is not supported (quick_gelu or gelu)", label,
                                cJSON_IsString(act) ? act->valuestring : "?");
    }
    return dl_clip_config_validate(c, label);
}

int dl_clip_config_parse(dl_clip_config *cfg, const char *json, const char *label)
{
    clip_sd15(cfg);
    cJSON *o = parse_object(json, label);
    if (!o) return DL_ERR;
    int r = clip_parse_obj(cfg, o, label);
    cJSON_Delete(o);
    return r;
}

int dl_clip_config_validate(const dl_clip_config *c, const char *label)
{
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->intermediate_size < 1 || c->num_layers < 1 ||
        c->num_heads < 1 || c->max_positions < 1 || !(c->layer_norm_eps > 0) || c->projection_dim < 0)
        return dl_error_set("%s: a size is out of range (vocab, hidden, intermediate, layers, heads, positions, eps)",
                            label);
    if (c->hidden_size % c->num_heads)
        return dl_error_set("%s: %d heads do not divide hidden size %d", label, c->num_heads, c->hidden_size);
    return DL_OK;
}

int dl_clip_config_load(dl_clip_config *cfg, const char *path)
{
    char *s = read_text(path);
    if (!s) return DL_ERR;
    int r = dl_clip_config_parse(cfg, s, path);
    free(s);
    return r;
}

/* ---------------------------------------------------------------- scheduler */

int dl_prediction_parse(dl_prediction *pred, const char *json, const char *label)
{
    cJSON *o = parse_object(json, label);
    if (!o) return DL_ERR;
    int r = DL_OK;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, "prediction_type");
    *pred = DL_PRED_EPSILON;
    if (j) {
        if (cJSON_IsString(j) && !strcmp(j->valuestring, "epsilon")) *pred = DL_PRED_EPSILON;
        else if (cJSON_IsString(j) && !strcmp(j->valuestring, "v_prediction")) *pred = DL_PRED_V;
        else
            r = dl_error_set("%s: prediction_type \"%s\" is not supported (epsilon or v_prediction)", label,
                             cJSON_IsString(j) ? j->valuestring : "?");
    }
    cJSON_Delete(o);
    return r;
}

int dl_prediction_load(dl_prediction *pred, const char *path)
{
    char *s = read_text(path);
    if (!s) return DL_ERR;
    int r = dl_prediction_parse(pred, s, path);
    free(s);
    return r;
}

/* ---------------------------------------------------------------- writing */

static cJSON *int_array(const int *v, int n)
{
    return cJSON_CreateIntArray(v, n);
}

static cJSON *str_array_kinds(const int *kinds, int n, const char *yes, const char *no)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(kinds[i] ? yes : no));
    return a;
}

/* A float field as the shortest decimal that reads back as the same float: 1e-05, not
 * 9.99999974737875e-06 (the float's exact double value). diffusers and transformers keep what
 * config.json says as a Python float, so the long form would change the eps they compute with. */
static void add_float(cJSON *o, const char *name, float v)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    cJSON_AddNumberToObject(o, name, strtod(buf, NULL));
}

static char *print_and_free(cJSON *o)
{
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

char *dl_unet_config_to_json(const dl_unet_config *c)
{
    cJSON *o = cJSON_CreateObject();
    int n = c->n_blocks;
    cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
    cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddItemToObject(o, "down_block_types", str_array_kinds(c->down_cross_attn, n, "CrossAttnDownBlock2D", "DownBlock2D"));
    cJSON_AddStringToObject(o, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddItemToObject(o, "up_block_types", str_array_kinds(c->up_cross_attn, n, "CrossAttnUpBlock2D", "UpBlock2D"));
    cJSON_AddItemToObject(o, "block_out_channels", int_array(c->block_out_channels, n));
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    add_float(o, "norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(o, "cross_attention_dim", c->cross_attention_dim);
    cJSON_AddItemToObject(o, "transformer_layers_per_block", int_array(c->transformer_layers, n));
    cJSON_AddItemToObject(o, "attention_head_dim", int_array(c->num_heads, n)); /* diffusers: = heads */
    cJSON_AddBoolToObject(o, "use_linear_projection", c->use_linear_projection);
    cJSON_AddBoolToObject(o, "upcast_attention", c->upcast_attention);
    if (c->addition_embed == DL_ADD_TEXT_TIME) {
        cJSON_AddStringToObject(o, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(o, "addition_time_embed_dim", c->addition_time_embed_dim);
        cJSON_AddNumberToObject(o, "projection_class_embeddings_input_dim", c->projection_class_embeddings_input_dim);
    }
    return print_and_free(o);
}

char *dl_vae_config_to_json(const dl_vae_config *c)
{
    static const int down[DL_MAX_BLOCKS] = {0};
    cJSON *o = cJSON_CreateObject();
    int n = c->n_blocks;
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderKL");
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddItemToObject(o, "down_block_types", str_array_kinds(down, n, "", "DownEncoderBlock2D"));
    cJSON_AddItemToObject(o, "up_block_types", str_array_kinds(down, n, "", "UpDecoderBlock2D"));
    cJSON_AddItemToObject(o, "block_out_channels", int_array(c->block_out_channels, n));
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    cJSON_AddNumberToObject(o, "latent_channels", c->latent_channels);
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    add_float(o, "scaling_factor", c->scaling_factor);
    cJSON_AddBoolToObject(o, "use_quant_conv", c->use_quant_conv);
    cJSON_AddBoolToObject(o, "use_post_quant_conv", c->use_post_quant_conv);
    cJSON_AddBoolToObject(o, "mid_block_add_attention", c->mid_attention);
    return print_and_free(o);
}

char *dl_clip_config_to_json(const dl_clip_config *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *ar = cJSON_CreateArray();
    cJSON_AddItemToArray(ar, cJSON_CreateString(c->projection_dim ? "CLIPTextModelWithProjection" : "CLIPTextModel"));
    cJSON_AddItemToObject(o, "architectures", ar);
    cJSON_AddStringToObject(o, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->num_heads);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_positions);
    cJSON_AddStringToObject(o, "hidden_act", c->act == DL_ACT_GELU ? "gelu" : "quick_gelu");
    add_float(o, "layer_norm_eps", c->layer_norm_eps);
    cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
    cJSON_AddNumberToObject(o, "eos_token_id", c->eos_token_id);
    cJSON_AddNumberToObject(o, "pad_token_id", c->pad_token_id);
    cJSON_AddNumberToObject(o, "projection_dim", c->projection_dim ? c->projection_dim : c->hidden_size);
    return print_and_free(o);
}

char *dl_scheduler_config_to_json(dl_prediction pred)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "PNDMScheduler");
    cJSON_AddNumberToObject(o, "beta_start", 0.00085);
    cJSON_AddNumberToObject(o, "beta_end", 0.012);
    cJSON_AddStringToObject(o, "beta_schedule", "scaled_linear");
    cJSON_AddNumberToObject(o, "num_train_timesteps", 1000);
    cJSON_AddStringToObject(o, "prediction_type", pred == DL_PRED_V ? "v_prediction" : "epsilon");
    cJSON_AddBoolToObject(o, "set_alpha_to_one", 0);
    cJSON_AddBoolToObject(o, "skip_prk_steps", 1);
    cJSON_AddNumberToObject(o, "steps_offset", 1);
    return print_and_free(o);
}

/* ---------------------------------------------------------------- comparison */

#define DIFF(f) do { if (memcmp(&a->f, &b->f, sizeof a->f)) return #f; } while (0)

const char *dl_unet_config_diff(const dl_unet_config *a, const dl_unet_config *b)
{
    DIFF(in_channels); DIFF(out_channels); DIFF(n_blocks); DIFF(block_out_channels);
    DIFF(down_cross_attn); DIFF(up_cross_attn); DIFF(layers_per_block); DIFF(num_heads);
    DIFF(transformer_layers); DIFF(cross_attention_dim); DIFF(use_linear_projection);
    DIFF(upcast_attention); DIFF(norm_num_groups); DIFF(norm_eps); DIFF(time_embed_dim);
    DIFF(flip_sin_to_cos); DIFF(freq_shift); DIFF(sample_size); DIFF(prediction);
    DIFF(addition_embed); DIFF(addition_time_embed_dim); DIFF(projection_class_embeddings_input_dim);
    DIFF(addition_time_ids);
    return NULL;
}

const char *dl_vae_config_diff(const dl_vae_config *a, const dl_vae_config *b)
{
    DIFF(in_channels); DIFF(out_channels); DIFF(latent_channels); DIFF(n_blocks); DIFF(block_out_channels);
    DIFF(layers_per_block); DIFF(norm_num_groups); DIFF(mid_attention); DIFF(use_quant_conv);
    DIFF(use_post_quant_conv); DIFF(scaling_factor); DIFF(sample_size);
    return NULL;
}

const char *dl_clip_config_diff(const dl_clip_config *a, const dl_clip_config *b)
{
    DIFF(vocab_size); DIFF(hidden_size); DIFF(intermediate_size); DIFF(num_layers); DIFF(num_heads);
    DIFF(max_positions); DIFF(act); DIFF(layer_norm_eps); DIFF(bos_token_id); DIFF(eos_token_id);
    DIFF(pad_token_id); DIFF(projection_dim);
    return NULL;
}
