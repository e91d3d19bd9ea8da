/* state.h - the resumable training state (LoRA parameters, AdamW moments, step, epoch, the data
 * loader's opaque state, RNG states, the configuration) as one .safetensors file written
 * atomically, and the Ctrl-C flag the training loop polls. */
#ifndef DANLU_TRAIN_STATE_H
#define DANLU_TRAIN_STATE_H

#include "core/rng.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_STATE_FORMAT "danlu.train_state.v1"

typedef struct dl_train_state {
    int64_t step;            /* optimizer steps done */
    int64_t epoch;           /* epochs completed */
    int64_t micro_step;      /* micro-batches done (for gradient accumulation) */
    int64_t n_params;        /* floats in params, m, v */
    float *params;           /* [n_params] LoRA A and B, in the network's order */
    float *m, *v;            /* [n_params] AdamW moments */
    dl_rng rng;              /* the trainer's generator (timesteps, dropout, order) */
    dl_torch_rng noise_rng;  /* the noise generator */
    uint8_t *data_state;     /* the batcher's opaque state */
    size_t data_state_len;
    char *signature;         /* network layout (module names and shapes), must match on resume */
    char *config_json;       /* the effective configuration when saved */
} dl_train_state;

/* Write s to path atomically (temporary + rename): a failed save leaves the previous state
 * untouched. meta: extra metadata pairs (may be NULL). DL_ERR names the file. */
int dl_train_state_save(const char *path, const dl_train_state *s, const char *const *meta, int n_meta);

/* Read path into s (every array malloc'd; free with dl_train_state_free). DL_ERR names the
 * file and the problem (not a danlu state, missing tensor, inconsistent sizes). */
int dl_train_state_load(const char *path, dl_train_state *s);
/* Free what dl_train_state_load allocated. */
void dl_train_state_free(dl_train_state *s);

/* Install a SIGINT handler (Ctrl-C) that only sets a flag; a second Ctrl-C restores the default
 * action so a third kills. dl_train_interrupted() reads the flag; dl_train_signal_restore()
 * puts the previous handler back. */
void dl_train_signal_install(void);
int dl_train_interrupted(void);
void dl_train_signal_restore(void);
/* Set or clear the flag (tests, and the loop after it has handled it). */
void dl_train_set_interrupted(int v);

#ifdef __cplusplus
}
#endif
#endif
