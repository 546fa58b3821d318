"""End-to-end tests of `alem serve` on one rank, through the official `openai` client and curl.

What a user and a COCOON worker see: both endpoints, streaming and not, usage for billing,
n > 1, stop strings, seeds, greedy output equal to `alem generate` (an independent code path),
concurrency, every error answer, and a client that hangs up mid-stream.
"""

import json
import os
import socket
import sys
import time
import unittest

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Server, curl, generate_cli, http_get, parallel  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
SERVER = None


def setUpModule():
    global SERVER
    SERVER = Server(["--served-model-name", MODEL_NAME, "--max-model-len", "1024",
                     "--max-num-seqs", "16", "--kv-cache-mb", "256"])


def tearDownModule():
    if SERVER:
        SERVER.stop()


def client():
    return openai.OpenAI(base_url=SERVER.base + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def sse_events(body):
    """The data payloads of an SSE body, in order ("[DONE]" kept as a string)."""
    events = []
    for block in body.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block[:80]
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


class Discovery(unittest.TestCase):
    def test_health_and_models(self):
        status, _ = http_get(SERVER.base + "/health")
        self.assertEqual(status, 200)
        models = client().models.list()
        self.assertEqual([m.id for m in models.data], [MODEL_NAME])
        self.assertEqual(models.data[0].owned_by, "alem")

    def test_metrics_has_replica_label(self):
        m = SERVER.metrics()
        for name in ("alem_requests_running", "alem_requests_waiting", "alem_kv_blocks_used",
                     "alem_kv_blocks_capacity", "alem_generation_tokens_per_second"):
            self.assertIn(name + '{replica="0"}', m)
        self.assertGreater(m['alem_kv_blocks_capacity{replica="0"}'], 0)


class Completions(unittest.TestCase):
    def test_greedy_equals_alem_generate(self):
        expected = generate_cli(PROMPT, 24)
        r = client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24,
                                        temperature=0)
        self.assertEqual(r.choices[0].text, expected)
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.object, "text_completion")
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        u = r.usage
        self.assertGreater(u.prompt_tokens, 0)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        if r.choices[0].finish_reason == "length":
            self.assertEqual(u.completion_tokens, 24)

    def test_chat_greedy_equals_alem_generate_chat(self):
        question = "What is 2 plus 2?"
        expected = generate_cli(question, 32, chat=True)
        r = client().chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": question}], max_tokens=32,
            temperature=0)
        self.assertEqual(r.choices[0].message.content, expected)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.id.startswith("chatcmpl-"))

    def test_stream_equals_non_stream(self):
        full = client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=20,
                                           temperature=0)
        pieces, finish = [], None
        for chunk in client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=20,
                                                 temperature=0, stream=True):
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason or finish
        self.assertEqual("".join(pieces), full.choices[0].text)
        self.assertEqual(finish, full.choices[0].finish_reason)

    def test_chat_stream_with_usage(self):
        chunks = list(client().chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        last = chunks[-1]
        self.assertEqual(last.choices, [])
        self.assertIsNotNone(last.usage)
        self.assertEqual(last.usage.total_tokens,
                         last.usage.prompt_tokens + last.usage.completion_tokens)
        finishes = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices]
        self.assertIn(finishes[-1], ("stop", "length"))
        for c in chunks[:-1]:
            self.assertIsNone(c.usage)

    def test_n_choices_are_separate_sequences(self):
        r = client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12,
                                        temperature=1.0, seed=7, n=2)
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1])
        again = client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12,
                                            temperature=1.0, seed=7, n=2)
        self.assertEqual([c.text for c in r.choices], [c.text for c in again.choices])
        self.assertGreaterEqual(r.usage.completion_tokens, 2)

    def test_n_choices_stream(self):
        texts, finishes = {0: "", 1: ""}, {}
        for chunk in client().chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                temperature=0.7, seed=3, n=2, stream=True):
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
                if c.finish_reason:
                    finishes[c.index] = c.finish_reason
        self.assertEqual(set(finishes), {0, 1})

    def test_seed_reproducible(self):
        def sample(seed):
            return client().completions.create(model=MODEL_NAME, prompt="Once upon a time",
                                               max_tokens=16, temperature=0.9, seed=seed)
        a, b = sample(1234), sample(1234)
        self.assertEqual(a.choices[0].text, b.choices[0].text)
        others = {sample(s).choices[0].text for s in (1, 2, 3)}
        self.assertGreater(len(others | {a.choices[0].text}), 1, "seeds should matter")

    def test_stop_string_excluded(self):
        full = client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=30,
                                           temperature=0, extra_body={"ignore_eos": True}).choices[0].text
        self.assertGreater(len(full), 12, full)
        stop = full[6:10]
        expected = full[:full.index(stop)]
        r = client().completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=30,
                                        temperature=0, extra_body={"ignore_eos": True}, stop=[stop])
        self.assertEqual(r.choices[0].text, expected)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        streamed = "".join(c.choices[0].text for c in client().completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=30, temperature=0, extra_body={"ignore_eos": True},
            stop=stop, stream=True) if c.choices)
        self.assertEqual(streamed, expected)

    def test_prompt_as_token_ids_and_batch(self):
        r = client().completions.create(model=MODEL_NAME, prompt=[[504, 3575], [1780]],
                                        max_tokens=4, temperature=0)
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1])

    def test_prefix_cache_reported(self):
        messages = [{"role": "system", "content": "You are a helpful assistant. " * 8},
                    {"role": "user", "content": "Name a colour."}]
        first = client().chat.completions.create(model=MODEL_NAME, messages=messages,
                                                 max_tokens=4, temperature=0)
        second = client().chat.completions.create(model=MODEL_NAME, messages=messages,
                                                  max_tokens=4, temperature=0)
        self.assertGreater(second.usage.prompt_tokens_details.cached_tokens, 0)
        self.assertLess(second.usage.prompt_tokens_details.cached_tokens,
                        second.usage.prompt_tokens)
        self.assertEqual(first.choices[0].message.content, second.choices[0].message.content)

    def test_eight_concurrent_streams(self):
        def stream(i):
            text, finish = "", None
            for chunk in client().chat.completions.create(
                    model=MODEL_NAME, messages=[{"role": "user", "content": f"Count to {i + 3}."}],
                    max_tokens=24, temperature=0, stream=True,
                    stream_options={"include_usage": True}):
                for c in chunk.choices:
                    text += c.delta.content or ""
                    finish = c.finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage
            return text, finish, usage
        results = parallel(stream, [(i,) for i in range(8)])
        for text, finish, usage in results:
            self.assertIn(finish, ("stop", "length"))
            self.assertGreater(usage.completion_tokens, 0)


class CocoonShape(unittest.TestCase):
    def test_worker_forwarded_request(self):
        # Exactly what a COCOON worker runner forwards: chat, streamed, usage in the last chunk.
        body = {"model": MODEL_NAME,
                "messages": [{"role": "system", "content": "You are concise."},
                             {"role": "user", "content": "Tell me a fact about the sea."}],
                "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": 24, "temperature": 0.6}
        status, head, text = curl(SERVER.base + "/v1/chat/completions", json.dumps(body))
        self.assertEqual(status, 200, text)
        self.assertIn("text/event-stream", head)
        events = sse_events(text)
        self.assertEqual(events[-1], "[DONE]")
        final = events[-2]
        self.assertEqual(final["choices"], [])
        usage = final["usage"]
        self.assertGreater(usage["prompt_tokens"], 0)
        self.assertGreater(usage["completion_tokens"], 0)
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + usage["completion_tokens"])
        self.assertIn("cached_tokens", usage["prompt_tokens_details"])
        self.assertEqual(usage["completion_tokens_details"]["reasoning_tokens"], 0)
        self.assertEqual(events[0]["choices"][0]["delta"]["role"], "assistant")
        content_chunks = [e for e in events[:-2] if e["choices"][0]["delta"].get("content")]
        self.assertEqual(len(content_chunks) > 0, True)


class Errors(unittest.TestCase):
    def post(self, body, path="/v1/completions"):
        status, head, text = curl(SERVER.base + path, body)
        return status, head, json.loads(text) if text.startswith("{") else text

    def test_malformed_json(self):
        status, _, body = self.post('{"model": "x", "prompt": tru')
        self.assertEqual(status, 400)
        self.assertIn("malformed JSON at line 1", body["error"]["message"])

    def test_wrong_types_name_the_field(self):
        for field, value in (("max_tokens", "ten"), ("temperature", "hot"), ("stream", "yes"),
                             ("n", 1.5), ("stop", 3)):
            status, _, body = self.post(json.dumps({"model": MODEL_NAME, "prompt": "x",
                                                    field: value}))
            self.assertEqual(status, 400, field)
            self.assertEqual(body["error"]["param"], field)
            self.assertIn(field, body["error"]["message"])
        status, _, body = self.post(json.dumps({"model": MODEL_NAME, "messages": "hi"}),
                                    "/v1/chat/completions")
        self.assertEqual((status, body["error"]["param"]), (400, "messages"))

    def test_unknown_model(self):
        status, _, body = self.post(json.dumps({"model": "gpt-4", "prompt": "x"}))
        self.assertEqual(status, 404)
        self.assertEqual(body["error"]["code"], "model_not_found")
        with self.assertRaises(openai.NotFoundError):
            client().completions.create(model="gpt-4", prompt="x", max_tokens=1)

    def test_prompt_longer_than_context(self):
        status, _, body = self.post(json.dumps({"model": MODEL_NAME,
                                                "prompt": "hello " * 1500, "max_tokens": 4}))
        self.assertEqual(status, 400)
        self.assertIn("maximum context length is 1024", body["error"]["message"])
        with self.assertRaises(openai.BadRequestError):
            client().completions.create(model=MODEL_NAME, prompt="hi", max_tokens=5000)

    def test_impossible_params(self):
        for extra in ({"n": 0}, {"n": 9}, {"temperature": -1}, {"top_p": 0}, {"max_tokens": 0},
                      {"logprobs": 21}):
            status, _, body = self.post(json.dumps({"model": MODEL_NAME, "prompt": "x", **extra}))
            self.assertEqual(status, 400, extra)
            self.assertEqual(body["error"]["param"], next(iter(extra)))

    def test_body_too_large(self):
        status, _, body = self.post(json.dumps({"model": MODEL_NAME, "prompt": "x" * (2 << 20)}))
        self.assertEqual(status, 413)
        self.assertEqual(body["error"]["code"], "payload_too_large")

    def test_unknown_path_and_server_still_serves(self):
        status, _, _ = curl(SERVER.base + "/v1/nothing-here")
        self.assertEqual(status, 404)
        r = client().completions.create(model=MODEL_NAME, prompt="ok", max_tokens=2)
        self.assertEqual(len(r.choices), 1)

    def test_unknown_keys_are_ignored(self):
        status, _, body = self.post(json.dumps({"model": MODEL_NAME, "prompt": "x",
                                                "max_tokens": 2, "made_up_key": {"a": 1}}))
        self.assertEqual(status, 200, body)


class Disconnect(unittest.TestCase):
    def test_client_hangup_frees_blocks(self):
        before = SERVER.metrics()
        body = json.dumps({"model": MODEL_NAME, "prompt": "Write a long story.", "stream": True,
                           "max_tokens": 600, "ignore_eos": True, "temperature": 0})
        sock = socket.create_connection(("127.0.0.1", SERVER.port))
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        received = b""
        while received.count(b"data: ") < 3:
            chunk = sock.recv(4096)
            self.assertTrue(chunk, "server closed the stream early")
            received += chunk
        during = SERVER.metrics()
        self.assertGreater(during['alem_kv_blocks_used{replica="0"}'], 0)
        sock.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            m = SERVER.metrics()
            if m['alem_kv_blocks_used{replica="0"}'] == 0 and m['alem_requests_running{replica="0"}'] == 0:
                break
            time.sleep(0.2)
        self.assertEqual(m['alem_kv_blocks_used{replica="0"}'], 0)
        key = 'alem_request_failure_total{replica="0",reason="client_disconnect"}'
        self.assertEqual(m[key], before[key] + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
