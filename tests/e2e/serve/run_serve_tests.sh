#!/usr/bin/env bash
# Runs the `alem serve` end-to-end tests (tests/e2e/serve/test_*.py) against the real model,
# on 127.0.0.1 only. Usage: run_serve_tests.sh [SUITE ...] (default: all), SUITE one of api http
# lifecycle multirank dp structured worker logprobs hang.
# Needs: the alem binary (ALEM_BINARY), the model store (ALEM_TEST_MODEL), curl, and Python with
# the official `openai` client and `jsonschema`: ALEM_SERVE_TEST_PYTHON, else a venv
# made in $ALEM_SERVE_TEST_VENV (default build dir/.venv-serve-tests) with pip install openai
# requests jsonschema.
# Exits 77 (skipped) when the model or a tool is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"

export ALEM_BINARY=${ALEM_BINARY:-$root/build/alem}
export ALEM_TEST_MODEL=${ALEM_TEST_MODEL:-$root/models/smollm2-135m-instruct.h5}
if [ ! -x "$ALEM_BINARY" ]; then echo "skip: no alem binary at $ALEM_BINARY"; exit 77; fi
if [ ! -s "$ALEM_TEST_MODEL" ]; then echo "skip: no model store at $ALEM_TEST_MODEL (scripts/prepare-model.sh)"; exit 77; fi
if ! command -v curl >/dev/null; then echo "skip: curl not installed"; exit 77; fi

has_openai() { "$1" -c 'import openai, jsonschema' >/dev/null 2>&1; }
python=${ALEM_SERVE_TEST_PYTHON:-}
if [ -z "$python" ]; then
  venv=${ALEM_SERVE_TEST_VENV:-$(dirname "$ALEM_BINARY")/.venv-serve-tests}
  if [ ! -x "$venv/bin/python" ] || ! has_openai "$venv/bin/python"; then
    python3 -m venv "$venv" >/dev/null && "$venv/bin/pip" install -q openai requests jsonschema ||
      { echo "skip: cannot install the openai client"; exit 77; }
  fi
  python=$venv/bin/python
fi

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(api http lifecycle multirank dp structured worker logprobs hang)
status=0
for suite in "${suites[@]}"; do
  echo "=== serve e2e: $suite ==="
  start=$(date +%s)
  "$python" "$here/test_serve_$suite.py" || status=1
  echo "=== $suite: $(( $(date +%s) - start )) s ==="
done
exit $status
