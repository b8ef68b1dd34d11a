/* cpu_avx2: the CPU backend's kernels for AVX2 + FMA + F16C machines:
 * cpu_x86.h on 256-bit vectors with maddubs dot products, prefill tiles of
 * 2 weight rows x 4 activation rows (one vector of 8 outputs, 16
 * registers), and decode streaming blocks in element order as GGML does.
 * Built with -mavx2 -mfma -mf16c; cpu.c calls it only after checking the CPU.
 */
#define X86_WIDTH 256
#define X86_VNNI 0
#define X86_TILE_R 2
#define X86_TILE_C 4
#include "kernels/cpu_x86.h"

static size_t act_row_bytes(lloco_dtype wt, int k, int packed) {
    (void)wt;
    return packed ? tile_row_bytes(k) : natural_act_row_bytes(k);
}

static void quantize_act(lloco_dtype wt, const float *x, int k, int packed, uint8_t *act, int i) {
    if (packed)
        quantize_tile_row(wt, x, k, act, i);
    else
        quantize_natural(wt, x, k, act + (size_t)i * natural_act_row_bytes(k));
}

const cpu_kernels lloco_cpu_kernels_avx2 = {
    .tile_r = R_,
    .tile_c = C_,
    .act_row_bytes = act_row_bytes,
    .quantize_act = quantize_act,
    .mm_rows = mm_rows_natural,
    .mm_panel_bytes = x86_mm_panel_bytes,
    .mm_pack = x86_mm_pack,
    .mm_tile = x86_mm_tile,
    .mm_float = x86_mm_float,
    .attn = x86_attn,
    .rmsnorm_row = x86_rmsnorm_row,
    .softmax_row = x86_softmax_row,
    .silu_mul = x86_silu_mul,
    .add = x86_add,
    .f16_to_f32 = x86_f16_to_f32,
    .f32_to_f16 = x86_f32_to_f16,
};
