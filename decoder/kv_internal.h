/* Private to decoder/: the KV cache layout the forward pass writes into. */
#ifndef LLOCO_DECODER_KV_INTERNAL_H
#define LLOCO_DECODER_KV_INTERNAL_H

#include "decoder.h"

struct lloco_kv {
    int n_layer;
    int kv_dim;       /* n_head_kv * head_dim */
    lloco_dtype type; /* F16 or F32 */
    int len;          /* positions filled */
    int cap;          /* positions allocated */
    int max;          /* positions allowed */
    void **k;         /* (n_layer) -> (cap, kv_dim) */
    void **v;         /* (n_layer) -> (cap, kv_dim) */
};

size_t lloco_kv_row_bytes(const lloco_kv *kv);
/* Makes room for n positions in total; on failure nothing changes that
 * the cache's readers can see. */
int lloco_kv_reserve(lloco_kv *kv, int n);

#endif
