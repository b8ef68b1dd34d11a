/* retrieval: keeps a store's FAISS index in step with the store (load,
 * rebuild from chunks when missing, damaged or stale, add, catch up with
 * chunks other processes wrote, save) and answers searches with group
 * filtering against what the store holds now.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "retriever.h"

#define INDEX_FILE "index.faiss"
#define REBUILD_BATCH 1024

struct lloco_retriever {
    lloco_store *s;
    lloco_index_params p;
    /* ix, gen and next_id: searches hold it for reading, adds, catch-ups
     * and rebuilds for writing */
    pthread_rwlock_t lock;
    lloco_index *ix;
    uint64_t gen;     /* the store generation the index has caught up with */
    uint64_t next_id; /* every chunk below this id has been given to the index */
    char path[4096];
    char rebuilt[512]; /* "" when loaded as it was */
};

typedef struct {
    lloco_index *ix;
    int dim;
    int64_t n;
    int64_t ids[REBUILD_BATCH];
    float *vecs;
    uint64_t next_id;    /* one past the highest id taken */
    uint64_t flushed_id; /* one past the highest id in the index */
} rebuild_ctx;

static int flush_batch(rebuild_ctx *b) {
    int rc = b->n ? lloco_index_add(b->ix, b->n, b->vecs, b->ids) : 0;
    if (!rc) b->flushed_id = b->next_id;
    b->n = 0;
    return rc;
}

static int add_chunk(void *ctx, const lloco_chunk_view *c) {
    rebuild_ctx *b = ctx;
    if (c->dim != b->dim)
        return lloco_error(LLOCO_ERR_FORMAT, "chunk %llu has a %d-d vector, the store says %d",
                           (unsigned long long)c->id, c->dim, b->dim);
    b->ids[b->n] = (int64_t)c->id;
    if (c->id >= b->next_id) b->next_id = c->id + 1;
    memcpy(b->vecs + (size_t)b->n * (size_t)b->dim, c->vec, sizeof(float) * (size_t)b->dim);
    return ++b->n == REBUILD_BATCH ? flush_batch(b) : 0;
}

/* A fresh index over every chunk the store holds, stamped and saved. */
static int rebuild(lloco_retriever *r) {
    lloco_store_stats st;
    int rc = lloco_store_stats_get(r->s, &st);
    if (rc) return rc;
    lloco_index *ix = NULL;
    if ((rc = lloco_index_create(&r->p, (int64_t)st.n_chunks, &ix))) return rc;
    rebuild_ctx b = {.ix = ix, .dim = r->p.dim,
                     .vecs = malloc(sizeof(float) * REBUILD_BATCH * (size_t)r->p.dim)};
    lloco_store_txn *t = NULL;
    if (!b.vecs) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory rebuilding the index");
    if (!rc) rc = lloco_store_read_begin(r->s, &t);
    uint64_t gen = 0;
    if (!rc) {
        gen = lloco_store_txn_generation(t);
        rc = lloco_store_foreach_chunk(t, add_chunk, &b);
        if (!rc) rc = flush_batch(&b);
        lloco_store_read_end(t);
    }
    free(b.vecs);
    if (!rc) rc = lloco_index_save(ix, r->path, gen);
    if (rc) {
        lloco_index_free(ix);
        return rc;
    }
    pthread_rwlock_wrlock(&r->lock);
    lloco_index_free(r->ix);
    r->ix = ix;
    r->gen = gen;
    r->next_id = b.flushed_id;
    pthread_rwlock_unlock(&r->lock);
    return 0;
}

/* Adds the chunks written since the index last caught up (by this process
 * or another) as snapshot t sees them. Chunk ids only grow, so they are the
 * chunks from next_id on; chunks of documents deleted or replaced meanwhile
 * stay in the index, and searches skip them. The caller holds no lock. */
static int catch_up(lloco_retriever *r, lloco_store_txn *t) {
    const uint64_t g = lloco_store_txn_generation(t);
    int rc = 0;
    pthread_rwlock_wrlock(&r->lock);
    if (g > r->gen) {
        rebuild_ctx b = {.ix = r->ix, .dim = r->p.dim, .next_id = r->next_id,
                         .flushed_id = r->next_id,
                         .vecs = malloc(sizeof(float) * REBUILD_BATCH * (size_t)r->p.dim)};
        if (!b.vecs) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory updating the index");
        if (!rc) rc = lloco_store_foreach_chunk_from(t, r->next_id, add_chunk, &b);
        if (!rc) rc = flush_batch(&b);
        free(b.vecs);
        if (b.flushed_id > r->next_id)
            lloco_log(LLOCO_LOG_INFO,
                      "index: added chunks %llu..%llu, written since generation %llu",
                      (unsigned long long)r->next_id, (unsigned long long)b.flushed_id - 1,
                      (unsigned long long)r->gen);
        r->next_id = b.flushed_id; /* after an error too: what went in stays in */
        if (!rc) r->gen = g;
    }
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

/* catch_up on a snapshot of now. */
static int catch_up_now(lloco_retriever *r) {
    lloco_store_txn *t;
    int rc = lloco_store_read_begin(r->s, &t);
    if (rc) return rc;
    rc = catch_up(r, t);
    lloco_store_read_end(t);
    return rc;
}

int lloco_retriever_open(lloco_store *s, const lloco_index_params *p, lloco_retriever **out) {
    *out = NULL;
    lloco_retriever *r = calloc(1, sizeof *r);
    if (!r) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    if (pthread_rwlock_init(&r->lock, NULL)) {
        free(r);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    r->s = s;
    const int dim = lloco_store_fingerprint_of(s)->embed_dim;
    if (p) r->p = *p;
    else lloco_index_params_default(&r->p, dim);
    if (r->p.dim == 0) r->p.dim = dim;
    snprintf(r->path, sizeof r->path, "%s/%s", lloco_store_dir(s), INDEX_FILE);
    int rc = 0;
    if (r->p.dim != dim)
        rc = lloco_error(LLOCO_ERR_INVAL, "index dimension %d, the store's vectors have %d",
                         r->p.dim, dim);
    uint64_t gen = 0;
    lloco_store_stats st;
    if (!rc) rc = lloco_store_stats_get(s, &st);
    if (!rc) {
        rc = lloco_index_load(r->path, dim, &gen, &r->ix);
        const uint64_t now = st.generation;
        if (rc == LLOCO_ERR_NOTFOUND)
            snprintf(r->rebuilt, sizeof r->rebuilt, "missing");
        else if (rc)
            snprintf(r->rebuilt, sizeof r->rebuilt, "damaged: %s", lloco_last_error());
        else if (gen != now)
            snprintf(r->rebuilt, sizeof r->rebuilt,
                     "stale: the index reflects generation %llu, the store is at %llu",
                     (unsigned long long)gen, (unsigned long long)now);
        rc = 0;
        if (r->rebuilt[0]) {
            /* a missing index is normal for a new store; anything else is news */
            lloco_log(strcmp(r->rebuilt, "missing") ? LLOCO_LOG_WARN : LLOCO_LOG_INFO,
                      "rebuilding %s (%s)", r->path, r->rebuilt);
            rc = rebuild(r);
        } else {
            r->gen = now;
            r->next_id = st.next_chunk;
        }
    }
    if (rc) {
        lloco_retriever_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

void lloco_retriever_close(lloco_retriever *r) {
    if (!r) return;
    lloco_index_free(r->ix);
    pthread_rwlock_destroy(&r->lock);
    free(r);
}

const char *lloco_retriever_rebuilt(const lloco_retriever *r) {
    return r->rebuilt[0] ? r->rebuilt : NULL;
}

int lloco_retriever_reindex(lloco_retriever *r) { return rebuild(r); }

int lloco_retriever_add(lloco_retriever *r, int64_t n, const uint64_t *ids, const float *vecs) {
    if (n <= 0) return 0;
    /* Chunks below ids[0] that the index lacks (another process wrote
     * them) come first, so that next_id keeps its meaning. */
    pthread_rwlock_rdlock(&r->lock);
    const int gap = ids[0] > r->next_id;
    pthread_rwlock_unlock(&r->lock);
    if (gap) {
        int rc = catch_up_now(r);
        if (rc) return rc;
    }
    int64_t *iid = malloc(sizeof(int64_t) * (size_t)n);
    if (!iid) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    pthread_rwlock_wrlock(&r->lock);
    /* a search or the catch-up above may have added the first ones already */
    int64_t skip = 0;
    while (skip < n && ids[skip] < r->next_id) skip++;
    for (int64_t i = skip; i < n; i++) iid[i] = (int64_t)ids[i];
    int rc = skip < n ? lloco_index_add(r->ix, n - skip, vecs + (size_t)skip * (size_t)r->p.dim,
                                        iid + skip)
                      : 0;
    if (!rc && skip < n) r->next_id = ids[n - 1] + 1;
    pthread_rwlock_unlock(&r->lock);
    free(iid);
    return rc;
}

/* Caught up first, the index holds every chunk of the generation it is
 * stamped with (another process may have written since this one's adds). */
int lloco_retriever_save(lloco_retriever *r) {
    int rc = catch_up_now(r);
    if (rc) return rc;
    pthread_rwlock_rdlock(&r->lock);
    rc = lloco_index_save(r->ix, r->path, r->gen);
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

int64_t lloco_retriever_size(lloco_retriever *r) {
    pthread_rwlock_rdlock(&r->lock);
    const int64_t n = lloco_index_size(r->ix);
    pthread_rwlock_unlock(&r->lock);
    return n;
}

static int search_locked(lloco_retriever *r, lloco_store_txn *t, const float *q, int k,
                         const char *group, lloco_hit *hits, int *n_hits) {
    const int64_t size = lloco_index_size(r->ix);
    if (size == 0) return 0;
    /* Filtering drops hits (other groups, replaced documents): ask for more
     * until k survive or the whole index has been seen. */
    int64_t want = group ? (int64_t)k * 4 : k;
    int rc = 0;
    for (;;) {
        if (want > size) want = size;
        int64_t *ids = malloc(sizeof(int64_t) * (size_t)want);
        float *scores = malloc(sizeof(float) * (size_t)want);
        int found = 0;
        if (!ids || !scores) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        if (!rc) rc = lloco_index_search(r->ix, q, (int)want, ids, scores, &found);
        int n = 0;
        for (int i = 0; !rc && i < found && n < k; i++) {
            lloco_chunk_view c;
            int grc = lloco_store_get_chunk(t, (uint64_t)ids[i], &c);
            if (grc == LLOCO_ERR_NOTFOUND) continue;
            if (grc) {
                rc = grc;
                break;
            }
            if (group) {
                lloco_doc_view d;
                grc = lloco_store_get_doc(t, c.doc_id, &d);
                if (grc == LLOCO_ERR_NOTFOUND || (!grc && strcmp(d.group, group) != 0)) continue;
                if (grc) {
                    rc = grc;
                    break;
                }
            }
            hits[n++] = (lloco_hit){(uint64_t)ids[i], scores[i]};
        }
        free(ids);
        free(scores);
        if (rc) return rc;
        *n_hits = n;
        if (n == k || want == size) return 0;
        want *= 4;
    }
}

int lloco_retriever_search(lloco_retriever *r, lloco_store_txn *t, const float *q, int k,
                           const char *group, lloco_hit *hits, int *n_hits) {
    *n_hits = 0;
    if (k <= 0) return lloco_error(LLOCO_ERR_INVAL, "k must be positive (got %d)", k);
    pthread_rwlock_rdlock(&r->lock);
    if (lloco_store_txn_generation(t) > r->gen) { /* rare: catch up first */
        pthread_rwlock_unlock(&r->lock);
        int rc = catch_up(r, t);
        if (rc) return rc;
        pthread_rwlock_rdlock(&r->lock);
    }
    int rc = search_locked(r, t, q, k, group, hits, n_hits);
    pthread_rwlock_unlock(&r->lock);
    return rc;
}
