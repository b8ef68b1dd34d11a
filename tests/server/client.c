/* The blocking test client (client.h): raw sockets to 127.0.0.1, a
 * response reader that understands Content-Length, chunked and
 * close-delimited bodies, and an SSE splitter over chunked bodies.
 */
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int cl_open(client *c, int port, int rcvbuf) {
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    cl_timeout(c, 3000);
    if (rcvbuf) setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        errno = e;
        return -1;
    }
    return 0;
}

void cl_timeout(client *c, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

void cl_close(client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

void cl_reset(client *c) {
    struct linger l = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    cl_close(c);
}

int cl_send_n(client *c, const char *s, size_t n) {
    while (n) {
        ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

int cl_send(client *c, const char *s) { return cl_send_n(c, s, strlen(s)); }

ssize_t cl_fill(client *c) {
    if (c->len == sizeof c->buf) return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n > 0) c->len += (size_t)n;
    return n;
}

void cl_consume(client *c, size_t n) {
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

int cl_eof(client *c) {
    if (c->len) return 0;
    ssize_t n = cl_fill(c);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

int cl_need(client *c, size_t n) {
    while (c->len < n)
        if (cl_fill(c) <= 0) return -1;
    return 0;
}

long cl_find(client *c, size_t from, const char *pat) {
    size_t pl = strlen(pat);
    for (;;) {
        for (size_t i = from; i + pl <= c->len; i++)
            if (!memcmp(c->buf + i, pat, pl)) return (long)(i + pl);
        if (cl_fill(c) <= 0) return -1;
    }
}

const char *resp_header(const resp *r, const char *name, char *val, size_t cap) {
    size_t nl = strlen(name);
    for (const char *l = strstr(r->head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        const char *s = l + 2;
        if (!strncasecmp(s, name, nl) && s[nl] == ':') {
            s += nl + 1;
            while (*s == ' ') s++;
            const char *e = strstr(s, "\r\n");
            size_t n = (size_t)(e - s) < cap - 1 ? (size_t)(e - s) : cap - 1;
            memcpy(val, s, n);
            val[n] = 0;
            return val;
        }
    }
    return NULL;
}

int resp_has(const resp *r, const char *name, const char *value) {
    char v[256];
    return resp_header(r, name, v, sizeof v) && !strcasecmp(v, value);
}

void resp_free(resp *r) {
    free(r->body);
    r->body = NULL;
}

int cl_chunk(client *c, char **out, size_t *n) {
    *out = NULL;
    *n = 0;
    long le = cl_find(c, 0, "\r\n");
    if (le < 0) return -1;
    size_t k = strtoul(c->buf, NULL, 16);
    cl_consume(c, (size_t)le);
    if (k + 2 > sizeof c->buf || cl_need(c, k + 2) || memcmp(c->buf + k, "\r\n", 2)) return -1;
    if (!(*out = malloc(k + 1))) return -1;
    memcpy(*out, c->buf, k);
    (*out)[k] = 0;
    *n = k;
    cl_consume(c, k + 2);
    return k > 0;
}

int read_resp(client *c, resp *r, int head_only) {
    memset(r, 0, sizeof *r);
    r->body = calloc(1, 1);
    long he = cl_find(c, 0, "\r\n\r\n");
    if (he < 0 || (size_t)he >= sizeof r->head) return -1;
    memcpy(r->head, c->buf, (size_t)he);
    r->head[he] = 0;
    cl_consume(c, (size_t)he);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) return -1;
    return head_only ? 0 : read_body(c, r);
}

int read_body(client *c, resp *r) {
    char v[64];
    if (resp_header(r, "content-length", v, sizeof v)) {
        size_t n = strtoul(v, NULL, 10);
        if (n > sizeof c->buf || cl_need(c, n)) return -1;
        r->body = realloc(r->body, n + 1);
        memcpy(r->body, c->buf, n);
        r->body_len = n;
        cl_consume(c, n);
    } else if (resp_has(r, "transfer-encoding", "chunked")) {
        for (;;) {
            char *part;
            size_t n;
            int k = cl_chunk(c, &part, &n);
            if (k < 0) return -1;
            if (k == 0) {
                free(part);
                break;
            }
            r->body = realloc(r->body, r->body_len + n + 1);
            memcpy(r->body + r->body_len, part, n);
            r->body_len += n;
            r->n_chunks++;
            free(part);
        }
    } else { /* delimited by the close */
        ssize_t n;
        while ((n = cl_fill(c)) > 0) {}
        if (n < 0) return -1;
        r->body = realloc(r->body, c->len + 1);
        memcpy(r->body, c->buf, c->len);
        r->body_len = c->len;
        c->len = 0;
    }
    r->body[r->body_len] = 0;
    return 0;
}

int roundtrip(client *c, const char *req, resp *r) {
    if (cl_send(c, req)) return -1;
    return read_resp(c, r, 0) ? -1 : r->status;
}

/* ---- server-sent events ---------------------------------------------------- */

static int sse_append(sse_reader *s, const char *p, size_t n) {
    if (s->len + n + 1 > s->cap) {
        size_t cap = (s->len + n + 1) * 2;
        char *b = realloc(s->buf, cap);
        if (!b) return -1;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
    return 0;
}

int sse_next(client *c, sse_reader *s, char **data) {
    *data = NULL;
    for (;;) {
        char *end = s->buf ? strstr(s->buf, "\n\n") : NULL;
        if (end) {
            size_t ev_len = (size_t)(end - s->buf);
            char *d = calloc(ev_len + 1, 1);
            size_t dn = 0;
            for (char *l = s->buf; l < end;) {
                char *nl = memchr(l, '\n', (size_t)(end - l));
                if (!nl) nl = end;
                if (!strncmp(l, "data:", 5)) {
                    const char *v = l + 5;
                    if (*v == ' ') v++;
                    if (dn) d[dn++] = '\n';
                    memcpy(d + dn, v, (size_t)(nl - v));
                    dn += (size_t)(nl - v);
                }
                l = nl + 1;
            }
            d[dn] = 0;
            size_t used = ev_len + 2;
            memmove(s->buf, s->buf + used, s->len - used + 1);
            s->len -= used;
            *data = d;
            return 1;
        }
        if (s->ended) return 0;
        char *part;
        size_t n;
        int k = cl_chunk(c, &part, &n);
        if (k < 0) return -1;
        if (k == 0) s->ended = 1;
        else if (sse_append(s, part, n)) k = -1;
        free(part);
        if (k < 0) return -1;
    }
}

void sse_free(sse_reader *s) {
    free(s->buf);
    memset(s, 0, sizeof *s);
}

int http_call(int port, const char *method, const char *path, const char *headers,
              const char *body, resp *r) {
    memset(r, 0, sizeof *r);
    client *c = malloc(sizeof *c);
    if (!c) return -1;
    int status = -1;
    if (cl_open(c, port, 0) == 0) {
        cl_timeout(c, 60000);
        size_t bl = body ? strlen(body) : 0;
        char head[1024];
        int hn = snprintf(head, sizeof head,
                          "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s",
                          method, path, headers ? headers : "",
                          body ? "Content-Type: application/json\r\n" : "");
        if (body) hn += snprintf(head + hn, sizeof head - (size_t)hn, "Content-Length: %zu\r\n", bl);
        hn += snprintf(head + hn, sizeof head - (size_t)hn, "\r\n");
        if (!cl_send_n(c, head, (size_t)hn) && (!body || !cl_send_n(c, body, bl)) &&
            !read_resp(c, r, 0))
            status = r->status;
        cl_close(c);
    }
    free(c);
    return status;
}
