#!/usr/bin/env bash
# Builds libmpi-transport.so from this folder with mpicc (Open MPI), with nothing of hydra-mpi but
# its plugin header.
# Usage: ./build.sh [folder holding hydra_plugin.h]   (default: the repository's copy)
set -euo pipefail
cd "$(dirname "$0")"
include="${1:-../../../Sources/CHydraPlugin/include}"
[ -f "$include/hydra_plugin.h" ] || { echo "build.sh: no hydra_plugin.h in $include" >&2; exit 1; }
"${MPICC:-mpicc}" -std=c11 -O2 -Wall -Wextra -Werror -shared -fPIC -I "$include" -o libmpi-transport.so mpi_transport.c
echo "built $(pwd)/libmpi-transport.so"
