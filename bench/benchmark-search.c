/* benchmark-search: per-query latency of the exact (flat) and HNSW indexes of
 * retriever/index.c over random L2-normalised vectors, and HNSW's recall@k
 * against the exact result. It first checks the exact index against a
 * brute-force loop, then times; one JSON object per result line on stdout,
 * a readable summary on stderr. Exits 1 if a check failed.
 *
 *   benchmark-search [--n 100000] [--dim 384] [--queries 1000] [--k 10]
 *                    [--m M] [--ef-construction E] [--ef-search E]
 *                    [--noise 0.5] [--clusters 1000] [--seed 1]
 *
 *   --m, --ef-*   HNSW parameters (default: lloco_index_params_default)
 *
 *   --noise S     a query is a stored vector plus a random direction of norm
 *                 S, renormalised; S < 0 draws queries uniformly instead
 *   --clusters C  C > 0: vectors around C random centres (cosine ~0.7 to
 *                 their centre), as sentence embeddings cluster by topic;
 *                 0: uniform on the sphere, the worst case for any graph
 *                 index (neighbours 2..k are barely nearer than the rest)
 *
 * Searches are timed one query per call, as the server makes them: each
 * runs on one thread (lloco_index_search runs FAISS with one OpenMP thread);
 * the HNSW build uses FAISS's OpenMP default (all CPUs).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "retriever/retriever.h"

#define DIE(...)                                                                                   \
    do {                                                                                           \
        fprintf(stderr, "benchmark-search: " __VA_ARGS__);                                         \
        fprintf(stderr, ": %s\n", lloco_last_error());                                             \
        exit(1);                                                                                   \
    } while (0)

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "benchmark-search: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_gauss(uint64_t *s) {
    double u1 = ((rng_next(s) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (rng_next(s) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static void normalize(float *v, int dim) {
    double ss = 0;
    for (int i = 0; i < dim; i++) ss += (double)v[i] * v[i];
    float inv = (float)(1.0 / sqrt(ss));
    for (int i = 0; i < dim; i++) v[i] *= inv;
}

/* v (dim) = normalize(base + scale * g), g a random direction of norm 1. */
static void perturb(float *v, const float *base, float scale, int dim, uint64_t *seed) {
    for (int i = 0; i < dim; i++) v[i] = rng_gauss(seed);
    normalize(v, dim);
    for (int i = 0; i < dim; i++) v[i] = (base ? base[i] : 0.0f) + scale * v[i];
    normalize(v, dim);
}

/* Exact top k by inner product (k small). */
static void brute_force(const float *db, int64_t n, int dim, const float *q, int k, int64_t *ids,
                        float *scores) {
    for (int i = 0; i < k; i++) {
        ids[i] = -1;
        scores[i] = -INFINITY;
    }
    for (int64_t r = 0; r < n; r++) {
        float s = 0;
        for (int j = 0; j < dim; j++) s += db[r * dim + j] * q[j];
        if (s <= scores[k - 1]) continue;
        int pos = k - 1;
        while (pos > 0 && scores[pos - 1] < s) {
            scores[pos] = scores[pos - 1];
            ids[pos] = ids[pos - 1];
            pos--;
        }
        scores[pos] = s;
        ids[pos] = r;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    double p50, p99, mean;
} latency;

/* Runs every query once untimed (warm-up), then once timed; results of the
 * timed pass go to ids/scores (nq x k). */
static latency time_queries(const lloco_index *ix, const float *queries, int nq, int dim, int k,
                            int64_t *ids, float *scores) {
    double *t = xmalloc((size_t)nq * sizeof *t);
    for (int pass = 0; pass < 2; pass++)
        for (int qi = 0; qi < nq; qi++) {
            int n_found;
            double t0 = lloco_time_now();
            if (lloco_index_search(ix, queries + (size_t)qi * dim, k, ids + (size_t)qi * k,
                                   scores + (size_t)qi * k, &n_found))
                DIE("search");
            t[qi] = lloco_time_now() - t0;
            for (int i = n_found; i < k; i++) ids[(size_t)qi * k + i] = -1;
        }
    latency l = {0, 0, 0};
    for (int i = 0; i < nq; i++) l.mean += t[i];
    l.mean /= nq;
    qsort(t, (size_t)nq, sizeof *t, cmp_double);
    l.p50 = t[nq / 2];
    l.p99 = t[(int)((nq - 1) * 0.99)];
    free(t);
    return l;
}

int main(int argc, char **argv) {
    int64_t n = 100000;
    int dim = 384, nq = 1000, k = 10, clusters = 1000;
    float noise = 0.5f;
    uint64_t seed = 1;
    lloco_index_params hp;
    lloco_index_params_default(&hp, dim);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr,
                    "benchmark-search: %s needs a value (see the top of benchmark-search.c)\n", a);
            return 2;
        }
        if (!strcmp(a, "--n"))
            n = atoll(v);
        else if (!strcmp(a, "--dim"))
            dim = atoi(v);
        else if (!strcmp(a, "--queries"))
            nq = atoi(v);
        else if (!strcmp(a, "--k"))
            k = atoi(v);
        else if (!strcmp(a, "--m"))
            hp.hnsw_m = atoi(v);
        else if (!strcmp(a, "--ef-construction"))
            hp.ef_construction = atoi(v);
        else if (!strcmp(a, "--ef-search"))
            hp.ef_search = atoi(v);
        else if (!strcmp(a, "--noise"))
            noise = (float)atof(v);
        else if (!strcmp(a, "--clusters"))
            clusters = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "benchmark-search: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (n < k || dim < 1 || nq < 1 || k < 1 || clusters < 0) {
        fprintf(stderr, "benchmark-search: need n >= k >= 1, dim >= 1, queries >= 1\n");
        return 2;
    }
    hp.dim = dim;
    lloco_index_params fp = hp;
    fp.hnsw_threshold = n + 1; /* flat */
    hp.hnsw_threshold = 0;     /* HNSW */

    /* Data. */
    uint64_t s = seed;
    float *db = xmalloc((size_t)n * dim * sizeof *db);
    int64_t *ids = xmalloc((size_t)n * sizeof *ids);
    float *centres = NULL;
    if (clusters > 0) {
        centres = xmalloc((size_t)clusters * dim * sizeof *centres);
        for (int c = 0; c < clusters; c++) perturb(centres + (size_t)c * dim, NULL, 1.0f, dim, &s);
    }
    for (int64_t i = 0; i < n; i++) {
        const float *c =
            centres ? centres + (size_t)(rng_next(&s) % (uint64_t)clusters) * dim : NULL;
        /* Around a centre: cosine to it ~0.7, as texts on one topic. */
        perturb(db + (size_t)i * dim, c, 1.0f, dim, &s);
        ids[i] = i;
    }
    free(centres);
    float *queries = xmalloc((size_t)nq * dim * sizeof *queries);
    for (int qi = 0; qi < nq; qi++) {
        const float *base = noise >= 0 ? db + (size_t)(rng_next(&s) % (uint64_t)n) * dim : NULL;
        perturb(queries + (size_t)qi * dim, base, noise >= 0 ? noise : 1.0f, dim, &s);
    }

    lloco_index *flat, *hnsw;
    double t0 = lloco_time_now();
    if (lloco_index_create(&fp, n, &flat) || lloco_index_add(flat, n, db, ids)) DIE("flat build");
    double flat_build = lloco_time_now() - t0;
    t0 = lloco_time_now();
    if (lloco_index_create(&hp, n, &hnsw) || lloco_index_add(hnsw, n, db, ids)) DIE("HNSW build");
    double hnsw_build = lloco_time_now() - t0;
    if (lloco_index_is_hnsw(flat) || !lloco_index_is_hnsw(hnsw)) DIE("index kinds");

    /* Correctness first: the exact index equals a brute-force loop. */
    int failed = 0;
    enum { NCHECK = 5 };
    int64_t *bi = xmalloc((size_t)k * sizeof *bi), *gi = xmalloc((size_t)k * sizeof *gi);
    float *bs = xmalloc((size_t)k * sizeof *bs), *gs = xmalloc((size_t)k * sizeof *gs);
    double worst = 0;
    for (int qi = 0; qi < NCHECK && qi < nq; qi++) {
        const float *q = queries + (size_t)qi * dim;
        int n_found;
        if (lloco_index_search(flat, q, k, gi, gs, &n_found)) DIE("search");
        brute_force(db, n, dim, q, k, bi, bs);
        if (n_found != k) failed = 1;
        for (int i = 0; i < k; i++) {
            double e = fabs((double)gs[i] - bs[i]);
            if (!(e <= worst)) worst = e;
            /* Ids must match except where two scores tie within rounding. */
            if (gi[i] != bi[i] && !(fabsf(gs[i] - bs[i]) < 1e-5f && i + 1 < k &&
                                    (gi[i] == bi[i + 1] || (i > 0 && gi[i] == bi[i - 1]))))
                failed = 1;
        }
    }
    if (!(worst < 1e-4)) failed = 1;
    printf("{\"check\":\"exact_vs_brute_force\",\"queries\":%d,\"max_abs_score_err\":%.3g,\"ok\":%"
           "s}\n",
           NCHECK < nq ? NCHECK : nq, worst, failed ? "false" : "true");
    free(bi);
    free(gi);
    free(bs);
    free(gs);
    if (failed) {
        fprintf(stderr, "benchmark-search: the exact index disagrees with brute force\n");
        return 1;
    }

    /* Timing, one query per call. */
    int64_t *eid = xmalloc((size_t)nq * k * sizeof *eid),
            *hid = xmalloc((size_t)nq * k * sizeof *hid);
    float *esc = xmalloc((size_t)nq * k * sizeof *esc),
          *hsc = xmalloc((size_t)nq * k * sizeof *hsc);
    latency le = time_queries(flat, queries, nq, dim, k, eid, esc);
    latency lh = time_queries(hnsw, queries, nq, dim, k, hid, hsc);
    int64_t hits = 0;
    for (int qi = 0; qi < nq; qi++)
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                if (hid[(size_t)qi * k + i] >= 0 &&
                    hid[(size_t)qi * k + i] == eid[(size_t)qi * k + j])
                    hits++;
    double recall = (double)hits / ((double)nq * k);
    double speedup = le.mean / lh.mean;
    int target = recall >= 0.95 && speedup >= 10.0;

    const char *qkind = noise >= 0 ? "perturbed" : "random";
    printf(
        "{\"bench\":\"search\",\"index\":\"flat\",\"n\":%lld,\"dim\":%d,\"k\":%d,\"queries\":%d,"
        "\"search_threads\":1,\"build_s\":%.2f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"mean_ms\":%.4f}\n",
        (long long)n, dim, k, nq, flat_build, le.p50 * 1e3, le.p99 * 1e3, le.mean * 1e3);
    printf("{\"bench\":\"search\",\"index\":\"hnsw\",\"n\":%lld,\"dim\":%d,\"k\":%d,\"queries\":%d,"
           "\"search_threads\":1,\"m\":%d,\"ef_construction\":%d,\"ef_search\":%d,\"build_s\":%.2f,"
           "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"mean_ms\":%.4f}\n",
           (long long)n, dim, k, nq, hp.hnsw_m, hp.ef_construction, hp.ef_search, hnsw_build,
           lh.p50 * 1e3, lh.p99 * 1e3, lh.mean * 1e3);
    printf("{\"bench\":\"search_compare\",\"n\":%lld,\"dim\":%d,\"data\":\"%s\",\"clusters\":%d,"
           "\"query\":\"%s\",\"noise\":%.3g,\"recall_at_k\":%.4f,\"k\":%d,\"speedup_mean\":%.2f,"
           "\"speedup_p50\":%.2f,\"target_recall\":0.95,\"target_speedup\":10,\"target_met\":%s}\n",
           (long long)n, dim, clusters ? "clustered" : "uniform", clusters, qkind,
           noise >= 0 ? noise : 0.0, recall, k, speedup, le.p50 / lh.p50,
           target ? "true" : "false");

    fprintf(stderr,
            "\n%lld x %d-d %s vectors, %d %s queries, k=%d, one query per call on one thread\n"
            "  exact (flat):  p50 %8.3f ms  p99 %8.3f ms  (build %.1f s)\n"
            "  HNSW M=%d efC=%d efS=%d:  p50 %8.3f ms  p99 %8.3f ms  (build %.1f s)\n"
            "  recall@%d %.3f, HNSW %.1fx faster (mean), target recall >= 0.95 at >= 10x: %s\n",
            (long long)n, dim, clusters ? "clustered" : "uniform random", nq, qkind, k,
            le.p50 * 1e3, le.p99 * 1e3, flat_build, hp.hnsw_m, hp.ef_construction, hp.ef_search,
            lh.p50 * 1e3, lh.p99 * 1e3, hnsw_build, k, recall, speedup, target ? "met" : "NOT met");

    lloco_index_free(flat);
    lloco_index_free(hnsw);
    free(eid);
    free(hid);
    free(esc);
    free(hsc);
    free(queries);
    free(db);
    free(ids);
    return 0;
}
