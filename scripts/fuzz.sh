#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan + libFuzzer) into
# build-fuzz/ and runs each over its committed corpus for N seconds. docs/fuzzing.md explains
# the targets and longer campaigns.
#
#   scripts/fuzz.sh [options] [seconds-per-target] [target...]
#     seconds  0 replays the corpus only (every committed input, including regression cases,
#              runs once); default 60
#     target   short names (gguf, openai_request, ...) or fuzz_<name>; default: all
#   options:
#     --ctest  exit 77 (ctest's skip code) instead of failing when clang or its fuzzer runtime
#              is missing; new inputs go to a scratch folder, not build-fuzz/corpus/
#     --jobs N parallel fuzzing jobs per target (libFuzzer -fork=N); default 1
#     --make-seeds  rewrite the seed-* files of the committed corpus (tests/fuzz/make_seeds.py,
#              then the targets that write their own seeds) instead of fuzzing
#
# New inputs the fuzzer finds go to build-fuzz/corpus/<target>/ (never into the committed
# corpus), crashes to build-fuzz/crashes/<target>/. Executions per target are appended to
# build-fuzz/fuzz-stats.tsv. Exit status 1 when any target found a crash, leak or timeout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${ALEM_FUZZ_BUILD_DIR:-$root/build-fuzz}
corpus_root=$root/tests/fuzz/corpus
skip_code=1
jobs=1
make_seeds=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ctest) skip_code=77; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --make-seeds) make_seeds=1; shift ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) break ;;
  esac
done
seconds=60
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi

# clang and its fuzzer runtime: check with a one-line program before configuring anything.
cc=${ALEM_FUZZ_CC:-clang}
cxx=${ALEM_FUZZ_CXX:-clang++}
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  >"$probe_dir/p.cc"
if ! command -v "$cxx" >/dev/null 2>&1 ||
  ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe_dir/p.cc" -o "$probe_dir/p" 2>/dev/null; then
  echo "fuzz.sh: $cxx with -fsanitize=fuzzer,address,undefined is not available" \
    "(install clang and libclang-rt-dev); skipping" >&2
  exit "$skip_code"
fi

# Configure and build under a lock: ctest may start several fuzz tests at once.
mkdir -p "$build"
export CCACHE_BASEDIR=$root
(
  flock 9
  if [ ! -f "$build/CMakeCache.txt" ]; then
    generator=()
    command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
    launcher=()
    command -v ccache >/dev/null 2>&1 &&
      launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
    CC=$cc CXX=$cxx cmake -S "$root/tests/fuzz" -B "$build" "${generator[@]}" "${launcher[@]}" \
      >"$build/configure.log" ||
      { cat "$build/configure.log"; exit 1; }
  fi
  build_targets=()
  for t in "$@"; do build_targets+=(--target "fuzz_${t#fuzz_}"); done
  cmake --build "$build" --parallel "$(nproc)" "${build_targets[@]}"
) 9>"$build/.build.lock"

targets=()
if [ $# -gt 0 ]; then
  for t in "$@"; do targets+=("${t#fuzz_}"); done
else
  for src in "$root"/tests/fuzz/fuzz_*.cc; do
    name=$(basename "$src" .cc)
    targets+=("${name#fuzz_}")
  done
fi

if [ "$make_seeds" -eq 1 ]; then
  python3 "$root/tests/fuzz/make_seeds.py"
  # These targets write seeds that need alem's own code (keys, signatures, HDF5, the journal).
  for t in cluster_bundle model_store provider_messages sealed_envelope usage_journal; do
    mkdir -p "$corpus_root/$t"
    ALEM_FUZZ_MAKE_SEEDS=$corpus_root/$t "$build/fuzz_$t"
  done
  du -sh "$corpus_root"
  exit 0
fi

# LeakSanitizer on; UBSan reports already abort (-fno-sanitize-recover).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  bin=$build/fuzz_$t
  seeds=$corpus_root/$t
  [ -x "$bin" ] || { echo "fuzz.sh: no target fuzz_$t" >&2; exit 1; }
  [ -d "$seeds" ] || { echo "fuzz.sh: no corpus $seeds" >&2; exit 1; }
  mkdir -p "$build/corpus/$t" "$build/crashes/$t" "$build/logs"
  log=$build/logs/$t-${seconds}s.log
  args=(-timeout=10 -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1
        "-artifact_prefix=$build/crashes/$t/")
  dict=$root/tests/fuzz/dict/$t.dict
  [ -f "$dict" ] && args+=("-dict=$dict")
  if [ "$seconds" -eq 0 ]; then
    args+=(-runs=0)
  else
    args+=("-max_total_time=$seconds")
    [ "$jobs" -gt 1 ] && args+=("-fork=$jobs" -ignore_crashes=0)
  fi
  # The first folder receives new inputs; the committed corpus is only read. Under ctest the
  # new inputs go to a scratch folder, so a short run's time does not grow with past campaigns.
  work=$build/corpus/$t
  if [ "$skip_code" -eq 77 ]; then
    work=$(mktemp -d "$build/corpus/.ctest-$t.XXXXXX")
  fi
  status=0
  "$bin" "${args[@]}" "$work" "$seeds" >"$log" 2>&1 || status=$?
  [ "$skip_code" -eq 77 ] && rm -rf "$work"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=${execs:-$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)}
  printf '%s\t%s\t%ss\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" "${execs:-?}" \
    "$([ $status -eq 0 ] && echo ok || echo FAILED)" >>"$build/fuzz-stats.tsv"
  if [ $status -ne 0 ]; then
    echo "fuzz_$t: FAILED (exit $status) after ${execs:-?} executions; log $log" >&2
    grep -E "ERROR|SUMMARY|runtime error|unexpected exception|Test unit written" "$log" | head -20 >&2
    [ "$skip_code" -eq 77 ] && tail -60 "$log" >&2
    failed+=("$t")
  else
    echo "fuzz_$t: ok, ${execs:-?} executions in ${seconds}s"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: findings in: ${failed[*]} (inputs under $build/crashes/)" >&2
  exit 1
fi
