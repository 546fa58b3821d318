"""End-to-end test of logprobs, echo, stop_reason and /tokenize + /detokenize on the real server,
driven by the official `openai` client (and curl for the two vLLM routes).

One server runs on 1 rank behind an API key, one on 3 MPI ranks with --tp 3 (the vocabulary and
so each logit row split over the ranks). Logprobs must be well-formed (<= 0; a full top list's
probabilities sum to <= 1; greedy's chosen token is its top-1 entry, with the same logprob), the
same streamed and not, the same between chat's and completions' shapes, and the 3-rank values
must equal the 1-rank values within 1e-3. Their exactness against an independent log_softmax of
the engine's logits is tests/mpi/test_sharded_logprobs.cc.
"""

import json
import math
import os
import shutil
import sys
import unittest

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Server, curl, generate_cli  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"
KEY = "logprobs-test-key-0123456789abcdef"
SOLO = None
TP3 = None
PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def setUpModule():
    global SOLO, TP3
    # An f32 KV cache: under tp the keys and values come out of differently ordered sums, and a
    # bf16 cache would round them apart (about 2e-2 in a logprob); tp 3 must equal one rank.
    flags = ["--max-model-len", "1024", "--kv-cache-mb", "128", "--kv-cache-dtype", "f32"]
    SOLO = Server(flags, env={"ALEM_API_KEY": KEY}, api_key=KEY)
    if shutil.which("mpirun"):
        TP3 = Server(flags + ["--tp", "3"], ranks=3)


def tearDownModule():
    for server in (SOLO, TP3):
        if server:
            server.stop()


def client(server, key=KEY):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, timeout=300)


def chat_logprobs(server, **kw):
    r = client(server).chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12,
                                               temperature=0, logprobs=True, top_logprobs=5, **kw)
    return r.choices[0]


def post(server, path, body, key=KEY):
    status, _, text = curl(server.base + path, json.dumps(body),
                           extra=("-H", f"Authorization: Bearer {key}"))
    return status, (json.loads(text) if text.strip().startswith("{") else text)


class Logprobs(unittest.TestCase):
    def check_entry(self, entry, top_n, greedy=True):
        self.assertLessEqual(entry.logprob, 0.0)
        self.assertEqual(len(entry.top_logprobs), top_n)
        if "\ufffd" not in entry.token:  # whole characters: bytes spell the token
            self.assertEqual(bytes(entry.bytes).decode("utf-8"), entry.token)
        tops = [t.logprob for t in entry.top_logprobs]
        self.assertEqual(tops, sorted(tops, reverse=True))
        self.assertTrue(all(t <= 0.0 for t in tops))
        self.assertLessEqual(sum(math.exp(t) for t in tops), 1.0 + 1e-6)
        if greedy:  # the chosen token is the most likely one, with the same logprob
            self.assertEqual(entry.top_logprobs[0].token, entry.token)
            self.assertAlmostEqual(entry.top_logprobs[0].logprob, entry.logprob, places=6)

    def test_chat_greedy(self):
        choice = chat_logprobs(SOLO)
        content = choice.logprobs.content
        self.assertGreater(len(content), 0)
        for entry in content:
            self.check_entry(entry, 5)
        # The tokens spell the answer (the last may be the end-of-turn token, not shown).
        spelled = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
        self.assertTrue(spelled.startswith(choice.message.content), (spelled, choice.message.content))
        # Without the fields: null, as before.
        r = client(SOLO).chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
        self.assertIsNone(r.choices[0].logprobs)

    def test_chat_streamed_equals_whole(self):
        chat_logprobs(SOLO)  # warm the prefix cache, so both runs prefill the same rows
        whole = chat_logprobs(SOLO).logprobs.content
        streamed = []
        for chunk in client(SOLO).chat.completions.create(
                model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True,
                top_logprobs=5, stream=True):
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                streamed += chunk.choices[0].logprobs.content
        self.assertEqual([(e.token, round(e.logprob, 5)) for e in streamed],
                         [(e.token, round(e.logprob, 5)) for e in whole])

    def test_sampled_and_logprobs_only(self):
        r = client(SOLO).chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                 max_tokens=8, temperature=0.9, seed=3,
                                                 logprobs=True)
        for entry in r.choices[0].logprobs.content:
            self.check_entry(entry, 0, greedy=False)

    def test_completions_legacy_shape(self):
        r = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8,
                                            temperature=0, logprobs=3)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), len(lp.token_logprobs))
        self.assertEqual(len(lp.tokens), len(lp.top_logprobs))
        self.assertEqual(lp.text_offset[0], 0)
        for i, (token, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
            self.assertLessEqual(value, 0.0)
            self.assertIn(token, top)
            self.assertAlmostEqual(max(top.values()), value, places=6)  # greedy: the best one
            if i > 0:
                self.assertEqual(lp.text_offset[i],
                                 lp.text_offset[i - 1] + len(lp.tokens[i - 1].encode("utf-8")))
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        # The served greedy text is what `alem generate` (its own code path) prints.
        self.assertEqual(r.choices[0].text, generate_cli(PROMPT, 8))

    def test_limits(self):
        with self.assertRaises(openai.BadRequestError) as ctx:
            client(SOLO).chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                 max_tokens=2, logprobs=True, top_logprobs=21)
        self.assertIn("top_logprobs", str(ctx.exception))
        status, body = post(SOLO, "/v1/completions", {"model": MODEL_NAME, "prompt": "x",
                                                      "logprobs": 21})
        self.assertEqual((status, body["error"]["param"]), (400, "logprobs"))
        status, body = post(SOLO, "/v1/completions", {"model": MODEL_NAME, "prompt": "x",
                                                      "echo": True, "logprobs": 1})
        self.assertEqual((status, body["error"]["param"]), (400, "echo"))
        self.assertIn("'logprobs'", body["error"]["message"])

    @unittest.skipIf(not shutil.which("mpirun"), "mpirun not installed")
    def test_tp3_equals_one_rank(self):
        solo, tp3 = chat_logprobs(SOLO), chat_logprobs(TP3)
        self.assertEqual(solo.message.content, tp3.message.content)
        worst = 0.0
        for a, b in zip(solo.logprobs.content, tp3.logprobs.content):
            self.assertEqual(a.token, b.token)
            self.check_entry(b, 5)
            worst = max(worst, abs(a.logprob - b.logprob))
            self.assertEqual([t.token for t in a.top_logprobs], [t.token for t in b.top_logprobs])
            for x, y in zip(a.top_logprobs, b.top_logprobs):
                worst = max(worst, abs(x.logprob - y.logprob))
        self.assertLess(worst, 1e-3)
        print(f"tp3 vs 1 rank: worst logprob difference {worst:.2e}")
        r1 = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6,
                                             temperature=0, logprobs=2)
        r3 = client(TP3).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6,
                                            temperature=0, logprobs=2)
        for a, b in zip(r1.choices[0].logprobs.token_logprobs,
                        r3.choices[0].logprobs.token_logprobs):
            self.assertLess(abs(a - b), 1e-3)


class EchoAndStopReason(unittest.TestCase):
    def test_echo(self):
        r = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4,
                                            temperature=0, echo=True)
        plain = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4,
                                                temperature=0)
        self.assertEqual(r.choices[0].text, PROMPT + plain.choices[0].text)
        streamed = "".join(c.choices[0].text for c in client(SOLO).completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
            stream=True) if c.choices)
        self.assertEqual(streamed, r.choices[0].text)

    def test_stop_reason(self):
        plain = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8,
                                                temperature=0)
        self.assertIsNone(plain.choices[0].model_extra.get("stop_reason"))  # length: null
        text = plain.choices[0].text
        stop = text.strip()[:3]
        r = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8,
                                            temperature=0, stop=[stop])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].model_extra.get("stop_reason"), stop)
        # A stop token id: the first generated token.
        ids = post(SOLO, "/tokenize", {"model": MODEL_NAME, "prompt": PROMPT + text})[1]["tokens"]
        prompt_ids = post(SOLO, "/tokenize", {"prompt": PROMPT})[1]["tokens"]
        self.assertEqual(ids[:len(prompt_ids)], prompt_ids)
        first = ids[len(prompt_ids)]
        status, body = post(SOLO, "/v1/completions", {"model": MODEL_NAME, "prompt": PROMPT,
                                                      "max_tokens": 8, "temperature": 0,
                                                      "stop_token_ids": [first]})
        self.assertEqual(status, 200)
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        self.assertEqual(body["choices"][0]["stop_reason"], first)
        # Chat ends on <|im_end|>, the model's end of turn: stop_reason null.
        r = client(SOLO).chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                 max_tokens=200, temperature=0)
        if r.choices[0].finish_reason == "stop":
            self.assertIsNone(r.choices[0].model_extra.get("stop_reason"))


class Tokenize(unittest.TestCase):
    def test_round_trip(self):
        status, body = post(SOLO, "/tokenize", {"model": MODEL_NAME, "prompt": PROMPT})
        self.assertEqual(status, 200)
        self.assertEqual(body["count"], len(body["tokens"]))
        self.assertEqual(body["max_model_len"], 1024)
        r = client(SOLO).completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1)
        self.assertEqual(r.usage.prompt_tokens, body["count"])
        status, back = post(SOLO, "/detokenize", {"model": MODEL_NAME, "tokens": body["tokens"]})
        self.assertEqual((status, back["prompt"]), (200, PROMPT))

    def test_messages(self):
        status, body = post(SOLO, "/tokenize", {"model": MODEL_NAME, "messages": MESSAGES,
                                                "add_generation_prompt": True})
        self.assertEqual(status, 200)
        r = client(SOLO).chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                 max_tokens=1)
        self.assertEqual(r.usage.prompt_tokens, body["count"])
        text = post(SOLO, "/detokenize", {"tokens": body["tokens"]})[1]["prompt"]
        self.assertIn("Name three colours.", text)
        self.assertTrue(text.rstrip().endswith("assistant"))

    def test_errors_and_key(self):
        status, body = post(SOLO, "/tokenize", {"model": MODEL_NAME, "prompt": PROMPT},
                            key="wrong")
        self.assertEqual(status, 401)
        status, body = post(SOLO, "/tokenize", {"model": "other-model", "prompt": PROMPT})
        self.assertEqual(status, 404)
        status, body = post(SOLO, "/detokenize", {"tokens": [10 ** 9]})
        self.assertEqual((status, body["error"]["param"]), (400, "tokens"))
        status, body = post(SOLO, "/tokenize", {"model": MODEL_NAME})
        self.assertEqual(status, 400)
        status, _, _ = curl(SOLO.base + "/tokenize", extra=("-H", f"Authorization: Bearer {KEY}"))
        self.assertEqual(status, 405)  # GET


if __name__ == "__main__":
    unittest.main(verbosity=2)
