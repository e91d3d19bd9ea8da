/* lora_file.h - a LoRA file as a plain list of modules, without a model: what the LoRA tools
 * (resize, LoRA + LoRA merge, convert, extract's output) read and write.
 *
 * Each module is a key stem with down [r, in, kh, kw] (kh = kw = 1 and 2-D on disk for linears)
 * and up [out, r] (4-D [out, r, 1, 1] on disk when down is 4-D), in PyTorch's layout, and an
 * alpha (scale = alpha / r). Layouts:
 *   kohya:  <stem>.lora_down.weight, <stem>.lora_up.weight, <stem>.alpha (absent: alpha = r)
 *   PEFT:   <stem>.lora_A.weight, <stem>.lora_B.weight (also <stem>.lora.down/up.weight), stem
 *           "unet.<diffusers name>" / "text_encoder.<transformers name>" (SDXL also
 *           "text_encoder_2.<transformers name>"); alpha from
 *           "<stem>.alpha", else diffusers' "lora_adapter_metadata" (lora_alpha, alpha_pattern),
 *           else r. danlu writes PEFT files with B x alpha / r (diffusers assumes alpha = r) and
 *           records the original alphas in the metadata key "danlu_kohya_alphas" (a JSON object
 *           stem -> alpha that other readers ignore), so a PEFT file converted back to kohya gets
 *           its alphas and B back (bit-exact when alpha / r is a power of two).
 * LyCORIS LoHa / LoKr / Tucker (lora_mid) and DoRA keys are refused by name. */
#ifndef DANLU_LORA_FILE_H
#define DANLU_LORA_FILE_H

#include "core/dtype.h"
#include "model/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_lf_module {
    char stem[256];
    int r, out, in, kh, kw;
    int four_d;          /* down / up stored 4-D */
    float alpha;
    float *down;         /* [r, in * kh * kw] */
    float *up;           /* [out, r] */
} dl_lf_module;

typedef struct dl_lora_file {
    int n, cap;
    dl_lf_module *m;     /* in file order of their down keys */
    int peft;            /* 1: PEFT key layout */
    dl_dtype dtype;      /* of the first down weight read (F32 for a new file) */
    int n_meta;
    char **meta;         /* [2 n_meta]: key, value (malloc'd) */
} dl_lora_file;

/* Read path. DL_ERR naming the file and the key: corrupt file, no LoRA keys, a key that is no
 * LoRA weight (LoHa, LoKr, lora_mid, dora_scale or anything else), down without up, shapes that
 * disagree (rank, 4-D up not [out, r, 1, 1]). On error lf holds nothing to free. */
int dl_lf_read(dl_lora_file *lf, const char *path);

/* Write lf to path (kohya or PEFT per lf->peft) in dtype (F32, F16, BF16) with metadata pairs
 * (NULL/0: none), atomically. A kohya file whose metadata has ss_* keys gets sd-scripts'
 * sshs_model_hash / sshs_legacy_hash (replacing any passed). */
int dl_lf_save(const dl_lora_file *lf, const char *path, dl_dtype dtype, const char *const *meta, int n_meta);

/* Append a module (down and up copied; r, out, in, kh, kw, four_d, alpha from m). */
int dl_lf_add(dl_lora_file *lf, const dl_lf_module *m);
/* The module with this stem, or NULL. */
dl_lf_module *dl_lf_find(const dl_lora_file *lf, const char *stem);
/* A metadata value of lf, or NULL. */
const char *dl_lf_meta(const dl_lora_file *lf, const char *key);
void dl_lf_free(dl_lora_file *lf);

/* Rename every stem from kohya to PEFT (to_peft = 1) or back, by the module names of a model of
 * config cfg (every linear and conv of its UNet and text encoder; SDXL: both text encoders, PEFT
 * "text_encoder_2." stems, sd-scripts' SDXL kohya names, and kohya stems on the UNet's diffusers
 * paths read too). DL_ERR names a stem that is no module of such a model. PEFT -> kohya restores
 * alphas recorded in "danlu_kohya_alphas". */
int dl_lf_relayout(dl_lora_file *lf, const dl_model_config *cfg, int to_peft, const char *label);

#ifdef __cplusplus
}
#endif
#endif
