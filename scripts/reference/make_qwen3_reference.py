#!/usr/bin/env python3
"""Builds tests/data/tiny-qwen3/ (a small random Qwen3ForCausalLM in Hugging Face format) and
tests/data/golden/tiny-qwen3.json (Hugging Face transformers' greedy tokens and logits on it).

Why: the network serves the Qwen3 family, which differs from Llama by per-head RMSNorm on q and
k (qk-norm), no attention bias, and a chat template that thinks in <think> ... </think> blocks
(enable_thinking). alem's Qwen3 path and its reasoning split are tested against this model.
Everything is deterministic (fixed seeds):

- tokenizer.json: a byte-level BPE trained with the `tokenizers` library on the corpus below,
  with Qwen2/Qwen3's pre-tokenizer (Split on Qwen2's regex, then ByteLevel without regex) and
  NFC normalizer; special tokens <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, and, as in
  Qwen3's own tokenizer, <think> and </think> as added tokens that are not "special" (they
  survive skip_special_tokens; servers find them by spelling), at the end of the vocabulary.
- tokenizer_config.json: Qwen3-0.6B's chat template (tests/data/chat_templates/), eos
  <|im_end|>, no bos, as Qwen3 ships.
- model.safetensors: Qwen3ForCausalLM, hidden 64, 2 layers, 4 query heads, 2 kv heads,
  head_dim 32 (not hidden/heads, as in real Qwen3 models), intermediate 192, tied embeddings,
  bf16. Weights std 0.1 and norm weights around 1 (q_norm/k_norm too), so greedy decoding has
  clear margins.
- golden/tiny-qwen3.json: chat prompts rendered by transformers' apply_chat_template (thinking
  on, enable_thinking=False, a history with tool calls and a tool result), their ids, and 32
  greedy tokens from transformers in float32 on the bf16 weights, with the top-2 margin of every
  step and top-20 logits plus logsumexp at checkpoint steps.

Usage: .venv-reference/bin/python scripts/reference/make_qwen3_reference.py
"""
import hashlib
import json
import os
import platform

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from golden_moe import f32  # noqa: E402  (same folder: shortest float32 decimal)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "tiny-qwen3")
GOLDEN = os.path.join(ROOT, "tests", "data", "golden", "tiny-qwen3.json")
TEMPLATE = os.path.join(ROOT, "tests", "data", "chat_templates", "Qwen-Qwen3-0.6B.jinja")
BPE_VOCAB = 638  # + <think>, </think> = 640
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NEW_TOKENS = 32
CHECKPOINTS = [0, 8, 16, 31]
TOP_K = 20

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "A supercomputer runs one long job that shards a language model across many nodes.",
    "Okay, let me think about this. The user asks for the capital of France, which is Paris.",
    "Hmm, first I need to check the numbers: 12 plus 30 is 42, so the answer is 42.",
    "Wait, maybe I should reconsider. Let me go through the steps again, one by one.",
    "So the final answer is clear. I will now write a short, friendly reply to the user.",
    "What is the weather in Paris today? It is sunny and warm, about 24 degrees.",
    "Call the get_weather function with the city name and read the temperature it returns.",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "Hello, world! How are you today? I am fine, thank you. What time is it? It is 12:45.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "She said: \"Don't worry, we'll be there soon.\" He replied: 'It's fine, they're late too.'",
    "Large language models predict the next token given all the tokens before it.",
    "Ünïcödé text, emojis 🙂 and accents like café, naïve and façade must survive byte-level BPE.",
    "/think /no_think system user assistant tool tool_call tool_response",
]

PROMPTS = [
    {"name": "think_default", "messages": [{"role": "user", "content": "What is the capital of France?"}],
     "kwargs": {}},
    {"name": "think_on_system", "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "Add 12 and 30. /think"}],
     "kwargs": {"enable_thinking": True}},
    {"name": "think_off", "messages": [{"role": "user", "content": "What is the capital of France?"}],
     "kwargs": {"enable_thinking": False}},
    {"name": "no_think_switch", "messages": [
        {"role": "user", "content": "Say hello. /no_think"}],
     "kwargs": {}},
    {"name": "tool_history", "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 24}"},
        {"role": "assistant", "content": "<think>\nIt is warm.\n</think>\n\nIt is 24 degrees."},
        {"role": "user", "content": "Thanks! And tomorrow?"}],
     "kwargs": {"enable_thinking": False}},
]



def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == BPE_VOCAB, tok.get_vocab_size()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i
    assert tok.token_to_id("<think>") == BPE_VOCAB and tok.token_to_id("</think>") == BPE_VOCAB + 1
    return tok


def build_model(vocab):
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=1024, tie_word_embeddings=True,
        attention_bias=False, hidden_act="silu", bos_token_id=None, eos_token_id=2,
        pad_token_id=0, torch_dtype="bfloat16",
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1234)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # input/post-attention/final norms, q_norm, k_norm
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model = model.to(torch.bfloat16)
    model.eval()
    return config, model


def rows_summary(row):
    row64 = row.double()
    lse = float(torch.logsumexp(row64, 0))
    order = sorted(range(row.numel()), key=lambda i: (-float(row[i]), i))[:TOP_K]
    return lse, order, [f32(row[i]) for i in order]


def greedy(model, ids):
    seq = list(ids)
    out, margins, logprobs, rows = [], [], [], []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            order = sorted(range(logits.numel()), key=lambda i: (-float(logits[i]), i))
            tok = order[0]
            margins.append(f32(logits[order[0]] - logits[order[1]]))
            logprobs.append(f32(torch.log_softmax(logits.double(), 0)[tok]))
            rows.append(logits.clone())
            out.append(tok)
            seq.append(tok)
    return out, margins, logprobs, rows


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    with open(TEMPLATE) as f:
        template = f.read()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(OUT, "tokenizer.json"), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", bos_token=None, unk_token=None, chat_template=template,
        model_max_length=1024, clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(OUT)
    tc_path = os.path.join(OUT, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    tc["chat_template"] = template  # in tokenizer_config.json, as Qwen3-0.6B ships it
    tc["add_bos_token"] = False
    with open(tc_path, "w") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
    if os.path.exists(os.path.join(OUT, "chat_template.jinja")):
        os.remove(os.path.join(OUT, "chat_template.jinja"))
    hf_tok = PreTrainedTokenizerFast.from_pretrained(OUT)

    config, model = build_model(vocab)
    model.save_pretrained(OUT, safe_serialization=True)
    model = Qwen3ForCausalLM.from_pretrained(OUT, torch_dtype=torch.bfloat16,
                                             attn_implementation="eager").float().eval()

    prompts = []
    for p in PROMPTS:
        text = hf_tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True,
                                          **p["kwargs"])
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        gen, margins, logprobs, rows = greedy(model, ids)
        # Self-check against transformers' own generate (KV cache).
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
        agree = ref[0, len(ids):].tolist() == gen
        if not agree:
            first = next(i for i, (a, b) in enumerate(zip(ref[0, len(ids):].tolist(), gen)) if a != b)
            assert margins[first] < 1e-3, (p["name"], first)
        checkpoints = []
        labels = ["prompt_last"] + [f"step_{s}" for s in CHECKPOINTS[:-1]]
        for label, step in zip(labels, [0] + [s + 1 for s in CHECKPOINTS[:-1]]):
            lse, top_ids, top_logits = rows_summary(rows[step])
            checkpoints.append({"label": label, "predicts_generated_index": step,
                                "logsumexp": f32(lse), "top_ids": top_ids, "top_logits": top_logits})
        prompts.append({
            "name": p["name"], "kind": "chat", "messages": p["messages"],
            "chat_template_kwargs": p["kwargs"], "text": text, "add_special_tokens": False,
            "prompt_ids": ids, "n_prompt": len(ids),
            "results": {"f32": {
                "generated_ids": gen,
                "generated_text": hf_tok.decode(gen, skip_special_tokens=False),
                "step_margin": margins, "step_logprob": logprobs, "checkpoints": checkpoints,
                "agrees_with_generate": agree,
            }},
        })

    files = {}
    for name in sorted(os.listdir(OUT)):
        with open(os.path.join(OUT, name), "rb") as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    golden = {
        "schema_version": 1,
        "generator": "scripts/reference/make_qwen3_reference.py",
        "model": {
            "name": "tiny-qwen3", "dir": "tests/data/tiny-qwen3", "file_sha256": files,
            "stored_dtypes": "bf16",
            "config": json.load(open(os.path.join(OUT, "config.json"))),
        },
        "tokenizer": {"think_start_id": tok.token_to_id("<think>"),
                      "think_end_id": tok.token_to_id("</think>"),
                      "im_start_id": 1, "im_end_id": 2, "eos_token_id": 2},
        "environment": {
            "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__,
            "torch_num_threads": torch.get_num_threads(),
        },
        "settings": {
            "max_new_tokens": NEW_TOKENS, "decoding": "greedy (argmax of f32 logits, lowest id on ties)",
            "stop_at_eos": False, "top_k_recorded": TOP_K, "checkpoint_steps": CHECKPOINTS,
            "weights": "bf16 in the file, computed in float32 (eager attention)",
        },
        "prompts": prompts,
    }
    with open(GOLDEN, "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes) and {GOLDEN}")
    for p in prompts:
        r = p["results"]["f32"]
        print(p["name"], p["n_prompt"], "min margin", min(r["step_margin"]), "generate agrees",
              r["agrees_with_generate"])


if __name__ == "__main__":
    main()
