#!/usr/bin/env bash
# Builds libsrtf.so from this folder with nothing of hydra-mpi but its plugin header.
# Usage: ./build.sh [folder holding hydra_plugin.h]
#   default: the repository's copy; or write one with `hydra-mpi plugins --header > hydra_plugin.h`
#   and pass `.`.
set -euo pipefail
cd "$(dirname "$0")"
include="${1:-../../../Sources/CHydraPlugin/include}"
[ -f "$include/hydra_plugin.h" ] || { echo "build.sh: no hydra_plugin.h in $include" >&2; exit 1; }
"${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -shared -fPIC -I "$include" -o libsrtf.so srtf.c
echo "built $(pwd)/libsrtf.so"
