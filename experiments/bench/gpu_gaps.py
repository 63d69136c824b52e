#!/usr/bin/env python3
"""Where a training step's GPU sits idle: reads an Nsight Systems capture exported to SQLite
(`nsys export --type sqlite`) of `natsl train ... train.nvtx=true` and prints, for the last few steps:

  * per step: GPU span (first kernel start to last kernel end), busy time (union of kernels, copies, memsets),
    idle time = span - busy, and the number of kernels;
  * idle time by the NVTX range open on the host when the work that ended each gap was launched (the op whose
    launch the GPU was waiting for), and by the runtime API call the host was inside when the gap began;
  * host API calls that block or are slow (synchronisations, copies, allocations): count and time per step;
  * the busiest kernels (device time per step), so the category table can be re-derived.

Steps are delimited by the host's NVTX "forward" ranges (the trainer's phase span). Usage:
  gpu_gaps.py CAPTURE.sqlite [--steps K] [--min-gap-us 2]
"""
import argparse
import collections
import sqlite3
import sys


def columns(db, table):
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def has_table(db, table):
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone() is not None


def strings(db):
    return dict(db.execute("SELECT id, value FROM StringIds"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sqlite")
    ap.add_argument("--steps", type=int, default=4, help="analyse the last K complete steps")
    ap.add_argument("--min-gap-us", type=float, default=2.0)
    a = ap.parse_args()
    import os
    if not os.path.isfile(a.sqlite):
        sys.exit(f"gpu_gaps: {a.sqlite} does not exist (did nsys profile or nsys export fail? see nsys_train.log)")
    db = sqlite3.connect(f"file:{a.sqlite}?mode=ro", uri=True)
    for table in ("StringIds", "NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_KERNEL"):
        if not has_table(db, table):
            sys.exit(f"gpu_gaps: {a.sqlite} has no table {table}: the capture needs CUDA and NVTX tracing "
                     f"(nsys profile -t cuda,nvtx) of a run with train.nvtx=true that launched kernels")
    sid = strings(db)

    # Host NVTX push/pop ranges (eventType 59), with their text.
    nv_cols = columns(db, "NVTX_EVENTS")
    text_expr = "text" if "textId" not in nv_cols else "COALESCE(text, (SELECT value FROM StringIds WHERE id = textId))"
    ranges = [(s, e, t) for s, e, t in db.execute(
        f"SELECT start, end, {text_expr} FROM NVTX_EVENTS WHERE eventType = 59 AND end IS NOT NULL ORDER BY start")]
    fwd = [s for s, e, t in ranges if t == "forward"]
    if len(fwd) < 2:
        sys.exit(f"gpu_gaps: {len(fwd)} NVTX 'forward' ranges found: was the run made with train.nvtx=true?")

    # Runtime API calls (host side) by correlation id.
    rt = {}
    api_by_start = []
    for s, e, name_id, corr in db.execute("SELECT start, end, nameId, correlationId FROM CUPTI_ACTIVITY_KIND_RUNTIME"):
        name = sid.get(name_id, "?")
        rt[corr] = (s, e, name)
        api_by_start.append((s, e, name))
    api_by_start.sort()

    # Device work: kernels, copies, memsets.
    work = []
    kcols = columns(db, "CUPTI_ACTIVITY_KIND_KERNEL")
    kname = "shortName" if "shortName" in kcols else "demangledName"
    for s, e, n, corr in db.execute(f"SELECT start, end, {kname}, correlationId FROM CUPTI_ACTIVITY_KIND_KERNEL"):
        work.append((s, e, sid.get(n, "?"), corr, "kernel"))
    for table, label in (("CUPTI_ACTIVITY_KIND_MEMCPY", "memcpy"), ("CUPTI_ACTIVITY_KIND_MEMSET", "memset")):
        if has_table(db, table):
            for s, e, corr in db.execute(f"SELECT start, end, correlationId FROM {table}"):
                work.append((s, e, label, corr, label))
    work.sort()

    # The innermost NVTX range containing a host time (ranges are nested per thread; one compute thread here).
    import bisect
    starts = [r[0] for r in ranges]

    def innermost(t):
        i = bisect.bisect_right(starts, t) - 1
        best = None
        # walk back over ranges that started before t; the innermost is the latest-starting one still open
        j = i
        while j >= 0 and j > i - 400:
            s, e, name = ranges[j]
            if s <= t <= e:
                best = name
                break
            j -= 1
        return best or "(no range)"

    def host_api_at(t):
        i = bisect.bisect_right(api_by_start, (t, float("inf"), "")) - 1
        while i >= 0 and i > -1:
            s, e, name = api_by_start[i]
            if s <= t <= e:
                return name
            if e < t - 5_000_000:
                break
            i -= 1
        return "(host between API calls)"

    def norm(name):
        # layers.17.gdn -> layers.N.gdn
        parts = name.split(".")
        return ".".join("N" if p.isdigit() else p for p in parts)

    steps = list(zip(fwd[:-1], fwd[1:]))[-a.steps:]
    print(f"gpu_gaps: {len(fwd)} steps captured, analysing the last {len(steps)} complete ones (host 'forward' to "
          f"'forward'); gaps >= {a.min_gap_us} us")
    gap_by_range = collections.Counter()
    gap_by_api = collections.Counter()
    gap_hist = collections.Counter()
    kern_time = collections.Counter()
    kern_count = collections.Counter()
    api_time = collections.Counter()
    api_count = collections.Counter()
    totals = collections.Counter()
    prev_end = None
    for k, (h0, h1) in enumerate(steps):
        # Work launched from the host within this step's window.
        items = [w for w in work if w[3] in rt and h0 <= rt[w[3]][0] < h1]
        if not items:
            continue
        items.sort()
        span0, span1 = items[0][0], max(w[1] for w in items)
        busy = 0
        cur_s, cur_e = items[0][0], items[0][1]
        idle = 0
        for w in items[1:]:
            if w[0] > cur_e:
                busy += cur_e - cur_s
                gap = w[0] - cur_e
                if gap >= a.min_gap_us * 1000:
                    idle += gap
                    launch = rt[w[3]][0]
                    gap_by_range[norm(innermost(launch))] += gap
                    gap_by_api[host_api_at(cur_e)] += gap
                    b = "<10us" if gap < 10_000 else "10-50us" if gap < 50_000 else "50-500us" if gap < 500_000 else ">=500us"
                    gap_hist[b] += gap
                cur_s, cur_e = w[0], w[1]
            else:
                cur_e = max(cur_e, w[1])
        busy += cur_e - cur_s
        nk = sum(1 for w in items if w[4] == "kernel")
        for w in items:
            kern_time[w[2]] += w[1] - w[0]
            kern_count[w[2]] += 1
        for s, e, name in api_by_start:
            if h0 <= s < h1:
                api_time[name] += e - s
                api_count[name] += 1
        span = span1 - span0
        between = "" if prev_end is None else f" | idle before it (after the previous step's last work) {(span0 - prev_end) / 1e6:.2f} ms"
        if prev_end is not None:
            totals["between"] += span0 - prev_end
            totals["between_n"] += 1
        prev_end = span1
        totals["span"] += span
        totals["busy"] += busy
        totals["idle"] += span - busy
        print(f"step {k}: host window {(h1 - h0) / 1e6:.2f} ms | GPU span {span / 1e6:.2f} ms, busy {busy / 1e6:.2f} ms, "
              f"idle {(span - busy) / 1e6:.2f} ms ({100 * (span - busy) / max(span, 1):.1f}%), {nk} kernels, "
              f"{len(items) - nk} copies/memsets{between}")
    n = max(1, len(steps))
    print(f"\nper step (mean): span {totals['span'] / n / 1e6:.2f} ms, busy {totals['busy'] / n / 1e6:.2f} ms, "
          f"idle {totals['idle'] / n / 1e6:.2f} ms; between steps "
          f"{totals['between'] / max(1, totals['between_n']) / 1e6:.2f} ms")
    print("\nidle by gap size (ms/step):", {k: round(v / n / 1e6, 3) for k, v in sorted(gap_hist.items())})
    def table(title, times, top, counts=None):
        # ms per step (and calls per step when counts are given) of the `top` largest entries
        print(f"\n{title} (ms/step{', calls/step' if counts else ''}, top {top}):")
        for name, t in times.most_common(top):
            calls = f"  {counts[name] / n:7.1f}" if counts else ""
            print(f"  {t / n / 1e6:8.3f}{calls}  {name[:110]}")

    table("idle by the host range launching the work that ended the gap", gap_by_range, 25)
    table("idle by the host API call open when the gap began", gap_by_api, 12)
    table("host API calls, by time", api_time, 15, api_count)
    table("device work by kernel", kern_time, 40, kern_count)

if __name__ == "__main__":
    main()
