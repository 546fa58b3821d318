"""End-to-end test of `alem serve --dp 2` under mpirun --oversubscribe -np 2: two replicas of the
whole model behind one gateway (engine/dp_router.h). Greedy output must equal a single-rank
`alem generate`; concurrent requests must be spread over both replicas (per-replica metrics);
/v1/status and `alem status` must show both; SIGUSR1 drains both and every rank exits with 75.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import unittest

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import ALEM, Server, generate_cli, http_get, parallel  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"
SERVER = None


def setUpModule():
    global SERVER
    if not shutil.which("mpirun"):
        raise unittest.SkipTest("mpirun not installed")
    SERVER = Server(["--dp", "2", "--max-model-len", "512", "--kv-cache-mb", "64"], ranks=2)


def tearDownModule():
    if SERVER:
        SERVER.stop()


def client():
    return openai.OpenAI(base_url=SERVER.base + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


class DataParallel(unittest.TestCase):
    def test_1_greedy_equals_single_rank_generate(self):
        prompt = "The capital of France is"
        expected = generate_cli(prompt, 12)
        for _ in range(2):  # whichever replica takes it
            r = client().completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12,
                                            temperature=0)
            self.assertEqual(r.choices[0].text, expected)

    def test_2_concurrent_requests_use_both_replicas(self):
        def ask(i):
            r = client().completions.create(model=MODEL_NAME, prompt=f"Number {i} is",
                                            max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
            return r.usage.completion_tokens
        self.assertEqual(parallel(ask, [(i,) for i in range(6)]), [8] * 6)
        m = SERVER.metrics()
        for replica in ("0", "1"):
            self.assertGreater(m[f'alem_generation_tokens_total{{replica="{replica}"}}'], 0,
                               f"replica {replica} generated nothing")

    def test_3_status_shows_both_replicas(self):
        status, body = http_get(SERVER.base + "/v1/status")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertEqual(doc["layout"]["dp"], 2)
        self.assertEqual([r["replica"] for r in doc["replicas"]], [0, 1])
        self.assertTrue(all(r["alive"] for r in doc["replicas"]))
        self.assertEqual(len(doc["ranks"]), 2)
        out = subprocess.run([ALEM, "status", "--url", SERVER.base], capture_output=True,
                             timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertIn("tp 1 x pp 1 x dp 2 = 2 ranks", out.stdout.decode())

    def test_4_drain_exits_75_on_every_rank(self):
        SERVER.signal(signal.SIGUSR1)
        self.assertEqual(SERVER.wait(120), 75)


if __name__ == "__main__":
    unittest.main(verbosity=2)
