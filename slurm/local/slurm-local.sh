#!/usr/bin/env bash
# slurm-local.sh: a real one-node Slurm cluster (munged + slurmctld + slurmd) for trying alem's
# sbatch scripts and for the end-to-end tests, on a machine without systemd. Every file it
# writes lives under one state folder, and `down` stops exactly the daemons it started, by PID.
#
# Usage: slurm/local/slurm-local.sh install|up|down|status|env
#   install  installs Slurm, munge, PMIx and Open MPI from the distribution (Debian 12), without
#            letting the packages start their own daemons
#   up       writes slurm.conf, starts the daemons, waits until the node is idle
#   down     cancels jobs, stops the daemons by PID, checks none is left, removes the state folder
#   status   daemon PIDs, sinfo and squeue
#   env      prints `export SLURM_CONF=...`; use: eval "$(slurm/local/slurm-local.sh env)"
#   pids     lists processes that still belong to the cluster (daemons, step daemons, job tasks);
#            prints nothing after a clean `down`
#
# Settings (environment):
#   ALEM_SLURM_DIR          state folder (default /tmp/alem-slurm-local)
#   ALEM_SLURM_CPUS         CPUs the node declares; may exceed the real core count (default 8)
#   ALEM_SLURM_MEM_MB       memory the node declares (default: the machine's)
#   ALEM_SLURM_PORT         slurmctld port; slurmd takes the next one (default 6817)
#   ALEM_SLURM_CRED_EXPIRE  munge credential lifetime in seconds, which is also the delay before
#                           a requeued job may start again (default 10; Slurm's own is 120)
#   ALEM_SLURM_NODE         node name (default: short host name)
#   ALEM_SLURM_PARTITION    partition name (default debug)
#
# Must run as root (slurmd launches jobs as their owners). Needs no systemd and no DNS.
set -euo pipefail

STATE_DIR=${ALEM_SLURM_DIR:-/tmp/alem-slurm-local}
NODE_CPUS=${ALEM_SLURM_CPUS:-8}
NODE_MEM_MB=${ALEM_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)}
CTLD_PORT=${ALEM_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CRED_EXPIRE_S=${ALEM_SLURM_CRED_EXPIRE:-10}
NODE_NAME=${ALEM_SLURM_NODE:-$(hostname -s)}
PARTITION=${ALEM_SLURM_PARTITION:-debug}

# The marker file proves a folder is ours before `up` reuses it or `down` deletes it.
MARKER_FILE=$STATE_DIR/.alem-slurm-local
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
MUNGED_PID_FILE=$MUNGE_DIR/munged.pid
CTLD_PID_FILE=$STATE_DIR/run/slurmctld.pid
SLURMD_PID_FILE=$STATE_DIR/run/slurmd.pid
export SLURM_CONF=$STATE_DIR/etc/slurm.conf

LOG_TAG=slurm-local
# shellcheck source=slurm/local/local-slurm-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-slurm-lib.sh"

# PIDs of this process and the shells above it, which must never count as the cluster's.
caller_chain() {
  local pid=$$
  while [ -n "$pid" ] && [ "$pid" != 0 ]; do
    echo "$pid"
    pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)
  done
  echo "$BASHPID"
}

# Processes that belong to this cluster: the daemons carry ALEM_SLURM_CLUSTER=<state folder>
# in their environment (set when started below); slurmstepd gets a clean environment but runs
# in the state folder's log directory; job tasks are descendants of those.
cluster_pids() {
  local pid callers roots=()
  callers=" $(caller_chain | tr '\n' ' ') "
  for pid in $(
    grep -lzxF "ALEM_SLURM_CLUSTER=$STATE_DIR" /proc/[0-9]*/environ 2>/dev/null
    find /proc -mindepth 2 -maxdepth 2 -name cwd \
      \( -lname "$STATE_DIR" -o -lname "$STATE_DIR/*" \) 2>/dev/null
  ); do
    pid=${pid#/proc/}
    pid=${pid%%/*}
    if [[ "$callers" != *" $pid "* ]]; then roots+=("$pid"); fi
  done
  if [ "${#roots[@]}" -eq 0 ]; then return 0; fi
  with_descendants "$callers" "${roots[@]}"
}

node_is_idle() { [ "$(sinfo -h -n "$NODE_NAME" -o %T)" = idle ]; }
port_is_free() { [ -z "$(ss -Htln "sport = :$1")" ]; }

do_install() {
  [ "$(id -u)" = 0 ] || fail "install needs root"
  # Package scripts would start munge and slurm as services; a policy-rc.d that answers 101
  # ("action forbidden") keeps them quiet. Only a policy file this script created is removed.
  local created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm slurm-wlm-basic-plugins munge libpmix-dev openmpi-bin libopenmpi-dev iproute2 procps
  if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  log "installed: $(slurmctld -V)"
}

write_slurm_conf() {
  cat >"$SLURM_CONF" <<EOF
# Written by slurm-local.sh: a one-node cluster for trying alem and for its tests.
ClusterName=alemlocal
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmdSpoolDir=$STATE_DIR/spool
TmpFS=$STATE_DIR/tmp
SlurmdPidFile=$SLURMD_PID_FILE
SlurmdLogFile=$STATE_DIR/log/slurmd.log
EOF
  write_common_slurm_conf
  cat >>"$SLURM_CONF" <<EOF
NodeName=$NODE_NAME NodeHostname=$NODE_NAME NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
}

prepare_state_dir() {
  if [ -e "$STATE_DIR" ] && [ ! -e "$MARKER_FILE" ] && [ -n "$(ls -A "$STATE_DIR")" ]; then
    fail "$STATE_DIR exists and was not made by this script; choose another ALEM_SLURM_DIR"
  fi
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR"/{etc,state,spool,log,run,tmp} "$MUNGE_DIR"
  : >"$MARKER_FILE"
  # munged refuses a socket folder that others cannot traverse.
  chmod 0755 "$STATE_DIR" "$MUNGE_DIR"
}

do_up() {
  [ "$(id -u)" = 0 ] || fail "up needs root"
  command -v slurmctld >/dev/null || fail "Slurm is not installed; run '$0 install'"
  if pid_file_alive "$CTLD_PID_FILE"; then fail "already up in $STATE_DIR; run '$0 down' first"; fi
  port_is_free "$CTLD_PORT" || fail "port $CTLD_PORT is taken; set ALEM_SLURM_PORT"
  port_is_free "$SLURMD_PORT" || fail "port $SLURMD_PORT is taken; set ALEM_SLURM_PORT"
  local started_ms
  started_ms=$(now_ms)
  prepare_state_dir
  start_munged
  write_slurm_conf
  ALEM_SLURM_CLUSTER=$STATE_DIR slurmctld ||
    fail "slurmctld did not start; see $STATE_DIR/log/slurmctld.log"
  retry_for 15 scontrol ping || fail "slurmctld does not answer; see $STATE_DIR/log/slurmctld.log"
  ALEM_SLURM_CLUSTER=$STATE_DIR slurmd -N "$NODE_NAME" ||
    fail "slurmd did not start; see $STATE_DIR/log/slurmd.log"
  if ! retry_for 30 node_is_idle; then
    sinfo -R >&2 || true
    fail "node $NODE_NAME is not idle; see $STATE_DIR/log/slurmd.log"
  fi
  retry_for 5 test -s "$SLURMD_PID_FILE" || fail "slurmd wrote no PID file"
  log "up in $(($(now_ms) - started_ms)) ms: node $NODE_NAME idle with $NODE_CPUS CPUs," \
    "port $CTLD_PORT, state in $STATE_DIR"
  echo "export SLURM_CONF=$SLURM_CONF"
}

do_down() {
  if [ ! -e "$STATE_DIR" ]; then
    log "nothing to stop: $STATE_DIR does not exist"
    return 0
  fi
  [ -e "$MARKER_FILE" ] || fail "$STATE_DIR was not made by this script; not touching it"
  stop_cluster_processes "$SLURMD_PID_FILE" "$CTLD_PID_FILE" "$MUNGED_PID_FILE"
  rm -rf "$STATE_DIR"
  log "down: stopped ${STOPPED_DAEMONS[*]:-no daemons}; removed $STATE_DIR"
}

do_status() {
  local pid_file
  for pid_file in "$MUNGED_PID_FILE" "$CTLD_PID_FILE" "$SLURMD_PID_FILE"; do
    if pid_file_alive "$pid_file"; then
      echo "$(basename "$pid_file" .pid): running, pid $(pid_from_file "$pid_file")"
    else
      echo "$(basename "$pid_file" .pid): not running"
    fi
  done
  if pid_file_alive "$CTLD_PID_FILE"; then
    sinfo
    squeue
  fi
}

case "${1:-}" in
  install) do_install ;;
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  pids) cluster_pids | sort -n ;;
  *)
    echo "usage: $0 install|up|down|status|env|pids" >&2
    exit 2
    ;;
esac
