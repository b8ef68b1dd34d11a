/* cpu_ref: the reference backend. Every op written as plainly as possible,
 * single-threaded and allocation-free; the optimized backends are tested
 * against these, and fall back to them for what they do not speed up.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "kernels/blocks.h"

/* ---- matmul ------------------------------------------------------------- */

/* Element e of a row of a float-typed matrix. */
static float float_elem(const void *row, lloco_dtype t, size_t e) {
    if (t == LLOCO_DTYPE_F32) {
        float f;
        memcpy(&f, (const uint8_t *)row + 4 * e, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const uint8_t *)row + 2 * e, 2);
    return t == LLOCO_DTYPE_F16 ? lloco_fp16_to_fp32(h) : lloco_bf16_to_fp32(h);
}

/* One block of activations in any of the vec-dot formats. */
typedef union {
    block_q8_0 q8_0;
    block_q8_1 q8_1;
    block_q8_K q8_K;
} act_block;

/* Dot of one weight block with one activation block, as GGML's
 * ggml_vec_dot_<w>_<act>_generic sums it: exact integer sums scaled once. */
static float block_dot(lloco_dtype wt, const void *wb, const act_block *a) {
    int sumi = 0;
    switch (wt) {
    case LLOCO_DTYPE_Q8_0: {
        const block_q8_0 *b = wb;
        for (int j = 0; j < QK32; j++) sumi += b->qs[j] * a->q8_0.qs[j];
        return (float)sumi * (FP16(b->d) * FP16(a->q8_0.d));
    }
    case LLOCO_DTYPE_Q4_0: {
        const block_q4_0 *b = wb;
        for (int j = 0; j < QK32 / 2; j++) {
            sumi += ((b->qs[j] & 0x0F) - 8) * a->q8_0.qs[j];
            sumi += ((b->qs[j] >> 4) - 8) * a->q8_0.qs[j + 16];
        }
        return (float)sumi * (FP16(b->d) * FP16(a->q8_0.d));
    }
    case LLOCO_DTYPE_Q4_1: {
        /* sum((d_w q + m_w) d_a q_a) = d_w d_a sum(q q_a) + m_w (d_a sum(q_a)),
         * and the activation block carries s = d_a sum(q_a). */
        const block_q4_1 *b = wb;
        for (int j = 0; j < QK32 / 2; j++) {
            sumi += (b->qs[j] & 0x0F) * a->q8_1.qs[j];
            sumi += (b->qs[j] >> 4) * a->q8_1.qs[j + 16];
        }
        return (FP16(b->d) * FP16(a->q8_1.d)) * (float)sumi + FP16(b->m) * FP16(a->q8_1.s);
    }
    case LLOCO_DTYPE_Q4_K: {
        /* x = d*sc*q - dmin*mn per 32-element sub-block; the min term only
         * needs the activation's sums, which q8_K keeps per 16 elements. */
        const block_q4_K *b = wb;
        int summ = 0;
        for (int sb = 0; sb < 8; sb++) {
            int sc, mn, dot = 0;
            q4k_scale_min(b->scales, sb, &sc, &mn);
            for (int l = 0; l < 32; l++) {
                const uint8_t q = b->qs[32 * (sb / 2) + l];
                dot += (sb % 2 ? q >> 4 : q & 0x0F) * a->q8_K.qs[32 * sb + l];
            }
            sumi += sc * dot;
            summ += mn * (a->q8_K.bsums[2 * sb] + a->q8_K.bsums[2 * sb + 1]);
        }
        return FP16(b->d) * a->q8_K.d * (float)sumi - FP16(b->dmin) * a->q8_K.d * (float)summ;
    }
    case LLOCO_DTYPE_Q6_K: {
        const block_q6_K *b = wb;
        for (int g = 0; g < QK_K / 16; g++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += q6k_value(b, 16 * g + l) * a->q8_K.qs[16 * g + l];
            sumi += b->scales[g] * dot;
        }
        return FP16(b->d) * a->q8_K.d * (float)sumi;
    }
    default: LLOCO_ASSERT(!"block_dot: not a quantized weight type"); return 0;
    }
}

float lloco_ref_vec_dot(lloco_dtype wt, const void *w_row, const void *act_row, int k) {
    const int qk = lloco_dtype_block_elems(wt);
    const size_t wbb = lloco_dtype_block_bytes(wt);
    const size_t abb = lloco_dtype_block_bytes(lloco_dtype_vec_dot_type(wt));
    float sum = 0.0f;
    for (int b = 0; b < k / qk; b++) {
        act_block a;
        memcpy(&a, (const uint8_t *)act_row + b * abb, abb);
        sum += block_dot(wt, (const uint8_t *)w_row + b * wbb, &a);
    }
    return sum;
}

void lloco_ref_matmul(lloco_backend *be, const void *w, lloco_dtype wt, int n, int k,
                      const float *x, int m, float *y) {
    (void)be;
    const size_t row_bytes = lloco_dtype_row_bytes(wt, k);
    const lloco_dtype at = lloco_dtype_vec_dot_type(wt);
    if (at == LLOCO_DTYPE_F32) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                const void *row = (const uint8_t *)w + (size_t)j * row_bytes;
                float sum = 0.0f;
                for (int e = 0; e < k; e++)
                    sum += x[(size_t)i * k + e] * float_elem(row, wt, (size_t)e);
                y[(size_t)i * n + j] = sum;
            }
        }
        return;
    }
    /* Block by block: quantize one activation block, dot it with that block
     * of every weight row. The per-output sums accumulate in block order, as
     * GGML's vec_dot does. */
    const int qk = lloco_dtype_block_elems(wt);
    const size_t wbb = lloco_dtype_block_bytes(wt);
    for (int i = 0; i < m; i++) {
        float *yi = y + (size_t)i * n;
        for (int j = 0; j < n; j++) yi[j] = 0.0f;
        for (int b = 0; b < k / qk; b++) {
            act_block a;
            lloco_quantize_row(at, x + (size_t)i * k + (size_t)b * qk, &a, qk);
            for (int j = 0; j < n; j++)
                yi[j] += block_dot(wt, (const uint8_t *)w + (size_t)j * row_bytes + b * wbb, &a);
        }
    }
}

/* ---- normalization ------------------------------------------------------ */

void lloco_ref_rmsnorm(lloco_backend *be, const float *x, const float *w, int m, int d, float eps,
                       float *y) {
    (void)be;
    for (int i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        double ss = 0.0;
        for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
        const float scale = 1.0f / sqrtf((float)(ss / d) + eps);
        for (int j = 0; j < d; j++) yi[j] = xi[j] * scale * w[j];
    }
}

void lloco_ref_layernorm(lloco_backend *be, const float *x, const float *w, const float *b, int m,
                         int d, float eps, float *y) {
    (void)be;
    for (int i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        double sum = 0.0;
        for (int j = 0; j < d; j++) sum += xi[j];
        const float mean = (float)(sum / d);
        double var = 0.0;
        for (int j = 0; j < d; j++) var += (double)(xi[j] - mean) * (xi[j] - mean);
        const float scale = 1.0f / sqrtf((float)(var / d) + eps);
        for (int j = 0; j < d; j++) yi[j] = (xi[j] - mean) * scale * w[j] + (b ? b[j] : 0.0f);
    }
}

/* ---- rotary embedding --------------------------------------------------- */

void lloco_ref_rope(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                    const int32_t *pos, const float *inv_freq, float mscale, int neox) {
    (void)be;
    const int half = rot_dim / 2;
    for (int i = 0; i < m; i++) {
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                const float theta = (float)pos[i] * inv_freq[j];
                const float c = cosf(theta) * mscale, s = sinf(theta) * mscale;
                float *a = neox ? &v[j] : &v[2 * j];
                float *b = neox ? &v[j + half] : &v[2 * j + 1];
                const float x0 = *a, x1 = *b;
                *a = x0 * c - x1 * s;
                *b = x0 * s + x1 * c;
            }
        }
    }
}

/* ---- elementwise -------------------------------------------------------- */

void lloco_ref_softmax(lloco_backend *be, float *x, int m, int n) {
    (void)be;
    for (int i = 0; i < m; i++) {
        float *xi = x + (size_t)i * n;
        float max = -INFINITY;
        for (int j = 0; j < n; j++) max = fmaxf(max, xi[j]);
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            xi[j] = expf(xi[j] - max);
            sum += xi[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < n; j++) xi[j] *= inv;
    }
}

void lloco_ref_silu_mul(lloco_backend *be, const float *gate, const float *up, float *out,
                        int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void lloco_ref_gelu(lloco_backend *be, float *x, int64_t n, int approx) {
    (void)be;
    const float sqrt_2_over_pi = 0.7978845608028654f;
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        if (approx)
            x[i] = 0.5f * v * (1.0f + tanhf(sqrt_2_over_pi * (v + 0.044715f * v * v * v)));
        else
            x[i] = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    }
}

void lloco_ref_add(lloco_backend *be, float *y, const float *x, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* ---- row movement ------------------------------------------------------- */

void lloco_ref_get_rows(lloco_backend *be, const void *table, lloco_dtype t, int d,
                        const int32_t *ids, int m, float *out) {
    (void)be;
    const size_t row_bytes = lloco_dtype_row_bytes(t, d);
    for (int i = 0; i < m; i++)
        lloco_dequantize_row(t, (const uint8_t *)table + (size_t)ids[i] * row_bytes,
                             out + (size_t)i * d, d);
}

void lloco_ref_store_rows(lloco_backend *be, const float *x, int m, int d, void *dst, lloco_dtype t,
                          int stride) {
    (void)be;
    const size_t esize = lloco_dtype_block_bytes(t);
    for (int r = 0; r < m; r++)
        lloco_quantize_row(t, x + (size_t)r * d, (uint8_t *)dst + (size_t)r * stride * esize, d);
}

/* ---- attention ---------------------------------------------------------- */

void lloco_ref_attention(lloco_backend *be, const float *q, int m, int p0, int n_head,
                         int n_kv_head, int head_dim, const void *k, const void *v,
                         lloco_dtype kv_type, int kv_stride, float scale, float *out) {
    (void)be;
    const int group = n_head / n_kv_head;
    const int row = n_head * head_dim;
    for (int i = 0; i < m; i++) {
        const int n_pos = p0 + i + 1; /* causal: positions 0..p0+i */
        for (int h = 0; h < n_head; h++) {
            const float *qh = q + (size_t)i * row + (size_t)h * head_dim;
            float *o = out + (size_t)i * row + (size_t)h * head_dim;
            const size_t head_off = (size_t)(h / group) * head_dim;
            /* Two passes instead of a scores buffer: the first finds the
             * max score, the second sums exp(score - max) and the weighted
             * values. */
            float max = -INFINITY;
            for (int p = 0; p < n_pos; p++) {
                const size_t off = (size_t)p * kv_stride + head_off;
                float s = 0.0f;
                for (int e = 0; e < head_dim; e++) s += qh[e] * float_elem(k, kv_type, off + e);
                max = fmaxf(max, s * scale);
            }
            float sum = 0.0f;
            for (int e = 0; e < head_dim; e++) o[e] = 0.0f;
            for (int p = 0; p < n_pos; p++) {
                const size_t off = (size_t)p * kv_stride + head_off;
                float s = 0.0f;
                for (int e = 0; e < head_dim; e++) s += qh[e] * float_elem(k, kv_type, off + e);
                const float pw = expf(s * scale - max);
                sum += pw;
                for (int e = 0; e < head_dim; e++) o[e] += pw * float_elem(v, kv_type, off + e);
            }
            for (int e = 0; e < head_dim; e++) o[e] /= sum;
        }
    }
}

/* ---- the backend -------------------------------------------------------- */

static void ref_free(lloco_backend *be) { (void)be; }

static const lloco_backend_i ref_iface = {
    .free = ref_free,
    .matmul = lloco_ref_matmul,
    .rmsnorm = lloco_ref_rmsnorm,
    .layernorm = lloco_ref_layernorm,
    .rope = lloco_ref_rope,
    .softmax = lloco_ref_softmax,
    .silu_mul = lloco_ref_silu_mul,
    .gelu = lloco_ref_gelu,
    .add = lloco_ref_add,
    .get_rows = lloco_ref_get_rows,
    .attention = lloco_ref_attention,
    .store_rows = lloco_ref_store_rows,
};

int lloco_backend_init_cpu_ref(lloco_backend *be) {
    be->iface = &ref_iface;
    be->name = "cpu-ref";
    be->n_threads = 1;
    snprintf(be->describe, sizeof be->describe, "plain C reference, 1 thread");
    return 0;
}
