#!/usr/bin/env python3
"""Checks `alem plan` against measurement. For each layout and load, right before the run: a
full calibration at the model's own shapes (`alem bench calibrate -m MODEL`; with
`--calibrate round` only once per round), then `alem bench calibrate --collectives-only` with
the run's rank count (the load probe, each rank's core share, the collectives); then `alem bench
batch`, and `alem plan --layout` for the same layout and workload with that calibration.
Calibration and benchmark alternate, so both see the same machine load; --repeats rounds take
the layouts in a rotated order, and the table gives medians, with the load average of each run.

  scripts/plan_check.py --alem build/alem --model models/smollm2-135m-instruct.h5 \
      --cluster plan/clusters/dev-2core.toml --repeats 3 --csv check.csv --markdown check.md

Layouts are TP,PP,DP with ranks on this machine (mpirun --oversubscribe), or with `--launcher srun`
on the hosts of a Slurm cluster, one rank per host by default (the 4-host namespace cluster of
slurm/local/cluster-local.sh: ctest -L cluster). `--lock FILE` holds an flock on FILE around each
run's calibration and benchmark only, so other measurements can take turns between runs. Nothing
here asserts a speed: the tests that run this (ctest -L plan, -L cluster) check that every row
was measured and predicted; the accuracy is reported, in docs/planner.md.
"""
import fcntl
import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_RUNS = [  # tp, pp, dp, concurrency per replica
    (1, 1, 1, 1), (1, 1, 1, 8), (3, 1, 1, 1), (3, 1, 1, 8), (1, 2, 1, 1), (1, 2, 1, 8),
    (1, 3, 1, 1), (1, 3, 1, 8), (1, 1, 2, 1), (1, 1, 2, 8), (1, 1, 3, 1), (1, 1, 3, 8),
]
WHAT = ("tok_s", "ttft_s", "itl_s")


# Open MPI 4.1's TCP transport now and then crashes in MPI_Init while peers on other hosts
# connect (docs/operations.md); a launch that dies so is started again, loudly.
STARTUP_CRASH = "*** Process received signal ***"


def run(cmd, timeout, attempts=1):
    for attempt in range(attempts):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            return proc.stdout
        if attempt + 1 < attempts and STARTUP_CRASH in proc.stdout + proc.stderr:
            print("plan_check: Open MPI crashed at start-up (known race); launching again",
                  file=sys.stderr, flush=True)
            continue
        break
    sys.exit(f"plan_check: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


class MeasureLock:
    """flock on a file for one run's calibration and benchmark (nothing without --lock)."""

    def __init__(self, path):
        self.path, self.f = path, None

    def __enter__(self):
        if self.path:
            self.f = open(self.path, "a")
            fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        if self.f:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()
            self.f = None


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def launcher(a, ranks, threads):
    """The command prefix that starts `ranks` ranks (nothing for one rank on this machine)."""
    if a.launcher == "srun":  # one step of the cluster; the ranks spread over hosts
        hosts = (ranks + a.ranks_per_host - 1) // a.ranks_per_host
        return ["srun", "--kill-on-bad-exit=1", "--mpi=pmix" if ranks > 1 else "--mpi=none",
                "-N", str(hosts), "-n", str(ranks), f"--ntasks-per-node={a.ranks_per_host}",
                f"--time={max(1, a.timeout // 60)}"]
    if ranks == 1:
        return []
    return ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", str(ranks),
            "-x", f"OMP_NUM_THREADS={threads}"]


def attempts(a):
    return 3 if a.launcher == "srun" else 1


def calibrate_full(a, path, threads, dtype):
    run(launcher(a, 1, threads) +
        [a.alem, "bench", "calibrate", "-m", a.model, "--dtypes", dtype, "--threads",
         str(threads), "--seconds", str(a.calibration_seconds), "--repeats", "3", "-o", path],
        a.timeout, attempts(a))


def calibrate_now(a, path, ranks, threads):
    cmd = [a.alem, "bench", "calibrate", "--collectives-only", "-m", a.model, "--threads",
           str(threads), "-o", path]
    run(launcher(a, ranks, threads) + cmd, a.timeout, attempts(a))


def measure(a, tmp, tp, pp, dp, conc, threads, tag):
    ranks = tp * pp * dp
    requests = conc * dp * a.requests_per_slot
    out = os.path.join(tmp, f"bench-{tag}.json")
    bench = [a.alem, "bench", "batch", "-m", a.model, "--tp", str(tp), "--pp", str(pp),
             "--dp", str(dp), "--batch", str(conc), "--concurrency", str(conc),
             "--requests", str(requests), "--prompt-tokens", str(a.prompt_tokens),
             "--max-tokens", str(a.max_tokens), "-o", out]
    run(launcher(a, ranks, threads) + bench, a.timeout, attempts(a))
    with open(out) as f:
        m = json.load(f)
    reps = m["replicas"]
    return {"tok_s": m["generated_tokens_per_second"],
            "ttft_s": statistics.median(r["ttft_p50_s"] for r in reps),
            "itl_s": statistics.median(r["itl_p50_s"] for r in reps)}


def without_load_scale(cal, folder):
    """A copy of the calibration whose latest load probe reads as the full calibration's, so
    `alem plan` applies no load scaling (--no-load-scale)."""
    with open(cal) as f:
        j = json.load(f)
    j["load_probe_now_gbs"] = j.get("load_probe_gbs", 0.0)
    path = os.path.join(folder, "unscaled-" + os.path.basename(cal))
    with open(path, "w") as f:
        json.dump(j, f)
    return path


def predict(a, cal, tp, pp, dp, conc):
    if cal and a.no_load_scale:
        cal = without_load_scale(cal, a.scratch)
    ranks = tp * pp * dp
    requests = conc * dp * a.requests_per_slot
    plan = [a.alem, "plan", "-m", a.model, "-c", a.cluster, "--layout", f"{tp},{pp},1,{dp}",
            "--max-ranks", str(ranks), "--prompt-tokens", str(a.prompt_tokens),
            "--output-tokens", str(a.max_tokens), "--concurrency", str(conc * dp),
            "--requests", str(requests), "--batch", str(conc), "--json", "-"]
    if cal:
        plan += ["--calibration", cal]
    p = json.loads(run(plan, 60))["layouts"][0]
    if not p["fits"]:
        sys.exit(f"plan_check: the planner says tp{tp} pp{pp} dp{dp} does not fit: {p['why_not']}")
    return {"tok_s": p["tokens_per_s"], "ttft_s": p["ttft_s"], "itl_s": p["itl_s"]}


def rel(pred, meas):
    return (pred - meas) / meas if meas > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alem", default="build/alem")
    ap.add_argument("--model", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--calibration",
                    help="start every round from this file (from `alem bench calibrate -m`) "
                         "instead of calibrating at the round's start; it is still updated "
                         "right before each run")
    ap.add_argument("--dtype", default="bf16", help="the model's weight dtype (calibrated)")
    ap.add_argument("--calibrate", choices=("run", "round"), default="run",
                    help="full calibration before every run, or once per round (then only "
                         "the load probe before each run)")
    ap.add_argument("--runs", help="semicolon list of TP,PP,DP,CONCURRENCY (default: 12 runs)")
    ap.add_argument("--repeats", type=int, default=1, help="measurements of each run")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests-per-slot", type=int, default=2,
                    help="requests = concurrency x replicas x this")
    ap.add_argument("--calibration-seconds", type=float, default=0.1,
                    help="time per calibration measurement")
    ap.add_argument("--csv", help="every measurement, one row each")
    ap.add_argument("--markdown", help="also write the summary table to this file")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per command")
    ap.add_argument("--launcher", choices=("mpirun", "srun"), default="mpirun",
                    help="ranks on this machine (mpirun --oversubscribe) or a Slurm step on the "
                         "cluster's hosts (srun; SLURM_CONF names the cluster)")
    ap.add_argument("--ranks-per-host", type=int, default=1,
                    help="with --launcher srun: ranks on each host (as the cluster description's "
                         "node.devices)")
    ap.add_argument("--lock", help="flock this file around each run's calibration and benchmark")
    ap.add_argument("--label", default="", help="a word for every row (e.g. the link shaping)")
    ap.add_argument("--keep", help="keep each run's calibration file in this folder (the CSV "
                                   "names it), so --replan can predict again from it")
    ap.add_argument("--replan", metavar="CSV",
                    help="measure nothing: predict every row of an earlier --csv again from the "
                         "calibration files it kept (after a change to the model), and print "
                         "the table")
    ap.add_argument("--no-load-scale", action="store_true",
                    help="predict from the round's full calibration without scaling it by the "
                         "load probe taken right before each run (on an idle machine that "
                         "probe's own spread exceeds the load changes it tracks)")
    a = ap.parse_args()
    scratch = tempfile.TemporaryDirectory()
    a.scratch = scratch.name
    if a.replan:
        replan(a)
        return
    if a.launcher == "srun":
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")  # as the cluster tests run
    runs = DEFAULT_RUNS
    if a.runs:
        runs = [tuple(int(x) for x in r.split(",")) for r in a.runs.split(";") if r]
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            order = runs[rep % len(runs):] + runs[:rep % len(runs)]  # rotated each repeat
            round_cal = a.calibration or os.path.join(tmp, f"cal-{rep}.json")
            for i, (tp, pp, dp, conc) in enumerate(order):
                tag = f"{tp}-{pp}-{dp}-{conc}-{rep}"
                with MeasureLock(a.lock):
                    if not a.calibration and (i == 0 or a.calibrate == "run"):
                        calibrate_full(a, round_cal, threads, a.dtype)
                    cal = os.path.join(tmp, f"cal-{tag}.json")
                    shutil.copyfile(round_cal, cal)
                    calibrate_now(a, cal, tp * pp * dp, threads)
                    load_before = load_average()
                    m = measure(a, tmp, tp, pp, dp, conc, threads, tag)
                    load_after = load_average()
                if a.keep:
                    os.makedirs(a.keep, exist_ok=True)
                    kept = os.path.join(a.keep, f"cal-{a.label or 'run'}-{tag}.json")
                    shutil.copyfile(cal, kept)
                    cal = kept
                p = predict(a, cal, tp, pp, dp, conc)
                row = {"label": a.label, "repeat": rep, "tp": tp, "pp": pp, "dp": dp, "concurrency": conc,
                       "load_average": (load_before + load_after) / 2,
                       "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
                       "requests_per_slot": a.requests_per_slot,
                       "calibration": cal if a.keep else ""}
                for w in WHAT:
                    row[f"measured_{w}"] = m[w]
                    row[f"predicted_{w}"] = p[w]
                    row[f"error_{w}"] = rel(p[w], m[w])
                rows.append(row)
                if a.csv:  # rewritten after every run, so a run cut short keeps what it measured
                    write_csv(a.csv, rows)
                print(f"[{time.time() - started:5.0f} s] tp{tp} pp{pp} dp{dp} c{conc} #{rep}: "
                      f"measured {m['tok_s']:.1f} tok/s, predicted {p['tok_s']:.1f} "
                      f"({row['error_tok_s']:+.0%}), load {row['load_average']:.1f}",
                      file=sys.stderr, flush=True)

    print_table(a, runs, rows, f"{a.repeats} measurement(s) per run, "
                               f"{time.time() - started:.0f} s in all")


def replan(a):
    """Predicts the rows of an earlier check again from their kept calibration files."""
    with open(a.replan) as f:
        rows = list(csv.DictReader(f))
    if not rows or not rows[0].get("calibration"):
        sys.exit(f"plan_check: {a.replan} has no kept calibration files (measure with --keep)")
    runs, changed = [], 0
    for r in rows:
        for k, default in (("prompt_tokens", a.prompt_tokens), ("max_tokens", a.max_tokens),
                           ("requests_per_slot", a.requests_per_slot)):
            r.setdefault(k, default)  # a CSV from before these columns: the command line's
        for k in ("repeat", "tp", "pp", "dp", "concurrency", "prompt_tokens", "max_tokens",
                  "requests_per_slot"):
            r[k] = int(r[k])
        # The workload each row was measured with.
        a.prompt_tokens, a.max_tokens = r["prompt_tokens"], r["max_tokens"]
        a.requests_per_slot = r["requests_per_slot"]
        for k in [k for k in r if k.startswith(("measured_", "load_"))]:
            r[k] = float(r[k])
        key = (r["tp"], r["pp"], r["dp"], r["concurrency"])
        if key not in runs:
            runs.append(key)
        p = predict(a, r["calibration"], *key)
        changed += any(abs(p[w] - float(r[f"predicted_{w}"])) > 1e-6 * abs(p[w]) for w in WHAT)
        for w in WHAT:
            r[f"predicted_{w}"] = p[w]
            r[f"error_{w}"] = rel(p[w], r[f"measured_{w}"])
    a.label = a.label or rows[0]["label"]
    print_table(a, runs, rows, f"predicted again from {a.replan}'s calibration files")
    print(f"{changed} of {len(rows)} predictions differ from the CSV's")


def print_table(a, runs, rows, how):
    # One line per run: medians over the repeats, each compared with the median prediction.
    lines = ["| layout | conc. | load avg | tok/s meas. | pred. | error | TTFT p50 ms meas. | "
             "pred. | error | ITL p50 ms meas. | pred. | error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = {w: [] for w in WHAT}
    for tp, pp, dp, conc in runs:
        mine = [r for r in rows if (r["tp"], r["pp"], r["dp"], r["concurrency"]) ==
                (tp, pp, dp, conc)]
        med = {k: statistics.median(r[k] for r in mine)
               for k in [f"{s}_{w}" for s in ("measured", "predicted") for w in WHAT]}
        e = {w: rel(med[f"predicted_{w}"], med[f"measured_{w}"]) for w in WHAT}
        for w in WHAT:
            if e[w] == e[w]:
                summary[w].append(abs(e[w]))
        loads = [r["load_average"] for r in mine]
        lines.append(
            f"| tp{tp} pp{pp} dp{dp}{' ' + a.label if a.label else ''} | {conc} | {min(loads):.1f}-{max(loads):.1f} | "
            f"{med['measured_tok_s']:.1f} | {med['predicted_tok_s']:.1f} | {e['tok_s']:+.0%} | "
            f"{med['measured_ttft_s']*1e3:.0f} | {med['predicted_ttft_s']*1e3:.0f} | "
            f"{e['ttft_s']:+.0%} | {med['measured_itl_s']*1e3:.1f} | "
            f"{med['predicted_itl_s']*1e3:.1f} | {e['itl_s']:+.0%} |")
    lines.append("")
    for w, errs in summary.items():
        if errs:
            lines.append(f"{w}: median |error| {statistics.median(errs):.0%}, worst "
                         f"{max(errs):.0%} over {len(errs)} runs")
    per_run = [abs(r["error_tok_s"]) for r in rows if r["error_tok_s"] == r["error_tok_s"]]
    loads = [r["load_average"] for r in rows]
    lines.append(f"tok_s, every measurement on its own ({len(per_run)}): median |error| "
                 f"{statistics.median(per_run):.0%}, worst {max(per_run):.0%}")
    lines.append(f"load average during the runs: {min(loads):.1f} to {max(loads):.1f} "
                 f"(median {statistics.median(loads):.1f}) on {os.cpu_count()} cores; {how}")
    print("\n".join(lines))
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        wr.writeheader()
        wr.writerows(rows)


if __name__ == "__main__":
    main()
