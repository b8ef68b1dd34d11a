/* Every op on every backend against the reference backend (cpu-ref), over
 * odd and model-sized shapes: matmul for each weight dtype, norms, rope,
 * softmax, activations, row movement and attention (GQA, p0 > 0, F32/F16
 * caches). The ops that follow GGML's arithmetic must match the reference
 * bit for bit on the CPU backends, whatever their ISA and thread count.
 * Weight data sits one byte off alignment, as GGUF data may.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/blocks.h"
#include "kernels_test.h"

/* Compares backend b's result of an op that follows GGML's arithmetic: bit
 * for bit on the CPU backends, within tolerances elsewhere (CUDA). */
static int compare_ggml_op(const kt_backends *bs, int b, const char *what, const float *ref,
                           const float *got, int64_t n, double nmse_max, float tol, float eps) {
    if (strncmp(bs->label[b], "cpu", 3) == 0) return kt_compare_exact(what, ref, got, n);
    return kt_compare(what, ref, got, n, nmse_max, tol, eps);
}

static int lane_type(lloco_dtype wt) {
    return wt == LLOCO_DTYPE_Q8_0 || wt == LLOCO_DTYPE_Q4_0 || wt == LLOCO_DTYPE_Q4_1;
}

static lloco_backend *ref_backend(void) {
    lloco_backend *be = NULL;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU_REF, 1, &be));
    return be;
}

TEST_CASE(backend_create) {
    lloco_backend *be;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU, 0, &be));
    if (be) {
        CHECK(lloco_backend_n_threads(be) >= 1);
        CHECK(strcmp(lloco_backend_name(be), "cpu") == 0);
        CHECK(strstr(lloco_backend_describe(be), "thread") != NULL);
        lloco_backend_free(be);
    }
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU_REF, 4, &be));
    if (be) {
        CHECK(lloco_backend_n_threads(be) == 1);
        CHECK(strcmp(lloco_backend_name(be), "cpu-ref") == 0);
        lloco_backend_free(be);
    }
    CHECK_ERR(lloco_backend_create((lloco_backend_kind)99, 1, &be), LLOCO_ERR_INVAL);
    CHECK(be == NULL);
    CHECK_ERR(lloco_backend_create_cpu_isa(1, LLOCO_CPU_ISA_COUNT, &be), LLOCO_ERR_UNSUPPORTED);
}

TEST_CASE(backend_cuda) {
    lloco_backend *be;
    int rc = lloco_backend_create(LLOCO_BACKEND_CUDA, 0, &be);
    if (rc != 0) {
        CHECK(rc == LLOCO_ERR_UNSUPPORTED && be == NULL);
        SKIP("CUDA backend unavailable: %s", lloco_last_error());
    }
    CHECK(strcmp(lloco_backend_name(be), "cuda") == 0);
    lloco_backend_free(be);
}

/* ---- matmul ------------------------------------------------------------- */

/* Random n x k weights in dtype wt. Quantizable types come from quantizing
 * rows whose blocks vary in scale and offset; K-quants are random bytes with
 * sane fp16 scales. */
static void make_weights(kt_rng *rng, lloco_dtype wt, int n, int k, uint8_t *dst) {
    const size_t rb = lloco_dtype_row_bytes(wt, k);
    if (wt == LLOCO_DTYPE_Q4_K || wt == LLOCO_DTYPE_Q6_K) {
        for (size_t i = 0; i < rb * n; i++) dst[i] = (uint8_t)kt_u32(rng);
        for (int64_t b = 0; b < (int64_t)n * k / 256; b++) {
            uint8_t *blk = dst + b * lloco_dtype_block_bytes(wt);
            const uint16_t d = lloco_fp32_to_fp16(kt_uniform(rng, 1e-4f, 1e-2f));
            const uint16_t dmin = lloco_fp32_to_fp16(kt_uniform(rng, 1e-4f, 1e-2f));
            if (wt == LLOCO_DTYPE_Q4_K) {
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &dmin, 2);
            } else {
                memcpy(blk + 208, &d, 2);
            }
        }
        return;
    }
    float *row = kt_alloc((size_t)k * sizeof(float));
    for (int r = 0; r < n; r++) {
        kt_fill(rng, row, k, -1.0f, 1.0f);
        for (int b = 0; b < k / 32; b++) {
            const float s = kt_uniform(rng, 0.05f, 2.0f), off = kt_uniform(rng, -0.3f, 0.3f);
            for (int j = 0; j < 32; j++) row[b * 32 + j] = row[b * 32 + j] * s + off;
        }
        CHECK_OK(lloco_quantize_row(wt, row, dst + (size_t)r * rb, k));
    }
    free(row);
}

static void check_matmul(lloco_backend *ref, kt_backends *bs, lloco_dtype wt, int m, int n, int k,
                         uint64_t seed) {
    kt_rng rng = {seed};
    const size_t rb = lloco_dtype_row_bytes(wt, k);
    uint8_t *wbuf = kt_alloc(rb * n + 1);
    uint8_t *w = wbuf + 1; /* GGUF blocks need not be aligned */
    make_weights(&rng, wt, n, k, w);
    float *x = kt_alloc((size_t)m * k * sizeof(float));
    kt_fill(&rng, x, (int64_t)m * k, -1.0f, 1.0f);
    for (int i = 0; i < m; i++) /* rows of different magnitude */
        for (int e = 0; e < k; e++) x[(size_t)i * k + e] *= 0.1f + (float)(i % 5);
    float *y_ref = kt_alloc((size_t)m * n * sizeof(float));
    float *y = kt_alloc((size_t)m * n * sizeof(float));
    lloco_op_matmul(ref, w, wt, n, k, x, m, y_ref);
    const float rms = kt_rms(y_ref, (int64_t)m * n);
    for (int b = 0; b < bs->n; b++) {
        for (int64_t i = 0; i < (int64_t)m * n; i++) y[i] = NAN;
        lloco_op_matmul(bs->be[b], w, wt, n, k, x, m, y);
        char what[160];
        snprintf(what, sizeof what, "matmul %s m=%d n=%d k=%d %s", lloco_dtype_name(wt), m, n, k,
                 bs->label[b]);
        const int ok = lane_type(wt) || wt == LLOCO_DTYPE_Q4_K || wt == LLOCO_DTYPE_Q6_K
                           ? compare_ggml_op(bs, b, what, y_ref, y, (int64_t)m * n, 1e-9,
                                             2e-4f * rms, 1e-4f)
                           : kt_compare(what, y_ref, y, (int64_t)m * n, 1e-9, 2e-4f * rms, 1e-4f);
        if (!ok) break;
    }
    free(wbuf);
    free(x);
    free(y_ref);
    free(y);
}

static void matmul_cases(lloco_dtype wt) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const int ms[] = {1, 2, 3, 4, 5, 9, 17, 64};
    const int ns[] = {1, 7, 33, 1536};
    const int ks32[] = {32, 64, 256, 576}, ks256[] = {256, 512};
    const int kq = wt == LLOCO_DTYPE_Q4_K || wt == LLOCO_DTYPE_Q6_K;
    const int *ks = kq ? ks256 : ks32;
    const int nk = kq ? 2 : 4;
    uint64_t seed = 1000 + (uint64_t)wt * 100;
    for (size_t mi = 0; mi < LLOCO_ARRAY_LEN(ms); mi++)
        for (size_t ni = 0; ni < LLOCO_ARRAY_LEN(ns); ni++)
            for (int ki = 0; ki < nk && lloco_test_case_failures() == 0; ki++)
                check_matmul(ref, &bs, wt, ms[mi], ns[ni], ks[ki], seed++);
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

TEST_CASE(matmul_q4_1) { matmul_cases(LLOCO_DTYPE_Q4_1); }
TEST_CASE(matmul_q8_0) { matmul_cases(LLOCO_DTYPE_Q8_0); }
TEST_CASE(matmul_q4_0) { matmul_cases(LLOCO_DTYPE_Q4_0); }
TEST_CASE(matmul_q4_K) { matmul_cases(LLOCO_DTYPE_Q4_K); }
TEST_CASE(matmul_q6_K) { matmul_cases(LLOCO_DTYPE_Q6_K); }
TEST_CASE(matmul_f32) { matmul_cases(LLOCO_DTYPE_F32); }
TEST_CASE(matmul_f16) { matmul_cases(LLOCO_DTYPE_F16); }
TEST_CASE(matmul_bf16) { matmul_cases(LLOCO_DTYPE_BF16); }

/* Float weights with element counts that leave the packed form (16 or
 * more rows) a ragged end of each panel and of the last one. */
TEST_CASE(matmul_float_ragged_k) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const lloco_dtype types[] = {LLOCO_DTYPE_F32, LLOCO_DTYPE_F16, LLOCO_DTYPE_BF16};
    for (size_t t = 0; t < LLOCO_ARRAY_LEN(types); t++) {
        check_matmul(ref, &bs, types[t], 20, 37, 45, 700 + t);
        check_matmul(ref, &bs, types[t], 33, 64, 300, 710 + t);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* The model's prefill shapes: many activation tiles, ragged last tile. */
TEST_CASE(matmul_prefill_shapes) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    check_matmul(ref, &bs, LLOCO_DTYPE_Q4_1, 130, 192, 576, 1);
    check_matmul(ref, &bs, LLOCO_DTYPE_Q4_1, 67, 576, 1536, 2);
    check_matmul(ref, &bs, LLOCO_DTYPE_Q4_1, 13, 1537, 96, 7); /* odd rows, short rows */
    check_matmul(ref, &bs, LLOCO_DTYPE_Q8_0, 131, 200, 576, 3);
    check_matmul(ref, &bs, LLOCO_DTYPE_Q4_0, 45, 1536, 576, 4);
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* Weights at the extremes of their ranges: q8_0 -128 and 127 next to
 * activation values of +-127 are where a saturating dot product would
 * break. */
TEST_CASE(matmul_extreme_values) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    enum { N = 8, K = 512, M = 40 }; /* 40: past the switch to prefill on every ISA */
    block_q8_0 w8[N * K / 32];
    block_q4_1 w4[N * K / 32];
    for (int b = 0; b < N * K / 32; b++) {
        w8[b].d = lloco_fp32_to_fp16(0.01f);
        w4[b].d = lloco_fp32_to_fp16(0.01f);
        w4[b].m = lloco_fp32_to_fp16(-0.05f);
        for (int j = 0; j < 32; j++) w8[b].qs[j] = (int8_t)(j % 2 ? 127 : -128);
        for (int j = 0; j < 16; j++) w4[b].qs[j] = 0xF0 | (b % 2 ? 0x0F : 0);
    }
    static float x[M * K], y_ref[M * N], y[M * N];
    for (int i = 0; i < M * K; i++) x[i] = (i / 2) % 2 ? 3.0f : -3.0f;
    for (int i = K; i < 2 * K; i++) x[i] = (i % 2) ? 3.0f : -3.0f;
    for (int t = 0; t < 2; t++) {
        const lloco_dtype wt = t ? LLOCO_DTYPE_Q4_1 : LLOCO_DTYPE_Q8_0;
        const void *w = t ? (const void *)w4 : (const void *)w8;
        const int ms[] = {1, 13, M}; /* one row, rows sharing weight blocks, prefill tiles */
        for (size_t mi = 0; mi < LLOCO_ARRAY_LEN(ms); mi++) {
            const int m = ms[mi];
            lloco_op_matmul(ref, w, wt, N, K, x, m, y_ref);
            for (int b = 0; b < bs.n; b++) {
                lloco_op_matmul(bs.be[b], w, wt, N, K, x, m, y);
                char what[128];
                snprintf(what, sizeof what, "matmul extremes %s m=%d %s", lloco_dtype_name(wt), m,
                         bs.label[b]);
                compare_ggml_op(&bs, b, what, y_ref, y, (int64_t)m * N, 1e-10, 1e-3f, 1e-5f);
            }
        }
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* One-hot weight rows pick single activation values: y[i][e] is then
 * d_y * q_y of element e, computed exactly by every backend. So this
 * checks, value by value, that the SIMD activation quantizers reproduce
 * GGML's rounding (ties included) and that every layout puts each value
 * where its weight is, chunk tails and padding included. */
TEST_CASE(matmul_one_hot_exact) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const int ks[] = {32, 96, 320, 576, 1056};
    const lloco_dtype types[] = {LLOCO_DTYPE_Q8_0, LLOCO_DTYPE_Q4_0, LLOCO_DTYPE_Q4_1};
    kt_rng rng = {21};
    for (size_t ki = 0; ki < LLOCO_ARRAY_LEN(ks); ki++) {
        const int k = ks[ki], n = k, m = 40; /* past the switch to prefill on every ISA */
        float *x = kt_alloc((size_t)m * k * 4), *y_ref = kt_alloc((size_t)m * n * 4),
              *y = kt_alloc((size_t)m * n * 4);
        kt_fill(&rng, x, (int64_t)m * k, -3.0f, 3.0f);
        for (int e = 0; e < k; e++) {
            if (e % 96 < 32) x[e] = (float)(e % 32 - 16) * 0.25f; /* exact halves after scaling */
            if (e % 160 >= 128) x[k + e] = 0.0f;                  /* zero blocks */
        }
        x[2 * k + 5] = 1e-30f;
        for (size_t t = 0; t < LLOCO_ARRAY_LEN(types); t++) {
            const lloco_dtype wt = types[t];
            const size_t rb = lloco_dtype_row_bytes(wt, k);
            uint8_t *w = kt_alloc(rb * n + 1);
            for (int r = 0; r < n; r++) {
                for (int b = 0; b < k / 32; b++) {
                    uint8_t *blk = w + 1 + (size_t)r * rb + (size_t)b * lloco_dtype_block_bytes(wt);
                    const uint16_t one = lloco_fp32_to_fp16(1.0f), zero = 0;
                    const int hit = b == r / 32, e = r % 32;
                    memcpy(blk, &one, 2);
                    if (wt == LLOCO_DTYPE_Q8_0) {
                        memset(blk + 2, 0, 32);
                        if (hit) blk[2 + e] = 1;
                    } else {
                        uint8_t *qs = blk + (wt == LLOCO_DTYPE_Q4_1 ? 4 : 2);
                        if (wt == LLOCO_DTYPE_Q4_1) memcpy(blk + 2, &zero, 2);
                        const uint8_t z =
                            wt == LLOCO_DTYPE_Q4_0 ? 8 : 0; /* q4_0 stores value + 8 */
                        memset(qs, z | (z << 4), 16);
                        if (hit)
                            qs[e % 16] = (uint8_t)(e < 16 ? (qs[e % 16] & 0xF0) | (z + 1)
                                                          : (qs[e % 16] & 0x0F) | ((z + 1) << 4));
                    }
                }
            }
            const int ms[] = {1, 13, m}; /* one row, rows sharing weight blocks, prefill */
            for (size_t mi = 0; mi < LLOCO_ARRAY_LEN(ms); mi++) {
                const int mm = ms[mi];
                lloco_op_matmul(ref, w + 1, wt, n, k, x, mm, y_ref);
                for (int b = 0; b < bs.n; b++) {
                    lloco_op_matmul(bs.be[b], w + 1, wt, n, k, x, mm, y);
                    char what[128];
                    snprintf(what, sizeof what, "one-hot %s k=%d m=%d %s", lloco_dtype_name(wt), k,
                             mm, bs.label[b]);
                    kt_compare(what, y_ref, y, (int64_t)mm * n, 0, 0, 0);
                }
            }
            free(w);
        }
        free(x), free(y_ref), free(y);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* A batch's rows must not depend on the batch: row i of an m-row matmul
 * (the decode kernels that share weight blocks between rows, then the
 * prefill tiles) has the bits of row i computed alone, for every m up to
 * past the switch to prefill, ragged weight-row counts included. */
TEST_CASE(matmul_rows_independent_of_batch) {
    kt_backends bs;
    kt_backends_open(&bs);
    enum { M = 40 }; /* past the switch to prefill on every ISA */
    const int ks[] = {32, 96, 256, 576};
    const int ns[] = {1, 5, 37, 100};
    const lloco_dtype types[] = {LLOCO_DTYPE_Q4_1, LLOCO_DTYPE_Q8_0, LLOCO_DTYPE_Q4_0};
    kt_rng rng = {4242};
    for (size_t t = 0; t < LLOCO_ARRAY_LEN(types) && lloco_test_case_failures() == 0; t++) {
        for (size_t ki = 0; ki < LLOCO_ARRAY_LEN(ks); ki++) {
            for (size_t ni = 0; ni < LLOCO_ARRAY_LEN(ns); ni++) {
                const lloco_dtype wt = types[t];
                const int k = ks[ki], n = ns[ni];
                const size_t rb = lloco_dtype_row_bytes(wt, k);
                uint8_t *wbuf = kt_alloc(rb * n + 1);
                make_weights(&rng, wt, n, k, wbuf + 1);
                float *x = kt_alloc((size_t)M * k * sizeof(float));
                kt_fill(&rng, x, (int64_t)M * k, -1.0f, 1.0f);
                for (int i = 0; i < M; i++)
                    for (int e = 0; e < k; e++) x[(size_t)i * k + e] *= 0.1f + (float)(i % 5);
                float *alone = kt_alloc((size_t)M * n * sizeof(float));
                float *y = kt_alloc((size_t)M * n * sizeof(float));
                for (int b = 0; b < bs.n; b++) {
                    for (int i = 0; i < M; i++)
                        lloco_op_matmul(bs.be[b], wbuf + 1, wt, n, k, x + (size_t)i * k, 1,
                                        alone + (size_t)i * n);
                    int ok = 1;
                    for (int m = 2; m <= M && ok; m++) {
                        for (int64_t i = 0; i < (int64_t)m * n; i++) y[i] = NAN;
                        lloco_op_matmul(bs.be[b], wbuf + 1, wt, n, k, x, m, y);
                        char what[160];
                        snprintf(what, sizeof what, "matmul %s m=%d n=%d k=%d vs rows alone %s",
                                 lloco_dtype_name(wt), m, n, k, bs.label[b]);
                        ok = compare_ggml_op(&bs, b, what, alone, y, (int64_t)m * n, 1e-9,
                                             2e-4f * kt_rms(alone, (int64_t)m * n), 1e-4f);
                    }
                }
                free(wbuf), free(x), free(alone), free(y);
            }
        }
    }
    kt_backends_close(&bs);
}

/* ---- norms, rope, elementwise ------------------------------------------ */

TEST_CASE(op_rmsnorm_layernorm) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const int shapes[][2] = {{1, 576}, {3, 7}, {17, 64}, {64, 1536}, {2, 1}};
    kt_rng rng = {5};
    for (size_t s = 0; s < LLOCO_ARRAY_LEN(shapes); s++) {
        const int m = shapes[s][0], d = shapes[s][1];
        float *x = kt_alloc((size_t)m * d * 4), *w = kt_alloc((size_t)d * 4),
              *bias = kt_alloc((size_t)d * 4);
        float *y_ref = kt_alloc((size_t)m * d * 4), *y = kt_alloc((size_t)m * d * 4);
        kt_fill(&rng, x, (int64_t)m * d, -4.0f, 4.0f);
        kt_fill(&rng, w, d, 0.5f, 1.5f);
        kt_fill(&rng, bias, d, -1.0f, 1.0f);
        for (int op = 0; op < 3; op++) {
            const char *name = op == 0 ? "rmsnorm" : op == 1 ? "layernorm" : "layernorm+bias";
            if (op == 0)
                lloco_op_rmsnorm(ref, x, w, m, d, 1e-5f, y_ref);
            else
                lloco_op_layernorm(ref, x, w, op == 2 ? bias : NULL, m, d, 1e-5f, y_ref);
            for (int b = 0; b < bs.n; b++) {
                /* in place (y aliases x) on odd backends, out of place on even */
                memcpy(y, x, (size_t)m * d * 4);
                float *in = b % 2 ? y : x;
                if (op == 0)
                    lloco_op_rmsnorm(bs.be[b], in, w, m, d, 1e-5f, y);
                else
                    lloco_op_layernorm(bs.be[b], in, w, op == 2 ? bias : NULL, m, d, 1e-5f, y);
                char what[128];
                snprintf(what, sizeof what, "%s m=%d d=%d %s", name, m, d, bs.label[b]);
                compare_ggml_op(&bs, b, what, y_ref, y, (int64_t)m * d, 1e-10, 1e-5f, 1e-5f);
            }
        }
        free(x), free(w), free(bias), free(y_ref), free(y);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

TEST_CASE(op_rope) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    /* m, n_heads, head_dim, rot_dim: odd pair counts leave unfused pairs in
     * normal mode */
    const int shapes[][4] = {{1, 9, 64, 64}, {17, 3, 64, 64}, {5, 2, 64, 32},
                             {3, 4, 10, 6},  {300, 2, 16, 16}, {4, 3, 160, 150}};
    kt_rng rng = {6};
    for (size_t s = 0; s < LLOCO_ARRAY_LEN(shapes); s++) {
        const int m = shapes[s][0], nh = shapes[s][1], hd = shapes[s][2], rot = shapes[s][3];
        const int64_t len = (int64_t)m * nh * hd;
        float *x = kt_alloc(len * 4), *y_ref = kt_alloc(len * 4), *y = kt_alloc(len * 4);
        float factors[128];
        int32_t *pos = kt_alloc((size_t)m * 4);
        kt_fill(&rng, x, len, -2.0f, 2.0f);
        kt_fill(&rng, factors, rot / 2, 1.0f, 8.0f);
        for (int i = 0; i < m; i++) pos[i] = 2000 + 3 * i - (i % 7) * 100;
        for (int neox = 0; neox < 2; neox++) {
            for (int variant = 0; variant < 3; variant++) {
                /* plain, linear scaling with YaRN-like mscale, Llama-3 factors */
                const lloco_rope_params rp = {powf(10000.0f, -2.0f / (float)rot),
                                              variant == 1 ? 0.25f : 1.0f,
                                              variant == 2 ? factors : NULL,
                                              variant == 1 ? 0.7f : 1.0f};
                memcpy(y_ref, x, len * 4);
                lloco_op_rope(ref, y_ref, m, nh, hd, rot, pos, &rp, neox);
                for (int b = 0; b < bs.n; b++) {
                    memcpy(y, x, len * 4);
                    lloco_op_rope(bs.be[b], y, m, nh, hd, rot, pos, &rp, neox);
                    char what[128];
                    snprintf(what, sizeof what, "rope m=%d heads=%d hd=%d rot=%d neox=%d v%d %s",
                             m, nh, hd, rot, neox, variant, bs.label[b]);
                    compare_ggml_op(&bs, b, what, y_ref, y, len, 1e-12, 1e-6f, 1e-6f);
                }
            }
        }
        free(x), free(y_ref), free(y), free(pos);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* The angles of pair j are GGML's: theta = pos, multiplied by theta_scale
 * pair after pair (not pos * theta_scale^j), divided by the factor. */
TEST_CASE(op_rope_angles) {
    lloco_backend *ref = ref_backend();
    enum { HD = 8 };
    const float factors[HD / 2] = {1.0f, 2.0f, 4.0f, 8.0f};
    const lloco_rope_params rp = {0.3f, 0.5f, factors, 2.0f};
    const int32_t pos = 37;
    float x[HD] = {1, 0, 1, 0, 1, 0, 1, 0};
    lloco_op_rope(ref, x, 1, 1, HD, HD, &pos, &rp, 0);
    float theta = 37.0f;
    for (int j = 0; j < HD / 2; j++) {
        const float angle = 0.5f * (theta / factors[j]);
        CHECKF(x[2 * j] == cosf(angle) * 2.0f && x[2 * j + 1] == sinf(angle) * 2.0f,
               "pair %d: (%.9g, %.9g) for angle %.9g", j, x[2 * j], x[2 * j + 1], angle);
        theta *= 0.3f;
    }
    lloco_backend_free(ref);
}

TEST_CASE(op_softmax) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const int shapes[][2] = {{1, 1}, {3, 7}, {17, 64}, {2, 49152}, {64, 33}, {5, 100}};
    kt_rng rng = {8};
    for (size_t s = 0; s < LLOCO_ARRAY_LEN(shapes); s++) {
        const int m = shapes[s][0], n = shapes[s][1];
        const int64_t len = (int64_t)m * n;
        float *x = kt_alloc(len * 4), *y_ref = kt_alloc(len * 4), *y = kt_alloc(len * 4);
        kt_fill(&rng, x, len, -20.0f, 20.0f);
        if (n > 1) x[1] = -INFINITY; /* masked entries become 0 */
        memcpy(y_ref, x, len * 4);
        lloco_op_softmax(ref, y_ref, m, n);
        for (int b = 0; b < bs.n; b++) {
            memcpy(y, x, len * 4);
            lloco_op_softmax(bs.be[b], y, m, n);
            char what[128];
            snprintf(what, sizeof what, "softmax m=%d n=%d %s", m, n, bs.label[b]);
            compare_ggml_op(&bs, b, what, y_ref, y, len, 1e-10, 1e-7f, 1e-5f);
        }
        free(x), free(y_ref), free(y);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

TEST_CASE(op_elementwise) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const int64_t sizes[] = {1, 7, 1536, 100003};
    kt_rng rng = {9};
    for (size_t s = 0; s < LLOCO_ARRAY_LEN(sizes); s++) {
        const int64_t n = sizes[s];
        float *a = kt_alloc(n * 4), *b_ = kt_alloc(n * 4), *r = kt_alloc(n * 4),
              *g = kt_alloc(n * 4);
        kt_fill(&rng, a, n, -12.0f, 12.0f);
        kt_fill(&rng, b_, n, -3.0f, 3.0f);
        if (n > 6) a[3] = -100.0f, a[4] = 100.0f, a[5] = 0.0f, a[6] = -0.0f; /* exp's edges */
        for (int op = 0; op < 4; op++) {
            static const char *names[] = {"silu_mul", "add", "gelu_tanh", "gelu_erf"};
            memcpy(r, a, n * 4);
            if (op == 0)
                lloco_op_silu_mul(ref, a, b_, r, n);
            else if (op == 1)
                lloco_op_add(ref, r, b_, n);
            else
                lloco_op_gelu(ref, r, n, op == 2);
            for (int k = 0; k < bs.n; k++) {
                memcpy(g, a, n * 4);
                if (op == 0)
                    lloco_op_silu_mul(bs.be[k], g, b_, g, n); /* out aliases gate */
                else if (op == 1)
                    lloco_op_add(bs.be[k], g, b_, n);
                else
                    lloco_op_gelu(bs.be[k], g, n, op == 2);
                char what[128];
                snprintf(what, sizeof what, "%s n=%lld %s", names[op], (long long)n, bs.label[k]);
                compare_ggml_op(&bs, k, what, r, g, n, 1e-12, 1e-6f, 1e-5f);
            }
        }
        free(a), free(b_), free(r), free(g);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* ---- row movement ------------------------------------------------------- */

TEST_CASE(op_get_rows) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const lloco_dtype types[] = {LLOCO_DTYPE_F32,  LLOCO_DTYPE_F16,  LLOCO_DTYPE_BF16,
                                 LLOCO_DTYPE_Q8_0, LLOCO_DTYPE_Q4_0, LLOCO_DTYPE_Q4_1,
                                 LLOCO_DTYPE_Q4_K, LLOCO_DTYPE_Q6_K};
    kt_rng rng = {10};
    enum { ROWS = 50, M = 40 };
    for (size_t t = 0; t < LLOCO_ARRAY_LEN(types); t++) {
        const lloco_dtype dt = types[t];
        const int d = dt == LLOCO_DTYPE_Q4_K || dt == LLOCO_DTYPE_Q6_K ? 512 : 576;
        uint8_t *tab = kt_alloc(lloco_dtype_row_bytes(dt, d) * ROWS + 1);
        make_weights(&rng, dt, ROWS, d, tab + 1);
        int32_t ids[M];
        for (int i = 0; i < M; i++) ids[i] = (int32_t)(kt_u32(&rng) % ROWS);
        float *y_ref = kt_alloc((size_t)M * d * 4), *y = kt_alloc((size_t)M * d * 4);
        lloco_op_get_rows(ref, tab + 1, dt, d, ids, M, y_ref);
        for (int b = 0; b < bs.n; b++) {
            lloco_op_get_rows(bs.be[b], tab + 1, dt, d, ids, M, y);
            char what[128];
            snprintf(what, sizeof what, "get_rows %s %s", lloco_dtype_name(dt), bs.label[b]);
            kt_compare(what, y_ref, y, (int64_t)M * d, 0, 0, 0);
        }
        free(tab), free(y_ref), free(y);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

TEST_CASE(op_store_rows) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    kt_rng rng = {12};
    enum { M = 37, D = 200, STRIDE = 213 };
    float x[M * D];
    kt_fill(&rng, x, M * D, -70000.0f, 70000.0f); /* beyond fp16's range too */
    for (int t = 0; t < 2; t++) {
        const lloco_dtype dt = t ? LLOCO_DTYPE_F16 : LLOCO_DTYPE_F32;
        const size_t es = t ? 2 : 4, bytes = (size_t)M * STRIDE * es;
        uint8_t *c_ref = kt_alloc(bytes), *c = kt_alloc(bytes);
        memset(c_ref, 0x5A, bytes);
        lloco_op_store_rows(ref, x, M, D, c_ref, dt, STRIDE);
        for (int b = 0; b < bs.n; b++) {
            memset(c, 0x5A, bytes); /* the gaps between rows must stay untouched */
            lloco_op_store_rows(bs.be[b], x, M, D, c, dt, STRIDE);
            CHECKF(memcmp(c_ref, c, bytes) == 0, "store_rows %s %s differs", lloco_dtype_name(dt),
                   bs.label[b]);
        }
        free(c_ref), free(c);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* ---- attention ---------------------------------------------------------- */

static void check_attention(lloco_backend *ref, kt_backends *bs, int m, int p0, int n_head,
                            int n_kv, int hd, lloco_dtype kv_type, uint64_t seed) {
    kt_rng rng = {seed};
    const int n_pos = p0 + m + 3; /* the cache may hold more than is visible */
    const int stride = n_kv * hd + 8;
    const int64_t qlen = (int64_t)m * n_head * hd;
    const size_t es = kv_type == LLOCO_DTYPE_F16 ? 2 : 4;
    float *q = kt_alloc(qlen * 4), *kf = kt_alloc((size_t)n_pos * stride * 4),
          *vf = kt_alloc((size_t)n_pos * stride * 4);
    uint8_t *k = kt_alloc((size_t)n_pos * stride * es), *v = kt_alloc((size_t)n_pos * stride * es);
    kt_fill(&rng, q, qlen, -1.5f, 1.5f);
    kt_fill(&rng, kf, (int64_t)n_pos * stride, -1.5f, 1.5f);
    kt_fill(&rng, vf, (int64_t)n_pos * stride, -2.0f, 2.0f);
    CHECK_OK(lloco_quantize_row(kv_type, kf, k, (int64_t)n_pos * stride));
    CHECK_OK(lloco_quantize_row(kv_type, vf, v, (int64_t)n_pos * stride));
    float *o_ref = kt_alloc(qlen * 4), *o = kt_alloc(qlen * 4);
    const float scale = 1.0f / sqrtf((float)hd);
    lloco_op_attention(ref, q, m, p0, n_head, n_kv, hd, k, v, kv_type, stride, scale, o_ref);
    for (int b = 0; b < bs->n; b++) {
        for (int64_t i = 0; i < qlen; i++) o[i] = NAN;
        lloco_op_attention(bs->be[b], q, m, p0, n_head, n_kv, hd, k, v, kv_type, stride, scale, o);
        char what[160];
        snprintf(what, sizeof what, "attention m=%d p0=%d heads=%d/%d hd=%d %s %s", m, p0, n_head,
                 n_kv, hd, lloco_dtype_name(kv_type), bs->label[b]);
        if (!compare_ggml_op(bs, b, what, o_ref, o, qlen, 1e-10, 2e-6f, 1e-4f)) break;
    }
    free(q), free(kf), free(vf), free(k), free(v), free(o_ref), free(o);
}

TEST_CASE(op_attention) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    /* n_head, n_kv_head, head_dim */
    /* head sizes of 12 and 40 are not multiples of 16, 272 is past 256
     * (portable path); 80 leaves vec_dot leftovers past its 64-wide steps */
    const int heads[][3] = {{9, 3, 64}, {4, 4, 32},  {6, 2, 40},  {3, 1, 12},
                            {2, 1, 128}, {20, 1, 16}, {2, 2, 80}, {1, 1, 272}};
    const int mp[][2] = {{1, 0}, {1, 5}, {1, 700}, {2, 0}, {3, 1100}, {17, 300}, {64, 0}};
    uint64_t seed = 77;
    for (size_t h = 0; h < LLOCO_ARRAY_LEN(heads); h++)
        for (size_t i = 0; i < LLOCO_ARRAY_LEN(mp); i++)
            for (int t = 0; t < 2 && lloco_test_case_failures() == 0; t++)
                check_attention(ref, &bs, mp[i][0], mp[i][1], heads[h][0], heads[h][1], heads[h][2],
                                t ? LLOCO_DTYPE_F16 : LLOCO_DTYPE_F32, seed++);
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* Bidirectional attention: the reference against softmax(q k^T * scale) v
 * in double, every CPU backend against the reference's bits. */
static void check_attention_full(lloco_backend *ref, kt_backends *bs, int m, int n_head, int hd,
                                 uint64_t seed) {
    kt_rng rng = {seed};
    const int row = n_head * hd, stride = row + 5;
    float *q = kt_alloc((size_t)m * row * 4), *k = kt_alloc((size_t)m * stride * 4),
          *v = kt_alloc((size_t)m * stride * 4), *o_ref = kt_alloc((size_t)m * row * 4),
          *o = kt_alloc((size_t)m * row * 4);
    double *p = kt_alloc((size_t)m * sizeof(double));
    kt_fill(&rng, q, (int64_t)m * row, -1.5f, 1.5f);
    kt_fill(&rng, k, (int64_t)m * stride, -1.5f, 1.5f);
    kt_fill(&rng, v, (int64_t)m * stride, -2.0f, 2.0f);
    const float scale = 1.0f / sqrtf((float)hd);
    lloco_op_attention_full(ref, q, m, n_head, hd, k, v, stride, scale, o_ref);
    double err = 0;
    for (int i = 0; i < m; i++)
        for (int h = 0; h < n_head; h++) {
            const float *qi = q + (size_t)i * row + (size_t)h * hd;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < m; j++) {
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)qi[e] * k[(size_t)j * stride + h * hd + e];
                p[j] = d * scale;
                if (p[j] > mx) mx = p[j];
            }
            for (int j = 0; j < m; j++) sum += p[j] = exp(p[j] - mx);
            for (int e = 0; e < hd; e++) {
                double d = 0;
                for (int j = 0; j < m; j++) d += p[j] / sum * v[(size_t)j * stride + h * hd + e];
                const double diff = fabs(d - o_ref[(size_t)i * row + h * hd + e]);
                if (diff > err) err = diff;
            }
        }
    CHECKF(err < 2e-5, "attention_full m=%d heads=%d hd=%d: reference off by %g", m, n_head, hd,
           err);
    for (int b = 0; b < bs->n; b++) {
        for (int64_t i = 0; i < (int64_t)m * row; i++) o[i] = NAN;
        lloco_op_attention_full(bs->be[b], q, m, n_head, hd, k, v, stride, scale, o);
        char what[160];
        snprintf(what, sizeof what, "attention_full m=%d heads=%d hd=%d %s", m, n_head, hd,
                 bs->label[b]);
        if (!compare_ggml_op(bs, b, what, o_ref, o, (int64_t)m * row, 1e-10, 2e-6f, 1e-4f)) break;
    }
    free(q), free(k), free(v), free(o_ref), free(o), free(p);
}

TEST_CASE(op_attention_full) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    /* n_head, head_dim: the embedder's 12 x 32, sizes past 64 and off 16 */
    const int heads[][2] = {{12, 32}, {2, 64}, {1, 80}, {3, 12}, {4, 8}, {1, 272}};
    const int ms[] = {1, 2, 17, 100};
    uint64_t seed = 300;
    for (size_t h = 0; h < LLOCO_ARRAY_LEN(heads); h++)
        for (size_t i = 0; i < LLOCO_ARRAY_LEN(ms) && lloco_test_case_failures() == 0; i++)
            check_attention_full(ref, &bs, ms[i], heads[h][0], heads[h][1], seed++);
    /* more positions than a chunk of V, as the embedder's windows have */
    check_attention_full(ref, &bs, 258, 3, 32, seed);
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* A model-sized prefill: 9 query heads on 3 KV heads, F16 cache. */
TEST_CASE(op_attention_prefill) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    check_attention(ref, &bs, 300, 0, 9, 3, 64, LLOCO_DTYPE_F16, 5);
    check_attention(ref, &bs, 130, 200, 9, 3, 64, LLOCO_DTYPE_F16, 6);
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}
