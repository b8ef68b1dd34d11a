/* kv: one sequence's key/value cache. Per layer, K and V are [cap][kv_dim]
 * arrays in F16 or F32 that grow geometrically up to max_ctx, so a short
 * sequence holds little memory and a long one reallocates O(log n) times.
 */
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"

int lloco_kv_create(const lloco_model *m, int max_ctx, lloco_dtype kv_type, lloco_kv **out) {
    *out = NULL;
    if (kv_type != LLOCO_DTYPE_F16 && kv_type != LLOCO_DTYPE_F32)
        return lloco_error(LLOCO_ERR_INVAL, "KV cache type must be F16 or F32, not %s",
                           lloco_dtype_name(kv_type));
    const lloco_hparams *hp = lloco_model_hparams(m);
    lloco_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    kv->n_layer = hp->n_layer;
    kv->kv_dim = hp->n_head_kv * hp->head_dim;
    kv->type = kv_type;
    kv->max = max_ctx > 0 ? max_ctx : hp->n_ctx_train;
    kv->k = calloc((size_t)hp->n_layer, sizeof(void *));
    kv->v = calloc((size_t)hp->n_layer, sizeof(void *));
    if (!kv->k || !kv->v) {
        lloco_kv_free(kv);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    *out = kv;
    return 0;
}

void lloco_kv_free(lloco_kv *kv) {
    if (!kv) return;
    for (int l = 0; kv->k && l < kv->n_layer; l++) free(kv->k[l]);
    for (int l = 0; kv->v && l < kv->n_layer; l++) free(kv->v[l]);
    free(kv->k);
    free(kv->v);
    free(kv);
}

int lloco_kv_len(const lloco_kv *kv) { return kv->len; }
int lloco_kv_max(const lloco_kv *kv) { return kv->max; }

void lloco_kv_truncate(lloco_kv *kv, int n) {
    if (n >= 0 && n < kv->len) kv->len = n;
}

size_t lloco_kv_bytes(const lloco_kv *kv) {
    return 2 * (size_t)kv->n_layer * (size_t)kv->cap * lloco_kv_row_bytes(kv);
}

size_t lloco_kv_row_bytes(const lloco_kv *kv) {
    return (size_t)kv->kv_dim * (kv->type == LLOCO_DTYPE_F16 ? 2 : 4);
}

int lloco_kv_reserve(lloco_kv *kv, int n) {
    if (n > kv->max)
        return lloco_error(LLOCO_ERR_FULL, "sequence of %d positions exceeds the context of %d", n,
                           kv->max);
    if (n <= kv->cap) return 0;
    int cap = kv->cap ? kv->cap : 256;
    while (cap < n) cap *= 2;
    if (cap > kv->max) cap = kv->max;
    size_t row = lloco_kv_row_bytes(kv);
    /* Grow every layer before committing the new capacity, so a failure
     * leaves the cache as it was (buffers larger, cap unchanged). */
    for (int l = 0; l < kv->n_layer; l++) {
        void *k = realloc(kv->k[l], row * (size_t)cap);
        if (!k) return lloco_error(LLOCO_ERR_NOMEM, "out of memory growing the KV cache");
        kv->k[l] = k;
        void *v = realloc(kv->v[l], row * (size_t)cap);
        if (!v) return lloco_error(LLOCO_ERR_NOMEM, "out of memory growing the KV cache");
        kv->v[l] = v;
    }
    kv->cap = cap;
    return 0;
}
