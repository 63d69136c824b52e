#!/usr/bin/env bash
# The GPU test entry point: configures (Release, sm_90, Ninja, CUDA on), builds with all cores and runs the
# whole test suite with ctest, where the CUDA tests run instead of skipping. Run from anywhere on a machine
# with an NVIDIA GPU, nvcc, cmake, ninja, GoogleTest, Eigen, yaml-cpp, spdlog and fmt; nothing is
# installed. nlohmann-json, CLI11 and xxhash.h come from the system or, failing that, from .deps/include (an
# ignored folder of header-only copies carried to machines where nothing can be installed).
#
#   scripts/gpu_test.sh                 configure + build + test
#   scripts/gpu_test.sh --build-only    configure + build (e.g. when one call may not run both)
#   scripts/gpu_test.sh --test-only     test an existing build
#   extra arguments go to ctest, e.g. scripts/gpu_test.sh -R Cuda
# Environment: BUILD_DIR (default build-gpu), JOBS (default all cores), CUDA_ARCH (default 90),
# NATSL_COMMIT (the commit to record in the build: checkpoints, benchmark rows; it wins over the tree's .git,
# which a copy sent to a GPU machine may lack or carry stale).
# Exit code: non-zero when the build fails, a test fails, or a CUDA test was skipped (no usable GPU).
BUILD_DIR="${BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build-gpu}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CUDA_ARCH="${CUDA_ARCH:-90}"

do_build=1
do_test=1
ctest_args=()
for a in "$@"; do
  case "$a" in
    --build-only) do_test=0 ;;
    --test-only) do_build=0 ;;
    *) ctest_args+=("$a") ;;
  esac
done

if command -v nvidia-smi >/dev/null 2>&1; then
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
else
  say "warning: nvidia-smi not found; CUDA tests will skip and this script will fail"
fi
command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || { say "nvcc not found"; exit 1; }

if [ "$do_build" = 1 ]; then
  mkdir -p "$BUILD_DIR"
  NATSL_CUDA=on configure_and_build -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DNATSL_DEPS_DIR="$ROOT/.deps" \
    -DNATSL_COMMIT="${NATSL_COMMIT:-}"
  grep -q "natsl: CUDA backend ON" "$BUILD_DIR.configure.log" || { say "CUDA backend is OFF: nvcc not usable"; exit 1; }
fi
[ "$do_test" = 1 ] || exit 0

cd "$BUILD_DIR"
LOG="$BUILD_DIR/gpu_test.log"
# ctest runs tests side by side; OpenMP teams of every core inside each (the CPU references of the
# gradcheck tests) would oversubscribe the machine and spin. One thread per test process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# The NumPy cross-check of the GDN reference is a CPU test that CI runs with python3-numpy installed; a GPU
# machine where nothing can be installed may lack numpy: there it skips instead of failing.
export NATSL_NUMPY_OPTIONAL=1
say "running ctest (log: $LOG)"
set +e
ctest --output-on-failure --timeout 900 -j "$JOBS" "${ctest_args[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e

# Summary: totals, failures, and the CUDA tests that ran or skipped.
passed_line=$(grep -E "tests passed" "$LOG" | tail -1 || true)
cuda_total=$(grep -cE "Test +#[0-9]+: [A-Za-z]*Cuda" "$LOG" || true)
# The status is the word after the name's dot leader ("Passed", "***Failed", "***Skipped", "***Timeout",
# "***Exception: ..."), not a word inside a test's name (e.g. CudaGraphFallback.FailedCaptures...).
cuda_skipped=$( (grep -E "Test +#[0-9]+: [A-Za-z]*Cuda[^ ]* \.+ *(\*+)?Skipped" "$LOG" || true) | wc -l)
cuda_failed=$( (grep -E "Test +#[0-9]+: [A-Za-z]*Cuda[^ ]* \.+ *\*+(Failed|Exception|Timeout)" "$LOG" || true) | wc -l)
echo
say "summary: ${passed_line:-no ctest summary line}"
say "CUDA tests: $cuda_total run, $cuda_failed failed, $cuda_skipped skipped"
if [ "$rc" -ne 0 ]; then
  say "FAILED tests:"
  sed -n '/The following tests FAILED/,$p' "$LOG" | tail -n +2
fi
if [ "$cuda_skipped" -gt 0 ]; then
  say "CUDA tests were skipped: no usable GPU in this process"
  [ "$rc" -ne 0 ] || rc=3
fi
exit "$rc"
