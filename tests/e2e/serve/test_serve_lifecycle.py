"""End-to-end tests of how `alem serve` behaves under pressure and when told to go: a full
waiting queue answers 429 with Retry-After; SIGUSR1/SIGTERM drains (503 for new work, requests
in flight finish; exit code 75 after SIGUSR1 for the Slurm requeue, 0 after SIGTERM); a drain
that runs out of time aborts what is left; SIGINT stops with exit code 0; the --config TOML is
read and flags override it.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import ALEM, MODEL, Server, curl, http_get, parallel  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"


def post(base, body, timeout=120):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def long_request(max_tokens, stream=False):
    return {"model": MODEL_NAME, "prompt": "Tell me everything.", "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": stream}


class Lifecycle(unittest.TestCase):
    def test_overload_then_drain(self):
        config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        config.write('[network]\nhost = "127.0.0.1"\nport = 1\nqueue = ""\n\n'
                     '[limits]\nmax_batch_tokens = 256\nmax_concurrent_requests = 1\n'
                     'max_context_tokens = 512\ndrain_seconds = 60\n')
        config.close()
        # --port 0 (from the harness) overrides the file's port 1.
        server = Server(["--config", config.name, "--max-waiting", "1", "--kv-cache-mb", "64"])
        try:
            status, body = http_get(server.base + "/v1/models")
            self.assertEqual(json.loads(body)["data"][0]["max_model_len"], 512)  # from [limits]

            # Long enough that the first is still running when the last arrives, however fast decode is.
            results = parallel(post, [(server.base, long_request(64)) for _ in range(5)])
            statuses = [r[0] for r in results]
            self.assertIn(200, statuses)
            self.assertIn(429, statuses, statuses)
            for status, headers, body in results:
                if status == 429:
                    self.assertIn("Retry-After", headers)
                    self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")
            m = server.metrics()
            self.assertGreater(m['alem_requests_rejected_total{reason="overloaded"}'], 0)

            # Drain: a request in flight finishes; new ones get 503; exit code 75. The request in
            # flight must outlast the checks below (300 tokens: seconds even on a fast core), or
            # the drain ends and the server has exited before the 503 is asked for.
            in_flight = {}
            t = threading.Thread(target=lambda: in_flight.update(
                result=post(server.base, long_request(300))))
            t.start()
            deadline = time.time() + 30
            while time.time() < deadline and server.metrics()['alem_requests_running{replica="0"}'] < 1:
                time.sleep(0.05)
            server.signal(signal.SIGUSR1)
            time.sleep(0.5)
            status, headers, body = post(server.base, long_request(2))
            self.assertEqual(status, 503, body)
            self.assertIn("Retry-After", headers)
            self.assertEqual(http_get(server.base + "/health")[0], 503)
            t.join(120)
            status, _, body = in_flight["result"]
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["choices"][0]["finish_reason"], "length")
            self.assertEqual(server.wait(60), 75)
        finally:
            server.stop()
            os.unlink(config.name)

    def test_drain_timeout_aborts_and_sigint_stops(self):
        server = Server(["--drain-seconds", "1", "--max-model-len", "4096"])
        try:
            chunks = []

            def stream():
                status, head, text = curl(server.base + "/v1/completions",
                                          json.dumps(long_request(3000, stream=True)))
                chunks.append((status, text))
            t = threading.Thread(target=stream)
            t.start()
            deadline = time.time() + 60
            while server.metrics()['alem_requests_running{replica="0"}'] < 1:
                self.assertLess(time.time(), deadline, f"request never ran: {chunks}")
                time.sleep(0.05)
            server.signal(signal.SIGTERM)
            t.join(60)
            status, text = chunks[0]
            self.assertEqual(status, 200)
            events = [b[len("data: "):] for b in text.split("\n\n") if b.startswith("data: ")]
            self.assertEqual(events[-1], "[DONE]")
            self.assertEqual(json.loads(events[-2])["choices"][0]["finish_reason"], "abort")
            self.assertEqual(server.wait(60), 0)  # SIGTERM ends the job: nothing to requeue
        finally:
            server.stop()

        server = Server([])
        server.signal(signal.SIGINT)
        self.assertEqual(server.wait(60), 0)
        server.stop()


def post_json(base, path, body, timeout=120):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


class ChatTemplateOverride(unittest.TestCase):
    def test_chat_template_file_replaces_the_models(self):
        # A template that writes only the last message's text: the chat prompt must then be
        # exactly as long as the same text sent as a plain completion prompt.
        with tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False) as f:
            f.write("{{ messages[-1]['content'] }}")
        text = "The quick brown fox jumps over the lazy dog, twice."
        server = Server(["--chat-template", f.name, "--kv-cache-mb", "64", "--max-model-len", "512"])
        try:
            chat = post_json(server.base, "/v1/chat/completions",
                             {"model": MODEL_NAME, "max_tokens": 1,
                              "messages": [{"role": "system", "content": "ignored"},
                                           {"role": "user", "content": text}]})
            plain = post_json(server.base, "/v1/completions",
                              {"model": MODEL_NAME, "max_tokens": 1, "prompt": text})
            self.assertEqual(chat["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"])
        finally:
            server.stop()
            os.unlink(f.name)

        # The model's own template (ChatML with a default system message) is longer.
        server = Server(["--kv-cache-mb", "64", "--max-model-len", "512"])
        try:
            chat = post_json(server.base, "/v1/chat/completions",
                             {"model": MODEL_NAME, "max_tokens": 1,
                              "messages": [{"role": "user", "content": text}]})
            self.assertGreater(chat["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"])
        finally:
            server.stop()

    def test_a_template_that_cannot_parse_fails_at_start(self):
        with tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False) as f:
            f.write("{% for m in messages %}{{ m.content }")
        try:
            r = subprocess.run([ALEM, "serve", "--model", MODEL, "--port", "0",
                                "--chat-template", f.name], capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("line 1", r.stderr)
            r = subprocess.run([ALEM, "serve", "--model", MODEL, "--port", "0",
                                "--chat-template", f.name + ".missing"], capture_output=True,
                               text=True, timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("cannot read chat template", r.stderr)
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
