/* The HTTP front end (server/http.c) over real sockets: the server runs on a
 * private uv loop in a background thread, the test acts as clients with
 * blocking sockets and raw bytes. A test handler echoes requests, answers
 * later from a timer, streams chunks on a timer and records on_close calls.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "client.h"
#include "server/http.h"
#include "test.h"

/* ---- the server thread --------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_async_t async;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*job)(void *);
    void *job_arg;
    int job_done;
    lloco_http_server *srv;
    int port;
    /* written on the loop thread under mu */
    int n_handled, n_on_close, closed_done, n_backpressure, order_violations;
    int outstanding; /* handler calls whose request is not finished */
    int hold_rc;
    lloco_http_req *held; /* /hold2: left unfinished through on_close */
} tsrv;

static tsrv T = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int stat_get(int *field) {
    pthread_mutex_lock(&T.mu);
    int v = *field;
    pthread_mutex_unlock(&T.mu);
    return v;
}

static void stat_add(int *field, int d) {
    pthread_mutex_lock(&T.mu);
    *field += d;
    pthread_mutex_unlock(&T.mu);
}

static void on_async(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&T.mu);
    void (*fn)(void *) = T.job;
    void *arg = T.job_arg;
    pthread_mutex_unlock(&T.mu);
    if (!fn) return;
    fn(arg);
    pthread_mutex_lock(&T.mu);
    T.job = NULL;
    T.job_done = 1;
    pthread_cond_broadcast(&T.cv);
    pthread_mutex_unlock(&T.mu);
}

/* Runs fn(arg) on the loop thread and waits for it. */
static void on_loop(void (*fn)(void *), void *arg) {
    pthread_mutex_lock(&T.mu);
    T.job = fn;
    T.job_arg = arg;
    T.job_done = 0;
    pthread_mutex_unlock(&T.mu);
    uv_async_send(&T.async);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    pthread_mutex_lock(&T.mu);
    while (!T.job_done)
        if (pthread_cond_timedwait(&T.cv, &T.mu, &dl) == ETIMEDOUT) break;
    int ok = T.job_done;
    pthread_mutex_unlock(&T.mu);
    CHECKF(ok, "loop job did not run within 5 s");
}

static void *loop_main(void *arg) {
    (void)arg;
    uv_run(&T.loop, UV_RUN_DEFAULT);
    return NULL;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_ms(void) { return lloco_time_now() * 1000.0; }

/* Polls *field until it reaches want (or ms pass); returns the last value. */
static int wait_stat(int *field, int want, int ms) {
    double end = now_ms() + ms;
    int v;
    while ((v = stat_get(field)) != want && now_ms() < end) sleep_ms(5);
    return v;
}

static int q_int; /* result slot for loop-thread queries */
static void job_n_active(void *a) { (void)a; q_int = lloco_http_n_active(T.srv); }
static void job_n_conns(void *a) { (void)a; q_int = lloco_http_n_connections(T.srv); }

static int query_until(void (*job)(void *), int want, int ms) {
    double end = now_ms() + ms;
    for (;;) {
        on_loop(job, NULL);
        if (q_int == want || now_ms() >= end) return q_int;
        sleep_ms(5);
    }
}

/* ---- the handler --------------------------------------------------------- */

typedef struct {
    uv_timer_t timer;
    lloco_http_req *req;
    int left, sent, gone, big, failed;
} hctx;

static int query_int(const char *q, const char *key, int def) {
    size_t kl = strlen(key);
    for (const char *p = q; p && *p; p = strchr(p, '&'), p = p ? p + 1 : NULL)
        if (!strncmp(p, key, kl) && p[kl] == '=') return atoi(p + kl + 1);
    return def;
}

static void finished_one(void) { stat_add(&T.outstanding, -1); }

static void echo(lloco_http_req *r) {
    size_t blen;
    const char *b = lloco_http_body(r, &blen);
    const char *x = lloco_http_header(r, "x-test");
    char *out = malloc(blen + 512);
    int n = snprintf(out, 512, "%s %s ?%s x=%s len=%zu\n", lloco_http_method(r),
                     lloco_http_path(r), lloco_http_query(r), x ? x : "-", blen);
    memcpy(out + n, b, blen);
    finished_one();
    lloco_http_respond(r, 200, "text/plain", out, (size_t)n + blen, "X-Echo: 1\r\n");
    free(out);
}

static void ctx_free(uv_handle_t *h) { free(h->data); }

static void on_delay(uv_timer_t *t) {
    hctx *x = t->data;
    echo(x->req);
    uv_close((uv_handle_t *)t, ctx_free);
}

static void on_stream_close(void *user, lloco_http_req *r) {
    hctx *x = user;
    CHECK(x->req == r);
    CHECK(lloco_http_closed(r));
    x->gone = 1;
    stat_add(&T.n_on_close, 1);
}

static void on_stream_tick(uv_timer_t *t) {
    hctx *x = t->data;
    if (x->failed && !x->gone) return; /* a write failed: on_close is on its way */
    int end = x->gone || x->sent == x->left;
    if (!end) {
        int rc;
        if (x->big) {
            size_t n = (size_t)1 << 20;
            char *blob = malloc(n);
            memset(blob, 'b', n);
            rc = lloco_http_stream_write(x->req, blob, n);
            free(blob);
            if (rc == LLOCO_ERR_IO) stat_add(&T.n_backpressure, 1);
        } else {
            char line[32];
            int n = snprintf(line, sizeof line, "data: %d\n\n", x->sent);
            rc = lloco_http_stream_write(x->req, line, (size_t)n);
        }
        x->sent++;
        /* after a failed write the request stays valid until stream_end */
        if (rc == 0) return;
        x->failed = 1;
        if (!x->gone) return;
    }
    int rc = lloco_http_stream_end(x->req);
    CHECK(x->gone ? rc == LLOCO_ERR_IO : rc == 0);
    finished_one();
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, ctx_free);
}

static void on_hold_close(void *user, lloco_http_req *r) {
    (void)user;
    stat_add(&T.n_on_close, 1);
    CHECK(lloco_http_stream_write(r, "x", 1) == LLOCO_ERR_INVAL); /* not streaming */
    int rc = lloco_http_respond(r, 200, NULL, "late", 4, NULL);
    finished_one();
    pthread_mutex_lock(&T.mu);
    T.hold_rc = rc;
    pthread_mutex_unlock(&T.mu);
}

static void on_hold2_close(void *user, lloco_http_req *r) {
    (void)user;
    (void)r;
    stat_add(&T.n_on_close, 1);
}

static void handler(void *user, lloco_http_req *r) {
    CHECK(user == &T);
    stat_add(&T.n_handled, 1);
    pthread_mutex_lock(&T.mu);
    if (T.outstanding++ != 0) T.order_violations++;
    pthread_mutex_unlock(&T.mu);
    const char *path = lloco_http_path(r), *q = lloco_http_query(r);
    if (!strcmp(path, "/delay") || !strcmp(path, "/stream") || !strcmp(path, "/big")) {
        hctx *x = calloc(1, sizeof *x);
        x->req = r;
        uv_timer_init(&T.loop, &x->timer);
        x->timer.data = x;
        if (path[1] == 'd') {
            uv_timer_start(&x->timer, on_delay, (uint64_t)query_int(q, "ms", 100), 0);
            return;
        }
        x->big = path[1] == 'b';
        x->left = query_int(q, "n", 64);
        lloco_http_on_close(r, on_stream_close, x);
        CHECK_OK(lloco_http_stream_begin(r, 200, "text/event-stream", "Cache-Control: no-cache\r\n"));
        int ms = query_int(q, "ms", 1);
        uv_timer_start(&x->timer, on_stream_tick, (uint64_t)ms, (uint64_t)ms);
    } else if (!strcmp(path, "/hold")) {
        lloco_http_on_close(r, on_hold_close, NULL);
    } else if (!strcmp(path, "/hold2")) {
        lloco_http_on_close(r, on_hold2_close, NULL);
        T.held = r;
    } else if (!strcmp(path, "/nocontent")) {
        finished_one();
        CHECK_OK(lloco_http_respond(r, 204, NULL, "ignored", 7, NULL));
    } else if (!strcmp(path, "/err")) {
        finished_one();
        lloco_http_respond_error(r, 422, "invalid_request_error", NULL, "X-E: 1\r\n",
                                 "bad \"%s\"\n", "x");
    } else {
        echo(r);
    }
}

static void job_close_done(void *user) {
    (void)user;
    stat_add(&T.closed_done, 1);
}

static void job_close(void *a) {
    (void)a;
    lloco_http_close(T.srv, job_close_done, NULL);
}

static void job_close_async(void *a) {
    (void)a;
    uv_close((uv_handle_t *)&T.async, NULL);
}

static int srv_start(lloco_http_params *p) {
    pthread_mutex_lock(&T.mu);
    T.n_handled = T.n_on_close = T.closed_done = T.n_backpressure = 0;
    T.order_violations = T.outstanding = T.hold_rc = 0;
    T.held = NULL;
    T.job = NULL;
    pthread_mutex_unlock(&T.mu);
    CHECK(uv_loop_init(&T.loop) == 0);
    CHECK(uv_async_init(&T.loop, &T.async, on_async) == 0);
    p->port = 0;
    p->handler = handler;
    p->user = &T;
    /* the loop thread does not run yet: this thread stands in for it */
    int rc = lloco_http_start(&T.loop, p, &T.srv);
    CHECK_OK(rc);
    if (rc) {
        uv_close((uv_handle_t *)&T.async, NULL);
        uv_run(&T.loop, UV_RUN_DEFAULT);
        uv_loop_close(&T.loop);
        return rc;
    }
    T.port = lloco_http_port(T.srv);
    CHECK(T.port > 0);
    pthread_create(&T.thread, NULL, loop_main, NULL);
    return 0;
}

/* Closes the server, waits for done, ends the loop; every handle must be
 * closed by then (uv_loop_close). */
static void srv_stop(void) {
    on_loop(job_close, NULL);
    CHECK(wait_stat(&T.closed_done, 1, 3000) == 1);
    on_loop(job_close_async, NULL);
    pthread_join(T.thread, NULL);
    CHECK(uv_loop_close(&T.loop) == 0);
    T.srv = NULL;
}

static void default_params(lloco_http_params *p) {
    lloco_http_params_default(p);
    p->header_timeout_ms = 2000;
}

/* ---- the cases ----------------------------------------------------------- */

TEST_CASE(http_get_post_head) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /echo?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Test:  hi there \r\n\r\n", &r) == 200);
    CHECKF(!strcmp(r.body, "GET /echo ?a=1&b=2 x=hi there len=0\n"), "body: %s", r.body);
    CHECK(resp_has(&r, "content-type", "text/plain"));
    CHECK(resp_has(&r, "content-length", "36"));
    CHECK(resp_has(&r, "x-echo", "1"));
    CHECK(!strstr(r.head, "Connection:"));
    resp_free(&r);

    CHECK(roundtrip(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world", &r) == 200);
    CHECKF(!strcmp(r.body, "POST /echo ? x=- len=11\nhello world"), "body: %s", r.body);
    resp_free(&r);

    /* HEAD: the GET's headers, no body; the next response must parse */
    CHECK(cl_send(&c, "HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n") == 0);
    CHECK(read_resp(&c, &r, 1) == 0);
    CHECK(r.status == 200);
    CHECK(resp_has(&r, "content-length", "23")); /* "HEAD /echo ? x=- len=0\n" */
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /err HTTP/1.1\r\n\r\n", &r) == 422);
    CHECKF(!strcmp(r.body, "{\"error\":{\"message\":\"bad \\\"x\\\"\\n\",\"type\":"
                           "\"invalid_request_error\",\"param\":null,\"code\":null}}"),
           "body: %s", r.body);
    CHECK(resp_has(&r, "content-type", "application/json"));
    CHECK(resp_has(&r, "x-e", "1"));
    resp_free(&r);

    CHECK(cl_send(&c, "DELETE /nocontent HTTP/1.1\r\n\r\n") == 0);
    CHECK(read_resp(&c, &r, 1) == 0);
    CHECK(r.status == 204 && !strstr(r.head, "Content-Length"));
    resp_free(&r);
    /* absolute-form target, fragment, empty header value */
    CHECK(roundtrip(&c, "GET http://h:1/echo?q#frag HTTP/1.1\r\nX-Test:\r\n\r\n", &r) == 200);
    CHECKF(!strcmp(r.body, "GET /echo ?q x= len=0\n"), "body: %s", r.body);
    resp_free(&r);
    cl_close(&c);
    CHECK(stat_get(&T.n_handled) == 6);
    srv_stop();
}

TEST_CASE(http_keepalive_and_versions) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 200);
    CHECK(!strncmp(r.body, "GET /echo ?n=2", 14));
    resp_free(&r);
    CHECK(query_until(job_n_conns, 1, 1000) == 1);
    /* Connection: close is honoured */
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n", &r) == 200);
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(cl_eof(&c));
    resp_free(&r);
    cl_close(&c);

    /* 1.0 closes by default, stays with keep-alive */
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /echo HTTP/1.0\r\n\r\n", &r) == 200);
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(cl_eof(&c));
    resp_free(&r);
    cl_close(&c);
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /echo?a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r) == 200);
    CHECK(resp_has(&r, "connection", "keep-alive"));
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /echo?b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r) == 200);
    CHECK(!strncmp(r.body, "GET /echo ?b", 12));
    resp_free(&r);
    cl_close(&c);
    srv_stop();
}

TEST_CASE(http_pipelined_in_order) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    /* the first answer comes late, from a timer; the rest are immediate */
    CHECK(cl_send(&c, "GET /delay?ms=150&id=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                      "POST /echo?id=2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                      "GET /delay?ms=10&id=3 HTTP/1.1\r\n\r\n"
                      "GET /echo?id=4 HTTP/1.1\r\n\r\n") == 0);
    const char *want[] = {"GET /delay ?ms=150&id=1 x=- len=0\n", "POST /echo ?id=2 x=- len=3\nabc",
                          "GET /delay ?ms=10&id=3 x=- len=0\n", "GET /echo ?id=4 x=- len=0\n"};
    for (int i = 0; i < 4; i++) {
        CHECK(read_resp(&c, &r, 0) == 0);
        CHECK(r.status == 200);
        CHECKF(r.body && !strcmp(r.body, want[i]), "response %d: %s", i, r.body ? r.body : "");
        resp_free(&r);
    }
    cl_close(&c);
    CHECK(stat_get(&T.n_handled) == 4);
    CHECK(stat_get(&T.order_violations) == 0);
    srv_stop();
}

TEST_CASE(http_chunked_body_and_continue) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n", &r) == 200);
    CHECKF(!strcmp(r.body, "POST /echo ? x=- len=11\nhello world"), "body: %s", r.body);
    resp_free(&r);

    /* a request arriving one byte at a time: every callback split */
    const char *drip = "POST /echo?d=1 HTTP/1.1\r\nX-Test: split value\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (const char *q = drip; *q; q++) {
        CHECK(send(c.fd, q, 1, MSG_NOSIGNAL) == 1);
        if ((q - drip) % 4 == 0) sleep_ms(1);
    }
    CHECK(read_resp(&c, &r, 0) == 0);
    CHECKF(!strcmp(r.body, "POST /echo ?d=1 x=split value len=3\nabc"), "body: %s", r.body);
    resp_free(&r);

    /* Expect: 100-continue: the interim answer comes before the body is sent */
    CHECK(cl_send(&c, "PUT /echo HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n") == 0);
    const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    CHECK(cl_need(&c, sizeof cont - 1) == 0);
    CHECK(!memcmp(c.buf, cont, sizeof cont - 1));
    cl_consume(&c, sizeof cont - 1);
    CHECK(roundtrip(&c, "data", &r) == 200);
    CHECKF(!strcmp(r.body, "PUT /echo ? x=- len=4\ndata"), "body: %s", r.body);
    resp_free(&r);
    cl_close(&c);

    /* other expectations: 417 */
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "PUT /echo HTTP/1.1\r\nContent-Length: 4\r\nExpect: magic\r\n\r\n", &r) == 417);
    CHECK(cl_eof(&c));
    resp_free(&r);
    cl_close(&c);
    srv_stop();
}

/* An error produced by the layer: JSON body, close. */
static void check_layer_error(client *c, const char *req, int status, const char *code) {
    resp r;
    CHECK(roundtrip(c, req, &r) == status);
    CHECK(resp_has(&r, "content-type", "application/json"));
    CHECK(resp_has(&r, "connection", "close"));
    CHECKF(r.body && strstr(r.body, "{\"error\":{\"message\":") &&
               strstr(r.body, "\"type\":\"invalid_request_error\"") && strstr(r.body, code),
           "body: %s", r.body ? r.body : "");
    CHECK(cl_eof(c));
    resp_free(&r);
}

/* Response statuses the layer reports through on_status (loop thread). */
static atomic_int statuses[600];

static void count_status(void *user, int status) {
    (void)user;
    if (status >= 0 && status < 600) atomic_fetch_add(&statuses[status], 1);
}

TEST_CASE(http_limits_and_malformed) {
    lloco_http_params p;
    default_params(&p);
    p.on_status = count_status;
    for (int i = 0; i < 600; i++) atomic_store(&statuses[i], 0);
    p.max_body_bytes = 1000;
    p.max_header_bytes = 1024;
    if (srv_start(&p)) return;
    client c;
    CHECK(cl_open(&c, T.port, 0) == 0);
    check_layer_error(&c, "POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413,
                      "request_too_large");
    cl_close(&c);

    /* chunked: the running total; 600 + 600 > 1000 */
    char big[2048];
    char chunk[601];
    memset(chunk, 'c', 600);
    chunk[600] = 0;
    snprintf(big, sizeof big, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "258\r\n%s\r\n258\r\n%s\r\n0\r\n\r\n", chunk, chunk);
    CHECK(cl_open(&c, T.port, 0) == 0);
    check_layer_error(&c, big, 413, "request_too_large");
    cl_close(&c);

    /* exactly at the limit passes */
    resp r;
    char at[1200];
    char body[1001];
    memset(body, 'a', 1000);
    body[1000] = 0;
    snprintf(at, sizeof at, "POST /echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n%s", body);
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, at, &r) == 200);
    resp_free(&r);
    cl_close(&c);

    char hdr[2048];
    memset(chunk, 'h', 600);
    snprintf(hdr, sizeof hdr, "GET /echo HTTP/1.1\r\nX-A: %s\r\nX-B: %s\r\n\r\n", chunk, chunk);
    CHECK(cl_open(&c, T.port, 0) == 0);
    check_layer_error(&c, hdr, 431, "headers_too_large");
    cl_close(&c);

    const char *bad[] = {"BLAH\r\n\r\n", "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
                         "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                         "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"};
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(bad); i++) {
        CHECK(cl_open(&c, T.port, 0) == 0);
        check_layer_error(&c, bad[i], 400, "bad_request");
        cl_close(&c);
    }
    CHECK(stat_get(&T.n_handled) == 1);
    srv_stop();
    /* every response went through on_status, the layer's own errors too */
    CHECK(atomic_load(&statuses[413]) == 2 && atomic_load(&statuses[431]) == 1);
    CHECK(atomic_load(&statuses[400]) == (int)LLOCO_ARRAY_LEN(bad));
    CHECK(atomic_load(&statuses[200]) == 1);
}

TEST_CASE(http_bearer_auth) {
    lloco_http_params p;
    default_params(&p);
    const char *pub[] = {"/health", NULL};
    p.bearer_token = "s3cret-token";
    p.public_paths = pub;
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\n\r\n", &r) == 401);
    CHECK(resp_has(&r, "www-authenticate", "Bearer"));
    CHECK(r.body && strstr(r.body, "\"code\":\"invalid_api_key\""));
    resp_free(&r);
    /* the connection stays: a wrong token, a prefix of it, then the right one */
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\nAuthorization: Bearer s3cret-tokex\r\n\r\n", &r) == 401);
    resp_free(&r);
    CHECK(roundtrip(&c, "POST /echo HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 2\r\n\r\nhi", &r) == 401);
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\nAuthorization: Basic s3cret-token\r\n\r\n", &r) == 401);
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\nAuthorization: bearer  s3cret-token\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /health HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /health?x=1 HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(roundtrip(&c, "GET /health/x HTTP/1.1\r\n\r\n", &r) == 401);
    resp_free(&r);
    cl_close(&c);
    /* with Expect: refused before the body, and closed */
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "POST /echo HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", &r) == 401);
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(cl_eof(&c));
    resp_free(&r);
    cl_close(&c);
    CHECK(stat_get(&T.n_handled) == 3);
    srv_stop();
}

TEST_CASE(http_timeouts) {
    lloco_http_params p;
    default_params(&p);
    p.header_timeout_ms = 200;
    p.idle_timeout_ms = 300;
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    double t0 = now_ms();
    CHECK(cl_send(&c, "GET /echo HTTP/1.1\r\nHost: x\r\n") == 0);
    CHECK(read_resp(&c, &r, 0) == 0);
    double dt = now_ms() - t0;
    CHECK(r.status == 408);
    CHECKF(dt >= 150 && dt < 1500, "408 after %.0f ms", dt);
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(r.body && strstr(r.body, "request_timeout"));
    CHECK(cl_eof(&c));
    resp_free(&r);
    cl_close(&c);

    /* idle keep-alive: closed silently; the header deadline is not involved */
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    t0 = now_ms();
    CHECK(cl_eof(&c));
    dt = now_ms() - t0;
    CHECKF(dt >= 250 && dt < 1500, "idle close after %.0f ms", dt);
    cl_close(&c);
    CHECK(query_until(job_n_conns, 0, 1000) == 0);
    srv_stop();
}

TEST_CASE(http_streaming) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    resp r;
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /stream?n=5&ms=5 HTTP/1.1\r\n\r\n", &r) == 200);
    CHECK(resp_has(&r, "transfer-encoding", "chunked"));
    CHECK(resp_has(&r, "content-type", "text/event-stream"));
    CHECK(resp_has(&r, "cache-control", "no-cache"));
    CHECK(r.n_chunks == 5);
    CHECKF(r.body && !strcmp(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"),
           "body: %s", r.body ? r.body : "");
    resp_free(&r);
    /* the connection goes on after a stream */
    CHECK(roundtrip(&c, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    cl_close(&c);

    /* HTTP/1.0: raw body delimited by the close */
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(roundtrip(&c, "GET /stream?n=3&ms=5 HTTP/1.0\r\n\r\n", &r) == 200);
    CHECK(!strstr(r.head, "Transfer-Encoding"));
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(r.body && !strcmp(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\n"));
    resp_free(&r);
    cl_close(&c);
    CHECK(stat_get(&T.n_on_close) == 0);
    srv_stop();
}

TEST_CASE(http_disconnect_mid_stream) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(cl_send(&c, "GET /stream?n=100000&ms=2 HTTP/1.1\r\n\r\n") == 0);
    CHECK(cl_find(&c, 0, "data: 3") > 0);
    cl_reset(&c);
    CHECK(wait_stat(&T.n_on_close, 1, 2000) == 1);
    CHECK(query_until(job_n_active, 0, 2000) == 0);
    CHECK(query_until(job_n_conns, 0, 2000) == 0);

    /* a plain close (FIN) mid-stream is the same */
    CHECK(cl_open(&c, T.port, 0) == 0);
    CHECK(cl_send(&c, "GET /stream?n=100000&ms=2 HTTP/1.1\r\n\r\n") == 0);
    CHECK(cl_find(&c, 0, "data: 1") > 0);
    cl_close(&c);
    CHECK(wait_stat(&T.n_on_close, 2, 2000) == 2);
    CHECK(query_until(job_n_active, 0, 2000) == 0);
    srv_stop();
}

TEST_CASE(http_backpressure) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client c;
    CHECK(cl_open(&c, T.port, 4096) == 0);
    /* 1 MiB per millisecond, never read: the server gives up past 8 MiB queued */
    CHECK(cl_send(&c, "GET /big?n=200&ms=1 HTTP/1.1\r\n\r\n") == 0);
    CHECK(wait_stat(&T.n_on_close, 1, 5000) == 1);
    CHECK(stat_get(&T.n_backpressure) == 1);
    CHECK(query_until(job_n_active, 0, 2000) == 0);
    cl_close(&c);
    srv_stop();
}

TEST_CASE(http_max_connections) {
    lloco_http_params p;
    default_params(&p);
    p.max_connections = 2;
    if (srv_start(&p)) return;
    client a, b, x;
    resp r;
    CHECK(cl_open(&a, T.port, 0) == 0);
    CHECK(roundtrip(&a, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(cl_open(&b, T.port, 0) == 0);
    CHECK(roundtrip(&b, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(cl_open(&x, T.port, 0) == 0);
    CHECK(roundtrip(&x, "GET /echo HTTP/1.1\r\n\r\n", &r) == 503);
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(resp_has(&r, "retry-after", "1"));
    CHECK(r.body && strstr(r.body, "too_many_connections"));
    CHECK(cl_eof(&x));
    resp_free(&r);
    cl_close(&x);
    cl_close(&a);
    CHECK(query_until(job_n_conns, 1, 2000) == 1);
    CHECK(cl_open(&x, T.port, 0) == 0);
    CHECK(roundtrip(&x, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    cl_close(&x);
    cl_close(&b);
    srv_stop();
}

static void job_stop_accepting(void *a) {
    (void)a;
    lloco_http_stop_accepting(T.srv);
}

TEST_CASE(http_stop_accepting) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client idle, busy, late;
    resp r;
    CHECK(cl_open(&idle, T.port, 0) == 0);
    CHECK(roundtrip(&idle, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(cl_open(&busy, T.port, 0) == 0);
    CHECK(cl_send(&busy, "GET /delay?ms=300 HTTP/1.1\r\n\r\n") == 0);
    CHECK(query_until(job_n_active, 1, 1000) == 1);
    on_loop(job_stop_accepting, NULL);
    CHECK(cl_open(&late, T.port, 0) != 0 && errno == ECONNREFUSED);
    CHECK(cl_eof(&idle));
    cl_close(&idle);
    CHECK(read_resp(&busy, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK(resp_has(&r, "connection", "close"));
    CHECK(cl_eof(&busy));
    resp_free(&r);
    cl_close(&busy);
    CHECK(query_until(job_n_conns, 0, 2000) == 0);
    srv_stop();
}

static void job_finish_held(void *a) {
    (void)a;
    CHECK(T.held && lloco_http_closed(T.held));
    CHECK(lloco_http_stream_begin(T.held, 200, NULL, NULL) == LLOCO_ERR_IO);
    CHECK(lloco_http_stream_write(T.held, "x", 1) == LLOCO_ERR_IO);
    CHECK(lloco_http_stream_end(T.held) == LLOCO_ERR_IO);
    finished_one();
    T.held = NULL;
}

TEST_CASE(http_close_with_open_connections) {
    lloco_http_params p;
    default_params(&p);
    if (srv_start(&p)) return;
    client idle, hold, hold2, part, lingering;
    resp r;
    CHECK(cl_open(&idle, T.port, 0) == 0);
    CHECK(roundtrip(&idle, "GET /echo HTTP/1.1\r\n\r\n", &r) == 200);
    resp_free(&r);
    CHECK(cl_open(&hold, T.port, 0) == 0);
    CHECK(cl_send(&hold, "GET /hold HTTP/1.1\r\n\r\n") == 0);
    CHECK(cl_open(&hold2, T.port, 0) == 0);
    CHECK(cl_send(&hold2, "POST /hold2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc") == 0);
    CHECK(cl_open(&part, T.port, 0) == 0);
    CHECK(cl_send(&part, "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly a part") == 0);
    CHECK(cl_open(&lingering, T.port, 0) == 0);
    CHECK(roundtrip(&lingering, "BAD\r\n\r\n", &r) == 400); /* the server lingers on it */
    resp_free(&r);
    CHECK(query_until(job_n_active, 2, 1000) == 2);
    CHECK(query_until(job_n_conns, 5, 1000) == 5);

    on_loop(job_close, NULL);
    CHECK(wait_stat(&T.closed_done, 1, 3000) == 1);
    CHECK(stat_get(&T.n_on_close) == 2);
    CHECK(stat_get(&T.hold_rc) == LLOCO_ERR_IO);
    CHECK(cl_eof(&idle) && cl_eof(&hold) && cl_eof(&hold2) && cl_eof(&part) && cl_eof(&lingering));
    /* /hold2 outlived the server: finishing it now frees it */
    on_loop(job_finish_held, NULL);
    cl_close(&idle);
    cl_close(&hold);
    cl_close(&hold2);
    cl_close(&part);
    cl_close(&lingering);
    on_loop(job_close_async, NULL);
    pthread_join(T.thread, NULL);
    CHECK(uv_loop_close(&T.loop) == 0);
    CHECK(stat_get(&T.outstanding) == 0);
    T.srv = NULL;
}

static int start_rc;
static void job_start_second(void *a) {
    lloco_http_params *p = a;
    lloco_http_server *s = (lloco_http_server *)1;
    start_rc = lloco_http_start(&T.loop, p, &s);
    CHECK(s == NULL);
}

TEST_CASE(http_start_errors) {
    lloco_http_params p;
    default_params(&p);
    lloco_http_server *s = NULL;
    uv_loop_t loop;
    CHECK(uv_loop_init(&loop) == 0);
    CHECK_ERR(lloco_http_start(&loop, &p, &s), LLOCO_ERR_INVAL); /* no handler */
    p.handler = handler;
    p.host = "not-an-address";
    CHECK_ERR(lloco_http_start(&loop, &p, &s), LLOCO_ERR_INVAL);
    CHECK(s == NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);

    /* the port is taken */
    default_params(&p);
    if (srv_start(&p)) return;
    lloco_http_params q;
    default_params(&q);
    q.handler = handler;
    q.port = T.port;
    on_loop(job_start_second, &q);
    CHECK(start_rc == LLOCO_ERR_IO);
    srv_stop();
}
