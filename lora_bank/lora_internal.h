/* Private to lora_bank/: what the file-format loaders (peft.c, gguf_lora.c)
 * hand to the common part (lora.c), which checks every pair against the
 * base model and builds the adapter the decoder applies.
 */
#ifndef LLOCO_LORA_BANK_LORA_INTERNAL_H
#define LLOCO_LORA_BANK_LORA_INTERNAL_H

#include "lora_bank/lora_bank.h"

/* Who is being loaded, for every message. */
typedef struct {
    const char *name, *path;
} lora_ctx;

/* Records "LoRA adapter 'name' (path): <message>" and returns code. */
int lora_fail(const lora_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One matrix as the file holds it, rows x cols, cols contiguous. */
typedef struct {
    const void *data; /* NULL: not (yet) found */
    lloco_dtype type; /* F32, F16 or BF16 */
    int n_dims;
    int64_t rows, cols;
} lora_src;

/* One (layer, projection) pair: A (rank, in), B (out, rank). */
typedef struct {
    int expected; /* the adapter must hold this pair */
    lora_src a, b;
    int rank;    /* what the config says; 0: whatever the file holds */
    float scale; /* with rank 0: alpha, made alpha / rank once the rank is known
                    (or 1 when alpha is 0, llama.cpp's rule) */
} lora_pair;

typedef struct {
    const char *base_model; /* as the file names it, or "" */
    int r;                  /* the configured rank, or 0 (GGUF: none) */
    float alpha;
    int use_rslora;
    int src_qk_permuted;   /* q/k B rows in the file are in GGUF order */
    const char *rank_from; /* where an expected rank comes from, for messages */
} lora_meta;

/* Checks the pairs (pairs[l * LLOCO_PROJ_COUNT + p] for every layer of
 * base; the expected ones present, the others absent) against base:
 * shapes, ranks, finite values. Then copies them into a new adapter, B
 * transposed and its q/k columns in base's row order. */
int lora_build(const lora_ctx *c, const lloco_model *base, lora_pair *pairs, const lora_meta *meta,
               lloco_lora **out);

int lora_open_peft(const lora_ctx *c, const lloco_model *base, lloco_lora **out);
int lora_open_gguf(const lora_ctx *c, const lloco_model *base, lloco_lora **out);

#endif
