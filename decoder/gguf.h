/* GGUF v2/v3 reader (private to decoder/): maps the file, parses metadata
 * and tensor infos, and checks every offset and size against the mapping so
 * that a truncated or hostile file is an error, never an out-of-bounds read.
 *
 * Ownership: every pointer returned (strings, arrays, tensor data) points
 * into the mapping and is valid until lloco_gguf_close(). Strings returned
 * as (ptr, len) are NOT NUL-terminated.
 */
#ifndef LLOCO_DECODER_GGUF_H
#define LLOCO_DECODER_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef enum {
    LLOCO_GGUF_UINT8 = 0,
    LLOCO_GGUF_INT8 = 1,
    LLOCO_GGUF_UINT16 = 2,
    LLOCO_GGUF_INT16 = 3,
    LLOCO_GGUF_UINT32 = 4,
    LLOCO_GGUF_INT32 = 5,
    LLOCO_GGUF_FLOAT32 = 6,
    LLOCO_GGUF_BOOL = 7,
    LLOCO_GGUF_STRING = 8,
    LLOCO_GGUF_ARRAY = 9,
    LLOCO_GGUF_UINT64 = 10,
    LLOCO_GGUF_INT64 = 11,
    LLOCO_GGUF_FLOAT64 = 12,
} lloco_gguf_type;

typedef struct lloco_gguf lloco_gguf;

typedef struct {
    const char *name; /* NUL-terminated copy owned by the reader */
    lloco_dtype type;
    int n_dims;       /* 1..4 */
    int64_t ne[4];    /* ne[0] is the contiguous dimension; unused dims = 1 */
    const void *data; /* inside the mapping, aligned as the file declares */
    size_t nbytes;
} lloco_gguf_tensor;

/* Opens and validates path. On failure returns a negative code with a
 * lloco_error() detail naming the file and the problem (e.g. "tensor
 * 'blk.3.attn_q.weight' data [off, off+len) beyond end of file (size N)"). */
int lloco_gguf_open(const char *path, lloco_gguf **out);
void lloco_gguf_close(lloco_gguf *g);

uint32_t lloco_gguf_version(const lloco_gguf *g);
size_t lloco_gguf_alignment(const lloco_gguf *g);
size_t lloco_gguf_file_size(const lloco_gguf *g);

/* Metadata: keys are looked up by exact name. -1 when absent. */
int64_t lloco_gguf_n_kv(const lloco_gguf *g);
int64_t lloco_gguf_find_key(const lloco_gguf *g, const char *key);
const char *lloco_gguf_key_name(const lloco_gguf *g, int64_t i); /* NUL-terminated */
lloco_gguf_type lloco_gguf_kv_type(const lloco_gguf *g, int64_t i);

/* Typed getters: 0, LLOCO_ERR_NOTFOUND (absent) or LLOCO_ERR_TYPE (present
 * with another type). Integer getters accept any integer type whose value
 * fits; get_f32 accepts FLOAT32 and FLOAT64. */
int lloco_gguf_get_u32(const lloco_gguf *g, const char *key, uint32_t *out);
int lloco_gguf_get_i64(const lloco_gguf *g, const char *key, int64_t *out);
int lloco_gguf_get_f32(const lloco_gguf *g, const char *key, float *out);
int lloco_gguf_get_bool(const lloco_gguf *g, const char *key, int *out);
int lloco_gguf_get_str(const lloco_gguf *g, const char *key, const char **s, size_t *len);

/* Arrays: element type and count. For numeric element types *data points at
 * n packed little-endian elements (possibly unaligned: read with memcpy).
 * String arrays are read element by element with get_arr_str. */
int lloco_gguf_get_arr(const lloco_gguf *g, const char *key, lloco_gguf_type *elem_type,
                       uint64_t *n, const void **data);
int lloco_gguf_get_arr_str(const lloco_gguf *g, const char *key, uint64_t i, const char **s,
                           size_t *len);

/* Same, by key index (for printing every key). */
int lloco_gguf_kv_arr(const lloco_gguf *g, int64_t i, lloco_gguf_type *elem_type, uint64_t *n,
                      const void **data);
int lloco_gguf_kv_arr_str(const lloco_gguf *g, int64_t i, uint64_t j, const char **s,
                          size_t *len);
/* Scalar value of key i formatted for humans into buf (arrays: "[type x n]"). */
void lloco_gguf_kv_format(const lloco_gguf *g, int64_t i, char *buf, size_t cap);

int64_t lloco_gguf_n_tensors(const lloco_gguf *g);
const lloco_gguf_tensor *lloco_gguf_tensor_at(const lloco_gguf *g, int64_t i);
const lloco_gguf_tensor *lloco_gguf_find_tensor(const lloco_gguf *g, const char *name);

const char *lloco_gguf_type_name(lloco_gguf_type t);

#endif
