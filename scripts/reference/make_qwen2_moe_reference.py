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
gap; the first seed from 1 whose margins are at least 2e-3 is kept. The run, the seed search and the
golden layout are golden_moe.py's, shared by every family.

Usage: .venv-reference/bin/python scripts/reference/make_qwen2_moe_reference.py
"""
import os
import sys

import torch
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_moe import Family, make_golden, randomise  # noqa: E402

NAME = "tiny-qwen2-moe"
NUM_EXPERTS = 8
EXPERTS_PER_TOKEN = 2


def init(name, p):
    """(mean, std): norm weights around 1, q/k/v biases std 0.1, router 0.5, shared-expert gate
    0.3, other matrices 0.1."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if p.dim() == 1:
        return 0.0, 0.1
    if name.endswith("mlp.gate.weight"):
        return 0.0, 0.5
    if name.endswith("shared_expert_gate.weight"):
        return 0.0, 0.3
    return 0.0, 0.1


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
    randomise(model, init)
    return model.to(torch.bfloat16).eval()


def main():
    # The file holds one tensor per expert and the shared expert's own names.
    make_golden(Family(NAME, "scripts/reference/make_qwen2_moe_reference.py", build_model,
                       Qwen2MoeForCausalLM, EXPERTS_PER_TOKEN,
                       expect_tensors=["model.layers.1.mlp.gate.weight",
                                       "model.layers.1.mlp.experts.0.gate_proj.weight",
                                       "model.layers.1.mlp.shared_expert.down_proj.weight",
                                       "model.layers.1.mlp.shared_expert_gate.weight",
                                       "model.layers.0.mlp.gate_proj.weight",
                                       "model.layers.0.self_attn.q_proj.bias"]))


if __name__ == "__main__":
    main()
