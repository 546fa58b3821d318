#!/usr/bin/env bash
# Compares `alem serve` with llama.cpp's `llama-server` on SmolLM2-135M-Instruct, same weights,
# same load, same machine (issue 4's measurement). Everything it needs it makes itself, outside
# the tracked tree (in the ignored build-llama/ folder, or $LLAMA_WORK):
#   1. downloads the llama-cpp-python source archive from PyPI (it vendors llama.cpp),
#   2. builds its llama-server and llama-quantize (bench/llama_build.sh: CPU only, native;
#      LLAMA_CC=clang where the CPU has AMX, see there),
#   3. converts models/SmolLM2-135M-Instruct.Q4_1.gguf, the file alem's stores were made from,
#      to BF16 (llama-quantize --allow-requantize: dequantise to f32, round to bf16, the same
#      rounding `alem convert` applies, so both servers hold the same bf16 weights) and to Q8_0
#      (32-weight groups of int8 with one scale, as alem's int8 store; scales are f16 there and
#      f32 here, so the int8 values can differ in the last bit),
#   4. keeps the block types as they are for a third and fourth pair: the Q8_0 file above and
#      models/SmolLM2-135M-Instruct.Q4_0.gguf (made by bench/llama_bench_compare.sh), each served
#      by both from the same GGUF (`alem convert --dtype auto` keeps the blocks),
#   5. runs bench/llama_server_compare.py: both servers up, the same streaming load at 1, 4 and
#      16 streams alternating between them, and a table of tok/s, TTFT, ITL and scaling.
#
#   bench/llama_server_compare.sh [extra llama_server_compare.py options, e.g. --levels 1,4,16]
#
# Environment: ALEM_BIN (default build/alem), THREADS (default: all cores), LLAMA_WORK,
# LLAMA_CPP_PYTHON_VERSION (default 0.3.36), LLAMA_BUILD_JOBS (default: cores), LLAMA_CC,
# LLAMA_NO_AMX, LLAMA_ISA (avx2: llama.cpp built for AVX2 only and alem with ALEM_CPU_ISA=avx2,
# both servers on an AVX2 CPU's instructions; avx_vnni: the same with AVX-VNNI).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${LLAMA_WORK:-$root/build-llama}
alem=${ALEM_BIN:-$root/build/alem}
threads=${THREADS:-$(nproc)}
mkdir -p "$work"

# llama.cpp itself: bench/llama_build.sh (LLAMA_CC=gcc|clang, LLAMA_NO_AMX=1; see there).
source "$root/bench/llama_build.sh"
llama_build llama-server llama-quantize
bin=$llama_bin
case ${LLAMA_ISA:-native} in avx2 | avx_vnni) export ALEM_CPU_ISA=$LLAMA_ISA ;; esac

q41="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$q41" ] || { echo "missing $q41: run scripts/fetch-model.sh first" >&2; exit 1; }
for type in BF16 Q8_0; do
  out="$work/SmolLM2-135M-Instruct.$type.gguf"
  if [ ! -f "$out" ]; then
    echo "== converting the Q4_1 GGUF to $type"
    "$bin/llama-quantize" --allow-requantize "$q41" "$out" "$type" > "$work/quantize-$type.log" 2>&1 ||
      { cat "$work/quantize-$type.log" >&2; exit 1; }
  fi
done

for store in smollm2-135m-instruct.h5 smollm2-135m-instruct-int8.h5; do
  [ -f "$root/models/$store" ] || { echo "missing models/$store: run scripts/prepare-model.sh" >&2; exit 1; }
done
[ -x "$alem" ] || { echo "missing $alem: build alem first (scripts/build.sh)" >&2; exit 1; }

# llama.cpp's AMX kernels (built by -march=native where the CPU has AMX) run Q8_0 matmuls; a GCC
# build of them stops with SIGILL at the first tile load (see bench/llama_build.sh). For GCC
# builds LLAMA_Q8_ARGS defaults to --no-repack (no AMX, no weight repacking), for clang builds to
# nothing, and to nothing on CPUs without AMX; it goes to the servers of the Q8_0 and Q4_0
# files (the AMX kernels take both).
if [ "${LLAMA_CC:-gcc}" = clang ] || [ "${LLAMA_NO_AMX:-0}" = 1 ] || ! grep -qw amx_tile /proc/cpuinfo; then
  q8_args=${LLAMA_Q8_ARGS-}
else
  q8_args=${LLAMA_Q8_ARGS---no-repack}
fi

# Block weights, the SAME GGUF file for both servers: alem converts it keeping its blocks (Q8_0
# here, and the Q4_0 file bench/llama_bench_compare.sh makes, when present), which the CPU
# backend interleaves at load on AVX512-VNNI (docs/kernels.md).
block_pairs=()
for type in Q8_0 Q4_0; do
  gguf="$work/SmolLM2-135M-Instruct.$type.gguf"
  [ "$type" = Q4_0 ] && gguf="$root/models/SmolLM2-135M-Instruct.Q4_0.gguf"
  [ -f "$gguf" ] || continue
  store="$work/serve-$type.h5"
  [ -f "$store" ] && [ "$store" -nt "$gguf" ] ||
    "$alem" convert "$gguf" "$store" --dtype auto --name "smollm2-$type" >/dev/null
  block_pairs+=(--pair "$store=$gguf=$(tr 'A-Z' 'a-z' <<<"$type")-blocks=$q8_args")
done

# The load generator uses the official `openai` client; make a venv with it when missing.
python=python3
if ! python3 -c 'import openai' >/dev/null 2>&1; then
  [ -x "$work/venv/bin/python" ] || python3 -m venv "$work/venv"
  "$work/venv/bin/python" -c 'import openai' >/dev/null 2>&1 || "$work/venv/bin/pip" install -q openai
  python="$work/venv/bin/python"
fi

echo "== alem $alem; llama.cpp $($bin/llama-server --version 2>&1 | grep -m1 version || true)"
echo "== $(nproc) cores, $threads threads per server, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$python" "$root/bench/llama_server_compare.py" --alem "$alem" --llama-server "$bin/llama-server" \
  --threads "$threads" --log-dir "$work/logs" --csv "$work/llama_server_compare.csv" \
  --pair "$root/models/smollm2-135m-instruct.h5=$work/SmolLM2-135M-Instruct.BF16.gguf=bf16" \
  --pair "$root/models/smollm2-135m-instruct-int8.h5=$work/SmolLM2-135M-Instruct.Q8_0.gguf=int8-q8_0=$q8_args" \
  "${block_pairs[@]}" "$@"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg); CSV: $work/llama_server_compare.csv"
