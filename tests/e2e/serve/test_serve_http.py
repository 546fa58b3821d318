"""End-to-end tests of the HTTP layer of the real `alem serve` (Boost.Beast gateway, one rank).

What the unit test (tests/unit/test_http_server.cc, fake engine) cannot show: the real binary
with the real model and the official `openai` client. An API key from --api-key-file (right key
works, wrong or missing key is openai.AuthenticationError, /health open by default and behind
the key with --api-key-protects health); a second server on the same port fails at start and
the first keeps serving; pipelined requests answered in order (also one sent while the first
generates, and a hang-up after it still cancels); a chunked body over
--max-body-bytes gets 413 without the server's memory growing; Content-Length with chunked gets
400; slow clients, more than the worker pool, while /health answers; a non-streaming client
that hangs up has its request cancelled at once; a canary inside a body refused for 1e999 (or
deep nesting) reaches neither the answer nor the log.
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import openai

try:  # the HTTP library under the openai client: httpx, or httpx2 in newer releases
    import httpx2 as httpx
except ImportError:
    import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import ALEM, MODEL, Server, curl, http_get, parallel  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"
KEY = "sk-alem-" + secrets.token_hex(16)
MAX_BODY = 64 * 1024
HEADER_TIMEOUT = 5
SERVER = None
KEY_FILE = None


def setUpModule():
    global SERVER, KEY_FILE
    fd, KEY_FILE = tempfile.mkstemp(prefix="alem-api-key-")
    os.write(fd, (KEY + "\n").encode())  # as `openssl rand -hex 32 > file` leaves it
    os.close(fd)
    os.chmod(KEY_FILE, 0o600)
    SERVER = Server(["--served-model-name", MODEL_NAME, "--max-model-len", "2048",
                     "--kv-cache-mb", "256", "--api-key-file", KEY_FILE,
                     "--max-body-bytes", str(MAX_BODY), "--http-threads", "2",
                     "--http-header-timeout", str(HEADER_TIMEOUT)], api_key=KEY)


def tearDownModule():
    if SERVER:
        SERVER.stop()
    if KEY_FILE:
        os.unlink(KEY_FILE)


def client(key=KEY, server=None):
    """The official client; key None sends no Authorization header at all (the client insists
    on a key, so an httpx hook takes the header off each request)."""
    http_client = None
    if key is None:
        http_client = httpx.Client(event_hooks={"request": [
            lambda request: request.headers.pop("Authorization", None)]})
    return openai.OpenAI(base_url=(server or SERVER).base + "/v1", api_key=key or "unset",
                         max_retries=0, timeout=120, http_client=http_client)


def auth_args(key=KEY):
    return ["-H", f"Authorization: Bearer {key}"]


def completion_body(prompt="Hello", **fields):
    return json.dumps({"model": MODEL_NAME, "prompt": prompt, **fields})


def raw_request(body, path="/v1/completions", extra_headers="", key=KEY):
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra_headers}\r\n{body}").encode()


def read_response(sock, buffered=b""):
    """Reads one HTTP/1.1 response with a Content-Length body: (status, headers, body, rest)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the headers ({len(data)} bytes)")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        rest += chunk
    return status, headers, rest[:length].decode("utf-8", "replace"), rest[length:]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def running(server=None):
    m = (server or SERVER).metrics()
    return m['alem_requests_running{replica="0"}'], m['alem_kv_blocks_used{replica="0"}'], m


class ApiKey(unittest.TestCase):
    def test_right_key_works(self):
        r = client().completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=3)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual([m.id for m in client().models.list().data], [MODEL_NAME])
        chunks = list(client().chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
            stream=True))
        self.assertTrue(chunks)

    def test_wrong_or_missing_key_is_authentication_error(self):
        for key in ("sk-wrong", KEY + "x", KEY[:-1], KEY.upper(), None):
            with self.assertRaises(openai.AuthenticationError) as ctx:
                client(key).completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=3)
            self.assertEqual(ctx.exception.status_code, 401)
            self.assertEqual(ctx.exception.code, "invalid_api_key")
            self.assertEqual(ctx.exception.type, "invalid_request_error")
            if key is None:  # really sent without the header
                self.assertIn("didn't provide an API key", ctx.exception.message)
            with self.assertRaises(openai.AuthenticationError):
                client(key).models.list()
        # No Authorization header at all: OpenAI's 401 shape, WWW-Authenticate, key not echoed.
        status, head, text = curl(SERVER.base + "/v1/completions", completion_body())
        self.assertEqual(status, 401)
        self.assertIn("www-authenticate: bearer", head.lower())
        error = json.loads(text)["error"]
        self.assertEqual((error["type"], error["code"]), ("invalid_request_error",
                                                           "invalid_api_key"))
        self.assertIn("param", error)
        status, _, text = curl(SERVER.base + "/v1/completions", completion_body(),
                               extra=auth_args("sk-wrong-key-1234"))
        self.assertEqual(status, 401)
        self.assertNotIn("sk-wrong-key-1234", text)
        self.assertNotIn(KEY, "\n".join(SERVER.log_lines()))  # the key is never logged

    def test_health_and_metrics_open_by_default(self):
        self.assertEqual(http_get(SERVER.base + "/health")[0], 200)
        status, body = http_get(SERVER.base + "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("alem_requests_running", body)
        self.assertEqual(http_get(SERVER.base + "/v1/status")[0], 401)

    def test_alem_status_sends_the_key_from_the_environment(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("ALEM_API_KEY", "ALEM_API_KEY_FILE")}
        refused = subprocess.run([ALEM, "status", "--url", SERVER.base], env=env,
                                 capture_output=True, text=True, timeout=60)
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertIn("requires an API key", refused.stderr)
        for name, value in (("ALEM_API_KEY", KEY), ("ALEM_API_KEY_FILE", KEY_FILE)):
            ok = subprocess.run([ALEM, "status", "--url", SERVER.base, "--json"],
                                env={**env, name: value}, capture_output=True, text=True,
                                timeout=60)
            self.assertEqual(ok.returncode, 0, name + ": " + ok.stderr)
            self.assertEqual(json.loads(ok.stdout)["state"], "ready")
            self.assertNotIn(KEY, ok.stdout + ok.stderr)

    def test_protects_health_with_key_from_environment(self):
        server = Server(["--served-model-name", MODEL_NAME, "--max-model-len", "512",
                         "--kv-cache-mb", "64", "--api-key-protects", "health,metrics"],
                        env={"ALEM_API_KEY": KEY}, api_key=KEY)
        try:
            for path in ("/health", "/metrics"):
                self.assertEqual(http_get(server.base + path)[0], 401, path)
                status, head, _ = curl(server.base + path, extra=auth_args("sk-wrong"))
                self.assertEqual(status, 401, path)
                self.assertEqual(http_get(server.base + path, headers=server.auth())[0], 200)
            r = client(server=server).completions.create(model=MODEL_NAME, prompt="Hi",
                                                         max_tokens=2)
            self.assertEqual(len(r.choices), 1)
            with self.assertRaises(openai.AuthenticationError):
                client("nope", server).completions.create(model=MODEL_NAME, prompt="Hi",
                                                          max_tokens=2)
        finally:
            server.stop()


class Port(unittest.TestCase):
    def test_second_server_on_same_port_fails_and_first_serves(self):
        log = tempfile.NamedTemporaryFile(prefix="alem-serve-second-", delete=False)
        env = dict(os.environ, ALEM_LOG_FORMAT="text", OMP_NUM_THREADS="1")
        second = subprocess.run([ALEM, "serve", "--model", MODEL, "--host", "127.0.0.1",
                                 "--port", str(SERVER.port)], stdout=log, stderr=log, env=env,
                                timeout=120)
        log.close()
        with open(log.name, errors="replace") as f:
            text = f.read()
        os.unlink(log.name)
        self.assertEqual(second.returncode, 1, text[-2000:])  # a runtime error, at start
        self.assertIn(f"alem: error: cannot listen on 127.0.0.1:{SERVER.port}", text)
        self.assertIn("holds this port", text)
        # Every request still reaches the first server (no SO_REUSEPORT split).
        def ask(i):
            return client().completions.create(model=MODEL_NAME, prompt=f"Count {i}",
                                               max_tokens=2).id
        ids = parallel(ask, [(i,) for i in range(12)])
        self.assertEqual(len(set(ids)), 12)
        for _ in range(12):
            self.assertEqual(http_get(SERVER.base + "/health")[0], 200)


class Wire(unittest.TestCase):
    def test_five_pipelined_requests_answered_in_order(self):
        sock = socket.create_connection(("127.0.0.1", SERVER.port), timeout=120)
        try:
            # Exactly k tokens each (ignore_eos), so the answers show their order.
            payload = b"".join(raw_request(completion_body(f"Pipelined {k}", max_tokens=k,
                                                           ignore_eos=True, temperature=0))
                               for k in range(1, 6))
            sock.sendall(payload)  # all five at once, before reading anything
            rest = b""
            for k in range(1, 6):
                status, _, body, rest = read_response(sock, rest)
                self.assertEqual(status, 200, body)
                self.assertEqual(json.loads(body)["usage"]["completion_tokens"], k)
            # The connection stays usable afterwards.
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(read_response(sock, rest)[0], 200)
        finally:
            sock.close()

    def test_request_pipelined_while_one_generates(self):
        # The second request arrives while the first is generating: both are answered, in order
        # (it once reset the connection and cancelled the first request).
        for stream in (False, True):
            sock = socket.create_connection(("127.0.0.1", SERVER.port), timeout=120)
            try:
                sock.sendall(raw_request(completion_body("Generate", max_tokens=40, stream=stream,
                                                         ignore_eos=True, temperature=0)))
                time.sleep(0.5)
                sock.sendall(raw_request(completion_body("Then", max_tokens=3, ignore_eos=True)))
                data = b""
                while data.count(b"HTTP/1.1 200") < 2 or b'"completion_tokens":3' not in data:
                    chunk = sock.recv(65536)
                    self.assertTrue(chunk, f"connection closed (stream={stream}): {data[-300:]}")
                    data += chunk
                first = data.index(b"HTTP/1.1 200")
                if stream:
                    self.assertIn(b"data: [DONE]", data[:data.index(b"HTTP/1.1 200", first + 1)])
                else:
                    self.assertIn(b'"completion_tokens":40', data)
            finally:
                sock.close()

    def test_pipelined_then_hangup_cancels(self):
        sock = socket.create_connection(("127.0.0.1", SERVER.port))
        sock.sendall(raw_request(completion_body("Write a very long story.", max_tokens=1500,
                                                 ignore_eos=True)))
        deadline = time.time() + 60
        while running()[0] < 1 and time.time() < deadline:
            time.sleep(0.1)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # read ahead, not answered yet
        time.sleep(0.5)
        self.assertEqual(running()[0], 1, "the pipelined bytes ended the running request")
        sock.close()
        hung_up = time.time()
        while running()[:2] != (0, 0) and time.time() < hung_up + 10:
            time.sleep(0.1)
        self.assertEqual(running()[:2], (0, 0))
        self.assertLess(time.time() - hung_up, 5.0)

    def test_chunked_body_over_limit_is_413_and_memory_bounded(self):
        pid = SERVER.proc.pid
        before = rss_kib(pid)
        sock = socket.create_connection(("127.0.0.1", SERVER.port), timeout=30)
        answer, sent = [], [0]
        done = threading.Event()

        def send():  # up to 64 MiB of chunks, until the server answers or closes
            chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
            try:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                             b"Bearer " + KEY.encode() + b"\r\nContent-Type: application/json"
                             b"\r\nTransfer-Encoding: chunked\r\n\r\n")
                while sent[0] < (64 << 20) and not done.is_set():
                    sock.sendall(chunk)
                    sent[0] += 65536
            except OSError:
                pass

        sender = threading.Thread(target=send)
        sender.start()
        try:
            status, _, body, _ = read_response(sock)
            answer.append((status, body))
        finally:
            done.set()
            sender.join(30)
            sock.close()
        status, body = answer[0]
        self.assertEqual(status, 413, body)
        self.assertEqual(json.loads(body)["error"]["code"], "payload_too_large")
        self.assertLess(sent[0], 32 << 20, "the server kept reading the oversized body")
        grown = rss_kib(pid) - before
        self.assertLess(grown, 32 * 1024, f"RSS grew by {grown} KiB")
        self.assertEqual(http_get(SERVER.base + "/health")[0], 200)

    def test_chunked_body_and_expect_continue_within_limit_are_served(self):
        body = completion_body("Chunked", max_tokens=2).encode()
        halves = (body[:10], body[10:])
        sock = socket.create_connection(("127.0.0.1", SERVER.port), timeout=120)
        try:
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         f"{KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: "
                         f"chunked\r\n\r\n".encode() +
                         b"".join(b"%x\r\n%s\r\n" % (len(h), h) for h in halves) + b"0\r\n\r\n")
            status, _, text, rest = read_response(sock)
            self.assertEqual(status, 200, text)
            self.assertEqual(json.loads(text)["usage"]["completion_tokens"], 2)
            # Expect: 100-continue: the interim answer first, then the body, then the answer.
            sock.sendall(raw_request("", extra_headers="Expect: 100-continue\r\n")
                         .replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)))
            interim = rest
            while b"\r\n\r\n" not in interim:
                interim += sock.recv(4096)
            self.assertTrue(interim.startswith(b"HTTP/1.1 100"), interim[:40])
            sock.sendall(body)
            status, _, text, _ = read_response(sock, interim.partition(b"\r\n\r\n")[2])
            self.assertEqual(status, 200, text)
        finally:
            sock.close()

    def test_content_length_with_chunked_is_400(self):
        sock = socket.create_connection(("127.0.0.1", SERVER.port), timeout=30)
        try:
            body = completion_body(max_tokens=1)
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body.encode())
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         f"{KEY}\r\nContent-Type: application/json\r\nContent-Length: "
                         f"{len(chunked)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() +
                         chunked)
            status, headers, text, _ = read_response(sock)
        finally:
            sock.close()
        self.assertEqual(status, 400, text)
        self.assertEqual(json.loads(text)["error"]["type"], "invalid_request_error")
        self.assertEqual(headers.get("connection", "").lower(), "close")

    def test_slow_clients_beyond_pool_while_health_answers(self):
        # Twelve clients (the pool has 2 workers) trickling a request line a byte at a time.
        slow = [socket.create_connection(("127.0.0.1", SERVER.port)) for _ in range(12)]
        line = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
        stop = threading.Event()

        def trickle():
            for i in range(len(line)):
                for s in slow:
                    try:
                        s.send(line[i:i + 1])
                    except OSError:
                        pass
                if stop.wait(0.5):
                    return

        t = threading.Thread(target=trickle)
        t.start()
        try:
            t0 = time.time()
            for _ in range(6):
                start = time.time()
                self.assertEqual(http_get(SERVER.base + "/health", timeout=5)[0], 200)
                self.assertLess(time.time() - start, 3.0)  # at once, but the machine is shared
                time.sleep(0.3)
            r = client().completions.create(model=MODEL_NAME, prompt="Still here?", max_tokens=2)
            self.assertEqual(len(r.choices), 1)
            # The header deadline closes them (no answer possible once the deadline passed).
            for s in slow:
                s.settimeout(max(1.0, HEADER_TIMEOUT + 10 - (time.time() - t0)))
                try:
                    self.assertEqual(s.recv(4096), b"")
                except ConnectionResetError:
                    pass
        finally:
            stop.set()
            t.join()
            for s in slow:
                s.close()


class HangUp(unittest.TestCase):
    def test_non_streaming_hangup_cancels_at_once(self):
        before = SERVER.metrics()
        key = 'alem_request_failure_total{replica="0",reason="client_disconnect"}'
        sock = socket.create_connection(("127.0.0.1", SERVER.port))
        sock.sendall(raw_request(completion_body("Write a very long story.", max_tokens=1500,
                                                 ignore_eos=True, temperature=0)))
        deadline = time.time() + 60
        while time.time() < deadline:
            count, used, _ = running()
            if count >= 1 and used > 0:
                break
            time.sleep(0.1)
        self.assertEqual(count, 1, "the request never ran")
        time.sleep(1.0)  # a few tokens in
        sock.close()
        hung_up = time.time()
        while time.time() < hung_up + 10:
            count, used, m = running()
            if count == 0 and used == 0:
                break
            time.sleep(0.1)
        took = time.time() - hung_up
        self.assertEqual((count, used), (0, 0), "the request kept running after the hang-up")
        self.assertLess(took, 5.0)
        self.assertEqual(m[key], before[key] + 1)
        gen = m['alem_generation_tokens_total{replica="0"}'] - \
            before['alem_generation_tokens_total{replica="0"}']
        self.assertLess(gen, 1500)


class BoundedJson(unittest.TestCase):
    def test_canary_in_refused_body_never_logged(self):
        canary = "zq" + secrets.token_hex(10) + "canary"
        bodies = [
            '{"model": "%s", "prompt": "%s", "temperature": 1e999}' % (MODEL_NAME, canary),
            '{"model": "%s", "prompt": "%s", "max_tokens": -1e999}' % (MODEL_NAME, canary),
            '{"model": "%s", "messages": [{"role": "user", "content": "%s"}], "top_p": 1e999}'
            % (MODEL_NAME, canary),
            '{"prompt": "%s", "x": %s1%s}' % (canary, "[" * 500, "]" * 500),
            '{"prompt": "%s", "x": 1e999' % canary,  # and truncated
        ]
        paths = ["/v1/completions", "/v1/completions", "/v1/chat/completions",
                 "/v1/completions", "/v1/completions"]
        for body, path in zip(bodies, paths):
            status, _, text = curl(SERVER.base + path, body, extra=auth_args())
            self.assertEqual(status, 400, text)
            self.assertEqual(json.loads(text)["error"]["type"], "invalid_request_error")
            self.assertNotIn(canary, text)
        self.assertIn("1e999", bodies[0])
        status, _, text = curl(SERVER.base + "/v1/completions", bodies[0], extra=auth_args())
        self.assertIn("number", json.loads(text)["error"]["message"])
        # Still serving, and nothing of the bodies in the server's log.
        r = client().completions.create(model=MODEL_NAME, prompt="ok", max_tokens=1)
        self.assertEqual(len(r.choices), 1)
        time.sleep(0.5)
        log = "\n".join(SERVER.log_lines())
        self.assertNotIn(canary, log)
        self.assertNotIn(canary.encode().hex(), log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
