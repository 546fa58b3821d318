#!/usr/bin/env bash
# `alem serve --confidential sandbox --encrypt-interconnect always` on 2 ranks (pp=2, mpirun) on
# 127.0.0.1, port 0: the ranks attest, verify the bundle and encrypt the pipeline, the server
# answers a greedy completion with exactly the text the clear `alem generate` gives for the same
# prompt; the network simulator (`alem netsim`) accepts the cluster bundle as the provider's
# Register evidence and gets sealed answers back; it stops on SIGTERM; and --dp 2 with encryption
# seals the data-parallel router's channel and answers the same. Bounded: the server is killed after 200 s in any case.
# Needs ALEM_BINARY, ALEM_TEST_MODEL and MPIEXEC (set by ctest).
set -euo pipefail
source "$(dirname "$0")/../serve_port.sh"
alem=${ALEM_BINARY:?}
model=${ALEM_TEST_MODEL:?}
mpiexec=${MPIEXEC:-mpirun}
[ -f "$model" ] || { echo "no model store at $model"; exit 77; }
command -v curl > /dev/null || { echo "curl not installed"; exit 77; }
work=$(mktemp -d)
# The provider's key file and journal live in the test's working folder, as a job keeps them in
# its own; alem opens them before entering the sandbox, whose private /tmp would hide them.
state=$(mktemp -d "$PWD/alem-confidential-state.XXXXXX")
server=""
cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2> /dev/null && wait "$server" 2> /dev/null || true
  rm -rf "$work" "$state"
}
trap cleanup EXIT
export OMP_NUM_THREADS=1
prompt="The capital of France is"

expected=$(timeout 240 "$mpiexec" --oversubscribe --allow-run-as-root -np 2 "$alem" generate \
  -m "$model" --pp 2 -p "$prompt" -n 6 --temperature 0 --quiet)

# The reference network, which must accept the cluster bundle (software evidence allowed).
ALEM_LOG_FORMAT=json timeout 200 "$alem" netsim --listen 127.0.0.1:0 --insecure \
  --accept-software-evidence --requests 2 --concurrency 2 --max-tokens 6 \
  --report "$work/netsim.json" --wait-provider-s 150 --run-s 150 > "$work/netsim.log" 2>&1 &
netsim=$!
netsim_port=""
for _ in $(seq 1 50); do
  netsim_port=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    if line.startswith("{") and json.loads(line).get("msg") == "listening":
        print(json.loads(line)["port"]); break' "$work/netsim.log")
  [ -n "$netsim_port" ] && break
  sleep 0.2
done
[ -n "$netsim_port" ] || { echo "FAIL: netsim did not listen"; cat "$work/netsim.log"; exit 1; }

ALEM_LOG_FORMAT=json timeout 200 "$mpiexec" --oversubscribe --allow-run-as-root -np 2 "$alem" serve \
  -m "$model" --pp 2 --host 127.0.0.1 --port 0 --metrics-port 0 \
  --confidential sandbox --encrypt-interconnect always \
  --network-endpoint "127.0.0.1:$netsim_port" --network-insecure \
  --provider-key "$state/provider.key" --usage-journal "$state/usage.journal" > "$work/serve.log" 2>&1 &
server=$!
port=$(listening_port "$work/serve.log" "$server" 90 "the server") || exit 1
grep -q '"msg":"cluster attestation bundle verified"' "$work/serve.log" ||
  { echo "FAIL: no verified bundle"; exit 1; }
[ "$(grep -c '"groups_encrypted":"2"' "$work/serve.log")" = 2 ] ||
  { echo "FAIL: both ranks must encrypt their world and pp groups"; grep start-up "$work/serve.log"; exit 1; }

curl -s -m 60 -o "$work/answer.json" -w '%{http_code}' "http://127.0.0.1:$port/v1/completions" \
  -H 'content-type: application/json' \
  -d "{\"model\":\"SmolLM2-135M-Instruct\",\"prompt\":\"$prompt\",\"max_tokens\":6,\"temperature\":0}" \
  > "$work/answer.status" || true
answer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"], end="")' \
  "$work/answer.json") ||
  { echo "FAIL: no completion (HTTP $(cat "$work/answer.status")): $(head -c 600 "$work/answer.json")"
    tail -20 "$work/serve.log"; exit 1; }
# generate prints the completion only; $(...) drops trailing newlines on both sides.
if [ "$answer" != "$expected" ]; then
  echo "FAIL: served text differs from the clear generate"
  printf 'served:   %q\nexpected: %q\n' "$answer" "$expected"
  exit 1
fi
wait "$netsim" || { echo "FAIL: netsim (bundle evidence)"; tail -5 "$work/netsim.log"; exit 1; }
python3 - "$work/netsim.json" <<'PY' || { echo "FAIL: netsim report"; cat "$work/netsim.json"; exit 1; }
import json, sys
r = json.load(open(sys.argv[1]))
assert r["completed"] == 2 and r["lost"] == 0 and r["billed_twice"] == 0, r
PY
grep -q '"evidence_format":"alem-cluster-bundle-v1"' "$work/netsim.log" ||
  { echo "FAIL: the provider did not register with the cluster bundle"; exit 1; }
kill -TERM "$server"
wait "$server" || true
server=""
# --dp 2 with encryption: the data-parallel router's channel between the gateway and the other
# replica's leader is sealed too; both replicas answer like the clear generate (each request is
# routed to one of them, so several requests reach both).
ALEM_LOG_FORMAT=json timeout 200 "$mpiexec" --oversubscribe --allow-run-as-root -np 2 "$alem" serve \
  -m "$model" --dp 2 --host 127.0.0.1 --port 0 --metrics-port 0 --confidential sandbox \
  --encrypt-interconnect always > "$work/dp.log" 2>&1 &
server=$!
port=$(listening_port "$work/dp.log" "$server" 90 "the --dp 2 server") || exit 1
[ "$(grep -c '"msg":"data-parallel channel encrypted","peers":"1"' "$work/dp.log")" = 2 ] ||
  { echo "FAIL: both ranks must seal the data-parallel channel"; grep channel "$work/dp.log"; exit 1; }
# Four requests at once: the router spreads them over both replicas.
for i in 1 2 3 4; do
  curl -s -m 120 "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"SmolLM2-135M-Instruct\",\"prompt\":\"$prompt\",\"max_tokens\":6,\"temperature\":0}" \
    > "$work/dp-answer-$i.json" &
done
wait_status=0
for job in $(jobs -p); do [ "$job" = "$server" ] || wait "$job" || wait_status=1; done
[ "$wait_status" = 0 ] || { echo "FAIL: a --dp 2 request failed"; exit 1; }
for i in 1 2 3 4; do
  answer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"], end="")' \
    "$work/dp-answer-$i.json") ||
    { echo "FAIL: --dp 2 request $i: $(head -c 600 "$work/dp-answer-$i.json")"; tail -20 "$work/dp.log"
      exit 1; }
  [ "$answer" = "$expected" ] ||
    { echo "FAIL: --dp 2 answer $i differs"; printf 'served:   %q\nexpected: %q\n' "$answer" "$expected"; exit 1; }
done
replica1_tokens=$(curl -s -m 10 "http://127.0.0.1:$port/metrics" |
  awk '/^alem_generation_tokens_total\{replica="1"/ { print $NF }')
[ "${replica1_tokens%.*}" -gt 0 ] 2> /dev/null ||
  { echo "FAIL: replica 1 (over the sealed channel) generated no tokens: '$replica1_tokens'"; exit 1; }
kill -TERM "$server"
wait "$server" || true
server=""
echo "PASS: confidential serve on 2 encrypted ranks answers like clear generate; the network accepted its bundle; --dp 2 with a sealed router channel answers the same"
