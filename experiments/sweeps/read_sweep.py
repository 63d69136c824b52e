#!/usr/bin/env python3
"""Markdown tables of a sweep's runs over training, for the written reading of a sweep (results README).

    python3 experiments/sweeps/read_sweep.py SWEEP_OUT_DIR [--tasks mqar8,text]

SWEEP_OUT_DIR holds one folder per run (`natsl sweep`'s out_dir, or an unpacked sweep.txz), each with
metrics.jsonl. Runs are grouped by task, the part of the run name after its last '_' (the sweep files name runs
MODEL_TASK). Per task, one row per run: its last step, the asked softmax-fraction target (`nats_frac_target`, from
config.yaml when present), the reached routed fraction (mean and per layer, last row), and the evaluation metric
at every evaluated step (accuracy when the run logged one, else bits per byte, else loss).
A line of metrics.jsonl that is not complete JSON (a killed run's last write) is skipped.
"""
import argparse
import json
import os
import re
import sys


def read_metrics(run_dir):
    rows = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return rows
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def asked_target(run_dir):
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"\s*nats_frac_target:\s*(\[.*\])", line)
            if m:
                return "" if m.group(1).strip() == "[]" else m.group(1).strip()
    return ""


def layer_values(row, name):
    stats = row.get("stats", {})
    per = sorted((int(k.split(".")[1]), v) for k, v in stats.items()
                 if k.startswith("layers.") and k.endswith("." + name) and isinstance(v, (int, float)))
    return [v for _, v in per]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--tasks", help="comma-separated tasks to show (default all)")
    a = ap.parse_args()
    if not os.path.isdir(a.sweep_dir):
        sys.exit(f"read_sweep: {a.sweep_dir}: no such directory")
    by_task = {}
    for run in sorted(os.listdir(a.sweep_dir)):
        d = os.path.join(a.sweep_dir, run)
        if not os.path.isdir(d) or "_" not in run:
            continue
        by_task.setdefault(run.rsplit("_", 1)[1], []).append((run, d))
    wanted = set(a.tasks.split(",")) if a.tasks else None
    for task, runs in sorted(by_task.items()):
        if wanted and task not in wanted:
            continue
        table, steps, metric = [], [], None
        for run, d in runs:
            rows = read_metrics(d)
            evals = {r["step"]: r["eval"] for r in rows if isinstance(r.get("eval"), dict) and "step" in r}
            for e in evals.values():
                for k in ("accuracy", "bpb", "loss"):
                    if isinstance(e.get(k), (int, float)):
                        metric = metric or k
                        break
            steps = sorted(set(steps) | set(evals))
            last = rows[-1] if rows else {}
            fr = layer_values(last, "routed_frac")
            table.append((run, last.get("step", ""), asked_target(d),
                          f"{sum(fr) / len(fr):.3f}" if fr else "", "/".join(f"{v:.2f}" for v in fr), evals))
        if not table:
            continue
        metric = metric or "loss"
        print(f"### {task}: eval {metric} by step\n")
        print("| run | last step | target | routed_frac | per layer | " + " | ".join(str(s) for s in steps) + " |")
        print("|" + " --- |" * (5 + len(steps)))
        for run, last_step, target, mean, per, evals in table:
            cells = []
            for s in steps:
                v = evals.get(s, {}).get(metric)
                cells.append(f"{v:.4f}" if isinstance(v, (int, float)) else "")
            print(f"| {run} | {last_step} | {target} | {mean} | {per} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
