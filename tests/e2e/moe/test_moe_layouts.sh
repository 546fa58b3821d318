#!/usr/bin/env bash
# Which expert-parallel layouts `alem generate` starts and which it refuses at start-up, through
# the real command line under mpirun (label mpi). Supported: ep divides tp, any pp and dp with
# it (tp 2 ep 2; tp 2 ep 2 pp 2), and experts across replicas with tp 1 (dp 2 ep 2); the tokens
# equal a single-rank run's. Refused, with the reason: ep larger than tp > 1, experts across
# replicas with pp > 1 or with ep not dividing dp, ep on a dense model. The rule itself is
# engine/shard_plan.h expert_parallel_problem(); docs/parallelism.md lists the combinations.
# Usage: test_moe_layouts.sh ALEM_BINARY MPIEXEC SOURCE_DIR
set -euo pipefail
alem=$1 mpiexec=$2 src=$3
source "$src/tests/e2e/serve_port.sh"
work=$(mktemp -d)
server=""
trap '[ -z "$server" ] || kill -TERM "$server" 2>/dev/null; rm -rf "$work"' EXIT
mpirun=("$mpiexec" --oversubscribe --allow-run-as-root)
export OMP_NUM_THREADS=1

"$alem" convert "$src/tests/data/tiny-mixtral" "$work/mixtral.h5" --dtype bf16 >/dev/null
"$alem" convert "$src/tests/data/tiny-qwen3" "$work/dense.h5" --dtype bf16 >/dev/null
gen=(generate --prompt "hello world" --max-tokens 12 --temperature 0)

# A command that must fail, naming the reason; bounded in time.
refused() {
  local why=$1
  shift
  local out rc=0
  out=$(timeout 120 "$@" 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "FAIL: accepted: $*"
    exit 1
  fi
  if ! grep -F -- "$why" >/dev/null <<<"$out"; then
    echo "FAIL: '$*' exited $rc without '$why':"
    echo "$out" | tail -5
    exit 1
  fi
  echo "refused as expected (exit $rc): ${*: -6}: $why"
}

tokens() {  # the generated text of a run, without timing lines
  timeout 300 "$@" 2>/dev/null | grep -v -i -E "tok/s|seconds|loaded|rank" || true
}

one=$(tokens "$alem" "${gen[@]}" -m "$work/mixtral.h5")
[ -n "$one" ] || { echo "FAIL: one rank generated nothing"; exit 1; }
for layout in "2 --tp 2 --ep 2" "4 --tp 2 --ep 2 --pp 2" "4 --tp 4 --ep 2" "2 --dp 2 --ep 2"; do
  read -r np args <<<"$layout"
  # shellcheck disable=SC2086
  got=$(tokens "${mpirun[@]}" -np "$np" "$alem" "${gen[@]}" -m "$work/mixtral.h5" $args)
  if [ "$got" != "$one" ]; then
    echo "FAIL: -np $np $args generated '$got', one rank '$one'"
    exit 1
  fi
  echo "supported: -np $np $args (same text as one rank)"
done

# Served with experts across replicas: concurrent completions (spread over both replicas, each
# replica's MoE layers exchanging rows with the other) must each equal what one rank generates,
# and SIGTERM must drain and stop both ranks.
ALEM_LOG_FORMAT=json timeout --foreground 240 "${mpirun[@]}" -np 2 "$alem" serve -m "$work/mixtral.h5" --dp 2 \
  --ep 2 --host 127.0.0.1 --port 0 > "$work/serve.log" 2>&1 &
server=$!
port=$(listening_port "$work/serve.log" "$server" 120 "the dp 2 ep 2 server") || exit 1
model=$(curl -s -m 10 "http://127.0.0.1:$port/v1/models" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
complete() {  # prompt -> completion text from the dp 2 ep 2 server
  curl -s -m 120 "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"$model\",\"prompt\":\"$1\",\"max_tokens\":12,\"temperature\":0}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"], end="")'
}
clients=()
for i in 1 2 3 4; do
  complete "hello world $i" > "$work/served-$i.txt" &
  clients+=($!)
done
for pid in "${clients[@]}"; do wait "$pid" || { echo "FAIL: a completion failed"; exit 1; }; done
for i in 1 2 3 4; do
  alone=$(timeout 120 "$alem" generate --prompt "hello world $i" --max-tokens 12 \
    --temperature 0 -m "$work/mixtral.h5" 2>/dev/null)
  if [ "$(cat "$work/served-$i.txt")" != "$alone" ]; then
    echo "FAIL: dp 2 ep 2 served '$(cat "$work/served-$i.txt")' for prompt $i, one rank '$alone'"
    exit 1
  fi
done
kill -TERM "$server"
for _ in $(seq 1 60); do kill -0 "$server" 2>/dev/null || break; sleep 1; done
if kill -0 "$server" 2>/dev/null; then
  kill -KILL "$server"
  echo "FAIL: dp 2 ep 2 server did not stop on SIGTERM"
  exit 1
fi
server=""
grep -q '"msg":"drained; exiting"' "$work/serve.log" || { echo "FAIL: no drain on SIGTERM"; tail -5 "$work/serve.log"; exit 1; }
echo "supported: serve -np 2 --dp 2 --ep 2 (4 concurrent completions equal to one rank; drained)"

refused "expert parallel size ep=4 must divide the tensor parallel size tp=2" \
  "${mpirun[@]}" -np 2 "$alem" "${gen[@]}" -m "$work/mixtral.h5" --tp 2 --ep 4
refused "need pp=1" \
  "${mpirun[@]}" -np 4 "$alem" "${gen[@]}" -m "$work/mixtral.h5" --dp 2 --pp 2 --ep 2
refused "must divide the number of replicas dp=3" \
  "${mpirun[@]}" -np 3 "$alem" "${gen[@]}" -m "$work/mixtral.h5" --dp 3 --ep 2
refused "needs a mixture-of-experts model" \
  "${mpirun[@]}" -np 2 "$alem" "${gen[@]}" -m "$work/dense.h5" --tp 2 --ep 2
refused "needs a mixture-of-experts model" \
  "${mpirun[@]}" -np 2 "$alem" "${gen[@]}" -m "$work/dense.h5" --dp 2 --ep 2
echo "PASS"
