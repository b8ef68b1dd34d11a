/* backend_impl: the private side of a backend handle. Each backend fills in
 * a table of op functions (ggml_backend_i style) and backend.c forwards the
 * public lloco_op_* calls to it after checking arguments. Only kernels/, its
 * tests and its benchmark include this header.
 */
#ifndef LLOCO_KERNELS_BACKEND_IMPL_H
#define LLOCO_KERNELS_BACKEND_IMPL_H

#include "kernels/kernels.h"

/* One entry per public op, same arguments (see kernels.h). Every entry is
 * required; a backend without a fast version of an op points the entry at
 * the lloco_ref_* twin. Ops are called with m, n, k > 0. */
typedef struct lloco_backend_i {
    void (*free)(lloco_backend *be); /* releases be->ctx; backend.c frees be */
    void (*matmul)(lloco_backend *be, const void *w, lloco_dtype wt, int n, int k, const float *x,
                   int m, float *y);
    void (*rmsnorm)(lloco_backend *be, const float *x, const float *w, int m, int d, float eps,
                    float *y);
    void (*layernorm)(lloco_backend *be, const float *x, const float *w, const float *b, int m,
                      int d, float eps, float *y);
    void (*rope)(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                 const int32_t *pos, const lloco_rope_params *rp, int neox);
    void (*softmax)(lloco_backend *be, float *x, int m, int n);
    void (*silu_mul)(lloco_backend *be, const float *gate, const float *up, float *out, int64_t n);
    void (*gelu)(lloco_backend *be, float *x, int64_t n, int approx);
    void (*add)(lloco_backend *be, float *y, const float *x, int64_t n);
    void (*get_rows)(lloco_backend *be, const void *table, lloco_dtype t, int d, const int32_t *ids,
                     int m, float *out);
    /* causal 0: lloco_op_attention_full (p0 0, n_kv_head n_head, F32) */
    void (*attention)(lloco_backend *be, const float *q, int m, int p0, int n_head, int n_kv_head,
                      int head_dim, const void *k, const void *v, lloco_dtype kv_type,
                      int kv_stride, float scale, int causal, float *out);
    void (*store_rows)(lloco_backend *be, const float *x, int m, int d, void *dst, lloco_dtype t,
                       int stride);
    void (*lora)(lloco_backend *be, const float *x, int m, int k, int n,
                 const lloco_lora_mat *const *per_row, float *y);
    void (*lora_merge)(lloco_backend *be, const void *w, lloco_dtype wt, const lloco_lora_mat *l,
                       void *dst, lloco_dtype dst_type);
} lloco_backend_i;

/* A backend is used by one thread at a time: ops share its scratch memory
 * and thread pool. */
struct lloco_backend {
    const lloco_backend_i *iface;
    lloco_backend_kind kind;
    const char *name;
    char describe[128];
    int n_threads;
    void *ctx; /* backend-private state, owned by the backend */
};

/* SIMD levels of the CPU backend, lowest first. */
typedef enum {
    LLOCO_CPU_ISA_SCALAR = 0, /* portable C, still threaded */
    LLOCO_CPU_ISA_AVX2,       /* AVX2 + FMA + F16C */
    LLOCO_CPU_ISA_AVX512,     /* AVX512 F/BW/VL + VNNI (+ F16C, FMA) */
    LLOCO_CPU_ISA_COUNT
} lloco_cpu_isa;

/* Fill in a zeroed backend. n_threads >= 1. */
int lloco_backend_init_cpu_ref(lloco_backend *be);
int lloco_backend_init_cpu(lloco_backend *be, int n_threads, lloco_cpu_isa isa);

/* The best ISA this machine runs, and its name ("scalar", "avx2", "avx512"). */
lloco_cpu_isa lloco_cpu_isa_detect(void);
const char *lloco_cpu_isa_name(lloco_cpu_isa isa);

/* A CPU backend pinned to a given ISA (at most lloco_cpu_isa_detect()), so
 * tests and benchmarks can exercise every code path on one machine.
 * LLOCO_ERR_UNSUPPORTED if the machine lacks it. */
int lloco_backend_create_cpu_isa(int n_threads, lloco_cpu_isa isa, lloco_backend **out);

/* The reference ops (cpu_ref.c): single-threaded, plain C, no allocation.
 * They ignore `be` and are the fallback of every other backend. */
/* Dot of one quantized weight row with one row of activations already in
 * lloco_dtype_vec_dot_type(wt), summed block by block as lloco_ref_matmul. */
float lloco_ref_vec_dot(lloco_dtype wt, const void *w_row, const void *act_row, int k);
void lloco_ref_matmul(lloco_backend *be, const void *w, lloco_dtype wt, int n, int k,
                      const float *x, int m, float *y);
void lloco_ref_rmsnorm(lloco_backend *be, const float *x, const float *w, int m, int d, float eps,
                       float *y);
void lloco_ref_layernorm(lloco_backend *be, const float *x, const float *w, const float *b, int m,
                         int d, float eps, float *y);
void lloco_ref_rope(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                    const int32_t *pos, const lloco_rope_params *rp, int neox);
/* lloco_ref_rope on one row (n_heads * head_dim values at position pos). */
void lloco_ref_rope_row(float *x, int n_heads, int head_dim, int rot_dim, int32_t pos,
                        const lloco_rope_params *rp, int neox);
void lloco_ref_softmax(lloco_backend *be, float *x, int m, int n);
void lloco_ref_silu_mul(lloco_backend *be, const float *gate, const float *up, float *out,
                        int64_t n);
void lloco_ref_gelu(lloco_backend *be, float *x, int64_t n, int approx);
/* lloco_gelu's constants: 1/sqrt(2), p, a1..a5, -2 sqrt(2/pi). */
extern const float lloco_gelu_k[8];
void lloco_ref_add(lloco_backend *be, float *y, const float *x, int64_t n);
void lloco_ref_get_rows(lloco_backend *be, const void *table, lloco_dtype t, int d,
                        const int32_t *ids, int m, float *out);
void lloco_ref_attention(lloco_backend *be, const float *q, int m, int p0, int n_head,
                         int n_kv_head, int head_dim, const void *k, const void *v,
                         lloco_dtype kv_type, int kv_stride, float scale, int causal, float *out);
/* Attention of one query head (head_dim values) over positions [0, n_pos)
 * of the KV head at offset head_off of each cache row, into out[head_dim];
 * tiny_kq / tiny_pv select tinyBLAS's order for the score and output dot
 * products (see lloco_op_attention), as these macros decide for an op of m
 * query rows. (GGML hands the scores to tinyBLAS only after converting q to
 * the cache type, which it skips for F32.) Bidirectional attention
 * (causal 0) always takes the 16 lanes for its scores. */
#define LLOCO_ATTN_TINY_KQ(m, head_dim, kv_type, causal) \
    (!(causal) || ((m) > 1 && (head_dim) % 16 == 0 && (kv_type) == LLOCO_DTYPE_F16))
#define LLOCO_ATTN_TINY_PV(m, head_dim) ((m) > 1 && (head_dim) % 4 == 0)
void lloco_ref_attention_head(const float *q, int n_pos, int head_dim, int tiny_kq, int tiny_pv,
                              const void *k, const void *v, lloco_dtype kv_type, int kv_stride,
                              size_t head_off, float scale, float *out);
void lloco_ref_store_rows(lloco_backend *be, const float *x, int m, int d, void *dst, lloco_dtype t,
                          int stride);
void lloco_ref_lora(lloco_backend *be, const float *x, int m, int k, int n,
                    const lloco_lora_mat *const *per_row, float *y);
void lloco_ref_lora_merge(lloco_backend *be, const void *w, lloco_dtype wt,
                          const lloco_lora_mat *l, void *dst, lloco_dtype dst_type);
/* The update of one row in lloco_ref_lora_merge: row[c] += scale * d[e0 + c]
 * for c < ne, weight row j; row[] holds columns e0..e0+ne-1 of that row of
 * the base as f32. */
void lloco_ref_lora_merge_add(const lloco_lora_mat *l, int j, int e0, int ne, float *row);

#endif
