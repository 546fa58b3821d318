#!/usr/bin/env python3
"""Plots of an `alem bench sweep` results file (HDF5) as PNG files:

  throughput.png   generated tokens/s vs concurrency, one line per layout (and batch)
  latency.png      TTFT and ITL p50 and p95 vs concurrency, per layout
  scaling.png      strong scaling: tokens/s vs ranks at the highest concurrency, with the
                   ideal line (the one-rank figure x ranks)
  predicted.png    alem plan's prediction vs the measurement (when the sweep ran with
                   --cluster), with the y = x line and the +-20 % band

  .venv-reference/bin/python scripts/plot.py sweep.h5 --out docs/img/sweep
Needs matplotlib and h5py (scripts/requirements-plot.txt).
"""
import argparse
import collections
import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    runs = []
    with h5py.File(path, "r") as f:
        meta = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
        for key, g in f["runs"].items():
            if key.endswith(".partial"):
                continue
            r = {k: int(v) for k, v in g.attrs.items()}
            for name, d in g.items():
                if d.shape == ():
                    r[name] = float(d[()])
            r["key"] = key
            runs.append(r)
    return meta, runs


def layout_name(r):
    return f"tp{r['tp']} pp{r['pp']} dp{r['dp']}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--out", default="plots", help="folder for the PNG files")
    ap.add_argument("--title", help="title prefix (default: model and host)")
    a = ap.parse_args()
    meta, runs = load(a.results)
    if not runs:
        raise SystemExit(f"{a.results}: no finished runs")
    os.makedirs(a.out, exist_ok=True)
    title = a.title or f"{meta.get('model', '?')} on {meta.get('host', '?')}"
    series = collections.defaultdict(list)
    for r in runs:
        series[(layout_name(r), r["batch"])].append(r)
    for s in series.values():
        s.sort(key=lambda r: r["concurrency"])
    several_batches = len({r["batch"] for r in runs}) > 1

    def label(name, batch):
        return f"{name} b{batch}" if several_batches else name

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (name, batch), s in sorted(series.items()):
        ax.plot([r["concurrency"] for r in s], [r["tokens_per_s"] for r in s], "o-",
                label=label(name, batch))
    ax.set(xlabel="concurrency (requests in flight per replica)", ylabel="generated tokens/s",
           title=f"{title}: throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "throughput.png"), dpi=110)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    for (name, batch), s in sorted(series.items()):
        c = [r["concurrency"] for r in s]
        line, = ax1.plot(c, [r["ttft_p50"] * 1e3 for r in s], "o-", label=label(name, batch))
        ax1.plot(c, [r["ttft_p95"] * 1e3 for r in s], "x--", color=line.get_color())
        ax2.plot(c, [r["itl_p50"] * 1e3 for r in s], "o-", color=line.get_color())
        ax2.plot(c, [r["itl_p95"] * 1e3 for r in s], "x--", color=line.get_color())
    ax1.set(xlabel="concurrency", ylabel="ms", title="TTFT p50 (o) and p95 (x)")
    ax2.set(xlabel="concurrency", ylabel="ms", title="ITL p50 (o) and p95 (x)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "latency.png"), dpi=110)

    top = max(r["concurrency"] for r in runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    base = [r for r in runs if r["tp"] * r["pp"] * r["dp"] == 1 and r["concurrency"] == top]
    for kind in ("tp", "pp", "dp"):
        pts = sorted((r["ranks"], r["tokens_per_s"]) for r in runs
                     if r["concurrency"] == top and all(r[k] == 1 for k in ("tp", "pp", "dp")
                                                        if k != kind))
        if len(pts) > 1:
            ax.plot(*zip(*pts), "o-", label=f"{kind} (concurrency {top} per replica)")
    if base:
        ranks = sorted({r["ranks"] for r in runs})
        ax.plot(ranks, [base[0]["tokens_per_s"] * n for n in ranks], "k:", label="ideal")
    ax.set(xlabel="ranks", ylabel="generated tokens/s", title=f"{title}: strong scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "scaling.png"), dpi=110)

    predicted = [r for r in runs if "predicted_tokens_per_s" in r]
    if predicted:
        fig, ax = plt.subplots(figsize=(5.2, 5.0))
        for (name, batch), s in sorted(series.items()):
            s = [r for r in s if "predicted_tokens_per_s" in r]
            if s:
                ax.plot([r["tokens_per_s"] for r in s], [r["predicted_tokens_per_s"] for r in s],
                        "o", label=label(name, batch))
        hi = max(max(r["tokens_per_s"], r["predicted_tokens_per_s"]) for r in predicted) * 1.1
        ax.plot([0, hi], [0, hi], "k-", lw=0.8, label="y = x")
        ax.fill_between([0, hi], [0, hi * 0.8], [0, hi * 1.2], color="grey", alpha=0.15,
                        label="+-20 %")
        ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="measured tokens/s",
               ylabel="alem plan: predicted tokens/s", title=f"{title}: predicted vs measured")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "predicted.png"), dpi=110)
    print(f"{len(runs)} runs -> {a.out}/")


if __name__ == "__main__":
    main()
