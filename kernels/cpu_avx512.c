/* cpu_avx512: the CPU backend's kernels for AVX512 F/BW/VL + VNNI machines:
 * cpu_x86.h with 512-bit VNNI prefill tiles of 4 weight rows x 3 activation
 * rows, plus decode kernels here that take four GGUF blocks per step, pull
 * their quants and scales together with two-source permutes, and dot them
 * in one vpdpbusd. Built with AVX512 flags; cpu.c checks the CPU first.
 */
#define X86_WIDTH 512
#define X86_VNNI 1
#define X86_TILE_R 4
#define X86_TILE_C 3
#include "kernels/cpu_x86.h"

/* ---- decode: four blocks per step --------------------------------------- */

/* Activation row layout: quads of 4 blocks, QUAD_BYTES each:
 *   q4_0/q4_1: qs [64] values 0..15 of the 4 blocks, qs [64] values 16..31,
 *              then 16 lanes each of d, s, c; lane l is block l/4 (s in its
 *              first lane only; c per lane, see c_mult). The weights' low
 *              nibbles line up with the first 64 bytes, their high nibbles
 *              with the next.
 *   q8_0:      qs [64] blocks 0-1, qs [64] blocks 2-3, then d lanes for
 *              blocks 0-1, d lanes for 2-3, c lanes for 0-1, c lanes for
 *              2-3; lane l is block l/8 of its pair.
 * Padding blocks are zero. */
#define QUAD_BYTES 384
/* Decode streams each weight byte from memory once; the rows this far ahead
 * are fetched while the current ones compute (tuned on Sapphire Rapids). */
#define PREFETCH_ROWS 12

static size_t quad_act_row_bytes(int k) { return (size_t)((k / QK32 + 3) / 4) * QUAD_BYTES; }

static void quantize_quads(lloco_dtype wt, const float *x, int k, uint8_t *row) {
    const int nb = k / QK32, cm = c_mult(wt);
    memset(row, 0, quad_act_row_bytes(k));
    for (int b0 = 0; b0 < nb; b0 += 8) {
        qblocks8 qb;
        const int n = nb - b0 < 8 ? nb - b0 : 8;
        quant_blocks8(x + (size_t)b0 * QK32, n, &qb);
        float d[8], s[8];
        _mm256_storeu_ps(d, qb.d);
        _mm256_storeu_ps(s, qb.s);
        for (int bb = 0; bb < n; bb++) {
            const int b = b0 + bb, i = b % 4;
            uint8_t *aq = row + (size_t)(b / 4) * QUAD_BYTES;
            float *lanes = (float *)(aq + 128);
            int32_t *ilanes = (int32_t *)(aq + 128);
            int32_t sum4[8];
            _mm256_storeu_si256((__m256i *)sum4, qb.sum4[bb]);
            if (wt == LLOCO_DTYPE_Q8_0) {
                _mm256_storeu_si256((__m256i *)(aq + 32 * i), qb.q[bb]);
                const int pair = i / 2, l0 = (i % 2) * 8;
                for (int t = 0; t < 8; t++) {
                    lanes[16 * pair + l0 + t] = d[bb];
                    ilanes[32 + 16 * pair + l0 + t] = cm * sum4[t];
                }
            } else {
                /* lane 4i+t sums values 4t..4t+3 and 16+4t..16+4t+3 */
                _mm_storeu_si128((__m128i *)(aq + 16 * i), _mm256_castsi256_si128(qb.q[bb]));
                _mm_storeu_si128((__m128i *)(aq + 64 + 16 * i),
                                 _mm256_extracti128_si256(qb.q[bb], 1));
                for (int t = 0; t < 4; t++) {
                    lanes[4 * i + t] = d[bb];
                    ilanes[32 + 4 * i + t] = cm * (sum4[t] + sum4[4 + t]);
                }
                lanes[16 + 4 * i] = s[bb];
            }
        }
    }
}

/* Mask of the first n (clamped to 0..64) bytes of a 64-byte load. */
INLINE __mmask64 first_bytes(int n) {
    return n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : (((__mmask64)1 << n) - 1);
}

/* Word indices picking, from a 128-byte pair of registers, for word l of
 * the lower half the 16-bit field at byte first + stride * (l / per), and
 * for word l of the upper half the one at first2 + stride2 * (l / per2). */
static __m512i word_index(int first, int stride, int per, int first2, int stride2, int per2) {
    uint16_t idx[32];
    for (int l = 0; l < 16; l++) idx[l] = (uint16_t)((first + stride * (l / per)) / 2);
    for (int l = 0; l < 16; l++) idx[16 + l] = (uint16_t)((first2 + stride2 * (l / per2)) / 2);
    return _mm512_loadu_si512(idx);
}

/* Indices gathering the 4 blocks' 16 quant bytes each into one register:
 * dwords for q4_1 (whose quants start 4-byte aligned, at 4 + 20 i), words
 * for q4_0 (2-byte aligned, at 2 + 18 i). */
static __m512i q4_quant_index(lloco_dtype wt) {
    if (wt == LLOCO_DTYPE_Q4_1) /* qs at 4 + 20 i: dwords 1 + 5 i .. 4 + 5 i */
        return _mm512_setr_epi32(1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19);
    uint16_t idx[32]; /* q4_0: qs at 2 + 18 i: words 1 + 9 i .. 8 + 9 i */
    for (int i = 0; i < 4; i++)
        for (int t = 0; t < 8; t++) idx[8 * i + t] = (uint16_t)(1 + 9 * i + t);
    return _mm512_loadu_si512(idx);
}

/* One quad of one q4 weight row against the activation quad: integer dots
 * (4 lanes per block), then scale and, for q4_1, minimum terms. */
INLINE void quad_q4(lloco_dtype wt, const uint8_t *p, int nbytes, const uint8_t *aq, __m512i iq,
                    __m512i idm, __m512 *acc, __m512 *macc) {
    /* masked loads never touch bytes past the quad (or the row's last block) */
    const __m512i z0 =
        nbytes >= 64 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(first_bytes(nbytes), p);
    const __m512i z1 = _mm512_maskz_loadu_epi8(first_bytes(nbytes - 64), p + 64);
    const __m512i qq = wt == LLOCO_DTYPE_Q4_1 ? _mm512_permutex2var_epi32(z0, iq, z1)
                                              : _mm512_permutex2var_epi16(z0, iq, z1);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lo = _mm512_and_si512(qq, m4),
                  hi = _mm512_and_si512(_mm512_srli_epi16(qq, 4), m4);
    const __m512i init =
        wt == LLOCO_DTYPE_Q4_1 ? _mm512_setzero_si512() : _mm512_loadu_si512(aq + 256);
    const __m512i ai = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, _mm512_loadu_si512(aq)),
                                           hi, _mm512_loadu_si512(aq + 64));
    const __m512i dmw = _mm512_permutex2var_epi16(z0, idm, z1); /* d lanes, then m lanes (q4_1) */
    const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dmw));
    *acc =
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), _mm512_mul_ps(dw, _mm512_loadu_ps(aq + 128)), *acc);
    if (wt == LLOCO_DTYPE_Q4_1)
        *macc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(dmw, 1)),
                                _mm512_loadu_ps(aq + 192), *macc);
}

INLINE void quad_q8_0(const uint8_t *p, int nbytes, const uint8_t *aq, __m512i ia, __m512i ib,
                      __m512i id, __m512 *acc) {
    __m512i z0, z1, z2;
    if (nbytes == 136) {
        z0 = _mm512_loadu_si512(p);
        z1 = _mm512_loadu_si512(p + 64);
        z2 = _mm512_maskz_loadu_epi8(first_bytes(8), p + 128);
    } else {
        z0 = _mm512_maskz_loadu_epi8(first_bytes(nbytes), p);
        z1 = _mm512_maskz_loadu_epi8(first_bytes(nbytes - 64), p + 64);
        z2 = _mm512_maskz_loadu_epi8(first_bytes(nbytes - 128), p + 128);
    }
    const __m512i bias = _mm512_set1_epi8((char)0x80); /* signed -> unsigned, see c_mult */
    const __m512i qa = _mm512_xor_si512(_mm512_permutex2var_epi16(z0, ia, z1), bias);
    const __m512i qb = _mm512_xor_si512(_mm512_permutex2var_epi16(z1, ib, z2), bias);
    const __m512i aa =
        _mm512_dpbusd_epi32(_mm512_loadu_si512(aq + 256), qa, _mm512_loadu_si512(aq));
    const __m512i ab =
        _mm512_dpbusd_epi32(_mm512_loadu_si512(aq + 320), qb, _mm512_loadu_si512(aq + 64));
    const __m512i dd = _mm512_permutex2var_epi16(z0, id, z1);
    const __m512 da = _mm512_cvtph_ps(_mm512_castsi512_si256(dd));
    const __m512 db = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(dd, 1));
    *acc =
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(aa), _mm512_mul_ps(da, _mm512_loadu_ps(aq + 128)), *acc);
    *acc =
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(ab), _mm512_mul_ps(db, _mm512_loadu_ps(aq + 192)), *acc);
}

/* NR weight rows against one activation row. The activation quad is
 * re-read per row from L1; the weight bytes stream once. */
INLINE void rows_quads(lloco_dtype wt, const uint8_t *w, size_t rb, int NR, int nb,
                       const uint8_t *act, float *y) {
    const int bb = (int)lloco_dtype_block_bytes(wt), qb = 4 * bb;
    const int nfull = nb / 4, tail = (nb % 4) * bb;
    __m512i i0, i1, i2 = _mm512_setzero_si512();
    if (wt == LLOCO_DTYPE_Q8_0) {
        /* quants of blocks 0-1 at bytes 2 and 36; of blocks 2-3 at 70 and
         * 104, which the second permute reads 64 bytes further on; d at 0,
         * 34, 68, 102 */
        i0 = word_index(2, 2, 1, 36, 2, 1);
        i1 = word_index(6, 2, 1, 40, 2, 1);
        i2 = word_index(0, 34, 8, 68, 34, 8);
    } else {
        i0 = q4_quant_index(wt);
        i1 = word_index(0, bb, 4, 2, bb, 4); /* d lanes; q4_1's m follows its d */
    }
    __m512 acc[4], macc[4];
    UNROLL
    for (int r = 0; r < NR; r++) acc[r] = _mm512_setzero_ps(), macc[r] = _mm512_setzero_ps();
    /* Whole quads with a constant byte count (so the load masks are
     * constants), then the ragged last one. */
    for (int q = 0; q < nfull; q++) {
        const uint8_t *aq = act + (size_t)q * QUAD_BYTES;
        UNROLL
        for (int r = 0; r < NR; r++) {
            const uint8_t *p = w + r * rb + (size_t)q * qb;
            _mm_prefetch((const char *)p + PREFETCH_ROWS * rb, _MM_HINT_T0);
            _mm_prefetch((const char *)p + PREFETCH_ROWS * rb + 64, _MM_HINT_T0);
            if (qb > 128) _mm_prefetch((const char *)p + PREFETCH_ROWS * rb + 128, _MM_HINT_T0);
            if (wt == LLOCO_DTYPE_Q8_0)
                quad_q8_0(p, 4 * 34, aq, i0, i1, i2, &acc[r]);
            else
                quad_q4(wt, p, wt == LLOCO_DTYPE_Q4_1 ? 4 * 20 : 4 * 18, aq, i0, i1, &acc[r],
                        &macc[r]);
        }
    }
    if (tail) {
        const uint8_t *aq = act + (size_t)nfull * QUAD_BYTES;
        UNROLL
        for (int r = 0; r < NR; r++) {
            const uint8_t *p = w + r * rb + (size_t)nfull * qb;
            if (wt == LLOCO_DTYPE_Q8_0)
                quad_q8_0(p, tail, aq, i0, i1, i2, &acc[r]);
            else
                quad_q4(wt, p, tail, aq, i0, i1, &acc[r], &macc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < NR; r++) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], macc[r]));
}

static void mm_rows_quads(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                          const uint8_t *act, float *y) {
    const int nb = k / QK32;
    int r = 0;
    if (wt == LLOCO_DTYPE_Q4_1) {
        for (; r + 4 <= nrows; r += 4)
            rows_quads(LLOCO_DTYPE_Q4_1, w + r * rb, rb, 4, nb, act, y + r);
        for (; r < nrows; r++) rows_quads(LLOCO_DTYPE_Q4_1, w + r * rb, rb, 1, nb, act, y + r);
    } else if (wt == LLOCO_DTYPE_Q8_0) {
        for (; r + 4 <= nrows; r += 4)
            rows_quads(LLOCO_DTYPE_Q8_0, w + r * rb, rb, 4, nb, act, y + r);
        for (; r < nrows; r++) rows_quads(LLOCO_DTYPE_Q8_0, w + r * rb, rb, 1, nb, act, y + r);
    } else {
        for (; r + 4 <= nrows; r += 4)
            rows_quads(LLOCO_DTYPE_Q4_0, w + r * rb, rb, 4, nb, act, y + r);
        for (; r < nrows; r++) rows_quads(LLOCO_DTYPE_Q4_0, w + r * rb, rb, 1, nb, act, y + r);
    }
}

static size_t act_row_bytes(lloco_dtype wt, int k, int packed) {
    (void)wt;
    return packed ? packed_act_row_bytes(k) : quad_act_row_bytes(k);
}

static void quantize_act(lloco_dtype wt, const float *x, int k, int packed, uint8_t *row) {
    if (packed)
        quantize_packed(wt, x, k, row);
    else
        quantize_quads(wt, x, k, row);
}

const cpu_kernels lloco_cpu_kernels_avx512 = {
    .tile_r = R_,
    .tile_c = C_,
    .act_row_bytes = act_row_bytes,
    .quantize_act = quantize_act,
    .mm_rows = mm_rows_quads,
    .mm_panel_bytes = x86_mm_panel_bytes,
    .mm_pack = x86_mm_pack,
    .mm_tile = x86_mm_tile,
    .mm_float = x86_mm_float,
    .attn = x86_attn,
    .attn_lanes = LANES,
    .rmsnorm_row = x86_rmsnorm_row,
    .softmax_row = x86_softmax_row,
    .silu_mul = x86_silu_mul,
    .add = x86_add,
    .f16_to_f32 = x86_f16_to_f32,
    .f32_to_f16 = x86_f32_to_f16,
};
