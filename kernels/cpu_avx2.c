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
/* Packing plus the tiles cost about as much as 24 rows of mm_rows (which
 * shares each weight block among 4 activation rows), single-threaded,
 * weights in cache, measured on Zen 4. */
#define X86_PACKED_MIN_M 24
#include "kernels/cpu_x86.h"

X86_KERNEL_TABLE(lloco_cpu_kernels_avx2, natural_act_row_bytes, quantize_natural, mm_rows_natural);
