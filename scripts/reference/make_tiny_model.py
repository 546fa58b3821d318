#!/usr/bin/env python3
"""Builds tests/data/tiny-llama/: a small random-init LlamaForCausalLM in Hugging Face format.

Used by alem's safetensors import test and by the multi-rank engine tests (8 query heads and
4 key/value heads divide by 2 and 4). Everything is deterministic (fixed seeds):

- tokenizer.json: a byte-level BPE with 512 tokens trained with the `tokenizers` library on
  the small corpus below; pre-tokenizer Sequence[Digits(individual), ByteLevel] like SmolLM2;
  special tokens <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2; ChatML chat template.
- model.safetensors: LlamaForCausalLM, hidden 128, 4 layers, 8 heads, 4 kv heads
  (head_dim 16), intermediate 384, untied lm_head, stored as bf16 (keeps the folder < 3 MB).
  Weights are drawn with std 0.1 (not transformers' 0.02) and norm weights around 1, so the
  logits are peaked enough for greedy decoding comparisons to be stable.
- reference.json: transformers' own forward pass in float32 on the bf16 weights for a fixed
  prompt (all-position logits, greedy continuation), an independent reference for the engine.

Usage: .venv-reference/bin/python scripts/reference/make_tiny_model.py
"""
import json
import os

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "tiny-llama")
VOCAB = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "A supercomputer runs one long job that shards a language model across many nodes.",
    "Tensor parallel layers split the heads of attention and the rows of the feed-forward network.",
    "Pipeline stages pass activations from one group of ranks to the next, micro-batch by micro-batch.",
    "The scheduler keeps a token budget for every step and mixes prefill with decode.",
    "Each rank reads only its own shard of the weights from the HDF5 file.",
    "Confidential computing keeps the prompts private from the operators of the cluster.",
    "Hello, world! How are you today? I am fine, thank you. What time is it? It is 12:45.",
    "Numbers like 3.14159, 2718, 42 and 1000000 appear in text, and so do dates such as 2024-06-07.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "She said: \"Don't worry, we'll be there soon.\" He replied: 'It's fine, they're late too.'",
    "Mountains, rivers, forests and deserts cover the surface of the earth in many colours.",
    "The model answered the question politely and then stopped at the end of its turn.",
    "Large language models predict the next token given all the tokens before it.",
    "Weights can be stored as float32, bfloat16 or int8 with one scale for every group of values.",
    "Ünïcödé text, emojis 🙂 and accents like café, naïve and façade must survive byte-level BPE.",
    "In the morning the market opens, in the evening it closes, and at night the city is quiet.",
]


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i
    return tok


def build_model():
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.1,
        dtype="bfloat16",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1234)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    return model


def reference_outputs(model, tok):
    prompt = "<|im_start|>user\nHello, world! What time is it?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prompt).ids
    model32 = model.to(torch.float32).eval()  # float32 arithmetic on the bf16-rounded weights
    with torch.no_grad():
        logits = model32(torch.tensor([ids])).logits[0].numpy()
        generated = model32.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    return {
        "generator": "scripts/reference/make_tiny_model.py (transformers forward, float32 on bf16 weights)",
        "prompt": prompt,
        "input_ids": ids,
        "logits_shape": list(logits.shape),
        "logits": [[round(float(v), 6) for v in row] for row in logits],
        "greedy_continuation": generated,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = build_tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "add_bos_token": False,
            "chat_template": CHAT_TEMPLATE,
            "model_max_length": 1024,
        }, f, indent=2)
    model = build_model()
    model.save_pretrained(OUT, safe_serialization=True)
    # transformers may write the template to chat_template.jinja; keep tokenizer_config.json's.
    ref = reference_outputs(model, tok)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f)
    total = 0
    for name in sorted(os.listdir(OUT)):
        size = os.path.getsize(os.path.join(OUT, name))
        total += size
        print(f"{name:28s} {size:9d}")
    print("total", total, "bytes")
    assert total < 3 * 1024 * 1024, "tiny model folder must stay under 3 MB"


if __name__ == "__main__":
    main()
