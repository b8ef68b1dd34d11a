/* Tests of retriever/index.c: exact search against a brute-force loop, HNSW
 * recall, concurrent searches, the save/load round trip, and loads of
 * damaged files (truncated, flipped bytes, wrong dimension, missing), which
 * must fail with the right code and never crash.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "retriever/retriever.h"
#include "test.h"

static uint64_t ix_rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float ix_rng_gauss(uint64_t *s) {
    double u1 = ((ix_rng_next(s) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (ix_rng_next(s) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static void ix_normalize(float *v, int dim) {
    double ss = 0;
    for (int i = 0; i < dim; i++) ss += (double)v[i] * v[i];
    float inv = (float)(1.0 / sqrt(ss));
    for (int i = 0; i < dim; i++) v[i] *= inv;
}

/* n random unit vectors of dim floats (caller frees). */
static float *ix_random_vectors(int64_t n, int dim, uint64_t seed) {
    float *v = malloc((size_t)n * (size_t)dim * sizeof *v);
    if (!v) return NULL;
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < dim; j++) v[i * dim + j] = ix_rng_gauss(&seed);
        ix_normalize(v + i * dim, dim);
    }
    return v;
}

/* Exact top k by inner product, ties broken by smaller id. */
static void ix_brute_force(const float *db, const int64_t *ids, int64_t n, int dim, const float *q,
                           int k, int64_t *out_ids, float *out_scores) {
    for (int i = 0; i < k; i++) {
        out_ids[i] = -1;
        out_scores[i] = -INFINITY;
    }
    for (int64_t r = 0; r < n; r++) {
        float s = 0;
        for (int j = 0; j < dim; j++) s += db[r * dim + j] * q[j];
        if (s <= out_scores[k - 1]) continue;
        int pos = k - 1;
        while (pos > 0 && out_scores[pos - 1] < s) {
            out_scores[pos] = out_scores[pos - 1];
            out_ids[pos] = out_ids[pos - 1];
            pos--;
        }
        out_scores[pos] = s;
        out_ids[pos] = ids[r];
    }
}

static float *ix_perturbed_query(const float *base, int dim, float noise, uint64_t *seed) {
    float *q = malloc((size_t)dim * sizeof *q);
    if (!q) return NULL;
    for (int j = 0; j < dim; j++) q[j] = base[j] + noise * ix_rng_gauss(seed);
    ix_normalize(q, dim);
    return q;
}

static char *ix_tempdir(void) {
    char tmpl[] = "/tmp/lloco-test-index-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static void ix_rmdir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int ix_count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static uint8_t *ix_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int ix_write_file(const char *path, const uint8_t *b, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(b, 1, len, f) == len;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* An index of n random vectors with ids 1000 + 7*i (not row numbers, so a
 * lost id map would show). */
static lloco_index *ix_build(const lloco_index_params *p, int64_t n, uint64_t seed, float **vecs,
                             int64_t **ids) {
    *vecs = ix_random_vectors(n, p->dim, seed);
    *ids = malloc((size_t)n * sizeof **ids);
    if (!*vecs || !*ids) return NULL;
    for (int64_t i = 0; i < n; i++) (*ids)[i] = 1000 + 7 * i;
    lloco_index *ix = NULL;
    CHECK_OK(lloco_index_create(p, n, &ix));
    if (ix) CHECK_OK(lloco_index_add(ix, n, *vecs, *ids));
    return ix;
}

TEST_CASE(index_exact_matches_brute_force) {
    enum { DIM = 48, N = 700, NQ = 25, K = 10 };
    lloco_index_params p;
    lloco_index_params_default(&p, DIM);
    float *db;
    int64_t *ids;
    lloco_index *ix = ix_build(&p, N, 1, &db, &ids);
    if (!ix) goto out;
    CHECK(!lloco_index_is_hnsw(ix));
    CHECK(lloco_index_size(ix) == N);
    uint64_t seed = 99;
    int bad = 0;
    for (int qi = 0; qi < NQ; qi++) {
        /* Half the queries near a stored vector, half random. */
        float *q = qi % 2 ? ix_perturbed_query(db + (size_t)(qi * 13) * DIM, DIM, 0.3f, &seed)
                          : ix_random_vectors(1, DIM, 500 + qi);
        int64_t got_ids[K], want_ids[K];
        float got_s[K], want_s[K];
        int n_found = -1;
        CHECK_OK(lloco_index_search(ix, q, K, got_ids, got_s, &n_found));
        ix_brute_force(db, ids, N, DIM, q, K, want_ids, want_s);
        CHECK(n_found == K);
        for (int i = 0; i < K && bad < 5; i++) {
            if (got_ids[i] != want_ids[i] || fabsf(got_s[i] - want_s[i]) > 1e-5f) {
                CHECKF(0,
                       "query %d rank %d: index id %lld score %.7f, brute force id %lld score %.7f",
                       qi, i, (long long)got_ids[i], got_s[i], (long long)want_ids[i], want_s[i]);
                bad++;
            }
        }
        free(q);
    }
    lloco_index_free(ix);
out:
    free(db);
    free(ids);
}

TEST_CASE(index_fewer_than_k) {
    enum { DIM = 16, N = 5, K = 10 };
    lloco_index_params p;
    lloco_index_params_default(&p, DIM);
    float *db;
    int64_t *ids;
    lloco_index *ix = ix_build(&p, N, 2, &db, &ids);
    if (ix) {
        int64_t got[K];
        float s[K];
        int n_found = -1;
        CHECK_OK(lloco_index_search(ix, db, K, got, s, &n_found));
        CHECK(n_found == N);
        CHECK(got[0] == ids[0]);
        CHECK(fabsf(s[0] - 1.0f) < 1e-5f);
        for (int i = 1; i < n_found; i++) CHECK(s[i] <= s[i - 1]);
        lloco_index_free(ix);
    }
    /* An empty index finds nothing, and says so without an error. */
    lloco_index *empty = NULL;
    CHECK_OK(lloco_index_create(&p, 0, &empty));
    if (empty) {
        int64_t got[K];
        float s[K];
        int n_found = -1;
        CHECK_OK(lloco_index_search(empty, db, K, got, s, &n_found));
        CHECK(n_found == 0);
        CHECK(lloco_index_size(empty) == 0);
        lloco_index_free(empty);
    }
    free(db);
    free(ids);
}

TEST_CASE(index_rejects_bad_input) {
    enum { DIM = 8 };
    lloco_index_params p;
    lloco_index_params_default(&p, DIM);
    lloco_index *ix = NULL;
    lloco_index_params bad = p;
    bad.dim = 0;
    CHECK_ERR(lloco_index_create(&bad, 10, &ix), LLOCO_ERR_INVAL);
    CHECK(ix == NULL);
    bad = p;
    bad.hnsw_m = 1;
    CHECK_ERR(lloco_index_create(&bad, p.hnsw_threshold, &ix), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_index_create(&p, -1, &ix), LLOCO_ERR_INVAL);

    CHECK_OK(lloco_index_create(&p, 10, &ix));
    if (!ix) return;
    float v[DIM] = {0};
    int64_t id = 3;
    v[0] = 2.0f; /* not normalised */
    CHECK_ERR(lloco_index_add(ix, 1, v, &id), LLOCO_ERR_INVAL);
    v[0] = NAN;
    CHECK_ERR(lloco_index_add(ix, 1, v, &id), LLOCO_ERR_INVAL);
    v[0] = 1.0f;
    id = -4;
    CHECK_ERR(lloco_index_add(ix, 1, v, &id), LLOCO_ERR_INVAL);
    CHECK(lloco_index_size(ix) == 0);
    id = 4;
    CHECK_OK(lloco_index_add(ix, 1, v, &id));
    int64_t got[2];
    float s[2];
    int n_found;
    CHECK_ERR(lloco_index_search(ix, v, 0, got, s, &n_found), LLOCO_ERR_INVAL);
    v[1] = 1.0f;
    CHECK_ERR(lloco_index_search(ix, v, 2, got, s, &n_found), LLOCO_ERR_INVAL);
    lloco_index_free(ix);
}

static double ix_hnsw_recall(const lloco_index *ix, const float *db, const int64_t *ids, int64_t n,
                             int dim, int nq, int k, uint64_t seed) {
    int hits = 0;
    int64_t *got = malloc((size_t)k * sizeof *got), *want = malloc((size_t)k * sizeof *want);
    float *gs = malloc((size_t)k * sizeof *gs), *ws = malloc((size_t)k * sizeof *ws);
    for (int qi = 0; qi < nq && got && want && gs && ws; qi++) {
        float *q = ix_perturbed_query(db + (size_t)((qi * 37) % n) * dim, dim, 0.5f, &seed);
        int n_found = 0;
        CHECK_OK(lloco_index_search(ix, q, k, got, gs, &n_found));
        ix_brute_force(db, ids, n, dim, q, k, want, ws);
        for (int i = 0; i < n_found; i++)
            for (int j = 0; j < k; j++)
                if (got[i] == want[j]) hits++;
        free(q);
    }
    free(got);
    free(want);
    free(gs);
    free(ws);
    return (double)hits / ((double)nq * k);
}

TEST_CASE(index_hnsw_recall) {
    enum { DIM = 32, N = 4000, NQ = 200, K = 10 };
    lloco_index_params p;
    lloco_index_params_default(&p, DIM);
    p.hnsw_threshold = 1000;
    p.hnsw_m = 16;
    p.ef_construction = 80;
    p.ef_search = 64;
    float *db;
    int64_t *ids;
    lloco_index *ix = ix_build(&p, N, 3, &db, &ids);
    if (ix) {
        CHECK(lloco_index_is_hnsw(ix));
        CHECK(lloco_index_size(ix) == N);
        double recall = ix_hnsw_recall(ix, db, ids, N, DIM, NQ, K, 7);
        CHECKF(recall >= 0.95, "HNSW recall@%d %.3f < 0.95", K, recall);
        lloco_index_free(ix);
    }
    /* A starved graph (FAISS's own defaults would give ~0.75 here) must do
     * much worse: the parameters do reach FAISS. */
    p.hnsw_m = 4;
    p.ef_construction = 10;
    p.ef_search = 10;
    lloco_index *starved = NULL;
    CHECK_OK(lloco_index_create(&p, N, &starved));
    if (starved && db && ids) {
        CHECK_OK(lloco_index_add(starved, N, db, ids));
        double recall = ix_hnsw_recall(starved, db, ids, N, DIM, NQ, K, 7);
        CHECKF(recall < 0.5, "starved HNSW recall@%d %.3f, expected < 0.5", K, recall);
        lloco_index_free(starved);
    }
    free(db);
    free(ids);
}

typedef struct {
    const lloco_index *ix;
    const float *queries;
    int nq, dim;
    const int64_t *expect; /* nq x 10 */
    int mismatches, errors;
} ix_thread_job;

static void *ix_search_thread(void *arg) {
    ix_thread_job *j = arg;
    for (int round = 0; round < 3; round++)
        for (int qi = 0; qi < j->nq; qi++) {
            int64_t got[10];
            float s[10];
            int n_found = 0;
            if (lloco_index_search(j->ix, j->queries + (size_t)qi * j->dim, 10, got, s, &n_found) ||
                n_found != 10)
                j->errors++;
            else if (memcmp(got, j->expect + (size_t)qi * 10, sizeof got) != 0)
                j->mismatches++;
        }
    return NULL;
}

/* Concurrent readers see what a lone reader sees (and TSan/ASan builds get
 * a look at the shared paths). */
TEST_CASE(index_concurrent_search) {
    enum { DIM = 32, N = 3000, NQ = 40, T = 4 };
    lloco_index_params p;
    lloco_index_params_default(&p, DIM);
    p.hnsw_threshold = 1000;
    p.hnsw_m = 16;
    p.ef_construction = 64;
    p.ef_search = 48;
    float *db;
    int64_t *ids;
    lloco_index *ix = ix_build(&p, N, 4, &db, &ids);
    float *queries = ix_random_vectors(NQ, DIM, 77);
    int64_t *expect = malloc(NQ * 10 * sizeof *expect);
    if (ix && queries && expect) {
        for (int qi = 0; qi < NQ; qi++) {
            float s[10];
            int n_found = 0;
            CHECK_OK(lloco_index_search(ix, queries + qi * DIM, 10, expect + qi * 10, s, &n_found));
        }
        ix_thread_job jobs[T];
        pthread_t th[T];
        for (int t = 0; t < T; t++) {
            jobs[t] = (ix_thread_job){ix, queries, NQ, DIM, expect, 0, 0};
            CHECK(pthread_create(&th[t], NULL, ix_search_thread, &jobs[t]) == 0);
        }
        for (int t = 0; t < T; t++) {
            pthread_join(th[t], NULL);
            CHECKF(jobs[t].errors == 0 && jobs[t].mismatches == 0,
                   "thread %d: %d errors, %d results differing from a lone search", t,
                   jobs[t].errors, jobs[t].mismatches);
        }
    }
    lloco_index_free(ix);
    free(queries);
    free(expect);
    free(db);
    free(ids);
}

static void ix_check_same_results(const lloco_index *a, const lloco_index *b, const float *queries,
                                  int nq, int dim) {
    for (int qi = 0; qi < nq; qi++) {
        int64_t ia[10], ib[10];
        float sa[10], sb[10];
        int na = -1, nb = -2;
        CHECK_OK(lloco_index_search(a, queries + (size_t)qi * dim, 10, ia, sa, &na));
        CHECK_OK(lloco_index_search(b, queries + (size_t)qi * dim, 10, ib, sb, &nb));
        CHECK(na == nb);
        if (na != nb || na < 0) return;
        CHECKF(memcmp(ia, ib, (size_t)na * sizeof ia[0]) == 0 &&
                   memcmp(sa, sb, (size_t)na * sizeof sa[0]) == 0,
               "query %d: results differ after save/load", qi);
    }
}

TEST_CASE(index_save_load_round_trip) {
    enum { DIM = 24, NQ = 20 };
    char *dir = ix_tempdir();
    CHECK(dir != NULL);
    if (!dir) return;
    float *queries = ix_random_vectors(NQ, DIM, 55);
    for (int hnsw = 0; hnsw <= 1; hnsw++) {
        lloco_index_params p;
        lloco_index_params_default(&p, DIM);
        if (hnsw) {
            p.hnsw_threshold = 500;
            p.hnsw_m = 12;
            p.ef_construction = 50;
            p.ef_search = 40;
        }
        int64_t n = hnsw ? 1500 : 400;
        float *db;
        int64_t *ids;
        lloco_index *ix = ix_build(&p, n, 10 + hnsw, &db, &ids);
        char path[1024];
        snprintf(path, sizeof path, "%s/index-%d.faiss", dir, hnsw);
        const uint64_t gen = hnsw ? UINT64_MAX - 1 : 42;
        lloco_index *back = NULL;
        uint64_t got_gen = 0;
        if (ix) {
            CHECK_OK(lloco_index_save(ix, path, gen));
            CHECK_OK(lloco_index_load(path, DIM, &got_gen, &back));
        }
        if (back) {
            CHECK(got_gen == gen);
            CHECK(lloco_index_is_hnsw(back) == hnsw);
            CHECK(lloco_index_size(back) == n);
            ix_check_same_results(ix, back, queries, NQ, DIM);
            /* Saving over an existing file replaces it. */
            CHECK_OK(lloco_index_save(back, path, gen + 1));
            lloco_index_free(back);
            back = NULL;
            CHECK_OK(lloco_index_load(path, DIM, &got_gen, &back));
            CHECK(got_gen == gen + 1);
            if (back) ix_check_same_results(ix, back, queries, NQ, DIM);
        }
        lloco_index_free(back);
        lloco_index_free(ix);
        free(db);
        free(ids);
    }
    /* No temporary files left behind. */
    CHECK(ix_count_entries(dir) == 2);
    free(queries);
    ix_rmdir(dir);
    free(dir);
}

/* Load of a file holding `b` must fail with `err` and leave *out NULL. */
static int ix_load_bytes_fails(const char *path, const uint8_t *b, size_t len, int dim, int err) {
    if (ix_write_file(path, b, len)) return 0;
    lloco_index *ix = (lloco_index *)(uintptr_t)1;
    uint64_t gen = 0;
    int rc = lloco_index_load(path, dim, &gen, &ix);
    int ok = rc == err && ix == NULL;
    if (rc == 0) lloco_index_free(ix);
    return ok;
}

TEST_CASE(index_load_damaged) {
    enum { DIM = 16 };
    char *dir = ix_tempdir();
    CHECK(dir != NULL);
    if (!dir) return;
    char good[1024], bad[1024];
    snprintf(good, sizeof good, "%s/good.faiss", dir);
    snprintf(bad, sizeof bad, "%s/bad.faiss", dir);

    lloco_index *ix = NULL;
    uint64_t gen = 0;
    CHECK_ERR(lloco_index_load(good, DIM, &gen, &ix), LLOCO_ERR_NOTFOUND);
    CHECK(ix == NULL);
    CHECK(strstr(lloco_last_error(), good) != NULL);

    for (int hnsw = 0; hnsw <= 1; hnsw++) {
        lloco_index_params p;
        lloco_index_params_default(&p, DIM);
        if (hnsw) {
            p.hnsw_threshold = 100;
            p.hnsw_m = 8;
            p.ef_construction = 20;
        }
        float *db;
        int64_t *ids;
        ix = ix_build(&p, 200, 20 + hnsw, &db, &ids);
        free(db);
        free(ids);
        if (!ix) continue;
        CHECK_OK(lloco_index_save(ix, good, 7));
        lloco_index_free(ix);
        size_t len = 0;
        uint8_t *b = ix_read_file(good, &len);
        CHECK(b != NULL && len > 64 + 100);
        if (!b) continue;

        /* Wrong dimension. */
        ix = NULL;
        CHECK_ERR(lloco_index_load(good, DIM + 1, &gen, &ix), LLOCO_ERR_FORMAT);
        CHECK(ix == NULL);
        CHECK(strstr(lloco_last_error(), "dimension") != NULL);

        /* Truncated: in the magic, in the header, at its end, in the payload. */
        size_t cuts[] = {0, 3, 8, 30, 63, 64, 65, 64 + 4, len / 2, len - 8, len - 1};
        for (size_t i = 0; i < LLOCO_ARRAY_LEN(cuts); i++)
            CHECKF(ix_load_bytes_fails(bad, b, cuts[i], DIM, LLOCO_ERR_FORMAT),
                   "hnsw %d: truncated at %zu of %zu: %s", hnsw, cuts[i], len, lloco_last_error());
        CHECK(strstr(lloco_last_error(), bad) != NULL);

        /* One trailing byte too many. */
        uint8_t *longer = malloc(len + 1);
        if (longer) {
            memcpy(longer, b, len);
            longer[len] = 0;
            CHECK(ix_load_bytes_fails(bad, longer, len + 1, DIM, LLOCO_ERR_FORMAT));
            free(longer);
        }

        /* Every header byte flipped, and payload bytes at several places. */
        for (size_t at = 0; at < len; at = at < 64 ? at + 1 : at + len / 23) {
            b[at] ^= 0x5a;
            CHECKF(ix_load_bytes_fails(bad, b, len, DIM, LLOCO_ERR_FORMAT),
                   "hnsw %d: byte %zu flipped: %s", hnsw, at, lloco_last_error());
            b[at] ^= 0x5a;
        }
        /* The bytes restored, the copy loads. */
        CHECK(ix_write_file(bad, b, len) == 0);
        ix = NULL;
        CHECK_OK(lloco_index_load(bad, DIM, &gen, &ix));
        CHECK(ix && gen == 7 && lloco_index_is_hnsw(ix) == hnsw);
        lloco_index_free(ix);
        free(b);
    }

    /* Not an index at all. */
    const char *text = "this is not an index file, it is text";
    CHECK(ix_load_bytes_fails(bad, (const uint8_t *)text, strlen(text), DIM, LLOCO_ERR_FORMAT));
    CHECK(strstr(lloco_last_error(), "magic") != NULL);

    /* A header whose checksums are right around bytes FAISS cannot read:
     * FAISS's own error comes back as FORMAT, with no crash. */
    uint8_t forged[64 + 16];
    memset(forged, 0, sizeof forged);
    memcpy(forged, "LLOCOIDX", 8);
    const uint32_t version = 1, dim = DIM, kind = 1;
    const uint64_t gen7 = 7, payload_len = 16;
    memcpy(forged + 8, &version, 4);
    memcpy(forged + 12, &dim, 4);
    memcpy(forged + 16, &gen7, 8);
    memcpy(forged + 24, &kind, 4);
    memcpy(forged + 40, &payload_len, 8);
    memcpy(forged + 64, "ZZZZ garbage....", 16);
    uint64_t ph = XXH3_64bits(forged + 64, 16);
    memcpy(forged + 48, &ph, 8);
    uint64_t hh = XXH3_64bits(forged, 56);
    memcpy(forged + 56, &hh, 8);
    CHECK(ix_load_bytes_fails(bad, forged, sizeof forged, DIM, LLOCO_ERR_FORMAT));
    CHECK(strstr(lloco_last_error(), "FAISS") != NULL);

    /* A directory where the file should be. */
    CHECK_ERR(lloco_index_load(dir, DIM, &gen, &ix), LLOCO_ERR_FORMAT);

    ix_rmdir(dir);
    free(dir);
}

TEST_CASE(index_save_errors) {
    enum { DIM = 8 };
    lloco_index_params p;
    lloco_index_params_default(&p, DIM);
    lloco_index *ix = NULL;
    CHECK_OK(lloco_index_create(&p, 0, &ix));
    if (!ix) return;
    CHECK_ERR(lloco_index_save(ix, "/nonexistent-dir-for-lloco-test/index.faiss", 1), LLOCO_ERR_IO);
    lloco_index_free(ix);
}
