/* clock.h - the monotonic clock, and phase timings for --verbose. */
#ifndef DANLU_CORE_CLOCK_H
#define DANLU_CORE_CLOCK_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Monotonic clock in seconds. */
double dl_now_seconds(void);

/* Named phases of a command and the seconds each took (a phase may be added to repeatedly). */
#define DL_PHASES_MAX 16
typedef struct dl_phases {
    int n;
    const char *name[DL_PHASES_MAX];
    double seconds[DL_PHASES_MAX];
    int count[DL_PHASES_MAX];
    double t0; /* dl_phases_init time */
} dl_phases;

void dl_phases_init(dl_phases *p);
/* Add seconds to the phase called name (a static string), creating it after the others. */
void dl_phases_add(dl_phases *p, const char *name, double seconds);
/* "danlu CMD: phase times: load 1.23 s, hash 0.00 s (cached), ..., total 9.87 s" on f. */
void dl_phases_print(const dl_phases *p, FILE *f, const char *cmd);

#ifdef __cplusplus
}
#endif
#endif
