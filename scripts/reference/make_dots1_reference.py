#!/usr/bin/env python3
"""Builds small random dots.llm1 models (Dots1ForCausalLM, Hugging Face format) under
tests/data/tiny-dots1-*/ with their reference output from Hugging Face transformers in
tests/data/golden/tiny-dots1-*.json, and tests/data/moe_routing_reference.json: transformers'
own DeepSeek-V3 router (Dots1TopkRouter) on random logits.

Why: dots.llm1 is alem's family with DeepSeek-V3 routing and ordinary attention (Qwen3's, with
q/k norm), so the routing of DeepSeek-V3 / GLM-4.5 is tested without their MLA attention:
sigmoid scores, e_score_correction_bias used to choose the experts but not to weight them,
grouped top-k (n_group groups ranked by the sum of their two best scores, topk_group kept, the
top-k experts inside them), norm_topk_prob, routed_scaling_factor, shared experts without a gate
(n_shared_experts x moe_intermediate_size) and dense first layers (first_k_dense_replace).
tests/unit/test_engine_dots1.cc checks alem against these on one rank and sharded;
tests/unit/test_moe_routing.cc checks alem's router against the routing cases.

- tiny-dots1-a: 8 experts in 4 groups, 2 groups kept, top-2, norm_topk_prob true,
  routed_scaling_factor 2.5, 1 shared expert, 3 layers with a dense first one, tied embeddings.
- tiny-dots1-b: 12 experts ungrouped (n_group 1), top-3, norm_topk_prob false,
  routed_scaling_factor 1, 2 shared experts, 3 layers all sparse, untied LM head.

Both: hidden 64, 4 query heads, 2 kv heads (head_dim 16), dense intermediate 128, expert
intermediate 32, full attention in every layer, bf16 weights, the tokenizer of tests/data/tiny-qwen3.
Matrices std 0.1, routers std 0.15 (sigmoid scores away from saturation), correction biases std
0.1 (large enough to change choices), norm weights around 1. The router margin of a token is the
smaller of the gap between the last kept and the first dropped group and the gap between the k-th
and (k+1)-th choice score inside the kept groups; seeds need 2.5e-4 (MIN_SCORE_GAP). The run, the seed search and the golden layout
are golden_moe.py's, shared by every family.

Usage: .venv-reference/bin/python scripts/reference/make_dots1_reference.py
"""
import json
import os
import sys

import torch
from transformers import Dots1Config, Dots1ForCausalLM
from transformers.models.dots1.modeling_dots1 import Dots1TopkRouter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_moe import DATA, Family, f32, make_golden, randomise  # noqa: E402

MODELS = [
    {"name": "tiny-dots1-a", "experts": 8, "top_k": 2, "n_group": 4, "topk_group": 2,
     "norm": True, "scale": 2.5, "shared": 1, "first_dense": 1, "tied": True},
    {"name": "tiny-dots1-b", "experts": 12, "top_k": 3, "n_group": 1, "topk_group": 1,
     "norm": False, "scale": 1.0, "shared": 2, "first_dense": 0, "tied": False},
]


def config_of(spec, vocab):
    return Dots1Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        n_routed_experts=spec["experts"], num_experts_per_tok=spec["top_k"],
        n_group=spec["n_group"], topk_group=spec["topk_group"], norm_topk_prob=spec["norm"],
        routed_scaling_factor=spec["scale"], n_shared_experts=spec["shared"],
        first_k_dense_replace=spec["first_dense"], rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        max_position_embeddings=1024, sliding_window=None, tie_word_embeddings=spec["tied"],
        attention_bias=False, hidden_act="silu", bos_token_id=None, eos_token_id=2,
        pad_token_id=0, dtype="bfloat16")


def init(name, p):
    if p.dim() == 1:
        return 1.0, 0.1
    if name.endswith("mlp.gate.weight"):
        return 0.0, 0.15
    return 0.0, 0.1


def builder(spec):
    def build(vocab, seed):
        config = config_of(spec, vocab)
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = Dots1ForCausalLM(config)
        randomise(model, init)
        with torch.no_grad():  # a buffer, not a parameter: randomise() leaves it at zero
            for layer in model.model.layers:
                if hasattr(layer.mlp, "gate"):
                    bias = layer.mlp.gate.e_score_correction_bias
                    bias.copy_(0.1 * torch.randn_like(bias))
        return model.to(torch.bfloat16).eval()
    return build


def grouped_gap(spec):
    """The router margin of DeepSeek-V3 routing (see the module comment)."""
    def gap(module, output):
        scores = output[0].float().sigmoid()
        choice = scores + module.e_score_correction_bias.float()
        tokens, experts = choice.shape
        groups = choice.view(tokens, spec["n_group"], -1).topk(2, dim=-1)[0].sum(-1)
        margin = float("inf")
        if spec["topk_group"] < spec["n_group"]:
            top = groups.topk(spec["topk_group"] + 1, dim=-1).values
            margin = float((top[:, -2] - top[:, -1]).min())
        keep = torch.zeros_like(groups).scatter_(1, groups.topk(spec["topk_group"])[1], 1)
        mask = keep.unsqueeze(-1).expand(-1, -1, experts // spec["n_group"]).reshape(tokens, -1)
        kept = choice.masked_fill(~mask.bool(), float("-inf"))
        if spec["topk_group"] * experts // spec["n_group"] > spec["top_k"]:
            top = kept.topk(spec["top_k"] + 1, dim=-1).values
            margin = min(margin, float((top[:, -2] - top[:, -1]).min()))
        return margin
    return gap


# The router margin in sigmoid-score units. A score moves by at most 1/4 of its logit's change,
# so a choice gap of 2.5e-4 between two experts needs their logits to move by 5e-4 to flip, and a
# gap of 2.5e-4 between two groups (sums of two scores each) needs 2.5e-4: 70 times the largest
# logit difference seen between alem and transformers (3.5e-6). (The softmax families' 2e-3 in
# logits, carried over as 1e-3 in scores, rejected about 98% of seeds: every one of ~100 distinct
# tokens in 2 layers must clear it twice.)
MIN_SCORE_GAP = 2.5e-4

ROUTING_CASES = [  # transformers' router on random logits; the engine's must agree
    {"experts": 8, "top_k": 2, "n_group": 4, "topk_group": 2, "norm": True, "scale": 2.5},
    {"experts": 12, "top_k": 3, "n_group": 1, "topk_group": 1, "norm": False, "scale": 1.0},
    {"experts": 16, "top_k": 4, "n_group": 4, "topk_group": 1, "norm": True, "scale": 1.0},
    {"experts": 16, "top_k": 6, "n_group": 8, "topk_group": 3, "norm": False, "scale": 2.0},
]


def routing_reference():
    """Router cases: logits, bias, and transformers' chosen experts (ascending) and weights.
    The bias is large enough that the scores alone would choose differently for some tokens
    (counted in `bias_changes_choice`)."""
    torch.manual_seed(7)
    cases = []
    for c in ROUTING_CASES:
        config = Dots1Config(hidden_size=8, n_routed_experts=c["experts"],
                             num_experts_per_tok=c["top_k"], n_group=c["n_group"],
                             topk_group=c["topk_group"], norm_topk_prob=c["norm"],
                             routed_scaling_factor=c["scale"], n_shared_experts=1)
        router = Dots1TopkRouter(config)
        with torch.no_grad():
            router.weight.copy_(0.5 * torch.randn(c["experts"], 8))
            router.e_score_correction_bias.copy_(0.3 * torch.randn(c["experts"]))
        tokens = 32
        x = torch.randn(tokens, 8) * 1.5
        with torch.no_grad():
            logits, weights, indices = router(x)
            plain = torch.topk(logits.sigmoid(), c["top_k"], dim=-1)[1]
        chosen, chosen_weights, changed = [], [], 0
        for t in range(tokens):
            order = sorted(range(c["top_k"]), key=lambda i: int(indices[t, i]))
            chosen.append([int(indices[t, i]) for i in order])
            chosen_weights.append([f32(weights[t, i]) for i in order])
            changed += sorted(plain[t].tolist()) != chosen[-1]
        cases.append({**c, "bias": [f32(b) for b in router.e_score_correction_bias],
                      "logits": [[f32(v) for v in row] for row in logits],
                      "chosen": chosen, "weights": chosen_weights,
                      "bias_changes_choice": changed})
        assert changed > 0, ("the bias never changes a choice", c)
    path = os.path.join(DATA, "moe_routing_reference.json")
    with open(path, "w") as f:
        json.dump({"generator": "scripts/reference/make_dots1_reference.py",
                   "router": "transformers Dots1TopkRouter (DeepSeek-V3 routing)",
                   "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", path)


def main():
    routing_reference()
    for spec in MODELS:
        names = ["model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
                 "model.layers.1.mlp.experts.0.gate_proj.weight",
                 "model.layers.1.mlp.shared_experts.down_proj.weight"]
        if spec["first_dense"]:
            names.append("model.layers.0.mlp.gate_proj.weight")
        make_golden(Family(spec["name"], "scripts/reference/make_dots1_reference.py",
                           builder(spec), Dots1ForCausalLM, spec["top_k"], grouped_gap(spec),
                           names, MIN_SCORE_GAP))


if __name__ == "__main__":
    main()
