#!/usr/bin/env bash
# The project's test command (README, CI): installs Debian packages, builds, prepares the real
# model, and runs the default test labels (unit, mpi, serve, network, security, slurm). Extra
# arguments go to ctest, e.g.
#   scripts/test.sh -L slow        the slow tests
#   scripts/test.sh -L slurm       the end-to-end Slurm tests
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
"$root/scripts/prepare-model.sh"
cd "$root/build"
if [ $# -eq 0 ]; then set -- -L "unit|mpi|serve|network|security|slurm"; fi
ctest --output-on-failure --timeout 900 "$@"
