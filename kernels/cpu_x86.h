/* cpu_x86: the x86 SIMD kernels of the CPU backend, written once and
 * compiled twice: by cpu_avx2.c (256-bit vectors, maddubs dot products, 16
 * registers) and by cpu_avx512.c (512-bit prefill vectors, VNNI vpdpbusd,
 * 32 registers), which add their own decode kernels and op table.
 * The including file defines X86_WIDTH (256 or 512), X86_VNNI, X86_TILE_R
 * and X86_TILE_C.
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

#include "kernels/blocks.h"
#include "kernels/cpu_kernels.h"

#define R_ X86_TILE_R
#define C_ X86_TILE_C
#define INLINE static inline __attribute__((always_inline))
/* Loops over tile rows/columns must unroll completely, or their vector
 * accumulators live in memory instead of registers. */
#define UNROLL _Pragma("GCC unroll 16")
/* For loops with a run-time count of at most 8. */
#define UNROLL_8 _Pragma("GCC unroll 8")

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

/* exp on 8 floats (Cephes-style: 2^n * poly(r)), within 2 ulp of expf;
 * 0 below -87.33 (where expf reaches subnormals) and for -inf. */
INLINE __m256 exp256(__m256 x0) {
    const __m256 x =
        _mm256_max_ps(_mm256_min_ps(x0, _mm256_set1_ps(88.37f)), _mm256_set1_ps(-87.33f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)),
                         _mm256_cmp_ps(x0, _mm256_set1_ps(-87.33f), _CMP_GE_OQ));
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

/* 8x8 transpose of 32-bit lanes: afterwards v[j] lane i = old v[i] lane j. */
INLINE void transpose8(__m256i v[8]) {
    __m256i t[8], u[8];
    UNROLL
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    UNROLL
    for (int h = 0; h < 2; h++) {
        u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h + 0], t[4 * h + 2]);
        u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h + 0], t[4 * h + 2]);
        u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
        u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
    }
    UNROLL
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        v[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
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

/* ---- matmul, packed weight panels x activation tiles (prefill) ---------- */

#if X86_WIDTH == 512
#define LANES 16
typedef __m512i vi;
typedef __m512 vf;
#define vi_loadu(p) _mm512_loadu_si512((const void *)(p))
#define vf_loadu(p) _mm512_loadu_ps((const void *)(p))
#define vi_zero() _mm512_setzero_si512()
#define vf_zero() _mm512_setzero_ps()
#define vf_fmadd(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_mul(a, b) _mm512_mul_ps(a, b)
#define vi_cvt(a) _mm512_cvtepi32_ps(a)
#define vf_hsum(a) _mm512_reduce_add_ps(a)
#define vi_dot(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#else
#define LANES 8
typedef __m256i vi;
typedef __m256 vf;
#define vi_loadu(p) _mm256_loadu_si256((const __m256i *)(p))
#define vf_loadu(p) _mm256_loadu_ps((const float *)(p))
#define vi_zero() _mm256_setzero_si256()
#define vf_zero() _mm256_setzero_ps()
#define vf_fmadd(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_mul(a, b) _mm256_mul_ps(a, b)
#define vi_cvt(a) _mm256_cvtepi32_ps(a)
#define vf_hsum(a) hsum(a)
#define vi_dot(acc, u, s) dot_u8s8(acc, u, s)
#endif
#define VBYTES (LANES * 4)

/* Float lanes and lane masks for the attention kernel. */
#if X86_WIDTH == 512
typedef __mmask16 vmask;
#define vf_set1(x) _mm512_set1_ps(x)
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_sub(a, b) _mm512_sub_ps(a, b)
#define vf_max(a, b) _mm512_max_ps(a, b)
#define vf_storeu(p, v) _mm512_storeu_ps(p, v)
#define vf_lt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)
#define vf_eq(a, b) _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)
#define vf_neq(a, b) _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ)
#define vmask_any(m) ((m) != 0)
#define vf_where(m, a, v) _mm512_mask_blend_ps(m, a, v) /* v in the lanes of m, else a */
/* exp512: exp256 on 16 lanes */
INLINE __m512 vf_exp(__m512 x0) {
    const __m512 x =
        _mm512_max_ps(_mm512_min_ps(x0, _mm512_set1_ps(88.37f)), _mm512_set1_ps(-87.33f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x0, _mm512_set1_ps(-87.33f), _CMP_GE_OQ), p,
                               _mm512_castsi512_ps(e));
}
#else
typedef __m256 vmask;
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_sub(a, b) _mm256_sub_ps(a, b)
#define vf_max(a, b) _mm256_max_ps(a, b)
#define vf_storeu(p, v) _mm256_storeu_ps(p, v)
#define vf_lt(a, b) _mm256_cmp_ps(a, b, _CMP_LT_OQ)
#define vf_eq(a, b) _mm256_cmp_ps(a, b, _CMP_EQ_OQ)
#define vf_neq(a, b) _mm256_cmp_ps(a, b, _CMP_NEQ_UQ)
#define vmask_any(m) (_mm256_movemask_ps(m) != 0)
#define vf_where(m, a, v) _mm256_blendv_ps(a, v, m)
#define vf_exp(x) exp256(x)
#endif

/* Layout. A row's blocks are cut into chunks of LANES blocks. Within a
 * chunk, one dot instruction sums 4 values per 32-bit lane, and each lane
 * belongs to one block, so after S instructions the lanes hold whole-block
 * integer dots and the block scales apply lane-wise once per chunk rather
 * than once per block. A full chunk gives each block a lane for S = 8
 * steps; a shorter last chunk (k = 576 leaves 2 blocks) spreads each block
 * over lpb lanes and needs only S = 8 / lpb steps, so no work is spent on
 * padding:
 *   lane l, step j  <->  block l / lpb, 4-byte group (l % lpb) * S + j.
 * Activation chunk: qs [S][VBYTES], then lanes of d (block scale), s
 * (q8_1 sums, first lane of each block only) and c (each lane's integer
 * offset, see c_mult). Weight panel chunk: qs [S][R_][VBYTES], then d lanes [R_], and
 * for q4_1 m lanes [R_]. */
typedef struct {
    int b0, nblk; /* first block, blocks in the chunk */
    int lpb, S;   /* lanes per block, dot steps (powers of 2) */
    int log2_S;
} chunk;

static int chunk_count(int nb) { return (nb + LANES - 1) / LANES; }

static chunk chunk_at(int nb, int ci) {
    chunk c;
    c.b0 = ci * LANES;
    c.nblk = nb - c.b0 < LANES ? nb - c.b0 : LANES;
    int tp = 1;
    while (tp < c.nblk) tp *= 2;
    c.lpb = LANES / tp;
    c.S = (8 + c.lpb - 1) / c.lpb;
    c.log2_S = __builtin_ctz((unsigned)c.S);
    return c;
}

/* Where 4-byte group g of block i of a chunk goes: lane and step. */
INLINE int chunk_lane(chunk c, int i, int g) { return i * c.lpb + (g >> c.log2_S); }
INLINE int chunk_step(chunk c, int g) { return g & (c.S - 1); }

static size_t act_chunk_bytes(int S) { return (size_t)(S + 3) * VBYTES; }

static size_t panel_chunk_bytes(lloco_dtype wt, int S) {
    return (size_t)(S + 1 + (wt == LLOCO_DTYPE_Q4_1)) * R_ * VBYTES;
}

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

static size_t packed_act_row_bytes(int k) {
    const int nb = k / QK32, n = chunk_count(nb);
    return align64((size_t)(n - 1) * act_chunk_bytes(8) + act_chunk_bytes(chunk_at(nb, n - 1).S));
}

static void quantize_packed(lloco_dtype wt, const float *x, int k, uint8_t *row) {
    const int nb = k / QK32, cm = c_mult(wt);
    memset(row, 0, packed_act_row_bytes(k));
    for (int ci = 0; ci < chunk_count(nb); ci++) {
        const chunk ch = chunk_at(nb, ci);
        uint8_t *ac = row + ci * act_chunk_bytes(8);
        float *dl = (float *)(ac + ch.S * VBYTES), *sl = dl + LANES;
        int32_t *cl = (int32_t *)(sl + LANES);
        for (int i0 = 0; i0 < ch.nblk; i0 += 8) {
            qblocks8 qb;
            const int n = ch.nblk - i0 < 8 ? ch.nblk - i0 : 8;
            quant_blocks8(x + (size_t)(ch.b0 + i0) * QK32, n, &qb);
            if (ch.lpb == 1) { /* block per lane: a transpose puts groups in place */
                transpose8(qb.q);
                UNROLL
                for (int g = 0; g < 8; g++)
                    _mm256_storeu_si256((__m256i *)(ac + g * VBYTES + i0 * 4), qb.q[g]);
                _mm256_storeu_ps(dl + i0, qb.d);
                _mm256_storeu_ps(sl + i0, qb.s);
                _mm256_storeu_si256((__m256i *)(cl + i0),
                                    _mm256_mullo_epi32(qb.sum, _mm256_set1_epi32(cm)));
                continue;
            }
            float d[8], s[8];
            _mm256_storeu_ps(d, qb.d);
            _mm256_storeu_ps(s, qb.s);
            for (int b = 0; b < n; b++) {
                const int i = i0 + b;
                int32_t g4[8], sum4[8];
                _mm256_storeu_si256((__m256i *)g4, qb.q[b]);
                _mm256_storeu_si256((__m256i *)sum4, qb.sum4[b]);
                for (int g = 0; g < 8; g++) {
                    memcpy(ac + chunk_step(ch, g) * VBYTES + chunk_lane(ch, i, g) * 4, &g4[g], 4);
                    cl[chunk_lane(ch, i, g)] += cm * sum4[g];
                }
                for (int l = i * ch.lpb; l < (i + 1) * ch.lpb; l++) dl[l] = d[b];
                sl[i * ch.lpb] = s[b];
            }
        }
    }
}

static size_t x86_mm_panel_bytes(lloco_dtype wt, int k) {
    const int nb = k / QK32, n = chunk_count(nb);
    return align64((size_t)(n - 1) * panel_chunk_bytes(wt, 8) +
                   panel_chunk_bytes(wt, chunk_at(nb, n - 1).S));
}

/* The fp16 scales (and q4_1 minimums) of 8 consecutive blocks of a row. */
INLINE void block_scales8(lloco_dtype wt, const uint8_t *row, int b0, __m256 *d, __m256 *m) {
    const size_t bb = lloco_dtype_block_bytes(wt);
    uint16_t hd[8], hm[8];
    UNROLL
    for (int b = 0; b < 8; b++) {
        hd[b] = load_u16(row + (b0 + b) * bb);
        hm[b] = wt == LLOCO_DTYPE_Q4_1 ? load_u16(row + (b0 + b) * bb + 2) : 0;
    }
    *d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hd));
    *m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hm));
}

INLINE void pack_panel(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                       uint8_t *dst) {
    const int nb = k / QK32;
    memset(dst, 0, x86_mm_panel_bytes(wt, k));
    for (int ci = 0; ci < chunk_count(nb); ci++) {
        const chunk ch = chunk_at(nb, ci);
        uint8_t *pc = dst + ci * panel_chunk_bytes(wt, 8);
        float *dl = (float *)(pc + (size_t)ch.S * R_ * VBYTES), *ml = dl + R_ * LANES;
        for (int r = 0; r < nrows; r++) {
            const uint8_t *row = w + r * rb;
            if (ch.lpb == 1) { /* full chunk, block per lane: transposes put groups in place */
                for (int i0 = 0; i0 < LANES; i0 += 8) {
                    __m256i v[8];
                    float unused;
                    UNROLL
                    for (int b = 0; b < 8; b++)
                        v[b] = weight_block(wt, row, ch.b0 + i0 + b, &unused, &unused);
                    transpose8(v);
                    UNROLL
                    for (int g = 0; g < 8; g++)
                        _mm256_storeu_si256(
                            (__m256i *)(pc + ((size_t)g * R_ + r) * VBYTES + i0 * 4), v[g]);
                    __m256 d, m;
                    block_scales8(wt, row, ch.b0 + i0, &d, &m);
                    _mm256_storeu_ps(dl + r * LANES + i0, d);
                    if (wt == LLOCO_DTYPE_Q4_1) _mm256_storeu_ps(ml + r * LANES + i0, m);
                }
                continue;
            }
            for (int i = 0; i < ch.nblk; i++) {
                float d, m;
                int32_t g4[8];
                _mm256_storeu_si256((__m256i *)g4, weight_block(wt, row, ch.b0 + i, &d, &m));
                for (int g = 0; g < 8; g++)
                    memcpy(pc + ((size_t)chunk_step(ch, g) * R_ + r) * VBYTES +
                               chunk_lane(ch, i, g) * 4,
                           &g4[g], 4);
                for (int l = i * ch.lpb; l < (i + 1) * ch.lpb; l++) {
                    dl[r * LANES + l] = d;
                    if (wt == LLOCO_DTYPE_Q4_1) ml[r * LANES + l] = m;
                }
            }
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

/* One chunk of an R_ x C_ tile: S integer steps, then the lane-wise
 * scaling into the float accumulators. */
INLINE void tile_chunk(lloco_dtype wt, const uint8_t *pc, const uint8_t *const ac[C_], int S,
                       vf facc[R_][C_]) {
    vi iacc[R_][C_];
    UNROLL
    for (int c = 0; c < C_; c++) {
        const vi init = wt == LLOCO_DTYPE_Q4_1 ? vi_zero() : vi_loadu(ac[c] + (S + 2) * VBYTES);
        UNROLL
        for (int r = 0; r < R_; r++) iacc[r][c] = init;
    }
    UNROLL_8
    for (int j = 0; j < S; j++) {
        vi yv[C_];
        UNROLL
        for (int c = 0; c < C_; c++) yv[c] = vi_loadu(ac[c] + j * VBYTES);
        UNROLL
        for (int r = 0; r < R_; r++) {
            const vi wv = vi_loadu(pc + ((size_t)j * R_ + r) * VBYTES);
#if !X86_VNNI
            if (wt == LLOCO_DTYPE_Q8_0) { /* signed weights: move the sign onto y */
                const __m256i wa = _mm256_sign_epi8(wv, wv);
                UNROLL
                for (int c = 0; c < C_; c++)
                    iacc[r][c] = dot_u8s8(iacc[r][c], wa, _mm256_sign_epi8(yv[c], wv));
                continue;
            }
#endif
            UNROLL
            for (int c = 0; c < C_; c++) iacc[r][c] = vi_dot(iacc[r][c], wv, yv[c]);
        }
    }
    const float *dl = (const float *)(pc + (size_t)S * R_ * VBYTES), *ml = dl + R_ * LANES;
    vf dy[C_];
    UNROLL
    for (int c = 0; c < C_; c++) dy[c] = vf_loadu(ac[c] + S * VBYTES);
    UNROLL
    for (int r = 0; r < R_; r++) {
        const vf dw = vf_loadu(dl + r * LANES);
        UNROLL
        for (int c = 0; c < C_; c++)
            facc[r][c] = vf_fmadd(vi_cvt(iacc[r][c]), vf_mul(dw, dy[c]), facc[r][c]);
    }
    if (wt == LLOCO_DTYPE_Q4_1) {
        UNROLL
        for (int r = 0; r < R_; r++) {
            const vf mw = vf_loadu(ml + r * LANES);
            UNROLL
            for (int c = 0; c < C_; c++)
                facc[r][c] = vf_fmadd(mw, vf_loadu(ac[c] + (S + 1) * VBYTES), facc[r][c]);
        }
    }
}

INLINE void tile_kernel(lloco_dtype wt, const uint8_t *panel, int k, const uint8_t *act,
                        size_t stride, float *out) {
    const int nb = k / QK32;
    vf facc[R_][C_];
    UNROLL
    for (int r = 0; r < R_; r++) {
        UNROLL
        for (int c = 0; c < C_; c++) facc[r][c] = vf_zero();
    }
    for (int ci = 0; ci < chunk_count(nb); ci++) {
        const chunk ch = chunk_at(nb, ci);
        const uint8_t *pc = panel + ci * panel_chunk_bytes(wt, 8);
        const uint8_t *ac[C_];
        UNROLL
        for (int c = 0; c < C_; c++) ac[c] = act + c * stride + ci * act_chunk_bytes(8);
        if (ch.S == 8)
            tile_chunk(wt, pc, ac, 8, facc); /* constant S: fully unrolled */
        else
            tile_chunk(wt, pc, ac, ch.S, facc);
    }
    UNROLL
    for (int c = 0; c < C_; c++) {
        UNROLL
        for (int r = 0; r < R_; r++) out[c * R_ + r] = vf_hsum(facc[r][c]);
    }
}

static void x86_mm_tile(lloco_dtype wt, const uint8_t *panel, int k, const uint8_t *act,
                        size_t stride, float *out) {
    /* One instantiation per weight type keeps type tests out of the loops. */
    if (wt == LLOCO_DTYPE_Q4_1)
        tile_kernel(LLOCO_DTYPE_Q4_1, panel, k, act, stride, out);
    else if (wt == LLOCO_DTYPE_Q8_0)
        tile_kernel(LLOCO_DTYPE_Q8_0, panel, k, act, stride, out);
    else
        tile_kernel(LLOCO_DTYPE_Q4_0, panel, k, act, stride, out);
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

/* NR weight rows against one activation row, one block per step: integer
 * dot into 8 lanes, scaled by d_w * d_y in float. */
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
            macc[r] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * sy;
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

static void mm_rows_natural(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                            const uint8_t *act, float *y) {
    const int nb = k / QK32;
    int r = 0;
    if (wt == LLOCO_DTYPE_Q4_1) {
        for (; r + 4 <= nrows; r += 4) rows_q4_1(w + r * rb, rb, 4, nb, act, y + r);
        for (; r < nrows; r++) rows_q4_1(w + r * rb, rb, 1, nb, act, y + r);
    } else if (wt == LLOCO_DTYPE_Q8_0) {
        for (; r + 4 <= nrows; r += 4)
            rows_q4_0_q8_0(LLOCO_DTYPE_Q8_0, w + r * rb, rb, 4, nb, act, y + r);
        for (; r < nrows; r++) rows_q4_0_q8_0(LLOCO_DTYPE_Q8_0, w + r * rb, rb, 1, nb, act, y + r);
    } else {
        for (; r + 4 <= nrows; r += 4)
            rows_q4_0_q8_0(LLOCO_DTYPE_Q4_0, w + r * rb, rb, 4, nb, act, y + r);
        for (; r < nrows; r++) rows_q4_0_q8_0(LLOCO_DTYPE_Q4_0, w + r * rb, rb, 1, nb, act, y + r);
    }
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

static void x86_mm_float(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                         const float *x, int m, float *y, int ldy) {
    if (wt == LLOCO_DTYPE_F32)
        float_rows(LLOCO_DTYPE_F32, w, rb, nrows, k, x, m, y, ldy);
    else if (wt == LLOCO_DTYPE_F16)
        float_rows(LLOCO_DTYPE_F16, w, rb, nrows, k, x, m, y, ldy);
    else
        float_rows(LLOCO_DTYPE_BF16, w, rb, nrows, k, x, m, y, ldy);
}

/* ---- attention ---------------------------------------------------------- */

/* hd (a multiple of 8) halves to floats, 16 at a time where possible. */
INLINE void f16_row_to_f32(const uint16_t *src, float *dst, int hd) {
    int d = 0;
#if X86_WIDTH == 512
    for (; d + 16 <= hd; d += 16)
        _mm512_storeu_ps(dst + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + d))));
#endif
    for (; d < hd; d += 8)
        _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + d))));
}

/* Copies the K and V rows of positions [p, p + n) of KV head g into
 * buffers of CH rows with stride hd, as f32; rows past n repeat row n - 1
 * (callers mask their scores). With a constant hd, every value is then at a
 * constant offset from one pointer. */
INLINE void load_kv_chunk(const attn_args *a, int g, int p, int n, int CH, const int hd,
                          float *kbuf, float *vbuf) {
    for (int t = 0; t < CH; t++) {
        const size_t off = (size_t)(p + (t < n ? t : n - 1)) * a->kv_stride + (size_t)g * hd;
        if (a->kv_type == LLOCO_DTYPE_F32) {
            memcpy(kbuf + t * hd, (const float *)a->k + off, (size_t)hd * sizeof(float));
            memcpy(vbuf + t * hd, (const float *)a->v + off, (size_t)hd * sizeof(float));
        } else {
            f16_row_to_f32((const uint16_t *)a->k + off, kbuf + t * hd, hd);
            f16_row_to_f32((const uint16_t *)a->v + off, vbuf + t * hd, hd);
        }
    }
}

/* Scores of one query against 8 key rows (stride hd): 8 dot products
 * reduced together so the horizontal sums share their shuffles. */
INLINE __m256 scores8(const float *q, const float *k, const int hd) {
    __m256 acc[8];
    UNROLL
    for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 8) {
        const __m256 qd = _mm256_loadu_ps(q + d);
        UNROLL
        for (int u = 0; u < 8; u++)
            acc[u] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + u * hd + d), acc[u]);
    }
    const __m256 s01 = _mm256_hadd_ps(acc[0], acc[1]), s23 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 s45 = _mm256_hadd_ps(acc[4], acc[5]), s67 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                         _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

/* For few queries (decode): one query at a time against chunks of CH
 * positions, flash-style; the chunk's K/V rows are converted once and
 * shared by the task's queries. */
INLINE void per_query(const attn_args *a, int g, int i0, int i1, int p_begin, int p_end,
                      float *states, const int hd) {
    enum { CH = 16 };
    const int group = a->n_head / a->n_kv_head;
    _Alignas(64) float kbuf[CH * 256], vbuf[CH * 256];
    for (int p = p_begin; p < p_end; p += CH) {
        const int n = p_end - p < CH ? p_end - p : CH;
        load_kv_chunk(a, g, p, n, CH, hd, kbuf, vbuf);
        for (int i = i0; i < i1; i++) {
            const int nvalid = a->p0 + i + 1 - p < n ? a->p0 + i + 1 - p : n;
            if (nvalid <= 0) continue;
            for (int hh = 0; hh < group; hh++) {
                const float *q = a->q + ((size_t)i * a->n_head + g * group + hh) * hd;
                float *st = states + ((size_t)(i - i0) * group + hh) * ATTN_STATE_FLOATS(hd);
                float *o = st + 2;
                _Alignas(32) float sc[CH];
                UNROLL
                for (int t = 0; t < CH; t += 8)
                    _mm256_store_ps(sc + t, _mm256_mul_ps(scores8(q, kbuf + t * hd, hd),
                                                          _mm256_set1_ps(a->scale)));
                float cmax = sc[0];
                for (int t = 1; t < nvalid; t++) cmax = cmax > sc[t] ? cmax : sc[t];
                if (cmax > st[0]) { /* new max: rescale what was summed so far */
                    const float corr = expf(st[0] - cmax);
                    st[1] *= corr;
                    for (int d = 0; d < hd; d += 8)
                        _mm256_storeu_ps(
                            o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), _mm256_set1_ps(corr)));
                    st[0] = cmax;
                }
                __m256 lsum = _mm256_setzero_ps();
                UNROLL
                for (int t = 0; t < CH; t += 8) {
                    const __m256 valid =
                        _mm256_cmp_ps(_mm256_add_ps(_mm256_set1_ps((float)t),
                                                    _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)),
                                      _mm256_set1_ps((float)nvalid), _CMP_LT_OQ);
                    const __m256 e = _mm256_and_ps(
                        exp256(_mm256_sub_ps(_mm256_load_ps(sc + t), _mm256_set1_ps(st[0]))),
                        valid);
                    _mm256_store_ps(sc + t, e);
                    lsum = _mm256_add_ps(lsum, e);
                }
                st[1] += hsum(lsum);
                for (int d = 0; d < hd; d += 8) { /* invalid positions weigh 0 */
                    __m256 od = _mm256_loadu_ps(o + d);
                    UNROLL
                    for (int t = 0; t < CH; t++)
                        od = _mm256_fmadd_ps(_mm256_set1_ps(sc[t]),
                                             _mm256_loadu_ps(vbuf + t * hd + d), od);
                    _mm256_storeu_ps(o + d, od);
                }
            }
        }
    }
}

static void attn_per_query(const attn_args *a, int g, int i0, int i1, int p_begin, int p_end,
                           float *states) {
    if (a->head_dim == 64)
        per_query(a, g, i0, i1, p_begin, p_end, states, 64);
    else if (a->head_dim == 128)
        per_query(a, g, i0, i1, p_begin, p_end, states, 128);
    else
        per_query(a, g, i0, i1, p_begin, p_end, states, a->head_dim);
}

/* Positions per chunk of the query-lane kernel: one score vector each. */
#define QCH LANES
/* How far scores may exceed the running max before it moves (exp(16) is
 * about 9e6: sums of thousands of such terms stay far from overflow). */
#define ATTN_SLACK 16.0f
/* Output dims per pass of its P.V product: the accumulators and the
 * chunk's probabilities must fit the registers together. */
#define PV_EB (X86_WIDTH == 512 ? 8 : 4)

/* For many queries (prefill): one vector lane per query, queries
 * [lq0, lq0 + LANES) of the task (query q is row i0 + q / group, head
 * q % group). Scores of a chunk are then QCH vectors built by broadcasting
 * K values against the transposed queries, the online softmax is purely
 * lane-wise, and P.V broadcasts V values against the probability vectors:
 * no horizontal sums anywhere. */
INLINE void query_lanes(const attn_args *a, int g, int i0, int i1, int p_begin, int p_end,
                        float *states, int lq0, const int hd) {
    const int group = a->n_head / a->n_kv_head;
    const int nq = (i1 - i0) * group - lq0 < LANES ? (i1 - i0) * group - lq0 : LANES;
    _Alignas(64) float qt[256 * LANES], ot[256 * LANES]; /* [dim][lane] */
    _Alignas(64) float kbuf[QCH * 256], vbuf[QCH * 256];
    _Alignas(64) float mv[LANES], lv[LANES], lim[LANES];
    int min_lim = a->p0 + i1;
    for (int l = 0; l < LANES; l++) {
        if (l >= nq) { /* idle lane: sees nothing, adds nothing */
            for (int d = 0; d < hd; d++) qt[d * LANES + l] = ot[d * LANES + l] = 0.0f;
            mv[l] = -INFINITY, lv[l] = 0.0f, lim[l] = -1.0f;
            continue;
        }
        const int ql = lq0 + l, i = i0 + ql / group;
        const float *qr = a->q + ((size_t)i * a->n_head + g * group + ql % group) * hd;
        const float *st = states + (size_t)ql * ATTN_STATE_FLOATS(hd);
        for (int d = 0; d < hd; d++) {
            qt[d * LANES + l] = qr[d] * a->scale;
            ot[d * LANES + l] = st[2 + d];
        }
        mv[l] = st[0], lv[l] = st[1], lim[l] = (float)(a->p0 + i);
        if (a->p0 + i < min_lim) min_lim = a->p0 + i;
    }
    vf m = vf_loadu(mv), lsum = vf_loadu(lv);
    const vf limv = vf_loadu(lim);
    for (int p = p_begin; p < p_end; p += QCH) {
        const int n = p_end - p < QCH ? p_end - p : QCH;
        load_kv_chunk(a, g, p, n, QCH, hd, kbuf, vbuf);
        vf s[QCH];
        UNROLL
        for (int t = 0; t < QCH; t++) s[t] = vf_zero();
        for (int d = 0; d < hd; d++) {
            const vf qv = vf_loadu(qt + d * LANES);
            UNROLL
            for (int t = 0; t < QCH; t++) s[t] = vf_fmadd(qv, vf_set1(kbuf[t * hd + d]), s[t]);
        }
        if (p + QCH - 1 > min_lim || n < QCH) { /* causal edge or ragged chunk */
            UNROLL
            for (int t = 0; t < QCH; t++)
                s[t] =
                    t < n ? vf_where(vf_lt(limv, vf_set1((float)(p + t))), s[t], vf_set1(-INFINITY))
                          : vf_set1(-INFINITY);
        }
        vf cmax = s[0];
        UNROLL
        for (int t = 1; t < QCH; t++) cmax = vf_max(cmax, s[t]);
        /* The subtracted max need not be exact: softmax does not depend on
         * it, and exp(s - m) stays finite for s up to m + ATTN_SLACK. So a
         * lane's m moves only when a score passes it by that much, and the
         * costly rescale of the outputs becomes rare. */
        const vmask grow = vf_lt(vf_add(m, vf_set1(ATTN_SLACK)), cmax);
        if (vmask_any(grow)) {
            const vf mn = vf_where(grow, m, cmax);
            /* a lane that has seen nothing keeps max -inf: subtract 0 there
             * so exp gives 0 rather than NaN */
            const vf mu = vf_where(vf_eq(mn, vf_set1(-INFINITY)), mn, vf_zero());
            const vf corr = vf_exp(vf_sub(m, mu));
            lsum = vf_mul(lsum, corr);
            for (int e = 0; e < hd; e++)
                vf_storeu(ot + e * LANES, vf_mul(vf_loadu(ot + e * LANES), corr));
            m = mn;
        }
        const vf mu = vf_where(vf_eq(m, vf_set1(-INFINITY)), m, vf_zero());
        UNROLL
        for (int t = 0; t < QCH; t++) {
            s[t] = vf_exp(vf_sub(s[t], mu));
            lsum = vf_add(lsum, s[t]);
        }
        for (int e0 = 0; e0 < hd; e0 += PV_EB) {
            vf acc[PV_EB];
            UNROLL
            for (int u = 0; u < PV_EB; u++) acc[u] = vf_loadu(ot + (e0 + u) * LANES);
            UNROLL
            for (int t = 0; t < QCH; t++) {
                UNROLL
                for (int u = 0; u < PV_EB; u++)
                    acc[u] = vf_fmadd(s[t], vf_set1(vbuf[t * hd + e0 + u]), acc[u]);
            }
            UNROLL
            for (int u = 0; u < PV_EB; u++) vf_storeu(ot + (e0 + u) * LANES, acc[u]);
        }
    }
    vf_storeu(mv, m);
    vf_storeu(lv, lsum);
    for (int l = 0; l < nq; l++) {
        float *st = states + (size_t)(lq0 + l) * ATTN_STATE_FLOATS(hd);
        st[0] = mv[l], st[1] = lv[l];
        for (int e = 0; e < hd; e++) st[2 + e] = ot[e * LANES + l];
    }
}

/* One instantiation per common head size makes hd a constant. */
static void attn_query_lanes(const attn_args *a, int g, int i0, int i1, int p_begin, int p_end,
                             float *states, int lq0) {
    if (a->head_dim == 64)
        query_lanes(a, g, i0, i1, p_begin, p_end, states, lq0, 64);
    else if (a->head_dim == 128)
        query_lanes(a, g, i0, i1, p_begin, p_end, states, lq0, 128);
    else
        query_lanes(a, g, i0, i1, p_begin, p_end, states, lq0, a->head_dim);
}

static void x86_attn(const attn_args *a, int g, int i0, int i1, int p_begin, int p_end,
                     float *states) {
    const int nq = (i1 - i0) * (a->n_head / a->n_kv_head);
    if (2 * nq < LANES) { /* lanes would mostly idle */
        attn_per_query(a, g, i0, i1, p_begin, p_end, states);
        return;
    }
    for (int lq0 = 0; lq0 < nq; lq0 += LANES)
        attn_query_lanes(a, g, i0, i1, p_begin, p_end, states, lq0);
}

/* ---- row-wise and elementwise ------------------------------------------- */

static void x86_rmsnorm_row(const float *x, const float *w, int d, float eps, float *y) {
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= d; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum(acc);
    for (; j < d; j++) ss += x[j] * x[j];
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    const __m256 sv = _mm256_set1_ps(scale);
    for (j = 0; j + 8 <= d; j += 8)
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), sv),
                                              _mm256_loadu_ps(w + j)));
    for (; j < d; j++) y[j] = x[j] * scale * w[j];
}

static void x86_softmax_row(float *x, int n) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + j));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float max = _mm_cvtss_f32(m4);
    for (; j < n; j++) max = max > x[j] ? max : x[j];
    const __m256 maxv = _mm256_set1_ps(max);
    __m256 sv = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), maxv));
        _mm256_storeu_ps(x + j, e);
        sv = _mm256_add_ps(sv, e);
    }
    float sum = hsum(sv);
    for (; j < n; j++) {
        x[j] = expf(x[j] - max);
        sum += x[j];
    }
    const float inv = 1.0f / sum;
    const __m256 iv = _mm256_set1_ps(inv);
    for (j = 0; j + 8 <= n; j += 8)
        _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), iv));
    for (; j < n; j++) x[j] *= inv;
}

static void x86_silu_mul(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
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
