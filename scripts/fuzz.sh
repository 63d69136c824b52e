#!/usr/bin/env bash
# Builds the libFuzzer fuzzers (tests/fuzz, clang + ASan + UBSan) and runs each for FUZZ_SECONDS (default
# 60) over its committed corpus (tests/fuzz/corpus/NAME). Fails on any crash, sanitizer report, leak or
# timeout; the input that caused it is left as FUZZ_OUT/NAME/crash-* (default build-sanitize/fuzz-out).
# New inputs the fuzzers find go to FUZZ_OUT/NAME/corpus, not into the repository (add the interesting
# ones by hand). FUZZ_SEED fixes libFuzzer's random seed (CI sets 1, so a commit explores the same inputs on
# every run; a slower machine explores a shorter prefix of them); unset, each run draws a new seed, which is
# what a developer's long run before a submission wants. Arguments: fuzzer names to run (default: all).
source "$(dirname "${BASH_SOURCE[0]}")/sanitize_common.sh"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_OUT="${FUZZ_OUT:-$SAN_BUILD_DIR/fuzz-out}"
seed=()
[ -n "${FUZZ_SEED:-}" ] && seed=(-seed="$FUZZ_SEED")
FUZZERS=("$@")
[ ${#FUZZERS[@]} -gt 0 ] || FUZZERS=(fuzz_safetensors fuzz_shard fuzz_config fuzz_checkpoint_state fuzz_jsonl)
configure_and_build_sanitized --target "${FUZZERS[@]}"
failed=()
for f in "${FUZZERS[@]}"; do
  out="$FUZZ_OUT/$f"
  rm -rf "$out" && mkdir -p "$out/corpus"
  dict=()
  [ -f "$ROOT/tests/fuzz/$f.dict" ] && dict=(-dict="$ROOT/tests/fuzz/$f.dict")
  say "fuzzing $f for ${FUZZ_SECONDS}s"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a reader must not allocate what a header claims.
  if ! (cd "$out" && "$SAN_BUILD_DIR/tests/fuzz/$f" "${dict[@]}" "${seed[@]}" -max_total_time="$FUZZ_SECONDS" -timeout=10 \
          -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="$out/" \
          "$out/corpus" "$ROOT/tests/fuzz/corpus/$f" >"$out/log.txt" 2>&1); then
    tail -60 "$out/log.txt"
    failed+=("$f")
  else
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done)" "$out/log.txt" | tr '\n' ' '; echo
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  say "fuzzers that crashed: ${failed[*]} (inputs: $FUZZ_OUT/NAME/crash-*)"
  exit 1
fi
say "all fuzzers ran ${FUZZ_SECONDS}s without a crash"
