/* Tests of kernels/threadpool.c: every worker index runs exactly once per
 * dispatch, across many back-to-back dispatches (the spinning path) and
 * across pauses long enough for workers to fall asleep (the condvar path).
 */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "kernels_test.h"

enum { MAX_T = 8 };

typedef struct {
    atomic_int hits[MAX_T];
    atomic_int bad_nth;
    int expect_nth;
} count_job;

static void count_task(void *p, int ith, int nth) {
    count_job *j = p;
    if (nth != j->expect_nth || ith < 0 || ith >= nth)
        atomic_fetch_add(&j->bad_nth, 1);
    else
        atomic_fetch_add(&j->hits[ith], 1);
}

static void sleep_ms(int ms) {
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

TEST_CASE(threadpool_every_index_once) {
    for (int n = 1; n <= 5; n++) {
        lloco_threadpool *tp;
        CHECK_OK(lloco_threadpool_create(n, &tp));
        if (!tp) continue;
        CHECK(lloco_threadpool_size(tp) == n);
        count_job j;
        memset(&j, 0, sizeof j);
        j.expect_nth = n;
        const int runs = 2000;
        for (int r = 0; r < runs; r++) {
            lloco_threadpool_run(tp, count_task, &j);
            /* the run must be complete when it returns */
            for (int i = 0; i < n; i++)
                if (atomic_load(&j.hits[i]) != r + 1) {
                    CHECKF(0, "n=%d run %d: index %d ran %d times", n, r, i,
                           atomic_load(&j.hits[i]));
                    r = runs;
                    break;
                }
            if (r % 500 == 499) sleep_ms(5); /* let workers fall asleep, then wake them */
        }
        CHECK(atomic_load(&j.bad_nth) == 0);
        lloco_threadpool_free(tp);
    }
}

TEST_CASE(threadpool_errors) {
    lloco_threadpool *tp = (lloco_threadpool *)&tp;
    CHECK_ERR(lloco_threadpool_create(0, &tp), LLOCO_ERR_INVAL);
    CHECK(tp == NULL);
    lloco_threadpool_free(NULL);
}

/* A pool freed while its workers sleep, and one freed right after a run
 * while they still spin, both shut down. */
TEST_CASE(threadpool_shutdown) {
    for (int pause = 0; pause < 2; pause++) {
        lloco_threadpool *tp;
        CHECK_OK(lloco_threadpool_create(4, &tp));
        if (!tp) continue;
        count_job j;
        memset(&j, 0, sizeof j);
        j.expect_nth = 4;
        lloco_threadpool_run(tp, count_task, &j);
        if (pause) sleep_ms(5);
        lloco_threadpool_free(tp);
        CHECK(atomic_load(&j.hits[3]) == 1);
    }
}
