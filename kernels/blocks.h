/* blocks: the byte layouts of the quantized formats, bit-identical to GGML's
 * ggml-common.h so GGUF tensor data is used in place, plus the scalar helpers
 * every kernel file shares (fp16 loads, K-quant scale unpacking).
 */
#ifndef LLOCO_KERNELS_BLOCKS_H
#define LLOCO_KERNELS_BLOCKS_H

#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"

#define QK32 32  /* elements per block of the 32-element formats */
#define QK_K 256 /* elements per K-quant super-block */

/* Packed: GGUF places blocks back to back, so a block (and its fp16 fields)
 * may sit at any address; packed structs make every field access safe. */
#define LLOCO_PACKED __attribute__((packed))

typedef struct LLOCO_PACKED {
    uint16_t d;      /* fp16 scale */
    int8_t qs[QK32]; /* x = d * q */
} block_q8_0;

typedef struct LLOCO_PACKED {
    uint16_t d; /* fp16 scale */
    uint8_t
        qs[QK32 / 2]; /* element j in the low nibble of qs[j], j+16 in the high one; x = d*(q-8) */
} block_q4_0;

typedef struct LLOCO_PACKED {
    uint16_t d;           /* fp16 scale */
    uint16_t m;           /* fp16 minimum */
    uint8_t qs[QK32 / 2]; /* as q4_0; x = d*q + m */
} block_q4_1;

typedef struct LLOCO_PACKED {
    uint16_t d; /* fp16 scale */
    uint16_t s; /* fp16 of d * sum(qs): lets q4_1 dots add m*s once per block */
    int8_t qs[QK32];
} block_q8_1;

typedef struct LLOCO_PACKED {
    uint16_t d;           /* fp16 super-scale of the 6-bit sub-block scales */
    uint16_t dmin;        /* fp16 super-scale of the 6-bit sub-block mins */
    uint8_t scales[12];   /* 8 scales + 8 mins, 6 bits each (see q4k_scale_min) */
    uint8_t qs[QK_K / 2]; /* 64-element chunks: low nibbles first 32, high nibbles next 32 */
} block_q4_K;

typedef struct LLOCO_PACKED {
    uint8_t ql[QK_K / 2];     /* low 4 bits */
    uint8_t qh[QK_K / 4];     /* high 2 bits */
    int8_t scales[QK_K / 16]; /* one per 16 elements */
    uint16_t d;               /* fp16 super-scale */
} block_q6_K;

typedef struct LLOCO_PACKED {
    float d; /* f32 scale (not fp16: it only lives in memory) */
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sums of 16 consecutive qs, for the K-quant mins */
} block_q8_K;

_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");
_Static_assert(sizeof(block_q8_1) == 36, "block_q8_1 layout");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K layout");

#define FP16(h) lloco_fp16_to_fp32(h)

/* Sub-block j (0..7) of a q4_K super-block: 6-bit scale and min. Bytes 0-3
 * hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales/mins 4-7
 * keep their low 4 bits in bytes 8-11 and their top 2 bits in the spare top
 * bits of bytes 0-7. */
static inline void q4k_scale_min(const uint8_t *sc, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

/* Element i (0..255) of a q6_K super-block as its signed 6-bit value. Each
 * 128-element half stores l = 0..31 of its four 32-element quarters in
 * ql[l] / ql[l+32] (low / high nibbles) and qh[l] (2 bits per quarter). */
static inline int q6k_value(const block_q6_K *b, int i) {
    int half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
    const uint8_t *ql = b->ql + 64 * half, *qh = b->qh + 32 * half;
    int lo = quarter & 1 ? ql[l + 32] : ql[l];
    lo = quarter < 2 ? lo & 0x0F : lo >> 4;
    int hi = (qh[l] >> (2 * quarter)) & 3;
    return (lo | (hi << 4)) - 32;
}

#endif
