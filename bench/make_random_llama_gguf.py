#!/usr/bin/env python3
"""Writes a random-weight Llama GGUF in the shape of TinyLlama-1.1B, for side-by-side speed runs
of alem and llama.cpp on a model ten times SmolLM2's size (bench/llama_bench_compare.sh,
SHAPES=tinyllama). Both engines read this one file (alem through `alem convert`), so they run
the very same weights.

Shape: 22 layers, hidden 2048, feed-forward 5632, 32 query heads and 4 key/value heads of 64,
an untied output matrix, RoPE base 10000, as TinyLlama-1.1B's config.json. The tokenizer and
its metadata are SmolLM2-135M's (copied from its GGUF), so the vocabulary is 49,152 tokens, not
TinyLlama's 32,000: 1.1B parameters become 1.17B (the embedding and output matrices grow by
35 M values each). Speed benchmarks send token ids; the text the weights would produce means
nothing.

Weights: normal with standard deviation 0.02 (a fresh initialisation), norms 1, from a fixed
seed, written as BF16 (matrices) and F32 (norms). Other types are made from this file by
llama-quantize, as llama.cpp users make them.

Usage: .venv-reference/bin/python bench/make_random_llama_gguf.py SOURCE.gguf OUT.gguf
  SOURCE: SmolLM2-135M-Instruct.Q4_1.gguf (its tokenizer is copied).
"""
import sys

import gguf
import numpy as np

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS = 22, 2048, 5632, 32, 4
HEAD_DIM = HIDDEN // HEADS
SHAPE_KEYS = {"llama.block_count": LAYERS, "llama.embedding_length": HIDDEN,
              "llama.feed_forward_length": FFN, "llama.attention.head_count": HEADS,
              "llama.attention.head_count_kv": KV_HEADS, "llama.rope.dimension_count": HEAD_DIM,
              "llama.rope.freq_base": 10000.0, "llama.context_length": 2048}


def bf16_bits(values):
    """Round-to-nearest-even bf16 bit patterns of f32 values (numpy has no bfloat16)."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def main():
    source, target = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, "llama")
    vocab = None
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name in SHAPE_KEYS:
            value = SHAPE_KEYS[name]
        elif name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_BF16)
        elif name == "general.name":
            value = "random-tinyllama-1.1b-shape"
        elif name == "tokenizer.ggml.tokens":
            vocab = len(value)
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for key in ("llama.rope.freq_base", "llama.context_length", "llama.rope.dimension_count"):
        if key not in reader.fields:
            value = SHAPE_KEYS[key]
            if isinstance(value, float):
                writer.add_float32(key, value)
            else:
                writer.add_uint32(key, value)
    assert vocab, "the source GGUF has no tokenizer.ggml.tokens"

    rng = np.random.default_rng(1234)

    def matrix(name, rows, cols):
        values = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        bits = bf16_bits(values)
        writer.add_tensor(name, bits, raw_shape=bits.shape,
                          raw_dtype=gguf.GGMLQuantizationType.BF16)

    def norm(name):
        writer.add_tensor(name, np.ones(HIDDEN, dtype=np.float32))

    matrix("token_embd.weight", vocab, HIDDEN)
    for layer in range(LAYERS):
        p = f"blk.{layer}."
        norm(p + "attn_norm.weight")
        matrix(p + "attn_q.weight", HEADS * HEAD_DIM, HIDDEN)
        matrix(p + "attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        matrix(p + "attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        matrix(p + "attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        norm(p + "ffn_norm.weight")
        matrix(p + "ffn_gate.weight", FFN, HIDDEN)
        matrix(p + "ffn_up.weight", FFN, HIDDEN)
        matrix(p + "ffn_down.weight", HIDDEN, FFN)
    norm("output_norm.weight")
    matrix("output.weight", vocab, HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
