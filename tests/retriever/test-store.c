/* Tests of the LMDB store: documents, chunks and groups survive a reopen
 * byte for byte and aligned; re-puts, deletes, fingerprint and schema checks,
 * map growth, input validation, damaged files, and readers racing a writer.
 */
#include <fcntl.h>
#include <ftw.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "retriever/retriever.h"
#include "tests/test.h"

/* ---- helpers -------------------------------------------------------------- */

static void tmpdir_make(char *dir) {
    strcpy(dir, "/tmp/lloco-store-XXXXXX");
    LLOCO_ASSERT(mkdtemp(dir));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void tmpdir_remove(const char *dir) { nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

static lloco_store_fingerprint test_fp(int d_model, int n_summary, lloco_dtype dt, int dim) {
    lloco_store_fingerprint fp;
    memset(&fp, 0, sizeof fp);
    strcpy(fp.model_hash, "9f2c4e1a77d0b3c5");
    strcpy(fp.method, "autocompressor");
    fp.n_summary = n_summary;
    fp.segment_tokens = 64;
    fp.accumulate = 1;
    fp.d_model = d_model;
    fp.slot_dtype = dt;
    strcpy(fp.summary_init, "eos_row");
    strcpy(fp.embedder_hash, "0badc0de");
    fp.embed_dim = dim;
    return fp;
}

static lloco_store_fingerprint small_fp(void) { return test_fp(48, 4, LLOCO_DTYPE_F16, 8); }

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* The byte at position j of part `part` of chunk c of document (idx,
 * version): what a reader can recompute without the writer. */
static uint8_t pattern(int idx, int version, int c, int part, size_t j) {
    return (uint8_t)mix(((uint64_t)idx << 40) ^ ((uint64_t)version << 32) ^ ((uint64_t)c << 20) ^
                        ((uint64_t)part << 16) ^ (j * 0x9e3779b97f4a7c15ull));
}

static float vec_value(int idx, int version, int c, int j) {
    return (float)(pattern(idx, version, c, 3, (size_t)j) % 201) / 100.0f - 1.0f;
}

/* A generated document: its inputs and the buffers behind them. Shape:
 * n_chunks chunks of n_slots slots and text_len bytes of text. */
typedef struct {
    char id[64], title[64], group[16];
    lloco_doc_in doc;
    lloco_chunk_in *chunks;
    int n_chunks;
    uint8_t *bytes; /* slots, vecs and texts of all chunks */
    uint64_t ids[64];
} tdoc;

static void tdoc_make(tdoc *t, const lloco_store_fingerprint *fp, int idx, int version,
                      int n_chunks, int n_slots, size_t text_len) {
    memset(t, 0, sizeof *t);
    LLOCO_ASSERT(n_chunks <= 64);
    snprintf(t->id, sizeof t->id, "doc-%05d", idx);
    snprintf(t->title, sizeof t->title, "Title %d v%d — ünïcode", idx, version);
    snprintf(t->group, sizeof t->group, "g%d", idx % 3);
    t->doc = (lloco_doc_in){
        .id = t->id, .title = t->title, .group = t->group, .n_tokens = (uint64_t)n_chunks * 64};
    for (int i = 0; i < 16; i++) t->doc.content_hash[i] = pattern(idx, version, 0, 9, (size_t)i);
    t->n_chunks = n_chunks;
    t->chunks = calloc((size_t)n_chunks + 1, sizeof *t->chunks);
    size_t esz = fp->slot_dtype == LLOCO_DTYPE_F32 ? 4 : 2;
    size_t slots_bytes = (size_t)n_slots * (size_t)fp->d_model * esz;
    size_t vec_bytes = (size_t)fp->embed_dim * sizeof(float);
    size_t per = (vec_bytes + slots_bytes + text_len + 15) & ~(size_t)15;
    t->bytes = malloc(per * (size_t)n_chunks + 1);
    LLOCO_ASSERT(t->chunks && t->bytes);
    for (int c = 0; c < n_chunks; c++) {
        float *vec = (float *)(void *)(t->bytes + per * (size_t)c);
        uint8_t *slots = (uint8_t *)vec + vec_bytes;
        char *text = (char *)(slots + slots_bytes);
        for (size_t j = 0; j < slots_bytes; j++) slots[j] = pattern(idx, version, c, 1, j);
        for (int j = 0; j < fp->embed_dim; j++) vec[j] = vec_value(idx, version, c, j);
        for (size_t j = 0; j < text_len; j++) text[j] = (char)pattern(idx, version, c, 2, j);
        t->chunks[c] = (lloco_chunk_in){.ordinal = (uint32_t)c,
                                        .tok_begin = (uint32_t)c * 64,
                                        .tok_end = (uint32_t)c * 64 + 64,
                                        .text = text,
                                        .text_len = text_len,
                                        .n_slots = n_slots,
                                        .slots = slots,
                                        .vec = vec};
    }
}

static void tdoc_free(tdoc *t) {
    free(t->chunks);
    free(t->bytes);
}

static int put(lloco_store *s, tdoc *t) {
    int written = -1;
    int rc = lloco_store_put_doc(s, &t->doc, t->chunks, t->n_chunks, t->ids, &written);
    if (rc == 0 && written != 1) return LLOCO_ERR_EXISTS;
    return rc;
}

/* Compares a stored document and its chunks with what was put; returns
 * the number of differences (reported through CHECK). */
static int tdoc_check(lloco_store_txn *txn, const lloco_store_fingerprint *fp, const tdoc *t) {
    int before = lloco_test_case_failures();
    lloco_doc_view d;
    CHECK_OK(lloco_store_get_doc(txn, t->id, &d));
    if (lloco_test_case_failures() != before) return 1;
    CHECK(strcmp(d.id, t->id) == 0);
    CHECK(strcmp(d.title, t->title) == 0);
    CHECK(strcmp(d.group, t->group) == 0);
    CHECK(memcmp(d.content_hash, t->doc.content_hash, 16) == 0);
    CHECK(d.n_tokens == t->doc.n_tokens);
    CHECK(d.n_chunks == (uint32_t)t->n_chunks);
    for (int c = 0; c < t->n_chunks; c++) {
        const lloco_chunk_in *in = &t->chunks[c];
        lloco_chunk_view v;
        CHECK(t->ids[c] == d.first_chunk + (uint64_t)c);
        CHECK_OK(lloco_store_get_chunk(txn, d.first_chunk + (uint64_t)c, &v));
        if (lloco_test_case_failures() != before) return 1;
        size_t slots_bytes =
            (size_t)in->n_slots * (size_t)fp->d_model * (fp->slot_dtype == LLOCO_DTYPE_F32 ? 4 : 2);
        CHECK(v.id == d.first_chunk + (uint64_t)c);
        CHECK(strcmp(v.doc_id, t->id) == 0);
        CHECK(v.ordinal == in->ordinal && v.tok_begin == in->tok_begin && v.tok_end == in->tok_end);
        CHECK(v.text_len == in->text_len && memcmp(v.text, in->text, in->text_len) == 0);
        CHECK(v.slot_dtype == fp->slot_dtype && v.d_model == fp->d_model);
        CHECK(v.n_slots == in->n_slots);
        CHECK(memcmp(v.slots, in->slots, slots_bytes) == 0);
        CHECK(v.dim == fp->embed_dim && memcmp(v.vec, in->vec, sizeof(float) * (size_t)v.dim) == 0);
        CHECKF(((uintptr_t)v.slots & 15) == 0 && ((uintptr_t)v.vec & 15) == 0,
               "chunk %d: slots %p vec %p not 16-byte aligned", c, v.slots, (const void *)v.vec);
    }
    return lloco_test_case_failures() != before;
}

static uint64_t generation_now(lloco_store *s) {
    lloco_store_stats st;
    CHECK_OK(lloco_store_stats_get(s, &st));
    return st.generation;
}

typedef struct {
    int n;
    char seen[8][64];
} visit_log;

static int log_doc(void *ctx, const lloco_doc_view *d) {
    visit_log *l = ctx;
    snprintf(l->seen[l->n++], 64, "%s", d->id);
    return l->n == 2 ? 42 : 0;
}

static int count_chunk(void *ctx, const lloco_chunk_view *c) {
    (void)c;
    ++*(int *)ctx;
    return 0;
}

typedef struct {
    int n;
    uint64_t first, last;
} id_span;

static int span_chunk(void *ctx, const lloco_chunk_view *c) {
    id_span *s = ctx;
    if (s->n++ == 0) s->first = c->id;
    s->last = c->id;
    return 0;
}

static int log_group(void *ctx, const char *group, const char *adapter) {
    visit_log *l = ctx;
    snprintf(l->seen[l->n++], 64, "%s=%s", group, adapter);
    return 0;
}

/* ---- round trip ---------------------------------------------------------- */

TEST_CASE(store_roundtrip) {
    char dir[64];
    tmpdir_make(dir);
    lloco_store_fingerprint fp = small_fp();
    tdoc docs[3];
    /* Chunk values from tiny (padded to half a page) to several pages. */
    tdoc_make(&docs[0], &fp, 0, 1, 3, 4, 100);
    tdoc_make(&docs[1], &fp, 1, 1, 1, 0, 0);
    tdoc_make(&docs[2], &fp, 2, 1, 5, 2, 9000);

    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    CHECK(lloco_store_generation(s) == 0);
    for (int i = 0; i < 3; i++) CHECK_OK(put(s, &docs[i]));
    CHECK(lloco_store_generation(s) == 3);
    CHECK(docs[1].ids[0] == docs[0].ids[2] + 1);
    CHECK_OK(lloco_store_group_set(s, "g1", "adapter-one"));
    CHECK_OK(lloco_store_group_set(s, "g0", "adapter-zero"));
    CHECK_OK(lloco_store_group_set(s, "g0", "adapter-zero-b"));
    CHECK_OK(lloco_store_group_set(s, "g2", "tmp"));
    CHECK_OK(lloco_store_group_unset(s, "g2"));
    CHECK_ERR(lloco_store_group_unset(s, "g2"), LLOCO_ERR_NOTFOUND);
    CHECK(lloco_store_generation(s) == 3);
    lloco_store *again;
    CHECK_ERR(lloco_store_open(dir, &fp, 0, &again), LLOCO_ERR_EXISTS);
    lloco_store_close(s);

    CHECK_OK(lloco_store_open(dir, &fp, 0, &s));
    if (!s) goto out;
    CHECK(lloco_store_generation(s) == 3);
    CHECK(strcmp(lloco_store_dir(s), dir) == 0);
    lloco_store_txn *txn;
    CHECK_OK(lloco_store_read_begin(s, &txn));
    CHECK(lloco_store_txn_generation(txn) == 3);
    for (int i = 0; i < 3; i++) tdoc_check(txn, &fp, &docs[i]);
    lloco_doc_view dv;
    lloco_chunk_view cv;
    CHECK_ERR(lloco_store_get_doc(txn, "doc-nope", &dv), LLOCO_ERR_NOTFOUND);
    CHECK_ERR(lloco_store_get_doc(txn, "", &dv), LLOCO_ERR_NOTFOUND);
    CHECK_ERR(lloco_store_get_chunk(txn, 1000, &cv), LLOCO_ERR_NOTFOUND);
    visit_log log = {0};
    CHECK(lloco_store_foreach_doc(txn, log_doc, &log) == 42);
    CHECK(log.n == 2 && strcmp(log.seen[0], "doc-00000") == 0 &&
          strcmp(log.seen[1], "doc-00001") == 0);
    int n_chunks = 0;
    CHECK_OK(lloco_store_foreach_chunk(txn, count_chunk, &n_chunks));
    CHECK(n_chunks == 9);
    /* from an id: that chunk on; past the last: nothing */
    id_span sp = {0};
    CHECK_OK(lloco_store_foreach_chunk_from(txn, docs[1].ids[0], span_chunk, &sp));
    CHECK(sp.n == 6 && sp.first == docs[1].ids[0] && sp.last == docs[2].ids[4]);
    sp = (id_span){0};
    CHECK_OK(lloco_store_foreach_chunk_from(txn, docs[2].ids[4] + 1, span_chunk, &sp));
    CHECK(sp.n == 0);
    lloco_store_read_end(txn);

    char buf[64];
    CHECK_OK(lloco_store_group_get(s, "g0", buf, sizeof buf));
    CHECK(strcmp(buf, "adapter-zero-b") == 0);
    CHECK_ERR(lloco_store_group_get(s, "g0", buf, 5), LLOCO_ERR_RANGE);
    CHECK_ERR(lloco_store_group_get(s, "g2", buf, sizeof buf), LLOCO_ERR_NOTFOUND);
    log.n = 0;
    CHECK_OK(lloco_store_foreach_group(s, log_group, &log));
    CHECK(log.n == 2 && strcmp(log.seen[0], "g0=adapter-zero-b") == 0 &&
          strcmp(log.seen[1], "g1=adapter-one") == 0);

    lloco_store_stats st;
    CHECK_OK(lloco_store_stats_get(s, &st));
    CHECK(st.n_docs == 3 && st.n_chunks == 9 && st.n_groups == 2);
    CHECK(st.next_chunk == docs[2].ids[4] + 1);
    CHECK(st.n_tokens == 9 * 64 && st.n_slots == 3 * 4 + 5 * 2);
    CHECK(st.used_bytes > 0 && st.used_bytes <= st.map_bytes);

    CHECK_OK(lloco_store_delete_doc(s, "doc-00000"));
    CHECK_ERR(lloco_store_delete_doc(s, "doc-00000"), LLOCO_ERR_NOTFOUND);
    CHECK(lloco_store_generation(s) == 4);
    CHECK_OK(lloco_store_stats_get(s, &st));
    CHECK(st.n_docs == 2 && st.n_chunks == 6 && st.n_tokens == 6 * 64 && st.n_slots == 10);
    lloco_store_close(s);

    /* Read-only, and without a fingerprint: what was stored is used. */
    CHECK_OK(lloco_store_open(dir, NULL, LLOCO_STORE_READONLY, &s));
    if (!s) goto out;
    CHECK(lloco_store_fingerprint_diff(lloco_store_fingerprint_of(s), &fp, NULL, 0) == 0);
    CHECK_OK(lloco_store_read_begin(s, &txn));
    tdoc_check(txn, &fp, &docs[2]);
    CHECK_ERR(lloco_store_get_doc(txn, "doc-00000", &dv), LLOCO_ERR_NOTFOUND);
    CHECK_ERR(lloco_store_get_chunk(txn, docs[0].ids[0], &cv), LLOCO_ERR_NOTFOUND);
    lloco_store_read_end(txn);
    CHECK_ERR(put(s, &docs[0]), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_store_group_set(s, "g5", "x"), LLOCO_ERR_INVAL);
    lloco_store_close(s);
out:
    for (int i = 0; i < 3; i++) tdoc_free(&docs[i]);
    tmpdir_remove(dir);
}

TEST_CASE(store_reput) {
    char dir[64];
    tmpdir_make(dir);
    lloco_store_fingerprint fp = small_fp();
    tdoc v1, v2;
    tdoc_make(&v1, &fp, 7, 1, 3, 4, 50);
    tdoc_make(&v2, &fp, 7, 2, 2, 3, 70);
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    CHECK_OK(put(s, &v1));
    uint64_t gen = lloco_store_generation(s), ids[3];
    memcpy(ids, v1.ids, sizeof ids);

    /* Same content hash: nothing written, the stored ids reported. */
    int written = -1;
    uint64_t again[3] = {0};
    CHECK_OK(lloco_store_put_doc(s, &v1.doc, v1.chunks, v1.n_chunks, again, &written));
    CHECK(written == 0);
    CHECK(memcmp(again, ids, sizeof ids) == 0);
    CHECK(lloco_store_generation(s) == gen && generation_now(s) == gen);

    /* A new hash replaces the document; its old chunk ids are gone. */
    CHECK_OK(put(s, &v2));
    CHECK(lloco_store_generation(s) == gen + 1);
    CHECK(v2.ids[0] > ids[2]);
    lloco_store_txn *txn;
    CHECK_OK(lloco_store_read_begin(s, &txn));
    tdoc_check(txn, &fp, &v2);
    for (int i = 0; i < 3; i++) {
        lloco_chunk_view cv;
        CHECK_ERR(lloco_store_get_chunk(txn, ids[i], &cv), LLOCO_ERR_NOTFOUND);
    }
    lloco_store_read_end(txn);
    lloco_store_stats st;
    CHECK_OK(lloco_store_stats_get(s, &st));
    CHECK(st.n_docs == 1 && st.n_chunks == 2 && st.n_slots == 6 && st.n_tokens == 128);
    lloco_store_close(s);
out:
    tdoc_free(&v1);
    tdoc_free(&v2);
    tmpdir_remove(dir);
}

/* ---- opening ------------------------------------------------------------- */

TEST_CASE(store_open_errors) {
    char dir[64], sub[96];
    tmpdir_make(dir);
    lloco_store_fingerprint fp = small_fp();
    lloco_store *s;
    snprintf(sub, sizeof sub, "%s/a/b", dir);

    CHECK_ERR(lloco_store_open(sub, NULL, LLOCO_STORE_CREATE, &s), LLOCO_ERR_NOTFOUND);
    CHECK(strstr(lloco_last_error(), sub) != NULL);
    CHECK(s == NULL);
    CHECK_ERR(lloco_store_open(sub, &fp, 0, &s), LLOCO_ERR_NOTFOUND);
    CHECK_ERR(lloco_store_open(dir, NULL, 0, &s), LLOCO_ERR_NOTFOUND);
    CHECK(strstr(lloco_last_error(), dir) != NULL);
    CHECK_ERR(lloco_store_open(sub, &fp, LLOCO_STORE_CREATE | LLOCO_STORE_READONLY, &s),
              LLOCO_ERR_INVAL);
    lloco_store_fingerprint bad = fp;
    bad.slot_dtype = LLOCO_DTYPE_Q4_0;
    CHECK_ERR(lloco_store_open(sub, &bad, LLOCO_STORE_CREATE, &s), LLOCO_ERR_INVAL);
    bad = fp;
    strcpy(bad.method, "gist");
    CHECK_ERR(lloco_store_open(sub, &bad, LLOCO_STORE_CREATE, &s), LLOCO_ERR_INVAL);

    /* CREATE makes the missing parents. */
    CHECK_OK(lloco_store_open(sub, &fp, LLOCO_STORE_CREATE, &s));
    lloco_store_close(s);

    lloco_store_fingerprint other = fp;
    other.d_model = 64;
    strcpy(other.method, "icae");
    CHECK_ERR(lloco_store_open(sub, &other, 0, &s), LLOCO_ERR_MISMATCH);
    const char *msg = lloco_last_error();
    CHECKF(strstr(msg, "was written by a different encoder") && strstr(msg, sub) &&
               strstr(msg, "d_model: stored 48, given 64") && strstr(msg, "method") &&
               !strstr(msg, "n_summary"),
           "message: %s", msg);
    tmpdir_remove(dir);
}

/* Rewrites a value of one of the store's databases behind its back: with
 * val, or (val NULL) with the first keep bytes of the value there. */
static void poke(const char *dir, const char *db, const void *key, size_t klen, const void *val,
                 size_t keep) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    LLOCO_ASSERT(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 4) == 0 &&
                 mdb_env_open(env, dir, 0, 0644) == 0);
    LLOCO_ASSERT(mdb_txn_begin(env, NULL, 0, &txn) == 0 && mdb_dbi_open(txn, db, 0, &dbi) == 0);
    MDB_val k = {klen, (void *)key}, v = {keep, (void *)val};
    uint8_t *copy = NULL;
    if (!val) {
        LLOCO_ASSERT(mdb_get(txn, dbi, &k, &v) == 0 && v.mv_size >= keep);
        copy = malloc(keep);
        memcpy(copy, v.mv_data, keep);
        v = (MDB_val){keep, copy};
    }
    LLOCO_ASSERT(mdb_put(txn, dbi, &k, &v, 0) == 0 && mdb_txn_commit(txn) == 0);
    free(copy);
    mdb_env_close(env);
}

static void poke_schema(const char *dir, uint32_t version) {
    poke(dir, "meta", "schema_version", strlen("schema_version"), &version, sizeof version);
}

TEST_CASE(store_schema_newer) {
    char dir[64];
    tmpdir_make(dir);
    lloco_store_fingerprint fp = small_fp();
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    lloco_store_close(s);
    poke_schema(dir, LLOCO_STORE_SCHEMA_VERSION + 1);
    CHECK_ERR(lloco_store_open(dir, &fp, 0, &s), LLOCO_ERR_UNSUPPORTED);
    CHECKF(strstr(lloco_last_error(), "schema version 2") && strstr(lloco_last_error(), dir),
           "message: %s", lloco_last_error());
    poke_schema(dir, 0);
    CHECK_ERR(lloco_store_open(dir, NULL, 0, &s), LLOCO_ERR_FORMAT);
    tmpdir_remove(dir);
}

/* ---- validation --------------------------------------------------------- */

TEST_CASE(store_invalid_inputs) {
    char dir[64];
    tmpdir_make(dir);
    lloco_store_fingerprint fp = small_fp();
    tdoc t;
    tdoc_make(&t, &fp, 1, 1, 2, 4, 10);
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    CHECK_OK(put(s, &t));
    uint64_t gen = generation_now(s);
    t.doc.content_hash[0] ^= 1; /* each case below would otherwise replace it */

    lloco_doc_in d = t.doc;
    lloco_chunk_in c[2];
    char long_group[300];
    memset(long_group, 'g', 256);
    long_group[256] = 0;
    float nan_vec[8] = {0, 0, 0, __builtin_nanf(""), 0, 0, 0, 0};
#define REJECT(setup)                                                                              \
    do {                                                                                           \
        d = t.doc;                                                                                 \
        memcpy(c, t.chunks, sizeof c);                                                             \
        int n = 2;                                                                                 \
        setup;                                                                                     \
        CHECK_ERR(lloco_store_put_doc(s, &d, c, n, NULL, NULL), LLOCO_ERR_INVAL);                  \
        CHECKF(strlen(lloco_last_error()) > 10, "no message for %s", #setup);                      \
    } while (0)
    REJECT(d.id = "");
    REJECT(d.id = NULL);
    REJECT(d.title = "bad \xff utf-8");
    REJECT(d.title = NULL);
    REJECT(d.group = long_group);
    REJECT(n = -1);
    REJECT(c[1].n_slots = fp.n_summary + 1);
    REJECT(c[1].n_slots = -1);
    REJECT(c[0].slots = NULL);
    REJECT(c[0].vec = NULL);
    REJECT(c[1].vec = nan_vec);
    REJECT(c[1].tok_end = c[1].tok_begin - 1);
    REJECT(c[1].tok_end = (uint32_t)d.n_tokens + 1);
    REJECT(c[0].text = NULL);
#undef REJECT
    CHECK_ERR(lloco_store_put_doc(s, &t.doc, NULL, 2, NULL, NULL), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_store_group_set(s, "", "a"), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_store_group_set(s, long_group, "a"), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_store_group_set(s, "g", ""), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_store_group_set(s, "g", NULL), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_store_group_set(s, "\xc3", "a"), LLOCO_ERR_INVAL);

    CHECK(generation_now(s) == gen);
    lloco_store_stats st;
    CHECK_OK(lloco_store_stats_get(s, &st));
    CHECK(st.n_docs == 1 && st.n_chunks == 2 && st.n_groups == 0);
    lloco_store_close(s);
out:
    tdoc_free(&t);
    tmpdir_remove(dir);
}

/* ---- map growth ----------------------------------------------------------- */

TEST_CASE(store_map_growth) {
    char dir[64];
    tmpdir_make(dir);
    /* 50 x 4096 f32 slots: 800 KiB a chunk, 3.1 MiB a document, 78 MiB in
     * all: nearly five times the initial map. */
    lloco_store_fingerprint fp = test_fp(4096, 50, LLOCO_DTYPE_F32, 32);
    enum { N = 25 };
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    lloco_store_stats st0, st;
    CHECK_OK(lloco_store_stats_get(s, &st0));
    uint64_t first_ids[N];
    for (int i = 0; i < N; i++) {
        tdoc t;
        tdoc_make(&t, &fp, i, 1, 4, 50, 3000);
        CHECK_OK(put(s, &t));
        first_ids[i] = t.ids[0];
        tdoc_free(&t);
    }
    CHECK_OK(lloco_store_stats_get(s, &st));
    CHECKF(st.map_bytes >= 4 * st0.map_bytes, "map %zu bytes, initially %zu", st.map_bytes,
           st0.map_bytes);
    CHECK(st.used_bytes > 4 * st0.map_bytes);
    lloco_store_close(s);

    CHECK_OK(lloco_store_open(dir, &fp, 0, &s));
    if (!s) goto out;
    lloco_store_txn *txn;
    CHECK_OK(lloco_store_read_begin(s, &txn));
    for (int i = 0; i < N && lloco_test_case_failures() == 0; i++) {
        tdoc t;
        tdoc_make(&t, &fp, i, 1, 4, 50, 3000);
        for (int c = 0; c < 4; c++) t.ids[c] = first_ids[i] + (uint64_t)c;
        tdoc_check(txn, &fp, &t);
        tdoc_free(&t);
    }
    lloco_store_read_end(txn);
    CHECK(lloco_store_generation(s) == N);
    lloco_store_close(s);
out:
    tmpdir_remove(dir);
}

/* ---- damaged files --------------------------------------------------------- */

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    LLOCO_ASSERT(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*n);
    LLOCO_ASSERT(p && fread(p, 1, *n, f) == *n);
    fclose(f);
    return p;
}

static void write_all(const char *path, const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    LLOCO_ASSERT(f && fwrite(p, 1, n, f) == n);
    fclose(f);
}

/* Every way of opening a damaged store fails with LLOCO_ERR_FORMAT and a
 * message naming the file. */
static void expect_damaged(const char *dir, const char *data, const lloco_store_fingerprint *fp,
                           const char *what) {
    const int modes[] = {0, LLOCO_STORE_READONLY, LLOCO_STORE_CREATE};
    for (int m = 0; m < 3; m++) {
        lloco_store *s = NULL;
        int rc = lloco_store_open(dir, modes[m] == LLOCO_STORE_READONLY ? NULL : fp, modes[m], &s);
        CHECKF(rc == LLOCO_ERR_FORMAT && strstr(lloco_last_error(), data),
               "%s, flags %d: %d (%s) %s", what, modes[m], rc, lloco_strerror(rc),
               lloco_last_error());
        if (s) lloco_store_close(s);
    }
}

TEST_CASE(store_damaged_file) {
    char dir[64], data[96];
    tmpdir_make(dir);
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    lloco_store_fingerprint fp = small_fp();
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    for (int i = 0; i < 6; i++) {
        tdoc t;
        tdoc_make(&t, &fp, i, 1, 4, 4, 3000);
        CHECK_OK(put(s, &t));
        tdoc_free(&t);
    }
    lloco_store_close(s);
    size_t n;
    uint8_t *orig = read_all(data, &n);
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    CHECKF(n >= 16 * ps, "data.mdb is only %zu bytes", n);

    const size_t cuts[] = {0, 100, ps - 1, ps + 200, 2 * ps, 3 * ps + 1, n / 2, n - ps, n - 1};
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(cuts); i++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", cuts[i], n);
        write_all(data, orig, cuts[i]);
        expect_damaged(dir, data, &fp, what);
    }

    uint8_t *junk = malloc(n);
    LLOCO_ASSERT(junk);
    for (size_t j = 0; j < n; j++) junk[j] = (uint8_t)mix(j);
    write_all(data, junk, n);
    expect_damaged(dir, data, &fp, "random bytes");
    memset(junk, 0, n);
    write_all(data, junk, n);
    expect_damaged(dir, data, &fp, "zeros");
    free(junk);

    /* Put back whole, it is a store again. */
    write_all(data, orig, n);
    CHECK_OK(lloco_store_open(dir, &fp, 0, &s));
    if (s) {
        lloco_store_stats st;
        CHECK_OK(lloco_store_stats_get(s, &st));
        CHECK(st.n_docs == 6 && st.n_chunks == 24);
        lloco_store_close(s);
    }
    free(orig);
out:
    tmpdir_remove(dir);
}

/* Records damaged inside an intact database: every reader and writer
 * that meets them says so instead of reading past them. */
TEST_CASE(store_damaged_records) {
    char dir[64], data[96];
    tmpdir_make(dir);
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    lloco_store_fingerprint fp = small_fp();
    tdoc a, b;
    tdoc_make(&a, &fp, 0, 1, 2, 4, 100);
    tdoc_make(&b, &fp, 1, 1, 2, 4, 100);
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    CHECK_OK(put(s, &a));
    CHECK_OK(put(s, &b));
    lloco_store_close(s);
    /* Doc 0 cut inside its strings; chunk 3 (doc 1's second) cut after its
     * header, below the size that keeps its slots aligned. */
    poke(dir, "docs", a.id, strlen(a.id), NULL, 60);
    uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, 3};
    poke(dir, "chunks", key, 8, NULL, 100);

    CHECK_OK(lloco_store_open(dir, &fp, 0, &s));
    if (!s) goto out;
    lloco_store_txn *txn;
    CHECK_OK(lloco_store_read_begin(s, &txn));
    lloco_doc_view dv;
    lloco_chunk_view cv;
    int n = 0;
#define DAMAGED(expr)                                                                              \
    do {                                                                                           \
        CHECK_ERR(expr, LLOCO_ERR_FORMAT);                                                         \
        CHECKF(strstr(lloco_last_error(), data), "message: %s", lloco_last_error());               \
    } while (0)
    DAMAGED(lloco_store_get_doc(txn, a.id, &dv));
    DAMAGED(lloco_store_get_chunk(txn, 3, &cv));
    DAMAGED(lloco_store_foreach_doc(txn, log_doc, &(visit_log){0}));
    DAMAGED(lloco_store_foreach_chunk(txn, count_chunk, &n));
    CHECK(n == 3);
    CHECK_OK(lloco_store_get_doc(txn, b.id, &dv));
    CHECK_OK(lloco_store_get_chunk(txn, 2, &cv));
    lloco_store_read_end(txn);
    uint64_t gen = lloco_store_generation(s);
    DAMAGED(lloco_store_delete_doc(s, a.id));
    a.doc.content_hash[0] ^= 1;
    DAMAGED(lloco_store_put_doc(s, &a.doc, a.chunks, a.n_chunks, NULL, NULL));
    CHECK(generation_now(s) == gen);
#undef DAMAGED
    lloco_store_close(s);
out:
    tdoc_free(&a);
    tdoc_free(&b);
    tmpdir_remove(dir);
}

/* ---- readers racing a writer ------------------------------------------------ */

enum { RACE_DOCS = 40, RACE_CHUNKS = 3 };

typedef struct {
    lloco_store *s;
    const lloco_store_fingerprint *fp;
    atomic_int *done;
    int errors, passes, docs_seen;
    char first_error[256];
} reader_arg;

static void reader_fail(reader_arg *a, const char *fmt, const char *id, int c) {
    if (a->errors++ == 0) snprintf(a->first_error, sizeof a->first_error, fmt, id, c);
}

/* Checks a document whole: every chunk present, its own, in order, with
 * the bytes the writer's version of it has. */
static int reader_doc(void *ctx, const lloco_doc_view *d) {
    reader_arg *a = ((void **)ctx)[0];
    lloco_store_txn *txn = ((void **)ctx)[1];
    int idx, version;
    if (sscanf(d->title, "Title %d v%d", &idx, &version) != 2) {
        reader_fail(a, "%s: title unreadable (%d)", d->id, 0);
        return 0;
    }
    if (d->n_chunks != RACE_CHUNKS + (uint32_t)version - 1)
        reader_fail(a, "%s: %d chunks", d->id, (int)d->n_chunks);
    const size_t slots_bytes = (size_t)a->fp->n_summary * (size_t)a->fp->d_model * 2;
    for (uint32_t c = 0; c < d->n_chunks; c++) {
        lloco_chunk_view v;
        if (lloco_store_get_chunk(txn, d->first_chunk + c, &v)) {
            reader_fail(a, "%s: chunk %d missing", d->id, (int)c);
            continue;
        }
        if (strcmp(v.doc_id, d->id) != 0 || v.ordinal != c || v.n_slots != a->fp->n_summary)
            reader_fail(a, "%s: chunk %d is not its own", d->id, (int)c);
        const uint8_t *sl = v.slots;
        for (size_t j = 0; j < slots_bytes; j += 97)
            if (sl[j] != pattern(idx, version, (int)c, 1, j)) {
                reader_fail(a, "%s: chunk %d slot bytes differ", d->id, (int)c);
                break;
            }
        for (int j = 0; j < v.dim; j++)
            if (v.vec[j] != vec_value(idx, version, (int)c, j)) {
                reader_fail(a, "%s: chunk %d vec differs", d->id, (int)c);
                break;
            }
    }
    a->docs_seen++;
    return 0;
}

static void *reader_main(void *p) {
    reader_arg *a = p;
    uint64_t last_gen = 0;
    while (!atomic_load(a->done) || a->passes == 0) {
        lloco_store_txn *txn;
        int rc = lloco_store_read_begin(a->s, &txn);
        if (rc) {
            reader_fail(a, "read_begin: %s (%d)", lloco_last_error(), rc);
            break;
        }
        uint64_t gen = lloco_store_txn_generation(txn);
        if (gen < last_gen) reader_fail(a, "generation went back (%s %d)", "", (int)gen);
        last_gen = gen;
        void *ctx[2] = {a, txn};
        if ((rc = lloco_store_foreach_doc(txn, reader_doc, ctx)))
            reader_fail(a, "foreach_doc: %s (%d)", lloco_last_error(), rc);
        lloco_store_read_end(txn);
        a->passes++;
    }
    return NULL;
}

TEST_CASE(store_concurrent_readers) {
    char dir[64];
    tmpdir_make(dir);
    /* 16 x 4096 f16 slots: 128 KiB a chunk; with replacements the writer
     * adds about 20 MiB, more than the initial map. */
    lloco_store_fingerprint fp = test_fp(4096, 16, LLOCO_DTYPE_F16, 16);
    lloco_store *s;
    CHECK_OK(lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s));
    if (!s) goto out;
    lloco_store_stats st0, st;
    CHECK_OK(lloco_store_stats_get(s, &st0));
    atomic_int done = 0;
    enum { R = 3 };
    pthread_t th[R];
    reader_arg args[R];
    for (int i = 0; i < R; i++) {
        args[i] = (reader_arg){.s = s, .fp = &fp, .done = &done};
        LLOCO_ASSERT(pthread_create(&th[i], NULL, reader_main, &args[i]) == 0);
    }
    /* Writer: new documents, replacements with more chunks, deletions. */
    int n_docs = 0;
    for (int i = 0; i < RACE_DOCS; i++) {
        tdoc t;
        tdoc_make(&t, &fp, i, 1, RACE_CHUNKS, fp.n_summary, 200);
        CHECK_OK(put(s, &t));
        tdoc_free(&t);
        n_docs++;
        if (i % 4 == 3) {
            tdoc_make(&t, &fp, i - 2, 2, RACE_CHUNKS + 1, fp.n_summary, 300);
            CHECK_OK(put(s, &t));
            tdoc_free(&t);
        }
        if (i % 10 == 9) {
            char id[32];
            snprintf(id, sizeof id, "doc-%05d", i - 9);
            CHECK_OK(lloco_store_delete_doc(s, id));
            n_docs--;
        }
    }
    atomic_store(&done, 1);
    for (int i = 0; i < R; i++) {
        pthread_join(th[i], NULL);
        CHECKF(args[i].errors == 0, "reader %d: %d errors, first: %s", i, args[i].errors,
               args[i].first_error);
        CHECK(args[i].passes > 0);
    }
    CHECK_OK(lloco_store_stats_get(s, &st));
    CHECK(st.n_docs == (uint64_t)n_docs);
    CHECKF(st.map_bytes > st0.map_bytes, "the map never grew (%zu bytes)", st.map_bytes);
    lloco_store_close(s);
out:
    tmpdir_remove(dir);
}
