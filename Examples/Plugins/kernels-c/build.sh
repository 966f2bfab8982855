#!/usr/bin/env bash
# Builds libc-loops.so (the kernels plugin "c-loops") from this folder with nothing of hydra-mpi but
# its plugin header. -ffp-contract=off keeps every multiply and add rounded on its own, as hydra-mpi's
# reference kernels compute, so that the two give the same bits.
# Usage: ./build.sh [folder holding hydra_plugin.h]
#   default: the repository's copy; or write one with `hydra-mpi plugins --header > hydra_plugin.h`
#   and pass `.`.
set -euo pipefail
cd "$(dirname "$0")"
include="${1:-../../../Sources/CHydraPlugin/include}"
[ -f "$include/hydra_plugin.h" ] || { echo "build.sh: no hydra_plugin.h in $include" >&2; exit 1; }
"${CC:-cc}" -std=c11 -D_DEFAULT_SOURCE -O2 -ffp-contract=off -Wall -Wextra -Werror -shared -fPIC -I "$include" \
  -o libc-loops.so kernels.c -lm
echo "built $(pwd)/libc-loops.so"
