#!/usr/bin/env python3
"""Independent reference for alem's K-quant blocks (tests/unit/test_kquant_weights.cc).

alem keeps GGUF's Q4_K, Q5_K and Q6_K super-blocks (256 values in 144 / 176 / 210 bytes) as they
are and computes with them directly. This script writes tests/data/kquant_reference.json: for each
of the three types, random super-blocks (realistic f16 scales, random 6-bit / int8 sub-block
scales and values) as hex, and their values as the PyPI `gguf` package dequantises them
(gguf.quants.dequantize, llama.cpp's own numpy port), never with alem's code.

It also holds `quantize_k`, a small numpy quantiser into the same layouts (per sub-block the
range of its values, those scales quantised to 6 bits / int8 against an f16 super-scale, as
ggml's quantize_row_q*_K_ref packs them), which make_block_golden.py uses to make a K-quant GGUF
of SmolLM2 that transformers and alem both read; gguf-py only dequantises K-quants.

Usage: .venv-reference/bin/python scripts/reference/make_kquant_reference.py
"""
from __future__ import annotations

import importlib.metadata
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "kquant_reference.json")
TYPES = (Q.Q4_K, Q.Q5_K, Q.Q6_K)


def random_super_blocks(rng, qtype, n_blocks):
    """Random bytes for n_blocks of qtype with finite, model-like f16 super-scales."""
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)

    def put_f16(col, lo, hi):
        v = rng.uniform(lo, hi, size=n_blocks).astype(np.float16)
        raw[:, col:col + 2] = v.view(np.uint8).reshape(n_blocks, 2)

    if qtype in (Q.Q4_K, Q.Q5_K):
        put_f16(0, 0.0002, 0.003)   # d
        put_f16(2, 0.0002, 0.003)   # dmin
    else:
        put_f16(208, -0.002, 0.002)  # d (signed in ggml's Q6_K)
    return raw


# ---- a numpy K-quantiser (the layouts of ggml's block_q4_K / block_q5_K / block_q6_K) ----

def _f16(v):
    return np.asarray(v, dtype=np.float32).astype(np.float16)


def _pack_scales_k4(ls, lm):
    """8 six-bit scales and mins per block (n, 8) -> the 12-byte packing of get_scale_min_k4."""
    n = ls.shape[0]
    s = np.zeros((n, 12), dtype=np.uint8)
    s[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    s[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    return s


def _quantize_q45_k(x, levels):
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0).astype(np.float32)
    hi = sub.max(axis=2).astype(np.float32)
    scales = ((hi - lo) / np.float32(levels)).astype(np.float32)
    mins = (np.float32(0) - lo).astype(np.float32)  # +0, never -0, for an all-positive block
    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_s = np.where(max_scale > 0, np.float32(63) / np.where(max_scale > 0, max_scale, 1), 0).astype(np.float32)
    inv_m = np.where(max_min > 0, np.float32(63) / np.where(max_min > 0, max_min, 1), 0).astype(np.float32)
    ls = np.minimum(63, np.rint(inv_s[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, np.rint(inv_m[:, None] * mins)).astype(np.uint8)
    d = _f16(max_scale / np.float32(63))
    dmin = _f16(max_min / np.float32(63))
    dj = d.astype(np.float32)[:, None] * ls.astype(np.float32)
    mj = dmin.astype(np.float32)[:, None] * lm.astype(np.float32)
    safe = np.where(dj != 0, dj, 1)
    q = np.where(dj[:, :, None] != 0, np.rint((sub + mj[:, :, None]) / safe[:, :, None]), 0)
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(n, 4, 2, 32)  # (pair, sub-block, l)
    head = np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2),
                           _pack_scales_k4(ls, lm)], axis=1)
    low = (q & 0x0F)
    qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(n, 128)
    if levels == 15:
        return np.concatenate([head, qs], axis=1)
    high = (q >> 4).astype(np.uint8)  # (n, 4, 2, 32): bit 2j / 2j+1 of byte l
    qh = np.zeros((n, 32), dtype=np.uint8)
    for j in range(4):
        qh |= high[:, j, 0, :] << (2 * j)
        qh |= high[:, j, 1, :] << (2 * j + 1)
    return np.concatenate([head, qh, qs], axis=1)


def _quantize_q6_k(x):
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    idx = np.abs(sub).argmax(axis=2)
    vmax = np.take_along_axis(sub, idx[:, :, None], axis=2)[:, :, 0]
    scales = (vmax / np.float32(-32)).astype(np.float32)
    sidx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(n), sidx]
    zero = np.abs(max_scale) < 1e-15
    iscale = np.where(zero, 0, np.float32(-128) / np.where(zero, 1, max_scale)).astype(np.float32)
    d = _f16(np.where(zero, 0, np.float32(1) / np.where(zero, 1, iscale)))
    sc = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int8)
    dj = d.astype(np.float32)[:, None] * sc.astype(np.float32)
    safe = np.where(dj != 0, dj, 1)
    q = np.where(dj[:, :, None] != 0, np.rint(sub / safe[:, :, None]), 0)
    L = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # (half, quarter, l)
    ql = np.concatenate([(L[:, :, 0] & 0x0F) | ((L[:, :, 2] & 0x0F) << 4),
                         (L[:, :, 1] & 0x0F) | ((L[:, :, 3] & 0x0F) << 4)], axis=2)  # (n, 2, 64)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).astype(np.uint8)  # (n, 2, 32)
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8),
                          d.view(np.uint8).reshape(n, 2)], axis=1)
    out[zero] = 0
    return out


def quantize_k(values: np.ndarray, qtype) -> np.ndarray:
    """Rows of f32 values (cols % 256 == 0) -> uint8 rows of K-quant super-blocks."""
    rows, cols = values.shape
    assert cols % 256 == 0, f"{cols} columns are not whole 256-value super-blocks"
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, 256)
    if qtype == Q.Q4_K:
        blocks = _quantize_q45_k(x, 15)
    elif qtype == Q.Q5_K:
        blocks = _quantize_q45_k(x, 31)
    elif qtype == Q.Q6_K:
        blocks = _quantize_q6_k(x)
    else:
        raise ValueError(qtype)
    return blocks.reshape(rows, -1)


def quantiser_rows(rng):
    a = rng.standard_normal(512).astype(np.float32)
    b = (rng.uniform(-1, 1, 512) * np.repeat(rng.uniform(0.01, 4, 16), 32)).astype(np.float32)
    c = np.zeros(512, dtype=np.float32)
    c[32:64] = -2.5                                              # constant negative sub-block
    c[64:96] = 1.5                                               # constant positive sub-block
    c[96:128] = np.linspace(-1, 0.25, 32, dtype=np.float32)
    c[128:256] = rng.uniform(-1e-3, 1e-3, 128).astype(np.float32)  # tiny next to large
    c[256:512] = rng.uniform(0, 3, 256).astype(np.float32)        # all positive
    return np.stack([a, b, c])


def main():
    rng = np.random.default_rng(20261202)
    doc = {"generator": "scripts/reference/make_kquant_reference.py",
           "gguf_version": importlib.metadata.version("gguf"), "cases": []}
    rows, cols = 2, 512
    for qtype in TYPES:
        raw = random_super_blocks(rng, qtype, rows * cols // 256).reshape(rows, -1)
        values = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(-1)
        doc["cases"].append({"ggml_type": qtype.name, "rows": rows, "cols": cols,
                             "blocks_hex": raw.tobytes().hex(),
                             "values": [float(v) for v in values]})
        # The numpy quantiser on fixed rows (ordinary, wide, zero / constant / tiny sub-blocks):
        # alem's quantiser follows the same rule and must give the same bytes, and the blocks
        # must dequantise (by gguf) close to what they encode.
        x = quantiser_rows(np.random.default_rng(7))
        blocks = quantize_k(x, qtype)
        back = gguf.quants.dequantize(blocks, qtype).reshape(x.shape)
        rms = float(np.sqrt(np.mean((back[:2] - x[:2]) ** 2)) / np.sqrt(np.mean(x[:2] ** 2)))
        print(f"{qtype.name}: numpy quantiser relative rms error {rms:.4f} on random rows")
        doc["quantized"] = doc.get("quantized", {})
        doc["quantized"][qtype.name] = {"rows_hex": [r.tobytes().hex() for r in blocks],
                                        "relative_rms_error": rms}
    doc["quantiser_rows"] = [[float(v) for v in r] for r in quantiser_rows(np.random.default_rng(7))]
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
