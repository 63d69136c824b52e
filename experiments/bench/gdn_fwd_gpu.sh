#!/usr/bin/env bash
# One device call for the GDN forward kernels: the GDN CUDA tests, then natsl_bench_gdn (every forward layout in
# the same run). Uses the binaries built on the build machine and carried with the call (BIN, a folder holding
# test_kernels and natsl_bench_gdn; default build-gdnf-bin) when they run here; else builds them (Release,
# sm_90) into build-gpu. If the tests fail, the bulk-copy variants are left out of the bench (a wrong mbarrier
# count would hang it).
#   experiments/bench/gdn_fwd_gpu.sh            (writes test.log, bench.txt, bench.jsonl under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gdn_fwd_out}
mkdir -p "$OUT"
B=${BIN:-build-gdnf-bin}
T0=$(date +%s)
el() { echo "[t=$(($(date +%s) - T0))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
TEST=$B/test_kernels BENCH=$B/natsl_bench_gdn
if ! "$TEST" --gtest_list_tests >/dev/null 2>&1; then
  el "carried binaries do not run here: building"
  "$TEST" --gtest_list_tests 2>&1 | head -3
  cmake -G Ninja -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DNATSL_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DNATSL_DEPS_DIR="$PWD/.deps" >"$OUT/configure.log" 2>&1 &&
    timeout 150 ninja -C build-gpu test_kernels natsl_bench_gdn >"$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
  TEST=build-gpu/tests/test_kernels BENCH=build-gpu/experiments/bench/natsl_bench_gdn
fi
el "tests"
OMP_NUM_THREADS=8 timeout 70 "$TEST" --gtest_filter='GdnCuda.*' >"$OUT/test.log" 2>&1
rc=$?
echo "test rc $rc"
grep -E "^\[ *(OK|FAILED|PASSED) |Failure|error:|Value of|Expected|Which is|relative RMS|non-finite|NATSL_" "$OUT/test.log" | head -60
SKIP=()
[ "$rc" = 0 ] || SKIP=(--skip bulk)
el "bench ${SKIP[*]}"
timeout 100 "$BENCH" --reps 20 --json "$OUT/bench.jsonl" --commit "${NATSL_COMMIT:-unknown}" "${SKIP[@]}" \
  >"$OUT/bench.txt" 2>"$OUT/bench_progress.txt"
echo "bench rc $?"
if [ -s "$OUT/bench.txt" ]; then
  grep -E "natsl_gdn_fwd |natsl_gdn_fwd\[|stage (l2norm_fwd|prep|state pass \+ output)" "$OUT/bench.txt"
else
  grep -E "natsl_gdn_fwd|stage (l2norm_fwd|prep|state pass \+ output)" "$OUT/bench_progress.txt"
fi
el "done"
