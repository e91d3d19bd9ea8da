/* outputs.h - the files a training run writes into its output_dir: the directory itself, file
 * names under it, and the numbered saves of which sd-scripts keeps the last N. Shared by the
 * LoRA / fine-tuning trainer and train-vae. */
#ifndef DANLU_TRAIN_OUTPUTS_H
#define DANLU_TRAIN_OUTPUTS_H

#include "train/config.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Creates path and its parents (mkdir -p) and checks it is a writable directory: DL_OK, or DL_ERR
 * naming the path and the problem. */
int dl_train_mkdir_p(const char *path);
/* dir/<printf(fmt, ...)>, malloc'd; NULL when out of memory. */
char *dl_train_out_file(const char *dir, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Removes a save: a file, or a diffusers folder with everything in it. 0, or -1 (errno). */
int dl_train_remove_save(const char *path);
/* The stem of the save at step n (by_epoch 0: <name>-stepNNNNNNNN, keeping save_last_n_steps
 * steps' worth) or epoch n (<name>-NNNNNN, keeping save_last_n_epochs saves) into stem, and that of
 * the save the keep-last-N rule drops now into old (cap bytes each). Returns 1 when one is dropped. */
int dl_train_save_stems(const dl_train_config *c, int by_epoch, int n, char *stem, char *old, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
