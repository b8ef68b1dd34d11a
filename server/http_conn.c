/* server/http_conn: the connection machinery behind http.h. Bytes read
 * from a socket are buffered per connection and fed to http-parser, which
 * is paused after each complete request so that the next one is parsed
 * only once the handler has finished the current one (in-order pipelining
 * with later requests kept as raw bytes). Responses are queued with
 * uv_write from owned buffers; one timer per connection covers the header,
 * idle and linger deadlines.
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

/* After an error response: how long to drain input before closing, so the
 * client reads the error instead of a reset. */
#define HTTP_LINGER_MS 1000
#define HTTP_LISTEN_BACKLOG 511

/* One queued write and the bytes it owns. */
typedef struct {
    uv_write_t w;
    http_conn *c;
    size_t len;
    char data[];
} http_write;

static void conn_process(http_conn *c);

static char *str_dup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Time depends on the token's length only, not on where a guess differs. */
static int const_time_eq(const char *a, size_t an, const char *b, size_t bn) {
    volatile unsigned char d = an != bn;
    for (size_t i = 0; i < bn; i++) d |= (unsigned char)((i < an ? a[i] : 0) ^ b[i]);
    return d == 0;
}

/* ---- writing ------------------------------------------------------------- */

static void on_write(uv_write_t *w, int status) {
    http_write *hw = (http_write *)w;
    http_conn *c = hw->c;
    c->queued -= hw->len;
    free(hw);
    if (status < 0 && status != UV_ECANCELED) lloco_http_conn_gone(c);
}

int lloco_http_conn_writev(http_conn *c, const uv_buf_t *parts, int n) {
    if (c->closing) return LLOCO_ERR_IO;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += parts[i].len;
    if (total > UINT_MAX) return LLOCO_ERR_RANGE; /* uv_buf_t lengths are unsigned */
    http_write *hw = malloc(sizeof *hw + total);
    if (!hw) {
        lloco_http_conn_gone(c);
        return LLOCO_ERR_NOMEM;
    }
    hw->c = c;
    hw->len = total;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (parts[i].len) memcpy(hw->data + off, parts[i].base, parts[i].len);
        off += parts[i].len;
    }
    uv_buf_t b = uv_buf_init(hw->data, (unsigned)total);
    int e = uv_write(&hw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (e) {
        free(hw);
        lloco_http_conn_gone(c);
        return LLOCO_ERR_IO;
    }
    c->queued += total;
    return 0;
}

int lloco_http_conn_write(http_conn *c, const char *head, size_t hlen, const char *body,
                          size_t blen) {
    uv_buf_t parts[2] = {uv_buf_init((char *)head, (unsigned)hlen),
                         uv_buf_init((char *)body, (unsigned)blen)};
    return lloco_http_conn_writev(c, parts, 2);
}

/* ---- connection life ----------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static void timer_set(http_conn *c, http_timer_mode m, int ms) {
    if (ms <= 0) {
        uv_timer_stop(&c->timer);
        c->tmode = HTTP_TIMER_NONE;
        return;
    }
    c->tmode = m;
    uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
}

static void timer_clear(http_conn *c) {
    c->tmode = HTTP_TIMER_NONE;
    uv_timer_stop(&c->timer);
}

static void req_free(lloco_http_req *r) {
    if (!r) return;
    free(r->url);
    free(r->hbuf);
    free(r->hdrs);
    free(r->body);
    free(r);
}

static void srv_free(lloco_http_server *s) {
    for (lloco_http_req *r = s->active; r; r = r->next) r->srv = NULL;
    void (*done)(void *) = s->done;
    void *user = s->done_user;
    free(s->host);
    free(s->token);
    if (s->public_paths) {
        for (char **p = s->public_paths; *p; p++) free(*p);
        free(s->public_paths);
    }
    free(s);
    if (done) done(user);
}

static void srv_handle_closed(lloco_http_server *s) {
    if (--s->open_handles == 0 && s->closing) srv_free(s);
}

static void on_srv_handle_closed(uv_handle_t *h) { srv_handle_closed(h->data); }

static void conn_free(http_conn *c) {
    lloco_http_server *s = c->srv;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_conns--;
    if (c->counted) s->n_counted--;
    lloco_http_req *r = c->active;
    req_free(c->parsing);
    req_free(c->ready);
    free(c->in);
    free(c);
    if (r) {
        r->conn = NULL;
        r->closed = 1;
        if (r->on_close) r->on_close(r->on_close_user, r);
    }
    srv_handle_closed(s);
}

static void on_conn_handle_closed(uv_handle_t *h) {
    http_conn *c = h->data;
    if (--c->open_handles == 0) conn_free(c);
}

void lloco_http_conn_gone(http_conn *c) {
    if (c->closing) return;
    c->closing = 1;
    if (c->active) c->active->closed = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
    http_conn *c = sr->data;
    if (c->closing) return;
    if (status < 0) lloco_http_conn_gone(c);
    else timer_set(c, HTTP_TIMER_LINGER, HTTP_LINGER_MS);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* The last response is queued: half-close once it is written, then drain
 * input until EOF or the linger deadline. */
static void conn_end(http_conn *c) {
    if (c->ending || c->closing) return;
    c->ending = 1;
    c->read_done = 1;
    c->in_len = 0;
    timer_clear(c);
    if (c->read_paused) {
        c->read_paused = 0;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) lloco_http_conn_gone(c);
}

/* An error produced by this layer with no request to answer through: the
 * JSON error, "Connection: close", then conn_end. */
static void conn_fail(http_conn *c, int status, const char *type, const char *code,
                      const char *extra, const char *msg) {
    if (c->ending || c->closing) return;
    size_t blen, hlen;
    char *body = lloco_http_json_error(type, code, msg, &blen);
    char *head = body ? lloco_http_build_head(status, "application/json", (long long)blen, 1,
                                              extra, &hlen)
                      : NULL;
    if (!head) {
        free(body);
        lloco_http_conn_gone(c);
        return;
    }
    if (c->srv->p.on_status) c->srv->p.on_status(c->srv->p.user, status);
    int rc = lloco_http_conn_write(c, head, hlen, body, blen);
    free(head);
    free(body);
    if (!rc) conn_end(c);
}

static void on_timer(uv_timer_t *t) {
    http_conn *c = t->data;
    http_timer_mode m = c->tmode;
    c->tmode = HTTP_TIMER_NONE;
    if (m == HTTP_TIMER_HEADER) {
        char msg[96];
        snprintf(msg, sizeof msg, "request not received within %d ms",
                 c->srv->p.header_timeout_ms);
        conn_fail(c, 408, "invalid_request_error", "request_timeout", NULL, msg);
    } else if (m == HTTP_TIMER_IDLE || m == HTTP_TIMER_LINGER) {
        lloco_http_conn_gone(c);
    }
}

/* ---- requests leaving the handler ---------------------------------------- */

int lloco_http_req_will_close(const lloco_http_req *r) {
    const http_conn *c = r->conn;
    return !r->keep_alive || !c || c->ending || c->closing ||
           (r->srv && (r->srv->draining || r->srv->closing));
}

void lloco_http_req_finish(lloco_http_req *r) {
    if (r->dispatched && r->srv) {
        lloco_http_server *s = r->srv;
        if (r->prev) r->prev->next = r->next;
        else s->active = r->next;
        if (r->next) r->next->prev = r->prev;
        s->n_active--;
    }
    http_conn *c = r->conn;
    int will_close = r->will_close || lloco_http_req_will_close(r);
    req_free(r);
    if (!c) return;
    c->active = NULL;
    if (c->closing) return;
    if (will_close) conn_end(c);
    else conn_process(c);
}

/* ---- parsing ------------------------------------------------------------- */

static int head_grow(http_conn *c, size_t n) {
    c->head_bytes += n;
    if (c->head_bytes > c->srv->p.max_header_bytes) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p) {
    http_conn *c = p->data;
    lloco_http_req *r = calloc(1, sizeof *r);
    if (!r) {
        c->err_status = 500;
        return -1;
    }
    r->srv = c->srv;
    r->conn = c;
    c->parsing = r;
    c->head_bytes = 0;
    timer_set(c, HTTP_TIMER_HEADER, c->srv->p.header_timeout_ms);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    http_conn *c = p->data;
    lloco_http_req *r = c->parsing;
    if (head_grow(c, len)) return -1;
    if (lloco_http_buf_append(&r->url, &r->url_len, &r->url_cap, at, len)) {
        c->err_status = 500;
        return -1;
    }
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    http_conn *c = p->data;
    lloco_http_req *r = c->parsing;
    int fresh = r->n_hdrs == 0 || r->in_value;
    if (head_grow(c, len + (fresh ? 4 : 0))) return -1;
    if (fresh) {
        if (r->n_hdrs == r->hdrs_cap) {
            int nc = r->hdrs_cap ? 2 * r->hdrs_cap : 16;
            http_header *nh = realloc(r->hdrs, (size_t)nc * sizeof *nh);
            if (!nh) goto nomem;
            r->hdrs = nh;
            r->hdrs_cap = nc;
        }
        /* the NUL that lloco_http_buf_append keeps ends the previous value */
        if (r->n_hdrs && lloco_http_buf_append(&r->hbuf, &r->hlen, &r->hcap, "", 1)) goto nomem;
        r->hdrs[r->n_hdrs].name = r->hlen;
        r->hdrs[r->n_hdrs].value = r->hlen; /* empty until a value comes */
        r->n_hdrs++;
        r->in_value = 0;
    }
    if (lloco_http_buf_append(&r->hbuf, &r->hlen, &r->hcap, at, len)) goto nomem;
    return 0;
nomem:
    c->err_status = 500;
    return -1;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    http_conn *c = p->data;
    lloco_http_req *r = c->parsing;
    if (head_grow(c, len)) return -1;
    if (!r->in_value) {
        if (lloco_http_buf_append(&r->hbuf, &r->hlen, &r->hcap, "", 1)) goto nomem;
        r->hdrs[r->n_hdrs - 1].value = r->hlen;
        r->in_value = 1;
    }
    if (lloco_http_buf_append(&r->hbuf, &r->hlen, &r->hcap, at, len)) goto nomem;
    return 0;
nomem:
    c->err_status = 500;
    return -1;
}

/* Trims header values and splits the target into path and query. */
static int req_finalize_head(lloco_http_req *r) {
    for (int i = 0; i < r->n_hdrs; i++) {
        http_header *h = &r->hdrs[i];
        if (h->value == h->name) { /* a field without value */
            h->value = r->hlen;
            if (lloco_http_buf_append(&r->hbuf, &r->hlen, &r->hcap, "", 0)) return LLOCO_ERR_NOMEM;
            continue;
        }
        char *v = r->hbuf + h->value;
        while (*v == ' ' || *v == '\t') v++;
        char *e = v + strlen(v);
        while (e > v && (e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
        h->value = (size_t)(v - r->hbuf);
    }
    if (!r->url && lloco_http_buf_append(&r->url, &r->url_len, &r->url_cap, "", 0))
        return LLOCO_ERR_NOMEM;
    char *u = r->url;
    if (u[0] != '/') { /* absolute form: skip scheme://authority */
        char *sep = strstr(u, "://");
        if (sep) {
            char *slash = strchr(sep + 3, '/');
            if (slash) u = slash;
            else u = sep + strlen(sep); /* no path: "" becomes "/" below */
        }
    }
    char *hash = strchr(u, '#');
    if (hash) *hash = 0;
    char *q = strchr(u, '?');
    if (q) *q++ = 0;
    r->path = *u ? u : "/";
    r->query = q ? q : "";
    return 0;
}

static int is_public(const lloco_http_server *s, const char *path) {
    if (!s->public_paths) return 0;
    for (char **p = s->public_paths; *p; p++)
        if (!strcmp(*p, path)) return 1;
    return 0;
}

static int auth_ok(const lloco_http_server *s, const lloco_http_req *r) {
    const char *h = lloco_http_header(r, "Authorization");
    if (!h || strncasecmp(h, "Bearer", 6) || (h[6] != ' ' && h[6] != '\t')) return 0;
    h += 6;
    while (*h == ' ' || *h == '\t') h++;
    return const_time_eq(h, strlen(h), s->token, s->token_len);
}

static int on_headers_complete(http_parser *p) {
    http_conn *c = p->data;
    lloco_http_server *s = c->srv;
    lloco_http_req *r = c->parsing;
    if (req_finalize_head(r)) {
        c->err_status = 500;
        return -1;
    }
    r->method = http_method_str((enum http_method)p->method);
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    r->keep_alive = http_should_keep_alive(p);
    r->head = p->method == HTTP_HEAD;
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > s->p.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    if (s->token && !is_public(s, r->path) && !auth_ok(s, r)) r->reject = 401;
    const char *expect = lloco_http_header(r, "Expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue")) {
            c->err_status = 417;
            return -1;
        }
        if (r->reject) { /* the body is not wanted: refuse before it comes */
            c->err_status = r->reject;
            return -1;
        }
        int has_body = (p->flags & F_CHUNKED) ||
                       ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
        if (has_body && !(p->http_major == 1 && p->http_minor == 0)) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (lloco_http_conn_write(c, cont, sizeof cont - 1, NULL, 0)) {
                c->err_status = 500;
                return -1;
            }
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    http_conn *c = p->data;
    lloco_http_req *r = c->parsing;
    if (r->body_len + len > c->srv->p.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    if (lloco_http_buf_append(&r->body, &r->body_len, &r->body_cap, at, len)) {
        c->err_status = 500;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p) {
    http_conn *c = p->data;
    lloco_http_req *r = c->parsing;
    timer_clear(c);
    c->parsing = NULL;
    c->ready = r;
    if (!r->keep_alive || p->upgrade) { /* upgrades are not supported: close after */
        r->keep_alive = 0;
        c->read_done = 1;
    }
    http_parser_pause(p, 1);
    return 0;
}

static void conn_parse_error(http_conn *c, enum http_errno e) {
    int status = c->err_status ? c->err_status : e == HPE_HEADER_OVERFLOW ? 431 : 400;
    const lloco_http_params *p = &c->srv->p;
    char msg[160];
    const char *code = NULL, *extra = NULL, *type = "invalid_request_error";
    switch (status) {
    case 401:
        snprintf(msg, sizeof msg, "missing or invalid bearer token");
        code = "invalid_api_key";
        extra = "WWW-Authenticate: Bearer\r\n";
        break;
    case 413:
        snprintf(msg, sizeof msg, "request body larger than %zu bytes", p->max_body_bytes);
        code = "request_too_large";
        break;
    case 417:
        snprintf(msg, sizeof msg, "unsupported Expect header (only 100-continue)");
        code = "expectation_failed";
        break;
    case 431:
        snprintf(msg, sizeof msg, "request headers larger than %zu bytes", p->max_header_bytes);
        code = "headers_too_large";
        break;
    case 500:
        snprintf(msg, sizeof msg, "out of memory");
        type = "server_error";
        break;
    default:
        snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_description(e));
        code = "bad_request";
        break;
    }
    conn_fail(c, status, type, code, extra, msg);
}

static void conn_dispatch(http_conn *c) {
    lloco_http_server *s = c->srv;
    lloco_http_req *r = c->ready;
    c->ready = NULL;
    c->active = r;
    if (r->reject) {
        lloco_http_respond_error(r, 401, "invalid_request_error", "invalid_api_key",
                                 "WWW-Authenticate: Bearer\r\n",
                                 "missing or invalid bearer token");
        return;
    }
    r->dispatched = 1;
    r->next = s->active;
    if (s->active) s->active->prev = r;
    s->active = r;
    s->n_active++;
    s->p.handler(s->p.user, r);
}

static size_t in_limit(const lloco_http_server *s) {
    return s->p.max_header_bytes + s->p.max_body_bytes + HTTP_READ_CHUNK;
}

/* Parses buffered input and dispatches complete requests while none is
 * active. Handlers that finish synchronously come back here through
 * lloco_http_req_finish; in_process turns that into another turn of this loop. */
static void conn_process(http_conn *c) {
    if (c->in_process) return;
    c->in_process = 1;
    lloco_http_server *s = c->srv;
    while (!c->closing && !c->ending) {
        if (c->ready) {
            if (c->active) break;
            conn_dispatch(c);
            continue;
        }
        if (c->active || c->in_len == 0) break;
        if (c->read_done) {
            c->in_len = 0;
            break;
        }
        size_t n = http_parser_execute(&c->parser, &s->settings, c->in, c->in_len);
        if (n > c->in_len) n = c->in_len;
        memmove(c->in, c->in + n, c->in_len - n);
        c->in_len -= n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            continue;
        }
        if (e != HPE_OK) {
            conn_parse_error(c, e);
            break;
        }
        if (!c->ready && c->in_len) { /* stopped short without a message: upgrade */
            c->read_done = 1;
            c->in_len = 0;
        }
    }
    c->in_process = 0;
    if (c->closing || c->ending) return;
    if (!c->active && !c->ready && !c->parsing && c->tmode == HTTP_TIMER_NONE) {
        if (s->draining || s->closing) {
            lloco_http_conn_gone(c);
            return;
        }
        timer_set(c, HTTP_TIMER_IDLE, s->p.idle_timeout_ms);
    }
    if (c->read_paused && c->in_len < in_limit(s) / 2) {
        c->read_paused = 0;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
}

/* ---- reading and accepting ----------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    http_conn *c = h->data;
    *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    http_conn *c = st->data;
    if (nread < 0) { /* EOF or reset: the client is gone */
        lloco_http_conn_gone(c);
        return;
    }
    if (nread == 0 || c->closing || c->ending || c->read_done) return;
    if (lloco_http_buf_append(&c->in, &c->in_len, &c->in_cap, buf->base, (size_t)nread)) {
        lloco_log(LLOCO_LOG_WARN, "http: out of memory buffering input");
        lloco_http_conn_gone(c);
        return;
    }
    if (c->in_len > in_limit(c->srv)) {
        uv_read_stop(st);
        c->read_paused = 1;
    }
    conn_process(c);
}

static void on_connection(uv_stream_t *ls, int status) {
    lloco_http_server *s = ls->data;
    if (status < 0) {
        lloco_log(LLOCO_LOG_WARN, "http: accept: %s", uv_strerror(status));
        return;
    }
    http_conn *c = calloc(1, sizeof *c);
    if (!c) {
        lloco_log(LLOCO_LOG_WARN, "http: out of memory accepting a connection");
        return;
    }
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    s->open_handles++;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    int e = uv_accept(ls, (uv_stream_t *)&c->tcp);
    if (e) {
        lloco_log(LLOCO_LOG_WARN, "http: accept: %s", uv_strerror(e));
        lloco_http_conn_gone(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    e = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (e) {
        lloco_http_conn_gone(c);
        return;
    }
    if (s->p.max_connections > 0 && s->n_counted >= s->p.max_connections) {
        conn_fail(c, 503, "server_error", "too_many_connections", "Retry-After: 1\r\n",
                  "too many connections");
        return;
    }
    c->counted = 1;
    s->n_counted++;
    timer_set(c, HTTP_TIMER_HEADER, s->p.header_timeout_ms);
}

/* ---- server -------------------------------------------------------------- */

void lloco_http_params_default(lloco_http_params *p) {
    memset(p, 0, sizeof *p);
    p->host = "127.0.0.1";
    p->max_header_bytes = 16384;
    p->max_body_bytes = (size_t)1 << 20;
    p->header_timeout_ms = 10000;
    p->idle_timeout_ms = 30000;
    p->max_connections = 1024;
}

int lloco_http_start(uv_loop_t *loop, const lloco_http_params *p, lloco_http_server **out) {
    if (out) *out = NULL;
    if (!loop || !p || !out || !p->handler || p->port < 0 || p->port > 65535)
        return lloco_error(LLOCO_ERR_INVAL,
                           "http: start: missing loop, params, handler or bad port");
    lloco_http_server *s = calloc(1, sizeof *s);
    if (!s) return lloco_error(LLOCO_ERR_NOMEM, "http: server");
    s->loop = loop;
    s->p = *p;
    s->host = str_dup(p->host && *p->host ? p->host : "127.0.0.1");
    int nomem = !s->host;
    if (p->bearer_token && *p->bearer_token) {
        s->token = str_dup(p->bearer_token);
        s->token_len = strlen(p->bearer_token);
        nomem |= !s->token;
    }
    if (p->public_paths) {
        size_t n = 0;
        while (p->public_paths[n]) n++;
        s->public_paths = calloc(n + 1, sizeof *s->public_paths);
        nomem |= !s->public_paths;
        for (size_t i = 0; !nomem && i < n; i++)
            nomem |= !(s->public_paths[i] = str_dup(p->public_paths[i]));
    }
    s->p.host = s->host;
    s->p.bearer_token = s->token;
    s->p.public_paths = (const char *const *)s->public_paths;
    http_parser_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    if (nomem) {
        s->closing = 1;
        s->open_handles = 1; /* freed right away below */
        srv_handle_closed(s);
        return lloco_error(LLOCO_ERR_NOMEM, "http: server params");
    }

    uv_timer_init(loop, &s->wake);
    uv_tcp_init(loop, &s->listener);
    s->wake.data = s;
    s->listener.data = s;
    s->open_handles = 2;
    s->listening = 1;
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
        struct sockaddr_storage ss;
    } addr;
    int e = strchr(s->host, ':') ? uv_ip6_addr(s->host, p->port, &addr.v6)
                                 : uv_ip4_addr(s->host, p->port, &addr.v4);
    int rc = 0;
    if (e) rc = lloco_error(LLOCO_ERR_INVAL, "http: bad host '%s': %s", s->host, uv_strerror(e));
    if (!rc && (e = uv_tcp_bind(&s->listener, &addr.sa, 0)) != 0)
        rc = lloco_error(LLOCO_ERR_IO, "http: bind %s:%d: %s", s->host, p->port, uv_strerror(e));
    if (!rc &&
        (e = uv_listen((uv_stream_t *)&s->listener, HTTP_LISTEN_BACKLOG, on_connection)) != 0)
        rc = lloco_error(LLOCO_ERR_IO, "http: listen %s:%d: %s", s->host, p->port, uv_strerror(e));
    int alen = sizeof addr;
    if (!rc && (e = uv_tcp_getsockname(&s->listener, &addr.sa, &alen)) != 0)
        rc = lloco_error(LLOCO_ERR_IO, "http: getsockname: %s", uv_strerror(e));
    if (rc) {
        s->closing = 1;
        s->listening = 0;
        uv_close((uv_handle_t *)&s->listener, on_srv_handle_closed);
        uv_close((uv_handle_t *)&s->wake, on_srv_handle_closed);
        return rc;
    }
    s->port = ntohs(addr.sa.sa_family == AF_INET6 ? addr.v6.sin6_port : addr.v4.sin_port);
    lloco_log(LLOCO_LOG_INFO, "http: listening on %s:%d", s->host, s->port);
    *out = s;
    return 0;
}

int lloco_http_port(const lloco_http_server *s) { return s->port; }
int lloco_http_n_connections(const lloco_http_server *s) { return s->n_conns; }
int lloco_http_n_active(const lloco_http_server *s) { return s->n_active; }

static void srv_close_listener(lloco_http_server *s) {
    if (!s->listening) return;
    s->listening = 0;
    uv_close((uv_handle_t *)&s->listener, on_srv_handle_closed);
}

void lloco_http_stop_accepting(lloco_http_server *s) {
    srv_close_listener(s);
    s->draining = 1;
    for (http_conn *c = s->conns; c; c = c->next)
        if (!c->active && !c->ready && !c->parsing && !c->ending) lloco_http_conn_gone(c);
}

void lloco_http_close(lloco_http_server *s, void (*done)(void *user), void *user) {
    if (s->closing) return;
    s->closing = 1;
    s->done = done;
    s->done_user = user;
    srv_close_listener(s);
    uv_close((uv_handle_t *)&s->wake, on_srv_handle_closed);
    for (http_conn *c = s->conns; c; c = c->next) lloco_http_conn_gone(c);
}
