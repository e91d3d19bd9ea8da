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

#ifdef __cplusplus
}
#endif
#endif
