/* lr_schedule.h - learning-rate schedules as diffusers.optimization.get_scheduler builds them
 * (LambdaLR multipliers of the base learning rate, with linear warmup), the ones sd-scripts
 * offers: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial. */
#ifndef DANLU_TRAIN_LR_SCHEDULE_H
#define DANLU_TRAIN_LR_SCHEDULE_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dl_lr_kind {
    DL_LR_CONSTANT = 0,
    DL_LR_CONSTANT_WITH_WARMUP,
    DL_LR_LINEAR,
    DL_LR_COSINE,
    DL_LR_COSINE_WITH_RESTARTS,
    DL_LR_POLYNOMIAL,
} dl_lr_kind;

typedef struct dl_lr_schedule {
    dl_lr_kind kind;
    int warmup_steps;     /* lr_warmup_steps */
    int total_steps;      /* num_training_steps (max_train_steps) */
    int num_cycles;       /* lr_scheduler_num_cycles (cosine_with_restarts only; cosine uses 0.5) */
    double power;         /* lr_scheduler_power (polynomial) */
    double lr_end;        /* polynomial's final lr, 1e-7 as in diffusers */
} dl_lr_schedule;

/* Parse a scheduler name. DL_ERR (message naming the value) when unknown. */
int dl_lr_kind_parse(const char *name, dl_lr_kind *out);
const char *dl_lr_kind_name(dl_lr_kind k);

/* Fill s (lr_end = 1e-7). */
void dl_lr_schedule_init(dl_lr_schedule *s, dl_lr_kind kind, int warmup_steps, int total_steps,
                         int num_cycles, double power);

/* The LambdaLR multiplier at 0-based optimizer step `step` (the lr used by the step-th
 * optimizer.step() is base_lr * this). base_lr is needed by polynomial only (its lr_end is an
 * absolute lr); for it diffusers requires base_lr > lr_end (otherwise the multiplier is 1 here).
 * Computed in double exactly as the Python lambdas. */
double dl_lr_multiplier(const dl_lr_schedule *s, int step, double base_lr);

#ifdef __cplusplus
}
#endif
#endif
