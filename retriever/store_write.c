/* store_write: everything that changes a store — documents (validated, then
 * written in one write transaction each, retried on a bigger map when LMDB
 * reports it full) and the group -> adapter map.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "store_internal.h"

#define STORE_MAX_TITLE 65535
#define STORE_MAX_GROUP 255
#define STORE_MAX_ADAPTER 255

/* Internal "success, but abort instead of commit" result of a write body. */
#define STORE_NOCHANGE 1

/* A body runs inside a write transaction. It returns 0 (commit),
 * STORE_NOCHANGE (abort, success), MDB_MAP_FULL untranslated (grow and run
 * again), or a lloco error it has recorded. */
typedef int (*write_body)(lloco_store *s, MDB_txn *txn, void *ctx);

static int step(lloco_store *s, int rc, const char *what) {
    return rc == 0 || rc == MDB_MAP_FULL ? rc : store_mdb_error(s, rc, what);
}

static int grow(lloco_store *s, size_t need) {
    MDB_envinfo info;
    int rc = mdb_env_info(s->env, &info);
    if (rc) return store_mdb_error(s, rc, "read environment info");
    size_t cur = info.me_mapsize;
    if (cur > SIZE_MAX / 4 || need > SIZE_MAX / 4 - cur)
        return lloco_error(LLOCO_ERR_FULL, "store %s: the map cannot grow past %zu bytes", s->dir,
                           cur);
    /* Copy-on-write needs room for the old and the new pages of a
     * transaction, hence twice what it adds. */
    size_t want = cur * 2 > cur + 2 * need ? cur * 2 : cur + 2 * need;
    want = (want + s->psize - 1) / s->psize * s->psize;
    lloco_log(LLOCO_LOG_DEBUG, "store %s: map %zu -> %zu bytes", s->dir, cur, want);
    return store_remap(s, want);
}

/* need: about how many bytes the body writes, so that one growth is
 * enough for it. */
static int run_write(lloco_store *s, size_t need, write_body body, void *ctx) {
    if (s->readonly) return lloco_error(LLOCO_ERR_INVAL, "store %s is open read-only", s->dir);
    pthread_mutex_lock(&s->write_mu);
    int rc;
    for (;;) {
        MDB_txn *txn;
        if ((rc = store_txn_begin(s, 0, &txn))) break;
        rc = body(s, txn, ctx);
        if (rc == 0)
            rc = step(s, store_txn_commit(s, txn), "commit");
        else
            store_txn_abort(s, txn);
        if (rc != MDB_MAP_FULL) break;
        if ((rc = grow(s, need))) break;
    }
    pthread_mutex_unlock(&s->write_mu);
    return rc == STORE_NOCHANGE ? 0 : rc;
}

/* ---- validation ------------------------------------------------------------- */

static int utf8_valid(const char *str, size_t len) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)str;
    while (len > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p, (utf8proc_ssize_t)len, &cp);
        if (n <= 0) return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

/* A name or text field: present, 1..max bytes (0..max when may_be_empty),
 * valid UTF-8. */
static int check_str(const char *ctx, const char *what, const char *str, size_t max,
                     int may_be_empty) {
    if (!str) return lloco_error(LLOCO_ERR_INVAL, "%s: %s is NULL", ctx, what);
    size_t len = strnlen(str, max + 1);
    if (len > max)
        return lloco_error(LLOCO_ERR_INVAL, "%s: %s is longer than %zu bytes", ctx, what, max);
    if (len == 0 && !may_be_empty)
        return lloco_error(LLOCO_ERR_INVAL, "%s: %s is empty", ctx, what);
    if (!utf8_valid(str, len))
        return lloco_error(LLOCO_ERR_INVAL, "%s: %s is not valid UTF-8", ctx, what);
    return 0;
}

/* Checks a document against the fingerprint and sums the bytes its
 * records take into *need. */
static int check_doc(const lloco_store *s, const lloco_doc_in *d, const lloco_chunk_in *chunks,
                     int n, size_t *need) {
    if (!d) return lloco_error(LLOCO_ERR_INVAL, "put_doc: doc is NULL");
    int rc;
    if ((rc =
             check_str("put_doc", "document id", d->id, (size_t)mdb_env_get_maxkeysize(s->env), 0)))
        return rc;
    char ctx[64];
    snprintf(ctx, sizeof ctx, "put_doc '%.40s%s'", d->id, strlen(d->id) > 40 ? "..." : "");
    if ((rc = check_str(ctx, "title", d->title, STORE_MAX_TITLE, 1)) ||
        (rc = check_str(ctx, "group", d->group, STORE_MAX_GROUP, 1)))
        return rc;
    if (n < 0 || (n > 0 && !chunks))
        return lloco_error(LLOCO_ERR_INVAL, "%s: %d chunks at %p", ctx, n, (const void *)chunks);
    size_t total = store_doc_rec_size(d), id_len = strlen(d->id);
    const lloco_store_fingerprint *fp = &s->fp;
    for (int i = 0; i < n; i++) {
        const lloco_chunk_in *c = &chunks[i];
        if (c->tok_begin > c->tok_end || c->tok_end > d->n_tokens)
            return lloco_error(LLOCO_ERR_INVAL,
                               "%s: chunk %d: token span %u..%u outside the document's %llu tokens",
                               ctx, i, c->tok_begin, c->tok_end, (unsigned long long)d->n_tokens);
        if (c->text_len > 0 && !c->text)
            return lloco_error(LLOCO_ERR_INVAL, "%s: chunk %d: text is NULL", ctx, i);
        if (c->n_slots < 0 || c->n_slots > fp->n_summary)
            return lloco_error(LLOCO_ERR_INVAL,
                               "%s: chunk %d: n_slots %d outside 0..%d (the store's n_summary)",
                               ctx, i, c->n_slots, fp->n_summary);
        if (c->n_slots > 0 && !c->slots)
            return lloco_error(LLOCO_ERR_INVAL, "%s: chunk %d: slots is NULL", ctx, i);
        if (!c->vec) return lloco_error(LLOCO_ERR_INVAL, "%s: chunk %d: vec is NULL", ctx, i);
        for (int j = 0; j < fp->embed_dim; j++)
            if (!isfinite(c->vec[j]))
                return lloco_error(LLOCO_ERR_INVAL, "%s: chunk %d: vec[%d] is not finite", ctx, i,
                                   j);
        size_t sz = store_chunk_rec_size(s, id_len, c);
        if (!sz)
            return lloco_error(LLOCO_ERR_INVAL, "%s: chunk %d: too large (%zu bytes of text)", ctx,
                               i, c->text_len);
        total += sz;
    }
    *need = total;
    return 0;
}

/* ---- documents ---------------------------------------------------------------- */

/* Deletes a document's chunks and takes them off the counters. */
static int drop_chunks(lloco_store *s, MDB_txn *txn, const lloco_doc_view *d, uint64_t n_slots,
                       store_counters *k) {
    for (uint32_t i = 0; i < d->n_chunks; i++) {
        uint8_t key[8];
        store_chunk_key(d->first_chunk + i, key);
        MDB_val kv = {8, key};
        int rc = mdb_del(txn, s->dbi_chunks, &kv, NULL);
        if (rc == MDB_NOTFOUND)
            return lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: chunk %llu of '%s' is missing",
                               s->data_path, (unsigned long long)(d->first_chunk + i), d->id);
        if (rc) return step(s, rc, "delete chunk");
    }
    k->n_tokens -= d->n_tokens < k->n_tokens ? d->n_tokens : k->n_tokens;
    k->n_slots -= n_slots < k->n_slots ? n_slots : k->n_slots;
    return 0;
}

typedef struct {
    const lloco_doc_in *doc;
    const lloco_chunk_in *chunks;
    int n;
    uint64_t *ids;
    int written;
    uint64_t generation;
} put_ctx;

static int put_body(lloco_store *s, MDB_txn *txn, void *vctx) {
    put_ctx *p = vctx;
    const lloco_doc_in *d = p->doc;
    store_counters k;
    int rc = store_counters_get(s, txn, &k);
    if (rc) return rc;
    MDB_val key = {strlen(d->id), (void *)d->id}, val;
    rc = mdb_get(txn, s->dbi_docs, &key, &val);
    if (rc == 0) {
        lloco_doc_view old;
        uint64_t old_slots;
        if ((rc = store_doc_rec_read(s, &key, &val, &old, &old_slots))) return rc;
        if (memcmp(old.content_hash, d->content_hash, 16) == 0) {
            for (int i = 0; p->ids && i < p->n; i++)
                p->ids[i] = (uint32_t)i < old.n_chunks ? old.first_chunk + (uint64_t)i : UINT64_MAX;
            p->written = 0;
            return STORE_NOCHANGE;
        }
        if ((rc = drop_chunks(s, txn, &old, old_slots, &k))) return rc;
    } else if (rc != MDB_NOTFOUND) {
        return step(s, rc, "read document");
    }

    uint64_t first = k.next_chunk, n_slots = 0;
    for (int i = 0; i < p->n; i++) {
        const lloco_chunk_in *c = &p->chunks[i];
        uint8_t ckey[8];
        store_chunk_key(first + (uint64_t)i, ckey);
        MDB_val ck = {8, ckey}, cv = {store_chunk_rec_size(s, key.mv_size, c), NULL};
        /* Ids only grow, so every chunk appends at the end of the tree. */
        rc = mdb_put(txn, s->dbi_chunks, &ck, &cv, MDB_RESERVE | MDB_APPEND);
        if (rc == MDB_KEYEXIST)
            return lloco_error(LLOCO_ERR_FORMAT,
                               "%s is damaged: the chunk id counter (%llu) is behind the chunks",
                               s->data_path, (unsigned long long)first);
        if (rc) return step(s, rc, "write chunk");
        store_chunk_rec_write(s, cv.mv_data, cv.mv_size, d->id, c);
        if (p->ids) p->ids[i] = first + (uint64_t)i;
        n_slots += (uint64_t)c->n_slots;
    }
    val = (MDB_val){store_doc_rec_size(d), NULL};
    if ((rc = mdb_put(txn, s->dbi_docs, &key, &val, MDB_RESERVE)))
        return step(s, rc, "write document");
    store_doc_rec_write(val.mv_data, val.mv_size, d, first, (uint32_t)p->n, n_slots);
    k.next_chunk += (uint64_t)p->n;
    k.generation++;
    k.n_tokens += d->n_tokens;
    k.n_slots += n_slots;
    if ((rc = store_counters_put(s, txn, &k))) return step(s, rc, "write counters");
    p->written = 1;
    p->generation = k.generation;
    return 0;
}

int lloco_store_put_doc(lloco_store *s, const lloco_doc_in *doc, const lloco_chunk_in *chunks,
                        int n_chunks, uint64_t *chunk_ids, int *written) {
    if (written) *written = 0;
    size_t need = 0;
    int rc = check_doc(s, doc, chunks, n_chunks, &need);
    if (rc) return rc;
    put_ctx p = {doc, chunks, n_chunks, chunk_ids, 0, 0};
    if ((rc = run_write(s, need, put_body, &p))) return rc;
    if (p.written) store_generation_seen(s, p.generation);
    if (written) *written = p.written;
    return 0;
}

typedef struct {
    const char *id;
    uint64_t generation;
} delete_ctx;

static int delete_body(lloco_store *s, MDB_txn *txn, void *vctx) {
    delete_ctx *dc = vctx;
    MDB_val key = {strlen(dc->id), (void *)dc->id}, val;
    int rc = key.mv_size == 0 || key.mv_size > (size_t)mdb_env_get_maxkeysize(s->env)
                 ? MDB_NOTFOUND
                 : mdb_get(txn, s->dbi_docs, &key, &val);
    if (rc == MDB_NOTFOUND)
        return lloco_error(LLOCO_ERR_NOTFOUND, "document '%s' is not in store %s", dc->id, s->dir);
    if (rc) return step(s, rc, "read document");
    store_counters k;
    lloco_doc_view d;
    uint64_t n_slots;
    if ((rc = store_counters_get(s, txn, &k)) ||
        (rc = store_doc_rec_read(s, &key, &val, &d, &n_slots)) ||
        (rc = drop_chunks(s, txn, &d, n_slots, &k)))
        return rc;
    if ((rc = mdb_del(txn, s->dbi_docs, &key, NULL))) return step(s, rc, "delete document");
    k.generation++;
    if ((rc = store_counters_put(s, txn, &k))) return step(s, rc, "write counters");
    dc->generation = k.generation;
    return 0;
}

int lloco_store_delete_doc(lloco_store *s, const char *id) {
    if (!id) return lloco_error(LLOCO_ERR_INVAL, "delete_doc: id is NULL");
    delete_ctx dc = {id, 0};
    int rc = run_write(s, s->psize * 8, delete_body, &dc);
    if (!rc) store_generation_seen(s, dc.generation);
    return rc;
}

/* ---- groups ----------------------------------------------------------------- */

/* groups: key = group name (no NUL), value = adapter name with its NUL. */
typedef struct {
    const char *group, *adapter; /* adapter NULL: unset */
} group_ctx;

static int group_body(lloco_store *s, MDB_txn *txn, void *vctx) {
    group_ctx *g = vctx;
    MDB_val key = {strlen(g->group), (void *)g->group};
    if (g->adapter) {
        MDB_val val = {strlen(g->adapter) + 1, (void *)g->adapter};
        return step(s, mdb_put(txn, s->dbi_groups, &key, &val, 0), "write group");
    }
    int rc = mdb_del(txn, s->dbi_groups, &key, NULL);
    if (rc == MDB_NOTFOUND)
        return lloco_error(LLOCO_ERR_NOTFOUND, "group '%s' has no adapter in store %s", g->group,
                           s->dir);
    return step(s, rc, "delete group");
}

int lloco_store_group_set(lloco_store *s, const char *group, const char *adapter) {
    int rc;
    if ((rc = check_str("group_set", "group", group, STORE_MAX_GROUP, 0)) ||
        (rc = check_str("group_set", "adapter", adapter, STORE_MAX_ADAPTER, 0)))
        return rc;
    group_ctx g = {group, adapter};
    return run_write(s, s->psize * 8, group_body, &g);
}

int lloco_store_group_unset(lloco_store *s, const char *group) {
    int rc = check_str("group_unset", "group", group, STORE_MAX_GROUP, 0);
    if (rc) return rc;
    group_ctx g = {group, NULL};
    return run_write(s, s->psize * 8, group_body, &g);
}

/* A group value as stored: the adapter name and its NUL, nothing else. */
static int group_val_ok(const MDB_val *v) {
    const char *a = v->mv_data;
    return v->mv_size >= 2 && v->mv_size <= STORE_MAX_ADAPTER + 1 && a[v->mv_size - 1] == 0 &&
           !memchr(a, 0, v->mv_size - 1);
}

int lloco_store_group_get(lloco_store *s, const char *group, char *buf, size_t cap) {
    int rc = check_str("group_get", "group", group, STORE_MAX_GROUP, 0);
    if (rc) return rc;
    MDB_txn *txn;
    if ((rc = store_txn_begin(s, MDB_RDONLY, &txn))) return rc;
    MDB_val key = {strlen(group), (void *)group}, val;
    rc = mdb_get(txn, s->dbi_groups, &key, &val);
    if (rc == MDB_NOTFOUND)
        rc =
            lloco_error(LLOCO_ERR_NOTFOUND, "group '%s' has no adapter in store %s", group, s->dir);
    else if (rc)
        rc = store_mdb_error(s, rc, "read group");
    else if (!group_val_ok(&val))
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: group '%s'", s->data_path, group);
    else if (val.mv_size > cap)
        rc =
            lloco_error(LLOCO_ERR_RANGE, "group '%s': adapter name needs %zu bytes, buffer has %zu",
                        group, val.mv_size, cap);
    else
        memcpy(buf, val.mv_data, val.mv_size);
    store_txn_abort(s, txn);
    return rc;
}

int lloco_store_foreach_group(lloco_store *s,
                              int (*cb)(void *ctx, const char *group, const char *adapter),
                              void *ctx) {
    /* Copied out first, so that the callback runs outside any transaction
     * and may itself change the map. */
    MDB_txn *txn;
    int rc = store_txn_begin(s, MDB_RDONLY, &txn);
    if (rc) return rc;
    MDB_cursor *cur;
    char *names = NULL;
    size_t len = 0, cap = 0;
    if ((rc = mdb_cursor_open(txn, s->dbi_groups, &cur))) {
        store_txn_abort(s, txn);
        return store_mdb_error(s, rc, "open cursor");
    }
    MDB_val k, v;
    int mrc;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size == 0 || k.mv_size > STORE_MAX_GROUP || memchr(k.mv_data, 0, k.mv_size) ||
            !group_val_ok(&v)) {
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: a group record", s->data_path);
            break;
        }
        /* group NUL adapter NUL, one after another */
        size_t add = k.mv_size + 1 + v.mv_size;
        if (len + add > cap) {
            size_t ncap = cap ? cap * 2 : 1024;
            while (ncap < len + add) ncap *= 2;
            char *nn = realloc(names, ncap);
            if (!nn) {
                rc = lloco_error(LLOCO_ERR_NOMEM, "store %s: out of memory", s->dir);
                break;
            }
            names = nn;
            cap = ncap;
        }
        memcpy(names + len, k.mv_data, k.mv_size);
        names[len + k.mv_size] = 0;
        memcpy(names + len + k.mv_size + 1, v.mv_data, v.mv_size);
        len += add;
    }
    if (!rc && mrc != MDB_NOTFOUND) rc = store_mdb_error(s, mrc, "iterate groups");
    mdb_cursor_close(cur);
    store_txn_abort(s, txn);
    for (size_t off = 0; !rc && off < len;) {
        const char *g = names + off, *a = g + strlen(g) + 1;
        off = (size_t)(a - names) + strlen(a) + 1;
        rc = cb(ctx, g, a);
    }
    free(names);
    return rc;
}
