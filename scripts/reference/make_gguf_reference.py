#!/usr/bin/env python3
"""Independent reference data for alem's GGUF importer (tests/unit/test_gguf.cc).

Two outputs, both produced with the PyPI `gguf` package (llama.cpp's own Python reader and
numpy dequantisers), never with alem's code:

1. tests/data/gguf_reference.json: for several tensors of every type in the real model file
   (Q8_0 token_embd, Q4_1 projections, F32 norms), 64 values at fixed flat indices plus the
   float64 sum and sum of squares of the whole tensor, in Hugging Face orientation. attn_q and
   attn_k are un-permuted here in numpy by inverting llama.cpp's HF->GGUF permutation
   (`w.reshape(n_head, 2, hd//2, cols).swapaxes(1, 2)`), and the result is cross-checked with
   transformers' GGUF loader (`LlamaTensorProcessor._reverse_permute_weights`).
2. tests/data/gguf_quant_types.gguf (+ its section of the JSON): a small synthetic GGUF with one
   tensor per block format alem supports (and one it does not), filled with random blocks, and
   the full dequantised values from gguf.quants.dequantize.

3. tests/data/gguf_lowbit_types.gguf and tests/data/gguf_lowbit_reference.json: the same for the
   low-bit types alem imports (Q2_K, Q3_K, IQ4_NL, IQ4_XS) and one it refuses (IQ2_XXS), and
   tests/data/tiny-lowbit-llama.gguf, a one-layer llama of random blocks in those types and Q5_0,
   and tests/data/tiny-mixtral-lowbit.gguf, tiny-mixtral.gguf with IQ4_NL and Q5_0 experts;
   `--lowbit-only` writes only these (gguf and numpy, no transformers).

Usage: .venv-reference/bin/python scripts/reference/make_gguf_reference.py [model.gguf] [--lowbit-only]
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DATA = os.path.join(ROOT, "tests", "data")
SAMPLE_COUNT = 64

REAL_TENSORS = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
    ("blk.17.attn_q.weight", "model.layers.17.self_attn.q_proj.weight"),
    ("blk.29.attn_k.weight", "model.layers.29.self_attn.k_proj.weight"),
    ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
    ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
    ("blk.5.ffn_gate.weight", "model.layers.5.mlp.gate_proj.weight"),
    ("blk.12.ffn_up.weight", "model.layers.12.mlp.up_proj.weight"),
    ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"),
    ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
    ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
    ("output_norm.weight", "model.norm.weight"),
]


def field_value(reader, key):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]][0]


def hf_matrix(t):
    """Dequantised tensor in HF orientation: numpy shape is already (rows, cols) = reversed ne."""
    values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    ne = [int(d) for d in t.shape]  # GGUF order, fastest first
    return values.reshape(list(reversed(ne)) if len(ne) > 1 else ne)


def unpermute_qk(w, n_head):
    """Inverse of llama.cpp's permute(): find, for every HF row, the GGUF row it was moved to."""
    rows = w.shape[0]
    hf_rows = np.arange(rows)
    gguf_order = hf_rows.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)
    # GGUF row i holds HF row gguf_order[i]; invert.
    out = np.empty_like(w)
    out[gguf_order] = w
    return out


def sample_indices(n, seed):
    rng = np.random.default_rng(seed)
    fixed = [0, 1, 2, 31, 32, 33, n // 2, n - 1]
    rand = rng.choice(n, size=SAMPLE_COUNT - len(fixed), replace=False)
    return sorted(set(int(i) for i in list(fixed) + list(rand)))


def real_model_reference():
    reader = gguf.GGUFReader(MODEL)
    n_head = int(field_value(reader, "llama.attention.head_count"))
    n_kv = int(field_value(reader, "llama.attention.head_count_kv"))
    by_name = {t.name: t for t in reader.tensors}
    try:
        from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
        processor = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_kv})
    except Exception as e:  # transformers missing: the numpy un-permutation stands alone
        print("note: transformers cross-check unavailable:", e)
        processor = None
    out = []
    for seed, (gname, hname) in enumerate(REAL_TENSORS):
        t = by_name[gname]
        w = hf_matrix(t)
        if ".attn_q." in gname or ".attn_k." in gname:
            heads = n_head if ".attn_q." in gname else n_kv
            raw = w
            w = unpermute_qk(raw, heads)
            if processor is not None:
                theirs = processor.process(raw.copy(), gname).weights
                assert np.array_equal(theirs, w), "un-permutation disagrees with transformers for " + gname
        flat = w.reshape(-1).astype(np.float64)
        idx = sample_indices(flat.size, seed)
        out.append({
            "gguf_name": gname,
            "hf_name": hname,
            "ggml_type": t.tensor_type.name,
            "hf_shape": list(w.shape),
            "indices": idx,
            "values": [float(np.float32(flat[i])) for i in idx],
            "sum": float(flat.sum()),
            "sum_squares": float((flat * flat).sum()),
        })
        print(f"{gname:28s} {t.tensor_type.name:5s} {list(w.shape)} sum={flat.sum():.6f}")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    merges = field_value(reader, "tokenizer.ggml.merges")
    meta = {
        "architecture": str(field_value(reader, "general.architecture")),
        "vocab_tokens": len(tokens),
        "merges": len(merges),
        "first_tokens": [str(s) for s in tokens[:20]],
        "last_token": str(tokens[-1]),
        "first_merges": [str(s) for s in merges[:10]],
        "first_token_types": [int(v) for v in field_value(reader, "tokenizer.ggml.token_type")[:20]],
        "chat_template": str(field_value(reader, "tokenizer.chat_template")),
        "special_ids": {k: int(field_value(reader, "tokenizer.ggml." + k)) for k in
                        ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")},
        "tensor_count": len(reader.tensors),
        "tensor_types": {t.name: t.tensor_type.name for t in reader.tensors if t.name.startswith(("blk.0.", "token_embd", "output"))},
        "data_offset": int(reader.data_offset),
    }
    return meta, out


def random_blocks(rng, qtype, n_blocks):
    """Random bytes for n_blocks of qtype, with every f16 scale field replaced by a finite value."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)

    def put_f16(col, lo, hi):
        v = rng.uniform(lo, hi, size=n_blocks).astype(np.float16)
        raw[:, col:col + 2] = v.view(np.uint8).reshape(n_blocks, 2)

    if qtype in (Q.Q4_0, Q.Q5_0, Q.Q8_0):
        put_f16(0, -0.05, 0.05)
    elif qtype in (Q.Q4_1, Q.Q5_1):
        put_f16(0, 0.001, 0.05)
        put_f16(2, -0.4, 0.0)
    elif qtype == Q.Q4_K:
        put_f16(0, 0.0005, 0.003)
        put_f16(2, 0.0005, 0.003)
    elif qtype == Q.Q6_K:
        put_f16(208, -0.002, 0.002)
    elif qtype == Q.Q2_K:
        put_f16(80, 0.001, 0.01)
        put_f16(82, 0.001, 0.01)
    elif qtype == Q.Q3_K:
        put_f16(108, -0.003, 0.003)
    elif qtype in (Q.IQ4_NL, Q.IQ4_XS, Q.IQ2_XXS):
        put_f16(0, -0.002, 0.002)
    return raw


def add_case(writer, cases, name, qtype, payload, rows, cols):
    """Adds one tensor to the fixture and its values as the gguf package dequantises them."""
    writer.add_tensor(name, payload, raw_shape=payload.shape, raw_dtype=qtype)
    values = gguf.quants.dequantize(payload, qtype).astype(np.float32).reshape(-1)
    cases.append({"name": name, "ggml_type": qtype.name, "rows": rows, "cols": cols,
                  "values": [float(v) for v in values]})


def finish_fixture(writer, path, tensor_count):
    """Writes the fixture, then re-reads it with gguf's reader to be sure it is well-formed."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert len(gguf.GGUFReader(path).tensors) == tensor_count


def lowbit_quant_file():
    """tests/data/gguf_lowbit_types.gguf: the block types alem expands on import beyond the first
    fixture's (Q2_K, Q3_K, IQ4_NL, IQ4_XS), and IQ2_XXS, which it refuses; its own random blocks
    and gguf.quants.dequantize's values."""
    rng = np.random.default_rng(20261205)
    path = os.path.join(DATA, "gguf_lowbit_types.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("alem low-bit quant-type fixture")
    cases = []
    rows, cols = 3, 512
    for qtype in (Q.Q2_K, Q.Q3_K, Q.IQ4_NL, Q.IQ4_XS, Q.IQ2_XXS):
        name = "test." + qtype.name.lower() + ".weight"
        block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
        payload = random_blocks(rng, qtype, rows * cols // block_elems).reshape(rows, -1)
        add_case(writer, cases, name, qtype, payload, rows, cols)
    finish_fixture(writer, path, len(cases))
    doc = {"generator": "scripts/reference/make_gguf_reference.py --lowbit-only (gguf " +
           getattr(gguf, "__version__", "?") + ", numpy " + np.__version__ + ")",
           "fixture": os.path.basename(path), "cases": cases}
    out = os.path.join(DATA, "gguf_lowbit_reference.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=0)
    print("wrote", out, os.path.getsize(out), "bytes")


def synthetic_quant_file():
    rng = np.random.default_rng(20240607)
    path = os.path.join(DATA, "gguf_quant_types.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("alem quant-type fixture")
    # Metadata of every scalar kind and a nested array, for the parser test.
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -30000)
    writer.add_uint32("test.u32", 4000000000)
    writer.add_int32("test.i32", -2000000000)
    writer.add_float32("test.f32", 0.15625)
    writer.add_uint64("test.u64", 1 << 40)
    writer.add_int64("test.i64", -(1 << 40))
    writer.add_float64("test.f64", -2.5e-300)
    writer.add_bool("test.bool", True)
    writer.add_string("test.string", "héllo")
    writer.add_array("test.int_array", [1, -2, 3])
    writer.add_array("test.string_array", ["a", "bc", ""])
    writer.add_array("test.nested_array", [[1, 2], [3]])
    cases = []
    rows, cols = 2, 256
    for qtype in (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q6_K, Q.Q2_K):
        name = "test." + qtype.name.lower() + ".weight"
        if qtype == Q.F32:
            raw = rng.normal(0, 1, size=(rows, cols)).astype(np.float32)
            payload = raw.view(np.uint8).reshape(rows, -1)
        elif qtype == Q.F16:
            payload = rng.normal(0, 1, size=(rows, cols)).astype(np.float16).view(np.uint8).reshape(rows, -1)
        elif qtype == Q.BF16:
            bits = (rng.normal(0, 1, size=(rows, cols)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
            payload = bits.view(np.uint8).reshape(rows, -1)
        else:
            block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
            payload = random_blocks(rng, qtype, rows * cols // block_elems).reshape(rows, -1)
        add_case(writer, cases, name, qtype, payload, rows, cols)
    finish_fixture(writer, path, len(cases))
    return os.path.basename(path), cases


def lowbit_model_file():
    """tests/data/tiny-lowbit-llama.gguf: a one-layer llama of random blocks whose matrices take
    the low-bit types alem keeps (Q3_K, Q5_0, IQ4_NL, IQ4_XS) or expands (Q2_K), with
    tiny-llama's tokenizer, for the import test (tests/unit/test_convert.cc)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gguf_tokenizer import add_tokenizer
    rng = np.random.default_rng(20261206)
    hidden, ffn, vocab, heads, kv_heads = 256, 512, 512, 4, 2
    head_dim = hidden // heads
    path = os.path.join(DATA, "tiny-lowbit-llama.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-lowbit-llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    add_tokenizer(writer, os.path.join(DATA, "tiny-llama"))
    matrices = [("token_embd.weight", Q.Q5_0, vocab, hidden),
                ("output.weight", Q.IQ4_XS, vocab, hidden),
                ("blk.0.attn_q.weight", Q.Q3_K, hidden, hidden),
                ("blk.0.attn_k.weight", Q.Q3_K, kv_heads * head_dim, hidden),
                ("blk.0.attn_v.weight", Q.IQ4_NL, kv_heads * head_dim, hidden),
                ("blk.0.attn_output.weight", Q.IQ4_XS, hidden, hidden),
                ("blk.0.ffn_gate.weight", Q.Q3_K, ffn, hidden),
                ("blk.0.ffn_up.weight", Q.Q3_K, ffn, hidden),
                ("blk.0.ffn_down.weight", Q.Q2_K, hidden, ffn)]
    for name, qtype, rows, cols in matrices:
        block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
        payload = random_blocks(rng, qtype, rows * cols // block_elems).reshape(rows, -1)
        writer.add_tensor(name, payload, raw_shape=payload.shape, raw_dtype=qtype)
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        writer.add_tensor(name, rng.uniform(0.5, 1.5, size=hidden).astype(np.float32))
    finish_fixture(writer, path, len(matrices) + 3)
    print("wrote", path, os.path.getsize(path), "bytes")


def lowbit_moe_file():
    """tests/data/tiny-mixtral-lowbit.gguf: tests/data/tiny-mixtral.gguf (metadata, tokenizer and
    every other tensor copied as they are) with random blocks for its stacked experts, gate and up
    in IQ4_NL and down in Q5_0, which alem keeps as they are one expert at a time."""
    rng = np.random.default_rng(20261207)
    source = gguf.GGUFReader(os.path.join(DATA, "tiny-mixtral.gguf"))
    path = os.path.join(DATA, "tiny-mixtral-lowbit.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in source.tensors:
        if "_exps." in t.name:
            qtype = Q.Q5_0 if "down" in t.name else Q.IQ4_NL
            experts, rows, cols = (int(d) for d in reversed(t.shape.tolist()))
            block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
            payload = random_blocks(rng, qtype, experts * rows * cols // block_elems)
            payload = payload.reshape(experts, rows, -1)
            writer.add_tensor(t.name, payload, raw_shape=payload.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    finish_fixture(writer, path, len(source.tensors))
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    lowbit_quant_file()
    lowbit_model_file()
    lowbit_moe_file()
    if "--lowbit-only" in sys.argv:
        return
    meta, tensors = real_model_reference()
    fixture, cases = synthetic_quant_file()
    doc = {
        "generator": "scripts/reference/make_gguf_reference.py (gguf " + getattr(gguf, "__version__", "?") + ", numpy " + np.__version__ + ")",
        "model_file": os.path.basename(MODEL),
        "metadata": meta,
        "tensors": tensors,
        "quant_fixture": fixture,
        "quant_cases": cases,
    }
    out = os.path.join(DATA, "gguf_reference.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=0)
    print("wrote", out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
