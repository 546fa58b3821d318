#!/usr/bin/env bash
# cluster-local.sh: a real multi-node Slurm cluster on one Linux machine, for testing what alem
# does between nodes. Each host is a network namespace (its own interface, address and routes)
# joined to a private bridge, with its own UTS namespace (hostname) and its own slurmd; one
# slurmctld runs in a namespace of its own and one munged (with one key) serves them all through
# its socket. MPI traffic between hosts therefore crosses a real (virtual) wire that can be
# captured, shaped and cut; traffic inside a host stays in shared memory. The one-node variant is
# slurm-local.sh beside this file.
#
# Usage: slurm/local/cluster-local.sh COMMAND
#   install              installs what `up` needs beyond slurm-local.sh's packages (iptables
#                        for loss and cuts, tcpdump for captures)
#   up                   makes the bridge, the namespaces, munged, slurmctld and one slurmd per
#                        host; waits until every node is idle
#   down                 cancels jobs, stops what `up` started by PID, kills what is left in the
#                        namespaces, removes namespaces, links and the state folder
#   status               daemons, nodes (name, address, shaping) and the queue
#   env                  prints `export SLURM_CONF=...`
#   nodes                one line per host: NAME ADDRESS NAMESPACE
#   pids                 processes that belong to the cluster; nothing after a clean `down`
#   exec NODE CMD...     runs CMD inside NODE's network and UTS namespaces
#   shape NODE [--rate R] [--delay D] [--loss P]
#                        shapes NODE's link in both directions: R like 1gbit (tbf), D like 2ms
#                        (netem; needs a kernel with sch_netem), P like 1 (percent, iptables)
#   cut NODE             drops every packet on NODE's link (a silent peer: no resets)
#   heal NODE            removes shaping and cuts from NODE's link
#   kill-node NODE       a node dies: SIGKILL to every process in NODE's namespaces, slurmd
#                        included (slurmctld marks it DOWN after SlurmdTimeout)
#   revive NODE          starts NODE's slurmd again after kill-node
#
# Settings (environment):
#   ALEM_CLUSTER_DIR      state folder (default /tmp/alem-cluster-local)
#   ALEM_CLUSTER_NODES    number of hosts (default 4)
#   ALEM_CLUSTER_CPUS     CPUs each host declares (default 4; may exceed the real cores)
#   ALEM_CLUSTER_MEM_MB   memory each host declares (default: the machine's / hosts)
#   ALEM_CLUSTER_SUBNET   the first three octets of a private /24 (default 10.213.7); hosts get
#                         .1 to .N, slurmctld .254, the bridge (this machine's side) .253
#   ALEM_CLUSTER_PREFIX   prefix of namespace, host and link names (default alemc); the bridge
#                         is PREFIX-br, namespaces PREFIX-nodeK and PREFIX-ctl
#   ALEM_CLUSTER_CRED_EXPIRE  munge credential lifetime in seconds, also the delay before a
#                         requeued job may start again (default 10)
#   ALEM_CLUSTER_SLURMD_TIMEOUT  seconds without an answer before slurmctld marks a node DOWN
#                         and requeues its jobs (default 10)
#
# Must run as root. Only the addresses of the subnet above and loopback are used.
set -euo pipefail

STATE_DIR=${ALEM_CLUSTER_DIR:-/tmp/alem-cluster-local}
NODE_COUNT=${ALEM_CLUSTER_NODES:-4}
NODE_CPUS=${ALEM_CLUSTER_CPUS:-4}
SUBNET=${ALEM_CLUSTER_SUBNET:-10.213.7}
PREFIX=${ALEM_CLUSTER_PREFIX:-alemc}
CRED_EXPIRE_S=${ALEM_CLUSTER_CRED_EXPIRE:-10}
SLURMD_TIMEOUT_S=${ALEM_CLUSTER_SLURMD_TIMEOUT:-10}
NODE_MEM_MB=${ALEM_CLUSTER_MEM_MB:-$(awk -v n="$NODE_COUNT" '/^MemTotal:/ {print int($2 / 1024 / n)}' /proc/meminfo)}
readonly CTLD_PORT=6817 SLURMD_PORT=6818 PARTITION=cluster

BRIDGE=$PREFIX-br
CTL_NS=$PREFIX-ctl
CTL_HOST=${PREFIX}ctl
CTL_ADDR=$SUBNET.254
BRIDGE_ADDR=$SUBNET.253
MARKER_FILE=$STATE_DIR/.alem-cluster-local
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
MUNGED_PID_FILE=$MUNGE_DIR/munged.pid
CTLD_PID_FILE=$STATE_DIR/run/slurmctld.pid
export SLURM_CONF=$STATE_DIR/etc/slurm.conf

LOG_TAG=cluster-local
# shellcheck source=slurm/local/local-slurm-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-slurm-lib.sh"

# Host K (1-based): its name (also its hostname and Slurm NodeName), namespace, address, links.
node_name() { echo "${PREFIX}node$1"; }
node_ns() { echo "$PREFIX-node$1"; }
node_addr() { echo "$SUBNET.$1"; }
node_host_link() { echo "$PREFIX-h$1"; } # this machine's end, on the bridge
slurmd_pid_file() { echo "$STATE_DIR/run/slurmd-$(node_name "$1").pid"; }
node_index() {
  local k
  for k in $(seq 1 "$NODE_COUNT"); do
    if [ "$1" = "$(node_name "$k")" ] || [ "$1" = "$k" ] || [ "$1" = "$(node_ns "$k")" ]; then
      echo "$k"
      return 0
    fi
  done
  fail "no node '$1' (names: $(node_name 1) .. $(node_name "$NODE_COUNT"), or 1 .. $NODE_COUNT)"
}
# in_node K CMD...: CMD in host K's network namespace.
in_node() {
  local k=$1
  shift
  nsenter --net="/run/netns/$(node_ns "$k")" "$@"
}
# as_host NS NAME CMD...: CMD (a daemon) as host NAME: in network namespace NS, a UTS namespace
# with hostname NAME and a mount namespace of its own where /etc/hosts names the cluster's hosts,
# /dev/shm is a private tmpfs (no shared memory between hosts) and /var/tmp, Slurm's TmpFS, is the
# host's own folder (kept short: PMIx puts its Unix sockets there, whose paths are limited to 107
# bytes). Everything else (the state folder, models, job folders) is shared, like a cluster's
# shared file system. (Not `ip netns exec`, which remounts /sys and so hides the cgroup file
# system from slurmd.)
as_host() {
  local ns=$1 name=$2
  shift 2
  mkdir -p "$STATE_DIR/hosts/$name/tmp"
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private sh -c '
    mount --bind "$0/etc/hosts" /etc/hosts && mount -t tmpfs -o size=1g,mode=1777 shm /dev/shm &&
      mount --bind "$0/hosts/$1/tmp" /var/tmp && hostname "$1" && shift && exec "$@"' \
    "$STATE_DIR" "$name" "$@"
}
# host_pid K: the PID of host K's slurmd, whose namespaces are the host's.
host_pid() { pid_from_file "$(slurmd_pid_file "$1")"; }

namespaces() {
  local k
  for k in $(seq 1 "$NODE_COUNT"); do node_ns "$k"; done
  echo "$CTL_NS"
}
ns_exists() { [ -e "/run/netns/$1" ]; }

# Processes of the cluster: everything inside its namespaces, munged, and their descendants.
cluster_pids() {
  local ns roots=()
  for ns in $(namespaces); do
    if ns_exists "$ns"; then mapfile -t -O "${#roots[@]}" roots < <(ip netns pids "$ns"); fi
  done
  if pid_file_alive "$MUNGED_PID_FILE"; then roots+=("$(pid_from_file "$MUNGED_PID_FILE")"); fi
  if [ "${#roots[@]}" -eq 0 ]; then return 0; fi
  with_descendants "$$" "${roots[@]}"
}

all_nodes_idle() {
  local states
  states=$(sinfo -h -p "$PARTITION" -o '%T %D')
  [ "$states" = "idle $NODE_COUNT" ]
}

do_install() {
  [ "$(id -u)" = 0 ] || fail "install needs root"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iproute2 iptables tcpdump procps
  log "installed iptables and tcpdump; Slurm itself comes from slurm-local.sh install"
}

write_config() {
  local k nodes=""
  cat >"$SLURM_CONF" <<EOF
# Written by cluster-local.sh: $NODE_COUNT hosts in network namespaces on one machine.
ClusterName=alemcluster
SlurmctldHost=$CTL_HOST($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# Every host has its own spool, PID file and log (%n: the node's name).
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
TmpFS=/var/tmp
# A dead host is noticed after SlurmdTimeout; its jobs are requeued (they asked for --requeue).
SlurmdTimeout=$SLURMD_TIMEOUT_S
SlurmctldTimeout=10
MessageTimeout=5
EOF
  write_common_slurm_conf
  for k in $(seq 1 "$NODE_COUNT"); do
    echo "NodeName=$(node_name "$k") NodeHostname=$(node_name "$k") NodeAddr=$(node_addr "$k")" \
      "CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN" >>"$SLURM_CONF"
    nodes+="${nodes:+,}$(node_name "$k")"
  done
  echo "PartitionName=$PARTITION Nodes=$nodes Default=YES MaxTime=INFINITE State=UP" >>"$SLURM_CONF"
  # /etc/hosts inside every host (bind-mounted over /etc/hosts in its mount namespace).
  {
    echo "127.0.0.1 localhost"
    echo "$CTL_ADDR $CTL_HOST"
    for k in $(seq 1 "$NODE_COUNT"); do echo "$(node_addr "$k") $(node_name "$k")"; done
  } >"$STATE_DIR/etc/hosts"
}

# make_namespace NS ADDR HOST_LINK: a namespace whose eth0 (one end of a veth pair) has ADDR on
# the bridge; the other end, HOST_LINK, is a port of the bridge.
make_namespace() {
  local ns=$1 addr=$2 host_link=$3
  ip netns add "$ns"
  echo "netns $ns" >>"$STATE_DIR/created"
  ip link add "$host_link" type veth peer name "$host_link-n"
  echo "link $host_link" >>"$STATE_DIR/created"
  ip link set "$host_link-n" netns "$ns"
  ip -n "$ns" link set "$host_link-n" name eth0
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip link set "$host_link" master "$BRIDGE"
  ip link set "$host_link" up
}

make_network() {
  if grep -q "^$SUBNET\.0/24" <<<"$(ip route show)"; then
    fail "$SUBNET.0/24 is already routed here; choose another ALEM_CLUSTER_SUBNET"
  fi
  local ns
  for ns in $(namespaces); do
    if ns_exists "$ns"; then fail "namespace $ns exists; run '$0 down' or set ALEM_CLUSTER_PREFIX"; fi
  done
  ip link add "$BRIDGE" type bridge
  echo "link $BRIDGE" >>"$STATE_DIR/created"
  ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local k
  for k in $(seq 1 "$NODE_COUNT"); do
    make_namespace "$(node_ns "$k")" "$(node_addr "$k")" "$(node_host_link "$k")"
  done
  make_namespace "$CTL_NS" "$CTL_ADDR" "$PREFIX-hc"
}

# start_slurmd K: host K's slurmd in its namespace, under its own hostname.
start_slurmd() {
  local k=$1 name
  name=$(node_name "$k")
  mkdir -p "$STATE_DIR/spool/$name"
  ALEM_CLUSTER=$STATE_DIR as_host "$(node_ns "$k")" "$name" slurmd -N "$name" ||
    fail "slurmd of $name did not start; see $STATE_DIR/log/slurmd-$name.log"
}

do_up() {
  [ "$(id -u)" = 0 ] || fail "up needs root"
  command -v slurmctld >/dev/null || fail "Slurm is not installed; run slurm/local/slurm-local.sh install"
  if [ -e "$STATE_DIR" ] && [ ! -e "$MARKER_FILE" ] && [ -n "$(ls -A "$STATE_DIR")" ]; then
    fail "$STATE_DIR exists and was not made by this script; choose another ALEM_CLUSTER_DIR"
  fi
  if [ -e "$MARKER_FILE" ]; then fail "already up in $STATE_DIR; run '$0 down' first"; fi
  local started_ms k
  started_ms=$(now_ms)
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR"/{etc,state,spool,log,run,hosts} "$MUNGE_DIR"
  : >"$MARKER_FILE"
  : >"$STATE_DIR/created"
  chmod 0755 "$STATE_DIR" "$MUNGE_DIR"
  write_config
  make_network
  start_munged
  ALEM_CLUSTER=$STATE_DIR as_host "$CTL_NS" "$CTL_HOST" slurmctld || fail "slurmctld did not start; see $STATE_DIR/log/slurmctld.log"
  retry_for 15 scontrol ping || fail "slurmctld does not answer; see $STATE_DIR/log/slurmctld.log"
  for k in $(seq 1 "$NODE_COUNT"); do start_slurmd "$k"; done
  if ! retry_for 40 all_nodes_idle; then
    sinfo -R >&2 || true
    fail "not every node is idle; see $STATE_DIR/log/slurmd-*.log"
  fi
  log "up in $(($(now_ms) - started_ms)) ms: $NODE_COUNT nodes ($(node_name 1)..$(node_name "$NODE_COUNT")," \
    "$SUBNET.1-$NODE_COUNT) idle with $NODE_CPUS CPUs each, bridge $BRIDGE, state in $STATE_DIR"
  echo "export SLURM_CONF=$SLURM_CONF"
}

do_down() {
  if [ ! -e "$STATE_DIR" ]; then
    log "nothing to stop: $STATE_DIR does not exist"
    return 0
  fi
  [ -e "$MARKER_FILE" ] || fail "$STATE_DIR was not made by this script; not touching it"
  stop_cluster_processes "$STATE_DIR"/run/slurmd-*.pid "$CTLD_PID_FILE" "$MUNGED_PID_FILE"
  # Undo what `up` made, newest first; only what the record names.
  local kind what
  if [ -f "$STATE_DIR/created" ]; then
    while read -r kind what; do
      case "$kind" in
        netns) ip netns del "$what" 2>/dev/null || log "could not remove namespace $what" ;;
        link) if ip link show "$what" >/dev/null 2>&1; then ip link del "$what"; fi ;;
      esac
    done < <(tac "$STATE_DIR/created")
  fi
  rm -rf "$STATE_DIR"
  log "down: stopped ${STOPPED_DAEMONS[*]:-no daemons}; removed namespaces, links and $STATE_DIR"
}

do_status() {
  local k pid_file
  if pid_file_alive "$MUNGED_PID_FILE"; then echo "munged: pid $(pid_from_file "$MUNGED_PID_FILE")"; else echo "munged: not running"; fi
  if pid_file_alive "$CTLD_PID_FILE"; then echo "slurmctld: pid $(pid_from_file "$CTLD_PID_FILE") in $CTL_NS ($CTL_ADDR)"; else echo "slurmctld: not running"; fi
  for k in $(seq 1 "$NODE_COUNT"); do
    pid_file=$(slurmd_pid_file "$k")
    printf '%s %s: slurmd %s; link %s\n' "$(node_name "$k")" "$(node_addr "$k")" \
      "$(pid_file_alive "$pid_file" && echo "pid $(pid_from_file "$pid_file")" || echo "not running")" \
      "$(link_summary "$k")"
  done
  if pid_file_alive "$CTLD_PID_FILE"; then
    sinfo
    squeue
  fi
}

link_summary() {
  local k=$1 ns summary
  ns=$(node_ns "$k")
  ns_exists "$ns" || {
    echo "no namespace"
    return
  }
  summary=$(tc -n "$ns" qdisc show dev eth0 | grep -Eo '(tbf|netem) .*' | awk 'NR <= 2' | tr '\n' ' ')
  if command -v iptables >/dev/null; then
    if grep -q 'alem-cut' <<<"$(in_node "$k" iptables -S INPUT 2>/dev/null)"; then summary+="CUT "; fi
    if grep -q 'alem-loss' <<<"$(in_node "$k" iptables -S INPUT 2>/dev/null)"; then summary+="lossy "; fi
  fi
  echo "${summary:-clear}"
}

require_iptables() {
  command -v iptables >/dev/null || fail "iptables is not installed; run '$0 install'"
}

do_shape() {
  local k rate="" delay="" loss=""
  k=$(node_index "${1:-}")
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --rate) rate=$2 ;;
      --delay) delay=$2 ;;
      --loss) loss=${2%\%} ;;
      *) fail "shape: unknown option $1 (--rate R, --delay D, --loss P)" ;;
    esac
    shift 2 || fail "shape: $1 needs a value"
  done
  [ -n "$rate$delay$loss" ] || fail "shape: say at least one of --rate, --delay, --loss"
  do_heal "$k" quiet
  local ns host_link dev_ns
  ns=$(node_ns "$k")
  host_link=$(node_host_link "$k")
  # Both directions: the node's eth0 (what it sends) and the bridge port (what it receives).
  for dev_ns in "$ns eth0" "- $host_link"; do
    # shellcheck disable=SC2086  # "NAMESPACE DEVICE", split on purpose
    set -- $dev_ns
    local tc_cmd=(tc)
    if [ "$1" != - ]; then tc_cmd=(tc -n "$1"); fi
    if [ -n "$delay" ]; then
      "${tc_cmd[@]}" qdisc add dev "$2" root handle 1: netem delay "$delay" 2>/dev/null ||
        fail "shape --delay needs the kernel's netem qdisc (sch_netem), which this kernel lacks"
      if [ -n "$rate" ]; then
        "${tc_cmd[@]}" qdisc add dev "$2" parent 1: handle 2: tbf rate "$rate" burst 256kb latency 50ms
      fi
    elif [ -n "$rate" ]; then
      "${tc_cmd[@]}" qdisc add dev "$2" root handle 1: tbf rate "$rate" burst 256kb latency 50ms ||
        fail "shape --rate: tc refused rate '$rate' (write it like 1gbit or 100mbit)"
    fi
  done
  if [ -n "$loss" ]; then
    require_iptables
    local probability
    probability=$(awk -v p="$loss" 'BEGIN { if (p < 0 || p > 100) exit 1; printf "%.6f", p / 100 }') ||
      fail "shape --loss: '$loss' is not a percentage"
    for chain in INPUT OUTPUT; do
      in_node "$k" iptables -A "$chain" -o eth0 -m comment --comment alem-loss \
        -m statistic --mode random --probability "$probability" -j DROP 2>/dev/null ||
        in_node "$k" iptables -A "$chain" -m comment --comment alem-loss \
          -m statistic --mode random --probability "$probability" -j DROP
    done
  fi
  log "$(node_name "$k"): ${rate:+rate $rate }${delay:+delay $delay }${loss:+loss $loss% }(both directions)"
}

do_cut() {
  local k
  k=$(node_index "${1:-}")
  if command -v iptables >/dev/null; then
    in_node "$k" iptables -I INPUT -i eth0 -m comment --comment alem-cut -j DROP
    in_node "$k" iptables -I OUTPUT -o eth0 -m comment --comment alem-cut -j DROP
    log "$(node_name "$k"): link cut (every packet on eth0 dropped)"
  else
    ip link set "$(node_host_link "$k")" down
    log "$(node_name "$k"): link cut (bridge port down; install iptables for silent drops)"
  fi
}

do_heal() {
  local k
  k=$(node_index "${1:-}")
  tc -n "$(node_ns "$k")" qdisc del dev eth0 root 2>/dev/null || true
  tc qdisc del dev "$(node_host_link "$k")" root 2>/dev/null || true
  ip link set "$(node_host_link "$k")" up
  if command -v iptables >/dev/null; then
    local chain rule
    for chain in INPUT OUTPUT; do
      while rule=$(in_node "$k" iptables -S "$chain" | grep -m1 -E 'alem-(cut|loss)'); do
        # shellcheck disable=SC2086  # the rule's words, as iptables printed them
        in_node "$k" iptables ${rule/-A/-D}
      done
    done
  fi
  if [ "${2:-}" != quiet ]; then log "$(node_name "$k"): link healed"; fi
}

do_kill_node() {
  local k pids=()
  k=$(node_index "${1:-}")
  mapfile -t pids < <(ip netns pids "$(node_ns "$k")")
  if [ "${#pids[@]}" -eq 0 ]; then
    log "$(node_name "$k"): nothing runs there"
    return 0
  fi
  kill -KILL "${pids[@]}" 2>/dev/null || true
  retry_for 5 all_dead "${pids[@]}" || fail "processes of $(node_name "$k") survive SIGKILL"
  log "$(node_name "$k") died: killed ${#pids[@]} processes (${pids[*]})"
}

do_revive() {
  local k
  k=$(node_index "${1:-}")
  if pid_file_alive "$(slurmd_pid_file "$k")"; then fail "$(node_name "$k")'s slurmd is running"; fi
  start_slurmd "$k"
  log "$(node_name "$k"): slurmd started again"
}

do_exec() {
  local k pid
  k=$(node_index "${1:-}")
  shift
  [ $# -gt 0 ] || fail "exec: say what to run"
  pid=$(host_pid "$k")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    exec nsenter --target "$pid" --net --uts --mount "$@"
  fi
  as_host "$(node_ns "$k")" "$(node_name "$k")" "$@"
}

case "${1:-}" in
  install) do_install ;;
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  nodes) for k in $(seq 1 "$NODE_COUNT"); do echo "$(node_name "$k") $(node_addr "$k") $(node_ns "$k")"; done ;;
  pids) cluster_pids | sort -n ;;
  exec) shift && do_exec "$@" ;;
  shape) shift && do_shape "$@" ;;
  cut) do_cut "${2:-}" ;;
  heal) do_heal "${2:-}" ;;
  kill-node) do_kill_node "${2:-}" ;;
  revive) do_revive "${2:-}" ;;
  bridge) echo "$BRIDGE" ;;
  *)
    echo "usage: $0 install|up|down|status|env|nodes|pids|exec|shape|cut|heal|kill-node|revive" >&2
    exit 2
    ;;
esac
