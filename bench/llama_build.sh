#!/usr/bin/env bash
# Builds the llama.cpp that alem is compared with, one way for every comparison script (sourced by
# bench/llama_bench_compare.sh and bench/llama_server_compare.sh): the llama-cpp-python source
# archive from PyPI (it vendors llama.cpp), CPU only, in a build folder outside the tracked tree.
#
#   source bench/llama_build.sh; llama_build TARGET...   # sets $llama_bin
#
# Inputs (environment): LLAMA_WORK (default build-llama/), LLAMA_CPP_PYTHON_VERSION (0.3.36),
# LLAMA_BUILD_JOBS (default: cores), and the compiler choice:
#   LLAMA_CC=gcc (default)  -DGGML_NATIVE=ON with the system GCC. GCC 12's AMX intrinsics
#                           under-declare their memory operands (_tile_loadconfig says it reads
#                           8 bytes of the 64-byte configuration), so on a CPU with AMX the tile
#                           configuration can be dropped and ggml's AMX path stops with SIGILL at
#                           its first tile load. alem's own AMX kernels work around it.
#   LLAMA_CC=clang          the same with clang/clang++, whose AMX builtins are modelled
#                           correctly: llama.cpp's AMX kernels (Q4_0, Q4_1, Q8_0, K-quants) run
#                           (clang 14 names the feature macro __AMXINT8__, ggml tests
#                           __AMX_INT8__, so it is defined here where the CPU has AMX).
#                           The strongest llama.cpp on such a CPU; use it where AMX is present.
#   LLAMA_NO_AMX=1          GCC, every AVX-512 extension but no AMX (the fallback when clang is
#                           missing).
#   LLAMA_ISA=avx2          GCC, AVX2/FMA/F16C only (no AVX-512, no AVX-VNNI): llama.cpp as it
#                           runs on an AVX2 CPU, beside alem with ALEM_CPU_ISA=avx2, so an
#                           AVX-512 machine can measure the AVX2 kernels of both side by side.
#   LLAMA_ISA=avx_vnni      GCC, AVX2/FMA/F16C with AVX-VNNI (GGML_AVX_VNNI): llama.cpp as it
#                           runs on an AVX-VNNI CPU without AVX-512 (Alder Lake and later clients,
#                           Sierra Forest, Zen 5 desktop builds), beside ALEM_CPU_ISA=avx_vnni.
#                           On a CPU with AVX512-VNNI but no AVX-VNNI, ggml's 256-bit vpdpbusd is
#                           written in its EVEX encoding (bench/llama_avx_vnni_evex.h, force-
#                           included), as alem's kernels do there; the build is checked to hold no
#                           VEX vpdpbusd.
# Each choice builds in its own folder (llama-build, llama-build-clang, llama-build-noamx,
# llama-build-avx2, llama-build-avx_vnni).

llama_build() {
  local root work version jobs src archive build_dir
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  work=${LLAMA_WORK:-$root/build-llama}
  version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
  jobs=${LLAMA_BUILD_JOBS:-$(nproc)}
  mkdir -p "$work"
  archive="$work/llama_cpp_python-$version.tar.gz"
  if [ ! -f "$archive" ]; then
    echo "== downloading llama-cpp-python $version (source) from PyPI" >&2
    python3 -m pip download "llama-cpp-python==$version" --no-binary :all: --no-deps -d "$work"
  fi
  src="$work/llama_cpp_python-$version/vendor/llama.cpp"
  [ -d "$src" ] || tar -xzf "$archive" -C "$work"

  local flags=(-DGGML_NATIVE=ON)
  build_dir="$work/llama-build"
  case ${LLAMA_CC:-gcc} in
    gcc) ;;
    clang)
      command -v clang++ >/dev/null 2>&1 || { echo "LLAMA_CC=clang: clang++ is not installed" >&2; return 1; }
      build_dir="$work/llama-build-clang"
      # ggml guards its AMX kernels with __AMX_INT8__; clang 14 spells it __AMXINT8__.
      local amx_defs=""
      grep -q "__AMXINT8__" <<<"$(clang -march=native -dM -E - </dev/null 2>/dev/null)" &&
        amx_defs="-D__AMX_INT8__=1 -D__AMX_TILE__=1 -D__AMX_BF16__=1"
      flags+=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
        "-DCMAKE_C_FLAGS=$amx_defs" "-DCMAKE_CXX_FLAGS=$amx_defs") ;;
    *) echo "LLAMA_CC must be gcc or clang, got '${LLAMA_CC}'" >&2; return 1 ;;
  esac
  if [ "${LLAMA_NO_AMX:-0}" = 1 ]; then
    [ "${LLAMA_CC:-gcc}" = gcc ] || { echo "LLAMA_NO_AMX=1 goes with LLAMA_CC=gcc" >&2; return 1; }
    build_dir="$work/llama-build-noamx"
    flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
      -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
      -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON)
  fi
  case ${LLAMA_ISA:-native} in
    native) ;;
    avx2)
      [ "${LLAMA_CC:-gcc}" = gcc ] && [ "${LLAMA_NO_AMX:-0}" != 1 ] ||
        { echo "LLAMA_ISA=avx2 goes with LLAMA_CC=gcc and without LLAMA_NO_AMX" >&2; return 1; }
      build_dir="$work/llama-build-avx2"
      flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
        -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
    avx_vnni)
      [ "${LLAMA_CC:-gcc}" = gcc ] && [ "${LLAMA_NO_AMX:-0}" != 1 ] ||
        { echo "LLAMA_ISA=avx_vnni goes with LLAMA_CC=gcc and without LLAMA_NO_AMX" >&2; return 1; }
      build_dir="$work/llama-build-avx_vnni"
      flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
        -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=ON)
      if ! grep -qw avx_vnni /proc/cpuinfo; then
        grep -qw avx512_vnni /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo ||
          { echo "LLAMA_ISA=avx_vnni: this CPU has neither AVX-VNNI nor AVX512-VNNI" >&2; return 1; }
        local shim="-include $root/bench/llama_avx_vnni_evex.h"
        flags+=("-DCMAKE_C_FLAGS=$shim" "-DCMAKE_CXX_FLAGS=$shim")
      fi ;;
    *) echo "LLAMA_ISA must be native, avx2 or avx_vnni, got '${LLAMA_ISA}'" >&2; return 1 ;;
  esac
  llama_bin="$build_dir/bin"
  local missing=0 target
  for target in "$@"; do [ -x "$llama_bin/$target" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "== building llama.cpp ($*) in $build_dir" >&2
    local launcher=() generator=()
    command -v ccache >/dev/null 2>&1 &&
      launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
    cmake -S "$src" -B "$build_dir" "${generator[@]}" "${launcher[@]}" \
      -DCMAKE_BUILD_TYPE=Release "${flags[@]}" -DGGML_CUDA=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON >&2
    nice -n 10 cmake --build "$build_dir" --target "$@" -j "$jobs" >&2
  fi
  if [ "${LLAMA_ISA:-native}" = avx_vnni ] && ! grep -qw avx_vnni /proc/cpuinfo; then
    # VEX-encoded vpdpbusd would stop with SIGILL here: the compiler may emit it on its own
    # under -mavxvnni. GCC 12 does so only in ggml's portable *_generic fallbacks, which x86
    # builds never call (each has an x86 version); anywhere else the build is refused.
    local lib vex
    for lib in "$build_dir"/bin/*.so "$build_dir"/bin/llama-*; do
      [ -f "$lib" ] || continue
      vex=$(objdump -d "$lib" | awk '/^[0-9a-f]+ </ { f = $2 } /\{vex\} vpdpbusd/ { print f }' |
        sort -u | grep -v '_generic>:$' || true)
      if [ -n "$vex" ]; then
        echo "LLAMA_ISA=avx_vnni: $lib holds VEX vpdpbusd in $vex, which this CPU cannot run" >&2
        return 1
      fi
    done
  fi
}
