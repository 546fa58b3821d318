#!/usr/bin/env python3
"""Runs `alem serve` and llama.cpp's `llama-server` side by side under the same load.

Why: issue 4 asks how alem's continuous batching compares with llama.cpp's parallel slots on
the same model, precision and machine. On a shared, noisy machine only figures taken close
together compare, so this driver keeps both servers up (each idle while the other is measured)
and alternates between them at every concurrency level, flipping which goes first each time.
It reuses bench/serve_load.py's request loop, so both see the same prompts (a distinct first
token per request, so neither prefix cache helps), the same max_tokens with ignore_eos, greedy.

Each --pair is ALEM_STORE=GGUF_FILE=LABEL[=EXTRA LLAMA-SERVER ARGS]. Before measuring, both servers answer one greedy
request; the prompt token counts must match (same tokenizer) and the script prints for how
many characters the two greedy texts agree (a precision check, informational: the two engines
round differently). Output: a table per pair with aggregate decode tok/s, TTFT p50/p95, ITL p50, and
the N-stream / 1-stream ratio for each server, plus a CSV (--csv).

  bench/llama_server_compare.py --alem build/alem --llama-server PATH/llama-server \
      --pair models/smollm2-135m-instruct.h5=PATH/smollm2-bf16.gguf=bf16 --threads 1
"""

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process on 127.0.0.1; stopped with SIGINT, then SIGKILL after a grace."""

    def __init__(self, name, argv, env, log_path):
        self.name = name
        self.port = free_port()
        self.argv = [a.replace("{PORT}", str(self.port)) for a in argv]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout_s=300):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while "
                                   f"starting; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s; see {self.log.name}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def greedy_probe(server, prompt, max_tokens):
    """One non-streaming greedy completion: (prompt_tokens, completion_tokens, text)."""
    body = json.dumps({"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(f"{server.base_url}/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        out = json.load(r)
    return (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"],
            out["choices"][0]["text"])


def load_args(args):
    """The options serve_load.run_level reads, for one server."""
    return argparse.Namespace(model=MODEL_NAME, max_tokens=args.max_tokens,
                              prompt_words=args.prompt_words, rounds=args.rounds,
                              requests=0, timeout=args.timeout, base_url=None)


def fmt_ms(seconds):
    return f"{seconds * 1e3:.0f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alem", required=True, help="the alem binary")
    p.add_argument("--llama-server", required=True, help="llama.cpp's llama-server binary")
    p.add_argument("--pair", action="append", required=True,
                   help="ALEM_STORE=GGUF_FILE=LABEL (repeatable)")
    p.add_argument("--levels", default="1,4,16", help="concurrent streams")
    p.add_argument("--threads", type=int, default=2,
                   help="OMP_NUM_THREADS for alem and --threads/--threads-batch for llama-server")
    p.add_argument("--parallel", type=int, default=16, help="llama-server slots (-np)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2, help="requests per stream at each level")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--log-dir", default=".", help="where the servers' logs go")
    p.add_argument("--csv")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    for level in levels:
        if level > args.parallel:
            p.error(f"level {level} exceeds llama-server's {args.parallel} slots")
    os.makedirs(args.log_dir, exist_ok=True)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for pair in args.pair:
        parts = pair.split("=", 3)
        if len(parts) < 3:
            p.error(f"--pair wants ALEM_STORE=GGUF_FILE=LABEL[=EXTRA ARGS], got '{pair}'")
        store, gguf, label = parts[:3]
        llama_extra = parts[3].split() if len(parts) == 4 else []
        # Context per llama slot: prompt + completion with room to spare; alem the same limit.
        ctx_per_seq = 512
        alem_argv = [args.alem, "serve", "--model", store, "--host", "127.0.0.1", "--port",
                     "{PORT}", "--served-model-name", MODEL_NAME, "--max-model-len",
                     str(ctx_per_seq), "--max-num-seqs", str(args.parallel)]
        llama_argv = [args.llama_server, "-m", gguf, "--host", "127.0.0.1", "--port", "{PORT}",
                      "--alias", MODEL_NAME, "--threads", str(args.threads), "--threads-batch",
                      str(args.threads), "--parallel", str(args.parallel), "--cont-batching",
                      "--ctx-size", str(ctx_per_seq * args.parallel), "--no-webui"] + llama_extra
        tag = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in label)
        servers = [Server("alem", alem_argv, env, os.path.join(args.log_dir, f"alem-{tag}.log")),
                   Server("llama.cpp", llama_argv, env,
                          os.path.join(args.log_dir, f"llama-{tag}.log"))]
        try:
            for s in servers:
                s.wait_ready()
            probe_prompt = "[probe] " + serve_load.FILLER * 3
            probes = [greedy_probe(s, probe_prompt, 32) for s in servers]
            (pa, _, ta), (pl, _, tl) = probes
            if pa != pl:
                print(f"warning: prompt token counts differ: alem {pa}, llama.cpp {pl}",
                      file=sys.stderr)
            same = 0
            for a, b in zip(ta, tl):
                if a != b:
                    break
                same += 1
            agree = (f"32-token greedy texts agree on {same} of {max(len(ta), len(tl))} "
                     f"characters")
            llama_desc = " ".join([gguf] + llama_extra)
            print(f"\n## {label}: alem {store} vs llama.cpp {llama_desc}; "
                  f"prompt tokens {pa} / {pl}; {agree}", flush=True)
            base = {}
            for i, level in enumerate(levels):
                order = servers if i % 2 == 0 else servers[::-1]
                for s in order:
                    la = load_args(args)
                    la.base_url = s.base_url
                    row = asyncio.run(serve_load.run_level(la, level))
                    base.setdefault(s.name, row["tokens_per_s"])
                    row.update(label=label, server=s.name,
                               speedup_vs_first=row["tokens_per_s"] / base[s.name])
                    rows.append(row)
                    print(f"  {s.name:<9} N={level:<3} {row['tokens_per_s']:7.1f} tok/s  "
                          f"TTFT p50 {fmt_ms(row['ttft_p50_s'])} ms p95 "
                          f"{fmt_ms(row['ttft_p95_s'])} ms  ITL p50 {fmt_ms(row['itl_p50_s'])} ms"
                          f"  failed {row['failed']}", flush=True)
        finally:
            for s in servers:
                s.stop()

    print("\n| weights | server | streams | decode tok/s | TTFT p50 ms | TTFT p95 ms | "
          "ITL p50 ms | vs 1 stream |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['server']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | "
              f"{fmt_ms(r['ttft_p50_s'])} | {fmt_ms(r['ttft_p95_s'])} | "
              f"{fmt_ms(r['itl_p50_s'])} | {r['speedup_vs_first']:.2f}x |")
    if args.csv:
        fields = ["label", "server", "concurrency", "requests", "failed", "completion_tokens",
                  "wall_s", "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "ttft_p99_s",
                  "itl_p50_s", "itl_p95_s", "itl_p99_s", "speedup_vs_first"]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
