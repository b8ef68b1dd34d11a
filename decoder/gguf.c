/* GGUF v2/v3 reader: parses the header, metadata and tensor infos of a mapped
 * file and validates every length, count, shape and offset against the
 * mapping before anything is handed out, so hostile input fails cleanly.
 */
#include "gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" read little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
/* Arrays of arrays are legal; a cap keeps hostile nesting off the stack. */
#define GGUF_MAX_NESTING 16
/* Smallest encodings, used to cap counts against the bytes left before
 * allocating: a kv is a key length (8) + type (4) + at least one byte; a
 * tensor info a name length (8) + n_dims (4) + one ne (8) + type (4) +
 * offset (8); a nested array its type (4) + count (8). */
#define GGUF_MIN_KV_BYTES 13
#define GGUF_MIN_TENSOR_BYTES 32
#define GGUF_MIN_ARRAY_BYTES 12

typedef struct {
    size_t key;                /* arena offset (the arena moves while parsing) */
    const char *key_str;       /* set by index_names */
    lloco_gguf_type type;
    const uint8_t *val;        /* value bytes; strings: at the length prefix */
    lloco_gguf_type elem_type; /* arrays only */
    uint64_t n;                /* arrays only */
    const uint8_t *arr;        /* arrays: first element */
    const uint8_t **strs;      /* string arrays: each element's length prefix */
} gguf_kv;

typedef struct {
    const char *name;
    int64_t idx;
} name_ref;

struct lloco_gguf {
    lloco_mapped_file map;
    char *path;
    uint32_t version;
    size_t alignment;
    size_t data_offset;
    int64_t n_kv;
    gguf_kv *kv;
    name_ref *kv_sorted; /* by key, for lookup */
    int64_t n_tensors;
    lloco_gguf_tensor *tensors;
    size_t *tensor_name_off; /* arena offsets, until index_names */
    uint64_t *tensor_off;     /* offsets in the data section */
    name_ref *tensors_sorted;
    char *arena; /* NUL-terminated copies of keys and tensor names */
    size_t arena_len, arena_cap;
};

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *path;
    char what[200]; /* what is being read, for error messages */
} cursor;

static const size_t scalar_size[] = {
    [LLOCO_GGUF_UINT8] = 1,   [LLOCO_GGUF_INT8] = 1,    [LLOCO_GGUF_UINT16] = 2,
    [LLOCO_GGUF_INT16] = 2,   [LLOCO_GGUF_UINT32] = 4,  [LLOCO_GGUF_INT32] = 4,
    [LLOCO_GGUF_FLOAT32] = 4, [LLOCO_GGUF_BOOL] = 1,    [LLOCO_GGUF_STRING] = 0,
    [LLOCO_GGUF_ARRAY] = 0,   [LLOCO_GGUF_UINT64] = 8,  [LLOCO_GGUF_INT64] = 8,
    [LLOCO_GGUF_FLOAT64] = 8,
};

const char *lloco_gguf_type_name(lloco_gguf_type t) {
    static const char *names[] = {"UINT8",  "INT8",   "UINT16",  "INT16", "UINT32",
                                  "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                  "UINT64", "INT64",  "FLOAT64"};
    if ((unsigned)t < LLOCO_ARRAY_LEN(names)) return names[t];
    return "?";
}

static int valid_type(uint32_t t) { return t <= LLOCO_GGUF_FLOAT64; }

/* GGML type ids (ggml.h); the names make refusals readable. */
static const char *ggml_type_name(uint32_t t) {
    static const char *names[] = {
        "F32",     "F16",    "Q4_0",    "Q4_1",  "Q4_2",  "Q4_3",  "Q5_0",  "Q5_1",
        "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",  "Q5_K",  "Q6_K",  "Q8_K",
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8",      "I16",    "I32",     "I64",   "F64",   "IQ1_M", "BF16",  "Q4_0_4_4",
        "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8",
        "MXFP4"};
    if (t < LLOCO_ARRAY_LEN(names)) return names[t];
    return "unknown";
}

static int ggml_to_dtype(uint32_t t, lloco_dtype *out) {
    switch (t) {
    case 0: *out = LLOCO_DTYPE_F32; return 1;
    case 1: *out = LLOCO_DTYPE_F16; return 1;
    case 2: *out = LLOCO_DTYPE_Q4_0; return 1;
    case 3: *out = LLOCO_DTYPE_Q4_1; return 1;
    case 8: *out = LLOCO_DTYPE_Q8_0; return 1;
    case 12: *out = LLOCO_DTYPE_Q4_K; return 1;
    case 14: *out = LLOCO_DTYPE_Q6_K; return 1;
    case 30: *out = LLOCO_DTYPE_BF16; return 1;
    }
    return 0;
}

/* ---- cursor ------------------------------------------------------------- */

static int truncated(const cursor *c, size_t need) {
    return lloco_error(LLOCO_ERR_FORMAT,
                       "%s: truncated: %s at offset %zu needs %zu bytes, file size %zu",
                       c->path, c->what, c->pos, need, c->size);
}

static int rd(cursor *c, void *dst, size_t n) {
    if (n > c->size - c->pos) return truncated(c, n);
    memcpy(dst, c->p + c->pos, n);
    c->pos += n;
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v) { return rd(c, v, 4); }
static int rd_u64(cursor *c, uint64_t *v) { return rd(c, v, 8); }

static int skip(cursor *c, size_t n) {
    if (n > c->size - c->pos) return truncated(c, n);
    c->pos += n;
    return 0;
}

/* Reads a string's length and checks its bytes are there; *s points at
 * them inside the mapping. */
static int rd_str(cursor *c, const uint8_t **s, size_t *len) {
    uint64_t n = 0;
    int rc = rd_u64(c, &n);
    if (rc) return rc;
    if (n > c->size - c->pos)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: %s: string length %" PRIu64 " at offset %zu exceeds the %zu "
                           "bytes left in the file",
                           c->path, c->what, n, c->pos - 8, c->size - c->pos);
    *s = c->p + c->pos;
    *len = (size_t)n;
    c->pos += (size_t)n;
    return 0;
}

static size_t remaining(const cursor *c) { return c->size - c->pos; }

/* ---- names -------------------------------------------------------------- */

/* Copies a name into the arena, refusing embedded NULs (lookups are by C
 * string). Returns the arena offset through *off. */
static int arena_add(lloco_gguf *g, const cursor *c, const uint8_t *s, size_t len,
                     size_t *off) {
    if (memchr(s, 0, len))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s contains a NUL byte", c->path, c->what);
    if (len + 1 > g->arena_cap - g->arena_len) {
        size_t cap = g->arena_cap ? g->arena_cap : 4096;
        while (len + 1 > cap - g->arena_len) cap *= 2;
        char *a = realloc(g->arena, cap);
        if (!a) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", c->path);
        g->arena = a;
        g->arena_cap = cap;
    }
    memcpy(g->arena + g->arena_len, s, len);
    g->arena[g->arena_len + len] = 0;
    *off = g->arena_len;
    g->arena_len += len + 1;
    return 0;
}

static int cmp_name_ref(const void *a, const void *b) {
    return strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name);
}

/* Sorts refs by name; returns the file index of the earliest second
 * occurrence of a name, or -1 if all names differ. */
static int64_t sort_names(name_ref *refs, int64_t n) {
    if (n < 2) return -1;
    qsort(refs, (size_t)n, sizeof *refs, cmp_name_ref);
    int64_t dup = -1;
    for (int64_t i = 1; i < n; i++) {
        if (strcmp(refs[i - 1].name, refs[i].name) != 0) continue;
        int64_t later = refs[i].idx > refs[i - 1].idx ? refs[i].idx : refs[i - 1].idx;
        if (dup < 0 || later < dup) dup = later;
    }
    return dup;
}

static int64_t find_name(const name_ref *refs, int64_t n, const char *name) {
    name_ref key = {name, 0};
    const name_ref *r = n > 0 ? bsearch(&key, refs, (size_t)n, sizeof *refs, cmp_name_ref) : NULL;
    return r ? r->idx : -1;
}

/* ---- metadata ------------------------------------------------------------ */

/* Skips one value of type t (validated by the caller). */
static int skip_value(cursor *c, lloco_gguf_type t, int depth);

static int skip_array(cursor *c, int depth, lloco_gguf_type *elem, uint64_t *count) {
    uint32_t et = 0;
    uint64_t n = 0;
    int rc;
    if (depth >= GGUF_MAX_NESTING)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s: arrays nested deeper than %d", c->path,
                           c->what, GGUF_MAX_NESTING);
    if ((rc = rd_u32(c, &et)) || (rc = rd_u64(c, &n))) return rc;
    if (!valid_type(et))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s: unknown array element type %" PRIu32,
                           c->path, c->what, et);
    size_t min = et == LLOCO_GGUF_STRING  ? 8
                 : et == LLOCO_GGUF_ARRAY ? GGUF_MIN_ARRAY_BYTES
                                          : scalar_size[et];
    if (n > remaining(c) / min)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: %s: array of %" PRIu64 " %s elements cannot fit in the %zu "
                           "bytes left in the file",
                           c->path, c->what, n, lloco_gguf_type_name(et), remaining(c));
    if (elem) *elem = (lloco_gguf_type)et;
    if (count) *count = n;
    if (et != LLOCO_GGUF_STRING && et != LLOCO_GGUF_ARRAY) return skip(c, (size_t)n * min);
    for (uint64_t i = 0; i < n; i++)
        if ((rc = skip_value(c, (lloco_gguf_type)et, depth + 1))) return rc;
    return 0;
}

static int skip_value(cursor *c, lloco_gguf_type t, int depth) {
    if (t == LLOCO_GGUF_STRING) {
        const uint8_t *s;
        size_t len;
        return rd_str(c, &s, &len);
    }
    if (t == LLOCO_GGUF_ARRAY) return skip_array(c, depth, NULL, NULL);
    return skip(c, scalar_size[t]);
}

static int parse_kv(lloco_gguf *g, cursor *c, int64_t i) {
    gguf_kv *kv = &g->kv[i];
    const uint8_t *key = NULL;
    size_t key_len = 0;
    uint32_t type = 0;
    int rc;
    snprintf(c->what, sizeof c->what, "key %" PRId64, i);
    if ((rc = rd_str(c, &key, &key_len))) return rc;
    snprintf(c->what, sizeof c->what, "key '%.*s'", (int)(key_len > 120 ? 120 : key_len),
             (const char *)key);
    if ((rc = arena_add(g, c, key, key_len, &kv->key))) return rc;
    if ((rc = rd_u32(c, &type))) return rc;
    if (!valid_type(type))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s has unknown value type %" PRIu32, g->path,
                           c->what, type);
    kv->type = (lloco_gguf_type)type;
    kv->val = c->p + c->pos;
    if (type != LLOCO_GGUF_ARRAY) return skip_value(c, kv->type, 0);

    /* Top-level arrays keep where their elements are, and string arrays an
     * index of element positions for random access. */
    size_t start = c->pos;
    if ((rc = skip_array(c, 0, &kv->elem_type, &kv->n))) return rc;
    kv->arr = c->p + start + 12;
    if (kv->elem_type != LLOCO_GGUF_STRING || kv->n == 0) return 0;
    kv->strs = malloc((size_t)kv->n * sizeof *kv->strs);
    if (!kv->strs) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", g->path);
    const uint8_t *p = kv->arr;
    for (uint64_t j = 0; j < kv->n; j++) {
        uint64_t len;
        kv->strs[j] = p;
        memcpy(&len, p, 8);
        p += 8 + len; /* bounds were checked by skip_array */
    }
    return 0;
}

/* Reads integer kv i as signed or unsigned. 0 or LLOCO_ERR_TYPE. */
static int kv_int(const gguf_kv *kv, int64_t *s, uint64_t *u, int *is_signed) {
    const uint8_t *v = kv->val;
    switch (kv->type) {
    case LLOCO_GGUF_UINT8: *u = v[0]; *is_signed = 0; return 0;
    case LLOCO_GGUF_INT8: *s = (int8_t)v[0]; *is_signed = 1; return 0;
    case LLOCO_GGUF_UINT16: { uint16_t x; memcpy(&x, v, 2); *u = x; *is_signed = 0; return 0; }
    case LLOCO_GGUF_INT16: { int16_t x; memcpy(&x, v, 2); *s = x; *is_signed = 1; return 0; }
    case LLOCO_GGUF_UINT32: { uint32_t x; memcpy(&x, v, 4); *u = x; *is_signed = 0; return 0; }
    case LLOCO_GGUF_INT32: { int32_t x; memcpy(&x, v, 4); *s = x; *is_signed = 1; return 0; }
    case LLOCO_GGUF_UINT64: memcpy(u, v, 8); *is_signed = 0; return 0;
    case LLOCO_GGUF_INT64: memcpy(s, v, 8); *is_signed = 1; return 0;
    default: return LLOCO_ERR_TYPE;
    }
}

static int parse_alignment(lloco_gguf *g) {
    int64_t i = lloco_gguf_find_key(g, "general.alignment");
    if (i < 0) {
        g->alignment = GGUF_DEFAULT_ALIGNMENT;
        return 0;
    }
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed = 0;
    if (kv_int(&g->kv[i], &s, &u, &is_signed))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: general.alignment has type %s, not an integer",
                           g->path, lloco_gguf_type_name(g->kv[i].type));
    if (is_signed) u = s > 0 ? (uint64_t)s : 0;
    if (u == 0 || (u & (u - 1)) || u > UINT32_MAX) {
        char v[32];
        lloco_gguf_kv_format(g, i, v, sizeof v);
        return lloco_error(LLOCO_ERR_FORMAT, "%s: general.alignment %s is not a power of two",
                           g->path, v);
    }
    g->alignment = (size_t)u;
    return 0;
}

/* ---- tensors ------------------------------------------------------------- */

/* Reads tensor info i; its offset in the data section goes to *off until
 * the section's start is known. */
static int parse_tensor_info(lloco_gguf *g, cursor *c, int64_t i, uint64_t *off) {
    lloco_gguf_tensor *t = &g->tensors[i];
    const uint8_t *name = NULL;
    size_t len = 0;
    uint32_t n_dims = 0, type = 0;
    int rc;
    snprintf(c->what, sizeof c->what, "tensor info %" PRId64, i);
    if ((rc = rd_str(c, &name, &len))) return rc;
    if (len == 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: tensor %" PRId64 " has an empty name", g->path,
                           i);
    snprintf(c->what, sizeof c->what, "tensor '%.*s'", (int)(len > 120 ? 120 : len),
             (const char *)name);
    if ((rc = arena_add(g, c, name, len, &g->tensor_name_off[i]))) return rc;
    if ((rc = rd_u32(c, &n_dims))) return rc;
    if (n_dims < 1 || n_dims > 4)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s has %" PRIu32 " dimensions (1 to 4 allowed)",
                           g->path, c->what, n_dims);
    t->n_dims = (int)n_dims;
    int64_t n_elems = 1;
    for (int d = 0; d < 4; d++) {
        uint64_t ne = 1;
        if ((uint32_t)d < n_dims && (rc = rd_u64(c, &ne))) return rc;
        if (ne == 0 || ne > (uint64_t)INT64_MAX)
            return lloco_error(LLOCO_ERR_FORMAT, "%s: %s has invalid ne[%d] = %" PRIu64, g->path,
                               c->what, d, ne);
        if ((int64_t)ne > INT64_MAX / n_elems)
            return lloco_error(LLOCO_ERR_FORMAT, "%s: %s: element count overflows", g->path,
                               c->what);
        n_elems *= (int64_t)ne;
        t->ne[d] = (int64_t)ne;
    }
    if ((rc = rd_u32(c, &type))) return rc;
    if (!ggml_to_dtype(type, &t->type))
        return lloco_error(LLOCO_ERR_UNSUPPORTED,
                           "%s: %s has GGML type %" PRIu32 " (%s), which is not supported",
                           g->path, c->what, type, ggml_type_name(type));
    int64_t block = lloco_dtype_block_elems(t->type);
    if (block <= 0 || t->ne[0] % block != 0)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: %s: ne[0] = %" PRId64 " is not a multiple of the %s block (%" PRId64
                           ")",
                           g->path, c->what, t->ne[0], lloco_dtype_name(t->type), block);
    size_t row = lloco_dtype_row_bytes(t->type, t->ne[0]);
    size_t rows = (size_t)(n_elems / t->ne[0]);
    if (row == 0 || lloco_size_mul(row, rows, &t->nbytes))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s: byte size overflows", g->path, c->what);
    return rd_u64(c, off);
}

typedef struct {
    size_t begin, end;
    int64_t idx;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Places every tensor in the data section: aligned, inside the file, and
 * not overlapping another. */
static int check_tensors(lloco_gguf *g) {
    const uint64_t *offs = g->tensor_off;
    span *sp = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *sp);
    if (!sp) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", g->path);
    int rc = 0;
    for (int64_t i = 0; i < g->n_tensors && !rc; i++) {
        lloco_gguf_tensor *t = &g->tensors[i];
        uint64_t size = g->map.size, base = g->data_offset;
        if (offs[i] % g->alignment)
            rc = lloco_error(LLOCO_ERR_FORMAT,
                             "%s: tensor '%s' offset %" PRIu64 " is not a multiple of the "
                             "alignment %zu",
                             g->path, t->name, offs[i], g->alignment);
        else if (base > size || offs[i] > size - base || t->nbytes > size - base - offs[i])
            rc = lloco_error(LLOCO_ERR_FORMAT,
                             "%s: tensor '%s' data (%zu bytes at offset %" PRIu64 " of the data "
                             "section at %zu) beyond end of file (size %zu)",
                             g->path, t->name, t->nbytes, offs[i], g->data_offset, g->map.size);
        else {
            size_t begin = g->data_offset + (size_t)offs[i];
            t->data = g->map.data + begin;
            sp[i] = (span){begin, begin + t->nbytes, i};
        }
    }
    if (!rc && g->n_tensors > 1) {
        qsort(sp, (size_t)g->n_tensors, sizeof *sp, cmp_span);
        for (int64_t i = 1; i < g->n_tensors && !rc; i++)
            if (sp[i].begin < sp[i - 1].end)
                rc = lloco_error(LLOCO_ERR_FORMAT,
                                 "%s: tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap",
                                 g->path, g->tensors[sp[i - 1].idx].name, sp[i - 1].begin,
                                 sp[i - 1].end, g->tensors[sp[i].idx].name, sp[i].begin,
                                 sp[i].end);
    }
    free(sp);
    return rc;
}

/* ---- open ---------------------------------------------------------------- */

/* Points keys and tensor names into the arena, which no longer moves once
 * every name is in, and sorts them for lookup, refusing duplicates. */
static int index_names(lloco_gguf *g) {
    for (int64_t i = 0; i < g->n_kv; i++) {
        g->kv[i].key_str = g->arena + g->kv[i].key;
        g->kv_sorted[i] = (name_ref){g->kv[i].key_str, i};
    }
    int64_t dup = sort_names(g->kv_sorted, g->n_kv);
    if (dup >= 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: duplicate metadata key '%s'", g->path,
                           g->kv[dup].key_str);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        g->tensors[i].name = g->arena + g->tensor_name_off[i];
        g->tensors_sorted[i] = (name_ref){g->tensors[i].name, i};
    }
    dup = sort_names(g->tensors_sorted, g->n_tensors);
    if (dup >= 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: duplicate tensor name '%s'", g->path,
                           g->tensors[dup].name);
    return 0;
}

static int parse(lloco_gguf *g) {
    cursor c = {g->map.data, g->map.size, 0, g->path, "header"};
    uint32_t magic = 0, version = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    int rc;
    if ((rc = rd_u32(&c, &magic))) return rc;
    if (magic != GGUF_MAGIC)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: not a GGUF file (magic %02x %02x %02x %02x)",
                           g->path, c.p[0], c.p[1], c.p[2], c.p[3]);
    if ((rc = rd_u32(&c, &version))) return rc;
    /* A big-endian file has its version byte-swapped: small values land in
     * the top byte. */
    if (version > 0xFFFFu && __builtin_bswap32(version) <= 0xFFFFu)
        return lloco_error(LLOCO_ERR_UNSUPPORTED,
                           "%s: big-endian GGUF (version %" PRIu32 " byte-swapped) is not "
                           "supported",
                           g->path, __builtin_bswap32(version));
    if (version == 1)
        return lloco_error(LLOCO_ERR_UNSUPPORTED,
                           "%s: GGUF version 1 is not supported (only v2 and v3); reconvert "
                           "the model with a current llama.cpp",
                           g->path);
    if (version == 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: GGUF version 0 is invalid", g->path);
    if (version > 3)
        return lloco_error(LLOCO_ERR_UNSUPPORTED,
                           "%s: GGUF version %" PRIu32 " is newer than this reader (v2, v3)",
                           g->path, version);
    g->version = version;
    if ((rc = rd_u64(&c, &n_tensors)) || (rc = rd_u64(&c, &n_kv))) return rc;
    if (n_kv > remaining(&c) / GGUF_MIN_KV_BYTES)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: %" PRIu64 " metadata entries cannot fit in a file of %zu bytes",
                           g->path, n_kv, c.size);
    if (n_tensors > remaining(&c) / GGUF_MIN_TENSOR_BYTES)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: %" PRIu64 " tensors cannot fit in a file of %zu bytes", g->path,
                           n_tensors, c.size);

    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    size_t nk = (size_t)(n_kv ? n_kv : 1), nt = (size_t)(n_tensors ? n_tensors : 1);
    g->kv = calloc(nk, sizeof *g->kv);
    g->kv_sorted = malloc(nk * sizeof *g->kv_sorted);
    g->tensors = calloc(nt, sizeof *g->tensors);
    g->tensors_sorted = malloc(nt * sizeof *g->tensors_sorted);
    g->tensor_name_off = malloc(nt * sizeof *g->tensor_name_off);
    g->tensor_off = malloc(nt * sizeof *g->tensor_off);
    if (!g->kv || !g->kv_sorted || !g->tensors || !g->tensors_sorted || !g->tensor_name_off ||
        !g->tensor_off)
        return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", g->path);
    for (int64_t i = 0; i < g->n_kv; i++)
        if ((rc = parse_kv(g, &c, i))) return rc;
    for (int64_t i = 0; i < g->n_tensors; i++)
        if ((rc = parse_tensor_info(g, &c, i, &g->tensor_off[i]))) return rc;
    if ((rc = index_names(g)) || (rc = parse_alignment(g))) return rc;
    size_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    if (lloco_size_add(c.pos, pad, &g->data_offset))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: data offset overflows", g->path);
    return check_tensors(g);
}

int lloco_gguf_open(const char *path, lloco_gguf **out) {
    *out = NULL;
    lloco_gguf *g = calloc(1, sizeof *g);
    if (!g) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    g->path = strdup(path);
    if (!g->path) {
        free(g);
        return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    }
    int rc = lloco_file_map(path, &g->map);
    if (!rc) rc = parse(g);
    if (rc) {
        lloco_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

void lloco_gguf_close(lloco_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; g->kv && i < g->n_kv; i++) free(g->kv[i].strs);
    free(g->kv);
    free(g->kv_sorted);
    free(g->tensors);
    free(g->tensor_name_off);
    free(g->tensor_off);
    free(g->tensors_sorted);
    free(g->arena);
    lloco_file_unmap(&g->map);
    free(g->path);
    free(g);
}

/* ---- accessors ------------------------------------------------------------ */

uint32_t lloco_gguf_version(const lloco_gguf *g) { return g->version; }
size_t lloco_gguf_alignment(const lloco_gguf *g) { return g->alignment; }
size_t lloco_gguf_file_size(const lloco_gguf *g) { return g->map.size; }
int64_t lloco_gguf_n_kv(const lloco_gguf *g) { return g->n_kv; }

int64_t lloco_gguf_find_key(const lloco_gguf *g, const char *key) {
    return find_name(g->kv_sorted, g->n_kv, key);
}

const char *lloco_gguf_key_name(const lloco_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].key_str : NULL;
}

lloco_gguf_type lloco_gguf_kv_type(const lloco_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].type : (lloco_gguf_type)-1;
}

/* Finds key and checks its type is one of the allowed (a bit mask over
 * lloco_gguf_type). */
static int lookup(const lloco_gguf *g, const char *key, unsigned allowed, const gguf_kv **kv) {
    int64_t i = lloco_gguf_find_key(g, key);
    if (i < 0) return lloco_error(LLOCO_ERR_NOTFOUND, "%s: no metadata key '%s'", g->path, key);
    *kv = &g->kv[i];
    if (!(allowed & (1u << (*kv)->type)))
        return lloco_error(LLOCO_ERR_TYPE, "%s: metadata key '%s' has type %s", g->path, key,
                           lloco_gguf_type_name((*kv)->type));
    return 0;
}

#define INT_TYPES                                                                      \
    ((1u << LLOCO_GGUF_UINT8) | (1u << LLOCO_GGUF_INT8) | (1u << LLOCO_GGUF_UINT16) |  \
     (1u << LLOCO_GGUF_INT16) | (1u << LLOCO_GGUF_UINT32) | (1u << LLOCO_GGUF_INT32) | \
     (1u << LLOCO_GGUF_UINT64) | (1u << LLOCO_GGUF_INT64))

int lloco_gguf_get_u32(const lloco_gguf *g, const char *key, uint32_t *out) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, INT_TYPES, &kv);
    if (rc) return rc;
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed = 0;
    kv_int(kv, &s, &u, &is_signed);
    if (is_signed ? s < 0 || s > (int64_t)UINT32_MAX : u > UINT32_MAX)
        return lloco_error(LLOCO_ERR_RANGE, "%s: metadata key '%s' does not fit in uint32",
                           g->path, key);
    *out = is_signed ? (uint32_t)s : (uint32_t)u;
    return 0;
}

int lloco_gguf_get_i64(const lloco_gguf *g, const char *key, int64_t *out) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, INT_TYPES, &kv);
    if (rc) return rc;
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed = 0;
    kv_int(kv, &s, &u, &is_signed);
    if (!is_signed && u > (uint64_t)INT64_MAX)
        return lloco_error(LLOCO_ERR_RANGE, "%s: metadata key '%s' does not fit in int64",
                           g->path, key);
    *out = is_signed ? s : (int64_t)u;
    return 0;
}

int lloco_gguf_get_f32(const lloco_gguf *g, const char *key, float *out) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, (1u << LLOCO_GGUF_FLOAT32) | (1u << LLOCO_GGUF_FLOAT64), &kv);
    if (rc) return rc;
    if (kv->type == LLOCO_GGUF_FLOAT32) {
        memcpy(out, kv->val, 4);
    } else {
        double d;
        memcpy(&d, kv->val, 8);
        *out = (float)d;
    }
    return 0;
}

int lloco_gguf_get_bool(const lloco_gguf *g, const char *key, int *out) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, 1u << LLOCO_GGUF_BOOL, &kv);
    if (rc) return rc;
    *out = kv->val[0] != 0;
    return 0;
}

static void str_at(const uint8_t *p, const char **s, size_t *len) {
    uint64_t n;
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)n;
}

int lloco_gguf_get_str(const lloco_gguf *g, const char *key, const char **s, size_t *len) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, 1u << LLOCO_GGUF_STRING, &kv);
    if (rc) return rc;
    str_at(kv->val, s, len);
    return 0;
}

static void arr_out(const gguf_kv *kv, lloco_gguf_type *elem_type, uint64_t *n,
                    const void **data) {
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    if (data) *data = kv->arr;
}

static int arr_str(const lloco_gguf *g, const gguf_kv *kv, uint64_t i, const char **s,
                   size_t *len) {
    if (kv->elem_type != LLOCO_GGUF_STRING)
        return lloco_error(LLOCO_ERR_TYPE, "%s: metadata key '%s' is an array of %s", g->path,
                           kv->key_str, lloco_gguf_type_name(kv->elem_type));
    if (i >= kv->n)
        return lloco_error(LLOCO_ERR_RANGE,
                           "%s: index %" PRIu64 " past the end of '%s' (%" PRIu64 " strings)",
                           g->path, i, kv->key_str, kv->n);
    str_at(kv->strs[i], s, len);
    return 0;
}

int lloco_gguf_get_arr(const lloco_gguf *g, const char *key, lloco_gguf_type *elem_type,
                       uint64_t *n, const void **data) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, 1u << LLOCO_GGUF_ARRAY, &kv);
    if (rc) return rc;
    arr_out(kv, elem_type, n, data);
    return 0;
}

int lloco_gguf_get_arr_str(const lloco_gguf *g, const char *key, uint64_t i, const char **s,
                           size_t *len) {
    const gguf_kv *kv = NULL;
    int rc = lookup(g, key, 1u << LLOCO_GGUF_ARRAY, &kv);
    if (rc) return rc;
    return arr_str(g, kv, i, s, len);
}

static int kv_index(const lloco_gguf *g, int64_t i, const gguf_kv **kv) {
    if (i < 0 || i >= g->n_kv)
        return lloco_error(LLOCO_ERR_RANGE, "%s: metadata index %" PRId64 " out of range",
                           g->path, i);
    *kv = &g->kv[i];
    if ((*kv)->type != LLOCO_GGUF_ARRAY)
        return lloco_error(LLOCO_ERR_TYPE, "%s: metadata key '%s' has type %s, not ARRAY",
                           g->path, (*kv)->key_str, lloco_gguf_type_name((*kv)->type));
    return 0;
}

int lloco_gguf_kv_arr(const lloco_gguf *g, int64_t i, lloco_gguf_type *elem_type, uint64_t *n,
                      const void **data) {
    const gguf_kv *kv = NULL;
    int rc = kv_index(g, i, &kv);
    if (rc) return rc;
    arr_out(kv, elem_type, n, data);
    return 0;
}

int lloco_gguf_kv_arr_str(const lloco_gguf *g, int64_t i, uint64_t j, const char **s,
                          size_t *len) {
    const gguf_kv *kv = NULL;
    int rc = kv_index(g, i, &kv);
    if (rc) return rc;
    return arr_str(g, kv, j, s, len);
}

/* Appends s[0..len) to buf with control characters escaped, stopping with
 * "..." when it does not fit. */
static void format_str(const char *s, size_t len, char *buf, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char esc[8];
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n') snprintf(esc, sizeof esc, "\\n");
        else if (ch == '"' || ch == '\\') snprintf(esc, sizeof esc, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f) snprintf(esc, sizeof esc, "\\x%02x", ch);
        else snprintf(esc, sizeof esc, "%c", ch);
        size_t el = strlen(esc);
        if (o + el + 5 > cap) { /* room for "...\"" and the NUL */
            snprintf(buf + o, cap - o, "...\"");
            return;
        }
        memcpy(buf + o, esc, el);
        o += el;
    }
    snprintf(buf + o, cap - o, "\"");
}

void lloco_gguf_kv_format(const lloco_gguf *g, int64_t i, char *buf, size_t cap) {
    if (cap == 0) return;
    buf[0] = 0;
    if (i < 0 || i >= g->n_kv) return;
    const gguf_kv *kv = &g->kv[i];
    int64_t s;
    uint64_t u;
    int is_signed;
    if (kv_int(kv, &s, &u, &is_signed) == 0) {
        if (is_signed) snprintf(buf, cap, "%" PRId64, s);
        else snprintf(buf, cap, "%" PRIu64, u);
        return;
    }
    switch (kv->type) {
    case LLOCO_GGUF_FLOAT32: {
        float f;
        memcpy(&f, kv->val, 4);
        snprintf(buf, cap, "%g", (double)f);
        return;
    }
    case LLOCO_GGUF_FLOAT64: {
        double d;
        memcpy(&d, kv->val, 8);
        snprintf(buf, cap, "%g", d);
        return;
    }
    case LLOCO_GGUF_BOOL: snprintf(buf, cap, "%s", kv->val[0] ? "true" : "false"); return;
    case LLOCO_GGUF_STRING: {
        const char *str;
        size_t len;
        str_at(kv->val, &str, &len);
        if (cap < 6) return;
        buf[0] = '"';
        format_str(str, len, buf + 1, cap - 1);
        return;
    }
    case LLOCO_GGUF_ARRAY:
        snprintf(buf, cap, "[%s x %" PRIu64 "]", lloco_gguf_type_name(kv->elem_type), kv->n);
        return;
    default: return;
    }
}

int64_t lloco_gguf_n_tensors(const lloco_gguf *g) { return g->n_tensors; }

const lloco_gguf_tensor *lloco_gguf_tensor_at(const lloco_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const lloco_gguf_tensor *lloco_gguf_find_tensor(const lloco_gguf *g, const char *name) {
    int64_t i = find_name(g->tensors_sorted, g->n_tensors, name);
    return i < 0 ? NULL : &g->tensors[i];
}
