/* Tests of kernels/quant.c and of the SIMD activation quantizers: the dtype
 * table, fp16/bf16 conversions on special values, quantize -> dequantize
 * error bounds, and golden files written by gguf-py
 * (tests/tools/make_quant_golden.py) matched byte for byte. (The SIMD
 * activation quantizers are checked exactly by test-ops.c's one-hot matmul.)
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/blocks.h"
#include "kernels_test.h"

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST_CASE(dtype_table) {
    CHECK(strcmp(lloco_dtype_name(LLOCO_DTYPE_Q4_K), "q4_K") == 0);
    CHECK(strcmp(lloco_dtype_name(LLOCO_DTYPE_COUNT), "invalid") == 0);
    CHECK(lloco_dtype_block_elems(LLOCO_DTYPE_F16) == 1);
    CHECK(lloco_dtype_block_elems(LLOCO_DTYPE_Q8_0) == 32);
    CHECK(lloco_dtype_block_elems(LLOCO_DTYPE_Q6_K) == 256);
    CHECK(lloco_dtype_block_bytes(LLOCO_DTYPE_Q4_1) == 20);
    CHECK(lloco_dtype_block_bytes(LLOCO_DTYPE_Q8_K) == 292);
    CHECK(lloco_dtype_row_bytes(LLOCO_DTYPE_Q4_0, 576) == 18 * 18);
    CHECK(lloco_dtype_row_bytes(LLOCO_DTYPE_Q4_0, 33) == 0);
    CHECK(lloco_dtype_row_bytes(LLOCO_DTYPE_BF16, 7) == 14);
    CHECK(lloco_dtype_vec_dot_type(LLOCO_DTYPE_Q4_0) == LLOCO_DTYPE_Q8_0);
    CHECK(lloco_dtype_vec_dot_type(LLOCO_DTYPE_Q4_1) == LLOCO_DTYPE_Q8_1);
    CHECK(lloco_dtype_vec_dot_type(LLOCO_DTYPE_Q6_K) == LLOCO_DTYPE_Q8_K);
    CHECK(lloco_dtype_vec_dot_type(LLOCO_DTYPE_BF16) == LLOCO_DTYPE_F32);
    float x[32] = {0};
    uint8_t buf[64];
    CHECK_ERR(lloco_quantize_row(LLOCO_DTYPE_Q8_0, x, buf, 31), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_quantize_row(LLOCO_DTYPE_Q4_K, x, buf, 256), LLOCO_ERR_UNSUPPORTED);
    CHECK_ERR(lloco_dequantize_row(LLOCO_DTYPE_Q4_K, buf, x, 32), LLOCO_ERR_INVAL);
}

TEST_CASE(fp16_special_values) {
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3C00},
        {-2.0f, 0xC000},
        {65504.0f, 0x7BFF},
        {65519.99f, 0x7BFF},
        {65520.0f, 0x7C00},
        {1e6f, 0x7C00},
        {INFINITY, 0x7C00},
        {-INFINITY, 0xFC00},
        {0x1p-14f, 0x0400},
        {0x1p-24f, 0x0001},
        {0x1p-25f, 0x0000},
        {0x1.8p-24f, 0x0002},
        {0x1.0p-26f, 0x0000},
        {1.0f + 0x1p-11f, 0x3C00},
        {1.0f + 0x3p-11f, 0x3C02},
        {0x1.ffcp-15f, 0x0400},
    };
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(cases); i++)
        CHECKF(lloco_fp32_to_fp16(cases[i].f) == cases[i].h, "fp16(%a) = %04x, want %04x",
               cases[i].f, lloco_fp32_to_fp16(cases[i].f), cases[i].h);
    CHECK(isnan(lloco_fp16_to_fp32(lloco_fp32_to_fp16(NAN))));
    CHECK((lloco_fp32_to_fp16(NAN) & 0x7C00) == 0x7C00);
    CHECK(lloco_fp16_to_fp32(0x0001) == 0x1p-24f);
    CHECK(lloco_fp16_to_fp32(0x7BFF) == 65504.0f);
    CHECK(lloco_fp16_to_fp32(0xFC00) == -INFINITY);
    CHECK(signbit(lloco_fp16_to_fp32(0x8000)));
    /* Every non-NaN half survives a round trip. */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;
        if (lloco_fp32_to_fp16(lloco_fp16_to_fp32((uint16_t)h)) != h) bad++;
    }
    CHECKF(bad == 0, "%d halves do not round-trip", bad);
#ifdef __FLT16_MAX__
    /* Against the compiler's own conversion on a spread of floats. */
    kt_rng rng = {42};
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        const float f = float_of(kt_u32(&rng) & 0xC7FFFFFF); /* |f| < 2^16 or so, and tiny */
        const _Float16 c = (_Float16)f;
        uint16_t want;
        memcpy(&want, &c, 2);
        if (!isnan(f) && lloco_fp32_to_fp16(f) != want && bad++ < 5)
            fprintf(stderr, "    fp16(%a): %04x, compiler %04x\n", f, lloco_fp32_to_fp16(f), want);
    }
    CHECKF(bad == 0, "%d conversions differ from _Float16", bad);
#endif
}

TEST_CASE(bf16_special_values) {
    CHECK(lloco_fp32_to_bf16(1.0f) == 0x3F80);
    CHECK(lloco_fp32_to_bf16(-0.0f) == 0x8000);
    CHECK(lloco_fp32_to_bf16(float_of(0x3F808000)) == 0x3F80); /* tie: to even */
    CHECK(lloco_fp32_to_bf16(float_of(0x3F818000)) == 0x3F82); /* tie: to even */
    CHECK(lloco_fp32_to_bf16(float_of(0x3F808001)) == 0x3F81);
    CHECK(lloco_fp32_to_bf16(INFINITY) == 0x7F80);
    CHECK(lloco_fp32_to_bf16(float_of(0x7F7FFFFF)) == 0x7F80); /* FLT_MAX rounds to inf */
    CHECK(isnan(lloco_bf16_to_fp32(lloco_fp32_to_bf16(NAN))));
    CHECK(isnan(lloco_bf16_to_fp32(lloco_fp32_to_bf16(float_of(0x7F800001))))); /* no NaN -> inf */
    CHECK(lloco_bf16_to_fp32(0xC040) == -3.0f);
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7F80) == 0x7F80 && (h & 0x7F)) continue;
        if (lloco_fp32_to_bf16(lloco_bf16_to_fp32((uint16_t)h)) != h) {
            CHECKF(0, "bf16 %04x does not round-trip", h);
            break;
        }
    }
}

/* Quantize -> dequantize of random rows stays within each format's step. */
TEST_CASE(quant_round_trip) {
    const lloco_dtype types[] = {LLOCO_DTYPE_F32,  LLOCO_DTYPE_F16,  LLOCO_DTYPE_BF16,
                                 LLOCO_DTYPE_Q8_0, LLOCO_DTYPE_Q8_1, LLOCO_DTYPE_Q4_0,
                                 LLOCO_DTYPE_Q4_1, LLOCO_DTYPE_Q8_K};
    enum { N = 2048 };
    kt_rng rng = {7};
    float *x = kt_alloc(N * sizeof(float)), *y = kt_alloc(N * sizeof(float));
    uint8_t *q = kt_alloc(N * 4);
    kt_fill(&rng, x, N, -1.0f, 1.0f);
    for (int b = 0; b < N / 32; b++) { /* blocks of different magnitude, some offset */
        const float s = powf(10.0f, kt_uniform(&rng, -3.0f, 2.0f));
        const float off = b % 3 == 0 ? s * 0.5f : 0.0f;
        for (int j = 0; j < 32; j++) x[b * 32 + j] = x[b * 32 + j] * s + off;
    }
    for (size_t t = 0; t < LLOCO_ARRAY_LEN(types); t++) {
        const lloco_dtype dt = types[t];
        CHECK_OK(lloco_quantize_row(dt, x, q, N));
        CHECK_OK(lloco_dequantize_row(dt, q, y, N));
        const int bs = dt == LLOCO_DTYPE_Q8_K ? 256 : 32;
        int bad = 0;
        for (int b = 0; b < N / bs; b++) {
            float amax = 0, mn = INFINITY, mx = -INFINITY;
            for (int j = 0; j < bs; j++) {
                const float v = x[b * bs + j];
                amax = fmaxf(amax, fabsf(v));
                mn = fminf(mn, v);
                mx = fmaxf(mx, v);
            }
            for (int j = 0; j < bs; j++) {
                const float v = x[b * bs + j], err = fabsf(y[b * bs + j] - v);
                float bound;
                /* fp16 scales are exact to 2^-11 relative, or to 2^-25
                 * absolute once subnormal */
#define FP16_ERR(v) fmaxf(fabsf(v) * 0x1p-11f, 0x1p-25f)
                switch (dt) {
                case LLOCO_DTYPE_F32: bound = 0; break;
                case LLOCO_DTYPE_F16: bound = FP16_ERR(v); break;
                case LLOCO_DTYPE_BF16: bound = fabsf(v) * 0x1p-8f; break;
                /* half a step, plus 127 times the rounding of the scale */
                case LLOCO_DTYPE_Q8_0:
                case LLOCO_DTYPE_Q8_1:
                    bound = amax / 127 * 0.5f + 127 * FP16_ERR(amax / 127);
                    break;
                case LLOCO_DTYPE_Q8_K: bound = amax / 127 * 0.5f * 1.0001f; break;
                /* the far end of the range can clip by one whole step */
                case LLOCO_DTYPE_Q4_0: bound = amax / 8 + 8 * FP16_ERR(amax / 8); break;
                default: /* q4_1: half a step plus the rounding of d and m */
                    bound = (mx - mn) / 15 * 0.5f + 15 * FP16_ERR((mx - mn) / 15) + FP16_ERR(mn);
                }
#undef FP16_ERR
                bound *= 1.0001f;
                if (!(err <= bound) && bad++ < 3)
                    fprintf(stderr, "    %s [%d]: %g -> %g, err %g > %g\n", lloco_dtype_name(dt),
                            b * bs + j, v, y[b * bs + j], err, bound);
            }
        }
        CHECKF(bad == 0, "%s: %d values beyond the error bound", lloco_dtype_name(dt), bad);
    }
    free(x);
    free(y);
    free(q);
}

/* q8_K's block sums must be the sums of its quants. */
TEST_CASE(quant_q8_K_bsums) {
    kt_rng rng = {9};
    float x[512];
    kt_fill(&rng, x, 512, -3.0f, 2.0f);
    block_q8_K q[2];
    CHECK_OK(lloco_quantize_row(LLOCO_DTYPE_Q8_K, x, q, 512));
    for (int b = 0; b < 2; b++)
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += q[b].qs[g * 16 + j];
            CHECK(q[b].bsums[g] == s);
        }
}

/* ---- golden files ------------------------------------------------------- */

typedef struct {
    uint32_t kind; /* 0 dequantize, 1 quantize */
    char dtype[9];
    uint32_t n_elems, n_bytes;
    uint8_t *bytes;
    float *floats;
} golden;

static int golden_read(const char *name, golden *g) {
    char *data;
    size_t len;
    const char *path = lloco_test_fixture(name);
    int rc = lloco_file_read(path, 1 << 20, &data, &len);
    if (rc != 0) {
        CHECKF(0, "%s: %s (run tests/tools/make_quant_golden.py)", path, lloco_last_error());
        return 0;
    }
    memset(g, 0, sizeof *g);
    if (len < 24 || memcmp(data, "LQG1", 4) != 0) {
        CHECKF(0, "%s: not a golden file", path);
        free(data);
        return 0;
    }
    memcpy(&g->kind, data + 4, 4);
    memcpy(g->dtype, data + 8, 8);
    memcpy(&g->n_elems, data + 16, 4);
    memcpy(&g->n_bytes, data + 20, 4);
    if (len != 24 + (size_t)g->n_bytes + 4 * (size_t)g->n_elems) {
        CHECKF(0, "%s: truncated", path);
        free(data);
        return 0;
    }
    g->bytes = kt_alloc(g->n_bytes);
    g->floats = kt_alloc(4 * (size_t)g->n_elems);
    memcpy(g->bytes, data + 24, g->n_bytes);
    memcpy(g->floats, data + 24 + g->n_bytes, 4 * (size_t)g->n_elems);
    free(data);
    return 1;
}

static lloco_dtype dtype_by_name(const char *name) {
    for (int t = 0; t < LLOCO_DTYPE_COUNT; t++)
        if (strcmp(lloco_dtype_name((lloco_dtype)t), name) == 0) return (lloco_dtype)t;
    return LLOCO_DTYPE_COUNT;
}

/* Distance in units in the last place (0 for equal, including both NaN). */
static uint32_t ulps(float a, float b) {
    if (isnan(a) && isnan(b)) return 0;
    int32_t ia = (int32_t)bits_of(a), ib = (int32_t)bits_of(b);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return ia > ib ? (uint32_t)ia - (uint32_t)ib : (uint32_t)ib - (uint32_t)ia;
}

TEST_CASE(quant_golden_dequantize) {
    static const char *files[] = {"quant/dequant_q8_0.bin", "quant/dequant_q4_0.bin",
                                  "quant/dequant_q4_1.bin", "quant/dequant_q4_K.bin",
                                  "quant/dequant_q6_K.bin", "quant/dequant_bf16.bin"};
    kt_backends bs;
    kt_backends_open(&bs);
    for (size_t f = 0; f < LLOCO_ARRAY_LEN(files); f++) {
        golden g;
        if (!golden_read(files[f], &g)) continue;
        const lloco_dtype dt = dtype_by_name(g.dtype);
        CHECKF(g.kind == 0 && dt != LLOCO_DTYPE_COUNT, "%s: kind %u dtype %s", files[f], g.kind,
               g.dtype);
        CHECKF(lloco_dtype_row_bytes(dt, g.n_elems) == g.n_bytes, "%s: size", files[f]);
        float *y = kt_alloc(4 * (size_t)g.n_elems);
        CHECK_OK(lloco_dequantize_row(dt, g.bytes, y, g.n_elems));
        int bad = 0;
        for (uint32_t i = 0; i < g.n_elems; i++)
            if (ulps(y[i], g.floats[i]) > 1 && bad++ < 3)
                fprintf(stderr, "    %s [%u]: gguf %.9g, lloco %.9g\n", files[f], i, g.floats[i],
                        y[i]);
        CHECKF(bad == 0, "%s: %d values differ from gguf-py by more than 1 ulp", files[f], bad);
        /* get_rows of every backend reads rows the same way */
        const int d = dt == LLOCO_DTYPE_Q4_K || dt == LLOCO_DTYPE_Q6_K ? 256 : 32;
        const int32_t ids[] = {1, 0, (int32_t)(g.n_elems / d - 1)};
        float ref[3 * 256], got[3 * 256];
        lloco_backend *be_ref;
        CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU_REF, 1, &be_ref));
        lloco_op_get_rows(be_ref, g.bytes, dt, d, ids, 3, ref);
        for (int r = 0; r < 3; r++)
            CHECK(memcmp(ref + r * d, y + (size_t)ids[r] * d, (size_t)d * 4) == 0);
        for (int b = 0; b < bs.n; b++) {
            lloco_op_get_rows(bs.be[b], g.bytes, dt, d, ids, 3, got);
            char what[128];
            snprintf(what, sizeof what, "get_rows %s %s", g.dtype, bs.label[b]);
            kt_compare(what, ref, got, 3 * d, 0, 0, 0);
        }
        lloco_backend_free(be_ref);
        free(y);
        free(g.bytes);
        free(g.floats);
    }
    kt_backends_close(&bs);
}

TEST_CASE(quant_golden_quantize) {
    static const char *files[] = {"quant/quant_q8_0.bin", "quant/quant_q4_0.bin",
                                  "quant/quant_q4_1.bin", "quant/quant_bf16.bin",
                                  "quant/quant_f16.bin"};
    for (size_t f = 0; f < LLOCO_ARRAY_LEN(files); f++) {
        golden g;
        if (!golden_read(files[f], &g)) continue;
        const lloco_dtype dt = dtype_by_name(g.dtype);
        CHECKF(g.kind == 1 && dt != LLOCO_DTYPE_COUNT, "%s: kind %u dtype %s", files[f], g.kind,
               g.dtype);
        CHECKF(lloco_dtype_row_bytes(dt, g.n_elems) == g.n_bytes, "%s: size", files[f]);
        uint8_t *q = kt_alloc(g.n_bytes);
        CHECK_OK(lloco_quantize_row(dt, g.floats, q, g.n_elems));
        int bad = 0;
        for (uint32_t i = 0; i < g.n_bytes; i++)
            if (q[i] != g.bytes[i] && bad++ < 3)
                fprintf(stderr, "    %s byte %u: gguf %02x, lloco %02x\n", files[f], i, g.bytes[i],
                        q[i]);
        CHECKF(bad == 0, "%s: %d bytes differ from gguf-py", files[f], bad);
        free(q);
        free(g.bytes);
        free(g.floats);
    }
}
