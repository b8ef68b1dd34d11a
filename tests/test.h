/* A minimal test harness: TEST_CASE registers a case at load time, CHECK*
 * record failures with file:line and go on, SKIP ends a case as skipped.
 * Each test executable links test_main.c, which runs every case (or those
 * whose name contains argv[1]) and exits non-zero if any failed.
 */
#ifndef LLOCO_TEST_H
#define LLOCO_TEST_H

#include <math.h>
#include <stdio.h>

#include "core/core.h"

typedef void (*lloco_test_fn)(void);
void lloco_test_register(const char *name, lloco_test_fn fn);
void lloco_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Marks the running case skipped (prints why); the case should return. */
void lloco_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Number of failures recorded in the running case so far. */
int lloco_test_case_failures(void);

/* Path of a file under tests/fixtures (static buffer per call site use). */
const char *lloco_test_fixture(const char *rel);
/* Path of the default model (models/ or $LLOCO_MODELS); NULL if absent
 * after printing how to fetch it. */
const char *lloco_test_default_model(void);

#define TEST_CASE(name)                                                        \
    static void name(void);                                                    \
    __attribute__((constructor)) static void name##_register(void) {           \
        lloco_test_register(#name, name);                                      \
    }                                                                          \
    static void name(void)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) lloco_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);  \
    } while (0)

#define CHECKF(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond)) lloco_test_fail(__FILE__, __LINE__, __VA_ARGS__);         \
    } while (0)

#define CHECK_OK(expr)                                                         \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ != 0)                                                          \
            lloco_test_fail(__FILE__, __LINE__, "%s -> %d (%s): %s", #expr,    \
                            rc_, lloco_strerror(rc_), lloco_last_error());     \
    } while (0)

/* Expects expr to fail with code `err`. */
#define CHECK_ERR(expr, err)                                                   \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ != (err))                                                      \
            lloco_test_fail(__FILE__, __LINE__, "%s -> %d (%s), expected %d (%s)",\
                            #expr, rc_, lloco_strerror(rc_), (err),            \
                            lloco_strerror(err));                              \
    } while (0)

#define SKIP(...)                                                              \
    do {                                                                       \
        lloco_test_skip(__VA_ARGS__);                                          \
        return;                                                                \
    } while (0)

#endif
