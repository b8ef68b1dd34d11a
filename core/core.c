/* core: error codes and their per-thread detail, the log sink, file mapping,
 * checked arithmetic and UTF-8 helpers shared by all modules.
 */
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *lloco_strerror(int err) {
    switch (err) {
    case LLOCO_OK: return "success";
#define LLOCO_ERR_CASE(name, val, msg) case LLOCO_ERR_##name: return msg;
        LLOCO_ERRNO_MAP(LLOCO_ERR_CASE)
#undef LLOCO_ERR_CASE
    }
    return "unknown error";
}

static _Thread_local char tls_detail[1024];
static _Thread_local int tls_code;

int lloco_error(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_detail, sizeof tls_detail, fmt, ap);
    va_end(ap);
    tls_code = err;
    return err;
}

const char *lloco_last_error(void) {
    if (tls_detail[0]) return tls_detail;
    return lloco_strerror(tls_code);
}

void lloco_error_clear(void) {
    tls_detail[0] = 0;
    tls_code = 0;
}

static void log_stderr(lloco_log_level level, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"debug", "info", "warning", "error"};
    fprintf(stderr, "lloco: %s: %s\n", names[level], msg);
}

static lloco_log_fn log_fn = log_stderr;
static lloco_log_level log_min = LLOCO_LOG_WARN;
static void *log_user;

void lloco_log_set(lloco_log_fn fn, lloco_log_level min_level, void *user) {
    log_fn = fn ? fn : log_stderr;
    log_min = min_level;
    log_user = user;
}

void lloco_log(lloco_log_level level, const char *fmt, ...) {
    if (level < log_min) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user);
}

int lloco_file_map(const char *path, lloco_mapped_file *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lloco_error(errno == ENOENT ? LLOCO_ERR_NOTFOUND : LLOCO_ERR_IO,
                                   "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lloco_error(LLOCO_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lloco_error(LLOCO_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return 0;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return lloco_error(LLOCO_ERR_IO, "%s: mmap: %s", path, strerror(e));
    out->data = p;
    out->size = (size_t)st.st_size;
    return 0;
}

void lloco_file_unmap(lloco_mapped_file *m) {
    if (m->data) munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

int lloco_file_read(const char *path, size_t max_bytes, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lloco_error(errno == ENOENT ? LLOCO_ERR_NOTFOUND : LLOCO_ERR_IO,
                               "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max_bytes) {
                free(buf);
                fclose(f);
                return lloco_error(LLOCO_ERR_RANGE, "%s: larger than %zu bytes", path, max_bytes);
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return lloco_error(LLOCO_ERR_IO, "%s: read error", path);
    }
    if (n > max_bytes) {
        free(buf);
        return lloco_error(LLOCO_ERR_RANGE, "%s: larger than %zu bytes", path, max_bytes);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return 0;
}

int lloco_size_mul(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return LLOCO_ERR_RANGE;
    *out = a * b;
    return 0;
}

int lloco_size_add(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return LLOCO_ERR_RANGE;
    *out = a + b;
    return 0;
}

double lloco_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t proc_status_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t klen = strlen(key), kib = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kib = (size_t)strtoull(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib * 1024;
}

size_t lloco_rss_peak_bytes(void) { return proc_status_kib("VmHWM"); }
size_t lloco_rss_now_bytes(void) { return proc_status_kib("VmRSS"); }

int lloco_utf8_seq_len(uint8_t c) {
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) return c >= 0xC2 ? 2 : 0;
    if ((c & 0xF0) == 0xE0) return 3;
    if ((c & 0xF8) == 0xF0) return c <= 0xF4 ? 4 : 0;
    return 0;
}

size_t lloco_utf8_incomplete_tail(const char *s, size_t n) {
    /* Walk back over at most 3 continuation bytes to the lead byte. */
    size_t k = 0;
    while (k < n && k < 3 && (((uint8_t)s[n - 1 - k]) & 0xC0) == 0x80) k++;
    if (k == n) return 0;
    uint8_t lead = (uint8_t)s[n - 1 - k];
    int need = lloco_utf8_seq_len(lead);
    if (need > 1 && (size_t)need > k + 1) return k + 1;
    return 0;
}

size_t lloco_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        if (cp) *cp = c;
        return 1;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    uint32_t v = c & (0x7F >> need);
    for (size_t i = 1; i < need; i++) v = (v << 6) | (s[i] & 0x3F);
    if (cp) *cp = v;
    return need;
}

/* Room for n more bytes and the NUL after them. */
static int buf_reserve(lloco_buf *b, size_t n) {
    if (b->len + n + 1 <= b->cap) return 0;
    size_t cap = (b->len + n + 1) * 2;
    char *p = realloc(b->data, cap);
    if (!p) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    b->data = p;
    b->cap = cap;
    return 0;
}

int lloco_buf_append(lloco_buf *b, const void *s, size_t n) {
    int rc = buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int lloco_buf_printf(lloco_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return lloco_error(LLOCO_ERR_INVAL, "bad format");
    int rc = buf_reserve(b, (size_t)n);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void lloco_buf_free(lloco_buf *b) {
    free(b->data);
    *b = (lloco_buf){0};
}

char *lloco_utf8_repair(const char *s, size_t n) {
    char *out = malloc(n * 3 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        size_t k = s[i] ? lloco_utf8_decode((const uint8_t *)s + i, n - i, NULL) : 0;
        if (k) {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    *o = '\0';
    return out;
}

int lloco_is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

char *lloco_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void lloco_assert_fail(const char *cond, const char *file, int line) {
    fprintf(stderr, "lloco: assertion failed: %s (%s:%d)\n", cond, file, line);
    abort();
}
