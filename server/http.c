/* server/http: the request side of http.h: accessors, whole and streamed
 * responses, OpenAI-style error bodies. The connection machinery they
 * write through (parsing, timers, closing, the server) is http_conn.c.
 */
#include <http_parser.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/core.h"
#include "server/http_conn.h"

/* ---- small helpers ------------------------------------------------------- */

int lloco_http_buf_append(char **b, size_t *len, size_t *cap, const char *d, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 64;
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*b, nc);
        if (!nb) return LLOCO_ERR_NOMEM;
        *b = nb;
        *cap = nc;
    }
    if (n) memcpy(*b + *len, d, n);
    *len += n;
    (*b)[*len] = 0;
    return 0;
}

/* JSON string literal of s (quotes included) appended to the buffer. */
static int json_append_str(char **b, size_t *len, size_t *cap, const char *s) {
    int rc = lloco_http_buf_append(b, len, cap, "\"", 1);
    for (; !rc && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            rc = lloco_http_buf_append(b, len, cap, esc, 2);
        } else if (ch == '\n' || ch == '\r' || ch == '\t') {
            esc[0] = '\\';
            esc[1] = ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't';
            rc = lloco_http_buf_append(b, len, cap, esc, 2);
        } else if (ch < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            rc = lloco_http_buf_append(b, len, cap, esc, 6);
        } else {
            rc = lloco_http_buf_append(b, len, cap, s, 1);
        }
    }
    return rc ? rc : lloco_http_buf_append(b, len, cap, "\"", 1);
}

char *lloco_http_json_error(const char *type, const char *code, const char *msg, size_t *len) {
    char *b = NULL;
    size_t cap = 0;
    *len = 0;
    int rc = lloco_http_buf_append(&b, len, &cap, "{\"error\":{\"message\":", 20);
    if (!rc) rc = json_append_str(&b, len, &cap, msg);
    if (!rc) rc = lloco_http_buf_append(&b, len, &cap, ",\"type\":", 8);
    if (!rc) rc = json_append_str(&b, len, &cap, type ? type : "server_error");
    if (!rc) rc = lloco_http_buf_append(&b, len, &cap, ",\"param\":null,\"code\":", 21);
    if (!rc)
        rc = code ? json_append_str(&b, len, &cap, code)
                  : lloco_http_buf_append(&b, len, &cap, "null", 4);
    if (!rc) rc = lloco_http_buf_append(&b, len, &cap, "}}", 2);
    if (rc) {
        free(b);
        return NULL;
    }
    return b;
}

static const char *status_reason(int status) {
    const char *s = http_status_str((enum http_status)status);
    return s && strcmp(s, "<unknown>") ? s : "Unknown";
}

char *lloco_http_build_head(int status, const char *ct, long long length, int conn_hdr,
                            const char *extra, size_t *len) {
    char lenline[64] = "";
    if (length >= 0)
        snprintf(lenline, sizeof lenline, "Content-Length: %lld\r\n", length);
    else if (length == -1)
        snprintf(lenline, sizeof lenline, "Transfer-Encoding: chunked\r\n");
    const char *cl = conn_hdr == 1   ? "Connection: close\r\n"
                     : conn_hdr == 2 ? "Connection: keep-alive\r\n"
                                     : "";
    const char *fmt = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%s\r\n";
    const char *reason = status_reason(status);
    if (!ct) ct = "text/plain; charset=utf-8";
    if (!extra) extra = "";
    int n = snprintf(NULL, 0, fmt, status, reason, ct, lenline, cl, extra);
    if (n < 0) return NULL;
    char *h = malloc((size_t)n + 1);
    if (!h) return NULL;
    snprintf(h, (size_t)n + 1, fmt, status, reason, ct, lenline, cl, extra);
    *len = (size_t)n;
    return h;
}

static int conn_hdr_for(const lloco_http_req *r, int will_close) {
    if (will_close) return 1;
    return r->http_major == 1 && r->http_minor == 0 ? 2 : 0;
}

static int req_gone(const lloco_http_req *r) {
    return r->closed || !r->conn || r->conn->closing;
}

int lloco_http_respond(lloco_http_req *r, int status, const char *content_type,
                       const char *body, size_t len, const char *extra_headers) {
    if (!r) return lloco_error(LLOCO_ERR_INVAL, "http: respond: no request");
    if (r->streaming) return lloco_error(LLOCO_ERR_INVAL, "http: respond after stream_begin");
    int rc = 0;
    if (req_gone(r)) {
        rc = lloco_error(LLOCO_ERR_IO, "http: client gone");
    } else {
        r->will_close = lloco_http_req_will_close(r);
        /* these statuses never carry a body, nor a Content-Length */
        int bodiless = status < 200 || status == 204 || status == 304;
        if (bodiless) len = 0;
        size_t hlen;
        char *head = lloco_http_build_head(status, content_type, bodiless ? -2 : (long long)len,
                                           conn_hdr_for(r, r->will_close), extra_headers, &hlen);
        if (!head) {
            rc = lloco_error(LLOCO_ERR_NOMEM, "http: response head");
            lloco_http_conn_gone(r->conn);
        } else {
            const lloco_http_params *p = &r->conn->srv->p;
            if (p->on_status) p->on_status(p->user, status);
            rc = lloco_http_conn_write(r->conn, head, hlen, r->head ? NULL : body,
                                       r->head ? 0 : len);
            free(head);
            if (rc) rc = lloco_error(rc, "http: write failed");
        }
    }
    lloco_http_req_finish(r);
    return rc;
}

int lloco_http_respond_error(lloco_http_req *r, int status, const char *type,
                             const char *code, const char *extra_headers,
                             const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len;
    char *body = lloco_http_json_error(type, code, msg, &len);
    if (!body) {
        if (r && !r->streaming) {
            if (r->conn) lloco_http_conn_gone(r->conn);
            lloco_http_req_finish(r);
        }
        return lloco_error(LLOCO_ERR_NOMEM, "http: error body");
    }
    int rc = lloco_http_respond(r, status, "application/json", body, len, extra_headers);
    free(body);
    return rc;
}

int lloco_http_stream_begin(lloco_http_req *r, int status, const char *content_type,
                            const char *extra_headers) {
    if (!r || r->streaming) return lloco_error(LLOCO_ERR_INVAL, "http: stream_begin twice");
    r->streaming = 1;
    if (req_gone(r)) return lloco_error(LLOCO_ERR_IO, "http: client gone");
    /* HTTP/1.0 knows no chunks: a raw body delimited by the close. */
    r->chunked = !(r->http_major == 1 && r->http_minor == 0);
    r->will_close = lloco_http_req_will_close(r) || !r->chunked;
    size_t hlen;
    char *head = lloco_http_build_head(status, content_type, r->chunked ? -1 : -2,
                                       conn_hdr_for(r, r->will_close), extra_headers, &hlen);
    if (!head) {
        lloco_http_conn_gone(r->conn);
        return lloco_error(LLOCO_ERR_NOMEM, "http: response head");
    }
    const lloco_http_params *p = &r->conn->srv->p;
    if (p->on_status) p->on_status(p->user, status);
    int rc = lloco_http_conn_write(r->conn, head, hlen, NULL, 0);
    free(head);
    return rc ? lloco_error(rc, "http: write failed") : 0;
}

int lloco_http_stream_write(lloco_http_req *r, const char *data, size_t len) {
    if (!r || !r->streaming)
        return lloco_error(LLOCO_ERR_INVAL, "http: stream_write before stream_begin");
    if (req_gone(r)) return lloco_error(LLOCO_ERR_IO, "http: client gone");
    if (r->head || len == 0) return 0;
    char pre[32];
    int np = 1;
    uv_buf_t parts[3];
    if (r->chunked) {
        parts[0] = uv_buf_init(pre, (unsigned)snprintf(pre, sizeof pre, "%zx\r\n", len));
        parts[1] = uv_buf_init((char *)data, (unsigned)len);
        parts[2] = uv_buf_init("\r\n", 2);
        np = 3;
    } else {
        parts[0] = uv_buf_init((char *)data, (unsigned)len);
    }
    int rc = lloco_http_conn_writev(r->conn, parts, np);
    if (rc) return lloco_error(rc, "http: write failed");
    if (r->conn->queued > HTTP_STREAM_MAX_QUEUED) {
        lloco_log(LLOCO_LOG_INFO, "http: client not reading (%zu bytes queued), dropping it",
                  r->conn->queued);
        lloco_http_conn_gone(r->conn);
        return lloco_error(LLOCO_ERR_IO, "http: client not reading");
    }
    return 0;
}

int lloco_http_stream_end(lloco_http_req *r) {
    if (!r || !r->streaming)
        return lloco_error(LLOCO_ERR_INVAL, "http: stream_end before stream_begin");
    int rc = 0;
    if (req_gone(r)) rc = lloco_error(LLOCO_ERR_IO, "http: client gone");
    else if (r->chunked && !r->head) {
        rc = lloco_http_conn_write(r->conn, "0\r\n\r\n", 5, NULL, 0);
        if (rc) rc = lloco_error(rc, "http: write failed");
    }
    lloco_http_req_finish(r);
    return rc;
}

void lloco_http_on_close(lloco_http_req *r, void (*fn)(void *user, lloco_http_req *r),
                         void *user) {
    r->on_close = fn;
    r->on_close_user = user;
}

int lloco_http_closed(const lloco_http_req *r) { return req_gone(r); }

/* ---- request accessors --------------------------------------------------- */

const char *lloco_http_method(const lloco_http_req *r) { return r->method; }
const char *lloco_http_path(const lloco_http_req *r) { return r->path; }
const char *lloco_http_query(const lloco_http_req *r) { return r->query; }

const char *lloco_http_header(const lloco_http_req *r, const char *name) {
    for (int i = 0; i < r->n_hdrs; i++)
        if (!strcasecmp(r->hbuf + r->hdrs[i].name, name)) return r->hbuf + r->hdrs[i].value;
    return NULL;
}

const char *lloco_http_body(const lloco_http_req *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body ? r->body : "";
}

