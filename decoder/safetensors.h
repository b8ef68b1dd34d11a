/* safetensors reader (private to decoder/): one file, or a sharded
 * checkpoint described by model.safetensors.index.json. Each file is mapped;
 * the JSON header is parsed and every tensor's [begin, end) is checked
 * against the data section, its dtype and shape against its byte length, so
 * a damaged file is an error naming the problem.
 *
 * Ownership: tensor names and data pointers are valid until
 * lloco_st_close().
 */
#ifndef LLOCO_DECODER_SAFETENSORS_H
#define LLOCO_DECODER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct lloco_st lloco_st;

typedef struct {
    const char *name;  /* NUL-terminated, owned by the reader */
    lloco_dtype type;  /* F32, F16 or BF16 (others are refused on open) */
    int n_dims;        /* 0..4 */
    int64_t shape[4];  /* safetensors order: shape[n_dims-1] is contiguous */
    const void *data;
    size_t nbytes;
    int shard;         /* index of the file it came from */
} lloco_st_tensor;

/* path: a .safetensors file, a model.safetensors.index.json, or a directory
 * holding either (index preferred). */
int lloco_st_open(const char *path, lloco_st **out);
void lloco_st_close(lloco_st *st);

int64_t lloco_st_n_tensors(const lloco_st *st);
const lloco_st_tensor *lloco_st_tensor_at(const lloco_st *st, int64_t i);
const lloco_st_tensor *lloco_st_find(const lloco_st *st, const char *name);
int lloco_st_n_shards(const lloco_st *st);
/* Value of a "__metadata__" string entry of the first shard, or NULL. */
const char *lloco_st_metadata(const lloco_st *st, const char *key);

#endif
