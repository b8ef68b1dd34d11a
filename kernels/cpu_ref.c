/* cpu_ref: the reference backend. Every op written as plainly as possible,
 * single-threaded and allocation-free, in the float operation order of
 * GGML's CPU code (see kernels.h): this is the spec the optimized backends
 * repeat bit for bit, and fall back to for what they do not speed up.
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

static int is_lane_type(lloco_dtype wt) {
    return wt == LLOCO_DTYPE_Q8_0 || wt == LLOCO_DTYPE_Q4_0 || wt == LLOCO_DTYPE_Q4_1;
}

/* The running sums of one output of a Q8_0/Q4_0/Q4_1 matmul, in GGML's x86
 * vec_dot order (see lloco_op_matmul): eight float lanes, and the Q4_1
 * minimum term. */
typedef struct {
    float lane[8];
    float summs;
} lane_dot;

/* Weight value e (0..31) of a Q8_0/Q4_0/Q4_1 block, without its offset. */
static int lane_weight(lloco_dtype wt, const void *wb, int e) {
    if (wt == LLOCO_DTYPE_Q8_0) return ((const block_q8_0 *)wb)->qs[e];
    const uint8_t *qs =
        wt == LLOCO_DTYPE_Q4_1 ? ((const block_q4_1 *)wb)->qs : ((const block_q4_0 *)wb)->qs;
    const int q = e < 16 ? qs[e] & 0x0F : qs[e - 16] >> 4;
    return wt == LLOCO_DTYPE_Q4_0 ? q - 8 : q;
}

static void lane_dot_block(lloco_dtype wt, const void *wb, const act_block *a, lane_dot *st) {
    uint16_t dw16;
    memcpy(&dw16, wb, 2); /* d leads every block */
    const int8_t *aq = wt == LLOCO_DTYPE_Q4_1 ? a->q8_1.qs : a->q8_0.qs;
    const float dd = FP16(dw16) * FP16(wt == LLOCO_DTYPE_Q4_1 ? a->q8_1.d : a->q8_0.d);
    for (int j = 0; j < 8; j++) {
        int sumi = 0;
        for (int e = 4 * j; e < 4 * j + 4; e++) sumi += lane_weight(wt, wb, e) * aq[e];
        st->lane[j] = fmaf(dd, (float)sumi, st->lane[j]);
    }
    if (wt == LLOCO_DTYPE_Q4_1)
        st->summs = fmaf(FP16(((const block_q4_1 *)wb)->m), FP16(a->q8_1.s), st->summs);
}

/* hsum_float_8 of GGML's x86 code, then the minimum term. */
static float lane_dot_result(const lane_dot *st) {
    const float *l = st->lane;
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])) + st->summs;
}

/* Dot of one K-quant weight block with one activation block, as GGML's
 * ggml_vec_dot_<w>_q8_K_generic sums it: exact integer sums scaled once. */
static float kquant_block_dot(lloco_dtype wt, const void *wb, const act_block *a) {
    int sumi = 0;
    switch (wt) {
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
    default: LLOCO_ASSERT(!"kquant_block_dot: not a K-quant"); return 0;
    }
}

float lloco_ref_vec_dot(lloco_dtype wt, const void *w_row, const void *act_row, int k) {
    const int qk = lloco_dtype_block_elems(wt);
    const size_t wbb = lloco_dtype_block_bytes(wt);
    const size_t abb = lloco_dtype_block_bytes(lloco_dtype_vec_dot_type(wt));
    lane_dot st = {{0}, 0.0f};
    float sum = 0.0f;
    for (int b = 0; b < k / qk; b++) {
        act_block a;
        memcpy(&a, (const uint8_t *)act_row + b * abb, abb);
        if (is_lane_type(wt))
            lane_dot_block(wt, (const uint8_t *)w_row + b * wbb, &a, &st);
        else
            sum += kquant_block_dot(wt, (const uint8_t *)w_row + b * wbb, &a);
    }
    return is_lane_type(wt) ? lane_dot_result(&st) : sum;
}

/* Outputs whose running sums the reference keeps at once (on the stack):
 * each activation block is quantized once per this many outputs. */
#define REF_MM_CHUNK 64

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
     * of a chunk of weight rows. The per-output sums accumulate in block
     * order, as GGML's vec_dot does. */
    const int qk = lloco_dtype_block_elems(wt);
    const size_t wbb = lloco_dtype_block_bytes(wt);
    for (int i = 0; i < m; i++) {
        float *yi = y + (size_t)i * n;
        for (int j0 = 0; j0 < n; j0 += REF_MM_CHUNK) {
            const int nj = n - j0 < REF_MM_CHUNK ? n - j0 : REF_MM_CHUNK;
            lane_dot st[REF_MM_CHUNK];
            memset(st, 0, sizeof st);
            for (int j = 0; j < nj; j++) yi[j0 + j] = 0.0f;
            for (int b = 0; b < k / qk; b++) {
                act_block a;
                lloco_quantize_row(at, x + (size_t)i * k + (size_t)b * qk, &a, qk);
                for (int j = 0; j < nj; j++) {
                    const uint8_t *wb = (const uint8_t *)w + (size_t)(j0 + j) * row_bytes + b * wbb;
                    if (is_lane_type(wt))
                        lane_dot_block(wt, wb, &a, &st[j]);
                    else
                        yi[j0 + j] += kquant_block_dot(wt, wb, &a);
                }
            }
            if (is_lane_type(wt))
                for (int j = 0; j < nj; j++) yi[j0 + j] = lane_dot_result(&st[j]);
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
        for (int j = 0; j < d; j++) ss += (double)(xi[j] * xi[j]);
        const float mean = (float)(ss / d);
        const float scale = 1.0f / sqrtf(mean + eps);
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

/* Pairs whose cos/sin are kept at once. */
#define ROPE_CHUNK 64

void lloco_ref_rope_row(float *x, int n_heads, int head_dim, int rot_dim, int32_t pos,
                        const lloco_rope_params *rp, int neox) {
    const int half = rot_dim / 2;
    /* GGML's normal mode runs its pairs through a loop vectorized by 8 and 4
     * pairs, whose compiled form fuses the products; the last pairs stay
     * scalar and unfused. Neox mode fuses every pair. */
    const int n_fused = neox ? half : half & ~3;
    float cs[ROPE_CHUNK], sn[ROPE_CHUNK];
    float theta = (float)pos;
    for (int j0 = 0; j0 < half; j0 += ROPE_CHUNK) {
        const int len = half - j0 < ROPE_CHUNK ? half - j0 : ROPE_CHUNK;
        for (int t = 0; t < len; t++) {
            float angle = rp->freq_factors ? theta / rp->freq_factors[j0 + t] : theta;
            angle = rp->freq_scale * angle;
            cs[t] = cosf(angle) * rp->mscale;
            sn[t] = sinf(angle) * rp->mscale;
            theta *= rp->theta_scale;
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * head_dim;
            for (int t = 0; t < len; t++) {
                const int j = j0 + t;
                float *a = neox ? &v[j] : &v[2 * j];
                float *b = neox ? &v[j + half] : &v[2 * j + 1];
                const float x0 = *a, x1 = *b;
                if (j < n_fused) {
                    *a = fmaf(x0, cs[t], -(x1 * sn[t]));
                    *b = fmaf(x0, sn[t], x1 * cs[t]);
                } else {
                    *a = x0 * cs[t] - x1 * sn[t];
                    *b = x0 * sn[t] + x1 * cs[t];
                }
            }
        }
    }
}

void lloco_ref_rope(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                    const int32_t *pos, const lloco_rope_params *rp, int neox) {
    (void)be;
    for (int i = 0; i < m; i++)
        lloco_ref_rope_row(x + (size_t)i * n_heads * head_dim, n_heads, head_dim, rot_dim, pos[i],
                           rp, neox);
}

/* ---- GGML's vectorized exp ------------------------------------------------ */

float lloco_expf_ggml(float x) {
    /* n = round(x / ln2) by the 1.5 * 2^23 trick, b = x - n ln2 in two
     * parts, exp(b) by a polynomial in b and b^2: the operations of
     * ggml_v_expf, each fused where it fuses. */
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                              fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    if (n != n) return n;
    return ldexpf(j, (int)n); /* _mm512_scalef_ps: one rounding, as ldexpf */
}

/* The lane tree of _mm512_reduce_add_ps over 16 values. */
static float tree16(const float *v) {
    float t[8], u[4];
    for (int i = 0; i < 8; i++) t[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) u[i] = t[i] + t[i + 4];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

/* ---- elementwise -------------------------------------------------------- */

void lloco_ref_softmax(lloco_backend *be, float *x, int m, int n) {
    (void)be;
    for (int i = 0; i < m; i++) {
        float *xi = x + (size_t)i * n;
        float max = -INFINITY;
        for (int j = 0; j < n; j++) max = fmaxf(max, xi[j]);
        double sum = 0.0;
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            for (int t = 0; t < 16; t++) xi[j + t] = lloco_expf_ggml(xi[j + t] - max);
            sum += (double)tree16(xi + j);
        }
        for (; j < n; j++) {
            xi[j] = expf(xi[j] - max);
            sum += (double)xi[j];
        }
        const float inv = (float)(1.0 / sum);
        for (j = 0; j < n; j++) xi[j] *= inv;
    }
}

void lloco_ref_silu_mul(lloco_backend *be, const float *gate, const float *up, float *out,
                        int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + lloco_expf_ggml(0.0f - g)) * up[i];
    }
}

/* Constants of lloco_gelu, shared with the SIMD kernels. */
const float lloco_gelu_k[8] = {
    0.70710678118654752f, /* 1 / sqrt(2) */
    0.3275911f,           /* p */
    0.254829592f,  -0.284496736f, 1.421413741f, -1.453152027f, 1.061405429f, /* a1..a5 */
    -1.5957691216057308f, /* -2 sqrt(2 / pi) */
};

float lloco_gelu(float x, int approx) {
    const float *k = lloco_gelu_k;
    if (approx) return x / (1.0f + lloco_expf_ggml(k[7] * fmaf(0.044715f, x * x * x, x)));
    const float z = fabsf(x) * k[0];
    const float t = 1.0f / fmaf(k[1], z, 1.0f);
    const float poly = fmaf(fmaf(fmaf(fmaf(k[6], t, k[5]), t, k[4]), t, k[3]), t, k[2]) * t;
    const float e = poly * lloco_expf_ggml(0.0f - z * z);
    return x * (x >= 0.0f ? fmaf(-0.5f, e, 1.0f) : 0.5f * e);
}

void lloco_ref_gelu(lloco_backend *be, float *x, int64_t n, int approx) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = lloco_gelu(x[i], approx);
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

/* A matmul operand converted to the cache type, as GGML converts src1. */
static float to_kv(float x, lloco_dtype t) {
    return t == LLOCO_DTYPE_F16 ? lloco_fp16_to_fp32(lloco_fp32_to_fp16(x)) : x;
}

/* The final sum of dot-product lanes: lane[16] (tinyBLAS) or lane[64]
 * (vec_dot's four accumulators, reduced pairwise first). */
static float lanes_sum(const float *lane, int tiny) {
    if (tiny) return tree16(lane);
    float w[16];
    for (int i = 0; i < 16; i++) w[i] = (lane[i] + lane[32 + i]) + (lane[16 + i] + lane[48 + i]);
    return tree16(w);
}

/* Score of query q against the key at cache offset off, before scaling. */
static float kq_dot(const float *q, const void *k, lloco_dtype t, size_t off, int hd, int tiny) {
    float lane[64] = {0};
    const int np = tiny ? hd : hd & ~63;
    for (int e = 0; e < np; e++)
        lane[e % (tiny ? 16 : 64)] =
            fmaf(to_kv(q[e], t), float_elem(k, t, off + e), lane[e % (tiny ? 16 : 64)]);
    float r = lanes_sum(lane, tiny);
    if (t == LLOCO_DTYPE_F16) { /* vec_dot_f16's leftovers: exact products, summed in double */
        double d = r;
        for (int e = np; e < hd; e++) d += (double)(to_kv(q[e], t) * float_elem(k, t, off + e));
        return (float)d;
    }
    for (int e = np; e < hd; e++) r += q[e] * float_elem(k, t, off + e); /* unfused in GGML */
    return r;
}

/* Output dims whose lanes are kept at once. */
#define ATTN_REF_DIMS 16

void lloco_ref_attention_head(const float *q, int n_pos, int hd, int tiny_kq, int tiny_pv,
                              const void *k, const void *v, lloco_dtype t, int kv_stride,
                              size_t head_off, float scale, float *out) {
#define SCORE(p) (kq_dot(q, k, t, (size_t)(p) * kv_stride + head_off, hd, tiny_kq) * scale)
    float max = -INFINITY;
    for (int p = 0; p < n_pos; p++) max = fmaxf(max, SCORE(p));
    /* Softmax over the cache padded with masked (zero) positions: sums of
     * 16 positions, added in double. */
    double sum = 0.0;
    for (int p0 = 0; p0 < n_pos; p0 += 16) {
        float e[16];
        for (int i = 0; i < 16; i++)
            e[i] = p0 + i < n_pos ? lloco_expf_ggml(SCORE(p0 + i) - max) : 0.0f;
        sum += (double)tree16(e);
    }
    const float inv = (float)(1.0 / sum);
    /* Probabilities times values, in the lanes of the dot product over
     * positions; masked positions add nothing to any lane. The scores are
     * recomputed per block of output dims rather than stored. */
    for (int d0 = 0; d0 < hd; d0 += ATTN_REF_DIMS) {
        const int nd = hd - d0 < ATTN_REF_DIMS ? hd - d0 : ATTN_REF_DIMS;
        float lane[ATTN_REF_DIMS][64];
        memset(lane, 0, sizeof lane);
        for (int p = 0; p < n_pos; p++) {
            const float pr = to_kv(lloco_expf_ggml(SCORE(p) - max) * inv, t);
            const size_t off = (size_t)p * kv_stride + head_off + d0;
            for (int d = 0; d < nd; d++)
                lane[d][p % (tiny_pv ? 16 : 64)] =
                    fmaf(pr, float_elem(v, t, off + d), lane[d][p % (tiny_pv ? 16 : 64)]);
        }
        for (int d = 0; d < nd; d++) out[d0 + d] = lanes_sum(lane[d], tiny_pv);
    }
#undef SCORE
}

void lloco_ref_attention(lloco_backend *be, const float *q, int m, int p0, int n_head,
                         int n_kv_head, int head_dim, const void *k, const void *v,
                         lloco_dtype kv_type, int kv_stride, float scale, int causal,
                         float *out) {
    (void)be;
    const int group = n_head / n_kv_head;
    const int row = n_head * head_dim;
    for (int i = 0; i < m; i++)
        for (int h = 0; h < n_head; h++)
            lloco_ref_attention_head(q + (size_t)i * row + (size_t)h * head_dim,
                                     causal ? p0 + i + 1 : m, head_dim,
                                     LLOCO_ATTN_TINY_KQ(m, head_dim, kv_type, causal),
                                     LLOCO_ATTN_TINY_PV(m, head_dim), k, v, kv_type, kv_stride,
                                     (size_t)(h / group) * head_dim, scale,
                                     out + (size_t)i * row + (size_t)h * head_dim);
}

/* ---- LoRA --------------------------------------------------------------- */

/* Output columns and ranks the reference keeps at once (on the stack); the
 * shrink step is recomputed per block of columns rather than stored. */
#define LORA_REF_COLS 256
#define LORA_REF_RANKS 64

void lloco_ref_lora(lloco_backend *be, const float *x, int m, int k, int n,
                    const lloco_lora_mat *const *per_row, float *y) {
    (void)be;
    for (int i = 0; i < m; i++) {
        const lloco_lora_mat *l = per_row[i];
        if (!l) continue;
        const float *xi = x + (size_t)i * k;
        const size_t arb = lloco_dtype_row_bytes(l->type, k), brb = lloco_dtype_row_bytes(l->type, n);
        for (int j0 = 0; j0 < n; j0 += LORA_REF_COLS) {
            const int nj = n - j0 < LORA_REF_COLS ? n - j0 : LORA_REF_COLS;
            float d[LORA_REF_COLS] = {0};
            for (int r0 = 0; r0 < l->rank; r0 += LORA_REF_RANKS) {
                const int nr = l->rank - r0 < LORA_REF_RANKS ? l->rank - r0 : LORA_REF_RANKS;
                float t[LORA_REF_RANKS];
                for (int r = 0; r < nr; r++) {
                    const void *arow = (const uint8_t *)l->a + (size_t)(r0 + r) * arb;
                    float s = 0.0f;
                    for (int e = 0; e < k; e++) s += xi[e] * float_elem(arow, l->type, (size_t)e);
                    t[r] = s;
                }
                for (int r = 0; r < nr; r++) {
                    const void *brow = (const uint8_t *)l->bt + (size_t)(r0 + r) * brb;
                    for (int j = 0; j < nj; j++)
                        d[j] = fmaf(t[r], float_elem(brow, l->type, (size_t)(j0 + j)), d[j]);
                }
            }
            float *yi = y + (size_t)i * n + j0;
            for (int j = 0; j < nj; j++) yi[j] = yi[j] + l->scale * d[j];
        }
    }
}

void lloco_ref_lora_merge_add(const lloco_lora_mat *l, int j, int e0, int ne, float *row) {
    const size_t arb = lloco_dtype_row_bytes(l->type, l->k), brb = lloco_dtype_row_bytes(l->type, l->n);
    for (int c0 = 0; c0 < ne; c0 += LORA_REF_COLS) {
        const int nc = ne - c0 < LORA_REF_COLS ? ne - c0 : LORA_REF_COLS;
        float d[LORA_REF_COLS] = {0};
        for (int r = 0; r < l->rank; r++) {
            const float b = float_elem((const uint8_t *)l->bt + (size_t)r * brb, l->type, (size_t)j);
            const void *arow = (const uint8_t *)l->a + (size_t)r * arb;
            for (int c = 0; c < nc; c++)
                d[c] = fmaf(b, float_elem(arow, l->type, (size_t)(e0 + c0 + c)), d[c]);
        }
        for (int c = 0; c < nc; c++) row[c0 + c] = row[c0 + c] + l->scale * d[c];
    }
}

void lloco_ref_lora_merge(lloco_backend *be, const void *w, lloco_dtype wt, const lloco_lora_mat *l,
                          void *dst, lloco_dtype dst_type) {
    (void)be;
    const size_t rb = lloco_dtype_row_bytes(wt, l->k), drb = lloco_dtype_row_bytes(dst_type, l->k);
    const int qk = lloco_dtype_block_elems(wt), dqk = lloco_dtype_block_elems(dst_type);
    /* A row in chunks of whole blocks of both types (quantization is per
     * block, so chunking changes no bits): the reference allocates nothing. */
    float buf[LORA_REF_COLS];
    LLOCO_ASSERT(LORA_REF_COLS % qk == 0 && LORA_REF_COLS % dqk == 0);
    for (int j = 0; j < l->n; j++) {
        const uint8_t *src = (const uint8_t *)w + (size_t)j * rb;
        uint8_t *out = (uint8_t *)dst + (size_t)j * drb;
        for (int e0 = 0; e0 < l->k; e0 += LORA_REF_COLS) {
            const int ne = l->k - e0 < LORA_REF_COLS ? l->k - e0 : LORA_REF_COLS;
            lloco_dequantize_row(wt, src + (size_t)(e0 / qk) * lloco_dtype_block_bytes(wt), buf, ne);
            lloco_ref_lora_merge_add(l, j, e0, ne, buf);
            lloco_quantize_row(dst_type, buf,
                               out + (size_t)(e0 / dqk) * lloco_dtype_block_bytes(dst_type), ne);
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
    .lora = lloco_ref_lora,
    .lora_merge = lloco_ref_lora_merge,
};

int lloco_backend_init_cpu_ref(lloco_backend *be) {
    be->iface = &ref_iface;
    be->name = "cpu-ref";
    be->n_threads = 1;
    snprintf(be->describe, sizeof be->describe, "plain C reference, 1 thread");
    return 0;
}
