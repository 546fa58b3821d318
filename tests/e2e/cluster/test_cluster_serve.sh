#!/usr/bin/env bash
# test_cluster_serve.sh: alem across four real (namespaced) hosts of slurm/local/cluster-local.sh:
#   1. the cluster itself: every host has its own hostname; Open MPI ranks on different hosts
#      cannot reach each other over shared memory alone (btl self,vader fails), but can over TCP,
#      and ranks on one host can over shared memory;
#   2. `sbatch -N 4` of slurm/alem-serve.sbatch with tp 1 x pp 4 (one stage per host): greedy
#      answers equal `alem generate` on one rank; `alem status` shows each rank on its own host;
#   3. tp 3 x pp 2 on 2 hosts (tensor parallel inside a host, the pipeline across): same answers;
#   4. tp 2 x pp 4 on 4 hosts (8 ranks) on the tiny test model (tests/data/tiny-llama), whose
#      heads divide by 2: answers equal its one-rank `alem generate`.
# Needs root, network namespaces, Slurm, munge, PMIx, Open MPI, the alem binary and the model
# store; exits 77 (ctest: skipped) without them. Always tears the cluster down, checked by PID.
set -euo pipefail

readonly TEST_NAME=cluster-serve
readonly TEST_DEADLINE_S=${ALEM_CLUSTER_TEST_DEADLINE_S:-560}
# shellcheck source=tests/e2e/cluster/cluster_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_test_lib.sh"
cluster_test_requirements mpicc
cluster_test_start

say "hostnames: one per host"
hosts=$(timeout 30 srun -N 4 --ntasks-per-node=1 hostname | sort | tr '\n' ' ')
expected_hosts="$(for k in 1 2 3 4; do node_name "$k"; done | sort | tr '\n' ' ')"
[ "$hosts" = "$expected_hosts" ] || fail "srun -N 4 hostname gave '$hosts', expected '$expected_hosts'"

say "Open MPI: TCP between hosts, shared memory inside one"
mpicc -O1 -o "$WORK_DIR/mpi_hello" "$REPO_ROOT/tests/e2e/slurm/mpi_hello.c"
srun_mpi "$WORK_DIR/across.txt" 8 -N 4 --ntasks-per-node=2 --mpi=pmix "$WORK_DIR/mpi_hello" ||
  fail "8 ranks on 4 hosts: $(cat "$WORK_DIR/across.txt")"
OMPI_MCA_btl=self,vader srun_mpi "$WORK_DIR/inside.txt" 2 -N 1 --ntasks-per-node=2 --mpi=pmix \
  "$WORK_DIR/mpi_hello" || fail "2 ranks on one host over shared memory: $(cat "$WORK_DIR/inside.txt")"
if OMPI_MCA_btl=self,vader timeout 60 srun --kill-on-bad-exit=1 -N 2 --ntasks-per-node=1 --mpi=pmix \
  "$WORK_DIR/mpi_hello" >"$WORK_DIR/shm-across.txt" 2>&1; then
  fail "ranks on two hosts talked over shared memory alone: the hosts are not separate"
fi
grep -q "unable to reach each other" "$WORK_DIR/shm-across.txt" ||
  fail "shared memory alone between hosts failed for another reason: $(tail -5 "$WORK_DIR/shm-across.txt")"

readonly PROMPT="The capital of France is"
say "expected answer from alem generate (one rank, same store)"
expected=$("$ALEM" generate --model "$MODEL" --prompt "$PROMPT" --max-tokens 12 --temperature 0 --quiet)

# check_layout JOB TP PP RANKS_PER_HOST SUBMITTED: answers, and `alem status` placing rank r on host
# r / RANKS_PER_HOST + 1.
check_layout() {
  local job=$1 tp=$2 pp=$3 per_host=$4 submitted=$5
  local first_answer_s
  got=$(complete "${CHECK_PROMPT:-$PROMPT}" 12)
  first_answer_s=$(seconds_since "$submitted")
  [ "$got" = "${CHECK_EXPECTED:-$expected}" ] ||
    fail "tp $tp x pp $pp answered '$got', alem generate '${CHECK_EXPECTED:-$expected}'"
  say "tp $tp x pp $pp: answer equal to one rank; sbatch to first answer ${first_answer_s} s"
  local status
  status=$(on_host 1 sh -c 'cd "$0" && exec "$1" status --job "$2"' "$WORK_DIR/job-$tp-$pp" "$ALEM" "$job") ||
    fail "alem status failed: $status"
  grep -q "tp $tp x pp $pp x dp 1 = $((tp * pp)) ranks" <<<"$status" || fail "alem status layout: $status"
  local rank host
  for rank in $(seq 0 $((tp * pp - 1))); do
    host=$(node_name $((rank / per_host + 1)))
    grep -Eq "^ +$rank +0 +[0-9]+ +[0-9]+ +$host\$" <<<"$status" ||
      fail "alem status does not show rank $rank on $host: $status"
  done
  grep -m1 '"msg":"ready"' "$WORK_DIR/job-$tp-$pp/$job.out" |
    python3 -c 'import json,sys; e=json.load(sys.stdin); print("load_s", e["load_s"])' |
    while read -r _ s; do say "tp $tp x pp $pp: ranks loaded in $s s (rank 0's ready line)"; done
  scancel "$job"
  wait_for 60 "job $job to end" job_ended "$job"
}

say "sbatch -N 4: tp 1 x pp 4, one pipeline stage per host"
t0=$(now_s)
start_serve "$WORK_DIR/job-1-4" 1 4 4 1
check_layout "$SERVE_JOB" 1 4 1 "$t0"

say "sbatch -N 2: tp 3 x pp 2, tensor parallel inside a host, the pipeline across"
t0=$(now_s)
start_serve "$WORK_DIR/job-3-2" 3 2 2 3
check_layout "$SERVE_JOB" 3 2 3 "$t0"

say "sbatch -N 4: tp 2 x pp 4 (8 ranks), the tiny test model"
"$ALEM" convert "$REPO_ROOT/tests/data/tiny-llama" "$WORK_DIR/tiny.h5" >/dev/null 2>&1 ||
  fail "alem convert of tests/data/tiny-llama failed"
# A random model's text is not valid UTF-8 everywhere: compare as the server renders it (each
# invalid byte sequence replaced by U+FFFD).
CHECK_PROMPT="Hello there"
CHECK_EXPECTED=$("$ALEM" generate --model "$WORK_DIR/tiny.h5" --prompt "$CHECK_PROMPT" --max-tokens 12 \
  --temperature 0 --quiet | python3 -c 'import sys; sys.stdout.write(sys.stdin.buffer.read().decode("utf-8", "replace"))')
export SERVE_MODEL=$WORK_DIR/tiny.h5 SERVE_MODEL_NAME=tiny-llama
t0=$(now_s)
start_serve "$WORK_DIR/job-2-4" 2 4 4 2
check_layout "$SERVE_JOB" 2 4 2 "$t0"

say "all checks passed"
