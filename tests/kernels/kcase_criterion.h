/* kcase_criterion.h - runs kcase.h cases inside Criterion tests: one stream per test, the CPU
 * reference on the test context, every check over tolerance logged and failing the test. */
#ifndef DANLU_TESTS_KCASE_CRITERION_H
#define DANLU_TESTS_KCASE_CRITERION_H

#include "kcase.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>

static inline void kc_criterion_report(void *user, const char *label, double err, double tol)
{
    if (!(err <= tol))
        cr_log_error("%s: %s: relative L2 error %.3g over tolerance %.3g", (const char *)user,
                     label, err, tol);
}

/* Sets up e for one test named `name` (used in failure messages). */
static inline void kc_env_begin(kc_env *e, const char *name)
{
    memset(e, 0, sizeof *e);
    e->cpu = tu_ctx();
    e->report = kc_criterion_report;
    e->user = (void *)name;
    cr_assert_eq(cudaStreamCreate(&e->stream), cudaSuccess, "%s: cudaStreamCreate", name);
}

/* Fails the test if any check failed. */
static inline void kc_env_end(kc_env *e)
{
    cudaStreamDestroy(e->stream);
    cr_expect_gt(e->checks, 0, "%s: no check ran", (const char *)e->user);
    cr_expect_eq(e->failures, 0, "%s: %d of %d checks over tolerance (see log)",
                 (const char *)e->user, e->failures, e->checks);
}

#endif
