# Shared by scripts/sanitize.sh and scripts/fuzz.sh: one clang build with AddressSanitizer +
# UndefinedBehaviorSanitizer and libFuzzer's coverage hooks (NATSL_FUZZ=ON, CPU only), in its own build
# directory (default build-sanitize), which both the sanitized test suite and the fuzzers use. Sourced.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SAN_BUILD_DIR="${SAN_BUILD_DIR:-$ROOT/build-sanitize}"
# Debian 12's clang 14 and its runtime (libFuzzer, ASan, UBSan live in libclang-rt-14-dev).
NATSL_APT_PACKAGES+=(clang libclang-rt-14-dev)

# The runtime options every sanitized program runs with: stop at the first report, with a stack.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

configure_and_build_sanitized() {
  install_missing
  local cxx cc
  cxx="$(command -v clang++ || command -v clang++-14)"
  cc="$(command -v clang || command -v clang-14)"
  [ -n "$cxx" ] || { say "clang++ not found"; exit 1; }
  mkdir -p "$SAN_BUILD_DIR"
  say "configuring the ASan + UBSan + fuzzer build in $SAN_BUILD_DIR ($cxx)"
  # Without OpenMP: clang needs libomp-14-dev for it (not in the package list), and serial loops run the
  # same CPU code with every access on one thread, so a sanitized run is deterministic.
  CC="$cc" CXX="$cxx" cmake -S "$ROOT" -B "$SAN_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DNATSL_ENABLE_CUDA=OFF -DNATSL_FUZZ=ON -DNATSL_BUILD_BENCH=OFF -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON >"$SAN_BUILD_DIR/configure.log" 2>&1 \
    || { cat "$SAN_BUILD_DIR/configure.log"; exit 1; }
  say "building with $JOBS jobs: $*"
  cmake --build "$SAN_BUILD_DIR" -j "$JOBS" "$@"
}
