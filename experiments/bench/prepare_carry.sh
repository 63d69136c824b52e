#!/usr/bin/env bash
# Makes the ignored folders a device call carries (experiments/bench/gpu_call.sh's header): .deps (header-only
# dependencies the GPU machine may lack), .shared-data (the corpora of ../shared/data) and .peers (peers.py,
# ref_model.py and the three peer package folders of ../shared/bench/README.md), from git clones or bare mirrors of
# the two peer repositories.
#
#   experiments/bench/prepare_carry.sh FLA_GIT_DIR NATS_GIT_DIR
#     FLA_GIT_DIR   a clone (or bare mirror) of fla-org/flash-linear-attention
#     NATS_GIT_DIR  a clone (or bare mirror) of automl/NeuralAttentionSearchLinear
# Without arguments only .deps and .shared-data are made. Existing folders are replaced. The headers come from
# this machine's system packages (nlohmann-json3-dev, libcli11-dev, libxxhash-dev: scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SHARED=../shared

rm -rf .deps && mkdir -p .deps/include
for h in nlohmann CLI xxhash.h; do
  [ -e "/usr/include/$h" ] || { echo "prepare_carry: /usr/include/$h missing (run scripts/test.sh once to install it)" >&2; exit 1; }
  cp -r "/usr/include/$h" .deps/include/
done
echo ".deps: $(du -sh .deps | cut -f1)"

[ -d "$SHARED/data" ] || { echo "prepare_carry: $SHARED/data missing" >&2; exit 1; }
rm -rf .shared-data && cp -r "$SHARED/data" .shared-data
echo ".shared-data: $(du -sh .shared-data | cut -f1)"

[ $# -eq 0 ] && exit 0
[ $# -eq 2 ] || { echo "usage: $0 [FLA_GIT_DIR NATS_GIT_DIR]" >&2; exit 2; }
fla=$1 nats=$2
# The FLA commit whose API the NAtS-L code calls correctly (../shared/bench/README.md, step 2).
FLA_NATS_COMMIT=ada74c38
for d in "$fla" "$nats"; do git -C "$d" rev-parse --git-dir >/dev/null 2>&1 || git --git-dir="$d" rev-parse >/dev/null 2>&1 ||
  { echo "prepare_carry: $d is not a git repository" >&2; exit 1; }; done
gitd() { if git -C "$1" rev-parse --is-bare-repository 2>/dev/null | grep -q false; then git -C "$1" "${@:2}"; else git --git-dir="$1" "${@:2}"; fi; }
rm -rf .peers && mkdir -p .peers/flahead .peers/flanats .peers/nats
gitd "$fla" archive HEAD fla | tar -x -C .peers/flahead
gitd "$fla" archive "$FLA_NATS_COMMIT" fla | tar -x -C .peers/flanats
tmp=$(mktemp -d)
gitd "$nats" archive HEAD src/nats | tar -x -C "$tmp"
mv "$tmp/src/nats" .peers/nats/ && rm -rf "$tmp"
cp "$SHARED/bench/peers.py" "$SHARED/bench/ref_model.py" .peers/
echo ".peers: $(du -sh .peers | cut -f1) (FLA head $(gitd "$fla" rev-parse --short HEAD), FLA for NAtS-L $FLA_NATS_COMMIT, NAtS-L $(gitd "$nats" rev-parse --short HEAD))"
