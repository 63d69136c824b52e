#!/usr/bin/env bash
# One batched session on a GPU machine: build, the whole test suite (CUDA tests run), the core-op
# benchmark, a short bf16 training run of the text model (tokens/s, MFU), a NAtS-L 340M smoke run, and a
# check that PyTorch's safetensors reads our checkpoint. Logs go to $OUT (default ./gpu-out); key lines are
# printed. Usage: NATSL_COMMIT=<sha> scripts/gpu_session.sh [text_steps] [natsl_steps]
# Optional, when the ignored .peers folder is there (shared/bench/README.md): the authors' NAtS-L mixed op
# (peers.py --what nats) runs in the background during the build (Triton compiles and autotunes for
# minutes; the build is niced so that it leaves the peer's launch thread a core), then natsl_bench_natsl
# times ours against its anchors before the tests use the GPU.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
TEXT_STEPS="${1:-300}"
NATSL_STEPS="${2:-30}"
BIN=build-gpu/natsl
# The corpora live beside the checkout (../shared/data); a copy carried as .shared-data stands in for them.
if [ ! -d ../shared/data ] && [ -d .shared-data ]; then mkdir -p ../shared && cp -r .shared-data ../shared/data; fi

COMMIT="${NATSL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
peers_pid=""
if [ -d .peers ]; then
  rm -f "$OUT/anchors.json"
  echo "== NAtS-L reference mixed op (peers.py, background)"
  PYTHONUNBUFFERED=1 timeout 540 python3 .peers/peers.py --fla .peers/flanats --nats .peers/nats --what nats \
    --out "$OUT" >"$OUT/peers_nats.log" 2>&1 &
  peers_pid=$!
fi

echo "== build"
nice -n 10 scripts/gpu_test.sh --build-only >"$OUT/build.log" 2>&1 || {
  tail -40 "$OUT/build.log"
  [ -n "$peers_pid" ] && kill "$peers_pid"
  exit 1
}
if [ -n "$peers_pid" ]; then
  wait "$peers_pid"
  echo "peers rc $?"; grep -E '"name"' "$OUT/peers_nats.log" | cut -c1-160
  echo "== NAtS-L mixed op benchmark (ours vs the reference's Triton op)"
  timeout 120 build-gpu/experiments/bench/natsl_bench_natsl --json "$OUT/bench_natsl.jsonl" \
    --peer "$OUT/anchors.json" --commit "$COMMIT" >"$OUT/bench_natsl.txt" 2>&1
  echo "rc $?"; cat "$OUT/bench_natsl.txt"
fi
echo "== tests"
JOBS=8 scripts/gpu_test.sh --test-only >"$OUT/ctest.log" 2>&1
test_rc=$?
grep -E "tests passed|CUDA tests:|\(Failed\)|Exception|Timeout" "$OUT/ctest.log" | head -40
echo "== core-op benchmark"
timeout 150 build-gpu/experiments/bench/natsl_bench_ops --json "$OUT/bench_ops.jsonl" >"$OUT/bench_ops.txt" 2>&1
grep -E "ratio|ceiling|bwd|fwd" "$OUT/bench_ops.txt" | tail -30
echo "== text-small, bf16, $TEXT_STEPS steps"
rm -rf "$OUT/run-text"
timeout 240 "$BIN" train configs/text-small.yaml data.text.train=../shared/data/tinyshakespeare.txt \
  train.device=cuda train.precision=bf16 train.steps="$TEXT_STEPS" train.eval_every="$TEXT_STEPS" \
  train.ckpt_every="$TEXT_STEPS" train.log_every=50 train.out_dir="$OUT/run-text" >"$OUT/train_text.log" 2>&1
echo "rc $?"; grep -vE "^\s*$" "$OUT/train_text.log" | tail -8
echo "== natsl-340m, bf16, $NATSL_STEPS steps (grad_accum 1)"
rm -rf "$OUT/run-natsl"
timeout 300 "$BIN" train configs/natsl-340m.yaml tokenizer.kind=byte train.steps="$NATSL_STEPS" train.warmup_steps=10 train.grad_accum=1 \
  train.log_every=5 train.eval_every=0 train.ckpt_every=0 train.out_dir="$OUT/run-natsl" >"$OUT/train_natsl.log" 2>&1
echo "rc $?"; grep -vE "^\s*$" "$OUT/train_natsl.log" | tail -12
echo "== PyTorch reads our safetensors"
ck=$(ls -d "$OUT"/run-text/checkpoints/step_* 2>/dev/null | tail -1)
python3 - "$ck" <<'PY'
import sys, os
from safetensors.torch import load_file
d = sys.argv[1]
for f in ("model.safetensors", "optimizer.safetensors"):
    t = load_file(os.path.join(d, f))
    print(f, len(t), "tensors;", sorted(t)[:2], {k: (tuple(v.shape), str(v.dtype)) for k, v in list(t.items())[:1]})
PY
cd "$OUT" && tar czf logs.tgz *.log *.txt run-text/metrics.jsonl run-natsl/metrics.jsonl 2>/dev/null
exit $test_rc
