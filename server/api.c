/* api: the OpenAI-compatible HTTP API on the engine and the scheduler. The
 * loop thread parses and validates JSON and writes answers; each request's
 * retrieval runs on a libuv worker (uv_queue_work), its decoding on the
 * scheduler thread, whose callbacks queue text and completion events that
 * an uv_async hands back to the loop. Metrics and graceful shutdown live
 * here too.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/http.h"
#include "server/server.h"

#define MAX_STOP 4
#define MAX_DOC_IDS 64
#define N_STATUS 24

typedef enum { KIND_CHAT, KIND_COMPLETION } req_kind;

typedef struct api_req api_req;

struct lloco_server {
    uv_loop_t loop;
    lloco_http_server *http;
    lloco_engine *eng;
    lloco_sched *sched;
    lloco_server_params p;
    uv_async_t async;
    uv_signal_t sig[2];
    uv_timer_t drain;
    atomic_int shutdown_asked;
    int draining, closing;
    double drain_deadline;

    pthread_mutex_t ev_mu;
    api_req *pending; /* requests with scheduler events for the loop */
    api_req *live;    /* every generation request not yet finished */
    uint64_t next_id;

    /* metrics (loop thread) */
    struct {
        int status;
        uint64_t n;
    } by_status[N_STATUS];
    uint64_t disconnects;
};

struct api_req {
    lloco_server *srv;
    lloco_http_req *http;
    api_req *live_next, *live_prev;
    req_kind kind;
    int stream, include_usage, ignore_eos;
    cJSON *body; /* the strings of q point into it */
    lloco_query q;
    lloco_chat_msg *msgs;
    const char *doc_ids[MAX_DOC_IDS];
    const char *stop[MAX_STOP];
    int n_stop;
    lloco_sampler_params sampling;
    char id[40];
    long created;
    double t_start;
    uv_work_t work;
    lloco_prepared prep;
    int prep_rc;
    char prep_err[512];
    int working;   /* prepare is on a worker */
    int submitted; /* the scheduler holds it: on_done will come */
    uint64_t sched_id;
    int gone;      /* the client went away */
    int cancel_sent;
    int header_sent;
    /* events from the scheduler, under srv->ev_mu */
    api_req *pend_next;
    int in_pending;
    lloco_buf ev_text;
    int ev_done;
    lloco_sched_result res;
    lloco_buf text; /* the answer so far (non-streaming) */
};

/* ---- responses and metrics ------------------------------------------------ */

/* Every response the HTTP layer sends, its own errors included. */
static void count_status(void *user, int status) {
    lloco_server *s = user;
    for (int i = 0; i < N_STATUS; i++) {
        if (s->by_status[i].status == status || s->by_status[i].status == 0) {
            s->by_status[i].status = status;
            s->by_status[i].n++;
            return;
        }
    }
}

static void respond_json(lloco_http_req *h, int status, cJSON *j, const char *extra) {
    char *body = j ? cJSON_PrintUnformatted(j) : NULL;
    if (body) lloco_http_respond(h, status, "application/json", body, strlen(body), extra);
    else lloco_http_respond_error(h, 500, "server_error", NULL, NULL, "out of memory");
    free(body);
    cJSON_Delete(j);
}

static void respond_err(lloco_http_req *h, int status, const char *code, const char *extra,
                        const char *msg) {
    const char *type = status >= 500 ? "server_error"
                       : status == 401 ? "authentication_error"
                       : status == 404 ? "not_found_error"
                                       : "invalid_request_error";
    lloco_http_respond_error(h, status, type, code, extra, "%s", msg);
}

/* The HTTP status and error code for a lloco error. */
static int status_of(int rc, const char **code) {
    switch (rc) {
    case LLOCO_ERR_NOTFOUND: *code = "not_found"; return 404;
    case LLOCO_ERR_RANGE: *code = "context_length_exceeded"; return 400;
    case LLOCO_ERR_BUSY: *code = "server_busy"; return 503;
    case LLOCO_ERR_CANCELLED: *code = "shutting_down"; return 503;
    case LLOCO_ERR_UNSUPPORTED: *code = "unsupported"; return 400;
    case LLOCO_ERR_INVAL:
    case LLOCO_ERR_MISMATCH:
    case LLOCO_ERR_FORMAT: *code = "invalid_request"; return 400;
    default: *code = NULL; return 500;
    }
}

static void respond_rc(lloco_http_req *h, int rc, const char *msg) {
    const char *code;
    int status = status_of(rc, &code);
    respond_err(h, status, code, status == 503 ? "Retry-After: 1\r\n" : NULL, msg);
}

/* ---- request lifetime ------------------------------------------------------ */

static void req_free(api_req *r) {
    lloco_server *s = r->srv;
    if (r->live_prev) r->live_prev->live_next = r->live_next;
    else if (s->live == r) s->live = r->live_next;
    if (r->live_next) r->live_next->live_prev = r->live_prev;
    cJSON_Delete(r->body);
    free(r->msgs);
    lloco_prepared_free(&r->prep);
    lloco_buf_free(&r->ev_text);
    lloco_buf_free(&r->text);
    free(r);
}

static void on_client_gone(void *user, lloco_http_req *h) {
    api_req *r = user;
    (void)h;
    r->gone = 1;
    r->srv->disconnects++;
    if (r->submitted) lloco_sched_cancel(r->srv->sched, r->sched_id);
}

/* ---- scheduler callbacks (scheduler thread) -------------------------------- */

static void queue_event(api_req *r) {
    if (!r->in_pending) {
        r->in_pending = 1;
        r->pend_next = r->srv->pending;
        r->srv->pending = r;
    }
}

static int on_text(const char *text, size_t len, void *user) {
    api_req *r = user;
    lloco_server *s = r->srv;
    pthread_mutex_lock(&s->ev_mu);
    const int ok = lloco_buf_append(&r->ev_text, text, len) == 0;
    if (ok) queue_event(r);
    pthread_mutex_unlock(&s->ev_mu);
    uv_async_send(&s->async);
    return !ok;
}

static void on_done(void *user, const lloco_sched_result *res) {
    api_req *r = user;
    lloco_server *s = r->srv;
    pthread_mutex_lock(&s->ev_mu);
    r->res = *res;
    r->ev_done = 1;
    queue_event(r);
    pthread_mutex_unlock(&s->ev_mu);
    uv_async_send(&s->async);
}

/* ---- JSON out ---------------------------------------------------------------- */

static const char *finish_reason(lloco_stop_reason r) {
    return r == LLOCO_STOP_LENGTH || r == LLOCO_STOP_CONTEXT ? "length" : "stop";
}

cJSON *lloco_answer_json(const lloco_prepared *p, lloco_mode mode, const lloco_sched_result *res,
                         double t_total, int with_text) {
    const lloco_sched_result none = {0};
    if (!res) res = &none;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "mode", lloco_mode_name(mode));
    if (p->group) cJSON_AddStringToObject(j, "group", p->group);
    else cJSON_AddNullToObject(j, "group");
    if (p->adapter) cJSON_AddStringToObject(j, "adapter", p->adapter);
    else cJSON_AddNullToObject(j, "adapter");
    cJSON *ch = cJSON_AddArrayToObject(j, "chunks");
    for (int i = 0; i < p->n_chunks; i++) {
        const lloco_used_chunk *u = &p->chunks[i];
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "chunk_id", (double)u->chunk_id);
        cJSON_AddStringToObject(c, "doc_id", u->doc_id);
        cJSON_AddNumberToObject(c, "ordinal", u->ordinal);
        cJSON_AddNumberToObject(c, "score", (double)u->score);
        cJSON *span = cJSON_AddArrayToObject(c, "tokens");
        cJSON_AddItemToArray(span, cJSON_CreateNumber(u->tok_begin));
        cJSON_AddItemToArray(span, cJSON_CreateNumber(u->tok_end));
        cJSON_AddNumberToObject(c, "slots", u->n_slots);
        if (with_text) cJSON_AddStringToObject(c, "text", u->text);
        cJSON_AddItemToArray(ch, c);
    }
    cJSON_AddNumberToObject(j, "input_positions", p->n_tokens);
    cJSON_AddNumberToObject(j, "context_positions", (double)p->n_context_positions);
    cJSON_AddNumberToObject(j, "raw_tokens", (double)p->n_raw_tokens);
    cJSON_AddNumberToObject(j, "compression_ratio",
                            p->n_context_positions
                                ? (double)p->n_raw_tokens / (double)p->n_context_positions
                                : 0);
    cJSON_AddBoolToObject(j, "truncated", p->truncated);
    cJSON *t = cJSON_AddObjectToObject(j, "timings");
    cJSON_AddNumberToObject(t, "retrieve_s", p->t_retrieve);
    cJSON_AddNumberToObject(t, "queued_s", res->t_queued);
    cJSON_AddNumberToObject(t, "prefill_s", res->t_prefill);
    cJSON_AddNumberToObject(t, "first_token_s", res->t_first_token);
    cJSON_AddNumberToObject(t, "decode_s", res->t_decode);
    cJSON_AddNumberToObject(t, "total_s", t_total);
    return j;
}

static cJSON *lloco_object(const api_req *r, int with_text) {
    return lloco_answer_json(&r->prep, r->q.mode, &r->res, lloco_time_now() - r->t_start,
                             with_text);
}

static cJSON *usage_object(const api_req *r) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->prep.n_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", r->res.n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", r->prep.n_tokens + r->res.n_generated);
    return u;
}

/* The envelope every answer and chunk shares. */
static cJSON *envelope(const api_req *r, int chunk) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", r->id);
    cJSON_AddStringToObject(j, "object", r->kind == KIND_CHAT
                                             ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                             : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)r->created);
    cJSON_AddStringToObject(j, "model", r->prep.adapter ? r->prep.adapter
                                                        : lloco_engine_model_name(r->srv->eng));
    return j;
}

/* One choice: text (or a delta) and a finish reason (NULL: null). */
static cJSON *choice(const api_req *r, const char *text, size_t len, const char *finish,
                     int delta, int role) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    char *t = lloco_utf8_repair(text, len);
    if (r->kind == KIND_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, delta ? "delta" : "message");
        if (role) cJSON_AddStringToObject(m, "role", "assistant");
        if (len || !delta) cJSON_AddStringToObject(m, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(c, "text", t ? t : "");
    }
    free(t);
    cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    return c;
}

static void sse(api_req *r, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return;
    size_t n = strlen(s);
    char *line = malloc(n + 9);
    if (line) {
        memcpy(line, "data: ", 6);
        memcpy(line + 6, s, n);
        memcpy(line + 6 + n, "\n\n", 3);
        lloco_http_stream_write(r->http, line, n + 8);
    }
    free(line);
    free(s);
}

static void stream_start(api_req *r) {
    if (r->header_sent) return;
    r->header_sent = 1;
    lloco_http_stream_begin(r->http, 200, "text/event-stream",
                            "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    if (r->kind == KIND_CHAT) {
        cJSON *j = envelope(r, 1);
        cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "choices"), choice(r, "", 0, NULL, 1, 1));
        sse(r, j);
    }
}

/* ---- scheduler events (loop thread) ----------------------------------------- */

static void finish_generation(api_req *r) {
    if (r->gone) {
        if (r->header_sent) lloco_http_stream_end(r->http);
        else lloco_http_respond(r->http, 499, NULL, "", 0, NULL);
        req_free(r);
        return;
    }
    if (r->res.rc && !r->header_sent) {
        respond_rc(r->http, r->res.rc, r->res.error);
        req_free(r);
        return;
    }
    const char *fin = finish_reason(r->res.stop);
    if (r->stream) {
        stream_start(r);
        if (r->res.rc) {
            cJSON *e = cJSON_CreateObject();
            cJSON *o = cJSON_AddObjectToObject(e, "error");
            cJSON_AddStringToObject(o, "message", r->res.error);
            cJSON_AddStringToObject(o, "type", "server_error");
            sse(r, e);
        } else {
            cJSON *j = envelope(r, 1);
            cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "choices"), choice(r, "", 0, fin, 1, 0));
            cJSON_AddItemToObject(j, "lloco", lloco_object(r, 0));
            sse(r, j);
            if (r->include_usage) {
                j = envelope(r, 1);
                cJSON_AddArrayToObject(j, "choices");
                cJSON_AddItemToObject(j, "usage", usage_object(r));
                sse(r, j);
            }
        }
        lloco_http_stream_write(r->http, "data: [DONE]\n\n", 14);
        lloco_http_stream_end(r->http);
    } else {
        cJSON *j = envelope(r, 0);
        cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "choices"),
                             choice(r, r->text.data ? r->text.data : "", r->text.len, fin, 0, 1));
        cJSON_AddItemToObject(j, "usage", usage_object(r));
        cJSON_AddItemToObject(j, "lloco", lloco_object(r, 0));
        respond_json(r->http, 200, j, NULL);
    }
    req_free(r);
}

static void deliver(api_req *r, const char *text, size_t len) {
    if (!len || r->gone) return;
    if (r->stream) {
        stream_start(r);
        cJSON *j = envelope(r, 1);
        cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "choices"), choice(r, text, len, NULL, 1, 0));
        sse(r, j);
        return;
    }
    lloco_buf_append(&r->text, text, len);
}

static void begin_shutdown(lloco_server *s);

static void on_async(uv_async_t *a) {
    lloco_server *s = a->data;
    if (atomic_exchange(&s->shutdown_asked, 0)) begin_shutdown(s);
    pthread_mutex_lock(&s->ev_mu);
    api_req *list = s->pending;
    s->pending = NULL;
    pthread_mutex_unlock(&s->ev_mu);
    while (list) {
        api_req *r = list;
        pthread_mutex_lock(&s->ev_mu);
        list = r->pend_next;
        r->in_pending = 0;
        lloco_buf text = r->ev_text;
        r->ev_text = (lloco_buf){0};
        int done = r->ev_done;
        pthread_mutex_unlock(&s->ev_mu);
        deliver(r, text.data, text.len);
        lloco_buf_free(&text);
        if (done) finish_generation(r);
    }
}

/* ---- parsing requests --------------------------------------------------------- */

/* A field of the body, checked: returns 0 and sets *out (NULL if absent or
 * null), or writes the message for a 400. */
typedef struct {
    char msg[256];
    const char *code;
} bad_req;

static int bad(bad_req *b, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->msg, sizeof b->msg, fmt, ap);
    va_end(ap);
    b->code = code;
    return -1;
}

static const cJSON *field(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int get_string(const cJSON *o, const char *name, const char **out, bad_req *b) {
    const cJSON *v = field(o, name);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return bad(b, "invalid_type", "'%s' must be a string", name);
    *out = v->valuestring;
    return 0;
}

static int get_number(const cJSON *o, const char *name, double lo, double hi, int integer,
                      double *out, bad_req *b) {
    const cJSON *v = field(o, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || (integer && v->valuedouble != (double)(long long)v->valuedouble))
        return bad(b, "invalid_type", "'%s' must be %s", name, integer ? "an integer" : "a number");
    if (v->valuedouble < lo || v->valuedouble > hi)
        return bad(b, "invalid_value", "'%s' must be between %g and %g", name, lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, int *out, bad_req *b) {
    const cJSON *v = field(o, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return bad(b, "invalid_type", "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A string or an array of strings (max n): stop, doc_ids. */
static int get_strings(const cJSON *o, const char *name, const char **out, int max, int *n,
                       bad_req *b) {
    const cJSON *v = field(o, name);
    *n = 0;
    if (!v) return 0;
    if (cJSON_IsString(v)) {
        out[(*n)++] = v->valuestring;
        return 0;
    }
    if (!cJSON_IsArray(v))
        return bad(b, "invalid_type", "'%s' must be a string or an array of strings", name);
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e))
            return bad(b, "invalid_type", "'%s' must hold strings only", name);
        if (*n == max) return bad(b, "invalid_value", "'%s' holds more than %d entries", name, max);
        out[(*n)++] = e->valuestring;
    }
    return 0;
}

/* Parameters lloco does not implement: refused rather than ignored. */
static int refuse_unsupported(const cJSON *o, bad_req *b) {
    static const char *const always[] = {"tools", "functions", "tool_choice", "function_call",
                                         "logit_bias", "audio", "modalities", "prediction"};
    for (size_t i = 0; i < sizeof always / sizeof *always; i++) {
        const cJSON *v = field(o, always[i]);
        if (v && !(cJSON_IsObject(v) && !v->child) && !(cJSON_IsArray(v) && !v->child))
            return bad(b, "unsupported_parameter", "'%s' is not supported", always[i]);
    }
    const cJSON *v;
    if ((v = field(o, "n")) && !(cJSON_IsNumber(v) && v->valuedouble == 1))
        return bad(b, "unsupported_parameter", "'n' must be 1");
    if ((v = field(o, "best_of")) && !(cJSON_IsNumber(v) && v->valuedouble == 1))
        return bad(b, "unsupported_parameter", "'best_of' must be 1");
    if ((v = field(o, "logprobs")) && !cJSON_IsFalse(v))
        return bad(b, "unsupported_parameter", "'logprobs' is not supported");
    if ((v = field(o, "echo")) && !cJSON_IsFalse(v))
        return bad(b, "unsupported_parameter", "'echo' is not supported");
    if ((v = field(o, "suffix")))
        return bad(b, "unsupported_parameter", "'suffix' is not supported");
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++)
        if ((v = field(o, zero[i])) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
            return bad(b, "unsupported_parameter", "'%s' must be 0", zero[i]);
    if ((v = field(o, "response_format"))) {
        const cJSON *t = field(v, "type");
        if (!cJSON_IsObject(v) || !cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            return bad(b, "unsupported_parameter", "'response_format' must be {\"type\": \"text\"}");
    }
    return 0;
}

/* Message content: a string, or an array of {"type":"text","text":...}
 * parts (joined in place into a string item the body owns). */
static int message_content(cJSON *m, const char **out, bad_req *b) {
    cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsString(c)) {
        *out = c->valuestring;
        return 0;
    }
    if (!cJSON_IsArray(c)) return bad(b, "invalid_type", "message 'content' must be a string or an array of text parts");
    size_t n = 1;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x))
            return bad(b, "unsupported_parameter", "only text content parts are supported");
        n += strlen(x->valuestring);
    }
    char *joined = malloc(n);
    if (!joined) return bad(b, NULL, "out of memory");
    joined[0] = '\0';
    cJSON_ArrayForEach(part, c) strcat(joined, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
    cJSON *s = cJSON_CreateString(joined);
    free(joined);
    if (!s) return bad(b, NULL, "out of memory");
    cJSON_ReplaceItemInObjectCaseSensitive(m, "content", s);
    *out = s->valuestring;
    return 0;
}

static int parse_messages(api_req *r, bad_req *b) {
    cJSON *ms = cJSON_GetObjectItemCaseSensitive(r->body, "messages");
    if (!cJSON_IsArray(ms) || !ms->child)
        return bad(b, "invalid_value", "'messages' must be a non-empty array");
    int n = cJSON_GetArraySize(ms);
    r->msgs = calloc((size_t)n, sizeof *r->msgs);
    if (!r->msgs) return bad(b, NULL, "out of memory");
    cJSON *m;
    int i = 0, has_user = 0;
    cJSON_ArrayForEach(m, ms) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return bad(b, "invalid_type", "messages[%d] must be an object with a string 'role'", i);
        const char *rs = role->valuestring;
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return bad(b, "invalid_value", "messages[%d]: role '%s' is not supported (system, user, assistant)", i, rs);
        has_user |= !strcmp(rs, "user");
        r->msgs[i].role = rs;
        if (message_content(m, &r->msgs[i].content, b)) return -1;
        i++;
    }
    if (!has_user) return bad(b, "invalid_value", "'messages' has no user message");
    r->q.messages = r->msgs;
    r->q.n_messages = n;
    return 0;
}

/* Everything but the prompt/messages: sampling, limits and lloco's fields. */
static int parse_common(api_req *r, bad_req *b) {
    const lloco_server_params *p = &r->srv->p;
    const cJSON *o = r->body;
    if (refuse_unsupported(o, b)) return -1;
    double max_tokens = p->default_max_tokens, v;
    if (get_number(o, "max_tokens", 0, p->max_tokens_cap, 1, &max_tokens, b)) return -1;
    if (get_number(o, "max_completion_tokens", 0, p->max_tokens_cap, 1, &max_tokens, b)) return -1;
    r->q.max_tokens = (int)max_tokens;
    lloco_sampler_params_default(&r->sampling);
    r->sampling.temperature = 1.0f; /* OpenAI's default */
    v = r->sampling.temperature;
    if (get_number(o, "temperature", 0, 2, 0, &v, b)) return -1;
    r->sampling.temperature = (float)v;
    v = 1;
    if (get_number(o, "top_p", 0, 1, 0, &v, b)) return -1;
    r->sampling.top_p = v > 0 ? (float)v : 1e-6f;
    v = 0;
    if (get_number(o, "seed", -9.2e18, 9.2e18, 1, &v, b)) return -1;
    r->sampling.seed = (uint64_t)(int64_t)v;
    if (get_strings(o, "stop", r->stop, MAX_STOP, &r->n_stop, b)) return -1;
    for (int i = 0; i < r->n_stop; i++)
        if (!r->stop[i][0]) return bad(b, "invalid_value", "'stop' strings must not be empty");
    if (get_bool(o, "stream", &r->stream, b)) return -1;
    if (get_bool(o, "ignore_eos", &r->ignore_eos, b)) return -1;
    const cJSON *so = field(o, "stream_options");
    if (so && !cJSON_IsObject(so)) return bad(b, "invalid_type", "'stream_options' must be an object");
    if (so && get_bool(so, "include_usage", &r->include_usage, b)) return -1;

    const char *s;
    if (get_string(o, "mode", &s, b)) return -1;
    if (s && lloco_mode_parse(s, &r->q.mode))
        return bad(b, "invalid_value", "'mode' must be compressed, text, full or none");
    if (get_string(o, "group", &r->q.group, b)) return -1;
    if (get_string(o, "adapter", &r->q.adapter, b)) return -1;
    if (get_strings(o, "doc_ids", r->doc_ids, MAX_DOC_IDS, &r->q.n_doc_ids, b)) return -1;
    r->q.doc_ids = r->doc_ids;
    v = 0; /* lloco's top_k: chunks to retrieve (OpenAI has no sampling top_k) */
    if (get_number(o, "top_k", 1, 64, 1, &v, b)) return -1;
    r->q.top_k = (int)v;
    /* "model": the base model, or an adapter on disk */
    if (get_string(o, "model", &s, b)) return -1;
    if (s && strcmp(s, lloco_engine_model_name(r->srv->eng)) && !r->q.adapter) r->q.adapter = s;
    return 0;
}

/* ---- generation requests ------------------------------------------------------ */

static void work_prepare(uv_work_t *w) {
    api_req *r = w->data;
    r->prep_rc = lloco_engine_prepare(r->srv->eng, &r->q, &r->prep);
    if (r->prep_rc) snprintf(r->prep_err, sizeof r->prep_err, "%s", lloco_last_error());
}

static void after_prepare(uv_work_t *w, int status) {
    api_req *r = w->data;
    lloco_server *s = r->srv;
    r->working = 0;
    if (!r->gone && s->draining && lloco_time_now() >= s->drain_deadline && !r->prep_rc)
        r->prep_rc = LLOCO_ERR_CANCELLED, snprintf(r->prep_err, sizeof r->prep_err, "the server is shutting down");
    if (r->gone || status == UV_ECANCELED) {
        lloco_http_respond(r->http, 499, NULL, "", 0, NULL);
        req_free(r);
        return;
    }
    int rc = r->prep_rc;
    const int cap = s->p.max_prompt_positions;
    if (!rc && cap > 0 && r->prep.n_tokens > cap)
        rc = lloco_error(LLOCO_ERR_RANGE, "the input takes %d positions, over this server's limit of %d",
                         r->prep.n_tokens, cap);
    else if (rc)
        lloco_error(rc, "%s", r->prep_err);
    if (!rc) {
        lloco_sched_request sr = {.input = &r->prep, .max_tokens = r->q.max_tokens,
                                  .sampling = r->sampling, .stop = r->stop, .n_stop = r->n_stop,
                                  .ignore_eos = r->ignore_eos, .on_text = on_text,
                                  .on_done = on_done, .user = r};
        rc = lloco_sched_submit(s->sched, &sr, &r->sched_id);
        if (!rc) {
            r->submitted = 1;
            return;
        }
    }
    respond_rc(r->http, rc, lloco_last_error());
    req_free(r);
}

static void handle_generation(lloco_server *s, lloco_http_req *h, req_kind kind) {
    size_t len;
    const char *body = lloco_http_body(h, &len);
    api_req *r = calloc(1, sizeof *r);
    if (!r) {
        respond_err(h, 500, NULL, NULL, "out of memory");
        return;
    }
    r->srv = s;
    r->http = h;
    r->kind = kind;
    r->t_start = lloco_time_now();
    r->created = (long)time(NULL);
    snprintf(r->id, sizeof r->id, "%s-%llx%08lx", kind == KIND_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)++s->next_id, (unsigned long)(r->t_start * 1e6) & 0xffffffffUL);
    r->live_next = s->live;
    if (s->live) s->live->live_prev = r;
    s->live = r;
    bad_req b = {.code = "invalid_request"};
    r->body = cJSON_ParseWithLength(body, len);
    int bad_rc = 0;
    if (!r->body || !cJSON_IsObject(r->body)) {
        bad_rc = bad(&b, "invalid_json", "the body is not a JSON object%s", len ? "" : " (empty)");
    } else if (kind == KIND_CHAT) {
        bad_rc = parse_messages(r, &b);
    } else {
        const char *prompts[1];
        int n = 0;
        const cJSON *pv = field(r->body, "prompt");
        if (!pv) bad_rc = bad(&b, "invalid_value", "'prompt' is required");
        else if (get_strings(r->body, "prompt", prompts, 1, &n, &b)) bad_rc = -1;
        else if (n != 1) bad_rc = bad(&b, "invalid_value", "'prompt' must be one string");
        else r->q.question = prompts[0], r->q.raw = 1;
    }
    if (!bad_rc) bad_rc = parse_common(r, &b);
    if (bad_rc) {
        respond_err(h, b.code ? 400 : 500, b.code, NULL, b.msg);
        req_free(r);
        return;
    }
    lloco_http_on_close(h, on_client_gone, r);
    if (lloco_http_closed(h)) r->gone = 1;
    r->work.data = r;
    r->working = 1;
    int rc = uv_queue_work(&s->loop, &r->work, work_prepare, after_prepare);
    if (rc) {
        respond_err(h, 500, NULL, NULL, uv_strerror(rc));
        req_free(r);
    }
}

/* ---- jobs off the loop: adapters, retrieve, models --------------------------- */

typedef struct job job;
struct job {
    lloco_server *srv;
    lloco_http_req *http;
    uv_work_t work;
    cJSON *in;   /* request body, or NULL */
    char *name;  /* path parameter */
    char *group; /* query parameter */
    int (*fn)(job *j);
    int status;
    cJSON *out;  /* response body */
    int rc;
    char err[512];
    int gone;
};

static void job_gone(void *user, lloco_http_req *h) {
    (void)h;
    ((job *)user)->gone = 1;
}

static void job_work(uv_work_t *w) {
    job *j = w->data;
    j->status = 200;
    j->rc = j->fn(j);
    if (j->rc) snprintf(j->err, sizeof j->err, "%s", lloco_last_error());
}

static void job_after(uv_work_t *w, int status) {
    job *j = w->data;
    (void)status;
    if (j->gone) lloco_http_respond(j->http, 499, NULL, "", 0, NULL);
    else if (j->rc == LLOCO_ERR_BUSY) respond_err(j->http, 409, "adapter_in_use", NULL, j->err);
    else if (j->rc) respond_rc(j->http, j->rc, j->err);
    else {
        respond_json(j->http, j->status, j->out, NULL);
        j->out = NULL;
    }
    cJSON_Delete(j->in);
    cJSON_Delete(j->out);
    free(j->name);
    free(j->group);
    free(j);
}

static void run_job(lloco_server *s, lloco_http_req *h, int (*fn)(job *), const char *name,
                    int parse_body) {
    job *j = calloc(1, sizeof *j);
    if (!j) {
        respond_err(h, 500, NULL, NULL, "out of memory");
        return;
    }
    j->srv = s;
    j->http = h;
    j->fn = fn;
    j->work.data = j;
    if (name && !(j->name = strdup(name))) goto oom;
    const char *q = lloco_http_query(h);
    if (!strncmp(q, "group=", 6) && !(j->group = strdup(q + 6))) goto oom;
    if (parse_body) {
        size_t len;
        const char *body = lloco_http_body(h, &len);
        j->in = cJSON_ParseWithLength(body, len);
        if (!j->in || !cJSON_IsObject(j->in)) {
            respond_err(h, 400, "invalid_json", NULL, "the body is not a JSON object");
            cJSON_Delete(j->in);
            free(j->name);
            free(j->group);
            free(j);
            return;
        }
    }
    lloco_http_on_close(h, job_gone, j);
    if (lloco_http_closed(h)) j->gone = 1;
    if (uv_queue_work(&s->loop, &j->work, job_work, job_after) == 0) return;
oom:
    respond_err(h, 500, NULL, NULL, "cannot queue the request");
    cJSON_Delete(j->in);
    free(j->name);
    free(j->group);
    free(j);
}

typedef struct {
    cJSON *arr;
    lloco_store *store;
} list_ctx;

typedef struct {
    const char *adapter;
    cJSON *groups;
} groups_ctx;

static int collect_group(void *ctx, const char *group, const char *adapter) {
    groups_ctx *g = ctx;
    if (!strcmp(adapter, g->adapter)) cJSON_AddItemToArray(g->groups, cJSON_CreateString(group));
    return 0;
}

static cJSON *adapter_json(lloco_store *store, const lloco_bank_entry *e) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "name", e->name);
    cJSON_AddStringToObject(a, "object", "adapter");
    cJSON_AddNumberToObject(a, "file_bytes", (double)e->file_bytes);
    cJSON_AddBoolToObject(a, "resident", e->resident);
    cJSON_AddBoolToObject(a, "loading", e->loading);
    cJSON_AddNumberToObject(a, "pins", e->pins);
    if (e->info) {
        cJSON_AddNumberToObject(a, "rank", e->info->max_rank);
        cJSON_AddNumberToObject(a, "lora_alpha", (double)e->info->lora_alpha);
        cJSON_AddNumberToObject(a, "bytes", (double)e->info->bytes);
        cJSON *t = cJSON_AddArrayToObject(a, "targets");
        for (int p = 0; p < LLOCO_PROJ_COUNT; p++)
            if (e->info->targets & (1u << p))
                cJSON_AddItemToArray(t, cJSON_CreateString(lloco_proj_name((lloco_proj)p)));
    }
    if (e->error) cJSON_AddStringToObject(a, "error", e->error);
    groups_ctx g = {.adapter = e->name, .groups = cJSON_AddArrayToObject(a, "groups")};
    lloco_store_foreach_group(store, collect_group, &g);
    return a;
}

static int list_one(void *user, const lloco_bank_entry *e) {
    list_ctx *l = user;
    cJSON_AddItemToArray(l->arr, adapter_json(l->store, e));
    return 0;
}

static int no_bank(void) {
    return lloco_error(LLOCO_ERR_NOTFOUND, "this server has no adapters directory");
}

static int job_list_adapters(job *j) {
    lloco_bank *b = lloco_engine_bank(j->srv->eng);
    j->out = cJSON_CreateObject();
    cJSON_AddStringToObject(j->out, "object", "list");
    list_ctx l = {.arr = cJSON_AddArrayToObject(j->out, "data"),
                  .store = lloco_engine_store(j->srv->eng)};
    return b ? lloco_bank_foreach(b, list_one, &l) : 0;
}

typedef struct {
    const char *name;
    lloco_store *store;
    cJSON *found;
} find_ctx;

static int find_one(void *user, const lloco_bank_entry *e) {
    find_ctx *f = user;
    if (!strcmp(e->name, f->name)) f->found = adapter_json(f->store, e);
    return 0;
}

/* POST /v1/adapters {"name": N, "group": G}: loads N (waits for it) and,
 * with a group, assigns it. */
static int job_load_adapter(job *j) {
    lloco_bank *b = lloco_engine_bank(j->srv->eng);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j->in, "name");
    const cJSON *group = cJSON_GetObjectItemCaseSensitive(j->in, "group");
    if (!cJSON_IsString(name)) return lloco_error(LLOCO_ERR_INVAL, "'name' (a string) is required");
    if (group && !cJSON_IsNull(group) && !cJSON_IsString(group))
        return lloco_error(LLOCO_ERR_INVAL, "'group' must be a string");
    if (!b) return no_bank();
    const lloco_adapter_view *v;
    int rc = lloco_bank_acquire_wait(b, name->valuestring, &v);
    if (rc) return rc;
    lloco_bank_release(b, name->valuestring);
    lloco_store *st = lloco_engine_store(j->srv->eng);
    if (cJSON_IsString(group) && (rc = lloco_store_group_set(st, group->valuestring, name->valuestring)))
        return rc;
    find_ctx f = {.name = name->valuestring, .store = st};
    rc = lloco_bank_foreach(b, find_one, &f);
    j->out = f.found;
    return rc;
}

/* DELETE /v1/adapters/NAME: unloads it; ?group=G unassigns G instead. */
static int job_delete_adapter(job *j) {
    lloco_bank *b = lloco_engine_bank(j->srv->eng);
    lloco_store *st = lloco_engine_store(j->srv->eng);
    if (j->group) {
        char cur[256];
        int rc = lloco_store_group_get(st, j->group, cur, sizeof cur);
        if (rc == LLOCO_ERR_NOTFOUND || (!rc && strcmp(cur, j->name)))
            return lloco_error(LLOCO_ERR_NOTFOUND, "group '%s' is not assigned to adapter '%s'",
                               j->group, j->name);
        if (!rc) rc = lloco_store_group_unset(st, j->group);
        if (rc) return rc;
    } else {
        if (!b) return no_bank();
        find_ctx f = {.name = j->name, .store = st};
        int rc = lloco_bank_foreach(b, find_one, &f);
        if (!rc && !f.found) rc = lloco_error(LLOCO_ERR_NOTFOUND, "no adapter '%s'", j->name);
        cJSON_Delete(f.found);
        if (!rc) rc = lloco_bank_unload(b, j->name);
        if (rc) return rc;
    }
    j->out = cJSON_CreateObject();
    cJSON_AddStringToObject(j->out, "name", j->name);
    cJSON_AddBoolToObject(j->out, "deleted", 1);
    if (j->group) cJSON_AddStringToObject(j->out, "group", j->group);
    return 0;
}

static int job_models(job *j) {
    j->out = cJSON_CreateObject();
    cJSON_AddStringToObject(j->out, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(j->out, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", lloco_engine_model_name(j->srv->eng));
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "lloco");
    cJSON_AddItemToArray(data, m);
    lloco_bank *b = lloco_engine_bank(j->srv->eng);
    if (!b) return 0;
    /* adapters answer as models too ("model": NAME selects one) */
    cJSON *tmp = cJSON_CreateArray();
    list_ctx l = {.arr = tmp, .store = lloco_engine_store(j->srv->eng)};
    int rc = lloco_bank_foreach(b, list_one, &l);
    const cJSON *a;
    cJSON_ArrayForEach(a, tmp) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "id", cJSON_GetObjectItem(a, "name")->valuestring);
        cJSON_AddStringToObject(e, "object", "model");
        cJSON_AddNumberToObject(e, "created", 0);
        cJSON_AddStringToObject(e, "owned_by", "lloco");
        cJSON_AddStringToObject(e, "parent", lloco_engine_model_name(j->srv->eng));
        cJSON_AddItemToArray(data, e);
    }
    cJSON_Delete(tmp);
    return rc;
}

/* POST /v1/retrieve {"query", "group", "doc_ids", "top_k"}: the chunks a
 * question would use, with their text. */
static int job_retrieve(job *j) {
    api_req r = {.srv = j->srv, .body = j->in};
    bad_req b = {0};
    const char *question;
    double k = 0;
    int rc = get_string(j->in, "query", &question, &b);
    if (!rc && !question) rc = get_string(j->in, "question", &question, &b);
    if (!rc) rc = get_string(j->in, "group", &r.q.group, &b);
    if (!rc) rc = get_strings(j->in, "doc_ids", r.doc_ids, MAX_DOC_IDS, &r.q.n_doc_ids, &b);
    if (!rc) rc = get_number(j->in, "top_k", 1, 64, 1, &k, &b);
    if (rc) return lloco_error(LLOCO_ERR_INVAL, "%s", b.msg);
    if (!question) return lloco_error(LLOCO_ERR_INVAL, "'query' (a string) is required");
    r.q.question = question;
    r.q.doc_ids = r.doc_ids;
    r.q.top_k = (int)k;
    r.q.mode = LLOCO_MODE_TEXT;
    r.q.raw = 1;
    rc = lloco_engine_prepare(j->srv->eng, &r.q, &r.prep);
    if (rc) return rc;
    j->out = cJSON_CreateObject();
    cJSON_AddStringToObject(j->out, "object", "list");
    cJSON *lo = lloco_object(&r, 1);
    cJSON_AddItemToObject(j->out, "data", cJSON_DetachItemFromObject(lo, "chunks"));
    cJSON_AddItemToObject(j->out, "group", cJSON_DetachItemFromObject(lo, "group"));
    cJSON_AddItemToObject(j->out, "adapter", cJSON_DetachItemFromObject(lo, "adapter"));
    cJSON_AddNumberToObject(j->out, "retrieve_s", r.prep.t_retrieve);
    cJSON_Delete(lo);
    lloco_prepared_free(&r.prep);
    return 0;
}

/* ---- metrics ------------------------------------------------------------------- */

static void histogram(lloco_buf *o, const char *name, const char *help, const uint64_t *buckets,
                      double sum, uint64_t count) {
    const double *bounds = lloco_sched_bucket_bounds();
    lloco_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < LLOCO_SCHED_N_BUCKETS; i++) {
        cum += buckets[i];
        if (i == LLOCO_SCHED_N_BUCKETS - 1) lloco_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        else lloco_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    lloco_buf_printf(o, "%s_sum %.6f\n%s_count %llu\n", name, sum, name, (unsigned long long)count);
}

static void handle_metrics(lloco_server *s, lloco_http_req *h) {
    lloco_sched_stats st;
    lloco_sched_stats_get(s->sched, &st);
    lloco_buf o = {0};
    lloco_buf_printf(&o, "# HELP lloco_http_requests_total HTTP responses sent, by status\n"
             "# TYPE lloco_http_requests_total counter\n");
    for (int i = 0; i < N_STATUS && s->by_status[i].status; i++)
        lloco_buf_printf(&o, "lloco_http_requests_total{status=\"%d\"} %llu\n", s->by_status[i].status,
             (unsigned long long)s->by_status[i].n);
    lloco_buf_printf(&o, "# HELP lloco_client_disconnects_total requests whose client went away before the answer\n"
             "# TYPE lloco_client_disconnects_total counter\nlloco_client_disconnects_total %llu\n",
         (unsigned long long)s->disconnects);
    lloco_buf_printf(&o, "# HELP lloco_prompt_tokens_total input positions prefilled\n"
             "# TYPE lloco_prompt_tokens_total counter\nlloco_prompt_tokens_total %llu\n",
         (unsigned long long)st.prompt_tokens);
    lloco_buf_printf(&o, "# HELP lloco_generated_tokens_total tokens generated\n"
             "# TYPE lloco_generated_tokens_total counter\nlloco_generated_tokens_total %llu\n",
         (unsigned long long)st.generated_tokens);
    lloco_buf_printf(&o, "# HELP lloco_sequences_total sequences ended, by outcome\n"
             "# TYPE lloco_sequences_total counter\n"
             "lloco_sequences_total{outcome=\"finished\"} %llu\n"
             "lloco_sequences_total{outcome=\"cancelled\"} %llu\n"
             "lloco_sequences_total{outcome=\"failed\"} %llu\n",
         (unsigned long long)st.finished, (unsigned long long)st.cancelled,
         (unsigned long long)st.failed);
    lloco_buf_printf(&o, "# HELP lloco_decode_steps_total forward passes of the scheduler\n"
             "# TYPE lloco_decode_steps_total counter\nlloco_decode_steps_total %llu\n",
         (unsigned long long)st.steps);
    histogram(&o, "lloco_time_to_first_token_seconds", "from arrival at the scheduler to the first token",
              st.ttft_buckets, st.ttft_sum, st.ttft_count);
    histogram(&o, "lloco_time_per_output_token_seconds", "time between consecutive tokens of a sequence",
              st.itl_buckets, st.itl_sum, st.itl_count);
    lloco_bank *b = lloco_engine_bank(s->eng);
    lloco_buf_printf(&o,
         "# HELP lloco_queue_depth requests waiting for the scheduler\n# TYPE lloco_queue_depth gauge\n"
         "lloco_queue_depth %d\n"
         "# HELP lloco_running_sequences sequences in the running batch\n# TYPE lloco_running_sequences gauge\n"
         "lloco_running_sequences %d\n"
         "# HELP lloco_batch_size sequences in the last step\n# TYPE lloco_batch_size gauge\n"
         "lloco_batch_size %d\n"
         "# HELP lloco_batch_tokens positions in the last step\n# TYPE lloco_batch_tokens gauge\n"
         "lloco_batch_tokens %d\n"
         "# HELP lloco_kv_reserved_bytes KV cache reserved by running sequences\n# TYPE lloco_kv_reserved_bytes gauge\n"
         "lloco_kv_reserved_bytes %zu\n"
         "# HELP lloco_kv_budget_bytes KV cache budget\n# TYPE lloco_kv_budget_bytes gauge\n"
         "lloco_kv_budget_bytes %zu\n"
         "# HELP lloco_active_requests HTTP requests being answered\n# TYPE lloco_active_requests gauge\n"
         "lloco_active_requests %d\n"
         "# HELP lloco_adapters_resident LoRA adapters in memory\n# TYPE lloco_adapters_resident gauge\n"
         "lloco_adapters_resident %d\n"
         "# HELP lloco_adapters_resident_bytes memory held by resident adapters\n# TYPE lloco_adapters_resident_bytes gauge\n"
         "lloco_adapters_resident_bytes %zu\n",
         st.queued, st.running, st.last_batch_seqs, st.last_batch_tokens, st.kv_reserved_bytes,
         st.kv_budget_bytes, lloco_http_n_active(s->http), b ? lloco_bank_n_resident(b) : 0,
         b ? lloco_bank_resident_bytes(b) : (size_t)0);
    if (o.data) lloco_http_respond(h, 200, "text/plain; version=0.0.4", o.data, o.len, NULL);
    else lloco_http_respond_error(h, 500, "server_error", NULL, NULL, "out of memory");
    lloco_buf_free(&o);
}

/* ---- routing ---------------------------------------------------------------------- */

static void handler(void *user, lloco_http_req *h) {
    lloco_server *s = user;
    const char *m = lloco_http_method(h), *path = lloco_http_path(h);
    const int get = !strcmp(m, "GET") || !strcmp(m, "HEAD"), post = !strcmp(m, "POST");
    if (!strcmp(path, "/health") && get) {
        if (s->draining) respond_err(h, 503, "shutting_down", NULL, "the server is shutting down");
        else
            lloco_http_respond(h, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
        return;
    }
    if (!strcmp(path, "/metrics") && get) {
        handle_metrics(s, h);
        return;
    }
    if (s->draining) {
        respond_err(h, 503, "shutting_down", "Connection: close\r\n", "the server is shutting down");
        return;
    }
    if (!strcmp(path, "/v1/chat/completions") && post) handle_generation(s, h, KIND_CHAT);
    else if (!strcmp(path, "/v1/completions") && post) handle_generation(s, h, KIND_COMPLETION);
    else if (!strcmp(path, "/v1/models") && get) run_job(s, h, job_models, NULL, 0);
    else if (!strcmp(path, "/v1/retrieve") && post) run_job(s, h, job_retrieve, NULL, 1);
    else if (!strcmp(path, "/v1/adapters") && get) run_job(s, h, job_list_adapters, NULL, 0);
    else if (!strcmp(path, "/v1/adapters") && post) run_job(s, h, job_load_adapter, NULL, 1);
    else if (!strncmp(path, "/v1/adapters/", 13) && path[13] && !strcmp(m, "DELETE"))
        run_job(s, h, job_delete_adapter, path + 13, 0);
    else {
        static const char *const known[] = {"/health", "/metrics", "/v1/chat/completions",
                                            "/v1/completions", "/v1/models", "/v1/retrieve",
                                            "/v1/adapters"};
        int k = !strncmp(path, "/v1/adapters/", 13);
        for (size_t i = 0; i < sizeof known / sizeof *known; i++) k |= !strcmp(path, known[i]);
        char msg[300];
        snprintf(msg, sizeof msg, k ? "method %s is not allowed on %s" : "no route %s %s", m, path);
        respond_err(h, k ? 405 : 404, k ? "method_not_allowed" : "not_found", NULL, msg);
    }
}

/* ---- shutdown ----------------------------------------------------------------------- */

static void on_http_closed(void *user) {
    lloco_server *s = user;
    uv_close((uv_handle_t *)&s->async, NULL);
    uv_close((uv_handle_t *)&s->drain, NULL);
    for (int i = 0; i < 2; i++)
        if (s->p.handle_signals) uv_close((uv_handle_t *)&s->sig[i], NULL);
}

/* Every 50 ms while draining: close once no generation is live and no
 * other request is being answered. Past the grace period live generations
 * are cancelled; their on_done comes within one decode step, and the loop
 * waits for it (the scheduler holds pointers to them until then). */
static void drain_tick(uv_timer_t *t) {
    lloco_server *s = t->data;
    const int late = lloco_time_now() >= s->drain_deadline;
    if (s->live) {
        if (late)
            for (api_req *r = s->live; r; r = r->live_next)
                if (r->submitted && !r->cancel_sent) {
                    r->cancel_sent = 1;
                    lloco_sched_cancel(s->sched, r->sched_id);
                }
        return;
    }
    if (!late && lloco_http_n_active(s->http) > 0) return;
    if (s->closing) return;
    s->closing = 1;
    uv_timer_stop(t);
    lloco_http_close(s->http, on_http_closed, s);
}

static void begin_shutdown(lloco_server *s) {
    if (s->draining) return;
    s->draining = 1;
    lloco_log(LLOCO_LOG_INFO, "shutting down: finishing in-flight requests (up to %d ms)",
              s->p.shutdown_grace_ms);
    lloco_http_stop_accepting(s->http);
    s->drain_deadline = lloco_time_now() + s->p.shutdown_grace_ms / 1000.0;
    uv_timer_start(&s->drain, drain_tick, 0, 50);
}

static void on_signal(uv_signal_t *h, int signum) {
    (void)signum;
    begin_shutdown(h->data);
}

void lloco_server_shutdown(lloco_server *s) {
    atomic_store(&s->shutdown_asked, 1);
    uv_async_send(&s->async);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

void lloco_server_params_default(lloco_server_params *p) {
    *p = (lloco_server_params){.host = "127.0.0.1", .port = 8080, .max_header_bytes = 16384,
                               .max_body_bytes = 1 << 20, .request_timeout_ms = 10000,
                               .idle_timeout_ms = 30000, .max_tokens_cap = 2048,
                               .default_max_tokens = 256, .shutdown_grace_ms = 30000};
}

int lloco_server_create(lloco_engine *e, lloco_sched *sc, const lloco_server_params *p,
                        lloco_server **out) {
    *out = NULL;
    lloco_server *s = calloc(1, sizeof *s);
    if (!s) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    s->eng = e;
    s->sched = sc;
    lloco_server_params_default(&s->p);
    if (p) s->p = *p;
    if (s->p.max_tokens_cap <= 0) s->p.max_tokens_cap = 2048;
    if (s->p.default_max_tokens <= 0 || s->p.default_max_tokens > s->p.max_tokens_cap)
        s->p.default_max_tokens = s->p.max_tokens_cap < 256 ? s->p.max_tokens_cap : 256;
    if (s->p.shutdown_grace_ms < 0) s->p.shutdown_grace_ms = 0;
    pthread_mutex_init(&s->ev_mu, NULL);
    int rc = uv_loop_init(&s->loop);
    if (rc) {
        pthread_mutex_destroy(&s->ev_mu);
        free(s);
        return lloco_error(LLOCO_ERR_IO, "event loop: %s", uv_strerror(rc));
    }
    uv_async_init(&s->loop, &s->async, on_async);
    s->async.data = s;
    uv_timer_init(&s->loop, &s->drain);
    s->drain.data = s;
    if (s->p.handle_signals) {
        const int sigs[2] = {SIGINT, SIGTERM};
        for (int i = 0; i < 2; i++) {
            uv_signal_init(&s->loop, &s->sig[i]);
            s->sig[i].data = s;
            uv_signal_start(&s->sig[i], on_signal, sigs[i]);
            uv_unref((uv_handle_t *)&s->sig[i]);
        }
    }
    static const char *const public_paths[] = {"/health", NULL};
    lloco_http_params hp;
    lloco_http_params_default(&hp);
    hp.host = s->p.host ? s->p.host : "127.0.0.1";
    hp.port = s->p.port;
    if (s->p.max_header_bytes) hp.max_header_bytes = s->p.max_header_bytes;
    if (s->p.max_body_bytes) hp.max_body_bytes = s->p.max_body_bytes;
    if (s->p.request_timeout_ms > 0) hp.header_timeout_ms = s->p.request_timeout_ms;
    if (s->p.idle_timeout_ms > 0) hp.idle_timeout_ms = s->p.idle_timeout_ms;
    hp.bearer_token = s->p.api_key;
    hp.public_paths = public_paths;
    hp.handler = handler;
    hp.on_status = count_status;
    hp.user = s;
    rc = lloco_http_start(&s->loop, &hp, &s->http);
    if (rc) {
        on_http_closed(s);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        pthread_mutex_destroy(&s->ev_mu);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int lloco_server_port(const lloco_server *s) { return lloco_http_port(s->http); }

int lloco_server_run(lloco_server *s) {
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return 0;
}

void lloco_server_free(lloco_server *s) {
    if (!s) return;
    if (!s->closing) { /* never ran to its end: close what is open */
        s->closing = 1;
        lloco_http_close(s->http, on_http_closed, s);
        uv_run(&s->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&s->loop);
    pthread_mutex_destroy(&s->ev_mu);
    free(s);
}
