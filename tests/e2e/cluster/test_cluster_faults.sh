#!/usr/bin/env bash
# test_cluster_faults.sh: what a serve job does when something between nodes breaks, on five
# namespaced hosts of slurm/local/cluster-local.sh (the job takes 4: tp 1 x pp 4), with sealed
# requests of the network queue (`alem netsim`, which the job dials as its provider) in flight:
#   1. a node dies (every process on it SIGKILLed, its slurmd too): the job's ranks are gone
#      within 30 s, the job log names the host, Slurm requeues the job onto the spare host, it
#      serves again (restart 1, no rank on the dead host); the queue loses 0 requests and bills
#      0 twice;
#   2. a rank is stopped (SIGSTOP): /health fails within seconds, the job ends within 30 s with a
#      line naming the rank and its host;
#   3. the links of all hosts shaped to 1 Gbit/s with 1% loss: answers stay equal to one rank's
#      (the slowdown is printed, not asserted);
#   4. a link is cut (every packet dropped): the job ends within 30 s naming the rank and host.
# Prints the time of each. Needs root, network namespaces, iptables, Slurm, munge, PMIx, Open MPI,
# the alem binary and the model store; exits 77 (ctest: skipped) without them.
set -euo pipefail

readonly TEST_NAME=cluster-faults
readonly TEST_DEADLINE_S=${ALEM_CLUSTER_TEST_DEADLINE_S:-580}
# shellcheck source=tests/e2e/cluster/cluster_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_test_lib.sh"
cluster_test_requirements iptables
# Slurm notices a silent node after 45 s here, so alem's own detection (collective timeout 20 s,
# heartbeat answers in a pipeline after 14 s) acts first, as on clusters with Slurm's default of 300 s, and
# the serve script's requeue after a lost node is what brings the job back.
export ALEM_CLUSTER_SLURMD_TIMEOUT=45
cluster_test_start 5
readonly BRIDGE_ADDR=$ALEM_CLUSTER_SUBNET.253
readonly PROMPT="The capital of France is"
expected=$("$ALEM" generate --model "$MODEL" --prompt "$PROMPT" --max-tokens 12 --temperature 0 --quiet)

serve_pids() { pgrep -f "^$ALEM serve" || true; }
no_serve_left() { [ -z "$(serve_pids)" ]; }
# The job runs one rank per host, in the order of its node list: rank R is on host R + 1.
job_hosts() { scontrol show hostnames "$(scontrol show job -o "$job" | grep -o ' NodeList=[^ ]*' | cut -d= -f2)"; }
rank_host() { job_hosts | sed -n "$(($1 + 1))p"; }
# rank_pid R: the PID of the job's rank R: the `alem serve` process in its host's namespace.
rank_pid() {
  local host pid
  host=$(rank_host "$1")
  for pid in $(ip netns pids "$ALEM_CLUSTER_PREFIX-${host#"$ALEM_CLUSTER_PREFIX"}"); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep "^$ALEM serve " >/dev/null; then echo "$pid"; fi
  done
}
unhealthy() { ! healthy; }
check_answer() {
  local got
  got=$(complete "$PROMPT" 12)
  [ "$got" = "$expected" ] || fail "$1: the job answered '$got', alem generate '$expected'"
}
restarts_of() { scontrol show job -o "$1" | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }

say "alem netsim on the bridge ($BRIDGE_ADDR): the network the job dials out to"
mkdir -p "$WORK_DIR/a"
"$ALEM" netsim --listen "$BRIDGE_ADDR:0" --insecure --accept-software-evidence --requests 10 \
  --concurrency 2 --max-tokens 24 --report "$WORK_DIR/a/netsim-report.json" \
  --wait-provider-s 150 --run-s 300 >"$WORK_DIR/a/netsim.log" 2>&1 &
netsim_pid=$!
BACKGROUND_PIDS+=("$netsim_pid")
netsim_port() {
  python3 - "$WORK_DIR/a/netsim.log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("{"):
        e = json.loads(line)
        if e.get("msg") == "listening":
            print(e["port"]); sys.exit(0)
sys.exit(1)
PY
}
wait_for 30 "alem netsim to listen" netsim_port
NETSIM_PORT=$(netsim_port)

say "1. a node dies with sealed requests in flight"
start_serve "$WORK_DIR/a" 1 4 4 1 --network-endpoint "$BRIDGE_ADDR:$NETSIM_PORT" --network-insecure \
  --attestation off --provider-key "$WORK_DIR/a/provider.key" --usage-journal "$WORK_DIR/a/usage.journal"
job=$SERVE_JOB
running() { gateway_get /metrics | grep '^alem_requests_running{replica="0"[^}]*} [1-9]' >/dev/null; }
wait_for 120 "sealed requests to run" running
victim_host=$(rank_host 2)
t0=$(now_s)
"$CLUSTER" kill-node "$victim_host"
wait_for 30 "every rank of job $job to be gone after $victim_host died" no_serve_left
say "1. $victim_host died: every rank gone after $(seconds_since "$t0") s"
# What names the dead host: alem's line (a rank waiting for it), srun's or the script's, or
# Slurm's reason for the node (`sinfo -R`); rank 2's own log lines carry "host":"HOST" and do not
# count.
names_victim() {
  grep -v "\"host\":\"$victim_host\"" "$WORK_DIR/a/$job.out" | grep "$victim_host" >/dev/null ||
    grep -q "^$victim_host " <<<"$(sinfo -h -R -o '%n %E')"
}
wait_for 30 "the job log or Slurm to name $victim_host" names_victim
say "1. named after $(seconds_since "$t0") s: $( (grep -v "\"host\":\"$victim_host\"" "$WORK_DIR/a/$job.out" | grep "$victim_host" | tail -2; sinfo -h -R -o '%n: %E') | cut -c1-200 | tr '\n' '|')"
requeued() { [ "$(restarts_of "$job")" = 1 ]; }
wait_for 90 "Slurm to requeue job $job" requeued
say "1. requeued after $(seconds_since "$t0") s ($(job_state "$job"))"
wait_for 150 "job $job to serve again" healthy
say "1. serving again after $(seconds_since "$t0") s on $(scontrol show job -o "$job" | grep -o ' NodeList=[^ ]*')"
check_answer "after the requeue"
status=$(on_host 1 sh -c 'cd "$0" && exec "$1" status --job "$2"' "$WORK_DIR/a" "$ALEM" "$job")
grep -q "restarts 1" <<<"$status" || fail "alem status shows no 'restarts 1': $status"
if grep -q " $victim_host\$" <<<"$status"; then fail "a rank runs on the dead host: $status"; fi
wait "$netsim_pid" || fail "alem netsim reported a problem: $(tail -5 "$WORK_DIR/a/netsim.log")"
say "1. network queue: $(json_field "$WORK_DIR/a/netsim-report.json" '{k: d[k] for k in ("requests", "completed", "lost", "billed_twice", "failed", "redelivered")}')"
for field in lost billed_twice failed; do
  [ "$(json_field "$WORK_DIR/a/netsim-report.json" "d['$field']")" = 0 ] ||
    fail "netsim report: $field is not 0: $(cat "$WORK_DIR/a/netsim-report.json")"
done
[ "$(json_field "$WORK_DIR/a/netsim-report.json" "d['completed']")" = 10 ] ||
  fail "netsim report: not 10 completed: $(cat "$WORK_DIR/a/netsim-report.json")"

say "2. a rank stops (SIGSTOP)"
stopped_host=$(rank_host 2)
stopped_pid=$(rank_pid 2)
[ -n "$stopped_pid" ] || fail "no process of rank 2 on $stopped_host"
t0=$(now_s)
kill -STOP "$stopped_pid"
wait_for 15 "/health to fail" unhealthy
say "2. /health failed $(seconds_since "$t0") s after the stop"
wait_for 30 "a line naming rank 2 on $stopped_host" file_has "$WORK_DIR/a/$job.out" "rank 2 on $stopped_host"
wait_for 30 "every rank to be gone" no_serve_left
say "2. job's ranks gone $(seconds_since "$t0") s after the stop: $(grep -h "failed:" "$WORK_DIR/a/$job.out" | grep -v '^{' | tail -1 | cut -c1-240)"
wait_for 30 "job $job to end" job_ended "$job"
say "2. job $job $(job_state "$job") $(seconds_since "$t0") s after the stop"

say "3. shaped links: 1 Gbit/s and 1% loss on every host of a new job"
start_serve "$WORK_DIR/b" 1 4 4 1
job=$SERVE_JOB
timed_answers() {
  local t
  t=$(now_s)
  for _ in 1 2 3; do check_answer "$1"; done
  seconds_since "$t"
}
clear_s=$(timed_answers "clear links")
for host in $(scontrol show hostnames "$(scontrol show job -o "$job" | grep -o ' NodeList=[^ ]*' | cut -d= -f2)"); do
  "$CLUSTER" shape "$host" --rate 1gbit --loss 1 2>/dev/null
done
shaped_s=$(timed_answers "shaped links")
say "3. three answers: ${clear_s} s on clear links, ${shaped_s} s shaped (1 Gbit/s, 1% loss): equal to one rank"
for host in $(scontrol show hostnames "$(scontrol show job -o "$job" | grep -o ' NodeList=[^ ]*' | cut -d= -f2)"); do
  "$CLUSTER" heal "$host" 2>/dev/null
done

say "4. a link is cut (every packet dropped)"
cut_host=$(rank_host 3)
t0=$(now_s)
"$CLUSTER" cut "$cut_host" 2>/dev/null
wait_for 15 "/health to fail" unhealthy
say "4. /health failed $(seconds_since "$t0") s after the cut"
wait_for 30 "a line naming rank 3 on $cut_host" file_has "$WORK_DIR/b/$job.out" "rank 3 on $cut_host"
say "4. named $(seconds_since "$t0") s after the cut: $(grep -h "rank 3 on $cut_host" "$WORK_DIR/b/$job.out" | grep -v -m1 '^{' | cut -c1-240)"
ranks_off_cut_host_gone() {
  local r
  for r in 0 1 2; do [ -z "$(rank_pid "$r")" ] || return 1; done
}
wait_for 30 "the ranks on the other hosts to be gone" ranks_off_cut_host_gone
say "4. ranks on the other hosts gone $(seconds_since "$t0") s after the cut"
"$CLUSTER" heal "$cut_host" 2>/dev/null

say "all checks passed"
