/* store_record: the byte layout of the values in `docs` and `chunks`,
 * written in place into space LMDB reserves and read back as views that
 * point into the map (zero-copy), every length checked against the value.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "store_internal.h"

/* Integers in records are little-endian. LMDB's own pages are host-endian,
 * so a store never moves between byte orders anyway; we only say it. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "store records assume little-endian");
/* The alignment rule for chunk values (below) rests on LMDB's page header
 * being 16 bytes, which holds for 64-bit builds. */
_Static_assert(sizeof(void *) == 8, "the chunk layout's 16-byte alignment needs a 64-bit LMDB");

/* docs: key = document id (its bytes, no NUL). Value:
 *    0 u32 tag "LDOC"     4 u32 n_chunks
 *    8 u64 n_tokens      16 u64 first_chunk     24 u64 n_slots (all chunks)
 *   32 u8[16] content_hash
 *   48 u16 id_len        50 u16 group_len       52 u32 title_len
 *   56 id NUL title NUL group NUL                (lengths exclude the NULs)
 * The id is repeated in the value so that a view's id can point into the
 * map NUL-terminated, like title and group. */
#define DOC_TAG 0x434f444cu /* "LDOC" */
#define DOC_HDR 56

/* chunks: key = chunk id, 8 bytes big-endian, so key order is id order and
 * ids can be appended. Value:
 *    0 u32 tag "LCHK"     4 u32 ordinal
 *    8 u32 tok_begin     12 u32 tok_end
 *   16 u32 slot dtype (0 f32, 1 f16, 2 bf16)     20 u32 n_slots
 *   24 u32 d_model       28 u32 dim
 *   32 u64 text_len      40 u32 doc_id_len      44 u32 0
 *   48 doc id NUL, text
 *      zeros to a multiple of 16, slots (n_slots x d_model of the dtype)
 *      zeros to a multiple of 16, vec (dim f32)
 *      zeros up to min_chunk_rec (half a page)
 * Alignment: a leaf page must hold at least two nodes, so LMDB moves any
 * value of half a page or more to overflow pages of its own, where it
 * starts right after the 16-byte header of a page-aligned page. Padding
 * every chunk value to half a page thus puts slots and vec at 16-byte
 * aligned addresses in the map; smaller values would sit at LMDB's 2-byte
 * node alignment. */
#define CHUNK_TAG 0x4b48434cu /* "LCHK" */
#define CHUNK_HDR 48
#define STORE_MAX_CHUNK_REC ((size_t)1 << 30)

static const struct {
    lloco_dtype t;
    const char *name;
} slot_dtypes[] = {{LLOCO_DTYPE_F32, "f32"}, {LLOCO_DTYPE_F16, "f16"}, {LLOCO_DTYPE_BF16, "bf16"}};

const char *store_dtype_name(lloco_dtype t) {
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(slot_dtypes); i++)
        if (slot_dtypes[i].t == t) return slot_dtypes[i].name;
    return NULL;
}

int store_dtype_from_name(const char *name, lloco_dtype *out) {
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(slot_dtypes); i++)
        if (strcmp(slot_dtypes[i].name, name) == 0) {
            *out = slot_dtypes[i].t;
            return 0;
        }
    return -1;
}

static uint32_t dtype_code(lloco_dtype t) {
    for (uint32_t i = 0; i < LLOCO_ARRAY_LEN(slot_dtypes); i++)
        if (slot_dtypes[i].t == t) return i;
    LLOCO_ASSERT(!"slot dtype validated before writing");
    return 0;
}

/* Bytes of one slot row of d_model values, 0 for a dtype not accepted. */
static size_t slot_row_bytes(lloco_dtype t, int d_model) {
    if (!store_dtype_name(t) || d_model <= 0) return 0;
    return (t == LLOCO_DTYPE_F32 ? 4u : 2u) * (size_t)d_model;
}

static uint16_t get16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

void store_chunk_key(uint64_t id, uint8_t key[8]) {
    for (int i = 0; i < 8; i++) key[i] = (uint8_t)(id >> (56 - 8 * i));
}

static uint64_t chunk_key_id(const uint8_t key[8]) {
    uint64_t id = 0;
    for (int i = 0; i < 8; i++) id = id << 8 | key[i];
    return id;
}

__attribute__((format(printf, 2, 3))) static int damaged(const lloco_store *s, const char *fmt,
                                                         ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return lloco_error(LLOCO_ERR_FORMAT, "%s is damaged: %s", s->data_path, what);
}

size_t store_doc_rec_size(const lloco_doc_in *d) {
    return DOC_HDR + strlen(d->id) + 1 + strlen(d->title) + 1 + strlen(d->group) + 1;
}

void store_doc_rec_write(void *dst, size_t size, const lloco_doc_in *d, uint64_t first_chunk,
                         uint32_t n_chunks, uint64_t n_slots) {
    uint8_t *p = dst;
    size_t id_len = strlen(d->id), title_len = strlen(d->title), group_len = strlen(d->group);
    LLOCO_ASSERT(size == DOC_HDR + id_len + title_len + group_len + 3);
    put32(p, DOC_TAG);
    put32(p + 4, n_chunks);
    put64(p + 8, d->n_tokens);
    put64(p + 16, first_chunk);
    put64(p + 24, n_slots);
    memcpy(p + 32, d->content_hash, 16);
    put16(p + 48, (uint16_t)id_len);
    put16(p + 50, (uint16_t)group_len);
    put32(p + 52, (uint32_t)title_len);
    uint8_t *q = p + DOC_HDR;
    memcpy(q, d->id, id_len + 1);
    q += id_len + 1;
    memcpy(q, d->title, title_len + 1);
    q += title_len + 1;
    memcpy(q, d->group, group_len + 1);
}

/* A NUL-terminated string of len bytes at p, with no NUL inside. */
static int is_cstr(const uint8_t *p, size_t len) { return p[len] == 0 && !memchr(p, 0, len); }

int store_doc_rec_read(const lloco_store *s, const MDB_val *key, const MDB_val *val,
                       lloco_doc_view *out, uint64_t *n_slots) {
    const uint8_t *p = val->mv_data;
    size_t n = val->mv_size;
    if (n < DOC_HDR || get32(p) != DOC_TAG)
        return damaged(s, "document '%.*s': bad record header", (int)key->mv_size,
                       (const char *)key->mv_data);
    size_t id_len = get16(p + 48), group_len = get16(p + 50), title_len = get32(p + 52);
    const uint8_t *id = p + DOC_HDR, *title = id + id_len + 1, *group = title + title_len + 1;
    if (DOC_HDR + id_len + title_len + group_len + 3 != n || !is_cstr(id, id_len) ||
        !is_cstr(title, title_len) || !is_cstr(group, group_len) || id_len != key->mv_size ||
        memcmp(id, key->mv_data, id_len) != 0)
        return damaged(s, "document '%.*s': inconsistent record", (int)key->mv_size,
                       (const char *)key->mv_data);
    out->id = (const char *)id;
    out->title = (const char *)title;
    out->group = (const char *)group;
    memcpy(out->content_hash, p + 32, 16);
    out->n_tokens = get64(p + 8);
    out->first_chunk = get64(p + 16);
    out->n_chunks = get32(p + 4);
    if (n_slots) *n_slots = get64(p + 24);
    return 0;
}

/* Offsets of the variable parts of a chunk value; 0 on overflow or when
 * the record would exceed STORE_MAX_CHUNK_REC. */
typedef struct {
    size_t text, slots, vec, end, size;
} chunk_layout;

static int chunk_layout_of(const lloco_store *s, uint64_t doc_id_len, uint64_t text_len,
                           size_t slots_bytes, size_t vec_bytes, chunk_layout *l) {
    const uint64_t max = STORE_MAX_CHUNK_REC;
    if (doc_id_len > max || text_len > max || slots_bytes > max || vec_bytes > max) return -1;
    l->text = CHUNK_HDR + (size_t)doc_id_len + 1;
    l->slots = align16(l->text + (size_t)text_len);
    l->vec = align16(l->slots + slots_bytes);
    l->end = l->vec + vec_bytes;
    if (l->end > max) return -1;
    l->size = l->end > s->min_chunk_rec ? l->end : s->min_chunk_rec;
    return 0;
}

size_t store_chunk_rec_size(const lloco_store *s, size_t doc_id_len, const lloco_chunk_in *c) {
    chunk_layout l;
    size_t slots_bytes = (size_t)c->n_slots * slot_row_bytes(s->fp.slot_dtype, s->fp.d_model);
    if (chunk_layout_of(s, doc_id_len, c->text_len, slots_bytes,
                        (size_t)s->fp.embed_dim * sizeof(float), &l))
        return 0;
    return l.size;
}

void store_chunk_rec_write(const lloco_store *s, void *dst, size_t size, const char *doc_id,
                           const lloco_chunk_in *c) {
    uint8_t *p = dst;
    size_t id_len = strlen(doc_id);
    size_t slots_bytes = (size_t)c->n_slots * slot_row_bytes(s->fp.slot_dtype, s->fp.d_model);
    size_t vec_bytes = (size_t)s->fp.embed_dim * sizeof(float);
    chunk_layout l;
    LLOCO_ASSERT(chunk_layout_of(s, id_len, c->text_len, slots_bytes, vec_bytes, &l) == 0 &&
                 l.size == size);
    memset(p, 0, size);
    put32(p, CHUNK_TAG);
    put32(p + 4, c->ordinal);
    put32(p + 8, c->tok_begin);
    put32(p + 12, c->tok_end);
    put32(p + 16, dtype_code(s->fp.slot_dtype));
    put32(p + 20, (uint32_t)c->n_slots);
    put32(p + 24, (uint32_t)s->fp.d_model);
    put32(p + 28, (uint32_t)s->fp.embed_dim);
    put64(p + 32, c->text_len);
    put32(p + 40, (uint32_t)id_len);
    memcpy(p + CHUNK_HDR, doc_id, id_len + 1);
    if (c->text_len) memcpy(p + l.text, c->text, c->text_len);
    if (slots_bytes) memcpy(p + l.slots, c->slots, slots_bytes);
    memcpy(p + l.vec, c->vec, vec_bytes);
}

int store_chunk_rec_read(const lloco_store *s, const MDB_val *key, const MDB_val *val,
                         lloco_chunk_view *out) {
    if (key->mv_size != 8) return damaged(s, "chunk key of %zu bytes", key->mv_size);
    uint64_t id = chunk_key_id(key->mv_data);
    const uint8_t *p = val->mv_data;
    size_t n = val->mv_size;
    if (n < CHUNK_HDR || get32(p) != CHUNK_TAG)
        return damaged(s, "chunk %llu: bad record header", (unsigned long long)id);
    uint32_t code = get32(p + 16), n_slots = get32(p + 20), d_model = get32(p + 24),
             dim = get32(p + 28), id_len = get32(p + 40);
    /* The fingerprint was checked when the store opened; a record that
     * disagrees with it is damage, and agreeing bounds the sizes below. */
    if (code >= LLOCO_ARRAY_LEN(slot_dtypes) || slot_dtypes[code].t != s->fp.slot_dtype ||
        d_model != (uint32_t)s->fp.d_model || dim != (uint32_t)s->fp.embed_dim ||
        n_slots > (uint32_t)s->fp.n_summary)
        return damaged(s, "chunk %llu: slot shape disagrees with the fingerprint",
                       (unsigned long long)id);
    chunk_layout l;
    size_t slots_bytes = (size_t)n_slots * slot_row_bytes(s->fp.slot_dtype, (int)d_model);
    if (chunk_layout_of(s, id_len, get64(p + 32), slots_bytes, (size_t)dim * sizeof(float), &l) ||
        l.size > n || !is_cstr(p + CHUNK_HDR, id_len))
        return damaged(s, "chunk %llu: inconsistent record", (unsigned long long)id);
    LLOCO_ASSERT(((uintptr_t)p & 15) == 0);
    out->id = id;
    out->doc_id = (const char *)p + CHUNK_HDR;
    out->ordinal = get32(p + 4);
    out->tok_begin = get32(p + 8);
    out->tok_end = get32(p + 12);
    out->text = (const char *)p + l.text;
    out->text_len = (size_t)get64(p + 32);
    out->slot_dtype = s->fp.slot_dtype;
    out->n_slots = (int)n_slots;
    out->d_model = (int)d_model;
    out->slots = p + l.slots;
    out->dim = (int)dim;
    out->vec = (const float *)(const void *)(p + l.vec);
    return 0;
}
