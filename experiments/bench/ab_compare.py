#!/usr/bin/env python3
"""Compare the A/B rows of gpu_call.sh's `ab` stage: DIR/ab_<bench>_{old,new}_<i>.jsonl, written alternately by an
older tree's benchmark and this tree's in one call. Prints new/old per (bench, name, shape), the mean of each side's
runs (each run's figure a median of its repetitions), slowest first; with --json FILE writes the rows in the results format (ours = new, peer = old).

  ab_compare.py DIR gdn ops natsl [--json FILE --commit SHA --old-label "natsl 00f5f3e" --date 2026-12-07]
"""
import argparse
import glob
import json
import os
import re
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"{path}: skipped a line that is not JSON", file=sys.stderr)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("benches", nargs="+")
    ap.add_argument("--json")
    ap.add_argument("--commit", default="new")
    ap.add_argument("--old-label", default="old tree (same call, alternating)")
    ap.add_argument("--date", default="")
    ap.add_argument("--flag", type=float, default=1.05, help="ratios above this are marked SLOWER")
    a = ap.parse_args()

    out = []
    for bench in a.benches:
        runs = {"old": {}, "new": {}}
        gpu = ""
        for side in ("old", "new"):
            for path in sorted(glob.glob(os.path.join(a.dir, f"ab_{bench}_{side}_*.jsonl"))):
                if not re.search(r"_\d+\.jsonl$", path):
                    continue
                seen = set()  # a row a benchmark writes twice in one run (e.g. once per peer) counts once
                for r in load(path):
                    ms = r.get("ours_ms")
                    if not isinstance(ms, (int, float)) or ms <= 0:
                        continue
                    key = (r.get("name", "?"), r.get("shape", ""))
                    if key in seen:
                        continue
                    seen.add(key)
                    runs[side].setdefault(key, []).append(float(ms))
                    gpu = r.get("gpu", gpu)
        common = [k for k in runs["new"] if k in runs["old"]]
        only_new = [k for k in runs["new"] if k not in runs["old"]]
        only_old = [k for k in runs["old"] if k not in runs["new"]]
        rows = []
        for k in common:
            o = sum(runs["old"][k]) / len(runs["old"][k])
            n = sum(runs["new"][k]) / len(runs["new"][k])
            rows.append((n / o, k, o, n))
        rows.sort(key=lambda t: -t[0])
        print(f"== {bench}: {len(common)} rows in both trees, {len(only_new)} only in the new, {len(only_old)} only in the old")
        print(f"{'new/old':>8}  {'old ms':>9}  {'new ms':>9}  name [shape]")
        for ratio, (name, shape), o, n in rows:
            mark = "  SLOWER" if ratio > a.flag else ""
            print(f"{ratio:8.3f}  {o:9.4f}  {n:9.4f}  {name} [{shape}]{mark}")
            out.append({"name": name, "shape": shape, "ours_ms": round(n, 5), "peer": a.old_label, "peer_ms": round(o, 5),
                        "ratio": round(ratio, 4), "gpu": gpu, "commit": a.commit, "date": a.date, "bench": bench,
                        "ours_runs": runs["new"][(name, shape)], "peer_runs": runs["old"][(name, shape)]})
        for name, shape in only_new:
            print(f"   (new only) {name} [{shape}]")
        for name, shape in only_old:
            print(f"   (old only) {name} [{shape}]")
        if rows:
            worst = rows[0][0]
            print(f"{bench}: worst new/old {worst:.3f}; {sum(r[0] > a.flag for r in rows)} rows above {a.flag}")
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            for r in out:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
