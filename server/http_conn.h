/* server/http_conn: what http.c (requests and responses) and http_conn.c
 * (connections, parsing, the server) share: the structures behind the
 * opaque handles of http.h and the few calls across the two files. Private
 * to server/http*.c.
 */
#ifndef LLOCO_SERVER_HTTP_CONN_H
#define LLOCO_SERVER_HTTP_CONN_H

#include <http_parser.h>
#include <uv.h>

#include "server/http.h"

/* A streaming client that lets this much pile up is treated as gone. */
#define HTTP_STREAM_MAX_QUEUED ((size_t)8 << 20)
#define HTTP_READ_CHUNK 65536

typedef struct http_conn http_conn;

/* What the connection's one timer is counting down. */
typedef enum {
    HTTP_TIMER_NONE,
    HTTP_TIMER_HEADER, /* the request must be complete: 408 */
    HTTP_TIMER_IDLE,   /* keep-alive without a request: close */
    HTTP_TIMER_LINGER, /* half-closed after the last response: close */
} http_timer_mode;

typedef struct {
    size_t name, value; /* offsets into hbuf */
} http_header;

struct lloco_http_req {
    lloco_http_server *srv; /* NULL once the server is freed */
    http_conn *conn;        /* NULL once the connection is freed */
    lloco_http_req *prev, *next; /* srv->active, once dispatched */
    const char *method;     /* static, from http-parser */
    char *url;              /* the target, later split in place into path/query */
    size_t url_len, url_cap;
    const char *path, *query;
    char *hbuf;             /* "name\0value\0name\0value\0..." */
    size_t hlen, hcap;
    http_header *hdrs;
    int n_hdrs, hdrs_cap;
    int in_value;
    char *body;
    size_t body_len, body_cap;
    int http_major, http_minor;
    int keep_alive, head;
    int reject;     /* 401: answered by this layer instead of the handler */
    int dispatched; /* handed to the handler: in srv->active */
    int streaming, chunked, will_close;
    int closed;
    void (*on_close)(void *user, lloco_http_req *r);
    void *on_close_user;
};

struct http_conn {
    lloco_http_server *srv;
    http_conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t sreq;
    int open_handles;
    http_timer_mode tmode;
    http_parser parser;
    char *in; /* received, not yet parsed */
    size_t in_len, in_cap;
    size_t head_bytes;
    lloco_http_req *parsing; /* begun, not complete */
    lloco_http_req *ready;   /* complete, not dispatched */
    lloco_http_req *active;  /* dispatched, not finished */
    size_t queued;           /* bytes handed to uv_write, not yet written */
    int err_status;          /* set by a parser callback before it fails */
    int counted;             /* counts against max_connections */
    int in_process, read_done, read_paused, ending, closing;
};

struct lloco_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t wake; /* never started: its close makes done() asynchronous */
    int listening;
    int open_handles; /* listener + wake + connections */
    lloco_http_params p;
    char *host, *token;
    size_t token_len;
    char **public_paths;
    int port;
    http_parser_settings settings;
    http_conn *conns;
    int n_conns, n_counted;
    lloco_http_req *active;
    int n_active;
    int draining, closing;
    void (*done)(void *user);
    void *done_user;
    char rbuf[HTTP_READ_CHUNK]; /* shared: each read is consumed at once */
};

/* Appends n bytes to a growable buffer and keeps a NUL after them. */
int lloco_http_buf_append(char **b, size_t *len, size_t *cap, const char *d, size_t n);
/* {"error":{"message":..,"type":..,"param":null,"code":..}} in a heap
 * string (caller frees); NULL when out of memory. */
char *lloco_http_json_error(const char *type, const char *code, const char *msg, size_t *len);
/* Status line and headers in a heap string (caller frees). length: >= 0
 * Content-Length, -1 chunked, -2 neither. conn_hdr: 1 "Connection: close",
 * 2 "Connection: keep-alive", 0 nothing. */
char *lloco_http_build_head(int status, const char *ct, long long length, int conn_hdr,
                            const char *extra, size_t *len);

/* Queues the parts copied into one owned buffer; on failure the connection
 * is closed (lloco_http_conn_gone). */
int lloco_http_conn_writev(http_conn *c, const uv_buf_t *parts, int n);
int lloco_http_conn_write(http_conn *c, const char *head, size_t hlen, const char *body,
                          size_t blen);
/* Closes the connection now; the active request's on_close runs from the
 * close callback. */
void lloco_http_conn_gone(http_conn *c);
/* Whether the connection closes after r's response. */
int lloco_http_req_will_close(const lloco_http_req *r);
/* Frees r; its connection goes on with the next request or closes. */
void lloco_http_req_finish(lloco_http_req *r);

#endif
