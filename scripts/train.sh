#!/usr/bin/env bash
# Installs what is missing, configures, builds and trains the default model (configs/tiny.yaml,
# a tiny attention model on the MQAR recall task; about two minutes on 2 CPU cores). Arguments replace the
# config and overrides: scripts/train.sh configs/text-small.yaml data.train=... train.steps=500
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_missing
configure_and_build
if [ $# -eq 0 ]; then set -- configs/tiny.yaml; fi
cd "$ROOT"
say "natsl train $*"
exec "$BUILD_DIR/natsl" train "$@"
