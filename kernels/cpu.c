/* cpu: the optimized CPU backend. It picks the widest SIMD kernels the
 * machine runs (cpu_avx512.c, cpu_avx2.c, or the portable C here), splits
 * each op over a persistent thread pool, and keeps scratch memory between
 * calls. Results equal cpu_ref's bit for bit, whatever the thread count.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "kernels/blocks.h"
#include "kernels/cpu_kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* Panels a thread packs at once: their bytes stay in L2 while every
 * activation tile streams past them. */
#define MM_MACRO_PANELS 8
/* Weight rows per decode chunk: keeps chunks on whole cache lines. */
#define MM_ROW_ALIGN 16
/* Queries of an attention block (see attn_job): enough to reuse each K/V
 * chunk many times, few enough that their scores stay in L2. */
#define ATTN_BLOCK_QUERIES 16
/* Elementwise ops smaller than this run on the calling thread: a dispatch
 * costs more than the work. */
#define PARALLEL_MIN_ELEMS 32768

typedef struct {
    lloco_threadpool *pool;
    int n_threads;
    const cpu_kernels *kern; /* NULL: portable code only */
    uint8_t *scratch;
    size_t scratch_size;
} cpu_ctx;

/* ---- ISA ---------------------------------------------------------------- */

#if defined(__x86_64__)
/* F16C straight from CPUID (leaf 1, ECX bit 29): not every compiler's
 * __builtin_cpu_supports knows the name. */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

lloco_cpu_isa lloco_cpu_isa_detect(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    const int avx2 =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        return LLOCO_CPU_ISA_AVX512;
    if (avx2) return LLOCO_CPU_ISA_AVX2;
#endif
    return LLOCO_CPU_ISA_SCALAR;
}

const char *lloco_cpu_isa_name(lloco_cpu_isa isa) {
    switch (isa) {
    case LLOCO_CPU_ISA_SCALAR: return "scalar";
    case LLOCO_CPU_ISA_AVX2: return "avx2";
    case LLOCO_CPU_ISA_AVX512: return "avx512";
    default: return "unknown";
    }
}

static const cpu_kernels *kernels_for(lloco_cpu_isa isa) {
#if defined(__x86_64__)
    if (isa == LLOCO_CPU_ISA_AVX512) return &lloco_cpu_kernels_avx512;
    if (isa == LLOCO_CPU_ISA_AVX2) return &lloco_cpu_kernels_avx2;
#endif
    (void)isa;
    return NULL;
}

/* ---- helpers ------------------------------------------------------------ */

/* Scratch memory shared by the ops of one backend (one op at a time). NULL
 * if it cannot grow; the op then falls back to the reference code, which
 * needs none. */
static void *scratch_get(cpu_ctx *cx, size_t size) {
    if (size <= cx->scratch_size) return cx->scratch;
    size_t want = (size + size / 4 + 63) & ~(size_t)63;
    free(cx->scratch);
    cx->scratch = aligned_alloc(64, want);
    cx->scratch_size = cx->scratch ? want : 0;
    if (!cx->scratch)
        lloco_log(LLOCO_LOG_WARN,
                  "cpu backend: no memory for %zu bytes of scratch, using reference kernels", size);
    return cx->scratch;
}

/* Thread ith's share [*b, *e) of n items, cut on multiples of `align`. */
static void split_range(int64_t n, int64_t align, int ith, int nth, int64_t *b, int64_t *e) {
    const int64_t units = (n + align - 1) / align;
    *b = units * ith / nth * align;
    *e = units * (ith + 1) / nth * align;
    if (*b > n) *b = n;
    if (*e > n) *e = n;
}

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

static int is_int8_type(lloco_dtype t) {
    return t == LLOCO_DTYPE_Q8_0 || t == LLOCO_DTYPE_Q4_0 || t == LLOCO_DTYPE_Q4_1;
}

/* ---- matmul ------------------------------------------------------------- */

typedef struct {
    const cpu_kernels *kern;
    const uint8_t *w;
    lloco_dtype wt;
    int n, k;
    size_t row_bytes;
    const float *x;
    int m;
    float *y;
    int int8;         /* the ISA's integer kernels, rather than the portable path */
    int packed;       /* prefill kernels (panels x tiles) rather than decode */
    uint8_t *act;     /* quantized activations: m rows (padded to a tile) */
    size_t act_bytes; /* per row */
    uint8_t *panels;  /* per thread: MM_MACRO_PANELS * panel_bytes */
    size_t panel_bytes;
    lloco_dtype at; /* portable path: activations as GGML blocks of this type */
} mm_job;

static void mm_quantize_task(void *p, int ith, int nth) {
    mm_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    for (int64_t i = b; i < e; i++) {
        if (j->int8)
            j->kern->quantize_act(j->wt, j->x + i * j->k, j->k, j->packed, j->act, (int)i);
        else
            lloco_quantize_row(j->at, j->x + i * j->k, j->act + i * j->act_bytes, j->k);
    }
}

static void mm_rows_task(void *p, int ith, int nth) {
    mm_job *j = p;
    int64_t b, e;
    split_range(j->n, MM_ROW_ALIGN, ith, nth, &b, &e);
    if (b >= e) return;
    j->kern->mm_rows(j->wt, j->w + b * j->row_bytes, j->row_bytes, (int)(e - b), j->k, j->act,
                     j->m, j->y + b, j->n);
}

static void mm_packed_task(void *p, int ith, int nth) {
    mm_job *j = p;
    const cpu_kernels *kn = j->kern;
    const int R = kn->tile_r, C = kn->tile_c;
    int64_t pb, pe;
    split_range((j->n + R - 1) / R, 1, ith, nth, &pb, &pe);
    uint8_t *panels = j->panels + (size_t)ith * MM_MACRO_PANELS * j->panel_bytes;
    float out[64];
    LLOCO_ASSERT(R * C <= 64);
    for (int64_t p0 = pb; p0 < pe; p0 += MM_MACRO_PANELS) {
        const int np = (int)(pe - p0 < MM_MACRO_PANELS ? pe - p0 : MM_MACRO_PANELS);
        for (int q = 0; q < np; q++) {
            const int64_t r0 = (p0 + q) * R;
            const int rows = (int)(j->n - r0 < R ? j->n - r0 : R);
            kn->mm_pack(j->wt, j->w + r0 * j->row_bytes, j->row_bytes, rows, j->k,
                        panels + q * j->panel_bytes);
        }
        for (int i0 = 0; i0 < j->m; i0 += C) {
            for (int q = 0; q < np; q++) {
                kn->mm_tile(j->wt, panels + q * j->panel_bytes, j->k, j->act + i0 * j->act_bytes,
                            out);
                const int64_t r0 = (p0 + q) * R;
                const int rows = (int)(j->n - r0 < R ? j->n - r0 : R);
                const int cols = j->m - i0 < C ? j->m - i0 : C;
                for (int c = 0; c < cols; c++)
                    for (int r = 0; r < rows; r++)
                        j->y[(size_t)(i0 + c) * j->n + r0 + r] = out[c * R + r];
            }
        }
    }
}

static void mm_portable_task(void *p, int ith, int nth) {
    mm_job *j = p;
    int64_t b, e;
    split_range(j->n, MM_ROW_ALIGN, ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++)
        for (int i = 0; i < j->m; i++)
            j->y[(size_t)i * j->n + r] =
                lloco_ref_vec_dot(j->wt, j->w + r * j->row_bytes, j->act + i * j->act_bytes, j->k);
}

/* Float weights without SIMD: convert a piece of a weight row once, dot it
 * with every activation row. */
static void mm_float_portable(lloco_dtype wt, const uint8_t *w, size_t row_bytes, int nrows, int k,
                              const float *x, int m, float *y, int ldy) {
    float buf[256];
    for (int r = 0; r < nrows; r++) {
        const uint8_t *row = w + (size_t)r * row_bytes;
        for (int i = 0; i < m; i++) y[(size_t)i * ldy + r] = 0.0f;
        for (int e0 = 0; e0 < k; e0 += 256) {
            const int len = k - e0 < 256 ? k - e0 : 256;
            lloco_dequantize_row(wt, row + (size_t)e0 * lloco_dtype_block_bytes(wt), buf, len);
            for (int i = 0; i < m; i++) {
                const float *xi = x + (size_t)i * k + e0;
                float s = 0.0f;
                for (int e = 0; e < len; e++) s += xi[e] * buf[e];
                y[(size_t)i * ldy + r] += s;
            }
        }
    }
}

static void mm_float_task(void *p, int ith, int nth) {
    mm_job *j = p;
    int64_t b, e;
    split_range(j->n, MM_ROW_ALIGN, ith, nth, &b, &e);
    if (b >= e) return;
    if (j->kern)
        (j->m >= LLOCO_MATMUL_FLOAT_ROWS ? j->kern->mm_float_gemm : j->kern->mm_float)(
            j->wt, j->w + b * j->row_bytes, j->row_bytes, (int)(e - b), j->k, j->x, j->m, j->y + b,
            j->n);
    else
        mm_float_portable(j->wt, j->w + b * j->row_bytes, j->row_bytes, (int)(e - b), j->k, j->x,
                          j->m, j->y + b, j->n);
}

static void cpu_matmul(lloco_backend *be, const void *w, lloco_dtype wt, int n, int k,
                       const float *x, int m, float *y) {
    cpu_ctx *cx = be->ctx;
    mm_job j = {.kern = cx->kern,
                .w = w,
                .wt = wt,
                .n = n,
                .k = k,
                .row_bytes = lloco_dtype_row_bytes(wt, k),
                .x = x,
                .m = m,
                .y = y};
    if (lloco_dtype_vec_dot_type(wt) == LLOCO_DTYPE_F32) {
        lloco_threadpool_run(cx->pool, mm_float_task, &j);
        return;
    }
    const cpu_kernels *kn = cx->kern;
    const int int8 = j.int8 = kn && is_int8_type(wt);
    j.packed = int8 && m >= kn->packed_min_m;
    /* Activation rows padded to whole tiles with zero rows (interleaved in
     * the last tile, cleared before the rows are written), so tiles never
     * have a ragged edge. */
    const int m_pad = j.packed ? (m + kn->tile_c - 1) / kn->tile_c * kn->tile_c : m;
    j.at = lloco_dtype_vec_dot_type(wt);
    j.act_bytes = int8 ? kn->act_row_bytes(wt, k, j.packed) : lloco_dtype_row_bytes(j.at, k);
    j.panel_bytes = j.packed ? kn->mm_panel_bytes(wt, k) : 0;
    const size_t act_total = align64((size_t)m_pad * j.act_bytes);
    uint8_t *mem =
        scratch_get(cx, act_total + (size_t)cx->n_threads * MM_MACRO_PANELS * j.panel_bytes);
    if (!mem) {
        lloco_ref_matmul(be, w, wt, n, k, x, m, y);
        return;
    }
    j.act = mem;
    j.panels = mem + act_total;
    if (m_pad > m) memset(j.act + (size_t)(m_pad - kn->tile_c) * j.act_bytes, 0,
                          (size_t)kn->tile_c * j.act_bytes);
    if ((int64_t)m * k < PARALLEL_MIN_ELEMS / 4) /* a few rows: not worth a dispatch */
        mm_quantize_task(&j, 0, 1);
    else
        lloco_threadpool_run(cx->pool, mm_quantize_task, &j);
    lloco_threadpool_run(cx->pool,
                         !int8      ? mm_portable_task
                         : j.packed ? mm_packed_task
                                    : mm_rows_task,
                         &j);
}

/* ---- row-wise ops ------------------------------------------------------- */

typedef struct {
    const cpu_kernels *kern;
    const float *x, *w, *b;
    float *y;
    int m, d;
    float eps;
} rows_job;

static void rmsnorm_task(void *p, int ith, int nth) {
    rows_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    for (int64_t i = b; i < e; i++) {
        const float *xi = j->x + i * j->d;
        float *yi = j->y + i * j->d;
        if (j->kern)
            j->kern->rmsnorm_row(xi, j->w, j->d, j->eps, yi);
        else
            lloco_ref_rmsnorm(NULL, xi, j->w, 1, j->d, j->eps, yi);
    }
}

static void run_rows(cpu_ctx *cx, lloco_task_fn fn, void *job, int64_t elems) {
    if (elems < PARALLEL_MIN_ELEMS)
        fn(job, 0, 1);
    else
        lloco_threadpool_run(cx->pool, fn, job);
}

static void cpu_rmsnorm(lloco_backend *be, const float *x, const float *w, int m, int d, float eps,
                        float *y) {
    cpu_ctx *cx = be->ctx;
    rows_job j = {.kern = cx->kern, .x = x, .w = w, .y = y, .m = m, .d = d, .eps = eps};
    run_rows(cx, rmsnorm_task, &j, (int64_t)m * d);
}

static void layernorm_task(void *p, int ith, int nth) {
    rows_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    if (b < e)
        lloco_ref_layernorm(NULL, j->x + b * j->d, j->w, j->b, (int)(e - b), j->d, j->eps,
                            j->y + b * j->d);
}

static void cpu_layernorm(lloco_backend *be, const float *x, const float *w, const float *b, int m,
                          int d, float eps, float *y) {
    cpu_ctx *cx = be->ctx;
    rows_job j = {.x = x, .w = w, .b = b, .y = y, .m = m, .d = d, .eps = eps};
    run_rows(cx, layernorm_task, &j, (int64_t)m * d);
}

static void softmax_task(void *p, int ith, int nth) {
    rows_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    for (int64_t i = b; i < e; i++) {
        if (j->kern)
            j->kern->softmax_row(j->y + i * j->d, j->d);
        else
            lloco_ref_softmax(NULL, j->y + i * j->d, 1, j->d);
    }
}

static void cpu_softmax(lloco_backend *be, float *x, int m, int n) {
    cpu_ctx *cx = be->ctx;
    rows_job j = {.kern = cx->kern, .y = x, .m = m, .d = n};
    run_rows(cx, softmax_task, &j, (int64_t)m * n);
}

typedef struct {
    float *x;
    int m, n_heads, head_dim, rot_dim;
    const int32_t *pos;
    const lloco_rope_params *rp;
    int neox;
} rope_job;

/* Rows are independent: each thread runs the reference on its rows, which
 * computes a row's cos/sin once for all its heads. */
static void rope_task(void *p, int ith, int nth) {
    rope_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    for (int64_t i = b; i < e; i++)
        lloco_ref_rope_row(j->x + i * j->n_heads * j->head_dim, j->n_heads, j->head_dim,
                           j->rot_dim, j->pos[i], j->rp, j->neox);
}

static void cpu_rope(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                     const int32_t *pos, const lloco_rope_params *rp, int neox) {
    cpu_ctx *cx = be->ctx;
    rope_job j = {x, m, n_heads, head_dim, rot_dim, pos, rp, neox};
    run_rows(cx, rope_task, &j, (int64_t)m * n_heads * head_dim * 8); /* cos/sin are dear */
}

/* ---- elementwise -------------------------------------------------------- */

typedef struct {
    const cpu_kernels *kern;
    const float *a, *b;
    float *out;
    int64_t n;
    int approx;
} ew_job;

/* Elementwise shares are cut on 64 floats so threads never split a line. */
static void silu_mul_task(void *p, int ith, int nth) {
    ew_job *j = p;
    int64_t b, e;
    split_range(j->n, 64, ith, nth, &b, &e);
    if (b >= e) return;
    if (j->kern)
        j->kern->silu_mul(j->a + b, j->b + b, j->out + b, e - b);
    else
        lloco_ref_silu_mul(NULL, j->a + b, j->b + b, j->out + b, e - b);
}

static void cpu_silu_mul(lloco_backend *be, const float *gate, const float *up, float *out,
                         int64_t n) {
    cpu_ctx *cx = be->ctx;
    ew_job j = {.kern = cx->kern, .a = gate, .b = up, .out = out, .n = n};
    run_rows(cx, silu_mul_task, &j, n);
}

static void gelu_task(void *p, int ith, int nth) {
    ew_job *j = p;
    int64_t b, e;
    split_range(j->n, 64, ith, nth, &b, &e);
    if (b >= e) return;
    if (j->kern)
        j->kern->gelu(j->out + b, e - b, j->approx);
    else
        lloco_ref_gelu(NULL, j->out + b, e - b, j->approx);
}

static void cpu_gelu(lloco_backend *be, float *x, int64_t n, int approx) {
    cpu_ctx *cx = be->ctx;
    ew_job j = {.kern = cx->kern, .out = x, .n = n, .approx = approx};
    run_rows(cx, gelu_task, &j, n);
}

static void add_task(void *p, int ith, int nth) {
    ew_job *j = p;
    int64_t b, e;
    split_range(j->n, 64, ith, nth, &b, &e);
    if (b >= e) return;
    if (j->kern)
        j->kern->add(j->out + b, j->a + b, e - b);
    else
        lloco_ref_add(NULL, j->out + b, j->a + b, e - b);
}

static void cpu_add(lloco_backend *be, float *y, const float *x, int64_t n) {
    cpu_ctx *cx = be->ctx;
    ew_job j = {.kern = cx->kern, .a = x, .out = y, .n = n};
    run_rows(cx, add_task, &j, n);
}

/* ---- row movement ------------------------------------------------------- */

typedef struct {
    const cpu_kernels *kern;
    const void *table;
    lloco_dtype t;
    int d;
    const int32_t *ids;
    int m;
    float *out;
    const float *x;
    void *dst;
    int stride;
} move_job;

static void get_rows_task(void *p, int ith, int nth) {
    move_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    const size_t row_bytes = lloco_dtype_row_bytes(j->t, j->d);
    for (int64_t i = b; i < e; i++) {
        const uint8_t *src = (const uint8_t *)j->table + (size_t)j->ids[i] * row_bytes;
        float *o = j->out + i * j->d;
        if (j->t == LLOCO_DTYPE_F16 && j->kern)
            j->kern->f16_to_f32((const uint16_t *)src, o, j->d);
        else
            lloco_dequantize_row(j->t, src, o, j->d);
    }
}

static void cpu_get_rows(lloco_backend *be, const void *table, lloco_dtype t, int d,
                         const int32_t *ids, int m, float *out) {
    cpu_ctx *cx = be->ctx;
    move_job j = {.kern = cx->kern, .table = table, .t = t, .d = d, .ids = ids, .m = m, .out = out};
    run_rows(cx, get_rows_task, &j, (int64_t)m * d * (t == LLOCO_DTYPE_F32 ? 1 : 4));
}

static void store_rows_task(void *p, int ith, int nth) {
    move_job *j = p;
    int64_t b, e;
    split_range(j->m, 1, ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++) {
        const float *src = j->x + r * j->d;
        if (j->t == LLOCO_DTYPE_F32) {
            memcpy((float *)j->dst + r * j->stride, src, (size_t)j->d * sizeof(float));
        } else {
            uint16_t *o = (uint16_t *)j->dst + r * j->stride;
            if (j->kern)
                j->kern->f32_to_f16(src, o, j->d);
            else
                lloco_quantize_row(LLOCO_DTYPE_F16, src, o, j->d);
        }
    }
}

static void cpu_store_rows(lloco_backend *be, const float *x, int m, int d, void *dst,
                           lloco_dtype t, int stride) {
    cpu_ctx *cx = be->ctx;
    move_job j = {.kern = cx->kern, .t = t, .d = d, .m = m, .x = x, .dst = dst, .stride = stride};
    run_rows(cx, store_rows_task, &j, (int64_t)m * d * 4);
}

/* ---- attention ---------------------------------------------------------- */

/* Attention splits into blocks of query rows x heads of one KV head: GGML's
 * dot products and softmax run over whole rows of positions, so a query is
 * not cut further, and the queries of a block share the K and V chunks they
 * read. */
typedef struct {
    const cpu_kernels *kern; /* NULL: the reference's arithmetic, portable */
    attn_args a;
    int rows, heads; /* per block */
    int n_rblocks, n_hblocks;
    atomic_int next;
    float *scratch; /* per thread, scratch_floats each */
    size_t scratch_floats;
} attn_job;

static void attn_task(void *p, int ith, int nth) {
    (void)nth;
    attn_job *j = p;
    const attn_args *a = &j->a;
    const int group = a->n_head / a->n_kv_head;
    for (;;) {
        const int t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (t >= j->n_rblocks * j->n_hblocks) break;
        /* latest rows first: they see the most positions, and should not
         * end up last on one thread */
        const int i0 = (j->n_rblocks - 1 - t / j->n_hblocks) * j->rows;
        const int nr = a->m - i0 < j->rows ? a->m - i0 : j->rows, h0 = t % j->n_hblocks * j->heads;
        if (j->kern) {
            j->kern->attn(a, i0, nr, h0, j->heads, j->scratch + (size_t)ith * j->scratch_floats);
            continue;
        }
        for (int i = i0; i < i0 + nr; i++) {
            for (int h = h0; h < h0 + j->heads; h++) {
                const size_t qo = ((size_t)i * a->n_head + h) * a->head_dim;
                lloco_ref_attention_head(a->q + qo, a->causal ? a->p0 + i + 1 : a->m, a->head_dim,
                                         LLOCO_ATTN_TINY_KQ(a->m, a->head_dim, a->kv_type,
                                                            a->causal),
                                         LLOCO_ATTN_TINY_PV(a->m, a->head_dim), a->k, a->v,
                                         a->kv_type, a->kv_stride,
                                         (size_t)(h / group) * a->head_dim, a->scale, a->out + qo);
            }
        }
    }
}

static void cpu_attention(lloco_backend *be, const float *q, int m, int p0, int n_head,
                          int n_kv_head, int head_dim, const void *k, const void *v,
                          lloco_dtype kv_type, int kv_stride, float scale, int causal,
                          float *out) {
    cpu_ctx *cx = be->ctx;
    const int simd = cx->kern && head_dim % 16 == 0 && head_dim <= 256;
    const int group = n_head / n_kv_head;
    /* The heads of a KV head, and up to ATTN_BLOCK_QUERIES queries, share
     * each chunk of K and V they convert. */
    const int heads = group;
    const int rows = heads < ATTN_BLOCK_QUERIES ? ATTN_BLOCK_QUERIES / heads : 1;
    attn_job j = {.kern = simd ? cx->kern : NULL,
                  .a = {q, m, p0, n_head, n_kv_head, head_dim, k, v, kv_type, kv_stride, scale,
                        causal, out},
                  .rows = rows,
                  .heads = heads,
                  .n_rblocks = (m + rows - 1) / rows,
                  .n_hblocks = n_head / heads,
                  .scratch_floats =
                      simd ? ATTN_SCRATCH_FLOATS(rows * heads, p0 + m, head_dim) : 0};
    if (simd) {
        j.scratch = scratch_get(cx, (size_t)cx->n_threads * j.scratch_floats * sizeof(float));
        if (!j.scratch) j.kern = NULL;
    }
    atomic_init(&j.next, 0);
    /* A short context's work is smaller than a dispatch. */
    const int64_t work = (int64_t)n_head * m * (p0 + m) * head_dim;
    if (work < PARALLEL_MIN_ELEMS)
        attn_task(&j, 0, 1);
    else
        lloco_threadpool_run(cx->pool, attn_task, &j);
}

/* ---- LoRA --------------------------------------------------------------- */

/* A LoRA op splits into tasks of up to LORA_ROWS rows of one adapter group
 * times LORA_RANKS ranks (shrink) or LORA_COLS output columns (expand):
 * small enough to spread a prefill over the threads, large enough that a
 * task reads each A or B row once for many activation rows. */
#define LORA_ROWS 32
#define LORA_RANKS 16
#define LORA_COLS 256
/* LoRA ops with fewer multiply-adds than this, reading fewer bytes of
 * adapter matrices, run on the calling thread: a decode step's update on
 * one adapter (a few microseconds, its matrices in cache) costs less than
 * the two dispatches, one per phase, that threads would need; several
 * adapters in one decode step (a few hundred KiB each from memory) do
 * not. */
#define LORA_PARALLEL_MIN_MACS (1 << 20)
#define LORA_PARALLEL_MIN_BYTES (128 << 10)

/* The rows of one call that share an adapter. */
typedef struct {
    const lloco_lora_mat *mat;
    const int32_t *rows; /* (nr) indices into the op's x and y, increasing */
    int nr;
    const float *x; /* (nr, k): the rows, in x itself when contiguous, else gathered */
    float *t;       /* (nr, rank): x·A^T */
} lora_group;

typedef struct {
    const cpu_kernels *kern;
    int k, n;
    float *y;
    lora_group *g;
    int n_groups;
    int expand;       /* phase: 0 shrink, 1 expand */
    int *ustart;      /* (n_groups + 1): first task of each group in this phase */
    atomic_int next;
} lora_job;

/* Tasks per row block of group g in a phase. */
static int lora_blocks(const lora_job *j, const lora_group *g) {
    return j->expand ? (j->n + LORA_COLS - 1) / LORA_COLS
                     : (g->mat->rank + LORA_RANKS - 1) / LORA_RANKS;
}

static void lora_expand_portable(const lloco_lora_mat *l, const uint8_t *mat, size_t rb,
                                 const float *t, int nr, int c0, int nc, float *y,
                                 const int32_t *rows, int ldy) {
    for (int i = 0; i < nr; i++) {
        float *yi = y + (size_t)rows[i] * ldy;
        for (int c = c0; c < c0 + nc; c++) {
            float d = 0.0f;
            for (int r = 0; r < l->rank; r++) {
                float b;
                lloco_dequantize_row(l->type, mat + (size_t)r * rb + (size_t)c * lloco_dtype_block_bytes(l->type), &b, 1);
                d = fmaf(t[(size_t)i * l->rank + r], b, d);
            }
            yi[c] = yi[c] + l->scale * d;
        }
    }
}

static void lora_task(void *p, int ith, int nth) {
    (void)ith, (void)nth;
    lora_job *j = p;
    const int total = j->ustart[j->n_groups];
    for (int gi = 0;;) {
        const int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= total) break;
        while (j->ustart[gi + 1] <= u) gi++; /* tasks are taken in increasing order */
        const lora_group *g = &j->g[gi];
        const lloco_lora_mat *l = g->mat;
        const int per_block = lora_blocks(j, g), local = u - j->ustart[gi];
        const int i0 = local / per_block * LORA_ROWS, b = local % per_block;
        const int ni = g->nr - i0 < LORA_ROWS ? g->nr - i0 : LORA_ROWS;
        const size_t es = lloco_dtype_block_bytes(l->type);
        if (!j->expand) {
            const int r0 = b * LORA_RANKS, nr = l->rank - r0 < LORA_RANKS ? l->rank - r0 : LORA_RANKS;
            const size_t arb = (size_t)j->k * es;
            const uint8_t *a = (const uint8_t *)l->a + (size_t)r0 * arb;
            const float *x = g->x + (size_t)i0 * j->k;
            float *t = g->t + (size_t)i0 * l->rank + r0;
            if (j->kern)
                j->kern->mm_float(l->type, a, arb, nr, j->k, x, ni, t, l->rank);
            else
                mm_float_portable(l->type, a, arb, nr, j->k, x, ni, t, l->rank);
        } else {
            const int c0 = b * LORA_COLS, nc = j->n - c0 < LORA_COLS ? j->n - c0 : LORA_COLS;
            const size_t brb = (size_t)j->n * es;
            const float *t = g->t + (size_t)i0 * l->rank;
            if (j->kern)
                j->kern->lora_expand(l->type, (const uint8_t *)l->bt + (size_t)c0 * es, brb, l->rank,
                                     t, l->rank, ni, nc, l->scale, j->y + c0, g->rows + i0, j->n);
            else
                lora_expand_portable(l, l->bt, brb, t, ni, c0, nc, j->y, g->rows + i0, j->n);
        }
    }
}

static void lora_run_phase(cpu_ctx *cx, lora_job *j, int expand, int64_t work, size_t bytes) {
    j->expand = expand;
    j->ustart[0] = 0;
    for (int g = 0; g < j->n_groups; g++)
        j->ustart[g + 1] = j->ustart[g] +
                           (j->g[g].nr + LORA_ROWS - 1) / LORA_ROWS * lora_blocks(j, &j->g[g]);
    atomic_init(&j->next, 0);
    if (work < LORA_PARALLEL_MIN_MACS && bytes < LORA_PARALLEL_MIN_BYTES)
        lora_task(j, 0, 1);
    else
        lloco_threadpool_run(cx->pool, lora_task, j);
}

static void cpu_lora(lloco_backend *be, const float *x, int m, int k, int n,
                     const lloco_lora_mat *const *per_row, float *y) {
    cpu_ctx *cx = be->ctx;
    int max_rank = 0;
    for (int i = 0; i < m; i++)
        if (per_row[i] && per_row[i]->rank > max_rank) max_rank = per_row[i]->rank;
    if (!max_rank) return;
    /* scratch: groups, group of each row, rows by group, task starts, then
     * the gathered rows and x·A^T of each group */
    const size_t groups_b = align64((size_t)m * sizeof(lora_group));
    const size_t ints_b = align64(sizeof(int32_t) * (3 * (size_t)m + 1));
    const size_t xg_b = align64(sizeof(float) * (size_t)m * k);
    uint8_t *mem = scratch_get(cx, groups_b + ints_b + xg_b + sizeof(float) * (size_t)m * max_rank);
    if (!mem) {
        lloco_ref_lora(be, x, m, k, n, per_row, y);
        return;
    }
    lora_group *gs = (lora_group *)mem;
    int32_t *gid = (int32_t *)(mem + groups_b), *rows = gid + m;
    float *xg = (float *)(mem + groups_b + ints_b), *tbuf = (float *)(mem + groups_b + ints_b + xg_b);
    lora_job j = {.kern = cx->kern, .k = k, .n = n, .y = y, .g = gs, .ustart = rows + m};
    /* Group rows by adapter pointer, in order of first use. Neighbouring
     * rows usually belong to one sequence, so the last group is tried first. */
    int last = -1;
    for (int i = 0; i < m; i++) {
        gid[i] = -1;
        if (!per_row[i]) continue;
        int g = last >= 0 && gs[last].mat == per_row[i] ? last : -1;
        for (int q = 0; g < 0 && q < j.n_groups; q++)
            if (gs[q].mat == per_row[i]) g = q;
        if (g < 0) {
            g = j.n_groups++;
            gs[g] = (lora_group){.mat = per_row[i]};
        }
        gs[g].nr++;
        gid[i] = last = g;
    }
    int64_t work = 0;
    size_t off = 0, toff = 0, bytes = 0;
    for (int g = 0; g < j.n_groups; g++) {
        gs[g].rows = rows + off;
        gs[g].t = tbuf + toff;
        off += (size_t)gs[g].nr;
        toff += (size_t)gs[g].nr * gs[g].mat->rank;
        work += (int64_t)gs[g].nr * gs[g].mat->rank * (k + n);
        bytes += (size_t)gs[g].mat->rank * (size_t)(k + n) * lloco_dtype_block_bytes(gs[g].mat->type);
        gs[g].nr = 0;
    }
    for (int i = 0; i < m; i++)
        if (gid[i] >= 0) {
            lora_group *g = &gs[gid[i]];
            ((int32_t *)g->rows)[g->nr++] = i;
        }
    /* A group of consecutive rows (one sequence's prefill) is read in place. */
    for (int g = 0; g < j.n_groups; g++) {
        const int32_t *r = gs[g].rows;
        if (r[gs[g].nr - 1] - r[0] == gs[g].nr - 1) {
            gs[g].x = x + (size_t)r[0] * k;
            continue;
        }
        float *dst = xg + (size_t)(r - rows) * k;
        for (int i = 0; i < gs[g].nr; i++)
            memcpy(dst + (size_t)i * k, x + (size_t)r[i] * k, sizeof(float) * (size_t)k);
        gs[g].x = dst;
    }
    lora_run_phase(cx, &j, 0, work, bytes);
    lora_run_phase(cx, &j, 1, work, bytes);
}

typedef struct {
    const cpu_kernels *kern;
    const uint8_t *w;
    lloco_dtype wt, dst_type;
    const lloco_lora_mat *l;
    uint8_t *dst;
    float *scratch; /* per thread: a row (k) and a column of B (rank) */
} merge_job;

static void lora_merge_task(void *p, int ith, int nth) {
    merge_job *j = p;
    const lloco_lora_mat *l = j->l;
    int64_t b, e;
    split_range(l->n, 1, ith, nth, &b, &e);
    float *row = j->scratch + (size_t)ith * (size_t)(l->k + l->rank), *bcol = row + l->k;
    const size_t rb = lloco_dtype_row_bytes(j->wt, l->k), drb = lloco_dtype_row_bytes(j->dst_type, l->k);
    const size_t es = lloco_dtype_block_bytes(l->type), brb = (size_t)l->n * es;
    const int32_t zero = 0;
    for (int64_t r = b; r < e; r++) {
        const uint8_t *src = j->w + (size_t)r * rb;
        uint8_t *out = j->dst + (size_t)r * drb;
        if (j->wt == LLOCO_DTYPE_F16 && j->kern)
            j->kern->f16_to_f32((const uint16_t *)src, row, l->k);
        else
            lloco_dequantize_row(j->wt, src, row, l->k);
        if (!j->kern) {
            lloco_ref_lora_merge_add(l, (int)r, 0, l->k, row);
        } else {
            /* the update of row r is the expand step of one row whose t is
             * column r of B, over the rows of A */
            for (int q = 0; q < l->rank; q++)
                lloco_dequantize_row(l->type, (const uint8_t *)l->bt + (size_t)q * brb + (size_t)r * es,
                                     &bcol[q], 1);
            j->kern->lora_expand(l->type, l->a, (size_t)l->k * es, l->rank, bcol, l->rank, 1, l->k,
                                 l->scale, row, &zero, 0);
        }
        if (j->dst_type == LLOCO_DTYPE_F16 && j->kern)
            j->kern->f32_to_f16(row, (uint16_t *)out, l->k);
        else
            lloco_quantize_row(j->dst_type, row, out, l->k);
    }
}

static void cpu_lora_merge(lloco_backend *be, const void *w, lloco_dtype wt, const lloco_lora_mat *l,
                           void *dst, lloco_dtype dst_type) {
    cpu_ctx *cx = be->ctx;
    float *mem = scratch_get(cx, sizeof(float) * (size_t)cx->n_threads * (size_t)(l->k + l->rank));
    if (!mem) {
        lloco_ref_lora_merge(be, w, wt, l, dst, dst_type);
        return;
    }
    merge_job j = {cx->kern, w, wt, dst_type, l, dst, mem};
    lloco_threadpool_run(cx->pool, lora_merge_task, &j);
}

/* ---- the backend -------------------------------------------------------- */

static void cpu_free(lloco_backend *be) {
    cpu_ctx *cx = be->ctx;
    if (!cx) return;
    lloco_threadpool_free(cx->pool);
    free(cx->scratch);
    free(cx);
}

static const lloco_backend_i cpu_iface = {
    .free = cpu_free,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .rope = cpu_rope,
    .softmax = cpu_softmax,
    .silu_mul = cpu_silu_mul,
    .gelu = cpu_gelu,
    .add = cpu_add,
    .get_rows = cpu_get_rows,
    .attention = cpu_attention,
    .store_rows = cpu_store_rows,
    .lora = cpu_lora,
    .lora_merge = cpu_lora_merge,
};

int lloco_backend_init_cpu(lloco_backend *be, int n_threads, lloco_cpu_isa isa) {
    cpu_ctx *cx = calloc(1, sizeof *cx);
    if (!cx) return lloco_error(LLOCO_ERR_NOMEM, "cpu backend: out of memory");
    int rc = lloco_threadpool_create(n_threads, &cx->pool);
    if (rc != 0) {
        free(cx);
        return rc;
    }
    cx->n_threads = n_threads;
    cx->kern = kernels_for(isa);
    be->iface = &cpu_iface;
    be->name = "cpu";
    be->n_threads = n_threads;
    be->ctx = cx;
    static const char *features[LLOCO_CPU_ISA_COUNT] = {
        [LLOCO_CPU_ISA_SCALAR] = "portable C",
        [LLOCO_CPU_ISA_AVX2] = "avx2 fma f16c",
        [LLOCO_CPU_ISA_AVX512] = "avx512 vnni f16c",
    };
    snprintf(be->describe, sizeof be->describe, "%s, %d thread%s", features[isa], n_threads,
             n_threads == 1 ? "" : "s");
    return 0;
}
