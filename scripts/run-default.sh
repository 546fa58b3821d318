#!/usr/bin/env bash
# The main job on the built-in default: sets up everything on a fresh Debian 12 machine, then
# runs SmolLM2-135M-Instruct sharded over 3 MPI ranks (tensor parallel 3) on this machine and
# asks it a question. Override the question with: scripts/run-default.sh "your question"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
question=${1:-"What is the capital of France? Answer in one sentence."}
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
"$root/scripts/prepare-model.sh"
export OMP_NUM_THREADS=1
exec mpirun --oversubscribe --allow-run-as-root -np 3 \
  "$root/build/alem" generate --model "$root/models/smollm2-135m-instruct.h5" --tp 3 \
  --chat --prompt "$question" --max-tokens 96
