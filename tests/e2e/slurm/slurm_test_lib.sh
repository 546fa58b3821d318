#!/usr/bin/env bash
# slurm_test_lib.sh: what the Slurm end-to-end tests share, sourced by each of them: the checks
# that a local cluster can run here (exit 77 = skipped otherwise), a deadline watchdog, polling
# helpers, a free port pair, and bringing the one-node cluster of slurm/local/slurm-local.sh up
# and, whatever happens, down again (checked by PID).
#
# The sourcing script sets TEST_NAME and TEST_DEADLINE_S first, then calls slurm_test_start.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
readonly REPO_ROOT
readonly SLURM_LOCAL=$REPO_ROOT/slurm/local/slurm-local.sh
# shellcheck source=tests/e2e/job_test_lib.sh
source "$REPO_ROOT/tests/e2e/job_test_lib.sh"

# require_tools TOOL...: skip the test when one is missing; needs root for the daemons.
require_tools() {
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null; then
      echo "skipped: $tool not installed (scripts/install-deps.sh installs it)"
      exit "$SKIP"
    fi
  done
  if [ "$(id -u)" != 0 ]; then
    echo "skipped: the local Slurm cluster needs root"
    exit "$SKIP"
  fi
}

# A free pair of TCP ports (port, port + 1), so a cluster or server someone else runs is left
# alone.
pick_ports() {
  local port
  for port in $(shuf -i 20000-39000 -n 50); do
    if [ -z "$(ss -Htln "( sport = :$port or sport = :$((port + 1)) )")" ]; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

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

cluster_started=0
watchdog_pid=""

slurm_test_cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$watchdog_pid" ]; then kill "$watchdog_pid" 2>/dev/null || true; fi
  if [ "$status" != 0 ]; then show_diagnostics; fi
  if [ "$cluster_started" = 1 ]; then
    scancel --full "$(squeue -h -o %A | tr '\n' ' ')" >/dev/null 2>&1 || true
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

# Makes WORK_DIR, arms the deadline watchdog and the cleanup trap, and brings the cluster up
# with ALEM_SLURM_CPUS CPUs declared.
slurm_test_start() {
  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/alem-slurm-e2e.XXXXXX")
  readonly WORK_DIR
  chmod 0755 "$WORK_DIR"
  export ALEM_SLURM_DIR=$WORK_DIR/cluster
  export ALEM_SLURM_CPUS=${ALEM_SLURM_CPUS:-8}
  export ALEM_SLURM_CRED_EXPIRE=10
  export SLURM_CONF=$ALEM_SLURM_DIR/etc/slurm.conf
  trap slurm_test_cleanup EXIT
  trap 'fail "interrupted"' INT
  trap 'fail "deadline of ${TEST_DEADLINE_S}s passed"' TERM
  start_watchdog

  ALEM_SLURM_PORT=$(pick_ports) || fail "no free TCP port pair found"
  export ALEM_SLURM_PORT
  say "bringing the cluster up (state in $ALEM_SLURM_DIR, port $ALEM_SLURM_PORT)"
  cluster_started=1
  "$SLURM_LOCAL" up >/dev/null
  wait_for 10 "an idle node" node_is_idle
}
node_is_idle() { [ "$(sinfo -h -o %T)" = idle ]; }

# Stops the cluster and checks by PID that every daemon and job process is gone.
slurm_test_teardown() {
  say "tearing the cluster down by PID"
  local daemon_pids pid leftovers
  daemon_pids=$(cat "$ALEM_SLURM_DIR/munge/munged.pid" "$ALEM_SLURM_DIR"/run/*.pid)
  "$SLURM_LOCAL" down
  cluster_started=0
  for pid in $daemon_pids; do
    if kill -0 "$pid" 2>/dev/null; then fail "daemon $pid still running after down"; fi
  done
  leftovers=$("$SLURM_LOCAL" pids)
  [ -z "$leftovers" ] || fail "cluster processes left: $leftovers"
  [ ! -e "$ALEM_SLURM_DIR" ] || fail "state folder $ALEM_SLURM_DIR still there"
}
