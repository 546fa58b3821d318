#!/usr/bin/env python3
"""Builds a small random Qwen2-MoE (Qwen2MoeForCausalLM, Hugging Face format) under
tests/data/tiny-qwen2-moe/ and its reference output from Hugging Face transformers in
tests/data/golden/tiny-qwen2-moe.json.

Why: Qwen2-MoE is alem's third mixture-of-experts family (model/architecture.cc), the one with a
shared expert: every token of a sparse layer also goes through mlp.shared_expert (a SiLU FFN of
shared_expert_intermediate_size) scaled by sigmoid(mlp.shared_expert_gate . x), added to the
routed experts' sum. Routing as Qwen3-MoE (softmax, top-k, norm_topk_prob), q/k/v biases as
Qwen2, no QK-norm. tests/unit/test_engine_qwen2_moe.cc checks alem against transformers' own
Qwen2-MoE code on this model, on one rank and sharded.

tiny-qwen2-moe: hidden 64, 3 layers with a dense first one (mlp_only_layers=[0]), 4 query heads,
2 kv heads (head_dim 16), dense intermediate 128, 8 experts of 32, top-2, norm_topk_prob false,
shared expert of 64, untied LM head, rope_theta 1e6, bf16 weights, the tokenizer of
tests/data/tiny-qwen3 (copied). Matrices std 0.1, router std 0.5, shared-expert gate std 0.3,
biases std 0.1, norm weights around 1. For each prompt, 32 greedy tokens from transformers in
float32 on the bf16 weights (full recompute each step; checked against generate()), every step's
top-20 logits and logsumexp, the top-2 margin, and the smallest router k-th to (k+1)-th logit
gap; the first seed from 1 whose margins are at least 2e-3 is kept. The golden file has the same
layout as the Qwen3-MoE ones.

Usage: .venv-reference/bin/python scripts/reference/make_qwen2_moe_reference.py
"""
import hashlib
import json
import os
import platform
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_qwen3_moe_reference import (DATA, MIN_ROUTER_GAP, MIN_STEP_MARGIN, NEW_TOKENS,  # noqa
                                      PROMPTS, TOKENIZER_FROM, TOP_K, RouterGaps, f32, greedy)

NAME = "tiny-qwen2-moe"
NUM_EXPERTS = 8
EXPERTS_PER_TOKEN = 2


def build_model(vocab, seed):
    config = Qwen2MoeConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        shared_expert_intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_experts=NUM_EXPERTS, num_experts_per_tok=EXPERTS_PER_TOKEN,
        norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[0], qkv_bias=True,
        use_sliding_window=False, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=1024, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=None, eos_token_id=2, pad_token_id=0, torch_dtype="bfloat16",
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2MoeForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:  # q/k/v biases
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("shared_expert_gate.weight"):
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.to(torch.bfloat16).eval()


def save_and_reload(vocab, seed, out_dir):
    """Writes the model of `seed` and reads it back, so the reference comes from the files."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    build_model(vocab, seed).save_pretrained(out_dir, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(TOKENIZER_FROM, name), os.path.join(out_dir, name))
    return Qwen2MoeForCausalLM.from_pretrained(out_dir, torch_dtype=torch.bfloat16,
                                              attn_implementation="eager").float().eval()


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    vocab = json.load(open(os.path.join(TOKENIZER_FROM, "config.json")))["vocab_size"]
    out_dir = os.path.join(DATA, NAME)
    for seed in range(1, 200):
        model = save_and_reload(vocab, seed, out_dir)
        gaps = RouterGaps(model, EXPERTS_PER_TOKEN)
        results = []
        for p in PROMPTS:
            gen, margins, steps = greedy(model, p["ids"], gaps)
            results.append((p, gen, margins, steps))
        min_margin = min(min(r[2]) for r in results)
        if min_margin >= MIN_STEP_MARGIN and gaps.min_gap >= MIN_ROUTER_GAP:
            break
        print(NAME, "seed", seed, "rejected: margin", min_margin, "router gap", gaps.min_gap)
    else:
        raise SystemExit("no seed with clear margins")
    # The file holds one tensor per expert and the shared expert's own names.
    from safetensors import safe_open
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        names = list(f.keys())
    for want in ["model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.0.gate_proj.weight",
                 "model.layers.1.mlp.shared_expert.down_proj.weight",
                 "model.layers.1.mlp.shared_expert_gate.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.q_proj.bias"]:
        assert want in names, (want, sorted(names)[:12])

    prompts = []
    for p, gen, margins, steps in results:
        with torch.no_grad():
            ref = model.generate(torch.tensor([p["ids"]]), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                                 pad_token_id=0)
        assert ref[0, len(p["ids"]):].tolist() == gen, (NAME, p["name"], "generate")
        prompts.append({"name": p["name"], "prompt_ids": p["ids"], "generated_ids": gen,
                        "step_margin": margins, "steps": steps})
    files = {}
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name), "rb") as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    golden = {
        "schema_version": 1,
        "generator": "scripts/reference/make_qwen2_moe_reference.py",
        "model": {"name": NAME, "dir": "tests/data/" + NAME, "seed": seed, "file_sha256": files,
                  "stored_dtypes": "bf16",
                  "config": json.load(open(os.path.join(out_dir, "config.json")))},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "numpy": np.__version__},
        "settings": {"max_new_tokens": NEW_TOKENS, "top_k_recorded": TOP_K,
                     "decoding": "greedy (argmax of f32 logits, lowest id on ties)",
                     "weights": "bf16 in the file, computed in float32 (eager attention)",
                     "min_step_margin": f32(min(min(p["step_margin"]) for p in prompts)),
                     "min_router_gap": f32(gaps.min_gap)},
        "prompts": prompts,
    }
    path = os.path.join(DATA, "golden", NAME + ".json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=None, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {out_dir} ({total} bytes, seed {seed}) and {path}; min margin "
          f"{golden['settings']['min_step_margin']}, min router gap {gaps.min_gap:.4g}")


if __name__ == "__main__":
    main()
