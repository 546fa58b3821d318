#!/usr/bin/env python3
"""Writes the hand-made part of the fuzz seed corpus (tests/fuzz/corpus/<target>/seed-*).

Why it exists: seeds must be small and real-shaped, and a generator documents what each one
is. Copies of real files (the TDX quote, tiny-llama's config and tokenizer, the job specs) and
small synthetic GGUF and safetensors files built here. Seeds that need alem's own code (sealed
envelopes, signed bundles, journals, a model store) are written by the fuzz binaries themselves:
scripts/fuzz.sh --make-seeds. Regression inputs (crash-*, leak-*, timeout-*) are never touched.
Standard library only.
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
DATA = os.path.join(ROOT, "tests", "data")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def read(rel):
    with open(os.path.join(DATA, rel), "rb") as f:
        return f.read()


# ---- GGUF (version 3): a tiny llama model with tokenizer metadata and a few tensor types ----
def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, vtype, payload):
    return gguf_string(key) + struct.pack("<I", vtype) + payload


def gguf_file():
    U32, F32, BOOL, STR, ARR = 4, 6, 7, 8, 9
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "\u0120", "\u0120a"]
    kinds = [3, 3, 3, 1, 1, 1, 1, 1]
    merges = ["a b", "\u0120 a"]
    kv = [
        gguf_kv("general.architecture", STR, gguf_string("llama")),
        gguf_kv("general.name", STR, gguf_string("fuzz-tiny")),
        gguf_kv("general.alignment", U32, struct.pack("<I", 32)),
        gguf_kv("llama.context_length", U32, struct.pack("<I", 64)),
        gguf_kv("llama.embedding_length", U32, struct.pack("<I", 32)),
        gguf_kv("llama.block_count", U32, struct.pack("<I", 1)),
        gguf_kv("llama.feed_forward_length", U32, struct.pack("<I", 64)),
        gguf_kv("llama.attention.head_count", U32, struct.pack("<I", 2)),
        gguf_kv("llama.attention.head_count_kv", U32, struct.pack("<I", 1)),
        gguf_kv("llama.rope.freq_base", F32, struct.pack("<f", 10000.0)),
        gguf_kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5)),
        gguf_kv("llama.vocab_size", U32, struct.pack("<I", len(tokens))),
        gguf_kv("tokenizer.ggml.model", STR, gguf_string("gpt2")),
        gguf_kv("tokenizer.ggml.pre", STR, gguf_string("smollm")),
        gguf_kv("tokenizer.ggml.tokens", ARR,
                struct.pack("<IQ", STR, len(tokens)) + b"".join(gguf_string(t) for t in tokens)),
        gguf_kv("tokenizer.ggml.token_type", ARR,
                struct.pack("<IQ", 5, len(kinds)) + b"".join(struct.pack("<i", k) for k in kinds)),
        gguf_kv("tokenizer.ggml.merges", ARR,
                struct.pack("<IQ", STR, len(merges)) + b"".join(gguf_string(m) for m in merges)),
        gguf_kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)),
        gguf_kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)),
        gguf_kv("tokenizer.ggml.add_bos_token", BOOL, b"\x00"),
        gguf_kv("tokenizer.chat_template", STR,
                gguf_string("{% for m in messages %}<|im_start|>{{m}}<|im_end|>{% endfor %}")),
    ]
    # (name, dims, ggml type, bytes): F32=0, F16=1, Q8_0=8 (34-byte blocks of 32)
    tensors = [
        ("token_embd.weight", [32, 8], 0, 32 * 8 * 4),
        ("output_norm.weight", [32], 0, 32 * 4),
        ("blk.0.attn_q.weight", [32, 32], 1, 32 * 32 * 2),
        ("blk.0.ffn_up.weight", [32, 64], 8, 64 * 34),
    ]
    infos, offset, blobs = b"", 0, b""
    for name, dims, t, n in tensors:
        infos += gguf_string(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t, offset)
        blob = bytes((i * 37 + 11) % 251 for i in range(n))
        if t == 8:  # Q8_0: f16 scale then 32 int8
            blob = b"".join(struct.pack("<e", 0.01) + bytes(32) for _ in range(n // 34))
        if t == 1:
            blob = b"".join(struct.pack("<e", (i % 13) / 8.0) for i in range(n // 2))
        if t == 0:
            blob = b"".join(struct.pack("<f", (i % 7) / 4.0) for i in range(n // 4))
        pad = (-len(blob)) % 32
        blobs += blob + bytes(pad)
        offset += len(blob) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + infos
    head += bytes((-len(head)) % 32)
    return head + blobs


# ---- safetensors: F32, F16 and BF16 tensors and __metadata__ ----
def safetensors_file():
    parts, header, off = [], {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, elem in [("model.norm.weight", "F32", [8], 4),
                                     ("model.embed_tokens.weight", "BF16", [4, 8], 2),
                                     ("lm_head.weight", "F16", [4, 8], 2)]:
        n = elem
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        parts.append(bytes((i * 3 + 60) % 256 for i in range(n)))
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(parts)


def main():
    put("gguf", "quant-types.gguf", read("gguf_quant_types.gguf"))
    put("gguf", "lowbit-types.gguf", read("gguf_lowbit_types.gguf"))
    put("gguf", "tiny-llama.gguf", gguf_file())
    put("safetensors", "tiny.safetensors", safetensors_file())

    put("model_config", "tiny-llama-config.json", read("tiny-llama/config.json"))
    put("model_config", "qwen2-config.json", json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 1000,
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": [2, 3]}))
    put("model_config", "llama3-rope-config.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
        "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 4, "head_dim": 16, "intermediate_size": 128,
        "max_position_embeddings": 8192, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))

    put("hf_tokenizer", "tiny-llama-tokenizer.json", read("tiny-llama/tokenizer.json"))

    template = json.loads(read("tiny-llama/tokenizer_config.json"))["chat_template"]
    put("chat_template", "chatml", template + "\0system\x1fBe brief.\x1euser\x1fHi <|im_end|>!")
    put("chat_template", "chatml-generation",
        "g" + template + "\0user\x1fWhat is 2+2?\x1eassistant\x1f4\x1euser\x1fThanks")
    put("chat_template", "unknown-template", "{{ bos_token }}[INST]\0user\x1fx")

    put("openai_request", "completion", "\0" + json.dumps({
        "model": "SmolLM2-135M-Instruct", "prompt": "Hello", "max_tokens": 16,
        "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "n": 2, "seed": 1}))
    put("openai_request", "completion-tokens", "\0" + json.dumps({
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": [[1, 2, 3], [4]],
        "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}))
    put("openai_request", "chat", "\1" + json.dumps({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_completion_tokens": 32, "frequency_penalty": 0.5, "logit_bias": {"5": 1},
        "response_format": {"type": "json_object"}, "user": "u1"}))
    put("openai_request", "deep-nesting", "\1" + "[" * 300 + "]" * 300)

    for name in sorted(os.listdir(os.path.join(ROOT, "jobs"))):
        if name.endswith(".toml"):
            with open(os.path.join(ROOT, "jobs", name), "rb") as f:
                put("job_spec", name, f.read())
    put("job_spec", "layout-mismatch.toml", read("jobs/layout-mismatch.toml"))

    put("tdx_quote", "quote-v4", b"\0" + read("tdx-quote-v4.dat"))
    put("tdx_quote", "tcb-info.json", b"\1" + read("tdx-collateral/tcb-info-90c06f000000.json"))
    put("tdx_quote", "qe-identity.json", b"\2" + read("tdx-collateral/qe-identity-td.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
