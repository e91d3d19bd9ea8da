/* lr_schedule.c - diffusers' get_scheduler LambdaLR multipliers, in double as the Python lambdas. */
#include "train/lr_schedule.h"

#include "core/error.h"

#include <math.h>
#include <string.h>

static const char *const k_names[] = {"constant", "constant_with_warmup", "linear", "cosine",
                                      "cosine_with_restarts", "polynomial"};

int dl_lr_kind_parse(const char *name, dl_lr_kind *out)
{
    for (int i = 0; i < (int)(sizeof k_names / sizeof *k_names); i++)
        if (strcmp(name, k_names[i]) == 0) { *out = (dl_lr_kind)i; return DL_OK; }
    return dl_error_set("lr_scheduler: unknown '%s'", name);
}

const char *dl_lr_kind_name(dl_lr_kind k)
{
    return (unsigned)k < sizeof k_names / sizeof *k_names ? k_names[k] : "?";
}

void dl_lr_schedule_init(dl_lr_schedule *s, dl_lr_kind kind, int warmup_steps, int total_steps,
                         int num_cycles, double power)
{
    s->kind = kind;
    s->warmup_steps = warmup_steps;
    s->total_steps = total_steps;
    s->num_cycles = num_cycles;
    s->power = power;
    s->lr_end = 1e-7;
}

static double imax1(int v) { return v > 1 ? (double)v : 1.0; }

double dl_lr_multiplier(const dl_lr_schedule *s, int step, double base_lr)
{
    const int W = s->warmup_steps, T = s->total_steps;
    const double cs = (double)step;
    if (s->kind == DL_LR_CONSTANT) return 1.0;
    if (step < W) return cs / imax1(W);
    switch (s->kind) {
    case DL_LR_CONSTANT_WITH_WARMUP: return 1.0;
    case DL_LR_LINEAR: {
        double v = (double)(T - step) / imax1(T - W);
        return v > 0.0 ? v : 0.0;
    }
    case DL_LR_COSINE: {
        double progress = (double)(step - W) / imax1(T - W);
        double v = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
        return v > 0.0 ? v : 0.0;
    }
    case DL_LR_COSINE_WITH_RESTARTS: {
        double progress = (double)(step - W) / imax1(T - W);
        if (progress >= 1.0) return 0.0;
        double x = (double)s->num_cycles * progress;
        double fm = fmod(x, 1.0); /* Python % on non-negative operands */
        return 0.5 * (1.0 + cos(M_PI * fm));
    }
    case DL_LR_POLYNOMIAL: {
        if (!(base_lr > s->lr_end)) return 1.0;
        if (step > T) return s->lr_end / base_lr;
        double range = base_lr - s->lr_end;
        double decay_steps = (double)(T - W);
        double pct = 1.0 - (double)(step - W) / decay_steps;
        double decay = range * pow(pct, s->power) + s->lr_end;
        return decay / base_lr;
    }
    default: return 1.0;
    }
}
