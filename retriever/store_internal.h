/* store_internal: what the store's files share — the handle, the transaction
 * bookkeeping that lets the map grow safely (store.c), the record layouts
 * (store_record.c) and the writers (store_write.c). Private to retriever/.
 */
#ifndef LLOCO_STORE_INTERNAL_H
#define LLOCO_STORE_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "retriever.h"

struct lloco_store {
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_docs, dbi_chunks, dbi_groups;
    char *dir;
    char *data_path; /* dir/data.mdb, for messages */
    int readonly;
    lloco_store_fingerprint fp;
    size_t psize;                /* the environment's page size */
    size_t min_chunk_rec;        /* chunk values are padded to this (see store_record.c) */
    _Atomic uint64_t generation; /* latest generation this handle has seen */
    dev_t dev;                   /* the directory's identity, for the open-once check */
    ino_t ino;
    lloco_store *next_open; /* stores open in this process */
    /* LMDB may only remap while no transaction of this process is open:
     * active counts open transactions, remapping holds new ones back. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int active, remapping;
    pthread_mutex_t write_mu; /* one writer of this handle at a time */
};

struct lloco_store_txn {
    lloco_store *s;
    MDB_txn *txn;
    uint64_t generation;
};

/* The meta database's "counters" value: four little-endian u64. */
typedef struct {
    uint64_t generation, next_chunk, n_tokens, n_slots;
} store_counters;

/* Translates an LMDB (or errno) code into a lloco error with a message
 * naming the store; damage codes become LLOCO_ERR_FORMAT. */
int store_mdb_error(const lloco_store *s, int rc, const char *what);

/* Begin/end transactions through the remap bookkeeping. flags: 0 or
 * MDB_RDONLY. store_txn_commit returns LMDB's code untranslated so that a
 * writer can tell MDB_MAP_FULL apart. */
int store_txn_begin(lloco_store *s, unsigned flags, MDB_txn **out);
void store_txn_abort(lloco_store *s, MDB_txn *txn);
int store_txn_commit(lloco_store *s, MDB_txn *txn);
/* Remaps at new_size bytes (0: adopt the size another process set). */
int store_remap(lloco_store *s, size_t new_size);

int store_counters_get(const lloco_store *s, MDB_txn *txn, store_counters *out);
/* Returns LMDB's code (MDB_MAP_FULL untranslated). */
int store_counters_put(lloco_store *s, MDB_txn *txn, const store_counters *c);
void store_generation_seen(lloco_store *s, uint64_t g);

/* Records (store_record.c); the layouts are described there. The writers
 * expect inputs validated by store_write.c. store_chunk_rec_size returns 0
 * when the record would exceed the store's limit. */
size_t store_doc_rec_size(const lloco_doc_in *d);
void store_doc_rec_write(void *dst, size_t size, const lloco_doc_in *d, uint64_t first_chunk,
                         uint32_t n_chunks, uint64_t n_slots);
/* n_slots (optional): the document's slots over all its chunks. */
int store_doc_rec_read(const lloco_store *s, const MDB_val *key, const MDB_val *val,
                       lloco_doc_view *out, uint64_t *n_slots);
size_t store_chunk_rec_size(const lloco_store *s, size_t doc_id_len, const lloco_chunk_in *c);
void store_chunk_rec_write(const lloco_store *s, void *dst, size_t size, const char *doc_id,
                           const lloco_chunk_in *c);
int store_chunk_rec_read(const lloco_store *s, const MDB_val *key, const MDB_val *val,
                         lloco_chunk_view *out);
void store_chunk_key(uint64_t id, uint8_t key[8]);

/* Slot dtypes a store accepts (F32, F16, BF16) by their stable on-disk
 * names; NULL / -1 for any other. */
const char *store_dtype_name(lloco_dtype t);
int store_dtype_from_name(const char *name, lloco_dtype *out);

#endif
