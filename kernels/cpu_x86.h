/* cpu_x86: the x86 SIMD kernels of the CPU backend, written once and
 * compiled twice: by cpu_avx2.c (256-bit vectors, maddubs dot products, 16
 * registers) and by cpu_avx512.c (512-bit prefill vectors, VNNI vpdpbusd,
 * 32 registers), which add their own decode kernels and op table.
 * The including file defines X86_WIDTH (256 or 512), X86_VNNI, X86_TILE_R,
 * X86_TILE_C and X86_PACKED_MIN_M (see cpu_kernels.packed_min_m).
 */
#ifndef X86_WIDTH
#error "cpu_x86.h is a template: include it from cpu_avx2.c or cpu_avx512.c"
#endif
#if !X86_VNNI && X86_WIDTH != 256
#error "the maddubs kernels exist in 256-bit form only"
#endif

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "kernels/blocks.h"
#include "kernels/cpu_kernels.h"

#define R_ X86_TILE_R
#define C_ X86_TILE_C
#define INLINE static inline __attribute__((always_inline))
/* Loops over tile rows/columns must unroll completely, or their vector
 * accumulators live in memory instead of registers. */
#define UNROLL _Pragma("GCC unroll 16")

/* ---- small helpers ------------------------------------------------------ */

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE uint32_t load_u32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

INLINE uint16_t load_u16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* The 32 4-bit values of a q4 block, in element order, one per byte. */
INLINE __m256i unpack_q4(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* acc (8 x int32) += sums of 4 adjacent u8*s8 products. Without VNNI the
 * 16-bit pair sums of maddubs saturate past 32767: callers keep
 * |u| * |s| * 2 below that (4-bit u, or |u| <= 128 with |s| <= 127). */
INLINE __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if X86_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    const __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

/* ---- activation quantization, common part ------------------------------- */

/* Weights stored with a bias B (q4_0 values are q - 8; with VNNI, q8_0
 * weights are made unsigned as w + 128) dot to sum((w + B) y); adding
 * c_mult * sum(y), with c_mult = -B, undoes that. The offset is applied per
 * 32-bit lane, over the very values the lane sums, so every lane holds its
 * exact unbiased partial dot: a block-wide offset in one lane would leave
 * large biased partials in the others that cancel, inexactly, in float. */
static int c_mult(lloco_dtype wt) {
    if (wt == LLOCO_DTYPE_Q4_0) return -8;
    if (wt == LLOCO_DTYPE_Q8_0) return X86_VNNI ? -128 : 0;
    return 0;
}

/* Up to 8 consecutive blocks of quantized activations. */
typedef struct {
    __m256i q[8];    /* each block's 32 quants, in element order */
    __m256i sum4[8]; /* sums of each 4 consecutive quants (one 32-bit lane each) */
    __m256 d, s;     /* lane b: block b's scale and d*sum(q), fp16-rounded as GGML stores them */
    __m256i sum;     /* lane b: sum of block b's quants */
} qblocks8;

/* Lane b of the result is the max of the 8 lanes of v[b]. */
INLINE __m256 hmax8x8(const __m256 v[8]) {
    __m256 s[4];
    UNROLL
    for (int i = 0; i < 4; i++)
        s[i] = _mm256_max_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    const __m256 s0123 =
        _mm256_max_ps(_mm256_shuffle_ps(s[0], s[1], 0x44), _mm256_shuffle_ps(s[0], s[1], 0xEE));
    const __m256 s4567 =
        _mm256_max_ps(_mm256_shuffle_ps(s[2], s[3], 0x44), _mm256_shuffle_ps(s[2], s[3], 0xEE));
    return _mm256_max_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                         _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

/* Lane b of the result is the sum of the 8 lanes of v[b]. */
INLINE __m256i hsum8x8_i32(const __m256i v[8]) {
    const __m256i h0 =
        _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i h1 =
        _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                            _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* GGML's x86 quantize_row_q8_0/q8_1 on n <= 8 consecutive blocks,
 * vectorized across blocks so the two divisions per block (d = amax / 127,
 * id = 127 / amax, round half to even: the same operations as GGML, for the
 * same bits) run 8 at a time instead of in a chain per block. */
INLINE void quant_blocks8(const float *x, int n, qblocks8 *out) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 amax[8];
    UNROLL
    for (int b = 0; b < 8; b++) {
        amax[b] = _mm256_setzero_ps();
        if (b >= n) continue;
        UNROLL
        for (int u = 0; u < 4; u++)
            amax[b] = _mm256_max_ps(amax[b],
                                    _mm256_and_ps(_mm256_loadu_ps(x + 32 * b + 8 * u), abs_mask));
    }
    const __m256 mx = hmax8x8(amax);
    const __m256 d = _mm256_div_ps(mx, _mm256_set1_ps(127.0f));
    const __m256 nz = _mm256_cmp_ps(mx, _mm256_setzero_ps(), _CMP_NEQ_OQ);
    const __m256 id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(127.0f), mx), nz);
    __m256i sum4[8];
    UNROLL
    for (int b = 0; b < 8; b++) {
        sum4[b] = _mm256_setzero_si256();
        if (b >= n) continue;
        const __m256 idb = _mm256_permutevar8x32_ps(id, _mm256_set1_epi32(b));
        __m256i q32[4];
        UNROLL
        for (int u = 0; u < 4; u++)
            q32[u] = _mm256_cvtps_epi32(
                _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * b + 8 * u), idb),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        /* packs interleave 128-bit lanes; the permute restores element order */
        const __m256i p16a = _mm256_packs_epi32(q32[0], q32[1]);
        const __m256i p16b = _mm256_packs_epi32(q32[2], q32[3]);
        out->q[b] = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b),
                                                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        sum4[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), out->q[b]),
                                    _mm256_set1_epi16(1));
        out->sum4[b] = sum4[b];
    }
    out->sum = hsum8x8_i32(sum4);
    const __m256 sum = _mm256_cvtepi32_ps(out->sum); /* exact: |sum| <= 4064 */
    out->d = _mm256_cvtph_ps(_mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT));
    out->s = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(sum, d), _MM_FROUND_TO_NEAREST_INT));
}

/* The 32 values of weight block b of a row as bytes in element order, ready
 * for the dot product (4-bit values unpacked; q8_0 biased with VNNI), and
 * its scale and minimum. */
INLINE __m256i weight_block(lloco_dtype wt, const uint8_t *row, int b, float *d, float *m) {
    *m = 0.0f;
    if (wt == LLOCO_DTYPE_Q4_1) {
        const block_q4_1 *blk = (const block_q4_1 *)row + b;
        *d = _cvtsh_ss(load_u16(&blk->d));
        *m = _cvtsh_ss(load_u16(&blk->m));
        return unpack_q4(blk->qs);
    }
    if (wt == LLOCO_DTYPE_Q4_0) {
        const block_q4_0 *blk = (const block_q4_0 *)row + b;
        *d = _cvtsh_ss(load_u16(&blk->d));
        return unpack_q4(blk->qs);
    }
    const block_q8_0 *blk = (const block_q8_0 *)row + b;
    *d = _cvtsh_ss(load_u16(&blk->d));
    const __m256i q = _mm256_loadu_si256((const __m256i *)blk->qs);
    return X86_VNNI ? _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)) : q;
}

/* ---- 16-lane float vectors ------------------------------------------------ */

/* GGML's AVX512 code reduces and exponentiates 16 floats at a time, and its
 * results depend on that grouping; a 16-lane vector is one zmm register
 * here, or a pair of ymm registers (lanes 0-7, 8-15) on AVX2. */
#if X86_WIDTH == 512
typedef __m512 v16;
INLINE v16 v16_zero(void) { return _mm512_setzero_ps(); }
INLINE v16 v16_set1(float x) { return _mm512_set1_ps(x); }
INLINE v16 v16_load(const float *p) { return _mm512_loadu_ps(p); }
INLINE void v16_store(float *p, v16 v) { _mm512_storeu_ps(p, v); }
INLINE v16 v16_load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
INLINE v16 v16_add(v16 a, v16 b) { return _mm512_add_ps(a, b); }
INLINE v16 v16_mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
INLINE v16 v16_fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
INLINE v16 v16_max(v16 a, v16 b) { return _mm512_max_ps(a, b); }
/* f16 rounding of every lane (round to nearest even). */
INLINE v16 v16_round_f16(v16 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
/* GGML's lane tree (see lloco_op_softmax): GCC's _mm512_reduce_add_ps. */
INLINE float v16_reduce(v16 v) { return _mm512_reduce_add_ps(v); }
INLINE float v16_reduce_max(v16 v) { return _mm512_reduce_max_ps(v); }

/* ggml_v_expf, operation for operation. */
INLINE v16 v16_exp(v16 x) {
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
    const __m512 n = _mm512_sub_ps(z, r);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b,
                                        _mm512_set1_ps(0x1.573e2ep-5f)),
                        u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b,
                                        _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    const __m512 res = _mm512_scalef_ps(j, n);
    const __m512 alt =
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ),
                             _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
    return _mm512_mask_blend_ps(d, res, alt);
}
#else
typedef struct {
    __m256 lo, hi;
} v16;
INLINE v16 v16_make(__m256 lo, __m256 hi) {
    v16 r = {lo, hi};
    return r;
}
INLINE v16 v16_zero(void) { return v16_make(_mm256_setzero_ps(), _mm256_setzero_ps()); }
INLINE v16 v16_set1(float x) { return v16_make(_mm256_set1_ps(x), _mm256_set1_ps(x)); }
INLINE v16 v16_load(const float *p) { return v16_make(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
INLINE void v16_store(float *p, v16 v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
INLINE v16 v16_load_f16(const uint16_t *p) {
    return v16_make(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8))));
}
INLINE v16 v16_add(v16 a, v16 b) {
    return v16_make(_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi));
}
INLINE v16 v16_mul(v16 a, v16 b) {
    return v16_make(_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi));
}
INLINE v16 v16_fma(v16 a, v16 b, v16 c) {
    return v16_make(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
INLINE v16 v16_max(v16 a, v16 b) {
    return v16_make(_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi));
}
INLINE __m256 round_f16_8(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
INLINE v16 v16_round_f16(v16 v) { return v16_make(round_f16_8(v.lo), round_f16_8(v.hi)); }
/* The halves first (lanes i and i + 8), then hsum's tree: the same sums as
 * _mm512_reduce_add_ps. */
INLINE float v16_reduce(v16 v) { return hsum(_mm256_add_ps(v.lo, v.hi)); }
INLINE float v16_reduce_max(v16 v) {
    const __m256 m8 = _mm256_max_ps(v.lo, v.hi);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
}

/* ggml_v_expf on 8 lanes. AVX2 has no scalef: j * 2^n is j * 2^n1 * 2^n2
 * with n1 = floor(n / 2), where the first product is exact (it stays
 * normal for |n| <= 192) and the second rounds once, as scalef does. */
INLINE __m256 exp_ggml8(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 abs_n = _mm256_and_ps(n, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
    const __m256 d = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b,
                                        _mm256_set1_ps(0x1.573e2ep-5f)),
                        u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b,
                                        _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    const __m256i ni = _mm256_cvttps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    const __m256 res = _mm256_mul_ps(_mm256_mul_ps(j, s1), s2);
    const __m256 alt = _mm256_andnot_ps(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ),
                                        _mm256_set1_ps(INFINITY));
    return _mm256_blendv_ps(res, alt, d);
}
INLINE v16 v16_exp(v16 x) { return v16_make(exp_ggml8(x.lo), exp_ggml8(x.hi)); }
#endif

INLINE v16 v16_sub(v16 a, v16 b) {
#if X86_WIDTH == 512
    return _mm512_sub_ps(a, b);
#else
    return v16_make(_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi));
#endif
}

INLINE v16 v16_div(v16 a, v16 b) {
#if X86_WIDTH == 512
    return _mm512_div_ps(a, b);
#else
    return v16_make(_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi));
#endif
}

/* The lane tree of 16 vectors, lane by lane: w[i] + w[i+8], then + [i+4],
 * then (u0 + u2) + (u1 + u3), as v16_reduce sums the lanes of one. */
INLINE v16 v16_tree(const v16 w[16]) {
    v16 t[8], u[4];
    UNROLL
    for (int i = 0; i < 8; i++) t[i] = v16_add(w[i], w[i + 8]);
    UNROLL
    for (int i = 0; i < 4; i++) u[i] = v16_add(t[i], t[i + 4]);
    return v16_add(v16_add(u[0], u[2]), v16_add(u[1], u[3]));
}

/* v16_reduce of 16 vectors at once: lane t of the result is the lane tree
 * of a[t]. With AVX512, the tree's levels run as shuffles that pair up
 * vectors (a butterfly), a third of the work of 16 separate reductions. */
INLINE v16 v16_reduce16(const v16 a[16]) {
#if X86_WIDTH == 512
    __m512 s[8], u[4], v[2];
    UNROLL
    for (int k = 0; k < 8; k++) /* t = lanes 0-7 + lanes 8-15, two vectors per register */
        s[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xEE));
    UNROLL
    for (int k = 0; k < 4; k++) /* u = t[0:4] + t[4:8]: quarter j is vector 4k + j */
        u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0xDD));
    UNROLL
    for (int k = 0; k < 2; k++) /* (u0 + u2), (u1 + u3) */
        v[k] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0xEE));
    /* lane 4j + k now holds vector 4k + j */
    const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88),
                                   _mm512_shuffle_ps(v[0], v[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, r);
#else
    _Alignas(32) float r[16];
    UNROLL
    for (int t = 0; t < 16; t++) r[t] = v16_reduce(a[t]);
    return v16_load(r);
#endif
}

/* ---- matmul, packed weight panels x activation tiles (prefill) ---------- */

#if X86_WIDTH == 512
#define LANES 16
typedef __m512i vi;
typedef __m512 vf;
#define vi_loadu(p) _mm512_loadu_si512((const void *)(p))
#define vi_bcast4(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))
#define vi_zero() _mm512_setzero_si512()
#define vi_dot(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#define vi_cvt(a) _mm512_cvtepi32_ps(a)
#define vf_loadu(p) _mm512_loadu_ps((const void *)(p))
#define vf_bcast4(p) _mm512_broadcast_f32x4(_mm_loadu_ps((const float *)(p)))
#define vf_storeu(p, v) _mm512_storeu_ps(p, v)
#define vf_zero() _mm512_setzero_ps()
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_mul(a, b) _mm512_mul_ps(a, b)
#define vf_fmadd(a, b, c) _mm512_fmadd_ps(a, b, c)
#else
#define LANES 8
typedef __m256i vi;
typedef __m256 vf;
#define vi_loadu(p) _mm256_loadu_si256((const __m256i *)(p))
#define vi_bcast4(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
#define vi_zero() _mm256_setzero_si256()
#define vi_dot(acc, u, s) dot_u8s8(acc, u, s)
#define vi_cvt(a) _mm256_cvtepi32_ps(a)
#define vf_loadu(p) _mm256_loadu_ps((const float *)(p))
#define vf_bcast4(p) _mm256_broadcast_ps((const __m128 *)(p))
#define vf_storeu(p, v) _mm256_storeu_ps(p, v)
#define vf_zero() _mm256_setzero_ps()
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_mul(a, b) _mm256_mul_ps(a, b)
#define vf_fmadd(a, b, c) _mm256_fmadd_ps(a, b, c)
#endif
#define VBYTES (LANES * 4)
/* Activation rows per vector: lane r * 4 + c of a vector belongs to panel
 * row r and tile activation row c of its group. */
#define TILE_GROUP 4
#define TILE_G (C_ / TILE_GROUP)
_Static_assert(R_ * TILE_GROUP == LANES && C_ % TILE_GROUP == 0, "tile shape");

/* Every output needs GGML's eight lanes per block (see lloco_op_matmul), so
 * a vector holds lane j of LANES outputs at once: one dot instruction gives
 * lane j of all of them for a block, and the block's scaling is one fma per
 * vector, exactly the scalar fma of each output's lane.
 *
 * Panel of R_ weight rows, per block: w [8][VBYTES], lane r*4+c holding the
 * 4 bytes of group j of row r, ready for the dot (4-bit values unpacked,
 * q8_0 biased with VNNI); then d [LANES] and, for q4_1, m [LANES] (of the
 * lane's row), as floats.
 * Activation tile of C_ rows, per block: q [8][C_][4] (group j of each
 * row), c [8][C_] (each group's lane offset, see c_mult), d [C_], s [C_].
 * A tile of C_ rows takes C_ times tile_row_bytes, row i of the activations
 * being column i % C_ of tile i / C_. */
#define TILE_BLOCK_ROW_BYTES 72 /* per block and activation row: 32 q, 32 c, d, s */

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

static size_t tile_row_bytes(int k) { return (size_t)(k / QK32) * TILE_BLOCK_ROW_BYTES; }

static void quantize_tile_row(lloco_dtype wt, const float *x, int k, uint8_t *act, int i) {
    const int nb = k / QK32, cm = c_mult(wt), c = i % C_;
    uint8_t *tile = act + (size_t)(i - c) * tile_row_bytes(k);
    for (int b0 = 0; b0 < nb; b0 += 8) {
        qblocks8 qb;
        const int n = nb - b0 < 8 ? nb - b0 : 8;
        quant_blocks8(x + (size_t)b0 * QK32, n, &qb);
        float d[8], s[8];
        _mm256_storeu_ps(d, qb.d);
        _mm256_storeu_ps(s, qb.s);
        for (int bb = 0; bb < n; bb++) {
            uint8_t *blk = tile + (size_t)(b0 + bb) * C_ * TILE_BLOCK_ROW_BYTES;
            int32_t g4[8], off[8];
            _mm256_storeu_si256((__m256i *)g4, qb.q[bb]);
            _mm256_storeu_si256((__m256i *)off,
                                _mm256_mullo_epi32(qb.sum4[bb], _mm256_set1_epi32(cm)));
            for (int j = 0; j < 8; j++) {
                memcpy(blk + ((size_t)j * C_ + c) * 4, &g4[j], 4);
                memcpy(blk + (size_t)32 * C_ + ((size_t)j * C_ + c) * 4, &off[j], 4);
            }
            memcpy(blk + (size_t)64 * C_ + 4 * c, &d[bb], 4);
            memcpy(blk + (size_t)68 * C_ + 4 * c, &s[bb], 4);
        }
    }
}

static size_t panel_block_bytes(lloco_dtype wt) {
    return (size_t)(wt == LLOCO_DTYPE_Q4_1 ? 10 : 9) * VBYTES;
}

static size_t x86_mm_panel_bytes(lloco_dtype wt, int k) {
    return align64((size_t)(k / QK32) * panel_block_bytes(wt));
}

INLINE void pack_panel(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                       uint8_t *dst) {
    const int nb = k / QK32;
    const size_t pbb = panel_block_bytes(wt);
    memset(dst, 0, x86_mm_panel_bytes(wt, k));
    for (int r = 0; r < nrows; r++) {
        for (int b = 0; b < nb; b++) {
            float d, m;
            int32_t g4[8];
            _mm256_storeu_si256((__m256i *)g4, weight_block(wt, w + r * rb, b, &d, &m));
            uint8_t *pb = dst + b * pbb;
            for (int j = 0; j < 8; j++)
                _mm_storeu_si128((__m128i *)(pb + j * VBYTES + r * 16), _mm_set1_epi32(g4[j]));
            _mm_storeu_ps((float *)(pb + 8 * VBYTES) + r * TILE_GROUP, _mm_set1_ps(d));
            if (wt == LLOCO_DTYPE_Q4_1)
                _mm_storeu_ps((float *)(pb + 9 * VBYTES) + r * TILE_GROUP, _mm_set1_ps(m));
        }
    }
}

static void x86_mm_pack(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                        uint8_t *dst) {
    if (wt == LLOCO_DTYPE_Q4_1)
        pack_panel(LLOCO_DTYPE_Q4_1, w, rb, nrows, k, dst);
    else if (wt == LLOCO_DTYPE_Q8_0)
        pack_panel(LLOCO_DTYPE_Q8_0, w, rb, nrows, k, dst);
    else
        pack_panel(LLOCO_DTYPE_Q4_0, w, rb, nrows, k, dst);
}

INLINE void tile_kernel(lloco_dtype wt, const uint8_t *panel, int k, const uint8_t *act,
                        float *out) {
    const int nb = k / QK32;
    const size_t pbb = panel_block_bytes(wt), abb = (size_t)C_ * TILE_BLOCK_ROW_BYTES;
    const int offsets = c_mult(wt) != 0;
    vf acc[8][TILE_G], summs[TILE_G];
    UNROLL
    for (int g = 0; g < TILE_G; g++) {
        summs[g] = vf_zero();
        UNROLL
        for (int j = 0; j < 8; j++) acc[j][g] = vf_zero();
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t *pb = panel + b * pbb, *ab = act + b * abb;
        const float *ad = (const float *)(ab + (size_t)64 * C_);
        const vf dw = vf_loadu(pb + 8 * VBYTES);
        vf dd[TILE_G];
        UNROLL
        for (int g = 0; g < TILE_G; g++) dd[g] = vf_mul(dw, vf_bcast4(ad + TILE_GROUP * g));
        if (wt == LLOCO_DTYPE_Q4_1) {
            const vf mw = vf_loadu(pb + 9 * VBYTES);
            UNROLL
            for (int g = 0; g < TILE_G; g++)
                summs[g] = vf_fmadd(mw, vf_bcast4(ad + C_ + TILE_GROUP * g), summs[g]);
        }
        UNROLL
        for (int j = 0; j < 8; j++) {
            const vi wv = vi_loadu(pb + j * VBYTES);
            UNROLL
            for (int g = 0; g < TILE_G; g++) {
                const uint8_t *aq = ab + ((size_t)j * C_ + TILE_GROUP * g) * 4;
                const vi yv = vi_bcast4(aq);
                const vi init = offsets ? vi_bcast4(aq + (size_t)32 * C_) : vi_zero();
                vi dot;
#if !X86_VNNI
                if (wt == LLOCO_DTYPE_Q8_0) /* signed weights: move the sign onto y */
                    dot = dot_u8s8(init, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(yv, wv));
                else
#endif
                    dot = vi_dot(init, wv, yv);
                acc[j][g] = vf_fmadd(dd[g], vi_cvt(dot), acc[j][g]);
            }
        }
    }
    UNROLL
    for (int g = 0; g < TILE_G; g++) {
        /* hsum_float_8 of each lane's eight accumulators, then the minimums */
        const vf s = vf_add(vf_add(vf_add(acc[0][g], acc[4][g]), vf_add(acc[2][g], acc[6][g])),
                            vf_add(vf_add(acc[1][g], acc[5][g]), vf_add(acc[3][g], acc[7][g])));
        float lanes[LANES];
        vf_storeu(lanes, vf_add(s, summs[g]));
        for (int r = 0; r < R_; r++)
            for (int c = 0; c < TILE_GROUP; c++)
                out[(TILE_GROUP * g + c) * R_ + r] = lanes[r * TILE_GROUP + c];
    }
}

static void x86_mm_tile(lloco_dtype wt, const uint8_t *panel, int k, const uint8_t *act,
                        float *out) {
    /* One instantiation per weight type keeps type tests out of the loops. */
    if (wt == LLOCO_DTYPE_Q4_1)
        tile_kernel(LLOCO_DTYPE_Q4_1, panel, k, act, out);
    else if (wt == LLOCO_DTYPE_Q8_0)
        tile_kernel(LLOCO_DTYPE_Q8_0, panel, k, act, out);
    else
        tile_kernel(LLOCO_DTYPE_Q4_0, panel, k, act, out);
}

#if X86_WIDTH == 256
/* ---- matmul, activation rows against GGUF blocks (decode), 256-bit ------ */

/* Activation row layout: qs [nb][32] in element order, then d [nb],
 * s [nb] and c [nb][8] (the offsets of the block's 8 lanes). */
static size_t natural_act_row_bytes(int k) { return align64((size_t)(k / QK32) * 72); }

static void quantize_natural(lloco_dtype wt, const float *x, int k, uint8_t *row) {
    const int nb = k / QK32, cm = c_mult(wt);
    float *d = (float *)(row + (size_t)nb * 32), *s = d + nb;
    int32_t *c = (int32_t *)(s + nb);
    for (int b0 = 0; b0 < nb; b0 += 8) {
        qblocks8 qb;
        const int n = nb - b0 < 8 ? nb - b0 : 8;
        quant_blocks8(x + (size_t)b0 * QK32, n, &qb);
        float dv[8], sv[8];
        _mm256_storeu_ps(dv, qb.d);
        _mm256_storeu_ps(sv, qb.s);
        for (int b = 0; b < n; b++) {
            _mm256_storeu_si256((__m256i *)(row + (size_t)(b0 + b) * 32), qb.q[b]);
            _mm256_storeu_si256((__m256i *)(c + 8 * (b0 + b)),
                                _mm256_mullo_epi32(qb.sum4[b], _mm256_set1_epi32(cm)));
            d[b0 + b] = dv[b];
            s[b0 + b] = sv[b];
        }
    }
}

/* NR weight rows against one activation row, one block per step: GGML's
 * vec_dot (integer dot into 8 lanes, fma by d_w * d_y), NR rows at once. */
INLINE void rows_q4_1(const uint8_t *w, size_t rb, int NR, int nb, const uint8_t *act, float *y) {
    const float *yd = (const float *)(act + (size_t)nb * 32), *ys = yd + nb;
    __m256 acc[4];
    float macc[4];
    UNROLL
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps(), macc[r] = 0.0f;
    for (int b = 0; b < nb; b++) {
        const __m256i yv = _mm256_loadu_si256((const __m256i *)(act + (size_t)b * 32));
        const __m256 dy = _mm256_broadcast_ss(yd + b);
        const float sy = ys[b];
        UNROLL
        for (int r = 0; r < NR; r++) {
            const block_q4_1 *blk = (const block_q4_1 *)(w + r * rb) + b;
            const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk))); /* d, m */
            const __m256i p = dot_u8s8(_mm256_setzero_si256(), unpack_q4(blk->qs), yv);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                     _mm256_mul_ps(_mm256_broadcastss_ps(dm), dy), acc[r]);
            macc[r] = fmaf(_mm_cvtss_f32(_mm_movehdup_ps(dm)), sy, macc[r]); /* fused, as GGML */
        }
    }
    UNROLL
    for (int r = 0; r < NR; r++) y[r] = hsum(acc[r]) + macc[r];
}

INLINE void rows_q4_0_q8_0(lloco_dtype wt, const uint8_t *w, size_t rb, int NR, int nb,
                           const uint8_t *act, float *y) {
    const float *yd = (const float *)(act + (size_t)nb * 32);
    const int32_t *yc = (const int32_t *)(yd + 2 * nb);
    __m256 acc[4];
    UNROLL
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256i yv = _mm256_loadu_si256((const __m256i *)(act + (size_t)b * 32));
        const __m256 dy = _mm256_broadcast_ss(yd + b);
        const __m256i c0 = _mm256_loadu_si256((const __m256i *)(yc + 8 * b)); /* lane offsets */
        UNROLL
        for (int r = 0; r < NR; r++) {
            __m256i p;
            uint16_t d16;
            if (wt == LLOCO_DTYPE_Q8_0) {
                const block_q8_0 *blk = (const block_q8_0 *)(w + r * rb) + b;
                const __m256i wv = _mm256_loadu_si256((const __m256i *)blk->qs);
                p = dot_u8s8(c0, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(yv, wv));
                d16 = load_u16(&blk->d);
            } else {
                const block_q4_0 *blk = (const block_q4_0 *)(w + r * rb) + b;
                p = dot_u8s8(c0, unpack_q4(blk->qs), yv);
                d16 = load_u16(&blk->d);
            }
            const __m256 dw = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d16)));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw, dy), acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < NR; r++) y[r] = hsum(acc[r]);
}

/* MULTI_ROWS activation rows against one weight row: each weight block is
 * loaded and unpacked once for all of them, and every output gets the
 * operations rows_q4_1 or rows_q4_0_q8_0 give it, in their order. */
#define MULTI_ROWS 4

INLINE void rows_multi(lloco_dtype wt, const uint8_t *wrow, int nb, const uint8_t *act, size_t arb,
                       int NA, float *y, int ldy) {
    const float *yd[MULTI_ROWS];
    __m256 acc[MULTI_ROWS];
    float macc[MULTI_ROWS];
    UNROLL
    for (int a = 0; a < NA; a++) {
        yd[a] = (const float *)(act + a * arb + (size_t)nb * 32);
        acc[a] = _mm256_setzero_ps(), macc[a] = 0.0f;
    }
    for (int b = 0; b < nb; b++) {
        __m256i wv, wabs = _mm256_setzero_si256();
        __m128 dm;
        if (wt == LLOCO_DTYPE_Q4_1) {
            const block_q4_1 *blk = (const block_q4_1 *)wrow + b;
            dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk))); /* d, m */
            wv = unpack_q4(blk->qs);
        } else if (wt == LLOCO_DTYPE_Q8_0) {
            const block_q8_0 *blk = (const block_q8_0 *)wrow + b;
            dm = _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(&blk->d)));
            wv = _mm256_loadu_si256((const __m256i *)blk->qs);
            wabs = _mm256_sign_epi8(wv, wv);
        } else {
            const block_q4_0 *blk = (const block_q4_0 *)wrow + b;
            dm = _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(&blk->d)));
            wv = unpack_q4(blk->qs);
        }
        const __m256 dw = _mm256_broadcastss_ps(dm);
        const float mw = _mm_cvtss_f32(_mm_movehdup_ps(dm));
        UNROLL
        for (int a = 0; a < NA; a++) {
            const uint8_t *ar = act + a * arb;
            const __m256i yv = _mm256_loadu_si256((const __m256i *)(ar + (size_t)b * 32));
            const __m256 dy = _mm256_broadcast_ss(yd[a] + b);
            __m256i p;
            if (wt == LLOCO_DTYPE_Q4_1) {
                p = dot_u8s8(_mm256_setzero_si256(), wv, yv);
                macc[a] = fmaf(mw, yd[a][nb + b], macc[a]); /* fused, as GGML */
            } else {
                const __m256i c0 = _mm256_loadu_si256((const __m256i *)(yd[a] + 2 * nb + 8 * b));
                p = wt == LLOCO_DTYPE_Q8_0 ? dot_u8s8(c0, wabs, _mm256_sign_epi8(yv, wv))
                                           : dot_u8s8(c0, wv, yv);
            }
            acc[a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw, dy), acc[a]);
        }
    }
    UNROLL
    for (int a = 0; a < NA; a++)
        y[(size_t)a * ldy] = wt == LLOCO_DTYPE_Q4_1 ? hsum(acc[a]) + macc[a] : hsum(acc[a]);
}

INLINE void rows_natural(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int nb,
                         const uint8_t *act, int m, float *y, int ldy) {
    if (m == 1) {
        int r = 0;
        if (wt == LLOCO_DTYPE_Q4_1) {
            for (; r + 4 <= nrows; r += 4) rows_q4_1(w + r * rb, rb, 4, nb, act, y + r);
            for (; r < nrows; r++) rows_q4_1(w + r * rb, rb, 1, nb, act, y + r);
        } else {
            for (; r + 4 <= nrows; r += 4) rows_q4_0_q8_0(wt, w + r * rb, rb, 4, nb, act, y + r);
            for (; r < nrows; r++) rows_q4_0_q8_0(wt, w + r * rb, rb, 1, nb, act, y + r);
        }
        return;
    }
    const size_t arb = natural_act_row_bytes(nb * QK32);
    for (int r = 0; r < nrows; r++) {
        for (int a = 0; a < m; a += MULTI_ROWS) {
            const uint8_t *aa = act + a * arb;
            float *ya = y + (size_t)a * ldy + r;
            switch (m - a < MULTI_ROWS ? m - a : MULTI_ROWS) {
            case 1: rows_multi(wt, w + r * rb, nb, aa, arb, 1, ya, ldy); break;
            case 2: rows_multi(wt, w + r * rb, nb, aa, arb, 2, ya, ldy); break;
            case 3: rows_multi(wt, w + r * rb, nb, aa, arb, 3, ya, ldy); break;
            default: rows_multi(wt, w + r * rb, nb, aa, arb, 4, ya, ldy); break;
            }
        }
    }
}

static void mm_rows_natural(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                            const uint8_t *act, int m, float *y, int ldy) {
    const int nb = k / QK32;
    if (wt == LLOCO_DTYPE_Q4_1)
        rows_natural(LLOCO_DTYPE_Q4_1, w, rb, nrows, nb, act, m, y, ldy);
    else if (wt == LLOCO_DTYPE_Q8_0)
        rows_natural(LLOCO_DTYPE_Q8_0, w, rb, nrows, nb, act, m, y, ldy);
    else
        rows_natural(LLOCO_DTYPE_Q4_0, w, rb, nrows, nb, act, m, y, ldy);
}
#endif

/* ---- matmul, float weights ---------------------------------------------- */

INLINE __m256 load8_w(lloco_dtype wt, const uint8_t *row, int e) {
    if (wt == LLOCO_DTYPE_F32) return _mm256_loadu_ps((const float *)row + e);
    const __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)e));
    if (wt == LLOCO_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE float load1_w(lloco_dtype wt, const uint8_t *row, int e) {
    if (wt == LLOCO_DTYPE_F32) {
        float f;
        memcpy(&f, row + 4 * (size_t)e, 4);
        return f;
    }
    const uint16_t h = load_u16(row + 2 * (size_t)e);
    return wt == LLOCO_DTYPE_F16 ? _cvtsh_ss(h) : lloco_bf16_to_fp32(h);
}

/* NR weight rows x NC activation rows, 8 values at a time. */
INLINE void float_tile(lloco_dtype wt, const uint8_t *w, size_t rb, int NR, int k, const float *x,
                       int NC, float *y, int ldy) {
    __m256 acc[4][4];
    UNROLL
    for (int r = 0; r < NR; r++) {
        UNROLL
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps();
    }
    int e = 0;
    for (; e + 8 <= k; e += 8) {
        __m256 xv[4];
        UNROLL
        for (int c = 0; c < NC; c++) xv[c] = _mm256_loadu_ps(x + (size_t)c * k + e);
        UNROLL
        for (int r = 0; r < NR; r++) {
            const __m256 wv = load8_w(wt, w + r * rb, e);
            UNROLL
            for (int c = 0; c < NC; c++) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    UNROLL
    for (int r = 0; r < NR; r++) {
        UNROLL
        for (int c = 0; c < NC; c++) {
            float s = hsum(acc[r][c]);
            for (int t = e; t < k; t++) s += load1_w(wt, w + r * rb, t) * x[(size_t)c * k + t];
            y[(size_t)c * ldy + r] = s;
        }
    }
}

INLINE void float_rows(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                       const float *x, int m, float *y, int ldy) {
    enum { FC = C_ < 4 ? C_ : 4 };
    int r = 0;
    for (; r + 4 <= nrows; r += 4) {
        int i = 0;
        for (; i + FC <= m; i += FC)
            float_tile(wt, w + r * rb, rb, 4, k, x + (size_t)i * k, FC, y + (size_t)i * ldy + r,
                       ldy);
        for (; i < m; i++)
            float_tile(wt, w + r * rb, rb, 4, k, x + (size_t)i * k, 1, y + (size_t)i * ldy + r,
                       ldy);
    }
    for (; r < nrows; r++)
        for (int i = 0; i < m; i++)
            float_tile(wt, w + r * rb, rb, 1, k, x + (size_t)i * k, 1, y + (size_t)i * ldy + r,
                       ldy);
}

/* Many activation rows: outer products. FG_NR weight rows at a time are
 * packed, FG_KC elements at a time, into a panel [kc][FG_NR] of f32; a tile
 * of FG_MR activation rows x FG_NR outputs keeps its accumulators in
 * registers and adds one broadcast x value times the panel's vectors per
 * element. Every output is one fma chain over e in order (stored and
 * reloaded between panels), so it does not depend on m. */
#define FG_NV (X86_WIDTH == 512 ? 2 : 1) /* vectors per panel row */
#define FG_NR (16 * FG_NV)
#define FG_MR (X86_WIDTH == 512 ? 12 : 6)
#define FG_KC 128

/* MR activation rows x the panel's first nc (<= FG_NR) outputs; first: the
 * panel holds the first elements (the chains start from 0). */
INLINE void fg_tile(const float *panel, int kc, const float *x, int ldx, const int MR, float *y,
                    int ldy, int first, int nc) {
    v16 acc[FG_MR][FG_NV];
    float part[FG_NR];
    UNROLL
    for (int i = 0; i < MR; i++) {
        const float *yi = y + (size_t)i * ldy;
        if (!first && nc < FG_NR) {
            memcpy(part, yi, (size_t)nc * sizeof(float));
            yi = part;
        }
        UNROLL
        for (int s = 0; s < FG_NV; s++) acc[i][s] = first ? v16_zero() : v16_load(yi + 16 * s);
    }
    for (int e = 0; e < kc; e++) {
        v16 b[FG_NV];
        UNROLL
        for (int s = 0; s < FG_NV; s++) b[s] = v16_load(panel + (size_t)e * FG_NR + 16 * s);
        UNROLL
        for (int i = 0; i < MR; i++) {
            const v16 a = v16_set1(x[(size_t)i * ldx + e]);
            UNROLL
            for (int s = 0; s < FG_NV; s++) acc[i][s] = v16_fma(a, b[s], acc[i][s]);
        }
    }
    UNROLL
    for (int i = 0; i < MR; i++) {
        float *yi = y + (size_t)i * ldy;
        UNROLL
        for (int s = 0; s < FG_NV; s++) v16_store((nc < FG_NR ? part : yi) + 16 * s, acc[i][s]);
        if (nc < FG_NR) memcpy(yi, part, (size_t)nc * sizeof(float));
    }
}

#if X86_WIDTH == 512
/* Rows row[0..15], elements e..e+15, as f32 into panel columns j0..j0+15
 * of panel rows 0..15: a 16x16 transpose in registers. */
INLINE void fg_pack16(lloco_dtype wt, const uint8_t *const *row, int e, float *panel, int j0) {
    __m512 r[16], t[16];
    UNROLL
    for (int i = 0; i < 16; i++) {
        if (wt == LLOCO_DTYPE_F32) {
            r[i] = _mm512_loadu_ps((const float *)row[i] + e);
        } else {
            const __m256i h = _mm256_loadu_si256((const __m256i *)(row[i] + 2 * (size_t)e));
            r[i] = wt == LLOCO_DTYPE_F16
                       ? _mm512_cvtph_ps(h)
                       : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
    }
    /* t[i], t[i + 1]: rows i and i + 1 interleaved, elements 4l, 4l + 1
     * and 4l + 2, 4l + 3 of each 128-bit lane l */
    UNROLL
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* then r[4g + c], 128-bit lane l: rows 4g..4g+3 of element 4l + c */
    UNROLL
    for (int i = 0; i < 16; i += 4) {
        const __m512d a0 = _mm512_castps_pd(t[i]), a1 = _mm512_castps_pd(t[i + 1]),
                      b0 = _mm512_castps_pd(t[i + 2]), b1 = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
    }
    /* element 4l + c of the 16 rows: lane l of r[c], r[4 + c], r[8 + c],
     * r[12 + c], gathered by two rounds of 128-bit shuffles */
    UNROLL
    for (int c = 0; c < 4; c++) {
        const __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88); /* lanes 0, 2 */
        const __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd); /* lanes 1, 3 */
        const __m512 g = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        const __m512 h = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        _mm512_store_ps(panel + (size_t)c * FG_NR + j0, _mm512_shuffle_f32x4(a, g, 0x88));
        _mm512_store_ps(panel + (size_t)(4 + c) * FG_NR + j0, _mm512_shuffle_f32x4(b, h, 0x88));
        _mm512_store_ps(panel + (size_t)(8 + c) * FG_NR + j0, _mm512_shuffle_f32x4(a, g, 0xdd));
        _mm512_store_ps(panel + (size_t)(12 + c) * FG_NR + j0, _mm512_shuffle_f32x4(b, h, 0xdd));
    }
}
#endif

INLINE void float_gemm(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                       const float *x, int m, float *y, int ldy) {
    float panel[FG_KC * FG_NR] __attribute__((aligned(64)));
    for (int r0 = 0; r0 < nrows; r0 += FG_NR) {
        const int nc = nrows - r0 < FG_NR ? nrows - r0 : FG_NR;
        for (int e0 = 0; e0 < k; e0 += FG_KC) {
            const int kc = k - e0 < FG_KC ? k - e0 : FG_KC;
            int j = 0;
#if X86_WIDTH == 512
            for (; j + 16 <= nc; j += 16) {
                const uint8_t *row[16];
                for (int i = 0; i < 16; i++) row[i] = w + (size_t)(r0 + j + i) * rb;
                int e = 0;
                for (; e + 16 <= kc; e += 16)
                    fg_pack16(wt, row, e0 + e, panel + (size_t)e * FG_NR, j);
                for (; e < kc; e++)
                    for (int i = 0; i < 16; i++)
                        panel[e * FG_NR + j + i] = load1_w(wt, row[i], e0 + e);
            }
#endif
            for (; j < FG_NR; j++) {
                if (j >= nc) {
                    for (int e = 0; e < kc; e++) panel[e * FG_NR + j] = 0.0f;
                    continue;
                }
                const uint8_t *row = w + (size_t)(r0 + j) * rb;
                for (int e = 0; e < kc; e++) panel[e * FG_NR + j] = load1_w(wt, row, e0 + e);
            }
            const float *xe = x + e0;
            int i = 0;
            for (; i + FG_MR <= m; i += FG_MR)
                fg_tile(panel, kc, xe + (size_t)i * k, k, FG_MR, y + (size_t)i * ldy + r0, ldy,
                        e0 == 0, nc);
            for (; i < m; i++)
                fg_tile(panel, kc, xe + (size_t)i * k, k, 1, y + (size_t)i * ldy + r0, ldy, e0 == 0,
                        nc);
        }
    }
}

/* The entry points, one instantiation per float dtype, which makes it a
 * constant in the loops. */
#define FLOAT_MM_ENTRY(name, impl)                                                         \
    static void name(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,     \
                     const float *x, int m, float *y, int ldy) {                        \
        if (wt == LLOCO_DTYPE_F32)                                                      \
            impl(LLOCO_DTYPE_F32, w, rb, nrows, k, x, m, y, ldy);                       \
        else if (wt == LLOCO_DTYPE_F16)                                                 \
            impl(LLOCO_DTYPE_F16, w, rb, nrows, k, x, m, y, ldy);                       \
        else                                                                            \
            impl(LLOCO_DTYPE_BF16, w, rb, nrows, k, x, m, y, ldy);                      \
    }
FLOAT_MM_ENTRY(x86_mm_float, float_rows)
FLOAT_MM_ENTRY(x86_mm_float_gemm, float_gemm)
#undef FLOAT_MM_ENTRY

/* ---- LoRA --------------------------------------------------------------- */

INLINE v16 load16_w(lloco_dtype wt, const uint8_t *row, int e) {
#if X86_WIDTH == 512
    if (wt == LLOCO_DTYPE_F32) return _mm512_loadu_ps((const float *)row + e);
    const __m256i h = _mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)e));
    if (wt == LLOCO_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#else
    return v16_make(load8_w(wt, row, e), load8_w(wt, row, e + 8));
#endif
}

/* Rows a LoRA expand step keeps in registers: two 16-lane accumulators
 * each, plus the two vectors of the matrix row they share. */
#define LORA_NR (X86_WIDTH == 512 ? 4 : 2)

/* NR rows x 32 columns from column c (see cpu_kernels.lora_expand). */
INLINE void lora_tile(lloco_dtype wt, const uint8_t *mat, size_t rb, int rank, const float *t,
                      int ldt, const int NR, int c, const v16 sv, float *const *yr) {
    v16 acc[LORA_NR][2];
    UNROLL
    for (int i = 0; i < NR; i++) acc[i][0] = acc[i][1] = v16_zero();
    for (int r = 0; r < rank; r++) {
        const uint8_t *row = mat + (size_t)r * rb;
        const v16 b0 = load16_w(wt, row, c), b1 = load16_w(wt, row, c + 16);
        UNROLL
        for (int i = 0; i < NR; i++) {
            const v16 s = v16_set1(t[(size_t)i * ldt + r]);
            acc[i][0] = v16_fma(s, b0, acc[i][0]);
            acc[i][1] = v16_fma(s, b1, acc[i][1]);
        }
    }
    UNROLL
    for (int i = 0; i < NR; i++) {
        float *y = yr[i] + c;
        v16_store(y, v16_add(v16_load(y), v16_mul(sv, acc[i][0])));
        v16_store(y + 16, v16_add(v16_load(y + 16), v16_mul(sv, acc[i][1])));
    }
}

/* The last columns (fewer than 32) of NR rows: 16 at a time, then one by
 * one, in the same order of operations. */
INLINE void lora_tail(lloco_dtype wt, const uint8_t *mat, size_t rb, int rank, const float *t,
                      int ldt, int nr, int c, int nc, float scale, float *const *yr) {
    for (int i = 0; i < nr; i++) {
        const float *ti = t + (size_t)i * ldt;
        int j = c;
        for (; j + 16 <= nc; j += 16) {
            v16 acc = v16_zero();
            for (int r = 0; r < rank; r++)
                acc = v16_fma(v16_set1(ti[r]), load16_w(wt, mat + (size_t)r * rb, j), acc);
            v16_store(yr[i] + j, v16_add(v16_load(yr[i] + j), v16_mul(v16_set1(scale), acc)));
        }
        for (; j < nc; j++) {
            float d = 0.0f;
            for (int r = 0; r < rank; r++) d = fmaf(ti[r], load1_w(wt, mat + (size_t)r * rb, j), d);
            yr[i][j] = yr[i][j] + scale * d;
        }
    }
}

INLINE void lora_expand_t(lloco_dtype wt, const uint8_t *mat, size_t rb, int rank, const float *t,
                          int ldt, int nr, int nc, float scale, float *y, const int32_t *rows,
                          int ldy) {
    const v16 sv = v16_set1(scale);
    const int nc32 = nc & ~31;
    for (int i = 0; i < nr; i += LORA_NR) {
        const int n = nr - i < LORA_NR ? nr - i : LORA_NR;
        float *yr[LORA_NR];
        for (int u = 0; u < n; u++) yr[u] = y + (size_t)rows[i + u] * ldy;
        const float *ti = t + (size_t)i * ldt;
        for (int c = 0; c < nc32; c += 32) {
            if (n == LORA_NR)
                lora_tile(wt, mat, rb, rank, ti, ldt, LORA_NR, c, sv, yr);
            else
                for (int u = 0; u < n; u++)
                    lora_tile(wt, mat, rb, rank, ti + (size_t)u * ldt, ldt, 1, c, sv, yr + u);
        }
        lora_tail(wt, mat, rb, rank, ti, ldt, n, nc32, nc, scale, yr);
    }
}

static void x86_lora_expand(lloco_dtype wt, const uint8_t *mat, size_t rb, int rank,
                            const float *t, int ldt, int nr, int nc, float scale, float *y,
                            const int32_t *rows, int ldy) {
    if (wt == LLOCO_DTYPE_F32)
        lora_expand_t(LLOCO_DTYPE_F32, mat, rb, rank, t, ldt, nr, nc, scale, y, rows, ldy);
    else if (wt == LLOCO_DTYPE_F16)
        lora_expand_t(LLOCO_DTYPE_F16, mat, rb, rank, t, ldt, nr, nc, scale, y, rows, ldy);
    else
        lora_expand_t(LLOCO_DTYPE_BF16, mat, rb, rank, t, ldt, nr, nc, scale, y, rows, ldy);
}

/* ---- attention ---------------------------------------------------------- */

/* n rows p0.. of K or V (head at head_off) as f32 rows of hd floats in
 * buf; rows past n_pos repeat the last (their weights are zero). */
INLINE void kv_chunk(const void *base, lloco_dtype t, int stride, size_t head_off, int p0,
                     int n, int n_pos, const int hd, float *buf) {
    for (int u = 0; u < n; u++) {
        const size_t off = (size_t)(p0 + u < n_pos ? p0 + u : n_pos - 1) * stride + head_off;
        UNROLL
        for (int s = 0; s < hd / 16; s++)
            v16_store(buf + (size_t)u * hd + 16 * s,
                      t == LLOCO_DTYPE_F16 ? v16_load_f16((const uint16_t *)base + off + 16 * s)
                                           : v16_load((const float *)base + off + 16 * s));
    }
}

/* Scratch of an attention block (see attn_block): per query its scores
 * (then probabilities), the lanes of its output dot product and its q. */
#define ATTN_SC(qi) (scratch + (size_t)(qi) * q_floats)
#define ATTN_LANES(qi) (ATTN_SC(qi) + sc_len)
#define ATTN_NPOS(qi) (a->causal ? a->p0 + i0 + (qi) / nh + 1 : a->m)

/* Queries whose lane accumulators stay in registers together while they
 * share each row of V (hd / 16 vectors per accumulator). */
#define PV_GROUP(hd) ((hd) <= 64 ? 5 : (hd) <= 128 ? 2 : 1)

/* The output lanes of tinyBLAS's dot product (16 lanes): lane by lane, a
 * group of queries walks the positions of that lane, reading each V row
 * once for the group and keeping every accumulator in registers. */
INLINE void pv_lanes16(const attn_args *a, const lloco_dtype t, const int hd, size_t head_off,
                       int nq, int i0, int nh, float *scratch, size_t q_floats, size_t sc_len) {
    const int nv = hd / 16, G = PV_GROUP(hd);
    for (int q0 = 0; q0 < nq; q0 += G) {
        const int ng = nq - q0 < G ? nq - q0 : G;
        const float *sc[PV_GROUP(16)];
        UNROLL
        for (int g = 0; g < PV_GROUP(16); g++) sc[g] = ATTN_SC(q0 + (g < ng ? g : ng - 1));
        const int n_pos = ATTN_NPOS(q0 + ng - 1); /* the group's longest row */
        /* every element set, so that the generic head size's unrolled
         * loops see initialized values past nv */
        v16 vr[16];
        UNROLL
        for (int s = 0; s < 16; s++) vr[s] = v16_zero();
        for (int l = 0; l < 16; l++) {
            v16 acc[PV_GROUP(16)][16];
            UNROLL
            for (int g = 0; g < PV_GROUP(16); g++) {
                UNROLL
                for (int s = 0; s < 16; s++) acc[g][s] = v16_zero();
            }
            for (int p = l; p < n_pos; p += 16) {
                const size_t off = (size_t)p * a->kv_stride + head_off;
                UNROLL
                for (int s = 0; s < nv; s++)
                    vr[s] = t == LLOCO_DTYPE_F16 ? v16_load_f16((const uint16_t *)a->v + off + 16 * s)
                                                 : v16_load((const float *)a->v + off + 16 * s);
                UNROLL
                for (int g = 0; g < G; g++) {
                    const v16 pr = v16_set1(sc[g][p]);
                    UNROLL
                    for (int s = 0; s < nv; s++) acc[g][s] = v16_fma(pr, vr[s], acc[g][s]);
                }
            }
            UNROLL
            for (int g = 0; g < G; g++) {
                if (g >= ng) break;
                UNROLL
                for (int s = 0; s < nv; s++)
                    v16_store(ATTN_LANES(q0 + g) + (size_t)l * hd + 16 * s, acc[g][s]);
            }
        }
    }
}

/* The output lanes of vec_dot's product (64 lanes, one query row): chunk
 * after chunk of V converted once for all queries, each lane getting four
 * positions of a chunk; four lanes of a query at a time with their
 * accumulators in registers. */
INLINE void pv_lanes64(const attn_args *a, const lloco_dtype t, const int hd, size_t head_off,
                       int nq, int i0, int nh, float *scratch, size_t q_floats, size_t sc_len,
                       float *vbuf) {
    const int nv = hd / 16, L = 64, n_max = ATTN_NPOS(nq - 1);
    v16 acc[4][16];
    memset(acc, 0, sizeof acc);
    const int vch = 4 * L;
    for (int c0 = 0; c0 < n_max; c0 += vch) {
        const int nc = n_max - c0 < vch ? n_max - c0 : vch; /* rows converted */
        kv_chunk(a->v, t, a->kv_stride, head_off, c0, nc, n_max, hd, vbuf);
        for (int qi = 0; qi < nq; qi++) {
            if (c0 >= ATTN_NPOS(qi)) continue;
            const float *sc = ATTN_SC(qi);
            float *lanes = ATTN_LANES(qi);
            for (int l = 0; l < L; l += 4) {
                UNROLL
                for (int j = 0; j < 4; j++) {
                    UNROLL
                    for (int s = 0; s < nv; s++)
                        acc[j][s] = v16_load(lanes + (size_t)(l + j) * hd + 16 * s);
                }
                for (int p = c0 + l; p < c0 + vch; p += L) {
                    UNROLL
                    for (int j = 0; j < 4; j++) {
                        const v16 pr = v16_set1(sc[p + j]);
                        const int row = p + j - c0 < nc ? p + j - c0 : nc - 1;
                        const float *vr = vbuf + (size_t)row * hd;
                        UNROLL
                        for (int s = 0; s < nv; s++)
                            acc[j][s] = v16_fma(pr, v16_load(vr + 16 * s), acc[j][s]);
                    }
                }
                UNROLL
                for (int j = 0; j < 4; j++) {
                    UNROLL
                    for (int s = 0; s < nv; s++)
                        v16_store(lanes + (size_t)(l + j) * hd + 16 * s, acc[j][s]);
                }
            }
        }
    }
}

/* An attention block (see cpu_kernels.attn): lloco_ref_attention_head's
 * arithmetic per query, with the 16 lanes of GGML's dot products and
 * softmax in vectors. Per query, scratch holds its scores, then
 * probabilities (past its positions -inf, so they exponentiate to 0, then
 * zero probabilities to the end of the row), the lanes of its output dot
 * product ([64][hd]) and its q; then the K and V chunks. */
INLINE void attn_block(const attn_args *a, int i0, int nr, int h0, int nh, float *scratch,
                       const int hd, const lloco_dtype t) {
    const int nv = hd / 16, group = a->n_head / a->n_kv_head, nq = nr * nh;
    const int n_max = a->causal ? a->p0 + i0 + nr : a->m; /* positions its last row sees */
    const size_t sc_len = (size_t)(n_max + ATTN_V_CHUNK - 1) / ATTN_V_CHUNK * ATTN_V_CHUNK + 16;
    const size_t q_floats = sc_len + 65 * (size_t)hd;
    const int tiny_kq = LLOCO_ATTN_TINY_KQ(a->m, hd, t, a->causal);
    const int tiny_pv = LLOCO_ATTN_TINY_PV(a->m, hd);
    const int L = tiny_pv ? 16 : 64;
    const size_t head_off = (size_t)(h0 / group) * hd;
    float *kbuf = scratch + (size_t)nq * q_floats, *vbuf = kbuf + 16 * (size_t)hd;
#define QV(qi) (ATTN_SC(qi) + sc_len + 64 * (size_t)hd)
    for (int qi = 0; qi < nq; qi++) {
        const float *qf = a->q + ((size_t)(i0 + qi / nh) * a->n_head + h0 + qi % nh) * hd;
        for (int s = 0; s < nv; s++) {
            v16 v = v16_load(qf + 16 * s);
            if (t == LLOCO_DTYPE_F16) v = v16_round_f16(v);
            v16_store(QV(qi) + 16 * s, v);
        }
    }
    /* cleared so that the unrolled loops of the generic head size see
     * initialized registers past nv */
    v16 q[16];
    memset(q, 0, sizeof q);
    /* Scores, 16 positions at a time, so that their lane trees reduce
     * together. */
    const int nv64 = tiny_kq ? nv : (hd & ~63) / 16; /* vectors in the lanes, the rest left over */
    const v16 scale = v16_set1(a->scale);
    for (int p0 = 0; p0 < n_max; p0 += 16) {
        kv_chunk(a->k, t, a->kv_stride, head_off, p0, 16, n_max, hd, kbuf);
        for (int qi = 0; qi < nq; qi++) {
            if (p0 >= ATTN_NPOS(qi)) continue;
            float *sc = ATTN_SC(qi);
            UNROLL
            for (int s = 0; s < nv; s++) q[s] = v16_load(QV(qi) + 16 * s);
            v16 dots[16];
            UNROLL
            for (int u = 0; u < 16; u++) {
                const float *kr = kbuf + (size_t)u * hd;
                if (tiny_kq) {
                    v16 d = v16_zero();
                    UNROLL
                    for (int s = 0; s < nv; s++) d = v16_fma(q[s], v16_load(kr + 16 * s), d);
                    dots[u] = d;
                } else {
                    v16 d[4] = {v16_zero(), v16_zero(), v16_zero(), v16_zero()};
                    UNROLL
                    for (int s = 0; s < nv64; s++)
                        d[s % 4] = v16_fma(q[s], v16_load(kr + 16 * s), d[s % 4]);
                    dots[u] = v16_add(v16_add(d[0], d[2]), v16_add(d[1], d[3]));
                }
            }
            v16 r = v16_reduce16(dots);
            if (nv64 < nv) v16_store(sc + p0, r);
            for (int u = 0; nv64 < nv && u < 16; u++) {
                /* vec_dot's leftovers (see lloco_op_attention) */
                const float *kr = kbuf + (size_t)u * hd, *qv = QV(qi);
                if (t == LLOCO_DTYPE_F16) {
                    double d = sc[p0 + u];
                    for (int e = 16 * nv64; e < hd; e++) d += (double)(qv[e] * kr[e]);
                    sc[p0 + u] = (float)d;
                } else {
                    for (int e = 16 * nv64; e < hd; e++) sc[p0 + u] += qv[e] * kr[e];
                }
            }
            if (nv64 < nv) r = v16_load(sc + p0);
            v16_store(sc + p0, v16_mul(r, scale));
        }
    }
    for (int qi = 0; qi < nq; qi++) {
        float *sc = ATTN_SC(qi);
        const int n_pos = ATTN_NPOS(qi), npad = (n_pos + 15) & ~15;
        for (int p = n_pos; p < npad; p++) sc[p] = -INFINITY;
        v16 vmax = v16_set1(-INFINITY);
        for (int p = 0; p < npad; p += 16) vmax = v16_max(vmax, v16_load(sc + p));
        const v16 mx = v16_set1(v16_reduce_max(vmax));
        double sum = 0.0;
        for (int p = 0; p < npad; p += 16) {
            const v16 e = v16_exp(v16_sub(v16_load(sc + p), mx));
            v16_store(sc + p, e);
            sum += (double)v16_reduce(e);
        }
        const v16 inv = v16_set1((float)(1.0 / sum));
        for (int p = 0; p < npad; p += 16) {
            v16 pr = v16_mul(v16_load(sc + p), inv);
            if (t == LLOCO_DTYPE_F16) pr = v16_round_f16(pr);
            v16_store(sc + p, pr);
        }
        memset(sc + npad, 0, (sc_len - (size_t)npad) * sizeof(float));
        if (!tiny_pv) memset(ATTN_LANES(qi), 0, (size_t)L * hd * sizeof(float));
    }
    /* Lane l of the output dot product sums positions p = l (mod L) in
     * order; positions past a query's own have probability 0 and add
     * exactly nothing. */
    if (tiny_pv)
        pv_lanes16(a, t, hd, head_off, nq, i0, nh, scratch, q_floats, sc_len);
    else
        pv_lanes64(a, t, hd, head_off, nq, i0, nh, scratch, q_floats, sc_len, vbuf);
    for (int qi = 0; qi < nq; qi++) {
        const float *lanes = ATTN_LANES(qi);
        float *out = a->out + ((size_t)(i0 + qi / nh) * a->n_head + h0 + qi % nh) * hd;
        for (int s = 0; s < nv; s++) {
            v16 w[16];
            const float *ls = lanes + 16 * s; /* lane l of these 16 dims at ls + l * hd */
            UNROLL
            for (int ii = 0; ii < 16; ii++)
                w[ii] = tiny_pv ? v16_load(ls + (size_t)ii * hd)
                                : v16_add(v16_add(v16_load(ls + (size_t)ii * hd),
                                                  v16_load(ls + (size_t)(32 + ii) * hd)),
                                          v16_add(v16_load(ls + (size_t)(16 + ii) * hd),
                                                  v16_load(ls + (size_t)(48 + ii) * hd)));
            v16_store(out + 16 * s, v16_tree(w));
        }
    }
#undef QV
}

/* One instantiation per cache type and common head size makes them
 * constants. */
static void x86_attn(const attn_args *a, int i0, int nr, int h0, int nh, float *scratch) {
    if (a->kv_type == LLOCO_DTYPE_F16) {
        if (a->head_dim == 64)
            attn_block(a, i0, nr, h0, nh, scratch, 64, LLOCO_DTYPE_F16);
        else if (a->head_dim == 128)
            attn_block(a, i0, nr, h0, nh, scratch, 128, LLOCO_DTYPE_F16);
        else
            attn_block(a, i0, nr, h0, nh, scratch, a->head_dim, LLOCO_DTYPE_F16);
    } else {
        if (a->head_dim == 64)
            attn_block(a, i0, nr, h0, nh, scratch, 64, LLOCO_DTYPE_F32);
        else if (a->head_dim == 32) /* the embedder's */
            attn_block(a, i0, nr, h0, nh, scratch, 32, LLOCO_DTYPE_F32);
        else
            attn_block(a, i0, nr, h0, nh, scratch, a->head_dim, LLOCO_DTYPE_F32);
    }
}

#undef ATTN_SC
#undef ATTN_LANES
#undef ATTN_NPOS

/* ---- row-wise and elementwise ------------------------------------------- */

static void x86_rmsnorm_row(const float *x, const float *w, int d, float eps, float *y) {
    /* GGML sums the rounded squares in double, one after the other: the
     * order is the result, so this sum stays scalar. */
    double ss = 0.0;
    for (int j = 0; j < d; j++) ss += (double)(x[j] * x[j]);
    const float mean = (float)(ss / d);
    const float scale = 1.0f / sqrtf(mean + eps);
    const __m256 sv = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + 8 <= d; j += 8)
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), sv),
                                              _mm256_loadu_ps(w + j)));
    for (; j < d; j++) y[j] = x[j] * scale * w[j];
}

static void x86_softmax_row(float *x, int n) {
    float max = -INFINITY;
    int j = 0;
    if (n >= 16) {
        v16 vmax = v16_load(x);
        for (j = 16; j + 16 <= n; j += 16) vmax = v16_max(vmax, v16_load(x + j));
        max = v16_reduce_max(vmax);
    }
    for (; j < n; j++) max = max > x[j] ? max : x[j];
    const v16 mx = v16_set1(max);
    double sum = 0.0;
    for (j = 0; j + 16 <= n; j += 16) {
        const v16 e = v16_exp(v16_sub(v16_load(x + j), mx));
        v16_store(x + j, e);
        sum += (double)v16_reduce(e);
    }
    for (; j < n; j++) { /* GGML's scalar tail uses libm */
        x[j] = expf(x[j] - max);
        sum += (double)x[j];
    }
    const float inv = (float)(1.0 / sum);
    const __m256 iv = _mm256_set1_ps(inv);
    for (j = 0; j + 8 <= n; j += 8)
        _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), iv));
    for (; j < n; j++) x[j] *= inv;
}

static void x86_silu_mul(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const v16 g = v16_load(gate + i);
        const v16 e = v16_exp(v16_sub(v16_zero(), g));
        v16_store(out + i, v16_mul(v16_div(g, v16_add(v16_set1(1.0f), e)), v16_load(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + lloco_expf_ggml(0.0f - gate[i])) * up[i];
}

/* |v|, and a where x >= 0 else b, lane by lane. */
INLINE v16 v16_abs(v16 v) {
#if X86_WIDTH == 512
    return _mm512_abs_ps(v);
#else
    const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    return v16_make(_mm256_and_ps(v.lo, m), _mm256_and_ps(v.hi, m));
#endif
}

INLINE v16 v16_select_nonneg(v16 x, v16 a, v16 b) {
#if X86_WIDTH == 512
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
#else
    const __m256 z = _mm256_setzero_ps();
    return v16_make(_mm256_blendv_ps(b.lo, a.lo, _mm256_cmp_ps(x.lo, z, _CMP_GE_OQ)),
                    _mm256_blendv_ps(b.hi, a.hi, _mm256_cmp_ps(x.hi, z, _CMP_GE_OQ)));
#endif
}

/* lloco_gelu, 16 lanes at a time. */
static void x86_gelu(float *x, int64_t n, int approx) {
    const float *k = lloco_gelu_k;
    const v16 one = v16_set1(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const v16 v = v16_load(x + i);
        if (approx) {
            const v16 u = v16_fma(v16_set1(0.044715f), v16_mul(v16_mul(v, v), v), v);
            v16_store(x + i, v16_div(v, v16_add(one, v16_exp(v16_mul(v16_set1(k[7]), u)))));
            continue;
        }
        const v16 z = v16_mul(v16_abs(v), v16_set1(k[0]));
        const v16 t = v16_div(one, v16_fma(v16_set1(k[1]), z, one));
        v16 poly = v16_fma(v16_set1(k[6]), t, v16_set1(k[5]));
        poly = v16_fma(poly, t, v16_set1(k[4]));
        poly = v16_fma(poly, t, v16_set1(k[3]));
        poly = v16_mul(v16_fma(poly, t, v16_set1(k[2])), t);
        const v16 e = v16_mul(poly, v16_exp(v16_sub(v16_zero(), v16_mul(z, z))));
        const v16 h = v16_select_nonneg(v, v16_fma(v16_set1(-0.5f), e, one),
                                        v16_mul(v16_set1(0.5f), e));
        v16_store(x + i, v16_mul(v, h));
    }
    for (; i < n; i++) x[i] = lloco_gelu(x[i], approx);
}

static void x86_add(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] += x[i];
}

static void x86_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(load_u16(src + i));
}

static void x86_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = lloco_fp32_to_fp16(src[i]);
}

/* The backend table. ISAs differ only in the activation layout decode uses
 * (its row size, its quantizer and the matrix-rows kernel that reads it);
 * prefill uses the packed tile layout everywhere. Each ISA file expands
 * this once, after defining those three functions. */
#define X86_KERNEL_TABLE(NAME, DECODE_ROW_BYTES, QUANTIZE_DECODE, MM_ROWS)                      \
    static size_t act_row_bytes(lloco_dtype wt, int k, int packed) {                            \
        (void)wt;                                                                               \
        return packed ? tile_row_bytes(k) : DECODE_ROW_BYTES(k);                                \
    }                                                                                           \
    static void quantize_act(lloco_dtype wt, const float *x, int k, int packed, uint8_t *act,   \
                             int i) {                                                           \
        if (packed)                                                                             \
            quantize_tile_row(wt, x, k, act, i);                                                \
        else                                                                                    \
            QUANTIZE_DECODE(wt, x, k, act + (size_t)i * DECODE_ROW_BYTES(k));                   \
    }                                                                                           \
    const cpu_kernels NAME = {                                                                  \
        .tile_r = R_,                                                                           \
        .tile_c = C_,                                                                           \
        .packed_min_m = X86_PACKED_MIN_M,                                                       \
        .act_row_bytes = act_row_bytes,                                                         \
        .quantize_act = quantize_act,                                                           \
        .mm_rows = MM_ROWS,                                                                     \
        .mm_panel_bytes = x86_mm_panel_bytes,                                                   \
        .mm_pack = x86_mm_pack,                                                                 \
        .mm_tile = x86_mm_tile,                                                                 \
        .mm_float = x86_mm_float,                                                               \
        .mm_float_gemm = x86_mm_float_gemm,                                                     \
        .lora_expand = x86_lora_expand,                                                         \
        .attn = x86_attn,                                                                       \
        .rmsnorm_row = x86_rmsnorm_row,                                                         \
        .softmax_row = x86_softmax_row,                                                         \
        .silu_mul = x86_silu_mul,                                                               \
        .gelu = x86_gelu,                                                                       \
        .add = x86_add,                                                                         \
        .f16_to_f32 = x86_f16_to_f32,                                                           \
        .f32_to_f16 = x86_f32_to_f16,                                                           \
    }
