/* lora_io.h - LoRA files: writing sd-scripts' (kohya/A1111) layout and diffusers' PEFT layout,
 * reading kohya, LyCORIS LoCon and diffusers/PEFT files, with a report of what matched.
 *
 * kohya / LyCORIS LoCon (one module per "lora_unet_<name with _>" / "lora_te_<name with _>"):
 *   <kohya>.lora_down.weight  [r, in] (linear), [r, in, 1, 1] (1x1 conv), [r, Cin, k, k] (conv, OIHW)
 *   <kohya>.lora_up.weight    [out, r] (linear), [out, r, 1, 1] (convs)
 *   <kohya>.alpha             scalar; scale = alpha / r x multiplier (absent: alpha = r)
 * diffusers / PEFT (what StableDiffusionPipeline.save_lora_weights writes):
 *   unet.<diffusers name>.lora_A.weight, .lora_B.weight (same shapes as down / up),
 *   text_encoder.<transformers name>.lora_A.weight, .lora_B.weight
 *   No alpha: diffusers takes lora_alpha = r unless "lora_adapter_metadata" says otherwise, so
 *   danlu writes B x alpha / r (the same product) and reads alpha from that metadata when present
 *   ("unet.lora_alpha" / "text_encoder.lora_alpha" with ".r", plus alpha_pattern), else alpha = r.
 *   Also read: the older "<name>.lora.down.weight" / ".lora.up.weight" keys, and text-encoder keys
 *   without "text_model." (text_encoder.encoder.layers.N..., as diffusers writes with transformers 5).
 * Reading also understands kohya names of ldm (single-file) layers such as
 * lora_unet_input_blocks_1_1_proj_in, as some trainers write them.
 * SDXL: kohya files in sd-scripts' SDXL names (lora_unet_ + the SGM path, lora_te1_ / lora_te2_;
 * lora_net.h), also with the UNet's diffusers paths (lora_unet_down_blocks_...), and diffusers
 * files with "unet." / "text_encoder." / "text_encoder_2." keys (alphas from
 * "text_encoder_2.lora_alpha" ...). A file whose text-encoder keys say the other architecture
 * (lora_te_ on SDXL; lora_te1_, lora_te2_ or text_encoder_2. on SD 1.x/2.x) is an error. */
#ifndef DANLU_LORA_IO_H
#define DANLU_LORA_IO_H

#include "core/dtype.h"
#include "lora/lora_net.h"
#include "model/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DL_LORA_FMT_KOHYA = 0, DL_LORA_FMT_PEFT = 1 } dl_lora_format;

/* Write net to path in format fmt with tensors of dtype (DL_F32, DL_F16 or DL_BF16) and the
 * caller's metadata pairs (meta[2i] key, meta[2i+1] value: the ss_* / modelspec.* keys),
 * atomically (temporary file + rename). A kohya file whose metadata has ss_* keys also gets
 * sd-scripts' "sshs_model_hash" and "sshs_legacy_hash" (lora/addnet_hash.h), replacing any the
 * caller passed. DL_ERR names the file (not writable, disk full). */
int dl_lora_save(const char *path, const dl_lora_net *net, dl_lora_format fmt, dl_dtype dtype,
                 const char *const *meta, int n_meta);

#define DL_LORA_REPORT_KEYS 8
/* What a read found. */
typedef struct dl_lora_report {
    int n_keys;                 /* tensors in the file */
    int n_matched_keys;         /* of them used */
    int n_modules, n_unet, n_text, n_text2; /* modules loaded (n_text2: SDXL's second text encoder) */
    int kohya, peft;            /* 1 when keys of that layout were seen */
    int n_unmatched;            /* keys that matched no module of the model */
    char unmatched[DL_LORA_REPORT_KEYS][200]; /* the first of them */
    int n_kinds;                /* unmatched keys grouped by their last name part */
    char kind[DL_LORA_REPORT_KEYS][48];       /* ".hada_w1_a", ".lora_down.weight", ... */
    int kind_count[DL_LORA_REPORT_KEYS];
} dl_lora_report;

/* Read a LoRA file for a model of config cfg: net receives one module per module found (rank
 * and alpha from the file), scale = alpha / r x multiplier. rep (may be NULL) says what matched.
 * DL_ERR with a message naming the file and: a key that matched nothing is only reported, but a
 * file none of whose keys match is an error; a shape that does not fit the model names the key
 * and both shapes (a SD2 or SDXL LoRA on a SD1 model); a module with down but no up (or the
 * reverse); an unreadable or corrupt file. On error net holds nothing to free. */
int dl_lora_load(const char *path, const dl_model_config *cfg, float multiplier, dl_lora_net *net,
                 dl_lora_report *rep);

/* Start training from an existing file (sd-scripts' network_weights): copy the file's modules
 * into net's modules of the same name (A, B and alpha; scale recomputed). Keys for modules net
 * lacks are reported, not errors; a rank or shape that differs from net's module is an error
 * naming the key and both shapes; a file none of whose keys match net is an error. Modules the
 * file lacks keep their values. */
int dl_lora_load_into(const char *path, dl_lora_net *net, dl_lora_report *rep);

/* Print rep to stderr in one or two lines: "<path>: 192 modules (192 UNet, 0 text encoder)
 * from 576 keys; 3 keys matched nothing: 3 x .hada_w1_a (first: ...)". */
void dl_lora_report_print(const dl_lora_report *rep, const char *path);

#ifdef __cplusplus
}
#endif
#endif
