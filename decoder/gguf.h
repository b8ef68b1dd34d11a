/* GGUF v2/v3 reader: maps the file, parses metadata and tensor infos, and
 * checks every offset and size against the mapping so that a truncated or
 * hostile file is an error, never an out-of-bounds read. The part other
 * modules use (open, tensors, string and float keys) is public in
 * decoder.h; the rest is private to decoder/.
 *
 * Ownership: every pointer returned (strings, arrays, tensor data) points
 * into the mapping and is valid until lloco_gguf_close(). Strings returned
 * as (ptr, len) are NOT NUL-terminated.
 */
#ifndef LLOCO_DECODER_GGUF_H
#define LLOCO_DECODER_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "decoder/decoder.h"

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

uint32_t lloco_gguf_version(const lloco_gguf *g);
size_t lloco_gguf_alignment(const lloco_gguf *g);
size_t lloco_gguf_file_size(const lloco_gguf *g);

/* Metadata by index (0 .. n_kv-1; see lloco_gguf_find_key). */
int64_t lloco_gguf_n_kv(const lloco_gguf *g);
const char *lloco_gguf_key_name(const lloco_gguf *g, int64_t i); /* NUL-terminated */
lloco_gguf_type lloco_gguf_kv_type(const lloco_gguf *g, int64_t i);

/* More typed getters (see lloco_gguf_get_f32): integer getters accept any
 * integer type whose value fits. */
int lloco_gguf_get_u32(const lloco_gguf *g, const char *key, uint32_t *out);
int lloco_gguf_get_i64(const lloco_gguf *g, const char *key, int64_t *out);
int lloco_gguf_get_bool(const lloco_gguf *g, const char *key, int *out);

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


const char *lloco_gguf_type_name(lloco_gguf_type t);

#endif
