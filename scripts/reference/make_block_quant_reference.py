#!/usr/bin/env python3
"""Independent reference for alem's ggml block quantisers (tests/unit/test_block_weights.cc).

alem keeps Q4_0, Q4_1 and Q8_0 weights as ggml blocks and can also make them from f32 values
(`alem convert --dtype q4_0`, the kernel tests). This script quantises a few fixed rows with
the PyPI `gguf` package (llama.cpp's own numpy port of the reference quantisers), never with
alem's code, and writes the inputs and the block bytes to tests/data/block_quant_reference.json.

Usage: .venv-reference/bin/python scripts/reference/make_block_quant_reference.py
"""
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
    for name, qtype in (("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1), ("q8_0", Q.Q8_0)):
        data["quantized"][name] = [gguf.quants.quantize(r.reshape(1, -1), qtype).tobytes().hex()
                                   for r in values]
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
