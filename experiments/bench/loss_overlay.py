#!/usr/bin/env python3
"""Two training runs' loss curves side by side (issue 18: a change must not move training beyond bf16 noise).

  experiments/bench/loss_overlay.py BEFORE.metrics.jsonl AFTER.metrics.jsonl [--window 25]

Prints, per window of steps, each run's mean training loss and their difference, then the largest window
difference and the mean of the last window's differences relative to the step-to-step spread of BEFORE within
the same window (a difference inside that spread is noise-level). Lines that are not complete JSON (a killed
run's last write) are skipped. Pictures: experiments/plots/plot.py runs DIR_A DIR_B.
"""
import argparse
import json
import math
import sys


def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "step" in row and "loss" in row and row["loss"] is not None:
                out[int(row["step"])] = float(row["loss"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--window", type=int, default=25)
    a = ap.parse_args()
    b, n = losses(a.before), losses(a.after)
    steps = sorted(set(b) & set(n))
    if not steps:
        sys.exit("loss_overlay: the two files share no step with a loss")
    print(f"{'steps':>11} {'before':>9} {'after':>9} {'after-before':>13} {'before spread':>14}")
    worst = 0.0
    for lo in range(steps[0], steps[-1] + 1, a.window):
        w = [s for s in steps if lo <= s < lo + a.window]
        if not w:
            continue
        mb = sum(b[s] for s in w) / len(w)
        mn = sum(n[s] for s in w) / len(w)
        sd = math.sqrt(sum((b[s] - mb) ** 2 for s in w) / max(1, len(w) - 1))
        worst = max(worst, abs(mn - mb))
        print(f"{w[0]:>5}-{w[-1]:<5} {mb:9.4f} {mn:9.4f} {mn - mb:+13.4f} {sd:14.4f}")
    print(f"largest window difference {worst:.4f} over {len(steps)} common steps")


if __name__ == "__main__":
    main()
