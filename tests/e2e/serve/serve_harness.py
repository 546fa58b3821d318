"""Starts and stops a real `alem serve` for the end-to-end tests, on 127.0.0.1 only.

The server is started the way an operator would (optionally under mpirun), on a free port it
picks itself (--port 0; the port is read from its JSON "listening" log line), and every test
talks to it over HTTP. Nothing here imitates the server: if it does not answer, tests fail.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

ALEM = os.environ.get("ALEM_BINARY", "build/alem")
MODEL = os.environ.get("ALEM_TEST_MODEL", "models/smollm2-135m-instruct.h5")


class Server:
    """One `alem serve` process (or mpirun job) and its log."""

    def __init__(self, extra_args=(), ranks=1, env=None, ready_timeout=180, api_key=None):
        # api_key: the key the server requires, sent by the harness's own requests (/health
        # polling, /metrics) in case --api-key-protects puts those behind it.
        self.api_key = api_key
        self.log_path = tempfile.NamedTemporaryFile(prefix="alem-serve-", suffix=".log",
                                                    delete=False).name
        # ALEM_SERVE_TEST_ARGS adds flags to every server (scripts/gpu-check.sh: --backend cuda).
        args = [ALEM, "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", "0",
                *extra_args, *shlex.split(os.environ.get("ALEM_SERVE_TEST_ARGS", ""))]
        if ranks > 1:
            mpirun = shutil.which("mpirun")
            args = [mpirun, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks),
                    "-x", "OMP_NUM_THREADS=1", "-x", "ALEM_LOG_FORMAT", *args]
        full_env = dict(os.environ)
        full_env["ALEM_LOG_FORMAT"] = "json"
        full_env.setdefault("OMP_NUM_THREADS", "1")
        full_env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
        if env:
            full_env.update(env)
        self._log = open(self.log_path, "wb")
        # A new session so that signals reach the server (and mpirun) only when a test sends them.
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)
        self.port = None
        self._wait_ready(ready_timeout)

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()

    def log_events(self):
        events = []
        for line in self.log_lines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    def _wait_ready(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alem serve exited with {self.proc.returncode}:\n" +
                                   "\n".join(self.log_lines()[-30:]))
            if self.port is None:
                for e in self.log_events():
                    if e.get("msg") == "listening":
                        self.port = int(e["port"])
            if self.port is not None:
                status, _ = http_get(self.base + "/health", headers=self.auth())
                if status == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("alem serve did not become healthy in time:\n" +
                           "\n".join(self.log_lines()[-30:]))

    def auth(self):
        """The Authorization header the harness sends (none when the server has no key)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def signal(self, sig):
        os.killpg(self.proc.pid, sig) if self.proc.pid else None

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def metrics(self):
        """The /metrics exposition as {series-with-labels: value}."""
        status, body = http_get(self.base + "/metrics", headers=self.auth())
        assert status == 200, status
        values = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            # Every series also carries model_name="..."; tests key on the other labels.
            name = re.sub(r',?model_name="[^"]*"', "", name).replace("{,", "{").replace("{}", "")
            values[name] = float(value)
        return values


def http_get(url, timeout=5, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def curl(url, body=None, content_type="application/json", extra=()):
    """POSTs `body` (bytes or str) with curl; returns (status, headers text, body text)."""
    args = ["curl", "-s", "-S", "-D", "-", "-o", "-", "--max-time", "60", url, *extra]
    data_file = None
    if body is not None:
        data_file = tempfile.NamedTemporaryFile(delete=False)
        data_file.write(body.encode() if isinstance(body, str) else body)
        data_file.close()
        args += ["-H", f"Content-Type: {content_type}", "--data-binary", "@" + data_file.name]
    try:
        out = subprocess.run(args, capture_output=True, timeout=90).stdout.decode("utf-8", "replace")
    finally:
        if data_file:
            os.unlink(data_file.name)
    head, _, rest = out.partition("\r\n\r\n")
    while rest.startswith("HTTP/"):  # "100 Continue" before the real answer
        head, _, rest = rest.partition("\r\n\r\n")
    m = re.match(r"HTTP/\S+ (\d+)", head)
    return (int(m.group(1)) if m else None), head, rest


def generate_cli(prompt, max_tokens, chat=False, ranks=1, layout=()):
    """The completion `alem generate` prints for a greedy run (its independent code path)."""
    args = [ALEM, "generate", "--model", MODEL, "--prompt", prompt, "--max-tokens",
            str(max_tokens), "--temperature", "0", "--quiet"]
    if chat:
        args.append("--chat")
    env = dict(os.environ)
    if ranks > 1:
        args = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np",
                str(ranks), "-x", "OMP_NUM_THREADS=1", *args, *layout]
        env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    out = subprocess.run(args, capture_output=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    text = out.stdout.decode("utf-8")
    assert text.endswith("\n")
    return text[:-1]


def parallel(fn, args_list):
    """Runs fn(*args) for each args on its own thread; returns results in order (raises the
    first exception)."""
    results = [None] * len(args_list)
    errors = []

    def run(i, args):
        try:
            results[i] = fn(*args)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
