# Shared by scripts/train.sh and scripts/test.sh: install what is missing, configure, build.
# Sourced, not run. Honours BUILD_DIR (default build), NATSL_CUDA (auto|on|off), JOBS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
NATSL_CUDA="${NATSL_CUDA:-auto}"
JOBS="${JOBS:-$(nproc)}"

say() { printf '\033[1m[natsl]\033[0m %s\n' "$*"; }

# Debian 12 / Ubuntu 24.04 packages natsl builds with. Only missing ones are installed.
NATSL_APT_PACKAGES=(g++ cmake ninja-build pkg-config libeigen3-dev libyaml-cpp-dev libspdlog-dev libfmt-dev
                    nlohmann-json3-dev libcli11-dev libxxhash-dev zlib1g-dev libzstd-dev libsentencepiece-dev libgloo-dev libgtest-dev
                    libgmock-dev python3 python3-numpy)

install_missing() {
  local missing=()
  for p in "${NATSL_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "system packages: all present"
    return
  fi
  say "installing missing packages: ${missing[*]}"
  local SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

configure_and_build() {
  local cuda_flag=()
  case "$NATSL_CUDA" in
    on) cuda_flag=(-DNATSL_ENABLE_CUDA=ON) ;;
    off) cuda_flag=(-DNATSL_ENABLE_CUDA=OFF) ;;
    *) ;;  # auto: CUDA backend when nvcc is found (sm_90 by default)
  esac
  say "configuring in $BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" "$@" >"$BUILD_DIR.configure.log" 2>&1 \
    || { cat "$BUILD_DIR.configure.log"; exit 1; }
  grep -E "natsl:" "$BUILD_DIR.configure.log" || true
  say "building with $JOBS jobs"
  # Ninja prints [done/total] progress on a terminal and one line per step otherwise.
  cmake --build "$BUILD_DIR" -j "$JOBS"
}
