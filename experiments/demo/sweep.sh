#!/usr/bin/env bash
# Runs natsl training jobs side by side on the CPU and prints each job's eval answer accuracy at every eval and
# its wall time: how the demo configs were tuned and how their seed tables were measured.
#
#   experiments/demo/sweep.sh JOBFILE        # one job a line: NAME CONFIG [key=value ...]
#
# Environment: NATSL (the binary, default build/natsl), PAR (jobs at a time, default nproc / THREADS),
# THREADS (OpenMP threads per job, default 1), RUNS (run directories, default /tmp/natsl-sweep), OUT (where
# summary.txt goes; default RUNS).
set -uo pipefail
JOBFILE=$1
NATSL=${NATSL:-build/natsl}
THREADS=${THREADS:-1}
PAR=${PAR:-$(( $(nproc) / THREADS ))}
RUNS=${RUNS:-/tmp/natsl-sweep}
OUT=${OUT:-$RUNS}
mkdir -p "$RUNS" "$OUT"

run_one() {
  local name=$1; shift
  local cfg=$1; shift
  local dir=$RUNS/$name
  rm -rf "$dir"
  local t0=$(date +%s%N)
  OMP_NUM_THREADS=$THREADS "$NATSL" train "$cfg" "$@" train.out_dir="$dir" >"$RUNS/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s%N)
  local evals
  evals=$(python3 - "$dir/metrics.jsonl" <<'PY'
import json, sys
out = []
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if "eval" in r and "accuracy" in r["eval"]:
            out.append(f'{r["step"]}:{r["eval"]["accuracy"]:.3f}')
except OSError:
    pass
print(" ".join(out))
PY
)
  printf '%-28s rc %d  %5d s  %s\n' "$name" "$rc" "$(( (t1 - t0) / 1000000000 ))" "$evals"
}
export -f run_one
export NATSL THREADS RUNS

grep -v '^\s*#' "$JOBFILE" | grep -v '^\s*$' |
  xargs -P "$PAR" -L 1 bash -c 'run_one "$@"' _ | sort | tee "$OUT/summary.txt"
