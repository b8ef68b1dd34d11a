/* The OpenAI-compatible API end to end, in process: a store ingested from
 * the tiny fixtures (three groups, two with adapters), the real engine,
 * scheduler and HTTP server on a thread, and blocking socket clients.
 * Answers in every mode, streamed and not; batched answers equal lone ones;
 * error statuses and bodies; disconnects; graceful shutdown; adapters.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "ingest/ingest.h"
#include "server/server.h"
#include "test.h"

#define MODEL "tiny-llama/hf"
#define EMBEDDER "embedder/tiny"
#define ADAPTER_ALPHA "r8-qkvo"
#define ADAPTER_BETA "r4-qv-layer1-fifo"

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the store (built once per process) ------------------------------------ */

static const struct {
    const char *id, *group, *text;
} DOCS[] = {
    {"alpha-rivers", "alpha",
     "The river Alder rises in the northern hills and runs south past the old mill. "
     "Its water turns three wheels before it reaches the stone bridge at Marrow. "
     "In spring the Alder floods the meadows and the ferry stops."},
    {"alpha-mills", "alpha",
     "The mill at Alder Ford ground oats and barley for two hundred years. "
     "Its last miller, Ada Crane, kept a ledger of every sack and every storm. "
     "The wheel was rebuilt in oak after the great flood."},
    {"beta-stars", "beta",
     "Betelgeuse is a red supergiant in Orion, bright and variable. "
     "Astronomers watched it dim in the winter of the great dimming, "
     "when dust it had thrown off hid part of its face from telescopes."},
    {"beta-comets", "beta",
     "A comet is a ball of ice and dust; near the sun it grows a coma and a tail. "
     "The tail always points away from the sun, pushed by light and by the solar wind. "
     "Short-period comets return within two centuries."},
    {"plain-bread", NULL,
     "Bread needs flour, water, salt and yeast. Knead the dough for ten minutes, "
     "let it rise for an hour, shape it, let it rise again and bake it hot "
     "until the crust sounds hollow when tapped."},
    {"plain-tea", NULL,
     "Green tea is steeped in water below boiling for two or three minutes; black tea "
     "takes boiling water and four minutes. Milk goes in after, never before, "
     "whatever the old arguments say."},
};
#define N_DOCS ((int)(sizeof DOCS / sizeof *DOCS))

static char store_dir[64];

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s, (void)flag, (void)f;
    return remove(p);
}

static void store_remove(void) {
    if (store_dir[0]) nftw(store_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int build_store(void) {
    snprintf(store_dir, sizeof store_dir, "/tmp/lloco-test-api-XXXXXX");
    if (!mkdtemp(store_dir)) {
        store_dir[0] = 0;
        return lloco_error(LLOCO_ERR_IO, "mkdtemp failed");
    }
    atexit(store_remove);
    lloco_model *m = NULL;
    lloco_decoder *d = NULL;
    lloco_compressor *c = NULL;
    lloco_embedder *emb = NULL;
    lloco_store *st = NULL;
    lloco_retriever *ret = NULL;
    lloco_ingester *ing = NULL;
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = 2;
    lloco_compress_params cp;
    lloco_compress_params_default(&cp, LLOCO_COMPRESS_AUTOCOMPRESSOR);
    cp.segment_tokens = 32;
    cp.n_summary = 4;
    lloco_store_fingerprint fp;
    int rc = lloco_model_open(lloco_test_fixture(MODEL), &m);
    if (!rc) rc = lloco_decoder_create(m, &dp, &d);
    if (!rc) rc = lloco_compressor_create(d, &cp, &c);
    if (!rc) rc = lloco_compressor_fingerprint(c, &fp);
    if (!rc) rc = lloco_embedder_open(lloco_test_fixture(EMBEDDER), lloco_decoder_backend(d), &emb);
    if (!rc) {
        snprintf(fp.embedder_hash, sizeof fp.embedder_hash, "%s", lloco_embedder_hash(emb));
        fp.embed_dim = lloco_embedder_dim(emb);
        rc = lloco_store_open(store_dir, &fp, LLOCO_STORE_CREATE, &st);
    }
    if (!rc) rc = lloco_retriever_open(st, NULL, &ret);
    if (!rc) rc = lloco_ingester_create(c, emb, st, ret, "", NULL, &ing);
    for (int i = 0; !rc && i < N_DOCS; i++) {
        lloco_doc_src ds = {.id = DOCS[i].id,
                            .title = DOCS[i].id,
                            .group = DOCS[i].group,
                            .text = DOCS[i].text,
                            .len = strlen(DOCS[i].text),
                            .where = DOCS[i].id};
        rc = lloco_ingest_doc(ing, &ds);
    }
    if (!rc) rc = lloco_ingest_finish(ing);
    if (!rc) rc = lloco_store_group_set(st, "alpha", ADAPTER_ALPHA);
    if (!rc) rc = lloco_store_group_set(st, "beta", ADAPTER_BETA);
    lloco_ingester_free(ing);
    lloco_retriever_close(ret);
    lloco_store_close(st);
    lloco_embedder_close(emb);
    lloco_compressor_free(c);
    lloco_decoder_free(d);
    lloco_model_close(m);
    return rc;
}

/* ---- the server on its thread ------------------------------------------------ */

typedef struct {
    lloco_engine *e;
    lloco_sched *s;
    lloco_server *srv;
    pthread_t thread;
    int port, started;
    atomic_int run_done;
} rig;

static void *run_main(void *arg) {
    rig *g = arg;
    lloco_server_run(g->srv);
    atomic_store(&g->run_done, 1);
    return NULL;
}

static int rig_open(rig *g, const lloco_sched_params *sp, const lloco_server_params *pp) {
    static int built, build_rc;
    memset(g, 0, sizeof *g);
    if (!built) {
        built = 1;
        build_rc = build_store();
    }
    if (build_rc) return build_rc;
    lloco_engine_params ep = {.store_dir = store_dir,
                              .model_path = lloco_test_fixture(MODEL),
                              .embedder_dir = lloco_test_fixture(EMBEDDER),
                              .adapters_dir = lloco_test_fixture("lora"),
                              .n_threads = 2};
    lloco_server_params p;
    lloco_server_params_default(&p);
    if (pp) p = *pp;
    p.port = 0;
    p.handle_signals = 0;
    int rc = lloco_engine_open(&ep, &g->e);
    /* earlier cases may have moved the groups */
    if (!rc) rc = lloco_store_group_set(lloco_engine_store(g->e), "alpha", ADAPTER_ALPHA);
    if (!rc) rc = lloco_store_group_set(lloco_engine_store(g->e), "beta", ADAPTER_BETA);
    if (!rc) rc = lloco_sched_create(g->e, sp, &g->s);
    if (!rc) rc = lloco_server_create(g->e, g->s, &p, &g->srv);
    if (!rc) {
        g->port = lloco_server_port(g->srv);
        rc = pthread_create(&g->thread, NULL, run_main, g) ? LLOCO_ERR_IO : 0;
        g->started = !rc;
    }
    return rc;
}

/* Waits up to ms for lloco_server_run to return; 1 if it did. */
static int wait_run_done(rig *g, int ms) {
    for (int i = 0; i < ms / 10 && !atomic_load(&g->run_done); i++) sleep_ms(10);
    return atomic_load(&g->run_done);
}

static void rig_close(rig *g) {
    if (g->started) {
        lloco_server_shutdown(g->srv);
        CHECKF(wait_run_done(g, 20000), "lloco_server_run did not return after shutdown");
        pthread_join(g->thread, NULL);
    }
    lloco_server_free(g->srv);
    lloco_sched_free(g->s);
    lloco_engine_close(g->e);
}

/* ---- requests ------------------------------------------------------------------ */

/* One answer, streamed or not. events holds every parsed JSON body (one
 * for a plain answer); the pointers below borrow from it. */
typedef struct {
    int status;
    char content_type[64], retry_after[16];
    cJSON *events;
    const cJSON *final; /* the object with "lloco" (or the error body) */
    const cJSON *usage;
    char *text; /* content or text; streamed: the deltas joined */
    size_t len;
    char finish[16];
    char id[64];
    int n_events, done, role_first, after_done, bad_envelope;
} answer;

static void answer_free(answer *a) {
    cJSON_Delete(a->events);
    free(a->text);
    memset(a, 0, sizeof *a);
}

static void append(answer *a, const char *s) {
    size_t n = strlen(s);
    a->text = realloc(a->text, a->len + n + 1);
    memcpy(a->text + a->len, s, n + 1);
    a->len += n;
}

/* The text of choices[0] (message.content, delta.content or text), its
 * finish_reason copied into a->finish when not null. */
static void take_choice(answer *a, const cJSON *j) {
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    if (!ch) return;
    const cJSON *m = cJSON_GetObjectItem(ch, "message");
    if (!m) m = cJSON_GetObjectItem(ch, "delta");
    const cJSON *t = m ? cJSON_GetObjectItem(m, "content") : cJSON_GetObjectItem(ch, "text");
    if (cJSON_IsString(t)) append(a, t->valuestring);
    if (m && a->n_events == 1 && cJSON_IsString(cJSON_GetObjectItem(m, "role")))
        a->role_first = !strcmp(cJSON_GetObjectItem(m, "role")->valuestring, "assistant");
    const cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
    if (cJSON_IsString(f)) snprintf(a->finish, sizeof a->finish, "%s", f->valuestring);
}

static void take_event(answer *a, cJSON *j) {
    cJSON_AddItemToArray(a->events, j);
    a->n_events++;
    const cJSON *id = cJSON_GetObjectItem(j, "id");
    if (!cJSON_IsString(id)) a->bad_envelope++;
    else if (!a->id[0]) snprintf(a->id, sizeof a->id, "%s", id->valuestring);
    else if (strcmp(a->id, id->valuestring)) a->bad_envelope++;
    if (!cJSON_IsString(cJSON_GetObjectItem(j, "object")) ||
        !cJSON_IsString(cJSON_GetObjectItem(j, "model")) ||
        !cJSON_IsNumber(cJSON_GetObjectItem(j, "created")))
        a->bad_envelope++;
    take_choice(a, j);
    if (cJSON_GetObjectItem(j, "lloco")) a->final = j;
    if (cJSON_IsObject(cJSON_GetObjectItem(j, "usage"))) a->usage = cJSON_GetObjectItem(j, "usage");
}

/* POSTs (or sends `method`) body to path and reads the answer: the
 * status, or -1 when the exchange failed. */
static int call(int port, const char *method, const char *path, const char *headers,
                const char *body, answer *a) {
    memset(a, 0, sizeof *a);
    a->events = cJSON_CreateArray();
    a->text = calloc(1, 1);
    client *c = malloc(sizeof *c);
    resp r = {0};
    int ok = 0;
    if (cl_open(c, port, 0) == 0) {
        cl_timeout(c, 60000);
        size_t bl = body ? strlen(body) : 0;
        char head[1024];
        int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: x\r\n%s", method, path,
                          headers ? headers : "");
        if (body)
            hn += snprintf(head + hn, sizeof head - (size_t)hn,
                           "Content-Type: application/json\r\nContent-Length: %zu\r\n", bl);
        hn += snprintf(head + hn, sizeof head - (size_t)hn, "\r\n");
        ok = !cl_send_n(c, head, (size_t)hn) && (!body || !cl_send_n(c, body, bl)) &&
             !read_resp(c, &r, 1);
    }
    if (ok) {
        a->status = r.status;
        resp_header(&r, "content-type", a->content_type, sizeof a->content_type);
        resp_header(&r, "retry-after", a->retry_after, sizeof a->retry_after);
        if (!strcmp(a->content_type, "text/event-stream")) {
            sse_reader s = {0};
            char *data;
            int k;
            while ((k = sse_next(c, &s, &data)) == 1) {
                if (a->done) a->after_done++;
                if (!strcmp(data, "[DONE]")) a->done = 1;
                else {
                    cJSON *j = cJSON_Parse(data);
                    if (j) take_event(a, j);
                    else a->bad_envelope++;
                }
                free(data);
            }
            sse_free(&s);
            ok = k == 0;
        } else if ((ok = !read_body(c, &r))) {
            cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
            if (j) {
                take_event(a, j);
                if (!a->final) a->final = j;
            }
        }
    }
    resp_free(&r);
    cl_close(c);
    free(c);
    return ok ? a->status : -1;
}

static int post(int port, const char *path, const char *body, answer *a) {
    return call(port, "POST", path, NULL, body, a);
}

static const char *path_of(int chat) { return chat ? "/v1/chat/completions" : "/v1/completions"; }

/* A generation request body: a chat or a completion of q. group NULL: none
 * given; extra: more members ("" or starting with a comma). */
static char *gen_body(int chat, const char *q, const char *mode, const char *group, int max_tokens,
                      int stream, const char *extra) {
    char *b = malloc(2048 + strlen(q));
    char g[128] = "";
    if (group) snprintf(g, sizeof g, ",\"group\":\"%s\"", group);
    if (chat) sprintf(b, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]", q);
    else sprintf(b, "{\"prompt\":\"%s\"", q);
    sprintf(b + strlen(b),
            ",\"mode\":\"%s\"%s,\"max_tokens\":%d,\"temperature\":0,\"stream\":%s%s}", mode, g,
            max_tokens, stream ? "true" : "false", extra ? extra : "");
    return b;
}

/* ---- JSON checks ------------------------------------------------------------- */

static double num(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItem(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static const char *str(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItem(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* JSON strings must be UTF-8; the tiny model emits arbitrary bytes. */
static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = lloco_utf8_decode((const uint8_t *)s + i, n - i, NULL))) return 0;
    return 1;
}

/* For printing: "(null)" for NULL. */
static const char *S(const char *s) { return s ? s : "(null)"; }

static int str_is(const cJSON *o, const char *name, const char *want) {
    const char *s = str(o, name);
    return want ? s && !strcmp(s, want) : cJSON_IsNull(cJSON_GetObjectItem(o, name));
}

/* The OpenAI error body: {"error": {"message", "type", "param", "code"}}. */
static void check_error(const answer *a, int status, const char *code, const char *what) {
    CHECKF(a->status == status, "%s: status %d, expected %d (%s)", what, a->status, status,
           a->text);
    const cJSON *e = a->final ? cJSON_GetObjectItem(a->final, "error") : NULL;
    CHECKF(cJSON_IsObject(e), "%s: no error object", what);
    if (!e) return;
    const char *msg = str(e, "message");
    CHECKF(msg && msg[0], "%s: error.message missing", what);
    CHECKF(str(e, "type") != NULL, "%s: error.type missing", what);
    CHECKF(cJSON_GetObjectItem(e, "param") != NULL, "%s: error.param missing", what);
    CHECKF(cJSON_GetObjectItem(e, "code") != NULL, "%s: error.code missing", what);
    if (code)
        CHECKF(str_is(e, "code", code), "%s: code %s, expected %s (%s)", what,
               str(e, "code") ? str(e, "code") : "null", code, msg ? msg : "");
    CHECKF(!strcmp(a->content_type, "application/json"), "%s: content-type %s", what,
           a->content_type);
}

/* A value from /metrics: `name` with its labels, e.g.
 * lloco_sequences_total{outcome="cancelled"}; -1 if absent. */
static double metric(int port, const char *name) {
    resp r;
    double v = -1;
    if (http_call(port, "GET", "/metrics", NULL, NULL, &r) == 200) {
        size_t n = strlen(name);
        for (const char *l = r.body; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
            if (!strncmp(l, name, n) && l[n] == ' ') {
                v = strtod(l + n + 1, NULL);
                break;
            }
    }
    resp_free(&r);
    return v;
}

/* Polls a metric until it equals want (up to ms); its last value. */
static double metric_until(int port, const char *name, double want, int ms) {
    double v = metric(port, name);
    for (int i = 0; i < ms / 20 && v != want; i++) {
        sleep_ms(20);
        v = metric(port, name);
    }
    return v;
}

/* ---- 1. answers in every mode ----------------------------------------------- */

static const char *const MODES[] = {"compressed", "text", "full", "none"};

/* What each mode asks in which group (NULL: the best hit's group). */
static const char *mode_group(int m) {
    static const char *const g[] = {"alpha", "beta", NULL, "alpha"};
    return g[m];
}

static const char *adapter_of(const char *group) {
    if (!group) return NULL;
    if (!strcmp(group, "alpha")) return ADAPTER_ALPHA;
    if (!strcmp(group, "beta")) return ADAPTER_BETA;
    return NULL;
}

static void check_lloco(const answer *a, int m, const char *what) {
    const cJSON *lo = a->final ? cJSON_GetObjectItem(a->final, "lloco") : NULL;
    CHECKF(cJSON_IsObject(lo), "%s: no lloco object", what);
    if (!lo) return;
    CHECKF(str_is(lo, "mode", MODES[m]), "%s: mode %s", what, S(str(lo, "mode")));
    const char *group = str(lo, "group");
    if (mode_group(m))
        CHECKF(group && !strcmp(group, mode_group(m)), "%s: group %s", what, S(group));
    else CHECKF(group != NULL, "%s: no group", what);
    CHECKF(str_is(lo, "adapter", adapter_of(group)), "%s: adapter %s for group %s", what,
           S(str(lo, "adapter")), S(group));
    const char *model = a->final ? str(a->final, "model") : NULL;
    if (adapter_of(group))
        CHECKF(model && !strcmp(model, adapter_of(group)), "%s: model %s", what, S(model));
    const cJSON *chunks = cJSON_GetObjectItem(lo, "chunks");
    CHECKF(cJSON_IsArray(chunks), "%s: chunks", what);
    const int n = cJSON_GetArraySize(chunks);
    if (m == 3) CHECKF(n == 0, "%s: %d chunks in mode none", what, n);
    else CHECKF(n > 0, "%s: no chunks", what);
    const char *first_doc = NULL;
    const cJSON *c;
    cJSON_ArrayForEach(c, chunks) {
        const char *doc = str(c, "doc_id");
        CHECKF(doc != NULL && num(c, "ordinal") >= 0 &&
                   cJSON_IsNumber(cJSON_GetObjectItem(c, "score")),
               "%s: chunk without doc_id/ordinal/score", what);
        if (!doc) continue;
        if (group && mode_group(m))
            CHECKF(!strncmp(doc, group, strlen(group)), "%s: chunk of %s in group %s", what, doc,
                   S(group));
        if (!first_doc) first_doc = doc;
        if (m == 2)
            CHECKF(!strcmp(doc, first_doc), "%s: full mode mixes %s and %s", what, first_doc, doc);
        CHECKF(cJSON_GetObjectItem(c, "text") == NULL, "%s: chunk text in an answer", what);
    }
    const double in = num(lo, "input_positions"), ctx = num(lo, "context_positions"),
                 raw = num(lo, "raw_tokens"), ratio = num(lo, "compression_ratio");
    CHECKF(in > 0, "%s: input_positions %g", what, in);
    if (m == 3)
        CHECKF(ctx == 0 && raw == 0 && ratio == 0, "%s: context %g raw %g ratio %g", what, ctx, raw,
               ratio);
    else
        CHECKF(ctx > 0 && raw > 0 && ctx < in && ratio > 0, "%s: context %g raw %g input %g", what,
               ctx, raw, in);
    if (m == 0)
        CHECKF(ratio > 2, "%s: compressed ratio %g", what, ratio); /* 32 tokens in 4 slots */
    if (m == 1 || m == 2) CHECKF(ratio > 0.5 && ratio < 2, "%s: text ratio %g", what, ratio);
    const cJSON *t = cJSON_GetObjectItem(lo, "timings");
    CHECKF(cJSON_IsObject(t) && num(t, "retrieve_s") >= 0 && num(t, "total_s") > 0 &&
               num(t, "first_token_s") >= 0 && num(t, "decode_s") >= 0,
           "%s: timings", what);
    if (a->usage)
        CHECKF(num(a->usage, "prompt_tokens") == in, "%s: prompt_tokens %g, input %g", what,
               num(a->usage, "prompt_tokens"), in);
}

static void check_usage(const answer *a, int max_tokens, const char *what) {
    CHECKF(a->usage != NULL, "%s: no usage", what);
    if (!a->usage) return;
    const double p = num(a->usage, "prompt_tokens"), c = num(a->usage, "completion_tokens"),
                 t = num(a->usage, "total_tokens");
    CHECKF(p > 0 && c == max_tokens && t == p + c, "%s: usage %g + %g = %g", what, p, c, t);
}

TEST_CASE(api_answers_every_mode) {
    rig g;
    int rc = rig_open(&g, NULL, NULL);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    static const char *const questions[] = {
        "Where does the river Alder run?", "Why does a comet tail point away from the sun?",
        "How long should bread dough be kneaded?", "Who was the last miller?"};
    const int max_tokens = 8;
    for (int chat = 1; chat >= 0; chat--) {
        for (int m = 0; m < 4; m++) {
            char what[96];
            snprintf(what, sizeof what, "%s mode %s", path_of(chat), MODES[m]);
            char *b = gen_body(chat, questions[m], MODES[m], mode_group(m), max_tokens, 0,
                               ",\"ignore_eos\":true");
            answer a;
            CHECKF(post(g.port, path_of(chat), b, &a) == 200, "%s: status %d", what, a.status);
            free(b);
            CHECKF(!strcmp(a.content_type, "application/json"), "%s: %s", what, a.content_type);
            CHECKF(a.n_events == 1 && !a.bad_envelope, "%s: envelope", what);
            const cJSON *j = a.final;
            CHECKF(j && str_is(j, "object", chat ? "chat.completion" : "text_completion"),
                   "%s: object %s", what, j ? S(str(j, "object")) : "-");
            CHECKF(!strncmp(a.id, chat ? "chatcmpl-" : "cmpl-", chat ? 9 : 5), "%s: id %s", what,
                   a.id);
            const cJSON *ch = j ? cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0) : NULL;
            CHECKF(ch && num(ch, "index") == 0, "%s: choices[0]", what);
            if (chat && ch) {
                const cJSON *msg = cJSON_GetObjectItem(ch, "message");
                CHECKF(str_is(msg, "role", "assistant") && str(msg, "content"), "%s: message",
                       what);
            } else if (ch) {
                CHECKF(str(ch, "text") != NULL, "%s: text", what);
            }
            CHECKF(!strcmp(a.finish, "length"), "%s: finish_reason %s", what, a.finish);
            CHECKF(a.len > 0 && valid_utf8(a.text, a.len), "%s: content not UTF-8", what);
            check_usage(&a, max_tokens, what);
            check_lloco(&a, m, what);

            /* the same request streamed, with a usage chunk */
            snprintf(what, sizeof what, "%s mode %s streamed", path_of(chat), MODES[m]);
            b = gen_body(chat, questions[m], MODES[m], mode_group(m), max_tokens, 1,
                         ",\"ignore_eos\":true,\"stream_options\":{\"include_usage\":true}");
            answer s;
            CHECKF(post(g.port, path_of(chat), b, &s) == 200, "%s: status %d", what, s.status);
            free(b);
            CHECKF(!strcmp(s.content_type, "text/event-stream"), "%s: %s", what, s.content_type);
            CHECKF(s.done && !s.after_done, "%s: no [DONE] at the end", what);
            CHECKF(!s.bad_envelope, "%s: %d bad events", what, s.bad_envelope);
            CHECKF(s.n_events >= 3, "%s: %d events", what, s.n_events);
            if (chat) CHECKF(s.role_first, "%s: the first delta has no assistant role", what);
            CHECKF(s.len == a.len && !memcmp(s.text, a.text, a.len), "%s: streamed '%s' != '%s'",
                   what, s.text, a.text);
            CHECKF(!strcmp(s.finish, "length"), "%s: finish_reason %s", what, s.finish);
            const char *obj = chat ? "chat.completion.chunk" : "text_completion";
            const cJSON *e;
            int i = 0, fin_at = -1, usage_at = -1;
            cJSON_ArrayForEach(e, s.events) {
                CHECKF(str_is(e, "object", obj), "%s: event %d object %s", what, i,
                       S(str(e, "object")));
                const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(e, "choices"), 0);
                if (c0 && cJSON_IsString(cJSON_GetObjectItem(c0, "finish_reason"))) fin_at = i;
                if (cJSON_IsObject(cJSON_GetObjectItem(e, "usage"))) {
                    usage_at = i;
                    CHECKF(cJSON_GetArraySize(cJSON_GetObjectItem(e, "choices")) == 0,
                           "%s: the usage chunk has choices", what);
                }
                i++;
            }
            CHECKF(fin_at >= 0 && usage_at == fin_at + 1 && usage_at == s.n_events - 1,
                   "%s: finish at %d, usage at %d of %d", what, fin_at, usage_at, s.n_events);
            check_usage(&s, max_tokens, what);
            check_lloco(&s, m, what);
            answer_free(&s);

            /* without include_usage no usage chunk */
            b = gen_body(chat, questions[m], MODES[m], mode_group(m), max_tokens, 1,
                         ",\"ignore_eos\":true");
            CHECKF(post(g.port, path_of(chat), b, &s) == 200, "%s: status %d", what, s.status);
            free(b);
            CHECKF(s.done && s.usage == NULL, "%s: usage without include_usage", what);
            CHECKF(s.len == a.len && !memcmp(s.text, a.text, a.len), "%s: second stream differs",
                   what);
            answer_free(&s);
            answer_free(&a);
        }
    }
    rig_close(&g);
}

/* ---- 2. concurrent clients batch and answer as alone ------------------------ */

#define N_CONC 32

typedef struct {
    int port;
    int chat;
    char *body;
    int status;
    char *text;
    int completion_tokens;
    int n_events;
} conc_req;

static void *conc_main(void *arg) {
    conc_req *r = arg;
    answer a;
    r->status = post(r->port, path_of(r->chat), r->body, &a);
    free(r->text);
    r->text = a.text;
    r->n_events = a.n_events;
    r->completion_tokens = a.usage ? (int)num(a.usage, "completion_tokens") : -1;
    a.text = NULL;
    answer_free(&a);
    return NULL;
}

typedef struct {
    int port;
    atomic_int stop;
    double max_running, max_batch;
} poller;

static void *poll_main(void *arg) {
    poller *p = arg;
    while (!atomic_load(&p->stop)) {
        double r = metric(p->port, "lloco_running_sequences");
        double b = metric(p->port, "lloco_batch_size");
        if (r > p->max_running) p->max_running = r;
        if (b > p->max_batch) p->max_batch = b;
        sleep_ms(2);
    }
    return NULL;
}

TEST_CASE(api_concurrent_clients_match_sequential) {
    lloco_sched_params sp;
    lloco_sched_params_default(&sp);
    sp.max_seqs = 8;
    rig g;
    int rc = rig_open(&g, &sp, NULL);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    static const char *const groups[] = {"alpha", "beta", NULL};
    /* explicit adapters on top of the groups' ("" in JSON: none given) */
    static const char *const adapters[] = {NULL, "r16-all-rslora",  NULL, "r1-mlp-f16",
                                           NULL, "r2-pattern-bf16", "",   NULL};
    static const char *const questions[] = {"What floods the meadows?", "Which star is red?",
                                            "How is tea steeped?", "What did Ada Crane keep?"};
    conc_req req[N_CONC];
    for (int i = 0; i < N_CONC; i++) {
        char extra[256];
        const char *ad = adapters[i % 8];
        snprintf(extra, sizeof extra,
                 ",\"ignore_eos\":true,\"stream_options\":{\"include_usage\":true}%s%s%s",
                 ad ? ",\"adapter\":\"" : "", ad ? ad : "", ad ? "\"" : "");
        req[i] = (conc_req){.port = g.port, .chat = i % 2};
        req[i].body = gen_body(req[i].chat, questions[i % 4], MODES[(i / 2) % 4], groups[i % 3],
                               8 + (i % 9), i % 5 == 0, extra);
    }
    /* alone, one after another */
    char *alone[N_CONC];
    int total_tokens = 0;
    for (int i = 0; i < N_CONC; i++) {
        conc_main(&req[i]);
        CHECKF(req[i].status == 200, "request %d alone: status %d", i, req[i].status);
        CHECKF(req[i].text && valid_utf8(req[i].text, strlen(req[i].text)), "request %d: not UTF-8",
               i);
        CHECKF(req[i].completion_tokens == 8 + (i % 9), "request %d: %d tokens", i,
               req[i].completion_tokens);
        total_tokens += req[i].completion_tokens;
        alone[i] = req[i].text;
        req[i].text = NULL;
    }
    /* all together */
    const double steps0 = metric(g.port, "lloco_decode_steps_total");
    poller pl = {.port = g.port};
    pthread_t pt, th[N_CONC];
    pthread_create(&pt, NULL, poll_main, &pl);
    for (int i = 0; i < N_CONC; i++) pthread_create(&th[i], NULL, conc_main, &req[i]);
    for (int i = 0; i < N_CONC; i++) pthread_join(th[i], NULL);
    atomic_store(&pl.stop, 1);
    pthread_join(pt, NULL);
    const double steps = metric(g.port, "lloco_decode_steps_total") - steps0;
    int same = 0;
    for (int i = 0; i < N_CONC; i++) {
        CHECKF(req[i].status == 200, "request %d together: status %d", i, req[i].status);
        const int eq = req[i].text && !strcmp(req[i].text, alone[i]);
        CHECKF(eq, "request %d: together '%s', alone '%s'", i, req[i].text ? req[i].text : "",
               alone[i]);
        same += eq;
        free(req[i].text);
        free(req[i].body);
        free(alone[i]);
    }
    /* one at a time would take a step per generated token */
    CHECKF(steps > 0 && steps < total_tokens / 2, "%g steps for %d tokens: not batched", steps,
           total_tokens);
    CHECKF(pl.max_running > 1 || pl.max_batch > 1,
           "metrics never showed a batch (running %g, batch %g)", pl.max_running, pl.max_batch);
    CHECKF(pl.max_running <= 8, "%g sequences running with max_seqs 8", pl.max_running);
    printf("  %d/%d identical; %g steps for %d tokens; max running %g, max batch %g\n", same,
           N_CONC, steps, total_tokens, pl.max_running, pl.max_batch);
    rig_close(&g);
}

/* ---- 3. errors ---------------------------------------------------------------- */

#define AUTH "Authorization: Bearer sesame\r\n"

static void expect(int port, const char *method, const char *path, const char *headers,
                   const char *body, int status, const char *code, const char *what) {
    answer a;
    call(port, method, path, headers, body, &a);
    check_error(&a, status, code, what);
    answer_free(&a);
}

TEST_CASE(api_error_statuses) {
    lloco_server_params p;
    lloco_server_params_default(&p);
    p.api_key = "sesame";
    p.max_body_bytes = 4096;
    p.max_tokens_cap = 64;
    rig g;
    int rc = rig_open(&g, NULL, &p);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    const int port = g.port;
    const char *chat = "/v1/chat/completions", *cmpl = "/v1/completions";
    const char *hi = "[{\"role\":\"user\",\"content\":\"hi\"}]";
    char b[8192];

    expect(port, "POST", chat, AUTH, "{\"messages\": [", 400, "invalid_json", "malformed JSON");
    expect(port, "POST", cmpl, AUTH, "[1,2]", 400, "invalid_json", "a JSON array");
    snprintf(b, sizeof b, "{\"messages\":%s,\"max_tokens\":\"x\"}", hi);
    expect(port, "POST", chat, AUTH, b, 400, "invalid_type", "max_tokens a string");
    expect(port, "POST", chat, AUTH, "{\"messages\":\"hi\"}", 400, "invalid_value",
           "messages a string");
    expect(port, "POST", cmpl, AUTH, "{\"prompt\":7}", 400, "invalid_type", "prompt a number");
    snprintf(b, sizeof b, "{\"messages\":%s,\"stream\":1}", hi);
    expect(port, "POST", chat, AUTH, b, 400, "invalid_type", "stream a number");
    snprintf(b, sizeof b, "{\"messages\":%s,\"mode\":\"zip\"}", hi);
    expect(port, "POST", chat, AUTH, b, 400, "invalid_value", "unknown mode");
    snprintf(b, sizeof b, "{\"messages\":%s,\"temperature\":3}", hi);
    expect(port, "POST", chat, AUTH, b, 400, "invalid_value", "temperature out of range");

    snprintf(b, sizeof b,
             "{\"messages\":%s,\"mode\":\"text\",\"group\":\"gamma\",\"max_tokens\":2}", hi);
    expect(port, "POST", chat, AUTH, b, 404, "not_found", "unknown group");
    snprintf(b, sizeof b,
             "{\"messages\":%s,\"mode\":\"none\",\"group\":\"gamma\",\"max_tokens\":2}", hi);
    expect(port, "POST", chat, AUTH, b, 404, "not_found", "unknown group, mode none");
    snprintf(b, sizeof b,
             "{\"messages\":%s,\"mode\":\"none\",\"adapter\":\"nope\",\"max_tokens\":2}", hi);
    expect(port, "POST", chat, AUTH, b, 404, "not_found", "unknown adapter");
    snprintf(b, sizeof b,
             "{\"prompt\":\"hi\",\"mode\":\"none\",\"model\":\"nope\",\"max_tokens\":2}");
    expect(port, "POST", cmpl, AUTH, b, 404, "not_found", "unknown model");
    snprintf(b, sizeof b,
             "{\"messages\":%s,\"mode\":\"text\",\"doc_ids\":[\"nope\"],\"max_tokens\":2}", hi);
    expect(port, "POST", chat, AUTH, b, 404, "not_found", "unknown doc id");
    /* streamed requests fail before the stream starts, with a plain status */
    snprintf(b, sizeof b,
             "{\"messages\":%s,\"mode\":\"text\",\"doc_ids\":[\"nope\"],\"stream\":true}", hi);
    expect(port, "POST", chat, AUTH, b, 404, "not_found", "unknown doc id, streamed");

    /* 600 prompt bytes are 600 positions of the byte-level tokenizer, over 512 */
    int n = snprintf(b, sizeof b, "{\"prompt\":\"");
    for (int i = 0; i < 600; i++) b[n++] = 'a' + i % 26;
    snprintf(b + n, sizeof b - (size_t)n, "\",\"mode\":\"none\",\"max_tokens\":4}");
    expect(port, "POST", cmpl, AUTH, b, 400, "context_length_exceeded", "prompt too long");
    /* 480 + 60 > 512 */
    n = snprintf(b, sizeof b, "{\"prompt\":\"");
    for (int i = 0; i < 480; i++) b[n++] = 'a' + i % 26;
    snprintf(b + n, sizeof b - (size_t)n, "\",\"mode\":\"none\",\"max_tokens\":60}");
    expect(port, "POST", cmpl, AUTH, b, 400, "context_length_exceeded",
           "prompt + max_tokens too long");
    snprintf(b, sizeof b, "{\"messages\":%s,\"max_tokens\":65}", hi);
    expect(port, "POST", chat, AUTH, b, 400, "invalid_value", "max_tokens over the cap");

    snprintf(b, sizeof b, "{\"messages\":%s,\"n\":2}", hi);
    expect(port, "POST", chat, AUTH, b, 400, "unsupported_parameter", "n=2");
    snprintf(b, sizeof b, "{\"prompt\":\"hi\",\"logprobs\":true}");
    expect(port, "POST", cmpl, AUTH, b, 400, "unsupported_parameter", "logprobs");
    snprintf(b, sizeof b,
             "{\"messages\":%s,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
             hi);
    expect(port, "POST", chat, AUTH, b, 400, "unsupported_parameter", "tools");

    n = snprintf(b, sizeof b, "{\"prompt\":\"");
    for (int i = 0; i < 5000; i++) b[n++] = 'x';
    snprintf(b + n, sizeof b - (size_t)n, "\"}");
    expect(port, "POST", cmpl, AUTH, b, 413, NULL, "body too large");

    snprintf(b, sizeof b, "{\"messages\":%s,\"max_tokens\":2}", hi);
    expect(port, "POST", chat, NULL, b, 401, NULL, "no bearer token");
    expect(port, "POST", chat, "Authorization: Bearer wrong\r\n", b, 401, NULL,
           "wrong bearer token");
    expect(port, "GET", "/v1/models", NULL, NULL, 401, NULL, "models without a token");
    answer a;
    CHECKF(call(port, "GET", "/health", NULL, NULL, &a) == 200, "health without a token: %d",
           a.status);
    CHECK(a.final && str_is(a.final, "status", "ok"));
    answer_free(&a);
    CHECKF(call(port, "GET", "/v1/models", AUTH, NULL, &a) == 200, "models with the token: %d",
           a.status);
    answer_free(&a);
    snprintf(b, sizeof b, "{\"messages\":%s,\"mode\":\"none\",\"max_tokens\":2}", hi);
    CHECKF(call(port, "POST", chat, AUTH, b, &a) == 200, "chat with the token: %d", a.status);
    answer_free(&a);

    expect(port, "GET", "/v1/nothing", AUTH, NULL, 404, "not_found", "unknown route");
    expect(port, "GET", chat, AUTH, NULL, 405, "method_not_allowed", "GET on chat");
    expect(port, "PUT", "/v1/adapters", AUTH, "{}", 405, "method_not_allowed", "PUT on adapters");
    expect(port, "POST", "/v1/models", AUTH, "{}", 405, "method_not_allowed", "POST on models");
    rig_close(&g);
}

typedef struct {
    int port, status;
    char retry_after[16];
    int has_error_body;
} busy_req;

static void *busy_main(void *arg) {
    busy_req *r = arg;
    answer a;
    r->status =
        post(r->port, "/v1/completions",
             "{\"prompt\":\"count\",\"mode\":\"none\",\"max_tokens\":120,\"ignore_eos\":true,"
             "\"temperature\":0}",
             &a);
    snprintf(r->retry_after, sizeof r->retry_after, "%s", a.retry_after);
    const cJSON *e = a.final ? cJSON_GetObjectItem(a.final, "error") : NULL;
    r->has_error_body = e && str_is(e, "code", "server_busy") && str(e, "message");
    answer_free(&a);
    return NULL;
}

TEST_CASE(api_queue_full_503) {
    lloco_sched_params sp;
    lloco_sched_params_default(&sp);
    sp.max_seqs = 1;
    sp.max_queue = 1;
    rig g;
    int rc = rig_open(&g, &sp, NULL);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    enum { N = 6 };
    busy_req r[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        r[i] = (busy_req){.port = g.port};
        pthread_create(&th[i], NULL, busy_main, &r[i]);
    }
    int ok = 0, busy = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (r[i].status == 200) ok++;
        else if (r[i].status == 503) {
            busy++;
            CHECKF(atoi(r[i].retry_after) >= 1, "503 without Retry-After (%s)", r[i].retry_after);
            CHECKF(r[i].has_error_body, "503 without a server_busy error body");
        } else {
            CHECKF(0, "request %d: status %d", i, r[i].status);
        }
    }
    CHECKF(ok >= 1 && busy >= 1 && ok + busy == N, "%d answered, %d refused busy", ok, busy);
    CHECK(metric(g.port, "lloco_http_requests_total{status=\"503\"}") == busy);
    rig_close(&g);
}

/* ---- 4. disconnect mid-stream ------------------------------------------------ */

/* Sends a streamed generation request; the client once the 200 head is
 * read (NULL otherwise). */
static client *stream_open(int port, int chat, const char *body) {
    client *c = malloc(sizeof *c);
    if (cl_open(c, port, 0) != 0) {
        free(c);
        return NULL;
    }
    cl_timeout(c, 30000);
    char head[256];
    snprintf(head, sizeof head,
             "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n",
             path_of(chat), strlen(body));
    resp r;
    int ok = !cl_send(c, head) && !cl_send(c, body) && !read_resp(c, &r, 1) && r.status == 200;
    if (ok) resp_free(&r);
    if (!ok) {
        cl_close(c);
        free(c);
    }
    return ok ? c : NULL;
}

/* Reads n events; 0 when all came. */
static int skip_events(client *c, sse_reader *s, int n) {
    for (int i = 0; i < n; i++) {
        char *data;
        if (sse_next(c, s, &data) != 1) return -1;
        free(data);
    }
    return 0;
}

TEST_CASE(api_disconnect_mid_stream) {
    rig g;
    int rc = rig_open(&g, NULL, NULL);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    /* a close (FIN) from a completion, then a reset from a chat */
    for (int round = 0; round < 2; round++) {
        char *b = gen_body(round, "Tell me everything about the river.", "none", "alpha", 440, 1,
                           ",\"ignore_eos\":true");
        client *c = stream_open(g.port, round, b);
        free(b);
        CHECK(c != NULL);
        if (!c) break;
        sse_reader s = {0};
        CHECK(skip_events(c, &s, 3) == 0);
        sse_free(&s);
        if (round) cl_reset(c);
        else cl_close(c);
        free(c);
        const int want = round + 1;
        CHECKF(metric_until(g.port, "lloco_running_sequences", 0, 5000) == 0, "still running");
        CHECKF(metric_until(g.port, "lloco_kv_reserved_bytes", 0, 5000) == 0, "KV still reserved");
        const char *cancelled = "lloco_sequences_total{outcome=\"cancelled\"}";
        CHECKF(metric_until(g.port, cancelled, want, 5000) == want, "round %d: cancelled %g", round,
               metric(g.port, cancelled));
        CHECKF(metric_until(g.port, "lloco_client_disconnects_total", want, 5000) == want,
               "round %d: disconnects %g", round, metric(g.port, "lloco_client_disconnects_total"));
        CHECKF(metric(g.port, "lloco_active_requests") == 1, "active %g (the metrics request only)",
               metric(g.port, "lloco_active_requests"));
    }
    /* the server still answers */
    answer a;
    CHECK(post(g.port, "/v1/completions",
               "{\"prompt\":\"hi\",\"mode\":\"none\",\"max_tokens\":3,\"temperature\":0}",
               &a) == 200);
    answer_free(&a);
    rig_close(&g);
}

/* ---- 5. graceful shutdown ------------------------------------------------------ */

TEST_CASE(api_graceful_shutdown) {
    rig g;
    int rc = rig_open(&g, NULL, NULL);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    /* a few long streams, so some are surely running when the shutdown starts */
    enum { N = 4, MAX_TOKENS = 400 };
    client *c[N];
    sse_reader s[N];
    memset(s, 0, sizeof s);
    for (int i = 0; i < N; i++) {
        char *b = gen_body(i % 2, "What does the mill grind?", i % 2 ? "compressed" : "none",
                           "alpha", MAX_TOKENS, 1,
                           ",\"ignore_eos\":true,\"stream_options\":{\"include_usage\":true}");
        c[i] = stream_open(g.port, i % 2, b);
        free(b);
        CHECK(c[i] != NULL);
        if (c[i]) CHECK(skip_events(c[i], &s[i], 2) == 0); /* the role or a token, a token */
    }
    CHECKF(metric(g.port, "lloco_running_sequences") >= 1, "nothing runs");
    lloco_server_shutdown(g.srv);
    /* new connections are refused once the listener is closed */
    int refused = 0;
    for (int i = 0; i < 200 && !refused; i++) {
        client *x = malloc(sizeof *x);
        if (cl_open(x, g.port, 0) != 0) refused = errno == ECONNREFUSED;
        else cl_close(x);
        free(x);
        if (!refused) sleep_ms(10);
    }
    CHECK(refused);

    /* the requests in flight run to their end */
    for (int i = 0; i < N && c[i]; i++) {
        int k, done = 0, completion = -1;
        char *data;
        while ((k = sse_next(c[i], &s[i], &data)) == 1) {
            if (!strcmp(data, "[DONE]")) done = 1;
            cJSON *j = cJSON_Parse(data);
            const cJSON *u = cJSON_GetObjectItem(j, "usage");
            if (cJSON_IsObject(u)) completion = (int)num(u, "completion_tokens");
            cJSON_Delete(j);
            free(data);
        }
        sse_free(&s[i]);
        CHECKF(k == 0 && done, "stream %d: no [DONE]", i);
        CHECKF(completion == MAX_TOKENS, "stream %d: %d tokens (of %d)", i, completion, MAX_TOKENS);
        cl_close(c[i]);
        free(c[i]);
    }
    CHECKF(wait_run_done(&g, 10000), "lloco_server_run did not return");
    pthread_join(g.thread, NULL);
    g.started = 0;
    rig_close(&g);
}

/* ---- 6. models, adapters, retrieve, health ------------------------------------ */

static const cJSON *find_named(const cJSON *arr, const char *key, const char *name) {
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
        if (str_is(e, key, name)) return e;
    return NULL;
}

static int has_string(const cJSON *arr, const char *s) {
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
        if (cJSON_IsString(e) && !strcmp(e->valuestring, s)) return 1;
    return 0;
}

static const char *answer_adapter(int port, const char *group, char *buf, size_t cap) {
    char b[512];
    snprintf(
        b, sizeof b,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Which star is red?\"}],\"mode\":\"text\","
        "\"group\":\"%s\",\"max_tokens\":2,\"temperature\":0}",
        group);
    answer a;
    buf[0] = 0;
    const char *res = NULL;
    if (post(port, "/v1/chat/completions", b, &a) == 200 && a.final) {
        const cJSON *lo = cJSON_GetObjectItem(a.final, "lloco");
        const char *ad = str(lo, "adapter");
        snprintf(buf, cap, "%s", ad ? ad : "(null)");
        res = buf;
    }
    answer_free(&a);
    return res;
}

TEST_CASE(api_models_adapters_retrieve) {
    rig g;
    int rc = rig_open(&g, NULL, NULL);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    const int port = g.port;
    static const char *const fixtures[] = {"r8-qkvo", "r16-all-rslora", "r1-mlp-f16",
                                           "r4-qv-layer1-fifo", "r2-pattern-bf16"};
    answer a;
    CHECK(call(port, "GET", "/health", NULL, NULL, &a) == 200);
    CHECK(a.final && str_is(a.final, "status", "ok"));
    answer_free(&a);

    CHECK(call(port, "GET", "/v1/models", NULL, NULL, &a) == 200);
    const cJSON *data = a.final ? cJSON_GetObjectItem(a.final, "data") : NULL;
    CHECK(a.final && str_is(a.final, "object", "list") && cJSON_IsArray(data));
    const char *base = lloco_engine_model_name(g.e);
    const cJSON *m0 = cJSON_GetArrayItem(data, 0);
    CHECKF(m0 && str_is(m0, "id", base) && str_is(m0, "object", "model"), "models[0] is not %s",
           base);
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) {
        const cJSON *m = find_named(data, "id", fixtures[i]);
        CHECKF(m && str_is(m, "parent", base), "/v1/models lacks %s", fixtures[i]);
    }
    answer_free(&a);

    CHECK(call(port, "GET", "/v1/adapters", NULL, NULL, &a) == 200);
    data = a.final ? cJSON_GetObjectItem(a.final, "data") : NULL;
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) {
        const cJSON *e = find_named(data, "name", fixtures[i]);
        CHECKF(e && str_is(e, "object", "adapter") && num(e, "file_bytes") > 0,
               "/v1/adapters lacks %s", fixtures[i]);
        const cJSON *gs = e ? cJSON_GetObjectItem(e, "groups") : NULL;
        const char *want = !strcmp(fixtures[i], ADAPTER_ALPHA)  ? "alpha"
                           : !strcmp(fixtures[i], ADAPTER_BETA) ? "beta"
                                                                : NULL;
        CHECKF(cJSON_IsArray(gs) && cJSON_GetArraySize(gs) == (want ? 1 : 0) &&
                   (!want || has_string(gs, want)),
               "%s: groups", fixtures[i]);
    }
    answer_free(&a);

    /* load and assign: beta answers with it */
    CHECK(post(port, "/v1/adapters", "{\"name\":\"r16-all-rslora\",\"group\":\"beta\"}", &a) ==
          200);
    CHECKF(a.final && str_is(a.final, "name", "r16-all-rslora") &&
               cJSON_IsTrue(cJSON_GetObjectItem(a.final, "resident")) &&
               num(a.final, "rank") == 16 &&
               has_string(cJSON_GetObjectItem(a.final, "groups"), "beta"),
           "POST /v1/adapters answer");
    answer_free(&a);
    char buf[64];
    const char *ad = answer_adapter(port, "beta", buf, sizeof buf);
    CHECKF(ad && !strcmp(ad, "r16-all-rslora"), "beta answers with %s", ad ? ad : "-");
    CHECK(call(port, "GET", "/v1/adapters", NULL, NULL, &a) == 200);
    data = a.final ? cJSON_GetObjectItem(a.final, "data") : NULL;
    const cJSON *e = find_named(data, "name", ADAPTER_BETA);
    CHECKF(e && cJSON_GetArraySize(cJSON_GetObjectItem(e, "groups")) == 0, "beta still on %s",
           ADAPTER_BETA);
    answer_free(&a);

    /* unassign: beta answers with no adapter */
    CHECK(call(port, "DELETE", "/v1/adapters/r16-all-rslora?group=beta", NULL, NULL, &a) == 200);
    CHECK(a.final && cJSON_IsTrue(cJSON_GetObjectItem(a.final, "deleted")) &&
          str_is(a.final, "group", "beta"));
    answer_free(&a);
    ad = answer_adapter(port, "beta", buf, sizeof buf);
    CHECKF(ad && !strcmp(ad, "(null)"), "unassigned beta answers with %s", ad ? ad : "-");
    expect(port, "DELETE", "/v1/adapters/r16-all-rslora?group=beta", NULL, NULL, 404, "not_found",
           "unassign twice");
    expect(port, "DELETE", "/v1/adapters/r8-qkvo?group=beta", NULL, NULL, 404, "not_found",
           "unassign another adapter's group");

    /* unload */
    CHECK(call(port, "DELETE", "/v1/adapters/r16-all-rslora", NULL, NULL, &a) == 200);
    CHECK(a.final && cJSON_IsTrue(cJSON_GetObjectItem(a.final, "deleted")));
    answer_free(&a);
    CHECK(call(port, "GET", "/v1/adapters", NULL, NULL, &a) == 200);
    e = find_named(a.final ? cJSON_GetObjectItem(a.final, "data") : NULL, "name", "r16-all-rslora");
    CHECKF(e && cJSON_IsFalse(cJSON_GetObjectItem(e, "resident")), "r16-all-rslora still resident");
    answer_free(&a);
    expect(port, "DELETE", "/v1/adapters/nope", NULL, NULL, 404, "not_found", "unload unknown");
    expect(port, "POST", "/v1/adapters", NULL, "{\"name\":\"nope\"}", 404, "not_found",
           "load unknown");
    expect(port, "POST", "/v1/adapters", NULL, "{\"group\":\"beta\"}", 400, NULL,
           "load without a name");
    /* "model": an adapter name selects it */
    CHECK(post(port, "/v1/completions",
               "{\"prompt\":\"hi\",\"mode\":\"none\",\"model\":\"r1-mlp-f16\",\"max_tokens\":2}",
               &a) == 200);
    CHECK(a.final && str_is(a.final, "model", "r1-mlp-f16") &&
          str_is(cJSON_GetObjectItem(a.final, "lloco"), "adapter", "r1-mlp-f16"));
    answer_free(&a);

    /* retrieve: chunks with their text, in the group asked */
    CHECK(post(port, "/v1/retrieve",
               "{\"query\":\"the mill wheel\",\"group\":\"alpha\",\"top_k\":2}", &a) == 200);
    data = a.final ? cJSON_GetObjectItem(a.final, "data") : NULL;
    CHECKF(cJSON_IsArray(data) && cJSON_GetArraySize(data) >= 1 && cJSON_GetArraySize(data) <= 2,
           "retrieve: %d chunks", cJSON_GetArraySize(data));
    CHECK(a.final && str_is(a.final, "group", "alpha") &&
          str_is(a.final, "adapter", ADAPTER_ALPHA));
    const cJSON *c;
    cJSON_ArrayForEach(c, data) {
        const char *doc = str(c, "doc_id"), *text = str(c, "text");
        CHECKF(doc && !strncmp(doc, "alpha-", 6), "retrieved %s", doc ? doc : "-");
        CHECKF(text && text[0] && cJSON_IsNumber(cJSON_GetObjectItem(c, "score")), "chunk text");
        int found = 0;
        for (int i = 0; i < N_DOCS && text; i++)
            found |= !strcmp(DOCS[i].id, doc) && strstr(DOCS[i].text, text);
        CHECKF(found, "chunk text '%s' is not in %s", text ? text : "", doc ? doc : "-");
    }
    answer_free(&a);
    CHECK(post(port, "/v1/retrieve", "{\"query\":\"comets\",\"doc_ids\":[\"beta-comets\"]}", &a) ==
          200);
    data = a.final ? cJSON_GetObjectItem(a.final, "data") : NULL;
    CHECK(cJSON_GetArraySize(data) >= 1);
    cJSON_ArrayForEach(c, data) CHECK(str_is(c, "doc_id", "beta-comets"));
    answer_free(&a);
    expect(port, "POST", "/v1/retrieve", NULL, "{\"group\":\"alpha\"}", 400, NULL,
           "retrieve without a query");
    expect(port, "POST", "/v1/retrieve", NULL, "{\"query\":\"x\",\"group\":\"gamma\"}", 404,
           "not_found", "retrieve in an unknown group");
    rig_close(&g);
}
