/* clock.c - the monotonic clock and phase timings. */
#include "core/clock.h"

#include <string.h>
#include <time.h>

double dl_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dl_phases_init(dl_phases *p)
{
    memset(p, 0, sizeof *p);
    p->t0 = dl_now_seconds();
}

void dl_phases_add(dl_phases *p, const char *name, double seconds)
{
    int i = 0;
    while (i < p->n && strcmp(p->name[i], name) != 0) i++;
    if (i == p->n) {
        if (p->n == DL_PHASES_MAX) return;
        p->name[p->n++] = name;
    }
    p->seconds[i] += seconds;
    p->count[i]++;
}

void dl_phases_print(const dl_phases *p, FILE *f, const char *cmd)
{
    fprintf(f, "danlu %s: phase times:", cmd);
    for (int i = 0; i < p->n; i++) {
        fprintf(f, "%s %s %.3f s", i ? "," : "", p->name[i], p->seconds[i]);
        if (p->count[i] > 1) fprintf(f, " (%d x %.3f s)", p->count[i], p->seconds[i] / p->count[i]);
    }
    fprintf(f, "; total %.3f s\n", dl_now_seconds() - p->t0);
}
