#!/usr/bin/env python3
"""Builds small random Qwen3-MoE models (Qwen3MoeForCausalLM, Hugging Face format) under
tests/data/tiny-qwen3-moe-*/ and their reference output from Hugging Face transformers in
tests/data/golden/tiny-qwen3-moe-*.json.

Why: alem's mixture-of-experts path (router softmax, top-k, norm_topk_prob, dense and sparse
layers mixed, expert parallelism) is tested against transformers' own Qwen3-MoE code on these
models, on one rank and sharded. Two shapes cover the switches:

- tiny-qwen3-moe-a: 8 experts, top-2, norm_topk_prob=True, 3 layers with a dense first layer
  (mlp_only_layers=[0]).
- tiny-qwen3-moe-b: 12 experts, top-3, norm_topk_prob=False, 4 layers with decoder_sparse_step=2
  (layers 1 and 3 sparse, 0 and 2 dense), untied LM head.

Both: hidden 64, 4 query heads, 2 kv heads, head_dim 32, dense intermediate 128, expert
intermediate 32, bf16 weights, the tokenizer of tests/data/tiny-qwen3 (copied). Matrices std 0.1,
router std 0.5 (decisive routing), norm weights around 1. For each prompt (token ids), 32 greedy
tokens from transformers in float32 on the bf16 weights (full recompute each step; checked
against generate()), every step's top-20 logits and logsumexp, the top-2 margin, and the
smallest gap between the k-th and (k+1)-th router logit of any routed token (so a test knows the
routing is not decided by rounding). The seed is the first from 1 whose margins are clear.

Usage: .venv-reference/bin/python scripts/reference/make_qwen3_moe_reference.py
"""
import hashlib
import json
import os
import platform
import shutil

import numpy as np
import torch
import transformers
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
TOKENIZER_FROM = os.path.join(DATA, "tiny-qwen3")
NEW_TOKENS = 32
TOP_K = 20
MIN_STEP_MARGIN = 2e-3   # top-2 logit gap of every greedy step
MIN_ROUTER_GAP = 2e-3    # gap between the k-th and (k+1)-th router logit of every token

MODELS = [
    {"name": "tiny-qwen3-moe-a", "num_layers": 3, "num_experts": 8, "top_k": 2,
     "norm_topk_prob": True, "mlp_only_layers": [0], "decoder_sparse_step": 1, "tied": True},
    {"name": "tiny-qwen3-moe-b", "num_layers": 4, "num_experts": 12, "top_k": 3,
     "norm_topk_prob": False, "mlp_only_layers": [], "decoder_sparse_step": 2, "tied": False},
]

PROMPTS = [
    {"name": "short", "ids": [1, 87, 198, 383, 374, 279, 62, 315, 96, 30, 2, 198, 1, 77, 198]},
    {"name": "long", "ids": [5, 17, 42, 99, 3, 250, 77, 301, 12, 8, 600, 455, 123, 88, 14, 9, 620,
                             33, 410, 275, 190, 61, 7, 502]},
]


def f32(x):
    """Shortest decimal that reads back as the same float32."""
    v = float(np.float32(x))
    for digits in range(6, 18):
        s = f"{v:.{digits}g}"
        if np.float32(float(s)) == np.float32(v):
            return float(s)
    return v


def build_model(spec, vocab, seed):
    config = Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=spec["num_layers"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, num_experts=spec["num_experts"], num_experts_per_tok=spec["top_k"],
        norm_topk_prob=spec["norm_topk_prob"], mlp_only_layers=spec["mlp_only_layers"],
        decoder_sparse_step=spec["decoder_sparse_step"], rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=1024, tie_word_embeddings=spec["tied"],
        attention_bias=False, hidden_act="silu", bos_token_id=None, eos_token_id=2,
        pad_token_id=0, torch_dtype="bfloat16",
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return config, model.to(torch.bfloat16).eval()


class RouterGaps:
    """Records the smallest k-th to (k+1)-th router logit gap of the tokens of the last call."""

    def __init__(self, model, top_k):
        self.top_k = top_k
        self.min_gap = float("inf")
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        logits = output[0].float()
        top = torch.topk(logits, self.top_k + 1, dim=-1).values
        self.last = float((top[:, self.top_k - 1] - top[:, self.top_k]).min())
        self.min_gap = min(self.min_gap, self.last)


def greedy(model, ids, gaps):
    seq = list(ids)
    out, margins, steps = [], [], []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            order = sorted(range(logits.numel()), key=lambda i: (-float(logits[i]), i))
            margins.append(f32(logits[order[0]] - logits[order[1]]))
            top = order[:TOP_K]
            steps.append({"logsumexp": f32(torch.logsumexp(logits.double(), 0)), "top_ids": top,
                          "top_logits": [f32(logits[i]) for i in top]})
            out.append(order[0])
            seq.append(order[0])
    return out, margins, steps


def save_and_reload(spec, vocab, seed, out_dir):
    """Writes the model of `seed` to out_dir and reads it back, so the reference is computed
    from exactly the files the tests convert."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    _, model = build_model(spec, vocab, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(TOKENIZER_FROM, name), os.path.join(out_dir, name))
    return Qwen3MoeForCausalLM.from_pretrained(out_dir, torch_dtype=torch.bfloat16,
                                               attn_implementation="eager").float().eval()


def make(spec, vocab):
    out_dir = os.path.join(DATA, spec["name"])
    for seed in range(1, 200):
        model = save_and_reload(spec, vocab, seed, out_dir)
        gaps = RouterGaps(model, spec["top_k"])
        results = []
        for p in PROMPTS:
            gen, margins, steps = greedy(model, p["ids"], gaps)
            results.append((p, gen, margins, steps))
        min_margin = min(min(r[2]) for r in results)
        router_gap = gaps.min_gap
        if min_margin >= MIN_STEP_MARGIN and router_gap >= MIN_ROUTER_GAP:
            break
        print(spec["name"], "seed", seed, "rejected: margin", min_margin, "router gap", router_gap)
    else:
        raise SystemExit("no seed with clear margins")

    prompts = []
    for p, gen, margins, steps in results:
        # transformers' own generate() (KV cache) must agree with the full recompute.
        with torch.no_grad():
            ref = model.generate(torch.tensor([p["ids"]]), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                                 pad_token_id=0)
        assert ref[0, len(p["ids"]):].tolist() == gen, (spec["name"], p["name"], "generate")
        prompts.append({"name": p["name"], "prompt_ids": p["ids"], "generated_ids": gen,
                        "step_margin": margins, "steps": steps})
    files = {}
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name), "rb") as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    golden = {
        "schema_version": 1,
        "generator": "scripts/reference/make_qwen3_moe_reference.py",
        "model": {"name": spec["name"], "dir": "tests/data/" + spec["name"], "seed": seed,
                  "file_sha256": files, "stored_dtypes": "bf16",
                  "config": json.load(open(os.path.join(out_dir, "config.json")))},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "numpy": np.__version__},
        "settings": {"max_new_tokens": NEW_TOKENS, "top_k_recorded": TOP_K,
                     "decoding": "greedy (argmax of f32 logits, lowest id on ties)",
                     "weights": "bf16 in the file, computed in float32 (eager attention)",
                     "min_step_margin": f32(min(min(p["step_margin"]) for p in prompts)),
                     "min_router_gap": f32(router_gap)},
        "prompts": prompts,
    }
    path = os.path.join(DATA, "golden", spec["name"] + ".json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=None, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {out_dir} ({total} bytes, seed {seed}) and {path}; min margin "
          f"{golden['settings']['min_step_margin']}, min router gap {router_gap:.4g}")


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    vocab = json.load(open(os.path.join(TOKENIZER_FROM, "config.json")))["vocab_size"]
    for spec in MODELS:
        make(spec, vocab)


if __name__ == "__main__":
    main()
