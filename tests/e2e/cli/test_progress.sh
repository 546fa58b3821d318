#!/usr/bin/env bash
# test_progress.sh ALEM SOURCE_DIR: progress of long work (cli/progress.h) on the tiny test model.
#   1. `alem convert` without a terminal logs "converting" events: the first at 0 tensors, the
#      last at all of them (as many as the "converted" event counts), at most five in all;
#   2. `alem generate` logs "loading" events from 0 to the model's layers + 1 (embedding and head);
#   3. below log level info: neither;
#   4. on a terminal (script(1) gives one): the bar, redrawn in place, instead of the events.
set -euo pipefail
alem=$1
source_dir=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/alem-progress.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
tiny=$source_dir/tests/data/tiny-llama

"$alem" convert "$tiny" "$work/tiny.h5" 2>"$work/convert.log" >/dev/null || fail "convert: $(cat "$work/convert.log")"
python3 - "$work/convert.log" <<'PY' || fail "converting events: $(cat "$work/convert.log")"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
steps = [tuple(map(int, re.search(r"converting done=(\d+) of=(\d+) unit=tensors", l).groups()))
         for l in lines if " converting " in l]
tensors = int(re.search(r"converted .*tensors=(\d+)", "\n".join(lines)).group(1))
assert steps[0] == (0, tensors) and steps[-1] == (tensors, tensors), (steps, tensors)
assert 2 <= len(steps) <= 5 and all(a[0] < b[0] for a, b in zip(steps, steps[1:])), steps
PY

layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$tiny/config.json")
"$alem" generate --model "$work/tiny.h5" --prompt "Hi" --max-tokens 1 --temperature 0 --quiet \
  2>"$work/load.log" >/dev/null || fail "generate: $(cat "$work/load.log")"
grep -q "loading done=0 of=$((layers + 1)) unit=layers" "$work/load.log" &&
  grep -q "loading done=$((layers + 1)) of=$((layers + 1)) unit=layers" "$work/load.log" ||
  fail "loading events for $layers layers + 1: $(cat "$work/load.log")"

ALEM_LOG_LEVEL=warn "$alem" convert "$tiny" "$work/quiet.h5" 2>"$work/quiet.log" >/dev/null
! grep -q "converting" "$work/quiet.log" || fail "progress below log level info: $(cat "$work/quiet.log")"

if command -v script >/dev/null; then
  script -qec "'$alem' convert '$tiny' '$work/tty.h5'" "$work/tty.log" >/dev/null 2>&1 ||
    fail "convert on a terminal: $(cat "$work/tty.log")"
  grep -q $'\r\\[#' "$work/tty.log" || fail "no bar on a terminal: $(cat -v "$work/tty.log")"
  ! grep -q "converting done=" "$work/tty.log" || fail "events instead of the bar on a terminal"
fi
echo PASS
