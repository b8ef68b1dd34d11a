/* cpu_kernels: the contract between the CPU backend's driver (cpu.c: threads,
 * scratch memory, partitioning) and its per-ISA kernel files (cpu_avx2.c,
 * cpu_avx512.c), which only compute on the ranges they are handed.
 */
#ifndef LLOCO_KERNELS_CPU_KERNELS_H
#define LLOCO_KERNELS_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* Arguments of one attention op, shared by all its tasks. */
typedef struct {
    const float *q;
    int m, p0, n_head, n_kv_head, head_dim;
    const void *k, *v;
    lloco_dtype kv_type;
    int kv_stride;
    float scale;
} attn_args;

/* Running softmax state of one query: max score, sum of exp(score - max),
 * and the exp-weighted sum of values (head_dim floats follow). */
#define ATTN_STATE_FLOATS(head_dim) (2 + (size_t)(head_dim))

/* The kernels of one ISA; every entry is set. (The scalar ISA has no table:
 * cpu.c's portable code runs instead.) */
typedef struct {
    /* Integer matmul for Q4_0, Q4_1 and Q8_0 weights. Activations are
     * quantized to exactly GGML's q8_0 / q8_1 values and scales, laid out
     * as the ISA's kernels like them; a row of all-zero bytes is a row of
     * zeros in every layout. `packed` selects the layout of mm_tile (weights
     * packed into panels, prefill) over that of mm_rows (weights read from
     * their GGUF blocks, decode). */
    int tile_r, tile_c; /* mm_tile computes tile_r weight rows x tile_c activation rows */
    size_t (*act_row_bytes)(lloco_dtype wt, int k, int packed); /* a multiple of 64 */
    void (*quantize_act)(lloco_dtype wt, const float *x, int k, int packed, uint8_t *row);
    /* y[r] = W row r . activation row, r < nrows. */
    void (*mm_rows)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                    const uint8_t *act, float *y);
    /* Bytes of one panel of tile_r weight rows (a multiple of 64). */
    size_t (*mm_panel_bytes)(lloco_dtype wt, int k);
    /* Packs weight rows [0, nrows), nrows <= tile_r, into a panel; missing
     * rows are zero. */
    void (*mm_pack)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                    uint8_t *panel);
    /* out[c * tile_r + r] = panel row r . activation row c, where activation
     * row c starts at act + c * act_stride. */
    void (*mm_tile)(lloco_dtype wt, const uint8_t *panel, int k, const uint8_t *act,
                    size_t act_stride, float *out);

    /* Float weights (F32/F16/BF16): y[i * ldy + r] = W row r . x row i for
     * r < nrows, i < m. */
    void (*mm_float)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                     const float *x, int m, float *y, int ldy);

    /* Attention: advances the states of query rows [i0, i1) x the heads of
     * KV head g over positions [p_begin, p_end) (each row stops at its causal
     * limit). states: [(i - i0) * group + h % group][ATTN_STATE_FLOATS].
     * attn_lanes: the number of queries (rows x heads) a call serves best. */
    int attn_lanes;
    void (*attn)(const attn_args *a, int g, int i0, int i1, int p_begin, int p_end, float *states);

    void (*rmsnorm_row)(const float *x, const float *w, int d, float eps, float *y);
    void (*softmax_row)(float *x, int n);
    void (*silu_mul)(const float *gate, const float *up, float *out, int64_t n);
    void (*add)(float *y, const float *x, int64_t n);
    void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n);
} cpu_kernels;

extern const cpu_kernels lloco_cpu_kernels_avx2;
extern const cpu_kernels lloco_cpu_kernels_avx512;

#endif
