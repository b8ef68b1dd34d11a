/* core: what every lloco module shares — error codes with a per-thread detail
 * message, the log callback, read-only file mappings and a few checked-size
 * helpers. It sits below kernels/ and knows nothing about models.
 */
#ifndef LLOCO_CORE_H
#define LLOCO_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Every fallible call returns int: 0 on success, one of these (negative) on
 * failure. lloco_strerror() names the code; lloco_last_error() gives the
 * detail the failing call recorded on this thread (file, offset, key...). */
#define LLOCO_ERRNO_MAP(X)                                              \
    X(NOMEM, -1, "out of memory")                                       \
    X(IO, -2, "input/output error")                                     \
    X(FORMAT, -3, "malformed or damaged file")                          \
    X(UNSUPPORTED, -4, "unsupported feature")                           \
    X(INVAL, -5, "invalid argument")                                    \
    X(NOTFOUND, -6, "not found")                                        \
    X(RANGE, -7, "value out of range")                                  \
    X(TYPE, -8, "wrong type")                                           \
    X(FULL, -9, "capacity exhausted")                                   \
    X(EXISTS, -10, "already exists")                                    \
    X(CANCELLED, -11, "cancelled")                                      \
    X(MISMATCH, -12, "mismatch")                                        \
    X(BUSY, -13, "busy, try again later")

typedef enum {
    LLOCO_OK = 0,
#define LLOCO_ERR_ENUM(name, val, msg) LLOCO_ERR_##name = (val),
    LLOCO_ERRNO_MAP(LLOCO_ERR_ENUM)
#undef LLOCO_ERR_ENUM
} lloco_err;

/* Static string naming an error code; never NULL. */
const char *lloco_strerror(int err);

/* Records a detail message for the calling thread and returns err, so that
 * failing paths read `return lloco_error(LLOCO_ERR_FORMAT, "...", ...);`. */
int lloco_error(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The detail recorded by the last lloco_error() on this thread, or the
 * code's name if none was recorded since lloco_error_clear(). The string is
 * owned by the thread and valid until its next lloco_error() call. */
const char *lloco_last_error(void);
void lloco_error_clear(void);

/* Logging. Library code never prints; it calls lloco_log(), which goes to
 * the callback (default: stderr for WARN and above). */
typedef enum {
    LLOCO_LOG_DEBUG = 0,
    LLOCO_LOG_INFO = 1,
    LLOCO_LOG_WARN = 2,
    LLOCO_LOG_ERROR = 3,
} lloco_log_level;

typedef void (*lloco_log_fn)(lloco_log_level level, const char *msg, void *user);
void lloco_log_set(lloco_log_fn fn, lloco_log_level min_level, void *user);
void lloco_log(lloco_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A read-only mapping of a whole file. data is NULL for an empty file. */
typedef struct {
    const uint8_t *data;
    size_t size;
} lloco_mapped_file;

int lloco_file_map(const char *path, lloco_mapped_file *out);
void lloco_file_unmap(lloco_mapped_file *m);

/* Reads a whole file into a NUL-terminated heap buffer (caller frees).
 * Refuses files larger than max_bytes. */
int lloco_file_read(const char *path, size_t max_bytes, char **out, size_t *len);
/* Whether path names a regular file (symlinks followed). */
int lloco_is_file(const char *path);
/* "dir/name" in a heap string the caller frees; NULL when out of memory. */
char *lloco_path_join(const char *dir, const char *name);

/* A growable byte buffer, NUL-terminated after every append (data is NULL
 * until the first). Zero-initialise it; lloco_buf_free releases it. */
typedef struct {
    char *data;
    size_t len, cap;
} lloco_buf;
/* LLOCO_ERR_NOMEM when out of memory (the buffer is unchanged then). */
int lloco_buf_append(lloco_buf *b, const void *s, size_t n);
int lloco_buf_printf(lloco_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void lloco_buf_free(lloco_buf *b);

/* Overflow-checked size arithmetic: return 0 on success, LLOCO_ERR_RANGE on
 * overflow. */
int lloco_size_mul(size_t a, size_t b, size_t *out);
int lloco_size_add(size_t a, size_t b, size_t *out);

/* Monotonic clock in seconds. */
double lloco_time_now(void);

/* Peak and current resident set size of this process in bytes (VmHWM /
 * VmRSS from /proc/self/status; 0 where unavailable). Unlike getrusage's
 * ru_maxrss these describe this address space only: a process started by
 * fork+exec from a large parent does not inherit the parent's peak. */
size_t lloco_rss_peak_bytes(void);
size_t lloco_rss_now_bytes(void);

/* UTF-8: length of the sequence starting with byte c (1..4), or 0 if c
 * cannot start one. lloco_utf8_incomplete_tail returns how many trailing
 * bytes of s are the unfinished start of a multi-byte sequence (0..3): a
 * streaming writer holds those back until the next piece arrives. */
int lloco_utf8_seq_len(uint8_t c);
size_t lloco_utf8_incomplete_tail(const char *s, size_t n);
/* Length of the valid UTF-8 sequence at s[0..n) (n >= 1), 0 if invalid
 * (overlongs, surrogates and code points past U+10FFFF included); its code
 * point goes to *cp when cp is not NULL. */
size_t lloco_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* A NUL-terminated copy of s[0..n) with every byte that does not start a
 * valid sequence, and every NUL, replaced by U+FFFD: text for JSON, which
 * must be UTF-8 and whose C strings end at a NUL. NULL when out of memory.
 * The caller frees it. */
char *lloco_utf8_repair(const char *s, size_t n);

#define LLOCO_ASSERT(cond)                                                  \
    do {                                                                    \
        if (!(cond)) lloco_assert_fail(#cond, __FILE__, __LINE__);          \
    } while (0)
void lloco_assert_fail(const char *cond, const char *file, int line)
    __attribute__((noreturn));

#define LLOCO_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
