#!/usr/bin/env python3
"""Checks `alem plan` against measurement: runs `alem bench batch` at each layout and load
given, asks `alem plan --layout` for the same layout and workload (with a calibration file from
`alem bench calibrate`), and prints the predicted and measured tokens/s, TTFT and ITL side by
side with the relative errors, their median and the worst case (markdown table; --csv too).

  scripts/plan_check.py --alem build/alem --model models/smollm2-135m-instruct.h5 \
      --cluster plan/clusters/dev-2core.toml --calibration cal.json --csv check.csv

Layouts are TP,PP,DP with ranks on this machine (mpirun --oversubscribe). Nothing here asserts a
speed: the test that runs this (ctest -L plan) checks that every row was measured and
predicted; the accuracy is reported, in docs/planner.md.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile

DEFAULT_RUNS = [  # tp, pp, dp, concurrency per replica
    (1, 1, 1, 1), (1, 1, 1, 8), (3, 1, 1, 1), (3, 1, 1, 8), (1, 2, 1, 1), (1, 2, 1, 8),
    (1, 3, 1, 1), (1, 3, 1, 8), (1, 1, 2, 1), (1, 1, 2, 8), (1, 1, 3, 1), (1, 1, 3, 8),
]


def run(cmd, timeout):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"plan_check: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alem", default="build/alem")
    ap.add_argument("--model", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--calibration")
    ap.add_argument("--runs", help="semicolon list of TP,PP,DP,CONCURRENCY (default: 12 runs)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests-per-slot", type=int, default=2,
                    help="requests = concurrency x replicas x this")
    ap.add_argument("--csv")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per benchmark run")
    a = ap.parse_args()
    runs = DEFAULT_RUNS
    if a.runs:
        runs = [tuple(int(x) for x in r.split(",")) for r in a.runs.split(";") if r]
    env_threads = os.environ.get("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tp, pp, dp, conc in runs:
            ranks = tp * pp * dp
            requests = conc * dp * a.requests_per_slot
            out = os.path.join(tmp, f"r{tp}{pp}{dp}{conc}.json")
            bench = [a.alem, "bench", "batch", "-m", a.model, "--tp", str(tp), "--pp", str(pp),
                     "--dp", str(dp), "--batch", str(conc), "--concurrency", str(conc),
                     "--requests", str(requests), "--prompt-tokens", str(a.prompt_tokens),
                     "--max-tokens", str(a.max_tokens), "-o", out]
            if ranks > 1:
                bench = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", str(ranks),
                         "-x", f"OMP_NUM_THREADS={env_threads}"] + bench
            run(bench, a.timeout)
            with open(out) as f:
                m = json.load(f)
            plan = [a.alem, "plan", "-m", a.model, "-c", a.cluster, "--layout",
                    f"{tp},{pp},1,{dp}", "--max-ranks", str(ranks), "--prompt-tokens",
                    str(a.prompt_tokens), "--output-tokens", str(a.max_tokens),
                    "--concurrency", str(conc * dp), "--requests", str(requests), "--batch",
                    str(conc), "--json", "-"]
            if a.calibration:
                plan += ["--calibration", a.calibration]
            p = json.loads(run(plan, 60))["layouts"][0]
            if not p["fits"]:
                sys.exit(f"plan_check: the planner says tp{tp} pp{pp} dp{dp} does not fit: "
                         f"{p['why_not']}")
            r0 = m["replicas"][0]
            rows.append({
                "tp": tp, "pp": pp, "dp": dp, "concurrency": conc, "requests": requests,
                "measured_tok_s": m["generated_tokens_per_second"],
                "predicted_tok_s": p["tokens_per_s"],
                "measured_ttft_s": r0["ttft_p50_s"], "predicted_ttft_s": p["ttft_s"],
                "measured_itl_s": r0["itl_p50_s"], "predicted_itl_s": p["itl_s"],
            })
            print(f"measured tp{tp} pp{pp} dp{dp} c{conc}: {m['generated_tokens_per_second']:.1f} "
                  f"tok/s (predicted {p['tokens_per_s']:.1f})", file=sys.stderr, flush=True)

    def err(row, what):
        meas, pred = row[f"measured_{what}"], row[f"predicted_{what}"]
        return (pred - meas) / meas if meas > 0 else float("nan")

    print("| layout | conc. | tok/s measured | predicted | error | TTFT p50 ms meas. | pred. | "
          "error | ITL p50 ms meas. | pred. | error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {w: [] for w in ("tok_s", "ttft_s", "itl_s")}
    for r in rows:
        e = {w: err(r, w) for w in summary}
        for w in summary:
            r[f"error_{w}"] = e[w]
            if e[w] == e[w]:
                summary[w].append(abs(e[w]))
        print(f"| tp{r['tp']} pp{r['pp']} dp{r['dp']} | {r['concurrency']} | "
              f"{r['measured_tok_s']:.1f} | {r['predicted_tok_s']:.1f} | {e['tok_s']:+.0%} | "
              f"{r['measured_ttft_s']*1e3:.0f} | {r['predicted_ttft_s']*1e3:.0f} | {e['ttft_s']:+.0%} | "
              f"{r['measured_itl_s']*1e3:.1f} | {r['predicted_itl_s']*1e3:.1f} | {e['itl_s']:+.0%} |")
    print()
    for w, errs in summary.items():
        if errs:
            print(f"{w}: median |error| {statistics.median(errs):.0%}, worst {max(errs):.0%} "
                  f"over {len(errs)} runs")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            wr.writeheader()
            wr.writerows(rows)


if __name__ == "__main__":
    main()
