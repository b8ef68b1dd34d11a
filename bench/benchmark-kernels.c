/* benchmark-kernels: matmul, attention and LoRA speed of the CPU backends on
 * the default model's shapes (SmolLM2-135M: d_model 576, d_ff 1536, KV dim
 * 192, 49152-row Q8_0 output head). Checks each result against cpu-ref
 * first, then prints one JSON object per result on stdout and a readable
 * line per result, plus per-token estimates and the cost of swapping a
 * merged adapter, on stderr. Exits 1 if a check failed.
 *
 * usage: benchmark-kernels [--quick] [--threads N] [--attention M,P0]
 *   --quick      fewer shapes and shorter timings (a smoke run)
 *   --attention  only the attention of M new rows after P0 cached positions
 *   --threads N  the multi-threaded runs use N threads (default: all CPUs)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/backend_impl.h"
#include "kernels/kernels.h"

/* Weights for "cold" runs rotate through this many bytes of copies, more
 * than the last-level cache, so each call streams from memory as a decoded
 * token's 100 MB of weights do. */
#define COLD_BYTES ((size_t)320 << 20)

static double min_seconds = 0.5;
static int any_failed; /* a result disagreed with cpu-ref: exit status 1 */

typedef struct {
    const char *name;
    int n, k;
} shape;

static const shape decode_shapes[] = {
    {"attn_q/o", 576, 576},  {"attn_k/v", 192, 576}, {"ffn_gate/up", 1536, 576},
    {"ffn_down", 576, 1536}, {"output", 49152, 576},
};
/* per token: q, k, v, o, gate, up, down in each of 30 layers, and the head */
static const int per_token[] = {2 * 30, 2 * 30, 2 * 30, 30, 1};

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "benchmark: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint64_t rng_state = 88172645463325252ULL;
static float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)(rng_state >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

static void make_weights(lloco_dtype wt, int n, int k, uint8_t *dst) {
    float *row = xmalloc((size_t)k * sizeof(float));
    const size_t rb = lloco_dtype_row_bytes(wt, k);
    for (int r = 0; r < n; r++) {
        for (int e = 0; e < k; e++) row[e] = frand() * 0.05f;
        lloco_quantize_row(wt, row, dst + (size_t)r * rb, k);
    }
    free(row);
}

/* Largest |a-b| relative to the rms of a. */
static double max_rel_err(const float *a, const float *b, size_t n) {
    double ss = 0, worst = 0;
    for (size_t i = 0; i < n; i++) ss += (double)a[i] * a[i];
    const double rms = sqrt(ss / (double)n) + 1e-30;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)a[i] - b[i]) / rms;
        if (!(e <= worst)) worst = e; /* NaN sticks */
    }
    return worst;
}

typedef struct {
    lloco_backend *be;
    const char *label; /* "ref", "cpu" */
} bench_backend;

/* Seconds per call of a matmul, rotating over `copies` weight buffers. */
static double time_matmul(lloco_backend *be, uint8_t *const *w, int copies, lloco_dtype wt, int n,
                          int k, const float *x, int m, float *y, int max_iters) {
    lloco_op_matmul(be, w[0], wt, n, k, x, m, y); /* warm-up: scratch, pool */
    int iters = 0;
    const double t0 = lloco_time_now();
    double t;
    do {
        lloco_op_matmul(be, w[iters % copies], wt, n, k, x, m, y);
        iters++;
        t = lloco_time_now() - t0;
    } while (t < min_seconds && iters < max_iters);
    return t / iters;
}

static void bench_matmul(bench_backend *bbs, int nbb, lloco_dtype wt, const shape *sh, int m,
                         double *token_ms) {
    const size_t rb = lloco_dtype_row_bytes(wt, sh->k), wbytes = rb * sh->n;
    const int copies = m == 1 ? (int)(COLD_BYTES / wbytes + 1) : 1;
    uint8_t **w = xmalloc((size_t)copies * sizeof *w);
    w[0] = xmalloc(wbytes);
    make_weights(wt, sh->n, sh->k, w[0]);
    for (int c = 1; c < copies; c++) {
        w[c] = xmalloc(wbytes);
        memcpy(w[c], w[0], wbytes);
    }
    float *x = xmalloc((size_t)m * sh->k * sizeof(float));
    for (size_t i = 0; i < (size_t)m * sh->k; i++) x[i] = frand();
    float *y_ref = xmalloc((size_t)m * sh->n * sizeof(float)),
          *y = xmalloc((size_t)m * sh->n * sizeof(float));
    lloco_op_matmul(bbs[0].be, w[0], wt, sh->n, sh->k, x, m, y_ref);
    const double flop = 2.0 * m * sh->n * sh->k;
    for (int b = 0; b < nbb; b++) {
        lloco_op_matmul(bbs[b].be, w[0], wt, sh->n, sh->k, x, m, y);
        const double err = max_rel_err(y_ref, y, (size_t)m * sh->n);
        const int ok = err < 1e-3;
        for (int cold = 0; cold < (m == 1 ? 2 : 1); cold++) {
            /* the reference is too slow to time twice or at length */
            if (b == 0 && cold == 0 && m == 1) continue;
            const int max_iters = b == 0 ? 2 : 1 << 20;
            const double s =
                time_matmul(bbs[b].be, w, cold ? copies : 1, wt, sh->n, sh->k, x, m, y, max_iters);
            printf("{\"bench\":\"matmul\",\"backend\":\"%s\",\"describe\":\"%s\",\"threads\":%d,"
                   "\"dtype\":\"%s\",\"shape\":\"%s\",\"m\":%d,\"n\":%d,\"k\":%d,\"cache\":\"%s\","
                   "\"us\":%.2f,\"gflops\":%.2f,\"weight_gbps\":%.2f,\"max_rel_err\":%.3g,"
                   "\"check\":\"%s\"}\n",
                   bbs[b].label, lloco_backend_describe(bbs[b].be),
                   lloco_backend_n_threads(bbs[b].be), lloco_dtype_name(wt), sh->name, m, sh->n,
                   sh->k, m == 1 ? (cold ? "cold" : "hot") : "hot", s * 1e6, flop / s * 1e-9,
                   (double)wbytes / s * 1e-9, err, ok ? "ok" : "FAIL");
            fflush(stdout);
            fprintf(stderr, "%-5s %-12s m=%-4d %-5s %-4s %-24s %10.1f us %8.2f GF/s %7.2f GB/s%s\n",
                    lloco_dtype_name(wt), sh->name, m, m == 1 ? (cold ? "cold" : "hot") : "",
                    bbs[b].label, lloco_backend_describe(bbs[b].be), s * 1e6, flop / s * 1e-9,
                    (double)wbytes / s * 1e-9, ok ? "" : "  CHECK FAILED");
            if (token_ms && (cold || m > 1)) token_ms[b] += s * 1e3 * per_token[sh - decode_shapes];
            if (!ok) any_failed = 1;
        }
    }
    for (int c = 0; c < copies; c++) free(w[c]);
    free(w);
    free(x);
    free(y_ref);
    free(y);
}

static void bench_attention(bench_backend *bbs, int nbb, int m, int p0) {
    const int n_head = 9, n_kv = 3, hd = 64, stride = n_kv * hd, n_pos = p0 + m;
    float *q = xmalloc((size_t)m * n_head * hd * 4), *kv = xmalloc((size_t)n_pos * stride * 4);
    uint16_t *k = xmalloc((size_t)n_pos * stride * 2), *v = xmalloc((size_t)n_pos * stride * 2);
    for (size_t i = 0; i < (size_t)m * n_head * hd; i++) q[i] = frand();
    for (size_t i = 0; i < (size_t)n_pos * stride; i++) kv[i] = frand();
    lloco_quantize_row(LLOCO_DTYPE_F16, kv, k, (int64_t)n_pos * stride);
    for (size_t i = 0; i < (size_t)n_pos * stride; i++) kv[i] = frand();
    lloco_quantize_row(LLOCO_DTYPE_F16, kv, v, (int64_t)n_pos * stride);
    float *o_ref = xmalloc((size_t)m * n_head * hd * 4), *o = xmalloc((size_t)m * n_head * hd * 4);
    const float scale = 0.125f;
    double t0 = lloco_time_now();
    lloco_op_attention(bbs[0].be, q, m, p0, n_head, n_kv, hd, k, v, LLOCO_DTYPE_F16, stride, scale,
                       o_ref);
    const double ref_s = lloco_time_now() - t0;
    /* causal: row i sees p0 + i + 1 positions; QK and PV each cost a MAC per dim */
    const double flop = 2.0 * 2.0 * n_head * hd * ((double)m * p0 + (double)m * (m + 1) / 2);
    for (int b = 0; b < nbb; b++) {
        double s = ref_s;
        if (b > 0)
            lloco_op_attention(bbs[b].be, q, m, p0, n_head, n_kv, hd, k, v, LLOCO_DTYPE_F16, stride,
                               scale, o);
        else
            memcpy(o, o_ref, (size_t)m * n_head * hd * 4);
        const double err = max_rel_err(o_ref, o, (size_t)m * n_head * hd);
        if (b > 0) {
            int iters = 0;
            t0 = lloco_time_now();
            do {
                lloco_op_attention(bbs[b].be, q, m, p0, n_head, n_kv, hd, k, v, LLOCO_DTYPE_F16,
                                   stride, scale, o);
                iters++;
                s = lloco_time_now() - t0;
            } while (s < min_seconds);
            s /= iters;
        }
        const int ok = err < 1e-3;
        printf("{\"bench\":\"attention\",\"backend\":\"%s\",\"describe\":\"%s\",\"threads\":%d,"
               "\"kv\":\"f16\",\"heads\":\"9/3x64\",\"m\":%d,\"p0\":%d,\"us\":%.2f,\"gflops\":%.2f,"
               "\"max_rel_err\":%.3g,\"check\":\"%s\"}\n",
               bbs[b].label, lloco_backend_describe(bbs[b].be), lloco_backend_n_threads(bbs[b].be),
               m, p0, s * 1e6, flop / s * 1e-9, err, ok ? "ok" : "FAIL");
        fflush(stdout);
        fprintf(stderr,
                "attention 9/3 heads x 64, f16 cache, m=%-4d p0=%-4d %-4s %-24s %10.1f us %8.2f "
                "GF/s%s\n",
                m, p0, bbs[b].label, lloco_backend_describe(bbs[b].be), s * 1e6, flop / s * 1e-9,
                ok ? "" : "  CHECK FAILED");
        if (!ok) any_failed = 1;
    }
    free(q), free(kv), free(k), free(v), free(o_ref), free(o);
}

/* ---- LoRA ----------------------------------------------------------------- */

typedef struct {
    lloco_lora_mat mat;
    void *a, *bt;
} bench_lora_pair;

static void lora_pair_make(bench_lora_pair *p, lloco_dtype t, int rank, int k, int n) {
    const size_t es = lloco_dtype_block_bytes(t);
    float *tmp = xmalloc(sizeof(float) * (size_t)rank * (size_t)(k > n ? k : n));
    p->a = xmalloc((size_t)rank * k * es);
    p->bt = xmalloc((size_t)rank * n * es);
    for (size_t i = 0; i < (size_t)rank * k; i++) tmp[i] = frand();
    lloco_quantize_row(t, tmp, p->a, (int64_t)rank * k);
    for (size_t i = 0; i < (size_t)rank * n; i++) tmp[i] = frand() * 0.1f;
    lloco_quantize_row(t, tmp, p->bt, (int64_t)rank * n);
    free(tmp);
    p->mat = (lloco_lora_mat){.a = p->a, .bt = p->bt, .type = t, .rank = rank, .k = k, .n = n,
                              .scale = 2.0f};
}

/* Seconds per call of the LoRA op (after the checked call has warmed up). */
static double time_lora(lloco_backend *be, const float *x, int m, int k, int n,
                        const lloco_lora_mat *const *rows, float *y) {
    int iters = 0;
    const double t0 = lloco_time_now();
    double t;
    do {
        lloco_op_lora(be, x, m, k, n, rows, y);
        iters++;
        t = lloco_time_now() - t0;
    } while (t < min_seconds);
    return t / iters;
}

static double time_merge(lloco_backend *be, const void *w, const lloco_lora_mat *l, void *dst) {
    int iters = 0;
    const double t0 = lloco_time_now();
    double t;
    do {
        lloco_op_lora_merge(be, w, LLOCO_DTYPE_Q4_1, l, dst, LLOCO_DTYPE_Q4_1);
        iters++;
        t = lloco_time_now() - t0;
    } while (t < min_seconds);
    return t / iters;
}

/* The batched LoRA op on one projection shape: m rows spread round-robin
 * over n_ad adapters of rank `rank` (n_ad == m: every row its own), next to
 * the Q4_1 base matmul of the same rows. Returns the cpu backend's seconds
 * (the last backend's). */
static double bench_lora(bench_backend *bbs, int nbb, const shape *sh, lloco_dtype t, int rank,
                         int m, int n_ad) {
    bench_lora_pair *ad = xmalloc(sizeof *ad * (size_t)n_ad);
    for (int a = 0; a < n_ad; a++) lora_pair_make(&ad[a], t, rank, sh->k, sh->n);
    const lloco_lora_mat **rows = xmalloc(sizeof *rows * (size_t)m);
    for (int i = 0; i < m; i++) rows[i] = &ad[i % n_ad].mat;
    float *x = xmalloc(sizeof(float) * (size_t)m * sh->k);
    for (size_t i = 0; i < (size_t)m * sh->k; i++) x[i] = frand();
    float *y_ref = xmalloc(sizeof(float) * (size_t)m * sh->n), *y = xmalloc(sizeof(float) * (size_t)m * sh->n);
    memset(y_ref, 0, sizeof(float) * (size_t)m * sh->n);
    lloco_op_lora(bbs[0].be, x, m, sh->k, sh->n, rows, y_ref);
    const size_t wb = lloco_dtype_row_bytes(LLOCO_DTYPE_Q4_1, sh->k) * sh->n;
    uint8_t *w = xmalloc(wb);
    make_weights(LLOCO_DTYPE_Q4_1, sh->n, sh->k, w);
    const double flop = 2.0 * m * rank * (double)(sh->k + sh->n);
    const double bytes = (double)n_ad * rank * (sh->k + sh->n) * lloco_dtype_block_bytes(t);
    double last = 0;
    for (int b = 1; b < nbb; b++) {
        memset(y, 0, sizeof(float) * (size_t)m * sh->n);
        lloco_op_lora(bbs[b].be, x, m, sh->k, sh->n, rows, y);
        const double err = max_rel_err(y_ref, y, (size_t)m * sh->n);
        const int ok = err < 1e-4;
        const double s = time_lora(bbs[b].be, x, m, sh->k, sh->n, rows, y);
        const double base =
            time_matmul(bbs[b].be, &w, 1, LLOCO_DTYPE_Q4_1, sh->n, sh->k, x, m, y, 1 << 20);
        printf("{\"bench\":\"lora\",\"backend\":\"%s\",\"describe\":\"%s\",\"threads\":%d,"
               "\"dtype\":\"%s\",\"shape\":\"%s\",\"n\":%d,\"k\":%d,\"rank\":%d,\"m\":%d,"
               "\"adapters\":%d,\"us\":%.2f,\"gflops\":%.2f,\"adapter_gbps\":%.2f,"
               "\"q4_1_matmul_us\":%.2f,\"max_rel_err\":%.3g,\"check\":\"%s\"}\n",
               bbs[b].label, lloco_backend_describe(bbs[b].be), lloco_backend_n_threads(bbs[b].be),
               lloco_dtype_name(t), sh->name, sh->n, sh->k, rank, m, n_ad, s * 1e6, flop / s * 1e-9,
               bytes / s * 1e-9, base * 1e6, err, ok ? "ok" : "FAIL");
        fflush(stdout);
        fprintf(stderr,
                "lora %-4s %-12s r=%-3d m=%-4d adapters=%-4d %-24s %9.1f us %7.2f GF/s %6.2f GB/s"
                "  (q4_1 matmul %8.1f us)%s\n",
                lloco_dtype_name(t), sh->name, rank, m, n_ad, lloco_backend_describe(bbs[b].be),
                s * 1e6, flop / s * 1e-9, bytes / s * 1e-9, base * 1e6, ok ? "" : "  CHECK FAILED");
        if (!ok) any_failed = 1;
        last = s;
    }
    for (int a = 0; a < n_ad; a++) free(ad[a].a), free(ad[a].bt);
    free(ad), free(rows), free(x), free(y_ref), free(y), free(w);
    return last;
}

/* Merging a rank-`rank` F32 pair into Q4_1 weights of one shape (what
 * lloco_decoder_merge_adapter does per target): the same bytes as cpu-ref,
 * then the time. Returns the last backend's seconds. */
static double bench_lora_merge(bench_backend *bbs, int nbb, const shape *sh, int rank) {
    bench_lora_pair p;
    lora_pair_make(&p, LLOCO_DTYPE_F32, rank, sh->k, sh->n);
    const size_t wb = lloco_dtype_row_bytes(LLOCO_DTYPE_Q4_1, sh->k) * sh->n;
    uint8_t *w = xmalloc(wb), *d_ref = xmalloc(wb), *d = xmalloc(wb);
    make_weights(LLOCO_DTYPE_Q4_1, sh->n, sh->k, w);
    lloco_op_lora_merge(bbs[0].be, w, LLOCO_DTYPE_Q4_1, &p.mat, d_ref, LLOCO_DTYPE_Q4_1);
    double last = 0;
    for (int b = 1; b < nbb; b++) {
        lloco_op_lora_merge(bbs[b].be, w, LLOCO_DTYPE_Q4_1, &p.mat, d, LLOCO_DTYPE_Q4_1);
        const int ok = memcmp(d, d_ref, wb) == 0;
        const double s = time_merge(bbs[b].be, w, &p.mat, d);
        printf("{\"bench\":\"lora_merge\",\"backend\":\"%s\",\"describe\":\"%s\",\"threads\":%d,"
               "\"weights\":\"q4_1\",\"adapter\":\"f32\",\"shape\":\"%s\",\"n\":%d,\"k\":%d,"
               "\"rank\":%d,\"us\":%.2f,\"check\":\"%s\"}\n",
               bbs[b].label, lloco_backend_describe(bbs[b].be), lloco_backend_n_threads(bbs[b].be),
               sh->name, sh->n, sh->k, rank, s * 1e6, ok ? "ok" : "FAIL");
        fflush(stdout);
        fprintf(stderr, "lora merge q4_1 %-12s r=%-3d %-24s %9.1f us%s\n", sh->name, rank,
                lloco_backend_describe(bbs[b].be), s * 1e6, ok ? "" : "  CHECK FAILED (bytes differ)");
        if (!ok) any_failed = 1;
        last = s;
    }
    free(p.a), free(p.bt), free(w), free(d_ref), free(d);
    return last;
}

static void bench_lora_all(bench_backend *bbs, int nbb, int quick) {
    const shape *q = &decode_shapes[0], *kv = &decode_shapes[1], *up = &decode_shapes[2],
                *down = &decode_shapes[3];
    /* decode: one token per sequence, 8 sequences on 1, 4 or 8 adapters */
    const int ranks[] = {8, 16, 64};
    for (size_t r = 0; r < LLOCO_ARRAY_LEN(ranks); r++) {
        if (quick && r) continue;
        for (int n_ad = 1; n_ad <= 8; n_ad *= n_ad == 1 ? 4 : 2) {
            bench_lora(bbs, nbb, q, LLOCO_DTYPE_F32, ranks[r], 8, n_ad);
            if (!quick) bench_lora(bbs, nbb, up, LLOCO_DTYPE_F32, ranks[r], 8, n_ad);
        }
    }
    bench_lora(bbs, nbb, q, LLOCO_DTYPE_F16, 16, 8, 8);
    /* prefill: 512 rows of one adapter, and 4 sequences of 128 on 4 */
    bench_lora(bbs, nbb, q, LLOCO_DTYPE_F32, 16, quick ? 64 : 512, 1);
    if (!quick) {
        bench_lora(bbs, nbb, up, LLOCO_DTYPE_F32, 16, 512, 1);
        bench_lora(bbs, nbb, q, LLOCO_DTYPE_F32, 16, 512, 4);
    }
    /* per decoded token (m = 1) with LLoCO's r=8 q/k/v/o adapter, and with
     * r=16 on all seven projections, over 30 layers */
    const double t_q = bench_lora(bbs, nbb, q, LLOCO_DTYPE_F32, 8, 1, 1);
    const double t_kv = bench_lora(bbs, nbb, kv, LLOCO_DTYPE_F32, 8, 1, 1);
    double t_all = 0;
    if (!quick)
        t_all = 2 * bench_lora(bbs, nbb, q, LLOCO_DTYPE_F32, 16, 1, 1) +
                2 * bench_lora(bbs, nbb, kv, LLOCO_DTYPE_F32, 16, 1, 1) +
                2 * bench_lora(bbs, nbb, up, LLOCO_DTYPE_F32, 16, 1, 1) +
                bench_lora(bbs, nbb, down, LLOCO_DTYPE_F32, 16, 1, 1);
    /* the swap cost of merged mode: every target of every layer merged */
    const double m_q = bench_lora_merge(bbs, nbb, q, 8), m_kv = bench_lora_merge(bbs, nbb, kv, 8);
    double m_all = 0;
    if (!quick)
        m_all = 2 * bench_lora_merge(bbs, nbb, q, 16) + 2 * bench_lora_merge(bbs, nbb, kv, 16) +
                2 * bench_lora_merge(bbs, nbb, up, 16) + bench_lora_merge(bbs, nbb, down, 16);
    const char *desc = lloco_backend_describe(bbs[nbb - 1].be);
    fprintf(stderr, "\nLoRA per decoded token, unmerged (30 layers, m=1, %s):\n", desc);
    fprintf(stderr, "  r=8 on q/k/v/o (LLoCO)  %7.3f ms\n", 30 * (2 * t_q + 2 * t_kv) * 1e3);
    if (!quick) fprintf(stderr, "  r=16 on all seven      %7.3f ms\n", 30 * t_all * 1e3);
    fprintf(stderr, "swapping a merged adapter into Q4_1 weights (30 layers, %s):\n", desc);
    fprintf(stderr, "  r=8 on q/k/v/o          %7.1f ms\n", 30 * (2 * m_q + 2 * m_kv) * 1e3);
    if (!quick) fprintf(stderr, "  r=16 on all seven       %7.1f ms\n", 30 * m_all * 1e3);
    printf("{\"bench\":\"lora_summary\",\"describe\":\"%s\",\"token_ms_r8_qkvo\":%.4f,"
           "\"token_ms_r16_all\":%.4f,\"swap_ms_r8_qkvo\":%.2f,\"swap_ms_r16_all\":%.2f}\n",
           desc, 30 * (2 * t_q + 2 * t_kv) * 1e3, 30 * t_all * 1e3, 30 * (2 * m_q + 2 * m_kv) * 1e3,
           30 * m_all * 1e3);
}

int main(int argc, char **argv) {
    int quick = 0, threads = (int)sysconf(_SC_NPROCESSORS_ONLN), attn_m = 0, attn_p0 = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--attention") == 0 && i + 1 < argc &&
                 sscanf(argv[i + 1], "%d,%d", &attn_m, &attn_p0) == 2 && attn_m > 0 && attn_p0 >= 0)
            i++;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--threads N] [--attention M,P0]\n", argv[0]);
            return 2;
        }
    }
    if (quick) min_seconds = 0.05;
    if (threads < 1) threads = 1;
    bench_backend bbs[3];
    int nbb = 0;
    if (lloco_backend_create(LLOCO_BACKEND_CPU_REF, 1, &bbs[nbb].be) == 0) bbs[nbb++].label = "ref";
    if (lloco_backend_create(LLOCO_BACKEND_CPU, 1, &bbs[nbb].be) == 0) bbs[nbb++].label = "cpu";
    if (threads > 1 && lloco_backend_create(LLOCO_BACKEND_CPU, threads, &bbs[nbb].be) == 0)
        bbs[nbb++].label = "cpu";
    if (nbb < 2) {
        fprintf(stderr, "benchmark: cannot create backends: %s\n", lloco_last_error());
        return 1;
    }
    if (attn_m) {
        bench_attention(bbs, nbb, attn_m, attn_p0);
        return any_failed;
    }
    const lloco_dtype types[] = {LLOCO_DTYPE_Q4_1, LLOCO_DTYPE_Q8_0};
    double token_ms[2][3] = {{0}}, head_ms[3] = {0};
    /* the head is Q8_0 in the model whatever the layers are: timed once */
    bench_matmul(bbs, nbb, LLOCO_DTYPE_Q8_0, &decode_shapes[4], 1, head_ms);
    for (int t = 0; t < 2; t++) {
        for (size_t s = 0; s < 4; s++) {
            if (quick && s != 0) continue;
            bench_matmul(bbs, nbb, types[t], &decode_shapes[s], 1, token_ms[t]);
        }
        for (int b = 0; b < nbb; b++) token_ms[t][b] += head_ms[b];
    }
    for (int t = 0; t < 2; t++)
        for (size_t s = 0; s < 4; s++) {
            if (quick && s != 0) continue;
            bench_matmul(bbs, nbb, types[t], &decode_shapes[s], quick ? 64 : 512, NULL);
        }
    bench_attention(bbs, nbb, 1, quick ? 511 : 2047);
    bench_attention(bbs, nbb, quick ? 128 : 512, 0);
    bench_lora_all(bbs, nbb, quick);

    if (!quick) {
        fprintf(stderr,
                "\nestimated matmul time per decoded token (30 layers + head, cold weights):\n");
        for (int t = 0; t < 2; t++)
            for (int b = 1; b < nbb; b++)
                fprintf(stderr, "  %s layers, %-26s %7.2f ms\n", lloco_dtype_name(types[t]),
                        lloco_backend_describe(bbs[b].be), token_ms[t][b]);
    }
    for (int b = 0; b < nbb; b++) lloco_backend_free(bbs[b].be);
    return any_failed;
}
