#!/usr/bin/env bash
# test_slurm_cluster.sh: end-to-end check of the Slurm side of alem on a real one-node cluster
# (slurm/local/slurm-local.sh): PMIx MPI launch, job arrays, SIGUSR1 to a batch script,
# requeue with SLURM_RESTART_COUNT, and the shipped slurm/alem-*.sbatch scripts themselves, run
# with a stand-in for the alem command (drain on SIGUSR1, then requeue; one result per array
# task; convert then rename). Ends by stopping the cluster by PID and checking nothing is left.
#
# Needs root, Slurm, munge, PMIx and Open MPI (scripts/install-deps.sh). Exits 77 (ctest: skipped)
# when they are missing. Stops itself after TEST_DEADLINE_S and always tears the cluster down.
set -euo pipefail

readonly TEST_DEADLINE_S=${ALEM_SLURM_TEST_DEADLINE_S:-170}
readonly SKIP=77
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
readonly REPO_ROOT
readonly SLURM_LOCAL=$REPO_ROOT/slurm/local/slurm-local.sh
TEST_START_MS=$(($(date +%s%N) / 1000000))
readonly TEST_START_MS

elapsed() {
  local ms=$(($(date +%s%N) / 1000000 - TEST_START_MS))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
say() { printf '[slurm-e2e %6ss] %s\n' "$(elapsed)" "$*"; }
fail() {
  say "FAIL: $*"
  exit 1
}

for tool in slurmctld slurmd munged mungekey sbatch srun scontrol mpicc ss; do
  if ! command -v "$tool" >/dev/null; then
    echo "skipped: $tool not installed (scripts/install-deps.sh installs it)"
    exit "$SKIP"
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "skipped: the local Slurm cluster needs root"
  exit "$SKIP"
fi

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/alem-slurm-e2e.XXXXXX")
readonly WORK_DIR
chmod 0755 "$WORK_DIR"
export ALEM_SLURM_DIR=$WORK_DIR/cluster
export ALEM_SLURM_CPUS=8
export ALEM_SLURM_CRED_EXPIRE=10
export SLURM_CONF=$ALEM_SLURM_DIR/etc/slurm.conf
cluster_started=0
watchdog_pid=""

# Diagnostics for a failed run: the queue, the daemons' logs and every job's output.
show_diagnostics() {
  say "diagnostics follow"
  squeue 2>/dev/null || true
  local log_file
  for log_file in "$ALEM_SLURM_DIR"/log/*.log "$WORK_DIR"/*/*.out; do
    if [ -f "$log_file" ]; then
      echo "----- ${log_file#"$WORK_DIR"/} (last 25 lines)"
      tail -n 25 "$log_file"
    fi
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$watchdog_pid" ]; then kill "$watchdog_pid" 2>/dev/null || true; fi
  if [ "$status" != 0 ]; then show_diagnostics; fi
  if [ "$cluster_started" = 1 ]; then
    "$SLURM_LOCAL" down || status=1
    local leftovers
    leftovers=$("$SLURM_LOCAL" pids)
    if [ -n "$leftovers" ]; then
      say "FAIL: processes of the cluster survived: $leftovers"
      status=1
    fi
  fi
  rm -rf "$WORK_DIR"
  say "$([ "$status" = 0 ] && echo PASSED || echo "FAILED (exit $status)")"
  exit "$status"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT
trap 'fail "deadline of ${TEST_DEADLINE_S}s passed"' TERM

# The watchdog ends the test if it runs too long; its own sleep goes with it.
(
  trap 'kill "$deadline_sleep" 2>/dev/null; exit 0' TERM
  sleep "$TEST_DEADLINE_S" &
  deadline_sleep=$!
  wait "$deadline_sleep"
  kill -TERM "$$" 2>/dev/null
) &
watchdog_pid=$!

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds, or fails the test.
wait_for() {
  local seconds=$1 what=$2
  local deadline=$(($(date +%s) + seconds))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then fail "timed out after ${seconds}s waiting for: $what"; fi
    sleep 0.2
  done
}
job_state() { scontrol show job -o "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sort -u; }
job_is() { [ "$(job_state "$1")" = "$2" ]; }
file_has() { grep -q -- "$2" "$1" 2>/dev/null; }
count_lines() { grep -c -- "$2" "$1" 2>/dev/null || true; }

# A free pair of TCP ports (slurmctld, slurmd), so a cluster someone else runs is left alone.
pick_ports() {
  local port
  for port in $(shuf -i 20000-39000 -n 50); do
    if ! ss -Htln "( sport = :$port or sport = :$((port + 1)) )" | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  return 1
}
ALEM_SLURM_PORT=$(pick_ports) || fail "no free TCP port pair found"
export ALEM_SLURM_PORT

say "bringing the cluster up (state in $ALEM_SLURM_DIR, port $ALEM_SLURM_PORT)"
cluster_started=1
"$SLURM_LOCAL" up >/dev/null
node_is_idle() { [ "$(sinfo -h -o %T)" = idle ]; }
wait_for 10 "an idle node" node_is_idle

say "srun --mpi=list offers pmix"
srun --mpi=list 2>&1 | grep -qw pmix || fail "srun --mpi=list has no pmix: $(srun --mpi=list 2>&1)"

say "4 MPI ranks under sbatch + srun --mpi=pmix"
mkdir -p "$WORK_DIR/mpi"
mpicc -O2 -o "$WORK_DIR/mpi/mpi_hello" "$REPO_ROOT/tests/e2e/slurm/mpi_hello.c"
mpi_job=$(sbatch --parsable --ntasks=4 --output="$WORK_DIR/mpi/%j.out" \
  --wrap "srun --mpi=pmix $WORK_DIR/mpi/mpi_hello")
wait_for 30 "MPI job $mpi_job to complete" job_is "$mpi_job" COMPLETED
mpi_out=$WORK_DIR/mpi/$mpi_job.out
for rank in 0 1 2 3; do
  file_has "$mpi_out" "mpi_hello rank $rank of 4 on .*: rank sum 6 (ok)" ||
    fail "rank $rank did not report: $(cat "$mpi_out")"
done

say "job array of 3 tasks, one file each"
mkdir -p "$WORK_DIR/array"
array_job=$(sbatch --parsable --array=0-2 --ntasks=1 --output="$WORK_DIR/array/%A_%a.out" \
  --wrap "echo \"task \$SLURM_ARRAY_TASK_ID of job \$SLURM_ARRAY_JOB_ID\" > $WORK_DIR/array/task-\$SLURM_ARRAY_TASK_ID.txt")
wait_for 30 "array $array_job to complete" job_is "$array_job" COMPLETED
for task in 0 1 2; do
  file_has "$WORK_DIR/array/task-$task.txt" "task $task of job $array_job" ||
    fail "array task $task wrote no file"
done
[ "$(find "$WORK_DIR/array" -name 'task-*.txt' | wc -l)" = 3 ] || fail "array wrote extra files"

say "scancel --signal=USR1 --batch reaches the script's trap"
mkdir -p "$WORK_DIR/signal"
cat >"$WORK_DIR/signal/trap-usr1.sbatch" <<EOF
#!/usr/bin/env bash
trap 'echo "USR1 trapped" > $WORK_DIR/signal/trapped.txt; exit 0' USR1
echo ready > $WORK_DIR/signal/ready.txt
while :; do sleep 0.2 & wait \$! || true; done
EOF
signal_job=$(sbatch --parsable --ntasks=1 --output="$WORK_DIR/signal/%j.out" \
  "$WORK_DIR/signal/trap-usr1.sbatch")
wait_for 30 "signal job $signal_job to start" test -s "$WORK_DIR/signal/ready.txt"
scancel --signal=USR1 --batch "$signal_job"
wait_for 15 "the USR1 trap to fire" file_has "$WORK_DIR/signal/trapped.txt" "USR1 trapped"
wait_for 15 "signal job $signal_job to complete" job_is "$signal_job" COMPLETED

say "scontrol requeue restarts the job with SLURM_RESTART_COUNT=1 (after cred_expire)"
mkdir -p "$WORK_DIR/requeue"
requeue_job=$(sbatch --parsable --ntasks=1 --requeue --open-mode=append \
  --output="$WORK_DIR/requeue/%j.out" \
  --wrap "echo restart=\${SLURM_RESTART_COUNT:-0} >> $WORK_DIR/requeue/restarts.txt; sleep 300")
wait_for 30 "requeue job $requeue_job to start" file_has "$WORK_DIR/requeue/restarts.txt" restart=0
scontrol requeue "$requeue_job"
wait_for 45 "requeued job $requeue_job to run again" \
  file_has "$WORK_DIR/requeue/restarts.txt" restart=1
scontrol show job "$requeue_job" | grep -q 'Restarts=1' || fail "scontrol shows no Restarts=1"
scancel "$requeue_job"
wait_for 20 "requeue job $requeue_job to end" job_is "$requeue_job" CANCELLED

# A stand-in for the alem command: enough of serve, bench and convert to drive the shipped
# sbatch scripts. serve drains on SIGUSR1 with exit code 75, as the real server does.
mkdir -p "$WORK_DIR/bin"
cat >"$WORK_DIR/bin/alem" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
command=$1
shift
case "$command" in
  serve)
    trap 'echo "rank $SLURM_PROCID drained"; exit 75' USR1
    echo "rank $SLURM_PROCID serving restart=${SLURM_RESTART_COUNT:-0} args: $*"
    # srun signals the whole task, sleep included; `|| true` keeps set -e from exiting before
    # the trap runs.
    while :; do sleep 0.2 & wait $! || true; done
    ;;
  bench)
    output=""
    while [ $# -gt 0 ]; do
      if [ "$1" = --output ]; then output=$2; fi
      shift
    done
    if [ "$SLURM_PROCID" = 0 ]; then echo "ranks=$SLURM_NTASKS" >"$output"; fi
    ;;
  convert) cp "$1" "$2" ;;
  *) exit 64 ;;
esac
EOF
chmod 0755 "$WORK_DIR/bin/alem"
export ALEM_BIN=$WORK_DIR/bin/alem
# Site-specific lines of the shipped scripts, replaced by what the local cluster has.
local_site=(--partition=debug --time=10 --gpus-per-node=0 --cpus-per-task=1)

say "slurm/alem-serve.sbatch: drains on SIGUSR1, requeues itself, appends to its log"
mkdir -p "$WORK_DIR/serve"
serve_job=$(ALEM_MODEL=/models/m.h5 ALEM_TP=2 ALEM_PP=2 ALEM_DP=1 ALEM_PORT=8123 \
  sbatch --parsable "${local_site[@]}" --nodes=1 --ntasks-per-node=4 \
  --chdir="$WORK_DIR/serve" --output="$WORK_DIR/serve/%j.out" "$REPO_ROOT/slurm/alem-serve.sbatch")
serve_log=$WORK_DIR/serve/$serve_job.out
ranks_serving() { [ "$(count_lines "$serve_log" "serving restart=$1")" = 4 ]; }
wait_for 30 "4 ranks of serve job $serve_job" ranks_serving 0
file_has "$serve_log" "args: --model /models/m.h5 --tp 2 --pp 2 --dp 1 --port 8123 --config $WORK_DIR/serve/alem-serve-$serve_job.toml" ||
  fail "alem serve got other arguments: $(grep args: "$serve_log" | head -1)"
file_has "$WORK_DIR/serve/alem-serve-$serve_job.toml" '^\[limits\]' || fail "no server config"
scancel --signal=USR1 --batch "$serve_job"
wait_for 15 "serve job to drain" file_has "$serve_log" "drained (exit 75): requeueing"
[ "$(count_lines "$serve_log" "drained$")" = 4 ] || fail "not every rank drained"
wait_for 45 "serve job $serve_job to come back" ranks_serving 1
scancel "$serve_job"
wait_for 20 "serve job $serve_job to end" job_is "$serve_job" CANCELLED

say "slurm/alem-sweep.sbatch: one result per array task"
mkdir -p "$WORK_DIR/sweep"
sweep_job=$(ALEM_SWEEP_OUTPUT="$WORK_DIR/sweep/results" sbatch --parsable "${local_site[@]}" \
  --array=0-2 --nodes=1 --ntasks-per-node=8 --chdir="$WORK_DIR/sweep" \
  --output="$WORK_DIR/sweep/%A_%a.out" "$REPO_ROOT/slurm/alem-sweep.sbatch")
wait_for 40 "sweep array $sweep_job to complete" job_is "$sweep_job" COMPLETED
for result in tp1-pp1-batch8-conc16:1 tp2-pp1-batch8-conc16:2 tp4-pp1-batch8-conc16:4; do
  file_has "$WORK_DIR/sweep/results/${result%:*}.h5" "ranks=${result#*:}" ||
    fail "sweep result ${result%:*} missing or on the wrong number of ranks"
done

say "slurm/alem-convert.sbatch: converts under a temporary name, then renames"
mkdir -p "$WORK_DIR/convert"
echo "model bytes" >"$WORK_DIR/convert/in.gguf"
convert_job=$(ALEM_CONVERT_INPUT="$WORK_DIR/convert/in.gguf" \
  ALEM_CONVERT_OUTPUT="$WORK_DIR/convert/out/model.h5" sbatch --parsable "${local_site[@]}" \
  --mem=1G --output="$WORK_DIR/convert/%j.out" "$REPO_ROOT/slurm/alem-convert.sbatch")
wait_for 30 "convert job $convert_job to complete" job_is "$convert_job" COMPLETED
file_has "$WORK_DIR/convert/out/model.h5" "model bytes" || fail "no converted model"
[ -z "$(find "$WORK_DIR/convert/out" -name '*partial*')" ] || fail "partial file left behind"

say "tearing the cluster down by PID"
daemon_pids=$(cat "$ALEM_SLURM_DIR/munge/munged.pid" "$ALEM_SLURM_DIR"/run/*.pid)
"$SLURM_LOCAL" down
cluster_started=0
for pid in $daemon_pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "daemon $pid still running after down"; fi
done
leftovers=$("$SLURM_LOCAL" pids)
[ -z "$leftovers" ] || fail "cluster processes left: $leftovers"
[ ! -e "$ALEM_SLURM_DIR" ] || fail "state folder $ALEM_SLURM_DIR still there"
say "all checks passed"
