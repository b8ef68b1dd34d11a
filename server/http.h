/* server/http: the HTTP/1.1 front end of the server module, on libuv and
 * http-parser. It accepts connections, parses requests (keep-alive,
 * pipelining, chunked bodies, limits, timeouts, bearer auth) and hands each
 * complete request to one handler callback, in order per connection; the
 * handler answers with a whole body or a chunked stream, now or later.
 * Private to server/: the public API is server.h.
 *
 * Threads: every function here runs on the loop thread (the one running the
 * uv_loop_t passed to lloco_http_start), callbacks included.
 *
 * Ownership: the server copies the strings in lloco_http_params (host,
 * bearer_token, public_paths) at start. A lloco_http_req is owned by the
 * server until it is handed to the handler; from then on the handler owns
 * the duty to finish it (respond, or stream_begin ... stream_end), which
 * frees it; the pointer is dead after that. A request can outlive its
 * connection and even the server (see lloco_http_on_close). Strings returned
 * by the accessors belong to the request and die with it.
 *
 * Errors this layer produces itself are OpenAI-style JSON bodies:
 * malformed request 400 and close; headers over max_header_bytes 431 and
 * close; body over max_body_bytes 413 and close (Content-Length checked up
 * front, chunked bodies by running total); incomplete request after
 * header_timeout_ms 408 and close; more than max_connections 503 and close;
 * missing or wrong bearer token 401 with "WWW-Authenticate: Bearer" (the
 * connection stays open). "Expect: 100-continue" gets "100 Continue" once
 * the headers have passed the limits and auth (else the error and close);
 * any other expectation gets 417 and close. Before closing after an error
 * the server half-closes and drains input for a moment so that the client
 * reads the error rather than a reset.
 */
#ifndef LLOCO_SERVER_HTTP_H
#define LLOCO_SERVER_HTTP_H

#include <stddef.h>
#include <uv.h>

typedef struct lloco_http_server lloco_http_server;
typedef struct lloco_http_req lloco_http_req;

typedef struct {
    const char *host;          /* default "127.0.0.1"; IPv6 literal if it holds ':' */
    int port;                  /* 0: ephemeral (see lloco_http_port) */
    size_t max_header_bytes;   /* default 16384 -> 431 when exceeded (request
                                  line + header lines) */
    size_t max_body_bytes;     /* default 1 MiB -> 413 */
    int header_timeout_ms;     /* default 10000: a request must arrive completely
                                  within this (counted from its first byte, or
                                  from accept for the first one) -> 408 and close;
                                  <= 0: none */
    int idle_timeout_ms;       /* default 30000: keep-alive connection with no
                                  request closes (silently); <= 0: never */
    int max_connections;       /* default 1024; beyond: 503 + close; <= 0: no limit */
    const char *bearer_token;  /* NULL or "": no auth; else "Authorization:
                                  Bearer <tok>" required -> 401 */
    const char *const *public_paths; /* NULL-terminated list of paths that skip
                                        auth (e.g. "/health"), may be NULL */
    /* Called on the loop thread once per complete request, in order per
     * connection: with pipelining, request N+1's handler runs only after
     * request N's response has been finished. */
    void (*handler)(void *user, lloco_http_req *req);
    void *user;
    /* Optional: called with the status of every response head sent, the
     * layer's own errors (400, 401, 408, 413, 431, 503...) included. */
    void (*on_status)(void *user, int status);
} lloco_http_params;

void lloco_http_params_default(lloco_http_params *p);

/* Binds and listens on loop (all calls on the loop thread). p->handler is
 * required. On failure *out is NULL and what was set up is released by the
 * loop's next run (libuv closes handles asynchronously). */
int lloco_http_start(uv_loop_t *loop, const lloco_http_params *p, lloco_http_server **out);
int lloco_http_port(const lloco_http_server *s); /* the bound port */
/* Closes the listener; live connections go on; idle keep-alive connections
 * are closed, busy ones close after their current response (which says
 * "Connection: close" if its headers are not out yet). */
void lloco_http_stop_accepting(lloco_http_server *s);
int lloco_http_n_connections(const lloco_http_server *s);
/* Requests handed to the handler and not finished, those whose connection
 * is gone included. */
int lloco_http_n_active(const lloco_http_server *s);
/* Closes every connection and the listener; done(user) (may be NULL) is
 * called once all libuv handles are closed, always from a later callback,
 * never inside this call; the server is freed then. Requests still
 * unfinished get their on_close callback first; a request the handler has
 * not finished by then outlives the server and is freed when finished. */
void lloco_http_close(lloco_http_server *s, void (*done)(void *user), void *user);

/* Request accessors (valid until the request is finished) */
const char *lloco_http_method(const lloco_http_req *r); /* "GET", "POST", ... */
/* Path without query (or fragment), NUL-terminated, percent-decoding not
 * applied; for an absolute-form target ("http://h/p?q") the path part. */
const char *lloco_http_path(const lloco_http_req *r);
const char *lloco_http_query(const lloco_http_req *r); /* "" when none */
/* Case-insensitive, first match, NULL if absent; value without surrounding
 * blanks. */
const char *lloco_http_header(const lloco_http_req *r, const char *name);
/* NUL-terminated too; "" with *len 0 when there is no body. len may be NULL. */
const char *lloco_http_body(const lloco_http_req *r, size_t *len);

/* Responses (loop thread only). Exactly one of: respond, or stream_begin +
 * stream_write* + stream_end, finishes the request. After it is finished
 * the req pointer is dead. respond and stream_end finish (and free) the
 * request even when they return an error (LLOCO_ERR_IO: the client is gone;
 * LLOCO_ERR_NOMEM); misuse (respond after stream_begin, stream_write before
 * it) returns LLOCO_ERR_INVAL and finishes nothing.
 * content_type NULL: "text/plain; charset=utf-8". extra_headers: whole
 * "Name: value\r\n" lines, or NULL. HEAD requests get the headers only;
 * 1xx, 204 and 304 responses get neither body nor Content-Length. */
int lloco_http_respond(lloco_http_req *r, int status, const char *content_type,
                       const char *body, size_t len, const char *extra_headers);
/* Chunked transfer encoding (e.g. text/event-stream for SSE). For an
 * HTTP/1.0 client the body goes out raw and the connection closes at
 * stream_end, since 1.0 knows no chunks. Empty writes send nothing. If the
 * client stops reading and more than 8 MiB are queued, the client is
 * treated as gone (stream_write returns LLOCO_ERR_IO, on_close follows). */
int lloco_http_stream_begin(lloco_http_req *r, int status, const char *content_type,
                            const char *extra_headers);
int lloco_http_stream_write(lloco_http_req *r, const char *data, size_t len);
int lloco_http_stream_end(lloco_http_req *r);
/* Client gone: if the connection closes (peer reset/EOF, write error,
 * back-pressure, server close) while the request is unfinished, fn(user, r)
 * is called once on the loop thread, from a later loop callback (never
 * inside a call into this API), unless the request is finished before that.
 * The request stays valid; writes then return LLOCO_ERR_IO and do nothing;
 * the handler must still finish it (respond or stream_end) to free it,
 * which it may do inside fn. Registering after the client is gone does not
 * call fn: check lloco_http_closed(). */
void lloco_http_on_close(lloco_http_req *r, void (*fn)(void *user, lloco_http_req *r),
                         void *user);
int lloco_http_closed(const lloco_http_req *r); /* 1 once the client is gone */
/* OpenAI-style error body helper:
 * {"error":{"message":msg,"type":type,"param":null,"code":code}};
 * type e.g. "invalid_request_error"; code may be NULL (-> null). Returns the
 * same as respond. */
int lloco_http_respond_error(lloco_http_req *r, int status, const char *type,
                             const char *code, const char *extra_headers,
                             const char *fmt, ...) __attribute__((format(printf, 6, 7)));

#endif
