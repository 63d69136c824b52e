#!/usr/bin/env bash
# One device call for the GDN backward kernels: the GDN CUDA tests, then natsl_bench_gdn (every backward layout
# in the same run). Uses binaries built on the build machine and carried with the call (BIN, default
# build-gdnb) when they run here; else builds them (Release, sm_90) into build-gpu.
#   experiments/bench/gdn_bwd_gpu.sh            (writes test.log, bench.txt, bench.jsonl under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gdn_bwd_out}
mkdir -p "$OUT"
B=${BIN:-build-gdnb}
T0=$(date +%s)
el() { echo "[t=$(($(date +%s) - T0))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
if ! "$B/tests/test_kernels" --gtest_list_tests >/dev/null 2>&1; then
  el "carried binaries do not run here: building"
  B=build-gpu
  cmake -G Ninja -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DNATSL_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DNATSL_DEPS_DIR="$PWD/.deps" >"$OUT/configure.log" 2>&1 &&
    timeout 150 ninja -C "$B" test_kernels natsl_bench_gdn >"$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
fi
el "tests"
OMP_NUM_THREADS=8 timeout 50 "$B/tests/test_kernels" --gtest_filter='GdnCuda.*' >"$OUT/test.log" 2>&1
echo "test rc $?"
grep -E "^\[ *(OK|FAILED|PASSED) |Failure|error:|Value of|Expected|Which is|relative RMS|non-finite|NATSL_" "$OUT/test.log" | head -60
el "bench"
timeout 135 "$B/experiments/bench/natsl_bench_gdn" --reps 20 --json "$OUT/bench.jsonl" --commit "${NATSL_COMMIT:-unknown}" \
  >"$OUT/bench.txt" 2>&1
echo "bench rc $?"
grep -E "natsl_gdn_fwdbwd|stage (chunk|bwd|reverse|prep recompute|state pass storing|l2norm_bwd)" "$OUT/bench.txt" |
  grep -vE "split|l2pf|prep_(staged|direct)|\[vt(32|64)s[12]\]"
el "done"
