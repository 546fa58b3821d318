#!/usr/bin/env python3
"""Golden reference data for alem's correctness tests, computed with Hugging Face transformers.

Why this exists: the C++ engine converts the same GGUF (and the tiny synthetic Llama) into its
own store and runs its own kernels. The only way to know it computes the right thing is to
compare it with an independent, widely used implementation. This script runs transformers on
CPU, deterministically, and writes what the engine must reproduce: prompt token ids, greedy
continuations, and top-k logits plus the logsumexp of full logits rows at fixed positions, for
the weights in f32, rounded to bf16, and quantised to int8 the way alem's store does it.

Usage (see scripts/reference/README.md):
    python scripts/reference/make_golden.py                 # SmolLM2 and the tiny model
    python scripts/reference/make_golden.py --only tiny     # just tests/data/golden/tiny-llama.json

Outputs (tests/data/golden/):
    smollm2-135m-instruct.json   six prompts, three weight variants
    tiny-llama.json              the tiny synthetic model, if tests/data/tiny-llama/ exists
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
SCHEMA_VERSION = 1
TOP_K = 20
INT8_GROUP = 32  # kInt8GroupSize in src/core/dtype.h

# ---------------------------------------------------------------------------------------------
# Prompts. Fixed text; changing any of it changes every golden number. They were picked so that
# greedy decoding has no near-tie (top-1 minus top-2 logit below ~0.01) in the f32 and bf16
# variants, so an engine within tolerance reproduces the whole continuation (see step_margin).
# ---------------------------------------------------------------------------------------------

RAW_PROMPTS = [
    ("raw_short", "The capital of France is"),
    ("raw_medium",
     "The water cycle describes how water moves between the oceans, the air and the land. It "
     "begins when"),
    # About 300 tokens; has digits, a double space before a number, and a newline, so the
    # tokenizer's digit splitting and whitespace handling are exercised as well.
    ("raw_long",
     "The history of the railway in the valley begins in 1868, when a group of farmers and mill "
     "owners decided that the old road over the pass was no longer good enough. Wagons loaded "
     "with grain took three days to reach the market town, and in winter the road was often "
     "closed for weeks at a time. The farmers raised money by selling shares at 25 dollars each, "
     "and after two years of arguing about the route, construction started in the spring of "
     "1871. The line was 42 miles long and climbed more than  1,200 feet from the river to the "
     "top of the pass. Building it was hard work. The crews cut through solid rock with hand "
     "drills and black powder, and they built eleven wooden bridges across the side streams. "
     "Several workers were injured, and one bridge was washed away by a flood before it was "
     "finished.\n"
     "When the first train finally arrived in the market town in October 1873, the whole "
     "valley came to watch. The journey that had taken three days now took less than four "
     "hours. Grain prices in the valley rose, new farms were opened on land that had been too "
     "far from the market, and a small hotel was built next to the station at the top of the "
     "pass. For the next fifty years the railway was the center of life in the valley. It "
     "carried grain, timber, mail and passengers, and the arrival of the evening train was the "
     "main event of the day. Then, in the 1920s, trucks and a new paved highway began to take "
     "its traffic away, and"),
]

CHAT_PROMPTS = [
    ("chat_capital", [{"role": "user", "content": "What is the capital of France?"}]),
    ("chat_code", [{"role": "user",
                    "content": "Write a short Python function to reverse a string."}]),
    ("chat_russian", [{"role": "user", "content": "Какая самая длинная река в мире?"}]),
]

# Logits rows recorded in full top-k detail: the last prompt position, then these generated steps.
CHECKPOINT_STEPS = [0, 8, 16, 31]

TINY_PROMPTS = [
    ("ids_a", [1, 5, 9, 13, 17, 21, 25, 29]),
    ("ids_b", [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53]),
    ("ids_c", [7]),
]
TINY_NEW_TOKENS = 32


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def f32(x) -> float:
    """Shortest decimal that round-trips to the same float32 (keeps the JSON small and exact)."""
    return float(str(np.float32(x)))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ["torch", "transformers", "tokenizers", "gguf", "numpy", "accelerate", "safetensors"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["torch_num_threads"] = torch.get_num_threads()
    return out


def top_k_sorted(row: np.ndarray, k: int):
    """Top-k of a logits row, by value descending and, on equal values, by id ascending."""
    cand = np.argpartition(-row, k + 8)[: k + 8]  # a few extra so ties at the boundary sort right
    order = np.lexsort((cand, -row[cand]))
    ids = cand[order][:k]
    return [int(i) for i in ids], [f32(row[i]) for i in ids]


def logsumexp(row: np.ndarray) -> float:
    return f32(torch.logsumexp(torch.from_numpy(row).double(), dim=0).item())


def round_weights_bf16(model):
    """bf16 store: every 2-D weight matrix rounded to bfloat16 (round-to-nearest-even, the same as
    alem's f32_to_bf16) and read back as f32. 1-D norm weights stay f32. Math stays f32."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def round_norms_bf16(model):
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def quantize_weights_int8(model):
    """int8 store, as alem's make_weight_matrix(I8): per row, groups of 32 consecutive columns,
    scale = absmax/127 (f32), q = rint(clamp(w * (1/scale), -127, 127)) with round-half-even,
    w' = q * scale. Applied to every 2-D matrix; 1-D norm weights stay f32."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() != 2:
                continue
            rows, cols = p.shape
            assert cols % INT8_GROUP == 0, (p.shape, "int8 groups need cols % 32 == 0")
            w = p.reshape(rows, cols // INT8_GROUP, INT8_GROUP)
            amax = w.abs().amax(dim=-1, keepdim=True)
            scale = amax / torch.tensor(127.0, dtype=torch.float32)
            inv = torch.where(scale > 0, torch.tensor(1.0, dtype=torch.float32) / scale,
                              torch.zeros_like(scale))
            q = torch.round(torch.clamp(w * inv, -127.0, 127.0))  # torch.round: half to even
            p.copy_((q * scale).reshape(rows, cols))
    return model


@torch.no_grad()
def greedy_rows(model, prompt_ids: list[int], n_new: int):
    """Greedy decoding with a KV cache, exactly n_new tokens, never stopping at eos.

    Returns (generated ids, rows) where rows[j] is the f32 logits row computed at absolute
    position len(prompt)-1+j, for j = 0..n_new: rows[0] is the last prompt position (it chose
    generated[0]); rows[s+1] is the row after feeding generated[s] (it chose generated[s+1],
    or, for s = n_new-1, the token that would come next)."""
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    row = out.logits[0, -1].float()
    rows = [row.numpy().copy()]
    gen = []
    for _ in range(n_new):
        nxt = int(torch.argmax(row).item())  # first maximum, i.e. the lowest id on exact ties
        gen.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), past_key_values=past,
                    use_cache=True)
        past = out.past_key_values
        row = out.logits[0, -1].float()
        rows.append(row.numpy().copy())
    return gen, rows


@torch.no_grad()
def full_forward_rows(model, seq: list[int], start: int) -> np.ndarray:
    """Logits rows for positions start..len(seq)-1 from one forward pass over seq (no cache)."""
    out = model(input_ids=torch.tensor([seq], dtype=torch.long), use_cache=False)
    return out.logits[0, start:].float().numpy()


def checkpoint(label, rows, prompt_ids, gen, j):
    n_prompt = len(prompt_ids)
    pos = n_prompt - 1 + j
    seq_tok = prompt_ids[-1] if j == 0 else gen[j - 1]
    ids, vals = top_k_sorted(rows[j], TOP_K)
    return {
        "label": label,
        "position": pos,
        "input_token_id": int(seq_tok),
        "predicts_generated_index": j,
        "logsumexp": logsumexp(rows[j]),
        "top_ids": ids,
        "top_logits": vals,
    }


def checkpoint_rows(steps):
    """(label, row index j) pairs: the last prompt position, then each generated step s."""
    return [("prompt_last", 0)] + [(f"step_{s}", s + 1) for s in steps]


def variant_result(model, prompt_ids, n_new, steps, eos_ids, tokenizer=None):
    gen, rows = greedy_rows(model, prompt_ids, n_new)
    margins, logprobs = [], []
    for i in range(n_new):
        r = rows[i]
        top2 = np.sort(np.partition(r, -2)[-2:])
        margins.append(f32(top2[1] - top2[0]))
        logprobs.append(f32(float(r[gen[i]]) - float(torch.logsumexp(torch.from_numpy(r).double(), 0))))
    eos_idx = [i for i, t in enumerate(gen) if t in eos_ids]
    res = {
        "generated_ids": gen,
        "first_eos_index": eos_idx[0] if eos_idx else None,
        "eos_indices": eos_idx,
        "step_margin": margins,
        "step_logprob": logprobs,
        "checkpoints": [checkpoint(lbl, rows, prompt_ids, gen, j)
                        for lbl, j in checkpoint_rows(steps)],
    }
    if tokenizer is not None:
        res["generated_text"] = tokenizer.decode(gen, skip_special_tokens=False)
        stop = eos_idx[0] if eos_idx else len(gen)
        res["generated_text_until_eos"] = tokenizer.decode(gen[:stop], skip_special_tokens=True)
    return res, rows


def compare_block(models: dict, prompt_ids, f32_result, steps, rows_inc_f32):
    """Teacher-forced comparison: every variant is run over the SAME sequence (prompt + the f32
    greedy tokens), so differences are due to the weights alone, not to a diverging continuation."""
    gen = f32_result["generated_ids"]
    n_prompt = len(prompt_ids)
    seq = prompt_ids + gen  # the full sequence; rows start at n_prompt-1
    cps = checkpoint_rows(steps)
    full = {name: full_forward_rows(m, seq, n_prompt - 1) for name, m in models.items()}
    ref = full["f32"]
    block = {
        "teacher_forced_on": "f32.generated_ids",
        "checkpoint_labels": [lbl for lbl, _ in cps],
        # f32 one-pass prefill of the whole sequence vs the f32 KV-cache decode rows:
        # pure summation-order noise, a floor for f32 tolerances.
        "f32_prefill_vs_incremental_max_abs_diff": f32(max(
            float(np.abs(ref[j] - rows_inc_f32[j]).max()) for _, j in cps)),
    }
    for name, rows in full.items():
        if name == "f32":
            continue
        per = [float(np.abs(rows[j] - ref[j]).max()) for _, j in cps]
        lse = [abs(float(torch.logsumexp(torch.from_numpy(rows[j]).double(), 0)
                         - torch.logsumexp(torch.from_numpy(ref[j]).double(), 0))) for _, j in cps]
        # log-softmax difference: what sampling actually sees
        lsm = [float(np.abs((rows[j] - np.float64(torch.logsumexp(torch.from_numpy(rows[j]).double(), 0).item()))
                            - (ref[j] - np.float64(torch.logsumexp(torch.from_numpy(ref[j]).double(), 0).item()))).max())
               for _, j in cps]
        all_rows = [float(np.abs(rows[j] - ref[j]).max()) for j in range(len(gen))]
        top1 = [int(np.argmax(rows[j])) == int(np.argmax(ref[j])) for j in range(len(gen))]
        block[f"f32_vs_{name}"] = {
            "max_abs_diff_per_checkpoint": [f32(x) for x in per],
            "max_abs_diff": f32(max(per)),
            "logsumexp_abs_diff_per_checkpoint": [f32(x) for x in lse],
            "log_softmax_max_abs_diff_per_checkpoint": [f32(x) for x in lsm],
            "max_abs_diff_all_steps": f32(max(all_rows)),
            "top1_agreement_all_steps": f32(sum(top1) / len(top1)),
        }
    return block


def first_divergence(a: list[int], b: list[int]):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


# ---------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF
# ---------------------------------------------------------------------------------------------

def load_smollm2_tokenizer(gguf_path: Path):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # transformers' GGUF converter gives every "gpt2"-model GGUF a plain ByteLevel pre-tokenizer
    # and ignores tokenizer.ggml.pre. SmolLM2's own tokenizer.json (and llama.cpp's "smollm"
    # pre-tokenizer) first isolates every digit, then applies ByteLevel. The two differ for
    # whitespace runs before digits ("and  42"), so we restore the original pipeline.
    pre = tok.backend_tokenizer.pre_tokenizer
    fixups = []
    if pre.__class__.__name__ == "ByteLevel":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
        fixups.append("pre_tokenizer: ByteLevel -> Sequence[Digits(individual_digits=True), "
                      "ByteLevel(add_prefix_space=False, use_regex=True)], as SmolLM2's "
                      "tokenizer.json and llama.cpp's 'smollm' pre-tokenizer")
    return tok, fixups


def gguf_metadata(gguf_path: Path) -> dict:
    import gguf
    from collections import Counter
    r = gguf.GGUFReader(str(gguf_path))

    def val(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    return {
        "tokenizer.ggml.model": val("tokenizer.ggml.model"),
        "tokenizer.ggml.pre": val("tokenizer.ggml.pre"),
        "tokenizer.ggml.add_bos_token": val("tokenizer.ggml.add_bos_token"),
        "general.file_type": val("general.file_type"),
        "tensor_types": dict(Counter(t.tensor_type.name for t in r.tensors)),
    }


def model_config_dict(cfg) -> dict:
    rope = getattr(cfg, "rope_parameters", None) or {}
    return {
        "architecture": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", None)),
        "rope_type": rope.get("rope_type", "default"),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "hidden_act": cfg.hidden_act,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
    }


VARIANT_DOC = {
    "f32": "weights as transformers dequantizes the GGUF (Q4_1/Q8_0 -> f32, q/k un-permuted); "
           "math in f32",
    "bf16_weights": "every 2-D weight matrix (embedding = tied lm_head, q/k/v/o, gate/up/down) "
                    "rounded to bfloat16 (round-to-nearest-even) and cast back to f32; 1-D norm "
                    "weights stay f32; math in f32",
    "int8_weights": "every 2-D weight matrix quantised like alem's I8 store: per row, groups of 32 "
                    "columns, scale = absmax/127 in f32, q = rint(clamp(w*(1/scale),-127,127)) "
                    "half-to-even, w = q*scale; 1-D norm weights stay f32; math in f32",
}


def make_smollm2(gguf_path: Path, out_dir: Path, new_tokens: int):
    from transformers import AutoModelForCausalLM
    print(f"[smollm2] loading {gguf_path}", file=sys.stderr)
    tok, fixups = load_smollm2_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32,
        attn_implementation="eager")
    model.eval()
    models = {
        "f32": model,
        "bf16_weights": round_weights_bf16(copy.deepcopy(model)).eval(),
        "int8_weights": quantize_weights_int8(copy.deepcopy(model)).eval(),
    }
    # Only for the tolerance guide: how much rounding the norm weights too would add.
    bf16_all = round_norms_bf16(copy.deepcopy(models["bf16_weights"])).eval()
    eos_ids = {tok.eos_token_id}

    prompts = []
    for name, text in RAW_PROMPTS:
        prompts.append({"name": name, "kind": "raw", "text": text, "add_special_tokens": False,
                        "prompt_ids": tok(text, add_special_tokens=False).input_ids})
    for name, messages in CHAT_PROMPTS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append({"name": name, "kind": "chat", "messages": messages,
                        "add_generation_prompt": True, "text": rendered,
                        "add_special_tokens": False,
                        "prompt_ids": tok(rendered, add_special_tokens=False).input_ids})

    gen_check = []
    for p in prompts:
        ids = p["prompt_ids"]
        p["n_prompt"] = len(ids)
        print(f"[smollm2] {p['name']}: {len(ids)} prompt tokens", file=sys.stderr)
        results, inc_rows = {}, {}
        for vname, m in models.items():
            results[vname], inc_rows[vname] = variant_result(m, ids, new_tokens, CHECKPOINT_STEPS,
                                                             eos_ids, tok)
        for vname in ("bf16_weights", "int8_weights"):
            results[vname]["first_divergence_from_f32"] = first_divergence(
                results["f32"]["generated_ids"], results[vname]["generated_ids"])
        p["results"] = results
        cmp = compare_block(models, ids, results["f32"], CHECKPOINT_STEPS, inc_rows["f32"])
        seq = ids + results["f32"]["generated_ids"]
        a = full_forward_rows(models["bf16_weights"], seq, len(ids) - 1)
        b = full_forward_rows(bf16_all, seq, len(ids) - 1)
        cmp["bf16_weights_vs_bf16_including_norms_max_abs_diff"] = f32(max(
            float(np.abs(a[j] - b[j]).max()) for _, j in checkpoint_rows(CHECKPOINT_STEPS)))
        p["compare"] = cmp
        gen_check.append(cross_check_generate(model, ids, results["f32"]["generated_ids"]))

    doc = {
        "schema_version": SCHEMA_VERSION,
        "generator": "scripts/reference/make_golden.py",
        "model": {
            "name": "SmolLM2-135M-Instruct",
            "gguf_file": gguf_path.name,
            "gguf_sha256": sha256_file(gguf_path),
            "gguf_size_bytes": gguf_path.stat().st_size,
            "gguf": gguf_metadata(gguf_path),
            "config": model_config_dict(model.config),
        },
        "tokenizer": {
            "source": "transformers AutoTokenizer from the GGUF, with fixups",
            "fixups": fixups,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "add_bos_token": False,
            "chat_template_sha256": hashlib.sha256(tok.chat_template.encode()).hexdigest(),
        },
        "environment": versions(),
        "settings": settings_dict(new_tokens, CHECKPOINT_STEPS, sorted(eos_ids)),
        "variants": {k: VARIANT_DOC[k] for k in models},
        "cross_check_with_generate": gen_check,
        "prompts": prompts,
    }
    out = out_dir / "smollm2-135m-instruct.json"
    write_json(out, doc)
    return out


def settings_dict(new_tokens, steps, eos_ids):
    return {
        "max_new_tokens": new_tokens,
        "decoding": "greedy: argmax of the f32 logits row; on exact ties the lowest id",
        "stop_at_eos": False,
        "eos_token_ids": eos_ids,
        "eos_note": "generation never stops early: exactly max_new_tokens tokens are produced "
                    "even past eos; first_eos_index/eos_indices say where eos came",
        "repetition_penalty": None,
        "top_k_recorded": TOP_K,
        "checkpoint_steps": steps,
        "checkpoint_note": "checkpoint 'prompt_last' is the logits row at absolute position "
                           "n_prompt-1 (it chooses generated[0]); 'step_s' is the row at position "
                           "n_prompt+s, computed after feeding generated[s] (it chooses "
                           "generated[s+1]). Rows come from KV-cache decoding, in f32.",
        "compute": "CPU, float32 activations, eager attention, torch.no_grad, eval mode, "
                   "torch.set_num_threads(2), KV-cache decode one token per step",
    }


@torch.no_grad()
def cross_check_generate(model, prompt_ids, gen):
    """Our manual loop must agree with model.generate(do_sample=False) on the tokens up to and
    including the first eos (generate stops there)."""
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=len(gen), repetition_penalty=None, top_k=None,
                         top_p=None, temperature=None)
    hf = out[0, len(prompt_ids):].tolist()
    n = len(hf)
    ok = hf == gen[:n]
    if not ok:
        raise SystemExit(f"generate() disagrees with the manual greedy loop: {hf} vs {gen[:n]}")
    return {"tokens_compared": n, "agree": ok}


# ---------------------------------------------------------------------------------------------
# Tiny synthetic Llama (tests/data/tiny-llama/)
# ---------------------------------------------------------------------------------------------

def make_tiny(tiny_dir: Path, out_dir: Path):
    from transformers import AutoModelForCausalLM
    print(f"[tiny] loading {tiny_dir}", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cfg = model.config
    vocab = cfg.vocab_size
    models = {"f32": model, "bf16_weights": round_weights_bf16(copy.deepcopy(model)).eval()}
    if all(p.shape[1] % INT8_GROUP == 0 for p in model.parameters() if p.dim() == 2):
        models["int8_weights"] = quantize_weights_int8(copy.deepcopy(model)).eval()
    eos = cfg.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
    steps = [s for s in CHECKPOINT_STEPS if s < TINY_NEW_TOKENS]
    prompts = []
    for name, ids in TINY_PROMPTS:
        ids = [i % vocab for i in ids]
        results, inc = {}, {}
        for vname, m in models.items():
            results[vname], inc[vname] = variant_result(m, ids, TINY_NEW_TOKENS, steps, eos_ids)
        for vname in results:
            if vname != "f32":
                results[vname]["first_divergence_from_f32"] = first_divergence(
                    results["f32"]["generated_ids"], results[vname]["generated_ids"])
        prompts.append({"name": name, "kind": "ids", "prompt_ids": ids, "n_prompt": len(ids),
                        "results": results,
                        "compare": compare_block(models, ids, results["f32"], steps, inc["f32"])})
    # The files the model is made of (not reference.json, which its generator may rewrite).
    files = {f.name: sha256_file(f) for f in sorted(tiny_dir.iterdir())
             if f.name == "config.json" or f.suffix == ".safetensors"}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "generator": "scripts/reference/make_golden.py",
        "model": {"name": "tiny-llama", "dir": "tests/data/tiny-llama", "file_sha256": files,
                  "stored_dtypes": safetensors_dtypes(tiny_dir),
                  "config": model_config_dict(cfg)},
        "environment": versions(),
        "settings": settings_dict(TINY_NEW_TOKENS, steps, sorted(eos_ids)),
        "variants": {k: VARIANT_DOC[k].replace("as transformers dequantizes the GGUF "
                                                "(Q4_1/Q8_0 -> f32, q/k un-permuted)",
                                                "as stored in model.safetensors, read as f32")
                     for k in models},
        "prompts": prompts,
    }
    out = out_dir / "tiny-llama.json"
    write_json(out, doc)
    return out


def safetensors_dtypes(model_dir: Path) -> dict:
    """{dtype name: tensor count} over the directory's *.safetensors files."""
    from collections import Counter
    from safetensors import safe_open
    counts = Counter()
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                counts[str(st.get_slice(k).get_dtype())] += 1
    return dict(counts)


def write_json(path: Path, doc: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, ensure_ascii=False, indent=1, allow_nan=False)
    # Arrays of numbers on one line: the files stay small and readable in a diff.
    import re
    text = re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tiny", type=Path, default=REPO / "tests/data/tiny-llama")
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/golden")
    ap.add_argument("--only", choices=["all", "smollm2", "tiny"], default="all")
    ap.add_argument("--new-tokens", type=int, default=48)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    if args.only in ("all", "smollm2"):
        if not args.gguf.exists():
            sys.exit(f"{args.gguf} not found: run scripts/fetch-model.sh first")
        make_smollm2(args.gguf, args.out, args.new_tokens)
    if args.only in ("all", "tiny"):
        if (args.tiny / "config.json").exists():
            make_tiny(args.tiny, args.out)
        elif args.only == "tiny":
            sys.exit(f"{args.tiny}/config.json not found")
        else:
            print(f"[tiny] {args.tiny} not found; skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
