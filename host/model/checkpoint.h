/* checkpoint.h - open an SD 1.x/2.x or SDXL model (single-file .safetensors or diffusers folder)
 * and read its weights by diffusers names, whatever the layout on disk.
 *
 * The networks ask for "down_blocks.0.resnets.0.conv1.weight" (UNet),
 * "decoder.mid_block.attentions.0.to_q.weight" (VAE) or
 * "text_model.encoder.layers.0.self_attn.q_proj.weight" (text encoder); for a single-file
 * (original SD / ldm) checkpoint the name is mapped to its key there (model.diffusion_model.*,
 * first_stage_model.*, cond_stage_model.transformer.* or SD2's OpenCLIP
 * cond_stage_model.model.* with q/k/v fused in attn.in_proj_*; SDXL: the UNet's add_embedding
 * as model.diffusion_model.label_emb.0.{0,2}.*, the first text encoder as
 * conditioner.embedders.0.transformer.*, the second as conditioner.embedders.1.model.* in OpenCLIP
 * names with its text_projection stored [in, out]), as diffusers' single-file converters do.
 *
 * SDXL: a checkpoint is SDXL when its UNet has the text_time added conditioning (unet/config.json's
 * addition_embed_type, or a single file's label_emb beside conditioner.embedders.* text
 * encoders). Its UNet, VAE and text encoders (CLIP ViT-L, "text_encoder"; OpenCLIP ViT-bigG with
 * its projection, "text_encoder_2", DL_PART_TEXT2) load; training does not handle SDXL yet:
 * dl_ckpt_open refuses SDXL unless the caller says it handles it.
 * Shapes asked for and reported are in the diffusers (PyTorch) convention:
 * linear [out, in], conv [Cout, Cin, kh, kw]; dl_ckpt_load_conv hands conv weights out in
 * danlu's [Cout, kh, kw, Cin]. Weights are read from F32, F16 or BF16 into fp32.
 * Pickle checkpoints (.ckpt, .pt, .pth, .bin) are refused: unpickling can run code. */
#ifndef DANLU_MODEL_CHECKPOINT_H
#define DANLU_MODEL_CHECKPOINT_H

#include "io/safetensors.h"
#include "model/config.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DL_LAYOUT_SINGLE = 0, DL_LAYOUT_DIFFUSERS = 1 } dl_ckpt_layout;
/* DL_PART_TEXT2: SDXL's second text encoder (text_encoder_2/, conditioner.embedders.1.model.*);
 * a model without one (cfg.text2.num_layers 0) has no tensors in that part. */
typedef enum { DL_PART_UNET = 0, DL_PART_VAE = 1, DL_PART_TEXT = 2, DL_PART_TEXT2 = 3, DL_PART_COUNT = 4 } dl_part;
/* How a single file stores the text encoder. */
typedef enum {
    DL_TEXT_HF = 0,       /* cond_stage_model.transformer.text_model.* (SD1, transformers names) */
    DL_TEXT_HF_OLD = 1,   /* cond_stage_model.transformer.* without "text_model." (old transformers) */
    DL_TEXT_OPENCLIP = 2, /* cond_stage_model.model.* (SD2, OpenCLIP names, fused in_proj) */
    DL_TEXT_SDXL = 3      /* conditioner.embedders.0.transformer.text_model.* (SDXL's CLIP ViT-L) */
} dl_text_layout;

typedef struct dl_ckpt_options {
    /* Prediction type: -1 = from the folder's scheduler/scheduler_config.json (epsilon for a
     * single file: it cannot be seen in the weights), 0 = epsilon, 1 = v-prediction. */
    int prediction;
    /* 1: the caller handles SDXL (danlu run, sample, the LoRA and conversion tools); 0: an SDXL
     * checkpoint is DL_ERR saying what is not implemented yet (training). */
    int allow_sdxl;
    /* A diffusers unet/config.json to use for a single file's UNet instead of the config detected
     * from its tensors (heads and norm groups are not in the weights: detection assumes SD's 8
     * heads / SD2's and SDXL's head dim 64 and 32 groups); NULL: detect. Every tensor is still
     * checked against it at load. */
    const char *unet_config;
} dl_ckpt_options;

typedef struct dl_checkpoint {
    char *path;                       /* as given, for messages */
    dl_ckpt_layout layout;
    dl_text_layout text_layout;       /* single file only */
    int sd2;                          /* 1: SD 2.x (OpenCLIP text encoder / linear proj_in) */
    int sdxl;                         /* 1: SDXL (the UNet's text_time added conditioning) */
    dl_model_config cfg;              /* from config.json files, or detected from the tensors */
    char *tokenizer_dir;              /* diffusers tokenizer/ with vocab.json + merges.txt, or NULL */
    char *tokenizer2_dir;             /* SDXL: diffusers tokenizer_2/ (vocab.json + merges.txt), or NULL */
    int n_files;
    dl_st_file files[DL_PART_COUNT];  /* single: files[0] holds everything; diffusers: one per part */
    char *file_label[DL_PART_COUNT];  /* "unet/diffusion_pytorch_model.safetensors", ... */
    int part_file[DL_PART_COUNT];     /* index into files[] */
    uint8_t *used[DL_PART_COUNT];     /* per file: one flag per tensor, set when it was read */
    struct dl_pool *pool;             /* threads for the fp16/bf16 -> fp32 conversion, or NULL */
    /* Bits 1u << DL_F16 / DL_BF16: the layer weights (linear and conv) stored in that type are
     * kept in it by the loaders (the backend computes from them: dl_backend.weight_dtypes), half
     * the memory of fp32 and no conversion. 0 (dl_ckpt_open's default): every tensor as fp32. */
    unsigned weight_dtypes;
    /* 1 (with weight_dtypes, for a backend whose memory is host memory): such a weight that needs
     * no reordering (linear, 1x1 conv) is not copied at all: the layer points into the file's
     * read-only mapping, which lives until dl_ckpt_close. */
    int weights_in_place;
} dl_checkpoint;

/* Convert tensors on the threads of pool (NULL: the caller's thread) from now on. */
void dl_ckpt_set_pool(dl_checkpoint *ck, struct dl_pool *pool);

/* Open path: a .safetensors single file or a diffusers folder (unet/, vae/, text_encoder/,
 * optional tokenizer/ and scheduler/). opt may be NULL (defaults). The config comes from the
 * folder's config.json files or is detected from a single file's tensors. DL_ERR with a message
 * naming the file and the problem: missing part, pickle file (with how to convert it),
 * unsupported architecture (unCLIP, ...; SDXL unless opt->allow_sdxl), corrupt safetensors. */
int dl_ckpt_open(dl_checkpoint *ck, const char *path, const dl_ckpt_options *opt);
void dl_ckpt_close(dl_checkpoint *ck);

/* 1 if the part holds the tensor (diffusers name), else 0. */
int dl_ckpt_has(const dl_checkpoint *ck, dl_part part, const char *name);
/* Shape of a tensor in the diffusers convention (a fused q/k/v third, a ldm 1x1-conv VAE
 * attention weight reported as [C, C]). DL_ERR if missing (message names it). */
int dl_ckpt_shape(const dl_checkpoint *ck, dl_part part, const char *name, int *ndim, int64_t shape[DL_MAX_DIMS]);

/* Read tensor `name` into dst (numel floats) as fp32, checking its shape is (ndim, shape).
 * DL_ERR naming the tensor (and its key in the file) when it is missing, with the expected
 * shape, or when the shape differs, with both shapes. Marks the tensor used. */
int dl_ckpt_load(dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape, float *dst);
/* dl_ckpt_load into dst of type dst_dt: DL_F32 (converted), or the tensor's own type (copied;
 * another type is DL_ERR naming both). */
int dl_ckpt_load_as(dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape, void *dst,
                    dl_dtype dst_dt);
/* The stored element type of a tensor (DL_ERR naming it if missing). */
int dl_ckpt_dtype(const dl_checkpoint *ck, dl_part part, const char *name, dl_dtype *dt);
/* With weights_in_place: where a kept fp16 / bf16 layer weight of shape (ndim, shape) in the
 * file's order already lies, valid until dl_ckpt_close (marked used when mark); NULL when it
 * is not kept, not 2-byte aligned, or fails the checks (the load reports those). */
const void *dl_ckpt_weight_in_place(dl_checkpoint *ck, dl_part part, const char *name, int ndim,
                                    const int64_t *shape, int mark);
/* The type a layer weight is kept in: its stored type when that is fp16 / bf16 and set in
 * ck->weight_dtypes, else DL_F32 (also for a missing tensor: the load reports it). */
dl_dtype dl_ckpt_weight_dtype(const dl_checkpoint *ck, dl_part part, const char *name);
/* What dl_ckpt_load checks, without reading: the tensor is there with shape (ndim, shape);
 * the same DL_ERR messages. Does not mark the tensor used (a measuring load calls this). */
int dl_ckpt_check(const dl_checkpoint *ck, dl_part part, const char *name, int ndim, const int64_t *shape);
/* Read a conv weight stored [cout, cin, kh, kw] into dst as danlu's [cout, kh, kw, cin]. Same
 * errors as dl_ckpt_load (shapes named in the file's OIHW order). */
int dl_ckpt_load_conv(dl_checkpoint *ck, dl_part part, const char *name, int cout, int cin, int kh, int kw,
                      float *dst);
/* dl_ckpt_load_conv into dst of type dst_dt (as dl_ckpt_load_as). */
int dl_ckpt_load_conv_as(dl_checkpoint *ck, dl_part part, const char *name, int cout, int cin, int kh, int kw,
                         void *dst, dl_dtype dst_dt);

/* Keys of the files that were never read, as "<file label>: <key>", malloc'd array of malloc'd
 * strings (free with dl_ckpt_free_names); *n set. part = DL_PART_COUNT lists every file's keys
 * (including tensors of no part, like a single file's alphas_cumprod or model_ema.*); a part
 * lists only that part's tensors. Buffers that are not weights (*.position_ids) are skipped. */
char **dl_ckpt_unused(const dl_checkpoint *ck, dl_part part, int *n);
void dl_ckpt_free_names(char **names, int n);

/* Where a diffusers-named tensor lives in a layout. */
typedef struct dl_ckpt_key {
    char key[256];   /* the key in the file */
    int split;       /* -1: the whole tensor; 0/1/2: q/k/v third of a fused in_proj (dim 0) */
    int transpose;   /* the file stores this [out, in] linear weight as [in, out] (OpenCLIP's
                        text_projection) */
    int conv1x1;     /* the file stores this [C, C] linear as a [C, C, 1, 1] conv (ldm VAE attention) */
} dl_ckpt_key;

/* Map a diffusers name of part to its key in a single file with the given text layout (the
 * config decides block indices). DL_ERR (message) for a name that is not one of the part's. */
int dl_ckpt_map_single(const dl_model_config *cfg, dl_text_layout tl, dl_part part, const char *name,
                       dl_ckpt_key *out);

/* Every weight a model of this config holds, in diffusers names and PyTorch shapes:
 * fn(user, part, name, ndim, shape) for each; stops and returns DL_ERR when fn does. */
typedef int (*dl_weight_fn)(void *user, dl_part part, const char *name, int ndim, const int64_t *shape);
int dl_model_weights(const dl_model_config *cfg, dl_part part, dl_weight_fn fn, void *user);

/* "unet", "vae", "text_encoder", "text_encoder_2". */
const char *dl_part_name(dl_part part);

#ifdef __cplusplus
}
#endif
#endif
