#!/usr/bin/env bash
# Builds the probe and runs each mode plain and under compute-sanitizer racecheck (see probe.cu). Run from the
# repository root on the GPU machine; prints one summary line per run.
set -uo pipefail
OUT=${OUT:-/tmp/racecheck_tma}
mkdir -p "$OUT"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
"$NVCC" -O2 -arch=sm_90 -I. -o "$OUT/probe" experiments/kernel_lab/racecheck_tma/probe.cu || exit 1
for mode in "correct" "correct --write" "racy" "correct --cpasync" "racy --cpasync"; do
  # The racy mode may deadlock (the producer re-arms a barrier whose phase the consumers have not completed):
  # every run is bounded.
  timeout 20 "$OUT/probe" $mode || echo "probe $mode: rc $? (124: timed out)"
  log="$OUT/racecheck_${mode// /_}.log"
  timeout 60 "$SAN" --tool racecheck --racecheck-report hazard --print-limit 5 "$OUT/probe" $mode >"$log" 2>&1
  echo "racecheck probe $mode: rc $? | $(grep -E "RACECHECK SUMMARY|probe " "$log" | tr '\n' ' ')"
done
