/* quant: the element-type table, fp16/bf16 conversions and the reference
 * quantize/dequantize of one row per dtype. Rounding follows GGML's *_ref
 * quantizers exactly, so bytes we produce equal the ones GGML would write.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/blocks.h"
#include "kernels/kernels.h"

static const struct {
    const char *name;
    int block_elems;
    size_t block_bytes;
    lloco_dtype vec_dot_type;
} dtype_info[LLOCO_DTYPE_COUNT] = {
    [LLOCO_DTYPE_F32] = {"f32", 1, 4, LLOCO_DTYPE_F32},
    [LLOCO_DTYPE_F16] = {"f16", 1, 2, LLOCO_DTYPE_F32},
    [LLOCO_DTYPE_BF16] = {"bf16", 1, 2, LLOCO_DTYPE_F32},
    [LLOCO_DTYPE_Q8_0] = {"q8_0", QK32, sizeof(block_q8_0), LLOCO_DTYPE_Q8_0},
    [LLOCO_DTYPE_Q4_0] = {"q4_0", QK32, sizeof(block_q4_0), LLOCO_DTYPE_Q8_0},
    [LLOCO_DTYPE_Q4_1] = {"q4_1", QK32, sizeof(block_q4_1), LLOCO_DTYPE_Q8_1},
    [LLOCO_DTYPE_Q4_K] = {"q4_K", QK_K, sizeof(block_q4_K), LLOCO_DTYPE_Q8_K},
    [LLOCO_DTYPE_Q6_K] = {"q6_K", QK_K, sizeof(block_q6_K), LLOCO_DTYPE_Q8_K},
    [LLOCO_DTYPE_Q8_1] = {"q8_1", QK32, sizeof(block_q8_1), LLOCO_DTYPE_Q8_1},
    [LLOCO_DTYPE_Q8_K] = {"q8_K", QK_K, sizeof(block_q8_K), LLOCO_DTYPE_Q8_K},
};

static int dtype_valid(lloco_dtype t) { return (unsigned)t < LLOCO_DTYPE_COUNT; }

const char *lloco_dtype_name(lloco_dtype t) {
    return dtype_valid(t) ? dtype_info[t].name : "invalid";
}

int lloco_dtype_block_elems(lloco_dtype t) {
    return dtype_valid(t) ? dtype_info[t].block_elems : 0;
}

size_t lloco_dtype_block_bytes(lloco_dtype t) {
    return dtype_valid(t) ? dtype_info[t].block_bytes : 0;
}

size_t lloco_dtype_row_bytes(lloco_dtype t, int64_t n) {
    if (!dtype_valid(t) || n < 0 || n % dtype_info[t].block_elems) return 0;
    return (size_t)(n / dtype_info[t].block_elems) * dtype_info[t].block_bytes;
}

lloco_dtype lloco_dtype_vec_dot_type(lloco_dtype t) {
    return dtype_valid(t) ? dtype_info[t].vec_dot_type : LLOCO_DTYPE_F32;
}

/* ---- fp16 / bf16 -------------------------------------------------------- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float lloco_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000 | (mant << 13));
    if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    /* Subnormal (or zero): mant units of 2^-24, exact in f32. */
    return f32_from_bits(sign | f32_bits((float)mant * 0x1p-24f));
}

uint16_t lloco_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFF;
    if (x > 0x7F800000) /* NaN: keep the top payload bits, force quiet (as F16C) */
        return sign | 0x7E00 | (uint16_t)((x >> 13) & 0x3FF);
    if (x >= 0x477FF000) return sign | 0x7C00; /* rounds past 65504: inf */
    if (x < 0x38800000) {
        /* Below 2^-14 the result is a multiple of 2^-24; lrintf rounds to
         * nearest even, and 1024 lands exactly on the smallest normal. */
        return sign | (uint16_t)lrintf(f32_from_bits(x) * 0x1p24f);
    }
    /* Normal: rebias the exponent, round the 13 dropped bits to nearest even;
     * a carry out of the mantissa correctly bumps the exponent. */
    x += 0xFFF + ((x >> 13) & 1);
    return sign | (uint16_t)((x >> 13) - (112 << 10));
}

float lloco_bf16_to_fp32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t lloco_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((x >> 16) | 64); /* quiet NaN */
    return (uint16_t)((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

/* ---- quantizers (GGML *_ref rounding) ----------------------------------- */

/* Round half to even via the f32 mantissa, as GGML's nearest_int. Valid for
 * |f| < 2^22; callers pass values within +-128. */
static int nearest_int(float f) {
    uint32_t i = f32_bits(f + 12582912.f);
    return (int)(i & 0x007FFFFF) - 0x00400000;
}

/* The 8-bit activation formats follow GGML's x86 quantize_row_q8_0/q8_1
 * (id = 127 / amax, round half to even) rather than the *_ref versions
 * (id = 1 / d, round half away): that is what llama.cpp computes on the
 * machines lloco runs on, and matching it keeps greedy decoding identical. */
static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        float amax = 0.0f;
        for (int j = 0; j < QK32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d = lloco_fp32_to_fp16(d);
        for (int j = 0; j < QK32; j++) y[i].qs[j] = (int8_t)nearest_int(x[j] * id);
    }
}

static void quantize_q8_1(const float *x, block_q8_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        float amax = 0.0f;
        for (int j = 0; j < QK32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK32; j++) {
            y[i].qs[j] = (int8_t)nearest_int(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = lloco_fp32_to_fp16(d);
        y[i].s = lloco_fp32_to_fp16((float)sum * d);
    }
}

static void quantize_q4_0(const float *x, block_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        /* The scale is signed so that the largest-magnitude element maps to
         * -8 exactly, using the full 16 levels. */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = lloco_fp32_to_fp16(d);
        for (int j = 0; j < QK32 / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + QK32 / 2] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_q4_1(const float *x, block_q4_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = lloco_fp32_to_fp16(d);
        y[i].m = lloco_fp32_to_fp16(min);
        for (int j = 0; j < QK32 / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f);
            int q1 = (int)((x[j + QK32 / 2] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_q8_K(const float *x, block_q8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        memset(&y[i], 0, sizeof y[i]);
        if (amax == 0.0f) continue;
        /* -127/max maps the extreme element to -127 exactly (not -128), so
         * the quants stay symmetric. */
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[i].qs[g * 16 + j];
            y[i].bsums[g] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

int lloco_quantize_row(lloco_dtype t, const float *x, void *dst, int64_t n) {
    if (!dtype_valid(t)) return lloco_error(LLOCO_ERR_INVAL, "quantize: bad dtype %d", (int)t);
    if (n < 0 || n % dtype_info[t].block_elems)
        return lloco_error(LLOCO_ERR_INVAL,
                           "quantize: %lld elements is not a multiple of %s's block of %d",
                           (long long)n, dtype_info[t].name, dtype_info[t].block_elems);
    const int64_t nb = n / dtype_info[t].block_elems;
    switch (t) {
    case LLOCO_DTYPE_F32: memcpy(dst, x, (size_t)n * sizeof(float)); return 0;
    case LLOCO_DTYPE_F16:
    case LLOCO_DTYPE_BF16: {
        uint8_t *p = dst;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = t == LLOCO_DTYPE_F16 ? lloco_fp32_to_fp16(x[i]) : lloco_fp32_to_bf16(x[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return 0;
    }
    case LLOCO_DTYPE_Q8_0: quantize_q8_0(x, dst, nb); return 0;
    case LLOCO_DTYPE_Q8_1: quantize_q8_1(x, dst, nb); return 0;
    case LLOCO_DTYPE_Q4_0: quantize_q4_0(x, dst, nb); return 0;
    case LLOCO_DTYPE_Q4_1: quantize_q4_1(x, dst, nb); return 0;
    case LLOCO_DTYPE_Q8_K: quantize_q8_K(x, dst, nb); return 0;
    default:
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "quantize: no quantizer for %s",
                           dtype_info[t].name);
    }
}

/* ---- dequantizers ------------------------------------------------------- */

static void dequantize_q4_K(const block_q4_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = FP16(x[i].d), dmin = FP16(x[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            int sc, mn;
            q4k_scale_min(x[i].scales, e / 32, &sc, &mn);
            const uint8_t q = x[i].qs[32 * (e / 64) + e % 32];
            const int v = (e / 32) % 2 ? q >> 4 : q & 0x0F;
            y[i * QK_K + e] = d * (float)sc * (float)v - dmin * (float)mn;
        }
    }
}

static void dequantize_q6_K(const block_q6_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = FP16(x[i].d);
        for (int e = 0; e < QK_K; e++)
            y[i * QK_K + e] = d * (float)x[i].scales[e / 16] * (float)q6k_value(&x[i], e);
    }
}

int lloco_dequantize_row(lloco_dtype t, const void *src, float *y, int64_t n) {
    if (!dtype_valid(t)) return lloco_error(LLOCO_ERR_INVAL, "dequantize: bad dtype %d", (int)t);
    if (n < 0 || n % dtype_info[t].block_elems)
        return lloco_error(LLOCO_ERR_INVAL,
                           "dequantize: %lld elements is not a multiple of %s's block of %d",
                           (long long)n, dtype_info[t].name, dtype_info[t].block_elems);
    const int64_t nb = n / dtype_info[t].block_elems;
    switch (t) {
    case LLOCO_DTYPE_F32: memcpy(y, src, (size_t)n * sizeof(float)); break;
    case LLOCO_DTYPE_F16:
    case LLOCO_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)src + 2 * i, 2);
            y[i] = t == LLOCO_DTYPE_F16 ? lloco_fp16_to_fp32(h) : lloco_bf16_to_fp32(h);
        }
        break;
    case LLOCO_DTYPE_Q8_0: {
        const block_q8_0 *b = src;
        for (int64_t i = 0; i < n; i++)
            y[i] = FP16(b[i / QK32].d) * (float)b[i / QK32].qs[i % QK32];
        break;
    }
    case LLOCO_DTYPE_Q8_1: {
        const block_q8_1 *b = src;
        for (int64_t i = 0; i < n; i++)
            y[i] = FP16(b[i / QK32].d) * (float)b[i / QK32].qs[i % QK32];
        break;
    }
    case LLOCO_DTYPE_Q4_0: {
        const block_q4_0 *b = src;
        for (int64_t i = 0; i < nb; i++) {
            const float d = FP16(b[i].d);
            for (int j = 0; j < QK32 / 2; j++) { /* (q-8)*d, GGML's rounding */
                y[i * QK32 + j] = (float)((b[i].qs[j] & 0x0F) - 8) * d;
                y[i * QK32 + j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    case LLOCO_DTYPE_Q4_1: {
        const block_q4_1 *b = src;
        for (int64_t i = 0; i < nb; i++) {
            const float d = FP16(b[i].d), m = FP16(b[i].m);
            for (int j = 0; j < QK32 / 2; j++) {
                y[i * QK32 + j] = (float)(b[i].qs[j] & 0x0F) * d + m;
                y[i * QK32 + j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
            }
        }
        break;
    }
    case LLOCO_DTYPE_Q4_K: dequantize_q4_K(src, y, nb); break;
    case LLOCO_DTYPE_Q6_K: dequantize_q6_K(src, y, nb); break;
    case LLOCO_DTYPE_Q8_K: {
        const block_q8_K *b = src;
        for (int64_t i = 0; i < n; i++) y[i] = b[i / QK_K].d * (float)b[i / QK_K].qs[i % QK_K];
        break;
    }
    default: return lloco_error(LLOCO_ERR_INVAL, "dequantize: bad dtype %d", (int)t);
    }
    return 0;
}
