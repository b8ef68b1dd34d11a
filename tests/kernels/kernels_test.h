/* Helpers shared by the kernels tests: deterministic random data, the list
 * of backends under test (every CPU ISA level this machine runs, several
 * thread counts, CUDA when it can be created) and the comparison against the
 * reference (NMSE plus elementwise |got-ref| <= tol + |ref|*eps, or bit for
 * bit).
 */
#ifndef LLOCO_TESTS_KERNELS_TEST_H
#define LLOCO_TESTS_KERNELS_TEST_H

#include <stdint.h>
#include <stdlib.h>

#include "kernels/backend_impl.h"
#include "kernels/kernels.h"
#include "tests/test.h"

/* xorshift64*: reproducible across platforms, unlike rand(). */
typedef struct {
    uint64_t s;
} kt_rng;

static inline uint32_t kt_u32(kt_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (uint32_t)((r->s * 0x2545F4914F6CDD1DULL) >> 32);
}

/* Uniform in [lo, hi). */
static inline float kt_uniform(kt_rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)(kt_u32(r) >> 8) * (1.0f / 16777216.0f);
}

static inline void kt_fill(kt_rng *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = kt_uniform(r, lo, hi);
}

/* Checked allocation for tests: a failure ends the run, as there is nothing
 * meaningful left to test. */
static inline void *kt_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

#define KT_MAX_BACKENDS 16

typedef struct {
    int n;
    lloco_backend *be[KT_MAX_BACKENDS];
    char label[KT_MAX_BACKENDS][64];
} kt_backends;

/* Every optimized backend to compare against the reference. */
void kt_backends_open(kt_backends *bs);
void kt_backends_close(kt_backends *bs);

/* Compares got with ref over n values; on failure records a test failure
 * naming `what` and prints the first mismatches. Returns 1 if they match. */
int kt_compare(const char *what, const float *ref, const float *got, int64_t n, double nmse_max,
               float tol, float eps);

/* Like kt_compare, but every value must have the same bits (the ops that
 * follow GGML's arithmetic exactly). */
int kt_compare_exact(const char *what, const float *ref, const float *got, int64_t n);

/* Root mean square of x, for tolerances that scale with the data. */
float kt_rms(const float *x, int64_t n);

#endif
