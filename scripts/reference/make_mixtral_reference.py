#!/usr/bin/env python3
"""Builds a small random Mixtral (MixtralForCausalLM, Hugging Face format) under
tests/data/tiny-mixtral/ and its reference output from Hugging Face transformers in
tests/data/golden/tiny-mixtral.json.

Why: Mixtral is alem's second mixture-of-experts family (model/architecture.cc). It differs from
Qwen3-MoE in its tensor names (block_sparse_moe.gate, block_sparse_moe.experts.E.w1/w2/w3), its
routing (softmax over the router logits, top-k, always renormalised: a softmax over the selected
logits), every layer sparse, the expert size in `intermediate_size`, no QK-norm, and an optional
sliding window. The test (tests/unit/test_engine_mixtral.cc) checks alem against transformers'
own Mixtral code on this model, on one rank and sharded.

tiny-mixtral: hidden 64, 3 layers, 4 query heads, 2 kv heads (head_dim 16 = hidden / heads,
taken from the shape), 8 experts of 32, top-2, untied LM head, rope_theta 1e6, sliding_window
1024 (the model's whole context: configured, as Mistral checkpoints are, but never reached, so
transformers' sliding-window mask and alem's causal one agree), bf16 weights, the tokenizer of
tests/data/tiny-qwen3 (copied). Matrices std 0.1, router std 0.5, norm weights around 1. For
each prompt, 32 greedy tokens from transformers in float32 on the bf16 weights (full recompute
each step; checked against generate()), every step's top-20 logits and logsumexp, the top-2
margin, and the smallest router k-th to (k+1)-th logit gap; the first seed from 1 whose margins
are at least 2e-3 is kept. The run, the seed search and the golden
layout are golden_moe.py's, shared by every family.

Usage: .venv-reference/bin/python scripts/reference/make_mixtral_reference.py
"""
import os
import sys

import torch
from transformers import MixtralConfig, MixtralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_moe import Family, make_golden, randomise  # noqa: E402

NAME = "tiny-mixtral"
NUM_EXPERTS = 8
EXPERTS_PER_TOKEN = 2


def build_model(vocab, seed):
    config = MixtralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=NUM_EXPERTS,
        num_experts_per_tok=EXPERTS_PER_TOKEN, rms_norm_eps=1e-5, rope_theta=1000000.0,
        max_position_embeddings=1024, sliding_window=1024, tie_word_embeddings=False,
        hidden_act="silu", bos_token_id=None, eos_token_id=2, pad_token_id=0,
        router_jitter_noise=0.0, torch_dtype="bfloat16",
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config)
    randomise(model)
    return model.to(torch.bfloat16).eval()


def main():
    # The file names the family's own tensors (transformers renames them on load).
    make_golden(Family(NAME, "scripts/reference/make_mixtral_reference.py", build_model,
                       MixtralForCausalLM, EXPERTS_PER_TOKEN,
                       expect_tensors=["model.layers.0.block_sparse_moe.gate.weight",
                                       "model.layers.0.block_sparse_moe.experts.0.w1.weight"]))


if __name__ == "__main__":
    main()
