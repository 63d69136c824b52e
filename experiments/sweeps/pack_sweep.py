#!/usr/bin/env python3
"""Pack a sweep's results small enough to come back from the device machine and to keep in the repository.

    python3 experiments/sweeps/pack_sweep.py SWEEP_OUT_DIR OUT.tar.xz [--every 10]

The archive holds SWEEP_OUT_DIR's summary.md and summary.csv (when the sweep wrote them) and, per run directory,
config.yaml, metrics.jsonl thinned to step 1, every `--every`-th step, every row with an evaluation and the
last row (as `metrics.jsonl`), and the last 40 lines of train.log. Checkpoints stay behind. Paths in the archive
are relative to SWEEP_OUT_DIR's parent, so it unpacks into a directory named like the sweep's.
"""
import argparse
import io
import json
import os
import sys
import tarfile


def thin_metrics(path, every):
    keep, last = [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a killed run's cut last line
                continue
            if not isinstance(row, dict):
                continue
            text = line.rstrip("\n") + "\n"
            step = row.get("step", 0)
            if step == 1 or (every > 0 and isinstance(step, int) and step % every == 0) or "eval" in row:
                keep.append(text)
                last = None
            else:
                last = text
    if last is not None:  # the run's last row always: where a stopped run stands
        keep.append(last)
    return "".join(keep).encode()


def tail(path, n):
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-n:]).encode()


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("out")
    ap.add_argument("--every", type=int, default=10, help="keep every N-th step's metrics row (default 10)")
    a = ap.parse_args()
    if not os.path.isdir(a.sweep_dir):
        sys.exit(f"pack_sweep: {a.sweep_dir}: no such directory")
    base = os.path.basename(os.path.normpath(a.sweep_dir))
    runs = 0
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w:xz") as tar:
        for name in ("summary.md", "summary.csv"):
            p = os.path.join(a.sweep_dir, name)
            if os.path.isfile(p):
                tar.add(p, arcname=f"{base}/{name}")
        for run in sorted(os.listdir(a.sweep_dir)):
            d = os.path.join(a.sweep_dir, run)
            if not os.path.isdir(d):
                continue
            runs += 1
            if os.path.isfile(os.path.join(d, "config.yaml")):
                tar.add(os.path.join(d, "config.yaml"), arcname=f"{base}/{run}/config.yaml")
            if os.path.isfile(os.path.join(d, "metrics.jsonl")):
                add_bytes(tar, f"{base}/{run}/metrics.jsonl", thin_metrics(os.path.join(d, "metrics.jsonl"), a.every))
            if os.path.isfile(os.path.join(d, "train.log")):
                add_bytes(tar, f"{base}/{run}/train.log", tail(os.path.join(d, "train.log"), 40))
    os.replace(tmp, a.out)
    print(f"pack_sweep: {runs} runs of {a.sweep_dir} -> {a.out} ({os.path.getsize(a.out)} bytes)")


if __name__ == "__main__":
    main()
