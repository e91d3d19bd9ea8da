/* ckpt_tools.h - whole-checkpoint tools: bake LoRAs into a checkpoint (merge_lora.py) and
 * convert checkpoints between the single-file and diffusers layouts and between dtypes.
 *
 * Outputs are written atomically: a single file through dl_st_save (temporary + rename), a
 * diffusers folder built as OUT.tmp-<pid> and renamed into place (an existing OUT is refused);
 * on any error nothing is left behind. Tensors that are not changed are copied byte for byte
 * when their dtype is kept. */
#ifndef DANLU_CKPT_TOOLS_H
#define DANLU_CKPT_TOOLS_H

#include "model/checkpoint.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_lora_weight {
    const char *path;
    float weight;
} dl_lora_weight;

/* Bake loras[0..n) (kohya, PEFT or LyCORIS LoCon; W += weight x alpha / r x up·down, in
 * fp32) into the checkpoint at model and write it to out in the same layout, in dtype (-1: each
 * tensor keeps its dtype; else DL_F32/DL_F16/DL_BF16 for every float tensor). Reports each LoRA
 * on log. DL_ERR with the LoRA reader's messages (a LoRA for another architecture names the key
 * and both shapes), or the output's. */
int dl_ckpt_merge_loras(const char *model, const dl_lora_weight *loras, int n, const char *out, int dtype, FILE *log);

/* Convert the checkpoint at in to out in layout (-1: keep) and dtype (-1: keep). A change of
 * layout writes exactly the UNet, VAE and text-encoder weights danlu maps (tensors of no part,
 * e.g. a single file's model_ema.* or alphas_cumprod, are dropped and counted on log); a
 * diffusers folder made from a single file gets config.json files from the detected config and
 * no tokenizer/. Same-layout conversions copy every tensor (and a folder's other files). */
int dl_ckpt_convert(const char *in, const char *out, int layout, int dtype, FILE *log);

/* Replacement weights for dl_ckpt_write: fill out (fp32, the numel of shape, PyTorch layout) with
 * the new value of part's weight `name` (diffusers name, PyTorch shape, as dl_model_weights lists
 * them) and return 1; return 0 to keep the checkpoint's tensor, DL_ERR to stop the write. */
typedef int (*dl_weight_fill_fn)(void *user, dl_part part, const char *name, int ndim, const int64_t *shape,
                                 float *out);

/* Write the open checkpoint ck to out in layout (DL_LAYOUT_SINGLE: one .safetensors file in the SD
 * single-file layout; DL_LAYOUT_DIFFUSERS: a folder with config.json files from ck's config and
 * ck's tokenizer/ when it has one) through the mapping dl_ckpt_convert uses for a change of
 * layout: exactly the UNet, VAE and text-encoder weights, in the same order, names and shapes,
 * each replaced where fill says so (fill NULL: none), every float tensor in dtype (-1: as it is,
 * a replaced one fp32). The metadata is meta[0..2 n_meta) (key, value pairs), not ck's. A file is
 * replaced atomically; an existing folder is refused unless replace (then it is replaced once the
 * new one is complete). DL_ERR names the file and the problem; nothing half-written is left. */
int dl_ckpt_write(dl_checkpoint *ck, const char *out, int layout, int dtype, dl_weight_fill_fn fill, void *user,
                  const char *const *meta, int n_meta, int replace, FILE *log);

#ifdef __cplusplus
}
#endif
#endif
