#!/usr/bin/env python3
# Writes tests/data/tokenizer_reference.json: token ids that Hugging Face `tokenizers` produces for
# the strings in tests/data/tokenizer_corpus.json, plus ChatML conversations rendered by the
# model's own Jinja chat template. The C++ tokenizer (src/model/tokenizer.cc) is tested against
# this file, so it must come from an implementation that shares no code with ours: HF's.
#
# The tokenizer is loaded from the real GGUF with transformers (vocabulary, merges, added tokens
# and chat template all come from the file). transformers' GGUF converter gives every byte-level
# BPE model a plain ByteLevel pre-tokenizer, but SmolLM2's published tokenizer.json (and
# llama.cpp's `smollm` pre-tokenizer) first isolates every digit: Sequence[Digits(individual),
# ByteLevel]. So ids are recorded for four pre-tokenizers over the same vocabulary:
#   smollm  Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]  (the model's own)
#   gpt2    ByteLevel(use_regex=True), exactly as transformers builds it from the GGUF
#   llama3  Sequence[Split(Llama-3 regex, isolated), ByteLevel(use_regex=False)]
#   qwen2   Sequence[Split(Qwen2 regex, isolated), ByteLevel(use_regex=False)]  (no NFC step)
# It also records, per code point, how HF's ByteLevel regex classifies it (letter, number,
# white space), so the C++ regex can be checked over all of Unicode, not just the corpus.
#
# Usage: .venv-reference/bin/python scripts/reference/make_tokenizer_reference.py
#        [--models models] [--gguf SmolLM2-135M-Instruct.Q4_1.gguf]
import argparse
import copy
import json
import os
import sys

import tokenizers
import transformers
from tokenizers import Regex
from tokenizers import pre_tokenizers as pre
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is the capital of Kazakhstan?"}],
     "add_generation_prompt": True},
    {"messages": [
        {"role": "system", "content": "You answer briefly.\nUse metric units."},
        {"role": "user", "content": "How far is it from Almaty to Astana? \u049a\u0430\u043d\u0448\u0430 \u0448\u0430\u049b\u044b\u0440\u044b\u043c?"},
        {"role": "assistant", "content": "About 1,200 km by road. \U0001f697"},
        {"role": "user", "content": "And by air?\n\n  Indented line\twith tab."},
    ], "add_generation_prompt": True},
    {"messages": [
        {"role": "user", "content": "Run the tool."},
        {"role": "assistant", "content": "{\"call\": \"weather\", \"city\": \"Almaty\"}"},
        {"role": "tool", "content": "{\"temp_c\": -7}"},
        {"role": "assistant", "content": "It is -7 \u00b0C."},
    ], "add_generation_prompt": False},
    {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
     "add_generation_prompt": True},
]


# Byte strings that are not valid UTF-8, for the U+FFFD replacement rule (Python's "replace"
# error handler, like Rust's from_utf8_lossy, substitutes each maximal invalid subpart).
LOSSY_UTF8_HEX = ["ff", "c0af", "e4bd", "e4bd41", "eda080", "f4908080", "f09f9880f09f98",
                  "41c2", "80bf80", "e0808041", "f8888080", "4142e282ac43", "f09f", "e282"]


def with_pre_tokenizer(backend, pre_tokenizer):
    clone = copy.deepcopy(backend)
    clone.pre_tokenizer = pre_tokenizer
    return clone


def codepoint_classes(byte_level):
    """Ranges [first, last, class] of how HF's ByteLevel regex treats each code point:
    L (joins ` ?\\p{L}+`), N (joins ` ?\\p{N}+`), S (white space); others are omitted."""
    def pieces(text):
        return len(byte_level.pre_tokenize_str(text))

    ranges = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        if pieces("!" + c + "!") == 1:
            continue  # punctuation-like: joins ` ?[^\s\p{L}\p{N}]+`
        if pieces("a" + c) == 1:
            kind = "L"
        elif pieces("1" + c) == 1:
            kind = "N"
        else:
            kind = "S"
        if ranges and ranges[-1][2] == kind and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, kind])
    return ranges


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=os.path.join(ROOT, "models"))
    parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--corpus", default=os.path.join(ROOT, "tests/data/tokenizer_corpus.json"))
    parser.add_argument("--out", default=os.path.join(ROOT, "tests/data/tokenizer_reference.json"))
    args = parser.parse_args()

    hf = AutoTokenizer.from_pretrained(args.models, gguf_file=args.gguf)
    backend = hf.backend_tokenizer
    as_converted = json.loads(backend.to_str())["pre_tokenizer"]
    if as_converted.get("type") != "ByteLevel" or not as_converted.get("use_regex"):
        sys.exit("unexpected pre-tokenizer from the GGUF converter: %r" % as_converted)

    byte_level = pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    byte_level_no_regex = pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    modes = {
        "smollm": with_pre_tokenizer(
            backend, pre.Sequence([pre.Digits(individual_digits=True), byte_level])),
        "gpt2": backend,
        "llama3": with_pre_tokenizer(backend, pre.Sequence(
            [pre.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
             byte_level_no_regex])),
        "qwen2": with_pre_tokenizer(backend, pre.Sequence(
            [pre.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
             byte_level_no_regex])),
    }
    # Special tokens matched as ordinary text (alem's parse_special=false).
    plain = with_pre_tokenizer(backend, modes["smollm"].pre_tokenizer)
    plain.encode_special_tokens = True

    corpus = json.load(open(args.corpus, encoding="utf-8"))
    cases = []
    for text in corpus:
        ids = {name: tok.encode(text, add_special_tokens=False).ids for name, tok in modes.items()}
        case = {"text": text, "ids": ids,
                "ids_special_as_text": plain.encode(text, add_special_tokens=False).ids,
                "decoded": modes["smollm"].decode(ids["smollm"], skip_special_tokens=False),
                "decoded_skip_special": modes["smollm"].decode(ids["smollm"],
                                                               skip_special_tokens=True)}
        cases.append(case)

    chats = []
    for conv in CONVERSATIONS:
        text = hf.apply_chat_template(conv["messages"], tokenize=False,
                                      add_generation_prompt=conv["add_generation_prompt"])
        chats.append(dict(conv, text=text,
                          ids=modes["smollm"].encode(text, add_special_tokens=False).ids))

    reference = {
        "about": "Generated by scripts/reference/make_tokenizer_reference.py; do not edit.",
        "generator": {"transformers": transformers.__version__,
                      "tokenizers": tokenizers.__version__, "gguf": args.gguf},
        "vocab_size": backend.get_vocab_size(with_added_tokens=True),
        "bos_token_id": hf.bos_token_id,
        "eos_token_id": hf.eos_token_id,
        "special_tokens": {t.content: i for i, t in backend.get_added_tokens_decoder().items()},
        "pre_tokenizer_as_converted": as_converted,
        "cases": cases,
        "chats": chats,
        "lossy_utf8": [{"bytes_hex": h,
                        "text": bytes.fromhex(h).decode("utf-8", errors="replace")}
                       for h in LOSSY_UTF8_HEX],
        "codepoint_classes": codepoint_classes(byte_level),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print("wrote %s: %d strings, %d chats" % (args.out, len(cases), len(chats)))


if __name__ == "__main__":
    main()
