#!/usr/bin/env bash
# One device call that builds, tests and times natsl on the GPU machine, with the peers timed in the same call.
# Run from the repository root on the GPU machine (the device tool's working copy), with the ignored folders
# .deps (header-only deps), .peers (peers.py, ref_model.py and the FLA / NAtS-L reference packages, see
# ../shared/bench) and .shared-data carried along (experiments/bench/prepare_carry.sh makes all three). Logs and result files go to $OUT (at most 8 files come back: logs are tarred).
#
#   WHAT="build peers tests natsl gdn ops train flaprof ncu" experiments/bench/gpu_call.sh
#
#   build    scripts/gpu_test.sh --build-only (BUILD_TARGETS="natsl ...": configure, then build only those targets,
#            e.g. `natsl` alone for sweep / hfref calls)
#   peers    peers.py: FLA's GDN and the authors' NAtS-L op (alone on the machine), anchors for natsl and gdn
#   tests    the CUDA tests (ctest -R 'Cuda|cuda|Gpu|gpu'), JOBS=8
#   natsl    natsl_bench_natsl against the authors' op (peers.py --what nats)
#   gdn      natsl_bench_gdn (default layouts; GDN_VARIANTS=1 for every variant) against FLA, then again with the
#            sync timing method for comparison
#   ops      natsl_bench_ops (OPS_ONLY=substring to time a subset)
#   refmodel the authors' model (ref_model.py in .peers: REF_LAYERS "natsl" and/or "gdn"), 12 steps B8 T4096: the
#            peer of `train` (run both in one call, one after the other); ref_model_<layers>.json. REF_SIZES (default
#            340m; "340m 760m": also the reference's 760M shapes through experiments/bench/ref_model_sized.py, the
#            peer of natsl-760m: ref_model_<layers>_760m.json); REF_BATCH (default 8: on an 80 GB card the 760M
#            peer may need 4, then train with TRAIN_EXTRA=train.batch_size=4 for the same tokens per step)
#   train    each of TRAIN_CONFIGS (default natsl-340m; e.g. "natsl-340m natsl-760m"), bf16, TRAIN_STEPS (default 40)
#            steps at grad_accum 1: tokens/s, MFU, memory; steps 20-22
#            profiled (profile_summary.json, profile_trace.json.gz); TRAIN_EXTRA: more key=value overrides;
#            TRAIN_VARIANTS (default config: as the config says; "eager graph" runs each config twice, with
#            train.cuda_graph=false (train_<cfg>_eager.log) and true (train_<cfg>_graph.log))
#   curve    natsl-340m 300 steps (CURVE_EXTRA overrides) overlaid on the recorded baseline curve (loss_overlay.py)
#   nsys     natsl-340m under Nsight Systems, then experiments/bench/gpu_gaps.py: where the GPU idles in a step (host
#            gaps by the op whose launch ended them, blocking API calls, kernel table; NSYS_STEPS, default 10)
#   mem      natsl-340m peak memory and tokens/s per sequence length (MEM_SEQS) and train.recompute /
#            train.recompute_keep setting (MEM_RECOMPUTE)
#   flaprof  FLA's per-kernel split (experiments/bench/fla_profile.py)
#   lab      builds and runs every kernel-lab program (experiments/kernel_lab/*: a variant against the production
#            kernel, bits and time; not built by `build`; LAB_ONLY="sub1 sub2": those whose name holds one)
#   ncu      Nsight Compute on natsl's GDN forward kernels and the embedding backward (NCU_SECTIONS)
#   ab       the benchmarks (AB_BENCHES, default gdn; gdn ops natsl attention) of an older tree carried as .ab-old
#            (AB_DIR) against this one's, alternating; ab_compare.py prints new/old per row
#   dist     the NCCL path at world size 1: natsl train --nproc 1 == the plain run bit for bit, and natsl-340m
#            through NCCL (tokens/s, buckets launched during the backward, and the profiler's phases of steps
#            12-14 in device time: backward vs the gradient reduction still exposed after it)
#   sweep    natsl sweep SWEEP_FILE (default configs/sweeps/routing-sparsity.yaml) --parallel SWEEP_PARALLEL (4),
#            bounded by SWEEP_SECONDS (400; resumable: call again while warm); sweep.txz (summary + thinned runs);
#            SWEEP_BG=1 starts it in the background so the stages after it (e.g. hfref) share the GPU with it,
#            and the call waits for it before packing up
#   sanitize compute-sanitizer memcheck, then racecheck, over the CUDA tests of each test binary (SAN_FILTER, a
#            gtest filter, default every *Cuda* / *Gpu* case; SAN_TOOLS, default "memcheck racecheck"; SAN_BINS, the
#            test binaries to check, default all; SAN_TIMEOUT, seconds per binary and tool, default 120; SAN_SHARDS,
#            default 1: that many sanitizer processes side by side, each on one gtest shard; SAN_PARALLEL_BINS=1:
#            the binaries' shards all at once, under one SAN_TIMEOUT;
#            SAN_RACECHECK_EXCLUDE, kernel-name substrings, space-separated, that racecheck leaves uninstrumented:
#            racecheck does not model mbarrier pipelines; default "_tma_kernel state_fwd_ws_kernel fwd_wgmma_kernel", "" for none); a
#            summary line per binary, tool and shard: errors / hazards reported (docs/testing.md says how to read a
#            racecheck report on the TMA kernels); first (SAN_PROBE=1, the default) the racecheck probe of
#            experiments/kernel_lab/racecheck_tma (does racecheck model the mbarrier protocol at all?), up to 4 min;
#            the tests in SAN_API_ERROR_TESTS (default the allocator's out-of-memory test, which makes cudaMalloc
#            fail on purpose, the NCCL world-of-one case, whose NCCL start-up probes fail by design, and the CUDA graph
#            case whose host read inside a capture fails by design) run apart under memcheck with
#            --report-api-errors no. Shards that report something print their first
#            reports and failed tests' messages
#   hfref    the HF interchange check (issue 16): natsl-tiny with K = 64 trained 300 steps on text on the GPU at a
#            softmax target of 0.5, so both branches are compared (or
#            HF_RUN=DIR: that run directory's newest checkpoint and its config.yaml), natsl export-hf, natsl's logits
#            on 3000 bytes of wikitext2-valid (f32 on the CPU, bf16 on the GPU), then experiments/hf/compare_reference.py:
#            the reference's model code on the export, float32 against the CPU logits, bfloat16 against the bf16 ones;
#            verdict lines, hfref.json (HFREF_TF32=1 adds float32 with TF32 Triton dots; HFREF_TIMEOUT per compare, 300;
#            the compares run side by side: the reference's Triton compile and autotuning dominate each)
# Environment: NATSL_COMMIT (recorded in the rows), OUT, PEERS (which peers the peers stage runs: "gdn nats"),
# TRITON_CACHE_DIR (default /tmp/natsl-triton-cache; a carried .triton-cache.tgz seeds it, and calls that run a
# peer return it as triton-cache.tgz: carry it back as .triton-cache.tgz to skip the peers' compile and autotune),
# CALL_LIMIT (default 585 s: then the logs are packed into logs-partial.tgz, so a call the device tool cuts off
# at its limit still brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/natsl_gpu_out}
WHAT=${WHAT:-"build peers tests natsl gdn"}
LOG=$OUT/logs
mkdir -p "$LOG"
# Everything printed also goes to logs/console.log, which comes back even when the call is killed at its limit.
exec > >(tee -a "$LOG/console.log") 2>&1
T0=$(date +%s)
# Invocations chained in one device call (e.g. memcheck, then racecheck, each with its own filter) share OUT: each
# packs into archives of its own (logs.tgz / logs-partial.tgz, then logs-2.tgz / logs-2-partial.tgz, ...), and
# CALL_DEADLINE (seconds since the epoch, e.g. `export CALL_DEADLINE=$(($(date +%s) + 585))` before the first)
# bounds them all: each packs at the earlier of its CALL_LIMIT and the deadline.
PACK=logs
n=2
while [ -e "$OUT/$PACK.tgz" ] || [ -e "$OUT/$PACK-partial.tgz" ]; do PACK=logs-$n; n=$((n + 1)); done
# Run directories and this invocation's markers live outside $OUT: the device returns at most 8 files from it, and a
# run's lock file or a marker left by a call cut at its limit took two of them (2026-12-07: triton-cache.tgz lost).
SCRATCH=${SCRATCH:-/tmp/natsl-gpu-call}
MARK=$SCRATCH/mark-$PACK
rm -rf "$MARK" && mkdir -p "$MARK"
LIMIT=${CALL_LIMIT:-585}
if [ -n "${CALL_DEADLINE:-}" ] && [ $((CALL_DEADLINE - T0)) -lt "$LIMIT" ]; then LIMIT=$((CALL_DEADLINE - T0)); fi
# The device tool returns at most 8 files and kills the call at its limit: pack the logs shortly before
# CALL_LIMIT seconds (default 585) so that a call cut off at the limit still brings them back (logs-partial.tgz).
# The device may cut a call off sooner (the session's device time ran out: 2026-12-06, a call with CALL_LIMIT 390
# was stopped at 316 s and brought back 6 of 11 sanitizer logs), so the logs are also packed every PACK_EVERY
# seconds (default 60) into logs-partial.tgz (replaced atomically; it sorts before logs/, so it comes back first).
(
  last_pack=$T0
  while [ $(($(date +%s) - T0)) -lt "$LIMIT" ]; do
    [ -f "$MARK/done" ] && exit 0
    sleep 2
    if [ $(($(date +%s) - last_pack)) -ge "${PACK_EVERY:-60}" ]; then
      # exit 1 = a file changed while read (console.log, a running stage's log): the archive is still whole
      tar --warning=no-file-changed -C "$OUT" -czf "$OUT/.$PACK-partial.tgz.tmp" logs
      [ $? -le 1 ] && mv -f "$OUT/.$PACK-partial.tgz.tmp" "$OUT/$PACK-partial.tgz"
      last_pack=$(date +%s)
    fi
  done
  tar --warning=no-file-changed -C "$OUT" -czf "$OUT/.$PACK-partial.tgz.tmp" --exclude=console.log logs
  [ $? -le 1 ] && mv -f "$OUT/.$PACK-partial.tgz.tmp" "$OUT/$PACK-partial.tgz" &&
    find "$LOG" -type f ! -name console.log -delete && touch "$MARK/limit-packed"
) </dev/null >/dev/null 2>&1 &
WATCHDOG_PID=$!
el() { echo "[t=$(($(date +%s) - T0))s] $*"; }
# The peers' Triton cache as $OUT/triton-cache.tgz (under 40 MB), replaced atomically.
pack_triton_cache() {
  tar -C "$TRITON_CACHE_DIR" -czf "$OUT/.triton-cache.tgz.tmp" --exclude=.unpacked . 2>/dev/null &&
    mv -f "$OUT/.triton-cache.tgz.tmp" "$OUT/triton-cache.tgz"
  rm -f "$OUT/.triton-cache.tgz.tmp"
  if [ "$(stat -c %s "$OUT/triton-cache.tgz" 2>/dev/null || echo 0)" -gt $((40 << 20)) ]; then
    echo "triton cache over 40 MB: not returned"
    rm -f "$OUT/triton-cache.tgz"
  fi
}
has() { [[ " $WHAT " == *" $1 "* ]]; }
B=build-gpu
COMMIT=${NATSL_COMMIT:-unknown}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader

# Copies of the corpora carried as .shared-data stand in for ../shared/data.
if [ ! -d ../shared/data ] && [ -d .shared-data ]; then mkdir -p ../shared && cp -r .shared-data ../shared/data; fi

# Triton's cache (the peers' compiled kernels and, through FLA's cache_results, their autotuning results) kept
# between machines: a fresh machine spends minutes compiling and autotuning them (the authors' model printed no
# step within 300 s on 2026-12-06). A carried .triton-cache.tgz (repository root, git-ignored) is unpacked into
# TRITON_CACHE_DIR once per machine; a call that runs a peer returns the cache as $OUT/triton-cache.tgz (when
# under 40 MB) for the next session to carry as .triton-cache.tgz.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/natsl-triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ -f .triton-cache.tgz ] && [ ! -e "$TRITON_CACHE_DIR/.unpacked" ]; then
  tar -C "$TRITON_CACHE_DIR" -xzf .triton-cache.tgz && touch "$TRITON_CACHE_DIR/.unpacked" &&
    echo "triton cache: $(find "$TRITON_CACHE_DIR" -type f | wc -l) files from .triton-cache.tgz"
fi

if has build; then
  el "build"
  if [ -n "${BUILD_TARGETS:-}" ]; then
    (cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DNATSL_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
       -DNATSL_DEPS_DIR="$PWD/.deps" -DNATSL_COMMIT="$COMMIT" && cmake --build $B -j "$(nproc)" --target $BUILD_TARGETS) \
      >"$LOG/build.log" 2>&1 || { tail -30 "$LOG/build.log"; exit 1; }
  else
    NATSL_COMMIT=$COMMIT scripts/gpu_test.sh --build-only >"$LOG/build.log" 2>&1 || { tail -30 "$LOG/build.log"; exit 1; }
  fi
  el "build done"
fi

# A stage that runs natsl's binaries on a machine without a build (the device tool gives a warm machine back
# after a short idle time, and the next call gets a fresh one): say so at once instead of each stage failing
# quietly (a sanitize stage with no test binaries checks nothing and prints nothing).
if [ ! -d $B ]; then
  for st in tests natsl gdn ops train curve nsys mem lab ncu ab dist sweep sanitize hfref; do
    has $st || continue
    echo "NO BUILD: $B is missing on this machine (a fresh one?); stage '$st' needs it: call again with WHAT=\"build $WHAT\""
    touch "$MARK/done"
    exit 3
  done
fi

# The peers run alone on the machine: their Python launches must keep ahead of the GPU (a build beside them
# made FLA's forward 2x slower once).
if has peers; then
  el "peers"
  PEERS=${PEERS:-"gdn nats"}
  [[ " $PEERS " == *" gdn "* ]] &&
    python3 .peers/peers.py --fla .peers/flahead --what gdn --out "$OUT" --tag _gdn >"$LOG/peer_gdn.log" 2>&1
  [[ " $PEERS " == *" nats "* ]] &&
    python3 .peers/peers.py --fla .peers/flanats --nats .peers/nats --what nats --out "$OUT" --tag _nats \
      >"$LOG/peer_nats.log" 2>&1
  el "peers done"
  grep -h '"name"' "$LOG"/peer_*.log 2>/dev/null | head -20
fi

if has tests; then
  el "CUDA tests"
  JOBS=8 timeout "${TESTS_TIMEOUT:-300}" scripts/gpu_test.sh --test-only -R 'Cuda|cuda|Gpu|gpu' >"$LOG/tests.log" 2>&1
  echo "tests rc $?"
  grep -E "tests passed|CUDA tests:|FAILED|\(Failed\)|Exception" "$LOG/tests.log" | head -20
fi

if has sanitize; then
  if [ "${SAN_PROBE:-1}" = 1 ]; then
    el "racecheck probe (experiments/kernel_lab/racecheck_tma)"
    OUT=/tmp/racecheck_tma bash experiments/kernel_lab/racecheck_tma/run.sh 2>&1 | tail -6
    cp /tmp/racecheck_tma/*.log "$LOG/" 2>/dev/null
  fi
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
  # Tests that make a CUDA call fail on purpose (SAN_API_ERROR_TESTS, a gtest filter): memcheck reports each failed
  # call as an error, so they run apart, after the others, with --report-api-errors no (their memory accesses
  # are still checked). The NCCL case is one of them: NCCL asks cudaFuncGetAttributes about its kernels for
  # other GPU architectures at start-up, and each "no kernel image" answer is a reported failed call.
  SAN_API=${SAN_API_ERROR_TESTS-Allocator.CudaOutOfMemoryNamesTheRequest:NcclComm.AWorldOfOneRunsEveryCollectiveOnTheGpu:CudaGraph.AHostReadInsideTheCaptureFailsAndLeavesTheDeviceUsable}
  SANF_ALL=${SAN_FILTER:-*Cuda*:*Gpu*:*cuda*:*gpu*}
  # The summary lines of one binary's shards, and the first reports of those that found something, with failed
  # tests' messages (the per-shard logs come back only inside logs.tgz).
  san_report() {
    local tool=$1 name=$2 shards=$3 sh f
    for ((sh = 0; sh < shards; sh++)); do
      f=$LOG/san_${tool}_${name}_$sh.log
      echo "$tool $name shard $sh/$shards: $(grep -cE '^\[       OK \]' "$f") ok, $(grep -cE '^\[  FAILED  \]' "$f") failed," \
        "$(grep -cE '^\[ RUN      \]' "$f") started | $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|tests ran|PASSED" "$f" | tr '\n' ' ')"
    done
    for ((sh = 0; sh < shards; sh++)); do
      f=$LOG/san_${tool}_${name}_$sh.log
      # "Error: Potential ... hazard": a shard cut at SAN_TIMEOUT prints no summary line, only its reports.
      if grep -qE "ERROR SUMMARY: [1-9]|hazards displayed \([1-9]|^========= (Error: |Invalid|Program hit|Uninit)|^\[  FAILED  \]" "$f"; then
        echo "--- $tool $name shard $sh: first reports"
        grep -E "^=========  *(Invalid|Program hit|Error|Race|Warning|Uninit|Saved host)|^=========     at |^\[ RUN|^\[  FAILED|Failure|Expected|Which is|actual|error:" "$f" |
          grep -v "^=========     at .*(libcuda|libcudart|/lib/x86_64)" | head -40
      fi
    done
  }
  shards=${SAN_SHARDS:-1}
  for tool in ${SAN_TOOLS:-memcheck racecheck}; do
    extra=()
    [ "$tool" = racecheck ] && extra=(--racecheck-report hazard)
    # SAN_RACECHECK_EXCLUDE: kernels whose names contain one of its words run uninstrumented under racecheck
    # (the GDN passes on mbarrier pipelines, "_tma_kernel" and "state_fwd_ws_kernel": racecheck does not take an
    # mbarrier wait as a synchronisation, docs/testing.md, and instrumenting them makes the GDN cases run for
    # many minutes), so the rest of those cases' kernels are checked in the bound.
    # Several names, space-separated: one --kernel-name-exclude with a regex alternation (the option is given
    # once; its regex key matches any of them).
    # memcheck leaves the deliberate-API-error tests to their own run below; racecheck reports no API errors.
    SANF=$SANF_ALL
    [ "$tool" = memcheck ] && [ -n "$SAN_API" ] && SANF="$SANF-$SAN_API"
    if [ "$tool" = racecheck ]; then
      read -r -a exw <<<"${SAN_RACECHECK_EXCLUDE-_tma_kernel state_fwd_ws_kernel fwd_wgmma_kernel}"
      if [ ${#exw[@]} -gt 0 ]; then extra+=(--kernel-name-exclude "regex=$(IFS='|'; echo "${exw[*]}")"); fi
    fi
    # SAN_PARALLEL_BINS=1: every binary's shards start together (one SAN_TIMEOUT for all of them, not one each).
    spids=()
    started=()
    for bin in $B/tests/test_*; do
      [ -x "$bin" ] || continue
      name=$(basename "$bin")
      [ -n "${SAN_BINS:-}" ] && [[ " $SAN_BINS " != *" $name "* ]] && continue
      "$bin" --gtest_list_tests --gtest_filter="$SANF" 2>/dev/null | grep -q "^  " || continue
      el "compute-sanitizer $tool $name ($shards shards)"
      for ((sh = 0; sh < shards; sh++)); do
        GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$sh OMP_NUM_THREADS=2 timeout "${SAN_TIMEOUT:-120}" \
          "$SAN" --tool "$tool" "${extra[@]}" --print-limit 20 \
          "$bin" --gtest_filter="$SANF" >"$LOG/san_${tool}_${name}_$sh.log" 2>&1 &
        spids+=($!)
      done
      started+=("$name")
      if [ "${SAN_PARALLEL_BINS:-0}" != 1 ]; then
        wait "${spids[@]}"
        san_report "$tool" "$name" "$shards"
        spids=()
        started=()
      fi
    done
    if [ ${#spids[@]} -gt 0 ]; then
      wait "${spids[@]}"
      for name in "${started[@]}"; do san_report "$tool" "$name" "$shards"; done
    fi
  done
  if [ -n "$SAN_API" ] && [[ " ${SAN_TOOLS:-memcheck racecheck} " == *" memcheck "* ]]; then
    for bin in $B/tests/test_*; do
      [ -x "$bin" ] || continue
      [ -n "${SAN_BINS:-}" ] && [[ " $SAN_BINS " != *" $(basename "$bin") "* ]] && continue
      "$bin" --gtest_list_tests --gtest_filter="$SAN_API" 2>/dev/null | grep -q "^  " || continue
      name=$(basename "$bin")
      f=$LOG/san_memcheck_apierr_$name.log
      timeout "${SAN_TIMEOUT:-120}" "$SAN" --tool memcheck --report-api-errors no --print-limit 20 "$bin" \
        --gtest_filter="$SAN_API" >"$f" 2>&1
      echo "memcheck (CUDA call errors not reported) $name $SAN_API: $(grep -cE '^\[       OK \]' "$f") ok," \
        "$(grep -cE '^\[  FAILED  \]' "$f") failed | $(grep -E "ERROR SUMMARY" "$f")"
    done
  fi
fi

BIN=$B/experiments/bench
if has natsl; then
  el "bench natsl"
  "$BIN/natsl_bench_natsl" --json "$OUT/natsl.jsonl" --commit "$COMMIT" --peer "$OUT/anchors_nats.json" \
    >"$LOG/bench_natsl.txt" 2>&1
  echo "natsl rc $?"
  grep -E "natsl_mixed|ratio" "$LOG/bench_natsl.txt" | head -20
fi

if has gdn; then
  el "bench gdn"
  "$BIN/natsl_bench_gdn" --json "$OUT/gdn.jsonl" --commit "$COMMIT" --peer "$OUT/anchors_gdn.json" \
    --variants "${GDN_VARIANTS:-0}" >"$LOG/bench_gdn.txt" 2>"$LOG/bench_gdn_progress.txt"
  echo "gdn rc $?"
  cat "$LOG/bench_gdn.txt" | head -40
  el "bench gdn, sync timing"
  NATSL_BENCH_TIMING=sync "$BIN/natsl_bench_gdn" --json "$OUT/gdn_sync.jsonl" --commit "$COMMIT" \
    --peer "$OUT/anchors_gdn.json" --variants 0 >"$LOG/bench_gdn_sync.txt" 2>&1
  grep -E "natsl_gdn_fwd" "$LOG/bench_gdn_sync.txt" | head
fi

if has ops; then
  el "bench ops"
  ONLY=()
  [ -n "${OPS_ONLY:-}" ] && ONLY=(--only "$OPS_ONLY")
  "$BIN/natsl_bench_ops" --json "$OUT/ops.jsonl" "${ONLY[@]}" >"$LOG/bench_ops.txt" 2>&1
  echo "ops rc $?"
  grep -E "copy|embedding|ratio" "$LOG/bench_ops.txt" | head -30
fi

# The authors' model in the same call (issue 18's peer): ref_model.py (../shared/bench, carried in .peers) trains
# their NAtS-L 340M (REF_LAYERS natsl) or FLA's GDN-only model (gdn) for 12 steps, B8 T4096, and writes
# ref_model_<layers>.json (median step, tokens/s, MFU, peak memory). Its first step autotunes Triton kernels
# (1.5-3.5 min on a fresh machine): REF_TIMEOUT (default 420 s) per model. Run it before or after `train`, never
# beside it.
if has refmodel; then
  for size in ${REF_SIZES:-340m}; do
    for layers in ${REF_LAYERS:-natsl}; do
      el "refmodel $layers $size (the authors' stack)"
      if [ "$size" = 340m ]; then
        tag=$layers; script=(.peers/ref_model.py)
      else
        tag=${layers}_$size; script=(experiments/bench/ref_model_sized.py --size "$size" --script .peers/ref_model.py)
      fi
      OUT=$OUT timeout "${REF_TIMEOUT:-420}" python3 "${script[@]}" --fla .peers/flanats --nats .peers/nats \
        --layers "$layers" --batch "${REF_BATCH:-8}" >"$LOG/ref_model_$tag.log" 2>&1
      echo "refmodel $layers $size rc $?"
      tail -3 "$LOG/ref_model_$tag.log"
    done
  done
  pack_triton_cache  # now: a call cut off later at its limit still returns it
fi

if has train; then
  for cfg in ${TRAIN_CONFIGS:-natsl-340m}; do
    for variant in ${TRAIN_VARIANTS:-config}; do
      # config: as the config says (the GPU configs replay the step as a CUDA graph); eager: train.cuda_graph=false,
      # the host launches every kernel; graph: train.cuda_graph=true (the steps after the profiled ones replay one
      # captured graph).
      tag=$cfg; graph_key=""
      if [ "$variant" = eager ]; then tag=${cfg}_eager; graph_key="train.cuda_graph=false"; fi
      if [ "$variant" = graph ]; then tag=${cfg}_graph; graph_key="train.cuda_graph=true"; fi
      el "train $tag"
      rm -rf "$SCRATCH/run-natsl"
      # Steps 20..22 profiled (issue 18's per-category table; trace.json opens in Perfetto).
      timeout 300 "$B/natsl" train "configs/$cfg.yaml" tokenizer.kind=byte train.steps="${TRAIN_STEPS:-40}" train.warmup_steps=10 \
        train.grad_accum=1 train.log_every=5 train.eval_every=0 train.ckpt_every=0 train.out_dir="$SCRATCH/run-natsl" \
        "train.profile_steps=[20,23]" $graph_key ${TRAIN_EXTRA:-} >"$LOG/train_$tag.log" 2>&1
      echo "train $tag rc $?"
      grep -vE "^\s*$" "$LOG/train_$tag.log" | tail -40
      cp "$SCRATCH/run-natsl/metrics.jsonl" "$LOG/train_${tag}_metrics.jsonl" 2>/dev/null
      cp "$SCRATCH/run-natsl/profile/summary.json" "$OUT/profile_summary_$tag.json" 2>/dev/null
      gzip -c "$SCRATCH/run-natsl/profile/trace.json" >"$OUT/profile_trace_$tag.json.gz" 2>/dev/null
      rm -rf "$SCRATCH/run-natsl"
    done
  done
  # One line per run: the median step time of the last 10 steps (after the profiled ones, and after a graph's
  # capture), tokens/s, MFU and peak memory.
  for m in "$LOG"/train_*_metrics.jsonl; do
    [ -f "$m" ] || continue
    python3 - "$m" <<'PY'
import json, statistics, sys
rows = []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        pass
last = [r for r in rows if "step_time_s" in r][-10:]
if last:
    t = statistics.median(r["step_time_s"] for r in last)
    tok = statistics.median(r["tokens_per_s"] for r in last)
    mfu = statistics.median((r.get("mfu") or 0.0) for r in last)
    mem = max(r.get("peak_mem_bytes", 0) for r in rows) / 2**30
    name = sys.argv[1].rsplit("/", 1)[-1].replace("_metrics.jsonl", "")
    print(f"{name}: steps {last[0]['step']}-{last[-1]['step']} median {t * 1e3:.1f} ms/step, {tok:.0f} tokens/s, "
          f"MFU {mfu:.3f}, peak {mem:.1f} GiB")
PY
  done
fi

# The 300-step loss curve of natsl-340m (issue 18: training must not move beyond bf16 noise), the settings of the
# recorded baseline (CURVE_BASE, default experiments/results/train/2026-11-28-natsl-340m-300steps-h200-3492547),
# CURVE_EXTRA more overrides (e.g. train.cuda_graph=true); the overlay table by experiments/bench/loss_overlay.py.
if has curve; then
  base=${CURVE_BASE:-experiments/results/train/2026-11-28-natsl-340m-300steps-h200-3492547}
  el "curve natsl-340m 300 steps ${CURVE_EXTRA:-}"
  rm -rf "$SCRATCH/run-curve"
  timeout 300 "$B/natsl" train configs/natsl-340m.yaml tokenizer.kind=byte train.steps=300 train.warmup_steps=30 \
    train.grad_accum=1 train.log_every=25 train.eval_every=0 train.ckpt_every=0 train.out_dir="$SCRATCH/run-curve" \
    ${CURVE_EXTRA:-} >"$LOG/curve.log" 2>&1
  echo "curve rc $?"
  grep -vE "^\s*$" "$LOG/curve.log" | tail -8
  cp "$SCRATCH/run-curve/metrics.jsonl" "$LOG/curve_metrics.jsonl" 2>/dev/null
  python3 experiments/bench/loss_overlay.py "$base.metrics.jsonl" "$LOG/curve_metrics.jsonl" 2>&1 | tee "$LOG/curve_overlay.txt"
  rm -rf "$SCRATCH/run-curve"
fi

# Where the GPU idles (issue 18's host gaps): natsl-340m under Nsight Systems (CUDA API + NVTX, no sampling),
# NSYS_STEPS steps (default 10), exported to SQLite and read by experiments/bench/gpu_gaps.py (the last 4 steps:
# idle time per step, by the host range that launched the work ending each gap, host API calls, kernel table).
if has nsys; then
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/nsight-systems*/bin/nsys 2>/dev/null | head -1)
  if [ -z "$NSYS" ]; then
    echo "nsys: Nsight Systems is not installed on this machine: stage skipped"
  else
    el "nsys natsl-340m ($NSYS)"
    rm -rf "$SCRATCH/run-nsys" /tmp/natsl-nsys.*
    timeout 300 "$NSYS" profile -t cuda,nvtx -s none --cpuctxsw=none -o /tmp/natsl-nsys -f true \
      "$B/natsl" train configs/natsl-340m.yaml tokenizer.kind=byte train.steps="${NSYS_STEPS:-10}" train.warmup_steps=2 \
      train.grad_accum=1 train.log_every=5 train.eval_every=0 train.ckpt_every=0 train.nvtx=true ${TRAIN_EXTRA:-} \
      train.out_dir="$SCRATCH/run-nsys" >"$LOG/nsys_train.log" 2>&1
    echo "nsys train rc $?"
    timeout 200 "$NSYS" export --type sqlite -f true -o /tmp/natsl-nsys.sqlite /tmp/natsl-nsys.nsys-rep >>"$LOG/nsys_train.log" 2>&1
    echo "nsys export rc $?"
    python3 experiments/bench/gpu_gaps.py /tmp/natsl-nsys.sqlite >"$LOG/gpu_gaps.txt" 2>&1
    echo "gpu_gaps rc $?"
    head -60 "$LOG/gpu_gaps.txt"
    rm -rf "$SCRATCH/run-nsys" /tmp/natsl-nsys.*
  fi
fi

# Activation memory with selective recomputation (issue 18): natsl-340m bf16, a few steps at each sequence length
# and recompute setting; peak memory and tokens/s from metrics.jsonl. MEM_SEQS, MEM_RECOMPUTE (';'-separated).
if has mem; then
  # MEM_RECOMPUTE: settings separated by ';', each train.recompute's list, optionally followed by
  # /train.recompute_keep's (e.g. "[block]/[matmul]").
  # The baselines first (a call cut at its limit loses the last settings).
  IFS=';' read -ra RCS <<<"${MEM_RECOMPUTE:-[];[block];[mixer,mlp];[block]/[matmul];[mixer,mlp]/[matmul];[mlp]/[matmul]}"
  for seq in ${MEM_SEQS:-4096 16384 32768}; do
    bs=$((8 * 4096 / seq)); [ "$bs" -lt 1 ] && bs=1
    for setting in "${RCS[@]}"; do
      rc=${setting%%/*}
      keep="[]"; [[ "$setting" == */* ]] && keep=${setting#*/}
      el "mem: seq $seq batch $bs recompute $rc keep $keep"
      rm -rf "$SCRATCH/run-mem"
      timeout 180 "$B/natsl" train configs/natsl-340m.yaml tokenizer.kind=byte train.steps=6 train.warmup_steps=1 \
        train.grad_accum=1 train.batch_size=$bs train.seq_len=$seq train.log_every=1 train.eval_every=0 train.ckpt_every=0 \
        "train.recompute=$rc" "train.recompute_keep=$keep" train.out_dir="$SCRATCH/run-mem" \
        >"$LOG/mem_${seq}_${rc//[^a-z,]/}_keep${keep//[^a-z,]/}.log" 2>&1
      echo "mem seq $seq bs $bs recompute $rc keep $keep: rc $? | $(tail -1 "$SCRATCH/run-mem/metrics.jsonl" 2>/dev/null |
        python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(f\"peak {r['peak_mem_bytes']/2**30:.1f} GiB, {r['tokens_per_s']:.0f} tok/s, mfu {r.get('mfu')}\")" 2>&1)"
      rm -rf "$SCRATCH/run-mem"
    done
  done
fi

# The NCCL path at world size 1: `natsl train --nproc 1` must equal the plain run bit for bit (deterministic
# f32, natsl-tiny on the GPU), then natsl-340m bf16 through NCCL for its tokens/s and how many gradient
# buckets went out during the backward (metrics.jsonl "dist").
if has dist; then
  el "dist (NCCL, world size 1)"
  rm -rf "$OUT/dist-plain" "$OUT/dist-nccl"
  # natsl-tiny with GDN heads of K = V = 64 (the CUDA GDN kernels take K in {64, 128, 192, 256}) and 2 softmax heads.
  common="train.device=cuda train.deterministic=true train.steps=30 train.eval_every=0 train.ckpt_every=0 train.log_every=10
          model.head_dim=64 model.num_attn_heads=2"
  timeout 200 "$B/natsl" train configs/natsl-tiny.yaml $common train.out_dir="$OUT/dist-plain" >"$LOG/dist_plain.log" 2>&1
  echo "plain rc $?"
  NCCL_DEBUG=WARN timeout 200 "$B/natsl" train --nproc 1 configs/natsl-tiny.yaml $common train.out_dir="$OUT/dist-nccl" \
    >"$LOG/dist_nccl.log" 2>&1
  echo "nproc 1 rc $?"
  python3 - "$OUT/dist-plain/metrics.jsonl" "$OUT/dist-nccl/metrics.jsonl" <<'PY' | tee -a "$LOG/dist_nccl.log"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
same = len(a) == len(b) > 0 and all(x["loss"] == y["loss"] and x["grad_norm"] == y["grad_norm"] for x, y in zip(a, b))
print(f"dist: --nproc 1 (NCCL) vs plain: {len(a)} / {len(b)} steps, bit-identical loss and grad norm: {same}")
print("dist row:", b[-1].get("dist") if b else None)
PY
  rm -rf "$OUT/dist-340m"
  timeout 300 "$B/natsl" train --nproc 1 configs/natsl-340m.yaml tokenizer.kind=byte train.steps=20 train.warmup_steps=5 \
    train.grad_accum=1 train.log_every=5 train.eval_every=0 train.ckpt_every=0 train.out_dir="$OUT/dist-340m" \
    "train.profile_steps=[12,15]" >"$LOG/dist_340m.log" 2>&1
  echo "340m nproc 1 rc $?"
  grep -E "distributed:|step +20/" "$LOG/dist_340m.log"
  tail -1 "$OUT/dist-340m/metrics.jsonl" 2>/dev/null | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('tokens/s', r['tokens_per_s'], 'dist', r.get('dist'))"
  # Overlap in device time (CUDA events on the compute stream, steps 12-14): "gradient reduction" is what the
  # compute stream still waited for the all-reduces after the backward's last kernel.
  python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['phases']; print('dist phases ms/step:', {k: round(v, 2) for k, v in p.items()})" \
    "$OUT/dist-340m/profile/summary.json" 2>&1 | tee -a "$LOG/dist_340m.log"
  rm -rf "$OUT/dist-plain" "$OUT/dist-nccl" "$OUT/dist-340m"
fi

# A/B in one call: the benchmarks of an older tree (carried as the ignored folder AB_DIR, default .ab-old, e.g.
# `git worktree add .ab-old <commit>`) against this tree's, alternating old/new twice; AB_BENCHES picks them (default
# "gdn"; any of gdn ops natsl attention). Each run's rows go to logs/ab/ab_<bench>_{old,new}_N.jsonl (inside the
# logs archive: the device returns at most 8 files); experiments/bench/ab_compare.py pairs them (the mean of each
# side's runs, each run a median) and writes ab_rows.jsonl (ours = this tree, peer = the old one).
if has ab; then
  AB=${AB_DIR:-.ab-old}
  AB_BENCHES=${AB_BENCHES:-gdn}
  mkdir -p "$LOG/ab"
  targets=""
  for b in $AB_BENCHES; do targets="$targets natsl_bench_$b"; done
  el "A/B: building$targets in $AB"
  (cd "$AB" && cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DNATSL_ENABLE_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES=90 -DNATSL_DEPS_DIR="$PWD/../.deps" >/dev/null &&
   cmake --build build-gpu --target $targets -j "$(nproc)") >"$LOG/ab_build.log" 2>&1 || tail -20 "$LOG/ab_build.log"
  cmake --build "$B" --target $targets -j "$(nproc)" >>"$LOG/ab_build.log" 2>&1 || tail -20 "$LOG/ab_build.log"
  for i in 1 2; do
    for b in $AB_BENCHES; do
      args=()
      [ "$b" = gdn ] && args=(--variants 0)
      for side in old new; do
        bin=$BIN/natsl_bench_$b
        [ "$side" = old ] && bin=$AB/build-gpu/experiments/bench/natsl_bench_$b
        # natsl_bench_ops takes no --commit
        sargs=("${args[@]}")
        [ "$b" = ops ] || sargs+=(--commit "$side")
        "$bin" --json "$LOG/ab/ab_${b}_${side}_$i.jsonl" "${sargs[@]}" >"$LOG/ab_${b}_${side}_$i.txt" 2>&1
        echo "ab $b $side $i rc $?"
      done
    done
  done
  python3 experiments/bench/ab_compare.py "$LOG/ab" $AB_BENCHES --json "$OUT/ab_rows.jsonl" --commit "$COMMIT" \
    --old-label "natsl $(git -C "$AB" rev-parse --short HEAD 2>/dev/null || echo "$AB") (same call, alternating)" \
    --date "$(date -u +%F)" 2>&1 | tee "$LOG/ab_compare.txt"
fi

if has flaprof; then
  el "FLA profile"
  python3 experiments/bench/fla_profile.py --fla .peers/flahead --out "$OUT" >"$LOG/fla_profile.log" 2>&1
  grep -E "^FLA|^ +[0-9]" "$LOG/fla_profile.log" | head -60
fi

if has ncu; then
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  SECTIONS=${NCU_SECTIONS:-"SpeedOfLight WarpStateStats Occupancy LaunchStats MemoryWorkloadAnalysis"}
  SEC=()
  for s in $SECTIONS; do SEC+=(--section "$s"); done
  el "ncu GDN forward ($NCU)"
  timeout 240 "$NCU" --clock-control none -k "regex:${NCU_KERNELS:-state_fwd|prep2|chunk_out}" --launch-count "${NCU_COUNT:-4}" \
    "${SEC[@]}" "$BIN/natsl_bench_gdn" --variants 0 --shapes b8 --reps 1 >"$LOG/ncu_gdn.txt" 2>&1
  echo "ncu gdn rc $?"
  grep -E "^  [a-z_]+.*\(|Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput|Stall|Warp Cycles Per Issued" \
    "$LOG/ncu_gdn.txt" | head -60
  el "ncu FLA forward"
  timeout 150 "$NCU" --clock-control none --nvtx --nvtx-include "prof/" "${SEC[@]}" \
    python3 experiments/bench/fla_profile.py --fla .peers/flahead --ncu >"$LOG/ncu_fla.txt" 2>&1
  echo "ncu fla rc $?"
  grep -E "^  [A-Za-z_].*\(|Duration|Registers Per|Block Size|Grid Size|Dynamic Shared|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput" \
    "$LOG/ncu_fla.txt" | head -80
  el "ncu embedding backward"
  timeout 120 "$NCU" --clock-control none -k "regex:embedding_bwd|Radix|pack_keys|segment|Onesweep|Histogram|Scan" \
    --launch-skip 0 --launch-count 20 --section SpeedOfLight --section LaunchStats \
    "$BIN/natsl_bench_ops" --only "embedding bwd segments" --reps 1 >"$LOG/ncu_emb.txt" 2>&1
  echo "ncu emb rc $?"
  grep -E "^  [A-Za-z_].*\(|Duration" "$LOG/ncu_emb.txt" | head -60
fi

if has lab; then
  # The lab programs are not part of `all` (experiments/kernel_lab/CMakeLists.txt): each is built here by name, and
  # one that does not compile is reported and skipped. cmake first, so that labs added since the build are listed.
  cmake "$B" >/dev/null 2>&1
  # Probes (natsl_lab_wgmma: the facts the wgmma kernels rest on) before the programs that use them.
  labs=$(ninja -C "$B" -t targets all 2>/dev/null | grep -oE '^natsl_lab_[A-Za-z0-9_]+' | sort -u |
    awk '$0 == "natsl_lab_wgmma" { print; next } { rest = rest $0 "\n" } END { printf "%s", rest }')
  [ -n "$labs" ] || echo "lab: no natsl_lab_* targets in $B (built with Ninja and CUDA?)"
  for t in $labs; do
    if [ -n "${LAB_ONLY:-}" ]; then
      pick=0
      for sub in $LAB_ONLY; do [[ "$t" == *"$sub"* ]] && pick=1; done
      [ "$pick" = 1 ] || continue
    fi
    el "lab $t"
    if ! cmake --build "$B" --target "$t" -j "$(nproc)" >"$LOG/build_$t.log" 2>&1; then
      echo "lab $t: build failed"
      grep -E "error|Error" "$LOG/build_$t.log" | head -20
      continue
    fi
    timeout 300 "$B/experiments/kernel_lab/$t" 2>&1 | tee "$LOG/$t.log" | tail -40
    echo "lab $t rc ${PIPESTATUS[0]}"
  done
fi

# The routing-sparsity sweep (issue 16): `natsl sweep SWEEP_FILE --parallel SWEEP_PARALLEL` (small runs sharing the
# GPU), bounded by SWEEP_SECONDS; then SIGTERM: the running trainers checkpoint and stop, and the next call on the
# same warm machine resumes them (the run directories stay in the working copy). The summary and each run's
# config.yaml, metrics.jsonl (thinned: every 10th step and every evaluation) and the tail of its train.log come
# back as sweep.txz (experiments/sweeps/pack_sweep.py; checkpoints stay behind). Set CALL_LIMIT above
# SWEEP_SECONDS + 30: the sweep stops its runs within seconds of the SIGTERM and then writes its summary.
if has sweep; then
  SW=${SWEEP_FILE:-configs/sweeps/routing-sparsity.yaml}
  el "sweep $SW, ${SWEEP_PARALLEL:-4} at once, at most ${SWEEP_SECONDS:-400} s"
  "$B/natsl" sweep "$SW" --dry-run 2>&1 | tail -30
  sweep_finish() {
    grep -vE "^\s*$" "$LOG/sweep.log" | tail -40
    SWD=$(sed -n 's/^out_dir: *//p' "$SW" | head -1)
    [ -n "$SWD" ] && [ -d "$SWD" ] && python3 experiments/sweeps/pack_sweep.py "$SWD" "$OUT/sweep.txz"
    cat "$SWD/summary.md" 2>/dev/null | head -40
    # The per-task tables over training into the log too (console.log comes back even when files do not).
    [ -n "$SWD" ] && [ -d "$SWD" ] && python3 experiments/sweeps/read_sweep.py "$SWD" >"$LOG/sweep_tables.md" 2>&1
  }
  if [ "${SWEEP_BG:-0}" = 1 ]; then
    timeout -s TERM -k 90 "${SWEEP_SECONDS:-400}" "$B/natsl" sweep "$SW" --parallel "${SWEEP_PARALLEL:-4}" \
      >"$LOG/sweep.log" 2>&1 &
    SWEEP_PID=$!
  else
    timeout -s TERM -k 90 "${SWEEP_SECONDS:-400}" "$B/natsl" sweep "$SW" --parallel "${SWEEP_PARALLEL:-4}" \
      >"$LOG/sweep.log" 2>&1
    echo "sweep rc $?"
    sweep_finish
  fi
fi

# The HF interchange check (issue 16): does the reference's model code, loading a natsl export, give natsl's
# logits on the same tokens? Work files stay in HFREF_DIR (not under $OUT: only logs and hfref.json come back).
if has hfref; then
  el "hfref: the reference's model code on a natsl export"
  HW=${HFREF_DIR:-/tmp/hfref}
  rm -rf "$HW" && mkdir -p "$HW"
  if [ -n "${HF_RUN:-}" ]; then
    HRUN=$HF_RUN
  else
    HRUN=$HW/run
    # K = 64: natsl's CUDA GDN takes K in {64, 128, 192, 256}. Text, so the logits are a byte model's. A softmax
    # target of 0.5 (a training-only knob: the export holds only weights): the free router sends every text chunk
    # to GDN (2026-12-06), and then the compare would check the softmax branch on the last chunk alone.
    timeout 200 "$B/natsl" train configs/natsl-tiny.yaml model.head_dim=64 train.device=cuda train.steps=300 \
      "model.nats_frac_target=[0.5]" train.eval_every=0 train.ckpt_every=300 train.seq_len=256 data.source=text \
      "data.text.train=[../shared/data/tinyshakespeare.txt]" train.out_dir="$HRUN" >"$LOG/hfref_train.log" 2>&1
    echo "hfref train rc $?"
    grep -E "^done|error" "$LOG/hfref_train.log" | tail -3
  fi
  HCK=$(ls -d "$HRUN"/checkpoints/step_* 2>/dev/null | sort | tail -1)
  if [ -z "$HCK" ] || [ ! -f "$HRUN/config.yaml" ]; then
    echo "hfref: no checkpoint or config.yaml in $HRUN; skipped"
  else
    echo "hfref: checkpoint $HCK"
    head -c 3000 ../shared/data/wikitext2-valid.txt >"$HW/text.txt"
    "$B/natsl" export-hf "$HCK" "$HW/hf" >"$LOG/hfref_export.log" 2>&1
    echo "hfref export rc $?"
    # f32 on the CPU: natsl's exact model. bf16 on the GPU: what a bf16 run computes.
    for side in cpu bf16; do
      dev=(train.device=cpu train.precision=f32)
      [ $side = bf16 ] && dev=(train.device=cuda train.precision=bf16)
      "$B/natsl" eval "$HRUN/config.yaml" checkpoint="$HCK" "${dev[@]}" train.eval_batches=1 \
        --logits "$HW/text.txt" "$HW/logits_$side.safetensors" --routing-map "$HW/text.txt" \
        --json "$HW/eval_$side.json" >"$LOG/hfref_eval_$side.log" 2>&1
      echo "hfref natsl eval $side rc $?"
      cp "$HW/eval_$side.json" "$LOG/hfref_eval_$side.json" 2>/dev/null
    done
    BF16_LOGITS=$HW/logits_bf16.safetensors
    [ -f "$BF16_LOGITS" ] || { echo "hfref: no bf16 logits; bfloat16 compared with the CPU f32 logits"; BF16_LOGITS=$HW/logits_cpu.safetensors; }
    runs=("f32 --dtype float32 --natsl-logits $HW/logits_cpu.safetensors --natsl-eval-json $HW/eval_cpu.json"
          "bf16 --dtype bfloat16 --natsl-logits $BF16_LOGITS --natsl-eval-json $HW/eval_bf16.json --baseline $HW/logits_cpu.safetensors")
    [ "${HFREF_TF32:-0}" = 1 ] &&
      runs+=("f32_tf32 --dtype float32 --f32-dots tf32 --natsl-logits $HW/logits_cpu.safetensors --natsl-eval-json $HW/eval_cpu.json")
    names=()
    pids=()
    for r in "${runs[@]}"; do
      set -- $r
      name=$1; shift
      names+=("$name")
      el "hfref compare $name (started)"
      (timeout "${HFREF_TIMEOUT:-300}" python3 -u experiments/hf/compare_reference.py --fla .peers/flanats --nats .peers/nats \
         --hf "$HW/hf" --json "$LOG/hfref_$name.json" "$@" >"$LOG/hfref_$name.log" 2>&1
       echo "hfref $name rc $?" >>"$LOG/hfref_$name.log") &
      pids+=($!)
    done
    wait "${pids[@]}"
    for name in "${names[@]}"; do
      el "hfref compare $name"
      grep -E "^reference model|^routing|^WARNING|^shape differs|^missing|^unexpected|^hfref " "$LOG/hfref_$name.log"
      grep -q "^hfref [a-z]" "$LOG/hfref_$name.log" || tail -15 "$LOG/hfref_$name.log"
    done
    python3 - "$OUT/hfref.json" "$LOG"/hfref_f32*.json "$LOG"/hfref_bf16.json <<'PY'
import json, os, sys
out = {os.path.basename(p)[len("hfref_"):-len(".json")]: json.load(open(p)) for p in sys.argv[2:] if os.path.exists(p)}
json.dump(out, open(sys.argv[1], "w"), indent=1)
print("hfref.json:", {k: v.get("verdict") for k, v in out.items()})
PY
  fi
fi

if [ -n "${SWEEP_PID:-}" ]; then
  el "waiting for the sweep"
  wait "$SWEEP_PID"
  echo "sweep rc $?"
  sweep_finish
fi

if has peers || has refmodel || has hfref || has flaprof; then pack_triton_cache; fi

el "done"
touch "$MARK/done"
wait "$WATCHDOG_PID"
rm -f "$MARK/done"
tar -C "$OUT" -czf "$OUT/$PACK.tgz" logs && rm -rf "$LOG"
# The periodic snapshot is redundant once $PACK.tgz holds everything (it stays when the limit's pack moved logs
# into it).
[ -f "$MARK/limit-packed" ] || rm -f "$OUT/$PACK-partial.tgz"
rm -f "$MARK/limit-packed" "$OUT/.$PACK-partial.tgz.tmp"
ls "$OUT"
