#!/usr/bin/env bash
# Slurm Prolog for confidential VMs (runs as root on every node of a job, before the job).
# When the job asked for them (`sbatch --constraint=alem-cvm`), it renders this node's TDX guest
# launch with `alem cvm render` and boots the guest; other jobs pass through untouched.
#
# Site settings come from /etc/alem/cvm.env (or $ALEM_CVM_CONFIG), shell assignments:
#   ALEM_CVM_NODE_SPEC   node spec JSON (names, vsock CIDs, MACs, taps)   required
#   ALEM_CVM_IMAGE       image manifest JSON (files, expected measurements) required
#   ALEM_CVM_MEM         guest memory, e.g. 900G                           required
#   ALEM_CVM_CPUS        guest vCPUs (default: the CPUs Slurm gave the job on this node)
#   ALEM_CVM_RUN_DIR     parent of the per-job folders (default /run/alem-cvm)
#   ALEM_CVM_JOB_CONFIG  a file handed to the guest as fw_cfg opt/alem/job.json (optional)
#   ALEM_CVM_BOOT_TIMEOUT seconds to wait for the guest's agent on vsock (default 300)
#   ALEM_CVM_AGENT_PORT  vsock port the guest's agent listens on (default 5000)
#   ALEM_BIN             the alem command (default alem)
# ALEM_CVM_DRY_RUN=1 renders only (no tap device, no QEMU): for checking a node's settings.
# A failing prolog drains the node in Slurm, which is what a node that cannot boot its guest
# should get.
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
: "${SLURM_JOB_ID:?the prolog runs under Slurm}"
: "${ALEM_CVM_NODE_SPEC:?set ALEM_CVM_NODE_SPEC in $config}"
: "${ALEM_CVM_IMAGE:?set ALEM_CVM_IMAGE in $config}"
: "${ALEM_CVM_MEM:?set ALEM_CVM_MEM in $config}"
node=${SLURMD_NODENAME:-$(hostname -s)}
cpus=${ALEM_CVM_CPUS:-${SLURM_CPUS_ON_NODE:-1}}
run_dir=${ALEM_CVM_RUN_DIR:-/run/alem-cvm}/$SLURM_JOB_ID
alem=${ALEM_BIN:-alem}

log() { echo "alem-cvm prolog job=$SLURM_JOB_ID node=$node: $*" >&2; }

mkdir -p "$run_dir"
chmod 0700 "$run_dir"
render=("$alem" cvm render --node-spec "$ALEM_CVM_NODE_SPEC" --image "$ALEM_CVM_IMAGE"
  --mem "$ALEM_CVM_MEM" --cpus "$cpus" --node "$node" --out "$run_dir")
if [[ -n ${ALEM_CVM_JOB_CONFIG:-} ]]; then
  render+=(--job-config "$ALEM_CVM_JOB_CONFIG")
fi
"${render[@]}" >&2
if [[ ${ALEM_CVM_DRY_RUN:-0} == 1 ]]; then
  log "dry run: rendered $run_dir/$node.qemu.sh"
  exit 0
fi

# The settings render wrote for this node (validated names and numbers only).
# shellcheck source=/dev/null
. "$run_dir/$node.env"
if [[ $ALEM_CVM_NETWORK == tap ]]; then
  ip tuntap add dev "$ALEM_CVM_TAP" mode tap
  if [[ -n $ALEM_CVM_BRIDGE ]]; then
    ip link set "$ALEM_CVM_TAP" master "$ALEM_CVM_BRIDGE"
  fi
  ip link set "$ALEM_CVM_TAP" up
fi

sh "$run_dir/$node.qemu.sh" # -daemonize: returns once the guest is created
log "guest started (pid $(cat "$ALEM_CVM_PIDFILE"), vsock cid $ALEM_CVM_CID)"

# Wait until the guest's agent answers on vsock: the image booted and its measured services run.
timeout=${ALEM_CVM_BOOT_TIMEOUT:-300}
port=${ALEM_CVM_AGENT_PORT:-5000}
if ! command -v socat >/dev/null 2>&1; then
  log "socat not installed: not waiting for the guest agent"
  exit 0
fi
deadline=$((SECONDS + timeout))
until socat -u OPEN:/dev/null "VSOCK-CONNECT:$ALEM_CVM_CID:$port" 2>/dev/null; do
  if ! kill -0 "$(cat "$ALEM_CVM_PIDFILE")" 2>/dev/null; then
    log "the guest exited during boot; see $run_dir/$node.console.log"
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    log "the guest agent did not answer within ${timeout}s"
    exit 1
  fi
  sleep 2
done
log "guest agent ready"
