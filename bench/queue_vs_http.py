#!/usr/bin/env python3
"""The network queue's overhead: the same requests through the queue versus straight HTTP on
the same `alem serve` process.

It starts one `alem serve` (optionally under mpirun with --tp) that serves HTTP on 127.0.0.1
and is also the provider of a local `alem netsim` (plaintext gRPC, no faults). Then, on that
same server and with the same request bodies (streaming completions of exactly --max-tokens
tokens each, ignore_eos, greedy, distinct prompts):
  http   N requests over HTTP/SSE with C in flight, timed here;
  queue  N requests through the simulator (sealed, leased, streamed back as sealed chunks,
         opened and checked), timed by the simulator from its first submission to its last
         answer (its report's wall_s).
Both report requests/s and completion tokens/s; the overhead is the relative difference.
Before the queue run, while the simulator waits (--settle-s), the server is warmed up with a
few HTTP requests; the queue run goes first, then the HTTP run.
Python standard library only.

  bench/queue_vs_http.py --alem build/alem --model models/smollm2-135m-instruct.h5 \
      --requests 24 --concurrency 4 --max-tokens 16 [--ranks 3] [--json out.json]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

FILLER = "The river runs past the old mill and the market square, where people meet."


def events(path):
    out = []
    with open(path, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def wait_event(path, msg, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in events(path):
            if e.get("msg") == msg:
                return e
        if proc.poll() is not None:
            sys.exit(f"{path}: process exited before '{msg}'")
        time.sleep(0.2)
    sys.exit(f"timed out waiting for '{msg}' in {path}")


def bodies(args, model):
    return [{"model": model, "prompt": f"[{i}] {FILLER}", "max_tokens": args.max_tokens,
             "temperature": 0, "ignore_eos": True} for i in range(args.requests)]


def http_one(base, body):
    body = dict(body, stream=True, stream_options={"include_usage": True})
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return tokens


def http_run(base, all_bodies, concurrency):
    lock = threading.Lock()
    queue = list(all_bodies)
    totals = {"tokens": 0, "done": 0}

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop(0)
            t = http_one(base, body)
            with lock:
                totals["tokens"] += t
                totals["done"] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": totals["done"], "completion_tokens": totals["tokens"], "wall_s": wall,
            "requests_per_s": totals["done"] / wall, "tokens_per_s": totals["tokens"] / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alem", default="build/alem")
    ap.add_argument("--model", default="models/smollm2-135m-instruct.h5")
    ap.add_argument("--model-name", default="SmolLM2-135M-Instruct")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--ranks", type=int, default=1, help="mpirun -np N with --tp N")
    ap.add_argument("--settle-s", type=float, default=20,
                    help="time the simulator waits after registration; the HTTP warm-up runs in it")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="alem-queue-bench-")
    env = dict(os.environ, ALEM_LOG_FORMAT="json", OMPI_MCA_rmaps_base_oversubscribe="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    all_bodies = bodies(args, args.model_name)
    req_file = os.path.join(work, "requests.jsonl")
    with open(req_file, "w") as f:
        for b in all_bodies:
            body = {k: v for k, v in b.items() if k != "model"}
            f.write(json.dumps({"endpoint": "/v1/completions", "body": body}) + "\n")
    report = os.path.join(work, "report.json")
    netsim_log, serve_log = os.path.join(work, "netsim.log"), os.path.join(work, "serve.log")
    netsim = subprocess.Popen(
        [args.alem, "netsim", "--listen", "127.0.0.1:0", "--insecure",
         "--accept-software-evidence", "--requests", str(args.requests), "--concurrency",
         str(args.concurrency), "--requests-file", req_file, "--report", report,
         "--wait-provider-s", "600", "--run-s", "3000", "--linger-s", "0",
         "--settle-s", str(args.settle_s)],
        stdout=open(netsim_log, "wb"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True)
    port = int(wait_event(netsim_log, "listening", netsim, 30)["port"])
    cmd = [args.alem, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
           "--network-endpoint", f"127.0.0.1:{port}", "--network-insecure",
           "--provider-key", os.path.join(work, "provider.key"),
           "--usage-journal", os.path.join(work, "usage.journal"), "--attestation", "off"]
    if args.ranks > 1:
        cmd = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np",
               str(args.ranks), "-x", "OMP_NUM_THREADS", "-x", "ALEM_LOG_FORMAT", *cmd,
               "--tp", str(args.ranks)]
    serve = subprocess.Popen(cmd, stdout=open(serve_log, "wb"), stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
    try:
        http_port = int(wait_event(serve_log, "listening", serve, 300)["port"])
        base = f"http://127.0.0.1:{http_port}"
        # Warm-up over HTTP while the simulator waits (--settle-s): the first requests of a
        # fresh server pay for allocations that neither path should be charged for.
        warm = [dict(b, prompt="warm-up " + b["prompt"]) for b in all_bodies[:args.concurrency]]
        http_run(base, warm, args.concurrency)
        wait_event(netsim_log, "netsim load started", netsim, args.settle_s + 600)
        if netsim.wait(timeout=3000) != 0:
            sys.exit(f"alem netsim failed; see {netsim_log}")
        with open(report) as f:
            q = json.load(f)
        queue = {k: q[k] for k in ("completed", "completion_tokens", "wall_s", "requests_per_s",
                                   "tokens_per_s")}
        http = http_run(base, all_bodies, args.concurrency)
    finally:
        for p in (serve, netsim):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    overhead = 1 - queue["tokens_per_s"] / http["tokens_per_s"]
    print(f"{'path':6} {'requests':>8} {'tokens':>7} {'wall s':>8} {'req/s':>7} {'tok/s':>7}")
    for name, r in (("http", http), ("queue", queue)):
        n = r.get("requests", r.get("completed"))
        print(f"{name:6} {n:>8} {r['completion_tokens']:>7} {r['wall_s']:>8.2f} "
              f"{r['requests_per_s']:>7.2f} {r['tokens_per_s']:>7.1f}")
    print(f"queue overhead (tokens/s): {overhead * 100:.1f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"http": http, "queue": queue, "overhead": overhead,
                       "config": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
