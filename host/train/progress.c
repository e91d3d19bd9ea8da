/* progress.c - training status line, periodic log lines, CSV log and loss history. */
#include "train/progress.h"

#include "core/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int push_loss(dl_progress *p, double v)
{
    if (p->n_loss == p->cap_loss) {
        int cap = p->cap_loss ? p->cap_loss * 2 : 1024;
        double *n = realloc(p->loss, (size_t)cap * sizeof *n);
        if (!n) return DL_ERR;
        p->loss = n;
        p->cap_loss = cap;
    }
    p->loss[p->n_loss++] = v;
    return DL_OK;
}

/* Keep the rows of an existing CSV with step <= start_step; load their losses. */
static int reload_csv(dl_progress *p, const char *path, int start_step, char **kept, size_t *kept_len)
{
    *kept = NULL;
    *kept_len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return DL_OK; /* nothing to keep */
    char line[512];
    size_t cap = 0;
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (lineno == 1) continue; /* header */
        int step, epoch;
        double loss, lr, wall;
        if (sscanf(line, "%d,%d,%lf,%lf,%lf", &step, &epoch, &loss, &lr, &wall) != 5) continue;
        if (step > start_step) break;
        /* keep the history dense: a row per step 1..start_step */
        while (p->n_loss < step - 1) push_loss(p, loss);
        if (p->n_loss == step - 1) push_loss(p, loss);
        p->wall_offset = wall;
        size_t l = strlen(line);
        if (*kept_len + l + 1 > cap) {
            cap = (cap + l + 1) * 2;
            char *n = realloc(*kept, cap);
            if (!n) { fclose(f); return dl_error_set("out of memory"); }
            *kept = n;
        }
        memcpy(*kept + *kept_len, line, l + 1);
        *kept_len += l;
    }
    fclose(f);
    return DL_OK;
}

int dl_progress_init(dl_progress *p, FILE *out, int tty, int total, int start_step, const char *csv_path)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->tty = tty >= 0 ? tty : (out && isatty(fileno(out)));
    p->total = total;
    p->start_step = start_step;
    p->every = total >= 100 ? total / 20 : 5;
    p->t0 = dl_now_seconds();
    if (csv_path) {
        p->csv_path = strdup(csv_path);
        char *kept = NULL;
        size_t kept_len = 0;
        if (start_step > 0 && reload_csv(p, csv_path, start_step, &kept, &kept_len) != DL_OK) return DL_ERR;
        p->csv = fopen(csv_path, "wb");
        if (!p->csv) {
            free(kept);
            return dl_error_set("%s: cannot write the training log: %s", csv_path, strerror(errno));
        }
        fprintf(p->csv, "step,epoch,loss,lr,wall_s\n");
        if (kept) fwrite(kept, 1, kept_len, p->csv);
        free(kept);
        fflush(p->csv);
    }
    return DL_OK;
}

double dl_progress_running_loss(const dl_progress *p)
{
    int n = p->n_loss < DL_PROGRESS_WINDOW ? p->n_loss : DL_PROGRESS_WINDOW;
    if (n == 0) return 0;
    double s = 0;
    for (int i = p->n_loss - n; i < p->n_loss; i++) s += p->loss[i];
    return s / n;
}

static void fmt_time(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || s > 1e8) { snprintf(buf, cap, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, cap, "%02ld:%02ld", t / 60, t % 60);
}

void dl_progress_step(dl_progress *p, int step, int epoch, double loss, double lr)
{
    double el = dl_now_seconds() - p->t0;
    p->last_lr = lr;
    while (p->n_loss < step - 1) push_loss(p, loss);
    if (p->n_loss == step - 1) push_loss(p, loss);
    if (p->csv) {
        fprintf(p->csv, "%d,%d,%.9g,%.9g,%.3f\n", step, epoch, loss, lr, p->wall_offset + el);
        fflush(p->csv);
    }
    if (!p->out) return;
    int done = step - p->start_step;
    double its = el > 0 ? done / el : 0;
    char eta[32], elapsed[32];
    fmt_time(its > 0 ? (p->total - step) / its : -1, eta, sizeof eta);
    fmt_time(el, elapsed, sizeof elapsed);
    int pct = p->total ? (int)(100.0 * step / p->total) : 100;
    if (p->tty) {
        fprintf(p->out, "\r\033[Ksteps %3d%% %d/%d [%s<%s, %.2f it/s] epoch %d loss %.4f avr %.4f lr %.3g", pct,
                step, p->total, elapsed, eta, its, epoch, loss, dl_progress_running_loss(p), lr);
        fflush(p->out);
    } else if (step % p->every == 0 || step == p->total || step == p->start_step + 1) {
        fprintf(p->out, "step %d/%d epoch %d loss %.6f avr_loss %.6f lr %.4g %.2f it/s eta %s\n", step, p->total,
                epoch, loss, dl_progress_running_loss(p), lr, its, eta);
        fflush(p->out);
    }
}

void dl_progress_note(dl_progress *p, const char *fmt, ...)
{
    if (!p->out) return;
    if (p->tty) fprintf(p->out, "\r\033[K");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(p->out, fmt, ap);
    va_end(ap);
    fputc('\n', p->out);
    fflush(p->out);
}

void dl_progress_finish(dl_progress *p)
{
    if (p->out && p->tty) { fputc('\n', p->out); fflush(p->out); }
    if (p->csv) fclose(p->csv);
    free(p->csv_path);
    free(p->loss);
    memset(p, 0, sizeof *p);
}
