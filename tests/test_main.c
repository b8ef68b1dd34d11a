/* Runner for the TEST_CASE harness in test.h: runs the registered cases in
 * registration order, prints one line per case and a summary line, and
 * exits 1 if any case failed (77, ctest's skip code, if all were skipped).
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test.h"

#define MAX_CASES 1024

static struct {
    const char *name;
    lloco_test_fn fn;
} cases[MAX_CASES];
static int n_cases;
static int case_failures;
static int case_skipped;

void lloco_test_register(const char *name, lloco_test_fn fn) {
    if (n_cases == MAX_CASES) {
        fprintf(stderr, "too many test cases\n");
        abort();
    }
    cases[n_cases].name = name;
    cases[n_cases].fn = fn;
    n_cases++;
}

void lloco_test_fail(const char *file, int line, const char *fmt, ...) {
    case_failures++;
    if (case_failures > 20) return; /* the first ones say enough */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

void lloco_test_skip(const char *fmt, ...) {
    case_skipped = 1;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  skip: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

int lloco_test_case_failures(void) { return case_failures; }

const char *lloco_test_fixture(const char *rel) {
    static _Thread_local char buf[8][1024];
    static _Thread_local int next;
    char *b = buf[next++ % 8];
    snprintf(b, 1024, "%s/tests/fixtures/%s", LLOCO_SOURCE_DIR, rel);
    return b;
}

const char *lloco_test_default_model(void) {
    static char buf[1024];
    const char *dir = getenv("LLOCO_MODELS");
    snprintf(buf, sizeof buf, "%s/SmolLM2-135M-Instruct.Q4_1.gguf",
             dir && *dir ? dir : LLOCO_SOURCE_DIR "/models");
    struct stat st;
    if (stat(buf, &st) != 0) {
        fprintf(stderr, "  default model missing: %s (run ./scripts/setup.sh)\n", buf);
        return NULL;
    }
    return buf;
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < n_cases; i++) {
        if (filter && !strstr(cases[i].name, filter)) continue;
        case_failures = 0;
        case_skipped = 0;
        lloco_error_clear();
        double t0 = lloco_time_now();
        cases[i].fn();
        double dt = lloco_time_now() - t0;
        const char *verdict = case_failures ? "FAIL" : case_skipped ? "SKIP" : "ok";
        fprintf(stderr, "%-4s %s (%.2fs)\n", verdict, cases[i].name, dt);
        if (case_failures) failed++;
        else if (case_skipped) skipped++;
        else passed++;
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    if (failed) return 1;
    if (passed == 0 && skipped > 0) return 77;
    return 0;
}
