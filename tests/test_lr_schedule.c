/* test_lr_schedule.c - learning-rate schedules against torch LambdaLR values from
 * diffusers.optimization.get_scheduler (tests/gen/gen_lr.py, float64). */
#include "train/lr_schedule.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

Test(lr_schedule, golden_diffusers)
{
    static const char *kinds[] = {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                  "polynomial"};
    static const int wt[][2] = {{0, 50}, {10, 60}, {7, 33}};
    const double base_lr = 1e-4;
    dl_st_file f;
    tu_golden_open(&f, "lr");
    int checked = 0;
    for (int k = 0; k < 6; k++) {
        dl_lr_kind kind;
        cr_assert_eq(dl_lr_kind_parse(kinds[k], &kind), DL_OK);
        cr_expect_str_eq(dl_lr_kind_name(kind), kinds[k]);
        for (int c = 0; c < 3; c++) {
            char key[128];
            snprintf(key, sizeof key, "%s_w%d_t%d.params", kinds[k], wt[c][0], wt[c][1]);
            const dl_st_tensor *tp = dl_st_find(&f, key);
            cr_assert_not_null(tp, "%s", key);
            int64_t par[3];
            memcpy(par, tp->data, sizeof par);
            snprintf(key, sizeof key, "%s_w%d_t%d.power", kinds[k], wt[c][0], wt[c][1]);
            double power;
            memcpy(&power, dl_st_find(&f, key)->data, sizeof power);
            snprintf(key, sizeof key, "%s_w%d_t%d.lr", kinds[k], wt[c][0], wt[c][1]);
            const dl_st_tensor *t = dl_st_find(&f, key);
            cr_assert(t && t->dtype == DL_F64, "%s", key);
            int64_t n = dl_st_numel(t);
            const double *ref = t->data;
            dl_lr_schedule s;
            dl_lr_schedule_init(&s, kind, (int)par[0], (int)par[1], (int)par[2], power);
            for (int64_t i = 0; i < n; i++) {
                double got = base_lr * dl_lr_multiplier(&s, (int)i, base_lr);
                double err = fabs(got - ref[i]);
                /* the same double formulas: equal up to libm's cos/pow last-bit differences */
                cr_expect(err <= 1e-15 * fabs(ref[i]) + 1e-22, "%s step %lld: got %.17g want %.17g", key, (long long)i,
                          got, ref[i]);
                checked++;
            }
        }
    }
    cr_expect(checked > 800);
    dl_st_close(&f);
    dl_lr_kind kind;
    cr_expect_eq(dl_lr_kind_parse("adafactor", &kind), DL_ERR);
}
