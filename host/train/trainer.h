/* trainer.h - the LoRA training loop on the CPU backend: model, dataset, network, objective,
 * optimizer, schedules, logs, saves, states and resume, driven by a dl_train_config. */
#ifndef DANLU_TRAIN_TRAINER_H
#define DANLU_TRAIN_TRAINER_H

#include "train/config.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dl_trainer_opts {
    FILE *log;          /* messages and progress (stderr in the CLI; NULL: silent) */
    int tty;            /* -1: detect from log; 0/1: force the live line off/on */
    int stop_after;     /* test hook: behave as if Ctrl-C came after this many steps (0: off) */
    /* test hook (NULL: off): called after every optimizer step of this run with the step number
     * (1-based), once the step's periodic saves and samples are done and before the final save
     * (tests/alloc counts heap allocations between calls) */
    void (*on_step)(void *user, int step);
    void *on_step_user;
} dl_trainer_opts;

typedef struct dl_train_result {
    int steps_done;     /* optimizer steps done in total (including a resumed run's earlier ones) */
    int start_step;     /* steps already done when this run started (resume) */
    int total_steps;    /* max_train_steps in effect */
    int interrupted;    /* 1: stopped by Ctrl-C (state saved) */
    double *losses;     /* [steps_done - start_step] loss of each step of this run (malloc'd) */
    char *output_path;  /* the final LoRA (or the interrupted run's state) (malloc'd) */
    char *state_path;   /* the last state written, or NULL (malloc'd) */
} dl_train_result;

/* Train. cfg must have passed dl_train_config_finish. Returns DL_OK (res filled; free it with
 * dl_train_result_free) or DL_ERR with a message naming the file or key and the problem; no
 * half-written file is ever left (every output is written atomically). */
int dl_train_run(const dl_train_config *cfg, const dl_trainer_opts *opts, dl_train_result *res);
void dl_train_result_free(dl_train_result *res);

/* SDXL's six time ids of one training image, as sd-scripts' dataset gives them: out [6] = the
 * image's size before resizing (height, width), the crop top-left that sd-scripts' BucketManager.
 * get_crop_ltrb derives from the bucket and that size (the image fitted inside the bucket and
 * centred; its left mirrored when the image is flipped), and the bucket's size (height, width). */
void dl_train_xl_time_ids(int img_w, int img_h, int bucket_w, int bucket_h, int flipped, float out[6]);

#ifdef __cplusplus
}
#endif
#endif
