#!/usr/bin/env bash
# alem against llama.cpp on the SAME GGUF files, prefill and decode tokens/s, interleaved, medians
# of N rounds, at 1 and 2 threads (issue 12's table). Everything it needs it makes itself, outside
# the tracked tree (build-llama/ or $LLAMA_WORK):
#   1. llama.cpp's llama-bench and llama-quantize, built by bench/llama_build.sh (the
#      llama-cpp-python source archive from PyPI, CPU only; LLAMA_CC=clang where the CPU has AMX);
#   2. the GGUF files: Q4_0 and Q8_0 made from the shipped Q4_1 file by
#      scripts/reference/make_block_golden.py --gguf-only (the `gguf` package's quantisers; the
#      same files the golden tests check against transformers), BF16 by llama-quantize
#      --allow-requantize;
#   3. alem stores converted from those very files with `alem convert --dtype auto` (Q4_0/Q8_0
#      kept as blocks, BF16 kept as bf16); for the type INT8, alem's own int8 store (f32 scale per
#      32 values) converted from the BF16 file with `--dtype int8`, against llama.cpp's Q8_0 file
#      (f16 scale per 32 values: the same scheme, the scale's precision differs);
#   4. rounds: for every type and thread count, `alem bench generate` and `llama-bench`
#      (-p P -n D), the order alternating per round; medians, ratios, and alem's measured read
#      bandwidth with the bytes each decoded token streams (the physical limit on decode), and
#      the decode over a plain read of the same bytes timed like it just after it (`rd step`).
#
#   bench/llama_bench_compare.sh          # ROUNDS=5 THREADS="1 2" TYPES="Q4_0 Q8_0 BF16"
#   TYPES="INT8 Q8_0" bench/llama_bench_compare.sh
#   SHAPES="smollm2 tinyllama" bench/llama_bench_compare.sh
#
# Shapes: smollm2 (SmolLM2-135M-Instruct, the shipped file) and tinyllama (random weights in
# TinyLlama-1.1B's shape, written as BF16 by bench/make_random_llama_gguf.py; its Q4_0, Q8_0,
# Q4_K ... by llama-quantize --pure, every matrix in the one type; a mixture such as Q4_K_M or
# Q5_K_M as llama-quantize makes it for real model files: Q6_K for the LM head and some
# v / down projections, the named type elsewhere).
#
# A type with the suffix +dot (BF16+dot, Q4_0+dot) runs alem at llama.cpp's own precision on the
# same files: ALEM_CPU_DOT=all, activations rounded to bf16 for bf16 weights and to 8 bits for
# block weights (docs/kernels.md); without it alem keeps its stricter default.
#
# LLAMA_ISA=avx2 compares the two on an AVX2 CPU's instructions: llama.cpp built for AVX2 only
# (bench/llama_build.sh) and alem with ALEM_CPU_ISA=avx2, on any CPU that has AVX2.
# LLAMA_ISA=avx_vnni the same with AVX-VNNI's 256-bit vpdpbusd on both sides (ALEM_CPU_ISA=
# avx_vnni), on a CPU with AVX-VNNI or with AVX512-VNNI (there in its EVEX encoding).
#
# DEPTH=N measures decode at a context of N tokens (real chat traffic: a long system prompt and
# history): alem decodes after an N-token prompt (the prefill column is then that prompt's), and
# llama-bench runs its decode test with -d N (the N tokens filled first, untimed) beside its
# prefill test of N tokens. The read-bandwidth columns still count the weights alone: at depth
# the KV cache is read too.
#
# Environment: ALEM_BIN (default build/alem), ROUNDS, THREADS, TYPES, SHAPES (smollm2),
# PROMPT (64), DECODE (32), DEPTH (0), LLAMA_WORK, LLAMA_CPP_PYTHON_VERSION (0.3.36), LLAMA_BUILD_JOBS,
# LLAMA_CC, LLAMA_NO_AMX, LLAMA_ISA. Output: a Markdown table on stdout and raw rows in
# $LLAMA_WORK/compare-raw.csv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${LLAMA_WORK:-$root/build-llama}
alem=${ALEM_BIN:-$root/build/alem}
rounds=${ROUNDS:-5}
thread_counts=${THREADS:-1 2}
types=${TYPES:-Q4_0 Q8_0 BF16}
shapes=${SHAPES:-smollm2}
depth=${DEPTH:-0}
prompt=${PROMPT:-64}
[ "$depth" -eq 0 ] || prompt=$depth
decode=${DECODE:-32}
python=${REFERENCE_PYTHON:-$root/.venv-reference/bin/python}
mkdir -p "$work"

# llama.cpp itself: bench/llama_build.sh (LLAMA_CC=gcc|clang, LLAMA_NO_AMX=1; see there).
source "$root/bench/llama_build.sh"
llama_build llama-bench llama-quantize
bin=$llama_bin
case ${LLAMA_ISA:-native} in avx2 | avx_vnni) export ALEM_CPU_ISA=$LLAMA_ISA ;; esac

q41="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$q41" ] || { echo "missing $q41: run scripts/fetch-model.sh first" >&2; exit 1; }
gguf_of() {  # shape type -> the GGUF path (INT8: llama.cpp's side of it, the Q8_0 file)
  local type=$2
  [ "$type" = INT8 ] && type=Q8_0
  case $1 in
    smollm2) echo "$root/models/SmolLM2-135M-Instruct.$type.gguf" ;;
    tinyllama) echo "$root/models/random-tinyllama-1.1b.$type.gguf" ;;
    *) echo "unknown shape $1 (smollm2, tinyllama)" >&2; exit 2 ;;
  esac
}
make_gguf() {  # shape type: the GGUF file, made where it is missing
  local shape=$1 type=$2 gguf
  gguf=$(gguf_of "$shape" "$type")
  if [ ! -f "$gguf" ]; then
    case $shape/$type in
      smollm2/Q4_0 | smollm2/Q8_0)
        "$python" "$root/scripts/reference/make_block_golden.py" --gguf-only --types "$type" ;;
      smollm2/*)
        "$bin/llama-quantize" --allow-requantize "$q41" "$gguf" "$type" >"$work/quantize-$type.log" 2>&1 ;;
      tinyllama/BF16) "$python" "$root/bench/make_random_llama_gguf.py" "$q41" "$gguf" ;;
      tinyllama/*)
        bf16=$(gguf_of tinyllama BF16)
        [ -f "$bf16" ] || "$python" "$root/bench/make_random_llama_gguf.py" "$q41" "$bf16"
        pure=--pure
        case $type in *_S | *_M | *_L) pure= ;; esac  # a mixture: llama-quantize's own choice
        "$bin/llama-quantize" $pure "$bf16" "$gguf" "$type" >"$work/quantize-$shape-$type.log" 2>&1 ;;
    esac
  fi
}
for shape in $shapes; do
  for type in $types; do
    type=${type%+dot}
    store="$work/$shape-$type.h5"
    if [ "$type" = INT8 ]; then
      make_gguf "$shape" Q8_0
      make_gguf "$shape" BF16
      source_gguf=$(gguf_of "$shape" BF16) dtype=int8
    else
      make_gguf "$shape" "$type"
      source_gguf=$(gguf_of "$shape" "$type") dtype=auto
    fi
    # Made again when the GGUF or alem changed (a newer alem may store a type differently).
    [ -f "$store" ] && [ "$store" -nt "$source_gguf" ] && [ "$store" -nt "$alem" ] ||
      "$alem" convert "$source_gguf" "$store" --dtype "$dtype" --name "$shape-$type" >/dev/null
  done
done

raw="$work/compare-raw.csv"
echo "round,shape,type,threads,engine,prefill_tok_s,decode_tok_s,read_gb_s,mb_per_token,step_read_gb_s" >"$raw"
run_alem() {  # shape type threads round
  local out dot=${ALEM_CPU_DOT:-int8}
  [ "$2" = "${2%+dot}" ] || dot=all
  out=$(ALEM_CPU_DOT=$dot OMP_NUM_THREADS=$3 "$alem" bench generate -m "$work/$1-${2%+dot}.h5" \
    --threads "$3" \
    --prompt-tokens "$prompt" --decode-tokens "$decode" --repeats 1 --csv "$work/alem-row.csv")
  local mb
  mb=$(sed -n 's/.*, \([0-9.]*\) MB streamed per decode step.*/\1/p' <<<"$out")
  "$python" -c '
import csv, sys
row = list(csv.DictReader(open(sys.argv[1])))[-1]
print(",".join(sys.argv[2:6] + ["alem", row["prefill_tok_s"], row["decode_tok_s"],
                               row["mem_bw_gb_s"], sys.argv[6], row["step_read_gb_s"]]))
' "$work/alem-row.csv" "$4" "$1" "$2" "$3" "$mb" >>"$raw"
}
run_llama() {  # shape type threads round
  local model
  model=$(gguf_of "$1" "${2%+dot}")
  if [ "$depth" -eq 0 ]; then
    OMP_NUM_THREADS=$3 "$bin/llama-bench" -m "$model" -p "$prompt" -n "$decode" -t "$3" -r 1 \
      -o csv 2>/dev/null
  else  # prefill of the prompt from empty, then decode at the prompt's depth (header once)
    OMP_NUM_THREADS=$3 "$bin/llama-bench" -m "$model" -p "$prompt" -n 0 -t "$3" -r 1 \
      -o csv 2>/dev/null
    OMP_NUM_THREADS=$3 "$bin/llama-bench" -m "$model" -p 0 -n "$decode" -d "$depth" -t "$3" \
      -r 1 -o csv 2>/dev/null | tail -n +2
  fi |
    "$python" -c '
import csv, sys
rows = list(csv.DictReader(sys.stdin))
pp = [float(r["avg_ts"]) for r in rows if int(r["n_prompt"]) > 0 and int(r["n_gen"]) == 0]
tg = [float(r["avg_ts"]) for r in rows if int(r["n_gen"]) > 0 and int(r["n_prompt"]) == 0]
print(f"{sys.argv[1]},{sys.argv[2]},{sys.argv[3]},{sys.argv[4]},llama.cpp,{pp[0]},{tg[0]},,,")
' "$4" "$1" "$2" "$3" >>"$raw"
}
for round in $(seq 1 "$rounds"); do
  for shape in $shapes; do
    for type in $types; do
      for threads in $thread_counts; do
        echo "== round $round $shape $type threads $threads" >&2
        if [ $((round % 2)) -eq 1 ]; then
          run_alem "$shape" "$type" "$threads" "$round"
          run_llama "$shape" "$type" "$threads" "$round"
        else
          run_llama "$shape" "$type" "$threads" "$round"
          run_alem "$shape" "$type" "$threads" "$round"
        fi
      done
    done
  done
done

[ "$depth" -eq 0 ] || echo "Decode after a prompt of $depth tokens (DEPTH); prefill: that prompt's."
"$python" - "$raw" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print(f"| shape | weights | threads | alem prefill | llama.cpp prefill | ratio | alem decode | llama.cpp decode "
      f"| ratio | MB / token | read GB/s | decode limit tok/s | alem decode / limit "
      f"| step read GB/s | alem decode / step read |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
keys = sorted({(r["shape"], r["type"], int(r["threads"])) for r in rows})
for s, t, th in keys:
    mine = [r for r in rows if (r["shape"], r["type"], int(r["threads"])) == (s, t, th)]
    a = [r for r in mine if r["engine"] == "alem"]
    l = [r for r in mine if r["engine"] != "alem"]
    ap, ad = med([float(r["prefill_tok_s"]) for r in a]), med([float(r["decode_tok_s"]) for r in a])
    lp, ld = med([float(r["prefill_tok_s"]) for r in l]), med([float(r["decode_tok_s"]) for r in l])
    mb = med([float(r["mb_per_token"]) for r in a if r["mb_per_token"]])
    bw = med([float(r["read_gb_s"]) for r in a if r["read_gb_s"]])
    limit = bw * 1e3 / mb if mb else float("nan")
    # Per round: alem's decode bytes/s over the plain read of the same bytes just after it.
    step = med([float(r["decode_tok_s"]) * mb / 1e3 / float(r["step_read_gb_s"])
                for r in a if r["step_read_gb_s"]])
    sbw = med([float(r["step_read_gb_s"]) for r in a if r["step_read_gb_s"]])
    print(f"| {s} | {t} | {th} | {ap:.0f} | {lp:.0f} | {ap / lp:.2f} | {ad:.1f} | {ld:.1f} | {ad / ld:.2f} "
          f"| {mb:.1f} | {bw:.1f} | {limit:.0f} | {ad / limit:.2f} | {sbw:.1f} | {step:.2f} |")
PY
