/* kernels: math on raw buffers behind a backend handle. Every op has a plain
 * reference implementation (the "cpu-ref" backend, single-threaded, written
 * for clarity) and optimized twins ("cpu": SIMD picked at run time plus a
 * persistent thread pool; "cuda" when built). Nothing here knows about
 * models, files or requests.
 *
 * Conventions: matrices are row-major. A weight matrix W of n rows and k
 * columns is stored as n rows of k elements in its dtype (GGUF ne0 = k,
 * ne1 = n; HF [out_features, in_features]). Activations are f32.
 */
#ifndef LLOCO_KERNELS_H
#define LLOCO_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ---- element types ---------------------------------------------------- */

/* Quantized formats are bit-compatible with GGML's blocks of the same name.
 * Q8_1 and Q8_K are activation formats used inside matmul (the quantized
 * weight types multiply against activations quantized to them, as GGML
 * does), but they have public quantize/dequantize routines too. */
typedef enum {
    LLOCO_DTYPE_F32 = 0,
    LLOCO_DTYPE_F16,
    LLOCO_DTYPE_BF16,
    LLOCO_DTYPE_Q8_0,
    LLOCO_DTYPE_Q4_0,
    LLOCO_DTYPE_Q4_1,
    LLOCO_DTYPE_Q4_K,
    LLOCO_DTYPE_Q6_K,
    LLOCO_DTYPE_Q8_1,
    LLOCO_DTYPE_Q8_K,
    LLOCO_DTYPE_COUNT
} lloco_dtype;

const char *lloco_dtype_name(lloco_dtype t);
/* Elements per block (1 for float types, 32 or 256 for quantized ones). */
int lloco_dtype_block_elems(lloco_dtype t);
/* Bytes per block. */
size_t lloco_dtype_block_bytes(lloco_dtype t);
/* Bytes of a row of n elements; 0 if n is not a multiple of the block. */
size_t lloco_dtype_row_bytes(lloco_dtype t, int64_t n);
/* Activation format a weight dtype's matmul quantizes x into (F32 for the
 * float types, Q8_0 for Q8_0/Q4_0, Q8_1 for Q4_1, Q8_K for K-quants). */
lloco_dtype lloco_dtype_vec_dot_type(lloco_dtype t);

float lloco_fp16_to_fp32(uint16_t h);
uint16_t lloco_fp32_to_fp16(float f); /* round to nearest even */
float lloco_bf16_to_fp32(uint16_t h);
uint16_t lloco_fp32_to_bf16(float f); /* round to nearest even */

/* Reference conversions of one row of n elements (n a multiple of the
 * block). quantize supports F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q8_1, Q8_K
 * (GGML's *_ref rounding); dequantize supports every dtype. */
int lloco_quantize_row(lloco_dtype t, const float *x, void *dst, int64_t n);
int lloco_dequantize_row(lloco_dtype t, const void *src, float *y, int64_t n);

/* ---- thread pool -------------------------------------------------------- */

typedef struct lloco_threadpool lloco_threadpool;
typedef void (*lloco_task_fn)(void *ctx, int ith, int nth);

/* n_threads >= 1; the caller's thread is worker 0, so n_threads-1 threads
 * are started and stay alive (spinning briefly, then sleeping) until free. */
int lloco_threadpool_create(int n_threads, lloco_threadpool **out);
void lloco_threadpool_free(lloco_threadpool *tp);
int lloco_threadpool_size(const lloco_threadpool *tp);
/* Runs fn(ctx, ith, nth) for ith = 0..nth-1 on the pool's threads and
 * returns when all have returned. Not reentrant. */
void lloco_threadpool_run(lloco_threadpool *tp, lloco_task_fn fn, void *ctx);

/* ---- backends ----------------------------------------------------------- */

typedef enum {
    LLOCO_BACKEND_CPU_REF = 0, /* plain C, one thread: the reference */
    LLOCO_BACKEND_CPU,         /* SIMD (runtime-detected) + thread pool */
    LLOCO_BACKEND_CUDA,        /* cuBLAS + custom kernels, when built */
} lloco_backend_kind;

typedef struct lloco_backend lloco_backend;

/* n_threads <= 0 means one per online CPU. LLOCO_ERR_UNSUPPORTED if the
 * kind was not built or has no device. */
int lloco_backend_create(lloco_backend_kind kind, int n_threads, lloco_backend **out);
void lloco_backend_free(lloco_backend *be);
const char *lloco_backend_name(const lloco_backend *be);
/* Human-readable features, e.g. "avx512 vnni f16c, 2 threads". */
const char *lloco_backend_describe(const lloco_backend *be);
int lloco_backend_n_threads(const lloco_backend *be);

/* All buffers passed to ops are host memory owned by the caller; an op reads
 * its inputs and writes its outputs before returning. */

/* y[m][n] = x[m][k] · W[n][k]^T. W in dtype wt (any dtype but Q8_1/Q8_K),
 * k a multiple of wt's block. For quantized wt, x is first quantized to
 * lloco_dtype_vec_dot_type(wt) and rows are dotted in integers, as GGML
 * does. For Q8_0, Q4_0 and Q4_1 every output is the float arithmetic of
 * GGML's x86 vec_dot (which llama.cpp uses for every row count, and which
 * its tinyBLAS_Q0 repeats), so results are bit-identical to llama.cpp's:
 * eight lanes, lane j of block b holding the exact integer dot of elements
 * 4j..4j+3; acc[j] = fma(d_w * d_x, lane, acc[j]) over the blocks in order;
 * y = ((acc0+acc4) + (acc2+acc6)) + ((acc1+acc5) + (acc3+acc7)), plus for
 * Q4_1 the sum, fma-chained in block order, of m_w * s_x. The result does
 * not depend on m, the backend or its thread count. For float wt the dot
 * products run in f32, in an order that depends on the backend and on
 * whether m < LLOCO_MATMUL_FLOAT_ROWS, but not otherwise on m or on the
 * thread count. */
#define LLOCO_MATMUL_FLOAT_ROWS 16
void lloco_op_matmul(lloco_backend *be, const void *w, lloco_dtype wt, int n, int k,
                     const float *x, int m, float *y);

/* y[m][d] = x / rms(x) * w, rms over each row: sqrt(mean(x^2) + eps),
 * computed as GGML's fused RMS_NORM + MUL: the squares rounded to float and
 * summed in double in order, mean = (float)(sum / d), scale = 1 / sqrtf(mean
 * + eps), y = (x * scale) * w. y may alias x. */
void lloco_op_rmsnorm(lloco_backend *be, const float *x, const float *w, int m, int d,
                      float eps, float *y);
/* y = (x - mean) / sqrt(var + eps) * w + b (b may be NULL). y may alias x. */
void lloco_op_layernorm(lloco_backend *be, const float *x, const float *w, const float *b,
                        int m, int d, float eps, float *y);

/* Rotary embedding angles, as GGML's ROPE op builds them. For each row,
 * theta starts at (float)pos and pair j (0 <= j < rot_dim/2) uses
 *   angle = freq_scale * (freq_factors ? theta / freq_factors[j] : theta),
 *   cos = cosf(angle) * mscale, sin = sinf(angle) * mscale,
 * then theta *= theta_scale before the next pair. theta_scale is
 * powf(base, -2.0f / rot_dim); freq_scale is 1 / (linear scaling factor);
 * mscale is 1 except for YaRN. freq_factors ([rot_dim/2], or NULL) is
 * borrowed for the call. */
typedef struct {
    float theta_scale;
    float freq_scale;
    const float *freq_factors;
    float mscale;
} lloco_rope_params;

/* In-place rotary embedding of x[m][n_heads * head_dim]. Row i is at
 * position pos[i]. neox=0: pairs are (2j, 2j+1) (GGML "normal"); neox=1:
 * pairs are (j, j + rot_dim/2) (HF rotate_half). Dimensions at or beyond
 * rot_dim are left alone. Each pair (x0, x1) becomes
 * (fma(x0, cos, -(x1 * sin)), fma(x0, sin, x1 * cos)), except, in normal
 * mode, the last (rot_dim/2) % 4 pairs, which GGML's vectorized loop leaves
 * to plain (x0 * cos - x1 * sin, x0 * sin + x1 * cos). */
void lloco_op_rope(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                   const int32_t *pos, const lloco_rope_params *rp, int neox);

/* In-place softmax of each row of x[m][n], as GGML's SOFT_MAX: e = exp(x -
 * max) by GGML's vectorized expf (lloco_expf_ggml) for each whole group of
 * 16 values and libm expf for the rest; sum = each group's float sum by
 * the lane tree of _mm512_reduce_add_ps (below), then the remaining values,
 * all added in double in order; x = e * (float)(1 / sum).
 * The lane tree of 16 values v: t[i] = v[i] + v[i+8], u[i] = t[i] + t[i+4],
 * result (u[0] + u[2]) + (u[1] + u[3]). */
void lloco_op_softmax(lloco_backend *be, float *x, int m, int n);

/* GGML's vectorized expf (ggml_v_expf, AVX512 form) on one value: a
 * degree-5 polynomial on x - n ln2 with n = round(x / ln2), scaled by 2^n;
 * 0 or +inf when |n| > 192. Within 2 ulp of expf, but not equal to it: the
 * ops that follow GGML's exp use this. */
float lloco_expf_ggml(float x);

/* GELU of one value, the arithmetic every backend's lloco_op_gelu follows
 * lane for lane (so that vectors and the reference agree bit for bit):
 *  - erf form, x * Phi(x): with z = |x| / sqrt(2), e = erfc(z) by Abramowitz
 *    & Stegun 7.1.26 (t = 1 / (1 + p z), e = t P(t) exp(-z^2), |error| <=
 *    1.5e-7, exp by lloco_expf_ggml), x * (1 - e/2) for x >= 0, else
 *    x * (e/2): within 5e-7 of the exact GELU everywhere;
 *  - tanh form: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi)
 *    (x + 0.044715 x^3), exp by lloco_expf_ggml. */
float lloco_gelu(float x, int approx);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + e) with e =
 * lloco_expf_ggml(0 - g): GGML's SWIGLU on rows whose length is a multiple
 * of 16 (the vectorized part, which covers every element then). out may
 * alias gate or up. */
void lloco_op_silu_mul(lloco_backend *be, const float *gate, const float *up, float *out,
                       int64_t n);
/* In-place GELU (tanh approximation when approx, erf otherwise), as
 * lloco_gelu_row computes it. */
void lloco_op_gelu(lloco_backend *be, float *x, int64_t n, int approx);
/* y[i] += x[i]. */
void lloco_op_add(lloco_backend *be, float *y, const float *x, int64_t n);

/* out[i][:] = row ids[i] of table[n_rows][d] (dtype t) as f32. The caller
 * guarantees 0 <= ids[i] < n_rows. */
void lloco_op_get_rows(lloco_backend *be, const void *table, lloco_dtype t, int d,
                       const int32_t *ids, int m, float *out);

/* Causal attention of m new query rows against one sequence's KV cache.
 *   q    [m][n_head * head_dim]            query row i is at position p0 + i
 *   k, v [n_kv][kv_stride] in kv_type (F32 or F16); head g of position p is
 *        at k + p*kv_stride + g*head_dim (in elements); n_kv >= p0 + m
 *   out  [m][n_head * head_dim]
 * Query head h uses KV head h / (n_head / n_kv_head) (GQA). Row i attends to
 * positions 0..p0+i. The arithmetic is llama.cpp's non-flash path (KQ =
 * mul_mat(K, Q), SOFT_MAX with scale and causal mask, KQV = mul_mat(V^T,
 * KQ)) on a cache padded with masked positions to a multiple of 256, bit
 * for bit:
 *  - with an F16 cache, q and the probabilities are rounded to f16 before
 *    their dot products (GGML converts the second matmul operand to the
 *    cache type); with F32 nothing is rounded;
 *  - a dot product of length L (head_dim for scores, the padded positions
 *    for outputs) runs, when m == 1 (GGML's vec_dot), in four accumulators
 *    of 16 lanes over steps of 64 (element e in accumulator (e/16)%4, lane
 *    e%16, fma in order), reduced as ((a0+a2)+(a1+a3)) then lane tree as
 *    _mm512_reduce_add_ps, the L%64 leftovers added after it (in double for
 *    F16, in float for F32); when m > 1 and L%16 == 0 and head_dim%4 == 0
 *    (tinyBLAS) in one accumulator of 16 lanes (element e in lane e%16),
 *    then the lane tree, except for F32 scores; otherwise as for m == 1;
 *  - scores are multiplied by `scale` and softmaxed as lloco_op_softmax with
 *    every position past the causal limit (and up to the padded length)
 *    masked to zero, in groups of 16 from position 0. */
void lloco_op_attention(lloco_backend *be, const float *q, int m, int p0, int n_head,
                        int n_kv_head, int head_dim, const void *k, const void *v,
                        lloco_dtype kv_type, int kv_stride, float scale, float *out);

/* Bidirectional (encoder) attention of m rows over themselves: row i
 * attends to all m positions, nothing masked.
 *   q    [m][n_head * head_dim]
 *   k, v [m][kv_stride] (f32); head h of row p at + p*kv_stride + h*head_dim
 *   out  [m][n_head * head_dim]
 * The arithmetic is lloco_op_attention's with an F32 cache and every
 * position visible, except that the score dot products always run in one
 * accumulator of 16 lanes (element e in lane e%16) reduced by the lane
 * tree. */
void lloco_op_attention_full(lloco_backend *be, const float *q, int m, int n_head, int head_dim,
                             const float *k, const float *v, int kv_stride, float scale,
                             float *out);

/* Stores x[m][d] (f32) into rows dst + r*stride.. of a cache of dtype t
 * (F32 or F16), for r = 0..m-1. stride is in elements. */
void lloco_op_store_rows(lloco_backend *be, const float *x, int m, int d, void *dst,
                         lloco_dtype t, int stride);

/* ---- LoRA --------------------------------------------------------------- */

/* The low-rank update of one projection y = x·W^T (n outputs, k inputs):
 * y += scale · (x·A^T)·B^T. B is stored transposed so that the expand step
 * (rank -> n) reads contiguous rows, as the shrink step (k -> rank) does.
 * The pointers are borrowed: they must stay valid while an op reads them. */
typedef struct {
    const void *a;    /* (rank, k): PEFT's lora_A */
    const void *bt;   /* (rank, n): PEFT's lora_B, which is (n, rank), transposed */
    lloco_dtype type; /* F32, F16 or BF16, both matrices */
    int rank, k, n;
    float scale;      /* lora_alpha / rank, or lora_alpha / sqrt(rank) (rsLoRA) */
} lloco_lora_mat;

/* Batched LoRA with a different adapter per row (BGMV): for each row i of
 * x[m][k] whose per_row[i] is not NULL (its k and n must equal these),
 *   t[r]    = x_i · A row r           (r < rank; a dot product in any order)
 *   d[j]    = fma chain over r = 0..rank-1 of t[r] * bt[r][j], from 0
 *   y_i[j] += scale * d[j]            (a product, then a sum: not fused)
 * Rows whose per_row entries are the same pointer are computed together, so
 * each A and B is read once per call however many rows use it; a row's
 * result does not depend on which other rows share the call. Rows with NULL
 * are left alone. */
void lloco_op_lora(lloco_backend *be, const float *x, int m, int k, int n,
                   const lloco_lora_mat *const *per_row, float *y);

/* Merges one LoRA pair into a copy of its weight: for each row j of
 * w[n][k] (dtype wt, any dtype lloco_dequantize_row reads),
 *   row = dequantize(w_j);  d[e] = fma chain over r of bt[r][j] * A[r][e];
 *   row[e] = row[e] + scale * d[e]  (product, then sum);
 * and the row is written to dst in dst_type, which lloco_quantize_row must
 * support (F32, F16, BF16, Q8_0, Q4_0, Q4_1) with GGML's reference rounding.
 * Every backend gives the same bits. n = l->n, k = l->k; dst may be w when
 * dst_type == wt. */
void lloco_op_lora_merge(lloco_backend *be, const void *w, lloco_dtype wt, const lloco_lora_mat *l,
                         void *dst, lloco_dtype dst_type);

#endif
