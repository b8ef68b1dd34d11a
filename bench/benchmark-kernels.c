/* benchmark-kernels: matmul and attention speed of the CPU backends on the
 * default model's shapes (SmolLM2-135M: d_model 576, d_ff 1536, KV dim 192,
 * 49152-row Q8_0 output head). Checks each result against cpu-ref first,
 * then prints one JSON object per result on stdout and a readable line per
 * result, plus a per-token estimate, on stderr. Exits 1 if a check failed.
 *
 * usage: benchmark-kernels [--quick] [--threads N]
 *   --quick      fewer shapes and shorter timings (a smoke run)
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

int main(int argc, char **argv) {
    int quick = 0, threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--threads N]\n", argv[0]);
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
