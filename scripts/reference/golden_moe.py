"""Shared by every mixture-of-experts reference script (make_qwen3_moe_reference.py,
make_mixtral_reference.py, make_qwen2_moe_reference.py, make_dots1_reference.py,
make_moe_gguf.py): the prompts, the random initialisation rule, transformers' greedy run with
every step's logits, the search for a seed whose margins are clear, and the golden file's layout.

Why: the families differ only in their config, their tensor names and how a router picks its
experts; everything that turns a tiny random model into tests/data/golden/<name>.json is one piece
of code here, so the golden files of all families have one layout and one set of checks.

A family script calls `make_golden(Family(...))`. For each seed from 1 it writes the model with
save_pretrained, reads it back from the files (so the reference comes from exactly the files the
tests convert), runs 32 greedy tokens per prompt in float32 on the bf16 weights (full recompute
each step), and keeps the first seed whose top-2 logit margin of every step and whose router
margin (the smallest gap between the last chosen and the first unchosen expert score of any
routed token, as the family measures it) are at least 2e-3, so a test knows neither the tokens
nor the routing are decided by rounding. transformers' own generate() (KV cache) must agree with
the full recompute.
"""
import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import transformers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
TOKENIZER_FROM = os.path.join(DATA, "tiny-qwen3")
NEW_TOKENS = 32
TOP_K = 20
MIN_STEP_MARGIN = 2e-3   # top-2 logit gap of every greedy step
MIN_ROUTER_GAP = 2e-3    # gap between the k-th and (k+1)-th router score of every token

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


def vocab_size():
    return json.load(open(os.path.join(TOKENIZER_FROM, "config.json")))["vocab_size"]


def default_init(name, p):
    """(mean, std) of a parameter: norm weights around 1, routers std 0.5 (decisive routing),
    every other matrix std 0.1."""
    if p.dim() == 1:
        return 1.0, 0.1
    if name.endswith("mlp.gate.weight"):
        return 0.0, 0.5
    return 0.0, 0.1


def randomise(model, init=default_init):
    """Overwrites every parameter with mean + std * N(0, 1), in named_parameters() order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean, std = init(name, p)
            p.copy_(mean + std * torch.randn_like(p))


def topk_gap(scores, k):
    """Smallest gap between the k-th and (k+1)-th score of any row of [tokens][experts]."""
    top = torch.topk(scores.float(), k + 1, dim=-1).values
    return float((top[:, k - 1] - top[:, k]).min())


class RouterGaps:
    """Records the smallest router margin of any routed token: by default the k-th to (k+1)-th
    gap of the router output's first element (the logits); `gap(module, output)` overrides."""

    def __init__(self, model, top_k, gap=None):
        self.top_k = top_k
        self.gap = gap or (lambda module, output: topk_gap(output[0], self.top_k))
        self.min_gap = float("inf")
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):  # sparse layers only (dense ones have gate_proj)
                layer.mlp.gate.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.last = self.gap(module, output)
        self.min_gap = min(self.min_gap, self.last)


def greedy(model, ids, gaps):
    """32 greedy tokens by full recompute; each step's top-2 margin, top-20 logits, logsumexp."""
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


def run_prompts(model, gaps):
    """Every prompt's greedy run: [(prompt, tokens, margins, steps)]."""
    results = []
    for p in PROMPTS:
        gen, margins, steps = greedy(model, p["ids"], gaps)
        results.append((p, gen, margins, steps))
    return results


def golden_prompts(model, results, name):
    """The golden file's prompt entries; generate() (KV cache) must agree with the recompute."""
    prompts = []
    for p, gen, margins, steps in results:
        with torch.no_grad():
            ref = model.generate(torch.tensor([p["ids"]]), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                                 pad_token_id=0)
        assert ref[0, len(p["ids"]):].tolist() == gen, (name, p["name"], "generate")
        prompts.append({"name": p["name"], "prompt_ids": p["ids"], "generated_ids": gen,
                        "step_margin": margins, "steps": steps})
    return prompts


def environment(**extra):
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": np.__version__}
    env.update(extra)
    return env


def settings(prompts, router_gap, weights):
    return {"max_new_tokens": NEW_TOKENS, "top_k_recorded": TOP_K,
            "decoding": "greedy (argmax of f32 logits, lowest id on ties)",
            "weights": weights,
            "min_step_margin": f32(min(min(p["step_margin"]) for p in prompts)),
            "min_router_gap": f32(router_gap)}


def write_golden(name, golden):
    path = os.path.join(DATA, "golden", name + ".json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=None, separators=(",", ":"))
        f.write("\n")
    return path


@dataclass
class Family:
    """One tiny model of a family: `build(vocab, seed)` returns the bf16 model (config set,
    randomised); `model_class` reads it back; `top_k` and `gap` measure its routing, which must
    clear `min_router_gap` (in the units `gap` measures);
    `expect_tensors` are names the saved file must hold (the family's own names, which
    transformers may rename on load)."""
    name: str
    generator: str
    build: Callable
    model_class: type
    top_k: int
    gap: Callable = None
    expect_tensors: list = field(default_factory=list)
    min_router_gap: float = MIN_ROUTER_GAP


def save_and_reload(family, vocab, seed, out_dir):
    """Writes the model of `seed` to out_dir and reads it back, so the reference is computed
    from exactly the files the tests convert."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    family.build(vocab, seed).save_pretrained(out_dir, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(TOKENIZER_FROM, name), os.path.join(out_dir, name))
    return family.model_class.from_pretrained(out_dir, torch_dtype=torch.bfloat16,
                                              attn_implementation="eager").float().eval()


def make_golden(family):
    """Builds tests/data/<name>/ and tests/data/golden/<name>.json (see the module comment)."""
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    vocab = vocab_size()
    out_dir = os.path.join(DATA, family.name)
    for seed in range(1, 200):
        model = save_and_reload(family, vocab, seed, out_dir)
        gaps = RouterGaps(model, family.top_k, family.gap)
        results = run_prompts(model, gaps)
        min_margin = min(min(r[2]) for r in results)
        if min_margin >= MIN_STEP_MARGIN and gaps.min_gap >= family.min_router_gap:
            break
        print(family.name, "seed", seed, "rejected: margin", min_margin, "router gap",
              gaps.min_gap)
    else:
        raise SystemExit("no seed with clear margins")
    if family.expect_tensors:
        from safetensors import safe_open
        with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
            names = list(f.keys())
        for want in family.expect_tensors:
            assert want in names, (want, sorted(names)[:12])

    prompts = golden_prompts(model, results, family.name)
    files = {}
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name), "rb") as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    golden = {
        "schema_version": 1,
        "generator": family.generator,
        "model": {"name": family.name, "dir": "tests/data/" + family.name, "seed": seed,
                  "file_sha256": files, "stored_dtypes": "bf16",
                  "config": json.load(open(os.path.join(out_dir, "config.json")))},
        "environment": environment(),
        "settings": settings(prompts, gaps.min_gap,
                             "bf16 in the file, computed in float32 (eager attention)"),
        "prompts": prompts,
    }
    path = write_golden(family.name, golden)
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {out_dir} ({total} bytes, seed {seed}) and {path}; min margin "
          f"{golden['settings']['min_step_margin']}, min router gap {gaps.min_gap:.4g}")
