#!/usr/bin/env bash
# Configures and builds alem into build/ (Release). CUDA parts build when nvcc is on PATH or at
# /usr/local/cuda. Usage: scripts/build.sh [extra cmake args]. ALEM_BUILD_DIR picks another
# build folder (default build/); ccache is used when installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null 2>&1 &&
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
build=${ALEM_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" --parallel "$(nproc)"
