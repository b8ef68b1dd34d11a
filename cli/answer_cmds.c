/* The answer subcommands: ask (one question over a store, streamed) and
 * serve (the HTTP server). Flag parsing and printing; the pipeline is
 * server/'s engine and scheduler.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "server/server.h"

#define MAX_LIST 64

typedef struct {
    lloco_engine_params ep;
    lloco_query q;
    lloco_sched_params sp;
    lloco_sampler_params sampling;
    const char *stop[MAX_LIST];
    int n_stop;
    const char *doc_ids[MAX_LIST];
    const char *template_text;
    int json;
    lloco_server_params srv; /* serve */
    cJSON *config;           /* the --config file, which the strings above may point into */
    char *question;          /* joined arguments (ask) */
} answer_opts;

static const char *const k_stop_names[] = {"length", "eog", "stop", "context", "cancelled"};

/* --config FILE for serve: a JSON object whose keys are the long flags'
 * names with '_' for '-' (see README), applied before the flags. */
static int apply_config(answer_opts *o, const char *path) {
    char *text;
    size_t len;
    int rc = lloco_file_read(path, 1 << 20, &text, &len);
    if (rc) return cli_fail(rc);
    o->config = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(o->config))
        return cli_fail(lloco_error(LLOCO_ERR_FORMAT, "%s: not a JSON object", path));
    const cJSON *e;
    cJSON_ArrayForEach(e, o->config) {
        const char *k = e->string;
        const int str = cJSON_IsString(e), num = cJSON_IsNumber(e);
        const double v = num ? e->valuedouble : 0;
        const char *sv = str ? e->valuestring : NULL;
        int ok = 1;
        if (!strcmp(k, "store")) ok = str, o->ep.store_dir = sv;
        else if (!strcmp(k, "model")) ok = str, o->ep.model_path = sv;
        else if (!strcmp(k, "embedder")) ok = str, o->ep.embedder_dir = sv;
        else if (!strcmp(k, "adapters_dir")) ok = str, o->ep.adapters_dir = sv;
        else if (!strcmp(k, "system")) ok = str, o->ep.system_prompt = sv;
        else if (!strcmp(k, "host")) ok = str, o->srv.host = sv;
        else if (!strcmp(k, "api_key")) ok = str, o->srv.api_key = sv;
        else if (!strcmp(k, "templates") && cJSON_IsObject(e)) {
            const cJSON *t;
            cJSON_ArrayForEach(t, e) {
                lloco_mode m;
                if (lloco_mode_parse(t->string, &m) || !cJSON_IsString(t))
                    return cli_fail(lloco_error(LLOCO_ERR_INVAL,
                                                "%s: templates.%s: expected a string for one of "
                                                "compressed, text, full, none", path, t->string));
                o->ep.templates[m] = t->valuestring;
            }
        } else if (num && v >= 0 && v <= 1e12 && v == (double)(long long)v) {
            const long long n = (long long)v;
            if (!strcmp(k, "port") && n <= 65535) o->srv.port = (int)n;
            else if (!strcmp(k, "threads") && n <= 1024) o->ep.n_threads = (int)n;
            else if (!strcmp(k, "ctx") && n <= 1 << 20) o->ep.n_ctx = (int)n;
            else if (!strcmp(k, "max_seqs") && n >= 1 && n <= 64) o->sp.max_seqs = (int)n;
            else if (!strcmp(k, "max_queue") && n >= 1) o->sp.max_queue = (int)n;
            else if (!strcmp(k, "max_batch_tokens") && n >= 1) o->sp.max_batch_tokens = (int)n;
            else if (!strcmp(k, "prefill_chunk") && n >= 1) o->sp.prefill_chunk = (int)n;
            else if (!strcmp(k, "kv_budget_mib") && n >= 1) o->sp.kv_budget_bytes = (size_t)n << 20;
            else if (!strcmp(k, "adapter_budget_mib") && n >= 1) o->ep.adapter_budget_bytes = (size_t)n << 20;
            else if (!strcmp(k, "max_tokens_cap") && n >= 1) o->srv.max_tokens_cap = (int)n;
            else if (!strcmp(k, "default_max_tokens") && n >= 1) o->srv.default_max_tokens = (int)n;
            else if (!strcmp(k, "max_prompt_positions")) o->srv.max_prompt_positions = (int)n;
            else if (!strcmp(k, "max_body_bytes") && n >= 1) o->srv.max_body_bytes = (size_t)n;
            else if (!strcmp(k, "max_header_bytes") && n >= 1) o->srv.max_header_bytes = (size_t)n;
            else if (!strcmp(k, "request_timeout_ms") && n >= 1) o->srv.request_timeout_ms = (int)n;
            else if (!strcmp(k, "idle_timeout_ms") && n >= 1) o->srv.idle_timeout_ms = (int)n;
            else if (!strcmp(k, "shutdown_grace_ms")) o->srv.shutdown_grace_ms = (int)n;
            else ok = 0;
        } else {
            ok = 0;
        }
        if (!ok)
            return cli_fail(lloco_error(LLOCO_ERR_INVAL,
                                        "%s: '%s' is not a setting or has a bad value (see the "
                                        "README's serve section)", path, k));
    }
    return 0;
}

/* Flags shared by ask and serve; `serve` allows the server's own. */
static int parse_answer_opts(int argc, char **argv, int serve, answer_opts *o) {
    memset(o, 0, sizeof *o);
    o->q.mode = LLOCO_MODE_COMPRESSED;
    o->q.max_tokens = 256;
    lloco_sampler_params_default(&o->sampling);
    lloco_sched_params_default(&o->sp);
    lloco_server_params_default(&o->srv);
    o->srv.handle_signals = 1;
    for (int i = 0; serve && i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) {
            int rc = apply_config(o, argv[i + 1]);
            if (rc) return rc;
        }
    if (serve && !o->srv.api_key) {
        const char *key = getenv("LLOCO_API_KEY");
        if (key && *key) o->srv.api_key = key;
    }
    size_t qlen = 1;
    const char **args = calloc((size_t)argc + 1, sizeof *args);
    int n_args = 0;
    if (!args) return cli_fail(lloco_error(LLOCO_ERR_NOMEM, "out of memory"));
    int rc = 0;
    for (int i = 0; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1]) {
            args[n_args++] = a;
            qlen += strlen(a) + 1;
            continue;
        }
        if (!strcmp(a, "--json") && !serve) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--raw") && !serve) {
            o->q.raw = 1;
            continue;
        }
        if (i + 1 >= argc) {
            rc = cli_usage_error("option %s needs a value", a);
            break;
        }
        const char *v = argv[++i];
        float f;
        if (!strcmp(a, "--store")) o->ep.store_dir = v;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->ep.model_path = v;
        else if (!strcmp(a, "--embedder")) o->ep.embedder_dir = v;
        else if (!strcmp(a, "--adapters-dir")) o->ep.adapters_dir = v;
        else if (!strcmp(a, "--system")) o->ep.system_prompt = v;
        else if (!strcmp(a, "--threads")) {
            if (cli_parse_int(v, 1, 1024, &o->ep.n_threads)) rc = cli_usage_error("bad --threads value '%s'", v);
        } else if (!strcmp(a, "--ctx")) {
            if (cli_parse_int(v, 16, 1 << 20, &o->ep.n_ctx)) rc = cli_usage_error("bad --ctx value '%s'", v);
        } else if (serve && !strcmp(a, "--config")) {
            /* applied above */
        } else if (serve && !strcmp(a, "--host")) o->srv.host = v;
        else if (serve && !strcmp(a, "--port")) {
            if (cli_parse_int(v, 0, 65535, &o->srv.port)) rc = cli_usage_error("bad --port value '%s'", v);
        } else if (serve && !strcmp(a, "--max-seqs")) {
            if (cli_parse_int(v, 1, 64, &o->sp.max_seqs)) rc = cli_usage_error("bad --max-seqs value '%s' (1..64)", v);
        } else if (serve && !strcmp(a, "--max-queue")) {
            if (cli_parse_int(v, 1, 1 << 20, &o->sp.max_queue)) rc = cli_usage_error("bad --max-queue value '%s'", v);
        } else if (serve) {
            rc = cli_usage_error("unknown option '%s'", a);
        } else if (!strcmp(a, "--group") || !strcmp(a, "-g")) o->q.group = v;
        else if (!strcmp(a, "--mode")) {
            if (lloco_mode_parse(v, &o->q.mode)) rc = cli_usage_error("bad --mode '%s' (compressed, text, full or none)", v);
        } else if (!strcmp(a, "-k")) {
            if (cli_parse_int(v, 1, 64, &o->q.top_k)) rc = cli_usage_error("bad -k value '%s' (1..64)", v);
        } else if (!strcmp(a, "--doc")) {
            if (o->q.n_doc_ids == MAX_LIST) rc = cli_usage_error("too many --doc options%s", "");
            else o->doc_ids[o->q.n_doc_ids++] = v;
        } else if (!strcmp(a, "--adapter")) o->q.adapter = !strcmp(v, "none") ? "" : v;
        else if (!strcmp(a, "--template")) o->template_text = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            if (cli_parse_int(v, 0, 1 << 20, &o->q.max_tokens)) rc = cli_usage_error("bad -n value '%s'", v);
        } else if (!strcmp(a, "--temp")) {
            if (cli_parse_float(v, 0, 100, &o->sampling.temperature)) rc = cli_usage_error("bad --temp value '%s'", v);
        } else if (!strcmp(a, "--top-p")) {
            if (cli_parse_float(v, 0, 1, &o->sampling.top_p)) rc = cli_usage_error("bad --top-p value '%s'", v);
        } else if (!strcmp(a, "--top-k")) {
            if (cli_parse_int(v, 0, 1 << 20, &o->sampling.top_k)) rc = cli_usage_error("bad --top-k value '%s'", v);
        } else if (!strcmp(a, "--seed")) {
            if (cli_parse_float(v, 0, 1e15, &f)) rc = cli_usage_error("bad --seed value '%s'", v);
            else o->sampling.seed = (uint64_t)f;
        } else if (!strcmp(a, "--stop")) {
            if (!v[0]) rc = cli_usage_error("empty --stop string%s", "");
            else if (o->n_stop == MAX_LIST) rc = cli_usage_error("too many --stop options%s", "");
            else o->stop[o->n_stop++] = v;
        } else {
            rc = cli_usage_error("unknown option '%s'", a);
        }
    }
    if (!rc && !o->ep.store_dir) rc = cli_usage_error("missing --store DIR%s", "");
    if (rc) cJSON_Delete(o->config);
    if (!rc && serve && n_args) rc = cli_usage_error("unexpected argument '%s'", args[0]);
    if (!rc && !serve && n_args == 0)
        rc = cli_usage_error("usage: lloco ask --store DIR [--group G] [--mode M] [-k K] QUESTION%s", "");
    if (!rc && !serve) {
        o->question = malloc(qlen);
        if (!o->question) rc = cli_fail(lloco_error(LLOCO_ERR_NOMEM, "out of memory"));
        else {
            o->question[0] = '\0';
            for (int i = 0; i < n_args; i++) {
                if (i) strcat(o->question, " ");
                strcat(o->question, args[i]);
            }
        }
    }
    free(args);
    if (rc) return rc;
    if (!o->ep.model_path) o->ep.model_path = cli_default_model(DEFAULT_MODEL_FILE);
    if (!o->ep.embedder_dir) o->ep.embedder_dir = cli_default_model(DEFAULT_EMBEDDER_DIR);
    /* the default adapters folder only when it exists; one given must */
    struct stat st;
    if (!o->ep.adapters_dir && stat(cli_default_adapters_dir(), &st) == 0 && S_ISDIR(st.st_mode))
        o->ep.adapters_dir = cli_default_adapters_dir();
    if (o->template_text) o->ep.templates[o->q.mode] = o->template_text;
    o->q.question = o->question;
    o->q.doc_ids = o->doc_ids;
    return 0;
}

/* ---- ask -------------------------------------------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    lloco_sched_result res;
    int stream;
    lloco_buf text;
} ask_state;

static int ask_text(const char *text, size_t len, void *user) {
    ask_state *a = user;
    if (a->stream) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        return 0;
    }
    return lloco_buf_append(&a->text, text, len) != 0;
}

static void ask_done(void *user, const lloco_sched_result *r) {
    ask_state *a = user;
    pthread_mutex_lock(&a->mu);
    a->res = *r;
    a->done = 1;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void print_ask_json(const answer_opts *o, const lloco_prepared *p, const ask_state *a,
                           double t_total) {
    cJSON *j = lloco_answer_json(p, o->q.mode, &a->res, t_total, 0);
    char *answer = lloco_utf8_repair(a->text.data ? a->text.data : "", a->text.len);
    cJSON_AddStringToObject(j, "answer", answer ? answer : "");
    free(answer);
    cJSON_AddNumberToObject(j, "generated_tokens", a->res.n_generated);
    cJSON_AddStringToObject(j, "finish_reason", k_stop_names[a->res.stop]);
    char *s = cJSON_PrintUnformatted(j);
    if (s) printf("%s\n", s);
    free(s);
    cJSON_Delete(j);
}

int cmd_ask(int argc, char **argv) {
    answer_opts o;
    int rc = parse_answer_opts(argc, argv, 0, &o);
    if (rc) return rc;
    o.sp.max_seqs = 1;
    lloco_engine *e = NULL;
    lloco_sched *s = NULL;
    lloco_prepared p = {0};
    ask_state a = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .stream = !o.json};
    rc = lloco_engine_open(&o.ep, &e);
    const double t0 = lloco_time_now();
    if (!rc) rc = lloco_engine_prepare(e, &o.q, &p);
    if (!rc) rc = lloco_sched_create(e, &o.sp, &s);
    lloco_sched_request r = {.input = &p, .max_tokens = o.q.max_tokens, .sampling = o.sampling,
                             .stop = o.stop, .n_stop = o.n_stop, .on_text = ask_text,
                             .on_done = ask_done, .user = &a};
    if (!rc) rc = lloco_sched_submit(s, &r, NULL);
    if (!rc) {
        pthread_mutex_lock(&a.mu);
        while (!a.done) pthread_cond_wait(&a.cv, &a.mu);
        pthread_mutex_unlock(&a.mu);
        rc = a.res.rc;
        if (rc) lloco_error(rc, "%s", a.res.error);
    }
    if (!rc && o.json) print_ask_json(&o, &p, &a, lloco_time_now() - t0);
    else if (!rc) printf("\n");
    lloco_sched_free(s);
    lloco_prepared_free(&p);
    lloco_engine_close(e);
    lloco_buf_free(&a.text);
    free(o.question);
    cJSON_Delete(o.config);
    return rc ? cli_fail(rc) : 0;
}

/* ---- serve -------------------------------------------------------------------- */

static void log_stderr(lloco_log_level level, const char *msg, void *user) {
    (void)level, (void)user;
    fprintf(stderr, "lloco: %s\n", msg);
}

int cmd_serve(int argc, char **argv) {
    answer_opts o;
    int rc = parse_answer_opts(argc, argv, 1, &o);
    if (rc) return rc;
    lloco_log_set(log_stderr, LLOCO_LOG_INFO, NULL);
    lloco_engine *e = NULL;
    lloco_sched *s = NULL;
    lloco_server *srv = NULL;
    rc = lloco_engine_open(&o.ep, &e);
    if (!rc) rc = lloco_sched_create(e, &o.sp, &s);
    if (!rc) rc = lloco_server_create(e, s, &o.srv, &srv);
    if (!rc) {
        fprintf(stderr, "lloco: serving %s on http://%s:%d (store %s%s%s)%s\n",
                lloco_engine_model_name(e), o.srv.host, lloco_server_port(srv), o.ep.store_dir,
                o.ep.adapters_dir ? ", adapters " : "", o.ep.adapters_dir ? o.ep.adapters_dir : "",
                o.srv.api_key ? ", bearer token required" : "");
        rc = lloco_server_run(srv);
        fprintf(stderr, "lloco: stopped\n");
    }
    lloco_server_free(srv);
    lloco_sched_free(s);
    lloco_engine_close(e);
    cJSON_Delete(o.config);
    return rc ? cli_fail(rc) : 0;
}
