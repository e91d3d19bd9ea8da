/* progress.h - training progress: a live status line on a terminal (step/total, it/s, ETA,
 * running loss, LR), plain periodic lines otherwise, a CSV log (step, epoch, loss, lr, wall
 * time) and the loss history for the plot. */
#ifndef DANLU_TRAIN_PROGRESS_H
#define DANLU_TRAIN_PROGRESS_H

#include "core/clock.h" /* dl_now_seconds */
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_PROGRESS_WINDOW 100  /* running loss: mean of the last this many steps */

typedef struct dl_progress {
    FILE *out;              /* status output (stderr usually) */
    int tty;                /* 1: redraw one line with '\r'; 0: a line every `every` steps */
    int every;              /* plain mode: print every this many steps (and the last) */
    int total;              /* total optimizer steps */
    int start_step;         /* steps already done when this run started (resume) */
    double t0;              /* monotonic seconds at start */
    double wall_offset;     /* wall time of the resumed run so far (from the CSV) */
    FILE *csv;              /* the CSV log, or NULL */
    char *csv_path;
    double *loss;           /* [n_loss] loss of steps 1..n_loss (history for the plot) */
    int n_loss, cap_loss;
    double last_lr;
} dl_progress;

/* Start. out: where status goes; tty: -1 detect with isatty, 0/1 force. csv_path (may be
 * NULL): the log; when start_step > 0 (resume) its rows up to start_step are kept (and their
 * losses loaded into the history) and later rows dropped, otherwise it is created afresh.
 * Returns DL_OK or DL_ERR naming the CSV file. */
int dl_progress_init(dl_progress *p, FILE *out, int tty, int total, int start_step, const char *csv_path);
/* Record optimizer step `step` (1-based) of `epoch` (1-based): CSV row, history, status. */
void dl_progress_step(dl_progress *p, int step, int epoch, double loss, double lr);
/* A message that must not be overwritten by the status line (warnings, saves). */
void dl_progress_note(dl_progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Mean of the last min(n, DL_PROGRESS_WINDOW) losses (0 if none). */
double dl_progress_running_loss(const dl_progress *p);
/* End the status line, flush and close the CSV, free. */
void dl_progress_finish(dl_progress *p);

#ifdef __cplusplus
}
#endif
#endif
