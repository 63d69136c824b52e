#!/usr/bin/env python3
"""Pictures of natsl runs and sweeps (PNG files; needs Debian's python3-matplotlib).

  experiments/plots/plot.py runs RUN_DIR... --out DIR
      loss.png         training loss per step (and eval loss where evaluated), one line per run
      attn_frac.png    each NAtS-L layer's softmax fraction (routed_frac, else attn_frac) over training, one
                       panel per run
  experiments/plots/plot.py sweep SWEEP_OUT_DIR --out DIR [--metric eval_accuracy|eval_bpb|eval_loss|best_eval_bpb|...]
      quality_vs_fraction.png   the metric against the reached softmax fraction (routed_frac), one marker
                                per run, one panel per task (the part of the run names after their last
                                '_' when every run is named MODEL_TASK, else summary.csv's task column);
                                runs without NAtS-L layers are drawn as horizontal reference lines

  experiments/plots/plot.py routing-map EVAL.json --out DIR
      routing_map.png  each NAtS-L layer's label of every chunk (x) and router head (y) of a text, from
                       `natsl eval CONFIG --routing-map TEXT --json EVAL.json` (dark: softmax, light: GDN)

RUN_DIR holds metrics.jsonl (natsl train's run directory); SWEEP_OUT_DIR holds summary.csv (natsl sweep).
A line of metrics.jsonl that is not complete JSON (a killed run's last write) is skipped.
"""
import argparse
import csv
import json
import math
import os
import sys


def read_metrics(run_dir):
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def layer_fractions(rows):
    """{layer index: [(step, fraction)]} from stats layers.N.routed_frac (or attn_frac when absent)."""
    out = {}
    for row in rows:
        stats = row.get("stats") or {}
        for key, value in stats.items():
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "layers" or parts[2] not in ("routed_frac", "attn_frac"):
                continue
            layer = int(parts[1])
            if parts[2] == "attn_frac" and f"layers.{layer}.routed_frac" in stats:
                continue
            out.setdefault(layer, []).append((row["step"], value))
    return out


def plot_runs(args, plt):
    fig, ax = plt.subplots(figsize=(7, 4))
    fracs = []  # (run name, {layer: [(step, fraction)]}) of the runs with NAtS-L layers
    for run in args.paths:
        rows = read_metrics(run)
        name = os.path.basename(os.path.normpath(run))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{name} train", linewidth=1)
        ev = [(r["step"], r["eval"]["loss"]) for r in rows if isinstance(r.get("eval"), dict) and "loss" in r["eval"]]
        if ev:
            ax.plot(*zip(*ev), "o--", label=f"{name} eval", markersize=3)
        layers = layer_fractions(rows)
        if layers:
            fracs.append((name, layers))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=120)
    written = ["loss.png"]
    if fracs:
        # One panel per run (layers as lines): many runs' layers on one axis cannot be told apart.
        cols = min(3, len(fracs))
        nrows = (len(fracs) + cols - 1) // cols
        fig2, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False, sharex=True,
                                  sharey=True)
        for i, (name, layers) in enumerate(fracs):
            a = axes[i // cols][i % cols]
            for layer, pts in sorted(layers.items()):
                a.plot(*zip(*pts), label=f"layer {layer}", linewidth=1)
            a.set_title(name, fontsize=8)
            a.set_ylim(-0.02, 1.02)
            a.grid(alpha=0.3)
            a.legend(fontsize=6)
        for i in range(len(fracs), nrows * cols):
            axes[i // cols][i % cols].set_visible(False)
        for a in axes[-1]:
            a.set_xlabel("step")
        for row in axes:
            row[0].set_ylabel("softmax fraction", fontsize=8)
        fig2.tight_layout()
        fig2.savefig(os.path.join(args.out, "attn_frac.png"), dpi=110)
        written.append("attn_frac.png")
    return written


def number(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def plot_sweep(args, plt):
    with open(os.path.join(args.paths[0], "summary.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{args.paths[0]}/summary.csv has no runs")
    # Panels: the task part of the run names when every run is named MODEL_TASK (the sweep files' habit; it tells
    # mqar8 from mqar32), else summary.csv's task column. Panels where no run has the metric are left out.
    def panel(r):
        return r["run"].rsplit("_", 1)[1] if all("_" in q["run"] for q in rows) else r["task"]

    def label(r):
        return r["run"].rsplit("_", 1)[0] if all("_" in q["run"] for q in rows) else r["run"]

    tasks = sorted({panel(r) for r in rows if number(r.get(args.metric)) is not None})
    if not tasks:
        sys.exit(f"{args.paths[0]}/summary.csv: no run has a value in column {args.metric}")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lines = []
        for r in (r for r in rows if panel(r) == task):
            y = number(r.get(args.metric))
            if y is None:
                continue
            x = number(r.get("routed_frac"))
            if x is None:  # no NAtS-L layer: a reference line
                ax.axhline(y, linestyle=":", linewidth=1, color="gray")
                near = sum(1 for ly in lines if abs(ly - y) < 0.04 * (abs(y) + 1))
                lines.append(y)
                ax.annotate(label(r), (1.0, y), fontsize=7, ha="right", va="bottom", color="gray",
                            xytext=(0, 2 - 9 * near), textcoords="offset points")
            else:
                ax.plot([x], [y], "o", label=label(r))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        ax.set_title(task)
        ax.set_xlabel("softmax fraction reached (routed_frac)")
        ax.set_ylabel(args.metric)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "quality_vs_fraction.png"), dpi=120)
    return ["quality_vs_fraction.png"]


def plot_routing_map(args, plt):
    with open(args.paths[0], encoding="utf-8") as f:
        doc = json.load(f)
    m = (doc.get("suite") or doc).get("routing_map")
    if not m:
        sys.exit(f"{args.paths[0]} holds no routing_map (run natsl eval with --routing-map TEXT --json FILE)")
    layers = sorted(m["layers"].items())
    fig, axes = plt.subplots(len(layers), 1, figsize=(10, 1.2 + 0.5 * len(layers) * 2), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], layers):
        grid = [[row[h] for row in rows] for h in range(len(rows[0]))]  # heads x chunks
        ax.imshow(grid, aspect="auto", cmap="Blues", vmin=-0.3, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}: {sum(map(sum, grid))} of {len(rows) * len(grid)} labels softmax", fontsize=8)
        ax.set_ylabel("router head", fontsize=7)
        ax.set_yticks(range(len(grid)))
    axes[-1, 0].set_xlabel(f"chunk of {m.get('chunk', 64)} tokens ({m['tokens']} tokens of {m['file']})")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "routing_map.png"), dpi=120)
    return ["routing_map.png"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["runs", "sweep", "routing-map"])
    p.add_argument("paths", nargs="+", help="run directories (runs), one sweep out_dir (sweep) or one eval JSON file")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--metric", default="eval_accuracy", help="sweep: the summary column on the y axis")
    args = p.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py needs matplotlib: apt-get install python3-matplotlib")
    os.makedirs(args.out, exist_ok=True)
    written = {"runs": plot_runs, "sweep": plot_sweep, "routing-map": plot_routing_map}[args.what](args, plt)
    for w in written:
        print(os.path.join(args.out, w))


if __name__ == "__main__":
    main()
