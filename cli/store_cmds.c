/* The store subcommands: ingest (compress documents into a store), search
 * (ranked chunks for a question), stats and reindex. Flag parsing, opening
 * what each needs and printing; the work is in ingest/ and retriever/.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "ingest/ingest.h"
#include "lora_bank/lora_bank.h"

typedef struct {
    const char *store, *group, *model, *embedder, *encoder_lora;
    int threads, k, json;
    lloco_compress_params cp;
    lloco_index_params ixp; /* used when this command builds the index */
    int method_set;
    const char **args;
    int n_args;
} store_opts;

static int parse_flags(int argc, char **argv, const char *allowed, store_opts *o);

/* Shared flag parser: `allowed` lists the flags this command takes. On
 * success the caller frees o->args. */
static int parse_store_opts(int argc, char **argv, const char *allowed, store_opts *o) {
    int rc = parse_flags(argc, argv, allowed, o);
    if (rc) {
        free(o->args);
        o->args = NULL;
    }
    return rc;
}

static int parse_flags(int argc, char **argv, const char *allowed, store_opts *o) {
    memset(o, 0, sizeof *o);
    o->k = 5;
    lloco_compress_params_default(&o->cp, LLOCO_COMPRESS_AUTOCOMPRESSOR);
    lloco_index_params_default(&o->ixp, 0); /* dim: the store's, set on open */
    o->args = calloc((size_t)argc + 1, sizeof *o->args);
    if (!o->args) return cli_fail(lloco_error(LLOCO_ERR_NOMEM, "out of memory"));
    int seg = 0, ns = 0, acc = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !strcmp(a, "-")) {
            o->args[o->n_args++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            while (++i < argc) o->args[o->n_args++] = argv[i];
            break;
        }
        char flag[64];
        snprintf(flag, sizeof flag, " %s ", a);
        if (!strstr(allowed, flag)) return cli_usage_error("unknown option '%s'", a);
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--no-accumulate")) {
            acc = 0;
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error("option %s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--store")) o->store = v;
        else if (!strcmp(a, "--group") || !strcmp(a, "-g")) o->group = v;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--embedder")) o->embedder = v;
        else if (!strcmp(a, "--encoder-lora")) o->encoder_lora = v;
        else if (!strcmp(a, "--threads")) {
            if (cli_parse_int(v, 1, 1024, &o->threads)) return cli_usage_error("bad --threads value '%s'", v);
        } else if (!strcmp(a, "-k")) {
            if (cli_parse_int(v, 1, 1000, &o->k)) return cli_usage_error("bad -k value '%s' (1..1000)", v);
        } else if (!strcmp(a, "--method")) {
            lloco_compress_method m;
            if (lloco_compress_method_parse(v, &m))
                return cli_usage_error("bad --method '%s' (autocompressor or icae)", v);
            lloco_compress_params_default(&o->cp, m);
        } else if (!strcmp(a, "--segment-tokens")) {
            if (cli_parse_int(v, 1, 1 << 20, &seg)) return cli_usage_error("bad --segment-tokens value '%s'", v);
        } else if (!strcmp(a, "--n-summary")) {
            if (cli_parse_int(v, 1, 1 << 16, &ns)) return cli_usage_error("bad --n-summary value '%s'", v);
        } else if (!strcmp(a, "--hnsw-threshold")) {
            int t;
            if (cli_parse_int(v, 0, 1 << 30, &t)) return cli_usage_error("bad --hnsw-threshold value '%s'", v);
            o->ixp.hnsw_threshold = t;
        } else if (!strcmp(a, "--slot-dtype")) {
            if (!strcmp(v, "f16")) o->cp.slot_dtype = LLOCO_DTYPE_F16;
            else if (!strcmp(v, "bf16")) o->cp.slot_dtype = LLOCO_DTYPE_BF16;
            else if (!strcmp(v, "f32")) o->cp.slot_dtype = LLOCO_DTYPE_F32;
            else return cli_usage_error("bad --slot-dtype '%s' (f16, bf16 or f32)", v);
        }
    }
    if (seg) o->cp.segment_tokens = seg;
    if (ns) o->cp.n_summary = ns;
    if (acc == 0) o->cp.accumulate = 0;
    if (!o->store) return cli_usage_error("missing --store DIR%s", "");
    if (!o->model) o->model = cli_default_model(DEFAULT_MODEL_FILE);
    if (!o->embedder) o->embedder = cli_default_model(DEFAULT_EMBEDDER_DIR);
    return 0;
}

/* What the store commands open, in dependency order. */
typedef struct {
    lloco_model *model;
    lloco_decoder *dec;
    lloco_lora *encoder_lora;
    lloco_compressor *comp;
    lloco_backend *be; /* the embedder's when there is no decoder */
    lloco_embedder *emb;
    lloco_store *store;
    lloco_retriever *ret;
} store_session;

static void session_close(store_session *s) {
    lloco_retriever_close(s->ret);
    lloco_store_close(s->store);
    lloco_embedder_close(s->emb);
    lloco_compressor_free(s->comp);
    lloco_lora_close(s->encoder_lora);
    lloco_decoder_free(s->dec);
    lloco_backend_free(s->be);
    lloco_model_close(s->model);
}

static int open_embedder(store_session *s, const store_opts *o) {
    lloco_backend *be = s->dec ? lloco_decoder_backend(s->dec) : NULL;
    int rc = 0;
    if (!be) {
        rc = lloco_backend_create(LLOCO_BACKEND_CPU, o->threads, &s->be);
        be = s->be;
    }
    if (!rc) rc = lloco_embedder_open(o->embedder, be, &s->emb);
    if (rc == LLOCO_ERR_NOTFOUND && !strstr(lloco_last_error(), "setup.sh"))
        rc = lloco_error(rc, "%s (the default embedder is fetched by ./scripts/setup.sh)",
                         lloco_last_error());
    return rc;
}

/* The store as written, checked against the embedder we are about to use
 * for questions: vectors from another embedder would be meaningless. */
static int open_for_search(store_session *s, const store_opts *o) {
    memset(s, 0, sizeof *s);
    int rc = lloco_store_open(o->store, NULL, 0, &s->store);
    if (!rc) rc = open_embedder(s, o);
    if (!rc) {
        const lloco_store_fingerprint *fp = lloco_store_fingerprint_of(s->store);
        if (strcmp(fp->embedder_hash, lloco_embedder_hash(s->emb)) != 0)
            rc = lloco_error(LLOCO_ERR_MISMATCH,
                             "store %s was indexed with embedder %s, %s is %s: use --embedder with "
                             "the one it was built with",
                             o->store, fp->embedder_hash, o->embedder, lloco_embedder_hash(s->emb));
    }
    if (!rc) rc = lloco_retriever_open(s->store, &o->ixp, &s->ret);
    return rc;
}

/* ---- ingest ---------------------------------------------------------------- */

typedef struct {
    int tty;
    double last;
} progress_state;

static void fmt_duration(double s, char *buf, size_t cap) {
    if (s < 0 || s > 1e7) snprintf(buf, cap, "?");
    else if (s < 60) snprintf(buf, cap, "%.0fs", s);
    else if (s < 3600) snprintf(buf, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, cap, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static void on_progress(void *ctx, const lloco_ingest_stats *st) {
    progress_state *p = ctx;
    if (!p->tty || st->seconds - p->last < 0.2) return;
    p->last = st->seconds;
    char eta[32] = "?";
    double frac = st->bytes_total > 0 ? (double)st->bytes_done / (double)st->bytes_total : 0;
    if (frac > 0) fmt_duration(st->seconds * (1 - frac) / frac, eta, sizeof eta);
    char bar[21];
    int fill = (int)(frac * 20);
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
    bar[20] = '\0';
    fprintf(stderr, "\r[%s] %3.0f%%  docs %lld (+%lld unchanged)  chunks %lld  %.0f tok/s  ETA %s   ",
            bar, frac * 100, (long long)st->docs_written, (long long)st->docs_unchanged,
            (long long)st->chunks, st->seconds > 0 ? (double)st->tokens / st->seconds : 0.0, eta);
    fflush(stderr);
}

static void on_problem(void *ctx, const char *where, const char *why) {
    progress_state *p = ctx;
    fprintf(stderr, "%s%s: skipped: %s\n", p->tty ? "\r\033[K" : "", where, why);
}

int cmd_ingest(int argc, char **argv) {
    store_opts o;
    int rc = parse_store_opts(argc, argv,
                              " --store --group -g -m --model --embedder --threads --method "
                              "--segment-tokens --n-summary --no-accumulate --slot-dtype "
                              "--hnsw-threshold --encoder-lora ",
                              &o);
    if (rc) return rc;
    if (o.n_args == 0) {
        free(o.args);
        return cli_usage_error("usage: lloco ingest --store DIR [--group G] FILE... (or - for stdin)%s", "");
    }
    store_session s;
    memset(&s, 0, sizeof s);
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = o.threads;
    lloco_store_fingerprint fp;
    rc = lloco_model_open(o.model, &s.model);
    if (!rc) rc = lloco_decoder_create(s.model, &dp, &s.dec);
    if (!rc && o.encoder_lora) {
        rc = lloco_lora_open(o.encoder_lora, NULL, s.model, &s.encoder_lora);
        if (!rc) o.cp.encoder_adapter = lloco_lora_view(s.encoder_lora);
    }
    if (!rc) rc = lloco_compressor_create(s.dec, &o.cp, &s.comp);
    if (!rc) rc = lloco_compressor_fingerprint(s.comp, &fp);
    if (!rc) rc = open_embedder(&s, &o);
    if (!rc) {
        snprintf(fp.embedder_hash, sizeof fp.embedder_hash, "%s", lloco_embedder_hash(s.emb));
        fp.embed_dim = lloco_embedder_dim(s.emb);
        rc = lloco_store_open(o.store, &fp, LLOCO_STORE_CREATE, &s.store);
    }
    if (!rc) rc = lloco_retriever_open(s.store, &o.ixp, &s.ret);
    progress_state ps = {.tty = isatty(2)};
    lloco_ingest_callbacks cb = {on_progress, on_problem, &ps};
    lloco_ingester *ing = NULL;
    if (!rc) rc = lloco_ingester_create(s.comp, s.emb, s.store, s.ret, o.group, &cb, &ing);
    if (rc) {
        free(o.args);
        session_close(&s);
        return cli_fail(rc);
    }
    int64_t total = 0;
    for (int i = 0; i < o.n_args; i++) {
        struct stat st;
        if (strcmp(o.args[i], "-") && stat(o.args[i], &st) == 0) total += st.st_size;
    }
    lloco_ingester_expect_bytes(ing, total);
    for (int i = 0; i < o.n_args && !rc; i++) rc = lloco_ingest_file(ing, o.args[i]);
    if (!rc) rc = lloco_ingest_finish(ing);
    const lloco_ingest_stats *st = lloco_ingester_stats(ing);
    if (ps.tty) fprintf(stderr, "\r\033[K");
    fprintf(stderr,
            "ingested %lld documents (%lld unchanged, %lld skipped, %lld files unreadable), "
            "%lld chunks, %lld tokens in "
            "%.1fs: %.0f tok/s (compress %.1fs, embed %.1fs, store %.1fs)\n",
            (long long)st->docs_written, (long long)st->docs_unchanged, (long long)st->docs_rejected,
            (long long)st->files_failed,
            (long long)st->chunks, (long long)st->tokens, st->seconds,
            st->seconds > 0 ? (double)st->tokens / st->seconds : 0.0, st->compress_seconds,
            st->embed_seconds, st->store_seconds);
    /* skipped input makes the run fail (what was valid is stored) */
    int skipped = st->docs_rejected || st->files_failed;
    lloco_ingester_free(ing);
    free(o.args);
    session_close(&s);
    if (rc) return cli_fail(rc);
    return skipped ? 1 : 0;
}

/* ---- search ---------------------------------------------------------------- */

/* Prints up to max bytes of s on one line: whitespace runs become one space,
 * and the cut falls on a UTF-8 character boundary. */
static void print_preview(FILE *f, const char *s, size_t n, size_t max) {
    size_t out = 0;
    int space = 0;
    for (size_t i = 0; i < n && out < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
            space = out > 0;
            continue;
        }
        if (space) {
            fputc(' ', f);
            out++;
            space = 0;
        }
        int k = lloco_utf8_seq_len(c);
        if (k == 0 || i + (size_t)k > n) k = 1;
        if (out + (size_t)k > max && k > 1) break;
        fwrite(s + i, 1, (size_t)k, f);
        out += (size_t)k;
        i += (size_t)k - 1;
    }
    if (out >= max) fputs("...", f);
}

static void json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

int cmd_search(int argc, char **argv) {
    store_opts o;
    int rc = parse_store_opts(argc, argv, " --store --group -g -k --embedder --threads --json --hnsw-threshold ", &o);
    if (rc) return rc;
    if (o.n_args == 0) {
        free(o.args);
        return cli_usage_error("usage: lloco search --store DIR [--group G] [-k K] QUESTION%s", "");
    }
    /* the question: the remaining arguments joined by spaces */
    size_t qlen = 0;
    for (int i = 0; i < o.n_args; i++) qlen += strlen(o.args[i]) + 1;
    char *question = malloc(qlen + 1);
    store_session s;
    memset(&s, 0, sizeof s);
    rc = question ? 0 : lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    if (!rc) {
        question[0] = '\0';
        for (int i = 0; i < o.n_args; i++) {
            if (i) strcat(question, " ");
            strcat(question, o.args[i]);
        }
        rc = open_for_search(&s, &o);
    }
    float *q = NULL;
    lloco_hit *hits = calloc((size_t)o.k, sizeof *hits);
    int n_hits = 0;
    if (!rc) {
        q = malloc(sizeof(float) * (size_t)lloco_embedder_dim(s.emb));
        size_t len = strlen(question);
        const char *texts[1] = {question};
        rc = q && hits ? lloco_embedder_embed(s.emb, texts, &len, 1, q)
                       : lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    lloco_store_txn *t = NULL;
    if (!rc) rc = lloco_store_read_begin(s.store, &t);
    if (!rc) rc = lloco_retriever_search(s.ret, t, q, o.k, o.group, hits, &n_hits);
    if (!rc && !o.json && n_hits == 0)
        printf("no chunks%s%s\n", o.group ? " in group " : "", o.group ? o.group : "");
    if (!rc && o.json) printf("[");
    for (int i = 0; !rc && i < n_hits; i++) {
        lloco_chunk_view c;
        lloco_doc_view d;
        rc = lloco_store_get_chunk(t, hits[i].chunk_id, &c);
        if (!rc) rc = lloco_store_get_doc(t, c.doc_id, &d);
        if (rc) break;
        if (o.json) {
            printf("%s{\"rank\":%d,\"score\":%.4f,\"chunk_id\":%llu,\"doc_id\":", i ? "," : "", i + 1,
                   hits[i].score, (unsigned long long)c.id);
            json_string(stdout, d.id, strlen(d.id));
            printf(",\"title\":");
            json_string(stdout, d.title, strlen(d.title));
            printf(",\"group\":");
            json_string(stdout, d.group, strlen(d.group));
            printf(",\"ordinal\":%u,\"tokens\":[%u,%u],\"text\":", c.ordinal, c.tok_begin, c.tok_end);
            json_string(stdout, c.text, c.text_len);
            printf("}");
        } else {
            printf("%d. %.4f  %s  \"%s\"  chunk %u/%u (tokens %u-%u)\n   ", i + 1, hits[i].score,
                   d.id, d.title, c.ordinal + 1, d.n_chunks, c.tok_begin, c.tok_end);
            print_preview(stdout, c.text, c.text_len, 160);
            printf("\n");
        }
    }
    if (!rc && o.json) printf("]\n");
    if (t) lloco_store_read_end(t);
    free(q);
    free(hits);
    free(question);
    free(o.args);
    session_close(&s);
    return rc ? cli_fail(rc) : 0;
}

/* ---- stats, reindex -------------------------------------------------------- */

int cmd_stats(int argc, char **argv) {
    store_opts o;
    int rc = parse_store_opts(argc, argv, " --store ", &o);
    if (rc) return rc;
    free(o.args);
    if (o.n_args) return cli_usage_error("usage: lloco stats --store DIR%s", "");
    lloco_store *st = NULL;
    lloco_index *ix = NULL;
    lloco_store_stats ss;
    rc = lloco_store_open(o.store, NULL, LLOCO_STORE_READONLY, &st);
    if (!rc) rc = lloco_store_stats_get(st, &ss);
    if (rc) {
        lloco_store_close(st);
        return cli_fail(rc);
    }
    const lloco_store_fingerprint *fp = lloco_store_fingerprint_of(st);
    printf("store        %s\n", o.store);
    printf("documents    %llu in %llu groups\n", (unsigned long long)ss.n_docs,
           (unsigned long long)ss.n_groups);
    printf("chunks       %llu (%llu slots for %llu tokens: %.1fx compression)\n",
           (unsigned long long)ss.n_chunks, (unsigned long long)ss.n_slots,
           (unsigned long long)ss.n_tokens, ss.n_slots ? (double)ss.n_tokens / (double)ss.n_slots : 0.0);
    printf("generation   %llu\n", (unsigned long long)ss.generation);
    printf("size         %.1f MiB used of a %.1f MiB map\n", ss.used_bytes / 1048576.0,
           ss.map_bytes / 1048576.0);
    printf("encoder      %s, model %s, %d slots per %d-token segment%s, %s slots of %d, "
           "summary embeddings from %s%s%s\n",
           fp->method, fp->model_hash, fp->n_summary, fp->segment_tokens,
           fp->accumulate ? " (accumulating)" : "", lloco_dtype_name(fp->slot_dtype), fp->d_model,
           fp->summary_init, fp->encoder_lora[0] ? ", encoder LoRA " : "", fp->encoder_lora);
    printf("embedder     %s, %d-d\n", fp->embedder_hash, fp->embed_dim);
    char path[4096];
    snprintf(path, sizeof path, "%s/index.faiss", o.store);
    uint64_t gen = 0;
    int irc = lloco_index_load(path, fp->embed_dim, &gen, &ix);
    if (irc == 0)
        printf("index        %s, %lld vectors, generation %llu%s\n",
               lloco_index_is_hnsw(ix) ? "HNSW" : "flat", (long long)lloco_index_size(ix),
               (unsigned long long)gen, gen == ss.generation ? "" : " (stale: rebuilt on next use)");
    else
        printf("index        %s (rebuilt on next use)\n",
               irc == LLOCO_ERR_NOTFOUND ? "missing" : lloco_last_error());
    lloco_index_free(ix);
    lloco_store_close(st);
    return 0;
}

int cmd_reindex(int argc, char **argv) {
    store_opts o;
    int rc = parse_store_opts(argc, argv, " --store --hnsw-threshold ", &o);
    if (rc) return rc;
    free(o.args);
    if (o.n_args) return cli_usage_error("usage: lloco reindex --store DIR [--hnsw-threshold N]%s", "");
    lloco_store *st = NULL;
    lloco_retriever *r = NULL;
    double t0 = lloco_time_now();
    rc = lloco_store_open(o.store, NULL, 0, &st);
    if (!rc) rc = lloco_retriever_open(st, &o.ixp, &r);
    /* open already rebuilt a missing or stale index: do not build twice */
    if (!rc && !lloco_retriever_rebuilt(r)) rc = lloco_retriever_reindex(r);
    if (!rc)
        printf("reindexed %s: %lld vectors in %.2fs\n", o.store, (long long)lloco_retriever_size(r),
               lloco_time_now() - t0);
    lloco_retriever_close(r);
    lloco_store_close(st);
    return rc ? cli_fail(rc) : 0;
}
