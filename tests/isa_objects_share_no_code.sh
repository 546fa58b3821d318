#!/usr/bin/env bash
# The kernel files built with an instruction set's flags (*_avx2.cc, *_avx512.cc, *_amx.cc,
# *_avx_vnni.cc, *_avx_vnni_evex.cc) must
# define no code the linker could share with the rest of the program: a std container or other
# inline function instantiated there is emitted as a weak symbol, compiled with AVX-512 allowed,
# and the linker keeps one copy of it for every caller, so the program could run it on a CPU
# without AVX-512 (src/kernels/cpu/kernel_support.cc). Fails naming every such symbol.
# Usage: isa_objects_share_no_code.sh NM OBJECT... (an argument may be a ;-separated CMake list)
set -euo pipefail
nm_tool=$1
shift
objects=()
for argument in "$@"; do
  IFS=';' read -r -a listed <<<"$argument"
  objects+=("${listed[@]}")
done
checked=0
found=0
for object in "${objects[@]}"; do
  case "$(basename "$object")" in
    *_avx2.cc.o | *_avx512.cc.o | *_amx.cc.o | *_avx_vnni.cc.o | *_avx_vnni_evex.cc.o) ;;
    *) continue ;;
  esac
  checked=$((checked + 1))
  # W/w/V/v: weak code or data; u: unique global (inline variables, template statics); i: ifunc.
  # DW.ref.__gxx_personality_v0 is a pointer to the C++ runtime's own personality routine.
  shared=$("$nm_tool" -C "$object" | awk '$1 ~ /^[WwVvui]$/ || $2 ~ /^[WwVvui]$/' |
    grep -v 'DW.ref.__gxx_personality_v0' || true)
  if [ -n "$shared" ]; then
    echo "$(basename "$object") defines code or data the linker may share:"
    echo "$shared" | sed 's/^/  /'
    found=1
  fi
done
if [ "$checked" -lt 10 ]; then
  echo "only $checked ISA kernel objects found among the arguments: the object list is wrong" >&2
  exit 1
fi
[ "$found" -eq 0 ] || exit 1
echo "$checked ISA kernel objects define no shared symbol"
