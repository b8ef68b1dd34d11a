/* index: the FAISS index over retrieval vectors (cosine as inner product on
 * L2-normalised vectors, ids = chunk ids), exact below a size threshold and
 * HNSW above, and its file: a checksummed lloco header, then FAISS's own
 * serialisation, written atomically. The index is derived data: the store
 * can always rebuild it, so a damaged file is refused, never repaired.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <xxhash.h>

#include "core/core.h"
#include "retriever.h"

/* File layout, little-endian:
 *   0  magic "LLOCOIDX"       8  u32 version       12 u32 dim
 *   16 u64 generation         24 u32 kind          28 u32 reserved (0)
 *   32 i64 ntotal             40 u64 payload bytes 48 u64 XXH3 of payload
 *   56 u64 XXH3 of bytes 0..55
 *   64 payload: faiss_write_index() of an IndexIDMap over IndexFlatIP or
 *      IndexHNSWFlat (inner product).
 * The checksums mean FAISS's reader only ever sees bytes this file wrote:
 * a damaged payload could otherwise make it allocate whatever a corrupted
 * length says before it notices. */
#define INDEX_MAGIC "LLOCOIDX"
#define INDEX_VERSION 1u
#define INDEX_HEADER_BYTES 64
#define KIND_FLAT 1u
#define KIND_HNSW 2u

#define MAX_DIM (1 << 16)
#define MAX_K (1 << 20)
#define MAX_EF (1 << 16)
/* Refuse vectors whose squared norm is this far from 1: an unnormalised
 * vector makes inner product stop meaning cosine. */
#define NORM_TOL 1e-2f

struct lloco_index {
    FaissIndex *faiss; /* IndexIDMap owning its sub-index */
    int dim;
    int hnsw;
};

/* Maps a failed FAISS C call (its code and faiss_get_last_error()) to a
 * lloco error; std::bad_alloc becomes NOMEM, anything else `err`. */
static int faiss_fail(int frc, int err, const char *what) {
    const char *m = faiss_get_last_error();
    if (!m) m = "unknown error";
    if (strstr(m, "bad_alloc")) err = LLOCO_ERR_NOMEM;
    return lloco_error(err, "%s: FAISS error %d: %s", what, frc, m);
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void lloco_index_params_default(lloco_index_params *p, int dim) {
    p->dim = dim;
    p->hnsw_threshold = 20000;
    p->hnsw_m = 32;
    p->ef_construction = 80;
    p->ef_search = 128;
}

/* ---- HNSW construction ---------------------------------------------------- */

/* FAISS 1.7.3's C API has no HNSW accessors, and efConstruction can only be
 * set on the C++ object. Its serialised form is fixed (faiss/impl/
 * index_write.cpp: write_index_header, write_HNSW), so an empty HNSW index
 * is written to memory, its efConstruction and efSearch set in place, and
 * read back. The walk checks each field it passes, including FAISS's
 * defaults at the two patched spots, and refuses rather than guess. */
typedef struct {
    uint8_t *p;
    size_t n, off;
} cursor;

static uint8_t *take(cursor *c, size_t k) {
    if (c->n - c->off < k) return NULL;
    uint8_t *at = c->p + c->off;
    c->off += k;
    return at;
}

static int skip_vector(cursor *c, size_t elem) {
    uint8_t *at = take(c, sizeof(uint64_t));
    if (!at) return -1;
    uint64_t count;
    memcpy(&count, at, sizeof count);
    if (count > (c->n - c->off) / elem) return -1;
    c->off += (size_t)count * elem;
    return 0;
}

static int i32_at(cursor *c, int32_t expect, int32_t set) {
    uint8_t *at = take(c, sizeof(int32_t));
    if (!at) return -1;
    int32_t v;
    memcpy(&v, at, sizeof v);
    if (v != expect) return -1;
    memcpy(at, &set, sizeof set);
    return 0;
}

static int hnsw_patch(uint8_t *buf, size_t len, int dim, int ef_construction, int ef_search) {
    cursor c = {buf, len, 0};
    uint8_t *at;
    if (!(at = take(&c, 4)) || memcmp(at, "IHNf", 4) != 0) return -1;
    if (i32_at(&c, dim, dim)) return -1;     /* d */
    if (!take(&c, 8 + 8 + 8 + 1)) return -1; /* ntotal, 2 dummies, is_trained */
    if (i32_at(&c, METRIC_INNER_PRODUCT, METRIC_INNER_PRODUCT)) return -1;
    if (skip_vector(&c, sizeof(double))) return -1;          /* assign_probas */
    if (skip_vector(&c, sizeof(int32_t))) return -1;         /* cum_nneighbor_per_level */
    if (skip_vector(&c, sizeof(int32_t))) return -1;         /* levels */
    if (skip_vector(&c, sizeof(uint64_t))) return -1;        /* offsets */
    if (skip_vector(&c, sizeof(int32_t))) return -1;         /* neighbors */
    if (i32_at(&c, -1, -1) || i32_at(&c, -1, -1)) return -1; /* entry_point, max_level */
    if (i32_at(&c, 40, ef_construction)) return -1;
    if (i32_at(&c, 16, ef_search)) return -1;
    if (i32_at(&c, 1, 1)) return -1;                                  /* upper_beam */
    if (!(at = take(&c, 4)) || memcmp(at, "IxFI", 4) != 0) return -1; /* storage */
    return 0;
}

static int hnsw_new(const lloco_index_params *p, FaissIndex **out) {
    char desc[32];
    snprintf(desc, sizeof desc, "HNSW%d,Flat", p->hnsw_m);
    FaissIndex *fresh = NULL, *patched = NULL;
    int frc = faiss_index_factory(&fresh, p->dim, desc, METRIC_INNER_PRODUCT);
    if (frc) return faiss_fail(frc, LLOCO_ERR_INVAL, "creating an HNSW index");

    char *buf = NULL;
    size_t len = 0;
    int rc = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem) {
        faiss_Index_free(fresh);
        return lloco_error(LLOCO_ERR_NOMEM, "creating an HNSW index: open_memstream failed");
    }
    frc = faiss_write_index(fresh, mem);
    faiss_Index_free(fresh);
    if (fclose(mem) != 0 && !frc)
        rc = lloco_error(LLOCO_ERR_NOMEM, "creating an HNSW index: memory stream");
    if (frc) rc = faiss_fail(frc, LLOCO_ERR_IO, "creating an HNSW index (serialise)");
    if (!rc && hnsw_patch((uint8_t *)buf, len, p->dim, p->ef_construction, p->ef_search))
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED,
                         "creating an HNSW index: FAISS's serialised HNSW layout is not the one "
                         "this code knows (FAISS 1.7.3); cannot set efConstruction/efSearch");
    if (!rc) {
        FILE *in = fmemopen(buf, len, "rb");
        if (!in) {
            rc = lloco_error(LLOCO_ERR_NOMEM, "creating an HNSW index: fmemopen failed");
        } else {
            frc = faiss_read_index(in, 0, &patched);
            fclose(in);
            if (frc) rc = faiss_fail(frc, LLOCO_ERR_IO, "creating an HNSW index (read back)");
        }
    }
    free(buf);
    if (rc) return rc;
    *out = patched;
    return 0;
}

/* ---- create / add / search ------------------------------------------------- */

static int wrap_idmap(FaissIndex *sub, FaissIndex **out) {
    FaissIndexIDMap *m = NULL;
    int frc = faiss_IndexIDMap_new(&m, sub);
    if (frc) {
        faiss_Index_free(sub);
        return faiss_fail(frc, LLOCO_ERR_NOMEM, "creating the id map");
    }
    faiss_IndexIDMap_set_own_fields(m, 1);
    *out = m;
    return 0;
}

int lloco_index_create(const lloco_index_params *p, int64_t n_hint, lloco_index **out) {
    if (!p || !out) return lloco_error(LLOCO_ERR_INVAL, "lloco_index_create: NULL argument");
    *out = NULL;
    if (p->dim < 1 || p->dim > MAX_DIM)
        return lloco_error(LLOCO_ERR_INVAL, "index dim %d out of range 1..%d", p->dim, MAX_DIM);
    if (n_hint < 0 || p->hnsw_threshold < 0)
        return lloco_error(LLOCO_ERR_INVAL, "index n_hint %lld / hnsw_threshold %lld negative",
                           (long long)n_hint, (long long)p->hnsw_threshold);
    int hnsw = n_hint >= p->hnsw_threshold;
    if (hnsw && (p->hnsw_m < 2 || p->hnsw_m > 512 || p->ef_construction < 1 ||
                 p->ef_construction > MAX_EF || p->ef_search < 1 || p->ef_search > MAX_EF))
        return lloco_error(LLOCO_ERR_INVAL,
                           "HNSW parameters out of range: M %d (2..512), efConstruction %d, "
                           "efSearch %d (1..%d)",
                           p->hnsw_m, p->ef_construction, p->ef_search, MAX_EF);

    FaissIndex *sub = NULL;
    if (hnsw) {
        int rc = hnsw_new(p, &sub);
        if (rc) return rc;
    } else {
        FaissIndexFlatIP *flat = NULL;
        int frc = faiss_IndexFlatIP_new_with(&flat, p->dim);
        if (frc) return faiss_fail(frc, LLOCO_ERR_NOMEM, "creating a flat index");
        sub = flat;
    }
    lloco_index *ix = calloc(1, sizeof *ix);
    if (!ix) {
        faiss_Index_free(sub);
        return lloco_error(LLOCO_ERR_NOMEM, "lloco_index_create");
    }
    int rc = wrap_idmap(sub, &ix->faiss);
    if (rc) {
        free(ix);
        return rc;
    }
    ix->dim = p->dim;
    ix->hnsw = hnsw;
    *out = ix;
    return 0;
}

void lloco_index_free(lloco_index *ix) {
    if (!ix) return;
    faiss_Index_free(ix->faiss);
    free(ix);
}

int64_t lloco_index_size(const lloco_index *ix) {
    return faiss_Index_ntotal(ix->faiss);
}

int lloco_index_is_hnsw(const lloco_index *ix) {
    return ix->hnsw;
}

static int check_vector(const float *v, int dim, const char *what, int64_t row) {
    float ss = 0.0f;
    for (int i = 0; i < dim; i++) ss += v[i] * v[i];
    if (!isfinite(ss))
        return lloco_error(LLOCO_ERR_INVAL, "%s %lld has a non-finite component", what,
                           (long long)row);
    if (fabsf(ss - 1.0f) > NORM_TOL)
        return lloco_error(LLOCO_ERR_INVAL,
                           "%s %lld is not L2-normalised (squared norm %g); the index "
                           "compares by inner product",
                           what, (long long)row, (double)ss);
    return 0;
}

int lloco_index_add(lloco_index *ix, int64_t n, const float *vecs, const int64_t *ids) {
    if (!ix || n < 0) return lloco_error(LLOCO_ERR_INVAL, "lloco_index_add: bad arguments");
    if (n == 0) return 0;
    if (!vecs || !ids) return lloco_error(LLOCO_ERR_INVAL, "lloco_index_add: NULL vecs or ids");
    size_t total;
    if (lloco_size_mul((size_t)n, (size_t)ix->dim, &total))
        return lloco_error(LLOCO_ERR_RANGE, "lloco_index_add: %lld vectors overflow", (long long)n);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0)
            return lloco_error(LLOCO_ERR_INVAL, "lloco_index_add: id %lld of row %lld is negative",
                               (long long)ids[i], (long long)i);
        int rc = check_vector(vecs + (size_t)i * (size_t)ix->dim, ix->dim, "vector", i);
        if (rc) return rc;
    }
    int frc = faiss_Index_add_with_ids(ix->faiss, n, vecs, ids);
    if (frc) return faiss_fail(frc, LLOCO_ERR_INVAL, "adding vectors");
    return 0;
}

int lloco_index_search(const lloco_index *ix, const float *q, int k, int64_t *ids, float *scores,
                       int *n_found) {
    if (n_found) *n_found = 0;
    if (!ix || !q || !ids || !scores || !n_found)
        return lloco_error(LLOCO_ERR_INVAL, "lloco_index_search: NULL argument");
    if (k < 1 || k > MAX_K)
        return lloco_error(LLOCO_ERR_INVAL, "lloco_index_search: k %d out of range 1..%d", k,
                           MAX_K);
    int rc = check_vector(q, ix->dim, "query", 0);
    if (rc) return rc;
    /* FAISS searches of a CPU index are const and safe to run concurrently;
     * the only shared write is HNSW's global statistics counter. One query
     * is one thread's work, but FAISS would still start an OpenMP team per
     * call whose idle members spin against the decoder's threads: run it
     * with one (the setting is per calling thread; restored after). */
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    int frc = faiss_Index_search(ix->faiss, 1, q, k, scores, ids);
    omp_set_num_threads(threads);
    if (frc) return faiss_fail(frc, LLOCO_ERR_INVAL, "searching");
    /* Missing results are -1, after the found ones; keep the order. */
    int n = 0;
    for (int i = 0; i < k; i++) {
        if (ids[i] < 0) continue;
        ids[n] = ids[i];
        scores[n] = scores[i];
        n++;
    }
    *n_found = n;
    return 0;
}

/* ---- persistence ------------------------------------------------------------ */

static int fsync_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (!dir) return lloco_error(LLOCO_ERR_NOMEM, "saving index %s", path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) != 0)
        rc = lloco_error(LLOCO_ERR_IO, "saving index %s: fsync of directory %s: %s", path, dir,
                         strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

/* XXH3 of `len` bytes of f from its current position; short read -> -1. */
static int hash_stream(FILE *f, uint64_t len, uint64_t *out) {
    XXH3_state_t *st = XXH3_createState();
    uint8_t *buf = malloc(1 << 20);
    int rc = -1;
    if (st && buf && XXH3_64bits_reset(st) == XXH_OK) {
        while (len > 0) {
            size_t want = len < (1u << 20) ? (size_t)len : (1u << 20);
            if (fread(buf, 1, want, f) != want) break;
            XXH3_64bits_update(st, buf, want);
            len -= want;
        }
        if (len == 0) {
            *out = XXH3_64bits_digest(st);
            rc = 0;
        }
    }
    free(buf);
    XXH3_freeState(st);
    return rc;
}

int lloco_index_save(const lloco_index *ix, const char *path, uint64_t generation) {
    if (!ix || !path) return lloco_error(LLOCO_ERR_INVAL, "lloco_index_save: NULL argument");
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp.XXXXXX");
    if (!tmp) return lloco_error(LLOCO_ERR_NOMEM, "saving index %s", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");

    int rc = 0;
    FILE *f = NULL;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        rc = lloco_error(LLOCO_ERR_IO, "saving index %s: cannot create a temporary file: %s", path,
                         strerror(errno));
        free(tmp);
        return rc;
    }
    /* mkstemp makes 0600; the index is as readable as the store. */
    if (fchmod(fd, 0644) != 0 || !(f = fdopen(fd, "w+b"))) {
        rc = lloco_error(LLOCO_ERR_IO, "saving index %s: %s", tmp, strerror(errno));
        close(fd);
        goto fail;
    }

    errno = 0;
    uint8_t h[INDEX_HEADER_BYTES] = {0};
    if (fwrite(h, 1, sizeof h, f) != sizeof h) goto io_fail;
    int frc = faiss_write_index(ix->faiss, f);
    if (frc) {
        rc = faiss_fail(frc, LLOCO_ERR_IO, "saving index (FAISS serialisation)");
        goto fail;
    }
    if (fflush(f) != 0) goto io_fail;
    off_t end = ftello(f);
    if (end < INDEX_HEADER_BYTES) goto io_fail;
    uint64_t payload_len = (uint64_t)(end - INDEX_HEADER_BYTES), payload_hash;
    if (fseeko(f, INDEX_HEADER_BYTES, SEEK_SET) != 0) goto io_fail;
    if (hash_stream(f, payload_len, &payload_hash) != 0) goto io_fail;

    memcpy(h, INDEX_MAGIC, 8);
    put32(h + 8, INDEX_VERSION);
    put32(h + 12, (uint32_t)ix->dim);
    put64(h + 16, generation);
    put32(h + 24, ix->hnsw ? KIND_HNSW : KIND_FLAT);
    put32(h + 28, 0);
    put64(h + 32, (uint64_t)lloco_index_size(ix));
    put64(h + 40, payload_len);
    put64(h + 48, payload_hash);
    put64(h + 56, XXH3_64bits(h, 56));
    if (fseeko(f, 0, SEEK_SET) != 0 || fwrite(h, 1, sizeof h, f) != sizeof h) goto io_fail;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) goto io_fail;
    int closed = fclose(f);
    f = NULL;
    if (closed != 0) goto io_fail;
    if (rename(tmp, path) != 0) {
        rc = lloco_error(LLOCO_ERR_IO, "saving index: rename %s -> %s: %s", tmp, path,
                         strerror(errno));
        goto fail;
    }
    free(tmp);
    return fsync_dir_of(path);

io_fail:
    rc = lloco_error(LLOCO_ERR_IO, "saving index %s (writing %s): %s", path, tmp,
                     errno ? strerror(errno) : "short write");
fail:
    if (f) fclose(f);
    unlink(tmp);
    free(tmp);
    return rc;
}

int lloco_index_load(const char *path, int dim, uint64_t *generation, lloco_index **out) {
    if (!path || !out) return lloco_error(LLOCO_ERR_INVAL, "lloco_index_load: NULL argument");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return lloco_error(LLOCO_ERR_NOTFOUND, "index file %s does not exist", path);
        return lloco_error(LLOCO_ERR_IO, "opening index %s: %s", path, strerror(errno));
    }
    FaissIndex *fx = NULL;
    int rc;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        rc = lloco_error(LLOCO_ERR_IO, "index %s: stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: not a regular file", path);
        goto fail;
    }
    const uint64_t size = (uint64_t)sb.st_size;

    uint8_t h[INDEX_HEADER_BYTES];
    size_t got = fread(h, 1, sizeof h, f);
    if (memcmp(h, INDEX_MAGIC, got < 8 ? got : 8) != 0) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: not a lloco index file (bad magic)", path);
        goto fail;
    }
    if (got != sizeof h) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: truncated header (%llu bytes, need %d)", path,
                         (unsigned long long)size, INDEX_HEADER_BYTES);
        goto fail;
    }
    if (get64(h + 56) != XXH3_64bits(h, 56)) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: header checksum mismatch (damaged)", path);
        goto fail;
    }
    const uint32_t version = get32(h + 8), fdim = get32(h + 12), kind = get32(h + 24);
    const uint64_t gen = get64(h + 16), ntotal = get64(h + 32);
    const uint64_t payload_len = get64(h + 40), payload_hash = get64(h + 48);
    if (version != INDEX_VERSION) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: format version %u, this build reads %u", path,
                         version, INDEX_VERSION);
        goto fail;
    }
    if ((int64_t)fdim != dim) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: vectors of dimension %u, expected %d", path,
                         fdim, dim);
        goto fail;
    }
    if ((kind != KIND_FLAT && kind != KIND_HNSW) || get32(h + 28) != 0 ||
        ntotal > (uint64_t)INT64_MAX) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: bad header fields (kind %u)", path, kind);
        goto fail;
    }
    if (payload_len != size - INDEX_HEADER_BYTES) {
        rc = lloco_error(
            LLOCO_ERR_FORMAT, "index %s: %s (payload %llu bytes, header says %llu)", path,
            payload_len > size - INDEX_HEADER_BYTES ? "truncated" : "trailing bytes",
            (unsigned long long)(size - INDEX_HEADER_BYTES), (unsigned long long)payload_len);
        goto fail;
    }
    uint64_t got_hash;
    if (hash_stream(f, payload_len, &got_hash) != 0) {
        rc = lloco_error(LLOCO_ERR_IO, "index %s: read error", path);
        goto fail;
    }
    if (got_hash != payload_hash) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: payload checksum mismatch (damaged)", path);
        goto fail;
    }

    if (fseeko(f, INDEX_HEADER_BYTES, SEEK_SET) != 0) {
        rc = lloco_error(LLOCO_ERR_IO, "index %s: seek: %s", path, strerror(errno));
        goto fail;
    }
    int frc = faiss_read_index(f, 0, &fx);
    if (frc) {
        const char *m = faiss_get_last_error();
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: FAISS cannot read it: %s", path,
                         m ? m : "unknown error");
        goto fail;
    }
    if (ftello(f) != (off_t)size) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "index %s: FAISS data ends before the file does", path);
        goto fail;
    }
    FaissIndex *sub = faiss_IndexIDMap_cast(fx) ? faiss_IndexIDMap_sub_index(fx) : NULL;
    int is_flat = sub && faiss_IndexFlat_cast(sub) != NULL;
    if (!sub || faiss_Index_d(fx) != dim || faiss_Index_metric_type(fx) != METRIC_INNER_PRODUCT ||
        (uint64_t)faiss_Index_ntotal(fx) != ntotal || is_flat != (kind == KIND_FLAT)) {
        rc = lloco_error(LLOCO_ERR_FORMAT,
                         "index %s: FAISS index does not match its header (id map, dimension, "
                         "metric, size or kind)",
                         path);
        goto fail;
    }
    lloco_index *ix = calloc(1, sizeof *ix);
    if (!ix) {
        rc = lloco_error(LLOCO_ERR_NOMEM, "loading index %s", path);
        goto fail;
    }
    fclose(f);
    ix->faiss = fx;
    ix->dim = dim;
    ix->hnsw = kind == KIND_HNSW;
    if (generation) *generation = gen;
    *out = ix;
    return 0;

fail:
    fclose(f);
    if (fx) faiss_Index_free(fx);
    return rc;
}
