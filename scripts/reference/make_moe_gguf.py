#!/usr/bin/env python3
"""Writes the tiny random mixture-of-experts models as GGUF files, with the PyPI `gguf` package
(llama.cpp's own writer and tensor-name map), from the same bf16 weights as their Hugging Face
folders:

- tests/data/tiny-qwen3-moe-a.gguf  (arch `qwen3moe`)  from tests/data/tiny-qwen3-moe-a
- tests/data/tiny-qwen3-moe-b.gguf  (arch `qwen3moe`)  from tests/data/tiny-qwen3-moe-b
- tests/data/tiny-mixtral.gguf      (arch `llama` with experts, as llama.cpp writes Mixtral)
                                     from tests/data/tiny-mixtral

Why: alem's GGUF importer must split llama.cpp's 3-D expert tensors (blk.N.ffn_gate_exps,
ffn_up_exps, ffn_down_exps: [experts, rows, cols]) and the router (blk.N.ffn_gate_inp) into its
store's per-expert matrices. The weights are bit-identical to the safetensors (BF16 tensors), so
tests/unit/test_gguf_moe.cc checks the imported models against the same transformers golden
files (tests/data/golden/tiny-*.json) as the safetensors imports.

As llama.cpp's convert_hf_to_gguf.py does: the experts of a layer stacked in expert order; for
`llama` the q and k rows permuted (LlamaModel.permute); norms in F32; the dense layers of
Qwen3-MoE model a (mlp_only_layers) keep ffn_gate/ffn_up/ffn_down, and model b's
norm_topk_prob=false is written as `qwen3moe.expert_weights_norm` = false. Tensor names come
from gguf's own map (gguf.get_tensor_name_map). The tokenizer: tokens, merges and token types of
tokenizer.json (model gpt2, pre qwen2).

Usage: .venv-reference/bin/python scripts/reference/make_moe_gguf.py
"""
import json
import os

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")

MODELS = [("tiny-qwen3-moe-a", gguf.MODEL_ARCH.QWEN3MOE),
          ("tiny-qwen3-moe-b", gguf.MODEL_ARCH.QWEN3MOE),
          ("tiny-mixtral", gguf.MODEL_ARCH.LLAMA)]


def bf16_bits(t):
    """The bf16 tensor's raw 16-bit patterns (numpy has no bfloat16)."""
    assert t.dtype == torch.bfloat16
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def permute(w, n_head, n_head_kv=None):
    """llama.cpp's LlamaModel.permute: HF rotate-half q/k rows to GGUF's interleaved order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def add_tokenizer(writer, folder):
    tok = json.load(open(os.path.join(folder, "tokenizer.json")))
    vocab = dict(tok["model"]["vocab"])
    special = set()
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id))), "token ids are not dense"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list([t for t, _ in by_id])
    writer.add_token_types([int(gguf.TokenType.CONTROL) if i in special
                            else int(gguf.TokenType.NORMAL) for _, i in by_id])
    writer.add_token_merges(merges)


def write(name, arch):
    folder = os.path.join(DATA, name)
    config = json.load(open(os.path.join(folder, "config.json")))
    weights = load_file(os.path.join(folder, "model.safetensors"))
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    path = os.path.join(DATA, name + ".gguf")
    writer = gguf.GGUFWriter(path, arch_name)
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    mixtral = config["model_type"] == "mixtral"
    experts = config.get("num_experts") or config["num_local_experts"]
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_expert_count(experts)
    writer.add_expert_used_count(config["num_experts_per_tok"])
    if not mixtral:
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
        writer.add_expert_weights_norm(bool(config["norm_topk_prob"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    writer.add_eos_token_id(config["eos_token_id"])
    add_tokenizer(writer, folder)

    tmap = gguf.get_tensor_name_map(arch, n_layers)
    # llama.cpp's qwen3moe has no dense FFN tensors (its released models are sparse in every
    # layer); the dense layers of these test models take the usual blk.N.ffn_{gate,up,down}.
    dense_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)

    def add(hf_name, tensor):
        gguf_name = (tmap.get_name(hf_name, try_suffixes=(".weight", ".bias")) or
                     dense_map.get_name(hf_name, try_suffixes=(".weight", ".bias")))
        assert gguf_name is not None, hf_name
        if tensor.dim() == 1:
            writer.add_tensor(gguf_name, tensor.float().numpy())
        else:
            bits = bf16_bits(tensor)
            writer.add_tensor(gguf_name, bits, raw_shape=bits.shape,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)

    expert_part = ("block_sparse_moe.experts", ("w1", "w3", "w2")) if mixtral else \
        ("mlp.experts", ("gate_proj", "up_proj", "down_proj"))
    done = set()
    for hf_name in sorted(weights):
        if hf_name in done:
            continue
        tensor = weights[hf_name]
        if f".{expert_part[0]}." in hf_name:
            # Stack every expert of this layer and matrix into one [experts, rows, cols] tensor,
            # named as llama.cpp names the stacked tensor (gguf's map knows the merged name).
            prefix, rest = hf_name.split(f".{expert_part[0]}.")
            matrix = rest.split(".")[1]
            parts = [f"{prefix}.{expert_part[0]}.{e}.{matrix}.weight" for e in range(experts)]
            stacked = torch.stack([weights[p] for p in parts])
            done.update(parts)
            merged = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(matrix, matrix)
            add(f"{prefix}.mlp.experts.{merged}.weight", stacked)
            continue
        if mixtral and hf_name.endswith("self_attn.q_proj.weight"):
            tensor = permute(tensor, n_head, n_head)
        elif mixtral and hf_name.endswith("self_attn.k_proj.weight"):
            tensor = permute(tensor, n_head, n_kv)
        add(hf_name, tensor)
        done.add(hf_name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Read back with gguf's reader: every expert slice equals the safetensors matrix.
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    gate = by_name["blk.1.ffn_gate_exps.weight"]
    assert [int(d) for d in gate.shape] == [config["hidden_size"],
                                             config.get("moe_intermediate_size") or
                                             config["intermediate_size"], experts], gate.shape
    down = np.asarray(by_name["blk.1.ffn_down_exps.weight"].data).view(np.uint16)
    want = bf16_bits(weights[f"model.layers.1.{expert_part[0]}.3.{expert_part[1][2]}.weight"])
    assert np.array_equal(down.reshape(experts, *want.shape)[3], want)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(reader.tensors)} tensors)")


def main():
    for name, arch in MODELS:
        write(name, arch)


if __name__ == "__main__":
    main()
