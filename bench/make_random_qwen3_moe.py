#!/usr/bin/env python3
"""Writes a Hugging Face folder with random bf16 weights in the true shape of Qwen3-30B-A3B
(hidden 2048, 32 query / 4 kv heads of 128, 128 experts of 768, top-8, norm_topk_prob, vocab
151936, untied LM head) but only a few layers, for `alem bench generate` on MoE: per layer
and per token it moves exactly the bytes the real model moves. The tokenizer is the tiny one
from tests/data/tiny-qwen3 (benchmarks feed random token ids). Convert it with
`alem convert safetensors DIR OUT.h5`.

Usage: python3 bench/make_random_qwen3_moe.py OUT_DIR [--layers 2] [--seed 1]
Needs numpy only. About 1.25 GB per layer plus 1.25 GB of embedding and LM head (bf16).
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

SHAPE = dict(hidden=2048, heads=32, kv_heads=4, head_dim=128, experts=128, top_k=8,
             moe_ffn=768, dense_ffn=6144, vocab=151936)


def bf16_bytes(values):
    """float32 array -> bf16 bytes (round to nearest even)."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


def tensors(layers, rng):
    s = SHAPE
    h, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    yield "model.embed_tokens.weight", (s["vocab"], h), 0.02
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,), None
        yield p + "post_attention_layernorm.weight", (h,), None
        yield p + "self_attn.q_proj.weight", (q, h), 0.02
        yield p + "self_attn.k_proj.weight", (kv, h), 0.02
        yield p + "self_attn.v_proj.weight", (kv, h), 0.02
        yield p + "self_attn.o_proj.weight", (h, q), 0.02
        yield p + "self_attn.q_norm.weight", (s["head_dim"],), None
        yield p + "self_attn.k_norm.weight", (s["head_dim"],), None
        yield p + "mlp.gate.weight", (s["experts"], h), 0.02
        for e in range(s["experts"]):
            yield p + f"mlp.experts.{e}.gate_proj.weight", (s["moe_ffn"], h), 0.02
            yield p + f"mlp.experts.{e}.up_proj.weight", (s["moe_ffn"], h), 0.02
            yield p + f"mlp.experts.{e}.down_proj.weight", (h, s["moe_ffn"]), 0.02
    yield "model.norm.weight", (h,), None
    yield "lm_head.weight", (s["vocab"], h), 0.02


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    specs = list(tensors(a.layers, rng))
    header, offset = {}, 0
    for name, shape, _ in specs:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, shape, std in specs:
            if std is None:
                values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            else:
                values = std * rng.standard_normal(shape, dtype=np.float32)
            f.write(bf16_bytes(values))
    s = SHAPE
    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "_name_or_path": f"random-qwen3-30b-a3b-shape-{a.layers}l",
        "vocab_size": s["vocab"], "hidden_size": s["hidden"], "intermediate_size": s["dense_ffn"],
        "moe_intermediate_size": s["moe_ffn"], "num_hidden_layers": a.layers,
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "head_dim": s["head_dim"], "num_experts": s["experts"], "num_experts_per_tok": s["top_k"],
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "attention_bias": False, "eos_token_id": 2,
        "bos_token_id": None, "torch_dtype": "bfloat16",
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(here, "..", "tests", "data", "tiny-qwen3", name),
                    os.path.join(a.out, name))
    print(f"wrote {a.out}: {a.layers} layers, {offset / 1e9:.2f} GB of bf16 weights")


if __name__ == "__main__":
    main()
