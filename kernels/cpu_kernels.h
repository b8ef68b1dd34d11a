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
    int causal; /* 0: every row sees all m positions (p0 is 0) */
    float *out;
} attn_args;

/* Positions of V an attention block converts and reuses at once, at most:
 * four per lane of the output dot product. */
#define ATTN_V_CHUNK 256
/* Scratch floats an attention block of nq queries over at most n_pos
 * positions needs: per query its scores (rounded up to the chunk, then 16
 * more), the lanes of its output dot product and its q; then 16 rows of K
 * and a chunk of V. */
#define ATTN_SCRATCH_FLOATS(nq, n_pos, head_dim)                                    \
    ((size_t)(nq) * (((size_t)(n_pos) + ATTN_V_CHUNK - 1) / ATTN_V_CHUNK * ATTN_V_CHUNK + \
                     16 + 65 * (size_t)(head_dim)) +                                   \
     (16 + ATTN_V_CHUNK) * (size_t)(head_dim))

/* The kernels of one ISA; every entry is set. (The scalar ISA has no table:
 * cpu.c's portable code runs instead.) */
typedef struct {
    /* Integer matmul for Q4_0, Q4_1 and Q8_0 weights, with lloco_op_matmul's
     * arithmetic for every output. Activations are quantized to exactly
     * GGML's q8_0 / q8_1 values and scales, laid out as the ISA's kernels
     * like them; all-zero bytes are rows of zeros in every layout. `packed`
     * selects the layout of mm_tile (weights packed into panels, prefill;
     * activation rows interleaved in tiles of tile_c rows) over that of
     * mm_rows (weights read from their GGUF blocks, decode; one activation
     * row after the other). */
    int tile_r, tile_c; /* mm_tile computes tile_r weight rows x tile_c activation rows */
    /* Below this many activation rows the matmul streams weight rows straight
     * from their GGUF blocks with mm_rows (decode, small batches); from it
     * on, it packs panels of weight rows once and reuses them for every
     * activation tile (prefill). Either way gives the same bits. */
    int packed_min_m;
    /* Bytes per activation row: row i of a buffer starts at act + i * this
     * (unpacked), or its tile at act + (i - i % tile_c) * this (packed). */
    size_t (*act_row_bytes)(lloco_dtype wt, int k, int packed);
    /* Quantizes x[k] as row i of the activation buffer act. */
    void (*quantize_act)(lloco_dtype wt, const float *x, int k, int packed, uint8_t *act, int i);
    /* y[i * ldy + r] = W row r . activation row i, r < nrows, i < m; each
     * output the same bits whatever m (a batch's rows must not depend on
     * each other). Several rows share each weight block they read. */
    void (*mm_rows)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                    const uint8_t *act, int m, float *y, int ldy);
    /* Bytes of one panel of tile_r weight rows (a multiple of 64). */
    size_t (*mm_panel_bytes)(lloco_dtype wt, int k);
    /* Packs weight rows [0, nrows), nrows <= tile_r, into a panel; missing
     * rows are zero. */
    void (*mm_pack)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                    uint8_t *panel);
    /* out[c * tile_r + r] = panel row r . row c of the activation tile at
     * act. */
    void (*mm_tile)(lloco_dtype wt, const uint8_t *panel, int k, const uint8_t *act, float *out);

    /* Float weights (F32/F16/BF16): y[i * ldy + r] = W row r . x row i for
     * r < nrows, i < m. */
    void (*mm_float)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                     const float *x, int m, float *y, int ldy);
    /* The same products for m >= LLOCO_MATMUL_FLOAT_ROWS activation rows
     * (below that mm_float, which reads each weight once without packing,
     * is as fast), weights packed into panels once per call; each output is
     * one fma chain over the elements in order. Neither form's outputs
     * depend on m. */
    void (*mm_float_gemm)(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                          const float *x, int m, float *y, int ldy);

    /* LoRA expand (see lloco_op_lora), also the update of lloco_op_lora_merge:
     * for i < nr and j < nc,
     *   y[rows[i] * ldy + j] += scale * (fma chain over r < rank of
     *                                    t[i * ldt + r] * mat row r [j]),
     * mat (F32/F16/BF16) having rows rb bytes apart; the product by scale
     * and the sum are not fused. Rows' results are independent. */
    void (*lora_expand)(lloco_dtype wt, const uint8_t *mat, size_t rb, int rank, const float *t,
                        int ldt, int nr, int nc, float scale, float *y, const int32_t *rows,
                        int ldy);

    /* Attention of query rows [i0, i0 + nr) x heads [h0, h0 + nh), all of
     * one KV head: their rows of out (see lloco_op_attention), for head_dim
     * a multiple of 16 up to 256. The block's queries share each chunk of
     * K and V it reads. scratch holds ATTN_SCRATCH_FLOATS(nr * nh,
     * p0 + i0 + nr (m if not causal), head_dim) floats. */
    void (*attn)(const attn_args *a, int i0, int nr, int h0, int nh, float *scratch);

    void (*rmsnorm_row)(const float *x, const float *w, int d, float eps, float *y);
    void (*softmax_row)(float *x, int n);
    void (*silu_mul)(const float *gate, const float *up, float *out, int64_t n);
    void (*gelu)(float *x, int64_t n, int approx);
    void (*add)(float *y, const float *x, int64_t n);
    void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n);
} cpu_kernels;

extern const cpu_kernels lloco_cpu_kernels_avx2;
extern const cpu_kernels lloco_cpu_kernels_avx512;

#endif
