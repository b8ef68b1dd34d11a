/* The shared helpers of kernels_test.h: the backends under test and the
 * reference comparison.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels_test.h"

static void add_backend(kt_backends *bs, lloco_backend *be, const char *label) {
    LLOCO_ASSERT(bs->n < KT_MAX_BACKENDS);
    bs->be[bs->n] = be;
    snprintf(bs->label[bs->n], sizeof bs->label[bs->n], "%s", label);
    bs->n++;
}

void kt_backends_open(kt_backends *bs) {
    bs->n = 0;
    /* Each ISA level this CPU runs, single-threaded and with 3 threads (an
     * odd count shakes out partitioning edges); the best level also with 2. */
    const lloco_cpu_isa best = lloco_cpu_isa_detect();
    for (int isa = LLOCO_CPU_ISA_SCALAR; isa <= (int)best; isa++) {
        const int threads[] = {1, 3, 2};
        for (int t = 0; t < (isa == (int)best ? 3 : 2); t++) {
            lloco_backend *be;
            int rc = lloco_backend_create_cpu_isa(threads[t], (lloco_cpu_isa)isa, &be);
            CHECKF(rc == 0, "create cpu %s: %s", lloco_cpu_isa_name((lloco_cpu_isa)isa),
                   lloco_last_error());
            if (rc != 0) continue;
            char label[64];
            snprintf(label, sizeof label, "cpu(%s)", lloco_backend_describe(be));
            add_backend(bs, be, label);
        }
    }
    lloco_backend *cuda;
    if (lloco_backend_create(LLOCO_BACKEND_CUDA, 0, &cuda) == 0) add_backend(bs, cuda, "cuda");
    lloco_error_clear();
}

void kt_backends_close(kt_backends *bs) {
    for (int i = 0; i < bs->n; i++) lloco_backend_free(bs->be[i]);
    bs->n = 0;
}

float kt_rms(const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return n ? (float)sqrt(s / (double)n) : 0.0f;
}

int kt_compare(const char *what, const float *ref, const float *got, int64_t n, double nmse_max,
               float tol, float eps) {
    double err = 0.0, norm = 0.0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)got[i] - ref[i];
        err += d * d;
        norm += (double)ref[i] * ref[i];
        if (!(fabsf(got[i] - ref[i]) <= tol + fabsf(ref[i]) * eps)) { /* NaN fails too */
            if (bad < 5)
                fprintf(stderr, "    %s: [%lld] ref %.9g got %.9g (|diff| %.3g > %.3g)\n", what,
                        (long long)i, ref[i], got[i], fabs(d), tol + fabsf(ref[i]) * eps);
            bad++;
        }
    }
    const double nmse = norm > 0 ? err / norm : err;
    CHECKF(bad == 0 && nmse <= nmse_max, "%s: %lld of %lld values differ, nmse %.3g (max %.3g)",
           what, (long long)bad, (long long)n, nmse, nmse_max);
    return bad == 0 && nmse <= nmse_max;
}

int kt_compare_exact(const char *what, const float *ref, const float *got, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(&ref[i], &got[i], sizeof(float)) == 0) continue;
        if (bad < 5)
            fprintf(stderr, "    %s: [%lld] ref %.9g got %.9g\n", what, (long long)i, ref[i],
                    got[i]);
        bad++;
    }
    CHECKF(bad == 0, "%s: %lld of %lld values differ from the reference's bits", what,
           (long long)bad, (long long)n);
    return bad == 0;
}
