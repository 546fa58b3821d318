#!/usr/bin/env python3
"""Canary test: a prompt must leave no trace outside the answer it was sent for.

Starts the real `alem serve` on 127.0.0.1 (port 0, JSON logs) in a fresh working folder with its
own TMPDIR, sends completions and chat requests (plain, streamed, and refused ones) whose text
carries a random canary, drains the server (SIGTERM; SIGUSR1 under mpirun), then searches every log line, the
server's stdout and stderr, and every file under the working and temporary folders for the
canary (as text, hex and base64). It may appear only in the HTTP answers this test received. A
planted copy shows that the search does find it.

Also checks that core dumps are off: the live server's RLIMIT_CORE (/proc/PID/limits) is 0 and
its start-up log says it is not dumpable; and a scratch `alem generate`, given the highest core
limit and killed with SIGABRT mid-run, dumps no core (a `sleep` child under the same limit shows
what this machine does without the hardening).

Usage: test_canary.py [single|multirank] (default both). Needs ALEM_BINARY and ALEM_TEST_MODEL;
exits 77 (skipped) when they are missing. Stops by itself: every wait has a deadline.
"""

import base64
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ALEM = os.environ.get("ALEM_BINARY", "build/alem")
MODEL = os.path.abspath(os.environ.get("ALEM_TEST_MODEL", "models/smollm2-135m-instruct.h5"))
SERVED = "SmolLM2-135M-Instruct"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def json_lines(path):
    out = []
    with open(path, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            if line.strip().startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def forms(canary):
    """The canary as it could be written: text, hex, base64 (at each alignment)."""
    raw = canary.encode()
    out = {canary, raw.hex(), raw.hex().upper()}
    for shift in range(3):  # base64 of the canary inside longer data, at any byte alignment
        enc = base64.b64encode(b"x" * shift + raw).decode()
        out.add(enc[4 * ((shift + 2) // 3) + 1:-4])
    return [f for f in out if len(f) >= 12]


def search(root, needles):
    """Paths (and which form) under root whose bytes contain any needle."""
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for n in needles:
                if n.encode() in data:
                    hits.append(f"{path} ({n[:16]}...)")
    return hits


def serve_with_canary(ranks, extra_args):
    canary = "zq" + secrets.token_hex(10) + "canary"
    top = tempfile.mkdtemp(prefix="alem-canary-")
    work, tmp, logs = (os.path.join(top, d) for d in ("work", "tmp", "logs"))
    for d in (work, tmp, logs):
        os.makedirs(d)
    env = dict(os.environ, ALEM_LOG_FORMAT="json", TMPDIR=tmp, OMP_NUM_THREADS="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", HOME=work)
    args = [ALEM, "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", "0",
            "--max-model-len", "512", "--drain-seconds", "20", *extra_args]
    if ranks > 1:
        args = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np",
                str(ranks), "-x", "ALEM_LOG_FORMAT", "-x", "TMPDIR", "-x", "OMP_NUM_THREADS",
                *args]
    out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        port = None
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            events = json_lines(err_path) + json_lines(out_path)
            for e in events:
                if e.get("msg") == "listening":
                    port = int(e["port"])
            if port and get(f"http://127.0.0.1:{port}/health")[0] == 200:
                break
            time.sleep(0.3)
        check(port is not None and proc.poll() is None, f"[{ranks} rank] server is healthy")
        if port is None:
            return
        base = f"http://127.0.0.1:{port}"
        statuses, answered = [], 0
        # The server processes: alem itself, or mpirun's alem children.
        if ranks == 1:
            server_pids = [proc.pid]
        else:
            found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
            server_pids = [int(p) for p in found.stdout.split()]
        check(len(server_pids) == ranks, f"[{ranks} rank] found the server processes {server_pids}")
        requests = [
            ("/v1/completions", {"model": SERVED, "prompt": f"Repeat after me: {canary}",
                                 "max_tokens": 12, "temperature": 0}),
            ("/v1/completions", {"model": SERVED, "prompt": f"The secret is {canary}. It is",
                                 "max_tokens": 12, "stream": True,
                                 "stream_options": {"include_usage": True}}),
            ("/v1/chat/completions", {"model": SERVED, "max_tokens": 12, "messages": [
                {"role": "system", "content": f"Keep {canary} private."},
                {"role": "user", "content": f"What is {canary}?"}]}),
            ("/v1/chat/completions", {"model": SERVED, "max_tokens": 8, "stream": True,
                                      "messages": [{"role": "user", "content": canary}],
                                      "stop": [canary]}),
            # Refused requests: their error answers and logs must not carry the prompt either.
            ("/v1/completions", {"model": "no-such-model", "prompt": canary, "max_tokens": 4}),
            ("/v1/completions", {"model": SERVED, "prompt": canary, "max_tokens": 100000}),
            ("/v1/chat/completions", {"model": SERVED, "messages": [{"role": "user",
                                                                     "content": canary}],
                                      "temperature": "hot"}),
        ]
        for path, body in requests:
            status, text = post(base + path, body)
            statuses.append(status)
            if status == 200:
                answered += '"choices"' in text or "data:" in text
            print(f"     {path} -> {status}", flush=True)
        check(answered == 4 and statuses[4:] == [404, 400, 400],
              f"[{ranks} rank] the server answered the canary requests and refused the bad ones")

        # Core dumps are off in the live server.
        for pid in server_pids:
            try:
                with open(f"/proc/{pid}/limits") as f:
                    core = [line for line in f if line.startswith("Max core file size")]
                limits = core[0].split()[4:6] if core else []
                check(limits == ["0", "0"],
                      f"[{ranks} rank] live server pid {pid} has RLIMIT_CORE 0 ({limits})")
            except OSError as e:
                check(False, f"[{ranks} rank] cannot read /proc/{pid}/limits: {e}")
        hygiene = [e for e in json_lines(err_path) + json_lines(out_path)
                   if e.get("msg") == "memory hygiene"]
        check(len(hygiene) == ranks and all(str(e.get("dumpable")) == "0" for e in hygiene),
              f"[{ranks} rank] every rank logged dumpable 0 ({len(hygiene)} lines)")
        kv = [e for e in json_lines(err_path) + json_lines(out_path)
              if e.get("msg", "").startswith("sensitive memory")]
        check(len(kv) == ranks and all(int(e.get("mapped_bytes", 0)) > 0 for e in kv),
              f"[{ranks} rank] every rank logged its KV cache as sensitive memory")
        if "--sandbox" in extra_args:
            boxes = [e for e in json_lines(err_path) + json_lines(out_path)
                     if e.get("msg", "").startswith("sandbox")]
            check(len(boxes) == ranks and all(int(e.get("seccomp_rules", 0)) > 0 and
                                              str(e.get("no_new_privs")) == "1" for e in boxes),
                  f"[{ranks} rank] every rank entered the sandbox (seccomp, no_new_privs)")
    finally:
        if proc.poll() is None:
            # Drain: SIGTERM for a lone server; under mpirun SIGUSR1, which mpirun forwards to
            # every rank (SIGTERM would make mpirun kill the ranks), as the Slurm script does.
            os.killpg(proc.pid, signal.SIGTERM if ranks == 1 else signal.SIGUSR1)
            try:
                code = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(timeout=10)
            expected = 0 if ranks == 1 else 75  # SIGTERM ends, SIGUSR1 asks for the requeue
            check(code == expected, f"[{ranks} rank] drained (exit {code})")
            if code != expected:
                print("\n".join(open(err_path, errors="replace").read().splitlines()[-15:]))

    needles = forms(canary)
    leaks = search(top, needles)
    check(not leaks, f"[{ranks} rank] canary found nowhere on disk or in logs: {leaks[:5]}")
    lines = len(open(err_path, "rb").read().splitlines()) + len(open(out_path, "rb").read().splitlines())
    check(lines > 3, f"[{ranks} rank] the server did log ({lines} lines searched)")
    # The search can fail: a planted copy (base64, inside other bytes) is found.
    with open(os.path.join(tmp, "planted"), "wb") as f:
        f.write(b"prefix" + base64.b64encode(b"xx" + canary.encode()) + b"suffix")
    check(search(top, needles), f"[{ranks} rank] the search finds a planted copy of the canary")
    shutil.rmtree(top, ignore_errors=True)


def abort_child(args, cwd):
    """Starts args with the highest core limit, SIGABRTs it after a moment; (signal, dumped)."""
    def raise_core_limit():
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=raise_core_limit, env=dict(os.environ, OMP_NUM_THREADS="1"))
    time.sleep(3)
    os.kill(proc.pid, signal.SIGABRT)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0  # reaped here
    return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            os.WIFSIGNALED(status) and os.WCOREDUMP(status))


def core_dump_check():
    scratch = tempfile.mkdtemp(prefix="alem-core-")
    sig, dumped = abort_child(["sleep", "30"], scratch)
    control = "dumps a core" if dumped else "dumps no core (core_pattern or limits)"
    print(f"     control: an unhardened `sleep` on SIGABRT {control}", flush=True)
    before = set(os.listdir(scratch))
    sig, dumped = abort_child([ALEM, "generate", "--model", MODEL, "--prompt", "Count: 1 2 3",
                               "--max-tokens", "400", "--ignore-eos", "--quiet"], scratch)
    check(sig == signal.SIGABRT, f"scratch alem generate ended by SIGABRT (signal {sig})")
    check(not dumped, "the kernel wrote no core dump of alem generate")
    new = [f for f in set(os.listdir(scratch)) - before if f.startswith("core")]
    check(not new, f"no core file appeared in its working folder ({new})")
    shutil.rmtree(scratch, ignore_errors=True)


def main():
    if not (os.access(ALEM, os.X_OK) and os.path.exists(MODEL)):
        print("skip: needs ALEM_BINARY and ALEM_TEST_MODEL")
        return 77
    which = sys.argv[1:] or ["single", "multirank"]
    if "single" in which:
        serve_with_canary(1, [])
        core_dump_check()
    if "multirank" in which:
        if shutil.which("mpirun"):
            # Three ranks, tensor parallel, in sandbox mode: the hardening must not break MPI.
            serve_with_canary(3, ["--tp", "3", "--sandbox"])
        else:
            print("skip: multirank needs mpirun")
    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        return 1
    print("all canary checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
