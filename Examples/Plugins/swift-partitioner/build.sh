#!/usr/bin/env bash
# Builds libEvenPartitioner.so from this folder with `swift build`, with nothing of hydra-mpi but
# its plugin header, copied next to the module map in Sources/CHydraPlugin.
# Usage: ./build.sh [path of hydra_plugin.h]
#   default: the repository's copy; or `hydra-mpi plugins --header > hydra_plugin.h` and pass that.
set -euo pipefail
cd "$(dirname "$0")"
header="${1:-../../../Sources/CHydraPlugin/include/hydra_plugin.h}"
[ -f "$header" ] || { echo "build.sh: no header at $header" >&2; exit 1; }
cmp -s "$header" Sources/CHydraPlugin/hydra_plugin.h 2>/dev/null || cp "$header" Sources/CHydraPlugin/hydra_plugin.h
swift build -c release
echo "built $(swift build -c release --show-bin-path)/libEvenPartitioner.so"
