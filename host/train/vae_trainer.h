/* vae_trainer.h - `danlu train-vae`: every weight of a checkpoint's VAE (AutoencoderKL) trained on
 * a folder of images with reconstruction + KL (train/vae_train.h), with the LoRA trainer's data
 * side (dataset, buckets, flips, crops), AdamW and clipping (train/param_set.h), schedules,
 * accumulation, gradient checkpointing, periodic saves, states, resume and Ctrl-C. The output is
 * the whole checkpoint with the trained VAE (the SD single-file layout, or a diffusers folder). */
#ifndef DANLU_TRAIN_VAE_TRAINER_H
#define DANLU_TRAIN_VAE_TRAINER_H

#include "train/config.h"
#include "train/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Train. cfg must be a train-vae configuration (finetune == DL_TRAIN_VAE) that passed
 * dl_train_config_finish. As dl_train_run: DL_OK (res filled; losses are each step's total
 * loss) or DL_ERR with a message naming the file or key and the problem; every output written
 * atomically. */
int dl_vae_train_run(const dl_train_config *cfg, const dl_trainer_opts *opts, dl_train_result *res);

#ifdef __cplusplus
}
#endif
#endif
