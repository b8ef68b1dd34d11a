/* lloco: the command-line entry point. Each subcommand parses its flags and
 * calls the modules; the logic lives in the modules.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "decoder/decoder.h"
#include "lora_bank/lora_bank.h"

#define MAX_STOPS 16

static const char *prog = "lloco";

int cli_fail(int rc) {
    fprintf(stderr, "%s: error: %s\n", prog, lloco_last_error());
    return rc == LLOCO_ERR_NOTFOUND ? 3 : 1;
}

const char *cli_default_model(const char *rel) {
    static char bufs[4][4096]; /* a command asks for a few at most */
    static int next;
    char *buf = bufs[next++ % 4];
    const char *dir = getenv("LLOCO_MODELS");
    snprintf(buf, sizeof bufs[0], "%s/%s", dir && *dir ? dir : LLOCO_DEFAULT_MODELS_DIR, rel);
    return buf;
}

const char *cli_default_adapters_dir(void) {
    const char *dir = getenv("LLOCO_ADAPTERS");
    return dir && *dir ? dir : cli_default_model("adapters");
}

int cli_usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun '%s help' for usage\n", prog);
    return 2;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: lloco COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  generate -m MODEL -p TEXT   generate a continuation, streamed to stdout\n"
            "  chat -m MODEL               interactive chat (one line per user turn)\n"
            "  inspect FILE|DIR            architecture, hyper-parameters, tokenizer, tensors\n"
            "  ingest --store DIR FILE...  compress documents (.txt .md .jsonl, - for stdin)\n"
            "                              into the store\n"
            "  search --store DIR QUESTION ranked chunks for a question\n"
            "  stats --store DIR           what the store holds and how it was encoded\n"
            "  reindex --store DIR         rebuild the search index from the store\n"
            "  adapters list|assign|unassign  LoRA adapters on disk and the group -> adapter\n"
            "                              map: list [--dir D] [--store DIR] [-m MODEL],\n"
            "                              assign --store DIR GROUP NAME, unassign --store DIR GROUP\n"
            "  ask --store DIR QUESTION    answer a question over the store, streamed:\n"
            "                              [--mode compressed|text|full|none] [-k K]\n"
            "                              [--group G] [--doc ID]... [--adapter NAME|none]\n"
            "                              [--template T] [--system S] [--raw] [--json]\n"
            "  serve --store DIR           the OpenAI-compatible HTTP server: [--config FILE]\n"
            "                              [--host H] [--port P] [--max-seqs N] [--max-queue N]\n"
            "  help                        this text\n"
            "\n"
            "generation options (generate, chat):\n"
            "  -m, --model PATH    .gguf file or safetensors directory (default: the\n"
            "                      embedded SmolLM2-135M-Instruct that setup fetches)\n"
            "  -p, --prompt TEXT   prompt (generate); '-' reads it from stdin\n"
            "  -n, --max-tokens N  tokens to generate (default 128)\n"
            "      --temp T        temperature; 0 = greedy (default 0)\n"
            "      --top-k K       keep the K most likely tokens (default off)\n"
            "      --top-p P       nucleus sampling threshold (default 1 = off)\n"
            "      --seed S        sampling seed\n"
            "      --stop STR      stop when STR appears (repeatable)\n"
            "      --threads N     CPU threads (default: all)\n"
            "      --ctx N         context length (default: the model's)\n"
            "      --kv-type T     KV cache type: f16 (default) or f32\n"
            "      --backend B     cpu (default), cpu-ref (plain reference) or cuda\n"
            "      --chat          wrap the prompt in the model's chat template (generate)\n"
            "      --system TEXT   system message for --chat and chat\n"
            "      --raw           do not add BOS; parse no special tokens in the prompt\n"
            "      --stats         print prompt/decode speeds to stderr\n"
            "      --ignore-eos    do not stop at end-of-generation tokens (benchmarks)\n"
            "      --ids-out FILE  write prompt and generated token ids as JSON (generate)\n"
            "      --logits-out F  write the logits after the prompt as raw f32 (generate)\n"
            "      --adapter NAME  apply the LoRA adapter NAME of the adapters directory\n"
            "      --adapters-dir D  adapters directory (default: $LLOCO_ADAPTERS, else\n"
            "                      adapters/ in the models folder)\n"
            "      --merge         merge the adapter into the weights (one adapter, faster decode)\n");
}

typedef struct {
    const char *model, *prompt, *system;
    const char *ids_out, *logits_out;
    const char *adapter, *adapters_dir;
    int max_tokens, threads, ctx, chat, raw, stats, merge, ignore_eos;
    lloco_backend_kind backend;
    lloco_dtype kv_type;
    lloco_sampler_params sp;
    const char *stops[MAX_STOPS];
    int n_stops;
} gen_opts;

int cli_parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = (float)v;
    return 0;
}

/* Returns 0, or an exit status for a usage error. */
static int parse_gen_opts(int argc, char **argv, gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_tokens = 128;
    o->kv_type = LLOCO_DTYPE_F16;
    o->backend = LLOCO_BACKEND_CPU;
    lloco_sampler_params_default(&o->sp);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE()                                                     \
    do {                                                                 \
        if (!v) return cli_usage_error("option %s needs a value", a);        \
        i++;                                                             \
    } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEED_VALUE();
            o->model = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            NEED_VALUE();
            o->prompt = v;
        } else if (!strcmp(a, "--system")) {
            NEED_VALUE();
            o->system = v;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            NEED_VALUE();
            if (cli_parse_int(v, 0, 1 << 20, &o->max_tokens)) return cli_usage_error("bad -n value '%s'", v);
        } else if (!strcmp(a, "--temp")) {
            NEED_VALUE();
            if (cli_parse_float(v, 0, 100, &o->sp.temperature)) return cli_usage_error("bad --temp value '%s'", v);
        } else if (!strcmp(a, "--top-k")) {
            NEED_VALUE();
            if (cli_parse_int(v, 0, 1 << 24, &o->sp.top_k)) return cli_usage_error("bad --top-k value '%s'", v);
        } else if (!strcmp(a, "--top-p")) {
            NEED_VALUE();
            if (cli_parse_float(v, 1e-6, 1, &o->sp.top_p)) return cli_usage_error("bad --top-p value '%s' (0 < p <= 1)", v);
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE();
            char *end;
            errno = 0;
            o->sp.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end) return cli_usage_error("bad --seed value '%s'", v);
        } else if (!strcmp(a, "--stop")) {
            NEED_VALUE();
            if (!*v) return cli_usage_error("empty --stop string%s", "");
            if (o->n_stops == MAX_STOPS) return cli_usage_error("at most 16 --stop strings%s", "");
            o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            NEED_VALUE();
            if (cli_parse_int(v, 1, 1024, &o->threads)) return cli_usage_error("bad --threads value '%s'", v);
        } else if (!strcmp(a, "--ctx")) {
            NEED_VALUE();
            if (cli_parse_int(v, 1, 1 << 24, &o->ctx)) return cli_usage_error("bad --ctx value '%s'", v);
        } else if (!strcmp(a, "--backend")) {
            NEED_VALUE();
            if (!strcmp(v, "cpu")) o->backend = LLOCO_BACKEND_CPU;
            else if (!strcmp(v, "cpu-ref")) o->backend = LLOCO_BACKEND_CPU_REF;
            else if (!strcmp(v, "cuda")) o->backend = LLOCO_BACKEND_CUDA;
            else return cli_usage_error("bad --backend '%s' (cpu, cpu-ref or cuda)", v);
        } else if (!strcmp(a, "--kv-type")) {
            NEED_VALUE();
            if (!strcmp(v, "f16")) o->kv_type = LLOCO_DTYPE_F16;
            else if (!strcmp(v, "f32")) o->kv_type = LLOCO_DTYPE_F32;
            else return cli_usage_error("bad --kv-type '%s' (f16 or f32)", v);
        } else if (!strcmp(a, "--ids-out")) {
            NEED_VALUE();
            o->ids_out = v;
        } else if (!strcmp(a, "--logits-out")) {
            NEED_VALUE();
            o->logits_out = v;
        } else if (!strcmp(a, "--adapter")) {
            NEED_VALUE();
            o->adapter = v;
        } else if (!strcmp(a, "--adapters-dir")) {
            NEED_VALUE();
            o->adapters_dir = v;
        } else if (!strcmp(a, "--merge")) {
            o->merge = 1;
        } else if (!strcmp(a, "--chat")) {
            o->chat = 1;
        } else if (!strcmp(a, "--raw")) {
            o->raw = 1;
        } else if (!strcmp(a, "--stats")) {
            o->stats = 1;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
        } else {
            return cli_usage_error("unknown option '%s'", a);
        }
#undef NEED_VALUE
    }
    if (!o->model) o->model = cli_default_model(DEFAULT_MODEL_FILE);
    if (o->merge && !o->adapter) return cli_usage_error("--merge needs --adapter NAME%s", "");
    if (!o->adapters_dir) o->adapters_dir = cli_default_adapters_dir();
    return 0;
}

/* The loaded model and what generating with it needs. */
typedef struct {
    lloco_model *model;
    lloco_decoder *dec;
    lloco_kv *kv;
    lloco_bank *bank;                 /* when an adapter is asked for */
    const lloco_adapter_view *adapter; /* pinned in bank */
    const char *adapter_name;
} session;

static void session_close(session *s) {
    lloco_kv_free(s->kv);
    lloco_decoder_free(s->dec); /* before the adapter it may have merged goes */
    if (s->adapter) lloco_bank_release(s->bank, s->adapter_name);
    lloco_bank_close(s->bank);
    lloco_model_close(s->model);
}

static int session_open(session *s, const gen_opts *o) {
    memset(s, 0, sizeof *s);
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = o->threads;
    dp.backend = o->backend;
    int rc = lloco_model_open(o->model, &s->model);
    if (!rc) rc = lloco_decoder_create(s->model, &dp, &s->dec);
    if (!rc) rc = lloco_kv_create(s->model, o->ctx, o->kv_type, &s->kv);
    if (!rc && o->adapter) {
        lloco_bank_params bp = {.dir = o->adapters_dir};
        rc = lloco_bank_open(&bp, s->model, &s->bank);
        if (!rc) rc = lloco_bank_acquire_wait(s->bank, o->adapter, &s->adapter);
        s->adapter_name = o->adapter;
        /* merged, the decoder still expects the view on every sequence */
        if (!rc && o->merge) rc = lloco_decoder_merge_adapter(s->dec, s->adapter);
    }
    if (rc) session_close(s);
    return rc;
}

static int tokenize(const lloco_model *m, const char *text, int add_bos, int special, int32_t **out,
                    int *n) {
    const lloco_tokenizer *tok = lloco_model_tokenizer(m);
    size_t len = strlen(text);
    int cap = (int)(len + 8);
    *out = malloc(sizeof(int32_t) * (size_t)cap);
    if (!*out) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    int rc = lloco_tokenizer_encode(tok, text, len, add_bos, special, *out, cap, n);
    if (rc == LLOCO_ERR_FULL) { /* invalid bytes can take 3 tokens each */
        int32_t *bigger = realloc(*out, sizeof(int32_t) * (size_t)*n);
        if (!bigger) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        else rc = lloco_tokenizer_encode(tok, text, len, add_bos, special, *out = bigger, *n, n);
    }
    if (rc) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

static int print_text(const char *text, size_t len, void *user) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void print_stats(const lloco_generate_stats *st) {
    fprintf(stderr, "\n[prompt %d tokens, %.1f tok/s; generated %d tokens, %.1f tok/s]\n",
            st->n_prompt, st->t_prefill > 0 ? st->n_prompt / st->t_prefill : 0.0, st->n_generated,
            st->t_decode > 0 && st->n_generated > 1 ? (st->n_generated - 1) / st->t_decode : 0.0);
}

static char *read_stdin(void) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0) break;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf) buf[n] = 0;
    return buf;
}

/* Prompt text after applying the chat template when asked to. */
static int build_prompt(const lloco_model *m, const gen_opts *o, const char *user, char **out) {
    if (!o->chat) {
        *out = strdup(user);
        return *out ? 0 : lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    lloco_chat_msg msgs[2];
    int n = 0;
    if (o->system) msgs[n++] = (lloco_chat_msg){"system", o->system};
    msgs[n++] = (lloco_chat_msg){"user", user};
    return lloco_chat_render(lloco_chat_detect(m), msgs, n, 1, out);
}

static int write_ids(const char *path, const int32_t *prompt, int n_prompt, const int32_t *gen, int n_gen) {
    FILE *f = fopen(path, "w");
    if (!f) return lloco_error(LLOCO_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f, "{\"prompt\":[");
    for (int i = 0; i < n_prompt; i++) fprintf(f, "%s%d", i ? "," : "", prompt[i]);
    fprintf(f, "],\"generated\":[");
    for (int i = 0; i < n_gen; i++) fprintf(f, "%s%d", i ? "," : "", gen[i]);
    fprintf(f, "]}\n");
    return fclose(f) ? lloco_error(LLOCO_ERR_IO, "%s: %s", path, strerror(errno)) : 0;
}

static int write_floats(const char *path, const float *x, int n) {
    FILE *f = fopen(path, "wb");
    if (!f) return lloco_error(LLOCO_ERR_IO, "%s: %s", path, strerror(errno));
    size_t w = fwrite(x, sizeof(float), (size_t)n, f);
    if (fclose(f) || w != (size_t)n) return lloco_error(LLOCO_ERR_IO, "%s: write failed", path);
    return 0;
}

static void fill_generate_params(const gen_opts *o, lloco_generate_params *gp) {
    lloco_generate_params_default(gp);
    gp->max_tokens = o->max_tokens;
    gp->sampling = o->sp;
    gp->stop = o->stops;
    gp->n_stop = o->n_stops;
    gp->on_text = print_text;
}

static int cmd_generate(int argc, char **argv) {
    gen_opts o;
    int rc = parse_gen_opts(argc, argv, &o);
    if (rc) return rc;
    if (!o.prompt) return cli_usage_error("missing -p PROMPT%s", "");
    char *stdin_text = NULL;
    if (!strcmp(o.prompt, "-")) {
        stdin_text = read_stdin();
        if (!stdin_text) return cli_fail(lloco_error(LLOCO_ERR_IO, "cannot read the prompt from stdin"));
        o.prompt = stdin_text;
    }
    session s;
    if ((rc = session_open(&s, &o))) {
        free(stdin_text);
        return cli_fail(rc);
    }
    const lloco_tokenizer *tok = lloco_model_tokenizer(s.model);
    char *prompt = NULL;
    int32_t *ids = NULL;
    int n = 0;
    rc = build_prompt(s.model, &o, o.prompt, &prompt);
    if (!rc) rc = tokenize(s.model, prompt, !o.raw && !o.chat && lloco_tokenizer_add_bos(tok), !o.raw, &ids, &n);
    if (!rc && n == 0) rc = lloco_error(LLOCO_ERR_INVAL, "the prompt is empty");
    if (!rc) {
        lloco_generate_params gp;
        fill_generate_params(&o, &gp);
        gp.adapter = s.adapter;
        gp.ignore_eos = o.ignore_eos;
        lloco_generate_stats st;
        int n_vocab = lloco_model_hparams(s.model)->n_vocab;
        int32_t *gen = malloc(sizeof(int32_t) * (size_t)(o.max_tokens + 1));
        float *logits = o.logits_out ? malloc(sizeof(float) * (size_t)n_vocab) : NULL;
        gp.prompt_logits = logits;
        if (!gen || (o.logits_out && !logits)) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        if (!rc) rc = lloco_generate(s.dec, s.kv, ids, n, &gp, gen, o.max_tokens, &st);
        printf("\n");
        if (!rc && o.stats) print_stats(&st);
        if (!rc && o.ids_out) rc = write_ids(o.ids_out, ids, n, gen, st.n_generated < o.max_tokens ? st.n_generated : o.max_tokens);
        if (!rc && o.logits_out) rc = write_floats(o.logits_out, logits, n_vocab);
        free(gen);
        free(logits);
    }
    free(ids);
    free(prompt);
    free(stdin_text);
    session_close(&s);
    return rc ? cli_fail(rc) : 0;
}

/* Interactive chat: the conversation is re-rendered each turn, and the
 * shared prefix with what the cache already holds is kept. */
static int cmd_chat(int argc, char **argv) {
    gen_opts o;
    int rc = parse_gen_opts(argc, argv, &o);
    if (rc) return rc;
    o.chat = 1;
    session s;
    if ((rc = session_open(&s, &o))) return cli_fail(rc);
    lloco_chat_format fmt = lloco_chat_detect(s.model);
    int interactive = isatty(STDIN_FILENO);
    lloco_chat_msg *msgs = NULL;
    int n_msgs = 0;
    char **owned = NULL;
    int n_owned = 0;
    int32_t *cached = NULL; /* tokens the KV cache holds */
    int n_cached = 0;
    int32_t *gen = malloc(sizeof(int32_t) * (size_t)(o.max_tokens + 1));
    char line[65536];
    if (o.system) {
        msgs = realloc(msgs, sizeof *msgs);
        msgs[n_msgs++] = (lloco_chat_msg){"system", o.system};
    }
    while (!rc && gen) {
        if (interactive) {
            fprintf(stderr, "> ");
            fflush(stderr);
        }
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        char *user = strdup(line);
        lloco_chat_msg *nm = realloc(msgs, sizeof *msgs * (size_t)(n_msgs + 2));
        char **no = realloc(owned, sizeof *owned * (size_t)(n_owned + 2));
        if (!user || !nm || !no) {
            free(user);
            if (nm) msgs = nm;
            if (no) owned = no;
            rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
            break;
        }
        msgs = nm;
        owned = no;
        owned[n_owned++] = user;
        msgs[n_msgs++] = (lloco_chat_msg){"user", user};
        char *text = NULL;
        int32_t *ids = NULL;
        int n = 0;
        if ((rc = lloco_chat_render(fmt, msgs, n_msgs, 1, &text))) break;
        rc = tokenize(s.model, text, 0, 1, &ids, &n);
        free(text);
        if (rc) break;
        int keep = 0;
        while (keep < n_cached && keep < n - 1 && cached[keep] == ids[keep]) keep++;
        lloco_kv_truncate(s.kv, keep);
        lloco_generate_params gp;
        fill_generate_params(&o, &gp);
        gp.adapter = s.adapter;
        lloco_generate_stats st;
        rc = lloco_generate(s.dec, s.kv, ids + keep, n - keep, &gp, gen, o.max_tokens, &st);
        printf("\n");
        fflush(stdout);
        if (rc) {
            free(ids);
            break;
        }
        if (o.stats) print_stats(&st);
        int n_gen = st.n_generated < o.max_tokens ? st.n_generated : o.max_tokens;
        char *reply = malloc(65536);
        if (reply) lloco_tokenizer_decode(lloco_model_tokenizer(s.model), gen, n_gen, 0, reply, 65536);
        free(cached);
        cached = ids;
        n_cached = lloco_kv_len(s.kv) < n ? lloco_kv_len(s.kv) : n;
        if (!reply) {
            rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
            break;
        }
        owned[n_owned++] = reply;
        msgs[n_msgs++] = (lloco_chat_msg){"assistant", reply};
    }
    if (!gen) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(msgs);
    free(cached);
    free(gen);
    session_close(&s);
    return rc ? cli_fail(rc) : 0;
}

static int cmd_inspect(int argc, char **argv) {
    if (argc != 1) return cli_usage_error("usage: lloco inspect FILE|DIR%s", "");
    int rc = lloco_model_inspect(argv[0], stdout);
    return rc ? cli_fail(rc) : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "chat")) return cmd_chat(argc - 2, argv + 2);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(cmd, "ingest")) return cmd_ingest(argc - 2, argv + 2);
    if (!strcmp(cmd, "search")) return cmd_search(argc - 2, argv + 2);
    if (!strcmp(cmd, "stats")) return cmd_stats(argc - 2, argv + 2);
    if (!strcmp(cmd, "reindex")) return cmd_reindex(argc - 2, argv + 2);
    if (!strcmp(cmd, "adapters")) return cmd_adapters(argc - 2, argv + 2);
    if (!strcmp(cmd, "ask")) return cmd_ask(argc - 2, argv + 2);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 2, argv + 2);
    return cli_usage_error("unknown command '%s'", cmd);
}
