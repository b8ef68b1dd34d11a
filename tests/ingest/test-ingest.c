/* The ingester end to end on the tiny fixture models: what a document
 * becomes in the store (chunk texts, slots, vectors), idempotent re-ingest,
 * replacement, bad input reported with file and line, the index rebuilt
 * when missing or damaged, and crash consistency under SIGKILL of
 * `lloco ingest` at random moments.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ingest/ingest.h"
#include "test.h"

#define TINY_MODEL "compressor/hf-ac"
#define TINY_EMBEDDER "embedder/tiny"
#define SEG 16
#define NS 4

/* ---- fixtures ------------------------------------------------------------ */

typedef struct {
    char dir[256];
    lloco_model *m;
    lloco_decoder *d;
    lloco_compressor *c;
    lloco_embedder *e;
    lloco_store *s;
    lloco_retriever *r;
    lloco_ingester *ing;
    char problems[4096];
    int n_problems;
} rig;

static void on_problem(void *ctx, const char *where, const char *why) {
    rig *g = ctx;
    size_t n = strlen(g->problems);
    snprintf(g->problems + n, sizeof g->problems - n, "%s: %s\n", where, why);
    g->n_problems++;
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_rf(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int rig_open_store(rig *g) {
    lloco_store_fingerprint fp;
    int rc = lloco_compressor_fingerprint(g->c, &fp);
    if (rc) return rc;
    snprintf(fp.embedder_hash, sizeof fp.embedder_hash, "%s", lloco_embedder_hash(g->e));
    fp.embed_dim = lloco_embedder_dim(g->e);
    char store[300];
    snprintf(store, sizeof store, "%s/store", g->dir);
    lloco_ingest_callbacks cb = {NULL, on_problem, g};
    if ((rc = lloco_store_open(store, &fp, LLOCO_STORE_CREATE, &g->s))) return rc;
    if ((rc = lloco_retriever_open(g->s, NULL, &g->r))) return rc;
    return lloco_ingester_create(g->c, g->e, g->s, g->r, "", &cb, &g->ing);
}

static void rig_close_store(rig *g) {
    lloco_ingester_free(g->ing);
    lloco_retriever_close(g->r);
    lloco_store_close(g->s);
    g->ing = NULL;
    g->r = NULL;
    g->s = NULL;
}

static int rig_open(rig *g) {
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "/tmp/lloco-test-ingest-XXXXXX");
    if (!mkdtemp(g->dir)) return lloco_error(LLOCO_ERR_IO, "mkdtemp failed");
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = 2;
    lloco_compress_params cp;
    lloco_compress_params_default(&cp, LLOCO_COMPRESS_AUTOCOMPRESSOR);
    cp.segment_tokens = SEG;
    cp.n_summary = NS;
    int rc = lloco_model_open(lloco_test_fixture(TINY_MODEL), &g->m);
    if (!rc) rc = lloco_decoder_create(g->m, &dp, &g->d);
    if (!rc) rc = lloco_compressor_create(g->d, &cp, &g->c);
    if (!rc) rc = lloco_embedder_open(lloco_test_fixture(TINY_EMBEDDER), lloco_decoder_backend(g->d), &g->e);
    if (!rc) rc = rig_open_store(g);
    return rc;
}

static void rig_close(rig *g) {
    rig_close_store(g);
    lloco_embedder_close(g->e);
    lloco_compressor_free(g->c);
    lloco_decoder_free(g->d);
    lloco_model_close(g->m);
    rm_rf(g->dir);
}

static int write_file(const char *path, const char *text, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fwrite(text, 1, len, f);
    return fclose(f);
}

/* Words, punctuation and a few multi-byte characters, so segment boundaries
 * land inside UTF-8 sequences. */
static char *make_text(unsigned seed, int words) {
    static const char *w[] = {"the", "river", "ran", "quickly", "past", "é", "old", "mill,",
                              "and", "wheels", "turned.", "日本", "stone", "bridge;", "night"};
    char *s = malloc((size_t)words * 12 + 1);
    size_t n = 0;
    for (int i = 0; i < words; i++) {
        seed = seed * 1103515245u + 12345u;
        const char *x = w[(seed >> 16) % (sizeof w / sizeof *w)];
        n += (size_t)sprintf(s + n, "%s%s", i ? " " : "", x);
    }
    return s;
}

/* ---- the document in the store ------------------------------------------- */

typedef struct {
    const char *doc_id;
    char *text;
    size_t len;
    int n;
} concat_ctx;

static int concat_chunk(void *ctx, const lloco_chunk_view *c) {
    concat_ctx *x = ctx;
    if (strcmp(c->doc_id, x->doc_id) != 0) return 0;
    CHECK(c->ordinal == (uint32_t)x->n);
    memcpy(x->text + x->len, c->text, c->text_len);
    x->len += c->text_len;
    x->n++;
    return 0;
}

static int collect_slots(void *ctx, int seg, int tb, int te, const void *slots) {
    (void)tb;
    (void)te;
    uint8_t *dst = ctx;
    size_t per = (size_t)NS * 256 * 2; /* f16 */
    memcpy(dst + per * (size_t)seg, slots, per);
    return 0;
}

TEST_CASE(ingest_document_in_store) {
    rig g;
    int rc = rig_open(&g);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    char *text = make_text(7, 120);
    lloco_doc_src d = {.id = "doc-a", .title = "A", .group = "g1", .text = text, .len = strlen(text)};
    CHECK_OK(lloco_ingest_doc(g.ing, &d));
    CHECK(lloco_ingester_stats(g.ing)->docs_written == 1);

    lloco_store_txn *t;
    CHECK_OK(lloco_store_read_begin(g.s, &t));
    lloco_doc_view dv;
    CHECK_OK(lloco_store_get_doc(t, "doc-a", &dv));
    CHECK(!strcmp(dv.group, "g1") && !strcmp(dv.title, "A"));
    /* the chunks' texts are the document, in order, cut on characters */
    concat_ctx cc = {.doc_id = "doc-a", .text = calloc(d.len + 1, 1)};
    CHECK_OK(lloco_store_foreach_chunk(t, concat_chunk, &cc));
    CHECK(cc.n == (int)dv.n_chunks && cc.n > 2);
    CHECK(cc.len == d.len && !memcmp(cc.text, text, d.len));
    /* slots are the compressor's, vectors the embedder's on the chunk text */
    const lloco_tokenizer *tok = lloco_model_tokenizer(g.m);
    int32_t ids[2048];
    int n_ids;
    CHECK_OK(lloco_tokenizer_encode(tok, text, d.len, 0, 0, ids, 2048, &n_ids));
    CHECK((uint64_t)n_ids == dv.n_tokens);
    uint8_t *slots = calloc((size_t)dv.n_chunks, (size_t)NS * 256 * 2);
    CHECK_OK(lloco_compress(g.c, ids, n_ids, collect_slots, slots));
    float vec[1024];
    for (uint32_t i = 0; i < dv.n_chunks; i++) {
        lloco_chunk_view cv;
        CHECK_OK(lloco_store_get_chunk(t, dv.first_chunk + i, &cv));
        CHECK(cv.n_slots == NS && cv.d_model == 256 && cv.slot_dtype == LLOCO_DTYPE_F16);
        CHECKF(!memcmp(cv.slots, slots + (size_t)i * NS * 256 * 2, (size_t)NS * 256 * 2),
               "chunk %u slots differ from the compressor's", i);
        const char *tx[1] = {cv.text};
        size_t ln = cv.text_len;
        CHECK_OK(lloco_embedder_embed(g.e, tx, &ln, 1, vec));
        CHECKF(!memcmp(vec, cv.vec, sizeof(float) * (size_t)cv.dim), "chunk %u vector differs", i);
        /* its own vector finds it first */
        lloco_hit hits[3];
        int nh;
        CHECK_OK(lloco_retriever_search(g.r, t, cv.vec, 3, NULL, hits, &nh));
        CHECK(nh >= 1 && hits[0].chunk_id == cv.id);
        CHECK_OK(lloco_retriever_search(g.r, t, cv.vec, 3, "other-group", hits, &nh));
        CHECK(nh == 0);
    }
    lloco_store_read_end(t);
    uint64_t gen = lloco_store_generation(g.s);

    /* the same content again: nothing written */
    CHECK_OK(lloco_ingest_doc(g.ing, &d));
    CHECK(lloco_ingester_stats(g.ing)->docs_unchanged == 1);
    CHECK(lloco_store_generation(g.s) == gen);
    /* new content under the same id replaces it; the old chunks are gone */
    char *text2 = make_text(8, 40);
    lloco_doc_src d2 = d;
    d2.text = text2;
    d2.len = strlen(text2);
    CHECK_OK(lloco_ingest_doc(g.ing, &d2));
    CHECK_OK(lloco_store_read_begin(g.s, &t));
    lloco_chunk_view cv;
    CHECK_ERR(lloco_store_get_chunk(t, dv.first_chunk, &cv), LLOCO_ERR_NOTFOUND);
    lloco_doc_view dv2;
    CHECK_OK(lloco_store_get_doc(t, "doc-a", &dv2));
    CHECK(dv2.n_tokens < dv.n_tokens);
    /* searches skip the replaced chunks the index still holds */
    CHECK_OK(lloco_store_get_chunk(t, dv2.first_chunk, &cv));
    lloco_hit hits[64];
    int nh;
    CHECK_OK(lloco_retriever_search(g.r, t, cv.vec, 64, NULL, hits, &nh));
    CHECK(nh == (int)dv2.n_chunks);
    for (int i = 0; i < nh; i++) CHECK(hits[i].chunk_id >= dv2.first_chunk);
    lloco_store_read_end(t);
    free(cc.text);
    free(slots);
    free(text);
    free(text2);
    rig_close(&g);
}

/* ---- bad input ------------------------------------------------------------ */

TEST_CASE(ingest_bad_input_reported) {
    rig g;
    int rc = rig_open(&g);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    char p[400];
    const char *jsonl = "{\"id\":\"j1\",\"title\":\"One\",\"group\":\"g\",\"text\":\"the river ran\"}\n"
                        "{\"id\":\"j2\",\"text\":\n"
                        "\n"
                        "[1,2]\n"
                        "{\"id\":\"j3\",\"title\":\"x\"}\n"
                        "{\"id\":7,\"text\":\"number id\"}\n"
                        "{\"id\":\"j4\",\"text\":\"   \"}\n"
                        "{\"text\":\"no id given\"}\n";
    snprintf(p, sizeof p, "%s/in.jsonl", g.dir);
    CHECK(write_file(p, jsonl, strlen(jsonl)) == 0);
    CHECK_OK(lloco_ingest_file(g.ing, p));
    snprintf(p, sizeof p, "%s/bad.txt", g.dir);
    CHECK(write_file(p, "fine line\nsecond \xff\xfe line\n", 25) == 0);
    CHECK_OK(lloco_ingest_file(g.ing, p));
    snprintf(p, sizeof p, "%s/notes.md", g.dir);
    CHECK(write_file(p, "intro\n# The Title\nbody text here\n", 33) == 0);
    CHECK_OK(lloco_ingest_file(g.ing, p));
    snprintf(p, sizeof p, "%s/file.pdf", g.dir);
    CHECK(write_file(p, "x", 1) == 0);
    CHECK_OK(lloco_ingest_file(g.ing, p));
    snprintf(p, sizeof p, "%s/missing.txt", g.dir);
    CHECK_OK(lloco_ingest_file(g.ing, p));

    const lloco_ingest_stats *st = lloco_ingester_stats(g.ing);
    CHECKF(st->docs_written == 3, "written %lld", (long long)st->docs_written); /* j1, no-id, notes.md */
    CHECKF(st->docs_rejected == 6, "rejected %lld:\n%s", (long long)st->docs_rejected, g.problems);
    CHECK(st->files_failed == 2);
    const char *want[] = {"in.jsonl:2: not a JSON object: malformed JSON",
                          "in.jsonl:4: not a JSON object",
                          "in.jsonl:5: no \"text\"",
                          "in.jsonl:6: \"id\", \"title\", \"group\" and \"text\" must be strings",
                          "in.jsonl:7: empty document 'j4'",
                          "bad.txt: invalid UTF-8 at byte 17 (line 2 of the text)",
                          "file.pdf: unsupported file type",
                          "missing.txt: "};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECKF(strstr(g.problems, want[i]) != NULL, "no problem '%s' in:\n%s", want[i], g.problems);
    lloco_store_txn *t;
    CHECK_OK(lloco_store_read_begin(g.s, &t));
    lloco_doc_view dv;
    CHECK_OK(lloco_store_get_doc(t, "j1", &dv));
    CHECK(!strcmp(dv.title, "One") && !strcmp(dv.group, "g"));
    CHECK_OK(lloco_store_get_doc(t, "in.jsonl:8", &dv));
    snprintf(p, sizeof p, "%s/notes.md", g.dir);
    CHECK_OK(lloco_store_get_doc(t, p, &dv));
    CHECK(!strcmp(dv.title, "The Title"));
    CHECK_ERR(lloco_store_get_doc(t, "j4", &dv), LLOCO_ERR_NOTFOUND);
    lloco_store_read_end(t);
    rig_close(&g);
}

/* ---- the index is derived data --------------------------------------------- */

TEST_CASE(ingest_index_rebuilt_when_missing_or_damaged) {
    rig g;
    int rc = rig_open(&g);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    for (int i = 0; i < 4; i++) {
        char id[16];
        char *text = make_text((unsigned)i, 50);
        snprintf(id, sizeof id, "d%d", i);
        lloco_doc_src d = {.id = id, .text = text, .len = strlen(text)};
        CHECK_OK(lloco_ingest_doc(g.ing, &d));
        free(text);
    }
    CHECK_OK(lloco_ingest_finish(g.ing));
    int64_t n = lloco_retriever_size(g.r);
    CHECK(n > 4);
    char idx[400];
    snprintf(idx, sizeof idx, "%s/store/index.faiss", g.dir);
    for (int round = 0; round < 4; round++) {
        rig_close_store(&g);
        if (round == 0) {
            CHECK(unlink(idx) == 0);
        } else if (round == 1) {
            FILE *f = fopen(idx, "r+b");
            CHECK(f != NULL);
            if (f) {
                fseek(f, 40, SEEK_SET);
                fwrite("garbage!garbage!", 1, 16, f);
                fclose(f);
            }
        } else if (round == 2) {
            CHECK(truncate(idx, 30) == 0);
        }
        CHECK_OK(rig_open_store(&g));
        if (!g.r) break;
        const char *why = lloco_retriever_rebuilt(g.r);
        if (round == 3) CHECKF(why == NULL, "round 3 rebuilt: %s", why);
        else CHECKF(why != NULL, "round %d: the index was not rebuilt", round);
        if (why) fprintf(stderr, "  round %d rebuilt: %s\n", round, why);
        CHECK(lloco_retriever_size(g.r) == n);
    }
    rig_close(&g);
}

/* ---- crash consistency ------------------------------------------------------ */

typedef struct {
    lloco_store_txn *t;
    int bad;
    uint64_t n;
} verify_ctx;

static int verify_chunk(void *ctx, const lloco_chunk_view *c) {
    verify_ctx *v = ctx;
    lloco_doc_view d;
    if (lloco_store_get_doc(v->t, c->doc_id, &d) != 0 || c->id < d.first_chunk ||
        c->id >= d.first_chunk + d.n_chunks)
        v->bad++;
    v->n++;
    return 0;
}

static int verify_doc(void *ctx, const lloco_doc_view *d) {
    verify_ctx *v = ctx;
    for (uint32_t i = 0; i < d->n_chunks; i++) {
        lloco_chunk_view c;
        if (lloco_store_get_chunk(v->t, d->first_chunk + i, &c) != 0 || strcmp(c.doc_id, d->id) ||
            c.ordinal != i)
            v->bad++;
    }
    v->n++;
    return 0;
}

/* Whole documents only, every chunk owned, and the index (after reopen)
 * holding exactly the chunks. Returns the number of documents, -1 when the
 * store does not exist yet. */
static int64_t verify_store(const char *dir) {
    struct stat st;
    char p[400];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    if (stat(p, &st) != 0) return -1;
    lloco_store *s = NULL;
    lloco_retriever *r = NULL;
    int rc = lloco_store_open(dir, NULL, 0, &s);
    if (rc == LLOCO_ERR_NOTFOUND) return -1; /* killed before the first commit */
    CHECK_OK(rc);
    if (rc) return -2;
    lloco_store_txn *t;
    verify_ctx docs = {0}, chunks = {0};
    CHECK_OK(lloco_store_read_begin(s, &t));
    docs.t = chunks.t = t;
    CHECK_OK(lloco_store_foreach_doc(t, verify_doc, &docs));
    CHECK_OK(lloco_store_foreach_chunk(t, verify_chunk, &chunks));
    lloco_store_read_end(t);
    CHECKF(docs.bad == 0 && chunks.bad == 0, "%d broken documents, %d orphan chunks", docs.bad,
           chunks.bad);
    CHECK_OK(lloco_retriever_open(s, NULL, &r));
    if (r) CHECKF(lloco_retriever_size(r) == (int64_t)chunks.n, "index %lld, store %llu chunks",
                  (long long)lloco_retriever_size(r), (unsigned long long)chunks.n);
    lloco_retriever_close(r);
    lloco_store_close(s);
    return (int64_t)docs.n;
}

static pid_t spawn_ingest(const char *store, const char *input) {
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(LLOCO_BINARY, "lloco", "ingest", "--store", store, "-m", lloco_test_fixture(TINY_MODEL),
              "--embedder", lloco_test_fixture(TINY_EMBEDDER), "--segment-tokens", "16",
              "--n-summary", "4", "--threads", "1", input, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int run_ingest(const char *store, const char *input) {
    int status;
    waitpid(spawn_ingest(store, input), &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Makes dir (a mkdtemp template) and names an input file and a store in it. */
static int make_dir(char *dir, const char *input_name, char input[300], char store[300]) {
    if (!mkdtemp(dir)) return -1;
    snprintf(input, 300, "%s/%s", dir, input_name);
    snprintf(store, 300, "%s/store", dir);
    return 0;
}

static void write_doc(const char *path, const char *id, unsigned seed) {
    char *text = make_text(seed, 60);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"id\":\"%s\",\"text\":\"%s\"}\n", id, text);
    fclose(f);
    free(text);
}

/* A long-lived retriever (a server's) finds what `lloco ingest` wrote
 * beside it, and not the chunks of a document it replaced. */
TEST_CASE(ingest_by_another_process_is_searched) {
    char dir[] = "/tmp/lloco-test-other-XXXXXX", input[300], store[300];
    CHECK(make_dir(dir, "doc.jsonl", input, store) == 0);
    write_doc(input, "doc-a", 1);
    CHECK(run_ingest(store, input) == 0);
    lloco_store *s = NULL;
    lloco_retriever *r = NULL;
    CHECK_OK(lloco_store_open(store, NULL, 0, &s));
    if (s) CHECK_OK(lloco_retriever_open(s, NULL, &r));
    if (!r) {
        lloco_store_close(s);
        rm_rf(dir);
        return;
    }
    const int64_t before = lloco_retriever_size(r);
    write_doc(input, "doc-b", 2);
    CHECK(run_ingest(store, input) == 0);

    lloco_store_txn *t;
    lloco_doc_view d;
    lloco_chunk_view c;
    lloco_hit hits[4];
    int n = 0;
    float old_vec[64];
    uint64_t old_id = 0;
    CHECK_OK(lloco_store_read_begin(s, &t));
    CHECK_OK(lloco_store_get_doc(t, "doc-b", &d));
    CHECK_OK(lloco_store_get_chunk(t, d.first_chunk, &c));
    CHECK(c.dim <= 64);
    memcpy(old_vec, c.vec, sizeof(float) * (size_t)c.dim);
    old_id = c.id;
    CHECK_OK(lloco_retriever_search(r, t, c.vec, 1, NULL, hits, &n));
    CHECK(n == 1 && hits[0].chunk_id == c.id);
    CHECK(lloco_retriever_size(r) == before + (int64_t)d.n_chunks);
    lloco_store_read_end(t);

    /* doc-b again with other text: its old chunks are gone from searches */
    write_doc(input, "doc-b", 3);
    CHECK(run_ingest(store, input) == 0);
    CHECK_OK(lloco_store_read_begin(s, &t));
    CHECK_OK(lloco_store_get_doc(t, "doc-b", &d));
    CHECK(d.first_chunk > old_id);
    CHECK_OK(lloco_retriever_search(r, t, old_vec, 4, NULL, hits, &n));
    CHECK(n >= 1);
    for (int i = 0; i < n; i++) CHECK(hits[i].chunk_id != old_id);
    CHECK_OK(lloco_store_get_chunk(t, d.first_chunk, &c));
    CHECK_OK(lloco_retriever_search(r, t, c.vec, 1, NULL, hits, &n));
    CHECK(n == 1 && hits[0].chunk_id == c.id);
    lloco_store_read_end(t);
    lloco_retriever_close(r);
    lloco_store_close(s);
    rm_rf(dir);
}

/* Two `lloco ingest` runs at once on one store: every document whole, and
 * the index file the last one saved (or its rebuild) holds each chunk once. */
TEST_CASE(ingest_two_writers) {
    char dir[] = "/tmp/lloco-test-two-XXXXXX", seed[300], store[300], input[2][300];
    CHECK(make_dir(dir, "seed.jsonl", seed, store) == 0);
    for (int w = 0; w < 2; w++) {
        snprintf(input[w], sizeof input[w], "%s/docs-%d.jsonl", dir, w);
        FILE *f = fopen(input[w], "w");
        for (int i = 0; i < 15; i++) {
            char *text = make_text((unsigned)(w * 100 + i) * 17u + 5u, 30 + (i * 13) % 50);
            fprintf(f, "{\"id\":\"w%d-%02d\",\"text\":\"%s\"}\n", w, i, text);
            free(text);
        }
        fclose(f);
    }
    /* the store exists before both start */
    write_doc(seed, "seed", 9);
    CHECK(run_ingest(store, seed) == 0);
    pid_t pid[2] = {spawn_ingest(store, input[0]), spawn_ingest(store, input[1])};
    for (int w = 0; w < 2; w++) {
        int status;
        waitpid(pid[w], &status, 0);
        CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d: status %d", w, status);
    }
    CHECK(verify_store(store) == 31);
    rm_rf(dir);
}

TEST_CASE(ingest_survives_sigkill) {
    char dir[] = "/tmp/lloco-test-crash-XXXXXX", input[300], store[300];
    CHECK(make_dir(dir, "docs.jsonl", input, store) == 0);
    const int n_docs = 60;
    FILE *f = fopen(input, "w");
    for (int i = 0; i < n_docs; i++) {
        char *text = make_text((unsigned)i * 31u + 1u, 20 + (i * 37) % 90);
        fprintf(f, "{\"id\":\"doc-%03d\",\"group\":\"g%d\",\"text\":\"%s\"}\n", i, i % 3, text);
        free(text);
    }
    fclose(f);
    /* how long a whole run takes, to spread the kills over it */
    double t0 = lloco_time_now();
    int status;
    pid_t pid = spawn_ingest(store, input);
    waitpid(pid, &status, 0);
    double full = lloco_time_now() - t0;
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "clean ingest run: status %d", status);
    CHECK(verify_store(store) == n_docs);
    rm_rf(store);

    srand((unsigned)time(NULL));
    int kills = 0, progressed = 0;
    int64_t last = -1;
    for (int round = 0; round < 12; round++) {
        pid = spawn_ingest(store, input);
        /* each run resumes the last; killed early in its run, it leaves
         * work for the next ones (startup included) */
        useconds_t us = (useconds_t)(full * 1e6 * (0.02 + 0.33 * rand() / (double)RAND_MAX));
        usleep(us);
        if (kill(pid, SIGKILL) == 0) kills++;
        waitpid(pid, &status, 0);
        int64_t n = verify_store(store);
        if (n > last) progressed++;
        last = n;
    }
    fprintf(stderr, "  %d kills, store grew %d times, %lld of %d documents before the final run\n",
            kills, progressed, (long long)last, n_docs);
    CHECK(kills >= 10);
    /* the last run finishes the job without duplicates */
    pid = spawn_ingest(store, input);
    waitpid(pid, &status, 0);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "final ingest run: status %d", status);
    CHECK(verify_store(store) == n_docs);
    rm_rf(dir);
}
