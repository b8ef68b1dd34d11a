/* cpu_avx512: the CPU backend's kernels for AVX512 F/BW/VL + VNNI machines:
 * cpu_x86.h with 512-bit VNNI prefill tiles of 4 weight rows x 8 activation
 * rows, plus decode kernels here that run GGML's vec_dot on two weight rows
 * per 512-bit register. Built with AVX512 flags; cpu.c checks the CPU first.
 */
#define X86_WIDTH 512
#define X86_VNNI 1
#define X86_TILE_R 4
#define X86_TILE_C 8
/* Packing plus the tiles cost about as much as 32 rows of mm_rows (which
 * shares each weight block among 8 activation rows), single-threaded,
 * weights in cache, measured on Zen 4. */
#define X86_PACKED_MIN_M 32
#include "kernels/cpu_x86.h"

/* ---- decode: two weight rows per register ------------------------------- */

/* A 512-bit register holds GGML's eight vec_dot lanes (see lloco_op_matmul)
 * of two weight rows r0 and r1 for one block:
 *   q4_0/q4_1: lanes 0-3 r0's groups 0-3, 4-7 r1's 0-3, 8-11 r0's 4-7,
 *              12-15 r1's 4-7 (the low nibbles of both rows, then the high
 *              ones);
 *   q8_0:      lanes 0-7 r0's groups 0-7, 8-15 r1's.
 * Activation row layout, PAIR_BLOCK bytes per block: the quants as those
 * lanes want them (64), the lanes' offsets (64, see c_mult), then
 * [d, s, d, s] (q4_1) or [d, 0, d, 0]: with the rows' [d, m, d, m] (or
 * [d, 0, d, 0]) one fma gives both rows' d_w * d_x and advances their
 * fma-chained minimum terms. */
#define PAIR_BLOCK 144
/* Decode streams each weight byte from memory once; the rows this far ahead
 * are fetched while the current ones compute (tuned on Sapphire Rapids). */
#define PREFETCH_ROWS 12

static size_t pair_act_row_bytes(int k) { return align64((size_t)(k / QK32) * PAIR_BLOCK); }

static void quantize_pairs(lloco_dtype wt, const float *x, int k, uint8_t *row) {
    const int nb = k / QK32, cm = c_mult(wt);
    for (int b0 = 0; b0 < nb; b0 += 8) {
        qblocks8 qb;
        const int n = nb - b0 < 8 ? nb - b0 : 8;
        quant_blocks8(x + (size_t)b0 * QK32, n, &qb);
        float d[8], s[8];
        _mm256_storeu_ps(d, qb.d);
        _mm256_storeu_ps(s, qb.s);
        for (int bb = 0; bb < n; bb++) {
            uint8_t *ab = row + (size_t)(b0 + bb) * PAIR_BLOCK;
            const __m256i q = qb.q[bb];
            const __m256i c = _mm256_mullo_epi32(qb.sum4[bb], _mm256_set1_epi32(cm));
            float ds[4] = {d[bb], s[bb], d[bb], s[bb]};
            if (wt == LLOCO_DTYPE_Q8_0) {
                _mm512_storeu_si512(ab, _mm512_inserti64x4(_mm512_castsi256_si512(q), q, 1));
                _mm512_storeu_si512(ab + 64, _mm512_inserti64x4(_mm512_castsi256_si512(c), c, 1));
                ds[1] = ds[3] = 0.0f;
            } else {
                const __m512i q2 = _mm512_broadcast_i64x4(q); /* halves 0, 1, 0, 1 */
                const __m512i c2 = _mm512_broadcast_i64x4(c);
                const __m512i order = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
                _mm512_storeu_si512(ab, _mm512_permutexvar_epi64(order, q2));
                _mm512_storeu_si512(ab + 64, _mm512_permutexvar_epi64(order, c2));
            }
            memcpy(ab + 128, ds, sizeof ds);
        }
    }
}

/* The weight side of a block of rows p0 and p1 (pointers to their
 * blocks): their bytes ready for the dot, in the pair's lanes, and dm =
 * [d0, m0, d1, m1] (or [d0, 0, d1, 0]). */
INLINE __m512i pair_weights(lloco_dtype wt, const uint8_t *p0, const uint8_t *p1, __m128 *dm) {
    __m512i w;
    uint32_t h0, h1;
    if (wt == LLOCO_DTYPE_Q8_0) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(p0 + 2));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(p1 + 2));
        w = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1),
                             _mm512_set1_epi8((char)0x80)); /* unsigned, see c_mult */
        h0 = load_u16(p0), h1 = load_u16(p1);
    } else {
        const int qo = wt == LLOCO_DTYPE_Q4_1 ? 4 : 2;
        const __m256i v =
            _mm256_loadu2_m128i((const __m128i *)(p1 + qo), (const __m128i *)(p0 + qo));
        w = _mm512_and_si512(
            _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1),
            _mm512_set1_epi8(0x0F));
        h0 = wt == LLOCO_DTYPE_Q4_1 ? load_u32(p0) : load_u16(p0);
        h1 = wt == LLOCO_DTYPE_Q4_1 ? load_u32(p1) : load_u16(p1);
    }
    *dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, (int)h1, (int)h0));
    return w;
}

/* One block of rows p0 and p1 into their accumulators; sm holds the rows'
 * minimum terms in lanes 1 and 3. */
INLINE void pair_block(lloco_dtype wt, const uint8_t *p0, const uint8_t *p1, const uint8_t *ab,
                       __m512i didx, __m512 *acc, __m128 *sm) {
    __m128 dm;
    const __m512i w = pair_weights(wt, p0, p1, &dm);
    const __m128 odd = _mm_castsi128_ps(_mm_setr_epi32(0, -1, 0, -1));
    *sm = _mm_fmadd_ps(dm, _mm_loadu_ps((const float *)(ab + 128)), _mm_and_ps(*sm, odd));
    const __m512 dd = _mm512_permutexvar_ps(didx, _mm512_castps128_ps512(*sm));
    const __m512i init =
        wt == LLOCO_DTYPE_Q4_1 ? _mm512_setzero_si512() : _mm512_loadu_si512(ab + 64);
    const __m512i dot = _mm512_dpbusd_epi32(init, w, _mm512_loadu_si512(ab));
    *acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(dot), *acc);
}

/* Lanes 8-15 (AVX512F has no float extract of them). */
INLINE __m256 upper256(__m512 v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* hsum_float_8 of the pair's two rows, plus their minimum terms. */
INLINE void pair_result(lloco_dtype wt, __m512 acc, __m128 sm, float *y0, float *y1) {
    __m128 a, b;
    if (wt == LLOCO_DTYPE_Q8_0) {
        const __m256 lo = _mm512_castps512_ps256(acc), hi = upper256(acc);
        a = _mm_add_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
        b = _mm_add_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
    } else {
        const __m256 t = _mm256_add_ps(_mm512_castps512_ps256(acc), upper256(acc));
        a = _mm256_castps256_ps128(t);
        b = _mm256_extractf128_ps(t, 1);
    }
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    float s[4];
    _mm_storeu_ps(s, sm);
    *y0 = _mm_cvtss_f32(_mm_add_ss(a, _mm_movehdup_ps(a))) + s[1];
    *y1 = _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b))) + s[3];
}

/* NP pairs of weight rows (rows r and r + 1 of each; a last single row
 * pairs with itself) against one activation row. The activation block is
 * re-read per pair from L1; the weight bytes stream once. */
INLINE void rows_pairs(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int nb,
                       const uint8_t *act, float *y) {
    enum { NP = 2 };
    const size_t bb = lloco_dtype_block_bytes(wt);
    const __m512i didx = wt == LLOCO_DTYPE_Q8_0
                             ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
                             : _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    const uint8_t *row[2 * NP];
    for (int r = 0; r < 2 * NP; r++) row[r] = w + (r < nrows ? r : nrows - 1) * rb;
    __m512 acc[NP];
    __m128 sm[NP];
    UNROLL
    for (int p = 0; p < NP; p++) acc[p] = _mm512_setzero_ps(), sm[p] = _mm_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *ab = act + (size_t)b * PAIR_BLOCK;
        /* one per block: redundant within a line, but measured faster */
        UNROLL
        for (int r = 0; r < 2 * NP; r++)
            _mm_prefetch((const char *)row[r] + PREFETCH_ROWS * rb + b * bb, _MM_HINT_T0);
        UNROLL
        for (int p = 0; p < NP; p++)
            pair_block(wt, row[2 * p] + b * bb, row[2 * p + 1] + b * bb, ab, didx, &acc[p], &sm[p]);
    }
    UNROLL
    for (int p = 0; p < NP; p++) {
        float y0, y1;
        pair_result(wt, acc[p], sm[p], &y0, &y1);
        if (2 * p < nrows) y[2 * p] = y0;
        if (2 * p + 1 < nrows) y[2 * p + 1] = y1;
    }
}

/* Activation rows per pass of rows_pair_multi: its accumulators and
 * minimum terms take 16 of the 32 registers. One pair of weight rows per
 * pass measured faster than two (and 8 rows than 4) on Zen 4. */
#define MULTI_ROWS 8

/* One pair of weight rows (rows 0 and 1; a single row pairs with itself)
 * against NA activation rows (act, act + arb, ...): each weight block is
 * loaded and unpacked once for all of them. Every output gets rows_pairs'
 * operations: its d_w * d_x is the same one rounding (a product here, an
 * fma with +0 there; their zeros differ only in sign, which accumulators
 * that start at +0 never see), and its lanes and minimum terms chain in the
 * same order. */
INLINE void rows_pair_multi(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int nb,
                            const uint8_t *act, size_t arb, int NA, float *y, int ldy) {
    const size_t bb = lloco_dtype_block_bytes(wt);
    const __m512i didx = wt == LLOCO_DTYPE_Q8_0
                             ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
                             : _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    const uint8_t *r0 = w, *r1 = nrows > 1 ? w + rb : w;
    __m512 acc[MULTI_ROWS];
    __m128 sm[MULTI_ROWS]; /* lanes 1 and 3, as in pair_block */
    UNROLL
    for (int a = 0; a < NA; a++) acc[a] = _mm512_setzero_ps(), sm[a] = _mm_setzero_ps();
    for (int b = 0; b < nb; b++) {
        _mm_prefetch((const char *)r0 + PREFETCH_ROWS * rb + b * bb, _MM_HINT_T0);
        _mm_prefetch((const char *)r1 + PREFETCH_ROWS * rb + b * bb, _MM_HINT_T0);
        __m128 dm;
        const __m512i wv = pair_weights(wt, r0 + b * bb, r1 + b * bb, &dm);
        const __m512 dw = _mm512_permutexvar_ps(didx, _mm512_castps128_ps512(dm));
        UNROLL
        for (int a = 0; a < NA; a++) {
            const uint8_t *ab = act + a * arb + (size_t)b * PAIR_BLOCK;
            const float *ds = (const float *)(ab + 128);
            if (wt == LLOCO_DTYPE_Q4_1) sm[a] = _mm_fmadd_ps(dm, _mm_broadcast_ss(ds + 1), sm[a]);
            const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(ds[0]));
            const __m512i init =
                wt == LLOCO_DTYPE_Q4_1 ? _mm512_setzero_si512() : _mm512_loadu_si512(ab + 64);
            const __m512i dot = _mm512_dpbusd_epi32(init, wv, _mm512_loadu_si512(ab));
            acc[a] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(dot), acc[a]);
        }
    }
    UNROLL
    for (int a = 0; a < NA; a++) {
        float y0, y1;
        pair_result(wt, acc[a], sm[a], &y0, &y1);
        y[(size_t)a * ldy] = y0;
        if (nrows > 1) y[(size_t)a * ldy + 1] = y1;
    }
}

/* One activation row streams the weights with rows_pairs; several share
 * each weight block, MULTI_ROWS at a time, a pair's blocks staying in L1
 * for the next MULTI_ROWS. */
INLINE void rows_pairs_all(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int nb,
                           const uint8_t *act, size_t arb, int m, float *y, int ldy) {
    if (m == 1) {
        for (int r = 0; r < nrows; r += 4)
            rows_pairs(wt, w + r * rb, rb, nrows - r < 4 ? nrows - r : 4, nb, act, y + r);
        return;
    }
    for (int r = 0; r < nrows; r += 2) {
        const uint8_t *wr = w + r * rb;
        const int n = nrows - r < 2 ? 1 : 2;
        for (int a = 0; a < m; a += MULTI_ROWS) {
            const uint8_t *aa = act + a * arb;
            float *ya = y + (size_t)a * ldy + r;
            /* NA a constant in each instantiation, its arrays in registers */
            switch (m - a < MULTI_ROWS ? m - a : MULTI_ROWS) {
            case 1: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 1, ya, ldy); break;
            case 2: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 2, ya, ldy); break;
            case 3: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 3, ya, ldy); break;
            case 4: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 4, ya, ldy); break;
            case 5: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 5, ya, ldy); break;
            case 6: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 6, ya, ldy); break;
            case 7: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 7, ya, ldy); break;
            default: rows_pair_multi(wt, wr, rb, n, nb, aa, arb, 8, ya, ldy); break;
            }
        }
    }
}

static void mm_rows_pairs(lloco_dtype wt, const uint8_t *w, size_t rb, int nrows, int k,
                          const uint8_t *act, int m, float *y, int ldy) {
    const int nb = k / QK32;
    const size_t arb = pair_act_row_bytes(k);
    if (wt == LLOCO_DTYPE_Q4_1)
        rows_pairs_all(LLOCO_DTYPE_Q4_1, w, rb, nrows, nb, act, arb, m, y, ldy);
    else if (wt == LLOCO_DTYPE_Q8_0)
        rows_pairs_all(LLOCO_DTYPE_Q8_0, w, rb, nrows, nb, act, arb, m, y, ldy);
    else
        rows_pairs_all(LLOCO_DTYPE_Q4_0, w, rb, nrows, nb, act, arb, m, y, ldy);
}

X86_KERNEL_TABLE(lloco_cpu_kernels_avx512, pair_act_row_bytes, quantize_pairs, mm_rows_pairs);
