"""The tokenizer section of the tiny test models' GGUF files, shared by the scripts that write
them (make_moe_gguf.py, make_gguf_reference.py): a Hugging Face tokenizer.json's tokens, merges
and token types, as llama.cpp writes a byte-level BPE tokenizer (model gpt2, pre qwen2)."""
import json
import os

import gguf


def add_tokenizer(writer, folder):
    tok = json.load(open(os.path.join(folder, "tokenizer.json")))
    vocab = dict(tok["model"]["vocab"])
    special = set()
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id))), "token ids are not dense"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list([t for t, _ in by_id])
    writer.add_token_types([int(gguf.TokenType.CONTROL) if i in special
                            else int(gguf.TokenType.NORMAL) for _, i in by_id])
    writer.add_token_merges(merges)
