/* threadpool: a persistent fork-join pool for the CPU backend. A decoded
 * token dispatches a few hundred small jobs, so workers spin on a generation
 * counter for a short while before sleeping on a condition variable; the
 * calling thread is worker 0 and never sleeps.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels.h"

/* How long an idle worker spins before sleeping. Dispatches inside one
 * token are microseconds apart; the gap between tokens (sampling) is longer,
 * and there sleeping costs only one wake-up. */
#define SPIN_SECONDS 200e-6

#define CACHE_LINE 64

typedef struct {
    lloco_threadpool *tp;
    int ith;
} worker_arg;

struct lloco_threadpool {
    int n_threads;
    int spin; /* 0 when threads outnumber CPUs: a spinning worker would hold
               * the CPU another worker (or the caller) needs to finish */
    pthread_t *threads;
    worker_arg *args;

    /* The job: written by the caller before it bumps `generation` (a
     * release), read by workers after they see the bump (an acquire). */
    lloco_task_fn fn;
    void *ctx;

    /* Hot counters on their own lines so spinning readers do not slow the
     * writers of unrelated fields. */
    _Alignas(CACHE_LINE) atomic_uint generation;
    _Alignas(CACHE_LINE) atomic_int n_done; /* workers (not the caller) done with this generation */
    _Alignas(CACHE_LINE) atomic_int n_sleeping;
    atomic_int stop;

    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Waits until the generation differs from `seen` (or stop), spinning first.
 * Returns the new generation. */
static unsigned wait_for_job(lloco_threadpool *tp, unsigned seen) {
    double deadline = 0;
    for (unsigned i = 1; tp->spin; i++) {
        unsigned g = atomic_load_explicit(&tp->generation, memory_order_acquire);
        if (g != seen) return g;
        cpu_relax();
        if (i % 128 == 0) {
            double now = lloco_time_now();
            if (deadline == 0)
                deadline = now + SPIN_SECONDS;
            else if (now > deadline)
                break;
        }
    }
    /* Sleep. n_sleeping is raised before re-checking the generation, and the
     * caller bumps the generation before reading n_sleeping (both seq_cst), so
     * either we see the new job here or the caller sees us and signals. */
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add(&tp->n_sleeping, 1);
    unsigned g;
    while ((g = atomic_load(&tp->generation)) == seen) pthread_cond_wait(&tp->cv, &tp->mu);
    atomic_fetch_sub(&tp->n_sleeping, 1);
    pthread_mutex_unlock(&tp->mu);
    return g;
}

static void *worker_main(void *p) {
    worker_arg *a = p;
    lloco_threadpool *tp = a->tp;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_job(tp, seen);
        if (atomic_load_explicit(&tp->stop, memory_order_acquire)) break;
        tp->fn(tp->ctx, a->ith, tp->n_threads);
        atomic_fetch_add_explicit(&tp->n_done, 1, memory_order_release);
    }
    return NULL;
}

/* Bumps the generation and wakes sleepers. */
static void publish(lloco_threadpool *tp) {
    atomic_fetch_add(&tp->generation, 1);
    if (atomic_load(&tp->n_sleeping) > 0) {
        pthread_mutex_lock(&tp->mu);
        pthread_cond_broadcast(&tp->cv);
        pthread_mutex_unlock(&tp->mu);
    }
}

static void stop_workers(lloco_threadpool *tp, int n_started) {
    atomic_store(&tp->stop, 1);
    publish(tp);
    for (int i = 0; i < n_started; i++) pthread_join(tp->threads[i], NULL);
}

int lloco_threadpool_create(int n_threads, lloco_threadpool **out) {
    *out = NULL;
    if (n_threads < 1) return lloco_error(LLOCO_ERR_INVAL, "threadpool: %d threads", n_threads);
    lloco_threadpool *tp = aligned_alloc(CACHE_LINE, sizeof *tp);
    if (!tp) return lloco_error(LLOCO_ERR_NOMEM, "threadpool: out of memory");
    memset(tp, 0, sizeof *tp);
    tp->n_threads = n_threads;
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    tp->spin = cpus <= 0 || n_threads <= cpus;
    atomic_init(&tp->generation, 0);
    atomic_init(&tp->n_done, 0);
    atomic_init(&tp->n_sleeping, 0);
    atomic_init(&tp->stop, 0);
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->cv, NULL);
    tp->threads = calloc((size_t)n_threads, sizeof *tp->threads);
    tp->args = calloc((size_t)n_threads, sizeof *tp->args);
    if (!tp->threads || !tp->args) {
        lloco_threadpool_free(tp);
        return lloco_error(LLOCO_ERR_NOMEM, "threadpool: out of memory");
    }
    for (int i = 1; i < n_threads; i++) {
        tp->args[i - 1] = (worker_arg){tp, i};
        int rc = pthread_create(&tp->threads[i - 1], NULL, worker_main, &tp->args[i - 1]);
        if (rc != 0) {
            stop_workers(tp, i - 1);
            tp->n_threads = 1; /* nothing left to stop in free */
            lloco_threadpool_free(tp);
            return lloco_error(LLOCO_ERR_NOMEM, "threadpool: pthread_create: %s", strerror(rc));
        }
    }
    *out = tp;
    return 0;
}

void lloco_threadpool_free(lloco_threadpool *tp) {
    if (!tp) return;
    if (tp->threads && tp->n_threads > 1) stop_workers(tp, tp->n_threads - 1);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->cv);
    free(tp->threads);
    free(tp->args);
    free(tp);
}

int lloco_threadpool_size(const lloco_threadpool *tp) { return tp->n_threads; }

void lloco_threadpool_run(lloco_threadpool *tp, lloco_task_fn fn, void *ctx) {
    const int nth = tp->n_threads;
    if (nth == 1) {
        fn(ctx, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->ctx = ctx;
    atomic_store_explicit(&tp->n_done, 0, memory_order_relaxed);
    publish(tp);
    fn(ctx, 0, nth);
    /* Workers finish within microseconds of us on a quiet machine; past a
     * short spin they were descheduled, and yielding lets them run. */
    for (unsigned i = 1; atomic_load_explicit(&tp->n_done, memory_order_acquire) < nth - 1; i++) {
        if (i < 2048 && tp->spin)
            cpu_relax();
        else
            sched_yield();
    }
}
