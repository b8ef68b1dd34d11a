/* The batched LoRA op (every row its own adapter, or none) and the LoRA
 * merge on every backend against the reference: odd sizes, ranks 1..64,
 * F32/F16/BF16 adapters, rows mixing none/X/Y, and each row's result
 * independent of the rows it is batched with.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels_test.h"

/* A random adapter pair with its own storage. */
typedef struct {
    lloco_lora_mat mat;
    uint8_t *a, *bt;
} test_lora;

static void lora_make(kt_rng *rng, test_lora *t, lloco_dtype type, int rank, int k, int n) {
    const size_t es = lloco_dtype_block_bytes(type);
    t->a = kt_alloc((size_t)rank * k * es + 1);
    t->bt = kt_alloc((size_t)rank * n * es + 1);
    float *row = kt_alloc(sizeof(float) * (size_t)(k > n ? k : n));
    /* one byte off alignment, as tensors inside a file may be */
    uint8_t *a = t->a + 1, *bt = t->bt + 1;
    for (int r = 0; r < rank; r++) {
        kt_fill(rng, row, k, -1.0f, 1.0f);
        CHECK_OK(lloco_quantize_row(type, row, a + (size_t)r * k * es, k));
        kt_fill(rng, row, n, -0.5f, 0.5f);
        CHECK_OK(lloco_quantize_row(type, row, bt + (size_t)r * n * es, n));
    }
    free(row);
    t->mat = (lloco_lora_mat){
        .a = a, .bt = bt, .type = type, .rank = rank, .k = k, .n = n, .scale = 2.0f / (float)rank};
}

static void lora_free(test_lora *t) {
    free(t->a);
    free(t->bt);
}

static lloco_backend *ref_backend(void) {
    lloco_backend *be = NULL;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU_REF, 1, &be));
    return be;
}

/* Row patterns over adapters X, Y (and Z, a third rank) and none. */
enum { MIX_ALL_X, MIX_XY, MIX_X_NONE_Y, MIX_RUNS, MIX_NONE, MIX_COUNT };
static const char *mix_name[MIX_COUNT] = {"all X", "X Y alternating", "X none Y", "runs", "none"};

static const lloco_lora_mat *mix_row(int mix, int i, const lloco_lora_mat *const *ad) {
    switch (mix) {
    case MIX_ALL_X: return ad[0];
    case MIX_XY: return ad[i % 2];
    case MIX_X_NONE_Y: return i % 3 == 1 ? NULL : ad[(i % 3) / 2];
    case MIX_RUNS: return (i / 5) % 4 == 3 ? NULL : ad[(i / 5) % 3]; /* X.. Y.. Z.. none.. */
    default: return NULL;
    }
}

static void check_lora(lloco_backend *ref, kt_backends *bs, lloco_dtype type, int m, int k, int n,
                       const int ranks[3], int mix, uint64_t seed) {
    kt_rng rng = {seed};
    test_lora ad[3];
    const lloco_lora_mat *mats[3];
    for (int a = 0; a < 3; a++) {
        lora_make(&rng, &ad[a], type, ranks[a], k, n);
        mats[a] = &ad[a].mat;
    }
    const lloco_lora_mat **per_row = kt_alloc(sizeof *per_row * (size_t)m);
    for (int i = 0; i < m; i++) per_row[i] = mix_row(mix, i, mats);
    float *x = kt_alloc(sizeof(float) * (size_t)m * k);
    float *y0 = kt_alloc(sizeof(float) * (size_t)m * n);
    float *y_ref = kt_alloc(sizeof(float) * (size_t)m * n),
          *y = kt_alloc(sizeof(float) * (size_t)m * n);
    kt_fill(&rng, x, (int64_t)m * k, -1.0f, 1.0f);
    kt_fill(&rng, y0, (int64_t)m * n, -2.0f, 2.0f);
    memcpy(y_ref, y0, sizeof(float) * (size_t)m * n);
    lloco_op_lora(ref, x, m, k, n, per_row, y_ref);
    /* rows without an adapter are untouched; the others changed */
    for (int i = 0; i < m; i++) {
        const int same =
            !memcmp(y_ref + (size_t)i * n, y0 + (size_t)i * n, sizeof(float) * (size_t)n);
        CHECKF(per_row[i] ? !same : same, "lora ref: row %d %s", i,
               per_row[i] ? "unchanged by its adapter" : "changed without an adapter");
    }
    float rms = kt_rms(y_ref, (int64_t)m * n);
    for (int b = 0; b < bs->n; b++) {
        memcpy(y, y0, sizeof(float) * (size_t)m * n);
        lloco_op_lora(bs->be[b], x, m, k, n, per_row, y);
        char what[200];
        snprintf(what, sizeof what, "lora %s m=%d k=%d n=%d ranks %d/%d/%d (%s) %s",
                 lloco_dtype_name(type), m, k, n, ranks[0], ranks[1], ranks[2], mix_name[mix],
                 bs->label[b]);
        if (!kt_compare(what, y_ref, y, (int64_t)m * n, 1e-10, 1e-5f * rms, 1e-5f)) break;
        /* Batch invariance: each row alone gives the bits it got in the
         * batch (what makes a mixed batch decode like each sequence alone). */
        const lloco_lora_mat **one = kt_alloc(sizeof *one * (size_t)m);
        float *y1 = kt_alloc(sizeof(float) * (size_t)m * n);
        for (int i = 0; i < m; i += (m > 8 ? 7 : 1)) {
            for (int q = 0; q < m; q++) one[q] = q == i ? per_row[i] : NULL;
            memcpy(y1, y0, sizeof(float) * (size_t)m * n);
            lloco_op_lora(bs->be[b], x, m, k, n, one, y1);
            snprintf(what, sizeof what, "lora row %d alone vs batched (m=%d k=%d n=%d, %s) %s", i,
                     m, k, n, mix_name[mix], bs->label[b]);
            if (!kt_compare_exact(what, y + (size_t)i * n, y1 + (size_t)i * n, n)) break;
        }
        free(one);
        free(y1);
    }
    for (int a = 0; a < 3; a++) lora_free(&ad[a]);
    free(per_row);
    free(x);
    free(y0);
    free(y_ref);
    free(y);
}

TEST_CASE(lora_batched_op) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const int ms[] = {1, 2, 5, 13, 37, 70};
    const int ks[] = {3, 17, 64, 576};
    const int ns[] = {1, 7, 33, 192, 1536};
    const int ranks[][3] = {{1, 2, 3}, {8, 16, 4}, {7, 33, 64}, {64, 1, 16}};
    const lloco_dtype types[] = {LLOCO_DTYPE_F32, LLOCO_DTYPE_F16, LLOCO_DTYPE_BF16};
    uint64_t seed = 777;
    int n_cases = 0;
    /* Every size and rank set once per mix, the dtypes in rotation: the
     * full product would run for minutes on the reference. */
    for (size_t mi = 0; mi < LLOCO_ARRAY_LEN(ms); mi++)
        for (size_t ki = 0; ki < LLOCO_ARRAY_LEN(ks); ki++)
            for (size_t ni = 0; ni < LLOCO_ARRAY_LEN(ns) && !lloco_test_case_failures(); ni++) {
                const size_t c = mi * 100 + ki * 10 + ni;
                const int mix = (int)(c % MIX_COUNT);
                check_lora(ref, &bs, types[c % 3], ms[mi], ks[ki], ns[ni],
                           ranks[c % LLOCO_ARRAY_LEN(ranks)], mix, seed++);
                n_cases++;
            }
    /* the model's shapes, prefill-sized, every mix */
    for (int mix = 0; mix < MIX_COUNT && !lloco_test_case_failures(); mix++) {
        const int r[3] = {8, 16, 1};
        check_lora(ref, &bs, LLOCO_DTYPE_F32, 96, 576, 576, r, mix, seed++);
        check_lora(ref, &bs, LLOCO_DTYPE_F16, 40, 1536, 576, r, mix, seed++);
        n_cases += 2;
    }
    CHECK(n_cases >= 100);
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}

/* Merging gives the same bytes on every backend, in place or not, and
 * the merged weight is W + scale·B·A. */
static void check_merge(lloco_backend *ref, kt_backends *bs, lloco_dtype wt, lloco_dtype at,
                        int rank, int n, int k, uint64_t seed) {
    kt_rng rng = {seed};
    test_lora ad;
    lora_make(&rng, &ad, at, rank, k, n);
    const size_t rb = lloco_dtype_row_bytes(wt, k);
    const lloco_dtype dt = wt == LLOCO_DTYPE_Q4_K || wt == LLOCO_DTYPE_Q6_K ? LLOCO_DTYPE_Q8_0 : wt;
    const size_t drb = lloco_dtype_row_bytes(dt, k);
    uint8_t *w = kt_alloc(rb * n), *d_ref = kt_alloc(drb * n), *d = kt_alloc(drb * n);
    float *row = kt_alloc(sizeof(float) * (size_t)k);
    if (wt == LLOCO_DTYPE_Q4_K || wt == LLOCO_DTYPE_Q6_K) {
        /* random blocks with small fp16 scales (no quantizer for these) */
        for (size_t i = 0; i < rb * n; i++) w[i] = (uint8_t)kt_u32(&rng);
        const size_t bb = lloco_dtype_block_bytes(wt);
        for (size_t b = 0; b < rb * n / bb; b++) {
            const uint16_t s = lloco_fp32_to_fp16(kt_uniform(&rng, 1e-3f, 1e-2f));
            memcpy(w + b * bb + (wt == LLOCO_DTYPE_Q4_K ? 0 : 208), &s, 2);
            if (wt == LLOCO_DTYPE_Q4_K) memcpy(w + b * bb + 2, &s, 2);
        }
    } else {
        for (int j = 0; j < n; j++) {
            kt_fill(&rng, row, k, -1.0f, 1.0f);
            CHECK_OK(lloco_quantize_row(wt, row, w + (size_t)j * rb, k));
        }
    }
    lloco_op_lora_merge(ref, w, wt, &ad.mat, d_ref, dt);
    char what[160];
    snprintf(what, sizeof what, "merge %s + %s r%d %dx%d", lloco_dtype_name(wt),
             lloco_dtype_name(at), rank, n, k);
    /* the meaning: against W + scale·B·A in double */
    double err = 0, norm = 0;
    const size_t es = lloco_dtype_block_bytes(at);
    for (int j = 0; j < n; j++) {
        float got[1024], base[1024];
        LLOCO_ASSERT(k <= 1024);
        lloco_dequantize_row(dt, d_ref + (size_t)j * drb, got, k);
        lloco_dequantize_row(wt, w + (size_t)j * rb, base, k);
        for (int e = 0; e < k; e++) {
            double delta = 0;
            for (int r = 0; r < rank; r++) {
                float a, b;
                lloco_dequantize_row(at, ad.mat.a + ((size_t)r * k + e) * es, &a, 1);
                lloco_dequantize_row(at, ad.mat.bt + ((size_t)r * n + j) * es, &b, 1);
                delta += (double)a * b;
            }
            const double want = base[e] + ad.mat.scale * delta;
            err += (got[e] - want) * (got[e] - want);
            norm += want * want;
        }
    }
    /* F32 keeps the sum to rounding; the others add their own rounding:
     * F16 2^-11, BF16 2^-8, 8-bit blocks ~1/127, 4-bit ~1/7 of a step */
    const double bound = dt == LLOCO_DTYPE_F32    ? 1e-12
                         : dt == LLOCO_DTYPE_F16  ? 1e-6
                         : dt == LLOCO_DTYPE_BF16 ? 1e-4
                         : dt == LLOCO_DTYPE_Q8_0 ? 1e-3
                                                  : 3e-2;
    CHECKF(err / norm <= bound, "%s: NMSE vs W + scale*B*A %.3g > %.1g", what, err / norm, bound);
    for (int b = 0; b < bs->n; b++) {
        memset(d, 0xAB, drb * n);
        lloco_op_lora_merge(bs->be[b], w, wt, &ad.mat, d, dt);
        int bad = memcmp(d, d_ref, drb * n) != 0;
        CHECKF(!bad, "%s %s: bytes differ from the reference", what, bs->label[b]);
        if (dt == wt && !bad) { /* in place */
            memcpy(d, w, rb * n);
            lloco_op_lora_merge(bs->be[b], d, wt, &ad.mat, d, dt);
            CHECKF(!memcmp(d, d_ref, drb * n), "%s %s: in place differs", what, bs->label[b]);
        }
        if (bad) break;
    }
    lora_free(&ad);
    free(w);
    free(d_ref);
    free(d);
    free(row);
}

TEST_CASE(lora_merge_op) {
    lloco_backend *ref = ref_backend();
    kt_backends bs;
    kt_backends_open(&bs);
    const lloco_dtype wts[] = {LLOCO_DTYPE_F32,  LLOCO_DTYPE_F16,  LLOCO_DTYPE_BF16,
                               LLOCO_DTYPE_Q8_0, LLOCO_DTYPE_Q4_0, LLOCO_DTYPE_Q4_1,
                               LLOCO_DTYPE_Q4_K, LLOCO_DTYPE_Q6_K};
    const lloco_dtype ats[] = {LLOCO_DTYPE_F32, LLOCO_DTYPE_F16, LLOCO_DTYPE_BF16};
    uint64_t seed = 99;
    for (size_t w = 0; w < LLOCO_ARRAY_LEN(wts) && !lloco_test_case_failures(); w++) {
        const int kq = wts[w] == LLOCO_DTYPE_Q4_K || wts[w] == LLOCO_DTYPE_Q6_K;
        check_merge(ref, &bs, wts[w], ats[w % 3], 1, 7, kq ? 256 : 32, seed++);
        check_merge(ref, &bs, wts[w], ats[(w + 1) % 3], 16, 33, kq ? 512 : 576, seed++);
        check_merge(ref, &bs, wts[w], ats[(w + 2) % 3], 64, 130, kq ? 768 : 96, seed++);
    }
    kt_backends_close(&bs);
    lloco_backend_free(ref);
}
