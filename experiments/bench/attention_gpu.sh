#!/usr/bin/env bash
# One GPU-machine call for the sparse attention kernels, run from the repo root with the binaries built on the
# CPU machine carried in build-attn/dist (test_kernels, natsl_bench_attention, libcudart):
#   CUDA tests -> SDPA peers (peers.py) -> benchmark with the peers' anchors -> memcheck and racecheck passes.
# Logs and JSON go to $OUT. Usage: experiments/bench/attention_gpu.sh COMMIT
set -uo pipefail
COMMIT=${1:-unknown}
D=build-attn/dist
OUT=${OUT:-/tmp/attn-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$D:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
echo "== tests"
timeout 80 $D/test_kernels --gtest_filter='SparseAttentionCuda.*' >"$OUT/tests.log" 2>&1
echo "rc=$?"
grep -E "^\[attn\]|Failure|relative RMS error|Which is|Expected|FAILED|PASSED|SKIPPED" "$OUT/tests.log" | head -100
echo "== peers"
PYTHONUNBUFFERED=1 timeout 70 python3 .peers/peers.py --fla .peers/flahead --what sdpa --out "$OUT" >"$OUT/peers.log" 2>&1
echo "rc=$?"; grep -E '"name"' "$OUT/peers.log" | cut -c1-160
echo "== bench"
timeout 60 $D/natsl_bench_attention --json "$OUT/bench.jsonl" --peer "$OUT/anchors.json" --commit "$COMMIT" >"$OUT/bench.log" 2>&1
echo "rc=$?"; cat "$OUT/bench.log"
echo "== memcheck"
timeout 40 compute-sanitizer --tool memcheck $D/test_kernels --gtest_filter='SparseAttentionCuda.*Bf16Matches*:SparseAttentionCuda.*DeviceIndex*' >"$OUT/memcheck.log" 2>&1
echo "rc=$?"; grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$OUT/memcheck.log" | head -10
echo "== racecheck"
timeout 60 compute-sanitizer --tool racecheck $D/test_kernels --gtest_filter='SparseAttentionCuda.*Bf16Matches*' >"$OUT/racecheck.log" 2>&1
echo "rc=$?"; grep -E "RACECHECK SUMMARY|hazard|PASSED|FAILED" "$OUT/racecheck.log" | head -10
