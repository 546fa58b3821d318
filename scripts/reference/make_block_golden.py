#!/usr/bin/env python3
"""Reference data for SmolLM2-135M kept as ggml blocks (tests/unit/test_block_golden_slow.cc).

1. Makes models/SmolLM2-135M-Instruct.Q4_0.gguf and .Q8_0.gguf from the shipped Q4_1 file with
   the PyPI `gguf` package: every tensor dequantised (gguf.quants.dequantize), every 2-D tensor
   quantised again to the target type (gguf.quants.quantize, llama.cpp's reference quantisers),
   1-D tensors kept F32, every metadata key copied. Deterministic: the same bytes every run.
   The same files are what bench/llama_bench_compare.sh gives llama.cpp and alem.
   KMIX is a K-quant mix in the spirit of llama.cpp's Q4_K_M: the matrices whose rows are whole
   256-value super-blocks (SmolLM2's ffn_down, 1536 wide) become Q4_K, Q5_K and Q6_K by layer
   (layer % 3) with make_kquant_reference.quantize_k (gguf-py cannot quantise K-quants); the
   576-wide rest falls back to Q8_0, as llama.cpp does for such tensors, except that a mixture
   mixes types inside the groups the engine multiplies as one, as Q4_K_M does with its Q6_K
   attn_v: attn_v is Q4_0 in layers 0, 3, 6, ... and ffn_up Q4_0 in layers 1, 4, 7, ...
2. Loads each file with Hugging Face transformers (which dequantises the GGUF itself) and records
   greedy tokens and top-20 logits on make_golden.py's six prompts into
   tests/data/golden/smollm2-135m-instruct-{q4_0,q8_0}.json, in make_golden.py's schema (results
   under the key "f32": transformers' f32 forward on the dequantised blocks).

Usage: .venv-reference/bin/python scripts/reference/make_block_golden.py [--new-tokens 24]
Takes a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# torch, transformers and make_golden (which imports torch) load only where the golden files are
# made, so `--gguf-only` (bench/llama_bench_compare.sh) needs just numpy and gguf.
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINTS = [0, 8, 16]


def target_type(gguf, name: str, shape, qtype_name: str):
    """The ggml type a 2-D tensor gets in the file made for qtype_name."""
    Q = gguf.GGMLQuantizationType
    if qtype_name != "KMIX":
        return Q[qtype_name]
    cols = int(shape[0])  # GGUF order: fastest (columns) first
    layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
    if cols % 256 != 0:
        mixed = (layer % 3 == 0 and ".attn_v." in name) or (layer % 3 == 1 and ".ffn_up." in name)
        return Q.Q4_0 if mixed else Q.Q8_0
    return (Q.Q4_K, Q.Q5_K, Q.Q6_K)[layer % 3]


def quantize_tensor(gguf, values, qtype):
    Q = gguf.GGMLQuantizationType
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        from make_kquant_reference import quantize_k
        return quantize_k(values.reshape(-1, values.shape[-1]), qtype)
    return gguf.quants.quantize(values, qtype)


def requantize(source: Path, target: Path, qtype_name: str):
    import gguf
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(target), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == "general.file_type":
            # llama_ftype MOSTLY_Q4_0 / MOSTLY_Q8_0 / MOSTLY_Q4_K_M
            value = {"Q4_0": 2, "Q8_0": 7, "KMIX": 15}[qtype_name]
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        if len(t.shape) == 2:
            qtype = target_type(gguf, t.name, t.shape, qtype_name)
            writer.add_tensor(t.name, quantize_tensor(gguf, values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {target}", file=sys.stderr)


def golden(gguf_path: Path, out: Path, new_tokens: int):
    import torch
    from transformers import AutoModelForCausalLM

    import make_golden as mg  # prompts, helpers and schema shared with the f32 golden
    tok, fixups = mg.load_smollm2_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32,
        attn_implementation="eager").eval()
    eos_ids = {tok.eos_token_id}
    prompts = []
    for name, text in mg.RAW_PROMPTS:
        prompts.append({"name": name, "kind": "raw", "text": text,
                        "prompt_ids": tok(text, add_special_tokens=False).input_ids})
    for name, messages in mg.CHAT_PROMPTS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append({"name": name, "kind": "chat", "messages": messages, "text": rendered,
                        "prompt_ids": tok(rendered, add_special_tokens=False).input_ids})
    with torch.no_grad():
        for p in prompts:
            print(f"[{gguf_path.name}] {p['name']}", file=sys.stderr)
            result, _ = mg.variant_result(model, p["prompt_ids"], new_tokens, CHECKPOINTS,
                                          eos_ids, tok)
            p["results"] = {"f32": result}
    doc = {
        "schema_version": mg.SCHEMA_VERSION,
        "generator": "scripts/reference/make_block_golden.py",
        "model": {"name": "SmolLM2-135M-Instruct", "gguf_file": gguf_path.name,
                  "gguf_sha256": mg.sha256_file(gguf_path),
                  "gguf_size_bytes": gguf_path.stat().st_size,
                  "gguf": mg.gguf_metadata(gguf_path),
                  "made_from": {"file": SOURCE.name, "sha256": mg.sha256_file(SOURCE)}},
        "tokenizer": {"fixups": fixups},
        "environment": mg.versions(),
        "settings": mg.settings_dict(new_tokens, CHECKPOINTS, sorted(eos_ids)),
        "prompts": prompts,
    }
    mg.write_json(out, doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--types", default="Q4_0,Q8_0,KMIX")
    ap.add_argument("--gguf-only", action="store_true", help="only make the GGUF files")
    args = ap.parse_args()
    if not args.gguf_only:
        import torch
        torch.set_num_threads(2)
        torch.manual_seed(0)
        torch.use_deterministic_algorithms(True)
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} not found: run scripts/fetch-model.sh first")
    for qtype in args.types.split(","):
        target = SOURCE.with_name(f"SmolLM2-135M-Instruct.{qtype}.gguf")
        if not target.exists():
            requantize(SOURCE, target, qtype)
        if not args.gguf_only:
            golden(target, REPO / f"tests/data/golden/smollm2-135m-instruct-{qtype.lower()}.json",
                   args.new_tokens)


if __name__ == "__main__":
    main()
