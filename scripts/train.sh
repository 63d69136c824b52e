#!/usr/bin/env bash
# Installs what is missing, configures, builds and trains the default model (configs/natsl-tiny.yaml,
# a tiny GDN + NAtS-L model on the MQAR recall task; about 1.5 minutes on 2 CPU cores). Arguments replace the
# config and overrides: scripts/train.sh configs/text-small.yaml data.text.train=... train.steps=500
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_missing
configure_and_build
# Each default run gets its own directory, so running the command again never meets an earlier run.
if [ $# -eq 0 ]; then set -- configs/natsl-tiny.yaml train.out_dir="runs/natsl-tiny-$(date +%Y%m%d-%H%M%S)"; fi
cd "$ROOT"
say "natsl train $*"
exec "$BUILD_DIR/natsl" train "$@"
