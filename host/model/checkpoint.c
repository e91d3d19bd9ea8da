/* checkpoint.c - open SD 1.x/2.x and SDXL checkpoints (single file or diffusers folder), map
 * diffusers names to ldm / SGM keys, detect the config from a single file's tensors, load weights
 * to fp32. */
#include "model/checkpoint.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"
#include "core/error.h"
#include "core/threadpool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define P_UNET "model.diffusion_model."
#define P_VAE "first_stage_model."
#define P_TEXT_HF "cond_stage_model.transformer."
#define P_TEXT_OC "cond_stage_model.model."
#define P_TEXT_XL "conditioner.embedders.0.transformer." /* SDXL's first text encoder (CLIP ViT-L) */
#define P_TEXT_XL2 "conditioner.embedders.1.model."     /* SDXL's second text encoder (OpenCLIP ViT-bigG) */
#define P_XL "conditioner.embedders."                    /* SDXL's text encoders (SGM's conditioner) */

const char *dl_part_name(dl_part part)
{
    switch (part) {
    case DL_PART_UNET: return "unet";
    case DL_PART_VAE: return "vae";
    case DL_PART_TEXT: return "text_encoder";
    case DL_PART_TEXT2: return "text_encoder_2";
    default: return "?";
    }
}

/* ---------------------------------------------------------------- the weights of a config */

/* Each network's loader, run in listing mode, lists its weights. */
int dl_model_weights(const dl_model_config *cfg, dl_part part, dl_weight_fn fn, void *user)
{
    switch (part) {
    case DL_PART_UNET: return dl_unet_list_weights(&cfg->unet, fn, user);
    case DL_PART_VAE: return dl_vae_list_weights(&cfg->vae, fn, user);
    case DL_PART_TEXT: return dl_clip_list_weights(&cfg->text, fn, user);
    case DL_PART_TEXT2: return cfg->text2.num_layers ? dl_clip_list_weights_as(&cfg->text2, DL_PART_TEXT2, fn, user) : DL_OK;
    default: return dl_error_set("dl_model_weights: bad part %d", (int)part);
    }
}

/* ---------------------------------------------------------------- diffusers -> ldm names */

/* Parse "<word>.<int>." at *s; advances *s past it. */
static int take_index(const char **s, const char *word, int *idx)
{
    size_t n = strlen(word);
    if (strncmp(*s, word, n) || (*s)[n] != '.') return 0;
    char *end;
    long v = strtol(*s + n + 1, &end, 10);
    if (end == *s + n + 1 || *end != '.' || v < 0 || v > 1000) return 0;
    *idx = (int)v;
    *s = end + 1;
    return 1;
}

static int take(const char **s, const char *word)
{
    size_t n = strlen(word);
    if (strncmp(*s, word, n)) return 0;
    *s += n;
    return 1;
}

/* Resnet parameter names: diffusers -> ldm UNet. */
static const char *unet_res_name(const char **rest)
{
    static const char *const map[][2] = {{"norm1.", "in_layers.0."},        {"conv1.", "in_layers.2."},
                                         {"time_emb_proj.", "emb_layers.1."}, {"norm2.", "out_layers.0."},
                                         {"conv2.", "out_layers.3."},       {"conv_shortcut.", "skip_connection."}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (take(rest, map[i][0])) return map[i][1];
    return NULL;
}

static int fmt_key(dl_ckpt_key *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fmt_key(dl_ckpt_key *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(k->key, sizeof k->key, fmt, ap);
    va_end(ap);
    return n > 0 && (size_t)n < sizeof k->key ? DL_OK : DL_ERR;
}

static int map_unet(const dl_unet_config *u, const char *name, dl_ckpt_key *k)
{
    static const char *const fixed[][2] = {
        {"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
        {"add_embedding.linear_1.", "label_emb.0.0."},  {"add_embedding.linear_2.", "label_emb.0.2."},
        {"conv_in.", "input_blocks.0.0."},            {"conv_norm_out.", "out.0."},
        {"conv_out.", "out.2."}};
    const int L = u->layers_per_block, n = u->n_blocks;
    const char *s = name, *r;
    int i, j;
    for (size_t f = 0; f < sizeof fixed / sizeof fixed[0]; f++)
        if (take(&s, fixed[f][0])) return fmt_key(k, P_UNET "%s%s", fixed[f][1], s);
    if (take_index(&s, "down_blocks", &i) && i < n) {
        if (take_index(&s, "resnets", &j) && j < L && (r = unet_res_name(&s)))
            return fmt_key(k, P_UNET "input_blocks.%d.0.%s%s", 1 + i * (L + 1) + j, r, s);
        if (take_index(&s, "attentions", &j) && j < L && u->down_cross_attn[i])
            return fmt_key(k, P_UNET "input_blocks.%d.1.%s", 1 + i * (L + 1) + j, s);
        if (take(&s, "downsamplers.0.conv.") && i < n - 1)
            return fmt_key(k, P_UNET "input_blocks.%d.0.op.%s", 1 + i * (L + 1) + L, s);
        return DL_ERR;
    }
    if (take(&s, "mid_block.")) {
        if (take_index(&s, "resnets", &j) && j < 2 && (r = unet_res_name(&s)))
            return fmt_key(k, P_UNET "middle_block.%d.%s%s", 2 * j, r, s);
        if (take(&s, "attentions.0.")) return fmt_key(k, P_UNET "middle_block.1.%s", s);
        return DL_ERR;
    }
    if (take_index(&s, "up_blocks", &i) && i < n) {
        if (take_index(&s, "resnets", &j) && j <= L && (r = unet_res_name(&s)))
            return fmt_key(k, P_UNET "output_blocks.%d.0.%s%s", i * (L + 1) + j, r, s);
        if (take_index(&s, "attentions", &j) && j <= L && u->up_cross_attn[i])
            return fmt_key(k, P_UNET "output_blocks.%d.1.%s", i * (L + 1) + j, s);
        if (take(&s, "upsamplers.0.conv.") && i < n - 1)
            return fmt_key(k, P_UNET "output_blocks.%d.%d.conv.%s", i * (L + 1) + L, u->up_cross_attn[i] ? 2 : 1, s);
    }
    return DL_ERR;
}

/* VAE resnet rest: conv_shortcut -> nin_shortcut, everything else unchanged. */
static int vae_res(dl_ckpt_key *k, const char *pre, const char *s)
{
    const char *t = s;
    if (take(&t, "conv_shortcut.")) return fmt_key(k, P_VAE "%snin_shortcut.%s", pre, t);
    return fmt_key(k, P_VAE "%s%s", pre, s);
}

static int map_vae(const dl_vae_config *v, const char *name, dl_ckpt_key *k)
{
    const int n = v->n_blocks;
    const char *s = name;
    char pre[96];
    int i, j, enc;
    if (take(&s, "quant_conv.") || take(&s, "post_quant_conv.")) return fmt_key(k, P_VAE "%s", name);
    if (take(&s, "encoder.")) enc = 1;
    else if (take(&s, "decoder.")) enc = 0;
    else return DL_ERR;
    const char *side = enc ? "encoder" : "decoder";
    if (take(&s, "conv_in.") || take(&s, "conv_out.")) return fmt_key(k, P_VAE "%s", name);
    if (take(&s, "conv_norm_out.")) return fmt_key(k, P_VAE "%s.norm_out.%s", side, s);
    if (enc && take_index(&s, "down_blocks", &i) && i < n) {
        if (take_index(&s, "resnets", &j) && j < v->layers_per_block) {
            snprintf(pre, sizeof pre, "encoder.down.%d.block.%d.", i, j);
            return vae_res(k, pre, s);
        }
        if (take(&s, "downsamplers.0.conv.") && i < n - 1) return fmt_key(k, P_VAE "encoder.down.%d.downsample.conv.%s", i, s);
        return DL_ERR;
    }
    if (!enc && take_index(&s, "up_blocks", &i) && i < n) {
        if (take_index(&s, "resnets", &j) && j <= v->layers_per_block) {
            snprintf(pre, sizeof pre, "decoder.up.%d.block.%d.", n - 1 - i, j);
            return vae_res(k, pre, s);
        }
        if (take(&s, "upsamplers.0.conv.") && i < n - 1)
            return fmt_key(k, P_VAE "decoder.up.%d.upsample.conv.%s", n - 1 - i, s);
        return DL_ERR;
    }
    if (take(&s, "mid_block.")) {
        if (take_index(&s, "resnets", &j) && j < 2) {
            snprintf(pre, sizeof pre, "%s.mid.block_%d.", side, j + 1);
            return vae_res(k, pre, s);
        }
        if (take(&s, "attentions.0.")) {
            static const char *const map[][2] = {{"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."},
                                                 {"to_v.", "v."},          {"to_out.0.", "proj_out."}};
            for (size_t m = 0; m < sizeof map / sizeof map[0]; m++)
                if (take(&s, map[m][0])) {
                    k->conv1x1 = m > 0 && !strcmp(s, "weight");
                    return fmt_key(k, P_VAE "%s.mid.attn_1.%s%s", side, map[m][1], s);
                }
        }
    }
    return DL_ERR;
}

/* A transformers CLIP text model name in OpenCLIP's naming under prefix pre (SD2's
 * cond_stage_model.model., SDXL's conditioner.embedders.1.model.): q/k/v are thirds of the fused
 * attn.in_proj_*, the projection is stored [in, out] (the text tower computes x @ text_projection). */
static int map_openclip(const char *pre, const char *name, dl_ckpt_key *k)
{
    const char *s = name;
    if (!strcmp(s, "text_projection.weight")) {
        k->transpose = 1;
        return fmt_key(k, "%stext_projection", pre);
    }
    if (!take(&s, "text_model.")) return DL_ERR;
    if (!strcmp(s, "embeddings.token_embedding.weight")) return fmt_key(k, "%stoken_embedding.weight", pre);
    if (!strcmp(s, "embeddings.position_embedding.weight")) return fmt_key(k, "%spositional_embedding", pre);
    if (take(&s, "final_layer_norm.")) return fmt_key(k, "%sln_final.%s", pre, s);
    int l;
    if (!take(&s, "encoder.") || !take_index(&s, "layers", &l)) return DL_ERR;
    static const char *const qkv[3] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
    for (int q = 0; q < 3; q++)
        if (take(&s, qkv[q])) {
            k->split = q;
            return fmt_key(k, "%stransformer.resblocks.%d.attn.in_proj_%s", pre, l, s);
        }
    static const char *const map[][2] = {{"self_attn.out_proj.", "attn.out_proj."}, {"layer_norm1.", "ln_1."},
                                         {"layer_norm2.", "ln_2."},             {"mlp.fc1.", "mlp.c_fc."},
                                         {"mlp.fc2.", "mlp.c_proj."}};
    for (size_t m = 0; m < sizeof map / sizeof map[0]; m++)
        if (take(&s, map[m][0])) return fmt_key(k, "%stransformer.resblocks.%d.%s%s", pre, l, map[m][1], s);
    return DL_ERR;
}

static int map_text(dl_text_layout tl, const char *name, dl_ckpt_key *k)
{
    const char *s = name;
    if (tl == DL_TEXT_HF) return fmt_key(k, P_TEXT_HF "%s", name);
    if (tl == DL_TEXT_SDXL) return fmt_key(k, P_TEXT_XL "%s", name);
    if (tl == DL_TEXT_HF_OLD) return take(&s, "text_model.") ? fmt_key(k, P_TEXT_HF "%s", s) : DL_ERR;
    if (!strncmp(name, "text_projection.", 16)) return DL_ERR; /* SD2's single files: CLIPTextModel */
    return map_openclip(P_TEXT_OC, name, k);
}

int dl_ckpt_map_single(const dl_model_config *cfg, dl_text_layout tl, dl_part part, const char *name, dl_ckpt_key *out)
{
    out->key[0] = 0;
    out->split = -1;
    out->conv1x1 = 0;
    out->transpose = 0;
    int r = DL_ERR;
    switch (part) {
    case DL_PART_UNET: r = map_unet(&cfg->unet, name, out); break;
    case DL_PART_VAE: r = map_vae(&cfg->vae, name, out); break;
    case DL_PART_TEXT: r = map_text(tl, name, out); break;
    case DL_PART_TEXT2: r = cfg->text2.num_layers ? map_openclip(P_TEXT_XL2, name, out) : DL_ERR; break;
    default: break;
    }
    if (r != DL_OK) return dl_error_set("'%s' is not a %s tensor name of this architecture", name, dl_part_name(part));
    return DL_OK;
}

/* ---------------------------------------------------------------- opening */

/* For callers that do not handle SDXL (dl_ckpt_options.allow_sdxl 0). */
static int refuse_sdxl(const char *path)
{
    return dl_error_set("%s: an SDXL checkpoint: danlu runs its networks (danlu run), samples from it with LoRAs "
                        "(danlu sample, grid) and converts it (danlu lora, convert), but SDXL training is not "
                        "supported yet", path);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

static int refuse_pickle(const char *path)
{
    return dl_error_set(
        "%s: a PyTorch pickle checkpoint; danlu never loads pickles because unpickling can run arbitrary code. "
        "Convert it once to .safetensors, e.g.\n"
        "  python -c \"import torch, safetensors.torch as st; sd = torch.load('IN.ckpt', map_location='cpu', "
        "weights_only=True); sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous().clone() for k, v in "
        "sd.items() if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\"\n"
        "or to a diffusers folder with diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py "
        "--checkpoint_path IN.ckpt --dump_path OUT_DIR --to_safetensors",
        path);
}

/* 1 if the file starts like a pickle (protocol 2+) or a zip (torch.save's format). */
static int looks_like_pickle(const char *path)
{
    unsigned char b[4] = {0};
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    size_t n = fread(b, 1, 4, fp);
    fclose(fp);
    if (n < 2) return 0;
    return (b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) || (n == 4 && !memcmp(b, "PK\x03\x04", 4));
}

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

static int open_file(dl_checkpoint *ck, int idx, const char *full, const char *label)
{
    if (dl_st_open(&ck->files[idx], full) != DL_OK) {
        dl_st_close(&ck->files[idx]); /* frees what a failed open kept (its path) */
        return DL_ERR;
    }
    ck->n_files = idx + 1;
    ck->file_label[idx] = strdup(label);
    ck->used[idx] = calloc((size_t)ck->files[idx].n_tensors + 1, 1);
    if (!ck->file_label[idx] || !ck->used[idx]) return dl_error_set("%s: out of memory", full);
    return DL_OK;
}

/* One component of a diffusers folder: sub/<names...>.safetensors. */
static int open_part(dl_checkpoint *ck, dl_part part, const char *sub, const char *base)
{
    char rel[160], *full = NULL;
    static const char *const variants[] = {"", ".fp16"};
    for (int v = 0; v < 2; v++) {
        snprintf(rel, sizeof rel, "%s/%s%s.safetensors", sub, base, variants[v]);
        full = join(ck->path, rel);
        if (full && file_exists(full)) break;
        free(full);
        full = NULL;
    }
    if (!full) {
        snprintf(rel, sizeof rel, "%s/%s.safetensors.index.json", sub, base);
        char *idx = join(ck->path, rel);
        int sharded = idx && file_exists(idx);
        free(idx);
        if (sharded) return dl_error_set("%s/%s: sharded weights (%s) are not supported", ck->path, sub, rel);
        snprintf(rel, sizeof rel, "%s/%s.bin", sub, base);
        char *bin = join(ck->path, rel);
        int pickle = bin && file_exists(bin);
        if (pickle) {
            refuse_pickle(bin);
            free(bin);
            return DL_ERR;
        }
        free(bin);
        return dl_error_set("%s: no %s/%s.safetensors (the %s of a diffusers folder)", ck->path, sub, base,
                            dl_part_name(part));
    }
    int r = open_file(ck, (int)part, full, rel);
    free(full);
    ck->part_file[part] = (int)part;
    return r;
}

static int open_diffusers(dl_checkpoint *ck, const dl_ckpt_options *opt)
{
    char *p;
    int r;
#define LOAD_CFG(rel, fn, dst)                                                          \
    do {                                                                                \
        p = join(ck->path, rel);                                                        \
        if (!p) return dl_error_set("out of memory");                                   \
        if (!file_exists(p)) {                                                          \
            r = dl_error_set("%s: no %s (not a diffusers Stable Diffusion folder)", ck->path, rel); \
        } else r = fn(dst, p);                                                          \
        free(p);                                                                        \
        DL_TRY(r);                                                                      \
    } while (0)
    LOAD_CFG("unet/config.json", dl_unet_config_load, &ck->cfg.unet);
    if (ck->cfg.unet.addition_embed != DL_ADD_NONE && !opt->allow_sdxl) return refuse_sdxl(ck->path);
    LOAD_CFG("vae/config.json", dl_vae_config_load, &ck->cfg.vae);
    LOAD_CFG("text_encoder/config.json", dl_clip_config_load, &ck->cfg.text);
#undef LOAD_CFG
    DL_TRY(open_part(ck, DL_PART_UNET, "unet", "diffusion_pytorch_model"));
    DL_TRY(open_part(ck, DL_PART_VAE, "vae", "diffusion_pytorch_model"));
    DL_TRY(open_part(ck, DL_PART_TEXT, "text_encoder", "model"));
    if (ck->cfg.unet.addition_embed != DL_ADD_NONE) { /* SDXL's second text encoder, when there */
        p = join(ck->path, "text_encoder_2/config.json");
        if (!p) return dl_error_set("out of memory");
        r = file_exists(p) ? dl_clip_config_load(&ck->cfg.text2, p) : DL_OK;
        free(p);
        DL_TRY(r);
        if (ck->cfg.text2.num_layers) DL_TRY(open_part(ck, DL_PART_TEXT2, "text_encoder_2", "model"));
    }
    if (opt->prediction < 0) {
        p = join(ck->path, "scheduler/scheduler_config.json");
        r = DL_OK;
        if (p && file_exists(p)) r = dl_prediction_load(&ck->cfg.unet.prediction, p);
        free(p);
        DL_TRY(r);
    }
    char *v = join(ck->path, "tokenizer/vocab.json"), *m = join(ck->path, "tokenizer/merges.txt");
    if (v && m && file_exists(v) && file_exists(m)) ck->tokenizer_dir = join(ck->path, "tokenizer");
    free(v);
    free(m);
    v = join(ck->path, "tokenizer_2/vocab.json"), m = join(ck->path, "tokenizer_2/merges.txt");
    if (ck->cfg.text2.num_layers && v && m && file_exists(v) && file_exists(m))
        ck->tokenizer2_dir = join(ck->path, "tokenizer_2");
    free(v);
    free(m);
    ck->sdxl = ck->cfg.unet.addition_embed != DL_ADD_NONE;
    ck->sd2 = !ck->sdxl && (ck->cfg.unet.use_linear_projection || ck->cfg.text.act == DL_ACT_GELU);
    return DL_OK;
}

/* ---------------------------------------------------------------- detection from a single file */

static const dl_st_tensor *findf(const dl_checkpoint *ck, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const dl_st_tensor *findf(const dl_checkpoint *ck, const char *fmt, ...)
{
    char name[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return dl_st_find(&ck->files[0], name);
}

/* Largest index k over keys "<prefix>k." (-1 if none). */
static int max_index(const dl_st_file *f, const char *prefix)
{
    size_t n = strlen(prefix);
    int best = -1;
    for (int i = 0; i < f->n_tensors; i++) {
        const char *s = f->tensors[i].name;
        if (strncmp(s, prefix, n)) continue;
        char *end;
        long v = strtol(s + n, &end, 10);
        if (end != s + n && *end == '.' && v > best && v < 100000) best = (int)v;
    }
    return best;
}

static int has_prefix(const dl_st_file *f, const char *prefix)
{
    size_t n = strlen(prefix);
    for (int i = 0; i < f->n_tensors; i++)
        if (!strncmp(f->tensors[i].name, prefix, n)) return 1;
    return 0;
}

/* Transformer blocks in the attention at <prefix> (0 when there is none). */
static int count_tblocks(const dl_checkpoint *ck, const char *prefix)
{
    char p[200];
    snprintf(p, sizeof p, "%stransformer_blocks.", prefix);
    return max_index(&ck->files[0], p) + 1;
}

static int detect_unet(dl_checkpoint *ck)
{
    dl_unet_config *u = &ck->cfg.unet;
    const dl_st_file *f = &ck->files[0];
    const char *path = ck->path;
    const dl_st_tensor *t = findf(ck, P_UNET "input_blocks.0.0.weight");
    if (!t || t->ndim != 4) return dl_error_set("%s: no UNet (" P_UNET "input_blocks.0.0.weight)", path);
    const int xl = ck->sdxl;
    if (has_prefix(f, P_UNET "label_emb.") && !xl)
        return dl_error_set("%s: UNet with class embeddings (" P_UNET "label_emb.* without SDXL's "
                            "conditioner.embedders.* text encoders: SD 2.x unCLIP?) is not supported", path);
    u->addition_embed = DL_ADD_NONE;
    u->addition_time_embed_dim = u->projection_class_embeddings_input_dim = u->addition_time_ids = 0;
    if (xl) { /* text_time: label_emb.0.0 is add_embedding.linear_1 [Td, P] */
        const dl_st_tensor *le = findf(ck, P_UNET "label_emb.0.0.weight");
        if (!le || le->ndim != 2)
            return dl_error_set("%s: an SDXL checkpoint without its UNet's added conditioning (" P_UNET
                                "label_emb.0.0.weight)", path);
        u->addition_embed = DL_ADD_TEXT_TIME;
        u->projection_class_embeddings_input_dim = (int)le->shape[1];
        /* not in the weights: SDXL's sinusoid width, and its pipelines' time ids (6; the refiner,
         * P = 1280 + 5 x 256, takes 5) */
        u->addition_time_embed_dim = 256;
        u->addition_time_ids = u->projection_class_embeddings_input_dim == 1280 + 5 * 256 ? 5 : 6;
    }
    u->in_channels = (int)t->shape[1];
    int c0 = (int)t->shape[0];
    if (!(t = findf(ck, P_UNET "out.2.weight"))) return dl_error_set("%s: no " P_UNET "out.2.weight", path);
    u->out_channels = (int)t->shape[0];
    if (!(t = findf(ck, P_UNET "time_embed.0.weight"))) return dl_error_set("%s: no " P_UNET "time_embed.0.weight", path);
    u->time_embed_dim = (int)t->shape[0];
    int max_in = max_index(f, P_UNET "input_blocks.");
    int L = -1;
    for (int k = 1; k <= max_in; k++)
        if (findf(ck, P_UNET "input_blocks.%d.0.op.weight", k)) { L = k - 1; break; }
    if (L < 0) L = max_in; /* a single block: no downsampler */
    if (L < 1 || max_in % (L + 1) != L) return dl_error_set("%s: cannot make out the UNet's input blocks", path);
    int n = max_in / (L + 1) + 1;
    if (n > DL_MAX_BLOCKS) return dl_error_set("%s: %d UNet blocks (at most %d)", path, n, DL_MAX_BLOCKS);
    if (max_index(f, P_UNET "output_blocks.") != n * (L + 1) - 1)
        return dl_error_set("%s: UNet output blocks do not mirror the %d input blocks", path, max_in);
    u->n_blocks = n;
    u->layers_per_block = L;
    memset(u->block_out_channels, 0, sizeof u->block_out_channels);
    memset(u->down_cross_attn, 0, sizeof u->down_cross_attn);
    memset(u->up_cross_attn, 0, sizeof u->up_cross_attn);
    memset(u->num_heads, 0, sizeof u->num_heads);
    memset(u->transformer_layers, 0, sizeof u->transformer_layers);
    const dl_st_tensor *proj = findf(ck, P_UNET "middle_block.1.proj_in.weight");
    if (!proj) return dl_error_set("%s: no UNet mid-block attention (" P_UNET "middle_block.1.proj_in.weight)", path);
    u->use_linear_projection = proj->ndim == 2;
    if (!(t = findf(ck, P_UNET "middle_block.1.transformer_blocks.0.attn2.to_k.weight")) || t->ndim != 2)
        return dl_error_set("%s: no " P_UNET "middle_block.1.transformer_blocks.0.attn2.to_k.weight", path);
    u->cross_attention_dim = (int)t->shape[1];
    ck->sd2 = !xl && (ck->text_layout == DL_TEXT_OPENCLIP || u->use_linear_projection);
    char pre[128];
    for (int i = 0; i < n; i++) {
        if (!(t = findf(ck, P_UNET "input_blocks.%d.0.out_layers.3.weight", 1 + i * (L + 1))))
            return dl_error_set("%s: no " P_UNET "input_blocks.%d.0.out_layers.3.weight", path, 1 + i * (L + 1));
        u->block_out_channels[i] = (int)t->shape[0];
        u->down_cross_attn[i] = findf(ck, P_UNET "input_blocks.%d.1.proj_in.weight", 1 + i * (L + 1)) != NULL;
        u->up_cross_attn[i] = findf(ck, P_UNET "output_blocks.%d.1.proj_in.weight", i * (L + 1)) != NULL;
    }
    for (int i = 0; i < n; i++) {
        int ch = u->block_out_channels[i];
        /* Heads are not in the weights: SD1 uses 8 heads, SD2 and SDXL a head dim of 64. */
        u->num_heads[i] = ck->sd2 || xl ? (ch % 64 ? 0 : ch / 64) : 8;
        int tl = 0, up = n - 1 - i;
        if (u->down_cross_attn[i]) snprintf(pre, sizeof pre, P_UNET "input_blocks.%d.1.", 1 + i * (L + 1));
        else if (u->up_cross_attn[up]) snprintf(pre, sizeof pre, P_UNET "output_blocks.%d.1.", up * (L + 1));
        else if (i == n - 1) snprintf(pre, sizeof pre, P_UNET "middle_block.1.");
        else pre[0] = 0;
        tl = pre[0] ? count_tblocks(ck, pre) : 1;
        u->transformer_layers[i] = tl;
    }
    if (u->block_out_channels[0] != c0) return dl_error_set("%s: conv_in width %d differs from block 0 (%d)", path, c0, u->block_out_channels[0]);
    return dl_unet_config_validate(u, path);
}

static int detect_vae(dl_checkpoint *ck)
{
    dl_vae_config *v = &ck->cfg.vae;
    const char *path = ck->path;
    const dl_st_tensor *t = findf(ck, P_VAE "encoder.conv_in.weight");
    if (!t || t->ndim != 4) return dl_error_set("%s: no VAE (" P_VAE "encoder.conv_in.weight)", path);
    v->in_channels = (int)t->shape[1];
    int n = max_index(&ck->files[0], P_VAE "encoder.down.") + 1;
    if (n < 1 || n > DL_MAX_BLOCKS) return dl_error_set("%s: cannot make out the VAE's encoder blocks", path);
    v->n_blocks = n;
    v->layers_per_block = max_index(&ck->files[0], P_VAE "encoder.down.0.block.") + 1;
    memset(v->block_out_channels, 0, sizeof v->block_out_channels);
    for (int i = 0; i < n; i++) {
        if (!(t = findf(ck, P_VAE "encoder.down.%d.block.0.conv2.weight", i)))
            return dl_error_set("%s: no " P_VAE "encoder.down.%d.block.0.conv2.weight", path, i);
        v->block_out_channels[i] = (int)t->shape[0];
    }
    if (!(t = findf(ck, P_VAE "decoder.conv_in.weight"))) return dl_error_set("%s: no " P_VAE "decoder.conv_in.weight", path);
    v->latent_channels = (int)t->shape[1];
    if (!(t = findf(ck, P_VAE "decoder.conv_out.weight"))) return dl_error_set("%s: no " P_VAE "decoder.conv_out.weight", path);
    v->out_channels = (int)t->shape[0];
    v->use_quant_conv = findf(ck, P_VAE "quant_conv.weight") != NULL;
    v->use_post_quant_conv = findf(ck, P_VAE "post_quant_conv.weight") != NULL;
    v->mid_attention = findf(ck, P_VAE "encoder.mid.attn_1.q.weight") != NULL;
    return dl_vae_config_validate(v, path);
}

static int detect_text(dl_checkpoint *ck)
{
    dl_clip_config *c = &ck->cfg.text;
    const char *path = ck->path;
    const dl_st_tensor *tok, *pos, *fc;
    int layers;
    if (ck->text_layout == DL_TEXT_OPENCLIP) {
        tok = findf(ck, P_TEXT_OC "token_embedding.weight");
        pos = findf(ck, P_TEXT_OC "positional_embedding");
        fc = findf(ck, P_TEXT_OC "transformer.resblocks.0.mlp.c_fc.weight");
        /* SD2 never uses the last of OpenCLIP's layers (diffusers' config drops it too). */
        layers = max_index(&ck->files[0], P_TEXT_OC "transformer.resblocks.");
        c->act = DL_ACT_GELU;
    } else {
        const char *p = ck->text_layout == DL_TEXT_HF     ? P_TEXT_HF "text_model."
                        : ck->text_layout == DL_TEXT_SDXL ? P_TEXT_XL "text_model."
                                                          : P_TEXT_HF;
        tok = findf(ck, "%sembeddings.token_embedding.weight", p);
        pos = findf(ck, "%sembeddings.position_embedding.weight", p);
        fc = findf(ck, "%sencoder.layers.0.mlp.fc1.weight", p);
        char q[128];
        snprintf(q, sizeof q, "%sencoder.layers.", p);
        layers = max_index(&ck->files[0], q) + 1;
        c->act = DL_ACT_QUICK_GELU;
    }
    if (!tok || !pos || !fc || tok->ndim != 2 || pos->ndim != 2 || fc->ndim != 2 || layers < 1)
        return dl_error_set("%s: incomplete text encoder (token/position embeddings, layers)", path);
    c->vocab_size = (int)tok->shape[0];
    c->hidden_size = (int)tok->shape[1];
    c->max_positions = (int)pos->shape[0];
    c->intermediate_size = (int)fc->shape[0];
    c->num_layers = layers;
    if (c->hidden_size % 64)
        return dl_error_set("%s: text encoder width %d is not a multiple of 64: its head count cannot be inferred "
                            "(use a diffusers folder with text_encoder/config.json)", path, c->hidden_size);
    c->num_heads = c->hidden_size / 64; /* CLIP ViT-L and OpenCLIP ViT-H: head dim 64 */
    c->layer_norm_eps = 1e-5f;
    c->bos_token_id = c->vocab_size - 2; /* 49406, 49407 for CLIP's vocabulary */
    c->eos_token_id = c->vocab_size - 1;
    c->pad_token_id = 1;
    return dl_clip_config_validate(c, path);
}

/* SDXL's second text encoder from conditioner.embedders.1.model.* (OpenCLIP ViT-bigG: every layer
 * is used, GELU, head dim 64, text_projection [hidden, projection_dim]); none: num_layers 0. */
static int detect_text2(dl_checkpoint *ck)
{
    dl_clip_config *c = &ck->cfg.text2;
    const char *path = ck->path;
    memset(c, 0, sizeof *c);
    const dl_st_tensor *tok = findf(ck, P_TEXT_XL2 "token_embedding.weight");
    if (!tok) return DL_OK;
    const dl_st_tensor *pos = findf(ck, P_TEXT_XL2 "positional_embedding");
    const dl_st_tensor *fc = findf(ck, P_TEXT_XL2 "transformer.resblocks.0.mlp.c_fc.weight");
    const dl_st_tensor *proj = findf(ck, P_TEXT_XL2 "text_projection");
    const int layers = max_index(&ck->files[0], P_TEXT_XL2 "transformer.resblocks.") + 1;
    if (!pos || !fc || !proj || tok->ndim != 2 || pos->ndim != 2 || fc->ndim != 2 || proj->ndim != 2 || layers < 1)
        return dl_error_set("%s: incomplete second text encoder (" P_TEXT_XL2 "token_embedding, positional_embedding, "
                            "transformer.resblocks.*, text_projection)", path);
    c->vocab_size = (int)tok->shape[0];
    c->hidden_size = (int)tok->shape[1];
    c->max_positions = (int)pos->shape[0];
    c->intermediate_size = (int)fc->shape[0];
    c->num_layers = layers;
    c->projection_dim = (int)proj->shape[1];
    if (c->hidden_size % 64)
        return dl_error_set("%s: second text encoder width %d is not a multiple of 64: its head count cannot be "
                            "inferred (use a diffusers folder with text_encoder_2/config.json)", path, c->hidden_size);
    c->num_heads = c->hidden_size / 64;
    c->act = DL_ACT_GELU;
    c->layer_norm_eps = 1e-5f;
    c->bos_token_id = c->vocab_size - 2;
    c->eos_token_id = c->vocab_size - 1;
    c->pad_token_id = 1;
    return dl_clip_config_validate(c, path);
}

/* The text encoders', UNet's (or opt->unet_config's) and VAE's configs of a single file. */
static int detect_parts(dl_checkpoint *ck, const dl_ckpt_options *opt)
{
    DL_TRY(detect_text(ck));
    if (ck->sdxl) DL_TRY(detect_text2(ck));
    if (opt->unet_config) {
        DL_TRY(dl_unet_config_load(&ck->cfg.unet, opt->unet_config));
        if ((ck->cfg.unet.addition_embed != DL_ADD_NONE) != ck->sdxl)
            return dl_error_set("%s: %s is %san SDXL UNet config, the checkpoint is %sSDXL", ck->path,
                                opt->unet_config, ck->sdxl ? "not " : "", ck->sdxl ? "" : "not ");
        ck->sd2 = !ck->sdxl && (ck->text_layout == DL_TEXT_OPENCLIP || ck->cfg.unet.use_linear_projection);
    } else {
        DL_TRY(detect_unet(ck));
    }
    DL_TRY(detect_vae(ck));
    return DL_OK;
}

static int open_single(dl_checkpoint *ck, const dl_ckpt_options *opt)
{
    if (open_file(ck, 0, ck->path, ck->path) != DL_OK) {
        if (looks_like_pickle(ck->path)) return refuse_pickle(ck->path);
        return DL_ERR;
    }
    for (int p = 0; p < DL_PART_COUNT; p++) ck->part_file[p] = 0;
    const dl_st_file *f = &ck->files[0];
    ck->sdxl = has_prefix(f, P_XL);
    if (ck->sdxl && !opt->allow_sdxl) return refuse_sdxl(ck->path);
    if (!has_prefix(f, P_UNET) && (dl_st_find(f, "conv_in.weight") || dl_st_find(f, "encoder.conv_in.weight") ||
                                   has_prefix(f, "text_model.")))
        return dl_error_set("%s: a single diffusers component, not a full checkpoint; give the diffusers folder "
                            "or an original-SD single file", ck->path);
    if (ck->sdxl) {
        if (!dl_st_find(f, P_TEXT_XL "text_model.embeddings.token_embedding.weight"))
            return dl_error_set("%s: an SDXL checkpoint without its first text encoder (" P_TEXT_XL
                                "text_model.*)", ck->path);
        ck->text_layout = DL_TEXT_SDXL;
    } else if (dl_st_find(f, P_TEXT_HF "text_model.embeddings.token_embedding.weight")) ck->text_layout = DL_TEXT_HF;
    else if (dl_st_find(f, P_TEXT_HF "embeddings.token_embedding.weight")) ck->text_layout = DL_TEXT_HF_OLD;
    else if (dl_st_find(f, P_TEXT_OC "token_embedding.weight")) ck->text_layout = DL_TEXT_OPENCLIP;
    else
        return dl_error_set("%s: no text encoder (" P_TEXT_HF "*, " P_TEXT_OC "* or " P_TEXT_XL "*): not an SD 1.x/2.x/SDXL checkpoint",
                            ck->path);
    dl_model_config_preset(&ck->cfg, ck->sdxl ? "sdxl" : "sd15");
    if (detect_parts(ck, opt) != DL_OK) {
        if (ck->sdxl) dl_error_prefix("SDXL checkpoint: ");
        return DL_ERR;
    }
    /* Not in the weights: epsilon unless told (SD 2.x 768-v models need the v-prediction flag). */
    ck->cfg.unet.prediction = DL_PRED_EPSILON;
    if (ck->sd2 && opt->prediction == 1) {
        ck->cfg.unet.sample_size = 96;
        ck->cfg.vae.sample_size = 768;
    }
    return DL_OK;
}

int dl_ckpt_open(dl_checkpoint *ck, const char *path, const dl_ckpt_options *opt)
{
    static const dl_ckpt_options defaults = {.prediction = -1};
    if (!opt) opt = &defaults;
    memset(ck, 0, sizeof *ck);
    ck->path = strdup(path);
    if (!ck->path) return dl_error_set("out of memory");
    struct stat st;
    if (stat(path, &st) != 0) {
        free(ck->path);
        ck->path = NULL;
        return dl_error_set("%s: no such file or folder", path);
    }
    int r;
    if (S_ISDIR(st.st_mode)) {
        ck->layout = DL_LAYOUT_DIFFUSERS;
        r = open_diffusers(ck, opt);
    } else {
        ck->layout = DL_LAYOUT_SINGLE;
        if (ends_with(path, ".ckpt") || ends_with(path, ".pt") || ends_with(path, ".pth") || ends_with(path, ".bin"))
            r = refuse_pickle(path);
        else r = open_single(ck, opt);
    }
    if (r == DL_OK && opt->prediction >= 0) ck->cfg.unet.prediction = opt->prediction ? DL_PRED_V : DL_PRED_EPSILON;
    if (r != DL_OK) {
        char *msg = strdup(dl_error_msg());
        dl_ckpt_close(ck);
        dl_error_set("%s", msg ? msg : "out of memory");
        free(msg);
        return DL_ERR;
    }
    return DL_OK;
}

void dl_ckpt_close(dl_checkpoint *ck)
{
    for (int i = 0; i < ck->n_files; i++) {
        dl_st_close(&ck->files[i]);
        free(ck->file_label[i]);
        free(ck->used[i]);
    }
    free(ck->path);
    free(ck->tokenizer_dir);
    free(ck->tokenizer2_dir);
    memset(ck, 0, sizeof *ck);
}

/* ---------------------------------------------------------------- reading */

typedef struct ref {
    int file;
    const dl_st_tensor *t;
    dl_ckpt_key k;
    int ndim;
    int64_t shape[DL_MAX_DIMS]; /* in the diffusers convention */
} ref;

/* Find name; 1 found, 0 missing (r->k.key holds the key looked for), DL_ERR for a bad name. */
static int resolve(const dl_checkpoint *ck, dl_part part, const char *name, ref *r)
{
    memset(r, 0, sizeof *r);
    r->k.split = -1;
    if ((int)part < 0 || part >= DL_PART_COUNT) return dl_error_set("bad model part %d", (int)part);
    if (part == DL_PART_TEXT2 && !ck->cfg.text2.num_layers)
        return dl_error_set("%s: no second text encoder (text_encoder_2/, conditioner.embedders.1.model.*)", ck->path);
    r->file = ck->part_file[part];
    const dl_st_file *f = &ck->files[r->file];
    if (ck->layout == DL_LAYOUT_SINGLE) {
        if (dl_ckpt_map_single(&ck->cfg, ck->text_layout, part, name, &r->k) != DL_OK)
            return dl_error_prefix("%s: ", ck->path);
        r->t = dl_st_find(f, r->k.key);
    } else {
        snprintf(r->k.key, sizeof r->k.key, "%s", name);
        r->t = dl_st_find(f, name);
        if (!r->t && (part == DL_PART_TEXT || part == DL_PART_TEXT2) && !strncmp(name, "text_model.", 11)) {
            /* transformers >= 5 saves CLIPTextModel without the "text_model." prefix */
            r->t = dl_st_find(f, name + 11);
            if (r->t) snprintf(r->k.key, sizeof r->k.key, "%s", name + 11);
        }
        if (!r->t && part == DL_PART_VAE && strstr(name, "mid_block.attentions.0.")) {
            /* older diffusers VAEs: query/key/value/proj_attn */
            static const char *const old[][2] = {{".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."},
                                                 {".to_out.0.", ".proj_attn."}};
            for (int i = 0; i < 4 && !r->t; i++) {
                const char *at = strstr(name, old[i][0]);
                if (!at) continue;
                char alt[256];
                snprintf(alt, sizeof alt, "%.*s%s%s", (int)(at - name), name, old[i][1], at + strlen(old[i][0]));
                r->t = dl_st_find(f, alt);
            }
        }
    }
    if (!r->t) return 0;
    r->ndim = r->t->ndim;
    memcpy(r->shape, r->t->shape, sizeof r->shape);
    if (r->k.transpose) {
        if (r->ndim != 2)
            return dl_error_set("%s: %s has %d dimensions, expected a 2-D projection", ck->path, r->k.key, r->ndim);
        const int64_t t = r->shape[0];
        r->shape[0] = r->shape[1], r->shape[1] = t;
    }
    if (r->k.split >= 0) {
        if (r->ndim < 1 || r->shape[0] % 3)
            return dl_error_set("%s: fused tensor %s has shape[0] = %lld, not a multiple of 3", ck->path, r->k.key,
                                (long long)r->shape[0]);
        r->shape[0] /= 3;
    }
    if (r->ndim == 4 && r->shape[2] == 1 && r->shape[3] == 1 && r->k.conv1x1) r->ndim = 2;
    return 1;
}

int dl_ckpt_has(const dl_checkpoint *ck, dl_part part, const char *name)
{
    ref r;
    return resolve(ck, part, name, &r) == 1;
}

static const char *where(const dl_checkpoint *ck, const ref *r, char *buf, size_t cap)
{
    if (ck->layout == DL_LAYOUT_SINGLE) snprintf(buf, cap, "%s, key %s", ck->path, r->k.key);
    else snprintf(buf, cap, "%s/%s", ck->path, ck->file_label[r->file]);
    return buf;
}

int dl_ckpt_shape(const dl_checkpoint *ck, dl_part part, const char *name, int *ndim, int64_t shape[DL_MAX_DIMS])
{
    ref r;
    int f = resolve(ck, part, name, &r);
    if (f < 0) return DL_ERR;
    char w[600];
    if (f == 0) return dl_error_set("%s tensor %s not found (%s)", dl_part_name(part), name, where(ck, &r, w, sizeof w));
    *ndim = r.ndim;
    memcpy(shape, r.shape, sizeof r.shape);
    return DL_OK;
}

/* Resolve name into *r and check it has shape (ndim, shape): what dl_ckpt_check promises. */
static int check(const dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape, ref *r)
{
    char w[600], se[128], sf[128];
    int f = resolve(ck, part, name, r);
    if (f < 0) return DL_ERR;
    dl_shape_str(shape, ndim, se, sizeof se);
    if (f == 0)
        return dl_error_set("%s tensor %s not found (%s); expected shape %s", dl_part_name(part), name,
                            where(ck, r, w, sizeof w), se);
    int ok = dl_shape_eq(r->shape, r->ndim, shape, ndim);
    /* a [C, C] linear asked for, stored as a [C, C, 1, 1] conv (ldm VAE attention) */
    if (!ok && ndim == 2 && r->ndim == 4 && r->shape[2] == 1 && r->shape[3] == 1)
        ok = dl_shape_eq(r->shape, 2, shape, 2);
    if (!ok)
        return dl_error_set("%s tensor %s (%s): expected shape %s, found %s", dl_part_name(part), name,
                            where(ck, r, w, sizeof w), se, dl_shape_str(r->shape, r->ndim, sf, sizeof sf));
    return DL_OK;
}

int dl_ckpt_check(const dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape)
{
    ref r;
    return check(ck, part, name, ndim, shape, &r);
}

void dl_ckpt_set_pool(dl_checkpoint *ck, dl_pool *pool) { ck->pool = pool; }

/* Conversion of one tensor to fp32, split over the checkpoint's pool: plain (dst = src) or, for
 * conv weights, transposed from [Cout, Cin, kh*kw] to [Cout, kh*kw, Cin]. */
typedef struct convert_job {
    void *dst;
    const char *src;
    dl_dtype t;
    size_t es;      /* source element size */
    int cin, khw;   /* conv: transpose rows of cin * khw */
    int keep;       /* 1: dst has the source's type (a copy, no conversion) */
} convert_job;

enum { CONVERT_GRAIN = 1 << 16, CONVERT_BLOCK = 2048 };

static void convert_range(void *arg, int64_t b, int64_t e, int tid)
{
    const convert_job *j = arg;
    (void)tid;
    if (j->keep) memcpy((char *)j->dst + (size_t)b * j->es, j->src + (size_t)b * j->es, (size_t)(e - b) * j->es);
    else dl_convert_to_f32((float *)j->dst + b, j->src + (size_t)b * j->es, j->t, (size_t)(e - b));
}

static void convert_conv_rows(void *arg, int64_t b, int64_t e, int tid)
{
    const convert_job *j = arg;
    (void)tid;
    float buf[CONVERT_BLOCK];
    const size_t cin = (size_t)j->cin, khw = (size_t)j->khw, n = cin * khw;
    const size_t CI = CONVERT_BLOCK / khw; /* input channels per block (dl_ckpt_load_conv: khw <= 64) */
    if (j->keep) { /* 16-bit values (fp16 / bf16) moved, not converted: blocks of 64 input
                      channels, read whole into L1, then written out one tap row at a time */
        DL_ASSERT(j->es == 2);
        uint16_t tile[64 * 64];
        for (int64_t o = b; o < e; o++) {
            const char *src = j->src + (size_t)o * n * 2;
            uint16_t *dst = (uint16_t *)j->dst + (size_t)o * n;
            for (size_t i0 = 0; i0 < cin; i0 += 64) {
                const size_t ci = cin - i0 < 64 ? cin - i0 : 64;
                memcpy(tile, src + i0 * khw * 2, ci * khw * 2);
                for (size_t yx = 0; yx < khw; yx++)
                    for (size_t i = 0; i < ci; i++) dst[yx * cin + i0 + i] = tile[i * khw + yx];
            }
        }
        return;
    }
    for (int64_t o = b; o < e; o++) {
        const char *src = j->src + (size_t)o * n * j->es;
        float *dst = (float *)j->dst + (size_t)o * n;
        for (size_t i0 = 0; i0 < cin; i0 += CI) { /* [i0, i0 + ci) x khw values, contiguous in src */
            size_t ci = cin - i0 < CI ? cin - i0 : CI;
            dl_convert_to_f32(buf, src + i0 * khw * j->es, j->t, ci * khw);
            for (size_t yx = 0; yx < khw; yx++)
                for (size_t i = 0; i < ci; i++) dst[yx * cin + i0 + i] = buf[i * khw + yx];
        }
    }
}

static int is_float_type(dl_dtype t) { return t == DL_F32 || t == DL_F16 || t == DL_BF16 || t == DL_F64; }

/* After a tensor was converted: mark it used, and give back its fp16/bf16 file pages (they need
 * not stay resident beside the fp32 copy; a fused q/k/v read three times faults them back). */
static void loaded(dl_checkpoint *ck, const ref *r)
{
    const dl_st_file *file = &ck->files[r->file];
    ck->used[r->file][r->t - file->tensors] = 1;
    dl_st_drop_pages(file, r->t);
}

int dl_ckpt_dtype(const dl_checkpoint *ck, dl_part part, const char *name, dl_dtype *dt)
{
    ref r;
    char w[600];
    int f = resolve(ck, part, name, &r);
    if (f < 0) return DL_ERR;
    if (f == 0) return dl_error_set("%s tensor %s not found (%s)", dl_part_name(part), name, where(ck, &r, w, sizeof w));
    *dt = r.t->dtype;
    return DL_OK;
}

dl_dtype dl_ckpt_weight_dtype(const dl_checkpoint *ck, dl_part part, const char *name)
{
    ref r;
    if (!ck || !ck->weight_dtypes) return DL_F32;
    if (resolve(ck, part, name, &r) != 1) {
        dl_error_clear();
        return DL_F32;
    }
    const dl_dtype dt = r.t->dtype;
    if (r.k.transpose) return DL_F32; /* stored transposed: turned around as fp32 */
    return (dt == DL_F16 || dt == DL_BF16) && (ck->weight_dtypes & (1u << dt)) ? dt : DL_F32;
}

const void *dl_ckpt_weight_in_place(dl_checkpoint *ck, dl_part part, const char *name, int ndim,
                                    const int64_t *shape, int mark)
{
    ref r;
    if (!ck || !ck->weights_in_place || check(ck, part, name, ndim, shape, &r) != DL_OK) {
        dl_error_clear();
        return NULL;
    }
    const dl_dtype dt = r.t->dtype;
    if ((dt != DL_F16 && dt != DL_BF16) || !(ck->weight_dtypes & (1u << dt)) || r.k.transpose) return NULL;
    size_t n = (size_t)dl_st_numel(r.t);
    const char *src = r.t->data;
    if (r.k.split >= 0) src += (size_t)r.k.split * (n / 3) * 2; /* one third of a fused q/k/v */
    if ((uintptr_t)src % 2) return NULL;                          /* 16-bit loads want alignment */
    if (mark) ck->used[r.file][r.t - ck->files[r.file].tensors] = 1;
    return src;
}

/* dst_dt: DL_F32 (converted) or the tensor's own type (copied); anything else is an error. */
static int keep_type(const dl_checkpoint *ck, dl_part part, const char *name, const ref *r, dl_dtype dst_dt, int *keep)
{
    char w[600];
    *keep = dst_dt != DL_F32;
    if (*keep && dst_dt != r->t->dtype)
        return dl_error_set("%s tensor %s (%s): stored as %s, cannot be loaded as %s", dl_part_name(part), name,
                            where(ck, r, w, sizeof w), dl_dtype_name(r->t->dtype), dl_dtype_name(dst_dt));
    return DL_OK;
}

int dl_ckpt_load(dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape, float *dst)
{
    return dl_ckpt_load_as(ck, part, name, ndim, shape, dst, DL_F32);
}

int dl_ckpt_load_as(dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape, void *dst,
                    dl_dtype dst_dt)
{
    ref r;
    char w[600];
    int keep;
    DL_TRY(check(ck, part, name, ndim, shape, &r));
    if (!is_float_type(r.t->dtype))
        return dl_error_set("%s tensor %s (%s): dtype %s is not a float type", dl_part_name(part), name,
                            where(ck, &r, w, sizeof w), dl_dtype_name(r.t->dtype));
    DL_TRY(keep_type(ck, part, name, &r, dst_dt, &keep));
    size_t n = (size_t)dl_st_numel(r.t), es = dl_dtype_size(r.t->dtype);
    const char *src = r.t->data;
    if (r.k.split >= 0) { /* one third of a fused q/k/v */
        n /= 3;
        src += (size_t)r.k.split * n * es;
    }
    if (r.k.transpose) { /* stored [in, out]: dst [out, in] (fp32: dl_ckpt_weight_dtype keeps none) */
        if (keep)
            return dl_error_set("%s tensor %s (%s): a transposed tensor is loaded as F32 only", dl_part_name(part),
                                name, where(ck, &r, w, sizeof w));
        const int64_t rows = r.t->shape[0], cols = r.t->shape[1];
        float *tmp = malloc(sizeof(float) * (n ? n : 1)), *d = dst;
        if (!tmp) return dl_error_set("out of memory reading %s", r.k.key);
        dl_convert_to_f32(tmp, src, r.t->dtype, n);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t o = 0; o < cols; o++) d[o * rows + i] = tmp[i * cols + o];
        free(tmp);
        loaded(ck, &r);
        return DL_OK;
    }
    convert_job j = {.dst = dst, .src = src, .t = r.t->dtype, .es = es, .keep = keep};
    dl_parallel_for(ck->pool, (int64_t)n, CONVERT_GRAIN, convert_range, &j);
    loaded(ck, &r);
    return DL_OK;
}

int dl_ckpt_load_conv(dl_checkpoint *ck, dl_part part, const char *name, int cout, int cin, int kh, int kw, float *dst)
{
    return dl_ckpt_load_conv_as(ck, part, name, cout, cin, kh, kw, dst, DL_F32);
}

int dl_ckpt_load_conv_as(dl_checkpoint *ck, dl_part part, const char *name, int cout, int cin, int kh, int kw,
                         void *dst, dl_dtype dst_dt)
{
    const int64_t shape[4] = {cout, cin, kh, kw};
    if (kh == 1 && kw == 1) return dl_ckpt_load_as(ck, part, name, 4, shape, dst, dst_dt); /* same memory order */
    ref r;
    char w[600];
    int keep;
    DL_TRY(check(ck, part, name, 4, shape, &r));
    if (!is_float_type(r.t->dtype) || r.k.split >= 0)
        return dl_error_set("%s tensor %s (%s): dtype %s is not a float type", dl_part_name(part), name,
                            where(ck, &r, w, sizeof w), dl_dtype_name(r.t->dtype));
    if (kh * kw > 64)
        return dl_error_set("%s tensor %s (%s): a %dx%d convolution kernel is not supported", dl_part_name(part), name,
                            where(ck, &r, w, sizeof w), kh, kw);
    DL_TRY(keep_type(ck, part, name, &r, dst_dt, &keep));
    convert_job j = {.dst = dst, .src = r.t->data, .t = r.t->dtype, .es = dl_dtype_size(r.t->dtype), .cin = cin,
                     .khw = kh * kw, .keep = keep};
    int64_t grain = (int64_t)(CONVERT_GRAIN / ((size_t)cin * kh * kw) + 1);
    dl_parallel_for(ck->pool, cout, grain, convert_conv_rows, &j); /* [Cout, Cin, kh, kw] -> [Cout, kh, kw, Cin] */
    loaded(ck, &r);
    return DL_OK;
}

/* The part a single file's key belongs to (DL_PART_COUNT: none). */
static dl_part key_part(const char *key)
{
    if (!strncmp(key, P_UNET, strlen(P_UNET))) return DL_PART_UNET;
    if (!strncmp(key, P_VAE, strlen(P_VAE))) return DL_PART_VAE;
    if (!strncmp(key, "cond_stage_model.", 17) || !strncmp(key, P_TEXT_XL, strlen(P_TEXT_XL))) return DL_PART_TEXT;
    if (!strncmp(key, "conditioner.embedders.1.", 24)) return DL_PART_TEXT2;
    return DL_PART_COUNT;
}

char **dl_ckpt_unused(const dl_checkpoint *ck, dl_part part, int *n)
{
    int cap = 16, cnt = 0;
    char **out = malloc((size_t)cap * sizeof *out);
    for (int fi = 0; fi < ck->n_files && out; fi++) {
        const dl_st_file *f = &ck->files[fi];
        for (int i = 0; i < f->n_tensors; i++) {
            const char *key = f->tensors[i].name;
            if (ck->used[fi][i] || ends_with(key, "position_ids")) continue;
            dl_part kp = ck->layout == DL_LAYOUT_SINGLE ? key_part(key) : (dl_part)fi;
            if (part != DL_PART_COUNT && kp != part) continue;
            if (cnt == cap) {
                char **grown = realloc(out, (size_t)(cap *= 2) * sizeof *out);
                if (!grown) break;
                out = grown;
            }
            size_t len = strlen(ck->file_label[fi]) + strlen(key) + 3;
            out[cnt] = malloc(len);
            if (!out[cnt]) break;
            snprintf(out[cnt++], len, "%s: %s", ck->file_label[fi], key);
        }
    }
    *n = cnt;
    return out;
}

void dl_ckpt_free_names(char **names, int n)
{
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}
