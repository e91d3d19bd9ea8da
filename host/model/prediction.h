/* prediction.h - what the UNet predicts: the one definition, shared by the model configs
 * (model/config.h), the schedules and samplers (sample/schedule.h) and the training objective. */
#ifndef DANLU_MODEL_PREDICTION_H
#define DANLU_MODEL_PREDICTION_H

typedef enum dl_prediction {
    DL_PRED_EPSILON = 0,  /* the model predicts the noise */
    DL_PRED_V = 1,        /* v = sqrt(acp) eps - sqrt(1 - acp) x0 (SD2.x 768-v) */
} dl_prediction;

#endif
