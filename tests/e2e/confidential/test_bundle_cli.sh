#!/usr/bin/env bash
# The confidential start-up as a user runs it, checked from outside: `alem generate
# --confidential sandbox --encrypt-interconnect always` on 2 ranks (mpirun, pp=2) must give the
# same greedy text as the clear run, and write a cluster bundle that `alem verify-bundle` accepts
# only with --accept-software-evidence and the served model's digest, refusing it otherwise with
# the named check. Needs ALEM_BINARY, ALEM_TEST_MODEL and MPIEXEC (set by ctest).
set -euo pipefail
alem=${ALEM_BINARY:?}
model=${ALEM_TEST_MODEL:?}
mpiexec=${MPIEXEC:-mpirun}
[ -f "$model" ] || { echo "no model store at $model"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
run() { timeout 240 "$mpiexec" --oversubscribe --allow-run-as-root -np 2 "$alem" generate \
  -m "$model" --pp 2 -p "The capital of France is" -n 8 --temperature 0 --quiet "$@"; }

run > "$work/clear.txt"
run --confidential sandbox --encrypt-interconnect always \
  --attestation-bundle-out "$work/bundle.bin" > "$work/encrypted.txt" 2> "$work/encrypted.log"
cmp "$work/clear.txt" "$work/encrypted.txt" || { echo "FAIL: output differs with encryption"; exit 1; }
grep -q 'groups_encrypted=2' "$work/encrypted.log" || { echo "FAIL: groups not encrypted"; cat "$work/encrypted.log"; exit 1; }
[ -s "$work/bundle.bin" ] || { echo "FAIL: no bundle written"; exit 1; }

digest=$("$alem" info "$model" | sed -n 's/^digest: //p')
"$alem" verify-bundle "$work/bundle.bin" --model-digest "$digest" --accept-software-evidence \
  > "$work/ok.txt"
grep -q '^OK: 2 ranks verified' "$work/ok.txt" || { echo "FAIL: bundle not verified"; cat "$work/ok.txt"; exit 1; }

expect_refusal() {  # check-name, then verify-bundle arguments
  local check=$1; shift
  if "$alem" verify-bundle "$work/bundle.bin" "$@" > "$work/out.txt" 2>&1; then
    echo "FAIL: verify-bundle accepted ($check expected)"; exit 1
  fi
  grep -q "FAIL rank .* $check:\|FAIL bundle $check:" "$work/out.txt" ||
    { echo "FAIL: expected $check"; cat "$work/out.txt"; exit 1; }
}
expect_refusal software_evidence_refused --model-digest "$digest"
expect_refusal model_digest --model-digest "$(printf '0%.0s' {1..64})" --accept-software-evidence
expect_refusal sealing_key --model-digest "$digest" --accept-software-evidence \
  --sealing-key "$(printf 'ab%.0s' {1..32})"
# A flipped byte in the middle of the file must not verify (a parse error or a failed check).
python3 - "$work/bundle.bin" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 2] ^= 0x01
open(sys.argv[1] + ".tampered", "wb").write(bytes(data))
PY
if "$alem" verify-bundle "$work/bundle.bin.tampered" --model-digest "$digest" \
  --accept-software-evidence > "$work/t.txt" 2>&1; then
  echo "FAIL: a tampered bundle verified"; exit 1
fi
echo "PASS: encrypted generate equals clear; bundle verified and refused as expected"
