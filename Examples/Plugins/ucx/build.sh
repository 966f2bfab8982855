#!/usr/bin/env bash
# Builds libucx-transport.so from this folder with cc, with nothing of hydra-mpi but its plugin header,
# against UCX's UCP (libucx-dev: ucp/api/ucp.h, -lucp -lucs).
# Usage: ./build.sh [folder holding hydra_plugin.h]   (default: the repository's copy)
set -euo pipefail
cd "$(dirname "$0")"
include="${1:-../../../Sources/CHydraPlugin/include}"
[ -f "$include/hydra_plugin.h" ] || { echo "build.sh: no hydra_plugin.h in $include" >&2; exit 1; }
ucx_flags=$(pkg-config --cflags --libs ucx 2>/dev/null || echo "-lucp -lucs")
# shellcheck disable=SC2086
"${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -shared -fPIC -I "$include" -o libucx-transport.so ucx_transport.c \
  $ucx_flags -lucp -lucs -lpthread
echo "built $(pwd)/libucx-transport.so"
