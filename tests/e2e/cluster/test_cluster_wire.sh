#!/usr/bin/env bash
# test_cluster_wire.sh: encryption that crosses a wire. A confidential serve job (sandbox
# evidence) with tp 1 x pp 4 on two hosts of slurm/local/cluster-local.sh (stages 0-1 on the
# first, 2-3 on the second: one pipeline hop inside each host, one across); tcpdump records the
# bridge between the hosts while requests carrying a random canary are answered (the client runs
# on the gateway's host, so only the job's own traffic crosses the bridge):
#   1. --encrypt-interconnect never: the capture holds the prompt's token ids as a step plan
#      carries them (32-bit little-endian, back to back), so the search can find them;
#   2. --encrypt-interconnect auto: neither the canary text nor its token ids are in the capture,
#      which still carries the job's traffic; every rank keyed exactly the 2 peers on the other
#      host (messages inside a host stay clear); answers equal the clear run's;
#   3. --dp 2 across the two hosts (one replica each): the router's channel carries the requests
#      that go to the second replica; with `never` the capture shows the prompt, with `auto` it
#      shows nothing of it, and every answer equals the clear run's.
# Needs root, network namespaces, tcpdump, Slurm, munge, PMIx, Open MPI, the alem binary and the
# model store; exits 77 (ctest: skipped) without them. Always tears the cluster down.
set -euo pipefail

readonly TEST_NAME=cluster-wire
readonly TEST_DEADLINE_S=${ALEM_CLUSTER_TEST_DEADLINE_S:-560}
# shellcheck source=tests/e2e/cluster/cluster_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_test_lib.sh"
cluster_test_requirements tcpdump
cluster_test_start
BRIDGE=$("$CLUSTER" bridge)
readonly BRIDGE

canary="zq$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')vk"
readonly CANARY=$canary
readonly PROMPT="Remember the passphrase $CANARY and repeat it:"

# tokenize PROMPT: the prompt's token ids as the server sees them, comma-separated.
tokenize() {
  local body
  body=$(python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1]}))' "$1")
  on_host 1 curl -sS --max-time 10 http://127.0.0.1:8000/tokenize -H 'Content-Type: application/json' \
    -d "$body" | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)["tokens"])))'
}

# run_capture MODE [NAME TP PP PER_NODE]: a job on 2 hosts (default tp 1 x pp 4, 2 ranks per
# host; SERVE_DP replicas) with --encrypt-interconnect MODE; canary requests under tcpdump, three
# one after another and four at once; leaves the search result in $WORK_DIR/NAME/search.json and
# the answers in $WORK_DIR/NAME/answer.txt (one line per request).
run_capture() {
  local mode=$1 dir=$WORK_DIR/${2:-$1} tp=${3:-1} pp=${4:-4} per_node=${5:-2} job i
  start_serve "$dir" "$tp" "$pp" 2 "$per_node" --confidential sandbox --encrypt-interconnect "$mode"
  job=$SERVE_JOB
  ids=$(tokenize "$PROMPT")
  [ -n "$ids" ] || fail "/tokenize gave no ids"
  tcpdump -i "$BRIDGE" -s 0 -U -n -w "$dir/bridge.pcap" >"$dir/tcpdump.log" 2>&1 &
  local tcpdump_pid=$!
  BACKGROUND_PIDS+=("$tcpdump_pid")
  wait_for 10 "tcpdump to listen" file_has "$dir/tcpdump.log" "listening on"
  for i in 1 2 3; do complete "$PROMPT" 6 >"$dir/answer-$i.txt"; done
  local requests=()
  for i in 4 5 6 7; do
    complete "$PROMPT" 6 >"$dir/answer-$i.txt" &
    requests+=($!)
  done
  for i in "${requests[@]}"; do wait "$i" || fail "a request failed"; done
  for i in 1 2 3 4 5 6 7; do
    cat "$dir/answer-$i.txt"
    echo
  done >"$dir/answer.txt"
  sleep 1
  kill -INT "$tcpdump_pid"
  wait "$tcpdump_pid" || true
  python3 "$REPO_ROOT/tests/e2e/cluster/pcap_search.py" "$dir/bridge.pcap" --text "$CANARY" \
    --ids "$ids" >"$dir/search.json"
  say "$mode: $(cat "$dir/search.json")"
  scancel "$job"
  wait_for 60 "job $job to end" job_ended "$job"
  JOB_LOG=$dir/$job.out
}

say "encryption never: the capture must show the prompt's token ids (the search can fail)"
run_capture never
[ "$(json_field "$WORK_DIR/never/search.json" 'd["ids_found"]')" = True ] ||
  fail "the clear run's capture lacks the prompt's token ids: the search cannot see a leak"

say "encryption auto: nothing of the prompt on the wire between hosts"
run_capture auto
[ "$(json_field "$WORK_DIR/auto/search.json" 'd["ids_found"]')" = False ] ||
  fail "the prompt's token ids crossed the wire in the clear with encryption auto"
[ "$(json_field "$WORK_DIR/auto/search.json" 'd["text_found"]')" = False ] ||
  fail "the canary text crossed the wire with encryption auto"
[ "$(json_field "$WORK_DIR/auto/search.json" 'd["tcp_payload_bytes"] > 10000')" = True ] ||
  fail "the encrypted run's capture holds almost nothing: it proves nothing"
[ "$(cat "$WORK_DIR/auto/answer.txt")" = "$(cat "$WORK_DIR/never/answer.txt")" ] ||
  fail "encrypted and clear runs answered differently"
# Each of the 4 ranks keyed the 2 ranks of the other host, none of its own host's.
python3 - "$JOB_LOG" <<'PY' || fail "the ranks did not key exactly their peers on the other host"
import json, sys
done = [json.loads(l) for l in open(sys.argv[1], errors="replace")
        if l.startswith("{") and '"confidential start-up done"' in l]
assert len(done) == 4, "%d ranks reported the start-up" % len(done)
for e in done:
    assert e["encrypt_interconnect"] == "auto", e
    assert e["peers_keyed"] == "2", e
    assert int(e["groups_encrypted"]) > 0, e
PY

say "--dp 2 across the hosts, encryption never: the router's messages show the prompt"
SERVE_DP=2 run_capture never dp-never 1 1 1
if [ "$(json_field "$WORK_DIR/dp-never/search.json" 'd["ids_found"] or d["text_found"]')" != True ]; then
  fail "the clear --dp 2 run's capture lacks the prompt: the search cannot see a leak"
fi
say "--dp 2 across the hosts, encryption auto: the router's channel is sealed"
SERVE_DP=2 run_capture auto dp-auto 1 1 1
[ "$(json_field "$WORK_DIR/dp-auto/search.json" 'd["ids_found"] or d["text_found"]')" = False ] ||
  fail "the prompt crossed the wire between replicas with encryption auto"
grep -q '"msg":"data-parallel channel encrypted","peers":"1"' "$JOB_LOG" ||
  fail "the job did not report a sealed data-parallel channel"
for run in dp-never dp-auto; do
  [ "$(sort -u "$WORK_DIR/$run/answer.txt")" = "$(sort -u "$WORK_DIR/never/answer.txt")" ] ||
    fail "$run answered differently from the clear pipeline run"
done

say "all checks passed"
