/* retriever: the store (LMDB, the source of truth for documents, chunks,
 * their summary slots and retrieval vectors, and the group -> adapter map),
 * the FAISS index derived from it, and the BERT sentence embedder that makes
 * retrieval vectors.
 *
 * Ownership (LMDB's rule): every pointer a read transaction hands out (doc
 * and chunk views, slot blobs, texts, vectors) points into the database map,
 * is owned by the store and valid until lloco_store_read_end() of that
 * transaction. Copy what must live longer. A lloco_store must outlive its
 * transactions; an index or embedder is independent of any store.
 */
#ifndef LLOCO_RETRIEVER_H
#define LLOCO_RETRIEVER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* ---- store ------------------------------------------------------------- */

#define LLOCO_STORE_SCHEMA_VERSION 1

/* What produced the slots. A store records it when created; opening it with
 * a different fingerprint is refused (LLOCO_ERR_MISMATCH) with a message
 * naming each field that differs. Strings are NUL-terminated. */
typedef struct {
    char model_hash[40];     /* decoder/encoder model file content hash (hex) */
    char method[16];         /* "autocompressor" | "icae" */
    int n_summary;           /* slots per segment (ICAE: memory tokens k) */
    int segment_tokens;
    int accumulate;          /* AutoCompressor: earlier summaries fed forward */
    int d_model;             /* floats per slot */
    lloco_dtype slot_dtype;  /* F32, F16 or BF16 */
    char summary_init[48];   /* where summary/memory embeddings came from:
                                "embed_summary", "eos_row", "memory_token_embed" */
    char encoder_lora[64];   /* ICAE encoder LoRA name, "" for none */
    char embedder_hash[40];  /* retrieval embedder content hash (hex) */
    int embed_dim;           /* retrieval vector length */
} lloco_store_fingerprint;

/* Writes "field: stored X, given Y; ..." for each field that differs into
 * msg (truncated to cap) and returns how many differ (0: same encoder). */
int lloco_store_fingerprint_diff(const lloco_store_fingerprint *stored,
                                 const lloco_store_fingerprint *given, char *msg, size_t cap);

typedef struct lloco_store lloco_store;

typedef enum {
    LLOCO_STORE_CREATE = 1,   /* create DIR (and the store) if missing */
    LLOCO_STORE_READONLY = 2, /* writes refused (LLOCO_ERR_INVAL); not with CREATE */
} lloco_store_flags;

/* Opens the store in directory dir. fp: the encoder that will write or read
 * it; when the store is new it is recorded, otherwise compared. fp NULL
 * opens with whatever the store recorded (stats, search-only use) and is
 * refused for a store that does not exist yet (LLOCO_ERR_NOTFOUND). A
 * truncated or damaged database is LLOCO_ERR_FORMAT with a message naming
 * the file; a store of a newer schema LLOCO_ERR_UNSUPPORTED. A store may be
 * open once per process (LLOCO_ERR_EXISTS otherwise: LMDB's file locks do
 * not survive a second handle); share the handle between threads. */
int lloco_store_open(const char *dir, const lloco_store_fingerprint *fp, int flags,
                     lloco_store **out);
void lloco_store_close(lloco_store *s);
const lloco_store_fingerprint *lloco_store_fingerprint_of(const lloco_store *s);
/* Bumped by every committed change to documents and chunks (the group map
 * does not count); the index file records the value it reflects. This is
 * the newest value the handle has seen (at open, by its writes and read
 * transactions); lloco_store_txn_generation is exact for a snapshot. */
uint64_t lloco_store_generation(const lloco_store *s);
const char *lloco_store_dir(const lloco_store *s);

/* A chunk to write: one segment of a document. slots: n_slots x d_model
 * values of the fingerprint's slot_dtype, n_slots 0..n_summary (0: text
 * only, slots may be NULL); vec: embed_dim finite floats. */
typedef struct {
    uint32_t ordinal;
    uint32_t tok_begin, tok_end; /* token span in the document */
    const char *text;            /* the segment's raw text (not NUL-terminated) */
    size_t text_len;
    int n_slots;
    const void *slots;
    const float *vec;
} lloco_chunk_in;

typedef struct {
    const char *id;     /* caller's document id, unique in the store */
    const char *title;
    const char *group;  /* "" for the default group */
    uint8_t content_hash[16];
    uint64_t n_tokens;
} lloco_doc_in;

/* Writes one document and all its chunks in one write transaction: after a
 * crash either all of it is there or none. Chunk ids are assigned by the
 * store (increasing, never reused) and written to chunk_ids[n] when not
 * NULL. A document with the same id and content hash already present is a
 * no-op (*written = 0, chunk_ids get the stored ids); with a different hash
 * it is replaced (its old chunks deleted in the same transaction). written
 * may be NULL. Invalid input (empty or non-UTF-8 id, title or group, group
 * over 255 bytes, a chunk outside the fingerprint's shapes or the document's
 * tokens) is LLOCO_ERR_INVAL with nothing written. MDB_MAP_FULL grows the
 * map and retries; growing waits for this process's read transactions to
 * end, so a thread must not write while it holds one. */
int lloco_store_put_doc(lloco_store *s, const lloco_doc_in *doc, const lloco_chunk_in *chunks,
                        int n_chunks, uint64_t *chunk_ids, int *written);
/* Deletes a document and its chunks; LLOCO_ERR_NOTFOUND if absent. */
int lloco_store_delete_doc(lloco_store *s, const char *id);

/* A read transaction: a consistent snapshot, usable from any thread (one
 * at a time). Keep them short: a writer that must grow the map waits for
 * all of them (new ones wait behind it), and gives up with LLOCO_ERR_FULL
 * after 60 s. All must end before lloco_store_close. */
typedef struct lloco_store_txn lloco_store_txn;
int lloco_store_read_begin(lloco_store *s, lloco_store_txn **out);
void lloco_store_read_end(lloco_store_txn *t);
/* The generation this read transaction sees. */
uint64_t lloco_store_txn_generation(const lloco_store_txn *t);

typedef struct {
    const char *id, *title, *group; /* NUL-terminated */
    uint8_t content_hash[16];
    uint64_t n_tokens;
    uint64_t first_chunk; /* chunk ids first_chunk .. first_chunk+n_chunks-1 */
    uint32_t n_chunks;
} lloco_doc_view;

typedef struct {
    uint64_t id;
    const char *doc_id; /* NUL-terminated */
    uint32_t ordinal;
    uint32_t tok_begin, tok_end;
    const char *text;   /* not NUL-terminated */
    size_t text_len;
    lloco_dtype slot_dtype;
    int n_slots, d_model;
    const void *slots;  /* n_slots x d_model, zero-copy from the map */
    int dim;
    const float *vec;   /* dim floats, zero-copy from the map */
    /* slots and vec are 16-byte aligned: the store lays records out so. */
} lloco_chunk_view;

/* LLOCO_ERR_NOTFOUND when absent. */
int lloco_store_get_doc(lloco_store_txn *t, const char *id, lloco_doc_view *out);
int lloco_store_get_chunk(lloco_store_txn *t, uint64_t chunk_id, lloco_chunk_view *out);
/* Iteration in key order; the callback returns non-zero to stop (that value
 * is returned). */
int lloco_store_foreach_doc(lloco_store_txn *t,
                            int (*cb)(void *ctx, const lloco_doc_view *d), void *ctx);
int lloco_store_foreach_chunk(lloco_store_txn *t,
                              int (*cb)(void *ctx, const lloco_chunk_view *c), void *ctx);
/* The chunks whose id is at least first_id, in id order. */
int lloco_store_foreach_chunk_from(lloco_store_txn *t, uint64_t first_id,
                                   int (*cb)(void *ctx, const lloco_chunk_view *c), void *ctx);

typedef struct {
    uint64_t n_docs, n_chunks, n_tokens, n_slots, n_groups;
    uint64_t generation;
    uint64_t next_chunk; /* the id the next chunk written will get */
    size_t map_bytes, used_bytes;
} lloco_store_stats;
int lloco_store_stats_get(lloco_store *s, lloco_store_stats *out);

/* Group -> adapter map. Group and adapter names: 1..255 bytes of UTF-8.
 * get: LLOCO_ERR_NOTFOUND when unassigned; the adapter name is copied into
 * buf (LLOCO_ERR_RANGE if cap is too small). unset: LLOCO_ERR_NOTFOUND when
 * unassigned. foreach: in name order, the callback runs outside any
 * transaction; non-zero stops and is returned. */
int lloco_store_group_set(lloco_store *s, const char *group, const char *adapter);
int lloco_store_group_unset(lloco_store *s, const char *group);
int lloco_store_group_get(lloco_store *s, const char *group, char *buf, size_t cap);
int lloco_store_foreach_group(lloco_store *s,
                              int (*cb)(void *ctx, const char *group, const char *adapter),
                              void *ctx);

/* ---- index --------------------------------------------------------------- */

/* A FAISS index over retrieval vectors (inner product on L2-normalised
 * vectors, i.e. cosine), ids = chunk ids. Exact (flat) below
 * hnsw_threshold vectors, HNSW above. The index owns copies of the vectors
 * it was given. Debian's libfaiss is built without SIMD: an HNSW build costs
 * roughly efConstruction^2 (20k clustered 384-d vectors, 2 cores: 5 s at 40,
 * 87 s at 200), hence the default; bench/benchmark-search measures it. */
typedef struct {
    int dim;
    int64_t hnsw_threshold; /* default 20000 */
    int hnsw_m;             /* default 32, 2..512 */
    int ef_construction;    /* default 80, 1..65536 */
    int ef_search;          /* default 128, 1..65536 (k if larger) */
} lloco_index_params;

typedef struct lloco_index lloco_index;

void lloco_index_params_default(lloco_index_params *p, int dim);
/* n_hint: how many vectors it will hold; the kind (flat or HNSW) is chosen
 * here, once: an index that outgrows the threshold stays flat until
 * rebuilt. */
int lloco_index_create(const lloco_index_params *p, int64_t n_hint, lloco_index **out);
void lloco_index_free(lloco_index *ix);
/* vecs: n x dim floats, each L2-normalised (|norm^2 - 1| <= 0.01) and
 * finite, else LLOCO_ERR_INVAL and nothing is added; ids >= 0, unique (not
 * checked). Not concurrently with searches of the same index. */
int lloco_index_add(lloco_index *ix, int64_t n, const float *vecs, const int64_t *ids);
int64_t lloco_index_size(const lloco_index *ix);
int lloco_index_is_hnsw(const lloco_index *ix);
/* Up to k nearest ids (best first) with their inner products; *n_found
 * may be < k. q must be L2-normalised like the vectors added. ids and
 * scores hold k entries. Thread-safe for concurrent searches. */
int lloco_index_search(const lloco_index *ix, const float *q, int k, int64_t *ids, float *scores,
                       int *n_found);
/* Atomic: temp file in the same directory, fsync, rename, fsync dir. The
 * file carries generation, dim, kind, the HNSW parameters and checksums. */
int lloco_index_save(const lloco_index *ix, const char *path, uint64_t generation);
/* LLOCO_ERR_NOTFOUND if the file is missing, LLOCO_ERR_FORMAT if damaged
 * (truncated, checksum mismatch, not an index file) or not an index of
 * dimension dim; the message names the path and the problem. *generation:
 * the value given to lloco_index_save. */
int lloco_index_load(const char *path, int dim, uint64_t *generation, lloco_index **out);

/* ---- embedder ------------------------------------------------------------ */

/* BERT-family sentence encoder: WordPiece, post-LN encoder, GELU, absolute
 * positions, the pooling the model declares (mean or [CLS]), L2-normalised
 * output. An embedder runs its ops on the backend it was opened with and
 * keeps working memory between calls: one call at a time per embedder, and
 * not concurrently with other users of that backend. */
typedef struct lloco_embedder lloco_embedder;

/* dir: sentence-transformers model folder: config.json (model_type bert),
 * model.safetensors (F32, F16 or BF16 weights, used in their file dtype;
 * a "bert." prefix is accepted), tokenizer.json or vocab.txt (+
 * tokenizer_config.json), and optionally modules.json / 1_Pooling/config.json
 * (default mean pooling) and sentence_bert_config.json (max_seq_length;
 * default max_position_embeddings). scripts/setup.sh fetches
 * models/embedder/all-MiniLM-L6-v2. Errors: LLOCO_ERR_NOTFOUND for a missing
 * folder or file, LLOCO_ERR_FORMAT for damaged files or weights whose shapes
 * disagree with config.json, LLOCO_ERR_UNSUPPORTED for other architectures,
 * tokenizer components or pooling modes, each with a message naming them.
 * be: backend to run on, owned by the caller and outliving the embedder. */
int lloco_embedder_open(const char *dir, lloco_backend *be, lloco_embedder **out);
void lloco_embedder_close(lloco_embedder *e);
int lloco_embedder_dim(const lloco_embedder *e);
/* Content hash of the weights: XXH3-128 of model.safetensors' bytes as 32
 * hex digits (NUL-terminated, valid until close), for the fingerprint. */
const char *lloco_embedder_hash(const lloco_embedder *e);
/* Positions per window, [CLS] and [SEP] included (the model's
 * max_seq_length): a window holds max_tokens - 2 word pieces. */
int lloco_embedder_max_tokens(const lloco_embedder *e);
/* Embeds n texts (lens[i] bytes each; lens NULL: NUL-terminated; invalid
 * UTF-8 bytes read as U+FFFD) into out[n][dim]. A text of more word pieces
 * than one window holds is cut into consecutive windows of max_tokens - 2
 * pieces (the last shorter), each run as [CLS] window [SEP]; their
 * normalised embeddings are averaged, weighted by their piece counts, and
 * re-normalised. A text that fits one window gets the vector
 * sentence-transformers computes for it (to float rounding). */
int lloco_embedder_embed(lloco_embedder *e, const char *const *texts, const size_t *lens, int n,
                         float *out);

/* ---- retrieval ----------------------------------------------------------- */

/* A store's searchable side: its FAISS index, kept at DIR/index.faiss and
 * stamped with the store generation it reflects. Opening loads it and
 * rebuilds it from the store's chunks when it is missing, damaged, of the
 * wrong dimension or stale (written at an older generation); what happened
 * is logged and reported by lloco_retriever_rebuilt. Afterwards a search
 * first adds the chunks written since (by this process or another one, as
 * `lloco ingest` beside a running server), so a long-lived retriever finds
 * them; it does not save the index. Searches may run concurrently with
 * each other and with adds. */
typedef struct lloco_retriever lloco_retriever;

/* p: NULL for the defaults; p->dim 0 means the store's embed_dim. The
 * store must outlive the retriever. */
int lloco_retriever_open(lloco_store *s, const lloco_index_params *p, lloco_retriever **out);
void lloco_retriever_close(lloco_retriever *r);
/* Why the index was rebuilt on open ("missing", "stale", "damaged: ..."),
 * or NULL when it was loaded as it was. */
const char *lloco_retriever_rebuilt(const lloco_retriever *r);
/* Rebuilds the index from every chunk in the store and saves it. */
int lloco_retriever_reindex(lloco_retriever *r);
/* Adds chunks just written with lloco_store_put_doc (ids ascending, as it
 * returns them; vecs [n][dim]); those the index already holds are skipped. */
int lloco_retriever_add(lloco_retriever *r, int64_t n, const uint64_t *ids, const float *vecs);
/* Catches up with the store (see above), then writes the index atomically,
 * stamped with the generation it then reflects. */
int lloco_retriever_save(lloco_retriever *r);
int64_t lloco_retriever_size(lloco_retriever *r);

typedef struct {
    uint64_t chunk_id;
    float score; /* inner product of normalised vectors: cosine */
} lloco_hit;

/* The k best chunks for query vector q (dim floats, normalised), best
 * first, restricted to documents of `group` when group is not NULL, and to
 * chunks in the store as t sees it (the index first catches up with t, see
 * above; ids of replaced documents that it still holds are skipped).
 * *n_hits <= k. */
int lloco_retriever_search(lloco_retriever *r, lloco_store_txn *t, const float *q, int k,
                           const char *group, lloco_hit *hits, int *n_hits);

#endif
