#!/usr/bin/env python3
"""Independent reference for alem's ggml block quantisers (tests/unit/test_block_weights.cc).

alem keeps Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights as ggml blocks and can also make them from f32 values
(`alem convert --dtype q4_0`, the kernel tests). This script quantises a few fixed rows with
the PyPI `gguf` package (llama.cpp's own numpy port of the reference quantisers), never with
alem's code, and writes the inputs and the block bytes to tests/data/block_quant_reference.json.
IQ4_NL and IQ4_XS, which the package cannot quantise, come from ggml's own C reference
(quantize_row_iq4_nl_ref / quantize_row_iq4_xs_ref in libggml-base, as
bench/llama_bench_compare.sh builds it), called through ctypes; IQ4_XS on rows of 256 values
(`rows256`: the three rows above two by two, so its runs include the all-zero one).

Usage: .venv-reference/bin/python scripts/reference/make_block_quant_reference.py \
           [path/to/libggml-base.so]   (default: build-llama/llama-build/bin/libggml-base.so)
"""
import ctypes
import sys
import importlib.metadata
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "block_quant_reference.json")


def rows():
    rng = np.random.default_rng(12)
    a = rng.uniform(-1, 1, 128).astype(np.float32)            # ordinary values
    b = (rng.standard_normal(128) * 3).astype(np.float32)     # wider spread
    c = np.zeros(128, dtype=np.float32)                       # an all-zero block, then edge cases
    c[32:64] = -2.5                                           # a constant negative block
    c[64:96] = np.linspace(-1, 0.25, 32, dtype=np.float32)    # largest magnitude negative
    c[96:128] = rng.uniform(-1e-3, 1e-3, 32).astype(np.float32)  # tiny scale (f16 subnormal d)
    return [a, b, c]


def main():
    data = {"gguf_version": importlib.metadata.version("gguf"),
            "rows": [], "quantized": {}}
    values = rows()
    data["rows"] = [[float(v) for v in r] for r in values]
    for name, qtype in (("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1), ("q5_0", Q.Q5_0), ("q5_1", Q.Q5_1),
                        ("q8_0", Q.Q8_0)):
        data["quantized"][name] = [gguf.quants.quantize(r.reshape(1, -1), qtype).tobytes().hex()
                                   for r in values]
    lib_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "build-llama", "llama-build", "bin", "libggml-base.so")
    ggml = ctypes.CDLL(lib_path)
    for fn in (ggml.quantize_row_iq4_nl_ref, ggml.quantize_row_iq4_xs_ref):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    blocks = []
    for r in values:
        r = np.ascontiguousarray(r, dtype=np.float32)
        out = np.zeros(len(r) // 32 * 18, dtype=np.uint8)
        ggml.quantize_row_iq4_nl_ref(r.ctypes.data, out.ctypes.data, len(r))
        # ggml leaves the indices of an all-zero block uninitialised (its d is 0, so any
        # indices give the same zeros); alem writes index 0 there.
        out = out.reshape(-1, 18)
        out[(out[:, 0] == 0) & (out[:, 1] == 0), 2:] = 0
        blocks.append(out.tobytes().hex())
    data["quantized"]["iq4_nl"] = blocks
    rows256 = [np.concatenate([values[0], values[1]]), np.concatenate([values[1], values[2]]),
               np.concatenate([values[2], values[0]])]
    data["rows256"] = [[float(v) for v in r] for r in rows256]
    blocks = []
    for r in rows256:
        r = np.ascontiguousarray(r, dtype=np.float32)
        out = np.zeros(len(r) // 256 * 136, dtype=np.uint8)
        ggml.quantize_row_iq4_xs_ref(r.ctypes.data, out.ctypes.data, len(r))
        blocks.append(out.tobytes().hex())
    data["quantized"]["iq4_xs"] = blocks
    data["ggml_library"] = os.path.basename(os.path.realpath(lib_path))
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
