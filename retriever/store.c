/* store: the LMDB environment behind a lloco_store — opening it (schema,
 * fingerprint and damage checks), the `meta` database, read transactions
 * and stats, and the bookkeeping that lets the map grow under readers.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "store_internal.h"

/* Small, so that growth is an everyday path rather than a rare one; on
 * Linux the map is address space and the file grows only as pages are
 * written. Each growth doubles it. */
#define STORE_INITIAL_MAP ((size_t)16 << 20)
#define FINGERPRINT_VERSION 1
/* Longest a map resize waits for this process's transactions to end before
 * it gives up with LLOCO_ERR_FULL (a thread that holds a read transaction
 * while it writes would otherwise wait on itself forever). */
#define STORE_REMAP_WAIT_S 60

/* LMDB must not open one environment twice in a process (closing the
 * second handle drops the first one's file locks), so opens are tracked. */
static pthread_mutex_t g_open_mu = PTHREAD_MUTEX_INITIALIZER;
static lloco_store *g_open;

int store_mdb_error(const lloco_store *s, int rc, const char *what) {
    switch (rc) {
    case MDB_INVALID:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
        return lloco_error(LLOCO_ERR_FORMAT, "%s is damaged or not a store (%s: %s)", s->data_path,
                           what, mdb_strerror(rc));
    case MDB_READERS_FULL:
        return lloco_error(LLOCO_ERR_FULL,
                           "store %s: %s: too many read transactions open at once (LMDB's reader "
                           "table is full; end some)",
                           s->dir, what);
    case MDB_TXN_FULL:
        return lloco_error(LLOCO_ERR_FULL,
                           "store %s: %s: too many pages changed in one transaction", s->dir, what);
    case MDB_MAP_FULL:
        return lloco_error(LLOCO_ERR_FULL, "store %s: %s: the map is full", s->dir, what);
    case ENOMEM:
        return lloco_error(LLOCO_ERR_NOMEM, "store %s: %s: out of memory", s->dir, what);
    default:
        return lloco_error(LLOCO_ERR_IO, "store %s: %s: %s", s->dir, what, mdb_strerror(rc));
    }
}

/* ---- transactions and remapping ----------------------------------------- */

static void txn_done(lloco_store *s) {
    pthread_mutex_lock(&s->mu);
    if (--s->active == 0) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int store_txn_begin(lloco_store *s, unsigned flags, MDB_txn **out) {
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (s->remapping) pthread_cond_wait(&s->cv, &s->mu);
        s->active++;
        pthread_mutex_unlock(&s->mu);
        int rc = mdb_txn_begin(s->env, NULL, flags, out);
        if (rc == 0) return 0;
        txn_done(s);
        if (rc != MDB_MAP_RESIZED) return store_mdb_error(s, rc, "begin transaction");
        /* Another process grew the map past ours. */
        if ((rc = store_remap(s, 0))) return rc;
    }
}

void store_txn_abort(lloco_store *s, MDB_txn *txn) {
    mdb_txn_abort(txn);
    txn_done(s);
}

int store_txn_commit(lloco_store *s, MDB_txn *txn) {
    int rc = mdb_txn_commit(txn);
    txn_done(s);
    return rc;
}

int store_remap(lloco_store *s, size_t new_size) {
    pthread_mutex_lock(&s->mu);
    if (s->remapping) {
        /* Someone else is remapping; theirs serves us too. */
        while (s->remapping) pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    s->remapping = 1;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += STORE_REMAP_WAIT_S;
    int rc = 0;
    while (s->active > 0 && rc == 0) rc = pthread_cond_timedwait(&s->cv, &s->mu, &deadline);
    if (s->active == 0) rc = mdb_env_set_mapsize(s->env, new_size);
    int stuck = s->active > 0;
    s->remapping = 0;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (stuck)
        return lloco_error(LLOCO_ERR_FULL,
                           "store %s: the map must grow but read transactions stayed open for %d s "
                           "(a thread holding a read transaction must not write)",
                           s->dir, STORE_REMAP_WAIT_S);
    return rc ? store_mdb_error(s, rc, "resize map") : 0;
}

/* ---- meta ------------------------------------------------------------------- */

static MDB_val mval(const char *str) { return (MDB_val){strlen(str), (void *)str}; }

void store_generation_seen(lloco_store *s, uint64_t g) {
    uint64_t cur = atomic_load(&s->generation);
    while (cur < g && !atomic_compare_exchange_weak(&s->generation, &cur, g)) {
    }
}

int store_counters_get(const lloco_store *s, MDB_txn *txn, store_counters *out) {
    MDB_val k = mval("counters"), v;
    int rc = mdb_get(txn, s->dbi_meta, &k, &v);
    if (rc == MDB_NOTFOUND || (rc == 0 && v.mv_size != 32))
        return lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: meta 'counters' %s", s->data_path,
                           rc ? "missing" : "has the wrong size");
    if (rc) return store_mdb_error(s, rc, "read counters");
    uint64_t c[4];
    memcpy(c, v.mv_data, sizeof c);
    *out = (store_counters){c[0], c[1], c[2], c[3]};
    return 0;
}

int store_counters_put(lloco_store *s, MDB_txn *txn, const store_counters *c) {
    uint64_t w[4] = {c->generation, c->next_chunk, c->n_tokens, c->n_slots};
    MDB_val k = mval("counters"), v = {sizeof w, w};
    return mdb_put(txn, s->dbi_meta, &k, &v, 0);
}

/* A fixed-size string field holds a NUL within its array. */
#define FIELD_OK(f) (memchr((f), 0, sizeof(f)) != NULL)

static int fingerprint_check(const lloco_store_fingerprint *fp) {
    if (!FIELD_OK(fp->model_hash) || !FIELD_OK(fp->method) || !FIELD_OK(fp->summary_init) ||
        !FIELD_OK(fp->encoder_lora) || !FIELD_OK(fp->embedder_hash))
        return lloco_error(LLOCO_ERR_INVAL, "fingerprint: a string field is not NUL-terminated");
    if (strcmp(fp->method, "autocompressor") != 0 && strcmp(fp->method, "icae") != 0)
        return lloco_error(LLOCO_ERR_INVAL,
                           "fingerprint: method '%s' (expected autocompressor or icae)",
                           fp->method);
    if (!store_dtype_name(fp->slot_dtype))
        return lloco_error(LLOCO_ERR_INVAL,
                           "fingerprint: slot_dtype %s (expected f32, f16 or bf16)",
                           lloco_dtype_name(fp->slot_dtype));
    const struct {
        const char *name;
        int v, lo, hi;
    } ints[] = {{"n_summary", fp->n_summary, 1, 65536},
                {"segment_tokens", fp->segment_tokens, 1, 1 << 24},
                {"accumulate", fp->accumulate, 0, 1},
                {"d_model", fp->d_model, 1, 65536},
                {"embed_dim", fp->embed_dim, 1, 65536}};
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(ints); i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi)
            return lloco_error(LLOCO_ERR_INVAL, "fingerprint: %s %d outside %d..%d", ints[i].name,
                               ints[i].v, ints[i].lo, ints[i].hi);
    return 0;
}

/* The fingerprint is kept as a small JSON object, readable with any LMDB
 * tool and tolerant of fields added later. */
static char *fingerprint_to_json(const lloco_store_fingerprint *fp) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "version", FINGERPRINT_VERSION);
    cJSON_AddStringToObject(o, "model_hash", fp->model_hash);
    cJSON_AddStringToObject(o, "method", fp->method);
    cJSON_AddNumberToObject(o, "n_summary", fp->n_summary);
    cJSON_AddNumberToObject(o, "segment_tokens", fp->segment_tokens);
    cJSON_AddNumberToObject(o, "accumulate", fp->accumulate);
    cJSON_AddNumberToObject(o, "d_model", fp->d_model);
    cJSON_AddStringToObject(o, "slot_dtype", store_dtype_name(fp->slot_dtype));
    cJSON_AddStringToObject(o, "summary_init", fp->summary_init);
    cJSON_AddStringToObject(o, "encoder_lora", fp->encoder_lora);
    cJSON_AddStringToObject(o, "embedder_hash", fp->embedder_hash);
    cJSON_AddNumberToObject(o, "embed_dim", fp->embed_dim);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}

static int json_str(const cJSON *o, const char *name, char *dst, size_t cap) {
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, name));
    if (!v || strlen(v) >= cap) return -1;
    strcpy(dst, v);
    return 0;
}

static int json_int(const cJSON *o, const char *name, int *dst) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(it)) return -1;
    double d = cJSON_GetNumberValue(it);
    if (d != floor(d) || d < -2147483648.0 || d > 2147483647.0) return -1;
    *dst = (int)d;
    return 0;
}

static int fingerprint_from_json(const lloco_store *s, const MDB_val *v,
                                 lloco_store_fingerprint *fp) {
    cJSON *o = cJSON_ParseWithLength(v->mv_data, v->mv_size);
    int version = 0, bad = !o || json_int(o, "version", &version);
    if (!bad && version > FINGERPRINT_VERSION) {
        cJSON_Delete(o);
        return lloco_error(LLOCO_ERR_UNSUPPORTED,
                           "store %s: fingerprint version %d is newer than this lloco reads (%d)",
                           s->dir, version, FINGERPRINT_VERSION);
    }
    memset(fp, 0, sizeof *fp);
    char dtype[16];
    bad = bad || json_str(o, "model_hash", fp->model_hash, sizeof fp->model_hash) ||
          json_str(o, "method", fp->method, sizeof fp->method) ||
          json_int(o, "n_summary", &fp->n_summary) ||
          json_int(o, "segment_tokens", &fp->segment_tokens) ||
          json_int(o, "accumulate", &fp->accumulate) || json_int(o, "d_model", &fp->d_model) ||
          json_str(o, "slot_dtype", dtype, sizeof dtype) ||
          store_dtype_from_name(dtype, &fp->slot_dtype) ||
          json_str(o, "summary_init", fp->summary_init, sizeof fp->summary_init) ||
          json_str(o, "encoder_lora", fp->encoder_lora, sizeof fp->encoder_lora) ||
          json_str(o, "embedder_hash", fp->embedder_hash, sizeof fp->embedder_hash) ||
          json_int(o, "embed_dim", &fp->embed_dim);
    cJSON_Delete(o);
    if (bad || fingerprint_check(fp))
        return lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: unreadable encoder fingerprint",
                           s->data_path);
    return 0;
}

/* ---- open / close ----------------------------------------------------------- */

static int open_dbis(lloco_store *s, MDB_txn *txn, unsigned flags) {
    static const char *names[] = {"meta", "docs", "chunks", "groups"};
    MDB_dbi *dbis[] = {&s->dbi_meta, &s->dbi_docs, &s->dbi_chunks, &s->dbi_groups};
    for (int i = 0; i < 4; i++) {
        int rc = mdb_dbi_open(txn, names[i], flags, dbis[i]);
        if (rc == MDB_NOTFOUND)
            return lloco_error(LLOCO_ERR_FORMAT, "%s is not a lloco store (no '%s' database)",
                               s->data_path, names[i]);
        if (rc) return store_mdb_error(s, rc, "open database");
    }
    return 0;
}

/* Writes the meta of a new (or empty) environment. */
static int store_init(lloco_store *s, const lloco_store_fingerprint *fp) {
    s->fp = *fp;
    char *json = fingerprint_to_json(fp);
    if (!json) return lloco_error(LLOCO_ERR_NOMEM, "store %s: out of memory", s->dir);
    MDB_txn *txn;
    int rc = store_txn_begin(s, 0, &txn);
    if (rc) {
        cJSON_free(json);
        return rc;
    }
    uint32_t version = LLOCO_STORE_SCHEMA_VERSION;
    MDB_val kv = mval("schema_version"), vv = {sizeof version, &version};
    MDB_val kf = mval("fingerprint"), vf = mval(json);
    store_counters zero = {0, 0, 0, 0};
    rc = open_dbis(s, txn, MDB_CREATE);
    int mrc = 0;
    if (!rc && !(mrc = mdb_put(txn, s->dbi_meta, &kv, &vv, 0)) &&
        !(mrc = mdb_put(txn, s->dbi_meta, &kf, &vf, 0)) &&
        !(mrc = store_counters_put(s, txn, &zero)))
        mrc = store_txn_commit(s, txn);
    else
        store_txn_abort(s, txn);
    cJSON_free(json);
    if (!rc && mrc) rc = store_mdb_error(s, mrc, "create store");
    return rc;
}

static int store_load(lloco_store *s, const lloco_store_fingerprint *fp, int flags) {
    MDB_txn *txn;
    int rc = store_txn_begin(s, MDB_RDONLY, &txn);
    if (rc) return rc;
    MDB_dbi main_dbi;
    MDB_stat st;
    rc = mdb_dbi_open(txn, "meta", 0, &s->dbi_meta);
    if (rc == MDB_NOTFOUND && !(rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) &&
        !(rc = mdb_stat(txn, main_dbi, &st))) {
        store_txn_abort(s, txn);
        /* An environment with nothing in it: creation stopped before its
         * first commit. */
        if (st.ms_entries == 0 && fp && (flags & LLOCO_STORE_CREATE)) return store_init(s, fp);
        if (st.ms_entries == 0)
            return lloco_error(LLOCO_ERR_NOTFOUND, "store %s is empty (never initialised)", s->dir);
        return lloco_error(LLOCO_ERR_FORMAT, "%s is not a lloco store (no 'meta' database)",
                           s->data_path);
    }
    if (rc) {
        store_txn_abort(s, txn);
        return store_mdb_error(s, rc, "open database");
    }
    if ((rc = open_dbis(s, txn, 0))) goto fail;

    MDB_val k = mval("schema_version"), v;
    uint32_t version;
    if ((rc = mdb_get(txn, s->dbi_meta, &k, &v)) || v.mv_size != sizeof version) {
        rc = rc && rc != MDB_NOTFOUND
                 ? store_mdb_error(s, rc, "read schema version")
                 : lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: no valid schema version",
                               s->data_path);
        goto fail;
    }
    memcpy(&version, v.mv_data, sizeof version);
    if (version > LLOCO_STORE_SCHEMA_VERSION) {
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED,
                         "store %s has schema version %u; this lloco reads version %d (upgrade "
                         "lloco)",
                         s->dir, version, LLOCO_STORE_SCHEMA_VERSION);
        goto fail;
    }
    if (version < 1) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: schema version %u", s->data_path,
                         version);
        goto fail;
    }
    k = mval("fingerprint");
    if ((rc = mdb_get(txn, s->dbi_meta, &k, &v))) {
        rc = rc == MDB_NOTFOUND
                 ? lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: no fingerprint", s->data_path)
                 : store_mdb_error(s, rc, "read fingerprint");
        goto fail;
    }
    if ((rc = fingerprint_from_json(s, &v, &s->fp))) goto fail;
    store_counters c;
    if ((rc = store_counters_get(s, txn, &c))) goto fail;
    atomic_store(&s->generation, c.generation);
    /* Committing (not aborting) keeps the database handles for later
     * transactions. */
    if ((rc = store_txn_commit(s, txn))) return store_mdb_error(s, rc, "open databases");
    if (fp) {
        char diff[1024];
        if (lloco_store_fingerprint_diff(&s->fp, fp, diff, sizeof diff))
            return lloco_error(LLOCO_ERR_MISMATCH,
                               "store %s was written by a different encoder: %s", s->dir, diff);
    }
    return 0;
fail:
    store_txn_abort(s, txn);
    return rc;
}

/* LMDB reads only the two meta pages before mapping the file; a page past
 * the end of a truncated file would be SIGBUS at first touch. So the file
 * must hold every page the newest meta page says is in use. */
static int check_file_size(lloco_store *s) {
    MDB_envinfo info;
    MDB_stat st;
    struct stat fst;
    int rc = mdb_env_info(s->env, &info);
    if (!rc) rc = mdb_env_stat(s->env, &st);
    if (rc) return store_mdb_error(s, rc, "read environment info");
    if (stat(s->data_path, &fst) != 0)
        return lloco_error(LLOCO_ERR_IO, "%s: %s", s->data_path, strerror(errno));
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    if ((uint64_t)fst.st_size < need)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s is truncated: %lld bytes, its meta page says %llu are in use",
                           s->data_path, (long long)fst.st_size, (unsigned long long)need);
    s->psize = st.ms_psize;
    s->min_chunk_rec = st.ms_psize / 2;
    return 0;
}

static int mkdir_p(const char *dir) {
    char *p = strdup(dir);
    if (!p) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    int rc = 0;
    for (char *q = p + 1;; q++) {
        if (*q != '/' && *q != '\0') continue;
        char c = *q;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = lloco_error(LLOCO_ERR_IO, "cannot create %s: %s", p, strerror(errno));
            break;
        }
        *q = c;
        if (c == '\0') break;
    }
    free(p);
    return rc;
}

static int register_open(lloco_store *s) {
    pthread_mutex_lock(&g_open_mu);
    for (lloco_store *o = g_open; o; o = o->next_open)
        if (o->dev == s->dev && o->ino == s->ino) {
            pthread_mutex_unlock(&g_open_mu);
            return lloco_error(LLOCO_ERR_EXISTS, "store %s is already open in this process (as %s)",
                               s->dir, o->dir);
        }
    s->next_open = g_open;
    g_open = s;
    pthread_mutex_unlock(&g_open_mu);
    return 0;
}

static void unregister_open(lloco_store *s) {
    pthread_mutex_lock(&g_open_mu);
    for (lloco_store **o = &g_open; *o; o = &(*o)->next_open)
        if (*o == s) {
            *o = s->next_open;
            break;
        }
    pthread_mutex_unlock(&g_open_mu);
}

static void store_free(lloco_store *s, int registered) {
    if (s->env) mdb_env_close(s->env);
    if (registered) unregister_open(s);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->write_mu);
    pthread_cond_destroy(&s->cv);
    free(s->dir);
    free(s->data_path);
    free(s);
}

static lloco_store *store_alloc(const char *dir) {
    lloco_store *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->dir = strdup(dir);
    size_t n = strlen(dir) + sizeof "/data.mdb";
    s->data_path = malloc(n);
    if (s->data_path) snprintf(s->data_path, n, "%s/data.mdb", dir);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->write_mu, NULL);
    if (!s->dir || !s->data_path) {
        store_free(s, 0);
        return NULL;
    }
    return s;
}

int lloco_store_open(const char *dir, const lloco_store_fingerprint *fp, int flags,
                     lloco_store **out) {
    if (!out) return lloco_error(LLOCO_ERR_INVAL, "lloco_store_open: out is NULL");
    *out = NULL;
    if (!dir || !*dir) return lloco_error(LLOCO_ERR_INVAL, "lloco_store_open: no directory");
    if ((flags & ~(LLOCO_STORE_CREATE | LLOCO_STORE_READONLY)) ||
        ((flags & LLOCO_STORE_CREATE) && (flags & LLOCO_STORE_READONLY)))
        return lloco_error(LLOCO_ERR_INVAL, "lloco_store_open %s: bad flags %#x", dir, flags);
    int rc = 0;
    if (fp && (rc = fingerprint_check(fp))) return rc;

    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT) return lloco_error(LLOCO_ERR_IO, "%s: %s", dir, strerror(errno));
        if (!fp || !(flags & LLOCO_STORE_CREATE))
            return lloco_error(LLOCO_ERR_NOTFOUND, "store %s does not exist%s", dir,
                               fp ? "" : " (a new store needs an encoder fingerprint)");
        if ((rc = mkdir_p(dir))) return rc;
        if (stat(dir, &st) != 0) return lloco_error(LLOCO_ERR_IO, "%s: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) return lloco_error(LLOCO_ERR_INVAL, "store %s: not a directory", dir);

    lloco_store *s = store_alloc(dir);
    if (!s) return lloco_error(LLOCO_ERR_NOMEM, "store %s: out of memory", dir);
    s->readonly = (flags & LLOCO_STORE_READONLY) != 0;
    s->dev = st.st_dev;
    s->ino = st.st_ino;

    struct stat dst;
    int is_new = stat(s->data_path, &dst) != 0;
    if (is_new && errno != ENOENT)
        rc = lloco_error(LLOCO_ERR_IO, "%s: %s", s->data_path, strerror(errno));
    else if (is_new && (!fp || !(flags & LLOCO_STORE_CREATE)))
        rc = lloco_error(LLOCO_ERR_NOTFOUND, "no store in %s%s", dir,
                         fp ? "" : " (a new store needs an encoder fingerprint)");
    /* LMDB would take an empty file for a new environment. */
    else if (!is_new && dst.st_size == 0)
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s is empty (truncated?)", s->data_path);
    if (rc) {
        store_free(s, 0);
        return rc;
    }
    if ((rc = register_open(s))) {
        store_free(s, 0);
        return rc;
    }

    if ((rc = mdb_env_create(&s->env))) {
        s->env = NULL;
        rc = store_mdb_error(s, rc, "create environment");
    } else if ((rc = mdb_env_set_maxdbs(s->env, 4)) ||
               (is_new && (rc = mdb_env_set_mapsize(s->env, STORE_INITIAL_MAP))) ||
               (rc = mdb_env_open(s->env, dir, MDB_NOTLS | (s->readonly ? MDB_RDONLY : 0), 0644))) {
        rc = store_mdb_error(s, rc, "open");
    } else if (!(rc = check_file_size(s))) {
        rc = is_new ? store_init(s, fp) : store_load(s, fp, flags);
    }
    if (rc) {
        store_free(s, 1);
        return rc;
    }
    *out = s;
    return 0;
}

void lloco_store_close(lloco_store *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    int active = s->active;
    pthread_mutex_unlock(&s->mu);
    LLOCO_ASSERT(active == 0 && "read transactions still open at lloco_store_close");
    store_free(s, 1);
}

const lloco_store_fingerprint *lloco_store_fingerprint_of(const lloco_store *s) { return &s->fp; }

uint64_t lloco_store_generation(const lloco_store *s) {
    return atomic_load(&((lloco_store *)s)->generation);
}

const char *lloco_store_dir(const lloco_store *s) { return s->dir; }

/* ---- reading ------------------------------------------------------------------ */

int lloco_store_read_begin(lloco_store *s, lloco_store_txn **out) {
    *out = NULL;
    lloco_store_txn *t = malloc(sizeof *t);
    if (!t) return lloco_error(LLOCO_ERR_NOMEM, "store %s: out of memory", s->dir);
    t->s = s;
    int rc = store_txn_begin(s, MDB_RDONLY, &t->txn);
    if (rc) {
        free(t);
        return rc;
    }
    store_counters c;
    if ((rc = store_counters_get(s, t->txn, &c))) {
        store_txn_abort(s, t->txn);
        free(t);
        return rc;
    }
    t->generation = c.generation;
    store_generation_seen(s, c.generation);
    *out = t;
    return 0;
}

void lloco_store_read_end(lloco_store_txn *t) {
    if (!t) return;
    store_txn_abort(t->s, t->txn);
    free(t);
}

uint64_t lloco_store_txn_generation(const lloco_store_txn *t) { return t->generation; }

int lloco_store_get_doc(lloco_store_txn *t, const char *id, lloco_doc_view *out) {
    MDB_val k = mval(id), v;
    /* No document can have a key LMDB would refuse. */
    int rc = k.mv_size == 0 || k.mv_size > (size_t)mdb_env_get_maxkeysize(t->s->env)
                 ? MDB_NOTFOUND
                 : mdb_get(t->txn, t->s->dbi_docs, &k, &v);
    if (rc == MDB_NOTFOUND)
        return lloco_error(LLOCO_ERR_NOTFOUND, "document '%s' is not in store %s", id, t->s->dir);
    if (rc) return store_mdb_error(t->s, rc, "read document");
    return store_doc_rec_read(t->s, &k, &v, out, NULL);
}

int lloco_store_get_chunk(lloco_store_txn *t, uint64_t chunk_id, lloco_chunk_view *out) {
    uint8_t key[8];
    store_chunk_key(chunk_id, key);
    MDB_val k = {8, key}, v;
    int rc = mdb_get(t->txn, t->s->dbi_chunks, &k, &v);
    if (rc == MDB_NOTFOUND)
        return lloco_error(LLOCO_ERR_NOTFOUND, "chunk %llu is not in store %s",
                           (unsigned long long)chunk_id, t->s->dir);
    if (rc) return store_mdb_error(t->s, rc, "read chunk");
    return store_chunk_rec_read(t->s, &k, &v, out);
}

/* Walks dbi in key order, from the first key >= *start when start is not
 * NULL, handing each record to visit(); stops at the first non-zero result
 * and returns it. */
static int walk(lloco_store_txn *t, MDB_dbi dbi, const MDB_val *start,
                int (*visit)(lloco_store_txn *t, const MDB_val *k, const MDB_val *v, void *ctx),
                void *ctx) {
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, dbi, &cur);
    if (rc) return store_mdb_error(t->s, rc, "open cursor");
    MDB_val k = start ? *start : (MDB_val){0}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, start ? MDB_SET_RANGE : MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        int r = visit(t, &k, &v, ctx);
        if (r) {
            mdb_cursor_close(cur);
            return r;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : store_mdb_error(t->s, rc, "iterate");
}

typedef struct {
    int (*doc_cb)(void *ctx, const lloco_doc_view *d);
    int (*chunk_cb)(void *ctx, const lloco_chunk_view *c);
    void *ctx;
} walk_ctx;

static int visit_doc(lloco_store_txn *t, const MDB_val *k, const MDB_val *v, void *vctx) {
    walk_ctx *w = vctx;
    lloco_doc_view d;
    int rc = store_doc_rec_read(t->s, k, v, &d, NULL);
    return rc ? rc : w->doc_cb(w->ctx, &d);
}

static int visit_chunk(lloco_store_txn *t, const MDB_val *k, const MDB_val *v, void *vctx) {
    walk_ctx *w = vctx;
    lloco_chunk_view c;
    int rc = store_chunk_rec_read(t->s, k, v, &c);
    return rc ? rc : w->chunk_cb(w->ctx, &c);
}

int lloco_store_foreach_doc(lloco_store_txn *t, int (*cb)(void *ctx, const lloco_doc_view *d),
                            void *ctx) {
    walk_ctx w = {.doc_cb = cb, .ctx = ctx};
    return walk(t, t->s->dbi_docs, NULL, visit_doc, &w);
}

int lloco_store_foreach_chunk(lloco_store_txn *t, int (*cb)(void *ctx, const lloco_chunk_view *c),
                              void *ctx) {
    walk_ctx w = {.chunk_cb = cb, .ctx = ctx};
    return walk(t, t->s->dbi_chunks, NULL, visit_chunk, &w);
}

int lloco_store_foreach_chunk_from(lloco_store_txn *t, uint64_t first_id,
                                   int (*cb)(void *ctx, const lloco_chunk_view *c), void *ctx) {
    walk_ctx w = {.chunk_cb = cb, .ctx = ctx};
    uint8_t key[8];
    store_chunk_key(first_id, key);
    const MDB_val start = {.mv_size = sizeof key, .mv_data = key};
    return walk(t, t->s->dbi_chunks, &start, visit_chunk, &w);
}

int lloco_store_stats_get(lloco_store *s, lloco_store_stats *out) {
    memset(out, 0, sizeof *out);
    lloco_store_txn *t;
    int rc = lloco_store_read_begin(s, &t);
    if (rc) return rc;
    MDB_stat docs, chunks, groups;
    store_counters c;
    MDB_envinfo info;
    if ((rc = mdb_stat(t->txn, s->dbi_docs, &docs)) ||
        (rc = mdb_stat(t->txn, s->dbi_chunks, &chunks)) ||
        (rc = mdb_stat(t->txn, s->dbi_groups, &groups)) || (rc = mdb_env_info(s->env, &info))) {
        lloco_store_read_end(t);
        return store_mdb_error(s, rc, "stats");
    }
    rc = store_counters_get(s, t->txn, &c);
    lloco_store_read_end(t);
    if (rc) return rc;
    out->n_docs = docs.ms_entries;
    out->n_chunks = chunks.ms_entries;
    out->n_groups = groups.ms_entries;
    out->n_tokens = c.n_tokens;
    out->n_slots = c.n_slots;
    out->generation = c.generation;
    out->next_chunk = c.next_chunk;
    out->map_bytes = info.me_mapsize;
    out->used_bytes = (info.me_last_pgno + 1) * s->psize;
    return 0;
}
