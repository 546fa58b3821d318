#!/usr/bin/env bash
# Slurm Epilog for confidential VMs (runs as root on every node of a job, after the job): stops
# the TDX guest that prolog.sh booted, removes its tap device and the job's run folder. The
# guest's memory is private to the TD and is released by KVM when QEMU exits; nothing of it is
# readable by the host, so there is nothing to wipe here beyond the run folder.
set -euo pipefail

case ",${SLURM_JOB_CONSTRAINTS:-}," in
  *,alem-cvm,*) ;;
  *) exit 0 ;;
esac

config=${ALEM_CVM_CONFIG:-/etc/alem/cvm.env}
if [[ -r $config ]]; then
  # shellcheck source=/dev/null
  . "$config"
fi
: "${SLURM_JOB_ID:?the epilog runs under Slurm}"
node=${SLURMD_NODENAME:-$(hostname -s)}
run_dir=${ALEM_CVM_RUN_DIR:-/run/alem-cvm}/$SLURM_JOB_ID
log() { echo "alem-cvm epilog job=$SLURM_JOB_ID node=$node: $*" >&2; }

if [[ ! -r $run_dir/$node.env ]]; then
  log "no guest was rendered here; nothing to stop"
  rm -rf "$run_dir"
  exit 0
fi
# shellcheck source=/dev/null
. "$run_dir/$node.env"

if [[ -r $ALEM_CVM_PIDFILE ]]; then
  pid=$(cat "$ALEM_CVM_PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    # Ask QEMU to power the guest off, then insist.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "QEMU did not stop in 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  log "guest stopped"
fi
if [[ $ALEM_CVM_NETWORK == tap ]] && ip link show "$ALEM_CVM_TAP" >/dev/null 2>&1; then
  ip link delete "$ALEM_CVM_TAP"
fi
rm -rf "$run_dir"
