#!/usr/bin/env python3
"""Load generator for a running `alem serve` (or any OpenAI-compatible server).

For each concurrency level N it keeps N streaming requests in flight (each client sends its
requests one after another), every request generating exactly --max-tokens tokens (ignore_eos),
and reports:
  tok/s     aggregate completion tokens per second over the level's wall time
  TTFT      time to first token, per request (p50, p95, p99)
  ITL       inter-token latency: gaps between consecutive streamed tokens (p50, p95, p99)
as a table on stdout and as CSV (--csv). Uses the official `openai` async client.

  bench/serve_load.py --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct \
      --concurrency 1,4,16,64 --max-tokens 64 --csv results/serve_load.csv
"""

import argparse
import asyncio
import csv
import itertools
import secrets
import sys
import time

import openai

# Every request of a run gets its own number, across all levels and rounds, and every run its
# own tag, so no request shares a prompt prefix with an earlier one (at another level, in another
# round, or from an earlier run against the same server) and the prefix cache never serves it.
RUN_TAG = secrets.token_hex(4)
REQUEST_NUMBERS = itertools.count()

FILLER = ("The history of the city spans many centuries, from its founding as a small river "
          "settlement to the busy capital it is today. ")


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one_request(client, args, index):
    """Streams one completion; returns (completion_tokens, ttft_s, [itl_s...], ok)."""
    # A distinct first block per request, so the prefix cache does not flatter the figures.
    prompt = f"[{RUN_TAG}-{index}] " + FILLER * max(1, args.prompt_words // 20)
    start = time.perf_counter()
    first, last, gaps, tokens, text_chunks = None, None, [], 0, 0
    try:
        stream = await client.completions.create(
            model=args.model, prompt=prompt, max_tokens=args.max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                text_chunks += 1
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    except openai.APIError as e:
        print(f"request {index} failed: {e}", file=sys.stderr)
        return 0, None, [], False
    # A server that sends no usage chunk: count streamed pieces (one per token on most servers).
    tokens = tokens or text_chunks
    return tokens, (first - start) if first else None, gaps, True


async def run_level(args, concurrency):
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="unused", max_retries=0,
                                timeout=args.timeout)
    requests_per_client = max(1, args.requests // concurrency) if args.requests else args.rounds
    results = []

    async def worker():
        for _ in range(requests_per_client):
            results.append(await one_request(client, args, next(REQUEST_NUMBERS)))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    tokens = sum(r[0] for r in results)
    ttfts = [r[1] for r in results if r[1] is not None]
    gaps = [g for r in results for g in r[2]]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "failed": sum(1 for r in results if not r[3]),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50_s": percentile(ttfts, 0.50),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "itl_p50_s": percentile(gaps, 0.50),
        "itl_p95_s": percentile(gaps, 0.95),
        "itl_p99_s": percentile(gaps, 0.99),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", default="1,4,16,64",
                   help="comma-separated concurrency levels")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument("--prompt-words", type=int, default=60, help="approximate prompt length")
    p.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    p.add_argument("--requests", type=int, default=0,
                   help="total requests per level instead of --rounds (split over the clients)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--csv", help="write the results here too")
    p.add_argument("--label", default="", help="a layout label for the CSV (e.g. tp1, tp3)")
    args = p.parse_args()

    rows = []
    header = (f"{'N':>4} {'reqs':>5} {'fail':>4} {'tokens':>7} {'wall s':>8} {'tok/s':>8} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'speedup':>7}")
    print(header)
    base_rate = None
    for level in [int(x) for x in args.concurrency.split(",") if x.strip()]:
        row = asyncio.run(run_level(args, level))
        base_rate = base_rate or row["tokens_per_s"]
        row["speedup_vs_first"] = row["tokens_per_s"] / base_rate if base_rate else float("nan")
        row["label"] = args.label
        rows.append(row)
        print(f"{row['concurrency']:>4} {row['requests']:>5} {row['failed']:>4} "
              f"{row['completion_tokens']:>7} {row['wall_s']:>8.2f} {row['tokens_per_s']:>8.1f} "
              f"{row['ttft_p50_s'] * 1e3:>7.0f}ms {row['ttft_p99_s'] * 1e3:>7.0f}ms "
              f"{row['itl_p50_s'] * 1e3:>6.0f}ms {row['itl_p99_s'] * 1e3:>6.0f}ms "
              f"{row['speedup_vs_first']:>6.2f}x", flush=True)
    if args.csv:
        fields = ["label", "concurrency", "requests", "failed", "completion_tokens", "wall_s",
                  "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "ttft_p99_s", "itl_p50_s",
                  "itl_p95_s", "itl_p99_s",
                  "speedup_vs_first"]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
