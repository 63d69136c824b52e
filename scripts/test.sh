#!/usr/bin/env bash
# Installs what is missing, configures, builds and runs the whole test suite (CPU; CUDA tests skip
# without a GPU and run on one). Extra arguments go to ctest (e.g. -R Gdn).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_missing
configure_and_build
say "running tests"
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 900 -j "$JOBS" "$@"
