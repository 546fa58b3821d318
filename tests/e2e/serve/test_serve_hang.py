"""End-to-end test of hang detection in `alem serve` (mpirun --oversubscribe -np 3, --tp 3, the
default --collective-timeout 20 and --heartbeat-interval 1): a follower rank stopped with
SIGSTOP while the server is idle must turn /health and /v1/models to 503 within 5 s (COCOON's
worker stops routing then), and end the whole job, non-zero, within 45 s, with an abort message
that names the stopped rank. Before that, an idle server must stay healthy (heartbeats keep it
so). Everything the test started is killed by PID at the end, never by name.
"""

import os
import re
import shutil
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Server, http_get  # noqa: E402
from test_serve_multirank import rank_pids  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"


def kill_by_pid(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class HangDetection(unittest.TestCase):
    def setUp(self):
        if not shutil.which("mpirun"):
            raise unittest.SkipTest("mpirun not installed")

    def test_stopped_rank_fails_health_then_the_job(self):
        server = Server(["--tp", "3", "--max-model-len", "1024", "--kv-cache-mb", "128"], ranks=3)
        pids = rank_pids(server.proc.pid)
        try:
            self.assertEqual(sorted(pids), [0, 1, 2])
            # Idle for longer than the staleness limit (3 s): heartbeats keep it healthy.
            end = time.time() + 5
            while time.time() < end:
                self.assertEqual(http_get(server.base + "/health")[0], 200)
                self.assertEqual(http_get(server.base + "/v1/models")[0], 200)
                time.sleep(0.25)

            os.kill(pids[2], signal.SIGSTOP)  # a follower that no longer answers
            stopped_at = time.time()
            health_503 = models_503 = None
            while time.time() - stopped_at < 10 and (health_503 is None or models_503 is None):
                if health_503 is None and http_get(server.base + "/health", 2)[0] == 503:
                    health_503 = time.time() - stopped_at
                if models_503 is None and http_get(server.base + "/v1/models", 2)[0] == 503:
                    models_503 = time.time() - stopped_at
                time.sleep(0.1)
            print(f"\n    /health 503 after {health_503} s, /v1/models 503 after {models_503} s",
                  file=sys.stderr)
            self.assertIsNotNone(health_503, "/health still 200 10 s after SIGSTOP")
            self.assertIsNotNone(models_503, "/v1/models still 200 10 s after SIGSTOP")
            self.assertLess(health_503, 5)
            self.assertLess(models_503, 5)

            code = server.wait(45 - (time.time() - stopped_at))
            ended = time.time() - stopped_at
            print(f"    job exited {code} after {ended:.1f} s", file=sys.stderr)
            self.assertNotEqual(code, 0)
            log = "\n".join(server.log_lines())
            abort = re.search(r"alem: rank (\d+) on (\S+) failed: (.*)", log)
            self.assertIsNotNone(abort, log[-3000:])
            print(f"    {abort.group(0)[:300]}", file=sys.stderr)
            self.assertRegex(abort.group(3), r"heartbeat answer of rank 2 on \S+")
            # /health said why in the log before the abort.
            self.assertTrue(any(e.get("msg", "").startswith("engine stalled")
                                for e in server.log_events()), log[-3000:])
        finally:
            kill_by_pid([server.proc.pid, *pids.values()])
            server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
