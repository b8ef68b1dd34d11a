/* A tiny blocking HTTP/1.1 client for the server tests: connect to
 * 127.0.0.1, send raw bytes, read a response (Content-Length, chunked or
 * close-delimited), or read a chunked body one chunk at a time and split it
 * into server-sent events. Buffers live in the client; nothing is shared.
 */
#ifndef LLOCO_TEST_CLIENT_H
#define LLOCO_TEST_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

typedef struct {
    int fd;
    char buf[1 << 16]; /* bytes received and not yet consumed */
    size_t len;
} client;

/* Connects with a 3 s receive timeout; rcvbuf > 0 shrinks SO_RCVBUF.
 * 0, or -1 with errno. */
int cl_open(client *c, int port, int rcvbuf);
void cl_timeout(client *c, int ms);
void cl_close(client *c);
/* Closes with a reset rather than a FIN. */
void cl_reset(client *c);
int cl_send(client *c, const char *s);
int cl_send_n(client *c, const char *s, size_t n);
/* One recv into the buffer: bytes read, 0 on EOF, -1 on error/timeout. */
ssize_t cl_fill(client *c);
void cl_consume(client *c, size_t n);
/* 1 when the server closed the connection (EOF or reset) with no more
 * bytes sent, 0 otherwise. */
int cl_eof(client *c);
/* Fills until n bytes are buffered; 0, or -1. */
int cl_need(client *c, size_t n);
/* Index just past the first occurrence of pat at or after from, filling as
 * needed; -1 when the connection ends first. */
long cl_find(client *c, size_t from, const char *pat);

typedef struct {
    int status;
    char head[8192]; /* status line and headers, through the blank line */
    char *body;      /* NUL-terminated; free with resp_free */
    size_t body_len;
    int n_chunks;
} resp;

/* The value of header name (case-insensitive) copied into val, or NULL. */
const char *resp_header(const resp *r, const char *name, char *val, size_t cap);
int resp_has(const resp *r, const char *name, const char *value);
void resp_free(resp *r);
/* Reads one response; 0 on success. head_only: a HEAD request's answer,
 * or a streamed body the caller reads with cl_chunk. */
int read_resp(client *c, resp *r, int head_only);
/* Reads the body of a response whose head read_resp read. */
int read_body(client *c, resp *r);
/* Sends req and reads its response; the status, or -1. */
int roundtrip(client *c, const char *req, resp *r);
/* One chunk of a chunked body into *out (malloc'd, NUL-terminated): 1 for
 * a chunk, 0 at the last (empty) chunk, -1 on error or timeout. */
int cl_chunk(client *c, char **out, size_t *n);

/* Server-sent events over a chunked body. */
typedef struct {
    char *buf;
    size_t len, cap;
    int ended; /* the last chunk was read */
} sse_reader;

/* The next event's data (its "data:" lines joined by \n) into *data
 * (malloc'd): 1 for an event, 0 at the end of the body, -1 on error. */
int sse_next(client *c, sse_reader *s, char **data);
void sse_free(sse_reader *s);

/* One request on a fresh connection: method, path, extra header lines
 * (each ending in \r\n, or NULL) and a body (NULL: none). The status, or
 * -1; r is filled (free it) either way. */
int http_call(int port, const char *method, const char *path, const char *headers,
              const char *body, resp *r);

#endif
