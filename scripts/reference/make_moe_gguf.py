#!/usr/bin/env python3
"""Writes the tiny random mixture-of-experts models as GGUF files, with the PyPI `gguf` package
(llama.cpp's own writer and tensor-name map), from the same bf16 weights as their Hugging Face
folders:

- tests/data/tiny-qwen3-moe-a.gguf  (arch `qwen3moe`)  from tests/data/tiny-qwen3-moe-a
- tests/data/tiny-qwen3-moe-b.gguf  (arch `qwen3moe`)  from tests/data/tiny-qwen3-moe-b
- tests/data/tiny-mixtral.gguf      (arch `llama` with experts, as llama.cpp writes Mixtral)
                                     from tests/data/tiny-mixtral
- tests/data/tiny-dots1-a.gguf      (arch `dots1`: shared experts ffn_*_shexp, the correction
                                     bias exp_probs_b, expert_weights_scale, sigmoid gating,
                                     expert_group_count/expert_group_used_count) from
                                     tests/data/tiny-dots1-a

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

Quantised experts (alem keeps a GGUF's expert blocks as they are): the same three models again
with only the stacked expert tensors quantised by the gguf package (ggml's reference quantisers),
everything else as above:

- tests/data/tiny-qwen3-moe-a-q8_0.gguf, tiny-qwen3-moe-b-q4_0.gguf, tiny-mixtral-q4_0.gguf

and their reference output from transformers in tests/data/golden/<same name>.json (the format of
make_qwen3_moe_reference.py). transformers reads the qwen3moe files itself (from_pretrained with
gguf_file=, which dequantises); it cannot load llama-with-experts GGUFs, so for Mixtral the
experts are dequantised with the gguf package into a copy of the Hugging Face folder (f32
tensors) that transformers loads. The qwen3moe path checks that both routes give the same
weights.

Usage: .venv-reference/bin/python scripts/reference/make_moe_gguf.py
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

import gguf
import numpy as np
import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from safetensors.torch import load_file, save_file

from gguf_tokenizer import add_tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")

MODELS = [("tiny-qwen3-moe-a", gguf.MODEL_ARCH.QWEN3MOE),
          ("tiny-qwen3-moe-b", gguf.MODEL_ARCH.QWEN3MOE),
          ("tiny-mixtral", gguf.MODEL_ARCH.LLAMA),
          ("tiny-dots1-a", gguf.MODEL_ARCH.DOTS1)]


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


def write(name, arch, expert_type=None):
    """Writes tests/data/<name>.gguf, or with `expert_type` (a GGMLQuantizationType)
    tests/data/<name>-<type>.gguf with the expert tensors quantised. Returns the path."""
    folder = os.path.join(DATA, name)
    config = json.load(open(os.path.join(folder, "config.json")))
    weights = load_file(os.path.join(folder, "model.safetensors"))
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    suffix = "" if expert_type is None else "-" + expert_type.name.lower()
    path = os.path.join(DATA, name + suffix + ".gguf")
    writer = gguf.GGUFWriter(path, arch_name)
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    mixtral = config["model_type"] == "mixtral"
    dots1 = config["model_type"] == "dots1"
    experts = (config.get("num_experts") or config.get("num_local_experts") or
               config["n_routed_experts"])
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
    if dots1:  # as llama.cpp's Dots1Model writes it, plus the groups (DeepSeek-V3's keys)
        writer.add_leading_dense_block_count(config["first_k_dense_replace"])
        writer.add_expert_shared_count(config["n_shared_experts"])
        writer.add_expert_weights_scale(config["routed_scaling_factor"])
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        writer.add_expert_group_count(config["n_group"])
        writer.add_expert_group_used_count(config["topk_group"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if expert_type is None else
                         {gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                          gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}[expert_type])
    writer.add_eos_token_id(config["eos_token_id"])
    add_tokenizer(writer, folder)

    tmap = gguf.get_tensor_name_map(arch, n_layers)
    # llama.cpp's qwen3moe has no dense FFN tensors (its released models are sparse in every
    # layer); the dense layers of these test models take the usual blk.N.ffn_{gate,up,down}.
    dense_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)

    def add(hf_name, tensor, quantise=False):
        # llama.cpp maps the router's correction bias as "e_score_correction.bias".
        lookup = hf_name.replace("e_score_correction_bias", "e_score_correction.bias")
        gguf_name = (tmap.get_name(lookup, try_suffixes=(".weight", ".bias")) or
                     dense_map.get_name(lookup, try_suffixes=(".weight", ".bias")))
        assert gguf_name is not None, hf_name
        if quantise and expert_type is not None:
            blocks = gguf.quants.quantize(tensor.float().numpy(), expert_type)
            writer.add_tensor(gguf_name, blocks, raw_shape=blocks.shape, raw_dtype=expert_type)
        elif tensor.dim() == 1:
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
            add(f"{prefix}.mlp.experts.{merged}.weight", stacked, quantise=True)
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
    down_tensor = by_name["blk.1.ffn_down_exps.weight"]
    source = weights[f"model.layers.1.{expert_part[0]}.3.{expert_part[1][2]}.weight"]
    if expert_type is None:
        down = np.asarray(down_tensor.data).view(np.uint16)
        want = bf16_bits(source)
        assert np.array_equal(down.reshape(experts, *want.shape)[3], want)
    else:
        assert down_tensor.tensor_type == expert_type, down_tensor.tensor_type
        down = gguf.quants.dequantize(down_tensor.data, expert_type)
        got = down.reshape(experts, *source.shape)[3]
        assert np.abs(got - source.float().numpy()).max() < 0.05  # quantisation error only
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(reader.tensors)} tensors)")
    return path


def dequantised_folder(name, path, out_dir):
    """A copy of the model's Hugging Face folder whose expert matrices are the GGUF's experts as
    the gguf package dequantises them (f32), everything else unchanged."""
    folder = os.path.join(DATA, name)
    config = json.load(open(os.path.join(folder, "config.json")))
    weights = load_file(os.path.join(folder, "model.safetensors"))
    mixtral = config["model_type"] == "mixtral"
    dots1 = config["model_type"] == "dots1"
    experts = (config.get("num_experts") or config.get("num_local_experts") or
               config["n_routed_experts"])
    part, names = (("block_sparse_moe.experts", {"gate": "w1", "up": "w3", "down": "w2"})
                   if mixtral else
                   ("mlp.experts", {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}))
    reader = gguf.GGUFReader(path)
    out = {k: v.float() for k, v in weights.items()}
    replaced = 0
    for t in reader.tensors:
        fields = t.name.split(".")
        if len(fields) != 4 or not fields[2].endswith("_exps"):
            continue
        layer, matrix = int(fields[1]), fields[2][len("ffn_"):-len("_exps")]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        for e in range(experts):
            key = f"model.layers.{layer}.{part}.{e}.{names[matrix]}.weight"
            assert key in out, key
            out[key] = torch.from_numpy(values.reshape(experts, *out[key].shape)[e].copy())
            replaced += 1
    assert replaced == experts * 3 * sum(1 for k in weights if k.endswith(f"{part}.0.{names['down']}.weight"))
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    shutil.copytree(folder, out_dir)
    save_file(out, os.path.join(out_dir, "model.safetensors"))
    return out_dir


def make_golden(name, path):
    """transformers' greedy tokens and logits for the quantised GGUF at `path`."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from golden_moe import RouterGaps, environment, run_prompts, settings, write_golden
    config = json.load(open(os.path.join(DATA, name, "config.json")))
    mixtral = config["model_type"] == "mixtral"
    with tempfile.TemporaryDirectory() as tmp:
        folder = dequantised_folder(name, path, os.path.join(tmp, name))
        via_folder = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager").eval()
        if mixtral:
            model, how = via_folder, ("experts dequantised by the gguf package into the Hugging "
                                      "Face folder (transformers cannot load llama-with-experts "
                                      "GGUFs)")
        else:
            # transformers' own GGUF reader dequantises every tensor it maps; its qwen3moe map
            # has no dense-layer FFN (llama.cpp's qwen3moe has none), so those and the tied LM
            # head stay as the folder has them (the same bf16 values the GGUF holds).
            model = transformers.AutoModelForCausalLM.from_pretrained(
                os.path.join(DATA, name), dtype=torch.float32,
                attn_implementation="eager").eval()
            loaded = load_gguf_checkpoint(path, return_tensors=True,
                                          model_to_load=model)["tensors"]
            missing = set(model.state_dict()) - set(loaded)
            assert all(k == "lm_head.weight" or ".mlp.gate_proj." in k or ".mlp.up_proj." in k or
                       ".mlp.down_proj." in k for k in missing), sorted(missing)
            model.load_state_dict(loaded, strict=False)
            how = ("transformers' GGUF reader (load_gguf_checkpoint), which dequantises with the "
                   "gguf package")
            mine = via_folder.state_dict()
            for k, v in model.state_dict().items():
                assert torch.equal(v, mine[k]), k
    gaps = RouterGaps(model, config["num_experts_per_tok"])
    prompts = [{"name": p["name"], "prompt_ids": p["ids"], "generated_ids": gen,
                "step_margin": margins, "steps": steps}
               for p, gen, margins, steps in run_prompts(model, gaps)]
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    golden = {
        "schema_version": 1,
        "generator": "scripts/reference/make_moe_gguf.py",
        "model": {"name": os.path.basename(path)[:-5], "file": "tests/data/" +
                  os.path.basename(path), "file_sha256": digest,
                  "stored_dtypes": "experts " + path.rsplit("-", 1)[1][:-5] + ", the rest bf16"},
        "environment": environment(gguf=getattr(gguf, "__version__", "?")),
        "settings": settings(prompts, gaps.min_gap,
                             how + "; computed in float32 (eager attention)"),
        "prompts": prompts,
    }
    out = write_golden(os.path.basename(path)[:-5], golden)
    print(f"wrote {out}: min margin {golden['settings']['min_step_margin']}, "
          f"min router gap {gaps.min_gap:.4g}")


QUANTISED = [("tiny-qwen3-moe-a", gguf.GGMLQuantizationType.Q8_0),
             ("tiny-qwen3-moe-b", gguf.GGMLQuantizationType.Q4_0),
             ("tiny-mixtral", gguf.GGMLQuantizationType.Q4_0)]


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    archs = dict(MODELS)
    for name, arch in MODELS:
        write(name, arch)
    for name, expert_type in QUANTISED:
        make_golden(name, write(name, archs[name], expert_type))


if __name__ == "__main__":
    main()
