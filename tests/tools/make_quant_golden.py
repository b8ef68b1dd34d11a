#!/usr/bin/env python3
"""Writes tests/fixtures/quant/*.bin: golden data from gguf-py (the GGUF
reference implementation in Python) that test_kernels checks lloco's
lloco_dequantize_row / lloco_quantize_row against, byte for byte.

Usage: python3 tests/tools/make_quant_golden.py [out_dir]
Needs numpy and the `gguf` package (pip install gguf). Deterministic: the
same gguf version writes the same files.

File format (little endian):
    char     magic[4]   "LQG1"
    uint32   kind       0: dequantize (bytes are the input, floats the output)
                        1: quantize   (floats are the input, bytes the output)
    char     dtype[8]   lloco dtype name, NUL padded ("q4_K", "bf16", ...)
    uint32   n_elems
    uint32   n_bytes
    uint8    bytes[n_bytes]
    float32  floats[n_elems]
"""
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

KIND_DEQUANT = 0
KIND_QUANT = 1


def write(path, kind, name, raw, floats):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).ravel()
    floats = np.ascontiguousarray(floats, dtype="<f4").ravel()
    with open(path, "wb") as f:
        f.write(b"LQG1")
        f.write(struct.pack("<I8sII", kind, name.encode(), floats.size, raw.size))
        f.write(raw.tobytes())
        f.write(floats.tobytes())


def fp16_bytes(values):
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(rng, qtype, n_blocks):
    """Random blocks with sane (finite, modest) fp16 scales; every other
    byte is uniformly random, so every quant value and scale code occurs."""
    block_elems, block_bytes = quants.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)

    def scales(lo, hi, signed=False):
        v = rng.uniform(lo, hi, size=n_blocks)
        if signed:
            v *= rng.choice([-1.0, 1.0], size=n_blocks)
        return fp16_bytes(v)

    if qtype == T.Q8_0 or qtype == T.Q4_0:
        raw[:, 0:2] = scales(1e-3, 0.1, signed=True)
    elif qtype == T.Q4_1:
        raw[:, 0:2] = scales(1e-3, 0.1)
        raw[:, 2:4] = scales(0.0, 1.0, signed=True)
    elif qtype == T.Q4_K:
        raw[:, 0:2] = scales(1e-4, 1e-2)   # d
        raw[:, 2:4] = scales(1e-4, 1e-2)   # dmin
    elif qtype == T.Q6_K:
        raw[:, 208:210] = scales(1e-4, 1e-2)  # d after ql, qh, scales
    return raw


def random_rows(rng, n):
    """Activation-like values: blocks of varied magnitude, one block of
    zeros (the d == 0 path), and one constant block (Q4_1's max == min)."""
    x = rng.standard_normal(n).astype(np.float32)
    x *= np.repeat(np.exp(rng.uniform(-4, 2, size=n // 32)), 32).astype(np.float32)
    x[0:32] = 0.0
    x[32:64] = 0.75
    # Values on exact multiples of a nice scale make round-half ties likely.
    x[64:96] = (np.arange(32, dtype=np.float32) - 16) * np.float32(0.5)
    return x


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "quant")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240601)

    # Dequantization goldens: random blocks -> gguf's f32.
    for qtype, name, n in [
        (T.Q8_0, "q8_0", 512),
        (T.Q4_0, "q4_0", 512),
        (T.Q4_1, "q4_1", 512),
        (T.Q4_K, "q4_K", 1024),
        (T.Q6_K, "q6_K", 1024),
    ]:
        block_elems, _ = quants.GGML_QUANT_SIZES[qtype]
        raw = random_blocks(rng, qtype, n // block_elems)
        y = quants.dequantize(raw.reshape(1, -1), qtype)
        write(os.path.join(out, f"dequant_{name}.bin"), KIND_DEQUANT, name, raw, y)

    # bf16: random bit patterns (finite ones) -> f32.
    bits = rng.integers(0, 1 << 16, size=512, dtype=np.uint16)
    bits = bits[(bits & 0x7F80) != 0x7F80][:256]
    write(os.path.join(out, "dequant_bf16.bin"), KIND_DEQUANT, "bf16", bits.view(np.uint8),
          quants.dequantize(bits.view(np.uint8).reshape(1, -1), T.BF16))

    # Quantization goldens: f32 rows -> gguf's bytes (its quantizers match
    # GGML's *_ref ones bit for bit).
    for qtype, name in [(T.Q8_0, "q8_0"), (T.Q4_0, "q4_0"), (T.Q4_1, "q4_1"), (T.BF16, "bf16")]:
        x = random_rows(rng, 512)
        q = quants.quantize(x.reshape(1, -1), qtype)
        write(os.path.join(out, f"quant_{name}.bin"), KIND_QUANT, name, q.view(np.uint8), x)
    x = random_rows(rng, 512)
    write(os.path.join(out, "quant_f16.bin"), KIND_QUANT, "f16", x.astype(np.float16).view(np.uint8), x)


if __name__ == "__main__":
    main()
