# local-slurm-lib.sh: what the two test clusters on one machine share, sourced by slurm-local.sh
# (one node) and cluster-local.sh (hosts in network namespaces): logging, waiting, PID files,
# a private munged, the slurm.conf settings both use, and stopping daemons by PID on `down`.
# The sourcing script sets LOG_TAG, STATE_DIR, MUNGE_DIR, MUNGE_SOCKET, MUNGED_PID_FILE,
# CTLD_PID_FILE, CRED_EXPIRE_S, PARTITION and SLURM_CONF before calling anything here.

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%T.%3N)" "$*" >&2; }
fail() {
  log "ERROR: $*"
  exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# retry_for SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds or time runs out.
retry_for() {
  local tries=$(($1 * 10))
  shift
  until "$@" >/dev/null 2>&1; do
    tries=$((tries - 1))
    if [ "$tries" -le 0 ]; then return 1; fi
    sleep 0.1
  done
}

pid_from_file() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }
pid_file_alive() {
  local pid
  pid=$(pid_from_file "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
all_dead() {
  local pid
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then return 1; fi
  done
}

# with_descendants EXCLUDED ROOT...: the ROOT PIDs and every process below them, one per line,
# leaving out the space-separated PIDs in EXCLUDED (the caller's own shells).
with_descendants() {
  local excluded=" $1 "
  shift
  ps -eo pid=,ppid= | awk -v roots="$*" -v excluded="$excluded" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) ours[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      grew = 1
      while (grew) {
        grew = 0
        for (p in parent) if (!(p in ours) && (parent[p] in ours)) { ours[p] = 1; grew = 1 }
      }
      for (p in ours) if (index(excluded, " " p " ") == 0) print p
    }'
}

munge_works() { munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET"; }
queue_is_empty() { [ -z "$(squeue -h -o %i)" ]; }

# start_munged: a munged of the cluster's own, with a fresh key, under the state folder. Its
# environment carries ALEM_SLURM_CLUSTER=<state folder> so that `pids` can find it.
start_munged() {
  mungekey --create --keyfile="$MUNGE_DIR/munge.key"
  ALEM_SLURM_CLUSTER=$STATE_DIR munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGED_PID_FILE" --seed-file="$MUNGE_DIR/munged.seed" \
    --log-file="$STATE_DIR/log/munged.log"
  retry_for 10 munge_works || fail "munged does not answer; see $STATE_DIR/log/munged.log"
}

# write_common_slurm_conf: the slurm.conf lines both clusters use (authentication through the
# private munged, no cgroups, no accounting, fast scheduling); the caller appends hosts, ports,
# folders and nodes. An empty plugin stack keeps the machine's own SPANK plugins out.
write_common_slurm_conf() {
  cat >>"$SLURM_CONF" <<CONF
SlurmUser=root
SlurmdUser=root
# munge runs privately under the state folder; credentials expire fast so requeues are quick.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE_S
StateSaveLocation=$STATE_DIR/state
SlurmctldPidFile=$CTLD_PID_FILE
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
PlugStackConfig=$STATE_DIR/etc/plugstack.conf
MailProg=/bin/true
# No cgroup freezer here: track processes by parent PID and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# alem's scripts always say --mpi=pmix, as real clusters often default to none.
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Trust the CPU counts below rather than the hardware, so 8 ranks fit on a 2-core machine.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Schedule every second instead of Slurm's relaxed defaults: a trivial job completes in ~0.5 s.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0,batch_sched_delay=0
# Finished jobs stay visible to scontrol for an hour (there is no accounting database).
MinJobAge=3600
KillWait=5
CONF
  : >"$STATE_DIR/etc/plugstack.conf"
}

# stop_cluster_processes DAEMON_PID_FILE...: cancels the partition's jobs, stops the daemons
# named by the PID files (SIGTERM, then SIGKILL after 15 s), then SIGKILLs what `cluster_pids`
# (defined by the caller) still finds. Sets STOPPED_DAEMONS to the daemons' PIDs.
stop_cluster_processes() {
  local pid_file pid leftover_pids=()
  STOPPED_DAEMONS=()
  if pid_file_alive "$CTLD_PID_FILE"; then
    scancel --partition="$PARTITION" 2>/dev/null || true
    retry_for 20 queue_is_empty || log "jobs still queued after 20 s: $(squeue -h -o '%i %T')"
  fi
  for pid_file in "$@"; do
    if pid_file_alive "$pid_file"; then STOPPED_DAEMONS+=("$(pid_from_file "$pid_file")"); fi
  done
  if [ "${#STOPPED_DAEMONS[@]}" -gt 0 ]; then
    kill -TERM "${STOPPED_DAEMONS[@]}" 2>/dev/null || true
    if ! retry_for 15 all_dead "${STOPPED_DAEMONS[@]}"; then
      for pid in "${STOPPED_DAEMONS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
          log "daemon $pid ignored SIGTERM; sending SIGKILL"
          kill -KILL "$pid" 2>/dev/null || true
        fi
      done
    fi
  fi
  # Step daemons (slurmstepd) and job tasks that would not die.
  mapfile -t leftover_pids < <(cluster_pids)
  if [ "${#leftover_pids[@]}" -gt 0 ]; then
    log "stopping leftover cluster processes: ${leftover_pids[*]}"
    kill -KILL "${leftover_pids[@]}" 2>/dev/null || true
    retry_for 5 all_dead "${leftover_pids[@]}" || fail "processes survive SIGKILL: ${leftover_pids[*]}"
  fi
}
